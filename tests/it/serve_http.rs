//! The server's protocols over real HTTP on 127.0.0.1: KServe v2 (JSON and Triton's
//! binary tensor data extension) and TensorFlow Serving REST answer what
//! `Session::run` answers on the same manifest; every bad request gets its status and
//! a message naming the problem, and the server answers afterwards.

use serde_json::{json, Value};
use wgpu_ensemble::io::{read_matrix, Manifest};
use wgpu_ensemble::{Placement, RunOptions, Session, Tensor};

use crate::common::serve::{
    assert_ok, binary_request, binary_response, floats, get, metric, post_bytes, post_json,
    TestServer,
};
use crate::common::{assert_close, golden, read_f64};

/// The golden input, `[33, 12]`.
fn x() -> Tensor {
    read_matrix(golden("x.npy")).unwrap()
}

/// `Session::run` on `mean.toml` with every member on the CPU: the aggregate and every
/// member's output.
fn reference(x: &Tensor) -> (Vec<f64>, Vec<Vec<f64>>) {
    let manifest = Manifest::load(golden("mean.toml")).unwrap();
    let session = Session::new(manifest.graph(Some(&Placement::Cpu)).unwrap()).unwrap();
    let run = session
        .run(x, &RunOptions::default().member_outputs(true))
        .unwrap();
    let f64s = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
    let members = run
        .members
        .iter()
        .map(|m| f64s(m.output.as_ref().unwrap().as_slice()))
        .collect();
    (f64s(run.aggregate.as_slice()), members)
}

fn server() -> TestServer {
    TestServer::start(&[("mean", 1, "mean.toml")], "cpu")
}

/// A KServe output of a response by name.
fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {response}"))
}

fn infer_body(x: &Tensor, nested: bool) -> Value {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let data: Value = if nested {
        x.as_slice().chunks(cols).map(|r| r.to_vec()).collect()
    } else {
        json!(x.as_slice())
    };
    json!({"id": "req-7", "inputs": [{"name": "input", "shape": [rows, cols], "datatype": "FP32", "data": data}]})
}

/// A sure answer after the bad requests: the server still serves.
fn still_answers(server: &TestServer, want: &[f64]) {
    let reply = post_json(
        &server.url("/v2/models/mean/infer"),
        &infer_body(&x(), false),
    );
    assert_ok(&reply);
    assert_close(
        "after bad requests",
        &floats(&output(&reply.json(), "output")["data"]),
        want,
    );
}

#[test]
fn kserve_json_infer_equals_session_run_cpu() {
    let server = server();
    let x = x();
    let (want, members) = reference(&x);
    let (_, expected) = read_f64(&golden("expected_mean.npy"));
    for nested in [false, true] {
        for path in ["/v2/models/mean/infer", "/v2/models/mean/versions/1/infer"] {
            let reply = post_json(&server.url(path), &infer_body(&x, nested));
            assert_ok(&reply);
            let body = reply.json();
            assert_eq!(body["model_name"], "mean");
            assert_eq!(body["model_version"], "1");
            assert_eq!(body["id"], "req-7");
            // Without 'outputs' in the request: the aggregate only.
            assert_eq!(body["outputs"].as_array().unwrap().len(), 1, "{body}");
            let out = output(&body, "output");
            assert_eq!(out["datatype"], "FP32");
            assert_eq!(out["shape"], json!([33, 5]));
            let got = floats(&out["data"]);
            assert_close(
                &format!("{path} nested={nested} vs Session::run"),
                &got,
                &want,
            );
            assert_close(&format!("{path} nested={nested} vs numpy"), &got, &expected);
        }
    }
    // Asked for by name, in this order: exactly those.
    let mut body = infer_body(&x, true);
    body["outputs"] = json!([{"name": "members"}, {"name": "output"}]);
    let reply = post_json(&server.url("/v2/models/mean/infer"), &body).json();
    let outputs = reply["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    assert_eq!(outputs[0]["name"], "members");
    assert_eq!(outputs[0]["shape"], json!([5, 33, 5]));
    let got = floats(&outputs[0]["data"]);
    for (i, m) in members.iter().enumerate() {
        assert_close(&format!("member {i}"), &got[i * 165..(i + 1) * 165], m);
    }
    assert_close("output", &floats(&outputs[1]["data"]), &want);
    body["outputs"] = json!([{"name": "members"}]);
    let reply = post_json(&server.url("/v2/models/mean/infer"), &body).json();
    assert_eq!(reply["outputs"].as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(reply["outputs"][0]["name"], "members");
    // An empty list is as if none were named: the aggregate only.
    body["outputs"] = json!([]);
    let reply = post_json(&server.url("/v2/models/mean/infer"), &body);
    assert_ok(&reply);
    let reply = reply.json();
    assert_eq!(reply["outputs"].as_array().unwrap().len(), 1, "{reply}");
    assert_close("outputs: []", &floats(&reply["outputs"][0]["data"]), &want);
}

#[test]
fn kserve_fp64_input_json_and_binary_cpu() {
    let server = server();
    let (shape, values) = read_f64(&golden("x_f64.npy"));
    let x32 = Tensor::matrix(
        shape[0],
        shape[1],
        values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
    )
    .unwrap();
    let (want, _) = reference(&x32);
    let body =
        json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP64", "data": values}]});
    let reply = post_json(&server.url("/v2/models/mean/infer"), &body);
    assert_ok(&reply);
    assert_close(
        "FP64 JSON",
        &floats(&output(&reply.json(), "output")["data"]),
        &want,
    );

    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP64",
        "parameters": {"binary_data_size": raw.len()}}]});
    let reply = binary_request(&server, "mean", &header, &raw);
    assert_ok(&reply);
    assert_close(
        "FP64 binary",
        &floats(&output(&reply.json(), "output")["data"]),
        &want,
    );
}

