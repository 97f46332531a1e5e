//! Galleries on real people: enrolment and identification accuracy, and survival of crashes,
//! damaged files, foreign models and hostile names.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use carivis::capture::load_image;
use carivis::embed::DEFAULT_EMBEDDER;
use carivis::files::file_sha256;
use carivis::gallery::matching::Thresholds;
use carivis::gallery::store::{Enrolment, ModelId};
use carivis::gallery::{Gallery, GalleryError, NewEntry};
use carivis::pipeline::still::{FaceSearch, StillFaces};
use carivis::types::Modality;
use common::{
    CHIP_BORDER, add_chip, astronaut_chip, data_dir, models_dir, repo_file, still_faces,
    still_faces_with,
};

/// Border for the Big Bang Theory crops: 150×150 images the face fills.
const CROP_BORDER: f32 = 0.1;

/// Big Bang Theory probes named right with the default settings (measured: README, Accuracy):
/// every face is found now; stuart5 is taken for sheldon under every setting and model, and
/// howard5 scores below the default model's photo threshold.
const BBT_DEFAULT_IDENTIFIED: usize = 6;

fn enrol(
    gallery: &mut Gallery,
    faces: &mut StillFaces,
    name: &str,
    modality: Modality,
    path: &Path,
) -> bool {
    let image = load_image(path).unwrap();
    let Some(found) = faces.faces(&image).unwrap().into_iter().next() else {
        return false;
    };
    let entry = NewEntry {
        name: name.into(),
        modality,
        source: path.to_path_buf(),
        source_sha256: file_sha256(path).unwrap(),
        bbox: found.found.face.bbox.to_array(),
        landmarks: Some(found.found.face.landmarks),
        enrolment: Enrolment::FivePoint,
    };
    gallery.add(entry, &found.embedding).unwrap();
    true
}

/// Enrols photos 1–4 of each of the eight Big Bang Theory cast members (face-api.js's
/// examples, tight crops) and identifies photo 5; returns how many were named right.
fn big_bang_theory_identified(data: &Path, mut faces: StillFaces) -> usize {
    let root = data.join("faces/face_api_js/examples/images");
    let people = [
        "amy",
        "bernadette",
        "howard",
        "leonard",
        "penny",
        "raj",
        "sheldon",
        "stuart",
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut gallery = Gallery::create(dir.path().join("bbt"), faces.model_id()).unwrap();
    for person in people {
        for i in 1..=4 {
            assert!(enrol(
                &mut gallery,
                &mut faces,
                person,
                Modality::Photo,
                &root.join(format!("{person}/{person}{i}.png"))
            ));
        }
    }
    let mut correct = 0;
    for person in people {
        let image = load_image(&root.join(format!("{person}/{person}5.png"))).unwrap();
        let probe = faces.faces(&image).unwrap();
        let answer = probe
            .first()
            .map(|f| {
                gallery
                    .identify(&f.embedding, Modality::Photo, None)
                    .unwrap()
                    .identity
            })
            .unwrap_or_default();
        let pass = probe.first().map(|f| f.found.pass.to_string());
        eprintln!(
            "{person}5 → {} (pass {})",
            answer.as_deref().unwrap_or("unknown"),
            pass.as_deref().unwrap_or("none: no face")
        );
        correct += usize::from(answer.as_deref() == Some(person));
    }
    eprintln!("Big Bang Theory: {correct}/8 identified");
    correct
}

#[test]
fn big_bang_theory_cast_is_recognised_from_four_photos_each() {
    let Some(data) = data_dir("big_bang_theory_cast_is_recognised_from_four_photos_each") else {
        return;
    };
    // dlib descriptor, first pass only on a copy with a 10% grey border.
    let correct = big_bang_theory_identified(&data, still_faces(CROP_BORDER));
    assert!(correct >= 7, "{correct}/8");
}

#[test]
fn big_bang_theory_cast_is_recognised_with_default_settings() {
    let Some(data) = data_dir("big_bang_theory_cast_is_recognised_with_default_settings") else {
        return;
    };
    // The default model and the default face search (retry passes), no border: README
    // (Accuracy) gives the count.
    let faces = still_faces_with(0.0, DEFAULT_EMBEDDER, FaceSearch::default());
    let correct = big_bang_theory_identified(&data, faces);
    assert!(correct >= BBT_DEFAULT_IDENTIFIED, "{correct}/8");
}

/// `(path, identity, modality)` of CaVI images, from the manifest (canonical identities).
fn cavi_manifest(data: &Path) -> Vec<(PathBuf, String, Modality)> {
    std::fs::read_to_string(data.join("manifest.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let modality = match f.get(2) {
                Some(&"photo") => Modality::Photo,
                Some(&"caricature") => Modality::Caricature,
                _ => return None,
            };
            (f[0].starts_with("cavi/") && !f[1].is_empty())
                .then(|| (data.join(f[0]), f[1].to_string(), modality))
        })
        .collect()
}

