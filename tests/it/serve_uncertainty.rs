//! The uncertainty measures over KServe v2: a request that names `entropy`,
//! `expected_entropy`, `mutual_information`, `disagreement` or `variance` among its
//! outputs gets them (JSON or binary tensor data), equal to `Session::run` with
//! `RunOptions::uncertainty` on the same rows; the model's metadata lists them; requests
//! that differ in what they ask are batched together and each gets only what it
//! asked; an unknown or repeated name is a 400.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wgpu_ensemble::io::{read_matrix, save_model, Manifest};
use wgpu_ensemble::serve::BatchConfig;
use wgpu_ensemble::{
    Activation, Fault, FaultPlan, Model, Placement, QuorumPolicy, RunOptions, Session,
    SessionOptions, Tensor, Uncertainty,
};

use crate::common::serve::{
    binary_request, binary_response, floats, get, metric, post_json, Reply, TestServer,
};
use crate::common::{assert_close, golden};

/// The five measures, in the order the metadata lists them.
const MEASURES: [&str; 5] = [
    "entropy",
    "expected_entropy",
    "mutual_information",
    "disagreement",
    "variance",
];

/// The golden input, `[33, 12]`.
fn x() -> Tensor {
    read_matrix(golden("x.npy")).unwrap()
}

/// `Session::run` with `uncertainty(true)` on `mean.toml` with every member on the CPU:
/// the aggregate and the measures.
fn reference(x: &Tensor) -> (Vec<f64>, Uncertainty) {
    let manifest = Manifest::load(golden("mean.toml")).unwrap();
    let session = Session::new(manifest.graph(Some(&Placement::Cpu)).unwrap()).unwrap();
    let run = session
        .run(x, &RunOptions::default().uncertainty(true))
        .unwrap();
    let aggregate = f64s(run.aggregate.as_slice());
    (aggregate, run.uncertainty.expect("the run's measures"))
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&v| f64::from(v)).collect()
}

/// A measure of `u` by its output name, with its shape on the wire.
fn measure(u: &Uncertainty, name: &str) -> (Vec<usize>, Vec<f64>) {
    let rows = u.entropy.len();
    match name {
        "entropy" => (vec![rows], f64s(&u.entropy)),
        "expected_entropy" => (vec![rows], f64s(&u.expected_entropy)),
        "mutual_information" => (vec![rows], f64s(&u.mutual_information)),
        "disagreement" => (vec![rows], f64s(&u.disagreement)),
        "variance" => (u.variance.shape().to_vec(), f64s(u.variance.as_slice())),
        other => panic!("no measure {other}"),
    }
}

/// The rows `range` of every measure.
fn rows_of(u: &Uncertainty, range: std::ops::Range<usize>) -> Uncertainty {
    let cols = u.variance.shape()[1];
    let mut out = u.clone();
    out.entropy = u.entropy[range.clone()].to_vec();
    out.expected_entropy = u.expected_entropy[range.clone()].to_vec();
    out.mutual_information = u.mutual_information[range.clone()].to_vec();
    out.disagreement = u.disagreement[range.clone()].to_vec();
    out.variance = Tensor::matrix(
        range.len(),
        cols,
        u.variance.as_slice()[range.start * cols..range.end * cols].to_vec(),
    )
    .unwrap();
    out
}

fn server() -> TestServer {
    TestServer::start(&[("mean", 1, "mean.toml")], "cpu")
}

fn infer_body(x: &Tensor, outputs: &[&str]) -> Value {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let mut body = json!({"inputs": [{"name": "input", "shape": [rows, cols],
        "datatype": "FP32", "data": x.as_slice()}]});
    if !outputs.is_empty() {
        body["outputs"] = outputs.iter().map(|n| json!({ "name": n })).collect();
    }
    body
}

#[track_caller]
fn ok(reply: &Reply) {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body[..reply.body.len().min(500)])
    );
}

/// The names of a response's outputs, in order.
fn names(response: &Value) -> Vec<String> {
    response["outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("no outputs in {response}"))
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect()
}

fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {response}"))
}

/// Every measure named in `response` (JSON data) against `want`.
#[track_caller]
fn check_json(what: &str, response: &Value, want: &Uncertainty, names: &[&str]) {
    for name in names {
        let out = output(response, name);
        let (shape, values) = measure(want, name);
        assert_eq!(out["datatype"], "FP32", "{what}: {name}");
        assert_eq!(out["shape"], json!(shape), "{what}: {name}");
        assert_close(&format!("{what}: {name}"), &floats(&out["data"]), &values);
    }
}

