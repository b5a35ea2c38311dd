//! A member split across devices (`Split`): ordinary executors for its parts — one per
//! stage (by layers), one per step and device (by columns) — driven as one executor,
//! so that the session, the pipeline and the server see one member on one worker.
//!
//! By layers, the stages after the first run on threads of their own for the run,
//! joined by channels: stage 0 (on the worker's thread) runs micro-batch i while stage
//! 1 runs micro-batch i − 1, and so on (GPipe's schedule). By columns, every step's
//! parts run side by side (part 0 on the worker's thread, the others on threads of the
//! run) and the host joins their outputs before the next step.

use std::ops::Range;
use std::time::Instant;

use crate::aggregate::{accumulate, Mode};
use crate::cpu::forward::activate;
use crate::error::{Error, Result};
use crate::exec::{DeviceOutput, Executor, Loss};
use crate::split::{ranges, Join};
use crate::tensor::Tensor;

/// One column step: each device's executor of its part, and the host's join.
pub(crate) struct ColumnStep {
    pub(crate) parts: Vec<Box<dyn Executor>>,
    pub(crate) join: Join,
    pub(crate) output_width: usize,
}

/// The parts' executors, as the split's kind arranges them.
pub(crate) enum Parts {
    /// One executor per stage, in order; the batch cut into `micro_batches`.
    Layers {
        stages: Vec<Box<dyn Executor>>,
        micro_batches: usize,
    },
    /// The steps, in order.
    Columns(Vec<ColumnStep>),
}

/// Runs one split member.
pub(crate) struct SplitExecutor {
    /// The member's graph index, and its aggregate weight.
    pub(crate) index: usize,
    pub(crate) weight: f32,
    pub(crate) mode: Mode,
    pub(crate) output_width: usize,
    pub(crate) parts: Parts,
}

impl SplitExecutor {
    /// The member's `[rows, output_width]` output.
    fn forward(&mut self, input: &Tensor) -> Result<Vec<f32>> {
        match &mut self.parts {
            Parts::Layers {
                stages,
                micro_batches,
            } => run_layers(stages, input, *micro_batches),
            Parts::Columns(steps) => run_columns(steps, input),
        }
    }

    /// Every executor of part `p` (its device).
    fn part_executors(&mut self, p: usize) -> Vec<&mut Box<dyn Executor>> {
        match &mut self.parts {
            Parts::Layers { stages, .. } => stages.get_mut(p).into_iter().collect(),
            Parts::Columns(steps) => steps
                .iter_mut()
                .filter_map(|s| s.parts.get_mut(p))
                .collect(),
        }
    }
}

impl Executor for SplitExecutor {
    fn run(&mut self, input: &Tensor, want_members: bool, skip: &[usize]) -> Result<DeviceOutput> {
        let started = Instant::now();
        let rows = input.shape().first().copied().unwrap_or(0);
        let mut out = DeviceOutput {
            partial: Vec::new(),
            members: Vec::new(),
            present: Vec::new(),
            failed: Vec::new(),
            elapsed: std::time::Duration::ZERO,
            device_time: None,
        };
        if skip.contains(&self.index) {
            out.partial = vec![0.0; rows * self.output_width];
        } else {
            let y = self.forward(input)?;
            let mut partial = vec![0.0; rows * self.output_width];
            accumulate(&mut partial, &y, self.output_width, self.weight, self.mode);
            out.partial = partial;
            out.present.push(self.index);
            if want_members {
                out.members.push((self.index, y));
            }
        }
        out.elapsed = started.elapsed();
        Ok(out)
    }

    /// Loses the device of the first part (what [`Fault::LoseDevice`] on the member
    /// does; [`Executor::lose_part_device`] names another part).
    ///
    /// [`Fault::LoseDevice`]: crate::Fault::LoseDevice
    fn lose_device(&mut self, permanently: bool) -> Loss {
        self.lose_part_device(0, permanently)
    }

    fn lose_part_device(&mut self, part: usize, permanently: bool) -> Loss {
        let mut loss = None;
        for executor in self.part_executors(part) {
            let l = executor.lose_device(permanently);
            loss.get_or_insert(l);
        }
        loss.unwrap_or(Loss::NoDevice)
    }

    fn reset(&mut self) {
        match &mut self.parts {
            Parts::Layers { stages, .. } => stages.iter_mut().for_each(|s| s.reset()),
            Parts::Columns(steps) => steps
                .iter_mut()
                .flat_map(|s| s.parts.iter_mut())
                .for_each(|p| p.reset()),
        }
    }
}

/// One part's output on `input`: a sub-executor holds one member of weight 1 under a
/// mean, so its partial sum is that member's output.
fn run_part(executor: &mut dyn Executor, input: &Tensor) -> Result<Vec<f32>> {
    Ok(executor.run(input, false, &[])?.partial)
}

/// Rows `r` of the `[rows, cols]` values `x`.
fn rows_of(x: &[f32], cols: usize, r: &Range<usize>) -> Tensor {
    Tensor::from_parts(
        vec![r.len(), cols],
        x[r.start * cols..r.end * cols].to_vec(),
    )
}

