//! The service's view of the running pipeline: a [`Sink`] that hands each annotated frame to
//! the live-view clients (MJPEG, as JPEG), each frame's line and each track decision to the
//! event clients (Server-Sent Events), and keeps per-source figures for `/metrics`.
//!
//! Every client has its own bounded queue; a client that does not keep up loses frames or
//! events (counted), never slows the pipeline: the sink only ever `try_send`s.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::body::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::pipeline::{RateMeter, Samples};
use crate::sink::{Control, FrameLine, Sink, SinkError};
use crate::types::{AnnotatedFrame, ConnectionState, Modality, RunEvent};

/// JPEG quality of the live view.
const JPEG_QUALITY: i32 = 80;
/// Latencies kept per source for the quantiles in `/metrics`.
const LATENCY_WINDOW: usize = 512;

/// One event for the event clients: its SSE event name and its JSON data.
#[derive(Clone, Debug)]
pub struct HubEvent {
    /// `frame`, `decision`, `source_status` or `gallery_status`.
    pub kind: &'static str,
    /// The event's JSON object.
    pub data: String,
}

/// A track's identity was decided, or its decided identity changed.
#[derive(Serialize)]
struct Decision<'a> {
    source: usize,
    frame: u64,
    time_s: f64,
    track: u64,
    identity: Option<&'a str>,
    similarity: f32,
    matched_modality: Option<Modality>,
}

/// One source's figures, as `/metrics` shows them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceFigures {
    /// The source's name (credentials hidden).
    pub name: String,
    /// Frames that reached the service.
    pub frames: u64,
    /// Frames the pipeline dropped for this source (live pacing).
    pub dropped: u64,
    /// Frames per second over the last frames.
    pub fps: f64,
    /// Capture-to-service latency quantiles (p50, p99) in ms over the last frames.
    pub latency_ms: (f64, f64),
    /// Times the source was lost.
    pub lost: u64,
    /// Times it came back.
    pub reconnects: u64,
    /// Whether it is delivering now.
    pub connected: bool,
}

/// A source's running figures.
struct SourceState {
    figures: SourceFigures,
    rate: RateMeter,
    latencies: VecDeque<f64>,
    /// Track id → the identity last announced as decided.
    decided: HashMap<u64, Option<String>>,
}

/// Where the pipeline's output meets the HTTP clients.
pub struct Hub {
    sources: Vec<Mutex<SourceState>>,
    viewers: Vec<Mutex<Vec<mpsc::Sender<Bytes>>>>,
    latest: Vec<Mutex<Option<Bytes>>>,
    listeners: Mutex<Vec<mpsc::Sender<HubEvent>>>,
    client_queue: usize,
    closed: AtomicBool,
    client_drops: AtomicU64,
}

impl Hub {
    /// A hub for sources named `names`, with `client_queue` frames or events queued per client.
    pub fn new(names: &[String], client_queue: usize) -> Self {
        let state = |name: &String| {
            Mutex::new(SourceState {
                figures: SourceFigures {
                    name: name.clone(),
                    connected: true,
                    ..SourceFigures::default()
                },
                rate: RateMeter::default(),
                latencies: VecDeque::with_capacity(LATENCY_WINDOW),
                decided: HashMap::new(),
            })
        };
        Self {
            sources: names.iter().map(state).collect(),
            viewers: names.iter().map(|_| Mutex::new(Vec::new())).collect(),
            latest: names.iter().map(|_| Mutex::new(None)).collect(),
            listeners: Mutex::new(Vec::new()),
            client_queue: client_queue.max(1),
            closed: AtomicBool::new(false),
            client_drops: AtomicU64::new(0),
        }
    }

    /// How many sources the hub serves.
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// A new live-view client of source `source` (`None`: no such source, or the hub is
    /// closed); the channel ends when the hub closes.
    pub fn watch(&self, source: usize) -> Option<mpsc::Receiver<Bytes>> {
        let viewers = self.viewers.get(source)?;
        self.subscribe(viewers)
    }

    /// The latest annotated frame of `source` as JPEG, when one arrived while someone watched.
    pub fn latest(&self, source: usize) -> Option<Bytes> {
        lock(self.latest.get(source)?).clone()
    }

    /// A new event client; the channel ends when the hub closes.
    pub fn listen(&self) -> Option<mpsc::Receiver<HubEvent>> {
        self.subscribe(&self.listeners)
    }

    fn subscribe<T>(&self, list: &Mutex<Vec<mpsc::Sender<T>>>) -> Option<mpsc::Receiver<T>> {
        let mut list = lock(list);
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = mpsc::channel(self.client_queue);
        list.push(tx);
        Some(rx)
    }

