//! Training on the GPU engine (`src/train/gpu/`), on every usable adapter of each
//! backend (lavapipe and GL's llvmpipe without a GPU): the placement-taking bodies of
//! `train_grad`, `train_optim` and `train_member` (gradients against f64 finite
//! differences, optimizer steps against the numpy fixture, convergence, early
//! stopping, the folded standardisation), and the GPU against the CPU engine after a
//! few steps and epochs. Skipped with a printed reason without an adapter, failed under
//! `WGPU_ENSEMBLE_REQUIRE_GPU=1`.

use wgpu_ensemble::train::{Hyper, Optimizer, Params, Task, TrainSet, Trainer};
use wgpu_ensemble::{Activation, Error, Placement};

use crate::common::placement_tests;
use crate::common::train::{labelled, to_f64, valued};

placement_tests!(crate::train_grad::gradients_match_finite_differences;
    train_gradients_lavapipe: Vulkan, train_gradients_gl: Gl);
placement_tests!(crate::train_optim::steps_match_numpy;
    train_steps_match_numpy_lavapipe: Vulkan, train_steps_match_numpy_gl: Gl);
placement_tests!(crate::train_member::classification_converges;
    train_classification_converges_lavapipe: Vulkan, train_classification_converges_gl: Gl);
placement_tests!(crate::train_member::regression_converges;
    train_regression_converges_lavapipe: Vulkan, train_regression_converges_gl: Gl);
placement_tests!(crate::train_member::early_stopping_keeps_the_best;
    train_early_stopping_lavapipe: Vulkan, train_early_stopping_gl: Gl);
placement_tests!(crate::train_member::standardisation_is_folded;
    train_standardisation_folded_lavapipe: Vulkan, train_standardisation_folded_gl: Gl);

#[track_caller]
fn assert_close(what: &str, gpu: &[Params], cpu: &[Params], abs: f64, rel: f64) {
    for (l, (g, c)) in to_f64(gpu).iter().zip(to_f64(cpu)).enumerate() {
        for (kind, got, want) in [("weight", &g.weight, &c.weight), ("bias", &g.bias, &c.bias)] {
            assert_eq!(got.len(), want.len(), "{what}: layer {l} {kind}");
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert!(
                    (a - b).abs() <= abs + rel * b.abs(),
                    "{what}: layer {l} {kind}[{i}]: gpu {a}, cpu {b}"
                );
            }
        }
    }
}

