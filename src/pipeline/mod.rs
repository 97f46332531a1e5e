//! The only place that wires stages together. [`still`] does single images; [`run`] puts the
//! video stages on threads:
//!
//! ```text
//! capture (one thread per source) → per-source queues → detect+align+link (a pool of
//! workers) → embed (batched across frames and sources) → match+track+render → sink (the
//! calling thread: windows must stay on their thread)
//! ```
//!
//! The detection workers take the oldest waiting frame of a source no other worker holds
//! ([`queues`]), so sources share the workers fairly and each source's frames stay in order.
//! Live pacing drops a source's stale frame while its newer one waits (counted per source), so
//! latency stays bounded; offline pacing blocks instead, so every frame is processed, in order.

pub mod answers;
mod queues;
mod stats;
pub mod still;

pub use stats::{Queue, QueueGauges, RateMeter, RunReport, Samples, SourceReport, StageStats};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::align::Aligner;
use crate::capture::{CaptureError, open_source};
use crate::detect::Mtcnn;
use crate::embed::Embedder;
use crate::gallery::matching::Thresholds;
use crate::gallery::{Gallery, SharedGallery};
use crate::render::{Status, draw};
use crate::sink::{Control, Sink, SinkError};
use crate::track::{Evidence, Link, Linker, Observation, Tracker, TrackerConfig};
use crate::types::{
    AnnotatedFrame, ConnectionState, Embedding, Face, Frame, GalleryStatus, Modality, RgbImage,
    RunEvent, SourceStatus, unix_now,
};
use queues::{FrameQueues, Work};
use stats::Timer;

/// How frames are paced through the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pacing {
    /// Never fall behind: files play at their own frame rate, and frames that arrive while the
    /// detector is busy are dropped (and counted).
    Live,
    /// Every frame is processed, in order, as fast as possible.
    Offline,
}

/// Pipeline settings.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Live or offline pacing.
    pub pacing: Pacing,
    /// Capacity of each queue between stages (per source before detection; live pacing keeps
    /// one frame per source there).
    pub queue: usize,
    /// Chips embedded per run at most (faces of several frames are batched together).
    pub batch: usize,
    /// What the video shows (decides branch and thresholds): normally photos.
    pub probe_modality: Modality,
    /// Thresholds overriding the gallery's.
    pub thresholds: Option<Thresholds>,
    /// Tracker settings (including how often a decided track is embedded again).
    pub tracker: TrackerConfig,
    /// Stop after this many frames per source.
    pub max_frames: Option<u64>,
    /// Start a file again when it ends (soak tests), until stopped.
    pub loop_input: bool,
    /// Run the full detector on every N-th frame of a source; in between, known faces are
    /// followed with O-Net alone (1 = full detection on every frame). Sources take their full
    /// detections on different frames, so they do not all fall on the same moment.
    pub detect_every: u32,
    /// A network source that delivers nothing for this long counts as lost (and is reopened
    /// in live pacing).
    pub source_timeout: Duration,
    /// Where the stages publish their queues' depths while the run goes on (for monitoring).
    pub queue_gauges: Option<Arc<QueueGauges>>,
}

impl PipelineConfig {
    /// Publishes `queue`'s depth when someone monitors the run.
    fn gauge(&self, queue: Queue, depth: usize) {
        if let Some(gauges) = &self.queue_gauges {
            gauges.set(queue, depth);
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            pacing: Pacing::Offline,
            queue: 4,
            batch: crate::embed::DEFAULT_BATCH,
            probe_modality: Modality::Photo,
            thresholds: None,
            tracker: TrackerConfig::default(),
            max_frames: None,
            loop_input: false,
            detect_every: 5,
            source_timeout: Duration::from_secs(5),
            queue_gauges: None,
        }
    }
}

/// The stage objects a run takes over (each moves to its thread).
pub struct Stages {
    /// Face detectors, one per detection worker (at least one; more than there are sources
    /// never run at once, since a source's frames are detected one at a time).
    pub detectors: Vec<Mtcnn>,
    /// Chip maker.
    pub aligner: Aligner,
    /// Embedding model.
    pub embedder: Embedder,
    /// Known people, shared with whoever else changes them while the run goes on (the HTTP
    /// service's enrolments); without one no face has an identity.
    pub gallery: Option<Arc<SharedGallery>>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A source could not be opened or read.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A stage thread failed.
    #[error("{0}")]
    Stage(String),
}

