//! ONNX Runtime: finding the library, the one process-wide environment, sessions and the
//! choice of execution provider.
//!
//! `ort` is built with `load-dynamic`: nothing is downloaded at build time and the C library is
//! found at run time (see [`library_candidates`]). `ort` itself panics when the library is
//! missing, so every load goes through [`Runtime::init`], which turns that into a
//! [`RuntimeError`] that tells the user how to get the library.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::files::sha256_hex;
use ndarray::{ArrayD, ArrayView4};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

/// The ONNX Runtime release this build is pinned to (the library `scripts/setup` fetches).
pub const ORT_VERSION: &str = "1.26.0";

/// File name of the ONNX Runtime C library on Linux.
const LIBRARY_FILE: &str = "libonnxruntime.so";

/// Which execution provider the user asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// CUDA when this build and machine support it, otherwise CPU (logged either way).
    #[default]
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA, or fail with an error saying why it is unavailable.
    Cuda,
}

/// The execution provider a model actually runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// ONNX Runtime's default CPU provider.
    Cpu,
    /// ONNX Runtime's CUDA provider.
    Cuda,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
        })
    }
}

/// How sessions are created: device and thread counts.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Requested execution provider.
    pub device: Device,
    /// Intra-op threads per session. One, with spinning off, gave the steadiest latency when
    /// several pipeline stages share two cores.
    pub intra_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            device: Device::Auto,
            intra_threads: 1,
        }
    }
}

/// Everything that can go wrong between finding ONNX Runtime and running a model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No ONNX Runtime library in any of the places searched.
    #[error(
        "ONNX Runtime library not found (looked for {searched}).\n  \
         Run `scripts/setup` to fetch ONNX Runtime {ORT_VERSION} into third_party/onnxruntime/lib/, \
         or set ORT_DYLIB_PATH to a {LIBRARY_FILE} of version {ORT_VERSION}"
    )]
    LibraryNotFound {
        /// The paths tried, joined for display.
        searched: String,
    },
    /// The library exists but could not be loaded (wrong file, wrong version, missing dependency).
    #[error("cannot load the ONNX Runtime library {path}: {reason}")]
    LibraryLoad {
        /// The library file.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// Creating the ONNX Runtime environment failed.
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(String),
    /// The model file is not there.
    #[error("model file {0} does not exist (models ship in the repository's models/ folder)")]
    ModelMissing(PathBuf),
    /// The model file could not be read.
    #[error("cannot read model file {path}: {source}")]
    ModelRead {
        /// The model file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// ONNX Runtime rejected the file: truncated, corrupt, or not ONNX.
    #[error("model file {path} is not a valid ONNX model (truncated or corrupt?): {reason}")]
    ModelInvalid {
        /// The model file.
        path: PathBuf,
        /// What ONNX Runtime said.
        reason: String,
    },
    /// The model loads but its inputs or outputs are not what the caller needs.
    #[error("model file {path} has the wrong interface: {reason}")]
    ModelContract {
        /// The model file.
        path: PathBuf,
        /// Which input/output differs, and how.
        reason: String,
    },
    /// `--device cuda` was asked for and cannot be honoured.
    #[error("CUDA was requested but cannot be used: {0}")]
    CudaUnavailable(String),
    /// A run failed.
    #[error("inference with {path} failed: {reason}")]
    Inference {
        /// The model file.
        path: PathBuf,
        /// What ONNX Runtime said.
        reason: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, RuntimeError>;

/// Where the ONNX Runtime library is looked for, in order: `ORT_DYLIB_PATH` (when set, only
/// there), next to the executable, then the checkout's `third_party/` (the GPU build first in
/// builds with the `cuda` feature).
pub fn library_candidates() -> Vec<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(path)];
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(LIBRARY_FILE));
    }
    let third_party = Path::new(env!("CARGO_MANIFEST_DIR")).join("third_party");
    if cfg!(feature = "cuda") {
        candidates.push(third_party.join("onnxruntime-gpu/lib").join(LIBRARY_FILE));
    }
    candidates.push(third_party.join("onnxruntime/lib").join(LIBRARY_FILE));
    candidates
}