#[test]
fn kserve_binary_extension_round_trip_cpu() {
    let server = server();
    let x = x();
    let (want, members) = reference(&x);
    let raw: Vec<u8> = x.as_slice().iter().flat_map(|v| v.to_le_bytes()).collect();
    // As tritonclient sends it with no outputs named: binary_data_output for all.
    let header = json!({"id": "b1", "parameters": {"binary_data_output": true},
        "inputs": [{"name": "input", "shape": [33, 12], "datatype": "FP32",
                    "parameters": {"binary_data_size": raw.len()}}]});
    let (json, binary) = binary_response(&binary_request(&server, "mean", &header, &raw));
    assert_eq!(json["id"], "b1");
    assert_eq!(
        json["outputs"][0]["parameters"]["binary_data_size"],
        33 * 5 * 4
    );
    assert_eq!(binary.len(), 1);
    assert_eq!(binary[0].0, "output");
    assert_close("binary output", &binary[0].1, &want);

    // Outputs named: members in binary, the aggregate as JSON.
    let header = json!({"inputs": [{"name": "input", "shape": [33, 12], "datatype": "FP32",
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "output", "parameters": {"binary_data": false}},
                    {"name": "members", "parameters": {"binary_data": true}}]});
    let (json, binary) = binary_response(&binary_request(&server, "mean", &header, &raw));
    assert_close(
        "JSON output beside binary",
        &floats(&output(&json, "output")["data"]),
        &want,
    );
    assert_eq!(binary.len(), 1);
    assert_eq!(binary[0].0, "members");
    for (i, m) in members.iter().enumerate() {
        assert_close(
            &format!("binary member {i}"),
            &binary[0].1[i * 165..(i + 1) * 165],
            m,
        );
    }

    // Binary input, JSON answer (no binary output asked for): plain JSON.
    let header = json!({"inputs": [{"name": "input", "shape": [33, 12], "datatype": "FP32",
                    "parameters": {"binary_data_size": raw.len()}}]});
    let reply = binary_request(&server, "mean", &header, &raw);
    assert_eq!(reply.status, 200);
    assert!(reply.header("inference-header-content-length").is_none());
    assert_close(
        "JSON answer to binary input",
        &floats(&output(&reply.json(), "output")["data"]),
        &want,
    );
}

#[test]
fn kserve_health_and_metadata_cpu() {
    let server = server();
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/mean/ready",
        "/v2/models/mean/versions/1/ready",
    ] {
        assert_eq!(get(&server.url(path)).status, 200, "{path}");
    }
    for path in [
        "/v2/models/nope/ready",
        "/v2/models/mean/versions/2/ready",
        "/v2/models/mean/versions/x/ready",
    ] {
        let reply = get(&server.url(path));
        assert_eq!(reply.status, 404, "{path}");
        assert!(!reply.error().is_empty());
    }
    let meta = get(&server.url("/v2")).json();
    assert_eq!(meta["name"], "wgpu-ensemble");
    assert!(meta["version"].is_string());
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    for path in ["/v2/models/mean", "/v2/models/mean/versions/1"] {
        let meta = get(&server.url(path)).json();
        assert_eq!(meta["name"], "mean");
        assert_eq!(meta["versions"], json!(["1"]));
        assert_eq!(meta["platform"], "wgpu-ensemble");
        assert_eq!(
            meta["inputs"],
            json!([{"name": "input", "datatype": "FP32", "shape": [-1, 12]}])
        );
        assert_eq!(
            meta["outputs"][0],
            json!({"name": "output", "datatype": "FP32", "shape": [-1, 5]})
        );
        assert_eq!(meta["outputs"][1]["name"], "members");
        assert_eq!(meta["outputs"][1]["shape"], json!([5, -1, 5]));
    }
    let reply = get(&server.url("/v2/models/nope"));
    assert_eq!(reply.status, 404);
    assert!(reply.error().contains("nope"), "{}", reply.error());
    let reply = get(&server.url("/v2/models/mean/versions/7"));
    assert_eq!(reply.status, 404);
    assert!(reply.error().contains('7'), "{}", reply.error());
}

/// `(what, body, headers, status, words the message must contain)`.
type Case = (
    &'static str,
    Vec<u8>,
    Vec<(&'static str, String)>,
    u16,
    Vec<&'static str>,
);

fn json_case(what: &'static str, body: Value, status: u16, words: &[&'static str]) -> Case {
    (
        what,
        serde_json::to_vec(&body).unwrap(),
        vec![],
        status,
        words.to_vec(),
    )
}

fn binary_case(
    what: &'static str,
    header: Value,
    raw: &[u8],
    status: u16,
    words: &[&'static str],
) -> Case {
    let json = serde_json::to_vec(&header).unwrap();
    let mut body = json.clone();
    body.extend_from_slice(raw);
    (
        what,
        body,
        vec![("Inference-Header-Content-Length", json.len().to_string())],
        status,
        words.to_vec(),
    )
}

fn input(shape: Value, datatype: &str, data: Value) -> Value {
    json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]})
}

