//! Alignment: turns a detected face into the square chip the embedding model takes.
//!
//! Five-point mode fits a similarity transform (rotation, uniform scale, translation) from the
//! face's MTCNN landmarks to a template and warps bilinearly (OpenCV `warpAffine`). Crop-only
//! mode (the seed method's) takes the box plus a margin, squared. Both end in the same warp;
//! faces much larger than the chip are area-downscaled first so the chip does not alias.

use opencv::core::{Mat, Rect, Scalar, Size, ToInputArray};
use opencv::imgproc;
use opencv::prelude::*;

use crate::cv::{image_as_mat, mat_into_image};
use crate::types::{Affine, Face, Landmarks, RgbImage};

/// Chip side of the dlib descriptor, in pixels.
pub const DLIB_CHIP_SIZE: u32 = 150;

/// The five-point template (left eye, right eye, nose tip, left and right mouth corners) in
/// 150×150 chip pixels: the mean of MTCNN's landmarks on dlib's own chips (`get_face_chip`,
/// padding 0.25) of 362 CaVI photos, measured by `scripts/measure_align_template.py`.
///
/// Chosen over the template derived from dlib's 68-point mean face ((47.549, 46.599),
/// (100.476, 46.599), (74.013, 76.562), (50.415, 103.023), (97.610, 103.023)): on 3000 CaVI
/// photo pairs ROC AUC 0.9840 vs 0.9839, on 2724 CaVI caricature–photo pairs 0.9427 vs 0.9413,
/// and descriptors 7% closer to those of dlib's own alignment (mean distance 0.120 vs 0.129).
/// Crop-only chips scored far lower (AUC 0.941 photo, 0.855 caricature at margin 0).
pub const DLIB_TEMPLATE_150: Landmarks = [
    [47.805, 45.450],
    [101.500, 45.205],
    [74.403, 78.056],
    [51.167, 105.408],
    [97.815, 104.927],
];

/// Margin each side, as a fraction of the box, when a face is given by a box (`--box`,
/// `--whole-image`, images without a detected face): dlib's chips are tightly framed, and on
/// CaVI pairs crop-only accuracy fell steadily with the margin (photo pairs 0.871 at 0, 0.841
/// at 0.1, 0.783 at 0.2).
pub const BOX_MARGIN: f32 = 0.0;

/// Warps scaling below this first area-downscale the source, so bilinear sampling does not skip
/// pixels (it reads 2×2 neighbourhoods: below 0.5 it would alias).
const MIN_WARP_SCALE: f64 = 0.5;

/// How a face becomes a chip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AlignMode {
    /// Similarity transform from the five landmarks to [`DLIB_TEMPLATE_150`] (scaled to the chip).
    FivePoint,
    /// The box grown by `margin` × its size on each side, squared, resized.
    CropOnly {
        /// Fraction of the box size added on each side.
        margin: f32,
    },
}

/// Why alignment failed.
#[derive(Debug, thiserror::Error)]
pub enum AlignError {
    /// The landmarks are degenerate (all in one place), no transform exists.
    #[error("the face's landmarks are degenerate; cannot align")]
    Degenerate,
    /// OpenCV failed.
    #[error("warping the face failed: {0}")]
    OpenCv(#[from] opencv::Error),
}

impl Affine {
    /// The map taking pixels of a sub-image that starts at `origin` and was resized by `(fx, fy)`
    /// to the same chip pixels this map takes the full image to. OpenCV's `resize` aligns pixel
    /// centres: small pixel `x'` samples source `(x' + 0.5)/fx − 0.5`.
    fn after_crop_and_resize(&self, origin: [f64; 2], fx: f64, fy: f64) -> Affine {
        let origin = [origin[0] + 0.5 / fx - 0.5, origin[1] + 0.5 / fy - 0.5];
        let [[a, b, c], [d, e, f]] = self.0;
        Affine([
            [a / fx, b / fy, a * origin[0] + b * origin[1] + c],
            [d / fx, e / fy, d * origin[0] + e * origin[1] + f],
        ])
    }
}

/// Least-squares similarity transform (rotation, uniform scale, translation; no reflection)
/// taking `src` to `dst`: Umeyama's method, which in 2-D has the closed form below when points
/// are written as complex numbers: `a = Σ conj(s̃ᵢ)·d̃ᵢ / Σ|s̃ᵢ|²` on centred points, `t = μd − a·μs`.
pub fn similarity_transform(src: &Landmarks, dst: &Landmarks) -> Result<Affine, AlignError> {
    let mean = |p: &Landmarks| {
        let n = p.len() as f64;
        [
            p.iter().map(|q| f64::from(q[0])).sum::<f64>() / n,
            p.iter().map(|q| f64::from(q[1])).sum::<f64>() / n,
        ]
    };
    let (ms, md) = (mean(src), mean(dst));
    let (mut re, mut im, mut norm) = (0.0, 0.0, 0.0);
    for (s, d) in src.iter().zip(dst) {
        let (sx, sy) = (f64::from(s[0]) - ms[0], f64::from(s[1]) - ms[1]);
        let (dx, dy) = (f64::from(d[0]) - md[0], f64::from(d[1]) - md[1]);
        re += sx * dx + sy * dy;
        im += sx * dy - sy * dx;
        norm += sx * sx + sy * sy;
    }
    if norm < 1e-9 {
        return Err(AlignError::Degenerate);
    }
    let (a, b) = (re / norm, im / norm);
    let tx = md[0] - (a * ms[0] - b * ms[1]);
    let ty = md[1] - (b * ms[0] + a * ms[1]);
    Ok(Affine([[a, -b, tx], [b, a, ty]]))
}

/// Makes chips from faces; cheap, stateless apart from its settings.
#[derive(Clone, Debug)]
pub struct Aligner {
    mode: AlignMode,
    chip_size: u32,
    template: Landmarks,
}

impl Aligner {
    /// An aligner for chips of `chip_size` pixels (the template scales with it).
    pub fn new(mode: AlignMode, chip_size: u32) -> Self {
        let k = chip_size as f32 / DLIB_CHIP_SIZE as f32;
        Self {
            mode,
            chip_size,
            template: DLIB_TEMPLATE_150.map(|[x, y]| [x * k, y * k]),
        }
    }

