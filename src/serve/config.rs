//! A model's `config.toml` (`DIR/<model>/config.toml`, optional): which versions are
//! served, version labels, batching and replicas.
//!
//! ```toml
//! # Every key is optional. Top-level keys come before the [version_policy] table.
//! labels = { stable = 3, canary = 4 }  # a label may only point at a served version
//! max_batch_size = 32                  # the server's --max-batch-size for this model
//! max_queue_delay_us = 200             # the server's --max-queue-delay-us for this model
//! replicas = "per-device"              # "manifest" | "per-device": the server's --replicas
//!
//! [version_policy]                     # one of these three; absent: latest = 1
//! latest = 2                           # the 2 highest versions
//! # all = true                         # every version
//! # specific = [1, 3]                  # exactly these versions
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::repository::Replicas;
use crate::error::excerpt;
use crate::files::{read_regular_to_string, toml_error, TEXT_FILE_LIMIT};

/// The most rows `max_batch_size` may ask for.
const MAX_BATCH_ROWS: i64 = 1 << 16;
/// The longest `max_queue_delay_us` (10 s): a longer wait is a mistake, not a policy.
const MAX_QUEUE_DELAY_US: i64 = 10_000_000;
/// The longest label, in characters.
const MAX_LABEL_CHARS: usize = 64;

/// Which of a model's versions are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The `n` highest versions (`latest = n`; the default is 1).
    Latest(usize),
    /// Every version (`all = true`).
    All,
    /// Exactly these versions, those of them that are present (`specific = [1, 3]`).
    Specific(BTreeSet<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions of `candidates` (those present and loadable) this policy serves.
    pub fn select(&self, candidates: &BTreeSet<u64>) -> BTreeSet<u64> {
        match self {
            VersionPolicy::Latest(n) => candidates.iter().rev().take(*n).copied().collect(),
            VersionPolicy::All => candidates.clone(),
            VersionPolicy::Specific(wanted) => candidates.intersection(wanted).copied().collect(),
        }
    }
}

/// A model's settings from its `config.toml`; without the file, every default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelConfig {
    /// Which versions are served.
    pub policy: VersionPolicy,
    /// Label → version.
    pub labels: BTreeMap<String, u64>,
    /// Overrides the server's largest batch, in rows.
    pub max_batch_size: Option<usize>,
    /// Overrides how long the server lets a batch wait for more requests.
    pub max_queue_delay: Option<Duration>,
    /// Overrides where the server puts replicas.
    pub replicas: Option<Replicas>,
}

/// Why a `config.toml` was refused: the file and what is wrong, naming the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    version_policy: Option<PolicyFormat>,
    labels: Option<BTreeMap<String, i64>>,
    max_batch_size: Option<i64>,
    max_queue_delay_us: Option<i64>,
    replicas: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFormat {
    latest: Option<i64>,
    all: Option<bool>,
    specific: Option<Vec<i64>>,
}

impl ModelConfig {
    /// Reads `path` (a regular file of at most 1 MiB).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_regular_to_string(path, TEXT_FILE_LIMIT).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text`; `path` names it in errors, which quote at most 200 characters of
    /// any value.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError {
            path: path.to_path_buf(),
            message,
        };
        let format: FileFormat = toml::from_str(text).map_err(|e| bad(toml_error(text, &e)))?;
        let policy = match format.version_policy {
            None => VersionPolicy::default(),
            Some(p) => match (p.latest, p.all, p.specific) {
                (None, None, None) => {
                    return Err(bad(
                        "[version_policy] is empty: give one of `latest = N`, `all = true` or `specific = [..]`"
                            .into(),
                    ))
                }
                (Some(n), None, None) => {
                    if n < 1 {
                        return Err(bad(format!(
                            "[version_policy] `latest` is {n}: expected a number of versions, at least 1"
                        )));
                    }
                    VersionPolicy::Latest(usize::try_from(n).unwrap_or(usize::MAX))
                }
                (None, Some(true), None) => VersionPolicy::All,
                (None, Some(false), None) => {
                    return Err(bad(
                        "[version_policy] `all` is false: write `all = true`, or use `latest` or `specific`"
                            .into(),
                    ))
                }
                (None, None, Some(list)) => {
                    if list.is_empty() {
                        return Err(bad(
                            "[version_policy] `specific` is empty: list the versions to serve"
                                .into(),
                        ));
                    }
                    let versions = list
                        .iter()
                        .map(|&v| version(v).map_err(|e| bad(format!("[version_policy] `specific`: {e}"))))
                        .collect::<Result<BTreeSet<u64>, _>>()?;
                    VersionPolicy::Specific(versions)
                }
                _ => {
                    return Err(bad(
                        "[version_policy] gives more than one of `latest`, `all` and `specific`: give one"
                            .into(),
                    ))
                }
            },
        };
        let mut labels = BTreeMap::new();
        for (label, v) in format.labels.unwrap_or_default() {
            check_label(&label).map_err(|e| bad(format!("`labels`: {e}")))?;
            let v = version(v)
                .map_err(|e| bad(format!("`labels`: label \"{}\": {e}", excerpt(&label))))?;
            labels.insert(label, v);
        }
        let max_batch_size = format
            .max_batch_size
            .map(|n| {
                if (1..=MAX_BATCH_ROWS).contains(&n) {
                    Ok(usize::try_from(n).unwrap_or(1))
                } else {
                    Err(bad(format!(
                        "`max_batch_size` is {n}: expected rows from 1 to {MAX_BATCH_ROWS}"
                    )))
                }
            })
            .transpose()?;
        let max_queue_delay = format
            .max_queue_delay_us
            .map(|us| {
                if (0..=MAX_QUEUE_DELAY_US).contains(&us) {
                    Ok(Duration::from_micros(us.unsigned_abs()))
                } else {
                    Err(bad(format!(
                        "`max_queue_delay_us` is {us}: expected microseconds from 0 to {MAX_QUEUE_DELAY_US}"
                    )))
                }
            })
            .transpose()?;
        let replicas = format
            .replicas
            .map(|r| match r.as_str() {
                "manifest" => Ok(Replicas::Manifest),
                "per-device" => Ok(Replicas::PerDevice),
                other => Err(bad(format!(
                    "`replicas` is \"{}\": expected \"manifest\" or \"per-device\"",
                    excerpt(other)
                ))),
            })
            .transpose()?;
        Ok(Self {
            policy,
            labels,
            max_batch_size,
            max_queue_delay,
            replicas,
        })
    }
}

