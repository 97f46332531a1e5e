//! Faces of still images: detection (with the retry passes), alignment and embedding, one
//! image at a time. The rule for images with one subject (evaluation, training, enrolment):
//! the largest face, else the [`Fallback`] chip.

use std::fmt;

use crate::align::{AlignError, AlignMode, Aligner, BOX_MARGIN, DLIB_CHIP_SIZE, DLIB_TEMPLATE_150};
use crate::detect::{DetectError, FaceFinder, FoundFace, Mtcnn, Pass, RetryConfig};
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
    /// The detection and the pass that found it.
    pub found: FoundFace,
    /// Its embedding (unit vectors).
    pub embedding: Embedding,
}

/// The chip used for an image of one person when no pass finds a face.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fallback {
    /// The whole image, squared about its centre (crop-only, as for a given box).
    WholeImage,
    /// The centred square of the image's shorter side taken as an aligned chip: the
    /// template's five points placed in it (the image is assumed to be a face crop).
    CentreSquare,
    /// The window O-Net scores highest ([`crate::detect::Mtcnn::best_window`]), aligned on
    /// its landmarks.
    #[default]
    BestWindow,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fallback::WholeImage => "whole_image",
            Fallback::CentreSquare => "centre_square",
            Fallback::BestWindow => "best_window",
        })
    }
}

/// How still images are searched for faces: the retry passes and, for an image of one person
/// where no pass finds a face, the fallback chip.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaceSearch {
    /// The retry passes after the first.
    pub retry: RetryConfig,
    /// The chip of an image of one person without a face.
    pub fallback: Fallback,
}

impl FaceSearch {
    /// A short text that changes whenever the chips would (part of cache keys).
    pub fn describe(&self) -> String {
        format!("{} fallback={}", self.retry.describe(), self.fallback)
    }
}

/// The chip of an image's subject and where it came from.
#[derive(Clone, Debug)]
pub struct SubjectChip {
    /// The aligned chip.
    pub chip: RgbImage,
    /// The pass that found the face, `None` when the chip is the fallback's.
    pub pass: Option<Pass>,
}

impl SubjectChip {
    /// Whether a pass found the face (else the chip is the fallback's).
    pub fn detected(&self) -> bool {
        self.pass.is_some()
    }
}

/// Detector and aligners for still images: chips of every face, of a given box, or of the
/// image's subject.
pub struct StillChips {
    finder: FaceFinder,
    fallback: Fallback,
    describe: String,
    aligner: Aligner,
    box_aligner: Aligner,
    five_point: Aligner,
}

impl StillChips {
    /// Chips of `size` pixels, faces searched for as `search` says and aligned by `mode`,
    /// boxes crop-only with [`BOX_MARGIN`].
    pub fn new(
        detector: Mtcnn,
        search: FaceSearch,
        mode: AlignMode,
        size: u32,
    ) -> Result<Self, StillError> {
        let describe = format!("{:?} {}", detector.config(), search.describe());
        Ok(Self {
            finder: FaceFinder::new(detector, search.retry)?,
            fallback: search.fallback,
            describe,
            aligner: Aligner::new(mode, size),
            box_aligner: Aligner::new(AlignMode::CropOnly { margin: BOX_MARGIN }, size),
            five_point: Aligner::new(AlignMode::FivePoint, size),
        })
    }

    /// A text naming every setting that changes the chips (part of cache keys).
    pub fn describe(&self) -> String {
        format!(
            "{} align={:?} size={}",
            self.describe,
            self.aligner.mode(),
            self.aligner.chip_size()
        )
    }

    /// Every face of the image, largest first, with its chip.
    pub fn faces(&mut self, image: &RgbImage) -> Result<Vec<(FoundFace, RgbImage)>, StillError> {
        let faces = self.finder.find(image)?;
        faces
            .into_iter()
            .map(|f| Ok((f, self.aligner.align(image, &f.face)?)))
            .collect()
    }

