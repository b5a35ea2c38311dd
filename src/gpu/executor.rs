//! [`GpuExecutor`]: the [`Executor`] of the members placed on one wgpu device,
//! recreating the device on its adapter when it is lost.

use std::sync::Arc;

use super::adapters::open_device;
use super::context::GpuContext;
use super::encode::Rows;
use super::resident::{copy_on, Resident};
use super::state::{DeviceState, Shapes};
use super::tune::Tuner;
use crate::aggregate::Mode;
use crate::device_tensor::{DeviceCopy, DeviceTensor};
use crate::error::{Error, Result};
use crate::exec::{DeviceOutput, Executor, Loss, MemberSpec, Wants};
use crate::options::SessionOptions;
use crate::placement::ExecutionDevice;
use crate::tensor::Tensor;

/// Runs the members placed on one wgpu device, recreating the device on its adapter
/// when it is lost.
pub(crate) struct GpuExecutor {
    state: Option<DeviceState>,
    label: ExecutionDevice,
    adapter: Option<wgpu::Adapter>,
    specs: Vec<MemberSpec>,
    mode: Mode,
    input_width: usize,
    output_width: usize,
    options: SessionOptions,
    tuner: Tuner,
    /// Why the device cannot be used any more, once recreating it failed.
    unavailable: Option<String>,
    /// Fault injection: refuse to recreate the device.
    refuse_recreate: bool,
}

impl GpuExecutor {
    /// Uploads the weights of `members`, creates their pipelines, and checks that the
    /// device can hold them.
    pub(crate) fn new(
        ctx: GpuContext,
        members: &[MemberSpec],
        (mode, input_width, output_width): (Mode, usize, usize),
        options: &SessionOptions,
        tuner: &Tuner,
    ) -> Result<Self> {
        let label = ctx.label.clone();
        let adapter = ctx.adapter.clone();
        let shapes = Shapes {
            members,
            mode,
            input_width,
            output_width,
        };
        let state = DeviceState::new(ctx, &shapes, options, tuner)?;
        Ok(Self {
            state: Some(state),
            label,
            adapter,
            specs: members.to_vec(),
            mode,
            input_width,
            output_width,
            options: options.clone(),
            tuner: tuner.clone(),
            unavailable: None,
            refuse_recreate: false,
        })
    }

    /// The error of a lost device, if the device was lost (checked before a job runs,
    /// so the job that finds it lost reports it and the next one recreates it).
    fn lost_error(&self) -> Option<Error> {
        self.state
            .as_ref()
            .filter(|s| s.ctx.is_lost())
            .and_then(|s| s.ctx.take_error())
    }

    fn unavailable_error(&self) -> Error {
        Error::DeviceUnavailable {
            device: self.label.to_string(),
            message: self
                .unavailable
                .clone()
                .unwrap_or_else(|| "the device was lost".to_string()),
        }
    }

    fn ensure_device(&mut self) -> Result<()> {
        if self.unavailable.is_some() {
            return Err(self.unavailable_error());
        }
        if self.state.as_ref().is_some_and(|s| !s.ctx.is_lost()) {
            return Ok(());
        }
        self.state = None;
        let recreated = match (&self.adapter, self.refuse_recreate) {
            (_, true) => Err("recreating it was refused by fault injection".to_string()),
            (None, _) => Err("a device handed in by the caller cannot be recreated".to_string()),
            (Some(adapter), false) => {
                open_device(adapter, self.label.clone(), self.options.precision)
            }
        };
        let shapes = Shapes {
            members: &self.specs,
            mode: self.mode,
            input_width: self.input_width,
            output_width: self.output_width,
        };
        let state = recreated.and_then(|ctx| {
            DeviceState::new(ctx, &shapes, &self.options, &self.tuner).map_err(|e| e.to_string())
        });
        match state {
            Ok(state) => {
                self.state = Some(state);
                Ok(())
            }
            Err(message) => {
                self.unavailable = Some(message);
                Err(self.unavailable_error())
            }
        }
    }
}

impl Executor for GpuExecutor {
    /// First recreates the device if it was lost.
    fn run(&mut self, input: &Tensor, wants: Wants, skip: &[usize]) -> Result<DeviceOutput> {
        self.ensure_device()?;
        match &mut self.state {
            Some(state) => state.run(input.as_slice(), wants, skip),
            None => Err(self.unavailable_error()),
        }
    }

    /// Reads the tensor's copy on this device when it has one (a copy made on this
    /// adapter before its device was lost and made again is not: its values went with
    /// the old device), else its values through the host. The aggregate is kept on the
    /// device when asked and the aggregate is a mean.
    fn run_resident(
        &mut self,
        input: &DeviceTensor,
        wants: Wants,
        skip: &[usize],
        keep_output: bool,
    ) -> Result<(DeviceOutput, Option<Arc<dyn DeviceCopy>>)> {
        self.ensure_device()?;
        let Some(state) = &mut self.state else {
            return Err(self.unavailable_error());
        };
        // An aggregate larger than one buffer may be is read back chunk by chunk.
        let bytes = (input.rows() as u64)
            .saturating_mul(state.output_width as u64)
            .saturating_mul(4);
        let keep = keep_output && self.mode == Mode::Values && bytes <= state.max_bytes;
        let result = match copy_on(input, &state.ctx) {
            Some(copy) => {
                copy.check_alive()?;
                state.run_rows(Rows::Device(&copy.buffer, input.rows()), wants, skip, keep)
            }
            None => {
                let host = input.to_host()?;
                state.run_rows(Rows::Host(host.as_slice()), wants, skip, keep)
            }
        };
        result.map(|(out, kept)| (out, kept.map(|k| Arc::new(k) as Arc<dyn DeviceCopy>)))
    }

    /// First recreates the device if it was lost.
    fn upload(&mut self, input: &Tensor) -> Result<Option<Arc<dyn DeviceCopy>>> {
        self.ensure_device()?;
        let Some(state) = &self.state else {
            return Err(self.unavailable_error());
        };
        let (rows, cols) = input.dims2("input")?;
        // A copy larger than one buffer may be is not made: the runs of this device
        // take the host values, in chunks.
        if (input.len() as u64).saturating_mul(4) > state.max_bytes {
            return Ok(None);
        }
        let copy = Resident::upload(&state.ctx, rows, cols, input.as_slice())?;
        Ok(Some(Arc::new(copy)))
    }

    fn lose_device(&mut self, permanently: bool) -> Loss {
        if let Some(state) = &self.state {
            state.ctx.lose();
        }
        self.refuse_recreate |= permanently;
        Loss::Device(self.lost_error())
    }

    fn reset(&mut self) {
        if let Some(state) = &mut self.state {
            state.reset();
        }
    }
}
