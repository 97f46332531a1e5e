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
pub mod session;
pub mod trainer;

use std::path::{Path, PathBuf};

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The labelled data names no photos or caricatures.
    #[error("{data}: no labelled photos or caricatures")]
    NoImages {
        /// The manifest or folder.
        data: PathBuf,
    },
    /// Listed images are not there.
    #[error("{data}: {missing} of {total} listed images are missing, e.g. {example}")]
    MissingImages {
        /// The manifest or folder.
        data: PathBuf,
        /// How many are missing.
        missing: usize,
        /// How many are listed.
        total: usize,
        /// The first missing one.
        example: PathBuf,
    },
    /// Identification training needs at least two people.
    #[error("{data}: only one person ({person}); identification training needs at least two")]
    OnePerson {
        /// The manifest or folder.
        data: PathBuf,
        /// The one person.
        person: String,
    },
    /// The held-out people leave fewer than two to train on.
    #[error(
        "--holdout-identities {holdout} leaves fewer than two of the {people} people to train on"
    )]
    HoldoutTooLarge {
        /// People held out.
        holdout: usize,
        /// People in the data.
        people: usize,
    },
    /// The exclusions leave fewer than two people.
    #[error("after the exclusions fewer than two people are left to train on ({people})")]
    TooFewPeople {
        /// People left.
        people: usize,
    },
    /// No image named by the pair files is in the data.
    #[error(
        "none of the images named by {pair_files} is in {data}: is it the right protocol for this data?"
    )]
    NothingExcluded {
        /// The pair files, comma-separated.
        pair_files: String,
        /// The manifest or folder.
        data: PathBuf,
    },
    /// A protocol or manifest file is unusable.
    #[error(transparent)]
    Protocol(#[from] crate::eval::protocol::ProtocolError),
    /// No training image gave maps.
    #[error("no training image has a detectable face")]
    NoTrainingFaces,
    /// The validation images cannot choose an epoch.
    #[error(
        "the validation images ({images}) have no same-person and different-person caricature–photo pairs to choose the epoch with: raise --validation-fraction (people need about 1/fraction photos and caricatures each)"
    )]
    NoValidationPairs {
        /// Validation images.
        images: usize,
    },
    /// The output path cannot take a model.
    #[error("{path}: {reason}")]
    BadOutput {
        /// The output path.
        path: PathBuf,
        /// Why not.
        reason: &'static str,
    },
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
    #[error(transparent)]
    Setup(#[from] features::MapError),
    /// The ONNX Runtime library could not be loaded.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The map cache could not be written.
    #[error(transparent)]
    Cache(#[from] crate::jobs::CacheError),
    /// A tensor operation failed (a bug or an exhausted resource).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Validation figures could not be computed.
    #[error(transparent)]
    Metric(#[from] crate::eval::metrics::MetricError),
    /// A checkpoint cannot be used.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A plot could not be drawn.
    #[error("{path}: {source}")]
    Plot {
        /// The plot file.
        path: PathBuf,
        /// What the plotting failed on.
        source: crate::eval::EvalError,
    },
    /// The models folder's README is not text this tool may rewrite.
    #[error("{path}: {reason}; the model's entry was not written")]
    Readme {
        /// The README.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why a checkpoint cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A tensor the network needs is not in the checkpoint.
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    /// A tensor has another shape than the network's.
    #[error(
        "a tensor has shape {found:?}, the network needs {expected:?} (trained with other classes?)"
    )]
    Shape {
        /// The checkpoint's shape.
        found: Vec<usize>,
        /// The network's shape.
        expected: Vec<usize>,
    },
    /// The optimiser state has the wrong number of tensors.
    #[error("optimiser state has {found} tensors, expected {expected}")]
    OptimiserState {
        /// Tensors found.
        found: usize,
        /// Tensors expected.
        expected: usize,
    },
    /// The tensors could not be written as safetensors.
    #[error("cannot serialise the tensors: {0}")]
    Serialise(#[from] safetensors::SafeTensorError),
    /// The tensor file could not be read.
    #[error("{path}: {source}")]
    Tensors {
        /// The tensor file.
        path: PathBuf,
        /// What reading it failed on.
        source: candle_core::Error,
    },
    /// A fresh run would overwrite a checkpoint.
    #[error(
        "{0} holds a checkpoint: `--resume` to go on, or `--restart` to start over and replace it"
    )]
    Exists(PathBuf),
    /// `--resume` without a readable checkpoint.
    #[error("--resume: cannot read {path}: {source}")]
    Unreadable {
        /// The checkpoint description.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The description is not a checkpoint.
    #[error("--resume: {path} is not a checkpoint description: {source}")]
    Malformed {
        /// The checkpoint description.
        path: PathBuf,
        /// What the JSON parser said.
        source: serde_json::Error,
    },
    /// A checkpoint of an older format.
    #[error(
        "--resume: {path} was written by an older carivis-train (checkpoint format {found}, this one reads {expected}); `--restart` starts over"
    )]
    OlderFormat {
        /// The checkpoint description.
        path: PathBuf,
        /// Its format (0 when it names none).
        found: u64,
        /// The format this build reads.
        expected: u64,
    },
    /// The hyper-parameters differ from the checkpoint's.
    #[error(
        "--resume: the hyper-parameters differ from the checkpoint's (only --epochs may change): checkpoint {0}"
    )]
    OptionsDiffer(String),
    /// The data split differs from the checkpoint's.
    #[error(
        "--resume: the data split differs from the checkpoint's (seed, --validation-fraction, --holdout-identities, --exclude-pairs, --no-face): checkpoint {0}"
    )]
    DataDiffers(String),
    /// The checkpoint was trained on other people.
    #[error("--resume: the checkpoint was trained on other people than this data holds")]
    OtherPeople,
    /// The checkpoint was trained on another trunk.
    #[error("--resume: the checkpoint was trained on another trunk model")]
    OtherTrunk,
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
