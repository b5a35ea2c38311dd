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
// override constants (see src/tile.rs).
//
// Written once for f32 and f16 (Precision::F16: f16 weights and tiles, x rounded to
// f16 as it is staged, f32 accumulation): the crate composes it after
// lib/dense_params.wgsl, lib/dense_bindings.wgsl, lib/activation.wgsl and an element
// prelude, lib/f32.wgsl or lib/f16.wgsl, whose names (Operand, round_operand,
// round_operand4) it is written in; src/gpu/kernels.rs lists the pieces.

// Activation (lib/activation.wgsl): 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 gelu.
override ACT: u32 = 0u;
override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;
// Accumulators per thread, at most 8 x 8.
override TM: u32 = 4u;
override TN: u32 = 4u;
override BK: u32 = 16u;

const MAX_T: u32 = 8u;

// k-major slices: x_tile[k * BM + m], w_tile[k * BN + n].
var<workgroup> x_tile: array<Operand, BK * WG_Y * TM>;
var<workgroup> w_tile: array<Operand, BK * WG_X * TN>;

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
    var xr: array<Operand, MAX_T>;
    var wr: array<Operand, MAX_T>;

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
                    v = round_operand4(x[(xo + row * k_len + k0 + k) / 4u]);
                }
                x_tile[k * bm + m] = Operand(v.x);
                x_tile[(k + 1u) * bm + m] = Operand(v.y);
                x_tile[(k + 2u) * bm + m] = Operand(v.z);
                x_tile[(k + 3u) * bm + m] = Operand(v.w);
            }
            for (var e = thread * 4u; e < bn * BK; e += threads * 4u) {
                let n = e / BK;
                let k = e % BK;
                let col = col0 + n;
                var v = vec4<Operand>();
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
                var v = Operand(0.0);
                if row < p.rows && k0 + k < k_len {
                    let i = xo + row * k_len + k0 + k;
                    v = Operand(round_operand(x[i / 4u][i % 4u]));
                }
                x_tile[k * bm + m] = v;
            }
            for (var e = thread; e < bn * BK; e += threads) {
                let n = e / BK;
                let k = e % BK;
                let col = col0 + n;
                var v = Operand(0.0);
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
