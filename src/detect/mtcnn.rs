//! The MTCNN cascade (P-Net over a pyramid → R-Net → O-Net), a port of facenet-pytorch 2.6.0's
//! `detect_face`, whose behaviour the exported weights were used with. Each rule copied from
//! the reference is written down where it is applied.

use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::{Array4, ArrayD, Axis};

use super::nms::{Overlap, nms};
use super::pyramid::{Region, area_resize_normalised, level_size, scales};
use super::{DetectError, DetectorConfig, ONET_SPEC, PNET_SPEC, RNET_SPEC};
use crate::runtime::{Model, Runtime};
use crate::types::{Face, FaceBox, Landmarks, RgbImage};

/// P-Net's stride and cell size in pyramid pixels (reference `generateBoundingBox`).
const PNET_STRIDE: f32 = 2.0;
const PNET_CELL: f32 = 12.0;
/// NMS thresholds of the reference: within a pyramid level, across levels, after R-Net, after O-Net.
const NMS_WITHIN_LEVEL: f32 = 0.5;
const NMS_ACROSS_LEVELS: f32 = 0.7;
const NMS_AFTER_RNET: f32 = 0.7;
const NMS_AFTER_ONET: f32 = 0.7;
/// Input sizes of R-Net and O-Net.
const RNET_SIZE: usize = 24;
const ONET_SIZE: usize = 48;

/// A box under consideration, with its score and the regression the last net predicted.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    rect: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

/// Time spent in each part of the cascade on the last image.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    /// Pyramid resizing plus P-Net on every level, and stage-1 NMS.
    pub pnet: Duration,
    /// Crops, R-Net and stage-2 NMS.
    pub rnet: Duration,
    /// Crops, O-Net and stage-3 NMS.
    pub onet: Duration,
}

/// The three MTCNN sessions with a configuration. `detect` takes `&mut self` (ONNX Runtime
/// sessions run mutably), so each detecting thread owns one `Mtcnn`.
pub struct Mtcnn {
    pnet: Model,
    rnet: Model,
    onet: Model,
    config: DetectorConfig,
    last_times: StageTimes,
}

