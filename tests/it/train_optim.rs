//! Optimizer steps against an independent numpy implementation: the fixture
//! `tests/fixtures/train/steps.json`, made by `tests/fixtures/make_train.py`, holds a
//! small network's initial parameters and its losses and parameters after a few steps
//! of SGD with momentum (with and without L2), Nesterov, Adam (with L2) and AdamW.

use serde_json::Value;
use wgpu_ensemble::train::{Data, Hyper, Optimizer, Targets, Task, TrainSet, Trainer};
use wgpu_ensemble::{Activation, Model, Placement, Tensor};

use crate::common::placement_tests;
use crate::common::train::{assert_params_close, Layer64};

fn fixture() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/steps.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        other => vec![other.as_f64().expect("a number")],
    }
}

fn layers(v: &Value) -> Vec<Layer64> {
    v.as_array()
        .expect("layers")
        .iter()
        .map(|l| Layer64 {
            weight: floats(&l["weight"]),
            bias: floats(&l["bias"]),
        })
        .collect()
}

fn optimizer(v: &Value) -> Optimizer {
    let f = |k: &str| v[k].as_f64().expect("a number") as f32;
    match v["kind"].as_str().expect("kind") {
        "sgd" => Optimizer::Sgd {
            momentum: f("momentum"),
            nesterov: v["nesterov"].as_bool().expect("nesterov"),
        },
        "adam" => Optimizer::Adam {
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
        },
        "adamw" => Optimizer::AdamW {
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
        },
        other => panic!("unknown optimizer {other}"),
    }
}

/// Every case of the fixture on `placement`: each step's loss and the final
/// parameters equal numpy's (abs 1e-5, rel 1e-4).
pub fn steps_match_numpy(placement: Placement, label: &str) {
    let fx = fixture();
    let x = floats(&fx["x"]);
    let rows = fx["x"].as_array().expect("rows").len();
    let features = x.len() / rows;
    let x = Tensor::matrix(
        rows,
        features,
        x.iter().map(|&v| v as f32).collect::<Vec<_>>(),
    )
    .expect("x");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let what = format!("{label}: {name}");
        let (task, y) = match case["task"].as_str().expect("task") {
            "classification" => (
                Task::Classification,
                Targets::Labels(floats(&fx["labels"]).iter().map(|&v| v as u32).collect()),
            ),
            _ => {
                let t: Vec<f32> = floats(&fx["targets"]).iter().map(|&v| v as f32).collect();
                let k = t.len() / rows;
                (
                    Task::Regression,
                    Targets::Values(Tensor::matrix(rows, k, t).expect("y")),
                )
            }
        };
        let set = TrainSet::new(task, Data::new(x.clone(), y).expect("data"), 0.0, false, 0)
            .expect("a training set");
        let activation: Activation = case["activation"]
            .as_str()
            .expect("activation")
            .parse()
            .expect("an activation");
        let init = layers(&case["init"]);
        let parts = init
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let out = layer.bias.len();
                let w: Vec<f32> = layer.weight.iter().map(|&v| v as f32).collect();
                let act = if l + 1 == init.len() {
                    Activation::Identity
                } else {
                    activation
                };
                (
                    Tensor::matrix(out, w.len() / out, w).expect("weight"),
                    layer.bias.iter().map(|&v| v as f32).collect(),
                    act,
                )
            })
            .collect();
        let model = Model::from_parts(parts).expect("the initial model");
        let mut hyper = Hyper::default();
        hyper.optimizer = optimizer(&case["optimizer"]);
        hyper.weight_decay = case["weight_decay"].as_f64().expect("weight_decay") as f32;
        let lr = case["lr"].as_f64().expect("lr") as f32;
        let mut trainer = Trainer::from_model(&model, &hyper, &set, &placement).expect("a trainer");
        let losses = floats(&case["losses"]);
        for (s, (step, want)) in case["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .zip(&losses)
            .enumerate()
        {
            let rows: Vec<u32> = floats(step).iter().map(|&v| v as u32).collect();
            let loss = trainer.step(&rows, lr).expect("a step");
            assert!(
                approx::relative_eq!(loss, *want, epsilon = 1e-6, max_relative = 1e-5),
                "{what}: step {s}: loss {loss}, numpy {want}"
            );
        }
        let got = trainer.params().expect("params");
        assert_params_close(&what, &got, &layers(&case["final"]), 1e-5, 1e-4);
    }
}

placement_tests!(steps_match_numpy; train_steps_match_numpy_cpu: Cpu);
