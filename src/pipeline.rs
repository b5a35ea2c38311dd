//! Between-graph mode: [`Pipeline`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::error::{Error, Result};
use crate::exec::{DeviceOutput, Wants};
use crate::graph::Graph;
use crate::options::{QuorumPolicy, SessionOptions};
use crate::placement::ExecutionDevice;
use crate::report::MemberReport;
use crate::runtime::{
    check_input, check_quorum, compile, execute, recv_by, Combiner, WorkerContext, WorkerThread,
};
use crate::tensor::Tensor;

/// Settings of a [`Pipeline`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PipelineOptions {
    /// Length of every queue: each member's input and prediction queues, the
    /// aggregator's, and the results'. Default 16.
    pub capacity: usize,
    /// How long after `send` the aggregator waits for an input's predictions (the
    /// dequeue timeout). `None` (the default) waits for every member.
    pub timeout: Option<Duration>,
    /// How many members must answer for an input (default
    /// [`QuorumPolicy::RequireAll`]).
    pub quorum: QuorumPolicy,
    /// Also return every member's own output.
    pub member_outputs: bool,
    /// Also return the uncertainty measures ([`PipelineOutput::uncertainty`]), over
    /// the members that answered, from the statistics each worker computes where its
    /// members' outputs are (see [`RunOptions::uncertainty`](crate::RunOptions::uncertainty)).
    pub uncertainty: bool,
    /// Device and kernel settings, and the [`FaultPlan`](crate::FaultPlan) (whose run
    /// numbers are input ids here).
    pub session: SessionOptions,
    /// One worker (and executor) per member instead of one per device. Default
    /// `false`: the members placed on one device share one worker, which runs them as
    /// one submission per input as [`Session::run`](crate::Session::run) does. See
    /// [`PipelineOptions::worker_per_member`].
    pub worker_per_member: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            capacity: 16,
            timeout: None,
            quorum: QuorumPolicy::RequireAll,
            member_outputs: false,
            uncertainty: false,
            session: SessionOptions::default(),
            worker_per_member: false,
        }
    }
}

impl PipelineOptions {
    /// Sets [`PipelineOptions::capacity`] (at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Sets [`PipelineOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets [`PipelineOptions::quorum`].
    pub fn quorum(mut self, quorum: QuorumPolicy) -> Self {
        self.quorum = quorum;
        self
    }

    /// Sets [`PipelineOptions::member_outputs`].
    pub fn member_outputs(mut self, yes: bool) -> Self {
        self.member_outputs = yes;
        self
    }

    /// Sets [`PipelineOptions::uncertainty`].
    pub fn uncertainty(mut self, yes: bool) -> Self {
        self.uncertainty = yes;
        self
    }

    /// Sets [`PipelineOptions::session`].
    pub fn session(mut self, options: SessionOptions) -> Self {
        self.session = options;
        self
    }

    /// Gives every member a worker and an executor of its own (`true`) instead of one
    /// per device (`false`, the default).
    ///
    /// One worker per device runs its members as one submission per input (stacked,
    /// as a [`Session`](crate::Session) does): on one GPU that is one upload, one
    /// command buffer, one wait and one readback per input instead of one each per
    /// member. The price is isolation: a member that is slow on an input (or sleeps
    /// by fault injection) delays its device siblings on that input, so under a
    /// timeout they are late with it, and a panic fails the input for all of them.
    /// With a worker per member, each member of a device submits and waits on its own,
    /// and a straggler delays only itself; members of one device then also overlap
    /// across inputs (on the CPU, one worker per member runs several members at once).
    ///
    /// ```
    /// use wgpu_ensemble::PipelineOptions;
    ///
    /// let isolated = PipelineOptions::default().worker_per_member(true);
    /// assert!(isolated.worker_per_member);
    /// assert!(!PipelineOptions::default().worker_per_member);
    /// ```
    pub fn worker_per_member(mut self, yes: bool) -> Self {
        self.worker_per_member = yes;
        self
    }
}

/// One input's result.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PipelineOutput {
    /// The id `send` returned for the input.
    pub id: u64,
    /// The aggregate over the members that answered, or why there is none
    /// ([`Error::QuorumNotMet`], [`Error::DeadlineExceeded`], or a member's error under
    /// [`QuorumPolicy::RequireAll`]).
    pub aggregate: Result<Tensor>,
    /// Every member's status (and output, when asked for), in member order.
    pub members: Vec<MemberReport>,
    /// Time from `send` to the result.
    pub elapsed: Duration,
    /// The uncertainty measures over the members that answered, when
    /// [`PipelineOptions::uncertainty`] asks and the aggregate was made.
    pub uncertainty: Option<crate::Uncertainty>,
}

