//! A compiled graph: one worker thread per device, fed through crossbeam channels;
//! the caller's thread is the aggregate node.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::device::ExecutionDevice;
use crate::error::{Error, Result};
use crate::fault::FaultPlan;
use crate::gpu::tune::{CoopShape, TileConfig};
use crate::graph::Graph;
use crate::tensor::Tensor;
use crate::worker::{compile, spin_until, Combiner, DeviceOutput, Executor, WorkerContext};

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
    /// [`Error::PrecisionUnsupported`]). Tolerance: absolute 3e-4 or relative 3e-3
    /// against an f64 reference whose weights and layer inputs are rounded to f16 the
    /// same way (a hidden value within f32 rounding of an f16 rounding boundary may
    /// round the other way, about 1e-4 per flip); against the exact f64 reference
    /// expect about 1e-3 to 1e-2. Values beyond ±65504 overflow. On the CPU the same rounding is applied,
    /// so every placement gives the same results.
    F16,
    /// The arithmetic of [`Precision::F16`] (f16 weights and layer inputs, f32
    /// accumulation, the same tolerance against the same reference, so far checked on
    /// lavapipe's 8×8×8 matrices only; hardware tensor cores are unmeasured) with the
    /// products of
    /// batches over 16 rows run on the adapter's cooperative-matrix units (tensor
    /// cores) through wgpu's `EXPERIMENTAL_COOPERATIVE_MATRIX`. Needs an adapter that
    /// lists a 16×16×16 or 8×8×8 configuration with f16 operands and an f32
    /// accumulator (see [`AdapterInfo::cooperative_matrix`](crate::AdapterInfo)),
    /// plus `SHADER_F16` and `SUBGROUP`; anything less fails the session build with
    /// [`Error::PrecisionUnsupported`], never a silent fallback. Batches of at most
    /// 16 rows take the `F16` small-batch kernel, and the CPU applies the `F16`
    /// rounding. wgpu marks the feature experimental: the crate enables it only on
    /// the devices a session with this precision opens.
    F16CoopMatrix,
}

impl Precision {
    /// `f32`, `f16` or `f16-coop`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::F16CoopMatrix => "f16-coop",
        }
    }

    /// Whether weights and layer inputs are rounded to f16.
    pub(crate) fn is_f16(self) -> bool {
        matches!(self, Precision::F16 | Precision::F16CoopMatrix)
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "f16-coop" => Ok(Precision::F16CoopMatrix),
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
    /// How long a thread polls before it sleeps, wherever a run waits: a device's
    /// worker for its submission to finish (before sleeping on the driver's fence) and
    /// for the next job after one (a stream of runs), and [`Session::run`] for the
    /// workers' results. Default zero: every wait sleeps at once. Waking a sleeping
    /// thread costs tens of microseconds, which a small run on a GPU notices; a few
    /// hundred microseconds of spin may save it. Between polls the thread yields its
    /// core to any thread ready to run, so the spin takes only time no other thread
    /// wants, though it is still CPU time (a container's CPU quota counts it). A
    /// device's spin counts against [`operation_timeout`](Self::operation_timeout).
    /// `wgpu-ensemble bench --spin-us` measures it.
    pub spin_wait: Duration,
    /// Caps the size of every buffer a device run uses, below the device's own limit.
    /// Batches whose activations do not fit are split into chunks that do. `None`
    /// (the default) uses the device's limit.
    pub max_buffer_bytes: Option<u64>,
    /// The arithmetic of the GPU kernels (default [`Precision::F32`]).
    pub precision: Precision,
    /// Time a few tile configurations of the dense kernel (or, with
    /// [`Precision::F16CoopMatrix`], workgroup shapes of the cooperative-matrix
    /// kernel) for every layer shape at session build and keep the fastest (cached
    /// per adapter and shape class — rows, outputs, inputs, members run together in
    /// one dispatch — for the life of the process). Off by default:
    /// [`TileConfig::DEFAULT`] or [`CoopShape::DEFAULT`] is used.
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
    /// A fixed workgroup shape for the cooperative-matrix kernel
    /// ([`Precision::F16CoopMatrix`]), instead of [`CoopShape::DEFAULT`] or the
    /// autotune's choice. Checked against each device's limits.
    pub coop_shape: Option<CoopShape>,
    /// Measure each GPU device's time for its kernels in every run with timestamp
    /// queries ([`MemberReport::device_time`]): the time from the start of its first
    /// dispatch to the end of its last, without the upload, the submission, the wait
    /// or the readback, which [`MemberReport::elapsed`] includes. Needs
    /// `TIMESTAMP_QUERY` on every adapter the members run on (an error at session
    /// build otherwise; [`Placement::Auto`](crate::Placement::Auto) then uses only
    /// adapters that have it); adds a few commands and 16 to 20 bytes to each
    /// readback. Off by default. `wgpu-ensemble bench --device-timing` reports it.
    pub device_timing: bool,
    /// Whether kernels are compiled without wgpu's runtime bounds checks; set only
    /// through the unsafe [`SessionOptions::trusted_kernels`].
    pub(crate) trusted_kernels: bool,
    /// Faults to inject, for testing (empty by default); see [`FaultPlan`].
    pub faults: FaultPlan,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            operation_timeout: Duration::from_secs(60),
            spin_wait: Duration::ZERO,
            max_buffer_bytes: None,
            precision: Precision::F32,
            autotune: false,
            autotune_batch: 256,
            autotune_cache: None,
            tile: None,
            coop_shape: None,
            device_timing: false,
            trusted_kernels: false,
            faults: FaultPlan::default(),
        }
    }
}

