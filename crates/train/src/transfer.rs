//! Transfer learning from the pretrained EfficientNet-Lite0: the frozen backbone runs in
//! ONNX Runtime over several views of every training photo (centre, mirror image, random
//! crops), its pooled features and the last block's 7x7 input are kept (optionally cached
//! on disk), a logistic cat/dog head is trained on the features, then the last block and
//! the 1x1 head convolution are tuned together with it ([`crate::tail_tuning`]). The
//! shipped model is one ONNX graph: backbone + tuned tail + calibrated classifier
//! (`p_dog`), plus the untouched ImageNet branch used to flag images that show neither a
//! cat nor a dog.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::data::{self, CAT, DOG, Sample};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use catsdogs_model::Label;
use catsdogs_model::augment::Augment;
use catsdogs_model::card::{Architecture, DataSummary, GraphOutput, ModelCard, Preprocessing};
use catsdogs_model::efficientnet_lite::{self, Config, EfficientNetLite, OnnxHeads};
use catsdogs_model::metrics::{self, Metrics};
use catsdogs_model::preprocess::{self, PreprocessConfig};
use image::RgbImage;
use ort::session::Session;
use ort::value::TensorRef;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::tail_tuning::{self, TrunkSet, TuneConfig, TuneEpoch};
use catsdogs_core::InferenceError;
use catsdogs_core::{ort_err, pack_nhwc, session_builder};

/// Errors of importing the checkpoint or training the head.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("cannot read the EfficientNet-Lite0 checkpoint {path}: {source}")]
    Checkpoint { path: String, source: candle_core::Error },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error(transparent)]
    Export(#[from] catsdogs_model::onnx::ExportError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Card(#[from] catsdogs_model::card::CardError),
    #[error("plot: {0}")]
    Plot(String),
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("no photo could be decoded")]
    NothingDecoded,
}

/// The ONNX metadata of a trained EfficientNet-Lite0 graph.
pub fn graph_metadata(version: &str, neither_threshold: Option<f32>) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    meta.insert("catsdogs.version".to_string(), version.to_string());
    if let Some(t) = neither_threshold {
        meta.insert("catsdogs.neither_threshold".to_string(), t.to_string());
    }
    meta
}

/// Reads the lukemelas-style checkpoint (`efficientnet-lite0-57934424.pth`).
pub fn load_backbone(pth: &Path) -> Result<EfficientNetLite, TransferError> {
    let path = pth.display().to_string();
    let tensors = catsdogs_model::pth::read_state_dict(pth)
        .map_err(|source| TransferError::Checkpoint { path: path.clone(), source })?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    EfficientNetLite::load(vb, &Config::lite0()).map_err(|source| TransferError::Checkpoint { path, source })
}

/// The backbone's ONNX graph in ONNX Runtime: features and ImageNet logits.
pub struct FeatureExtractor {
    session: Mutex<Session>,
    size: u32,
    pub feature_dim: usize,
    pub classes: usize,
}

/// Features and logits of a batch, row-major.
pub struct Features {
    pub features: Vec<f32>,
    pub logits: Vec<f32>,
    /// The last block's activations [N, 320, 7, 7], when the graph exports `trunk`.
    pub trunk: Option<Vec<f32>>,
}

impl FeatureExtractor {
    /// Builds a session from serialized ONNX bytes.
    pub fn from_onnx(bytes: &[u8], config: &Config, threads: usize) -> Result<Self, InferenceError> {
        let session = session_builder(threads)?.commit_from_memory(bytes).map_err(ort_err)?;
        Ok(Self {
            session: Mutex::new(session),
            size: config.input_size as u32,
            feature_dim: config.head_channels,
            classes: config.num_classes,
        })
    }

