//! One session run from 8 threads at once, 20 runs each, every result checked.

use crate::common;

use std::sync::Arc;

use common::{assert_close, input, reference_forward, reference_mean};
use wgpu_ensemble::{Activation::*, Graph, Model, Placement, RunOptions, Session};

#[test]
fn session_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Session>();
}

#[test]
fn eight_threads_twenty_runs_each() {
    common::usable_adapters("concurrency");
    let models: Vec<Model> = [
        (vec![8, 24, 5], vec![Relu, Softmax]),
        (vec![8, 16, 16, 5], vec![Gelu, Tanh, Softmax]),
        (vec![8, 5], vec![Softmax]),
        (vec![8, 11, 5], vec![Sigmoid, Softmax]),
    ]
    .iter()
    .enumerate()
    .map(|(i, (w, a))| Model::random(w, a, 300 + i as u64).unwrap())
    .collect();
    // Auto members go to the usable adapters (or the CPU), one member stays on the CPU.
    let places = [
        Placement::Auto,
        Placement::Auto,
        Placement::Cpu,
        Placement::Auto,
    ];
    let mut g = Graph::builder(8);
    for (i, (m, p)) in models.iter().zip(places).enumerate() {
        g = g.member(format!("m{i}"), m.clone(), p);
    }
    let session = Arc::new(Session::new(g.build().unwrap()).unwrap());
    let models = Arc::new(models);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let session = Arc::clone(&session);
            let models = Arc::clone(&models);
            std::thread::spawn(move || {
                for r in 0..20 {
                    // Different batch sizes and values per run, so a result delivered to
                    // the wrong run cannot pass.
                    let batch = 1 + (t * 20 + r) % 37;
                    let x = input(batch, 8, (t * 1000 + r) as u64);
                    let run = session
                        .run(&x, &RunOptions::default().member_outputs(r % 2 == 0))
                        .unwrap();
                    let refs: Vec<Vec<f64>> =
                        models.iter().map(|m| reference_forward(m, &x)).collect();
                    assert_close(
                        &format!("thread {t} run {r}"),
                        run.aggregate.as_slice(),
                        &reference_mean(&refs, &[1.0; 4]),
                    );
                    if r % 2 == 0 {
                        for (m, want) in run.members.iter().zip(&refs) {
                            assert_close(
                                &format!("thread {t} run {r} {}", m.name),
                                m.output.as_ref().unwrap().as_slice(),
                                want,
                            );
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a run thread failed");
    }
}
