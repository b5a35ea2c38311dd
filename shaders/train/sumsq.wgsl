// The sum of a layer's squared weights (not its biases), for the L2 term of the loss
// the optimizer steps on: one 256-thread workgroup writes it to
// stats[slot * width + 2 + layer], before the step changes the weights.

@group(0) @binding(0) var<storage, read> params: array<f32>;
@group(0) @binding(1) var<storage, read_write> stats: array<f32>;
@group(0) @binding(2) var<storage, read> l: TrainLayer;

const WG: u32 = 256u;

var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_id) local: vec3<u32>) {
    let tid = local.x;
    let len = l.out_features * l.in_features;
    var acc = 0.0;
    for (var i = tid; i < len; i += WG) {
        let w = params[i];
        acc = fma(w, w, acc);
    }
    part[tid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if tid < stride {
            part[tid] += part[tid + stride];
        }
        workgroupBarrier();
    }
    if tid == 0u {
        stats[s.slot * l.stats_width + 2u + l.layer] = part[0];
    }
}
