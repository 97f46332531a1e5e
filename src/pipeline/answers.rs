//! The answers about still images that the command line and the HTTP service both give:
//! who is in an image (`identify`), whether two faces are one person (`verify`), and which
//! face of an image to enrol. One place, so `carivis identify --json` and `POST /v1/identify`
//! print the same objects.

use serde::Serialize;

use super::still::{StillError, StillFaces};
use crate::detect::{FoundFace, Pass};
use crate::gallery::matching::{Branch, Thresholds};
use crate::gallery::store::Enrolment;
use crate::gallery::{Gallery, GalleryError, Identification, branch_of};
use crate::types::{Embedding, Face, FaceBox, Modality, RgbImage, dot};

/// Why an answer could not be given.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// Detection, alignment or embedding failed.
    #[error(transparent)]
    Still(#[from] StillError),
    /// Matching against the gallery failed.
    #[error(transparent)]
    Gallery(#[from] GalleryError),
    /// The image has no face to use.
    #[error("no face found")]
    NoFace,
    /// The image has several faces and the caller did not say which to use.
    #[error("{0} faces found")]
    SeveralFaces(usize),
    /// A given face box is empty or inverted.
    #[error("the box must have x2 > x1 and y2 > y1")]
    BadBox,
}

/// An identified image: `carivis identify --json`'s line, `POST /v1/identify`'s answer.
#[derive(Clone, Debug, Serialize)]
pub struct IdentifiedImage<'a> {
    /// The image's path (`-` for a request's body).
    pub image: &'a std::path::Path,
    /// Its faces, largest first.
    pub faces: Vec<IdentifiedFace>,
}

/// One face of an identified image: where it is, who it is, and the runners-up.
#[derive(Clone, Debug, Serialize)]
pub struct IdentifiedFace {
    /// Face box, `[x1, y1, x2, y2]` in pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// The detection pass that found the face.
    pub pass: Pass,
    /// The decided identity; `None` (JSON `null`) below the threshold.
    pub identity: Option<String>,
    /// The best candidate's similarity.
    pub similarity: f32,
    /// The threshold it was held against.
    pub threshold: f32,
    /// Modality of the entries the best candidate matched.
    pub matched_modality: Option<Modality>,
    /// The best candidates, best first.
    pub candidates: Vec<CandidateOut>,
}

/// A candidate identity and its score.
#[derive(Clone, Debug, Serialize)]
pub struct CandidateOut {
    /// The person's name.
    pub identity: String,
    /// Their score.
    pub similarity: f32,
}

/// What [`identify`] needs besides the image: the gallery and how to match.
#[derive(Clone, Copy, Debug)]
pub struct IdentifyOptions<'a> {
    /// What the image is (decides branch and threshold).
    pub modality: Modality,
    /// Thresholds overriding the gallery's.
    pub thresholds: Option<&'a Thresholds>,
    /// Candidates listed per face.
    pub top_k: usize,
}

/// Every face of `image`, largest first, matched against `gallery`.
pub fn identify(
    faces: &mut StillFaces,
    gallery: &Gallery,
    image: &RgbImage,
    options: IdentifyOptions<'_>,
) -> Result<Vec<IdentifiedFace>, AnswerError> {
    faces
        .faces(image)?
        .into_iter()
        .map(|face| {
            let found = gallery.identify(&face.embedding, options.modality, options.thresholds)?;
            Ok(identified_face(&face.found, found, options.top_k))
        })
        .collect()
}

fn identified_face(face: &FoundFace, found: Identification, top_k: usize) -> IdentifiedFace {
    IdentifiedFace {
        bbox: face.face.bbox.to_array(),
        pass: face.pass,
        identity: found.identity,
        similarity: found.similarity,
        threshold: found.threshold,
        matched_modality: found.matched_modality,
        candidates: found
            .candidates
            .into_iter()
            .take(top_k)
            .map(|c| CandidateOut {
                identity: c.identity,
                similarity: c.similarity,
            })
            .collect(),
    }
}

/// Whether two faces are one person.
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    /// Cosine similarity of the two embeddings on `branch`.
    pub similarity: f32,
    /// The threshold it was held against.
    pub threshold: f32,
    /// The embedding branch compared (`shared`, `photo` or `caricature`).
    pub branch: &'static str,
    /// `similarity >= threshold`.
    pub same_person: bool,
}

