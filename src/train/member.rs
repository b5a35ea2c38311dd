//! Training one member: the public stepping API ([`Trainer`]) and the loop every
//! engine shares ([`train_member`]): seeded shuffling every epoch, the learning-rate
//! schedule, early stopping keeping the best weights, progress once per epoch, and the
//! export of the result as an inference [`Model`].

use std::ops::ControlFlow;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{Error, Result};
use crate::model::{Activation, Model};
use crate::placement::Placement;
use crate::tensor::Tensor;
use crate::train::data::{try_vec, Standardizer};
use crate::train::engine::{engine, layer_activations, Engine, Evaluation, Params};
use crate::train::{Hyper, Optimizer, Schedule, Task, TrainSet};

/// Added to [`Hyper::seed`] to seed the shuffling, so that its stream is not the
/// initialisation's.
const SHUFFLE_STREAM: u64 = 0x9E37_79B9_7F4A_7C15;

/// A member being trained on one placement, step by step: the weights and the
/// optimizer's state stay on the placement's device between calls.
pub struct Trainer {
    engine: Box<dyn Engine>,
    hyper: Hyper,
    task: Task,
    standardizer: Option<Standardizer>,
    /// One per layer, the last `Identity` (the export gives it softmax or identity).
    activations: Vec<Activation>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("device", &self.engine.device())
            .field("hyper", &self.hyper)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

/// The most parameters (weights and biases) a trained member may have: 2^28, 1 GiB of
/// f32 weights, four times that with the gradients and Adam's two moments.
pub const MAX_PARAMETERS: usize = 1 << 28;

/// An error naming `hidden` when the layers of `widths` hold more than
/// [`MAX_PARAMETERS`] (rather than an allocation that the system grants and then
/// kills the process for).
fn check_size(widths: &[usize]) -> Result<()> {
    let count = widths.windows(2).try_fold(0usize, |sum, w| {
        w[0].checked_add(1)
            .and_then(|inputs| inputs.checked_mul(w[1]))
            .and_then(|layer| sum.checked_add(layer))
    });
    match count {
        Some(n) if n <= MAX_PARAMETERS => Ok(()),
        _ => Err(Error::InvalidHyper {
            field: "hidden",
            expected: "at most 268435456 (2^28) weights and biases in all",
            got: format!(
                "{} for the widths {widths:?}",
                count.map_or("more than 2^64".to_string(), |n| n.to_string())
            ),
        }),
    }
}

impl Trainer {
    /// A member of `hyper`'s architecture (the set's features, `hyper.hidden`, the
    /// set's outputs) initialised from `hyper.seed` as [`Model::random`], on
    /// `placement`. An error for hyperparameters out of their range
    /// ([`Error::InvalidHyper`] naming the field) or a placement that cannot train.
    pub fn new(hyper: &Hyper, set: &TrainSet, placement: &Placement) -> Result<Trainer> {
        hyper.validate()?;
        let mut widths = Vec::with_capacity(hyper.hidden.len() + 2);
        widths.push(set.features());
        widths.extend_from_slice(&hyper.hidden);
        widths.push(set.outputs());
        check_size(&widths)?;
        let hidden = vec![hyper.activation; hyper.hidden.len()];
        let activations = layer_activations(&hidden, widths.len() - 1);
        let model = Model::random(&widths, &activations, hyper.seed)?;
        Self::start(model_params(&model), activations, hyper, set, placement)
    }