/// The first candidate library that exists, or the error listing all of them.
pub fn find_library() -> Result<PathBuf> {
    let candidates = library_candidates();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| RuntimeError::LibraryNotFound {
            searched: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The process-wide environment and the library it was loaded from. ONNX Runtime allows one
/// environment per process, so every [`Runtime`] shares it.
struct Loaded {
    environment: ort::environment::Environment,
    library: PathBuf,
}

/// Why loading failed, kept so that later calls in the same process report the same error.
#[derive(Clone, Debug)]
enum LoadFailure {
    Library { path: PathBuf, reason: String },
    Environment(String),
}

impl From<&LoadFailure> for RuntimeError {
    fn from(failure: &LoadFailure) -> Self {
        match failure.clone() {
            LoadFailure::Library { path, reason } => RuntimeError::LibraryLoad { path, reason },
            LoadFailure::Environment(reason) => RuntimeError::Environment(reason),
        }
    }
}

static LOADED: OnceLock<std::result::Result<Loaded, LoadFailure>> = OnceLock::new();

fn load_environment() -> Result<&'static Loaded> {
    let library = find_library()?;
    let loaded = LOADED.get_or_init(|| {
        let builder = ort::init_from(&library).map_err(|e| LoadFailure::Library {
            path: library.clone(),
            reason: e.to_string(),
        })?;
        let environment = builder
            .with_name("carivis")
            .with_telemetry(false)
            .build()
            .map_err(|e| LoadFailure::Environment(e.to_string()))?;
        Ok(Loaded {
            environment,
            library,
        })
    });
    loaded.as_ref().map_err(RuntimeError::from)
}

/// A handle to ONNX Runtime with a session configuration; cheap to clone, one per process is
/// enough but several (e.g. with different thread counts) are fine.
#[derive(Clone)]
pub struct Runtime {
    environment: ort::environment::Environment,
    library: PathBuf,
    config: RuntimeConfig,
}

impl Runtime {
    /// Loads ONNX Runtime (once per process) and returns a handle that makes sessions with
    /// `config`.
    pub fn init(config: RuntimeConfig) -> Result<Self> {
        let loaded = load_environment()?;
        if config.device == Device::Cuda && !cfg!(feature = "cuda") {
            return Err(RuntimeError::CudaUnavailable(
                "this carivis was built without the `cuda` feature; rebuild with \
                 `cargo build --release --features cuda` and run `scripts/setup --cuda`"
                    .into(),
            ));
        }
        Ok(Self {
            environment: loaded.environment.clone(),
            library: loaded.library.clone(),
            config,
        })
    }

    /// The ONNX Runtime library file in use.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The configuration sessions are made with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Opens a model file as a session on the configured device.
    pub fn open(&self, path: &Path) -> Result<Model> {
        let bytes = read_model(path)?;
        let sha256 = sha256_hex(&bytes);
        let (session, provider) = self.session_on_device(path, &bytes)?;
        tracing::info!(model = %path.display(), %provider, "model loaded");
        Ok(Model {
            session,
            path: path.to_path_buf(),
            sha256,
            provider,
        })
    }

    fn session_on_device(&self, path: &Path, bytes: &[u8]) -> Result<(Session, Provider)> {
        match self.config.device {
            Device::Cpu => Ok((self.session(path, bytes, false)?, Provider::Cpu)),
            Device::Cuda => self
                .session(path, bytes, true)
                .map(|s| (s, Provider::Cuda))
                .map_err(|e| match e {
                    RuntimeError::ModelInvalid { reason, .. } | RuntimeError::CudaUnavailable(reason) => {
                        RuntimeError::CudaUnavailable(format!(
                            "{reason} (ONNX Runtime library {}; a GPU build needs onnxruntime-gpu: \
                             `scripts/setup --cuda`, or ORT_DYLIB_PATH, with CUDA and cuDNN libraries on the library path)",
                            self.library.display()
                        ))
                    }
                    other => other,
                }),
            Device::Auto if cfg!(feature = "cuda") => match self.session(path, bytes, true) {
                Ok(session) => Ok((session, Provider::Cuda)),
                Err(e) => {
                    tracing::warn!("CUDA unavailable, running on CPU: {e}");
                    Ok((self.session(path, bytes, false)?, Provider::Cpu))
                }
            },
            Device::Auto => {
                tracing::debug!("built without the `cuda` feature: running on CPU");
                Ok((self.session(path, bytes, false)?, Provider::Cpu))
            }
        }
    }

    fn session(&self, path: &Path, bytes: &[u8], cuda: bool) -> Result<Session> {
        let invalid = |reason: String| RuntimeError::ModelInvalid {
            path: path.to_path_buf(),
            reason,
        };
        let builder = Session::builder(&self.environment)
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
            .and_then(|b| Ok(b.with_intra_threads(self.config.intra_threads)?))
            .and_then(|b| Ok(b.with_inter_threads(1)?))
            .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
            .map_err(|e| invalid(e.to_string()))?;
        let mut builder = if cuda { with_cuda(builder)? } else { builder };
        builder
            .commit_from_memory(bytes)
            .map_err(|e| invalid(e.to_string()))
    }
}

#[cfg(feature = "cuda")]
fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder> {
    builder
        .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
        .map_err(|e| RuntimeError::CudaUnavailable(e.to_string()))
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    _: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder> {
    Err(RuntimeError::CudaUnavailable(
        "this carivis was built without the `cuda` feature".into(),
    ))
}

fn read_model(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => RuntimeError::ModelMissing(path.to_path_buf()),
        _ => RuntimeError::ModelRead {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Name and shape of one model input or output; `-1` marks a dynamic dimension.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TensorInfo {
    /// Input or output name.
    pub name: String,
    /// Dimensions, `-1` where dynamic.
    pub shape: Vec<i64>,
}

impl fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|&d| {
                if d < 0 {
                    "?".to_string()
                } else {
                    d.to_string()
                }
            })
            .collect();
        write!(f, "{} [{}]", self.name, dims.join("×"))
    }
}

/// What a stage needs of a model: one float image input and named outputs.
#[derive(Clone, Copy, Debug)]
pub struct ModelSpec {
    /// Model file name inside the models folder.
    pub file: &'static str,
    /// Input name.
    pub input: &'static str,
    /// Input dimensions (N, C, H, W); `-1` where the model must accept any size.
    pub input_shape: [i64; 4],
    /// Output names the stage reads.
    pub outputs: &'static [&'static str],
}

