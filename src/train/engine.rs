//! The engine contract: what a placement's trainer does. An engine holds the weights and
//! the optimizer's state on its device for the whole training, runs epochs of
//! mini-batches (forward with the activations kept, backward, optimizer step),
//! evaluates, and gives the weights back. The CPU engine ([`CpuEngine`]) and the GPU
//! engine implement it; [`engine`] picks one for a placement.
//!
//! The maths every engine follows (PLAN18 and the numpy fixture
//! `tests/fixtures/make_train.py`):
//! - layers `z = a·Wᵀ + b`, `a' = act(z)`; the output layer's `z` are logits
//!   (classification) or the predictions (regression);
//! - classification: the mean over the batch of `−log softmax(z)[label]`;
//!   regression: the mean over every element of `(z − t)²`;
//! - L2 decay (SGD, Adam): `(λ/2)·Σ‖W‖²` over the weights (not the biases) is part of
//!   the training loss reported and differentiated; AdamW decays `W -= lr·λ·W` before
//!   its step and reports no decay term; an [`Evaluation`]'s loss never has one;
//! - the optimizers as [`Optimizer`](crate::train::Optimizer) documents them, Adam's
//!   step `t` counting from 1.

use crate::error::Result;
use crate::gpu::{DevicePool, GpuContext};
use crate::model::Activation;
use crate::placement::Placement;
use crate::precision::Precision;
use crate::train::cpu::CpuEngine;
use crate::train::gpu::GpuEngine;
use crate::train::{Hyper, TrainSet};

/// One layer's parameters (or their gradients): `weight` `[out, in]` row-major, as
/// PyTorch's `nn.Linear`, and `bias` `[out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// `[out, in]`, row-major.
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// A member's loss and metric on a split.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// The mean loss (cross-entropy or squared error), without a weight-decay term.
    pub loss: f64,
    /// Accuracy in `[0, 1]` (classification) or root mean squared error (regression).
    pub metric: f64,
}

/// What a placement's trainer does. Rows are indices into the training split of the
/// [`TrainSet`] the engine was made with.
pub(crate) trait Engine: Send {
    /// One epoch: the training rows in `order`, mini-batches of `batch_size` in that
    /// order, one optimizer step per batch at learning rate `lr`; returns the mean
    /// training loss (the batches' losses weighted by their rows, read back once).
    fn epoch(&mut self, order: &[u32], batch_size: usize, lr: f32) -> Result<f64>;
    /// Loss and metric on the validation split (the training split when there is none).
    fn evaluate(&mut self) -> Result<Evaluation>;
    /// Loss and gradients of the training rows `rows` (one batch), without a step.
    fn gradients(&mut self, rows: &[u32]) -> Result<(f64, Vec<Params>)>;
    /// One optimizer step on the training rows `rows`; returns the batch loss.
    fn step(&mut self, rows: &[u32], lr: f32) -> Result<f64>;
    /// The current parameters (read back).
    fn params(&mut self) -> Result<Vec<Params>>;
    /// Where it runs, for records (`cpu`, `adapter 0 (llvmpipe …)`).
    fn device(&self) -> String;
}

/// The layers' activations an engine applies: `activations[l]` after layer `l`, the
/// last one `Identity` (the loss applies the softmax of classification itself).
pub(crate) fn layer_activations(hidden: &[Activation], layers: usize) -> Vec<Activation> {
    (0..layers)
        .map(|l| {
            if l + 1 == layers {
                Activation::Identity
            } else {
                hidden.get(l).copied().unwrap_or(Activation::Identity)
            }
        })
        .collect()
}

/// Builds the engine for a placement: `Cpu` → [`CpuEngine`]; an adapter, a queue slot
/// or a caller's device → the GPU engine; `Auto` → the first usable hardware adapter
/// (discrete, integrated or virtual GPU), else the CPU: a software adapter (llvmpipe)
/// runs on the same cores as the CPU engine, measured about 50 times slower there.
///
/// `init` holds every layer's initial parameters (`[out, in]` chaining from the set's
/// features to its outputs), `activations` one per layer (the last `Identity`), `hyper`
/// the validated hyperparameters.
pub(crate) fn engine(
    init: &[Params],
    activations: &[Activation],
    hyper: &Hyper,
    set: &TrainSet,
    placement: &Placement,
) -> Result<Box<dyn Engine>> {
    let gpu = |ctx: GpuContext| -> Result<Box<dyn Engine>> {
        Ok(Box::new(GpuEngine::new(
            ctx,
            init,
            activations,
            hyper,
            set,
        )?))
    };
    match placement {
        Placement::Cpu => Ok(Box::new(CpuEngine::new(init, activations, hyper, set)?)),
        Placement::Auto => {
            let mut pool = DevicePool::new(Precision::F32);
            let hardware = pool
                .usable()
                .into_iter()
                .find(|&i| pool.infos.get(i).is_some_and(is_hardware));
            match hardware {
                Some(index) => gpu(pool.open("trained member", index, 0)?),
                None => Ok(Box::new(CpuEngine::new(init, activations, hyper, set)?)),
            }
        }
        Placement::Adapter(index) => {
            gpu(DevicePool::new(Precision::F32).open("trained member", *index, 0)?)
        }
        Placement::Queue { adapter, slot } => {
            gpu(DevicePool::new(Precision::F32).open("trained member", *adapter, *slot)?)
        }
        Placement::Device(ext) => gpu(GpuContext::external(ext)),
    }
}

/// Whether an adapter is a GPU worth training on (discrete, integrated or virtual, not
/// llvmpipe): a software adapter runs on the same cores as the CPU engine, many times
/// slower. Both `auto`s of training use it.
pub(crate) fn is_hardware(info: &crate::placement::AdapterInfo) -> bool {
    matches!(
        info.device_type,
        wgpu::DeviceType::DiscreteGpu
            | wgpu::DeviceType::IntegratedGpu
            | wgpu::DeviceType::VirtualGpu
    ) && !crate::placement::is_llvmpipe(&info.name, &info.driver)
}