/// What a source reports once it is open.
#[derive(Clone, Debug)]
pub struct SourceInfo {
    /// File or camera name.
    pub name: String,
    /// Its frame rate.
    pub fps: f64,
    /// Its frame count, when known.
    pub frame_count: Option<u64>,
}

/// A face of a frame with its track.
struct LinkedFace {
    face: Face,
    link: Link,
}

struct Detected {
    frame: Frame,
    faces: Vec<LinkedFace>,
    /// Chips of the faces whose link says embed, in order.
    chips: Vec<RgbImage>,
}

struct Embedded {
    frame: Frame,
    faces: Vec<LinkedFace>,
    /// Embeddings of the faces whose link says embed, in order (fewer if embedding failed).
    embeddings: Vec<Embedding>,
}

/// One source's detection state, handed from worker to worker with its frames.
struct SourceState {
    followed: Vec<Face>,
    since_full: u32,
    linker: Linker,
}

/// When the capture threads should stop: the caller's flag (Ctrl-C), or the run's own (the sink
/// asked to stop, a source failed to open, or the sink is done). The caller's flag is only read.
struct Halt<'a> {
    caller: &'a AtomicBool,
    run: AtomicBool,
}

impl Halt<'_> {
    fn is_set(&self) -> bool {
        self.caller.load(Ordering::SeqCst) || self.run.load(Ordering::SeqCst)
    }

    fn set(&self) {
        self.run.store(true, Ordering::SeqCst);
    }
}

/// Frames read and dropped by one source, and its drop-outs.
#[derive(Default)]
struct SourceCounters {
    captured: AtomicU64,
    dropped: AtomicU64,
    lost: AtomicU64,
    reconnects: AtomicU64,
}

/// Counters shared by the threads.
struct Counters {
    sources: Vec<SourceCounters>,
    stage_errors: AtomicU64,
    gallery_reloads: AtomicU64,
    gallery_outages: AtomicU64,
}

impl Counters {
    fn new(sources: usize) -> Self {
        Self {
            sources: (0..sources).map(|_| SourceCounters::default()).collect(),
            stage_errors: AtomicU64::new(0),
            gallery_reloads: AtomicU64::new(0),
            gallery_outages: AtomicU64::new(0),
        }
    }

    fn dropped(&self) -> u64 {
        self.sources
            .iter()
            .map(|s| s.dropped.load(Ordering::SeqCst))
            .sum()
    }
}

/// How often a running pipeline asks the gallery's store whether another process changed it.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);
/// The longest wait between retries while the gallery's store does not answer.
pub const FOLLOW_MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Keeps `shared` up to date with its store until the run halts: polls every
/// [`FOLLOW_INTERVAL`]; while the store does not answer, matching goes on with the copy in
/// memory, the outage is counted and logged once, and retries back off up to
/// [`FOLLOW_MAX_BACKOFF`]. Each outage and its end go to the sink as a [`GalleryStatus`].
fn follow_stage(
    shared: &SharedGallery,
    halt: &Halt,
    counters: &Counters,
    events: &Sender<RunEvent>,
    started: Instant,
) {
    let mut wait = FOLLOW_INTERVAL;
    let mut out = false;
    let announce = |gallery: &Gallery, status, reason| {
        let _ = events.send(RunEvent::GalleryStatus(GalleryStatus {
            location: gallery.location().to_string(),
            time_s: started.elapsed().as_secs_f64(),
            unix_time: unix_now(),
            status,
            reason,
        }));
    };
    while sleep_unless_halted(wait, halt) {
        let current = shared.current();
        match current.reread_if_changed() {
            Ok(changed) => {
                if out {
                    tracing::info!("gallery {} answers again", current.location());
                    announce(&current, ConnectionState::Reconnected, None);
                    out = false;
                }
                wait = FOLLOW_INTERVAL;
                if let Some(gallery) = changed {
                    tracing::info!(
                        "gallery {} changed: now {} entries (generation {})",
                        gallery.location(),
                        gallery.entries().len(),
                        gallery.generation()
                    );
                    let Some(gallery) = built_unless_halted(gallery, halt) else {
                        return;
                    };
                    shared.replace(gallery);
                    counters.gallery_reloads.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(e) => {
                if !out {
                    counters.gallery_outages.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!("{e}; matching goes on with the gallery in memory");
                    announce(&current, ConnectionState::Lost, Some(e.to_string()));
                    out = true;
                }
                wait = (wait * 2).min(FOLLOW_MAX_BACKOFF);
            }
        }
    }
}

/// `gallery` with its indexes built in the background (matching goes on with the copy in
/// memory meanwhile); `None` when the run halts first, which then ends without waiting for the
/// build (half an hour for a 10^6-entry graph on 2 cores).
fn built_unless_halted(gallery: Gallery, halt: &Halt) -> Option<Gallery> {
    let built = gallery.build_indexes_in_background();
    loop {
        match built.recv_timeout(Duration::from_millis(50)) {
            Ok(gallery) => return Some(gallery),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) if !halt.is_set() => {}
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => return None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                tracing::error!(
                    "building the search indexes of the changed gallery failed; matching goes \
                     on with the copy in memory and stops following the gallery"
                );
                return None;
            }
        }
    }
}

