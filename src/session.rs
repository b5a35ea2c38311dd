//! A compiled graph: one worker thread per device, fed through crossbeam channels;
//! the caller's thread is the aggregate node.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::cpu::CpuExecutor;
use crate::device::{DevicePool, ExecutionDevice, Placement};
use crate::error::{Error, Result};
use crate::gpu::tune::{TileConfig, Tuner};
use crate::gpu::{GpuContext, GpuExecutor};
use crate::graph::Graph;
use crate::model::Model;
use crate::tensor::Tensor;

/// The arithmetic of the GPU dense kernels. Mixed precision is an option, never the
/// default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Precision {
    /// f32 weights, activations and accumulation. Tolerance against the f64
    /// reference: absolute 1e-5 or relative 1e-4.
    #[default]
    F32,
    /// f16 weights (half the memory and bandwidth), layer inputs rounded to f16 as they
    /// are read, every product (exact in f32) accumulated in f32; biases, activations
    /// between layers and outputs stay f32. Needs the adapter feature `SHADER_F16`
    /// (a session on an adapter without it fails to build with
    /// [`Error::PrecisionUnsupported`]). Tolerance: absolute 1e-4 or relative 1e-3
    /// against an f64 reference whose weights and layer inputs are rounded to f16 the
    /// same way (a hidden value within f32 rounding of an f16 rounding boundary may
    /// round the other way); against the exact f64 reference expect about 1e-3 to
    /// 1e-2. Values beyond ±65504 overflow. On the CPU the same rounding is applied,
    /// so every placement gives the same results.
    F16,
}

impl Precision {
    /// `f32` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            _ => Err(Error::UnknownPrecision {
                name: s.to_string(),
            }),
        }
    }
}

/// Session-wide settings, fixed when the session is built.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionOptions {
    /// Bounds every wait on a device, like TensorFlow's
    /// `ConfigProto.operation_timeout_in_ms`: a submission not finished in this time
    /// fails with [`Error::OperationTimeout`]. Default: 60 s.
    pub operation_timeout: Duration,
    /// Caps the size of every buffer a device run uses, below the device's own limit.
    /// Batches whose activations do not fit are split into chunks that do. `None`
    /// (the default) uses the device's limit.
    pub max_buffer_bytes: Option<u64>,
    /// The arithmetic of the GPU kernels (default [`Precision::F32`]).
    pub precision: Precision,
    /// Time a few tile configurations of the dense kernel for every layer shape at
    /// session build and keep the fastest (cached per adapter and shape class for the
    /// life of the process). Off by default: a fixed 64 × 64 tile is used.
    pub autotune: bool,
    /// The batch size the autotune times (default 256); the chosen tiles serve every
    /// batch above 16 rows (16 rows or fewer use the small-batch kernel).
    pub autotune_batch: usize,
    /// A TOML file that keeps autotune results between processes: read before tuning,
    /// rewritten when a new shape class was timed.
    pub autotune_cache: Option<PathBuf>,
    /// A fixed tile configuration for the register-tiled dense kernel, instead of the
    /// default or the autotune's choice. Checked against each device's limits.
    pub tile: Option<TileConfig>,
    /// Whether kernels are compiled without wgpu's runtime bounds checks; set only
    /// through the unsafe [`SessionOptions::trusted_kernels`].
    pub(crate) trusted_kernels: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            operation_timeout: Duration::from_secs(60),
            max_buffer_bytes: None,
            precision: Precision::F32,
            autotune: false,
            autotune_batch: 256,
            autotune_cache: None,
            tile: None,
            trusted_kernels: false,
        }
    }
}

impl SessionOptions {
    /// Sets [`SessionOptions::operation_timeout`].
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets [`SessionOptions::max_buffer_bytes`].
    pub fn max_buffer_bytes(mut self, bytes: u64) -> Self {
        self.max_buffer_bytes = Some(bytes);
        self
    }

    /// Sets [`SessionOptions::precision`].
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Turns the autotune on, timing at `batch` rows (see [`SessionOptions::autotune`]).
    pub fn autotune(mut self, batch: usize) -> Self {
        self.autotune = true;
        self.autotune_batch = batch.max(1);
        self
    }

    /// Sets [`SessionOptions::tile`].
    pub fn tile(mut self, tile: TileConfig) -> Self {
        self.tile = Some(tile);
        self
    }