#[test]
fn kserve_bad_requests_get_their_status_and_message_cpu() {
    let server = server();
    let (want, _) = reference(&x());
    let row = json!(vec![0.5; 12]);
    let f32s = |v: &[f32]| v.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let bin_input = |size: usize, shape: Value| {
        json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                           "parameters": {"binary_data_size": size}}]})
    };
    let mut nan_row = [0.25f32; 12];
    nan_row[7] = f32::NAN;
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            b"{\"inputs\": [".to_vec(),
            vec![],
            400,
            vec!["not valid JSON"],
        ),
        json_case(
            "not an object",
            json!([1, 2]),
            400,
            &["expected a JSON object"],
        ),
        json_case("no inputs", json!({"id": "1"}), 400, &["'inputs'"]),
        json_case(
            "an id that is not a string",
            json!({"id": {"a": 1}, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 12], "data": row}]}),
            400,
            &["'id'", "expected a string"],
        ),
        json_case(
            "wrong datatype",
            input(json!([1, 12]), "INT32", json!(row)),
            400,
            &["INT32", "FP32 or FP64"],
        ),
        json_case(
            "1-D shape",
            input(json!([12]), "FP32", json!(row)),
            400,
            &["[12]", "[rows, width]"],
        ),
        json_case(
            "wrong width",
            input(json!([1, 11]), "FP32", json!(vec![0.5; 11])),
            400,
            &["[1, 11]", "12"],
        ),
        json_case(
            "count vs shape",
            input(json!([2, 12]), "FP32", json!(row)),
            400,
            &["12 values", "24"],
        ),
        json_case(
            "ragged nested",
            input(
                json!([2, 12]),
                "FP32",
                json!([vec![0.5; 12], vec![0.5; 11]]),
            ),
            400,
            &["row 1", "11 values", "12"],
        ),
        json_case(
            "rows vs shape",
            input(
                json!([3, 12]),
                "FP32",
                json!([vec![0.5; 12], vec![0.5; 12]]),
            ),
            400,
            &["2 rows", "3"],
        ),
        json_case(
            "mixed nesting",
            input(json!([2, 12]), "FP32", json!([vec![0.5; 12], 1.0])),
            400,
            &["mixes numbers and lists", "item 1"],
        ),
        json_case(
            "a string value",
            input(json!([1, 2]), "FP32", json!([1.0, "x"])),
            400,
            &["\"x\"", "index 1"],
        ),
        json_case(
            "beyond f32",
            input(
                json!([1, 12]),
                "FP32",
                json!([0, 0, 0, 1e39, 0, 0, 0, 0, 0, 0, 0, 0]),
            ),
            400,
            &["index 3", "finite float32"],
        ),
        json_case(
            "FP64 beyond f32",
            input(json!([1, 2]), "FP64", json!([1.0, -3.5e300])),
            400,
            &["index 1"],
        ),
        json_case(
            "unknown input",
            json!({"inputs": [{"name": "x", "shape": [1, 12], "datatype": "FP32", "data": row}]}),
            400,
            &["'x'", "'input'"],
        ),
        json_case(
            "unknown output",
            {
                let mut b = input(json!([1, 12]), "FP32", json!(row));
                b["outputs"] = json!([{"name": "probabilities"}]);
                b
            },
            400,
            &["'probabilities'", "'output'"],
        ),
        json_case(
            "timeout not a number",
            {
                let mut b = input(json!([1, 12]), "FP32", json!(row));
                b["parameters"] = json!({"timeout": "soon"});
                b
            },
            400,
            &["timeout", "microseconds"],
        ),
        json_case(
            "quorum over the members",
            {
                let mut b = input(json!([1, 12]), "FP32", json!(row));
                b["parameters"] = json!({"quorum": 6});
                b
            },
            400,
            &["quorum 6", "5 members"],
        ),
        json_case(
            "quorum zero",
            {
                let mut b = input(json!([1, 12]), "FP32", json!(row));
                b["parameters"] = json!({"quorum": 0});
                b
            },
            400,
            &["quorum 0"],
        ),
        binary_case(
            "binary size vs shape",
            bin_input(40, json!([1, 12])),
            &[0u8; 40],
            400,
            &["binary_data_size 40", "48 bytes"],
        ),
        binary_case(
            "binary data short",
            bin_input(48, json!([1, 12])),
            &[0u8; 20],
            400,
            &["binary_data_size 48", "20 bytes"],
        ),
        binary_case(
            "binary data left over",
            bin_input(48, json!([1, 12])),
            &[0u8; 52],
            400,
            &["52 bytes", "48"],
        ),
        binary_case(
            "binary NaN",
            bin_input(48, json!([1, 12])),
            &f32s(&nan_row),
            400,
            &["index 7", "NaN"],
        ),
        (
            "header longer than the body",
            b"{}".to_vec(),
            vec![("Inference-Header-Content-Length", "100".to_string())],
            400,
            vec!["100 bytes", "2 bytes"],
        ),
        (
            "header not a number",
            b"{}".to_vec(),
            vec![("Inference-Header-Content-Length", "many".to_string())],
            400,
            vec!["'many'"],
        ),
        (
            "compressed body",
            b"\x1f\x8b".to_vec(),
            vec![("Content-Encoding", "gzip".to_string())],
            400,
            vec!["gzip", "uncompressed"],
        ),
    ];
    for (what, body, headers, status, words) in &cases {
        let reply = post_bytes(&server.url("/v2/models/mean/infer"), headers, body);
        assert_eq!(
            reply.status,
            *status,
            "{what}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let error = reply.error();
        for word in words {
            assert!(error.contains(word), "{what}: '{word}' not in: {error}");
        }
    }
    let good = infer_body(&x(), false);
    for (path, words) in [
        ("/v2/models/nope/infer", vec!["'nope'"]),
        ("/v2/models/mean/versions/3/infer", vec!["version 3"]),
        (
            "/v2/models/mean/versions/0/infer",
            vec!["'0'", "positive integer"],
        ),
    ] {
        let reply = post_json(&server.url(path), &good);
        assert_eq!(reply.status, 404, "{path}");
        for word in words {
            assert!(
                reply.error().contains(word),
                "{path}: '{word}' not in {}",
                reply.error()
            );
        }
    }
    still_answers(&server, &want);
}

#[test]
fn unknown_routes_and_methods_answer_json_cpu() {
    let server = server();
    let reply = get(&server.url("/v3/nothing"));
    assert_eq!(reply.status, 404);
    assert!(reply.error().contains("/v3/nothing"), "{}", reply.error());
    let reply = get(&server.url("/v2/models/mean/infer"));
    assert_eq!(reply.status, 405);
    assert!(reply.error().contains("GET"), "{}", reply.error());
}

