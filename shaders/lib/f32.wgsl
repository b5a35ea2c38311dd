// The element prelude of the dense kernels in f32 (Precision::F32). dense.wgsl,
// dense_vec4.wgsl and dense_small.wgsl are written once for f32 and f16 in the names
// declared here and, for f16, in lib/f16.wgsl:
// - Operand: what w and the staged tiles hold, the operands of the products (which
//   are accumulated in f32 in both);
// - round_operand(v), round_operand4(v): x (f32) rounded to an operand's precision,
//   still f32; the kernels round x through these wherever they convert it to Operand.
// In f32 there is nothing to round: the two are aliases of the argument's own type, so
// a call is a conversion of a value to its own type, as is an Operand(..) or
// vec4<f32>(..) of an f32 value in the kernels. naga emits no instruction for these, so
// the f32 kernels compile to what they would be if written without them.
alias Operand = f32;
alias round_operand = f32;
alias round_operand4 = vec4<f32>;
