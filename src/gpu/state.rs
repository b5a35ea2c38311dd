//! What one live device holds for its members: the weights of every stack uploaded
//! once, the pipelines of every layer, and the limits a batch must respect (the
//! largest chunk of rows one submission takes). Encoding a run is `encode.rs`.

use std::borrow::Cow;
use std::time::Duration;

use super::context::GpuContext;
use super::coop::{check_precision, CoopTile};
use super::kernels::{
    dense_coop, Kernels, AGGREGATE, BLEND, DENSE_SMALL, DENSE_SMALL_F16, SMALL_ROWS, SOFTMAX,
    SOFTMAX_AGGREGATE,
};
use super::params::{AggregateParams, DenseParams};
use super::stack::{bytes_of, plan_stacks, stack_rows, stride};
use super::timing::{self, PassTimer};
use super::tune::{tiled_kernel, Tuner};
use crate::aggregate::Mode;
use crate::error::{Error, Result};
use crate::exec::MemberSpec;
use crate::model::{Activation, Dense, Model};
use crate::options::SessionOptions;
use crate::placement::is_llvmpipe;
use crate::precision::Precision;
use crate::uncertainty::moments_width;

/// Inputs up to which llvmpipe computes a layer correctly with any tiled kernel (see
/// benches/results/cpu-2026-11-26/NOTES.md for the bounds measured with Mesa 22.3).
pub(crate) const LLVMPIPE_TILED_INPUTS: usize = 4096;
/// Inputs up to which llvmpipe computes a layer correctly with the small-batch
/// kernels (same notes).
pub(crate) const LLVMPIPE_SMALL_INPUTS: usize = 524_288;

/// One layer of a stack.
pub(crate) struct GpuLayer {
    pub(crate) in_features: usize,
    pub(crate) out_features: usize,
    /// Followed by a softmax dispatch (a hidden layer ending in softmax; the last
    /// layer's softmax is fused into the aggregate dispatch instead).
    pub(crate) softmax: bool,
    /// Tiled pipeline (register-tiled or cooperative-matrix) for more than
    /// `SMALL_ROWS` rows, and the outputs and rows of y one of its workgroups computes.
    pub(crate) tiled: wgpu::ComputePipeline,
    pub(crate) tile_cols: u32,
    pub(crate) tile_rows: u32,
    /// Pipeline for at most `SMALL_ROWS` rows.
    pub(crate) small: wgpu::ComputePipeline,
    /// The members' weights (biases), `w_stride` (`b_stride`) values apart.
    pub(crate) weight: wgpu::Buffer,
    pub(crate) w_stride: u32,
    pub(crate) bias: wgpu::Buffer,
    pub(crate) b_stride: u32,
    pub(crate) params: wgpu::Buffer,
}

/// Members of one shape, run together (see `stack.rs`).
pub(crate) struct GpuStack {
    /// Graph index and aggregate weight of each member, in the order given.
    pub(crate) members: Vec<(usize, f32)>,
    pub(crate) layers: Vec<GpuLayer>,
    /// The last layer ends in softmax: its softmax is fused with the aggregate.
    pub(crate) fused_softmax: bool,
    pub(crate) aggregate_params: wgpu::Buffer,
    /// With a stacking blender: each member's share of its first layer
    /// (`MemberSpec::blend`, `[hidden, output_width]`), member after member.
    pub(crate) blend: Option<wgpu::Buffer>,
}

// Every count and stride cast to u32 in this backend is a number of values in one
// buffer, of at most 4 GiB (`max_bytes` is capped there) in values of 2 bytes or more:
// it fits.

/// Buffers and bind groups that depend on the number of rows, grown on demand.
pub(crate) struct RowBuffers {
    pub(crate) capacity: usize,
    pub(crate) input: wgpu::Buffer,
    pub(crate) acc: wgpu::Buffer,
    pub(crate) staging_acc: wgpu::Buffer,
    /// With a stacking blender: the sum of the stacks' shares of its first layer,
    /// `[capacity, hidden]`, and its staging buffer.
    pub(crate) blend: Option<(wgpu::Buffer, wgpu::Buffer)>,
    pub(crate) stacks: Vec<StackRows>,
}

