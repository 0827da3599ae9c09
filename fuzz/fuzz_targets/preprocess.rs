//! Upload bytes -> model input: every input ends in an image or a typed error, never a
//! panic, and an accepted image has exactly the model's input shape.
#![no_main]
use catsdogs_model::preprocess::{PreprocessConfig, preprocess};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A small pixel budget keeps each run fast; the limit check itself is what is tested.
    for config in [
        PreprocessConfig { size: 32, max_pixels: 1 << 20, center_crop_from: 0 },
        PreprocessConfig { size: 32, max_pixels: 1 << 20, center_crop_from: 36 },
    ] {
        match preprocess(data, &config) {
            Ok(img) => assert_eq!(img.dimensions(), (config.size, config.size)),
            Err(e) => assert!(!e.code().is_empty()),
        }
    }
});
