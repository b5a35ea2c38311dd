// The uncertainty statistics of a stack of members (one shape, one buffer), on the
// device while their outputs are there, so that only these cross to the aggregate
// node (uncertainty.rs merges the groups and finishes the measures):
//     m[r, c]          = Σ_z w_z y[z][r, c] / W                  (the stack's mean)
//     m[r, C + c]      = Σ_z w_z (y[z][r, c] − mean)² / W        (its variance)
//     m[r, 2C + c]     = Σ_z w_z [argmax y[z][r, :] = c] / W     (its vote shares)
//     m[r, 3C]         = Σ_z w_z H(y[z][r, :]) / W               (its mean entropy)
// over the present members z of positive weight, W = Σ_z w_z, C = cols,
// H(p) = −Σ_c p_c ln p_c over the values above 0; the argmax is the first largest
// value, NaN never winning (the rule of aggregate.wgsl and the host). Normalized by W, the values do not depend on a
// common scale of the weights. Runs after the stack's aggregate (and its softmax).
// One 64-thread workgroup per row (workgroup_id.x), its threads striding over the
// columns; the values are written, not added.

const WG: u32 = 64u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read_write> m: array<f32>;
@group(0) @binding(2) var<uniform> p: AggregateParams;

var<workgroup> entropies: array<f32, 64>;
var<workgroup> best_values: array<f32, 64>;
var<workgroup> best_index: array<u32, 64>;
// Each member's vote, by its index in the stack (at most 32 members).
var<workgroup> winners: array<u32, 32>;

fn weight_of(z: u32) -> f32 {
    return p.weights[z / 4u][z % 4u];
}

// A member counts when it takes part and has a weight: one of weight 0 adds nothing,
// not even a NaN of its output (the host leaves such members out too).
fn counts(z: u32) -> bool {
    return ((p.present >> z) & 1u) == 1u && weight_of(z) > 0.0;
}

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let row = group.x;
    let tid = local.x;
    let cols = p.cols;
    let live = row < p.rows;
    var total = 0.0;
    for (var z = 0u; z < p.members; z++) {
        if counts(z) {
            total += weight_of(z);
        }
    }
    // A stack without weight writes zeros (the host leaves such a group out).
    var scale = 0.0;
    if total > 0.0 {
        scale = 1.0 / total;
    }

    // Each member's entropy and vote: the threads' partial sums and first largest
    // values over their columns, reduced across the workgroup.
    var expected = 0.0;
    for (var z = 0u; z < p.members; z++) {
        if !counts(z) {
            continue;
        }
        let base = z * p.y_stride + row * cols;
        var h = 0.0;
        var best = NONE;
        var best_value = -3.4028234663852886e38;
        if live {
            for (var c = tid; c < cols; c += WG) {
                let v = y[base + c];
                if v > 0.0 {
                    h -= v * log(v);
                }
                if v > best_value {
                    best = c;
                    best_value = v;
                }
            }
        }
        entropies[tid] = h;
        best_values[tid] = best_value;
        best_index[tid] = best;
        workgroupBarrier();
        for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
            if tid < stride {
                entropies[tid] += entropies[tid + stride];
                let v = best_values[tid + stride];
                let i = best_index[tid + stride];
                if v > best_values[tid] || (v == best_values[tid] && i < best_index[tid]) {
                    best_values[tid] = v;
                    best_index[tid] = i;
                }
            }
            workgroupBarrier();
        }
        if tid == 0u {
            expected += weight_of(z) * entropies[0];
            // No value above f32::MIN (a row of only NaN): class 0, as on the host.
            var winner = best_index[0];
            if winner == NONE {
                winner = 0u;
            }
            winners[z] = winner;
        }
        // The scratch arrays are reused by the next member.
        workgroupBarrier();
    }
    if !live {
        return;
    }

    // Per column (each thread its own): the mean, then the spread around it, then the
    // votes for it.
    let out = row * (3u * cols + 1u);
    for (var c = tid; c < cols; c += WG) {
        var sum = 0.0;
        for (var z = 0u; z < p.members; z++) {
            if counts(z) {
                sum += weight_of(z) * y[z * p.y_stride + row * cols + c];
            }
        }
        let mean = sum * scale;
        var spread = 0.0;
        var votes = 0.0;
        for (var z = 0u; z < p.members; z++) {
            if counts(z) {
                let d = y[z * p.y_stride + row * cols + c] - mean;
                spread += weight_of(z) * d * d;
                if winners[z] == c {
                    votes += weight_of(z);
                }
            }
        }
        m[out + c] = mean;
        m[out + cols + c] = spread * scale;
        m[out + 2u * cols + c] = votes * scale;
    }
    if tid == 0u {
        m[out + 3u * cols] = expected * scale;
    }
}
