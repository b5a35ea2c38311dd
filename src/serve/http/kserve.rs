//! KServe v2 / Open Inference Protocol over HTTP/JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{counted, AppState};
use crate::serve::repository::VersionState;
use crate::serve::types::{InferAnswer, InferRequest, MemberState, ServeError, VersionSelector};
use crate::tensor::Tensor;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(version_ready),
        )
        .route("/v2/models/{model}", get(metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(version_metadata),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(version_infer),
        )
}

async fn ready(State(state): State<Arc<AppState>>) -> StatusCode {
    if state.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn version_number(version: &str) -> Result<VersionSelector, ServeError> {
    version
        .parse::<u64>()
        .ok()
        .filter(|&v| v > 0)
        .map(VersionSelector::Number)
        .ok_or_else(|| {
            ServeError::NotFound(format!(
                "version '{}' is not a positive integer",
                crate::error::excerpt(version)
            ))
        })
}

async fn model_ready(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> StatusCode {
    match state.repository.resolve(&model, &VersionSelector::Default) {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::NOT_FOUND,
    }
}

async fn version_ready(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> StatusCode {
    match version_number(&version).and_then(|v| state.repository.resolve(&model, &v)) {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::NOT_FOUND,
    }
}

async fn metadata(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ServeError> {
    model_metadata(&state, &model, VersionSelector::Default)
}

async fn version_metadata(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ServeError> {
    model_metadata(&state, &model, version_number(&version)?)
}

fn model_metadata(
    state: &AppState,
    model: &str,
    selector: VersionSelector,
) -> Result<Json<Value>, ServeError> {
    let served = state.repository.resolve(model, &selector)?;
    let versions: Vec<String> = state
        .repository
        .status(model, None)?
        .into_iter()
        .filter(|s| s.state == VersionState::Available)
        .map(|s| s.version.to_string())
        .collect();
    let batcher = &served.batcher;
    Ok(Json(json!({
        "name": model,
        "versions": versions,
        "platform": "wgpu-ensemble",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, batcher.input_width()]}],
        "outputs": [
            {"name": "output", "datatype": "FP32", "shape": [-1, batcher.output_width()]},
            {"name": "members", "datatype": "FP32", "shape": [batcher.members().len(), -1, batcher.output_width()]},
        ],
    })))
}

async fn infer(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    body: Bytes,
) -> Response {
    run_infer(state, model, VersionSelector::Default, body).await
}

async fn version_infer(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    match version_number(&version) {
        Ok(selector) => run_infer(state, model, selector, body).await,
        Err(e) => e.into_response(),
    }
}

async fn run_infer(
    state: Arc<AppState>,
    model: String,
    selector: VersionSelector,
    body: Bytes,
) -> Response {
    let received = Instant::now();
    let label = match &selector {
        VersionSelector::Number(v) => v.to_string(),
        _ => String::new(),
    };
    let result = answer(&state, &model, &selector, &body, received).await;
    let version = match &result {
        Ok((_, answer)) => answer.version.to_string(),
        Err(_) => label,
    };
    match counted(&state, &model, &version, received, result) {
        Ok((id, answer)) => Json(response(&answer, id)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The request's `id` (echoed) and the answer.
async fn answer(
    state: &AppState,
    model: &str,
    selector: &VersionSelector,
    body: &[u8],
    received: Instant,
) -> Result<(Option<Value>, InferAnswer), ServeError> {
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|e| ServeError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    let (request, id) = decode(&parsed, received)?;
    let (_served, reply) = state.repository.submit(model, selector, request)?;
    let answer = reply
        .await
        .map_err(|_| ServeError::Internal("the version stopped before answering".into()))??;
    Ok((id, answer))
}

/// A KServe v2 inference request as JSON → rows and options.
fn decode(body: &Value, received: Instant) -> Result<(InferRequest, Option<Value>), ServeError> {
    let bad = |m: String| ServeError::BadRequest(m);
    let id = body.get("id").cloned();
    let inputs = body
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the request has no 'inputs' array".into()))?;
    let input = inputs
        .iter()
        .find(|i| i.get("name").and_then(Value::as_str) == Some("input"))
        .ok_or_else(|| bad("the request has no input named 'input'".into()))?;
    let datatype = input.get("datatype").and_then(Value::as_str).unwrap_or("");
    if datatype != "FP32" && datatype != "FP64" {
        return Err(bad(format!(
            "input 'input' has datatype '{}'; expected FP32 or FP64",
            crate::error::excerpt(datatype)
        )));
    }
    let shape: Vec<usize> = input
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
        .ok_or_else(|| bad("input 'input' has no 'shape' of non-negative integers".into()))?;
    let [rows, cols] = shape[..] else {
        return Err(bad(format!(
            "input 'input' has shape {shape:?}; expected [rows, width]"
        )));
    };
    let mut values = Vec::with_capacity(rows.saturating_mul(cols).min(1 << 24));
    flatten(
        input
            .get("data")
            .ok_or_else(|| bad("input 'input' has no 'data'".into()))?,
        &mut values,
    )?;
    if values.len() != rows.saturating_mul(cols) {
        return Err(bad(format!(
            "input 'input' has {} values; its shape [{rows}, {cols}] needs {}",
            values.len(),
            rows.saturating_mul(cols)
        )));
    }
    let tensor = Tensor::matrix(rows, cols, values).map_err(|e| bad(e.to_string()))?;
    let mut request = InferRequest::new(tensor);
    request.received = received;
    if let Some(parameters) = body.get("parameters") {
        if let Some(t) = parameters.get("timeout") {
            let micros = t.as_u64().ok_or_else(|| {
                bad("parameter 'timeout' is not a whole number of microseconds".into())
            })?;
            request.timeout = Some(Duration::from_micros(micros));
        }
        if let Some(q) = parameters.get("quorum") {
            let n = q
                .as_u64()
                .ok_or_else(|| bad("parameter 'quorum' is not a positive integer".into()))?;
            request.quorum = Some(n as usize);
        }
    }
    request.want_members = body
        .get("outputs")
        .and_then(Value::as_array)
        .is_some_and(|o| {
            o.iter()
                .any(|o| o.get("name").and_then(Value::as_str) == Some("members"))
        });
    Ok((request, id))
}

/// `data`, flat or nested, row-major, into f32 values (finite, within f32's range).
fn flatten(data: &Value, out: &mut Vec<f32>) -> Result<(), ServeError> {
    match data {
        Value::Array(items) => items.iter().try_for_each(|v| flatten(v, out)),
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if !v.is_finite() || v.abs() > f64::from(f32::MAX) {
                return Err(ServeError::BadRequest(format!(
                    "input 'input' value {n} at index {} is not a finite float32",
                    out.len()
                )));
            }
            out.push(v as f32);
            Ok(())
        }
        other => Err(ServeError::BadRequest(format!(
            "input 'input' has a non-number {} at index {}",
            crate::error::excerpt(&other.to_string()),
            out.len()
        ))),
    }
}

fn response(answer: &InferAnswer, id: Option<Value>) -> Value {
    let rows = answer.output.shape()[0];
    let classes = answer.output.shape().get(1).copied().unwrap_or(0);
    let mut outputs = vec![json!({
        "name": "output",
        "datatype": "FP32",
        "shape": [rows, classes],
        "data": answer.output.as_slice(),
    })];
    if answer.members.iter().any(|m| m.output.is_some()) {
        let mut data = Vec::new();
        for m in &answer.members {
            match &m.output {
                Some(t) => data.extend_from_slice(t.as_slice()),
                None => data.extend(std::iter::repeat_n(f32::NAN, rows * classes)),
            }
        }
        outputs.push(json!({
            "name": "members",
            "datatype": "FP32",
            "shape": [answer.members.len(), rows, classes],
            "data": data,
        }));
    }
    let mut body = json!({
        "model_name": answer.model,
        "model_version": answer.version.to_string(),
        "outputs": outputs,
    });
    if let Some(id) = id {
        body["id"] = id;
    }
    let missing: Vec<Value> = answer
        .missing()
        .map(|m| {
            let why = match &m.state {
                MemberState::Late => "late".to_string(),
                MemberState::Failed(e) => format!("failed: {e}"),
                MemberState::Finished => String::new(),
            };
            json!({"member": m.name, "reason": why})
        })
        .collect();
    if !missing.is_empty() {
        body["parameters"] =
            json!({ "missing_members": serde_json::to_string(&missing).unwrap_or_default() });
    }
    body
}
