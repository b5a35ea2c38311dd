//! Whole ensembles of 3 to 5 members with different architectures, for every
//! aggregate, on the CPU, on every usable adapter, and spread by `Placement::Auto`.

use crate::common;

use common::{
    assert_close, input, placement_tests, reference_forward, reference_mean, reference_vote,
};
use std::time::Duration;

use wgpu_ensemble::{
    Activation::*, AdapterInfo, Aggregate, Graph, Model, Placement, RunOptions, Session,
    SessionOptions,
};

const IN: usize = 12;
const OUT: usize = 6;

fn members(count: usize) -> Vec<(String, Model)> {
    let archs: [(&[usize], &[wgpu_ensemble::Activation]); 5] = [
        (&[IN, 20, OUT], &[Relu, Softmax]),
        (&[IN, 9, 17, OUT], &[Tanh, Gelu, Softmax]),
        (&[IN, OUT], &[Softmax]),
        (&[IN, 33, OUT], &[Sigmoid, Identity]),
        (&[IN, 5, 5, 5, OUT], &[Gelu, Relu, Tanh, Softmax]),
    ];
    archs
        .iter()
        .take(count)
        .enumerate()
        .map(|(i, (w, a))| {
            (
                format!("m{i}"),
                Model::random(w, a, 1000 + i as u64).unwrap(),
            )
        })
        .collect()
}

fn aggregates(k: usize) -> Vec<(Aggregate, Vec<f64>, bool)> {
    let w: Vec<f32> = (0..k).map(|i| 0.5 + i as f32 * 0.75).collect();
    let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    vec![
        (Aggregate::Mean, vec![1.0; k], false),
        (Aggregate::WeightedMean(w.clone()), w64.clone(), false),
        (Aggregate::Vote { weights: None }, vec![1.0; k], true),
        (Aggregate::Vote { weights: Some(w) }, w64, true),
    ]
}

/// Every aggregate over 3, 4 and 5 members placed by `place(member index)`.
fn check(place: &dyn Fn(usize) -> Placement, label: &str) {
    for k in 3..=5 {
        check_members(&members(k), place, label);
    }
}

/// Members of repeated shapes, each with weights of its own: a device runs the
/// consecutive ones of one shape as a stack (one dispatch per layer and one for
/// their aggregate), here three stacks (one of five, past the first vector of the
/// kernel's weights; one with no softmax at the end) and a lone member.
fn stacked_members() -> Vec<(String, Model)> {
    let a: (&[usize], &[wgpu_ensemble::Activation]) = (&[IN, 20, OUT], &[Relu, Softmax]);
    let b: (&[usize], &[wgpu_ensemble::Activation]) = (&[IN, 9, OUT], &[Tanh, Identity]);
    let c: (&[usize], &[wgpu_ensemble::Activation]) = (&[IN, OUT], &[Softmax]);
    [a, a, a, a, a, c, b, b, a, a]
        .iter()
        .enumerate()
        .map(|(i, (w, act))| {
            (
                format!("m{i}"),
                Model::random(w, act, 2000 + i as u64).unwrap(),
            )
        })
        .collect()
}

/// Every aggregate over `ms`, placed by `place(member index)`, at batches for the
/// small-batch kernel (1) and the tiled one (19, and 257 over several workgroups of
/// rows).
fn check_members(ms: &[(String, Model)], place: &dyn Fn(usize) -> Placement, label: &str) {
    let k = ms.len();
    for (agg, weights, vote) in aggregates(k) {
        let name = agg.name();
        let mut g = Graph::builder(IN).aggregate(agg);
        for (i, (n, m)) in ms.iter().enumerate() {
            g = g.member(n.clone(), m.clone(), place(i));
        }
        let session = Session::new(g.build().unwrap()).unwrap();
        for batch in [1, 19, 257] {
            let x = input(batch, IN, (k * 1000 + batch) as u64);
            let run = session
                .run(&x, &RunOptions::default().member_outputs(true))
                .unwrap();
            let refs: Vec<Vec<f64>> = ms.iter().map(|(_, m)| reference_forward(m, &x)).collect();
            for (report, want) in run.members.iter().zip(&refs) {
                assert_close(
                    &format!(
                        "{label}: {k} members {name} batch {batch}: member {}",
                        report.name
                    ),
                    report.output.as_ref().unwrap().as_slice(),
                    want,
                );
            }
            let want = if vote {
                reference_vote(&refs, &weights, OUT)
            } else {
                reference_mean(&refs, &weights)
            };
            assert_eq!(run.aggregate.shape(), &[batch, OUT]);
            assert_close(
                &format!("{label}: {k} members {name} batch {batch}: aggregate"),
                run.aggregate.as_slice(),
                &want,
            );
            // Without member outputs the device-side aggregate alone comes back.
            let lean = session.run(&x, &RunOptions::default()).unwrap();
            assert!(lean.members.iter().all(|m| m.output.is_none()));
            assert_close(
                &format!("{label}: {k} members {name} batch {batch}: aggregate alone"),
                lean.aggregate.as_slice(),
                &want,
            );
        }
    }
}

