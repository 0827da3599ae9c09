//! A tiny training run on generated images: the loss goes down, the saved model reloads
//! bit-identically, and `resume` continues the same run.
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use catsdogs_model::preprocess::PreprocessConfig;
use catsdogs_model::seed_cnn::{self, SeedCnn};
use catsdogs_train::seed_cnn::{TrainConfig, train};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Cats are reddish with horizontal stripes, dogs bluish with vertical stripes, plus noise.
fn make_dataset(dir: &Path, per_class: usize) {
    let mut rng = StdRng::seed_from_u64(3);
    for (label, sub) in [(0u8, "cat"), (1u8, "dog")] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).expect("mkdir");
        for i in 0..per_class {
            let phase: u32 = rng.random_range(0..8);
            let img = RgbImage::from_fn(40, 40, |x, y| {
                let stripe = if label == 0 { (y + phase) / 4 % 2 } else { (x + phase) / 4 % 2 } == 0;
                let n: i32 = rng.random_range(-30..30);
                let base: [i32; 3] = if label == 0 { [190, 90, 70] } else { [70, 100, 190] };
                let k = if stripe { 40 } else { -40 };
                Rgb(base.map(|c| (c + k + n).clamp(0, 255) as u8))
            });
            img.save(d.join(format!("{i}.png"))).expect("save");
        }
    }
    // One corrupt file per class: counted and skipped, never fatal.
    std::fs::write(dir.join("cat/broken.jpg"), b"\xFF\xD8\xFF\xE0 not really a jpeg").expect("write");
}

fn tiny_config(data: &Path, out: &Path, epochs: usize) -> TrainConfig {
    let mut cfg = TrainConfig::new(data.to_path_buf(), out.to_path_buf());
    cfg.epochs = epochs;
    cfg.steps_per_epoch = Some(6);
    cfg.batch_size = 16;
    cfg.learning_rate = 5e-3;
    cfg.patience = 100;
    cfg.preprocess = PreprocessConfig { size: 32, ..PreprocessConfig::default() };
    cfg.model = seed_cnn::Config { input_size: 32, channels: [8, 16, 16], dropout: 0.0, batch_norm: true };
    cfg.progress = false;
    cfg
}

pub fn tiny_run_learns_saves_and_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    make_dataset(&data, 60);

    let out = tmp.path().join("run");
    let outcome = train(&tiny_config(&data, &out, 4)).expect("training");
    let h = &outcome.history;
    assert_eq!(h.len(), 4);
    assert!(h[3].val_loss < h[0].val_loss, "validation loss fell: {h:?}");
    let val = outcome.card.validation.as_ref().expect("metrics");
    assert!(val.accuracy >= 0.8, "easy generated task learned: {val:?}");
    assert_eq!(outcome.card.data.as_ref().map(|d| d.skipped), Some(1));
    for f in [
        "model.safetensors",
        "model.json",
        "history.csv",
        "training_curves.png",
        "roc_curve.svg",
        "reliability.png",
        "confusion_matrix.png",
    ] {
        assert!(out.join(f).is_file(), "{f} written");
    }

    // Reload: the saved tensors survive a load -> save -> load round trip bit for bit.
    let dev = Device::Cpu;
    let saved = candle_core::safetensors::load(out.join("model.safetensors"), &dev).expect("load");
    let cfg: seed_cnn::Config = serde_json::from_value(outcome.card.architecture_config.clone()).expect("config");
    assert!(!cfg.batch_norm, "shipped config has batch norm folded");
    let model = SeedCnn::load(VarBuilder::from_tensors(saved.clone(), DType::F32, &dev), &cfg).expect("build");
    let again = model.inference_tensors().expect("tensors");
    for (name, t) in &saved {
        let a: Vec<u32> =
            t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("read").iter().map(|v| v.to_bits()).collect();
        let b: Vec<u32> = again[name]
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("read")
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(a, b, "{name} reloads bit-identically");
    }

    // Resume: a run stopped after 2 of 4 epochs and resumed repeats the same history.
    let out2 = tmp.path().join("run2");
    let mut first_half = tiny_config(&data, &out2, 4);
    first_half.stop_after = Some(2);
    assert_eq!(train(&first_half).expect("first half").history.len(), 2);
    let mut cfg = tiny_config(&data, &out2, 4);
    cfg.resume = true;
    let resumed = train(&cfg).expect("resumed");
    assert_eq!(resumed.history.len(), 4);
    for (a, b) in h.iter().zip(&resumed.history) {
        assert!((a.train_loss - b.train_loss).abs() < 1e-4, "epoch {}: {} vs {}", a.epoch, a.train_loss, b.train_loss);
    }
}

pub fn averaged_weights_resume_exactly_and_fine_tuning_starts_from_a_model() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    make_dataset(&data, 60);
    let averaged = |out: &Path| {
        let mut cfg = tiny_config(&data, out, 4);
        cfg.ema_decay = Some(0.9);
        cfg
    };

    let out = tmp.path().join("ema");
    let whole = train(&averaged(&out)).expect("averaged run");
    let training = whole.card.training.as_ref().expect("training summary");
    assert_eq!(training.weight_average_decay, Some(0.9));
    assert!(tmp.path().join("ema/checkpoint/average.safetensors").is_file());

    // The average is checkpointed: a stopped and resumed run validates the same weights.
    let out2 = tmp.path().join("ema2");
    let mut first_half = averaged(&out2);
    first_half.stop_after = Some(2);
    train(&first_half).expect("first half");
    let mut rest = averaged(&out2);
    rest.resume = true;
    let resumed = train(&rest).expect("resumed");
    for (a, b) in whole.history.iter().zip(&resumed.history) {
        assert!((a.val_loss - b.val_loss).abs() < 1e-4, "epoch {}: {} vs {}", a.epoch, a.val_loss, b.val_loss);
    }

    // Fine-tuning the shipped (batch norm folded) weights starts where that model stands.
    let tuned_out = tmp.path().join("tuned");
    let mut tune = tiny_config(&data, &tuned_out, 1);
    tune.model.batch_norm = false;
    tune.learning_rate = 1e-9;
    tune.init_weights = Some(out.join("model.safetensors"));
    let tuned = train(&tune).expect("fine-tuning");
    let before = whole.card.validation.as_ref().expect("metrics").log_loss;
    let after = tuned.card.validation.as_ref().expect("metrics").log_loss;
    assert!((before - after).abs() < 1e-3, "a negligible step keeps the model: {before} vs {after}");
    let from = tuned.card.training.as_ref().and_then(|t| t.fine_tuned_from.clone()).expect("recorded");
    assert!(from.starts_with("seed-cnn-1 ("), "card names the base model: {from}");
}
