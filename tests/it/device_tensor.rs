//! Device-resident tensors: `Session::upload` puts an input on the session's devices,
//! `Session::run_device` runs on it without an upload and keeps a mean's aggregate on
//! the device when one GPU device holds every member; what stays on a device gives the
//! values `Session::run` gives, chains into further runs, and fails with a typed error
//! (never other values) once its device is lost.

use crate::common;

use common::{assert_close, input, Target};
use wgpu_ensemble::{
    Activation::*, Aggregate, DeviceTensor, Error, ExecutionDevice, Fault, FaultPlan, Graph,
    MemberStatus, Model, Placement, QuorumPolicy, RunOptions, Session, SessionOptions, Tensor,
};

/// Three members of input width 10 and output width 5: two of one shape (one stack on
/// a GPU) and one of another.
fn members() -> Vec<Model> {
    vec![
        Model::random(&[10, 12, 5], &[Relu, Softmax], 11).unwrap(),
        Model::random(&[10, 12, 5], &[Relu, Softmax], 12).unwrap(),
        Model::random(&[10, 7, 9, 5], &[Tanh, Gelu, Identity], 13).unwrap(),
    ]
}

fn session_with(models: Vec<Model>, places: &[Placement], aggregate: Aggregate) -> Session {
    let width = models[0].layers()[0].in_features();
    let mut g = Graph::builder(width).aggregate(aggregate);
    for (i, (m, p)) in models.into_iter().zip(places).enumerate() {
        g = g.member(format!("m{i}"), m, p.clone());
    }
    Session::new(g.build().unwrap()).unwrap()
}

fn host_values(t: &DeviceTensor) -> Vec<f32> {
    t.to_host().unwrap().to_vec()
}

fn as_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

/// `run_device` on an uploaded input gives `run`'s aggregate and member outputs for
/// means, weighted means and votes, at one row, a small batch and a tiled batch (more
/// than 16 rows); a mean stays on the GPU device (nothing read back), a vote and the
/// CPU's aggregates are host tensors.
fn run_device_matches_run(placement: Placement, label: &str) {
    let aggregates = [
        Aggregate::Mean,
        Aggregate::WeightedMean(vec![0.6, 0.3, 0.1]),
        Aggregate::Vote { weights: None },
    ];
    let on_gpu = !matches!(placement, Placement::Cpu);
    for aggregate in aggregates {
        let vote = matches!(aggregate, Aggregate::Vote { .. });
        let places = vec![placement.clone(); 3];
        let session = session_with(members(), &places, aggregate.clone());
        for (rows, seed) in [(1, 1), (7, 2), (40, 3)] {
            let what = format!("{label} {aggregate:?} rows {rows}");
            let x = input(rows, 10, seed);
            let options = RunOptions::default().member_outputs(rows == 7);
            let host = session.run(&x, &options).unwrap();
            let resident = session.upload(&x).unwrap();
            assert_eq!(resident.shape(), &[rows, 10], "{what}");
            let out = session.run_device(&resident, &options).unwrap();
            assert!(out.is_complete(), "{what}");
            assert_eq!(out.aggregate.shape(), &[rows, 5], "{what}");
            assert_eq!(
                out.aggregate.is_on_device(),
                on_gpu && !vote,
                "{what}: the aggregate is on {:?}",
                out.aggregate.devices()
            );
            if on_gpu && !vote {
                assert_eq!(
                    out.aggregate.devices(),
                    vec![out.members[0].device.clone()],
                    "{what}"
                );
            } else {
                assert_eq!(
                    out.aggregate.devices(),
                    vec![ExecutionDevice::Cpu],
                    "{what}"
                );
            }
            let got = host_values(&out.aggregate);
            assert_close(&what, &got, &as_f64(host.aggregate.as_slice()));
            for (d, h) in out.members.iter().zip(&host.members) {
                assert!(matches!(d.status, MemberStatus::Finished), "{what}");
                match (&d.output, &h.output) {
                    (Some(d), Some(h)) => assert_close(
                        &format!("{what} {}", h.shape()[0]),
                        d.as_slice(),
                        &as_f64(h.as_slice()),
                    ),
                    (None, None) => assert!(rows != 7, "{what}: no member outputs"),
                    _ => panic!("{what}: member outputs differ in presence"),
                }
            }
        }
    }
}

#[test]
fn run_device_matches_run_cpu() {
    common::on_placement(
        "run_device_matches_run",
        Target::Cpu,
        run_device_matches_run,
    );
}

#[test]
fn run_device_matches_run_vulkan() {
    common::on_placement(
        "run_device_matches_run",
        Target::Vulkan,
        run_device_matches_run,
    );
}

