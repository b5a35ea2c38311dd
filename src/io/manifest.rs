//! The ensemble manifest: a TOML file naming every member's weights, activations,
//! layer order and device, and the aggregate. Paths are relative to the manifest.
//!
//! ```toml
//! [aggregate]
//! kind = "weighted_mean"          # "mean" | "weighted_mean" | "vote" | "stack"
//! weights = [0.6, 0.4]            # for weighted_mean and (optionally) vote
//! # blender = "blender.safetensors"  # for stack (and only stack): the blender model
//!
//! [[member]]
//! name = "relu-64"
//! file = "relu-64.safetensors"
//! activations = ["relu", "softmax"]   # optional when the file's metadata has them
//! layers = ["0", "2"]                 # optional explicit order
//! device = "auto"                     # "auto" | "cpu" | "adapter:N" | "adapter:N/queue:K"
//!
//! [[member]]                          # one member split across devices
//! name = "wide"
//! file = "wide.safetensors"
//! devices = ["adapter:0", "cpu"]      # instead of `device`
//! split = "layers"                    # or "columns"
//! micro_batches = 4                   # layers only (default: one per device)
//! boundaries = [2]                    # layers only: first layer of each later stage
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::weights::{load_model, parse_activations, LoadOptions};
use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::files::{excerpt, read_regular_to_string, toml_error, TEXT_FILE_LIMIT};
use crate::graph::Graph;
use crate::model::Activation;
use crate::placement::Placement;
use crate::split::{Split, SplitKind};

/// The longest path a member's `file` may be (Linux's `PATH_MAX`); a longer one
/// could not be opened, and would be quoted whole by the error that says so.
const MAX_PATH_BYTES: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    aggregate: Option<AggregateFormat>,
    #[serde(default)]
    member: Vec<MemberFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AggregateFormat {
    kind: String,
    // Read as f64 so that a value beyond f32's range is reported as written.
    weights: Option<Vec<f64>>,
    blender: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberFormat {
    name: String,
    file: PathBuf,
    activations: Option<Vec<String>>,
    layers: Option<Vec<String>>,
    device: Option<String>,
    devices: Option<Vec<String>>,
    split: Option<String>,
    micro_batches: Option<usize>,
    boundaries: Option<Vec<usize>>,
}

/// One `[[member]]` of a manifest, with its file path resolved.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ManifestMember {
    /// The member's name.
    pub name: String,
    /// Its safetensors file (relative paths resolved against the manifest's folder).
    pub file: PathBuf,
    /// How to read its layers.
    pub options: LoadOptions,
    /// Where it runs (`auto` when the manifest does not say; a split member's first
    /// device).
    pub placement: Placement,
    /// How it is split across devices, when the manifest lists `devices`.
    pub split: Option<Split>,
}

/// A parsed and checked ensemble manifest.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Manifest {
    /// The manifest file.
    pub path: PathBuf,
    /// The aggregate node's rule (`mean` when the manifest has no `[aggregate]`). For
    /// `kind = "stack"` it is [`Aggregate::Mean`] (a stack's answer when members are
    /// missing) until [`Manifest::graph`] reads [`Manifest::blender`] and makes it
    /// [`Aggregate::Stack`].
    pub aggregate: Aggregate,
    /// A stack's blender file (`kind = "stack"`, resolved against the manifest's
    /// folder); `None` for other kinds. Its activations come from its metadata.
    pub blender: Option<PathBuf>,
    /// The members, in file order.
    pub members: Vec<ManifestMember>,
}

