//! The shipped models measured by the training side's evaluation, and the training
//! cache's pixels against serving's.
use std::path::{Path, PathBuf};

use catsdogs_core::{BackendKind, LoadedModel};
use catsdogs_model::preprocess::{self, PreprocessConfig, preprocess};
use catsdogs_train::evaluate;
use image::{Rgb, RgbImage};

use catsdogs_testkit::photos;

fn shipped_seed_cnn() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/seed-cnn")
}

pub fn shipped_model_meets_its_card_on_the_validation_split() {
    let dir = photos();
    let ort = LoadedModel::load(&shipped_seed_cnn(), BackendKind::Onnxruntime, 2).expect("onnxruntime backend");
    let promised = ort.card.validation.as_ref().expect("card has validation metrics").accuracy;
    let report = evaluate(&ort, &dir, true, None, 64).expect("evaluate");
    eprintln!("{}", report.table());
    assert!(report.metrics.count > 4000, "the whole validation split was evaluated");
    assert!(
        report.metrics.accuracy >= promised - 0.02,
        "accuracy {:.4} is more than 2 points below the card's {:.4}",
        report.metrics.accuracy,
        promised
    );
}

pub fn training_cache_and_serving_give_identical_pixels() {
    // Training decodes once into a cache (shorter side bounded to 2x the input) and
    // resizes from it; serving preprocesses the bytes directly. Both must agree exactly.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = PreprocessConfig::default();
    for (i, (w, h)) in [(180u32, 180u32), (200, 150), (256, 300)].into_iter().enumerate() {
        let img =
            RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 % 256) as u8, (y * 3 % 256) as u8, ((x + y) % 256) as u8]));
        for (label, sub) in [(0, "cat"), (1, "dog")] {
            let d = dir.path().join(sub);
            std::fs::create_dir_all(&d).expect("mkdir");
            img.save(d.join(format!("{i}_{label}.png"))).expect("save");
        }
    }
    let samples = catsdogs_train::data::scan(dir.path()).expect("scan");
    let cached = catsdogs_train::data::decode_all(&samples, config.max_pixels, config.size * 2);
    assert!(cached.skipped.is_empty());
    for (s, img) in samples.iter().zip(&cached.images) {
        let from_cache = preprocess::resize_rgb(img, None, config.size).expect("resize");
        let served = preprocess(&std::fs::read(&s.path).expect("read"), &config).expect("preprocess");
        if img.width().min(img.height()) <= config.size * 2 {
            assert_eq!(from_cache, served, "{}", s.path.display());
        }
    }
}
