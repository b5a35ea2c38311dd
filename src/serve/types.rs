//! What the protocols hand the engine and get back: a request of rows, its answer, the
//! errors a request can meet (each with its HTTP status), and how a request names a
//! version.

use std::time::{Duration, Instant};

use crate::tensor::Tensor;
use crate::uncertainty::Uncertainty;

/// One request's rows and run parameters, as the protocols decoded them.
#[derive(Debug)]
pub struct InferRequest {
    /// `[rows, input_width]` (checked against the version's width by the batcher).
    pub input: Tensor,
    /// The run's deadline, measured from `received` (KServe's `timeout` parameter, in
    /// microseconds on the wire).
    pub timeout: Option<Duration>,
    /// `Some(n)`: the answer may leave out members, as long as `n` answered.
    pub quorum: Option<usize>,
    /// Also return every member's own output (`members` in KServe's outputs).
    pub want_members: bool,
    /// Also return the measures of the members' disagreement ([`Uncertainty`]: KServe's
    /// outputs `entropy`, `expected_entropy`, `mutual_information`, `disagreement` and
    /// `variance`). Requests that differ in it still merge: a batch runs with
    /// [`RunOptions::uncertainty`](crate::RunOptions::uncertainty) when any of its
    /// requests asks, and only those get the measures.
    pub want_uncertainty: bool,
    /// When the server received it: queue time and the deadline count from here.
    pub received: Instant,
}

impl InferRequest {
    /// A request of `input` received now, with no deadline, no quorum, no member outputs,
    /// no uncertainty measures.
    pub fn new(input: Tensor) -> Self {
        Self {
            input,
            timeout: None,
            quorum: None,
            want_members: false,
            want_uncertainty: false,
            received: Instant::now(),
        }
    }

    /// When its deadline passes, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.timeout.and_then(|t| self.received.checked_add(t))
    }
}

/// What happened to one member in the run that answered a request.
#[derive(Clone, Debug, PartialEq)]
pub enum MemberState {
    /// It answered; its output is in the aggregate.
    Finished,
    /// It had not answered at the deadline.
    Late,
    /// It failed, with the error's message.
    Failed(String),
}

/// One member's part in an answer.
#[derive(Clone, Debug)]
pub struct MemberAnswer {
    /// The member's name.
    pub name: String,
    /// Finished, late or failed.
    pub state: MemberState,
    /// Its `[rows, classes]` output for this request's rows, when asked for and finished.
    pub output: Option<Tensor>,
}

/// The answer to one request.
#[derive(Clone, Debug)]
pub struct InferAnswer {
    /// The model's name.
    pub model: String,
    /// The version that answered.
    pub version: u64,
    /// The aggregate, `[rows, classes]`.
    pub output: Tensor,
    /// Every member, in the manifest's order.
    pub members: Vec<MemberAnswer>,
    /// The measures of the members' disagreement over this request's rows, when it
    /// asked for them ([`InferRequest::want_uncertainty`]); `None` otherwise.
    pub uncertainty: Option<Uncertainty>,
    /// For a model whose aggregate is a stack: whether its blender made the answer
    /// (`Some(false)`: members were missing under a quorum, and the answer is the mean
    /// of those present), as [`RunOutput::stacked`](crate::RunOutput::stacked) says;
    /// `None` for other aggregates.
    pub stacked: Option<bool>,
}

impl InferAnswer {
    /// The members that are not in the aggregate, with why.
    pub fn missing(&self) -> impl Iterator<Item = &MemberAnswer> {
        self.members
            .iter()
            .filter(|m| m.state != MemberState::Finished)
    }
}

/// How a request names the version it wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionSelector {
    /// The model's default: the highest version served.
    Default,
    /// A version number.
    Number(u64),
    /// A label of the model's `config.toml` (`labels = { stable = 3 }`).
    Label(String),
}

/// Why a request was not answered, with the HTTP status each protocol gives it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Malformed JSON, a wrong datatype, shape or width, a NaN: 400.
    #[error("{0}")]
    BadRequest(String),
    /// An unknown model, version or label: 404.
    #[error("{0}")]
    NotFound(String),
    /// A body over the limit: 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A body not received in time: 408.
    #[error("{0}")]
    RequestTimeout(String),
    /// The queue is full, the version is not ready, or the server is stopping: 503.
    #[error("{0}")]
    Unavailable(String),
    /// The deadline passed without a quorum: 504, naming the missing members.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The engine failed in a way the request did not cause: 500.
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ServeError::BadRequest(_) => 400,
            ServeError::NotFound(_) => 404,
            ServeError::PayloadTooLarge(_) => 413,
            ServeError::RequestTimeout(_) => 408,
            ServeError::Unavailable(_) => 503,
            ServeError::DeadlineExceeded(_) => 504,
            ServeError::Internal(_) => 500,
        }
    }

    /// The outcome label of the requests metric (`bad_request`, `not_found`, ...).
    pub fn outcome(&self) -> &'static str {
        match self {
            ServeError::BadRequest(_) => "bad_request",
            ServeError::NotFound(_) => "not_found",
            ServeError::PayloadTooLarge(_) => "too_large",
            ServeError::RequestTimeout(_) => "request_timeout",
            ServeError::Unavailable(_) => "unavailable",
            ServeError::DeadlineExceeded(_) => "deadline_exceeded",
            ServeError::Internal(_) => "internal",
        }
    }
}
