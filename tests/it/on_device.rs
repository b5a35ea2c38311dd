//! The uncertainty statistics and the stacking blender's first layer computed on the
//! devices, at their edges: a blender's columns that need more than one stack's buffer,
//! sessions that never ask for the statistics, blenders wide enough to meet llvmpipe's
//! loop limit, members of weight 0, several stacks per device in chunks with skips and
//! a device loss, every output at once, a pipeline with a worker per member, f16.

use crate::common;

use std::sync::Arc;

use common::{
    assert_close_tol, input, placement_tests, reference_forward, reference_forward64,
    reference_measures, reference_stack, ReferenceMeasures,
};
use wgpu_ensemble::{
    Activation::*, AdapterInfo, Aggregate, Error, Graph, Model, Placement, RunOptions, Session,
    SessionOptions, Tensor,
};

const IN: usize = 6;
const CLASSES: usize = 4;

/// Four tiny members of one shape and a blender with 512 hidden units: each member's
/// columns of its first layer are 8 KiB, the four together 32 KiB. Under
/// `max_buffer_bytes(16 KiB)` the stack planner counts the blender's columns and plans
/// two stacks of two, so the session builds and answers the reference.
fn a_stack_whose_blender_columns_outgrow_one_gpu_stack_still_builds(place: Placement, label: &str) {
    let members: Vec<Model> = (0..4)
        .map(|i| Model::random(&[IN, CLASSES], &[Softmax], 700 + i).unwrap())
        .collect();
    let blender = Model::random(&[4 * CLASSES, 512, CLASSES], &[Tanh, Softmax], 710).unwrap();
    let mut g = Graph::builder(IN).aggregate(Aggregate::Stack {
        blender: Arc::new(blender.clone()),
    });
    for (i, m) in members.iter().enumerate() {
        g = g.member(format!("m{i}"), m.clone(), place.clone());
    }
    let options = SessionOptions::default().max_buffer_bytes(16 * 1024);
    let session = Session::with_options(g.build().unwrap(), options)
        .unwrap_or_else(|e| panic!("{label}: the session is refused: {e}"));
    let x = input(5, IN, 711);
    let out = session.run(&x, &RunOptions::default()).unwrap();
    assert_eq!(out.stacked, Some(true), "{label}");
    let want = reference_stack(&members, &blender, &x, CLASSES);
    assert_close_tol(label, out.aggregate.as_slice(), &want, 2e-5, 1e-4);
}

placement_tests!(a_stack_whose_blender_columns_outgrow_one_gpu_stack_still_builds;
    a_stack_whose_blender_columns_outgrow_one_gpu_stack_still_builds_cpu: Cpu,
    a_stack_whose_blender_columns_outgrow_one_gpu_stack_still_builds_vulkan: Vulkan,
    a_stack_whose_blender_columns_outgrow_one_gpu_stack_still_builds_gl: Gl);

/// A member with 100 outputs under a mean, `max_buffer_bytes(1024)`: its weights
/// (`[2, 4]`, `[100, 2]`) and a row of its outputs (400 bytes) fit, two rows per chunk.
/// A row of the uncertainty statistics (3 × 100 + 1 values, 1204 bytes) bounds only
/// the runs that ask for them, so a session that never does builds and runs.
fn a_session_that_never_asks_for_uncertainty_is_not_limited_by_its_statistics(
    place: Placement,
    label: &str,
) {
    let model = Model::random(&[4, 2, 100], &[Relu, Softmax], 720).unwrap();
    let g = Graph::builder(4).member("m0", model.clone(), place.clone());
    let options = SessionOptions::default().max_buffer_bytes(1024);
    let session = Session::with_options(g.build().unwrap(), options)
        .unwrap_or_else(|e| panic!("{label}: the session is refused: {e}"));
    let x = input(5, 4, 721);
    let out = session.run(&x, &RunOptions::default()).unwrap();
    assert_close_tol(
        label,
        out.aggregate.as_slice(),
        &reference_forward(&model, &x),
        2e-5,
        1e-4,
    );
}

