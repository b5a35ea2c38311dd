//! Training's gradients against central finite differences of the f64 reference loss
//! (`common::train`), for every hidden activation, both losses, with and without L2
//! weight decay, through two hidden layers.

use wgpu_ensemble::train::{Hyper, Optimizer, Task, TrainSet, Trainer};
use wgpu_ensemble::{Activation, Placement};

use crate::common::placement_tests;
use crate::common::train::{batch64, labelled, loss64, to_f64, valued, Layer64};

/// Step of the central differences: the f64 loss is smooth away from relu's kink, and
/// at this step its rounding error (~1e-16 / 1e-6) stays far below the tolerance.
const H: f64 = 1e-6;

/// The gradient of the reference loss at `layers` by central differences.
fn finite_differences(layers: &[Layer64], loss: &dyn Fn(&[Layer64]) -> f64) -> Vec<Layer64> {
    let mut grads = layers.to_vec();
    let mut probe = layers.to_vec();
    for l in 0..layers.len() {
        for i in 0..layers[l].weight.len() {
            let w = layers[l].weight[i];
            probe[l].weight[i] = w + H;
            let up = loss(&probe);
            probe[l].weight[i] = w - H;
            let down = loss(&probe);
            probe[l].weight[i] = w;
            grads[l].weight[i] = (up - down) / (2.0 * H);
        }
        for i in 0..layers[l].bias.len() {
            let b = layers[l].bias[i];
            probe[l].bias[i] = b + H;
            let up = loss(&probe);
            probe[l].bias[i] = b - H;
            let down = loss(&probe);
            probe[l].bias[i] = b;
            grads[l].bias[i] = (up - down) / (2.0 * H);
        }
    }
    grads
}

/// Gradients and losses of every hidden activation × task × L2 on `placement` equal
/// the finite differences of the f64 reference (abs 2e-5, rel 1e-3) and its loss.
pub fn gradients_match_finite_differences(placement: Placement, label: &str) {
    let rows: Vec<u32> = vec![0, 2, 3, 5, 6, 8, 8, 9];
    for task in [Task::Classification, Task::Regression] {
        let data = match task {
            Task::Classification => labelled(10, 5, 3, 11),
            _ => valued(10, 5, 2, 12),
        };
        let set = TrainSet::new(task, data, 0.0, false, 0).expect("a training set");
        let (x, y) = batch64(set.train(), &rows);
        for activation in [
            Activation::Identity,
            Activation::Relu,
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::Gelu,
        ] {
            for l2 in [0.0f32, 0.03] {
                let what = format!("{label}: {task:?}, {activation}, L2 {l2}");
                let mut hyper = Hyper::default();
                hyper.hidden = vec![4, 3];
                hyper.activation = activation;
                hyper.optimizer = Optimizer::SGD;
                hyper.weight_decay = l2;
                hyper.seed = 5;
                let mut trainer = Trainer::new(&hyper, &set, &placement).expect("a trainer");
                let params = to_f64(&trainer.params().expect("params"));
                let (loss, grads) = trainer.gradients(&rows).expect("gradients");
                let reference =
                    |p: &[Layer64]| loss64(p, activation, &x, rows.len(), &y, f64::from(l2));
                let want_loss = reference(&params);
                assert!(
                    approx::relative_eq!(loss, want_loss, epsilon = 1e-6, max_relative = 1e-5),
                    "{what}: loss {loss}, reference {want_loss}"
                );
                let want = finite_differences(&params, &reference);
                crate::common::train::assert_params_close(&what, &grads, &want, 2e-5, 1e-3);
            }
        }
    }
}

placement_tests!(gradients_match_finite_differences; train_gradients_cpu: Cpu);

/// AdamW's decay is decoupled: its gradients and loss have no L2 term.
#[test]
fn train_adamw_gradients_have_no_decay_term() {
    let set = TrainSet::new(Task::Classification, labelled(8, 3, 2, 1), 0.0, false, 0)
        .expect("a training set");
    let rows: Vec<u32> = (0..8).collect();
    let mut hyper = Hyper::default();
    hyper.hidden = vec![4];
    hyper.optimizer = Optimizer::ADAMW;
    hyper.weight_decay = 0.5;
    let mut decayed = Trainer::new(&hyper, &set, &Placement::Cpu).expect("a trainer");
    hyper.weight_decay = 0.0;
    let mut plain = Trainer::new(&hyper, &set, &Placement::Cpu).expect("a trainer");
    let (a, ga) = decayed.gradients(&rows).expect("gradients");
    let (b, gb) = plain.gradients(&rows).expect("gradients");
    assert_eq!(a, b);
    assert_eq!(ga, gb);
}