fn ensembles(place: Placement, label: &str) {
    check(&|_| place.clone(), label);
}

placement_tests!(ensembles;
    ensembles_on_cpu: Cpu,
    ensembles_on_vulkan: Vulkan,
    ensembles_on_gl: Gl,
);

fn stacked(place: Placement, label: &str) {
    check_members(&stacked_members(), &|_| place.clone(), label);
}

placement_tests!(stacked;
    stacked_members_on_cpu: Cpu,
    stacked_members_on_vulkan: Vulkan,
    stacked_members_on_gl: Gl,
);

/// A stack adds its members up exactly as separate dispatches would, in order: three
/// members of one shape (one stack) against the same three in a session whose buffer
/// cap (1600 bytes) holds one member's weights (960 bytes in the first layer) but not
/// two, so each is a stack of its own. The aggregate and the member outputs must be
/// the same to the bit, for members ending in softmax (the fused softmax-aggregate)
/// and not, for a weighted mean and a weighted vote, in the small-batch and the tiled
/// kernels.
fn stacks_add_up(place: Placement, label: &str) {
    let w = vec![0.5, 0.3, 0.2];
    for last in [Softmax, Identity] {
        let models: Vec<Model> = (0..3)
            .map(|i| Model::random(&[IN, 20, OUT], &[Relu, last], 3000 + i).unwrap())
            .collect();
        let aggregates = [
            Aggregate::WeightedMean(w.clone()),
            Aggregate::Vote {
                weights: Some(w.clone()),
            },
        ];
        for agg in aggregates {
            let name = format!("{} ending in {last:?}", agg.name());
            let session = |options: SessionOptions| {
                let mut g = Graph::builder(IN).aggregate(agg.clone());
                for (i, m) in models.iter().enumerate() {
                    g = g.member(format!("m{i}"), m.clone(), place.clone());
                }
                Session::with_options(g.build().unwrap(), options).unwrap()
            };
            let s1 = session(SessionOptions::default());
            let s2 = session(SessionOptions::default().max_buffer_bytes(1600));
            for batch in [1, 19] {
                let x = input(batch, IN, 77 + batch as u64);
                let options = RunOptions::default().member_outputs(true);
                let (r1, r2) = (s1.run(&x, &options).unwrap(), s2.run(&x, &options).unwrap());
                let bits = |t: &wgpu_ensemble::Tensor| -> Vec<u32> {
                    t.as_slice().iter().map(|v| v.to_bits()).collect()
                };
                assert_eq!(
                    bits(&r1.aggregate),
                    bits(&r2.aggregate),
                    "{label} {name} batch {batch}: aggregate"
                );
                for i in 0..3 {
                    assert_eq!(
                        bits(r1.members[i].output.as_ref().unwrap()),
                        bits(r2.members[i].output.as_ref().unwrap()),
                        "{label} {name} batch {batch}: member {i}"
                    );
                }
            }
        }
    }
}

placement_tests!(stacks_add_up;
    stacks_add_up_exactly_like_separate_members_vulkan: Vulkan,
    stacks_add_up_exactly_like_separate_members_gl: Gl,
);

#[test]
fn ensembles_spread_by_auto_and_mixed_with_the_host() {
    // Auto spreads over the usable adapters (or the CPU when there is none); every
    // third member is pinned to the CPU so host and device partial sums mix.
    common::usable_adapters("ensembles_spread_by_auto");
    check(
        &|i| {
            if i % 3 == 2 {
                Placement::Cpu
            } else {
                Placement::Auto
            }
        },
        "auto+cpu",
    );
}

fn vote_ties(place: Placement, _label: &str) {
    // Two members that always output the same constant vector with a tie between
    // classes 1 and 3: every vote goes to class 1.
    // Identity outputs go through aggregate.wgsl, softmax outputs through the fused
    // softmax_aggregate.wgsl: both must break the tie the same way.
    let tie = |act| {
        let w = wgpu_ensemble::Tensor::matrix(4, 2, vec![0.0; 8]).unwrap();
        Model::from_parts(vec![(w, vec![0.0, 2.0, 1.0, 2.0], act)]).unwrap()
    };
    let graph = Graph::builder(2)
        .member("a", tie(Identity), place.clone())
        .member("b", tie(Softmax), place.clone())
        .aggregate(Aggregate::Vote { weights: None })
        .build()
        .unwrap();
    let session = Session::new(graph).unwrap();
    let run = session
        .run(&input(3, 2, 1), &RunOptions::default())
        .unwrap();
    for r in 0..3 {
        assert_eq!(
            run.aggregate.row(r).unwrap(),
            &[0.0, 1.0, 0.0, 0.0],
            "{place:?}"
        );
    }
    assert_eq!(run.aggregate.argmax_rows().unwrap(), vec![1, 1, 1]);
}

