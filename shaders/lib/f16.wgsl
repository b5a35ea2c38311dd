// The element prelude of the dense kernels in f16 (Precision::F16; lib/f32.wgsl says
// how the kernels use it): the weights are stored as f16, x is rounded to f16 as it is
// staged (round_f16, in lib/round_f16.wgsl), and every product of two f16 values
// (exact in f32) is accumulated in f32. Bias, activations and y stay f32. Needs
// SHADER_F16; the crate puts `enable f16;` first in the module.
alias Operand = f16;

fn round_operand(v: f32) -> f32 {
    return round_f16(vec4<f32>(v)).x;
}

fn round_operand4(v: vec4<f32>) -> vec4<f32> {
    return round_f16(v);
}