/// Sleeps `wait` in short steps; false as soon as the run halts.
fn sleep_unless_halted(wait: Duration, halt: &Halt) -> bool {
    let step = Duration::from_millis(50);
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if halt.is_set() {
            return false;
        }
        std::thread::sleep(step.min(until.saturating_duration_since(Instant::now())));
    }
    !halt.is_set()
}

/// Opens every source (on its own capture thread, where camera handles must live), runs the
/// stages and feeds `sink` on the calling thread until the sources end, `stop` is set, or the
/// sink asks to stop. `on_open` gets the sources' details before the first frame; `on_frame`
/// is called after each frame reaches the sink.
pub fn run(
    sources: &[String],
    stages: Stages,
    config: &PipelineConfig,
    sink: &mut dyn Sink,
    stop: &AtomicBool,
    on_open: &mut dyn FnMut(&[SourceInfo]),
    on_frame: &mut dyn FnMut(&AnnotatedFrame),
) -> Result<RunReport, PipelineError> {
    let counters = Counters::new(sources.len());
    let queue = config.queue.max(1);
    let capture_queue = if config.pacing == Pacing::Live {
        1
    } else {
        queue
    };
    let frames = FrameQueues::new(
        (0..sources.len())
            .map(|source| source_state(source, config))
            .collect(),
        capture_queue,
        config.pacing,
    );
    let (detected_tx, detected_rx) = bounded::<Detected>(queue);
    let (embedded_tx, embedded_rx) = bounded::<Embedded>(queue);
    let (annotated_tx, annotated_rx) = bounded::<AnnotatedFrame>(queue);
    let Stages {
        detectors,
        aligner,
        mut embedder,
        gallery,
    } = stages;
    if detectors.is_empty() {
        return Err(PipelineError::Stage("no face detector given".into()));
    }
    let started = Instant::now();
    let halt = Halt {
        caller: stop,
        run: AtomicBool::new(false),
    };
    let (halt, frames, counters, aligner) = (&halt, &frames, &counters, &aligner);
    // Kept open here until the sink is done, so the sink's wait on it never sees it closed.
    let (status_tx, status_rx) = crossbeam_channel::unbounded::<RunEvent>();
    std::thread::scope(|scope| {
        let (open_tx, open_rx) = bounded::<Result<SourceInfo, CaptureError>>(sources.len());
        let captures: Vec<_> = sources
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let links = CaptureLinks {
                    frames,
                    opened: open_tx.clone(),
                    status: status_tx.clone(),
                    halt,
                    counters,
                    started,
                };
                scope.spawn(move || {
                    let result = capture(spec, i, config, &links);
                    frames.finish();
                    result
                })
            })
            .collect();
        drop(open_tx);
        let infos = match collect_opened(&open_rx, sources.len(), halt) {
            Ok(infos) => infos,
            Err(e) => {
                frames.close();
                return Err(e);
            }
        };
        on_open(&infos);
        let names: Vec<String> = infos.iter().map(|i| i.name.clone()).collect();
        let gallery = gallery.as_deref();
        let events = &status_tx;
        let follow =
            gallery.map(|g| scope.spawn(move || follow_stage(g, halt, counters, events, started)));
        // Each stage owns its senders, so when every worker of a stage has finished its output
        // closes and the next stage drains and ends.
        let workers: Vec<_> = detectors
            .into_iter()
            .take(sources.len())
            .map(|mut detector| {
                let tx = detected_tx.clone();
                scope.spawn(move || {
                    detect_worker(&mut detector, aligner, config, frames, tx, counters)
                })
            })
            .collect();
        drop(detected_tx);
        let embed = scope
            .spawn(move || embed_stage(&mut embedder, config, detected_rx, embedded_tx, counters));
        let annotate = scope
            .spawn(move || annotate_stage(gallery, config, embedded_rx, annotated_tx, counters));
        let sink_result = feed_sink(
            sink,
            &annotated_rx,
            &status_rx,
            sources.len(),
            halt,
            on_frame,
        );
        halt.set();
        frames.close();
        let capture_errors: Vec<CaptureError> = captures
            .into_iter()
            .filter_map(|h| h.join().expect("capture thread").err())
            .collect();
        let (mut detect_time, mut detect_queue) = (Samples::default(), Samples::default());
        for worker in workers {
            let (time, queue) = worker.join().expect("detect thread");
            detect_time.extend(time);
            detect_queue.extend(queue);
        }
        let embed = embed.join().expect("embed thread");
        let annotate = annotate.join().expect("annotate thread");
        if let Some(follow) = follow {
            follow.join().expect("gallery follower thread");
        }
        let sinked = sink_result?;
        sink.finish()?;
        if let Some(error) = capture_errors.into_iter().next() {
            tracing::warn!("{error}");
        }
        let times = StageTimes {
            detect: (detect_time, detect_queue),
            embed,
            annotate,
        };
        Ok(run_report(config, started, &names, sinked, counters, times))
    })
}

