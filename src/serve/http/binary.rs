//! Triton's binary tensor data extension (what `tritonclient.http` sends by default).
//!
//! A request with the header `Inference-Header-Content-Length: N` carries its JSON in
//! the body's first `N` bytes and, after it, the raw little-endian bytes of every input
//! whose JSON has `"parameters": {"binary_data_size": bytes}`, in input order. Outputs
//! asked for with `"binary_data": true` come back the same way: the JSON header (the
//! output with `binary_data_size` and no `data`), then the bytes, with the response
//! header `Inference-Header-Content-Length` and content type `application/octet-stream`.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{checked, Element};
use crate::serve::types::ServeError;

/// The header that gives the JSON's length in bytes.
pub(super) const HEADER: &str = "inference-header-content-length";

/// The body split into its JSON and the binary tensor data after it (empty without the
/// header).
pub(super) fn split<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<(&'a [u8], Reader<'a>), ServeError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok((body, Reader::new(&[])));
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let json_len: usize = text.trim().parse().map_err(|_| {
        ServeError::BadRequest(format!(
            "header Inference-Header-Content-Length is '{}'; expected the JSON's length in bytes",
            crate::error::excerpt(&text)
        ))
    })?;
    if json_len > body.len() {
        return Err(ServeError::BadRequest(format!(
            "header Inference-Header-Content-Length says the JSON is {json_len} bytes; \
             the body has {} bytes",
            body.len()
        )));
    }
    let (json, binary) = body.split_at(json_len);
    Ok((json, Reader::new(binary)))
}

/// The binary tensor data of a request, taken input by input.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    taken: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, taken: 0 }
    }

    /// The next `size` bytes, for input `name`.
    pub(super) fn take(&mut self, name: &str, size: usize) -> Result<&'a [u8], ServeError> {
        let left = self.bytes.len() - self.taken;
        if size > left {
            return Err(ServeError::BadRequest(format!(
                "input '{}' has binary_data_size {size}; the body has {left} bytes of binary \
                 data left after the JSON header{}",
                crate::error::excerpt(name),
                if self.taken > 0 {
                    format!(" and the {} bytes of earlier inputs", self.taken)
                } else {
                    String::new()
                }
            )));
        }
        let bytes = &self.bytes[self.taken..self.taken + size];
        self.taken += size;
        Ok(bytes)
    }

    /// Every byte must belong to an input.
    pub(super) fn finish(self) -> Result<(), ServeError> {
        let left = self.bytes.len() - self.taken;
        if left > 0 {
            return Err(ServeError::BadRequest(format!(
                "the body has {} bytes of binary data after the JSON header; the inputs' \
                 binary_data_size add up to {}",
                self.bytes.len(),
                self.taken
            )));
        }
        Ok(())
    }
}

/// Raw little-endian `bytes` of `element` as f32 values, each finite and within f32's
/// range (the index of the first that is not is in the error).
pub(super) fn values(input: &str, element: Element, bytes: &[u8]) -> Result<Vec<f32>, ServeError> {
    let mut out = Vec::new();
    out.try_reserve_exact(bytes.len() / element.size())
        .map_err(|_| ServeError::PayloadTooLarge("the input is too large to hold".into()))?;
    match element {
        Element::Fp32 => {
            for (i, b) in bytes.chunks_exact(4).enumerate() {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                out.push(checked(input, f64::from(v), i)?);
            }
        }
        Element::Fp64 => {
            for (i, b) in bytes.chunks_exact(8).enumerate() {
                let v = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                out.push(checked(input, v, i)?);
            }
        }
    }
    Ok(out)
}

/// A response's JSON header and the binary data of its outputs that asked for it.
pub(super) struct Body {
    pub json: Value,
    pub binary: Vec<u8>,
    /// Whether any output is binary (then the header and the bytes go out).
    pub any: bool,
}

impl IntoResponse for Body {
    fn into_response(self) -> Response {
        if !self.any {
            return axum::Json(self.json).into_response();
        }
        let mut body = match serde_json::to_vec(&self.json) {
            Ok(body) => body,
            Err(e) => {
                return ServeError::Internal(format!("the response could not be encoded: {e}"))
                    .into_response()
            }
        };
        let json_len = body.len();
        body.extend_from_slice(&self.binary);
        let mut response = (StatusCode::OK, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(HEADER, HeaderValue::from(json_len));
        response
    }
}

/// f32 values as little-endian bytes.
pub(super) fn bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
