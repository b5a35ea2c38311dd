//! KServe v2 / Open Inference Protocol over HTTP: health, server and model metadata,
//! and inference with JSON tensor data or Triton's binary tensor data extension.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};

use super::binary::{self, Reader};
use super::{checked, counted, quote, read_body, AppState, BodyLimit, Element};
use crate::error::excerpt;
use crate::serve::repository::VersionState;
use crate::serve::types::{InferAnswer, InferRequest, MemberState, ServeError, VersionSelector};
use crate::tensor::Tensor;

/// The one input every model takes.
const INPUT: &str = "input";
/// The aggregate output.
const OUTPUT: &str = "output";
/// Every member's output, `[members, rows, classes]`, when asked for by name.
const MEMBERS: &str = "members";

/// An output a request may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputKind {
    /// The aggregate, `[rows, classes]`.
    Output,
    /// Every member's output, `[members, rows, classes]`.
    Members,
    /// H(p̄) per row, `[rows]`.
    Entropy,
    /// The members' mean entropy per row, `[rows]`.
    ExpectedEntropy,
    /// Entropy − expected entropy per row, `[rows]`.
    MutualInformation,
    /// The variation ratio per row, `[rows]`.
    Disagreement,
    /// Each class's variance across the members, `[rows, classes]`.
    Variance,
}

impl OutputKind {
    /// Every output, in the order the model's metadata lists them.
    const ALL: [OutputKind; 7] = [
        OutputKind::Output,
        OutputKind::Members,
        OutputKind::Entropy,
        OutputKind::ExpectedEntropy,
        OutputKind::MutualInformation,
        OutputKind::Disagreement,
        OutputKind::Variance,
    ];

    /// Its name on the wire.
    fn name(self) -> &'static str {
        match self {
            OutputKind::Output => OUTPUT,
            OutputKind::Members => MEMBERS,
            OutputKind::Entropy => "entropy",
            OutputKind::ExpectedEntropy => "expected_entropy",
            OutputKind::MutualInformation => "mutual_information",
            OutputKind::Disagreement => "disagreement",
            OutputKind::Variance => "variance",
        }
    }

    fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// One of the measures of [`Uncertainty`](crate::Uncertainty).
    fn is_uncertainty(self) -> bool {
        !matches!(self, OutputKind::Output | OutputKind::Members)
    }

    /// Its shape in the model's metadata (`-1` for the rows).
    fn metadata_shape(self, members: usize, classes: usize) -> Vec<i64> {
        let (members, classes) = (members as i64, classes as i64);
        match self {
            OutputKind::Output | OutputKind::Variance => vec![-1, classes],
            OutputKind::Members => vec![members, -1, classes],
            _ => vec![-1],
        }
    }
}

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({ "live": true })) }),
        )
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

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "wgpu-ensemble",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

/// Server readiness, as the specification has it: 200 when every model is ready
/// (the versions found at start loaded, and with strict readiness no model broken:
/// [`Repository::broken`](crate::serve::Repository::broken)), else 400 ("a 4xx
/// status code indicates false"). The bodies are the Open Inference Protocol's
/// `{"ready": bool}` (the KServe Python client reads it from a 200), with the reason
/// when not ready.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let why = if !state.is_ready() {
        Some("the server is loading the models found at start".to_string())
    } else if !state.strict_readiness {
        None
    } else {
        let unserved = state.repository.broken();
        (!unserved.is_empty()).then(|| {
            let names: Vec<String> = unserved
                .iter()
                .take(8)
                .map(|m| format!("'{}'", excerpt(m)))
                .collect();
            let more = unserved.len().saturating_sub(names.len());
            format!(
                "no version of {} loads{}",
                names.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        })
    };
    match why {
        None => Json(json!({ "ready": true })).into_response(),
        Some(error) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "ready": false, "error": error })),
        )
            .into_response(),
    }
}

