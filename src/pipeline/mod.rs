//! The only place that wires stages together. [`still`] does single images; [`run`] puts the
//! video stages on threads joined by bounded channels:
//!
//! ```text
//! capture (one thread per source) → detect+align → embed (batched across frames) →
//! match+track+render → sink (the calling thread: windows must stay on their thread)
//! ```
//!
//! Live pacing drops frames at the source while the detector is busy (counted), so latency
//! stays bounded; offline pacing blocks instead, so every frame is processed, in order.

mod stats;
pub mod still;

pub use stats::{RunReport, StageStats};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::align::Aligner;
use crate::capture::{CaptureError, open_source};
use crate::detect::Mtcnn;
use crate::embed::Embedder;
use crate::gallery::Gallery;
use crate::gallery::matching::Thresholds;
use crate::render::{Status, draw};
use crate::sink::{Control, Sink, SinkError};
use crate::track::{Observation, Tracker, TrackerConfig};
use crate::types::{AnnotatedFrame, Embedding, Face, Frame, Modality, RgbImage};
use stats::{Samples, Timer};

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
    /// Capacity of each queue between stages.
    pub queue: usize,
    /// Chips embedded per run at most (faces of several frames are batched together).
    pub batch: usize,
    /// What the video shows (decides branch and thresholds): normally photos.
    pub probe_modality: Modality,
    /// Thresholds overriding the gallery's.
    pub thresholds: Option<Thresholds>,
    /// Tracker settings.
    pub tracker: TrackerConfig,
    /// Stop after this many frames per source.
    pub max_frames: Option<u64>,
    /// Start a file again when it ends (soak tests), until stopped.
    pub loop_input: bool,
    /// Run the full detector on every N-th frame of a source; in between, known faces are
    /// followed with O-Net alone (1 = full detection on every frame).
    pub detect_every: u32,
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
        }
    }
}

