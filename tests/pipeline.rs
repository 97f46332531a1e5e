//! The video pipeline end to end on the committed sample video and demo gallery: annotation
//! (video and JSON Lines out, frame counts, labels), and `live` without a camera.

mod common;

use std::path::Path;
use std::process::Command;

use common::repo_file as repo;
use serde_json::Value;

fn carivis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_carivis"))
}

/// `carivis annotate` of the sample video with the demo gallery, writing `video` and `jsonl`.
fn annotate_sample(video: &Path, jsonl: &Path) -> Command {
    let mut command = carivis();
    command
        .args(["annotate", "--gallery"])
        .arg(repo("galleries/demo"))
        .arg(repo("samples/obama_weekly_address.mp4"))
        .arg("-o")
        .arg(video)
        .arg("--jsonl")
        .arg(jsonl);
    command
}

/// Frame count and rate of a video as ffprobe reads them.
fn ffprobe(path: &Path) -> (u64, String) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,r_frame_rate",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe (installed by scripts/setup)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.trim().split(',');
    let rate = fields.next().unwrap_or_default().to_string();
    let frames = fields.next().unwrap_or_default().parse().unwrap_or(0);
    (frames, rate)
}

#[test]
fn annotate_labels_the_person_on_the_sample_video_and_writes_readable_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (video, jsonl) = (dir.path().join("out.mp4"), dir.path().join("out.jsonl"));
    let frames = 90;
    let out = annotate_sample(&video, &jsonl)
        .args(["--frames", &frames.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(ffprobe(&video), (frames, "30/1".to_string()));
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, frames);
    let with_face: Vec<&Value> = lines
        .iter()
        .filter(|l| !l["faces"].as_array().unwrap().is_empty())
        .collect();
    let labelled = with_face
        .iter()
        .filter(|l| l["faces"][0]["identity"] == "Barack Obama")
        .count();
    eprintln!(
        "{labelled} of {} frames with a face labelled Barack Obama",
        with_face.len()
    );
    assert!(with_face.len() as u64 >= frames * 9 / 10);
    assert!(
        labelled * 10 >= with_face.len() * 9,
        "{labelled}/{}",
        with_face.len()
    );
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["frame"], i as u64);
    }
    assert!(!dir.path().join("out.partial.mp4").exists());
}

#[test]
fn live_without_a_camera_says_so() {
    let out = carivis()
        .args(["live", "--gallery"])
        .arg(repo("galleries/demo"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no camera found") && stderr.contains("--input"),
        "{stderr}"
    );
    let out = carivis()
        .args(["live", "--camera", "3", "--gallery"])
        .arg(repo("galleries/demo"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("camera 3") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn annotate_reports_a_missing_or_unreadable_input() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("not-a-video.mp4");
    std::fs::write(&bogus, "hello").unwrap();
    for input in [dir.path().join("missing.mp4"), bogus] {
        let out = carivis()
            .arg("annotate")
            .arg(&input)
            .arg("-o")
            .arg(dir.path().join("o.mp4"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&input.display().to_string()) && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}

#[test]
fn ctrl_c_finishes_a_playable_video_up_to_the_last_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (video, jsonl) = (dir.path().join("cut.mp4"), dir.path().join("cut.jsonl"));
    let child = annotate_sample(&video, &jsonl)
        .args(["--detect-every", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    common::interrupt(&child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines = std::fs::read_to_string(&jsonl).unwrap().lines().count() as u64;
    let (frames, rate) = ffprobe(&video);
    let (sample_frames, sample_rate) = ffprobe(&repo("samples/obama_weekly_address.mp4"));
    eprintln!("stopped after {frames} of the sample's {sample_frames} frames");
    assert!(frames > 0 && frames < sample_frames, "{frames}");
    assert_eq!((frames, rate), (lines, sample_rate));
}

#[test]
fn four_sources_share_two_detection_workers_each_in_order_labelled_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("four.jsonl");
    let sample = repo("samples/obama_weekly_address.mp4");
    let mut command = carivis();
    command
        .args(["live", "--headless", "--json", "--frames", "90"])
        .args(["--detect-workers", "2", "--gallery"])
        .arg(repo("galleries/demo"))
        .arg("--jsonl")
        .arg(&jsonl);
    for _ in 0..4 {
        command.arg("--input").arg(&sample);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for source in 0..4u64 {
        let mine: Vec<&Value> = lines.iter().filter(|l| l["source"] == source).collect();
        let frames: Vec<u64> = mine.iter().map(|l| l["frame"].as_u64().unwrap()).collect();
        let counted = &report["sources"][source as usize];
        let dropped: u64 = mine
            .iter()
            .map(|l| l["dropped_before"].as_u64().unwrap())
            .sum();
        let labelled = mine
            .iter()
            .filter(|l| l["faces"][0]["identity"] == "Barack Obama")
            .count();
        eprintln!(
            "source {source}: {} frames out, {dropped} dropped, {labelled} labelled Barack Obama",
            frames.len()
        );
        assert!(
            frames.windows(2).all(|w| w[0] < w[1]),
            "source {source} out of order"
        );
        assert_eq!(counted["frames_out"], frames.len() as u64);
        assert_eq!(counted["frames_dropped"], dropped);
        // Every captured frame either reached the sink or was counted as dropped.
        assert_eq!(counted["frames_captured"], 90);
        assert_eq!(frames.len() as u64 + dropped, 90);
        // Tracks stay per source: each source's face is labelled on nearly all its frames.
        assert!(
            labelled * 10 >= frames.len() * 9,
            "{labelled}/{}",
            frames.len()
        );
    }
    let embedded = lines
        .iter()
        .flat_map(|l| l["faces"].as_array().unwrap())
        .filter(|f| f["embedded"] == true)
        .count();
    let faces: usize = lines
        .iter()
        .map(|l| l["faces"].as_array().unwrap().len())
        .sum();
    eprintln!("{embedded} of {faces} faces embedded (--embed-every 5)");
    assert!(
        embedded * 5 >= faces && embedded * 3 <= faces,
        "{embedded}/{faces}"
    );
}
