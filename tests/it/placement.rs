//! One graph whose members sit on two different adapters, on two queues of one
//! adapter, on a device the caller created, and on the CPU.

use crate::common;

use common::{assert_close, input, reference_forward, reference_mean};
use wgpu_ensemble::{
    wgpu, Activation::*, ExecutionDevice, Graph, Model, Placement, RunOptions, Session,
};

#[test]
fn members_on_two_adapters_two_queues_an_external_device_and_the_host() {
    let usable = common::usable_adapters("placement");
    if usable.len() < 2 {
        let why = format!(
            "placement test needs two usable adapters, found {}",
            usable.len()
        );
        assert!(
            !common::gpu_required(),
            "{why}, and WGPU_ENSEMBLE_REQUIRE_GPU=1"
        );
        eprintln!("SKIPPED: {why}");
        return;
    }
    // Prefer two adapters on different backends (lavapipe Vulkan and GL llvmpipe on a
    // CPU machine with Mesa).
    let a = &usable[0];
    let b = usable
        .iter()
        .find(|x| x.backend != a.backend)
        .unwrap_or(&usable[1]);
    let models: Vec<Model> = [
        (vec![10, 16, 4], vec![Relu, Softmax]),
        (vec![10, 7, 4], vec![Tanh, Softmax]),
        (vec![10, 4], vec![Softmax]),
        (vec![10, 12, 12, 4], vec![Gelu, Sigmoid, Softmax]),
        (vec![10, 5, 4], vec![Relu, Softmax]),
        (vec![10, 9, 4], vec![Sigmoid, Softmax]),
    ]
    .iter()
    .enumerate()
    .map(|(i, (w, acts))| Model::random(w, acts, 50 + i as u64).unwrap())
    .collect();
    let placements = [
        ("first-adapter", Placement::Adapter(a.index)),
        ("second-adapter", Placement::Adapter(b.index)),
        (
            "first-adapter-queue-1",
            Placement::Queue {
                adapter: a.index,
                slot: 1,
            },
        ),
        ("cpu", Placement::Cpu),
        (
            "external",
            Placement::Device(common::external_device(
                &a.name,
                a.backend,
                "caller's device",
            )),
        ),
        // Shares the first adapter's device (slot 0) with "first-adapter".
        (
            "first-adapter-again",
            Placement::Queue {
                adapter: a.index,
                slot: 0,
            },
        ),
    ];
    let external = placements[4].1.clone();
    let expected = [(a, 0), (b, 0), (a, 1)];
    let mut g = Graph::builder(10);
    for ((name, place), model) in placements.iter().zip(&models) {
        g = g.member(*name, model.clone(), place.clone());
    }
    // A second member on the caller's device shares its worker and error handlers.
    let extra = Model::random(&[10, 4], &[Softmax], 99).unwrap();
    g = g.member("external-again", extra.clone(), external);
    let session = Session::new(g.build().unwrap()).unwrap();
    assert_eq!(
        session.devices().count(),
        5,
        "five distinct devices, one worker each"
    );

    let x = input(37, 10, 8);
    let run = session
        .run(&x, &RunOptions::default().member_outputs(true))
        .unwrap();
    for (i, (info, slot)) in expected.iter().enumerate() {
        match &run.members[i].device {
            ExecutionDevice::Adapter {
                index,
                slot: s,
                backend,
                ..
            } => {
                assert_eq!(
                    (*index, *s, *backend),
                    (info.index, *slot, info.backend),
                    "member {i}"
                );
            }
            other => panic!("member {i} ran on {other}"),
        }
    }
    assert_eq!(run.members[3].device, ExecutionDevice::Cpu);
    assert!(
        matches!(&run.members[4].device, ExecutionDevice::External { label } if label == "caller's device")
    );
    assert_eq!(run.members[5].device, run.members[0].device);
    assert_eq!(run.members[6].device, run.members[4].device);
    let listed: Vec<_> = session.members().map(|(_, d)| d.clone()).collect();
    assert_eq!(
        listed,
        run.members
            .iter()
            .map(|m| m.device.clone())
            .collect::<Vec<_>>()
    );

    let mut refs: Vec<Vec<f64>> = models.iter().map(|m| reference_forward(m, &x)).collect();
    refs.push(reference_forward(&extra, &x));
    for (m, want) in run.members.iter().zip(&refs) {
        assert_close(
            &format!("{} on {}", m.name, m.device),
            m.output.as_ref().unwrap().as_slice(),
            want,
        );
    }
    assert_close(
        "aggregate",
        run.aggregate.as_slice(),
        &reference_mean(&refs, &[1.0; 7]),
    );
}