    pub fn run(&self, images: &[RgbImage]) -> Result<Features, InferenceError> {
        let s = self.size as usize;
        let buf = pack_nhwc(images, self.size)?;
        let input = TensorRef::from_array_view(([images.len(), s, s, 3], buf.as_slice())).map_err(ort_err)?;
        let mut session = self.session.lock().map_err(|_| InferenceError::Ort("session lock poisoned".into()))?;
        let out = session.run(ort::inputs!["image" => input]).map_err(ort_err)?;
        let (_, f) = out["features"].try_extract_tensor::<f32>().map_err(ort_err)?;
        let (_, l) = out["imagenet_logits"].try_extract_tensor::<f32>().map_err(ort_err)?;
        let trunk = match out.get("trunk") {
            Some(t) => Some(t.try_extract_tensor::<f32>().map_err(ort_err)?.1.to_vec()),
            None => None,
        };
        Ok(Features { features: f.to_vec(), logits: l.to_vec(), trunk })
    }
}

/// Settings of `catsdogs train --arch efficientnet-lite0`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferConfig {
    pub data_dir: PathBuf,
    pub pretrained: PathBuf,
    pub out_dir: PathBuf,
    pub val_fraction: f64,
    pub seed: u64,
    pub max_per_class: Option<usize>,
    /// Also extract features of each training photo's mirror image.
    pub flip_views: bool,
    /// Random augmented crops of each training photo, besides the centre view.
    pub random_views: usize,
    /// Epochs of head-convolution tuning after the logistic head (0: logistic head only).
    pub tune_epochs: usize,
    pub tune_learning_rate: f64,
    pub tune_dropout: f32,
    /// Folder where extracted features are kept between runs (keyed by data and views).
    pub feature_cache: Option<PathBuf>,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Candidates tried; the one with the best validation log loss is kept.
    pub weight_decays: Vec<f64>,
    pub label_smoothing: f64,
    pub threads: usize,
    pub version: String,
    /// Preprocessing geometry (see `PreprocessConfig::center_crop_from`; 0 = squash).
    pub center_crop_from: u32,
    /// More training examples (a `cat/` `dog/` folder, e.g. user feedback), added to the
    /// training split only, each repeated `extra_weight` times.
    #[serde(default)]
    pub extra_data: Option<PathBuf>,
    #[serde(default)]
    pub extra_weight: usize,
}

impl TransferConfig {
    pub fn new(data_dir: PathBuf, pretrained: PathBuf, out_dir: PathBuf) -> Self {
        Self {
            data_dir,
            pretrained,
            out_dir,
            val_fraction: 0.2,
            seed: 42,
            max_per_class: None,
            flip_views: true,
            random_views: 2,
            tune_epochs: 1,
            tune_learning_rate: 3e-4,
            tune_dropout: 0.0,
            feature_cache: None,
            epochs: 30,
            batch_size: 256,
            learning_rate: 3e-3,
            weight_decays: vec![1e-4, 1e-3, 1e-2],
            label_smoothing: 0.05,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            version: "effnet-lite0-tail-1".into(),
            center_crop_from: 256,
            extra_data: None,
            extra_weight: 1,
        }
    }
}

/// What the run measured, written into the card's `transfer` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferReport {
    pub feature_extraction_s: f64,
    /// The features were read from `--feature-cache` (the times are then not extraction's).
    #[serde(default)]
    pub features_from_cache: bool,
    pub feature_images_per_s: f64,
    pub head_training_s: f64,
    pub wall_time_s: f64,
    pub train_views: usize,
    pub weight_decay: f64,
    /// Validation metrics of the logistic head alone, before tail tuning (calibrated).
    #[serde(default)]
    pub val_logistic_only: Option<Metrics>,
    /// Head tuning per epoch (epoch 0 = the logistic head) and the epoch kept.
    #[serde(default)]
    #[serde(alias = "head_tuning")]
    pub tail_tuning: Vec<TuneEpoch>,
    #[serde(default)]
    #[serde(alias = "head_tuning_best_epoch")]
    pub tail_tuning_best_epoch: usize,
    pub temperature: f64,
    pub val_uncalibrated: Metrics,
    pub val: Metrics,
    /// ImageNet zero-shot (dog breeds vs domestic cats) on the validation split.
    pub zero_shot_val_accuracy: f64,
    /// Cat+dog ImageNet probability mass below which an image is flagged "neither".
    pub neither_threshold: f32,
    /// Share of validation photos (all cats or dogs) wrongly flagged "neither".
    pub neither_false_flag_rate: f64,
}

