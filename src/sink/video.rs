//! Annotated video through OpenCV's `VideoWriter`: same size and frame rate as the input.

use std::path::{Path, PathBuf};

use opencv::core::Size;
use opencv::prelude::*;
use opencv::videoio::{self, VideoWriter};

use super::jsonl::{create_output, partial_path};
use super::{Control, Sink, SinkError};
use crate::cv::rgb_to_bgr_mat;
use crate::types::AnnotatedFrame;

/// The codec written: MPEG-4 Part 2 (`mp4v`), which Debian's OpenCV/ffmpeg always has (H.264
/// through `avc1` needs libx264 at run time, which OpenCV may not find) and every player and
/// ffprobe reads.
pub const VIDEO_CODEC: &str = "mp4v";

/// Writes frames to an MP4 file; it appears under its name only once finished.
pub struct VideoSink {
    path: PathBuf,
    partial: PathBuf,
    fps: f64,
    writer: Option<VideoWriter>,
}

impl VideoSink {
    /// Prepares the output; the writer opens at the first frame, whose size it takes.
    pub fn create(path: &Path, fps: f64) -> Result<Self, SinkError> {
        let partial = partial_path(path);
        create_output(path, &partial)?;
        Ok(Self {
            path: path.to_path_buf(),
            partial,
            fps,
            writer: None,
        })
    }

    fn error(&self, reason: impl ToString) -> SinkError {
        SinkError::write(&self.path, reason)
    }

    fn open(&self, width: u32, height: u32) -> Result<VideoWriter, SinkError> {
        let [a, b, c, d]: [char; 4] = VIDEO_CODEC
            .chars()
            .collect::<Vec<_>>()
            .try_into()
            .expect("four characters");
        let fourcc = VideoWriter::fourcc(a, b, c, d).map_err(|e| self.error(e))?;
        let size = Size::new(width as i32, height as i32);
        let writer = VideoWriter::new_with_backend(
            &self.partial,
            videoio::CAP_FFMPEG,
            fourcc,
            self.fps,
            size,
            true,
        )
        .map_err(|e| self.error(e))?;
        if !writer.is_opened().unwrap_or(false) {
            return Err(self.error(format!("OpenCV cannot write {VIDEO_CODEC} video")));
        }
        Ok(writer)
    }
}

impl Sink for VideoSink {
    fn write(&mut self, frame: &AnnotatedFrame) -> Result<Control, SinkError> {
        if self.writer.is_none() {
            self.writer = Some(self.open(frame.frame.image.width(), frame.frame.image.height())?);
        }
        let bgr = rgb_to_bgr_mat(&frame.frame.image).map_err(|e| self.error(e))?;
        let writer = self.writer.as_mut().expect("opened above");
        writer
            .write(&bgr)
            .map_err(|e| SinkError::write(&self.path, e))?;
        Ok(Control::Continue)
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if let Some(mut writer) = self.writer.take() {
            writer.release().map_err(|e| self.error(e))?;
        }
        std::fs::rename(&self.partial, &self.path).map_err(|e| self.error(e))
    }
}
