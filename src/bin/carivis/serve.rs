//! `carivis serve`: the HTTP service, with the live pipeline of its `--input`s beside it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::args::asked_or_per_core;
use crate::gallery::WriterArgs;
use crate::search_args::SearchArgs;
use crate::video::{VideoArgs, print_report};
use carivis::capture::redact_credentials;
use carivis::gallery::matching::Thresholds;
use carivis::gallery::{Gallery, SharedGallery};
use carivis::pipeline::still::StillFaces;
use carivis::pipeline::{Pacing, QueueGauges, run};
use carivis::serve::{
    DEFAULT_CLIENT_QUEUE, DEFAULT_MAX_BODY, DEFAULT_MAX_PIXELS, Hub, HubSink, Pool, ServeConfig,
    Service,
};
use carivis::sink::{JsonlSink, Sink, Tee};

/// Smallest face looked for in request images, as `carivis identify` does.
const STILL_MIN_FACE: f32 = 20.0;

/// Options of `carivis serve`.
#[derive(Args)]
#[command(mut_arg("max_side", |a| a.default_value("640")), mut_arg("min_face", |a| a.default_value("40")))]
pub struct ServeArgs {
    /// A live source to run, show and report on (repeatable): a network camera (rtsp://,
    /// http(s):// MJPEG, anything FFmpeg reads), camera:N, or a video file played at its own
    /// rate. Stream i is /v1/streams/i.mjpeg.
    #[arg(long, value_name = "SRC")]
    input: Vec<String>,
    /// Address to listen on (loopback by default; put a TLS proxy in front for other hosts).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// A file holding the bearer token every /v1/ request must send (Authorization: Bearer
    /// TOKEN, or ?access_token=TOKEN for browsers' streams). With it, gallery writes are allowed.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Without --token-file, allow gallery writes (enrol, remove) to anyone who can connect.
    #[arg(long)]
    allow_writes: bool,
    /// Largest request body, in bytes (suffixes k, M: 10M = 10,000,000); larger → 413.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY, value_parser = parse_bytes, value_name = "BYTES")]
    max_body: usize,
    /// Largest decoded image, in pixels; larger → 422.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, value_name = "PIXELS")]
    max_pixels: u64,
    /// Request workers, each with its own detector and embedder. Default: one per CPU core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    api_workers: Option<u32>,
    /// Candidate identities listed per face by /v1/identify (?top_k= overrides).
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Start input files again when they end.
    #[arg(long = "loop")]
    loop_input: bool,
    /// Also write the streams' JSON Lines to this file.
    #[arg(long, value_name = "OUT.jsonl")]
    jsonl: Option<PathBuf>,
    #[command(flatten)]
    writer: WriterArgs,
    #[command(flatten)]
    search: SearchArgs,
    #[command(flatten)]
    video: VideoArgs,
}

/// `10000`, `10k`, `10M` → bytes.
fn parse_bytes(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.trim_end_matches('b').char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 1_000),
        Some((i, 'm')) => (&lower[..i], 1_000_000),
        _ => (lower.trim_end_matches('b'), 1),
    };
    match digits.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n * unit),
        _ => Err(format!(
            "{text:?} is not a size in bytes (e.g. 10000, 500k, 10M)"
        )),
    }
}

/// The token in `path`, trimmed; an unreadable or empty file is an error naming it.
fn read_token(path: &PathBuf) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_string())
}

/// Detector, aligner and embedder sets for requests, with `carivis identify`'s detection.
fn recognizers(args: &ServeArgs) -> Result<Vec<StillFaces>> {
    let mut recognizer = args.video.recognizer.clone();
    recognizer.detector.max_side = None;
    recognizer.detector.min_face = STILL_MIN_FACE;
    (0..asked_or_per_core(args.api_workers.map(|n| n as usize)))
        .map(|_| recognizer.still_faces(args.search.search(), false))
        .collect()
}

/// Runs the service until SIGINT or SIGTERM.
pub fn serve(args: &ServeArgs) -> Result<ExitCode> {
    let token = args.token_file.as_ref().map(read_token).transpose()?;
    let Some(gallery_arg) = &args.video.gallery else {
        bail!("serve needs a gallery: --gallery DIR or --gallery postgres://…");
    };
    let location = gallery_arg.location()?;
    let recognizers = recognizers(args)?;
    let model = recognizers[0].model_id();
    let stages = if args.input.is_empty() {
        None
    } else {
        Some(args.video.stages(args.input.len())?)
    };
    let gallery = match stages.as_ref().and_then(|s| s.gallery.clone()) {
        Some(shared) => shared,
        None => Arc::new(SharedGallery::new(Gallery::open(&location, &model)?)),
    };
    let names: Vec<String> = args.input.iter().map(|s| redact_credentials(s)).collect();
    let hub = Arc::new(Hub::new(&names, DEFAULT_CLIENT_QUEUE));
    let queues = Arc::new(QueueGauges::default());
    let config = ServeConfig {
        token,
        allow_writes: args.allow_writes,
        max_body: args.max_body,
        max_pixels: args.max_pixels,
        top_k: args.top_k,
        thresholds: args.video.threshold.map(Thresholds::uniform),
        lock_timeout: args.writer.lock_timeout(),
    };
    let service = Arc::new(Service::new(
        config,
        location,
        gallery,
        Pool::new(recognizers),
        Arc::clone(&hub),
        Arc::clone(&queues),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let stop = Arc::new(AtomicBool::new(false));
    let pipeline = match stages {
        Some(stages) => {
            let jsonl = args.jsonl.as_deref().map(JsonlSink::create).transpose()?;
            let hub_sink = HubSink(Arc::clone(&hub));
            let mut config = args.video.config(Pacing::Live, args.loop_input);
            config.queue_gauges = Some(queues);
            let (inputs, stop) = (args.input.clone(), Arc::clone(&stop));
            Some(std::thread::spawn(move || {
                let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(hub_sink)];
                sinks.extend(jsonl.map(|j| Box::new(j) as Box<dyn Sink>));
                let report = run(
                    &inputs,
                    stages,
                    &config,
                    &mut Tee(sinks),
                    &stop,
                    &mut |_| {},
                    &mut |_| {},
                );
                if let Err(e) = &report {
                    tracing::error!("the live streams stopped: {e}");
                }
                report
            }))
        }
        None => None,
    };
    eprintln!(
        "carivis serve: listening on http://{} ({} stream(s), {} request worker(s))",
        args.listen,
        names.len(),
        service.recognizers.size()
    );
    let shutdown = {
        let stop = Arc::clone(&stop);
        async move {
            signalled().await;
            tracing::info!("stopping: finishing requests in flight, closing the streams");
            stop.store(true, Ordering::SeqCst);
        }
    };
    let served = runtime.block_on(carivis::serve::serve(listener, service, shutdown));
    stop.store(true, Ordering::SeqCst);
    hub.close();
    if let Some(pipeline) = pipeline {
        let report = pipeline
            .join()
            .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))??;
        print_report(&report, false)?;
    }
    served.context("the HTTP server failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_bytes() {
        assert_eq!(parse_bytes("10M"), Ok(10_000_000));
        assert_eq!(parse_bytes("500k"), Ok(500_000));
        assert_eq!(parse_bytes("1234"), Ok(1234));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("0").is_err());
    }
}
