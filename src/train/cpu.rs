//! The CPU engine: forward with the activations kept, backward, optimizer steps, on the
//! host with `matrixmultiply` (single-threaded, so that every sum has one order and
//! the same seed gives the same weights bit for bit). The activations are the
//! inference executor's formulas (`cpu/forward.rs`), their derivatives written from
//! them.

use crate::cpu::forward::{activate, erf};
use crate::error::{Error, Result};
use crate::model::Activation;
use crate::train::data::{try_vec, Data, Targets};
use crate::train::engine::{Engine, Evaluation, Params};
use crate::train::{Hyper, Optimizer, Task, TrainSet};

/// Rows per forward pass of an evaluation: bounds the activations kept at once.
const EVAL_ROWS: usize = 4096;

/// One layer's parameters and optimizer state.
struct Layer {
    inputs: usize,
    outputs: usize,
    activation: Activation,
    params: Params,
    /// SGD's momentum buffer, Adam's first moment (empty before the first step).
    first: Params,
    /// Adam's second moment (empty for SGD).
    second: Params,
}

/// Trains a member on the host CPU.
pub(crate) struct CpuEngine {
    layers: Vec<Layer>,
    task: Task,
    optimizer: Optimizer,
    weight_decay: f32,
    /// Optimizer steps taken (Adam's `t` of the last step).
    steps: u64,
    train: Data,
    evaluation: Data,
}

/// One buffer per layer (its `z`, or its `act(z)`).
type PerLayer = Vec<Vec<f32>>;

/// A batch's targets.
enum Batch {
    Labels(Vec<u32>),
    Values(Vec<f32>),
}

impl CpuEngine {
    /// An engine starting from `init` (validated shapes chaining from the set's
    /// features to its outputs), `activations` one per layer (the last `Identity`).
    pub(crate) fn new(
        init: &[Params],
        activations: &[Activation],
        hyper: &Hyper,
        set: &TrainSet,
    ) -> Result<CpuEngine> {
        let mut inputs = set.features();
        let mut layers = Vec::with_capacity(init.len());
        for (l, (p, &activation)) in init.iter().zip(activations).enumerate() {
            let outputs = p.bias.len();
            if outputs == 0 || p.weight.len() != outputs * inputs {
                return Err(Error::LayerShape {
                    layer: l,
                    what: "initial weight must be [out, in], chaining from the features",
                    expected: vec![outputs, inputs],
                    got: vec![p.weight.len()],
                });
            }
            layers.push(Layer {
                inputs,
                outputs,
                activation,
                params: p.clone(),
                first: empty(),
                second: empty(),
            });
            inputs = outputs;
        }
        if layers.is_empty() || inputs != set.outputs() || init.len() != activations.len() {
            return Err(Error::LayerShape {
                layer: layers.len().saturating_sub(1),
                what: "the last layer's outputs must equal the task's outputs, one activation per layer",
                expected: vec![set.outputs()],
                got: vec![inputs],
            });
        }
        Ok(CpuEngine {
            layers,
            task: set.task(),
            optimizer: hyper.optimizer,
            weight_decay: hyper.weight_decay,
            steps: 0,
            train: set.train().clone(),
            evaluation: set.evaluation().clone(),
        })
    }

    /// Whether the weight decay is L2 (part of the loss and gradient) rather than
    /// decoupled (AdamW).
    fn l2(&self) -> bool {
        self.weight_decay > 0.0 && !matches!(self.optimizer, Optimizer::AdamW { .. })
    }