    /// Compiles the kernels without wgpu's runtime bounds checks (clamping every
    /// buffer and workgroup-array index), which makes the dense kernels markedly
    /// faster (1.6× on lavapipe).
    ///
    /// # Safety
    ///
    /// The kernels check their own bounds: every global load and store is guarded by
    /// the shapes in its uniform buffer, and workgroup-array indices stay below the
    /// tile sizes by construction; the test suite runs every kernel and tile candidate
    /// over shapes that are not multiples of the tiles. Should a kernel still index out
    /// of bounds, the GPU would read or write memory outside the buffer, which wgpu
    /// otherwise prevents. Use it when you trust the kernels as shipped.
    pub unsafe fn trusted_kernels(mut self) -> Self {
        self.trusted_kernels = true;
        self
    }

    /// Sets [`SessionOptions::autotune_cache`].
    pub fn autotune_cache(mut self, path: impl Into<PathBuf>) -> Self {
        self.autotune_cache = Some(path.into());
        self
    }
}

/// Options of one [`Session::run`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// Like TensorFlow's `RunOptions.timeout_in_ms`: a run whose members have not all
    /// answered in this time returns [`Error::DeadlineExceeded`] naming them. `None`
    /// (the default) waits for every member; each device wait is still bounded by
    /// [`SessionOptions::operation_timeout`].
    pub timeout: Option<Duration>,
    /// Also return every member's own output.
    pub member_outputs: bool,
}

impl RunOptions {
    /// Sets [`RunOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets [`RunOptions::member_outputs`].
    pub fn member_outputs(mut self, yes: bool) -> Self {
        self.member_outputs = yes;
        self
    }
}

/// What a run returns.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RunOutput {
    /// The aggregate node's output, `[rows, output_width]`.
    pub aggregate: Tensor,
    /// One report per member, in member order.
    pub members: Vec<MemberReport>,
    /// Wall time of the whole run, as the caller saw it.
    pub elapsed: Duration,
}

/// One member's part in a run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MemberReport {
    /// The member's name.
    pub name: String,
    /// Where it ran.
    pub device: ExecutionDevice,
    /// Wall time of its device's work in this run (upload, every member on that
    /// device in one submission, readback); members sharing a device share it.
    pub elapsed: Duration,
    /// Its `[rows, output_width]` output, when [`RunOptions::member_outputs`] was set.
    pub output: Option<Tensor>,
}

/// What a device worker is given to build its executor.
pub(crate) struct MemberSpec<'a> {
    pub(crate) index: usize,
    pub(crate) name: &'a str,
    pub(crate) model: &'a Model,
    pub(crate) weight: f32,
}

/// What a device worker sends back: its members' weighted sum (or vote counts), and
/// their own outputs when asked.
pub(crate) struct DeviceOutput {
    pub(crate) partial: Vec<f32>,
    pub(crate) members: Vec<(usize, Vec<f32>)>,
    pub(crate) elapsed: Duration,
}

enum Executor {
    Cpu(CpuExecutor),
    Gpu(Box<GpuExecutor>),
}

impl Executor {
    fn run(&mut self, input: &Tensor, input_width: usize, want: bool) -> Result<DeviceOutput> {
        let rows = input.len() / input_width;
        match self {
            Executor::Cpu(e) => Ok(e.run(input.as_slice(), rows, want)),
            Executor::Gpu(e) => e.run(input.as_slice(), want),
        }
    }

    fn reset(&mut self) {
        if let Executor::Gpu(e) = self {
            e.reset();
        }
    }
}

struct Job {
    worker: usize,
    input: Tensor,
    want_members: bool,
    deadline: Option<Instant>,
    reply: Sender<(usize, Result<DeviceOutput>)>,
}

struct Worker {
    device: ExecutionDevice,
    members: Vec<usize>,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// A compiled [`Graph`]: every member on its device, one worker thread per device,
/// pipelines and buffers made once and reused.
///
/// `Session` is `Send + Sync`: any number of threads may call [`Session::run`] at once;
/// each device works through its runs in arrival order.
pub struct Session {
    input_width: usize,
    output_width: usize,
    names: Vec<String>,
    member_devices: Vec<ExecutionDevice>,
    member_worker: Vec<usize>,
    total_weight: f32,
    workers: Vec<Worker>,
}

#[derive(PartialEq)]
enum Key {
    Cpu,
    Adapter(usize, usize),
    External(wgpu::Device),
}

impl Session {
    /// Compiles `graph` with default [`SessionOptions`].
    pub fn new(graph: Graph) -> Result<Self> {
        Self::with_options(graph, SessionOptions::default())
    }

