//! `wgpu-ensemble serve` as a process: it says where it listens once ready, answers,
//! and on SIGTERM answers every request it had accepted, then exits 0.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wgpu_ensemble::{Activation, Model};

/// A repository of one model whose run of 512 rows takes a while on the CPU: two
/// members of 16-2048-2048-4.
fn slow_repository(root: &Path) {
    let version = root.join("slow").join("1");
    std::fs::create_dir_all(&version).unwrap();
    let acts = [Activation::Relu, Activation::Relu, Activation::Softmax];
    let mut manifest = String::new();
    for i in 0..2 {
        let model = Model::random(&[16, 2048, 2048, 4], &acts, i).unwrap();
        wgpu_ensemble::io::save_model(&model, version.join(format!("m{i}.safetensors"))).unwrap();
        manifest.push_str(&format!(
            "[[member]]\nname = \"m{i}\"\nfile = \"m{i}.safetensors\"\ndevice = \"cpu\"\n"
        ));
    }
    std::fs::write(version.join("ensemble.toml"), manifest).unwrap();
}

/// `wgpu-ensemble serve ARGS --model-repository ROOT`, with every line it writes on
/// stderr sent to the receiver as it comes.
fn spawn_serve(args: &[&str], root: &Path) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgpu-ensemble"))
        .arg("serve")
        .args(args)
        .arg("--model-repository")
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the wgpu-ensemble binary runs");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// The first line of `lines` that `wanted` picks, waiting up to 60 s.
fn first_line(
    lines: &std::sync::mpsc::Receiver<String>,
    wanted: impl Fn(&str) -> bool,
) -> Option<String> {
    let until = Instant::now() + Duration::from_secs(60);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Starts the server on port 0 and reads its address from stderr.
fn start(root: &Path) -> (Child, String) {
    let (mut child, lines) = spawn_serve(&["--port", "0"], root);
    let line = first_line(&lines, |l| l.contains("listening on http://"));
    match line.and_then(|l| {
        l.split_once("listening on http://")
            .map(|(_, a)| a.to_string())
    }) {
        Some(addr) => (child, addr),
        None => {
            let _ = child.kill();
            panic!("the server did not say where it listens within 60 s");
        }
    }
}

fn infer_body(rows: usize) -> String {
    let data: Vec<String> = (0..rows * 16)
        .map(|i| format!("{}", (i % 7) as f32 / 7.0))
        .collect();
    format!(
        "{{\"inputs\":[{{\"name\":\"input\",\"datatype\":\"FP32\",\"shape\":[{rows},16],\"data\":[{}]}}]}}",
        data.join(",")
    )
}

#[cfg(unix)]
#[test]
fn sigterm_answers_the_requests_accepted_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    slow_repository(dir.path());
    let (mut child, addr) = start(dir.path());
    let url = format!("http://{addr}/v2/models/slow/infer");
    let live = ureq::get(&format!("http://{addr}/v2/health/live"))
        .call()
        .unwrap();
    assert_eq!(live.status(), 200);

    // Eight requests of 512 rows, sent at once: one runs, the others wait in the queue.
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let answer = ureq::post(&url)
                    .header("content-type", "application/json")
                    .send(infer_body(512))
                    .and_then(|r| r.into_body().read_to_string());
                (answer, started.elapsed())
            })
        })
        .collect();
    // Until the server holds all eight: queued, or running on the replica.
    let metrics_url = format!("http://{addr}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = ureq::get(&metrics_url)
            .call()
            .and_then(|r| r.into_body().read_to_string())
            .unwrap_or_default();
        let held: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("wgpu_ensemble_inference_queue_depth{")
                    || l.starts_with("wgpu_ensemble_replica_in_flight_requests{")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if held >= 8.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server held {held} of the 8 requests after 60 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let signalled = started.elapsed();
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());

    let mut last = Duration::ZERO;
    for client in clients {
        let (answer, at) = client.join().unwrap();
        let body =
            answer.unwrap_or_else(|e| panic!("a request accepted before SIGTERM failed: {e}"));
        assert!(body.contains("\"model_name\":\"slow\""), "{body}");
        last = last.max(at);
    }
    assert!(
        last > signalled,
        "no request was still being answered when SIGTERM came ({last:?} <= {signalled:?}): the test proves nothing"
    );
    let code = common::wait_bounded(
        &mut child,
        Duration::from_secs(60),
        "the server after SIGTERM",
    )
    .code();
    assert_eq!(code, Some(0));
    // Nothing listens any more.
    assert!(ureq::get(&format!("http://{addr}/v2/health/live"))
        .call()
        .is_err());
}

/// A repository that is not a folder is refused before anything listens, naming it.
#[test]
fn a_missing_repository_is_an_error() {
    let out = crate::common::cli(&[
        "serve",
        "--port",
        "0",
        "--model-repository",
        "/nonexistent/models",
    ]);
    assert!(!out.status.success());
    let err = crate::common::stderr(&out);
    assert!(err.contains("/nonexistent/models"), "{err}");
}

/// `--host` takes a host name (`localhost`: its IPv4 address); a port already taken
/// is an error that says the server cannot listen there and why, not that the address
/// is invalid.
#[test]
fn host_names_and_a_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let run = |host: &str, port: &str| {
        let (mut child, lines) = spawn_serve(&["--host", host, "--port", port], dir.path());
        let line = first_line(&lines, |l| {
            l.contains("listening on http://") || l.contains("error")
        });
        let _ = child.kill();
        let _ = child.wait();
        line.expect("the server said where it listens, or why not, within 60 s")
    };
    let line = run("127.0.0.1", &port);
    assert!(
        line.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{line}"
    );
    let line = run("localhost", "0");
    assert!(line.contains("listening on http://127.0.0.1:"), "{line}");
    drop(taken);
}

/// A `config.toml` refused poll after poll for the same reason is logged once (it was
/// logged on every poll); once it changes, the new reason is logged.
#[test]
fn a_refused_config_is_logged_once_per_reason() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.toml"), "bogus = 1\n").unwrap();
    let (mut child, rx) = spawn_serve(&["--port", "0", "--poll-interval-ms", "20"], dir.path());
    let mut lines = Vec::new();
    let collect = |lines: &mut Vec<String>, for_: Duration| {
        let until = Instant::now() + for_;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
    };
    // The first refusal, then about 50 polls more.
    let first = first_line(&rx, |l| l.contains("config.toml refused"));
    lines.extend(first);
    collect(&mut lines, Duration::from_secs(1));
    let staged = model.join(".config.toml.new");
    std::fs::write(&staged, "other = 2\n").unwrap();
    std::fs::rename(&staged, model.join("config.toml")).unwrap();
    collect(&mut lines, Duration::from_secs(1));
    let _ = child.kill();
    let _ = child.wait();
    let refused: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("config.toml refused"))
        .collect();
    assert_eq!(refused.len(), 2, "{lines:#?}");
    assert!(
        refused[0].contains("bogus") && refused[1].contains("other"),
        "{refused:#?}"
    );
}
