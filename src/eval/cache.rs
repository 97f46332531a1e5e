//! Embeddings of evaluation images, computed with carivis's own detection and alignment and
//! cached per model checksum, face settings and image sha256, so a second run is fast. The
//! cache is one JSON file per (model, settings), replaced atomically (temporary file, fsync,
//! rename): an interrupted run leaves the previous cache intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::EvalError;
use crate::capture::load_image;
use crate::pipeline::still::StillFaces;
use crate::runtime::sha256_hex;
use crate::types::{Embedding, Face, RgbImage};

/// New records between two saves of the cache during a run.
const SAVE_EVERY: usize = 1000;

/// What the evaluation knows about one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceRecord {
    /// Whether the detector found a face (else the whole image was embedded).
    pub detected: bool,
    /// The largest face's embedding, or the whole image's.
    pub embedding: Embedding,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    settings: String,
    records: HashMap<String, FaceRecord>,
}

/// The default cache folder: `$CARIVIS_CACHE`, else `$XDG_CACHE_HOME/carivis/eval`, else
/// `~/.cache/carivis/eval`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARIVIS_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("carivis").join("eval")
}

/// Cached face records of one model with one set of face settings.
pub struct EmbeddingCache {
    path: PathBuf,
    file: CacheFile,
}

impl EmbeddingCache {
    /// Opens (or starts) the cache in `dir` for the model with checksum `model_sha256` and the
    /// detection/alignment `settings` (any text that changes when the chips would).
    pub fn open(dir: &Path, model_sha256: &str, settings: &str) -> Result<Self, EvalError> {
        let name = format!(
            "{:.16}-{:.16}.json",
            model_sha256,
            sha256_hex(settings.as_bytes())
        );
        let path = dir.join(name);
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<CacheFile>(&bytes)
                .ok()
                .filter(|f| f.settings == settings)
                .unwrap_or_else(|| {
                    tracing::warn!(
                        "{}: unreadable or foreign cache, starting anew",
                        path.display()
                    );
                    CacheFile::empty(settings)
                }),
            Err(_) => CacheFile::empty(settings),
        };
        Ok(Self { path, file })
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record of the image with this sha256.
    pub fn get(&self, sha256: &str) -> Option<&FaceRecord> {
        self.file.records.get(sha256)
    }

    fn insert(&mut self, sha256: String, record: FaceRecord) {
        self.file.records.insert(sha256, record);
    }

    /// Writes the cache atomically.
    pub fn save(&self) -> Result<(), EvalError> {
        let io = |source| EvalError::Io {
            path: self.path.clone(),
            source,
        };
        let json = serde_json::to_vec(&self.file).map_err(|e| io(e.into()))?;
        crate::files::write_atomic(&self.path, &json).map_err(io)
    }
}

impl CacheFile {
    fn empty(settings: &str) -> Self {
        Self {
            settings: settings.to_string(),
            records: HashMap::new(),
        }
    }
}

/// The outcome for each image of [`embed_images`].
pub type ImageOutcome = Result<FaceRecord, String>;

/// Counts of one [`embed_images`] run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct EmbedCounts {
    /// Images found in the cache.
    pub cached: usize,
    /// Images embedded now.
    pub computed: usize,
    /// Images that could not be read.
    pub failed: usize,
}

/// The largest face of an image, or the whole image when no face is found.
pub fn face_record(faces: &mut StillFaces, image: &RgbImage) -> Result<FaceRecord, String> {
    let found = faces.faces(image).map_err(|e| e.to_string())?;
    if let Some(face) = found.into_iter().next() {
        return Ok(FaceRecord {
            detected: true,
            embedding: face.embedding,
        });
    }
    let embedding = faces
        .embed_box(image, Face::covering(image).bbox)
        .map_err(|e| e.to_string())?;
    Ok(FaceRecord {
        detected: false,
        embedding,
    })
}

/// sha256 of every image's bytes (an error message for unreadable files).
fn hash_images(images: &[PathBuf]) -> Vec<Result<String, String>> {
    images
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(|b| sha256_hex(&b))
                .map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect()
}

/// Face records of `images`, in order: from the cache, or computed by the `workers` (one
/// thread each) and added to the cache, which is saved every [`SAVE_EVERY`] new records and at
/// the end. `bar` advances once per image.
pub fn embed_images(
    workers: Vec<StillFaces>,
    images: &[PathBuf],
    cache: &mut EmbeddingCache,
    bar: &ProgressBar,
) -> Result<(Vec<ImageOutcome>, EmbedCounts), EvalError> {
    let hashes = hash_images(images);
    let mut outcomes: Vec<Option<ImageOutcome>> = hashes
        .iter()
        .map(|h| match h {
            Ok(sha) => cache.get(sha).cloned().map(Ok),
            Err(e) => Some(Err(e.clone())),
        })
        .collect();
    let todo: Vec<usize> = (0..images.len())
        .filter(|&i| outcomes[i].is_none())
        .collect();
    let mut counts = EmbedCounts {
        cached: images.len() - todo.len(),
        ..EmbedCounts::default()
    };
    bar.inc(counts.cached as u64);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = crossbeam_channel::bounded::<(usize, ImageOutcome)>(64);
    std::thread::scope(|scope| -> Result<(), EvalError> {
        for mut faces in workers {
            let (tx, next, todo) = (tx.clone(), &next, &todo);
            scope.spawn(move || {
                while let Some(&i) =
                    todo.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    let outcome = load_image(&images[i])
                        .map_err(|e| e.to_string())
                        .and_then(|image| face_record(&mut faces, &image))
                        .map_err(|e| format!("{}: {e}", images[i].display()));
                    if tx.send((i, outcome)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for (i, outcome) in rx {
            if let (Ok(record), Ok(sha)) = (&outcome, &hashes[i]) {
                cache.insert(sha.clone(), record.clone());
                counts.computed += 1;
                if counts.computed.is_multiple_of(SAVE_EVERY) {
                    cache.save()?;
                }
            }
            outcomes[i] = Some(outcome);
            bar.inc(1);
        }
        Ok(())
    })?;
    if counts.computed > 0 {
        cache.save()?;
    }
    let outcomes: Vec<ImageOutcome> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err("not processed".into())))
        .collect();
    counts.failed = outcomes.iter().filter(|o| o.is_err()).count();
    Ok((outcomes, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trips_and_ignores_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        let record = FaceRecord {
            detected: false,
            embedding: Embedding {
                shared: vec![1.0, 0.0],
                photo: None,
                caricature: None,
            },
        };
        let mut cache = EmbeddingCache::open(dir.path(), "abc", "five-point").unwrap();
        cache.insert("f00d".into(), record.clone());
        cache.save().unwrap();
        let again = EmbeddingCache::open(dir.path(), "abc", "five-point").unwrap();
        assert_eq!(again.get("f00d"), Some(&record));
        let other = EmbeddingCache::open(dir.path(), "abc", "crop").unwrap();
        assert_eq!(other.get("f00d"), None);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left behind");
    }
}