impl SessionOptions {
    /// Sets [`SessionOptions::device_timing`].
    pub fn device_timing(mut self, yes: bool) -> Self {
        self.device_timing = yes;
        self
    }

    /// Sets [`SessionOptions::operation_timeout`].
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets [`SessionOptions::spin_wait`].
    pub fn spin_wait(mut self, spin: Duration) -> Self {
        self.spin_wait = spin;
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

    /// Sets [`SessionOptions::coop_shape`].
    pub fn coop_shape(mut self, shape: CoopShape) -> Self {
        self.coop_shape = Some(shape);
        self
    }

    /// Compiles the kernels without wgpu's runtime bounds checks (clamping every
    /// buffer and workgroup-array index), which makes the dense kernels markedly
    /// faster (1.4–2.5× on lavapipe, see the README).
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

    /// Sets [`SessionOptions::faults`].
    pub fn faults(mut self, plan: FaultPlan) -> Self {
        self.faults = plan;
        self
    }

    /// Sets [`SessionOptions::autotune_cache`].
    pub fn autotune_cache(mut self, path: impl Into<PathBuf>) -> Self {
        self.autotune_cache = Some(path.into());
        self
    }
}

/// How many members must answer for a run to succeed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuorumPolicy {
    /// Every member (the default): a member that fails fails the run with its error, a
    /// member late at the deadline gives [`Error::DeadlineExceeded`].
    #[default]
    RequireAll,
    /// At least this many members: the aggregate is taken over the members that
    /// finished before the deadline (weighted aggregates renormalise their weights over
    /// them), and each member's [`MemberStatus`] says what happened to it. Fewer gives
    /// [`Error::QuorumNotMet`] naming the missing members and why.
    Quorum(usize),
}

/// Options of one [`Session::run`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// Like TensorFlow's `RunOptions.timeout_in_ms`: members that have not answered in
    /// this time are late. `None` (the default) waits for every member; each device
    /// wait is still bounded by [`SessionOptions::operation_timeout`].
    pub timeout: Option<Duration>,
    /// Also return every member's own output.
    pub member_outputs: bool,
    /// How many members must finish (default [`QuorumPolicy::RequireAll`]).
    pub quorum: QuorumPolicy,
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

    /// Sets [`RunOptions::quorum`].
    pub fn quorum(mut self, quorum: QuorumPolicy) -> Self {
        self.quorum = quorum;
        self
    }
}

/// What a run returns.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RunOutput {
    /// The aggregate node's output, `[rows, output_width]`, over the members that
    /// finished.
    pub aggregate: Tensor,
    /// One report per member, in member order.
    pub members: Vec<MemberReport>,
    /// Wall time of the whole run, as the caller saw it.
    pub elapsed: Duration,
}

impl RunOutput {
    /// Whether every member finished (the aggregate is over all of them).
    pub fn is_complete(&self) -> bool {
        self.members
            .iter()
            .all(|m| matches!(m.status, MemberStatus::Finished))
    }

    /// The members that did not finish.
    pub fn missing(&self) -> impl Iterator<Item = &MemberReport> {
        self.members
            .iter()
            .filter(|m| !matches!(m.status, MemberStatus::Finished))
    }
}

/// What happened to a member in a run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum MemberStatus {
    /// It answered in time; its output is in the aggregate.
    Finished,
    /// It had not answered at the deadline.
    Late,
    /// It failed: its device was lost or is unavailable, its kernel or its worker
    /// failed, or a [`FaultPlan`](crate::FaultPlan) made it fail.
    Failed(Error),
}

/// One member's part in a run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MemberReport {
    /// The member's name.
    pub name: String,
    /// Where it runs.
    pub device: ExecutionDevice,
    /// Finished, late or failed.
    pub status: MemberStatus,
    /// Wall time of its device's work in this run (upload, every member on that
    /// device in one submission, readback); members sharing a device share it. Zero
    /// when it did not finish.
    pub elapsed: Duration,
    /// Its GPU device's time for the kernels of this run (every member on that
    /// device, summed over the submissions of a batch split into chunks), measured
    /// with timestamp queries when [`SessionOptions::device_timing`] is set; `None`
    /// otherwise, on the CPU, and when it did not finish.
    pub device_time: Option<Duration>,
    /// Its `[rows, output_width]` output, when [`RunOptions::member_outputs`] was set
    /// and it finished.
    pub output: Option<Tensor>,
}

