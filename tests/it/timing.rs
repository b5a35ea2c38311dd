//! `SessionOptions::device_timing`: each GPU device's kernel time from timestamp
//! queries, read back with the results without disturbing them.

use crate::common;

use std::time::Duration;

use common::{assert_close, input, placement_tests, quirks, reference_forward, reference_mean};
use wgpu_ensemble::{
    wgpu, Activation::*, AdapterInfo, Error, ExternalDevice, Graph, Model, Placement, RunOptions,
    Session, SessionOptions, Split,
};

/// Two members of one shape and one of another on `place`, a fourth on the CPU.
/// Five outputs: the aggregate's bytes (20 a row) are not a multiple of 8 at odd
/// batches, so the timestamps after them start at a rounded offset.
fn members() -> Vec<Model> {
    [
        (vec![24, 96, 5], vec![Relu, Softmax]),
        (vec![24, 96, 5], vec![Relu, Softmax]),
        (vec![24, 40, 40, 5], vec![Tanh, Gelu, Identity]),
        (vec![24, 8, 5], vec![Sigmoid, Softmax]),
    ]
    .iter()
    .enumerate()
    .map(|(i, (w, a))| Model::random(w, a, 70 + i as u64).unwrap())
    .collect()
}

fn session(models: &[Model], place: &Placement, options: SessionOptions) -> Session {
    let mut g = Graph::builder(24);
    for (i, m) in models.iter().enumerate() {
        let p = if i == 3 {
            Placement::Cpu
        } else {
            place.clone()
        };
        g = g.member(format!("m{i}"), m.clone(), p);
    }
    Session::with_options(g.build().unwrap(), options).unwrap()
}

/// With timing on, every GPU member reports a device time, positive and within its
/// device's wall time, the CPU member none; the results are the same bits as without
/// timing and match the reference, for small batches, tiled ones and batches split
/// into chunks (the time summed over them); and a run with more work takes longer.
fn device_timing(adapter: &AdapterInfo) {
    let models = members();
    let label = adapter.to_string();
    let place = Placement::Adapter(adapter.index);
    let timed = SessionOptions::default().device_timing(true);
    if !quirks::timestamps(adapter) {
        let mut g = Graph::builder(24);
        g = g.member("m", models[0].clone(), place.clone());
        match Session::with_options(g.build().unwrap(), timed) {
            Err(Error::DeviceTimingUnsupported { device }) => {
                assert!(device.contains(&adapter.name), "{device}")
            }
            other => panic!("{label}: no timestamps, yet {:?}", other.err()),
        }
        return;
    }
    let plain = session(&models, &place, SessionOptions::default());
    // Room for one member's 96 × 24 weights and 24 rows of 96 activations (16
    // bytes to spare): no stacks, chunks of 24 rows.
    let chunked_options = timed.clone().max_buffer_bytes(96 * 4 * 24 + 16);
    for (what, options) in [
        ("timed", timed.clone()),
        ("timed, chunked", chunked_options.clone()),
    ] {
        let timed = session(&models, &place, options);
        let mut small = None;
        for batch in [1, 3, 17, 41] {
            let x = input(batch, 24, 80 + batch as u64);
            let opts = RunOptions::default().member_outputs(true);
            let run = timed.run(&x, &opts).unwrap();
            let base = plain.run(&x, &opts).unwrap();
            let ctx = format!("{label} {what}, batch {batch}");
            assert_eq!(
                run.aggregate.as_slice(),
                base.aggregate.as_slice(),
                "{ctx}: timing changed the aggregate"
            );
            let refs: Vec<Vec<f64>> = models.iter().map(|m| reference_forward(m, &x)).collect();
            assert_close(
                &ctx,
                run.aggregate.as_slice(),
                &reference_mean(&refs, &[1.0; 4]),
            );
            for (m, b) in run.members.iter().zip(&base.members) {
                assert_eq!(
                    m.output.as_ref().map(|t| t.as_slice()),
                    b.output.as_ref().map(|t| t.as_slice()),
                    "{ctx}: timing changed member {}",
                    m.name
                );
            }
            for m in &run.members[..3] {
                let t = m
                    .device_time
                    .unwrap_or_else(|| panic!("{ctx}: member {} has no device time", m.name));
                assert!(
                    t > Duration::ZERO && t <= m.elapsed,
                    "{ctx}: member {} device time {t:?}, wall {:?}",
                    m.name,
                    m.elapsed
                );
            }
            // Members on one device share its time.
            assert_eq!(run.members[0].device_time, run.members[2].device_time);
            assert_eq!(run.members[3].device_time, None, "{ctx}: the CPU member");
            assert!(base.members.iter().all(|m| m.device_time.is_none()));
            if batch == 1 {
                small = run.members[0].device_time;
            }
        }
        // Much more work takes the device longer than one row: 1024 rows do on
        // lavapipe; a fast GPU runs them in the time of one, so more follow there.
        let longer = [1024, 16384, 131072].into_iter().find_map(|rows| {
            let x = input(rows, 24, 90);
            let big = timed.run(&x, &RunOptions::default()).unwrap();
            let t = big.members[0].device_time;
            (t > small).then_some(t)
        });
        assert!(
            longer.is_some(),
            "{label} {what}: 131072 rows took no longer than one ({small:?})"
        );
    }
    // A batch of many chunks counts them all: the best of three runs of 768 rows (32
    // chunks) takes more than twice the best of three of 24 (one chunk), a margin
    // that a loaded machine's noise does not close.
    let chunked = session(&models, &place, chunked_options);
    let best = |rows: usize| {
        let x = input(rows, 24, 91);
        (0..3)
            .filter_map(|_| chunked.run(&x, &RunOptions::default()).unwrap().members[0].device_time)
            .min()
            .unwrap_or_default()
    };
    let (one, many) = (best(24), best(768));
    assert!(
        many > one * 2,
        "{label}: 32 chunks {many:?}, 1 chunk {one:?}"
    );
}

