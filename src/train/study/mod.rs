//! Studies: many trials of one data set, each with its own hyperparameters, run
//! concurrently one per device; their records, their weights, and an ensemble of the
//! best of them.
//!
//! A study is a TOML file (see the guide's "Training" chapter for every key):
//!
//! ```toml
//! [data]
//! x = "x_train.npy"              # [n, features], float32 or float64
//! y = "y_train.npy"              # [n] integer labels, or [n, k] floats (regression)
//! task = "classification"        # or "regression"
//! validation_fraction = 0.2
//! standardize = true
//!
//! [search]
//! trials = 12
//! strategy = "random"            # or "grid"
//! seed = 7
//! keep = 5
//! aggregate = "mean"             # or "vote"
//!
//! [space]                        # a list = choose one; a table = a distribution
//! hidden = [[32], [64], [64, 32]]
//! activation = ["relu", "tanh"]
//! optimizer = ["adam", "sgd"]
//! learning_rate = { log_uniform = [1e-4, 3e-2] }
//! batch_size = [32, 64]
//! epochs = 50
//! ```
//!
//! [`Study::run`] trains the trials on the devices given, writes one record per trial
//! to `OUT/trials.jsonl` and each finished trial's weights to `OUT/<trial>.safetensors`,
//! and `OUT/ensemble.toml` with the best trials; [`StudyResult`] holds the same in
//! memory.

mod record;
mod run;
mod space;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use record::{TrialRecord, TrialStatus};
pub use run::{Devices, StudyEvent, StudyResult};
pub use space::TrialParams;

use crate::aggregate::Aggregate;
use crate::error::{excerpt, Error, Result};
use crate::files::{read_regular_to_string, toml_error, TEXT_FILE_LIMIT};
use crate::io::{read_array, read_matrix, Array};
use crate::tensor::Tensor;
use crate::train::{Targets, Task};
use space::{parse_schedule, Choice, Dist, Space, OPTIMIZERS};

/// How the trials' parameters are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strategy {
    /// `trials` draws, each from its own stream seeded by the study's seed and the
    /// trial's index: lists are chosen from uniformly, distributions sampled.
    Random,
    /// Every combination of the lists (no distributions); `trials` is ignored.
    Grid,
}

/// A parsed and checked study: its data (read and checked), its search and its space.
#[derive(Clone)]
pub struct Study {
    pub(crate) path: PathBuf,
    pub(crate) x_path: PathBuf,
    pub(crate) y_path: PathBuf,
    pub(crate) x: Tensor,
    pub(crate) y: Targets,
    pub(crate) task: Task,
    pub(crate) validation_fraction: f64,
    pub(crate) standardize: bool,
    pub(crate) strategy: Strategy,
    pub(crate) trials: usize,
    pub(crate) seed: u64,
    pub(crate) keep: usize,
    pub(crate) aggregate: Aggregate,
    pub(crate) space: Space,
    /// What the records of an output folder must agree with: the data settings.
    pub(crate) data_key: String,
}

