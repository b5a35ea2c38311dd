//! The register-tiled kernel under every tile configuration the autotune may pick,
//! the small-batch kernel, `Precision::F16` against its own reference, and the
//! autotune with its cache file.

use crate::common;

use common::{
    assert_close_tol, input, reference_forward, reference_forward_f16, usable_adapters, ABS, REL,
};

/// F32 kernels against the exact reference.
const F32: (Reference, f64, f64) = (reference_forward, ABS, REL);
/// F16 kernels against the reference that rounds weights and layer inputs to f16 the
/// same way. A hidden activation within f32 rounding of an f16 rounding boundary may
/// round the other way (one f16 ulp, 2^-11 relative), which moves the next layer's
/// outputs by about 1e-4 per flip (1.6e-4 measured on lavapipe with LLVM 22, whose
/// exp and tanh differ from LLVM 15's in the last f32 bits): the documented tolerance
/// of `Precision::F16` and `F16CoopMatrix` is abs 3e-4 or rel 3e-3 against this
/// reference.
const F16: (Reference, f64, f64) = (reference_forward_f16, 3e-4, 3e-3);
use wgpu_ensemble::{
    wgpu, Activation::*, CoopShape, Error, Graph, Model, Placement, Precision, RunOptions, Session,
    SessionOptions, TileConfig,
};

/// First layers 33 wide (the kernels' one-at-a-time staging), later layers 65 and
/// 70 wide (the same) and 64, 128 wide (four values per load).
fn members() -> Vec<Model> {
    vec![
        Model::random(&[33, 65, 64, 7], &[Relu, Identity, Softmax], 1).unwrap(),
        Model::random(&[33, 128, 70, 7], &[Gelu, Tanh, Identity], 2).unwrap(),
        Model::random(&[33, 7], &[Sigmoid], 3).unwrap(),
    ]
}

fn session(place: &Placement, options: SessionOptions) -> Result<Session, Error> {
    let mut g = Graph::builder(33);
    for (i, m) in members().into_iter().enumerate() {
        g = g.member(format!("m{i}"), m, place.clone());
    }
    Session::with_options(g.build().unwrap(), options)
}

type Reference = fn(&Model, &wgpu_ensemble::Tensor) -> Vec<f64>;

/// Every member output at batches that take the small-batch kernel (1, 16) and the
/// tiled one (17, 100, 257), against `reference` with (abs, rel) tolerances.
fn check(session: &Session, (reference, abs, rel): (Reference, f64, f64), label: &str) {
    let models = members();
    for batch in [1, 16, 17, 100, 257] {
        let x = input(batch, 33, batch as u64);
        let run = session
            .run(&x, &RunOptions::default().member_outputs(true))
            .unwrap();
        for (m, model) in run.members.iter().zip(&models) {
            assert_close_tol(
                &format!("{label}: {} batch {batch}", m.name),
                m.output.as_ref().unwrap().as_slice(),
                &reference(model, &x),
                abs,
                rel,
            );
        }
    }
}

