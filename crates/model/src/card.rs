//! The model card (`model.json`) written next to every trained model: what the model is,
//! what it was trained on, how to feed it, and how well it did.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Label;
use crate::augment::Augment;
use crate::metrics::Metrics;
use crate::preprocess::PreprocessConfig;

/// The network families this crate builds, as the card names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Architecture {
    /// The seed's small CNN, trained from scratch (`models/seed-cnn`).
    #[serde(rename = "seed-cnn")]
    SeedCnn,
    /// EfficientNet-Lite0 with our cats-and-dogs head (`models/effnet-lite0`).
    #[serde(rename = "efficientnet-lite0")]
    EfficientNetLite0,
}

impl Architecture {
    /// The name the card and the CLI use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Architecture::SeedCnn => "seed-cnn",
            Architecture::EfficientNetLite0 => "efficientnet-lite0",
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A name that is not an [`Architecture`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown architecture {0:?} (expected seed-cnn or efficientnet-lite0)")]
pub struct UnknownArchitecture(pub String);

impl std::str::FromStr for Architecture {
    type Err = UnknownArchitecture;
    fn from_str(s: &str) -> Result<Self, UnknownArchitecture> {
        match s {
            "seed-cnn" => Ok(Architecture::SeedCnn),
            "efficientnet-lite0" => Ok(Architecture::EfficientNetLite0),
            other => Err(UnknownArchitecture(other.to_string())),
        }
    }
}

/// What serving reads of a transfer-learned card's `architecture_config.transfer`
/// (the rest of that report is for people).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransferSettings {
    /// Cat+dog ImageNet probability mass below which an image is flagged "neither".
    #[serde(default)]
    pub neither_threshold: Option<f64>,
    /// One entry per epoch of tuning the last block; empty when only the head was fitted.
    #[serde(default)]
    pub tail_tuning: Vec<serde_json::Value>,
}

/// The card's `architecture_config`, parsed for its architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchitectureConfig {
    SeedCnn(crate::seed_cnn::Config),
    EfficientNetLite0 { transfer: TransferSettings },
}

impl ArchitectureConfig {
    /// Cat+dog mass threshold for "neither" answers (EfficientNet cards that set one).
    pub fn neither_threshold(&self) -> Option<f32> {
        match self {
            ArchitectureConfig::EfficientNetLite0 { transfer } => transfer.neither_threshold.map(|t| t as f32),
            ArchitectureConfig::SeedCnn(_) => None,
        }
    }
}

/// Card format version; bumped when fields change meaning.
pub const CARD_FORMAT: u32 = 1;

/// How inputs must be prepared for the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    #[serde(flatten)]
    pub config: PreprocessConfig,
    pub resize_filter: String,
    /// "squash": the whole image resized to a square, aspect ratio not kept.
    pub geometry: String,
    /// What the network's input tensor holds: "u8 RGB NHWC"; scaling happens in-graph.
    pub input: String,
}

impl Preprocessing {
    /// The preprocessing every model of this crate uses, at `config`.
    pub fn standard(config: PreprocessConfig) -> Self {
        Self {
            config,
            resize_filter: crate::preprocess::RESIZE_FILTER.to_string(),
            geometry: if config.center_crop_from == 0 {
                "squash".into()
            } else {
                format!("short side to {}, centre crop {}", config.center_crop_from, config.size)
            },
            input: "u8 RGB NHWC".into(),
        }
    }
}

/// Where the training data came from and how it was split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub source: String,
    pub train_cat: usize,
    pub train_dog: usize,
    pub val_cat: usize,
    pub val_dog: usize,
    pub skipped: usize,
    pub split_seed: u64,
    pub val_fraction: f64,
    /// Digest of file names + labels of the full set.
    pub digest: String,
}

/// Training settings and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub epochs: usize,
    pub best_epoch: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    /// Teacher whose soft targets were blended into the labels, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<Distillation>,
    /// Batch normalisation during training (folded into the shipped weights).
    #[serde(default)]
    pub batch_norm: bool,
    /// Decay of the moving average of the weights that was evaluated and shipped, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_average_decay: Option<f64>,
    /// Weights the run started from instead of a random initialisation (fine-tuning);
    /// `epochs` then counts only this run's epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tuned_from: Option<String>,
    pub augment: Augment,
    pub wall_time_s: f64,
    pub train_images_per_s: f64,
}

