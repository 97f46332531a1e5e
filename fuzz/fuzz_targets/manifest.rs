//! The manifest CSV (`path,identity,modality,…`) through `parse_manifest`, the parser
//! `read_manifest` uses, with and without an `only` prefix.

#![no_main]

use std::path::Path;

use carivis::eval::protocol::parse_manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let csv = Path::new("data/manifest.csv");
    let only = text.get(..3).unwrap_or("");
    for only in [None, Some(only)] {
        if let Ok(images) = parse_manifest(text, csv, only) {
            assert!(images.iter().all(|i| !i.identity.is_empty()));
        }
    }
});