/// A version in a path: a positive integer, else 404.
pub(super) fn version_number(version: &str) -> Result<VersionSelector, ServeError> {
    version
        .parse::<u64>()
        .ok()
        .filter(|&v| v > 0)
        .map(VersionSelector::Number)
        .ok_or_else(|| {
            ServeError::NotFound(format!(
                "version '{}' is not a positive integer",
                excerpt(version)
            ))
        })
}

async fn model_ready(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match state.repository.resolve(&model, &VersionSelector::Default) {
        Ok(_) => Json(json!({ "name": model, "ready": true })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn version_ready(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    match version_number(&version).and_then(|v| state.repository.resolve(&model, &v)) {
        Ok(_) => Json(json!({ "name": model, "ready": true })).into_response(),
        Err(e) => e.into_response(),
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
    // Every output a request may name; one that names none gets `output` only.
    let outputs: Vec<Value> = OutputKind::ALL
        .into_iter()
        .map(|kind| {
            json!({
                "name": kind.name(),
                "datatype": "FP32",
                "shape": kind.metadata_shape(batcher.members().len(), batcher.output_width()),
            })
        })
        .collect();
    Ok(Json(json!({
        "name": model,
        "versions": versions,
        "platform": "wgpu-ensemble",
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, batcher.input_width()]}],
        "outputs": outputs,
    })))
}

async fn infer(
    State(state): State<Arc<AppState>>,
    Extension(limit): Extension<BodyLimit>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run_infer(state, limit, model, VersionSelector::Default, headers, body).await
}

async fn version_infer(
    State(state): State<Arc<AppState>>,
    Extension(limit): Extension<BodyLimit>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match version_number(&version) {
        Ok(selector) => run_infer(state, limit, model, selector, headers, body).await,
        Err(e) => e.into_response(),
    }
}

async fn run_infer(
    state: Arc<AppState>,
    limit: BodyLimit,
    model: String,
    selector: VersionSelector,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = Instant::now();
    let label = match &selector {
        VersionSelector::Number(v) => v.to_string(),
        _ => String::new(),
    };
    let result = answer(&state, &model, &selector, &headers, body, limit, received).await;
    let version = match &result {
        Ok((_, answer)) => answer.version.to_string(),
        Err(_) => label,
    };
    // An answer without the measures it asked for is counted as the error it is.
    let result = result.and_then(|(echo, answer)| response(&answer, echo));
    match counted(&state, &model, &version, received, result) {
        Ok(body) => body.into_response(),
        Err(e) => e.into_response(),
    }
}

/// The decoded request's echo parts and the answer.
async fn answer(
    state: &AppState,
    model: &str,
    selector: &VersionSelector,
    headers: &HeaderMap,
    body: Body,
    limit: BodyLimit,
    received: Instant,
) -> Result<(Echo, InferAnswer), ServeError> {
    let (body, room) = read_body(headers, body, limit.0, &state.bodies).await?;
    let (request, echo) = decode(headers, &body, received)?;
    // Decoded: the body's room goes to the next request.
    drop((room, body));
    let (_served, reply) = state.repository.submit(model, selector, request)?;
    let answer = reply
        .await
        .map_err(|_| ServeError::Internal("the version stopped before answering".into()))??;
    Ok((echo, answer))
}

/// What the response repeats from the request: the id and the outputs asked for.
#[derive(Debug)]
struct Echo {
    id: Option<Value>,
    outputs: Vec<Requested>,
}

/// An output asked for, and whether it goes back as binary data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Requested {
    kind: OutputKind,
    binary: bool,
}

