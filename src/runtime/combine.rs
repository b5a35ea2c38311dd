//! The aggregate node's bookkeeping: partial aggregates added as they arrive, member
//! statuses, and the run's verdict under its quorum policy.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::exec::DeviceOutput;
use crate::options::QuorumPolicy;
use crate::placement::ExecutionDevice;
use crate::report::{MemberReport, MemberStatus, RunOutput};
use crate::tensor::Tensor;
use crate::uncertainty::{finish, Moments, Uncertainty};

/// The aggregate node's bookkeeping for one run (or one pipeline input): member
/// results as they arrive, then the aggregate under a quorum policy.
pub(crate) struct Combiner<'a> {
    names: &'a [String],
    devices: &'a [ExecutionDevice],
    weights: &'a [f32],
    rows: usize,
    cols: usize,
    acc: Vec<f32>,
    present_weight: f32,
    status: Vec<Option<MemberStatus>>,
    elapsed: Vec<Duration>,
    device_time: Vec<Option<Duration>>,
    outputs: Vec<Option<Tensor>>,
    /// The uncertainty statistics of the members that finished, when asked for.
    moments: Vec<Moments>,
    /// A stacking blender's first layer summed over the members that finished
    /// (`[rows, hidden]`; empty without a blender).
    blend: Vec<f32>,
}

impl<'a> Combiner<'a> {
    pub(crate) fn new(
        names: &'a [String],
        devices: &'a [ExecutionDevice],
        weights: &'a [f32],
        rows: usize,
        cols: usize,
    ) -> Self {
        Self {
            names,
            devices,
            weights,
            rows,
            cols,
            acc: Vec::new(),
            present_weight: 0.0,
            status: vec![None; names.len()],
            elapsed: vec![Duration::ZERO; names.len()],
            device_time: vec![None; names.len()],
            outputs: vec![None; names.len()],
            moments: Vec::new(),
            blend: Vec::new(),
        }
    }

    /// Adds one executor's result for `members`. Returns the first failure, for a
    /// caller that gives up on any failure.
    pub(crate) fn add(&mut self, members: &[usize], result: Result<DeviceOutput>) -> Option<Error> {
        match result {
            Ok(out) => {
                if self.acc.is_empty() {
                    // The first partial sum is the sum so far (0 + p is p).
                    self.acc = out.partial;
                } else {
                    for (a, p) in self.acc.iter_mut().zip(&out.partial) {
                        *a += p;
                    }
                }
                for &m in &out.present {
                    self.present_weight += self.weights[m];
                    self.status[m] = Some(MemberStatus::Finished);
                    self.elapsed[m] = out.elapsed;
                    self.device_time[m] = out.device_time;
                }
                self.moments.extend(out.moments);
                if self.blend.is_empty() {
                    self.blend = out.blend;
                } else {
                    for (a, z) in self.blend.iter_mut().zip(&out.blend) {
                        *a += z;
                    }
                }
                for (m, y) in out.members {
                    self.outputs[m] = Tensor::matrix(self.rows, self.cols, y).ok();
                }
                let first = out.failed.first().map(|(_, e)| e.clone());
                for (m, e) in out.failed {
                    self.status[m] = Some(MemberStatus::Failed(e));
                }
                first
            }
            Err(e) => {
                self.fail(members, e.clone());
                Some(e)
            }
        }
    }

    /// The uncertainty measures over the members that finished so far, from the
    /// statistics their executors sent (`None` when none did: not asked for, or no
    /// member of positive weight finished).
    pub(crate) fn uncertainty(&self) -> Option<Uncertainty> {
        (!self.moments.is_empty()).then(|| finish(&self.moments, self.rows, self.cols))
    }

    /// A stacking blender's first layer summed over the members that finished, before
    /// its bias (empty without a blender).
    pub(crate) fn take_blend(&mut self) -> Vec<f32> {
        std::mem::take(&mut self.blend)
    }

    /// Marks `members` failed with `error` (their worker is gone).
    pub(crate) fn fail(&mut self, members: &[usize], error: Error) {
        for &m in members {
            self.status[m] = Some(MemberStatus::Failed(error.clone()));
        }
    }

    /// The run's output: members that never answered are late; the aggregate is the
    /// weighted sum over the members that finished divided by their total weight.
    pub(crate) fn finish(
        self,
        quorum: QuorumPolicy,
        timeout: Option<Duration>,
        elapsed: Duration,
    ) -> Result<RunOutput> {
        let (aggregate, members) = self.finish_parts(quorum, timeout);
        Ok(RunOutput {
            aggregate: aggregate?,
            members,
            elapsed,
            uncertainty: None,
            stacked: None,
        })
    }

