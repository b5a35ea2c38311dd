//! The server's batcher: dynamic batching that changes no answer, a bounded queue,
//! closing and draining, requests dropped before they run, replicas sharing the load,
//! quorum and deadlines as `RunOptions` has them, and the metrics that show it all.
//! Members run on the CPU, small, so that every test is quick.
#![cfg(feature = "serve")]

use crate::common;

use std::sync::Barrier;
use std::time::Duration;

use common::serve::metric;
use common::{assert_close, input, placement_tests};
use wgpu_ensemble::serve::{
    BatchConfig, Batcher, InferAnswer, InferRequest, MemberState, Metrics, Replica, Reply,
    ServeError,
};
use wgpu_ensemble::{
    Activation::*, Fault, FaultPlan, Graph, Model, Placement, QuorumPolicy, RunOptions, Session,
    SessionOptions, Tensor,
};

const WIDTH: usize = 6;
const MODEL: &str = "m";
const VERSION: u64 = 1;
/// Long enough that a batch waits for the test to close the batcher: the tests that
/// use it do not depend on timing.
const FOREVER: Duration = Duration::from_secs(30);

fn graph(place: &Placement) -> Graph {
    Graph::builder(WIDTH)
        .member(
            "a",
            Model::random(&[WIDTH, 16, 4], &[Relu, Softmax], 31).unwrap(),
            place.clone(),
        )
        .member(
            "b",
            Model::random(&[WIDTH, 8, 4], &[Tanh, Softmax], 32).unwrap(),
            place.clone(),
        )
        .member(
            "c",
            Model::random(&[WIDTH, 4], &[Softmax], 33).unwrap(),
            place.clone(),
        )
        .build()
        .unwrap()
}

fn session(plan: &FaultPlan) -> Session {
    session_on(&Placement::Cpu, plan)
}

fn session_on(place: &Placement, plan: &FaultPlan) -> Session {
    Session::with_options(graph(place), SessionOptions::default().faults(plan.clone()))
        .unwrap_or_else(|e| panic!("{place:?}: {e}"))
}

fn config(max_batch_size: usize, max_queue_delay: Duration, queue_capacity: usize) -> BatchConfig {
    BatchConfig {
        max_batch_size,
        max_queue_delay,
        queue_capacity,
    }
}

/// A batcher of `replicas` replicas on the CPU named `r0`, `r1`, ... and its metrics.
fn batcher(replicas: usize, config: BatchConfig, plan: &FaultPlan) -> (Batcher, Metrics) {
    let places = vec![Placement::Cpu; replicas];
    batcher_on(&places, config, plan)
}

/// A batcher of a replica on each of `places`, named `r0`, `r1`, ..., and its metrics.
fn batcher_on(places: &[Placement], config: BatchConfig, plan: &FaultPlan) -> (Batcher, Metrics) {
    let metrics = Metrics::new();
    let replicas = places
        .iter()
        .enumerate()
        .map(|(i, place)| Replica {
            name: format!("r{i}"),
            session: session_on(place, plan),
        })
        .collect();
    let batcher = Batcher::start(MODEL, VERSION, replicas, config, metrics.clone()).unwrap();
    (batcher, metrics)
}

fn request(rows: usize, seed: u64) -> InferRequest {
    InferRequest::new(input(rows, WIDTH, seed))
}

/// Waits until the (one) replica runs a batch; fails, naming `what`, after 60 s.
fn wait_running(metrics: &Metrics, what: &str) {
    let running = || {
        let text = metrics.render();
        metric(&text, "wgpu_ensemble_replica_in_flight", &[]) == 1.0
    };
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !running() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(running(), "{what} never started");
}

fn wait(reply: Reply) -> Result<InferAnswer, ServeError> {
    reply
        .blocking_recv()
        .unwrap_or_else(|_| panic!("a queued request was dropped unanswered"))
}

