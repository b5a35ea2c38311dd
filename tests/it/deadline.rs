//! Run deadlines and the session-wide operation timeout: a late member gives
//! `DeadlineExceeded` naming it, the session stays usable, and a late result is never
//! mixed into a later run.

use crate::common;

use std::time::Duration;

use common::{assert_close, input, placement_tests, quirks, reference_forward, reference_mean};
use wgpu_ensemble::{
    Activation::*, AdapterInfo, Error, Fault, FaultPlan, Graph, MemberStatus, Model, Pipeline,
    PipelineOptions, Placement, QuorumPolicy, RunOptions, Session, SessionOptions,
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

/// Runs `f` on a thread and waits for it at most `limit`: whether it returned. A test
/// whose subject hangs fails instead of hanging the test binary.
fn returns_within(limit: Duration, f: impl FnOnce() + Send + 'static) -> bool {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    finished.recv_timeout(limit).is_ok()
}

/// A member that sleeps ten minutes (fault injection) on `place`: a run with a deadline
/// returns at the deadline, and dropping the session returns too instead of waiting for
/// the sleeper (its worker is left to finish alone). With a quorum of 1 and a quick
/// member on the CPU, the answer comes from the quick member and the drop is as quick.
fn stuck_member_does_not_hold_the_session(place: Placement, label: &str) {
    let stuck = Model::random(&[4, 8, 3], &[Relu, Softmax], 1).unwrap();
    let quick = Model::random(&[4, 3], &[Softmax], 2).unwrap();
    let ten_minutes = Duration::from_secs(600);
    for quorum in [None, Some(1)] {
        let mut builder = Graph::builder(4).member("stuck", stuck.clone(), place.clone());
        if quorum.is_some() && !matches!(place, Placement::Cpu) {
            builder = builder.member("quick", quick.clone(), Placement::Cpu);
        }
        let graph = builder.build().unwrap();
        let plan = FaultPlan::new().on_run("stuck", 0, Fault::Sleep(ten_minutes));
        let session = Session::with_options(graph, SessionOptions::default().faults(plan))
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let mut options = RunOptions::default().timeout(Duration::from_millis(100));
        if let Some(k) = quorum {
            options = options.quorum(QuorumPolicy::Quorum(k));
        }
        let x = input(2, 4, 7);
        let answered = returns_within(Duration::from_secs(60), move || {
            let run = session.run(&x, &options);
            match (quorum, &run) {
                (None, Err(Error::DeadlineExceeded { .. })) => {}
                // The quick member answers for the ensemble; the sleeper is late.
                (Some(_), Ok(out)) if out.members.len() == 2 => {
                    assert!(matches!(out.members[0].status, MemberStatus::Late));
                }
                // Alone on its device (the CPU), the sleeper misses the quorum.
                (Some(_), Err(Error::QuorumNotMet { .. })) => {}
                _ => panic!("quorum {quorum:?}: unexpected {run:?}"),
            }
            // The session is dropped here, its sleeper still asleep.
            drop(session);
        });
        assert!(
            answered,
            "{label}, quorum {quorum:?}: the run or the session's drop waited for the sleeping member"
        );
    }
}

placement_tests!(stuck_member_does_not_hold_the_session;
    dropping_a_session_does_not_wait_for_a_stuck_member_cpu: Cpu,
    dropping_a_session_does_not_wait_for_a_stuck_member_vulkan: Vulkan,
    dropping_a_session_does_not_wait_for_a_stuck_member_gl: Gl,
);

/// The same for a `Pipeline`: its result comes at the deadline, and dropping it does
/// not wait for the sleeping member's worker.
#[test]
fn dropping_a_pipeline_does_not_wait_for_a_stuck_member() {
    let model = Model::random(&[4, 8, 3], &[Relu, Softmax], 1).unwrap();
    let graph = Graph::builder(4)
        .member("stuck", model.clone(), Placement::Cpu)
        .member("quick", model, Placement::Cpu)
        .build()
        .unwrap();
    let plan = FaultPlan::new().on_run("stuck", 0, Fault::Sleep(Duration::from_secs(600)));
    let options = PipelineOptions::default()
        .timeout(Duration::from_millis(100))
        .quorum(QuorumPolicy::Quorum(1))
        .session(SessionOptions::default().faults(plan));
    let pipeline = Pipeline::new(graph, options).unwrap();
    let answered = returns_within(Duration::from_secs(60), move || {
        for _ in 0..3 {
            pipeline.send(&input(2, 4, 8)).unwrap();
        }
        let first = pipeline.recv().expect("a result for the first input");
        assert!(
            matches!(first.members[0].status, MemberStatus::Late),
            "{:?}",
            first.members[0].status
        );
        drop(pipeline);
    });
    assert!(
        answered,
        "dropping the pipeline waited for the sleeping member"
    );
}

/// `predict --timeout-ms` with a member that sleeps ten minutes: the process reports
/// the deadline and exits (it waited for the sleeper before).
#[test]
fn predict_exits_at_its_deadline_with_a_stuck_member() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("y.npy");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wgpu-ensemble"))
        .args(["predict", "--manifest"])
        .arg(common::golden("mean.toml"))
        .arg("--input")
        .arg(common::golden("x.npy"))
        .arg("--output")
        .arg(&output)
        .args([
            "--device",
            "cpu",
            "--timeout-ms",
            "200",
            "--fault",
            "seq-relu=sleep:600000",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_bounded(
        &mut child,
        Duration::from_secs(60),
        "predict a minute after its 200 ms deadline",
    );
    let mut message = String::new();
    if let Some(mut err) = child.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut message);
    }
    assert!(!status.success(), "{message}");
    assert!(message.contains("seq-relu"), "{message}");
    assert!(!output.exists(), "an output was written");
}

/// `predict --timeout-ms` whose deadline passes while members still compile their
/// shaders (lavapipe, the shader cache off, deadlines of 3 to 60 ms): the process
/// reports the deadline (or the predictions) and exits 1 (or 0), never killed by a
/// signal. It crashed with SIGSEGV or SIGABRT in about a third of such runs, when the
/// libraries' exit handlers (libEGL's) ran while a late member's thread was in LLVM.
#[cfg(unix)]
#[test]
fn predict_exits_cleanly_while_late_members_compile() {
    use std::os::unix::process::ExitStatusExt;
    let test = "predict's exit with members compiling";
    let adapters = common::usable_adapters(test);
    if !adapters.iter().any(|a| a.name.contains("llvmpipe")) {
        // A hardware driver keeps its own shader cache: nothing to provoke there.
        eprintln!("{test}: skipped, no llvmpipe adapter (the case needs Mesa's shader compiler)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("y.npy");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = root.join("examples/data/digits/digits.toml");
    let input = root.join("examples/data/digits/x_test.npy");
    let mut outcomes = Vec::new();
    for i in 0..16u64 {
        let timeout = (3 + (i * 3) % 60).to_string();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgpu-ensemble"))
            .args(["predict", "--manifest"])
            .arg(&manifest)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .args(["--timeout-ms", &timeout])
            .env("MESA_SHADER_CACHE_DISABLE", "true")
            .output()
            .unwrap();
        assert!(
            out.status.signal().is_none() && matches!(out.status.code(), Some(0 | 1)),
            "run {i} (--timeout-ms {timeout}): {:?}\n{}",
            out.status,
            common::stderr(&out)
        );
        outcomes.push(out.status.code());
    }
    // The test means something only if some deadlines passed.
    assert!(
        outcomes.contains(&Some(1)),
        "no deadline passed in 16 runs: {outcomes:?}"
    );
}
