//! What the in-graph session and the between-graph pipeline share: compiling members
//! into executors (one per device, or one per member), running one job with the
//! planned faults, and combining member results under a quorum policy.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cpu::CpuExecutor;
use crate::device::{is_llvmpipe, DevicePool, ExecutionDevice, Placement};
use crate::error::{Error, Result};
use crate::fault::{Fault, FaultPlan};
use crate::gpu::tune::Tuner;
use crate::gpu::{GpuContext, GpuExecutor};
use crate::graph::Graph;
use crate::model::Model;
use crate::session::{MemberReport, MemberStatus, QuorumPolicy, RunOutput, SessionOptions};
use crate::tensor::Tensor;

/// What an executor is given for one member.
#[derive(Clone)]
pub(crate) struct MemberSpec {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) model: Arc<Model>,
    pub(crate) weight: f32,
}

/// What an executor sends back: the weighted sum (or vote counts) of the members that
/// ran, which they were, which failed, and their own outputs when asked.
pub(crate) struct DeviceOutput {
    pub(crate) partial: Vec<f32>,
    pub(crate) members: Vec<(usize, Vec<f32>)>,
    pub(crate) present: Vec<usize>,
    pub(crate) failed: Vec<(usize, Error)>,
    pub(crate) elapsed: Duration,
    /// The device's time for the kernels (timestamp queries), when measured.
    pub(crate) device_time: Option<Duration>,
}

/// Runs a group of members on one device.
pub(crate) enum Executor {
    Cpu(CpuExecutor),
    Gpu(Box<GpuExecutor>),
}

/// One compiled device (or member, for the pipeline): where it runs, which graph
/// members it holds, and its executor.
pub(crate) struct Compiled {
    pub(crate) device: ExecutionDevice,
    pub(crate) members: Vec<usize>,
    pub(crate) executor: Executor,
}

#[derive(PartialEq)]
enum Key {
    Cpu,
    Adapter(usize, usize),
    External(wgpu::Device),
    /// One group per member (the pipeline's workers).
    Member(usize),
}

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

