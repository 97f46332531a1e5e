//! Trunk maps of the training images: each image goes through carivis's own detection (largest
//! face) and five-point alignment, then the frozen trunk runs on the chip and its mirror image.
//! Maps are cached on disk, one file per image, keyed by the trunk's checksum, the face
//! settings and the image's sha256, so only new images cost anything on the next run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use indicatif::ProgressBar;
use ndarray::Axis;

use super::TrainError;
use super::onnx::TRUNK_LEN;
use crate::align::{AlignMode, Aligner};
use crate::capture::load_image;
use crate::detect::{DetectorConfig, Mtcnn};
use crate::embed::chips_tensor;
use crate::pipeline::still::BOX_MARGIN;
use crate::runtime::{Model, Runtime, sha256_hex};
use crate::types::{Face, RgbImage};

/// Side of the chips the trunk takes.
pub const CHIP_SIZE: u32 = 150;

/// The trunk maps of one image: the aligned chip's and its mirror image's.
pub type MapPair = [Vec<f32>; 2];

/// What happened to one image.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageMaps {
    /// A face was found; its two maps.
    Face(Box<MapPair>),
    /// No face was found; the maps of the whole image as a chip (as `carivis eval` embeds it).
    WholeImage(Box<MapPair>),
    /// The detector found no face (and the whole image was not wanted).
    NoFace,
    /// The image could not be read (the message says why).
    Failed(String),
}

/// Where maps are cached and how faces are found.
pub struct MapCache {
    dir: PathBuf,
}

impl MapCache {
    /// The cache for one trunk model (`trunk_sha256`) and face `settings`, under `root`.
    pub fn new(root: &Path, trunk_sha256: &str, settings: &str) -> Self {
        let key = format!(
            "trunk-{:.16}-{:.16}",
            trunk_sha256,
            sha256_hex(settings.as_bytes())
        );
        Self {
            dir: root.join(key),
        }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, image_sha256: &str) -> PathBuf {
        self.dir.join(&image_sha256[..2]).join(image_sha256)
    }

    /// The cached outcome of an image, if any (an unreadable cache file counts as absent).
    pub fn get(&self, image_sha256: &str) -> Option<ImageMaps> {
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
            n if n == maps_len + 1 && bytes[maps_len] == WHOLE_IMAGE_MARK => {
                Some(ImageMaps::WholeImage(pair(&bytes)))
            }
            _ => None,
        }
    }

    /// Stores an outcome (failures are not cached).
    pub fn put(&self, image_sha256: &str, maps: &ImageMaps) -> Result<(), TrainError> {
        let floats = |pair: &MapPair| -> Vec<u8> {
            pair.iter()
                .flat_map(|m| m.iter().flat_map(|v| v.to_le_bytes()))
                .collect()
        };
        let bytes: Vec<u8> = match maps {
            ImageMaps::Face(pair) => floats(pair),
            ImageMaps::WholeImage(pair) => {
                let mut bytes = floats(pair);
                bytes.push(WHOLE_IMAGE_MARK);
                bytes
            }
            ImageMaps::NoFace => Vec::new(),
            ImageMaps::Failed(_) => return Ok(()),
        };
        super::write_atomically(&self.file(image_sha256), &bytes)
    }
}

/// Last byte of a cache file holding whole-image maps.
const WHOLE_IMAGE_MARK: u8 = b'W';

/// One worker's models: detector, aligners and trunk.
pub struct MapWorker {
    detector: Mtcnn,
    aligner: Aligner,
    whole_image: Option<Aligner>,
    trunk: Model,
    trunk_input: String,
}

impl MapWorker {
    /// Opens MTCNN from `models_dir` (largest face only) and the trunk model file; with
    /// `whole_image`, an image without a face is used whole (crop-only, as evaluation does).
    pub fn open(
        runtime: &Runtime,
        models_dir: &Path,
        trunk: &Path,
        detector: DetectorConfig,
        whole_image: bool,
    ) -> Result<Self, TrainError> {
        let detector = Mtcnn::open(
            runtime,
            models_dir,
            DetectorConfig {
                largest_only: true,
                ..detector
            },
        )
        .map_err(|e| TrainError::Setup(e.to_string()))?;
        let trunk = runtime
            .open(trunk)
            .map_err(|e| TrainError::Setup(e.to_string()))?;
        let trunk_input = trunk
            .inputs()
            .first()
            .map(|i| i.name.clone())
            .unwrap_or_default();
        Ok(Self {
            detector,
            aligner: Aligner::new(AlignMode::FivePoint, CHIP_SIZE),
            whole_image: whole_image
                .then(|| Aligner::new(AlignMode::CropOnly { margin: BOX_MARGIN }, CHIP_SIZE)),
            trunk,
            trunk_input,
        })
    }

