//! The standard workloads of the benchmarks and the `wgpu-ensemble bench` command:
//! one square dense layer (`gemm`) and the ensembles E1 and E2.

use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::fault::{Fault, FaultPlan};
use crate::graph::Graph;
use crate::model::{Activation, Model};
use crate::options::{QuorumPolicy, RunOptions, SessionOptions};
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::placement::Placement;
use crate::report::MemberReport;
use crate::session::Session;
use crate::tensor::Tensor;

/// A standard workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Workload {
    /// One `n × n` dense layer (identity) at batch `n`: `2n³` FLOP per run.
    Gemm,
    /// 4 × MLP 784-512-512-10 (relu, relu, softmax), mean.
    E1,
    /// 8 × MLP 1024-4096-4096-1024 (relu, relu, softmax), mean.
    E2,
}

impl FromStr for Workload {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gemm" => Ok(Workload::Gemm),
            "e1" => Ok(Workload::E1),
            "e2" => Ok(Workload::E2),
            _ => Err(Error::invalid("workload", s, "gemm, E1 or E2")),
        }
    }
}

impl Workload {
    /// `gemm`, `E1` or `E2`.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Gemm => "gemm",
            Workload::E1 => "E1",
            Workload::E2 => "E2",
        }
    }

    /// The members' widths, their number, and the input width (for `gemm`, `batch` is
    /// the layer's size).
    fn shape(self, batch: usize) -> (Vec<usize>, usize) {
        match self {
            Workload::Gemm => (vec![batch, batch], 1),
            Workload::E1 => (vec![784, 512, 512, 10], 4),
            Workload::E2 => (vec![1024, 4096, 4096, 1024], 8),
        }
    }

    /// The graph of this workload with seeded weights, every member on `placement`.
    pub fn graph(self, batch: usize, placement: &Placement) -> Result<Graph> {
        let (widths, members) = self.shape(batch);
        let activations: Vec<Activation> = match self {
            Workload::Gemm => vec![Activation::Identity],
            _ => vec![Activation::Relu, Activation::Relu, Activation::Softmax],
        };
        let mut g = Graph::builder(widths[0]).aggregate(Aggregate::Mean);
        for i in 0..members {
            let model = Model::random(&widths, &activations, i as u64)?;
            g = g.member(format!("m{i}"), model, placement.clone());
        }
        g.build()
    }

    /// Floating-point operations of one run at `batch` rows.
    pub fn flops(self, batch: usize) -> u64 {
        let (widths, members) = self.shape(batch);
        let per_row: u64 = widths.windows(2).map(|w| 2 * (w[0] * w[1]) as u64).sum();
        per_row * members as u64 * batch as u64
    }
}

/// What `wgpu-ensemble bench --json` prints.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct BenchReport {
    /// `gemm`, `E1` or `E2`.
    pub workload: String,
    /// `session` (`Session::run` in a loop), `pipeline` (a stream through
    /// [`Pipeline`]) or `late-member` (one input at a time through a [`Pipeline`]
    /// under a quorum, with one member always late).
    pub mode: String,
    /// Rows per run (for `gemm`, also the layer's size).
    pub batch: usize,
    /// `f32`, `f16` or `f16-coop`.
    pub precision: String,
    /// How the tiled kernels' shapes were chosen: `default`, `autotune`, or the fixed
    /// `TileConfig` / `CoopShape` the options named.
    pub tile: String,
    /// Whether the kernels ran without wgpu's runtime bounds checks.
    pub trusted_kernels: bool,
    /// [`SessionOptions::spin_wait`], in microseconds.
    pub spin_us: u64,
    /// The devices the members ran on.
    pub adapter: Vec<String>,
    /// Runs timed (after the warm-up runs).
    pub runs: usize,
    /// Median latency of one `Session::run`, in milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// Rows per second at the median latency.
    pub throughput_rows_per_s: f64,
    /// FLOP per second at the median latency, in units of 10⁹.
    pub gflops: f64,
    /// With [`SessionOptions::device_timing`]: the median of the runs' device time
    /// (the kernels alone, timestamp queries; the longest of the devices a run used),
    /// in milliseconds. `None` without it, or where no member ran on a GPU.
    pub device_p50_ms: Option<f64>,
    /// FLOP per second at `device_p50_ms`, in units of 10⁹: the kernels' throughput,
    /// without the upload, the submission, the wait and the readback (what a GEMM
    /// benchmark on device-resident tensors measures).
    pub device_gflops: Option<f64>,
    /// For `late-member`: the median latency of the same inputs with no member late;
    /// `p50_ms - baseline_p50_ms` is the latency a late member adds.
    pub baseline_p50_ms: Option<f64>,
}