/// Resolves every placement, creates the devices, and builds one executor per device
/// (`per_member == false`, the session) or per member (the pipeline, where members on
/// one device share it but each has its own executor).
pub(crate) fn compile(
    graph: &Graph,
    options: &SessionOptions,
    per_member: bool,
) -> Result<Vec<Compiled>> {
    let names: Vec<&str> = graph.members.iter().map(|m| m.name.as_str()).collect();
    if let Some(member) = options.faults.unknown_member(&names) {
        return Err(Error::FaultUnknownMember {
            member: member.to_string(),
            members: names.iter().map(|n| n.to_string()).collect(),
        });
    }
    if options.precision.is_f16() {
        for m in &graph.members {
            if let Some((layer, index, value)) = m.model.first_beyond_f16() {
                return Err(Error::WeightOutOfRange {
                    member: m.name.clone(),
                    layer,
                    index,
                    value,
                    precision: options.precision.name(),
                });
            }
        }
    }
    let mut pool: Option<DevicePool> = None;
    let mut auto_next = 0;
    let mut groups: Vec<(Key, Option<GpuContext>, Vec<usize>)> = Vec::new();
    let mut contexts: Vec<GpuContext> = Vec::new();
    for (index, member) in graph.members.iter().enumerate() {
        let (key, ctx) = match &member.placement {
            Placement::Cpu => (Key::Cpu, None),
            Placement::Adapter(a) => {
                let ctx = pool
                    .get_or_insert_with(|| {
                        DevicePool::new(options.precision).with_timing(options.device_timing)
                    })
                    .open(&member.name, *a, 0)?;
                (Key::Adapter(*a, 0), Some(ctx))
            }
            Placement::Queue { adapter, slot } => {
                let ctx = pool
                    .get_or_insert_with(|| {
                        DevicePool::new(options.precision).with_timing(options.device_timing)
                    })
                    .open(&member.name, *adapter, *slot)?;
                (Key::Adapter(*adapter, *slot), Some(ctx))
            }
            Placement::Auto => {
                let p = pool.get_or_insert_with(|| {
                    DevicePool::new(options.precision).with_timing(options.device_timing)
                });
                // A layer longer than llvmpipe computes correctly runs on the CPU
                // rather than there (see the executor's LLVMPIPE_SMALL_INPUTS).
                let too_long = member.model.longest_layer().1 > crate::gpu::LLVMPIPE_SMALL_INPUTS;
                let usable: Vec<usize> = p
                    .usable()
                    .into_iter()
                    .filter(|&a| {
                        !(too_long
                            && p.infos
                                .get(a)
                                .is_some_and(|i| is_llvmpipe(&i.name, &i.driver)))
                    })
                    .collect();
                if usable.is_empty() {
                    (Key::Cpu, None)
                } else {
                    auto_next += 1;
                    let a = usable[(auto_next - 1) % usable.len()];
                    (Key::Adapter(a, 0), Some(p.open(&member.name, a, 0)?))
                }
            }
            Placement::Device(ext) => {
                // One context per device: creating it installs the device's error
                // handlers, which must report to the context that is kept.
                let existing = contexts
                    .iter()
                    .find(|c: &&GpuContext| c.device == ext.device)
                    .cloned();
                let ctx = existing.unwrap_or_else(|| {
                    let ctx = GpuContext::new(
                        ext.device.clone(),
                        ext.queue.clone(),
                        ExecutionDevice::External {
                            label: ext.label.clone(),
                        },
                        None,
                    );
                    contexts.push(ctx.clone());
                    ctx
                });
                (Key::External(ext.device.clone()), Some(ctx))
            }
        };
        let key = if per_member { Key::Member(index) } else { key };
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(group) => group.2.push(index),
            None => groups.push((key, ctx, vec![index])),
        }
    }

    let mode = graph.aggregate.mode();
    let tuner = Tuner::new(options)?;
    let mut compiled = Vec::with_capacity(groups.len());
    for (_, ctx, members) in groups {
        let specs: Vec<MemberSpec> = members
            .iter()
            .map(|&i| MemberSpec {
                index: i,
                name: graph.members[i].name.clone(),
                model: Arc::clone(&graph.members[i].model),
                weight: graph.weights[i],
            })
            .collect();
        let (device, executor) = match ctx {
            None => (
                ExecutionDevice::Cpu,
                Executor::Cpu(CpuExecutor::new(
                    &specs,
                    mode,
                    graph.output_width,
                    options.precision,
                )),
            ),
            Some(ctx) => (
                ctx.label.clone(),
                Executor::Gpu(Box::new(GpuExecutor::new(
                    ctx,
                    &specs,
                    mode,
                    graph.input_width,
                    graph.output_width,
                    options,
                    &tuner,
                )?)),
            ),
        };
        compiled.push(Compiled {
            device,
            members,
            executor,
        });
    }
    Ok(compiled)
}

