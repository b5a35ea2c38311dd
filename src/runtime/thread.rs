//! Worker threads that never hold up their owner's shutdown: each says whether it is
//! running a job, and shutting down joins the idle ones (they end as soon as their
//! queue closes) and detaches those still running a job nobody waits for any more (a
//! member stuck in its device, or sleeping by fault injection), so that dropping a
//! session or a pipeline — and the process after it — is bounded by the idle workers,
//! never by the slowest job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Set by a worker while it runs a job.
#[derive(Clone, Default)]
pub(crate) struct Busy(Arc<AtomicBool>);

impl Busy {
    /// Runs `job` with the flag set.
    pub(crate) fn during<T>(&self, job: impl FnOnce() -> T) -> T {
        self.0.store(true, Ordering::SeqCst);
        let out = job();
        self.0.store(false, Ordering::SeqCst);
        out
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A worker's thread and its [`Busy`] flag.
pub(crate) struct WorkerThread {
    handle: Option<JoinHandle<()>>,
    busy: Busy,
}

impl WorkerThread {
    /// Starts `body` on a thread named `name`; the body gets the flag to set around
    /// each job.
    pub(crate) fn spawn(
        name: String,
        body: impl FnOnce(Busy) + Send + 'static,
    ) -> std::io::Result<Self> {
        let busy = Busy::default();
        let flag = busy.clone();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || body(flag))?;
        Ok(Self {
            handle: Some(handle),
            busy,
        })
    }

    /// Waits for the thread to end, unless (or until) it is running a job: then it is
    /// detached and left to finish on its own. Call after closing its queue and marking
    /// every queued job abandoned, so that an idle worker ends promptly. `meanwhile`
    /// runs between polls (for instance to drain a queue the worker may block on).
    /// Whether the thread was joined.
    pub(crate) fn shut_down(&mut self, mut meanwhile: impl FnMut()) -> bool {
        let Some(handle) = self.handle.take() else {
            return true;
        };
        let mut pause = Duration::from_micros(50);
        loop {
            if handle.is_finished() {
                let _ = handle.join();
                return true;
            }
            if self.busy.is_set() {
                // Dropping the handle detaches the thread.
                return false;
            }
            meanwhile();
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

/// The next message of `rx`, waiting until `deadline` (none: for as long as it takes).
pub(crate) fn recv_by<T>(
    rx: &crossbeam_channel::Receiver<T>,
    deadline: Option<std::time::Instant>,
) -> Result<T, crossbeam_channel::RecvTimeoutError> {
    match deadline {
        Some(d) => rx.recv_deadline(d),
        None => rx
            .recv()
            .map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An idle worker is joined once its queue closes; one stuck in a job is detached
    /// at once, and the shutdown does not wait for it.
    #[test]
    fn shutdown_joins_idle_workers_and_detaches_busy_ones() {
        let (tx, rx) = crossbeam_channel::unbounded::<Duration>();
        let mut idle = WorkerThread::spawn("idle".into(), move |busy| {
            while let Ok(d) = rx.recv() {
                busy.during(|| std::thread::sleep(d));
            }
        })
        .unwrap();
        tx.send(Duration::ZERO).unwrap();
        drop(tx);
        assert!(idle.shut_down(|| {}), "an idle worker was not joined");

        let (tx, rx) = crossbeam_channel::unbounded::<Duration>();
        let (started_tx, started) = crossbeam_channel::bounded(1);
        let mut stuck = WorkerThread::spawn("stuck".into(), move |busy| {
            while let Ok(d) = rx.recv() {
                busy.during(|| {
                    let _ = started_tx.send(());
                    std::thread::sleep(d)
                });
            }
        })
        .unwrap();
        tx.send(Duration::from_secs(600)).unwrap();
        started.recv().unwrap();
        drop(tx);
        let t = Instant::now();
        assert!(!stuck.shut_down(|| {}), "a stuck worker was joined");
        assert!(t.elapsed() < Duration::from_secs(60));
    }
}
