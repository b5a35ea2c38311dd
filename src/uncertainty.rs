//! What an ensemble knows that one network does not: how much its members disagree.
//! [`Uncertainty`] holds the measures of the uncertainty literature (and of its
//! libraries, torch-uncertainty and Fortuna) over the members that answered a run;
//! `measure` computes them from the members' outputs, in f64.

use crate::tensor::{argmax, Tensor};

/// Per-row measures of the members' disagreement, asked for with
/// [`RunOptions::uncertainty`](crate::RunOptions::uncertainty).
///
/// With p̄ = Σₘ wₘ pₘ / Σₘ wₘ over the members that answered (the aggregate's weights;
/// equal weights for a mean or an unweighted vote), natural logarithms, and each
/// member's output taken as a distribution over the classes (a softmax layer's; an
/// output of 0 or below adds nothing to an entropy, so other outputs give numbers
/// without that meaning):
///
/// - `entropy`: H(p̄) = −Σ_c p̄_c ln p̄_c, the total uncertainty;
/// - `expected_entropy`: Σₘ wₘ H(pₘ) / Σₘ wₘ, the aleatoric part;
/// - `mutual_information`: H(p̄) − expected entropy, clamped at 0, the epistemic part
///   (BALD);
/// - `variance`: per class, Σₘ wₘ (pₘ_c − p̄_c)² / Σₘ wₘ;
/// - `disagreement`: 1 − (the weight of the members voting for the modal class) /
///   (the total weight), the variation ratio; a member votes for its largest output
///   (the lowest class among equals) and the modal class is the one with the most
///   weight (the lowest among equals), as [`Aggregate::Vote`](crate::Aggregate::Vote)
///   counts.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Uncertainty {
    /// H(p̄) per row, `[rows]`.
    pub entropy: Vec<f32>,
    /// The weighted mean of the members' entropies per row, `[rows]`.
    pub expected_entropy: Vec<f32>,
    /// `entropy − expected_entropy`, at least 0, per row, `[rows]`.
    pub mutual_information: Vec<f32>,
    /// The variation ratio per row, `[rows]`.
    pub disagreement: Vec<f32>,
    /// The weighted variance of each class across the members, `[rows, classes]`.
    pub variance: Tensor,
}

impl Uncertainty {
    /// `[rows, 4]`: entropy, expected entropy, mutual information and disagreement per
    /// row (what `predict --uncertainty-output` writes).
    pub fn summary(&self) -> Tensor {
        let rows = self.entropy.len();
        let mut values = Vec::with_capacity(rows * 4);
        for r in 0..rows {
            values.extend_from_slice(&[
                self.entropy[r],
                self.expected_entropy[r],
                self.mutual_information[r],
                self.disagreement[r],
            ]);
        }
        Tensor::from_parts(vec![rows, 4], values)
    }
}

/// −Σ p ln p over the values above 0.
fn entropy(p: impl Iterator<Item = f64>) -> f64 {
    -p.filter(|&v| v > 0.0).map(|v| v * v.ln()).sum::<f64>()
}

/// The measures over `members`, each a `[rows, cols]` output and its weight (weights
/// positive; at least one member).
pub(crate) fn measure(members: &[(&[f32], f32)], rows: usize, cols: usize) -> Uncertainty {
    let total: f64 = members.iter().map(|(_, w)| f64::from(*w)).sum();
    let mut out = Uncertainty {
        entropy: Vec::with_capacity(rows),
        expected_entropy: Vec::with_capacity(rows),
        mutual_information: Vec::with_capacity(rows),
        disagreement: Vec::with_capacity(rows),
        variance: Tensor::zeros(rows, cols),
    };
    let mut variance = vec![0.0f32; rows * cols];
    let mut mean = vec![0.0f64; cols];
    let mut votes = vec![0.0f64; cols];
    for r in 0..rows {
        let span = r * cols..(r + 1) * cols;
        mean.iter_mut().for_each(|m| *m = 0.0);
        votes.iter_mut().for_each(|v| *v = 0.0);
        let mut expected = 0.0;
        for (y, w) in members {
            let (w, p) = (f64::from(*w), &y[span.clone()]);
            for (m, &v) in mean.iter_mut().zip(p) {
                *m += w * f64::from(v);
            }
            expected += w * entropy(p.iter().map(|&v| f64::from(v)));
            votes[argmax(p)] += w;
        }
        mean.iter_mut().for_each(|m| *m /= total);
        expected /= total;
        let h = entropy(mean.iter().copied());
        for (y, w) in members {
            let w = f64::from(*w);
            for (c, &v) in y[span.clone()].iter().enumerate() {
                let d = f64::from(v) - mean[c];
                variance[r * cols + c] += (w * d * d / total) as f32;
            }
        }
        // The modal class: the most weight, the lowest class among equals.
        let modal = votes
            .iter()
            .fold(0.0f64, |best, &v| if v > best { v } else { best });
        out.entropy.push(h as f32);
        out.expected_entropy.push(expected as f32);
        out.mutual_information.push((h - expected).max(0.0) as f32);
        out.disagreement.push((1.0 - modal / total).max(0.0) as f32);
    }
    out.variance = Tensor::from_parts(vec![rows, cols], variance);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_member_and_identical_members_have_no_epistemic_part() {
        let p = [0.7f32, 0.2, 0.1, 0.25, 0.25, 0.5];
        for members in [vec![(&p[..], 1.0)], vec![(&p[..], 0.3), (&p[..], 0.7)]] {
            let u = measure(&members, 2, 3);
            assert!(
                u.mutual_information.iter().all(|&v| v.abs() < 1e-6),
                "{u:?}"
            );
            assert!(u.disagreement.iter().all(|&v| v == 0.0), "{u:?}");
            assert!(
                u.variance.as_slice().iter().all(|&v| v.abs() < 1e-7),
                "{u:?}"
            );
            let h0 = -(0.7f64 * 0.7f64.ln() + 0.2 * 0.2f64.ln() + 0.1 * 0.1f64.ln());
            assert!((f64::from(u.entropy[0]) - h0).abs() < 1e-6, "{u:?}");
        }
    }

    #[test]
    fn two_confident_members_that_disagree() {
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 1.0];
        let u = measure(&[(&a[..], 1.0), (&b[..], 1.0)], 1, 2);
        let ln2 = std::f32::consts::LN_2;
        assert!((u.entropy[0] - ln2).abs() < 1e-6);
        assert_eq!(u.expected_entropy[0], 0.0);
        assert!((u.mutual_information[0] - ln2).abs() < 1e-6);
        assert!((u.disagreement[0] - 0.5).abs() < 1e-6);
        assert!((u.variance.as_slice()[0] - 0.25).abs() < 1e-6);
        // Weighted 3:1, the modal class holds three quarters of the weight.
        let u = measure(&[(&a[..], 0.75), (&b[..], 0.25)], 1, 2);
        assert!((u.disagreement[0] - 0.25).abs() < 1e-6);
        assert_eq!(u.summary().shape(), &[1, 4]);
    }
}