struct Item {
    id: u64,
    input: Tensor,
    deadline: Option<Instant>,
}

struct Ticket {
    id: u64,
    rows: usize,
    sent: Instant,
    deadline: Option<Instant>,
}

/// A prediction: `None` when the worker skipped the input (its deadline had passed).
type Prediction = (u64, Option<Result<DeviceOutput>>);

/// The open ends of the queues `send` writes to: every worker's input queue and the
/// aggregator's.
struct Inlets {
    workers: Vec<Sender<Item>>,
    tickets: Sender<Ticket>,
}

/// Between-graph mode: a streaming pipeline with one worker per device (or, with
/// [`PipelineOptions::worker_per_member`], per member), bounded queues, and an
/// aggregator with a dequeue timeout.
///
/// ```text
/// send(x) ──┬──> [input queue w0] ─> worker w0: m0, m1 (GPU 0) ─> [prediction queue w0] ──┐
///           ├──> [input queue w1] ─> worker w1: m2 (GPU 1)     ─> [prediction queue w1] ──┼─> aggregator ─> [results] ─> recv()
///           └──> [input queue w2] ─> worker w2: m3, m4 (CPU)   ─> [prediction queue w2] ──┘
/// ```
///
/// Every input gets an id (0, 1, 2, ... in the order sent) and exactly one result,
/// in input order. A worker runs its members on the input as one job — on a GPU one
/// upload, one submission (members of one shape stacked) and one readback, as in
/// [`Session::run`](crate::Session::run) — and hands on one prediction covering them.
/// The aggregator waits for each worker's prediction until the input's deadline (send
/// time + [`PipelineOptions::timeout`]), then applies the same [`QuorumPolicy`] and
/// reports the same [`MemberStatus`](crate::MemberStatus) per member as
/// `Session::run`: the members of a worker whose prediction is late are all late. A
/// worker that dequeues an input whose deadline has passed skips it, so a straggler
/// falls behind by at most the one input it is running. All queues are bounded by
/// [`PipelineOptions::capacity`]: `send` blocks when a worker's input queue is full,
/// so receive results from another thread (or interleave `send` and `recv`) when
/// streaming more than `capacity` inputs.
///
/// `Pipeline` is `Send + Sync`; `send` from several threads is serialised so that ids
/// and queue order agree.
pub struct Pipeline {
    input_width: usize,
    devices: Vec<ExecutionDevice>,
    /// The members of every worker, in worker order.
    workers: Vec<Vec<usize>>,
    inputs: Mutex<Option<Inlets>>,
    next_id: AtomicU64,
    results: Receiver<PipelineOutput>,
    /// The workers, then the aggregator.
    threads: Vec<WorkerThread>,
    /// Set when the pipeline is dropped: what is still queued is skipped.
    abandoned: Arc<AtomicBool>,
    timeout: Option<Duration>,
}

