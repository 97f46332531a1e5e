//! The trainer on real models and real images: its block reproduces the dlib descriptor, the
//! exported ONNX reproduces its forward pass, bad input fails with clear messages, and a short
//! real training run writes a model the pipeline opens, its logs and plots, and resumes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use carivis::align::DLIB_TEMPLATE_150;
use carivis::capture::load_image;
use carivis::detect::DetectorConfig;
use carivis::embed::Embedder;
use carivis::embed::{DLIB_SPEC, MULTI_TASK_SPEC};
use carivis::eval::{Faces, verify};
use carivis::rng::Rng;
use carivis::train::bank::{BankSettings, BankWorker};
use carivis::train::features::MapWorker;
use carivis::train::net::{BranchWeights, MapFeatures, TASK_NAMES, embed_maps};
use carivis::train::onnx::{DescriptorModel, encode, read_model, write_model};
use carivis::types::RgbImage;
use common::{
    cpu_runtime, data_dir, first_pass_only, max_abs_diff, models_dir, repo_file, still_faces_with,
};

fn descriptor() -> DescriptorModel {
    let path = models_dir().join("dlib_resnet_v1.onnx");
    DescriptorModel::split(read_model(&path).unwrap(), &path).unwrap()
}

/// dlib's own astronaut chip, its mirror image, and the largest face of a few real photos and
/// caricatures when the shared data is there.
fn real_chips(worker: &mut MapWorker) -> Vec<RgbImage> {
    let chip = load_image(&repo_file("tests/golden/dlib_astronaut_chip.png")).unwrap();
    let mut chips = vec![image::imageops::flip_horizontal(&chip), chip];
    if let Some(data) = data_dir("train::real_chips (extra chips)") {
        for file in [
            "cavi/Real/Aamir_Khan/Aamir_Khan_r_0.jpg",
            "cavi/Caricature/Aamir_Khan/Aamir_Khan_c_1.jpg",
            "faces/face_recognition/examples/obama.jpg",
        ] {
            let image = load_image(&data.join(file)).unwrap();
            if let Some(chip) = worker.chip(&image).unwrap() {
                chips.push(chip);
            }
        }
    }
    chips
}

/// A map worker running the trunk cut from the dlib model, written to `dir`.
fn trunk_worker(descriptor: &DescriptorModel, dir: &Path) -> MapWorker {
    let trunk = dir.join("trunk.onnx");
    std::fs::write(&trunk, encode(&descriptor.trunk())).unwrap();
    MapWorker::open(
        &cpu_runtime(),
        &models_dir(),
        &trunk,
        DetectorConfig::default(),
        first_pass_only(),
        false,
    )
    .unwrap()
}

/// The trainer's embeddings (row-major) of `maps` through a branch with `weights`.
fn branch_embeddings(weights: &BranchWeights, maps: &[MapFeatures]) -> Vec<f32> {
    let refs: Vec<&MapFeatures> = maps.iter().collect();
    embed_maps(weights, &refs, &candle_core::Device::Cpu).unwrap()
}

fn perturbed(weights: &BranchWeights, rng: &mut Rng, scale: f32) -> BranchWeights {
    let mut noisy =
        |v: &[f32]| -> Vec<f32> { v.iter().map(|x| x + rng.normal() * scale).collect() };
    BranchWeights {
        w1: noisy(&weights.w1),
        b1: noisy(&weights.b1),
        w2: noisy(&weights.w2),
        b2: noisy(&weights.b2),
        wfc: noisy(&weights.wfc),
    }
}

/// The dlib model split for training, real chips, their trunk maps, and the pretrained block.
struct RealMaps {
    descriptor: DescriptorModel,
    chips: Vec<RgbImage>,
    maps: Vec<MapFeatures>,
    pretrained: BranchWeights,
}

fn real_maps(dir: &Path) -> RealMaps {
    let descriptor = descriptor();
    let mut worker = trunk_worker(&descriptor, dir);
    let chips = real_chips(&mut worker);
    let maps = worker
        .maps(&chips)
        .unwrap()
        .iter()
        .map(|m| MapFeatures::from_map(m))
        .collect();
    let pretrained = descriptor
        .pretrained_branch(&models_dir().join("dlib_resnet_v1.onnx"))
        .unwrap();
    RealMaps {
        descriptor,
        chips,
        maps,
        pretrained,
    }
}

