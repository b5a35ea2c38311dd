// A stack of members' (one shape, one buffer) share of a stacking blender's first
// layer, on the device while their outputs are there, so that only `hidden` values per
// row cross to the aggregate node instead of every member's output:
//     z[r, h] += Σ_z Σ_c y[z][r, c] · w[z][h, c]      for each present member z
// w[z] is member z's columns of the blender's first-layer weight (`[hidden, cols]`,
// z-major in one buffer); the aggregate node adds the devices' sums, the bias and the
// activation, and runs the blender's other layers. The executor clears z at the start
// of every command buffer (several stacks of a device add to it). Runs after the
// stack's aggregate (and its softmax). One 64-thread workgroup per row
// (workgroup_id.x), its threads striding over the hidden units.

const WG: u32 = 64u;

@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read_write> z: array<f32>;
@group(0) @binding(2) var<uniform> p: AggregateParams;
@group(0) @binding(3) var<storage, read> w: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let row = group.x;
    if row >= p.rows {
        return;
    }
    let cols = p.cols;
    let hidden = p.hidden;
    for (var h = local.x; h < hidden; h += WG) {
        var sum = 0.0;
        for (var m = 0u; m < p.members; m++) {
            if ((p.present >> m) & 1u) == 0u {
                continue;
            }
            let x = m * p.y_stride + row * cols;
            let wrow = (m * hidden + h) * cols;
            for (var c = 0u; c < cols; c++) {
                sum += y[x + c] * w[wrow + c];
            }
        }
        z[row * hidden + h] += sum;
    }
}
