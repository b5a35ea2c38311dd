//! The model repository: `DIR/<model>/<version>/ensemble.toml`, polled; each version
//! loaded into replicas, warmed, served, and unloaded when it leaves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::batcher::{BatchConfig, Batcher, Replica};
use super::metrics::Metrics;
use super::types::{InferRequest, ServeError, VersionSelector};
use crate::error::{Error, Result};
use crate::io::Manifest;
use crate::options::{RunOptions, SessionOptions};
use crate::placement::Placement;
use crate::precision::Precision;
use crate::session::Session;
use crate::tensor::Tensor;

/// Where a version's replicas run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Replicas {
    /// One copy of the ensemble, members where the manifest places them.
    #[default]
    Manifest,
    /// One whole copy on every usable adapter (the CPU when there is none).
    PerDevice,
}

impl std::str::FromStr for Replicas {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "manifest" => Ok(Replicas::Manifest),
            "per-device" => Ok(Replicas::PerDevice),
            other => Err(Error::invalid("replicas", other, "manifest or per-device")),
        }
    }
}

/// How the repository loads and serves its models.
#[derive(Clone, Debug)]
pub struct RepositoryConfig {
    /// The repository's folder.
    pub root: PathBuf,
    /// Where replicas run.
    pub replicas: Replicas,
    /// The kernels' precision.
    pub precision: Precision,
    /// Batching of every version (a model's `config.toml` may change it).
    pub batch: BatchConfig,
}

/// A version's state, as TensorFlow Serving names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionState {
    /// Being loaded and warmed.
    Loading,
    /// Served.
    Available,
    /// Finishing its requests before it is unloaded.
    Unloading,
    /// Unloaded, or its load failed (`error` says why).
    End,
}

impl VersionState {
    /// TensorFlow Serving's name: `LOADING`, `AVAILABLE`, `UNLOADING`, `END`.
    pub fn name(self) -> &'static str {
        match self {
            VersionState::Loading => "LOADING",
            VersionState::Available => "AVAILABLE",
            VersionState::Unloading => "UNLOADING",
            VersionState::End => "END",
        }
    }
}

/// One version's state and, for a failed load, its error.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionStatus {
    /// The version.
    pub version: u64,
    /// Its state.
    pub state: VersionState,
    /// Why its load failed.
    pub error: Option<String>,
}

/// A version being served.
#[derive(Debug)]
pub struct ServedVersion {
    /// The model's name.
    pub model: String,
    /// The version.
    pub version: u64,
    /// Its queue and replicas.
    pub batcher: Batcher,
}

#[derive(Default)]
struct ModelEntry {
    served: BTreeMap<u64, Arc<ServedVersion>>,
    status: BTreeMap<u64, VersionStatus>,
}

/// The models and versions served.
pub struct Repository {
    config: RepositoryConfig,
    metrics: Metrics,
    models: RwLock<BTreeMap<String, ModelEntry>>,
    polling: Mutex<()>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("root", &self.config.root)
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// A repository over `config.root`, which must be a folder; nothing is loaded
    /// until [`Repository::poll`].
    pub fn open(config: RepositoryConfig, metrics: Metrics) -> Result<Self> {
        if !config.root.is_dir() {
            return Err(Error::invalid(
                "--model-repository",
                &config.root.display().to_string(),
                "a folder of <model>/<version>/ensemble.toml",
            ));
        }
        Ok(Self {
            config,
            metrics,
            models: RwLock::new(BTreeMap::new()),
            polling: Mutex::new(()),
        })
    }

    /// Scans the folder: loads (and warms) each model's highest version that is not
    /// served yet, then unloads the versions it replaces or that left the folder.
    pub fn poll(&self) {
        let Ok(_one_at_a_time) = self.polling.lock() else {
            return;
        };
        let found = scan(&self.config.root);
        for (model, versions) in &found {
            let Some(&latest) = versions.keys().next_back() else {
                continue;
            };
            let known = self
                .read()
                .get(model)
                .is_some_and(|m| m.status.contains_key(&latest));
            if known {
                continue;
            }
            self.set_status(model, latest, VersionState::Loading, None);
            match self.load(model, latest, &versions[&latest]) {
                Ok(served) => {
                    let replaced: Vec<Arc<ServedVersion>> = {
                        let mut models = self.write();
                        let entry = models.entry(model.clone()).or_default();
                        entry.served.insert(latest, Arc::new(served));
                        entry
                            .status
                            .insert(latest, status(latest, VersionState::Available, None));
                        let old: Vec<u64> = entry
                            .served
                            .keys()
                            .copied()
                            .filter(|&v| v != latest)
                            .collect();
                        old.iter().filter_map(|v| entry.served.remove(v)).collect()
                    };
                    self.unload(replaced);
                }
                Err(e) => self.set_status(model, latest, VersionState::End, Some(e.to_string())),
            }
        }
        // Versions whose folder is gone.
        let gone: Vec<Arc<ServedVersion>> = {
            let mut models = self.write();
            let mut gone = Vec::new();
            for (model, entry) in models.iter_mut() {
                let present = found.get(model);
                let leaving: Vec<u64> = entry
                    .served
                    .keys()
                    .copied()
                    .filter(|v| present.is_none_or(|p| !p.contains_key(v)))
                    .collect();
                gone.extend(leaving.iter().filter_map(|v| entry.served.remove(v)));
            }
            gone
        };
        self.unload(gone);
    }

    fn unload(&self, versions: Vec<Arc<ServedVersion>>) {
        for served in versions {
            self.set_status(&served.model, served.version, VersionState::Unloading, None);
            served.batcher.close();
            let (model, version) = (served.model.clone(), served.version);
            // Requests holding it finish; the last one drops it, draining its queue.
            drop(served);
            self.set_status(&model, version, VersionState::End, None);
        }
    }

