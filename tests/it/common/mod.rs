//! Shared test support: an f64 reference forward pass that is independent of both
//! executors, tolerance checks, fixtures, and (in `devices`) where tests run.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wgpu_ensemble::{Activation, Model, Tensor};

mod devices;
#[cfg(feature = "serve")]
pub mod serve;
pub mod train;

pub use devices::*;

/// Absolute tolerance of f32 kernels against the f64 reference.
pub const ABS: f64 = 1e-5;
/// Relative tolerance (to the reference's magnitude) of f32 kernels.
pub const REL: f64 = 1e-4;

/// `[rows, cols]` values uniform in `[-2, 2)`.
pub fn input(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    Tensor::matrix(rows, cols, data).expect("shape matches data")
}

/// The reference forward pass, in f64, written from the definitions.
pub fn reference_forward(model: &Model, x: &Tensor) -> Vec<f64> {
    let values: Vec<f64> = x.as_slice().iter().map(|&v| f64::from(v)).collect();
    reference_forward64(model, &values, x.shape()[0])
}

/// [`reference_forward`] on `rows` rows of f64 input.
pub fn reference_forward64(model: &Model, x: &[f64], rows: usize) -> Vec<f64> {
    let mut cur: Vec<f64> = x.to_vec();
    for layer in model.layers() {
        let (n, k) = (layer.out_features(), layer.in_features());
        let w = layer.weight().as_slice();
        let b = layer.bias();
        let mut next = vec![0.0f64; rows * n];
        for r in 0..rows {
            for o in 0..n {
                let mut s = f64::from(b[o]);
                for i in 0..k {
                    s += cur[r * k + i] * f64::from(w[o * k + i]);
                }
                next[r * n + o] = s;
            }
        }
        apply(layer.activation(), &mut next, n);
        cur = next;
    }
    cur
}

fn apply(act: Activation, y: &mut [f64], cols: usize) {
    match act {
        Activation::Identity => {}
        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Tanh => y.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Sigmoid => y.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Activation::Gelu => y
            .iter_mut()
            .for_each(|v| *v = 0.5 * *v * (1.0 + libm::erf(*v / std::f64::consts::SQRT_2))),
        Activation::Softmax => {
            for row in y.chunks_mut(cols) {
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
                row.iter_mut().for_each(|v| *v = (*v - m).exp() / s);
            }
        }
        other => panic!("reference has no activation {other:?}"),
    }
}

/// Weighted mean of member outputs.
pub fn reference_mean(outputs: &[Vec<f64>], weights: &[f64]) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    (0..outputs[0].len())
        .map(|i| {
            outputs
                .iter()
                .zip(weights)
                .map(|(y, w)| w * y[i])
                .sum::<f64>()
                / total
        })
        .collect()
}

/// Weighted vote shares; panics when a member's top two outputs of a row are so close
/// that f32 rounding could flip its vote (pick other seeds then).
pub fn reference_vote(outputs: &[Vec<f64>], weights: &[f64], cols: usize) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    let mut shares = vec![0.0f64; outputs[0].len()];
    for (y, w) in outputs.iter().zip(weights) {
        for (r, row) in y.chunks(cols).enumerate() {
            let mut order: Vec<usize> = (0..cols).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            if cols > 1 {
                let margin = row[order[0]] - row[order[1]];
                assert!(
                    margin > 1e-5 * row[order[0]].abs().max(1.0),
                    "row {r}: near-tie ({margin:e}) makes the reference vote fragile; change the seed"
                );
            }
            shares[r * cols + order[0]] += w / total;
        }
    }
    shares
}

/// Checks `|got - want| <= ABS` or `<= REL * max(|got|, |want|)` for every element,
/// naming the first index that fails and both values.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_close_tol(what, got, want, ABS, REL);
}

/// [`assert_close`] with explicit tolerances.
#[track_caller]
pub fn assert_close_tol(what: &str, got: &[f32], want: &[f64], abs: f64, rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            approx::relative_eq!(f64::from(g), w, epsilon = abs, max_relative = rel),
            "{what}: index {i}: got {g}, reference {w} (|diff| {:e}, abs {abs:e}, rel {rel:e})",
            (f64::from(g) - w).abs()
        );
    }
}

/// The folder of the golden fixtures made by `tests/fixtures/make_golden.py`.
pub fn golden(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden")
        .join(file)
}

/// A float64 `.npy` fixture: its shape and values.
pub fn read_f64(path: &std::path::Path) -> (Vec<usize>, Vec<f64>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<f64>().unwrap())
}

/// The WGSL file (from the crate's root) that holds `round_f16`, the function every
/// f16 kernel rounds its inputs through.
pub const ROUND_F16_SHADER: &str = "shaders/lib/round_f16.wgsl";

/// The text of `fn name(...) { ... }` in WGSL `source`, up to the closing brace at
/// column 0.
pub fn wgsl_function(source: &str, name: &str) -> String {
    let start = source
        .find(&format!("fn {name}("))
        .unwrap_or_else(|| panic!("no fn {name}"));
    let end = source[start..]
        .find("\n}\n")
        .map(|e| start + e + 3)
        .unwrap_or(source.len());
    source[start..end].to_string()
}

