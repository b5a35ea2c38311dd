//! `wgpu-ensemble train-blender`: run an ensemble manifest's members on held-out rows,
//! fit a blender on their outputs side by side and save it for `[aggregate] kind =
//! "stack"`: by default a logistic regression with scikit-learn's
//! `LogisticRegression(C)` objective by L-BFGS ([`fit_blender`]); with `--optimizer`,
//! trained by the training module's optimizers ([`train_member`]), with hidden layers
//! when `--hidden` asks.

use std::path::{Path, PathBuf};

use std::ops::ControlFlow;
use wgpu_ensemble::io::{check_outputs, read_matrix, save_model, Manifest};

use wgpu_ensemble::train::{
    fit_blender, read_labels, stack_outputs, train_member, Data, Hyper, Optimizer, Targets, Task,
    TrainSet,
};
use wgpu_ensemble::{Model, Placement, RunOptions, Session, Tensor};

use crate::{flag_error, CliError};

#[derive(clap::Args)]
pub(crate) struct TrainBlenderArgs {
    /// The ensemble manifest (TOML) whose members feed the blender; a stack's own `blender` is not read.
    #[arg(long)]
    manifest: PathBuf,
    /// Held-out rows the members did not train on: .npy [rows, features], float32 or float64.
    #[arg(long)]
    x: PathBuf,
    /// Their class labels: .npy integers [rows], each 0 to outputs - 1.
    #[arg(long)]
    y: PathBuf,
    /// Where to write the blender: .safetensors, dense layers ending in a softmax.
    #[arg(long)]
    out: PathBuf,
    /// Inverse regularisation strength, as scikit-learn's `C` (L2 on the weights, not the intercepts; with --optimizer, weight decay 1 / (C × rows)).
    #[arg(long, default_value_t = 1.0)]
    c: f64,
    /// Run every member (and, with --optimizer, the training) here instead of its manifest device: auto, cpu, adapter:N, adapter:N/queue:K.
    #[arg(long)]
    device: Option<String>,
    /// How to fit: lbfgs (a logistic regression to convergence, as scikit-learn) or one of the training optimizers: sgd, sgd_nesterov, adam, adamw.
    #[arg(long, default_value = "lbfgs")]
    optimizer: String,
    /// With a training optimizer: hidden layer widths, comma-separated (none: a logistic regression).
    #[arg(long, value_delimiter = ',')]
    hidden: Vec<usize>,
    /// With a training optimizer: epochs over the rows.
    #[arg(long, default_value_t = 200)]
    epochs: usize,
    /// With a training optimizer: the learning rate.
    #[arg(long, default_value_t = 0.01)]
    learning_rate: f32,
    /// With a training optimizer: rows per mini-batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// With a training optimizer: the seed of the initialisation and of the shuffles.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The training optimizer `--optimizer` names, `None` for lbfgs.
fn optimizer(name: &str) -> Result<Option<Optimizer>, CliError> {
    Ok(Some(match name {
        "lbfgs" => return Ok(None),
        "sgd" => Optimizer::SGD,
        "sgd_nesterov" => Optimizer::Sgd {
            momentum: 0.9,
            nesterov: true,
        },
        "adam" => Optimizer::ADAM,
        "adamw" => Optimizer::ADAMW,
        other => {
            return Err(flag_error(
                "--optimizer",
                format!(
                    "'{}' is not one: expected lbfgs, sgd, sgd_nesterov, adam or adamw",
                    other.chars().take(200).collect::<String>()
                ),
            ))
        }
    }))
}

/// The blender trained by `optimizer` on `features` and `labels` (every class of the
/// members' `classes` among them), with `args`' hidden layers and schedule.
fn train(
    args: &TrainBlenderArgs,
    optimizer: Optimizer,
    (features, labels, classes): (&Tensor, &[i64], usize),
    placement: &Placement,
) -> Result<Model, CliError> {
    let mut classes_of = Vec::with_capacity(labels.len());
    for (i, &l) in labels.iter().enumerate() {
        match u32::try_from(l) {
            Ok(c) if (c as usize) < classes => classes_of.push(c),
            _ => {
                return Err(flag_error(
                    "--y",
                    format!(
                        "label {i} is {l}: expected a class from 0 to {}",
                        classes - 1
                    ),
                ))
            }
        }
    }
    let seen = labels.iter().copied().max().map_or(0, |m| m + 1);
    if seen != classes as i64 {
        return Err(flag_error(
            "--y",
            format!(
                "the members output {classes} classes, so --optimizer needs labels up to {}; the largest is {}",
                classes - 1,
                seen - 1
            ),
        ));
    }
    let rows = labels.len();
    let data = Data::new(features.clone(), Targets::Labels(classes_of))?;
    let set = TrainSet::new(Task::Classification, data, 0.0, false, args.seed)?;
    let mut hyper = Hyper::default();
    hyper.hidden = args.hidden.clone();
    hyper.optimizer = optimizer;
    hyper.learning_rate = args.learning_rate;
    hyper.batch_size = args.batch_size;
    hyper.epochs = args.epochs;
    hyper.patience = None;
    // scikit-learn's summed log-loss + ‖W‖²/2C, per row: λ = 1 / (C × rows).
    let decay = 1.0 / (args.c * rows as f64);
    if !(decay as f32).is_finite() {
        return Err(flag_error(
            "--c",
            format!(
                "{} is too small: the weight decay 1 / (C × {rows} rows) = {decay:e} is beyond f32's range",
                args.c
            ),
        ));
    }
    hyper.weight_decay = decay as f32;
    hyper.seed = args.seed;
    let trained = train_member(&hyper, &set, placement, &mut |_| ControlFlow::Continue(()))?;
    eprintln!(
        "wgpu-ensemble: {} epochs on {}: training loss {:.6} at the best epoch ({})",
        trained.epochs_run, trained.device, trained.best.train_loss, trained.best.epoch
    );
    Ok(trained.model)
}

pub(crate) fn train_blender(args: &TrainBlenderArgs) -> crate::CliResult {
    let device: Option<Placement> = args.device.as_deref().map(str::parse).transpose()?;
    let optimizer = optimizer(&args.optimizer)?;
    if optimizer.is_none() && !args.hidden.is_empty() {
        return Err(flag_error(
            "--hidden",
            "needs a training optimizer (--optimizer sgd, sgd_nesterov, adam or adamw): lbfgs fits a logistic regression",
        ));
    }
    if !(args.c.is_finite() && args.c > 0.0) {
        return Err(flag_error(
            "--c",
            format!("{} is not a positive number", args.c),
        ));
    }
    let mut manifest = Manifest::load(&args.manifest)?;
    let mut inputs: Vec<&Path> = vec![args.manifest.as_path(), args.x.as_path(), args.y.as_path()];
    inputs.extend(manifest.members.iter().map(|m| m.file.as_path()));
    check_outputs(&[args.out.as_path()], &inputs)?;
    // The members alone: a stack's blender (perhaps the file being replaced) is not
    // needed to compute what a new one takes.
    manifest.blender = None;
    let x = read_matrix(&args.x)?;
    let labels = read_labels(&args.y)?;
    let session = Session::new(manifest.graph(device.as_ref())?)?;
    let run = session.run(&x, &RunOptions::default().member_outputs(true))?;
    let features = stack_outputs(&run)?;
    if let Some(optimizer) = optimizer {
        let placement = device.unwrap_or(Placement::Cpu);
        let classes = session.output_width();
        let model = train(args, optimizer, (&features, &labels, classes), &placement)?;
        save_model(&model, &args.out)?;
        eprintln!(
            "wgpu-ensemble: blender [{} -> {}] trained with {} on {} rows; written to {}",
            features.shape()[1],
            model.out_features(),
            args.optimizer,
            labels.len(),
            args.out.display()
        );
        return Ok(());
    }
    let fit = fit_blender(&features, &labels, session.output_width(), args.c)?;
    save_model(&fit.model, &args.out)?;
    eprintln!(
        "wgpu-ensemble: blender [{} -> {}] fitted on {} rows in {} L-BFGS iterations (objective {:.6}, gradient {:.1e}{}); written to {}",
        features.shape()[1],
        session.output_width(),
        labels.len(),
        fit.iterations,
        fit.objective,
        fit.gradient,
        if fit.converged { "" } else { ", not converged" },
        args.out.display()
    );
    Ok(())
}
