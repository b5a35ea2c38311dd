//! A compiled graph: one worker thread per device, fed through crossbeam channels;
//! the caller's thread is the aggregate node.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::aggregate::Mode;
use crate::cpu::forward::{activate, Layers};
use crate::device_tensor::{DeviceCopy, DeviceRunOutput, DeviceTensor};
use crate::error::{Error, Result};
use crate::exec::{spin_until, DeviceOutput, Executor, Handles, Wants};
use crate::graph::Graph;
use crate::model::{Activation, Model};
use crate::options::{QuorumPolicy, RunOptions, SessionOptions};
use crate::placement::ExecutionDevice;
use crate::report::{MemberStatus, RunOutput};
use crate::runtime::{
    check_input, check_quorum, compile, execute_input, recv_by, Busy, Combiner, JobInput,
    WorkerContext, WorkerThread,
};
use crate::tensor::Tensor;

/// A job's input: a host tensor, or a device tensor with whether the worker should
/// keep the aggregate on its device.
#[derive(Clone)]
enum Payload {
    Host(Tensor),
    Device(DeviceTensor, bool),
}

/// What a worker is asked to do, in arrival order.
enum Work {
    Run(Job),
    /// Copy a tensor to the worker's device ([`Session::upload`]).
    Upload {
        worker: usize,
        tensor: Tensor,
        reply: Sender<UploadReply>,
    },
}

/// An upload's result: the worker's copy (`None` on the CPU).
type UploadReply = (usize, Result<Option<Arc<dyn DeviceCopy>>>);

/// A job's result: the device's output, and the aggregate when kept on its device.
type Reply = (usize, Result<(DeviceOutput, Option<Arc<dyn DeviceCopy>>)>);

struct Job {
    worker: usize,
    run: u64,
    input: Payload,
    wants: Wants,
    deadline: Option<Instant>,
    /// Set when the run has returned (an early error, its deadline, or done): a job
    /// still queued then is skipped.
    given_up: Arc<AtomicBool>,
    reply: Sender<Reply>,
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
    jobs: Option<Sender<Work>>,
    thread: WorkerThread,
    /// Handles on its executor that a caller may run on its own thread
    /// ([`Executor::concurrent`]), with the worker's context.
    inline: Option<(Handles, Arc<WorkerContext>)>,
}

/// A compiled [`Graph`]: every member on its device, one worker thread per device,
/// pipelines and buffers made once and reused.
///
/// `Session` is `Send + Sync`: any number of threads may call [`Session::run`] at once;
/// each device works through its runs in arrival order. A session whose only device is
/// the host CPU runs a run without a deadline on the calling thread instead, at the
/// same time as any others, saving the hand-off to its worker thread and back.
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
    /// What a member's output adds to the aggregate.
    mode: Mode,
    /// [`SessionOptions::operation_timeout`], for the readbacks of device tensors.
    operation_timeout: Duration,
    /// A stack's blender, finished by the aggregate node from the executors' sums of
    /// its first layer.
    blender: Option<HostBlender>,
}

/// What the aggregate node does of a stacking blender: its first layer's bias and
/// activation (the executors send the sums of the members' outputs times their
/// columns of its weight), then its other layers, on the host.
struct HostBlender {
    bias: Vec<f32>,
    activation: Activation,
    rest: Option<Layers>,
}

impl HostBlender {
    fn new(blender: &Model) -> Result<Self> {
        let layers = blender.layers();
        let Some(first) = layers.first() else {
            return Err(Error::EmptyModel);
        };
        let rest = if layers.len() > 1 {
            Some(Layers::new(Arc::new(Model::new(layers[1..].to_vec())?)))
        } else {
            None
        };
        Ok(Self {
            bias: first.bias().to_vec(),
            activation: first.activation(),
            rest,
        })
    }

