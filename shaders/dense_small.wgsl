// Dense layer for small batches (at most 16 rows), where the layer is bound by reading
// the weights: each weight is read exactly once.
//     y[r, o] = act(sum_k x[r, k] * w[o, k] + b[o])
// One 64-thread workgroup per output o (workgroup_id.x + workgroup_id.y * 65535): the
// threads stride over k reading w[o, :] coalesced (four values per load where the
// input width is a multiple of 4), keep one partial sum per row, then reduce the 64
// partial sums of every row through workgroup memory. Same bindings and params as
// dense.wgsl; written once for f32 and f16 (f16 weights, half the bytes to read, and
// x rounded to f16) in the names of the element prelude, composed after the same
// pieces as dense.wgsl.

// Activation (lib/activation.wgsl): 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 gelu.
override ACT: u32 = 0u;

const WG: u32 = 64u;
const MAX_ROWS: u32 = 16u;

var<workgroup> partial: array<f32, 1024>; // MAX_ROWS * WG

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
                let xv = round_operand4(x[xrow + k]);
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
                acc[r] = fma(round_operand(x[j / 4u][j % 4u]), wv, acc[r]);
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