/// Members of width 6 in and out: a run's aggregate is the next run's input. Two runs
/// chained on the device give what two host runs give, and the second reads the first
/// one's aggregate where it is.
fn output_feeds_the_next_run(placement: Placement, label: &str) {
    let models = vec![
        Model::random(&[6, 16, 6], &[Relu, Identity], 21).unwrap(),
        Model::random(&[6, 6], &[Tanh], 22).unwrap(),
    ];
    let session = session_with(
        models,
        &[placement.clone(), placement.clone()],
        Aggregate::WeightedMean(vec![2.0, 1.0]),
    );
    let x = input(20, 6, 5);
    let options = RunOptions::default();
    let want = session
        .run(&session.run(&x, &options).unwrap().aggregate, &options)
        .unwrap();
    let first = session
        .run_device(&session.upload(&x).unwrap(), &options)
        .unwrap();
    assert_eq!(
        first.aggregate.is_on_device(),
        !matches!(placement, Placement::Cpu),
        "{label}"
    );
    let second = session.run_device(&first.aggregate, &options).unwrap();
    assert_close(
        &format!("{label} two chained runs"),
        &host_values(&second.aggregate),
        &as_f64(want.aggregate.as_slice()),
    );
    // The first aggregate is still there after the second run read it.
    let again = session
        .run(&first.aggregate.to_host().unwrap(), &options)
        .unwrap();
    assert_close(
        &format!("{label} the first aggregate read back"),
        again.aggregate.as_slice(),
        &as_f64(want.aggregate.as_slice()),
    );
}

#[test]
fn output_feeds_the_next_run_cpu() {
    common::on_placement(
        "output_feeds_the_next_run",
        Target::Cpu,
        output_feeds_the_next_run,
    );
}

#[test]
fn output_feeds_the_next_run_vulkan() {
    common::on_placement(
        "output_feeds_the_next_run",
        Target::Vulkan,
        output_feeds_the_next_run,
    );
}

/// A first session's resident aggregate (width 8) is the input of a second session
/// (width 8 in, 3 out): on the same adapter (its own device: through the host), on one
/// device both sessions were given (read where it is), and on the CPU.
#[test]
fn sessions_chain_on_device_tensors_vulkan() {
    for info in common::adapters_on("sessions_chain_on_device_tensors", Target::Vulkan) {
        let first_model = Model::random(&[5, 8], &[Sigmoid], 31).unwrap();
        let second_model = Model::random(&[8, 10, 3], &[Relu, Softmax], 32).unwrap();
        let shared = Placement::Device(common::external_device(
            &info.name,
            info.backend,
            "shared device",
        ));
        let adapter = Placement::Adapter(info.index);
        let cases = [
            ("same adapter", adapter.clone(), adapter.clone()),
            ("shared device", shared.clone(), shared),
            ("to the CPU", adapter, Placement::Cpu),
        ];
        let x = input(9, 5, 7);
        let options = RunOptions::default();
        for (what, first_place, second_place) in cases {
            let what = format!("{info} {what}");
            let first = session_with(vec![first_model.clone()], &[first_place], Aggregate::Mean);
            let second = session_with(vec![second_model.clone()], &[second_place], Aggregate::Mean);
            let want = second
                .run(&first.run(&x, &options).unwrap().aggregate, &options)
                .unwrap();
            let middle = first
                .run_device(&first.upload(&x).unwrap(), &options)
                .unwrap();
            assert!(middle.aggregate.is_on_device(), "{what}");
            let got = second.run_device(&middle.aggregate, &options).unwrap();
            assert_close(
                &what,
                &host_values(&got.aggregate),
                &as_f64(want.aggregate.as_slice()),
            );
        }
    }
}

