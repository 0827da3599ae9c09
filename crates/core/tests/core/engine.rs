//! The serving engine: answers name the model that computed them, through reloads; bad
//! inputs fail alone; without a model every request says why.
use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use catsdogs_core::batcher::BatcherConfig;
use catsdogs_core::{BackendKind, Classifier, ClassifyError, EngineConfig, ImageInput};
use catsdogs_model::preprocess::PreprocessError;

pub fn config(model_dir: &Path) -> EngineConfig {
    EngineConfig {
        model_dir: model_dir.to_path_buf(),
        backend: BackendKind::Onnxruntime,
        inference_threads: 1,
        tta_flip: false,
        batching: BatcherConfig { max_batch: 4, max_wait: Duration::from_millis(2), queue_capacity: 64, workers: 1 },
        max_concurrent_decodes: 2,
        max_decode_bytes: catsdogs_core::DEFAULT_MAX_DECODE_BYTES,
        decode_budget_bytes: catsdogs_core::DEFAULT_DECODE_BUDGET_BYTES,
    }
}

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 90]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png).expect("encode");
    out.into_inner()
}

/// Points `link` at `target` atomically.
fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename");
}

pub async fn answers_carry_the_version_of_the_model_that_computed_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let current = dir.path().join("current");
    point(&current, &catsdogs_testkit::seed_cnn_dir());
    let cfg = config(&current);
    let engine = Classifier::new(cfg.clone(), Classifier::load(&cfg).await);
    let seed = engine.classify(ImageInput::Encoded(png())).await.expect("seed answer");
    let seed_version = engine.current_version().expect("loaded");
    assert_eq!(&*seed.model_version, seed_version);

    // A request that pinned the seed model before the reload still answers with it.
    let pinned = engine.serving().expect("serving");
    point(&current, &catsdogs_testkit::default_model_dir());
    let change = engine.reload().await.expect("reload");
    assert_eq!(change.previous.map(|p| p.0), Some(seed_version.clone()));
    let effnet = engine.classify(ImageInput::Encoded(png())).await.expect("effnet answer");
    assert_eq!(&*effnet.model_version, change.current.0);
    assert_ne!(effnet.model_version, seed.model_version);
    assert!((effnet.p_dog - seed.p_dog).abs() > 1e-4, "the two models disagree on this image");
    assert_eq!(&*pinned.version, seed_version);
    let again = pinned.model.predict_bytes(&png()).expect("old model still runs");
    assert!((again.p_dog - seed.p_dog).abs() <= 1e-5 * seed.p_dog.abs().max(1.0));
}

pub async fn a_bad_input_fails_alone() {
    let cfg = config(&catsdogs_testkit::seed_cnn_dir());
    let engine = Classifier::new(cfg.clone(), Classifier::load(&cfg).await);
    let results = engine
        .classify_all(vec![
            ImageInput::Encoded(png()),
            ImageInput::Encoded(b"not an image".to_vec()),
            ImageInput::Encoded(Vec::new()),
        ])
        .await
        .expect("a model is loaded");
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert_eq!(results[1].as_ref().err(), Some(&ClassifyError::Input(PreprocessError::UnsupportedFormat)));
    assert_eq!(results[2].as_ref().err(), Some(&ClassifyError::Input(PreprocessError::Empty)));
    let ok = results[0].as_ref().expect("ok");
    assert_eq!(ok.label(), catsdogs_model::Label::from_p_dog(ok.p_dog));
    assert!(ok.timings.batch_size >= 1);
}

pub async fn without_a_model_every_request_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let engine = Classifier::new(cfg.clone(), Classifier::load(&cfg).await);
    let err = engine.classify(ImageInput::Encoded(png())).await.expect_err("no model");
    assert!(matches!(&err, ClassifyError::NoModel(why) if why.contains("model.json")), "{err:?}");
    assert_eq!(err.code(), "model_unavailable");
    assert!(engine.reload().await.is_err(), "an empty directory still has no model");
}

/// A model directory copied and given a new version keeps its parent's `reference.json`:
/// it is not used (its P(dog) and embeddings are another model's); the right one is.
pub fn a_drift_reference_of_another_version_is_not_used() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seed = catsdogs_testkit::seed_cnn_dir();
    for f in ["model.onnx", "model.safetensors", "reference.json"] {
        std::fs::copy(seed.join(f), tmp.path().join(f)).expect("copy");
    }
    let mut card = catsdogs_model::card::ModelCard::load(&seed.join("model.json")).expect("card");
    let shipped = catsdogs_core::LoadedModel::load(&seed, BackendKind::Onnxruntime, 1).expect("load shipped");
    assert!(
        shipped.reference.as_ref().is_some_and(|r| r.model_version == card.version),
        "the shipped reference is used"
    );
    card.version = "seed-cnn-copy".into();
    card.save(&tmp.path().join("model.json")).expect("save");
    let copy = catsdogs_core::LoadedModel::load(tmp.path(), BackendKind::Onnxruntime, 1).expect("load copy");
    assert!(copy.reference.is_none(), "a reference of {} used for seed-cnn-copy", shipped.card.version);
}
