//! Pair files in both formats (CaVI and WebCaricature) through `detect_format` and
//! `parse_pairs`, the parser `read_pairs` uses.

#![no_main]

use carivis::eval::protocol::{PairFormat, detect_format, parse_pairs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    detect_format(text);
    let lines = text.lines().count();
    for format in [PairFormat::Cavi, PairFormat::Webcaricature] {
        match parse_pairs(text, format) {
            Ok(pairs) => assert!(pairs.iter().all(|p| (1..=lines).contains(&p.line))),
            Err((line, _)) => assert!((1..=lines).contains(&line)),
        }
    }
});
