//! Training the seed CNN in candle: seeded split, in-memory decoded photos, on-the-fly
//! augmentation decoded in parallel, AdamW with warm-up + cosine schedule, label
//! smoothing, early stopping, per-epoch checkpoints and `--resume`.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use catsdogs_model::Label;
use catsdogs_model::augment::Augment;
use catsdogs_model::card::{Architecture, DataSummary, ModelCard, Preprocessing, TrainingSummary};

use crate::data::{self, CAT, DOG};
use crate::optim::{AdamW, WeightAverage};
use crate::plots;
use catsdogs_model::metrics::{self, Metrics};
use catsdogs_model::preprocess::{self, PreprocessConfig};
use catsdogs_model::seed_cnn::{self, SeedCnn};

/// Errors of a training or evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("model error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Preprocess(#[from] preprocess::PreprocessError),
    #[error(transparent)]
    Card(#[from] catsdogs_model::card::CardError),
    #[error("plot error: {0}")]
    Plot(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("invalid checkpoint state {path}: {source}")]
    State { path: PathBuf, source: serde_json::Error },
    #[error("no usable images: {0}")]
    Empty(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TrainError + 'a {
    move |source| TrainError::Io { what, path: path.to_path_buf(), source }
}

/// Everything a training run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub data_dir: PathBuf,
    pub out_dir: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    pub val_fraction: f64,
    pub seed: u64,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    /// Use at most this many images per class (quick runs); `None` = all.
    pub max_per_class: Option<usize>,
    /// Optimisation steps per epoch (`None` = one pass over the training split).
    pub steps_per_epoch: Option<usize>,
    /// Stop this invocation after this many epochs (continue later with `resume`).
    pub stop_after: Option<usize>,
    pub augment: Augment,
    pub preprocess: PreprocessConfig,
    pub model: seed_cnn::Config,
    pub version: String,
    pub resume: bool,
    pub progress: bool,
    /// Start from these weights (a trained model's `model.safetensors`, same architecture)
    /// instead of a random initialisation: fine-tuning.
    #[serde(default)]
    pub init_weights: Option<PathBuf>,
    /// More training examples (a `cat/` `dog/` folder, e.g. user feedback), added to the
    /// training split only, each drawn `extra_weight` times per pass.
    #[serde(default)]
    pub extra_data: Option<PathBuf>,
    #[serde(default = "one")]
    pub extra_weight: usize,
    /// Evaluate, keep and ship an exponential moving average of the weights with this
    /// decay per step (e.g. 0.999) instead of the last iterate; `None` = no averaging.
    #[serde(default)]
    pub ema_decay: Option<f64>,
    /// Knowledge distillation: a stronger model's P(dog) per training file, blended into
    /// the targets. Not serialised (the card records the teacher's name and weight).
    #[serde(skip)]
    pub teacher: Option<TeacherTargets>,
}

/// A teacher's predictions on the training photos, for distillation: each target becomes
/// `(1 - weight) * label + weight * P_teacher(dog)` (then smoothed). The teacher's soft targets
/// tell the student which photos are ambiguous instead of forcing every one to 0 or 1.
#[derive(Debug, Clone, Default)]
pub struct TeacherTargets {
    /// Model version of the teacher (recorded in the card).
    pub name: String,
    /// Blend weight of the teacher's probability, in [0, 1].
    pub weight: f64,
    /// P(dog) by file path, as `data::scan` lists it.
    pub p_dog: std::collections::HashMap<PathBuf, f32>,
}

impl TeacherTargets {
    /// The training target of one photo: its label blended with the teacher's P(dog).
    fn target(&self, path: &Path, label: u8) -> f32 {
        let hard = f32::from(label);
        match self.p_dog.get(path) {
            Some(&p) => (1.0 - self.weight as f32) * hard + self.weight as f32 * p,
            None => hard,
        }
    }
}

fn one() -> usize {
    1
}

