//! Fitting a stack's blender: a multinomial logistic regression on the members'
//! outputs side by side, the objective of scikit-learn's `LogisticRegression` with its
//! default L2 penalty — `Σ_i −log p(y_i | x_i) + ||W||² / (2C)`, the intercept not
//! penalised (scikit-learn divides both terms by the row count, which moves no
//! optimum) — minimised in f64 by L-BFGS until the gradient vanishes. The objective is
//! strictly convex in `W`, so the fitted probabilities are scikit-learn's (at its own
//! convergence tolerance) whatever the path.

use std::path::Path;

use crate::aggregate::side_by_side;
use crate::error::{Error, Result};
use crate::io::{read_array, Array};
use crate::model::{Activation, Dense, Model};
use crate::report::{MemberStatus, RunOutput};
use crate::tensor::Tensor;

/// Iterations after which the fit stops even if the gradient has not vanished.
const MAX_ITERATIONS: usize = 10_000;

/// Pairs of steps L-BFGS remembers.
const MEMORY: usize = 10;

/// The gradient's largest entry (of the objective divided by the row count, as
/// scikit-learn's `tol` measures it) at which the fit has converged: 10⁴ times tighter
/// than scikit-learn's default, and within reach of f64 rounding (on the digits
/// members' outputs the gradient stalls near 2e-10).
const TOLERANCE: f64 = 1e-8;

/// A fitted blender and how the fit went.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BlenderFit {
    /// One dense layer `[classes, features]` with a softmax: the blender to save.
    pub model: Model,
    /// L-BFGS iterations taken.
    pub iterations: usize,
    /// The objective (summed log-loss plus the penalty) at the end, in f64.
    pub objective: f64,
    /// The gradient's largest entry at the end (of the objective over the row count).
    pub gradient: f64,
    /// Whether the gradient fell below the tolerance (else the iterations ran out or
    /// the line search could not go on, at the objective's floor in f64).
    pub converged: bool,
}

/// The most parameters (`classes × (features + 1)`) [`fit_blender`] fits: 2^22.
pub const MAX_BLENDER_PARAMETERS: usize = 1 << 22;

/// Fits a multinomial logistic regression of `labels` (each `0..classes`) on `x`
/// (`[rows, features]`, the members' outputs side by side) with inverse
/// regularisation strength `c`, as scikit-learn's `LogisticRegression(C=c)` does.
///
/// Errors: [`Error::Rank`] for an `x` that is not a matrix, [`Error::EmptyBatch`] for
/// no rows, [`Error::DataRows`] when `labels` has another length,
/// [`Error::NonFiniteData`] for a NaN or infinite feature, [`Error::TrainData`] for
/// fewer than 2 classes, a label out of range or more than
/// [`MAX_BLENDER_PARAMETERS`] parameters, [`Error::InvalidHyper`] for a `c`
/// that is not finite and positive.
pub fn fit_blender(x: &Tensor, labels: &[i64], classes: usize, c: f64) -> Result<BlenderFit> {
    let (rows, features) = x.dims2("blender features")?;
    if rows == 0 {
        return Err(Error::EmptyBatch);
    }
    if labels.len() != rows {
        return Err(Error::DataRows {
            x: rows,
            y: labels.len(),
        });
    }
    if classes < 2 {
        return Err(Error::TrainData {
            key: "classes",
            expected: "at least 2".to_string(),
            got: classes.to_string(),
        });
    }
    if !(c.is_finite() && c > 0.0) {
        return Err(Error::InvalidHyper {
            field: "c",
            expected: "a finite value > 0",
            got: c.to_string(),
        });
    }
    // L-BFGS keeps about 24 vectors of the parameters in f64: the limit bounds that
    // to 768 MiB, rather than an allocation the system grants and then kills for.
    let parameters = features.checked_add(1).and_then(|f| f.checked_mul(classes));
    if parameters.is_none_or(|n| n > MAX_BLENDER_PARAMETERS) {
        return Err(Error::TrainData {
            key: "x",
            expected: format!(
                "at most {MAX_BLENDER_PARAMETERS} (2^22) blender parameters, classes × (features + 1)"
            ),
            got: format!("{classes} classes × ({features} + 1) features"),
        });
    }
    if let Some((i, &v)) = x
        .as_slice()
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
    {
        return Err(Error::NonFiniteData {
            key: "x",
            index: vec![i / features.max(1), i % features.max(1)],
            value: v,
        });
    }
    let y = labels
        .iter()
        .enumerate()
        .map(|(row, &l)| match usize::try_from(l) {
            Ok(l) if l < classes => Ok(l),
            _ => Err(Error::TrainData {
                key: "y",
                expected: format!("labels 0 to {} ({classes} classes)", classes - 1),
                got: format!("{l} at row {row}"),
            }),
        })
        .collect::<Result<Vec<usize>>>()?;
    let problem = Problem {
        x: x.as_slice().iter().map(|&v| f64::from(v)).collect(),
        y,
        rows,
        features,
        classes,
        penalty: 1.0 / c,
    };
    let (theta, iterations, objective, gradient, converged) = lbfgs(&problem);
    let stride = features + 1;
    let weight: Vec<f32> = (0..classes)
        .flat_map(|k| {
            theta[k * stride..k * stride + features]
                .iter()
                .map(|&w| w as f32)
        })
        .collect();
    let bias: Vec<f32> = (0..classes)
        .map(|k| theta[k * stride + features] as f32)
        .collect();
    let layer = Dense::new(
        Tensor::matrix(classes, features, weight)?,
        bias,
        Activation::Softmax,
    )?;
    Ok(BlenderFit {
        model: Model::new(vec![layer])?,
        iterations,
        objective,
        gradient,
        converged,
    })
}

