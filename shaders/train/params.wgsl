// The parameters of the training kernels (the Rust side is src/train/gpu/params.rs),
// read from read-only storage buffers rather than uniforms: Mesa's lavapipe inlines
// uniform values into a shader and compiles it again at dispatches after a pipeline
// or bind group change, never freeing the old code (18 MB an epoch here, see
// src/train/gpu/mod.rs); it inlines nothing from storage buffers.
//
// TrainLayer: one layer's shape and optimizer constants, fixed for the whole training.
// A layer's parameters live in one buffer, w [out, in] row-major (PyTorch's nn.Linear
// layout) followed by b [out]; its gradients in another of the same layout; its
// optimizer state in a third, the first moment (SGD's velocity, Adam's m) of w and b,
// then Adam's second moment v of w and b.
struct TrainLayer {
    in_features: u32,
    out_features: u32,
    // Values per slot of the stats buffer (2 + layers: loss sum, correct rows, then
    // each layer's sum of squared weights).
    stats_width: u32,
    // This layer's index (its sum of squares goes to stats[slot * width + 2 + layer]).
    layer: u32,
    // L2 decay added to the weights' gradient (SGD, Adam; 0 for AdamW).
    decay: f32,
    // Decoupled decay (AdamW: w -= lr·λ·w before the Adam step; 0 otherwise).
    decoupled: f32,
    // SGD's momentum μ, or Adam's β₁.
    beta1: f32,
    // Adam's β₂.
    beta2: f32,
    // Adam's ε.
    eps: f32,
    // SGD: 1 for Nesterov's momentum.
    nesterov: u32,
    _pad0: u32,
    _pad1: u32,
}

// Step: what changes from one mini-batch to the next, one slot per batch of an epoch
// (aligned to the device's storage offset alignment), bound with a dynamic offset.
struct Step {
    // The batch's first position in the row order (or first row, for contiguous rows).
    offset: u32,
    // Rows in the batch.
    rows: u32,
    // The slot of the stats buffer this batch's loss goes to.
    slot: u32,
    _pad: u32,
    // The loss's scale of dz: 1/B (cross-entropy), 2/(B·k) (squared error).
    scale: f32,
    // The learning rate.
    lr: f32,
    // Adam's bias corrections 1 - β₁ᵗ and 1 - β₂ᵗ (host-computed per step).
    bc1: f32,
    bc2: f32,
}

@group(1) @binding(0) var<storage, read> s: Step;
