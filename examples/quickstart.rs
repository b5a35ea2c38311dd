//! A 4-member ensemble with seeded weights, spread over every usable adapter plus the
//! CPU. Prints where each member ran and how long its device took, the aggregate, and
//! the largest difference from the same ensemble run entirely on the CPU.
//!
//!     cargo run --release --example quickstart

use std::process::ExitCode;

use wgpu_ensemble::{
    probe_adapters, Activation, Aggregate, Graph, Model, Placement, RunOptions, Session, Tensor,
};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> wgpu_ensemble::Result<()> {
    use Activation::*;
    let (features, classes, batch) = (64, 10, 256);
    let members = [
        (
            "relu-128",
            vec![features, 128, classes],
            vec![Relu, Softmax],
        ),
        (
            "tanh-64x2",
            vec![features, 64, 64, classes],
            vec![Tanh, Tanh, Softmax],
        ),
        ("gelu-96", vec![features, 96, classes], vec![Gelu, Softmax]),
        (
            "sigmoid-32",
            vec![features, 32, classes],
            vec![Sigmoid, Softmax],
        ),
    ];
    let models = members
        .iter()
        .enumerate()
        .map(|(i, (_, widths, acts))| Model::random(widths, acts, 42 + i as u64))
        .collect::<wgpu_ensemble::Result<Vec<_>>>()?;

    // Every adapter a device can be created on, then the CPU.
    let mut targets: Vec<Placement> = Vec::new();
    for probe in probe_adapters() {
        match &probe.usable {
            Ok(()) => {
                println!("adapter {}", probe.info);
                targets.push(Placement::Adapter(probe.info.index));
            }
            Err(why) => println!("adapter {} skipped: {why}", probe.info),
        }
    }
    targets.push(Placement::Cpu);

    let build = |place: &dyn Fn(usize) -> Placement| {
        let mut g = Graph::builder(features).aggregate(Aggregate::Mean);
        for (i, model) in models.iter().enumerate() {
            g = g.member(members[i].0, model.clone(), place(i));
        }
        g.build().and_then(Session::new)
    };
    let session = build(&|i| targets[i % targets.len()].clone())?;
    let reference = build(&|_| Placement::Cpu)?;

    let x: Vec<f32> = (0..batch * features)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x = Tensor::matrix(batch, features, x)?;
    let opts = RunOptions::default().member_outputs(true);
    session.run(&x, &opts)?; // warm-up: first dispatches compile pipelines
    let out = session.run(&x, &opts)?;
    let cpu = reference.run(&x, &RunOptions::default())?;

    println!("\n{batch} rows x {features} features -> {classes} classes, aggregate: mean");
    for m in &out.members {
        println!(
            "  {:<11} on {:<55} {:>8.3} ms",
            m.name,
            m.device.to_string(),
            m.elapsed.as_secs_f64() * 1e3
        );
    }
    println!("run: {:.3} ms", out.elapsed.as_secs_f64() * 1e3);
    for r in 0..3 {
        let row = out.aggregate.row(r).unwrap_or_default();
        let shown: Vec<String> = row.iter().map(|v| format!("{v:.4}")).collect();
        println!("  row {r}: [{}]", shown.join(", "));
    }
    let diff = out
        .aggregate
        .as_slice()
        .iter()
        .zip(cpu.aggregate.as_slice())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("largest difference from the all-CPU run: {diff:.3e}");
    Ok(())
}
