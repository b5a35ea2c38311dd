// A stack of members' (one shape, one buffer) share of a stacking blender's first
// layer, on the device while their outputs are there, so that only `hidden` values per
// row cross to the aggregate node instead of every member's output:
//     z[r, h] += Σ_z Σ_c y[z][r, c] · w[z][h, c]      for each present member z
// w[z] is member z's columns of the blender's first-layer weight (`[hidden, cols]`,
// z-major in one buffer); the aggregate node adds the devices' sums, the bias and the
// activation, and runs the blender's other layers. The executor clears z at the start
// of every command buffer (several stacks of a device add to it). Runs after the
// stack's aggregate (and its softmax). One 64-thread workgroup per row
// (workgroup_id.x): for each hidden unit its threads stride over the columns and the
// workgroup adds their sums, so that no loop of one invocation runs longer than
// `cols / 64` (llvmpipe ends an invocation after 65535 loop iterations; the executor
// refuses a blender whose loops would reach that there).

const WG: u32 = 64u;

@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read_write> z: array<f32>;
@group(0) @binding(2) var<uniform> p: AggregateParams;
@group(0) @binding(3) var<storage, read> w: array<f32>;

var<workgroup> sums: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
) {
    let row = group.x;
    let tid = local.x;
    let live = row < p.rows;
    let cols = p.cols;
    let hidden = p.hidden;
    for (var h = 0u; h < hidden; h++) {
        var sum = 0.0;
        if live {
            for (var m = 0u; m < p.members; m++) {
                if ((p.present >> m) & 1u) == 0u {
                    continue;
                }
                let x = m * p.y_stride + row * cols;
                let wrow = (m * hidden + h) * cols;
                for (var c = tid; c < cols; c += WG) {
                    sum += y[x + c] * w[wrow + c];
                }
            }
        }
        sums[tid] = sum;
        workgroupBarrier();
        for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
            if tid < stride {
                sums[tid] += sums[tid + stride];
            }
            workgroupBarrier();
        }
        if live && tid == 0u {
            z[row * hidden + h] += sums[0];
        }
        // `sums` is reused by the next hidden unit.
        workgroupBarrier();
    }
}
