//! Synthetic caricatures of photos: the face's shape is exaggerated by scaling the offsets of
//! its five landmarks from the mean face, then optionally stylised like a drawing.
//!
//! The mean face is the alignment template ([`DLIB_TEMPLATE_150`]) mapped into the image by
//! the inverse of the similarity transform that aligns this face, so exaggeration is relative
//! to the face's own position, rotation and size: target = mean + strength × (landmark − mean).
//! The image is warped by a thin-plate spline through the five landmark pairs and a frame of
//! fixed points on the image border, evaluated as a dense inverse map (output pixel → source
//! pixel) and sampled with OpenCV `remap`. The spline interpolates: each landmark lands exactly
//! on its target, the border stays in place, and strength 1 is the identity.
//!
//! The cartoon style uses only OpenCV's `imgproc` (the build does not enable the `photo`
//! module, whose `stylization` would need a long rebuild of the opencv crate): repeated
//! bilateral filtering, uniform colour quantisation, and dark lines where an adaptive threshold
//! of the median-blurred grey image finds edges.

use std::ops::RangeInclusive;

use opencv::core::{self, Mat, Scalar};
use opencv::imgproc;
use opencv::prelude::*;

use crate::align::{AlignError, DLIB_TEMPLATE_150, similarity_transform};
use crate::cv::{image_as_mat, mat_into_image};
use crate::rng::Rng;
use crate::types::{Face, Landmarks, RgbImage};

/// The exaggeration strengths accepted: 1 leaves the face as it is, 2.5 is a strong caricature.
pub const STRENGTH_RANGE: RangeInclusive<f32> = 1.0..=2.5;

/// Fixed points per image side of the border frame, corners included (4 per side, 12 in all).
const BORDER_POINTS_PER_SIDE: usize = 4;

/// Bilateral filter passes of the cartoon style, and their settings (diameter in pixels,
/// colour and space sigmas): several light passes flatten textures while keeping edges.
const BILATERAL_PASSES: usize = 3;
const BILATERAL_DIAMETER: i32 = 9;
const BILATERAL_SIGMA_COLOUR: f64 = 30.0;
const BILATERAL_SIGMA_SPACE: f64 = 7.0;

/// Levels per colour channel after quantisation.
const COLOUR_LEVELS: u32 = 8;

/// Edge lines: median blur aperture, adaptive threshold block size and offset (grey levels
/// below the local mean by more than the offset become lines).
const EDGE_MEDIAN: i32 = 7;
const EDGE_BLOCK: i32 = 11;
const EDGE_OFFSET: f64 = 6.0;

/// How a caricature is drawn after the warp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Style {
    /// The warped photo as it is.
    #[default]
    Plain,
    /// Smoothed, colour-quantised, with dark edge lines.
    Cartoon,
}

/// Settings of one caricature.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CaricatureConfig {
    /// Factor on the landmarks' offsets from the mean face, within [`STRENGTH_RANGE`].
    pub strength: f32,
    /// How the warped image is drawn.
    pub style: Style,
    /// Standard deviation of a random offset added to every exaggerated landmark, per
    /// coordinate, in pixels of the 150-pixel alignment chip (so it scales with the face); 0
    /// for none. Variants of one photo differ by their seed only when it is above 0.
    pub jitter: f32,
    /// Seed of the jitter: the same seed and settings give the same image.
    pub seed: u64,
}

impl Default for CaricatureConfig {
    fn default() -> Self {
        Self {
            strength: 1.5,
            style: Style::Plain,
            jitter: 0.0,
            seed: 0,
        }
    }
}

impl CaricatureConfig {
    /// Rejects a strength outside [`STRENGTH_RANGE`] or a negative or non-finite jitter.
    pub fn validate(&self) -> Result<(), CaricatureError> {
        if !STRENGTH_RANGE.contains(&self.strength) {
            return Err(CaricatureError::BadConfig(format!(
                "strength must be in [{}, {}], got {}",
                STRENGTH_RANGE.start(),
                STRENGTH_RANGE.end(),
                self.strength
            )));
        }
        if !(self.jitter.is_finite() && self.jitter >= 0.0) {
            return Err(CaricatureError::BadConfig(format!(
                "jitter must be a finite number ≥ 0, got {}",
                self.jitter
            )));
        }
        Ok(())
    }
}

