//! Layers longer than llvmpipe's loop limit: right or refused, and kept off llvmpipe
//! by `Placement::Auto`.

use super::*;

/// A layer of `width` inputs, 3 outputs, with values exact in f16 and all positive
/// (no cancellation for the f32 sums of many terms to magnify), and a batch of
/// inputs for it.
fn long_layer(width: usize, batch: usize) -> (Model, wgpu_ensemble::Tensor) {
    let out = 3;
    let w: Vec<f32> = (0..out * width)
        .map(|i| ((i * 7 % 11) + 1) as f32 / 64.0)
        .collect();
    let model = Model::from_parts(vec![(
        wgpu_ensemble::Tensor::matrix(out, width, w).unwrap(),
        vec![0.5; out],
        Identity,
    )])
    .unwrap();
    let x: Vec<f32> = (0..batch * width)
        .map(|i| (i * 13 % 17) as f32 / 2048.0)
        .collect();
    (
        model,
        wgpu_ensemble::Tensor::matrix(batch, width, x).unwrap(),
    )
}

/// Long layers (llvmpipe ends a shader invocation after 65535 loop iterations in
/// all, silently; with Mesa 22.3 the tiled kernels' sums came out wrong past 5120 to
/// 32768 inputs): every precision, the default tile and the largest, with four-value
/// loads (a width that is a multiple of 4) and without, at a batch over the small
/// kernel's 16 rows. llvmpipe runs such layers in chunks of 16 rows; a layer longer
/// than its small kernel computes correctly is refused there.
fn long_layers(info: &AdapterInfo) {
    let mut precisions = vec![(Precision::F32, F32)];
    if quirks::shader_f16(info) {
        precisions.push((Precision::F16, F16));
    }
    if quirks::coop_matrix(info) {
        precisions.push((Precision::F16CoopMatrix, F16));
    }
    let big = TileConfig::CANDIDATES[11];
    assert_eq!((big.tm, big.tn, big.vec4), (8, 8, true));
    for width in [40_000, 40_001] {
        let (model, x) = long_layer(width, 37);
        for &(precision, (reference, _, _)) in &precisions {
            for tile in [TileConfig::DEFAULT, big] {
                let graph = Graph::builder(width)
                    .member("m", model.clone(), Placement::Adapter(info.index))
                    .build()
                    .unwrap();
                let options = SessionOptions::default().precision(precision).tile(tile);
                let run = Session::with_options(graph, options)
                    .unwrap()
                    .run(&x, &RunOptions::default())
                    .unwrap();
                // Sums near 20 of 40 000 terms: f32 rounding, no more.
                assert_close_tol(
                    &format!("{info} {precision:?} {tile:?}: {width} inputs"),
                    run.aggregate.as_slice(),
                    &reference(&model, &x),
                    1e-4,
                    1e-4,
                );
            }
        }
    }
    let width = 600_000;
    let (model, x) = long_layer(width, 17);
    let graph = Graph::builder(width)
        .member("m", model.clone(), Placement::Adapter(info.index))
        .build()
        .unwrap();
    match Session::new(graph) {
        Err(Error::InputsBeyondDriver {
            member,
            layer,
            inputs,
            limit,
            ..
        }) => {
            assert!(quirks::loop_limited(info), "{info}: refused");
            assert_eq!((member.as_str(), layer, inputs), ("m", 0, width));
            assert!(limit < width, "{limit}");
        }
        Err(e) => panic!("{info}: {e}"),
        Ok(session) => {
            assert!(!quirks::loop_limited(info), "{info}: not refused");
            let run = session.run(&x, &RunOptions::default()).unwrap();
            // 600 000 terms summed in order in f32 drift from the exact sum by far
            // more than 40 000 do: 220.14487 against 220.22661 (3.7e-4), as on
            // the H100 and in numpy's float32 cumsum of the same products. A
            // kernel that loses terms is off by their share (llvmpipe's limit
            // lost most of them).
            assert_close_tol(
                &format!("{info}: {width} inputs"),
                run.aggregate.as_slice(),
                &reference_forward(&model, &x),
                1e-3,
                1e-3,
            );
        }
    }
}

placement_tests!(adapters long_layers;
    long_layers_are_right_or_refused_vulkan: Vulkan,
    long_layers_are_right_or_refused_gl: Gl,
);

/// `Placement::Auto` does not put a layer longer than llvmpipe computes correctly on
/// it: where every usable adapter is llvmpipe (a machine without a GPU) the member
/// runs on the CPU, with the right result.
#[test]
fn auto_keeps_long_layers_off_llvmpipe() {
    let adapters = usable_adapters("auto and long layers");
    if adapters.is_empty() || !adapters.iter().all(quirks::loop_limited) {
        eprintln!("auto_keeps_long_layers_off_llvmpipe: not only llvmpipe here, not checked");
        return;
    }
    let width = 600_000;
    let (model, x) = long_layer(width, 2);
    let graph = Graph::builder(width)
        .member("long", model.clone(), Placement::Auto)
        .build()
        .unwrap();
    let run = Session::new(graph)
        .unwrap()
        .run(&x, &RunOptions::default().member_outputs(true))
        .unwrap();
    assert_eq!(run.members[0].device, wgpu_ensemble::ExecutionDevice::Cpu);
    assert_close_tol(
        "auto, 600 000 inputs",
        run.aggregate.as_slice(),
        &reference_forward(&model, &x),
        1e-3,
        1e-4,
    );
}