    /// The aligned chip of the image's largest face, if any.
    pub fn chip(&mut self, image: &RgbImage) -> Result<Option<RgbImage>, String> {
        let faces = self.detector.detect(image).map_err(|e| e.to_string())?;
        let Some(face) = faces.first() else {
            return Ok(None);
        };
        self.aligner
            .align(image, face)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Trunk maps (256×4×4, flattened) of each chip.
    pub fn maps(&mut self, chips: &[RgbImage]) -> Result<Vec<Vec<f32>>, String> {
        let input = chips_tensor(chips, CHIP_SIZE).map_err(|e| e.to_string())?;
        let outputs = self
            .trunk
            .run(&self.trunk_input, input.view())
            .map_err(|e| e.to_string())?;
        let map = outputs
            .into_values()
            .next()
            .ok_or_else(|| "the trunk produced no output".to_string())?;
        Ok(map
            .axis_iter(Axis(0))
            .map(|m| m.iter().copied().collect::<Vec<f32>>())
            .filter(|m| m.len() == TRUNK_LEN)
            .collect())
    }

    /// Detection, alignment and the trunk on one image file.
    pub fn image_maps(&mut self, path: &Path) -> ImageMaps {
        let outcome = load_image(path)
            .map_err(|e| e.to_string())
            .and_then(|image| match self.chip(&image)? {
                Some(chip) => Ok(ImageMaps::Face(self.mirrored_pair(chip)?)),
                None => match &self.whole_image {
                    Some(aligner) => {
                        let chip = aligner
                            .align(&image, &Face::covering(&image))
                            .map_err(|e| e.to_string())?;
                        Ok(ImageMaps::WholeImage(self.mirrored_pair(chip)?))
                    }
                    None => Ok(ImageMaps::NoFace),
                },
            });
        outcome.unwrap_or_else(|e| ImageMaps::Failed(format!("{}: {e}", path.display())))
    }

    /// The maps of a chip and of its mirror image.
    fn mirrored_pair(&mut self, chip: RgbImage) -> Result<Box<MapPair>, String> {
        let mirrored = image::imageops::flip_horizontal(&chip);
        let mut maps = self.maps(&[chip, mirrored])?.into_iter();
        match (maps.next(), maps.next()) {
            (Some(a), Some(b)) => Ok(Box::new([a, b])),
            _ => Err("the trunk output is not 256×4×4".to_string()),
        }
    }
}

/// The maps of every image (`hashes[i]` is image i's sha256), from the cache or computed by
/// the workers (one thread each) and cached. Stops early, leaving `Failed("interrupted")`,
/// when `stop` is set.
pub fn image_maps(
    workers: Vec<MapWorker>,
    paths: &[PathBuf],
    hashes: &[String],
    cache: &MapCache,
    bar: &ProgressBar,
    stop: &AtomicBool,
) -> Result<Vec<ImageMaps>, TrainError> {
    let mut outcomes: Vec<Option<ImageMaps>> = hashes.iter().map(|h| cache.get(h)).collect();
    let todo: Vec<usize> = (0..paths.len())
        .filter(|&i| outcomes[i].is_none())
        .collect();
    bar.inc((paths.len() - todo.len()) as u64);
    let next = AtomicUsize::new(0);
    let (tx, rx) = crossbeam_channel::bounded::<(usize, ImageMaps)>(64);
    std::thread::scope(|scope| -> Result<(), TrainError> {
        for mut worker in workers {
            let (tx, next, todo) = (tx.clone(), &next, &todo);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed)
                    && let Some(&i) = todo.get(next.fetch_add(1, Ordering::Relaxed))
                {
                    if tx.send((i, worker.image_maps(&paths[i]))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for (i, maps) in rx {
            cache.put(&hashes[i], &maps)?;
            outcomes[i] = Some(maps);
            bar.inc(1);
        }
        Ok(())
    })?;
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| ImageMaps::Failed("interrupted".into())))
        .collect())
}
