//! Video files through OpenCV's `VideoCapture` (anything its ffmpeg backend reads).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opencv::core::{Mat, Vector};
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
    live: bool,
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
        Self::from_capture(name, capture, source, false)
    }

    /// Opens a network stream (anything FFmpeg reads: RTSP, HTTP MJPEG, HLS, …); opening, and
    /// later each read, fail when nothing arrives for `timeout`. Credentials in the URL never
    /// appear in its name.
    pub fn open_url(url: &str, source: usize, timeout: Duration) -> Result<Self, CaptureError> {
        let name = redact_credentials(url);
        let ms = i32::try_from(timeout.as_millis())
            .unwrap_or(i32::MAX)
            .max(1);
        let params = Vector::from_slice(&[
            videoio::CAP_PROP_OPEN_TIMEOUT_MSEC,
            ms,
            videoio::CAP_PROP_READ_TIMEOUT_MSEC,
            ms,
        ]);
        let capture = VideoCapture::from_file_with_params(url, videoio::CAP_FFMPEG, &params)
            .map_err(|e| CaptureError::Open {
                source_name: name.clone(),
                reason: e.to_string(),
            })?;
        Self::from_capture(name, capture, source, true)
    }

    fn from_capture(
        name: String,
        capture: VideoCapture,
        source: usize,
        live: bool,
    ) -> Result<Self, CaptureError> {
        if !capture.is_opened().unwrap_or(false) {
            let reason = if live {
                "no stream there, or none FFmpeg can read (nothing arrived before the timeout?)"
            } else {
                "not a video OpenCV/ffmpeg can read"
            };
            return Err(CaptureError::Open {
                source_name: name,
                reason: reason.into(),
            });
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
            frame_count: (count >= 1.0 && !live).then_some(count as u64),
            next_index: 0,
            source,
            live,
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
        self.live
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

/// A URL with any password replaced by `***` (`rtsp://user:***@host/…`), for messages.
pub fn redact_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_credentials;

    #[test]
    fn passwords_in_urls_are_hidden() {
        assert_eq!(
            redact_credentials("rtsp://admin:s3cr%40t@10.0.0.2:554/live?x=1"),
            "rtsp://admin:***@10.0.0.2:554/live?x=1"
        );
        assert_eq!(
            redact_credentials("http://127.0.0.1:8080/cam.mjpeg"),
            "http://127.0.0.1:8080/cam.mjpeg"
        );
        assert_eq!(redact_credentials("rtsp://cam/a@b"), "rtsp://cam/a@b");
    }
}
