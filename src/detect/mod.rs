//! Face detection: the MTCNN cascade on three ONNX models, with its image pyramid and NMS.

mod mtcnn;
pub mod nms;
pub mod passes;
pub mod pyramid;

pub use mtcnn::{Mtcnn, StageTimes};
pub use passes::{FaceFinder, FoundFace, PadFill, Pass, Passes, RetryConfig};

use crate::runtime::{ModelSpec, RuntimeError};

/// P-Net: fully convolutional, any input size.
pub const PNET_SPEC: ModelSpec = ModelSpec {
    file: "mtcnn_pnet.onnx",
    input: "input",
    input_shape: [-1, 3, -1, -1],
    outputs: &["reg", "prob"],
};

/// R-Net: 24×24 candidates.
pub const RNET_SPEC: ModelSpec = ModelSpec {
    file: "mtcnn_rnet.onnx",
    input: "input",
    input_shape: [-1, 3, 24, 24],
    outputs: &["reg", "prob"],
};

/// O-Net: 48×48 candidates; landmarks are x1..x5 then y1..y5 relative to the box.
pub const ONET_SPEC: ModelSpec = ModelSpec {
    file: "mtcnn_onet.onnx",
    input: "input",
    input_shape: [-1, 3, 48, 48],
    outputs: &["reg", "landmarks", "prob"],
};

/// Detector settings. The defaults are facenet-pytorch's `MTCNN()` defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorConfig {
    /// Smallest face side to find, in pixels of the original image.
    pub min_face: f32,
    /// Score thresholds of P-Net, R-Net and O-Net.
    pub thresholds: [f32; 3],
    /// Ratio between pyramid levels.
    pub scale_factor: f32,
    /// Keep at most this many faces (the largest).
    pub max_faces: Option<usize>,
    /// Keep only the largest face.
    pub largest_only: bool,
    /// Detect on a copy downscaled so its longer side is at most this; boxes are mapped back.
    pub max_side: Option<u32>,
    /// Grey border added on every side before detection, as a fraction of the longer side:
    /// lets MTCNN find faces that fill a tightly cropped image (its crops never pad).
    pub border: f32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            min_face: 20.0,
            thresholds: [0.6, 0.7, 0.7],
            scale_factor: 0.709,
            max_faces: None,
            largest_only: false,
            max_side: None,
            border: 0.0,
        }
    }
}

impl DetectorConfig {
    /// Rejects settings the cascade cannot work with.
    pub fn validate(&self) -> Result<(), DetectError> {
        let bad = |what: String| Err(DetectError::BadConfig(what));
        if self.min_face.is_nan() || self.min_face < 1.0 {
            return bad(format!(
                "minimum face size must be ≥ 1 px, got {}",
                self.min_face
            ));
        }
        if !(self.scale_factor > 0.1 && self.scale_factor < 0.95) {
            return bad(format!(
                "scale factor must be in (0.1, 0.95), got {}",
                self.scale_factor
            ));
        }
        if self.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
            return bad(format!(
                "thresholds must be in [0, 1], got {:?}",
                self.thresholds
            ));
        }
        if !(0.0..=1.0).contains(&self.border) {
            return bad(format!("border must be in [0, 1], got {}", self.border));
        }
        if self.max_side.is_some_and(|s| s < 24) {
            return bad("working size must be ≥ 24 px".into());
        }
        Ok(())
    }
}

/// Why detection failed.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// A model could not be loaded or run.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The settings are out of range.
    #[error("invalid detector setting: {0}")]
    BadConfig(String),
    /// A downscaled working copy, or a padded or rotated copy for a retry pass, could not be
    /// made.
    #[error("making a resized, padded or rotated copy of the image failed: {0}")]
    Copy(#[from] opencv::Error),
    /// The image is too small to hold a face.
    #[error("image is {width}×{height} px, too small to detect faces in")]
    ImageTooSmall {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused() {
        assert!(DetectorConfig::default().validate().is_ok());
        let bad = DetectorConfig {
            min_face: 0.0,
            ..DetectorConfig::default()
        };
        assert!(matches!(bad.validate(), Err(DetectError::BadConfig(_))));
    }
}