struct Job {
    worker: usize,
    run: u64,
    input: Tensor,
    want_members: bool,
    deadline: Option<Instant>,
    /// Set when the run has returned (an early error, its deadline, or done): a job
    /// still queued then is skipped.
    given_up: Arc<AtomicBool>,
    reply: Sender<(usize, Result<DeviceOutput>)>,
}

/// Sets its flag when dropped: whichever way `run` returns, its jobs still queued on
/// other devices are skipped rather than computed for nobody.
struct GiveUpOnReturn(Arc<AtomicBool>);

impl Drop for GiveUpOnReturn {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
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
    weights: Vec<f32>,
    member_devices: Vec<ExecutionDevice>,
    workers: Vec<Worker>,
    runs: AtomicU64,
    /// [`SessionOptions::spin_wait`].
    spin: Duration,
}

impl Session {
    /// Compiles `graph` with default [`SessionOptions`].
    pub fn new(graph: Graph) -> Result<Self> {
        Self::with_options(graph, SessionOptions::default())
    }

    /// Compiles `graph`: resolves every placement, creates the devices, uploads the
    /// weights, creates the pipelines, and starts one worker per device.
    pub fn with_options(graph: Graph, options: SessionOptions) -> Result<Self> {
        let compiled = compile(&graph, &options, false)?;
        let names: Vec<String> = graph.members.iter().map(|m| m.name.clone()).collect();
        let plan = Arc::new(options.faults.clone());
        let spin = options.spin_wait;
        let mut member_devices = vec![ExecutionDevice::Cpu; graph.members.len()];
        let mut workers = Vec::with_capacity(compiled.len());
        for c in compiled {
            for &m in &c.members {
                member_devices[m] = c.device.clone();
            }
            let (tx, rx) = crossbeam_channel::unbounded();
            let context = WorkerContext {
                members: c.members.clone(),
                names: names.clone(),
                plan: Arc::clone(&plan),
                device: c.device.to_string(),
            };
            let mut executor = c.executor;
            let thread = std::thread::Builder::new()
                .name(format!("wgpu-ensemble {}", c.device))
                .spawn(move || work(&mut executor, rx, &context, spin))
                .map_err(|e| Error::WorkerFailed {
                    device: c.device.to_string(),
                    message: format!("could not start its thread: {e}"),
                })?;
            workers.push(Worker {
                device: c.device,
                members: c.members,
                jobs: Some(tx),
                thread: Some(thread),
            });
        }
        Ok(Self {
            input_width: graph.input_width,
            output_width: graph.output_width,
            names,
            weights: graph.weights.clone(),
            member_devices,
            workers,
            runs: AtomicU64::new(0),
            spin,
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
    /// of them (or the deadline), and combines their outputs under the run's
    /// [`QuorumPolicy`].
    ///
    /// Members on one device go into one submission. A batch larger than a device's
    /// buffers allow is split into chunks on that device.
    pub fn run(&self, input: &Tensor, options: &RunOptions) -> Result<RunOutput> {
        let started = Instant::now();
        let rows = check_input(input, self.input_width)?;
        check_quorum(options.quorum, self.names.len())?;
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        // A timeout too long to represent is no deadline.
        let deadline = options.timeout.and_then(|t| started.checked_add(t));
        let given_up = GiveUpOnReturn(Arc::new(AtomicBool::new(false)));
        let (reply, replies) = crossbeam_channel::unbounded();
        let mut combiner = Combiner::new(
            &self.names,
            &self.member_devices,
            &self.weights,
            rows,
            self.output_width,
        );
        let mut pending = vec![false; self.workers.len()];
        for (w, worker) in self.workers.iter().enumerate() {
            let job = Job {
                worker: w,
                run,
                input: input.clone(),
                want_members: options.member_outputs,
                deadline,
                given_up: Arc::clone(&given_up.0),
                reply: reply.clone(),
            };
            let sent = worker
                .jobs
                .as_ref()
                .is_some_and(|jobs| jobs.send(job).is_ok());
            if sent {
                pending[w] = true;
            } else {
                combiner.fail(&worker.members, self.worker_failed(w));
            }
        }
        drop(reply);
        while pending.iter().any(|&p| p) {
            let message = match spin_recv(&replies, self.spin, deadline) {
                Some(message) => Ok(message),
                None => match deadline {
                    Some(d) => replies.recv_deadline(d),
                    None => replies.recv().map_err(|_| RecvTimeoutError::Disconnected),
                },
            };
            match message {
                Ok((w, result)) => {
                    pending[w] = false;
                    let failure = combiner.add(&self.workers[w].members, result);
                    if let (Some(e), QuorumPolicy::RequireAll) = (failure, options.quorum) {
                        return Err(e);
                    }
                }
                // A worker that picks up a job after its deadline drops it unanswered,
                // which can disconnect the channel before the timeout is seen.
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected)
                    if deadline.is_some_and(|d| Instant::now() >= d) =>
                {
                    break
                }
                Err(RecvTimeoutError::Disconnected) => {
                    for (w, p) in pending.iter_mut().enumerate() {
                        if *p {
                            *p = false;
                            combiner.fail(&self.workers[w].members, self.worker_failed(w));
                        }
                    }
                }
            }
        }
        combiner.finish(options.quorum, options.timeout, started.elapsed())
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

/// The rows of a valid input: rank 2, the graph's width, at least one row.
pub(crate) fn check_input(input: &Tensor, width: usize) -> Result<usize> {
    let (rows, cols) = input.dims2("input")?;
    if cols != width {
        return Err(Error::FeatureWidth {
            expected: width,
            got: cols,
        });
    }
    if rows == 0 {
        return Err(Error::EmptyBatch);
    }
    Ok(rows)
}

/// A quorum between 1 and the member count.
pub(crate) fn check_quorum(quorum: QuorumPolicy, members: usize) -> Result<()> {
    match quorum {
        QuorumPolicy::Quorum(k) if k == 0 || k > members => {
            Err(Error::InvalidQuorum { quorum: k, members })
        }
        _ => Ok(()),
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

/// Polls `rx` for up to `spin` (never past `deadline`), yielding the core between
/// polls; `None` when nothing came (or the channel closed): the caller then waits the
/// sleeping way.
fn spin_recv<T>(rx: &Receiver<T>, spin: Duration, deadline: Option<Instant>) -> Option<T> {
    let limit = deadline.map_or(spin, |d| {
        spin.min(d.saturating_duration_since(Instant::now()))
    });
    spin_until(limit, || match rx.try_recv() {
        Ok(v) => ControlFlow::Break(Some(v)),
        Err(TryRecvError::Empty) => ControlFlow::Continue(()),
        Err(TryRecvError::Disconnected) => ControlFlow::Break(None),
    })
}

/// A device worker: runs jobs in arrival order until the session closes its channel.
/// After a job it spins for up to `spin` for the next one before sleeping.
fn work(executor: &mut Executor, jobs: Receiver<Job>, cx: &WorkerContext, spin: Duration) {
    let mut after_job = false;
    loop {
        let next = match after_job.then(|| spin_recv(&jobs, spin, None)).flatten() {
            Some(job) => Ok(job),
            None => jobs.recv(),
        };
        let Ok(job) = next else {
            break;
        };
        after_job = true;
        // The caller has already given up on this run (its deadline passed, or it
        // returned early on another device's failure): nobody wants this result, and
        // skipping it keeps a straggler from delaying later runs.
        if job.given_up.load(Ordering::Relaxed) || job.deadline.is_some_and(|d| Instant::now() >= d)
        {
            continue;
        }
        let result = executor.execute(&job.input, job.want_members, job.run, cx);
        // A send fails only when the run already gave up; the result is dropped.
        let _ = job.reply.send((job.worker, result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `spin_recv` takes what arrives while it spins, gives up when its time or the
    /// deadline is over or the channel closes, and does not spin at all for zero.
    #[test]
    fn spin_recv_waits_only_as_long_as_allowed() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let long = Duration::from_secs(30);
        tx.send(1).unwrap();
        assert_eq!(spin_recv(&rx, long, None), Some(1));
        // A value sent while the receiver spins.
        let sender = {
            let tx = tx.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                tx.send(2).unwrap();
            })
        };
        assert_eq!(spin_recv(&rx, long, None), Some(2));
        sender.join().unwrap();
        // Nothing comes: zero spin returns at once, a short one after its time, a long
        // one at the deadline.
        tx.send(3).unwrap();
        assert_eq!(spin_recv(&rx, Duration::ZERO, None), None);
        assert_eq!(rx.recv().unwrap(), 3);
        let started = Instant::now();
        assert_eq!(spin_recv(&rx, Duration::from_millis(30), None), None);
        assert!(started.elapsed() >= Duration::from_millis(30));
        let started = Instant::now();
        let deadline = Some(started + Duration::from_millis(30));
        assert_eq!(spin_recv(&rx, long, deadline), None);
        assert!(started.elapsed() < long);
        // A closed channel ends the spin at once.
        drop(tx);
        let started = Instant::now();
        assert_eq!(spin_recv(&rx, long, None), None);
        assert!(started.elapsed() < long);
    }
}
