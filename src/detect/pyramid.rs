//! The image pyramid and the area-averaging resize MTCNN's reference uses for every input
//! (pyramid levels and the 24×24 / 48×48 candidate crops alike).

use crate::types::RgbImage;

/// MTCNN's input normalisation: `(x − 127.5) / 128` (facenet-pytorch `detect_face`).
pub fn normalise(value: f32) -> f32 {
    (value - 127.5) * 0.0078125
}

/// Pyramid scales as facenet-pytorch computes them: `m·factor^k` with `m = 12 / min_face`,
/// while the scaled shorter side stays ≥ 12 (P-Net's receptive field).
pub fn scales(height: u32, width: u32, min_face: f64, factor: f64) -> Vec<f64> {
    let m = 12.0 / min_face;
    let mut shorter = f64::from(height.min(width)) * m;
    let mut scale = m;
    let mut scales = Vec::new();
    while shorter >= 12.0 {
        scales.push(scale);
        scale *= factor;
        shorter *= factor;
    }
    scales
}

/// Size of a pyramid level: `(int(H·s + 1), int(W·s + 1))`, as in the reference.
pub fn level_size(height: u32, width: u32, scale: f64) -> (usize, usize) {
    (
        (f64::from(height) * scale + 1.0) as usize,
        (f64::from(width) * scale + 1.0) as usize,
    )
}

/// A rectangle of source pixels: columns `x..x+width`, rows `y..y+height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First column.
    pub x: usize,
    /// First row.
    pub y: usize,
    /// Number of columns (> 0).
    pub width: usize,
    /// Number of rows (> 0).
    pub height: usize,
}

impl Region {
    /// The whole image.
    pub fn whole(image: &RgbImage) -> Region {
        Region {
            x: 0,
            y: 0,
            width: image.width() as usize,
            height: image.height() as usize,
        }
    }
}

/// The source span `[start, end)` that output cell `i` of `out` cells averages over `len`
/// input cells (PyTorch's adaptive average pooling, i.e. `interpolate(mode="area")`).
fn span(i: usize, len: usize, out: usize) -> (usize, usize) {
    let start = i * len / out;
    let end = ((i + 1) * len).div_ceil(out);
    (start, end)
}

/// Resizes `region` of `image` to `out_h × out_w` by area averaging, normalises it for MTCNN
/// and writes it channels-first into `dest` (length `3·out_h·out_w`).
///
/// Averaging is done columns first, then rows; the windows are rectangles, so this equals the
/// 2-D mean up to float rounding.
pub fn area_resize_normalised(
    image: &RgbImage,
    region: Region,
    out_h: usize,
    out_w: usize,
    dest: &mut [f32],
) {
    debug_assert_eq!(dest.len(), 3 * out_h * out_w);
    let raw = image.as_raw();
    let stride = image.width() as usize * 3;
    let col_spans: Vec<(usize, usize)> = (0..out_w).map(|i| span(i, region.width, out_w)).collect();
    // Column pass: for every source row of the region, the mean over each output column's span.
    let mut rows = vec![0f32; region.height * out_w * 3];
    for r in 0..region.height {
        let row = &raw[(region.y + r) * stride + region.x * 3..][..region.width * 3];
        for (ox, &(start, end)) in col_spans.iter().enumerate() {
            let mut sum = [0f32; 3];
            for px in row[start * 3..end * 3].chunks_exact(3) {
                sum[0] += f32::from(px[0]);
                sum[1] += f32::from(px[1]);
                sum[2] += f32::from(px[2]);
            }
            let count = (end - start) as f32;
            let cell = &mut rows[(r * out_w + ox) * 3..][..3];
            for c in 0..3 {
                cell[c] = sum[c] / count;
            }
        }
    }
    // Row pass, normalising and writing channels first.
    let plane = out_h * out_w;
    for oy in 0..out_h {
        let (start, end) = span(oy, region.height, out_h);
        let count = (end - start) as f32;
        for ox in 0..out_w {
            let mut sum = [0f32; 3];
            for r in start..end {
                let cell = &rows[(r * out_w + ox) * 3..][..3];
                sum[0] += cell[0];
                sum[1] += cell[1];
                sum[2] += cell[2];
            }
            for c in 0..3 {
                dest[c * plane + oy * out_w + ox] = normalise(sum[c] / count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_stop_when_the_shorter_side_drops_below_twelve() {
        let s = scales(100, 200, 20.0, 0.709);
        assert!((s[0] - 0.6).abs() < 1e-12);
        // 100·0.6 = 60 → 42.5 → 30.2 → 21.4 → 15.2 → 10.8 (stop): five levels.
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn level_size_rounds_like_the_reference() {
        assert_eq!(level_size(512, 512, 0.6), (308, 308));
    }

    #[test]
    fn spans_cover_the_input_like_adaptive_pooling() {
        // 5 → 3: PyTorch windows are [0,2), [1,4), [3,5).
        assert_eq!(
            (0..3).map(|i| span(i, 5, 3)).collect::<Vec<_>>(),
            vec![(0, 2), (1, 4), (3, 5)]
        );
    }

    #[test]
    fn area_resize_averages_blocks_and_normalises() {
        let mut image = RgbImage::new(4, 2);
        for (x, _, px) in image.enumerate_pixels_mut() {
            *px = image::Rgb([if x < 2 { 0 } else { 255 }, 128, 0]);
        }
        let mut out = vec![0f32; 3 * 2];
        area_resize_normalised(&image, Region::whole(&image), 1, 2, &mut out);
        assert_eq!(out[0], normalise(0.0));
        assert_eq!(out[1], normalise(255.0));
        assert_eq!(out[2], normalise(128.0));
        assert_eq!(out[4], normalise(0.0));
    }
}