placement_tests!(a_session_that_never_asks_for_uncertainty_is_not_limited_by_its_statistics;
    a_session_that_never_asks_for_uncertainty_is_not_limited_by_its_statistics_cpu: Cpu,
    a_session_that_never_asks_for_uncertainty_is_not_limited_by_its_statistics_vulkan: Vulkan,
    a_session_that_never_asks_for_uncertainty_is_not_limited_by_its_statistics_gl: Gl);

/// Two members with 30 000 and then 70 000 outputs each and a blender with 2 hidden
/// units: llvmpipe (Mesa 22.3, this machine's lavapipe and GL) ends a shader invocation
/// after 65 535 loop iterations, silently, so blend.wgsl's threads stride over the
/// columns (a loop of `outputs / 64` per member) and the sums stay right.
fn a_wide_blender_first_layer_is_right_or_refused(place: Placement, label: &str) {
    for wide in [30_000, 70_000] {
        let label = &format!("{label}: {wide} outputs");
        let members: Vec<Model> = (0..2)
            .map(|i| Model::random(&[IN, wide], &[Sigmoid], 730 + i).unwrap())
            .collect();
        let blender = Model::random(&[2 * wide, 2, wide], &[Tanh, Identity], 732).unwrap();
        let x = input(2, IN, 733);
        // The members themselves are right on the device (their mean is).
        let mut mean = Graph::builder(IN);
        for (i, m) in members.iter().enumerate() {
            mean = mean.member(format!("m{i}"), m.clone(), place.clone());
        }
        let out = Session::new(mean.build().unwrap())
            .unwrap()
            .run(&x, &RunOptions::default())
            .unwrap();
        let outs: Vec<Vec<f64>> = members.iter().map(|m| reference_forward(m, &x)).collect();
        assert_close_tol(
            &format!("{label}: the mean"),
            out.aggregate.as_slice(),
            &common::reference_mean(&outs, &[1.0, 1.0]),
            1e-4,
            1e-4,
        );
        let mut g = Graph::builder(IN).aggregate(Aggregate::Stack {
            blender: Arc::new(blender.clone()),
        });
        for (i, m) in members.iter().enumerate() {
            g = g.member(format!("m{i}"), m.clone(), place.clone());
        }
        let session = Session::new(g.build().unwrap()).unwrap_or_else(|e| panic!("{label}: {e}"));
        let out = session.run(&x, &RunOptions::default()).unwrap();
        assert_eq!(out.stacked, Some(true), "{label}");
        let want = reference_stack(&members, &blender, &x, wide);
        assert_close_tol(label, out.aggregate.as_slice(), &want, 1e-3, 1e-3);
    }
}

placement_tests!(a_wide_blender_first_layer_is_right_or_refused;
    a_wide_blender_first_layer_is_right_or_refused_cpu: Cpu,
    a_wide_blender_first_layer_is_right_or_refused_vulkan: Vulkan,
    a_wide_blender_first_layer_is_right_or_refused_gl: Gl);

/// A member of weight 0 whose output is NaN (its logits overflow to +inf, softmax of
/// infinities) beside a member of weight 1 of the same shape (one GPU stack): members
/// of weight 0 are left out of the statistics on every placement (moments.wgsl adds
/// nothing of theirs, not even `0 · NaN`), so the measures are those of the weighted
/// member alone.
fn a_member_of_weight_zero_does_not_change_the_measures(place: Placement, label: &str) {
    let rows = 3;
    let good = Model::random(&[IN, CLASSES], &[Softmax], 740).unwrap();
    let huge = Model::from_parts(vec![(
        Tensor::matrix(CLASSES, IN, vec![3.0e38; CLASSES * IN]).unwrap(),
        vec![0.0; CLASSES],
        Softmax,
    )])
    .unwrap();
    let g = Graph::builder(IN)
        .aggregate(Aggregate::WeightedMean(vec![0.0, 1.0]))
        .member("zero", huge, place.clone())
        .member("one", good.clone(), place.clone());
    let session = Session::new(g.build().unwrap()).unwrap();
    let x = Tensor::matrix(rows, IN, vec![1.0; rows * IN]).unwrap();
    let out = session
        .run(&x, &RunOptions::default().uncertainty(true))
        .unwrap();
    let u = out.uncertainty.expect("asked for");
    let y = reference_forward(&good, &x);
    for r in 0..rows {
        let h: f64 = y[r * CLASSES..(r + 1) * CLASSES]
            .iter()
            .filter(|&&v| v > 0.0)
            .map(|&v| -v * v.ln())
            .sum();
        assert!(
            (f64::from(u.entropy[r]) - h).abs() < 1e-4,
            "{label}: row {r}: entropy {} (want H of the weighted member, {h}); {u:?}",
            u.entropy[r]
        );
        assert!(
            (f64::from(u.expected_entropy[r]) - h).abs() < 1e-4,
            "{label}: row {r}: expected entropy {}, want {h}",
            u.expected_entropy[r]
        );
    }
}

