//! The GPU training engine: one member's training on one wgpu device, every buffer it
//! needs resident there for the whole training.
//!
//! - Uploaded once: the training split (features, and labels or targets) and the
//!   validation split — or, for a split beyond the device's largest storage binding,
//!   kept on the host and streamed: each command buffer's batches gathered in order
//!   into a window buffer before it is submitted (a batch longer than the window is
//!   refused with `Error::BufferTooLarge`); each layer's parameters (`w` then `b`), their gradients and
//!   the optimizer's state (`shaders/train/params.wgsl` says the layouts).
//! - Per call (an epoch, a step, a gradient, an evaluation): the row order (u32
//!   indices into the training split) and one `Step` per mini-batch (its
//!   rows, learning rate, Adam's bias corrections), bound with a dynamic offset; the
//!   batches are encoded into one command buffer per [`BATCHES_PER_SUBMIT`]; one
//!   readback at the end: each batch's loss sum, correct rows and (for the L2 term)
//!   sums of squared weights, a few floats per batch.
//! - Per batch: `forward.wgsl` per layer (the first gathers its rows through the
//!   order), `loss.wgsl` (softmax fused with cross-entropy, or squared error: the loss
//!   sum and dz of the output layer), `sumsq.wgsl` per layer where the loss has an L2
//!   term, then from the last layer down `backward.wgsl` (dz of the layer below,
//!   through its activation's derivative, with the weights before the step) and
//!   `update.wgsl` (dW = dzᵀ·A + λW, db = Σ dz, fused with the optimizer step).
//!
//! The kernels read their parameters (a layer's shape and optimizer constants, a
//! batch's `Step`) from read-only storage buffers, not uniforms: Mesa 22.3's lavapipe
//! inlines uniform values into the shader and compiles it again at dispatches after a
//! pipeline or bind group change, keeping every copy — with uniforms, 10 epochs of a
//! 64-64-3 network on 1350 rows in batches of 64 took the process from 127 to 308 MB
//! (and 154 ms an epoch); with storage buffers it stays at 129 MB (99 ms an epoch).

mod kernels;
mod params;

use std::time::Duration;

use kernels::{TrainKernels, BACKWARD, FORWARD, LOSS, STEP_BYTES, SUMSQ, UPDATE};
use params::{Step, TrainLayer};

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::Activation;
use crate::train::data::{Data, Targets};
use crate::train::engine::{Engine, Evaluation, Params};
use crate::train::{Hyper, Optimizer, Task, TrainSet};

/// Mini-batches encoded into one command buffer.
pub(crate) const BATCHES_PER_SUBMIT: usize = 64;
/// Rows of the validation (or training) split evaluated per pass.
const EVAL_ROWS: usize = 1024;
/// The edge of the GEMM kernels' workgroup tiles (the override `T` in
/// `shaders/train/`; 8 is the other value tested). On llvmpipe, under the load of
/// other builds, 8 and 16 measured alike (an epoch of a 64-64-3 network on 1350 rows:
/// 84 to 142 ms either way).
const TILE: usize = 16;
/// On llvmpipe (lavapipe, GL llvmpipe), which ends an invocation after 65535 loop
/// iterations, the most rows of a batch and inputs or outputs of a layer: the update
/// kernel loops over a batch's rows in tiles of T with T + 1 iterations a tile (36 864
/// for 32 768 rows in tiles of 8, 34 816 in tiles of 16), the forward and backward
/// kernels over a layer's inputs and outputs alike; the loss kernel over at most
/// 1024 rows (evaluation) or a batch, 256 at a time.
const LLVMPIPE_EXTENT: usize = 32_768;
/// How long a readback waits for the device.
const WAIT: Duration = Duration::from_secs(600);

/// A split's targets as the kernels read them.
pub(crate) enum RawTargets<'a> {
    /// Class labels, one per row.
    Labels(&'a [u32]),
    /// Float targets `[rows, outputs]` (read as their bits).
    Values(&'a [f32]),
}

/// A split as the engine uploads it: features `[rows, features]` and its targets.
pub(crate) struct RawSplit<'a> {
    pub(crate) x: &'a [f32],
    pub(crate) y: RawTargets<'a>,
    pub(crate) rows: usize,
}

/// What a [`GpuEngine`] trains: the initial layers, their activations, the optimizer,
/// the task and the data.
pub(crate) struct Spec<'a> {
    /// Each layer's `w` `[out, in]` and `b` `[out]`.
    pub(crate) layers: Vec<(&'a [f32], &'a [f32])>,
    /// Each layer's activation (the last layer's is ignored: logits or identity).
    pub(crate) activations: &'a [Activation],
    pub(crate) optimizer: Optimizer,
    pub(crate) weight_decay: f32,
    pub(crate) task: Task,
    pub(crate) features: usize,
    pub(crate) train: RawSplit<'a>,
    pub(crate) validation: Option<RawSplit<'a>>,
    /// A cap below the device's largest storage binding (tests of streaming).
    pub(crate) max_bytes: Option<u64>,
    /// The GEMM kernels' tile edge, 8 or 16 (`None`: [`TILE`]; tests of both).
    pub(crate) tile: Option<usize>,
}

