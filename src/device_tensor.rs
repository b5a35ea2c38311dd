//! [`DeviceTensor`]: a `[rows, cols]` f32 tensor with copies on devices, so that
//! chained runs skip the host: [`Session::upload`](crate::Session::upload) makes one,
//! [`Session::run_device`](crate::Session::run_device) takes one and returns one.
//!
//! Part of the executor contract (beside `exec.rs`): a device's copy is a
//! [`DeviceCopy`], which the backend that made it implements (`gpu::Resident`) and
//! finds again by its type; nothing here knows a backend.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::placement::ExecutionDevice;
use crate::report::MemberReport;
use crate::tensor::Tensor;

/// A `[rows, cols]` f32 tensor held on devices: a copy in a buffer of each GPU device
/// it was put on, and possibly one on the host.
///
/// - [`Session::upload`](crate::Session::upload) puts one copy on each GPU device of
///   the session and keeps the host tensor (shared, not copied) for the session's CPU
///   members and for a device made again after a loss.
/// - [`Session::run_device`](crate::Session::run_device) returns the aggregate as a
///   `DeviceTensor`: on the device when the session's members all run on one GPU
///   device and the aggregate is a (weighted) mean, on the host otherwise (see
///   [`DeviceTensor::is_on_device`]).
///
/// A run reads the copy on its own device without an upload. A device with no copy
/// (another session's device, the CPU) gets the values through the host: the host copy
/// when there is one, else a readback of a device copy (one per device that needs it).
/// A device whose buffers cannot hold the tensor gets no copy from
/// [`Session::upload`](crate::Session::upload) and reads the host values in chunks, as
/// [`Session::run`](crate::Session::run) does; an aggregate larger than one buffer is
/// read back rather than kept. Values on a device that was
/// lost are gone: a run or [`DeviceTensor::to_host`] that needs them fails with
/// [`Error::DeviceLost`] naming that device, never with other values.
///
/// Cloning is cheap (the copies are shared); the device buffers are freed when the last
/// clone is dropped.
///
/// ```
/// use wgpu_ensemble::{Graph, Model, Activation, Placement, RunOptions, Session, Tensor};
///
/// # fn main() -> wgpu_ensemble::Result<()> {
/// let model = Model::random(&[4, 8, 4], &[Activation::Relu, Activation::Identity], 1)?;
/// let graph = Graph::builder(4).member("m", model, Placement::Cpu).build()?;
/// let session = Session::new(graph)?;
/// let x = session.upload(&Tensor::matrix(2, 4, vec![0.5; 8])?)?;
/// // The output has the input's width here: feed it back without leaving the devices.
/// let once = session.run_device(&x, &RunOptions::default())?;
/// let twice = session.run_device(&once.aggregate, &RunOptions::default())?;
/// assert_eq!(twice.aggregate.to_host()?.shape(), &[2, 4]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct DeviceTensor {
    inner: Arc<Inner>,
}

/// A tensor's values on one device, held the way its backend holds them: the storage
/// of a [`DeviceTensor`].
pub(crate) trait DeviceCopy: Send + Sync {
    /// The device holding the values.
    fn device(&self) -> &ExecutionDevice;

    /// The values, read back to the host waiting at most `timeout` for the device;
    /// [`Error::DeviceLost`] naming it when the device has been lost since.
    fn read(&self, timeout: Duration) -> Result<Vec<f32>>;

    /// The backend's own type, for the backend to find its copies.
    fn as_any(&self) -> &dyn Any;
}

struct Inner {
    shape: [usize; 2],
    host: Option<Tensor>,
    copies: Vec<Arc<dyn DeviceCopy>>,
    /// How long a readback waits for its device (the session's operation timeout).
    timeout: Duration,
}

impl DeviceTensor {
    /// A tensor with a host copy and the device `copies`; `host` is `[rows, cols]`.
    pub(crate) fn new(
        shape: [usize; 2],
        host: Option<Tensor>,
        copies: Vec<Arc<dyn DeviceCopy>>,
        timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shape,
                host,
                copies,
                timeout,
            }),
        }
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> &[usize] {
        &self.inner.shape
    }

    /// Rows (the batch).
    pub fn rows(&self) -> usize {
        self.inner.shape[0]
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.inner.shape[1]
    }

    /// Where copies of the values are: each GPU device holding one, then
    /// [`ExecutionDevice::Cpu`] when the host holds one.
    pub fn devices(&self) -> Vec<ExecutionDevice> {
        let mut devices: Vec<ExecutionDevice> = self
            .inner
            .copies
            .iter()
            .map(|c| c.device().clone())
            .collect();
        if self.inner.host.is_some() {
            devices.push(ExecutionDevice::Cpu);
        }
        devices
    }

    /// Whether a GPU device holds a copy of the values.
    pub fn is_on_device(&self) -> bool {
        !self.inner.copies.is_empty()
    }

    /// The values on the host: the host copy when there is one (no copy is made),
    /// else one readback from the first device holding them.
    ///
    /// [`Error::DeviceLost`] names the device when the only copies were on a device
    /// that has been lost since.
    pub fn to_host(&self) -> Result<Tensor> {
        if let Some(host) = &self.inner.host {
            return Ok(host.clone());
        }
        let [rows, cols] = self.inner.shape;
        let mut first_error = None;
        for copy in &self.inner.copies {
            match copy.read(self.inner.timeout) {
                Ok(values) => return Tensor::matrix(rows, cols, values),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| Error::Gpu {
            device: "none".to_string(),
            message: "a device tensor holds no copy of its values".to_string(),
        }))
    }

    /// The copies on devices, for a backend to find its own.
    pub(crate) fn copies(&self) -> impl Iterator<Item = &dyn DeviceCopy> {
        self.inner.copies.iter().map(|c| c.as_ref())
    }
}

impl fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTensor")
            .field("shape", &self.inner.shape)
            .field("devices", &self.devices())
            .finish()
    }
}

/// What [`Session::run_device`](crate::Session::run_device) returns: a
/// [`RunOutput`](crate::RunOutput) whose aggregate is a [`DeviceTensor`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeviceRunOutput {
    /// The aggregate node's output, `[rows, output_width]`, over the members that
    /// finished: on the device when the session's members all run on one GPU device
    /// and the aggregate is a (weighted) mean, else on the host.
    pub aggregate: DeviceTensor,
    /// One report per member, in member order (their own outputs, when asked, are host
    /// tensors).
    pub members: Vec<MemberReport>,
    /// Wall time of the whole run, as the caller saw it.
    pub elapsed: Duration,
    /// Whether a stack's blender made the aggregate, as
    /// [`RunOutput::stacked`](crate::RunOutput::stacked) says.
    pub stacked: Option<bool>,
    /// The uncertainty measures over the members that finished, when
    /// [`RunOptions::uncertainty`](crate::RunOptions::uncertainty) asked (on the host:
    /// each device's statistics are read back, not its members' outputs).
    pub uncertainty: Option<crate::Uncertainty>,
}

impl DeviceRunOutput {
    /// Whether every member finished (the aggregate is over all of them).
    pub fn is_complete(&self) -> bool {
        self.members
            .iter()
            .all(|m| matches!(m.status, crate::report::MemberStatus::Finished))
    }

    /// The members that did not finish.
    pub fn missing(&self) -> impl Iterator<Item = &MemberReport> {
        self.members
            .iter()
            .filter(|m| !matches!(m.status, crate::report::MemberStatus::Finished))
    }
}
