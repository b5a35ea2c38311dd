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

/// A GPU engine on `set` whose buffers are capped at `max_bytes` (splits beyond it are
/// streamed), and the CPU engine, from the same initial layers.
fn capped(
    ctx: &GpuContext,
    set: &TrainSet,
    hyper: &Hyper,
    sizes: &[usize],
    max_bytes: u64,
    tile: Option<usize>,
) -> (CpuEngine, crate::Result<GpuEngine>) {
    let init = init(sizes, 5);
    let acts = layer_activations(&vec![hyper.activation; sizes.len() - 2], sizes.len() - 1);
    let cpu = CpuEngine::new(&init, &acts, hyper, set).unwrap();
    let spec = super::Spec {
        layers: init
            .iter()
            .map(|p| (p.weight.as_slice(), p.bias.as_slice()))
            .collect(),
        activations: &acts,
        optimizer: hyper.optimizer,
        weight_decay: hyper.weight_decay,
        task: set.task(),
        features: set.features(),
        train: super::raw(set.train()),
        validation: set.validation().map(super::raw),
        max_bytes: Some(max_bytes),
        tile,
    };
    (cpu, GpuEngine::from_spec(ctx.clone(), &spec))
}

/// A training split beyond the largest storage binding (capped at 512 bytes: 36 rows
/// of 5 features are 720) is streamed through a window of 25 rows, a chunk of batches
/// at a time, and trains as the CPU does: steps, epochs, evaluation (streamed too
/// without a validation split), with the kernels' tiles of 8 and of 16; a batch longer
/// than the window is refused.
#[test]
fn a_split_beyond_the_largest_binding_is_streamed() {
    for ctx in contexts("streamed") {
        for task in [Task::Classification, Task::Regression] {
            for (fraction, tile) in [(0.25, 8), (0.0, 8), (0.25, 16), (0.0, 16)] {
                let what = format!("{} {task:?} validation {fraction} tile {tile}", ctx.label);
                let hyper = Hyper {
                    activation: Activation::Tanh,
                    optimizer: Optimizer::ADAM,
                    weight_decay: 0.01,
                    ..Hyper::default()
                };
                let full = set(task, 48, 5, 3);
                let s = TrainSet::new(task, full.train().clone(), fraction, false, 1).unwrap();
                let (mut cpu, gpu) =
                    capped(&ctx, &s, &hyper, &[5, 8, outputs(task)], 512, Some(tile));
                let mut gpu = gpu.unwrap();
                assert!(gpu.train.host.is_some(), "{what}: not streamed");
                assert_eq!(gpu.tile, tile, "{what}");
                for rows in [
                    &[1u32, 2, 3, 4, 5, 6][..],
                    &[7, 9, 11],
                    &[0, 2, 4, 6, 8, 10, 12],
                ] {
                    let (lc, lg) = (cpu.step(rows, 0.05).unwrap(), gpu.step(rows, 0.05).unwrap());
                    close(&format!("{what} step loss"), lg, lc, 1e-5, 1e-4);
                }
                let n = s.train().rows() as u32;
                let order: Vec<u32> = (0..n).rev().collect();
                for epoch in 0..3 {
                    let lc = cpu.epoch(&order, 5, 0.02).unwrap();
                    let lg = gpu.epoch(&order, 5, 0.02).unwrap();
                    close(&format!("{what} epoch {epoch} loss"), lg, lc, 1e-4, 1e-3);
                }
                close_params(
                    &what,
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
                match gpu.step(&[0; 26], 0.1) {
                    Err(crate::Error::BufferTooLarge { what: w, .. }) => {
                        assert!(w.contains("streamed batch of 26 rows"), "{w}");
                    }
                    other => panic!("{what}: 26 rows gave {other:?}"),
                }
            }
        }
    }
}

/// A row larger than the largest binding cannot be streamed: refused with a typed error
/// naming the split (a cap of 8 bytes, below one row of 5 features).
#[test]
fn a_row_beyond_the_largest_binding_is_refused() {
    for ctx in contexts("too large") {
        let s = set(Task::Classification, 48, 5, 2);
        let (_, gpu) = capped(&ctx, &s, &Hyper::default(), &[5, 3], 8, None);
        match gpu {
            Err(crate::Error::BufferTooLarge { what, .. }) => {
                assert!(what.contains("layer 0") || what.contains("split"), "{what}");
            }
            Err(other) => panic!("{}: {other:?}", ctx.label),
            Ok(_) => panic!("{}: accepted", ctx.label),
        }
    }
}