/// All five asked for by name, as JSON and as binary tensor data: each equals
/// `Session::run` with `uncertainty(true)` on the same rows, with its shape.
#[test]
fn kserve_all_five_measures_json_and_binary_equal_session_run_cpu() {
    let server = server();
    let x = x();
    let (aggregate, want) = reference(&x);
    // The golden members disagree: the comparison is not one of zeros.
    assert!(want.mutual_information.iter().any(|&v| v > 1e-3));
    assert!(want.variance.as_slice().iter().any(|&v| v > 1e-4));

    let mut asked = vec!["output"];
    asked.extend(MEASURES);
    let reply = post_json(
        &server.url("/v2/models/mean/infer"),
        &infer_body(&x, &asked),
    );
    ok(&reply);
    let body = reply.json();
    // Exactly those asked, in the order asked.
    assert_eq!(names(&body), asked);
    assert_close(
        "JSON output",
        &floats(&output(&body, "output")["data"]),
        &aggregate,
    );
    check_json("JSON", &body, &want, &MEASURES);

    // Binary input; the measures in binary, the aggregate as JSON.
    let raw: Vec<u8> = x.as_slice().iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut outputs = vec![json!({"name": "output", "parameters": {"binary_data": false}})];
    outputs.extend(
        MEASURES
            .iter()
            .map(|n| json!({"name": n, "parameters": {"binary_data": true}})),
    );
    let header = json!({"id": "u1", "inputs": [{"name": "input", "shape": [33, 12],
        "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
        "outputs": outputs});
    let (json, binary) = binary_response(&binary_request(&server, "mean", &header, &raw));
    assert_eq!(json["id"], "u1");
    assert_close(
        "JSON output beside binary",
        &floats(&output(&json, "output")["data"]),
        &aggregate,
    );
    let binary_names: Vec<&str> = binary.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(binary_names, MEASURES);
    for (name, values) in &binary {
        let (shape, reference) = measure(&want, name);
        let out = output(&json, name);
        assert_eq!(out["shape"], json!(shape), "binary {name}");
        assert_eq!(out["datatype"], "FP32", "binary {name}");
        assert_eq!(
            out["parameters"]["binary_data_size"],
            shape.iter().product::<usize>() * 4,
            "binary {name}"
        );
        assert_close(&format!("binary {name}"), values, &reference);
    }

    // The request-level binary_data_output, as tritonclient sends it: every output
    // asked for comes back binary.
    let header = json!({"parameters": {"binary_data_output": true},
        "inputs": [{"name": "input", "shape": [33, 12], "datatype": "FP32",
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "mutual_information"}, {"name": "output"}]});
    let (_, binary) = binary_response(&binary_request(&server, "mean", &header, &raw));
    assert_eq!(binary.len(), 2);
    assert_eq!(binary[0].0, "mutual_information");
    assert_close(
        "binary_data_output: mutual_information",
        &binary[0].1,
        &measure(&want, "mutual_information").1,
    );
    assert_eq!(binary[1].0, "output");
    assert_close("binary_data_output: output", &binary[1].1, &aggregate);
}

/// A subset, in the request's order, and nothing else; a request that names no output
/// gets the aggregate only, and one row is `[1]`.
#[test]
fn kserve_a_subset_of_the_measures_is_exactly_what_comes_back_cpu() {
    let server = server();
    let x = x();
    let (aggregate, want) = reference(&x);
    let reply = post_json(
        &server.url("/v2/models/mean/infer"),
        &infer_body(&x, &["variance", "disagreement"]),
    );
    ok(&reply);
    let body = reply.json();
    assert_eq!(names(&body), ["variance", "disagreement"]);
    check_json("subset", &body, &want, &["variance", "disagreement"]);

    let reply = post_json(&server.url("/v2/models/mean/infer"), &infer_body(&x, &[]));
    ok(&reply);
    let body = reply.json();
    assert_eq!(names(&body), ["output"]);
    assert_close(
        "no outputs named",
        &floats(&output(&body, "output")["data"]),
        &aggregate,
    );

    // One row: the per-row measures are [1], the variance [1, classes].
    let one = Tensor::matrix(1, 12, x.as_slice()[12 * 7..12 * 8].to_vec()).unwrap();
    let (_, want_one) = reference(&one);
    let reply = post_json(
        &server.url("/v2/models/mean/versions/1/infer"),
        &infer_body(&one, &["entropy", "variance"]),
    );
    ok(&reply);
    let body = reply.json();
    assert_eq!(output(&body, "entropy")["shape"], json!([1]));
    assert_eq!(output(&body, "variance")["shape"], json!([1, 5]));
    check_json("one row", &body, &want_one, &["entropy", "variance"]);
    // The same row inside the 33: the same numbers.
    check_json("row 7 of 33", &body, &rows_of(&want, 7..8), &["entropy"]);
}

/// The model's metadata lists the five after `output` and `members`, with their shapes.
#[test]
fn kserve_metadata_lists_the_measures_cpu() {
    let server = server();
    for path in ["/v2/models/mean", "/v2/models/mean/versions/1"] {
        let meta = get(&server.url(path)).json();
        assert_eq!(
            meta["outputs"],
            json!([
                {"name": "output", "datatype": "FP32", "shape": [-1, 5]},
                {"name": "members", "datatype": "FP32", "shape": [5, -1, 5]},
                {"name": "entropy", "datatype": "FP32", "shape": [-1]},
                {"name": "expected_entropy", "datatype": "FP32", "shape": [-1]},
                {"name": "mutual_information", "datatype": "FP32", "shape": [-1]},
                {"name": "disagreement", "datatype": "FP32", "shape": [-1]},
                {"name": "variance", "datatype": "FP32", "shape": [-1, 5]},
            ]),
            "{path}"
        );
    }
}

/// An unknown output name is still a 400 naming it and the model's outputs (the five
/// among them); a measure asked for twice is a 400 too; the server answers afterwards.
#[test]
fn kserve_unknown_or_repeated_output_names_are_400_cpu() {
    let server = server();
    let x = x();
    let (_, want) = reference(&x);
    for (asked, words) in [
        (
            vec!["entropy", "Entropy"],
            vec!["'Entropy'", "'output'", "'members'", "'mutual_information'"],
        ),
        (vec!["uncertainty"], vec!["'uncertainty'", "'variance'"]),
        (vec!["variance", "variance"], vec!["'variance'", "twice"]),
    ] {
        let reply = post_json(
            &server.url("/v2/models/mean/infer"),
            &infer_body(&x, &asked),
        );
        assert_eq!(reply.status, 400, "{asked:?}: {}", reply.error());
        let error = reply.error();
        for word in words {
            assert!(error.contains(word), "{asked:?}: '{word}' not in: {error}");
        }
    }
    let reply = post_json(
        &server.url("/v2/models/mean/infer"),
        &infer_body(&x, &["entropy"]),
    );
    ok(&reply);
    check_json("after the errors", &reply.json(), &want, &["entropy"]);
}

/// `GET /metrics` as text.
fn metrics(url: &str) -> String {
    let reply = get(url);
    ok(&reply);
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// Two requests batched together, one asking for the measures and one not: the first
/// request after the warm-up holds the replica for 2 s (a member sleeps), the two
/// queue behind it and run as one batch (the metrics say so); the one that asked gets
/// its rows' measures, the other exactly what it asked for.
#[test]
fn kserve_requests_that_differ_in_the_measures_merge_and_get_what_they_asked_cpu() {
    // Run 0 is the warm-up; run 1 sleeps.
    let plan = FaultPlan::new().on_run("seq-relu", 1, Fault::Sleep(Duration::from_secs(2)));
    let server = TestServer::start_with(&[("mean", 1, "mean.toml")], "cpu", |c| {
        c.session(SessionOptions::default().faults(plan))
            .batch(BatchConfig {
                max_batch_size: 64,
                max_queue_delay: Duration::from_millis(50),
                queue_capacity: 64,
            })
    });
    let x = x();
    let (aggregate, want) = reference(&x);
    let first = Tensor::matrix(3, 12, x.as_slice()[..36].to_vec()).unwrap();
    let asking = Tensor::matrix(10, 12, x.as_slice()[36..156].to_vec()).unwrap();
    let plain = Tensor::matrix(20, 12, x.as_slice()[156..396].to_vec()).unwrap();
    let url = server.url("/v2/models/mean/infer");
    let metrics_url = server.url("/metrics");
    let labels = [r#"model="mean""#, r#"version="1""#];
    std::thread::scope(|scope| {
        let blocker = scope.spawn(|| post_json(&url, &infer_body(&first, &["output"])));
        // The blocker is running: the replica is busy.
        let until = Instant::now() + Duration::from_secs(20);
        while metric(
            &metrics(&metrics_url),
            "wgpu_ensemble_replica_in_flight",
            &labels,
        ) < 1.0
        {
            assert!(Instant::now() < until, "the first request never ran");
            std::thread::sleep(Duration::from_millis(10));
        }
        let asks = scope.spawn(|| {
            post_json(
                &url,
                &infer_body(&asking, &["output", "entropy", "variance"]),
            )
        });
        let not = scope.spawn(|| post_json(&url, &infer_body(&plain, &["output"])));
        // Both queued while the replica is still busy with the blocker.
        while metric(
            &metrics(&metrics_url),
            "wgpu_ensemble_inference_queue_depth",
            &labels,
        ) < 2.0
        {
            assert!(
                Instant::now() < until && !blocker.is_finished(),
                "the two requests were not queued behind the first"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let blocker = blocker.join().unwrap();
        ok(&blocker);
        assert_close(
            "the first request",
            &floats(&output(&blocker.json(), "output")["data"]),
            &aggregate[..15],
        );

        let asks = asks.join().unwrap();
        ok(&asks);
        let body = asks.json();
        assert_eq!(names(&body), ["output", "entropy", "variance"]);
        assert_close(
            "asking: output",
            &floats(&output(&body, "output")["data"]),
            &aggregate[15..65],
        );
        check_json(
            "asking",
            &body,
            &rows_of(&want, 3..13),
            &["entropy", "variance"],
        );

        let not = not.join().unwrap();
        ok(&not);
        let body = not.json();
        assert_eq!(names(&body), ["output"]);
        assert_close(
            "not asking: output",
            &floats(&output(&body, "output")["data"]),
            &aggregate[65..165],
        );
    });
    // Two runs after the warm-up: the first request alone, then the two together.
    let text = metrics(&metrics_url);
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_exec_count", &labels),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_requests_sum", &labels),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_count", &labels),
        33.0,
        "{text}"
    );
}

/// A stack served over KServe v2: a complete answer is the blender's, as
/// `Session::run` gives it, with no parameters; with a member failed under a request's
/// quorum the answer is the mean of the members present, and its parameters say
/// `stacked: false` beside the missing member.
#[test]
fn kserve_a_stack_says_when_its_blender_was_not_applied_cpu() {
    let dir = tempfile::tempdir().unwrap();
    crate::common::serve::add_version(dir.path(), "stack", 1, "mean.toml", "cpu");
    let version = dir.path().join("stack").join("1");
    let manifest = version.join("ensemble.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let classes = Manifest::load(golden("mean.toml"))
        .unwrap()
        .graph(Some(&Placement::Cpu))
        .unwrap()
        .output_width();
    let blender = Model::random(&[5 * classes, classes], &[Activation::Softmax], 17).unwrap();
    save_model(&blender, version.join("blender.safetensors")).unwrap();
    // Rewritten in place before the server starts: it never sees the mean.
    std::fs::write(
        &manifest,
        text.replace(
            "kind = \"mean\"",
            "kind = \"stack\"\nblender = \"blender.safetensors\"",
        ),
    )
    .unwrap();
    // The server's run 0 is its warm-up: run 1 answers the first request, run 2 the
    // second, with a member failed; the local session's runs are 0 and 1.
    let serving = FaultPlan::new().on_run("seq-relu", 2, Fault::Fail);
    let local = FaultPlan::new().on_run("seq-relu", 1, Fault::Fail);
    let server = wgpu_ensemble::serve::Server::start(
        wgpu_ensemble::serve::ServeConfig::new(dir.path())
            .addr(([127, 0, 0, 1], 0).into())
            .session(SessionOptions::default().faults(serving)),
    )
    .unwrap();
    let session = Session::with_options(
        Manifest::load(&manifest)
            .unwrap()
            .graph(Some(&Placement::Cpu))
            .unwrap(),
        SessionOptions::default().faults(local),
    )
    .unwrap();
    let x = x();
    let url = format!("http://{}/v2/models/stack/infer", server.addr());
    let whole = post_json(&url, &infer_body(&x, &["output"]));
    ok(&whole);
    let whole: Value = serde_json::from_slice(&whole.body).unwrap();
    assert!(whole.get("parameters").is_none(), "{whole}");
    let want = session.run(&x, &RunOptions::default()).unwrap();
    assert_eq!(want.stacked, Some(true));
    assert_close(
        "the complete stack",
        &floats(&output(&whole, "output")["data"]),
        &f64s(want.aggregate.as_slice()),
    );
    let mut body = infer_body(&x, &["output"]);
    body["parameters"] = json!({"quorum": 4});
    let partial = post_json(&url, &body);
    ok(&partial);
    let partial: Value = serde_json::from_slice(&partial.body).unwrap();
    assert_eq!(partial["parameters"]["stacked"], false, "{partial}");
    assert_eq!(partial["parameters"]["members_answered"], 4, "{partial}");
    let want = session
        .run(&x, &RunOptions::default().quorum(QuorumPolicy::Quorum(4)))
        .unwrap();
    assert_eq!(want.stacked, Some(false));
    assert_close(
        "the mean of the members present",
        &floats(&output(&partial, "output")["data"]),
        &f64s(want.aggregate.as_slice()),
    );
    server.shutdown();
}
