//! What an ensemble knows that one network does not: how much its members disagree.
//! [`Uncertainty`] holds the measures of the uncertainty literature (and of its
//! libraries, torch-uncertainty and Fortuna) over the members that answered a run.
//! Each executor reduces its members' outputs to a [`Moments`] group where they are
//! (moments.wgsl on a GPU, [`Moments::of`] on the host); the aggregate node merges
//! the groups and finishes the measures in f64 ([`finish`]).

use rayon::prelude::*;

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

/// Values per row of a [`Moments`] group for `cols` classes: the group's weighted
/// mean (`cols`), weighted variance (`cols`), vote shares (`cols`) and mean entropy
/// (1), in that order — the layout moments.wgsl writes.
pub(crate) fn moments_width(cols: usize) -> usize {
    3 * cols + 1
}

/// One group of members' contribution to the uncertainty measures: what an executor
/// computes from its members' outputs while they are on its device (moments.wgsl on a
/// GPU, [`Moments::of`] on the host), so that only `moments_width(cols)` values per row
/// cross to the aggregate node instead of every member's output. Groups merge exactly
/// ([`finish`]): each holds statistics normalized by its own weight, which the merge
/// weighs again.
#[derive(Clone, Debug)]
pub(crate) struct Moments {
    /// The aggregate weight of the group's members (positive; the unscaled weights).
    pub(crate) weight: f64,
    /// `[rows, moments_width(cols)]`, per row: Σ wₘ pₘ / W, Σ wₘ (pₘ − mean)² / W, the
    /// weight voting for each class / W, and Σ wₘ H(pₘ) / W, with W the group's weight.
    pub(crate) values: Vec<f32>,
}

impl Moments {
    /// Row `r`'s values, `width` of them.
    fn row(&self, r: usize, width: usize) -> &[f32] {
        &self.values[r * width..(r + 1) * width]
    }

    /// The group of `members` (each a `[rows, cols]` output and its weight, weights
    /// positive; at least one member), computed on the host in f64.
    pub(crate) fn of(members: &[(&[f32], f32)], rows: usize, cols: usize) -> Moments {
        let width = moments_width(cols);
        let total: f64 = members.iter().map(|(_, w)| f64::from(*w)).sum();
        let mut values = vec![0.0f32; rows * width];
        // Blocks of rows on rayon's threads (a logarithm per member and class is the
        // cost): each block's rows in order, with its own scratch.
        const BLOCK: usize = 64;
        values
            .par_chunks_mut(BLOCK * width)
            .enumerate()
            .for_each(|(block, out)| {
                let mut mean = vec![0.0f64; cols];
                let mut spread = vec![0.0f64; cols];
                let mut votes = vec![0.0f64; cols];
                for (i, out) in out.chunks_exact_mut(width).enumerate() {
                    let r = block * BLOCK + i;
                    let span = r * cols..(r + 1) * cols;
                    mean.iter_mut().for_each(|m| *m = 0.0);
                    spread.iter_mut().for_each(|v| *v = 0.0);
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
                    for (y, w) in members {
                        let w = f64::from(*w);
                        for ((s, &v), m) in spread.iter_mut().zip(&y[span.clone()]).zip(&mean) {
                            let d = f64::from(v) - m;
                            *s += w * d * d;
                        }
                    }
                    let (means, rest) = out.split_at_mut(cols);
                    let (variances, rest) = rest.split_at_mut(cols);
                    let (shares, last) = rest.split_at_mut(cols);
                    for c in 0..cols {
                        means[c] = mean[c] as f32;
                        variances[c] = (spread[c] / total) as f32;
                        shares[c] = (votes[c] / total) as f32;
                    }
                    last[0] = (expected / total) as f32;
                }
            });
        Moments {
            weight: total,
            values,
        }
    }
}

/// The measures over every member of `groups` (each group's weight positive; at least
/// one group): the groups' statistics merged by weight in f64 — means and vote shares
/// and mean entropies as weighted means, variances by the parallel rule
/// Σ W_g (v_g + (mean_g − mean)²) / Σ W_g — then H(p̄), the mutual information and
/// the variation ratio from the merged values.
pub(crate) fn finish(groups: &[Moments], rows: usize, cols: usize) -> Uncertainty {
    let width = moments_width(cols);
    let total: f64 = groups.iter().map(|g| g.weight).sum();
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
    for (r, var_row) in variance
        .chunks_exact_mut(cols.max(1))
        .take(rows)
        .enumerate()
    {
        mean.iter_mut().for_each(|m| *m = 0.0);
        votes.iter_mut().for_each(|v| *v = 0.0);
        let mut expected = 0.0;
        for g in groups {
            let v = g.row(r, width);
            for c in 0..cols {
                mean[c] += g.weight * f64::from(v[c]);
                votes[c] += g.weight * f64::from(v[2 * cols + c]);
            }
            expected += g.weight * f64::from(v[3 * cols]);
        }
        mean.iter_mut().for_each(|m| *m /= total);
        expected /= total;
        for (c, slot) in var_row.iter_mut().enumerate().take(cols) {
            let spread: f64 = groups
                .iter()
                .map(|g| {
                    let v = g.row(r, width);
                    let d = f64::from(v[c]) - mean[c];
                    g.weight * (f64::from(v[cols + c]) + d * d)
                })
                .sum();
            *slot = (spread / total).max(0.0) as f32;
        }
        let h = entropy(mean.iter().copied());
        // The modal class's share of the weight.
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

/// The measures over `members`, each a `[rows, cols]` output and its weight (weights
/// positive; at least one member): one group, finished.
#[cfg(test)]
pub(crate) fn measure(members: &[(&[f32], f32)], rows: usize, cols: usize) -> Uncertainty {
    finish(&[Moments::of(members, rows, cols)], rows, cols)
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

    #[test]
    fn groups_merge_to_the_measures_of_all_their_members() {
        // Three members of two rows of three classes, weighted, in groups of two and
        // one: the merge equals the one group of all three (the variance's parallel
        // rule included).
        let a = [0.7f32, 0.2, 0.1, 0.1, 0.1, 0.8];
        let b = [0.1f32, 0.6, 0.3, 0.2, 0.7, 0.1];
        let c = [0.3f32, 0.3, 0.4, 0.9, 0.05, 0.05];
        let all = [(&a[..], 0.5f32), (&b[..], 1.5), (&c[..], 1.0)];
        let whole = finish(&[Moments::of(&all, 2, 3)], 2, 3);
        let merged = finish(
            &[Moments::of(&all[..2], 2, 3), Moments::of(&all[2..], 2, 3)],
            2,
            3,
        );
        let close = |x: &[f32], y: &[f32]| {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert!((p - q).abs() < 1e-6, "at {i}: {p} vs {q}");
            }
        };
        close(&whole.entropy, &merged.entropy);
        close(&whole.expected_entropy, &merged.expected_entropy);
        close(&whole.mutual_information, &merged.mutual_information);
        close(&whole.disagreement, &merged.disagreement);
        close(whole.variance.as_slice(), merged.variance.as_slice());
        // Row 0: a votes 0 (0.5), b and c vote 1 and 2 (1.5, 1.0): the modal class holds
        // half the weight.
        assert!((whole.disagreement[0] - 0.5).abs() < 1e-6);
    }
}
