// The uniform of the dense kernels (the Rust side is DenseParams in src/gpu/).
// softmax.wgsl reads it too: a layer that ends in a softmax shares one uniform buffer
// between the two kernels, and the softmax's row length is the layer's out_features.
struct DenseParams {
    rows: u32,
    out_features: u32,
    in_features: u32,
    // Members of one shape run stacked, member z on workgroup_id.z: it reads x, w and
    // b and writes y this many values further on (x_stride is 0 when every member
    // reads the same input). The crate keeps each a multiple of 4.
    x_stride: u32,
    w_stride: u32,
    b_stride: u32,
    y_stride: u32,
    _pad: u32,
}
