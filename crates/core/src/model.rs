//! A model directory (`model.json` + weights + optional `model.onnx`) loaded with a backend.
use std::path::{Path, PathBuf};

use catsdogs_model::Label;
use catsdogs_model::card::ArchitectureConfig;
use catsdogs_model::card::ModelCard;
use catsdogs_model::preprocess::{self, PreprocessConfig};
use image::RgbImage;
use serde::Serialize;

use crate::{Backend, BackendKind, CandleBackend, InferenceError, OrtBackend};

/// One classified image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    pub p_dog: f32,
    /// ImageNet probability mass on cat and dog classes (models with an ImageNet head).
    pub cat_or_dog_score: Option<f32>,
    /// False when the image probably shows neither a cat nor a dog.
    pub is_cat_or_dog: Option<bool>,
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
                Box::new(OrtBackend::load(&onnx, size, threads)?)
            }
        };
        let neither_threshold = config.neither_threshold();
        Ok(Self { card, dir, neither_threshold, tta_flip: false, backend })
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
            let scored = self.backend.predict_scored(images)?;
            return Ok(scored.into_iter().map(|(p_dog, score)| self.prediction(p_dog, score)).collect());
        }
        let n = images.len();
        let mut batch = images.to_vec();
        batch.extend(images.iter().map(image::imageops::flip_horizontal));
        let scored = self.backend.predict_scored(&batch)?;
        Ok((0..n)
            .map(|i| {
                let ((a, sa), (b, sb)) = (scored[i], scored[n + i]);
                self.prediction((a + b) / 2.0, sa.zip(sb).map(|(x, y)| (x + y) / 2.0))
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

    fn prediction(&self, p_dog: f32, score: Option<f32>) -> Prediction {
        let is_cat_or_dog = score.zip(self.neither_threshold).map(|(s, t)| s >= t);
        Prediction { p_dog, cat_or_dog_score: score, is_cat_or_dog }
    }
}