impl std::fmt::Debug for Study {
    /// The study without its data's values (their shapes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let y = match &self.y {
            Targets::Labels(l) => format!("{} labels", l.len()),
            Targets::Values(t) => format!("values {:?}", t.shape()),
        };
        f.debug_struct("Study")
            .field("path", &self.path)
            .field("x", &self.x.shape())
            .field("y", &y)
            .field("task", &self.task)
            .field("strategy", &self.strategy)
            .field("trials", &self.trials)
            .field("seed", &self.seed)
            .field("keep", &self.keep)
            .field("space", &self.space)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    data: DataFormat,
    #[serde(default)]
    search: SearchFormat,
    #[serde(default)]
    space: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DataFormat {
    x: PathBuf,
    y: PathBuf,
    task: String,
    validation_fraction: Option<f64>,
    standardize: Option<bool>,
    classes: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SearchFormat {
    trials: Option<usize>,
    strategy: Option<String>,
    seed: Option<u64>,
    keep: Option<usize>,
    aggregate: Option<String>,
}

/// The most trials a study may have (a grid's combinations included).
pub const MAX_TRIALS: usize = 100_000;

/// The `section.key` of the line of `text` at byte `at`: the last `[section]` header
/// before it and the key its line assigns (or the header itself).
fn key_at(text: &str, at: usize) -> String {
    let at = (0..=at.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = text[line_start..line_end].trim();
    let header = |l: &str| {
        l.strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .map(|s| s.trim().to_string())
    };
    if line.starts_with('[') {
        return header(line).unwrap_or_default();
    }
    let key = line.split('=').next().unwrap_or("").trim().to_string();
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .and_then(header);
    match section {
        Some(s) if !key.is_empty() => format!("{s}.{key}"),
        Some(s) => s,
        None => key,
    }
}

impl Study {
    /// Reads a study file (at most 1 MiB) and its data; relative data paths are read
    /// from the study file's folder.
    ///
    /// Errors name the key ([`Error::Study`]): unknown keys, missing ones, wrong
    /// types, an empty list, a distribution with low ≥ high (or log bounds ≤ 0), a
    /// distribution in a grid, `keep` 0 or beyond the trials, a hidden width of 0,
    /// x / y row counts that differ, a NaN or infinite value in the data, labels
    /// negative or not below `data.classes`.
    pub fn from_toml(path: impl AsRef<Path>) -> Result<Study> {
        let path = path.as_ref();
        let text = read_regular_to_string(path, TEXT_FILE_LIMIT)?;
        let base = path.parent().unwrap_or(Path::new(""));
        Self::parse_named(path, &text, base)
    }

    /// [`Study::from_toml`] of study text; relative data paths are read from
    /// `base_dir`. Errors name the study `<study>`.
    pub fn parse(text: &str, base_dir: impl AsRef<Path>) -> Result<Study> {
        Self::parse_named(Path::new("<study>"), text, base_dir.as_ref())
    }

    fn parse_named(path: &Path, text: &str, base: &Path) -> Result<Study> {
        let bad = |key: &str, message: String| Error::Study {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let format: FileFormat = toml::from_str(text).map_err(|e| {
            let mut key = e.span().map(|s| key_at(text, s.start)).unwrap_or_default();
            // A missing key.
            if let Some(missing) = e.message().strip_prefix("missing field ") {
                let name = json_key(missing);
                // `data` is the only section that must be there; its keys
                // `x`, `y` and `task` the only keys.
                key = if name == "data" {
                    name
                } else {
                    format!("data.{name}")
                };
            }
            bad(&key, toml_error(text, &e))
        })?;
        let data = format.data;
        let task = match data.task.as_str() {
            "classification" => Task::Classification,
            "regression" => Task::Regression,
            other => {
                return Err(bad(
                    "data.task",
                    format!(
                        "\"{}\": expected \"classification\" or \"regression\"",
                        excerpt(other)
                    ),
                ))
            }
        };
        let validation_fraction = data.validation_fraction.unwrap_or(0.2);
        if !(0.0..1.0).contains(&validation_fraction) {
            return Err(bad(
                "data.validation_fraction",
                format!("{validation_fraction} is outside [0, 1)"),
            ));
        }
        let standardize = data.standardize.unwrap_or(false);
        let x_path = base.join(&data.x);
        let y_path = base.join(&data.y);
        let x = read_matrix(&x_path).map_err(|e| bad("data.x", e.to_string()))?;
        let rows = x.shape()[0];
        if rows == 0 {
            return Err(bad("data.x", "has no rows".to_string()));
        }
        if let Some(i) = x.as_slice().iter().position(|v| !v.is_finite()) {
            let cols = x.shape()[1].max(1);
            return Err(bad(
                "data.x",
                format!(
                    "{} at row {}, column {}: every feature must be finite",
                    x.as_slice()[i],
                    i / cols,
                    i % cols
                ),
            ));
        }
        let y = match (
            task,
            read_array(&y_path).map_err(|e| bad("data.y", e.to_string()))?,
        ) {
            (Task::Classification, Array::Int { shape, values }) => {
                if shape.len() != 1 {
                    return Err(bad(
                        "data.y",
                        format!(
                            "labels of shape {shape:?}: classification takes [n] integer labels"
                        ),
                    ));
                }
                let classes = data.classes;
                if classes == Some(0) {
                    return Err(bad("data.classes", "0: at least 1".to_string()));
                }
                let mut labels = Vec::with_capacity(values.len());
                for (i, &v) in values.iter().enumerate() {
                    let limit = classes.map_or(i64::from(u32::MAX), |c| c as i64);
                    if v < 0 || v >= limit {
                        return Err(bad(
                            "data.y",
                            match classes {
                                Some(c) => format!(
                                    "label {v} at row {i} is out of range: data.classes = {c} takes 0 to {}",
                                    c - 1
                                ),
                                None => format!("label {v} at row {i} is out of range: labels are 0 to 2^32 - 2"),
                            },
                        ));
                    }
                    labels.push(v as u32);
                }
                Targets::Labels(labels)
            }
            (Task::Classification, Array::Float(_)) => {
                return Err(bad(
                    "data.y",
                    "holds floats: classification takes integer labels (numpy: y.astype(np.int64))"
                        .to_string(),
                ))
            }
            (Task::Regression, Array::Float(t)) => Targets::Values(t),
            (Task::Regression, Array::Int { shape, values }) => {
                let cols = if shape.len() == 2 { shape[1] } else { 1 };
                let t = Tensor::new(
                    vec![shape[0], cols],
                    values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                )
                .map_err(|e| bad("data.y", e.to_string()))?;
                Targets::Values(t)
            }
        };
        let y_rows = match &y {
            Targets::Labels(l) => l.len(),
            Targets::Values(t) => t.shape()[0],
        };
        if y_rows != rows {
            return Err(bad(
                "data.y",
                format!("has {y_rows} rows, data.x has {rows}: one target per row of x"),
            ));
        }
        if let Targets::Values(t) = &y {
            if let Some(i) = t.as_slice().iter().position(|v| !v.is_finite()) {
                return Err(bad(
                    "data.y",
                    format!(
                        "{} at value {i}: every target must be finite",
                        t.as_slice()[i]
                    ),
                ));
            }
        }
        if data.classes.is_some() && task == Task::Regression {
            return Err(bad(
                "data.classes",
                "is for classification; regression's outputs are y's columns".to_string(),
            ));
        }

        let search = format.search;
        let strategy = match search.strategy.as_deref().unwrap_or("random") {
            "random" => Strategy::Random,
            "grid" => Strategy::Grid,
            other => {
                return Err(bad(
                    "search.strategy",
                    format!("\"{}\": expected \"random\" or \"grid\"", excerpt(other)),
                ))
            }
        };
        let space = parse_space(&format.space, &bad)?;
        let trials = match strategy {
            Strategy::Random => {
                let trials = search.trials.unwrap_or(10);
                if trials == 0 || trials > MAX_TRIALS {
                    return Err(bad(
                        "search.trials",
                        format!("{trials}: expected 1 to {MAX_TRIALS}"),
                    ));
                }
                trials
            }
            Strategy::Grid => {
                if let Some(key) = space.distributions().first() {
                    return Err(bad(
                        &format!("space.{key}"),
                        "is a distribution: a grid takes lists and fixed values only (use strategy = \"random\")".to_string(),
                    ));
                }
                let size = space.grid_size();
                if size > MAX_TRIALS {
                    return Err(bad(
                        "space",
                        format!("the grid has {size} combinations, more than {MAX_TRIALS}"),
                    ));
                }
                size
            }
        };
        let keep = search.keep.unwrap_or(trials.min(5));
        if keep == 0 || keep > trials {
            return Err(bad(
                "search.keep",
                format!("{keep}: expected 1 to the study's {trials} trials"),
            ));
        }
        let aggregate = match search.aggregate.as_deref().unwrap_or("mean") {
            "mean" => Aggregate::Mean,
            "vote" if task == Task::Classification => Aggregate::Vote { weights: None },
            other => {
                return Err(bad(
                    "search.aggregate",
                    format!(
                        "\"{}\": expected \"mean\"{}",
                        excerpt(other),
                        if task == Task::Classification {
                            " or \"vote\""
                        } else {
                            " (a regression's members are averaged)"
                        }
                    ),
                ))
            }
        };
        let data_key = format!(
            "x={} y={} task={} validation_fraction={} standardize={} seed={}",
            data.x.display(),
            data.y.display(),
            data.task,
            validation_fraction,
            standardize,
            search.seed.unwrap_or(0)
        );
        Ok(Study {
            path: path.to_path_buf(),
            x_path,
            y_path,
            x,
            y,
            task,
            validation_fraction,
            standardize,
            strategy,
            trials,
            seed: search.seed.unwrap_or(0),
            keep,
            aggregate,
            space,
            data_key,
        })
    }

    /// The study file (`<study>` for [`Study::parse`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What its members learn.
    pub fn task(&self) -> Task {
        self.task
    }

    /// How its trials' parameters are chosen.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// How many trials it has (a grid's combinations).
    pub fn trials(&self) -> usize {
        self.trials
    }

    /// How many of the best trials form its ensemble.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// The name of trial `index`: `trial-000`, `trial-001`, ….
    pub fn trial_name(&self, index: usize) -> String {
        let width = self.trials.saturating_sub(1).to_string().len().max(3);
        format!("trial-{index:0width$}")
    }

    /// Trial `index`'s parameters (random: drawn from its own seeded stream, the same
    /// for the same study seed and index; grid: the `index`-th combination, the last
    /// key of [`TrialParams`] varying fastest).
    pub fn params(&self, index: usize) -> TrialParams {
        match self.strategy {
            Strategy::Random => self.space.sample(self.seed, index),
            Strategy::Grid => self.space.grid_point(self.seed, index),
        }
    }

    /// [`Study::trial_params`] of the JSON file at `path`: a regular file of at most
    /// 1 MiB ([`Error::NotRegularFile`], [`Error::FileTooLarge`] otherwise; a device
    /// or a pipe is not read).
    pub fn trial_params_file(&self, path: &Path) -> Result<TrialParams> {
        let text = crate::files::read_regular_to_string(path, crate::files::TEXT_FILE_LIMIT)?;
        self.trial_params(path, &text)
    }

    /// Parameters for the one-trial mode: a JSON object with keys of [`TrialParams`];
    /// a key the object leaves out takes the study's value when the study fixes it
    /// (the seed: the study's), and is an error when the study searches over it.
    pub fn trial_params(&self, path: &Path, json: &str) -> Result<TrialParams> {
        let bad = |key: &str, message: String| Error::Study {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad("trial", format!("not JSON: {e}")))?;
        let serde_json::Value::Object(given) = value else {
            return Err(bad(
                "trial",
                "expected a JSON object of parameters".to_string(),
            ));
        };
        let fixed = self.space.sample(self.seed, 0);
        let mut full = match serde_json::to_value(&fixed) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        for (key, v) in &given {
            if !full.contains_key(key) {
                return Err(bad(
                    key,
                    format!(
                        "unknown key; expected {}",
                        full.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            full.insert(key.clone(), v.clone());
        }
        for key in self.space.searched() {
            if !given.contains_key(key) {
                return Err(bad(
                    key,
                    "is searched over in the study: the trial's parameters must give it"
                        .to_string(),
                ));
            }
        }
        if !given.contains_key("seed") {
            full.insert("seed".to_string(), serde_json::Value::from(self.seed));
        }
        let params: TrialParams = serde_json::from_value(serde_json::Value::Object(full))
            .map_err(|e| bad(&json_key(&e.to_string()), e.to_string()))?;
        params.hyper().map_err(|(key, message)| bad(key, message))?;
        Ok(params)
    }
}

/// The key a serde_json error message names (`invalid type: …` has none).
fn json_key(message: &str) -> String {
    message
        .split('`')
        .nth(1)
        .map(str::to_string)
        .unwrap_or_default()
}

/// The keys of `[space]`, in [`TrialParams`]'s order.
const SPACE_KEYS: [&str; 11] = [
    "hidden",
    "activation",
    "optimizer",
    "learning_rate",
    "batch_size",
    "epochs",
    "patience",
    "min_delta",
    "weight_decay",
    "momentum",
    "schedule",
];

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

/// Parses `[space]`; `bad(key, message)` makes the error.
fn parse_space(table: &toml::Table, bad: &dyn Fn(&str, String) -> Error) -> Result<Space> {
    let mut space = Space::default();
    for (key, value) in table {
        let k = format!("space.{key}");
        let k = k.as_str();
        match key.as_str() {
            "hidden" => space.hidden = choice(k, value, bad, &widths, false)?,
            "activation" => space.activation = choice(k, value, bad, &activation, false)?,
            "optimizer" => space.optimizer = choice(k, value, bad, &optimizer, false)?,
            "learning_rate" => {
                space.learning_rate = choice(k, value, bad, &positive, true)?;
            }
            "batch_size" => space.batch_size = choice(k, value, bad, &at_least_one, true)?,
            "epochs" => space.epochs = choice(k, value, bad, &at_least_one, true)?,
            "patience" => space.patience = choice(k, value, bad, &count, true)?,
            "min_delta" => space.min_delta = choice(k, value, bad, &non_negative, true)?,
            "weight_decay" => space.weight_decay = choice(k, value, bad, &non_negative, true)?,
            "momentum" => space.momentum = choice(k, value, bad, &momentum, true)?,
            "schedule" => space.schedule = choice(k, value, bad, &schedule, false)?,
            other => {
                return Err(bad(
                    &format!("space.{}", excerpt(other)),
                    format!("unknown key; expected one of {}", SPACE_KEYS.join(", ")),
                ))
            }
        }
    }
    Ok(space)
}

type Check<T> = dyn Fn(&toml::Value) -> std::result::Result<T, String>;

/// One key of `[space]`: a scalar (fixed), a list (a choice; `hidden`'s fixed value is
/// a list of integers, its choice a list of lists), or — where `dist` — a table with
/// one distribution.
fn choice<T>(
    key: &str,
    value: &toml::Value,
    bad: &dyn Fn(&str, String) -> Error,
    check: &Check<T>,
    dist: bool,
) -> Result<Choice<T>> {
    let hidden = key == "space.hidden";
    match value {
        toml::Value::Array(list) if !hidden || list.iter().any(toml::Value::is_array) => {
            if list.is_empty() {
                return Err(bad(
                    key,
                    "is an empty list: give at least one value".to_string(),
                ));
            }
            let values = list
                .iter()
                .enumerate()
                .map(|(i, v)| check(v).map_err(|m| bad(key, format!("value {i}: {m}"))))
                .collect::<Result<Vec<T>>>()?;
            Ok(Choice::List(values))
        }
        toml::Value::Table(t) if dist => {
            let mut entries = t.iter();
            let (Some((name, bounds)), None) = (entries.next(), entries.next()) else {
                return Err(bad(
                    key,
                    "a distribution is a table of one key: log_uniform, uniform or int_uniform"
                        .to_string(),
                ));
            };
            let pair = match bounds.as_array().map(Vec::as_slice) {
                Some([a, b]) => {
                    let num =
                        |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
                    num(a).zip(num(b))
                }
                _ => None,
            };
            let Some((a, b)) = pair else {
                return Err(bad(
                    key,
                    format!("{}: expected [low, high], two numbers", excerpt(name)),
                ));
            };
            if !(a.is_finite() && b.is_finite() && a < b) {
                return Err(bad(
                    key,
                    format!("{name} = [{a}, {b}]: expected low < high, both finite"),
                ));
            }
            let d = match name.as_str() {
                "log_uniform" if a > 0.0 => Dist::LogUniform(a, b),
                "log_uniform" => {
                    return Err(bad(
                        key,
                        format!("log_uniform = [{a}, {b}]: log bounds must be > 0"),
                    ))
                }
                "uniform" => Dist::Uniform(a, b),
                "int_uniform" if a.fract() == 0.0 && b.fract() == 0.0 => {
                    Dist::IntUniform(a as i64, b as i64)
                }
                "int_uniform" => {
                    return Err(bad(
                        key,
                        format!("int_uniform = [{a}, {b}]: bounds must be integers"),
                    ))
                }
                other => {
                    return Err(bad(
                        key,
                        format!(
                        "unknown distribution \"{}\": expected log_uniform, uniform or int_uniform",
                        excerpt(other)
                    ),
                    ))
                }
            };
            // Both ends must be valid values of the key.
            for end in [a, b] {
                let v = match d {
                    Dist::IntUniform(..) => toml::Value::Integer(end as i64),
                    _ => toml::Value::Float(end),
                };
                check(&v).map_err(|m| bad(key, format!("{name} = [{a}, {b}]: {m}")))?;
            }
            Ok(Choice::Dist(d))
        }
        toml::Value::Table(_) => Err(bad(
            key,
            "takes a value or a list of values, not a distribution".to_string(),
        )),
        scalar => check(scalar).map(Choice::Fixed).map_err(|m| bad(key, m)),
    }
}

fn number(v: &toml::Value) -> std::result::Result<f64, String> {
    v.as_float()
        .or_else(|| v.as_integer().map(|i| i as f64))
        .ok_or_else(|| format!("{} where a number is expected", type_name(v)))
}

fn positive(v: &toml::Value) -> std::result::Result<f64, String> {
    let x = number(v)?;
    if x.is_finite() && x > 0.0 && (x as f32) > 0.0 {
        Ok(x)
    } else {
        Err(format!("{x}: expected a finite number > 0"))
    }
}

fn non_negative(v: &toml::Value) -> std::result::Result<f64, String> {
    let x = number(v)?;
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err(format!("{x}: expected a finite number >= 0"))
    }
}

fn momentum(v: &toml::Value) -> std::result::Result<f64, String> {
    let x = number(v)?;
    if (0.0..1.0).contains(&x) {
        Ok(x)
    } else {
        Err(format!("{x}: expected a number in [0, 1)"))
    }
}

fn count(v: &toml::Value) -> std::result::Result<usize, String> {
    match v.as_integer() {
        Some(i) if i >= 0 => usize::try_from(i).map_err(|_| format!("{i} is too large")),
        Some(i) => Err(format!("{i}: expected an integer >= 0")),
        // Distributions' ends arrive as floats.
        None => match v.as_float() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 1e15 => Ok(f as usize),
            _ => Err(format!("{} where an integer is expected", type_name(v))),
        },
    }
}

fn at_least_one(v: &toml::Value) -> std::result::Result<usize, String> {
    match count(v)? {
        0 => Err("0: expected an integer >= 1".to_string()),
        n => Ok(n),
    }
}

fn widths(v: &toml::Value) -> std::result::Result<Vec<usize>, String> {
    let list = v
        .as_array()
        .ok_or_else(|| format!("{} where a list of layer widths is expected", type_name(v)))?;
    list.iter()
        .enumerate()
        .map(|(i, w)| match count(w) {
            Ok(0) => Err(format!(
                "hidden width 0 (layer {i}): every hidden layer needs at least 1 unit"
            )),
            other => other,
        })
        .collect()
}

fn string(v: &toml::Value) -> std::result::Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("{} where a string is expected", type_name(v)))
}

fn activation(v: &toml::Value) -> std::result::Result<String, String> {
    let s = string(v)?;
    match s.parse::<crate::model::Activation>() {
        Ok(a) if a != crate::model::Activation::Softmax => Ok(a.name().to_string()),
        _ => Err(format!(
            "\"{}\": expected identity, relu, tanh, sigmoid or gelu",
            excerpt(s)
        )),
    }
}

fn optimizer(v: &toml::Value) -> std::result::Result<String, String> {
    let s = string(v)?;
    if OPTIMIZERS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "\"{}\": expected {}",
            excerpt(s),
            OPTIMIZERS.join(", ")
        ))
    }
}

fn schedule(v: &toml::Value) -> std::result::Result<String, String> {
    let s = string(v)?;
    match parse_schedule(s) {
        Some(_) => Ok(s.trim().to_string()),
        None => Err(format!(
            "\"{}\": expected \"constant\", \"cosine\" or \"step:EVERY:GAMMA\" (EVERY >= 1, GAMMA in (0, 1])",
            excerpt(s)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::key_at;

    #[test]
    fn key_at_names_section_and_key() {
        let text = "[data]\nx = 1\n\n[space]\nhiddn = 2\n";
        assert_eq!(key_at(text, text.find("hiddn").unwrap_or(0)), "space.hiddn");
        assert_eq!(key_at(text, 1), "data");
    }
}