/// Per-stage samples of a run: each stage's work times and the waits in its input queue.
struct StageTimes {
    detect: (Samples, Samples),
    embed: (Samples, Samples),
    annotate: (Samples, Samples),
}

/// The run's report: per-source counts and latencies, per-stage times and queue waits, and
/// the gallery's reloads and outages.
fn run_report(
    config: &PipelineConfig,
    started: Instant,
    names: &[String],
    sinked: Sinked,
    counters: &Counters,
    times: StageTimes,
) -> RunReport {
    let elapsed = started.elapsed();
    let mut latency = Samples::default();
    sinked
        .sources
        .iter()
        .for_each(|s| latency.extend(s.latency.clone()));
    let per_source = source_reports(names, sinked.sources, counters, elapsed);
    let mut report = RunReport::new(
        config.pacing,
        elapsed,
        per_source,
        counters.stage_errors.load(Ordering::SeqCst),
        vec![
            times.detect.0.stats("detect+align"),
            times.embed.0.stats("embed"),
            times.annotate.0.stats("match+track+render"),
            sinked.time.stats("sink"),
        ],
        latency.stats("capture→sink latency"),
        vec![
            times.detect.1.stats("queue: capture→detect"),
            times.embed.1.stats("queue: detect→embed"),
            times.annotate.1.stats("queue: embed→match"),
        ],
    );
    report.gallery_reloads = counters.gallery_reloads.load(Ordering::SeqCst);
    report.gallery_outages = counters.gallery_outages.load(Ordering::SeqCst);
    report
}

/// A source's detection state at the start; sources start their cycles of full detection at
/// different frames.
fn source_state(source: usize, config: &PipelineConfig) -> SourceState {
    SourceState {
        followed: Vec::new(),
        since_full: source as u32 % config.detect_every.max(1),
        linker: Linker::new(config.tracker),
    }
}

/// Each source's figures: captured and dropped from the counters, out and latency from the sink.
fn source_reports(
    names: &[String],
    sinked: Vec<SinkedSource>,
    counters: &Counters,
    elapsed: Duration,
) -> Vec<SourceReport> {
    names
        .iter()
        .zip(sinked)
        .zip(&counters.sources)
        .enumerate()
        .map(|(i, ((name, sinked), counted))| {
            SourceReport::new(
                i,
                name,
                elapsed,
                counted.captured.load(Ordering::SeqCst),
                sinked.frames,
                counted.dropped.load(Ordering::SeqCst),
                sinked.latency.stats("capture→sink latency"),
            )
            .with_dropouts(
                counted.lost.load(Ordering::SeqCst),
                counted.reconnects.load(Ordering::SeqCst),
            )
        })
        .collect()
}