/// Class labels from a `.npy` file of integers, `[n]` or `[n, 1]` (a regular file).
///
/// Errors: those of reading the file, and [`Error::TrainData`] naming the shape or
/// the dtype when it is not a column of integers.
pub fn read_labels(path: &Path) -> Result<Vec<i64>> {
    match read_array(path)? {
        Array::Int { shape, values } if shape.len() == 1 || shape.get(1) == Some(&1) => Ok(values),
        Array::Int { shape, .. } => Err(Error::TrainData {
            key: "y",
            expected: "integer labels of shape [n] or [n, 1]".to_string(),
            got: format!("shape {shape:?}"),
        }),
        Array::Float(t) => Err(Error::TrainData {
            key: "y",
            expected: "integer labels of shape [n] or [n, 1]".to_string(),
            got: format!("floats of shape {:?}", t.shape()),
        }),
    }
}

/// A run's member outputs side by side in member order, `[rows, members × width]`:
/// the features a stack's blender takes. The run must have asked for
/// [`RunOptions::member_outputs`](crate::RunOptions::member_outputs).
///
/// Errors: [`Error::TrainData`] naming the first member without an output (it did
/// not finish, or the outputs were not asked for).
pub fn stack_outputs(run: &RunOutput) -> Result<Tensor> {
    let (rows, cols) = run.aggregate.dims2("aggregate")?;
    let outputs = run
        .members
        .iter()
        .map(|m| match (&m.status, &m.output) {
            (MemberStatus::Finished, Some(y)) => Ok(y.as_slice()),
            _ => Err(Error::TrainData {
                key: "member outputs",
                expected: "every member's output".to_string(),
                got: format!("none from member '{}'", m.name),
            }),
        })
        .collect::<Result<Vec<_>>>()?;
    let values = side_by_side(&outputs, rows, cols)?;
    Tensor::matrix(rows, outputs.len() * cols, values)
}

/// The regression in f64: parameters per class `k` at `k * (features + 1)`, the
/// weights then the intercept.
struct Problem {
    x: Vec<f64>,
    y: Vec<usize>,
    rows: usize,
    features: usize,
    classes: usize,
    /// `1 / C`.
    penalty: f64,
}

