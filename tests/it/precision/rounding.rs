//! f16 rounding: every layer input, round-to-nearest-even in every kernel, overflow,
//! and `round_f16` as each driver compiles it against `half`.

use super::*;

/// `Precision::F16` and `F16CoopMatrix` round each layer's input to f16 in every
/// kernel: 2049 is not an f16 (it rounds to 2048), so `2049 - 2048` is 0 there and 1 in
/// f32, far outside any tolerance. One layer 8 wide (the kernels' four-value loads;
/// the pair in the first and the last two values of a row) and 3 wide (single
/// values); two layers, whose hidden layer makes the 2049 (an f32 bias of 1 on an
/// f16-exact 2048), so that a later layer's input is checked too. At batches for the
/// small-batch kernel (1) and the tiled or cooperative-matrix one (20); in f16 also
/// with a prefetching tile.
fn layer_inputs_rounded(info: &AdapterInfo) {
    common::require_an_adapter_with("SHADER_F16 to check the rounding on", quirks::shader_f16);
    use wgpu_ensemble::{Dense, Tensor};
    let dense = |rows: usize, cols: usize, weights: Vec<f32>, bias: Vec<f32>| {
        Dense::new(Tensor::matrix(rows, cols, weights).unwrap(), bias, Identity).unwrap()
    };
    let pairs = |width: usize| -> Vec<f32> {
        let mut w = vec![0.0; width];
        w[..2].copy_from_slice(&[1.0, -1.0]);
        if width == 8 {
            w[6..].copy_from_slice(&[1.0, -1.0]);
        }
        w
    };
    let identity: Vec<f32> = (0..64)
        .map(|i| if i % 9 == 0 { 1.0 } else { 0.0 })
        .collect();
    // (model, input width, one input row)
    let cases: Vec<(Model, usize, Vec<f32>)> = vec![
        (
            Model::new(vec![dense(1, 8, pairs(8), vec![0.0])]).unwrap(),
            8,
            vec![2049.0, 2048.0, 0.0, 0.0, 0.0, 0.0, 2049.0, 2048.0],
        ),
        (
            Model::new(vec![dense(1, 3, pairs(3), vec![0.0])]).unwrap(),
            3,
            vec![2049.0, 2048.0, 0.0],
        ),
        (
            Model::new(vec![
                dense(8, 8, identity, vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
                dense(1, 8, pairs(8), vec![0.0]),
            ])
            .unwrap(),
            8,
            vec![2048.0; 8],
        ),
    ];
    let prefetch = TileConfig::CANDIDATES
        .into_iter()
        .find(|t| t.prefetch)
        .unwrap();
    let mut runs = Vec::new();
    if quirks::shader_f16(info) {
        let f16 = SessionOptions::default().precision(Precision::F16);
        runs.push(("f16", f16.clone()));
        runs.push(("f16 prefetch", f16.tile(prefetch)));
    }
    if quirks::coop_matrix(info) {
        let coop = SessionOptions::default().precision(Precision::F16CoopMatrix);
        runs.push(("f16-coop", coop));
    }
    for (how, options) in &runs {
        for (c, (model, width, row)) in cases.iter().enumerate() {
            let graph = Graph::builder(*width)
                .member("m", model.clone(), Placement::Adapter(info.index))
                .build()
                .unwrap();
            let s = Session::with_options(graph, options.clone()).unwrap();
            for batch in [1, 20] {
                let x = Tensor::matrix(batch, *width, row.repeat(batch)).unwrap();
                let run = s.run(&x, &RunOptions::default()).unwrap();
                assert!(
                    run.aggregate.as_slice().iter().all(|&v| v == 0.0),
                    "{info} {how} case {c} batch {batch}: {:?} (not 0: inputs not rounded)",
                    run.aggregate.as_slice()
                );
            }
        }
    }
}

placement_tests!(adapters layer_inputs_rounded;
    f16_rounds_every_layer_input_vulkan: Vulkan,
    f16_rounds_every_layer_input_gl: Gl,
);

/// Values that test rounding to the nearest f16, ties to even: ties at every scale,
/// f16 subnormals (multiples of 2^-24) and their ties, the largest finite values,
/// f32 subnormals, signed zeros, and pseudo-random values across f16's exponents.
fn rounding_values() -> Vec<f32> {
    let p = |e: i32| 2f32.powi(e);
    let mut v = vec![
        2049.0,
        2051.0,
        -2051.0,
        2053.0,
        1.0 + p(-11),
        1.0 + 3.0 * p(-11),
        -(1.0 + 3.0 * p(-11)),
        65504.0,
        65519.0,
        65519.99,
        -65519.0,
        65500.0,
        0.1,
        1.0 / 3.0,
        -2.0 / 3.0,
        std::f32::consts::PI,
        p(-14),
        p(-14) * (1.0 - p(-20)),
        p(-14) - p(-25),
        6.1e-5,
        p(-24),
        1.5 * p(-24),
        2.5 * p(-24),
        -2.5 * p(-24),
        1023.5 * p(-24),
        p(-25),
        p(-25) * 1.01,
        -p(-25) * 1.01,
        1e-8,
        -1e-8,
        1e-40,
        0.0,
        -0.0,
        1000.3,
        12345.6,
    ];
    // Pseudo-random significands at exponents from -28 to 15.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..93 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let significand = 1.0 + (state >> 41) as f32 / (1u64 << 23) as f32;
        let sign = if state & 1 == 0 { 1.0 } else { -1.0 };
        v.push(sign * significand * p(i % 44 - 28));
    }
    v
}

