//! The GPU engine against the CPU engine (itself checked against f64 finite
//! differences and a numpy fixture in the integration tests), on every usable adapter:
//! gradients of every activation and both losses, optimizer steps, epochs,
//! evaluation, and a short training. Skipped with a printed reason without an adapter,
//! failed under `WGPU_ENSEMBLE_REQUIRE_GPU=1`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::GpuEngine;
use crate::gpu::{DevicePool, GpuContext};
use crate::model::Activation;
use crate::precision::Precision;
use crate::tensor::Tensor;
use crate::train::cpu::CpuEngine;
use crate::train::engine::{layer_activations, Engine, Params};
use crate::train::{Data, Hyper, Optimizer, Targets, Task, TrainSet};

/// Every usable adapter's context, or none with a printed reason (a failure under
/// `WGPU_ENSEMBLE_REQUIRE_GPU=1`).
fn contexts(test: &str) -> Vec<GpuContext> {
    let mut pool = DevicePool::new(Precision::F32);
    let usable = pool.usable();
    if usable.is_empty() {
        assert!(
            std::env::var("WGPU_ENSEMBLE_REQUIRE_GPU").as_deref() != Ok("1"),
            "{test}: no usable adapter and WGPU_ENSEMBLE_REQUIRE_GPU=1"
        );
        eprintln!("SKIPPED {test}: no usable adapter");
    }
    // Every adapter a device opens on, not only Auto's choice (lavapipe and GL here).
    (0..pool.infos.len())
        .filter_map(|i| pool.open("test", i, 0).ok())
        .inspect(|ctx| eprintln!("{test} on {}", ctx.label))
        .collect()
}

fn set(task: Task, rows: usize, features: usize, seed: u64) -> TrainSet {
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..rows * features)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let y = match task {
        Task::Classification => Targets::Labels(
            x.chunks(features)
                .map(|r| {
                    let s: f32 = r.iter().sum();
                    if s < -0.7 {
                        0
                    } else if s < 0.7 {
                        1
                    } else {
                        2
                    }
                })
                .collect(),
        ),
        _ => Targets::Values(
            Tensor::matrix(
                rows,
                2,
                x.chunks(features)
                    .flat_map(|r| [r[0] * 0.5 - r[1], (r[2] * r[3]).sin()])
                    .collect::<Vec<f32>>(),
            )
            .unwrap(),
        ),
    };
    let data = Data::new(Tensor::matrix(rows, features, x).unwrap(), y).unwrap();
    TrainSet::new(task, data, 0.25, true, seed).unwrap()
}

fn init(sizes: &[usize], seed: u64) -> Vec<Params> {
    let mut rng = StdRng::seed_from_u64(seed);
    sizes
        .windows(2)
        .map(|w| {
            let bound = 1.0 / (w[0] as f32).sqrt();
            Params {
                weight: (0..w[0] * w[1])
                    .map(|_| rng.random_range(-bound..bound))
                    .collect(),
                bias: (0..w[1]).map(|_| rng.random_range(-bound..bound)).collect(),
            }
        })
        .collect()
}

fn engines(
    ctx: &GpuContext,
    task: Task,
    hyper: &Hyper,
    sizes: &[usize],
) -> (TrainSet, CpuEngine, GpuEngine) {
    let set = set(task, 48, sizes[0], 3);
    let init = init(sizes, 5);
    let acts = layer_activations(&vec![hyper.activation; sizes.len() - 2], sizes.len() - 1);
    let cpu = CpuEngine::new(&init, &acts, hyper, &set).unwrap();
    let gpu = GpuEngine::new(ctx.clone(), &init, &acts, hyper, &set).unwrap();
    (set, cpu, gpu)
}

#[track_caller]
fn close(what: &str, gpu: f64, cpu: f64, abs: f64, rel: f64) {
    assert!(
        (gpu - cpu).abs() <= abs + rel * cpu.abs(),
        "{what}: gpu {gpu} cpu {cpu}"
    );
}

fn close_params(what: &str, gpu: &[Params], cpu: &[Params], abs: f64, rel: f64) {
    for (l, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        for (i, (a, b)) in g.weight.iter().zip(&c.weight).enumerate() {
            close(
                &format!("{what} w{l}[{i}]"),
                f64::from(*a),
                f64::from(*b),
                abs,
                rel,
            );
        }
        for (i, (a, b)) in g.bias.iter().zip(&c.bias).enumerate() {
            close(
                &format!("{what} b{l}[{i}]"),
                f64::from(*a),
                f64::from(*b),
                abs,
                rel,
            );
        }
    }
}

