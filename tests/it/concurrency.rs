//! One session run from 8 threads at once, 20 runs each, every result checked.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_close, assert_close_tol, bounded, input, reference_forward, reference_mean,
    reference_measures, reference_present, reference_stack,
};
use std::time::Instant;
use wgpu_ensemble::{
    Activation::*, Aggregate, Error, Fault, FaultPlan, Graph, GraphBuilder, MemberStatus, Model,
    Pipeline, PipelineOptions, Placement, QuorumPolicy, RunOptions, Session, SessionOptions, Split,
};

#[test]
fn session_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Session>();
}

#[test]
fn eight_threads_twenty_runs_each() {
    common::usable_adapters("concurrency");
    let models: Vec<Model> = [
        (vec![8, 24, 5], vec![Relu, Softmax]),
        (vec![8, 16, 16, 5], vec![Gelu, Tanh, Softmax]),
        (vec![8, 5], vec![Softmax]),
        (vec![8, 11, 5], vec![Sigmoid, Softmax]),
    ]
    .iter()
    .enumerate()
    .map(|(i, (w, a))| Model::random(w, a, 300 + i as u64).unwrap())
    .collect();
    // Auto members go to the usable adapters (or the CPU), one member stays on the CPU.
    let places = [
        Placement::Auto,
        Placement::Auto,
        Placement::Cpu,
        Placement::Auto,
    ];
    let mut g = Graph::builder(8);
    for (i, (m, p)) in models.iter().zip(places).enumerate() {
        g = g.member(format!("m{i}"), m.clone(), p);
    }
    let session = Arc::new(Session::new(g.build().unwrap()).unwrap());
    let models = Arc::new(models);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let session = Arc::clone(&session);
            let models = Arc::clone(&models);
            std::thread::spawn(move || {
                for r in 0..20 {
                    // Different batch sizes and values per run, so a result delivered to
                    // the wrong run cannot pass.
                    let batch = 1 + (t * 20 + r) % 37;
                    let x = input(batch, 8, (t * 1000 + r) as u64);
                    let run = session
                        .run(&x, &RunOptions::default().member_outputs(r % 2 == 0))
                        .unwrap();
                    let refs: Vec<Vec<f64>> =
                        models.iter().map(|m| reference_forward(m, &x)).collect();
                    assert_close(
                        &format!("thread {t} run {r}"),
                        run.aggregate.as_slice(),
                        &reference_mean(&refs, &[1.0; 4]),
                    );
                    if r % 2 == 0 {
                        for (m, want) in run.members.iter().zip(&refs) {
                            assert_close(
                                &format!("thread {t} run {r} {}", m.name),
                                m.output.as_ref().unwrap().as_slice(),
                                want,
                            );
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a run thread failed");
    }
}

/// A session whose members are all on the host CPU runs a job on the caller's thread
/// when nothing is queued and the run has no deadline, and through its worker
/// otherwise: 8 threads at once, half their runs with a deadline, some runs with a
/// failing member and two with a panic, every result checked against the members that
/// finished, the panics answered as errors and the session working after them.
#[test]
fn cpu_only_session_from_eight_threads_with_faults() {
    let models: Vec<Model> = [
        (vec![8, 24, 5], vec![Relu, Softmax]),
        (vec![8, 16, 5], vec![Tanh, Softmax]),
        (vec![8, 5], vec![Softmax]),
    ]
    .iter()
    .enumerate()
    .map(|(i, (w, a))| Model::random(w, a, 400 + i as u64).unwrap())
    .collect();
    let panics = [5, 77];
    let failing: Vec<u64> = (3..160)
        .step_by(7)
        .filter(|r| !panics.contains(r))
        .collect();
    let mut plan = FaultPlan::new();
    for &r in &failing {
        plan = plan.on_run("m1", r, Fault::Fail);
    }
    for &r in &panics {
        plan = plan.on_run("m0", r, Fault::Panic);
    }
    let mut g = Graph::builder(8);
    for (i, m) in models.iter().enumerate() {
        g = g.member(format!("m{i}"), m.clone(), Placement::Cpu);
    }
    let options = SessionOptions::default().faults(plan);
    let session = Arc::new(Session::with_options(g.build().unwrap(), options).unwrap());
    let models = Arc::new(models);
    let (errors, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (session, models) = (Arc::clone(&session), Arc::clone(&models));
            let (errors, failed) = (Arc::clone(&errors), Arc::clone(&failed));
            std::thread::spawn(move || {
                for r in 0..20 {
                    let x = input(1 + (t * 20 + r) % 13, 8, (t * 1000 + r) as u64);
                    let mut options = RunOptions::default().quorum(QuorumPolicy::Quorum(2));
                    if r % 2 == 1 {
                        options = options.timeout(Duration::from_secs(60));
                    }
                    let out = match session.run(&x, &options) {
                        Ok(out) => out,
                        Err(Error::QuorumNotMet { finished: 0, .. }) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(e) => panic!("thread {t} run {r}: {e}"),
                    };
                    let present = common::finished(&out.members);
                    if present.len() < 3 {
                        assert_eq!(present, [0, 2], "thread {t} run {r}");
                        assert!(
                            matches!(
                                &out.members[1].status,
                                MemberStatus::Failed(Error::InjectedFault { .. })
                            ),
                            "thread {t} run {r}: {:?}",
                            out.members[1].status
                        );
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    assert_close(
                        &format!("thread {t} run {r}"),
                        out.aggregate.as_slice(),
                        &reference_present(&models, &[1.0; 3], &x, &present),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a run thread failed");
    }
    assert_eq!(errors.load(Ordering::Relaxed), panics.len());
    assert_eq!(failed.load(Ordering::Relaxed), failing.len());
    let x = input(4, 8, 9);
    let out = session.run(&x, &RunOptions::default()).unwrap();
    let refs: Vec<Vec<f64>> = models.iter().map(|m| reference_forward(m, &x)).collect();
    assert_close(
        "after the runs",
        out.aggregate.as_slice(),
        &reference_mean(&refs, &[1.0; 3]),
    );
}

/// `Session::run` called from `rayon`'s own threads (a parallel loop over inputs, more
/// of them than threads) on a session whose members are on the host CPU, which runs
/// them on the same pool: every run answers, with or without a deadline, and right.
#[test]
fn cpu_session_runs_from_rayons_threads() {
    use rayon::prelude::*;
    let models: Vec<Model> = (0..3)
        .map(|i| Model::random(&[8, 32, 5], &[Relu, Softmax], 500 + i).unwrap())
        .collect();
    let mut g = Graph::builder(8);
    for (i, m) in models.iter().enumerate() {
        g = g.member(format!("m{i}"), m.clone(), Placement::Cpu);
    }
    let session = Arc::new(Session::new(g.build().unwrap()).unwrap());
    let (session2, models2) = (Arc::clone(&session), models.clone());
    bounded(move || {
        (0..64u64).into_par_iter().for_each(|i| {
            let x = input(1 + (i as usize) % 9, 8, 600 + i);
            let mut options = RunOptions::default();
            if i % 3 == 0 {
                options = options.timeout(Duration::from_secs(30));
            }
            let out = session2.run(&x, &options).unwrap();
            let refs: Vec<Vec<f64>> = models2.iter().map(|m| reference_forward(m, &x)).collect();
            assert_close(
                &format!("input {i}"),
                out.aggregate.as_slice(),
                &reference_mean(&refs, &[1.0; 3]),
            );
        });
    })
    .wait("64 runs from rayon's threads", Duration::from_secs(60));
}

/// A stack whose member is split across two CPU parts, its share of the blender wide
/// enough to be split across threads, run from `rayon`'s own threads: the split
/// member's blender share runs on the crate's CPU pool, not on the global pool whose
/// threads are all waiting for it (that hung), and every answer is right.
#[test]
fn a_split_members_blender_share_from_rayons_threads() {
    use rayon::prelude::*;
    let members = [
        Model::random(&[8, 24, 5], &[Relu, Softmax], 520).unwrap(),
        Model::random(&[8, 16, 5], &[Tanh, Softmax], 521).unwrap(),
    ];
    // 64 sums in the blender's first layer: two blocks of columns at 9 rows and more.
    let blender = Model::random(&[10, 64, 5], &[Relu, Softmax], 522).unwrap();
    let graph = whole_and_split(
        Graph::builder(8).aggregate(Aggregate::Stack {
            blender: Arc::new(blender.clone()),
        }),
        &members,
    );
    if rayon::current_num_threads() < 2 {
        eprintln!("note: rayon's global pool has one thread here; the hang this guards needs two");
    }
    let session = Arc::new(Session::new(graph).unwrap());
    let session2 = Arc::clone(&session);
    bounded(move || {
        (0..64u64).into_par_iter().for_each(|i| {
            let x = input(9 + (i as usize) % 7, 8, 700 + i);
            let out = session2.run(&x, &RunOptions::default()).unwrap();
            assert_eq!(out.stacked, Some(true), "input {i}");
            assert_close(
                &format!("input {i}"),
                out.aggregate.as_slice(),
                &reference_stack(&members, &blender, &x, 5),
            );
        });
    })
    .wait(
        "64 stacked runs from rayon's threads",
        Duration::from_secs(60),
    );
}

/// The uncertainty statistics of a member split across two CPU parts, at more rows
/// than one block of them (64), asked from `rayon`'s own threads: computed on the
/// crate's CPU pool, not on the global pool whose threads wait for them (that hung).
#[test]
fn a_split_members_uncertainty_from_rayons_threads() {
    use rayon::prelude::*;
    let members = [
        Model::random(&[8, 24, 5], &[Relu, Softmax], 530).unwrap(),
        Model::random(&[8, 16, 5], &[Tanh, Softmax], 531).unwrap(),
    ];
    let graph = whole_and_split(Graph::builder(8), &members);
    let session = Arc::new(Session::new(graph).unwrap());
    let session2 = Arc::clone(&session);
    bounded(move || {
        (0..32u64).into_par_iter().for_each(|i| {
            let x = input(65 + (i as usize) % 7, 8, 800 + i);
            let out = session2
                .run(&x, &RunOptions::default().uncertainty(true))
                .unwrap();
            let refs: Vec<Vec<f64>> = members.iter().map(|m| reference_forward(m, &x)).collect();
            assert_close(
                &format!("input {i}"),
                out.aggregate.as_slice(),
                &reference_mean(&refs, &[1.0; 2]),
            );
            let u = out
                .uncertainty
                .unwrap_or_else(|| panic!("input {i}: no uncertainty"));
            let want = reference_measures(&refs, &[1.0; 2], x.shape()[0], 5);
            // The tolerances of the uncertainty tests: sums of the members' f32 outputs.
            assert_close_tol(
                &format!("input {i}: entropy, expected entropy, mutual information, disagreement"),
                u.summary().as_slice(),
                &want.summary,
                2e-5,
                1e-4,
            );
            assert_close_tol(
                &format!("input {i}: variance"),
                u.variance.as_slice(),
                &want.variance,
                2e-5,
                1e-4,
            );
        });
    })
    .wait(
        "32 runs with uncertainty from rayon's threads",
        Duration::from_secs(60),
    );
}

/// A run with a deadline called on one of `rayon`'s threads returns at its deadline,
/// whatever other jobs the pool has pending: its wait runs none of them.
#[test]
fn a_deadline_holds_on_rayons_threads() {
    let graph = one_cpu_member(510);
    let plan = FaultPlan::new().on_run("m", 0, Fault::Sleep(Duration::from_millis(300)));
    let session = Session::with_options(graph, SessionOptions::default().faults(plan)).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let x = input(2, 8, 1);
    let (elapsed, late) = pool.install(|| {
        rayon::join(
            || {
                let started = Instant::now();
                let out = session.run(
                    &x,
                    &RunOptions::default().timeout(Duration::from_millis(100)),
                );
                (
                    started.elapsed(),
                    matches!(out, Err(Error::DeadlineExceeded { .. })),
                )
            },
            || std::thread::sleep(Duration::from_secs(2)),
        )
        .0
    });
    assert!(late, "the run past its deadline was not DeadlineExceeded");
    assert!(
        elapsed < Duration::from_secs(1),
        "a run with a 100 ms timeout took {elapsed:?}"
    );
}

/// A pipeline fed and drained by the two halves of a `rayon::join` on a small pool
/// (its queues shorter than the inputs) gets every result: a receiver's wait does not
/// run the sender, which would then wait on the receiver below it on the same stack.
#[test]
fn a_pipeline_fed_and_drained_inside_rayon_join() {
    let graph = one_cpu_member(520);
    let pipeline = Pipeline::new(graph, PipelineOptions::default().capacity(2)).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let received = bounded(move || {
        pool.install(|| {
            rayon::join(
                || std::thread::sleep(Duration::from_millis(300)),
                || {
                    rayon::join(
                        || std::iter::from_fn(|| pipeline.recv()).count(),
                        || {
                            for i in 0..50 {
                                pipeline.send(&input(2, 8, i)).unwrap();
                            }
                            pipeline.close();
                        },
                    )
                    .0
                },
            )
            .1
        })
    })
    .wait("the pipeline inside rayon::join", Duration::from_secs(60));
    assert_eq!(received, 50);
}

/// A run's aggregate holds its own values, not a larger buffer kept from a hidden
/// layer: three runs of 1024 rows through 1024-wide hidden layers to 64 outputs.
#[test]
fn an_output_is_not_a_kept_hidden_buffer() {
    let model = Model::random(&[64, 1024, 1024, 64], &[Relu, Relu, Identity], 530).unwrap();
    let graph = Graph::builder(64)
        .member("m", model, Placement::Cpu)
        .build()
        .unwrap();
    let session = Session::new(graph).unwrap();
    let x = input(1024, 64, 2);
    for run in 0..3 {
        let out = session
            .run(&x, &RunOptions::default())
            .unwrap()
            .aggregate
            .into_vec();
        assert!(
            out.capacity() <= 2 * out.len(),
            "run {run}: an output of {} values in a buffer of {}",
            out.len(),
            out.capacity()
        );
    }
}

/// A graph of one small member, "m", on the host CPU.
/// `builder` with `members[0]` on the CPU and `members[1]` split by layers across two
/// CPU parts.
fn whole_and_split(builder: GraphBuilder, members: &[Model; 2]) -> Graph {
    builder
        .member("whole", members[0].clone(), Placement::Cpu)
        .split_member(
            "split",
            members[1].clone(),
            Split::layers(vec![Placement::Cpu, Placement::Cpu]),
        )
        .build()
        .unwrap()
}

fn one_cpu_member(seed: u64) -> Graph {
    let model = Model::random(&[8, 16, 5], &[Relu, Softmax], seed).unwrap();
    Graph::builder(8)
        .member("m", model, Placement::Cpu)
        .build()
        .unwrap()
}
