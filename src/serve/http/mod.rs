//! The HTTP side: KServe v2 (Open Inference Protocol) and TensorFlow Serving REST on
//! one port, and `GET /metrics`.

mod kserve;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::metrics::Metrics;
use super::repository::Repository;
use super::types::ServeError;

/// What every handler shares.
pub(crate) struct AppState {
    pub repository: Arc<Repository>,
    pub metrics: Metrics,
    /// Set once the first poll has loaded what it could.
    pub ready: AtomicBool,
}

impl AppState {
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// The routes of both protocols, with the body limit.
pub(crate) fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .merge(kserve::routes())
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
    state
        .metrics
        .request(model, version, outcome, received.elapsed());
    result
}
