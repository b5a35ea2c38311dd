// Dense layer with fused bias and element-wise activation, register-tiled in runs of
// four:
//     y[r, o] = act(sum_k x[r, k] * w[o, k] + b[o])
// Same bindings, layouts and results as dense.wgsl (x [rows, in], w [out, in], b [out],
// y [rows, out]), for input widths that are a multiple of 4 (the crate runs dense.wgsl
// for the others).
//
// A workgroup of WG_X x WG_Y threads computes a BM x BN tile of y (BM = WG_Y * TM rows,
// BN = WG_X * TN outputs, TM and TN each 4 or 8). Thread (tx, ty) owns the rows
// ty*4 .. ty*4+3 and, when TM is 8, BM/2 + ty*4 .. +3; the outputs tx*4 .. tx*4+3 and,
// when TN is 8, BN/2 + tx*4 .. +3. Each run of four is one vec4 in workgroup memory,
// so a step of the inner loop is two to four vector loads for up to 64 multiply-adds,
// and neighbouring threads load (and finally store) neighbouring vectors. The
// accumulators are sixteen vec4 variables indexed by nothing: they stay in registers
// whatever a driver's compiler makes of loops (dense.wgsl keeps them in an array
// indexed by loop counters). The K dimension is walked in slices of BK (a multiple of
// 4), staged k-major through workgroup memory from four-value loads of x and w. Every
// load and store is bounds checked, so any number of rows and outputs works.
//
// Written once for f32 and f16 in the names of the element prelude, composed after the
// same pieces as dense.wgsl.

// Activation (lib/activation.wgsl): 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 gelu.
override ACT: u32 = 0u;
override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;
// Rows and outputs per thread: 4 or 8 each.
override TM: u32 = 8u;
override TN: u32 = 8u;
// Depth of a staged slice: a multiple of 4.
override BK: u32 = 8u;
// 1: each slice of x and w is loaded into registers while the one before it is
// multiplied (the loads' latency hides behind the arithmetic; at most 4 vectors of x
// and of w per thread and slice); 0: loaded after the barrier that ends the previous
// slice.
override PREFETCH: u32 = 0u;

// Where this member's b and y start (set by main for store).
var<private> bo: u32;
var<private> yo: u32;

// A vector of x or w as staged in workgroup memory.
alias Staged = vec4<Operand>;

// k-major slices in vectors of four rows (outputs): x_tile[k * XS + m / 4][m % 4]
// holds x[row0 + m, k0 + k], XS = BM / 4 + 1; w_tile likewise with n, BN and WS. The
// one vector of padding per k puts the threads that stage the same rows at different
// k (in one store instruction) in different banks of workgroup memory: at most 2-way
// conflicts with BK 16 and none with BK 8, instead of 4- and 2-way.
var<workgroup> x_tile: array<vec4<Operand>, BK * (WG_Y * TM / 4u + 1u)>;
var<workgroup> w_tile: array<vec4<Operand>, BK * (WG_X * TN / 4u + 1u)>;

// Vector e of the slice of x at k0 (row row0 + e / (BK / 4), k (e % (BK / 4)) * 4),
// zero past the tile or the edges of x.
fn x_vector(e: u32, row0: u32, k0: u32, xo: u32) -> Staged {
    let bk4 = BK / 4u;
    let row = row0 + e / bk4;
    let k = k0 + (e % bk4) * 4u;
    if e < WG_Y * TM * bk4 && row < p.rows && k < p.in_features {
        return Staged(round_operand4(x[xo + row * (p.in_features / 4u) + k / 4u]));
    }
    return Staged();
}

// The same for w: output col0 + e / (BK / 4).
fn w_vector(e: u32, col0: u32, k0: u32, wo: u32) -> Staged {
    let bk4 = BK / 4u;
    let col = col0 + e / bk4;
    let k = k0 + (e % bk4) * 4u;
    if e < WG_X * TN * bk4 && col < p.out_features && k < p.in_features {
        return Staged(w[wo + col * (p.in_features / 4u) + k / 4u]);
    }
    return Staged();
}

// Stores vector e of a slice of x (from x_vector) at its four k of x_tile.
fn stage_x(e: u32, v: Staged) {
    let bk4 = BK / 4u;
    if e >= WG_Y * TM * bk4 {
        return;
    }
    let xs = WG_Y * TM / 4u + 1u;
    let m = e / bk4;
    let at = (e % bk4) * 4u * xs + m / 4u;
    let lane = m % 4u;
    x_tile[at][lane] = v.x;
    x_tile[at + xs][lane] = v.y;
    x_tile[at + 2u * xs][lane] = v.z;
    x_tile[at + 3u * xs][lane] = v.w;
}