    /// Each source's figures now.
    pub fn figures(&self) -> Vec<SourceFigures> {
        self.sources
            .iter()
            .map(|s| {
                let s = lock(s);
                let mut figures = s.figures.clone();
                figures.latency_ms = quantiles(&s.latencies);
                figures
            })
            .collect()
    }

    /// Frames and events not delivered because a client's queue was full.
    pub fn client_drops(&self) -> u64 {
        self.client_drops.load(Ordering::SeqCst)
    }

    /// Live-view and event clients connected now.
    pub fn clients(&self) -> (usize, usize) {
        let viewers = self.viewers.iter().map(connected).sum();
        (viewers, connected(&self.listeners))
    }

    /// Ends every client's stream and refuses new ones (the service is stopping).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for viewers in &self.viewers {
            lock(viewers).clear();
        }
        lock(&self.listeners).clear();
    }

    /// Offers `item` to every client of `list` without waiting; full queues lose it (counted),
    /// closed ones are forgotten.
    fn offer<T: Clone>(&self, list: &Mutex<Vec<mpsc::Sender<T>>>, item: &T) {
        lock(list).retain(|tx| match tx.try_send(item.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.client_drops.fetch_add(1, Ordering::SeqCst);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    fn broadcast(&self, kind: &'static str, data: &impl Serialize) {
        if lock(&self.listeners).is_empty() {
            return;
        }
        match serde_json::to_string(data) {
            Ok(data) => self.offer(&self.listeners, &HubEvent { kind, data }),
            Err(e) => tracing::warn!("event not sent: {e}"),
        }
    }

    /// Updates the source's figures and announces its newly decided tracks.
    fn account(&self, frame: &AnnotatedFrame) {
        let Some(state) = self.sources.get(frame.frame.source) else {
            return;
        };
        let mut decisions = Vec::new();
        {
            let mut state = lock(state);
            state.figures.frames += 1;
            state.figures.dropped += frame.frame.dropped_before;
            state.figures.fps = state.rate.tick();
            if state.latencies.len() == LATENCY_WINDOW {
                state.latencies.pop_front();
            }
            let latency = frame.frame.captured.elapsed().as_secs_f64() * 1e3;
            state.latencies.push_back(latency);
            let mut seen = HashMap::with_capacity(frame.faces.len());
            for face in &frame.faces {
                let before = state.decided.get(&face.track);
                let announce = face.decided && before != Some(&face.identity);
                if face.decided {
                    seen.insert(face.track, face.identity.clone());
                } else if let Some(before) = before {
                    seen.insert(face.track, before.clone());
                }
                if announce {
                    decisions.push(face);
                }
            }
            state.decided = seen;
        }
        for face in decisions {
            self.broadcast(
                "decision",
                &Decision {
                    source: frame.frame.source,
                    frame: frame.frame.index,
                    time_s: frame.frame.time_s,
                    track: face.track,
                    identity: face.identity.as_deref(),
                    similarity: face.similarity,
                    matched_modality: face.matched_modality,
                },
            );
        }
    }

    /// Encodes the frame for the live view when anyone watches its source.
    fn show(&self, frame: &AnnotatedFrame) {
        let source = frame.frame.source;
        let Some(viewers) = self.viewers.get(source) else {
            return;
        };
        if lock(viewers).is_empty() {
            return;
        }
        match crate::cv::encode_jpeg(&frame.frame.image, JPEG_QUALITY) {
            Ok(jpeg) => {
                let jpeg = Bytes::from(jpeg);
                *lock(&self.latest[source]) = Some(jpeg.clone());
                self.offer(viewers, &jpeg);
            }
            Err(e) => tracing::warn!("live view: cannot encode a frame: {e}"),
        }
    }
}

/// The p50 and p99 of `values` (0 when empty), as the run report computes them.
fn quantiles(values: &VecDeque<f64>) -> (f64, f64) {
    let mut samples = Samples::default();
    values.iter().for_each(|&v| samples.push(v));
    let stats = samples.stats("latency");
    (stats.p50, stats.p99)
}

/// Clients of `list` still connected (a gone one is forgotten at the next offer).
fn connected<T>(list: &Mutex<Vec<mpsc::Sender<T>>>) -> usize {
    lock(list).iter().filter(|tx| !tx.is_closed()).count()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pipeline's sink for the service: feeds a shared [`Hub`].
pub struct HubSink(pub std::sync::Arc<Hub>);

impl Sink for HubSink {
    fn write(&mut self, frame: &AnnotatedFrame) -> Result<Control, SinkError> {
        let hub = &self.0;
        hub.account(frame);
        hub.show(frame);
        hub.broadcast("frame", &FrameLine::of(frame));
        Ok(Control::Continue)
    }

    fn event(&mut self, event: &RunEvent) -> Result<(), SinkError> {
        let hub = &self.0;
        match event {
            RunEvent::SourceStatus(status) => {
                if let Some(state) = hub.sources.get(status.source) {
                    let mut state = lock(state);
                    match status.status {
                        ConnectionState::Lost => {
                            state.figures.lost += 1;
                            state.figures.connected = false;
                        }
                        ConnectionState::Reconnected => {
                            state.figures.reconnects += 1;
                            state.figures.connected = true;
                        }
                    }
                }
                hub.broadcast("source_status", status);
            }
            RunEvent::GalleryStatus(status) => hub.broadcast("gallery_status", status),
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.0.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::types::{FaceBox, Frame, RgbImage, SourceStatus, TrackedFace};

    fn frame(index: u64, faces: Vec<TrackedFace>) -> AnnotatedFrame {
        AnnotatedFrame {
            frame: Frame {
                source: 0,
                index,
                time_s: index as f64 / 25.0,
                image: Arc::new(RgbImage::new(32, 24)),
                captured: Instant::now(),
                dropped_before: 1,
            },
            faces,
        }
    }

    fn face(track: u64, identity: Option<&str>, decided: bool) -> TrackedFace {
        TrackedFace {
            track,
            bbox: FaceBox {
                x1: 1.0,
                y1: 1.0,
                x2: 10.0,
                y2: 10.0,
            },
            score: 0.99,
            identity: identity.map(String::from),
            similarity: 0.8,
            matched_modality: Some(Modality::Photo),
            decided,
            frame_identity: identity.map(String::from),
            embedded: true,
        }
    }

    fn drain(rx: &mut mpsc::Receiver<HubEvent>, kind: &str) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter(|e| e.kind == kind)
            .map(|e| e.data)
            .collect()
    }

    #[test]
    fn a_decision_is_announced_once_and_again_when_the_identity_changes() {
        let hub = Arc::new(Hub::new(&["cam".into()], 64));
        let mut events = hub.listen().unwrap();
        let mut sink = HubSink(Arc::clone(&hub));
        sink.write(&frame(0, vec![face(7, Some("Ann"), false)]))
            .unwrap();
        sink.write(&frame(1, vec![face(7, Some("Ann"), true)]))
            .unwrap();
        sink.write(&frame(2, vec![face(7, Some("Ann"), true)]))
            .unwrap();
        sink.write(&frame(3, vec![face(7, Some("Bob"), true)]))
            .unwrap();
        let decisions = drain(&mut events, "decision");
        assert_eq!(decisions.len(), 2, "{decisions:?}");
        assert!(
            decisions[0].contains("\"identity\":\"Ann\"") && decisions[0].contains("\"frame\":1")
        );
        assert!(
            decisions[1].contains("\"identity\":\"Bob\"") && decisions[1].contains("\"frame\":3")
        );
        let figures = &hub.figures()[0];
        assert_eq!((figures.frames, figures.dropped), (4, 4));
    }

    #[test]
    fn a_slow_client_loses_events_without_blocking_the_sink_and_close_ends_streams() {
        let hub = Arc::new(Hub::new(&["cam".into()], 2));
        let mut slow = hub.listen().unwrap();
        let mut sink = HubSink(Arc::clone(&hub));
        for i in 0..10 {
            sink.write(&frame(i, Vec::new())).unwrap();
        }
        assert_eq!(hub.client_drops(), 8);
        sink.event(&RunEvent::SourceStatus(SourceStatus {
            source: 0,
            name: "cam".into(),
            time_s: 1.0,
            unix_time: 0.0,
            status: ConnectionState::Lost,
            reason: None,
            attempts: 0,
        }))
        .unwrap();
        assert!(!hub.figures()[0].connected);
        sink.finish().unwrap();
        assert_eq!(drain(&mut slow, "frame").len(), 2);
        assert!(slow.try_recv().is_err());
        assert!(hub.listen().is_none(), "no new clients once closed");
    }

    #[test]
    fn quantiles_of_a_window() {
        let values: VecDeque<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantiles(&values), (51.0, 99.0));
        assert_eq!(quantiles(&VecDeque::new()), (0.0, 0.0));
    }
}
