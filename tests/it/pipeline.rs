//! The between-graph pipeline: same answers as the session, results in input order,
//! nothing lost or duplicated under faults, back-pressure, and close.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_close, assert_close_tol, input, reference_forward};
use wgpu_ensemble::{
    Activation::*, Aggregate, Error, Fault, FaultPlan, Graph, MemberStatus, Model, Pipeline,
    PipelineOptions, Placement, QuorumPolicy, RunOptions, Session, SessionOptions, Tensor,
};

const WEIGHTS: [f32; 3] = [0.2, 0.5, 0.3];

fn models() -> Vec<Model> {
    vec![
        Model::random(&[5, 11, 3], &[Gelu, Softmax], 81).unwrap(),
        Model::random(&[5, 3], &[Softmax], 82).unwrap(),
        Model::random(&[5, 8, 8, 3], &[Relu, Tanh, Identity], 83).unwrap(),
    ]
}

fn graph(places: &[Placement; 3]) -> Graph {
    let mut g = Graph::builder(5).aggregate(Aggregate::WeightedMean(WEIGHTS.to_vec()));
    for (i, (m, p)) in models().into_iter().zip(places).enumerate() {
        g = g.member(format!("m{i}"), m, p.clone());
    }
    g.build().unwrap()
}

fn cpu() -> [Placement; 3] {
    [Placement::Cpu, Placement::Cpu, Placement::Cpu]
}

fn reference(x: &Tensor, present: &[usize]) -> Vec<f64> {
    common::reference_present(&models(), &WEIGHTS, x, present)
}

#[test]
fn same_answers_as_the_session() {
    let mut layouts = vec![("cpu".to_string(), cpu())];
    if let Some(a) = common::usable_adapters("pipeline vs session").first() {
        layouts.push((
            a.to_string(),
            [
                Placement::Cpu,
                Placement::Adapter(a.index),
                Placement::Queue {
                    adapter: a.index,
                    slot: 1,
                },
            ],
        ));
    }
    for (label, places) in layouts {
        let session = Session::new(graph(&places)).unwrap();
        let pipeline = Pipeline::new(
            graph(&places),
            PipelineOptions::default().member_outputs(true),
        )
        .unwrap();
        let inputs: Vec<Tensor> = (0..12)
            .map(|i| input(1 + i * 7 % 20, 5, i as u64))
            .collect();
        for (i, x) in inputs.iter().enumerate() {
            assert_eq!(pipeline.send(x).unwrap(), i as u64);
        }
        for (i, x) in inputs.iter().enumerate() {
            let out = pipeline.recv().expect("a result per input");
            assert_eq!(out.id, i as u64);
            let got = out.aggregate.unwrap();
            let want = session.run(x, &RunOptions::default()).unwrap();
            let want64: Vec<f64> = want
                .aggregate
                .as_slice()
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            assert_close_tol(
                &format!("{label}: input {i} vs session"),
                got.as_slice(),
                &want64,
                1e-6,
                1e-5,
            );
            assert_close(
                &format!("{label}: input {i} vs reference"),
                got.as_slice(),
                &reference(x, &[0, 1, 2]),
            );
            for (m, model) in out.members.iter().zip(models()) {
                assert!(matches!(m.status, MemberStatus::Finished));
                assert_close(
                    &format!("{label}: input {i} {}", m.name),
                    m.output.as_ref().unwrap().as_slice(),
                    &reference_forward(&model, x),
                );
            }
        }
        assert!(pipeline.finish().is_empty());
    }
}

/// Members that share one device run on their own workers (`worker_per_member`), each
/// waiting for its own results on the shared device: a stream of inputs sent from one
/// thread and received on another gives the right answer for every input. (One worker's wait can fire
/// another's map callbacks: a worker that only looked for its callback after its own
/// wait sometimes found none, "a result buffer was not mapped after the wait", on
/// lavapipe within 40 inputs of E1.)
#[test]
fn members_sharing_a_device_stream_many_inputs() {
    let Some(a) = common::usable_adapters("pipeline on one device")
        .first()
        .cloned()
    else {
        return;
    };
    let models: Vec<Model> = (0..4)
        .map(|i| Model::random(&[64, 128, 128, 8], &[Relu, Relu, Softmax], 90 + i).unwrap())
        .collect();
    let mut g = Graph::builder(64);
    for (i, m) in models.iter().enumerate() {
        g = g.member(format!("m{i}"), m.clone(), Placement::Adapter(a.index));
    }
    let options = PipelineOptions::default()
        .capacity(4)
        .worker_per_member(true);
    let pipeline = Pipeline::new(g.build().unwrap(), options).unwrap();
    let inputs: Vec<Tensor> = (0..120).map(|i| input(1 + i % 3, 64, i as u64)).collect();
    // Every result is received before any is checked: a receiver that stopped early
    // would leave the sender blocked on a full queue.
    let outputs = std::thread::scope(|scope| {
        scope.spawn(|| {
            for x in &inputs {
                if pipeline.send(x).is_err() {
                    break;
                }
            }
        });
        (0..inputs.len())
            .map_while(|_| pipeline.recv())
            .collect::<Vec<_>>()
    });
    assert_eq!(outputs.len(), inputs.len());
    for (i, (out, x)) in outputs.into_iter().zip(&inputs).enumerate() {
        assert_eq!(out.id, i as u64);
        let got = out
            .aggregate
            .unwrap_or_else(|e| panic!("{a}: input {i}: {e}"));
        assert_close(
            &format!("{a}: input {i}"),
            got.as_slice(),
            &common::reference_present(&models, &[1.0; 4], x, &[0, 1, 2, 3]),
        );
    }
}

