//! Training dense members: one member on a chosen placement (`train_member`), and
//! studies of many trials at once, one per device, whose best trials become an
//! ensemble (`study`).
//!
//! The pieces, lowest first:
//! - [`Hyper`]: one trial's hyperparameters (architecture, optimizer, schedule,
//!   mini-batches, early stopping, seed).
//! - `data`: a data set (`Data`: features and `Targets`), its seeded validation
//!   split and standardisation.
//! - the engine contract (`engine.rs`): what a placement's trainer does — hold the
//!   weights and the optimizer's state on its device for the whole training, run an
//!   epoch of mini-batches (forward with the activations kept, backward, optimizer
//!   step), evaluate, give the weights back. The CPU engine (`cpu.rs`) and the GPU
//!   engine (`gpu.rs`, WGSL kernels) implement it.
//! - `train_member`: the loop every engine shares — seeded shuffling every epoch,
//!   the learning-rate schedule, early stopping keeping the best weights, progress once
//!   per epoch — and the export of the trained member as a `Model` (standardisation
//!   folded into its first layer, softmax at the end for classification).

pub(crate) mod gpu;

use crate::model::Activation;

mod blender;
mod cpu;
mod data;
mod engine;
mod member;
pub mod study;

pub use blender::{fit_blender, read_labels, stack_outputs, BlenderFit, MAX_BLENDER_PARAMETERS};
pub use data::{Data, Standardizer, Targets, TrainSet, MAX_CLASSES};
pub use engine::{Evaluation, Params};
pub use member::{train_member, EpochReport, Trained, Trainer, MAX_PARAMETERS};

/// What a member learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Task {
    /// Integer class labels `0..classes`; cross-entropy on a softmax output; the metric
    /// is accuracy.
    Classification,
    /// Float targets `[n, k]`; mean squared error on an identity output; the metric is
    /// the root mean squared error.
    Regression,
}

/// The optimizer and its own constants.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Optimizer {
    /// SGD with momentum (`0` for none), optionally Nesterov's, PyTorch's formulation:
    /// `v = μ·v + g`; `w -= lr·v` (or `w -= lr·(g + μ·v)` with Nesterov). Weight decay
    /// is added to the gradient (L2).
    Sgd {
        /// μ, in `[0, 1)`.
        momentum: f32,
        /// Nesterov's momentum.
        nesterov: bool,
    },
    /// Adam (Kingma & Ba), PyTorch's formulation with bias correction; weight decay is
    /// added to the gradient (L2).
    Adam {
        /// β₁, in `[0, 1)`.
        beta1: f32,
        /// β₂, in `[0, 1)`.
        beta2: f32,
        /// ε, > 0.
        eps: f32,
    },
    /// AdamW (Loshchilov & Hutter): Adam with decoupled weight decay,
    /// `w -= lr·λ·w` before the Adam step, as PyTorch's `AdamW`.
    AdamW {
        /// β₁, in `[0, 1)`.
        beta1: f32,
        /// β₂, in `[0, 1)`.
        beta2: f32,
        /// ε, > 0.
        eps: f32,
    },
}

impl Optimizer {
    /// SGD with momentum 0.9, as most recipes use.
    pub const SGD: Optimizer = Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
    };
    /// Adam with PyTorch's defaults (β = 0.9, 0.999; ε = 1e-8).
    pub const ADAM: Optimizer = Optimizer::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };
    /// AdamW with PyTorch's defaults (β = 0.9, 0.999; ε = 1e-8).
    pub const ADAMW: Optimizer = Optimizer::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };
}

/// The learning rate over the epochs.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Schedule {
    /// The same every epoch.
    Constant,
    /// Multiplied by `gamma` every `every` epochs (PyTorch's `StepLR`).
    Step {
        /// Epochs between two decays, ≥ 1.
        every: usize,
        /// The factor, in `(0, 1]`.
        gamma: f32,
    },
    /// Cosine annealing from the learning rate down to `min_lr` over the epochs
    /// (PyTorch's `CosineAnnealingLR` with `T_max` = epochs).
    Cosine {
        /// The learning rate the cosine reaches at epoch `epochs` (PyTorch's `eta_min`;
        /// the last epoch run, `epochs − 1`, is a step above it), ≥ 0.
        min_lr: f32,
    },
}

/// One trial's hyperparameters: everything that decides its result besides the data.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Hyper {
    /// Hidden layer widths (may be empty: a linear model), each ≥ 1.
    pub hidden: Vec<usize>,
    /// The hidden layers' activation (the output layer's is decided by the task).
    pub activation: Activation,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// The initial learning rate, > 0.
    pub learning_rate: f32,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// Rows per mini-batch, ≥ 1 (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// The most epochs run, ≥ 1.
    pub epochs: usize,
    /// Early stopping: stop after this many epochs without an improvement of the
    /// validation loss by more than `min_delta`, and keep the best epoch's weights.
    /// `None` runs every epoch (and still keeps the best weights).
    pub patience: Option<usize>,
    /// The least decrease of the validation loss that counts as an improvement, ≥ 0.
    pub min_delta: f32,
    /// L2 weight decay λ (decoupled for AdamW), ≥ 0; applies to weights, not biases.
    pub weight_decay: f32,
    /// Seeds the initialisation (the engine's `nn.Linear`-like one, as
    /// [`Model::random`](crate::Model::random)) and the shuffling of every epoch.
    pub seed: u64,
}

impl Default for Hyper {
    fn default() -> Self {
        Self {
            hidden: vec![64],
            activation: Activation::Relu,
            optimizer: Optimizer::ADAM,
            learning_rate: 1e-3,
            schedule: Schedule::Constant,
            batch_size: 64,
            epochs: 100,
            patience: Some(10),
            min_delta: 0.0,
            weight_decay: 0.0,
            seed: 0,
        }
    }
}
