//! Run deadlines and the session-wide operation timeout: a late member gives
//! `DeadlineExceeded` naming it, the session stays usable, and a late result is never
//! mixed into a later run.

use crate::common;

use std::time::Duration;

use common::{assert_close, input, placement_tests, quirks, reference_forward, reference_mean};
use wgpu_ensemble::{
    Activation::*, AdapterInfo, Error, Graph, Model, Placement, RunOptions, Session, SessionOptions,
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
fn deadline_on_member_cpu() {
    deadline_then_recovery(Placement::Cpu, "cpu", &[512, 1024, 1024, 1024, 8], 256);
}

fn deadline_on_gpu(place: Placement, label: &str) {
    deadline_then_recovery(place, label, &[128, 512, 512, 8], 256);
}

placement_tests!(deadline_on_gpu;
    deadline_on_member_vulkan: Vulkan,
    deadline_on_member_gl: Gl,
);

fn operation_timeout(info: &AdapterInfo) {
    // Some drivers cannot cut a wait short (see the quirk); the timeout is checked
    // on the others, of which a machine that must have a GPU has one.
    common::require_an_adapter_with("an operation timeout that can cut a wait short", |a| {
        quirks::fence_wait_runs_to_completion(a).is_none()
    });
    if let Some(why) = quirks::fence_wait_runs_to_completion(info) {
        eprintln!("operation timeout: not checked on {info}: {why}");
        return;
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
}

placement_tests!(adapters operation_timeout;
    operation_timeout_bounds_device_waits_vulkan: Vulkan,
    operation_timeout_bounds_device_waits_gl: Gl,
);

/// `operation_timeout(Duration::MAX)` means "never time out": runs on every adapter
/// and on the CPU give the right answer (the wait for a result's map callbacks once
/// overflowed an `Instant` with it and panicked the device's worker).
fn duration_max(place: Placement, label: &str) {
    let m = Model::random(&[4, 8, 3], &[Relu, Identity], 1).unwrap();
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
    assert_close(label, run.aggregate.as_slice(), &reference_forward(&m, &x));
}

placement_tests!(duration_max;
    an_operation_timeout_of_duration_max_waits_as_long_as_needed_cpu: Cpu,
    an_operation_timeout_of_duration_max_waits_as_long_as_needed_vulkan: Vulkan,
    an_operation_timeout_of_duration_max_waits_as_long_as_needed_gl: Gl,
);
