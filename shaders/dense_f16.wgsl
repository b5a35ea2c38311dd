enable f16;

// dense.wgsl for Precision::F16: the weights are stored as f16, the x slices are
// rounded to f16 as they are staged, and every product of two f16 values (exact in
// f32) is accumulated in f32. Bias, activations and y stay f32. Needs SHADER_F16.
//
// Dense layer with fused bias and element-wise activation, register-tiled:
//     y[r, o] = act(sum_k x[r, k] * w[o, k] + b[o])
// x is [rows, in] row-major, w is [out, in] (PyTorch's nn.Linear layout), b is [out],
// y is [rows, out].
//
// A workgroup of WG_X x WG_Y threads computes a BM x BN tile of y (BM = WG_Y * TM rows,
// BN = WG_X * TN outputs); each thread keeps TM x TN accumulators in registers, at rows
// ty + i * WG_Y and outputs tx + j * WG_X so that neighbouring threads store
// neighbouring outputs. The K dimension is walked in slices of BK: every thread helps
// stage a BK-deep slice of x and of w through workgroup memory (k-major, so the inner
// loop reads TM and TN consecutive values), then accumulates. Every load and store is
// bounds checked, so any shape works. The tile shape is set per pipeline through the
// override constants (see src/gpu/tune.rs).

// Activation: 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 gelu (exact, erf form).
override ACT: u32 = 0u;
override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;
// Accumulators per thread, at most 8 x 8.
override TM: u32 = 4u;
override TN: u32 = 4u;
override BK: u32 = 16u;

const MAX_T: u32 = 8u;

// The first two fields match softmax.wgsl's (rows, cols), so a layer that ends in a
// softmax shares one uniform buffer between the two kernels.
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

// x and w are read four values at a time where rows start on a vector: the crate
// sizes every buffer bound here to whole vectors.
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

// k-major slices: x_tile[k * BM + m], w_tile[k * BN + n].
var<workgroup> x_tile: array<f16, BK * WG_Y * TM>;
var<workgroup> w_tile: array<f16, BK * WG_X * TN>;

// erf by Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7.
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
            // tanh saturates to +-1 in f32 beyond |v| = 10; clamping keeps
            // exp-based implementations from overflowing to NaN.
            return tanh(clamp(v, -10.0, 10.0));
        }
        case 3u: {
            // Split by sign so exp never overflows.
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

@compute @workgroup_size(WG_X, WG_Y, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) thread: u32,
) {
    let bm = WG_Y * TM;
    let bn = WG_X * TN;
    let threads = WG_X * WG_Y;
    let row0 = group.y * bm;
    let col0 = group.x * bn;
    let k_len = p.in_features;
    // Member group.z's place in the stacked buffers.
    let xo = group.z * p.x_stride;
    let wo = group.z * p.w_stride;
    let bo = group.z * p.b_stride;
    let yo = group.z * p.y_stride;

    var acc: array<f32, 64>;
    for (var i = 0u; i < TM * TN; i++) {
        acc[i] = 0.0;
    }
    var xr: array<f16, MAX_T>;
    var wr: array<f16, MAX_T>;

    for (var k0 = 0u; k0 < k_len; k0 += BK) {
        // Stage x[row0 .. row0 + bm, k0 .. k0 + BK] and w[col0 .. col0 + bn, same k];
        // consecutive threads read consecutive k of one row, four at a time when rows
        // start on a vector (k_len and BK multiples of 4: the four never straddle a
        // row or the end of k), otherwise one at a time.
        if k_len % 4u == 0u && BK % 4u == 0u {
            for (var e = thread * 4u; e < bm * BK; e += threads * 4u) {
                let m = e / BK;
                let k = e % BK;
                let row = row0 + m;
                var v = vec4<f32>();
                if row < p.rows && k0 + k < k_len {
                    v = x[(xo + row * k_len + k0 + k) / 4u];
                }
                let r = round_f16(v);
                x_tile[k * bm + m] = f16(r.x);
                x_tile[(k + 1u) * bm + m] = f16(r.y);
                x_tile[(k + 2u) * bm + m] = f16(r.z);
                x_tile[(k + 3u) * bm + m] = f16(r.w);
            }
            for (var e = thread * 4u; e < bn * BK; e += threads * 4u) {
                let n = e / BK;
                let k = e % BK;
                let col = col0 + n;
                var v = vec4<f16>();
                if col < p.out_features && k0 + k < k_len {
                    v = w[(wo + col * k_len + k0 + k) / 4u];
                }
                w_tile[k * bn + n] = v.x;
                w_tile[(k + 1u) * bn + n] = v.y;
                w_tile[(k + 2u) * bn + n] = v.z;
                w_tile[(k + 3u) * bn + n] = v.w;
            }
        } else {
            for (var e = thread; e < bm * BK; e += threads) {
                let m = e / BK;
                let k = e % BK;
                let row = row0 + m;
                var v = 0.0h;
                if row < p.rows && k0 + k < k_len {
                    let i = xo + row * k_len + k0 + k;
                    v = f16(round_f16(vec4<f32>(x[i / 4u][i % 4u])).x);
                }
                x_tile[k * bm + m] = v;
            }
            for (var e = thread; e < bn * BK; e += threads) {
                let n = e / BK;
                let k = e % BK;
                let col = col0 + n;
                var v = 0.0h;
                if col < p.out_features && k0 + k < k_len {
                    let i = wo + col * k_len + k0 + k;
                    v = w[i / 4u][i % 4u];
                }
                w_tile[k * bn + n] = v;
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            for (var i = 0u; i < TM; i++) {
                xr[i] = x_tile[k * bm + local.y + i * WG_Y];
            }
            for (var j = 0u; j < TN; j++) {
                wr[j] = w_tile[k * bn + local.x + j * WG_X];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] = fma(f32(xr[i]), f32(wr[j]), acc[i * TN + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let row = row0 + local.y + i * WG_Y;
        if row >= p.rows {
            break;
        }
        for (var j = 0u; j < TN; j++) {
            let col = col0 + local.x + j * WG_X;
            if col < p.out_features {
                y[yo + row * p.out_features + col] = activate(acc[i * TN + j] + b[bo + col]);
            }
        }
    }
}
