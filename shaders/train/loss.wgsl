// The loss of a batch and its gradient with respect to the output layer's z, in one
// 256-thread workgroup (rows strided over the threads, the sums reduced in workgroup
// memory):
// - LOSS 0, cross-entropy on integer labels, softmax fused: per row
//   loss = log sum exp(z - max) - (z[label] - max), dz = (softmax(z) - onehot) * scale
//   (scale = 1/B); a row counts as correct when its first largest z is its label;
// - LOSS 1, squared error on float targets [rows, k] (stored as their bits):
//   loss = sum (z - t)², dz = (z - t) * scale (scale = 2/(B·k)).
// stats[slot * width] gets the batch's loss sum (the host divides), stats[.. + 1] its
// correct rows. The targets are read through the rows' source (lib rows.wgsl).

@group(0) @binding(0) var<storage, read> z: array<f32>;
@group(0) @binding(1) var<storage, read> order: array<u32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> dz: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
@group(0) @binding(5) var<storage, read> l: TrainLayer;

override LOSS: u32 = 0u;

const WG: u32 = 256u;

var<workgroup> loss_part: array<f32, 256>;
var<workgroup> correct_part: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(local_invocation_id) local: vec3<u32>) {
    let tid = local.x;
    let k = l.out_features;
    var loss = 0.0;
    var correct = 0.0;
    for (var r = tid; r < s.rows; r += WG) {
        let base = r * k;
        let src = source_row(r);
        if LOSS == 0u {
            let label = targets[src];
            var m = z[base];
            var best = 0u;
            for (var c = 1u; c < k; c++) {
                let v = z[base + c];
                if v > m {
                    m = v;
                    best = c;
                }
            }
            var total = 0.0;
            for (var c = 0u; c < k; c++) {
                total += exp(z[base + c] - m);
            }
            for (var c = 0u; c < k; c++) {
                let p = exp(z[base + c] - m) / total;
                dz[base + c] = (p - select(0.0, 1.0, c == label)) * s.scale;
            }
            var zl = m;
            if label < k {
                zl = z[base + label];
            }
            loss += log(total) - (zl - m);
            correct += select(0.0, 1.0, best == label);
        } else {
            for (var c = 0u; c < k; c++) {
                let d = z[base + c] - bitcast<f32>(targets[src * k + c]);
                dz[base + c] = d * s.scale;
                loss += d * d;
            }
        }
    }
    loss_part[tid] = loss;
    correct_part[tid] = correct;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if tid < stride {
            loss_part[tid] += loss_part[tid + stride];
            correct_part[tid] += correct_part[tid + stride];
        }
        workgroupBarrier();
    }
    if tid == 0u {
        stats[s.slot * l.stats_width] = loss_part[0];
        stats[s.slot * l.stats_width + 1u] = correct_part[0];
    }
}
