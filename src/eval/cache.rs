//! Embeddings of evaluation images, computed with carivis's own detection and alignment by the
//! job runner ([`crate::jobs`]) and cached per model checksum, face settings and image sha256,
//! so a second run is fast. The cache is one JSON file per (model, settings), replaced
//! atomically (temporary file, fsync, rename): an interrupted run leaves the previous cache
//! intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::detect::Pass;
use crate::jobs::{CacheError, JobCache, Outcome, Worker, cache_key};
use crate::pipeline::still::{StillError, StillFaces};
use crate::types::{Embedding, RgbImage};

/// New records between two saves of the cache during a run.
const SAVE_EVERY: usize = 1000;

/// What the evaluation knows about one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceRecord {
    /// The detection pass that found the face; `None`: the fallback chip was embedded.
    pub pass: Option<Pass>,
    /// The largest face's embedding, or the fallback chip's.
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
    unsaved: usize,
}

impl EmbeddingCache {
    /// Opens (or starts) the cache in `dir` for the model with checksum `model_sha256` and the
    /// detection/alignment `settings` (any text that changes when the chips would).
    pub fn open(dir: &Path, model_sha256: &str, settings: &str) -> Self {
        let path = dir.join(format!("{}.json", cache_key(model_sha256, settings)));
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
        Self {
            path,
            file,
            unsaved: 0,
        }
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the cache atomically.
    pub fn save(&mut self) -> Result<(), CacheError> {
        let io = |source| CacheError {
            path: self.path.clone(),
            source,
        };
        let json = serde_json::to_vec(&self.file).map_err(|e| io(e.into()))?;
        crate::files::write_atomic(&self.path, &json).map_err(io)?;
        self.unsaved = 0;
        Ok(())
    }
}

impl JobCache<FaceRecord> for EmbeddingCache {
    fn get(&self, sha256: &str) -> Option<FaceRecord> {
        self.file.records.get(sha256).cloned()
    }

    /// Adds a record; the cache is saved every [`SAVE_EVERY`] new records.
    fn put(&mut self, sha256: &str, record: &FaceRecord) -> Result<(), CacheError> {
        self.file.records.insert(sha256.to_string(), record.clone());
        self.unsaved += 1;
        if self.unsaved >= SAVE_EVERY {
            self.save()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), CacheError> {
        if self.unsaved > 0 {
            self.save()?;
        }
        Ok(())
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

/// The outcome for each image of an evaluation's embedding run.
pub type ImageOutcome = Outcome<FaceRecord, StillError>;

/// Embeds each image's subject (largest face, else the fallback chip) for the job runner.
pub struct SubjectEmbedder(pub StillFaces);

impl Worker for SubjectEmbedder {
    type Output = FaceRecord;
    type Error = StillError;

    fn process(&mut self, image: &RgbImage) -> Result<FaceRecord, StillError> {
        let (embedding, pass) = self.0.subject(image)?;
        Ok(FaceRecord { pass, embedding })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trips_and_ignores_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        let record = FaceRecord {
            pass: Some(Pass::Rotated(-20)),
            embedding: Embedding {
                shared: vec![1.0, 0.0],
                photo: None,
                caricature: None,
            },
        };
        let mut cache = EmbeddingCache::open(dir.path(), "abc", "five-point");
        cache.put("f00d", &record).unwrap();
        cache.flush().unwrap();
        let again = EmbeddingCache::open(dir.path(), "abc", "five-point");
        assert_eq!(again.get("f00d"), Some(record));
        let other = EmbeddingCache::open(dir.path(), "abc", "crop");
        assert_eq!(other.get("f00d"), None);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left behind");
    }
}