    /// How this aligner makes chips.
    pub fn mode(&self) -> AlignMode {
        self.mode
    }

    /// Chip side in pixels.
    pub fn chip_size(&self) -> u32 {
        self.chip_size
    }

    /// The image-to-chip map for a face under this aligner's mode.
    pub fn transform(&self, face: &Face) -> Result<Affine, AlignError> {
        match self.mode {
            AlignMode::FivePoint => similarity_transform(&face.landmarks, &self.template),
            AlignMode::CropOnly { margin } => {
                let b = face.bbox;
                let side = f64::from(b.width().max(b.height()) * (1.0 + 2.0 * margin));
                if side <= 0.0 {
                    return Err(AlignError::Degenerate);
                }
                let (cx, cy) = (f64::from(b.x1 + b.x2) / 2.0, f64::from(b.y1 + b.y2) / 2.0);
                let s = f64::from(self.chip_size) / side;
                Ok(Affine([
                    [s, 0.0, -s * (cx - side / 2.0)],
                    [0.0, s, -s * (cy - side / 2.0)],
                ]))
            }
        }
    }

    /// The chip for one face of `image`.
    pub fn align(&self, image: &RgbImage, face: &Face) -> Result<RgbImage, AlignError> {
        let transform = self.transform(face)?;
        warp(image, &transform, self.chip_size)
    }
}

/// Warps `image` into a `size`×`size` chip with `transform` (bilinear, black outside), area-
/// downscaling the part of the image the chip covers first when the warp would shrink by more
/// than [`MIN_WARP_SCALE`].
pub fn warp(image: &RgbImage, transform: &Affine, size: u32) -> Result<RgbImage, AlignError> {
    let source = image_as_mat(image)?;
    let scale = transform.scale();
    match chip_footprint(transform, size, image.width(), image.height()) {
        Some(roi) if scale < MIN_WARP_SCALE => {
            let (small, adjusted) = downscaled(&source, roi, scale, transform)?;
            warp_mat(&small, &adjusted, size)
        }
        _ => warp_mat(&source, transform, size),
    }
}

fn warp_mat(
    input: &impl ToInputArray,
    transform: &Affine,
    size: u32,
) -> Result<RgbImage, AlignError> {
    let m = Mat::from_slice_2d(&transform.0)?;
    let mut chip = Mat::default();
    imgproc::warp_affine(
        input,
        &mut chip,
        &m,
        Size::new(size as i32, size as i32),
        imgproc::INTER_LINEAR,
        opencv::core::BORDER_CONSTANT,
        Scalar::all(0.0),
    )?;
    Ok(mat_into_image(&chip)?)
}

/// The image rectangle (clipped, with a 2-pixel border) that the chip's pixels come from.
fn chip_footprint(transform: &Affine, size: u32, width: u32, height: u32) -> Option<Rect> {
    let inverse = transform.inverse()?;
    let s = f64::from(size);
    let corners = [[0.0, 0.0], [s, 0.0], [0.0, s], [s, s]].map(|p| inverse.apply(p));
    let min_x = corners
        .iter()
        .map(|p| p[0])
        .fold(f64::INFINITY, f64::min)
        .floor()
        - 2.0;
    let min_y = corners
        .iter()
        .map(|p| p[1])
        .fold(f64::INFINITY, f64::min)
        .floor()
        - 2.0;
    let max_x = corners
        .iter()
        .map(|p| p[0])
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil()
        + 2.0;
    let max_y = corners
        .iter()
        .map(|p| p[1])
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil()
        + 2.0;
    let x0 = min_x.max(0.0) as i32;
    let y0 = min_y.max(0.0) as i32;
    let x1 = max_x.min(f64::from(width)) as i32;
    let y1 = max_y.min(f64::from(height)) as i32;
    (x1 > x0 + 1 && y1 > y0 + 1).then(|| Rect::new(x0, y0, x1 - x0, y1 - y0))
}

/// Crops `roi` and area-resizes it by `scale`, returning it with the transform adjusted to it.
fn downscaled(
    source: &impl MatTraitConst,
    roi: Rect,
    scale: f64,
    transform: &Affine,
) -> Result<(Mat, Affine), AlignError> {
    let crop = source.roi(roi)?;
    let w = ((f64::from(roi.width) * scale).round() as i32).max(1);
    let h = ((f64::from(roi.height) * scale).round() as i32).max(1);
    let mut small = Mat::default();
    imgproc::resize(
        &crop,
        &mut small,
        Size::new(w, h),
        0.0,
        0.0,
        imgproc::INTER_AREA,
    )?;
    let (fx, fy) = (
        f64::from(w) / f64::from(roi.width),
        f64::from(h) / f64::from(roi.height),
    );
    let adjusted = transform.after_crop_and_resize([f64::from(roi.x), f64::from(roi.y)], fx, fy);
    Ok((small, adjusted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FaceBox;

    fn rotate_scale_shift(
        points: &Landmarks,
        angle: f32,
        scale: f32,
        shift: [f32; 2],
    ) -> Landmarks {
        let (s, c) = angle.sin_cos();
        points.map(|[x, y]| {
            [
                scale * (c * x - s * y) + shift[0],
                scale * (s * x + c * y) + shift[1],
            ]
        })
    }

    #[test]
    fn similarity_transform_recovers_a_known_map() {
        let src = rotate_scale_shift(&DLIB_TEMPLATE_150, 0.3, 2.5, [40.0, -7.0]);
        let t = similarity_transform(&src, &DLIB_TEMPLATE_150).unwrap();
        assert!((t.scale() - 1.0 / 2.5).abs() < 1e-5);
        for (s, d) in src.iter().zip(&DLIB_TEMPLATE_150) {
            let p = t.apply([f64::from(s[0]), f64::from(s[1])]);
            assert!((p[0] - f64::from(d[0])).abs() < 1e-3 && (p[1] - f64::from(d[1])).abs() < 1e-3);
        }
    }

    #[test]
    fn degenerate_landmarks_are_refused() {
        let same = [[5.0, 5.0]; 5];
        assert!(matches!(
            similarity_transform(&same, &DLIB_TEMPLATE_150),
            Err(AlignError::Degenerate)
        ));
    }

    fn face_at(bbox: FaceBox) -> Face {
        Face {
            bbox,
            score: 1.0,
            landmarks: [[0.0; 2]; 5],
        }
    }

    #[test]
    fn crop_only_maps_the_grown_square_onto_the_chip() {
        let aligner = Aligner::new(AlignMode::CropOnly { margin: 0.25 }, 150);
        let face = face_at(FaceBox {
            x1: 100.0,
            y1: 50.0,
            x2: 200.0,
            y2: 150.0,
        });
        let t = aligner.transform(&face).unwrap();
        let corner = t.apply([75.0, 25.0]);
        assert!(corner[0].abs() < 1e-9 && corner[1].abs() < 1e-9);
        assert!((t.scale() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_large_face_is_downscaled_before_the_warp_and_keeps_its_colour_layout() {
        // Left half red, right half blue, 1200 px wide: the face box spans it all (scale 1/8).
        let mut image = RgbImage::new(1200, 1200);
        for (x, _, px) in image.enumerate_pixels_mut() {
            *px = if x < 600 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            };
        }
        let aligner = Aligner::new(AlignMode::CropOnly { margin: 0.0 }, 150);
        let chip = aligner
            .align(
                &image,
                &face_at(FaceBox {
                    x1: 0.0,
                    y1: 0.0,
                    x2: 1200.0,
                    y2: 1200.0,
                }),
            )
            .unwrap();
        assert_eq!((chip.width(), chip.height()), (150, 150));
        assert_eq!(chip.get_pixel(10, 75).0, [255, 0, 0]);
        assert_eq!(chip.get_pixel(140, 75).0, [0, 0, 255]);
    }
}
