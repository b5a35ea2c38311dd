//! Training data: features and targets ([`Data`]), the seeded validation split and the
//! standardisation fitted on the training split ([`TrainSet`]).

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::train::Task;

/// What a member learns to predict, one entry (or row) per row of the features.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Targets {
    /// Integer class labels (classification); the classes are `0..=max label` (gaps
    /// are allowed: a class without rows is never predicted once trained).
    Labels(Vec<u32>),
    /// Float targets `[n, k]` (regression); a `[n]` tensor is taken as `[n, 1]`.
    Values(Tensor),
}

impl Targets {
    /// Rows of targets.
    pub fn rows(&self) -> usize {
        match self {
            Targets::Labels(labels) => labels.len(),
            Targets::Values(values) => values.shape().first().copied().unwrap_or(0),
        }
    }

    /// `labels` or `values`, for messages.
    fn kind(&self) -> &'static str {
        match self {
            Targets::Labels(_) => "integer labels",
            Targets::Values(_) => "float values",
        }
    }

    /// The targets of `rows` (which must exist), in that order.
    fn select(&self, rows: &[usize]) -> Result<Targets> {
        Ok(match self {
            Targets::Labels(labels) => {
                let mut out = try_vec(rows.len(), "y")?;
                out.extend(rows.iter().map(|&r| labels[r]));
                Targets::Labels(out)
            }
            Targets::Values(values) => Targets::Values(select_rows(values, rows, "y")?),
        })
    }
}

/// A data set: features `x` `[n, features]` and their targets, `n ≥ 1`, every value
/// finite.
#[derive(Clone, Debug, PartialEq)]
pub struct Data {
    x: Tensor,
    y: Targets,
}

impl Data {
    /// A data set from features `[n, features]` and `n` targets: an error naming `x` or
    /// `y` for another rank, no rows or no features, different row counts
    /// ([`Error::DataRows`]), a NaN or infinite value ([`Error::NonFiniteData`]).
    pub fn new(x: Tensor, y: Targets) -> Result<Data> {
        let &[rows, features] = x.shape() else {
            return Err(Error::TrainData {
                key: "x",
                expected: "a matrix [rows, features]".into(),
                got: format!("shape {:?}", x.shape()),
            });
        };
        if rows == 0 || features == 0 {
            return Err(Error::TrainData {
                key: "x",
                expected: "at least one row and one feature".into(),
                got: format!("shape {:?}", x.shape()),
            });
        }
        let y = match y {
            Targets::Values(v) => Targets::Values(match *v.shape() {
                [n] => Tensor::new(vec![n, 1], v.into_vec())?,
                [_, k] if k >= 1 => v,
                _ => {
                    return Err(Error::TrainData {
                        key: "y",
                        expected: "float targets [rows] or [rows, outputs] with outputs >= 1"
                            .into(),
                        got: format!("shape {:?}", v.shape()),
                    })
                }
            }),
            labels => labels,
        };
        if y.rows() != rows {
            return Err(Error::DataRows {
                x: rows,
                y: y.rows(),
            });
        }
        check_finite("x", &x)?;
        if let Targets::Values(v) = &y {
            check_finite("y", v)?;
        }
        Ok(Data { x, y })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.x.shape()[0]
    }

    /// Features per row.
    pub fn features(&self) -> usize {
        self.x.shape()[1]
    }

    /// The features `[rows, features]`.
    pub fn x(&self) -> &Tensor {
        &self.x
    }

    /// The targets.
    pub fn y(&self) -> &Targets {
        &self.y
    }

    /// The number of classes the labels give (the largest label + 1); `None` for float
    /// targets.
    pub fn classes(&self) -> Option<usize> {
        match &self.y {
            Targets::Labels(labels) => labels.iter().max().map(|&m| m as usize + 1),
            Targets::Values(_) => None,
        }
    }

    /// Outputs per row of float targets (`k` of `[n, k]`); `None` for labels.
    pub fn target_width(&self) -> Option<usize> {
        match &self.y {
            Targets::Labels(_) => None,
            Targets::Values(v) => v.shape().get(1).copied(),
        }
    }

    /// The rows `rows` (which exist), in that order.
    fn select(&self, rows: &[usize]) -> Result<Data> {
        Ok(Data {
            x: select_rows(&self.x, rows, "x")?,
            y: self.y.select(rows)?,
        })
    }
}

