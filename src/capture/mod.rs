//! Frame sources: still images (and, with the pipeline, video files and cameras).

mod images;

pub use images::{ImageError, MAX_IMAGE_PIXELS, load_image};
