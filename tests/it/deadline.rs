//! Run deadlines and the session-wide operation timeout: a late member gives
//! `DeadlineExceeded` naming it, the session stays usable, and a late result is never
//! mixed into a later run.

use crate::common;

use std::time::Duration;

use common::{assert_close, input, reference_forward, reference_mean};
use wgpu_ensemble::{
    Activation::*, Error, Graph, Model, Placement, RunOptions, Session, SessionOptions,
};

fn deadline_then_recovery(place: Placement, label: &str, widths: &[usize], batch: usize) {
    let acts: Vec<_> = (1..widths.len())
        .map(|i| if i + 1 == widths.len() { Softmax } else { Relu })
        .collect();
    let big = Model::random(widths, &acts, 1).unwrap();
    let small = Model::random(&[widths[0], widths[widths.len() - 1]], &[Softmax], 2).unwrap();
    let graph = Graph::builder(widths[0])
        .member("big", big.clone(), place)
        .member("small", small.clone(), Placement::Cpu)
        .build()
        .unwrap();
    let session = Session::new(graph).unwrap();

    let first = input(batch, widths[0], 1);
    match session.run(
        &first,
        &RunOptions::default().timeout(Duration::from_millis(1)),
    ) {
        Err(Error::DeadlineExceeded { timeout, missing }) => {
            assert_eq!(timeout, Duration::from_millis(1));
            assert!(
                missing.contains(&"big".to_string()),
                "{label}: missing {missing:?}"
            );
        }
        Err(other) => panic!("{label}: expected DeadlineExceeded, got {other:?}"),
        Ok(_) => panic!("{label}: expected DeadlineExceeded, the run succeeded"),
    }
    // The next runs use other inputs: the late result of the first run must not be
    // mistaken for theirs.
    for (seed, options) in [
        (2, RunOptions::default().member_outputs(true)),
        (3, RunOptions::default().timeout(Duration::from_secs(120))),
    ] {
        let x = input(batch, widths[0], seed);
        let run = session.run(&x, &options).unwrap();
        let refs = vec![reference_forward(&big, &x), reference_forward(&small, &x)];
        assert_close(
            &format!("{label}: run after the deadline (seed {seed})"),
            run.aggregate.as_slice(),
            &reference_mean(&refs, &[1.0, 1.0]),
        );
    }
}

#[test]
fn deadline_on_cpu_member() {
    deadline_then_recovery(Placement::Cpu, "cpu", &[512, 1024, 1024, 1024, 8], 256);
}

#[test]
fn deadline_on_gpu_member() {
    for (label, place) in common::gpu_placements("deadline") {
        deadline_then_recovery(place, &label, &[128, 512, 512, 8], 256);
    }
}

#[test]
fn operation_timeout_bounds_device_waits() {
    let adapters = common::usable_adapters("operation timeout");
    let mut tested = 0;
    for info in adapters {
        // GL (llvmpipe) runs a submission to completion before a fence wait can time
        // out, so the timeout cannot cut a GL wait short; it is checked elsewhere.
        if info.backend == wgpu_ensemble::wgpu::Backend::Gl {
            eprintln!("operation timeout: not checked on {info}: GL waits cannot time out early");
            continue;
        }
        let model = Model::random(&[256, 512, 512, 8], &[Relu, Relu, Softmax], 4).unwrap();
        let graph = Graph::builder(256)
            .member("slow", model, Placement::Adapter(info.index))
            .build()
            .unwrap();
        let options = SessionOptions::default().operation_timeout(Duration::from_micros(1));
        let session = Session::with_options(graph, options).unwrap();
        match session.run(&input(256, 256, 5), &RunOptions::default()) {
            Err(Error::OperationTimeout { device, timeout }) => {
                assert_eq!(timeout, Duration::from_micros(1));
                assert!(device.contains(&info.name), "{device}");
            }
            Err(other) => panic!("{info}: expected OperationTimeout, got {other:?}"),
            Ok(_) => panic!("{info}: expected OperationTimeout, the run succeeded"),
        }
        tested += 1;
    }
    if common::gpu_required() {
        assert!(
            tested > 0,
            "no adapter outside GL to check the operation timeout on"
        );
    }
}

/// `operation_timeout(Duration::MAX)` means "never time out": runs on every adapter
/// and on the CPU give the right answer (the wait for a result's map callbacks once
/// overflowed an `Instant` with it and panicked the device's worker).
#[test]
fn an_operation_timeout_of_duration_max_waits_as_long_as_needed() {
    let m = Model::random(&[4, 8, 3], &[Relu, Identity], 1).unwrap();
    for (label, place) in common::all_placements("operation timeout of Duration::MAX") {
        let graph = Graph::builder(4)
            .member("m", m.clone(), place)
            .build()
            .unwrap();
        let options = SessionOptions::default().operation_timeout(Duration::MAX);
        let session = Session::with_options(graph, options).unwrap();
        let x = input(2, 4, 3);
        let run = session
            .run(&x, &RunOptions::default())
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_close(&label, run.aggregate.as_slice(), &reference_forward(&m, &x));
    }
}