/// The first NaN or infinite value of a `[rows, cols]` tensor, as an error.
fn check_finite(key: &'static str, t: &Tensor) -> Result<()> {
    let cols = t.shape().get(1).copied().unwrap_or(1).max(1);
    match t.as_slice().iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFiniteData {
            key,
            index: vec![i / cols, i % cols],
            value: t.as_slice()[i],
        }),
    }
}

/// An empty vector with room for `len` values, or an error naming `key` when the host
/// cannot allocate it.
pub(crate) fn try_vec<T>(len: usize, key: &'static str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::TrainData {
        key,
        expected: "a data set this host can hold in memory".into(),
        got: format!("{len} values to allocate"),
    })?;
    Ok(v)
}

/// Rows `rows` of a `[n, cols]` tensor, in that order.
fn select_rows(t: &Tensor, rows: &[usize], key: &'static str) -> Result<Tensor> {
    let cols = t.shape()[1];
    let len = rows.len().checked_mul(cols).ok_or(Error::ShapeTooLarge {
        shape: vec![rows.len(), cols],
    })?;
    let mut out = try_vec(len, key)?;
    let src = t.as_slice();
    for &r in rows {
        out.extend_from_slice(&src[r * cols..(r + 1) * cols]);
    }
    Tensor::matrix(rows.len(), cols, out)
}

/// Per-feature mean and standard deviation of the training split; features are
/// standardised as `(x − mean) / std`.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    /// The mean of each feature over the training rows.
    pub mean: Vec<f32>,
    /// The (population) standard deviation of each feature over the training rows;
    /// `1` where the feature is constant: a deviation of 0, below 1e-30, or below
    /// the f32 rounding of its mean (`|mean| × f32::EPSILON`), which dividing by would
    /// only blow up noise (and the exported first layer's weights) — such a feature is
    /// only centred.
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Fits the mean and standard deviation of every feature of `x` `[rows, features]`
    /// (computed in f64); [`Error::TrainData`] for no features.
    pub fn fit(x: &Tensor) -> Result<Standardizer> {
        let (rows, features) = x.dims2("features to standardise")?;
        no_features(features)?;
        let mut sum = vec![0.0f64; features];
        for row in x.as_slice().chunks_exact(features) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += f64::from(v);
            }
        }
        let n = rows.max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let mut sq = vec![0.0f64; features];
        for row in x.as_slice().chunks_exact(features) {
            for ((s, &v), m) in sq.iter_mut().zip(row).zip(&mean) {
                let d = f64::from(v) - m;
                *s += d * d;
            }
        }
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let sd = (s / n).sqrt();
                let constant = !(sd > 1e-30 && sd > m.abs() * f64::from(f32::EPSILON));
                if constant || !(sd as f32).is_finite() {
                    1.0
                } else {
                    sd as f32
                }
            })
            .collect();
        Ok(Standardizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        })
    }

    /// `x` `[rows, features]` standardised: `(x − mean) / std` (computed in f64).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, features) = x.dims2("features to standardise")?;
        no_features(features)?;
        if features != self.mean.len() || features != self.std.len() {
            return Err(Error::TrainData {
                key: "standardizer",
                expected: format!("a mean and a std for each of the {features} features"),
                got: format!("{} means and {} stds", self.mean.len(), self.std.len()),
            });
        }
        let mut out = try_vec(x.len(), "x")?;
        for row in x.as_slice().chunks_exact(features) {
            out.extend(
                row.iter()
                    .zip(self.mean.iter().zip(&self.std))
                    .map(|(&v, (&m, &s))| ((f64::from(v) - f64::from(m)) / f64::from(s)) as f32),
            );
        }
        Tensor::matrix(rows, features, out)
    }
}

/// [`Error::TrainData`] for a matrix of no features (`chunks_exact(0)` panics).
fn no_features(features: usize) -> Result<()> {
    if features == 0 {
        return Err(Error::TrainData {
            key: "x",
            expected: "at least one feature".to_string(),
            got: "0 features".to_string(),
        });
    }
    Ok(())
}

/// The most classes a classification trains (one output each): a label beyond is
/// taken for a mistake (a `-1` stored as u32 would otherwise ask for an output layer of
/// four billion units).
pub const MAX_CLASSES: usize = 1 << 20;

/// A task's data ready for training: the training split and the validation split
/// (both standardised when asked, as the engines see them), the standardisation
/// fitted on the training split, and the number of outputs.
#[derive(Clone, Debug)]
pub struct TrainSet {
    task: Task,
    train: Data,
    validation: Option<Data>,
    standardizer: Option<Standardizer>,
    outputs: usize,
}