pub(crate) struct StackRows {
    /// Each layer's output for every member of the stack, `y_strides[l]` values apart.
    pub(crate) outputs: Vec<wgpu::Buffer>,
    pub(crate) y_strides: Vec<u32>,
    pub(crate) dense_groups: Vec<wgpu::BindGroup>,
    pub(crate) softmax_groups: Vec<Option<wgpu::BindGroup>>,
    pub(crate) aggregate_group: wgpu::BindGroup,
    /// blend.wgsl's bind group, with a stacking blender.
    pub(crate) blend_group: Option<wgpu::BindGroup>,
    /// One per member, for its own output when asked.
    pub(crate) staging: Vec<wgpu::Buffer>,
    /// The stack's uncertainty statistics, made by the first run that asks for them.
    pub(crate) moments: Option<MomentRows>,
}

/// A stack's uncertainty statistics (moments.wgsl): `[capacity, moments_width]` on the
/// device, its staging buffer, and the kernel's bind group (the stack's last output,
/// the statistics, its aggregate params).
pub(crate) struct MomentRows {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) staging: wgpu::Buffer,
    pub(crate) group: wgpu::BindGroup,
}

/// What the uniform buffers were last written for: rows, row capacity, the
/// present-member mask of every stack, and the scale of the aggregate weights (its
/// bits).
pub(crate) type UniformKey = (usize, usize, Vec<u32>, u32);

/// The pipelines, weights and buffers of the members on one live device.
pub(crate) struct DeviceState {
    pub(crate) ctx: GpuContext,
    pub(crate) kernels: Kernels,
    pub(crate) softmax: wgpu::ComputePipeline,
    pub(crate) aggregate: wgpu::ComputePipeline,
    pub(crate) softmax_aggregate: wgpu::ComputePipeline,
    /// moments.wgsl's pipeline, created by the first run that asks for the statistics.
    pub(crate) moments: Option<wgpu::ComputePipeline>,
    /// With a stacking blender: blend.wgsl's pipeline and the blender's first-layer
    /// outputs.
    pub(crate) blend: Option<(wgpu::ComputePipeline, usize)>,
    pub(crate) stacks: Vec<GpuStack>,
    pub(crate) input_width: usize,
    pub(crate) output_width: usize,
    /// Most rows one submission handles (buffer size and dispatch limits).
    pub(crate) chunk_rows: usize,
    /// Most rows of the uncertainty statistics one buffer holds (a run that asks for
    /// them goes in chunks of at most this many rows; 0: not one row fits).
    pub(crate) moment_rows: usize,
    /// The largest buffer a run may make: the device's limits and
    /// `SessionOptions::max_buffer_bytes`.
    pub(crate) max_bytes: u64,
    pub(crate) operation_timeout: Duration,
    pub(crate) spin_wait: Duration,
    pub(crate) uniforms: Option<UniformKey>,
    pub(crate) rows: Option<RowBuffers>,
    /// Times the members' pass ([`SessionOptions::device_timing`]).
    pub(crate) timer: Option<PassTimer>,
    /// On llvmpipe, until the small-batch pipelines have run a one-row pass (see
    /// `DeviceState::prime_small` in `encode.rs`).
    pub(crate) unprimed: bool,
}

/// The shapes and the device a [`DeviceState`] is built for.
pub(crate) struct Shapes<'a> {
    pub(crate) members: &'a [MemberSpec],
    pub(crate) mode: Mode,
    pub(crate) input_width: usize,
    pub(crate) output_width: usize,
}