    /// Compiles `graph`: resolves every placement, creates the devices, uploads the
    /// weights, creates the pipelines, and starts one worker per device.
    pub fn with_options(graph: Graph, options: SessionOptions) -> Result<Self> {
        let mut pool: Option<DevicePool> = None;
        let mut auto_next = 0;
        // Devices in order of first use, with their members.
        let mut groups: Vec<(Key, Option<GpuContext>, Vec<usize>)> = Vec::new();
        for (index, member) in graph.members.iter().enumerate() {
            let (key, external) = match &member.placement {
                Placement::Cpu => (Key::Cpu, None),
                Placement::Adapter(a) => (Key::Adapter(*a, 0), None),
                Placement::Queue { adapter, slot } => (Key::Adapter(*adapter, *slot), None),
                Placement::Auto => {
                    let usable = pool.get_or_insert_with(DevicePool::new).usable();
                    if usable.is_empty() {
                        (Key::Cpu, None)
                    } else {
                        auto_next += 1;
                        (
                            Key::Adapter(usable[(auto_next - 1) % usable.len()], 0),
                            None,
                        )
                    }
                }
                Placement::Device(ext) => (
                    Key::External(ext.device.clone()),
                    Some(GpuContext::new(
                        ext.device.clone(),
                        ext.queue.clone(),
                        ExecutionDevice::External {
                            label: ext.label.clone(),
                        },
                    )),
                ),
            };
            if let Some(group) = groups.iter_mut().find(|g| g.0 == key) {
                group.2.push(index);
                continue;
            }
            let ctx = match key {
                Key::Adapter(a, slot) => {
                    Some(pool.get_or_insert_with(DevicePool::new).open(a, slot)?)
                }
                _ => external,
            };
            groups.push((key, ctx, vec![index]));
        }

        let mode = graph.aggregate.mode();
        let tuner = Tuner {
            enabled: options.autotune,
            rows: options.autotune_batch,
            cache_file: options.autotune_cache.as_ref(),
            fixed: options.tile,
        };
        let mut executors = Vec::with_capacity(groups.len());
        for (_, ctx, members) in groups {
            let specs: Vec<MemberSpec<'_>> = members
                .iter()
                .map(|&i| MemberSpec {
                    index: i,
                    name: &graph.members[i].name,
                    model: &graph.members[i].model,
                    weight: graph.weights[i],
                })
                .collect();
            let (device, executor) = match ctx {
                None => (
                    ExecutionDevice::Cpu,
                    Executor::Cpu(CpuExecutor::new(
                        &specs,
                        mode,
                        graph.output_width,
                        options.precision,
                    )),
                ),
                Some(ctx) => (
                    ctx.label.clone(),
                    Executor::Gpu(Box::new(GpuExecutor::new(
                        ctx,
                        &specs,
                        mode,
                        graph.input_width,
                        graph.output_width,
                        &options,
                        &tuner,
                    )?)),
                ),
            };
            executors.push((device, members, executor));
        }

        let mut member_devices = vec![ExecutionDevice::Cpu; graph.members.len()];
        let mut member_worker = vec![0; graph.members.len()];
        let mut workers = Vec::with_capacity(executors.len());
        for (w, (device, members, executor)) in executors.into_iter().enumerate() {
            for &m in &members {
                member_devices[m] = device.clone();
                member_worker[m] = w;
            }
            let (tx, rx) = crossbeam_channel::unbounded();
            let input_width = graph.input_width;
            let label = device.to_string();
            let thread = std::thread::Builder::new()
                .name(format!("wgpu-ensemble {device}"))
                .spawn(move || work(executor, rx, input_width, label))
                .map_err(|e| Error::WorkerFailed {
                    device: device.to_string(),
                    message: format!("could not start its thread: {e}"),
                })?;
            workers.push(Worker {
                device,
                members,
                jobs: Some(tx),
                thread: Some(thread),
            });
        }
        Ok(Self {
            input_width: graph.input_width,
            output_width: graph.output_width,
            names: graph.members.iter().map(|m| m.name.clone()).collect(),
            member_devices,
            member_worker,
            total_weight: graph.weights.iter().sum(),
            workers,
        })
    }

    /// Features per input row.
    pub fn input_width(&self) -> usize {
        self.input_width
    }

    /// Values per output row.
    pub fn output_width(&self) -> usize {
        self.output_width
    }

    /// Every member's name and the device it runs on, in member order.
    pub fn members(&self) -> impl Iterator<Item = (&str, &ExecutionDevice)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(&self.member_devices)
    }

    /// The distinct devices of this session, one worker each.
    pub fn devices(&self) -> impl Iterator<Item = &ExecutionDevice> {
        self.workers.iter().map(|w| &w.device)
    }

