//! The search space of a study (`[space]`): per key a fixed value, a list to choose
//! from, or a distribution; random sampling (seeded per trial) and the grid; one
//! trial's parameters ([`TrialParams`]) and the [`Hyper`] they make.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::model::Activation;
use crate::train::{Hyper, Optimizer, Schedule};

/// How one key of `[space]` is given.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Choice<T> {
    /// A scalar: every trial has it.
    Fixed(T),
    /// A list: each trial takes one (random: uniformly; grid: each in turn).
    List(Vec<T>),
    /// A table: a distribution, sampled per trial (random search only).
    Dist(Dist),
}

/// A distribution of `[space]`: `{ log_uniform = [a, b] }`, `{ uniform = [a, b] }`,
/// `{ int_uniform = [a, b] }` (both ends included).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Dist {
    LogUniform(f64, f64),
    Uniform(f64, f64),
    IntUniform(i64, i64),
}

impl Dist {
    fn sample(self, rng: &mut StdRng) -> f64 {
        match self {
            Dist::LogUniform(a, b) => (a.ln() + rng.random::<f64>() * (b.ln() - a.ln())).exp(),
            Dist::Uniform(a, b) => a + rng.random::<f64>() * (b - a),
            Dist::IntUniform(a, b) => rng.random_range(a..=b) as f64,
        }
    }
}

/// The optimizer names of a study: `sgd`, `sgd_nesterov`, `adam`, `adamw`.
pub(crate) const OPTIMIZERS: [&str; 4] = ["sgd", "sgd_nesterov", "adam", "adamw"];

/// A learning-rate schedule as a study writes it: `constant`, `cosine`, or
/// `step:EVERY:GAMMA` (`step:30:0.5`).
pub(crate) fn parse_schedule(text: &str) -> Option<Schedule> {
    match text.trim() {
        "constant" => Some(Schedule::Constant),
        "cosine" => Some(Schedule::Cosine { min_lr: 0.0 }),
        other => {
            let rest = other.strip_prefix("step:")?;
            let (every, gamma) = rest.split_once(':')?;
            let every: usize = every.trim().parse().ok()?;
            let gamma: f32 = gamma.trim().parse().ok()?;
            (every >= 1 && gamma > 0.0 && gamma <= 1.0).then_some(Schedule::Step { every, gamma })
        }
    }
}

/// The searched keys of a study, each a [`Choice`]; what is not given takes
/// [`Hyper::default`]'s value (momentum 0.9).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Space {
    pub hidden: Choice<Vec<usize>>,
    pub activation: Choice<String>,
    pub optimizer: Choice<String>,
    pub learning_rate: Choice<f64>,
    pub batch_size: Choice<usize>,
    pub epochs: Choice<usize>,
    pub patience: Choice<usize>,
    pub min_delta: Choice<f64>,
    pub weight_decay: Choice<f64>,
    pub momentum: Choice<f64>,
    pub schedule: Choice<String>,
}

impl Default for Space {
    fn default() -> Self {
        let h = Hyper::default();
        Self {
            hidden: Choice::Fixed(h.hidden),
            activation: Choice::Fixed(h.activation.name().to_string()),
            optimizer: Choice::Fixed("adam".to_string()),
            learning_rate: Choice::Fixed(f64::from(h.learning_rate)),
            batch_size: Choice::Fixed(h.batch_size),
            epochs: Choice::Fixed(h.epochs),
            patience: Choice::Fixed(h.patience.unwrap_or(0)),
            min_delta: Choice::Fixed(f64::from(h.min_delta)),
            weight_decay: Choice::Fixed(f64::from(h.weight_decay)),
            momentum: Choice::Fixed(0.9),
            schedule: Choice::Fixed("constant".to_string()),
        }
    }
}

/// One trial's parameters, as its record and the one-trial mode's `params.json`
/// write them: every key of `[space]` with its value, and the trial's seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TrialParams {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// The hidden layers' activation: `identity`, `relu`, `tanh`, `sigmoid`, `gelu`.
    pub activation: String,
    /// `sgd`, `sgd_nesterov`, `adam` or `adamw`.
    pub optimizer: String,
    /// The initial learning rate.
    pub learning_rate: f64,
    /// Rows per mini-batch.
    pub batch_size: usize,
    /// The most epochs run.
    pub epochs: usize,
    /// Early stopping's patience in epochs; 0 runs every epoch.
    pub patience: usize,
    /// The least decrease of the validation loss that counts as an improvement.
    pub min_delta: f64,
    /// L2 weight decay (decoupled for `adamw`).
    pub weight_decay: f64,
    /// SGD's momentum (unused by Adam and AdamW).
    pub momentum: f64,
    /// `constant`, `cosine` or `step:EVERY:GAMMA`.
    pub schedule: String,
    /// Seeds the trial's initialisation and shuffling.
    pub seed: u64,
}