placement_tests!(a_member_of_weight_zero_does_not_change_the_measures;
    a_member_of_weight_zero_does_not_change_the_measures_cpu: Cpu,
    a_member_of_weight_zero_does_not_change_the_measures_vulkan: Vulkan,
    a_member_of_weight_zero_does_not_change_the_measures_gl: Gl);

/// Five members in three GPU stacks on one device (shapes A, A, B, A, C), weighted,
/// `max_buffer_bytes(512)` (chunks), a member of the first stack failing under a
/// quorum on run 0 and the device lost (and recreated) on run 1: the measures of the
/// members present through `run` and `run_device` (its aggregate kept on the device)
/// on every run.
fn chunks_stacks_skips_and_device_loss_give_the_measures_of_the_members_present(
    place: Placement,
    label: &str,
) {
    use wgpu_ensemble::{Fault, FaultPlan, QuorumPolicy};
    let models = [
        Model::random(&[IN, 8, CLASSES], &[Relu, Softmax], 760).unwrap(),
        Model::random(&[IN, 8, CLASSES], &[Relu, Softmax], 761).unwrap(),
        Model::random(&[IN, CLASSES], &[Softmax], 762).unwrap(),
        Model::random(&[IN, 8, CLASSES], &[Relu, Softmax], 763).unwrap(),
        Model::random(&[IN, 5, 5, CLASSES], &[Tanh, Gelu, Softmax], 764).unwrap(),
    ];
    let weights = [0.3f32, 0.2, 0.1, 0.25, 0.15];
    let mut g = Graph::builder(IN).aggregate(Aggregate::WeightedMean(weights.to_vec()));
    for (i, m) in models.iter().enumerate() {
        g = g.member(format!("m{i}"), m.clone(), place.clone());
    }
    let plan = FaultPlan::new()
        .on_run("m1", 0, Fault::Fail)
        .on_run("m3", 2, Fault::Fail)
        .on_run("m0", 4, Fault::LoseDevice);
    let session = Session::with_options(
        g.build().unwrap(),
        SessionOptions::default().max_buffer_bytes(512).faults(plan),
    )
    .unwrap();
    let rows = 19;
    let x = input(rows, IN, 765);
    let outs: Vec<Vec<f64>> = models.iter().map(|m| reference_forward(m, &x)).collect();
    let asked = RunOptions::default()
        .uncertainty(true)
        .quorum(QuorumPolicy::Quorum(4));
    let resident = session.upload(&x).unwrap();
    for run in 0..7u64 {
        if run == 4 {
            // The lost device's members all fail: the quorum is not met.
            assert!(session.run(&x, &asked).is_err(), "{label} run {run}");
            continue;
        }
        let failed = match run {
            0 => Some(1),
            2 => Some(3),
            _ => None,
        };
        let (u, status) = if run % 2 == 0 {
            let out = session.run(&x, &asked);
            let out = match out {
                Ok(o) => o,
                Err(e) => panic!("{label} run {run}: {e}"),
            };
            (out.uncertainty, out.members)
        } else {
            let out = match session.run_device(&resident, &asked) {
                Ok(o) => o,
                Err(e) => panic!("{label} run {run}: {e}"),
            };
            (out.uncertainty, out.members)
        };
        let present: Vec<usize> = (0..5)
            .filter(|&i| matches!(status[i].status, wgpu_ensemble::MemberStatus::Finished))
            .collect();
        if let Some(f) = failed {
            assert!(!present.contains(&f), "{label} run {run}");
        }
        let o: Vec<Vec<f64>> = present.iter().map(|&i| outs[i].clone()).collect();
        let w: Vec<f64> = present.iter().map(|&i| f64::from(weights[i])).collect();
        let ReferenceMeasures { summary, variance } = reference_measures(&o, &w, rows, CLASSES);
        let u = u.unwrap_or_else(|| panic!("{label} run {run}: no measures"));
        let what = format!("{label} run {run} (present {present:?})");
        assert_close_tol(&what, u.summary().as_slice(), &summary, 2e-5, 1e-4);
        assert_close_tol(&what, u.variance.as_slice(), &variance, 2e-5, 1e-4);
    }
}

