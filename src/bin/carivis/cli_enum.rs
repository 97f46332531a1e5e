//! Command-line mirrors of library enums: clap's `ValueEnum` stays out of the library, and each
//! mirror converts into the library type.

/// Defines `pub enum $cli` with clap's `ValueEnum` and the same variants as the library enum
/// `$lib`, and `From<$cli> for $lib`. Variant doc comments become the `--help` text.
#[macro_export]
macro_rules! cli_enum {
    ($(#[$meta:meta])* $cli:ident => $lib:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
        pub enum $cli {
            $($(#[$vmeta])* $variant),+
        }

        impl From<$cli> for $lib {
            fn from(value: $cli) -> Self {
                match value {
                    $($cli::$variant => $lib::$variant),+
                }
            }
        }
    };
}
