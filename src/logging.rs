//! Log output of the command-line programs: `tracing` to stderr, level from `-v` flags unless
//! `RUST_LOG` says otherwise.

/// Installs the global subscriber: warnings by default, info with one `-v`, debug with more.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
