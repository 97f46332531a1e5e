//! Cameras through nokhwa (V4L2 on Linux).

use std::sync::Arc;
use std::time::Instant;

use nokhwa::Camera;
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
    Resolution,
};

use super::{CaptureError, FrameSource};
use crate::types::Frame;

/// A camera found on the system.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CameraInfo {
    /// Index to open it with.
    pub index: String,
    /// Human-readable name.
    pub name: String,
    /// Driver description.
    pub description: String,
}

/// The cameras nokhwa can see (empty when there are none, or no V4L2 at all).
pub fn list_cameras() -> Vec<CameraInfo> {
    nokhwa::query(ApiBackend::Auto)
        .unwrap_or_default()
        .into_iter()
        .map(|c| CameraInfo {
            index: c.index().to_string(),
            name: c.human_name(),
            description: c.description().to_string(),
        })
        .collect()
}

/// An open camera stream.
pub struct CameraSource {
    name: String,
    camera: Camera,
    fps: f64,
    next_index: u64,
    started: Instant,
    source: usize,
}

impl CameraSource {
    /// Opens camera `index`, asking for the format closest to `size` (width, height) at 30 fps.
    pub fn open(index: u32, size: Option<(u32, u32)>, source: usize) -> Result<Self, CaptureError> {
        let name = format!("camera {index}");
        let open_error = |reason: String| CaptureError::Open {
            source_name: name.clone(),
            reason,
        };
        let requested = match size {
            Some((w, h)) => RequestedFormatType::Closest(CameraFormat::new(
                Resolution::new(w, h),
                FrameFormat::MJPEG,
                30,
            )),
            None => RequestedFormatType::AbsoluteHighestFrameRate,
        };
        let mut camera = Camera::new(
            CameraIndex::Index(index),
            RequestedFormat::new::<RgbFormat>(requested),
        )
        .map_err(|e| open_error(format!("{e} (`carivis cameras` lists the cameras found)")))?;
        camera
            .open_stream()
            .map_err(|e| open_error(e.to_string()))?;
        let fps = f64::from(camera.frame_rate().max(1));
        Ok(Self {
            name,
            camera,
            fps,
            next_index: 0,
            started: Instant::now(),
            source,
        })
    }
}

impl FrameSource for CameraSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn fps(&self) -> f64 {
        self.fps
    }

    fn frame_count(&self) -> Option<u64> {
        None
    }

    fn is_live(&self) -> bool {
        true
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, CaptureError> {
        let read_error = |reason: String| CaptureError::Read {
            source_name: self.name.clone(),
            index: self.next_index,
            reason,
        };
        let buffer = self
            .camera
            .frame()
            .map_err(|e| read_error(format!("{e} (camera disconnected?)")))?;
        let image = buffer
            .decode_image::<RgbFormat>()
            .map_err(|e| read_error(e.to_string()))?;
        let index = self.next_index;
        self.next_index += 1;
        Ok(Some(Frame {
            source: self.source,
            index,
            time_s: self.started.elapsed().as_secs_f64(),
            image: Arc::new(image),
            captured: Instant::now(),
            dropped_before: 0,
        }))
    }
}