impl TrialParams {
    /// The hyperparameters these parameters make, or the key that is invalid and why
    /// (`Err((key, message))`).
    pub(crate) fn hyper(&self) -> std::result::Result<Hyper, (&'static str, String)> {
        let activation: Activation = self
            .activation
            .parse()
            .ok()
            .filter(|a| *a != Activation::Softmax)
            .ok_or_else(|| {
                (
                    "activation",
                    format!(
                        "\"{}\" is not an activation: expected identity, relu, tanh, sigmoid or gelu",
                        crate::error::excerpt(&self.activation)
                    ),
                )
            })?;
        let momentum = self.momentum as f32;
        if !(0.0..1.0).contains(&momentum) {
            return Err(("momentum", format!("{} is outside [0, 1)", self.momentum)));
        }
        let optimizer = match self.optimizer.as_str() {
            "sgd" => Optimizer::Sgd {
                momentum,
                nesterov: false,
            },
            "sgd_nesterov" => Optimizer::Sgd {
                momentum,
                nesterov: true,
            },
            "adam" => Optimizer::ADAM,
            "adamw" => Optimizer::ADAMW,
            other => {
                return Err((
                    "optimizer",
                    format!(
                        "\"{}\" is not an optimizer: expected sgd, sgd_nesterov, adam or adamw",
                        crate::error::excerpt(other)
                    ),
                ))
            }
        };
        if let Some(i) = self.hidden.iter().position(|&w| w == 0) {
            return Err((
                "hidden",
                format!(
                    "layer {i} of {:?} has width 0: every hidden layer needs at least 1",
                    self.hidden
                ),
            ));
        }
        let positive = |key: &'static str, v: f64| {
            let f = v as f32;
            if f.is_finite() && f > 0.0 {
                Ok(f)
            } else {
                Err((key, format!("{v} is not a finite number > 0")))
            }
        };
        let non_negative = |key: &'static str, v: f64| {
            let f = v as f32;
            if f.is_finite() && f >= 0.0 {
                Ok(f)
            } else {
                Err((key, format!("{v} is not a finite number >= 0")))
            }
        };
        let at_least_one = |key: &'static str, v: usize| {
            if v >= 1 {
                Ok(v)
            } else {
                Err((key, "0 is not allowed: at least 1".to_string()))
            }
        };
        let schedule = parse_schedule(&self.schedule).ok_or_else(|| {
            (
                "schedule",
                format!(
                    "\"{}\" is not a schedule: expected \"constant\", \"cosine\" or \"step:EVERY:GAMMA\" (EVERY >= 1, GAMMA in (0, 1])",
                    crate::error::excerpt(&self.schedule)
                ),
            )
        })?;
        Ok(Hyper {
            hidden: self.hidden.clone(),
            activation,
            optimizer,
            learning_rate: positive("learning_rate", self.learning_rate)?,
            schedule,
            batch_size: at_least_one("batch_size", self.batch_size)?,
            epochs: at_least_one("epochs", self.epochs)?,
            patience: (self.patience > 0).then_some(self.patience),
            min_delta: non_negative("min_delta", self.min_delta)?,
            weight_decay: non_negative("weight_decay", self.weight_decay)?,
            seed: self.seed,
        })
    }
}

/// The seed of trial `index` of a study seeded `seed` (SplitMix64 of both, so that
/// neighbouring trials get unrelated streams).
pub(crate) fn trial_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pick<T: Clone>(choice: &Choice<T>, rng: &mut StdRng, from_f64: impl Fn(f64) -> T) -> T {
    match choice {
        Choice::Fixed(v) => v.clone(),
        // Lists are never empty (checked when parsed).
        Choice::List(list) => match list.len() {
            0 => from_f64(0.0),
            n => list[rng.random_range(0..n)].clone(),
        },
        Choice::Dist(d) => from_f64(d.sample(rng)),
    }
}

