//! Retry passes for still images. MTCNN's first pass (the reference cascade, unchanged) misses
//! faces that fill a tightly cropped image, because its crops never extend past the image, and
//! faces tilted far from upright. When the first pass finds no face, or only faces whose box
//! touches the image border, the image is padded and detected again (the padded copy's faces
//! replace border-touching ones: their boxes are no longer cut by the edge); when neither finds
//! any face, padded copies rotated by each configured angle are tried and the best is kept.
//! Boxes of faces found on a rotated copy stay axis-aligned in the image (their landmarks carry
//! the tilt, which five-point alignment undoes).
//! Faces found on a copy are mapped back to the original image's pixels.

use std::fmt;
use std::str::FromStr;

use opencv::core::{BORDER_CONSTANT, BORDER_REPLICATE, Mat, Scalar, Size};
use opencv::imgproc;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{DetectError, Mtcnn};
use crate::cv::{image_as_mat, mat_into_image};
use crate::types::{Affine, Face, FaceBox, RgbImage};

/// Which detection passes run on a still image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Passes {
    /// The first pass only (facenet-pytorch's behaviour).
    First,
    /// The first pass, then the padded and rotated retries where it finds nothing.
    #[default]
    All,
}

/// How the padding of a retry copy is filled. Grey is the default: on the 502 CaVI
/// caricatures the first pass misses, padding 0.2 then rotations found faces in 293 with grey
/// and 258 with edge replication.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PadFill {
    /// Mid-grey (127), as `--border` pads.
    #[default]
    Grey,
    /// The image's edge pixels, repeated outwards.
    Replicate,
}

/// Settings of the retry passes.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// Which passes run.
    pub passes: Passes,
    /// Padding on every side of a retry copy, as a fraction of the image's longer side.
    pub padding: f32,
    /// How the padding is filled.
    pub fill: PadFill,
    /// P-Net, R-Net and O-Net score thresholds of the retries (the first pass keeps the
    /// detector's).
    pub thresholds: [f32; 3],
    /// Rotations of the padded copy tried when neither the first pass nor the padded copy
    /// finds any face, in degrees (positive turns the image counter-clockwise).
    pub angles: Vec<i16>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            passes: Passes::All,
            padding: 0.2,
            fill: PadFill::default(),
            thresholds: [0.6, 0.6, 0.5],
            angles: vec![20, -20, 40, -40],
        }
    }
}

impl RetryConfig {
    /// A short text that changes whenever the faces found would (part of cache keys).
    pub fn describe(&self) -> String {
        match self.passes {
            Passes::First => "passes=first".into(),
            Passes::All => format!(
                "passes=all padding={} fill={:?} thresholds={:?} angles={:?}",
                self.padding, self.fill, self.thresholds, self.angles
            ),
        }
    }

    /// Rejects settings the retries cannot work with.
    pub fn validate(&self) -> Result<(), DetectError> {
        if !(0.0..=1.0).contains(&self.padding) {
            return Err(DetectError::BadConfig(format!(
                "retry padding must be in [0, 1], got {}",
                self.padding
            )));
        }
        if self.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
            return Err(DetectError::BadConfig(format!(
                "retry thresholds must be in [0, 1], got {:?}",
                self.thresholds
            )));
        }
        if let Some(a) = self.angles.iter().find(|a| a.unsigned_abs() > 180) {
            return Err(DetectError::BadConfig(format!(
                "retry angles must be within ±180°, got {a}"
            )));
        }
        Ok(())
    }
}

/// The pass that found a face: written `first`, `padded`, or `rotated+20` / `rotated-40`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pass {
    /// The reference cascade on the image as it is.
    First,
    /// The cascade on a padded copy.
    Padded,
    /// The cascade on a padded copy rotated by this many degrees.
    Rotated(i16),
}

impl fmt::Display for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pass::First => f.write_str("first"),
            Pass::Padded => f.write_str("padded"),
            Pass::Rotated(angle) => write!(f, "rotated{angle:+}"),
        }
    }
}

impl FromStr for Pass {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "first" => Ok(Pass::First),
            "padded" => Ok(Pass::Padded),
            _ => text
                .strip_prefix("rotated")
                .and_then(|angle| angle.parse().ok())
                .map(Pass::Rotated)
                .ok_or_else(|| format!("{text:?} is not a detection pass")),
        }
    }
}

