//! Helpers shared by the integration tests: the real data, the models, the runtime.

#![allow(dead_code)]

pub mod pg;

use std::path::{Path, PathBuf};

use carivis::align::AlignMode;
use carivis::detect::{DetectorConfig, Mtcnn, Passes, RetryConfig};
use carivis::embed::{DLIB_SPEC, Embedder};
use carivis::pipeline::still::{FaceSearch, Fallback, StillFaces};
use carivis::runtime::{Device, Runtime, RuntimeConfig};

/// Environment variable that turns every skipped test into a failure (`.ci/run` sets it to 1),
/// so that a run without the data or the tools cannot pass silently.
pub const REQUIRE_DATA_ENV: &str = "CARIVIS_REQUIRE_DATA";

/// Reports that `test` cannot run because of `reason`: prints `SKIPPED <test>: <reason>`, so the
/// caller can return, or panics when `CARIVIS_REQUIRE_DATA=1`.
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os(REQUIRE_DATA_ENV).is_some_and(|v| v == "1") {
        panic!("{test} cannot run: {reason}; {REQUIRE_DATA_ENV}=1 forbids skipping it");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// The shared face data (`../shared/data` from the project root, or `$CARIVIS_DATA`), or
/// `None` after [`skip`] explained why the calling test does not run.
pub fn data_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CARIVIS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.join("manifest.csv").is_file() {
        Some(dir)
    } else {
        skip(
            test,
            &format!(
                "face data not found at {} (set CARIVIS_DATA)",
                dir.display()
            ),
        );
        None
    }
}

/// dlib's aligned astronaut chip (150×150, one face filling it), committed under
/// `tests/golden/`: the one-face image for tests that must run without the shared data.
pub fn astronaut_chip() -> PathBuf {
    repo_file("tests/golden/dlib_astronaut_chip.png")
}

/// The committed models folder.
pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// A file under the repository root.
pub fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A CPU runtime with one thread per session.
pub fn cpu_runtime() -> Runtime {
    Runtime::init(RuntimeConfig {
        device: Device::Cpu,
        intra_threads: 1,
    })
    .expect("ONNX Runtime loads (run scripts/setup)")
}

/// Sends SIGINT (what Ctrl-C sends) to a child process.
pub fn interrupt(child: &std::process::Child) {
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The face search before the retry passes (first pass only, the whole image as the
/// fallback): what the figures of the older tests were measured with.
pub fn first_pass_only() -> FaceSearch {
    FaceSearch {
        retry: RetryConfig {
            passes: Passes::First,
            ..RetryConfig::default()
        },
        fallback: Fallback::WholeImage,
    }
}

/// Detector (largest face only, with a grey `border`, first pass only), five-point aligner and
/// the dlib embedder, on the CPU.
pub fn still_faces(border: f32) -> StillFaces {
    still_faces_with(border, DLIB_SPEC.file, first_pass_only())
}

/// As [`still_faces`], with the embedding model `model` from the models folder and the face
/// search `search`.
pub fn still_faces_with(border: f32, model: &str, search: FaceSearch) -> StillFaces {
    let runtime = cpu_runtime();
    let config = DetectorConfig {
        largest_only: true,
        border,
        ..DetectorConfig::default()
    };
    let detector = Mtcnn::open(&runtime, &models_dir(), config).unwrap();
    let embedder = Embedder::open(&runtime, &models_dir().join(model), 8).unwrap();
    StillFaces::new(detector, search, AlignMode::FivePoint, embedder).unwrap()
}

/// Verification settings for a CaVI pair file under `data`: 4 folds, TAR at FAR 1%, the
/// automatic branch.
pub fn cavi_pairs_input(data: &Path, pairs_file: PathBuf) -> carivis::eval::VerifyInput {
    carivis::eval::VerifyInput {
        pairs_file,
        root: data.join("cavi"),
        format: None,
        folds: 4,
        fars: vec![0.01],
        branch: carivis::eval::BranchChoice::Auto,
    }
}

/// Border that lets MTCNN's first pass find the face filling the astronaut chip.
pub const CHIP_BORDER: &str = "0.1";

/// `carivis gallery add` of `copies` copies of the astronaut chip as `modality` of `name`, into
/// `gallery` (a folder or a database URL).
pub fn add_chip(
    gallery: impl AsRef<std::ffi::OsStr>,
    name: &str,
    modality: &str,
    copies: usize,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_carivis"));
    command
        .args([
            "gallery",
            "add",
            "--border",
            CHIP_BORDER,
            "--modality",
            modality,
        ])
        .args(["--name", name])
        .arg(gallery)
        .args(vec![astronaut_chip(); copies]);
    command
}

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A metric's value in a Prometheus scrape: the first line starting with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