/// f32 rounded to the nearest f16.
pub fn round_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// The reference of `Precision::F16`: weights and every layer's input rounded to f16,
/// everything else in f64.
pub fn reference_forward_f16(model: &Model, x: &Tensor) -> Vec<f64> {
    let rounded = |t: &Tensor| {
        Tensor::new(
            t.shape().to_vec(),
            t.as_slice()
                .iter()
                .map(|&v| round_f16(v))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    };
    let mut cur = rounded(x);
    let layers = model.layers();
    let mut out = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let single = Model::from_parts(vec![(
            rounded(layer.weight()),
            layer.bias().to_vec(),
            layer.activation(),
        )])
        .unwrap();
        out = reference_forward(&single, &cur);
        if i + 1 < layers.len() {
            // The next layer reads this output (held in f32) rounded to f16.
            let rows = x.shape()[0];
            let values: Vec<f32> = out.iter().map(|&v| round_f16(v as f32)).collect();
            cur = Tensor::matrix(rows, layer.out_features(), values).unwrap();
        }
    }
    out
}

/// The weighted mean of the members in `present` (indices into `models` and
/// `weights`), with the weights renormalised over them: what a quorum run aggregates.
pub fn reference_present(
    models: &[Model],
    weights: &[f32],
    x: &Tensor,
    present: &[usize],
) -> Vec<f64> {
    let outputs: Vec<Vec<f64>> = present
        .iter()
        .map(|&i| reference_forward(&models[i], x))
        .collect();
    let w: Vec<f64> = present.iter().map(|&i| f64::from(weights[i])).collect();
    reference_mean(&outputs, &w)
}

/// Runs the `wgpu-ensemble` binary with `args` and waits for it.
pub fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wgpu-ensemble"))
        .args(args)
        .output()
        .expect("the wgpu-ensemble binary runs")
}

/// What a finished command wrote to stderr.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The uncertainty measures of `members` (each `[rows, cols]`, weighted by `weights`)
/// from their definitions, in f64: per row entropy, expected entropy, mutual
/// information, disagreement, then the `[rows, cols]` variances.
pub struct ReferenceMeasures {
    pub summary: Vec<f64>,
    pub variance: Vec<f64>,
}

pub fn reference_measures(
    members: &[Vec<f64>],
    weights: &[f64],
    rows: usize,
    cols: usize,
) -> ReferenceMeasures {
    let total: f64 = weights.iter().sum();
    let h = |p: &[f64]| -> f64 { p.iter().filter(|&&v| v > 0.0).map(|&v| -v * v.ln()).sum() };
    let mut summary = Vec::new();
    let mut variance = Vec::new();
    for r in 0..rows {
        let rowm = |m: &Vec<f64>| m[r * cols..(r + 1) * cols].to_vec();
        let mut mean = vec![0.0; cols];
        for (m, w) in members.iter().zip(weights) {
            for (c, v) in rowm(m).iter().enumerate() {
                mean[c] += w * v / total;
            }
        }
        let expected: f64 = members
            .iter()
            .zip(weights)
            .map(|(m, w)| w * h(&rowm(m)))
            .sum::<f64>()
            / total;
        let mut votes = vec![0.0; cols];
        for (m, w) in members.iter().zip(weights) {
            let p = rowm(m);
            // The first of the largest.
            let mut best = 0;
            for c in 1..cols {
                if p[c] > p[best] {
                    best = c;
                }
            }
            votes[best] += w;
        }
        let modal = votes.iter().cloned().fold(0.0, f64::max);
        let total_h = h(&mean);
        summary.extend([
            total_h,
            expected,
            (total_h - expected).max(0.0),
            1.0 - modal / total,
        ]);
        for c in 0..cols {
            variance.push(
                members
                    .iter()
                    .zip(weights)
                    .map(|(m, w)| w * (m[r * cols + c] - mean[c]).powi(2))
                    .sum::<f64>()
                    / total,
            );
        }
    }
    ReferenceMeasures { summary, variance }
}

/// The members' reference outputs (each `cols` wide) side by side in member order,
/// through `blender`, all in f64: a stack's aggregate.
pub fn reference_stack(members: &[Model], blender: &Model, x: &Tensor, cols: usize) -> Vec<f64> {
    let rows = x.shape()[0];
    let outs: Vec<Vec<f64>> = members.iter().map(|m| reference_forward(m, x)).collect();
    let mut stacked = Vec::new();
    for r in 0..rows {
        for y in &outs {
            stacked.extend_from_slice(&y[r * cols..(r + 1) * cols]);
        }
    }
    reference_forward64(blender, &stacked, rows)
}

/// The indices of the members that finished, in member order.
pub fn finished(members: &[wgpu_ensemble::MemberReport]) -> Vec<usize> {
    members
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m.status, wgpu_ensemble::MemberStatus::Finished))
        .map(|(i, _)| i)
        .collect()
}

/// A job on a thread of its own ([`bounded`]), awaited with a time limit.
pub struct Bounded<T>(std::sync::mpsc::Receiver<std::thread::Result<T>>);

/// Starts `job` on a thread of its own, so that a test can bound a wait that would
/// hang if the code under test deadlocked.
pub fn bounded<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Bounded<T> {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)));
    });
    Bounded(finished)
}

impl<T> Bounded<T> {
    /// The job's result; a panic of the job is the test's (its own message, not a
    /// timeout), and a job not finished within `limit` fails the test naming `what`.
    pub fn wait(self, what: &str, limit: std::time::Duration) -> T {
        match self.0.recv_timeout(limit) {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("{what} did not finish within {limit:?}"),
        }
    }
}

/// Whether this process ignores signal `number` (its children start ignoring it too,
/// and the commands leave a signal ignored at their start ignored): Linux's SigIgn
/// mask. Background jobs of a non-interactive shell start with SIGINT and SIGQUIT
/// ignored, `nohup` adds SIGHUP.
pub fn ignored_here(number: i32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or(0);
    mask & (1 << (number - 1)) != 0
}

/// Waits at most `limit` for `child` to exit; kills it and fails past that, naming
/// `what`.
pub fn wait_bounded(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}; killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
