// dense.wgsl for Precision::F16CoopMatrix: the products run on the adapter's
// cooperative-matrix units (tensor cores), with the arithmetic of dense.wgsl in f16:
// weights stored as f16, x rounded to f16 (round_f16) as it is staged, f32
// accumulation. Bias, activations and y stay f32. Needs SHADER_F16, SUBGROUP and
// EXPERIMENTAL_COOPERATIVE_MATRIX with a CT x CT x CT configuration, f16 operands and
// an f32 accumulator. The crate composes it after dense_coop_shape.wgsl (its override
// constants and matrix types), lib/dense_params.wgsl, lib/dense_bindings.wgsl,
// lib/activation.wgsl, lib/round_f16.wgsl and lib/f16.wgsl.
//
// Dense layer with fused bias and element-wise activation:
//     y[r, o] = act(sum_k x[r, k] * w[o, k] + b[o])
// x is [rows, in] row-major, w is [out, in] (PyTorch's nn.Linear layout), b is [out],
// y is [rows, out].
//
// A workgroup computes a BM x BN tile of y (BM = BY * TMC * CT rows, BN = BX * TNC * CT
// outputs) as BY x BX blocks of TMC x TNC matrices of CT x CT; each subgroup owns one
// block and keeps its accumulators in cooperative matrices. The K dimension is walked
// in slices of BK: every thread helps stage a slice of x (rounded to f16) and of w
// through workgroup memory, zero-padded past the edges, so any shape works and no
// cooperative load or store touches a storage buffer. Each accumulator goes through
// workgroup memory to the bounds-checked, bias-and-activation store. With PREFETCH,
// each thread holds its part of the next slice in registers while the current one is
// multiplied.
//
// WG must be at least BX * BY times the adapter's largest subgroup size, so that
// every block has a subgroup whatever size the driver picks; the crate sets it to
// exactly that. The tile shape is set per pipeline through the override constants
// (see CoopTile in src/gpu/coop.rs).

// Where this member's b and y start (set by main for emit).
var<private> bo: u32;
var<private> yo: u32;

// Row-major slices: x_tile[m * LD + k] (matrix A, loaded row-major) and
// w_tile[n * LD + k] (matrix B = w's slice transposed, loaded column-major). Rows are
// LD = BK + 8 values apart: 16 bytes more than the slice, so that the eight rows a
// matrix load reads at once start in different banks of workgroup memory (with BK
// values apart, every other row would share banks), and every row still starts on 16
// bytes.
const PAD: u32 = 8u;
var<workgroup> x_tile: array<f16, BY * TMC * CT * (BK + PAD)>;
var<workgroup> w_tile: array<f16, BX * TNC * CT * (BK + PAD)>;
// One CT x CT accumulator per block on its way out, plus a spare slot.
var<workgroup> c_tile: array<f32, (BX * BY + 1u) * CT * CT>;

// Vector e of the slice of x at k0 (row row0 + e / (BK / 4), k k0 + (e % (BK / 4)) * 4),
// zero past the tile or the edges of x. Only where the input width is a multiple of 4,
// so that a vector is wholly inside a row or wholly past its end.
fn x_vector(e: u32, row0: u32, k0: u32, xo: u32) -> vec4<f32> {
    let bk4 = BK / 4u;
    let row = row0 + e / bk4;
    let k = k0 + (e % bk4) * 4u;
    if e < BY * TMC * CT * bk4 && row < p.rows && k < p.in_features {
        return x[(xo + row * p.in_features + k) / 4u];
    }
    return vec4<f32>();
}

// The same for w: output col0 + e / (BK / 4).
fn w_vector(e: u32, col0: u32, k0: u32, wo: u32) -> vec4<f16> {
    let bk4 = BK / 4u;
    let col = col0 + e / bk4;
    let k = k0 + (e % bk4) * 4u;
    if e < BX * TNC * CT * bk4 && col < p.out_features && k < p.in_features {
        return w[(wo + col * p.in_features + k) / 4u];
    }
    return vec4<f16>();
}

