//! `carivis serve`: the HTTP service. It answers still-image requests (identify, verify,
//! enrol) with the same stages and answers as the command line, and shows the running
//! pipeline's streams (MJPEG), decisions (Server-Sent Events) and figures (Prometheus) by
//! reading its output like any other sink ([`hub`]).
//!
//! The protocol is axum on tokio; models run on a small pool of blocking threads
//! ([`pool::Pool`]), so slow inference never holds up the async workers that serve the
//! streams.

pub mod hub;
mod metrics;
mod pool;
mod routes;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

pub use hub::{Hub, HubSink};
pub use pool::Pool;

use crate::gallery::matching::Thresholds;
use crate::gallery::{Location, SharedGallery};
use crate::pipeline::QueueGauges;
use crate::pipeline::still::StillFaces;

/// Largest request body accepted by default, in bytes (10 MB).
pub const DEFAULT_MAX_BODY: usize = 10 * 1000 * 1000;
/// Largest decoded image accepted by default, in pixels (about 6000×4000).
pub const DEFAULT_MAX_PIXELS: u64 = 25_000_000;
/// Frames or events queued per live-view or event client before that client loses some.
pub const DEFAULT_CLIENT_QUEUE: usize = 8;

/// How the service behaves.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The bearer token every `/v1/` request must carry; `None`: no authentication.
    pub token: Option<String>,
    /// Without a token, whether gallery writes are allowed (they are refused otherwise).
    pub allow_writes: bool,
    /// Largest request body, in bytes (413 above).
    pub max_body: usize,
    /// Largest decoded image, in pixels (422 above).
    pub max_pixels: u64,
    /// Candidates listed per face by identify.
    pub top_k: usize,
    /// Thresholds overriding the gallery's.
    pub thresholds: Option<Thresholds>,
    /// How long an enrolment waits for another writer's gallery lock.
    pub lock_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            token: None,
            allow_writes: false,
            max_body: DEFAULT_MAX_BODY,
            max_pixels: DEFAULT_MAX_PIXELS,
            top_k: 5,
            thresholds: None,
            lock_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything the handlers share.
pub struct Service {
    /// Settings.
    pub config: ServeConfig,
    /// Where the gallery lives (writes reopen it there).
    pub location: Location,
    /// The gallery the requests and the streams match against.
    pub gallery: Arc<SharedGallery>,
    /// Detector, aligner and embedder sets for still-image requests.
    pub recognizers: Pool<StillFaces>,
    /// The running pipeline's output.
    pub hub: Arc<Hub>,
    /// The pipeline's queue depths.
    pub queues: Arc<QueueGauges>,
    /// Requests by route and status.
    metrics: metrics::HttpMetrics,
    /// One gallery writer at a time within this process.
    writer: tokio::sync::Mutex<()>,
}

impl Service {
    /// A service over the given gallery, recognizers and pipeline output.
    pub fn new(
        config: ServeConfig,
        location: Location,
        gallery: Arc<SharedGallery>,
        recognizers: Pool<StillFaces>,
        hub: Arc<Hub>,
        queues: Arc<QueueGauges>,
    ) -> Self {
        Self {
            config,
            location,
            gallery,
            recognizers,
            hub,
            queues,
            metrics: metrics::HttpMetrics::default(),
            writer: tokio::sync::Mutex::new(()),
        }
    }
}

/// How long the requests in flight may take to finish once the service is stopping.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `service` on `listener` until `shutdown` completes; then stops accepting, ends the
/// live streams, and returns once the requests in flight are answered, or after
/// [`SHUTDOWN_GRACE`] (a client that stopped reading a stream cannot hold the service open).
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let hub = Arc::clone(&service.hub);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, routes::router(service))
        .with_graceful_shutdown(async move {
            shutdown.await;
            hub.close();
            let _ = stopping_tx.send(());
        })
        .into_future();
    let grace_over = async move {
        if stopping_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served,
        () = grace_over => {
            tracing::warn!(
                "clients still connected {} s after the stop; closing their connections",
                SHUTDOWN_GRACE.as_secs()
            );
            Ok(())
        }
    }
}