impl ModelSpec {
    /// A zero input of the spec's shape, with batch 1 and 48 px for any dynamic side: enough
    /// to prove the model runs.
    pub fn probe_input(&self) -> ndarray::Array4<f32> {
        let [n, c, h, w] = self.input_shape.map(|d| d.max(0) as usize);
        ndarray::Array4::zeros((
            n.max(1),
            c.max(1),
            if h == 0 { 48 } else { h },
            if w == 0 { 48 } else { w },
        ))
    }
}

/// What `carivis models check` reports for one model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelReport {
    /// The model file.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// Its inputs.
    pub inputs: Vec<TensorInfo>,
    /// Its outputs.
    pub outputs: Vec<TensorInfo>,
    /// The provider it ran on.
    pub provider: Provider,
    /// Time of one inference on the probe input, in milliseconds.
    pub run_ms: f64,
}

/// Opens the model `spec` names in `models_dir`, checks its interface and runs it once.
pub fn check_model(runtime: &Runtime, models_dir: &Path, spec: &ModelSpec) -> Result<ModelReport> {
    let mut model = runtime.open(&models_dir.join(spec.file))?;
    model.check(spec)?;
    let input = spec.probe_input();
    let started = std::time::Instant::now();
    let outputs = model.run(spec.input, input.view())?;
    let run_ms = started.elapsed().as_secs_f64() * 1e3;
    if let Some((name, _)) = outputs
        .iter()
        .find(|(_, v)| v.iter().any(|x| !x.is_finite()))
    {
        return Err(RuntimeError::Inference {
            path: model.path().to_path_buf(),
            reason: format!("output `{name}` has non-finite values"),
        });
    }
    Ok(ModelReport {
        path: model.path().to_path_buf(),
        sha256: model.sha256().to_string(),
        inputs: model.inputs(),
        outputs: model.outputs(),
        provider: model.provider(),
        run_ms,
    })
}