impl Executor {
    /// Runs one job on `input` for run number `run`, applying the faults `plan` holds
    /// for these members (`names` are the graph's member names). A panic inside the
    /// executor becomes [`Error::WorkerFailed`] for this job; the executor lives on.
    pub(crate) fn execute(
        &mut self,
        input: &Tensor,
        want_members: bool,
        run: u64,
        cx: &WorkerContext,
    ) -> Result<DeviceOutput> {
        let (members, names, plan, device) = (&cx.members, &cx.names, &cx.plan, &cx.device);
        let mut skip: Vec<(usize, Error)> = Vec::new();
        let mut panic = false;
        let mut lose: Option<bool> = None;
        if !plan.is_empty() {
            for &m in members.iter() {
                for fault in plan.faults(&names[m], run) {
                    match fault {
                        Fault::Sleep(d) => std::thread::sleep(*d),
                        Fault::Fail => skip.push((
                            m,
                            Error::InjectedFault {
                                member: names[m].clone(),
                                run,
                            },
                        )),
                        Fault::Panic => panic = true,
                        Fault::LoseDevice => lose = Some(lose.unwrap_or(false)),
                        Fault::LoseDevicePermanently => lose = Some(true),
                    }
                }
            }
        }
        if let Some(permanently) = lose {
            match self {
                Executor::Gpu(e) => {
                    e.lose_device(permanently);
                    if let Some(err) = e.lost_error() {
                        return Err(err);
                    }
                }
                Executor::Cpu(_) => {
                    for &m in members.iter() {
                        skip.push((
                            m,
                            Error::InjectedFault {
                                member: names[m].clone(),
                                run,
                            },
                        ));
                    }
                }
            }
        }
        let rows = input.shape().first().copied().unwrap_or(0);
        let skipped: Vec<usize> = skip.iter().map(|(m, _)| *m).collect();
        let result = catch_unwind(AssertUnwindSafe(|| {
            if panic {
                // Fault injection: the worker's job unwinds as a bug's panic would,
                // without the panic hook's message and backtrace.
                std::panic::resume_unwind(Box::new(format!("fault injection on run {run}")));
            }
            match self {
                Executor::Cpu(e) => Ok(e.run(input.as_slice(), rows, want_members, &skipped)),
                Executor::Gpu(e) => e.run(input.as_slice(), want_members, &skipped),
            }
        }));
        let result = result.unwrap_or_else(|panic| {
            if let Executor::Gpu(e) = self {
                e.reset();
            }
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(Error::WorkerFailed {
                device: device.to_string(),
                message: format!("it panicked: {message}"),
            })
        });
        result.map(|mut out| {
            out.failed = skip;
            out
        })
    }
}

/// What a worker knows besides its executor: its members, every member's name (for
/// the fault plan), the fault plan, and its device's description.
pub(crate) struct WorkerContext {
    pub(crate) members: Vec<usize>,
    pub(crate) names: Vec<String>,
    pub(crate) plan: Arc<FaultPlan>,
    pub(crate) device: String,
}

/// The aggregate node's bookkeeping for one run (or one pipeline input): member
/// results as they arrive, then the aggregate under a quorum policy.
pub(crate) struct Combiner<'a> {
    names: &'a [String],
    devices: &'a [ExecutionDevice],
    weights: &'a [f32],
    rows: usize,
    cols: usize,
    acc: Vec<f32>,
    present_weight: f32,
    status: Vec<Option<MemberStatus>>,
    elapsed: Vec<Duration>,
    device_time: Vec<Option<Duration>>,
    outputs: Vec<Option<Tensor>>,
}

impl<'a> Combiner<'a> {
    pub(crate) fn new(
        names: &'a [String],
        devices: &'a [ExecutionDevice],
        weights: &'a [f32],
        rows: usize,
        cols: usize,
    ) -> Self {
        Self {
            names,
            devices,
            weights,
            rows,
            cols,
            acc: Vec::new(),
            present_weight: 0.0,
            status: vec![None; names.len()],
            elapsed: vec![Duration::ZERO; names.len()],
            device_time: vec![None; names.len()],
            outputs: vec![None; names.len()],
        }
    }

    /// Adds one executor's result for `members`. Returns the first failure, for a
    /// caller that gives up on any failure.
    pub(crate) fn add(&mut self, members: &[usize], result: Result<DeviceOutput>) -> Option<Error> {
        match result {
            Ok(out) => {
                if self.acc.is_empty() {
                    // The first partial sum is the sum so far (0 + p is p).
                    self.acc = out.partial;
                } else {
                    for (a, p) in self.acc.iter_mut().zip(&out.partial) {
                        *a += p;
                    }
                }
                for &m in &out.present {
                    self.present_weight += self.weights[m];
                    self.status[m] = Some(MemberStatus::Finished);
                    self.elapsed[m] = out.elapsed;
                    self.device_time[m] = out.device_time;
                }
                for (m, y) in out.members {
                    self.outputs[m] = Tensor::matrix(self.rows, self.cols, y).ok();
                }
                let first = out.failed.first().map(|(_, e)| e.clone());
                for (m, e) in out.failed {
                    self.status[m] = Some(MemberStatus::Failed(e));
                }
                first
            }
            Err(e) => {
                self.fail(members, e.clone());
                Some(e)
            }
        }
    }

