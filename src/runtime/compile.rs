//! Compiling a graph: every placement resolved to a device (creating the devices),
//! and one executor built per device (the session, and the pipeline by default) or per
//! member (a pipeline with `PipelineOptions::worker_per_member`).

use std::sync::Arc;

use crate::cpu::CpuExecutor;
use crate::error::{Error, Result};
use crate::exec::{Executor, MemberSpec};
use crate::gpu::{DevicePool, GpuContext, GpuExecutor, Tuner, LLVMPIPE_SMALL_INPUTS};
use crate::graph::{Graph, Member};
use crate::options::SessionOptions;
use crate::placement::{is_llvmpipe, ExecutionDevice, Placement};

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
    for (index, member) in graph.members.iter().enumerate() {
        let (key, ctx) = resolver.resolve(member)?;
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
        let (device, executor): (ExecutionDevice, Box<dyn Executor>) = match ctx {
            None => (
                ExecutionDevice::Cpu,
                Box::new(CpuExecutor::new(
                    &specs,
                    mode,
                    graph.output_width,
                    options.precision,
                )),
            ),
            Some(ctx) => (
                ctx.label.clone(),
                Box::new(GpuExecutor::new(
                    ctx,
                    &specs,
                    (mode, graph.input_width, graph.output_width),
                    options,
                    &tuner,
                )?),
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

    /// The group key of `member`'s device, and its context (`None` on the CPU).
    fn resolve(&mut self, member: &Member) -> Result<(Key, Option<GpuContext>)> {
        Ok(match &member.placement {
            Placement::Cpu => (Key::Cpu, None),
            Placement::Adapter(a) => {
                let ctx = self.pool().open(&member.name, *a, 0)?;
                (Key::Adapter(*a, 0), Some(ctx))
            }
            Placement::Queue { adapter, slot } => {
                let ctx = self.pool().open(&member.name, *adapter, *slot)?;
                (Key::Adapter(*adapter, *slot), Some(ctx))
            }
            Placement::Auto => {
                // A layer longer than llvmpipe computes correctly runs on the CPU
                // rather than there (see the GPU backend's LLVMPIPE_SMALL_INPUTS).
                let too_long = member.model.longest_layer().1 > LLVMPIPE_SMALL_INPUTS;
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
                    let ctx = self.pool().open(&member.name, a, 0)?;
                    (Key::Adapter(a, 0), Some(ctx))
                }
            }
            Placement::Device(ext) => {
                // One context per device: creating it installs the device's error
                // handlers, which must report to the context that is kept.
                let existing = self.external.iter().find(|c| c.id == ext.id).cloned();
                let ctx = existing.unwrap_or_else(|| {
                    let ctx = GpuContext::new(
                        ext.device.clone(),
                        ext.queue.clone(),
                        ExecutionDevice::External {
                            label: ext.label.clone(),
                        },
                        None,
                    )
                    .with_id(ext.id);
                    self.external.push(ctx.clone());
                    ctx
                });
                (Key::External(ext.id), Some(ctx))
            }
        })
    }
}
