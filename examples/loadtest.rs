//! A bounded load generator on loopback for the inference server: requests/s and p50 /
//! p99 latency at 1, 16 and 64 concurrent clients, for E1 (4 × 784-512-512-10, mean) at
//! one row per request, with dynamic batching (batches of up to 64 rows, 500 µs) and
//! without (batches of 1), next to a `Session::run` loop of one row in the same run.
//! Two rounds, interleaved (the machines are shared and noisy).
//!
//!     cargo run --release --example loadtest -- [--device cpu|auto|adapter:N] [--seconds S] [--clients 1,16,64] [--only batching|no-batching] [--json]
//!
//! Every client is a thread with its own keep-alive connection that sends a KServe v2
//! request, waits for the answer and sends the next, until S seconds (default 3) or
//! 200 000 requests have passed. The client is a minimal HTTP/1.1 writer and reader
//! (a prepared request; the answer's head and `Content-Length` bytes), so that the load
//! generator takes little of the CPU it shares with the server; an answer other than
//! 200 counts as failed. Requests and answers use the binary tensor extension, as
//! Triton's clients do by default; `--json` sends and asks for JSON data instead.
//! `rows/run` is the server's mean batch (rows run over runs, from its `/metrics`).
//! A figure recorded with it belongs under `benches/results/<date>/`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--json" {
            json = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--device" => device = value,
            "--only" if value == "batching" || value == "no-batching" => only = Some(value),
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
    let x64 = Tensor::matrix(64, WIDTHS[0], input_row().repeat(64))?;
    println!(
        "loadtest: E1 ({MEMBERS} x 784-512-512-10) on {device}, 1 row per request ({}), {seconds} s per cell, two rounds",
        if json { "JSON" } else { "binary tensor data" }
    );
    println!(
        "| round | what | clients | requests | failed | requests/s | p50 ms | p99 ms | rows/run |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for round in 1..=2 {
        let f = session_loop(&session, &x, duration)?;
        print_row(round, "Session::run", 1, &f, None);
        let mut f = session_loop(&session, &x64, duration)?;
        // The ceiling of batching: rows per second at 64 rows per run.
        f.requests *= 64;
        f.per_second *= 64.0;
        print_row(round, "Session::run, rows", 1, &f, Some(64.0));
        for &n in &clients {
            for (what, server) in [
                ("server, batching", &batching),
                ("server, no batching", &single),
            ] {
                if only
                    .as_deref()
                    .is_some_and(|o| what != format!("server, {}", o.replace('-', " ")))
                {
                    continue;
                }
                let before = counts(server);
                let f = load(server.addr(), &body, n, duration);
                let after = counts(server);
                let batch = (after.0 - before.0) / (after.1 - before.1).max(1.0);
                print_row(round, what, n, &f, Some(batch));
            }
        }
    }
    batching.shutdown();
    single.shutdown();
    Ok(())
}

fn print_row(round: usize, what: &str, clients: usize, f: &Figures, batch: Option<f64>) {
    println!(
        "| {round} | {what} | {clients} | {} | {} | {:.0} | {:.3} | {:.3} | {} |",
        f.requests,
        f.failed,
        f.per_second,
        f.p50_ms,
        f.p99_ms,
        batch.map_or("1".to_string(), |b| format!("{b:.1}"))
    );
}

/// The server's rows run and runs so far (its `/metrics`), for the mean batch.
fn counts(server: &Server) -> (f64, f64) {
    let text = ureq::get(format!("http://{}/metrics", server.addr()))
        .call()
        .and_then(|r| r.into_body().read_to_string())
        .unwrap_or_default();
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        sum("wgpu_ensemble_inference_count"),
        sum("wgpu_ensemble_inference_exec_count"),
    )
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

impl Request {
    /// The whole request as sent: head and body.
    fn wire(&self, addr: SocketAddr) -> Vec<u8> {
        let mut head = format!(
            "POST /v2/models/e1/infer HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n",
            self.body.len()
        );
        match self.header_length {
            Some(n) => head.push_str(&format!(
                "content-type: application/octet-stream\r\ninference-header-content-length: {n}\r\n"
            )),
            None => head.push_str("content-type: application/json\r\n"),
        }
        head.push_str("\r\n");
        let mut wire = head.into_bytes();
        wire.extend_from_slice(&self.body);
        wire
    }
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

/// `clients` threads sending `request` to `addr` one request after another.
fn load(addr: SocketAddr, request: &Request, clients: usize, duration: Duration) -> Figures {
    let started = Instant::now();
    let per_client = MAX_REQUESTS / clients.max(1);
    let wire = request.wire(addr);
    let results: Vec<(Vec<Duration>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let mut client = Client::new(addr);
                    let mut latencies = Vec::new();
                    let mut failed = 0;
                    while started.elapsed() < duration && latencies.len() + failed < per_client {
                        let t = Instant::now();
                        if client.exchange(&wire) {
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

/// A minimal HTTP/1.1 keep-alive client: it writes a prepared request and reads the
/// answer's head and `Content-Length` bytes of body, so that the load generator spends
/// little of the CPU it shares with the server. A connection that fails is opened
/// again for the next request.
struct Client {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            buffer: Vec::with_capacity(64 * 1024),
        }
    }

    /// Sends `wire` and reads the answer; whether it was a 200.
    fn exchange(&mut self, wire: &[u8]) -> bool {
        let ok = self.try_exchange(wire).unwrap_or(false);
        if !ok {
            self.stream = None;
        }
        ok
    }

    fn try_exchange(&mut self, wire: &[u8]) -> std::io::Result<bool> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(false);
        };
        stream.write_all(wire)?;
        self.buffer.clear();
        let mut chunk = [0u8; 16 * 1024];
        // The head, up to the blank line.
        let head_end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(false);
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).to_ascii_lowercase();
        let status_ok = head.starts_with("http/1.1 200");
        let Some(length) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        else {
            return Ok(false);
        };
        let mut have = self.buffer.len() - head_end;
        while have < length {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(false);
            }
            have += n;
        }
        Ok(status_ok && have == length)
    }
}
