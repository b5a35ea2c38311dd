//! An inference server (feature `serve`): a model repository of ensembles with versions
//! swapped while serving, replicas on every device, dynamic batching, KServe v2 and
//! TensorFlow Serving REST on one HTTP port, Prometheus metrics.
//!
//! ```no_run
//! use wgpu_ensemble::serve::{ServeConfig, Server};
//! let server = Server::start(ServeConfig::new("models"))?;
//! println!("listening on http://{}", server.addr());
//! server.shutdown(); // answers every request already accepted, then unloads
//! # Ok::<(), wgpu_ensemble::Error>(())
//! ```
//!
//! The engine's device workers stay threads; the async side (tokio, axum) hands each
//! request to its version's queue without blocking and awaits the answer.

mod batcher;
mod config;
mod http;
mod metrics;
mod repository;
mod types;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use batcher::{BatchConfig, Batcher, Refused, Replica, Reply};
pub use metrics::Metrics;
pub use repository::{
    Replicas, Repository, RepositoryConfig, ServedVersion, VersionState, VersionStatus,
};
pub use types::{
    InferAnswer, InferRequest, MemberAnswer, MemberState, ServeError, VersionSelector,
};

use crate::error::{Error, Result};
use crate::options::SessionOptions;
use crate::precision::Precision;

/// How to serve: where, and the repository's own configuration
/// ([`RepositoryConfig`]: the folder, batching, replicas, precision, session options).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeConfig {
    /// The model repository (`<model>/<version>/ensemble.toml`) and how its versions
    /// are loaded and served.
    pub repository: RepositoryConfig,
    /// Where to listen (`127.0.0.1:8000`; port 0 picks a free one).
    pub addr: SocketAddr,
    /// How often the repository is polled for new and removed versions.
    pub poll_interval: Duration,
    /// The largest request body taken; a larger one is refused with 413.
    pub max_body_bytes: usize,
    /// How long a shutdown waits for the connections it has and for a version being
    /// loaded: requests accepted are answered well within it; a client still sending a
    /// request, or not reading its answer, when it is up is disconnected, and a version
    /// still loading is dropped once its load ends.
    pub shutdown_timeout: Duration,
    /// How long a connection may take to send a request's headers, counted from when
    /// the server starts waiting for them (so an idle keep-alive connection is closed
    /// after it too); `None` waits for ever. A client that sends its headers too
    /// slowly (or holds a connection open without a request) is disconnected, so that
    /// such connections cannot pile up. Default 30 s.
    pub header_read_timeout: Option<Duration>,
    /// Whether `GET /v2/health/ready` also waits for every model (Triton's strict
    /// readiness, and the KServe v2 specification's "ready if all the models are
    /// ready"): once the versions found at start are loaded, the server is not ready
    /// while a model of the repository serves no version because every version of it
    /// failed to load, or its `config.toml` never parsed. A model folder with no
    /// version in it, one whose versions are being loaded or unloaded, and a removed
    /// model do not count. Without it, the server is ready once the versions found at
    /// start are loaded. Default true.
    pub strict_readiness: bool,
}

impl ServeConfig {
    /// Serves `repository` on 127.0.0.1:8000, polled every second, batches of up to 64
    /// rows waiting up to 500 µs, one replica as the manifest places it, f32, bodies up
    /// to 8 MiB.
    pub fn new(repository: impl Into<PathBuf>) -> Self {
        Self {
            repository: RepositoryConfig::new(repository),
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            poll_interval: Duration::from_secs(1),
            max_body_bytes: 8 << 20,
            shutdown_timeout: Duration::from_secs(20),
            header_read_timeout: Some(Duration::from_secs(30)),
            strict_readiness: true,
        }
    }

    /// Sets [`ServeConfig::strict_readiness`].
    pub fn strict_readiness(mut self, strict: bool) -> Self {
        self.strict_readiness = strict;
        self
    }

