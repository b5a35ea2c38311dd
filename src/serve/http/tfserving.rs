//! TensorFlow Serving's REST API: `:predict` in the row (`instances`) and columnar
//! (`inputs`) formats, model status and metadata.
//!
//! Paths have a verb after a colon inside their last segment
//! (`/v1/models/digits/versions/3:predict`), which a router's path parameters (whole
//! segments) cannot split: one catch-all route takes everything under `/v1/models/`
//! and [`Target::parse`] reads it.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};

use super::kserve::version_number;
use super::{checked, counted, quote, read_body, wrong_method_for, AppState, BodyLimit};
use crate::error::excerpt;
use crate::serve::repository::VersionStatus;
use crate::serve::types::{InferRequest, ServeError, VersionSelector};
use crate::tensor::Tensor;

/// The model's one input, by name (`{"instances": [{"input": [...]}]}`).
const INPUT: &str = "input";
/// The one signature.
const SIGNATURE: &str = "serving_default";
/// TensorFlow Serving's verbs (`:predict`), all taken with POST.
const VERBS: [&str; 3] = ["predict", "classify", "regress"];

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/models/{*rest}", get(get_model).post(post_model))
}

/// What a path under `/v1/models/` names.
#[derive(Debug, PartialEq)]
struct Target {
    model: String,
    version: VersionSelector,
    /// What follows the colon (`predict`), if anything.
    verb: Option<String>,
    /// `.../metadata`.
    metadata: bool,
}