#[test]
fn pretrained_block_on_trunk_maps_reproduces_the_dlib_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let RealMaps {
        chips,
        maps,
        pretrained,
        ..
    } = real_maps(dir.path());
    let ours = branch_embeddings(&pretrained, &maps);
    let mut dlib =
        Embedder::open(&cpu_runtime(), &models_dir().join("dlib_resnet_v1.onnx"), 8).unwrap();
    let reference: Vec<f32> = dlib
        .embed(&chips)
        .unwrap()
        .into_iter()
        .flat_map(|e| e.shared)
        .collect();
    let diff = max_abs_diff(&ours, &reference);
    eprintln!(
        "{} chips: max |trainer block − dlib descriptor| = {diff:e}",
        chips.len()
    );
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn exported_model_reproduces_the_trainer_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let RealMaps {
        descriptor,
        chips,
        maps,
        pretrained,
    } = real_maps(dir.path());
    let mut rng = Rng::new(5);
    let trained: Vec<BranchWeights> = (0..3)
        .map(|_| perturbed(&pretrained, &mut rng, 0.01))
        .collect();
    let branches: Vec<(&str, &BranchWeights)> = TASK_NAMES.iter().copied().zip(&trained).collect();
    let model = dir.path().join("multitask.onnx");
    write_model(&descriptor.export(&branches), &model).unwrap();
    let mut embedder = Embedder::open(&cpu_runtime(), &model, 8).unwrap();
    assert!(embedder.is_multi_task());
    let exported = embedder.embed(&chips).unwrap();
    for (t, weights) in trained.iter().enumerate() {
        let ours = branch_embeddings(weights, &maps);
        let theirs: Vec<f32> = exported
            .iter()
            .flat_map(|e| match t {
                0 => e.shared.clone(),
                1 => e.photo.clone().unwrap(),
                _ => e.caricature.clone().unwrap(),
            })
            .collect();
        let diff = max_abs_diff(&ours, &theirs);
        eprintln!(
            "{}: {} chips, max |trainer − ONNX| = {diff:e}",
            TASK_NAMES[t],
            chips.len()
        );
        assert!(diff < 1e-4, "{}: {diff}", TASK_NAMES[t]);
    }
}

fn train_command(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_carivis-train"))
        .args(args)
        .output()
        .expect("carivis-train runs")
}

/// Runs carivis-train on a manifest with `rows` and returns its stderr after checking that
/// it failed cleanly.
fn refused(rows: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.csv");
    std::fs::write(
        &manifest,
        format!("path,identity,modality,source,license\n{rows}"),
    )
    .unwrap();
    let out = dir.path().join("m.onnx");
    let output = train_command(&[
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("m.csv"),
        "the message names the file: {stderr}"
    );
    assert!(!out.exists(), "nothing written on failure");
    stderr
}

#[test]
fn bad_manifests_are_refused_with_the_reason() {
    assert!(refused("").contains("no pairs or images found"));
    let unknown = refused("a.jpg,someone,sketch,x,y\n");
    assert!(
        unknown.contains("m.csv:2") && unknown.contains("unknown modality `sketch`"),
        "{unknown}"
    );
    let missing = refused("nowhere/a.jpg,someone,photo,x,y\nnowhere/b.jpg,other,photo,x,y\n");
    assert!(
        missing.contains("2 of 2 listed images are missing"),
        "{missing}"
    );
    let astronaut = repo_file("tests/golden/dlib_astronaut_chip.png");
    let one = refused(&format!(
        "{p},solo,photo,x,y\n{p},solo,caricature,x,y\n",
        p = astronaut.display()
    ));
    assert!(one.contains("only one person"), "{one}");
}

/// A manifest of the first `people` CaVI identities with up to `per_modality` photos and
/// caricatures each (absolute paths).
fn small_cavi_manifest(data: &Path, dir: &Path, people: usize, per_modality: usize) -> PathBuf {
    let text = std::fs::read_to_string(data.join("manifest.csv")).unwrap();
    let mut kept: Vec<String> = Vec::new();
    let mut counts: std::collections::BTreeMap<(String, String), usize> = Default::default();
    let mut identities: Vec<String> = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.splitn(4, ',').collect();
        let [path, identity, modality, _] = fields[..] else {
            continue;
        };
        if !path.starts_with("cavi/") || !["photo", "caricature"].contains(&modality) {
            continue;
        }
        if !identities.iter().any(|i| i == identity) {
            if identities.len() == people {
                continue;
            }
            identities.push(identity.to_string());
        }
        let n = counts
            .entry((identity.into(), modality.into()))
            .or_default();
        if *n < per_modality {
            *n += 1;
            kept.push(format!(
                "{},{identity},{modality}",
                data.join(path).display()
            ));
        }
    }
    let manifest = dir.join("small.csv");
    std::fs::write(
        &manifest,
        format!("path,identity,modality\n{}\n", kept.join("\n")),
    )
    .unwrap();
    manifest
}