    /// Runs every member on `input` (`[rows, input_width]`) concurrently, waits for all
    /// of them (or the deadline), and combines their outputs.
    ///
    /// Members on one device go into one submission. A batch larger than a device's
    /// buffers allow is split into chunks on that device.
    pub fn run(&self, input: &Tensor, options: &RunOptions) -> Result<RunOutput> {
        let started = Instant::now();
        let (rows, cols) = input.dims2("input")?;
        if cols != self.input_width {
            return Err(Error::FeatureWidth {
                expected: self.input_width,
                got: cols,
            });
        }
        if rows == 0 {
            return Err(Error::EmptyBatch);
        }
        let deadline = options.timeout.map(|t| started + t);
        let (reply, replies) = crossbeam_channel::unbounded();
        for (w, worker) in self.workers.iter().enumerate() {
            let job = Job {
                worker: w,
                input: input.clone(),
                want_members: options.member_outputs,
                deadline,
                reply: reply.clone(),
            };
            let sent = worker.jobs.as_ref().map(|jobs| jobs.send(job).is_ok());
            if sent != Some(true) {
                return Err(self.worker_failed(w));
            }
        }
        drop(reply);
        self.gather(rows, &replies, deadline, options, started)
    }

    fn gather(
        &self,
        rows: usize,
        replies: &Receiver<(usize, Result<DeviceOutput>)>,
        deadline: Option<Instant>,
        options: &RunOptions,
        started: Instant,
    ) -> Result<RunOutput> {
        let mut acc = vec![0.0f32; rows * self.output_width];
        let mut answered = vec![false; self.workers.len()];
        let mut elapsed = vec![Duration::ZERO; self.workers.len()];
        let mut outputs: Vec<Option<Tensor>> = vec![None; self.names.len()];
        for _ in 0..self.workers.len() {
            let message = match deadline {
                Some(d) => replies.recv_deadline(d),
                None => replies.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let (w, result) = match message {
                Ok(m) => m,
                // A worker that picks up a job after its deadline drops it unanswered,
                // which can disconnect the channel before the timeout is seen.
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected)
                    if deadline.is_some_and(|d| Instant::now() >= d) =>
                {
                    return Err(Error::DeadlineExceeded {
                        timeout: options.timeout.unwrap_or_default(),
                        missing: self.missing(&answered),
                    })
                }
                Err(_) => {
                    let w = answered.iter().position(|a| !a).unwrap_or(0);
                    return Err(self.worker_failed(w));
                }
            };
            let out = result?;
            for (a, p) in acc.iter_mut().zip(&out.partial) {
                *a += p;
            }
            for (m, y) in out.members {
                outputs[m] = Some(Tensor::matrix(rows, self.output_width, y)?);
            }
            answered[w] = true;
            elapsed[w] = out.elapsed;
        }
        let scale = 1.0 / self.total_weight;
        acc.iter_mut().for_each(|a| *a *= scale);
        let members = outputs
            .into_iter()
            .enumerate()
            .map(|(m, output)| MemberReport {
                name: self.names[m].clone(),
                device: self.member_devices[m].clone(),
                elapsed: elapsed[self.member_worker[m]],
                output,
            })
            .collect();
        Ok(RunOutput {
            aggregate: Tensor::matrix(rows, self.output_width, acc)?,
            members,
            elapsed: started.elapsed(),
        })
    }

    fn missing(&self, answered: &[bool]) -> Vec<String> {
        (0..self.names.len())
            .filter(|&m| !answered[self.member_worker[m]])
            .map(|m| self.names[m].clone())
            .collect()
    }

    fn worker_failed(&self, w: usize) -> Error {
        let worker = &self.workers[w];
        Error::WorkerFailed {
            device: worker.device.to_string(),
            message: format!(
                "its thread has ended; members {}",
                worker
                    .members
                    .iter()
                    .map(|&m| self.names[m].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.jobs = None;
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A device worker: runs jobs in arrival order until the session closes its channel.
fn work(mut executor: Executor, jobs: Receiver<Job>, input_width: usize, device: String) {
    while let Ok(job) = jobs.recv() {
        // The caller has already returned `DeadlineExceeded`: nobody wants this result.
        if job.deadline.is_some_and(|d| Instant::now() >= d) {
            continue;
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            executor.run(&job.input, input_width, job.want_members)
        }))
        .unwrap_or_else(|panic| {
            executor.reset();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(Error::WorkerFailed {
                device: device.clone(),
                message: format!("it panicked: {message}"),
            })
        });
        // A send fails only when the run already gave up; the result is dropped.
        let _ = job.reply.send((job.worker, result));
    }
}