/// Waits for every source to report whether it opened; the first failure stops the run.
fn collect_opened(
    open_rx: &Receiver<Result<SourceInfo, CaptureError>>,
    count: usize,
    halt: &Halt<'_>,
) -> Result<Vec<SourceInfo>, PipelineError> {
    let mut infos = Vec::with_capacity(count);
    for _ in 0..count {
        match open_rx.recv() {
            Ok(Ok(info)) => infos.push(info),
            Ok(Err(error)) => {
                halt.set();
                return Err(error.into());
            }
            Err(_) => break,
        }
    }
    Ok(infos)
}

/// A capture thread's links to the rest of the run.
struct CaptureLinks<'a> {
    frames: &'a FrameQueues<SourceState>,
    opened: Sender<Result<SourceInfo, CaptureError>>,
    status: Sender<RunEvent>,
    halt: &'a Halt<'a>,
    counters: &'a Counters,
    started: Instant,
}

/// One source's thread: opens it, then reads, paces and queues frames. A live source (camera,
/// network stream) in live pacing that fails or stops delivering is reopened until the run
/// ends ([`reopen`]); a file ends the source, or starts again with `loop_input`.
fn capture(
    spec: &str,
    source: usize,
    config: &PipelineConfig,
    links: &CaptureLinks<'_>,
) -> Result<(), CaptureError> {
    let mut announced = false;
    let mut reader = match open_source(spec, source, config.source_timeout) {
        Ok(reader) => reader,
        Err(e) if config.pacing == Pacing::Live && crate::capture::is_network(spec) => {
            announced = true;
            // A camera that is down when the run starts is waited for like one that drops out.
            let name = crate::capture::redact_credentials(spec);
            let _ = links.opened.send(Ok(SourceInfo {
                name: name.clone(),
                fps: 0.0,
                frame_count: None,
            }));
            match reopen(spec, source, &name, e.to_string(), config, links) {
                Some(reader) => reader,
                None => return Ok(()),
            }
        }
        Err(e) => {
            let message = e.to_string();
            let _ = links.opened.send(Err(e));
            return Err(CaptureError::Open {
                source_name: spec.to_string(),
                reason: message,
            });
        }
    };
    let info = SourceInfo {
        name: reader.name().to_string(),
        fps: reader.fps(),
        frame_count: reader.frame_count(),
    };
    // The run waits for one report per source: one reopened at the start made it above.
    if !announced {
        let _ = links.opened.send(Ok(info.clone()));
    }
    let counted = &links.counters.sources[source];
    let pace = config.pacing == Pacing::Live && !reader.is_live();
    let reconnects = config.pacing == Pacing::Live && reader.is_live();
    let clock = Instant::now();
    let (mut index_offset, mut time_offset, mut delivered) = (0u64, 0.0f64, 0u64);
    while !links.halt.is_set() && config.max_frames.is_none_or(|max| delivered < max) {
        let mut frame = match reader.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) if !reconnects => {
                if !config.loop_input || delivered == index_offset {
                    break;
                }
                (index_offset, time_offset) = (
                    delivered,
                    time_offset + reader.frame_count().unwrap_or(0) as f64 / reader.fps(),
                );
                reader = open_source(spec, source, config.source_timeout)?;
                continue;
            }
            Err(e) if !reconnects => return Err(e),
            lost => {
                let reason = lost.err().map_or_else(
                    || {
                        format!(
                            "no frame for {} s, or the stream ended",
                            config.source_timeout.as_secs_f64()
                        )
                    },
                    |e| e.to_string(),
                );
                let Some(reopened) = reopen(spec, source, &info.name, reason, config, links) else {
                    break;
                };
                reader = reopened;
                (index_offset, time_offset) = (delivered, clock.elapsed().as_secs_f64());
                continue;
            }
        };
        frame.index += index_offset;
        frame.time_s += time_offset;
        if pace {
            // Play the file at its own frame rate, as a camera would deliver it.
            let due = clock + Duration::from_secs_f64(frame.time_s);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            frame.captured = Instant::now();
        }
        counted.captured.fetch_add(1, Ordering::SeqCst);
        delivered += 1;
        match links.frames.push(frame) {
            Ok(dropped) => counted.dropped.fetch_add(dropped, Ordering::SeqCst),
            Err(_) => break,
        };
    }
    Ok(())
}

