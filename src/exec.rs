//! The executor contract: what the runtime asks of a backend (the CPU, a wgpu device)
//! for the members placed on one device, and what it gets back.
//!
//! An [`Executor`] owns its members' weights in the form its device wants them (packed
//! for the GEMM crates, uploaded into stacked GPU buffers) and runs them on a batch
//! into one partial aggregate, so that only that partial sum (and the members' own
//! outputs, when asked) crosses back to the aggregate node. The runtime drives it from
//! one worker thread per device (`runtime/`), injects faults through it and catches
//! its panics; nothing here knows about sessions, pipelines or quorum.
//!
//! Training adds to this trait next: a forward pass that keeps the activations, a
//! backward pass into gradients held on the device, and an optimizer step — each
//! implemented by both backends, as [`Executor::run`] is.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device_tensor::{DeviceCopy, DeviceTensor};
use crate::error::{Error, Result};
use crate::model::{Dense, Model};
use crate::tensor::Tensor;
use crate::uncertainty::Moments;

/// What an executor is given for one member.
#[derive(Clone)]
pub(crate) struct MemberSpec {
    /// The member's index in the graph.
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) model: Arc<Model>,
    /// Its aggregate weight.
    pub(crate) weight: f32,
    /// With an [`Aggregate::Stack`](crate::Aggregate::Stack): the member's share of the
    /// blender's first layer (its columns of the weight, `[hidden, output_width]`,
    /// linear, no bias), which the executor applies to the member's output where it
    /// is ([`DeviceOutput::blend`]).
    pub(crate) blend: Option<Arc<Dense>>,
    /// The member's index of `model`'s first layer: 0, but for a piece of a member
    /// split by layers or columns, whose errors name the member's own layers.
    pub(crate) first_layer: usize,
}

/// What a job asks an executor for besides the partial aggregate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Wants {
    /// Every member's own output ([`DeviceOutput::members`]).
    pub(crate) members: bool,
    /// The uncertainty measures' statistics over the members that ran
    /// ([`DeviceOutput::moments`]), computed where their outputs are.
    pub(crate) moments: bool,
}

/// What an executor sends back: the weighted sum (or vote counts) of the members that
/// ran, which they were, which failed, and their own outputs and the uncertainty
/// statistics when asked.
pub(crate) struct DeviceOutput {
    /// `[rows, output_width]`: Σ weight · output (or weight · one-hot vote) over the
    /// members in `present`.
    pub(crate) partial: Vec<f32>,
    /// Each member's own `[rows, output_width]` output, with its graph index, when
    /// asked for.
    pub(crate) members: Vec<(usize, Vec<f32>)>,
    /// `[rows, hidden]`: Σ over the members in `present` of their output times their
    /// share of a stack's blender's first layer (empty without a blender).
    pub(crate) blend: Vec<f32>,
    /// When asked for: the statistics of the members in `present`, in groups (one per
    /// stack of a GPU device), each `[rows, moments_width]` with its weight.
    pub(crate) moments: Vec<Moments>,
    /// The graph indices of the members in `partial`.
    pub(crate) present: Vec<usize>,
    /// Members that failed this job (filled in by the runtime).
    pub(crate) failed: Vec<(usize, Error)>,
    /// Wall time of the device's work.
    pub(crate) elapsed: Duration,
    /// The device's time for the kernels (timestamp queries), when measured.
    pub(crate) device_time: Option<Duration>,
}

/// What [`Executor::lose_device`] did.
pub(crate) enum Loss {
    /// The device was destroyed: the job fails with this error when there is one (the
    /// next job recreates the device); with none, the job goes on.
    Device(Option<Error>),
    /// There is no device to lose (the host CPU): the member the fault names fails this
    /// job as an injected fault, the executor's other members as members of a lost
    /// device do (the runtime says so).
    NoDevice,
}

/// Runs the members placed on one device.
pub(crate) trait Executor: Send {
    /// Runs every member except the graph members in `skip` on `input` (`[rows,
    /// input_width]`, validated by the caller) into one partial aggregate; each
    /// member's own output and the uncertainty statistics too when `wants` says.
    fn run(&mut self, input: &Tensor, wants: Wants, skip: &[usize]) -> Result<DeviceOutput>;

    /// [`Executor::run`] on a [`DeviceTensor`] (`[rows, input_width]`, validated by
    /// the caller): a backend reads its own device's copy without an upload. With
    /// `keep_output`, a backend that can returns the aggregate itself (the partial
    /// divided by the aggregate weight of the members present: the final weighted
    /// mean) as a copy on its device, and `DeviceOutput::partial` is then empty.
    ///
    /// By default (the host CPU): the tensor's values on the host (its host copy, or
    /// one readback), run as [`Executor::run`] does, nothing kept on a device.
    fn run_resident(
        &mut self,
        input: &DeviceTensor,
        wants: Wants,
        skip: &[usize],
        keep_output: bool,
    ) -> Result<(DeviceOutput, Option<Arc<dyn DeviceCopy>>)> {
        let _ = keep_output;
        let host = input.to_host()?;
        Ok((self.run(&host, wants, skip)?, None))
    }

    /// A copy of `input` on the executor's device, `None` where there is no device
    /// (the host CPU, the default).
    fn upload(&mut self, input: &Tensor) -> Result<Option<Arc<dyn DeviceCopy>>> {
        let _ = input;
        Ok(None)
    }

    /// Fault injection: destroys the device as a driver reset would; with
    /// `permanently`, recreating it fails from then on.
    fn lose_device(&mut self, permanently: bool) -> Loss;

    /// [`Executor::lose_device`] for the device of part `part` of a member split
    /// across devices; an executor of one device has only part 0 (the default: its
    /// device, whatever `part` says).
    fn lose_part_device(&mut self, part: usize, permanently: bool) -> Loss {
        let _ = part;
        self.lose_device(permanently)
    }

    /// Drops what a failed or interrupted run may have left in use (buffers still
    /// mapped or in flight); the next run makes them again.
    fn reset(&mut self);

    /// Where a run changes nothing the executor holds and waits on no device (the host
    /// CPU): a maker of handles on it, each an executor of its own that runs on any
    /// thread at the same time as the others and the original, so that a caller can
    /// run a job on its own thread with no lock held while it runs. `None` (the
    /// default) for an executor with state of its own (a GPU's buffers).
    fn concurrent(&self) -> Option<Handles> {
        None
    }
}

/// Makes handles on one executor ([`Executor::concurrent`]).
pub(crate) type Handles = Arc<dyn Fn() -> Box<dyn Executor> + Send + Sync>;

/// Calls `poll` until it breaks (with `Some` value, or `None` to give up) or `limit`
/// has passed, yielding the core between calls so that the spin takes only time no
/// other thread wants; `None` at once for a zero `limit`. What every spinning wait of
/// a run (`SessionOptions::spin_wait`) is made of.
pub(crate) fn spin_until<T>(
    limit: Duration,
    mut poll: impl FnMut() -> ControlFlow<Option<T>>,
) -> Option<T> {
    if limit.is_zero() {
        return None;
    }
    let started = Instant::now();
    loop {
        match poll() {
            ControlFlow::Break(done) => return done,
            ControlFlow::Continue(()) if started.elapsed() < limit => std::thread::yield_now(),
            ControlFlow::Continue(()) => return None,
        }
    }
}