fn outputs(task: Task) -> usize {
    match task {
        Task::Classification => 3,
        _ => 2,
    }
}

const ACTS: [Activation; 5] = [
    Activation::Identity,
    Activation::Relu,
    Activation::Tanh,
    Activation::Sigmoid,
    Activation::Gelu,
];

#[test]
fn gradients_of_every_activation_and_loss_match_the_cpu() {
    for ctx in contexts("gradients") {
        for task in [Task::Classification, Task::Regression] {
            for activation in ACTS {
                for weight_decay in [0.0, 0.05] {
                    let hyper = Hyper {
                        activation,
                        weight_decay,
                        ..Hyper::default()
                    };
                    let what = format!("{} {task:?} {activation:?} λ={weight_decay}", ctx.label);
                    let (_, mut cpu, mut gpu) =
                        engines(&ctx, task, &hyper, &[5, 7, 6, outputs(task)]);
                    let rows: Vec<u32> = vec![0, 3, 5, 7, 8, 11, 13, 17, 19, 20, 22, 30, 31, 2, 3];
                    let (lc, gc) = cpu.gradients(&rows).unwrap();
                    let (lg, gg) = gpu.gradients(&rows).unwrap();
                    close(&format!("{what} loss"), lg, lc, 1e-6, 1e-5);
                    close_params(&what, &gg, &gc, 1e-6, 1e-4);
                }
            }
        }
    }
}

#[test]
fn optimizer_steps_and_epochs_match_the_cpu() {
    let optimizers = [
        (
            Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            0.01,
        ),
        (
            Optimizer::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            0.0,
        ),
        (
            Optimizer::Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            0.0,
        ),
        (Optimizer::ADAM, 0.01),
        (Optimizer::ADAMW, 0.05),
    ];
    for ctx in contexts("steps") {
        for task in [Task::Classification, Task::Regression] {
            for (optimizer, weight_decay) in optimizers {
                let hyper = Hyper {
                    activation: Activation::Tanh,
                    optimizer,
                    weight_decay,
                    ..Hyper::default()
                };
                let what = format!("{} {task:?} {optimizer:?}", ctx.label);
                let (set, mut cpu, mut gpu) = engines(&ctx, task, &hyper, &[5, 8, outputs(task)]);
                for (i, rows) in [
                    &[1u32, 2, 3, 4, 5, 6][..],
                    &[7, 9, 11],
                    &[0, 2, 4, 6, 8, 10, 12],
                ]
                .iter()
                .enumerate()
                {
                    let lc = cpu.step(rows, 0.05).unwrap();
                    let lg = gpu.step(rows, 0.05).unwrap();
                    close(&format!("{what} step {i} loss"), lg, lc, 1e-5, 1e-4);
                }
                close_params(
                    &format!("{what} after 3 steps"),
                    &gpu.params().unwrap(),
                    &cpu.params().unwrap(),
                    1e-5,
                    1e-3,
                );
                let n = set.train().rows() as u32;
                let order: Vec<u32> = (0..n).rev().collect();
                for epoch in 0..3 {
                    let lc = cpu.epoch(&order, 5, 0.02).unwrap();
                    let lg = gpu.epoch(&order, 5, 0.02).unwrap();
                    close(&format!("{what} epoch {epoch} loss"), lg, lc, 1e-4, 1e-3);
                }
                close_params(
                    &format!("{what} after 3 epochs"),
                    &gpu.params().unwrap(),
                    &cpu.params().unwrap(),
                    1e-4,
                    1e-2,
                );
                let (ec, eg) = (cpu.evaluate().unwrap(), gpu.evaluate().unwrap());
                close(
                    &format!("{what} evaluation loss"),
                    eg.loss,
                    ec.loss,
                    1e-4,
                    1e-3,
                );
                close(
                    &format!("{what} evaluation metric"),
                    eg.metric,
                    ec.metric,
                    1e-4,
                    1e-3,
                );
            }
        }
    }
}

#[test]
fn bad_rows_are_typed_errors() {
    for ctx in contexts("bad rows") {
        let (_, _, mut gpu) = engines(&ctx, Task::Classification, &Hyper::default(), &[5, 4, 3]);
        assert!(matches!(gpu.step(&[], 0.1), Err(crate::Error::EmptyBatch)));
        assert!(matches!(
            gpu.gradients(&[1, 1000]),
            Err(crate::Error::TrainRow { row: 1000, .. })
        ));
        assert!(matches!(
            gpu.epoch(&[0, 1], 0, 0.1),
            Err(crate::Error::EmptyBatch)
        ));
    }
}

