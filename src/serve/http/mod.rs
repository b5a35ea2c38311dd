//! The HTTP side: KServe v2 (Open Inference Protocol, with Triton's binary tensor data
//! extension) and TensorFlow Serving REST on one port, and `GET /metrics`.
//!
//! Every error is an HTTP status with the body `{"error": "..."}` (both protocols'
//! format): routes that do not exist, methods a route does not take (with `Allow`),
//! bodies over the limit and the rejections of axum's own extractors included. Only
//! what hyper refuses before routing (a request that does not parse, headers over its
//! limits) is answered by hyper, without a body.

mod binary;
mod kserve;
mod listen;
mod tfserving;

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};

use super::metrics::Metrics;
use super::repository::Repository;
use super::types::ServeError;

pub(crate) use listen::serve;

/// What every handler shares.
pub(crate) struct AppState {
    pub repository: Arc<Repository>,
    pub metrics: Metrics,
    /// Set once the first poll has loaded what it could.
    pub ready: AtomicBool,
    /// [`ServeConfig::strict_readiness`](super::ServeConfig::strict_readiness).
    pub strict_readiness: bool,
    /// KiB of request bodies held at once, being received or decoded
    /// ([`body_budget_kib`]): each takes room as its bytes arrive (its buffer's
    /// capacity) and keeps it until it is decoded, so the memory of bodies in the
    /// server is bounded, and a client holds only room for what it has sent.
    pub bodies: tokio::sync::Semaphore,
}

/// The KiB of request bodies held at once: two bodies of the largest size
/// taken, and at least 16 MiB (a JSON body decodes to about twenty times its size;
/// decoding is bound by the cores anyway).
pub(crate) fn body_budget_kib(max_body_bytes: usize) -> usize {
    (max_body_bytes.saturating_mul(2).max(16 << 20) / 1024).min(u32::MAX as usize)
}

impl AppState {
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// The largest request body taken, in bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimit(pub usize);

/// The routes of both protocols, with the body limit.
pub(crate) fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .merge(kserve::routes())
        .merge(tfserving::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::map_response(json_errors))
        .layer(Extension(BodyLimit(max_body_bytes)))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn metrics(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn no_route(method: Method, uri: Uri) -> ServeError {
    ServeError::NotFound(format!(
        "no endpoint {method} {}; this server speaks KServe v2 (/v2/...) and TensorFlow \
         Serving REST (/v1/models/...)",
        crate::error::excerpt(uri.path())
    ))
}

/// A method a route does not take: 405 (axum adds the route's `Allow`).
async fn wrong_method(method: Method, uri: Uri) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(serde_json::json!({
            "error": format!(
                "{} does not take {method}",
                crate::error::excerpt(uri.path())
            )
        })),
    )
        .into_response()
}

/// 405 for a path that one route serves for several endpoints (TensorFlow Serving's
/// `/v1/models/...`): `Allow` names the method the endpoint takes.
pub(crate) fn wrong_method_for(method: &Method, uri: &Uri, allow: &'static str) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, allow)],
        Json(serde_json::json!({
            "error": format!(
                "{} does not take {method}; it takes {allow}",
                crate::error::excerpt(uri.path())
            )
        })),
    )
        .into_response()
}

/// Every error the router answers is `{"error": "..."}`: the rejections of axum's own
/// extractors (a path segment that is not UTF-8 once percent-decoded) are plain text,
/// so an error response that is not JSON gets its text (or its status' reason) as
/// the `error`, with its status and its other headers (`Allow`) kept.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    let error = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        crate::error::excerpt(&text)
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut answer = Json(serde_json::json!({ "error": error })).into_response();
    *answer.status_mut() = status;
    for (name, value) in parts.headers.iter() {
        answer.headers_mut().insert(name.clone(), value.clone());
    }
    answer
}

/// An error as both protocols send it: its status and `{"error": "..."}`.
impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// Counts a request's outcome in the metrics and passes its result on.
pub(crate) fn counted<T>(
    state: &AppState,
    model: &str,
    version: &str,
    received: Instant,
    result: Result<T, ServeError>,
) -> Result<T, ServeError> {
    let outcome = match &result {
        Ok(_) => "success",
        Err(e) => e.outcome(),
    };
    // Labels come from the request's path: a failed request is labelled with its model
    // only when the repository knows it, and with no version, so that requests for
    // made-up names cannot grow the metrics without bound.
    let (model, version) = match &result {
        Ok(_) => (model, version),
        Err(_) if state.repository.knows(model) => (model, ""),
        Err(_) => ("", ""),
    };
    state
        .metrics
        .request(model, version, outcome, received.elapsed());
    result
}

