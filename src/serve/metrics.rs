//! The server's metrics, in Prometheus' text format at `GET /metrics`: one recorder per
//! server (no global state, so that several servers can share a process), names in the
//! style of Triton's `nv_inference_*` with the prefix `wgpu_ensemble_`.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Requests by model, version and outcome (`success`, or the failure's kind).
pub const REQUESTS: &str = "wgpu_ensemble_inference_requests_total";
/// Request latency, from receipt to the answer, seconds.
pub const REQUEST_SECONDS: &str = "wgpu_ensemble_inference_request_duration_seconds";
/// Time a request waited in its version's queue before its batch ran, seconds.
pub const QUEUE_SECONDS: &str = "wgpu_ensemble_inference_queue_duration_seconds";
/// Requests merged into each batch run.
pub const BATCH_REQUESTS: &str = "wgpu_ensemble_inference_batch_requests";
/// Rows in each batch run.
pub const BATCH_ROWS: &str = "wgpu_ensemble_inference_batch_rows";
/// Rows run (Triton's `nv_inference_count`).
pub const INFERENCE_ROWS: &str = "wgpu_ensemble_inference_count";
/// Batch runs (Triton's `nv_inference_exec_count`): rows / runs is the average batch.
pub const INFERENCE_RUNS: &str = "wgpu_ensemble_inference_exec_count";
/// Each batch run's wall time, from the run's start to its output, seconds.
pub const COMPUTE_SECONDS: &str = "wgpu_ensemble_inference_compute_duration_seconds";
/// Requests dropped before they ran, by reason (`cancelled`: the client had gone;
/// `expired`: the deadline had passed, answered 504).
pub const DROPPED: &str = "wgpu_ensemble_inference_dropped_total";
/// Requests answered without every member (a quorum let the others be late or fail).
pub const DEGRADED: &str = "wgpu_ensemble_inference_degraded_total";
/// Requests waiting in a version's queue.
pub const QUEUE_DEPTH: &str = "wgpu_ensemble_inference_queue_depth";
/// Batches running on each replica.
pub const REPLICA_IN_FLIGHT: &str = "wgpu_ensemble_replica_in_flight";
/// Requests running on each replica (in its batch).
pub const REPLICA_IN_FLIGHT_REQUESTS: &str = "wgpu_ensemble_replica_in_flight_requests";
/// Batches run by each replica.
pub const REPLICA_BATCHES: &str = "wgpu_ensemble_replica_batches_total";
/// Each member's compute time per batch (its device's wall time), seconds.
pub const MEMBER_SECONDS: &str = "wgpu_ensemble_member_compute_duration_seconds";
/// Batches a member was late for.
pub const MEMBER_LATE: &str = "wgpu_ensemble_member_late_total";
/// Batches a member failed.
pub const MEMBER_FAILED: &str = "wgpu_ensemble_member_failed_total";

/// How often a server folds its histograms' samples into their buckets (as
/// `PrometheusBuilder`'s own upkeep task does; a scrape does it too).
#[cfg(not(test))]
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
#[cfg(test)]
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_millis(50);

/// Buckets of the duration histograms: 50 µs to about 13 s.
const SECONDS_BUCKETS: [f64; 19] = [
    0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
    2.0, 5.0, 10.0, 20.0, 60.0,
];
/// Buckets of the batch-size histograms.
const SIZE_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// One server's metrics. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// Upkeeps run (read by the tests).
    upkeeps: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

static META: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

