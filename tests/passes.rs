//! The retry passes and the fallback chip on real images: tight crops and tilted caricatures
//! that the first pass misses, and images without a face.

mod common;

use std::path::Path;

use carivis::align::AlignMode;
use carivis::capture::load_image;
use carivis::detect::{DetectorConfig, FaceFinder, Mtcnn, Pass, Passes, RetryConfig};
use carivis::pipeline::still::{FaceSearch, Fallback, StillChips};
use carivis::types::{Face, RgbImage};
use common::{cpu_runtime, data_dir, models_dir};

fn finder(passes: Passes) -> FaceFinder {
    let detector = Mtcnn::open(&cpu_runtime(), &models_dir(), DetectorConfig::default()).unwrap();
    let retry = RetryConfig {
        passes,
        ..RetryConfig::default()
    };
    FaceFinder::new(detector, retry).unwrap()
}

fn chips(fallback: Fallback) -> StillChips {
    let detector = Mtcnn::open(&cpu_runtime(), &models_dir(), DetectorConfig::default()).unwrap();
    let search = FaceSearch {
        fallback,
        ..FaceSearch::default()
    };
    StillChips::new(detector, search, AlignMode::FivePoint, 150).unwrap()
}

/// Eyes above the nose, the nose above the mouth corners, every point inside the box: the
/// landmarks were mapped back into the original image's frame, not left in the copy's.
fn assert_landmarks_inside(face: &Face) {
    let b = face.bbox;
    for [x, y] in face.landmarks {
        assert!(
            x >= b.x1 && x <= b.x2 && y >= b.y1 && y <= b.y2,
            "landmark ({x}, {y}) outside the box {b:?}"
        );
    }
    let [left_eye, right_eye, nose, left_mouth, right_mouth] = face.landmarks;
    let eyes = (left_eye[1] + right_eye[1]) / 2.0;
    let mouth = (left_mouth[1] + right_mouth[1]) / 2.0;
    assert!(eyes < nose[1] && nose[1] < mouth, "{:?}", face.landmarks);
}

fn caricature(data: &Path, person: &str, file: &str) -> RgbImage {
    load_image(&data.join("cavi/Caricature").join(person).join(file)).unwrap()
}

#[test]
fn a_tight_crop_the_first_pass_misses_is_found_on_the_padded_copy() {
    let Some(data) = data_dir("a_tight_crop_the_first_pass_misses_is_found_on_the_padded_copy")
    else {
        return;
    };
    let image = caricature(&data, "Bill_Gates", "Bill_Gates_c_11.jpg");
    assert!(finder(Passes::First).find(&image).unwrap().is_empty());
    let found = finder(Passes::All).find(&image).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].pass, Pass::Padded);
    // Measured: box (40.7, 49.1)–(170.5, 222.8) in the 183×240 image, score 0.998.
    let face = found[0].face;
    assert!(face.score > 0.99, "score {}", face.score);
    assert!(face.bbox.width() > 100.0 && face.bbox.x2 <= 183.0 + 5.0);
    assert_landmarks_inside(&face);
}

#[test]
fn a_tilted_caricature_is_found_by_the_rotation_pass() {
    let Some(data) = data_dir("a_tilted_caricature_is_found_by_the_rotation_pass") else {
        return;
    };
    let image = caricature(&data, "Tupac", "Tupac_c_16.jpg");
    assert!(finder(Passes::First).find(&image).unwrap().is_empty());
    let found = finder(Passes::All).find(&image).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        matches!(found[0].pass, Pass::Rotated(-40 | -20)),
        "pass {}",
        found[0].pass
    );
    let face = found[0].face;
    assert!(face.score > 0.95, "score {}", face.score);
    let [left_eye, right_eye, ..] = face.landmarks;
    // Turned back into the image's frame the head is tilted: the eye line is far from level.
    let tilt = (right_eye[1] - left_eye[1])
        .atan2(right_eye[0] - left_eye[0])
        .to_degrees();
    assert!(tilt.abs() > 15.0, "eye line at {tilt:.1}°");
    for [x, y] in face.landmarks {
        assert!((0.0..189.0).contains(&x) && (0.0..240.0).contains(&y));
    }
}

#[test]
fn blank_and_noise_images_give_no_face_and_the_fallback_chip() {
    let blank = RgbImage::from_pixel(200, 240, image::Rgb([200, 200, 200]));
    let mut state = 0x2545_f491_u32;
    let noise = RgbImage::from_fn(200, 240, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
    });
    let mut all = finder(Passes::All);
    for (name, image) in [("blank", &blank), ("noise", &noise)] {
        assert!(all.find(image).unwrap().is_empty(), "{name}: a face found");
        for fallback in [
            Fallback::BestWindow,
            Fallback::CentreSquare,
            Fallback::WholeImage,
        ] {
            let subject = chips(fallback).subject(image).unwrap();
            assert_eq!(subject.pass, None, "{name}");
            assert_eq!(subject.chip.dimensions(), (150, 150), "{name}");
        }
    }
    // The whole-image fallback squares the 200×240 image about its centre: the grey image
    // fills the middle of the chip, the sides beyond its width are black.
    let whole = chips(Fallback::WholeImage).subject(&blank).unwrap().chip;
    assert_eq!(whole.get_pixel(75, 75), &image::Rgb([200, 200, 200]));
    assert_eq!(whole.get_pixel(1, 75), &image::Rgb([0, 0, 0]));
    // The centred square lies inside the image: no black anywhere.
    let square = chips(Fallback::CentreSquare).subject(&blank).unwrap().chip;
    assert!(square.pixels().all(|p| p.0[0] > 150), "black in the chip");
}