/// An open model: its session, file, checksum and the provider it runs on. `run` takes
/// `&mut self`, so each worker thread owns its own `Model`.
pub struct Model {
    session: Session,
    path: PathBuf,
    sha256: String,
    provider: Provider,
}

impl Model {
    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// sha256 of the model file, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The execution provider the session runs on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The model's inputs.
    pub fn inputs(&self) -> Vec<TensorInfo> {
        self.session.inputs().iter().map(tensor_info).collect()
    }

    /// The model's outputs.
    pub fn outputs(&self) -> Vec<TensorInfo> {
        self.session.outputs().iter().map(tensor_info).collect()
    }

    /// Checks that the model has the input and outputs `spec` names, with compatible shapes.
    pub fn check(&self, spec: &ModelSpec) -> Result<()> {
        let contract = |reason: String| RuntimeError::ModelContract {
            path: self.path.clone(),
            reason,
        };
        let inputs = self.inputs();
        let input = inputs
            .iter()
            .find(|i| i.name == spec.input)
            .ok_or_else(|| {
                contract(format!(
                    "no input named `{}` (it has {})",
                    spec.input,
                    list(&inputs)
                ))
            })?;
        let compatible = input.shape.len() == spec.input_shape.len()
            && input
                .shape
                .iter()
                .zip(spec.input_shape)
                .all(|(&have, want)| want < 0 || have == want);
        if !compatible {
            let want = TensorInfo {
                name: spec.input.into(),
                shape: spec.input_shape.to_vec(),
            };
            return Err(contract(format!("input is {input}, expected {want}")));
        }
        let outputs = self.outputs();
        for name in spec.outputs {
            if !outputs.iter().any(|o| o.name == *name) {
                return Err(contract(format!(
                    "no output named `{name}` (it has {})",
                    list(&outputs)
                )));
            }
        }
        Ok(())
    }

    /// Runs the model on one float NCHW input and returns every output by name.
    pub fn run(
        &mut self,
        input_name: &str,
        input: ArrayView4<'_, f32>,
    ) -> Result<HashMap<String, ArrayD<f32>>> {
        let failed = |reason: String| RuntimeError::Inference {
            path: self.path.clone(),
            reason,
        };
        let tensor = TensorRef::from_array_view(input).map_err(|e| failed(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![input_name => tensor])
            .map_err(|e| failed(e.to_string()))?;
        let mut by_name = HashMap::new();
        for (name, value) in outputs.iter() {
            let array = value
                .try_extract_array::<f32>()
                .map_err(|e| failed(format!("output `{name}`: {e}")))?;
            by_name.insert(name.to_string(), array.to_owned());
        }
        Ok(by_name)
    }
}

fn tensor_info(outlet: &ort::value::Outlet) -> TensorInfo {
    TensorInfo {
        name: outlet.name().to_string(),
        shape: outlet
            .dtype()
            .tensor_shape()
            .map(|s| s.to_vec())
            .unwrap_or_default(),
    }
}

fn list(infos: &[TensorInfo]) -> String {
    infos
        .iter()
        .map(|i| format!("`{}`", i.name))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_info_shows_dynamic_dimensions_as_question_marks() {
        let info = TensorInfo {
            name: "input".into(),
            shape: vec![-1, 3, 24, 24],
        };
        assert_eq!(info.to_string(), "input [?×3×24×24]");
    }
}
