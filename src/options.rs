//! The options of a session and of one run: [`SessionOptions`], [`RunOptions`],
//! [`QuorumPolicy`].

use std::path::PathBuf;
use std::time::Duration;

use crate::fault::FaultPlan;
use crate::precision::Precision;
use crate::tile::{CoopShape, TileConfig};

/// Session-wide settings, fixed when the session is built.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionOptions {
    /// Bounds every wait on a device, like TensorFlow's
    /// `ConfigProto.operation_timeout_in_ms`: a submission not finished in this time
    /// fails with [`Error::OperationTimeout`](crate::Error::OperationTimeout). Default: 60 s.
    pub operation_timeout: Duration,
    /// How long a thread polls before it sleeps, wherever a run waits: a device's
    /// worker for its submission to finish (before sleeping on the driver's fence) and
    /// for the next job after one (a stream of runs), and [`Session::run`](crate::Session::run) for the
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
    /// queries ([`MemberReport::device_time`](crate::MemberReport::device_time)): the time from the start of its first
    /// dispatch to the end of its last, without the upload, the submission, the wait
    /// or the readback, which [`MemberReport::elapsed`](crate::MemberReport::elapsed) includes. Needs
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
    /// faster (on lavapipe: benches/results/cpu-2026-11-26/NOTES.md).
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
    /// member late at the deadline gives [`Error::DeadlineExceeded`](crate::Error::DeadlineExceeded).
    #[default]
    RequireAll,
    /// At least this many members: the aggregate is taken over the members that
    /// finished before the deadline (weighted aggregates renormalise their weights over
    /// them), and each member's [`MemberStatus`](crate::MemberStatus) says what happened to it. Fewer gives
    /// [`Error::QuorumNotMet`](crate::Error::QuorumNotMet) naming the missing members and why.
    Quorum(usize),
}

/// Options of one [`Session::run`](crate::Session::run).
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
    /// Also return how much the members that answered disagree
    /// ([`RunOutput::uncertainty`](crate::RunOutput::uncertainty): entropy, expected
    /// entropy, mutual information, disagreement, variance), from statistics each
    /// device computes where its members' outputs are: [`Session::run`] and
    /// [`Session::run_device`].
    ///
    /// [`Session::run`]: crate::Session::run
    /// [`Session::run_device`]: crate::Session::run_device
    pub uncertainty: bool,
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

    /// Sets [`RunOptions::uncertainty`].
    pub fn uncertainty(mut self, yes: bool) -> Self {
        self.uncertainty = yes;
        self
    }
}
