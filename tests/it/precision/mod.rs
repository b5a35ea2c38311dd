//! The kernels in every precision: the register-tiled kernel under every tile
//! configuration the autotune may pick, the small-batch kernel, `Precision::F16` and
//! `F16CoopMatrix` against their own reference, f16 rounding, long layers, and the
//! autotune with its cache file. The members, sessions and checks they share are here.

mod autotune;
mod coop;
mod f16;
mod long_layers;
mod rounding;
mod tiles;

use crate::common;

use common::{
    assert_close_tol, input, placement_tests, quirks, reference_forward, reference_forward_f16,
    usable_adapters, ABS, REL,
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
    wgpu, Activation::*, AdapterInfo, CoopShape, Error, Graph, Model, Placement, Precision,
    RunOptions, Session, SessionOptions, TileConfig,
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
