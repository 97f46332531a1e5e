//! Measurements of a run: per-stage times, latency, queue occupancy, frame rates.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Pacing;

/// A stopwatch for one piece of work.
pub struct Timer(Instant);

impl Timer {
    /// Starts timing.
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// Milliseconds since the start.
    pub fn ms(&self) -> f64 {
        self.0.elapsed().as_secs_f64() * 1e3
    }
}

/// The queues between stages, named for [`QueueGauges`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// Frames waiting for a detection worker (all sources).
    CaptureDetect,
    /// Frames waiting to be embedded.
    DetectEmbed,
    /// Frames waiting to be matched, tracked and drawn.
    EmbedMatch,
}

impl Queue {
    /// Every queue, in pipeline order.
    pub const ALL: [Queue; 3] = [Queue::CaptureDetect, Queue::DetectEmbed, Queue::EmbedMatch];

    /// A short name for metrics (`capture_detect`, …).
    pub fn name(self) -> &'static str {
        match self {
            Queue::CaptureDetect => "capture_detect",
            Queue::DetectEmbed => "detect_embed",
            Queue::EmbedMatch => "embed_match",
        }
    }
}

/// The current depth of each queue while a run goes on, for monitoring from outside the run
/// (the HTTP service's `/metrics`); the stages store a depth each time they take an item.
#[derive(Debug, Default)]
pub struct QueueGauges([AtomicUsize; 3]);

impl QueueGauges {
    /// Records `queue`'s depth now.
    pub fn set(&self, queue: Queue, depth: usize) {
        self.0[queue as usize].store(depth, Ordering::Relaxed);
    }

    /// `queue`'s depth when a stage last looked.
    pub fn get(&self, queue: Queue) -> usize {
        self.0[queue as usize].load(Ordering::Relaxed)
    }
}

