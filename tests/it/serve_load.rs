//! The server under load over real HTTP: versions swapped while clients send, and
//! concurrent clients merged into batches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wgpu_ensemble::io::{read_matrix, Manifest};
use wgpu_ensemble::serve::BatchConfig;
use wgpu_ensemble::{Placement, RunOptions, Session, Tensor};

use crate::common::golden;
use crate::common::serve::{add_version, floats, get, post_json, TestServer};

/// `Session::run` of a golden manifest on the CPU.
fn run(manifest: &str, x: &Tensor) -> Vec<f32> {
    let manifest = Manifest::load(golden(manifest)).unwrap();
    let session = Session::new(manifest.graph(Some(&Placement::Cpu)).unwrap()).unwrap();
    session
        .run(x, &RunOptions::default())
        .unwrap()
        .aggregate
        .to_vec()
}

fn body(x: &Tensor) -> Value {
    json!({"inputs": [{"name": "input", "shape": x.shape(), "datatype": "FP32", "data": x.as_slice()}]})
}

/// Index and both values of the first pair apart by more than abs 1e-5 + rel 1e-4.
fn differs(got: &[f32], want: &[f32]) -> Option<(usize, f32, f32)> {
    if got.len() != want.len() {
        return Some((usize::MAX, got.len() as f32, want.len() as f32));
    }
    got.iter()
        .zip(want)
        .enumerate()
        .find(|(_, (&g, &w))| {
            let d = (f64::from(g) - f64::from(w)).abs();
            d > 1e-5 + 1e-4 * f64::from(w).abs()
        })
        .map(|(i, (&g, &w))| (i, g, w))
}

/// Hot swap under load: a client sends continuously while version 2 is added, then a
/// broken version 3, then version 2 is removed. No request fails, and every answer is
/// the one of the version it names (mean, weighted mean and vote differ).
#[test]
fn hot_swap_under_load_loses_no_request_cpu() {
    let x = read_matrix(golden("x.npy")).unwrap();
    let want = [
        (1u64, run("mean.toml", &x)),
        (2, run("weighted_mean.toml", &x)),
        (3, run("vote.toml", &x)),
    ];
    let server = TestServer::start(&[("m", 1, "mean.toml")], "cpu");
    let url = server.url("/v2/models/m/infer");
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, body, want) = (Arc::clone(&stop), body(&x), want.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut seen = std::collections::BTreeMap::<u64, usize>::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(60)
                && seen.values().sum::<usize>() + failures.len() < 20_000
            {
                let reply = post_json(&url, &body);
                if reply.status != 200 {
                    failures.push(format!(
                        "{}: {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    ));
                    continue;
                }
                let answer = reply.json();
                let version: u64 = answer["model_version"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let got = floats(&answer["outputs"][0]["data"]);
                match want.iter().find(|(v, _)| *v == version) {
                    Some((_, w)) => {
                        if let Some((i, g, w)) = differs(&got, w) {
                            failures
                                .push(format!("version {version}: index {i}: got {g}, want {w}"));
                        }
                    }
                    None => failures.push(format!("unknown version in {answer}")),
                }
                *seen.entry(version).or_default() += 1;
            }
            (seen, failures)
        })
    };
    let root = server.dir.path().to_path_buf();
    let status = |v: u64| -> String {
        get(&server.url(&format!("/v1/models/m/versions/{v}"))).json()["model_version_status"][0]
            ["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Some requests under the new state.
        std::thread::sleep(Duration::from_millis(200));
    };
    wait_for("serving version 1", &|| status(1) == "AVAILABLE");
    add_version(&root, "m", 2, "weighted_mean.toml", "cpu");
    wait_for("serving version 2", &|| {
        status(2) == "AVAILABLE" && status(1) == "END"
    });
    // A broken version 3: a member file that does not exist.
    let broken = root.join("m").join(".staging-3");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("ensemble.toml"),
        "[[member]]\nname = \"a\"\nfile = \"absent.safetensors\"\ndevice = \"cpu\"\n",
    )
    .unwrap();
    std::fs::rename(&broken, root.join("m").join("3")).unwrap();
    wait_for("version 3 refused", &|| status(3) == "END");
    assert_eq!(
        status(2),
        "AVAILABLE",
        "the broken version must not replace the served one"
    );
    std::fs::remove_dir_all(root.join("m").join("2")).unwrap();
    wait_for("version 2 unloaded", &|| status(2) == "END");
    stop.store(true, Ordering::SeqCst);
    let (seen, failures) = client.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        seen.values().sum::<usize>(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        seen.get(&1).copied().unwrap_or(0) > 0 && seen.get(&2).copied().unwrap_or(0) > 0,
        "answers by version: {seen:?}"
    );
}

