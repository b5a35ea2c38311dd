//! The training benchmark's Rust side (`benches/train_sklearn.py` runs it against
//! scikit-learn): a grid study of MLPs on the digits training split, timed as a whole,
//! each trial's training samples/s and test accuracy, as one JSON line on stdout.
//!
//! ```sh
//! cargo run --release --example train_bench -- [--epochs 30] [--devices cpu] [--out DIR]
//! ```
//!
//! Every trial trains on all 1437 training digits (no validation split, no early
//! stopping: every epoch runs, as scikit-learn's `MLPClassifier` with `tol = 0`),
//! batch 64, learning rate 0.005 (SGD momentum 0.9), no weight decay; the grid is
//! hidden [32], [64], [64, 32] × relu, tanh × adam, sgd (12 trials).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use wgpu_ensemble::io::read_matrix;
use wgpu_ensemble::train::study::{Devices, Study};
use wgpu_ensemble::{Graph, Placement, RunOptions, Session};

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let epochs: usize = arg(&args, "--epochs").map_or(Ok(30), |e| e.parse())?;
    let devices: Devices = arg(&args, "--devices").unwrap_or("cpu".into()).parse()?;
    let digits = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/digits");
    let out = arg(&args, "--out").map_or_else(
        || std::env::temp_dir().join(format!("train_bench_{}", std::process::id())),
        PathBuf::from,
    );
    // A fresh folder: nothing resumed.
    let _ = std::fs::remove_dir_all(&out);
    let text = format!(
        "[data]\nx = \"x_train.npy\"\ny = \"y_train.npy\"\ntask = \"classification\"\n\
         validation_fraction = 0.0\nstandardize = false\n\n\
         [search]\nstrategy = \"grid\"\nseed = 1\nkeep = 1\n\n\
         [space]\nhidden = [[32], [64], [64, 32]]\nactivation = [\"relu\", \"tanh\"]\n\
         optimizer = [\"adam\", \"sgd\"]\nlearning_rate = 0.005\nbatch_size = 64\n\
         epochs = {epochs}\npatience = 0\nmomentum = 0.9\n"
    );
    let study = Study::parse(&text, &digits)?;
    let started = Instant::now();
    let result = study.run(&out, &devices, &mut |_| ControlFlow::Continue(()))?;
    let wall = started.elapsed().as_secs_f64();

    let x = read_matrix(digits.join("x_test.npy"))?;
    let labels: Vec<usize> = {
        let file = std::fs::File::open(digits.join("y_test.npy"))?;
        npyz::NpyFile::new(std::io::BufReader::new(file))?
            .into_vec::<i64>()?
            .into_iter()
            .map(|v| v as usize)
            .collect()
    };
    let rows = 1437.0;
    let mut trials = Vec::new();
    for r in &result.trials {
        let model = wgpu_ensemble::io::load_model(
            out.join(format!("{}.safetensors", r.name)),
            &Default::default(),
        )?;
        let graph = Graph::builder(64)
            .member(r.name.clone(), model, Placement::Cpu)
            .build()?;
        let scores = Session::new(graph)?.run(&x, &RunOptions::default())?;
        let predicted = scores.aggregate.argmax_rows()?;
        let right = predicted
            .iter()
            .zip(&labels)
            .filter(|(p, y)| p == y)
            .count();
        trials.push(serde_json::json!({
            "hidden": r.params.hidden,
            "activation": r.params.activation,
            "optimizer": r.params.optimizer,
            "epochs": r.epochs_run,
            "seconds": r.seconds,
            "samples_per_s": rows * r.epochs_run as f64 / r.seconds.max(1e-9),
            "test_accuracy": right as f64 / labels.len() as f64,
            "device": r.device,
        }));
    }
    println!(
        "{}",
        serde_json::json!({ "wall_s": wall, "epochs": epochs, "trials": trials })
    );
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}
