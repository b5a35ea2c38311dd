//! One member across several devices (model parallelism): [`Split`] says how, and
//! this module plans it — the stages of a split by layers, the steps of a split by
//! columns — as sub-models that ordinary executors run. Pure data: the runtime's
//! `runtime/split.rs` runs the plan.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::model::{Activation, Dense, Model};
use crate::placement::Placement;
use crate::tensor::Tensor;

/// How a split member's work is divided among its devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SplitKind {
    /// Contiguous ranges of layers, one stage per device; the batch is cut into
    /// micro-batches that flow through the stages (GPipe's schedule).
    Layers,
    /// Every layer's outputs divided among the devices; a layer followed by another is
    /// paired with it (Megatron's column-then-row pattern) where that exchanges fewer
    /// values.
    Columns,
}

impl SplitKind {
    /// `layers` or `columns`, as manifests and the command line write it.
    pub fn name(self) -> &'static str {
        match self {
            SplitKind::Layers => "layers",
            SplitKind::Columns => "columns",
        }
    }
}

impl fmt::Display for SplitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SplitKind {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim() {
            "layers" => Ok(SplitKind::Layers),
            "columns" => Ok(SplitKind::Columns),
            _ => Err(Error::invalid("split", text, "layers or columns")),
        }
    }
}

/// One member run across several devices, given to
/// [`GraphBuilder::split_member`](crate::GraphBuilder::split_member): model
/// parallelism.
///
/// - [`Split::layers`]: the layers in contiguous ranges, one stage per device in the
///   order given (balanced by the layers' floating-point operations unless
///   [`Split::boundaries`] says where each stage starts). The batch is cut into
///   [`Split::micro_batches`] near-equal parts (at most one per row) that flow through
///   the stages, so that stage *s* works on micro-batch *i* while stage *s + 1* works
///   on micro-batch *i − 1*. Outputs come back in row order. Over a single device
///   there is nothing to overlap and the batch is not cut.
/// - [`Split::columns`]: every layer's outputs (its weight's rows) divided among the
///   devices in near-equal parts (the first `outputs % devices` parts one wider). Each
///   device computes its part of the layer on the whole input and the parts are
///   gathered on the host before the next layer; a layer with an element-wise
///   activation that is followed by another layer is instead *paired* with it where
///   that exchanges fewer values — the second layer split by its inputs, so each
///   device computes a partial sum of the second layer's outputs, and the host adds
///   the parts, then the bias (once), then the activation (Megatron-LM's
///   column-then-row pattern). Counting the values read back and uploaded per row,
///   a pair moves `2 × devices × outputs₂` where two gathered layers move
///   `(devices + 1) × (outputs₁ + outputs₂)`, so it is chosen when
///   `(devices + 1) × outputs₁ ≥ (devices − 1) × outputs₂` (and it waits for the
///   devices once instead of twice). A softmax is computed over the whole row, on the
///   host, after the parts are gathered or added.
///
/// A split member is one member of the graph: its aggregate weight, deadline, quorum
/// and status are a member's. It is late if any part is late, and it fails when any
/// part fails (a lost device included); the graph's other members are not affected.
/// Its devices may be any placements, the CPU included, and may repeat. Each part
/// gets a device of its own on its adapter (not the one other members placed there
/// share), so that losing it fails this member only; a
/// [`Placement::Device`](crate::Placement::Device) is the caller's device, shared as
/// given. Each part has a thread of its own for the session's life; parts run side
/// by side, and parts on one adapter share its compute units.
///
/// ```
/// use wgpu_ensemble::{Placement, Split};
///
/// let by_layers = Split::layers(vec![Placement::Adapter(0), Placement::Cpu])
///     .micro_batches(4)
///     .boundaries(vec![2]);
/// let by_columns = Split::columns(vec![Placement::Adapter(0), Placement::Adapter(1)]);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Split {
    kind: SplitKind,
    devices: Vec<Placement>,
    micro_batches: Option<usize>,
    boundaries: Option<Vec<usize>>,
}

impl Split {
    /// A split by layers over `devices`, one stage each, in order.
    pub fn layers(devices: Vec<Placement>) -> Self {
        Self {
            kind: SplitKind::Layers,
            devices,
            micro_batches: None,
            boundaries: None,
        }
    }

    /// A split by columns over `devices`.
    pub fn columns(devices: Vec<Placement>) -> Self {
        Self {
            kind: SplitKind::Columns,
            devices,
            micro_batches: None,
            boundaries: None,
        }
    }

    /// A split of `kind` over `devices`.
    pub fn new(kind: SplitKind, devices: Vec<Placement>) -> Self {
        match kind {
            SplitKind::Layers => Self::layers(devices),
            SplitKind::Columns => Self::columns(devices),
        }
    }

