//! The values that cross stages: frames, face boxes, landmarks, detected faces, chips,
//! embeddings and modalities. Stages depend on this module, never on each other.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An RGB image, 8 bits per channel, rows top to bottom (what every stage reads).
pub type RgbImage = image::RgbImage;

/// An axis-aligned face box in image pixels, `x1,y1` top-left and `x2,y2` bottom-right.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceBox {
    /// Left edge.
    pub x1: f32,
    /// Top edge.
    pub y1: f32,
    /// Right edge.
    pub x2: f32,
    /// Bottom edge.
    pub y2: f32,
}

impl FaceBox {
    /// Width, `x2 - x1`.
    pub fn width(&self) -> f32 {
        self.x2 - self.x1
    }

    /// Height, `y2 - y1`.
    pub fn height(&self) -> f32 {
        self.y2 - self.y1
    }

    /// Area, `width × height` (the order "largest first" sorts by).
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// Intersection over union with another box (0 when disjoint).
    pub fn iou(&self, other: &FaceBox) -> f32 {
        let w = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let h = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// The box with every coordinate multiplied by `factor` (mapping between resolutions).
    pub fn scaled(&self, factor: f32) -> FaceBox {
        FaceBox {
            x1: self.x1 * factor,
            y1: self.y1 * factor,
            x2: self.x2 * factor,
            y2: self.y2 * factor,
        }
    }

    /// The coordinates as `[x1, y1, x2, y2]`.
    pub fn to_array(&self) -> [f32; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }
}

/// A 2×3 affine map between pixel frames (image to chip, original to working copy):
/// `[a, b, c; d, e, f]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine(pub [[f64; 3]; 2]);

impl Affine {
    /// The uniform scale of the map's linear part (√|det|).
    pub fn scale(&self) -> f64 {
        let [[a, b, _], [d, e, _]] = self.0;
        (a * e - b * d).abs().sqrt()
    }

    /// Applies the map to a point.
    pub fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        let [[a, b, c], [d, e, f]] = self.0;
        [a * x + b * y + c, d * x + e * y + f]
    }

    /// The inverse map, `None` when the linear part is singular.
    pub fn inverse(&self) -> Option<Affine> {
        let [[a, b, c], [d, e, f]] = self.0;
        let det = a * e - b * d;
        if det.abs() < 1e-12 {
            return None;
        }
        let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
        Some(Affine([
            [ia, ib, -(ia * c + ib * f)],
            [id, ie, -(id * c + ie * f)],
        ]))
    }
}

/// The five facial points MTCNN finds, in image pixels, in this order: left eye, right eye,
/// nose tip, left mouth corner, right mouth corner ("left" as seen in the image).
pub type Landmarks = [[f32; 2]; 5];

/// One detected face: box, detector confidence and landmarks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Face {
    /// The face box.
    #[serde(rename = "box", with = "box_as_array")]
    pub bbox: FaceBox,
    /// Detector confidence in [0, 1].
    pub score: f32,
    /// The five facial points.
    pub landmarks: Landmarks,
}

impl Face {
    /// A "face" covering the whole image (for images where the detector finds none).
    pub fn covering(image: &RgbImage) -> Self {
        Self {
            bbox: FaceBox {
                x1: 0.0,
                y1: 0.0,
                x2: image.width() as f32,
                y2: image.height() as f32,
            },
            score: 1.0,
            landmarks: [[0.0; 2]; 5],
        }
    }
}

mod box_as_array {
    use super::FaceBox;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(b: &FaceBox, s: S) -> Result<S::Ok, S::Error> {
        b.to_array().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FaceBox, D::Error> {
        let [x1, y1, x2, y2] = <[f32; 4]>::deserialize(d)?;
        Ok(FaceBox { x1, y1, x2, y2 })
    }
}

/// Which kind of picture a face comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// A photograph.
    Photo,
    /// A caricature (drawn, exaggerated).
    Caricature,
}

impl std::fmt::Display for Modality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Modality::Photo => "photo",
            Modality::Caricature => "caricature",
        })
    }
}

/// A face's embeddings, each L2-normalised. A single-output model fills `shared` only; the
/// multi-task model fills all three branches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// The shared branch (the only one of a single-output model): for cross-modal comparisons.
    pub shared: Vec<f32>,
    /// The photo branch, for photo↔photo comparisons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub photo: Option<Vec<f32>>,
    /// The caricature branch, for caricature↔caricature comparisons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caricature: Option<Vec<f32>>,
}

/// One captured frame: which source, its number and time in that source, and its pixels.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Index of the source (several `--input`s run at once).
    pub source: usize,
    /// Frame number within the source, from 0.
    pub index: u64,
    /// Position in the source's timeline, in seconds.
    pub time_s: f64,
    /// The pixels, shared between stages without copying.
    pub image: std::sync::Arc<RgbImage>,
    /// When the frame was captured (for latency measurement).
    pub captured: std::time::Instant,
    /// Frames of this source dropped just before this one (live pacing); summed over a
    /// source's frames, its total drops.
    pub dropped_before: u64,
}

/// Something that happened to a run's inputs besides frames; JSON Lines writes each as its own
/// line, `{"source_status": {...}}` or `{"gallery_status": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEvent {
    /// A live source was lost or came back.
    SourceStatus(SourceStatus),
    /// The gallery's store stopped answering, or answered again.
    GalleryStatus(GalleryStatus),
}