impl Serialize for Pass {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A face and the pass that found it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoundFace {
    /// The face, in the original image's pixels.
    #[serde(flatten)]
    pub face: Face,
    /// The pass that found it.
    pub pass: Pass,
}

/// MTCNN with the retry passes: what every still-image path detects with.
pub struct FaceFinder {
    detector: Mtcnn,
    retry: RetryConfig,
}

impl FaceFinder {
    /// Wraps a detector; the retry settings are checked.
    pub fn new(detector: Mtcnn, retry: RetryConfig) -> Result<Self, DetectError> {
        retry.validate()?;
        Ok(Self { detector, retry })
    }

    /// The detector, for what the passes do not cover (O-Net windows, timings).
    pub fn detector_mut(&mut self) -> &mut Mtcnn {
        &mut self.detector
    }

    /// The faces of a still image, largest first, each with the pass that found it.
    pub fn find(&mut self, image: &RgbImage) -> Result<Vec<FoundFace>, DetectError> {
        let first = self.detector.detect(image)?;
        let clear_of_border = first.iter().any(|f| !touches_border(&f.bbox, image));
        if self.retry.passes == Passes::First || clear_of_border {
            return Ok(tagged(first, Pass::First));
        }
        let padded = self.detect_on_copy(image, 0)?;
        if !padded.is_empty() {
            return Ok(tagged(padded, Pass::Padded));
        }
        if first.is_empty()
            && let Some((angle, faces)) = self.best_rotation(image)?
        {
            return Ok(tagged(faces, Pass::Rotated(angle)));
        }
        Ok(tagged(first, Pass::First))
    }

    /// The rotation whose largest face scores highest, with its faces.
    fn best_rotation(&mut self, image: &RgbImage) -> Result<Option<(i16, Vec<Face>)>, DetectError> {
        let mut best: Option<(f32, i16, Vec<Face>)> = None;
        for angle in self.retry.angles.clone() {
            let faces = self.detect_on_copy(image, angle)?;
            let Some(score) = faces.first().map(|f| f.score) else {
                continue;
            };
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, angle, faces));
            }
        }
        Ok(best.map(|(_, angle, faces)| (angle, faces)))
    }

    /// Detects on a padded copy rotated by `degrees`, with faces mapped back to `image`.
    fn detect_on_copy(&mut self, image: &RgbImage, degrees: i16) -> Result<Vec<Face>, DetectError> {
        let copy = RetryCopy::new(image.width(), image.height(), self.retry.padding, degrees);
        let pixels = copy.render(image, self.retry.fill)?;
        let faces = self
            .detector
            .detect_with_thresholds(&pixels, self.retry.thresholds)?;
        Ok(faces.iter().map(|f| copy.map_back(f)).collect())
    }
}

/// Whether a box reaches the image's edge (MTCNN's crops are clipped at one pixel in).
fn touches_border(b: &FaceBox, image: &RgbImage) -> bool {
    let (w, h) = (image.width() as f32, image.height() as f32);
    b.x1 <= 1.0 || b.y1 <= 1.0 || b.x2 >= w - 1.0 || b.y2 >= h - 1.0
}

fn tagged(faces: Vec<Face>, pass: Pass) -> Vec<FoundFace> {
    faces
        .into_iter()
        .map(|face| FoundFace { face, pass })
        .collect()
}

/// A padded, rotated copy of an image: the map into it, its inverse and its size.
struct RetryCopy {
    to_copy: Affine,
    from_copy: Affine,
    width: u32,
    height: u32,
}

impl RetryCopy {
    /// The copy of a `width`×`height` image padded by `padding` × its longer side on every
    /// side and turned `degrees` counter-clockwise about its centre, on a canvas that holds
    /// all of it.
    fn new(width: u32, height: u32, padding: f32, degrees: i16) -> Self {
        let pad = (padding * width.max(height) as f32).round() as f64;
        let (pw, ph) = (f64::from(width) + 2.0 * pad, f64::from(height) + 2.0 * pad);
        let (sin, cos) = f64::from(degrees).to_radians().sin_cos();
        let canvas_w = (pw * cos.abs() + ph * sin.abs()).round();
        let canvas_h = (pw * sin.abs() + ph * cos.abs()).round();
        let (cx, cy) = (f64::from(width) / 2.0, f64::from(height) / 2.0);
        let to_copy = Affine([
            [cos, sin, canvas_w / 2.0 - (cos * cx + sin * cy)],
            [-sin, cos, canvas_h / 2.0 - (-sin * cx + cos * cy)],
        ]);
        Self {
            to_copy,
            from_copy: to_copy.inverse().expect("a rotation is invertible"),
            width: canvas_w as u32,
            height: canvas_h as u32,
        }
    }

