//! Every kernel and activation against the f64 reference, on the CPU and on every
//! usable adapter, over shapes that are not multiples of the tile size.

use crate::common;

use common::{assert_close, input, placement_tests, reference_forward};
use wgpu_ensemble::{
    Activation, Graph, Model, Placement, RunOptions, Session, SessionOptions, Tensor,
};

/// (in, out) of the single dense layer.
const SHAPES: [(usize, usize); 6] = [(1, 1), (7, 13), (13, 7), (33, 65), (65, 33), (16, 16)];
const BATCHES: [usize; 5] = [1, 2, 7, 33, 257];

/// One session per shape whose members are one layer each, one per activation; every
/// member's own output is compared with the reference at every batch size.
fn dense_every_activation(place: Placement, label: &str) {
    for (s, &(inp, out)) in SHAPES.iter().enumerate() {
        let mut g = Graph::builder(inp);
        let mut models = Vec::new();
        for (a, act) in Activation::ALL.into_iter().enumerate() {
            let model = Model::random(&[inp, out], &[act], (s * 10 + a) as u64).unwrap();
            g = g.member(act.name(), model.clone(), place.clone());
            models.push(model);
        }
        let session = Session::new(g.build().unwrap()).unwrap();
        for &batch in &BATCHES {
            let x = input(batch, inp, batch as u64);
            let run = session
                .run(&x, &RunOptions::default().member_outputs(true))
                .unwrap();
            for (m, model) in run.members.iter().zip(&models) {
                let got = m.output.as_ref().expect("member outputs were asked for");
                assert_eq!(got.shape(), &[batch, out]);
                assert_close(
                    &format!("{label}: {} {inp}x{out} batch {batch}", m.name),
                    got.as_slice(),
                    &reference_forward(model, &x),
                );
            }
        }
    }
}

placement_tests!(dense_every_activation;
    dense_and_activations_match_reference_on_cpu: Cpu,
    dense_and_activations_match_reference_on_vulkan: Vulkan,
    dense_and_activations_match_reference_on_gl: Gl,
);

/// Softmax with logits in the thousands (exp would overflow without the max shift),
/// and tanh / sigmoid / gelu far into saturation.
fn large_magnitudes(place: Placement, label: &str) {
    let (inp, out, batch) = (9, 11, 5);
    let x = input(batch, inp, 3);
    let mut g = Graph::builder(inp);
    let mut models = Vec::new();
    for act in Activation::ALL {
        let base = Model::random(&[inp, out], &[act], 77).unwrap();
        let layer = &base.layers()[0];
        let w: Vec<f32> = layer
            .weight()
            .as_slice()
            .iter()
            .map(|v| v * 400.0)
            .collect();
        let model = Model::from_parts(vec![(
            Tensor::matrix(out, inp, w).unwrap(),
            layer.bias().to_vec(),
            act,
        )])
        .unwrap();
        g = g.member(act.name(), model.clone(), place.clone());
        models.push(model);
    }
    let session = Session::new(g.build().unwrap()).unwrap();
    let run = session
        .run(&x, &RunOptions::default().member_outputs(true))
        .unwrap();
    for (m, model) in run.members.iter().zip(&models) {
        let got = m.output.as_ref().unwrap().as_slice();
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{label}: {} gave a non-finite value",
            m.name
        );
        assert_close(
            &format!("{label}: {} with large logits", m.name),
            got,
            &reference_forward(model, &x),
        );
    }
}

placement_tests!(large_magnitudes;
    activations_are_stable_for_large_inputs_cpu: Cpu,
    activations_are_stable_for_large_inputs_vulkan: Vulkan,
    activations_are_stable_for_large_inputs_gl: Gl,
);