struct Extracted {
    features: Vec<f32>,
    labels: Vec<u8>,
    zero_shot: Vec<(f32, f32)>,
    /// Trunk activations [views, cells (7x7), 320] in f16 (absent unless the graph exports them).
    trunk: Option<Tensor>,
    skipped: usize,
}

/// Which views of a photo the backbone sees.
#[derive(Debug, Clone, Copy)]
struct Views {
    flip: bool,
    random: usize,
    seed: u64,
}

/// Mild crops for the random views: the backbone is frozen, so the views only need to
/// show the head the framings real uploads have, not regularise a whole network.
const VIEW_AUGMENT: Augment =
    Augment { min_area: 0.45, max_aspect: 4.0 / 3.0, max_rotation_deg: 0.0, jitter: 0.1, flip: 0.5 };

/// The centre view of a photo, its mirror image and `random` augmented crops.
fn views_of(bytes: &[u8], cfg: &PreprocessConfig, views: Views, index: usize) -> Option<Vec<RgbImage>> {
    // Random crops keep at least ~0.58 of the short side; the decode keeps twice the
    // geometry's need, so every view stays at full resolution.
    let rgb = preprocess::decode_rgb_at_least(bytes, cfg.max_pixels, preprocess::needed_short_side(cfg)).ok()?;
    let centre = preprocess::preprocess_pixels(&rgb, cfg).ok()?;
    let mut out = Vec::with_capacity(2 + views.random);
    if views.flip {
        out.push(image::imageops::flip_horizontal(&centre));
    }
    out.push(centre);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(
        views.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    for _ in 0..views.random {
        out.push(VIEW_AUGMENT.apply(&rgb, cfg.size, &mut rng).ok()?);
    }
    Some(out)
}

fn extract(
    fx: &FeatureExtractor,
    samples: &[Sample],
    cfg: &PreprocessConfig,
    views: Views,
    progress: &indicatif::ProgressBar,
) -> Result<Extracted, TransferError> {
    let mut out =
        Extracted { features: Vec::new(), labels: Vec::new(), zero_shot: Vec::new(), trunk: None, skipped: 0 };
    let mut trunk_chunks = Vec::new();
    for (c, chunk) in samples.chunks(64).enumerate() {
        let decoded: Vec<Option<(Vec<RgbImage>, u8)>> = chunk
            .par_iter()
            .enumerate()
            .map(|(i, s)| {
                let bytes = std::fs::read(&s.path).ok()?;
                views_of(&bytes, cfg, views, c * 64 + i).map(|v| (v, s.label))
            })
            .collect();
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for d in decoded {
            match d {
                Some((v, l)) => {
                    labels.extend(std::iter::repeat_n(l, v.len()));
                    images.extend(v);
                }
                None => out.skipped += 1,
            }
        }
        if images.is_empty() {
            continue;
        }
        let f = fx.run(&images)?;
        out.features.extend_from_slice(&f.features);
        out.zero_shot.extend(f.logits.chunks(fx.classes).map(efficientnet_lite::zero_shot));
        if let Some(t) = f.trunk {
            let n = images.len();
            // The trunk's grid: the input side over the backbone's total stride of 32.
            let cells = (cfg.size as usize / 32).pow(2);
            let channels = t.len() / n / cells;
            // NCHW -> [N, cells, channels]: each pointwise convolution becomes one matrix product.
            let t = Tensor::from_vec(t, (n, channels, cells), &Device::Cpu)?.transpose(1, 2)?;
            trunk_chunks.push(t.to_dtype(DType::F16)?);
        }
        out.labels.extend(labels);
        progress.inc(chunk.len() as u64);
    }
    if !trunk_chunks.is_empty() {
        out.trunk = Some(Tensor::cat(&trunk_chunks, 0)?);
    }
    Ok(out)
}

/// The file that holds the extracted features of one data set and set of views.
fn cache_file(cfg: &TransferConfig, digest: &str, tune: bool) -> Option<PathBuf> {
    let dir = cfg.feature_cache.as_ref()?;
    let key = format!(
        // "trunk=block-input": the cached trunk is the last block's input (7x7x192), not
        // its output as in earlier versions, whose caches must not be read.
        "{digest}-{}-{}-{}-{}-{}-{:?}-{}-{}-trunk=block-input",
        cfg.flip_views,
        cfg.random_views,
        cfg.center_crop_from,
        cfg.seed,
        cfg.val_fraction,
        cfg.max_per_class,
        tune,
        env!("CARGO_PKG_VERSION")
    );
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&key, &mut h);
    Some(dir.join(format!("features-{:016x}.safetensors", std::hash::Hasher::finish(&h))))
}