impl TrainSet {
    /// Splits `data` into training and validation rows and standardises if asked.
    ///
    /// The validation split takes `ceil(rows · validation_fraction)` rows chosen by
    /// `seed`; for classification it is stratified (each class contributes in
    /// proportion to its rows, largest remainders first). A fraction of 0 keeps every
    /// row for training (the engines then evaluate on the training split). The
    /// standardiser (`standardize`) is fitted on the training rows and applied to
    /// both splits.
    ///
    /// Errors name the key: `y` when the targets do not suit the task (labels for
    /// classification, with at least 2 classes and at most [`MAX_CLASSES`]; float
    /// values for regression),
    /// `validation_fraction` outside `[0, 1)` or leaving the training split empty.
    pub fn new(
        task: Task,
        data: Data,
        validation_fraction: f64,
        standardize: bool,
        seed: u64,
    ) -> Result<TrainSet> {
        let outputs = match (task, &data.y) {
            (Task::Classification, Targets::Labels(_)) => {
                let classes = data.classes().unwrap_or(0);
                if classes < 2 {
                    return Err(Error::TrainData {
                        key: "y",
                        expected: "labels of at least 2 classes (0 and 1 at least)".into(),
                        got: format!("{classes} class"),
                    });
                }
                if classes > MAX_CLASSES {
                    return Err(Error::TrainData {
                        key: "y",
                        expected: format!("class labels below {MAX_CLASSES}"),
                        got: format!("label {}", classes - 1),
                    });
                }
                classes
            }
            (Task::Regression, Targets::Values(v)) => v.shape()[1],
            (task, y) => {
                return Err(Error::TrainData {
                    key: "y",
                    expected: match task {
                        Task::Classification => "integer labels for classification",
                        Task::Regression => "float values for regression",
                    }
                    .into(),
                    got: y.kind().into(),
                })
            }
        };
        if !(0.0..1.0).contains(&validation_fraction) {
            return Err(Error::TrainData {
                key: "validation_fraction",
                expected: "a fraction in [0, 1)".into(),
                got: validation_fraction.to_string(),
            });
        }
        let rows = data.rows();
        let (train, validation) = if validation_fraction == 0.0 {
            (data, None)
        } else {
            let held = (rows as f64 * validation_fraction).ceil() as usize;
            if held >= rows {
                return Err(Error::TrainData {
                    key: "validation_fraction",
                    expected: "a fraction leaving at least one training row".into(),
                    got: format!("{validation_fraction}, which holds out {held} of {rows} rows"),
                });
            }
            let (train_rows, held_rows) = split(&data.y, held, seed)?;
            (data.select(&train_rows)?, Some(data.select(&held_rows)?))
        };
        let (train, validation, standardizer) = if standardize {
            let s = Standardizer::fit(&train.x)?;
            let train = Data {
                x: s.apply(&train.x)?,
                y: train.y,
            };
            let validation = match validation {
                Some(v) => Some(Data {
                    x: s.apply(&v.x)?,
                    y: v.y,
                }),
                None => None,
            };
            (train, validation, Some(s))
        } else {
            (train, validation, None)
        };
        Ok(TrainSet {
            task,
            train,
            validation,
            standardizer,
            outputs,
        })
    }

    /// The task.
    pub fn task(&self) -> Task {
        self.task
    }

    /// Outputs of a member: the classes (classification) or the target width
    /// (regression).
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Features per row.
    pub fn features(&self) -> usize {
        self.train.features()
    }

    /// The training rows (standardised when asked).
    pub fn train(&self) -> &Data {
        &self.train
    }

    /// The validation rows (standardised when asked); `None` with a validation
    /// fraction of 0.
    pub fn validation(&self) -> Option<&Data> {
        self.validation.as_ref()
    }

    /// The rows engines evaluate on: the validation split, else the training split.
    pub fn evaluation(&self) -> &Data {
        self.validation.as_ref().unwrap_or(&self.train)
    }

    /// The standardisation fitted on the training rows, when asked.
    pub fn standardizer(&self) -> Option<&Standardizer> {
        self.standardizer.as_ref()
    }
}

