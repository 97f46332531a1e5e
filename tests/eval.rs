//! The evaluation on a small slice of real CaVI pairs: every figure present and sane, a second
//! run served from the cache, thresholds a gallery can import; a malformed pair file names its
//! line. Skips without the shared face data.

mod common;

use std::path::Path;

use carivis::eval::protocol::{PairFormat, read_manifest, read_pairs};
use carivis::eval::{EvalError, Faces, read_thresholds, verify};
use carivis::jobs::Progress;
use carivis::types::Modality;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

/// Same-person pairs taken from the top of testing_1.txt, different-person ones from the end.
const PAIRS_EACH: usize = 12;

/// Never set: these evaluations run to the end.
static NEVER: AtomicBool = AtomicBool::new(false);

fn no_progress(_: Progress) {}

fn faces(cache: &Path) -> Faces<'static> {
    Faces {
        workers: vec![common::still_faces(0.0)],
        cache_dir: cache.to_path_buf(),
        progress: &no_progress,
        stop: &NEVER,
    }
}

#[test]
fn verification_on_a_slice_of_cavi_pairs() {
    let Some(data) = common::data_dir("verification_on_a_slice_of_cavi_pairs") else {
        return;
    };
    let text = std::fs::read_to_string(data.join("cavi/protocol/testing_1.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let slice: Vec<&str> = lines[..PAIRS_EACH]
        .iter()
        .chain(&lines[lines.len() - PAIRS_EACH..])
        .copied()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let pairs_file = dir.path().join("pairs.txt");
    std::fs::write(&pairs_file, slice.join("\n")).unwrap();
    let input = common::cavi_pairs_input(&data, pairs_file);
    let cache = dir.path().join("cache");
    let report = verify(&input, faces(&cache)).unwrap();
    assert_eq!(report.dataset.format, PairFormat::Cavi);
    let v = &report.verification;
    assert_eq!((v.genuine, v.impostor), (PAIRS_EACH, PAIRS_EACH));
    assert!(v.auc > 0.6 && v.auc <= 1.0, "AUC {}", v.auc);
    assert!(v.accuracy.mean > 0.5, "accuracy {:?}", v.accuracy);
    assert!(report.images.missing.is_empty());
    assert!(report.images.counts.computed > 0);
    let found: usize = report.images.detection.values().map(|d| d.images).sum();
    assert_eq!(found, report.images.images, "every image counted");
    assert!(
        report
            .thresholds
            .measured
            .contains_key("caricature_to_photo")
    );
    assert!(
        report
            .thresholds
            .kept_at_default
            .contains_key("photo_to_photo")
    );

    let again = verify(&input, faces(&cache)).unwrap();
    assert_eq!(again.images.counts.computed, 0, "second run from the cache");
    assert_eq!(again.verification.auc, v.auc);

    let report_path = dir.path().join("report.json");
    std::fs::write(&report_path, serde_json::to_string(&report).unwrap()).unwrap();
    let section = read_thresholds(&report_path).unwrap();
    assert_eq!(section.model_sha256, report.model.sha256);
}

#[test]
fn malformed_pair_file_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pairs.txt");
    std::fs::write(
        &file,
        "a Caricature/a\\c.jpg a Real/a\\r.jpg 1\na Caricature/a\\c.jpg a Real/a\\r.jpg\n",
    )
    .unwrap();
    let err = EvalError::from(read_pairs(&file, Some(PairFormat::Cavi)).unwrap_err());
    let message = err.to_string();
    assert!(message.contains("pairs.txt:2:"), "{message}");
    assert!(message.contains("expected 5 fields"), "{message}");
}

/// The first `each` photos and caricatures of the first `people` CaVI identities of the
/// manifest, as manifest lines with absolute paths.
fn small_manifest(data: &Path, people: usize, each: usize) -> Vec<String> {
    let images = read_manifest(&data.join("manifest.csv"), Some("cavi/")).unwrap();
    let mut names: Vec<&str> = Vec::new();
    let mut taken: HashMap<(&str, Modality), usize> = HashMap::new();
    let mut lines = Vec::new();
    for image in &images {
        if !names.contains(&image.identity.as_str()) {
            if names.len() == people {
                continue;
            }
            names.push(&image.identity);
        }
        let count = taken.entry((&image.identity, image.modality)).or_default();
        if *count < each {
            *count += 1;
            let (path, who) = (image.path.display(), &image.identity);
            lines.push(format!("{path},{who},{},", image.modality));
        }
    }
    lines
}

#[test]
fn embed_map_draws_the_same_people_through_both_models() {
    let Some(data) = common::data_dir("embed_map_draws_the_same_people_through_both_models") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lines = small_manifest(&data, 3, 3);
    assert_eq!(lines.len(), 18, "3 people × 3 photos and 3 caricatures");
    let manifest = dir.path().join("manifest.csv");
    let header = "path,identity,modality,source";
    std::fs::write(&manifest, format!("{header}\n{}\n", lines.join("\n"))).unwrap();
    let out = dir.path().join("map");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_carivis"))
        .args([
            "eval",
            "embed-map",
            "--people",
            "2",
            "--jobs",
            "1",
            "--manifest",
        ])
        .arg(&manifest)
        .arg("--out")
        .arg(&out)
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let png = std::fs::read(out.join("embed-map.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["command"], "embed-map");
    assert_eq!(report["people"].as_array().unwrap().len(), 2);
    let panels = report["panels"].as_array().unwrap();
    assert_eq!(panels.len(), 2);
    assert_eq!(panels[0]["model"], "dlib_resnet_v1.onnx");
    assert_eq!(panels[1]["model"], "carivis_mtl.onnx");
    for panel in panels {
        assert_eq!(
            panel["points"], 12,
            "2 people × 6 images, each embedded: {panel}"
        );
    }
}