#[test]
fn short_training_run_writes_a_model_logs_plots_and_resumes() {
    let Some(data) = data_dir("train::short_training_run") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_cavi_manifest(&data, dir.path(), 6, 8);
    let out = dir.path().join("models/small.onnx");
    let cache = dir.path().join("cache");
    let common = [
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--batch",
        "32",
        "--warmup-epochs",
        "1",
        "--validation-fraction",
        "0.25",
    ];
    let first = train_command(&[&common[..], &["--epochs", "2"]].concat());
    let stdout = String::from_utf8_lossy(&first.stdout);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("training on") && stdout.contains("of 6 people"),
        "{stdout}"
    );

    let mut embedder = Embedder::open(&cpu_runtime(), &out, 8).unwrap();
    assert!(embedder.is_multi_task());
    let chip = load_image(&repo_file("tests/golden/dlib_astronaut_chip.png")).unwrap();
    let e = embedder.embed(&[chip]).unwrap().remove(0);
    for v in [
        &e.shared,
        e.photo.as_ref().unwrap(),
        e.caricature.as_ref().unwrap(),
    ] {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    let run = dir.path().join("models/small.onnx.train");
    let steps = std::fs::read_to_string(run.join("steps.csv")).unwrap();
    assert!(steps.starts_with("epoch,step,learning_rate,loss_shared"));
    let rows = steps.lines().count() - 1;
    assert!(rows >= 2, "{steps}");
    for plot in ["losses.png", "weights.png"] {
        let image = image::open(run.join(plot)).unwrap();
        assert_eq!((image.width(), image.height()), (800, 600));
    }
    let readme = std::fs::read_to_string(dir.path().join("models/README.md")).unwrap();
    assert!(
        readme.contains("<!-- carivis-train: small.onnx -->") && readme.contains("sha256"),
        "{readme}"
    );

    let resumed = train_command(&[&common[..], &["--epochs", "3", "--resume"]].concat());
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("resuming at epoch 3"), "{stderr}");
    let epochs = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    assert_eq!(epochs.lines().count(), 4, "header + 3 epochs: {epochs}");
    let steps_after = std::fs::read_to_string(run.join("steps.csv")).unwrap();
    assert!(steps_after.lines().count() - 1 > rows);

    let again = train_command(&[&common[..], &["--epochs", "3"]].concat());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("holds a checkpoint") && stderr.contains("--restart"),
        "{stderr}"
    );
    let changed =
        train_command(&[&common[..], &["--epochs", "4", "--resume", "--lr", "0.5"]].concat());
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert_eq!(changed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("hyper-parameters differ"), "{stderr}");

    let long = Command::new(env!("CARGO_BIN_EXE_carivis-train"))
        .args([&common[..], &["--epochs", "100000", "--resume"]].concat())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::fs::read_to_string(run.join("epochs.csv"))
        .unwrap()
        .lines()
        .count()
        < 6
    {
        assert!(
            started.elapsed().as_secs() < 120,
            "training did not progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    common::interrupt(&long);
    let out = long.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted: checkpoint saved"), "{stderr}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoint.json")).unwrap())
            .unwrap();
    let next_epoch = meta["next_epoch"].as_u64().unwrap();
    assert!(next_epoch >= 5, "{meta}");

    let last = train_command(
        &[
            &common[..],
            &["--epochs", &(next_epoch + 2).to_string(), "--resume"],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&last.stderr);
    assert!(last.status.success(), "{stderr}");
    let steps = std::fs::read_to_string(run.join("steps.csv")).unwrap();
    let numbers: Vec<u64> = steps
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(steps.matches("epoch,step").count(), 1, "one header");
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1) && numbers[0] == 0,
        "steps are numbered 0, 1, 2… without gaps or repeats after interrupt and resume"
    );
    let epochs = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    assert_eq!(
        epochs.lines().count() as u64,
        1 + next_epoch + 2,
        "{epochs}"
    );
}

/// Verification AUC of a committed embedding model on every `step`-th pair of CaVI's
/// testing_1.txt (pairs the multi-task model never trained on).
fn testing_slice_auc(data: &Path, model: &str, step: usize) -> f64 {
    let text = std::fs::read_to_string(data.join("cavi/protocol/testing_1.txt")).unwrap();
    let slice: Vec<&str> = text.lines().step_by(step).collect();
    let dir = tempfile::tempdir().unwrap();
    let pairs_file = dir.path().join("pairs.txt");
    std::fs::write(&pairs_file, slice.join("\n")).unwrap();
    let input = common::cavi_pairs_input(data, pairs_file);
    let faces = Faces {
        workers: vec![
            still_faces_with(0.0, model, first_pass_only()),
            still_faces_with(0.0, model, first_pass_only()),
        ],
        cache_dir: dir.path().join("cache"),
        progress: &|_| {},
        stop: &std::sync::atomic::AtomicBool::new(false),
    };
    verify(&input, faces).unwrap().verification.auc
}

