//! Reading still images into RGB, with errors that name the file and the problem.

use std::path::{Path, PathBuf};

use crate::types::RgbImage;

/// Largest image accepted, in pixels (about 100 megapixels: 10000×10000). Bigger images are
/// refused before decoding rather than exhausting memory.
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The image file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a supported image, or the image is damaged.
    #[error("{path}: not a readable image ({reason})")]
    Decode {
        /// The image file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// The image has more pixels than the limit ([`MAX_IMAGE_PIXELS`] unless the caller set
    /// another).
    #[error("{path}: image is {width}×{height} px, larger than the {limit}-pixel limit")]
    TooLarge {
        /// The image file.
        path: PathBuf,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The limit it exceeds, in pixels.
        limit: u64,
    },
    /// The image has no pixels to look at.
    #[error("{path}: image is {width}×{height} px, too small to hold a face")]
    TooSmall {
        /// The image file.
        path: PathBuf,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

/// Smallest side accepted; MTCNN's smallest window is 12 px.
const MIN_SIDE: u32 = 12;

/// Reads an image file (PNG, JPEG, BMP, WebP, TIFF; grey, RGB or RGBA) as 8-bit RGB. The
/// header is read first so that absurd sizes are refused before any pixel is decoded.
pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes, path)
}

/// Decodes the bytes of an image file as [`load_image`] does; `path` names the image in errors.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<RgbImage, ImageError> {
    decode_image_within(bytes, path, MAX_IMAGE_PIXELS)
}

/// [`decode_image`] with another pixel limit (`max_pixels`), checked on the header before
/// any pixel is decoded (the HTTP service's per-request cap).
pub fn decode_image_within(
    bytes: &[u8],
    path: &Path,
    max_pixels: u64,
) -> Result<RgbImage, ImageError> {
    let decode = |reason: String| ImageError::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| decode(e.to_string()))
    };
    if reader()?.format().is_none() {
        return Err(decode("unknown format".into()));
    }
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| decode(e.to_string()))?;
    let size_error = |too_large: bool| {
        let path = path.to_path_buf();
        if too_large {
            ImageError::TooLarge {
                path,
                width,
                height,
                limit: max_pixels,
            }
        } else {
            ImageError::TooSmall {
                path,
                width,
                height,
            }
        }
    };
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(size_error(true));
    }
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(size_error(false));
    }
    decode_with_opencv(bytes).map_err(|e| decode(e.to_string()))
}

/// Decodes with OpenCV (libjpeg-turbo, libpng): the same decoders PIL uses, so pixels match
/// the Python reference implementations exactly. Grey and alpha images become RGB.
fn decode_with_opencv(bytes: &[u8]) -> opencv::Result<RgbImage> {
    let buffer = opencv::core::Mat::from_slice(bytes)?;
    let mat = opencv::imgcodecs::imdecode(&buffer, opencv::imgcodecs::IMREAD_COLOR)?;
    if opencv::prelude::MatTraitConst::empty(&mat) {
        return Err(opencv::Error::new(
            opencv::core::StsError,
            "damaged or truncated image data",
        ));
    }
    crate::cv::mat_to_rgb(&mat)
}

/// Image file extensions read from folders.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"];

/// The image files of a folder, sorted by name.
pub fn images_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// A folder of images played as a video, in name order, at a fixed frame rate.
pub struct ImageSequence {
    name: String,
    files: Vec<PathBuf>,
    fps: f64,
    next_index: u64,
    source: usize,
}

impl ImageSequence {
    /// Lists the folder's images; fails when it holds none.
    pub fn open(dir: &Path, fps: f64, source: usize) -> Result<Self, super::CaptureError> {
        let name = dir.display().to_string();
        let files = images_in(dir).map_err(|e| super::CaptureError::Open {
            source_name: name.clone(),
            reason: e.to_string(),
        })?;
        if files.is_empty() {
            return Err(super::CaptureError::Open {
                source_name: name,
                reason: format!(
                    "the folder holds no images ({})",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            });
        }
        Ok(Self {
            name,
            files,
            fps,
            next_index: 0,
            source,
        })
    }
}

impl super::FrameSource for ImageSequence {
    fn name(&self) -> &str {
        &self.name
    }

    fn fps(&self) -> f64 {
        self.fps
    }

    fn frame_count(&self) -> Option<u64> {
        Some(self.files.len() as u64)
    }

    fn is_live(&self) -> bool {
        false
    }

    fn next_frame(&mut self) -> Result<Option<crate::types::Frame>, super::CaptureError> {
        let Some(path) = self.files.get(self.next_index as usize) else {
            return Ok(None);
        };
        let image = load_image(path).map_err(|e| super::CaptureError::Read {
            source_name: self.name.clone(),
            index: self.next_index,
            reason: e.to_string(),
        })?;
        let index = self.next_index;
        self.next_index += 1;
        Ok(Some(crate::types::Frame {
            source: self.source,
            index,
            time_s: index as f64 / self.fps,
            image: std::sync::Arc::new(image),
            captured: std::time::Instant::now(),
            dropped_before: 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.jpg");
        std::fs::write(&path, "not an image").unwrap();
        let err = load_image(&path).unwrap_err();
        assert!(matches!(err, ImageError::Decode { .. }), "{err}");
        assert!(err.to_string().contains("notes.jpg"));
    }

    #[test]
    fn a_tiny_image_is_refused_and_grey_becomes_rgb() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = dir.path().join("tiny.png");
        image::GrayImage::new(1, 1).save(&tiny).unwrap();
        assert!(matches!(
            load_image(&tiny),
            Err(ImageError::TooSmall { .. })
        ));
        let grey = dir.path().join("grey.png");
        image::GrayImage::from_pixel(20, 30, image::Luma([77]))
            .save(&grey)
            .unwrap();
        let rgb = load_image(&grey).unwrap();
        assert_eq!(
            (rgb.width(), rgb.height(), rgb.get_pixel(3, 3).0),
            (20, 30, [77, 77, 77])
        );
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = load_image(Path::new("/nonexistent/face.png")).unwrap_err();
        assert!(matches!(err, ImageError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/face.png"));
    }
}
