// The softmax of the last layer of a stack of members (one shape, one buffer) fused
// with their contributions to the aggregate node, in one pass over the logits:
//     y[z][r, :] = softmax(y[z][r, :])                      (in place, max-shifted)
//     acc[r, :] += weight[z] * contribution(y[z][r, :])
// for each present member z, in order, as if dispatched one by one (the executor
// clears acc at the start of every command buffer).
// MODE 0 (mean, weighted mean): the contribution is the softmax row.
// MODE 1 (vote): one-hot at the row's argmax of the softmax values; ties go to the
// lowest class and NaN never wins (the rule of aggregate.wgsl and the host).
// One 64-thread workgroup per row (workgroup_id.x).

override MODE: u32 = 0u;

const WG: u32 = 64u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<storage, read_write> acc: array<f32>;
@group(0) @binding(2) var<uniform> p: AggregateParams;

var<workgroup> scratch: array<f32, 64>;
var<workgroup> index: array<u32, 64>;

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let row = group.x;
    let tid = local.x;
    let out = row * p.cols;
    let live = row < p.rows;
    for (var z = 0u; z < p.members; z++) {
        if ((p.present >> z) & 1u) == 0u {
            continue;
        }
        let weight = p.weights[z / 4u][z % 4u];
        let base = z * p.y_stride + out;

        var m = -3.4028234663852886e38;
        if live {
            for (var c = tid; c < p.cols; c += WG) {
                m = max(m, y[base + c]);
            }
        }
        scratch[tid] = m;
        workgroupBarrier();
        for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
            if tid < stride {
                scratch[tid] = max(scratch[tid], scratch[tid + stride]);
            }
            workgroupBarrier();
        }
        let row_max = scratch[0];
        workgroupBarrier();

        var s = 0.0;
        if live {
            for (var c = tid; c < p.cols; c += WG) {
                s += exp(y[base + c] - row_max);
            }
        }
        scratch[tid] = s;
        workgroupBarrier();
        for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
            if tid < stride {
                scratch[tid] += scratch[tid + stride];
            }
            workgroupBarrier();
        }
        let total = scratch[0];
        workgroupBarrier();

        // Softmax in place, the member's weighted values into acc, and each thread's
        // best class among its columns. A thread adds to the same columns for every
        // member, so the members' additions stay in order without a barrier.
        var best = NONE;
        var best_value = -3.4028234663852886e38;
        if live {
            for (var c = tid; c < p.cols; c += WG) {
                let v = exp(y[base + c] - row_max) / total;
                y[base + c] = v;
                if MODE == 0u {
                    acc[out + c] += weight * v;
                } else {
                    if v > best_value {
                        best = c;
                        best_value = v;
                    }
                }
            }
        }
        if MODE == 1u {
            // Lowest index among the largest values: the thread-local scans visit
            // columns in increasing order, so combining by (larger value, then lower
            // index) keeps the first maximum of the row.
            scratch[tid] = best_value;
            index[tid] = best;
            workgroupBarrier();
            for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
                if tid < stride {
                    let v = scratch[tid + stride];
                    let i = index[tid + stride];
                    if v > scratch[tid] || (v == scratch[tid] && i < index[tid]) {
                        scratch[tid] = v;
                        index[tid] = i;
                    }
                }
                workgroupBarrier();
            }
            if live && tid == 0u {
                var winner = index[0];
                if winner == NONE {
                    winner = 0u;
                }
                acc[out + winner] += weight;
            }
            // scratch and index are reused by the next member.
            workgroupBarrier();
        }
    }
}
