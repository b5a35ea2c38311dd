//! The integration tests' shared support (`tests/it/common.rs`) for the test files
//! outside `tests/it`.

#[path = "../it/common.rs"]
mod support;

pub use support::*;
