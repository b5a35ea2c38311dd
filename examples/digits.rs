//! A real ensemble on real data: five scikit-learn `MLPClassifier`s of different
//! architectures and activations, trained on scikit-learn's digits data set (8×8
//! handwritten digits) by `examples/data/digits/train_digits.py` and exported to safetensors in
//! PyTorch's layout. Runs the 360 held-out test digits through every member (spread
//! over the usable adapters, or the CPU), and reports each member's accuracy and device
//! and the ensemble's accuracy under mean and vote.
//!
//!     cargo run --release --example digits

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wgpu_ensemble::io::{read_matrix, Manifest};
use wgpu_ensemble::{Aggregate, RunOptions, Session, Tensor};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data/digits")
        .join(file)
}

fn labels(path: &Path) -> Result<Vec<usize>, Box<dyn std::error::Error>> {
    let file = std::fs::File::open(path)?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file))?;
    Ok(npy
        .into_vec::<i64>()?
        .into_iter()
        .map(|v| v as usize)
        .collect())
}

fn accuracy(scores: &Tensor, labels: &[usize]) -> wgpu_ensemble::Result<f64> {
    let predicted = scores.argmax_rows()?;
    let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok(correct as f64 / labels.len() as f64)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut manifest = Manifest::load(data("digits.toml"))?;
    let x = read_matrix(data("x_test.npy"))?;
    let y = labels(&data("y_test.npy"))?;

    manifest.aggregate = Aggregate::Mean;
    let mean = Session::new(manifest.graph(None)?)?;
    manifest.aggregate = Aggregate::Vote { weights: None };
    let vote = Session::new(manifest.graph(None)?)?;

    // The first run compiles the pipelines; time the second.
    let options = RunOptions::default().member_outputs(true);
    mean.run(&x, &options)?;
    let out = mean.run(&x, &options)?;
    let voted = vote.run(&x, &RunOptions::default())?;

    println!(
        "digits: {} test samples, {} features, {} members\n",
        y.len(),
        x.shape()[1],
        out.members.len()
    );
    for m in &out.members {
        if let Some(scores) = &m.output {
            println!(
                "  {:<13} accuracy {:.4}  on {}",
                m.name,
                accuracy(scores, &y)?,
                m.device
            );
        }
    }
    println!(
        "\n  ensemble (mean)  accuracy {:.4}",
        accuracy(&out.aggregate, &y)?
    );
    println!(
        "  ensemble (vote)  accuracy {:.4}",
        accuracy(&voted.aggregate, &y)?
    );
    println!(
        "\nrun time: {:.3} ms for {} samples (all members, aggregate included)",
        out.elapsed.as_secs_f64() * 1e3,
        y.len()
    );
    Ok(())
}
