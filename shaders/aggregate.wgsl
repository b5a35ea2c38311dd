// The contributions of a stack of members (one shape, one buffer) to the aggregate
// node's weighted sum, on the device:
//     acc[r, :] += weight[z] * contribution(y[z][r, :])   for each present member z
// (the executor clears acc at the start of every command buffer)
// MODE 0 (mean, weighted mean): the contribution is the row itself.
// MODE 1 (vote): the contribution is one-hot at the row's argmax; the scan starts at
// f32::MIN and moves only on a strictly greater value, so ties go to the lowest
// class and NaN never wins (the same rule as the host's).
// One thread per row; the members are added in order, as if dispatched one by one.

override MODE: u32 = 0u;

struct Params {
    rows: u32,
    cols: u32,
    // Members in the stack, at most 32; bit z of `present` set: member z takes part.
    members: u32,
    present: u32,
    // Member z's rows start z * y_stride values into y.
    y_stride: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // Member z's weight is weights[z / 4][z % 4].
    weights: array<vec4<f32>, 8>,
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
    let out = row * p.cols;
    for (var z = 0u; z < p.members; z++) {
        if ((p.present >> z) & 1u) == 0u {
            continue;
        }
        let weight = p.weights[z / 4u][z % 4u];
        let base = z * p.y_stride + out;
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
            acc[out + best] += weight;
        } else {
            for (var c = 0u; c < p.cols; c++) {
                acc[out + c] += weight * y[base + c];
            }
        }
    }
}
