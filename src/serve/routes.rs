//! The routes, their handlers, authentication and request counting. Errors are JSON objects
//! `{"error": "..."}` with the status that says whose fault it is: 400 not an image or a bad
//! request, 401 no or wrong token, 403 writes not allowed, 404 no such person or stream, 413
//! body too large, 422 an image that is too large or has no usable face, 500/503 ours.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Multipart, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Service;
use super::metrics::{Scrape, render};
use super::pool::PoolError;
use crate::capture::{ImageError, decode_image_within};
use crate::files::sha256_hex;
use crate::gallery::{Gallery, GalleryError, NewEntry, check_name};
use crate::pipeline::answers::{
    self, AnswerError, FaceChoice, IdentifiedImage, IdentifyOptions, Side,
};
use crate::types::{Modality, RgbImage};

/// The boundary between the frames of a live view.
const BOUNDARY: &str = "carivisframe";
/// The single page: live streams, the gallery, an enrol form.
const PAGE: &str = include_str!("page.html");
/// What the image of a request is called in answers and errors (the CLI prints the path).
const BODY_NAME: &str = "-";

/// An error answer: a status and a message.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl ToString) -> Self {
        Self {
            status,
            message: message.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!("{}: {}", self.status, self.message);
        }
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let status = match e {
            ImageError::TooLarge { .. } | ImageError::TooSmall { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ImageError::Decode { .. } | ImageError::Io { .. } => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e)
    }
}

impl From<AnswerError> for ApiError {
    fn from(e: AnswerError) -> Self {
        let status = match &e {
            AnswerError::NoFace | AnswerError::SeveralFaces(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AnswerError::BadBox => StatusCode::BAD_REQUEST,
            AnswerError::Gallery(g) => return g.into(),
            AnswerError::Still(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e)
    }
}

impl From<&GalleryError> for ApiError {
    fn from(e: &GalleryError) -> Self {
        let status = match e {
            GalleryError::UnknownName(_) => StatusCode::NOT_FOUND,
            GalleryError::BadName { .. } => StatusCode::BAD_REQUEST,
            GalleryError::Busy { .. }
            | GalleryError::PgUnreachable { .. }
            | GalleryError::Pg { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e)
    }
}

impl From<GalleryError> for ApiError {
    fn from(e: GalleryError) -> Self {
        (&e).into()
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let status = match e {
            PoolError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            PoolError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e)
    }
}

type Shared = State<Arc<Service>>;

/// Every route, with authentication on `/v1/`, the body limit, and request counting.
pub fn router(service: Arc<Service>) -> Router {
    let v1 = Router::new()
        .route("/v1/identify", post(identify))
        .route("/v1/verify", post(verify))
        .route("/v1/gallery", get(gallery))
        .route("/v1/gallery/{name}", post(enrol).delete(remove))
        .route("/v1/streams/{file}", get(live_view))
        .route("/v1/events", get(events))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&service),
            authorize,
        ));
    Router::new()
        .merge(v1)
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&service),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(service.config.max_body))
        .with_state(service)
}

/// Counts every answer by route (the route's pattern, never the raw path) and status.
async fn count_requests(State(service): Shared, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    service.metrics.count(&route, response.status().as_u16());
    response
}

/// The token a request presents: `Authorization: Bearer TOKEN`, or `?access_token=TOKEN`
/// (RFC 6750 §2.3) for what a browser cannot give headers to (`<img>`, `EventSource`).
fn presented_token(request: &Request) -> Option<String> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    #[derive(Deserialize)]
    struct TokenQuery {
        access_token: Option<String>,
    }
    header.or_else(|| {
        Query::<TokenQuery>::try_from_uri(request.uri())
            .ok()
            .and_then(|q| q.0.access_token)
    })
}

/// Compares two secrets in time that depends on neither (both are hashed first, so not even
/// their lengths show).
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.ct_eq(&b).into()
}

