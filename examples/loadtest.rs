//! A bounded load generator on loopback for the inference server: requests/s and p50 /
//! p99 latency at 1, 16 and 64 concurrent clients, for E1 (4 × 784-512-512-10, mean) at
//! one row per request, with dynamic batching (batches of up to 64 rows, 500 µs) and
//! without (batches of 1), next to a `Session::run` loop of one row in the same run.
//! Two rounds, interleaved (the machines are shared and noisy).
//!
//!     cargo run --release --example loadtest -- [--device cpu|auto|adapter:N] [--seconds S] [--clients 1,16,64] [--json]
//!
//! Every client is a thread with its own keep-alive connection that sends a KServe v2
//! request, waits for the answer and sends the next, until S seconds (default 3) or
//! 200 000 requests have passed. Requests and answers use the binary tensor extension,
//! as Triton's clients do by default; `--json` sends and asks for JSON data instead. A figure recorded with it belongs under
//! `benches/results/<date>/`.

use std::path::Path;
use std::time::{Duration, Instant};

use wgpu_ensemble::serve::{BatchConfig, ServeConfig, Server};
use wgpu_ensemble::{Activation, Model, RunOptions, Session, Tensor};

const WIDTHS: [usize; 4] = [784, 512, 512, 10];
const MEMBERS: usize = 4;
const MAX_REQUESTS: usize = 200_000;

