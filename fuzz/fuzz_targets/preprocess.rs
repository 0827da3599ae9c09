//! Upload bytes -> model input: every input ends in an image or a typed error, never a
//! panic, and an accepted image has exactly the model's input shape.
#![no_main]
use catsdogs_model::preprocess::{PreprocessConfig, preprocess};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts even on panics that `preprocess` catches itself (a
    // decoder bug turned into a typed error); restore the default hook. A panic that escapes
    // still fails the run: libfuzzer-sys aborts when the target unwinds.
    static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
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
