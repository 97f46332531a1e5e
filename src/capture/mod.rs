//! Frame sources: video files (OpenCV), cameras (nokhwa), folders of images, and still images.

mod camera;
mod images;
mod video;

pub use camera::{CameraSource, list_cameras};
pub use images::{
    IMAGE_EXTENSIONS, ImageError, ImageSequence, MAX_IMAGE_PIXELS, decode_image,
    decode_image_within, images_in, load_image,
};
pub use video::{VideoSource, redact_credentials};

use crate::types::Frame;

/// Why capture failed; every variant names the source.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The source could not be opened.
    #[error("cannot open {source_name}: {reason}")]
    Open {
        /// File, folder or camera.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// Reading a frame failed mid-stream (a camera unplugged, a damaged file).
    #[error("{source_name}: reading frame {index} failed: {reason}")]
    Read {
        /// File, folder or camera.
        source_name: String,
        /// Frame number.
        index: u64,
        /// Why.
        reason: String,
    },
}

/// A stream of frames. `next_frame` returns `Ok(None)` at the end of a file. Not `Send`: camera
/// handles must stay on the thread that opened them, so the pipeline opens sources in place.
pub trait FrameSource {
    /// A name for messages (file path or camera).
    fn name(&self) -> &str;
    /// Frames per second the source delivers (a file's own rate; a camera's negotiated rate).
    fn fps(&self) -> f64;
    /// Frame count when known in advance (files).
    fn frame_count(&self) -> Option<u64>;
    /// Whether the source delivers frames in real time by itself (a camera) rather than as fast
    /// as they are read (a file).
    fn is_live(&self) -> bool;
    /// The next frame, or `None` at the end.
    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError>;
}

/// URL schemes opened as network streams (through FFmpeg).
const NETWORK_SCHEMES: [&str; 5] = ["rtsp://", "rtsps://", "http://", "https://", "rtmp://"];

/// Whether a source spec names a network stream (`rtsp://…`, `http(s)://…`).
pub fn is_network(spec: &str) -> bool {
    let lower = spec.to_ascii_lowercase();
    NETWORK_SCHEMES
        .iter()
        .any(|scheme| lower.starts_with(scheme))
}

/// Opens a video file, a folder of images, a network stream (`rtsp://`, `http(s)://`: one
/// that delivers nothing for `timeout` fails), or (for `camera:N`) a camera.
pub fn open_source(
    spec: &str,
    source: usize,
    timeout: std::time::Duration,
) -> Result<Box<dyn FrameSource>, CaptureError> {
    if is_network(spec) {
        return Ok(Box::new(VideoSource::open_url(spec, source, timeout)?));
    }
    if let Some(index) = spec.strip_prefix("camera:") {
        let index = index.parse().map_err(|_| CaptureError::Open {
            source_name: spec.to_string(),
            reason: "camera index must be a number, e.g. camera:0".into(),
        })?;
        return Ok(Box::new(CameraSource::open(index, None, source)?));
    }
    let path = std::path::Path::new(spec);
    if path.is_dir() {
        return Ok(Box::new(ImageSequence::open(path, 25.0, source)?));
    }
    Ok(Box::new(VideoSource::open(path, source)?))
}