/// How the workload is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BenchMode {
    /// `Session::run` in a loop; latency per run.
    Session,
    /// `runs` inputs streamed through a [`Pipeline`] (sent from one thread, received
    /// on another); latency from `send` to the result, throughput over the stream.
    Pipeline,
    /// One input at a time through a [`Pipeline`] with this timeout and a quorum of
    /// all members but one: `runs` inputs with every member on time (the baseline),
    /// then `runs` inputs while member 0 sleeps five timeouts on each. Every member
    /// has its own worker there, so the late one delays no other member.
    LateMember(Duration),
}

impl BenchMode {
    fn name(self) -> &'static str {
        match self {
            BenchMode::Session => "session",
            BenchMode::Pipeline => "pipeline",
            BenchMode::LateMember(_) => "late-member",
        }
    }
}

/// Timings reserved ahead: more runs than this grow the list as they come (a huge
/// `runs` must not allocate before the first run).
const MAX_RESERVED_RUNS: usize = 4096;

fn input(batch: usize, width: usize) -> Result<Tensor> {
    // A batch whose input cannot be held is an error, not an abort.
    let too_large = || Error::ShapeTooLarge {
        shape: vec![batch, width],
    };
    let len = batch.checked_mul(width).ok_or_else(too_large)?;
    let mut values: Vec<f32> = Vec::new();
    values.try_reserve_exact(len).map_err(|_| too_large())?;
    values.extend((0..len).map(|i| (i.wrapping_mul(7919) % 2000) as f32 / 1000.0 - 1.0));
    Tensor::matrix(batch, width, values)
}