/// `/v1/` needs the token when one is set; without a token, gallery writes need
/// `--allow-writes`.
async fn authorize(State(service): Shared, request: Request, next: Next) -> Response {
    match &service.config.token {
        Some(token) => {
            if !presented_token(&request).is_some_and(|given| same_secret(&given, token)) {
                let mut response = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong token: send Authorization: Bearer <token>",
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
        }
        None => {
            let write = matches!(*request.method(), Method::POST | Method::DELETE)
                && request.uri().path().starts_with("/v1/gallery/");
            if write && !service.config.allow_writes {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "gallery writes are off: start the service with --token-file, or --allow-writes",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// Decodes a request's image within the service's pixel cap.
fn decode(bytes: &[u8], name: &str, max_pixels: u64) -> Result<RgbImage, ApiError> {
    Ok(decode_image_within(bytes, Path::new(name), max_pixels)?)
}

#[derive(Deserialize)]
struct IdentifyQuery {
    modality: Option<Modality>,
    top_k: Option<usize>,
}

/// `POST /v1/identify`: the body is one image; the answer is `carivis identify --json`'s
/// object for it.
async fn identify(
    State(service): Shared,
    Query(query): Query<IdentifyQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let gallery = service.gallery.current();
    let (thresholds, max_pixels) = (service.config.thresholds, service.config.max_pixels);
    let top_k = query.top_k.unwrap_or(service.config.top_k);
    let faces = service
        .recognizers
        .run(move |faces| -> Result<_, ApiError> {
            let image = decode(&body, BODY_NAME, max_pixels)?;
            let options = IdentifyOptions {
                modality: query.modality.unwrap_or(Modality::Photo),
                thresholds: thresholds.as_ref(),
                top_k,
            };
            Ok(answers::identify(faces, &gallery, &image, options)?)
        })
        .await??;
    let answer = IdentifiedImage {
        image: Path::new(BODY_NAME),
        faces,
    };
    Ok(axum::Json(answer).into_response())
}

/// One image part of a verify request.
struct Part {
    /// The part's file name, or its field name.
    name: String,
    bytes: Bytes,
}

/// `POST /v1/verify`: multipart parts `a` and `b` (images) and optionally `modality_a`,
/// `modality_b`; the answer is `carivis verify --json`'s object.
async fn verify(
    State(service): Shared,
    mut multipart: Multipart,
) -> Result<axum::Json<Value>, ApiError> {
    let multipart_error =
        |e: axum::extract::multipart::MultipartError| ApiError::new(e.status(), e.body_text());
    let (mut a, mut b) = (None, None);
    let (mut modality_a, mut modality_b) = (Modality::Photo, Modality::Photo);
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let field_name = field.name().unwrap_or_default().to_string();
        let file_name = field.file_name().map(str::to_string);
        let bytes = field.bytes().await.map_err(multipart_error)?;
        let part = || Part {
            name: file_name.clone().unwrap_or_else(|| field_name.clone()),
            bytes: bytes.clone(),
        };
        match field_name.as_str() {
            "a" => a = Some(part()),
            "b" => b = Some(part()),
            "modality_a" => modality_a = parse_modality(&field_name, &bytes)?,
            "modality_b" => modality_b = parse_modality(&field_name, &bytes)?,
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown part {other:?}: expected a, b, modality_a, modality_b"),
                ));
            }
        }
    }
    let missing = |which: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("part {which:?} (an image) is missing"),
        )
    };
    let (a, b) = (
        a.ok_or_else(|| missing("a"))?,
        b.ok_or_else(|| missing("b"))?,
    );
    let max_pixels = service.config.max_pixels;
    let (name_a, name_b) = (a.name.clone(), b.name.clone());
    let answer = service
        .recognizers
        .run(move |faces| -> Result<_, ApiError> {
            let image_a = decode(&a.bytes, &a.name, max_pixels)?;
            let image_b = decode(&b.bytes, &b.name, max_pixels)?;
            answers::verify(
                faces,
                Side {
                    image: &image_a,
                    modality: modality_a,
                },
                Side {
                    image: &image_b,
                    modality: modality_b,
                },
                None,
            )
            .map_err(|(side, e)| {
                let error = ApiError::from(*e);
                let name = if side == 0 { &a.name } else { &b.name };
                ApiError::new(error.status, format!("{name}: {}", error.message))
            })
        })
        .await??;
    Ok(axum::Json(json!({
        "a": name_a, "b": name_b, "similarity": answer.similarity,
        "threshold": answer.threshold, "branch": answer.branch,
        "same_person": answer.same_person,
    })))
}

