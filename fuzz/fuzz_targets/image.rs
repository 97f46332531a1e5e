//! Still-image bytes through `decode_image`, the decoder `load_image` uses (format sniffing,
//! size checks, OpenCV decoding, conversion to RGB).

#![no_main]

use std::path::Path;

use carivis::capture::{MAX_IMAGE_PIXELS, decode_image};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = decode_image(data, Path::new("fuzz.img")) {
        let pixels = u64::from(image.width()) * u64::from(image.height());
        assert!(pixels > 0 && pixels <= MAX_IMAGE_PIXELS);
    }
});