#[test]
fn a_thousand_inputs_while_one_member_fails_half_way() {
    let plan = FaultPlan::new().on_runs("m1", 500..1000, Fault::Fail);
    let options = PipelineOptions::default()
        .capacity(8)
        .quorum(QuorumPolicy::Quorum(2))
        .session(SessionOptions::default().faults(plan));
    let pipeline = Arc::new(Pipeline::new(graph(&cpu()), options).unwrap());
    let sender = {
        let pipeline = Arc::clone(&pipeline);
        std::thread::spawn(move || {
            for i in 0..1001u64 {
                assert_eq!(pipeline.send(&input(2, 5, i)).unwrap(), i);
            }
            pipeline.close();
        })
    };
    let mut next = 0u64;
    while let Some(out) = pipeline.recv() {
        assert_eq!(out.id, next, "results out of order, lost or duplicated");
        let failed: Vec<bool> = out
            .members
            .iter()
            .map(|m| matches!(m.status, MemberStatus::Failed(_)))
            .collect();
        let in_failure = (500..1000).contains(&out.id);
        assert_eq!(failed, [false, in_failure, false], "input {}", out.id);
        if in_failure {
            assert!(matches!(
                &out.members[1].status,
                MemberStatus::Failed(Error::InjectedFault { run, .. }) if *run == out.id
            ));
        }
        if out.id % 50 == 0 || out.id == 1000 || out.id == 499 || out.id == 500 {
            let present: &[usize] = if in_failure { &[0, 2] } else { &[0, 1, 2] };
            assert_close(
                &format!("input {}", out.id),
                out.aggregate.as_ref().unwrap().as_slice(),
                &reference(&input(2, 5, out.id), present),
            );
        }
        next += 1;
    }
    assert_eq!(next, 1001, "every input yields exactly one result");
    sender.join().unwrap();
    assert!(matches!(
        pipeline.send(&input(1, 5, 0)),
        Err(Error::PipelineClosed)
    ));
}

#[test]
fn a_late_member_under_quorum_then_normal_inputs() {
    let plan = FaultPlan::new().on_run("m2", 1, Fault::Sleep(Duration::from_millis(400)));
    // A worker per member: with the CPU's members sharing one worker, m2's sleep would
    // make its siblings late too (pipeline_workers checks that).
    let options = PipelineOptions::default()
        .worker_per_member(true)
        .timeout(Duration::from_millis(150))
        .quorum(QuorumPolicy::Quorum(2))
        .session(SessionOptions::default().faults(plan));
    let pipeline = Pipeline::new(graph(&cpu()), options).unwrap();
    let xs: Vec<Tensor> = (0..6).map(|i| input(3, 5, 40 + i)).collect();
    for x in &xs {
        pipeline.send(x).unwrap();
    }
    for (i, x) in xs.iter().enumerate() {
        let out = pipeline.recv().unwrap();
        assert_eq!(out.id, i as u64);
        if i == 1 {
            assert!(
                matches!(out.members[2].status, MemberStatus::Late),
                "{:?}",
                out.members[2].status
            );
            assert_close(
                "input 1 without m2",
                out.aggregate.as_ref().unwrap().as_slice(),
                &reference(x, &[0, 1]),
            );
        } else if let Ok(aggregate) = &out.aggregate {
            // Inputs queued behind the sleeping member may also be late for it (their
            // deadlines run from `send`); whatever finished is aggregated correctly.
            let present = common::finished(&out.members);
            assert!(present.len() >= 2);
            assert_close(
                &format!("input {i}"),
                aggregate.as_slice(),
                &reference(x, &present),
            );
        }
    }
    // Well after the straggler: every member answers again.
    std::thread::sleep(Duration::from_millis(500));
    let x = input(4, 5, 99);
    pipeline.send(&x).unwrap();
    let out = pipeline.recv().unwrap();
    assert!(out
        .members
        .iter()
        .all(|m| matches!(m.status, MemberStatus::Finished)));
    assert_close(
        "after the straggler",
        out.aggregate.unwrap().as_slice(),
        &reference(&x, &[0, 1, 2]),
    );
}

