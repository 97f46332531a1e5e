//! `carivis serve` as a client sees it, on loopback: every endpoint with its error statuses
//! (400, 401, 403, 404, 413, 422), hostile names, answers identical to the command line's, a
//! live stream that follows an enrolment made through the API, Server-Sent Events, the MJPEG
//! live view, a client that never reads, metrics, the page in headless Chromium, and SIGTERM.
//! The client is curl, as in the README's examples.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{free_port, metric, repo_file as repo};
use serde_json::Value;

const CARIVIS: &str = env!("CARGO_BIN_EXE_carivis");
const SAMPLE: &str = "samples/obama_weekly_address.mp4";

/// A running `carivis serve`.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts `carivis serve --gallery GALLERY --listen 127.0.0.1:PORT ARGS…` and waits until
    /// `/healthz` answers.
    fn start(gallery: &Path, args: &[&str]) -> Server {
        let port = free_port();
        let child = Command::new(CARIVIS)
            .arg("serve")
            .arg("--gallery")
            .arg(gallery)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("carivis serve starts");
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while curl(&[&server.url("/healthz")]).0 != 200 {
            assert!(Instant::now() < deadline, "serve did not answer /healthz");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGTERM, then the exit status (within 20 s).
    fn terminate(mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs curl with `args`; the status and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (installed by scripts/setup)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A 640×480 JPEG of the sample video at `seconds` (Barack Obama, one face).
fn sample_frame(dir: &Path, seconds: f32) -> PathBuf {
    let path = dir.join(format!("frame-{seconds}.jpg"));
    ffmpeg(&[
        "-ss",
        &seconds.to_string(),
        "-i",
        repo(SAMPLE).to_str().unwrap(),
        "-frames:v",
        "1",
        "-vf",
        "crop=960:720,scale=640:480",
        "-q:v",
        "3",
        path.to_str().unwrap(),
    ]);
    path
}

/// A grey image of `size` (no face), as PNG.
fn grey_image(dir: &Path, size: &str) -> PathBuf {
    let path = dir.join(format!("grey-{size}.png"));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("color=gray:s={size}"),
        "-frames:v",
        "1",
        path.to_str().unwrap(),
    ]);
    path
}

fn ffmpeg(args: &[&str]) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg (installed by scripts/setup)");
    assert!(status.success(), "ffmpeg {args:?}");
}

/// A copy of the demo gallery in `dir` (its model is the default one).
fn demo_gallery(dir: &Path) -> PathBuf {
    let gallery = dir.join("gallery");
    std::fs::create_dir(&gallery).unwrap();
    for entry in std::fs::read_dir(repo("galleries/demo")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), gallery.join(entry.file_name())).unwrap();
    }
    gallery
}

