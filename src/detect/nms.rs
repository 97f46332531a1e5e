//! Non-maximum suppression, in the two variants facenet-pytorch's MTCNN uses.

/// How overlap between two boxes is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlap {
    /// Intersection over union with continuous areas `(x2−x1)·(y2−y1)`
    /// (torchvision's `batched_nms`, used after P-Net and R-Net).
    Union,
    /// Intersection over the smaller area, with MATLAB-style `+1` pixel areas
    /// (facenet-pytorch's `nms_numpy(..., 'Min')`, used after O-Net).
    MinPlusOne,
}

fn overlap(a: &[f32; 4], b: &[f32; 4], kind: Overlap) -> f32 {
    let one = if kind == Overlap::MinPlusOne {
        1.0
    } else {
        0.0
    };
    let area = |r: &[f32; 4]| (r[2] - r[0] + one) * (r[3] - r[1] + one);
    let w = (a[2].min(b[2]) - a[0].max(b[0]) + one).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1]) + one).max(0.0);
    let inter = w * h;
    match kind {
        Overlap::Union => inter / (area(a) + area(b) - inter),
        Overlap::MinPlusOne => inter / area(a).min(area(b)),
    }
}

/// Indices of the boxes kept, highest score first: a box is dropped when its overlap with a
/// higher-scoring kept box is above `threshold`.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], threshold: f32, kind: Overlap) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep
            .iter()
            .all(|&k| overlap(&boxes[k], &boxes[i], kind) <= threshold)
        {
            keep.push(i);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_lower_score_box_is_suppressed() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [20.0, 20.0, 30.0, 30.0],
        ];
        let keep = nms(&boxes, &[0.8, 0.9, 0.7], 0.5, Overlap::Union);
        assert_eq!(keep, vec![1, 2]);
    }

    #[test]
    fn min_overlap_suppresses_a_box_inside_another() {
        let boxes = [[0.0, 0.0, 100.0, 100.0], [10.0, 10.0, 30.0, 30.0]];
        assert_eq!(nms(&boxes, &[0.9, 0.95], 0.7, Overlap::MinPlusOne), vec![1]);
        assert_eq!(nms(&boxes, &[0.9, 0.95], 0.7, Overlap::Union), vec![1, 0]);
    }
}
