//! Network cameras: an HTTP MJPEG camera (tests/servers/mjpeg_server.py, on loopback) killed
//! mid-stream and started again; carivis logs the drop-out, reconnects within the timeout plus
//! back-off, and labels Barack Obama again. And `annotate` of a network stream ends when the
//! stream does.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carivis::types::unix_now;
use common::{free_port, metric, repo_file as repo};
use serde_json::Value;

/// The first `frames` frames of the sample video as JPEG files in `dir/frames`, the camera's
/// picture; returns that folder.
fn sample_jpegs(dir: &Path, frames: u32) -> PathBuf {
    let folder = dir.join("frames");
    std::fs::create_dir(&folder).unwrap();
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(repo("samples/obama_weekly_address.mp4"))
        .args([
            "-frames:v",
            &frames.to_string(),
            "-vf",
            "scale=640:360",
            "-q:v",
            "5",
        ])
        .arg(folder.join("%04d.jpg"))
        .status()
        .expect("ffmpeg (installed by scripts/setup)");
    assert!(status.success());
    folder
}

/// The MJPEG camera's process.
struct Camera {
    launcher: Child,
    pid: String,
}

impl Camera {
    /// Sends the server a signal (`STOP` freezes it with its connections open, `CONT` resumes).
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kills the server itself (not only its launcher) and waits until it is gone.
    fn kill(mut self) {
        self.signal("KILL");
        self.launcher.wait().unwrap();
    }
}

/// Starts the MJPEG camera and waits until it listens.
fn start_camera(frames: &Path, port: u16, once: bool) -> Camera {
    let mut command = Command::new("python3");
    command
        .arg(repo("tests/servers/mjpeg_server.py"))
        .arg(frames)
        .args([port.to_string(), "25".into()]);
    if once {
        command.arg("once");
    }
    launch(command)
}

/// Starts the RTSP camera (streaming the sample video) and waits until it listens.
fn start_rtsp_camera(port: u16) -> Camera {
    let mut command = Command::new(repo("tests/servers/rtsp_server.py"));
    command
        .arg(repo("samples/obama_weekly_address.mp4"))
        .arg(port.to_string());
    launch(command)
}

