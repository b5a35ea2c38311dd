//! The pipeline's workers: by default one per device, running the device's members
//! on an input as one job (one submission on a GPU) and answering for all of them;
//! with `PipelineOptions::worker_per_member(true)` one per member, as before.
//! What a shared worker changes is observable: a panic, a lost device or a straggler
//! on one member reaches its device siblings, and only them; the late-member bench
//! keeps a worker per member.

use crate::common;

use std::time::Duration;

use common::{assert_close, input, placement_tests};
use wgpu_ensemble::bench::{run_bench, BenchMode, Workload};
use wgpu_ensemble::{
    Activation::*, Aggregate, Error, ExecutionDevice, Fault, FaultPlan, Graph, MemberStatus, Model,
    Pipeline, PipelineOptions, PipelineOutput, Placement, QuorumPolicy, SessionOptions, Tensor,
};

const WEIGHTS: [f32; 3] = [0.5, 0.3, 0.2];

fn models() -> Vec<Model> {
    vec![
        Model::random(&[6, 12, 4], &[Relu, Softmax], 61).unwrap(),
        Model::random(&[6, 9, 4], &[Tanh, Softmax], 62).unwrap(),
        Model::random(&[6, 10, 4], &[Gelu, Identity], 63).unwrap(),
    ]
}

/// m0 and m1 on `place`, m2 on the CPU (so on a GPU target two devices, on the CPU
/// target one).
fn graph(place: &Placement) -> Graph {
    let places = [place.clone(), place.clone(), Placement::Cpu];
    let mut g = Graph::builder(6).aggregate(Aggregate::WeightedMean(WEIGHTS.to_vec()));
    for (i, (m, p)) in models().into_iter().zip(places).enumerate() {
        g = g.member(format!("m{i}"), m, p);
    }
    g.build().unwrap()
}

/// The workers `graph(place)` gets by default: one per device.
fn shared_workers(place: &Placement) -> Vec<Vec<usize>> {
    match place {
        Placement::Cpu => vec![vec![0, 1, 2]],
        _ => vec![vec![0, 1], vec![2]],
    }
}

fn reference(x: &Tensor, present: &[usize]) -> Vec<f64> {
    common::reference_present(&models(), &WEIGHTS, x, present)
}

fn workers(pipeline: &Pipeline) -> Vec<Vec<usize>> {
    pipeline.workers().map(<[usize]>::to_vec).collect()
}

fn statuses(out: &PipelineOutput) -> Vec<&'static str> {
    out.members
        .iter()
        .map(|m| match m.status {
            MemberStatus::Finished => "finished",
            MemberStatus::Late => "late",
            MemberStatus::Failed(_) => "failed",
            _ => "other",
        })
        .collect()
}

/// Whether members `a` and `b` run on one device in `graph(place)`.
fn siblings(place: &Placement, a: usize, b: usize) -> bool {
    shared_workers(place)
        .iter()
        .any(|w| w.contains(&a) && w.contains(&b))
}

/// The status a member should have on an input where m0's job fails: m0 and its device
/// siblings failed, the others finished.
fn expected_after_m0_fails(place: &Placement, shared: bool) -> Vec<&'static str> {
    (0..3)
        .map(|m| {
            if m == 0 || (shared && siblings(place, 0, m)) {
                "failed"
            } else {
                "finished"
            }
        })
        .collect()
}

