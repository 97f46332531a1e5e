//! A gallery folder through `Gallery::open_unchecked` (`store::load`: gallery.json, the
//! embeddings file it names, their checks) and, when it opens, building its indexes.
//!
//! Input: the gallery.json text, a NUL byte, the embeddings file's bytes. A checksum is out of
//! the fuzzer's reach, so when the JSON names an embeddings file and a checksum, the gallery is
//! opened a second time with the checksum replaced by the bytes' real one.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use carivis::gallery::Gallery;
use carivis::gallery::store::MANIFEST_FILE;
use libfuzzer_sys::fuzz_target;

/// The folder written to, one per fuzzing process.
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("carivis-fuzz-gallery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Empties the folder, writes the files, opens the gallery.
fn open(json: &[u8], embeddings: Option<(&str, &[u8])>) {
    let dir = dir();
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    std::fs::write(dir.join(MANIFEST_FILE), json).unwrap();
    if let Some((name, bytes)) = embeddings {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    if let Ok(gallery) = Gallery::open_unchecked(dir) {
        gallery.entries();
        gallery.build_indexes();
    }
}

/// The embeddings file name, when it is one the loader could accept (and not the manifest).
fn embeddings_name(manifest: &serde_json::Value) -> Option<&str> {
    let name = manifest.pointer("/embeddings/file")?.as_str()?;
    let plain = !name.is_empty()
        && name.len() < 100
        && !name.contains(['/', '\\', '\0'])
        && !name.starts_with('.')
        && name != MANIFEST_FILE;
    plain.then_some(name)
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (json, embeddings) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let Ok(mut manifest) = serde_json::from_slice::<serde_json::Value>(json) else {
        open(json, None);
        return;
    };
    let Some(name) = embeddings_name(&manifest).map(str::to_owned) else {
        open(json, None);
        return;
    };
    open(json, Some((&name, embeddings)));
    if let Some(sha) = manifest.pointer_mut("/embeddings/sha256") {
        *sha = carivis::runtime::sha256_hex(embeddings).into();
        let fixed = serde_json::to_vec(&manifest).unwrap();
        open(&fixed, Some((&name, embeddings)));
    }
});