/// The same seeded trainer on the GPU and on the CPU: every optimizer's steps, a few
/// epochs and the evaluation agree within f32 summation-order tolerance, for both
/// tasks; the trainer names its adapter.
pub fn gpu_agrees_with_cpu(placement: Placement, label: &str) {
    let optimizers = [
        (Optimizer::SGD, 0.01),
        (
            Optimizer::Sgd {
                momentum: 0.8,
                nesterov: true,
            },
            0.0,
        ),
        (Optimizer::ADAM, 0.01),
        (Optimizer::ADAMW, 0.05),
    ];
    for task in [Task::Classification, Task::Regression] {
        let data = match task {
            Task::Classification => labelled(60, 6, 3, 21),
            _ => valued(60, 6, 2, 22),
        };
        let set = TrainSet::new(task, data, 0.25, true, 3).expect("a training set");
        for (optimizer, weight_decay) in optimizers {
            let what = format!("{label}: {task:?} {optimizer:?}");
            let mut hyper = Hyper::default();
            hyper.hidden = vec![9, 5];
            hyper.activation = Activation::Gelu;
            hyper.optimizer = optimizer;
            hyper.weight_decay = weight_decay;
            hyper.batch_size = 7;
            hyper.seed = 11;
            let mut gpu = Trainer::new(&hyper, &set, &placement).expect("a GPU trainer");
            let mut cpu = Trainer::new(&hyper, &set, &Placement::Cpu).expect("a CPU trainer");
            assert_ne!(gpu.device(), "cpu", "{what}");
            for rows in [
                &[0u32, 1, 2, 3, 4][..],
                &[5, 9, 13],
                &[2, 4, 6, 8, 10, 12, 14, 16],
            ] {
                let (g, c) = (gpu.step(rows, 0.03), cpu.step(rows, 0.03));
                let (g, c) = (g.expect("a GPU step"), c.expect("a CPU step"));
                assert!(
                    (g - c).abs() <= 1e-5 + 1e-4 * c.abs(),
                    "{what}: step loss {g} vs {c}"
                );
            }
            assert_close(
                &format!("{what}, after 3 steps"),
                &gpu.params().expect("params"),
                &cpu.params().expect("params"),
                1e-5,
                1e-3,
            );
            let order: Vec<u32> = (0..set.train().rows() as u32).rev().collect();
            for epoch in 0..3 {
                let g = gpu.epoch(&order, 0.01).expect("a GPU epoch");
                let c = cpu.epoch(&order, 0.01).expect("a CPU epoch");
                assert!(
                    (g - c).abs() <= 1e-4 + 1e-3 * c.abs(),
                    "{what}: epoch {epoch} loss {g} vs {c}"
                );
            }
            let (g, c) = (gpu.evaluate().expect("eval"), cpu.evaluate().expect("eval"));
            assert!(
                (g.loss - c.loss).abs() <= 1e-4 + 1e-3 * c.loss,
                "{what}: {g:?} vs {c:?}"
            );
            assert!(
                (g.metric - c.metric).abs() <= 1e-3 + 1e-3 * c.metric,
                "{what}: {g:?} vs {c:?}"
            );
        }
    }
}

placement_tests!(gpu_agrees_with_cpu;
    train_gpu_agrees_with_cpu_lavapipe: Vulkan, train_gpu_agrees_with_cpu_gl: Gl);

/// Bad rows are typed errors on the GPU as on the CPU; an adapter that does not exist
/// is refused by name.
pub fn bad_requests_are_typed_errors(placement: Placement, label: &str) {
    let set = TrainSet::new(Task::Classification, labelled(20, 3, 2, 1), 0.0, false, 0)
        .expect("a training set");
    let mut trainer = Trainer::new(&Hyper::default(), &set, &placement).expect("a trainer");
    assert!(
        matches!(trainer.step(&[], 0.1), Err(Error::EmptyBatch)),
        "{label}: an empty batch"
    );
    match trainer.gradients(&[0, 20]) {
        Err(Error::TrainRow { row: 20, rows: 20 }) => {}
        other => panic!("{label}: row 20 of 20 gave {other:?}"),
    }
    match Trainer::new(&Hyper::default(), &set, &Placement::Adapter(1000)) {
        Err(Error::AdapterOutOfRange { index: 1000, .. }) => {}
        other => panic!("{label}: adapter 1000 gave {other:?}"),
    }
}

placement_tests!(bad_requests_are_typed_errors;
    train_gpu_bad_requests_lavapipe: Vulkan, train_gpu_bad_requests_gl: Gl);

/// The same seed trains to bit-identical weights on the same adapter twice: every sum
/// on the device has one order (no atomics).
pub fn same_seed_same_weights(placement: Placement, label: &str) {
    let set = TrainSet::new(Task::Classification, labelled(80, 4, 3, 5), 0.25, true, 2)
        .expect("a training set");
    let mut hyper = Hyper::default();
    hyper.hidden = vec![8];
    hyper.batch_size = 16;
    hyper.epochs = 5;
    hyper.seed = 3;
    let run = || {
        let mut go = |_: &wgpu_ensemble::train::EpochReport| std::ops::ControlFlow::Continue(());
        let trained = wgpu_ensemble::train::train_member(&hyper, &set, &placement, &mut go)
            .expect("a training");
        assert_ne!(trained.device, "cpu", "{label}");
        trained
            .model
            .layers()
            .iter()
            .flat_map(|l| {
                l.weight()
                    .as_slice()
                    .iter()
                    .chain(l.bias())
                    .map(|v| v.to_bits())
            })
            .collect::<Vec<u32>>()
    };
    assert_eq!(run(), run(), "{label}: two trainings with one seed differ");
}

