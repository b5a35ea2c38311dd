//! # wgpu-ensemble
//!
//! Runs an ensemble of neural networks as **one graph in one process**: every member
//! network is pinned to its own device (a wgpu adapter, a separate device/queue on a
//! shared adapter, or the host CPU), WGSL compute shaders run the dense layers, and an
//! aggregate node waits for every member's output before combining them.
//!
//! ```
//! use wgpu_ensemble::{Activation, Aggregate, Graph, Model, Placement, RunOptions, Session, Tensor};
//!
//! # fn main() -> wgpu_ensemble::Result<()> {
//! // Two members with different architectures; weights in PyTorch's [out, in] layout.
//! let a = Model::random(&[4, 16, 3], &[Activation::Relu, Activation::Softmax], 1)?;
//! let b = Model::random(&[4, 8, 8, 3], &[Activation::Tanh, Activation::Gelu, Activation::Softmax], 2)?;
//!
//! let graph = Graph::builder(4)
//!     .member("a", a, Placement::Cpu)
//!     .member("b", b, Placement::Cpu)
//!     .aggregate(Aggregate::WeightedMean(vec![0.75, 0.25]))
//!     .build()?;
//! let session = Session::new(graph)?;
//!
//! let x = Tensor::matrix(2, 4, vec![0.1, 0.2, 0.3, 0.4, -1.0, 0.0, 1.0, 2.0])?;
//! let out = session.run(&x, &RunOptions::default().member_outputs(true))?;
//!
//! assert_eq!(out.aggregate.shape(), &[2, 3]);
//! // Each row of a mean of softmax outputs sums to 1.
//! let row_sum: f32 = out.aggregate.row(0).unwrap_or_default().iter().sum();
//! assert!((row_sum - 1.0).abs() < 1e-5);
//! for m in &out.members {
//!     println!("{} ran on {} in {:?}", m.name, m.device, m.elapsed);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! See the README for a guide, and `docs/` (GUIDE.md, ARCHITECTURE.md,
//! PERFORMANCE.md, TESTING.md) for the rest.

#![warn(missing_docs)]

// Vocabulary: pure data, no wgpu calls.
mod aggregate;
mod error;
mod fault;
mod files;
mod model;
mod options;
mod placement;
mod precision;
mod report;
mod split;
mod tensor;
mod tile;
mod uncertainty;
// The graph, the executor contract, the backends, the runtime.
mod cpu;
mod device_tensor;
mod exec;
mod gpu;
mod graph;
mod runtime;
// What users call.
pub mod bench;
pub mod io;
mod pipeline;
#[cfg(feature = "serve")]
pub mod serve;
mod session;
pub mod train;

pub use aggregate::Aggregate;
pub use device_tensor::{DeviceRunOutput, DeviceTensor};
pub use error::{Error, Result};
pub use fault::{Fault, FaultPlan};
pub use gpu::{adapters, probe_adapters};
pub use graph::{Graph, GraphBuilder, Member};
pub use model::{Activation, Dense, Model, UnknownActivation};
pub use options::{QuorumPolicy, RunOptions, SessionOptions};
pub use pipeline::{Pipeline, PipelineOptions, PipelineOutput};
pub use placement::{AdapterInfo, AdapterProbe, ExecutionDevice, ExternalDevice, Placement};
pub use precision::Precision;
pub use report::{MemberReport, MemberStatus, RunOutput};
pub use session::Session;
pub use split::{Split, SplitKind};
pub use tensor::Tensor;
pub use tile::{CoopShape, TileConfig};
pub use uncertainty::Uncertainty;

/// The wgpu version this crate is built on, re-exported so that callers creating
/// their own devices for [`Placement::Device`] use the same types.
pub use wgpu;

/// Compiles the README's examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Compiles the examples of docs/ as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/ARCHITECTURE.md")]
struct ArchitectureDoctests;
#[cfg(doctest)]
#[doc = include_str!("../docs/GUIDE.md")]
struct GuideDoctests;
#[cfg(doctest)]
#[doc = include_str!("../docs/PERFORMANCE.md")]
struct PerformanceDoctests;
#[cfg(doctest)]
#[doc = include_str!("../docs/TESTING.md")]
struct TestingDoctests;
