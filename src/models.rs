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

/// Every committed model, in data-path order (the pipeline runs MTCNN and one embedder).
pub const SHIPPED: [ModelSpec; 5] = [
    detect::PNET_SPEC,
    detect::RNET_SPEC,
    detect::ONET_SPEC,
    embed::DLIB_SPEC,
    embed::MULTI_TASK_SPEC,
];
