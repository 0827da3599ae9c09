//! A model directory (`model.json` + weights + optional `model.onnx`) loaded with a backend.
use std::path::{Path, PathBuf};

use catsdogs_model::Label;
use catsdogs_model::card::ArchitectureConfig;
use catsdogs_model::card::ModelCard;
use catsdogs_model::drift::{REFERENCE_FILE, ReferenceStats};
use catsdogs_model::preprocess::{self, PreprocessConfig};
use image::RgbImage;
use serde::Serialize;

use crate::{Backend, BackendKind, CandleBackend, InferenceError, LogitMap, OrtBackend, Scores};

/// One classified image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub p_dog: f32,
    /// ImageNet probability mass on cat and dog classes (models with an ImageNet head).
    pub cat_or_dog_score: Option<f32>,
    /// False when the image probably shows neither a cat nor a dog.
    pub is_cat_or_dog: Option<bool>,
    /// Per-cell logits of the model input (graphs that output them; averaged with the
    /// mirrored image's map, flipped back, under test-time flip).
    #[serde(skip)]
    pub logit_map: Option<LogitMap>,
    /// The projected features (graphs that output them; averaged under test-time flip).
    #[serde(skip)]
    pub embedding: Option<Vec<f32>>,
}

impl Prediction {
    /// P(cat) = 1 - P(dog).
    pub fn p_cat(&self) -> f32 {
        1.0 - self.p_dog
    }
    /// The answer at the 0.5 threshold.
    pub fn label(&self) -> Label {
        Label::from_p_dog(self.p_dog)
    }
}

