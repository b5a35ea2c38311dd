//! What the in-graph session and the between-graph pipeline share: compiling a graph's
//! placements into executors (`compile`), running one job with its faults (`job`),
//! and combining member results under a quorum policy (`combine`).

mod combine;
mod compile;
mod job;
mod split;
mod thread;

pub(crate) use combine::Combiner;
pub(crate) use compile::compile;
pub(crate) use job::{execute, execute_input, JobInput, WorkerContext};
pub(crate) use thread::{recv_by, Busy, WorkerThread};

use crate::error::{Error, Result};
use crate::options::QuorumPolicy;
use crate::tensor::Tensor;

/// The rows of a valid input: rank 2, the graph's width, at least one row.
pub(crate) fn check_input(input: &Tensor, width: usize) -> Result<usize> {
    let (rows, cols) = input.dims2("input")?;
    if cols != width {
        return Err(Error::FeatureWidth {
            expected: width,
            got: cols,
        });
    }
    if rows == 0 {
        return Err(Error::EmptyBatch);
    }
    Ok(rows)
}

/// A quorum between 1 and the member count.
pub(crate) fn check_quorum(quorum: QuorumPolicy, members: usize) -> Result<()> {
    match quorum {
        QuorumPolicy::Quorum(k) if k == 0 || k > members => {
            Err(Error::InvalidQuorum { quorum: k, members })
        }
        _ => Ok(()),
    }
}