/// Every f16 path rounds its inputs exactly as `half` does (to nearest, ties to even,
/// f16 subnormals included): through a layer of identity weights, each output is its
/// input rounded to f16, compared for equality with `half::f16::from_f32`. Checked on
/// the CPU and on every adapter with SHADER_F16 (and cooperative matrices where
/// listed), four values per load (a width of 4) and one at a time (3), at batches of
/// the small-batch kernel (16 rows) and the tiled and cooperative ones (over 16); in
/// f16 also with the scalar and the prefetching tiles. (NVIDIA's Vulkan driver folded
/// the small kernel's earlier rounding, unpack2x16float(pack2x16float(x)), into x.)
fn nearest_even(label: &str, place: Placement, runs: &[(&str, SessionOptions)]) {
    use wgpu_ensemble::{Dense, Tensor};
    let values = rounding_values();
    for width in [4usize, 3] {
        let identity: Vec<f32> = (0..width * width)
            .map(|i| if i % (width + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        let layer = Dense::new(
            Tensor::matrix(width, width, identity).unwrap(),
            vec![0.0; width],
            Identity,
        )
        .unwrap();
        let model = Model::new(vec![layer]).unwrap();
        // Whole rows of values (the last one filled up from the start), at least 17.
        let rows = values.len().div_ceil(width).max(17);
        let all: Vec<f32> = values.iter().copied().cycle().take(rows * width).collect();
        for (how, options) in runs {
            let graph = Graph::builder(width)
                .member("m", model.clone(), place.clone())
                .build()
                .unwrap();
            let s = Session::with_options(graph, options.clone()).unwrap();
            // The small kernel in chunks of 16 rows, then every row at once.
            let chunks = all.chunks(16 * width).chain([&all[..]]);
            for x in chunks {
                let batch = x.len() / width;
                let input = Tensor::matrix(batch, width, x.to_vec()).unwrap();
                let run = s.run(&input, &RunOptions::default()).unwrap();
                for (i, (&got, &v)) in run.aggregate.as_slice().iter().zip(x).enumerate() {
                    let want = common::round_f16(v);
                    assert!(
                        got == want,
                        "{label} {how}, width {width}, batch {batch}, index {i}: \
                         {v:e} rounded to {got:e}, f16 has {want:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn f16_inputs_round_to_nearest_even_in_every_kernel_cpu() {
    let f16 = SessionOptions::default().precision(Precision::F16);
    nearest_even("cpu", Placement::Cpu, &[("f16", f16)]);
}

fn nearest_even_on_adapter(info: &AdapterInfo) {
    common::require_an_adapter_with("SHADER_F16 to check the rounding on", quirks::shader_f16);
    let scalar = TileConfig::CANDIDATES
        .into_iter()
        .find(|t| !t.vec4 && !t.prefetch)
        .unwrap();
    let prefetch = TileConfig::CANDIDATES
        .into_iter()
        .find(|t| t.prefetch)
        .unwrap();
    let f16 = SessionOptions::default().precision(Precision::F16);
    let mut runs = Vec::new();
    if quirks::shader_f16(info) {
        runs.push(("f16", f16.clone()));
        runs.push(("f16 scalar tile", f16.clone().tile(scalar)));
        runs.push(("f16 prefetch", f16.clone().tile(prefetch)));
    }
    if quirks::coop_matrix(info) {
        let coop = SessionOptions::default().precision(Precision::F16CoopMatrix);
        runs.push(("f16-coop", coop));
    }
    nearest_even(&info.to_string(), Placement::Adapter(info.index), &runs);
}

placement_tests!(adapters nearest_even_on_adapter;
    f16_inputs_round_to_nearest_even_in_every_kernel_vulkan: Vulkan,
    f16_inputs_round_to_nearest_even_in_every_kernel_gl: Gl,
);

/// In the small-batch f16 kernel an input past f16's range rounds to infinity, as on
/// the CPU (round_f16, through which every f16 kernel rounds inputs, maps it there): `[70000, 3]` times `[1, 0]` is infinity, times `[0, 1]` NaN
/// (0 × ∞), in f16 on the CPU and on every adapter with SHADER_F16.
fn overflow(place: Placement, label: &str) {
    use wgpu_ensemble::{Dense, Tensor};
    let weight = Tensor::matrix(2, 4, vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]).unwrap();
    let model = Model::new(vec![Dense::new(weight, vec![0.0, 0.0], Identity).unwrap()]).unwrap();
    let graph = Graph::builder(4)
        .member("m", model.clone(), place)
        .build()
        .unwrap();
    let options = SessionOptions::default().precision(Precision::F16);
    let s = Session::with_options(graph, options).unwrap();
    let x = Tensor::matrix(1, 4, vec![70000.0, 3.0, 0.0, 0.0]).unwrap();
    let out = s.run(&x, &RunOptions::default()).unwrap();
    let y = out.aggregate.as_slice();
    assert!(
        y[0] == f32::INFINITY && y[1].is_nan(),
        "{label}: {y:?}, expected [inf, NaN]"
    );
}

#[test]
fn f16_overflow_is_infinity_in_the_small_kernel_cpu() {
    overflow(Placement::Cpu, "cpu");
}

fn overflow_on_adapter(info: &AdapterInfo) {
    if quirks::shader_f16(info) {
        overflow(Placement::Adapter(info.index), &info.to_string());
    }
}

placement_tests!(adapters overflow_on_adapter;
    f16_overflow_is_infinity_in_the_small_kernel_vulkan: Vulkan,
    f16_overflow_is_infinity_in_the_small_kernel_gl: Gl,
);

/// `round_f16` (the function every f16 kernel rounds x through), compiled by each
/// adapter's driver, against `half` on 7.3 million inputs: every f32 exponent from
/// 2^-37 to 2^18 (f16's range and well past both ends), both signs, all 2^14 low
/// significand bits (those rounding drops, ties among them) under four high
/// patterns, and the special values. The kernels' tests go through a few hundred
/// values; this is the driver's arithmetic on all the bit patterns that matter.
fn round_f16_on_driver(info: &AdapterInfo) {
    use wgpu::util::DeviceExt;
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(common::ROUND_F16_SHADER),
    )
    .unwrap();
    let shader = format!(
        "{}\n@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;\n\
         @group(0) @binding(1) var<storage, read_write> y: array<vec4<f32>>;\n\
         @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>,\
         @builtin(num_workgroups) n: vec3<u32>) {{\n\
           let i = g.x + g.y * n.x * 64u;\n\
           if i < arrayLength(&x) {{ y[i] = round_f16(x[i]); }}\n}}\n",
        common::wgsl_function(&source, "round_f16")
    );
    let mut bits: Vec<u32> = Vec::new();
    for sign in [0u32, 0x8000_0000] {
        for e in 90u32..=145 {
            for hi in [0u32, 1, 0x155, 0x1ff] {
                bits.extend((0u32..1 << 14).map(|lo| sign | e << 23 | hi << 14 | lo));
            }
        }
        for special in [
            0u32,
            1,
            0x7f_ffff,
            0x7f80_0000,
            0x7fc0_0000,
            0x477f_f000,
            0x477f_efff,
        ] {
            bits.push(sign | special);
        }
    }
    bits.resize(bits.len().next_multiple_of(4), 0);
    // The crate's backends, in its order, so that an adapter's index is the crate's.
    let backends =
        wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12 | wgpu::Backends::GL;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let adapter = &adapters[info.index];
    assert_eq!(adapter.get_info().name, info.name, "adapter order");
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default())).unwrap();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(shader.as_str().into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let mut got: Vec<u32> = Vec::with_capacity(bits.len());
    // Parts that fit the smallest storage-binding limits (128 MiB).
    for part in bits.chunks(1 << 22) {
        let size = (part.len() * 4) as u64;
        let x = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(part),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let y = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: x.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: y.as_entire_binding(),
                },
            ],
        });
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            let groups = (part.len() as u32 / 4).div_ceil(64);
            pass.dispatch_workgroups(groups.min(65535), groups.div_ceil(65535), 1);
        }
        encoder.copy_buffer_to_buffer(&y, 0, &read, 0, size);
        queue.submit([encoder.finish()]);
        read.slice(..)
            .map_async(wgpu::MapMode::Read, |r| r.unwrap());
        device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
        got.extend_from_slice(bytemuck::cast_slice(
            &read.slice(..).get_mapped_range().unwrap(),
        ));
        read.unmap();
    }
    let mut bad = Vec::new();
    for (&b, &g) in bits.iter().zip(&got) {
        let v = f32::from_bits(b);
        let want = common::round_f16(v);
        let r = f32::from_bits(g);
        if !(r == want || v.is_nan() && r.is_nan()) {
            bad.push(format!("{b:08x} ({v:e}): got {r:e}, f16 has {want:e}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{info}: {} of {} wrong, first: {:?}",
        bad.len(),
        bits.len(),
        &bad[..bad.len().min(10)]
    );
}

placement_tests!(adapters round_f16_on_driver;
    round_f16_compiled_by_every_driver_matches_half_vulkan: Vulkan,
    round_f16_compiled_by_every_driver_matches_half_gl: Gl,
);