    /// Sets [`ServeConfig::header_read_timeout`].
    pub fn header_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Sets [`ServeConfig::shutdown_timeout`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets [`ServeConfig::addr`].
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Sets [`ServeConfig::poll_interval`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets [`ServeConfig::max_body_bytes`].
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Sets the repository's [`RepositoryConfig::session`]: the options every
    /// replica's session is made with, a [`FaultPlan`](crate::FaultPlan) among them.
    pub fn session(mut self, options: SessionOptions) -> Self {
        self.repository = self.repository.session(options);
        self
    }

    /// Sets the repository's [`RepositoryConfig::batch`].
    pub fn batch(mut self, batch: BatchConfig) -> Self {
        self.repository = self.repository.batch(batch);
        self
    }

    /// Sets the repository's [`RepositoryConfig::replicas`].
    pub fn replicas(mut self, replicas: Replicas) -> Self {
        self.repository = self.repository.replicas(replicas);
        self
    }

    /// Sets the repository's [`RepositoryConfig::precision`].
    pub fn precision(mut self, precision: Precision) -> Self {
        self.repository = self.repository.precision(precision);
        self
    }
}

/// A running server. [`Server::shutdown`] (or dropping it) stops it gracefully.
pub struct Server {
    addr: SocketAddr,
    repository: Arc<Repository>,
    state: Arc<http::AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    shutdown_timeout: Duration,
    polling: Arc<AtomicBool>,
    runtime: Option<tokio::runtime::Runtime>,
    serving: Option<tokio::task::JoinHandle<()>>,
    poller: Option<std::thread::JoinHandle<()>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds, loads the repository (every model's versions, warmed) and serves on
    /// threads of its own. `GET /v2/health/live` answers from the start, `ready` once
    /// the versions found at start are loaded (and, with
    /// [`ServeConfig::strict_readiness`], while no model is broken); returns once they
    /// are loaded.
    pub fn start(config: ServeConfig) -> Result<Self> {
        let server = Self::start_loading(config)?;
        while !server.wait_ready(Duration::from_secs(1)) {}
        Ok(server)
    }

    /// As [`Server::start`], returning once it listens, while the versions found at
    /// start are being loaded ([`Server::wait_ready`] waits for them): a shutdown then
    /// waits for their load at most [`ServeConfig::shutdown_timeout`].
    pub fn start_loading(config: ServeConfig) -> Result<Self> {
        let metrics = Metrics::new();
        let repository = Arc::new(Repository::open(
            config.repository.clone(),
            metrics.clone(),
        )?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("serve-http")
            .build()
            .map_err(|e| Error::invalid("server", &e.to_string(), "a tokio runtime"))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(config.addr))
            .map_err(|e| Error::Listen {
                addr: config.addr.to_string(),
                message: e.to_string(),
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::invalid("address", &e.to_string(), "a bound address"))?;
        // Listening before the first load: `live` answers at once, `ready` once the
        // versions found at start are loaded and warmed.
        let state = Arc::new(http::AppState {
            repository: Arc::clone(&repository),
            metrics: metrics.clone(),
            ready: AtomicBool::new(false),
            strict_readiness: config.strict_readiness,
            bodies: tokio::sync::Semaphore::new(http::body_budget_kib(config.max_body_bytes)),
        });
        let app = http::router(Arc::clone(&state), config.max_body_bytes);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = runtime.spawn(http::serve(
            listener,
            app,
            stopped,
            config.header_read_timeout,
        ));
        // Histogram samples wait in the recorder until an upkeep folds them in; a server
        // nobody scrapes must not keep every one of them.
        runtime.spawn({
            let metrics = metrics.clone();
            async move {
                let mut every = tokio::time::interval(self::metrics::UPKEEP_INTERVAL);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    metrics.upkeep();
                }
            }
        });
        let polling = Arc::new(AtomicBool::new(true));
        let poller = {
            let repository = Arc::clone(&repository);
            let polling = Arc::clone(&polling);
            let state = Arc::clone(&state);
            let interval = config.poll_interval;
            std::thread::Builder::new()
                .name("serve-poll".into())
                .spawn(move || {
                    // The first load, on this thread, so that a shutdown need not wait
                    // for it.
                    repository.poll();
                    state.ready.store(true, Ordering::SeqCst);
                    while polling.load(Ordering::SeqCst) {
                        let until = std::time::Instant::now() + interval;
                        while polling.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(20).min(interval));
                        }
                        if polling.load(Ordering::SeqCst) {
                            repository.poll();
                        }
                    }
                })
                .map_err(|e| Error::invalid("server", &e.to_string(), "a polling thread"))?
        };
        Ok(Self {
            addr,
            repository,
            state,
            stop: Some(stop),
            shutdown_timeout: config.shutdown_timeout,
            polling,
            runtime: Some(runtime),
            serving: Some(serving),
            poller: Some(poller),
            metrics,
        })
    }

    /// Waits up to `timeout` for the versions found at start to be loaded (or to fail):
    /// whether they are (`GET /v2/health/ready` then answers 200 if every model serves
    /// a version, 400 naming those that serve none). Also true
    /// once the loading thread has ended for any other reason, so that no wait is
    /// endless.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let until = std::time::Instant::now() + timeout;
        loop {
            let ended = self.poller.as_ref().is_none_or(|p| p.is_finished());
            if self.state.is_ready() || ended {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The address it listens on (the port picked when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's metrics, as `GET /metrics` renders them.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops accepting connections, answers every request already accepted, unloads
    /// every version and returns. It waits at most [`ServeConfig::shutdown_timeout`]
    /// for its connections and a version being loaded together; such a version is
    /// dropped on its own thread once its load ends.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let deadline = std::time::Instant::now() + self.shutdown_timeout;
        self.polling.store(false, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let (Some(runtime), Some(serving)) = (self.runtime.as_ref(), self.serving.take()) {
            // Every request accepted gets its answer; a connection that is still
            // sending a request (or not reading its answer) when the time is up is
            // closed.
            let abort = serving.abort_handle();
            let limit = self.shutdown_timeout;
            let ended = runtime.block_on(async move { tokio::time::timeout(limit, serving).await });
            if ended.is_err() {
                abort.abort();
            }
        }
        self.repository.shutdown();
        if let Some(poller) = self.poller.take() {
            // A poll loading a version (a slow device, a long warm-up) is waited for
            // until the shutdown timeout, no longer: its thread then finishes the load
            // on its own and drops what it loaded (the repository is closed).
            let until = deadline.max(std::time::Instant::now() + Duration::from_millis(100));
            while !poller.is_finished() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if poller.is_finished() {
                let _ = poller.join();
            } else {
                tracing::warn!(
                    "a version was still loading when the shutdown timeout passed; \
                     it is dropped once its load ends"
                );
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use super::{ServeConfig, Server};
    use std::time::{Duration, Instant};

    /// The histograms' samples are folded into their buckets while nobody scrapes
    /// `/metrics`: the recorder keeps every sample until an upkeep.
    #[test]
    fn histogram_samples_are_folded_in_without_a_scrape() {
        let dir = tempfile::tempdir().unwrap();
        let server =
            Server::start(ServeConfig::new(dir.path()).addr(([127, 0, 0, 1], 0).into())).unwrap();
        server
            .metrics()
            .request("m", "1", "success", Duration::from_millis(1));
        let before = server.metrics().upkeeps();
        let until = Instant::now() + Duration::from_secs(10);
        while server.metrics().upkeeps() < before + 2 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            server.metrics().upkeeps() >= before + 2,
            "no upkeep ran within 10 s without a scrape"
        );
        server.shutdown();
    }
}