fn carivis(args: &[&str]) -> String {
    let out = Command::new(CARIVIS).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "carivis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `%XX` for every byte but unreserved ones.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn every_endpoint_answers_as_the_command_line_does_with_the_documented_errors() {
    let dir = tempfile::tempdir().unwrap();
    let gallery = demo_gallery(dir.path());
    let frame = sample_frame(dir.path(), 5.0);
    let other = sample_frame(dir.path(), 20.0);
    let (frame_s, other_s) = (frame.to_str().unwrap(), other.to_str().unwrap());
    let server = Server::start(
        &gallery,
        &[
            "--allow-writes",
            "--max-body",
            "300k",
            "--max-pixels",
            "2000000",
            "--api-workers",
            "1",
        ],
    );
    let url = |path: &str| server.url(path);

    let (status, body) = curl(&[&url("/healthz")]);
    assert_eq!((status, json(&body)["status"].as_str()), (200, Some("ok")));

    // identify: the CLI's object, the same faces.
    let (status, body) = curl(&[
        "--data-binary",
        &format!("@{frame_s}"),
        &url("/v1/identify"),
    ]);
    assert_eq!(status, 200, "{body}");
    let served = json(&body);
    assert_eq!(served["faces"][0]["identity"], "Barack Obama", "{body}");
    let cli = json(&carivis(&[
        "identify",
        "--json",
        "--gallery",
        gallery.to_str().unwrap(),
        frame_s,
    ]));
    assert_eq!(served["faces"], cli["faces"], "API and CLI answers differ");

    // Clients that hang up mid-request take nothing from the service.
    for _ in 0..4 {
        let _ = curl(&[
            "--max-time",
            "0.02",
            "--data-binary",
            &format!("@{frame_s}"),
            &url("/v1/identify"),
        ]);
    }
    let (status, body) = curl(&[
        "--data-binary",
        &format!("@{frame_s}"),
        &url("/v1/identify"),
    ]);
    assert_eq!(status, 200, "after abandoned requests: {body}");

    // verify: the CLI's figures.
    let (status, body) = curl(&[
        "-F",
        &format!("a=@{frame_s}"),
        "-F",
        &format!("b=@{other_s}"),
        "-F",
        "modality_b=photo",
        &url("/v1/verify"),
    ]);
    assert_eq!(status, 200, "{body}");
    let served = json(&body);
    let cli = json(&carivis(&["verify", "--json", frame_s, other_s]));
    assert_eq!(served["same_person"], true, "{body}");
    for field in ["similarity", "threshold", "branch", "same_person"] {
        assert_eq!(served[field], cli[field], "{field}: {body} vs {cli}");
    }
    let (status, body) = curl(&["-F", &format!("a=@{frame_s}"), &url("/v1/verify")]);
    assert_eq!(status, 400, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("\"b\""));

    // Not an image → 400; too many pixels → 422; too large a body → 413.
    let (status, body) = curl(&["--data-binary", "hello, not an image", &url("/v1/identify")]);
    assert_eq!(status, 400, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("not a readable image")
    );
    let big = grey_image(dir.path(), "2000x1500");
    let (status, body) = curl(&[
        "--data-binary",
        &format!("@{}", big.display()),
        &url("/v1/identify"),
    ]);
    assert_eq!(status, 422, "{body}");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("2000000-pixel limit")
    );
    let noise = dir.path().join("noise.bin");
    std::fs::write(&noise, vec![7u8; 400_000]).unwrap();
    let (status, _) = curl(&[
        "--data-binary",
        &format!("@{}", noise.display()),
        &url("/v1/identify"),
    ]);
    assert_eq!(status, 413);

    // Enrolment with a hostile name, shown as data, then removed.
    let hostile = "O'Brien\"; DROP TABLE carivis_entries; --\nline two";
    let enrol_url = url(&format!(
        "/v1/gallery/{}?modality=photo",
        percent_encode(hostile)
    ));
    let (status, body) = curl(&["--data-binary", &format!("@{frame_s}"), &enrol_url]);
    assert_eq!(status, 201, "{body}");
    assert_eq!(json(&body)["name"], hostile);
    let (status, body) = curl(&[&url("/v1/gallery")]);
    assert_eq!(status, 200);
    let listed = json(&body);
    let person = listed["people"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == hostile)
        .expect("the enrolled person is listed");
    assert_eq!(
        (person["photos"].as_u64(), person["caricatures"].as_u64()),
        (Some(1), Some(0))
    );
    let on_disk = json(&carivis(&[
        "gallery",
        "list",
        "--json",
        gallery.to_str().unwrap(),
    ]));
    assert!(
        on_disk["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == hostile)
    );
    let (status, body) = curl(&[
        "-X",
        "DELETE",
        &url(&format!("/v1/gallery/{}", percent_encode(hostile))),
    ]);
    assert_eq!(
        (status, json(&body)["removed"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let (status, _) = curl(&[
        "-X",
        "DELETE",
        &url(&format!("/v1/gallery/{}", percent_encode(hostile))),
    ]);
    assert_eq!(status, 404);
    // Enrolment errors: no modality, no face, an empty name.
    let (status, body) = curl(&[
        "--data-binary",
        &format!("@{frame_s}"),
        &url("/v1/gallery/Someone"),
    ]);
    assert_eq!(status, 400, "{body}");
    let grey = grey_image(dir.path(), "640x480");
    let (status, body) = curl(&[
        "--data-binary",
        &format!("@{}", grey.display()),
        &url("/v1/gallery/Someone?modality=photo"),
    ]);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("no face found"));
    let (status, _) = curl(&[
        "--data-binary",
        &format!("@{frame_s}"),
        &url("/v1/gallery/%20?modality=photo"),
    ]);
    assert_eq!(status, 400);

    // No streams here.
    assert_eq!(curl(&[&url("/v1/streams/0.mjpeg")]).0, 404);
    assert_eq!(curl(&[&url("/v1/streams/x.jpg")]).0, 404);

    let (status, text) = curl(&[&url("/metrics")]);
    assert_eq!(status, 200);
    for (line, count) in [
        // Two answered; the abandoned ones were never answered, so never counted.
        (
            "carivis_http_requests_total{route=\"/v1/identify\",status=\"200\"}",
            2.0,
        ),
        (
            "carivis_http_requests_total{route=\"/v1/identify\",status=\"400\"}",
            1.0,
        ),
        (
            "carivis_http_requests_total{route=\"/v1/identify\",status=\"413\"}",
            1.0,
        ),
        (
            "carivis_http_requests_total{route=\"/v1/identify\",status=\"422\"}",
            1.0,
        ),
        (
            "carivis_http_requests_total{route=\"/v1/gallery/{name}\",status=\"201\"}",
            1.0,
        ),
    ] {
        assert_eq!(metric(&text, line), Some(count), "{line} in\n{text}");
    }
    assert_eq!(metric(&text, "carivis_gallery_entries"), Some(82.0));
    assert!(server.terminate().success());

    // With a token: every /v1/ request needs it (header, or access_token for browsers).
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let server = Server::start(
        &gallery,
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--api-workers",
            "1",
        ],
    );
    let gallery_url = server.url("/v1/gallery");
    assert_eq!(curl(&[&gallery_url]).0, 401);
    assert_eq!(
        curl(&["-H", "Authorization: Bearer wrong", &gallery_url]).0,
        401
    );
    assert_eq!(
        curl(&["-H", "Authorization: Bearer s3cret-token", &gallery_url]).0,
        200
    );
    assert_eq!(
        curl(&[&format!("{gallery_url}?access_token=s3cret-token")]).0,
        200
    );
    assert_eq!(curl(&[&server.url("/healthz")]).0, 200);
    let (status, body) = curl(&[
        "-H",
        "Authorization: Bearer s3cret-token",
        "--data-binary",
        &format!("@{frame_s}"),
        &server.url("/v1/gallery/Token%20Holder?modality=photo"),
    ]);
    assert_eq!(status, 201, "writes are allowed with a token: {body}");
    assert!(server.terminate().success());

    // Neither a token nor --allow-writes: reads work, writes are refused.
    let server = Server::start(&gallery, &["--api-workers", "1"]);
    assert_eq!(curl(&[&server.url("/v1/gallery")]).0, 200);
    let (status, body) = curl(&[
        "--data-binary",
        &format!("@{frame_s}"),
        &server.url("/v1/gallery/Anyone?modality=photo"),
    ]);
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        curl(&["-X", "DELETE", &server.url("/v1/gallery/Token%20Holder")]).0,
        403
    );
    assert!(server.terminate().success());
}