    /// A member starting from the weights of `initial` (its architecture and hidden
    /// activations; `hyper.hidden` and `hyper.activation` are not used, and its output
    /// layer's activation is replaced by the task's). `initial` takes raw features, as
    /// exported members do: on a standardising set its first layer is unfolded
    /// (`W = W'·σ`, `b = b' + W'·μ`) so that training starts from its function,
    /// and [`Trainer::model`] before any step gives it back. Trained with `hyper`'s other
    /// settings on `placement`. An error when `initial` does not take the set's
    /// features, does not give its outputs, or has a softmax hidden layer.
    pub fn from_model(
        initial: &Model,
        hyper: &Hyper,
        set: &TrainSet,
        placement: &Placement,
    ) -> Result<Trainer> {
        let layers = initial.layers();
        let mut check = hyper.clone();
        check.hidden = layers[..layers.len() - 1]
            .iter()
            .map(|l| l.out_features())
            .collect();
        // The initial model's own activations are checked below.
        check.activation = Activation::Identity;
        check.validate()?;
        let hidden: Vec<Activation> = layers[..layers.len() - 1]
            .iter()
            .map(|l| l.activation())
            .collect();
        if let Some(l) = hidden.iter().position(|a| !trainable(*a)) {
            return Err(Error::InvalidHyper {
                field: "activation",
                expected: "identity, relu, tanh, sigmoid or gelu in hidden layers",
                got: format!("{} in layer {l} of the initial model", hidden[l]),
            });
        }
        if initial.in_features() != set.features() {
            return Err(Error::FeatureWidth {
                expected: set.features(),
                got: initial.in_features(),
            });
        }
        if initial.out_features() != set.outputs() {
            return Err(Error::LayerShape {
                layer: layers.len() - 1,
                what: "the initial model's outputs must equal the task's outputs (classes or target width)",
                expected: vec![set.outputs()],
                got: vec![initial.out_features()],
            });
        }
        let activations = layer_activations(&hidden, layers.len());
        let mut init = model_params(initial);
        // `initial` takes raw features; the engines see standardised ones: unfold the
        // standardisation the export folds in (W = W'·σ, b = b' + W'·μ).
        if let (Some(first), Some(s)) = (init.first_mut(), set.standardizer()) {
            let inputs = set.features().max(1);
            for (row, b) in first.weight.chunks_mut(inputs).zip(first.bias.iter_mut()) {
                let mut shift = f64::from(*b);
                for ((w, &m), &sd) in row.iter_mut().zip(&s.mean).zip(&s.std) {
                    shift += f64::from(*w) * f64::from(m);
                    *w = (f64::from(*w) * f64::from(sd)) as f32;
                }
                *b = shift as f32;
            }
        }
        Self::start(init, activations, hyper, set, placement)
    }

    fn start(
        init: Vec<Params>,
        activations: Vec<Activation>,
        hyper: &Hyper,
        set: &TrainSet,
        placement: &Placement,
    ) -> Result<Trainer> {
        let engine = engine(&init, &activations, hyper, set, placement)?;
        Ok(Trainer {
            engine,
            hyper: hyper.clone(),
            task: set.task(),
            standardizer: set.standardizer().cloned(),
            activations,
        })
    }

    /// The loss and the gradients (one [`Params`] per layer) of the training rows
    /// `rows` as one batch, without a step. The loss includes the L2 term
    /// `(λ/2)·Σ‖W‖²` for SGD and Adam with weight decay (not for AdamW).
    pub fn gradients(&mut self, rows: &[u32]) -> Result<(f64, Vec<Params>)> {
        self.engine.gradients(rows)
    }

    /// One optimizer step on the training rows `rows` as one batch at learning rate
    /// `lr` (finite, `>= 0`, else [`Error::InvalidHyper`]); returns the batch's loss
    /// before the step.
    pub fn step(&mut self, rows: &[u32], lr: f32) -> Result<f64> {
        check_lr(lr)?;
        self.engine.step(rows, lr)
    }

    /// One epoch: the training rows in `order`, in mini-batches of the
    /// hyperparameters' `batch_size`, one step each at `lr`; returns the mean loss.
    pub fn epoch(&mut self, order: &[u32], lr: f32) -> Result<f64> {
        check_lr(lr)?;
        self.engine.epoch(order, self.hyper.batch_size, lr)
    }

    /// The loss and metric on the validation split (the training split without one).
    pub fn evaluate(&mut self) -> Result<Evaluation> {
        self.engine.evaluate()
    }

    /// The current parameters, one per layer (on the standardised features when the
    /// set standardises).
    pub fn params(&mut self) -> Result<Vec<Params>> {
        self.engine.params()
    }

    /// The trained network as an inference [`Model`] taking raw features: the
    /// standardisation folded into the first layer (`W' = W/σ`, `b' = b − W·(μ/σ)`), the
    /// output layer's activation softmax for classification, identity for regression.
    pub fn model(&mut self) -> Result<Model> {
        let params = self.engine.params()?;
        export(
            &params,
            &self.activations,
            self.task,
            self.standardizer.as_ref(),
        )
    }