/// Why a caricature could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaricatureError {
    /// The settings are out of range.
    #[error("{0}")]
    BadConfig(String),
    /// The face's landmarks admit no mean face (all in one place).
    #[error(transparent)]
    Landmarks(#[from] AlignError),
    /// Two control points of the warp coincide with different targets.
    #[error("the warp's control points are degenerate (two of them coincide)")]
    Singular,
    /// OpenCV failed.
    #[error("OpenCV failed: {0}")]
    OpenCv(#[from] opencv::Error),
}

/// The caricature of `face` in `image`: exaggerated as `config` says, then stylised. The
/// image keeps its size; its border stays in place.
pub fn caricature(
    image: &RgbImage,
    face: &Face,
    config: &CaricatureConfig,
) -> Result<RgbImage, CaricatureError> {
    caricature_and_landmarks(image, face, config).map(|(image, _)| image)
}

/// [`caricature`] and where the face's five landmarks are in it (the exaggerated targets).
pub fn caricature_and_landmarks(
    image: &RgbImage,
    face: &Face,
    config: &CaricatureConfig,
) -> Result<(RgbImage, Landmarks), CaricatureError> {
    config.validate()?;
    let targets = exaggerate(&face.landmarks, config)?;
    let warped = warp_points(image, &face.landmarks, &targets)?;
    let drawn = match config.style {
        Style::Plain => warped,
        Style::Cartoon => cartoon(&warped)?,
    };
    Ok((drawn, targets))
}

/// The mean face in the image's pixels: the alignment template mapped back by the inverse of
/// the similarity transform that aligns `landmarks` to it.
pub fn mean_face(landmarks: &Landmarks) -> Result<Landmarks, CaricatureError> {
    let to_chip = similarity_transform(landmarks, &DLIB_TEMPLATE_150)?;
    let to_image = to_chip.inverse().ok_or(AlignError::Degenerate)?;
    Ok(DLIB_TEMPLATE_150.map(|[x, y]| {
        let [u, v] = to_image.apply([f64::from(x), f64::from(y)]);
        [u as f32, v as f32]
    }))
}

/// Where the landmarks go: mean + strength × (landmark − mean), plus the seeded jitter
/// (scaled from chip to image pixels).
pub fn exaggerate(
    landmarks: &Landmarks,
    config: &CaricatureConfig,
) -> Result<Landmarks, CaricatureError> {
    let mean = mean_face(landmarks)?;
    let chip_per_image = similarity_transform(landmarks, &DLIB_TEMPLATE_150)?.scale() as f32;
    let jitter = config.jitter / chip_per_image;
    let mut rng = Rng::new(config.seed);
    let mut targets = *landmarks;
    for (target, m) in targets.iter_mut().zip(mean) {
        for (t, m) in target.iter_mut().zip(m) {
            *t = m + config.strength * (*t - m) + jitter * rng.normal();
        }
    }
    Ok(targets)
}

/// Warps `image` so that each point of `from` moves to the same-numbered point of `to`, the
/// image border fixed, by a thin-plate spline (bilinear sampling, edge pixels repeated where
/// the map reaches outside).
pub fn warp_points(
    image: &RgbImage,
    from: &Landmarks,
    to: &Landmarks,
) -> Result<RgbImage, CaricatureError> {
    let (width, height) = (image.width(), image.height());
    let (map_x, map_y) = inverse_spline(from, to, width, height)?.dense_map(width, height);
    let (rows, cols) = (height as i32, width as i32);
    let map_x = Mat::new_rows_cols_with_data(rows, cols, &map_x)?;
    let map_y = Mat::new_rows_cols_with_data(rows, cols, &map_y)?;
    let mut warped = Mat::default();
    imgproc::remap(
        &image_as_mat(image)?,
        &mut warped,
        &map_x,
        &map_y,
        imgproc::INTER_LINEAR,
        core::BORDER_REPLICATE,
        Scalar::all(0.0),
    )?;
    Ok(mat_into_image(&warped)?)
}

/// The cartoon style: bilateral smoothing, colour quantisation, dark edge lines.
pub fn cartoon(image: &RgbImage) -> Result<RgbImage, CaricatureError> {
    let mut flat = smoothed(image)?;
    let edges = edge_mask(image)?;
    let step = 256 / COLOUR_LEVELS;
    for (pixel, &keep) in flat.pixels_mut().zip(&edges) {
        for c in &mut pixel.0 {
            let level = (u32::from(*c) / step).min(COLOUR_LEVELS - 1);
            *c = if keep == 0 {
                0
            } else {
                (level * step + step / 2) as u8
            };
        }
    }
    Ok(flat)
}

/// The spline taking each output pixel to the input pixel it samples: `to` to `from`, and
/// the border frame of a `width`×`height` image to itself.
fn inverse_spline(
    from: &Landmarks,
    to: &Landmarks,
    width: u32,
    height: u32,
) -> Result<ThinPlateSpline, CaricatureError> {
    let frame = border_frame(width, height);
    let sources: Vec<[f64; 2]> = from
        .iter()
        .map(|&p| widen(p))
        .chain(frame.clone())
        .collect();
    let targets: Vec<[f64; 2]> = to.iter().map(|&p| widen(p)).chain(frame).collect();
    ThinPlateSpline::fit(&targets, &sources, f64::from(width.max(height)))
}

fn widen([x, y]: [f32; 2]) -> [f64; 2] {
    [f64::from(x), f64::from(y)]
}

/// Fixed points along the image border (pixel centres of the outermost rows and columns),
/// [`BORDER_POINTS_PER_SIDE`] per side, each corner once.
fn border_frame(width: u32, height: u32) -> Vec<[f64; 2]> {
    let (right, bottom) = (f64::from(width - 1), f64::from(height - 1));
    let steps = BORDER_POINTS_PER_SIDE - 1;
    let at = |i: usize, extent: f64| extent * i as f64 / steps as f64;
    (0..steps)
        .flat_map(|i| {
            [
                [at(i, right), 0.0],
                [right, at(i, bottom)],
                [right - at(i, right), bottom],
                [0.0, bottom - at(i, bottom)],
            ]
        })
        .collect()
}

/// The plane map through control points, f(p) = a₀ + a₁x + a₂y + Σ wᵢ U(|p − pᵢ|), with the
/// thin-plate kernel U(r) = r² ln r², each coordinate of the values fitted alike. Coordinates
/// are divided by `norm` inside (the spline is scale-invariant; this keeps the system well
/// conditioned).
struct ThinPlateSpline {
    points: Vec<[f64; 2]>,
    weights: Vec<[f64; 2]>,
    affine: [[f64; 2]; 3],
    norm: f64,
}

impl ThinPlateSpline {
    /// The spline taking each of `points` exactly to the same-numbered `values`.
    fn fit(points: &[[f64; 2]], values: &[[f64; 2]], norm: f64) -> Result<Self, CaricatureError> {
        let scaled = |p: &[f64; 2]| [p[0] / norm, p[1] / norm];
        let points: Vec<[f64; 2]> = points.iter().map(scaled).collect();
        let n = points.len();
        let mut system = vec![vec![0.0; n + 3]; n + 3];
        let mut rhs = vec![vec![0.0; 2]; n + 3];
        for (i, p) in points.iter().enumerate() {
            for (j, q) in points.iter().enumerate() {
                system[i][j] = kernel(p, q);
            }
            for (k, basis) in [1.0, p[0], p[1]].into_iter().enumerate() {
                system[i][n + k] = basis;
                system[n + k][i] = basis;
            }
            rhs[i] = scaled(&values[i]).to_vec();
        }
        let mut solution = Mat::default();
        let solved = core::solve(
            &Mat::from_slice_2d(&system)?,
            &Mat::from_slice_2d(&rhs)?,
            &mut solution,
            core::DECOMP_LU,
        )?;
        if !solved {
            return Err(CaricatureError::Singular);
        }
        let row = |i: usize| -> Result<[f64; 2], CaricatureError> {
            Ok([
                *solution.at_2d::<f64>(i as i32, 0)?,
                *solution.at_2d::<f64>(i as i32, 1)?,
            ])
        };
        Ok(Self {
            weights: (0..n).map(row).collect::<Result<_, _>>()?,
            affine: [row(n)?, row(n + 1)?, row(n + 2)?],
            points,
            norm,
        })
    }

    /// The map at a point, in the caller's (unscaled) coordinates.
    fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        let p = [x / self.norm, y / self.norm];
        let [a0, ax, ay] = self.affine;
        let mut out = [0, 1].map(|c| a0[c] + ax[c] * p[0] + ay[c] * p[1]);
        for (q, w) in self.points.iter().zip(&self.weights) {
            let u = kernel(&p, q);
            out[0] += w[0] * u;
            out[1] += w[1] * u;
        }
        out.map(|v| v * self.norm)
    }

    /// The map at every pixel of a `width`×`height` image, as OpenCV `remap`'s two planes.
    fn dense_map(&self, width: u32, height: u32) -> (Vec<f32>, Vec<f32>) {
        let size = (width * height) as usize;
        let (mut map_x, mut map_y) = (Vec::with_capacity(size), Vec::with_capacity(size));
        for y in 0..height {
            for x in 0..width {
                let [u, v] = self.apply([f64::from(x), f64::from(y)]);
                map_x.push(u as f32);
                map_y.push(v as f32);
            }
        }
        (map_x, map_y)
    }
}