impl DeviceState {
    /// Uploads the weights of `shapes.members`, creates their pipelines, and checks
    /// that the device can hold them. `options.max_buffer_bytes` caps every buffer
    /// below the device's own limit (chunks get smaller).
    pub(crate) fn new(
        ctx: GpuContext,
        shapes: &Shapes<'_>,
        options: &SessionOptions,
        tuner: &Tuner,
    ) -> Result<Self> {
        // Errors already in the store are not this build's (a device handed in is
        // shared): only those caught while it runs fail it.
        let mark = ctx.error_mark();
        let precision = options.precision;
        let coop = check_precision(&ctx, precision)?;
        let timer = device_timer(&ctx, options.device_timing)?;
        let limits = ctx.device.limits();
        // At most 4 GiB: the kernels index buffers with u32, in values of 2 bytes or
        // more, so no index (a member's offset in a stack included) can overflow.
        let max_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(options.max_buffer_bytes.unwrap_or(u64::MAX))
            .min(u64::from(u32::MAX));
        let weight_bytes = if precision.is_f16() { 2 } else { 4 };
        // A row of the uncertainty statistics is the widest row when the outputs are
        // wider than every layer's.
        // A stacking blender's columns, the same shape for every member.
        let blend_block = shapes.members.iter().find_map(|m| m.blend.as_deref());
        let hidden = blend_block.map(Dense::out_features);
        // Every run of a stack computes its blender's sums; the uncertainty statistics
        // bound only the runs that ask for them (`DeviceState::moment_rows`).
        let widest =
            check_member_buffers(&ctx, shapes, weight_bytes, max_bytes)?.max(hidden.unwrap_or(0));
        let (llvmpipe, longest) = check_llvmpipe(&ctx, shapes.members)?;
        // 16 bytes of room for the rounding of buffer sizes (see `encode.rs`), and the
        // timestamps after the aggregate in its staging buffer.
        let room = 16 + timer.as_ref().map_or(0, |_| timing::BYTES);
        let by_bytes = usize::try_from(max_bytes.saturating_sub(room) / bytes_of(widest))
            .unwrap_or(usize::MAX);
        // Softmax dispatches one workgroup per row; the dense and aggregate kernels
        // need fewer groups per row than that.
        let mut unstacked_rows = by_bytes.min(limits.max_compute_workgroups_per_dimension as usize);
        if longest > LLVMPIPE_TILED_INPUTS {
            unstacked_rows = unstacked_rows.min(SMALL_ROWS);
        }
        let one_row = || {
            too_large(
                &ctx,
                format!("one row of {widest} values"),
                bytes_of(widest),
                max_bytes,
            )
        };
        if unstacked_rows == 0 {
            return Err(one_row());
        }
        // Stacks are for small batches: one never makes a chunk of up to 1024 rows
        // smaller than the members alone would.
        let models: Vec<&Model> = shapes.members.iter().map(|m| m.model.as_ref()).collect();
        // A blender's columns are one buffer per stack too.
        let blend_bytes = blend_block.map_or(0, |b| bytes_of(b.weight().len()));
        let plan = plan_stacks(
            &models,
            weight_bytes,
            max_bytes,
            unstacked_rows.min(1024),
            blend_bytes,
        );

        let mut kernels = Kernels::new(&ctx.device, options.trusted_kernels);
        let mode = shapes.mode as u32;
        let softmax = kernels.pipeline(&ctx.device, SOFTMAX, &[])?;
        let aggregate = kernels.pipeline(&ctx.device, AGGREGATE, &[("MODE", mode)])?;
        let softmax_aggregate =
            kernels.pipeline(&ctx.device, SOFTMAX_AGGREGATE, &[("MODE", mode)])?;
        let blend = match hidden {
            Some(hidden) => Some((kernels.pipeline(&ctx.device, BLEND, &[])?, hidden)),
            None => None,
        };
        let mut chunk_rows = unstacked_rows;
        let mut stacks = Vec::with_capacity(plan.len());
        {
            let mut uploader = Uploader {
                ctx: &ctx,
                kernels: &mut kernels,
                tuner,
                precision,
                coop,
                limits: &limits,
                max_bytes,
                llvmpipe,
            };
            for indices in plan {
                let specs: Vec<&MemberSpec> = indices.iter().map(|&i| &shapes.members[i]).collect();
                let (stack, rows) = uploader.stack(&specs)?;
                chunk_rows = chunk_rows.min(rows);
                stacks.push(stack);
            }
        }
        if chunk_rows == 0 {
            return Err(one_row());
        }
        if let Some(e) = ctx.take_error_since(mark) {
            return Err(e);
        }
        Ok(Self {
            ctx,
            kernels,
            softmax,
            aggregate,
            softmax_aggregate,
            moments: None,
            blend,
            stacks,
            input_width: shapes.input_width,
            output_width: shapes.output_width,
            chunk_rows,
            moment_rows: usize::try_from(
                max_bytes.saturating_sub(16) / bytes_of(moments_width(shapes.output_width)),
            )
            .unwrap_or(usize::MAX),
            max_bytes,
            operation_timeout: options.operation_timeout,
            spin_wait: options.spin_wait,
            uniforms: None,
            rows: None,
            timer,
            unprimed: llvmpipe,
        })
    }