/// One layer's resident buffers.
struct Layer {
    inputs: usize,
    outputs: usize,
    /// The activation's `ACT` code (0 for the output layer).
    act: u32,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    state: wgpu::Buffer,
    constants: wgpu::Buffer,
}

impl Layer {
    fn values(&self) -> usize {
        self.inputs * self.outputs + self.outputs
    }
}

/// A split on the device.
struct DataSplit {
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    rows: usize,
    /// The split's features and targets (as u32 words, `y_width` a row) kept on the
    /// host instead, when they exceed the device's largest storage binding: each pass
    /// then streams its batches' rows through the [`Window`].
    host: Option<(Vec<f32>, Vec<u32>)>,
}

/// Where the batches of a streamed split are copied, in order, a chunk of batches at
/// a time: room for `rows` rows of features and of targets.
struct Window {
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    rows: usize,
}

/// The buffers sized by a batch's rows: each layer's z, activation and dz.
struct RowBuffers {
    capacity: usize,
    z: Vec<wgpu::Buffer>,
    a: Vec<wgpu::Buffer>,
    dz: Vec<wgpu::Buffer>,
}

/// What a pass over batches does after the forward pass and the loss.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pass {
    /// Backward and an optimizer step per batch.
    Train { lr: f32 },
    /// Backward without a step (the gradients stay in their buffers).
    Gradients,
    /// Nothing: loss and correct rows only.
    Evaluate,
}

/// Which split a pass reads, and how.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rows {
    /// Training rows through the order buffer (`INPUT` 2).
    Ordered,
    /// The validation split's rows (or the training split's without one), in order
    /// (`INPUT` 1).
    Contiguous,
}

/// The loss and metric sums of an evaluation.
pub(crate) struct EvalSums {
    /// Mean loss over the rows (no L2 term).
    pub(crate) loss: f64,
    /// Accuracy (classification) or RMSE (regression).
    pub(crate) metric: f64,
}

/// A member's training on one device.
pub(crate) struct GpuEngine {
    ctx: GpuContext,
    kernels: TrainKernels,
    task: Task,
    optimizer: Optimizer,
    weight_decay: f32,
    layers: Vec<Layer>,
    train: DataSplit,
    validation: Option<DataSplit>,
    rows: Option<RowBuffers>,
    order: wgpu::Buffer,
    order_capacity: usize,
    steps: wgpu::Buffer,
    steps_capacity: usize,
    step_align: u64,
    stats: wgpu::Buffer,
    stats_capacity: usize,
    /// Optimizer steps taken (Adam's t).
    t: u64,
    /// The most rows of a batch the device computes correctly.
    max_rows: usize,
    /// The device's largest storage binding, in bytes (the row buffers' bound).
    binding_bytes: u64,
    /// The GEMM kernels' tile edge.
    tile: usize,
    /// Where a streamed split's batches go (`None` when both splits are resident).
    window: Option<Window>,
    /// The last row order uploaded (a streamed split gathers its rows by it).
    order_host: Vec<u32>,
    features: usize,
    /// u32 words of targets a row: 1 (a label) or the outputs.
    y_width: usize,
}

fn bytes(values: usize) -> u64 {
    (values.max(4) as u64) * 4
}

fn groups(n: usize, tile: usize) -> u32 {
    n.div_ceil(tile) as u32
}

