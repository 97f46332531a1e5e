//! Faces of still images: detection, alignment and embedding, one image at a time.

use std::path::Path;

use crate::align::{AlignError, AlignMode, Aligner};
use crate::detect::{DetectError, Mtcnn};
use crate::embed::{EmbedError, Embedder};
use crate::gallery::store::ModelId;
use crate::types::{Embedding, Face, FaceBox, RgbImage};

/// Why analysing an image failed.
#[derive(Debug, thiserror::Error)]
pub enum StillError {
    /// Detection failed.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// Alignment failed.
    #[error(transparent)]
    Align(#[from] AlignError),
    /// Embedding failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

/// A detected face and its embedding.
#[derive(Clone, Debug)]
pub struct EmbeddedFace {
    /// The detection.
    pub face: Face,
    /// Its embedding (unit vectors).
    pub embedding: Embedding,
}

/// Detector, aligner and embedder for still images.
pub struct StillFaces {
    detector: Mtcnn,
    aligner: Aligner,
    box_aligner: Aligner,
    embedder: Embedder,
}

/// Margin each side, as a fraction of the box, when a face is given by a box (`--box`,
/// `--whole-image`): dlib's chips are tightly framed, and on CaVI pairs crop-only accuracy fell
/// steadily with the margin (photo pairs 0.871 at 0, 0.841 at 0.1, 0.783 at 0.2).
pub const BOX_MARGIN: f32 = 0.0;

impl StillFaces {
    /// Wires the three stages; the aligner's chip size must be the embedder's.
    pub fn new(detector: Mtcnn, mode: AlignMode, embedder: Embedder) -> Self {
        let size = embedder.chip_size();
        Self {
            detector,
            aligner: Aligner::new(mode, size),
            box_aligner: Aligner::new(AlignMode::CropOnly { margin: BOX_MARGIN }, size),
            embedder,
        }
    }

    /// Identity of the embedding model, as galleries record it.
    pub fn model_id(&self) -> ModelId {
        model_id(&self.embedder)
    }

    /// The embedder.
    pub fn embedder_mut(&mut self) -> &mut Embedder {
        &mut self.embedder
    }

    /// Every face of the image, largest first, with its embedding (one batched run).
    pub fn faces(&mut self, image: &RgbImage) -> Result<Vec<EmbeddedFace>, StillError> {
        let faces = self.detector.detect(image)?;
        let chips = faces
            .iter()
            .map(|f| self.aligner.align(image, f))
            .collect::<Result<Vec<_>, _>>()?;
        let embeddings = self.embedder.embed(&chips)?;
        Ok(faces
            .into_iter()
            .zip(embeddings)
            .map(|(face, embedding)| EmbeddedFace { face, embedding })
            .collect())
    }

    /// The embedding of a face given by its box (crop-only alignment with [`BOX_MARGIN`]).
    pub fn embed_box(&mut self, image: &RgbImage, bbox: FaceBox) -> Result<Embedding, StillError> {
        let face = Face {
            bbox,
            score: 1.0,
            landmarks: [[0.0; 2]; 5],
        };
        self.embed_chip(&self.box_aligner.align(image, &face)?)
    }

    /// The embedding of a face with known landmarks (five-point alignment).
    pub fn embed_landmarked(
        &mut self,
        image: &RgbImage,
        face: &Face,
    ) -> Result<Embedding, StillError> {
        let aligner = Aligner::new(AlignMode::FivePoint, self.embedder.chip_size());
        self.embed_chip(&aligner.align(image, face)?)
    }

    fn embed_chip(&mut self, chip: &RgbImage) -> Result<Embedding, StillError> {
        Ok(self.embedder.embed(std::slice::from_ref(chip))?.remove(0))
    }
}

/// The [`ModelId`] of an embedder: file name, checksum, branches and dimension.
pub fn model_id(embedder: &Embedder) -> ModelId {
    ModelId {
        file: embedder.model_path().file_name().map_or_else(
            || embedder.model_path().display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        sha256: embedder.model_sha256().to_string(),
        branches: embedder.branch_names(),
        dim: embedder.dim(),
    }
}

/// sha256 of a file's bytes, for recording where an entry came from.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    Ok(crate::runtime::sha256_hex(&std::fs::read(path)?))
}