#[test]
fn cavi_caricatures_against_enrolled_photos_rank_1_and_5() {
    let Some(data) = data_dir("cavi_caricatures_against_enrolled_photos_rank_1_and_5") else {
        return;
    };
    let images = cavi_manifest(&data);
    let mut people: Vec<String> = images.iter().map(|(_, id, _)| id.clone()).collect();
    people.sort();
    people.dedup();
    let people: Vec<String> = people.into_iter().step_by(10).take(20).collect();
    let pick = |person: &str, modality: Modality, n: usize| -> Vec<PathBuf> {
        images
            .iter()
            .filter(|(_, id, m)| id == person && *m == modality)
            .take(n)
            .map(|(p, _, _)| p.clone())
            .collect()
    };
    let mut faces = still_faces(0.0);
    let dir = tempfile::tempdir().unwrap();
    let mut gallery = Gallery::create(dir.path().join("cavi"), faces.model_id()).unwrap();
    for person in &people {
        for path in pick(person, Modality::Photo, 5) {
            enrol(&mut gallery, &mut faces, person, Modality::Photo, &path);
        }
    }
    let (mut probes, mut no_face, mut rank1, mut rank5) = (0, 0, 0, 0);
    for person in &people {
        for path in pick(person, Modality::Caricature, 5) {
            let image = load_image(&path).unwrap();
            let Some(found) = faces.faces(&image).unwrap().into_iter().next() else {
                no_face += 1;
                continue;
            };
            probes += 1;
            let ranked = gallery
                .identify(&found.embedding, Modality::Caricature, None)
                .unwrap()
                .candidates;
            let rank = ranked.iter().position(|c| &c.identity == person);
            rank1 += usize::from(rank == Some(0));
            rank5 += usize::from(rank.is_some_and(|r| r < 5));
        }
    }
    let (rank1_rate, rank5_rate) = (rank1 as f64 / probes as f64, rank5 as f64 / probes as f64);
    eprintln!(
        "CaVI, 20 people, {} photo entries; {probes} caricature probes ({no_face} without a detected face): \
         rank-1 {rank1}/{probes} = {rank1_rate:.3}, rank-5 {rank5}/{probes} = {rank5_rate:.3}",
        gallery.entries().len(),
    );
    assert!(probes >= 60, "{probes} probes");
    // README, "The dlib descriptor on all of CaVI", five-point: rank-1 C→P 45.33%, rank-5
    // 65.44%, each caricature against all 205 people. This gallery holds 20 of them, which is
    // easier (measured: rank-1 76.1%, rank-5 96.6%), so the documented figures minus a margin
    // of 5 points are a floor.
    assert!(rank1_rate >= 0.4533 - 0.05, "rank-1 {rank1_rate:.3}");
    assert!(rank5_rate >= 0.6544 - 0.05, "rank-5 {rank5_rate:.3}");
}

fn carivis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_carivis"))
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