/// The first wait before reopening a lost live source.
pub const RECONNECT_FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between attempts to reopen a lost live source.
pub const RECONNECT_MAX_WAIT: Duration = Duration::from_secs(30);

/// Reports a lost source, then tries to reopen it with waits doubling from
/// [`RECONNECT_FIRST_WAIT`] up to [`RECONNECT_MAX_WAIT`] until it opens (reported and
/// counted) or the run halts (`None`).
fn reopen(
    spec: &str,
    source: usize,
    name: &str,
    reason: String,
    config: &PipelineConfig,
    links: &CaptureLinks<'_>,
) -> Option<Box<dyn crate::capture::FrameSource>> {
    tracing::warn!("{name}: lost ({reason}); reopening");
    let counted = &links.counters.sources[source];
    counted.lost.fetch_add(1, Ordering::SeqCst);
    let announce = |status, reason: Option<String>, attempts| {
        let _ = links.status.send(RunEvent::SourceStatus(SourceStatus {
            source,
            name: name.to_string(),
            time_s: links.started.elapsed().as_secs_f64(),
            unix_time: unix_now(),
            status,
            reason,
            attempts,
        }));
    };
    announce(ConnectionState::Lost, Some(reason), 0);
    let mut wait = RECONNECT_FIRST_WAIT;
    let mut attempts = 0;
    while sleep_unless_halted(wait, links.halt) {
        attempts += 1;
        match open_source(spec, source, config.source_timeout) {
            Ok(reader) => {
                tracing::warn!("{name}: reconnected after {attempts} attempt(s)");
                counted.reconnects.fetch_add(1, Ordering::SeqCst);
                announce(ConnectionState::Reconnected, None, attempts);
                return Some(reader);
            }
            Err(e) => {
                wait = (wait * 2).min(RECONNECT_MAX_WAIT);
                tracing::info!(
                    "{name}: attempt {attempts} failed ({e}); next in {} s",
                    wait.as_secs()
                );
            }
        }
    }
    None
}

/// One detection worker: takes frames from the queues until they end, detects (or follows
/// known faces), links faces to tracks and aligns the faces due for embedding.
fn detect_worker(
    detector: &mut Mtcnn,
    aligner: &Aligner,
    config: &PipelineConfig,
    frames: &FrameQueues<SourceState>,
    tx: Sender<Detected>,
    counters: &Counters,
) -> (Samples, Samples) {
    let (mut time, mut occupancy) = (Samples::default(), Samples::default());
    while let Some(Work {
        frame,
        mut state,
        waiting,
    }) = frames.take()
    {
        occupancy.push(waiting as f64);
        config.gauge(Queue::CaptureDetect, waiting);
        let timer = Timer::start();
        let detected = detect_frame(detector, aligner, config, &mut state, frame, counters);
        time.push(timer.ms());
        let source = detected.frame.source;
        // The frame goes on before its source is given back, so the source's next frame can
        // only follow it.
        let sent = tx.send(detected);
        frames.give_back(source, state);
        if sent.is_err() {
            frames.close();
            break;
        }
    }
    (time, occupancy)
}

/// Detection, tracking links and chips for one frame of a source.
fn detect_frame(
    detector: &mut Mtcnn,
    aligner: &Aligner,
    config: &PipelineConfig,
    state: &mut SourceState,
    frame: Frame,
    counters: &Counters,
) -> Detected {
    let full = state.since_full == 0 || state.followed.is_empty();
    let found = if full {
        detector.detect(&frame.image)
    } else {
        detector.refine(&frame.image, &state.followed)
    };
    let found = found.unwrap_or_else(|e| {
        counters.stage_errors.fetch_add(1, Ordering::SeqCst);
        tracing::warn!("frame {}: detection failed: {e}", frame.index);
        Vec::new()
    });
    state.since_full = (state.since_full + 1) % config.detect_every.max(1);
    state.followed.clone_from(&found);
    let boxes: Vec<_> = found.iter().map(|f| f.bbox).collect();
    let links = state.linker.link(&boxes);
    let mut faces = Vec::with_capacity(found.len());
    let mut chips = Vec::new();
    for (face, link) in found.into_iter().zip(links) {
        if link.embed {
            // A face that cannot be aligned cannot be recognised: it is left out.
            let Ok(chip) = aligner.align(&frame.image, &face) else {
                continue;
            };
            chips.push(chip);
        }
        faces.push(LinkedFace { face, link });
    }
    Detected {
        frame,
        faces,
        chips,
    }
}