/// `answer` equals `input` run alone through `reference` with the same options: the
/// aggregate, and every member's state and output.
#[track_caller]
fn assert_alone(
    what: &str,
    answer: &InferAnswer,
    x: &Tensor,
    reference: &Session,
    options: &RunOptions,
) {
    let alone = reference
        .run(x, options)
        .unwrap_or_else(|e| panic!("{what}: alone: {e}"));
    let want: Vec<f64> = alone
        .aggregate
        .as_slice()
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    assert_eq!(
        answer.output.shape(),
        alone.aggregate.shape(),
        "{what}: aggregate shape"
    );
    assert_close(
        &format!("{what}: aggregate"),
        answer.output.as_slice(),
        &want,
    );
    assert_eq!(answer.model, MODEL);
    assert_eq!(answer.version, VERSION);
    assert_eq!(answer.members.len(), alone.members.len(), "{what}: members");
    for (got, report) in answer.members.iter().zip(&alone.members) {
        assert_eq!(got.name, report.name, "{what}: member order");
        assert_eq!(
            got.output.is_some(),
            report.output.is_some(),
            "{what}: member '{}' output present",
            got.name
        );
        if let (Some(g), Some(w)) = (&got.output, &report.output) {
            let want: Vec<f64> = w.as_slice().iter().map(|&v| f64::from(v)).collect();
            assert_eq!(g.shape(), w.shape(), "{what}: member '{}' shape", got.name);
            assert_close(
                &format!("{what}: member '{}'", got.name),
                g.as_slice(),
                &want,
            );
        }
    }
}

