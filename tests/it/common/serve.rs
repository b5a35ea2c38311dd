//! A server on 127.0.0.1 (port 0) over a model repository made in a tempdir from the
//! golden fixtures, and a bounded HTTP client for it.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use wgpu_ensemble::serve::{ServeConfig, Server};

use super::golden;

/// A running server and the repository it serves (removed when dropped, after the
/// server has stopped).
pub struct TestServer {
    server: Option<Server>,
    /// The model repository.
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl TestServer {
    /// Serves `models` (name, version, golden manifest such as `mean.toml`) with every
    /// member on `device` (`cpu`, `adapter:0`, `auto`), polling every 50 ms.
    pub fn start(models: &[(&str, u64, &str)], device: &str) -> Self {
        Self::start_with(models, device, |c| c)
    }

    /// As [`TestServer::start`], with the configuration changed by `configure`.
    pub fn start_with(
        models: &[(&str, u64, &str)],
        device: &str,
        configure: impl FnOnce(ServeConfig) -> ServeConfig,
    ) -> Self {
        let dir = tempfile::tempdir().expect("a tempdir");
        for (model, version, manifest) in models {
            add_version(dir.path(), model, *version, manifest, device);
        }
        let config = configure(
            ServeConfig::new(dir.path())
                .addr(([127, 0, 0, 1], 0).into())
                .poll_interval(Duration::from_millis(50)),
        );
        let server = Server::start(config).expect("the server starts");
        let base = format!("http://{}", server.addr());
        Self {
            server: Some(server),
            dir,
            base,
        }
    }

    /// The server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server (answering what it accepted) and keeps the repository.
    pub fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Writes `root/<model>/<version>/` from the golden fixtures: every `*.safetensors`
/// and `manifest` as `ensemble.toml` with each member's `device = "auto"` replaced by
/// `device`. The folder is written under another name and renamed into place, so a
/// polling server never sees it half-written.
pub fn add_version(root: &Path, model: &str, version: u64, manifest: &str, device: &str) {
    let model_dir = root.join(model);
    let staging = model_dir.join(format!(".staging-{version}"));
    std::fs::create_dir_all(&staging).expect("create the version folder");
    let fixtures = golden("");
    for entry in std::fs::read_dir(&fixtures).expect("the golden fixtures") {
        let path = entry.expect("a fixture").path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            std::fs::copy(&path, staging.join(path.file_name().unwrap())).expect("copy");
        }
    }
    let text = std::fs::read_to_string(golden(manifest)).expect("the manifest");
    let text = text.replace("device = \"auto\"", &format!("device = \"{device}\""));
    std::fs::write(staging.join("ensemble.toml"), text).expect("write the manifest");
    std::fs::rename(&staging, model_dir.join(version.to_string())).expect("rename into place");
}

/// An HTTP client that returns every status as a response (no error for 4xx/5xx) and
/// gives up after 30 s.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Asserts that `reply` is a 200, showing its body when it is not.
#[track_caller]
pub fn assert_ok(reply: &Reply) {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

/// A response's status, headers and body.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics, quoting the body, when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: the body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
            )
        })
    }

    /// A header's value (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        let body = self.json();
        body.get("error")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("status {}: no 'error' in {body}", self.status))
            .to_string()
    }
}

fn reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = response.expect("an HTTP response");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .expect("the body");
    Reply {
        status,
        headers,
        body,
    }
}

/// `GET url`.
pub fn get(url: &str) -> Reply {
    reply(agent().get(url).call())
}

/// `POST url` with a JSON body.
pub fn post_json(url: &str, body: &Value) -> Reply {
    reply(agent().post(url).send_json(body))
}

/// `POST url` with raw bytes and extra headers.
pub fn post_bytes(url: &str, headers: &[(&str, String)], body: &[u8]) -> Reply {
    let mut request = agent().post(url);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    reply(request.send(body))
}

/// A JSON number list as f32 (panics, quoting it, on anything else).
pub fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")) as f32)
        .collect()
}

/// A request to `model`'s KServe v2 `infer` in the binary tensor data extension: the
/// JSON `header`, then `raw`.
pub fn binary_request(server: &TestServer, model: &str, header: &Value, raw: &[u8]) -> Reply {
    let json = serde_json::to_vec(header).expect("a JSON header");
    let mut body = json.clone();
    body.extend_from_slice(raw);
    post_bytes(
        &server.url(&format!("/v2/models/{model}/infer")),
        &[
            ("Inference-Header-Content-Length", json.len().to_string()),
            ("Content-Type", "application/octet-stream".to_string()),
        ],
        &body,
    )
}

/// A 200 binary response split into its JSON header and its binary outputs' values by
/// name, in order; every byte after the header belongs to one of them.
#[track_caller]
pub fn binary_response(reply: &Reply) -> (Value, Vec<(String, Vec<f32>)>) {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body[..reply.body.len().min(500)])
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    let json_len: usize = reply
        .header("inference-header-content-length")
        .expect("Inference-Header-Content-Length")
        .parse()
        .expect("a length");
    let header: Value = serde_json::from_slice(&reply.body[..json_len]).expect("a JSON header");
    let mut at = json_len;
    let mut binary = Vec::new();
    for out in header["outputs"].as_array().expect("outputs") {
        if let Some(size) = out["parameters"]["binary_data_size"].as_u64() {
            assert!(out.get("data").is_none(), "binary output with data: {out}");
            let size = size as usize;
            assert!(at + size <= reply.body.len(), "{out}: past the body's end");
            let values = reply.body[at..at + size]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            at += size;
            binary.push((out["name"].as_str().expect("a name").to_string(), values));
        }
    }
    assert_eq!(at, reply.body.len(), "bytes after the binary outputs");
    (header, binary)
}

/// The sum of the values of the Prometheus lines of `name` whose labels include every
/// one of `labels` (`key="value"`); 0 when there is none.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (n, rest) = key.split_once('{').unwrap_or((key, ""));
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}