    /// Where it trains, for records (`cpu`, `adapter 0 (…)`).
    pub fn device(&self) -> String {
        self.engine.device()
    }
}

/// A learning rate given to a step: finite and `>= 0` (0 leaves the weights).
fn check_lr(lr: f32) -> Result<()> {
    if lr >= 0.0 && lr.is_finite() {
        return Ok(());
    }
    Err(Error::InvalidHyper {
        field: "learning_rate",
        expected: "a finite value >= 0",
        got: lr.to_string(),
    })
}

/// Every layer's weights and bias.
fn model_params(model: &Model) -> Vec<Params> {
    model
        .layers()
        .iter()
        .map(|l| Params {
            weight: l.weight().to_vec(),
            bias: l.bias().to_vec(),
        })
        .collect()
}

/// Whether an activation has a backward pass in hidden layers.
fn trainable(a: Activation) -> bool {
    !matches!(a, Activation::Softmax)
}

/// `params` as an inference model: the standardisation folded into the first layer,
/// the output activation from the task.
fn export(
    params: &[Params],
    activations: &[Activation],
    task: Task,
    standardizer: Option<&Standardizer>,
) -> Result<Model> {
    let mut parts = Vec::with_capacity(params.len());
    let mut inputs = params
        .first()
        .map_or(0, |p| p.weight.len() / p.bias.len().max(1));
    for (l, (p, &act)) in params.iter().zip(activations).enumerate() {
        let outputs = p.bias.len();
        let (mut weight, mut bias) = (p.weight.clone(), p.bias.clone());
        if let (0, Some(s)) = (l, standardizer) {
            for (row, b) in weight.chunks_mut(inputs.max(1)).zip(bias.iter_mut()) {
                let mut shift = f64::from(*b);
                for ((w, &m), &sd) in row.iter_mut().zip(&s.mean).zip(&s.std) {
                    let scaled = f64::from(*w) / f64::from(sd);
                    shift -= scaled * f64::from(m);
                    *w = scaled as f32;
                }
                *b = shift as f32;
            }
        }
        let act = if l + 1 == params.len() {
            match task {
                Task::Classification => Activation::Softmax,
                _ => Activation::Identity,
            }
        } else {
            act
        };
        parts.push((Tensor::matrix(outputs, inputs, weight)?, bias, act));
        inputs = outputs;
    }
    Model::from_parts(parts)
}

/// One epoch's progress.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Its learning rate.
    pub learning_rate: f32,
    /// The mean training loss over its mini-batches (with the L2 term where it applies).
    pub train_loss: f64,
    /// The loss and metric on the validation split after it (the training split without
    /// one).
    pub validation: Evaluation,
    /// Its wall time, evaluation included.
    pub seconds: f64,
}

/// A trained member.
#[derive(Clone, Debug)]
pub struct Trained {
    /// The best epoch's weights as an inference model taking raw features (see
    /// [`Trainer::model`]).
    pub model: Model,
    /// The best epoch: the lowest validation loss (improvements smaller than
    /// `min_delta` not counting).
    pub best: EpochReport,
    /// Epochs run.
    pub epochs_run: usize,
    /// Every epoch's report, in order.
    pub history: Vec<EpochReport>,
    /// Where it trained.
    pub device: String,
    /// Wall time of the whole training.
    pub seconds: f64,
    /// Whether early stopping ended it before `hyper.epochs`.
    pub stopped_early: bool,
}

