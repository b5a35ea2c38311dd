// v rounded to the nearest f16 (ties to even) and widened back, in exact integer and
// power-of-two arithmetic: a driver may keep f16 values at f32 precision, which makes
// f32(f16(v)) a no-op (Mesa 26.1's lavapipe does), may fold
// unpack2x16float(pack2x16float(v)) back to v (NVIDIA's Vulkan driver 580 does), and
// picks the rounding of an f32 -> f16 conversion itself. Every f16 kernel rounds its
// x through this before converting, so the conversion is exact wherever it runs. At
// or past 65520 (halfway to 65536) is infinity, as rounding to f16 gives (and the
// CPU); NaN stays NaN.
fn round_f16(v: vec4<f32>) -> vec4<f32> {
    let u = bitcast<vec4<u32>>(v);
    // f16 normals (|v| >= 2^-14): the 13 low bits of the significand dropped, ties to
    // the even neighbour (a carry moves into the exponent, as it should).
    let lsb = (u >> vec4<u32>(13u)) & vec4<u32>(1u);
    let normal = bitcast<vec4<f32>>((u + vec4<u32>(0xfffu) + lsb) & vec4<u32>(0xffffe000u));
    // f16 subnormals: multiples of 2^-24 (scaling by 2^24 and back is exact, and
    // round() rounds ties to even).
    let tiny = round(v * 16777216.0) * 5.9604644775390625e-8;
    let r = select(normal, tiny, abs(v) < vec4<f32>(6.103515625e-5));
    let inf = sign(v) * bitcast<f32>(0x7f800000u);
    let nan = v != v;
    return select(select(r, inf, abs(v) >= vec4<f32>(65520.0)), v, nan);
}