/// 64 clients at once, of 1 to 3 rows, some asking for member outputs: requests are
/// merged (fewer runs than requests), and every answer equals its request run alone.
fn concurrent_requests_are_batched_and_answered_as_alone(place: Placement, label: &str) {
    const CLIENTS: usize = 64;
    let (batcher, metrics) = batcher_on(
        std::slice::from_ref(&place),
        config(64, Duration::from_millis(20), 128),
        &FaultPlan::new(),
    );
    let start = Barrier::new(CLIENTS);
    let answers: Vec<_> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (batcher, start) = (&batcher, &start);
                scope.spawn(move || {
                    let x = input(1 + i % 3, WIDTH, 1000 + i as u64);
                    let mut r = InferRequest::new(x.clone());
                    r.want_members = i % 4 != 0;
                    start.wait();
                    let reply = batcher
                        .submit(r)
                        .unwrap_or_else(|e| panic!("{label}: client {i}: {e}"));
                    (x, i % 4 != 0, wait(reply))
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let reference = session_on(&place, &FaultPlan::new());
    let mut rows = 0;
    for (i, (x, members, answer)) in answers.iter().enumerate() {
        let answer = answer
            .as_ref()
            .unwrap_or_else(|e| panic!("{label}: client {i}: {e}"));
        rows += x.shape()[0];
        let options = RunOptions::default().member_outputs(*members);
        assert_alone(
            &format!("{label}: client {i}"),
            answer,
            x,
            &reference,
            &options,
        );
    }
    batcher.drain();
    let text = metrics.render();
    let labels = [r#"model="m""#, r#"version="1""#];
    let batches = metric(
        &text,
        "wgpu_ensemble_inference_batch_requests_count",
        &labels,
    );
    let requests = metric(&text, "wgpu_ensemble_inference_batch_requests_sum", &labels);
    assert_eq!(requests, CLIENTS as f64, "requests in batches:\n{text}");
    assert!(
        batches >= 2.0 && batches < CLIENTS as f64,
        "expected some batches of more than one request (and two kinds of request: at least \
         two batches), got {batches} batches for {CLIENTS} requests:\n{text}"
    );
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_rows_sum", &labels),
        rows as f64
    );
    // Triton's counters say the same: the average batch is their ratio.
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_exec_count", &labels),
        batches
    );
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_count", &labels),
        rows as f64
    );
    assert_eq!(
        metric(
            &text,
            "wgpu_ensemble_replica_batches_total",
            &[r#"replica="r0""#]
        ),
        batches
    );
    assert_eq!(
        metric(
            &text,
            "wgpu_ensemble_inference_queue_duration_seconds_count",
            &labels
        ),
        CLIENTS as f64
    );
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_queue_depth", &labels),
        0.0
    );
    for member in ["a", "b", "c"] {
        assert_eq!(
            metric(
                &text,
                "wgpu_ensemble_member_compute_duration_seconds_count",
                &[&format!(r#"member="{member}""#)]
            ),
            batches,
            "member {member}'s compute time, once per batch:\n{text}"
        );
    }
}

placement_tests!(concurrent_requests_are_batched_and_answered_as_alone;
    concurrent_requests_are_batched_and_answered_as_alone_cpu: Cpu,
    concurrent_requests_are_batched_and_answered_as_alone_vulkan: Vulkan,
    concurrent_requests_are_batched_and_answered_as_alone_gl: Gl,
);

/// Requests merge only when their options agree: the same quorum, the same member
/// outputs, and deadlines near each other (a 60 s request is not run under a 5 s one's
/// deadline, nor a request without deadline under either). They queue behind a
/// request that keeps the replica busy (run 0 sleeps; its quorum is its own, so it
/// runs alone): a first request that found the replica idle and the queue empty
/// would run at once, alone.
#[test]
fn only_requests_with_the_same_options_merge_cpu() {
    let plan = FaultPlan::new().on_run("a", 0, Fault::Sleep(Duration::from_millis(300)));
    let (batcher, metrics) = batcher(1, config(64, FOREVER, 64), &plan);
    let reference = session(&FaultPlan::new());
    let mut blocker = request(1, 49);
    blocker.quorum = Some(3);
    let blocker = batcher.submit(blocker).unwrap();
    wait_running(&metrics, "the blocking request");
    let mut sent = Vec::new();
    for (i, (quorum, members, timeout)) in [
        (None, false, None),
        (Some(2), false, None),
        (None, false, None),
        (None, true, None),
        (None, false, Some(60)),
        (None, false, Some(60)),
        (None, false, Some(5)),
    ]
    .into_iter()
    .enumerate()
    {
        let x = input(2, WIDTH, 50 + i as u64);
        let mut r = InferRequest::new(x.clone());
        r.quorum = quorum;
        r.want_members = members;
        r.timeout = timeout.map(Duration::from_secs);
        let mut options = RunOptions::default().member_outputs(members);
        if let Some(q) = quorum {
            options = options.quorum(QuorumPolicy::Quorum(q));
        }
        sent.push((x, options, batcher.submit(r).unwrap()));
    }
    // Closing runs what is queued without waiting for the batch delay.
    batcher.close();
    wait(blocker).unwrap();
    for (i, (x, options, reply)) in sent.into_iter().enumerate() {
        let answer = wait(reply).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_alone(&format!("request {i}"), &answer, &x, &reference, &options);
    }
    batcher.drain();
    let text = metrics.render();
    // {blocker}, {0, 2}, {1}, {3}, {4, 5}, {6}.
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_requests_count", &[]),
        6.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_requests_sum", &[]),
        8.0
    );
}

/// Requests that differ only in asking for the uncertainty measures merge: a request
/// that keeps the replica busy (run 0 sleeps; it asks for member outputs, so it runs
/// alone) lets four queue behind it, and they run as one batch with the measures. The
/// two that asked get their own rows' measures, equal to a run of their rows alone;
/// the two that did not get none, and their aggregates are their own.
#[test]
fn requests_that_differ_in_the_measures_merge_and_get_what_they_asked_cpu() {
    let plan = FaultPlan::new().on_run("a", 0, Fault::Sleep(Duration::from_millis(300)));
    let (batcher, metrics) = batcher(1, config(64, FOREVER, 64), &plan);
    let reference = session(&FaultPlan::new());
    let mut blocker = request(1, 200);
    blocker.want_members = true;
    let blocker = batcher.submit(blocker).unwrap();
    // The first of the batch does not ask: the batch still runs with the measures.
    let sent: Vec<_> = [(false, 2), (true, 3), (false, 1), (true, 4)]
        .into_iter()
        .enumerate()
        .map(|(i, (asks, rows))| {
            let x = input(rows, WIDTH, 210 + i as u64);
            let mut r = InferRequest::new(x.clone());
            r.want_uncertainty = asks;
            (x, asks, batcher.submit(r).unwrap())
        })
        .collect();
    batcher.close();
    wait(blocker).unwrap();
    for (i, (x, asks, reply)) in sent.into_iter().enumerate() {
        let what = format!("request {i} (asks: {asks})");
        let answer = wait(reply).unwrap_or_else(|e| panic!("{what}: {e}"));
        let options = RunOptions::default().uncertainty(asks);
        assert_alone(&what, &answer, &x, &reference, &options);
        let alone = reference.run(&x, &options).unwrap().uncertainty;
        assert_eq!(answer.uncertainty.is_some(), asks, "{what}");
        if let (Some(got), Some(want)) = (&answer.uncertainty, &alone) {
            let f64s = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
            for (name, g, w) in [
                ("entropy", &got.entropy, &want.entropy),
                (
                    "expected entropy",
                    &got.expected_entropy,
                    &want.expected_entropy,
                ),
                (
                    "mutual information",
                    &got.mutual_information,
                    &want.mutual_information,
                ),
                ("disagreement", &got.disagreement, &want.disagreement),
            ] {
                assert_close(&format!("{what}: {name}"), g, &f64s(w));
            }
            assert_eq!(got.variance.shape(), want.variance.shape(), "{what}");
            assert_close(
                &format!("{what}: variance"),
                got.variance.as_slice(),
                &f64s(want.variance.as_slice()),
            );
        }
    }
    batcher.drain();
    let text = metrics.render();
    // {blocker}, {0, 1, 2, 3}.
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_requests_count", &[]),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_requests_sum", &[]),
        5.0,
        "{text}"
    );
}

