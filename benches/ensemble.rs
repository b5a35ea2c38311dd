//! Ensemble latency and throughput for the standard workloads, on the CPU and spread
//! by `Placement::Auto`:
//! - E1: 4 × MLP 784-512-512-10, softmax outputs, mean;
//! - E2: 8 × MLP 1024-4096-4096-1024, softmax outputs, mean;
//!
//! each at batch 1, 64 and 1024. When `CI` is set: E1 at batch 1 and 64 only. On a
//! machine with only software adapters E2 runs at batch 1 only (one run at batch 1024
//! is 412 GFLOP: minutes on lavapipe).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_ensemble::bench::Workload;
use wgpu_ensemble::{adapters, wgpu, Placement, RunOptions, Session, Tensor};

fn software_only() -> bool {
    !adapters().iter().any(|a| {
        matches!(
            a.device_type,
            wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu
        )
    })
}

fn ensemble(c: &mut Criterion) {
    let ci = std::env::var_os("CI").is_some();
    let mut plan: Vec<(Workload, Vec<usize>)> = vec![(
        Workload::E1,
        if ci { vec![1, 64] } else { vec![1, 64, 1024] },
    )];
    if !ci {
        plan.push((
            Workload::E2,
            if software_only() {
                vec![1]
            } else {
                vec![1, 64, 1024]
            },
        ));
    }
    for (workload, batches) in plan {
        let mut group = c.benchmark_group(workload.name());
        group.sample_size(10);
        for (label, place) in [("cpu", Placement::Cpu), ("auto", Placement::Auto)] {
            for &batch in &batches {
                let graph = workload.graph(batch, &place).expect("graph");
                let width = graph.input_width();
                let session = Session::new(graph).expect("session");
                let devices: Vec<String> = session.devices().map(ToString::to_string).collect();
                eprintln!(
                    "{} {label} batch {batch}: {}",
                    workload.name(),
                    devices.join(", ")
                );
                let x = Tensor::matrix(batch, width, vec![0.25; batch * width]).expect("input");
                session
                    .run(&x, &RunOptions::default())
                    .expect("warm-up run");
                group.throughput(Throughput::Elements(workload.flops(batch)));
                group.bench_with_input(BenchmarkId::new(label, batch), &batch, |b, _| {
                    b.iter(|| session.run(&x, &RunOptions::default()).expect("run"))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, ensemble);
criterion_main!(benches);