/// One side of a verification: the image and what it shows.
#[derive(Clone, Copy, Debug)]
pub struct Side<'a> {
    /// The image (its largest face is used).
    pub image: &'a RgbImage,
    /// Photo or caricature.
    pub modality: Modality,
}

/// Compares the largest faces of two images on the branch their modalities call for, against
/// `threshold` or the one calibrated for the model and the two modalities. `Err((side,
/// error))` says which image (0 or 1) failed.
pub fn verify(
    faces: &mut StillFaces,
    a: Side<'_>,
    b: Side<'_>,
    threshold: Option<f32>,
) -> Result<Verification, (usize, Box<AnswerError>)> {
    let ea = largest_face(faces, a.image).map_err(|e| (0, Box::new(e)))?;
    let eb = largest_face(faces, b.image).map_err(|e| (1, Box::new(e)))?;
    let model = faces.model_id();
    let branch = Branch::for_pair(a.modality, b.modality, model.branches.len() > 1);
    let similarity = dot(pick(&ea, branch), pick(&eb, branch));
    let threshold = threshold
        .unwrap_or_else(|| Thresholds::for_checksum(&model.sha256).get(a.modality, b.modality));
    Ok(Verification {
        similarity,
        threshold,
        branch: branch.name(),
        same_person: similarity >= threshold,
    })
}

/// The embedding of the largest face of `image`.
fn largest_face(faces: &mut StillFaces, image: &RgbImage) -> Result<Embedding, AnswerError> {
    faces
        .faces(image)?
        .into_iter()
        .next()
        .map(|face| face.embedding)
        .ok_or(AnswerError::NoFace)
}

/// The branch's vector, or the shared one when the model has no such branch.
fn pick(embedding: &Embedding, branch: Branch) -> &[f32] {
    branch_of(embedding, branch).unwrap_or(&embedding.shared)
}

/// Which face of an image to enrol.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaceChoice {
    /// The one face the detector finds; with several, the largest when `largest`, else refused.
    Detected {
        /// Take the largest of several faces instead of refusing the image.
        largest: bool,
    },
    /// The face in this box, without detection (crop-only alignment).
    Box(FaceBox),
    /// The whole image as the face (an already cropped face).
    WholeImage,
}

/// The face to enrol, how its chip was made, and its embedding.
#[derive(Clone, Debug)]
pub struct EnrolmentFace {
    /// The face (landmarks zero when given by a box).
    pub face: Face,
    /// Five-point aligned or box-cropped.
    pub enrolment: Enrolment,
    /// Its embedding.
    pub embedding: Embedding,
}

/// The face of `image` that `choice` names, embedded: the checks every enrolment makes
/// (`gallery add`, `POST /v1/gallery/{name}`).
pub fn enrolment_face(
    faces: &mut StillFaces,
    image: &RgbImage,
    choice: FaceChoice,
) -> Result<EnrolmentFace, AnswerError> {
    let given = match choice {
        FaceChoice::Box(bbox) => Some(bbox),
        FaceChoice::WholeImage => Some(FaceBox {
            x1: 0.0,
            y1: 0.0,
            x2: image.width() as f32,
            y2: image.height() as f32,
        }),
        FaceChoice::Detected { .. } => None,
    };
    if let Some(bbox) = given {
        if !(bbox.x2 > bbox.x1 && bbox.y2 > bbox.y1) {
            return Err(AnswerError::BadBox);
        }
        return Ok(EnrolmentFace {
            embedding: faces.embed_box(image, bbox)?,
            face: Face {
                bbox,
                score: 1.0,
                landmarks: [[0.0; 2]; 5],
            },
            enrolment: Enrolment::Box,
        });
    }
    let largest = matches!(choice, FaceChoice::Detected { largest: true });
    let mut found = faces.faces(image)?;
    match found.len() {
        0 => Err(AnswerError::NoFace),
        n if n > 1 && !largest => Err(AnswerError::SeveralFaces(n)),
        _ => {
            let first = found.remove(0);
            Ok(EnrolmentFace {
                face: first.found.face,
                enrolment: Enrolment::FivePoint,
                embedding: first.embedding,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_the_command_line_prints_them() {
        assert_eq!(AnswerError::NoFace.to_string(), "no face found");
        assert_eq!(AnswerError::SeveralFaces(3).to_string(), "3 faces found");
        assert_eq!(
            AnswerError::BadBox.to_string(),
            "the box must have x2 > x1 and y2 > y1"
        );
    }
}