impl GpuEngine {
    /// Uploads the data and the initial layers to `ctx`'s device.
    pub(crate) fn from_spec(ctx: GpuContext, spec: &Spec<'_>) -> Result<Self> {
        let device = &ctx.device;
        let limits = device.limits();
        let binding_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(u64::from(u32::MAX));
        let max_bytes = binding_bytes.min(spec.max_bytes.unwrap_or(u64::MAX));
        let llvmpipe = ctx.adapter.as_ref().is_some_and(|a| {
            let info = a.get_info();
            crate::placement::is_llvmpipe(&info.name, &info.driver)
        });
        let extent = if llvmpipe {
            LLVMPIPE_EXTENT
        } else {
            usize::MAX
        };
        let tile = match spec.tile {
            Some(t @ (8 | 16)) => t,
            _ => TILE,
        };
        let max_rows = extent.min(limits.max_compute_workgroups_per_dimension as usize * tile);
        let too_large = |what: String, values: usize| -> Result<()> {
            let need = bytes(values);
            if need > max_bytes {
                return Err(Error::BufferTooLarge {
                    what,
                    device: ctx.label.to_string(),
                    bytes: need,
                    limit: max_bytes,
                });
            }
            Ok(())
        };
        let storage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let upload = |label: &str, data: &[u8]| {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (data.len() as u64).max(16).next_multiple_of(4),
                usage: storage,
                mapped_at_creation: false,
            });
            ctx.queue.write_buffer(&buffer, 0, data);
            buffer
        };
        let empty = |label: &str, values: usize| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes(values),
                usage: storage,
                mapped_at_creation: false,
            })
        };
        let count = spec.layers.len();
        let stats_width = 2 + count as u32;
        let (decay, decoupled, beta1, beta2, eps, nesterov) = match spec.optimizer {
            Optimizer::Sgd { momentum, nesterov } => (
                spec.weight_decay,
                0.0,
                momentum,
                0.0,
                0.0,
                u32::from(nesterov),
            ),
            Optimizer::Adam { beta1, beta2, eps } => (spec.weight_decay, 0.0, beta1, beta2, eps, 0),
            Optimizer::AdamW { beta1, beta2, eps } => {
                (0.0, spec.weight_decay, beta1, beta2, eps, 0)
            }
        };
        let mut layers = Vec::with_capacity(count);
        let mut inputs = spec.features;
        for (i, &(w, b)) in spec.layers.iter().enumerate() {
            let outputs = b.len();
            if w.len() != inputs * outputs {
                return Err(Error::LayerShape {
                    layer: i,
                    what: "weight",
                    expected: vec![outputs, inputs],
                    got: vec![w.len()],
                });
            }
            if inputs > extent || outputs > extent {
                return Err(Error::InputsBeyondDriver {
                    member: "trained member".to_string(),
                    layer: i,
                    inputs: inputs.max(outputs),
                    limit: extent,
                    device: ctx.label.to_string(),
                });
            }
            let values = inputs * outputs + outputs;
            too_large(format!("layer {i}'s optimizer state"), 2 * values)?;
            let mut p = Vec::with_capacity(values);
            p.extend_from_slice(w);
            p.extend_from_slice(b);
            let act = if i + 1 == count {
                0
            } else {
                spec.activations.get(i).map_or(0, |a| a.shader_code())
            };
            let layer_constants = TrainLayer {
                in_features: inputs as u32,
                out_features: outputs as u32,
                stats_width,
                layer: i as u32,
                decay,
                decoupled,
                beta1,
                beta2,
                eps,
                nesterov,
                _pad: [0; 2],
            };
            let constants = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("train layer constants"),
                size: std::mem::size_of::<TrainLayer>() as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            ctx.queue
                .write_buffer(&constants, 0, bytemuck::bytes_of(&layer_constants));
            layers.push(Layer {
                inputs,
                outputs,
                act,
                params: upload("train params", bytemuck::cast_slice(&p)),
                grads: empty("train grads", values),
                state: empty("train optimizer state", 2 * values),
                constants,
            });
            inputs = outputs;
        }
        let y_width = match spec.task {
            Task::Classification => 1,
            _ => spec.layers.last().map_or(1, |l| l.1.len()),
        };
        // Rows of a streamed split's window: as many as a binding holds, at most 2^16.
        let window_rows =
            (max_bytes / (spec.features.max(y_width) as u64 * 4)).min(1 << 16) as usize;
        let split = |name: &str, s: &RawSplit<'_>| -> Result<DataSplit> {
            let y_len = match s.y {
                RawTargets::Labels(l) => l.len(),
                RawTargets::Values(v) => v.len(),
            };
            if (bytes(s.x.len()) > max_bytes || bytes(y_len) > max_bytes) && window_rows > 0 {
                let y: Vec<u32> = match s.y {
                    RawTargets::Labels(l) => l.to_vec(),
                    RawTargets::Values(v) => v.iter().map(|f| f.to_bits()).collect(),
                };
                return Ok(DataSplit {
                    x: empty("train features (streamed)", 1),
                    y: empty("train targets (streamed)", 1),
                    rows: s.rows,
                    host: Some((s.x.to_vec(), y)),
                });
            }
            too_large(format!("the {name} split's features"), s.x.len())?;
            let y = match s.y {
                RawTargets::Labels(l) => {
                    too_large(format!("the {name} split's labels"), l.len())?;
                    upload("train labels", bytemuck::cast_slice(l))
                }
                RawTargets::Values(v) => {
                    too_large(format!("the {name} split's targets"), v.len())?;
                    upload("train targets", bytemuck::cast_slice(v))
                }
            };
            Ok(DataSplit {
                x: upload("train features", bytemuck::cast_slice(s.x)),
                y,
                rows: s.rows,
                host: None,
            })
        };
        let train = split("training", &spec.train)?;
        let validation = spec
            .validation
            .as_ref()
            .map(|v| split("validation", v))
            .transpose()?;
        let streamed =
            train.host.is_some() || validation.as_ref().is_some_and(|v| v.host.is_some());
        let window = streamed.then(|| Window {
            x: empty("train window features", window_rows * spec.features),
            y: empty("train window targets", window_rows * y_width),
            rows: window_rows,
        });
        let kernels = TrainKernels::new(device);
        let step_align = u64::from(limits.min_storage_buffer_offset_alignment).max(STEP_BYTES);
        let order_capacity = train.rows.max(1);
        let order = empty("train order", order_capacity);
        let steps = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("train steps"),
            size: step_align,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let stats = empty("train stats", stats_width as usize);
        let engine = Self {
            kernels,
            task: spec.task,
            optimizer: spec.optimizer,
            weight_decay: spec.weight_decay,
            layers,
            train,
            validation,
            rows: None,
            order,
            order_capacity,
            steps,
            steps_capacity: 1,
            step_align,
            stats,
            stats_capacity: 1,
            t: 0,
            max_rows,
            binding_bytes,
            tile,
            window,
            order_host: Vec::new(),
            features: spec.features,
            y_width,
            ctx,
        };
        engine.check()?;
        Ok(engine)
    }

    /// Where it runs.
    pub(crate) fn device_name(&self) -> String {
        self.ctx.label.to_string()
    }

    /// The first error the device's handlers caught, if any.
    fn check(&self) -> Result<()> {
        match self.ctx.take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stats_width(&self) -> usize {
        2 + self.layers.len()
    }

    /// Whether the loss has an L2 term (and the pass sums the squared weights).
    fn l2(&self) -> bool {
        self.weight_decay > 0.0 && !matches!(self.optimizer, Optimizer::AdamW { .. })
    }

    /// The row buffers for batches of `rows` rows: a power of two of rows where that
    /// fits the largest storage binding, else exactly `rows`; an error when even
    /// those do not fit.
    fn ensure_rows(&mut self, rows: usize) -> Result<()> {
        if self.rows.as_ref().is_some_and(|r| r.capacity >= rows) {
            return Ok(());
        }
        let widest = self.layers.iter().map(|l| l.outputs).max().unwrap_or(1);
        let need = |r: usize| (r.max(1) as u64).saturating_mul(widest as u64 * 4);
        if need(rows) > self.binding_bytes {
            return Err(Error::BufferTooLarge {
                what: format!("a batch of {rows} rows through a layer of {widest} outputs"),
                device: self.ctx.label.to_string(),
                bytes: need(rows),
                limit: self.binding_bytes,
            });
        }
        let capacity = if need(rows.next_power_of_two()) <= self.binding_bytes {
            rows.next_power_of_two()
        } else {
            rows
        };
        let device = &self.ctx.device;
        let make = |label: &str, values: usize| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes(values),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        };
        let per = |label: &str| -> Vec<wgpu::Buffer> {
            self.layers
                .iter()
                .map(|l| make(label, capacity * l.outputs))
                .collect()
        };
        self.rows = Some(RowBuffers {
            capacity,
            z: per("train z"),
            a: per("train a"),
            dz: per("train dz"),
        });
        Ok(())
    }

    fn ensure_slots(&mut self, slots: usize) {
        let device = &self.ctx.device;
        if self.steps_capacity < slots {
            self.steps_capacity = slots.next_power_of_two();
            self.steps = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("train steps"),
                size: self.step_align * self.steps_capacity as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
        }
        if self.stats_capacity < slots {
            self.stats_capacity = slots.next_power_of_two();
            self.stats = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("train stats"),
                size: bytes(self.stats_capacity * self.stats_width()),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
        }
    }

    /// Uploads `order` (training row indices, each checked) as the pass's row order.
    fn upload_order(&mut self, order: &[u32]) -> Result<()> {
        if order.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let rows = self.train.rows;
        if let Some(&bad) = order.iter().find(|&&r| r as usize >= rows) {
            return Err(Error::TrainRow {
                row: bad as usize,
                rows,
            });
        }
        if order.len() > self.order_capacity {
            self.order_capacity = order.len().next_power_of_two();
            self.order = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("train order"),
                size: bytes(self.order_capacity),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
        }
        if !order.is_empty() {
            self.ctx
                .queue
                .write_buffer(&self.order, 0, bytemuck::cast_slice(order));
        }
        self.order_host.clear();
        self.order_host.extend_from_slice(order);
        Ok(())
    }

    fn check_rows(&self, rows: usize) -> Result<()> {
        if rows > self.max_rows {
            return Err(Error::InvalidValue {
                what: "batch size",
                value: format!("{rows} rows (this device takes at most {})", self.max_rows),
                expected: if self.max_rows == LLVMPIPE_EXTENT {
                    "at most 32768 rows on llvmpipe (it ends a shader after 65535 loop iterations)"
                } else {
                    "at most the rows the device's workgroup grid covers"
                },
            });
        }
        Ok(())
    }

    /// Runs `batches` (first position in the order or split, rows) through `pass`;
    /// returns the stats of every batch, `stats_width` floats each.
    fn run(&mut self, batches: &[(usize, usize)], rows_kind: Rows, pass: Pass) -> Result<Vec<f32>> {
        let widest = batches.iter().map(|b| b.1).max().unwrap_or(0);
        self.check_rows(widest)?;
        self.ensure_rows(widest.max(1))?;
        // Each batch has a slot of `step_align` bytes, reached by a dynamic offset (a
        // u32): beyond it, offsets would wrap and batches share a step.
        let slots = batches.len().max(1);
        let max_buffer = self.ctx.device.limits().max_buffer_size;
        if let Err((bytes, limit)) = slots_fit(slots, self.step_align, max_buffer) {
            return Err(Error::BufferTooLarge {
                what: format!(
                    "the steps of {slots} batches in one pass (a larger batch_size makes fewer)"
                ),
                device: self.ctx.label.to_string(),
                bytes,
                limit,
            });
        }
        self.ensure_slots(slots);
        let outputs = self.layers.last().map_or(1, |l| l.outputs);
        let streamed = match rows_kind {
            Rows::Ordered => self.train.host.is_some(),
            Rows::Contiguous => self
                .validation
                .as_ref()
                .unwrap_or(&self.train)
                .host
                .is_some(),
        };
        // The command buffers' batches (index ranges), and each batch's first row in
        // what its pass reads: the order or the split, or the window of its chunk.
        let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
        let mut offsets: Vec<usize> = Vec::with_capacity(batches.len());
        match (&self.window, streamed) {
            (Some(window), true) => {
                let mut start = 0;
                let mut filled = 0;
                for (b, &(_, rows)) in batches.iter().enumerate() {
                    if rows > window.rows {
                        return Err(Error::BufferTooLarge {
                            what: format!("a streamed batch of {rows} rows"),
                            device: self.ctx.label.to_string(),
                            bytes: bytes(rows * self.features.max(self.y_width)),
                            limit: bytes(window.rows * self.features.max(self.y_width)),
                        });
                    }
                    if filled + rows > window.rows || b - start == BATCHES_PER_SUBMIT {
                        chunks.push(start..b);
                        start = b;
                        filled = 0;
                    }
                    offsets.push(filled);
                    filled += rows;
                }
                chunks.push(start..batches.len());
            }
            _ => {
                offsets.extend(batches.iter().map(|b| b.0));
                let mut start = 0;
                while start < batches.len() {
                    let end = (start + BATCHES_PER_SUBMIT).min(batches.len());
                    chunks.push(start..end);
                    start = end;
                }
            }
        }
        // The per-batch steps.
        let mut steps = vec![0u8; self.step_align as usize * batches.len()];
        let (beta1, beta2) = match self.optimizer {
            Optimizer::Adam { beta1, beta2, .. } | Optimizer::AdamW { beta1, beta2, .. } => {
                (f64::from(beta1), f64::from(beta2))
            }
            Optimizer::Sgd { .. } => (0.0, 0.0),
        };
        // Batch `slot` is Adam's step t0 + slot + 1; `self.t` counts a chunk's steps
        // once its submission went through, so that a failed run does not advance it
        // past the steps the device took.
        let t0 = self.t;
        for (slot, (&(_, rows), &offset)) in batches.iter().zip(&offsets).enumerate() {
            let (lr, bc1, bc2) = match pass {
                Pass::Train { lr } => {
                    let step = t0.saturating_add(slot as u64 + 1);
                    let t = i32::try_from(step).unwrap_or(i32::MAX);
                    (
                        lr,
                        (1.0 - beta1.powi(t)) as f32,
                        (1.0 - beta2.powi(t)) as f32,
                    )
                }
                _ => (0.0, 1.0, 1.0),
            };
            let scale = match self.task {
                Task::Classification => 1.0 / rows as f32,
                _ => 2.0 / (rows * outputs) as f32,
            };
            let step = Step {
                offset: offset as u32,
                rows: rows as u32,
                slot: slot as u32,
                _pad: 0,
                scale,
                lr,
                bc1: if bc1 > 0.0 { bc1 } else { 1.0 },
                bc2: if bc2 > 0.0 { bc2 } else { 1.0 },
            };
            let at = slot * self.step_align as usize;
            steps[at..at + STEP_BYTES as usize].copy_from_slice(bytemuck::bytes_of(&step));
        }
        if !steps.is_empty() {
            self.ctx.queue.write_buffer(&self.steps, 0, &steps);
        }
        let input_kind = match rows_kind {
            _ if streamed => 1,
            Rows::Ordered => 2,
            Rows::Contiguous => 1,
        };
        let opt = match (pass, self.optimizer) {
            (Pass::Train { .. }, Optimizer::Sgd { .. }) => 1,
            (Pass::Train { .. }, _) => 2,
            _ => 0,
        };
        let loss_code = match self.task {
            Task::Classification => 0,
            _ => 1,
        };
        let split = match rows_kind {
            Rows::Ordered => &self.train,
            Rows::Contiguous => self.validation.as_ref().unwrap_or(&self.train),
        };
        let (data_x, data_y) = match (&self.window, streamed) {
            (Some(w), true) => (&w.x, &w.y),
            _ => (&split.x, &split.y),
        };
        let l2 = self.l2() && pass != Pass::Evaluate;
        let tile = self.tile;
        let t = tile as u32;
        let device = &self.ctx.device;
        let count = self.layers.len();
        let Some(rb) = self.rows.as_ref() else {
            return Err(Error::Gpu {
                device: self.ctx.label.to_string(),
                message: "training buffers missing".to_string(),
            });
        };
        // Pipelines and bind groups, the same for every batch.
        let kernels = &mut self.kernels;
        let bind = |layout: &wgpu::BindGroupLayout, buffers: &[&wgpu::Buffer]| {
            crate::gpu::bind_buffers(device, layout, buffers)
        };
        let mut forward = Vec::with_capacity(count);
        let mut backward = Vec::with_capacity(count);
        let mut update = Vec::with_capacity(count);
        let mut sumsq = Vec::with_capacity(count);
        for (i, layer) in self.layers.iter().enumerate() {
            let input = if i == 0 { data_x } else { &rb.a[i - 1] };
            let kind = if i == 0 { input_kind } else { 0 };
            forward.push((
                kernels.pipeline(
                    device,
                    FORWARD,
                    &[("ACT", layer.act), ("INPUT", kind), ("T", t)],
                )?,
                bind(
                    kernels.layout(FORWARD)?,
                    &[
                        input,
                        &self.order,
                        &layer.params,
                        &rb.z[i],
                        &rb.a[i],
                        &layer.constants,
                    ],
                ),
            ));
            if pass == Pass::Evaluate {
                continue;
            }
            if i > 0 {
                let below = &self.layers[i - 1];
                backward.push(Some((
                    kernels.pipeline(device, BACKWARD, &[("ACT", below.act), ("T", t)])?,
                    bind(
                        kernels.layout(BACKWARD)?,
                        &[
                            &rb.dz[i],
                            &layer.params,
                            &rb.z[i - 1],
                            &rb.a[i - 1],
                            &rb.dz[i - 1],
                            &layer.constants,
                        ],
                    ),
                )));
            } else {
                backward.push(None);
            }
            update.push((
                kernels.pipeline(device, UPDATE, &[("OPT", opt), ("INPUT", kind), ("T", t)])?,
                bind(
                    kernels.layout(UPDATE)?,
                    &[
                        &rb.dz[i],
                        input,
                        &self.order,
                        &layer.params,
                        &layer.grads,
                        &layer.state,
                        &layer.constants,
                    ],
                ),
            ));
            if l2 {
                sumsq.push((
                    kernels.pipeline(device, SUMSQ, &[])?,
                    bind(
                        kernels.layout(SUMSQ)?,
                        &[&layer.params, &self.stats, &layer.constants],
                    ),
                ));
            }
        }
        let last = count - 1;
        let loss = (
            kernels.pipeline(device, LOSS, &[("LOSS", loss_code), ("INPUT", input_kind)])?,
            bind(
                kernels.layout(LOSS)?,
                &[
                    &rb.z[last],
                    &self.order,
                    data_y,
                    &rb.dz[last],
                    &self.stats,
                    &self.layers[last].constants,
                ],
            ),
        );
        let step_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("train step"),
            layout: &kernels.step_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.steps,
                    offset: 0,
                    size: wgpu::BufferSize::new(STEP_BYTES),
                }),
            }],
        });
        for range in chunks {
            if let (Some(window), Some((x, y))) = (&self.window, &split.host) {
                // The chunk's rows, batch after batch, into the window.
                let (f, k) = (self.features, self.y_width);
                let mut wx: Vec<f32> = Vec::new();
                let mut wy: Vec<u32> = Vec::new();
                for &(offset, rows) in &batches[range.clone()] {
                    for p in offset..offset + rows {
                        let r = match rows_kind {
                            Rows::Ordered => self.order_host.get(p).map_or(0, |&r| r as usize),
                            Rows::Contiguous => p,
                        };
                        wx.extend_from_slice(x.get(r * f..(r + 1) * f).unwrap_or_default());
                        wy.extend_from_slice(y.get(r * k..(r + 1) * k).unwrap_or_default());
                    }
                }
                self.ctx
                    .queue
                    .write_buffer(&window.x, 0, bytemuck::cast_slice(&wx));
                self.ctx
                    .queue
                    .write_buffer(&window.y, 0, bytemuck::cast_slice(&wy));
            }
            let chunk = &batches[range.clone()];
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("train batches"),
            });
            {
                let mut cpass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("train batches"),
                    timestamp_writes: None,
                });
                for (j, &(_, rows)) in chunk.iter().enumerate() {
                    let slot = range.start + j;
                    let dynamic = [(slot as u64 * self.step_align) as u32];
                    cpass.set_bind_group(1, &step_group, &dynamic);
                    for (i, (pipeline, group)) in forward.iter().enumerate() {
                        cpass.set_pipeline(pipeline);
                        cpass.set_bind_group(0, group, &[]);
                        cpass.dispatch_workgroups(
                            groups(self.layers[i].outputs, tile),
                            groups(rows, tile),
                            1,
                        );
                    }
                    cpass.set_pipeline(&loss.0);
                    cpass.set_bind_group(0, &loss.1, &[]);
                    cpass.dispatch_workgroups(1, 1, 1);
                    if pass == Pass::Evaluate {
                        continue;
                    }
                    for (pipeline, group) in &sumsq {
                        cpass.set_pipeline(pipeline);
                        cpass.set_bind_group(0, group, &[]);
                        cpass.dispatch_workgroups(1, 1, 1);
                    }
                    for i in (0..count).rev() {
                        let layer = &self.layers[i];
                        if let Some((pipeline, group)) = &backward[i] {
                            cpass.set_pipeline(pipeline);
                            cpass.set_bind_group(0, group, &[]);
                            cpass.dispatch_workgroups(
                                groups(layer.inputs, tile),
                                groups(rows, tile),
                                1,
                            );
                        }
                        let (pipeline, group) = &update[i];
                        cpass.set_pipeline(pipeline);
                        cpass.set_bind_group(0, group, &[]);
                        cpass.dispatch_workgroups(
                            groups(layer.inputs, tile),
                            groups(layer.outputs, tile),
                            1,
                        );
                    }
                }
            }
            self.ctx.queue.submit([encoder.finish()]);
            self.check()?;
            if let Pass::Train { .. } = pass {
                self.t = t0.saturating_add(range.end as u64);
            }
        }
        let width = self.stats_width();
        let mut out = self.read(&[(&self.stats, batches.len() * width)])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Copies the first `values` floats of each buffer back.
    fn read(&self, buffers: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>> {
        let device = &self.ctx.device;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("train readback"),
        });
        let staging: Vec<(wgpu::Buffer, u64)> = buffers
            .iter()
            .map(|&(buffer, values)| {
                let size = (values as u64 * 4).max(4);
                let staging = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("train staging"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                if values > 0 {
                    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
                }
                (staging, size)
            })
            .collect();
        let submission = self.ctx.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        for (buffer, size) in &staging {
            let tx = tx.clone();
            buffer
                .slice(..*size)
                .map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send(r);
                });
        }
        let gpu_error = |message: String| Error::Gpu {
            device: self.ctx.label.to_string(),
            message,
        };
        let waited = device.poll(wgpu::PollType::Wait {
            submission_index: Some(submission),
            timeout: Some(WAIT),
        });
        self.check()?;
        waited.map_err(|e| gpu_error(format!("waiting for training work: {e}")))?;
        for _ in &staging {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(gpu_error(format!("mapping a result: {e}"))),
                Err(_) => return Err(gpu_error("a result was never mapped".to_string())),
            }
        }
        let mut out = Vec::with_capacity(staging.len());
        for ((buffer, size), &(_, values)) in staging.iter().zip(buffers) {
            let view = buffer
                .slice(..*size)
                .get_mapped_range()
                .map_err(|e| gpu_error(format!("reading a result: {e}")))?;
            let mut v = vec![0.0f32; values];
            for (d, c) in v.iter_mut().zip(view.chunks_exact(4)) {
                *d = f32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
            drop(view);
            buffer.unmap();
            out.push(v);
        }
        self.check()?;
        Ok(out)
    }

    /// The loss of batch `slot` of `rows` rows from `stats`: the mean of its rows'
    /// losses (over rows × outputs for squared error), plus (λ/2)·Σ‖W‖² where the loss
    /// has an L2 term.
    fn batch_loss(&self, stats: &[f32], slot: usize, rows: usize) -> f64 {
        let width = self.stats_width();
        let s = &stats[slot * width..(slot + 1) * width];
        let outputs = self.layers.last().map_or(1, |l| l.outputs);
        let per = match self.task {
            Task::Classification => rows,
            _ => rows * outputs,
        };
        let mut loss = f64::from(s[0]) / per.max(1) as f64;
        if self.l2() {
            let sq: f64 = s[2..].iter().map(|&v| f64::from(v)).sum();
            loss += 0.5 * f64::from(self.weight_decay) * sq;
        }
        loss
    }

    /// One epoch: the rows in `order`, batches of `batch_size`, a step each; the
    /// losses of the batches and their rows.
    pub(crate) fn epoch_losses(
        &mut self,
        order: &[u32],
        batch_size: usize,
        lr: f32,
    ) -> Result<Vec<(f64, usize)>> {
        let batch_size = batch_size.max(1);
        self.upload_order(order)?;
        let batches: Vec<(usize, usize)> = (0..order.len())
            .step_by(batch_size)
            .map(|start| (start, batch_size.min(order.len() - start)))
            .collect();
        let stats = self.run(&batches, Rows::Ordered, Pass::Train { lr })?;
        Ok(batches
            .iter()
            .enumerate()
            .map(|(slot, &(_, rows))| (self.batch_loss(&stats, slot, rows), rows))
            .collect())
    }

    /// One step on `rows`; the batch's loss.
    pub(crate) fn step_rows(&mut self, rows: &[u32], lr: f32) -> Result<f64> {
        self.upload_order(rows)?;
        let stats = self.run(&[(0, rows.len())], Rows::Ordered, Pass::Train { lr })?;
        Ok(self.batch_loss(&stats, 0, rows.len()))
    }

    /// The loss and each layer's gradients (`w` then `b`) on `rows`, without a step.
    pub(crate) fn gradients_rows(&mut self, rows: &[u32]) -> Result<(f64, Vec<Params>)> {
        self.upload_order(rows)?;
        let stats = self.run(&[(0, rows.len())], Rows::Ordered, Pass::Gradients)?;
        let loss = self.batch_loss(&stats, 0, rows.len());
        let grads = self.read(
            &self
                .layers
                .iter()
                .map(|l| (&l.grads, l.values()))
                .collect::<Vec<_>>(),
        )?;
        Ok((loss, self.split(grads)))
    }

    /// The current parameters (`w` then `b` per layer).
    pub(crate) fn params_now(&mut self) -> Result<Vec<Params>> {
        let params = self.read(
            &self
                .layers
                .iter()
                .map(|l| (&l.params, l.values()))
                .collect::<Vec<_>>(),
        )?;
        Ok(self.split(params))
    }

    fn split(&self, values: Vec<Vec<f32>>) -> Vec<Params> {
        values
            .into_iter()
            .zip(&self.layers)
            .map(|(mut weight, l)| {
                let bias = weight.split_off(l.inputs * l.outputs);
                Params { weight, bias }
            })
            .collect()
    }

    /// Mean loss (without an L2 term) and metric over the validation split (the
    /// training split without one).
    pub(crate) fn evaluate_sums(&mut self) -> Result<EvalSums> {
        let split = self.validation.as_ref().unwrap_or(&self.train);
        let n = split.rows;
        let window = match (&self.window, &split.host) {
            (Some(w), Some(_)) => w.rows,
            _ => usize::MAX,
        };
        let chunk = EVAL_ROWS.min(self.max_rows).min(window).max(1);
        let batches: Vec<(usize, usize)> = (0..n)
            .step_by(chunk)
            .map(|start| (start, chunk.min(n - start)))
            .collect();
        let stats = self.run(&batches, Rows::Contiguous, Pass::Evaluate)?;
        let width = self.stats_width();
        let (mut loss, mut correct) = (0.0f64, 0.0f64);
        for slot in 0..batches.len() {
            loss += f64::from(stats[slot * width]);
            correct += f64::from(stats[slot * width + 1]);
        }
        let outputs = self.layers.last().map_or(1, |l| l.outputs);
        Ok(match self.task {
            Task::Classification => EvalSums {
                loss: loss / n.max(1) as f64,
                metric: correct / n.max(1) as f64,
            },
            _ => {
                let mse = loss / (n * outputs).max(1) as f64;
                EvalSums {
                    loss: mse,
                    metric: mse.sqrt(),
                }
            }
        })
    }
}

