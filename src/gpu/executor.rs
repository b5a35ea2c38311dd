//! The forward pass of every member placed on one device, encoded into one command
//! buffer per run (per chunk, for batches larger than one buffer allows).
//!
//! Members of one shape (the same layer widths and activations), wherever they stand in
//! the graph, run as a *stack*: their weights, biases and activations each live in one
//! buffer, member after member, and every layer is one dispatch for the whole stack
//! (member z on `workgroup_id.z`), as is the aggregate. An ensemble of four identical
//! MLPs of three layers is four dispatches per run instead of sixteen; on a GPU every
//! dispatch is followed by a barrier, so at small batches their count is the latency.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::kernels::{
    dense_coop, Kernels, AGGREGATE, DENSE_SMALL, DENSE_SMALL_F16, MAX_STACK, SMALL_GROUPS_X,
    SMALL_ROWS, SOFTMAX, SOFTMAX_AGGREGATE,
};
use super::timing::{self, PassTimer};
use super::tune::Tuner;
use super::GpuContext;
use crate::aggregate::Mode;
use crate::error::{Error, Result};
use crate::model::{Activation, Model};
use crate::session::{Precision, SessionOptions};
use crate::worker::{DeviceOutput, MemberSpec};

/// `Params` of the dense kernels; softmax.wgsl reads its `rows`, `out_features` (as
/// its columns) and `y_stride`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DenseParams {
    rows: u32,
    out_features: u32,
    in_features: u32,
    /// Values from one member's x, w, b and y to the next member's in the stacked
    /// buffers (x: 0 for the first layer, whose input all members share).
    x_stride: u32,
    w_stride: u32,
    b_stride: u32,
    y_stride: u32,
    _pad: u32,
}

/// Inputs up to which llvmpipe computes a layer correctly with any tiled kernel
/// (Mesa 22.3: 5120 with the 128 × 128 scalar tiles, 8192 with `vec4` ones).
pub(crate) const LLVMPIPE_TILED_INPUTS: usize = 4096;
/// Inputs up to which llvmpipe computes a layer correctly with the small-batch
/// kernels (Mesa 22.3: 786 432 in f16 at 16 rows, 2 097 152 in f32).
pub(crate) const LLVMPIPE_SMALL_INPUTS: usize = 524_288;

/// `Params` of aggregate.wgsl and softmax_aggregate.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AggregateParams {
    rows: u32,
    cols: u32,
    members: u32,
    /// Bit z set: member z of the stack takes part in this run.
    present: u32,
    y_stride: u32,
    _pad: [u32; 3],
    weights: [f32; MAX_STACK],
}

/// One layer of a stack.
struct GpuLayer {
    in_features: usize,
    out_features: usize,
    /// Followed by a softmax dispatch (a hidden layer ending in softmax; the last
    /// layer's softmax is fused into the aggregate dispatch instead).
    softmax: bool,
    /// Tiled pipeline (register-tiled or cooperative-matrix) for more than
    /// `SMALL_ROWS` rows, and the outputs and rows of y one of its workgroups computes.
    tiled: wgpu::ComputePipeline,
    tile_cols: u32,
    tile_rows: u32,
    /// Pipeline for at most `SMALL_ROWS` rows.
    small: wgpu::ComputePipeline,
    /// The members' weights (biases), `w_stride` (`b_stride`) values apart.
    weight: wgpu::Buffer,
    w_stride: u32,
    bias: wgpu::Buffer,
    b_stride: u32,
    params: wgpu::Buffer,
}

/// Members of one shape, run together (see the module's documentation).
struct GpuStack {
    /// Graph index and aggregate weight of each member, in the order given.
    members: Vec<(usize, f32)>,
    layers: Vec<GpuLayer>,
    /// The last layer ends in softmax: its softmax is fused with the aggregate.
    fused_softmax: bool,
    aggregate_params: wgpu::Buffer,
}

// Every count and stride cast to u32 below is a number of values in one buffer, of at
// most 4 GiB (`max_bytes` is capped there) in values of 2 bytes or more: it fits.

/// Buffers and bind groups that depend on the number of rows, grown on demand.
struct RowBuffers {
    capacity: usize,
    input: wgpu::Buffer,
    acc: wgpu::Buffer,
    staging_acc: wgpu::Buffer,
    stacks: Vec<StackRows>,
}

struct StackRows {
    /// Each layer's output for every member of the stack, `y_strides[l]` values apart.
    outputs: Vec<wgpu::Buffer>,
    y_strides: Vec<u32>,
    dense_groups: Vec<wgpu::BindGroup>,
    softmax_groups: Vec<Option<wgpu::BindGroup>>,
    aggregate_group: wgpu::BindGroup,
    /// One per member, for its own output when asked.
    staging: Vec<wgpu::Buffer>,
}

/// What the uniform buffers were last written for: rows, row capacity, and the
/// present-member mask of every stack.
type UniformKey = (usize, usize, Vec<u32>);