placement_tests!(adapters device_timing;
    device_timing_reports_each_devices_kernel_time_vulkan: Vulkan,
    device_timing_reports_each_devices_kernel_time_gl: Gl,
);

/// A member split across devices reports its parts' kernel time, summed over parts,
/// stages and micro-batches: by layers over two devices of one adapter, by columns
/// over them, and with one part on the CPU (which adds none); a split wholly on the
/// CPU, or run without timing, reports none. Timing leaves the output's bits alone.
fn split_device_time(adapter: &AdapterInfo) {
    let label = adapter.to_string();
    if !quirks::timestamps(adapter) {
        eprintln!("{label}: skipped, no TIMESTAMP_QUERY (the refusal is tested above)");
        return;
    }
    let model = &members()[2];
    let queue = |slot| Placement::Queue {
        adapter: adapter.index,
        slot,
    };
    let splits = [
        (
            "layers",
            Split::layers(vec![queue(0), queue(1)]).micro_batches(3),
            true,
        ),
        ("columns", Split::columns(vec![queue(0), queue(1)]), true),
        (
            "layers, cpu first",
            Split::layers(vec![Placement::Cpu, queue(0)]),
            true,
        ),
        (
            "columns, cpu",
            Split::columns(vec![Placement::Cpu; 2]),
            false,
        ),
    ];
    let x = input(7, 24, 12);
    let refs = [reference_forward(model, &x)];
    for (what, split, timed_parts) in splits {
        let session = |options: SessionOptions| {
            let g = Graph::builder(24)
                .split_member("s", model.clone(), split.clone())
                .build()
                .unwrap();
            Session::with_options(g, options).unwrap()
        };
        let ctx = format!("{label}, split by {what}");
        let timed = session(SessionOptions::default().device_timing(true));
        let plain = session(SessionOptions::default());
        let run = timed.run(&x, &RunOptions::default()).unwrap();
        let base = plain.run(&x, &RunOptions::default()).unwrap();
        assert_eq!(
            run.aggregate.as_slice(),
            base.aggregate.as_slice(),
            "{ctx}: timing changed the output"
        );
        assert_close(
            &ctx,
            run.aggregate.as_slice(),
            &reference_mean(&refs, &[1.0]),
        );
        assert_eq!(base.members[0].device_time, None, "{ctx}: untimed");
        let time = run.members[0].device_time;
        if timed_parts {
            assert!(
                time.is_some_and(|t| t > Duration::ZERO),
                "{ctx}: device time {time:?}"
            );
        } else {
            assert_eq!(time, None, "{ctx}: CPU parts only");
        }
    }
}

placement_tests!(adapters split_device_time;
    a_split_member_reports_its_parts_device_time_vulkan: Vulkan,
    a_split_member_reports_its_parts_device_time_gl: Gl,
);

/// A device without `TIMESTAMP_QUERY` (one the caller made with no features) refuses
/// device timing at session build, naming it; without timing it runs.
#[test]
fn a_device_without_timestamps_refuses_device_timing() {
    let Some(adapter) = common::usable_adapters("device timing refused")
        .into_iter()
        .next()
    else {
        return;
    };
    let (device, queue) = common::raw_device(&adapter.name, adapter.backend);
    assert!(!device.features().contains(wgpu::Features::TIMESTAMP_QUERY));
    let external = ExternalDevice::new(device, queue, "plain device");
    let model = Model::random(&[6, 3], &[Softmax], 1).unwrap();
    let graph = || {
        Graph::builder(6)
            .member("m", model.clone(), Placement::Device(external.clone()))
            .build()
            .unwrap()
    };
    match Session::with_options(graph(), SessionOptions::default().device_timing(true)) {
        Err(e @ Error::DeviceTimingUnsupported { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("plain device") && text.contains("TIMESTAMP_QUERY"),
                "{text}"
            );
        }
        other => panic!("device timing without timestamps: {:?}", other.err()),
    }
    let session = Session::new(graph()).unwrap();
    let run = session
        .run(&input(2, 6, 3), &RunOptions::default())
        .unwrap();
    assert_eq!(run.members[0].device_time, None);
}

/// `Placement::Auto` with device timing places members only on adapters with
/// timestamps, and they report a device time (the CPU, if no adapter has them).
#[test]
fn auto_placement_with_device_timing_uses_adapters_with_timestamps() {
    let adapters = common::usable_adapters("auto with device timing");
    let timed: Vec<_> = adapters.iter().filter(|a| quirks::timestamps(a)).collect();
    let models = members();
    let mut g = Graph::builder(24);
    for (i, m) in models.iter().enumerate() {
        g = g.member(format!("m{i}"), m.clone(), Placement::Auto);
    }
    let options = SessionOptions::default().device_timing(true);
    let session = Session::with_options(g.build().unwrap(), options).unwrap();
    let x = input(3, 24, 5);
    let run = session.run(&x, &RunOptions::default()).unwrap();
    for m in &run.members {
        match &m.device {
            wgpu_ensemble::ExecutionDevice::Adapter { index, .. } => {
                assert!(
                    timed.iter().any(|a| a.index == *index),
                    "member {} on adapter {index}, which has no timestamps",
                    m.name
                );
                assert!(
                    m.device_time.is_some_and(|t| t > Duration::ZERO),
                    "{}",
                    m.name
                );
            }
            other => {
                assert!(
                    timed.is_empty(),
                    "member {} on {other} with timed adapters",
                    m.name
                );
                assert_eq!(m.device_time, None);
            }
        }
    }
}
