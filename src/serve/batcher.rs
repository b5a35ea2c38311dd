//! One model version's queue, its dynamic batching, and the replicas that answer it.
//!
//! - **Queue.** [`Batcher::submit`] never blocks: it counts the request against
//!   [`BatchConfig::queue_capacity`] (every request taken and not yet running counts)
//!   and hands it to a channel, or refuses it at once with 503 (full, or closed).
//! - **Batching.** One dispatcher thread forms batches. It first waits for an idle
//!   replica, then takes the oldest request and gathers the requests that may run with
//!   it until the batch holds [`BatchConfig::max_batch_size`] rows or
//!   [`BatchConfig::max_queue_delay`] has passed since the first request was queued
//!   (requests already waiting then still join). The first request waits for others
//!   only when there are others — requests already waiting, or a last batch that
//!   merged several — so that a lone client is never delayed. Since a batch is formed only when a
//!   replica can run it, the waiting requests stay in the queue while every replica is
//!   busy, and batches grow with the load. A request of more rows than
//!   `max_batch_size` runs alone.
//! - **What merges.** Requests merge when they ask for the same quorum and the same
//!   member outputs, and either none has a deadline or all have. The batch runs with
//!   the earliest deadline of its requests, and a request joins only if that moves its
//!   own deadline earlier by at most its slack: the larger of `max_queue_delay` and a
//!   tenth of its timeout. A request with a long deadline is thus never run under a much
//!   shorter one; it waits for the next batch instead. Whether a request asks for the
//!   uncertainty measures does not keep it apart: a batch is run with them when any of
//!   its requests asks, and only those get them (they are per row, so each gets what
//!   it would alone).
//! - **Dropped before running.** A request whose client has gone (its [`Reply`] was
//!   dropped) is not run; one whose deadline has passed is answered 504 and not run.
//!   Both are checked when a batch is formed and again just before it runs.
//! - **Replicas.** Each replica (one [`Session`]) has a thread that runs one batch at a
//!   time, as one [`Session::run`], and splits its output (the aggregate, every
//!   member's output and the uncertainty measures) back by rows. A batch goes to an idle replica — the one idle the
//!   longest — so the least loaded one gets the work.
//! - **Stopping.** [`Batcher::close`] refuses new requests; queued ones are still
//!   answered. [`Batcher::drain`] closes and waits for the threads
//!   ([`Batcher::drain_timeout`] waits at most so long). Dropping a batcher
//!   closes it and leaves its threads to answer what is queued and end on their own, so
//!   that a drop (on an async runtime's thread, say) never waits for a slow member.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

use super::metrics::{Dropped, MemberOutcome, Metrics};
use super::types::{InferAnswer, InferRequest, MemberAnswer, MemberState, ServeError};
use crate::error::Error;
use crate::options::{QuorumPolicy, RunOptions};
use crate::report::{MemberStatus, RunOutput};
use crate::runtime::check_quorum;
use crate::session::Session;
use crate::tensor::Tensor;
use crate::uncertainty::Uncertainty;

/// How a version's requests are queued and merged.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// The most rows one batch run holds (a larger request runs alone).
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for others to join it. With zero,
    /// a batch is what has queued by the time a replica is idle: requests still merge
    /// under load (they wait while every replica is busy), and a lone request never
    /// waits.
    pub max_queue_delay: Duration,
    /// The most requests waiting; one more is refused with 503.
    pub queue_capacity: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 64,
            max_queue_delay: Duration::from_micros(500),
            queue_capacity: 1024,
        }
    }
}