/// 64 concurrent clients, one or two rows each: the batch-size histogram shows batches
/// of more than one request, and every answer equals the same rows run alone.
#[test]
fn concurrent_clients_are_batched_without_changing_answers_cpu() {
    let x = read_matrix(golden("x.npy")).unwrap();
    let cols = x.shape()[1];
    let server = TestServer::start_with(&[("m", 1, "mean.toml")], "cpu", |c| {
        c.batch(BatchConfig {
            max_batch_size: 64,
            max_queue_delay: Duration::from_millis(20),
            queue_capacity: 1024,
        })
    });
    let url = server.url("/v2/models/m/infer");
    let barrier = Arc::new(std::sync::Barrier::new(64));
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            let rows = 1 + i % 2;
            let start = (i * 3) % (x.shape()[0] - 1);
            let input = Tensor::matrix(
                rows,
                cols,
                x.as_slice()[start * cols..(start + rows) * cols].to_vec(),
            )
            .unwrap();
            std::thread::spawn(move || {
                barrier.wait();
                let reply = post_json(&url, &body(&input));
                (input, reply.status, reply.body)
            })
        })
        .collect();
    for client in clients {
        let (input, status, reply) = client.join().unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
        let answer: Value = serde_json::from_slice(&reply).unwrap();
        let got = floats(&answer["outputs"][0]["data"]);
        let alone = run("mean.toml", &input);
        if let Some((i, g, w)) = differs(&got, &alone) {
            panic!("batched answer differs from alone at {i}: got {g}, want {w}");
        }
    }
    let text = String::from_utf8(get(&server.url("/metrics")).body).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (requests, batches) = (
        value("wgpu_ensemble_inference_batch_requests_sum"),
        value("wgpu_ensemble_inference_batch_requests_count"),
    );
    // The warm-up runs are not batches; 64 requests in fewer than 64 batches.
    assert_eq!(requests, 64.0, "{text}");
    assert!(
        batches < 64.0,
        "64 requests ran in {batches} batches: none merged"
    );
}

/// A served version whose manifest is written in place is loaded again once it
/// changes: a manifest read half-written (two of its five members) was served so, for
/// good; now the version follows its files, and answers equal `Session::run` of the
/// whole manifest.
#[test]
fn a_version_written_in_place_is_loaded_again_when_its_files_change_cpu() {
    let x = read_matrix(golden("x.npy")).unwrap();
    let server = TestServer::start(&[("m", 1, "mean.toml")], "cpu");
    let manifest = server.dir.path().join("m").join("1").join("ensemble.toml");
    let whole = std::fs::read_to_string(&manifest).unwrap();
    let third = whole.match_indices("[[member]]").nth(2).unwrap().0;
    let members = || -> u64 {
        get(&server.url("/v2/models/m")).json()["outputs"][1]["shape"][0]
            .as_u64()
            .unwrap_or(0)
    };
    let wait_for = |count: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while members() != count {
            assert!(Instant::now() < deadline, "not {count} members within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(5);
    // Half-written: two members.
    std::fs::write(&manifest, &whole[..third]).unwrap();
    wait_for(2);
    // Whole again.
    std::fs::write(&manifest, &whole).unwrap();
    wait_for(5);
    let reply = post_json(&server.url("/v2/models/m/infer"), &body(&x));
    assert_eq!(reply.status, 200);
    let got = floats(&reply.json()["outputs"][0]["data"]);
    if let Some((i, g, w)) = differs(&got, &run("mean.toml", &x)) {
        panic!("index {i}: got {g}, want {w}");
    }
}
