//! What a run reports: [`RunOutput`], one [`MemberReport`] per member and its
//! [`MemberStatus`].

use std::time::Duration;

use crate::error::Error;
use crate::placement::ExecutionDevice;
use crate::tensor::Tensor;
use crate::uncertainty::Uncertainty;

/// What a run returns.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RunOutput {
    /// The aggregate node's output, `[rows, output_width]`, over the members that
    /// finished.
    pub aggregate: Tensor,
    /// One report per member, in member order.
    pub members: Vec<MemberReport>,
    /// Wall time of the whole run, as the caller saw it.
    pub elapsed: Duration,
    /// How much the members that answered disagree, when
    /// [`RunOptions::uncertainty`](crate::RunOptions::uncertainty) asked.
    pub uncertainty: Option<Uncertainty>,
    /// For an [`Aggregate::Stack`](crate::Aggregate::Stack): `Some(true)` when the
    /// blender made the aggregate (every member finished), `Some(false)` when members
    /// were missing under a quorum and the aggregate is the equal-weight mean of those
    /// that finished. `None` for every other aggregate.
    pub stacked: Option<bool>,
}

impl RunOutput {
    /// Whether every member finished (the aggregate is over all of them).
    pub fn is_complete(&self) -> bool {
        self.members
            .iter()
            .all(|m| matches!(m.status, MemberStatus::Finished))
    }

    /// The members that did not finish.
    pub fn missing(&self) -> impl Iterator<Item = &MemberReport> {
        self.members
            .iter()
            .filter(|m| !matches!(m.status, MemberStatus::Finished))
    }
}

/// What happened to a member in a run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum MemberStatus {
    /// It answered in time; its output is in the aggregate.
    Finished,
    /// It had not answered at the deadline.
    Late,
    /// It failed: its device was lost or is unavailable, its kernel or its worker
    /// failed, or a [`FaultPlan`](crate::FaultPlan) made it fail.
    Failed(Error),
}

/// One member's part in a run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MemberReport {
    /// The member's name.
    pub name: String,
    /// Where it runs.
    pub device: ExecutionDevice,
    /// Finished, late or failed.
    pub status: MemberStatus,
    /// Wall time of its device's work in this run (upload, every member on that
    /// device in one submission, readback); members sharing a device share it. Zero
    /// when it did not finish.
    pub elapsed: Duration,
    /// Its GPU device's time for the kernels of this run (every member on that
    /// device, summed over the submissions of a batch split into chunks), measured
    /// with timestamp queries when [`SessionOptions::device_timing`](crate::SessionOptions::device_timing) is set; `None`
    /// otherwise, on the CPU, and when it did not finish. A member split across
    /// devices ([`Split`](crate::Split)) reports the sum of its parts' times (every
    /// stage and micro-batch, every column step and part), which can exceed its wall
    /// time since the parts work side by side; `None` when no part is a timed GPU.
    pub device_time: Option<Duration>,
    /// Its `[rows, output_width]` output, when [`RunOptions::member_outputs`](crate::RunOptions::member_outputs) was set
    /// and it finished.
    pub output: Option<Tensor>,
}