/// The pipelines, weights and buffers of the members on one live device.
struct DeviceState {
    ctx: GpuContext,
    kernels: Kernels,
    softmax: wgpu::ComputePipeline,
    aggregate: wgpu::ComputePipeline,
    softmax_aggregate: wgpu::ComputePipeline,
    stacks: Vec<GpuStack>,
    input_width: usize,
    output_width: usize,
    /// Most rows one submission handles (buffer size and dispatch limits).
    chunk_rows: usize,
    operation_timeout: Duration,
    spin_wait: Duration,
    uniforms: Option<UniformKey>,
    rows: Option<RowBuffers>,
    /// Times the members' pass ([`SessionOptions::device_timing`]).
    timer: Option<PassTimer>,
}

/// How long a run waits, at least, for the map callbacks of work its wait saw done
/// (another thread's wait on the same device may be running them).
pub(crate) const CALLBACK_GRACE: Duration = Duration::from_secs(1);

/// Polls `device` without blocking until its queue is empty (every submission
/// finished; its callbacks run by this poll, or by another thread's on the same
/// device, which may still be running them) or `limit` has passed, yielding the core between
/// polls (on lavapipe the device's work runs on the CPU's cores); whether it emptied.
/// An error ends the spin: the blocking wait that follows reports it.
fn spin(device: &wgpu::Device, limit: Duration) -> bool {
    crate::worker::spin_until(limit, || match device.poll(wgpu::PollType::Poll) {
        Ok(status) if status.is_queue_empty() => ControlFlow::Break(Some(())),
        Ok(_) => ControlFlow::Continue(()),
        Err(_) => ControlFlow::Break(None),
    })
    .is_some()
}

fn bytes_of(values: usize) -> u64 {
    (values * std::mem::size_of::<f32>()) as u64
}

/// Values from one member's part of a stacked buffer to the next: `values` rounded up
/// to whole vectors of four (the kernels read x and w four at a time).
fn stride(values: usize) -> usize {
    values.next_multiple_of(4)
}

