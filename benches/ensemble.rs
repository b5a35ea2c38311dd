//! Ensemble latency and throughput for the standard workload E1 (4 × MLP 784-512-512-10,
//! softmax outputs, mean) on the CPU and spread by `Placement::Auto`, at batch 1, 64
//! and 1024 (1 and 64 when `CI` is set). E2 (8 × 1024-4096-4096-1024) comes with the
//! speed work; it is far too large for a software adapter.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_ensemble::{
    Activation::*, Aggregate, Graph, Model, Placement, RunOptions, Session, Tensor,
};

fn e1(place: &Placement) -> Session {
    let mut g = Graph::builder(784).aggregate(Aggregate::Mean);
    for i in 0..4 {
        let m = Model::random(&[784, 512, 512, 10], &[Relu, Relu, Softmax], i).expect("model");
        g = g.member(format!("m{i}"), m, place.clone());
    }
    Session::new(g.build().expect("graph")).expect("session")
}

fn ensemble(c: &mut Criterion) {
    let batches: &[usize] = if std::env::var_os("CI").is_some() {
        &[1, 64]
    } else {
        &[1, 64, 1024]
    };
    let flops_per_row = 4 * 2 * (784 * 512 + 512 * 512 + 512 * 10) as u64;
    let mut group = c.benchmark_group("E1");
    group.sample_size(10);
    for (label, place) in [("cpu", Placement::Cpu), ("auto", Placement::Auto)] {
        let session = e1(&place);
        let devices: Vec<String> = session.devices().map(ToString::to_string).collect();
        eprintln!("E1 {label}: {}", devices.join(", "));
        for &batch in batches {
            let x = Tensor::matrix(batch, 784, vec![0.25; batch * 784]).expect("input");
            session
                .run(&x, &RunOptions::default())
                .expect("warm-up run");
            group.throughput(Throughput::Elements(flops_per_row * batch as u64));
            group.bench_with_input(BenchmarkId::new(label, batch), &batch, |b, _| {
                b.iter(|| session.run(&x, &RunOptions::default()).expect("run"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, ensemble);
criterion_main!(benches);