/// Checks `out` (input `x`) where every member finished.
fn check_all_finished(out: &PipelineOutput, x: &Tensor, what: &str) {
    assert_eq!(statuses(out), ["finished"; 3], "{what}");
    match &out.aggregate {
        Ok(got) => assert_close(what, got.as_slice(), &reference(x, &[0, 1, 2])),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// One worker per device by default, one per member on request; a panic in m0's job
/// fails m0 and the members that share its worker, and only with the shared worker.
fn a_panic_reaches_exactly_the_members_of_its_worker(place: Placement, label: &str) {
    for per_member in [false, true] {
        let what = format!("{label}, worker_per_member({per_member})");
        let plan = FaultPlan::new().on_run("m0", 0, Fault::Panic);
        let options = PipelineOptions::default()
            .worker_per_member(per_member)
            .quorum(QuorumPolicy::Quorum(1))
            .session(SessionOptions::default().faults(plan));
        let pipeline = Pipeline::new(graph(&place), options).unwrap();
        let want_workers = if per_member {
            vec![vec![0], vec![1], vec![2]]
        } else {
            shared_workers(&place)
        };
        assert_eq!(workers(&pipeline), want_workers, "{what}");
        let (x0, x1) = (input(3, 6, 1), input(5, 6, 2));
        pipeline.send(&x0).unwrap();
        pipeline.send(&x1).unwrap();

        let first = pipeline.recv().expect("a result for input 0");
        let want = expected_after_m0_fails(&place, !per_member);
        assert_eq!(statuses(&first), want, "{what}: input 0");
        for (m, report) in first.members.iter().enumerate() {
            if want[m] == "failed" {
                assert!(
                    matches!(
                        &report.status,
                        MemberStatus::Failed(Error::WorkerFailed { .. })
                    ),
                    "{what}: input 0, member {m}: {:?}",
                    report.status
                );
            }
        }
        let present: Vec<usize> = (0..3).filter(|&m| want[m] == "finished").collect();
        match (&first.aggregate, present.is_empty()) {
            (Ok(got), false) => assert_close(
                &format!("{what}: input 0 without the failed members"),
                got.as_slice(),
                &reference(&x0, &present),
            ),
            (Err(Error::QuorumNotMet { finished: 0, .. }), true) => {}
            (other, _) => panic!("{what}: input 0: {other:?} with members {present:?} left"),
        }
        // The executor lives on: the next input has every member.
        let second = pipeline.recv().expect("a result for input 1");
        check_all_finished(&second, &x1, &format!("{what}: input 1"));
        assert!(pipeline.finish().is_empty());
    }
}

placement_tests!(a_panic_reaches_exactly_the_members_of_its_worker;
    a_panic_reaches_exactly_the_members_of_its_worker_cpu: Cpu,
    a_panic_reaches_exactly_the_members_of_its_worker_vulkan: Vulkan,
    a_panic_reaches_exactly_the_members_of_its_worker_gl: Gl,
);

/// The trade-off of a shared worker: a member that sleeps past the deadline makes its
/// device siblings late with it (they wait in the same job); with a worker per member
/// they finish on time. Members elsewhere finish either way.
fn a_straggler_delays_its_device_siblings(place: Placement, label: &str) {
    let sleep = Duration::from_millis(1500);
    for per_member in [false, true] {
        let what = format!("{label}, worker_per_member({per_member})");
        // Input 0 makes the buffers (its result may be late and is not checked); m0
        // sleeps on input 1.
        let plan = FaultPlan::new().on_run("m0", 1, Fault::Sleep(sleep));
        let options = PipelineOptions::default()
            .worker_per_member(per_member)
            .timeout(Duration::from_millis(500))
            .quorum(QuorumPolicy::Quorum(1))
            .session(SessionOptions::default().faults(plan));
        let pipeline = Pipeline::new(graph(&place), options).unwrap();
        pipeline.send(&input(2, 6, 3)).unwrap();
        pipeline.recv().expect("a result for input 0");

        let x = input(4, 6, 4);
        pipeline.send(&x).unwrap();
        let out = pipeline.recv().expect("a result for input 1");
        let want: Vec<&str> = (0..3)
            .map(|m| {
                if m == 0 || (!per_member && siblings(&place, 0, m)) {
                    "late"
                } else {
                    "finished"
                }
            })
            .collect();
        assert_eq!(statuses(&out), want, "{what}: input 1");
        let present: Vec<usize> = (0..3).filter(|&m| want[m] == "finished").collect();
        match (&out.aggregate, present.is_empty()) {
            (Ok(got), false) => assert_close(
                &format!("{what}: input 1 without the late members"),
                got.as_slice(),
                &reference(&x, &present),
            ),
            (Err(Error::QuorumNotMet { finished: 0, .. }), true) => {}
            (other, _) => panic!("{what}: input 1: {other:?} with members {present:?} left"),
        }
        // Once the sleeper is awake, every member answers again.
        std::thread::sleep(sleep);
        let x = input(3, 6, 5);
        pipeline.send(&x).unwrap();
        let out = pipeline.recv().expect("a result for input 2");
        check_all_finished(&out, &x, &format!("{what}: input 2"));
    }
}

placement_tests!(a_straggler_delays_its_device_siblings;
    a_straggler_delays_its_device_siblings_cpu: Cpu,
    a_straggler_delays_its_device_siblings_vulkan: Vulkan,
);

/// A device lost on m0's input fails m0 and its sibling on that device (one executor,
/// one device) but not the member on the CPU; the next input recreates the device and
/// every member answers.
#[test]
fn a_lost_device_fails_the_members_of_its_worker_then_comes_back() {
    let Some(a) = common::usable_adapters("pipeline: a lost shared device")
        .first()
        .cloned()
    else {
        return;
    };
    let place = Placement::Adapter(a.index);
    let plan = FaultPlan::new().on_run("m0", 0, Fault::LoseDevice);
    let options = PipelineOptions::default()
        .quorum(QuorumPolicy::Quorum(1))
        .session(SessionOptions::default().faults(plan));
    let pipeline = Pipeline::new(graph(&place), options).unwrap();
    assert_eq!(workers(&pipeline), shared_workers(&place), "{a}");
    let (x0, x1) = (input(4, 6, 6), input(2, 6, 7));
    pipeline.send(&x0).unwrap();
    pipeline.send(&x1).unwrap();
    let first = pipeline.recv().expect("a result for input 0");
    assert_eq!(
        statuses(&first),
        ["failed", "failed", "finished"],
        "{a}: input 0"
    );
    for report in &first.members[..2] {
        assert!(
            matches!(
                &report.status,
                MemberStatus::Failed(Error::DeviceLost { .. })
            ),
            "{a}: {}: {:?}",
            report.name,
            report.status
        );
        assert!(
            matches!(report.device, ExecutionDevice::Adapter { .. }),
            "{a}: {}: {:?}",
            report.name,
            report.device
        );
    }
    match &first.aggregate {
        Ok(got) => assert_close(
            &format!("{a}: input 0, the CPU member alone"),
            got.as_slice(),
            &reference(&x0, &[2]),
        ),
        Err(e) => panic!("{a}: input 0: {e}"),
    }
    let second = pipeline.recv().expect("a result for input 1");
    check_all_finished(&second, &x1, &format!("{a}: input 1, device recreated"));
}

/// Four members on one adapter share one worker: a stream of inputs of 1 to 20 rows,
/// sent from one thread and received on another, gives every input's aggregate and
/// every member's own output.
#[test]
fn a_stream_through_the_shared_worker_of_one_device() {
    let Some(a) = common::usable_adapters("pipeline: one worker for one device")
        .first()
        .cloned()
    else {
        return;
    };
    let models: Vec<Model> = (0..4)
        .map(|i| Model::random(&[16, 32, 32, 5], &[Relu, Relu, Softmax], 70 + i).unwrap())
        .collect();
    let mut g = Graph::builder(16);
    for (i, m) in models.iter().enumerate() {
        g = g.member(format!("m{i}"), m.clone(), Placement::Adapter(a.index));
    }
    let options = PipelineOptions::default().capacity(4).member_outputs(true);
    let pipeline = Pipeline::new(g.build().unwrap(), options).unwrap();
    assert_eq!(workers(&pipeline), [vec![0, 1, 2, 3]], "{a}");
    let inputs: Vec<Tensor> = (0..60)
        .map(|i| input(1 + i * 7 % 20, 16, 100 + i as u64))
        .collect();
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
    assert_eq!(outputs.len(), inputs.len(), "{a}");
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
        for (report, model) in out.members.iter().zip(&models) {
            assert!(matches!(report.status, MemberStatus::Finished));
            let own = report
                .output
                .as_ref()
                .unwrap_or_else(|| panic!("{a}: input {i}: no output for {}", report.name));
            assert_close(
                &format!("{a}: input {i}, {}", report.name),
                own.as_slice(),
                &common::reference_forward(model, x),
            );
        }
    }
}

/// `bench --mode late-member` keeps a worker per member: its member 0 sleeps on every
/// timed input, and the other members, all on the CPU with it, still meet the quorum
/// (with one worker for the device they were late with it, and the bench failed).
#[test]
fn the_late_member_bench_isolates_the_late_member_cpu() {
    let timeout = Duration::from_millis(40);
    let report = run_bench(
        Workload::E1,
        2,
        &Placement::Cpu,
        SessionOptions::default(),
        BenchMode::LateMember(timeout),
        1,
        3,
    )
    .unwrap_or_else(|e| panic!("late-member on the CPU: {e}"));
    // Each timed input waits for the late member until the deadline.
    assert!(
        report.p50_ms >= 40.0,
        "p50 {} ms with a member late past a 40 ms timeout",
        report.p50_ms
    );
    assert!(report.baseline_p50_ms.is_some());
}