/// Reads a request body of at most `limit` bytes, taking room in `bodies` (KiB) for
/// its buffer as its bytes arrive; the room comes back with the body and is held
/// until the request is decoded. A larger body is refused with 413 (JSON, as every
/// error), and one that finds no room left with 503 at once (the room it had given
/// back); the rest of such a body is read and dropped first when it is at most four
/// times the limit (64 MiB at most), so that a client that sends the whole body before
/// reading the answer gets the answer rather than a reset connection.
pub(crate) async fn read_body<'a>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    bodies: &'a tokio::sync::Semaphore,
) -> Result<(Vec<u8>, Option<tokio::sync::SemaphorePermit<'a>>), ServeError> {
    // A client that stops sending mid-body holds no task (and no shutdown) for long.
    match tokio::time::timeout(BODY_TIMEOUT, read_body_now(headers, body, limit, bodies)).await {
        Ok(result) => result,
        Err(_) => Err(ServeError::RequestTimeout(format!(
            "the request body was not received within {} s",
            BODY_TIMEOUT.as_secs()
        ))),
    }
}

/// How long a request's body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn read_body_now<'a>(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    bodies: &'a tokio::sync::Semaphore,
) -> Result<(Vec<u8>, Option<tokio::sync::SemaphorePermit<'a>>), ServeError> {
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes());
        if !encoding.trim().eq_ignore_ascii_case("identity") {
            return Err(ServeError::BadRequest(format!(
                "Content-Encoding '{}' is not supported; send the body uncompressed",
                crate::error::excerpt(&encoding)
            )));
        }
    }
    let drain_cap = limit.saturating_mul(4).clamp(1 << 20, 64 << 20);
    let too_large = |size: Option<u64>| {
        ServeError::PayloadTooLarge(match size {
            Some(size) => format!("the request body is {size} bytes; the limit is {limit} bytes"),
            None => format!("the request body is over the limit of {limit} bytes"),
        })
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(declared) = declared.filter(|&d| d > limit as u64) {
        if declared <= drain_cap as u64 {
            drain(&mut body, drain_cap).await;
        }
        return Err(too_large(Some(declared)));
    }
    let mut out: Vec<u8> = Vec::new();
    let mut room: Option<tokio::sync::SemaphorePermit<'a>> = None;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| {
            ServeError::BadRequest(format!("the request body could not be read: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let got = out.len() + data.len();
        if got > limit {
            drain(&mut body, drain_cap.saturating_sub(got)).await;
            return Err(too_large(None));
        }
        if got > out.capacity() {
            // The buffer grows by doubling, never past the limit; its room is taken
            // before it grows.
            let capacity = got.max(out.capacity() * 2).min(limit);
            if !take_room(bodies, &mut room, capacity) {
                drop(room.take());
                drain(&mut body, drain_cap.saturating_sub(got)).await;
                return Err(ServeError::Unavailable(
                    "the server holds as many request bodies as it takes at once; try again"
                        .to_string(),
                ));
            }
            out.try_reserve_exact(capacity - out.len()).map_err(|_| {
                ServeError::Internal(format!("could not allocate {capacity} bytes for a body"))
            })?;
        }
        out.extend_from_slice(&data);
    }
    if room.is_none() && !take_room(bodies, &mut room, 1) {
        return Err(ServeError::Unavailable(
            "the server holds as many request bodies as it takes at once; try again".to_string(),
        ));
    }
    Ok((out, room))
}

/// Grows `room` to cover `bytes` (in KiB, at least 1) without waiting: false when the
/// budget has not that much left (`room` is then as it was).
fn take_room<'a>(
    bodies: &'a tokio::sync::Semaphore,
    room: &mut Option<tokio::sync::SemaphorePermit<'a>>,
    bytes: usize,
) -> bool {
    let want = bytes.div_ceil(1024).max(1);
    let held = room
        .as_ref()
        .map_or(0, tokio::sync::SemaphorePermit::num_permits);
    if want <= held {
        return true;
    }
    let Ok(more) = u32::try_from(want - held) else {
        return false;
    };
    match bodies.try_acquire_many(more) {
        Ok(permit) => {
            match room {
                Some(r) => r.merge(permit),
                None => *room = Some(permit),
            }
            true
        }
        Err(_) => false,
    }
}

