//! The parameters of the training kernels (read-only storage, not uniforms), as
//! `shaders/train/params.wgsl` declares them.

use bytemuck::{Pod, Zeroable};

/// One layer's shape and optimizer constants (`TrainLayer`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct TrainLayer {
    pub(crate) in_features: u32,
    pub(crate) out_features: u32,
    pub(crate) stats_width: u32,
    pub(crate) layer: u32,
    pub(crate) decay: f32,
    pub(crate) decoupled: f32,
    pub(crate) beta1: f32,
    pub(crate) beta2: f32,
    pub(crate) eps: f32,
    pub(crate) nesterov: u32,
    pub(crate) _pad: [u32; 2],
}

/// One mini-batch's values (`Step`), one slot per batch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct Step {
    pub(crate) offset: u32,
    pub(crate) rows: u32,
    pub(crate) slot: u32,
    pub(crate) _pad: u32,
    pub(crate) scale: f32,
    pub(crate) lr: f32,
    pub(crate) bc1: f32,
    pub(crate) bc2: f32,
}

const _: () = assert!(std::mem::size_of::<Step>() as u64 == super::kernels::STEP_BYTES);
const _: () = assert!(std::mem::size_of::<TrainLayer>() == 48);