impl Pipeline {
    /// Compiles the members of `graph` into one worker per device (or per member,
    /// with [`PipelineOptions::worker_per_member`]) and starts the aggregator. A graph
    /// with an [`Aggregate::Stack`](crate::Aggregate::Stack) is refused
    /// ([`Error::StackUnsupported`]): run it with [`Session::run`](crate::Session::run).
    pub fn new(graph: Graph, options: PipelineOptions) -> Result<Self> {
        if graph.aggregate.blender().is_some() {
            return Err(Error::StackUnsupported {
                operation: "a Pipeline",
                reason: "its aggregator combines partial sums; run a stack with Session::run",
            });
        }
        check_quorum(options.quorum, graph.members.len())?;
        let capacity = options.capacity.max(1);
        let compiled = compile(&graph, &options.session, options.worker_per_member)?;
        let names: Vec<String> = graph.members.iter().map(|m| m.name.clone()).collect();
        let plan = Arc::new(options.session.faults.clone());
        let mut devices = vec![ExecutionDevice::Cpu; names.len()];
        let mut workers = Vec::new();
        let mut inputs = Vec::new();
        let mut outlets = Vec::new();
        let mut threads = Vec::new();
        let abandoned = Arc::new(AtomicBool::new(false));
        for c in compiled {
            for &m in &c.members {
                devices[m] = c.device.clone();
            }
            let thread_name = match c.members.as_slice() {
                [m] => format!("wgpu-ensemble member {}", names[*m]),
                _ => format!("wgpu-ensemble {}", c.device),
            };
            let (item_tx, item_rx) = bounded::<Item>(capacity);
            let (pred_tx, pred_rx) = bounded::<Prediction>(capacity);
            let cx = WorkerContext {
                members: c.members.clone(),
                names: names.clone(),
                plan: Arc::clone(&plan),
                device: c.device.to_string(),
            };
            let mut executor = c.executor;
            let want = Wants {
                members: options.member_outputs,
                moments: options.uncertainty,
            };
            let stop = Arc::clone(&abandoned);
            let thread = WorkerThread::spawn(thread_name, move |busy| {
                while let Ok(item) = item_rx.recv() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // Busy while it runs the input and hands the prediction on
                    // (which blocks while the aggregator's queue is full).
                    let sent = busy.during(|| {
                        let result = if item.deadline.is_some_and(|d| Instant::now() >= d) {
                            None
                        } else {
                            Some(execute(executor.as_mut(), &item.input, want, item.id, &cx))
                        };
                        pred_tx.send((item.id, result)).is_ok()
                    });
                    if !sent {
                        break;
                    }
                }
            })
            .map_err(|e| thread_error(&c.device, e))?;
            threads.push(thread);
            inputs.push(item_tx);
            outlets.push(Outlet {
                members: c.members.clone(),
                predictions: pred_rx,
            });
            workers.push(c.members);
        }
        let (ticket_tx, ticket_rx) = bounded::<Ticket>(capacity);
        let (result_tx, result_rx) = bounded::<PipelineOutput>(capacity);
        let aggregator = Aggregator {
            names,
            devices: devices.clone(),
            weights: graph.weights.clone(),
            cols: graph.output_width,
            quorum: options.quorum,
            timeout: options.timeout,
            outlets,
        };
        let stop = Arc::clone(&abandoned);
        threads.push(
            WorkerThread::spawn("wgpu-ensemble aggregator".to_string(), move |busy| {
                aggregator.run(&ticket_rx, &result_tx, &stop, &busy)
            })
            .map_err(|e| thread_error(&ExecutionDevice::Cpu, e))?,
        );
        Ok(Self {
            input_width: graph.input_width,
            devices,
            workers,
            inputs: Mutex::new(Some(Inlets {
                workers: inputs,
                tickets: ticket_tx,
            })),
            next_id: AtomicU64::new(0),
            results: result_rx,
            threads,
            abandoned,
            timeout: options.timeout,
        })
    }

    /// Number of members.
    pub fn member_count(&self) -> usize {
        self.devices.len()
    }

    /// The device of every member, in member order.
    pub fn devices(&self) -> impl Iterator<Item = &ExecutionDevice> {
        self.devices.iter()
    }

    /// The members (indexes in member order) of every worker: one worker per device,
    /// or one per member with [`PipelineOptions::worker_per_member`]. Each worker runs
    /// its members on an input as one job and answers for all of them at once.
    pub fn workers(&self) -> impl Iterator<Item = &[usize]> {
        self.workers.iter().map(Vec::as_slice)
    }

    /// Queues `input` (`[rows, input_width]`) for every worker and returns its id.
    /// Blocks while a queue is full (back-pressure). Fails on a bad input, or after
    /// [`Pipeline::close`].
    pub fn send(&self, input: &Tensor) -> Result<u64> {
        let rows = check_input(input, self.input_width)?;
        let guard = self.inputs.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(Inlets {
            workers: inputs,
            tickets,
        }) = guard.as_ref()
        else {
            return Err(Error::PipelineClosed);
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let deadline = self.timeout.and_then(|t| sent.checked_add(t));
        tickets
            .send(Ticket {
                id,
                rows,
                sent,
                deadline,
            })
            .map_err(|_| Error::PipelineClosed)?;
        for queue in inputs {
            // A worker that is gone shows up as failed members in the result.
            let _ = queue.send(Item {
                id,
                input: input.clone(),
                deadline,
            });
        }
        Ok(id)
    }

    /// The next result, in input order; `None` once the pipeline is closed and every
    /// result has been received.
    pub fn recv(&self) -> Option<PipelineOutput> {
        self.results.recv().ok()
    }

    /// The next result if one arrives within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<PipelineOutput> {
        self.results.recv_timeout(timeout).ok()
    }

    /// Stops accepting inputs. Everything already sent is still processed: keep
    /// calling [`Pipeline::recv`] until it returns `None`.
    pub fn close(&self) {
        self.inputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Closes the pipeline and returns every result still in flight, in input order.
    pub fn finish(self) -> Vec<PipelineOutput> {
        self.close();
        std::iter::from_fn(|| self.recv()).collect()
    }
}