fn parse_modality(part: &str, bytes: &[u8]) -> Result<Modality, ApiError> {
    match std::str::from_utf8(bytes).map(str::trim) {
        Ok("photo") => Ok(Modality::Photo),
        Ok("caricature") => Ok(Modality::Caricature),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("part {part:?} must be photo or caricature"),
        )),
    }
}

/// `GET /v1/gallery`: the people and their entries per modality.
async fn gallery(State(service): Shared) -> axum::Json<Value> {
    let gallery = service.gallery.current();
    axum::Json(json!({
        "gallery": service.location.to_string(),
        "model": gallery.model(),
        "entries": gallery.entries().len(),
        "people": gallery.people(),
    }))
}

#[derive(Deserialize)]
struct EnrolQuery {
    modality: Option<Modality>,
    #[serde(default)]
    largest: bool,
}

/// `POST /v1/gallery/{name}?modality=photo|caricature[&largest=true]`: enrols the body's face
/// with `gallery add`'s checks; the running streams match against it at once.
async fn enrol(
    State(service): Shared,
    axum::extract::Path(name): axum::extract::Path<String>,
    Query(query): Query<EnrolQuery>,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    check_name(&name)?;
    let modality = query.modality.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "say what the image is: ?modality=photo or ?modality=caricature",
        )
    })?;
    let max_pixels = service.config.max_pixels;
    let sha256 = sha256_hex(&body);
    let found = service
        .recognizers
        .run(move |faces| -> Result<_, ApiError> {
            let image = decode(&body, BODY_NAME, max_pixels)?;
            let choice = FaceChoice::Detected {
                largest: query.largest,
            };
            Ok(answers::enrolment_face(faces, &image, choice)?)
        })
        .await??;
    let entry = NewEntry {
        name: name.clone(),
        modality,
        source: PathBuf::from(format!("upload:{sha256}")),
        source_sha256: sha256,
        bbox: found.face.bbox.to_array(),
        landmarks: (found.enrolment == crate::gallery::store::Enrolment::FivePoint)
            .then_some(found.face.landmarks),
        enrolment: found.enrolment,
    };
    let (id, entries) = change_gallery(&service, move |gallery| {
        gallery.add(entry, &found.embedding)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "name": name, "modality": modality, "id": id, "entries": entries })),
    ))
}

/// `DELETE /v1/gallery/{name}`: removes every entry of the person.
async fn remove(
    State(service): Shared,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let who = name.clone();
    let (removed, entries) = change_gallery(&service, move |gallery| gallery.remove(&who)).await?;
    Ok(axum::Json(
        json!({ "name": name, "removed": removed, "entries": entries }),
    ))
}

/// Opens the gallery for writing, applies `change`, saves (one transaction, or one new
/// generation of a folder), and hands the saved gallery to the requests and the streams.
async fn change_gallery<R: Send + 'static>(
    service: &Arc<Service>,
    change: impl FnOnce(&mut Gallery) -> Result<R, GalleryError> + Send + 'static,
) -> Result<(R, usize), ApiError> {
    let _writer = service.writer.lock().await;
    let (location, timeout) = (service.location.clone(), service.config.lock_timeout);
    let model = service.gallery.current().model().clone();
    let saved = tokio::task::spawn_blocking(move || -> Result<_, GalleryError> {
        let mut gallery = Gallery::open_for_update(&location, timeout)?;
        gallery.check_model(&model)?;
        let result = change(&mut gallery)?;
        gallery.save()?;
        drop(gallery);
        let saved = Gallery::open(&location, &model)?;
        // Built here, off the async workers: a large gallery's graph takes minutes.
        saved.build_indexes();
        Ok((result, saved))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))??;
    let (result, gallery) = saved;
    let entries = gallery.entries().len();
    service.gallery.replace(gallery);
    Ok((result, entries))
}

