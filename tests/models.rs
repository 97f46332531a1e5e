//! The committed models: checksums, golden outputs against the source frameworks, and the
//! errors users see when a model or ONNX Runtime is missing or broken.

mod common;

use std::process::Command;

use carivis::detect::{DetectError, DetectorConfig, Mtcnn};
use carivis::embed::{DLIB_SPEC, Embedder};
use carivis::files::sha256_hex;
use carivis::models::SHIPPED;
use carivis::runtime::RuntimeError;
use common::{cpu_runtime, max_abs_diff, models_dir, repo_file};
use ndarray::{Array4, ArrayD};
use serde_json::Value;

/// Tolerance for model outputs against the framework that made the reference.
const GOLDEN_TOLERANCE: f32 = 1e-4;

fn expected_checksums() -> Vec<(String, String)> {
    let sums = std::fs::read_to_string(models_dir().join("SHA256SUMS")).expect("models/SHA256SUMS");
    sums.lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(sum, file)| (file.to_string(), sum.to_string()))
        .collect()
}

#[test]
fn every_shipped_model_matches_its_recorded_checksum_and_readme() {
    let sums = expected_checksums();
    let readme = std::fs::read_to_string(models_dir().join("README.md")).expect("models/README.md");
    for spec in &SHIPPED {
        let (_, sum) = sums
            .iter()
            .find(|(f, _)| f == spec.file)
            .unwrap_or_else(|| panic!("{} not in SHA256SUMS", spec.file));
        let bytes = std::fs::read(models_dir().join(spec.file)).unwrap();
        assert_eq!(&sha256_hex(&bytes), sum, "{} changed", spec.file);
        assert!(
            readme.contains(sum.as_str()),
            "models/README.md does not give the sha256 of {}",
            spec.file
        );
    }
}

#[test]
fn every_shipped_model_loads_checks_and_runs() {
    let runtime = cpu_runtime();
    for spec in &SHIPPED {
        let report = carivis::runtime::check_model(&runtime, &models_dir(), spec).unwrap();
        assert!(!report.outputs.is_empty());
    }
}

fn tensor(value: &Value) -> (Vec<usize>, Vec<f32>) {
    let shape = value["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = value["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (shape, data)
}

#[test]
fn mtcnn_nets_match_torch_on_real_crops() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("tests/golden/mtcnn_nets.json")).unwrap(),
    )
    .unwrap();
    let runtime = cpu_runtime();
    for (net, file) in [
        ("pnet", "mtcnn_pnet.onnx"),
        ("rnet", "mtcnn_rnet.onnx"),
        ("onet", "mtcnn_onet.onnx"),
    ] {
        let entry = &golden[net];
        let shape: Vec<usize> = entry["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let data: Vec<f32> = entry["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let input = Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data).unwrap();
        let mut model = runtime.open(&models_dir().join(file)).unwrap();
        let outputs = model.run("input", input.view()).unwrap();
        for (name, expected) in entry["outputs"].as_object().unwrap() {
            let (shape, want) = tensor(expected);
            let got: &ArrayD<f32> = &outputs[name];
            assert_eq!(got.shape(), shape.as_slice(), "{net}.{name} shape");
            let diff = max_abs_diff(got.as_slice().unwrap(), &want);
            eprintln!("{net}.{name}: max abs diff vs torch {diff:.2e}");
            assert!(
                diff <= GOLDEN_TOLERANCE,
                "{net}.{name} differs from torch by {diff}"
            );
        }
    }
}