/// A split's features and targets as the engine uploads them.
fn raw(data: &Data) -> RawSplit<'_> {
    RawSplit {
        x: data.x().as_slice(),
        y: match data.y() {
            Targets::Labels(l) => RawTargets::Labels(l),
            Targets::Values(v) => RawTargets::Values(v.as_slice()),
        },
        rows: data.rows(),
    }
}

impl GpuEngine {
    /// An engine on `ctx`'s device starting from `init` (shapes chaining from the
    /// set's features to its outputs), `activations` one per layer (the last
    /// `Identity`), training `set` with `hyper`'s optimizer and weight decay.
    pub(crate) fn new(
        ctx: GpuContext,
        init: &[Params],
        activations: &[Activation],
        hyper: &Hyper,
        set: &TrainSet,
    ) -> Result<Self> {
        let last = init.last().map_or(0, |p| p.bias.len());
        if init.is_empty() || last != set.outputs() || init.len() != activations.len() {
            return Err(Error::LayerShape {
                layer: init.len().saturating_sub(1),
                what: "the last layer's outputs must equal the task's outputs, one activation per layer",
                expected: vec![set.outputs()],
                got: vec![last],
            });
        }
        let spec = Spec {
            layers: init
                .iter()
                .map(|p| (p.weight.as_slice(), p.bias.as_slice()))
                .collect(),
            activations,
            optimizer: hyper.optimizer,
            weight_decay: hyper.weight_decay,
            task: set.task(),
            features: set.features(),
            train: raw(set.train()),
            validation: set.validation().map(raw),
            max_bytes: None,
            tile: None,
        };
        Self::from_spec(ctx, &spec)
    }
}