impl Manifest {
    /// Reads and checks a manifest: unknown keys, aggregate kinds, activation names and
    /// device specifications are errors naming the manifest. Weight files are read by
    /// [`Manifest::graph`].
    ///
    /// The manifest must be a regular file (or a symbolic link to one) of at most
    /// 1 MiB: anything else ([`Error::NotRegularFile`], [`Error::FileTooLarge`]) is
    /// refused before it is read.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_regular_to_string(path, TEXT_FILE_LIMIT)?;
        Self::parse(path, &text)
    }

    /// Parses manifest text; `path` names it in errors and anchors relative paths.
    /// Errors quote at most 200 characters of any value or line of the text.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let bad = |message: String| Error::Manifest {
            path: path.to_path_buf(),
            message,
        };
        let format: FileFormat = toml::from_str(text).map_err(|e| bad(toml_error(text, &e)))?;
        if format.member.is_empty() {
            return Err(bad(
                "no [[member]]: a manifest needs at least one".to_string()
            ));
        }
        let base = path.parent().unwrap_or(Path::new(""));
        let mut blender = None;
        let aggregate = match format.aggregate {
            None => Aggregate::Mean,
            Some(AggregateFormat {
                kind,
                blender: Some(_),
                ..
            }) if kind != "stack" => {
                return Err(bad(format!(
                    "aggregate `blender` is for kind \"stack\" only; kind is \"{}\"",
                    excerpt(&kind)
                )));
            }
            Some(AggregateFormat {
                kind,
                weights,
                blender: file,
            }) if kind == "stack" => {
                if weights.is_some() {
                    return Err(bad(
                        "aggregate kind \"stack\" takes no `weights`: the blender weighs the members"
                            .into(),
                    ));
                }
                let Some(file) = file else {
                    return Err(bad(
                        "aggregate kind \"stack\" needs `blender`: the blender model's safetensors file"
                            .into(),
                    ));
                };
                if file.as_os_str().is_empty() {
                    return Err(bad(
                        "aggregate `blender` is empty; name the blender's safetensors file".into(),
                    ));
                }
                if file.as_os_str().len() > MAX_PATH_BYTES {
                    return Err(bad(format!(
                        "aggregate `blender` has {} bytes, more than a path may have ({MAX_PATH_BYTES}): \"{}\"",
                        file.as_os_str().len(),
                        excerpt(&file.to_string_lossy())
                    )));
                }
                blender = Some(base.join(file));
                Aggregate::Mean
            }
            Some(AggregateFormat { kind, weights, .. }) => {
                let weights = weights
                    .map(|w| {
                        // Normalised in f64 before narrowing, so that tiny and huge
                        // weights keep their ratios; weights that cannot be normalised
                        // (negative, all zero) go on to the graph's checks as written.
                        Aggregate::normalise_weights(&w).or_else(|_| {
                            super::narrow(&w).map_err(|(i, v)| {
                                bad(format!("aggregate weight {i} is {v:e}, beyond f32's range"))
                            })
                        })
                    })
                    .transpose()?;
                match (kind.as_str(), weights) {
                ("mean", None) => Aggregate::Mean,
                ("mean", Some(_)) => {
                    return Err(bad(
                        "aggregate kind \"mean\" takes no weights; use \"weighted_mean\"".into(),
                    ))
                }
                ("weighted_mean", Some(w)) => Aggregate::WeightedMean(w),
                ("weighted_mean", None) => {
                    return Err(bad("aggregate kind \"weighted_mean\" needs `weights`".into()))
                }
                ("vote", weights) => Aggregate::Vote { weights },
                (other, _) => {
                    return Err(bad(format!(
                        "unknown aggregate kind \"{}\": expected \"mean\", \"weighted_mean\", \"vote\" or \"stack\"",
                        excerpt(other)
                    )))
                }
            }
            }
        };
        // Checked here as well as when the graph is built, so that the error names the
        // manifest and comes before any weight file is read.
        if let Aggregate::WeightedMean(w) | Aggregate::Vote { weights: Some(w) } = &aggregate {
            if w.len() != format.member.len() {
                return Err(bad(format!(
                    "aggregate `weights` has {} values for {} [[member]]: one per member, in order",
                    w.len(),
                    format.member.len()
                )));
            }
        }
        if format.member.iter().any(|m| m.name.is_empty()) {
            return Err(bad("a [[member]] has an empty `name`".to_string()));
        }
        for (i, m) in format.member.iter().enumerate() {
            if format.member[..i].iter().any(|other| other.name == m.name) {
                return Err(bad(format!(
                    "two [[member]] are named \"{}\": names must be unique",
                    excerpt(&m.name)
                )));
            }
        }
        let members = format
            .member
            .into_iter()
            .map(|m| {
                let name = excerpt(&m.name);
                // An empty path would name the manifest's folder.
                if m.file.as_os_str().is_empty() {
                    return Err(bad(format!(
                        "member \"{name}\": `file` is empty; name the member's safetensors file"
                    )));
                }
                if m.file.as_os_str().len() > MAX_PATH_BYTES {
                    return Err(bad(format!(
                        "member \"{name}\": `file` has {} bytes, more than a path may have ({MAX_PATH_BYTES}): \"{}\"",
                        m.file.as_os_str().len(),
                        excerpt(&m.file.to_string_lossy())
                    )));
                }
                let activations: Option<Vec<Activation>> = m
                    .activations
                    .as_ref()
                    .map(|a| parse_activations(path, a.iter().map(String::as_str)))
                    .transpose()?;
                if m.layers.as_ref().is_some_and(Vec::is_empty) {
                    return Err(bad(format!(
                        "member \"{name}\": `layers` is empty; name the layers' prefixes in order, or leave it out"
                    )));
                }
                let device = |spec: &String| {
                    spec.parse::<Placement>().map_err(|_: Error| {
                        let e = Error::DeviceSpec {
                            spec: excerpt(spec),
                        };
                        bad(format!("member \"{name}\": {e}"))
                    })
                };
                let placement = match &m.device {
                    None => Placement::Auto,
                    Some(spec) => device(spec)?,
                };
                let split = split_of(&m, &name).map_err(|e| match e {
                    Error::Manifest { .. } => e,
                    other => bad(other.to_string()),
                })?;
                let placement = match &split {
                    Some(s) => s.devices().first().cloned().unwrap_or_default(),
                    None => placement,
                };
                Ok(ManifestMember {
                    file: base.join(&m.file),
                    options: LoadOptions {
                        activations,
                        layers: m.layers,
                    },
                    name: m.name,
                    placement,
                    split,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            path: path.to_path_buf(),
            aggregate,
            blender,
            members,
        })
    }

    /// Loads every member's weights (and a stack's blender) and builds the graph. `device` replaces every
    /// member's placement when given (the command line's `--device`). The input width
    /// is the first member's.
    pub fn graph(&self, device: Option<&Placement>) -> Result<Graph> {
        let mut builder = None;
        for m in &self.members {
            let model = load_model(&m.file, &m.options).map_err(|e| match e {
                // The count is the manifest's when it gives the activations.
                Error::ActivationCount {
                    path,
                    expected,
                    got,
                } if m.options.activations.is_some() => Error::Manifest {
                    path: self.path.clone(),
                    message: format!(
                        "member \"{}\": `activations` lists {got} for the {expected} layers of {}",
                        excerpt(&m.name),
                        path.display()
                    ),
                },
                other => other,
            })?;
            let b = builder.unwrap_or_else(|| Graph::builder(model.in_features()));
            builder = Some(match (device, &m.split) {
                // The member whole on `d`; its split is still checked, so that a
                // manifest is valid or not whatever the command line says.
                (Some(d), Some(split)) => {
                    split.check(&m.name, &model).map_err(|e| Error::Manifest {
                        path: self.path.clone(),
                        message: e.to_string(),
                    })?;
                    b.member(m.name.clone(), model, d.clone())
                }
                (Some(d), None) => b.member(m.name.clone(), model, d.clone()),
                (None, Some(split)) => b.split_member(m.name.clone(), model, split.clone()),
                (None, None) => b.member(m.name.clone(), model, m.placement.clone()),
            });
        }
        let aggregate = match &self.blender {
            Some(file) => Aggregate::Stack {
                blender: std::sync::Arc::new(load_model(file, &LoadOptions::default())?),
            },
            None => self.aggregate.clone(),
        };
        builder
            .ok_or(Error::NoMembers)?
            .aggregate(aggregate)
            .build()
            .map_err(|e| match e {
                // A blender that does not fit names the manifest and the file.
                Error::BlenderWidth { .. } => Error::Manifest {
                    path: self.path.clone(),
                    message: format!(
                        "aggregate `blender` {}: {e}",
                        self.blender
                            .as_deref()
                            .map(|b| excerpt(&b.to_string_lossy()))
                            .unwrap_or_default()
                    ),
                },
                // A split that does not fit its model names the manifest too.
                Error::Split { .. } => Error::Manifest {
                    path: self.path.clone(),
                    message: e.to_string(),
                },
                other => other,
            })
    }
}

