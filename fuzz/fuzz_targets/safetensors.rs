//! The safetensors loader, through the crate's own checks, on arbitrary bytes: a
//! model whose layers chain, or an error of bounded length; never a panic or abort.
//! The first byte picks the options, so that the explicit-layer and
//! explicit-activation paths are fuzzed as well as the metadata ones.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgpu_ensemble::io::{model_from_bytes, LoadOptions};
use wgpu_ensemble::Activation;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let mut options = LoadOptions::default();
    if pick & 1 == 1 {
        options = options.layers(vec!["0".to_string(), "1".to_string()]);
    }
    if pick & 2 == 2 {
        options = options.activations(vec![Activation::Relu, Activation::Identity]);
    }
    match model_from_bytes(Path::new("fuzz.safetensors"), bytes, &options) {
        Ok(model) => {
            let layers = model.layers();
            assert!(!layers.is_empty());
            for pair in layers.windows(2) {
                assert_eq!(pair[0].out_features(), pair[1].in_features());
            }
        }
        Err(e) => assert!(
            e.to_string().len() <= 2048,
            "{} bytes of error",
            e.to_string().len()
        ),
    }
});
