//! The host executor for [`Placement::Cpu`](crate::Placement::Cpu): the same member
//! networks through multi-threaded GEMM crates (`matrixmultiply`, and `gemm` for
//! batches of at most 16 rows), and for one or two rows as dot products of each
//! weight row with the input, spread over threads by `rayon`.

use std::sync::Arc;
use std::time::Instant;

mod forward;

use forward::{forward, round_f16};

use crate::aggregate::{accumulate, Mode};
use crate::error::Result;
use crate::exec::{DeviceOutput, Executor, Loss, MemberSpec};
use crate::model::Model;
use crate::precision::Precision;
use crate::tensor::Tensor;

struct CpuMember {
    index: usize,
    weight: f32,
    model: Arc<Model>,
}

/// Runs the members placed on the host CPU.
pub(crate) struct CpuExecutor {
    members: Vec<CpuMember>,
    mode: Mode,
    output_width: usize,
    /// Round layer inputs to f16 (weights are rounded once, at build).
    f16: bool,
}

impl CpuExecutor {
    /// With [`Precision::F16`] or `F16CoopMatrix` the weights are rounded to f16 here
    /// and every layer's input as it is read, the rounding of the GPU kernels.
    pub(crate) fn new(
        members: &[MemberSpec],
        mode: Mode,
        output_width: usize,
        precision: Precision,
    ) -> Self {
        let f16 = precision.is_f16();
        Self {
            members: members
                .iter()
                .map(|s| CpuMember {
                    index: s.index,
                    weight: s.weight,
                    model: if f16 {
                        Arc::new(s.model.map_weights(round_f16))
                    } else {
                        Arc::clone(&s.model)
                    },
                })
                .collect(),
            mode,
            output_width,
            f16,
        }
    }
}

impl Executor for CpuExecutor {
    fn run(&mut self, input: &Tensor, want_members: bool, skip: &[usize]) -> Result<DeviceOutput> {
        let started = Instant::now();
        let rows = input.shape().first().copied().unwrap_or(0);
        let input = input.as_slice();
        let mut partial: Option<Vec<f32>> = None;
        let mut members = Vec::new();
        let mut present = Vec::new();
        for m in self.members.iter().filter(|m| !skip.contains(&m.index)) {
            let mut y = forward(&m.model, input, rows, self.f16);
            present.push(m.index);
            match &mut partial {
                // The first member's weighted output is the partial sum (0 + w·y is
                // w·y): no buffer of zeros and no pass to add to it.
                None if self.mode == Mode::Values && !want_members => {
                    y.iter_mut().for_each(|v| *v *= m.weight);
                    partial = Some(y);
                }
                _ => {
                    let sum = partial.get_or_insert_with(|| vec![0.0; rows * self.output_width]);
                    accumulate(sum, &y, self.output_width, m.weight, self.mode);
                    if want_members {
                        members.push((m.index, y));
                    }
                }
            }
        }
        Ok(DeviceOutput {
            partial: partial.unwrap_or_else(|| vec![0.0; rows * self.output_width]),
            members,
            present,
            failed: Vec::new(),
            elapsed: started.elapsed(),
            device_time: None,
        })
    }

    /// The host cannot be lost: its members fail the job instead.
    fn lose_device(&mut self, _permanently: bool) -> Loss {
        Loss::NoDevice
    }

    /// Nothing outlives a run on the host.
    fn reset(&mut self) {}
}
