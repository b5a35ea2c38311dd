// A layer's gradients and, unless OPT is 0, its optimizer step, fused:
//     gw[o, i] = sum_r dz[r, o] * in[row(r), i] + decay * w[o, i],   gb[o] = sum_r dz[r, o]
// then per parameter (PyTorch's formulations; biases without decay):
// - OPT 1, SGD: v = μ·v + g; w -= lr·(g + μ·v) with Nesterov's momentum, else lr·v;
// - OPT 2, Adam: w -= lr·λ·w (AdamW's decoupled decay, λ = 0 for Adam);
//   m = β₁m + (1-β₁)g, v = β₂v + (1-β₂)g², w -= lr·(m/bc1) / (sqrt(v/bc2) + ε).
// The gradients are written in any case (`Engine::gradients` reads them back). A
// T x T workgroup computes a T x T tile of gw, the reduction over the batch's rows
// staged through workgroup memory; the workgroups of the first column of tiles also
// sum gb. Runs after backward.wgsl has read this layer's weights.

@group(0) @binding(0) var<storage, read> dz: array<f32>;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> order: array<u32>;
@group(0) @binding(3) var<storage, read_write> params: array<f32>;
@group(0) @binding(4) var<storage, read_write> grads: array<f32>;
@group(0) @binding(5) var<storage, read_write> state: array<f32>;
@group(0) @binding(6) var<storage, read> l: TrainLayer;

// 0 gradients only, 1 SGD (momentum, Nesterov), 2 Adam / AdamW.
override OPT: u32 = 0u;

// The tile edge (TILE in src/train/gpu/mod.rs: 16; 8 tested too).
override T: u32 = 16u;

var<workgroup> dz_tile: array<f32, T * T>;
var<workgroup> in_tile: array<f32, T * T>;

// The new value of parameter `at` (of `total` in the layer) after its step with
// gradient g, given its decoupled decay.
fn step(at: u32, total: u32, g: f32, decoupled: f32) -> f32 {
    let p = params[at];
    if OPT == 1u {
        let v = l.beta1 * state[at] + g;
        state[at] = v;
        let d = select(v, g + l.beta1 * v, l.nesterov != 0u);
        return p - s.lr * d;
    }
    let q = p * (1.0 - s.lr * decoupled);
    let m = l.beta1 * state[at] + (1.0 - l.beta1) * g;
    let v = l.beta2 * state[total + at] + (1.0 - l.beta2) * g * g;
    state[at] = m;
    state[total + at] = v;
    return q - s.lr * (m / s.bc1) / (sqrt(v / s.bc2) + l.eps);
}

@compute @workgroup_size(T, T, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let n = l.out_features;
    let k_len = l.in_features;
    let o = group.y * T + local.y;
    let i = group.x * T + local.x;
    // The outputs whose dz this thread stages.
    let stage_o = group.y * T + local.x;
    var acc = 0.0;
    var bias = 0.0;
    for (var r0 = 0u; r0 < s.rows; r0 += T) {
        // dz_tile[row][o], in_tile[row][i].
        let r = r0 + local.y;
        var d = 0.0;
        var v = 0.0;
        if r < s.rows {
            if stage_o < n {
                d = dz[r * n + stage_o];
            }
            if i < k_len {
                v = input[source_row(r) * k_len + i];
            }
        }
        dz_tile[local.y * T + local.x] = d;
        in_tile[local.y * T + local.x] = v;
        workgroupBarrier();
        for (var rr = 0u; rr < T; rr++) {
            let g = dz_tile[rr * T + local.y];
            acc = fma(g, in_tile[rr * T + local.x], acc);
            bias += g;
        }
        workgroupBarrier();
    }
    if o >= n {
        return;
    }
    let total = n * k_len + n;
    if i < k_len {
        let at = o * k_len + i;
        let g = acc + l.decay * params[at];
        grads[at] = g;
        if OPT != 0u {
            params[at] = step(at, total, g, l.decoupled);
        }
    }
    if group.x == 0u && local.x == 0u {
        let at = n * k_len + o;
        grads[at] = bias;
        if OPT != 0u {
            params[at] = step(at, total, bias, 0.0);
        }
    }
}