    /// Marks `members` failed with `error` (their worker is gone).
    pub(crate) fn fail(&mut self, members: &[usize], error: Error) {
        for &m in members {
            self.status[m] = Some(MemberStatus::Failed(error.clone()));
        }
    }

    /// The run's output: members that never answered are late; the aggregate is the
    /// weighted sum over the members that finished divided by their total weight.
    pub(crate) fn finish(
        self,
        quorum: QuorumPolicy,
        timeout: Option<Duration>,
        elapsed: Duration,
    ) -> Result<RunOutput> {
        let (aggregate, members) = self.finish_parts(quorum, timeout);
        Ok(RunOutput {
            aggregate: aggregate?,
            members,
            elapsed,
        })
    }

    /// The aggregate (or why there is none) and every member's report.
    pub(crate) fn finish_parts(
        self,
        quorum: QuorumPolicy,
        timeout: Option<Duration>,
    ) -> (Result<Tensor>, Vec<MemberReport>) {
        let status: Vec<MemberStatus> = self
            .status
            .into_iter()
            .map(|s| s.unwrap_or(MemberStatus::Late))
            .collect();
        let members = self.names.len();
        let finished = status
            .iter()
            .filter(|s| matches!(s, MemberStatus::Finished))
            .count();
        let verdict = verdict(&status, self.names, quorum, timeout, finished);
        let aggregate = verdict.and_then(|()| {
            if self.present_weight <= 0.0 {
                return Err(Error::QuorumNotMet {
                    required: match quorum {
                        QuorumPolicy::Quorum(k) => k,
                        _ => members,
                    },
                    finished,
                    members,
                    missing: vec![
                        "the aggregate weights of the members that finished sum to 0".to_string(),
                    ],
                });
            }
            let scale = 1.0 / self.present_weight;
            let mut values = self.acc;
            values.resize(self.rows * self.cols, 0.0);
            values.iter_mut().for_each(|a| *a *= scale);
            Tensor::matrix(self.rows, self.cols, values)
        });
        let reports = status
            .into_iter()
            .enumerate()
            .map(|(m, status)| MemberReport {
                name: self.names[m].clone(),
                device: self.devices[m].clone(),
                elapsed: self.elapsed[m],
                device_time: self.device_time[m],
                output: self.outputs[m].clone(),
                status,
            })
            .collect();
        (aggregate, reports)
    }
}

/// Whether a run with these member statuses satisfies `quorum`.
fn verdict(
    status: &[MemberStatus],
    names: &[String],
    quorum: QuorumPolicy,
    timeout: Option<Duration>,
    finished: usize,
) -> Result<()> {
    match quorum {
        QuorumPolicy::RequireAll => {
            if let Some(MemberStatus::Failed(e)) =
                status.iter().find(|s| matches!(s, MemberStatus::Failed(_)))
            {
                return Err(e.clone());
            }
            if finished < status.len() {
                return Err(Error::DeadlineExceeded {
                    timeout: timeout.unwrap_or_default(),
                    missing: status
                        .iter()
                        .zip(names)
                        .filter(|(s, _)| matches!(s, MemberStatus::Late))
                        .map(|(_, n)| n.clone())
                        .collect(),
                });
            }
            Ok(())
        }
        QuorumPolicy::Quorum(k) if finished < k => Err(Error::QuorumNotMet {
            required: k,
            finished,
            members: status.len(),
            missing: status
                .iter()
                .zip(names)
                .filter_map(|(s, name)| match s {
                    MemberStatus::Finished => None,
                    MemberStatus::Late => Some(format!("{name}: late")),
                    MemberStatus::Failed(e) => Some(format!("{name}: {e}")),
                })
                .collect(),
        }),
        QuorumPolicy::Quorum(_) => Ok(()),
    }
}
