//! Trunk maps of the training images: each image goes through carivis's own detection
//! (largest face found by the passes, else the fallback chip) and five-point alignment, then the frozen trunk runs on the chip
//! and its mirror image. The job runner ([`crate::jobs`]) runs the workers; maps are cached on
//! disk, one file per image, keyed by the trunk's checksum, the face settings and the image's
//! sha256, so only new images cost anything on the next run.

use std::path::{Path, PathBuf};

use ndarray::Axis;

use super::onnx::TRUNK_LEN;
use crate::align::AlignMode;
use crate::detect::{DetectError, DetectorConfig, Mtcnn};
use crate::embed::{EmbedError, chips_tensor};
use crate::jobs::{CacheError, JobCache, Worker, cache_key};
use crate::pipeline::still::{FaceSearch, StillChips, StillError};
use crate::runtime::{Model, Runtime, RuntimeError};
use crate::types::{Face, RgbImage};

/// Side of the chips the trunk takes.
pub const CHIP_SIZE: u32 = 150;

/// The trunk maps of one image: the aligned chip's and its mirror image's.
pub type MapPair = [Vec<f32>; 2];

/// What the trunk made of one image.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageMaps {
    /// A face was found; its two maps.
    Face(Box<MapPair>),
    /// No face was found; the maps of the fallback chip (as `carivis eval` embeds it).
    Fallback(Box<MapPair>),
    /// The detector found no face (and the fallback chip was not wanted).
    NoFace,
}

