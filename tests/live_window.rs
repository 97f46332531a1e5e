//! `carivis live` in a real window: under Xvfb, playing the sample video, a screenshot of the
//! screen must show the video frame with a labelled box drawn on it.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::repo_file as repo;

fn available(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Kills the child (an X server) when dropped.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn live_shows_frames_and_labels_in_a_window() {
    if !available("Xvfb") || !available("import") {
        common::skip(
            "live_shows_frames_and_labels_in_a_window",
            "Xvfb or ImageMagick's import missing (scripts/setup installs them)",
        );
        return;
    }
    let display = ":87";
    let _x = Reaper(
        Command::new("Xvfb")
            .args([display, "-screen", "0", "1280x720x24", "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(800));
    let live = Command::new(env!("CARGO_BIN_EXE_carivis"))
        .args(["live", "--frames", "150", "--input"])
        .arg(repo("samples/obama_weekly_address.mp4"))
        .arg("--gallery")
        .arg(repo("galleries/demo"))
        .env("DISPLAY", display)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("screen.png");
    let taken = Command::new("import")
        .args(["-display", display, "-window", "root"])
        .arg(&shot)
        .status()
        .unwrap();
    let finished = live.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&finished.stderr);
    assert!(taken.success(), "screenshot failed");
    assert!(finished.status.success(), "{stderr}");
    if let Some(keep) = std::env::var_os("CARIVIS_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    let screen = image::open(&shot).unwrap().to_rgb8();
    let green_label = screen.pixels().filter(|p| p.0 == [40, 200, 60]).count();
    let lit = screen
        .pixels()
        .filter(|p| p.0.iter().map(|&c| u32::from(c)).sum::<u32>() > 150)
        .count();
    eprintln!("screenshot: {green_label} pixels of the known-person colour, {lit} lit pixels");
    assert!(green_label > 500, "no labelled box on screen");
    assert!(
        lit > (screen.width() * screen.height() / 4) as usize,
        "no video frame on screen"
    );
}
