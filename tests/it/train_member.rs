//! Training one member: determinism, convergence, early stopping keeping the best
//! weights, schedules, the export folding the standardisation, and the typed errors of
//! bad data and hyperparameters.

use std::ops::ControlFlow;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wgpu_ensemble::train::{
    train_member, Data, EpochReport, Hyper, Optimizer, Schedule, Targets, Task, TrainSet, Trained,
    Trainer,
};
use wgpu_ensemble::{Activation, Error, Graph, Model, Placement, RunOptions, Session, Tensor};

use crate::common::placement_tests;
use crate::common::train::{labelled, to_f64, valued};

fn go(_: &EpochReport) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn train(hyper: &Hyper, set: &TrainSet, placement: &Placement) -> Trained {
    train_member(hyper, set, placement, &mut go).expect("training")
}

/// Three Gaussian blobs in 4 features (raw scale around 100, so standardising matters).
fn blobs(rows: usize, seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres = [
        [1.0, 0.0, -1.0, 0.5],
        [-1.0, 1.0, 0.0, -0.5],
        [0.0, -1.0, 1.0, 0.0],
    ];
    let mut x = Vec::with_capacity(rows * 4);
    let mut y = Vec::with_capacity(rows);
    for r in 0..rows {
        let c = r % 3;
        for centre in centres[c] {
            let noise: f32 = rng.random_range(-0.6..0.6);
            x.push(100.0 + 10.0 * (centre + noise));
        }
        y.push(c as u32);
    }
    Data::new(Tensor::matrix(rows, 4, x).expect("x"), Targets::Labels(y)).expect("data")
}

fn model_weights(m: &Model) -> Vec<Vec<f32>> {
    m.layers()
        .iter()
        .flat_map(|l| [l.weight().to_vec(), l.bias().to_vec()])
        .collect()
}

/// The same seed gives bit-identical weights twice; another seed other weights.
#[test]
fn train_same_seed_same_weights_cpu() {
    let set = TrainSet::new(Task::Classification, blobs(90, 1), 0.2, true, 3).expect("set");
    let mut hyper = Hyper::default();
    hyper.hidden = vec![8, 6];
    hyper.activation = Activation::Gelu;
    hyper.batch_size = 16;
    hyper.epochs = 4;
    hyper.seed = 21;
    let a = train(&hyper, &set, &Placement::Cpu);
    let b = train(&hyper, &set, &Placement::Cpu);
    assert_eq!(model_weights(&a.model), model_weights(&b.model));
    let progress = |t: &Trained| -> Vec<(usize, f32, f64, f64, f64)> {
        t.history
            .iter()
            .map(|r| {
                (
                    r.epoch,
                    r.learning_rate,
                    r.train_loss,
                    r.validation.loss,
                    r.validation.metric,
                )
            })
            .collect()
    };
    assert_eq!(progress(&a), progress(&b));
    hyper.seed = 22;
    let c = train(&hyper, &set, &Placement::Cpu);
    assert_ne!(model_weights(&a.model), model_weights(&c.model));
}

/// Separable blobs reach 0.95 validation accuracy; the exported model (raw features,
/// softmax) agrees on the validation rows through a session.
pub fn classification_converges(placement: Placement, label: &str) {
    let set = TrainSet::new(Task::Classification, blobs(300, 2), 0.25, true, 4).expect("set");
    let mut hyper = Hyper::default();
    hyper.hidden = vec![16];
    hyper.learning_rate = 0.01;
    hyper.batch_size = 32;
    hyper.epochs = 40;
    let trained = train(&hyper, &set, &placement);
    assert!(
        trained.best.validation.metric >= 0.95,
        "{label}: validation accuracy {}",
        trained.best.validation.metric
    );
    assert_eq!(
        trained.model.layers().last().expect("a layer").activation(),
        Activation::Softmax
    );
    let loss = trained.history.last().expect("an epoch").train_loss;
    assert!(loss < trained.history[0].train_loss, "{label}: loss {loss}");
}

placement_tests!(classification_converges; train_classification_converges_cpu: Cpu);