/// A session on the CPU and two devices of one adapter: each GPU device reads its own
/// uploaded copy, the aggregate (combined on the host) equals `run`'s and is a host
/// tensor. On one device with a member failing every run, a quorum's aggregate kept on
/// the device is the weighted mean over the members that finished.
#[test]
fn several_devices_and_quorum_vulkan() {
    let Some(adapter) = common::usable_adapters("several_devices_and_quorum")
        .first()
        .map(|a| a.index)
    else {
        return;
    };
    let weights = vec![0.5, 0.3, 0.2];
    let places = [
        Placement::Cpu,
        Placement::Queue { adapter, slot: 1 },
        Placement::Queue { adapter, slot: 2 },
    ];
    let session = session_with(members(), &places, Aggregate::WeightedMean(weights.clone()));
    let x = input(12, 10, 9);
    let options = RunOptions::default();
    let resident = session.upload(&x).unwrap();
    assert_eq!(resident.devices().len(), 3, "{:?}", resident.devices());
    let host = session.run(&x, &options).unwrap();
    let out = session.run_device(&resident, &options).unwrap();
    assert!(!out.aggregate.is_on_device());
    assert_close(
        "three devices",
        &host_values(&out.aggregate),
        &as_f64(host.aggregate.as_slice()),
    );

    // One device, member m1 failing on every run, a quorum of two.
    let models = members();
    let mut g = Graph::builder(10).aggregate(Aggregate::WeightedMean(weights.clone()));
    for (i, m) in models.iter().enumerate() {
        g = g.member(format!("m{i}"), m.clone(), Placement::Adapter(adapter));
    }
    let plan = FaultPlan::new().from_run("m1", 0, Fault::Fail);
    let session =
        Session::with_options(g.build().unwrap(), SessionOptions::default().faults(plan)).unwrap();
    let options = RunOptions::default().quorum(QuorumPolicy::Quorum(2));
    let out = session
        .run_device(&session.upload(&x).unwrap(), &options)
        .unwrap();
    assert!(out.aggregate.is_on_device());
    assert!(matches!(out.members[1].status, MemberStatus::Failed(_)));
    assert!(!out.is_complete());
    let missing: Vec<&str> = out.missing().map(|m| m.name.as_str()).collect();
    assert_eq!(missing, ["m1"]);
    let want = common::reference_present(&models, &weights, &x, &[0, 2]);
    assert_close("quorum on the device", &host_values(&out.aggregate), &want);
    // Requiring all members, the failure is the run's error.
    let err = session
        .run_device(&session.upload(&x).unwrap(), &RunOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::InjectedFault { .. }), "{err}");
}

/// Inputs of the wrong width or rank are the errors `run` gives, from `upload` and from
/// `run_device` (a device tensor of another session), and so is a bad quorum.
fn device_tensor_errors(placement: Placement, label: &str) {
    let session = session_with(members(), &vec![placement.clone(); 3], Aggregate::Mean);
    let err = session.upload(&input(3, 9, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::FeatureWidth {
                expected: 10,
                got: 9
            }
        ),
        "{label}: {err}"
    );
    let err = session
        .upload(&Tensor::new(vec![10], vec![0.0; 10]).unwrap())
        .unwrap_err();
    assert!(
        matches!(err, Error::Rank { expected: 2, .. }),
        "{label}: {err}"
    );
    let other = session_with(
        vec![Model::random(&[8, 4], &[Relu], 3).unwrap()],
        &[placement],
        Aggregate::Mean,
    );
    let narrow = other.upload(&input(2, 8, 2)).unwrap();
    let err = session
        .run_device(&narrow, &RunOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::FeatureWidth {
                expected: 10,
                got: 8
            }
        ),
        "{label}: {err}"
    );
    let x = session.upload(&input(2, 10, 2)).unwrap();
    let err = session
        .run_device(&x, &RunOptions::default().quorum(QuorumPolicy::Quorum(4)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidQuorum {
                quorum: 4,
                members: 3
            }
        ),
        "{label}: {err}"
    );
}

#[test]
fn device_tensor_errors_cpu() {
    common::on_placement("device_tensor_errors", Target::Cpu, device_tensor_errors);
}

#[test]
fn device_tensor_errors_vulkan() {
    common::on_placement("device_tensor_errors", Target::Vulkan, device_tensor_errors);
}

