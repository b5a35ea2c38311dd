//! The uniform structs the WGSL kernels read, defined once on the Rust side: the
//! dense kernels' `Params` (`shaders/`' params piece) and the aggregate kernels'.

use super::kernels::MAX_STACK;

/// `DenseParams` of the dense kernels (`shaders/lib/dense_params.wgsl`); softmax.wgsl
/// reads its `rows`, `out_features` and `y_stride`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct DenseParams {
    pub(crate) rows: u32,
    pub(crate) out_features: u32,
    pub(crate) in_features: u32,
    /// Values from one member's x, w, b and y to the next member's in the stacked
    /// buffers (x: 0 for the first layer, whose input all members share).
    pub(crate) x_stride: u32,
    pub(crate) w_stride: u32,
    pub(crate) b_stride: u32,
    pub(crate) y_stride: u32,
    pub(crate) _pad: u32,
}

impl DenseParams {
    /// One layer of `rows` rows, `outputs` outputs and `inputs` inputs for one member
    /// (no strides between members) whose output holds `y_stride` values: what the
    /// autotune times a candidate with.
    pub(crate) fn single(rows: u32, outputs: u32, inputs: u32, y_stride: u32) -> Self {
        Self {
            rows,
            out_features: outputs,
            in_features: inputs,
            x_stride: 0,
            w_stride: 0,
            b_stride: 0,
            y_stride,
            _pad: 0,
        }
    }
}

/// `AggregateParams` of aggregate.wgsl, softmax_aggregate.wgsl, moments.wgsl and
/// blend.wgsl
/// (`shaders/lib/aggregate_params.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AggregateParams {
    pub(crate) rows: u32,
    pub(crate) cols: u32,
    pub(crate) members: u32,
    /// Bit z set: member z of the stack takes part in this run.
    pub(crate) present: u32,
    pub(crate) y_stride: u32,
    /// blend.wgsl: the blender's first-layer outputs (0 without a blender).
    pub(crate) hidden: u32,
    pub(crate) _pad: [u32; 2],
    pub(crate) weights: [f32; MAX_STACK],
}
