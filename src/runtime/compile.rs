//! Compiling a graph: every placement resolved to a device (creating the devices),
//! and one executor built per device (the session, and the pipeline by default) or per
//! member (a pipeline with `PipelineOptions::worker_per_member`).

use std::sync::Arc;

use crate::aggregate::Mode;
use crate::cpu::CpuExecutor;
use crate::error::{Error, Result};
use crate::exec::{Executor, MemberSpec};
use crate::gpu::{DevicePool, GpuContext, GpuExecutor, Tuner, LLVMPIPE_SMALL_INPUTS};
use crate::graph::Graph;
use crate::model::{Dense, Model};
use crate::options::SessionOptions;
use crate::placement::{is_llvmpipe, ExecutionDevice, Placement};
use crate::runtime::split::{ColumnJoin, PartWorker, Plan, SplitExecutor};
use crate::split::{column_models, inputs_of, stage_models, SplitKind};

/// One compiled device (or member, for a pipeline with a worker per member): where it
/// runs, which graph members it holds, and its executor.
pub(crate) struct Compiled {
    pub(crate) device: ExecutionDevice,
    pub(crate) members: Vec<usize>,
    pub(crate) executor: Box<dyn Executor>,
}

/// Which members share an executor.
#[derive(PartialEq)]
enum Key {
    Cpu,
    Adapter(usize, usize),
    /// A device the caller handed in, by its process-unique id (`wgpu::Device`'s
    /// own `==` compares per-instance handle ids: devices of two instances can be
    /// equal by it).
    External(u64),
    /// One group per member (a pipeline's workers with `worker_per_member`).
    Member(usize),
}

/// Resolves every placement, creates the devices, and builds one executor per device
/// (`per_member == false`: the session, and the pipeline by default) or per member (a
/// pipeline with `worker_per_member`, where members on one device share the device but
/// each has its own executor).
pub(crate) fn compile(
    graph: &Graph,
    options: &SessionOptions,
    per_member: bool,
) -> Result<Vec<Compiled>> {
    check(graph, options)?;
    let mut resolver = Resolver {
        options,
        pool: None,
        auto_next: 0,
        external: Vec::new(),
    };
    let mut groups: Vec<(Key, Option<GpuContext>, Vec<usize>)> = Vec::new();
    let mut splits: Vec<(usize, Vec<Option<GpuContext>>)> = Vec::new();
    for (index, member) in graph.members.iter().enumerate() {
        if let Some(split) = &member.split {
            let contexts = split
                .devices()
                .iter()
                .map(|p| {
                    resolver
                        .resolve(&member.name, &member.model, p, true)
                        .map(|r| r.1)
                })
                .collect::<Result<Vec<_>>>()?;
            splits.push((index, contexts));
            continue;
        }
        let (key, ctx) = resolver.resolve(&member.name, &member.model, &member.placement, false)?;
        let key = if per_member { Key::Member(index) } else { key };
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(group) => group.2.push(index),
            None => groups.push((key, ctx, vec![index])),
        }
    }

    let mode = graph.aggregate.mode();
    let blend = blend_blocks(graph)?;
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
                blend: blend[i].clone(),
                first_layer: 0,
            })
            .collect();
        let (device, executor) = executor(
            ctx,
            &specs,
            (mode, graph.input_width, graph.output_width),
            options,
            &tuner,
        )?;
        compiled.push(Compiled {
            device,
            members,
            executor,
        });
    }
    for (index, contexts) in splits {
        let blend = blend[index].clone();
        compiled.push(split_executor(
            graph,
            (index, blend),
            contexts,
            options,
            &tuner,
        )?);
    }
    // The workers in the members' order (a split member's worker was built last).
    compiled.sort_by_key(|c| c.members.first().copied().unwrap_or(usize::MAX));
    Ok(compiled)
}