fn save_cache(path: &Path, sets: [&Extracted; 2]) -> Result<(), TransferError> {
    let dev = Device::Cpu;
    let mut map = std::collections::HashMap::new();
    for (name, e) in ["train", "val"].into_iter().zip(sets) {
        let n = e.labels.len();
        map.insert(
            format!("{name}.features"),
            Tensor::from_slice(&e.features, (n, e.features.len() / n.max(1)), &dev)?,
        );
        map.insert(format!("{name}.labels"), Tensor::from_slice(&e.labels, n, &dev)?);
        let zs: Vec<f32> = e.zero_shot.iter().flat_map(|&(p, m)| [p, m]).collect();
        map.insert(format!("{name}.zero_shot"), Tensor::from_vec(zs, (n, 2), &dev)?);
        map.insert(format!("{name}.skipped"), Tensor::new(&[e.skipped as u32], &dev)?);
        if let Some(t) = &e.trunk {
            map.insert(format!("{name}.trunk"), t.clone());
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| TransferError::Io { path: dir.display().to_string(), source })?;
    }
    candle_core::safetensors::save(&map, path)?;
    Ok(())
}

fn load_cache(path: &Path) -> Option<[Extracted; 2]> {
    let mut map = candle_core::safetensors::load(path, &Device::Cpu).ok()?;
    let mut take = |name: &str| -> Option<Extracted> {
        let labels = map.remove(&format!("{name}.labels"))?.to_vec1::<u8>().ok()?;
        let features = map.remove(&format!("{name}.features"))?.flatten_all().ok()?.to_vec1::<f32>().ok()?;
        let zs = map.remove(&format!("{name}.zero_shot"))?.to_vec2::<f32>().ok()?;
        let skipped = map.remove(&format!("{name}.skipped"))?.to_vec1::<u32>().ok()?.first().copied()? as usize;
        let trunk = map.remove(&format!("{name}.trunk"));
        let zero_shot = zs.into_iter().map(|v| (v[0], v[1])).collect();
        Some(Extracted { features, labels, zero_shot, trunk, skipped })
    };
    Some([take("train")?, take("val")?])
}

/// Logistic regression on features: returns (weight [1, D], bias [1]).
fn train_logistic(
    x: &Tensor,
    y: &Tensor,
    cfg: &TransferConfig,
    weight_decay: f64,
) -> Result<(Tensor, Tensor), TransferError> {
    let (n, d) = x.dims2()?;
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::zeros((1, d), DType::F32, &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros(1, DType::F32, &dev)?)?;
    let mut opt = crate::optim::AdamW::new(
        vec![("catdog.weight".to_string(), w.clone()), ("catdog.bias".to_string(), b.clone())],
        cfg.learning_rate,
        weight_decay,
    )?;
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(cfg.seed);
    let smooth = cfg.label_smoothing;
    let mut step = 0;
    for _ in 0..cfg.epochs {
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
        for batch in order.chunks(cfg.batch_size) {
            let idx = Tensor::from_slice(batch, batch.len(), &dev)?;
            let xb = x.index_select(&idx, 0)?;
            let yb = y.index_select(&idx, 0)?;
            let logits = xb.matmul(&w.as_tensor().t()?)?.squeeze(1)?.broadcast_add(b.as_tensor())?;
            let loss = crate::seed_cnn::smoothed_bce(&logits, &yb, smooth)?;
            opt.lr = cfg.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
            opt.backward_step(&loss)?;
            step += 1;
        }
    }
    Ok((w.as_tensor().clone(), b.as_tensor().clone()))
}