/// One copy of the ensemble: a session and the name metrics give it.
pub struct Replica {
    /// `manifest`, or the device it runs on (`adapter:0`, `cpu`).
    pub name: String,
    /// The ensemble.
    pub session: Session,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Where a request's answer goes.
pub type Reply = oneshot::Receiver<Result<InferAnswer, ServeError>>;

/// A request [`Batcher::try_submit`] did not queue, handed back with the reason.
#[derive(Debug)]
pub struct Refused {
    /// What [`Batcher::submit`] answers: 400 for a request that does not fit the
    /// version, 503 for a full queue or a closed batcher.
    pub error: ServeError,
    /// Whether the batcher was closed (the version is being unloaded): the request
    /// may go to the version that replaces it.
    pub closed: bool,
    /// The request, untouched.
    pub request: InferRequest,
}

type Answer = Result<InferAnswer, ServeError>;

struct Pending {
    request: InferRequest,
    reply: oneshot::Sender<Answer>,
    /// When it entered the queue: the batch it starts waits from here.
    queued: Instant,
}

impl Pending {
    fn rows(&self) -> usize {
        self.request.input.shape().first().copied().unwrap_or(0)
    }
}

/// What requests must agree on to run as one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunKey {
    quorum: Option<usize>,
    want_members: bool,
    has_deadline: bool,
}

impl RunKey {
    fn of(request: &InferRequest) -> Self {
        Self {
            quorum: request.quorum,
            want_members: request.want_members,
            has_deadline: request.deadline().is_some(),
        }
    }
}