placement_tests!(chunks_stacks_skips_and_device_loss_give_the_measures_of_the_members_present;
    chunks_stacks_skips_and_device_loss_give_the_measures_of_the_members_present_cpu: Cpu,
    chunks_stacks_skips_and_device_loss_give_the_measures_of_the_members_present_vulkan: Vulkan,
    chunks_stacks_skips_and_device_loss_give_the_measures_of_the_members_present_gl: Gl);

/// A stack with every output asked at once on a GPU in chunks: members in two GPU
/// stacks and one on the host, `max_buffer_bytes(1024)`, the members' outputs, the
/// measures and the blender's sums all read back per chunk (in that order in the
/// staging list), through `run` and `run_device`; a member of a GPU stack failing under
/// a quorum on run 0 (the mean of the present, not stacked), then complete runs again.
fn a_stack_with_outputs_measures_and_chunks_at_once(place: Placement, label: &str) {
    use wgpu_ensemble::{Fault, FaultPlan, QuorumPolicy};
    let models = vec![
        Model::random(&[IN, 8, CLASSES], &[Relu, Softmax], 770).unwrap(),
        Model::random(&[IN, 8, CLASSES], &[Relu, Softmax], 771).unwrap(),
        Model::random(&[IN, CLASSES], &[Softmax], 772).unwrap(),
        Model::random(&[IN, 5, CLASSES], &[Tanh, Softmax], 773).unwrap(),
    ];
    let blender = Model::random(&[4 * CLASSES, 9, CLASSES], &[Tanh, Softmax], 774).unwrap();
    let mut g = Graph::builder(IN).aggregate(Aggregate::Stack {
        blender: Arc::new(blender.clone()),
    });
    for (i, m) in models.iter().enumerate() {
        let p = if i == 3 {
            Placement::Cpu
        } else {
            place.clone()
        };
        g = g.member(format!("m{i}"), m.clone(), p);
    }
    let plan = FaultPlan::new().on_run("m1", 0, Fault::Fail);
    let session = Session::with_options(
        g.build().unwrap(),
        SessionOptions::default()
            .max_buffer_bytes(1024)
            .faults(plan),
    )
    .unwrap();
    let rows = 23;
    let x = input(rows, IN, 775);
    let outs: Vec<Vec<f64>> = models.iter().map(|m| reference_forward(m, &x)).collect();
    let stacked = reference_stack(&models, &blender, &x, CLASSES);
    let asked = RunOptions::default()
        .uncertainty(true)
        .member_outputs(true)
        .quorum(QuorumPolicy::Quorum(3));
    let resident = session.upload(&x).unwrap();
    for run in 0..4u64 {
        let what = format!("{label} run {run}");
        let (aggregate, u, members, was_stacked) = if run % 2 == 0 {
            let o = session.run(&x, &asked).unwrap();
            (o.aggregate, o.uncertainty, o.members, o.stacked)
        } else {
            let o = session.run_device(&resident, &asked).unwrap();
            (
                o.aggregate.to_host().unwrap(),
                o.uncertainty,
                o.members,
                o.stacked,
            )
        };
        let present: Vec<usize> = if run == 0 {
            vec![0, 2, 3]
        } else {
            vec![0, 1, 2, 3]
        };
        let o: Vec<Vec<f64>> = present.iter().map(|&i| outs[i].clone()).collect();
        if run == 0 {
            assert_eq!(was_stacked, Some(false), "{what}");
            assert_close_tol(
                &what,
                aggregate.as_slice(),
                &common::reference_mean(&o, &[1.0; 3]),
                2e-5,
                1e-4,
            );
        } else {
            assert_eq!(was_stacked, Some(true), "{what}");
            assert_close_tol(&what, aggregate.as_slice(), &stacked, 2e-5, 1e-4);
        }
        for &i in &present {
            let y = members[i].output.as_ref().expect("asked");
            assert_close_tol(&format!("{what}: m{i}"), y.as_slice(), &outs[i], 2e-5, 1e-4);
        }
        let ReferenceMeasures { summary, variance } =
            reference_measures(&o, &vec![1.0; o.len()], rows, CLASSES);
        let u = u.expect("asked");
        assert_close_tol(&what, u.summary().as_slice(), &summary, 2e-5, 1e-4);
        assert_close_tol(&what, u.variance.as_slice(), &variance, 2e-5, 1e-4);
    }
}

