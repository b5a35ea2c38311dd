//! Dense-layer throughput (`gemm`: one `n × n` layer at batch `n`, 2n³ FLOP per run) at
//! 256³, 1024³ and 4096³ on the CPU and on the device `Placement::Auto` picks first,
//! there in f32, f16 and f16-coop (where the adapter has them; the others are skipped
//! with a message). Criterion's throughput is in FLOP ("elements") per second.
//!
//! `auto`, `auto-f16`, `auto-f16-coop` time whole runs (upload, kernels, readback);
//! their `-kernels` twins time the kernels alone (`SessionOptions::device_timing`,
//! timestamp queries): the figure a GEMM benchmark on device-resident tensors gives.
//!
//! Sizes shrink to 64³ and 128³ when `CI` is set. On a software adapter (lavapipe, a
//! few GFLOP/s: benches/results/cpu-2026-11-26/NOTES.md) 4096³ would take minutes per
//! sample and is skipped.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_ensemble::bench::Workload;
use wgpu_ensemble::{
    adapters, wgpu, Placement, Precision, RunOptions, Session, SessionOptions, Tensor,
};

fn software_only() -> bool {
    let a = adapters();
    !a.iter().any(|a| {
        matches!(
            a.device_type,
            wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu
        )
    })
}

fn dense(c: &mut Criterion) {
    let sizes: Vec<usize> = if std::env::var_os("CI").is_some() {
        vec![64, 128]
    } else if software_only() {
        vec![256, 1024]
    } else {
        vec![256, 1024, 4096]
    };
    let mut group = c.benchmark_group("dense");
    group.sample_size(10);
    for n in sizes {
        let x = Tensor::matrix(n, n, vec![0.5; n * n]).expect("input");
        let runs = [
            ("cpu", Placement::Cpu, Precision::F32),
            ("auto", Placement::Auto, Precision::F32),
            ("auto-f16", Placement::Auto, Precision::F16),
            ("auto-f16-coop", Placement::Auto, Precision::F16CoopMatrix),
        ];
        for (label, place, precision) in runs {
            let graph = Workload::Gemm.graph(n, &place).expect("graph");
            let options = SessionOptions::default().precision(precision);
            let session = match Session::with_options(graph, options) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("dense {label} {n}: skipped: {e}");
                    continue;
                }
            };
            let device = session
                .devices()
                .next()
                .map(ToString::to_string)
                .unwrap_or_default();
            eprintln!("dense {label} {n}: {device}");
            session
                .run(&x, &RunOptions::default())
                .expect("warm-up run");
            group.throughput(Throughput::Elements(Workload::Gemm.flops(n)));
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.iter(|| session.run(&x, &RunOptions::default()).expect("run"))
            });
            if matches!(place, Placement::Cpu) {
                continue;
            }
            // The kernels alone, where the device has timestamps.
            let graph = Workload::Gemm.graph(n, &place).expect("graph");
            let timed = SessionOptions::default()
                .precision(precision)
                .device_timing(true);
            let kernels = |session: &Session| -> Option<Duration> {
                let out = session.run(&x, &RunOptions::default()).expect("run");
                out.members.iter().filter_map(|m| m.device_time).max()
            };
            let session = match Session::with_options(graph, timed) {
                Ok(s) if kernels(&s).is_some() => s,
                Ok(_) => {
                    eprintln!("dense {label}-kernels {n}: skipped: the members run on the CPU");
                    continue;
                }
                Err(e) => {
                    eprintln!("dense {label}-kernels {n}: skipped: {e}");
                    continue;
                }
            };
            let id = BenchmarkId::new(format!("{label}-kernels"), n);
            group.bench_with_input(id, &n, |b, _| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| kernels(&session).unwrap_or_default())
                        .sum()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, dense);
criterion_main!(benches);
