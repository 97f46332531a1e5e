//! The synthetic-caricature bank: for every training photo, `variants` caricatures made by
//! [`crate::caricature`] (seeded strength 1.3–2.3, every other one cartoon-styled), each
//! aligned on its exaggerated landmarks plus a small seeded jitter, with a seeded change of
//! brightness and contrast, and run through the trunk with its mirror image. The trainer adds
//! them as caricatures of the photo's person. Maps are cached like the photos' own, keyed by
//! the bank's settings too.

use std::path::{Path, PathBuf};

use super::features::{MapError, MapPair, MapWorker};
use super::onnx::TRUNK_LEN;
use crate::caricature::{CaricatureConfig, CaricatureError, Style, caricature_and_landmarks};
use crate::jobs::{CacheError, JobCache, Worker};
use crate::rng::Rng;
use crate::types::{Face, RgbImage};

/// Range of the exaggeration strength drawn per variant.
const STRENGTH: (f32, f32) = (1.3, 2.3);
/// Landmark jitter of the warp, in chip pixels.
const WARP_JITTER: f32 = 1.5;
/// Standard deviation of the alignment jitter, in chip pixels.
const ALIGN_JITTER: f32 = 1.5;
/// Range of the contrast factor and of the brightness offset (grey levels).
const CONTRAST: (f32, f32) = (0.75, 1.25);
const BRIGHTNESS: f32 = 25.0;

/// How many variants per photo and the seed that draws them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BankSettings {
    /// Caricatures per photo (0 = no bank).
    pub variants: usize,
    /// Seed of the variants (with each image's own content).
    pub seed: u64,
}

impl BankSettings {
    /// The text that keys the bank's cache (not the number of variants: variant k of a photo
    /// is the same whatever the number, so a cache of more variants serves fewer).
    pub fn describe(&self) -> String {
        format!(
            "caricature bank seed {} strength {STRENGTH:?} warp jitter {WARP_JITTER} align jitter {ALIGN_JITTER} contrast {CONTRAST:?} brightness {BRIGHTNESS}",
            self.seed
        )
    }
}