/// A request of more rows than the largest batch runs alone, and its neighbours still
/// get their answers.
#[test]
fn a_request_larger_than_a_batch_runs_alone_cpu() {
    let (batcher, metrics) = batcher(1, config(4, FOREVER, 64), &FaultPlan::new());
    let reference = session(&FaultPlan::new());
    let sent: Vec<_> = [1, 10, 1]
        .into_iter()
        .enumerate()
        .map(|(i, rows)| {
            let x = input(rows, WIDTH, 70 + i as u64);
            let reply = batcher.submit(InferRequest::new(x.clone())).unwrap();
            (x, reply)
        })
        .collect();
    batcher.close();
    for (i, (x, reply)) in sent.into_iter().enumerate() {
        let answer = wait(reply).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_alone(
            &format!("request {i}"),
            &answer,
            &x,
            &reference,
            &RunOptions::default(),
        );
    }
    batcher.drain();
    let text = metrics.render();
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_rows_sum", &[]),
        12.0
    );
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_rows_count", &[]),
        3.0,
        "{text}"
    );
}

/// A full queue refuses at once with 503, and says so; the request comes back from
/// `try_submit`. Requests held in a forming batch count against the capacity.
#[test]
fn a_full_queue_refuses_at_once_cpu() {
    let (batcher, metrics) = batcher(1, config(64, FOREVER, 2), &FaultPlan::new());
    let first = batcher.submit(request(1, 1)).unwrap();
    let second = batcher.submit(request(1, 2)).unwrap();
    assert_eq!(batcher.queue_depth(), 2);
    let refused = batcher.submit(request(1, 3)).unwrap_err();
    assert_eq!(refused.status(), 503, "{refused}");
    assert!(refused.to_string().contains("queue is full"), "{refused}");
    let back = batcher.try_submit(request(3, 4)).unwrap_err();
    assert!(
        !back.closed,
        "a full queue is not a closed one: {}",
        back.error
    );
    assert_eq!(back.request.input.shape(), &[3, WIDTH]);
    assert!(!batcher.is_closed());
    batcher.close();
    for reply in [first, second] {
        wait(reply).unwrap();
    }
    batcher.drain();
    assert_eq!(batcher.queue_depth(), 0);
    let text = metrics.render();
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_requests_sum", &[]),
        2.0
    );
}

