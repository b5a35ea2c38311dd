//! Aggregation rules of the aggregate node.
//!
//! Every rule is a weighted sum divided by the total weight, which lets members that
//! share a device be combined on that device first (one partial sum per device, see
//! `shaders/aggregate.wgsl`) and the partial sums be added on the host:
//!
//! - [`Aggregate::Mean`]: `Σ_i y_i / K`;
//! - [`Aggregate::WeightedMean`]: `Σ_i w_i · y_i / Σ_i w_i`;
//! - [`Aggregate::Vote`]: member `i` adds `w_i` (1 when unweighted) to the class of its
//!   largest output, and the result is each class's share `Σ votes / Σ_i w_i`.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::tensor::argmax;

/// How the aggregate node combines the members' outputs.
#[derive(Clone, Debug, PartialEq, Default)]
#[non_exhaustive]
pub enum Aggregate {
    /// The element-wise mean of the member outputs.
    #[default]
    Mean,
    /// The element-wise mean weighted by one non-negative weight per member (in member
    /// order), normalised by the sum of the weights.
    WeightedMean(Vec<f32>),
    /// Hard vote: each member votes for the class (column) of its largest output, with
    /// weight 1 or its entry of `weights`. The output row holds each class's share of
    /// the total weight, so it sums to 1.
    ///
    /// A member's vote goes to the lowest class index among equal maxima; NaN never
    /// wins, and a row of only NaN (or `-inf`) votes for class 0. To turn shares into a
    /// class, [`Tensor::argmax_rows`](crate::Tensor::argmax_rows) applies the same rule.
    Vote {
        /// Optional per-member weights, in member order.
        weights: Option<Vec<f32>>,
    },
    /// Stacking: a dense `blender` model whose input is every member's output row
    /// concatenated in member order (`members × output_width` wide) and whose output
    /// is the aggregate (`output_width` wide), applied once every member has answered.
    /// Its first layer is linear in the members' outputs, so each device applies its
    /// members' columns of that layer where their outputs are and sends the sums; the
    /// aggregate node (the caller's thread) adds them, the bias and the activation and
    /// runs the blender's other layers on the host.
    ///
    /// When a run under [`QuorumPolicy::Quorum`](crate::QuorumPolicy::Quorum) has members
    /// missing, the blender cannot be applied: the aggregate is then the equal-weight
    /// mean of the members that finished, and
    /// [`RunOutput::stacked`](crate::RunOutput::stacked) is `Some(false)`.
    Stack {
        /// The blender: input `members × output_width`, output `output_width`.
        blender: Arc<Model>,
    },
}

/// What a member's output contributes to the weighted sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The output values themselves.
    Values = 0,
    /// A one-hot vector at the row's argmax.
    Vote = 1,
}

impl Aggregate {
    /// A short name: `mean`, `weighted_mean`, `vote` or `stack`.
    pub fn name(&self) -> &'static str {
        match self {
            Aggregate::Mean => "mean",
            Aggregate::WeightedMean(_) => "weighted_mean",
            Aggregate::Vote { .. } => "vote",
            Aggregate::Stack { .. } => "stack",
        }
    }

    /// The blender of a [`Aggregate::Stack`].
    pub(crate) fn blender(&self) -> Option<&Arc<Model>> {
        match self {
            Aggregate::Stack { blender } => Some(blender),
            _ => None,
        }
    }

    /// What the workers sum: a stack's workers sum the values, for the mean that
    /// stands in for the blender when members are missing.
    pub(crate) fn mode(&self) -> Mode {
        match self {
            Aggregate::Mean | Aggregate::WeightedMean(_) | Aggregate::Stack { .. } => Mode::Values,
            Aggregate::Vote { .. } => Mode::Vote,
        }
    }

    /// The weight of every member, checked against the member count: one weight per
    /// member, each finite and `>= 0`, at least one positive; normalised to sum to 1
    /// ([`Aggregate::normalise_weights`]).
    pub(crate) fn member_weights(&self, members: usize) -> Result<Vec<f32>> {
        let given = match self {
            Aggregate::Mean | Aggregate::Vote { weights: None } | Aggregate::Stack { .. } => {
                return Ok(vec![1.0; members])
            }
            Aggregate::WeightedMean(w) | Aggregate::Vote { weights: Some(w) } => w,
        };
        if given.len() != members {
            return Err(Error::AggregateWeightCount {
                expected: members,
                got: given.len(),
            });
        }
        let given: Vec<f64> = given.iter().map(|&w| f64::from(w)).collect();
        Self::normalise_weights(&given)
    }

    /// Aggregate weights given in f64 (a manifest's), each divided by their total in
    /// f64 before it is narrowed to f32, so that weights of any finite magnitude keep
    /// their ratios: `[1e-50, 1e-50]` (zero in f32) and `[1e308, 1e-308]` (infinite in
    /// f32) are `[0.5, 0.5]` and `[1, 0]`. A weight below f32's smallest value
    /// (about 1.4e-45) times the total becomes 0.
    ///
    /// Errors: [`Error::AggregateWeight`] for a weight that is negative, NaN or
    /// infinite (the first), [`Error::AggregateWeightsAllZero`] when none is positive.
    pub fn normalise_weights(weights: &[f64]) -> Result<Vec<f32>> {
        if let Some((index, &value)) = weights
            .iter()
            .enumerate()
            .find(|(_, w)| !w.is_finite() || **w < 0.0)
        {
            return Err(Error::AggregateWeight {
                index,
                value: value as f32,
            });
        }
        // Scaled by the largest first: the sum of the scaled weights is in [1, n], so
        // it neither overflows (weights near f64::MAX) nor vanishes (subnormal ones).
        let largest = weights.iter().copied().fold(0.0, f64::max);
        if largest <= 0.0 {
            return Err(Error::AggregateWeightsAllZero);
        }
        let total: f64 = weights.iter().map(|&w| w / largest).sum();
        Ok(weights
            .iter()
            .map(|&w| (w / largest / total) as f32)
            .collect())
    }
}

