//! The gallery on disk: `gallery.json` (manifest: model, settings, entries, and the name and
//! checksum of the embeddings file) and `embeddings-<generation>.f32` (little-endian f32 rows).
//!
//! Every change writes a new embeddings file, then a new manifest to a temporary file that is
//! renamed over the old one: a crash at any point leaves either the old or the new gallery,
//! never a mix. Old embeddings files are removed after the switch.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::GalleryError;
use super::index::{HnswParams, MAX_CONNECTIONS};
use super::matching::{Branch, Thresholds};
use crate::types::{Landmarks, Modality};

/// Manifest file name inside a gallery directory.
pub const MANIFEST_FILE: &str = "gallery.json";
/// Lock file held while a gallery is changed.
pub const LOCK_FILE: &str = "gallery.lock";
/// Version of the on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The embedding model a gallery was made with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelId {
    /// Model file name (for messages).
    pub file: String,
    /// sha256 of the model file: what decides compatibility.
    pub sha256: String,
    /// Embedding branches the model produces, in row order (`shared` first).
    pub branches: Vec<String>,
    /// Dimension of each branch.
    pub dim: usize,
}

/// What is wrong with a gallery's model description: anything that would make its rows
/// unreadable or leave a comparison without its branch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelProblem {
    /// A branch name that is not `shared`, `photo` or `caricature`.
    #[error("unknown branch {0:?} (branches are shared, photo and caricature)")]
    UnknownBranch(String),
    /// A branch listed twice.
    #[error("branch {0:?} is listed twice")]
    RepeatedBranch(String),
    /// Neither a single-output model's `["shared"]` nor all three multi-task branches.
    #[error(
        "branches {0:?}: expected [\"shared\"] (one output) or shared, photo and caricature (multi-task)"
    )]
    IncompleteBranches(Vec<String>),
    /// An embedding dimension of 0.
    #[error("embedding dimension is 0")]
    ZeroDimension,
}

impl ModelId {
    /// Checks that the branches and dimension describe rows a gallery can store and compare:
    /// `["shared"]` or the three multi-task branches (any order, each once), and `dim > 0`.
    pub fn validate(&self) -> Result<(), ModelProblem> {
        let mut seen = Vec::with_capacity(self.branches.len());
        for name in &self.branches {
            let branch =
                Branch::from_name(name).ok_or_else(|| ModelProblem::UnknownBranch(name.clone()))?;
            if seen.contains(&branch) {
                return Err(ModelProblem::RepeatedBranch(name.clone()));
            }
            seen.push(branch);
        }
        if seen != [Branch::Shared] && seen.len() != Branch::ALL.len() {
            return Err(ModelProblem::IncompleteBranches(self.branches.clone()));
        }
        if self.dim == 0 {
            return Err(ModelProblem::ZeroDimension);
        }
        Ok(())
    }
}

/// How a face was turned into a chip when it was enrolled (kept so `rebuild` can redo it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enrolment {
    /// Detected; aligned on its five landmarks.
    FivePoint,
    /// A box given by the user (or the whole image); crop-only alignment.
    Box,
}

/// One enrolled face.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Stable id within the gallery.
    pub id: u64,
    /// Display name of the person (any string; never used as a path).
    pub name: String,
    /// Photo or caricature.
    pub modality: Modality,
    /// The image the face came from (absolute path when enrolled).
    pub source: PathBuf,
    /// sha256 of that image file.
    pub source_sha256: String,
    /// Face box in the source image.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// MTCNN landmarks, when detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landmarks: Option<Landmarks>,
    /// How the chip was made.
    pub enrolment: Enrolment,
    /// When the entry was added, seconds since the Unix epoch.
    pub added_unix: u64,
}

/// Matching settings kept with the gallery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Similarity thresholds per direction.
    pub thresholds: Thresholds,
    /// Neighbours fetched per query and modality.
    pub top_k: usize,
    /// Entries of one identity averaged for its score (1 = best entry only).
    pub score_top_n: usize,
    /// HNSW parameters.
    pub hnsw: HnswParams,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            top_k: 20,
            // Best entry per identity: on 88 CaVI caricature probes against 5 photos each of 20
            // people, rank-1 was 0.773 with the best entry, 0.773 with the mean of the top 2 and
            // 0.739 with the mean of the top 3 (tests/gallery.rs, varied by hand).
            score_top_n: 1,
            hnsw: HnswParams::default(),
        }
    }
}

/// Name, size and checksum of the embeddings file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingsFile {
    /// File name inside the gallery directory.
    pub file: String,
    /// Number of rows (one per entry, in entry order).
    pub rows: usize,
    /// sha256 of the file.
    pub sha256: String,
}

impl EmbeddingsFile {
    /// The record of `rows` embeddings not written to a file (yet, or ever: a database
    /// gallery keeps them in its rows).
    pub fn unwritten(rows: usize) -> Self {
        Self {
            file: String::new(),
            rows,
            sha256: String::new(),
        }
    }
}

