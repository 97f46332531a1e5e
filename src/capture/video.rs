//! Video files through OpenCV's `VideoCapture` (anything its ffmpeg backend reads).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use opencv::core::Mat;
use opencv::prelude::*;
use opencv::videoio::{self, VideoCapture};

use super::{CaptureError, FrameSource};
use crate::cv::mat_to_rgb;
use crate::types::Frame;

/// Frame rate assumed when a file does not state one.
const FALLBACK_FPS: f64 = 25.0;

/// A video file, read frame by frame.
pub struct VideoSource {
    name: String,
    capture: VideoCapture,
    /// Decoded into again for every frame: a new `Mat` per frame meant a fresh 2.7 MB buffer
    /// (720p) per frame, and its page faults cost more CPU than the decoding.
    decoded: Mat,
    fps: f64,
    frame_count: Option<u64>,
    next_index: u64,
    source: usize,
}

impl VideoSource {
    /// Opens a video file; fails with the file's name when it is missing or unreadable.
    pub fn open(path: &Path, source: usize) -> Result<Self, CaptureError> {
        let name = path.display().to_string();
        let open_error = |reason: String| CaptureError::Open {
            source_name: name.clone(),
            reason,
        };
        if !path.is_file() {
            return Err(open_error("no such file".into()));
        }
        let capture = VideoCapture::from_file(&name, videoio::CAP_FFMPEG)
            .map_err(|e| open_error(e.to_string()))?;
        if !capture.is_opened().unwrap_or(false) {
            return Err(open_error("not a video OpenCV/ffmpeg can read".into()));
        }
        let fps = capture.get(videoio::CAP_PROP_FPS).unwrap_or(0.0);
        let count = capture.get(videoio::CAP_PROP_FRAME_COUNT).unwrap_or(0.0);
        Ok(Self {
            name,
            capture,
            decoded: Mat::default(),
            fps: if fps.is_finite() && fps > 0.0 {
                fps
            } else {
                FALLBACK_FPS
            },
            frame_count: (count >= 1.0).then_some(count as u64),
            next_index: 0,
            source,
        })
    }
}

impl FrameSource for VideoSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn fps(&self) -> f64 {
        self.fps
    }

    fn frame_count(&self) -> Option<u64> {
        self.frame_count
    }

    fn is_live(&self) -> bool {
        false
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        let read_error = |reason: String, index| CaptureError::Read {
            source_name: self.name.clone(),
            index,
            reason,
        };
        let got = self
            .capture
            .read(&mut self.decoded)
            .map_err(|e| read_error(e.to_string(), self.next_index))?;
        if !got || self.decoded.empty() {
            return Ok(None);
        }
        let image =
            mat_to_rgb(&self.decoded).map_err(|e| read_error(e.to_string(), self.next_index))?;
        let index = self.next_index;
        self.next_index += 1;
        Ok(Some(Frame {
            source: self.source,
            index,
            time_s: index as f64 / self.fps,
            image: Arc::new(image),
            captured: Instant::now(),
            dropped_before: 0,
        }))
    }
}