impl Mtcnn {
    /// Opens `mtcnn_{p,r,o}net.onnx` from `models_dir` and checks their interfaces.
    pub fn open(
        runtime: &Runtime,
        models_dir: &Path,
        config: DetectorConfig,
    ) -> Result<Self, DetectError> {
        config.validate()?;
        let open = |spec: &crate::runtime::ModelSpec| -> Result<Model, DetectError> {
            let model = runtime.open(&models_dir.join(spec.file))?;
            model.check(spec)?;
            Ok(model)
        };
        Ok(Self {
            pnet: open(&PNET_SPEC)?,
            rnet: open(&RNET_SPEC)?,
            onet: open(&ONET_SPEC)?,
            config,
            last_times: StageTimes::default(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Time per cascade stage on the last call to [`Mtcnn::detect`].
    pub fn last_times(&self) -> StageTimes {
        self.last_times
    }

    /// Finds the faces in an image, largest first, with boxes and landmarks in its pixels.
    pub fn detect(&mut self, image: &RgbImage) -> Result<Vec<Face>, DetectError> {
        if image.width() < 2 || image.height() < 2 {
            return Err(DetectError::ImageTooSmall {
                width: image.width(),
                height: image.height(),
            });
        }
        let bordered = self.bordered(image);
        let (source, offset) = bordered
            .as_ref()
            .map_or((image, 0.0), |(b, offset)| (b, *offset));
        let (working, factor) = self.working_image(source)?;
        let min_face = self.config.min_face * factor;
        let mut faces = self.cascade(working.as_ref().unwrap_or(source), min_face)?;
        faces
            .iter_mut()
            .for_each(|f| map_back(f, 1.0 / factor, offset));
        // The reference (MTCNN.detect with select_largest) orders faces by box area, largest first.
        faces.sort_by(|a, b| b.bbox.area().total_cmp(&a.bbox.area()));
        let limit = if self.config.largest_only {
            1
        } else {
            self.config.max_faces.unwrap_or(usize::MAX)
        };
        faces.truncate(limit);
        Ok(faces)
    }

    /// [`Mtcnn::detect`] with other score thresholds for this call only (the retry passes').
    pub fn detect_with_thresholds(
        &mut self,
        image: &RgbImage,
        thresholds: [f32; 3],
    ) -> Result<Vec<Face>, DetectError> {
        let configured = std::mem::replace(&mut self.config.thresholds, thresholds);
        let faces = self.detect(image);
        self.config.thresholds = configured;
        faces
    }

    /// Follows known faces into a new frame with O-Net alone: each previous box, squared, is
    /// re-scored, regressed and given new landmarks (a few ms instead of a full pyramid). Faces
    /// O-Net no longer accepts are dropped; new faces need a full [`Mtcnn::detect`].
    pub fn refine(
        &mut self,
        image: &RgbImage,
        previous: &[Face],
    ) -> Result<Vec<Face>, DetectError> {
        let candidates = previous
            .iter()
            .map(|f| Candidate {
                rect: square(f.bbox.to_array()),
                score: f.score,
                reg: [0.0; 4],
            })
            .collect();
        let started = Instant::now();
        let threshold = self.config.thresholds[2];
        let mut faces = self.stage_three(image, candidates, threshold)?;
        self.last_times = StageTimes {
            onet: started.elapsed(),
            ..StageTimes::default()
        };
        faces.sort_by(|a, b| b.bbox.area().total_cmp(&a.bbox.area()));
        Ok(faces)
    }

    /// The face O-Net scores highest among a grid of square windows over the image (sides
    /// of 100%, 85% and 70% of its shorter side, each at 3×3 positions), whatever its score:
    /// a fallback for images where the cascade finds nothing. `None` only when every window's
    /// crop is empty.
    pub fn best_window(&mut self, image: &RgbImage) -> Result<Option<Face>, DetectError> {
        let candidates = window_grid(image.width() as f32, image.height() as f32)
            .into_iter()
            .map(|rect| Candidate {
                rect,
                score: 0.0,
                reg: [0.0; 4],
            })
            .collect();
        let faces = self.stage_three(image, candidates, f32::NEG_INFINITY)?;
        Ok(faces.into_iter().max_by(|a, b| a.score.total_cmp(&b.score)))
    }

    /// The image with the configured grey border, and the border's width, when there is one.
    fn bordered(&self, image: &RgbImage) -> Option<(RgbImage, f32)> {
        let border = (self.config.border * image.width().max(image.height()) as f32).round() as u32;
        (border > 0).then(|| {
            let grey = image::Rgb([127, 127, 127]);
            let mut out = RgbImage::from_pixel(
                image.width() + 2 * border,
                image.height() + 2 * border,
                grey,
            );
            image::imageops::replace(&mut out, image, i64::from(border), i64::from(border));
            (out, border as f32)
        })
    }

    /// The image to detect on (downscaled when it exceeds the working size) and the factor
    /// from original to working pixels.
    fn working_image(&self, image: &RgbImage) -> Result<(Option<RgbImage>, f32), DetectError> {
        let longest = image.width().max(image.height());
        match self.config.max_side {
            Some(max_side) if longest > max_side => {
                let factor = max_side as f32 / longest as f32;
                let w = ((image.width() as f32 * factor).round() as u32).max(1);
                let h = ((image.height() as f32 * factor).round() as u32).max(1);
                Ok((Some(crate::cv::resize_area(image, w, h)?), factor))
            }
            _ => Ok((None, 1.0)),
        }
    }

    fn cascade(&mut self, image: &RgbImage, min_face: f32) -> Result<Vec<Face>, DetectError> {
        let started = Instant::now();
        let candidates = self.stage_one(image, min_face)?;
        let after_pnet = Instant::now();
        let candidates = self.stage_two(image, candidates)?;
        let after_rnet = Instant::now();
        let faces = self.stage_three(image, candidates, self.config.thresholds[2])?;
        self.last_times = StageTimes {
            pnet: after_pnet - started,
            rnet: after_rnet - after_pnet,
            onet: after_rnet.elapsed(),
        };
        Ok(faces)
    }

    /// P-Net on every pyramid level; NMS within each level and then across levels; stage-1
    /// regression (with width `x2 − x1`, no +1); boxes squared.
    fn stage_one(
        &mut self,
        image: &RgbImage,
        min_face: f32,
    ) -> Result<Vec<Candidate>, DetectError> {
        let (h, w) = (image.height(), image.width());
        let mut all = Vec::new();
        for scale in scales(
            h,
            w,
            f64::from(min_face),
            f64::from(self.config.scale_factor),
        ) {
            let (lh, lw) = level_size(h, w, scale);
            let mut input = Array4::<f32>::zeros((1, 3, lh, lw));
            area_resize_normalised(
                image,
                Region::whole(image),
                lh,
                lw,
                input.as_slice_mut().expect("standard layout"),
            );
            let out = self.pnet.run(PNET_SPEC.input, input.view())?;
            let level = pnet_candidates(
                &out["reg"],
                &out["prob"],
                scale as f32,
                self.config.thresholds[0],
            );
            all.extend(suppress(level, NMS_WITHIN_LEVEL, Overlap::Union));
        }
        let mut kept = suppress(all, NMS_ACROSS_LEVELS, Overlap::Union);
        for c in &mut kept {
            let (bw, bh) = (c.rect[2] - c.rect[0], c.rect[3] - c.rect[1]);
            c.rect = regress(c.rect, c.reg, bw, bh);
            c.rect = square(c.rect);
        }
        Ok(kept)
    }

    /// R-Net on all candidates in one batch; keeps `prob > t2`; NMS 0.7; regression with
    /// width `x2 − x1 + 1`; boxes squared.
    fn stage_two(
        &mut self,
        image: &RgbImage,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<Candidate>, DetectError> {
        let (candidates, input) = crops(image, candidates, RNET_SIZE);
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let out = self.rnet.run(RNET_SPEC.input, input.view())?;
        let scored = rescore(
            candidates,
            &out["prob"],
            &out["reg"],
            self.config.thresholds[1],
        );
        let mut kept = suppress(
            scored.into_iter().map(|(c, _)| c).collect(),
            NMS_AFTER_RNET,
            Overlap::Union,
        );
        for c in &mut kept {
            c.rect = square(regress_plus_one(c.rect, c.reg));
        }
        Ok(kept)
    }

    /// O-Net on all candidates in one batch; keeps `prob > threshold` (t3 in the cascade);
    /// landmarks from the box before regression; regression with `+1` widths; NMS 0.7 over the
    /// smaller area.
    fn stage_three(
        &mut self,
        image: &RgbImage,
        candidates: Vec<Candidate>,
        threshold: f32,
    ) -> Result<Vec<Face>, DetectError> {
        let (candidates, input) = crops(image, candidates, ONET_SIZE);
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.onet.run(ONET_SPEC.input, input.view())?;
        let landmarks = &out["landmarks"];
        let scored = rescore(candidates, &out["prob"], &out["reg"], threshold);
        let faces: Vec<Face> = scored
            .into_iter()
            .map(|(c, row)| Face {
                landmarks: onet_landmarks(
                    c.rect,
                    landmarks.index_axis(Axis(0), row).as_slice().expect("row"),
                ),
                bbox: to_box(regress_plus_one(c.rect, c.reg)),
                score: c.score,
            })
            .collect();
        let rects: Vec<[f32; 4]> = faces.iter().map(|f| f.bbox.to_array()).collect();
        let scores: Vec<f32> = faces.iter().map(|f| f.score).collect();
        Ok(nms(&rects, &scores, NMS_AFTER_ONET, Overlap::MinPlusOne)
            .into_iter()
            .map(|i| faces[i])
            .collect())
    }
}

/// Candidates from one P-Net output: cell (x, y) with `prob ≥ threshold` maps to the box
/// `floor((2x+1)/s), floor((2y+1)/s), floor((2x+12)/s), floor((2y+12)/s)` (reference
/// `generateBoundingBox`, cell size 12 and the MATLAB +1 folded in), in row-major cell order.
fn pnet_candidates(
    reg: &ArrayD<f32>,
    prob: &ArrayD<f32>,
    scale: f32,
    threshold: f32,
) -> Vec<Candidate> {
    let (rows, cols) = (prob.shape()[2], prob.shape()[3]);
    let mut out = Vec::new();
    for y in 0..rows {
        for x in 0..cols {
            let score = prob[[0, 1, y, x]];
            if score < threshold {
                continue;
            }
            let (fx, fy) = (x as f32, y as f32);
            out.push(Candidate {
                rect: [
                    ((PNET_STRIDE * fx + 1.0) / scale).floor(),
                    ((PNET_STRIDE * fy + 1.0) / scale).floor(),
                    ((PNET_STRIDE * fx + PNET_CELL) / scale).floor(),
                    ((PNET_STRIDE * fy + PNET_CELL) / scale).floor(),
                ],
                score,
                reg: [
                    reg[[0, 0, y, x]],
                    reg[[0, 1, y, x]],
                    reg[[0, 2, y, x]],
                    reg[[0, 3, y, x]],
                ],
            });
        }
    }
    out
}

/// Keeps the candidates NMS keeps, highest score first.
fn suppress(candidates: Vec<Candidate>, threshold: f32, kind: Overlap) -> Vec<Candidate> {
    let rects: Vec<[f32; 4]> = candidates.iter().map(|c| c.rect).collect();
    let scores: Vec<f32> = candidates.iter().map(|c| c.score).collect();
    nms(&rects, &scores, threshold, kind)
        .into_iter()
        .map(|i| candidates[i])
        .collect()
}

/// Replaces each candidate's score and regression with a net's output, keeping those with
/// `prob > threshold` (strictly, unlike P-Net's `≥`), paired with their row in the batch.
fn rescore(
    candidates: Vec<Candidate>,
    prob: &ArrayD<f32>,
    reg: &ArrayD<f32>,
    threshold: f32,
) -> Vec<(Candidate, usize)> {
    candidates
        .into_iter()
        .enumerate()
        .filter_map(|(row, c)| {
            let score = prob[[row, 1]];
            (score > threshold).then(|| {
                let reg = [reg[[row, 0]], reg[[row, 1]], reg[[row, 2]], reg[[row, 3]]];
                (Candidate { score, reg, ..c }, row)
            })
        })
        .collect()
}

/// Box regression: each edge moves by its offset times the box width or height.
fn regress(rect: [f32; 4], reg: [f32; 4], w: f32, h: f32) -> [f32; 4] {
    [
        rect[0] + reg[0] * w,
        rect[1] + reg[1] * h,
        rect[2] + reg[2] * w,
        rect[3] + reg[3] * h,
    ]
}

/// The reference `bbreg`, used after R-Net and O-Net: widths are `x2 − x1 + 1`.
fn regress_plus_one(rect: [f32; 4], reg: [f32; 4]) -> [f32; 4] {
    regress(rect, reg, rect[2] - rect[0] + 1.0, rect[3] - rect[1] + 1.0)
}

/// The reference `rerec`: a square of side `max(w, h)` (w = x2 − x1) on the same centre.
fn square(rect: [f32; 4]) -> [f32; 4] {
    let (w, h) = (rect[2] - rect[0], rect[3] - rect[1]);
    let side = w.max(h);
    let x1 = rect[0] + w * 0.5 - side * 0.5;
    let y1 = rect[1] + h * 0.5 - side * 0.5;
    [x1, y1, x1 + side, y1 + side]
}

/// The pixel rectangle a candidate is cropped from, as the reference `pad` computes it:
/// coordinates truncated toward zero, clipped to `[1, w] × [1, h]` (no zero padding), then
/// MATLAB-style 1-based: the crop is rows `y−1 .. ey`, columns `x−1 .. ex`. `None` when empty.
fn crop_region(rect: [f32; 4], width: u32, height: u32) -> Option<Region> {
    let x = (rect[0].trunc() as i64).max(1);
    let y = (rect[1].trunc() as i64).max(1);
    let ex = (rect[2].trunc() as i64).min(i64::from(width));
    let ey = (rect[3].trunc() as i64).min(i64::from(height));
    (ex > x - 1 && ey > y - 1).then(|| Region {
        x: (x - 1) as usize,
        y: (y - 1) as usize,
        width: (ex - x + 1) as usize,
        height: (ey - y + 1) as usize,
    })
}

/// Crops every candidate, area-resizes it to `size × size` and stacks the crops into one
/// batch. Candidates whose crop is empty (entirely outside the image) are dropped.
fn crops(
    image: &RgbImage,
    candidates: Vec<Candidate>,
    size: usize,
) -> (Vec<Candidate>, Array4<f32>) {
    let regions: Vec<(Candidate, Region)> = candidates
        .into_iter()
        .filter_map(|c| crop_region(c.rect, image.width(), image.height()).map(|r| (c, r)))
        .collect();
    let mut batch = Array4::<f32>::zeros((regions.len(), 3, size, size));
    for (mut slot, (_, region)) in batch.outer_iter_mut().zip(&regions) {
        area_resize_normalised(
            image,
            *region,
            size,
            size,
            slot.as_slice_mut().expect("standard layout"),
        );
    }
    (regions.into_iter().map(|(c, _)| c).collect(), batch)
}

/// Square windows of 100%, 85% and 70% of the shorter side, each at the 3×3 positions from
/// one corner to the other ([`Mtcnn::best_window`]); duplicates (a side that spans the image)
/// are left out.
fn window_grid(width: f32, height: f32) -> Vec<[f32; 4]> {
    let mut windows: Vec<[f32; 4]> = Vec::new();
    for fraction in [1.0, 0.85, 0.7] {
        let side = width.min(height) * fraction;
        for fy in [0.0, 0.5, 1.0] {
            for fx in [0.0, 0.5, 1.0] {
                let (x, y) = ((width - side) * fx, (height - side) * fy);
                let rect = [x, y, x + side, y + side];
                if !windows.contains(&rect) {
                    windows.push(rect);
                }
            }
        }
    }
    windows
}

/// Landmarks from O-Net's output row (x1..x5 then y1..y5, relative to the box) on the box
/// before regression: `px = (x2 − x1 + 1)·lx + x1 − 1`.
fn onet_landmarks(rect: [f32; 4], row: &[f32]) -> Landmarks {
    let (w, h) = (rect[2] - rect[0] + 1.0, rect[3] - rect[1] + 1.0);
    std::array::from_fn(|i| [w * row[i] + rect[0] - 1.0, h * row[i + 5] + rect[1] - 1.0])
}

fn to_box(rect: [f32; 4]) -> FaceBox {
    FaceBox {
        x1: rect[0],
        y1: rect[1],
        x2: rect[2],
        y2: rect[3],
    }
}

/// Maps a face found on a scaled, bordered copy back to the original's pixels: scale by
/// `factor`, then remove the border `offset`.
fn map_back(face: &mut Face, factor: f32, offset: f32) {
    if factor == 1.0 && offset == 0.0 {
        return;
    }
    let b = face.bbox.scaled(factor);
    face.bbox = FaceBox {
        x1: b.x1 - offset,
        y1: b.y1 - offset,
        x2: b.x2 - offset,
        y2: b.y2 - offset,
    };
    for point in &mut face.landmarks {
        point[0] = point[0] * factor - offset;
        point[1] = point[1] * factor - offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_grid_covers_the_image_without_duplicates() {
        let square = window_grid(100.0, 100.0);
        assert_eq!(square.len(), 1 + 9 + 9);
        assert_eq!(square[0], [0.0, 0.0, 100.0, 100.0]);
        let tall = window_grid(100.0, 160.0);
        assert_eq!(tall.len(), 3 + 9 + 9);
        assert!(tall.iter().all(|r| r[2] <= 100.0 && r[3] <= 160.0));
    }

    #[test]
    fn square_keeps_the_centre_and_takes_the_longer_side() {
        assert_eq!(square([0.0, 0.0, 10.0, 20.0]), [-5.0, 0.0, 15.0, 20.0]);
    }

    #[test]
    fn crop_region_clips_to_the_image_with_one_based_offsets() {
        let r = crop_region([-3.7, 2.9, 50.2, 120.0], 40, 100).unwrap();
        assert_eq!(
            r,
            Region {
                x: 0,
                y: 1,
                width: 40,
                height: 99
            }
        );
        assert_eq!(crop_region([-30.0, 0.0, -5.0, 10.0], 40, 100), None);
    }

    #[test]
    fn landmarks_use_the_plus_one_box_size_minus_one_offset() {
        let row = [0.5, 0.0, 0.0, 0.0, 0.0, 0.25, 0.0, 0.0, 0.0, 0.0];
        let points = onet_landmarks([10.0, 20.0, 29.0, 59.0], &row);
        assert_eq!(points[0], [19.0, 29.0]);
    }

    #[test]
    fn pnet_cell_maps_to_the_reference_box() {
        let prob = ArrayD::from_shape_vec(vec![1, 2, 1, 2], vec![0.0, 0.0, 0.1, 0.9]).unwrap();
        let reg = ArrayD::zeros(vec![1, 4, 1, 2]);
        let c = pnet_candidates(&reg, &prob, 0.5, 0.6);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].rect, [6.0, 2.0, 28.0, 24.0]);
    }
}