    /// Drops the row buffers; the next run makes new ones. Used after a failed or
    /// timed-out submission, whose buffers may still be in use or mapped.
    pub(crate) fn reset(&mut self) {
        self.rows = None;
        self.uniforms = None;
    }

    pub(crate) fn gpu_error(&self, message: &str) -> Error {
        gpu_error(&self.ctx, message)
    }
}

/// The timer of [`SessionOptions::device_timing`], or the error of a device that has
/// no timestamps.
fn device_timer(ctx: &GpuContext, wanted: bool) -> Result<Option<PassTimer>> {
    match wanted.then(|| PassTimer::new(ctx)) {
        None => Ok(None),
        Some(Some(timer)) => Ok(Some(timer)),
        Some(None) => Err(Error::DeviceTimingUnsupported {
            device: ctx.label.to_string(),
        }),
    }
}

fn too_large(ctx: &GpuContext, what: String, bytes: u64, limit: u64) -> Error {
    Error::BufferTooLarge {
        what,
        device: ctx.label.to_string(),
        bytes,
        limit,
    }
}

/// Checks that every member's own weight buffers fit before any are stacked; the
/// widest row of values (input, output or a layer's) a chunk must hold.
fn check_member_buffers(
    ctx: &GpuContext,
    shapes: &Shapes<'_>,
    weight_bytes: u64,
    max_bytes: u64,
) -> Result<usize> {
    let mut widest = shapes.input_width.max(shapes.output_width);
    for spec in shapes.members {
        for (l, layer) in spec.model.layers().iter().enumerate() {
            let (out_f, in_f) = (layer.out_features(), layer.in_features());
            widest = widest.max(out_f);
            let bytes = stride(out_f * in_f) as u64 * weight_bytes;
            if bytes > max_bytes {
                return Err(too_large(
                    ctx,
                    format!(
                        "member '{}' layer {} weight [{out_f}, {in_f}]",
                        spec.name,
                        l + spec.first_layer
                    ),
                    bytes,
                    max_bytes,
                ));
            }
        }
    }
    Ok(widest)
}

/// llvmpipe (lavapipe, GL llvmpipe) ends a shader invocation after 65535 loop
/// iterations in all, silently: the tiled kernels' sums came out wrong past a few
/// thousand inputs, the small-batch kernel held far longer (bounds in the constants
/// above). There, a device with a longer layer runs every batch in chunks the small
/// kernel takes, and a layer longer than that is refused. The longest layer's inputs
/// on such a device (0 elsewhere), after whether the device is one.
fn check_llvmpipe(ctx: &GpuContext, members: &[MemberSpec]) -> Result<(bool, usize)> {
    let llvmpipe = ctx.adapter.as_ref().is_some_and(|a| {
        let info = a.get_info();
        is_llvmpipe(&info.name, &info.driver)
    });
    let mut longest = 0;
    if llvmpipe {
        for spec in members {
            let (layer, inputs) = spec.model.longest_layer();
            longest = longest.max(inputs);
            if inputs > LLVMPIPE_SMALL_INPUTS {
                return Err(Error::InputsBeyondDriver {
                    member: spec.name.clone(),
                    layer: layer + spec.first_layer,
                    inputs,
                    limit: LLVMPIPE_SMALL_INPUTS,
                    device: ctx.label.to_string(),
                });
            }
        }
    }
    Ok((llvmpipe, longest))
}