    fn load(&self, model: &str, version: u64, manifest: &Path) -> Result<ServedVersion> {
        let manifest = Manifest::load(manifest)?;
        let placements: Vec<(String, Option<Placement>)> = match self.config.replicas {
            Replicas::Manifest => vec![("manifest".to_string(), None)],
            Replicas::PerDevice => {
                let adapters: Vec<usize> = crate::gpu::probe_adapters()
                    .into_iter()
                    .filter(|p| p.usable.is_ok())
                    .map(|p| p.info.index)
                    .collect();
                if adapters.is_empty() {
                    vec![("cpu".to_string(), Some(Placement::Cpu))]
                } else {
                    adapters
                        .into_iter()
                        .map(|i| (format!("adapter:{i}"), Some(Placement::Adapter(i))))
                        .collect()
                }
            }
        };
        let mut replicas = Vec::new();
        for (name, placement) in placements {
            let graph = manifest.graph(placement.as_ref())?;
            let width = graph.input_width();
            let session = Session::with_options(
                graph,
                SessionOptions::default().precision(self.config.precision),
            )?;
            // Warm: one run before the version is served.
            session.run(&Tensor::zeros(1, width), &RunOptions::default())?;
            replicas.push(Replica { name, session });
        }
        let batcher = Batcher::start(
            model,
            version,
            replicas,
            self.config.batch.clone(),
            self.metrics.clone(),
        )
        .map_err(|e| Error::invalid("replicas", &e.to_string(), "replica threads"))?;
        Ok(ServedVersion {
            model: model.to_string(),
            version,
            batcher,
        })
    }

    fn set_status(&self, model: &str, version: u64, state: VersionState, error: Option<String>) {
        self.write()
            .entry(model.to_string())
            .or_default()
            .status
            .insert(version, status(version, state, error));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The version a request names, if it is served.
    pub fn resolve(
        &self,
        model: &str,
        version: &VersionSelector,
    ) -> Result<Arc<ServedVersion>, ServeError> {
        let models = self.read();
        let entry = models.get(model).ok_or_else(|| {
            ServeError::NotFound(format!("unknown model '{}'", crate::error::excerpt(model)))
        })?;
        let found = match version {
            VersionSelector::Default => entry.served.values().next_back(),
            VersionSelector::Number(v) => entry.served.get(v),
            VersionSelector::Label(l) => {
                return Err(ServeError::NotFound(format!(
                    "model '{model}' has no label '{}'",
                    crate::error::excerpt(l)
                )))
            }
        };
        found.cloned().ok_or_else(|| {
            ServeError::NotFound(match version {
                VersionSelector::Number(v) => format!("model '{model}' has no version {v} served"),
                _ => format!("model '{model}' has no version served"),
            })
        })
    }

    /// Resolves, then queues the request; a version unloaded between the two is
    /// resolved again once, so that a swap loses no request.
    pub fn submit(
        &self,
        model: &str,
        version: &VersionSelector,
        request: InferRequest,
    ) -> Result<(Arc<ServedVersion>, super::batcher::Reply), ServeError> {
        let served = self.resolve(model, version)?;
        let reply = served.batcher.submit(request)?;
        Ok((served, reply))
    }

    /// Every version's status, or one's.
    pub fn status(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<Vec<VersionStatus>, ServeError> {
        let models = self.read();
        let entry = models.get(model).ok_or_else(|| {
            ServeError::NotFound(format!("unknown model '{}'", crate::error::excerpt(model)))
        })?;
        match version {
            None => Ok(entry.status.values().cloned().collect()),
            Some(v) => entry
                .status
                .get(&v)
                .cloned()
                .map(|s| vec![s])
                .ok_or_else(|| ServeError::NotFound(format!("model '{model}' has no version {v}"))),
        }
    }

    /// The models known (served or tried).
    #[allow(dead_code)]
    pub fn models(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Stops every version: no new request is taken, every queued one is answered.
    pub fn shutdown(&self) {
        let all: Vec<Arc<ServedVersion>> = {
            let mut models = self.write();
            models
                .values_mut()
                .flat_map(|e| std::mem::take(&mut e.served).into_values())
                .collect()
        };
        for served in &all {
            served.batcher.close();
        }
        for served in all {
            served.batcher.drain();
        }
    }
}

fn status(version: u64, state: VersionState, error: Option<String>) -> VersionStatus {
    VersionStatus {
        version,
        state,
        error,
    }
}

/// `model -> version -> manifest path` of every `DIR/<model>/<version>/ensemble.toml`
/// (versions are positive integers; anything else is ignored).
fn scan(root: &Path) -> BTreeMap<String, BTreeMap<u64, PathBuf>> {
    let mut found = BTreeMap::new();
    let Ok(models) = std::fs::read_dir(root) else {
        return found;
    };
    for model in models.flatten() {
        let Ok(name) = model.file_name().into_string() else {
            continue;
        };
        if !model.path().is_dir() || name.starts_with('.') {
            continue;
        }
        let mut versions = BTreeMap::new();
        if let Ok(dirs) = std::fs::read_dir(model.path()) {
            for dir in dirs.flatten() {
                let version = dir.file_name().to_str().and_then(|v| v.parse::<u64>().ok());
                let manifest = dir.path().join("ensemble.toml");
                if let Some(v) = version.filter(|&v| v > 0) {
                    if manifest.is_file() {
                        versions.insert(v, manifest);
                    }
                }
            }
        }
        found.insert(name, versions);
    }
    found
}
