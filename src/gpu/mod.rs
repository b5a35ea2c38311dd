//! The GPU backend, everything that touches wgpu, split by concern:
//!
//! - `adapters`: enumeration, the device pool, device creation (and recreation);
//! - `context`: one device and queue with its error and loss handlers;
//! - `kernels`: the WGSL kernels, bind group layouts and the pipeline cache;
//! - `params`: the uniform structs the kernels read, defined once;
//! - `stack`: which members run together as one stacked dispatch;
//! - `state`: a device's weights, pipelines and limits; `encode`: the buffers of a
//!   batch and its one command buffer; `readback`: waiting for a submission and
//!   reading results back (shared with the tuner); `resident`: a tensor's copy on a
//!   device (the storage of a [`DeviceTensor`](crate::DeviceTensor));
//! - `executor`: [`GpuExecutor`], the [`Executor`](crate::exec::Executor) of one device,
//!   recreating it when lost;
//! - `coop`, `timing`, `tune`: the cooperative-matrix tile, timestamp queries, and the
//!   autotune with its cache.

mod adapters;
mod context;
mod coop;
mod encode;
mod executor;
mod kernels;
mod params;
mod readback;
mod resident;
mod stack;
mod state;
mod timing;
mod tune;

pub(crate) use adapters::DevicePool;
pub use adapters::{adapters, probe_adapters};
pub(crate) use context::GpuContext;
pub(crate) use executor::GpuExecutor;
pub(crate) use kernels::{bind_buffers, compute_pipeline};
pub(crate) use state::LLVMPIPE_SMALL_INPUTS;
pub(crate) use tune::Tuner;
