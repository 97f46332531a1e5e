//! The one cached parallel job runner over still images, shared by evaluation and training:
//! each image is hashed, looked up in a cache keyed by its sha256, and otherwise decoded and
//! handed to one of several workers (one thread each, each owning its models); new results go
//! into the cache. Progress is reported through a callback and Ctrl-C (a stop flag) ends the
//! run early, leaving the images not yet done marked as interrupted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::capture::{ImageError, load_image};
use crate::files::sha256_hex;
use crate::types::RgbImage;

/// Work done on one decoded image by one thread (it owns its models).
pub trait Worker: Send {
    /// What the work produces (and the cache stores).
    type Output: Send;
    /// Why the work failed on one image.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Processes one image.
    fn process(&mut self, image: &RgbImage) -> Result<Self::Output, Self::Error>;
}

/// Results stored by image sha256 between runs.
pub trait JobCache<T> {
    /// The stored result of the image with this sha256, if any.
    fn get(&self, sha256: &str) -> Option<T>;
    /// Stores a new result.
    fn put(&mut self, sha256: &str, value: &T) -> Result<(), CacheError>;
    /// Makes everything stored so far durable (called once at the end of a run).
    fn flush(&mut self) -> Result<(), CacheError> {
        Ok(())
    }
}

/// A cache file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cache {path}: {source}")]
pub struct CacheError {
    /// The cache file.
    pub path: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

/// Why one image has no result.
#[derive(Debug, thiserror::Error)]
pub enum ItemError<E: std::error::Error + 'static> {
    /// The file could not be read (to hash it).
    #[error("{path}: cannot read: {source}")]
    Unreadable {
        /// The image file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a usable image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The worker failed on the image.
    #[error("{path}: {source}")]
    Failed {
        /// The image file.
        path: PathBuf,
        /// The worker's error.
        source: E,
    },
    /// The run was stopped before this image was processed.
    #[error("{path}: interrupted")]
    Interrupted {
        /// The image file.
        path: PathBuf,
    },
}

/// The result for one image of [`run`].
pub type Outcome<T, E> = Result<T, ItemError<E>>;

/// The result for one image of [`run`] with worker `W`.
pub type WorkerOutcome<W> = Outcome<<W as Worker>::Output, <W as Worker>::Error>;

/// What a run is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading files to checksum them ([`hash_files`]).
    Hashing,
    /// Taking results from the cache or computing them ([`run`]).
    Processing,
}

/// Where a run stands, for a progress callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// What is being done.
    pub phase: Phase,
    /// Items done.
    pub done: usize,
    /// Items in all.
    pub total: usize,
}

/// Counts of one [`run`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct JobCounts {
    /// Images found in the cache.
    pub cached: usize,
    /// Images processed now.
    pub computed: usize,
    /// Images without a result (unreadable, undecodable, failed or interrupted).
    pub failed: usize,
}

/// The name of a cache for one model (by checksum) and one description of the settings that
/// change its results: the first 16 hex digits of each.
pub fn cache_key(model_sha256: &str, settings: &str) -> String {
    format!(
        "{:.16}-{:.16}",
        model_sha256,
        sha256_hex(settings.as_bytes())
    )
}

/// sha256 of every file's bytes, in order, reporting progress after each; `None` when `stop`
/// was set before all were hashed.
pub fn hash_files(
    paths: &[PathBuf],
    progress: &dyn Fn(Progress),
    stop: &AtomicBool,
) -> Option<Vec<std::io::Result<String>>> {
    let mut hashes = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        hashes.push(std::fs::read(path).map(|bytes| sha256_hex(&bytes)));
        progress(Progress {
            phase: Phase::Hashing,
            done: i + 1,
            total: paths.len(),
        });
    }
    Some(hashes)
}