    /// Layers only: how many micro-batches a batch is cut into (at least 1; a batch of
    /// fewer rows is cut into one per row). The default is one per device.
    pub fn micro_batches(mut self, micro_batches: usize) -> Self {
        self.micro_batches = Some(micro_batches);
        self
    }

    /// Layers only: the first layer of every stage after the first (one per device
    /// after the first, increasing, each in `1..layers`). By default the stages are
    /// balanced by their floating-point operations.
    pub fn boundaries(mut self, boundaries: Vec<usize>) -> Self {
        self.boundaries = Some(boundaries);
        self
    }

    /// By layers or by columns.
    pub fn kind(&self) -> SplitKind {
        self.kind
    }

    /// The devices, one part each, in order.
    pub fn devices(&self) -> &[Placement] {
        &self.devices
    }

    /// The number of micro-batches asked for (layers only), `None` for the default.
    pub fn micro_batch_count(&self) -> Option<usize> {
        self.micro_batches
    }

    /// The stage boundaries asked for (layers only), `None` for balanced stages.
    pub fn stage_boundaries(&self) -> Option<&[usize]> {
        self.boundaries.as_deref()
    }

    /// The number of micro-batches a batch is cut into: as asked, else one per device.
    pub(crate) fn micro_batches_or_default(&self) -> usize {
        self.micro_batches.unwrap_or(self.devices.len()).max(1)
    }