/// A version's bounded queue, its batching thread and a thread per replica.
///
/// Requests that agree on their run options (quorum, member outputs, nearby deadlines)
/// wait up to [`BatchConfig::max_queue_delay`] to be merged into one batch of at most
/// [`BatchConfig::max_batch_size`] rows, run as one [`Session::run`] on an idle replica,
/// and the output is split back by rows: a request gets the same numbers as alone. A
/// full queue or a closed batcher refuses at once (503); a request whose client has
/// gone is not run, one whose deadline has passed is answered 504 without running.
/// Dropping it never waits: its threads answer what is queued and end on their own.
pub struct Batcher {
    model: String,
    version: u64,
    input_width: usize,
    output_width: usize,
    members: Vec<String>,
    capacity: usize,
    queue: RwLock<Option<Sender<Pending>>>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("model", &self.model)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the batching thread and a thread per replica. `replicas` must not be
    /// empty, and all must have one graph (the same widths and members).
    pub fn start(
        model: &str,
        version: u64,
        replicas: Vec<Replica>,
        config: BatchConfig,
        metrics: Metrics,
    ) -> Result<Self, ServeError> {
        let first = replicas
            .first()
            .ok_or_else(|| ServeError::Internal("a version needs at least one replica".into()))?;
        let input_width = first.session.input_width();
        let output_width = first.session.output_width();
        let members: Vec<String> = first
            .session
            .members()
            .map(|(n, _)| n.to_string())
            .collect();
        for replica in &replicas {
            let names: Vec<&str> = replica.session.members().map(|(n, _)| n).collect();
            if replica.session.input_width() != input_width
                || replica.session.output_width() != output_width
                || names != members
            {
                return Err(ServeError::Internal(format!(
                    "replica '{}' of model '{model}' version {version} is not the same \
                     ensemble as replica '{}': expected input width {input_width}, output \
                     width {output_width}, members [{}]; got {}, {}, [{}]",
                    crate::error::excerpt(&replica.name),
                    crate::error::excerpt(&first.name),
                    members.join(", "),
                    replica.session.input_width(),
                    replica.session.output_width(),
                    names.join(", "),
                )));
            }
        }
        let capacity = config.queue_capacity.max(1);
        let config = BatchConfig {
            max_batch_size: config.max_batch_size.max(1),
            queue_capacity: capacity,
            ..config
        };
        let shared = Arc::new(Shared {
            model: model.to_string(),
            version,
            input_width,
            depth: AtomicUsize::new(0),
            gauge: Mutex::new(()),
            metrics,
        });
        let (tx, rx) = crossbeam_channel::bounded::<Pending>(capacity);
        // The replicas that are idle, longest idle first; all of them at the start.
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<usize>();
        let mut threads = Vec::new();
        let mut workers = Vec::new();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(|e| ServeError::Internal(format!("could not start a serving thread: {e}")))
        };
        for (index, replica) in replicas.into_iter().enumerate() {
            let (batch_tx, batch_rx) = crossbeam_channel::bounded::<Vec<Pending>>(1);
            let _ = ready_tx.send(index);
            shared
                .metrics
                .replica(model, version, &replica.name, 0, false);
            let shared = Arc::clone(&shared);
            let ready = ready_tx.clone();
            let thread = spawn(
                format!("serve-{model}-{version}-{}", replica.name),
                Box::new(move || shared.serve(replica, index, batch_rx, ready)),
            );
            // On an error, the threads already started end when their channels close.
            threads.push(thread?);
            workers.push(batch_tx);
        }
        drop(ready_tx);
        let dispatcher = Dispatcher {
            shared: Arc::clone(&shared),
            config,
            queue: rx,
            held: VecDeque::new(),
            ready: ready_rx,
            workers,
            last_batch: 0,
        };
        threads.push(spawn(
            format!("serve-{model}-{version}-batch"),
            Box::new(move || dispatcher.run()),
        )?);
        shared.metrics.queue_depth(model, version, 0);
        Ok(Self {
            model: model.to_string(),
            version,
            input_width,
            output_width,
            members,
            capacity,
            queue: RwLock::new(Some(tx)),
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// The version's input width.
    pub fn input_width(&self) -> usize {
        self.input_width
    }

    /// The version's output width (classes).
    pub fn output_width(&self) -> usize {
        self.output_width
    }

    /// The members' names, in the manifest's order.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// Requests taken and not yet running (queued, or in a batch being formed).
    pub fn queue_depth(&self) -> usize {
        self.shared.depth.load(Ordering::SeqCst)
    }

    /// Whether the batcher has stopped taking requests ([`Batcher::close`]).
    pub fn is_closed(&self) -> bool {
        self.queue.read().map_or(true, |queue| queue.is_none())
    }

    /// Queues a request. A wrong shape or quorum is 400; a full queue, or a version
    /// that has stopped taking requests, 503 — all at once, never waiting.
    pub fn submit(&self, request: InferRequest) -> Result<Reply, ServeError> {
        self.try_submit(request).map_err(|refused| refused.error)
    }

    /// As [`Batcher::submit`], and a refused request comes back with whether the
    /// batcher was closed (another version may take it) or full.
    pub fn try_submit(&self, request: InferRequest) -> Result<Reply, Box<Refused>> {
        if let Err(error) = self.check(&request) {
            return Err(Box::new(Refused {
                error,
                closed: false,
                request,
            }));
        }
        let Ok(queue) = self.queue.read() else {
            return Err(self.closed(request));
        };
        let Some(queue) = queue.as_ref() else {
            return Err(self.closed(request));
        };
        // Every request taken and not yet running counts against the capacity: those
        // in the channel and those the batching thread holds.
        if self.shared.depth.fetch_add(1, Ordering::SeqCst) >= self.capacity {
            self.shared.depth.fetch_sub(1, Ordering::SeqCst);
            return Err(self.full(request));
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            request,
            reply,
            queued: Instant::now(),
        };
        match queue.try_send(pending) {
            Ok(()) => {
                self.shared.depth_changed();
                Ok(answer)
            }
            Err(e) => {
                self.shared.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(p) => self.full(p.request),
                    TrySendError::Disconnected(p) => self.closed(p.request),
                })
            }
        }
    }

    /// What the run would refuse, refused now, with the engine's words.
    fn check(&self, request: &InferRequest) -> Result<(), ServeError> {
        let got = request.input.shape();
        if got.len() != 2 || got[1] != self.input_width {
            return Err(ServeError::BadRequest(format!(
                "input shape {got:?} does not fit model '{}' version {}: expected [rows, {}]",
                self.model, self.version, self.input_width
            )));
        }
        if got[0] == 0 {
            return Err(ServeError::BadRequest(Error::EmptyBatch.to_string()));
        }
        if let Some(q) = request.quorum {
            check_quorum(QuorumPolicy::Quorum(q), self.members.len())
                .map_err(|e| ServeError::BadRequest(e.to_string()))?;
        }
        Ok(())
    }