/// Why a map worker could not start or failed on an image.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// MTCNN could not be opened.
    #[error(transparent)]
    Detector(#[from] DetectError),
    /// The trunk model could not be opened or run.
    #[error(transparent)]
    Trunk(#[from] RuntimeError),
    /// Detection or alignment failed.
    #[error(transparent)]
    Still(#[from] StillError),
    /// The chips could not be made into the trunk's input.
    #[error(transparent)]
    Input(#[from] EmbedError),
    /// The trunk's output is not one 256×4×4 map per chip.
    #[error("the trunk output is not one 256×4×4 map per chip")]
    TrunkOutput,
}

/// Where maps are cached and how faces are found.
pub struct MapCache {
    dir: PathBuf,
}

impl MapCache {
    /// The cache for one trunk model (`trunk_sha256`) and face `settings`, under `root`.
    pub fn new(root: &Path, trunk_sha256: &str, settings: &str) -> Self {
        Self {
            dir: root.join(format!("trunk-{}", cache_key(trunk_sha256, settings))),
        }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, image_sha256: &str) -> PathBuf {
        self.dir.join(&image_sha256[..2]).join(image_sha256)
    }
}

impl JobCache<ImageMaps> for MapCache {
    /// The cached outcome of an image, if any (an unreadable cache file counts as absent).
    fn get(&self, image_sha256: &str) -> Option<ImageMaps> {
        let bytes = std::fs::read(self.file(image_sha256)).ok()?;
        let maps_len = 2 * TRUNK_LEN * 4;
        let pair = |bytes: &[u8]| -> Box<MapPair> {
            let floats: Vec<f32> = bytes[..maps_len]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let (a, b) = floats.split_at(TRUNK_LEN);
            Box::new([a.to_vec(), b.to_vec()])
        };
        match bytes.len() {
            0 => Some(ImageMaps::NoFace),
            n if n == maps_len => Some(ImageMaps::Face(pair(&bytes))),
            n if n == maps_len + 1 && bytes[maps_len] == FALLBACK_MARK => {
                Some(ImageMaps::Fallback(pair(&bytes)))
            }
            _ => None,
        }
    }

    /// Stores an outcome, one file per image.
    fn put(&mut self, image_sha256: &str, maps: &ImageMaps) -> Result<(), CacheError> {
        let floats = |pair: &MapPair| -> Vec<u8> {
            pair.iter()
                .flat_map(|m| m.iter().flat_map(|v| v.to_le_bytes()))
                .collect()
        };
        let bytes: Vec<u8> = match maps {
            ImageMaps::Face(pair) => floats(pair),
            ImageMaps::Fallback(pair) => {
                let mut bytes = floats(pair);
                bytes.push(FALLBACK_MARK);
                bytes
            }
            ImageMaps::NoFace => Vec::new(),
        };
        let path = self.file(image_sha256);
        crate::files::write_atomic(&path, &bytes).map_err(|source| CacheError { path, source })
    }
}

/// Last byte of a cache file holding the fallback chip's maps ('W', from when the fallback was
/// always the whole image, kept so the file format is unchanged).
const FALLBACK_MARK: u8 = b'W';

/// One worker's models: detector, aligners and trunk.
pub struct MapWorker {
    chips: StillChips,
    use_fallback: bool,
    trunk: Model,
    trunk_input: String,
}

impl MapWorker {
    /// Opens MTCNN from `models_dir` (largest face only) and the trunk model file; faces are
    /// searched for as `search` says, and with `use_fallback` an image without a face is
    /// used through the fallback chip (as evaluation does), else left out.
    pub fn open(
        runtime: &Runtime,
        models_dir: &Path,
        trunk: &Path,
        detector: DetectorConfig,
        search: FaceSearch,
        use_fallback: bool,
    ) -> Result<Self, MapError> {
        let detector = Mtcnn::open(
            runtime,
            models_dir,
            DetectorConfig {
                largest_only: true,
                ..detector
            },
        )?;
        let trunk = runtime.open(trunk)?;
        let trunk_input = trunk
            .inputs()
            .first()
            .map(|i| i.name.clone())
            .unwrap_or_default();
        Ok(Self {
            chips: StillChips::new(detector, search, AlignMode::FivePoint, CHIP_SIZE)?,
            use_fallback,
            trunk,
            trunk_input,
        })
    }

    /// The aligned chip of the image's largest face, if one is found.
    pub fn chip(&mut self, image: &RgbImage) -> Result<Option<RgbImage>, MapError> {
        let subject = self.chips.subject(image)?;
        Ok(subject.detected().then_some(subject.chip))
    }

    /// Trunk maps (256×4×4, flattened) of each chip.
    pub fn maps(&mut self, chips: &[RgbImage]) -> Result<Vec<Vec<f32>>, MapError> {
        let input = chips_tensor(chips, CHIP_SIZE)?;
        let outputs = self.trunk.run(&self.trunk_input, input.view())?;
        let map = outputs.into_values().next().ok_or(MapError::TrunkOutput)?;
        Ok(map
            .axis_iter(Axis(0))
            .map(|m| m.iter().copied().collect::<Vec<f32>>())
            .filter(|m| m.len() == TRUNK_LEN)
            .collect())
    }

    /// The image's largest face, if a pass finds one.
    pub fn largest_face(&mut self, image: &RgbImage) -> Result<Option<Face>, MapError> {
        Ok(self
            .chips
            .faces(image)?
            .into_iter()
            .next()
            .map(|(f, _)| f.face))
    }

    /// The five-point-aligned chip of a face with known landmarks.
    pub fn landmarked_chip(&self, image: &RgbImage, face: &Face) -> Result<RgbImage, MapError> {
        Ok(self.chips.landmarked_chip(image, face)?)
    }

    /// The maps of a chip and of its mirror image.
    pub fn mirrored_pair(&mut self, chip: RgbImage) -> Result<Box<MapPair>, MapError> {
        let mirrored = image::imageops::flip_horizontal(&chip);
        let mut maps = self.maps(&[chip, mirrored])?.into_iter();
        match (maps.next(), maps.next()) {
            (Some(a), Some(b)) => Ok(Box::new([a, b])),
            _ => Err(MapError::TrunkOutput),
        }
    }
}

impl Worker for MapWorker {
    type Output = ImageMaps;
    type Error = MapError;

    /// Detection, alignment and the trunk on one image: its subject's chip
    /// ([`StillChips::subject`]) and that chip's mirror image.
    fn process(&mut self, image: &RgbImage) -> Result<ImageMaps, MapError> {
        let subject = self.chips.subject(image)?;
        if !subject.detected() && !self.use_fallback {
            return Ok(ImageMaps::NoFace);
        }
        let detected = subject.detected();
        let pair = self.mirrored_pair(subject.chip)?;
        Ok(if detected {
            ImageMaps::Face(pair)
        } else {
            ImageMaps::Fallback(pair)
        })
    }
}