    /// The blender's output on `rows` rows from the sums of its first layer
    /// (`[rows, hidden]`), `output_width` wide.
    fn finish(&self, mut sums: Vec<f32>, rows: usize, output_width: usize) -> Result<Tensor> {
        let hidden = self.bias.len();
        if sums.len() != rows * hidden {
            return Err(Error::WorkerFailed {
                device: "the aggregate node".to_string(),
                message: format!(
                    "the blender's first-layer sums hold {} values, not {rows} rows of {hidden}",
                    sums.len()
                ),
            });
        }
        for row in sums.chunks_exact_mut(hidden) {
            row.iter_mut().zip(&self.bias).for_each(|(z, b)| *z += b);
        }
        activate(self.activation, &mut sums, hidden);
        let y = match &self.rest {
            Some(rest) => rest.forward_all(&sums, rows),
            None => sums,
        };
        Tensor::matrix(rows, output_width, y)
    }
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
            let context = Arc::new(WorkerContext {
                members: c.members.clone(),
                names: names.clone(),
                plan: Arc::clone(&plan),
                device: c.device.to_string(),
            });
            let inline = c.executor.concurrent().map(|h| (h, Arc::clone(&context)));
            let mut executor = c.executor;
            let thread = WorkerThread::spawn(format!("wgpu-ensemble {}", c.device), move |busy| {
                work(executor.as_mut(), rx, &context, spin, &busy)
            })
            .map_err(|e| Error::WorkerFailed {
                device: c.device.to_string(),
                message: format!("could not start its thread: {e}"),
            })?;
            workers.push(Worker {
                device: c.device,
                members: c.members,
                jobs: Some(tx),
                thread,
                inline,
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
            mode: graph.aggregate.mode(),
            operation_timeout: options.operation_timeout,
            blender: graph
                .aggregate
                .blender()
                .map(|b| HostBlender::new(b))
                .transpose()?,
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
    ///
    /// With an [`Aggregate::Stack`](crate::Aggregate::Stack) each device multiplies
    /// its members' outputs, where they are, by their columns of the blender's first
    /// layer and sends the sum (`hidden` values per row, not the outputs); this thread
    /// adds the devices' sums, the bias and the activation and runs the blender's
    /// other layers once every member has finished ([`RunOutput::stacked`] says
    /// whether it did). The members' outputs are returned only when
    /// [`RunOptions::member_outputs`] asks.
    pub fn run(&self, input: &Tensor, options: &RunOptions) -> Result<RunOutput> {
        let started = Instant::now();
        let rows = check_input(input, self.input_width)?;
        let wants = Wants {
            members: options.member_outputs,
            moments: options.uncertainty,
        };
        let payload = Payload::Host(input.clone());
        let (mut combiner, _) = self.gather(rows, payload, options, wants, started)?;
        let sums = combiner.take_blend();
        // Over the members that finished, from the statistics their devices computed.
        let uncertainty = combiner.uncertainty();
        let mut out = combiner.finish(options.quorum, options.timeout, started.elapsed())?;
        out.uncertainty = uncertainty;
        // A stack's blender applies when every member finished; else the aggregate is
        // the mean of those that did.
        if let Some(blender) = &self.blender {
            let complete = out.is_complete();
            out.stacked = Some(complete);
            if complete {
                out.aggregate = blender.finish(sums, rows, self.output_width)?;
            }
            out.elapsed = started.elapsed();
        }
        Ok(out)
    }

    /// Copies `input` (`[rows, input_width]`) to every GPU device of the session, one
    /// upload each, for [`Session::run_device`] to read there. The tensor's host values
    /// are kept too (shared, not copied): the session's CPU members read them, and so
    /// does a device that has no copy.
    ///
    /// Each device makes its copy after the runs queued on it before; the wait for all
    /// of them together is bounded by [`SessionOptions::operation_timeout`]. A device
    /// that makes none — unavailable or lost, its worker gone, a copy larger than its
    /// largest buffer (or [`SessionOptions::max_buffer_bytes`]), no answer in time —
    /// is left out: its runs read the host values, as [`Session::run`] does, split into
    /// chunks where needed. So the only errors are those of the input: a wrong width
    /// is [`Error::FeatureWidth`], as for [`Session::run`].
    pub fn upload(&self, input: &Tensor) -> Result<DeviceTensor> {
        let rows = check_input(input, self.input_width)?;
        let (reply, replies) = crossbeam_channel::unbounded();
        let mut pending = 0;
        for (w, worker) in self.workers.iter().enumerate() {
            // The host CPU makes no copy, and neither does a split member's worker (its
            // parts read the host values): asking them would only wait for their
            // queued runs.
            if matches!(
                worker.device,
                ExecutionDevice::Cpu | ExecutionDevice::Split { .. }
            ) {
                continue;
            }
            let work = Work::Upload {
                worker: w,
                tensor: input.clone(),
                reply: reply.clone(),
            };
            if worker
                .jobs
                .as_ref()
                .is_some_and(|jobs| jobs.send(work).is_ok())
            {
                pending += 1;
            }
        }
        drop(reply);
        let mut copies: Vec<(usize, Arc<dyn DeviceCopy>)> = Vec::with_capacity(pending);
        let waiting = Instant::now();
        for _ in 0..pending {
            let left = self.operation_timeout.saturating_sub(waiting.elapsed());
            match replies.recv_timeout(left) {
                Ok((w, Ok(Some(copy)))) => copies.push((w, copy)),
                // No copy on that device: its runs take the host values.
                Ok((_, Ok(None) | Err(_))) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        copies.sort_by_key(|(w, _)| *w);
        Ok(DeviceTensor::new(
            [rows, self.input_width],
            Some(input.clone()),
            copies.into_iter().map(|(_, c)| c).collect(),
            self.operation_timeout,
        ))
    }

    /// [`Session::run`] on a [`DeviceTensor`]: each GPU device reads its own copy of
    /// the input (made by [`Session::upload`] or kept from a run of this session)
    /// without an upload; a device without one gets the values through the host (see
    /// [`DeviceTensor`]).
    ///
    /// The aggregate stays on the device when the session's members all run on one
    /// GPU device, the aggregate is a (weighted) mean and it fits in one buffer of the
    /// device ([`SessionOptions::max_buffer_bytes`] included): then no output is read
    /// back unless [`RunOptions::member_outputs`] asks for the members' outputs (with
    /// [`SessionOptions::device_timing`] the timestamps still are). Otherwise
    /// (several devices, the CPU, a vote) it is combined on the host as by
    /// [`Session::run`] and returned as a `DeviceTensor` holding that host tensor.
    /// Member statuses, quorum and deadline are those of [`Session::run`]; a wrong
    /// width is [`Error::FeatureWidth`]. With an
    /// [`Aggregate::Stack`](crate::Aggregate::Stack) each device reads its copy as
    /// above and sends its sums of the blender's first layer, which the aggregate node
    /// finishes on the host, as [`Session::run`] does.
    ///
    /// ```
    /// use wgpu_ensemble::{Graph, Model, Activation, Placement, RunOptions, Session, Tensor};
    ///
    /// # fn main() -> wgpu_ensemble::Result<()> {
    /// let model = Model::random(&[3, 8, 2], &[Activation::Relu, Activation::Softmax], 7)?;
    /// let graph = Graph::builder(3).member("m", model, Placement::Cpu).build()?;
    /// let session = Session::new(graph)?;
    /// let x = Tensor::matrix(1, 3, vec![0.1, 0.2, 0.3])?;
    /// let resident = session.upload(&x)?;
    /// let out = session.run_device(&resident, &RunOptions::default())?;
    /// let host = session.run(&x, &RunOptions::default())?;
    /// assert_eq!(out.aggregate.to_host()?, host.aggregate);
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_device(
        &self,
        input: &DeviceTensor,
        options: &RunOptions,
    ) -> Result<DeviceRunOutput> {
        let started = Instant::now();
        if input.cols() != self.input_width {
            return Err(Error::FeatureWidth {
                expected: self.input_width,
                got: input.cols(),
            });
        }
        let rows = input.rows();
        if rows == 0 {
            return Err(Error::EmptyBatch);
        }
        // A stack's aggregate is finished on the host, from the devices' sums.
        let keep = self.mode == Mode::Values
            && self.blender.is_none()
            && self.workers.len() == 1
            && self.workers[0].device != ExecutionDevice::Cpu;
        let payload = Payload::Device(input.clone(), keep);
        let wants = Wants {
            members: options.member_outputs,
            moments: options.uncertainty,
        };
        let (mut combiner, kept) = self.gather(rows, payload, options, wants, started)?;
        let uncertainty = combiner.uncertainty();
        let sums = combiner.take_blend();
        let shape = [rows, self.output_width];
        let mut stacked = None;
        let (aggregate, members) = match kept {
            Some(copy) => {
                let (settled, members) = combiner.settle(options.quorum, options.timeout);
                settled?;
                let aggregate = DeviceTensor::new(shape, None, vec![copy], self.operation_timeout);
                (aggregate, members)
            }
            None => {
                let (aggregate, members) = combiner.finish_parts(options.quorum, options.timeout);
                let mut aggregate = aggregate?;
                if let Some(blender) = &self.blender {
                    let complete = members
                        .iter()
                        .all(|m| matches!(m.status, MemberStatus::Finished));
                    stacked = Some(complete);
                    if complete {
                        aggregate = blender.finish(sums, rows, self.output_width)?;
                    }
                }
                let aggregate =
                    DeviceTensor::new(shape, Some(aggregate), Vec::new(), self.operation_timeout);
                (aggregate, members)
            }
        };
        Ok(DeviceRunOutput {
            aggregate,
            members,
            elapsed: started.elapsed(),
            stacked,
            uncertainty,
        })
    }

    /// Sends `input` to every worker and combines their answers until all arrive, the
    /// quorum policy gives up, or the deadline passes; the aggregate a worker kept on
    /// its device comes back beside the combiner. The workers send what `wants` asks
    /// for besides.
    fn gather(
        &self,
        rows: usize,
        input: Payload,
        options: &RunOptions,
        wants: Wants,
        started: Instant,
    ) -> Result<(Combiner<'_>, Option<Arc<dyn DeviceCopy>>)> {
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
        if let (Payload::Host(x), None, [worker]) = (&input, deadline, self.workers.as_slice()) {
            if let Some((handles, context)) = &worker.inline {
                // The only device runs on any thread and the run has no deadline to
                // walk away at: this thread runs the job itself, rather than wake the
                // worker and wait to be woken, with no lock held while it runs.
                let mut executor = handles();
                let result =
                    execute_input(executor.as_mut(), JobInput::Host(x), wants, run, context);
                admit(
                    &mut combiner,
                    &worker.members,
                    result.map(|(out, _)| out),
                    options,
                )?;
                return Ok((combiner, None));
            }
        }
        let mut kept = None;
        let mut pending = vec![false; self.workers.len()];
        for (w, worker) in self.workers.iter().enumerate() {
            let job = Job {
                worker: w,
                run,
                input: input.clone(),
                wants,
                deadline,
                given_up: Arc::clone(&given_up.0),
                reply: reply.clone(),
            };
            let sent = worker
                .jobs
                .as_ref()
                .is_some_and(|jobs| jobs.send(Work::Run(job)).is_ok());
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
                None => recv_by(&replies, deadline),
            };
            match message {
                Ok((w, result)) => {
                    pending[w] = false;
                    let result = result.map(|(out, copy)| {
                        kept = kept.take().or(copy);
                        out
                    });
                    admit(&mut combiner, &self.workers[w].members, result, options)?;
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
        Ok((combiner, kept))
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
    /// Closes every worker's queue and joins the idle workers. A worker still running
    /// a job (every run has returned by now, so nobody wants its result: a member
    /// stuck past its deadline, say) is detached instead: dropping a session never
    /// waits for a stuck member, and a process that drops it can end.
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.jobs = None;
        }
        for w in &mut self.workers {
            w.thread.shut_down(|| {});
        }
    }
}

/// Adds one device's result for `members` to the combiner; under
/// [`QuorumPolicy::RequireAll`] a failed member fails the run at once.
fn admit(
    combiner: &mut Combiner<'_>,
    members: &[usize],
    result: Result<DeviceOutput>,
    options: &RunOptions,
) -> Result<()> {
    match (combiner.add(members, result), options.quorum) {
        (Some(e), QuorumPolicy::RequireAll) => Err(e),
        _ => Ok(()),
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
fn work(
    executor: &mut dyn Executor,
    jobs: Receiver<Work>,
    cx: &WorkerContext,
    spin: Duration,
    busy: &Busy,
) {
    let mut after_job = false;
    loop {
        let next = match after_job.then(|| spin_recv(&jobs, spin, None)).flatten() {
            Some(job) => Ok(job),
            None => jobs.recv(),
        };
        let job = match next {
            Ok(Work::Run(job)) => job,
            Ok(Work::Upload {
                worker,
                tensor,
                reply,
            }) => {
                let copy = busy.during(|| upload(executor, &tensor, cx));
                let _ = reply.send((worker, copy));
                continue;
            }
            Err(_) => break,
        };
        after_job = true;
        // The caller has already given up on this run (its deadline passed, or it
        // returned early on another device's failure): nobody wants this result, and
        // skipping it keeps a straggler from delaying later runs.
        if job.given_up.load(Ordering::Relaxed) || job.deadline.is_some_and(|d| Instant::now() >= d)
        {
            continue;
        }
        let input = match &job.input {
            Payload::Host(x) => JobInput::Host(x),
            Payload::Device(x, keep) => JobInput::Device(x, *keep),
        };
        let result = busy.during(|| execute_input(executor, input, job.wants, job.run, cx));
        // A send fails only when the run already gave up; the result is dropped.
        let _ = job.reply.send((job.worker, result));
    }
}

/// A worker's copy of `tensor` on its device; a panic inside the executor becomes
/// [`Error::WorkerFailed`] (the executor is reset and lives on).
fn upload(
    executor: &mut dyn Executor,
    tensor: &Tensor,
    cx: &WorkerContext,
) -> Result<Option<Arc<dyn DeviceCopy>>> {
    catch_unwind(AssertUnwindSafe(|| executor.upload(tensor))).unwrap_or_else(|_| {
        executor.reset();
        Err(Error::WorkerFailed {
            device: cx.device.clone(),
            message: "it panicked while uploading a device tensor".to_string(),
        })
    })
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