/// The thin-plate kernel r² ln r² of two points' distance (0 at distance 0).
fn kernel(p: &[f64; 2], q: &[f64; 2]) -> f64 {
    let r2 = (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2);
    if r2 > 0.0 { r2 * r2.ln() } else { 0.0 }
}

/// [`BILATERAL_PASSES`] bilateral filter passes.
fn smoothed(image: &RgbImage) -> Result<RgbImage, CaricatureError> {
    let mut current = image_as_mat(image)?.try_clone()?;
    for _ in 0..BILATERAL_PASSES {
        let mut next = Mat::default();
        imgproc::bilateral_filter(
            &current,
            &mut next,
            BILATERAL_DIAMETER,
            BILATERAL_SIGMA_COLOUR,
            BILATERAL_SIGMA_SPACE,
            core::BORDER_DEFAULT,
        )?;
        current = next;
    }
    Ok(mat_into_image(&current)?)
}

/// One byte per pixel: 0 on edge lines, 255 elsewhere.
fn edge_mask(image: &RgbImage) -> Result<Vec<u8>, CaricatureError> {
    let (mut grey, mut blurred, mut mask) = (Mat::default(), Mat::default(), Mat::default());
    imgproc::cvt_color(&image_as_mat(image)?, &mut grey, imgproc::COLOR_RGB2GRAY, 0)?;
    imgproc::median_blur(&grey, &mut blurred, EDGE_MEDIAN)?;
    imgproc::adaptive_threshold(
        &blurred,
        &mut mask,
        255.0,
        imgproc::ADAPTIVE_THRESH_MEAN_C,
        imgproc::THRESH_BINARY,
        EDGE_BLOCK,
        EDGE_OFFSET,
    )?;
    Ok(mask.data_bytes()?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FaceBox;

    /// A face of the template's shape, twice as large, moved, with the nose pushed right.
    fn face() -> Face {
        let mut landmarks = DLIB_TEMPLATE_150.map(|[x, y]| [2.0 * x + 30.0, 2.0 * y + 20.0]);
        landmarks[2][0] += 8.0;
        Face {
            bbox: FaceBox {
                x1: 60.0,
                y1: 50.0,
                x2: 260.0,
                y2: 280.0,
            },
            score: 1.0,
            landmarks,
        }
    }

    /// A 320×320 image with a pattern that changes at every pixel.
    fn pattern() -> RgbImage {
        RgbImage::from_fn(320, 320, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    fn distance(a: [f64; 2], b: [f64; 2]) -> f64 {
        ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
    }

    #[test]
    fn the_mean_face_of_a_template_shaped_face_is_the_face_itself() {
        let landmarks = DLIB_TEMPLATE_150.map(|[x, y]| [1.5 * x - 4.0, 1.5 * y + 9.0]);
        let mean = mean_face(&landmarks).unwrap();
        for (m, l) in mean.iter().zip(&landmarks) {
            assert!(distance(widen(*m), widen(*l)) < 1e-3, "{m:?} vs {l:?}");
        }
    }

    #[test]
    fn exaggeration_scales_the_offsets_from_the_mean_face() {
        let face = face();
        let mean = mean_face(&face.landmarks).unwrap();
        let config = CaricatureConfig {
            strength: 2.0,
            ..CaricatureConfig::default()
        };
        let targets = exaggerate(&face.landmarks, &config).unwrap();
        let coordinates = |points: &Landmarks| points.concat();
        let (t, l, m) = (
            coordinates(&targets),
            coordinates(&face.landmarks),
            coordinates(&mean),
        );
        for ((t, l), m) in t.iter().zip(&l).zip(&m) {
            assert!((t - m - 2.0 * (l - m)).abs() < 1e-4);
        }
    }

    #[test]
    fn the_spline_maps_control_points_exactly_to_their_values() {
        let points = [
            [10.0, 10.0],
            [200.0, 40.0],
            [90.0, 150.0],
            [0.0, 0.0],
            [300.0, 300.0],
        ];
        let values = [
            [14.0, 7.0],
            [190.0, 52.0],
            [95.0, 141.0],
            [0.0, 0.0],
            [300.0, 300.0],
        ];
        let spline = ThinPlateSpline::fit(&points, &values, 300.0).unwrap();
        for (p, v) in points.iter().zip(&values) {
            assert!(distance(spline.apply(*p), *v) < 1e-9, "{p:?}");
        }
    }

    #[test]
    fn the_warp_keeps_the_border_fixed_and_moves_the_landmarks() {
        let face = face();
        let targets = exaggerate(
            &face.landmarks,
            &CaricatureConfig {
                strength: 2.5,
                ..CaricatureConfig::default()
            },
        )
        .unwrap();
        let spline = inverse_spline(&face.landmarks, &targets, 320, 320).unwrap();
        for (t, s) in targets.iter().zip(&face.landmarks) {
            assert!(distance(spline.apply(widen(*t)), widen(*s)) < 1e-6);
        }
        for p in border_frame(320, 320) {
            assert!(distance(spline.apply(p), p) < 1e-6, "{p:?}");
        }
    }

    #[test]
    fn strength_one_leaves_every_pixel_unchanged() {
        let image = pattern();
        let config = CaricatureConfig {
            strength: 1.0,
            ..CaricatureConfig::default()
        };
        assert_eq!(caricature(&image, &face(), &config).unwrap(), image);
    }

    #[test]
    fn the_same_seed_gives_the_same_jitter_and_another_seed_another() {
        let config = |seed| CaricatureConfig {
            jitter: 2.0,
            seed,
            ..CaricatureConfig::default()
        };
        let landmarks = face().landmarks;
        let a = exaggerate(&landmarks, &config(1)).unwrap();
        assert_eq!(a, exaggerate(&landmarks, &config(1)).unwrap());
        assert_ne!(a, exaggerate(&landmarks, &config(2)).unwrap());
    }

    #[test]
    fn the_cartoon_style_quantises_colours_and_keeps_the_size() {
        let styled = cartoon(&pattern()).unwrap();
        assert_eq!(styled.dimensions(), (320, 320));
        let step = (256 / COLOUR_LEVELS) as u8;
        assert!(
            styled
                .pixels()
                .flat_map(|p| p.0)
                .all(|c| c == 0 || c % step == step / 2)
        );
    }

    #[test]
    fn out_of_range_settings_and_degenerate_faces_are_refused() {
        let image = pattern();
        let weak = CaricatureConfig {
            strength: 0.5,
            ..CaricatureConfig::default()
        };
        assert!(matches!(
            caricature(&image, &face(), &weak),
            Err(CaricatureError::BadConfig(_))
        ));
        let covering = Face::covering(&image);
        assert!(matches!(
            caricature(&image, &covering, &CaricatureConfig::default()),
            Err(CaricatureError::Landmarks(AlignError::Degenerate))
        ));
    }
}
