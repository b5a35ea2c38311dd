//! A member split across devices (`Split`): ordinary executors for its pieces — one per
//! stage (by layers), one per column step and device (by columns) — driven as one
//! executor, so that the session, the pipeline and the server see one member on one
//! worker.
//!
//! Each part (device) of the split has a thread of its own for the executor's life,
//! holding that part's executors and taking jobs from a queue. The member's worker
//! coordinates: by layers it keeps every stage busy with the next micro-batch it has
//! (stage s on micro-batch i while stage s + 1 is on micro-batch i − 1: GPipe's
//! schedule) and collects the last stage's outputs in row order; by columns it hands
//! each step's input to every part and joins their outputs on the host before the
//! next step.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use super::job::panic_message;
use super::thread::WorkerThread;
use crate::aggregate::{accumulate, Mode};
use crate::cpu::forward::activate;
use crate::error::{Error, Result};
use crate::exec::{DeviceOutput, Executor, Loss, Wants};
use crate::model::Dense;
use crate::split::{ranges, Join};
use crate::tensor::Tensor;

/// What one run of a part's executor gives back: its output, and its GPU device's
/// kernel time when that device times its kernels
/// ([`SessionOptions::device_timing`](crate::SessionOptions::device_timing)).
type PartOutput = (Vec<f32>, Option<Duration>);

/// Where a part's thread sends the output of one run of an executor.
type Answer = Receiver<Result<PartOutput>>;

/// What a part's thread is asked to do.
enum Job {
    /// Run executor `slot` (the stage's one, or a column step's) on the input and send
    /// its output back.
    Run {
        slot: usize,
        input: Tensor,
        reply: Sender<Result<PartOutput>>,
    },
    /// Lose the part's device (every executor of the part).
    Lose {
        permanently: bool,
        reply: Sender<Loss>,
    },
    /// Drop what a failed run may have left in use.
    Reset,
}

/// One part of a split member: its executors on its thread.
pub(crate) struct PartWorker {
    jobs: Option<Sender<Job>>,
    thread: WorkerThread,
    label: String,
}

impl PartWorker {
    /// Starts the thread of part `part` of member `member`, holding `executors`.
    pub(crate) fn spawn(
        member: &str,
        part: usize,
        label: String,
        mut executors: Vec<Box<dyn Executor>>,
    ) -> Result<Self> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let device = label.clone();
        let thread = WorkerThread::spawn(
            format!("wgpu-ensemble split {member} part {part}"),
            move |busy| {
                for job in queue.iter() {
                    busy.during(|| serve(&mut executors, job, &device));
                }
            },
        )
        .map_err(|e| Error::WorkerFailed {
            device: label.clone(),
            message: format!("could not start the thread of part {part} of '{member}': {e}"),
        })?;
        Ok(Self {
            jobs: Some(jobs),
            thread,
            label,
        })
    }

    /// Queues `job`; an error when the thread is gone.
    fn send(&self, job: Job) -> Result<()> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| self.gone())
    }

    /// Runs executor `slot` on `input`: the receiver of its output.
    fn start(&self, slot: usize, input: Tensor) -> Result<Answer> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.send(Job::Run { slot, input, reply })?;
        Ok(answer)
    }

    fn gone(&self) -> Error {
        Error::WorkerFailed {
            device: self.label.clone(),
            message: "the thread of this part of a split member is gone".into(),
        }
    }
}

impl Drop for PartWorker {
    fn drop(&mut self) {
        self.jobs = None;
        self.thread.shut_down(|| {});
    }
}

/// One job on a part's thread. A panic in an executor is that run's
/// [`Error::WorkerFailed`] (the executor is reset and lives on).
fn serve(executors: &mut [Box<dyn Executor>], job: Job, device: &str) {
    match job {
        Job::Run { slot, input, reply } => {
            let out = match executors.get_mut(slot) {
                None => Err(Error::WorkerFailed {
                    device: device.to_string(),
                    message: format!("no executor {slot} in this part"),
                }),
                Some(executor) => catch_unwind(AssertUnwindSafe(|| {
                    // One member of weight 1 under a mean: its partial sum is its output.
                    executor
                        .run(&input, Wants::default(), &[])
                        .map(|o| (o.partial, o.device_time))
                }))
                .unwrap_or_else(|panic| {
                    executor.reset();
                    Err(Error::WorkerFailed {
                        device: device.to_string(),
                        message: format!("it panicked: {}", panic_message(panic.as_ref())),
                    })
                }),
            };
            let _ = reply.send(out);
        }
        Job::Lose { permanently, reply } => {
            let mut loss = None;
            for executor in executors.iter_mut() {
                let l = executor.lose_device(permanently);
                loss.get_or_insert(l);
            }
            let _ = reply.send(loss.unwrap_or(Loss::NoDevice));
        }
        Job::Reset => executors.iter_mut().for_each(|e| e.reset()),
    }
}