impl Metrics {
    /// A new, empty set of metrics with its descriptions.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Prefix(BATCH_REQUESTS.into()), &SIZE_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Prefix(BATCH_ROWS.into()), &SIZE_BUCKETS)
            });
        // The buckets are constants, non-empty: the builder cannot refuse them; were it
        // to, the histograms are summaries instead.
        let recorder = builder.unwrap_or_default().build_recorder();
        let describe: [(&'static str, Option<Unit>, &'static str, u8); 17] = [
            (
                REQUESTS,
                None,
                "Inference requests by model, version and outcome",
                0,
            ),
            (
                REQUEST_SECONDS,
                Some(Unit::Seconds),
                "Request latency, receipt to answer",
                2,
            ),
            (
                QUEUE_SECONDS,
                Some(Unit::Seconds),
                "Time a request waited before its batch ran",
                2,
            ),
            (
                BATCH_REQUESTS,
                None,
                "Requests merged into each batch run",
                2,
            ),
            (BATCH_ROWS, None, "Rows in each batch run", 2),
            (INFERENCE_ROWS, None, "Rows run", 0),
            (INFERENCE_RUNS, None, "Batch runs", 0),
            (
                COMPUTE_SECONDS,
                Some(Unit::Seconds),
                "A batch run's wall time",
                2,
            ),
            (
                DROPPED,
                None,
                "Requests dropped before they ran, by reason",
                0,
            ),
            (DEGRADED, None, "Requests answered without every member", 0),
            (
                QUEUE_DEPTH,
                None,
                "Requests waiting in a version's queue",
                1,
            ),
            (REPLICA_IN_FLIGHT, None, "Batches running on a replica", 1),
            (
                REPLICA_IN_FLIGHT_REQUESTS,
                None,
                "Requests running on a replica",
                1,
            ),
            (REPLICA_BATCHES, None, "Batches a replica ran", 0),
            (
                MEMBER_SECONDS,
                Some(Unit::Seconds),
                "A member's compute time per batch",
                2,
            ),
            (MEMBER_LATE, None, "Batches a member was late for", 0),
            (MEMBER_FAILED, None, "Batches a member failed", 0),
        ];
        for (name, unit, help, kind) in describe {
            match kind {
                0 => recorder.describe_counter(name.into(), unit, help.into()),
                1 => recorder.describe_gauge(name.into(), unit, help.into()),
                _ => recorder.describe_histogram(name.into(), unit, help.into()),
            }
        }
        let handle = recorder.handle();
        Self {
            recorder: Arc::new(recorder),
            handle,
            upkeeps: Arc::default(),
        }
    }

    /// Counts a request's outcome and, for an answered one, records its latency.
    pub fn request(&self, model: &str, version: &str, outcome: &str, latency: Duration) {
        let labels = [("model", model), ("version", version)];
        self.recorder
            .register_counter(
                &key(REQUESTS, &[labels[0], labels[1], ("outcome", outcome)]),
                &META,
            )
            .increment(1);
        self.recorder
            .register_histogram(&key(REQUEST_SECONDS, &labels), &META)
            .record(latency.as_secs_f64());
    }

    /// Records how long a request waited in the queue.
    pub fn queue_time(&self, model: &str, version: u64, waited: Duration) {
        let version = version.to_string();
        self.recorder
            .register_histogram(
                &key(QUEUE_SECONDS, &[("model", model), ("version", &version)]),
                &META,
            )
            .record(waited.as_secs_f64());
    }

    /// Records one batch run: how many requests and rows it merged.
    pub fn batch(&self, model: &str, version: u64, requests: usize, rows: usize) {
        let version = version.to_string();
        let labels = [("model", model), ("version", version.as_str())];
        self.recorder
            .register_histogram(&key(BATCH_REQUESTS, &labels), &META)
            .record(requests as f64);
        self.recorder
            .register_histogram(&key(BATCH_ROWS, &labels), &META)
            .record(rows as f64);
    }

    /// Counts a batch run that succeeded, of `rows` rows (Triton counts inferences
    /// performed: a run that failed or missed its deadline is not one).
    pub fn inferred(&self, model: &str, version: u64, rows: usize) {
        let version = version.to_string();
        let labels = [("model", model), ("version", version.as_str())];
        self.recorder
            .register_counter(&key(INFERENCE_ROWS, &labels), &META)
            .increment(rows as u64);
        self.recorder
            .register_counter(&key(INFERENCE_RUNS, &labels), &META)
            .increment(1);
    }

    /// Records a batch run's wall time.
    pub fn compute_time(&self, model: &str, version: u64, took: Duration) {
        let version = version.to_string();
        self.recorder
            .register_histogram(
                &key(COMPUTE_SECONDS, &[("model", model), ("version", &version)]),
                &META,
            )
            .record(took.as_secs_f64());
    }

    /// Counts a request dropped before it ran.
    pub fn dropped(&self, model: &str, version: u64, why: Dropped) {
        let version = version.to_string();
        let reason = match why {
            Dropped::Cancelled => "cancelled",
            Dropped::Expired => "expired",
        };
        self.recorder
            .register_counter(
                &key(
                    DROPPED,
                    &[("model", model), ("version", &version), ("reason", reason)],
                ),
                &META,
            )
            .increment(1);
    }

    /// Counts `requests` answered without every member.
    pub fn degraded(&self, model: &str, version: u64, requests: usize) {
        let version = version.to_string();
        self.recorder
            .register_counter(
                &key(DEGRADED, &[("model", model), ("version", &version)]),
                &META,
            )
            .increment(requests as u64);
    }

    /// Sets a version's queue depth.
    pub fn queue_depth(&self, model: &str, version: u64, depth: usize) {
        let version = version.to_string();
        self.recorder
            .register_gauge(
                &key(QUEUE_DEPTH, &[("model", model), ("version", &version)]),
                &META,
            )
            .set(depth as f64);
    }

    /// Sets the batches in flight on a replica; counts a batch started when `started`.
    pub fn replica(
        &self,
        model: &str,
        version: u64,
        replica: &str,
        in_flight: usize,
        started: bool,
    ) {
        let version = version.to_string();
        let labels = [
            ("model", model),
            ("version", version.as_str()),
            ("replica", replica),
        ];
        self.recorder
            .register_gauge(&key(REPLICA_IN_FLIGHT, &labels), &META)
            .set(in_flight as f64);
        if started {
            self.recorder
                .register_counter(&key(REPLICA_BATCHES, &labels), &META)
                .increment(1);
        }
    }

    /// Sets the requests running on a replica.
    pub fn replica_requests(&self, model: &str, version: u64, replica: &str, requests: usize) {
        let version = version.to_string();
        self.recorder
            .register_gauge(
                &key(
                    REPLICA_IN_FLIGHT_REQUESTS,
                    &[
                        ("model", model),
                        ("version", version.as_str()),
                        ("replica", replica),
                    ],
                ),
                &META,
            )
            .set(requests as f64);
    }

    /// Records a member's part in a batch: its compute time when it finished, a late or
    /// failed count otherwise.
    pub fn member(&self, model: &str, version: u64, member: &str, state: MemberOutcome) {
        let version = version.to_string();
        let labels = [
            ("model", model),
            ("version", version.as_str()),
            ("member", member),
        ];
        match state {
            MemberOutcome::Finished(compute) => self
                .recorder
                .register_histogram(&key(MEMBER_SECONDS, &labels), &META)
                .record(compute.as_secs_f64()),
            MemberOutcome::Late => self
                .recorder
                .register_counter(&key(MEMBER_LATE, &labels), &META)
                .increment(1),
            MemberOutcome::Failed => self
                .recorder
                .register_counter(&key(MEMBER_FAILED, &labels), &META)
                .increment(1),
        }
    }

    /// Everything, in Prometheus' text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        self.upkeep();
        self.handle.render()
    }

    /// Folds the histogram samples recorded since the last upkeep into their buckets
    /// (the recorder keeps each sample until then). A server runs it every
    /// [`UPKEEP_INTERVAL`], whether or not `/metrics` is scraped.
    pub(crate) fn upkeep(&self) {
        self.handle.run_upkeep();
        self.upkeeps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many upkeeps ran.
    #[cfg(test)]
    pub(crate) fn upkeeps(&self) -> u64 {
        self.upkeeps.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A member's part in one batch, for [`Metrics::member`].
#[derive(Clone, Copy, Debug)]
pub enum MemberOutcome {
    /// It finished; its device's wall time.
    Finished(Duration),
    /// It was late.
    Late,
    /// It failed.
    Failed,
}

/// Why a request was dropped before it ran, for [`Metrics::dropped`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Its client had gone.
    Cancelled,
    /// Its deadline had passed (it was answered 504).
    Expired,
}