/// A closed batcher refuses new requests (503, distinguishable from a full queue) and
/// answers those it had; `drain` returns once they are answered.
#[test]
fn a_closed_batcher_refuses_new_requests_and_answers_queued_ones_cpu() {
    let (batcher, _metrics) = batcher(2, config(8, FOREVER, 64), &FaultPlan::new());
    let reference = session(&FaultPlan::new());
    let queued: Vec<_> = (0..5)
        .map(|i| {
            let x = input(2, WIDTH, 90 + i);
            (x.clone(), batcher.submit(InferRequest::new(x)).unwrap())
        })
        .collect();
    batcher.close();
    assert!(batcher.is_closed());
    let refused = batcher.submit(request(1, 99)).unwrap_err();
    assert_eq!(refused.status(), 503, "{refused}");
    assert!(refused.to_string().contains("closed"), "{refused}");
    let back = batcher.try_submit(request(1, 98)).unwrap_err();
    assert!(back.closed, "{}", back.error);
    batcher.drain();
    for (i, (x, reply)) in queued.into_iter().enumerate() {
        let answer = wait(reply).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_alone(
            &format!("request {i}"),
            &answer,
            &x,
            &reference,
            &RunOptions::default(),
        );
    }
}

/// A request whose client has gone (its reply dropped) is not run.
#[test]
fn a_cancelled_request_is_not_run_cpu() {
    let (batcher, metrics) = batcher(1, config(64, FOREVER, 64), &FaultPlan::new());
    drop(batcher.submit(request(5, 1)).unwrap());
    let kept = batcher.submit(request(2, 2)).unwrap();
    drop(batcher.submit(request(7, 3)).unwrap());
    batcher.close();
    let answer = wait(kept).unwrap();
    assert_eq!(answer.output.shape(), &[2, 4]);
    batcher.drain();
    let text = metrics.render();
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_rows_sum", &[]),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "wgpu_ensemble_replica_batches_total", &[]),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "wgpu_ensemble_inference_dropped_total",
            &[r#"reason="cancelled""#]
        ),
        2.0
    );
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_queue_depth", &[]),
        0.0
    );
}

/// A request whose deadline passed while it was queued is answered 504 and not run;
/// its neighbours are run.
#[test]
fn an_expired_request_is_answered_504_without_running_cpu() {
    let (batcher, metrics) = batcher(1, config(64, FOREVER, 64), &FaultPlan::new());
    let mut expired = request(4, 1);
    expired.timeout = Some(Duration::ZERO);
    let expired = batcher.submit(expired).unwrap();
    let kept = batcher.submit(request(1, 2)).unwrap();
    batcher.close();
    let e = wait(expired).unwrap_err();
    assert_eq!(e.status(), 504, "{e}");
    assert!(e.to_string().contains("deadline"), "{e}");
    wait(kept).unwrap();
    batcher.drain();
    let text = metrics.render();
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_rows_sum", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "wgpu_ensemble_inference_dropped_total",
            &[r#"reason="expired""#]
        ),
        1.0
    );
}