/// A smooth regression reaches a validation RMSE below 0.1.
pub fn regression_converges(placement: Placement, label: &str) {
    let mut rng = StdRng::seed_from_u64(9);
    let rows = 400;
    let x: Vec<f32> = (0..rows * 2).map(|_| rng.random_range(-2.0..2.0)).collect();
    let y: Vec<f32> = x.chunks(2).map(|r| (r[0]).sin() + 0.5 * r[1]).collect();
    let data = Data::new(
        Tensor::matrix(rows, 2, x).expect("x"),
        Targets::Values(Tensor::new(vec![rows], y).expect("y")),
    )
    .expect("data");
    let set = TrainSet::new(Task::Regression, data, 0.2, true, 1).expect("set");
    let mut hyper = Hyper::default();
    hyper.hidden = vec![32];
    hyper.activation = Activation::Tanh;
    hyper.learning_rate = 0.01;
    hyper.batch_size = 16;
    hyper.epochs = 60;
    hyper.patience = None;
    let trained = train(&hyper, &set, &placement);
    assert!(
        trained.best.validation.metric < 0.1,
        "{label}: validation RMSE {}",
        trained.best.validation.metric
    );
    assert_eq!(trained.epochs_run, 60);
    assert!(!trained.stopped_early);
}

placement_tests!(regression_converges; train_regression_converges_cpu: Cpu);

/// With a `min_delta` no epoch can beat, training stops `patience` epochs after the
/// first and keeps the first epoch's weights: the returned model evaluates to the
/// best epoch's validation loss.
pub fn early_stopping_keeps_the_best(placement: Placement, label: &str) {
    let set =
        TrainSet::new(Task::Classification, labelled(120, 3, 3, 5), 0.25, false, 2).expect("set");
    let mut hyper = Hyper::default();
    hyper.hidden = vec![8];
    hyper.batch_size = 8;
    hyper.learning_rate = 0.01;
    hyper.epochs = 50;
    hyper.patience = Some(3);
    hyper.min_delta = 10.0;
    let trained = train(&hyper, &set, &placement);
    assert!(trained.stopped_early, "{label}");
    assert_eq!((trained.epochs_run, trained.best.epoch), (4, 1), "{label}");
    let mut check = Trainer::from_model(&trained.model, &hyper, &set, &placement).expect("trainer");
    let eval = check.evaluate().expect("evaluation");
    assert!(
        approx::relative_eq!(eval.loss, trained.best.validation.loss, max_relative = 1e-6),
        "{label}: returned model's loss {}, best epoch's {}",
        eval.loss,
        trained.best.validation.loss
    );
    assert!(
        trained.history[3].validation.loss != trained.best.validation.loss,
        "{label}: later epochs trained on"
    );

    // Without min_delta the best is the history's lowest validation loss.
    hyper.min_delta = 0.0;
    hyper.patience = None;
    hyper.epochs = 12;
    let trained = train(&hyper, &set, &placement);
    let lowest = trained
        .history
        .iter()
        .min_by(|a, b| a.validation.loss.total_cmp(&b.validation.loss))
        .expect("epochs");
    assert_eq!(trained.best.epoch, lowest.epoch, "{label}");
    let mut check = Trainer::from_model(&trained.model, &hyper, &set, &placement).expect("trainer");
    let eval = check.evaluate().expect("evaluation");
    assert!(
        approx::relative_eq!(eval.loss, trained.best.validation.loss, max_relative = 1e-6),
        "{label}: {} vs {}",
        eval.loss,
        trained.best.validation.loss
    );
}

placement_tests!(early_stopping_keeps_the_best; train_early_stopping_cpu: Cpu);

/// StepLR and cosine annealing give PyTorch's learning rates, in the reports too.
#[test]
fn train_schedules_learning_rates() {
    let mut hyper = Hyper::default();
    hyper.learning_rate = 0.1;
    hyper.epochs = 10;
    hyper.schedule = Schedule::Step {
        every: 3,
        gamma: 0.5,
    };
    let rates: Vec<f32> = (0..8).map(|e| hyper.learning_rate_at(e)).collect();
    assert_eq!(rates, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]);
    hyper.schedule = Schedule::Cosine { min_lr: 0.01 };
    assert_eq!(hyper.learning_rate_at(0), 0.1);
    assert!((hyper.learning_rate_at(5) - 0.055).abs() < 1e-7);
    assert!((hyper.learning_rate_at(10) - 0.01).abs() < 1e-7);
    assert!(hyper.learning_rate_at(9) > 0.01 && hyper.learning_rate_at(9) < 0.015);

    let set =
        TrainSet::new(Task::Classification, labelled(20, 2, 2, 1), 0.0, false, 0).expect("set");
    hyper.hidden = vec![3];
    hyper.patience = None;
    let trained = train(&hyper, &set, &Placement::Cpu);
    let reported: Vec<f32> = trained.history.iter().map(|r| r.learning_rate).collect();
    let expected: Vec<f32> = (0..10).map(|e| hyper.learning_rate_at(e)).collect();
    assert_eq!(reported, expected);
}