    fn closed(&self, request: InferRequest) -> Box<Refused> {
        Box::new(Refused {
            error: ServeError::Unavailable(format!(
                "model '{}' version {} is closed: it takes no more requests (being unloaded)",
                self.model, self.version
            )),
            closed: true,
            request,
        })
    }

    fn full(&self, request: InferRequest) -> Box<Refused> {
        Box::new(Refused {
            error: ServeError::Unavailable(format!(
                "model '{}' version {}: the queue is full ({} requests); try again later",
                self.model, self.version, self.capacity
            )),
            closed: false,
            request,
        })
    }

    /// Stops taking requests; those queued are still answered.
    pub fn close(&self) {
        match self.queue.write() {
            Ok(mut queue) => {
                queue.take();
            }
            Err(poisoned) => {
                poisoned.into_inner().take();
            }
        }
    }

    /// Closes, then waits until every queued request is answered and the threads have
    /// ended. A batch running waits for its run, which its requests' deadlines bound;
    /// [`Batcher::drain_timeout`] bounds the wait itself.
    pub fn drain(&self) {
        self.close();
        for thread in self.take_threads() {
            let _ = thread.join();
        }
    }

    /// As [`Batcher::drain`], waiting at most `limit`: `true` when everything was
    /// answered and the threads have ended; `false` when a run outlasted it (a member
    /// stuck in a run without deadline), and then the threads are left to end alone.
    pub fn drain_timeout(&self, limit: Duration) -> bool {
        self.close();
        let until = Instant::now().checked_add(limit);
        let threads = self.take_threads();
        while threads.iter().any(|t| !t.is_finished())
            && until.is_none_or(|until| Instant::now() < until)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut all = true;
        for thread in threads {
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                all = false;
            }
        }
        all
    }

    fn take_threads(&self) -> Vec<JoinHandle<()>> {
        match self.threads.lock() {
            Ok(mut threads) => std::mem::take(&mut *threads),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl Drop for Batcher {
    /// Closes without waiting: the threads answer what is queued and end on their own.
    fn drop(&mut self) {
        self.close();
    }
}

/// What the batching thread and the replica threads share.
struct Shared {
    model: String,
    version: u64,
    input_width: usize,
    /// Requests taken and not yet running.
    depth: AtomicUsize,
    /// Held while the depth gauge is set, so that the last setting is the last depth.
    gauge: Mutex<()>,
    metrics: Metrics,
}

impl Shared {
    fn depth_changed(&self) {
        let _one_at_a_time = self.gauge.lock().unwrap_or_else(|e| e.into_inner());
        self.metrics
            .queue_depth(&self.model, self.version, self.depth.load(Ordering::SeqCst));
    }

    fn leave_queue(&self, n: usize) {
        if n > 0 {
            // Never below zero: every request counted in was counted once.
            let _ = self
                .depth
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                    Some(d.saturating_sub(n))
                });
            self.depth_changed();
        }
    }

    /// `Some(p)` when `p` is still to be run; otherwise it has left the queue (its
    /// client gone, or answered 504 for a deadline passed).
    fn admit(&self, p: Pending) -> Option<Pending> {
        if p.reply.is_closed() {
            self.leave_queue(1);
            self.metrics
                .dropped(&self.model, self.version, Dropped::Cancelled);
            return None;
        }
        if p.request.deadline().is_some_and(|d| d <= Instant::now()) {
            self.leave_queue(1);
            self.metrics
                .dropped(&self.model, self.version, Dropped::Expired);
            let _ = p.reply.send(Err(ServeError::DeadlineExceeded(format!(
                "model '{}' version {}: the request's deadline ({} µs) passed while it was \
                 queued; it was not run",
                self.model,
                self.version,
                p.request.timeout.unwrap_or_default().as_micros()
            ))));
            return None;
        }
        Some(p)
    }

    /// A replica's thread: runs the batches it is given, one at a time, and says when
    /// it is idle again.
    fn serve(
        self: Arc<Self>,
        replica: Replica,
        index: usize,
        batches: Receiver<Vec<Pending>>,
        ready: Sender<usize>,
    ) {
        for batch in batches.iter() {
            self.run_batch(&replica, batch);
            if ready.send(index).is_err() {
                break;
            }
        }
    }

    fn run_batch(&self, replica: &Replica, batch: Vec<Pending>) {
        // Clients may have gone, or deadlines passed, while the batch was formed.
        let batch: Vec<Pending> = batch.into_iter().filter_map(|p| self.admit(p)).collect();
        let Some(first) = batch.first() else {
            return;
        };
        let key = RunKey::of(&first.request);
        self.leave_queue(batch.len());
        let rows: Vec<usize> = batch.iter().map(Pending::rows).collect();
        let total: usize = rows.iter().sum();
        for p in &batch {
            self.metrics
                .queue_time(&self.model, self.version, p.queued.elapsed());
        }
        // The measures when any request asks: they are per row, so each request's rows
        // of them are what it gets alone, and the others pay only the members' outputs
        // being read back for this run.
        let uncertainty = batch.iter().any(|p| p.request.want_uncertainty);
        let mut options = RunOptions::default()
            .member_outputs(key.want_members)
            .uncertainty(uncertainty);
        if let Some(n) = key.quorum {
            options = options.quorum(QuorumPolicy::Quorum(n));
        }
        if let Some(earliest) = batch.iter().filter_map(|p| p.request.deadline()).min() {
            options = options.timeout(earliest.saturating_duration_since(Instant::now()));
        }
        self.metrics
            .batch(&self.model, self.version, batch.len(), total);
        self.metrics
            .replica(&self.model, self.version, &replica.name, 1, true);
        self.metrics
            .replica_requests(&self.model, self.version, &replica.name, batch.len());
        let started = Instant::now();
        let result = match self.merge(&batch, total) {
            Ok(input) => catch_unwind(AssertUnwindSafe(|| {
                replica
                    .session
                    .run(input.as_ref().unwrap_or(&first.request.input), &options)
            }))
            .unwrap_or_else(|_| {
                Err(Error::WorkerFailed {
                    device: replica.name.clone(),
                    message: "the run panicked".into(),
                })
            })
            .map_err(|e| {
                self.count_members(&e);
                self.error(e)
            }),
            Err(e) => Err(e),
        };
        self.metrics
            .compute_time(&self.model, self.version, started.elapsed());
        self.metrics
            .replica(&self.model, self.version, &replica.name, 0, false);
        self.metrics
            .replica_requests(&self.model, self.version, &replica.name, 0);
        match result {
            Ok(out) => {
                self.metrics.inferred(&self.model, self.version, total);
                self.answer(batch, &rows, out)
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// The batch's rows as one input; `None` for a batch of one request (its own
    /// input is run as it is).
    fn merge(&self, batch: &[Pending], total: usize) -> Result<Option<Tensor>, ServeError> {
        if batch.len() == 1 {
            return Ok(None);
        }
        let len = total.saturating_mul(self.input_width);
        let mut data: Vec<f32> = Vec::new();
        data.try_reserve_exact(len).map_err(|_| {
            ServeError::Internal(format!(
                "could not allocate a batch of {total} rows of {} values",
                self.input_width
            ))
        })?;
        for p in batch {
            data.extend_from_slice(p.request.input.as_slice());
        }
        Tensor::matrix(total, self.input_width, data)
            .map(Some)
            .map_err(|e| ServeError::Internal(format!("could not merge a batch: {e}")))
    }

    /// Splits a batch's output by rows, one answer per request.
    fn answer(&self, batch: Vec<Pending>, rows: &[usize], out: RunOutput) {
        let mut states = Vec::with_capacity(out.members.len());
        for report in &out.members {
            let state = match &report.status {
                MemberStatus::Finished => MemberState::Finished,
                MemberStatus::Late => MemberState::Late,
                MemberStatus::Failed(e) => MemberState::Failed(e.to_string()),
            };
            let outcome = match state {
                MemberState::Finished => MemberOutcome::Finished(report.elapsed),
                MemberState::Late => MemberOutcome::Late,
                MemberState::Failed(_) => MemberOutcome::Failed,
            };
            self.metrics
                .member(&self.model, self.version, &report.name, outcome);
            states.push(state);
        }
        let degraded = states.iter().any(|s| *s != MemberState::Finished);
        if degraded {
            self.metrics
                .degraded(&self.model, self.version, batch.len());
        }
        if batch.len() == 1 {
            // Alone: the run's tensors are the answer, uncopied.
            if let Some(p) = batch.into_iter().next() {
                let uncertainty = match self.uncertainty(&p.request, out.uncertainty) {
                    Ok(u) => u,
                    Err(e) => {
                        let _ = p.reply.send(Err(e));
                        return;
                    }
                };
                let members = out
                    .members
                    .into_iter()
                    .zip(states)
                    .map(|(report, state)| MemberAnswer {
                        name: report.name,
                        state,
                        output: report.output,
                    })
                    .collect();
                let _ = p.reply.send(Ok(InferAnswer {
                    model: self.model.clone(),
                    version: self.version,
                    output: out.aggregate,
                    members,
                    uncertainty,
                    stacked: out.stacked,
                }));
            }
            return;
        }
        let mut start = 0;
        for (p, &n) in batch.into_iter().zip(rows) {
            let range = start..start + n;
            start += n;
            let answer = self.split(&out, &states, range, p.request.want_uncertainty);
            let _ = p.reply.send(answer);
        }
    }

    /// A request's measures: the run's when it asked for them (an error when the run
    /// has none, which a run with [`RunOptions::uncertainty`] that succeeded always
    /// has), `None` when it did not ask.
    fn uncertainty(
        &self,
        request: &InferRequest,
        measured: Option<Uncertainty>,
    ) -> Result<Option<Uncertainty>, ServeError> {
        if !request.want_uncertainty {
            return Ok(None);
        }
        measured.map(Some).ok_or_else(|| self.no_measures())
    }

    fn no_measures(&self) -> ServeError {
        ServeError::Internal(format!(
            "model '{}' version {}: the run returned no uncertainty measures",
            self.model, self.version
        ))
    }

    /// One request's rows of a batch's output; the measures' rows too when it asked
    /// for them.
    fn split(
        &self,
        out: &RunOutput,
        states: &[MemberState],
        range: std::ops::Range<usize>,
        want_uncertainty: bool,
    ) -> Answer {
        let output = slice_rows(&out.aggregate, range.clone())?;
        let uncertainty = if want_uncertainty {
            let all = out.uncertainty.as_ref().ok_or_else(|| self.no_measures())?;
            Some(slice_uncertainty(all, range.clone())?)
        } else {
            None
        };
        let mut members = Vec::with_capacity(out.members.len());
        for (report, state) in out.members.iter().zip(states) {
            let output = match &report.output {
                Some(t) => Some(slice_rows(t, range.clone())?),
                None => None,
            };
            members.push(MemberAnswer {
                name: report.name.clone(),
                state: state.clone(),
                output,
            });
        }
        Ok(InferAnswer {
            model: self.model.clone(),
            version: self.version,
            output,
            members,
            uncertainty,
            stacked: out.stacked,
        })
    }

    /// Counts the members a failed run's error names: late at a missed deadline, or
    /// failed by fault injection.
    fn count_members(&self, e: &Error) {
        match e {
            Error::DeadlineExceeded { missing, .. } => {
                for member in missing {
                    self.metrics
                        .member(&self.model, self.version, member, MemberOutcome::Late);
                }
            }
            Error::InjectedFault { member, .. } => {
                self.metrics
                    .member(&self.model, self.version, member, MemberOutcome::Failed);
            }
            _ => {}
        }
    }

    /// An engine error as the protocols report it.
    fn error(&self, e: Error) -> ServeError {
        match e {
            Error::DeadlineExceeded { .. } | Error::QuorumNotMet { .. } => {
                ServeError::DeadlineExceeded(e.to_string())
            }
            Error::InvalidQuorum { .. }
            | Error::Rank { .. }
            | Error::FeatureWidth { .. }
            | Error::TensorData { .. }
            | Error::EmptyBatch => ServeError::BadRequest(e.to_string()),
            other => ServeError::Internal(other.to_string()),
        }
    }
}

/// The rows `range` of a `[rows, cols]` tensor.
fn slice_rows(tensor: &Tensor, range: std::ops::Range<usize>) -> Result<Tensor, ServeError> {
    let shape = tensor.shape();
    let sliced = shape.get(1).and_then(|&cols| {
        let data = tensor
            .as_slice()
            .get(range.start * cols..range.end * cols)?;
        Tensor::matrix(range.len(), cols, data.to_vec()).ok()
    });
    sliced.ok_or_else(|| {
        ServeError::Internal(format!(
            "a batch's output of shape {shape:?} has no rows {}..{}",
            range.start, range.end
        ))
    })
}

/// The rows `range` of every measure.
fn slice_uncertainty(
    all: &Uncertainty,
    range: std::ops::Range<usize>,
) -> Result<Uncertainty, ServeError> {
    let rows = |v: &[f32], what: &str| {
        v.get(range.clone()).map(<[f32]>::to_vec).ok_or_else(|| {
            ServeError::Internal(format!(
                "a batch's {what} of {} rows has no rows {}..{}",
                v.len(),
                range.start,
                range.end
            ))
        })
    };
    Ok(Uncertainty {
        entropy: rows(&all.entropy, "entropy")?,
        expected_entropy: rows(&all.expected_entropy, "expected entropy")?,
        mutual_information: rows(&all.mutual_information, "mutual information")?,
        disagreement: rows(&all.disagreement, "disagreement")?,
        variance: slice_rows(&all.variance, range)?,
    })
}

/// A batch being formed.
struct Forming {
    key: RunKey,
    requests: Vec<Pending>,
    rows: usize,
    /// The earliest deadline: the batch's run's.
    earliest: Option<Instant>,
    /// The latest that any request's slack allows the run's deadline to be moved to:
    /// the batch's deadline must not come before it.
    floor: Option<Instant>,
}

/// Whether a request may join a batch.
enum Fit {
    Joins,
    /// It may run with the batch, but its rows would overflow it.
    TooLarge,
    /// Other options or a deadline too far apart.
    Differs,
}

/// How much earlier than its own deadline a request may be run under: the larger of
/// the queue delay and a tenth of its timeout.
fn slack(request: &InferRequest, window: Duration) -> Duration {
    window.max(request.timeout.unwrap_or_default() / 10)
}

impl Forming {
    fn new(first: Pending, window: Duration) -> Self {
        let deadline = first.request.deadline();
        let floor = deadline.map(|d| d.checked_sub(slack(&first.request, window)).unwrap_or(d));
        Self {
            key: RunKey::of(&first.request),
            rows: first.rows(),
            requests: vec![first],
            earliest: deadline,
            floor,
        }
    }

    fn fit(&self, p: &Pending, max_rows: usize, window: Duration) -> Fit {
        if RunKey::of(&p.request) != self.key {
            return Fit::Differs;
        }
        if let (Some(d), Some(earliest), Some(floor)) =
            (p.request.deadline(), self.earliest, self.floor)
        {
            let own = d.checked_sub(slack(&p.request, window)).unwrap_or(d);
            if earliest.min(d) < floor.max(own) {
                return Fit::Differs;
            }
        }
        if self.rows.saturating_add(p.rows()) > max_rows {
            return Fit::TooLarge;
        }
        Fit::Joins
    }

    fn push(&mut self, p: Pending, window: Duration) {
        if let Some(d) = p.request.deadline() {
            let own = d.checked_sub(slack(&p.request, window)).unwrap_or(d);
            self.earliest = Some(self.earliest.map_or(d, |e| e.min(d)));
            self.floor = Some(self.floor.map_or(own, |f| f.max(own)));
        }
        self.rows = self.rows.saturating_add(p.rows());
        self.requests.push(p);
    }
}

/// The batching thread.
struct Dispatcher {
    shared: Arc<Shared>,
    config: BatchConfig,
    queue: Receiver<Pending>,
    /// Requests taken from the queue that did not fit the batch formed then, oldest
    /// first; they count in the queue's depth.
    held: VecDeque<Pending>,
    /// Idle replicas, longest idle first.
    ready: Receiver<usize>,
    workers: Vec<Sender<Vec<Pending>>>,
    /// How many requests the last batch merged.
    last_batch: usize,
}

impl Dispatcher {
    fn run(mut self) {
        while let Ok(replica) = self.ready.recv() {
            let Some(batch) = self.next_batch() else {
                // Closed and empty: the replicas end when their channels close.
                return;
            };
            match self.workers.get(replica).map(|w| w.send(batch)) {
                Some(Ok(())) => {}
                // Its thread has ended: the next idle replica takes this batch.
                Some(Err(e)) => self.held_front(e.into_inner()),
                None => return,
            }
        }
        // Every replica's thread has ended: nothing can answer what is queued.
        let error = ServeError::Internal(format!(
            "model '{}' version {}: no replica is left to run the request",
            self.shared.model, self.shared.version
        ));
        let left: Vec<Pending> = self.held.drain(..).chain(self.queue.try_iter()).collect();
        self.shared.leave_queue(left.len());
        for p in left {
            let _ = p.reply.send(Err(error.clone()));
        }
    }

    fn held_front(&mut self, batch: Vec<Pending>) {
        for p in batch.into_iter().rev() {
            self.held.push_front(p);
        }
    }

    /// The next batch to run, or `None` once the queue is closed and empty.
    fn next_batch(&mut self) -> Option<Vec<Pending>> {
        let max_rows = self.config.max_batch_size;
        let window = self.config.max_queue_delay;
        let first = loop {
            let p = match self.held.pop_front() {
                Some(p) => p,
                None => self.queue.recv().ok()?,
            };
            if let Some(p) = self.shared.admit(p) {
                break p;
            }
        };
        // A lone client is not delayed: the first request waits for others only when
        // there are others — some already waiting, or the last batch merged several.
        let others = self.last_batch > 1 || !self.held.is_empty() || !self.queue.is_empty();
        let until = if others {
            first.queued.checked_add(window)
        } else {
            None
        };
        let mut batch = Forming::new(first, window);
        // The oldest first: those held back from earlier batches.
        let mut i = 0;
        while i < self.held.len() && batch.rows < max_rows {
            match self.held.get(i).map(|p| batch.fit(p, max_rows, window)) {
                Some(Fit::Joins) => {
                    if let Some(p) = self.held.remove(i).and_then(|p| self.shared.admit(p)) {
                        batch.push(p, window);
                    }
                }
                Some(Fit::TooLarge) => return Some(batch.requests),
                _ => i += 1,
            }
        }
        // Then the queue, until the first request has waited its delay; what is
        // already queued then joins too.
        let mut open = true;
        while batch.rows < max_rows && open {
            let next = match until {
                Some(until) if Instant::now() < until => match self.queue.recv_deadline(until) {
                    Ok(p) => Some(p),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => None,
                },
                _ => match self.queue.try_recv() {
                    Ok(p) => Some(p),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => None,
                },
            };
            let Some(p) = next else {
                // Closed: what is queued runs now.
                open = false;
                continue;
            };
            let Some(p) = self.shared.admit(p) else {
                continue;
            };
            match batch.fit(&p, max_rows, window) {
                Fit::Joins => batch.push(p, window),
                Fit::TooLarge => {
                    self.held.push_back(p);
                    break;
                }
                Fit::Differs => self.held.push_back(p),
            }
        }
        self.last_batch = batch.requests.len();
        Some(batch.requests)
    }
}
