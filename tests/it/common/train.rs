//! Training's references, written from the definitions in f64 and independent of the
//! engines: the forward pass of a parameter list, the mean loss of a batch (softmax
//! cross-entropy or squared error, with the L2 term), and small data sets.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wgpu_ensemble::train::{Data, Params, Targets};
use wgpu_ensemble::{Activation, Tensor};

/// One layer in f64: `[out, in]` weight and `[out]` bias.
#[derive(Clone, Debug)]
pub struct Layer64 {
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
}

/// The engine's parameters in f64.
pub fn to_f64(params: &[Params]) -> Vec<Layer64> {
    params
        .iter()
        .map(|p| Layer64 {
            weight: p.weight.iter().map(|&v| f64::from(v)).collect(),
            bias: p.bias.iter().map(|&v| f64::from(v)).collect(),
        })
        .collect()
}

/// The targets of a reference batch.
pub enum Target64 {
    Labels(Vec<usize>),
    Values(Vec<f64>),
}

/// An activation in f64 (gelu with the exact erf).
pub fn act64(act: Activation, z: f64) -> f64 {
    match act {
        Activation::Identity => z,
        Activation::Relu => z.max(0.0),
        Activation::Tanh => z.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-z).exp()),
        Activation::Gelu => 0.5 * z * (1.0 + libm::erf(z / std::f64::consts::SQRT_2)),
        other => panic!("no hidden activation {other:?} in training"),
    }
}

/// The outputs (logits or predictions) of `rows` rows of `x` (`[rows, features]`):
/// every layer `z = a·Wᵀ + b`, the hidden ones through `hidden`, the last identity.
pub fn forward64(layers: &[Layer64], hidden: Activation, x: &[f64], rows: usize) -> Vec<f64> {
    let mut a = x.to_vec();
    for (l, layer) in layers.iter().enumerate() {
        let out = layer.bias.len();
        let inp = layer.weight.len() / out;
        let mut z = vec![0.0; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let s: f64 = (0..inp)
                    .map(|i| a[r * inp + i] * layer.weight[o * inp + i])
                    .sum();
                let v = s + layer.bias[o];
                z[r * out + o] = if l + 1 == layers.len() {
                    v
                } else {
                    act64(hidden, v)
                };
            }
        }
        a = z;
    }
    a
}

/// The mean loss of a batch (cross-entropy of the softmax for labels, the mean squared
/// error for values) plus `(l2/2)·Σ‖W‖²`.
pub fn loss64(
    layers: &[Layer64],
    hidden: Activation,
    x: &[f64],
    rows: usize,
    y: &Target64,
    l2: f64,
) -> f64 {
    let out = forward64(layers, hidden, x, rows);
    let k = out.len() / rows;
    let data = match y {
        Target64::Labels(labels) => {
            out.chunks(k)
                .zip(labels)
                .map(|(z, &label)| {
                    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                    lse - z[label]
                })
                .sum::<f64>()
                / rows as f64
        }
        Target64::Values(t) => {
            out.iter()
                .zip(t)
                .map(|(z, t)| (z - t) * (z - t))
                .sum::<f64>()
                / out.len() as f64
        }
    };
    let squares: f64 = layers
        .iter()
        .flat_map(|l| l.weight.iter())
        .map(|w| w * w)
        .sum();
    data + 0.5 * l2 * squares
}

/// The rows `rows` of a data set in f64: features and targets.
pub fn batch64(data: &Data, rows: &[u32]) -> (Vec<f64>, Target64) {
    let f = data.features();
    let x = data.x().as_slice();
    let xs = rows
        .iter()
        .flat_map(|&r| {
            x[r as usize * f..(r as usize + 1) * f]
                .iter()
                .map(|&v| f64::from(v))
        })
        .collect();
    let y = match data.y() {
        Targets::Labels(l) => {
            Target64::Labels(rows.iter().map(|&r| l[r as usize] as usize).collect())
        }
        Targets::Values(v) => {
            let k = v.shape()[1];
            Target64::Values(
                rows.iter()
                    .flat_map(|&r| {
                        v.as_slice()[r as usize * k..(r as usize + 1) * k]
                            .iter()
                            .map(|&t| f64::from(t))
                    })
                    .collect(),
            )
        }
        _ => panic!("unknown targets"),
    };
    (xs, y)
}

/// `rows` rows of `features` values uniform in `[-2, 2)` with labels `0..classes`
/// (every class present).
pub fn labelled(rows: usize, features: usize, classes: u32, seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..rows * features)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let y = (0..rows).map(|r| r as u32 % classes).collect();
    Data::new(
        Tensor::matrix(rows, features, x).expect("shape"),
        Targets::Labels(y),
    )
    .expect("valid data")
}

/// `rows` rows of `features` values uniform in `[-2, 2)` with `[rows, outputs]` float
/// targets uniform in `[-1, 1)`.
pub fn valued(rows: usize, features: usize, outputs: usize, seed: u64) -> Data {
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..rows * features)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let y: Vec<f32> = (0..rows * outputs)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Data::new(
        Tensor::matrix(rows, features, x).expect("shape"),
        Targets::Values(Tensor::matrix(rows, outputs, y).expect("shape")),
    )
    .expect("valid data")
}

/// Checks every layer's weights and biases with [`super::assert_close_tol`], naming
/// the layer and tensor.
#[track_caller]
pub fn assert_params_close(what: &str, got: &[Params], want: &[Layer64], abs: f64, rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: layer count");
    for (l, (g, w)) in got.iter().zip(want).enumerate() {
        super::assert_close_tol(
            &format!("{what}: layer {l} weight"),
            &g.weight,
            &w.weight,
            abs,
            rel,
        );
        super::assert_close_tol(
            &format!("{what}: layer {l} bias"),
            &g.bias,
            &w.bias,
            abs,
            rel,
        );
    }
}