/// The exported model takes raw features: through a session on the CPU, it gives the
/// unfolded network's softmax of the standardised features.
pub fn standardisation_is_folded(placement: Placement, label: &str) {
    let data = blobs(60, 8);
    let raw = data.x().clone();
    let set = TrainSet::new(Task::Classification, data, 0.0, true, 0).expect("set");
    let s = set.standardizer().expect("a standardizer");
    assert!(
        s.mean.iter().all(|&m| (m - 100.0).abs() < 10.0),
        "{:?}",
        s.mean
    );
    let mut hyper = Hyper::default();
    hyper.hidden = vec![5];
    hyper.activation = Activation::Sigmoid;
    let mut trainer = Trainer::new(&hyper, &set, &placement).expect("trainer");
    let order: Vec<u32> = (0..60).collect();
    trainer.epoch(&order, 0.01).expect("an epoch");
    let params = to_f64(&trainer.params().expect("params"));
    let model = trainer.model().expect("the exported model");
    let graph = Graph::builder(4)
        .member("m", model, Placement::Cpu)
        .build()
        .expect("graph");
    let session = Session::new(graph).expect("session");
    let got = session.run(&raw, &RunOptions::default()).expect("run");
    let standardised: Vec<f64> = set
        .train()
        .x()
        .as_slice()
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let logits = crate::common::train::forward64(&params, Activation::Sigmoid, &standardised, 60);
    let want: Vec<f64> = logits
        .chunks(3)
        .flat_map(|z| {
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
            z.iter().map(move |v| (v - m).exp() / s).collect::<Vec<_>>()
        })
        .collect();
    crate::common::assert_close_tol(
        &format!("{label}: folded model"),
        got.aggregate.as_slice(),
        &want,
        1e-5,
        1e-4,
    );
}

placement_tests!(standardisation_is_folded; train_standardisation_folded_cpu: Cpu);

/// A loss that overflows is a typed error naming the epoch; a callback's Break stops
/// with a typed error naming the last epoch.
#[test]
fn train_divergence_and_interruption_cpu() {
    let set = TrainSet::new(Task::Regression, valued(30, 3, 1, 2), 0.2, false, 0).expect("set");
    let mut hyper = Hyper::default();
    hyper.hidden = vec![8];
    hyper.optimizer = Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
    };
    hyper.learning_rate = 1e6;
    hyper.epochs = 20;
    match train_member(&hyper, &set, &Placement::Cpu, &mut go) {
        Err(Error::TrainingDiverged { epoch, .. }) => assert!((1..=20).contains(&epoch)),
        other => panic!("expected TrainingDiverged, got {other:?}"),
    }
    hyper.learning_rate = 1e-3;
    let mut seen = 0;
    let mut stop = |r: &EpochReport| {
        seen = r.epoch;
        if r.epoch == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    match train_member(&hyper, &set, &Placement::Cpu, &mut stop) {
        Err(Error::TrainingInterrupted { epoch: 2 }) => assert_eq!(seen, 2),
        other => panic!("expected TrainingInterrupted after epoch 2, got {other:?}"),
    }
}

