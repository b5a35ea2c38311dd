//! `wgpu-ensemble train-blender`: run an ensemble manifest's members on held-out rows,
//! fit a logistic-regression blender on their outputs side by side (scikit-learn's
//! `LogisticRegression(C)` objective, [`fit_blender`]) and save it for
//! `[aggregate] kind = "stack"`.

use std::path::{Path, PathBuf};

use wgpu_ensemble::io::{check_outputs, read_matrix, save_model, Manifest};
use wgpu_ensemble::train::{fit_blender, read_labels, stack_outputs};
use wgpu_ensemble::{Placement, RunOptions, Session};

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
    /// Where to write the blender: .safetensors, one dense layer with a softmax.
    #[arg(long)]
    out: PathBuf,
    /// Inverse regularisation strength, as scikit-learn's `C` (L2 on the weights, not the intercepts).
    #[arg(long, default_value_t = 1.0)]
    c: f64,
    /// Run every member here instead of its manifest device: auto, cpu, adapter:N, adapter:N/queue:K.
    #[arg(long)]
    device: Option<String>,
}

pub(crate) fn train_blender(args: &TrainBlenderArgs) -> crate::CliResult {
    let device: Option<Placement> = args.device.as_deref().map(str::parse).transpose()?;
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