    /// The five-point-aligned chip of a face with known landmarks.
    pub fn landmarked_chip(&self, image: &RgbImage, face: &Face) -> Result<RgbImage, StillError> {
        Ok(self.five_point.align(image, face)?)
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

    /// The chip of the image's largest face, else the fallback's: the one rule for images of
    /// one person.
    pub fn subject(&mut self, image: &RgbImage) -> Result<SubjectChip, StillError> {
        let faces = self.finder.find(image)?;
        match faces.first() {
            Some(found) => Ok(SubjectChip {
                chip: self.aligner.align(image, &found.face)?,
                pass: Some(found.pass),
            }),
            None => Ok(SubjectChip {
                chip: self.fallback_chip(image)?,
                pass: None,
            }),
        }
    }

    fn fallback_chip(&mut self, image: &RgbImage) -> Result<RgbImage, StillError> {
        let face = match self.fallback {
            Fallback::WholeImage => return self.whole_image_chip(image),
            Fallback::CentreSquare => Some(centre_square_face(image)),
            Fallback::BestWindow => self.finder.detector_mut().best_window(image)?,
        };
        match face.map(|f| self.five_point.align(image, &f)) {
            Some(Ok(chip)) => Ok(chip),
            // No window, or landmarks too degenerate to align on: the whole image.
            None | Some(Err(AlignError::Degenerate)) => self.whole_image_chip(image),
            Some(Err(e)) => Err(e.into()),
        }
    }

    fn whole_image_chip(&self, image: &RgbImage) -> Result<RgbImage, StillError> {
        self.box_chip(image, Face::covering(image).bbox)
    }
}

/// The centred square of the image's shorter side with the template's five points in it, as
/// if the image were one of dlib's chips.
fn centre_square_face(image: &RgbImage) -> Face {
    let (w, h) = (image.width() as f32, image.height() as f32);
    let side = w.min(h);
    let (x0, y0) = ((w - side) / 2.0, (h - side) / 2.0);
    let k = side / DLIB_CHIP_SIZE as f32;
    Face {
        bbox: FaceBox {
            x1: x0,
            y1: y0,
            x2: x0 + side,
            y2: y0 + side,
        },
        score: 0.0,
        landmarks: DLIB_TEMPLATE_150.map(|[x, y]| [x0 + x * k, y0 + y * k]),
    }
}

/// Detector, aligner and embedder for still images.
pub struct StillFaces {
    chips: StillChips,
    embedder: Embedder,
}

impl StillFaces {
    /// Wires the three stages; the aligner's chip size is the embedder's.
    pub fn new(
        detector: Mtcnn,
        search: FaceSearch,
        mode: AlignMode,
        embedder: Embedder,
    ) -> Result<Self, StillError> {
        Ok(Self {
            chips: StillChips::new(detector, search, mode, embedder.chip_size())?,
            embedder,
        })
    }

    /// A text naming every setting that changes the chips (part of cache keys).
    pub fn describe(&self) -> String {
        self.chips.describe()
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
        let (faces, chips): (Vec<FoundFace>, Vec<RgbImage>) =
            self.chips.faces(image)?.into_iter().unzip();
        let embeddings = self.embedder.embed(&chips)?;
        Ok(faces
            .into_iter()
            .zip(embeddings)
            .map(|(found, embedding)| EmbeddedFace { found, embedding })
            .collect())
    }

    /// The embedding of the image's subject ([`StillChips::subject`]) and the pass that found
    /// its face (`None`: the fallback's chip).
    pub fn subject(&mut self, image: &RgbImage) -> Result<(Embedding, Option<Pass>), StillError> {
        let subject = self.chips.subject(image)?;
        Ok((self.embed_chip(&subject.chip)?, subject.pass))
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
        let chip = self.chips.landmarked_chip(image, face)?;
        self.embed_chip(&chip)
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
