//! The register-tiled kernel under every tile configuration the autotune may pick,
//! the small-batch kernel, `Precision::F16` against its own reference, and the
//! autotune with its cache file.

mod common;

use common::{
    assert_close_tol, input, reference_forward, reference_forward_f16, usable_adapters, ABS, REL,
};

/// F32 kernels against the exact reference.
const F32: (Reference, f64, f64) = (reference_forward, ABS, REL);
/// F16 kernels against the reference that rounds weights and layer inputs to f16 the
/// same way. A hidden activation within f32 rounding of an f16 rounding boundary may
/// round the other way (one f16 ulp, 2^-11 relative), which moves the next layer's
/// outputs by up to ~1e-4: the documented tolerance of `Precision::F16` is abs 1e-4
/// or rel 1e-3 against this reference.
const F16: (Reference, f64, f64) = (reference_forward_f16, 1e-4, 1e-3);
use wgpu_ensemble::{
    wgpu, Activation::*, Error, Graph, Model, Placement, Precision, RunOptions, Session,
    SessionOptions, TileConfig,
};

fn members() -> Vec<Model> {
    vec![
        Model::random(&[33, 65, 7], &[Relu, Softmax], 1).unwrap(),
        Model::random(&[33, 130, 70, 7], &[Gelu, Tanh, Identity], 2).unwrap(),
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
        // A second session finds every shape in the cache and leaves the file as it is.
        drop(session(&place, options).unwrap());
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), text);
    }
}