/// A KServe v2 inference request (JSON, or JSON and binary tensor data) → rows and
/// options.
fn decode(
    headers: &HeaderMap,
    body: &[u8],
    received: Instant,
) -> Result<(InferRequest, Echo), ServeError> {
    let bad = ServeError::BadRequest;
    let (json, mut binary) = binary::split(headers, body)?;
    let body = &super::json_object(json)?;
    // The protocol's `id` is a string, echoed as it came.
    let id = match body.get("id") {
        None => None,
        Some(id @ Value::String(_)) => Some(id.clone()),
        Some(other) => {
            return Err(bad(format!(
                "the request's 'id' is {}; expected a string",
                quote(other)
            )))
        }
    };
    let parameters = object(body.get("parameters"), "the request's 'parameters'")?;
    let inputs = body
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the request has no 'inputs' array".into()))?;
    let mut tensor = None;
    for input in inputs {
        let name = input
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("an input has no 'name': {}", quote(input))))?;
        if name != INPUT {
            return Err(bad(format!(
                "unknown input '{}'; the model takes one input, '{INPUT}'",
                excerpt(name)
            )));
        }
        if tensor.is_some() {
            return Err(bad(format!("input '{INPUT}' is given twice")));
        }
        tensor = Some(decode_input(input, &mut binary)?);
    }
    let tensor = tensor.ok_or_else(|| bad(format!("the request has no input named '{INPUT}'")))?;
    binary.finish()?;

    let mut request = InferRequest::new(tensor);
    request.received = received;
    if let Some(t) = parameters.get("timeout") {
        let micros = t.as_u64().ok_or_else(|| {
            bad(format!(
                "parameter 'timeout' is {}; expected a whole number of microseconds",
                quote(t)
            ))
        })?;
        // 0 is no timeout, as in Triton.
        request.timeout = (micros > 0).then(|| Duration::from_micros(micros));
    }
    if let Some(q) = parameters.get("quorum") {
        let n = q
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                bad(format!(
                    "parameter 'quorum' is {}; expected a positive integer",
                    quote(q)
                ))
            })?;
        request.quorum = Some(n);
    }
    let binary_default = flag(parameters.get("binary_data_output"), "binary_data_output")?;

    let outputs = match body.get("outputs") {
        // Absent, null or empty: the default output (the specification's "if not
        // specified", where this server returns `output`, see the metadata).
        None | Some(Value::Null) => vec![Requested {
            kind: OutputKind::Output,
            binary: binary_default,
        }],
        Some(Value::Array(asked)) if asked.is_empty() => vec![Requested {
            kind: OutputKind::Output,
            binary: binary_default,
        }],
        Some(Value::Array(asked)) => {
            let mut outputs = Vec::new();
            for output in asked {
                let name = output.get("name").and_then(Value::as_str).ok_or_else(|| {
                    bad(format!(
                        "a requested output has no 'name': {}",
                        quote(output)
                    ))
                })?;
                let kind = OutputKind::named(name).ok_or_else(|| {
                    let known: Vec<String> = OutputKind::ALL
                        .iter()
                        .map(|k| format!("'{}'", k.name()))
                        .collect();
                    bad(format!(
                        "unknown output '{}'; the model's outputs are {}",
                        excerpt(name),
                        known.join(", ")
                    ))
                })?;
                if outputs.iter().any(|o: &Requested| o.kind == kind) {
                    return Err(bad(format!("output '{name}' is asked for twice")));
                }
                let params = object(
                    output.get("parameters"),
                    "a requested output's 'parameters'",
                )?;
                if params.contains_key("classification") {
                    return Err(bad(format!(
                        "output '{name}': the classification extension is not supported"
                    )));
                }
                let binary = match params.get("binary_data") {
                    None => binary_default,
                    some => flag(some, "binary_data")?,
                };
                outputs.push(Requested { kind, binary });
            }
            if outputs.is_empty() {
                return Err(bad("the request's 'outputs' is empty".into()));
            }
            outputs
        }
        Some(other) => {
            return Err(bad(format!(
                "the request's 'outputs' is {}; expected a list",
                quote(other)
            )))
        }
    };
    request.want_members = outputs.iter().any(|o| o.kind == OutputKind::Members);
    request.want_uncertainty = outputs.iter().any(|o| o.kind.is_uncertainty());
    Ok((request, Echo { id, outputs }))
}

