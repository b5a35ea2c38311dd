// One member's contribution to the aggregate node's weighted sum, on the device:
//     acc[r, :] += weight * contribution(y[r, :])
// (the executor clears acc at the start of every command buffer)
// MODE 0 (mean, weighted mean): the contribution is the row itself.
// MODE 1 (vote): the contribution is one-hot at the row's argmax; the scan starts at
// f32::MIN and moves only on a strictly greater value, so ties go to the lowest
// class and NaN never wins (the same rule as the host's).
// One thread per row; dispatched once per member, in member order.

override MODE: u32 = 0u;

struct Params {
    rows: u32,
    cols: u32,
    weight: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read_write> acc: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    if MODE == 1u {
        var best = 0u;
        var best_value = -3.4028234663852886e38;
        for (var c = 0u; c < p.cols; c++) {
            let v = y[base + c];
            if v > best_value {
                best = c;
                best_value = v;
            }
        }
        acc[base + best] += p.weight;
    } else {
        for (var c = 0u; c < p.cols; c++) {
            acc[base + c] += p.weight * y[base + c];
        }
    }
}