impl Target {
    /// `m`, `m/versions/v`, `m/labels/l`, each with `:verb` or `/metadata` or neither.
    fn parse(rest: &str) -> Result<Self, ServeError> {
        let unknown = || {
            ServeError::NotFound(format!(
                "no TensorFlow Serving endpoint /v1/models/{}; expected \
                 /v1/models/MODEL[/versions/N|/labels/LABEL][:predict|/metadata]",
                excerpt(rest)
            ))
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, verb) = match rest[last_slash..].rfind(':') {
            Some(colon) => (
                &rest[..last_slash + colon],
                Some(rest[last_slash + colon + 1..].to_string()),
            ),
            None => (rest, None),
        };
        let mut segments: Vec<&str> = path.split('/').collect();
        let metadata = verb.is_none() && segments.len() > 1 && segments.last() == Some(&"metadata");
        if metadata {
            segments.pop();
        }
        let version = match segments[..] {
            [_] => VersionSelector::Default,
            [_, "versions", v] => version_number(v)?,
            [_, "labels", l] if !l.is_empty() => VersionSelector::Label(l.to_string()),
            _ => return Err(unknown()),
        };
        let model = segments[0];
        if model.is_empty() {
            return Err(unknown());
        }
        Ok(Self {
            model: model.to_string(),
            version,
            verb,
            metadata,
        })
    }
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(rest): Path<String>,
    method: Method,
    uri: Uri,
) -> Response {
    if matches!(Target::parse(&rest), Ok(Target { verb: Some(ref verb), .. }) if VERBS.contains(&verb.as_str()))
    {
        return wrong_method_for(&method, &uri, "POST");
    }
    match model_info(&state, &rest) {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/models/...`: the versions' status, or the metadata.
fn model_info(state: &AppState, rest: &str) -> Result<Value, ServeError> {
    let target = Target::parse(rest)?;
    if let Some(verb) = &target.verb {
        return Err(ServeError::NotFound(format!(
            "GET takes no ':{}'; POST /v1/models/{}:predict runs the model",
            excerpt(verb),
            excerpt(&target.model)
        )));
    }
    if target.metadata {
        return metadata(state, &target);
    }
    let (statuses, notes) = match &target.version {
        VersionSelector::Default => state.repository.own_status(&target.model, None)?,
        VersionSelector::Number(v) => state.repository.own_status(&target.model, Some(*v))?,
        label @ VersionSelector::Label(_) => {
            let served = state.repository.resolve(&target.model, label)?;
            state
                .repository
                .own_status(&target.model, Some(served.version))?
        }
    };
    Ok(json!({
        "model_version_status": statuses
            .iter()
            .rev()
            .map(|s| version_status(s, &notes))
            .collect::<Vec<_>>()
    }))
}

/// One version's status as TensorFlow Serving writes it: `UNKNOWN` with the error of
/// a version whose load failed, else `OK`; the model's own problems (a refused
/// `config.toml` or label) are in every version's message, without changing its code.
fn version_status(status: &VersionStatus, notes: &[String]) -> Value {
    let all = || -> String {
        let own = status.error.iter().cloned();
        own.chain(notes.iter().cloned())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let (code, message) = match &status.error {
        None => ("OK", all()),
        Some(_) => ("UNKNOWN", all()),
    };
    json!({
        "version": status.version.to_string(),
        "state": status.state.name(),
        "status": {"error_code": code, "error_message": message},
    })
}

/// `GET /v1/models/m[/versions/v]/metadata`: the signature.
fn metadata(state: &AppState, target: &Target) -> Result<Value, ServeError> {
    let served = state.repository.resolve(&target.model, &target.version)?;
    let batcher = &served.batcher;
    let tensor = |name: &str, width: usize| {
        json!({
            "dtype": "DT_FLOAT",
            "tensor_shape": {
                "dim": [{"size": "-1", "name": ""}, {"size": width.to_string(), "name": ""}],
                "unknown_rank": false,
            },
            "name": name,
        })
    };
    Ok(json!({
        "model_spec": {
            "name": target.model,
            "signature_name": "",
            "version": served.version.to_string(),
        },
        "metadata": {"signature_def": {"signature_def": {SIGNATURE: {
            "inputs": {INPUT: tensor(INPUT, batcher.input_width())},
            "outputs": {"output": tensor("output", batcher.output_width())},
            "method_name": "tensorflow/serving/predict",
        }}}},
    }))
}

async fn post_model(
    State(state): State<Arc<AppState>>,
    Extension(limit): Extension<BodyLimit>,
    Path(rest): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = Instant::now();
    let target = match Target::parse(&rest) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match target.verb.as_deref() {
        // The status and the metadata are read with GET.
        None => return wrong_method_for(&method, &uri, "GET"),
        Some("predict") => {}
        Some(verb @ ("classify" | "regress")) => {
            return ServeError::BadRequest(format!(
                "':{verb}' is not supported; this server answers ':predict'"
            ))
            .into_response()
        }
        _ => {
            return ServeError::NotFound(format!(
                "no TensorFlow Serving endpoint POST /v1/models/{}; expected \
                 /v1/models/MODEL[/versions/N|/labels/LABEL]:predict",
                excerpt(&rest)
            ))
            .into_response()
        }
    }
    let label = match &target.version {
        VersionSelector::Number(v) => v.to_string(),
        _ => String::new(),
    };
    let result = predict(&state, &target, &headers, body, limit, received).await;
    let version = match &result {
        Ok((version, _)) => version.to_string(),
        Err(_) => label,
    };
    match counted(&state, &target.model, &version, received, result) {
        Ok((_, body)) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Runs a predict request: the version that answered and the response body.
async fn predict(
    state: &AppState,
    target: &Target,
    headers: &HeaderMap,
    body: Body,
    limit: BodyLimit,
    received: Instant,
) -> Result<(u64, Value), ServeError> {
    let (body, room) = read_body(headers, body, limit.0, &state.bodies).await?;
    let (input, format) = decode(&body)?;
    // Decoded: the body's room goes to the next request.
    drop((room, body));
    let mut request = InferRequest::new(input);
    request.received = received;
    let (_served, reply) = state
        .repository
        .submit(&target.model, &target.version, request)?;
    let answer = reply
        .await
        .map_err(|_| ServeError::Internal("the version stopped before answering".into()))??;
    let cols = answer.output.shape().get(1).copied().unwrap_or(0).max(1);
    let rows: Vec<Value> = answer
        .output
        .as_slice()
        .chunks(cols)
        .map(super::f32_json)
        .collect();
    let key = match format {
        Format::Rows => "predictions",
        Format::Columns => "outputs",
    };
    Ok((answer.version, json!({ key: rows })))
}

/// Which of the two request formats was used (the answer uses the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// `{"instances": [...]}` → `{"predictions": [...]}`.
    Rows,
    /// `{"inputs": ...}` → `{"outputs": ...}`.
    Columns,
}

/// A predict request body → the input rows and its format.
fn decode(body: &[u8]) -> Result<(Tensor, Format), ServeError> {
    let bad = ServeError::BadRequest;
    let body = &super::json_object(body)?;
    if let Some(name) = body.get("signature_name") {
        // Empty names the default signature, as in TensorFlow Serving.
        if !matches!(name.as_str(), Some("" | SIGNATURE)) {
            return Err(bad(format!(
                "signature_name {} is unknown; the model has '{SIGNATURE}'",
                quote(name)
            )));
        }
    }
    let (rows, format) =
        match (body.get("instances"), body.get("inputs")) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "the request has both 'instances' and 'inputs'; give one".into(),
                ))
            }
            (None, None) => return Err(bad(
                "the request has neither 'instances' (row format) nor 'inputs' (columnar format)"
                    .into(),
            )),
            (Some(instances), None) => (instance_rows(instances)?, Format::Rows),
            (None, Some(inputs)) => (column_rows(inputs)?, Format::Columns),
        };
    Ok((matrix(rows, format)?, format))
}

/// `instances`: a list of rows, or of `{"input": row}` objects.
fn instance_rows(instances: &Value) -> Result<Vec<&Vec<Value>>, ServeError> {
    let bad = ServeError::BadRequest;
    let items = instances.as_array().ok_or_else(|| {
        bad(format!(
            "'instances' is {}; expected a list of instances",
            quote(instances)
        ))
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let row = match item {
                Value::Object(named) => named_input(named, &format!("instance {i}"))?,
                other => other,
            };
            row.as_array().ok_or_else(|| {
                bad(format!(
                    "instance {i} is {}; expected a list of numbers or {{\"{INPUT}\": [...]}}",
                    quote(item)
                ))
            })
        })
        .collect()
}

/// `inputs`: a list of rows, or `{"input": rows}`.
fn column_rows(inputs: &Value) -> Result<Vec<&Vec<Value>>, ServeError> {
    let bad = ServeError::BadRequest;
    let tensor = match inputs {
        Value::Object(named) => named_input(named, "'inputs'")?,
        other => other,
    };
    let items = tensor.as_array().ok_or_else(|| {
        bad(format!(
            "'inputs' is {}; expected a list of rows or {{\"{INPUT}\": [[...], ...]}}",
            quote(inputs)
        ))
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, row)| {
            row.as_array().ok_or_else(|| {
                bad(format!(
                    "'inputs' row {i} is {}; expected a list of numbers (inputs are [rows, width])",
                    quote(row)
                ))
            })
        })
        .collect()
}

/// The value of the one named input of an object; other names are refused.
fn named_input<'a>(named: &'a Map<String, Value>, what: &str) -> Result<&'a Value, ServeError> {
    if let Some(other) = named.keys().find(|k| k.as_str() != INPUT) {
        return Err(ServeError::BadRequest(format!(
            "{what} names input '{}'; the model takes one input, '{INPUT}'",
            excerpt(other)
        )));
    }
    named
        .get(INPUT)
        .ok_or_else(|| ServeError::BadRequest(format!("{what} has no input '{INPUT}'")))
}

/// Rows of numbers (all of one width) → a `[rows, width]` tensor.
fn matrix(rows: Vec<&Vec<Value>>, format: Format) -> Result<Tensor, ServeError> {
    let bad = ServeError::BadRequest;
    let what = match format {
        Format::Rows => "instance",
        Format::Columns => "'inputs' row",
    };
    let width = rows.first().map_or(0, |r| r.len());
    let mut values = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        if row.len() != width {
            return Err(bad(format!(
                "{what} {r} has {} values; {what} 0 has {width} (rows must be of one width)",
                row.len()
            )));
        }
        for (c, item) in row.iter().enumerate() {
            let v = item.as_f64().filter(|_| item.is_number()).ok_or_else(|| {
                bad(format!(
                    "{what} {r} has {} at position {c}; expected a number",
                    quote(item)
                ))
            })?;
            values.push(checked(INPUT, v, r * width + c)?);
        }
    }
    if rows.is_empty() {
        return Err(bad(format!("the request has no rows ({what}s)")));
    }
    Tensor::matrix(rows.len(), width, values).map_err(|e| bad(format!("input '{INPUT}': {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_a_verb_after_a_colon() {
        let t = Target::parse("digits/versions/3:predict").unwrap();
        assert_eq!(t.model, "digits");
        assert_eq!(t.version, VersionSelector::Number(3));
        assert_eq!(t.verb.as_deref(), Some("predict"));
        let t = Target::parse("digits:predict").unwrap();
        assert_eq!(
            (t.model.as_str(), t.verb.as_deref()),
            ("digits", Some("predict"))
        );
        let t = Target::parse("digits/labels/stable:predict").unwrap();
        assert_eq!(t.version, VersionSelector::Label("stable".into()));
        let t = Target::parse("digits/versions/2/metadata").unwrap();
        assert!(t.metadata && t.verb.is_none());
        assert!(!Target::parse("digits").unwrap().metadata);
        for bad in [
            "digits/versions/x:predict",
            "digits/versions",
            "digits/other/3",
            ":predict",
            "a/b/c/d",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
