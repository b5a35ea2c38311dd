// Training forward pass of one dense layer, keeping what the backward pass needs:
//     z[r, o] = sum_k in[row(r), k] * w[o, k] + b[o],   a[r, o] = act(z[r, o])
// The first layer reads the data set's rows through the epoch's order (INPUT 2) or
// contiguously (INPUT 1, evaluation); later layers read the previous layer's a.
// A T x T workgroup computes a T x T tile of z, staging T-deep slices of the
// input and of w through workgroup memory; every load and store is bounds checked.

@group(0) @binding(0) var<storage, read> input: array<f32>;
@group(0) @binding(1) var<storage, read> order: array<u32>;
@group(0) @binding(2) var<storage, read> params: array<f32>;
@group(0) @binding(3) var<storage, read_write> z: array<f32>;
@group(0) @binding(4) var<storage, read_write> a: array<f32>;
@group(0) @binding(5) var<storage, read> l: TrainLayer;

// Activation (lib/activation.wgsl): 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 gelu.
override ACT: u32 = 0u;

// The tile edge (TILE in src/train/gpu/mod.rs: 16; 8 tested too).
override T: u32 = 16u;

var<workgroup> in_tile: array<f32, T * T>;
var<workgroup> w_tile: array<f32, T * T>;

@compute @workgroup_size(T, T, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let k_len = l.in_features;
    let n = l.out_features;
    let r = group.y * T + local.y;
    let o = group.x * T + local.x;
    // The rows and outputs this thread stages.
    let stage_r = group.y * T + local.y;
    let stage_o = group.x * T + local.y;
    var src = 0u;
    if stage_r < s.rows {
        src = source_row(stage_r);
    }
    var acc = 0.0;
    for (var k0 = 0u; k0 < k_len; k0 += T) {
        let k = k0 + local.x;
        var v = 0.0;
        if stage_r < s.rows && k < k_len {
            v = input[src * k_len + k];
        }
        in_tile[local.y * T + local.x] = v;
        var w = 0.0;
        if stage_o < n && k < k_len {
            w = params[stage_o * k_len + k];
        }
        w_tile[local.y * T + local.x] = w;
        workgroupBarrier();
        for (var kk = 0u; kk < T; kk++) {
            acc = fma(in_tile[local.y * T + kk], w_tile[local.x * T + kk], acc);
        }
        workgroupBarrier();
    }
    if r < s.rows && o < n {
        let v = acc + params[n * k_len + o];
        z[r * n + o] = v;
        a[r * n + o] = activate(v);
    }
}