impl Drop for Pipeline {
    /// Stops taking inputs, skips what is still queued, and joins the idle workers; a
    /// worker still running an input (a member stuck past its deadline, say), or the
    /// aggregator waiting for one, is detached instead, so that dropping a pipeline
    /// never waits for a stuck member.
    fn drop(&mut self) {
        self.close();
        self.abandoned.store(true, Ordering::SeqCst);
        let results = &self.results;
        for t in &mut self.threads {
            // Unblock an aggregator waiting to deliver results nobody will read.
            t.shut_down(|| while results.try_recv().is_ok() {});
        }
    }
}

fn thread_error(device: &ExecutionDevice, e: std::io::Error) -> Error {
    Error::WorkerFailed {
        device: device.to_string(),
        message: format!("could not start its thread: {e}"),
    }
}

/// A worker's prediction queue and the members its predictions cover.
struct Outlet {
    members: Vec<usize>,
    predictions: Receiver<Prediction>,
}

/// Takes one prediction per worker (covering its members) for each input, in input
/// order.
struct Aggregator {
    names: Vec<String>,
    devices: Vec<ExecutionDevice>,
    weights: Vec<f32>,
    cols: usize,
    quorum: QuorumPolicy,
    timeout: Option<Duration>,
    outlets: Vec<Outlet>,
}

impl Aggregator {
    /// Combines the predictions of every ticket until the tickets end or `stop` is set;
    /// `busy` while it waits for a ticket's predictions.
    fn run(
        &self,
        tickets: &Receiver<Ticket>,
        results: &Sender<PipelineOutput>,
        stop: &AtomicBool,
        busy: &crate::runtime::Busy,
    ) {
        // The id each worker's prediction queue will deliver next.
        let mut cursor = vec![0u64; self.outlets.len()];
        let mut gone = vec![false; self.outlets.len()];
        while let Ok(ticket) = tickets.recv() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let output = busy.during(|| self.combine(&ticket, &mut cursor, &mut gone));
            if results.send(output).is_err() {
                return;
            }
        }
    }

    /// One ticket's predictions, each worker's until the ticket's deadline, combined.
    fn combine(&self, ticket: &Ticket, cursor: &mut [u64], gone: &mut [bool]) -> PipelineOutput {
        let mut combiner = Combiner::new(
            &self.names,
            &self.devices,
            &self.weights,
            ticket.rows,
            self.cols,
        );
        for (w, outlet) in self.outlets.iter().enumerate() {
            let (members, queue) = (&outlet.members, &outlet.predictions);
            if gone[w] {
                combiner.fail(members, self.worker_gone(members));
                continue;
            }
            // Drop predictions of earlier inputs that arrived after their deadline.
            while cursor[w] <= ticket.id {
                let message = recv_by(queue, ticket.deadline);
                match message {
                    Ok((id, prediction)) => {
                        cursor[w] = id + 1;
                        if id == ticket.id {
                            if let Some(result) = prediction {
                                combiner.add(members, result);
                            }
                        }
                    }
                    // Late: its status stays unanswered.
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        gone[w] = true;
                        combiner.fail(members, self.worker_gone(members));
                        break;
                    }
                }
            }
        }
        let uncertainty = combiner.uncertainty();
        let (aggregate, members) = combiner.finish_parts(self.quorum, self.timeout);
        PipelineOutput {
            id: ticket.id,
            uncertainty: uncertainty.filter(|_| aggregate.is_ok()),
            aggregate,
            members,
            elapsed: ticket.sent.elapsed(),
        }
    }

    /// The failure of `members` (one worker's, never empty) once their worker is gone.
    fn worker_gone(&self, members: &[usize]) -> Error {
        let device = members
            .first()
            .map_or_else(String::new, |&m| self.devices[m].to_string());
        let names: Vec<&str> = members.iter().map(|&m| self.names[m].as_str()).collect();
        Error::WorkerFailed {
            device,
            message: format!(
                "the worker of member{} '{}' has stopped",
                if names.len() == 1 { "" } else { "s" },
                names.join("', '")
            ),
        }
    }
}