/// The members' `[rows, cols]` outputs side by side, row by row in member order:
/// `[rows, members × cols]`, a stack's blender input. [`Error::ShapeTooLarge`] when
/// it cannot be allocated.
pub(crate) fn side_by_side(outputs: &[&[f32]], rows: usize, cols: usize) -> Result<Vec<f32>> {
    let width = outputs.len().saturating_mul(cols);
    let too_large = || Error::ShapeTooLarge {
        shape: vec![rows, width],
    };
    let total = rows.checked_mul(width).ok_or_else(too_large)?;
    let mut values = Vec::new();
    values.try_reserve_exact(total).map_err(|_| too_large())?;
    for r in 0..rows {
        for y in outputs {
            values.extend_from_slice(&y[r * cols..(r + 1) * cols]);
        }
    }
    Ok(values)
}

/// Adds `weight ×` one member's `[rows, cols]` output (or its one-hot votes) to `acc`.
pub(crate) fn accumulate(acc: &mut [f32], output: &[f32], cols: usize, weight: f32, mode: Mode) {
    match mode {
        Mode::Values => {
            for (a, &y) in acc.iter_mut().zip(output) {
                *a += weight * y;
            }
        }
        Mode::Vote => {
            for (acc_row, row) in acc.chunks_mut(cols).zip(output.chunks(cols)) {
                acc_row[argmax(row)] += weight;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_checked() {
        let agg = Aggregate::WeightedMean(vec![1.0, 2.0]);
        assert!(matches!(
            agg.member_weights(3),
            Err(Error::AggregateWeightCount {
                expected: 3,
                got: 2
            })
        ));
        let agg = Aggregate::Vote {
            weights: Some(vec![1.0, -0.5]),
        };
        assert!(matches!(
            agg.member_weights(2),
            Err(Error::AggregateWeight { index: 1, .. })
        ));
        let agg = Aggregate::WeightedMean(vec![0.0, 0.0]);
        assert!(matches!(
            agg.member_weights(2),
            Err(Error::AggregateWeightsAllZero)
        ));
        assert_eq!(Aggregate::Mean.member_weights(2).unwrap(), vec![1.0, 1.0]);
        // Extreme but valid weights are normalised without overflow or underflow.
        let w = Aggregate::WeightedMean(vec![3e38, 3e38])
            .member_weights(2)
            .unwrap();
        assert_eq!(w, vec![0.5, 0.5]);
        let w = Aggregate::WeightedMean(vec![1e-40, 0.0])
            .member_weights(2)
            .unwrap();
        assert_eq!(w, vec![1.0, 0.0]);
        // Weights beyond f32's range, given in f64, are normalised before narrowing.
        let w = Aggregate::normalise_weights(&[1e-50, 1e-50]).unwrap();
        assert_eq!(w, vec![0.5, 0.5]);
        let w = Aggregate::normalise_weights(&[1e308, 1e-308, 1e308]).unwrap();
        assert_eq!(w, vec![0.5, 0.0, 0.5]);
        let w = Aggregate::normalise_weights(&[f64::MAX, f64::MAX]).unwrap();
        assert_eq!(w, vec![0.5, 0.5]);
        let w = Aggregate::normalise_weights(&[5e-324, 0.0, 1.5e-323]).unwrap();
        assert_eq!(w, vec![0.25, 0.0, 0.75]);
        assert!(matches!(
            Aggregate::normalise_weights(&[0.0, 0.0]),
            Err(Error::AggregateWeightsAllZero)
        ));
        assert!(matches!(
            Aggregate::normalise_weights(&[1.0, f64::INFINITY]),
            Err(Error::AggregateWeight { index: 1, .. })
        ));
        assert!(matches!(
            Aggregate::normalise_weights(&[f64::NAN]),
            Err(Error::AggregateWeight { index: 0, .. })
        ));
    }

    #[test]
    fn vote_accumulates_weight_at_argmax() {
        let mut acc = vec![0.0; 4];
        accumulate(&mut acc, &[0.1, 0.9, 0.7, 0.7], 2, 2.0, Mode::Vote);
        assert_eq!(acc, vec![0.0, 2.0, 2.0, 0.0]);
    }
}