    /// The features and targets of the training rows `rows`.
    fn gather(&self, rows: &[u32]) -> Result<(Vec<f32>, Batch)> {
        if rows.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let n = self.train.rows();
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= n) {
            return Err(Error::TrainRow {
                row: bad as usize,
                rows: n,
            });
        }
        let f = self.train.features();
        let src = self.train.x().as_slice();
        let mut x = try_vec(rows.len() * f, "x")?;
        for &r in rows {
            let r = r as usize;
            x.extend_from_slice(&src[r * f..(r + 1) * f]);
        }
        let y = match self.train.y() {
            Targets::Labels(labels) => {
                Batch::Labels(rows.iter().map(|&r| labels[r as usize]).collect())
            }
            Targets::Values(values) => {
                let k = values.shape()[1];
                let src = values.as_slice();
                let mut y = try_vec(rows.len() * k, "y")?;
                for &r in rows {
                    let r = r as usize;
                    y.extend_from_slice(&src[r * k..(r + 1) * k]);
                }
                Batch::Values(y)
            }
        };
        Ok((x, y))
    }

    /// The forward pass of `b` rows of `x`: every layer's `z` and `act(z)`.
    fn forward(&self, x: &[f32], b: usize) -> Result<(PerLayer, PerLayer)> {
        let mut zs: Vec<Vec<f32>> = Vec::with_capacity(self.layers.len());
        let mut acts: Vec<Vec<f32>> = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let input = acts.last().map_or(x, Vec::as_slice);
            let mut z = try_vec(b * layer.outputs, "x")?;
            for _ in 0..b {
                z.extend_from_slice(&layer.params.bias);
            }
            // z[b, out] += a[b, in] · Wᵀ (Wᵀ read from W [out, in]).
            sgemm(
                (b, layer.inputs, layer.outputs),
                (input, layer.inputs as isize, 1),
                (&layer.params.weight, 1, layer.inputs as isize),
                1.0,
                &mut z,
            );
            let mut a = z.clone();
            activate(layer.activation, &mut a, layer.outputs);
            zs.push(z);
            acts.push(a);
        }
        Ok((zs, acts))
    }

    /// The mean loss of a batch's outputs and its gradient with respect to them.
    fn loss(&self, out: &[f32], y: &Batch, b: usize) -> (f64, Vec<f32>) {
        let k = out.len() / b.max(1);
        let mut dz = vec![0.0f32; out.len()];
        let mut total = 0.0f64;
        match y {
            Batch::Labels(labels) => {
                for ((z, d), &label) in out.chunks(k).zip(dz.chunks_mut(k)).zip(labels) {
                    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f64 = z.iter().map(|&v| f64::from(v - max).exp()).sum();
                    let lse = f64::from(max) + sum.ln();
                    total += lse - f64::from(z[label as usize]);
                    for (j, (dj, &zj)) in d.iter_mut().zip(z).enumerate() {
                        let p = (f64::from(zj) - lse).exp();
                        let onehot = if j == label as usize { 1.0 } else { 0.0 };
                        *dj = ((p - onehot) / b as f64) as f32;
                    }
                }
                (total / b as f64, dz)
            }
            Batch::Values(t) => {
                let count = out.len() as f64;
                for ((d, &z), &t) in dz.iter_mut().zip(out).zip(t) {
                    let e = f64::from(z) - f64::from(t);
                    total += e * e;
                    *d = (2.0 * e / count) as f32;
                }
                (total / count, dz)
            }
        }
    }

    /// The loss (with the L2 term where it applies) and the gradients of a batch.
    fn backward(&self, rows: &[u32]) -> Result<(f64, Vec<Params>)> {
        let (x, y) = self.gather(rows)?;
        let b = rows.len();
        let (zs, acts) = self.forward(&x, b)?;
        let last = acts.len() - 1;
        let (mut loss, mut dz) = self.loss(&acts[last], &y, b);
        let mut grads: Vec<Params> = Vec::with_capacity(self.layers.len());
        for l in (0..self.layers.len()).rev() {
            let layer = &self.layers[l];
            let input = if l == 0 { &x } else { &acts[l - 1] };
            let mut weight = vec![0.0f32; layer.outputs * layer.inputs];
            // dW[out, in] = dzᵀ[out, b] · a[b, in].
            sgemm(
                (layer.outputs, b, layer.inputs),
                (&dz, 1, layer.outputs as isize),
                (input, layer.inputs as isize, 1),
                0.0,
                &mut weight,
            );
            let mut bias = vec![0.0f32; layer.outputs];
            for row in dz.chunks(layer.outputs) {
                for (g, &d) in bias.iter_mut().zip(row) {
                    *g += d;
                }
            }
            if l > 0 {
                // da[b, in] = dz[b, out] · W[out, in], then through the activation.
                let mut da = vec![0.0f32; b * layer.inputs];
                sgemm(
                    (b, layer.outputs, layer.inputs),
                    (&dz, layer.outputs as isize, 1),
                    (&layer.params.weight, layer.inputs as isize, 1),
                    0.0,
                    &mut da,
                );
                let below = &self.layers[l - 1];
                for ((d, &z), &a) in da.iter_mut().zip(&zs[l - 1]).zip(&acts[l - 1]) {
                    *d *= derivative(below.activation, z, a);
                }
                dz = da;
            }
            grads.push(Params { weight, bias });
        }
        grads.reverse();
        if self.l2() {
            let lambda = self.weight_decay;
            let mut squares = 0.0f64;
            for (g, layer) in grads.iter_mut().zip(&self.layers) {
                for (gw, &w) in g.weight.iter_mut().zip(&layer.params.weight) {
                    squares += f64::from(w) * f64::from(w);
                    *gw += lambda * w;
                }
            }
            loss += 0.5 * f64::from(lambda) * squares;
        }
        Ok((loss, grads))
    }

    /// The optimizer's update of every parameter from `grads` at learning rate `lr`.
    fn update(&mut self, grads: &[Params], lr: f32) {
        self.steps += 1;
        let t = self.steps;
        let decay = self.weight_decay;
        match self.optimizer {
            Optimizer::Sgd { momentum, nesterov } => {
                for (layer, g) in self.layers.iter_mut().zip(grads) {
                    if layer.first.weight.is_empty() {
                        layer.first = zeros_like(&layer.params);
                    }
                    let pairs = [
                        (&mut layer.params.weight, &mut layer.first.weight, &g.weight),
                        (&mut layer.params.bias, &mut layer.first.bias, &g.bias),
                    ];
                    for (w, v, g) in pairs {
                        for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
                            *v = momentum * *v + g;
                            *w -= lr * if nesterov { g + momentum * *v } else { *v };
                        }
                    }
                }
            }
            Optimizer::Adam { beta1, beta2, eps } | Optimizer::AdamW { beta1, beta2, eps } => {
                let decoupled = matches!(self.optimizer, Optimizer::AdamW { .. });
                let exponent = i32::try_from(t).unwrap_or(i32::MAX);
                let bc1 = (1.0 - f64::from(beta1).powi(exponent)) as f32;
                let bc2 = (1.0 - f64::from(beta2).powi(exponent)) as f32;
                for (layer, g) in self.layers.iter_mut().zip(grads) {
                    if layer.first.weight.is_empty() {
                        layer.first = zeros_like(&layer.params);
                        layer.second = zeros_like(&layer.params);
                    }
                    if decoupled && decay > 0.0 {
                        layer
                            .params
                            .weight
                            .iter_mut()
                            .for_each(|w| *w -= lr * decay * *w);
                    }
                    let sets = [
                        (
                            &mut layer.params.weight,
                            &mut layer.first.weight,
                            &mut layer.second.weight,
                            &g.weight,
                        ),
                        (
                            &mut layer.params.bias,
                            &mut layer.first.bias,
                            &mut layer.second.bias,
                            &g.bias,
                        ),
                    ];
                    for (w, m, v, g) in sets {
                        for (((w, m), v), &g) in
                            w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g)
                        {
                            *m = beta1 * *m + (1.0 - beta1) * g;
                            *v = beta2 * *v + (1.0 - beta2) * g * g;
                            let m_hat = *m / bc1;
                            let v_hat = *v / bc2;
                            *w -= lr * m_hat / (v_hat.sqrt() + eps);
                        }
                    }
                }
            }
        }
    }
}

