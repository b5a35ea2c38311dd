//! [`Resident`]: a `[rows, cols]` f32 tensor's copy on one wgpu device, the storage of
//! a [`DeviceTensor`](crate::DeviceTensor): made by an upload or kept from a run's
//! aggregate, read by the runs of that device (a copy on the device, no upload) and
//! read back to the host on demand.

use std::any::Any;
use std::time::{Duration, Instant};

use super::context::GpuContext;
use super::readback::{copy_f32, map_for_reading, read_mapped, wait_for, CALLBACK_GRACE};
use super::stack::bytes_of;
use crate::device_tensor::DeviceCopy;
use crate::error::{Error, Result};
use crate::placement::ExecutionDevice;

/// A tensor's values in a buffer of one device (`STORAGE | COPY_SRC | COPY_DST`,
/// `rows · cols` values from offset 0).
#[derive(Clone, Debug)]
pub(crate) struct Resident {
    ctx: GpuContext,
    pub(crate) buffer: wgpu::Buffer,
    rows: usize,
    cols: usize,
}

/// The usage of a resident buffer: read by a run's copy into its input, written by a
/// run's copy of its aggregate, read back by a copy into a staging buffer.
const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Resident {
    /// An uninitialised buffer for `rows · cols` values on `ctx`'s device, or
    /// [`Error::BufferTooLarge`] beyond the device's largest buffer.
    pub(crate) fn empty(ctx: &GpuContext, rows: usize, cols: usize, what: &str) -> Result<Self> {
        let bytes = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(4))
            .map_or(u64::MAX, |b| b as u64);
        let limit = ctx.device.limits().max_buffer_size;
        if bytes > limit {
            return Err(Error::BufferTooLarge {
                what: format!("{what} of {rows} x {cols} values"),
                device: ctx.label.to_string(),
                bytes,
                limit,
            });
        }
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: bytes.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT),
            usage: USAGE,
            mapped_at_creation: false,
        });
        Ok(Self {
            ctx: ctx.clone(),
            buffer,
            rows,
            cols,
        })
    }

    /// A copy of `values` (`rows · cols` of them) on `ctx`'s device, written through
    /// the queue (the device's next submission sees it).
    pub(crate) fn upload(
        ctx: &GpuContext,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Result<Self> {
        let resident = Self::empty(ctx, rows, cols, "device tensor")?;
        ctx.queue
            .write_buffer(&resident.buffer, 0, bytemuck::cast_slice(values));
        if let Some(e) = ctx.take_error() {
            return Err(e);
        }
        Ok(resident)
    }

    /// Whether the copy lives on `ctx`'s device (the same wgpu device, not only the
    /// same adapter: a device made again after a loss is another one).
    pub(crate) fn is_on(&self, ctx: &GpuContext) -> bool {
        self.ctx.id == ctx.id
    }

    /// [`Error::DeviceLost`] when the device holding the copy has been lost (its
    /// values are gone with it, even if the device was made again since).
    pub(crate) fn check_alive(&self) -> Result<()> {
        if self.ctx.is_lost() {
            return Err(self.lost());
        }
        Ok(())
    }

    fn lost(&self) -> Error {
        Error::DeviceLost {
            device: self.ctx.label.to_string(),
            message: "a device tensor's values were on it and are gone with it \
                      (upload the input again, or run again for an output)"
                .to_string(),
        }
    }

    /// The values, read back through a staging buffer, waiting at most `timeout` for
    /// the device.
    fn read_back(&self, timeout: Duration) -> Result<Vec<f32>> {
        self.check_alive()?;
        let values = self.rows * self.cols;
        let bytes = bytes_of(values);
        let device = &self.ctx.device;
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("device tensor staging"),
            size: bytes.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("device tensor readback"),
        });
        encoder.copy_buffer_to_buffer(&self.buffer, 0, &staging, 0, bytes);
        let submission = self.ctx.queue.submit([encoder.finish()]);
        let mapping = map_for_reading(&[(&staging, bytes)]);
        let started = Instant::now();
        let gpu = |message: String| {
            if self.ctx.is_lost() {
                self.lost()
            } else {
                Error::Gpu {
                    device: self.ctx.label.to_string(),
                    message,
                }
            }
        };
        match wait_for(device, submission, Duration::ZERO, timeout) {
            Ok(()) => {}
            Err(wgpu::PollError::Timeout) => {
                return Err(Error::OperationTimeout {
                    device: self.ctx.label.to_string(),
                    timeout,
                })
            }
            Err(e) => return Err(gpu(format!("reading a device tensor back: {e}"))),
        }
        mapping
            .wait(
                timeout
                    .saturating_sub(started.elapsed())
                    .max(CALLBACK_GRACE),
            )
            .map_err(gpu)?;
        let mut out = Vec::new();
        out.try_reserve_exact(values)
            .map_err(|_| gpu(format!("no host memory for {values} values")))?;
        out.resize(values, 0.0);
        read_mapped(&staging, bytes, |view| copy_f32(&mut out, view)).map_err(gpu)?;
        Ok(out)
    }
}

impl DeviceCopy for Resident {
    fn device(&self) -> &ExecutionDevice {
        &self.ctx.label
    }

    fn read(&self, timeout: Duration) -> Result<Vec<f32>> {
        self.read_back(timeout)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The copy of `tensor` that is a [`Resident`] on `ctx`'s device, if it has one.
pub(crate) fn copy_on<'a>(
    tensor: &'a crate::DeviceTensor,
    ctx: &GpuContext,
) -> Option<&'a Resident> {
    tensor
        .copies()
        .filter_map(|c| c.as_any().downcast_ref::<Resident>())
        .find(|r| r.is_on(ctx))
}