/// Runs a camera server and waits for its "ready PID" line.
fn launch(mut command: Command) -> Camera {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("the camera server (its packages are installed by scripts/setup)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = line
        .trim()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("the camera did not start: {line:?}"))
        .to_string();
    Camera {
        launcher: child,
        pid,
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until `done` holds for the JSON lines written so far (panics after `limit`).
fn wait_for_lines(path: &Path, limit: Duration, done: impl Fn(&[Value]) -> bool) {
    let started = Instant::now();
    while !done(&lines(path)) {
        assert!(
            started.elapsed() < limit,
            "timed out waiting on {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is_obama(line: &Value) -> bool {
    line["faces"][0]["identity"] == "Barack Obama"
}

#[test]
fn an_mjpeg_camera_that_drops_out_is_reopened_and_recognised_again() {
    let dir = tempfile::tempdir().unwrap();
    let frames = sample_jpegs(dir.path(), 100);
    let port = free_port();
    drop_out_and_back(
        dir.path(),
        &format!("http://127.0.0.1:{port}/camera.mjpeg"),
        || start_camera(&frames, port, false),
    );
}

#[test]
fn an_rtsp_camera_that_drops_out_is_reopened_and_recognised_again() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    drop_out_and_back(
        dir.path(),
        &format!("rtsp://127.0.0.1:{port}/camera"),
        || start_rtsp_camera(port),
    );
}

/// Runs `live` on the camera at `url`, kills the camera after 50 frames, starts it again 3 s
/// later, and checks the drop-out's timeline and the labels after it.
fn drop_out_and_back(dir: &Path, url: &str, start: impl Fn() -> Camera) {
    let jsonl = dir.join("net.jsonl");
    let camera = start();
    let carivis = Command::new(env!("CARGO_BIN_EXE_carivis"))
        .args([
            "live",
            "--headless",
            "--json",
            "--frames",
            "250",
            "--source-timeout",
            "2",
        ])
        .arg("--gallery")
        .arg(repo("galleries/demo"))
        .args(["--input", url])
        .arg("--jsonl")
        .arg(&jsonl)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // JSON Lines are written to `net.partial.jsonl` until the run ends.
    let partial = dir.join("net.partial.jsonl");
    wait_for_lines(&partial, Duration::from_secs(60), |l| l.len() >= 50);
    camera.kill();
    let killed = unix_now();
    std::thread::sleep(Duration::from_secs(3));
    let camera = start();
    let restarted = unix_now();
    let out = carivis.wait_with_output().unwrap();
    camera.kill();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("lost") && stderr.contains("reconnected"),
        "stderr: {stderr}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            report["sources_lost"].as_u64(),
            report["reconnects"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let all = lines(&jsonl);
    let statuses: Vec<&Value> = all.iter().filter_map(|l| l.get("source_status")).collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert_eq!(
        (
            statuses[0]["status"].as_str(),
            statuses[1]["status"].as_str()
        ),
        (Some("lost"), Some("reconnected"))
    );
    let (lost_at, back_at) = (
        statuses[0]["unix_time"].as_f64().unwrap(),
        statuses[1]["unix_time"].as_f64().unwrap(),
    );
    eprintln!(
        "timeline (s after the kill): camera killed 0.0, carivis lost {:.1}, camera restarted \
         {:.1}, carivis reconnected {:.1} after {} attempts",
        lost_at - killed,
        restarted - killed,
        back_at - killed,
        statuses[1]["attempts"]
    );
    // Lost within the source timeout (2 s) of the kill; back within the timeout plus the
    // longest back-off step it can be in (1+2+4 s waits: the restart falls in the third).
    assert!(
        lost_at - killed < 2.5,
        "lost {:.1} s after the kill",
        lost_at - killed
    );
    assert!(
        back_at - restarted < 2.0 + 4.0 + 0.5,
        "back {:.1} s after the restart",
        back_at - restarted
    );
    let frames_out: Vec<&Value> = all.iter().filter(|l| l.get("frame").is_some()).collect();
    let indices: Vec<u64> = frames_out
        .iter()
        .map(|l| l["frame"].as_u64().unwrap())
        .collect();
    let dropped: u64 = frames_out
        .iter()
        .map(|l| l["dropped_before"].as_u64().unwrap())
        .sum();
    assert_eq!(indices.len() as u64 + dropped, 250);
    assert!(
        indices.windows(2).all(|w| w[0] < w[1]),
        "frames out of order"
    );
    let back_in_run = statuses[1]["time_s"].as_f64().unwrap();
    let after: Vec<&&Value> = frames_out
        .iter()
        .filter(|l| l["time_s"].as_f64().unwrap() > back_in_run)
        .collect();
    let labelled = after.iter().filter(|l| is_obama(l)).count();
    eprintln!(
        "after the reconnection: {labelled} of {} frames labelled Barack Obama",
        after.len()
    );
    assert!(
        after.len() >= 100 && labelled * 10 >= after.len() * 9,
        "{labelled}/{}",
        after.len()
    );
}

#[test]
fn a_camera_that_stalls_is_lost_after_the_source_timeout_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let frames = sample_jpegs(dir.path(), 50);
    let port = free_port();
    let jsonl = dir.path().join("stall.jsonl");
    let camera = start_camera(&frames, port, false);
    let carivis = Command::new(env!("CARGO_BIN_EXE_carivis"))
        .args([
            "live",
            "--headless",
            "--frames",
            "150",
            "--source-timeout",
            "1.5",
        ])
        .args(["--input", &format!("http://127.0.0.1:{port}/camera.mjpeg")])
        .arg("--jsonl")
        .arg(&jsonl)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial = dir.path().join("stall.partial.jsonl");
    wait_for_lines(&partial, Duration::from_secs(60), |l| l.len() >= 30);
    camera.signal("STOP");
    let stalled = unix_now();
    wait_for_lines(&partial, Duration::from_secs(10), |l| {
        l.iter().any(|l| l.get("source_status").is_some())
    });
    camera.signal("CONT");
    let out = carivis.wait_with_output().unwrap();
    camera.kill();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statuses: Vec<Value> = lines(&jsonl)
        .into_iter()
        .filter_map(|l| l.get("source_status").cloned())
        .collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    let lost_after = statuses[0]["unix_time"].as_f64().unwrap() - stalled;
    eprintln!(
        "stalled camera counted lost {lost_after:.2} s after it froze (timeout 1.5 s): {}",
        statuses[0]["reason"]
    );
    assert_eq!(statuses[0]["status"], "lost");
    assert!((1.0..3.5).contains(&lost_after), "{lost_after}");
    assert_eq!(statuses[1]["status"], "reconnected");
}

#[test]
fn annotating_a_network_stream_ends_when_the_stream_ends() {
    let dir = tempfile::tempdir().unwrap();
    let frames = sample_jpegs(dir.path(), 60);
    let port = free_port();
    let camera = start_camera(&frames, port, true);
    let (video, jsonl) = (dir.path().join("out.mp4"), dir.path().join("out.jsonl"));
    let out = Command::new(env!("CARGO_BIN_EXE_carivis"))
        .args(["annotate", "--gallery"])
        .arg(repo("galleries/demo"))
        .arg(format!("http://user:secret@127.0.0.1:{port}/camera.mjpeg"))
        .arg("-o")
        .arg(&video)
        .arg("--jsonl")
        .arg(&jsonl)
        .output()
        .unwrap();
    camera.kill();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
    let written = lines(&jsonl);
    let labelled = written.iter().filter(|l| is_obama(l)).count();
    eprintln!(
        "{} frames annotated, {labelled} labelled Barack Obama",
        written.len()
    );
    assert_eq!(written.len(), 60);
    assert!(labelled >= 54, "{labelled}/60");
    assert!(video.is_file());
}

/// `curl -s URL` (with `--max-time seconds`): the body.
fn fetch(url: &str, seconds: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", seconds, url])
        .output()
        .expect("curl (installed by scripts/setup)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn serve_waits_for_a_camera_down_at_start_counts_its_drop_out_and_labels_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let frames = sample_jpegs(dir.path(), 100);
    let (camera_port, port) = (free_port(), free_port());
    let mut server = Command::new(env!("CARGO_BIN_EXE_carivis"))
        .args(["serve", "--source-timeout", "2", "--api-workers", "1"])
        .arg("--gallery")
        .arg(repo("galleries/demo"))
        .args([
            "--input",
            &format!("http://127.0.0.1:{camera_port}/camera.mjpeg"),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let figure = |name: &str| metric(&fetch(&metrics, "5"), &format!("{name}{{source=\"0\""));
    let wait = |what: &str, limit: u64, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(limit), "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let counted = |lost: f64, reconnects: f64, up: f64| {
        figure("carivis_stream_lost_total") == Some(lost)
            && figure("carivis_stream_reconnects_total") == Some(reconnects)
            && figure("carivis_stream_up") == Some(up)
    };
    wait("the camera down at the start counted", 60, &|| {
        counted(1.0, 0.0, 0.0)
    });
    let camera = start_camera(&frames, camera_port, false);
    wait("the camera joined once it was up", 60, &|| {
        counted(1.0, 1.0, 1.0) && figure("carivis_stream_frames_total").is_some_and(|f| f >= 50.0)
    });
    camera.kill();
    let killed = Instant::now();
    wait("the drop-out counted", 20, &|| counted(2.0, 1.0, 0.0));
    let lost = killed.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let camera = start_camera(&frames, camera_port, false);
    let restarted = killed.elapsed();
    wait("the reconnection counted", 40, &|| counted(2.0, 2.0, 1.0));
    let reconnected = killed.elapsed();
    let events = fetch(&format!("http://127.0.0.1:{port}/v1/events"), "3");
    let labelled = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(is_obama)
        .count();
    eprintln!(
        "serve: lost {:.1} s after the kill, camera restarted at {:.1} s, reconnected at {:.1} s; \
         {labelled} frames labelled Barack Obama in the next 3 s of events",
        lost.as_secs_f64(),
        restarted.as_secs_f64(),
        reconnected.as_secs_f64()
    );
    assert!(
        labelled >= 25,
        "{labelled} labelled frames after the reconnect"
    );
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(server.wait().unwrap().success());
    camera.kill();
}
