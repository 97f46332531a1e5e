//! Faces of still images: detection, alignment and embedding, one image at a time. The rule
//! for images with one subject (evaluation and training): the largest face, else the whole
//! image as the chip.

use crate::align::{AlignError, AlignMode, Aligner, BOX_MARGIN};
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

/// The chip of an image's subject and where it came from.
#[derive(Clone, Debug)]
pub struct SubjectChip {
    /// The aligned chip.
    pub chip: RgbImage,
    /// Whether the detector found the face (else the chip is the whole image).
    pub detected: bool,
}

/// Detector and aligners for still images: chips of every face, of a given box, or of the
/// image's subject.
pub struct StillChips {
    detector: Mtcnn,
    aligner: Aligner,
    box_aligner: Aligner,
}

impl StillChips {
    /// Chips of `size` pixels, faces aligned by `mode`, boxes crop-only with [`BOX_MARGIN`].
    pub fn new(detector: Mtcnn, mode: AlignMode, size: u32) -> Self {
        Self {
            detector,
            aligner: Aligner::new(mode, size),
            box_aligner: Aligner::new(AlignMode::CropOnly { margin: BOX_MARGIN }, size),
        }
    }

    /// Every face of the image, largest first, with its chip.
    pub fn faces(&mut self, image: &RgbImage) -> Result<Vec<(Face, RgbImage)>, StillError> {
        let faces = self.detector.detect(image)?;
        faces
            .into_iter()
            .map(|f| Ok((f, self.aligner.align(image, &f)?)))
            .collect()
    }

    /// The chip of a face given by its box.
    pub fn box_chip(&self, image: &RgbImage, bbox: FaceBox) -> Result<RgbImage, StillError> {
        let face = Face {
            bbox,
            score: 1.0,
            landmarks: [[0.0; 2]; 5],
        };
        Ok(self.box_aligner.align(image, &face)?)
    }

    /// The chip of the image's largest face, else of the whole image (crop-only, as for a
    /// given box): the one rule for images of one person.
    pub fn subject(&mut self, image: &RgbImage) -> Result<SubjectChip, StillError> {
        let faces = self.detector.detect(image)?;
        match faces.first() {
            Some(face) => Ok(SubjectChip {
                chip: self.aligner.align(image, face)?,
                detected: true,
            }),
            None => Ok(SubjectChip {
                chip: self.box_chip(image, Face::covering(image).bbox)?,
                detected: false,
            }),
        }
    }
}

/// Detector, aligner and embedder for still images.
pub struct StillFaces {
    chips: StillChips,
    embedder: Embedder,
}

impl StillFaces {
    /// Wires the three stages; the aligner's chip size is the embedder's.
    pub fn new(detector: Mtcnn, mode: AlignMode, embedder: Embedder) -> Self {
        Self {
            chips: StillChips::new(detector, mode, embedder.chip_size()),
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
        let (faces, chips): (Vec<Face>, Vec<RgbImage>) =
            self.chips.faces(image)?.into_iter().unzip();
        let embeddings = self.embedder.embed(&chips)?;
        Ok(faces
            .into_iter()
            .zip(embeddings)
            .map(|(face, embedding)| EmbeddedFace { face, embedding })
            .collect())
    }

    /// The embedding of the image's subject ([`StillChips::subject`]) and whether its face was
    /// detected.
    pub fn subject(&mut self, image: &RgbImage) -> Result<(Embedding, bool), StillError> {
        let subject = self.chips.subject(image)?;
        Ok((self.embed_chip(&subject.chip)?, subject.detected))
    }

    /// The embedding of a face given by its box (crop-only alignment with [`BOX_MARGIN`]).
    pub fn embed_box(&mut self, image: &RgbImage, bbox: FaceBox) -> Result<Embedding, StillError> {
        let chip = self.chips.box_chip(image, bbox)?;
        self.embed_chip(&chip)
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