/// The stage objects a run takes over (each moves to its thread).
pub struct Stages {
    /// Face detector.
    pub detector: Mtcnn,
    /// Chip maker.
    pub aligner: Aligner,
    /// Embedding model.
    pub embedder: Embedder,
    /// Known people; without one no face has an identity.
    pub gallery: Option<Gallery>,
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

struct Detected {
    frame: Frame,
    faces: Vec<Face>,
    chips: Vec<RgbImage>,
}

struct Embedded {
    frame: Frame,
    faces: Vec<Face>,
    embeddings: Vec<Embedding>,
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

/// Counters shared by the threads.
#[derive(Default)]
struct Counters {
    captured: AtomicU64,
    dropped: AtomicU64,
    stage_errors: AtomicU64,
    gallery_reloads: AtomicU64,
    gallery_outages: AtomicU64,
}

/// How often a running pipeline asks the gallery's store whether another process changed it.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);
/// The longest wait between retries while the gallery's store does not answer.
pub const FOLLOW_MAX_BACKOFF: Duration = Duration::from_secs(8);

/// The gallery matching uses, replaced whole when another process changes it.
type SharedGallery = std::sync::RwLock<Arc<Gallery>>;

/// Keeps `shared` up to date with its store until the run halts: polls every
/// [`FOLLOW_INTERVAL`]; while the store does not answer, matching goes on with the copy in
/// memory, the outage is counted and logged once, and retries back off up to
/// [`FOLLOW_MAX_BACKOFF`].
fn follow_stage(shared: &SharedGallery, halt: &Halt, counters: &Counters) {
    let mut wait = FOLLOW_INTERVAL;
    let mut out = false;
    while sleep_unless_halted(wait, halt) {
        let current = Arc::clone(&shared.read().unwrap_or_else(|p| p.into_inner()));
        match current.reread_if_changed() {
            Ok(changed) => {
                if out {
                    tracing::info!("gallery {} answers again", current.location());
                    out = false;
                }
                wait = FOLLOW_INTERVAL;
                if let Some(gallery) = changed {
                    gallery.build_indexes();
                    tracing::info!(
                        "gallery {} changed: now {} entries (generation {})",
                        gallery.location(),
                        gallery.entries().len(),
                        gallery.generation()
                    );
                    *shared.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(gallery);
                    counters.gallery_reloads.fetch_add(1, Ordering::SeqCst);
                }
            }
            Err(e) => {
                if !out {
                    counters.gallery_outages.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!("{e}; matching goes on with the gallery in memory");
                    out = true;
                }
                wait = (wait * 2).min(FOLLOW_MAX_BACKOFF);
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
    let counters = Counters::default();
    let queue = config.queue.max(1);
    let capture_queue = if config.pacing == Pacing::Live {
        1
    } else {
        queue
    };
    let (frames_tx, frames_rx) = bounded::<Frame>(capture_queue);
    let (detected_tx, detected_rx) = bounded::<Detected>(queue);
    let (embedded_tx, embedded_rx) = bounded::<Embedded>(queue);
    let (annotated_tx, annotated_rx) = bounded::<AnnotatedFrame>(queue);
    let Stages {
        mut detector,
        aligner,
        mut embedder,
        gallery,
    } = stages;
    let shared = gallery.map(|g| SharedGallery::new(Arc::new(g)));
    let started = Instant::now();
    let halt = Halt {
        caller: stop,
        run: AtomicBool::new(false),
    };
    let halt = &halt;
    std::thread::scope(|scope| {
        let (open_tx, open_rx) = bounded::<Result<SourceInfo, CaptureError>>(sources.len());
        let captures: Vec<_> = sources
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let links = CaptureLinks {
                    tx: frames_tx.clone(),
                    stale: frames_rx.clone(),
                    opened: open_tx.clone(),
                };
                let counters = &counters;
                scope.spawn(move || capture(spec, i, config, &links, halt, counters))
            })
            .collect();
        drop((frames_tx, open_tx));
        let infos = collect_opened(&open_rx, sources.len(), halt)?;
        on_open(&infos);
        let counters = &counters;
        let gallery = shared.as_ref();
        let follow = gallery.map(|g| scope.spawn(move || follow_stage(g, halt, counters)));
        // Each stage owns its receiver and sender, so a finished stage closes its output and
        // the next one drains and ends.
        let detect = scope.spawn(move || {
            detect_stage(
                &mut detector,
                &aligner,
                config.detect_every,
                frames_rx,
                detected_tx,
                counters,
            )
        });
        let embed = scope.spawn(move || {
            embed_stage(
                &mut embedder,
                config.batch,
                detected_rx,
                embedded_tx,
                counters,
            )
        });
        let annotate = scope
            .spawn(move || annotate_stage(gallery, config, embedded_rx, annotated_tx, counters));
        let sink_result = feed_sink(sink, &annotated_rx, halt, on_frame);
        halt.set();
        let capture_errors: Vec<CaptureError> = captures
            .into_iter()
            .filter_map(|h| h.join().expect("capture thread").err())
            .collect();
        let detect = detect.join().expect("detect thread");
        let embed = embed.join().expect("embed thread");
        let annotate = annotate.join().expect("annotate thread");
        if let Some(follow) = follow {
            follow.join().expect("gallery follower thread");
        }
        let (sinked, latency, sink_time) = sink_result?;
        sink.finish()?;
        if let Some(error) = capture_errors.into_iter().next() {
            tracing::warn!("{error}");
        }
        let mut report = RunReport::new(
            config.pacing,
            started.elapsed(),
            counters.captured.load(Ordering::SeqCst),
            sinked,
            counters.dropped.load(Ordering::SeqCst),
            counters.stage_errors.load(Ordering::SeqCst),
            vec![
                detect.0.stats("detect+align"),
                embed.0.stats("embed"),
                annotate.0.stats("match+track+render"),
                sink_time.stats("sink"),
            ],
            latency.stats("capture→sink latency"),
            vec![
                detect.1.stats("queue: capture→detect"),
                embed.1.stats("queue: detect→embed"),
                annotate.1.stats("queue: embed→match"),
            ],
        );
        report.gallery_reloads = counters.gallery_reloads.load(Ordering::SeqCst);
        report.gallery_outages = counters.gallery_outages.load(Ordering::SeqCst);
        Ok(report)
    })
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

/// A capture thread's channel ends: frames out, the same queue's receiving end (to drop a stale
/// frame in live pacing), and where to report whether the source opened.
struct CaptureLinks {
    tx: Sender<Frame>,
    stale: Receiver<Frame>,
    opened: Sender<Result<SourceInfo, CaptureError>>,
}

/// One source's thread: opens it, then reads, paces and hands on frames.
fn capture(
    spec: &str,
    source: usize,
    config: &PipelineConfig,
    links: &CaptureLinks,
    halt: &Halt<'_>,
    counters: &Counters,
) -> Result<(), CaptureError> {
    let mut reader = match open_source(spec, source) {
        Ok(reader) => reader,
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
    let _ = links.opened.send(Ok(info));
    let pace = config.pacing == Pacing::Live && !reader.is_live();
    let clock = Instant::now();
    let (mut index_offset, mut time_offset, mut delivered) = (0u64, 0.0f64, 0u64);
    while !halt.is_set() && config.max_frames.is_none_or(|max| delivered < max) {
        let Some(mut frame) = reader.next_frame()? else {
            if !config.loop_input || delivered == index_offset {
                break;
            }
            (index_offset, time_offset) = (
                delivered,
                time_offset + reader.frame_count().unwrap_or(0) as f64 / reader.fps(),
            );
            reader = open_source(spec, source)?;
            continue;
        };
        frame.index += index_offset;
        frame.time_s += time_offset;
        if pace {
            // Play the file at its own frame rate, as a camera would deliver it.
            let due = clock + Duration::from_secs_f64(frame.time_s);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            frame.captured = Instant::now();
        }
        counters.captured.fetch_add(1, Ordering::SeqCst);
        delivered += 1;
        if !hand_on(&links.tx, &links.stale, frame, config.pacing, counters) {
            break;
        }
    }
    Ok(())
}

/// Sends a frame on. Offline pacing waits for room. Live pacing never waits: when the
/// detector has not yet taken the previous frame, that stale frame is dropped (and counted) and
/// the new one takes its place, so the detector always starts on the newest frame. Returns
/// false when the pipeline has shut down.
fn hand_on(
    tx: &Sender<Frame>,
    stale: &Receiver<Frame>,
    frame: Frame,
    pacing: Pacing,
    counters: &Counters,
) -> bool {
    match pacing {
        Pacing::Offline => tx.send(frame).is_ok(),
        Pacing::Live => {
            let mut frame = frame;
            loop {
                match tx.try_send(frame) {
                    Ok(()) => return true,
                    Err(TrySendError::Disconnected(_)) => return false,
                    Err(TrySendError::Full(back)) => {
                        if stale.try_recv().is_ok() {
                            counters.dropped.fetch_add(1, Ordering::SeqCst);
                        }
                        frame = back;
                    }
                }
            }
        }
    }
}

fn detect_stage(
    detector: &mut Mtcnn,
    aligner: &Aligner,
    detect_every: u32,
    rx: Receiver<Frame>,
    tx: Sender<Detected>,
    counters: &Counters,
) -> (Samples, Samples) {
    let (mut time, mut occupancy) = (Samples::default(), Samples::default());
    let mut followed: HashMap<usize, (Vec<Face>, u32)> = HashMap::new();
    loop {
        occupancy.push(rx.len() as f64);
        let Ok(frame) = rx.recv() else { break };
        let timer = Timer::start();
        let (previous, since_full) = followed.entry(frame.source).or_default();
        let full = *since_full == 0 || previous.is_empty();
        let found = if full {
            detector.detect(&frame.image)
        } else {
            detector.refine(&frame.image, previous)
        };
        let faces = found.unwrap_or_else(|e| {
            counters.stage_errors.fetch_add(1, Ordering::SeqCst);
            tracing::warn!("frame {}: detection failed: {e}", frame.index);
            Vec::new()
        });
        *since_full = if full { 1 } else { *since_full + 1 } % detect_every.max(1);
        previous.clone_from(&faces);
        let (faces, chips): (Vec<Face>, Vec<RgbImage>) = faces
            .into_iter()
            .filter_map(|f| aligner.align(&frame.image, &f).ok().map(|chip| (f, chip)))
            .unzip();
        time.push(timer.ms());
        if tx
            .send(Detected {
                frame,
                faces,
                chips,
            })
            .is_err()
        {
            break;
        }
    }
    (time, occupancy)
}

fn embed_stage(
    embedder: &mut Embedder,
    batch: usize,
    rx: Receiver<Detected>,
    tx: Sender<Embedded>,
    counters: &Counters,
) -> (Samples, Samples) {
    let (mut time, mut occupancy) = (Samples::default(), Samples::default());
    loop {
        occupancy.push(rx.len() as f64);
        let Ok(first) = rx.recv() else { break };
        let mut group = vec![first];
        // Batch the faces of frames that are already waiting.
        while group.iter().map(|d| d.chips.len()).sum::<usize>() < batch {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let timer = Timer::start();
        let chips: Vec<RgbImage> = group
            .iter_mut()
            .flat_map(|d| std::mem::take(&mut d.chips))
            .collect();
        let mut embeddings = embedder.embed(&chips).unwrap_or_else(|e| {
            counters.stage_errors.fetch_add(1, Ordering::SeqCst);
            tracing::warn!("embedding failed: {e}");
            Vec::new()
        });
        if !chips.is_empty() {
            time.push(timer.ms());
        }
        for detected in group {
            let take = detected.faces.len().min(embeddings.len());
            let mine: Vec<Embedding> = embeddings.drain(..take).collect();
            let faces = detected.faces.into_iter().take(mine.len()).collect();
            if tx
                .send(Embedded {
                    frame: detected.frame,
                    faces,
                    embeddings: mine,
                })
                .is_err()
            {
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
    let mut trackers: HashMap<usize, Tracker> = HashMap::new();
    let mut rate = stats::RateMeter::default();
    loop {
        occupancy.push(rx.len() as f64);
        let Ok(embedded) = rx.recv() else { break };
        let timer = Timer::start();
        let current = gallery.map(|g| Arc::clone(&g.read().unwrap_or_else(|p| p.into_inner())));
        let observations = observe(current.as_deref(), config, &embedded, counters);
        let tracker = trackers
            .entry(embedded.frame.source)
            .or_insert_with(|| Tracker::new(config.tracker));
        let faces = tracker.update(&observations);
        let mut frame = embedded.frame;
        // The frame's pixels are no longer shared here (chips were copied out), so drawing
        // takes them over without a copy.
        let mut image = Arc::unwrap_or_clone(frame.image);
        let status = Status {
            fps: rate.tick(),
            dropped: counters.dropped.load(Ordering::SeqCst),
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

/// Each face's per-frame answer from the gallery.
fn observe(
    gallery: Option<&Gallery>,
    config: &PipelineConfig,
    embedded: &Embedded,
    counters: &Counters,
) -> Vec<Observation> {
    embedded
        .faces
        .iter()
        .zip(&embedded.embeddings)
        .map(|(face, embedding)| {
            let found = gallery
                .map(|g| g.identify(embedding, config.probe_modality, config.thresholds.as_ref()));
            let (identity, similarity, matched_modality) = match found {
                Some(Ok(found)) => (found.identity, found.similarity, found.matched_modality),
                Some(Err(e)) => {
                    counters.stage_errors.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!("matching failed: {e}");
                    (None, 0.0, None)
                }
                None => (None, 0.0, None),
            };
            Observation {
                bbox: face.bbox,
                score: face.score,
                identity,
                similarity,
                matched_modality,
            }
        })
        .collect()
}

/// The calling thread's part: hands frames to the sink; a stop request drains the rest.
fn feed_sink(
    sink: &mut dyn Sink,
    rx: &Receiver<AnnotatedFrame>,
    halt: &Halt<'_>,
    on_frame: &mut dyn FnMut(&AnnotatedFrame),
) -> Result<(u64, Samples, Samples), PipelineError> {
    let (mut latency, mut time, mut count) = (Samples::default(), Samples::default(), 0u64);
    for frame in rx {
        let timer = Timer::start();
        let control = sink.write(&frame);
        time.push(timer.ms());
        latency.push(frame.frame.captured.elapsed().as_secs_f64() * 1e3);
        count += 1;
        on_frame(&frame);
        match control {
            Ok(Control::Continue) => {}
            Ok(Control::Stop) => halt.set(),
            Err(e) => {
                halt.set();
                // Drain so the stage threads can finish.
                rx.iter().for_each(drop);
                return Err(e.into());
            }
        }
    }
    Ok((count, latency, time))
}