#[test]
fn committed_multi_task_model_beats_dlib_on_unseen_cavi_pairs() {
    let Some(data) = data_dir("train::committed_multi_task_model_beats_dlib") else {
        return;
    };
    let dlib = testing_slice_auc(&data, DLIB_SPEC.file, 40);
    let multi_task = testing_slice_auc(&data, MULTI_TASK_SPEC.file, 40);
    eprintln!("every 40th testing_1 pair: AUC dlib {dlib:.4}, multi-task {multi_task:.4}");
    assert!(multi_task > dlib, "multi-task {multi_task} vs dlib {dlib}");
}

#[test]
fn unseen_people_protocol_trains_each_fold_reports_and_resumes() {
    let Some(data) = data_dir("train::unseen_people_protocol") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = small_cavi_manifest(&data, dir.path(), 9, 6);
    let report = dir.path().join("cv");
    let cache = dir.path().join("cache");
    let args = [
        "--manifest",
        manifest.to_str().unwrap(),
        "--cv-identities",
        "2",
        "--report",
        report.to_str().unwrap(),
        "--validation-identities",
        "2",
        "--cache",
        cache.to_str().unwrap(),
        "--batch",
        "32",
        "--epochs",
        "2",
        "--warmup-epochs",
        "1",
        "--synthetic-caricatures",
        "1",
        "--dlib-anchor",
        "0.5",
        "--margin",
        "0.2",
    ];
    let first = train_command(&args);
    let stdout = String::from_utf8_lossy(&first.stdout);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stdout}\n{stderr}");
    let synthetic: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("plus "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no synthetic caricatures reported: {stdout}"));
    assert!(synthetic > 0, "{stdout}");
    let mut tested = 0;
    for fold in 1..=2 {
        let path = report.join(format!("fold-{fold}/figures.json"));
        let figures: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for side in ["model", "dlib"] {
            for key in ["auc", "tar_far_1", "rank1_cp", "photo_auc", "verification"] {
                let v = figures[side][key].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&v), "{side} {key} = {v}");
            }
        }
        let people = figures["model"]["people"].as_u64().unwrap();
        assert_eq!(people, figures["dlib"]["people"].as_u64().unwrap());
        tested += people;
        assert!(report.join(format!("fold-{fold}/model.onnx")).is_file());
    }
    assert_eq!(tested, 9, "every person is tested in exactly one fold");
    let table = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        table.contains("| caricature–photo AUC |") && table.contains("dlib descriptor"),
        "{table}"
    );
    let roc = image::open(report.join("roc.png")).unwrap();
    assert_eq!((roc.width(), roc.height()), (800, 600));

    std::fs::remove_file(report.join("fold-2/figures.json")).unwrap();
    let again = train_command(&args);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains("fold 1: figures already in the report") && stderr.contains("fold 2 of 2"),
        "{stderr}"
    );
    assert!(report.join("fold-2/figures.json").is_file());
}

#[test]
fn synthetic_caricature_chips_are_aligned_faces_that_differ_per_variant() {
    let Some(data) = data_dir("train::synthetic_caricature_chips") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let descriptor = descriptor();
    let mut bank = BankWorker::new(
        trunk_worker(&descriptor, dir.path()),
        BankSettings {
            variants: 3,
            seed: 4,
        },
    );
    let mut detector = trunk_worker(&descriptor, dir.path());
    let mut offsets = Vec::new();
    for file in [
        "cavi/Real/Aamir_Khan/Aamir_Khan_r_0.jpg",
        "cavi/Real/Aamir_Khan/Aamir_Khan_r_3.jpg",
        "faces/face_recognition/examples/obama.jpg",
    ] {
        let image = load_image(&data.join(file)).unwrap();
        let chips = bank.variant_chips(&image).unwrap();
        assert_eq!(chips.len(), 3, "{file}");
        assert_ne!(chips[0], chips[1], "{file}: variants differ");
        for chip in &chips {
            assert_eq!((chip.width(), chip.height()), (150, 150));
            let face = detector
                .largest_face(chip)
                .unwrap()
                .unwrap_or_else(|| panic!("{file}: no face in a variant's chip"));
            let offset: f32 = face
                .landmarks
                .iter()
                .zip(DLIB_TEMPLATE_150)
                .map(|(p, t)| ((p[0] - t[0]).powi(2) + (p[1] - t[1]).powi(2)).sqrt())
                .sum::<f32>()
                / 5.0;
            offsets.push(offset);
        }
    }
    let mean = offsets.iter().sum::<f32>() / offsets.len() as f32;
    eprintln!("re-detected landmarks: mean distance from the template {mean:.1} px ({offsets:?})");
    // The exaggerated shapes leave the template by design (strength 1.3–2.3 times the face's
    // own offsets, plus the jitter): measured 11.1 px mean, 7.4–16.4 px per chip; a chip not
    // aligned on its face would be far beyond.
    assert!(
        mean < 16.0 && offsets.iter().all(|&o| o < 25.0),
        "the variants' chips are not aligned on their faces: {offsets:?}"
    );
}