/// `gallery.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// On-disk format version.
    pub format: u32,
    /// The model that made the embeddings.
    pub model: ModelId,
    /// Matching settings.
    pub settings: Settings,
    /// The embeddings file.
    pub embeddings: EmbeddingsFile,
    /// Generation counter; bumped on every save, names the embeddings file.
    pub generation: u64,
    /// Next entry id.
    pub next_id: u64,
    /// The entries, in the order of the embedding rows.
    pub entries: Vec<Entry>,
}

/// Reads and validates the manifest and the embeddings it names.
pub fn load(dir: &Path) -> Result<(Manifest, Vec<f32>), GalleryError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    if !dir.is_dir() {
        return Err(GalleryError::NotAGallery(dir.to_path_buf()));
    }
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => GalleryError::NotAGallery(dir.to_path_buf()),
        _ => GalleryError::io(&manifest_path, e),
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| GalleryError::Damaged {
        file: manifest_path.clone(),
        reason: e.to_string(),
    })?;
    if manifest.format != FORMAT_VERSION {
        return Err(GalleryError::Damaged {
            file: manifest_path,
            reason: format!(
                "format version {} (this carivis reads {FORMAT_VERSION})",
                manifest.format
            ),
        });
    }
    manifest
        .model
        .validate()
        .map_err(|problem| GalleryError::InvalidModel {
            file: manifest_path.clone(),
            problem,
        })?;
    let max_connections = manifest.settings.hnsw.max_connections;
    if max_connections > MAX_CONNECTIONS {
        return Err(GalleryError::Damaged {
            file: manifest_path,
            reason: format!("hnsw max_connections {max_connections} (at most {MAX_CONNECTIONS})"),
        });
    }
    let vectors = load_embeddings(dir, &manifest)?;
    Ok((manifest, vectors))
}

