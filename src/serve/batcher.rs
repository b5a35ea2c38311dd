//! One model version's queue and the replicas that answer it.
//!
//! Requests wait in a bounded queue (full: 503 at once). Each replica is a thread that
//! takes the next request and runs it as one `Session::run`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use super::metrics::{MemberOutcome, Metrics};
use super::types::{InferAnswer, InferRequest, MemberAnswer, MemberState, ServeError};
use crate::error::Error;
use crate::options::{QuorumPolicy, RunOptions};
use crate::report::MemberStatus;
use crate::session::Session;
use crate::tensor::Tensor;

/// How a version's requests are queued and merged.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// The most rows one batch run holds.
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for others to join it.
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

/// Where a request's answer goes.
pub type Reply = oneshot::Receiver<Result<InferAnswer, ServeError>>;

struct Pending {
    request: InferRequest,
    reply: oneshot::Sender<Result<InferAnswer, ServeError>>,
}

/// A version's queue and replica threads.
pub struct Batcher {
    model: String,
    version: u64,
    input_width: usize,
    output_width: usize,
    members: Vec<String>,
    queue: Mutex<Option<Sender<Pending>>>,
    depth: Arc<AtomicUsize>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    metrics: Metrics,
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
    /// Starts a thread per replica. `replicas` must not be empty, and all must have
    /// one graph (the same widths and members).
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
        let (tx, rx) = crossbeam_channel::bounded::<Pending>(config.queue_capacity.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for replica in replicas {
            let rx = rx.clone();
            let context = Context {
                model: model.to_string(),
                version,
                depth: Arc::clone(&depth),
                metrics: metrics.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("serve-{model}-{version}-{}", replica.name))
                .spawn(move || context.serve(replica, rx))
                .map_err(|e| {
                    ServeError::Internal(format!("could not start a replica thread: {e}"))
                })?;
            threads.push(thread);
        }
        Ok(Self {
            model: model.to_string(),
            version,
            input_width,
            output_width,
            members,
            queue: Mutex::new(Some(tx)),
            depth,
            threads: Mutex::new(threads),
            metrics,
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

    /// Queues a request. A wrong width is 400; a full queue, or a version that has
    /// stopped taking requests, 503 — both at once.
    pub fn submit(&self, request: InferRequest) -> Result<Reply, ServeError> {
        let got = request.input.shape();
        if got.len() != 2 || got[1] != self.input_width {
            return Err(ServeError::BadRequest(format!(
                "input shape {got:?} does not fit model '{}' version {}: expected [rows, {}]",
                self.model, self.version, self.input_width
            )));
        }
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.lock().map_err(|_| self.stopped())?;
        let Some(queue) = queue.as_ref() else {
            return Err(self.stopped());
        };
        self.depth.fetch_add(1, Ordering::SeqCst);
        match queue.try_send(Pending { request, reply }) {
            Ok(()) => {
                self.metrics.queue_depth(
                    &self.model,
                    self.version,
                    self.depth.load(Ordering::SeqCst),
                );
                Ok(answer)
            }
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => ServeError::Unavailable(format!(
                        "model '{}' version {}: the queue is full; try again later",
                        self.model, self.version
                    )),
                    TrySendError::Disconnected(_) => self.stopped(),
                })
            }
        }
    }

    fn stopped(&self) -> ServeError {
        ServeError::Unavailable(format!(
            "model '{}' version {} is being unloaded",
            self.model, self.version
        ))
    }

    /// Stops taking requests; those queued are still answered.
    pub fn close(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.take();
        }
    }

    /// Closes, then waits until every queued request is answered and the replicas'
    /// threads have ended.
    pub fn drain(&self) {
        self.close();
        let threads = match self.threads.lock() {
            Ok(mut threads) => std::mem::take(&mut *threads),
            Err(_) => Vec::new(),
        };
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.drain();
    }
}

/// What a replica thread needs besides its session.
struct Context {
    model: String,
    version: u64,
    depth: Arc<AtomicUsize>,
    metrics: Metrics,
}

impl Context {
    fn serve(self, replica: Replica, queue: Receiver<Pending>) {
        let in_flight = AtomicUsize::new(0);
        for pending in queue.iter() {
            let depth = self.depth.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
            self.metrics.queue_depth(&self.model, self.version, depth);
            if pending.reply.is_closed() {
                continue; // the client has gone
            }
            let request = pending.request;
            if request.deadline().is_some_and(|d| d <= Instant::now()) {
                let _ = pending.reply.send(Err(ServeError::DeadlineExceeded(format!(
                    "model '{}' version {}: the request's deadline passed while it was queued",
                    self.model, self.version
                ))));
                continue;
            }
            self.metrics
                .queue_time(&self.model, self.version, request.received.elapsed());
            in_flight.fetch_add(1, Ordering::SeqCst);
            self.metrics
                .replica(&self.model, self.version, &replica.name, 1, true);
            let answer = self.run(&replica.session, &request);
            in_flight.fetch_sub(1, Ordering::SeqCst);
            self.metrics
                .replica(&self.model, self.version, &replica.name, 0, false);
            let _ = pending.reply.send(answer);
        }
    }

    fn run(&self, session: &Session, request: &InferRequest) -> Result<InferAnswer, ServeError> {
        let mut options = RunOptions::default().member_outputs(request.want_members);
        if let Some(deadline) = request.deadline() {
            options = options.timeout(deadline.saturating_duration_since(Instant::now()));
        }
        if let Some(n) = request.quorum {
            options = options.quorum(QuorumPolicy::Quorum(n));
        }
        let out = session
            .run(&request.input, &options)
            .map_err(|e| self.error(e))?;
        let members = out
            .members
            .into_iter()
            .map(|report| {
                let state = match &report.status {
                    MemberStatus::Finished => MemberState::Finished,
                    MemberStatus::Late => MemberState::Late,
                    MemberStatus::Failed(e) => MemberState::Failed(e.to_string()),
                    #[allow(unreachable_patterns)]
                    _ => MemberState::Failed("unknown status".to_string()),
                };
                let outcome = match state {
                    MemberState::Finished => MemberOutcome::Finished(report.elapsed),
                    MemberState::Late => MemberOutcome::Late,
                    MemberState::Failed(_) => MemberOutcome::Failed,
                };
                self.metrics
                    .member(&self.model, self.version, &report.name, outcome);
                MemberAnswer {
                    name: report.name,
                    state,
                    output: report.output,
                }
            })
            .collect();
        Ok(InferAnswer {
            model: self.model.clone(),
            version: self.version,
            output: out.aggregate,
            members,
        })
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
#[allow(dead_code)]
pub(crate) fn rows(tensor: &Tensor, range: std::ops::Range<usize>) -> Option<Tensor> {
    let cols = *tensor.shape().get(1)?;
    let data = tensor
        .as_slice()
        .get(range.start * cols..range.end * cols)?;
    Tensor::matrix(range.len(), cols, data.to_vec()).ok()
}