#[test]
fn a_body_over_the_limit_is_413_with_a_json_error_cpu() {
    let server = TestServer::start_with(&[("mean", 1, "mean.toml")], "cpu", |c| {
        c.max_body_bytes(4096)
    });
    let big = vec![b' '; 20_000];
    for path in ["/v2/models/mean/infer", "/v1/models/mean:predict"] {
        let reply = post_bytes(&server.url(path), &[], &big);
        assert_eq!(
            reply.status,
            413,
            "{path}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let error = reply.error();
        assert!(error.contains("4096"), "{path}: {error}");
    }
    // Sent chunked (no Content-Length): counted as it arrives.
    let mut reader: &[u8] = &big;
    let reply = crate::common::serve::agent()
        .post(&server.url("/v2/models/mean/infer"))
        .send(ureq::SendBody::from_reader(&mut reader));
    let mut reply = reply.expect("an HTTP response");
    assert_eq!(reply.status().as_u16(), 413);
    let body: Value = reply.body_mut().read_json().unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("over the limit of 4096 bytes"), "{error}");
    // Under the limit: answered.
    let reply = post_json(
        &server.url("/v1/models/mean:predict"),
        &json!({"instances": [vec![0.5; 12]]}),
    );
    assert_ok(&reply);
}

#[test]
fn deadline_and_quorum_parameters_behave_as_run_options_cpu() {
    let server = server();
    let x = x();
    let manifest = Manifest::load(golden("mean.toml")).unwrap();
    let session = Session::new(manifest.graph(Some(&Placement::Cpu)).unwrap()).unwrap();
    let options = RunOptions::default()
        .timeout(std::time::Duration::from_secs(60))
        .quorum(wgpu_ensemble::QuorumPolicy::Quorum(3));
    let run = session.run(&x, &options).unwrap();
    let want: Vec<f64> = run
        .aggregate
        .as_slice()
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let mut body = infer_body(&x, false);
    body["parameters"] = json!({"timeout": 60_000_000, "quorum": 3});
    let reply = post_json(&server.url("/v2/models/mean/infer"), &body);
    assert_ok(&reply);
    let answer = reply.json();
    // Every member answered in time: a whole answer, no missing members.
    assert!(answer.get("parameters").is_none(), "{answer}");
    assert_close(
        "timeout + quorum",
        &floats(&output(&answer, "output")["data"]),
        &want,
    );
    // As RunOptions: quorum 0 and more than the members are refused.
    let err = session
        .run(
            &x,
            &RunOptions::default().quorum(wgpu_ensemble::QuorumPolicy::Quorum(6)),
        )
        .unwrap_err();
    body["parameters"] = json!({"quorum": 6});
    let reply = post_json(&server.url("/v2/models/mean/infer"), &body);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error(), err.to_string());
    // A deadline of 1 µs has passed before any replica takes the request: 504.
    body["parameters"] = json!({"timeout": 1});
    let reply = post_json(&server.url("/v2/models/mean/infer"), &body);
    assert_eq!(
        reply.status,
        504,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(reply.error().contains("deadline"), "{}", reply.error());
    // 0 is no timeout, as in Triton.
    body["parameters"] = json!({"timeout": 0});
    assert_eq!(
        post_json(&server.url("/v2/models/mean/infer"), &body).status,
        200
    );
}

#[test]
fn tf_predict_rows_and_columns_equal_session_run_cpu() {
    let server = server();
    let x = x();
    let (want, _) = reference(&x);
    let rows: Vec<Vec<f32>> = x.as_slice().chunks(12).map(|r| r.to_vec()).collect();
    let named: Vec<Value> = rows.iter().map(|r| json!({"input": r})).collect();
    let flat = |v: &Value| -> Vec<f32> {
        v.as_array()
            .unwrap_or_else(|| panic!("not a list: {v}"))
            .iter()
            .flat_map(|row| {
                let row = floats(row);
                assert_eq!(row.len(), 5);
                row
            })
            .collect()
    };
    for path in [
        "/v1/models/mean:predict",
        "/v1/models/mean/versions/1:predict",
    ] {
        for (what, body, key) in [
            ("instances", json!({"instances": rows}), "predictions"),
            (
                "named instances",
                json!({"instances": named, "signature_name": "serving_default"}),
                "predictions",
            ),
            (
                "inputs",
                json!({"inputs": rows, "signature_name": ""}),
                "outputs",
            ),
            (
                "named inputs",
                json!({"inputs": {"input": rows}}),
                "outputs",
            ),
        ] {
            let reply = post_json(&server.url(path), &body);
            assert_eq!(
                reply.status,
                200,
                "{path} {what}: {}",
                String::from_utf8_lossy(&reply.body)
            );
            let answer = reply.json();
            assert_close(&format!("{path} {what}"), &flat(&answer[key]), &want);
        }
    }
    let row = json!(vec![0.5; 12]);
    for (what, path, body, status, words) in [
        (
            "unknown model",
            "/v1/models/nope:predict",
            json!({"instances": [row]}),
            404,
            vec!["'nope'"],
        ),
        (
            "unknown version",
            "/v1/models/mean/versions/4:predict",
            json!({"instances": [row]}),
            404,
            vec!["version 4"],
        ),
        (
            "unknown label",
            "/v1/models/mean/labels/stable:predict",
            json!({"instances": [row]}),
            404,
            vec!["stable"],
        ),
        (
            "no verb",
            "/v1/models/mean/versions/1",
            json!({"instances": [row]}),
            405,
            vec!["takes GET"],
        ),
        (
            "classify",
            "/v1/models/mean:classify",
            json!({"instances": [row]}),
            400,
            vec![":classify"],
        ),
        (
            "bad path",
            "/v1/models/mean/other/1:predict",
            json!({"instances": [row]}),
            404,
            vec!["/v1/models/mean/other/1:predict"],
        ),
        (
            "neither",
            "/v1/models/mean:predict",
            json!({"examples": [row]}),
            400,
            vec!["'instances'", "'inputs'"],
        ),
        (
            "both",
            "/v1/models/mean:predict",
            json!({"instances": [row], "inputs": [row]}),
            400,
            vec!["both"],
        ),
        (
            "signature",
            "/v1/models/mean:predict",
            json!({"instances": [row], "signature_name": "predict_images"}),
            400,
            vec!["predict_images", "serving_default"],
        ),
        (
            "ragged",
            "/v1/models/mean:predict",
            json!({"instances": [row, [1.0, 2.0]]}),
            400,
            vec!["instance 1", "2 values", "12"],
        ),
        (
            "wrong width",
            "/v1/models/mean:predict",
            json!({"instances": [[1.0, 2.0]]}),
            400,
            vec!["[1, 2]", "12"],
        ),
        (
            "unknown input name",
            "/v1/models/mean:predict",
            json!({"instances": [{"x": row}]}),
            400,
            vec!["'x'", "'input'"],
        ),
        (
            "a string",
            "/v1/models/mean:predict",
            json!({"inputs": [[1.0, "a"]]}),
            400,
            vec!["\"a\"", "position 1"],
        ),
        (
            "columnar not rows",
            "/v1/models/mean:predict",
            json!({"inputs": [1.0, 2.0]}),
            400,
            vec!["row 0"],
        ),
        (
            "beyond f32",
            "/v1/models/mean:predict",
            json!({"instances": [[0.0, 1e300]]}),
            400,
            vec!["index 1"],
        ),
        (
            "no rows",
            "/v1/models/mean:predict",
            json!({"instances": []}),
            400,
            vec!["no rows"],
        ),
    ] {
        let reply = post_json(&server.url(path), &body);
        assert_eq!(
            reply.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        for word in words {
            assert!(
                reply.error().contains(word),
                "{what}: '{word}' not in {}",
                reply.error()
            );
        }
    }
    let reply = post_bytes(
        &server.url("/v1/models/mean:predict"),
        &[],
        b"{\"instances\": [[1,",
    );
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().contains("not valid JSON"),
        "{}",
        reply.error()
    );
    still_answers(&server, &want);
}