/// A cap on buffer sizes forces a 257-row batch through several chunks per device.
fn chunked_batches(place: Placement, label: &str) {
    let model = Model::random(&[33, 65, 17], &[Activation::Gelu, Activation::Softmax], 5).unwrap();
    let graph = Graph::builder(33)
        .member("m", model.clone(), place)
        .build()
        .unwrap();
    // 65 floats per row x 4 bytes: 40 rows per chunk.
    let options = SessionOptions::default().max_buffer_bytes(65 * 4 * 40);
    let session = Session::with_options(graph, options).unwrap();
    for batch in [1, 40, 41, 257] {
        let x = input(batch, 33, 11);
        let run = session
            .run(&x, &RunOptions::default().member_outputs(true))
            .unwrap();
        let want = reference_forward(&model, &x);
        assert_close(
            &format!("{label}: chunked batch {batch}"),
            run.aggregate.as_slice(),
            &want,
        );
        assert_close(
            &format!("{label}: chunked member batch {batch}"),
            run.members[0].output.as_ref().unwrap().as_slice(),
            &want,
        );
    }
}

placement_tests!(chunked_batches;
    batches_larger_than_a_buffer_are_chunked_cpu: Cpu,
    batches_larger_than_a_buffer_are_chunked_vulkan: Vulkan,
    batches_larger_than_a_buffer_are_chunked_gl: Gl,
);

/// Members of one shape under a buffer cap that binds: a device stacks no more of them
/// than the cap allows (weights of 64 × 8 values: five to a 10 256-byte buffer, so
/// stacks of five and three) and splits batches into chunks of 40 rows (the 64-value
/// input rows); every member and the aggregate still match at every batch.
fn capped_stacks(place: Placement, label: &str) {
    let models: Vec<Model> = (0..8)
        .map(|i| {
            Model::random(
                &[64, 8, 4],
                &[Activation::Tanh, Activation::Softmax],
                60 + i,
            )
            .unwrap()
        })
        .collect();
    let mut g = Graph::builder(64);
    for (i, m) in models.iter().enumerate() {
        g = g.member(format!("m{i}"), m.clone(), place.clone());
    }
    let options = SessionOptions::default().max_buffer_bytes(10256);
    let session = Session::with_options(g.build().unwrap(), options).unwrap();
    for batch in [1, 16, 40, 41, 257] {
        let x = input(batch, 64, 12 + batch as u64);
        let run = session
            .run(&x, &RunOptions::default().member_outputs(true))
            .unwrap();
        let refs: Vec<Vec<f64>> = models.iter().map(|m| reference_forward(m, &x)).collect();
        for (m, want) in run.members.iter().zip(&refs) {
            assert_close(
                &format!("{label}: capped stack {} batch {batch}", m.name),
                m.output.as_ref().unwrap().as_slice(),
                want,
            );
        }
        assert_close(
            &format!("{label}: capped stacks' aggregate batch {batch}"),
            run.aggregate.as_slice(),
            &common::reference_mean(&refs, &[1.0; 8]),
        );
    }
}

placement_tests!(capped_stacks;
    stacks_within_a_buffer_cap_are_chunked_cpu: Cpu,
    stacks_within_a_buffer_cap_are_chunked_vulkan: Vulkan,
    stacks_within_a_buffer_cap_are_chunked_gl: Gl,
);

/// Growing and shrinking batches reuse (and grow) the same buffers correctly.
fn varying_batches(place: Placement, label: &str) {
    let model = Model::random(&[7, 13, 5], &[Activation::Relu, Activation::Identity], 9).unwrap();
    let graph = Graph::builder(7)
        .member("m", model.clone(), place)
        .build()
        .unwrap();
    let session = Session::new(graph).unwrap();
    for (i, batch) in [3usize, 1, 64, 2, 257, 5].into_iter().enumerate() {
        let x = input(batch, 7, 100 + i as u64);
        let run = session.run(&x, &RunOptions::default()).unwrap();
        assert_close(
            &format!("{label}: batch {batch}"),
            run.aggregate.as_slice(),
            &reference_forward(&model, &x),
        );
    }
}

placement_tests!(varying_batches;
    varying_batch_sizes_reuse_buffers_cpu: Cpu,
    varying_batch_sizes_reuse_buffers_vulkan: Vulkan,
    varying_batch_sizes_reuse_buffers_gl: Gl,
);
