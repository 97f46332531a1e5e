//! `carivis annotate`, `live`, `bench` and `cameras`: the video pipeline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{
    GalleryArg, ModalityArg, PacingArg, RecognizerArgs, asked_or_per_core, open_detector,
    open_embedder,
};
use carivis::align::Aligner;
use carivis::capture::{list_cameras, open_source};
use carivis::gallery::matching::Thresholds;
use carivis::gallery::{Gallery, SharedGallery};
use carivis::pipeline::still::model_id;
use carivis::pipeline::{Pacing, PipelineConfig, RunReport, Stages, run};
use carivis::sink::{Control, JsonlSink, Sink, SinkError, Tee, VideoSink, WindowSink};
use carivis::track::TrackerConfig;
use carivis::types::AnnotatedFrame;

/// Options every video command shares. Video commands detect on frames downscaled to 640 px
/// and look for faces of 40 px and up by default (`--max-side`, `--min-face`): on 720p video
/// that is 2.5× faster than full resolution and still finds faces a camera shows.
#[derive(Args, Clone)]
pub struct VideoArgs {
    /// The gallery of known people (without one, every face is "unknown"): a folder, or
    /// postgres://USER@HOST/DB?gallery=NAME.
    #[arg(long, value_name = "DIR|URL")]
    pub gallery: Option<GalleryArg>,
    /// One cosine-similarity threshold for every direction, instead of the gallery's.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// What the video shows (decides embedding branch and thresholds).
    #[arg(long, value_enum, default_value_t = ModalityArg::Photo)]
    modality: ModalityArg,
    /// Capacity of each queue between stages.
    #[arg(long, default_value_t = 4)]
    queue: usize,
    /// Stop after N frames per source.
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// Full detection on every N-th frame; in between, known faces are followed with O-Net
    /// alone (new faces appear within N frames). 1 = full detection on every frame.
    #[arg(long, default_value_t = 5, value_name = "N")]
    detect_every: u32,
    /// Once a track's identity is decided, embed its face again on every N-th frame only; the
    /// frames in between keep the track's label (JSONL: "embedded": false). 1 = every frame.
    #[arg(long, default_value_t = TrackerConfig::default().embed_every, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    embed_every: u32,
    /// Detection workers (each source is detected by one worker at a time, so more workers
    /// than sources are not started). Default: one per CPU core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    detect_workers: Option<u32>,
    /// A network source (rtsp://, http(s)://) that delivers no frame for this many seconds
    /// counts as lost; in live pacing it is then reopened with waits doubling from 1 s up to
    /// 30 s, for as long as the command runs.
    #[arg(long, default_value_t = 5.0, value_name = "SECS", value_parser = parse_timeout)]
    source_timeout: f64,
    #[command(flatten)]
    pub recognizer: RecognizerArgs,
}

impl VideoArgs {
    /// The stages for `sources` inputs, with as many detectors as detection workers.
    pub fn stages(&self, sources: usize) -> Result<Stages> {
        let r = &self.recognizer;
        let runtime = r.runtime.runtime()?;
        let detectors = (0..self.workers(sources))
            .map(|_| open_detector(&runtime, &r.runtime.models_dir(), r.detector.config(false)))
            .collect::<Result<Vec<_>>>()?;
        let embedder = open_embedder(&runtime, &r.embedder_path(), r.batch)?;
        let gallery = match &self.gallery {
            Some(arg) => Some(Arc::new(SharedGallery::new(Gallery::open(
                arg.location()?,
                &model_id(&embedder),
            )?))),
            None => None,
        };
        if let Some(g) = &gallery {
            g.current().build_indexes();
        }
        Ok(Stages {
            aligner: Aligner::new(r.aligner.mode(), embedder.chip_size()),
            detectors,
            embedder,
            gallery,
        })
    }

    /// Detection workers for `sources` inputs: as asked, or one per core, never more than
    /// the sources.
    fn workers(&self, sources: usize) -> usize {
        asked_or_per_core(self.detect_workers.map(|n| n as usize))
            .min(sources)
            .max(1)
    }

    fn source_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.source_timeout)
    }

    pub fn config(&self, pacing: Pacing, loop_input: bool) -> PipelineConfig {
        PipelineConfig {
            pacing,
            queue: self.queue,
            batch: self.recognizer.batch,
            probe_modality: self.modality.into(),
            thresholds: self.threshold.map(Thresholds::uniform),
            max_frames: self.frames,
            loop_input,
            detect_every: self.detect_every,
            source_timeout: self.source_timeout(),
            queue_gauges: None,
            tracker: TrackerConfig {
                embed_every: self.embed_every,
                ..TrackerConfig::default()
            },
        }
    }
}