fn logits_of(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Vec<f32>, TransferError> {
    Ok(x.matmul(&w.t()?)?.squeeze(1)?.broadcast_add(b)?.to_vec1::<f32>()?)
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Temperature minimising the validation log loss (golden-section search on log T).
fn fit_temperature(logits: &[f32], labels: &[u8]) -> f64 {
    let nll = |log_t: f64| {
        let t = log_t.exp() as f32;
        let p: Vec<f32> = logits.iter().map(|&z| sigmoid(z / t)).collect();
        metrics::compute(&p, labels).log_loss
    };
    let (mut a, mut b) = ((0.1f64).ln(), (10.0f64).ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..60 {
        let (c, d) = (b - g * (b - a), a + g * (b - a));
        if nll(c) < nll(d) { b = d } else { a = c }
    }
    ((a + b) / 2.0).exp()
}

/// Runs the whole transfer pipeline and writes a model directory.
pub fn train_head(cfg: &TransferConfig) -> Result<(ModelCard, TransferReport), TransferError> {
    let started = Instant::now();
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| TransferError::Io { path: path.clone(), source }
    };
    std::fs::create_dir_all(&cfg.out_dir).map_err(io(&cfg.out_dir))?;
    let net = load_backbone(&cfg.pretrained)?;
    let config = net.config.clone();
    let tune = cfg.tune_epochs > 0;
    let backbone = net.to_onnx(&OnnxHeads { trunk: tune, ..Default::default() }, &BTreeMap::new())?;
    let fx = FeatureExtractor::from_onnx(&backbone, &config, cfg.threads)?;
    let pre = PreprocessConfig {
        size: config.input_size as u32,
        center_crop_from: cfg.center_crop_from,
        ..PreprocessConfig::default()
    };

    let mut samples = data::scan(&cfg.data_dir)?;
    let digest = data::digest(&samples);
    if let Some(m) = cfg.max_per_class {
        let mut kept = Vec::new();
        for label in [CAT, DOG] {
            kept.extend(samples.iter().filter(|s| s.label == label).take(m).cloned());
        }
        samples = kept;
    }
    let (mut train, val) = data::split(&samples, cfg.val_fraction, cfg.seed);
    // The cache key covers the extra examples too.
    let class_count = |v: &[Sample], l: u8| v.iter().filter(|s| s.label == l).count();
    let (train_cat, train_dog) = (class_count(&train, CAT), class_count(&train, DOG));
    let mut cache_key = digest.clone();
    if let Some(dir) = &cfg.extra_data {
        let extra = data::scan_labelled(dir)?;
        cache_key = format!("{digest}+{}x{}", data::digest(&extra), cfg.extra_weight.max(1));
        for _ in 0..cfg.extra_weight.max(1) {
            train.extend(extra.iter().cloned());
        }
    }
    let bar = indicatif::ProgressBar::new((train.len() + val.len()) as u64).with_style(
        indicatif::ProgressStyle::with_template("features {bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let t0 = Instant::now();
    let cache = cache_file(cfg, &cache_key, tune);
    let cached = cache.as_deref().and_then(load_cache);
    let features_from_cache = cached.is_some();
    let [tr, va] = match cached {
        Some(sets) => {
            tracing::info!(path = %cache.as_deref().unwrap_or(Path::new("")).display(), "features read from the cache");
            sets
        }
        None => {
            let train_views = Views { flip: cfg.flip_views, random: cfg.random_views, seed: cfg.seed };
            let tr = extract(&fx, &train, &pre, train_views, &bar)?;
            let va = extract(&fx, &val, &pre, Views { flip: false, random: 0, seed: cfg.seed }, &bar)?;
            if let Some(path) = &cache {
                save_cache(path, [&tr, &va])?;
            }
            [tr, va]
        }
    };
    bar.finish_and_clear();
    let extraction_s = t0.elapsed().as_secs_f64();
    let images_done = tr.labels.len() + va.labels.len();
    tracing::info!(train_views = tr.labels.len(), val = va.labels.len(), seconds = extraction_s, "features extracted");
    if tr.labels.is_empty() || va.labels.is_empty() {
        return Err(TransferError::NothingDecoded);
    }

    let d = fx.feature_dim;
    let dev = Device::Cpu;
    let xt = Tensor::from_slice(&tr.features, (tr.labels.len(), d), &dev)?;
    let yt = Tensor::from_vec(tr.labels.iter().map(|&l| f32::from(l)).collect::<Vec<_>>(), tr.labels.len(), &dev)?;
    let xv = Tensor::from_slice(&va.features, (va.labels.len(), d), &dev)?;
    let t1 = Instant::now();
    let mut best: Option<(f64, f64, Tensor, Tensor, Vec<f32>)> = None;
    for &wd in &cfg.weight_decays {
        let (w, b) = train_logistic(&xt, &yt, cfg, wd)?;
        let z = logits_of(&xv, &w, &b)?;
        let p: Vec<f32> = z.iter().map(|&z| sigmoid(z)).collect();
        let m = metrics::compute(&p, &va.labels);
        tracing::info!(weight_decay = wd, accuracy = m.accuracy, log_loss = m.log_loss, "head trained");
        if best.as_ref().is_none_or(|(loss, ..)| m.log_loss < *loss) {
            best = Some((m.log_loss, wd, w, b, z));
        }
    }
    let Some((_, weight_decay, w, b, z)) = best else { return Err(TransferError::NothingDecoded) };
    let logistic_only = {
        let t = fit_temperature(&z, &va.labels) as f32;
        let p: Vec<f32> = z.iter().map(|&z| sigmoid(z / t)).collect();
        metrics::compute(&p, &va.labels)
    };
    let (tuned, w, b, z) = match (&tr.trunk, &va.trunk) {
        (Some(xt), Some(xv)) if tune => {
            let tail = net.tail_folded()?;
            let tune_cfg = TuneConfig {
                epochs: cfg.tune_epochs,
                // An epoch draws one view's worth per training photo.
                samples_per_epoch: train.len(),
                batch_size: 256,
                learning_rate: cfg.tune_learning_rate,
                weight_decay,
                label_smoothing: cfg.label_smoothing,
                dropout: cfg.tune_dropout,
                seed: cfg.seed,
            };
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template("tail tuning {bar:40} {pos}/{len} batches eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let t = tail_tuning::tune(
                &TrunkSet { x: xt, labels: &tr.labels },
                &TrunkSet { x: xv, labels: &va.labels },
                &tail,
                (&w, &b),
                &tune_cfg,
                &bar,
            )?;
            bar.finish_and_clear();
            let (w, b, z) = (t.fc_weight.clone(), t.fc_bias.clone(), t.val_logits.clone());
            (Some(t), w, b, z)
        }
        _ => (None, w, b, z),
    };
    let head_training_s = t1.elapsed().as_secs_f64();
    let p_raw: Vec<f32> = z.iter().map(|&z| sigmoid(z)).collect();
    let temperature = fit_temperature(&z, &va.labels);
    let p_cal: Vec<f32> = z.iter().map(|&z| sigmoid(z / temperature as f32)).collect();
    let (w, b) = ((w / temperature)?, (b / temperature)?);

    // "Neither": the 1st percentile of the cat+dog ImageNet mass over validation photos.
    let mut mass: Vec<f32> = va.zero_shot.iter().map(|z| z.1).collect();
    mass.sort_by(f32::total_cmp);
    let neither_threshold = mass[(mass.len() / 100).min(mass.len() - 1)];
    let flagged = va.zero_shot.iter().filter(|z| z.1 < neither_threshold).count();
    let zs: Vec<f32> = va.zero_shot.iter().map(|z| z.0).collect();
    let zero_shot_val_accuracy = metrics::compute(&zs, &va.labels).accuracy;

    let report = TransferReport {
        feature_extraction_s: extraction_s,
        features_from_cache,
        feature_images_per_s: images_done as f64 / extraction_s.max(1e-9),
        head_training_s,
        wall_time_s: started.elapsed().as_secs_f64(),
        train_views: tr.labels.len(),
        weight_decay,
        val_logistic_only: tuned.is_some().then_some(logistic_only),
        tail_tuning: tuned.as_ref().map(|t| t.history.clone()).unwrap_or_default(),
        tail_tuning_best_epoch: tuned.as_ref().map_or(0, |t| t.best_epoch),
        temperature,
        val_uncalibrated: metrics::compute(&p_raw, &va.labels),
        val: metrics::compute(&p_cal, &va.labels),
        zero_shot_val_accuracy,
        neither_threshold,
        neither_false_flag_rate: flagged as f64 / va.labels.len() as f64,
    };

    let meta = graph_metadata(&cfg.version, Some(neither_threshold));
    let heads = OnnxHeads { catdog: Some((&w, &b)), tuned_tail: tuned.as_ref().map(|t| &t.tail), trunk: false };
    let onnx = net.to_onnx(&heads, &meta)?;
    let onnx_path = cfg.out_dir.join("model.onnx");
    std::fs::write(&onnx_path, onnx).map_err(io(&onnx_path))?;
    let head_path = cfg.out_dir.join("head.safetensors");
    let mut head: std::collections::HashMap<String, Tensor> =
        [("catdog.weight".to_string(), w.clone()), ("catdog.bias".to_string(), b.clone())].into_iter().collect();
    if let Some(t) = &tuned {
        head.extend(t.tail.named("tuned_tail"));
    }
    candle_core::safetensors::save(&head, &head_path)?;
    crate::plots::evaluation_plots(&cfg.out_dir, &p_cal, &va.labels).map_err(|e| TransferError::Plot(e.to_string()))?;

    let card = ModelCard {
        format: catsdogs_model::card::CARD_FORMAT,
        name: "catsdogs".into(),
        version: cfg.version.clone(),
        architecture: Architecture::EfficientNetLite0,
        architecture_config: serde_json::json!({
            "backbone": config,
            "pretrained": cfg.pretrained.file_name().map(|n| n.to_string_lossy().into_owned()),
            "head": if tuned.is_some() {
                "last MBConv block and 1x1 head convolution tuned for cats and dogs (their own branch; the ImageNet branch is untouched) + logistic regression, temperature folded in"
            } else {
                "logistic regression on the 1280-d pooled features, temperature folded in"
            },
            "transfer": report,
        }),
        classes: Label::ALL.to_vec(),
        parameters: 4_652_008 + d + 1 + tuned.as_ref().map_or(0, |t| t.tail.parameters()),
        preprocessing: Preprocessing::standard(pre),
        threshold: 0.5,
        data: Some(DataSummary {
            source: cfg.data_dir.display().to_string(),
            train_cat,
            train_dog,
            val_cat: class_count(&val, CAT),
            val_dog: class_count(&val, DOG),
            skipped: tr.skipped + va.skipped,
            split_seed: cfg.seed,
            val_fraction: cfg.val_fraction,
            digest,
        }),
        training: None,
        validation: Some(report.val.clone()),
        created_at: chrono::Utc::now().to_rfc3339(),
        weights: "head.safetensors".into(),
        onnx: Some("model.onnx".into()),
        lineage: None,
        outputs: GraphOutput::EXPORTED.to_vec(),
    };
    card.save(&cfg.out_dir.join("model.json"))?;
    Ok((card, report))
}