/// One column step: how the host joins the parts' outputs (each part's thread holds
/// the step's executor in slot = the step's index).
pub(crate) struct ColumnJoin {
    pub(crate) join: Join,
    pub(crate) output_width: usize,
}

/// How the parts' work is arranged.
pub(crate) enum Plan {
    /// Part s is stage s; the batch cut into `micro_batches`.
    Layers { micro_batches: usize },
    /// The steps, in order.
    Columns(Vec<ColumnJoin>),
}

/// Runs one split member.
pub(crate) struct SplitExecutor {
    /// The member's graph index, and its aggregate weight.
    pub(crate) index: usize,
    pub(crate) weight: f32,
    pub(crate) mode: Mode,
    pub(crate) output_width: usize,
    /// The member's share of a stack's blender (see `MemberSpec::blend`).
    pub(crate) blend: Option<Arc<Dense>>,
    pub(crate) plan: Plan,
    pub(crate) parts: Vec<PartWorker>,
}

impl SplitExecutor {
    /// The member's `[rows, output_width]` output, and its parts' device time (see
    /// [`DeviceClock`]).
    fn forward(&mut self, input: &Tensor) -> Result<PartOutput> {
        match &self.plan {
            Plan::Layers { micro_batches } => run_layers(&self.parts, input, *micro_batches),
            Plan::Columns(steps) => run_columns(&self.parts, steps, input),
        }
    }
}

impl Executor for SplitExecutor {
    fn run(&mut self, input: &Tensor, wants: Wants, skip: &[usize]) -> Result<DeviceOutput> {
        let started = Instant::now();
        let rows = input.shape().first().copied().unwrap_or(0);
        let mut out = DeviceOutput {
            partial: vec![0.0; rows * self.output_width],
            members: Vec::new(),
            blend: Vec::new(),
            moments: Vec::new(),
            present: Vec::new(),
            failed: Vec::new(),
            elapsed: Duration::ZERO,
            device_time: None,
        };
        if !skip.contains(&self.index) {
            let (y, device_time) = self.forward(input)?;
            out.device_time = device_time;
            accumulate(
                &mut out.partial,
                &y,
                self.output_width,
                self.weight,
                self.mode,
            );
            out.present.push(self.index);
            // The blender's share and the statistics, as the CPU executor's are made.
            let share = (y.as_slice(), self.weight, self.blend.as_deref());
            let (blend, moments) =
                crate::cpu::blend_and_statistics(&[share], rows, self.output_width, wants.moments);
            out.blend = blend;
            out.moments.extend(moments);
            if wants.members {
                out.members.push((self.index, y));
            }
        }
        out.elapsed = started.elapsed();
        Ok(out)
    }

    /// Loses the device of the first part (what `Fault::LoseDevice` on the member
    /// does; [`Executor::lose_part_device`] names another part).
    fn lose_device(&mut self, permanently: bool) -> Loss {
        self.lose_part_device(0, permanently)
    }

    fn lose_part_device(&mut self, part: usize, permanently: bool) -> Loss {
        let Some(worker) = self.parts.get(part) else {
            return Loss::NoDevice;
        };
        let (reply, answer) = crossbeam_channel::bounded(1);
        match worker.send(Job::Lose { permanently, reply }) {
            Ok(()) => answer
                .recv()
                .unwrap_or_else(|_| Loss::Device(Some(worker.gone()))),
            Err(e) => Loss::Device(Some(e)),
        }
    }

    fn reset(&mut self) {
        for worker in &self.parts {
            let _ = worker.send(Job::Reset);
        }
    }
}

/// The answer on `answer`, or an error naming `worker` when its thread dropped it.
fn receive(worker: &PartWorker, answer: &Answer) -> Result<PartOutput> {
    answer.recv().unwrap_or_else(|_| Err(worker.gone()))
}

/// A split member's device time: the kernel time of every part's runs in one run of
/// the member (every stage and micro-batch, every column step and part), summed, as
/// a device's time is summed over the submissions of a batch split into chunks. The
/// parts' devices work side by side, so the sum can exceed the member's wall time.
/// `None` when no part reported one (CPU parts, or timing off).
#[derive(Default)]
struct DeviceClock(Option<Duration>);

impl DeviceClock {
    fn add(&mut self, time: Option<Duration>) {
        if let Some(t) = time {
            self.0 = Some(self.0.unwrap_or_default() + t);
        }
    }
}

/// Rows `r` of the `[rows, cols]` values `x`.
fn rows_of(x: &[f32], cols: usize, r: &std::ops::Range<usize>) -> Tensor {
    Tensor::from_parts(
        vec![r.len(), cols],
        x[r.start * cols..r.end * cols].to_vec(),
    )
}