impl Engine for CpuEngine {
    fn epoch(&mut self, order: &[u32], batch_size: usize, lr: f32) -> Result<f64> {
        if order.is_empty() || batch_size == 0 {
            return Err(Error::EmptyBatch);
        }
        // Every row checked before the first step, so that a refused order changes
        // nothing (as on the GPU, which checks it as it uploads it).
        let n = self.train.rows();
        if let Some(&bad) = order.iter().find(|&&r| r as usize >= n) {
            return Err(Error::TrainRow {
                row: bad as usize,
                rows: n,
            });
        }
        let mut total = 0.0f64;
        for batch in order.chunks(batch_size) {
            total += self.step(batch, lr)? * batch.len() as f64;
        }
        Ok(total / order.len() as f64)
    }

    fn evaluate(&mut self) -> Result<Evaluation> {
        let data = &self.evaluation;
        let (n, f) = (data.rows(), data.features());
        let x = data.x().as_slice();
        let mut loss = 0.0f64;
        let mut correct = 0usize;
        for start in (0..n).step_by(EVAL_ROWS) {
            let b = EVAL_ROWS.min(n - start);
            let (_, acts) = self.forward(&x[start * f..(start + b) * f], b)?;
            let out = &acts[acts.len() - 1];
            let y = match data.y() {
                Targets::Labels(labels) => {
                    let labels = &labels[start..start + b];
                    let k = out.len() / b;
                    for (z, &label) in out.chunks(k).zip(labels) {
                        let best = z
                            .iter()
                            .enumerate()
                            .fold(0, |best, (j, &v)| if v > z[best] { j } else { best });
                        correct += usize::from(best == label as usize);
                    }
                    Batch::Labels(labels.to_vec())
                }
                Targets::Values(v) => {
                    let k = v.shape()[1];
                    Batch::Values(v.as_slice()[start * k..(start + b) * k].to_vec())
                }
            };
            loss += self.loss(out, &y, b).0 * b as f64;
        }
        let loss = loss / n as f64;
        Ok(Evaluation {
            loss,
            metric: match self.task {
                Task::Regression => loss.sqrt(),
                _ => correct as f64 / n as f64,
            },
        })
    }