/// `parameters` objects are optional; when given they must be objects.
fn object<'a>(value: Option<&'a Value>, what: &str) -> Result<&'a Map<String, Value>, ServeError> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match value {
        None | Some(Value::Null) => Ok(EMPTY.get_or_init(Map::new)),
        Some(Value::Object(map)) => Ok(map),
        Some(other) => Err(ServeError::BadRequest(format!(
            "{what} is {}; expected an object",
            quote(other)
        ))),
    }
}

/// A boolean parameter (absent: false).
fn flag(value: Option<&Value>, name: &str) -> Result<bool, ServeError> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ServeError::BadRequest(format!(
            "parameter '{name}' is {}; expected true or false",
            quote(other)
        ))),
    }
}

/// The input tensor: datatype, shape, and its values from `data` or the binary data.
fn decode_input(input: &Value, binary: &mut Reader<'_>) -> Result<Tensor, ServeError> {
    let bad = ServeError::BadRequest;
    let datatype = input.get("datatype").and_then(Value::as_str).unwrap_or("");
    let element = match datatype {
        "FP32" => Element::Fp32,
        "FP64" => Element::Fp64,
        other => {
            return Err(bad(format!(
                "input '{INPUT}' has datatype '{}'; expected FP32 or FP64",
                excerpt(other)
            )))
        }
    };
    let shape_value = input.get("shape").unwrap_or(&Value::Null);
    let shape: Option<Vec<usize>> = shape_value.as_array().and_then(|s| {
        s.iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect()
    });
    let (rows, cols) = match shape.as_deref() {
        Some(&[rows, cols]) => (rows, cols),
        _ => {
            return Err(bad(format!(
                "input '{INPUT}' has shape {}; expected [rows, width] of non-negative integers",
                quote(shape_value)
            )))
        }
    };
    let count = rows.checked_mul(cols).ok_or_else(|| {
        bad(format!(
            "input '{INPUT}' has shape [{rows}, {cols}]: more values than can be addressed"
        ))
    })?;
    let params = object(input.get("parameters"), "input 'input''s 'parameters'")?;
    let values = match params.get("binary_data_size") {
        Some(size) => {
            if input.get("data").is_some_and(|d| !d.is_null()) {
                return Err(bad(format!(
                    "input '{INPUT}' has both 'data' and parameter 'binary_data_size'"
                )));
            }
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "input '{INPUT}' has binary_data_size {}; expected a number of bytes",
                        quote(size)
                    ))
                })?;
            let expected = count.checked_mul(element.size());
            if expected != Some(size) {
                return Err(bad(format!(
                    "input '{INPUT}' has binary_data_size {size}; its shape [{rows}, {cols}] of \
                     {datatype} needs {} bytes",
                    expected.map_or_else(|| "more".to_string(), |e| e.to_string())
                )));
            }
            binary::values(INPUT, element, binary.take(INPUT, size)?)?
        }
        None => {
            let data = input.get("data").ok_or_else(|| {
                bad(format!(
                    "input '{INPUT}' has neither 'data' nor parameter 'binary_data_size'"
                ))
            })?;
            json_values(data, rows, cols)?
        }
    };
    Tensor::matrix(rows, cols, values).map_err(|e| bad(format!("input '{INPUT}': {e}")))
}