/// A version number as written: a positive integer.
fn version(v: i64) -> Result<u64, String> {
    u64::try_from(v)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("version {v}: expected a positive integer"))
}

/// A label: 1 to 64 ASCII letters, digits, `-`, `_` or `.`, not only digits (it would
/// read as a version), so that it fits a URL's path as written. (A label that a path
/// cannot reach although it fits is refused on its own, with the file's other
/// settings kept: [`unreachable_label`].)
fn check_label(label: &str) -> Result<(), String> {
    let fits = !label.is_empty()
        && label.chars().count() <= MAX_LABEL_CHARS
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !label.chars().all(|c| c.is_ascii_digit());
    if fits {
        Ok(())
    } else {
        Err(format!(
            "label \"{}\": expected 1 to {MAX_LABEL_CHARS} ASCII letters, digits, '-', '_' or '.', not only digits",
            excerpt(label)
        ))
    }
}

/// Why `/v1/models/m/labels/{label}` cannot reach `label`, if it cannot: only dots
/// (clients remove `.` and `..` from a path), or `metadata` (the metadata path).
pub(crate) fn unreachable_label(label: &str) -> Option<&'static str> {
    if label.chars().all(|c| c == '.') {
        Some("clients remove '.' and '..' from a URL's path")
    } else if label == "metadata" {
        Some("/v1/models/{model}/labels/metadata is the model's metadata")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig, ConfigError> {
        ModelConfig::parse(Path::new("m/config.toml"), text)
    }

    #[test]
    fn shapes() {
        assert_eq!(parse("").unwrap(), ModelConfig::default());
        let c = parse(
            "labels = { stable = 3, canary = 4 }\nmax_batch_size = 8\nmax_queue_delay_us = 0\nreplicas = \"per-device\"\n[version_policy]\nspecific = [3, 1]\n",
        )
        .unwrap();
        assert_eq!(c.policy, VersionPolicy::Specific([1, 3].into()));
        assert_eq!(c.labels["canary"], 4);
        assert_eq!(c.max_batch_size, Some(8));
        assert_eq!(c.max_queue_delay, Some(Duration::ZERO));
        assert_eq!(c.replicas, Some(Replicas::PerDevice));
        assert_eq!(
            parse("[version_policy]\nall = true").unwrap().policy,
            VersionPolicy::All
        );
        assert_eq!(
            parse("[version_policy]\nlatest = 2").unwrap().policy,
            VersionPolicy::Latest(2)
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        for (text, key) in [
            ("lables = { a = 1 }", "lables"),
            ("[version_policy]\nlatest = 0", "latest"),
            ("[version_policy]\nlatest = 1\nall = true", "more than one"),
            ("[version_policy]\nall = false", "all"),
            ("[version_policy]\nspecific = []", "specific"),
            ("[version_policy]\nspecific = [-1]", "specific"),
            ("labels = { stable = 0 }", "stable"),
            ("labels = { \"a b\" = 1 }", "a b"),
            ("labels = { 12 = 1 }", "12"),
            ("max_batch_size = 0", "max_batch_size"),
            ("max_queue_delay_us = -1", "max_queue_delay_us"),
            ("replicas = \"everywhere\"", "replicas"),
            ("max_batch_size = \"x\"", "max_batch_size"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("m/config.toml: "), "{text:?}: {e}");
            assert!(e.contains(key), "{text:?}: {e} does not name {key}");
        }
        let long = format!("replicas = \"{}\"", "x".repeat(5000));
        let e = parse(&long).unwrap_err().to_string();
        assert!(e.len() < 600, "{e}");
    }
}
