//! Training of the multi-task photo/caricature model (Ming, Burie & Luqman, IJDAR 2021, on
//! carivis's own stages): a frozen trunk (dlib's descriptor network up to its 256-channel
//! level) whose maps are cached, three trainable branches (shared, photo, caricature) each
//! starting as a copy of dlib's last block, softmax + centre loss per task, and task weights
//! from a small unit trained so that the hardest task gets the most weight. The result is
//! exported as one ONNX model the pipeline runs.

pub mod data;
pub mod features;
pub mod loss;
pub mod net;
pub mod onnx;
pub mod optim;
pub mod report;
pub mod trainer;

use std::path::{Path, PathBuf};

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The training data is unusable.
    #[error("{0}")]
    Data(String),
    /// A model file is not what the trainer needs.
    #[error("{path}: {reason}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The detector or the trunk could not be started.
    #[error("{0}")]
    Setup(String),
    /// A tensor operation failed (a bug or an exhausted resource).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A checkpoint cannot be used.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A report or plot could not be written.
    #[error("{0}")]
    Report(String),
}

/// Writes a file atomically ([`crate::files::write_atomic`]), creating its folder.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    crate::files::write_atomic(path, bytes).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A small seeded generator (SplitMix64) so that splits, initialisation, shuffles and dropout
/// are reproducible from `--seed` alone.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_roughly_uniform() {
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        assert_eq!(a.next_u64(), b.next_u64());
        let mean = (0..10_000).map(|_| a.uniform()).sum::<f32>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let mut v: Vec<u32> = (0..50).collect();
        a.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }

    #[test]
    fn atomic_write_creates_the_folder_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/file.bin");
        write_atomically(&path, b"abc").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