placement_tests!(same_seed_same_weights;
    train_gpu_same_seed_same_weights_lavapipe: Vulkan, train_gpu_same_seed_same_weights_gl: Gl);

/// A batch's per-layer buffers are sized to the batch where a power of two of rows
/// would exceed the device's largest storage binding (128 MiB on llvmpipe): 4100 rows
/// through 4097 units (67 MB) train; 8192 rows (134 MB) are a typed error before any
/// work, and the trainer goes on training afterwards.
pub fn row_buffers_fit_the_binding(placement: Placement, label: &str) {
    let rows = 8192;
    let set = TrainSet::new(Task::Classification, labelled(rows, 1, 2, 4), 0.0, false, 0)
        .expect("a training set");
    let mut hyper = Hyper::default();
    hyper.hidden = vec![4097];
    let mut trainer = Trainer::new(&hyper, &set, &placement).expect("a trainer");
    let all: Vec<u32> = (0..rows as u32).collect();
    let loss = trainer.step(&all[..4100], 0.01);
    assert!(
        loss.as_ref().is_ok_and(|l| l.is_finite()),
        "{label}: 4100 rows gave {loss:?}"
    );
    match trainer.step(&all, 0.01) {
        Err(Error::BufferTooLarge { what, .. }) => {
            assert!(what.contains("8192 rows"), "{label}: {what}")
        }
        other => panic!("{label}: 8192 rows through 4097 units gave {other:?}"),
    }
    let loss = trainer.step(&all[..64], 0.01);
    assert!(
        loss.as_ref().is_ok_and(|l| l.is_finite()),
        "{label}: 64 rows after the refusal gave {loss:?}"
    );
}

placement_tests!(row_buffers_fit_the_binding;
    train_gpu_row_buffers_lavapipe: Vulkan, train_gpu_row_buffers_gl: Gl);

/// An epoch whose order holds a row beyond the training rows, in its last batch
/// only, is refused before any step: the parameters (and the optimizer's state, seen
/// through the next epoch's loss) are as before.
pub fn a_refused_epoch_changes_nothing(placement: Placement, label: &str) {
    let set = TrainSet::new(Task::Classification, labelled(20, 3, 2, 1), 0.0, false, 0)
        .expect("a training set");
    let mut hyper = Hyper::default();
    hyper.batch_size = 4;
    let mut trainer = Trainer::new(&hyper, &set, &placement).expect("a trainer");
    let mut twin = Trainer::new(&hyper, &set, &placement).expect("a trainer");
    let before = trainer.params().expect("the parameters");
    let mut order: Vec<u32> = (0..20).collect();
    order.push(20);
    match trainer.epoch(&order, 0.1) {
        Err(Error::TrainRow { row: 20, rows: 20 }) => {}
        other => panic!("{label}: row 20 of 20 in the last batch gave {other:?}"),
    }
    let after = trainer.params().expect("the parameters");
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.weight, a.weight, "{label}: the weights changed");
        assert_eq!(b.bias, a.bias, "{label}: the biases changed");
    }
    let good: Vec<u32> = (0..20).collect();
    let (l, t) = (trainer.epoch(&good, 0.1), twin.epoch(&good, 0.1));
    assert_eq!(
        l.expect("an epoch").to_bits(),
        t.expect("an epoch").to_bits(),
        "{label}: the next epoch differs from a trainer that was never refused"
    );
}

placement_tests!(a_refused_epoch_changes_nothing;
    a_refused_epoch_changes_nothing_cpu: Cpu,
    a_refused_epoch_changes_nothing_lavapipe: Vulkan,
    a_refused_epoch_changes_nothing_gl: Gl);
