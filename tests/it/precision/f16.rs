//! `Precision::F16` against its own reference and near the exact one, and stacked
//! members in every precision.

use super::*;

#[test]
fn f16_matches_its_reference_on_cpu() {
    let s = session(
        &Placement::Cpu,
        SessionOptions::default().precision(Precision::F16),
    )
    .unwrap();
    check(&s, F16, "cpu f16");
}

fn f16_on_adapter(info: &AdapterInfo) {
    common::require_an_adapter_with("SHADER_F16 to check F16 on", quirks::shader_f16);
    let place = Placement::Adapter(info.index);
    let result = session(&place, SessionOptions::default().precision(Precision::F16));
    if quirks::shader_f16(info) {
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

placement_tests!(adapters f16_on_adapter;
    f16_matches_its_reference_on_vulkan: Vulkan,
    f16_matches_its_reference_on_gl: Gl,
);

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

/// Members of one shape run stacked: one dispatch per layer for all of them, each
/// member's weights, biases and activations at its own place in shared buffers. Three
/// stacks (inputs that are a multiple of 4 throughout; a hidden layer 9 wide; a
/// hidden softmax) around a lone member of another shape, every member with weights
/// of its own, in every precision the adapter runs, checked and trusted, at batches
/// for the small-batch and the tiled kernels: a member reading another's weights,
/// biases or inputs, or writing over another's outputs, is caught.
fn stacked_members(info: &AdapterInfo) {
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
    let place = Placement::Adapter(info.index);
    let mut runs = vec![(Precision::F32, F32)];
    if quirks::shader_f16(info) {
        runs.push((Precision::F16, F16));
    }
    if quirks::coop_matrix(info) {
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
    }
}

placement_tests!(adapters stacked_members;
    stacked_members_match_their_references_in_every_precision_vulkan: Vulkan,
    stacked_members_match_their_references_in_every_precision_gl: Gl,
);