/// 40 epochs of mini-batches (shuffled alike) on the GPU end where the CPU's do: the
/// same training loss within 1 %, the same validation loss and accuracy, and far
/// below where they started.
#[test]
fn a_short_training_converges_like_the_cpu() {
    for ctx in contexts("converges") {
        let hyper = Hyper {
            activation: Activation::Relu,
            optimizer: Optimizer::ADAM,
            ..Hyper::default()
        };
        let s = set(Task::Classification, 240, 5, 9);
        let init = init(&[5, 16, 3], 4);
        let acts = layer_activations(&[Activation::Relu], 2);
        let mut cpu = CpuEngine::new(&init, &acts, &hyper, &s).unwrap();
        let mut gpu = GpuEngine::new(ctx.clone(), &init, &acts, &hyper, &s).unwrap();
        let start = gpu.evaluate().unwrap();
        let mut order: Vec<u32> = (0..s.train().rows() as u32).collect();
        let mut rng = StdRng::seed_from_u64(1);
        let (mut lc, mut lg) = (0.0, 0.0);
        for _ in 0..40 {
            rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
            lc = cpu.epoch(&order, 16, 0.01).unwrap();
            lg = gpu.epoch(&order, 16, 0.01).unwrap();
        }
        let (ec, eg) = (cpu.evaluate().unwrap(), gpu.evaluate().unwrap());
        let what = ctx.label.to_string();
        close(&format!("{what} training loss"), lg, lc, 1e-4, 1e-2);
        close(
            &format!("{what} validation loss"),
            eg.loss,
            ec.loss,
            1e-3,
            2e-2,
        );
        close(&format!("{what} accuracy"), eg.metric, ec.metric, 0.02, 0.0);
        assert!(eg.loss < start.loss * 0.5, "{what}: {start:?} -> {eg:?}");
        assert!(eg.metric > 0.85, "{what}: accuracy {}", eg.metric);
    }
}

/// A lost device is a typed error from the next call, not a panic; on llvmpipe a
/// batch longer than its loop limit allows is refused.
#[test]
fn a_lost_device_and_an_overlong_batch_are_typed_errors() {
    for ctx in contexts("lost device") {
        let (_, _, mut gpu) = engines(&ctx, Task::Classification, &Hyper::default(), &[5, 4, 3]);
        if ctx.label.to_string().contains("llvmpipe") {
            match gpu.step(&vec![0; super::LLVMPIPE_EXTENT + 1], 0.1) {
                Err(crate::Error::InvalidValue {
                    what: "batch size", ..
                }) => {}
                other => panic!("{}: {other:?}", ctx.label),
            }
        }
        gpu.step(&[0, 1, 2], 0.1).unwrap();
        ctx.lose();
        match gpu.epoch(&[0, 1, 2, 3], 2, 0.1) {
            Err(crate::Error::DeviceLost { .. }) => {}
            other => panic!("{}: {other:?}", ctx.label),
        }
        assert!(matches!(gpu.params(), Err(crate::Error::DeviceLost { .. })));
    }
}

/// A split larger than the device's largest storage binding is refused with a typed
/// error naming it (here under a cap of 4 KB: 36 rows of 40 features are 5760 bytes).
#[test]
fn a_split_beyond_the_largest_binding_is_refused() {
    for ctx in contexts("too large") {
        let s = set(Task::Classification, 48, 40, 2);
        let init = init(&[40, 3], 1);
        let spec = super::Spec {
            layers: init
                .iter()
                .map(|p| (p.weight.as_slice(), p.bias.as_slice()))
                .collect(),
            activations: &[Activation::Identity],
            optimizer: Optimizer::ADAM,
            weight_decay: 0.0,
            task: Task::Classification,
            features: 40,
            train: super::raw(s.train()),
            validation: s.validation().map(super::raw),
            max_bytes: Some(4096),
        };
        match GpuEngine::from_spec(ctx.clone(), &spec) {
            Err(crate::Error::BufferTooLarge {
                what,
                bytes: 5760,
                limit: 4096,
                ..
            }) => {
                assert!(what.contains("training split's features"), "{what}");
            }
            Err(other) => panic!("{}: {other:?}", ctx.label),
            Ok(_) => panic!("{}: accepted", ctx.label),
        }
    }
}
