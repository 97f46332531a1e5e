//! Frames waiting for detection: one queue per source, served to a pool of detection workers
//! oldest frame first. A source's frame goes to one worker at a time, together with that
//! source's detection state, so each source's frames leave detection in order and its state
//! is never shared; a busy source cannot hold back another, because a free worker always takes
//! the oldest frame of a source that no worker holds.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::Pacing;
use crate::types::Frame;

/// The queues were closed: the pipeline is shutting down.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// Per-source queues of frames for detection, with each source's state `S`.
pub struct FrameQueues<S> {
    inner: Mutex<Inner<S>>,
    changed: Condvar,
    capacity: usize,
    pacing: Pacing,
}

struct Inner<S> {
    sources: Vec<Slot<S>>,
    producers: usize,
    closed: bool,
}

struct Slot<S> {
    frames: VecDeque<Frame>,
    /// `None` while a worker holds the source.
    state: Option<S>,
}

/// A source's frame handed to a worker, with the source's state (give it back with
/// [`FrameQueues::give_back`]).
pub struct Work<S> {
    /// The frame.
    pub frame: Frame,
    /// Its source's detection state.
    pub state: S,
    /// Frames still waiting in all queues when this one was taken.
    pub waiting: usize,
}

impl<S> FrameQueues<S> {
    /// One queue per state (source), each holding up to `capacity` frames; every source's
    /// producer must call [`FrameQueues::finish`] when it ends.
    pub fn new(states: Vec<S>, capacity: usize, pacing: Pacing) -> Self {
        let producers = states.len();
        let sources = states
            .into_iter()
            .map(|state| Slot {
                frames: VecDeque::new(),
                state: Some(state),
            })
            .collect();
        Self {
            inner: Mutex::new(Inner {
                sources,
                producers,
                closed: false,
            }),
            changed: Condvar::new(),
            capacity: capacity.max(1),
            pacing,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame of its source. Offline pacing waits for room; live pacing never waits:
    /// a full queue drops its oldest frame, and the new frame counts it in
    /// [`Frame::dropped_before`]. Returns how many frames were dropped.
    pub fn push(&self, mut frame: Frame) -> Result<u64, Closed> {
        let mut inner = self.lock();
        let source = frame.source;
        let mut dropped = 0;
        loop {
            if inner.closed {
                return Err(Closed);
            }
            let frames = &mut inner.sources[source].frames;
            if frames.len() < self.capacity {
                frames.push_back(frame);
                self.changed.notify_all();
                return Ok(dropped);
            }
            match self.pacing {
                Pacing::Live => {
                    let stale = frames.pop_front().expect("a full queue has a frame");
                    frame.dropped_before += stale.dropped_before + 1;
                    dropped += 1;
                }
                Pacing::Offline => {
                    inner = self.changed.wait(inner).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// A source's producer has delivered its last frame.
    pub fn finish(&self) {
        self.lock().producers -= 1;
        self.changed.notify_all();
    }

    /// Stops everything: producers get [`Closed`], workers get `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// The oldest frame of a source no worker holds, waiting for one; `None` once every
    /// producer has finished and every queue is empty, or the queues are closed.
    pub fn take(&self) -> Option<Work<S>> {
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return None;
            }
            if let Some(source) = oldest_free(&inner.sources) {
                let waiting = inner.sources.iter().map(|s| s.frames.len()).sum::<usize>() - 1;
                let slot = &mut inner.sources[source];
                let frame = slot.frames.pop_front().expect("chosen for its frame");
                let state = slot.state.take().expect("chosen as free");
                self.changed.notify_all();
                return Some(Work {
                    frame,
                    state,
                    waiting,
                });
            }
            if inner.producers == 0 && inner.sources.iter().all(|s| s.frames.is_empty()) {
                return None;
            }
            inner = self.changed.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Returns a source's state after its frame went on, so its next frame can be taken.
    pub fn give_back(&self, source: usize, state: S) {
        self.lock().sources[source].state = Some(state);
        self.changed.notify_all();
    }
}

/// The source whose front frame was captured first, among those no worker holds.
fn oldest_free<S>(sources: &[Slot<S>]) -> Option<usize> {
    sources
        .iter()
        .enumerate()
        .filter(|(_, s)| s.state.is_some())
        .filter_map(|(i, s)| s.frames.front().map(|f| (i, f.captured)))
        .min_by_key(|&(_, captured)| captured)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::types::RgbImage;

    fn frame(source: usize, index: u64, start: Instant) -> Frame {
        Frame {
            source,
            index,
            time_s: index as f64,
            image: Arc::new(RgbImage::new(1, 1)),
            captured: start + Duration::from_millis(index * 10 + source as u64),
            dropped_before: 0,
        }
    }

    #[test]
    fn live_queues_keep_the_newest_frames_and_count_the_dropped_ones_per_source() {
        let start = Instant::now();
        let queues = FrameQueues::new(vec![(), ()], 1, Pacing::Live);
        let drops: Vec<u64> = (0..4)
            .map(|i| queues.push(frame(0, i, start)).unwrap())
            .collect();
        assert_eq!(drops, [0, 1, 1, 1]);
        queues.push(frame(1, 0, start)).unwrap();
        let first = queues.take().unwrap();
        assert_eq!(
            (
                first.frame.source,
                first.frame.index,
                first.frame.dropped_before
            ),
            (1, 0, 0)
        );
        let second = queues.take().unwrap();
        assert_eq!(
            (
                second.frame.source,
                second.frame.index,
                second.frame.dropped_before
            ),
            (0, 3, 3)
        );
    }

    #[test]
    fn a_held_source_waits_while_other_sources_are_served_oldest_first() {
        let start = Instant::now();
        let queues = FrameQueues::new(vec![0u32, 1], 8, Pacing::Offline);
        for i in 0..3 {
            queues.push(frame(0, i, start)).unwrap();
        }
        queues.push(frame(1, 5, start)).unwrap();
        let held = queues.take().unwrap();
        assert_eq!(
            (held.frame.source, held.frame.index, held.waiting),
            (0, 0, 3)
        );
        let next = queues.take().unwrap();
        assert_eq!((next.frame.source, next.frame.index), (1, 5));
        queues.give_back(1, next.state);
        queues.give_back(0, held.state);
        assert_eq!(queues.take().unwrap().frame.index, 1);
    }

    #[test]
    fn workers_end_when_every_producer_finished_and_the_queues_are_empty() {
        let start = Instant::now();
        let queues = Arc::new(FrameQueues::new(vec![0u8; 2], 2, Pacing::Offline));
        let worker = {
            let queues = Arc::clone(&queues);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while let Some(work) = queues.take() {
                    seen.push((work.frame.source, work.frame.index));
                    queues.give_back(work.frame.source, work.state);
                }
                seen
            })
        };
        for source in 0..2 {
            for i in 0..5 {
                queues.push(frame(source, i, start)).unwrap();
            }
            queues.finish();
        }
        let seen = worker.join().unwrap();
        for source in 0..2 {
            let order: Vec<u64> = seen
                .iter()
                .filter(|(s, _)| *s == source)
                .map(|&(_, i)| i)
                .collect();
            assert_eq!(order, [0, 1, 2, 3, 4]);
        }
    }

    #[test]
    fn closing_releases_a_waiting_producer() {
        let start = Instant::now();
        let queues = Arc::new(FrameQueues::new(vec![()], 1, Pacing::Offline));
        queues.push(frame(0, 0, start)).unwrap();
        let producer = {
            let queues = Arc::clone(&queues);
            std::thread::spawn(move || queues.push(frame(0, 1, start)))
        };
        std::thread::sleep(Duration::from_millis(50));
        queues.close();
        assert_eq!(producer.join().unwrap(), Err(Closed));
        assert!(queues.take().is_none());
    }
}
