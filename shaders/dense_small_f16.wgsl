enable f16;

// dense_small.wgsl for Precision::F16: f16 weights (half the bytes to read), x rounded
// to f16, products accumulated in f32; bias, activations and y stay f32. Needs
// SHADER_F16.
//
// Dense layer for small batches (at most 16 rows), where the layer is bound by reading
// the weights: each weight is read exactly once.
//     y[r, o] = act(sum_k x[r, k] * w[o, k] + b[o])
// One 64-thread workgroup per output o (workgroup_id.x + workgroup_id.y * 65535): the
// threads stride over k reading w[o, :] coalesced (four values per load where the
// input width is a multiple of 4), keep one partial sum per row, then reduce the 64
// partial sums of every row through workgroup memory. Same bindings and Params as
// dense.wgsl.

// Activation: 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 gelu (exact, erf form).
override ACT: u32 = 0u;

const WG: u32 = 64u;
const MAX_ROWS: u32 = 16u;

struct Params {
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

// Bound as vectors, like dense.wgsl's (the crate sizes every buffer to whole vectors).
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> partial: array<f32, 1024>; // MAX_ROWS * WG

fn erf_approx(v: f32) -> f32 {
    let s = sign(v);
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-a * a));
}

fn activate(v: f32) -> f32 {
    switch ACT {
        case 1u: {
            return max(v, 0.0);
        }
        case 2u: {
            return tanh(clamp(v, -10.0, 10.0));
        }
        case 3u: {
            if v >= 0.0 {
                return 1.0 / (1.0 + exp(-v));
            }
            let e = exp(v);
            return e / (1.0 + e);
        }
        case 4u: {
            return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
        }
        default: {
            return v;
        }
    }
}

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

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let o = group.x + group.y * 65535u;
    let tid = local.x;
    let k_len = p.in_features;
    // Member group.z's place in the stacked buffers.
    let xo = group.z * p.x_stride;
    let wo = group.z * p.w_stride;
    let bo = group.z * p.b_stride;
    let yo = group.z * p.y_stride;
    let rows = min(p.rows, MAX_ROWS);
    let live = o < p.out_features;

    var acc: array<f32, 16>;
    for (var r = 0u; r < MAX_ROWS; r++) {
        acc[r] = 0.0;
    }
    // The row loops have a constant length and stop at the batch's rows: drivers
    // unroll them and keep acc in registers (indexed by a loop whose length is only
    // known at run time, an array goes to local memory).
    if live && k_len % 4u == 0u {
        // Whole vectors (x and w offsets are multiples of 4 too).
        let k4 = k_len / 4u;
        let wrow = (wo + o * k_len) / 4u;
        for (var k = tid; k < k4; k += WG) {
            let wv = vec4<f32>(w[wrow + k]);
            for (var r = 0u; r < MAX_ROWS; r++) {
                if r >= rows {
                    break;
                }
                let xrow = (xo + r * k_len) / 4u;
                let xv = round_f16(x[xrow + k]);
                acc[r] = fma(xv.w, wv.w, fma(xv.z, wv.z, fma(xv.y, wv.y, fma(xv.x, wv.x, acc[r]))));
            }
        }
    } else if live {
        for (var k = tid; k < k_len; k += WG) {
            let i = wo + o * k_len + k;
            let wv = f32(w[i / 4u][i % 4u]);
            for (var r = 0u; r < MAX_ROWS; r++) {
                if r >= rows {
                    break;
                }
                let j = xo + r * k_len + k;
                acc[r] = fma(round_f16(vec4<f32>(x[j / 4u][j % 4u])).x, wv, acc[r]);
            }
        }
    }
    for (var r = 0u; r < MAX_ROWS; r++) {
        partial[r * WG + tid] = acc[r];
    }
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if tid < stride {
            for (var r = 0u; r < rows; r++) {
                partial[r * WG + tid] += partial[r * WG + tid + stride];
            }
        }
        workgroupBarrier();
    }
    if live && tid < rows {
        y[yo + tid * p.out_features + o] = activate(partial[tid * WG] + b[bo + o]);
    }
}
