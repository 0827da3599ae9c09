//! The rows the store reads and writes, as types.
use catsdogs_model::Label;
use chrono::{DateTime, Utc};

/// Outcome of a prediction request as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PredictionStatus {
    Ok,
    Error,
}

impl PredictionStatus {
    /// The value of the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

/// One row of `predictions`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PredictionRecord {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub model_version: String,
    pub status: PredictionStatus,
    pub label: Option<Label>,
    pub p_dog: Option<f64>,
    pub latency_ms: f64,
    pub error_code: Option<String>,
    pub file_ref: Option<String>,
    /// The consented image kept for retraining (`<sha256>.<ext>` in the image folder).
    #[serde(default)]
    pub image_ref: Option<String>,
}

/// A consented image whose label a user gave or confirmed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LabelledImage {
    pub prediction_id: String,
    pub created_at: DateTime<Utc>,
    pub image_ref: String,
    pub label: Label,
}

/// Rows created before these instants are removed by the retention purge.
#[derive(Debug, Clone, Copy)]
pub struct PurgeCutoffs {
    pub predictions: DateTime<Utc>,
    pub feedback: DateTime<Utc>,
    pub audit: DateTime<Utc>,
}

/// Rows removed by a purge or an erasure, per table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RemovedRows {
    pub predictions: u64,
    pub feedback: u64,
    pub audit: u64,
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub detail: Option<String>,
}

/// A prediction as listed on the dashboard: the row plus its feedback verdict, if any.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecentPrediction {
    #[serde(flatten)]
    pub record: PredictionRecord,
    /// `Some(true)` = the user said it was right.
    pub feedback_positive: Option<bool>,
}

/// Who wrote a feedback row: the seed's body or ours keyed by prediction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedbackSource {
    Seed,
    V2,
}

/// One row of `feedback`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeedbackRecord {
    pub id: String,
    pub prediction_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub positive: bool,
    pub true_label: Option<Label>,
    pub p_dog: Option<f64>,
    pub comment: Option<String>,
    pub source: FeedbackSource,
}

/// Whether feedback was new or replaced earlier feedback on the same prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackOutcome {
    Inserted,
    Replaced,
}