placement_tests!(a_stack_with_outputs_measures_and_chunks_at_once;
    a_stack_with_outputs_measures_and_chunks_at_once_cpu: Cpu,
    a_stack_with_outputs_measures_and_chunks_at_once_vulkan: Vulkan,
    a_stack_with_outputs_measures_and_chunks_at_once_gl: Gl);

/// A `Pipeline` with a worker per member on `place` (members sharing the device, each
/// its own executor and statistics) and a member failing under a quorum; and a stack
/// with the measures under `Precision::F16` (where the adapter has `SHADER_F16`): the
/// measures of the members present, the blender's output from the members' f16
/// outputs.
fn worker_per_member_pipeline_and_f16_stack(place: Placement, label: &str) {
    use wgpu_ensemble::{Fault, FaultPlan, Pipeline, PipelineOptions, Precision, QuorumPolicy};
    let models = [
        Model::random(&[IN, 8, CLASSES], &[Relu, Softmax], 780).unwrap(),
        Model::random(&[IN, 8, CLASSES], &[Relu, Softmax], 781).unwrap(),
        Model::random(&[IN, CLASSES], &[Softmax], 782).unwrap(),
    ];
    let weights = [0.5f32, 0.3, 0.2];
    let mut g = Graph::builder(IN).aggregate(Aggregate::WeightedMean(weights.to_vec()));
    for (i, m) in models.iter().enumerate() {
        g = g.member(format!("m{i}"), m.clone(), place.clone());
    }
    let rows = 7;
    let x = input(rows, IN, 783);
    let outs: Vec<Vec<f64>> = models.iter().map(|m| reference_forward(m, &x)).collect();
    let pipeline = Pipeline::new(
        g.build().unwrap(),
        PipelineOptions::default()
            .uncertainty(true)
            .worker_per_member(true)
            .quorum(QuorumPolicy::Quorum(2))
            .session(SessionOptions::default().faults(FaultPlan::new().on_run(
                "m0",
                1,
                Fault::Fail,
            ))),
    )
    .unwrap();
    for _ in 0..3 {
        pipeline.send(&x).unwrap();
    }
    for id in 0..3 {
        let out = pipeline.recv().unwrap();
        assert!(out.aggregate.is_ok(), "{label} {id}");
        let present: Vec<usize> = if id == 1 { vec![1, 2] } else { vec![0, 1, 2] };
        let o: Vec<Vec<f64>> = present.iter().map(|&i| outs[i].clone()).collect();
        let w: Vec<f64> = present.iter().map(|&i| f64::from(weights[i])).collect();
        let ReferenceMeasures { summary, variance } = reference_measures(&o, &w, rows, CLASSES);
        let u = out.uncertainty.expect("asked");
        let what = format!("{label} pipeline input {id}");
        assert_close_tol(&what, u.summary().as_slice(), &summary, 2e-5, 1e-4);
        assert_close_tol(&what, u.variance.as_slice(), &variance, 2e-5, 1e-4);
    }

    let blender = Model::random(&[3 * CLASSES, 6, CLASSES], &[Tanh, Softmax], 784).unwrap();
    let mut g = Graph::builder(IN).aggregate(Aggregate::Stack {
        blender: Arc::new(blender.clone()),
    });
    for (i, m) in models.iter().enumerate() {
        g = g.member(format!("m{i}"), m.clone(), place.clone());
    }
    let session = match Session::with_options(
        g.build().unwrap(),
        SessionOptions::default().precision(Precision::F16),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{label}: no f16: {e}");
            return;
        }
    };
    let f16: Vec<Vec<f64>> = models
        .iter()
        .map(|m| common::reference_forward_f16(m, &x))
        .collect();
    let mut side = Vec::new();
    for r in 0..rows {
        for y in &f16 {
            side.extend_from_slice(&y[r * CLASSES..(r + 1) * CLASSES]);
        }
    }
    let want = reference_forward64(&blender, &side, rows);
    let out = session
        .run(&x, &RunOptions::default().uncertainty(true))
        .unwrap();
    assert_eq!(out.stacked, Some(true), "{label}");
    assert_close_tol(
        &format!("{label} f16 stack"),
        out.aggregate.as_slice(),
        &want,
        1e-3,
        1e-3,
    );
    let ReferenceMeasures { summary, variance } =
        reference_measures(&f16, &[1.0; 3], rows, CLASSES);
    let u = out.uncertainty.expect("asked");
    assert_close_tol(
        &format!("{label} f16"),
        u.summary().as_slice(),
        &summary,
        1e-3,
        1e-3,
    );
    assert_close_tol(
        &format!("{label} f16"),
        u.variance.as_slice(),
        &variance,
        1e-3,
        1e-3,
    );
}