#[test]
fn a_panicking_member_then_normal_inputs() {
    let plan = FaultPlan::new().on_run("m0", 0, Fault::Panic);
    let options = PipelineOptions::default().session(SessionOptions::default().faults(plan));
    let pipeline = Pipeline::new(graph(&cpu()), options).unwrap();
    let (a, b) = (input(2, 5, 1), input(2, 5, 2));
    pipeline.send(&a).unwrap();
    pipeline.send(&b).unwrap();
    let first = pipeline.recv().unwrap();
    // RequireAll: the panic fails the input, and the status says so.
    assert!(matches!(first.aggregate, Err(Error::WorkerFailed { .. })));
    assert!(matches!(
        first.members[0].status,
        MemberStatus::Failed(Error::WorkerFailed { .. })
    ));
    let second = pipeline.recv().unwrap();
    assert_close(
        "after the panic",
        second.aggregate.unwrap().as_slice(),
        &reference(&b, &[0, 1, 2]),
    );
}

#[test]
fn bounded_queues_push_back_and_close_drains() {
    let options = PipelineOptions::default().capacity(1);
    let pipeline = Arc::new(Pipeline::new(graph(&cpu()), options).unwrap());
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (pipeline, sent) = (Arc::clone(&pipeline), Arc::clone(&sent));
        std::thread::spawn(move || {
            for i in 0..40u64 {
                pipeline.send(&input(1, 5, i)).unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // With nobody receiving, at most a handful of inputs fit in the queues.
    let stuck = sent.load(Ordering::SeqCst);
    assert!(
        stuck < 10,
        "{stuck} inputs went in with queues of length 1 and no reader"
    );
    let mut ids = Vec::new();
    while ids.len() < 40 {
        ids.push(pipeline.recv().unwrap().id);
    }
    sender.join().unwrap();
    assert_eq!(ids, (0..40).collect::<Vec<_>>());
    for i in 0..3 {
        pipeline.send(&input(1, 5, i)).unwrap();
    }
    pipeline.close();
    let rest: Vec<u64> = std::iter::from_fn(|| pipeline.recv())
        .map(|o| o.id)
        .collect();
    assert_eq!(rest, [40, 41, 42]);
}

#[test]
fn bad_inputs_and_quorums_are_errors() {
    let pipeline = Pipeline::new(graph(&cpu()), PipelineOptions::default()).unwrap();
    assert!(matches!(
        pipeline.send(&input(2, 4, 0)),
        Err(Error::FeatureWidth {
            expected: 5,
            got: 4
        })
    ));
    assert!(matches!(
        pipeline.send(&Tensor::zeros(0, 5)),
        Err(Error::EmptyBatch)
    ));
    let bad = PipelineOptions::default().quorum(QuorumPolicy::Quorum(4));
    assert!(matches!(
        Pipeline::new(graph(&cpu()), bad),
        Err(Error::InvalidQuorum {
            quorum: 4,
            members: 3
        })
    ));
}

/// Results received on `rayon`'s threads, every one of them waiting at once (a parallel
/// loop of receivers), while the members run on the host CPU, whose layers are jobs of
/// that same pool: every result arrives, right.
#[test]
fn results_received_on_every_one_of_rayons_threads() {
    use rayon::prelude::*;
    let pipeline = Arc::new(Pipeline::new(graph(&cpu()), PipelineOptions::default()).unwrap());
    let n = 4 * rayon::current_num_threads() as u64;
    let receiver = Arc::clone(&pipeline);
    let received = common::bounded(move || {
        let mut got: Vec<(u64, Vec<f32>)> = (0..n)
            .into_par_iter()
            .filter_map(|_| receiver.recv())
            .map(|o| {
                (
                    o.id,
                    o.aggregate
                        .map(|t| t.as_slice().to_vec())
                        .unwrap_or_default(),
                )
            })
            .collect();
        got.sort_by_key(|(id, _)| *id);
        got
    });
    // The receivers wait first, holding the pool's threads.
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..n {
        pipeline.send(&input(2, 5, 700 + i)).unwrap();
    }
    let got = received.wait("receiving on rayon's threads", Duration::from_secs(60));
    assert_eq!(
        got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>()
    );
    for (id, y) in &got {
        assert_close(
            &format!("input {id}"),
            y,
            &reference(&input(2, 5, 700 + id), &[0, 1, 2]),
        );
    }
}
