//! Drawing boxes, names, scores and the status line onto frames (OpenCV's drawing functions,
//! working directly on the RGB pixels).

use opencv::core::{Point, Rect, Scalar};
use opencv::imgproc;

use crate::cv::image_as_mat_mut;
use crate::types::{RgbImage, TrackedFace};

/// The word shown, on frames and in human-readable output, for a face nobody in the gallery
/// matches (in JSON such a face's identity is `null`).
pub const UNKNOWN_LABEL: &str = "unknown";

/// Box colour (RGB) of a face whose identity is settled.
const KNOWN: [f64; 3] = [40.0, 200.0, 60.0];
/// Box colour of a face nobody matches.
const STRANGER: [f64; 3] = [220.0, 50.0, 40.0];
/// Box colour while a track is still being decided.
const UNDECIDED: [f64; 3] = [240.0, 200.0, 30.0];

/// The status line: pipeline figures shown in the corner.
#[derive(Clone, Copy, Debug, Default)]
pub struct Status {
    /// Frames per second delivered to the sink.
    pub fps: f64,
    /// Frames dropped so far (live mode).
    pub dropped: u64,
}

fn colour([r, g, b]: [f64; 3]) -> Scalar {
    // The Mat holds RGB pixels, so channels are given in RGB order.
    Scalar::new(r, g, b, 0.0)
}

/// Text OpenCV's Hershey fonts can draw: printable ASCII; anything else becomes `?`.
fn drawable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Draws every face (box, name, similarity) and the status line onto `image`.
pub fn draw(image: &mut RgbImage, faces: &[TrackedFace], status: Status) -> opencv::Result<()> {
    let scale = (f64::from(image.height()) / 720.0).clamp(0.4, 2.0);
    let mut mat = image_as_mat_mut(image)?;
    for face in faces {
        let fill = fill_of(face);
        let b = face.bbox;
        let rect = Rect::new(
            b.x1 as i32,
            b.y1 as i32,
            b.width().max(1.0) as i32,
            b.height().max(1.0) as i32,
        );
        imgproc::rectangle(
            &mut mat,
            rect,
            colour(fill),
            (2.0 * scale).ceil() as i32,
            imgproc::LINE_8,
            0,
        )?;
        let label = drawable(&format!(
            "{} {:.2}",
            face.identity.as_deref().unwrap_or(UNKNOWN_LABEL),
            face.similarity
        ));
        label_above(&mut mat, &label, Point::new(rect.x, rect.y), fill, scale)?;
    }
    let line = format!("{:.1} fps  dropped {}", status.fps, status.dropped);
    label_above(
        &mut mat,
        &line,
        Point::new(4, (28.0 * scale) as i32),
        [0.0, 0.0, 0.0],
        scale,
    )
}

/// Box colour of a face: undecided, a stranger (no identity), or known.
fn fill_of(face: &TrackedFace) -> [f64; 3] {
    match (face.decided, &face.identity) {
        (false, _) => UNDECIDED,
        (true, None) => STRANGER,
        (true, Some(_)) => KNOWN,
    }
}

/// Writes `text` on a filled band whose bottom-left corner is `at`.
fn label_above(
    mat: &mut impl opencv::core::ToInputOutputArray,
    text: &str,
    at: Point,
    fill: [f64; 3],
    scale: f64,
) -> opencv::Result<()> {
    let font = imgproc::FONT_HERSHEY_SIMPLEX;
    let font_scale = 0.6 * scale;
    let thickness = (1.5 * scale).ceil() as i32;
    let mut baseline = 0;
    let size = imgproc::get_text_size(text, font, font_scale, thickness, &mut baseline)?;
    let top = (at.y - size.height - baseline - 4).max(0);
    let band = Rect::new(at.x, top, size.width + 6, size.height + baseline + 4);
    imgproc::rectangle(mat, band, colour(fill), imgproc::FILLED, imgproc::LINE_8, 0)?;
    let origin = Point::new(at.x + 3, top + size.height + 2);
    imgproc::put_text(
        mat,
        text,
        origin,
        font,
        font_scale,
        colour([255.0, 255.0, 255.0]),
        thickness,
        imgproc::LINE_AA,
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FaceBox;

    fn decided_face(identity: Option<&str>) -> TrackedFace {
        TrackedFace {
            track: 1,
            bbox: FaceBox {
                x1: 100.0,
                y1: 80.0,
                x2: 200.0,
                y2: 200.0,
            },
            score: 0.99,
            identity: identity.map(String::from),
            similarity: 0.95,
            matched_modality: None,
            decided: true,
            frame_identity: identity.map(String::from),
            embedded: true,
        }
    }

    #[test]
    fn a_person_named_unknown_is_drawn_as_known_and_nobody_as_a_stranger() {
        assert_eq!(fill_of(&decided_face(Some(UNKNOWN_LABEL))), KNOWN);
        assert_eq!(fill_of(&decided_face(None)), STRANGER);
    }

    #[test]
    fn a_face_box_and_its_label_are_drawn_in_the_track_colour() {
        let mut image = RgbImage::new(320, 240);
        let face = decided_face(Some("ann"));
        draw(
            &mut image,
            &[face],
            Status {
                fps: 12.0,
                dropped: 3,
            },
        )
        .unwrap();
        assert_eq!(
            image.get_pixel(150, 199).0,
            [40, 200, 60],
            "bottom edge of the box"
        );
        assert_eq!(
            image.get_pixel(150, 150).0,
            [0, 0, 0],
            "inside the box stays untouched"
        );
        let label_band = (100..200).any(|x| image.get_pixel(x, 70).0 == [40, 200, 60]);
        assert!(label_band, "label band above the box");
    }

    #[test]
    fn names_outside_ascii_are_drawn_with_placeholders() {
        assert_eq!(drawable("José\n"), "Jos??");
    }
}