/// A micro-batch between stages: its rows and their `[rows, width]` values.
type Batch = Result<(usize, Vec<f32>)>;

/// By layers: the micro-batches through the stages, stage s + 1 on micro-batch i − 1
/// while stage s is on micro-batch i; the outputs in row order.
fn run_layers(
    stages: &mut [Box<dyn Executor>],
    input: &Tensor,
    micro_batches: usize,
) -> Result<Vec<f32>> {
    let (rows, cols) = (input.shape()[0], input.shape()[1]);
    let Some((first, rest)) = stages.split_first_mut() else {
        return Err(Error::WorkerFailed {
            device: "split".into(),
            message: "a split by layers without stages".into(),
        });
    };
    if rest.is_empty() {
        return run_part(first.as_mut(), input);
    }
    let chunks = ranges(rows, micro_batches.clamp(1, rows.max(1)));
    let expected = chunks.len();
    std::thread::scope(|scope| {
        let (first_tx, mut rx) = crossbeam_channel::unbounded::<Batch>();
        for (s, stage) in rest.iter_mut().enumerate() {
            let (tx, next) = crossbeam_channel::unbounded::<Batch>();
            let input = rx;
            std::thread::Builder::new()
                .name(format!("wgpu-ensemble split stage {}", s + 1))
                .spawn_scoped(scope, move || {
                    for batch in input.iter() {
                        let out = batch.and_then(|(n, values)| {
                            let width = values.len() / n.max(1);
                            let x = Tensor::from_parts(vec![n, width], values);
                            run_part(stage.as_mut(), &x).map(|y| (n, y))
                        });
                        let failed = out.is_err();
                        if tx.send(out).is_err() || failed {
                            break;
                        }
                    }
                })
                .map_err(|e| Error::WorkerFailed {
                    device: format!("split stage {}", s + 1),
                    message: format!("could not start its thread: {e}"),
                })?;
            rx = next;
        }
        for r in &chunks {
            let out =
                run_part(first.as_mut(), &rows_of(input.as_slice(), cols, r)).map(|y| (r.len(), y));
            let failed = out.is_err();
            if first_tx.send(out).is_err() || failed {
                break;
            }
        }
        drop(first_tx);
        let mut output = Vec::new();
        let mut got = 0;
        for batch in rx.iter() {
            output.extend_from_slice(&batch?.1);
            got += 1;
        }
        if got != expected {
            return Err(Error::WorkerFailed {
                device: "split stage".into(),
                message: format!("{got} of {expected} micro-batches came through the stages"),
            });
        }
        Ok(output)
    })
}

/// By columns: each step's parts side by side on the step's input, joined on the host.
fn run_columns(steps: &mut [ColumnStep], input: &Tensor) -> Result<Vec<f32>> {
    let rows = input.shape()[0];
    let mut x = input.clone();
    for step in steps.iter_mut() {
        let outputs = run_side_by_side(&mut step.parts, &x)?;
        let width = step.output_width;
        let y = match &step.join {
            Join::Gather { ranges, activation } => {
                let mut y = vec![0.0; rows * width];
                for (part, r) in outputs.iter().zip(ranges) {
                    let w = r.len();
                    for (row, src) in y.chunks_mut(width).zip(part.chunks(w)) {
                        row[r.clone()].copy_from_slice(src);
                    }
                }
                activate(*activation, &mut y, width);
                y
            }
            Join::Sum { bias, activation } => {
                let mut parts = outputs.into_iter();
                let mut y = parts.next().unwrap_or_else(|| vec![0.0; rows * width]);
                for part in parts {
                    y.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
                }
                for row in y.chunks_mut(width) {
                    row.iter_mut().zip(bias).for_each(|(a, b)| *a += b);
                }
                activate(*activation, &mut y, width);
                y
            }
        };
        x = Tensor::from_parts(vec![rows, width], y);
    }
    Ok(x.into_vec())
}

/// Every part's output on `x`: part 0 on this thread, the others on threads of their
/// own for the call; the first error, in part order.
fn run_side_by_side(parts: &mut [Box<dyn Executor>], x: &Tensor) -> Result<Vec<Vec<f32>>> {
    let Some((first, rest)) = parts.split_first_mut() else {
        return Err(Error::WorkerFailed {
            device: "split".into(),
            message: "a split step without parts".into(),
        });
    };
    std::thread::scope(|scope| {
        let handles = rest
            .iter_mut()
            .enumerate()
            .map(|(p, part)| {
                std::thread::Builder::new()
                    .name(format!("wgpu-ensemble split part {}", p + 1))
                    .spawn_scoped(scope, move || run_part(part.as_mut(), x))
                    .map_err(|e| Error::WorkerFailed {
                        device: format!("split part {}", p + 1),
                        message: format!("could not start its thread: {e}"),
                    })
            })
            .collect::<Vec<_>>();
        let mut outputs = vec![run_part(first.as_mut(), x)];
        for handle in handles {
            outputs.push(handle.and_then(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }));
        }
        outputs.into_iter().collect()
    })
}