/// Bad data and hyperparameters are typed errors naming the key or field.
#[test]
fn train_bad_inputs_are_typed_errors() {
    let x = Tensor::matrix(3, 2, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).expect("x");
    match Data::new(x.clone(), Targets::Labels(vec![0, 1])) {
        Err(Error::DataRows { x: 3, y: 2 }) => {}
        other => panic!("rows differ: {other:?}"),
    }
    let nan = Tensor::matrix(3, 2, vec![0.0, 1.0, 2.0, f32::NAN, 4.0, 5.0]).expect("x");
    match Data::new(nan, Targets::Labels(vec![0, 1, 0])) {
        Err(Error::NonFiniteData {
            key: "x", index, ..
        }) => assert_eq!(index, [1, 1]),
        other => panic!("NaN in x: {other:?}"),
    }
    let inf = Tensor::matrix(3, 1, vec![0.0, f32::INFINITY, 1.0]).expect("y");
    match Data::new(x.clone(), Targets::Values(inf)) {
        Err(Error::NonFiniteData {
            key: "y", index, ..
        }) => assert_eq!(index, [1, 0]),
        other => panic!("inf in y: {other:?}"),
    }
    // Label gaps are fine: labels 0 and 2 give 3 classes.
    let gaps = Data::new(x.clone(), Targets::Labels(vec![0, 2, 0])).expect("gaps");
    assert_eq!(gaps.classes(), Some(3));
    let set = TrainSet::new(Task::Classification, gaps.clone(), 0.0, false, 0).expect("set");
    assert_eq!(set.outputs(), 3);
    match TrainSet::new(Task::Regression, gaps.clone(), 0.0, false, 0) {
        Err(Error::TrainData { key: "y", .. }) => {}
        other => panic!("labels for regression: {other:?}"),
    }
    for fraction in [1.0, -0.1, f64::NAN, 0.9] {
        match TrainSet::new(Task::Classification, gaps.clone(), fraction, false, 0) {
            Err(Error::TrainData {
                key: "validation_fraction",
                ..
            }) => {}
            other => panic!("validation_fraction {fraction}: {other:?}"),
        }
    }
    type Change = fn(&mut Hyper);
    let cases: [(&str, Change); 9] = [
        ("hidden", |h| h.hidden = vec![4, 0]),
        // Beyond train::MAX_PARAMETERS: refused before anything is allocated.
        ("hidden", |h| h.hidden = vec![2_000_000_000]),
        ("hidden", |h| h.hidden = vec![usize::MAX, 2]),
        ("batch_size", |h| h.batch_size = 0),
        ("learning_rate", |h| h.learning_rate = 0.0),
        ("learning_rate", |h| h.learning_rate = -1e-3),
        ("epochs", |h| h.epochs = 0),
        ("activation", |h| h.activation = Activation::Softmax),
        ("optimizer.momentum", |h| {
            h.optimizer = Optimizer::Sgd {
                momentum: 1.0,
                nesterov: false,
            }
        }),
    ];
    for (field, change) in cases {
        let mut hyper = Hyper::default();
        change(&mut hyper);
        match Trainer::new(&hyper, &set, &Placement::Cpu) {
            Err(Error::InvalidHyper { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
        match train_member(&hyper, &set, &Placement::Cpu, &mut go) {
            Err(e @ Error::InvalidHyper { .. }) => {
                assert!(e.to_string().contains(field), "{e}")
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    let mut trainer = Trainer::new(&Hyper::default(), &set, &Placement::Cpu).expect("trainer");
    match trainer.step(&[0, 3], 0.1) {
        Err(Error::TrainRow { row: 3, rows: 3 }) => {}
        other => panic!("row out of range: {other:?}"),
    }
}

/// The validation split is the seed's: the same seed the same rows, another seed other
/// rows; stratified for labels; none with a fraction of 0, and then the evaluation is
/// on the training rows.
#[test]
fn train_split_is_seeded_and_stratified() {
    let rows_of = |set: &TrainSet| set.validation().expect("a split").x().as_slice().to_vec();
    let data = labelled(40, 2, 4, 3);
    let a = TrainSet::new(Task::Classification, data.clone(), 0.25, false, 1).expect("set");
    let b = TrainSet::new(Task::Classification, data.clone(), 0.25, false, 1).expect("set");
    let c = TrainSet::new(Task::Classification, data.clone(), 0.25, false, 2).expect("set");
    assert_eq!(rows_of(&a), rows_of(&b));
    assert_ne!(rows_of(&a), rows_of(&c));
    assert_eq!(
        (a.train().rows(), a.validation().map(Data::rows)),
        (30, Some(10))
    );
    let Targets::Labels(held) = a.validation().expect("a split").y() else {
        panic!("labels")
    };
    for class in 0..4 {
        let n = held.iter().filter(|&&l| l == class).count();
        assert!(
            (2..=3).contains(&n),
            "class {class}: {n} of 10 held-out rows"
        );
    }

    let set = TrainSet::new(Task::Regression, valued(25, 3, 2, 4), 0.0, false, 0).expect("set");
    assert!(set.validation().is_none());
    let mut hyper = Hyper::default();
    hyper.hidden = vec![4];
    let mut trainer = Trainer::new(&hyper, &set, &Placement::Cpu).expect("trainer");
    let all: Vec<u32> = (0..25).collect();
    let eval = trainer.evaluate().expect("evaluation");
    let mut reference = Trainer::new(&hyper, &set, &Placement::Cpu).expect("trainer");
    let params = to_f64(&reference.params().expect("params"));
    let (x, y) = crate::common::train::batch64(set.train(), &all);
    let want = crate::common::train::loss64(&params, Activation::Relu, &x, 25, &y, 0.0);
    assert!(
        approx::relative_eq!(eval.loss, want, max_relative = 1e-5),
        "evaluation on the training rows: {} vs {want}",
        eval.loss
    );
    assert!(
        (eval.metric - want.sqrt()).abs() < 1e-5,
        "RMSE {}",
        eval.metric
    );

    // One class is not a classification.
    let one = Data::new(
        Tensor::matrix(2, 1, vec![0.0, 1.0]).expect("x"),
        Targets::Labels(vec![0, 0]),
    )
    .expect("data");
    match TrainSet::new(Task::Classification, one, 0.0, false, 0) {
        Err(Error::TrainData { key: "y", .. }) => {}
        other => panic!("one class: {other:?}"),
    }
}

/// A trainer started from a model that takes raw features (an exported member) on a
/// standardising set computes that model's function before any step: `model()` gives
/// its weights back.
#[test]
fn train_from_model_round_trips_through_the_standardisation() {
    let set = TrainSet::new(Task::Classification, blobs(60, 4), 0.2, true, 1).expect("set");
    let initial =
        Model::random(&[4, 5, 3], &[Activation::Tanh, Activation::Softmax], 9).expect("model");
    let mut trainer =
        Trainer::from_model(&initial, &Hyper::default(), &set, &Placement::Cpu).expect("trainer");
    let back = trainer.model().expect("model");
    for (l, (got, want)) in model_weights(&back)
        .iter()
        .zip(model_weights(&initial))
        .enumerate()
    {
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4 + 1e-4 * w.abs(),
                "part {l}: {g} after the round trip, {w} before"
            );
        }
    }
}

/// A label far beyond the others (a `-1` cast to u32) is an error naming `y`, not an
/// output layer of four billion classes.
#[test]
fn train_huge_label_is_refused() {
    let x = Tensor::matrix(3, 1, vec![0.0, 1.0, 2.0]).expect("x");
    let data = Data::new(x, Targets::Labels(vec![0, 1, u32::MAX])).expect("data");
    match TrainSet::new(Task::Classification, data, 0.0, false, 0) {
        Err(Error::TrainData { key: "y", .. }) => {}
        other => panic!("label 4294967295: {other:?}"),
    }
}

/// A learning rate given to a step or an epoch that is not finite or negative is an
/// error naming it; the weights are left as they were.
#[test]
fn train_step_learning_rate_is_checked() {
    let set = TrainSet::new(Task::Classification, blobs(30, 2), 0.0, true, 1).expect("set");
    let mut trainer = Trainer::new(&Hyper::default(), &set, &Placement::Cpu).expect("trainer");
    let before = trainer.params().expect("params");
    let order: Vec<u32> = (0..30).collect();
    for lr in [f32::NAN, f32::INFINITY, -0.1] {
        match trainer.step(&[0, 1, 2], lr) {
            Err(Error::InvalidHyper {
                field: "learning_rate",
                ..
            }) => {}
            other => panic!("a step at {lr}: {other:?}"),
        }
        match trainer.epoch(&order, lr) {
            Err(Error::InvalidHyper {
                field: "learning_rate",
                ..
            }) => {}
            other => panic!("an epoch at {lr}: {other:?}"),
        }
    }
    assert_eq!(trainer.params().expect("params"), before);
    trainer.step(&[0, 1, 2], 0.0).expect("a step at 0");
}