/// A device lost (by fault injection on run 1) and made again: an aggregate kept on
/// the old device is gone, and a run on it or its readback is `DeviceLost` naming the
/// device; an uploaded input still runs from its host copy, with `run`'s values.
#[test]
fn lost_device_tensors_are_errors_vulkan() {
    for info in common::adapters_on("lost_device_tensors_are_errors", Target::Vulkan) {
        let model = Model::random(&[6, 10, 6], &[Relu, Identity], 41).unwrap();
        let graph = Graph::builder(6)
            .member("m", model, Placement::Adapter(info.index))
            .build()
            .unwrap();
        let plan = FaultPlan::new().on_run("m", 1, Fault::LoseDevice);
        let session = Session::with_options(graph, SessionOptions::default().faults(plan)).unwrap();
        let options = RunOptions::default();
        let x = input(4, 6, 11);
        let uploaded = session.upload(&x).unwrap();
        // Run 0: the aggregate stays on the device.
        let kept = session.run_device(&uploaded, &options).unwrap().aggregate;
        assert!(kept.is_on_device(), "{info}");
        let before = host_values(&kept);
        // Run 1 loses the device.
        let err = session.run_device(&kept, &options).unwrap_err();
        assert!(matches!(err, Error::DeviceLost { .. }), "{info}: {err}");
        // Run 2 makes it again; the kept aggregate was on the old one.
        let device = session.devices().next().unwrap().to_string();
        let err = session.run_device(&kept, &options).unwrap_err();
        match &err {
            Error::DeviceLost { device: d, .. } => assert_eq!(d, &device, "{info}"),
            other => panic!("{info}: expected DeviceLost, got {other}"),
        }
        let err = kept.to_host().unwrap_err();
        assert!(
            matches!(&err, Error::DeviceLost { device: d, .. } if d == &device),
            "{info}: {err}"
        );
        // The uploaded input has its host copy: the new device runs it correctly.
        let out = session.run_device(&uploaded, &options).unwrap();
        let host = session.run(&x, &options).unwrap();
        assert_close(
            &format!("{info} after recreation"),
            &host_values(&out.aggregate),
            &as_f64(host.aggregate.as_slice()),
        );
        assert_close(
            &format!("{info} the values before the loss"),
            &before,
            &as_f64(host.aggregate.as_slice()),
        );
    }
}

/// A tensor larger than one of the device's buffers (`max_buffer_bytes` here) is not
/// copied there by `upload`, and an aggregate that large is not kept: the runs read the
/// host values in chunks and give `run`'s aggregate, a host tensor.
#[test]
fn tensors_larger_than_a_buffer_go_through_the_host_vulkan() {
    for info in common::adapters_on(
        "tensors_larger_than_a_buffer_go_through_the_host",
        Target::Vulkan,
    ) {
        let graph = Graph::builder(10)
            .member("m", members().remove(0), Placement::Adapter(info.index))
            .build()
            .unwrap();
        // 500 rows: 20 000 bytes of input and 10 000 of output, beyond 8 KiB.
        let session =
            Session::with_options(graph, SessionOptions::default().max_buffer_bytes(8 << 10))
                .unwrap();
        let options = RunOptions::default();
        let x = input(500, 10, 21);
        let want = session.run(&x, &options).unwrap();
        let uploaded = session.upload(&x).unwrap();
        assert!(
            uploaded
                .devices()
                .iter()
                .all(|d| *d == ExecutionDevice::Cpu),
            "{info}: a copy beyond the buffer limit was made: {:?}",
            uploaded.devices()
        );
        let got = session.run_device(&uploaded, &options).unwrap();
        assert!(
            !got.aggregate.is_on_device(),
            "{info}: an aggregate beyond the limit was kept"
        );
        assert_close(
            &format!("{info} beyond one buffer"),
            &host_values(&got.aggregate),
            &as_f64(want.aggregate.as_slice()),
        );
        // A small batch of the same session still stays on the device.
        let small = session
            .run_device(&session.upload(&input(3, 10, 22)).unwrap(), &options)
            .unwrap();
        assert!(small.aggregate.is_on_device(), "{info}");
    }
}

/// A device lost for good leaves `upload` working: the tensor has no copy there, and
/// `run_device` under a quorum gives what `run` gives with that member failed.
#[test]
fn upload_leaves_out_a_device_lost_for_good_vulkan() {
    for info in common::adapters_on("upload_leaves_out_a_device_lost_for_good", Target::Vulkan) {
        let places = [
            Placement::Cpu,
            Placement::Cpu,
            Placement::Adapter(info.index),
        ];
        let plan = FaultPlan::new().on_run("m2", 0, Fault::LoseDevicePermanently);
        let mut g = Graph::builder(10);
        for (i, (m, p)) in members().into_iter().zip(places).enumerate() {
            g = g.member(format!("m{i}"), m, p);
        }
        let session =
            Session::with_options(g.build().unwrap(), SessionOptions::default().faults(plan))
                .unwrap();
        let options = RunOptions::default().quorum(QuorumPolicy::Quorum(2));
        let x = input(4, 10, 23);
        session.run(&x, &options).unwrap();
        let want = session.run(&x, &options).unwrap();
        assert!(
            !want.is_complete(),
            "{info}: the lost member still answered"
        );
        let uploaded = session
            .upload(&x)
            .unwrap_or_else(|e| panic!("{info}: upload failed with one device gone: {e}"));
        let got = session.run_device(&uploaded, &options).unwrap();
        let statuses = |m: &[wgpu_ensemble::MemberReport]| {
            m.iter()
                .map(|r| format!("{:?}", r.status))
                .collect::<Vec<_>>()
        };
        assert_eq!(statuses(&got.members), statuses(&want.members), "{info}");
        assert_close(
            &format!("{info} without the lost device"),
            &host_values(&got.aggregate),
            &as_f64(want.aggregate.as_slice()),
        );
    }
}