/// Uploads stacks and makes their pipelines on one device.
struct Uploader<'a> {
    ctx: &'a GpuContext,
    kernels: &'a mut Kernels,
    tuner: &'a Tuner,
    precision: Precision,
    coop: Option<CoopTile>,
    limits: &'a wgpu::Limits,
    max_bytes: u64,
    /// The device runs on llvmpipe (see `check_llvmpipe`).
    llvmpipe: bool,
}

/// The most loop iterations blend.wgsl may run per row on llvmpipe.
const LLVMPIPE_BLEND_ITERATIONS: usize = 65_535;

impl Uploader<'_> {
    /// The stack of `specs` (members of one shape), and the most rows its activations
    /// allow in one chunk.
    fn stack(&mut self, specs: &[&MemberSpec]) -> Result<(GpuStack, usize)> {
        let model = &specs[0].model;
        let count = model.layers().len();
        let mut rows = usize::MAX;
        let mut layers = Vec::with_capacity(count);
        for (l, layer) in model.layers().iter().enumerate() {
            // The activations of the stack's members share a buffer.
            rows = rows.min(stack_rows(
                self.max_bytes,
                specs.len(),
                layer.out_features(),
            ));
            let mut gpu_layer = self.layer(specs, l)?;
            gpu_layer.softmax = layer.activation() == Activation::Softmax && l + 1 < count;
            layers.push(gpu_layer);
        }
        let blend = self.blend(specs)?;
        let stack = GpuStack {
            blend,
            members: specs.iter().map(|s| (s.index, s.weight)).collect(),
            layers,
            fused_softmax: model.layers()[count - 1].activation() == Activation::Softmax,
            aggregate_params: uniform_buffer::<AggregateParams>(
                &self.ctx.device,
                "aggregate params",
            ),
        };
        Ok((stack, rows))
    }

    /// The members' shares of a stacking blender's first layer in one buffer, member
    /// after member (`None` without a blender).
    fn blend(&self, specs: &[&MemberSpec]) -> Result<Option<wgpu::Buffer>> {
        let blocks: Option<Vec<&Dense>> = specs.iter().map(|s| s.blend.as_deref()).collect();
        let Some(blocks) = blocks else {
            return Ok(None);
        };
        let values = blocks.first().map_or(0, |b| b.weight().len());
        if self.llvmpipe {
            // Per row: for each hidden unit, each member's columns in steps of 64 and
            // the workgroup's reduction (6 steps) and its barriers.
            let (hidden, classes) = blocks
                .first()
                .map_or((0, 0), |b| (b.out_features(), b.in_features()));
            let iterations = hidden
                .saturating_mul(blocks.len() * classes.div_ceil(64) + 7)
                .saturating_add(hidden);
            if iterations > LLVMPIPE_BLEND_ITERATIONS {
                return Err(Error::BlenderBeyondDriver {
                    member: specs[0].name.clone(),
                    members: specs.len(),
                    hidden,
                    classes,
                    iterations,
                    limit: LLVMPIPE_BLEND_ITERATIONS,
                    device: self.ctx.label.to_string(),
                });
            }
        }
        let bytes = bytes_of(values * blocks.len());
        if bytes > self.max_bytes {
            return Err(too_large(
                self.ctx,
                format!(
                    "the blender's first-layer columns for the stack of member '{}'",
                    specs[0].name
                ),
                bytes,
                self.max_bytes,
            ));
        }
        stacked_buffer(
            &self.ctx.device,
            "blender",
            bytes.next_multiple_of(16),
            blocks.iter().enumerate().map(|(z, b)| {
                (
                    bytes_of(z * values),
                    Cow::Borrowed(bytemuck::cast_slice(b.weight().as_slice())),
                )
            }),
        )
        .map(Some)
        .map_err(|e| gpu_error(self.ctx, &e))
    }

    /// Layer `l` of the stack of `specs`: its tile (fixed, default or tuned), its
    /// pipelines, and the members' weights and biases in one buffer each.
    fn layer(&mut self, specs: &[&MemberSpec], l: usize) -> Result<GpuLayer> {
        let (ctx, device, n) = (self.ctx, &self.ctx.device, specs.len());
        let layer = &specs[0].model.layers()[l];
        let (out_f, in_f) = (layer.out_features(), layer.in_features());
        let act = layer.activation().shader_code();
        let (tiled_kernel, constants, tile_cols, tile_rows) = match self.coop {
            Some(base) => {
                let c = self
                    .tuner
                    .choose_coop(ctx, self.kernels, base, (out_f, in_f), n)?;
                let constants = c.constants(act).to_vec();
                (dense_coop(c.size), constants, c.tile_cols(), c.tile_rows())
            }
            None => {
                let t = self
                    .tuner
                    .choose(ctx, self.kernels, self.precision, (out_f, in_f), n)?;
                let (kernel, constants) = tiled_kernel(&t, self.precision, in_f, act);
                (kernel, constants, t.tile_cols(), t.tile_rows())
            }
        };
        let groups = (out_f as u64).div_ceil(u64::from(tile_cols));
        if groups > u64::from(self.limits.max_compute_workgroups_per_dimension) {
            return Err(Error::DispatchTooLarge {
                what: format!(
                    "member '{}' layer {} with {out_f} outputs",
                    specs[0].name,
                    l + specs[0].first_layer
                ),
                device: ctx.label.to_string(),
                groups,
                limit: self.limits.max_compute_workgroups_per_dimension,
            });
        }
        let f16 = self.precision.is_f16();
        let weight_bytes: u64 = if f16 { 2 } else { 4 };
        let (w_stride, b_stride) = (stride(out_f * in_f), stride(out_f));
        let weight = stacked_buffer(
            device,
            "weights",
            n as u64 * w_stride as u64 * weight_bytes,
            specs.iter().enumerate().map(|(z, s)| {
                let values = s.model.layers()[l].weight().as_slice();
                let bytes = if f16 {
                    Cow::Owned(le_bytes_f16(values))
                } else {
                    Cow::Borrowed(bytemuck::cast_slice(values))
                };
                (z as u64 * w_stride as u64 * weight_bytes, bytes)
            }),
        )
        .map_err(|e| gpu_error(ctx, &e))?;
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
        .map_err(|e| gpu_error(ctx, &e))?;
        let small_kernel = if f16 { DENSE_SMALL_F16 } else { DENSE_SMALL };
        Ok(GpuLayer {
            in_features: in_f,
            out_features: out_f,
            softmax: false,
            tiled: self.kernels.pipeline(device, tiled_kernel, &constants)?,
            tile_cols,
            tile_rows,
            small: self
                .kernels
                .pipeline(device, small_kernel, &[("ACT", act)])?,
            weight,
            w_stride: w_stride as u32,
            bias,
            b_stride: b_stride as u32,
            params: uniform_buffer::<DenseParams>(device, "dense params"),
        })
    }
}

/// A uniform buffer the size of `T`, written before each run that changes it.
fn uniform_buffer<T>(device: &wgpu::Device, label: &str) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: std::mem::size_of::<T>() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// f32 values rounded to f16, as little-endian bytes.
fn le_bytes_f16(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

pub(crate) fn gpu_error(ctx: &GpuContext, message: &str) -> Error {
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