/// `carivis identify --json` of the astronaut chip (with `extra` arguments): its one line.
fn identify_chip(gallery: &Path, extra: &[&str]) -> serde_json::Value {
    let out = run_ok(
        carivis()
            .args(["identify", "--json", "--border", CHIP_BORDER, "--gallery"])
            .arg(gallery)
            .args(extra)
            .arg(astronaut_chip()),
    );
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

/// A new, empty gallery made with `carivis gallery create` in `dir/g`.
fn created_gallery(dir: &Path) -> PathBuf {
    let gallery = dir.join("g");
    run_ok(carivis().args(["gallery", "create"]).arg(&gallery));
    gallery
}

#[test]
fn gallery_index_describes_every_index_and_names_a_missing_gallery() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("demo");
    run_ok(
        carivis()
            .args(["gallery", "copy"])
            .arg(repo_file("galleries/demo"))
            .arg(&copy),
    );
    let out = run_ok(carivis().args(["gallery", "index"]).arg(&copy));
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(lines.len(), 6, "3 branches × 2 modalities:\n{out}");
    for branch in ["shared", "photo", "caricature"] {
        for modality in ["photo", "caricature"] {
            let line = lines
                .iter()
                .find(|l| l.split_whitespace().take(2).eq([branch, modality]))
                .unwrap_or_else(|| panic!("{branch}/{modality} in\n{out}"));
            assert!(line.contains("exact search, no graph"), "{line}");
        }
    }
    let missing = dir.path().join("nowhere");
    let out = carivis()
        .args(["gallery", "index"])
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&*missing.to_string_lossy()), "{stderr}");
}

#[test]
fn a_gallery_survives_kill_9_during_add() {
    let dir = tempfile::tempdir().unwrap();
    let gallery = created_gallery(dir.path());
    run_ok(&mut add_chip(&gallery, "amy", "photo", 5));
    // About 9 ms per chip on 2 cores after ~0.3 s of start-up: the add lasts ~1.6 s, so the
    // kills land before, during and after the save.
    let crowd_size = 150;
    let mut interrupted = 0;
    for delay_ms in [50, 150, 300, 500, 800, 1200] {
        let mut child = add_chip(&gallery, "crowd", "photo", crowd_size)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let finished = child.wait().unwrap().success();
        interrupted += usize::from(!finished);
        let listed = run_ok(carivis().args(["gallery", "list", "--json"]).arg(&gallery));
        let value: serde_json::Value = serde_json::from_str(&listed).unwrap();
        let crowd = value["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "crowd")
            .count();
        assert!(
            crowd % crowd_size == 0,
            "after kill at {delay_ms} ms: {crowd} crowd entries (partial add)"
        );
        if !finished && crowd > 0 {
            run_ok(
                carivis()
                    .args(["gallery", "remove", "--name", "crowd"])
                    .arg(&gallery),
            );
        }
        let stray: Vec<_> = std::fs::read_dir(&gallery)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(stray.len() <= 4, "{stray:?}");
    }
    eprintln!("{interrupted} of 6 adds killed before they finished");
    assert!(
        interrupted > 0,
        "every add finished before its kill: nothing was tested"
    );
}

#[test]
fn a_truncated_embeddings_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g");
    let model = ModelId {
        file: "m.onnx".into(),
        sha256: "abc".into(),
        branches: vec!["shared".into()],
        dim: 4,
    };
    let mut gallery = Gallery::create(&path, model.clone()).unwrap();
    let embedding = carivis::types::Embedding {
        shared: vec![0.5; 4],
        photo: None,
        caricature: None,
    };
    let entry = NewEntry {
        name: "ann".into(),
        modality: Modality::Photo,
        source: "/x.png".into(),
        source_sha256: "00".into(),
        bbox: [0.0; 4],
        landmarks: None,
        enrolment: Enrolment::Box,
    };
    gallery.add(entry, &embedding).unwrap();
    gallery.save().unwrap();
    drop(gallery);
    let file = std::fs::read_dir(&path)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "f32"))
        .unwrap();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
    let err = Gallery::open(&path, &model).err().unwrap();
    assert!(matches!(err, GalleryError::Damaged { .. }), "{err}");
    assert!(
        err.to_string().contains(&file.display().to_string())
            && err.to_string().contains("truncated"),
        "{err}"
    );

    let out = carivis()
        .args(["gallery", "list"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("damaged") && !stderr.contains("panicked"),
        "{stderr}"
    );

    std::fs::write(path.join("gallery.json"), "{ not json").unwrap();
    let err = Gallery::open(&path, &model).err().unwrap();
    assert!(err.to_string().contains("gallery.json"), "{err}");
}

