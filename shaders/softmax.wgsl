// Row-wise softmax in place: y[r, :] = exp(y[r, :] - max) / sum(exp(y[r, :] - max)).
// One 64-thread workgroup per row (workgroup_id.x is the row) of member
// workgroup_id.z of a stack, whose rows start z * y_stride values into y; subtracting
// the row's maximum keeps exp from overflowing for any input magnitude. The params are
// the dense layer's (lib/dense_params.wgsl): a layer that ends in a softmax shares its
// uniform buffer, and a row is out_features long.

const WG: u32 = 64u;

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> p: DenseParams;

var<workgroup> scratch: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let row = group.x;
    let tid = local.x;
    let base = group.z * p.y_stride + row * p.out_features;
    let live = row < p.rows;

    // Row maximum.
    var m = -3.4028234663852886e38;
    if live {
        for (var c = tid; c < p.out_features; c += WG) {
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

    // Sum of exponentials.
    var s = 0.0;
    if live {
        for (var c = tid; c < p.out_features; c += WG) {
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

    if live {
        for (var c = tid; c < p.out_features; c += WG) {
            y[base + c] = exp(y[base + c] - row_max) / total;
        }
    }
}