/// The reference statistics in `dir` for model `version`, if any. A file that cannot be
/// read is reported and ignored: drift monitoring then says it has no reference, serving
/// goes on. So is a reference of another version (a model directory copied and given a new
/// version keeps its parent's file, whose P(dog) and embeddings are not this model's).
fn read_reference(dir: &Path, version: &str) -> Option<ReferenceStats> {
    let path = dir.join(REFERENCE_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str::<ReferenceStats>(&text) {
        Ok(r) if r.model_version == version => Some(r),
        Ok(r) => {
            tracing::warn!(
                file = REFERENCE_FILE,
                reference_of = %r.model_version,
                model = version,
                "the drift reference belongs to another model version and is not used (drift checks need one of this version)"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, file = REFERENCE_FILE, "the model's drift reference cannot be read; drift checks are off");
            None
        }
    }
}

/// Batch sizes up to this are each warmed up; beyond it, powers of two (see
/// [`LoadedModel::warm_up`]).
const WARM_EVERY_SIZE_UP_TO: usize = 16;

/// The card, the preprocessing it prescribes, and a backend ready to run.
pub struct LoadedModel {
    pub card: ModelCard,
    pub dir: PathBuf,
    /// Cat+dog ImageNet mass below which an image is flagged "neither" (from the card).
    pub neither_threshold: Option<f32>,
    /// Test-time flip: each image and its mirror image are classified in one batch and
    /// their scores averaged (twice the forward cost).
    pub tta_flip: bool,
    /// What its inputs and outputs looked like on reference photos (`reference.json`,
    /// written by `catsdogs reference`): drift monitoring compares served windows with it.
    pub reference: Option<std::sync::Arc<ReferenceStats>>,
    backend: Box<dyn Backend>,
}

impl LoadedModel {
    /// Loads the model in `path` (a directory holding `model.json`, or the card itself).
    pub fn load(path: &Path, kind: BackendKind, threads: usize) -> Result<Self, InferenceError> {
        // A registry's `current` link is resolved once: the card and the graph are read
        // from the same version even if a promotion moves the link meanwhile.
        let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let path = resolved.as_path();
        let (dir, card_path) = if path.is_dir() {
            (path.to_path_buf(), path.join("model.json"))
        } else {
            (path.parent().map(Path::to_path_buf).unwrap_or_default(), path.to_path_buf())
        };
        if !card_path.is_file() {
            return Err(InferenceError::MissingFile(card_path.display().to_string()));
        }
        let card = ModelCard::load(&card_path)?;
        let config = card.architecture_config()?;
        let size = card.preprocessing.config.size;
        let backend: Box<dyn Backend> = match (kind, &config) {
            (BackendKind::Candle, ArchitectureConfig::EfficientNetLite0 { .. }) => {
                return Err(InferenceError::UnsupportedArchitecture(
                    "efficientnet-lite0 runs on the onnxruntime backend only (its candle reference is built from \
                     the PyTorch checkpoint by `catsdogs train --arch efficientnet-lite0`)"
                        .into(),
                ));
            }
            (BackendKind::Candle, ArchitectureConfig::SeedCnn(cfg)) => {
                let weights = dir.join(&card.weights);
                if !weights.is_file() {
                    return Err(InferenceError::MissingFile(weights.display().to_string()));
                }
                Box::new(CandleBackend::load(&weights, cfg)?)
            }
            (BackendKind::Onnxruntime, _) => {
                let onnx = dir.join(card.onnx.as_deref().unwrap_or("model.onnx"));
                Box::new(OrtBackend::load(&onnx, size, threads, &card.outputs)?)
            }
        };
        let neither_threshold = config.neither_threshold();
        let reference = read_reference(&dir, &card.version).map(std::sync::Arc::new);
        Ok(Self { card, dir, neither_threshold, tta_flip: false, reference, backend })
    }

    /// The backend in use.
    pub fn backend_kind(&self) -> BackendKind {
        self.backend.kind()
    }

    /// The card's preprocessing parameters.
    pub fn preprocess_config(&self) -> PreprocessConfig {
        self.card.preprocessing.config
    }

    /// Decodes and resizes one file's bytes exactly as training did.
    pub fn preprocess(&self, bytes: &[u8]) -> Result<RgbImage, InferenceError> {
        Ok(preprocess::preprocess(bytes, &self.preprocess_config())?)
    }

    /// Crops and resizes raw RGB pixels exactly as `preprocess` does after decoding.
    pub fn preprocess_pixels(&self, rgb: &RgbImage) -> Result<RgbImage, InferenceError> {
        Ok(preprocess::preprocess_pixels(rgb, &self.preprocess_config())?)
    }

    /// Runs the network on already preprocessed images.
    pub fn predict_images(&self, images: &[RgbImage]) -> Result<Vec<Prediction>, InferenceError> {
        if !self.tta_flip {
            let scored = self.backend.scores(images)?;
            return Ok(scored.into_iter().map(|s| self.prediction(s)).collect());
        }
        let n = images.len();
        let mut batch = images.to_vec();
        batch.extend(images.iter().map(image::imageops::flip_horizontal));
        let mut scored = self.backend.scores(&batch)?;
        let mirrored = scored.split_off(n);
        Ok(scored
            .into_iter()
            .zip(mirrored)
            .map(|(a, b)| {
                let mean = |x: f32, y: f32| (x + y) / 2.0;
                self.prediction(Scores {
                    p_dog: mean(a.p_dog, b.p_dog),
                    cat_or_dog_score: a.cat_or_dog_score.zip(b.cat_or_dog_score).map(|(x, y)| mean(x, y)),
                    logit_map: a.logit_map.zip(b.logit_map).map(|(x, y)| x.averaged_with_mirrored(&y)),
                    embedding: a
                        .embedding
                        .zip(b.embedding)
                        .map(|(x, y)| x.iter().zip(&y).map(|(&x, &y)| mean(x, y)).collect()),
                })
            })
            .collect())
    }

    /// Runs the network once per batch size up to `max_batch` (the largest first, so that
    /// ONNX Runtime's pool reaches its peak once) on a grey image, so that no request pays
    /// for a shape's first run: without it the first request after a start took 1.65x a
    /// steady one, after a reload 1.84x (bench section 5). Beyond 16 only powers of two
    /// and `max_batch` are run, to keep the start short. Returns the sizes run.
    pub fn warm_up(&self, max_batch: usize) -> Result<Vec<usize>, InferenceError> {
        let max_batch = max_batch.max(1);
        let size = self.preprocess_config().size;
        let grey = RgbImage::from_pixel(size, size, image::Rgb([128, 128, 128]));
        let mut sizes = vec![max_batch];
        sizes.extend((1..max_batch).filter(|&n| max_batch <= WARM_EVERY_SIZE_UP_TO || n.is_power_of_two()));
        for &n in &sizes {
            self.predict_images(&vec![grey.clone(); n])?;
        }
        Ok(sizes)
    }

    /// Preprocesses and classifies one file's bytes.
    pub fn predict_bytes(&self, bytes: &[u8]) -> Result<Prediction, InferenceError> {
        let img = self.preprocess(bytes)?;
        self.predict_images(std::slice::from_ref(&img))?
            .pop()
            .ok_or_else(|| InferenceError::Ort("the backend returned no prediction".into()))
    }

    fn prediction(&self, s: Scores) -> Prediction {
        let is_cat_or_dog = s.cat_or_dog_score.zip(self.neither_threshold).map(|(score, t)| score >= t);
        Prediction {
            p_dog: s.p_dog,
            cat_or_dog_score: s.cat_or_dog_score,
            is_cat_or_dog,
            logit_map: s.logit_map,
            embedding: s.embedding,
        }
    }
}
