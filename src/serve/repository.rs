//! The model repository: `DIR/<model>/<version>/ensemble.toml`, polled; each version
//! loaded into replicas, warmed, served, and unloaded when it leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::SystemTime;

use super::batcher::{BatchConfig, Batcher, Replica, Reply};
use super::config::ModelConfig;
use super::metrics::Metrics;
use super::types::{InferRequest, ServeError, VersionSelector};
use crate::error::{excerpt, Error, Result};
use crate::io::Manifest;
use crate::options::{RunOptions, SessionOptions};
use crate::placement::Placement;
use crate::precision::Precision;
use crate::session::Session;
use crate::tensor::Tensor;

/// The most statuses kept of versions whose folder is gone (the highest ones).
const GONE_STATUSES_KEPT: usize = 16;
/// The most entries of a version's folder its fingerprint looks at.
const FINGERPRINT_ENTRIES: usize = 4096;

/// Where a version's replicas run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Replicas {
    /// One copy of the ensemble, members where the manifest places them.
    #[default]
    Manifest,
    /// One whole copy on every usable adapter (the CPU when there is none).
    ///
    /// "Usable" is [`Placement::Auto`]'s rule: adapters that open and run the
    /// server's precision, hardware ones only when there is any (a software rasteriser
    /// such as lavapipe only when no hardware adapter is usable). The adapters are
    /// probed once per repository.
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
#[non_exhaustive]
pub struct RepositoryConfig {
    /// The repository's folder.
    pub root: PathBuf,
    /// Where replicas run (a model's `config.toml` may change it).
    pub replicas: Replicas,
    /// The kernels' precision.
    pub precision: Precision,
    /// Batching of every version (a model's `config.toml` may change it).
    pub batch: BatchConfig,
    /// The options every replica's session is made with (its precision is replaced
    /// by [`RepositoryConfig::precision`]): timeouts, tiles, device timing, and a
    /// [`FaultPlan`](crate::FaultPlan) to try failures through the server.
    pub session: SessionOptions,
}

impl RepositoryConfig {
    /// The repository in `root`: one replica as the manifest places it, f32, the
    /// default batching.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            replicas: Replicas::Manifest,
            precision: Precision::F32,
            batch: BatchConfig::default(),
            session: SessionOptions::default(),
        }
    }

    /// Sets [`RepositoryConfig::session`].
    pub fn session(mut self, options: SessionOptions) -> Self {
        self.session = options;
        self
    }

    /// Sets [`RepositoryConfig::replicas`].
    pub fn replicas(mut self, replicas: Replicas) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets [`RepositoryConfig::precision`].
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Sets [`RepositoryConfig::batch`].
    pub fn batch(mut self, batch: BatchConfig) -> Self {
        self.batch = batch;
        self
    }
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
    /// Why its load failed; also the model's own problems (a `config.toml` that does
    /// not parse, a refused label), which every version of the model reports.
    pub error: Option<String>,
}

/// A version being served.
#[derive(Debug)]
#[non_exhaustive]
pub struct ServedVersion {
    /// The model's name.
    pub model: String,
    /// The version.
    pub version: u64,
    /// Its replicas' names: `manifest`, or the device each runs on (`adapter:0`,
    /// `cpu`).
    pub replicas: Vec<String>,
    /// Its batching: the server's, with the model's `config.toml` overrides at the
    /// time it was loaded.
    pub batch: BatchConfig,
    /// Its queue and replicas.
    pub batcher: Batcher,
}

/// What a version's folder held when its load was tried: every entry's path, size and
/// modification time, and those of the files its manifest names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