#[test]
fn auto_spreads_round_robin_over_usable_adapters() {
    let usable = common::usable_adapters("auto placement");
    let hardware: Vec<_> = usable
        .iter()
        .filter(|a| {
            matches!(
                a.device_type,
                wgpu::DeviceType::DiscreteGpu
                    | wgpu::DeviceType::IntegratedGpu
                    | wgpu::DeviceType::VirtualGpu
            )
        })
        .collect();
    let pool: Vec<usize> = if hardware.is_empty() {
        usable.iter().map(|a| a.index).collect()
    } else {
        hardware.iter().map(|a| a.index).collect()
    };
    let model = Model::random(&[3, 2], &[Softmax], 1).unwrap();
    let mut g = Graph::builder(3);
    for i in 0..5 {
        g = g.member(format!("m{i}"), model.clone(), Placement::Auto);
    }
    let session = Session::new(g.build().unwrap()).unwrap();
    for (i, (_, device)) in session.members().enumerate() {
        match device {
            ExecutionDevice::Adapter { index, slot, .. } => {
                assert_eq!(*index, pool[i % pool.len()], "member {i}");
                assert_eq!(*slot, 0);
            }
            ExecutionDevice::Cpu => assert!(pool.is_empty(), "member {i} fell back to the CPU"),
            other => panic!("member {i} on {other}"),
        }
    }
}

/// Every session and trainer on one `ExternalDevice` shares what the device's error
/// handlers catch: a second session, or a trainer, built on the device does not take
/// the first session's error reports away (the device has one handler of each kind,
/// and each used to install its own). An error made on the device after them is
/// returned by the first session's next run, which then runs again; a session built
/// while it waits there is not failed by it.
fn sharing_an_external_device_keeps_the_error_reports(target: common::Target) {
    use wgpu_ensemble::train::{Hyper, Task, TrainSet, Trainer};
    let test = "an external device's error reports";
    let Some(info) = common::adapters_on(test, target).into_iter().next() else {
        return;
    };
    for second in ["a session", "a trainer"] {
        let (device, queue) = common::raw_device(&info.name, info.backend);
        let ext = wgpu_ensemble::ExternalDevice::new(device.clone(), queue, "shared");
        let model = Model::random(&[6, 5, 3], &[Relu, Softmax], 4).unwrap();
        let graph = Graph::builder(6)
            .member("m", model.clone(), Placement::Device(ext.clone()))
            .build()
            .unwrap();
        let first = Session::new(graph.clone()).unwrap();
        let later = graph.clone();
        let x = input(3, 6, 9);
        first.run(&x, &RunOptions::default()).unwrap();
        let _kept: Box<dyn std::any::Any> = match second {
            "a session" => Box::new(Session::new(graph).unwrap()),
            _ => {
                let data = common::train::labelled(12, 6, 3, 1);
                let set = TrainSet::new(Task::Classification, data, 0.0, false, 0).unwrap();
                let hyper = Hyper::default();
                Box::new(Trainer::new(&hyper, &set, &Placement::Device(ext.clone())).unwrap())
            }
        };
        // A validation error outside any error scope: a mappable buffer for reading
        // that is also a storage buffer.
        let _bad = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid on purpose"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        // A session built now is not failed by an error that was already there.
        Session::new(later).unwrap_or_else(|e| panic!("{second}: a session after the error: {e}"));
        match first.run(&x, &RunOptions::default()) {
            Err(e @ wgpu_ensemble::Error::Gpu { .. }) => {
                assert!(e.to_string().contains("shared"), "{second}: {e}")
            }
            other => panic!(
                "{info} with {second} on the device: the first session's run after an error gave {:?}",
                other.map(|o| o.aggregate)
            ),
        }
        let again = first.run(&x, &RunOptions::default()).unwrap();
        assert_close(
            &format!("{second}: the run after"),
            again.aggregate.as_slice(),
            &reference_mean(&[reference_forward(&model, &x)], &[1.0]),
        );
    }
}

#[test]
fn sharing_an_external_device_keeps_the_error_reports_vulkan() {
    sharing_an_external_device_keeps_the_error_reports(common::Target::Vulkan);
}

#[test]
fn sharing_an_external_device_keeps_the_error_reports_gl() {
    sharing_an_external_device_keeps_the_error_reports(common::Target::Gl);
}