/// f32 values rounded to f16, as little-endian bytes.
fn le_bytes_f16(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

/// Copies mapped bytes into `dst` without assuming the mapping's alignment.
fn copy_f32(dst: &mut [f32], bytes: &[u8]) {
    match bytemuck::try_cast_slice::<u8, f32>(bytes) {
        Ok(src) => dst.copy_from_slice(src),
        Err(_) => {
            for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *d = f32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// (stack, member in the stack) of every member `present` marks (bit z of
/// `present[s]`), stack after stack: the order of a run's member outputs, each
/// labelled with its graph index.
fn present_members<'a>(
    stacks: &'a [GpuStack],
    present: &'a [u32],
) -> impl Iterator<Item = (usize, usize)> + 'a {
    stacks
        .iter()
        .zip(present)
        .enumerate()
        .flat_map(|(s, (stack, &mask))| {
            (0..stack.members.len())
                .filter(move |z| mask >> z & 1 == 1)
                .map(move |z| (s, z))
        })
}

/// The same layer widths and activations.
fn same_shape(a: &Model, b: &Model) -> bool {
    a.layers().len() == b.layers().len()
        && a.layers().iter().zip(b.layers()).all(|(x, y)| {
            (x.in_features(), x.out_features(), x.activation())
                == (y.in_features(), y.out_features(), y.activation())
        })
}

/// The most rows whose activations, `outputs` values a row for each of `members`
/// members (each member's part rounded up by [`stride`]), fit in `max_bytes`: the rule
/// [`plan_stacks`] admits a member by.
fn stack_rows(max_bytes: u64, members: usize, outputs: usize) -> usize {
    // stride(r * outputs) <= v, v a multiple of 4, exactly when r * outputs <= v.
    let per_member = (max_bytes / 4 / members as u64) & !3;
    usize::try_from(per_member / outputs as u64).unwrap_or(usize::MAX)
}

/// Groups `models` into stacks of one shape, each at most `MAX_STACK` long and as long
/// as its stacked buffers stay within `max_bytes`: weights (`weight_bytes` per value)
/// and the activations of `rows` rows. A model joins the latest stack of its shape
/// (wherever its members stand in the graph) while that one has room, else starts a
/// new one; stacks are ordered by their first member, members within a stack by
/// index. A model alone is always a stack (its own limits are checked elsewhere).
fn plan_stacks(
    models: &[&Model],
    weight_bytes: u64,
    max_bytes: u64,
    rows: usize,
) -> Vec<Vec<usize>> {
    let fits = |model: &Model, n: u64| {
        model.layers().iter().all(|l| {
            let (out_f, in_f) = (l.out_features(), l.in_features());
            n * stride(out_f * in_f) as u64 * weight_bytes <= max_bytes
                && n * bytes_of(stride(out_f)) <= max_bytes
                && stack_rows(max_bytes, n as usize, out_f) >= rows
        })
    };
    let mut stacks: Vec<Vec<usize>> = Vec::new();
    for (i, model) in models.iter().enumerate() {
        let latest = stacks
            .iter_mut()
            .rev()
            .find(|s| same_shape(models[s[0]], model));
        match latest {
            Some(s) if s.len() < MAX_STACK && fits(model, s.len() as u64 + 1) => s.push(i),
            _ => stacks.push(vec![i]),
        }
    }
    stacks
}

impl DeviceState {
    /// Uploads the weights of `members`, creates their pipelines, and checks that the
    /// device can hold them. `max_buffer_bytes` caps every buffer below the device's
    /// own limit (chunks get smaller).
    fn new(
        ctx: GpuContext,
        members: &[MemberSpec],
        mode: Mode,
        input_width: usize,
        output_width: usize,
        options: &SessionOptions,
        tuner: &Tuner,
    ) -> Result<Self> {
        let precision = options.precision;
        let device = &ctx.device;
        let coop = super::check_precision(&ctx, precision)?;
        let timer = match options.device_timing.then(|| PassTimer::new(&ctx)) {
            None => None,
            Some(Some(timer)) => Some(timer),
            Some(None) => {
                return Err(Error::DeviceTimingUnsupported {
                    device: ctx.label.to_string(),
                })
            }
        };
        let limits = device.limits();
        // At most 4 GiB: the kernels index buffers with u32, in values of 2 bytes or
        // more, so no index (a member's offset in a stack included) can overflow.
        let max_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(options.max_buffer_bytes.unwrap_or(u64::MAX))
            .min(u64::from(u32::MAX));
        let too_large = |what: String, bytes: u64| Error::BufferTooLarge {
            what,
            device: ctx.label.to_string(),
            bytes,
            limit: max_bytes,
        };
        let (small_kernel, weight_bytes) = match precision {
            Precision::F32 => (DENSE_SMALL, 4),
            Precision::F16 | Precision::F16CoopMatrix => (DENSE_SMALL_F16, 2),
        };
        // Every member's own buffers must fit before any are stacked.
        let mut widest = input_width.max(output_width);
        for spec in members {
            for (l, layer) in spec.model.layers().iter().enumerate() {
                let (out_f, in_f) = (layer.out_features(), layer.in_features());
                widest = widest.max(out_f);
                let bytes = stride(out_f * in_f) as u64 * weight_bytes;
                if bytes > max_bytes {
                    return Err(too_large(
                        format!("member '{}' layer {l} weight [{out_f}, {in_f}]", spec.name),
                        bytes,
                    ));
                }
            }
        }
        // llvmpipe (lavapipe, GL llvmpipe) ends a shader invocation after 65535 loop
        // iterations in all, silently. With Mesa 22.3 the tiled kernels' sums came out
        // wrong past 5120 to 32768 inputs, depending on the tile; the small-batch
        // kernel held past 786 432. There, a device with a longer layer runs every
        // batch in chunks the small kernel takes, and a layer longer than that is
        // refused. (Mesa 26.2 held every kernel to 32 769 and more: the bounds are
        // the older driver's.)
        let llvmpipe = ctx.adapter.as_ref().is_some_and(|a| {
            let info = a.get_info();
            crate::device::is_llvmpipe(&info.name, &info.driver)
        });
        let mut longest = 0;
        if llvmpipe {
            for spec in members {
                let (layer, inputs) = spec.model.longest_layer();
                longest = longest.max(inputs);
                if inputs > LLVMPIPE_SMALL_INPUTS {
                    return Err(Error::InputsBeyondDriver {
                        member: spec.name.clone(),
                        layer,
                        inputs,
                        limit: LLVMPIPE_SMALL_INPUTS,
                        device: ctx.label.to_string(),
                    });
                }
            }
        }
        // 16 bytes of room for the rounding of buffer sizes (see ensure_capacity), and
        // the timestamps after the aggregate in its staging buffer.
        let room = 16 + timer.as_ref().map_or(0, |_| timing::BYTES);
        let by_bytes = usize::try_from(max_bytes.saturating_sub(room) / bytes_of(widest))
            .unwrap_or(usize::MAX);
        // Softmax dispatches one workgroup per row; the dense and aggregate kernels
        // need fewer groups per row than that.
        let mut unstacked_rows = by_bytes.min(limits.max_compute_workgroups_per_dimension as usize);
        if longest > LLVMPIPE_TILED_INPUTS {
            unstacked_rows = unstacked_rows.min(SMALL_ROWS);
        }
        if unstacked_rows == 0 {
            return Err(too_large(
                format!("one row of {widest} values"),
                bytes_of(widest),
            ));
        }
        // Stacks are for small batches: one never makes a chunk of up to 1024 rows
        // smaller than the members alone would.
        let models: Vec<&Model> = members.iter().map(|m| m.model.as_ref()).collect();
        let plan = plan_stacks(&models, weight_bytes, max_bytes, unstacked_rows.min(1024));

        let mut kernels = Kernels::new(device, options.trusted_kernels);
        let softmax = kernels.pipeline(device, SOFTMAX, &[])?;
        let aggregate = kernels.pipeline(device, AGGREGATE, &[("MODE", mode as u32)])?;
        let softmax_aggregate =
            kernels.pipeline(device, SOFTMAX_AGGREGATE, &[("MODE", mode as u32)])?;
        let mut chunk_rows = unstacked_rows;
        let mut stacks = Vec::with_capacity(plan.len());
        for indices in plan {
            let specs: Vec<&MemberSpec> = indices.iter().map(|&i| &members[i]).collect();
            let n = specs.len();
            let model = &specs[0].model;
            let count = model.layers().len();
            let fused_softmax = model.layers()[count - 1].activation() == Activation::Softmax;
            let mut layers = Vec::with_capacity(count);
            for (l, layer) in model.layers().iter().enumerate() {
                let (out_f, in_f) = (layer.out_features(), layer.in_features());
                // The activations of the stack's members share a buffer.
                chunk_rows = chunk_rows.min(stack_rows(max_bytes, n, out_f));
                let act = layer.activation().shader_code();
                let (tiled_kernel, constants, tile_cols, tile_rows) = match coop {
                    Some(base) => {
                        let c = tuner.choose_coop(&ctx, &mut kernels, base, (out_f, in_f), n)?;
                        let constants = c.constants(act).to_vec();
                        (dense_coop(c.size), constants, c.tile_cols(), c.tile_rows())
                    }
                    None => {
                        let t = tuner.choose(&ctx, &mut kernels, precision, (out_f, in_f), n)?;
                        let kernel = t.kernel(precision, in_f);
                        (
                            kernel,
                            t.constants(act, kernel),
                            t.tile_cols(),
                            t.tile_rows(),
                        )
                    }
                };
                let groups = (out_f as u64).div_ceil(u64::from(tile_cols));
                if groups > u64::from(limits.max_compute_workgroups_per_dimension) {
                    return Err(Error::DispatchTooLarge {
                        what: format!("member '{}' layer {l} with {out_f} outputs", specs[0].name),
                        device: ctx.label.to_string(),
                        groups,
                        limit: limits.max_compute_workgroups_per_dimension,
                    });
                }
                let (w_stride, b_stride) = (stride(out_f * in_f), stride(out_f));
                let weight = stacked_buffer(
                    device,
                    "weights",
                    n as u64 * w_stride as u64 * weight_bytes,
                    specs.iter().enumerate().map(|(z, s)| {
                        let values = s.model.layers()[l].weight().as_slice();
                        let bytes = match precision {
                            Precision::F32 => Cow::Borrowed(bytemuck::cast_slice(values)),
                            Precision::F16 | Precision::F16CoopMatrix => {
                                Cow::Owned(le_bytes_f16(values))
                            }
                        };
                        (z as u64 * w_stride as u64 * weight_bytes, bytes)
                    }),
                )
                .map_err(|e| gpu_error(&ctx, &e))?;
                let bias = stacked_buffer(
                    device,
                    "biases",
                    bytes_of(n * b_stride),
                    specs.iter().enumerate().map(|(z, s)| {
                        let values = s.model.layers()[l].bias();
                        (
                            bytes_of(z * b_stride),
                            Cow::Borrowed(bytemuck::cast_slice(values)),
                        )
                    }),
                )
                .map_err(|e| gpu_error(&ctx, &e))?;
                layers.push(GpuLayer {
                    in_features: in_f,
                    out_features: out_f,
                    softmax: layer.activation() == Activation::Softmax && l + 1 < count,
                    tiled: kernels.pipeline(device, tiled_kernel, &constants)?,
                    tile_cols,
                    tile_rows,
                    small: kernels.pipeline(device, small_kernel, &[("ACT", act)])?,
                    weight,
                    w_stride: w_stride as u32,
                    bias,
                    b_stride: b_stride as u32,
                    params: device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("dense params"),
                        size: std::mem::size_of::<DenseParams>() as u64,
                        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    }),
                });
            }
            stacks.push(GpuStack {
                members: specs.iter().map(|s| (s.index, s.weight)).collect(),
                layers,
                fused_softmax,
                aggregate_params: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("aggregate params"),
                    size: std::mem::size_of::<AggregateParams>() as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
            });
        }
        if chunk_rows == 0 {
            return Err(too_large(
                format!("one row of {widest} values"),
                bytes_of(widest),
            ));
        }
        if let Some(e) = ctx.take_error() {
            return Err(e);
        }
        Ok(Self {
            ctx,
            kernels,
            softmax,
            aggregate,
            softmax_aggregate,
            stacks,
            input_width,
            output_width,
            chunk_rows,
            operation_timeout: options.operation_timeout,
            spin_wait: options.spin_wait,
            uniforms: None,
            rows: None,
            timer,
        })
    }

    /// Drops the row buffers; the next run makes new ones. Used after a failed or
    /// timed-out submission, whose buffers may still be in use or mapped.
    pub(crate) fn reset(&mut self) {
        self.rows = None;
        self.uniforms = None;
    }

    /// Runs every member on `input` (`[rows, input_width]`, already validated) except
    /// the graph members listed in `skip`.
    fn run(&mut self, input: &[f32], want_members: bool, skip: &[usize]) -> Result<DeviceOutput> {
        let started = Instant::now();
        let rows = input.len() / self.input_width;
        let out = self.output_width;
        // Bit z of present[s]: member z of stack s runs. A skipped member of a stack
        // is still computed with the others, but adds nothing and is not read back.
        let present: Vec<u32> = self
            .stacks
            .iter()
            .map(|s| {
                s.members
                    .iter()
                    .enumerate()
                    .filter(|(_, (index, _))| !skip.contains(index))
                    .fold(0, |mask, (z, _)| mask | 1 << z)
            })
            .collect();
        let included: Vec<usize> = present_members(&self.stacks, &present)
            .map(|(s, z)| self.stacks[s].members[z].0)
            .collect();
        let mut partial = vec![0.0f32; rows * out];
        let mut member_outputs: Vec<(usize, Vec<f32>)> = if want_members {
            included
                .iter()
                .map(|&index| (index, vec![0.0f32; rows * out]))
                .collect()
        } else {
            Vec::new()
        };
        let mut device_time = self.timer.as_ref().map(|_| Duration::ZERO);
        let mut start = 0;
        while start < rows {
            let n = self.chunk_rows.min(rows - start);
            let x = &input[start * self.input_width..(start + n) * self.input_width];
            let result = self.run_chunk(
                x,
                n,
                &present,
                &mut partial[start * out..(start + n) * out],
                &mut member_outputs,
                start * out,
            );
            match result {
                Ok(time) => {
                    if let (Some(total), Some(time)) = (&mut device_time, time) {
                        *total += time;
                    }
                }
                Err(e) => {
                    self.reset();
                    return Err(e);
                }
            }
            start += n;
        }
        Ok(DeviceOutput {
            partial,
            members: member_outputs,
            present: included,
            failed: Vec::new(),
            elapsed: started.elapsed(),
            device_time,
        })
    }

    fn ensure_capacity(&mut self, rows: usize) {
        if self.rows.as_ref().is_some_and(|r| r.capacity >= rows) {
            return;
        }
        let capacity = rows.next_power_of_two().min(self.chunk_rows).max(rows);
        let device = &self.ctx.device;
        // Sizes rounded up to 16 bytes: the kernels read x four values at a time.
        let buffer = |label: &str, values: usize, usage: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes_of(values).next_multiple_of(16),
                usage,
                mapped_at_creation: false,
            })
        };
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let staging = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let input = buffer(
            "input",
            capacity * self.input_width,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        );
        let acc = buffer(
            "aggregate",
            capacity * self.output_width,
            storage | wgpu::BufferUsages::COPY_DST,
        );
        // With the pass's two timestamps after the aggregate (see run_chunk).
        let stamps = self.timer.as_ref().map_or(0, |_| timing::BYTES);
        let staging_acc = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("aggregate staging"),
            size: bytes_of(capacity * self.output_width).next_multiple_of(16) + stamps,
            usage: staging,
            mapped_at_creation: false,
        });
        let bind = |layout: &wgpu::BindGroupLayout, buffers: &[&wgpu::Buffer]| {
            let entries: Vec<wgpu::BindGroupEntry> = buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: b.as_entire_binding(),
                })
                .collect();
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout,
                entries: &entries,
            })
        };
        let stacks = self
            .stacks
            .iter()
            .map(|s| {
                let n = s.members.len();
                let y_strides: Vec<u32> = s
                    .layers
                    .iter()
                    .map(|l| stride(capacity * l.out_features) as u32)
                    .collect();
                let outputs: Vec<wgpu::Buffer> = y_strides
                    .iter()
                    .map(|&y| buffer("activations", n * y as usize, storage))
                    .collect();
                let dense_groups = s
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        let x = if i == 0 { &input } else { &outputs[i - 1] };
                        bind(
                            &self.kernels.dense_layout,
                            &[x, &l.weight, &l.bias, &outputs[i], &l.params],
                        )
                    })
                    .collect();
                let softmax_groups = s
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        l.softmax
                            .then(|| bind(&self.kernels.softmax_layout, &[&outputs[i], &l.params]))
                    })
                    .collect();
                let last = &outputs[outputs.len() - 1];
                let layout = if s.fused_softmax {
                    &self.kernels.softmax_aggregate_layout
                } else {
                    &self.kernels.aggregate_layout
                };
                let aggregate_group = bind(layout, &[last, &acc, &s.aggregate_params]);
                StackRows {
                    staging: (0..n)
                        .map(|_| buffer("member staging", capacity * self.output_width, staging))
                        .collect(),
                    outputs,
                    y_strides,
                    dense_groups,
                    softmax_groups,
                    aggregate_group,
                }
            })
            .collect();
        self.rows = Some(RowBuffers {
            capacity,
            input,
            acc,
            staging_acc,
            stacks,
        });
    }

    /// Writes every uniform buffer for `rows` rows, the row buffers' strides and the
    /// `present` members, unless they already hold that.
    fn write_uniforms(&mut self, rows: usize, present: &[u32]) {
        let Some(rb) = self.rows.as_ref() else {
            return;
        };
        if let Some((r, c, p)) = &self.uniforms {
            if (*r, *c, p.as_slice()) == (rows, rb.capacity, present) {
                return;
            }
        }
        let key = (rows, rb.capacity, present.to_vec());
        let queue = &self.ctx.queue;
        for ((s, sr), &mask) in self.stacks.iter().zip(&rb.stacks).zip(present) {
            for (i, l) in s.layers.iter().enumerate() {
                let p = DenseParams {
                    rows: rows as u32,
                    out_features: l.out_features as u32,
                    in_features: l.in_features as u32,
                    x_stride: if i == 0 { 0 } else { sr.y_strides[i - 1] },
                    w_stride: l.w_stride,
                    b_stride: l.b_stride,
                    y_stride: sr.y_strides[i],
                    _pad: 0,
                };
                queue.write_buffer(&l.params, 0, bytemuck::bytes_of(&p));
            }
            let mut weights = [0.0; MAX_STACK];
            for (w, &(_, weight)) in weights.iter_mut().zip(&s.members) {
                *w = weight;
            }
            let p = AggregateParams {
                rows: rows as u32,
                cols: self.output_width as u32,
                members: s.members.len() as u32,
                present: mask,
                y_stride: sr.y_strides[sr.y_strides.len() - 1],
                _pad: [0; 3],
                weights,
            };
            queue.write_buffer(&s.aggregate_params, 0, bytemuck::bytes_of(&p));
        }
        self.uniforms = Some(key);
    }

    fn run_chunk(
        &mut self,
        x: &[f32],
        rows: usize,
        present: &[u32],
        partial: &mut [f32],
        member_outputs: &mut [(usize, Vec<f32>)],
        offset: usize,
    ) -> Result<Option<Duration>> {
        self.ensure_capacity(rows);
        self.write_uniforms(rows, present);
        let Some(rb) = self.rows.as_ref() else {
            return Err(self.gpu_error("row buffers missing after allocation"));
        };
        let (device, queue) = (&self.ctx.device, &self.ctx.queue);
        queue.write_buffer(&rb.input, 0, bytemuck::cast_slice(x));
        let bytes = bytes_of(rows * self.output_width);
        let mut encoder =
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        // Every member adds its contribution to the partial sum.
        encoder.clear_buffer(&rb.acc, 0, Some(bytes));
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("members"),
                timestamp_writes: self.timer.as_ref().map(PassTimer::writes),
            });
            let n_rows = rows as u32;
            let running = self.stacks.iter().zip(&rb.stacks).zip(present);
            for ((s, sr), _) in running.filter(|(_, &mask)| mask != 0) {
                let n = s.members.len() as u32;
                for (i, l) in s.layers.iter().enumerate() {
                    pass.set_bind_group(0, &sr.dense_groups[i], &[]);
                    let outputs = l.out_features as u32;
                    if rows <= SMALL_ROWS {
                        pass.set_pipeline(&l.small);
                        pass.dispatch_workgroups(
                            outputs.min(SMALL_GROUPS_X),
                            outputs.div_ceil(SMALL_GROUPS_X),
                            n,
                        );
                    } else {
                        pass.set_pipeline(&l.tiled);
                        pass.dispatch_workgroups(
                            outputs.div_ceil(l.tile_cols),
                            n_rows.div_ceil(l.tile_rows),
                            n,
                        );
                    }
                    if let Some(group) = &sr.softmax_groups[i] {
                        pass.set_pipeline(&self.softmax);
                        pass.set_bind_group(0, group, &[]);
                        pass.dispatch_workgroups(n_rows, 1, n);
                    }
                }
                // Both aggregate kernels: one workgroup per row.
                pass.set_bind_group(0, &sr.aggregate_group, &[]);
                pass.set_pipeline(if s.fused_softmax {
                    &self.softmax_aggregate
                } else {
                    &self.aggregate
                });
                pass.dispatch_workgroups(n_rows, 1, 1);
            }
        }
        encoder.copy_buffer_to_buffer(&rb.acc, 0, &rb.staging_acc, 0, bytes);
        // The timestamps follow the aggregate in its staging buffer (8-byte aligned),
        // read back with it.
        let stamps = bytes.next_multiple_of(8);
        let acc_bytes = match &self.timer {
            Some(timer) => {
                timer.copy_to(&mut encoder, &rb.staging_acc, stamps);
                stamps + timing::BYTES
            }
            None => bytes,
        };
        // The staging buffers of the members read back, in the order of
        // `member_outputs`.
        let mut wanted: Vec<&wgpu::Buffer> = Vec::new();
        if !member_outputs.is_empty() {
            for (s, z) in present_members(&self.stacks, present) {
                let sr = &rb.stacks[s];
                let (Some(last), Some(&y_stride)) = (sr.outputs.last(), sr.y_strides.last()) else {
                    continue;
                };
                let from = bytes_of(z * y_stride as usize);
                encoder.copy_buffer_to_buffer(last, from, &sr.staging[z], 0, bytes);
                wanted.push(&sr.staging[z]);
            }
        }
        let submission = queue.submit([encoder.finish()]);

        let mut staging: Vec<(&wgpu::Buffer, u64)> = vec![(&rb.staging_acc, acc_bytes)];
        staging.extend(wanted.iter().map(|&buf| (buf, bytes)));
        let (tx, rx) = mpsc::channel();
        for &(buf, size) in &staging {
            let tx = tx.clone();
            buf.slice(..size).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        }
        drop(tx);
        // The spin counts against the operation timeout.
        let spun = Instant::now();
        let waited = if spin(device, self.spin_wait.min(self.operation_timeout)) {
            Ok(())
        } else {
            device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(submission),
                    timeout: Some(self.operation_timeout.saturating_sub(spun.elapsed())),
                })
                .map(|_| ())
        };
        match waited {
            Ok(()) => {}
            Err(wgpu::PollError::Timeout) => {
                return Err(Error::OperationTimeout {
                    device: self.ctx.label.to_string(),
                    timeout: self.operation_timeout,
                })
            }
            // A failed submission (lost device, validation error) makes the wait fail
            // too; the handlers hold the real cause.
            Err(e) => {
                return Err(self
                    .ctx
                    .take_error()
                    .unwrap_or_else(|| self.gpu_error(&e.to_string())))
            }
        }
        if let Some(e) = self.ctx.take_error() {
            return Err(e);
        }
        // The wait saw the work done, but the map callbacks may run on another thread:
        // a wait on the same device from another executor (members of a `Pipeline`
        // share their device) can take them and run them after this wait returned.
        // So each is waited for, within what is left of the operation timeout (and a
        // moment at least, since the work itself is done).
        let left = self
            .operation_timeout
            .saturating_sub(spun.elapsed())
            .max(CALLBACK_GRACE);
        // No deadline instant: `left` may be as long as `Duration::MAX` ("never").
        let waiting = Instant::now();
        for _ in 0..staging.len() {
            match rx.recv_timeout(left.saturating_sub(waiting.elapsed())) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.gpu_error(&format!("mapping a result: {e}"))),
                Err(_) => {
                    return Err(self.gpu_error(&format!(
                        "a result buffer was not mapped within {left:?} of the work's end"
                    )))
                }
            }
        }
        // Copies the first `bytes` of a mapped staging buffer into `dst` and unmaps
        // it; the device time from the timestamps after them, when there are some.
        let read = |buf: &wgpu::Buffer, size: u64, dst: &mut [f32]| -> Result<Option<Duration>> {
            let time = {
                let view = buf
                    .slice(..size)
                    .get_mapped_range()
                    .map_err(|e| self.gpu_error(&format!("reading a result: {e}")))?;
                copy_f32(dst, &view[..bytes as usize]);
                match &self.timer {
                    Some(timer) if size > bytes => Some(timer.elapsed(&view[stamps as usize..])),
                    _ => None,
                }
            };
            buf.unmap();
            Ok(time)
        };
        let time = read(&rb.staging_acc, acc_bytes, partial)?;
        let len = rows * self.output_width;
        for (buf, (_, dst)) in wanted.iter().zip(member_outputs.iter_mut()) {
            read(buf, bytes, &mut dst[offset..offset + len])?;
        }
        Ok(time)
    }

    fn gpu_error(&self, message: &str) -> Error {
        gpu_error(&self.ctx, message)
    }
}