/// Each member's share of an [`Aggregate::Stack`](crate::Aggregate::Stack)'s blender:
/// the columns of its first layer that the member's output meets (member `i`'s
/// `i × output_width` onwards), linear, without the bias (the aggregate node adds it);
/// `None` for every member without a blender.
fn blend_blocks(graph: &Graph) -> Result<Vec<Option<Arc<Dense>>>> {
    let n = graph.members.len();
    let Some(first) = graph.aggregate.blender().and_then(|b| b.layers().first()) else {
        return Ok(vec![None; n]);
    };
    let width = graph.output_width;
    (0..n)
        .map(|i| inputs_of(first, i * width..(i + 1) * width).map(|d| Some(Arc::new(d))))
        .collect()
}

/// An executor of `specs` on `ctx`'s device, or on the host CPU without one.
fn executor(
    ctx: Option<GpuContext>,
    specs: &[MemberSpec],
    (mode, input_width, output_width): (Mode, usize, usize),
    options: &SessionOptions,
    tuner: &Tuner,
) -> Result<(ExecutionDevice, Box<dyn Executor>)> {
    Ok(match ctx {
        None => (
            ExecutionDevice::Cpu,
            Box::new(CpuExecutor::new(
                specs,
                mode,
                output_width,
                options.precision,
            )),
        ),
        Some(ctx) => (
            ctx.label.clone(),
            Box::new(GpuExecutor::new(
                ctx,
                specs,
                (mode, input_width, output_width),
                options,
                tuner,
            )?),
        ),
    })
}

/// The executor of member `index` (with its share of a blender), split across the
/// devices of `contexts` (one per part, `None` for the CPU): an executor per stage, or
/// per column step and part, each holding one sub-model as a member of weight 1 under
/// a mean.
fn split_executor(
    graph: &Graph,
    (index, blend): (usize, Option<Arc<Dense>>),
    contexts: Vec<Option<GpuContext>>,
    options: &SessionOptions,
    tuner: &Tuner,
) -> Result<Compiled> {
    let member = &graph.members[index];
    let Some(split) = &member.split else {
        return Err(Error::WorkerFailed {
            device: "split".into(),
            message: format!("member '{}' is not split", member.name),
        });
    };
    let sub = |model: Model, first_layer: usize| MemberSpec {
        index: 0,
        name: member.name.clone(),
        model: Arc::new(model),
        weight: 1.0,
        blend: None,
        first_layer,
    };
    let mut devices = vec![ExecutionDevice::Cpu; contexts.len()];
    // Each part's executors: a stage's one, or one per column step.
    let mut executors: Vec<Vec<Box<dyn Executor>>> =
        (0..contexts.len()).map(|_| Vec::new()).collect();
    let plan = match split.kind() {
        SplitKind::Layers => {
            let stages = split.stages(&member.model);
            let models = stage_models(&member.model, &stages)?;
            for (s, (model, ctx)) in models.into_iter().zip(&contexts).enumerate() {
                let (inp, out) = (model.in_features(), model.out_features());
                let spec = sub(model, stages[s].start);
                let (device, e) = executor(
                    ctx.clone(),
                    &[spec],
                    (Mode::Values, inp, out),
                    options,
                    tuner,
                )?;
                devices[s] = device;
                executors[s].push(e);
            }
            Plan::Layers {
                micro_batches: split.micro_batches_or_default(),
            }
        }
        SplitKind::Columns => {
            let steps = column_models(&member.model, contexts.len())?;
            let mut joins = Vec::with_capacity(steps.len());
            for step in steps {
                for (p, (model, ctx)) in step.parts.into_iter().zip(&contexts).enumerate() {
                    let (inp, width) = (model.in_features(), model.out_features());
                    let spec = sub(model, step.first);
                    let (device, e) = executor(
                        ctx.clone(),
                        &[spec],
                        (Mode::Values, inp, width),
                        options,
                        tuner,
                    )?;
                    devices[p] = device;
                    executors[p].push(e);
                }
                joins.push(ColumnJoin {
                    join: step.join,
                    output_width: step.output_width,
                });
            }
            Plan::Columns(joins)
        }
    };
    let parts = executors
        .into_iter()
        .zip(&devices)
        .enumerate()
        .map(|(p, (e, device))| PartWorker::spawn(&member.name, p, device.to_string(), e))
        .collect::<Result<Vec<_>>>()?;
    Ok(Compiled {
        device: ExecutionDevice::Split {
            kind: split.kind(),
            parts: devices,
        },
        members: vec![index],
        executor: Box::new(SplitExecutor {
            index,
            weight: graph.weights[index],
            mode: graph.aggregate.mode(),
            output_width: graph.output_width,
            blend,
            plan,
            parts,
        }),
    })
}