placement_tests!(worker_per_member_pipeline_and_f16_stack;
    worker_per_member_pipeline_and_f16_stack_cpu: Cpu,
    worker_per_member_pipeline_and_f16_stack_vulkan: Vulkan,
    worker_per_member_pipeline_and_f16_stack_gl: Gl);

/// A blender whose first layer would run blend.wgsl's loops past llvmpipe's limit
/// (8192 units over one member: 73 728 iterations a row) is refused there, naming the
/// member, the units and the limit; elsewhere it builds and answers the reference. The
/// same graph on the CPU answers the reference everywhere.
fn a_blender_too_wide_for_llvmpipe_is_refused_there(adapter: &AdapterInfo) {
    let member = Model::random(&[IN, CLASSES], &[Softmax], 760).unwrap();
    let blender = Model::random(&[CLASSES, 8192, CLASSES], &[Tanh, Softmax], 761).unwrap();
    let graph = |place: Placement| {
        Graph::builder(IN)
            .aggregate(Aggregate::Stack {
                blender: Arc::new(blender.clone()),
            })
            .member("m0", member.clone(), place)
            .build()
            .unwrap()
    };
    let x = input(3, IN, 762);
    let want = reference_stack(std::slice::from_ref(&member), &blender, &x, CLASSES);
    let host = Session::new(graph(Placement::Cpu)).unwrap();
    let out = host.run(&x, &RunOptions::default()).unwrap();
    assert_close_tol("on the CPU", out.aggregate.as_slice(), &want, 1e-4, 1e-4);
    match Session::new(graph(Placement::Adapter(adapter.index))) {
        Err(Error::BlenderBeyondDriver {
            member,
            hidden,
            iterations,
            limit,
            ..
        }) if common::quirks::loop_limited(adapter) => {
            assert_eq!((member.as_str(), hidden), ("m0", 8192));
            assert!(iterations > limit, "{iterations} <= {limit}");
        }
        Err(e) => panic!("{}: {e}", adapter.name),
        Ok(session) => {
            assert!(
                !common::quirks::loop_limited(adapter),
                "{}: built on llvmpipe",
                adapter.name
            );
            let out = session.run(&x, &RunOptions::default()).unwrap();
            assert_close_tol(&adapter.name, out.aggregate.as_slice(), &want, 1e-4, 1e-4);
        }
    }
}

placement_tests!(adapters a_blender_too_wide_for_llvmpipe_is_refused_there;
    a_blender_too_wide_for_llvmpipe_is_refused_there_vulkan: Vulkan,
    a_blender_too_wide_for_llvmpipe_is_refused_there_gl: Gl);