#[test]
fn every_tile_candidate_matches_reference() {
    for info in usable_adapters("tile candidates") {
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
}

#[test]
fn vec4_tiles_handle_edge_shapes() {
    // dense_vec4.wgsl (dense_vec4_f16.wgsl in f16, on adapters with SHADER_F16) runs
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
    for info in usable_adapters("vec4 tiles") {
        let mut precisions = vec![(Precision::F32, F32)];
        if info.features.contains(wgpu::Features::SHADER_F16) {
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
}

#[test]
fn vec4_tiles_refuse_other_shapes() {
    for info in usable_adapters("vec4 tile shapes") {
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
}

#[test]
fn f16_matches_its_reference_on_cpu() {
    let s = session(
        &Placement::Cpu,
        SessionOptions::default().precision(Precision::F16),
    )
    .unwrap();
    check(&s, F16, "cpu f16");
}

#[test]
fn f16_matches_its_reference_on_every_adapter_that_has_it() {
    let mut checked = 0;
    for info in usable_adapters("f16") {
        let place = Placement::Adapter(info.index);
        let result = session(&place, SessionOptions::default().precision(Precision::F16));
        if info.features.contains(wgpu::Features::SHADER_F16) {
            check(&result.unwrap(), F16, &format!("{info} f16"));
            // SAFETY: this test is what vouches for the kernels' own bounds checks.
            let trusted = unsafe {
                SessionOptions::default()
                    .precision(Precision::F16)
                    .trusted_kernels()
            };
            check(
                &session(&place, trusted).unwrap(),
                F16,
                &format!("{info} f16 trusted"),
            );
            checked += 1;
        } else {
            match result {
                Err(Error::PrecisionUnsupported {
                    precision, missing, ..
                }) => {
                    assert_eq!((precision, missing), ("f16", "SHADER_F16"));
                }
                Err(e) => panic!("{info}: expected PrecisionUnsupported, got {e}"),
                Ok(_) => panic!("{info}: F16 accepted without SHADER_F16"),
            }
        }
    }
    if common::gpu_required() {
        assert!(checked > 0, "no adapter with SHADER_F16 to check F16 on");
    }
}

/// Whether the adapter lists what `Precision::F16CoopMatrix` needs.
fn has_coop(info: &wgpu_ensemble::AdapterInfo) -> bool {
    let features = wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    info.features.contains(features)
        && info.cooperative_matrix.iter().any(|c| {
            (c.m_size, c.n_size, c.k_size) == (c.m_size, c.m_size, c.m_size)
                && matches!(c.m_size, 8 | 16)
                && c.ab_type == wgpu::CooperativeScalarType::F16
                && c.cr_type == wgpu::CooperativeScalarType::F32
        })
}

/// Says why nothing was checked, and fails then where `WGPU_ENSEMBLE_REQUIRE_COOP=1`
/// (set where the machine is known to have cooperative matrices: CI's newer lavapipe,
/// a GPU), so that the kernel cannot go unchecked there.
fn require_coop(checked: usize) {
    if checked == 0 {
        eprintln!("skipped: no adapter lists a cooperative matrix with f16 operands and an f32 accumulator");
        assert!(
            std::env::var("WGPU_ENSEMBLE_REQUIRE_COOP").map_or(true, |v| v != "1"),
            "WGPU_ENSEMBLE_REQUIRE_COOP=1 but no adapter has cooperative matrices"
        );
    }
}

#[test]
fn f16_coop_matrix_matches_the_f16_reference_where_the_adapter_has_it() {
    let mut checked = 0;
    for info in usable_adapters("f16-coop") {
        let place = Placement::Adapter(info.index);
        let result = session(
            &place,
            SessionOptions::default().precision(Precision::F16CoopMatrix),
        );
        if has_coop(&info) {
            // Batches over 16 rows run on the cooperative-matrix kernel.
            check(&result.unwrap(), F16, &format!("{info} f16-coop"));
            // SAFETY: this test is what vouches for the kernels' own bounds checks.
            let trusted = unsafe {
                SessionOptions::default()
                    .precision(Precision::F16CoopMatrix)
                    .trusted_kernels()
            };
            check(
                &session(&place, trusted).unwrap(),
                F16,
                &format!("{info} f16-coop trusted"),
            );
            for shape in CoopShape::CANDIDATES {
                let options = SessionOptions::default()
                    .precision(Precision::F16CoopMatrix)
                    .coop_shape(shape);
                match session(&place, options.clone()) {
                    Ok(s) => check(&s, F16, &format!("{info} f16-coop {shape:?}")),
                    Err(Error::TileUnsupported { .. }) => {
                        eprintln!("{info}: {shape:?} exceeds its limits, not checked");
                        continue;
                    }
                    Err(e) => panic!("{info} {shape:?}: {e}"),
                }
                // SAFETY: this test is what vouches for the kernels' own bounds checks.
                let trusted = unsafe { options.trusted_kernels() };
                check(
                    &session(&place, trusted).unwrap(),
                    F16,
                    &format!("{info} f16-coop {shape:?} trusted"),
                );
            }
            checked += 1;
        } else {
            match result {
                Err(Error::PrecisionUnsupported { precision, .. }) => {
                    assert_eq!(precision, "f16-coop");
                    eprintln!(
                        "{info}: no cooperative matrices, F16CoopMatrix refused as it should"
                    );
                }
                Err(e) => panic!("{info}: expected PrecisionUnsupported, got {e}"),
                Ok(_) => panic!("{info}: F16CoopMatrix accepted without cooperative matrices"),
            }
        }
    }
    require_coop(checked);
}

#[test]
fn f16_coop_matrix_handles_edge_shapes() {
    // Widths below, at and past one matrix side (8 or 16) and one staged slice, rows
    // past one workgroup tile, every activation; inputs that are and are not a
    // multiple of 4 (the kernel reads four at a time where rows start on a vector).
    // The default shape, and blocks of 1 × 3 and 3 × 1 matrices with odd slice
    // depths (no candidate has them: the kernel's guarded accumulators for 1 and 3),
    // and one that loads slices ahead with a partial last vector per thread (x: 3
    // matrices × 1 block of rows, slices one matrix deep: 1.5 vectors per thread with
    // 8 × 8 matrices and subgroups of 8, as with 16 × 16 and 32).
    let shapes = [
        CoopShape::DEFAULT,
        CoopShape {
            bx: 1,
            by: 2,
            tmc: 1,
            tnc: 3,
            bk: 1,
            prefetch: false,
        },
        CoopShape {
            bx: 2,
            by: 1,
            tmc: 3,
            tnc: 1,
            bk: 3,
            prefetch: false,
        },
        CoopShape {
            bx: 4,
            by: 1,
            tmc: 3,
            tnc: 1,
            bk: 1,
            prefetch: true,
        },
    ];
    let models = [
        Model::random(&[1, 1], &[Identity], 11).unwrap(),
        Model::random(&[7, 13, 1], &[Relu, Sigmoid], 12).unwrap(),
        Model::random(&[65, 33, 16, 40], &[Tanh, Gelu, Softmax], 13).unwrap(),
        Model::random(&[64, 4, 132, 12], &[Relu, Identity, Tanh], 14).unwrap(),
    ];
    let mut checked = 0;
    for info in usable_adapters("f16-coop edge shapes") {
        if !has_coop(&info) {
            continue;
        }
        for (model, shape) in models
            .iter()
            .flat_map(|m| shapes.iter().map(move |s| (m, *s)))
        {
            let width = model.in_features();
            let graph = Graph::builder(width)
                .member("m", model.clone(), Placement::Adapter(info.index))
                .build()
                .unwrap();
            let options = SessionOptions::default()
                .precision(Precision::F16CoopMatrix)
                .coop_shape(shape);
            let s = Session::with_options(graph, options).unwrap();
            for batch in [17, 33, 257] {
                let x = input(batch, width, batch as u64 + 7);
                let run = s
                    .run(&x, &RunOptions::default().member_outputs(true))
                    .unwrap();
                assert_close_tol(
                    &format!("{info} f16-coop {shape:?} {width}-wide batch {batch}"),
                    run.members[0].output.as_ref().unwrap().as_slice(),
                    &reference_forward_f16(model, &x),
                    F16.1,
                    F16.2,
                );
            }
        }
        checked += 1;
    }
    require_coop(checked);
}

#[test]
fn f16_coop_matrix_on_the_cpu_rounds_like_f16() {
    let s = session(
        &Placement::Cpu,
        SessionOptions::default().precision(Precision::F16CoopMatrix),
    )
    .unwrap();
    check(&s, F16, "cpu f16-coop");
}

#[test]
fn f16_stays_near_the_exact_reference() {
    // Rounding weights and inputs to f16 moves these outputs by about 1e-3.
    let s = session(
        &Placement::Cpu,
        SessionOptions::default().precision(Precision::F16),
    )
    .unwrap();
    let x = input(64, 33, 5);
    let run = s
        .run(&x, &RunOptions::default().member_outputs(true))
        .unwrap();
    for (m, model) in run.members.iter().zip(members()) {
        common::assert_close_tol(
            &format!("f16 vs exact: {}", m.name),
            m.output.as_ref().unwrap().as_slice(),
            &reference_forward(&model, &x),
            1e-2,
            1e-2,
        );
    }
}

#[test]
fn autotune_picks_a_tile_and_keeps_it_in_its_cache_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tiles.toml");
    for info in usable_adapters("autotune") {
        let place = Placement::Adapter(info.index);
        let options = SessionOptions::default()
            .autotune(64)
            .autotune_cache(&cache);
        let s = session(&place, options.clone()).unwrap();
        check(&s, F32, &format!("{info} autotuned"));
        let text = std::fs::read_to_string(&cache).unwrap();
        assert!(
            text.contains("[[entry]]") && text.contains(&info.name),
            "{text}"
        );
        // Layers whose input width is not a multiple of 4 (33, 65, 70 here) have their
        // own entries, and no vec4 tile: they cannot run dense_vec4.wgsl.
        let file: toml::Value = toml::from_str(&text).unwrap();
        let entries = file["entry"].as_array().unwrap();
        let aligned = |e: &toml::Value| e.get("aligned").and_then(|v| v.as_bool());
        assert!(entries.iter().any(|e| aligned(e) == Some(false)), "{text}");
        assert!(entries.iter().any(|e| aligned(e) == Some(true)), "{text}");
        for e in entries.iter().filter(|e| aligned(e) == Some(false)) {
            assert_eq!(e["config"]["vec4"].as_bool(), Some(false), "{text}");
        }
        // A second session finds every shape in the cache and leaves the file as it is.
        drop(session(&place, options).unwrap());
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), text);
    }
}

/// The autotune times a stack's layers with the stack's member count (a stack gives
/// the device more workgroups, which can favour other tiles) and keeps those choices
/// apart from a lone member's of the same shape; the stacked members still match.
#[test]
fn autotune_times_a_stack_with_its_members() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tiles.toml");
    // Three members of one shape and one of another on the adapter's first device,
    // and one more of the first shape alone on a second device of the adapter (on one
    // device it would join the stack); layer shape classes ([300, 36]: outputs 512, inputs 64; [5, 300]: 16, 512) no
    // other test tunes, so their keys cannot come from the process's cache, which
    // the file also holds.
    let shape: (&[usize], &[wgpu_ensemble::Activation]) = (&[36, 300, 5], &[Relu, Identity]);
    let models: Vec<Model> = (0..5)
        .map(|i| {
            let (widths, acts) = if i == 3 {
                (&[36, 5][..], &[Tanh][..])
            } else {
                shape
            };
            Model::random(widths, acts, 700 + i).unwrap()
        })
        .collect();
    for info in usable_adapters("stack autotune") {
        let mut g = Graph::builder(36);
        for (i, m) in models.iter().enumerate() {
            let place = match i {
                4 => Placement::Queue {
                    adapter: info.index,
                    slot: 1,
                },
                _ => Placement::Adapter(info.index),
            };
            g = g.member(format!("m{i}"), m.clone(), place);
        }
        let options = SessionOptions::default()
            .autotune(40)
            .autotune_cache(&cache);
        let s = Session::with_options(g.build().unwrap(), options).unwrap();
        for batch in [3, 40] {
            let x = input(batch, 36, batch as u64);
            let run = s
                .run(&x, &RunOptions::default().member_outputs(true))
                .unwrap();
            for (m, model) in run.members.iter().zip(&models) {
                assert_close_tol(
                    &format!("{info} autotuned stack: {} batch {batch}", m.name),
                    m.output.as_ref().unwrap().as_slice(),
                    &reference_forward(model, &x),
                    ABS,
                    REL,
                );
            }
        }
        let text = std::fs::read_to_string(&cache).unwrap();
        let file: toml::Value = toml::from_str(&text).unwrap();
        // The file holds the process's whole cache: this adapter's entries.
        let adapter = format!("{:?} {}", info.backend, info.name);
        let members = |outputs: i64, inputs: i64| -> Vec<i64> {
            let mut found: Vec<i64> = file["entry"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["adapter"].as_str() == Some(adapter.as_str()))
                .filter(|e| e["rows"].as_integer() == Some(64))
                .filter(|e| e["outputs"].as_integer() == Some(outputs))
                .filter(|e| e["inputs"].as_integer() == Some(inputs))
                .map(|e| e["members"].as_integer().unwrap())
                .collect();
            found.sort();
            found
        };
        // Both layers (at rows bucket 64): the stack of three (4) and the lone one (1).
        assert_eq!(members(512, 64), [1, 4], "{text}");
        assert_eq!(members(16, 512), [1, 4], "{text}");
    }
}