/// Reads and drops up to `cap` more bytes of `body`.
async fn drain(body: &mut Body, cap: usize) {
    let mut read = 0usize;
    while read <= cap {
        match poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    read += data.len();
                }
            }
            _ => return,
        }
    }
}

/// The element types an input may have on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Element {
    Fp32,
    Fp64,
}

impl Element {
    /// Bytes per value.
    pub(crate) fn size(self) -> usize {
        match self {
            Element::Fp32 => 4,
            Element::Fp64 => 8,
        }
    }
}

/// A value of input `input` at flat index `index` as f32: a finite value that rounds
/// to a finite float32 (the shortest decimal of `f32::MAX`, `3.4028235e38`, is a
/// little above it and rounds to it), or a 400 naming the index and the value.
pub(crate) fn checked(input: &str, value: f64, index: usize) -> Result<f32, ServeError> {
    let rounded = value as f32;
    if value.is_finite() && rounded.is_finite() {
        return Ok(rounded);
    }
    Err(ServeError::BadRequest(format!(
        "input '{}' value {value} at index {index} is not a finite float32 \
         (NaN, infinities and magnitudes that round beyond {:e} are refused)",
        crate::error::excerpt(input),
        f32::MAX
    )))
}

/// A request body that must be one JSON object (both protocols' requests are).
pub(crate) fn json_object(
    body: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, ServeError> {
    let parsed: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ServeError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    match parsed {
        serde_json::Value::Object(map) => Ok(map),
        other => Err(ServeError::BadRequest(format!(
            "the request is {}; expected a JSON object",
            quote(&other)
        ))),
    }
}

/// A JSON value quoted in an error, at most 200 characters.
pub(crate) fn quote(value: &serde_json::Value) -> String {
    crate::error::excerpt(&value.to_string())
}

/// f32 values as JSON numbers written with f32's shortest round-trip digits
/// (`0.98962557`, not the f64 widening's `0.9896255731582642`), NaN and infinities as
/// `null`.
pub(crate) fn f32_json(values: &[f32]) -> serde_json::Value {
    serde_json::Value::Array(
        values
            .iter()
            .map(|v| {
                // `Display` of an f32 is its shortest decimal that reads back as it;
                // read as f64, serde_json writes that decimal again.
                format!("{v}")
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    /// f32's own shortest digits, not the f64 widening's; non-finite values as null;
    /// every value reads back as the same f32.
    #[test]
    fn f32_values_are_written_with_f32_digits() {
        let values = [
            0.989_625_6_f32,
            1e-7,
            -3.5,
            f32::MAX,
            f32::NAN,
            f32::INFINITY,
        ];
        let text = super::f32_json(&values).to_string();
        assert_eq!(text, "[0.9896256,1e-7,-3.5,3.4028235e+38,null,null]");
        let back: Vec<Option<f64>> = serde_json::from_str(&text).unwrap();
        for (v, b) in values.iter().zip(back) {
            match b {
                Some(b) => assert_eq!(b as f32, *v),
                None => assert!(!v.is_finite()),
            }
        }
    }

    /// What the server writes it reads: the shortest decimal of `f32::MAX` (above
    /// it in f64) is accepted as `f32::MAX`; a value that rounds to infinity, and
    /// non-finite ones, are refused.
    #[test]
    fn values_that_round_to_a_finite_f32_are_accepted() {
        let max: f64 = "3.4028235e38".parse().unwrap();
        assert!(max > f64::from(f32::MAX));
        assert_eq!(super::checked("x", max, 0).unwrap(), f32::MAX);
        assert_eq!(super::checked("x", -max, 0).unwrap(), -f32::MAX);
        for bad in [3.5e38, f64::NAN, f64::INFINITY, -1e39] {
            let e = super::checked("x", bad, 7).unwrap_err().to_string();
            assert!(e.contains("index 7"), "{bad}: {e}");
        }
    }
}
