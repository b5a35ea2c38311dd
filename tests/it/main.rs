//! The crate's integration tests, one binary: one module per concern, the shared
//! reference implementations and device lists in `common`.

mod common;

mod cli;
mod concurrency;
mod deadline;
mod device_tensor;
mod digits;
mod ensemble;
mod errors;
mod faults;
mod golden;
mod hardening;
mod kernels;
mod model_files;
mod on_device;
mod outputs;
mod pipeline;
mod pipeline_workers;
mod placement;
mod precision;
mod reads;
#[cfg(feature = "serve")]
mod serve_batch;
#[cfg(feature = "serve")]
mod serve_cli;
#[cfg(feature = "serve")]
mod serve_http;
#[cfg(feature = "serve")]
mod serve_load;
#[cfg(feature = "serve")]
mod serve_repo;
#[cfg(feature = "serve")]
mod serve_uncertainty;
mod shaders;
mod split;
mod split_review;
mod stack;
mod timing;
mod train_cli;
mod train_gpu;
mod train_grad;
mod train_member;
mod train_optim;
mod train_study;
mod uncertainty;