fn embed_stage(
    embedder: &mut Embedder,
    config: &PipelineConfig,
    rx: Receiver<Detected>,
    tx: Sender<Embedded>,
    counters: &Counters,
) -> (Samples, Samples) {
    let (mut time, mut occupancy) = (Samples::default(), Samples::default());
    loop {
        occupancy.push(rx.len() as f64);
        config.gauge(Queue::DetectEmbed, rx.len());
        let Ok(first) = rx.recv() else { break };
        let mut group = vec![first];
        // Batch the faces of frames that are already waiting.
        while group.iter().map(|d| d.chips.len()).sum::<usize>() < config.batch {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let counts: Vec<usize> = group.iter().map(|d| d.chips.len()).collect();
        let chips: Vec<RgbImage> = group
            .iter_mut()
            .flat_map(|d| std::mem::take(&mut d.chips))
            .collect();
        let timer = Timer::start();
        let mut embeddings = embedder.embed(&chips).unwrap_or_else(|e| {
            counters.stage_errors.fetch_add(1, Ordering::SeqCst);
            tracing::warn!("embedding failed: {e}");
            Vec::new()
        });
        if !chips.is_empty() {
            time.push(timer.ms());
        }
        for (detected, count) in group.into_iter().zip(counts) {
            let take = count.min(embeddings.len());
            let embedded = Embedded {
                frame: detected.frame,
                faces: detected.faces,
                embeddings: embeddings.drain(..take).collect(),
            };
            if tx.send(embedded).is_err() {
                return (time, occupancy);
            }
        }
    }
    (time, occupancy)
}

fn annotate_stage(
    gallery: Option<&SharedGallery>,
    config: &PipelineConfig,
    rx: Receiver<Embedded>,
    tx: Sender<AnnotatedFrame>,
    counters: &Counters,
) -> (Samples, Samples) {
    let (mut time, mut occupancy) = (Samples::default(), Samples::default());
    let mut trackers: Vec<Tracker> = Vec::new();
    let mut rate = stats::RateMeter::default();
    loop {
        occupancy.push(rx.len() as f64);
        config.gauge(Queue::EmbedMatch, rx.len());
        let Ok(embedded) = rx.recv() else { break };
        let timer = Timer::start();
        let current = gallery.map(|g| g.current());
        let observations = observe(current.as_deref(), config, &embedded, counters);
        let source = embedded.frame.source;
        if trackers.len() <= source {
            trackers.resize_with(source + 1, || Tracker::new(config.tracker));
        }
        let faces = trackers[source].update(&observations);
        let mut frame = embedded.frame;
        // The frame's pixels are no longer shared here (chips were copied out), so drawing
        // takes them over without a copy.
        let mut image = Arc::unwrap_or_clone(frame.image);
        let status = Status {
            fps: rate.tick(),
            dropped: counters.dropped(),
        };
        if let Err(e) = draw(&mut image, &faces, status) {
            tracing::warn!("drawing failed: {e}");
        }
        frame.image = Arc::new(image);
        time.push(timer.ms());
        if tx.send(AnnotatedFrame { frame, faces }).is_err() {
            break;
        }
    }
    (time, occupancy)
}

/// Each face's observation: its track, and the gallery's answer where it was embedded.
fn observe(
    gallery: Option<&Gallery>,
    config: &PipelineConfig,
    embedded: &Embedded,
    counters: &Counters,
) -> Vec<Observation> {
    let mut embeddings = embedded.embeddings.iter();
    embedded
        .faces
        .iter()
        .map(|LinkedFace { face, link }| {
            let embedding = link.embed.then(|| embeddings.next()).flatten();
            Observation {
                track: link.track,
                bbox: face.bbox,
                score: face.score,
                evidence: embedding.map(|e| evidence(gallery, config, e, counters)),
            }
        })
        .collect()
}

/// The gallery's answer for one embedding (nobody without a gallery or when matching fails).
fn evidence(
    gallery: Option<&Gallery>,
    config: &PipelineConfig,
    embedding: &Embedding,
    counters: &Counters,
) -> Evidence {
    let found =
        gallery.map(|g| g.identify(embedding, config.probe_modality, config.thresholds.as_ref()));
    let (identity, similarity, matched_modality) = match found {
        Some(Ok(found)) => (found.identity, found.similarity, found.matched_modality),
        Some(Err(e)) => {
            counters.stage_errors.fetch_add(1, Ordering::SeqCst);
            tracing::warn!("matching failed: {e}");
            (None, 0.0, None)
        }
        None => (None, 0.0, None),
    };
    Evidence {
        identity,
        similarity,
        matched_modality,
    }
}

/// What reached the sink from one source.
#[derive(Default)]
struct SinkedSource {
    frames: u64,
    latency: Samples,
}

/// What reached the sink, per source, and the sink's own time.
struct Sinked {
    sources: Vec<SinkedSource>,
    time: Samples,
}

/// The calling thread's part: hands frames and source status changes to the sink; a stop
/// request drains the rest.
fn feed_sink(
    sink: &mut dyn Sink,
    rx: &Receiver<AnnotatedFrame>,
    status_rx: &Receiver<RunEvent>,
    sources: usize,
    halt: &Halt<'_>,
    on_frame: &mut dyn FnMut(&AnnotatedFrame),
) -> Result<Sinked, PipelineError> {
    let mut sinked = Sinked {
        sources: (0..sources).map(|_| SinkedSource::default()).collect(),
        time: Samples::default(),
    };
    let fail = |e: SinkError| {
        halt.set();
        // Drain so the stage threads can finish.
        rx.iter().for_each(drop);
        PipelineError::from(e)
    };
    loop {
        let frame = crossbeam_channel::select! {
            recv(status_rx) -> status => {
                if let Ok(event) = status {
                    sink.event(&event).map_err(fail)?;
                }
                continue;
            }
            recv(rx) -> frame => match frame {
                Ok(frame) => frame,
                Err(_) => break,
            },
        };
        let timer = Timer::start();
        let control = sink.write(&frame);
        sinked.time.push(timer.ms());
        let source = &mut sinked.sources[frame.frame.source];
        source
            .latency
            .push(frame.frame.captured.elapsed().as_secs_f64() * 1e3);
        source.frames += 1;
        on_frame(&frame);
        match control {
            Ok(Control::Continue) => {}
            Ok(Control::Stop) => halt.set(),
            Err(e) => return Err(fail(e)),
        }
    }
    for event in status_rx.try_iter() {
        sink.event(&event).map_err(fail)?;
    }
    Ok(sinked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gallery::IndexOrigin;
    use crate::gallery::test_support::{embedding, entry, model};
    use crate::types::Modality;

    /// A saved folder gallery of 10,000 photos, large enough that its graph takes a while.
    fn large_gallery(path: &std::path::Path) {
        let mut gallery = Gallery::create(path, model()).unwrap();
        for i in 0..10_000 {
            let angle = i as f32 * 0.001;
            let photo = embedding([angle.cos(), angle.sin(), (i % 13) as f32 * 0.05]);
            gallery
                .add(entry(&format!("p{i}"), Modality::Photo), &photo)
                .unwrap();
        }
        gallery.save().unwrap();
    }

    #[test]
    fn a_halted_run_does_not_wait_for_a_changed_gallerys_index_build() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g");
        large_gallery(&path);
        let caller = AtomicBool::new(false);
        let halted = Halt {
            caller: &caller,
            run: AtomicBool::new(true),
        };
        let changed = Gallery::open(&path, &model()).unwrap();
        assert!(built_unless_halted(changed, &halted).is_none());

        let running = Halt {
            caller: &caller,
            run: AtomicBool::new(false),
        };
        let changed = Gallery::open(&path, &model()).unwrap();
        let built = built_unless_halted(changed, &running).expect("built while running");
        let summary = built.build_indexes_reporting(|p| panic!("built twice: {p:?}"));
        assert_eq!(summary[0].origin, IndexOrigin::GraphKept);
    }
}