struct Figures {
    requests: usize,
    failed: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut device = "cpu".to_string();
    let mut seconds = 3.0f64;
    let mut clients = vec![1usize, 16, 64];
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--json" {
            json = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--device" => device = value,
            "--seconds" => seconds = value.parse()?,
            "--clients" => {
                clients = value
                    .split(',')
                    .map(|c| c.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let duration = Duration::from_secs_f64(seconds);
    let dir = tempfile::tempdir()?;
    let manifest = write_repository(dir.path(), &device)?;
    let session = Session::new(wgpu_ensemble::io::Manifest::load(&manifest)?.graph(None)?)?;

    let batching = Server::start(
        ServeConfig::new(dir.path())
            .addr(([127, 0, 0, 1], 0).into())
            .batch(BatchConfig {
                max_batch_size: 64,
                max_queue_delay: Duration::from_micros(500),
                queue_capacity: 4096,
            }),
    )?;
    let single = Server::start(
        ServeConfig::new(dir.path())
            .addr(([127, 0, 0, 1], 0).into())
            .batch(BatchConfig {
                max_batch_size: 1,
                max_queue_delay: Duration::ZERO,
                queue_capacity: 4096,
            }),
    )?;
    let body = if json {
        json_request()
    } else {
        binary_request()
    };
    let x = Tensor::matrix(1, WIDTHS[0], input_row())?;
    println!(
        "loadtest: E1 ({MEMBERS} x 784-512-512-10) on {device}, 1 row per request ({}), {seconds} s per cell, two rounds",
        if json { "JSON" } else { "binary tensor data" }
    );
    println!("| round | what | clients | requests | failed | requests/s | p50 ms | p99 ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for round in 1..=2 {
        let f = session_loop(&session, &x, duration)?;
        print_row(round, "Session::run", 1, &f);
        for &n in &clients {
            for (what, server) in [
                ("server, batching", &batching),
                ("server, no batching", &single),
            ] {
                let url = format!("http://{}/v2/models/e1/infer", server.addr());
                let f = load(&url, &body, n, duration);
                print_row(round, what, n, &f);
            }
        }
    }
    batching.shutdown();
    single.shutdown();
    Ok(())
}

fn print_row(round: usize, what: &str, clients: usize, f: &Figures) {
    println!(
        "| {round} | {what} | {clients} | {} | {} | {:.0} | {:.3} | {:.3} |",
        f.requests, f.failed, f.per_second, f.p50_ms, f.p99_ms
    );
}

/// E1's members as safetensors and a manifest placing them on `device`.
fn write_repository(
    root: &Path,
    device: &str,
) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    let version = root.join("e1").join("1");
    std::fs::create_dir_all(&version)?;
    let acts = [Activation::Relu, Activation::Relu, Activation::Softmax];
    let mut manifest = String::from("[aggregate]\nkind = \"mean\"\n");
    for i in 0..MEMBERS {
        let model = Model::random(&WIDTHS, &acts, i as u64)?;
        wgpu_ensemble::io::save_model(&model, version.join(format!("m{i}.safetensors")))?;
        manifest.push_str(&format!(
            "\n[[member]]\nname = \"m{i}\"\nfile = \"m{i}.safetensors\"\ndevice = \"{device}\"\n"
        ));
    }
    let path = version.join("ensemble.toml");
    std::fs::write(&path, manifest)?;
    Ok(path)
}

fn input_row() -> Vec<f32> {
    (0..WIDTHS[0])
        .map(|i| ((i * 37) % 255) as f32 / 255.0)
        .collect()
}

/// A request: its body and, for the binary extension, the JSON header's length.
struct Request {
    body: Vec<u8>,
    header_length: Option<usize>,
}

fn json_request() -> Request {
    let data: Vec<String> = input_row().iter().map(|v| format!("{v}")).collect();
    let body = format!(
        "{{\"inputs\":[{{\"name\":\"input\",\"datatype\":\"FP32\",\"shape\":[1,{}],\"data\":[{}]}}]}}",
        WIDTHS[0],
        data.join(",")
    );
    Request {
        body: body.into_bytes(),
        header_length: None,
    }
}

fn binary_request() -> Request {
    let raw: Vec<u8> = input_row().iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = format!(
        "{{\"inputs\":[{{\"name\":\"input\",\"datatype\":\"FP32\",\"shape\":[1,{}],\"parameters\":{{\"binary_data_size\":{}}}}}],\"parameters\":{{\"binary_data_output\":true}}}}",
        WIDTHS[0],
        raw.len()
    );
    let mut body = header.clone().into_bytes();
    body.extend(raw);
    Request {
        body,
        header_length: Some(header.len()),
    }
}

fn figures(mut latencies: Vec<Duration>, failed: usize, elapsed: Duration) -> Figures {
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Figures {
        requests: latencies.len(),
        failed,
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

fn session_loop(
    session: &Session,
    x: &Tensor,
    duration: Duration,
) -> wgpu_ensemble::Result<Figures> {
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < duration && latencies.len() < MAX_REQUESTS {
        let t = Instant::now();
        session.run(x, &RunOptions::default())?;
        latencies.push(t.elapsed());
    }
    Ok(figures(latencies, 0, started.elapsed()))
}

/// `clients` threads sending `body` to `url` one request after another.
fn load(url: &str, request: &Request, clients: usize, duration: Duration) -> Figures {
    let started = Instant::now();
    let per_client = MAX_REQUESTS / clients.max(1);
    let results: Vec<(Vec<Duration>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let agent = ureq::Agent::new_with_defaults();
                    let mut latencies = Vec::new();
                    let mut failed = 0;
                    while started.elapsed() < duration && latencies.len() + failed < per_client {
                        let t = Instant::now();
                        let mut post = agent.post(url);
                        post = match request.header_length {
                            Some(n) => post
                                .header("content-type", "application/octet-stream")
                                .header("inference-header-content-length", n.to_string()),
                            None => post.header("content-type", "application/json"),
                        };
                        let ok = post
                            .send(&request.body[..])
                            .and_then(|r| r.into_body().read_to_vec())
                            .is_ok();
                        if ok {
                            latencies.push(t.elapsed());
                        } else {
                            failed += 1;
                        }
                    }
                    (latencies, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = started.elapsed();
    let failed = results.iter().map(|r| r.1).sum();
    let latencies = results.into_iter().flat_map(|r| r.0).collect();
    figures(latencies, failed, elapsed)
}