/// What is checked before any device is made: the fault plan names only members of
/// the graph, and an f16 precision can hold every weight.
fn check(graph: &Graph, options: &SessionOptions) -> Result<()> {
    let names: Vec<&str> = graph.members.iter().map(|m| m.name.as_str()).collect();
    if let Some(member) = options.faults.unknown_member(&names) {
        return Err(Error::FaultUnknownMember {
            member: crate::error::excerpt(member),
            members: names.iter().map(|n| n.to_string()).collect(),
        });
    }
    let parts = |name: &str| {
        graph
            .members
            .iter()
            .find(|m| m.name == name)
            .map_or(1, |m| m.split.as_ref().map_or(1, |s| s.devices().len()))
    };
    if let Some((member, part)) = options.faults.unknown_part(parts) {
        return Err(Error::invalid(
            "fault plan part",
            &format!(
                "part {part} of member '{member}', which has {}",
                parts(member)
            ),
            "a part below the member's number of devices (0 for a member that is not split)",
        ));
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
    Ok(())
}

/// Turns placements into devices: the adapters' pool (enumerated on first need),
/// `Auto`'s round-robin, and one context per device the caller handed in.
struct Resolver<'a> {
    options: &'a SessionOptions,
    pool: Option<DevicePool>,
    auto_next: usize,
    external: Vec<GpuContext>,
}

impl Resolver<'_> {
    fn pool(&mut self) -> &mut DevicePool {
        let options = self.options;
        self.pool.get_or_insert_with(|| {
            DevicePool::new(options.precision).with_timing(options.device_timing)
        })
    }

    /// The group key of `placement`'s device for member `name` (of `model`), and its
    /// context (`None` on the CPU). With `own`, a device on an adapter is one of its
    /// own (a split member's part), not the one other members there share.
    fn resolve(
        &mut self,
        name: &str,
        model: &Model,
        placement: &Placement,
        own: bool,
    ) -> Result<(Key, Option<GpuContext>)> {
        let open = |pool: &mut DevicePool, a: usize, slot: usize| {
            if own {
                pool.open_own(name, a, slot)
            } else {
                pool.open(name, a, slot)
            }
        };
        Ok(match placement {
            Placement::Cpu => (Key::Cpu, None),
            Placement::Adapter(a) => {
                let ctx = open(self.pool(), *a, 0)?;
                (Key::Adapter(*a, 0), Some(ctx))
            }
            Placement::Queue { adapter, slot } => {
                let ctx = open(self.pool(), *adapter, *slot)?;
                (Key::Adapter(*adapter, *slot), Some(ctx))
            }
            Placement::Auto => {
                // A layer longer than llvmpipe computes correctly runs on the CPU
                // rather than there (see the GPU backend's LLVMPIPE_SMALL_INPUTS).
                let too_long = model.longest_layer().1 > LLVMPIPE_SMALL_INPUTS;
                let pool = self.pool();
                let usable: Vec<usize> = pool
                    .usable()
                    .into_iter()
                    .filter(|&a| {
                        !(too_long
                            && pool
                                .infos
                                .get(a)
                                .is_some_and(|i| is_llvmpipe(&i.name, &i.driver)))
                    })
                    .collect();
                if usable.is_empty() {
                    (Key::Cpu, None)
                } else {
                    self.auto_next += 1;
                    let a = usable[(self.auto_next - 1) % usable.len()];
                    let ctx = open(self.pool(), a, 0)?;
                    (Key::Adapter(a, 0), Some(ctx))
                }
            }
            Placement::Device(ext) => {
                // One context per device: creating it installs the device's error
                // handlers, which must report to the context that is kept.
                let existing = self.external.iter().find(|c| c.id == ext.id).cloned();
                let ctx = existing.unwrap_or_else(|| {
                    let ctx = GpuContext::external(ext);
                    self.external.push(ctx.clone());
                    ctx
                });
                (Key::External(ext.id), Some(ctx))
            }
        })
    }
}
