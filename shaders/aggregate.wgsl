// The contributions of a stack of members (one shape, one buffer) to the aggregate
// node's weighted sum, on the device:
//     acc[r, :] += weight[z] * contribution(y[z][r, :])   for each present member z
// (the executor clears acc at the start of every command buffer)
// MODE 0 (mean, weighted mean): the contribution is the row itself.
// MODE 1 (vote): the contribution is one-hot at the row's argmax; the scan starts at
// f32::MIN and moves only on a strictly greater value, so ties go to the lowest
// class and NaN never wins (the same rule as the host's).
// One 64-thread workgroup per row (workgroup_id.x), its threads striding over the
// columns, the layout of softmax_aggregate.wgsl; the members are added in order, as
// if dispatched one by one.

override MODE: u32 = 0u;

const WG: u32 = 64u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read_write> acc: array<f32>;
@group(0) @binding(2) var<uniform> p: AggregateParams;

var<workgroup> best_values: array<f32, 64>;
var<workgroup> best_index: array<u32, 64>;

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
        if MODE == 0u {
            // A thread adds to the same columns for every member, so the members'
            // additions stay in order without a barrier.
            if live {
                for (var c = tid; c < p.cols; c += WG) {
                    acc[out + c] += weight * y[base + c];
                }
            }
        } else {
            // Each thread's first largest value among its columns, then the larger
            // value (on a tie the lower index) of pairs: the first maximum of the row.
            var best = NONE;
            var best_value = -3.4028234663852886e38;
            if live {
                for (var c = tid; c < p.cols; c += WG) {
                    let v = y[base + c];
                    if v > best_value {
                        best = c;
                        best_value = v;
                    }
                }
            }
            best_values[tid] = best_value;
            best_index[tid] = best;
            workgroupBarrier();
            for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
                if tid < stride {
                    let v = best_values[tid + stride];
                    let i = best_index[tid + stride];
                    if v > best_values[tid] || (v == best_values[tid] && i < best_index[tid]) {
                        best_values[tid] = v;
                        best_index[tid] = i;
                    }
                }
                workgroupBarrier();
            }
            if live && tid == 0u {
                // No value above f32::MIN (a row of only NaN): class 0, as on the host.
                var winner = best_index[0];
                if winner == NONE {
                    winner = 0u;
                }
                acc[out + winner] += weight;
            }
            // best_values and best_index are reused by the next member.
            workgroupBarrier();
        }
    }
}
