//! The manifest parser on arbitrary text: a manifest with at least one member, or an
//! error of bounded length (bad input is quoted in excerpts); never a panic or abort.
//! Weight files are not read (that is the safetensors target's job).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgpu_ensemble::io::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::parse(Path::new("/fuzz/ensemble.toml"), text) {
        Ok(manifest) => assert!(!manifest.members.is_empty()),
        Err(e) => assert!(
            e.to_string().len() <= 2048,
            "{} bytes of error",
            e.to_string().len()
        ),
    }
});
