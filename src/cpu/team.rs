//! Work shared between the calling thread and the CPU executor's helper threads: the
//! caller runs tasks itself while the helpers join, rather than handing the whole run
//! to a pool and sleeping until it is done (ONNX Runtime's scheme). A hand-off costs a
//! wake-up at each end, about as long as a whole run of E1 at batch 1, and on a
//! machine of two cores a pool of two threads plus the sleeping caller is three
//! threads for two processors, which the system's scheduler took 60–100 ms to
//! spread (benches/results/cpu-2026-12-06/NOTES.md, "The late second core").
//!
//! Tasks are claimed from a counter, so a helper that starts late, or not at all,
//! costs nothing: the caller claims what is left. The caller waits only for tasks
//! already claimed, which are running; it never waits for a thread to become free,
//! so a run from any thread (a helper, rayon's pools, a server's) cannot deadlock,
//! as long as tasks do not wait for one another.
//!
//! There is one helper fewer than the threads the host runs on ([`width`]): the
//! caller is the last. A helper looks for work for [`HELPER_SPIN`] after its last
//! task before it sleeps, and moves off its caller's processor when it finds itself
//! there (on Linux).

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long the caller spins for the last claimed tasks before it parks: a helper's
/// task at the light cells lasts tens of microseconds, and a wake-up from a park
/// costs about as much.
const SPIN: Duration = Duration::from_micros(50);

/// The tasks of one [`for_each`], shared with its helpers.
struct Shared {
    /// The next task to claim (past `tasks`: none left).
    next: AtomicUsize,
    /// Tasks finished (run, or panicked).
    done: AtomicUsize,
    tasks: usize,
    /// The tasks' body. Valid while `done < tasks`, which is as long as anyone may
    /// claim a task: [`for_each`] returns only when every task is done, and a thread
    /// calls it only for a task it has claimed.
    job: *const (dyn Fn(usize) + Sync),
    /// The caller, to wake when the last task is done.
    caller: Thread,
    /// The processor the caller ran on when it shared the tasks (`None` where the
    /// caller is a helper, or it is not known).
    caller_cpu: Option<usize>,
    /// The first panic of a task, raised again on the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `job` is only dereferenced under the contract written on it, and what it
// points to is `Sync`; everything else is.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Claims and runs tasks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.tasks {
                return;
            }
            // SAFETY: task `i` is claimed and not done, so the caller of `for_each`
            // has not returned and `job` is alive (see `job`).
            let job = unsafe { &*self.job };
            #[cfg(test)]
            TASKS_HERE.set(TASKS_HERE.get() + 1);
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| job(i))) {
                keep_first(
                    &mut self.panic.lock().unwrap_or_else(|e| e.into_inner()),
                    panic,
                );
            }
            // Release: the task's writes are seen by the caller, which reads `done`
            // with Acquire.
            if self.done.fetch_add(1, Ordering::Release) + 1 == self.tasks
                && std::thread::current().id() != self.caller.id()
            {
                self.caller.unpark();
            }
        }
    }
}

/// Keeps `panic` in `first` if it is the first; else drops it, where a panic in its
/// drop is caught (and its own payload forgotten) rather than unwinding past a task's
/// count.
fn keep_first(first: &mut Option<Box<dyn Any + Send>>, panic: Box<dyn Any + Send>) {
    if first.is_none() {
        *first = Some(panic);
    } else if let Err(again) = catch_unwind(AssertUnwindSafe(|| drop(panic))) {
        std::mem::forget(again);
    }
}

/// Waits, when dropped, until every task of its `Shared` is done: `for_each` cannot
/// return, by any path, while a helper may still run a task.
struct WaitAll<'a>(&'a Shared);

impl Drop for WaitAll<'_> {
    fn drop(&mut self) {
        // Spin a little, then park until the last task wakes this thread (a park may
        // also end early: the count is read again).
        let started = Instant::now();
        while self.0.done.load(Ordering::Acquire) < self.0.tasks {
            if started.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::park_timeout(Duration::from_millis(1));
            }
        }
    }
}