placement_tests!(vote_ties;
    vote_shares_sum_to_one_and_ties_go_to_the_lowest_class_cpu: Cpu,
    vote_shares_sum_to_one_and_ties_go_to_the_lowest_class_vulkan: Vulkan,
    vote_shares_sum_to_one_and_ties_go_to_the_lowest_class_gl: Gl,
);

/// A spin shorter than any run (falls back to the blocking wait) and one longer than
/// every run here (the spin sees the queue empty), at batches of the small-batch and
/// the tiled kernels, on every adapter, against the reference.
fn spin_wait(info: &AdapterInfo) {
    let members = members(3);
    for spin in [Duration::from_nanos(1), Duration::from_secs(10)] {
        let mut g = Graph::builder(members[0].1.in_features());
        for (name, m) in &members {
            g = g.member(name.clone(), m.clone(), Placement::Adapter(info.index));
        }
        let options = SessionOptions::default().spin_wait(spin);
        let s = Session::with_options(g.build().unwrap(), options).unwrap();
        for batch in [1, 40] {
            let x = input(batch, members[0].1.in_features(), 5);
            let run = s.run(&x, &RunOptions::default()).unwrap();
            let outputs: Vec<Vec<f64>> = members
                .iter()
                .map(|(_, m)| reference_forward(m, &x))
                .collect();
            assert_close(
                &format!("{info} spin {spin:?} batch {batch}"),
                run.aggregate.as_slice(),
                &reference_mean(&outputs, &[1.0; 3]),
            );
        }
    }
}

placement_tests!(adapters spin_wait;
    spinning_for_the_result_gives_the_same_answers_vulkan: Vulkan,
    spinning_for_the_result_gives_the_same_answers_gl: Gl,
);

/// Outputs wider than 65535 columns, the most iterations llvmpipe runs of one shader
/// loop: the aggregate kernels stride over the columns, so every column counts. Two
/// members of one shape without a softmax at the end (aggregate.wgsl), one with
/// (softmax_aggregate.wgsl); the vote's winner lies past column 65535.
fn wide_aggregates(place: Placement, label: &str) {
    let (inp, wide) = (3, 70_001);
    let mut ms: Vec<Model> = [Identity, Identity, Softmax]
        .iter()
        .enumerate()
        .map(|(i, &act)| Model::random(&[inp, wide], &[act], 90 + i as u64).unwrap())
        .collect();
    // Each member's largest output by far (no near-tie for the vote to trip on) at a
    // column of its own, the first member's (the vote's winner) at 69_999.
    for (m, column) in ms.iter_mut().zip([69_999, 66_000, 12]) {
        let layer = &m.layers()[0];
        let mut bias = layer.bias().to_vec();
        bias[column] = 50.0;
        let part = (layer.weight().clone(), bias, layer.activation());
        *m = Model::from_parts(vec![part]).unwrap();
    }
    for (agg, vote) in [
        (Aggregate::Mean, false),
        (
            Aggregate::Vote {
                weights: Some(vec![3.0, 1.0, 1.0]),
            },
            true,
        ),
    ] {
        let name = agg.name();
        let mut g = Graph::builder(inp).aggregate(agg);
        for (i, m) in ms.iter().enumerate() {
            g = g.member(format!("m{i}"), m.clone(), place.clone());
        }
        let session = Session::new(g.build().unwrap()).unwrap();
        for batch in [1, 17] {
            let x = input(batch, inp, batch as u64);
            let refs: Vec<Vec<f64>> = ms.iter().map(|m| reference_forward(m, &x)).collect();
            let want = if vote {
                reference_vote(&refs, &[3.0, 1.0, 1.0], wide)
            } else {
                reference_mean(&refs, &[1.0; 3])
            };
            let run = session.run(&x, &RunOptions::default()).unwrap();
            assert_close(
                &format!("{label}: {name} of {wide} columns, batch {batch}"),
                run.aggregate.as_slice(),
                &want,
            );
            if vote {
                // Sanity of the test itself: the winner is past the loop limit.
                assert!(want[69_999] >= 0.6, "{label}: {}", want[69_999]);
            }
        }
    }
}

placement_tests!(wide_aggregates;
    aggregates_cover_outputs_wider_than_a_loop_of_llvmpipe_cpu: Cpu,
    aggregates_cover_outputs_wider_than_a_loop_of_llvmpipe_vulkan: Vulkan,
    aggregates_cover_outputs_wider_than_a_loop_of_llvmpipe_gl: Gl,
);