#[test]
fn coop_autotune_picks_a_shape_and_keeps_it_in_its_cache_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tiles.toml");
    let mut checked = 0;
    for info in usable_adapters("f16-coop autotune") {
        if !has_coop(&info) {
            continue;
        }
        let place = Placement::Adapter(info.index);
        let options = SessionOptions::default()
            .precision(Precision::F16CoopMatrix)
            .autotune(64)
            .autotune_cache(&cache);
        let s = session(&place, options.clone()).unwrap();
        check(&s, F16, &format!("{info} f16-coop autotuned"));
        let text = std::fs::read_to_string(&cache).unwrap();
        assert!(
            text.contains("[[coop]]") && text.contains("f16-coop") && text.contains(&info.name),
            "{text}"
        );
        drop(session(&place, options).unwrap());
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), text);
        checked += 1;
    }
    require_coop(checked);
}

#[test]
fn auto_placement_uses_only_devices_that_run_the_precision() {
    // Mesa's GL adapter has no SHADER_F16 and no adapter here may have cooperative
    // matrices: `Auto` must pass over them (down to the CPU) instead of failing.
    let infos = wgpu_ensemble::adapters();
    for precision in [Precision::F16, Precision::F16CoopMatrix] {
        let s = session(
            &Placement::Auto,
            SessionOptions::default().precision(precision),
        )
        .unwrap_or_else(|e| panic!("Auto with {precision:?}: {e}"));
        for device in s.devices() {
            if let wgpu_ensemble::ExecutionDevice::Adapter { index, .. } = device {
                let info = &infos[*index];
                let ok = match precision {
                    Precision::F16 => info.features.contains(wgpu::Features::SHADER_F16),
                    _ => has_coop(info),
                };
                assert!(ok, "Auto put a {precision:?} member on {info}");
            }
        }
        check(&s, F16, &format!("auto {precision:?}"));
    }
}