impl TrainConfig {
    /// Defaults for `data_dir` -> `out_dir`.
    pub fn new(data_dir: PathBuf, out_dir: PathBuf) -> Self {
        Self {
            data_dir,
            out_dir,
            epochs: 20,
            batch_size: 32,
            learning_rate: 2e-3,
            weight_decay: 1e-4,
            label_smoothing: 0.05,
            val_fraction: 0.2,
            seed: 42,
            patience: 4,
            max_per_class: None,
            steps_per_epoch: None,
            stop_after: None,
            augment: Augment::default(),
            preprocess: PreprocessConfig::default(),
            model: seed_cnn::Config { batch_norm: true, ..seed_cnn::Config::default() },
            version: "seed-cnn-1".into(),
            resume: false,
            progress: true,
            init_weights: None,
            extra_data: None,
            extra_weight: 1,
            ema_decay: None,
            teacher: None,
        }
    }
}

/// One line of `history.csv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_auc: f64,
    pub images_per_s: f64,
    pub seconds: f64,
}

/// What is kept between epochs so `--resume` continues the same run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    next_epoch: usize,
    best_val_loss: f64,
    best_epoch: usize,
    history: Vec<EpochRecord>,
    wall_time_s: f64,
    images_seen: usize,
}

/// Result of a finished run.
pub struct TrainOutcome {
    pub card: ModelCard,
    pub history: Vec<EpochRecord>,
    pub out_dir: PathBuf,
}

/// Stacks `size x size` RGB images into a `u8` NHWC tensor.
pub fn batch_tensor(images: &[RgbImage], size: u32) -> candle_core::Result<Tensor> {
    let s = size as usize;
    let mut buf = Vec::with_capacity(images.len() * s * s * 3);
    for img in images {
        buf.extend_from_slice(img.as_raw());
    }
    Tensor::from_vec(buf, (images.len(), s, s, 3), &Device::Cpu)
}

/// P(dog) of already-resized images, with the candle model, in batches.
pub fn predict_batched(model: &SeedCnn, images: &[RgbImage], size: u32, batch: usize) -> candle_core::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        let logits = model.forward_logits(&batch_tensor(chunk, size)?, false)?;
        out.extend(candle_nn::ops::sigmoid(&logits)?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Learning rate at `step` of `total`: linear warm-up over `warmup` steps, then cosine to 5 %.
pub fn lr_at(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    base * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()))
}