impl Problem {
    /// The objective and its gradient at `theta`.
    fn evaluate(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (f, k_n) = (self.features, self.classes);
        let stride = f + 1;
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0;
        let mut z = vec![0.0; k_n];
        for (row, x) in self.x.chunks_exact(f.max(1)).take(self.rows).enumerate() {
            let x = &x[..f];
            for (k, zk) in z.iter_mut().enumerate() {
                let w = &theta[k * stride..k * stride + f];
                *zk = theta[k * stride + f] + w.iter().zip(x).map(|(a, b)| a * b).sum::<f64>();
            }
            let top = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = z.iter().map(|&v| (v - top).exp()).sum();
            let log_total = top + total.ln();
            loss += log_total - z[self.y[row]];
            for (k, &zk) in z.iter().enumerate() {
                let p = (zk - log_total).exp();
                let d = p - if k == self.y[row] { 1.0 } else { 0.0 };
                let g = &mut grad[k * stride..(k + 1) * stride];
                for (gj, &xj) in g[..f].iter_mut().zip(x) {
                    *gj += d * xj;
                }
                g[f] += d;
            }
        }
        let mut norm = 0.0;
        for k in 0..k_n {
            for j in 0..f {
                let w = theta[k * stride + j];
                norm += w * w;
                grad[k * stride + j] += self.penalty * w;
            }
        }
        loss + 0.5 * self.penalty * norm
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn largest(v: &[f64], rows: usize) -> f64 {
    v.iter().fold(0.0f64, |m, g| m.max(g.abs())) / rows as f64
}

/// L-BFGS from zero with a backtracking (Armijo) line search: the parameters, the
/// iterations, the objective, the gradient's largest entry over the rows, and whether
/// it fell below [`TOLERANCE`].
fn lbfgs(p: &Problem) -> (Vec<f64>, usize, f64, f64, bool) {
    let n = p.classes * (p.features + 1);
    let mut theta = vec![0.0; n];
    let mut grad = vec![0.0; n];
    let mut value = p.evaluate(&theta, &mut grad);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> =
        std::collections::VecDeque::with_capacity(MEMORY);
    let mut next = vec![0.0; n];
    let mut next_grad = vec![0.0; n];
    for iteration in 0..MAX_ITERATIONS {
        let norm = largest(&grad, p.rows);
        if norm <= TOLERANCE {
            return (theta, iteration, value, norm, true);
        }
        // The two-loop recursion: direction = −H·grad.
        let mut q = grad.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        if let Some((s, y, _)) = history.back() {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|qi| *qi *= gamma);
        } else {
            // The first step: a unit step along the gradient scaled to the rows.
            let scale = 1.0 / (p.rows as f64);
            q.iter_mut().for_each(|qi| *qi *= scale);
        }
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let mut slope = -dot(&grad, &q);
        if slope >= 0.0 {
            // Not a descent direction (rounding): restart from the gradient.
            history.clear();
            q.clone_from(&grad);
            q.iter_mut().for_each(|qi| *qi /= p.rows as f64);
            slope = -dot(&grad, &q);
        }
        let mut step = 1.0;
        let mut accepted = false;
        for _ in 0..60 {
            for ((t, x), d) in next.iter_mut().zip(&theta).zip(&q) {
                *t = x - step * d;
            }
            let v = p.evaluate(&next, &mut next_grad);
            if v <= value + 1e-4 * step * slope {
                let s: Vec<f64> = next.iter().zip(&theta).map(|(a, b)| a - b).collect();
                let y: Vec<f64> = next_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
                let sy = dot(&s, &y);
                if sy > 1e-300 {
                    if history.len() == MEMORY {
                        history.pop_front();
                    }
                    history.push_back((s, y, 1.0 / sy));
                }
                std::mem::swap(&mut theta, &mut next);
                std::mem::swap(&mut grad, &mut next_grad);
                // A step that no longer lowers the objective: its floor in f64.
                accepted = v < value;
                value = v;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            // No decrease is left in f64 (none found, or the step's was none): the
            // objective's floor.
            let norm = largest(&grad, p.rows);
            return (theta, iteration, value, norm, norm <= TOLERANCE);
        }
    }
    let norm = largest(&grad, p.rows);
    (theta, MAX_ITERATIONS, value, norm, norm <= TOLERANCE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fit's gradient vanishes (checked by finite differences of the objective),
    /// and bad input is refused.
    #[test]
    fn fits_and_refuses_bad_input() {
        let x = Tensor::matrix(
            6,
            2,
            vec![0.9, 0.1, 0.8, 0.3, 0.2, 0.7, 0.1, 0.9, 0.6, 0.5, 0.4, 0.4],
        )
        .unwrap();
        let labels = [0, 0, 1, 1, 0, 1];
        let fit = fit_blender(&x, &labels, 2, 1.0).unwrap();
        assert!(fit.converged, "{fit:?}");
        let layer = &fit.model.layers()[0];
        assert_eq!(layer.weight().shape(), &[2, 2]);
        assert_eq!(layer.activation(), Activation::Softmax);
        // Symmetric classes: the weights of the two classes are opposite.
        let w = layer.weight().as_slice();
        assert!(
            (w[0] + w[2]).abs() < 1e-6 && (w[1] + w[3]).abs() < 1e-6,
            "{w:?}"
        );
        assert!(matches!(
            fit_blender(&x, &[0, 1, 2, 0, 1, 0], 2, 1.0),
            Err(Error::TrainData { key: "y", .. })
        ));
        assert!(matches!(
            fit_blender(&x, &[0, 1], 2, 1.0),
            Err(Error::DataRows { x: 6, y: 2 })
        ));
        assert!(matches!(
            fit_blender(&x, &labels, 2, 0.0),
            Err(Error::InvalidHyper { field: "c", .. })
        ));
        assert!(matches!(
            fit_blender(&x, &[0, -1, 0, 0, 0, 0], 2, 1.0),
            Err(Error::TrainData { key: "y", .. })
        ));
    }
}