#[test]
fn a_gallery_from_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g");
    let other = ModelId {
        file: "other.onnx".into(),
        sha256: "0123456789abcdef".into(),
        branches: vec!["shared".into()],
        dim: 128,
    };
    Gallery::create(&path, other).unwrap();
    let out = carivis()
        .args(["identify", "--gallery"])
        .arg(&path)
        .arg(astronaut_chip())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("other.onnx") && stderr.contains("gallery rebuild"),
        "{stderr}"
    );
}

#[test]
fn hostile_names_are_stored_as_text_and_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let gallery = created_gallery(dir.path());
    for name in ["../../etc", "two\nlines", "tab\there \"quoted\""] {
        run_ok(&mut add_chip(&gallery, name, "photo", 1));
    }
    let files: Vec<String> = std::fs::read_dir(&gallery)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files
            .iter()
            .all(|f| !f.contains("etc") && !f.contains("lines")),
        "{files:?}"
    );
    assert!(!dir.path().join("etc").exists());
    let table = run_ok(carivis().args(["gallery", "list"]).arg(&gallery));
    assert!(
        table.contains("../../etc")
            && table.contains("two\\nlines")
            && table.contains("tab\\there \\\"quoted\\\""),
        "{table}"
    );
    assert!(!table.contains("two\nlines"));
    let json: serde_json::Value = serde_json::from_str(&run_ok(
        carivis().args(["gallery", "list", "--json"]).arg(&gallery),
    ))
    .unwrap();
    let names: Vec<&str> = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["../../etc", "two\nlines", "tab\there \"quoted\""]);
    run_ok(
        carivis()
            .args(["gallery", "remove", "--name", "two\nlines"])
            .arg(&gallery),
    );
    let value = identify_chip(&gallery, &[]);
    assert_eq!(value["faces"][0]["identity"], "../../etc");
}

#[test]
fn add_refuses_images_without_exactly_one_face_and_explains() {
    let Some(data) = data_dir("add_refuses_images_without_exactly_one_face_and_explains") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gallery = created_gallery(dir.path());
    let group = data.join("faces/dlib_examples/examples/faces/2008_002470.jpg");
    let out = carivis()
        .args(["gallery", "add", "--modality", "photo", "--name", "x"])
        .arg(&gallery)
        .arg(&group)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("faces found") && stderr.contains("--largest"),
        "{stderr}"
    );
    let blank = dir.path().join("blank.png");
    image::RgbImage::from_pixel(64, 64, image::Rgb([200, 200, 200]))
        .save(&blank)
        .unwrap();
    let out = carivis()
        .args(["gallery", "add", "--modality", "caricature", "--name", "x"])
        .arg(&gallery)
        .arg(&blank)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no face found"));
    run_ok(
        carivis()
            .args([
                "gallery",
                "add",
                "--modality",
                "caricature",
                "--name",
                "x",
                "--whole-image",
            ])
            .arg(&gallery)
            .arg(&blank),
    );
    run_ok(
        carivis()
            .args([
                "gallery",
                "add",
                "--modality",
                "photo",
                "--name",
                "y",
                "--largest",
            ])
            .arg(&gallery)
            .arg(&group),
    );
    run_ok(
        carivis()
            .args([
                "gallery",
                "add",
                "--modality",
                "photo",
                "--name",
                "z",
                "--box",
                "10,10,80,90",
            ])
            .arg(&gallery)
            .arg(&group),
    );
    let json: serde_json::Value = serde_json::from_str(&run_ok(
        carivis().args(["gallery", "list", "--json"]).arg(&gallery),
    ))
    .unwrap();
    assert_eq!(json["entries"].as_array().unwrap().len(), 3);
}