fn gpu_error(ctx: &GpuContext, message: &str) -> Error {
    Error::Gpu {
        device: ctx.label.to_string(),
        message: message.to_string(),
    }
}

/// A storage buffer of `size` bytes (a multiple of 8: the members' parts are whole
/// vectors of four values) holding `parts`: bytes at their offsets, zeros elsewhere.
fn stacked_buffer<'a>(
    device: &wgpu::Device,
    label: &str,
    size: u64,
    parts: impl Iterator<Item = (u64, Cow<'a, [u8]>)>,
) -> std::result::Result<wgpu::Buffer, String> {
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: true,
    });
    {
        let mut view = buffer
            .slice(..)
            .get_mapped_range_mut()
            .map_err(|e| format!("uploading {label}: {e}"))?;
        for (at, bytes) in parts {
            let at = at as usize;
            view.slice(at..at + bytes.len()).copy_from_slice(&bytes);
        }
    }
    buffer.unmap();
    Ok(buffer)
}
/// Runs the members placed on one wgpu device, recreating the device on its adapter
/// when it is lost.
pub(crate) struct GpuExecutor {
    state: Option<DeviceState>,
    label: crate::device::ExecutionDevice,
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
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: GpuContext,
        members: &[MemberSpec],
        mode: Mode,
        input_width: usize,
        output_width: usize,
        options: &SessionOptions,
        tuner: &Tuner,
    ) -> Result<Self> {
        let label = ctx.label.clone();
        let adapter = ctx.adapter.clone();
        let state = DeviceState::new(
            ctx,
            members,
            mode,
            input_width,
            output_width,
            options,
            tuner,
        )?;
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

    /// Drops the row buffers; the next run makes new ones.
    pub(crate) fn reset(&mut self) {
        if let Some(state) = &mut self.state {
            state.reset();
        }
    }

    /// Destroys the device (fault injection); with `permanently`, recreating it fails.
    pub(crate) fn lose_device(&mut self, permanently: bool) {
        if let Some(state) = &self.state {
            state.ctx.lose();
        }
        self.refuse_recreate |= permanently;
    }

    /// Runs every member except those in `skip`, first recreating the device if it
    /// was lost.
    pub(crate) fn run(
        &mut self,
        input: &[f32],
        want_members: bool,
        skip: &[usize],
    ) -> Result<DeviceOutput> {
        self.ensure_device()?;
        match &mut self.state {
            Some(state) => state.run(input, want_members, skip),
            None => Err(self.unavailable_error()),
        }
    }

    /// The error of a lost device, if the device was lost (checked before a job runs,
    /// so the job that finds it lost reports it and the next one recreates it).
    pub(crate) fn lost_error(&self) -> Option<Error> {
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
                crate::device::open_device(adapter, self.label.clone(), self.options.precision)
            }
        };
        let state = recreated.and_then(|ctx| {
            DeviceState::new(
                ctx,
                &self.specs,
                self.mode,
                self.input_width,
                self.output_width,
                &self.options,
                &self.tuner,
            )
            .map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DevicePool;

    /// `stack_rows` is the most rows whose stacked activations fit, exactly.
    #[test]
    fn stack_rows_is_exact() {
        for max_bytes in [16u64, 100, 1000, 4096, 10256, 1 << 22, 1 << 31] {
            for members in 1..=9 {
                for outputs in [1, 3, 4, 7, 16, 65, 256] {
                    let r = stack_rows(max_bytes, members, outputs);
                    let bytes = |rows: usize| members as u64 * bytes_of(stride(rows * outputs));
                    assert!(
                        bytes(r) <= max_bytes,
                        "{max_bytes} {members} {outputs}: {r}"
                    );
                    assert!(
                        bytes(r + 1) > max_bytes,
                        "{max_bytes} {members} {outputs}: {r} + 1 fits"
                    );
                }
            }
        }
    }

    /// Stacks hold members of one shape (widths and activations) wherever they stand
    /// in the graph, at most `MAX_STACK`, as long as their weights, biases and the
    /// activations of the given rows fit in one buffer each; a member joins the latest
    /// stack of its shape.
    #[test]
    fn stacks_hold_members_of_one_shape_within_the_limits() {
        let model = |widths: &[usize], act| {
            let acts = vec![act; widths.len() - 1];
            Model::random(widths, &acts, 1).unwrap()
        };
        let a = model(&[10, 10, 3], Activation::Relu);
        let b = model(&[10, 10, 3], Activation::Tanh);
        let c = model(&[10, 12, 3], Activation::Relu);
        let plan = |models: &[&Model], max_bytes, rows| plan_stacks(models, 4, max_bytes, rows);
        let ranges = |rs: &[std::ops::Range<usize>]| -> Vec<Vec<usize>> {
            rs.iter().map(|r| r.clone().collect()).collect()
        };
        let big = u64::MAX / 1024;
        assert_eq!(
            plan(&[&a, &a, &b, &a, &a, &a], big, 1),
            [vec![0, 1, 3, 4, 5], vec![2]]
        );
        assert_eq!(plan(&[&a, &c, &c, &a], big, 1), [vec![0, 3], vec![1, 2]]);
        assert_eq!(
            plan(&[&a, &b, &c, &a, &b, &c], big, 1),
            [vec![0, 3], vec![1, 4], vec![2, 5]]
        );
        assert_eq!(plan(&vec![&a; 40], big, 1), ranges(&[0..32, 32..40]));
        // Weights of 10 × 10 values: 400 bytes a member.
        assert_eq!(plan(&[&a; 5], 800, 1), ranges(&[0..2, 2..4, 4..5]));
        assert_eq!(
            plan(&[&a; 5], 799, 1),
            ranges(&[0..1, 1..2, 2..3, 3..4, 4..5])
        );
        // A full stack takes no more members; the next one of its shape does.
        assert_eq!(
            plan(&[&a, &a, &a, &b, &a], 800, 1),
            [vec![0, 1], vec![2, 4], vec![3]]
        );
        // Activations of 100 rows of 10 values (the widest layer): 4000 bytes a member.
        assert_eq!(plan(&[&a; 3], 8000, 100), ranges(&[0..2, 2..3]));
        // f16 weights take half the room.
        assert_eq!(plan_stacks(&[&a; 5], 2, 800, 1), ranges(&[0..4, 4..5]));
        // A member too large for one buffer is still a stack of one (its own limits
        // are reported before stacks are planned).
        assert_eq!(plan(&[&a, &a], 100, 1), ranges(&[0..1, 1..2]));
    }

    /// `spin` reports an emptied queue only once the work is done (its map callback
    /// has run), and gives up at once with no time to spin.
    #[test]
    fn spin_returns_when_the_queue_is_empty() {
        let mut pool = DevicePool::new(Precision::F32);
        let Some(&index) = pool.usable().first() else {
            assert!(
                std::env::var("WGPU_ENSEMBLE_REQUIRE_GPU").as_deref() != Ok("1"),
                "no usable adapter and WGPU_ENSEMBLE_REQUIRE_GPU=1"
            );
            eprintln!("spin: no usable adapter, skipped");
            return;
        };
        let ctx = pool.open("test", index, 0).unwrap();
        let device = &ctx.device;
        let buffer = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 1 << 20,
                usage,
                mapped_at_creation: false,
            })
        };
        let src = buffer(wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST);
        let dst = buffer(wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ);
        let submit = || {
            let mut encoder = device.create_command_encoder(&Default::default());
            encoder.clear_buffer(&src, 0, None);
            encoder.copy_buffer_to_buffer(&src, 0, &dst, 0, 1 << 20);
            ctx.queue.submit([encoder.finish()]);
            let (tx, rx) = mpsc::channel();
            dst.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r.is_ok());
            });
            rx
        };
        let rx = submit();
        assert!(
            spin(device, Duration::from_secs(30)),
            "the queue never emptied"
        );
        assert_eq!(
            rx.try_recv(),
            Ok(true),
            "spun out before the mapping was done"
        );
        dst.unmap();
        // Nothing to spin for: the queue is empty on the first poll.
        assert!(spin(device, Duration::from_secs(30)));
        // No time to spin: the caller waits instead.
        let rx = submit();
        assert!(!spin(device, Duration::ZERO));
        device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(Duration::from_secs(30)),
            })
            .unwrap();
        assert_eq!(rx.try_recv(), Ok(true));
    }
}
