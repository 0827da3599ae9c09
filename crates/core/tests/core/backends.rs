//! The shipped model through both backends: they agree on real photos and on generated
//! images, whatever the batch size.
use std::path::PathBuf;

use catsdogs_core::{BackendKind, InferenceError, LoadedModel};
use image::{Rgb, RgbImage};

fn shipped_model() -> PathBuf {
    catsdogs_testkit::seed_cnn_dir()
}

fn both() -> (LoadedModel, LoadedModel) {
    let ort = LoadedModel::load(&shipped_model(), BackendKind::Onnxruntime, 2).expect("onnxruntime backend");
    let candle = LoadedModel::load(&shipped_model(), BackendKind::Candle, 2).expect("candle backend");
    (ort, candle)
}

fn max_diff(ort: &LoadedModel, candle: &LoadedModel, images: &[RgbImage]) -> f32 {
    let a = ort.predict_images(images).expect("ort");
    let b = candle.predict_images(images).expect("candle");
    assert_eq!(a.len(), images.len());
    a.iter().zip(&b).map(|(x, y)| (x.p_dog - y.p_dog).abs()).fold(0.0, f32::max)
}

pub fn backends_agree_on_real_photos() {
    let dir = catsdogs_testkit::photos();
    let (ort, candle) = both();
    let mut images = Vec::new();
    for class in ["cat", "dog"] {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(dir.join(class)).expect("read dir").filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files.iter().step_by(97).take(48) {
            images.push(ort.preprocess(&std::fs::read(f).expect("read")).expect("preprocess"));
        }
    }
    let diff = max_diff(&ort, &candle, &images);
    assert!(diff < 1e-4, "onnxruntime and candle differ by {diff}");
}

pub fn backends_agree_on_generated_images_and_batch_sizes() {
    let (ort, candle) = both();
    let size = ort.preprocess_config().size;
    let images: Vec<RgbImage> = (0..5u32)
        .map(|k| {
            RgbImage::from_fn(size, size, |x, y| {
                Rgb([(x * (k + 1)) as u8, (y * 3 + k * 40) as u8, ((x ^ y) * k) as u8])
            })
        })
        .collect();
    assert!(max_diff(&ort, &candle, &images) < 1e-4);
    // One image alone gives the same answer as inside a batch.
    let single = ort.predict_images(&images[2..3]).expect("single")[0].p_dog;
    let batched = ort.predict_images(&images).expect("batch")[2].p_dog;
    assert!((single - batched).abs() < 1e-5);
}

pub fn bad_inputs_and_missing_files_are_typed_errors() {
    let (ort, _) = both();
    assert!(matches!(ort.predict_bytes(b"not an image"), Err(InferenceError::Preprocess(_))));
    let tmp = tempfile::tempdir().expect("tempdir");
    assert!(matches!(LoadedModel::load(tmp.path(), BackendKind::Candle, 1), Err(InferenceError::MissingFile(_))));
    // A card whose ONNX file is garbage: an ONNX Runtime error, not a crash.
    for f in ["model.json", "model.safetensors"] {
        std::fs::copy(shipped_model().join(f), tmp.path().join(f)).expect("copy");
    }
    std::fs::write(tmp.path().join("model.onnx"), b"garbage").expect("write");
    assert!(matches!(LoadedModel::load(tmp.path(), BackendKind::Onnxruntime, 1), Err(InferenceError::Ort(_))));
    assert!(LoadedModel::load(tmp.path(), BackendKind::Candle, 1).is_ok());
}

pub fn test_time_flip_averages_the_image_and_its_mirror() {
    let mut model = LoadedModel::load(&shipped_model(), BackendKind::Onnxruntime, 2).expect("load");
    let size = model.preprocess_config().size;
    let img = RgbImage::from_fn(size, size, |x, y| Rgb([(x * 2) as u8, (y * 3) as u8, ((x * y) % 251) as u8]));
    let mirror = image::imageops::flip_horizontal(&img);
    let plain = model.predict_images(&[img.clone(), mirror]).expect("predict");
    model.tta_flip = true;
    let flipped = model.predict_images(std::slice::from_ref(&img)).expect("predict");
    let expected = (plain[0].p_dog + plain[1].p_dog) / 2.0;
    assert!((flipped[0].p_dog - expected).abs() < 1e-6, "{} vs {expected}", flipped[0].p_dog);
}

pub fn warm_up_runs_every_batch_size_the_batcher_sends_and_changes_no_answer() {
    let model = LoadedModel::load(&shipped_model(), BackendKind::Onnxruntime, 2).expect("load");
    let size = model.preprocess_config().size;
    let img = RgbImage::from_fn(size, size, |x, y| Rgb([(x * 5) as u8, (y * 7) as u8, ((x + y) % 253) as u8]));
    let before = model.predict_images(std::slice::from_ref(&img)).expect("predict")[0].p_dog;
    // The largest first (the pool's peak once), then every smaller size.
    assert_eq!(model.warm_up(8).expect("warm up"), vec![8, 1, 2, 3, 4, 5, 6, 7]);
    // A large --max-batch: powers of two and the maximum, to keep the start short.
    assert_eq!(model.warm_up(40).expect("warm up"), vec![40, 1, 2, 4, 8, 16, 32]);
    assert_eq!(model.warm_up(0).expect("warm up"), vec![1]);
    let after = model.predict_images(std::slice::from_ref(&img)).expect("predict")[0].p_dog;
    assert_eq!(before, after, "warming up changes no state an answer depends on");
}
