//! The committed models: where the models folder is and which files the stages expect in it.

use std::path::PathBuf;

use crate::runtime::ModelSpec;
use crate::{detect, embed};

/// Environment variable that overrides the models folder.
pub const MODELS_ENV: &str = "CARIVIS_MODELS";

/// The models folder: `$CARIVIS_MODELS`, else `models/` next to the executable, else the
/// checkout's `models/`.
pub fn default_models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(MODELS_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("models")))
        .filter(|d| d.is_dir());
    beside_exe.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// `models/SHA256SUMS`, compiled in: the checksum of every committed model.
const SHA256SUMS: &str = include_str!("../models/SHA256SUMS");

/// The sha256 (lower-case hex) of the committed model `file`, from `models/SHA256SUMS`; `None`
/// for a file that is not a committed model.
pub fn shipped_sha256(file: &str) -> Option<&'static str> {
    SHA256SUMS.lines().find_map(|line| {
        let (sum, name) = line.split_once("  ")?;
        (name == file).then_some(sum)
    })
}

/// Every committed model, in data-path order (the pipeline runs MTCNN and one embedder).
pub const SHIPPED: [ModelSpec; 5] = [
    detect::PNET_SPEC,
    detect::RNET_SPEC,
    detect::ONET_SPEC,
    embed::DLIB_SPEC,
    embed::MULTI_TASK_SPEC,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_model_has_a_checksum_and_other_files_none() {
        for spec in SHIPPED {
            let sum = shipped_sha256(spec.file).unwrap_or_else(|| panic!("{}", spec.file));
            assert_eq!(sum.len(), 64, "{}", spec.file);
        }
        assert_eq!(shipped_sha256("renamed.onnx"), None);
    }
}
