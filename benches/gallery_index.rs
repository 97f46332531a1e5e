//! HNSW against exact search on a gallery of every CaVI image (~11k entries): build time, query
//! time, top-1 agreement and recall@5. Embeddings are computed once (detect → align → embed,
//! the largest face, or the whole image when no face is found) and cached in
//! `target/bench-cache/` by model checksum. Needs the shared face data (skips without it).

use std::path::{Path, PathBuf};
use std::time::Instant;

use carivis::align::AlignMode;
use carivis::capture::load_image;
use carivis::detect::{DetectorConfig, Mtcnn};
use carivis::embed::{DLIB_SPEC, Embedder};
use carivis::gallery::index::{HnswParams, Index};
use carivis::pipeline::still::{FaceSearch, StillFaces};
use carivis::runtime::{Device, Runtime, RuntimeConfig};

fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CARIVIS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    dir.join("manifest.csv").is_file().then_some(dir)
}

fn cavi_images(data: &Path) -> Vec<PathBuf> {
    let manifest = std::fs::read_to_string(data.join("manifest.csv")).unwrap();
    manifest
        .lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            (fields[0].starts_with("cavi/")
                && matches!(fields.get(2), Some(&"photo" | &"caricature")))
            .then(|| data.join(fields[0]))
        })
        .collect()
}

fn still_faces() -> StillFaces {
    let runtime = Runtime::init(RuntimeConfig {
        device: Device::Cpu,
        intra_threads: 2,
    })
    .expect("ONNX Runtime");
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let detector = Mtcnn::open(
        &runtime,
        &models,
        DetectorConfig {
            largest_only: true,
            ..DetectorConfig::default()
        },
    )
    .unwrap();
    let embedder = Embedder::open(&runtime, &models.join(DLIB_SPEC.file), 8).unwrap();
    StillFaces::new(
        detector,
        FaceSearch::default(),
        AlignMode::FivePoint,
        embedder,
    )
    .unwrap()
}

/// Unit embeddings of every image, from the cache or computed now.
fn embeddings(images: &[PathBuf]) -> Vec<Vec<f32>> {
    let mut faces = still_faces();
    let sha = faces.model_id().sha256;
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "target/bench-cache/cavi-{:.16}-{}.f32",
        sha,
        images.len()
    ));
    if let Ok(bytes) = std::fs::read(&cache) {
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        return floats.chunks_exact(128).map(<[f32]>::to_vec).collect();
    }
    eprintln!(
        "embedding {} CaVI images once (cached in {})",
        images.len(),
        cache.display()
    );
    let bar = indicatif::ProgressBar::new(images.len() as u64);
    let mut missed = 0;
    let vectors: Vec<Vec<f32>> = images
        .iter()
        .map(|path| {
            bar.inc(1);
            let image = load_image(path).unwrap();
            let (embedding, pass) = faces.subject(&image).unwrap();
            missed += usize::from(pass.is_none());
            embedding.shared
        })
        .collect();
    bar.finish_and_clear();
    eprintln!("no face found in {missed} images (fallback chip used)");
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    let bytes: Vec<u8> = vectors
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write(&cache, bytes).unwrap();
    vectors
}

fn main() {
    let Some(data) = data_dir() else {
        eprintln!("SKIPPED gallery_index benchmark: face data not found (set CARIVIS_DATA)");
        return;
    };
    let images = cavi_images(&data);
    let vectors = embeddings(&images);
    let params = HnswParams::default();
    let started = Instant::now();
    let index = Index::build(vectors.clone(), params);
    let build = started.elapsed();
    let (mut agree, mut recall, mut hnsw_time, mut exact_time) = (0usize, 0usize, 0f64, 0f64);
    for (row, query) in vectors.iter().enumerate() {
        let t = Instant::now();
        let approx: Vec<usize> = index
            .search(query, 6)
            .into_iter()
            .map(|h| h.row)
            .filter(|&r| r != row)
            .take(5)
            .collect();
        hnsw_time += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let exact: Vec<usize> = index
            .exact_search(query, 6)
            .into_iter()
            .map(|h| h.row)
            .filter(|&r| r != row)
            .take(5)
            .collect();
        exact_time += t.elapsed().as_secs_f64();
        agree += usize::from(approx.first() == exact.first());
        recall += approx.iter().filter(|r| exact.contains(r)).count();
    }
    let n = vectors.len();
    println!("gallery of {n} CaVI entries, HNSW {params:?}");
    println!("build: {:.2} s", build.as_secs_f64());
    println!(
        "query: HNSW {:.1} µs, exact {:.1} µs (mean over {n} queries, k = 6)",
        hnsw_time / n as f64 * 1e6,
        exact_time / n as f64 * 1e6
    );
    println!(
        "top-1 (excluding the query itself) same as exact: {agree}/{n} = {:.4}",
        agree as f64 / n as f64
    );
    println!("recall@5: {:.4}", recall as f64 / (5 * n) as f64);
}