/// Runs `job(0)`, …, `job(tasks - 1)` on this thread and on up to `width - 1`
/// helpers, and returns when all are done. A panic in a task is raised again here
/// once every task has run. The tasks must not wait for one another: any of them may
/// run after the others, on this thread.
pub(crate) fn for_each(tasks: usize, width: usize, job: impl Fn(usize) + Sync) {
    let team = (width > 1 && tasks > 1).then(helpers_started);
    let (queue, helpers) = match team {
        Some(Helpers {
            queue: Some(queue),
            count,
        }) => (queue, width.min(tasks).min(count + 1) - 1),
        _ => {
            let mut first = None;
            for i in 0..tasks {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| job(i))) {
                    keep_first(&mut first, panic);
                }
            }
            if let Some(panic) = first {
                resume_unwind(panic);
            }
            return;
        }
    };
    let job: &(dyn Fn(usize) + Sync + '_) = &job;
    // SAFETY (of the lifetime's erasure): see `Shared::job`; the pointer is not
    // dereferenced after this function returns.
    let job = unsafe {
        std::mem::transmute::<
            *const (dyn Fn(usize) + Sync + '_),
            *const (dyn Fn(usize) + Sync + 'static),
        >(job)
    };
    let shared = Arc::new(Shared {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        tasks,
        job,
        caller: std::thread::current(),
        // A helper sharing a task's work stays where it is, and so do the others.
        caller_cpu: if HELPER.get() { None } else { place::current() },
        panic: Mutex::new(None),
    });
    for _ in 0..helpers {
        // Only fails when every helper has ended, and then the caller runs every task.
        let _ = queue.send(Arc::clone(&shared));
    }
    let wait = WaitAll(&shared);
    shared.work();
    // The tasks the helpers claimed.
    drop(wait);
    let panic = shared
        .panic
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(panic) = panic {
        resume_unwind(panic);
    }
}

/// How long a helper looks for work after its last task before it sleeps (a run
/// of E1 at batch 1 lasts 50 µs; the next one in a loop comes within this).
const HELPER_SPIN: Duration = Duration::from_micros(200);

/// The helper threads, started with the first run that shares its tasks.
struct Helpers {
    /// Where tasks are sent (`None`: no helper, the caller runs every task).
    queue: Option<crossbeam_channel::Sender<Arc<Shared>>>,
    /// Helpers started.
    count: usize,
}

static HELPERS: std::sync::OnceLock<Helpers> = std::sync::OnceLock::new();

std::thread_local! {
    /// This thread is a helper.
    static HELPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Tasks of a `for_each` with helpers run on this thread.
    #[cfg(test)]
    pub(crate) static TASKS_HERE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The threads the host runs a job on: the caller and the helpers. As many as
/// [`host_threads`](super::host_threads), fewer where a helper could not be started.
pub(crate) fn width() -> usize {
    helpers_started().count + 1
}

fn helpers_started() -> &'static Helpers {
    HELPERS.get_or_init(|| {
        let threads = super::host_threads();
        let (tx, rx) = crossbeam_channel::unbounded::<Arc<Shared>>();
        let mut count = 0;
        for i in 0..threads - 1 {
            let rx = rx.clone();
            let started = std::thread::Builder::new()
                .name(format!("wgpu-ensemble cpu helper {i}"))
                .spawn(move || help(&rx))
                .is_ok();
            count += usize::from(started);
        }
        Helpers {
            queue: (count > 0).then_some(tx),
            count,
        }
    })
}

/// A helper: runs the tasks it is sent until the queue closes. When it finds itself
/// on the processor of the caller whose tasks it takes, it moves off it (on Linux):
/// it may then run on any of the main thread's processors but that one, until it
/// next sleeps. (Left to the system's scheduler, a helper started from the caller's
/// processor stayed there, sharing it, for tens of milliseconds.)
fn help(rx: &crossbeam_channel::Receiver<Arc<Shared>>) {
    HELPER.set(true);
    // Not the processors of the caller that started it, which may be one.
    place::widen();
    let mut moved = false;
    loop {
        let spin = Instant::now();
        let shared = loop {
            match rx.try_recv() {
                Ok(s) => break s,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                Err(_) if spin.elapsed() < HELPER_SPIN => std::hint::spin_loop(),
                Err(_) => {
                    // Asleep, it may run anywhere again when woken.
                    if std::mem::take(&mut moved) {
                        place::widen();
                    }
                    match rx.recv() {
                        Ok(s) => break s,
                        Err(_) => return,
                    }
                }
            }
        };
        // Also for tasks all claimed already: a helper on a busy caller's processor
        // gets to run only when the caller's time is up, and finds them so.
        if let Some(caller) = shared.caller_cpu {
            if place::current() == Some(caller) {
                moved |= place::avoid(caller);
            }
        }
        shared.work();
    }
}

#[cfg(target_os = "linux")]
mod place {
    /// The processors thread (or process) `id` may run on (0: this thread).
    pub(super) fn allowed(id: libc::pid_t) -> Vec<usize> {
        // SAFETY: cpu_set_t is plain data (zeroed: empty); the call writes only the
        // set passed, of the size passed.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(id, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    /// The processor this thread runs on.
    pub(super) fn current() -> Option<usize> {
        // SAFETY: no arguments; -1 on failure.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).ok()
    }

    /// Keeps this thread to `cpus` (none: left as it is); whether it was done.
    pub(super) fn keep_to(cpus: &[usize]) -> bool {
        if cpus.is_empty() {
            return false;
        }
        // SAFETY: as in `allowed`; the call reads only the set passed, and every
        // processor in it is below CPU_SETSIZE (they come from `allowed`).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in cpus {
                libc::CPU_SET(c, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }

    /// The main thread's processors (read again each time: `taskset -a` changes
    /// them).
    fn main_threads() -> Vec<usize> {
        // SAFETY: no arguments.
        allowed(unsafe { libc::getpid() })
    }

    /// Keeps this thread to the main thread's processors but `cpu`, where there are
    /// others; whether it did.
    pub(super) fn avoid(cpu: usize) -> bool {
        let others: Vec<usize> = main_threads().into_iter().filter(|&c| c != cpu).collect();
        keep_to(&others)
    }

    /// Lets this thread run on all of the main thread's processors.
    pub(super) fn widen() {
        keep_to(&main_threads());
    }
}

#[cfg(not(target_os = "linux"))]
mod place {
    pub(super) fn current() -> Option<usize> {
        None
    }
    pub(super) fn avoid(_: usize) -> bool {
        false
    }
    pub(super) fn widen() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    /// Runs `f` on a thread of its own and fails if it takes more than a minute (a
    /// deadlock), raising its panic if it panicked.
    fn bounded(what: &str, f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(panic) = thread.join() {
                    resume_unwind(panic);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: not done after 60 s"),
        }
    }

    fn counters(n: usize) -> Vec<AtomicUsize> {
        (0..n).map(|_| AtomicUsize::new(0)).collect()
    }

    #[test]
    fn every_task_runs_once() {
        bounded("every_task_runs_once", || {
            for tasks in [0, 1, 2, 3, 7, 64] {
                for width in [1, 2, 3, 8] {
                    let runs = counters(tasks);
                    for_each(tasks, width, |i| {
                        runs[i].fetch_add(1, Ordering::Relaxed);
                    });
                    for (i, r) in runs.iter().enumerate() {
                        let r = r.load(Ordering::Relaxed);
                        assert_eq!(r, 1, "{tasks} tasks, width {width}: task {i} ran {r} times");
                    }
                }
            }
        });
    }

    /// While the caller is held in a task, the helpers run the others.
    #[test]
    fn helpers_run_the_tasks_the_caller_does_not() {
        if width() < 2 {
            eprintln!("skipped: one thread for the host (no helper)");
            return;
        }
        bounded("helpers_run_the_tasks_the_caller_does_not", || {
            let caller = std::thread::current().id();
            let elsewhere = AtomicUsize::new(0);
            let waited_out = AtomicBool::new(false);
            for_each(8, width(), |_| {
                if std::thread::current().id() != caller {
                    elsewhere.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                // The caller waits for the other tasks (all of them, since it holds
                // this one), up to 20 s, once.
                if waited_out.load(Ordering::SeqCst) {
                    return;
                }
                let start = Instant::now();
                while elsewhere.load(Ordering::SeqCst) < 7 {
                    if start.elapsed() > Duration::from_secs(20) {
                        waited_out.store(true, Ordering::SeqCst);
                        return;
                    }
                    std::thread::yield_now();
                }
            });
            // 8 where the helpers claimed every task before the caller claimed one.
            let elsewhere = elsewhere.load(Ordering::SeqCst);
            assert!(
                !waited_out.load(Ordering::SeqCst) && elsewhere >= 7,
                "tasks run by helpers while the caller held one: {elsewhere} of 7 in 20 s"
            );
        });
    }

    /// A task's panic reaches the caller once every other task has run.
    #[test]
    fn a_tasks_panic_is_raised_on_the_caller_after_the_others() {
        bounded(
            "a_tasks_panic_is_raised_on_the_caller_after_the_others",
            || {
                let runs = counters(16);
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    for_each(16, width(), |i| {
                        runs[i].fetch_add(1, Ordering::SeqCst);
                        if i == 3 {
                            panic!("task 3 fails");
                        }
                    });
                }));
                let panic = result.expect_err("the task's panic was not raised");
                let message = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .unwrap_or("(not a &str)");
                assert_eq!(message, "task 3 fails");
                for (i, r) in runs.iter().enumerate() {
                    let r = r.load(Ordering::SeqCst);
                    assert_eq!(r, 1, "task {i} ran {r} times");
                }
            },
        );
    }

    /// Tasks that share their own work (a member's layers split in blocks), from
    /// several callers at once: every task runs, none waits for a thread that is
    /// waiting for it.
    #[test]
    fn nested_tasks_from_several_callers_all_run() {
        bounded("nested_tasks_from_several_callers_all_run", || {
            let runs = Arc::new(AtomicUsize::new(0));
            let callers: Vec<_> = (0..4)
                .map(|_| {
                    let runs = Arc::clone(&runs);
                    std::thread::spawn(move || {
                        for _ in 0..50 {
                            for_each(8, width(), |_| {
                                for_each(4, width(), |_| {
                                    runs.fetch_add(1, Ordering::Relaxed);
                                });
                            });
                        }
                    })
                })
                .collect();
            for c in callers {
                if let Err(panic) = c.join() {
                    resume_unwind(panic);
                }
            }
            assert_eq!(runs.load(Ordering::Relaxed), 4 * 50 * 8 * 4);
        });
    }

    /// The processor and the allowed processors of each helper task of one
    /// `for_each` of 16 tasks from this thread, whose own tasks wait (busy, so that
    /// its processor stays taken) until a helper has run one, up to 5 s; empty if
    /// none did.
    #[cfg(target_os = "linux")]
    fn helpers_processors() -> Vec<(Option<usize>, Vec<usize>)> {
        let caller = std::thread::current().id();
        let seen = Mutex::new(Vec::new());
        let any = AtomicBool::new(false);
        for_each(16, width(), |_| {
            if std::thread::current().id() != caller {
                let here = (place::current(), place::allowed(0));
                seen.lock().unwrap_or_else(|e| e.into_inner()).push(here);
                any.store(true, Ordering::SeqCst);
                return;
            }
            let start = Instant::now();
            while !any.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(5) {
                std::hint::spin_loop();
            }
        });
        seen.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// A helper that finds itself on the caller's processor moves off it, for good
    /// while that caller stays there; the caller's processors are left as they were.
    /// (A try where the helper had moved elsewhere by itself before the caller came
    /// shows nothing: up to 5 tries.)
    #[cfg(target_os = "linux")]
    #[test]
    fn a_helper_moves_off_the_callers_processor() {
        let allowed = place::allowed(0);
        if allowed.len() < 2 || width() < 2 {
            eprintln!(
                "skipped: {} processors, {} threads for the host",
                allowed.len(),
                width()
            );
            return;
        }
        bounded("a_helper_moves_off_the_callers_processor", move || {
            let mut tries = Vec::new();
            for _ in 0..5 {
                // Where a helper runs; then the caller there, and where the helpers
                // run and may run.
                let Some((Some(there), _)) = helpers_processors().first().cloned() else {
                    panic!("no helper took a task in 5 s");
                };
                if !place::keep_to(&[there]) {
                    eprintln!("skipped: this thread's processors cannot be set here");
                    return;
                }
                let seen = helpers_processors();
                let mine = place::allowed(0);
                place::keep_to(&allowed);
                assert_eq!(mine, [there], "the caller's processors changed");
                assert!(!seen.is_empty(), "no helper took a task in 5 s");
                let moved = seen.iter().all(|(cpu, may)| {
                    *cpu != Some(there) && !may.is_empty() && !may.contains(&there)
                });
                if moved {
                    return;
                }
                tries.push((there, seen));
            }
            panic!(
                "no helper moved off its caller's processor in 5 tries \
                 (caller's processor, then each helper task's processor and allowed \
                 processors): {tries:?}"
            );
        });
    }
}