#[derive(Args)]
#[command(mut_arg("max_side", |a| a.default_value("640")), mut_arg("min_face", |a| a.default_value("40")))]
pub struct AnnotateArgs {
    /// Video file, folder of images, or network stream (rtsp://, http(s):// — annotated until
    /// the stream ends) to annotate.
    #[arg(value_name = "INPUT")]
    input: String,
    /// Annotated video to write (MP4, same size and frame rate as the input).
    #[arg(short, long, value_name = "OUT.mp4")]
    output: PathBuf,
    /// Also write one JSON line per frame.
    #[arg(long, value_name = "OUT.jsonl")]
    jsonl: Option<PathBuf>,
    #[command(flatten)]
    video: VideoArgs,
}

#[derive(Args)]
#[command(mut_arg("max_side", |a| a.default_value("640")), mut_arg("min_face", |a| a.default_value("40")))]
pub struct LiveArgs {
    /// Camera index to open.
    #[arg(long, value_name = "N", conflicts_with = "input")]
    camera: Option<u32>,
    /// A video file played at its own frame rate, or a network camera (rtsp://…,
    /// http(s)://… MJPEG, anything FFmpeg reads), instead of a local camera (repeatable).
    #[arg(long, value_name = "FILE")]
    input: Vec<String>,
    /// Camera resolution to ask for, e.g. 1280x720.
    #[arg(long, value_parser = parse_size, value_name = "WxH")]
    size: Option<(u32, u32)>,
    /// Start the input file again when it ends (for soak tests).
    #[arg(long = "loop")]
    loop_input: bool,
    /// Also write one JSON line per frame.
    #[arg(long, value_name = "OUT.jsonl")]
    jsonl: Option<PathBuf>,
    /// No window: print the run report only (headless soak tests).
    #[arg(long)]
    headless: bool,
    /// Print the run report as JSON at the end.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    video: VideoArgs,
}

#[derive(Args)]
#[command(mut_arg("max_side", |a| a.default_value("640")), mut_arg("min_face", |a| a.default_value("40")))]
pub struct BenchArgs {
    /// Video files to run through the pipeline, all at once (one source each; give the same
    /// file several times to measure several streams).
    #[arg(value_name = "INPUT", required = true)]
    inputs: Vec<String>,
    /// Which pacing modes to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "offline,live"
    )]
    modes: Vec<PacingArg>,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
    /// Only read every frame of each input through the capture stage (decoding and colour
    /// conversion, no models): the share of a run that no detection worker can remove.
    #[arg(long)]
    decode_only: bool,
    #[command(flatten)]
    video: VideoArgs,
}

/// What reading one input through the capture stage cost.
#[derive(serde::Serialize)]
struct DecodeReport {
    name: String,
    frames: u64,
    seconds: f64,
    fps: f64,
}

/// Reads every frame of `spec` (up to `max_frames`) and times it.
fn decode_only(spec: &str, video: &VideoArgs) -> Result<DecodeReport> {
    let (max_frames, started) = (video.frames, std::time::Instant::now());
    let mut source = open_source(spec, 0, video.source_timeout())?;
    let mut frames = 0u64;
    while max_frames.is_none_or(|max| frames < max) && source.next_frame()?.is_some() {
        frames += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(DecodeReport {
        name: source.name().to_string(),
        frames,
        seconds,
        fps: frames as f64 / seconds.max(f64::EPSILON),
    })
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once(['x', 'X'])
        .ok_or("expected WxH, e.g. 1280x720")?;
    match (w.parse(), h.parse()) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(format!("{text:?} is not WxH, e.g. 1280x720")),
    }
}

/// A stop flag set by Ctrl-C.
fn ctrl_c_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

/// The frame rate of a source, read by opening it briefly.
fn source_fps(spec: &str, video: &VideoArgs) -> Result<f64> {
    Ok(open_source(spec, 0, video.source_timeout())?.fps())
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 3600.0 => Ok(secs),
        _ => Err(format!("{text:?} is not a number of seconds in (0, 3600]")),
    }
}

