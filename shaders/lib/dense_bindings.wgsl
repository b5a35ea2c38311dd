// The bindings of the dense kernels: x [rows, in] row-major, w [out, in] (PyTorch's
// nn.Linear layout) in the element prelude's Operand, b [out], y [rows, out]. x and w
// are read four values at a time where rows start on a vector: the crate sizes every
// buffer bound here to whole vectors.
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<vec4<Operand>>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: DenseParams;