impl Engine for GpuEngine {
    fn epoch(&mut self, order: &[u32], batch_size: usize, lr: f32) -> Result<f64> {
        if order.is_empty() || batch_size == 0 {
            return Err(Error::EmptyBatch);
        }
        let losses = self.epoch_losses(order, batch_size, lr)?;
        let total: f64 = losses.iter().map(|&(loss, rows)| loss * rows as f64).sum();
        Ok(total / order.len() as f64)
    }

    fn evaluate(&mut self) -> Result<Evaluation> {
        let sums = self.evaluate_sums()?;
        Ok(Evaluation {
            loss: sums.loss,
            metric: sums.metric,
        })
    }

    fn gradients(&mut self, rows: &[u32]) -> Result<(f64, Vec<Params>)> {
        let (loss, grads) = self.gradients_rows(rows)?;
        Ok((loss, grads))
    }

    fn step(&mut self, rows: &[u32], lr: f32) -> Result<f64> {
        self.step_rows(rows, lr)
    }

    fn params(&mut self) -> Result<Vec<Params>> {
        self.params_now()
    }

    fn device(&self) -> String {
        self.device_name()
    }
}

#[cfg(test)]
mod tests;

/// The bytes of the steps buffer for `slots` batches (a power of two of slots, each
/// `step_align` bytes), or `Err((bytes, limit))` when they exceed the device's largest
/// buffer or what a u32 dynamic offset reaches (batches would then share a step).
fn slots_fit(
    slots: usize,
    step_align: u64,
    max_buffer: u64,
) -> std::result::Result<u64, (u64, u64)> {
    let bytes = (slots.next_power_of_two() as u64).saturating_mul(step_align);
    let limit = max_buffer.min(u64::from(u32::MAX));
    if bytes > limit {
        Err((bytes, limit))
    } else {
        Ok(bytes)
    }
}

#[cfg(test)]
mod slot_tests {
    /// 2^24 slots of 256 bytes (4 GiB) pass what a u32 offset reaches even on a
    /// device of unlimited buffers; 2^20 fit a 256 MiB buffer, one more does not.
    #[test]
    fn steps_beyond_a_u32_offset_or_the_buffer_are_refused() {
        assert_eq!(
            super::slots_fit(1 << 24, 256, 1 << 40),
            Err((1 << 32, u64::from(u32::MAX)))
        );
        assert_eq!(
            super::slots_fit((1 << 24) - 1, 256, 1 << 40),
            Err((1 << 32, u64::from(u32::MAX)))
        );
        assert_eq!(super::slots_fit(1 << 23, 256, 1 << 40), Ok(1 << 31));
        assert_eq!(super::slots_fit(1 << 20, 256, 1 << 28), Ok(1 << 28));
        assert_eq!(
            super::slots_fit((1 << 20) + 1, 256, 1 << 28),
            Err((1 << 29, 1 << 28))
        );
    }
}