#[test]
fn tf_status_metadata_and_a_failed_load_cpu() {
    let server = TestServer::start(&[("mean", 1, "mean.toml")], "cpu");
    let status = get(&server.url("/v1/models/mean"));
    assert_eq!(status.status, 200);
    assert_eq!(
        status.json(),
        json!({"model_version_status": [{"version": "1", "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]})
    );
    assert_eq!(
        get(&server.url("/v1/models/mean/versions/1")).json(),
        status.json()
    );
    let reply = get(&server.url("/v1/models/mean/versions/5"));
    assert_eq!(reply.status, 404);
    assert!(reply.error().contains("version 5"), "{}", reply.error());
    assert_eq!(get(&server.url("/v1/models/nope")).status, 404);
    assert_eq!(
        get(&server.url("/v1/models/mean/labels/stable")).status,
        404
    );

    let meta = get(&server.url("/v1/models/mean/metadata")).json();
    assert_eq!(meta["model_spec"]["version"], "1");
    let signature = &meta["metadata"]["signature_def"]["signature_def"]["serving_default"];
    assert_eq!(signature["inputs"]["input"]["dtype"], "DT_FLOAT");
    assert_eq!(
        signature["inputs"]["input"]["tensor_shape"]["dim"][1]["size"],
        "12"
    );
    assert_eq!(
        signature["outputs"]["output"]["tensor_shape"]["dim"][1]["size"],
        "5"
    );

    // A version whose manifest names a missing file: reported with its error, and
    // version 1 goes on being served.
    let staging = server.dir.path().join("mean").join(".staging-2");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(
        staging.join("ensemble.toml"),
        "[aggregate]\nkind = \"mean\"\n\n[[member]]\nname = \"a\"\nfile = \"missing.safetensors\"\ndevice = \"cpu\"\n",
    )
    .unwrap();
    std::fs::rename(&staging, server.dir.path().join("mean").join("2")).unwrap();
    let failed = (0..400)
        .find_map(|_| {
            let reply = get(&server.url("/v1/models/mean/versions/2"));
            if reply.status == 200 && reply.json()["model_version_status"][0]["state"] == "END" {
                return Some(reply.json());
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
            None
        })
        .expect("version 2's failed load is reported within 10 s");
    let v2 = &failed["model_version_status"][0];
    assert_eq!(v2["version"], "2");
    assert_eq!(v2["status"]["error_code"], "UNKNOWN");
    let message = v2["status"]["error_message"].as_str().unwrap();
    assert!(message.contains("missing.safetensors"), "{message}");
    let all = get(&server.url("/v1/models/mean")).json();
    let states: Vec<(String, String)> = all["model_version_status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["version"].as_str().unwrap().into(),
                s["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        states.contains(&("1".into(), "AVAILABLE".into())),
        "{states:?}"
    );
    // A `config.toml` whose label points at a version that is not served: the note
    // is in every version's message, and version 1, served, keeps its code OK.
    std::fs::write(
        server.dir.path().join("mean").join("config.toml"),
        "labels = { stable = 7 }\n",
    )
    .unwrap();
    let noted = (0..400)
        .find_map(|_| {
            let reply = get(&server.url("/v1/models/mean/versions/1")).json();
            let message = reply["model_version_status"][0]["status"]["error_message"].clone();
            if message.as_str().is_some_and(|m| m.contains("stable")) {
                return Some(reply);
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
            None
        })
        .expect("the refused label is reported within 10 s");
    let v1 = &noted["model_version_status"][0];
    assert_eq!(v1["state"], "AVAILABLE");
    assert_eq!(v1["status"]["error_code"], "OK", "{v1}");
    // A label no path reaches ('metadata') is refused on its own: the file's other
    // label serves.
    std::fs::write(
        server.dir.path().join("mean").join("config.toml"),
        "labels = { stable = 1, metadata = 1 }\n",
    )
    .unwrap();
    let stable = (0..400)
        .find_map(|_| {
            let reply = get(&server.url("/v1/models/mean/labels/stable"));
            if reply.status == 200 {
                return Some(reply.json());
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
            None
        })
        .expect("label 'stable' served within 10 s");
    assert_eq!(stable["model_version_status"][0]["version"], "1");
    let message = stable["model_version_status"][0]["status"]["error_message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("'metadata'") && message.contains("no path reaches it"),
        "{message}"
    );
    let reply = post_json(
        &server.url("/v1/models/mean:predict"),
        &json!({"instances": [vec![0.5; 12]]}),
    );
    assert_ok(&reply);
}

#[test]
fn bad_requests_beside_good_ones_change_nothing_cpu() {
    let server = server();
    let x = x();
    let (want, _) = reference(&x);
    let good = infer_body(&x, true);
    let bad = [
        input(json!([1, 12]), "FP32", json!([f64::MAX; 12].to_vec())),
        input(json!([2, 12]), "FP32", json!([vec![1.0; 12], vec![1.0; 3]])),
        input(json!([1, 11]), "FP32", json!(vec![1.0; 11])),
    ];
    std::thread::scope(|scope| {
        for t in 0..6 {
            let (server, good, bad, want) = (&server, &good, &bad, &want);
            scope.spawn(move || {
                for i in 0..4 {
                    let b = &bad[(t + i) % bad.len()];
                    let reply = post_json(&server.url("/v2/models/mean/infer"), b);
                    assert_eq!(reply.status, 400, "thread {t} request {i}");
                    let reply = post_json(&server.url("/v2/models/mean/infer"), good);
                    assert_eq!(reply.status, 200, "thread {t} request {i}");
                    let got = floats(&output(&reply.json(), "output")["data"]);
                    assert_close(&format!("thread {t} request {i}"), &got, want);
                }
            });
        }
    });
}

/// A member that fails (a `FaultPlan` through `ServeConfig::session`): with a quorum,
/// the answer is the aggregate of the others — as `Session::run` gives it with the
/// same fault — and its `parameters` name the missing member and why; without one,
/// the request fails naming it. A member late at the deadline without a quorum: 504
/// naming the late members.
#[test]
fn partial_answers_and_late_members_name_them_cpu() {
    use wgpu_ensemble::{Fault, FaultPlan, QuorumPolicy, SessionOptions};
    // Run 0 of every session is the warm-up; from run 1 on, `fc-f64` fails.
    let plan = FaultPlan::new().from_run("fc-f64", 1, Fault::Fail);
    let server = TestServer::start_with(&[("mean", 1, "mean.toml")], "cpu", |c| {
        c.session(SessionOptions::default().faults(plan.clone()))
    });
    let x = x();
    let manifest = Manifest::load(golden("mean.toml")).unwrap();
    let session = Session::with_options(
        manifest.graph(Some(&Placement::Cpu)).unwrap(),
        SessionOptions::default().faults(plan.clone()),
    )
    .unwrap();
    let warm = Tensor::zeros(1, x.shape()[1]);
    session.run(&warm, &RunOptions::default()).unwrap();
    let want: Vec<f64> = session
        .run(&x, &RunOptions::default().quorum(QuorumPolicy::Quorum(4)))
        .unwrap()
        .aggregate
        .as_slice()
        .iter()
        .map(|&v| f64::from(v))
        .collect();

    let mut body = infer_body(&x, false);
    body["parameters"] = json!({"quorum": 4});
    let reply = post_json(&server.url("/v2/models/mean/infer"), &body);
    assert_ok(&reply);
    let answer = reply.json();
    assert_close(
        "quorum 4 of 5",
        &floats(&output(&answer, "output")["data"]),
        &want,
    );
    let missing = answer["parameters"]["missing_members"]
        .as_str()
        .unwrap_or_else(|| panic!("no missing_members in {answer}"));
    assert!(
        missing.contains("fc-f64") && missing.contains("fault injection"),
        "{missing}"
    );
    assert!(!missing.contains("seq-relu"), "{missing}");

    // Every member required: the request fails, naming the member.
    body["parameters"] = json!({});
    let reply = post_json(&server.url("/v2/models/mean/infer"), &body);
    assert!(reply.status >= 500, "{}", reply.status);
    assert!(reply.error().contains("fc-f64"), "{}", reply.error());

    // Late: every CPU member sleeps 2 s from run 1 on; a 100 ms deadline passes.
    let plan = FaultPlan::new().from_run(
        "seq-relu",
        1,
        Fault::Sleep(std::time::Duration::from_secs(2)),
    );
    let late = TestServer::start_with(&[("mean", 1, "mean.toml")], "cpu", |c| {
        c.session(SessionOptions::default().faults(plan))
    });
    body["parameters"] = json!({"timeout": 100_000});
    let reply = post_json(&late.url("/v2/models/mean/infer"), &body);
    assert_eq!(
        reply.status,
        504,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let error = reply.error();
    assert!(
        error.contains("seq-relu") && error.contains("bf16-gelu"),
        "{error}"
    );
}

/// Requests for made-up models and versions are counted without their names: 200 of
/// them add no label value to `/metrics` (an unbounded set of names would grow the
/// server's memory), and a known model's failures are labelled with it.
#[test]
fn metrics_labels_stay_bounded_under_made_up_names_cpu() {
    let server = server();
    let x = x();
    for i in 0..100 {
        let reply = post_json(
            &server.url(&format!("/v2/models/nope-{i}/infer")),
            &infer_body(&x, false),
        );
        assert_eq!(reply.status, 404);
        let reply = post_json(
            &server.url(&format!("/v2/models/mean/versions/{}/infer", 1000 + i)),
            &infer_body(&x, false),
        );
        assert_eq!(reply.status, 404);
        let reply = post_json(
            &server.url(&format!("/v1/models/nope-{i}:predict")),
            &json!({"instances": [vec![0.0; 12]]}),
        );
        assert_eq!(reply.status, 404);
    }
    assert_eq!(
        post_json(&server.url("/v2/models/mean/infer"), &infer_body(&x, false)).status,
        200
    );
    let text = String::from_utf8(get(&server.url("/metrics")).body).unwrap();
    assert!(!text.contains("nope-"), "a made-up model is a label");
    assert!(
        !text.contains("version=\"10"),
        "a made-up version is a label"
    );
    let requests = |outcome: &str, model: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("wgpu_ensemble_inference_requests_total{"))
            .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .filter(|l| l.contains(&format!("model=\"{model}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(requests("not_found", ""), 200.0, "{text}");
    assert_eq!(requests("not_found", "mean"), 100.0, "{text}");
    assert_eq!(requests("success", "mean"), 1.0, "{text}");
}

/// A client that sends half a request and stops holds the shutdown no longer than
/// `ServeConfig::shutdown_timeout` (it held it until the client left); the server
/// answers `live` while it loads, and a request it accepted is still answered.
#[test]
fn a_stuck_client_does_not_hold_the_shutdown_cpu() {
    use std::io::Write;
    let mut server = TestServer::start_with(&[("mean", 1, "mean.toml")], "cpu", |c| {
        c.shutdown_timeout(std::time::Duration::from_millis(500))
    });
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut stuck = std::net::TcpStream::connect(&addr).unwrap();
    stuck
        .write_all(b"POST /v2/models/mean/infer HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A request that arrives whole is answered.
    still_answers(&server, &reference(&x()).0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.shutdown();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_secs(60)).is_ok(),
        "the shutdown waited over 60 s for a client that sent half a request"
    );
    drop(stuck);
}

/// A client that sends half a request's headers and stops, or opens a connection and
/// sends nothing, is disconnected once `ServeConfig::header_read_timeout` has passed
/// (without it, such connections stayed open as long as the client wanted); a request
/// that arrives whole is answered meanwhile.
#[test]
fn a_client_too_slow_with_its_headers_is_disconnected_cpu() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let server = TestServer::start_with(&[("mean", 1, "mean.toml")], "cpu", |c| {
        c.header_read_timeout(Some(Duration::from_millis(300)))
    });
    let addr = server.base.trim_start_matches("http://").to_string();
    for sent in [
        &b"POST /v2/models/mean/infer HTTP/1.1\r\nHost: x\r\n"[..],
        b"",
    ] {
        let started = Instant::now();
        let mut slow = std::net::TcpStream::connect(&addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        slow.write_all(sent).unwrap();
        still_answers(&server, &reference(&x()).0);
        // The server closes the connection (perhaps after a 408): the read ends well
        // before the client's own 20 s.
        let mut answer = Vec::new();
        let read = slow.read_to_end(&mut answer);
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(15),
            "{:?}: still open after {waited:?} ({read:?})",
            String::from_utf8_lossy(sent)
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{:?}: {answer:?}",
            String::from_utf8_lossy(sent)
        );
    }
}

/// Sends `request` on a new connection to `server`, optionally shuts down the write
/// side, and reads until the server closes (30 s at most).
fn raw_exchange(server: &TestServer, request: &[u8], half_close: bool) -> String {
    use std::io::{Read, Write};
    let addr = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).unwrap();
    if half_close {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client that shuts down its write side once its request is sent (as `nc -N` and
/// some health checkers do) still gets the answer; hyper's default closed the
/// connection unanswered.
#[test]
fn a_client_that_half_closes_after_its_request_is_answered_cpu() {
    let server = server();
    let answer = raw_exchange(
        &server,
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",
        true,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let body = json!({"instances": [vec![0.5; 12]]}).to_string();
    let request = format!(
        "POST /v1/models/mean:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(&server, request.as_bytes(), true);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("\"predictions\""), "{answer:?}");
}

/// Every method a route does not take is 405 with a JSON error and an `Allow` header
/// naming the methods it takes, on both protocols (TensorFlow Serving's paths share one
/// route, and answered 404 for a POST of the status and a GET of `:predict`).
#[test]
fn wrong_methods_are_405_with_allow_on_both_protocols_cpu() {
    let server = server();
    let cases: [(&str, &str, &str); 9] = [
        ("POST", "/v2/models/mean", "GET"),
        ("POST", "/v2/models/mean/versions/1", "GET"),
        ("POST", "/v2/health/live", "GET"),
        ("PUT", "/v2", "GET"),
        ("GET", "/v2/models/mean/infer", "POST"),
        ("POST", "/v1/models/mean", "GET"),
        ("POST", "/v1/models/mean/versions/1/metadata", "GET"),
        ("GET", "/v1/models/mean:predict", "POST"),
        ("GET", "/v1/models/mean/labels/stable:predict", "POST"),
    ];
    for (method, path, allowed) in cases {
        let request = crate::common::serve::agent()
            .run(
                ureq::http::Request::builder()
                    .method(method)
                    .uri(server.url(path))
                    .body(())
                    .unwrap(),
            )
            .expect("an HTTP response");
        let status = request.status().as_u16();
        let allow = request
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap_or("").to_string());
        let mut request = request;
        let body: Value = request
            .body_mut()
            .read_json()
            .unwrap_or_else(|e| panic!("{method} {path}: {status}, the body is not JSON: {e}"));
        assert_eq!(status, 405, "{method} {path}: {body}");
        let allow = allow.unwrap_or_else(|| panic!("{method} {path}: no Allow header"));
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{method} {path}: Allow: {allow}"
        );
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
        assert!(error.contains(method), "{method} {path}: {error}");
    }
    still_answers(&server, &reference(&x()).0);
}

/// The router's own errors are JSON too: a path segment that is not UTF-8 once
/// percent-decoded is refused by axum's path extractor (it answered in plain text).
#[test]
fn path_rejections_and_unknown_routes_are_json_cpu() {
    let server = server();
    for (path, status) in [
        ("/v2/models/%ff/ready", 400),
        ("/v2/models/mean/versions/%ff", 400),
        ("/v2/models/%ff%fe", 400),
        ("/v3/nothing", 404),
        ("/v1/nothing", 404),
    ] {
        let reply = get(&server.url(path));
        assert_eq!(reply.status, status, "{path}: {:?}", reply.body);
        assert!(
            reply
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{path}: {:?}",
            reply.headers
        );
        assert!(!reply.error().is_empty(), "{path}");
    }
    let reply = post_json(
        &server.url("/v2/models/%ff/infer"),
        &infer_body(&x(), false),
    );
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("UTF-8"), "{}", reply.error());
}

/// The budget of bodies held (twice `--max-body-bytes`, at least 16 MiB) is taken as
/// bytes arrive: two connections that declare bodies of the largest size and then
/// send nothing more hold almost none of it, so a small request and one of the
/// largest size are answered at once (both waited up to 30 s and got 503 while the
/// two were held at their declared length).
#[test]
fn bodies_still_arriving_hold_no_room_cpu() {
    use std::io::Write;
    use std::time::Duration;
    const LIMIT: usize = 8 << 20; // the default; the budget is 16 MiB
    let server = TestServer::start_with(&[("mean", 1, "mean.toml")], "cpu", |c| {
        c.max_body_bytes(LIMIT)
    });
    let addr = server.base.trim_start_matches("http://").to_string();
    let hold = |length: usize| {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "POST /v1/models/mean:predict HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{"
        )
        .unwrap();
        stream
    };
    let first = hold(LIMIT);
    let second = hold(LIMIT);
    std::thread::sleep(Duration::from_secs(1));
    let small = json!({"instances": [vec![0.5; 12]]});
    // A body of the largest size: valid JSON padded with spaces.
    let mut big = small.to_string().into_bytes();
    big.resize(LIMIT, b' ');
    let url = server.url("/v1/models/mean:predict");
    let (tx, rx) = std::sync::mpsc::channel();
    for body in [small.to_string().into_bytes(), big] {
        let (tx, url) = (tx.clone(), url.clone());
        std::thread::spawn(move || {
            let _ = tx.send(post_bytes(
                &url,
                &[("Content-Type", "application/json".to_string())],
                &body,
            ));
        });
    }
    for _ in 0..2 {
        let reply = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("answered while two bodies are held half-sent");
        assert_ok(&reply);
    }
    drop((first, second));
}

/// The bodies held are bounded by the budget: two connections that have sent all but
/// 256 KiB of 8 MiB bodies hold 8 MiB of room each (a buffer grows by doubling, up to
/// the limit), all of the 16 MiB; a request then is answered 503 at once (not after a
/// wait), and once one of the two has gone, 200.
#[test]
fn bodies_beyond_the_budget_are_refused_at_once_cpu() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    const LIMIT: usize = 8 << 20;
    let server = TestServer::start_with(&[("mean", 1, "mean.toml")], "cpu", |c| {
        c.max_body_bytes(LIMIT)
    });
    let addr = server.base.trim_start_matches("http://").to_string();
    let hold = || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "POST /v1/models/mean:predict HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: {LIMIT}\r\n\r\n"
        )
        .unwrap();
        stream.write_all(&vec![b' '; LIMIT - (256 << 10)]).unwrap();
        stream
    };
    let first = hold();
    let second = hold();
    let small = json!({"instances": [vec![0.5; 12]]});
    let url = server.url("/v1/models/mean:predict");
    // The server takes the two bodies' bytes as they come: until it has, a request
    // may still find room.
    let started = Instant::now();
    let refused = loop {
        let reply = post_json(&url, &small);
        if reply.status == 503 || started.elapsed() > Duration::from_secs(20) {
            break reply;
        }
        assert_ok(&reply);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(refused.status, 503, "the budget never filled");
    assert!(refused.error().contains("try again"), "{}", refused.error());
    let asked = Instant::now();
    let again = post_json(&url, &small);
    assert_eq!(again.status, 503);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "a refusal waited {:?}",
        asked.elapsed()
    );
    drop(first);
    let started = Instant::now();
    let answered = loop {
        let reply = post_json(&url, &small);
        if reply.status == 200 || started.elapsed() > Duration::from_secs(20) {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ok(&answered);
    drop(second);
}

/// The queue-duration metric is the time a request waited in its version's queue, not
/// the time its body took to arrive: a body sent 1.5 s after its headers adds 1.5 s to
/// the request's duration and nothing to its queue time.
#[test]
fn queue_time_excludes_a_slow_upload_cpu() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let server = server();
    let body = serde_json::to_vec(&infer_body(&x(), false)).unwrap();
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST /v2/models/mean/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    stream.write_all(&body).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let text = String::from_utf8(get(&server.url("/metrics")).body).unwrap();
    let labels = [r#"model="mean""#];
    let request = metric(
        &text,
        "wgpu_ensemble_inference_request_duration_seconds_sum",
        &labels,
    );
    let queued = metric(
        &text,
        "wgpu_ensemble_inference_queue_duration_seconds_sum",
        &labels,
    );
    assert!(request >= 1.4, "request duration {request} s:\n{text}");
    assert!(
        queued < 1.0,
        "queue duration {queued} s for a slow upload:\n{text}"
    );
}

/// Triton's `inference_count` and `inference_exec_count` count inferences performed:
/// a request whose run fails adds nothing to them (it added its rows and a run),
/// one that succeeds adds its rows and one run.
#[test]
fn failed_runs_are_not_counted_as_inferences_cpu() {
    use wgpu_ensemble::{Fault, FaultPlan, SessionOptions};
    // Run 0 is the warm-up; run 1 fails, run 2 on succeeds.
    let plan = FaultPlan::new().on_run("fc-f64", 1, Fault::Fail);
    let server = TestServer::start_with(&[("mean", 1, "mean.toml")], "cpu", |c| {
        c.session(SessionOptions::default().faults(plan.clone()))
    });
    let counts = || {
        let text = String::from_utf8(get(&server.url("/metrics")).body).unwrap();
        let labels = [r#"model="mean""#];
        (
            metric(&text, "wgpu_ensemble_inference_count", &labels),
            metric(&text, "wgpu_ensemble_inference_exec_count", &labels),
        )
    };
    let before = counts();
    let body = infer_body(&x(), false);
    let failed = post_json(&server.url("/v2/models/mean/infer"), &body);
    assert_eq!(
        failed.status,
        500,
        "{}",
        String::from_utf8_lossy(&failed.body)
    );
    assert_eq!(counts(), before, "a failed run was counted");
    let ok = post_json(&server.url("/v2/models/mean/infer"), &body);
    assert_ok(&ok);
    assert_eq!(counts(), (before.0 + 33.0, before.1 + 1.0));
}
