//! One run on a device: the buffers that depend on the batch's rows (grown on demand),
//! the uniforms, one command buffer per chunk of rows with every stack's layers and
//! aggregate, and the readback of the partial aggregate (and member outputs).

use std::time::{Duration, Instant};

use super::kernels::MAX_STACK;
use super::kernels::{MOMENTS, SMALL_GROUPS_X, SMALL_ROWS};
use super::params::{AggregateParams, DenseParams};
use super::readback::{copy_f32, map_for_reading, read_mapped, wait_for, CALLBACK_GRACE};
use super::resident::Resident;
use super::stack::{bytes_of, stride};
use super::state::{DeviceState, GpuStack, MomentRows, RowBuffers, StackRows};
use super::timing::{self, PassTimer};
use crate::error::{Error, Result};
use crate::exec::{DeviceOutput, Wants};
use crate::uncertainty::{moments_width, Moments};

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

/// Values read back for one run, labelled: a member's output with its graph index, or
/// a stack's statistics with the stack's index.
type Labelled = (usize, Vec<f32>);

/// Where a run's input rows come from.
pub(crate) enum Rows<'a> {
    /// Values on the host (`[rows, input_width]`), written into the input buffer.
    Host(&'a [f32]),
    /// `rows` rows of `input_width` values at the start of a buffer of this device,
    /// copied into the input buffer on the device.
    Device(&'a wgpu::Buffer, usize),
}

/// Where a chunk's aggregate goes.
enum Sink<'a> {
    /// Read back into these values (the chunk's rows).
    Host(&'a mut [f32]),
    /// Copied into this buffer of the device, at the chunk's rows.
    Device(&'a wgpu::Buffer),
}

impl DeviceState {
    /// Runs every member on `input` (`[rows, input_width]`, already validated) except
    /// the graph members listed in `skip`.
    pub(crate) fn run(
        &mut self,
        input: &[f32],
        wants: Wants,
        skip: &[usize],
    ) -> Result<DeviceOutput> {
        self.run_rows(Rows::Host(input), wants, skip, false)
            .map(|(out, _)| out)
    }

    /// [`DeviceState::run`] on rows from the host or from a buffer of this device.
    /// With `keep_output` the aggregate is not read back: every member's aggregate
    /// weight is divided by the weight of the members present, so the partial sum is
    /// the weighted mean itself, and it is returned in a buffer of this device
    /// (`DeviceOutput::partial` is then empty). Only for `Mode::Values`: a vote's
    /// counts are not a mean.
    pub(crate) fn run_rows(
        &mut self,
        input: Rows<'_>,
        wants: Wants,
        skip: &[usize],
        keep_output: bool,
    ) -> Result<(DeviceOutput, Option<Resident>)> {
        let started = Instant::now();
        let rows = match input {
            Rows::Host(x) => x.len() / self.input_width,
            Rows::Device(_, rows) => rows,
        };
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
        // The aggregate kept on the device is the mean itself: each weight over the
        // present members' total (which the runtime refuses when it is not positive).
        let scale = if keep_output {
            let total: f32 = present_members(&self.stacks, &present)
                .map(|(s, z)| self.stacks[s].members[z].1)
                .sum();
            if total > 0.0 {
                1.0 / total
            } else {
                1.0
            }
        } else {
            1.0
        };
        let kept = if keep_output {
            Some(Resident::empty(&self.ctx, rows, out, "aggregate")?)
        } else {
            None
        };
        let mut partial = if keep_output {
            Vec::new()
        } else {
            vec![0.0f32; rows * out]
        };
        let mut member_outputs: Vec<(usize, Vec<f32>)> = if wants.members {
            included
                .iter()
                .map(|&index| (index, vec![0.0f32; rows * out]))
                .collect()
        } else {
            Vec::new()
        };
        // The uncertainty statistics of every stack with members present, read back
        // chunk by chunk.
        let width = moments_width(out);
        // A run with them goes in chunks whose statistics fit in one buffer.
        let chunk_rows = if wants.moments {
            self.moment_rows.min(self.chunk_rows)
        } else {
            self.chunk_rows
        };
        if chunk_rows == 0 {
            return Err(Error::BufferTooLarge {
                what: format!("one row of the uncertainty statistics ({width} values)"),
                device: self.ctx.label.to_string(),
                bytes: bytes_of(width),
                limit: self.max_bytes,
            });
        }
        let mut moments: Vec<(usize, Vec<f32>)> = if wants.moments {
            self.ensure_moments_pipeline()?;
            present
                .iter()
                .enumerate()
                .filter(|(_, &mask)| mask != 0)
                .map(|(s, _)| (s, vec![0.0f32; rows * width]))
                .collect()
        } else {
            Vec::new()
        };
        // A stacking blender's first layer, summed over the stacks, read back chunk by
        // chunk.
        let hidden = self.blend.as_ref().map_or(0, |(_, h)| *h);
        let mut blend = vec![0.0f32; rows * hidden];
        let mut device_time = self.timer.as_ref().map(|_| Duration::ZERO);
        let mut start = 0;
        while start < rows {
            let n = chunk_rows.min(rows - start);
            let x = match input {
                Rows::Host(x) => {
                    Rows::Host(&x[start * self.input_width..(start + n) * self.input_width])
                }
                Rows::Device(buffer, _) => Rows::Device(buffer, start),
            };
            let sink = match &kept {
                Some(kept) => Sink::Device(&kept.buffer),
                None => Sink::Host(&mut partial[start * out..(start + n) * out]),
            };
            let result = self.run_chunk(
                x,
                n,
                (&present, scale),
                sink,
                (&mut member_outputs, &mut moments, &mut blend),
                start,
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
        // Each stack's group, weighed by its present members' own weights (not scaled).
        let moments = moments
            .into_iter()
            .filter_map(|(s, values)| {
                let weight: f64 = self.stacks[s]
                    .members
                    .iter()
                    .enumerate()
                    .filter(|(z, _)| present[s] >> z & 1 == 1)
                    .map(|(_, &(_, w))| f64::from(w))
                    .sum();
                (weight > 0.0).then_some(Moments { weight, values })
            })
            .collect();
        let output = DeviceOutput {
            partial,
            members: member_outputs,
            blend,
            moments,
            present: included,
            failed: Vec::new(),
            elapsed: started.elapsed(),
            device_time,
        };
        Ok((output, kept))
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
        let blend = self.blend.as_ref().map(|(_, hidden)| {
            (
                buffer(
                    "blender sums",
                    capacity * hidden,
                    storage | wgpu::BufferUsages::COPY_DST,
                ),
                buffer("blender sums staging", capacity * hidden, staging),
            )
        });
        let bind = |layout: &wgpu::BindGroupLayout, buffers: &[&wgpu::Buffer]| {
            crate::gpu::bind_buffers(device, layout, buffers)
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
                let blend_group = match (&blend, &s.blend) {
                    (Some((sums, _)), Some(weights)) => Some(bind(
                        &self.kernels.blend_layout,
                        &[last, sums, &s.aggregate_params, weights],
                    )),
                    _ => None,
                };
                StackRows {
                    staging: (0..n)
                        .map(|_| buffer("member staging", capacity * self.output_width, staging))
                        .collect(),
                    outputs,
                    y_strides,
                    dense_groups,
                    softmax_groups,
                    aggregate_group,
                    blend_group,
                    moments: None,
                }
            })
            .collect();
        self.rows = Some(RowBuffers {
            capacity,
            input,
            acc,
            staging_acc,
            blend,
            stacks,
        });
    }

    /// Creates moments.wgsl's pipeline unless it exists.
    fn ensure_moments_pipeline(&mut self) -> Result<()> {
        if self.moments.is_none() {
            let pipeline = self.kernels.pipeline(&self.ctx.device, MOMENTS, &[])?;
            self.moments = Some(pipeline);
        }
        Ok(())
    }

    /// Makes the statistics buffers of every stack that has none, for the row buffers'
    /// capacity.
    fn ensure_moment_rows(&mut self) {
        let Some(rb) = self.rows.as_mut() else {
            return;
        };
        let device = &self.ctx.device;
        // The chunks of a run with statistics are at most `moment_rows` long.
        let values = rb.capacity.min(self.moment_rows) * moments_width(self.output_width);
        let size = bytes_of(values).next_multiple_of(16);
        for (s, sr) in self.stacks.iter().zip(rb.stacks.iter_mut()) {
            if sr.moments.is_some() {
                continue;
            }
            let Some(last) = sr.outputs.last() else {
                continue;
            };
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("uncertainty statistics"),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let staging = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("uncertainty statistics staging"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let group = crate::gpu::bind_buffers(
                device,
                &self.kernels.aggregate_layout,
                &[last, &buffer, &s.aggregate_params],
            );
            sr.moments = Some(MomentRows {
                buffer,
                staging,
                group,
            });
        }
    }

    /// Writes every uniform buffer for `rows` rows, the row buffers' strides, the
    /// `present` members and their aggregate weights times `scale`, unless they
    /// already hold that.
    fn write_uniforms(&mut self, rows: usize, present: &[u32], scale: f32) {
        let Some(rb) = self.rows.as_ref() else {
            return;
        };
        if let Some((r, c, p, k)) = &self.uniforms {
            if (*r, *c, p.as_slice(), *k) == (rows, rb.capacity, present, scale.to_bits()) {
                return;
            }
        }
        let key = (rows, rb.capacity, present.to_vec(), scale.to_bits());
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
                *w = weight * scale;
            }
            let p = AggregateParams {
                rows: rows as u32,
                cols: self.output_width as u32,
                members: s.members.len() as u32,
                present: mask,
                y_stride: sr.y_strides[sr.y_strides.len() - 1],
                hidden: self.blend.as_ref().map_or(0, |(_, h)| *h as u32),
                _pad: [0; 2],
                weights,
            };
            queue.write_buffer(&s.aggregate_params, 0, bytemuck::bytes_of(&p));
        }
        self.uniforms = Some(key);
    }

    /// Runs one chunk of `rows` rows (`x`; for rows on the device, `Rows::Device`
    /// carries the chunk's first row): encodes it, submits it, waits, and puts the
    /// aggregate in `sink` (at the chunk's first row for a device buffer), the wanted
    /// member outputs into `member_outputs` and the statistics of the stacks listed in
    /// `moments` into theirs, at the chunk's `first` row; the device's time for the
    /// kernels when timed. `present` holds the members' masks and the scale of their
    /// weights.
    fn run_chunk(
        &mut self,
        x: Rows<'_>,
        rows: usize,
        (present, scale): (&[u32], f32),
        sink: Sink<'_>,
        (member_outputs, moments, blend): (&mut [Labelled], &mut [Labelled], &mut [f32]),
        first: usize,
    ) -> Result<Option<Duration>> {
        let offset = first * self.output_width;
        self.ensure_capacity(rows);
        if !moments.is_empty() {
            self.ensure_moment_rows();
        }
        if self.unprimed && rows > 1 && rows <= SMALL_ROWS {
            self.prime_small(present, scale)?;
        }
        self.write_uniforms(rows, present, scale);
        let Some(rb) = self.rows.as_ref() else {
            return Err(self.gpu_error("row buffers missing after allocation"));
        };
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        match x {
            Rows::Host(x) => self
                .ctx
                .queue
                .write_buffer(&rb.input, 0, bytemuck::cast_slice(x)),
            Rows::Device(buffer, first) => encoder.copy_buffer_to_buffer(
                buffer,
                bytes_of(first * self.input_width),
                &rb.input,
                0,
                bytes_of(rows * self.input_width),
            ),
        }
        let bytes = bytes_of(rows * self.output_width);
        let statistics = (!moments.is_empty())
            .then_some(self.moments.as_ref())
            .flatten();
        self.encode_pass(&mut encoder, rb, rows, present, statistics);
        // The aggregate goes to the device buffer kept, or to its staging buffer; the
        // timestamps (when timed) follow in the staging buffer, 8-byte aligned.
        let to_host = match sink {
            Sink::Device(kept) => {
                let at = bytes_of(offset);
                encoder.copy_buffer_to_buffer(&rb.acc, 0, kept, at, bytes);
                None
            }
            Sink::Host(partial) => {
                encoder.copy_buffer_to_buffer(&rb.acc, 0, &rb.staging_acc, 0, bytes);
                Some(partial)
            }
        };
        let stamps = bytes.next_multiple_of(8);
        let acc_bytes = match &self.timer {
            Some(timer) => {
                timer.copy_to(&mut encoder, &rb.staging_acc, stamps);
                stamps + timing::BYTES
            }
            None => bytes,
        };
        // The staging buffers read back: the aggregate's (unless it stays on the
        // device and there are no timestamps), then the members' in the order of
        // `member_outputs`.
        let read_acc = to_host.is_some() || self.timer.is_some();
        let mut staging: Vec<(&wgpu::Buffer, u64)> = Vec::new();
        if read_acc {
            staging.push((&rb.staging_acc, acc_bytes));
        }
        if !member_outputs.is_empty() {
            for (s, z) in present_members(&self.stacks, present) {
                let sr = &rb.stacks[s];
                let (Some(last), Some(&y_stride)) = (sr.outputs.last(), sr.y_strides.last()) else {
                    continue;
                };
                let from = bytes_of(z * y_stride as usize);
                encoder.copy_buffer_to_buffer(last, from, &sr.staging[z], 0, bytes);
                staging.push((&sr.staging[z], bytes));
            }
        }
        // Then a blender's sums.
        let hidden = self.blend.as_ref().map_or(0, |(_, h)| *h);
        let blend_bytes = bytes_of(rows * hidden);
        let blend_staging = match &rb.blend {
            Some((sums, staging_sums)) if hidden > 0 => {
                encoder.copy_buffer_to_buffer(sums, 0, staging_sums, 0, blend_bytes);
                staging.push((staging_sums, blend_bytes));
                Some(staging_sums)
            }
            _ => None,
        };
        // Then the statistics of the stacks in `moments`, in its order.
        let width = moments_width(self.output_width);
        let moment_bytes = bytes_of(rows * width);
        let mut moment_buffers = Vec::with_capacity(moments.len());
        for &(s, _) in moments.iter() {
            let Some(m) = rb.stacks.get(s).and_then(|sr| sr.moments.as_ref()) else {
                return Err(self.gpu_error("uncertainty statistics buffers missing"));
            };
            encoder.copy_buffer_to_buffer(&m.buffer, 0, &m.staging, 0, moment_bytes);
            staging.push((&m.staging, moment_bytes));
            moment_buffers.push(&m.staging);
        }
        let submission = self.ctx.queue.submit([encoder.finish()]);
        self.wait(submission, &staging)?;
        // Copies the first `bytes` of a mapped staging buffer into `dst` (when given)
        // and unmaps it; the device time from the timestamps after them, when there
        // are some.
        let read = |buf: &wgpu::Buffer,
                    size: u64,
                    dst: Option<&mut [f32]>|
         -> Result<Option<Duration>> {
            read_mapped(buf, size, |view| {
                if let Some(dst) = dst {
                    copy_f32(dst, &view[..bytes as usize]);
                }
                match &self.timer {
                    Some(timer) if size > bytes => Some(timer.elapsed(&view[stamps as usize..])),
                    _ => None,
                }
            })
            .map_err(|e| self.gpu_error(&e))
        };
        let time = if read_acc {
            read(&rb.staging_acc, acc_bytes, to_host)?
        } else {
            None
        };
        // A mapped staging buffer's values into `dst` (its whole length), unmapped.
        let read_values = |buf: &wgpu::Buffer, dst: &mut [f32]| -> Result<()> {
            let size = bytes_of(dst.len());
            read_mapped(buf, size, |view| copy_f32(dst, &view[..size as usize]))
                .map_err(|e| self.gpu_error(&e))
        };
        let len = rows * self.output_width;
        let members = staging[usize::from(read_acc)..].iter();
        for (&(buf, _), (_, dst)) in members.zip(member_outputs.iter_mut()) {
            read_values(buf, &mut dst[offset..offset + len])?;
        }
        if let Some(buf) = blend_staging {
            let at = first * hidden;
            read_values(buf, &mut blend[at..at + rows * hidden])?;
        }
        let at = first * width;
        for (buf, (_, dst)) in moment_buffers.into_iter().zip(moments.iter_mut()) {
            read_values(buf, &mut dst[at..at + rows * width])?;
        }
        Ok(time)
    }

    /// Runs the members' pass once on one row (whatever the input buffer holds; the
    /// result is not read), before the first pass of 2 to `SMALL_ROWS` rows on
    /// llvmpipe. Mesa's lavapipe (22.3 at least) inlines uniform values into a
    /// pipeline's shader and compiles the result again at every dispatch after a
    /// pipeline or bind group change, never freeing the code it replaces: about 2 MB
    /// per run of E1 at batch 8. It stops inlining for good, per pipeline, the first
    /// time inlining shrinks the shader by less than half, which a one-row pass of the
    /// small-batch kernel does (its row loops are what inlining unrolls).
    fn prime_small(&mut self, present: &[u32], scale: f32) -> Result<()> {
        self.unprimed = false;
        self.write_uniforms(1, present, scale);
        let Some(rb) = self.rows.as_ref() else {
            return Err(self.gpu_error("row buffers missing after allocation"));
        };
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        self.encode_pass(&mut encoder, rb, 1, present, None);
        let submission = self.ctx.queue.submit([encoder.finish()]);
        self.wait(submission, &[])
    }

    /// Records the members' compute pass: every running stack's layers (the small
    /// kernel for at most `SMALL_ROWS` rows, the tiled one above), hidden softmaxes,
    /// and its aggregate into `rb.acc`, cleared first; with `moments` (its pipeline),
    /// then its uncertainty statistics.
    fn encode_pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        rb: &RowBuffers,
        rows: usize,
        present: &[u32],
        moments: Option<&wgpu::ComputePipeline>,
    ) {
        // Every member adds its contribution to the partial sum.
        encoder.clear_buffer(&rb.acc, 0, Some(bytes_of(rows * self.output_width)));
        // And to a blender's sums.
        if let (Some((sums, _)), Some((_, hidden))) = (&rb.blend, &self.blend) {
            encoder.clear_buffer(sums, 0, Some(bytes_of(rows * hidden)));
        }
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
            // After the aggregate, which leaves a fused softmax's values in place.
            if let (Some(pipeline), Some(m)) = (moments, &sr.moments) {
                pass.set_bind_group(0, &m.group, &[]);
                pass.set_pipeline(pipeline);
                pass.dispatch_workgroups(n_rows, 1, 1);
            }
            if let (Some((pipeline, _)), Some(group)) = (&self.blend, &sr.blend_group) {
                pass.set_bind_group(0, group, &[]);
                pass.set_pipeline(pipeline);
                pass.dispatch_workgroups(n_rows, 1, 1);
            }
        }
    }

    /// Maps `staging` and waits for `submission` (spinning first for
    /// [`SessionOptions::spin_wait`](crate::SessionOptions::spin_wait)) within the
    /// operation timeout; errors the device's handlers caught come first.
    fn wait(
        &self,
        submission: wgpu::SubmissionIndex,
        staging: &[(&wgpu::Buffer, u64)],
    ) -> Result<()> {
        let mapping = map_for_reading(staging);
        // The spin counts against the operation timeout.
        let spun = Instant::now();
        let waited = wait_for(
            &self.ctx.device,
            submission,
            self.spin_wait,
            self.operation_timeout,
        );
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
        mapping.wait(left).map_err(|e| self.gpu_error(&e))
    }
}
