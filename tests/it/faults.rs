//! Ensembles that survive a late or broken member: quorum aggregation, per-member
//! statuses, fault isolation and device recreation, driven by fault injection.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{assert_close, input};
use wgpu_ensemble::{
    Activation::*, Aggregate, Error, Fault, FaultPlan, Graph, MemberStatus, Model, Placement,
    QuorumPolicy, RunOptions, RunOutput, Session, SessionOptions, Tensor,
};

const WEIGHTS: [f32; 3] = [0.5, 0.3, 0.2];

fn models() -> Vec<Model> {
    vec![
        Model::random(&[6, 12, 4], &[Relu, Softmax], 71).unwrap(),
        Model::random(&[6, 9, 4], &[Tanh, Softmax], 72).unwrap(),
        Model::random(&[6, 4], &[Softmax], 73).unwrap(),
    ]
}

/// Three members, each on a device of its own: the CPU and two queues of the first
/// usable adapter. `None` (after printing why) when there is no adapter.
fn placements(test: &str) -> Option<[Placement; 3]> {
    let adapter = common::usable_adapters(test).first()?.index;
    Some([
        Placement::Cpu,
        Placement::Queue { adapter, slot: 1 },
        Placement::Queue { adapter, slot: 2 },
    ])
}

fn session(test: &str, plan: FaultPlan) -> Option<Session> {
    let places = placements(test)?;
    let mut g = Graph::builder(6).aggregate(Aggregate::WeightedMean(WEIGHTS.to_vec()));
    for (i, (m, p)) in models().into_iter().zip(places).enumerate() {
        g = g.member(format!("m{i}"), m, p);
    }
    Some(Session::with_options(g.build().unwrap(), SessionOptions::default().faults(plan)).unwrap())
}

fn reference(x: &Tensor, present: &[usize]) -> Vec<f64> {
    common::reference_present(&models(), &WEIGHTS, x, present)
}

fn statuses(out: &RunOutput) -> Vec<&'static str> {
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

/// A run with no fault gives the full weighted mean.
fn check_normal_run(s: &Session, seed: u64, label: &str) {
    let x = input(9, 6, seed);
    let out = s.run(&x, &RunOptions::default()).unwrap();
    assert!(out.is_complete(), "{label}: {:?}", statuses(&out));
    assert_close(label, out.aggregate.as_slice(), &reference(&x, &[0, 1, 2]));
}

#[test]
fn quorum_with_one_slow_member() {
    let plan = FaultPlan::new().on_run("m1", 0, Fault::Sleep(Duration::from_millis(600)));
    let Some(s) = session("quorum slow", plan) else {
        return;
    };
    let x = input(9, 6, 1);
    let options = RunOptions::default()
        .timeout(Duration::from_millis(250))
        .quorum(QuorumPolicy::Quorum(2));
    let out = s.run(&x, &options).unwrap();
    assert_eq!(statuses(&out), ["finished", "late", "finished"]);
    assert!(!out.is_complete());
    assert_eq!(
        out.missing().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["m1"]
    );
    assert_close(
        "quorum over m0, m2",
        out.aggregate.as_slice(),
        &reference(&x, &[0, 2]),
    );
    check_normal_run(&s, 2, "after a late member");
}

#[test]
fn quorum_with_one_failing_member() {
    let plan = FaultPlan::new().on_runs("m2", 0..2, Fault::Fail);
    let Some(s) = session("quorum failing", plan) else {
        return;
    };
    let x = input(9, 6, 3);
    let out = s
        .run(&x, &RunOptions::default().quorum(QuorumPolicy::Quorum(2)))
        .unwrap();
    assert_eq!(statuses(&out), ["finished", "finished", "failed"]);
    match &out.members[2].status {
        MemberStatus::Failed(Error::InjectedFault { member, run }) => {
            assert_eq!((member.as_str(), *run), ("m2", 0))
        }
        other => panic!("{other:?}"),
    }
    assert_close(
        "quorum over m0, m1",
        out.aggregate.as_slice(),
        &reference(&x, &[0, 1]),
    );
    // Under RequireAll the same failure fails the run with its error.
    match s.run(&x, &RunOptions::default()) {
        Err(Error::InjectedFault { member, run: 1 }) => assert_eq!(member, "m2"),
        other => panic!("expected the injected fault, got {other:?}"),
    }
    check_normal_run(&s, 4, "after a failing member");
}