/// The generation `gallery.json` names now (a cheap check for changes by other processes).
pub fn generation(dir: &Path) -> Result<u64, GalleryError> {
    #[derive(Deserialize)]
    struct Head {
        generation: u64,
    }
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| GalleryError::io(&path, e))?;
    let head: Head = serde_json::from_str(&text).map_err(|e| GalleryError::Damaged {
        file: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(head.generation)
}

/// Floats per row: every branch's vector, concatenated.
pub fn row_len(model: &ModelId) -> usize {
    model.branches.len() * model.dim
}

fn load_embeddings(dir: &Path, manifest: &Manifest) -> Result<Vec<f32>, GalleryError> {
    let file = &manifest.embeddings;
    let path = dir.join(&file.file);
    let damaged = |reason: String| GalleryError::Damaged {
        file: path.clone(),
        reason,
    };
    if file.file.contains('/') || file.file.contains('\\') || file.file.starts_with('.') {
        return Err(damaged(
            "embeddings file name is not a plain file name".into(),
        ));
    }
    if file.rows != manifest.entries.len() {
        return Err(damaged(format!(
            "{} rows for {} entries",
            file.rows,
            manifest.entries.len()
        )));
    }
    let model = &manifest.model;
    let expected = model
        .branches
        .len()
        .checked_mul(model.dim)
        .and_then(|floats| floats.checked_mul(4))
        .and_then(|row_bytes| row_bytes.checked_mul(file.rows))
        .ok_or_else(|| {
            damaged(format!(
                "{} rows of {} branches × {} floats do not fit in memory",
                file.rows,
                model.branches.len(),
                model.dim
            ))
        })?;
    let bytes = std::fs::read(&path).map_err(|e| GalleryError::io(&path, e))?;
    if bytes.len() != expected {
        return Err(damaged(format!(
            "{} bytes, expected {expected} (truncated?)",
            bytes.len()
        )));
    }
    if crate::files::sha256_hex(&bytes) != file.sha256 {
        return Err(damaged("checksum mismatch".into()));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Writes a new generation: embeddings file, then the manifest (atomically), then removes
/// embeddings files of older generations.
pub fn save(dir: &Path, manifest: &mut Manifest, vectors: &[f32]) -> Result<(), GalleryError> {
    manifest.generation += 1;
    let bytes: Vec<u8> = vectors.iter().flat_map(|x| x.to_le_bytes()).collect();
    let name = format!("embeddings-{}.f32", manifest.generation);
    write_atomic(&dir.join(&name), &bytes)?;
    manifest.embeddings = EmbeddingsFile {
        file: name,
        rows: manifest.entries.len(),
        sha256: crate::files::sha256_hex(&bytes),
    };
    let json = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    write_atomic(&dir.join(MANIFEST_FILE), &json)?;
    remove_stale_embeddings(dir, &manifest.embeddings.file);
    Ok(())
}

/// Where a folder gallery keeps the search graph of one branch's vectors of one modality
/// (written on first use by whoever builds it; its header says which vectors it belongs to).
pub fn graph_file(dir: &Path, branch: &str, modality: Modality) -> PathBuf {
    dir.join(format!("graph-{branch}-{modality}.hnsw"))
}

/// Writes `bytes` to `path` atomically ([`crate::files::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), GalleryError> {
    crate::files::write_atomic(path, bytes).map_err(|e| GalleryError::io(path, e))
}

fn remove_stale_embeddings(dir: &Path, current: &str) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_rows =
            name.starts_with("embeddings-") && name.ends_with(".f32") && name != current;
        let stale_tmp = name.starts_with('.') && name.ends_with(".tmp");
        if stale_rows || stale_tmp {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// An exclusive lock on the gallery, released when dropped.
pub struct Lock {
    _file: File,
}

/// How often a waiting writer retries the lock.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Takes the gallery's lock, waiting up to `timeout` (with a warning when it has to wait)
/// while another process holds it.
pub fn lock(dir: &Path, timeout: std::time::Duration) -> Result<Lock, GalleryError> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| GalleryError::io(&path, e))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut warned = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Lock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                if !warned {
                    tracing::warn!(
                        "gallery {} is being changed by another process; waiting up to {:.0} s for it",
                        dir.display(),
                        timeout.as_secs_f64()
                    );
                    warned = true;
                }
                std::thread::sleep(LOCK_POLL);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(GalleryError::Busy {
                    dir: dir.to_path_buf(),
                    waited_s: timeout.as_secs_f64(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(GalleryError::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(branches: &[&str], dim: usize) -> ModelId {
        ModelId {
            file: "m.onnx".into(),
            sha256: "abc".into(),
            branches: branches.iter().map(|b| b.to_string()).collect(),
            dim,
        }
    }

    #[test]
    fn one_shared_branch_or_all_three_are_valid() {
        assert_eq!(model(&["shared"], 128).validate(), Ok(()));
        assert_eq!(
            model(&["shared", "photo", "caricature"], 128).validate(),
            Ok(())
        );
        assert_eq!(
            model(&["caricature", "shared", "photo"], 128).validate(),
            Ok(())
        );
    }

    #[test]
    fn unknown_repeated_missing_branches_and_zero_dimension_are_named() {
        let problem = |branches: &[&str], dim| model(branches, dim).validate().unwrap_err();
        assert_eq!(
            problem(&["shared", "sketch"], 128),
            ModelProblem::UnknownBranch("sketch".into())
        );
        assert_eq!(
            problem(&["shared", "shared"], 128),
            ModelProblem::RepeatedBranch("shared".into())
        );
        assert!(matches!(
            problem(&["shared", "photo"], 128),
            ModelProblem::IncompleteBranches(_)
        ));
        assert!(matches!(
            problem(&["photo"], 128),
            ModelProblem::IncompleteBranches(_)
        ));
        assert!(matches!(
            problem(&[], 128),
            ModelProblem::IncompleteBranches(_)
        ));
        assert_eq!(problem(&["shared"], 0), ModelProblem::ZeroDimension);
    }

    /// A gallery.json with no entries (the embeddings file is empty), like the `gallery` fuzz
    /// target's `seed-empty`; each test replaces `DIM` and `CONNECTIONS`.
    const EMPTY_GALLERY: &str = r#"{"format":1,"model":{"file":"m.onnx","sha256":"ab","branches":["shared"],"dim":DIM},"settings":{"thresholds":{"photo_to_photo":0.5,"photo_to_caricature":0.4,"caricature_to_photo":0.4,"caricature_to_caricature":0.5},"top_k":20,"score_top_n":1,"hnsw":{"max_connections":CONNECTIONS,"ef_construction":200,"ef_search":64}},"embeddings":{"file":"embeddings-1.f32","rows":0,"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},"generation":1,"next_id":1,"entries":[]}"#;

    /// Loads a gallery folder holding `json` and an empty embeddings file.
    fn load_json(json: &str) -> Result<(Manifest, Vec<f32>), GalleryError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), json).unwrap();
        std::fs::write(dir.path().join("embeddings-1.f32"), b"").unwrap();
        load(dir.path())
    }

    #[test]
    fn the_seed_gallery_loads() {
        let json = EMPTY_GALLERY
            .replace("DIM", "4")
            .replace("CONNECTIONS", "16");
        assert!(load_json(&json).is_ok());
    }

    #[test]
    fn a_row_size_that_overflows_is_damage_not_a_panic() {
        let json = EMPTY_GALLERY
            .replace("DIM", "4611686018427387904")
            .replace("CONNECTIONS", "16");
        let err = load_json(&json).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }

    #[test]
    fn too_many_hnsw_connections_are_damage_not_an_exit() {
        let json = EMPTY_GALLERY
            .replace("DIM", "4")
            .replace("CONNECTIONS", "300");
        let err = load_json(&json).unwrap_err();
        assert!(err.to_string().contains("max_connections 300"), "{err}");
    }

    #[test]
    fn a_writer_waits_for_the_lock_and_gives_up_after_its_timeout() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path(), Duration::ZERO).unwrap();
        let started = Instant::now();
        let err = lock(dir.path(), Duration::from_millis(300)).err().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(matches!(err, GalleryError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("--lock-timeout"), "{err}");
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let started = Instant::now();
        lock(dir.path(), Duration::from_secs(10)).unwrap();
        let waited = started.elapsed();
        release.join().unwrap();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
}