/// `data` of shape `[rows, cols]`, flat (`rows · cols` numbers) or nested (`rows` lists
/// of `cols` numbers), row-major.
fn json_values(data: &Value, rows: usize, cols: usize) -> Result<Vec<f32>, ServeError> {
    let bad = ServeError::BadRequest;
    let items = data.as_array().ok_or_else(|| {
        bad(format!(
            "input '{INPUT}' has 'data' {}; expected a list of numbers",
            quote(data)
        ))
    })?;
    let mut out = Vec::new();
    let flat = items.iter().all(|v| !v.is_array());
    if flat {
        if items.len() != rows.saturating_mul(cols) {
            return Err(bad(format!(
                "input '{INPUT}' has {} values in 'data'; its shape [{rows}, {cols}] needs {}",
                items.len(),
                rows.saturating_mul(cols)
            )));
        }
        for item in items {
            out.push(number(item, out.len())?);
        }
        return Ok(out);
    }
    if items.len() != rows {
        return Err(bad(format!(
            "input '{INPUT}' has {} rows in 'data'; its shape [{rows}, {cols}] needs {rows}",
            items.len()
        )));
    }
    for (r, row) in items.iter().enumerate() {
        let row = row.as_array().ok_or_else(|| {
            bad(format!(
                "input '{INPUT}' 'data' mixes numbers and lists: item {r} is {}",
                quote(row)
            ))
        })?;
        if row.len() != cols {
            return Err(bad(format!(
                "input '{INPUT}' 'data' row {r} has {} values; its shape [{rows}, {cols}] needs {cols}",
                row.len()
            )));
        }
        for item in row {
            out.push(number(item, out.len())?);
        }
    }
    Ok(out)
}

/// One JSON number, finite and within f32's range.
fn number(item: &Value, index: usize) -> Result<f32, ServeError> {
    match item.as_f64() {
        Some(v) if item.is_number() => checked(INPUT, v, index),
        _ => Err(ServeError::BadRequest(format!(
            "input '{INPUT}' has {} at index {index}; expected a number",
            quote(item)
        ))),
    }
}

/// One output of an answer: its shape and values.
fn output_values(
    answer: &InferAnswer,
    kind: OutputKind,
) -> Result<(Vec<usize>, Cow<'_, [f32]>), ServeError> {
    let rows = answer.output.shape().first().copied().unwrap_or(0);
    let classes = answer.output.shape().get(1).copied().unwrap_or(0);
    let measures = || {
        answer.uncertainty.as_ref().ok_or_else(|| {
            ServeError::Internal(format!(
                "output '{}' was asked for and the answer has no uncertainty measures",
                kind.name()
            ))
        })
    };
    /// A per-row measure, `[rows]`.
    fn per_row(
        kind: OutputKind,
        rows: usize,
        values: &[f32],
    ) -> Result<(Vec<usize>, Cow<'_, [f32]>), ServeError> {
        if values.len() != rows {
            return Err(ServeError::Internal(format!(
                "output '{}' has {} values for {rows} rows",
                kind.name(),
                values.len()
            )));
        }
        Ok((vec![rows], Cow::Borrowed(values)))
    }
    Ok(match kind {
        OutputKind::Output => (vec![rows, classes], Cow::Borrowed(answer.output.as_slice())),
        OutputKind::Members => {
            let mut data = Vec::with_capacity(answer.members.len() * rows * classes);
            for m in &answer.members {
                match &m.output {
                    Some(t) => data.extend_from_slice(t.as_slice()),
                    // A missing member: NaN (null in JSON).
                    None => data.extend(std::iter::repeat_n(f32::NAN, rows * classes)),
                }
            }
            (vec![answer.members.len(), rows, classes], Cow::Owned(data))
        }
        OutputKind::Entropy => per_row(kind, rows, &measures()?.entropy)?,
        OutputKind::ExpectedEntropy => per_row(kind, rows, &measures()?.expected_entropy)?,
        OutputKind::MutualInformation => per_row(kind, rows, &measures()?.mutual_information)?,
        OutputKind::Disagreement => per_row(kind, rows, &measures()?.disagreement)?,
        OutputKind::Variance => {
            let variance = &measures()?.variance;
            if variance.shape() != [rows, classes] {
                return Err(ServeError::Internal(format!(
                    "output 'variance' has shape {:?}; the answer is [{rows}, {classes}]",
                    variance.shape()
                )));
            }
            (vec![rows, classes], Cow::Borrowed(variance.as_slice()))
        }
    })
}

