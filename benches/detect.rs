//! Detection time per frame at 640×480 and 1280×720, with one and with five faces, plus the
//! share of time in each cascade stage; and P-Net's pyramid run level by level against one
//! zero-padded batch. Needs the shared face data (skips without it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use carivis::capture::load_image;
use carivis::detect::pyramid::{Region, area_resize_normalised, level_size, scales};
use carivis::detect::{DetectorConfig, Mtcnn, PNET_SPEC};
use carivis::runtime::{Device, Runtime, RuntimeConfig};
use carivis::types::RgbImage;
use criterion::{Criterion, criterion_group, criterion_main};
use ndarray::{Array4, s};

/// Real images: one with a single face, one with five.
const ONE_FACE: &str = "faces/skimage/astronaut.png";
const FIVE_FACES: &str = "faces/dlib_examples/examples/faces/2008_002079.jpg";

fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CARIVIS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    dir.join("manifest.csv").is_file().then_some(dir)
}

/// The image scaled to fit a `width`×`height` frame, centred on black (as a camera frame).
fn framed(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let k = (width as f32 / image.width() as f32).min(height as f32 / image.height() as f32);
    let (w, h) = (
        (image.width() as f32 * k) as u32,
        (image.height() as f32 * k) as u32,
    );
    let scaled = image::imageops::resize(image, w, h, image::imageops::FilterType::Triangle);
    let mut frame = RgbImage::new(width, height);
    image::imageops::overlay(
        &mut frame,
        &scaled,
        i64::from((width - w) / 2),
        i64::from((height - h) / 2),
    );
    frame
}

fn detector() -> Mtcnn {
    let runtime = Runtime::init(RuntimeConfig {
        device: Device::Cpu,
        intra_threads: 1,
    })
    .expect("ONNX Runtime (run scripts/setup)");
    Mtcnn::open(
        &runtime,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
        DetectorConfig::default(),
    )
    .unwrap()
}

fn report_stage_shares(detector: &mut Mtcnn, name: &str, frame: &RgbImage) {
    let (mut pnet, mut rnet, mut onet) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut faces = 0;
    for _ in 0..20 {
        faces = detector.detect(frame).unwrap().len();
        let t = detector.last_times();
        pnet += t.pnet;
        rnet += t.rnet;
        onet += t.onet;
    }
    let total = (pnet + rnet + onet).as_secs_f64();
    eprintln!(
        "{name}: {faces} faces; {:.1} ms/frame; P-Net+pyramid {:.0}%, R-Net {:.0}%, O-Net {:.0}%",
        total / 20.0 * 1e3,
        pnet.as_secs_f64() / total * 100.0,
        rnet.as_secs_f64() / total * 100.0,
        onet.as_secs_f64() / total * 100.0
    );
}

fn bench_detection(c: &mut Criterion) {
    let Some(data) = data_dir() else {
        eprintln!("SKIPPED detection benchmark: face data not found (set CARIVIS_DATA)");
        return;
    };
    let mut detector = detector();
    let mut group = c.benchmark_group("detect");
    group.sample_size(20);
    for (faces, file) in [(1, ONE_FACE), (5, FIVE_FACES)] {
        let image = load_image(&data.join(file)).unwrap();
        for (w, h) in [(640, 480), (1280, 720)] {
            let frame = framed(&image, w, h);
            let name = format!("{w}x{h}_{faces}face");
            report_stage_shares(&mut detector, &name, &frame);
            group.bench_function(&name, |b| b.iter(|| detector.detect(&frame).unwrap()));
        }
    }
    group.finish();
}

/// P-Net over the pyramid of a frame: one run per level (what `Mtcnn` does) against one
/// batched run with every level zero-padded to the largest level's size.
fn bench_pyramid_strategies(c: &mut Criterion) {
    let Some(data) = data_dir() else { return };
    let frame = framed(&load_image(&data.join(ONE_FACE)).unwrap(), 640, 480);
    let runtime = Runtime::init(RuntimeConfig {
        device: Device::Cpu,
        intra_threads: 1,
    })
    .unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut pnet = runtime.open(&models.join(PNET_SPEC.file)).unwrap();
    let levels: Vec<Array4<f32>> = scales(frame.height(), frame.width(), 20.0, 0.709)
        .into_iter()
        .map(|s| {
            let (h, w) = level_size(frame.height(), frame.width(), s);
            let mut level = Array4::<f32>::zeros((1, 3, h, w));
            area_resize_normalised(
                &frame,
                Region::whole(&frame),
                h,
                w,
                level.as_slice_mut().unwrap(),
            );
            level
        })
        .collect();
    let (h, w) = (levels[0].shape()[2], levels[0].shape()[3]);
    let mut padded = Array4::<f32>::zeros((levels.len(), 3, h, w));
    for (i, level) in levels.iter().enumerate() {
        let (lh, lw) = (level.shape()[2], level.shape()[3]);
        padded
            .slice_mut(s![i, .., ..lh, ..lw])
            .assign(&level.slice(s![0, .., .., ..]));
    }
    let mut group = c.benchmark_group("pnet_pyramid_640x480");
    group.sample_size(20);
    group.bench_function(format!("{}_levels_one_run_each", levels.len()), |b| {
        b.iter(|| {
            levels
                .iter()
                .for_each(|l| drop(pnet.run(PNET_SPEC.input, l.view()).unwrap()))
        })
    });
    group.bench_function("one_padded_batch", |b| {
        b.iter(|| pnet.run(PNET_SPEC.input, padded.view()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_detection, bench_pyramid_strategies);
criterion_main!(benches);