    /// The aggregate (or why there is none) and every member's report.
    pub(crate) fn finish_parts(
        self,
        quorum: QuorumPolicy,
        timeout: Option<Duration>,
    ) -> (Result<Tensor>, Vec<MemberReport>) {
        let (settled, reports) = self.settle(quorum, timeout);
        (settled.and_then(Settled::aggregate), reports)
    }

    /// The run's verdict (the quorum met and the weights of the members that finished
    /// positive, or why not) with the weighted sum to make the aggregate from, and
    /// every member's report. A caller whose executor kept the aggregate on its device
    /// takes the verdict alone.
    pub(crate) fn settle(
        self,
        quorum: QuorumPolicy,
        timeout: Option<Duration>,
    ) -> (Result<Settled>, Vec<MemberReport>) {
        let status: Vec<MemberStatus> = self
            .status
            .into_iter()
            .map(|s| s.unwrap_or(MemberStatus::Late))
            .collect();
        let members = self.names.len();
        let finished = status
            .iter()
            .filter(|s| matches!(s, MemberStatus::Finished))
            .count();
        let verdict = verdict(&status, self.names, quorum, timeout, finished);
        let (acc, present_weight, rows, cols) =
            (self.acc, self.present_weight, self.rows, self.cols);
        let settled = verdict.and_then(|()| {
            if present_weight <= 0.0 {
                return Err(Error::QuorumNotMet {
                    required: match quorum {
                        QuorumPolicy::Quorum(k) => k,
                        _ => members,
                    },
                    finished,
                    members,
                    missing: vec![
                        "the aggregate weights of the members that finished sum to 0".to_string(),
                    ],
                });
            }
            Ok(Settled {
                acc,
                present_weight,
                rows,
                cols,
            })
        });
        let reports = status
            .into_iter()
            .enumerate()
            .map(|(m, status)| MemberReport {
                name: self.names[m].clone(),
                device: self.devices[m].clone(),
                elapsed: self.elapsed[m],
                device_time: self.device_time[m],
                output: self.outputs[m].clone(),
                status,
            })
            .collect();
        (settled, reports)
    }
}

/// A run whose verdict is positive: the weighted sum of the partials that arrived and
/// the aggregate weight of the members in it.
pub(crate) struct Settled {
    acc: Vec<f32>,
    present_weight: f32,
    rows: usize,
    cols: usize,
}

impl Settled {
    /// The aggregate on the host: the weighted sum over the members' total weight.
    pub(crate) fn aggregate(self) -> Result<Tensor> {
        let scale = 1.0 / self.present_weight;
        let mut values = self.acc;
        values.resize(self.rows * self.cols, 0.0);
        if scale != 1.0 {
            values.iter_mut().for_each(|a| *a *= scale);
        }
        Tensor::matrix(self.rows, self.cols, values)
    }
}

/// Whether a run with these member statuses satisfies `quorum`.
fn verdict(
    status: &[MemberStatus],
    names: &[String],
    quorum: QuorumPolicy,
    timeout: Option<Duration>,
    finished: usize,
) -> Result<()> {
    match quorum {
        QuorumPolicy::RequireAll => {
            if let Some(MemberStatus::Failed(e)) =
                status.iter().find(|s| matches!(s, MemberStatus::Failed(_)))
            {
                return Err(e.clone());
            }
            if finished < status.len() {
                return Err(Error::DeadlineExceeded {
                    timeout: timeout.unwrap_or_default(),
                    missing: status
                        .iter()
                        .zip(names)
                        .filter(|(s, _)| matches!(s, MemberStatus::Late))
                        .map(|(_, n)| n.clone())
                        .collect(),
                });
            }
            Ok(())
        }
        QuorumPolicy::Quorum(k) if finished < k => Err(Error::QuorumNotMet {
            required: k,
            finished,
            members: status.len(),
            missing: status
                .iter()
                .zip(names)
                .filter_map(|(s, name)| match s {
                    MemberStatus::Finished => None,
                    MemberStatus::Late => Some(format!("{name}: late")),
                    MemberStatus::Failed(e) => Some(format!("{name}: {e}")),
                })
                .collect(),
        }),
        QuorumPolicy::Quorum(_) => Ok(()),
    }
}