/// Why a variant could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// Detection, alignment or the trunk failed.
    #[error(transparent)]
    Maps(#[from] MapError),
    /// The warp failed.
    #[error(transparent)]
    Caricature(#[from] CaricatureError),
}

/// A map worker that makes the bank's variants of one photo.
pub struct BankWorker {
    maps: MapWorker,
    settings: BankSettings,
}

impl BankWorker {
    /// A worker on `maps` (detector, aligners, trunk) with `settings`.
    pub fn new(maps: MapWorker, settings: BankSettings) -> Self {
        Self { maps, settings }
    }

    /// The aligned chips of the photo's variants (none when no face is found).
    pub fn variant_chips(&mut self, image: &RgbImage) -> Result<Vec<RgbImage>, BankError> {
        let Some(face) = self.maps.largest_face(image)? else {
            return Ok(Vec::new());
        };
        let mut rng = Rng::new(self.settings.seed ^ content_seed(image));
        (0..self.settings.variants)
            .map(|_| self.variant_chip(image, &face, &mut rng))
            .collect()
    }

    fn variant_chip(
        &mut self,
        image: &RgbImage,
        face: &Face,
        rng: &mut Rng,
    ) -> Result<RgbImage, BankError> {
        let config = CaricatureConfig {
            strength: STRENGTH.0 + (STRENGTH.1 - STRENGTH.0) * rng.uniform(),
            style: if rng.uniform() < 0.5 {
                Style::Cartoon
            } else {
                Style::Plain
            },
            jitter: WARP_JITTER,
            seed: rng.next_u64(),
        };
        let (warped, targets) = caricature_and_landmarks(image, face, &config)?;
        let scale = face.bbox.width().max(1.0) / 100.0;
        let mut moved = Face {
            landmarks: targets,
            ..*face
        };
        for point in &mut moved.landmarks {
            for v in point.iter_mut() {
                *v += ALIGN_JITTER * scale * rng.normal();
            }
        }
        let mut chip = self.maps.landmarked_chip(&warped, &moved)?;
        let contrast = CONTRAST.0 + (CONTRAST.1 - CONTRAST.0) * rng.uniform();
        let offset = BRIGHTNESS * (2.0 * rng.uniform() - 1.0);
        for value in chip.iter_mut() {
            *value =
                (128.0 + contrast * (f32::from(*value) - 128.0) + offset).clamp(0.0, 255.0) as u8;
        }
        Ok(chip)
    }
}

impl Worker for BankWorker {
    type Output = Vec<Box<MapPair>>;
    type Error = BankError;

    /// The trunk maps of the photo's variants and of their mirror images.
    fn process(&mut self, image: &RgbImage) -> Result<Self::Output, BankError> {
        self.variant_chips(image)?
            .into_iter()
            .map(|chip| Ok(self.maps.mirrored_pair(chip)?))
            .collect()
    }
}

/// A seed from the image's size and a sample of its pixels (the worker sees pixels, not the
/// file's hash), so that each photo gets its own variants.
fn content_seed(image: &RgbImage) -> u64 {
    let mut h =
        0xcbf2_9ce4_8422_2325u64 ^ (u64::from(image.width()) << 32 | u64::from(image.height()));
    for byte in image.as_raw().iter().step_by(97) {
        h = (h ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The bank's cache: one file per photo, its variants' map pairs one after another (an empty
/// file: no face).
pub struct BankCache {
    dir: PathBuf,
    variants: usize,
}

impl BankCache {
    /// The cache under `dir` (already keyed by trunk, face and bank settings) serving
    /// `variants` per photo.
    pub fn new(dir: &Path, variants: usize) -> Self {
        Self {
            dir: dir.to_path_buf(),
            variants,
        }
    }

    fn file(&self, image_sha256: &str) -> PathBuf {
        self.dir.join(&image_sha256[..2]).join(image_sha256)
    }
}

/// Bytes of one map pair in a cache file.
const PAIR_BYTES: usize = 2 * TRUNK_LEN * 4;

impl JobCache<Vec<Box<MapPair>>> for BankCache {
    fn get(&self, image_sha256: &str) -> Option<Vec<Box<MapPair>>> {
        let bytes = std::fs::read(self.file(image_sha256)).ok()?;
        let stored = bytes.len() / PAIR_BYTES;
        if bytes.len() % PAIR_BYTES != 0 || (stored > 0 && stored < self.variants) {
            return None;
        }
        Some(
            bytes
                .chunks_exact(PAIR_BYTES)
                .take(self.variants)
                .map(|chunk| {
                    let floats: Vec<f32> = chunk
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    let (a, b) = floats.split_at(TRUNK_LEN);
                    Box::new([a.to_vec(), b.to_vec()])
                })
                .collect(),
        )
    }

    fn put(&mut self, image_sha256: &str, variants: &Vec<Box<MapPair>>) -> Result<(), CacheError> {
        let bytes: Vec<u8> = variants
            .iter()
            .flat_map(|pair| {
                pair.iter()
                    .flat_map(|m| m.iter().flat_map(|v| v.to_le_bytes()))
            })
            .collect();
        let path = self.file(image_sha256);
        crate::files::write_atomic(&path, &bytes).map_err(|source| CacheError { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_files_round_trip_every_variant() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = BankCache::new(dir.path(), 2);
        let pair = |v: f32| Box::new([vec![v; TRUNK_LEN], vec![-v; TRUNK_LEN]]);
        let variants = vec![pair(1.0), pair(2.5)];
        let sha = "ab".repeat(32);
        cache.put(&sha, &variants).unwrap();
        assert_eq!(cache.get(&sha).unwrap(), variants);
        assert_eq!(
            BankCache::new(dir.path(), 1).get(&sha).unwrap(),
            variants[..1]
        );
        assert!(
            BankCache::new(dir.path(), 3).get(&sha).is_none(),
            "too few stored"
        );
        cache.put(&sha, &Vec::new()).unwrap();
        assert_eq!(cache.get(&sha).unwrap(), Vec::<Box<MapPair>>::new());
    }

    #[test]
    fn content_seeds_differ_between_images() {
        let a = RgbImage::from_pixel(10, 10, image::Rgb([1, 2, 3]));
        let b = RgbImage::from_pixel(10, 10, image::Rgb([1, 2, 4]));
        assert_ne!(content_seed(&a), content_seed(&b));
        assert_eq!(content_seed(&a), content_seed(&a.clone()));
    }
}