    /// The copy's pixels (bilinear; an integer shift when there is no rotation, so exact).
    fn render(&self, image: &RgbImage, fill: PadFill) -> Result<RgbImage, opencv::Error> {
        let source = image_as_mat(image)?;
        let m = Mat::from_slice_2d(&self.to_copy.0)?;
        let (border, value) = match fill {
            PadFill::Grey => (BORDER_CONSTANT, Scalar::all(127.0)),
            PadFill::Replicate => (BORDER_REPLICATE, Scalar::all(0.0)),
        };
        let mut out = Mat::default();
        imgproc::warp_affine(
            &source,
            &mut out,
            &m,
            Size::new(self.width as i32, self.height as i32),
            imgproc::INTER_LINEAR,
            border,
            value,
        )?;
        mat_into_image(&out)
    }

    /// A face found on the copy, in the original's pixels: landmarks mapped point by point,
    /// the box moved to its mapped centre with its size kept.
    fn map_back(&self, face: &Face) -> Face {
        let back = |[x, y]: [f32; 2]| {
            let [x, y] = self.from_copy.apply([f64::from(x), f64::from(y)]);
            [x as f32, y as f32]
        };
        let b = face.bbox;
        let [cx, cy] = back([(b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0]);
        let (hw, hh) = (b.width() / 2.0, b.height() / 2.0);
        Face {
            bbox: FaceBox {
                x1: cx - hw,
                y1: cy - hh,
                x2: cx + hw,
                y2: cy + hh,
            },
            score: face.score,
            landmarks: face.landmarks.map(back),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_read_back_what_they_write() {
        for pass in [
            Pass::First,
            Pass::Padded,
            Pass::Rotated(20),
            Pass::Rotated(-40),
        ] {
            assert_eq!(pass.to_string().parse::<Pass>(), Ok(pass));
        }
        assert_eq!(Pass::Rotated(-40).to_string(), "rotated-40");
        assert!("sideways".parse::<Pass>().is_err());
        let json = serde_json::to_string(&Pass::Rotated(20)).unwrap();
        assert_eq!(json, "\"rotated+20\"");
    }

    #[test]
    fn an_unrotated_copy_is_the_padded_image_and_maps_back_exactly() {
        let copy = RetryCopy::new(100, 50, 0.2, 0);
        assert_eq!((copy.width, copy.height), (140, 90));
        assert_eq!(copy.to_copy.apply([0.0, 0.0]), [20.0, 20.0]);
        let image = RgbImage::from_fn(100, 50, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let pixels = copy.render(&image, PadFill::Grey).unwrap();
        assert_eq!(pixels.get_pixel(20 + 31, 20 + 17), image.get_pixel(31, 17));
        assert_eq!(pixels.get_pixel(3, 3), &image::Rgb([127, 127, 127]));
        let replicated = copy.render(&image, PadFill::Replicate).unwrap();
        assert_eq!(replicated.get_pixel(3, 3), image.get_pixel(0, 0));
    }

    #[test]
    fn a_rotated_copy_maps_points_back_to_where_they_were() {
        let copy = RetryCopy::new(120, 160, 0.2, 40);
        let point = [30.0_f32, 90.0];
        let there = copy
            .to_copy
            .apply([f64::from(point[0]), f64::from(point[1])]);
        let face = Face {
            bbox: FaceBox {
                x1: there[0] as f32 - 5.0,
                y1: there[1] as f32 - 5.0,
                x2: there[0] as f32 + 5.0,
                y2: there[1] as f32 + 5.0,
            },
            score: 0.9,
            landmarks: [[there[0] as f32, there[1] as f32]; 5],
        };
        let back = copy.map_back(&face);
        assert!((back.landmarks[0][0] - point[0]).abs() < 1e-3);
        assert!((back.landmarks[0][1] - point[1]).abs() < 1e-3);
        assert!(((back.bbox.x1 + back.bbox.x2) / 2.0 - point[0]).abs() < 1e-3);
        let corners = [[0.0, 0.0], [120.0, 0.0], [0.0, 160.0], [120.0, 160.0]];
        for corner in corners.map(|p| copy.to_copy.apply(p)) {
            assert!(corner[0] >= -0.5 && corner[0] <= f64::from(copy.width) + 0.5);
            assert!(corner[1] >= -0.5 && corner[1] <= f64::from(copy.height) + 0.5);
        }
    }

    #[test]
    fn boxes_on_the_edge_touch_the_border() {
        let image = RgbImage::new(100, 80);
        let inside = FaceBox {
            x1: 10.0,
            y1: 10.0,
            x2: 60.0,
            y2: 60.0,
        };
        assert!(!touches_border(&inside, &image));
        let spilling = FaceBox { y2: 85.0, ..inside };
        assert!(touches_border(&spilling, &image));
    }
}
