// The gradient flowing into the previous layer, through its activation:
//     dzp[r, i] = (sum_o dz[r, o] * w[o, i]) * act'(zp[r, i], ap[r, i])
// where dz is this layer's gradient with respect to its z, w its weights (before the
// step, which runs after), zp and ap the previous layer's kept z and activation, and
// ACT the previous layer's activation (lib/activation_grad.wgsl). Same T x T tiling
// as forward.wgsl, the reduction over this layer's outputs.

@group(0) @binding(0) var<storage, read> dz: array<f32>;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read> zp: array<f32>;
@group(0) @binding(3) var<storage, read> ap: array<f32>;
@group(0) @binding(4) var<storage, read_write> dzp: array<f32>;
@group(0) @binding(5) var<storage, read> l: TrainLayer;

// The previous layer's activation: 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 gelu.
override ACT: u32 = 0u;

// The tile edge (TILE in src/train/gpu/mod.rs: 16; 8 tested too).
override T: u32 = 16u;

var<workgroup> dz_tile: array<f32, T * T>;
var<workgroup> w_tile: array<f32, T * T>;

@compute @workgroup_size(T, T, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let n = l.out_features;
    let k_len = l.in_features;
    let r = group.y * T + local.y;
    let i = group.x * T + local.x;
    var acc = 0.0;
    for (var o0 = 0u; o0 < n; o0 += T) {
        // dz_tile[row][o], w_tile[o][i].
        var d = 0.0;
        if r < s.rows && o0 + local.x < n {
            d = dz[r * n + o0 + local.x];
        }
        dz_tile[local.y * T + local.x] = d;
        var w = 0.0;
        if o0 + local.y < n && i < k_len {
            w = params[(o0 + local.y) * k_len + i];
        }
        w_tile[local.y * T + local.x] = w;
        workgroupBarrier();
        for (var oo = 0u; oo < T; oo++) {
            acc = fma(dz_tile[local.y * T + oo], w_tile[oo * T + local.x], acc);
        }
        workgroupBarrier();
    }
    if r < s.rows && i < k_len {
        let at = r * k_len + i;
        dzp[at] = acc * activate_grad(zp[at], ap[at]);
    }
}