impl Space {
    /// Trial `index`'s parameters, drawn from its own seeded stream: the same study
    /// seed and index give the same parameters, whatever other trials there are.
    pub(crate) fn sample(&self, seed: u64, index: usize) -> TrialParams {
        let trial = trial_seed(seed, index);
        let mut rng = StdRng::seed_from_u64(trial);
        let round = |v: f64| v.round().max(0.0) as usize;
        TrialParams {
            hidden: pick(&self.hidden, &mut rng, |v| vec![round(v)]),
            activation: pick(&self.activation, &mut rng, |_| String::new()),
            optimizer: pick(&self.optimizer, &mut rng, |_| String::new()),
            learning_rate: pick(&self.learning_rate, &mut rng, |v| v),
            batch_size: pick(&self.batch_size, &mut rng, round),
            epochs: pick(&self.epochs, &mut rng, round),
            patience: pick(&self.patience, &mut rng, round),
            min_delta: pick(&self.min_delta, &mut rng, |v| v),
            weight_decay: pick(&self.weight_decay, &mut rng, |v| v),
            momentum: pick(&self.momentum, &mut rng, |v| v),
            schedule: pick(&self.schedule, &mut rng, |_| String::new()),
            seed: trial,
        }
    }

    /// The keys given as distributions (which a grid cannot enumerate).
    pub(crate) fn distributions(&self) -> Vec<&'static str> {
        self.keys_where(|fixed, dist| !fixed && dist)
    }

    /// Every key of the space, named, with whether it is fixed and whether it is a
    /// distribution, kept where `keep` says so.
    fn keys_where(&self, keep: fn(bool, bool) -> bool) -> Vec<&'static str> {
        let mut keys = Vec::new();
        macro_rules! check {
            ($($key:ident),*) => {$(
                let (fixed, dist) = (
                    matches!(self.$key, Choice::Fixed(_)),
                    matches!(self.$key, Choice::Dist(_)),
                );
                if keep(fixed, dist) {
                    keys.push(stringify!($key));
                }
            )*};
        }
        check!(
            hidden,
            activation,
            optimizer,
            learning_rate,
            batch_size,
            epochs,
            patience,
            min_delta,
            weight_decay,
            momentum,
            schedule
        );
        keys
    }

    /// How many trials the grid has (the product of the lists' lengths), saturating.
    pub(crate) fn grid_size(&self) -> usize {
        fn len<T>(c: &Choice<T>) -> usize {
            match c {
                Choice::List(l) => l.len(),
                _ => 1,
            }
        }
        [
            len(&self.hidden),
            len(&self.activation),
            len(&self.optimizer),
            len(&self.learning_rate),
            len(&self.batch_size),
            len(&self.epochs),
            len(&self.patience),
            len(&self.min_delta),
            len(&self.weight_decay),
            len(&self.momentum),
            len(&self.schedule),
        ]
        .into_iter()
        .fold(1usize, usize::saturating_mul)
    }

    /// Grid point `index` (`0..grid_size()`): the keys in the order of
    /// [`TrialParams`], the last one varying fastest; the seed as a random trial's.
    pub(crate) fn grid_point(&self, seed: u64, index: usize) -> TrialParams {
        let mut rest = index;
        // From the last key to the first, so that the last varies fastest.
        fn take<T: Clone>(c: &Choice<T>, rest: &mut usize, fallback: T) -> T {
            match c {
                Choice::Fixed(v) => v.clone(),
                Choice::List(l) if !l.is_empty() => {
                    let v = l[*rest % l.len()].clone();
                    *rest /= l.len();
                    v
                }
                _ => fallback,
            }
        }
        let schedule = take(&self.schedule, &mut rest, String::new());
        let momentum = take(&self.momentum, &mut rest, 0.0);
        let weight_decay = take(&self.weight_decay, &mut rest, 0.0);
        let min_delta = take(&self.min_delta, &mut rest, 0.0);
        let patience = take(&self.patience, &mut rest, 0);
        let epochs = take(&self.epochs, &mut rest, 0);
        let batch_size = take(&self.batch_size, &mut rest, 0);
        let learning_rate = take(&self.learning_rate, &mut rest, 0.0);
        let optimizer = take(&self.optimizer, &mut rest, String::new());
        let activation = take(&self.activation, &mut rest, String::new());
        let hidden = take(&self.hidden, &mut rest, Vec::new());
        TrialParams {
            hidden,
            activation,
            optimizer,
            learning_rate,
            batch_size,
            epochs,
            patience,
            min_delta,
            weight_decay,
            momentum,
            schedule,
            seed: trial_seed(seed, index),
        }
    }
}

impl Space {
    /// The keys given as a list or a distribution.
    pub(crate) fn searched(&self) -> Vec<&'static str> {
        self.keys_where(|fixed, _| !fixed)
    }
}