#[test]
fn deadline_with_every_member_slow() {
    let slow = Fault::Sleep(Duration::from_millis(400));
    let plan = FaultPlan::new()
        .on_runs("m0", 0..2, slow.clone())
        .on_runs("m1", 0..2, slow.clone())
        .on_runs("m2", 0..2, slow);
    let Some(s) = session("all slow", plan) else {
        return;
    };
    let x = input(4, 6, 5);
    let quick = RunOptions::default().timeout(Duration::from_millis(50));
    match s.run(&x, &quick.clone().quorum(QuorumPolicy::Quorum(1))) {
        Err(Error::QuorumNotMet {
            required: 1,
            finished: 0,
            members: 3,
            missing,
        }) => assert_eq!(missing, ["m0: late", "m1: late", "m2: late"]),
        other => panic!("expected QuorumNotMet, got {other:?}"),
    }
    match s.run(&x, &quick) {
        Err(Error::DeadlineExceeded { missing, .. }) => assert_eq!(missing, ["m0", "m1", "m2"]),
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    check_normal_run(&s, 6, "after every member was late");
}

#[test]
fn a_lost_device_comes_back() {
    let plan = FaultPlan::new().on_run("m1", 0, Fault::LoseDevice);
    let Some(s) = session("lost device", plan) else {
        return;
    };
    let x = input(5, 6, 7);
    let out = s
        .run(&x, &RunOptions::default().quorum(QuorumPolicy::Quorum(2)))
        .unwrap();
    assert_eq!(statuses(&out), ["finished", "failed", "finished"]);
    assert!(
        matches!(
            &out.members[1].status,
            MemberStatus::Failed(Error::DeviceLost { .. })
        ),
        "{:?}",
        out.members[1].status
    );
    assert_close(
        "without the lost device",
        out.aggregate.as_slice(),
        &reference(&x, &[0, 2]),
    );
    // The next run recreates the device on its adapter.
    check_normal_run(&s, 8, "after the device came back");
    check_normal_run(&s, 9, "again after the device came back");
}

#[test]
fn a_device_that_cannot_come_back_is_reported_unavailable() {
    let plan = FaultPlan::new().on_run("m2", 0, Fault::LoseDevicePermanently);
    let Some(s) = session("device unavailable", plan) else {
        return;
    };
    let quorum = RunOptions::default().quorum(QuorumPolicy::Quorum(2));
    let out = s.run(&input(3, 6, 10), &quorum).unwrap();
    assert!(matches!(
        &out.members[2].status,
        MemberStatus::Failed(Error::DeviceLost { .. })
    ));
    for seed in [11, 12] {
        let x = input(3, 6, seed);
        let out = s.run(&x, &quorum).unwrap();
        assert_eq!(statuses(&out), ["finished", "finished", "failed"]);
        assert!(
            matches!(
                &out.members[2].status,
                MemberStatus::Failed(Error::DeviceUnavailable { .. })
            ),
            "{:?}",
            out.members[2].status
        );
        assert_close(
            "without the unavailable device",
            out.aggregate.as_slice(),
            &reference(&x, &[0, 1]),
        );
    }
    assert!(matches!(
        s.run(&input(3, 6, 13), &RunOptions::default()),
        Err(Error::DeviceUnavailable { .. })
    ));
}

#[test]
fn a_panicking_worker() {
    let plan = FaultPlan::new().on_run("m0", 0, Fault::Panic);
    let Some(s) = session("panic", plan) else {
        return;
    };
    let x = input(6, 6, 14);
    let out = s
        .run(&x, &RunOptions::default().quorum(QuorumPolicy::Quorum(2)))
        .unwrap();
    assert_eq!(statuses(&out), ["failed", "finished", "finished"]);
    match &out.members[0].status {
        MemberStatus::Failed(Error::WorkerFailed { message, .. }) => {
            assert!(message.contains("panicked"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_close(
        "without the panicked worker",
        out.aggregate.as_slice(),
        &reference(&x, &[1, 2]),
    );
    check_normal_run(&s, 15, "after a panic");
}

#[test]
fn quorum_must_be_between_one_and_the_member_count() {
    let g = Graph::builder(6)
        .member("a", models()[0].clone(), Placement::Cpu)
        .member("b", models()[1].clone(), Placement::Cpu)
        .build()
        .unwrap();
    let s = Session::new(g).unwrap();
    for k in [0, 3] {
        match s.run(
            &input(2, 6, 1),
            &RunOptions::default().quorum(QuorumPolicy::Quorum(k)),
        ) {
            Err(Error::InvalidQuorum { quorum, members: 2 }) => assert_eq!(quorum, k),
            other => panic!("quorum {k}: {other:?}"),
        }
    }
}

/// Failing members of a stack (members of one shape on one device, which run in the
/// same dispatches) are left out of the aggregate and the member outputs, and the
/// others in their stack are undisturbed: one of a stack ending in softmax, two of
/// a stack without, a whole stack; then every member again. Two runs each at batches
/// for the small-batch and the tiled kernels: only the failing members change. For a
/// weighted mean and a weighted vote.
#[test]
fn failing_members_of_a_stack_are_left_out() {
    let Some(adapter) = common::usable_adapters("stack faults")
        .first()
        .map(|a| a.index)
    else {
        return;
    };
    let models: Vec<Model> = (0..6)
        .map(|i| {
            let acts = if i < 3 {
                [Relu, Softmax]
            } else {
                [Tanh, Identity]
            };
            Model::random(&[6, 12, 4], &acts, 90 + i).unwrap()
        })
        .collect();
    let weights = [0.1, 0.2, 0.3, 0.05, 0.15, 0.2];
    let plan = FaultPlan::new()
        .on_run("m1", 0, Fault::Fail)
        .on_run("m3", 1, Fault::Fail)
        .on_run("m5", 1, Fault::Fail)
        .on_run("m0", 2, Fault::Fail)
        .on_run("m1", 2, Fault::Fail)
        .on_run("m2", 2, Fault::Fail);
    let runs: [(usize, &[usize]); 4] = [
        (3, &[0, 2, 3, 4, 5]),
        (3, &[0, 1, 2, 4]),
        (20, &[3, 4, 5]),
        (20, &[0, 1, 2, 3, 4, 5]),
    ];
    let aggregates = [
        Aggregate::WeightedMean(weights.to_vec()),
        Aggregate::Vote {
            weights: Some(weights.to_vec()),
        },
    ];
    for aggregate in aggregates {
        let name = aggregate.name();
        let mut g = Graph::builder(6).aggregate(aggregate);
        for (i, m) in models.iter().enumerate() {
            g = g.member(format!("m{i}"), m.clone(), Placement::Adapter(adapter));
        }
        let options = SessionOptions::default().faults(plan.clone());
        let s = Session::with_options(g.build().unwrap(), options).unwrap();
        let options = RunOptions::default()
            .quorum(QuorumPolicy::Quorum(1))
            .member_outputs(true);
        for (run, (batch, present)) in runs.into_iter().enumerate() {
            let x = input(batch, 6, 40 + run as u64);
            let out = s.run(&x, &options).unwrap();
            let label = format!("{name} run {run}, batch {batch}");
            for (i, m) in out.members.iter().enumerate() {
                if present.contains(&i) {
                    assert!(
                        matches!(m.status, MemberStatus::Finished),
                        "{label}: m{i}: {:?}",
                        m.status
                    );
                    assert_close(
                        &format!("{label}: m{i}"),
                        m.output.as_ref().unwrap().as_slice(),
                        &common::reference_forward(&models[i], &x),
                    );
                } else {
                    assert!(
                        matches!(m.status, MemberStatus::Failed(_)) && m.output.is_none(),
                        "{label}: m{i} should have failed: {:?}",
                        m.status
                    );
                }
            }
            let want = if name == "vote" {
                let outputs: Vec<Vec<f64>> = present
                    .iter()
                    .map(|&i| common::reference_forward(&models[i], &x))
                    .collect();
                let w: Vec<f64> = present.iter().map(|&i| f64::from(weights[i])).collect();
                common::reference_vote(&outputs, &w, 4)
            } else {
                common::reference_present(&models, &weights, &x, present)
            };
            assert_close(
                &format!("{label}: aggregate"),
                out.aggregate.as_slice(),
                &want,
            );
        }
    }
}

/// An injected panic unwinds without the panic hook: nothing printed, no backtrace
/// captured (which with `RUST_BACKTRACE=1` could take longer than a deadline), and
/// the members of its device are reported failed.
#[test]
fn an_injected_panic_calls_no_panic_hook() {
    static INJECTED_HOOK_CALLS: AtomicUsize = AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        if text.is_some_and(|t| t.contains("fault injection")) {
            INJECTED_HOOK_CALLS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    let g = Graph::builder(6)
        .member("m0", models()[0].clone(), Placement::Cpu)
        .member("m1", models()[1].clone(), Placement::Cpu)
        .build()
        .unwrap();
    let plan = FaultPlan::new().on_run("m0", 0, Fault::Panic);
    let s = Session::with_options(g, SessionOptions::default().faults(plan)).unwrap();
    let out = s
        .run(
            &input(2, 6, 3),
            &RunOptions::default()
                .quorum(QuorumPolicy::Quorum(1))
                .timeout(Duration::from_secs(60)),
        )
        .unwrap_err();
    assert!(
        matches!(&out, Error::QuorumNotMet { finished: 0, .. }),
        "{out:?}"
    );
    assert_eq!(
        INJECTED_HOOK_CALLS.load(Ordering::SeqCst),
        0,
        "the hook ran"
    );
    // The worker lives on.
    let out = s.run(&input(2, 6, 4), &RunOptions::default()).unwrap();
    assert_eq!(statuses(&out), ["finished", "finished"]);
}

/// A plan naming a member the graph does not have is refused at session build, with
/// the graph's members: a typo would otherwise never strike.
#[test]
fn a_fault_for_an_unknown_member() {
    let g = Graph::builder(6)
        .member("m0", models()[0].clone(), Placement::Cpu)
        .member("m1", models()[1].clone(), Placement::Cpu)
        .build()
        .unwrap();
    let plan = FaultPlan::new()
        .on_run("m1", 0, Fault::Fail)
        .on_run("mO", 0, Fault::Fail);
    match Session::with_options(g, SessionOptions::default().faults(plan)) {
        Err(Error::FaultUnknownMember { member, members }) => {
            assert_eq!(
                (member.as_str(), members),
                ("mO", vec!["m0".into(), "m1".into()])
            )
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// A run that returns early on one device's failure (`RequireAll`, no deadline) leaves
/// nothing for the other devices to compute: ten such runs while the CPU member
/// sleeps 300 ms in each would queue three seconds of work for nobody; the next run
/// waits at most for the one job the CPU worker is in.
#[test]
fn runs_that_return_early_leave_no_backlog() {
    let plan = FaultPlan::new()
        .on_runs("m0", 0..10, Fault::Sleep(Duration::from_millis(300)))
        .on_runs("m1", 0..10, Fault::Fail);
    let Some(s) = session("no backlog", plan) else {
        return;
    };
    let x = input(3, 6, 5);
    for run in 0..10 {
        match s.run(&x, &RunOptions::default()) {
            Err(Error::InjectedFault { member, .. }) => assert_eq!(member, "m1", "run {run}"),
            other => panic!("run {run}: expected m1's failure, got {other:?}"),
        }
    }
    let started = std::time::Instant::now();
    check_normal_run(&s, 6, "after ten abandoned runs");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1500),
        "the next run waited {waited:?}: the abandoned runs' jobs were computed"
    );
}

/// When the members that finished all have weight 0 there is nothing to average: the
/// quorum asked for is reported as asked, beside how many finished.
#[test]
fn finished_members_of_weight_zero_do_not_make_an_aggregate() {
    let mut g = Graph::builder(6).aggregate(Aggregate::WeightedMean(vec![0.0, 0.0, 1.0]));
    for (i, m) in models().into_iter().enumerate() {
        g = g.member(format!("m{i}"), m, Placement::Cpu);
    }
    let plan = FaultPlan::new().on_run("m2", 0, Fault::Fail);
    let s =
        Session::with_options(g.build().unwrap(), SessionOptions::default().faults(plan)).unwrap();
    let options = RunOptions::default().quorum(QuorumPolicy::Quorum(1));
    match s.run(&input(2, 6, 1), &options) {
        Err(Error::QuorumNotMet {
            required,
            finished,
            members,
            missing,
        }) => {
            assert_eq!((required, finished, members), (1, 2, 3));
            assert!(
                missing.iter().any(|m| m.contains("sum to 0")),
                "{missing:?}"
            );
        }
        other => panic!("expected QuorumNotMet, got {other:?}"),
    }
}
