//! Training of the multi-task photo/caricature model (Ming, Burie & Luqman, IJDAR 2021, on
//! carivis's own stages): a frozen trunk (dlib's descriptor network up to its 256-channel
//! level) whose maps are cached, three trainable branches (shared, photo, caricature) each
//! starting as a copy of dlib's last block, softmax + centre loss per task, and task weights
//! from a small unit trained so that the hardest task gets the most weight. The result is
//! exported as one ONNX model the pipeline runs.

pub mod bank;
pub mod data;
pub mod features;
pub mod folds;
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
    /// The held-out and validation people leave fewer than two to train on.
    #[error(
        "holding out {holdout} people (--holdout-identities, --cv-identities, --validation-identities) leaves fewer than two of the {people} people to train on"
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
        "the validation images ({images}) have no same-person and different-person caricature–photo pairs to choose the epoch with: raise --validation-fraction (people need about 1/fraction photos and caricatures each) or --validation-identities (at least two people with both)"
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

#[cfg(test)]
mod tests {
    use super::*;

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