/// Values collected during a run (times in ms, queue lengths).
#[derive(Clone, Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    /// Adds a value.
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    /// Adds another collection's values (several workers' samples summarised as one).
    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// Summary under a name.
    pub fn stats(mut self, name: &str) -> StageStats {
        self.0.sort_by(f64::total_cmp);
        let n = self.0.len();
        let at = |q: f64| {
            if n == 0 {
                0.0
            } else {
                self.0[((n - 1) as f64 * q).round() as usize]
            }
        };
        StageStats {
            name: name.to_string(),
            count: n,
            mean: if n == 0 {
                0.0
            } else {
                self.0.iter().sum::<f64>() / n as f64
            },
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Summary of one stage's times (ms) or one queue's occupancy (frames).
#[derive(Clone, Debug, Serialize)]
pub struct StageStats {
    /// What was measured.
    pub name: String,
    /// Number of samples.
    pub count: usize,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// Frames per second over the last second or so of frames.
#[derive(Default)]
pub struct RateMeter(VecDeque<Instant>);

impl RateMeter {
    /// Records a frame now and returns the current rate.
    pub fn tick(&mut self) -> f64 {
        let now = Instant::now();
        self.0.push_back(now);
        while self.0.len() > 30 {
            self.0.pop_front();
        }
        let span = now
            .duration_since(*self.0.front().expect("just pushed"))
            .as_secs_f64();
        if self.0.len() < 2 || span == 0.0 {
            0.0
        } else {
            (self.0.len() - 1) as f64 / span
        }
    }
}

/// What one source delivered during a run.
#[derive(Clone, Debug, Serialize)]
pub struct SourceReport {
    /// Index of the source (its place among the inputs).
    pub source: usize,
    /// File or camera name.
    pub name: String,
    /// Frames read from the source.
    pub frames_captured: u64,
    /// Frames of this source that reached the sink.
    pub frames_out: u64,
    /// Frames of this source dropped before detection (live pacing).
    pub frames_dropped: u64,
    /// Frames out per second of the run's wall-clock time.
    pub fps: f64,
    /// Capture-to-sink latency of this source's frames (ms).
    pub latency: StageStats,
    /// Times this live source stopped delivering.
    pub lost: u64,
    /// Times it was reopened and delivered again.
    pub reconnects: u64,
}

impl SourceReport {
    /// Assembles one source's figures.
    pub fn new(
        source: usize,
        name: &str,
        elapsed: Duration,
        frames_captured: u64,
        frames_out: u64,
        frames_dropped: u64,
        latency: StageStats,
    ) -> Self {
        Self {
            source,
            name: name.to_string(),
            frames_captured,
            frames_out,
            frames_dropped,
            fps: per_second(frames_out, elapsed),
            latency,
            lost: 0,
            reconnects: 0,
        }
    }

    /// The same report with the source's drop-out counts.
    pub fn with_dropouts(self, lost: u64, reconnects: u64) -> Self {
        Self {
            lost,
            reconnects,
            ..self
        }
    }
}

/// Frames per second of wall-clock time (0 for no time).
fn per_second(frames: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        frames as f64 / seconds
    } else {
        0.0
    }
}

/// What a run did and how fast.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Live or offline.
    pub pacing: Pacing,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Frames read from the sources.
    pub frames_captured: u64,
    /// Frames that reached the sink.
    pub frames_out: u64,
    /// Frames dropped at the sources (live pacing).
    pub frames_dropped: u64,
    /// Frames where a stage failed (the frame went on without faces).
    pub stage_errors: u64,
    /// Times a live source stopped delivering, all sources together.
    pub sources_lost: u64,
    /// Times a lost live source was reopened, all sources together.
    pub reconnects: u64,
    /// Times the gallery was read again because another process changed it.
    pub gallery_reloads: u64,
    /// Times the gallery's store stopped answering (recognition went on with the copy in
    /// memory until it answered again).
    pub gallery_outages: u64,
    /// Frames out per second of wall-clock time, all sources together.
    pub fps: f64,
    /// Time per stage (ms).
    pub stages: Vec<StageStats>,
    /// Capture-to-sink latency of every frame (ms).
    pub latency: StageStats,
    /// Queue lengths seen by each consumer before taking an item (frames).
    pub queues: Vec<StageStats>,
    /// Each source's own figures.
    pub sources: Vec<SourceReport>,
}

impl RunReport {
    /// Assembles the report; totals are the sums over `sources`.
    pub fn new(
        pacing: Pacing,
        elapsed: Duration,
        sources: Vec<SourceReport>,
        stage_errors: u64,
        stages: Vec<StageStats>,
        latency: StageStats,
        queues: Vec<StageStats>,
    ) -> Self {
        let sum = |f: fn(&SourceReport) -> u64| sources.iter().map(f).sum::<u64>();
        let frames_out = sum(|s| s.frames_out);
        Self {
            pacing,
            seconds: elapsed.as_secs_f64(),
            frames_captured: sum(|s| s.frames_captured),
            frames_out,
            frames_dropped: sum(|s| s.frames_dropped),
            stage_errors,
            sources_lost: sum(|s| s.lost),
            reconnects: sum(|s| s.reconnects),
            gallery_reloads: 0,
            gallery_outages: 0,
            fps: per_second(frames_out, elapsed),
            stages,
            latency,
            queues,
            sources,
        }
    }

    /// A readable multi-line summary.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:?}: {} frames in {:.1} s = {:.1} fps; captured {}, dropped {}, stage errors {}; \
             sources lost {}, reconnected {}; gallery reloads {}, outages {}\n",
            self.pacing,
            self.frames_out,
            self.seconds,
            self.fps,
            self.frames_captured,
            self.frames_dropped,
            self.stage_errors,
            self.sources_lost,
            self.reconnects,
            self.gallery_reloads,
            self.gallery_outages
        );
        out.push_str(&format!(
            "{:<28} {:>7} {:>9} {:>9} {:>9}\n",
            "", "count", "mean", "p50", "p99"
        ));
        for s in self.stages.iter().chain([&self.latency]) {
            out.push_str(&format!(
                "{:<28} {:>7} {:>7.1}ms {:>7.1}ms {:>7.1}ms\n",
                s.name, s.count, s.mean, s.p50, s.p99
            ));
        }
        for q in &self.queues {
            out.push_str(&format!(
                "{:<28} {:>7} {:>9.2} {:>9.0} {:>9.0}\n",
                q.name, q.count, q.mean, q.p50, q.p99
            ));
        }
        if self.sources.len() > 1 {
            out.push_str(&format!(
                "{:<28} {:>7} {:>9} {:>9} {:>9} {:>9}\n",
                "source", "out", "dropped", "fps", "lat p50", "lat p99"
            ));
            for s in &self.sources {
                out.push_str(&format!(
                    "{:<28} {:>7} {:>9} {:>9.1} {:>7.1}ms {:>7.1}ms\n",
                    format!("{} {}", s.source, short_name(&s.name)),
                    s.frames_out,
                    s.frames_dropped,
                    s.fps,
                    s.latency.p50,
                    s.latency.p99
                ));
            }
        }
        out
    }
}

/// The last part of a source's path, so table rows stay narrow.
fn short_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_sample() {
        let mut samples = Samples::default();
        (1..=100).for_each(|v| samples.push(f64::from(v)));
        let s = samples.stats("x");
        assert_eq!(
            (s.count, s.mean, s.p50, s.p99, s.max),
            (100, 50.5, 51.0, 99.0, 100.0)
        );
        assert_eq!(Samples::default().stats("empty").mean, 0.0);
    }
}
