//! `/metrics` in Prometheus' text format: each stream's frame rate, drops, latency and
//! drop-outs, the pipeline's queue depths, the live-view clients, the gallery's size, and the
//! HTTP requests by route and status.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use super::hub::SourceFigures;
use crate::pipeline::{Queue, QueueGauges};

/// Requests answered, by route and status.
#[derive(Default)]
pub struct HttpMetrics(Mutex<BTreeMap<(String, u16), u64>>);

impl HttpMetrics {
    /// Counts one request to `route` answered with `status`.
    pub fn count(&self, route: &str, status: u16) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<(String, u16), u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What one scrape shows.
pub struct Scrape<'a> {
    /// Each source's figures.
    pub sources: &'a [SourceFigures],
    /// The pipeline's queues.
    pub queues: &'a QueueGauges,
    /// Live-view and event clients connected.
    pub clients: (usize, usize),
    /// Frames and events lost by slow clients.
    pub client_drops: u64,
    /// Entries in the gallery.
    pub gallery_entries: usize,
    /// Requests by route and status.
    pub http: &'a HttpMetrics,
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A per-source family: name, type, help, and how to read its value.
type SourceFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SourceFigures) -> f64,
);

/// The whole text of one scrape.
pub fn render(scrape: &Scrape<'_>) -> String {
    let mut out = String::new();
    let per_source: [SourceFamily; 6] = [
        (
            "carivis_stream_fps",
            "gauge",
            "Frames per second reaching the service, over the last 30 frames.",
            |s| s.fps,
        ),
        (
            "carivis_stream_frames_total",
            "counter",
            "Annotated frames that reached the service.",
            |s| s.frames as f64,
        ),
        (
            "carivis_stream_dropped_frames_total",
            "counter",
            "Frames the pipeline dropped to stay live.",
            |s| s.dropped as f64,
        ),
        (
            "carivis_stream_lost_total",
            "counter",
            "Times the source stopped delivering.",
            |s| s.lost as f64,
        ),
        (
            "carivis_stream_reconnects_total",
            "counter",
            "Times the source was reopened.",
            |s| s.reconnects as f64,
        ),
        (
            "carivis_stream_up",
            "gauge",
            "1 while the source delivers, 0 while it is being reopened.",
            |s| f64::from(u8::from(s.connected)),
        ),
    ];
    for (name, kind, help, value) in per_source {
        family(&mut out, name, kind, help);
        for (i, s) in scrape.sources.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{source=\"{i}\",name=\"{}\"}} {}",
                label(&s.name),
                value(s)
            );
        }
    }
    family(
        &mut out,
        "carivis_stream_latency_ms",
        "summary",
        "Capture-to-service latency over the last 512 frames.",
    );
    for (i, s) in scrape.sources.iter().enumerate() {
        for (quantile, value) in [("0.5", s.latency_ms.0), ("0.99", s.latency_ms.1)] {
            let _ = writeln!(
                out,
                "carivis_stream_latency_ms{{source=\"{i}\",name=\"{}\",quantile=\"{quantile}\"}} {value:.3}",
                label(&s.name)
            );
        }
    }
    family(
        &mut out,
        "carivis_queue_depth",
        "gauge",
        "Frames waiting between pipeline stages.",
    );
    for queue in Queue::ALL {
        let _ = writeln!(
            out,
            "carivis_queue_depth{{queue=\"{}\"}} {}",
            queue.name(),
            scrape.queues.get(queue)
        );
    }
    family(
        &mut out,
        "carivis_clients",
        "gauge",
        "Live-view (mjpeg) and event (sse) clients connected.",
    );
    let _ = writeln!(
        out,
        "carivis_clients{{kind=\"mjpeg\"}} {}",
        scrape.clients.0
    );
    let _ = writeln!(out, "carivis_clients{{kind=\"sse\"}} {}", scrape.clients.1);
    family(
        &mut out,
        "carivis_client_dropped_total",
        "counter",
        "Frames and events not sent because a client did not keep up.",
    );
    let _ = writeln!(out, "carivis_client_dropped_total {}", scrape.client_drops);
    family(
        &mut out,
        "carivis_gallery_entries",
        "gauge",
        "Entries in the gallery.",
    );
    let _ = writeln!(out, "carivis_gallery_entries {}", scrape.gallery_entries);
    family(
        &mut out,
        "carivis_http_requests_total",
        "counter",
        "HTTP requests answered, by route and status.",
    );
    for ((route, status), count) in scrape.http.snapshot() {
        let _ = writeln!(
            out,
            "carivis_http_requests_total{{route=\"{}\",status=\"{status}\"}} {count}",
            label(&route)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_names_every_family_and_escapes_labels() {
        let http = HttpMetrics::default();
        http.count("/v1/identify", 200);
        http.count("/v1/identify", 200);
        http.count("/v1/identify", 413);
        let queues = QueueGauges::default();
        queues.set(Queue::DetectEmbed, 3);
        let sources = [SourceFigures {
            name: "cam \"1\"\nx".into(),
            frames: 10,
            fps: 25.0,
            latency_ms: (12.0, 40.0),
            reconnects: 2,
            connected: true,
            ..SourceFigures::default()
        }];
        let text = render(&Scrape {
            sources: &sources,
            queues: &queues,
            clients: (1, 2),
            client_drops: 5,
            gallery_entries: 7,
            http: &http,
        });
        for line in [
            "carivis_stream_fps{source=\"0\",name=\"cam \\\"1\\\"\\nx\"} 25",
            "carivis_stream_reconnects_total{source=\"0\",name=\"cam \\\"1\\\"\\nx\"} 2",
            "carivis_stream_latency_ms{source=\"0\",name=\"cam \\\"1\\\"\\nx\",quantile=\"0.99\"} 40.000",
            "carivis_queue_depth{queue=\"detect_embed\"} 3",
            "carivis_clients{kind=\"sse\"} 2",
            "carivis_http_requests_total{route=\"/v1/identify\",status=\"200\"} 2",
            "carivis_http_requests_total{route=\"/v1/identify\",status=\"413\"} 1",
            "carivis_gallery_entries 7",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.contains("# TYPE carivis_stream_latency_ms summary"));
    }
}