// Stores vector e of a slice of x (from x_vector), rounded to f16, at its row and
// four k of x_tile.
fn stage_x(e: u32, v: vec4<f32>) {
    let bk4 = BK / 4u;
    if e >= BY * TMC * CT * bk4 {
        return;
    }
    let t = (e / bk4) * (BK + PAD) + (e % bk4) * 4u;
    let r = round_f16(v);
    x_tile[t] = f16(r.x);
    x_tile[t + 1u] = f16(r.y);
    x_tile[t + 2u] = f16(r.z);
    x_tile[t + 3u] = f16(r.w);
}

// The same for w and w_tile.
fn stage_w(e: u32, v: vec4<f16>) {
    let bk4 = BK / 4u;
    if e >= BX * TNC * CT * bk4 {
        return;
    }
    let t = (e / bk4) * (BK + PAD) + (e % bk4) * 4u;
    w_tile[t] = v.x;
    w_tile[t + 1u] = v.y;
    w_tile[t + 2u] = v.z;
    w_tile[t + 3u] = v.w;
}

// Writes one CT x CT accumulator of a block: the subgroup stores it to its slot of
// c_tile, then, if it owns the block, its invocations apply bias and activation to
// the elements inside y. Called by the whole workgroup (cooperative stores need
// uniform control flow, and it holds barriers).
fn emit(acc: MatC, owner: bool, slot: u32, row0: u32, col0: u32, lane: u32, lanes: u32) {
    coopStoreT(acc, &c_tile[slot * CT * CT], CT);
    workgroupBarrier();
    if owner {
        for (var e = lane; e < CT * CT; e += lanes) {
            let row = row0 + e / CT;
            let col = col0 + e % CT;
            if row < p.rows && col < p.out_features {
                y[yo + row * p.out_features + col] = activate(c_tile[slot * CT * CT + e] + b[bo + col]);
            }
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG, 1, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) thread: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    let bm = BY * TMC * CT;
    let bn = BX * TNC * CT;
    let blocks = BX * BY;
    let row0 = group.y * bm;
    let col0 = group.x * bn;
    let k_len = p.in_features;
    // Member group.z's place in the stacked buffers.
    let xo = group.z * p.x_stride;
    let wo = group.z * p.w_stride;
    bo = group.z * p.b_stride;
    yo = group.z * p.y_stride;

    // Subgroups past the blocks (a subgroup smaller than the adapter's largest) redo
    // the last block and store to the spare slot of c_tile, never to y.
    let owner = subgroup < blocks;
    let block = min(subgroup, blocks - 1u);
    let slot = min(subgroup, blocks);
    // The block's first row and output inside the workgroup tile.
    let m0 = (block / BX) * TMC * CT;
    let n0 = (block % BX) * TNC * CT;

    let ld = BK + PAD;
    // c<i><j>: the accumulator of the block's matrix row i, column j. Named, not an
    // array: no loop indexes them, so they stay in registers whatever a driver's
    // compiler does with loops; those past TMC x TNC are never used.
    var c00: MatC;
    var c01: MatC;
    var c02: MatC;
    var c03: MatC;
    var c10: MatC;
    var c11: MatC;
    var c12: MatC;
    var c13: MatC;
    var c20: MatC;
    var c21: MatC;
    var c22: MatC;
    var c23: MatC;
    var c30: MatC;
    var c31: MatC;
    var c32: MatC;
    var c33: MatC;

    // When rows start on a vector (k_len % 4 == 0), threads stage four k at once
    // (vectors of x and w; BK is a multiple of 8, so they never straddle a row or the
    // end of k); otherwise one value at a time.
    let aligned = k_len % 4u == 0u;
    // PREFETCH: the vectors this thread stages per slice (at most four of x and of w:
    // the thread's e, e + WG, ...), named so that they stay in registers.
    let ahead = PREFETCH == 1u && aligned;
    let xn = bm * (BK / 4u);
    let wn = bn * (BK / 4u);
    var px0 = vec4<f32>();
    var px1 = vec4<f32>();
    var px2 = vec4<f32>();
    var px3 = vec4<f32>();
    var pw0 = vec4<f16>();
    var pw1 = vec4<f16>();
    var pw2 = vec4<f16>();
    var pw3 = vec4<f16>();
    if ahead {
        px0 = x_vector(thread, row0, 0u, xo);
        pw0 = w_vector(thread, col0, 0u, wo);
        if xn > WG {
            px1 = x_vector(thread + WG, row0, 0u, xo);
        }
        if xn > 2u * WG {
            px2 = x_vector(thread + 2u * WG, row0, 0u, xo);
        }
        if xn > 3u * WG {
            px3 = x_vector(thread + 3u * WG, row0, 0u, xo);
        }
        if wn > WG {
            pw1 = w_vector(thread + WG, col0, 0u, wo);
        }
        if wn > 2u * WG {
            pw2 = w_vector(thread + 2u * WG, col0, 0u, wo);
        }
        if wn > 3u * WG {
            pw3 = w_vector(thread + 3u * WG, col0, 0u, wo);
        }
    }

    for (var k0 = 0u; k0 < k_len; k0 += BK) {
        // Stage x[row0 .. row0 + bm, k0 .. k0 + BK] and w[col0 .. col0 + bn, same k];
        // consecutive threads read consecutive k of one row.
        if ahead {
            // The slice loaded ahead goes to workgroup memory.
            stage_x(thread, px0);
            stage_w(thread, pw0);
            if xn > WG {
                stage_x(thread + WG, px1);
            }
            if xn > 2u * WG {
                stage_x(thread + 2u * WG, px2);
            }
            if xn > 3u * WG {
                stage_x(thread + 3u * WG, px3);
            }
            if wn > WG {
                stage_w(thread + WG, pw1);
            }
            if wn > 2u * WG {
                stage_w(thread + 2u * WG, pw2);
            }
            if wn > 3u * WG {
                stage_w(thread + 3u * WG, pw3);
            }
        } else if aligned {
            for (var e = thread; e < xn; e += WG) {
                stage_x(e, x_vector(e, row0, k0, xo));
            }
            for (var e = thread; e < wn; e += WG) {
                stage_w(e, w_vector(e, col0, k0, wo));
            }
        } else {
            for (var e = thread; e < bm * BK; e += WG) {
                let row = row0 + e / BK;
                let k = k0 + e % BK;
                var v = 0.0h;
                if row < p.rows && k < k_len {
                    let i = xo + row * k_len + k;
                    v = f16(round_f16(vec4<f32>(x[i / 4u][i % 4u])).x);
                }
                x_tile[(e / BK) * ld + e % BK] = v;
            }
            for (var e = thread; e < bn * BK; e += WG) {
                let col = col0 + e / BK;
                let k = k0 + e % BK;
                var v = 0.0h;
                if col < p.out_features && k < k_len {
                    let i = wo + col * k_len + k;
                    v = w[i / 4u][i % 4u];
                }
                w_tile[(e / BK) * ld + e % BK] = v;
            }
        }
        workgroupBarrier();
        if ahead && k0 + BK < k_len {
            // The next slice, in flight while this one is multiplied.
            let k1 = k0 + BK;
            px0 = x_vector(thread, row0, k1, xo);
            pw0 = w_vector(thread, col0, k1, wo);
            if xn > WG {
                px1 = x_vector(thread + WG, row0, k1, xo);
            }
            if xn > 2u * WG {
                px2 = x_vector(thread + 2u * WG, row0, k1, xo);
            }
            if xn > 3u * WG {
                px3 = x_vector(thread + 3u * WG, row0, k1, xo);
            }
            if wn > WG {
                pw1 = w_vector(thread + WG, col0, k1, wo);
            }
            if wn > 2u * WG {
                pw2 = w_vector(thread + 2u * WG, col0, k1, wo);
            }
            if wn > 3u * WG {
                pw3 = w_vector(thread + 3u * WG, col0, k1, wo);
            }
        }
        for (var kk = 0u; kk < BK; kk += CT) {
            // The block's matrices of x (rows) and of w (columns) at depth kk, and
            // every product: TMC x TNC of them, the rest skipped by constants.
            let a0 = coopLoadT<MatA>(&x_tile[m0 * ld + kk], ld);
            var a1: MatA;
            var a2: MatA;
            var a3: MatA;
            if TMC > 1u {
                a1 = coopLoadT<MatA>(&x_tile[(m0 + CT) * ld + kk], ld);
            }
            if TMC > 2u {
                a2 = coopLoadT<MatA>(&x_tile[(m0 + 2u * CT) * ld + kk], ld);
            }
            if TMC > 3u {
                a3 = coopLoadT<MatA>(&x_tile[(m0 + 3u * CT) * ld + kk], ld);
            }
            let b0 = coopLoad<MatB>(&w_tile[n0 * ld + kk], ld);
            c00 = coopMultiplyAdd(a0, b0, c00);
            if TMC > 1u {
                c10 = coopMultiplyAdd(a1, b0, c10);
            }
            if TMC > 2u {
                c20 = coopMultiplyAdd(a2, b0, c20);
            }
            if TMC > 3u {
                c30 = coopMultiplyAdd(a3, b0, c30);
            }
            if TNC > 1u {
                let b1 = coopLoad<MatB>(&w_tile[(n0 + CT) * ld + kk], ld);
                c01 = coopMultiplyAdd(a0, b1, c01);
                if TMC > 1u {
                    c11 = coopMultiplyAdd(a1, b1, c11);
                }
                if TMC > 2u {
                    c21 = coopMultiplyAdd(a2, b1, c21);
                }
                if TMC > 3u {
                    c31 = coopMultiplyAdd(a3, b1, c31);
                }
            }
            if TNC > 2u {
                let b2 = coopLoad<MatB>(&w_tile[(n0 + 2u * CT) * ld + kk], ld);
                c02 = coopMultiplyAdd(a0, b2, c02);
                if TMC > 1u {
                    c12 = coopMultiplyAdd(a1, b2, c12);
                }
                if TMC > 2u {
                    c22 = coopMultiplyAdd(a2, b2, c22);
                }
                if TMC > 3u {
                    c32 = coopMultiplyAdd(a3, b2, c32);
                }
            }
            if TNC > 3u {
                let b3 = coopLoad<MatB>(&w_tile[(n0 + 3u * CT) * ld + kk], ld);
                c03 = coopMultiplyAdd(a0, b3, c03);
                if TMC > 1u {
                    c13 = coopMultiplyAdd(a1, b3, c13);
                }
                if TMC > 2u {
                    c23 = coopMultiplyAdd(a2, b3, c23);
                }
                if TMC > 3u {
                    c33 = coopMultiplyAdd(a3, b3, c33);
                }
            }
        }
        workgroupBarrier();
    }

    // Matrix (i, j) of the block covers rows r + i * CT and outputs c + j * CT.
    let r = row0 + m0;
    let c = col0 + n0;
    emit(c00, owner, slot, r, c, lane, lanes);
    if TNC > 1u {
        emit(c01, owner, slot, r, c + CT, lane, lanes);
    }
    if TNC > 2u {
        emit(c02, owner, slot, r, c + 2u * CT, lane, lanes);
    }
    if TNC > 3u {
        emit(c03, owner, slot, r, c + 3u * CT, lane, lanes);
    }
    if TMC > 1u {
        let r1 = r + CT;
        emit(c10, owner, slot, r1, c, lane, lanes);
        if TNC > 1u {
            emit(c11, owner, slot, r1, c + CT, lane, lanes);
        }
        if TNC > 2u {
            emit(c12, owner, slot, r1, c + 2u * CT, lane, lanes);
        }
        if TNC > 3u {
            emit(c13, owner, slot, r1, c + 3u * CT, lane, lanes);
        }
    }
    if TMC > 2u {
        let r2 = r + 2u * CT;
        emit(c20, owner, slot, r2, c, lane, lanes);
        if TNC > 1u {
            emit(c21, owner, slot, r2, c + CT, lane, lanes);
        }
        if TNC > 2u {
            emit(c22, owner, slot, r2, c + 2u * CT, lane, lanes);
        }
        if TNC > 3u {
            emit(c23, owner, slot, r2, c + 3u * CT, lane, lanes);
        }
    }
    if TMC > 3u {
        let r3 = r + 3u * CT;
        emit(c30, owner, slot, r3, c, lane, lanes);
        if TNC > 1u {
            emit(c31, owner, slot, r3, c + CT, lane, lanes);
        }
        if TNC > 2u {
            emit(c32, owner, slot, r3, c + 2u * CT, lane, lanes);
        }
        if TNC > 3u {
            emit(c33, owner, slot, r3, c + 3u * CT, lane, lanes);
        }
    }
}