    /// Checks the split against `member`'s `model`: devices listed, the options of the
    /// other kind absent, micro-batches at least 1, boundaries in range and
    /// increasing, no stage without a layer, no split layer narrower than the parts.
    /// Each error is an [`Error::Split`] naming the key.
    pub(crate) fn check(&self, member: &str, model: &Model) -> Result<()> {
        self.check_options(member)?;
        let bad = |key: &'static str, message: String| Error::Split {
            member: crate::error::excerpt(member),
            key,
            message,
        };
        let parts = self.devices.len();
        let layers = model.layers().len();
        match self.kind {
            SplitKind::Layers => {
                if parts > layers {
                    return Err(bad(
                        "devices",
                        format!(
                            "{parts} devices for a model of {layers} layer(s); expected at most one \
                             device per layer"
                        ),
                    ));
                }
                if let Some(&first) = self
                    .boundaries
                    .iter()
                    .flatten()
                    .find(|&&first| first == 0 || first >= layers)
                {
                    return Err(bad(
                        "boundaries",
                        format!(
                            "{first} is out of range; expected a layer from 1 to {}",
                            layers.saturating_sub(1)
                        ),
                    ));
                }
            }
            SplitKind::Columns => {
                for step in column_plan(model, parts) {
                    let layer = &model.layers()[step.first];
                    if layer.out_features() < parts {
                        return Err(bad(
                            "devices",
                            format!(
                                "{parts} devices for layer {} of {} output(s); expected at most one \
                                 device per output",
                                step.first,
                                layer.out_features()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// What [`Split::check`] can tell without the model (a manifest checks it before
    /// reading any weights): devices listed, micro-batches at least 1, one boundary
    /// per later stage and increasing, no option of the other kind.
    pub(crate) fn check_options(&self, member: &str) -> Result<()> {
        let bad = |key: &'static str, message: String| Error::Split {
            member: crate::error::excerpt(member),
            key,
            message,
        };
        let parts = self.devices.len();
        if parts == 0 {
            return Err(bad(
                "devices",
                "an empty list; expected at least one device".into(),
            ));
        }
        match self.kind {
            SplitKind::Layers => {
                if self.micro_batches == Some(0) {
                    return Err(bad("micro_batches", "0; expected at least 1".into()));
                }
                if let Some(b) = &self.boundaries {
                    if b.len() != parts - 1 {
                        return Err(bad(
                            "boundaries",
                            format!(
                                "{} value(s) for {parts} devices; expected {}, the first layer of \
                                 each stage after the first",
                                b.len(),
                                parts - 1
                            ),
                        ));
                    }
                    if b.windows(2).any(|w| w[1] <= w[0]) {
                        return Err(bad(
                            "boundaries",
                            format!(
                                "{}; expected increasing values",
                                crate::error::excerpt(&format!("{b:?}"))
                            ),
                        ));
                    }
                }
            }
            SplitKind::Columns => {
                for (key, given) in [
                    ("micro_batches", self.micro_batches.is_some()),
                    ("boundaries", self.boundaries.is_some()),
                ] {
                    if given {
                        return Err(bad(key, "given; it is for split = \"layers\" only".into()));
                    }
                }
            }
        }
        Ok(())
    }

    /// The stages of a split by layers: each device's range of layers.
    pub(crate) fn stages(&self, model: &Model) -> Vec<Range<usize>> {
        let layers = model.layers().len();
        let firsts = match &self.boundaries {
            Some(b) => b.clone(),
            None => balanced(model, self.devices.len()),
        };
        let mut starts = vec![0];
        starts.extend(firsts);
        starts.push(layers);
        starts.windows(2).map(|w| w[0]..w[1]).collect()
    }
}

/// The first layer of each stage after the first, for `parts` contiguous stages of at
/// least one layer each whose largest count of floating-point operations is the least
/// (among equals, the one whose last stage starts earliest, and so on backwards).
fn balanced(model: &Model, parts: usize) -> Vec<usize> {
    let cost: Vec<u128> = model
        .layers()
        .iter()
        .map(|l| (l.in_features() as u128) * (l.out_features() as u128))
        .collect();
    let n = cost.len();
    let parts = parts.clamp(1, n.max(1));
    let mut prefix = vec![0u128; n + 1];
    for i in 0..n {
        prefix[i + 1] = prefix[i] + cost[i];
    }
    // best[k][i]: the least largest stage cost of the first i layers in k stages;
    // cut[k][i]: where the last of those stages starts.
    let mut best = vec![vec![u128::MAX; n + 1]; parts + 1];
    let mut cut = vec![vec![0usize; n + 1]; parts + 1];
    best[0][0] = 0;
    for k in 1..=parts {
        for i in k..=n {
            for j in (k - 1)..i {
                if best[k - 1][j] == u128::MAX {
                    continue;
                }
                let c = best[k - 1][j].max(prefix[i] - prefix[j]);
                if c < best[k][i] {
                    best[k][i] = c;
                    cut[k][i] = j;
                }
            }
        }
    }
    let mut firsts = Vec::with_capacity(parts - 1);
    let mut i = n;
    for k in (2..=parts).rev() {
        i = cut[k][i];
        firsts.push(i);
    }
    firsts.reverse();
    firsts
}

/// `width` values divided into `parts` near-equal ranges, the first `width % parts`
/// one wider.
pub(crate) fn ranges(width: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1);
    let (base, extra) = (width / parts, width % parts);
    let mut start = 0;
    (0..parts)
        .map(|p| {
            let w = base + usize::from(p < extra);
            let r = start..start + w;
            start += w;
            r
        })
        .collect()
}

/// One step of a split by columns: the layers it covers (one, or a pair) and how the
/// host joins its parts' outputs.
pub(crate) struct ColumnStep {
    /// Its first layer.
    pub(crate) first: usize,
    /// Whether it pairs `first` with the next layer.
    pub(crate) pair: bool,
}

/// The steps of a split of `model` by columns over `parts` devices: a layer with an
/// element-wise activation is paired with the next one when
/// `(parts + 1) × outputs ≥ (parts − 1) × next outputs` (a pair exchanges fewer values
/// then, and waits once instead of twice).
pub(crate) fn column_plan(model: &Model, parts: usize) -> Vec<ColumnStep> {
    let layers = model.layers();
    let mut steps = Vec::new();
    let mut l = 0;
    while l < layers.len() {
        let pair = l + 1 < layers.len()
            && layers[l].activation() != Activation::Softmax
            && (parts as u128 + 1) * layers[l].out_features() as u128
                >= (parts as u128).saturating_sub(1) * layers[l + 1].out_features() as u128;
        steps.push(ColumnStep { first: l, pair });
        l += if pair { 2 } else { 1 };
    }
    steps
}

/// What the host does with the parts' outputs of one column step.
#[derive(Clone, Debug)]
pub(crate) enum Join {
    /// Each part computed its range of the layer's outputs: place them side by side,
    /// then apply the activation (a softmax; element-wise ones ran on the device).
    Gather {
        ranges: Vec<Range<usize>>,
        activation: Activation,
    },
    /// Each part computed a partial sum of the layer's outputs: add them, the bias,
    /// then the activation.
    Sum {
        bias: Vec<f32>,
        activation: Activation,
    },
}

/// A column step made concrete: each part's sub-model, and the join.
pub(crate) struct ColumnStepModels {
    /// The member's index of the step's first layer.
    pub(crate) first: usize,
    pub(crate) parts: Vec<Model>,
    pub(crate) join: Join,
    pub(crate) output_width: usize,
}

/// The sub-models of a split by columns over `parts` devices, step by step.
pub(crate) fn column_models(model: &Model, parts: usize) -> Result<Vec<ColumnStepModels>> {
    let layers = model.layers();
    column_plan(model, parts)
        .into_iter()
        .map(|step| {
            let a = &layers[step.first];
            let outs = ranges(a.out_features(), parts);
            // Element-wise activations run on the device; a softmax needs the whole
            // row, so its part is linear and the host applies it.
            let device_act = |act: Activation| match act {
                Activation::Softmax => Activation::Identity,
                other => other,
            };
            if !step.pair {
                let sub = outs
                    .iter()
                    .map(|r| Model::new(vec![rows_of(a, r.clone(), device_act(a.activation()))?]))
                    .collect::<Result<Vec<_>>>()?;
                return Ok(ColumnStepModels {
                    first: step.first,
                    parts: sub,
                    join: Join::Gather {
                        ranges: outs,
                        activation: match a.activation() {
                            Activation::Softmax => Activation::Softmax,
                            _ => Activation::Identity,
                        },
                    },
                    output_width: a.out_features(),
                });
            }
            let b = &layers[step.first + 1];
            let sub = outs
                .iter()
                .map(|r| {
                    Model::new(vec![
                        rows_of(a, r.clone(), a.activation())?,
                        inputs_of(b, r.clone())?,
                    ])
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(ColumnStepModels {
                first: step.first,
                parts: sub,
                join: Join::Sum {
                    bias: b.bias().to_vec(),
                    activation: b.activation(),
                },
                output_width: b.out_features(),
            })
        })
        .collect()
}

/// The sub-models of a split by layers: one per stage.
pub(crate) fn stage_models(model: &Model, stages: &[Range<usize>]) -> Result<Vec<Model>> {
    stages
        .iter()
        .map(|r| Model::new(model.layers()[r.clone()].to_vec()))
        .collect()
}

/// The layer's outputs `rows` (its weight's rows and their biases), with `activation`.
fn rows_of(layer: &Dense, rows: Range<usize>, activation: Activation) -> Result<Dense> {
    let inp = layer.in_features();
    let w = &layer.weight().as_slice()[rows.start * inp..rows.end * inp];
    Dense::new(
        Tensor::matrix(rows.len(), inp, w.to_vec())?,
        layer.bias()[rows].to_vec(),
        activation,
    )
}

/// The layer restricted to its inputs `cols`, linear and without bias: a partial sum
/// of its outputs before the bias.
pub(crate) fn inputs_of(layer: &Dense, cols: Range<usize>) -> Result<Dense> {
    let (out, inp) = (layer.out_features(), layer.in_features());
    let src = layer.weight().as_slice();
    let mut w = Vec::with_capacity(out * cols.len());
    for o in 0..out {
        w.extend_from_slice(&src[o * inp + cols.start..o * inp + cols.end]);
    }
    Dense::new(
        Tensor::matrix(out, cols.len(), w)?,
        vec![0.0; out],
        Activation::Identity,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_near_equal_and_cover_the_width() {
        assert_eq!(ranges(5, 2), vec![0..3, 3..5]);
        assert_eq!(ranges(4, 3), vec![0..2, 2..3, 3..4]);
        assert_eq!(ranges(7, 1), vec![0..7]);
    }

    #[test]
    fn balanced_stages_least_largest_cost() {
        // Costs 1, 1, 8, 8 (in × out): two stages cut before layer 3 cost 10 and 8,
        // the least largest of the three cuts (17, 16, 10).
        let m = Model::random(&[1, 1, 1, 8, 1], &[Activation::Relu; 4], 1).unwrap();
        assert_eq!(balanced(&m, 2), vec![3]);
        assert_eq!(balanced(&m, 4), vec![1, 2, 3]);
        assert_eq!(balanced(&m, 1), Vec::<usize>::new());
    }

    #[test]
    fn pairs_follow_the_traffic_rule() {
        let acts = [Activation::Relu, Activation::Relu, Activation::Softmax];
        let m = Model::random(&[4, 8, 8, 3], &acts, 1).unwrap();
        let plan: Vec<(usize, bool)> = column_plan(&m, 2)
            .iter()
            .map(|s| (s.first, s.pair))
            .collect();
        assert_eq!(plan, vec![(0, true), (2, false)]);
        // A narrow layer before a much wider one is not paired: (2+1)·2 < (2−1)·64.
        let m = Model::random(&[4, 2, 64], &[Activation::Relu, Activation::Identity], 1).unwrap();
        let plan: Vec<(usize, bool)> = column_plan(&m, 2)
            .iter()
            .map(|s| (s.first, s.pair))
            .collect();
        assert_eq!(plan, vec![(0, false), (1, false)]);
        // A softmax is never split inside a pair's first layer.
        let m = Model::random(&[4, 8, 8], &[Activation::Softmax, Activation::Relu], 1).unwrap();
        assert!(!column_plan(&m, 2)[0].pair);
    }
}