#[derive(Default)]
struct ModelEntry {
    served: BTreeMap<u64, Arc<ServedVersion>>,
    status: BTreeMap<u64, VersionStatus>,
    /// Loads that failed, with what the folder held then: tried again only once that
    /// changes.
    failed: BTreeMap<u64, Fingerprint>,
    /// What each served version's folder held when it was loaded: a version whose
    /// files change while it is served (written in place) is loaded again.
    sources: BTreeMap<u64, Fingerprint>,
    /// The last `config.toml` that parsed (the defaults when there is none); `None`
    /// while the file has never parsed.
    config: Option<ModelConfig>,
    /// Why the current `config.toml` was refused.
    config_error: Option<String>,
    /// The refusal last logged: a file refused again for the same reason, poll after
    /// poll, is logged once.
    config_logged: Option<String>,
    /// The labels that point at served versions.
    labels: BTreeMap<String, u64>,
    /// The labels refused, with why.
    refused: BTreeMap<String, String>,
}

impl ModelEntry {
    /// The model's own problems, which every version's status reports.
    fn notes(&self) -> Vec<String> {
        self.config_error
            .iter()
            .chain(self.refused.values())
            .cloned()
            .collect()
    }
}

type Models = RwLock<BTreeMap<String, ModelEntry>>;

