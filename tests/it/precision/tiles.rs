//! The register-tiled kernel under every tile configuration the autotune may pick,
//! and the vec4 kernel's tiles on edge shapes and the shapes it refuses.

use super::*;

fn tile_candidates(info: &AdapterInfo) {
    let place = Placement::Adapter(info.index);
    for tile in TileConfig::CANDIDATES {
        match session(&place, SessionOptions::default().tile(tile)) {
            Ok(s) => check(&s, F32, &format!("{info} {tile:?}")),
            Err(Error::TileUnsupported { .. }) => {
                eprintln!("{info}: {tile:?} exceeds its limits, not checked");
                continue;
            }
            Err(e) => panic!("{info} {tile:?}: {e}"),
        }
        // The same kernels without wgpu's runtime bounds checks.
        // SAFETY: this test is what vouches for the kernels' own bounds checks.
        let trusted = unsafe { SessionOptions::default().tile(tile).trusted_kernels() };
        match session(&place, trusted) {
            Ok(s) => check(&s, F32, &format!("{info} {tile:?} trusted")),
            Err(Error::TileUnsupported { .. }) => {
                eprintln!("{info}: {tile:?} exceeds its limits, not checked")
            }
            Err(e) => panic!("{info} {tile:?}: {e}"),
        }
    }
}

placement_tests!(adapters tile_candidates;
    every_tile_candidate_matches_reference_vulkan: Vulkan,
    every_tile_candidate_matches_reference_gl: Gl,
);

fn vec4_edge_shapes(info: &AdapterInfo) {
    // dense_vec4.wgsl (composed in f16 too, on adapters with SHADER_F16) runs
    // layers whose input width is a multiple of 4: widths below and past one staged
    // slice (4, 12, 36, 132 against slices 8 and 16 deep), output widths that end in
    // a partial run of four (1, 7, 13, 130), rows past one 128-row tile; the 1, 7, 33
    // and 130 wide inputs in the same members run the strided kernel with the tile.
    // Two members of one shape run stacked (their offsets in every staged load).
    let models = [
        Model::random(&[36, 4, 132, 13], &[Relu, Gelu, Softmax], 21).unwrap(),
        Model::random(&[36, 132, 130, 13], &[Tanh, Sigmoid, Identity], 22).unwrap(),
        Model::random(&[36, 132, 130, 13], &[Tanh, Sigmoid, Identity], 25).unwrap(),
        Model::random(&[36, 12, 1, 13], &[Relu, Identity, Tanh], 23).unwrap(),
        Model::random(&[36, 7, 33, 13], &[Gelu, Relu, Identity], 24).unwrap(),
    ];
    // The candidates, and shapes no candidate has: 8 rows by 4 outputs per thread, a
    // workgroup wider than tall; with prefetch also those, and tiles whose threads
    // stage 4 vectors of x and w per slice, and 2 of x (the second for half of the
    // threads) and 3 of w (slices 12 deep).
    let mut tiles: Vec<TileConfig> = TileConfig::CANDIDATES
        .into_iter()
        .filter(|t| t.vec4)
        .collect();
    assert!(tiles.iter().any(|t| t.prefetch) && tiles.iter().any(|t| !t.prefetch));
    let extra = |wg_x, wg_y, tm, tn, bk, prefetch| TileConfig {
        wg_x,
        wg_y,
        tm,
        tn,
        bk,
        vec4: true,
        prefetch,
    };
    tiles.extend([
        extra(16, 16, 8, 4, 16, false),
        extra(16, 8, 4, 8, 4, false),
        extra(16, 16, 8, 4, 16, true),
        extra(16, 8, 4, 8, 4, true),
        extra(8, 8, 8, 8, 16, true),
        extra(8, 8, 4, 8, 12, true),
    ]);
    let mut precisions = vec![(Precision::F32, F32)];
    if quirks::shader_f16(info) {
        precisions.push((Precision::F16, F16));
    }
    for ((precision, (reference, abs, rel)), tile) in precisions
        .iter()
        .flat_map(|p| tiles.iter().map(move |t| (*p, *t)))
    {
        let mut g = Graph::builder(36);
        for (i, m) in models.iter().enumerate() {
            g = g.member(format!("m{i}"), m.clone(), Placement::Adapter(info.index));
        }
        let graph = g.build().unwrap();
        let options = SessionOptions::default().precision(precision).tile(tile);
        // SAFETY: this test is what vouches for the kernels' own bounds checks.
        let trusted = unsafe { options.clone().trusted_kernels() };
        for (options, how) in [(options, "checked"), (trusted, "trusted")] {
            let s = match Session::with_options(graph.clone(), options) {
                Ok(s) => s,
                // Only a device's limits may refuse one of these tiles.
                Err(Error::TileUnsupported { tile: why, .. })
                    if why.contains("workgroup size or workgroup memory") =>
                {
                    eprintln!("{info}: {tile:?} exceeds its limits, not checked");
                    continue;
                }
                Err(e) => panic!("{info} {tile:?}: {e}"),
            };
            for batch in [17, 130] {
                let x = input(batch, 36, batch as u64 + 3);
                let run = s
                    .run(&x, &RunOptions::default().member_outputs(true))
                    .unwrap();
                for (m, model) in run.members.iter().zip(&models) {
                    assert_close_tol(
                        &format!(
                            "{info} {precision:?} {tile:?} {how}: {} batch {batch}",
                            m.name
                        ),
                        m.output.as_ref().unwrap().as_slice(),
                        &reference(model, &x),
                        abs,
                        rel,
                    );
                }
            }
        }
    }
}

placement_tests!(adapters vec4_edge_shapes;
    vec4_tiles_handle_edge_shapes_vulkan: Vulkan,
    vec4_tiles_handle_edge_shapes_gl: Gl,
);

fn vec4_refusals(info: &AdapterInfo) {
    let odd = TileConfig {
        tm: 2,
        ..TileConfig::DEFAULT
    };
    let place = Placement::Adapter(info.index);
    match session(&place, SessionOptions::default().tile(odd)) {
        Err(Error::TileUnsupported { tile, .. }) => {
            assert!(tile.contains("tm and tn 4 or 8"), "{tile}")
        }
        Err(e) => panic!("{info}: {e}"),
        Ok(_) => panic!("{info}: a vec4 tile with tm 2 was accepted"),
    }
    // Prefetch is a dense_vec4.wgsl option, with at most 4 vectors per thread.
    let refusals = [
        (
            TileConfig {
                vec4: false,
                prefetch: true,
                ..TileConfig::DEFAULT
            },
            "prefetch needs vec4",
        ),
        (
            TileConfig {
                wg_x: 8,
                wg_y: 4,
                tm: 8,
                tn: 8,
                bk: 16,
                vec4: true,
                prefetch: true,
            },
            "at most 4 vectors",
        ),
    ];
    for (tile, why) in refusals {
        match session(&place, SessionOptions::default().tile(tile)) {
            Err(Error::TileUnsupported { tile, .. }) => {
                assert!(tile.contains(why), "{tile}")
            }
            Err(e) => panic!("{info}: {e}"),
            Ok(_) => panic!("{info}: {tile:?} was accepted"),
        }
    }
}

placement_tests!(adapters vec4_refusals;
    vec4_tiles_refuse_other_shapes_vulkan: Vulkan,
    vec4_tiles_refuse_other_shapes_gl: Gl,
);