/// Server-Sent Events read by curl on a thread: (event name, data) pairs.
fn listen(url: &str) -> (Child, mpsc::Receiver<(String, Value)>) {
    let mut child = Command::new("curl")
        .args(["-sN", url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut event = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(name) = line.strip_prefix("event: ") {
                event = name.to_string();
            } else if let Some(data) = line.strip_prefix("data: ")
                && tx.send((event.clone(), json(data))).is_err()
            {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits up to `limit` for an event `done` accepts; every frame event seen goes to `frames`.
fn wait_event(
    rx: &mpsc::Receiver<(String, Value)>,
    limit: Duration,
    mut done: impl FnMut(&str, &Value) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((name, data)) if done(&name, &data) => return Some(data),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// The first JPEG of an MJPEG stream (`--max-time` seconds of it).
fn first_mjpeg_frame(url: &str) -> image::RgbImage {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "3", url])
        .output()
        .unwrap();
    let bytes = out.stdout;
    let head = b"Content-Length: ";
    let at = bytes
        .windows(head.len())
        .position(|w| w == head)
        .expect("a part header");
    let rest = &bytes[at + head.len()..];
    let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let length: usize = std::str::from_utf8(&rest[..end])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let jpeg = &rest[end + 4..end + 4 + length];
    image::load_from_memory(jpeg).unwrap().to_rgb8()
}

#[test]
fn a_live_stream_follows_an_api_enrolment_and_shows_in_events_mjpeg_metrics_and_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let gallery = demo_gallery(dir.path());
    carivis(&[
        "gallery",
        "remove",
        gallery.to_str().unwrap(),
        "--name",
        "Barack Obama",
    ]);
    let frame = sample_frame(dir.path(), 5.0);
    let jsonl = dir.path().join("streams.jsonl");
    let server = Server::start(
        &gallery,
        &[
            "--input",
            repo(SAMPLE).to_str().unwrap(),
            "--loop",
            "--allow-writes",
            "--jsonl",
            jsonl.to_str().unwrap(),
        ],
    );
    let (mut sse, events) = listen(&server.url("/v1/events"));

    // Before the enrolment the face is a stranger.
    let mut strangers = 0;
    let seen = wait_event(&events, Duration::from_secs(30), |name, data| {
        if name == "frame" && data["faces"][0]["decided"] == true {
            assert!(data["faces"][0]["identity"].is_null(), "{data}");
            strangers += 1;
        }
        strangers >= 25
    });
    assert!(seen.is_some(), "no decided frames of the stranger");

    // An enrolment through the API: the running stream uses it at once.
    let enrolled = Instant::now();
    let (status, body) = curl(&[
        "--data-binary",
        &format!("@{}", frame.display()),
        &server.url("/v1/gallery/Barack%20Obama?modality=photo"),
    ]);
    assert_eq!(status, 201, "{body}");
    let answered = enrolled.elapsed();
    let labelled = wait_event(&events, Duration::from_secs(10), |name, data| {
        name == "frame" && data["faces"][0]["frame_identity"] == "Barack Obama"
    });
    let first_label = enrolled.elapsed();
    assert!(
        labelled.is_some(),
        "the stream never matched the enrolled person"
    );
    let decision = wait_event(&events, Duration::from_secs(15), |name, data| {
        name == "decision" && data["identity"] == "Barack Obama"
    })
    .expect("an SSE decision for Barack Obama");
    eprintln!(
        "enrolment answered in {:.2} s; first frame matched {:.2} s after the request; decision: {decision}",
        answered.as_secs_f64(),
        first_label.as_secs_f64()
    );
    assert!(
        first_label < answered + Duration::from_secs(2),
        "{first_label:?}"
    );

    // The live view: whole annotated frames.
    let view = first_mjpeg_frame(&server.url("/v1/streams/0.mjpeg"));
    assert_eq!(view.dimensions(), (1280, 720));

    // A client that connects and never reads loses frames; the stream keeps its rate.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        stalled,
        "GET /v1/streams/0.mjpeg HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let (_, text) = curl(&[&server.url("/metrics")]);
    let fps = metric(&text, "carivis_stream_fps{source=\"0\"").unwrap();
    let lost = metric(&text, "carivis_client_dropped_total").unwrap();
    eprintln!("with a stalled MJPEG client: {fps:.1} fps, {lost} frames not sent to slow clients");
    assert!(fps >= 20.0, "the stream slowed to {fps} fps\n{text}");
    assert!(lost > 0.0, "{text}");
    assert!(metric(&text, "carivis_queue_depth{queue=\"capture_detect\"}").is_some());
    assert!(metric(&text, "carivis_stream_latency_ms{source=\"0\"").is_some());

    // The page, in headless Chromium: the labelled stream and the gallery.
    let (screenshot, caption) = browse(dir.path(), &server.url("/"));
    assert!(
        caption.contains("Barack Obama"),
        "stream caption {caption:?}"
    );
    let green = known_label_pixels(&screenshot);
    eprintln!(
        "screenshot {}: {green} pixels of the known-face colour",
        screenshot.display()
    );
    assert!(green > 300, "the screenshot shows no labelled face");

    // SIGTERM with clients connected: streams end, sinks close, exit 0.
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    drop(stalled);
    let sse_status = sse.wait().unwrap();
    assert!(
        sse_status.success(),
        "the SSE stream ended cleanly: {sse_status:?}"
    );
    let lines = std::fs::read_to_string(&jsonl).expect("the JSON Lines file is complete");
    assert!(lines.lines().count() > 100);
    drop(events);
}

/// Headless Chromium driven by chromedriver (WebDriver is plain HTTP, spoken here with curl).
struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (chromium-driver, installed by scripts/setup)");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while curl(&[&format!("{base}/status")]).0 != 200 {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "eager",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1300,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ]},
        }}});
        let (status, body) = curl(&["-d", &capabilities.to_string(), &format!("{base}/session")]);
        assert_eq!(status, 200, "no browser session: {body}");
        let session = json(&body)["value"]["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        Browser {
            driver,
            base,
            session,
            _profile: profile,
        }
    }

    /// A WebDriver command on the session: its `value`.
    fn command(&self, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let (status, text) = match body {
            Some(body) => curl(&["-d", &body.to_string(), &url]),
            None => curl(&[&url]),
        };
        assert_eq!(status, 200, "{path}: {text}");
        json(&text)["value"].clone()
    }

    fn open(&self, url: &str) {
        self.command("/url", Some(serde_json::json!({ "url": url })));
    }

    fn eval(&self, script: &str) -> Value {
        self.command(
            "/execute/sync",
            Some(serde_json::json!({ "script": script, "args": [] })),
        )
    }

    /// The page as a PNG file.
    fn screenshot(&self, path: &Path) {
        let encoded = self.command("/screenshot", None);
        let mut decode = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = decode.stdin.take().unwrap();
        let text = encoded.as_str().unwrap().to_string();
        let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()).unwrap());
        let out = decode.wait_with_output().unwrap();
        writer.join().unwrap();
        std::fs::write(path, out.stdout).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = curl(&["-X", "DELETE", &url]);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Opens the page, waits until stream 0's caption names Barack Obama and its image has
/// frames, and takes a screenshot; the screenshot's path and the caption.
fn browse(dir: &Path, url: &str) -> (PathBuf, String) {
    let browser = Browser::start();
    browser.open(url);
    let caption = "return (document.getElementById('labels-0') || {}).textContent || ''";
    let image = "const i = document.querySelector('figure img'); return !!i && i.naturalWidth > 0";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = browser
            .eval(caption)
            .as_str()
            .unwrap_or_default()
            .to_string();
        if text.contains("Barack Obama") && browser.eval(image) == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let shot = dir.join("page.png");
    browser.screenshot(&shot);
    (shot, text)
}

/// Pixels near the colour of a known face's box and label.
fn known_label_pixels(path: &Path) -> usize {
    let image = image::open(path).unwrap().to_rgb8();
    image
        .pixels()
        .filter(|p| {
            let [r, g, b] = p.0.map(i32::from);
            (r - 40).abs() < 30 && (g - 200).abs() < 30 && (b - 60).abs() < 30
        })
        .count()
}