/// The models and versions served, from a folder that is polled for changes.
///
/// # Layout
///
/// `DIR/<model>/<version>/ensemble.toml` (the manifest `predict` takes, its weight
/// files beside it) and an optional `DIR/<model>/config.toml`:
///
/// ```toml
/// # Every key is optional. Top-level keys come before the [version_policy] table.
/// labels = { stable = 3, canary = 4 }  # a label may only point at a served version
/// max_batch_size = 32                  # rows; the server's --max-batch-size otherwise
/// max_queue_delay_us = 200             # the server's --max-queue-delay-us otherwise
/// replicas = "per-device"              # "manifest" | "per-device"; --replicas otherwise
///
/// [version_policy]                     # one of these three; absent: latest = 1
/// latest = 2                           # the 2 highest versions
/// # all = true                         # every version
/// # specific = [1, 3]                  # exactly these versions
/// ```
///
/// A label that points at a version that is not served is refused (reported in the
/// status of the model's versions), the rest of the file applies. A `config.toml` that
/// does not parse is reported the same way, and the configuration before it stays in
/// force (none: nothing of the model is loaded until it parses). Batching and replicas
/// apply to the versions loaded after the change.
///
/// # Versions
///
/// A version folder's name is a positive integer written plainly (`3`, not `03` or
/// `+3`); any other name is ignored. [`Repository::poll`] loads the versions the
/// policy selects, warms each replica with one run, and only then serves them, in the
/// same step as the versions they replace stop taking requests; those finish what they
/// have queued and are unloaded. A load that fails (a manifest that does not parse, a
/// weight file that is missing or truncated, a device that cannot be made) is reported
/// as `END` with its error, whatever was served before goes on being served, and it is
/// not tried again until the folder's files change (names, sizes, modification times,
/// also of the weight files the manifest names).
///
/// **Adding a version without it being seen half-written**: write its folder under a
/// name that is not a positive integer (`.3.partial`, `tmp-3`), then rename it to `3`
/// (a rename within one file system is atomic). A version written in place may be tried
/// while incomplete; it then fails, and is tried again once its files change.
pub struct Repository {
    config: RepositoryConfig,
    metrics: Metrics,
    models: Arc<Models>,
    polling: Mutex<()>,
    closed: AtomicBool,
    unloading: Mutex<Vec<JoinHandle<()>>>,
    devices: OnceLock<Vec<(usize, String)>>,
    loads: AtomicU64,
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
            models: Arc::new(RwLock::new(BTreeMap::new())),
            polling: Mutex::new(()),
            closed: AtomicBool::new(false),
            unloading: Mutex::new(Vec::new()),
            devices: OnceLock::new(),
            loads: AtomicU64::new(0),
        })
    }

    /// Scans the folder once: reads each model's `config.toml`, loads and warms the
    /// versions its policy selects that are not served yet, serves them, and unloads
    /// the versions that left the policy or the folder. A model whose folder is gone
    /// is forgotten (unknown, as if it had never been) at the first poll after its
    /// versions are unloaded. Polls run one at a time; after
    /// [`Repository::shutdown`] a poll does nothing.
    pub fn poll(&self) {
        let _one_at_a_time = self.polling.lock().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        // A folder that cannot be listed now (a passing I/O error) changes nothing: what
        // is served goes on being served.
        let Some(found) = scan(&self.config.root) else {
            return;
        };
        let known: Vec<String> = read(&self.models).keys().cloned().collect();
        let names: BTreeSet<String> = found.keys().cloned().chain(known).collect();
        for name in &names {
            match found.get(name) {
                Some(None) => {}
                Some(Some(dir)) => self.poll_model(name, Some(dir)),
                None => self.poll_model(name, None),
            }
        }
        // A model whose folder is gone is forgotten once nothing of it is served or
        // being unloaded: its statuses and metadata answer 404 from then on.
        write(&self.models).retain(|name, entry| {
            found.contains_key(name)
                || !entry.served.is_empty()
                || entry.status.values().any(|s| s.state != VersionState::End)
        });
        self.reap();
    }

    fn poll_model(&self, name: &str, dir: Option<&ModelDir>) {
        let present: BTreeMap<u64, PathBuf> = dir.map(|d| d.versions.clone()).unwrap_or_default();
        let read_config = match dir {
            Some(d) => {
                let path = d.path.join("config.toml");
                if std::fs::symlink_metadata(&path).is_ok() {
                    ModelConfig::load(&path)
                } else {
                    Ok(ModelConfig::default())
                }
            }
            None => Ok(ModelConfig::default()),
        };
        let (config, mut failed, served_now, mut sources) = {
            let mut models = write(&self.models);
            let entry = models.entry(name.to_string()).or_default();
            match read_config {
                Ok(config) => {
                    entry.config = Some(config);
                    entry.config_error = None;
                    entry.config_logged = None;
                }
                Err(e) => {
                    let why = e.to_string();
                    if entry.config_logged.as_deref() != Some(why.as_str()) {
                        tracing::warn!(model = name, "config.toml refused: {why}");
                        entry.config_logged = Some(why);
                    }
                    entry.config_error = Some(if entry.config.is_some() {
                        format!("{e}; the configuration before it stays in force")
                    } else {
                        format!("{e}; no version is loaded until it parses")
                    });
                }
            }
            let served: BTreeSet<u64> = entry.served.keys().copied().collect();
            (
                entry.config.clone(),
                entry.failed.clone(),
                served,
                entry.sources.clone(),
            )
        };
        // A served version whose files changed since its load is loaded again; until the
        // new load succeeds, the version loaded before goes on serving.
        let mut reloaded: BTreeMap<u64, ServedVersion> = BTreeMap::new();
        let mut reload_failed: BTreeMap<u64, (Fingerprint, String)> = BTreeMap::new();
        for v in &served_now {
            let (Some(folder), Some(then)) = (present.get(v), sources.get(v)) else {
                continue;
            };
            let now = fingerprint(folder);
            if now == *then || self.closed.load(Ordering::SeqCst) {
                continue;
            }
            match self.load(name, *v, folder, config.as_ref()) {
                Ok(served) => {
                    tracing::info!(model = name, version = v, "its files changed: loaded again");
                    sources.insert(*v, now);
                    reloaded.insert(*v, served);
                }
                Err(e) => {
                    tracing::warn!(
                        model = name,
                        version = v,
                        "its files changed and loading them again failed (the version loaded before goes on serving): {e}"
                    );
                    reload_failed.insert(*v, (now, e));
                }
            }
        }
        // A failed load stands while its folder holds what it held then.
        failed.retain(|v, then| present.get(v).is_some_and(|dir| fingerprint(dir) == *then));
        let mut loaded: BTreeMap<u64, ServedVersion> = BTreeMap::new();
        let wanted = loop {
            let candidates: BTreeSet<u64> = present
                .keys()
                .copied()
                .filter(|v| !failed.contains_key(v))
                .collect();
            let wanted: BTreeSet<u64> = match &config {
                Some(c) => c.policy.select(&candidates),
                // No configuration ever parsed: keep what is served, load nothing.
                None => served_now.intersection(&candidates).copied().collect(),
            };
            let to_load: Vec<u64> = wanted
                .iter()
                .copied()
                .filter(|v| !served_now.contains(v) && !loaded.contains_key(v))
                .collect();
            if to_load.is_empty() || self.closed.load(Ordering::SeqCst) {
                break wanted;
            }
            // Every pass loads or fails at least one version: the loop ends.
            for v in to_load {
                if self.closed.load(Ordering::SeqCst) {
                    break;
                }
                let folder = &present[&v];
                let then = fingerprint(folder);
                self.set_status(name, v, VersionState::Loading, None);
                match self.load(name, v, folder, config.as_ref()) {
                    Ok(served) => {
                        tracing::info!(model = name, version = v, "loaded and warmed; serving it");
                        sources.insert(v, then);
                        loaded.insert(v, served);
                    }
                    Err(e) => {
                        tracing::warn!(model = name, version = v, "load failed: {e}");
                        self.set_status(name, v, VersionState::End, Some(e));
                        failed.insert(v, then);
                    }
                }
            }
        };
        let leaving: Vec<Arc<ServedVersion>> = {
            let mut models = write(&self.models);
            if self.closed.load(Ordering::SeqCst) {
                // A shutdown came while this poll was loading: it has taken every version
                // served, and does not wait for this one; what was loaded is dropped.
                drop(models);
                for served in loaded.into_values().chain(reloaded.into_values()) {
                    served.batcher.close();
                    served.batcher.drain();
                }
                return;
            }
            let entry = models.entry(name.to_string()).or_default();
            entry.failed = failed;
            let mut replaced: Vec<Arc<ServedVersion>> = Vec::new();
            for (v, served) in loaded.into_iter().chain(reloaded) {
                replaced.extend(entry.served.insert(v, Arc::new(served)));
                entry
                    .status
                    .insert(v, status(v, VersionState::Available, None));
            }
            for (v, (now, e)) in reload_failed {
                sources.insert(v, now);
                entry.status.insert(
                    v,
                    status(
                        v,
                        VersionState::Available,
                        Some(format!(
                            "its files changed and loading them again failed: {e}; \
                             the version loaded before goes on serving"
                        )),
                    ),
                );
            }
            sources.retain(|v, _| entry.served.contains_key(v));
            entry.sources = sources;
            let gone: Vec<u64> = entry
                .served
                .keys()
                .copied()
                .filter(|v| !wanted.contains(v))
                .collect();
            let mut leaving: Vec<Arc<ServedVersion>> =
                gone.iter().filter_map(|v| entry.served.remove(v)).collect();
            leaving.extend(replaced);
            for v in &gone {
                entry
                    .status
                    .insert(*v, status(*v, VersionState::Unloading, None));
            }
            refresh_labels(name, entry);
            let absent: Vec<u64> = entry
                .status
                .iter()
                .filter(|(v, s)| !present.contains_key(v) && s.state == VersionState::End)
                .map(|(v, _)| *v)
                .collect();
            for v in absent.iter().rev().skip(GONE_STATUSES_KEPT) {
                entry.status.remove(v);
            }
            leaving
        };
        for served in leaving {
            self.unload(served);
        }
    }

    /// Stops `served` taking requests (it has left the map already), and on a thread of
    /// its own waits for it to answer what it holds, then marks it `END`: neither a
    /// poll nor the request that drops it last waits for its queue.
    fn unload(&self, served: Arc<ServedVersion>) {
        tracing::info!(
            model = served.model.as_str(),
            version = served.version,
            "unloading: answering what it holds"
        );
        served.batcher.close();
        let kept = Arc::clone(&served);
        let models = Arc::clone(&self.models);
        let spawned = std::thread::Builder::new()
            .name(format!("serve-unload-{}", served.version))
            .spawn(move || {
                served.batcher.drain();
                finish(&models, &served.model, served.version);
            });
        match spawned {
            Ok(thread) => self
                .unloading
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(thread),
            Err(_) => {
                kept.batcher.drain();
                finish(&self.models, &kept.model, kept.version);
            }
        }
    }

    /// Joins the unloading threads that have ended.
    fn reap(&self) {
        let mut threads = self.unloading.lock().unwrap_or_else(|e| e.into_inner());
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut *threads)
            .into_iter()
            .partition(JoinHandle::is_finished);
        *threads = running;
        drop(threads);
        for thread in done {
            let _ = thread.join();
        }
    }

    /// The adapters a per-device version has a replica on (index, name), probed once.
    fn devices(&self) -> &[(usize, String)] {
        self.devices.get_or_init(|| {
            let mut pool = crate::gpu::DevicePool::new(self.config.precision);
            let usable = pool.usable();
            usable
                .into_iter()
                .map(|i| {
                    let name = pool
                        .infos
                        .get(i)
                        .map_or_else(String::new, |a| a.name.clone());
                    (i, name)
                })
                .collect()
        })
    }

    fn load(
        &self,
        model: &str,
        version: u64,
        folder: &Path,
        config: Option<&ModelConfig>,
    ) -> std::result::Result<ServedVersion, String> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let manifest = Manifest::load(folder.join("ensemble.toml")).map_err(|e| e.to_string())?;
        let mode = config
            .and_then(|c| c.replicas)
            .unwrap_or(self.config.replicas);
        let mut batch = self.config.batch.clone();
        if let Some(rows) = config.and_then(|c| c.max_batch_size) {
            batch.max_batch_size = rows;
        }
        if let Some(delay) = config.and_then(|c| c.max_queue_delay) {
            batch.max_queue_delay = delay;
        }
        // (name, what the error calls it, placement replacing the manifest's)
        let placements: Vec<(String, String, Option<Placement>)> = match mode {
            Replicas::Manifest => vec![("manifest".to_string(), String::new(), None)],
            Replicas::PerDevice => {
                let devices = self.devices();
                if devices.is_empty() {
                    vec![(
                        "cpu".to_string(),
                        "replica cpu: ".to_string(),
                        Some(Placement::Cpu),
                    )]
                } else {
                    devices
                        .iter()
                        .map(|(i, name)| {
                            (
                                format!("adapter:{i}"),
                                format!("replica adapter:{i} ({}): ", excerpt(name)),
                                Some(Placement::Adapter(*i)),
                            )
                        })
                        .collect()
                }
            }
        };
        let mut replicas = Vec::new();
        let mut names = Vec::new();
        for (name, called, placement) in placements {
            let session = (|| {
                let graph = manifest.graph(placement.as_ref())?;
                let width = graph.input_width();
                let session = Session::with_options(
                    graph,
                    self.config.session.clone().precision(self.config.precision),
                )?;
                // Warm: one run before the version is served.
                session.run(&Tensor::zeros(1, width), &RunOptions::default())?;
                Ok::<_, Error>(session)
            })()
            .map_err(|e| format!("{called}{e}"))?;
            names.push(name.clone());
            replicas.push(Replica { name, session });
        }
        let batcher = Batcher::start(
            model,
            version,
            replicas,
            batch.clone(),
            self.metrics.clone(),
        )
        .map_err(|e| e.to_string())?;
        Ok(ServedVersion {
            model: model.to_string(),
            version,
            replicas: names,
            batch,
            batcher,
        })
    }

    fn set_status(&self, model: &str, version: u64, state: VersionState, error: Option<String>) {
        write(&self.models)
            .entry(model.to_string())
            .or_default()
            .status
            .insert(version, status(version, state, error));
    }

    /// The version a request names, if it is served: the highest served for
    /// [`VersionSelector::Default`], the one a label of the model's `config.toml`
    /// points at for [`VersionSelector::Label`].
    pub fn resolve(
        &self,
        model: &str,
        version: &VersionSelector,
    ) -> Result<Arc<ServedVersion>, ServeError> {
        find(&read(&self.models), model, version).cloned()
    }

    /// Resolves, then queues the request. Both happen while no poll can swap the
    /// version out (a version stops taking requests only after it has left the served
    /// set), so a request for the default version or a label is never refused because
    /// of a swap: it goes to the version served before the swap, which answers it,
    /// or to the one served after.
    pub fn submit(
        &self,
        model: &str,
        version: &VersionSelector,
        request: InferRequest,
    ) -> Result<(Arc<ServedVersion>, Reply), ServeError> {
        let models = read(&self.models);
        let served = Arc::clone(find(&models, model, version)?);
        let reply = served.batcher.submit(request)?;
        drop(models);
        Ok((served, reply))
    }

    /// Every version's status, or one's. The model's own problems (a `config.toml`
    /// that does not parse, refused labels) are added to every version's `error`; a
    /// model with no version to report answers 404 with them.
    pub fn status(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<Vec<VersionStatus>, ServeError> {
        let (statuses, notes) = self.own_status(model, version)?;
        Ok(statuses
            .into_iter()
            .map(|mut s| {
                if !notes.is_empty() {
                    let all: Vec<String> =
                        s.error.take().into_iter().chain(notes.clone()).collect();
                    s.error = Some(all.join("; "));
                }
                s
            })
            .collect())
    }

    /// As [`Repository::status`], with each version's own error only, and the
    /// model's own problems apart (TensorFlow Serving's status gives a version an
    /// error code, which a served version's must not take from the model's notes).
    pub fn own_status(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<(Vec<VersionStatus>, Vec<String>), ServeError> {
        let models = read(&self.models);
        let entry = known(&models, model)?;
        let notes = entry.notes();
        let also = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        };
        match version {
            None if entry.status.is_empty() => Err(ServeError::NotFound(format!(
                "model '{}' has no version{also}",
                excerpt(model)
            ))),
            None => Ok((entry.status.values().cloned().collect(), notes)),
            Some(v) => match entry.status.get(&v) {
                Some(s) => Ok((vec![s.clone()], notes)),
                None => Err(ServeError::NotFound(format!(
                    "model '{}' has no version {v}{also}",
                    excerpt(model)
                ))),
            },
        }
    }

    /// The model's labels that point at served versions (label → version).
    pub fn labels(&self, model: &str) -> Result<BTreeMap<String, u64>, ServeError> {
        Ok(known(&read(&self.models), model)?.labels.clone())
    }

    /// The model's own problems: why its `config.toml` was refused, and each refused
    /// label with why. Empty when there is none.
    pub fn model_errors(&self, model: &str) -> Result<Vec<String>, ServeError> {
        Ok(known(&read(&self.models), model)?.notes())
    }

    /// The models known (served or tried).
    pub fn models(&self) -> Vec<String> {
        read(&self.models).keys().cloned().collect()
    }

    /// The models that serve no version because every version of theirs failed to
    /// load, or because their `config.toml` never parsed (so none was tried); a model
    /// folder with no version, one with a version loading or unloading, and a model
    /// whose versions have all left do not count. Strict readiness waits for none
    /// ([`ServeConfig::strict_readiness`](super::ServeConfig::strict_readiness)).
    pub fn broken(&self) -> Vec<String> {
        read(&self.models)
            .iter()
            .filter(|(_, entry)| {
                let busy = entry
                    .status
                    .values()
                    .any(|s| matches!(s.state, VersionState::Loading | VersionState::Unloading));
                let failed = entry
                    .status
                    .values()
                    .any(|s| s.state == VersionState::End && s.error.is_some());
                let never_parsed = entry.config.is_none() && entry.config_error.is_some();
                entry.served.is_empty() && !busy && (failed || never_parsed)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether `model` is one of [`Repository::models`].
    pub fn knows(&self, model: &str) -> bool {
        read(&self.models).contains_key(model)
    }

    /// How many version loads were tried so far (a failed version is not tried again
    /// until its files change).
    pub fn load_attempts(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }

    /// Stops every version: no new request is taken, every queued one is answered, every
    /// version unloaded (polls after it do nothing). A poll in progress is not waited
    /// for: a version it is loading (a slow device can take long) is dropped, on the
    /// poll's thread, once its load ends.
    pub fn shutdown(&self) {
        // Set before the served versions are taken (under the models' lock): a poll in
        // progress sees it under that lock before it serves what it loaded.
        self.closed.store(true, Ordering::SeqCst);
        let all: Vec<Arc<ServedVersion>> = {
            let mut models = write(&self.models);
            let mut all = Vec::new();
            for entry in models.values_mut() {
                for (v, served) in std::mem::take(&mut entry.served) {
                    entry
                        .status
                        .insert(v, status(v, VersionState::Unloading, None));
                    all.push(served);
                }
                entry.labels.clear();
            }
            all
        };
        for served in &all {
            served.batcher.close();
        }
        for served in all {
            served.batcher.drain();
            finish(&self.models, &served.model, served.version);
        }
        let threads =
            std::mem::take(&mut *self.unloading.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Repository {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn read(models: &Models) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelEntry>> {
    models.read().unwrap_or_else(|e| e.into_inner())
}

fn write(models: &Models) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelEntry>> {
    models.write().unwrap_or_else(|e| e.into_inner())
}

fn known<'a>(
    models: &'a BTreeMap<String, ModelEntry>,
    model: &str,
) -> Result<&'a ModelEntry, ServeError> {
    models.get(model).ok_or_else(|| {
        let names: Vec<String> = models.keys().take(20).map(|m| excerpt(m)).collect();
        ServeError::NotFound(format!(
            "unknown model '{}'; models: {}",
            excerpt(model),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
    })
}

/// The served version `selector` names.
fn find<'a>(
    models: &'a BTreeMap<String, ModelEntry>,
    model: &str,
    selector: &VersionSelector,
) -> Result<&'a Arc<ServedVersion>, ServeError> {
    let entry = known(models, model)?;
    let quoted = excerpt(model);
    let served_list = || {
        let v: Vec<String> = entry.served.keys().map(u64::to_string).collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    // Why a version is not served, when it is known: its failed load, the model's
    // own problems (so that a KServe client sees them too, not only TF Serving's
    // status).
    let why = |v: Option<u64>| -> String {
        let mut reasons: Vec<String> = entry
            .status
            .values()
            .filter(|s| v.is_none_or(|v| s.version == v))
            .filter_map(|s| {
                s.error
                    .as_ref()
                    .map(|e| format!("version {}: {}", s.version, excerpt(e)))
            })
            .collect();
        reasons.extend(entry.notes().iter().map(|n| excerpt(n)));
        reasons.truncate(4);
        if reasons.is_empty() {
            String::new()
        } else {
            format!("; {}", reasons.join("; "))
        }
    };
    match selector {
        VersionSelector::Default => entry.served.values().next_back().ok_or_else(|| {
            ServeError::NotFound(format!(
                "model '{quoted}' has no version served{}",
                why(None)
            ))
        }),
        VersionSelector::Number(v) => entry.served.get(v).ok_or_else(|| {
            ServeError::NotFound(format!(
                "model '{quoted}' has no version {v} served (served: {}){}",
                served_list(),
                why(Some(*v))
            ))
        }),
        VersionSelector::Label(label) => {
            if let Some(v) = entry.labels.get(label) {
                if let Some(served) = entry.served.get(v) {
                    return Ok(served);
                }
            }
            if let Some(why) = entry.refused.get(label) {
                return Err(ServeError::NotFound(format!("model '{quoted}': {why}")));
            }
            let labels: Vec<String> = entry
                .labels
                .keys()
                .chain(entry.refused.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            Err(ServeError::NotFound(format!(
                "model '{quoted}' has no label '{}' (its labels: {})",
                excerpt(label),
                if labels.is_empty() {
                    "none".to_string()
                } else {
                    labels.join(", ")
                }
            )))
        }
    }
}

/// Points the labels of the model's configuration at its served versions; a label
/// whose version is not served is refused, with why.
fn refresh_labels(model: &str, entry: &mut ModelEntry) {
    entry.labels.clear();
    entry.refused.clear();
    let Some(config) = &entry.config else {
        return;
    };
    for (label, v) in &config.labels {
        if let Some(why) = super::config::unreachable_label(label) {
            entry.refused.insert(
                label.clone(),
                format!(
                    "label '{}' of model '{}' is refused: no path reaches it ({why})",
                    excerpt(label),
                    excerpt(model)
                ),
            );
        } else if entry.served.contains_key(v) {
            entry.labels.insert(label.clone(), *v);
        } else {
            let state = match entry.status.get(v) {
                Some(s) => format!("its state is {}", s.state.name()),
                None => "there is no such version folder".to_string(),
            };
            entry.refused.insert(
                label.clone(),
                format!(
                    "label '{label}' of model '{}' is refused: it points at version {v}, which is not served ({state})",
                    excerpt(model)
                ),
            );
        }
    }
}

/// Marks an unloaded version `END`, unless it has been loaded again meanwhile.
fn finish(models: &Models, model: &str, version: u64) {
    let mut models = write(models);
    if let Some(entry) = models.get_mut(model) {
        let unloading = entry
            .status
            .get(&version)
            .is_some_and(|s| s.state == VersionState::Unloading);
        if unloading && !entry.served.contains_key(&version) {
            entry
                .status
                .insert(version, status(version, VersionState::End, None));
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

/// A model's folder and its version folders.
struct ModelDir {
    path: PathBuf,
    versions: BTreeMap<u64, PathBuf>,
}

/// A version folder's name as a version: a positive integer written plainly (no sign,
/// no leading zero), so that `tmp-3`, `.3.partial` or `03` are not versions.
fn version_name(name: &str) -> Option<u64> {
    if name.is_empty() || name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse::<u64>().ok()
}

/// Every model folder of `root` (not hidden) with its version folders; `None` for a
/// model folder that cannot be listed, and in all for a root that cannot be.
fn scan(root: &Path) -> Option<BTreeMap<String, Option<ModelDir>>> {
    let mut found = BTreeMap::new();
    let models = std::fs::read_dir(root).ok()?;
    for model in models.flatten() {
        let Ok(name) = model.file_name().into_string() else {
            continue;
        };
        let path = model.path();
        if !path.is_dir() || name.starts_with('.') {
            continue;
        }
        let Ok(dirs) = std::fs::read_dir(&path) else {
            found.insert(name, None);
            continue;
        };
        let mut versions = BTreeMap::new();
        for dir in dirs.flatten() {
            let version = dir.file_name().to_str().and_then(version_name);
            if let Some(v) = version {
                if dir.path().is_dir() {
                    versions.insert(v, dir.path());
                }
            }
        }
        found.insert(name, Some(ModelDir { path, versions }));
    }
    Some(found)
}

/// What `folder` holds now (see [`Fingerprint`]).
fn fingerprint(folder: &Path) -> Fingerprint {
    let stat = |p: &Path| match std::fs::metadata(p) {
        Ok(m) => (p.to_path_buf(), m.len(), m.modified().ok()),
        Err(_) => (p.to_path_buf(), u64::MAX, None),
    };
    let mut entries = vec![stat(folder)];
    if let Ok(dir) = std::fs::read_dir(folder) {
        let mut paths: Vec<PathBuf> = dir
            .flatten()
            .take(FINGERPRINT_ENTRIES)
            .map(|e| e.path())
            .collect();
        paths.sort();
        entries.extend(paths.iter().map(|p| stat(p)));
    }
    if let Ok(manifest) = Manifest::load(folder.join("ensemble.toml")) {
        entries.extend(manifest.members.iter().map(|m| stat(&m.file)));
    }
    Fingerprint(entries)
}
