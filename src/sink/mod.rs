//! Where annotated frames go: an annotated video file, JSON Lines, a window.

mod jsonl;
mod video;
mod window;

pub use jsonl::{FrameLine, JsonlSink};
pub use video::{VIDEO_CODEC, VideoSink};
pub use window::WindowSink;

use std::path::PathBuf;

use crate::types::{AnnotatedFrame, RunEvent};

/// Why a sink failed; every variant names its file or window.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The output could not be created.
    #[error("cannot create {path}: {reason}")]
    Create {
        /// The output.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing failed.
    #[error("writing {path} failed: {reason}")]
    Write {
        /// The output.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl SinkError {
    /// A write to `path` failed.
    pub fn write(path: &std::path::Path, reason: impl ToString) -> Self {
        SinkError::Write {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// Whether the run should go on after a frame was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep going.
    Continue,
    /// The user asked to stop (window closed, `q` or Esc).
    Stop,
}

/// A consumer of annotated frames, fed in order on one thread.
pub trait Sink {
    /// Takes one frame.
    fn write(&mut self, frame: &AnnotatedFrame) -> Result<Control, SinkError>;
    /// Takes a source's or the gallery's drop-out or reconnection (sinks without a place for
    /// it ignore it).
    fn event(&mut self, event: &RunEvent) -> Result<(), SinkError> {
        let _ = event;
        Ok(())
    }
    /// Flushes and closes the output so it is complete and readable.
    fn finish(&mut self) -> Result<(), SinkError>;
}

/// Several sinks fed the same frames (e.g. a video file and JSON Lines).
pub struct Tee(pub Vec<Box<dyn Sink>>);

impl Sink for Tee {
    fn write(&mut self, frame: &AnnotatedFrame) -> Result<Control, SinkError> {
        let mut control = Control::Continue;
        for sink in &mut self.0 {
            if sink.write(frame)? == Control::Stop {
                control = Control::Stop;
            }
        }
        Ok(control)
    }

    fn event(&mut self, event: &RunEvent) -> Result<(), SinkError> {
        self.0.iter_mut().try_for_each(|s| s.event(event))
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.0.iter_mut().try_for_each(|s| s.finish())
    }
}