/// A member's split from its `devices`, `split`, `micro_batches` and `boundaries`
/// (`None` without `devices`), each wrong combination (and each entry of `devices`
/// that is not a device) an error naming the key. What depends on the weights (boundaries beyond the
/// layers, more devices than a layer has outputs) is checked by [`Manifest::graph`].
fn split_of(m: &MemberFormat, name: &str) -> Result<Option<Split>> {
    let err = |key: &'static str, message: &str| Error::Split {
        member: name.to_string(),
        key,
        message: message.to_string(),
    };
    let Some(devices) = &m.devices else {
        for (key, given) in [
            ("split", m.split.is_some()),
            ("micro_batches", m.micro_batches.is_some()),
            ("boundaries", m.boundaries.is_some()),
        ] {
            if given {
                return Err(err(
                    key,
                    "given without `devices`; list the devices to split the member across",
                ));
            }
        }
        return Ok(None);
    };
    if m.device.is_some() {
        return Err(err(
            "devices",
            "given with `device`; give `device` for a whole member or `devices` for a split one, not both",
        ));
    }
    if devices.is_empty() {
        return Err(err(
            "devices",
            "an empty list; expected at least one device",
        ));
    }
    let kind: SplitKind = match &m.split {
        None => {
            return Err(err(
                "split",
                "missing; `devices` needs split = \"layers\" or \"columns\"",
            ))
        }
        Some(text) => text.parse().map_err(|_: Error| Error::Split {
            member: name.to_string(),
            key: "split",
            message: format!("\"{}\"; expected \"layers\" or \"columns\"", excerpt(text)),
        })?,
    };
    let placements = devices
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            spec.parse::<Placement>().map_err(|_: Error| Error::Split {
                member: name.to_string(),
                key: "devices",
                message: format!(
                    "entry {i}: {}",
                    Error::DeviceSpec {
                        spec: excerpt(spec)
                    }
                ),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut split = Split::new(kind, placements);
    if let Some(n) = m.micro_batches {
        split = split.micro_batches(n);
    }
    if let Some(b) = &m.boundaries {
        split = split.boundaries(b.clone());
    }
    // What needs no weights is checked now, before any file is read.
    split.check_options(name)?;
    Ok(Some(split))
}
