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
use crate::placement::{ExecutionDevice, Placement};
use crate::report::MemberReport;
use crate::session::Session;
use crate::split::{Split, SplitKind};
use crate::tensor::Tensor;
use crate::tile::{CoopShape, TileConfig};

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

    /// Values the host holds at once for this workload at `batch` rows: every
    /// member's weights and biases twice (the model, and the copy its executor makes:
    /// packed for the CPU, staged for an upload), the input, every layer's output of
    /// every member and the aggregate; `None` when the count overflows.
    fn host_values(self, batch: usize) -> Option<usize> {
        let (widths, members) = self.shape(batch);
        let mut per_member = 0usize;
        for w in widths.windows(2) {
            let (inp, out) = (w[0], w[1]);
            let weights = inp.checked_mul(out)?.checked_add(out)?.checked_mul(2)?;
            let outputs = batch.checked_mul(out)?;
            per_member = per_member.checked_add(weights)?.checked_add(outputs)?;
        }
        let input = batch.checked_mul(widths[0])?;
        let aggregate = batch.checked_mul(*widths.last()?)?;
        per_member
            .checked_mul(members)?
            .checked_add(input)?
            .checked_add(aggregate)
    }

    /// Checks, before anything sized by `batch` is made, that the host can hold the
    /// workload at `batch` rows ([`host_values`](Self::host_values), in f32): the
    /// count in checked arithmetic, then one fallible reservation of all of it, given
    /// back at once. [`Error::ShapeTooLarge`] names the largest matrix (the gemm
    /// layer, or the input) when it cannot be held, rather than an abort at the
    /// first allocation that fails.
    fn check_host_memory(self, batch: usize) -> Result<()> {
        let (widths, _) = self.shape(batch);
        let too_large = || Error::ShapeTooLarge {
            shape: vec![batch, widths.iter().copied().max().unwrap_or(0)],
        };
        let bytes = self
            .host_values(batch)
            .and_then(|v| v.checked_mul(std::mem::size_of::<f32>()))
            .ok_or_else(too_large)?;
        let mut probe: Vec<u8> = Vec::new();
        probe.try_reserve_exact(bytes).map_err(|_| too_large())
    }

    /// The graph of this workload with seeded weights, every member on `placement`.
    /// A `batch` whose workload the host cannot hold is [`Error::ShapeTooLarge`].
    pub fn graph(self, batch: usize, placement: &Placement) -> Result<Graph> {
        self.check_host_memory(batch)?;
        let (widths, members) = self.shape(batch);
        let mut g = Graph::builder(widths[0]).aggregate(Aggregate::Mean);
        for i in 0..members {
            let model = self.member_model(batch, i as u64)?;
            g = g.member(format!("m{i}"), model, placement.clone());
        }
        g.build()
    }

    /// One member of this workload, its weights seeded by `seed`.
    fn member_model(self, batch: usize, seed: u64) -> Result<Model> {
        let (widths, _) = self.shape(batch);
        let activations: Vec<Activation> = match self {
            Workload::Gemm => vec![Activation::Identity],
            _ => vec![Activation::Relu, Activation::Relu, Activation::Softmax],
        };
        Model::random(&widths, &activations, seed)
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
    /// `session` (`Session::run` in a loop), `resident` (`Session::run_device` in a
    /// loop on an input uploaded once), `pipeline` (a stream through [`Pipeline`]) or
    /// `late-member` (one input at a time through a [`Pipeline`] under a quorum, with
    /// one member always late).
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
    /// `Session::run_device` in a loop on an input uploaded once (not timed); latency
    /// per run, the aggregate left where the run leaves it (on the device when one GPU
    /// device holds every member: the whole run without the host copies).
    Resident,
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
            BenchMode::Resident => "resident",
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
    check_shapes(&options, &placement_name(placement))?;
    let precision = options.precision;
    let trusted_kernels = options.trusted_kernels;
    let spin_us = spin_us(&options);
    let tile = tile_name(&options);
    let graph = workload.graph(batch, placement)?;
    let members = graph.members().len();
    let names: Vec<String> = graph.members().iter().map(|m| m.name.clone()).collect();
    let needs_adapter = needs_adapter(&options);
    // Where each member runs, once the session or pipeline is built: an option only an
    // adapter honours, with members on the CPU, is an error before any timed run.
    let check_devices = |devices: Vec<&ExecutionDevice>| {
        let on_cpu: Vec<&str> = names
            .iter()
            .zip(devices)
            .filter(|(_, d)| matches!(d, ExecutionDevice::Cpu))
            .map(|(n, _)| n.as_str())
            .collect();
        match &needs_adapter {
            Some(asked) if !on_cpu.is_empty() => Err(cpu_refusal(asked, &on_cpu, placement)),
            _ => Ok(()),
        }
    };
    let x = input(batch, graph.input_width())?;
    let started_all;
    let mut times: Vec<Duration> = Vec::with_capacity(runs.min(MAX_RESERVED_RUNS));
    let mut device_times: Vec<Duration> = Vec::new();
    let mut baseline = None;
    let adapter: Vec<String>;
    match mode {
        BenchMode::Pipeline => {
            let pipeline = Pipeline::new(graph, PipelineOptions::default().session(options))?;
            check_devices(pipeline.devices().collect())?;
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
            // A worker per member: with the members of a device sharing one worker, m0's
            // sleep would make its siblings late too, and no input would meet the quorum.
            let pipeline = Pipeline::new(
                graph,
                PipelineOptions::default()
                    .worker_per_member(true)
                    .timeout(timeout)
                    .quorum(QuorumPolicy::Quorum(members.saturating_sub(1).max(1)))
                    .session(options.faults(plan)),
            )?;
            check_devices(pipeline.devices().collect())?;
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
        BenchMode::Resident => {
            let session = Session::with_options(graph, options)?;
            check_devices(session.members().map(|(_, d)| d).collect())?;
            let x = session.upload(&x)?;
            for _ in 0..warmup {
                session.run_device(&x, &RunOptions::default())?;
            }
            adapter = session.devices().map(ToString::to_string).collect();
            started_all = Instant::now();
            for _ in 0..runs {
                let started = Instant::now();
                let out = session.run_device(&x, &RunOptions::default())?;
                times.push(started.elapsed());
                device_times.extend(device_time(&out.members));
            }
        }
        BenchMode::Session => {
            let session = Session::with_options(graph, options)?;
            check_devices(session.members().map(|(_, d)| d).collect())?;
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

/// How the tiled kernels' shapes are chosen, as [`BenchReport::tile`] names it.
fn tile_name(options: &SessionOptions) -> String {
    match (options.tile, options.coop_shape) {
        (Some(t), None) => format!("{t:?}"),
        (None, Some(c)) => format!("{c:?}"),
        (Some(t), Some(c)) => format!("{t:?}, {c:?}"),
        (None, None) if options.autotune => "autotune".to_string(),
        (None, None) => "default".to_string(),
    }
}

/// [`SessionOptions::spin_wait`] in microseconds.
fn spin_us(options: &SessionOptions) -> u64 {
    u64::try_from(options.spin_wait.as_micros()).unwrap_or(u64::MAX)
}

/// Checks a fixed [`TileConfig`] or [`CoopShape`] in `options` against the kernels'
/// own bounds, which need no device (every field positive; a tile at most 8 × 8
/// accumulators per thread, 4 or 8 a side with `vec4`; a coop shape at most 4 × 4
/// matrices per block): a shape no kernel takes is refused before any device is
/// opened, wherever the members would run ([`Error::TileUnsupported`], `device`
/// naming the placement asked for). Whether it fits a device's limits is checked when
/// the session is built.
pub fn check_shapes(options: &SessionOptions, device: &str) -> Result<()> {
    if let Some(tile) = options.tile.filter(|t| !t.kernel_allows()) {
        return Err(tile.unsupported(device, options.precision));
    }
    if let Some(shape) = options.coop_shape.filter(|c| !coop_shape_allowed(c)) {
        return Err(Error::TileUnsupported {
            device: device.to_string(),
            tile: format!(
                "{shape:?} (the kernel takes positive values and at most 4 x 4 matrices per block)"
            ),
        });
    }
    Ok(())
}

/// The cooperative-matrix kernel's bounds that need no device (those of `CoopTile` in
/// the GPU backend, less the prefetch's, which depend on the adapter's subgroup size).
fn coop_shape_allowed(shape: &CoopShape) -> bool {
    ![shape.bx, shape.by, shape.tmc, shape.tnc, shape.bk].contains(&0)
        && shape.tmc <= 4
        && shape.tnc <= 4
}

/// What `options` asks for that only an adapter can honour, in words: a fixed tile or
/// coop shape, the autotune, device timing; `None` for none of them.
fn needs_adapter(options: &SessionOptions) -> Option<String> {
    let tile = |t: TileConfig| format!("the tile {t:?}");
    let coop = |c: CoopShape| format!("the coop shape {c:?}");
    let asked: Vec<String> = [
        options.tile.map(tile),
        options.coop_shape.map(coop),
        options.autotune.then(|| "the autotune".to_string()),
        options.device_timing.then(|| "device timing".to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!asked.is_empty()).then(|| asked.join(" and "))
}

/// The error of options only an adapter honours (`asked`) with the members `on_cpu`
/// placed on the CPU by `placement`: the configuration asked for would not run, and
/// the report would name it all the same.
fn cpu_refusal(asked: &str, on_cpu: &[&str], placement: &Placement) -> Error {
    let placement = match placement {
        Placement::Auto => "auto (no adapter could run them)".to_string(),
        other => placement_name(other),
    };
    Error::NeedsAdapter {
        asked: asked.to_string(),
        members: on_cpu.iter().map(|m| m.to_string()).collect(),
        placement,
    }
}

/// A placement as `--device` spells it.
fn placement_name(placement: &Placement) -> String {
    match placement {
        Placement::Auto => "auto".to_string(),
        Placement::Cpu => "cpu".to_string(),
        Placement::Adapter(i) => format!("adapter:{i}"),
        Placement::Queue { adapter, slot } => format!("adapter:{adapter}/queue:{slot}"),
        _ => "a device handed in".to_string(),
    }
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

/// The micro-batch counts [`run_split_bench`] times a split by layers with.
pub const SPLIT_MICRO_BATCHES: [usize; 4] = [1, 2, 4, 8];

/// What `wgpu-ensemble bench --split --json` prints: one line per variant of one
/// member, the variants timed in one run, interleaved ([`run_split_bench`]).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SplitBenchReport {
    /// `E1` or `E2`: one member of its shape.
    pub workload: String,
    /// `split`.
    pub mode: String,
    /// `whole` (the member on the first device), `layers-mb1` … `layers-mb8` (split by
    /// layers into that many micro-batches) or `columns` (split by columns).
    pub variant: String,
    /// `layers` or `columns`; `None` for the whole member.
    pub split: Option<String>,
    /// The micro-batches a split by layers cuts the batch into; `None` otherwise.
    pub micro_batches: Option<usize>,
    /// A split by layers: each stage's layers, `[first, end)`, one stage per device.
    pub stages: Option<Vec<[usize; 2]>>,
    /// Rows per run.
    pub batch: usize,
    /// `f32`, `f16` or `f16-coop`.
    pub precision: String,
    /// How the tiled kernels' shapes were chosen, as [`BenchReport::tile`].
    pub tile: String,
    /// Whether the kernels ran without wgpu's runtime bounds checks.
    pub trusted_kernels: bool,
    /// [`SessionOptions::spin_wait`], in microseconds.
    pub spin_us: u64,
    /// The devices asked for, in order, as `--device` spells each.
    pub devices: Vec<String>,
    /// Where the variant ran: the whole member's device, or each part's.
    pub adapter: Vec<String>,
    /// Runs timed (after the warm-up runs).
    pub runs: usize,
    /// Median latency of one `Session::run`, in milliseconds.
    pub p50_ms: f64,
    /// 90th-percentile latency, in milliseconds.
    pub p90_ms: f64,
    /// 99th-percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// Rows per second at the median latency.
    pub throughput_rows_per_s: f64,
    /// The member's FLOP per second at the median latency, in units of 10⁹.
    pub gflops: f64,
    /// The whole member's median latency over this variant's: above 1 the variant is
    /// faster than the member whole on the first device (1 for `whole` itself).
    pub speedup: f64,
    /// The largest absolute difference between this variant's output and the whole
    /// member's on the same input (their first runs); 0 for `whole`.
    pub max_abs_diff: f64,
}

/// One variant of a split bench: its name and how its member is split (`None`: whole).
struct SplitVariant {
    name: String,
    split: Option<Split>,
}

/// Times one member of `workload`'s shape (E1 or E2; `gemm` is refused) at `batch`
/// rows, whole on the first of `devices` and split across all of them by each of
/// `kinds` — by layers into each of [`SPLIT_MICRO_BATCHES`] micro-batches, by
/// columns — every variant its own [`Session`], built once. After `warmup` untimed
/// runs of each, the variants are timed `runs` times in turn (the whole member, then
/// each split, then again), so that whatever else the machine does falls on all of
/// them alike. One report per variant, the whole member's first.
///
/// Errors: `gemm` (a single layer, nothing to split), no devices, no kind, a split
/// the member cannot take ([`Error::Split`]: more devices than layers by layers, than
/// outputs by columns), and an option only an adapter honours (a tile, the autotune,
/// device timing) with a part on the CPU ([`Error::NeedsAdapter`]); any run's error.
pub fn run_split_bench(
    workload: Workload,
    batch: usize,
    devices: &[Placement],
    kinds: &[SplitKind],
    options: SessionOptions,
    warmup: usize,
    runs: usize,
) -> Result<Vec<SplitBenchReport>> {
    if workload == Workload::Gemm {
        return Err(Error::invalid(
            "workload of a split bench",
            workload.name(),
            "E1 or E2 (gemm is a single layer)",
        ));
    }
    if batch == 0 {
        return Err(Error::EmptyBatch);
    }
    if runs == 0 {
        return Err(Error::invalid("--runs", "0", "at least one timed run"));
    }
    let Some(first) = devices.first() else {
        return Err(Error::invalid("--devices", "", "at least one device"));
    };
    if kinds.is_empty() {
        return Err(Error::invalid("--split", "", "layers, columns or both"));
    }
    let device_names: Vec<String> = devices.iter().map(placement_name).collect();
    check_shapes(&options, &device_names.join(","))?;
    workload.check_host_memory(batch)?;
    let model = workload.member_model(batch, 0)?;
    let mut variants = vec![SplitVariant {
        name: "whole".to_string(),
        split: None,
    }];
    let mut seen: Vec<SplitKind> = Vec::new();
    for &kind in kinds {
        if seen.contains(&kind) {
            continue;
        }
        seen.push(kind);
        match kind {
            SplitKind::Layers => {
                variants.extend(SPLIT_MICRO_BATCHES.iter().map(|&n| SplitVariant {
                    name: format!("layers-mb{n}"),
                    split: Some(Split::layers(devices.to_vec()).micro_batches(n)),
                }))
            }
            _ => variants.push(SplitVariant {
                name: kind.name().to_string(),
                split: Some(Split::new(kind, devices.to_vec())),
            }),
        }
    }
    let needs_adapter = needs_adapter(&options);
    let mut sessions = Vec::with_capacity(variants.len());
    for v in &variants {
        let builder = Graph::builder(model.in_features()).aggregate(Aggregate::Mean);
        let builder = match &v.split {
            None => builder.member(v.name.clone(), model.clone(), first.clone()),
            Some(split) => builder.split_member(v.name.clone(), model.clone(), split.clone()),
        };
        let session = Session::with_options(builder.build()?, options.clone())?;
        let adapter: Vec<&ExecutionDevice> = session.devices().flat_map(parts_of).collect();
        if let Some(asked) = &needs_adapter {
            if adapter.iter().any(|d| matches!(d, ExecutionDevice::Cpu)) {
                return Err(Error::NeedsAdapter {
                    asked: asked.clone(),
                    members: vec![v.name.clone()],
                    placement: device_names.join(","),
                });
            }
        }
        let adapter = adapter.iter().map(ToString::to_string).collect();
        sessions.push((session, adapter));
    }
    let x = input(batch, model.in_features())?;
    let mut whole_output: Option<Tensor> = None;
    let mut diffs = vec![0.0f64; variants.len()];
    let mut compared = vec![false; variants.len()];
    // Every variant's first run is checked against the whole member's (run first).
    let mut run = |v: usize| -> Result<Duration> {
        let started = Instant::now();
        let out = sessions[v].0.run(&x, &RunOptions::default())?;
        let elapsed = started.elapsed();
        if !compared[v] {
            compared[v] = true;
            match &whole_output {
                None => whole_output = Some(out.aggregate),
                Some(whole) => diffs[v] = max_abs_diff(whole, &out.aggregate),
            }
        }
        Ok(elapsed)
    };
    for _ in 0..warmup {
        for v in 0..variants.len() {
            run(v)?;
        }
    }
    let mut times: Vec<Vec<Duration>> = (0..variants.len())
        .map(|_| Vec::with_capacity(runs.min(MAX_RESERVED_RUNS)))
        .collect();
    for _ in 0..runs {
        for (v, t) in times.iter_mut().enumerate() {
            t.push(run(v)?);
        }
    }
    let member_flops = workload.flops(batch) as f64 / workload.shape(batch).1 as f64;
    let mut reports = Vec::with_capacity(variants.len());
    let mut whole_p50 = None;
    for ((v, (_, adapter)), (mut t, diff)) in variants
        .iter()
        .zip(sessions)
        .zip(times.into_iter().zip(diffs))
    {
        let (Some(p50), Some(p90), Some(p99)) = (
            quantile(&mut t, 0.5),
            quantile(&mut t, 0.9),
            quantile(&mut t, 0.99),
        ) else {
            return Err(Error::invalid("--runs", "0", "at least one timed run"));
        };
        let p50 = p50.as_secs_f64();
        let whole = *whole_p50.get_or_insert(p50);
        reports.push(SplitBenchReport {
            workload: workload.name().to_string(),
            mode: "split".to_string(),
            variant: v.name.clone(),
            split: v.split.as_ref().map(|s| s.kind().name().to_string()),
            micro_batches: v
                .split
                .as_ref()
                .filter(|s| s.kind() == SplitKind::Layers)
                .and_then(Split::micro_batch_count),
            stages: v
                .split
                .as_ref()
                .filter(|s| s.kind() == SplitKind::Layers)
                .map(|s| s.stages(&model).iter().map(|r| [r.start, r.end]).collect()),
            batch,
            precision: options.precision.name().to_string(),
            tile: tile_name(&options),
            trusted_kernels: options.trusted_kernels,
            spin_us: spin_us(&options),
            devices: device_names.clone(),
            adapter,
            runs: t.len(),
            p50_ms: p50 * 1e3,
            p90_ms: p90.as_secs_f64() * 1e3,
            p99_ms: p99.as_secs_f64() * 1e3,
            throughput_rows_per_s: batch as f64 / p50,
            gflops: member_flops / p50 / 1e9,
            speedup: if p50 > 0.0 { whole / p50 } else { 0.0 },
            max_abs_diff: diff,
        });
    }
    Ok(reports)
}

/// The devices a worker's device stands for: each part's, for a split member.
fn parts_of(device: &ExecutionDevice) -> Vec<&ExecutionDevice> {
    match device {
        ExecutionDevice::Split { parts, .. } => parts.iter().collect(),
        other => vec![other],
    }
}

/// The largest absolute difference between two outputs (infinite where their shapes
/// differ, or a value is not a number in one of them).
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    if a.shape() != b.shape() {
        return f64::INFINITY;
    }
    a.as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(&x, &y)| {
            let d = (f64::from(x) - f64::from(y)).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f64::max)
}

/// One variant of [`run_uncertainty_bench`]: the plain mean, or every uncertainty
/// output with it.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct UncertaintyBenchReport {
    /// `E1` or `E2`.
    pub workload: String,
    /// `uncertainty`.
    pub mode: String,
    /// `mean` (the plain run) or `uncertainty` (the run with
    /// [`RunOptions::uncertainty`]).
    pub variant: String,
    /// Rows per run.
    pub batch: usize,
    /// Where every member runs.
    pub device: String,
    /// Timed runs.
    pub runs: usize,
    /// Median latency of a run.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// This variant's median over the plain mean's (1 for `mean` itself).
    pub ratio_to_mean: f64,
}

/// Times `workload` (E1 or E2; `gemm` has no classes) at `batch` rows on `placement`,
/// one [`Session`], without and with every uncertainty output
/// ([`RunOptions::uncertainty`]), alternating run by run after `warmup` untimed runs of
/// each. Two reports: the plain mean's, then the uncertainty's with its ratio to it.
pub fn run_uncertainty_bench(
    workload: Workload,
    batch: usize,
    placement: &Placement,
    options: SessionOptions,
    warmup: usize,
    runs: usize,
) -> Result<Vec<UncertaintyBenchReport>> {
    if workload == Workload::Gemm {
        return Err(Error::invalid(
            "workload of an uncertainty bench",
            workload.name(),
            "E1 or E2 (gemm has no classes)",
        ));
    }
    if batch == 0 {
        return Err(Error::EmptyBatch);
    }
    let session = Session::with_options(workload.graph(batch, placement)?, options)?;
    let x = input(batch, session.input_width())?;
    let variants = [
        ("mean", RunOptions::default()),
        ("uncertainty", RunOptions::default().uncertainty(true)),
    ];
    let run = |o: &RunOptions| -> Result<Duration> {
        let started = Instant::now();
        session.run(&x, o)?;
        Ok(started.elapsed())
    };
    for _ in 0..warmup {
        for (_, o) in &variants {
            run(o)?;
        }
    }
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (t, (_, o)) in times.iter_mut().zip(&variants) {
            t.push(run(o)?);
        }
    }
    let mut reports = Vec::with_capacity(2);
    let mut mean_p50 = None;
    for ((name, _), mut t) in variants.iter().zip(times) {
        let (Some(p50), Some(p90)) = (quantile(&mut t, 0.5), quantile(&mut t, 0.9)) else {
            return Err(Error::invalid("--runs", "0", "at least one timed run"));
        };
        let p50 = p50.as_secs_f64();
        let base = *mean_p50.get_or_insert(p50);
        reports.push(UncertaintyBenchReport {
            workload: workload.name().to_string(),
            mode: "uncertainty".to_string(),
            variant: name.to_string(),
            batch,
            device: placement_name(placement),
            runs: t.len(),
            p50_ms: p50 * 1e3,
            p90_ms: p90.as_secs_f64() * 1e3,
            ratio_to_mean: if base > 0.0 { p50 / base } else { 0.0 },
        });
    }
    Ok(reports)
}