#[test]
fn a_person_named_unknown_is_told_apart_from_no_match() {
    let dir = tempfile::tempdir().unwrap();
    let gallery = created_gallery(dir.path());
    run_ok(&mut add_chip(&gallery, "unknown", "photo", 1));
    let matched = identify_chip(&gallery, &[]);
    assert_eq!(matched["faces"][0]["identity"], "unknown", "{matched}");
    // No similarity reaches a threshold above 1: nobody matches.
    let unmatched = identify_chip(&gallery, &["--threshold", "1.5"]);
    assert!(unmatched["faces"][0]["identity"].is_null(), "{unmatched}");
    assert_eq!(
        unmatched["faces"][0]["candidates"][0]["identity"],
        "unknown"
    );

    let table = run_ok(
        carivis()
            .args([
                "identify",
                "--border",
                CHIP_BORDER,
                "--threshold",
                "1.5",
                "--gallery",
            ])
            .arg(&gallery)
            .arg(astronaut_chip()),
    );
    assert!(table.contains("unknown  similarity"), "{table}");
}

/// Reads `gallery.json` of `gallery`, changes it with `edit`, and writes it back.
fn edit_manifest(gallery: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let file = gallery.join("gallery.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&file, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

/// The problem `gallery.json` must be refused with, and the edit that causes it.
type ManifestEdit = (&'static str, fn(&mut serde_json::Value));

#[test]
fn an_edited_branch_list_or_dimension_is_refused_with_the_file_and_the_problem() {
    let edits: [ManifestEdit; 4] = [
        ("unknown branch \"sketch\"", |v| {
            v["model"]["branches"][2] = "sketch".into()
        }),
        ("listed twice", |v| {
            v["model"]["branches"][2] = "photo".into()
        }),
        ("expected [\"shared\"]", |v| {
            v["model"]["branches"] = serde_json::json!(["shared", "photo"])
        }),
        ("dimension is 0", |v| v["model"]["dim"] = 0.into()),
    ];
    for (problem, edit) in edits {
        let dir = tempfile::tempdir().unwrap();
        let gallery = created_gallery(dir.path());
        run_ok(&mut add_chip(&gallery, "ann", "photo", 1));
        edit_manifest(&gallery, edit);
        let manifest = gallery.join("gallery.json");
        let err = Gallery::open_unchecked(&gallery).err().unwrap();
        assert!(
            matches!(&err, GalleryError::InvalidModel { file, .. } if *file == manifest),
            "{err}"
        );
        assert!(err.to_string().contains(problem), "{err}");
        for command in [&["gallery", "list"][..], &["identify", "--gallery"]] {
            let out = carivis()
                .args(command)
                .arg(&gallery)
                .args(command.contains(&"identify").then(astronaut_chip))
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
            assert!(
                stderr.contains(&manifest.display().to_string())
                    && stderr.contains(problem)
                    && !stderr.contains("panicked"),
                "{command:?}: {stderr}"
            );
        }
    }
}

#[test]
fn thresholds_follow_the_model_checksum_not_its_file_name() {
    let dir = tempfile::tempdir().unwrap();
    for (committed, expected) in [
        ("dlib_resnet_v1.onnx", Thresholds::dlib()),
        ("carivis_mtl.onnx", Thresholds::default()),
    ] {
        let renamed = dir.path().join(format!("renamed-{committed}"));
        std::fs::copy(models_dir().join(committed), &renamed).unwrap();
        let gallery = dir.path().join(format!("g-{committed}"));
        run_ok(
            carivis()
                .args(["gallery", "create"])
                .arg(&gallery)
                .arg("--embedder")
                .arg(&renamed),
        );
        let opened = Gallery::open_unchecked(&gallery).unwrap();
        assert_eq!(opened.settings().thresholds, expected, "{committed}");
    }
    let unknown = ModelId {
        file: "dlib_resnet_v1.onnx".into(),
        sha256: "0".repeat(64),
        branches: vec!["shared".into()],
        dim: 128,
    };
    let gallery = Gallery::create(dir.path().join("g-unknown"), unknown).unwrap();
    assert_eq!(
        gallery.settings().thresholds,
        Thresholds::default(),
        "an unknown model starts with the default model's thresholds, whatever its name"
    );
}
