//! The integration tests' shared support (`tests/it/common/`) for the test files
//! outside `tests/it`, which use only part of it.

#[allow(unused)]
#[path = "../it/common/mod.rs"]
mod support;

pub use support::*;