/// The result of every image (`hashes[i]` is `paths[i]`'s, from [`hash_files`]), in order:
/// from the cache, or decoded and processed by the `workers` (one thread each) and put into the
/// cache. `progress` is called as images are done; when `stop` is set, the images not yet
/// processed are [`ItemError::Interrupted`]. Only a cache write error ends the run.
pub fn run<W: Worker>(
    paths: &[PathBuf],
    hashes: Vec<std::io::Result<String>>,
    workers: Vec<W>,
    cache: &mut dyn JobCache<W::Output>,
    progress: &dyn Fn(Progress),
    stop: &AtomicBool,
) -> Result<(Vec<WorkerOutcome<W>>, JobCounts), CacheError> {
    let total = paths.len();
    let mut keys: Vec<Option<String>> = Vec::with_capacity(total);
    let mut outcomes: Vec<Option<WorkerOutcome<W>>> = Vec::with_capacity(total);
    for (path, hash) in paths.iter().zip(hashes) {
        let (key, outcome) = match hash {
            Ok(sha) => {
                let cached = cache.get(&sha).map(Ok);
                (Some(sha), cached)
            }
            Err(source) => (
                None,
                Some(Err(ItemError::Unreadable {
                    path: path.clone(),
                    source,
                })),
            ),
        };
        keys.push(key);
        outcomes.push(outcome);
    }
    let todo: Vec<usize> = (0..total).filter(|&i| outcomes[i].is_none()).collect();
    let mut counts = JobCounts {
        cached: outcomes.iter().filter(|o| matches!(o, Some(Ok(_)))).count(),
        ..JobCounts::default()
    };
    let mut done = total - todo.len();
    let report = |done| {
        progress(Progress {
            phase: Phase::Processing,
            done,
            total,
        })
    };
    report(done);
    let next = AtomicUsize::new(0);
    let (tx, rx) = crossbeam_channel::bounded(64);
    std::thread::scope(|scope| -> Result<(), CacheError> {
        for mut worker in workers {
            let (tx, next, todo) = (tx.clone(), &next, &todo);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed)
                    && let Some(&i) = todo.get(next.fetch_add(1, Ordering::Relaxed))
                {
                    if tx.send((i, process(&mut worker, &paths[i]))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for (i, outcome) in rx {
            if let (Ok(value), Some(key)) = (&outcome, &keys[i]) {
                cache.put(key, value)?;
                counts.computed += 1;
            }
            outcomes[i] = Some(outcome);
            done += 1;
            report(done);
        }
        Ok(())
    })?;
    cache.flush()?;
    let outcomes: Vec<WorkerOutcome<W>> = outcomes
        .into_iter()
        .zip(paths)
        .map(|(o, path)| o.unwrap_or_else(|| Err(ItemError::Interrupted { path: path.clone() })))
        .collect();
    counts.failed = outcomes.iter().filter(|o| o.is_err()).count();
    Ok((outcomes, counts))
}

/// Decodes one image and runs the worker on it.
fn process<W: Worker>(worker: &mut W, path: &Path) -> WorkerOutcome<W> {
    let image = load_image(path)?;
    worker.process(&image).map_err(|source| ItemError::Failed {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Reports the image's width, or fails on wide images.
    struct Width;

    #[derive(Debug, thiserror::Error)]
    #[error("too wide")]
    struct TooWide;

    impl Worker for Width {
        type Output = u32;
        type Error = TooWide;
        fn process(&mut self, image: &RgbImage) -> Result<u32, TooWide> {
            if image.width() > 40 {
                return Err(TooWide);
            }
            Ok(image.width())
        }
    }

    #[derive(Default)]
    struct MemoryCache {
        values: HashMap<String, u32>,
        flushed: bool,
    }

    impl JobCache<u32> for MemoryCache {
        fn get(&self, sha256: &str) -> Option<u32> {
            self.values.get(sha256).copied()
        }
        fn put(&mut self, sha256: &str, value: &u32) -> Result<(), CacheError> {
            self.values.insert(sha256.to_string(), *value);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), CacheError> {
            self.flushed = true;
            Ok(())
        }
    }

    fn images(dir: &Path) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for (name, width) in [("a.png", 20), ("b.png", 30), ("wide.png", 50)] {
            let path = dir.join(name);
            RgbImage::new(width, 20).save(&path).unwrap();
            paths.push(path);
        }
        let text = dir.join("text.png");
        std::fs::write(&text, b"not an image").unwrap();
        paths.push(text);
        paths.push(dir.join("missing.png"));
        paths
    }

    #[test]
    fn results_come_in_order_from_the_workers_then_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let paths = images(dir.path());
        let never = AtomicBool::new(false);
        let mut cache = MemoryCache::default();
        let seen = std::sync::Mutex::new(Vec::new());
        let record = |p: Progress| seen.lock().unwrap().push(p.done);
        let hashes = hash_files(&paths, &|_| {}, &never).unwrap();
        let (outcomes, counts) = run(
            &paths,
            hashes,
            vec![Width, Width],
            &mut cache,
            &record,
            &never,
        )
        .unwrap();
        assert_eq!(outcomes[0].as_ref().unwrap(), &20);
        assert_eq!(outcomes[1].as_ref().unwrap(), &30);
        assert!(matches!(outcomes[2], Err(ItemError::Failed { .. })));
        assert!(matches!(outcomes[3], Err(ItemError::Image(_))));
        assert!(matches!(outcomes[4], Err(ItemError::Unreadable { .. })));
        let message = outcomes[2].as_ref().unwrap_err().to_string();
        assert!(
            message.contains("wide.png") && message.contains("too wide"),
            "{message}"
        );
        assert_eq!(
            counts,
            JobCounts {
                cached: 0,
                computed: 2,
                failed: 3
            }
        );
        assert!(cache.flushed);
        assert_eq!(seen.lock().unwrap().last(), Some(&5));
        let hashes = hash_files(&paths, &|_| {}, &never).unwrap();
        let (again, counts) =
            run(&paths, hashes, vec![Width], &mut cache, &|_| {}, &never).unwrap();
        assert_eq!(again[1].as_ref().unwrap(), &30);
        assert_eq!((counts.cached, counts.computed), (2, 0));
    }

    #[test]
    fn a_stopped_run_marks_the_rest_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let paths = images(dir.path());
        let stopped = AtomicBool::new(true);
        assert!(hash_files(&paths, &|_| {}, &stopped).is_none());
        let hashes = hash_files(&paths, &|_| {}, &AtomicBool::new(false)).unwrap();
        let mut cache = MemoryCache::default();
        let (outcomes, _) =
            run(&paths, hashes, vec![Width], &mut cache, &|_| {}, &stopped).unwrap();
        assert!(matches!(outcomes[0], Err(ItemError::Interrupted { .. })));
        assert!(cache.values.is_empty());
    }

    #[test]
    fn cache_keys_depend_on_model_and_settings() {
        let key = cache_key("0123456789abcdef0123", "five-point");
        assert!(key.starts_with("0123456789abcdef-"), "{key}");
        assert_eq!(key.len(), 33);
        assert_ne!(key, cache_key("0123456789abcdef0123", "crop"));
    }
}
