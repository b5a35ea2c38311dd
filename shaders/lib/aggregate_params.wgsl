// The uniform of aggregate.wgsl, softmax_aggregate.wgsl, moments.wgsl and blend.wgsl (the
// Rust side is
// AggregateParams in src/gpu/).
struct AggregateParams {
    rows: u32,
    cols: u32,
    // Members in the stack, at most 32; bit z of `present` set: member z takes part.
    members: u32,
    present: u32,
    // Member z's rows start z * y_stride values into y.
    y_stride: u32,
    // blend.wgsl: the blender's first-layer outputs (0 without a blender).
    hidden: u32,
    _pad1: u32,
    _pad2: u32,
    // Member z's weight is weights[z / 4][z % 4].
    weights: array<vec4<f32>, 8>,
}
