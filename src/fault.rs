//! Fault injection: [`FaultPlan`] and [`Fault`].

use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// What happens to a member on a planned run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The member's worker sleeps this long before running the job. Members share
    /// their device's worker, so every member on that device is delayed.
    Sleep(Duration),
    /// The member is left out of the run and reported failed with
    /// [`Error::InjectedFault`](crate::Error::InjectedFault); other members on its
    /// device still run.
    Fail,
    /// The member's worker panics while running the job: every member on that device
    /// is reported failed for that run with
    /// [`Error::WorkerFailed`](crate::Error::WorkerFailed); the worker lives on. The
    /// panic unwinds without the panic hook, so nothing is printed (nor a backtrace
    /// captured, which can take longer than a run's deadline).
    Panic,
    /// The member's device is destroyed before the job, which then fails with
    /// [`Error::DeviceLost`](crate::Error::DeviceLost); the next run recreates the
    /// device on its adapter. The CPU cannot be lost: there the member the fault names
    /// fails with [`Error::InjectedFault`](crate::Error::InjectedFault), and the other
    /// members on the CPU with [`Error::DeviceLost`](crate::Error::DeviceLost) naming
    /// it, as the members of a lost device do.
    LoseDevice,
    /// As [`Fault::LoseDevice`], and recreating the device fails, so the device's
    /// members are reported permanently unavailable
    /// ([`Error::DeviceUnavailable`](crate::Error::DeviceUnavailable)) from then on.
    LoseDevicePermanently,
}

impl FromStr for Fault {
    type Err = Error;

    /// Parses `fail`, `panic`, `lose-device`, `lose-device-permanently` or
    /// `sleep:MS` (milliseconds), as `wgpu-ensemble predict --fault MEMBER=KIND` takes
    /// the kind.
    fn from_str(text: &str) -> Result<Self> {
        match text.trim() {
            "fail" => Ok(Fault::Fail),
            "panic" => Ok(Fault::Panic),
            "lose-device" => Ok(Fault::LoseDevice),
            "lose-device-permanently" => Ok(Fault::LoseDevicePermanently),
            other => other
                .strip_prefix("sleep:")
                .and_then(|ms| ms.trim().parse().ok())
                .map(|ms| Fault::Sleep(Duration::from_millis(ms)))
                .ok_or_else(|| {
                    Error::invalid(
                        "fault",
                        text,
                        "fail, panic, lose-device, lose-device-permanently or sleep:MS",
                    )
                }),
        }
    }
}

/// Fault injection, for testing how an ensemble behaves when a member is late, fails,
/// panics or loses its device.
///
/// A [`FaultPlan`] given to [`SessionOptions::faults`](crate::SessionOptions::faults)
/// (also through [`PipelineOptions::session`](crate::PipelineOptions::session)) names, per
/// member, the runs on which a fault strikes. Runs are numbered from 0 in the order
/// [`Session::run`](crate::Session::run) was called (inputs in the order they were
/// sent, for a [`Pipeline`](crate::Pipeline)). A plan costs nothing when empty, which
/// is the default.
///
/// ```
/// use std::time::Duration;
/// use wgpu_ensemble::{Fault, FaultPlan};
///
/// let plan = FaultPlan::new()
///     .on_run("slow-member", 3, Fault::Sleep(Duration::from_millis(200)))
///     .from_run("flaky-member", 500, Fault::Fail);
/// ```
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// (member, part, runs, fault).
    entries: Vec<(String, usize, Range<u64>, Fault)>,
}

impl FaultPlan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// `fault` strikes `member` on run `run` only.
    pub fn on_run(self, member: impl Into<String>, run: u64, fault: Fault) -> Self {
        self.on_runs(member, run..run.saturating_add(1), fault)
    }

    /// `fault` strikes `member` on every run from `run` on.
    pub fn from_run(self, member: impl Into<String>, run: u64, fault: Fault) -> Self {
        self.on_runs(member, run..u64::MAX, fault)
    }

    /// `fault` strikes `member` on every run in `runs`.
    pub fn on_runs(self, member: impl Into<String>, runs: Range<u64>, fault: Fault) -> Self {
        self.on_part_runs(member, 0, runs, fault)
    }

    /// `fault` strikes part `part` of a member split across devices
    /// ([`Split`](crate::Split)) on every run in `runs`: [`Fault::LoseDevice`] and
    /// [`Fault::LoseDevicePermanently`] lose that part's device (the device of a stage,
    /// or of a range of columns, in the order of the split's devices); the other
    /// faults strike the member as a whole, whatever the part. Part 0 is what the
    /// other methods name; a member that is not split has only part 0.
    pub fn on_part_runs(
        mut self,
        member: impl Into<String>,
        part: usize,
        runs: Range<u64>,
        fault: Fault,
    ) -> Self {
        self.entries.push((member.into(), part, runs, fault));
        self
    }

    /// Whether the plan has no fault.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first member the plan names that is not in `members`.
    pub(crate) fn unknown_member<'a>(&'a self, members: &[&str]) -> Option<&'a str> {
        self.entries
            .iter()
            .map(|(m, _, _, _)| m.as_str())
            .find(|m| !members.contains(m))
    }

    /// The first (member, part) the plan names whose member has fewer parts
    /// (`parts(member)`).
    pub(crate) fn unknown_part(&self, parts: impl Fn(&str) -> usize) -> Option<(&str, usize)> {
        self.entries
            .iter()
            .find(|(m, p, _, _)| *p >= parts(m))
            .map(|(m, p, _, _)| (m.as_str(), *p))
    }

    /// The faults that strike `member` on `run`, with the part each names.
    pub(crate) fn faults<'a>(
        &'a self,
        member: &'a str,
        run: u64,
    ) -> impl Iterator<Item = (usize, &'a Fault)> + 'a {
        self.entries
            .iter()
            .filter(move |(m, _, runs, _)| m == member && runs.contains(&run))
            .map(|(_, p, _, f)| (*p, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_text() {
        let parse = |s: &str| s.parse::<Fault>().ok();
        assert_eq!(parse("fail"), Some(Fault::Fail));
        assert_eq!(parse(" panic"), Some(Fault::Panic));
        assert_eq!(parse("lose-device"), Some(Fault::LoseDevice));
        assert_eq!(
            parse("lose-device-permanently"),
            Some(Fault::LoseDevicePermanently)
        );
        assert_eq!(
            parse("sleep:250"),
            Some(Fault::Sleep(Duration::from_millis(250)))
        );
        for bad in ["", "sleep", "sleep:", "sleep:-1", "sleep:1.5", "crash"] {
            let e = bad.parse::<Fault>().err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains("expected fail")),
                "{bad}: {e:?}"
            );
        }
    }
}