/// The gallery's store (another process's folder, a PostgreSQL server) stopped answering
/// (matching goes on with the copy in memory) or answered again.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GalleryStatus {
    /// Where the gallery lives (credentials hidden).
    pub location: String,
    /// Seconds since the run started.
    pub time_s: f64,
    /// When, in seconds since the Unix epoch.
    pub unix_time: f64,
    /// `lost` when it stopped answering, `reconnected` when it answers again.
    pub status: ConnectionState,
    /// Why it does not answer.
    pub reason: Option<String>,
}

/// Seconds since the Unix epoch now (0 on a clock set before 1970).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A live source's connection changed: it stopped delivering frames, or came back.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourceStatus {
    /// Index of the source.
    pub source: usize,
    /// Its name (credentials hidden).
    pub name: String,
    /// Seconds since the run started.
    pub time_s: f64,
    /// When, in seconds since the Unix epoch (to line up with other systems' logs).
    pub unix_time: f64,
    /// What happened.
    pub status: ConnectionState,
    /// Why it was lost, or why the last attempt to reopen it failed.
    pub reason: Option<String>,
    /// Attempts to reopen it so far in this drop-out (0 when it was just lost).
    pub attempts: u32,
}

/// The kinds of [`SourceStatus`] and [`GalleryStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// Stopped delivering frames (failed, ended, or nothing for the timeout), or stopped
    /// answering.
    Lost,
    /// Reopened and delivering again, or answering again.
    Reconnected,
}

/// A face with its track and the track's decided identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackedFace {
    /// Track id, stable while the face stays in view.
    pub track: u64,
    /// Face box in this frame.
    #[serde(rename = "box", with = "box_as_array")]
    pub bbox: FaceBox,
    /// Detector confidence.
    pub score: f32,
    /// The track's identity by weighted vote over its frames; `None` (JSON `null`) when the
    /// vote goes to nobody in the gallery.
    pub identity: Option<String>,
    /// Similarity to the best candidate, from the track's latest embedded frame.
    pub similarity: f32,
    /// Modality of the entries the track's latest embedded frame matched.
    pub matched_modality: Option<Modality>,
    /// Whether the track has been embedded often enough for its identity to be settled.
    pub decided: bool,
    /// The answer of the track's latest embedded frame (the evidence behind the vote); `None`
    /// when nobody matched.
    pub frame_identity: Option<String>,
    /// Whether this frame's face was embedded and matched (`similarity` and `frame_identity`
    /// are this frame's own); false where the track kept its label between embeddings.
    pub embedded: bool,
}

/// A frame after the pipeline, with its faces.
#[derive(Clone, Debug)]
pub struct AnnotatedFrame {
    /// The captured frame, with boxes and labels drawn onto its pixels.
    pub frame: Frame,
    /// The faces, with tracks and identities.
    pub faces: Vec<TrackedFace>,
}

/// An image with its person and modality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelledImage {
    /// The image file.
    pub path: PathBuf,
    /// The person (canonical name).
    pub identity: String,
    /// Photo or caricature.
    pub modality: Modality,
}

/// Dot product of two equally long slices: the cosine similarity of two embeddings, which
/// leave the embedder as unit vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_undoes_the_map() {
        let t = Affine([[0.8, -0.3, 12.0], [0.3, 0.8, -4.0]]);
        let p = t.inverse().unwrap().apply(t.apply([17.0, 23.0]));
        assert!((p[0] - 17.0).abs() < 1e-9 && (p[1] - 23.0).abs() < 1e-9);
    }

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..11).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..11).map(|i| (i * i) as f32).sum::<f32>());
    }

    #[test]
    fn iou_of_half_overlapping_boxes_is_one_third() {
        let a = FaceBox {
            x1: 0.0,
            y1: 0.0,
            x2: 2.0,
            y2: 1.0,
        };
        let b = FaceBox {
            x1: 1.0,
            y1: 0.0,
            x2: 3.0,
            y2: 1.0,
        };
        assert!((a.iou(&b) - 1.0 / 3.0).abs() < 1e-6);
        let far = FaceBox {
            x1: 10.0,
            y1: 10.0,
            x2: 11.0,
            y2: 11.0,
        };
        assert_eq!(a.iou(&far), 0.0);
    }

    #[test]
    fn no_identity_serialises_as_null_and_a_person_named_unknown_as_the_name() {
        let face = |identity: Option<&str>| TrackedFace {
            track: 1,
            bbox: FaceBox {
                x1: 0.0,
                y1: 0.0,
                x2: 1.0,
                y2: 1.0,
            },
            score: 0.9,
            identity: identity.map(String::from),
            similarity: 0.5,
            matched_modality: None,
            decided: true,
            frame_identity: identity.map(String::from),
            embedded: true,
        };
        let nobody = serde_json::to_value(face(None)).unwrap();
        assert!(nobody["identity"].is_null() && nobody["frame_identity"].is_null());
        let named = serde_json::to_value(face(Some("unknown"))).unwrap();
        assert_eq!(named["identity"], "unknown");
        assert_eq!(named["frame_identity"], "unknown");
    }

    #[test]
    fn face_serialises_its_box_as_an_array() {
        let face = Face {
            bbox: FaceBox {
                x1: 1.0,
                y1: 2.0,
                x2: 3.0,
                y2: 4.0,
            },
            score: 0.5,
            landmarks: [[0.0; 2]; 5],
        };
        let json = serde_json::to_value(face).unwrap();
        assert_eq!(json["box"], serde_json::json!([1.0, 2.0, 3.0, 4.0]));
    }
}
