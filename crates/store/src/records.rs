//! The rows the store reads and writes, as types.
use catsdogs_model::Label;
use chrono::{DateTime, Utc};

/// The id of a prediction: a random UUID, always in its canonical lower-case hyphenated
/// form, so that the same prediction never has two spellings in the database, the logs
/// and the image folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PredictionId(String);

/// A string that is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a prediction id (a UUID)")]
pub struct InvalidPredictionId(pub String);

impl PredictionId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for PredictionId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::str::FromStr for PredictionId {
    type Err = InvalidPredictionId;
    /// Accepts any UUID spelling (upper case, braces, no hyphens) and keeps the canonical one.
    fn from_str(s: &str) -> Result<Self, InvalidPredictionId> {
        uuid::Uuid::parse_str(s).map(|u| Self(u.to_string())).map_err(|_| InvalidPredictionId(s.to_string()))
    }
}

impl TryFrom<String> for PredictionId {
    type Error = InvalidPredictionId;
    fn try_from(s: String) -> Result<Self, InvalidPredictionId> {
        s.parse()
    }
}

impl From<PredictionId> for String {
    fn from(id: PredictionId) -> String {
        id.0
    }
}

impl std::fmt::Display for PredictionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

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
    /// Keyed hash of the visitor session that made it (`None` for token clients): only that
    /// session may give feedback on it.
    #[serde(default)]
    pub owner: Option<String>,
    /// What drift monitoring keeps of it (successful predictions).
    #[serde(default)]
    pub signals: Option<DriftSignals>,
}

/// The per-prediction data drift monitoring compares with the model's reference: derived
/// from the user's photo (never the photo itself), so purged, exported and erased with
/// the prediction.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DriftSignals {
    /// The graph's projected features (models that output them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    pub properties: catsdogs_model::drift::InputProperties,
    /// False when the answer was flagged "neither cat nor dog" (models with that head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_cat_or_dog: Option<bool>,
}

/// Which predictions a drift window holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftWindow {
    /// The most recent N.
    Last(u32),
    /// Those of one day (UTC).
    Day(chrono::NaiveDate),
}

/// A drift window counted: its rows, their time span, and how many had feedback and how
/// many of those were right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftWindowSummary {
    pub n: usize,
    pub oldest: Option<DateTime<Utc>>,
    pub newest: Option<DateTime<Utc>>,
    /// Sum of the rows' times in ms: a row erased and another added keep the count and may
    /// keep the span, not this.
    pub time_sum_ms: i64,
    /// When the newest erasure (of any prediction) was made: an erasure may remove a row
    /// and a late write add one at the same time.
    pub last_erasure_ms: Option<i64>,
    pub feedback: usize,
    pub right: usize,
}

impl DriftWindowSummary {
    /// Share of answers with feedback that feedback called right.
    pub fn feedback_accuracy(&self) -> Option<f64> {
        (self.feedback > 0).then(|| self.right as f64 / self.feedback as f64)
    }
}

/// One successful prediction of a drift window, with its feedback verdict if any.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftRow {
    pub created_at: DateTime<Utc>,
    pub label: Option<Label>,
    pub p_dog: f64,
    pub signals: Option<DriftSignals>,
    /// Whether the answer was right, by feedback (`None`: no feedback).
    pub correct: Option<bool>,
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