/// Mean binary cross-entropy of logits against 0/1 labels smoothed towards 1/2, computed
/// as softplus(z) - y z (stable for large logits, unlike log(sigmoid)).
pub fn smoothed_bce(logits: &Tensor, labels: &Tensor, smoothing: f64) -> candle_core::Result<Tensor> {
    let y = labels.affine(1.0 - smoothing, 0.5 * smoothing)?;
    let softplus = (logits.relu()? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    (softplus - (y * logits)?)?.mean_all()
}

/// A fresh seed CNN with its variables and optimiser, as training starts it.
fn new_model(
    model: &seed_cnn::Config,
    seed: u64,
    lr: f64,
    weight_decay: f64,
) -> Result<(SeedCnn, VarMap, AdamW), TrainError> {
    let varmap = VarMap::new();
    {
        let mut vars = varmap.data().lock().map_err(|_| poisoned())?;
        for (name, t) in SeedCnn::initial_tensors(model, seed)? {
            vars.insert(name, candle_core::Var::from_tensor(&t)?);
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = SeedCnn::load(vb, model)?;
    let opt = AdamW::new(named_vars(&varmap)?, lr, weight_decay)?;
    Ok((net, varmap, opt))
}

fn poisoned() -> TrainError {
    TrainError::Empty("poisoned var map".into())
}

/// Every variable of `varmap` with its name, for the optimiser and the weight average.
fn named_vars(varmap: &VarMap) -> Result<Vec<(String, candle_core::Var)>, TrainError> {
    let vars = varmap.data().lock().map_err(|_| poisoned())?;
    Ok(vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Training speed of the seed CNN in images/s: full training steps (forward with batch
/// statistics and dropout, loss, backward, AdamW) on random `u8` batches for about `secs`
/// after two warm-up steps; what `catsdogs-bench` compares with Keras and PyTorch.
pub fn training_speed(model: &seed_cnn::Config, batch: usize, secs: f64) -> Result<f64, TrainError> {
    let (net, _vars, mut opt) = new_model(model, 1, 1e-3, 1e-4)?;
    let s = model.input_size;
    let dev = Device::Cpu;
    let x = Tensor::rand(0f32, 255f32, (batch, s, s, 3), &dev)?.to_dtype(DType::U8)?;
    let y = Tensor::rand(0f32, 1f32, batch, &dev)?.round()?;
    let mut step = || -> Result<(), TrainError> {
        let loss = smoothed_bce(&net.forward_logits(&x, true)?, &y, 0.0)?;
        opt.backward_step(&loss)?;
        Ok(())
    };
    step()?;
    step()?;
    let started = Instant::now();
    let mut images = 0;
    while started.elapsed().as_secs_f64() < secs || images == 0 {
        step()?;
        images += batch;
    }
    Ok(images as f64 / started.elapsed().as_secs_f64())
}

/// Validation pass: whole image squashed to the input size, as serving does.
fn evaluate(model: &SeedCnn, set: &data::DecodedSet, cfg: &TrainConfig) -> Result<(Vec<f32>, Metrics), TrainError> {
    let resized: Vec<RgbImage> = set
        .images
        .par_iter()
        .map(|img| preprocess::resize_rgb(img, None, cfg.preprocess.size))
        .collect::<Result<_, _>>()?;
    let p = predict_batched(model, &resized, cfg.preprocess.size, 64)?;
    let m = metrics::compute(&p, &set.labels);
    Ok((p, m))
}

/// Runs (or resumes) training and writes model, card, history and plots to `out_dir`.
pub fn train(cfg: &TrainConfig) -> Result<TrainOutcome, TrainError> {
    std::fs::create_dir_all(&cfg.out_dir).map_err(io_err("cannot create", &cfg.out_dir))?;
    let ckpt_dir = cfg.out_dir.join("checkpoint");
    std::fs::create_dir_all(&ckpt_dir).map_err(io_err("cannot create", &ckpt_dir))?;

    let all = data::scan(&cfg.data_dir)?;
    let digest = data::digest(&all);
    let (mut train_s, mut val_s) = data::split(&all, cfg.val_fraction, cfg.seed);
    if let Some(n) = cfg.max_per_class {
        let cap = |v: &mut Vec<data::Sample>, n: usize| {
            let mut kept = Vec::new();
            for label in [CAT, DOG] {
                kept.extend(v.iter().filter(|s| s.label == label).take(n).cloned());
            }
            *v = kept;
        };
        cap(&mut train_s, n);
        cap(&mut val_s, (n as f64 * cfg.val_fraction / (1.0 - cfg.val_fraction)).ceil() as usize);
    }
    tracing::info!(train = train_s.len(), val = val_s.len(), "decoding images");
    let bound = cfg.preprocess.size * 2;
    let mut train_set = data::decode_all(&train_s, cfg.preprocess.max_pixels, bound);
    let val_set = data::decode_all(&val_s, cfg.preprocess.max_pixels, bound);
    let count = |set: &data::DecodedSet, l: u8| set.labels.iter().filter(|&&x| x == l).count();
    let (train_cat, train_dog) = (count(&train_set, CAT), count(&train_set, DOG));
    let mut skipped = train_set.skipped.len() + val_set.skipped.len();
    for (path, why) in train_set.skipped.iter().chain(&val_set.skipped) {
        tracing::warn!(path = %path.display(), reason = %why, "skipped unreadable image");
    }
    if let Some(dir) = &cfg.extra_data {
        let extra = data::decode_all(&data::scan_labelled(dir)?, cfg.preprocess.max_pixels, bound);
        for (path, why) in &extra.skipped {
            tracing::warn!(path = %path.display(), reason = %why, "skipped unreadable extra image");
        }
        skipped += extra.skipped.len();
        tracing::info!(extra = extra.images.len(), weight = cfg.extra_weight, "extra training examples");
        for _ in 0..cfg.extra_weight.max(1) {
            train_set.images.extend(extra.images.iter().cloned());
            train_set.labels.extend(&extra.labels);
            train_set.paths.extend(extra.paths.iter().cloned());
        }
    }
    if train_set.images.is_empty() || val_set.images.is_empty() {
        return Err(TrainError::Empty(format!(
            "{} train / {} validation images decoded",
            train_set.images.len(),
            val_set.images.len()
        )));
    }

    let (model, varmap, mut opt) = new_model(&cfg.model, cfg.seed, cfg.learning_rate, cfg.weight_decay)?;

    let state_path = ckpt_dir.join("state.json");
    let mut state = RunState {
        next_epoch: 0,
        best_val_loss: f64::INFINITY,
        best_epoch: 0,
        history: Vec::new(),
        wall_time_s: 0.0,
        images_seen: 0,
    };
    let mut varmap = varmap;
    if cfg.resume && state_path.exists() {
        let text = std::fs::read_to_string(&state_path).map_err(io_err("cannot read", &state_path))?;
        state = serde_json::from_str(&text).map_err(|source| TrainError::State { path: state_path.clone(), source })?;
        varmap.load(ckpt_dir.join("model.safetensors"))?;
        opt.load(&ckpt_dir.join("optimizer.safetensors"))?;
        tracing::info!(epoch = state.next_epoch, "resumed from checkpoint");
    } else if let Some(init) = &cfg.init_weights {
        varmap.load(init)?;
        tracing::info!(from = %init.display(), "fine-tuning from trained weights");
    }

    let mut average = match cfg.ema_decay {
        Some(decay) => {
            let mut avg = WeightAverage::new(named_vars(&varmap)?, decay)?;
            let saved = ckpt_dir.join("average.safetensors");
            if cfg.resume && state.next_epoch > 0 {
                avg.load(&saved)?;
            }
            Some(avg)
        }
        None => None,
    };

    let n_train = train_set.images.len();
    // Loss targets: the labels, or blended with the teacher's soft targets (distillation).
    let targets: Vec<f32> = train_set
        .paths
        .iter()
        .zip(&train_set.labels)
        .map(|(p, &l)| cfg.teacher.as_ref().map_or(f32::from(l), |t| t.target(p, l)))
        .collect();
    if let Some(t) = &cfg.teacher {
        let covered = train_set.paths.iter().filter(|p| t.p_dog.contains_key(*p)).count();
        tracing::info!(teacher = %t.name, weight = t.weight, covered, of = n_train, "distilling");
    }
    let steps_per_epoch = cfg.steps_per_epoch.unwrap_or(n_train / cfg.batch_size).max(1);
    let total_steps = steps_per_epoch * cfg.epochs;
    let warmup = (steps_per_epoch / 2).clamp(1, 300);
    let size = cfg.preprocess.size;
    let mut order: Vec<usize> = Vec::new();
    let mut cursor = usize::MAX;

    let first_epoch = state.next_epoch;
    let mut epoch = first_epoch;
    while epoch < cfg.epochs {
        let epoch_start = Instant::now();
        let bar = if cfg.progress { ProgressBar::new(steps_per_epoch as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, cfg.epochs));
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let mut lr = cfg.learning_rate;
        for step_in_epoch in 0..steps_per_epoch {
            if cursor.saturating_add(cfg.batch_size) > order.len() {
                // A fresh permutation per pass; seeded by pass number so resume reproduces it.
                order = (0..n_train).collect();
                let pass = (epoch * steps_per_epoch + step_in_epoch) * cfg.batch_size / n_train.max(1);
                order.shuffle(&mut StdRng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(pass as u64)));
                cursor = 0;
            }
            let idx = &order[cursor..cursor + cfg.batch_size.min(n_train)];
            cursor += idx.len();
            let global_step = epoch * steps_per_epoch + step_in_epoch;
            let views: Vec<RgbImage> = idx
                .par_iter()
                .enumerate()
                .map(|(k, &i)| {
                    let mut rng = StdRng::seed_from_u64(cfg.seed ^ ((global_step as u64) << 20) ^ k as u64);
                    cfg.augment.apply(&train_set.images[i], size, &mut rng)
                })
                .collect::<Result<_, _>>()?;
            let labels: Vec<f32> = idx.iter().map(|&i| f32::from(train_set.labels[i])).collect();
            let batch_targets: Vec<f32> = idx.iter().map(|&i| targets[i]).collect();
            let x = batch_tensor(&views, size)?;
            let y = Tensor::from_vec(batch_targets, labels.len(), &Device::Cpu)?;
            lr = lr_at(cfg.learning_rate, global_step, warmup, total_steps);
            opt.lr = lr;
            let logits = model.forward_logits(&x, true)?;
            let loss = smoothed_bce(&logits, &y, cfg.label_smoothing)?;
            opt.backward_step(&loss)?;
            if let Some(avg) = &mut average {
                avg.update()?;
            }
            let l = f64::from(loss.to_scalar::<f32>()?);
            let logits_v = logits.to_vec1::<f32>()?;
            correct += logits_v.iter().zip(&labels).filter(|(z, y)| (**z >= 0.0) == (**y >= 0.5)).count();
            seen += labels.len();
            loss_sum += l * labels.len() as f64;
            let ips = seen as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} acc {:.1}% {:.0} img/s lr {:.1e}",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64,
                ips,
                lr
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_secs = epoch_start.elapsed().as_secs_f64();
        // With averaging, validation and the saved best model use the averaged weights.
        let last_iterate = average.as_ref().map(WeightAverage::swap_in).transpose()?;
        let (_, val) = evaluate(&model, &val_set, cfg)?;
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_loss: val.log_loss,
            val_accuracy: val.accuracy,
            val_auc: val.roc_auc,
            images_per_s: seen as f64 / train_secs.max(1e-9),
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        let line = format!(
            "epoch {:>3}: train loss {:.4} acc {:.2}% | val loss {:.4} acc {:.2}% auc {:.4} | {:.1} img/s, {:.0} s",
            record.epoch,
            record.train_loss,
            100.0 * record.train_accuracy,
            record.val_loss,
            100.0 * record.val_accuracy,
            record.val_auc,
            record.images_per_s,
            record.seconds
        );
        if cfg.progress {
            bar.println(&line)
        }
        tracing::info!("{line}");
        state.images_seen += seen;
        if record.val_loss < state.best_val_loss {
            state.best_val_loss = record.val_loss;
            state.best_epoch = record.epoch;
            candle_core::safetensors::save(&model.inference_tensors()?, cfg.out_dir.join("model.safetensors"))?;
            varmap.save(ckpt_dir.join("best.safetensors"))?;
        }
        if let (Some(avg), Some(saved)) = (&average, &last_iterate) {
            avg.restore(saved)?;
            avg.save(&ckpt_dir.join("average.safetensors"))?;
        }
        state.history.push(record);
        state.next_epoch = epoch + 1;
        state.wall_time_s += epoch_start.elapsed().as_secs_f64();
        varmap.save(ckpt_dir.join("model.safetensors"))?;
        opt.save(&ckpt_dir.join("optimizer.safetensors"))?;
        let text = serde_json::to_string_pretty(&state)
            .map_err(|source| TrainError::State { path: state_path.clone(), source })?;
        std::fs::write(&state_path, text).map_err(io_err("cannot write", &state_path))?;
        write_history(&cfg.out_dir.join("history.csv"), &state.history)?;
        if cfg.stop_after.is_some_and(|n| state.next_epoch >= first_epoch + n) {
            tracing::info!(epoch = state.next_epoch, "stopping as asked; continue with --resume");
            break;
        }
        if state.next_epoch - state.best_epoch >= cfg.patience {
            tracing::info!(best_epoch = state.best_epoch, "early stopping");
            break;
        }
        epoch += 1;
    }

    // Final: best weights, full validation metrics, card and plots.
    varmap.load(ckpt_dir.join("best.safetensors"))?;
    let (p_val, val) = evaluate(&model, &val_set, cfg)?;
    let inference_tensors = model.inference_tensors()?;
    let parameters = inference_tensors.values().map(|t| t.elem_count()).sum();
    // The shipped network has batch norm folded in: its card describes it without.
    let shipped_config = seed_cnn::Config { batch_norm: false, ..cfg.model.clone() };
    let card = ModelCard {
        format: catsdogs_model::card::CARD_FORMAT,
        name: "catsdogs".into(),
        version: cfg.version.clone(),
        architecture: Architecture::SeedCnn,
        architecture_config: serde_json::to_value(&shipped_config).unwrap_or_default(),
        classes: Label::ALL.to_vec(),
        parameters,
        preprocessing: Preprocessing::standard(cfg.preprocess),
        threshold: 0.5,
        data: Some(DataSummary {
            source: cfg.data_dir.display().to_string(),
            train_cat,
            train_dog,
            val_cat: count(&val_set, CAT),
            val_dog: count(&val_set, DOG),
            skipped,
            split_seed: cfg.seed,
            val_fraction: cfg.val_fraction,
            digest,
        }),
        training: Some(TrainingSummary {
            epochs: state.history.len(),
            best_epoch: state.best_epoch,
            batch_size: cfg.batch_size,
            learning_rate: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            label_smoothing: cfg.label_smoothing,
            distillation: cfg
                .teacher
                .as_ref()
                .map(|t| catsdogs_model::card::Distillation { teacher: t.name.clone(), weight: t.weight }),
            batch_norm: cfg.model.batch_norm,
            weight_average_decay: cfg.ema_decay,
            fine_tuned_from: cfg.init_weights.as_deref().map(describe_weights),
            augment: cfg.augment,
            wall_time_s: state.wall_time_s,
            train_images_per_s: state.images_seen as f64
                / state.history.iter().map(|h| h.seconds).sum::<f64>().max(1e-9),
        }),
        validation: Some(val),
        created_at: chrono::Utc::now().to_rfc3339(),
        weights: "model.safetensors".into(),
        onnx: None,
        lineage: None,
        outputs: Vec::new(),
    };
    card.save(&cfg.out_dir.join("model.json"))?;
    plots::training_curves(&cfg.out_dir, &state.history).map_err(TrainError::Plot)?;
    plots::evaluation_plots(&cfg.out_dir, &p_val, &val_set.labels).map_err(TrainError::Plot)?;
    Ok(TrainOutcome { card, history: state.history, out_dir: cfg.out_dir.clone() })
}

/// Names a weights file for the card: the model version from the card beside it, if any.
fn describe_weights(path: &Path) -> String {
    let card = path.parent().map(|d| d.join("model.json")).and_then(|c| ModelCard::load(&c).ok());
    match card {
        Some(card) => format!("{} ({})", card.version, path.display()),
        None => path.display().to_string(),
    }
}

fn write_history(path: &Path, history: &[EpochRecord]) -> Result<(), TrainError> {
    let mut f = std::fs::File::create(path).map_err(io_err("cannot write", path))?;
    let mut text =
        String::from("epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,val_auc,images_per_s,seconds\n");
    for h in history {
        text.push_str(&format!(
            "{},{:.6e},{:.6},{:.6},{:.6},{:.6},{:.6},{:.2},{:.1}\n",
            h.epoch,
            h.lr,
            h.train_loss,
            h.train_accuracy,
            h.val_loss,
            h.val_accuracy,
            h.val_auc,
            h.images_per_s,
            h.seconds
        ));
    }
    f.write_all(text.as_bytes()).map_err(io_err("cannot write", path))
}