#[test]
fn dlib_descriptor_matches_dlib_on_a_real_chip() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("tests/golden/dlib_reference.json")).unwrap(),
    )
    .unwrap();
    let chip = image::open(repo_file(golden["chip"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let want: Vec<f32> = golden["descriptor"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let runtime = cpu_runtime();
    let mut model = runtime.open(&models_dir().join(DLIB_SPEC.file)).unwrap();
    let mut input = Array4::<f32>::zeros((1, 3, 150, 150));
    for (x, y, px) in chip.enumerate_pixels() {
        for c in 0..3 {
            input[[0, c, y as usize, x as usize]] = f32::from(px[c]);
        }
    }
    let out = model.run("input", input.view()).unwrap();
    let got = out["descriptor"].as_slice().unwrap();
    let diff = max_abs_diff(got, &want);
    eprintln!("dlib descriptor: max abs diff vs dlib {diff:.2e}");
    assert!(
        diff <= GOLDEN_TOLERANCE,
        "descriptor differs from dlib by {diff}"
    );

    let mut embedder = Embedder::open(&runtime, &models_dir().join(DLIB_SPEC.file), 4).unwrap();
    let unit = embedder.embed(&[chip]).unwrap().remove(0).shared;
    let norm: f32 = want.iter().map(|x| x * x).sum::<f32>().sqrt();
    let expected_unit: Vec<f32> = want.iter().map(|x| x / norm).collect();
    assert!(max_abs_diff(&unit, &expected_unit) <= GOLDEN_TOLERANCE);
}

#[test]
fn a_missing_model_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = Mtcnn::open(&cpu_runtime(), dir.path(), DetectorConfig::default())
        .err()
        .unwrap();
    assert!(
        matches!(err, DetectError::Runtime(RuntimeError::ModelMissing(_))),
        "{err}"
    );
    assert!(err.to_string().contains("mtcnn_pnet.onnx"), "{err}");
}

#[test]
fn a_truncated_model_is_reported_as_invalid_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(models_dir().join(DLIB_SPEC.file)).unwrap();
    let path = dir.path().join(DLIB_SPEC.file);
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = cpu_runtime().open(&path).err().unwrap();
    assert!(matches!(err, RuntimeError::ModelInvalid { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_model_with_the_wrong_input_shape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["mtcnn_pnet.onnx", "mtcnn_onet.onnx"] {
        std::fs::copy(models_dir().join(file), dir.path().join(file)).unwrap();
    }
    // O-Net (48×48) where R-Net (24×24) belongs.
    std::fs::copy(
        models_dir().join("mtcnn_onet.onnx"),
        dir.path().join("mtcnn_rnet.onnx"),
    )
    .unwrap();
    let err = Mtcnn::open(&cpu_runtime(), dir.path(), DetectorConfig::default())
        .err()
        .unwrap();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            DetectError::Runtime(RuntimeError::ModelContract { .. })
        ),
        "{message}"
    );
    assert!(
        message.contains("mtcnn_rnet.onnx") && message.contains("24"),
        "{message}"
    );
}

fn carivis(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_carivis"));
    command.args(args);
    command
}

#[test]
fn models_check_passes_on_the_committed_models() {
    let out = carivis(&["models", "check", "--device", "cpu"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for spec in &SHIPPED {
        assert!(stdout.contains(spec.file), "{stdout}");
    }
    assert!(stdout.contains(&format!("all {} models ok", SHIPPED.len())));
}

#[test]
fn a_missing_onnx_runtime_library_gives_one_clear_message() {
    let out = carivis(&["models", "check"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ONNX Runtime library not found"),
        "{stderr}"
    );
    assert!(
        stderr.contains("/nonexistent/libonnxruntime.so") && stderr.contains("scripts/setup"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_broken_onnx_runtime_library_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a library").unwrap();
    let out = carivis(&["models", "check"])
        .env("ORT_DYLIB_PATH", &fake)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot load the ONNX Runtime library")
            && stderr.contains(&fake.display().to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn models_check_fails_on_a_truncated_model() {
    let dir = tempfile::tempdir().unwrap();
    for spec in &SHIPPED {
        std::fs::copy(models_dir().join(spec.file), dir.path().join(spec.file)).unwrap();
    }
    let onet = dir.path().join("mtcnn_onet.onnx");
    let bytes = std::fs::read(&onet).unwrap();
    std::fs::write(&onet, &bytes[..bytes.len() - 100]).unwrap();
    let out = carivis(&["models", "check", "--models", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("mtcnn_onet.onnx") && stdout.contains("FAILED"),
        "{stdout}"
    );
}