/// The answer in KServe v2's format, with the outputs asked for in the order asked.
fn response(answer: &InferAnswer, echo: Echo) -> Result<binary::Body, ServeError> {
    let mut outputs = Vec::new();
    let mut bytes = Vec::new();
    let mut any = false;
    for asked in &echo.outputs {
        let (shape, values) = output_values(answer, asked.kind)?;
        let mut output = json!({"name": asked.kind.name(), "datatype": "FP32", "shape": shape});
        if asked.binary {
            let raw = binary::bytes(&values);
            output["parameters"] = json!({"binary_data_size": raw.len()});
            bytes.extend_from_slice(&raw);
            any = true;
        } else {
            output["data"] = super::f32_json(&values);
        }
        outputs.push(output);
    }
    let mut body = json!({
        "model_name": answer.model,
        "model_version": answer.version.to_string(),
        "outputs": outputs,
    });
    if let Some(id) = echo.id {
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
        body["parameters"] = json!({
            "missing_members": serde_json::to_string(&missing).unwrap_or_default(),
            "members_answered": answer.members.len() - missing.len(),
        });
        // A stack without all its members answers with their mean and says so.
        if answer.stacked == Some(false) {
            body["parameters"]["stacked"] = json!(false);
        }
    }
    Ok(binary::Body {
        json: body,
        binary: bytes,
        any,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(states: Vec<MemberState>) -> InferAnswer {
        let members = states
            .into_iter()
            .enumerate()
            .map(|(i, state)| crate::serve::types::MemberAnswer {
                name: format!("m{i}"),
                output: (state == MemberState::Finished)
                    .then(|| Tensor::matrix(1, 2, vec![i as f32, 1.0]).unwrap()),
                state,
            })
            .collect();
        InferAnswer {
            model: "digits".into(),
            version: 3,
            output: Tensor::matrix(1, 2, vec![0.25, 0.75]).unwrap(),
            members,
            uncertainty: None,
            stacked: None,
        }
    }

    #[test]
    fn a_partial_answer_names_the_missing_members_and_why() {
        let partial = answer(vec![
            MemberState::Finished,
            MemberState::Late,
            MemberState::Failed("device lost".into()),
        ]);
        let echo = Echo {
            id: Some(json!("7")),
            outputs: vec![
                Requested {
                    kind: OutputKind::Members,
                    binary: false,
                },
                Requested {
                    kind: OutputKind::Output,
                    binary: true,
                },
            ],
        };
        let body = response(&partial, echo).unwrap();
        assert!(body.any);
        assert_eq!(body.binary, binary::bytes(&[0.25, 0.75]));
        let json = body.json;
        assert_eq!(json["id"], "7");
        assert_eq!(json["model_version"], "3");
        assert_eq!(json["outputs"][0]["name"], MEMBERS);
        assert_eq!(json["outputs"][0]["shape"], json!([3, 1, 2]));
        // The missing members' values are NaN: null in JSON.
        assert_eq!(
            json["outputs"][0]["data"],
            json!([0.0, 1.0, null, null, null, null])
        );
        assert_eq!(json["outputs"][1]["parameters"]["binary_data_size"], 8);
        assert_eq!(json["parameters"]["members_answered"], 1);
        let missing: Value =
            serde_json::from_str(json["parameters"]["missing_members"].as_str().unwrap()).unwrap();
        assert_eq!(
            missing,
            json!([{"member": "m1", "reason": "late"}, {"member": "m2", "reason": "failed: device lost"}])
        );
        assert!(json["parameters"].get("stacked").is_none(), "{json}");
        // A stack's partial answer (the mean of the members present) says so.
        let mut stack = partial.clone();
        stack.stacked = Some(false);
        let echo = Echo {
            id: None,
            outputs: vec![Requested {
                kind: OutputKind::Output,
                binary: false,
            }],
        };
        let json = response(&stack, echo).unwrap().json;
        assert_eq!(json["parameters"]["stacked"], false, "{json}");
        // A whole answer has no parameters.
        let whole = answer(vec![MemberState::Finished; 2]);
        let echo = Echo {
            id: None,
            outputs: vec![Requested {
                kind: OutputKind::Output,
                binary: false,
            }],
        };
        let json = response(&whole, echo).unwrap().json;
        assert!(
            json.get("parameters").is_none() && json.get("id").is_none(),
            "{json}"
        );
    }

    #[test]
    fn the_uncertainty_outputs_as_json_and_binary_or_an_error_when_missing() {
        let mut two_rows = answer(vec![MemberState::Finished]);
        two_rows.output = Tensor::matrix(2, 2, vec![0.25, 0.75, 0.5, 0.5]).unwrap();
        two_rows.uncertainty = Some(crate::Uncertainty {
            entropy: vec![0.5, 0.6],
            expected_entropy: vec![0.25, 0.5],
            mutual_information: vec![0.25, 0.1],
            disagreement: vec![0.0, 1.0],
            variance: Tensor::matrix(2, 2, vec![0.01, 0.02, 0.03, 0.04]).unwrap(),
        });
        let asked = |kind, binary| Requested { kind, binary };
        let echo = Echo {
            id: None,
            outputs: vec![
                asked(OutputKind::Variance, false),
                asked(OutputKind::Entropy, true),
                asked(OutputKind::Disagreement, false),
                asked(OutputKind::MutualInformation, true),
                asked(OutputKind::ExpectedEntropy, false),
            ],
        };
        let body = response(&two_rows, echo).unwrap();
        assert!(body.any);
        // The binary outputs' bytes in the order asked: entropy, mutual information.
        assert_eq!(body.binary, binary::bytes(&[0.5, 0.6, 0.25, 0.1]));
        let json = body.json;
        let outputs = json["outputs"].as_array().unwrap();
        let names: Vec<&str> = outputs
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "variance",
                "entropy",
                "disagreement",
                "mutual_information",
                "expected_entropy"
            ]
        );
        assert_eq!(outputs[0]["shape"], json!([2, 2]));
        assert_eq!(outputs[0]["data"], json!([0.01, 0.02, 0.03, 0.04]));
        assert_eq!(outputs[1]["shape"], json!([2]));
        assert_eq!(outputs[1]["parameters"]["binary_data_size"], 8);
        assert!(outputs[1].get("data").is_none(), "{json}");
        assert_eq!(outputs[2]["data"], json!([0.0, 1.0]));
        assert_eq!(outputs[4]["data"], json!([0.25, 0.5]));
        for o in outputs {
            assert_eq!(o["datatype"], "FP32");
        }

        // Asked for and not in the answer: an internal error naming the output.
        let without = answer(vec![MemberState::Finished]);
        let echo = Echo {
            id: None,
            outputs: vec![
                asked(OutputKind::Output, false),
                asked(OutputKind::Entropy, false),
            ],
        };
        match response(&without, echo) {
            Err(ServeError::Internal(e)) => assert!(e.contains("'entropy'"), "{e}"),
            Err(other) => panic!("expected an internal error, got {other:?}"),
            Ok(_) => panic!("expected an internal error, got an answer"),
        }
    }

    #[test]
    fn output_names_round_trip_and_only_the_five_are_measures() {
        for kind in OutputKind::ALL {
            assert_eq!(OutputKind::named(kind.name()), Some(kind));
        }
        assert_eq!(OutputKind::named("Entropy"), None);
        let measures: Vec<&str> = OutputKind::ALL
            .into_iter()
            .filter(|k| k.is_uncertainty())
            .map(OutputKind::name)
            .collect();
        assert_eq!(
            measures,
            [
                "entropy",
                "expected_entropy",
                "mutual_information",
                "disagreement",
                "variance"
            ]
        );
    }
}