/// The training and held-out rows (each ascending): `held` rows chosen by `seed`,
/// stratified by label for labels.
fn split(y: &Targets, held: usize, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    let rows = y.rows();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = try_vec(held, "validation_fraction")?;
    match y {
        Targets::Values(_) => {
            let mut order = try_vec(rows, "y")?;
            order.extend(0..rows);
            order.shuffle(&mut rng);
            out.extend_from_slice(&order[..held]);
        }
        Targets::Labels(labels) => {
            let mut classes: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for (r, &l) in labels.iter().enumerate() {
                classes.entry(l).or_default().push(r);
            }
            // Each class's quota: the floor of its share, then the remaining rows to
            // the largest remainders (ties to the lower label).
            let mut quotas: Vec<(u32, usize, f64)> = classes
                .iter()
                .map(|(&l, members)| {
                    let share = held as f64 * members.len() as f64 / rows as f64;
                    (l, share.floor() as usize, share - share.floor())
                })
                .collect();
            let assigned: usize = quotas.iter().map(|q| q.1).sum();
            let mut by_remainder: Vec<usize> = (0..quotas.len()).collect();
            by_remainder.sort_by(|&a, &b| quotas[b].2.total_cmp(&quotas[a].2).then(a.cmp(&b)));
            for &i in by_remainder.iter().take(held.saturating_sub(assigned)) {
                quotas[i].1 += 1;
            }
            for (label, quota, _) in quotas {
                if let Some(members) = classes.get_mut(&label) {
                    members.shuffle(&mut rng);
                    out.extend_from_slice(&members[..quota.min(members.len())]);
                }
            }
        }
    }
    out.sort_unstable();
    let mut is_held = vec![false; rows];
    for &r in &out {
        is_held[r] = true;
    }
    let mut train = try_vec(rows - out.len(), "y")?;
    train.extend((0..rows).filter(|&r| !is_held[r]));
    Ok((train, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Data {
        let x =
            Tensor::matrix(n, 2, (0..2 * n).map(|v| v as f32).collect::<Vec<_>>()).expect("shape");
        let y = (0..n).map(|r| u32::from(r % 4 == 0)).collect();
        Data::new(x, Targets::Labels(y)).expect("valid data")
    }

    #[test]
    fn stratified_split_keeps_the_class_shares() {
        let set = TrainSet::new(Task::Classification, labels(100), 0.2, false, 3).expect("split");
        let v = set.validation().expect("a validation split");
        assert_eq!((set.train().rows(), v.rows()), (80, 20));
        let Targets::Labels(l) = v.y() else {
            panic!("labels")
        };
        assert_eq!(l.iter().filter(|&&c| c == 1).count(), 5);
    }

    /// No features is a typed error, not a panic; a feature whose deviation is
    /// tiny (1e-39, or f32 noise around a large mean) is treated as constant, so that
    /// the export's division by it stays finite; an ordinary one is kept.
    #[test]
    fn standardizer_edges() {
        let empty = Tensor::matrix(5, 0, vec![]).expect("shape");
        for r in [
            Standardizer::fit(&empty).map(|_| ()),
            Standardizer {
                mean: vec![],
                std: vec![],
            }
            .apply(&empty)
            .map(|_| ()),
        ] {
            assert!(matches!(r, Err(Error::TrainData { key: "x", .. })), "{r:?}");
        }
        let x = Tensor::matrix(2, 3, vec![0.0, 1000.0, 1.0, 1e-39, 1000.0001, 4.0]).expect("shape");
        let s = Standardizer::fit(&x).expect("fit");
        assert_eq!(s.std[0], 1.0, "a deviation of 5e-40");
        assert_eq!(s.std[1], 1.0, "f32 noise around 1000: {}", s.std[1]);
        assert_eq!(s.std[2], 1.5f32, "the deviation of 1 and 4");
        let y = Tensor::matrix(2, 3, vec![0.0, 1000.0, 1.0, 1e-39, 1000.0, 2.5]).expect("shape");
        let t = Standardizer::fit(&y).expect("fit");
        assert!((t.std[2] - 0.75).abs() < 1e-6, "{}", t.std[2]);
    }

    #[test]
    fn standardised_training_split_has_mean_0_std_1() {
        let set = TrainSet::new(Task::Classification, labels(50), 0.2, true, 1).expect("split");
        let s = Standardizer::fit(set.train().x()).expect("fit");
        for (m, sd) in s.mean.iter().zip(&s.std) {
            assert!(m.abs() < 1e-5 && (sd - 1.0).abs() < 1e-5, "{m} {sd}");
        }
    }
}