/// Knowledge distillation used in training: targets were
/// `(1 - weight) * label + weight * P_teacher(dog)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distillation {
    /// The teacher model's version.
    pub teacher: String,
    pub weight: f64,
}

/// Everything `model.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub architecture: Architecture,
    /// Free-form as written (training reports live here); read it through
    /// [`ModelCard::architecture_config`].
    pub architecture_config: serde_json::Value,
    pub classes: Vec<Label>,
    pub parameters: usize,
    pub preprocessing: Preprocessing,
    pub threshold: f64,
    pub data: Option<DataSummary>,
    pub training: Option<TrainingSummary>,
    /// Metrics on the validation split.
    pub validation: Option<Metrics>,
    pub created_at: String,
    /// Weights file, relative to the card.
    pub weights: String,
    /// ONNX graph, relative to the card, once exported.
    pub onnx: Option<String>,
    /// Where a retrained model comes from (absent for a model trained from scratch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// The graph's outputs beyond `p_dog` that serving reads. Graphs exported before an
    /// output existed have no entry for it and still load, without what it gives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<GraphOutput>,
}

/// An optional output of a model's ONNX graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphOutput {
    /// `logit_map` [N, h, w]: the head on each cell of the last feature map (explanations).
    LogitMap,
    /// `embedding` [N, 32]: the pooled features through a fixed projection (drift).
    Embedding,
    /// An output this build does not know (a card from a newer build): ignored.
    #[serde(other)]
    Unknown,
}

impl GraphOutput {
    /// What the graphs this build exports declare.
    pub const EXPORTED: [GraphOutput; 2] = [GraphOutput::LogitMap, GraphOutput::Embedding];
}

impl ModelCard {
    /// Whether the graph declares `output`.
    pub fn has_output(&self, output: GraphOutput) -> bool {
        self.outputs.contains(&output)
    }
}

/// The ancestry of a retrained model, so a registry can tell what it was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// Version of the model it was fine-tuned from.
    pub parent: String,
    /// Digest of the training folder (the same as `data.digest`).
    pub data_digest: String,
    /// Digest of the feedback examples trained on (file names and labels).
    pub feedback_digest: String,
    /// Feedback examples trained on, and how many times each was drawn per pass.
    pub feedback_train: usize,
    pub feedback_weight: usize,
    /// Newest feedback examples held out for evaluation.
    pub feedback_holdout: usize,
}

/// Errors reading or writing a card.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("cannot read model card {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid model card {path}: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("invalid {architecture} configuration in the model card: {source}")]
    Config { architecture: Architecture, source: serde_json::Error },
    #[error("cannot write model card {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

impl ModelCard {
    /// Reads `model.json`.
    pub fn load(path: &Path) -> Result<Self, CardError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CardError::Read { path: p.clone(), source })?;
        serde_json::from_str(&text).map_err(|source| CardError::Parse { path: p, source })
    }

    /// The architecture's configuration, typed; an error names what does not parse.
    pub fn architecture_config(&self) -> Result<ArchitectureConfig, CardError> {
        let config_error = |source| CardError::Config { architecture: self.architecture, source };
        match self.architecture {
            Architecture::SeedCnn => serde_json::from_value(self.architecture_config.clone())
                .map(ArchitectureConfig::SeedCnn)
                .map_err(config_error),
            Architecture::EfficientNetLite0 => {
                let transfer = match self.architecture_config.get("transfer") {
                    Some(t) => serde_json::from_value(t.clone()).map_err(config_error)?,
                    None => TransferSettings::default(),
                };
                Ok(ArchitectureConfig::EfficientNetLite0 { transfer })
            }
        }
    }

    /// Writes `model.json` (pretty-printed, stable field order).
    pub fn save(&self, path: &Path) -> Result<(), CardError> {
        let p = path.display().to_string();
        let text = serde_json::to_string_pretty(self).map_err(|source| CardError::Parse { path: p.clone(), source })?;
        std::fs::write(path, text + "\n").map_err(|source| CardError::Write { path: p, source })
    }
}