/// Devices of two wgpu instances, which wgpu's own `==` can take for one, are two
/// devices to a session: each member runs on its own.
#[test]
fn devices_of_two_instances_stay_apart_vulkan() {
    for info in common::adapters_on("devices_of_two_instances_stay_apart", Target::Vulkan) {
        let a = common::external_device(&info.name, info.backend, "A");
        let b = common::external_device(&info.name, info.backend, "B");
        let graph = Graph::builder(10)
            .member("on_a", members().remove(0), Placement::Device(a))
            .member("on_b", members().remove(1), Placement::Device(b))
            .build()
            .unwrap();
        let session = Session::new(graph).unwrap();
        assert_eq!(
            session.devices().count(),
            2,
            "{info}: {:?}",
            session.devices().collect::<Vec<_>>()
        );
        let out = session
            .run(&input(2, 10, 24), &RunOptions::default())
            .unwrap();
        assert!(out.is_complete(), "{info}");
    }
}

/// `bench --resident` times `run_device` on an input uploaded once: its report says
/// `resident`; it goes with `--mode session` only.
fn resident_bench(placement: Placement, label: &str) {
    use wgpu_ensemble::bench::{run_bench, BenchMode, Workload};
    let report = run_bench(
        Workload::Gemm,
        24,
        &placement,
        SessionOptions::default(),
        BenchMode::Resident,
        1,
        2,
    )
    .unwrap();
    assert_eq!(report.mode, "resident", "{label}");
    assert_eq!(report.runs, 2, "{label}");
    assert!(report.p50_ms > 0.0, "{label}");
}

#[test]
fn resident_bench_cpu() {
    common::on_placement("resident_bench", Target::Cpu, resident_bench);
    let out = common::cli(&[
        "bench",
        "--workload",
        "gemm",
        "--batch",
        "8",
        "--device",
        "cpu",
        "--runs",
        "1",
        "--mode",
        "pipeline",
        "--resident",
    ]);
    assert!(!out.status.success());
    let stderr = common::stderr(&out);
    assert!(stderr.contains("--resident"), "{stderr}");
    let out = common::cli(&[
        "bench",
        "--workload",
        "gemm",
        "--batch",
        "8",
        "--device",
        "cpu",
        "--runs",
        "1",
        "--resident",
        "--json",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"mode\":\"resident\""), "{stdout}");
}

#[test]
fn resident_bench_vulkan() {
    common::on_placement("resident_bench", Target::Vulkan, resident_bench);
}

/// A member slower than the run's timeout: `run_device` gives `run`'s
/// `DeadlineExceeded` naming it (on a GPU device, with the aggregate that would have
/// stayed there never arriving), and the next run on the same input is right.
fn run_device_deadline(placement: Placement, label: &str) {
    use std::time::Duration;
    let models = members();
    let mut g = Graph::builder(10);
    for (i, m) in models.iter().enumerate() {
        g = g.member(format!("m{i}"), m.clone(), placement.clone());
    }
    let plan = FaultPlan::new().on_run("m0", 0, Fault::Sleep(Duration::from_millis(300)));
    let session =
        Session::with_options(g.build().unwrap(), SessionOptions::default().faults(plan)).unwrap();
    let x = input(3, 10, 4);
    let resident = session.upload(&x).unwrap();
    let late = RunOptions::default().timeout(Duration::from_millis(30));
    match session.run_device(&resident, &late) {
        Err(Error::DeadlineExceeded { missing, .. }) => {
            assert!(missing.iter().any(|m| m == "m0"), "{label}: {missing:?}")
        }
        other => panic!("{label}: expected DeadlineExceeded, got {other:?}"),
    }
    let out = session
        .run_device(&resident, &RunOptions::default())
        .unwrap();
    let want = common::reference_present(&models, &[1.0, 1.0, 1.0], &x, &[0, 1, 2]);
    assert_close(
        &format!("{label} after the deadline"),
        &host_values(&out.aggregate),
        &want,
    );
}

#[test]
fn run_device_deadline_cpu() {
    common::on_placement("run_device_deadline", Target::Cpu, run_device_deadline);
}

#[test]
fn run_device_deadline_vulkan() {
    common::on_placement("run_device_deadline", Target::Vulkan, run_device_deadline);
}
