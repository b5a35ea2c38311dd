//! The `.npy` reader on arbitrary bytes: it returns a `[rows, cols]` matrix whose
//! values fill its shape, or an error of bounded length; it never panics or aborts.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgpu_ensemble::io::matrix_from_bytes;

fuzz_target!(|data: &[u8]| {
    match matrix_from_bytes(Path::new("fuzz.npy"), data) {
        Ok(tensor) => {
            let shape = tensor.shape();
            assert_eq!(shape.len(), 2, "a matrix of shape {shape:?}");
            assert_eq!(shape[0] * shape[1], tensor.len());
            // The values came from the file: at least 4 bytes each.
            assert!(tensor.len() * 4 <= data.len());
        }
        Err(e) => assert!(
            e.to_string().len() <= 2048,
            "{} bytes of error",
            e.to_string().len()
        ),
    }
});