/// With two replicas (the first on `place`, the second on the CPU) and more batches
/// than one can hold, both run batches (an idle replica takes the next batch), and the
/// answers are right whichever ran them.
fn two_replicas_share_the_batches(place: Placement, label: &str) {
    let (batcher, metrics) = batcher_on(
        &[place, Placement::Cpu],
        config(1, Duration::ZERO, 64),
        &FaultPlan::new(),
    );
    let reference = session(&FaultPlan::new());
    let sent: Vec<_> = (0..8)
        .map(|i| {
            let x = input(1, WIDTH, 200 + i);
            (x.clone(), batcher.submit(InferRequest::new(x)).unwrap())
        })
        .collect();
    for (i, (x, reply)) in sent.into_iter().enumerate() {
        let answer = wait(reply).unwrap_or_else(|e| panic!("{label}: request {i}: {e}"));
        assert_alone(
            &format!("{label}: request {i}"),
            &answer,
            &x,
            &reference,
            &RunOptions::default(),
        );
    }
    batcher.drain();
    let text = metrics.render();
    let name = "wgpu_ensemble_replica_batches_total";
    let (r0, r1) = (
        metric(&text, name, &[r#"replica="r0""#]),
        metric(&text, name, &[r#"replica="r1""#]),
    );
    assert_eq!(r0 + r1, 8.0, "{text}");
    assert!(
        r0 >= 1.0 && r1 >= 1.0,
        "{label}: both replicas run batches: r0 {r0}, r1 {r1}\n{text}"
    );
    for replica in ["r0", "r1"] {
        assert_eq!(
            metric(
                &text,
                "wgpu_ensemble_replica_in_flight",
                &[&format!(r#"replica="{replica}""#)]
            ),
            0.0
        );
    }
}

placement_tests!(two_replicas_share_the_batches;
    two_replicas_share_the_batches_cpu: Cpu,
    two_replicas_share_the_batches_vulkan: Vulkan,
    two_replicas_share_the_batches_gl: Gl,
);

/// With no queue delay, requests still merge under load: those that queue while the
/// replica is busy run as one batch once it is idle.
#[test]
fn requests_queued_behind_a_busy_replica_merge_without_a_delay_cpu() {
    let plan = FaultPlan::new().on_run("a", 0, Fault::Sleep(Duration::from_millis(300)));
    let (batcher, metrics) = batcher(1, config(64, Duration::ZERO, 64), &plan);
    let first = batcher.submit(request(1, 1)).unwrap();
    wait_running(&metrics, "the first batch");
    let reference = session(&FaultPlan::new());
    let queued: Vec<_> = (0..10)
        .map(|i| {
            let x = input(1, WIDTH, 400 + i);
            (x.clone(), batcher.submit(InferRequest::new(x)).unwrap())
        })
        .collect();
    wait(first).unwrap();
    for (i, (x, reply)) in queued.into_iter().enumerate() {
        let answer = wait(reply).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_alone(
            &format!("request {i}"),
            &answer,
            &x,
            &reference,
            &RunOptions::default(),
        );
    }
    batcher.drain();
    let text = metrics.render();
    let batches = metric(&text, "wgpu_ensemble_inference_batch_requests_count", &[]);
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_requests_sum", &[]),
        11.0
    );
    // The first alone, then the ten that queued behind it together (unless this
    // thread was held up for the whole of the first run).
    assert!(
        batches < 11.0,
        "no request merged: {batches} batches\n{text}"
    );
}

/// A member that fails: with a quorum the answer leaves it out (as `RunOptions` with the
/// same quorum does), without one the request fails as the run does.
#[test]
fn quorum_answers_without_a_failing_member_as_run_options_does_cpu() {
    let plan = FaultPlan::new().from_run("b", 0, Fault::Fail);
    let (batcher, metrics) = batcher(1, config(64, FOREVER, 64), &plan);
    let reference = session(&plan);
    let mut sent = Vec::new();
    for i in 0..3 {
        let x = input(2, WIDTH, 300 + i);
        let mut r = InferRequest::new(x.clone());
        r.quorum = Some(2);
        r.want_members = true;
        sent.push((x, batcher.submit(r).unwrap()));
    }
    let whole = batcher.submit(request(1, 310)).unwrap();
    batcher.close();
    let options = RunOptions::default()
        .quorum(QuorumPolicy::Quorum(2))
        .member_outputs(true);
    for (i, (x, reply)) in sent.into_iter().enumerate() {
        let answer = wait(reply).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_alone(&format!("request {i}"), &answer, &x, &reference, &options);
        let missing: Vec<_> = answer.missing().collect();
        assert_eq!(missing.len(), 1, "{:?}", answer.members);
        assert_eq!(missing[0].name, "b");
        assert!(
            matches!(&missing[0].state, MemberState::Failed(m) if m.contains("fault injection")),
            "{:?}",
            missing[0].state
        );
    }
    let e = wait(whole).unwrap_err();
    let alone = reference
        .run(&input(1, WIDTH, 310), &RunOptions::default())
        .unwrap_err();
    assert_eq!(e.status(), 500, "{e}");
    assert!(
        e.to_string()
            .starts_with("member 'b' failed by fault injection")
            && alone
                .to_string()
                .starts_with("member 'b' failed by fault injection"),
        "served: {e}; alone: {alone}"
    );
    batcher.drain();
    let text = metrics.render();
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_degraded_total", &[]),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "wgpu_ensemble_member_failed_total",
            &[r#"member="b""#]
        ),
        2.0
    );
}

/// A deadline the members miss is 504 naming them, as a run with that timeout fails.
#[test]
fn a_missed_deadline_is_504_naming_the_members_cpu() {
    let plan = FaultPlan::new().from_run("c", 0, Fault::Sleep(Duration::from_secs(5)));
    let (batcher, _metrics) = batcher(1, config(64, Duration::ZERO, 64), &plan);
    let mut r = request(1, 1);
    r.timeout = Some(Duration::from_millis(100));
    let e = wait(batcher.submit(r).unwrap()).unwrap_err();
    assert_eq!(e.status(), 504, "{e}");
    assert!(
        e.to_string()
            .contains("members that had not answered: a, b, c"),
        "{e}"
    );
    batcher.drain();
}

/// Dropping a batcher whose replica is stuck in a run without deadline returns at
/// once: its threads are left to finish alone.
#[test]
fn dropping_a_batcher_does_not_wait_for_a_stuck_member_cpu() {
    let plan = FaultPlan::new().on_run("a", 0, Fault::Sleep(Duration::from_secs(600)));
    let (batcher, _metrics) = batcher(1, config(64, Duration::ZERO, 64), &plan);
    let reply = batcher.submit(request(1, 1)).unwrap();
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(batcher);
        let _ = done.send(());
    });
    assert!(
        dropped.recv_timeout(Duration::from_secs(60)).is_ok(),
        "dropping the batcher waited for the stuck member"
    );
    drop(reply);
}

/// `drain_timeout` answers what is queued and says so, or gives up on a stuck member
/// after its limit and says that.
#[test]
fn drain_timeout_gives_up_on_a_stuck_member_cpu() {
    let (quick, _metrics) = batcher(1, config(64, FOREVER, 64), &FaultPlan::new());
    let reply = quick.submit(request(1, 1)).unwrap();
    assert!(quick.drain_timeout(Duration::from_secs(60)));
    wait(reply).unwrap();
    let plan = FaultPlan::new().on_run("a", 0, Fault::Sleep(Duration::from_secs(600)));
    let (stuck, metrics) = batcher(1, config(64, Duration::ZERO, 64), &plan);
    let reply = stuck.submit(request(1, 1)).unwrap();
    // Once its batch runs (the in-flight gauge says so), nothing can end it.
    let running = || {
        let text = metrics.render();
        let name = "wgpu_ensemble_replica_in_flight_requests";
        metric(&text, name, &[r#"replica="r0""#]) == 1.0
    };
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !running() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(running(), "the batch never started:\n{}", metrics.render());
    assert!(!stuck.drain_timeout(Duration::from_millis(50)));
    assert!(stuck.is_closed());
    drop(reply);
}

/// A request the run would refuse is refused at once, 400, in the engine's words: no
/// rows, a quorum of zero or of more members than there are. A wrong width names the
/// width expected.
#[test]
fn requests_the_run_would_refuse_are_400_at_once_cpu() {
    let (batcher, metrics) = batcher(1, config(64, FOREVER, 64), &FaultPlan::new());
    let reference = session(&FaultPlan::new());
    let empty = Tensor::matrix(0, WIDTH, Vec::new()).unwrap();
    let e = batcher
        .submit(InferRequest::new(empty.clone()))
        .unwrap_err();
    let alone = reference.run(&empty, &RunOptions::default()).unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    assert_eq!(e.to_string(), alone.to_string());
    for quorum in [0, 4] {
        let mut r = request(1, 1);
        r.quorum = Some(quorum);
        let e = batcher.submit(r).unwrap_err();
        let options = RunOptions::default().quorum(QuorumPolicy::Quorum(quorum));
        let alone = reference.run(&input(1, WIDTH, 1), &options).unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
        assert_eq!(e.to_string(), alone.to_string());
    }
    let e = batcher
        .submit(InferRequest::new(input(2, WIDTH + 1, 1)))
        .unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    assert!(
        e.to_string().contains(&format!("expected [rows, {WIDTH}]")),
        "{e}"
    );
    let back = batcher
        .try_submit(InferRequest::new(input(2, WIDTH + 1, 1)))
        .unwrap_err();
    assert!(!back.closed);
    batcher.drain();
    assert_eq!(batcher.queue_depth(), 0);
    let text = metrics.render();
    assert_eq!(
        metric(&text, "wgpu_ensemble_inference_batch_requests_count", &[]),
        0.0
    );
}
