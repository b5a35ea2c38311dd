//! The CPU engine: forward with the activations kept, backward, optimizer steps, on the
//! host with the GEMM crates.

use crate::error::{Error, Result};
use crate::model::Activation;
use crate::train::engine::{Engine, Evaluation, Params};
use crate::train::{Hyper, TrainSet};

/// Trains a member on the host CPU.
pub(crate) struct CpuEngine {}

impl CpuEngine {
    /// An engine starting from `init`.
    pub(crate) fn new(
        _init: &[Params],
        _activations: &[Activation],
        _hyper: &Hyper,
        _set: &TrainSet,
    ) -> Result<CpuEngine> {
        Err(Error::TrainingUnsupported {
            placement: "Cpu".into(),
            reason: "not built yet".into(),
        })
    }
}

impl Engine for CpuEngine {
    fn epoch(&mut self, _order: &[u32], _batch_size: usize, _lr: f32) -> Result<f64> {
        Ok(0.0)
    }
    fn evaluate(&mut self) -> Result<Evaluation> {
        Ok(Evaluation {
            loss: 0.0,
            metric: 0.0,
        })
    }
    fn gradients(&mut self, _rows: &[u32]) -> Result<(f64, Vec<Params>)> {
        Ok((0.0, Vec::new()))
    }
    fn step(&mut self, _rows: &[u32], _lr: f32) -> Result<f64> {
        Ok(0.0)
    }
    fn params(&mut self) -> Result<Vec<Params>> {
        Ok(Vec::new())
    }
    fn device(&self) -> String {
        "cpu".into()
    }
}