/// The run's report, on stderr as a table or on stdout as JSON.
pub fn print_report(report: &RunReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        eprintln!("{}", report.table());
    }
    Ok(())
}

/// Annotates video files offline, every frame, with a progress bar.
pub fn annotate(args: &AnnotateArgs) -> Result<ExitCode> {
    let stages = args.video.stages(1)?;
    let config = args.video.config(Pacing::Offline, false);
    let fps = source_fps(&args.input, &args.video)?;
    let mut parts: Vec<Box<dyn Sink>> = vec![Box::new(VideoSink::create(&args.output, fps)?)];
    if let Some(path) = &args.jsonl {
        parts.push(Box::new(JsonlSink::create(path)?));
    }
    let stop = ctrl_c_flag()?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "annotating [{bar:30}] {pos}/{len} frames, {per_sec}, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let report = run(
        std::slice::from_ref(&args.input),
        stages,
        &config,
        &mut Tee(parts),
        &stop,
        &mut |infos| bar.set_length(infos.iter().filter_map(|i| i.frame_count).sum()),
        &mut |_| bar.inc(1),
    );
    bar.finish_and_clear();
    let report = report?;
    print_report(&report, false)?;
    println!(
        "wrote {} ({} frames)",
        args.output.display(),
        report.frames_out
    );
    if let Some(path) = &args.jsonl {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A sink that discards frames (benchmarks, headless runs).
struct Discard;

impl Sink for Discard {
    fn write(&mut self, _: &AnnotatedFrame) -> Result<Control, SinkError> {
        Ok(Control::Continue)
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Live recognition from a camera or a file played in real time, shown in a window.
pub fn live(args: &LiveArgs) -> Result<ExitCode> {
    let sources: Vec<String> = match (args.camera, args.input.is_empty()) {
        (Some(index), _) => vec![format!("camera:{index}")],
        (None, false) => args.input.clone(),
        (None, true) => {
            if list_cameras().is_empty() {
                bail!(
                    "no camera found (`carivis cameras` lists them); use --input FILE to play a video instead"
                );
            }
            vec!["camera:0".into()]
        }
    };
    if let (Some(size), Some(index)) = (args.size, args.camera) {
        tracing::info!("camera {index}: asking for {}x{}", size.0, size.1);
    }
    let stages = args.video.stages(sources.len())?;
    let config = args.video.config(Pacing::Live, args.loop_input);
    let mut parts: Vec<Box<dyn Sink>> = Vec::new();
    if !args.headless {
        parts.push(Box::new(WindowSink::new("carivis live")));
    }
    if let Some(path) = &args.jsonl {
        parts.push(Box::new(JsonlSink::create(path)?));
    }
    if parts.is_empty() {
        parts.push(Box::new(Discard));
    }
    let stop = ctrl_c_flag()?;
    let report = run(
        &sources,
        stages,
        &config,
        &mut Tee(parts),
        &stop,
        &mut |_| {},
        &mut |_| {},
    )?;
    print_report(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// End-to-end frame rate, per-stage times and queue occupancy, per pacing mode, per source
/// and in total.
pub fn bench(args: &BenchArgs) -> Result<ExitCode> {
    if args.decode_only {
        let reports = args
            .inputs
            .iter()
            .map(|spec| decode_only(spec, &args.video))
            .collect::<Result<Vec<_>>>()?;
        for r in &reports {
            eprintln!(
                "decode only: {}: {} frames in {:.2} s = {:.1} fps",
                r.name, r.frames, r.seconds, r.fps
            );
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&reports)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let stop = AtomicBool::new(false);
    let mut reports = Vec::new();
    for pacing in args.modes.iter().map(|&m| Pacing::from(m)) {
        let stages = args.video.stages(args.inputs.len())?;
        let config = args.video.config(pacing, false);
        let report = run(
            &args.inputs,
            stages,
            &config,
            &mut Discard,
            &stop,
            &mut |_| {},
            &mut |_| {},
        )?;
        if !args.json {
            print_report(&report, false)?;
        }
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists the cameras found.
pub fn cameras() -> Result<ExitCode> {
    let found = list_cameras();
    if found.is_empty() {
        eprintln!("no camera found (none connected, or no V4L2 support in this system)");
        return Ok(ExitCode::FAILURE);
    }
    for camera in found {
        println!("{}\t{}\t{}", camera.index, camera.name, camera.description);
    }
    Ok(ExitCode::SUCCESS)
}
