//! Embedding throughput (faces/s) at batch 1, 8 and 32, against the same ONNX model run through
//! ONNX Runtime's Python API in the same run (`scripts/bench_embed_python.py`, in the model
//! scripts' virtualenv; that side is skipped with a message when the virtualenv is missing).
//! The chips are the aligned faces of real images. `CARIVIS_BENCH_DEVICE=cuda` (in a build with
//! `--features cuda`) measures the CUDA provider instead; the Python side always uses the CPU.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use carivis::embed::{DLIB_SPEC, Embedder};
use carivis::runtime::{Device, Runtime, RuntimeConfig};
use carivis::types::RgbImage;

const BATCHES: [usize; 3] = [1, 8, 32];
const FACES: usize = 256;
const THREADS: usize = 1;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_faces_per_second(runtime: &Runtime, chips: &[RgbImage], batch: usize) -> f64 {
    let mut embedder =
        match Embedder::open(runtime, &root().join("models").join(DLIB_SPEC.file), batch) {
            Ok(embedder) => embedder,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        };
    let stack: Vec<RgbImage> = (0..batch).map(|i| chips[i % chips.len()].clone()).collect();
    embedder.embed(&stack).unwrap();
    let started = Instant::now();
    let mut done = 0;
    while done < FACES {
        embedder.embed(&stack).unwrap();
        done += batch;
    }
    done as f64 / started.elapsed().as_secs_f64()
}

fn python_faces_per_second(chip_files: &[String]) -> Option<Vec<f64>> {
    let python = root().join("scripts/.venv/bin/python");
    if !python.is_file() {
        eprintln!(
            "SKIPPED Python side: {} missing (python3 -m venv scripts/.venv && scripts/.venv/bin/pip install -r scripts/requirements.txt)",
            python.display()
        );
        return None;
    }
    let batches = BATCHES.map(|b| b.to_string()).join(",");
    let out = Command::new(python)
        .arg(root().join("scripts/bench_embed_python.py"))
        .args([
            "--model",
            root().join("models").join(DLIB_SPEC.file).to_str().unwrap(),
        ])
        .args([
            "--batches",
            &batches,
            "--faces",
            &FACES.to_string(),
            "--threads",
            &THREADS.to_string(),
            "--chips",
        ])
        .args(chip_files)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rates: Vec<f64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["faces_per_s"].as_f64())
        .collect();
    (rates.len() == BATCHES.len()).then_some(rates)
}

fn main() {
    let chip_files = vec![
        root()
            .join("tests/golden/dlib_astronaut_chip.png")
            .display()
            .to_string(),
    ];
    let chips: Vec<RgbImage> = chip_files
        .iter()
        .map(|f| image::open(f).unwrap().to_rgb8())
        .collect();
    let device = match std::env::var("CARIVIS_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda,
        _ => Device::Cpu,
    };
    let runtime = match Runtime::init(RuntimeConfig {
        device,
        intra_threads: THREADS,
    }) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let rust: Vec<f64> = BATCHES
        .iter()
        .map(|&b| rust_faces_per_second(&runtime, &chips, b))
        .collect();
    let python = if device == Device::Cpu {
        python_faces_per_second(&chip_files)
    } else {
        None
    };
    println!(
        "embedding throughput, dlib descriptor, device {device:?}, {THREADS} intra-op thread(s), {FACES} faces per batch size"
    );
    for (i, batch) in BATCHES.iter().enumerate() {
        match &python {
            Some(py) => println!(
                "batch {batch:>2}: carivis {:7.1} faces/s, Python ORT {:7.1} faces/s, ratio {:.3}",
                rust[i],
                py[i],
                rust[i] / py[i]
            ),
            None => println!("batch {batch:>2}: carivis {:7.1} faces/s", rust[i]),
        }
    }
}