/// By layers: every idle stage given the next micro-batch waiting for it, the outputs
/// of the last stage collected in row order. After an error no more work is started;
/// the work in flight is waited for, then the first error is returned.
fn run_layers(stages: &[PartWorker], input: &Tensor, micro_batches: usize) -> Result<PartOutput> {
    let (rows, cols) = (input.shape()[0], input.shape()[1]);
    let count = stages.len();
    if count == 1 {
        return receive(&stages[0], &stages[0].start(0, input.clone())?);
    }
    let mut clock = DeviceClock::default();
    let chunks = ranges(rows, micro_batches.clamp(1, rows.max(1)));
    let mut waiting: Vec<VecDeque<(usize, Tensor)>> = vec![VecDeque::new(); count];
    waiting[0] = chunks
        .iter()
        .enumerate()
        .map(|(i, r)| (i, rows_of(input.as_slice(), cols, r)))
        .collect();
    let mut outputs: Vec<Option<Vec<f32>>> = vec![None; chunks.len()];
    // (stage, micro-batch, answer) of the work in flight, at most one per stage.
    let mut running: Vec<(usize, usize, Answer)> = Vec::new();
    let mut error: Option<Error> = None;
    loop {
        if error.is_none() {
            for (s, stage) in stages.iter().enumerate() {
                if running.iter().any(|r| r.0 == s) {
                    continue;
                }
                if let Some((i, x)) = waiting[s].pop_front() {
                    match stage.start(0, x) {
                        Ok(answer) => running.push((s, i, answer)),
                        Err(e) => {
                            error.get_or_insert(e);
                            break;
                        }
                    }
                }
            }
        }
        if running.is_empty() {
            break;
        }
        let (k, out) = {
            let mut select = Select::new();
            for (_, _, answer) in &running {
                select.recv(answer);
            }
            let ready = select.select();
            let k = ready.index();
            (k, ready.recv(&running[k].2))
        };
        let (s, i, _) = running.swap_remove(k);
        let out = out.unwrap_or_else(|_| Err(stages[s].gone()));
        match out {
            Err(e) => {
                error.get_or_insert(e);
            }
            Ok((y, time)) if s + 1 < count => {
                clock.add(time);
                let n = chunks[i].len();
                let width = y.len() / n.max(1);
                waiting[s + 1].push_back((i, Tensor::from_parts(vec![n, width], y)));
            }
            Ok((y, time)) => {
                clock.add(time);
                outputs[i] = Some(y);
            }
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    let mut output = Vec::new();
    for (i, y) in outputs.into_iter().enumerate() {
        let y = y.ok_or_else(|| Error::WorkerFailed {
            device: "split".into(),
            message: format!("micro-batch {i} did not come through the stages"),
        })?;
        output.extend_from_slice(&y);
    }
    Ok((output, clock.0))
}

/// By columns: each step's input to every part at once, their outputs joined on the
/// host (placed side by side, or added with the bias), then the activation.
fn run_columns(parts: &[PartWorker], steps: &[ColumnJoin], input: &Tensor) -> Result<PartOutput> {
    let rows = input.shape()[0];
    let mut x = input.clone();
    let mut clock = DeviceClock::default();
    for (k, step) in steps.iter().enumerate() {
        let mut answers = Vec::with_capacity(parts.len());
        let mut started = Ok(());
        for part in parts {
            match part.start(k, x.clone()) {
                Ok(a) => answers.push(a),
                Err(e) => {
                    started = Err(e);
                    break;
                }
            }
        }
        // Every answer is waited for, so that no part is still on this step when the
        // next run starts; then the first error.
        let outputs: Vec<Result<PartOutput>> = parts
            .iter()
            .zip(&answers)
            .map(|(part, a)| receive(part, a))
            .collect();
        started?;
        let outputs = outputs
            .into_iter()
            .map(|o| {
                o.map(|(y, time)| {
                    clock.add(time);
                    y
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let width = step.output_width;
        let y = match &step.join {
            Join::Gather { ranges, activation } => {
                let mut y = vec![0.0; rows * width];
                for (part, r) in outputs.iter().zip(ranges) {
                    for (row, src) in y.chunks_mut(width).zip(part.chunks(r.len())) {
                        row[r.clone()].copy_from_slice(src);
                    }
                }
                activate(*activation, &mut y, width);
                y
            }
            Join::Sum { bias, activation } => {
                let mut outputs = outputs.into_iter();
                let mut y = outputs.next().unwrap_or_else(|| vec![0.0; rows * width]);
                for part in outputs {
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
    Ok((x.into_vec(), clock.0))
}
