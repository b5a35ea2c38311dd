// Dense layer with fused bias and element-wise activation:
//     y[r, o] = act(sum_k x[r, k] * w[o, k] + b[o])
// x is [rows, in] row-major, w is [out, in] (PyTorch's nn.Linear layout), b is [out],
// y is [rows, out]. Each 16x16 workgroup computes a 16-row x 16-output tile, staging
// 16-wide slices of x and w through workgroup memory. Every load and store is bounds
// checked, so any shape works, including ones that are not multiples of 16.

// Activation: 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 gelu (exact, erf form).
override ACT: u32 = 0u;

const TILE: u32 = 16u;

// The first two fields match softmax.wgsl's (rows, cols), so a layer that ends in a
// softmax shares one uniform buffer between the two kernels.
struct Params {
    rows: u32,
    out_features: u32,
    in_features: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> x_tile: array<array<f32, 16>, 16>;
var<workgroup> w_tile: array<array<f32, 16>, 16>;

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

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let row = group.y * TILE + local.y;
    let col = group.x * TILE + local.x;
    // The w tile holds outputs group.x*16 .. +16; thread (y, x) loads output row local.y.
    let w_row = group.x * TILE + local.y;
    let k_len = p.in_features;
    var acc = 0.0;
    for (var k0 = 0u; k0 < k_len; k0 += TILE) {
        let k = k0 + local.x;
        var xv = 0.0;
        if row < p.rows && k < k_len {
            xv = x[row * k_len + k];
        }
        x_tile[local.y][local.x] = xv;
        var wv = 0.0;
        if w_row < p.out_features && k < k_len {
            wv = w[w_row * k_len + k];
        }
        w_tile[local.y][local.x] = wv;
        workgroupBarrier();
        for (var i = 0u; i < TILE; i++) {
            acc += x_tile[local.y][i] * w_tile[local.x][i];
        }
        workgroupBarrier();
    }
    if row < p.rows && col < p.out_features {
        y[row * p.out_features + col] = activate(acc + b[col]);
    }
}