/// Builds the workload, runs it `warmup` times, then times `runs` runs (inputs, for
/// the pipeline).
pub fn run_bench(
    workload: Workload,
    batch: usize,
    placement: &Placement,
    options: SessionOptions,
    mode: BenchMode,
    warmup: usize,
    runs: usize,
) -> Result<BenchReport> {
    if batch == 0 {
        return Err(Error::EmptyBatch);
    }
    if runs == 0 {
        return Err(Error::invalid("--runs", "0", "at least one timed run"));
    }
    let precision = options.precision;
    let trusted_kernels = options.trusted_kernels;
    let spin_us = u64::try_from(options.spin_wait.as_micros()).unwrap_or(u64::MAX);
    let tile = match (options.tile, options.coop_shape) {
        (Some(t), None) => format!("{t:?}"),
        (None, Some(c)) => format!("{c:?}"),
        (Some(t), Some(c)) => format!("{t:?}, {c:?}"),
        (None, None) if options.autotune => "autotune".to_string(),
        (None, None) => "default".to_string(),
    };
    let graph = workload.graph(batch, placement)?;
    let members = graph.members().len();
    let x = input(batch, graph.input_width())?;
    let started_all;
    let mut times: Vec<Duration> = Vec::with_capacity(runs.min(MAX_RESERVED_RUNS));
    let mut device_times: Vec<Duration> = Vec::new();
    let mut baseline = None;
    let adapter: Vec<String>;
    match mode {
        BenchMode::Pipeline => {
            let pipeline = Pipeline::new(graph, PipelineOptions::default().session(options))?;
            for _ in 0..warmup {
                pipeline.send(&x)?;
                pipeline.recv();
            }
            adapter = pipeline.devices().map(ToString::to_string).collect();
            started_all = Instant::now();
            std::thread::scope(|scope| -> Result<()> {
                let sender = scope.spawn(|| -> Result<()> {
                    for _ in 0..runs {
                        pipeline.send(&x)?;
                    }
                    Ok(())
                });
                // Every result is received, failed or not: a receiver that stopped at
                // the first error would leave the sender blocked on a full queue.
                let mut failed = None;
                for _ in 0..runs {
                    let Some(out) = pipeline.recv() else { break };
                    match out.aggregate {
                        Ok(_) => {
                            times.push(out.elapsed);
                            device_times.extend(device_time(&out.members));
                        }
                        Err(e) => failed = failed.or(Some(e)),
                    }
                }
                let sent = sender.join().unwrap_or(Ok(()));
                failed.map_or(sent, Err)
            })?;
        }
        BenchMode::LateMember(timeout) => {
            let late_from = warmup.saturating_add(runs) as u64;
            let plan = FaultPlan::new().from_run("m0", late_from, Fault::Sleep(timeout * 5));
            let pipeline = Pipeline::new(
                graph,
                PipelineOptions::default()
                    .timeout(timeout)
                    .quorum(QuorumPolicy::Quorum(members.saturating_sub(1).max(1)))
                    .session(options.faults(plan)),
            )?;
            adapter = pipeline.devices().map(ToString::to_string).collect();
            let one = |times: &mut Vec<Duration>, device: &mut Vec<Duration>| -> Result<()> {
                pipeline.send(&x)?;
                if let Some(out) = pipeline.recv() {
                    out.aggregate?;
                    times.push(out.elapsed);
                    device.extend(device_time(&out.members));
                }
                Ok(())
            };
            // The first inputs make buffers and may miss the deadline: the warm-up's
            // results are not held against the run.
            for _ in 0..warmup {
                pipeline.send(&x)?;
                pipeline.recv();
            }
            let mut normal = Vec::with_capacity(runs.min(MAX_RESERVED_RUNS));
            for _ in 0..runs {
                one(&mut normal, &mut Vec::new())?;
            }
            baseline = quantile(&mut normal, 0.5).map(|d| d.as_secs_f64() * 1e3);
            started_all = Instant::now();
            for _ in 0..runs {
                one(&mut times, &mut device_times)?;
            }
        }
        BenchMode::Session => {
            let session = Session::with_options(graph, options)?;
            for _ in 0..warmup {
                session.run(&x, &RunOptions::default())?;
            }
            adapter = session.devices().map(ToString::to_string).collect();
            started_all = Instant::now();
            for _ in 0..runs {
                let started = Instant::now();
                let out = session.run(&x, &RunOptions::default())?;
                times.push(started.elapsed());
                device_times.extend(device_time(&out.members));
            }
        }
    }
    let total = started_all.elapsed().as_secs_f64();
    // A pipeline that closed before every result came back leaves fewer times.
    let (Some(p50), Some(p99)) = (quantile(&mut times, 0.5), quantile(&mut times, 0.99)) else {
        return Err(Error::PipelineClosed);
    };
    let p50 = p50.as_secs_f64();
    let device_p50 = quantile(&mut device_times, 0.5).map(|t| t.as_secs_f64());
    // A stream's throughput is what went through per second; a loop's is per run.
    let per_second = match mode {
        BenchMode::Pipeline => runs as f64 / total,
        _ => 1.0 / p50,
    };
    Ok(BenchReport {
        workload: workload.name().to_string(),
        mode: mode.name().to_string(),
        batch,
        precision: precision.name().to_string(),
        tile,
        trusted_kernels,
        spin_us,
        adapter,
        runs: times.len(),
        p50_ms: p50 * 1e3,
        p99_ms: p99.as_secs_f64() * 1e3,
        throughput_rows_per_s: batch as f64 * per_second,
        gflops: workload.flops(batch) as f64 * per_second / 1e9,
        device_p50_ms: device_p50.map(|t| t * 1e3),
        device_gflops: device_p50
            .filter(|&t| t > 0.0)
            .map(|t| workload.flops(batch) as f64 / t / 1e9),
        baseline_p50_ms: baseline,
    })
}

/// The `q` quantile of `times` (sorted here), the nearest rank; `None` if empty.
fn quantile(times: &mut [Duration], q: f64) -> Option<Duration> {
    times.sort();
    let last = times.len().checked_sub(1)?;
    times.get((last as f64 * q).round() as usize).copied()
}

/// A run's device time: the longest of its devices' (they work at the same time),
/// where any was measured.
fn device_time(members: &[MemberReport]) -> Option<Duration> {
    members.iter().filter_map(|m| m.device_time).max()
}