/// An autotune cache file edited to hold shapes the kernels cannot run (more than 8
/// accumulators per thread, more than 4 matrices per block): the session times the
/// candidates again instead of running them, and the file gets valid entries.
#[test]
fn autotune_retimes_cached_entries_the_device_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    for info in usable_adapters("autotune cache tampering") {
        let place = Placement::Adapter(info.index);
        let mut precisions = vec![(Precision::F32, F32)];
        if has_coop(&info) {
            precisions.push((Precision::F16CoopMatrix, F16));
        }
        for (precision, reference) in precisions {
            let first = dir
                .path()
                .join(format!("{}-{:?}-a.toml", info.index, precision));
            let second = dir
                .path()
                .join(format!("{}-{:?}-b.toml", info.index, precision));
            // Rows bucket 32 here; no other test tunes at 32 or 128 rows, so the
            // process's in-memory cache holds neither.
            let options = |rows: usize, file: &std::path::Path| {
                SessionOptions::default()
                    .precision(precision)
                    .autotune(rows)
                    .autotune_cache(file)
            };
            drop(session(&place, options(20, &first)).unwrap());
            let text = std::fs::read_to_string(&first).unwrap();
            let mut edited = text.replace("rows = 32", "rows = 128");
            for field in ["tm", "tmc"] {
                let value = if field == "tm" { 9 } else { 8 };
                edited = edited
                    .lines()
                    .map(|l| {
                        if l.starts_with(&format!("{field} = ")) {
                            format!("{field} = {value}")
                        } else {
                            l.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            assert!(edited.contains("rows = 128"), "{edited}");
            assert!(
                edited.contains("tm = 9") || edited.contains("tmc = 8"),
                "{edited}"
            );
            std::fs::write(&second, &edited).unwrap();
            let s = session(&place, options(100, &second))
                .unwrap_or_else(|e| panic!("{info} {precision:?}: {e}"));
            check(&s, reference, &format!("{info} {precision:?} re-tuned"));
            let rewritten = std::fs::read_to_string(&second).unwrap();
            assert!(
                !rewritten.contains("tm = 9") && !rewritten.contains("tmc = 8"),
                "{rewritten}"
            );
        }
    }
}

/// Members of one shape run stacked: one dispatch per layer for all of them, each
/// member's weights, biases and activations at its own place in shared buffers. Three
/// stacks (inputs that are a multiple of 4 throughout; a hidden layer 9 wide; a
/// hidden softmax) around a lone member of another shape, every member with weights
/// of its own, in every precision the adapter runs, checked and trusted, at batches
/// for the small-batch and the tiled kernels: a member reading another's weights,
/// biases or inputs, or writing over another's outputs, is caught.
#[test]
fn stacked_members_match_their_references_in_every_precision() {
    let shapes: [(&[usize], &[wgpu_ensemble::Activation], usize); 4] = [
        (&[32, 24, 8], &[Relu, Softmax], 3),
        (&[32, 8], &[Identity], 1),
        (&[32, 9, 8], &[Tanh, Identity], 2),
        (&[32, 12, 8], &[Softmax, Sigmoid], 2),
    ];
    let mut models = Vec::new();
    for (widths, acts, copies) in shapes {
        for _ in 0..copies {
            let seed = 500 + models.len() as u64;
            models.push(Model::random(widths, acts, seed).unwrap());
        }
    }
    let mut precisions = 0;
    for info in usable_adapters("stacked members") {
        let place = Placement::Adapter(info.index);
        let mut runs = vec![(Precision::F32, F32)];
        if info.features.contains(wgpu::Features::SHADER_F16) {
            runs.push((Precision::F16, F16));
        }
        if has_coop(&info) {
            runs.push((Precision::F16CoopMatrix, F16));
        }
        for (precision, (reference, abs, rel)) in runs {
            let options = SessionOptions::default().precision(precision);
            // SAFETY: this test is what vouches for the kernels' own bounds checks.
            let trusted = unsafe { options.clone().trusted_kernels() };
            for (options, how) in [(options, "checked"), (trusted, "trusted")] {
                let mut g = Graph::builder(32);
                for (i, m) in models.iter().enumerate() {
                    g = g.member(format!("m{i}"), m.clone(), place.clone());
                }
                let session = Session::with_options(g.build().unwrap(), options).unwrap();
                for batch in [1, 16, 17, 70] {
                    let x = input(batch, 32, 900 + batch as u64);
                    let run = session
                        .run(&x, &RunOptions::default().member_outputs(true))
                        .unwrap();
                    for (m, model) in run.members.iter().zip(&models) {
                        assert_close_tol(
                            &format!(
                                "{info} {} {how}: {} batch {batch}",
                                precision.name(),
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
            precisions += 1;
        }
    }
    if common::gpu_required() {
        assert!(precisions > 0, "no adapter to check stacked members on");
    }
}

/// `Precision::F16` and `F16CoopMatrix` round each layer's input to f16 in every
/// kernel: 2049 is not an f16 (it rounds to 2048), so `2049 - 2048` is 0 there and 1 in
/// f32, far outside any tolerance. One layer 8 wide (the kernels' four-value loads;
/// the pair in the first and the last two values of a row) and 3 wide (single
/// values); two layers, whose hidden layer makes the 2049 (an f32 bias of 1 on an
/// f16-exact 2048), so that a later layer's input is checked too. At batches for the
/// small-batch kernel (1) and the tiled or cooperative-matrix one (20); in f16 also
/// with a prefetching tile.
#[test]
fn f16_rounds_every_layer_input() {
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
    let mut checked = 0;
    for info in usable_adapters("f16 rounding") {
        let mut runs = Vec::new();
        if info.features.contains(wgpu::Features::SHADER_F16) {
            let f16 = SessionOptions::default().precision(Precision::F16);
            runs.push(("f16", f16.clone()));
            runs.push(("f16 prefetch", f16.tile(prefetch)));
        }
        if has_coop(&info) {
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
            checked += 1;
        }
    }
    if common::gpu_required() {
        assert!(
            checked > 0,
            "no adapter with SHADER_F16 to check the rounding on"
        );
    }
}

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
#[test]
fn f16_inputs_round_to_nearest_even_in_every_kernel() {
    use wgpu_ensemble::{Dense, Tensor};
    let values = rounding_values();
    let scalar = TileConfig::CANDIDATES
        .into_iter()
        .find(|t| !t.vec4 && !t.prefetch)
        .unwrap();
    let prefetch = TileConfig::CANDIDATES
        .into_iter()
        .find(|t| t.prefetch)
        .unwrap();
    let f16 = SessionOptions::default().precision(Precision::F16);
    let mut places = vec![(
        "cpu".to_string(),
        Placement::Cpu,
        vec![("f16", f16.clone())],
    )];
    for info in usable_adapters("f16 rounding of every value") {
        let mut runs = Vec::new();
        if info.features.contains(wgpu::Features::SHADER_F16) {
            runs.push(("f16", f16.clone()));
            runs.push(("f16 scalar tile", f16.clone().tile(scalar)));
            runs.push(("f16 prefetch", f16.clone().tile(prefetch)));
        }
        if has_coop(&info) {
            let coop = SessionOptions::default().precision(Precision::F16CoopMatrix);
            runs.push(("f16-coop", coop));
        }
        if !runs.is_empty() {
            places.push((info.to_string(), Placement::Adapter(info.index), runs));
        }
    }
    if common::gpu_required() {
        assert!(
            places.len() > 1,
            "no adapter with SHADER_F16 to check the rounding on"
        );
    }
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
        for (label, place, runs) in &places {
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
}

/// In the small-batch f16 kernel an input past f16's range rounds to infinity, as on
/// the CPU (round_f16, through which every f16 kernel rounds inputs, maps it there): `[70000, 3]` times `[1, 0]` is infinity, times `[0, 1]` NaN
/// (0 × ∞), in f16 on the CPU and on every adapter with SHADER_F16.
#[test]
fn f16_overflow_is_infinity_in_the_small_kernel() {
    use wgpu_ensemble::{Dense, Tensor};
    let weight = Tensor::matrix(2, 4, vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]).unwrap();
    let model = Model::new(vec![Dense::new(weight, vec![0.0, 0.0], Identity).unwrap()]).unwrap();
    let mut places = vec![("cpu".to_string(), Placement::Cpu)];
    for info in usable_adapters("f16 overflow") {
        if info.features.contains(wgpu::Features::SHADER_F16) {
            places.push((info.to_string(), Placement::Adapter(info.index)));
        }
    }
    for (label, place) in places {
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
}

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
#[test]
fn long_layers_are_right_or_refused() {
    for info in usable_adapters("long inputs") {
        let mut precisions = vec![(Precision::F32, F32)];
        if info.features.contains(wgpu::Features::SHADER_F16) {
            precisions.push((Precision::F16, F16));
        }
        if has_coop(&info) {
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
                assert!(info.name.contains("llvmpipe"), "{info}: refused");
                assert_eq!((member.as_str(), layer, inputs), ("m", 0, width));
                assert!(limit < width, "{limit}");
            }
            Err(e) => panic!("{info}: {e}"),
            Ok(session) => {
                assert!(!info.name.contains("llvmpipe"), "{info}: not refused");
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
}

/// `Placement::Auto` does not put a layer longer than llvmpipe computes correctly on
/// it: where every usable adapter is llvmpipe (a machine without a GPU) the member
/// runs on the CPU, with the right result.
#[test]
fn auto_keeps_long_layers_off_llvmpipe() {
    let adapters = usable_adapters("auto and long layers");
    if adapters.is_empty() || !adapters.iter().all(|a| a.name.contains("llvmpipe")) {
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

/// `round_f16` (the function every f16 kernel rounds x through), compiled by each
/// adapter's driver, against `half` on 7.3 million inputs: every f32 exponent from
/// 2^-37 to 2^18 (f16's range and well past both ends), both signs, all 2^14 low
/// significand bits (those rounding drops, ties among them) under four high
/// patterns, and the special values. The kernels' tests go through a few hundred
/// values; this is the driver's arithmetic on all the bit patterns that matter.
#[test]
fn round_f16_compiled_by_every_driver_matches_half() {
    use wgpu::util::DeviceExt;
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders/dense_small_f16.wgsl"),
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
    let infos = usable_adapters("round_f16 on the driver");
    // The crate's backends, in its order, so that an adapter's index is the crate's.
    let backends =
        wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12 | wgpu::Backends::GL;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    for info in infos {
        let adapter = &adapters[info.index];
        assert_eq!(adapter.get_info().name, info.name, "adapter order");
        let (device, queue) =
            pollster::block_on(adapter.request_device(&Default::default())).unwrap();
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
}