/// `GET /v1/streams/{i}.mjpeg`: source i's annotated frames as an MJPEG stream.
async fn live_view(
    State(service): Shared,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no stream {file:?}: streams are 0.mjpeg … {}.mjpeg",
                service.hub.source_count().saturating_sub(1)
            ),
        )
    };
    let source: usize = file
        .strip_suffix(".mjpeg")
        .and_then(|i| i.parse().ok())
        .ok_or_else(not_found)?;
    if source >= service.hub.source_count() {
        return Err(not_found());
    }
    let frames = service
        .hub
        .watch(source)
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the service is stopping"))?;
    let first = service.hub.latest(source);
    let parts = stream::iter(first.map(mjpeg_part).map(Ok::<_, Infallible>)).chain(stream::unfold(
        frames,
        |mut frames| async move {
            let jpeg = frames.recv().await?;
            Some((Ok(mjpeg_part(jpeg)), frames))
        },
    ));
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("multipart/x-mixed-replace; boundary={BOUNDARY}"))
            .expect("a valid header"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok((headers, Body::from_stream(parts)).into_response())
}

/// One frame of an MJPEG stream, with its part header.
fn mjpeg_part(jpeg: Bytes) -> Bytes {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        jpeg.len()
    );
    let mut part = Vec::with_capacity(head.len() + jpeg.len() + 2);
    part.extend_from_slice(head.as_bytes());
    part.extend_from_slice(&jpeg);
    part.extend_from_slice(b"\r\n");
    Bytes::from(part)
}

/// `GET /v1/events`: Server-Sent Events: `frame` (a JSON Lines line), `decision` (a track's
/// identity decided or changed), `source_status` and `gallery_status`.
async fn events(
    State(service): Shared,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let events = service
        .hub
        .listen()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the service is stopping"))?;
    let stream = stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        Some((
            Ok(Event::default().event(event.kind).data(event.data)),
            events,
        ))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `GET /`: the page.
async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// `GET /healthz`: up, with the streams and the gallery's size.
async fn healthz(State(service): Shared) -> axum::Json<Value> {
    axum::Json(json!({
        "status": "ok",
        "streams": service.hub.source_count(),
        "gallery_entries": service.gallery.current().entries().len(),
    }))
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(service): Shared) -> impl IntoResponse {
    let sources = service.hub.figures();
    let text = render(&Scrape {
        sources: &sources,
        queues: &service.queues,
        clients: service.hub.clients(),
        client_drops: service.hub.client_drops(),
        gallery_entries: service.gallery.current().entries().len(),
        http: &service.metrics,
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cret", "s3cre"));
        assert!(!same_secret("", "s3cret"));
    }

    #[test]
    fn an_mjpeg_part_carries_its_length_and_boundary() {
        let part = mjpeg_part(Bytes::from_static(b"JPEG"));
        assert_eq!(
            &part[..],
            b"--carivisframe\r\nContent-Type: image/jpeg\r\nContent-Length: 4\r\n\r\nJPEG\r\n"
        );
    }

    #[test]
    fn image_problems_map_to_the_client_statuses() {
        let too_large = decode_image_within(
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/golden/dlib_astronaut_chip.png"
            ))
            .unwrap(),
            Path::new("-"),
            100,
        )
        .unwrap_err();
        assert_eq!(
            ApiError::from(too_large).status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let garbage = decode_image_within(b"not an image", Path::new("-"), 1000).unwrap_err();
        assert_eq!(ApiError::from(garbage).status, StatusCode::BAD_REQUEST);
        assert_eq!(
            ApiError::from(AnswerError::NoFace).status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
