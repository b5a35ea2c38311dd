//! Dense-layer throughput: one `n x n` layer at batch `n` (2n³ FLOP per run), on the
//! CPU and on the adapter `Placement::Auto` picks first. Criterion's throughput is in
//! FLOP ("elements") per second. Sizes shrink when `CI` is set.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_ensemble::{Activation, Graph, Model, Placement, RunOptions, Session, Tensor};

fn sizes() -> Vec<usize> {
    if std::env::var_os("CI").is_some() {
        vec![128]
    } else {
        vec![256, 1024]
    }
}

fn dense(c: &mut Criterion) {
    let mut group = c.benchmark_group("dense");
    group.sample_size(10);
    for n in sizes() {
        let model = Model::random(&[n, n], &[Activation::Relu], 1).expect("model");
        let x = Tensor::matrix(n, n, vec![0.5; n * n]).expect("input");
        for (label, place) in [("cpu", Placement::Cpu), ("auto", Placement::Auto)] {
            let graph = Graph::builder(n)
                .member("dense", model.clone(), place)
                .build()
                .expect("graph");
            let session = Session::new(graph).expect("session");
            let device = session
                .devices()
                .next()
                .map(ToString::to_string)
                .unwrap_or_default();
            eprintln!("dense {label} {n}: {device}");
            session
                .run(&x, &RunOptions::default())
                .expect("warm-up run");
            group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.iter(|| session.run(&x, &RunOptions::default()).expect("run"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, dense);
criterion_main!(benches);
