//! Galleries on real people: enrolment and identification accuracy, and survival of crashes,
//! damaged files, foreign models and hostile names.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use carivis::capture::load_image;
use carivis::files::file_sha256;
use carivis::gallery::store::{Enrolment, ModelId};
use carivis::gallery::{Gallery, GalleryError, NewEntry};
use carivis::pipeline::still::StillFaces;
use carivis::types::Modality;
use common::{data_dir, still_faces};

/// Border for the Big Bang Theory crops: 150×150 images the face fills.
const CROP_BORDER: f32 = 0.1;

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
        bbox: found.face.bbox.to_array(),
        landmarks: Some(found.face.landmarks),
        enrolment: Enrolment::FivePoint,
    };
    gallery.add(entry, &found.embedding).unwrap();
    true
}

#[test]
fn big_bang_theory_cast_is_recognised_from_four_photos_each() {
    let Some(data) = data_dir("big_bang_theory_cast_is_recognised_from_four_photos_each") else {
        return;
    };
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
    let mut faces = still_faces(CROP_BORDER);
    let dir = tempfile::tempdir().unwrap();
    let mut gallery = Gallery::create(&dir.path().join("bbt"), faces.model_id()).unwrap();
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
        eprintln!("{person}5 → {}", answer.as_deref().unwrap_or("unknown"));
        correct += usize::from(answer.as_deref() == Some(person));
    }
    eprintln!("Big Bang Theory: {correct}/8 identified");
    assert!(correct >= 7, "{correct}/8");
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
    let mut gallery = Gallery::create(&dir.path().join("cavi"), faces.model_id()).unwrap();
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
    eprintln!(
        "CaVI, 20 people, {} photo entries; {probes} caricature probes ({no_face} without a detected face): \
         rank-1 {rank1}/{probes} = {:.3}, rank-5 {rank5}/{probes} = {:.3}",
        gallery.entries().len(),
        rank1 as f64 / probes as f64,
        rank5 as f64 / probes as f64
    );
    assert!(probes >= 60, "{probes} probes");
    assert!(
        rank5 > rank1 && rank1 as f64 / probes as f64 > 1.0 / 20.0,
        "no better than chance"
    );
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

/// A new, empty gallery made with `carivis gallery create` in `dir/g`.
fn created_gallery(dir: &Path) -> PathBuf {
    let gallery = dir.join("g");
    run_ok(carivis().args(["gallery", "create"]).arg(&gallery));
    gallery
}

fn photos(data: &Path, person: &str) -> Vec<PathBuf> {
    let dir = data.join("faces/face_api_js/examples/images").join(person);
    (1..=5)
        .map(|i| dir.join(format!("{person}{i}.png")))
        .collect()
}

#[test]
fn a_gallery_survives_kill_9_during_add() {
    let Some(data) = data_dir("a_gallery_survives_kill_9_during_add") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gallery = created_gallery(dir.path());
    run_ok(
        carivis()
            .args([
                "gallery",
                "add",
                "--border",
                "0.1",
                "--name",
                "amy",
                "--modality",
                "photo",
            ])
            .arg(&gallery)
            .args(photos(&data, "amy")),
    );
    let many: Vec<PathBuf> = ["penny", "raj", "sheldon", "leonard"]
        .iter()
        .flat_map(|p| photos(&data, p))
        .collect();
    for delay_ms in [50, 150, 300, 500, 800, 1200] {
        let mut child = carivis()
            .args([
                "gallery",
                "add",
                "--border",
                "0.1",
                "--name",
                "crowd",
                "--modality",
                "photo",
            ])
            .arg(&gallery)
            .args(&many)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let finished = child.wait().unwrap().success();
        let listed = run_ok(carivis().args(["gallery", "list", "--json"]).arg(&gallery));
        let value: serde_json::Value = serde_json::from_str(&listed).unwrap();
        let crowd = value["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "crowd")
            .count();
        assert!(
            crowd % many.len() == 0,
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
    let Some(data) = data_dir("a_gallery_from_another_model_is_refused") else {
        return;
    };
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
        .arg(data.join("faces/skimage/astronaut.png"))
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
    let Some(data) = data_dir("hostile_names_are_stored_as_text_and_shown_escaped") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gallery = created_gallery(dir.path());
    let astronaut = data.join("faces/skimage/astronaut.png");
    for name in ["../../etc", "two\nlines", "tab\there \"quoted\""] {
        run_ok(
            carivis()
                .args(["gallery", "add", "--modality", "photo", "--name", name])
                .arg(&gallery)
                .arg(&astronaut),
        );
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
    let identified = run_ok(
        carivis()
            .args(["identify", "--json", "--gallery"])
            .arg(&gallery)
            .arg(&astronaut),
    );
    let value: serde_json::Value =
        serde_json::from_str(identified.lines().next().unwrap()).unwrap();
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