// The same for w and w_tile.
fn stage_w(e: u32, v: Staged) {
    let bk4 = BK / 4u;
    if e >= WG_X * TN * bk4 {
        return;
    }
    let ws = WG_X * TN / 4u + 1u;
    let n = e / bk4;
    let at = (e % bk4) * 4u * ws + n / 4u;
    let lane = n % 4u;
    w_tile[at][lane] = v.x;
    w_tile[at + ws][lane] = v.y;
    w_tile[at + 2u * ws][lane] = v.z;
    w_tile[at + 3u * ws][lane] = v.w;
}

// y[row, col .. col + 3] = act(v + b), the part of it inside y.
fn store(row: u32, col: u32, v: vec4<f32>) {
    if row >= p.rows {
        return;
    }
    let base = yo + row * p.out_features;
    for (var j = 0u; j < 4u; j++) {
        if col + j < p.out_features {
            y[base + col + j] = activate(v[j] + b[bo + col + j]);
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) thread: u32,
) {
    let bm = WG_Y * TM;
    let bn = WG_X * TN;
    // Vectors per k in the tiles (with the padding), vectors per slice depth along a
    // row of x or w.
    let xs = bm / 4u + 1u;
    let ws = bn / 4u + 1u;
    let bk4 = BK / 4u;
    let threads = WG_X * WG_Y;
    let row0 = group.y * bm;
    let col0 = group.x * bn;
    let k_len = p.in_features;
    // Member group.z's place in the stacked buffers (x and w in vectors).
    let xo = group.z * p.x_stride / 4u;
    let wo = group.z * p.w_stride / 4u;
    bo = group.z * p.b_stride;
    yo = group.z * p.y_stride;

    // c<i><a|b>: row i of the thread's rows (0-3 the first run, 4-7 the second), the
    // first (a) or second (b) run of outputs.
    var c0a = vec4<f32>();
    var c1a = vec4<f32>();
    var c2a = vec4<f32>();
    var c3a = vec4<f32>();
    var c4a = vec4<f32>();
    var c5a = vec4<f32>();
    var c6a = vec4<f32>();
    var c7a = vec4<f32>();
    var c0b = vec4<f32>();
    var c1b = vec4<f32>();
    var c2b = vec4<f32>();
    var c3b = vec4<f32>();
    var c4b = vec4<f32>();
    var c5b = vec4<f32>();
    var c6b = vec4<f32>();
    var c7b = vec4<f32>();

    // PREFETCH: the vectors this thread stages per slice (at most four of x and of
    // w: the thread's e, e + threads, ...), named so that they stay in registers.
    let xn = bm * bk4;
    let wn = bn * bk4;
    var px0 = Staged();
    var px1 = Staged();
    var px2 = Staged();
    var px3 = Staged();
    var pw0 = Staged();
    var pw1 = Staged();
    var pw2 = Staged();
    var pw3 = Staged();
    if PREFETCH == 1u {
        px0 = x_vector(thread, row0, 0u, xo);
        pw0 = w_vector(thread, col0, 0u, wo);
        if xn > threads {
            px1 = x_vector(thread + threads, row0, 0u, xo);
        }
        if xn > 2u * threads {
            px2 = x_vector(thread + 2u * threads, row0, 0u, xo);
        }
        if xn > 3u * threads {
            px3 = x_vector(thread + 3u * threads, row0, 0u, xo);
        }
        if wn > threads {
            pw1 = w_vector(thread + threads, col0, 0u, wo);
        }
        if wn > 2u * threads {
            pw2 = w_vector(thread + 2u * threads, col0, 0u, wo);
        }
        if wn > 3u * threads {
            pw3 = w_vector(thread + 3u * threads, col0, 0u, wo);
        }
    }

    for (var k0 = 0u; k0 < k_len; k0 += BK) {
        if PREFETCH == 1u {
            // The slice loaded ahead goes to workgroup memory.
            stage_x(thread, px0);
            stage_w(thread, pw0);
            if xn > threads {
                stage_x(thread + threads, px1);
            }
            if xn > 2u * threads {
                stage_x(thread + 2u * threads, px2);
            }
            if xn > 3u * threads {
                stage_x(thread + 3u * threads, px3);
            }
            if wn > threads {
                stage_w(thread + threads, pw1);
            }
            if wn > 2u * threads {
                stage_w(thread + 2u * threads, pw2);
            }
            if wn > 3u * threads {
                stage_w(thread + 3u * threads, pw3);
            }
        } else {
            // Stage x[row0 .. row0 + bm, k0 .. k0 + BK] and w[col0 .. col0 + bn, same
            // k]: consecutive threads read consecutive vectors of a row; the four
            // values of a vector go to four k of the tile. k_len is a multiple of 4,
            // so a vector is wholly inside the row or wholly past its end.
            for (var e = thread; e < xn; e += threads) {
                stage_x(e, x_vector(e, row0, k0, xo));
            }
            for (var e = thread; e < wn; e += threads) {
                stage_w(e, w_vector(e, col0, k0, wo));
            }
        }
        workgroupBarrier();
        if PREFETCH == 1u && k0 + BK < k_len {
            // The next slice, in flight while this one is multiplied.
            let k1 = k0 + BK;
            px0 = x_vector(thread, row0, k1, xo);
            pw0 = w_vector(thread, col0, k1, wo);
            if xn > threads {
                px1 = x_vector(thread + threads, row0, k1, xo);
            }
            if xn > 2u * threads {
                px2 = x_vector(thread + 2u * threads, row0, k1, xo);
            }
            if xn > 3u * threads {
                px3 = x_vector(thread + 3u * threads, row0, k1, xo);
            }
            if wn > threads {
                pw1 = w_vector(thread + threads, col0, k1, wo);
            }
            if wn > 2u * threads {
                pw2 = w_vector(thread + 2u * threads, col0, k1, wo);
            }
            if wn > 3u * threads {
                pw3 = w_vector(thread + 3u * threads, col0, k1, wo);
            }
        }
        for (var k = 0u; k < BK; k++) {
            let xa = vec4<f32>(x_tile[k * xs + local.y]);
            let wa = vec4<f32>(w_tile[k * ws + local.x]);
            c0a = fma(vec4<f32>(xa.x), wa, c0a);
            c1a = fma(vec4<f32>(xa.y), wa, c1a);
            c2a = fma(vec4<f32>(xa.z), wa, c2a);
            c3a = fma(vec4<f32>(xa.w), wa, c3a);
            var wb = vec4<f32>();
            if TN == 8u {
                wb = vec4<f32>(w_tile[k * ws + WG_X + local.x]);
                c0b = fma(vec4<f32>(xa.x), wb, c0b);
                c1b = fma(vec4<f32>(xa.y), wb, c1b);
                c2b = fma(vec4<f32>(xa.z), wb, c2b);
                c3b = fma(vec4<f32>(xa.w), wb, c3b);
            }
            if TM == 8u {
                let xb = vec4<f32>(x_tile[k * xs + WG_Y + local.y]);
                c4a = fma(vec4<f32>(xb.x), wa, c4a);
                c5a = fma(vec4<f32>(xb.y), wa, c5a);
                c6a = fma(vec4<f32>(xb.z), wa, c6a);
                c7a = fma(vec4<f32>(xb.w), wa, c7a);
                if TN == 8u {
                    c4b = fma(vec4<f32>(xb.x), wb, c4b);
                    c5b = fma(vec4<f32>(xb.y), wb, c5b);
                    c6b = fma(vec4<f32>(xb.z), wb, c6b);
                    c7b = fma(vec4<f32>(xb.w), wb, c7b);
                }
            }
        }
        workgroupBarrier();
    }

    let ra = row0 + local.y * 4u;
    let ca = col0 + local.x * 4u;
    store(ra, ca, c0a);
    store(ra + 1u, ca, c1a);
    store(ra + 2u, ca, c2a);
    store(ra + 3u, ca, c3a);
    let cb = ca + bn / 2u;
    if TN == 8u {
        store(ra, cb, c0b);
        store(ra + 1u, cb, c1b);
        store(ra + 2u, cb, c2b);
        store(ra + 3u, cb, c3b);
    }
    if TM == 8u {
        let rb = ra + bm / 2u;
        store(rb, ca, c4a);
        store(rb + 1u, ca, c5a);
        store(rb + 2u, ca, c6a);
        store(rb + 3u, ca, c7a);
        if TN == 8u {
            store(rb, cb, c4b);
            store(rb + 1u, cb, c5b);
            store(rb + 2u, cb, c6b);
            store(rb + 3u, cb, c7b);
        }
    }
}