    fn gradients(&mut self, rows: &[u32]) -> Result<(f64, Vec<Params>)> {
        self.backward(rows)
    }

    fn step(&mut self, rows: &[u32], lr: f32) -> Result<f64> {
        let (loss, grads) = self.backward(rows)?;
        self.update(&grads, lr);
        Ok(loss)
    }

    fn params(&mut self) -> Result<Vec<Params>> {
        Ok(self.layers.iter().map(|l| l.params.clone()).collect())
    }

    fn device(&self) -> String {
        "cpu".into()
    }
}

fn empty() -> Params {
    Params {
        weight: Vec::new(),
        bias: Vec::new(),
    }
}

fn zeros_like(p: &Params) -> Params {
    Params {
        weight: vec![0.0; p.weight.len()],
        bias: vec![0.0; p.bias.len()],
    }
}

/// `act'(z)` given `z` and `a = act(z)`; relu'(0) = 0; gelu's is the exact derivative
/// of `x·Φ(x)` with Φ through the same `erf` as the forward pass:
/// `Φ(x) + x·φ(x)`.
fn derivative(act: Activation, z: f32, a: f32) -> f32 {
    match act {
        Activation::Relu => {
            if z > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Tanh => 1.0 - a * a,
        Activation::Sigmoid => a * (1.0 - a),
        Activation::Gelu => {
            let cdf = 0.5 * (1.0 + erf(z * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * z * z).exp() * FRAC_1_SQRT_2PI;
            cdf + z * pdf
        }
        // Hidden layers never have a softmax (the hyperparameters refuse it).
        _ => 1.0,
    }
}

/// `1/√(2π)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `c[m, n] = a[m, k] · b[k, n] + beta · c` (`c` row-major), `a` and `b` given with
/// their (row, column) strides, by `matrixmultiply` on this thread.
fn sgemm(
    (m, k, n): (usize, usize, usize),
    (a, rsa, csa): (&[f32], isize, isize),
    (b, rsb, csb): (&[f32], isize, isize),
    beta: f32,
    c: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: isize, cs: isize| {
        (rows.saturating_sub(1)) * rs.unsigned_abs() + (cols.saturating_sub(1)) * cs.unsigned_abs()
    };
    // The shapes are the engine's own (checked when it was built): a failure here is a
    // bug, stopped before it reads or writes outside the slices.
    assert!(
        k == 0
            || (last(m, k, rsa, csa) < a.len()
                && last(k, n, rsb, csb) < b.len()
                && m * n <= c.len()),
        "train gemm: shapes beyond the buffers"
    );
    if k == 0 {
        c[..m * n].iter_mut().for_each(|v| *v *= beta);
        return;
    }
    // SAFETY: the assertion above keeps every element addressed by the strides inside
    // `a`, `b` and `c` (row-major `[m, n]`, row stride n, column stride 1).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every derivative equals the central difference of the forward formula (the
    /// inference executor's, in f32) it is written from, evaluated in f64 steps.
    #[test]
    fn derivatives_match_the_forward_formulas() {
        for act in [
            Activation::Identity,
            Activation::Relu,
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::Gelu,
        ] {
            for &z in &[-3.1f32, -1.2, -0.4, 0.3, 0.9, 2.7] {
                let f = |v: f32| {
                    let mut y = [v];
                    activate(act, &mut y, 1);
                    f64::from(y[0])
                };
                let h = 1e-2f32;
                let numeric = (f(z + h) - f(z - h)) / (2.0 * f64::from(h));
                let a = f(z) as f32;
                let analytic = f64::from(derivative(act, z, a));
                assert!(
                    (numeric - analytic).abs() < 1e-3,
                    "{act} at {z}: derivative {analytic}, central difference {numeric}"
                );
            }
        }
    }
}