/// Trains one member of `hyper` on `set`'s training split on `placement`.
///
/// Every epoch the training rows are shuffled (a stream of `hyper.seed` separate from
/// the initialisation's), run in mini-batches at the schedule's learning rate
/// ([`Hyper::learning_rate_at`]), and the member is evaluated on the validation split
/// (the training split without one). The weights of the epoch with the lowest
/// validation loss are kept (an improvement must exceed `min_delta`); with
/// `patience`, training stops after that many epochs without one. `on_epoch` sees every
/// epoch's report; returning [`ControlFlow::Break`] stops the training with
/// [`Error::TrainingInterrupted`].
///
/// Errors: hyperparameters out of range ([`Error::InvalidHyper`] naming the field), a
/// NaN or infinite loss ([`Error::TrainingDiverged`] naming the epoch), a placement that
/// cannot train, a device's errors.
///
/// ```
/// use std::ops::ControlFlow;
/// use wgpu_ensemble::train::{train_member, Data, Hyper, Targets, Task, TrainSet};
/// use wgpu_ensemble::{Graph, Placement, RunOptions, Session, Tensor};
///
/// // Two classes: is x0 + x1 positive?
/// let rows: Vec<[f32; 2]> = (0..200)
///     .map(|i| [((i * 37) % 100) as f32 / 50.0 - 1.0, ((i * 61) % 100) as f32 / 50.0 - 1.0])
///     .collect();
/// let labels = rows.iter().map(|r| u32::from(r[0] + r[1] > 0.0)).collect();
/// let x = Tensor::matrix(200, 2, rows.concat())?;
/// let data = Data::new(x, Targets::Labels(labels))?;
/// let set = TrainSet::new(Task::Classification, data, 0.2, true, 7)?;
///
/// let mut hyper = Hyper::default();
/// hyper.hidden = vec![8];
/// hyper.learning_rate = 0.05;
/// hyper.batch_size = 16;
/// hyper.epochs = 30;
/// let trained = train_member(&hyper, &set, &Placement::Cpu, &mut |_| ControlFlow::Continue(()))?;
/// assert!(trained.best.validation.metric > 0.9);
///
/// // The model takes raw features and ends in softmax.
/// let graph = Graph::builder(2)
///     .member("m", trained.model, Placement::Cpu)
///     .build()?;
/// let session = Session::new(graph)?;
/// let out = session.run(&Tensor::matrix(1, 2, vec![0.9, 0.8])?, &RunOptions::default())?;
/// assert!(out.aggregate.as_slice()[1] > 0.5);
/// # Ok::<(), wgpu_ensemble::Error>(())
/// ```
pub fn train_member(
    hyper: &Hyper,
    set: &TrainSet,
    placement: &Placement,
    on_epoch: &mut dyn FnMut(&EpochReport) -> ControlFlow<()>,
) -> Result<Trained> {
    let started = Instant::now();
    let mut trainer = Trainer::new(hyper, set, placement)?;
    let mut rng = StdRng::seed_from_u64(hyper.seed.wrapping_add(SHUFFLE_STREAM));
    let n = set.train().rows();
    let n32 = u32::try_from(n).map_err(|_| Error::TrainData {
        key: "x",
        expected: "at most 4294967295 training rows".into(),
        got: format!("{n} rows"),
    })?;
    let mut order: Vec<u32> = try_vec(n, "x")?;
    order.extend(0..n32);
    let mut history: Vec<EpochReport> = Vec::new();
    let mut best: Option<(EpochReport, Vec<Params>)> = None;
    let mut since_best = 0usize;
    let mut stopped_early = false;
    for e in 0..hyper.epochs {
        let epoch = e + 1;
        let t0 = Instant::now();
        let lr = hyper.learning_rate_at(e);
        order.shuffle(&mut rng);
        let train_loss = trainer.epoch(&order, lr)?;
        if !train_loss.is_finite() {
            return Err(Error::TrainingDiverged {
                epoch,
                what: "training",
                loss: train_loss,
            });
        }
        let validation = trainer.evaluate()?;
        if !validation.loss.is_finite() {
            return Err(Error::TrainingDiverged {
                epoch,
                what: "validation",
                loss: validation.loss,
            });
        }
        let report = EpochReport {
            epoch,
            learning_rate: lr,
            train_loss,
            validation,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let improved = best
            .as_ref()
            .is_none_or(|(b, _)| validation.loss < b.validation.loss - f64::from(hyper.min_delta));
        if improved {
            best = Some((report.clone(), trainer.params()?));
            since_best = 0;
        } else {
            since_best += 1;
        }
        history.push(report.clone());
        if on_epoch(&report).is_break() {
            return Err(Error::TrainingInterrupted { epoch });
        }
        if hyper.patience.is_some_and(|p| since_best >= p) && epoch < hyper.epochs {
            stopped_early = true;
            break;
        }
    }
    let Some((best, params)) = best else {
        return Err(Error::InvalidHyper {
            field: "epochs",
            expected: ">= 1",
            got: hyper.epochs.to_string(),
        });
    };
    let model = export(
        &params,
        &trainer.activations,
        set.task(),
        set.standardizer(),
    )?;
    Ok(Trained {
        model,
        best,
        epochs_run: history.len(),
        history,
        device: trainer.device(),
        seconds: started.elapsed().as_secs_f64(),
        stopped_early,
    })
}

impl Hyper {
    /// The learning rate of epoch `epoch` (from 0) under the schedule: constant;
    /// `learning_rate · gamma^⌊epoch / every⌋` (step); or
    /// `min_lr + (learning_rate − min_lr)·(1 + cos(π·epoch / epochs))/2` (cosine,
    /// PyTorch's `CosineAnnealingLR` with `T_max = epochs`).
    pub fn learning_rate_at(&self, epoch: usize) -> f32 {
        let lr = f64::from(self.learning_rate);
        let rate = match self.schedule {
            Schedule::Constant => lr,
            Schedule::Step { every, gamma } => {
                let decays = i32::try_from(epoch / every.max(1)).unwrap_or(i32::MAX);
                lr * f64::from(gamma).powi(decays)
            }
            Schedule::Cosine { min_lr } => {
                let min = f64::from(min_lr);
                let progress = epoch as f64 / self.epochs.max(1) as f64;
                min + (lr - min) * (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0
            }
        };
        rate as f32
    }

    /// Checks every field's range (as documented on each), naming the first field out
    /// of range in [`Error::InvalidHyper`].
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, expected: &'static str, got: String| {
            Err(Error::InvalidHyper {
                field,
                expected,
                got,
            })
        };
        if let Some(i) = self.hidden.iter().position(|&w| w == 0) {
            return bad(
                "hidden",
                "every hidden width >= 1",
                format!("0 at hidden[{i}]"),
            );
        }
        if !trainable(self.activation) {
            return bad(
                "activation",
                "identity, relu, tanh, sigmoid or gelu",
                self.activation.to_string(),
            );
        }
        let unit = |v: f32| (0.0..1.0).contains(&v);
        match self.optimizer {
            Optimizer::Sgd { momentum, nesterov } => {
                if !unit(momentum) {
                    return bad(
                        "optimizer.momentum",
                        "a value in [0, 1)",
                        momentum.to_string(),
                    );
                }
                if nesterov && momentum == 0.0 {
                    return bad(
                        "optimizer.nesterov",
                        "a momentum > 0 with Nesterov's momentum",
                        "momentum 0".into(),
                    );
                }
            }
            Optimizer::Adam { beta1, beta2, eps } | Optimizer::AdamW { beta1, beta2, eps } => {
                if !unit(beta1) {
                    return bad("optimizer.beta1", "a value in [0, 1)", beta1.to_string());
                }
                if !unit(beta2) {
                    return bad("optimizer.beta2", "a value in [0, 1)", beta2.to_string());
                }
                if !(eps > 0.0 && eps.is_finite()) {
                    return bad("optimizer.eps", "a finite value > 0", eps.to_string());
                }
            }
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(
                "learning_rate",
                "a finite value > 0",
                self.learning_rate.to_string(),
            );
        }
        match self.schedule {
            Schedule::Constant => {}
            Schedule::Step { every, gamma } => {
                if every == 0 {
                    return bad("schedule.every", "an epoch count >= 1", "0".into());
                }
                if !(gamma > 0.0 && gamma <= 1.0) {
                    return bad("schedule.gamma", "a factor in (0, 1]", gamma.to_string());
                }
            }
            Schedule::Cosine { min_lr } => {
                if !(min_lr >= 0.0 && min_lr.is_finite()) {
                    return bad("schedule.min_lr", "a finite value >= 0", min_lr.to_string());
                }
            }
        }
        if self.batch_size == 0 {
            return bad("batch_size", "rows per mini-batch >= 1", "0".into());
        }
        if self.epochs == 0 {
            return bad("epochs", "at least 1 epoch", "0".into());
        }
        if self.patience == Some(0) {
            return bad("patience", "at least 1 epoch, or none", "0".into());
        }
        if !(self.min_delta >= 0.0 && self.min_delta.is_finite()) {
            return bad(
                "min_delta",
                "a finite value >= 0",
                self.min_delta.to_string(),
            );
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(
                "weight_decay",
                "a finite value >= 0",
                self.weight_decay.to_string(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A study moves trainers to its device threads and shares the set among them.
    #[test]
    fn trainers_move_between_threads_and_sets_are_shared() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<Trainer>();
        send::<Trained>();
        sync::<TrainSet>();
        sync::<Hyper>();
    }
}
