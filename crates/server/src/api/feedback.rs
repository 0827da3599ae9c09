//! `POST /api/feedback`: the seed's body, or ours keyed by the prediction id.
//!
//! Policy for repeated feedback: one feedback per prediction; sending it again replaces
//! the earlier one (`replaced: true`), so a user can correct a mis-click. Seed-style
//! feedback has no prediction id and is always a new row.
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use catsdogs_model::Label;
use catsdogs_store::{FeedbackOutcome, FeedbackRecord, FeedbackSource, PredictionId, PredictionStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Longest free-text comment kept.
pub const MAX_COMMENT_CHARS: usize = 2000;

/// The seed's body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SeedFeedback {
    /// `positive` or `negative` (booleans are accepted too).
    #[schema(value_type = String, example = "positive")]
    pub feedback: serde_json::Value,
    /// P(dog) the page showed.
    pub resultat_prediction: Option<f64>,
    /// Free text from the user.
    pub input_user: Option<String>,
    /// Ignored: file names are not stored.
    pub filename: Option<String>,
}

/// Our body: which prediction, and whether it was right (`correct`) or what it was (`label`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictionFeedback {
    pub prediction_id: String,
    pub correct: Option<bool>,
    /// `cat` or `dog`: the true class.
    pub label: Option<String>,
    pub comment: Option<String>,
}

/// Either body (the presence of `prediction_id` decides).
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum FeedbackBody {
    Seed(SeedFeedback),
    Prediction(PredictionFeedback),
}

/// Response: the seed's fields plus ours.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedbackResponse {
    /// Always `received`.
    pub status: String,
    pub id: String,
    /// The seed's fields, echoed for seed-style bodies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resultat_prediction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_id: Option<String>,
    /// Whether the prediction was right.
    pub positive: bool,
    /// The true class, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub label: Option<Label>,
    /// True when this replaced earlier feedback on the same prediction.
    pub replaced: bool,
    /// Unix seconds.
    pub timestamp: f64,
    /// Always true: when the database is down the request fails with 503 instead.
    pub saved_to_db: bool,
}

fn check_comment(c: Option<String>) -> Result<Option<String>, ApiError> {
    match c {
        Some(c) if c.chars().count() > MAX_COMMENT_CHARS => {
            Err(ApiError::unprocessable("invalid_body", format!("comment longer than {MAX_COMMENT_CHARS} characters")))
        }
        Some(c) if c.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// A single token ending in an image extension, e.g. `mon_image.jpg`.
fn looks_like_file_name(s: &str) -> bool {
    let lower = s.trim().to_ascii_lowercase();
    !lower.contains(char::is_whitespace)
        && [".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"].iter().any(|e| lower.ends_with(e))
}

/// `cat` or `dog` in any case; surrounding spaces are refused as before.
fn parse_label(l: &str) -> Result<Label, ApiError> {
    l.parse::<Label>()
        .ok()
        .filter(|_| l.trim() == l)
        .ok_or_else(|| ApiError::unprocessable("invalid_body", format!("label must be \"cat\" or \"dog\", got {l:?}")))
}

fn count_feedback(positive: bool) {
    metrics::counter!("catsdogs_feedback_total", "verdict" => if positive { "right" } else { "wrong" }).increment(1);
}

/// A feedback body, parsed and checked: what remains to check needs the database.
#[derive(Debug)]
pub enum ParsedFeedback {
    /// The seed's body; `comment` is `input_user` trimmed to nothing when blank.
    Seed { body: SeedFeedback, positive: bool, comment: Option<String> },
    /// Ours, keyed by a prediction id.
    Prediction(CheckedFeedback),
}

/// Our body after its checks.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedFeedback {
    pub prediction_id: PredictionId,
    pub correct: Option<bool>,
    pub label: Option<Label>,
    pub comment: Option<String>,
}

/// Parses and checks the body of `POST /api/feedback` (given its `Content-Type`), without
/// touching any state: the one place untrusted feedback bytes are read, and a fuzz target
/// (`fuzz/fuzz_targets/feedback_json.rs`).
pub fn parse_feedback(content_type: Option<&str>, body: &[u8]) -> Result<ParsedFeedback, ApiError> {
    if let Some(ct) = content_type {
        let ct = ct.to_ascii_lowercase();
        if !ct.starts_with("application/json") && !ct.contains("+json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
                "send the feedback as application/json",
            ));
        }
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}")))?;
    if value.get("prediction_id").is_some() {
        let body: PredictionFeedback = serde_json::from_value(value)
            .map_err(|e| ApiError::unprocessable("invalid_body", format!("invalid feedback: {e}")))?;
        return check_prediction_feedback(body).map(ParsedFeedback::Prediction);
    }
    let body: SeedFeedback = serde_json::from_value(value).map_err(|e| {
        ApiError::unprocessable(
            "invalid_body",
            format!("invalid feedback ({e}); send {{feedback, resultat_prediction, input_user}} or {{prediction_id, correct|label}}"),
        )
    })?;
    let positive = match &body.feedback {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("positive") => true,
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("negative") => false,
        other => {
            return Err(ApiError::unprocessable(
                "invalid_body",
                format!("feedback must be \"positive\" or \"negative\", got {other}"),
            ));
        }
    };
    if let Some(p) = body.resultat_prediction
        && !(0.0..=1.0).contains(&p)
    {
        return Err(ApiError::unprocessable("invalid_body", "resultat_prediction must be a probability in [0, 1]"));
    }
    let comment = check_comment(body.input_user.clone())?;
    Ok(ParsedFeedback::Seed { body, positive, comment })
}

/// Checks our body: a UUID (anything else cannot name a prediction: 404), a known label,
/// `correct` or `label` given, a comment within bounds.
pub fn check_prediction_feedback(body: PredictionFeedback) -> Result<CheckedFeedback, ApiError> {
    let comment = check_comment(body.comment)?;
    let label = body.label.as_deref().map(parse_label).transpose()?;
    let prediction_id: PredictionId = body
        .prediction_id
        .parse()
        .map_err(|_| ApiError::not_found("unknown_prediction", "no prediction has this id"))?;
    if body.correct.is_none() && label.is_none() {
        return Err(ApiError::unprocessable("invalid_body", "give `correct` or `label`"));
    }
    Ok(CheckedFeedback { prediction_id, correct: body.correct, label, comment })
}

/// Record whether a prediction was right.
#[utoipa::path(
    post, path = "/api/feedback", tag = "feedback",
    request_body(content = FeedbackBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored", body = FeedbackResponse),
        (status = 400, description = "Body is not JSON", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown prediction id", body = crate::error::ErrorBody),
        (status = 409, description = "The prediction failed; nothing to judge", body = crate::error::ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "Fields missing or invalid", body = crate::error::ErrorBody),
        (status = 429, description = "Over the rate limit or a visitor's daily feedback quota (`rate_limited`)", body = crate::error::ErrorBody),
        (status = 503, description = "Database unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn feedback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<FeedbackResponse>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("invalid"));
    let visitor = caller.visitor_session();
    let (body, positive, comment) = match parse_feedback(content_type, &body)? {
        ParsedFeedback::Prediction(checked) => {
            return save_checked_feedback(&state, checked, visitor).await.map(Json);
        }
        ParsedFeedback::Seed { body, positive, comment } => (body, positive, comment),
    };
    if let Some(session) = visitor {
        check_visitor_comment(&state, comment.as_deref())?;
        state.limits.seed_feedback(session)?;
    }
    let now = (state.cfg.clock)();
    let id = uuid::Uuid::new_v4().to_string();
    let timestamp = now.timestamp_millis() as f64 / 1e3;
    // Seed clients send the image's file name as the comment: store only its pseudonym.
    let comment =
        comment.map(|c| if looks_like_file_name(&c) { state.pseudonymise(Some(&c)).unwrap_or_default() } else { c });
    let rec = FeedbackRecord {
        id: id.clone(),
        prediction_id: None,
        created_at: now,
        positive,
        true_label: None,
        p_dog: body.resultat_prediction,
        comment,
        source: FeedbackSource::Seed,
    };
    state.store.upsert_feedback(&rec).await?;
    count_feedback(positive);
    Ok(Json(FeedbackResponse {
        status: "received".into(),
        id,
        feedback: Some(if positive { "positive" } else { "negative" }.into()),
        resultat_prediction: body.resultat_prediction,
        input_user: body.input_user,
        prediction_id: None,
        positive,
        label: None,
        replaced: false,
        timestamp,
        saved_to_db: true,
    }))
}

/// Visitors' comments are shorter than token clients' (anyone can open a session).
fn check_visitor_comment(state: &AppState, comment: Option<&str>) -> Result<(), ApiError> {
    let max = state.cfg.limits.visitor_comment_chars;
    match comment {
        Some(c) if c.chars().count() > max => {
            Err(ApiError::unprocessable("invalid_body", format!("comment longer than {max} characters")))
        }
        _ => Ok(()),
    }
}

/// Stores checked feedback on one prediction (the API's body and the page's plain form).
/// A visitor session may judge only the predictions it made itself: any other id answers
/// 404 exactly as an unknown one does, so a visitor learns nothing about others' uploads.
pub(crate) async fn save_checked_feedback(
    state: &AppState,
    body: CheckedFeedback,
    visitor_session: Option<&str>,
) -> Result<FeedbackResponse, ApiError> {
    if visitor_session.is_some() {
        check_visitor_comment(state, body.comment.as_deref())?;
    }
    let now = (state.cfg.clock)();
    let id = uuid::Uuid::new_v4().to_string();
    let timestamp = now.timestamp_millis() as f64 / 1e3;
    let CheckedFeedback { prediction_id: pid, correct, label, comment } = body;
    let mut pred = state.store.get_prediction(pid.as_str()).await?;
    if pred.is_none() && !state.outbox.is_empty() {
        // The prediction may still be queued from a database outage: write the queue first.
        state.maintain_store().await;
        pred = state.store.get_prediction(pid.as_str()).await?;
    }
    let owner = visitor_session.map(|s| state.session_owner(s));
    let pred = pred
        .filter(|p| owner.is_none() || p.owner == owner)
        .ok_or_else(|| ApiError::not_found("unknown_prediction", "no prediction has this id"))?;
    if pred.status != PredictionStatus::Ok {
        return Err(ApiError::new(StatusCode::CONFLICT, "prediction_failed", "that request produced no prediction"));
    }
    let predicted = pred.label.ok_or_else(|| ApiError::internal("the stored prediction has no label"))?;
    let (positive, true_label) = match (correct, label) {
        (Some(c), None) => (c, if c { predicted } else { predicted.other() }),
        (None, Some(l)) => (l == predicted, l),
        (Some(c), Some(l)) if c == (l == predicted) => (c, l),
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable("invalid_body", "`correct` and `label` contradict each other"));
        }
        (None, None) => return Err(ApiError::unprocessable("invalid_body", "give `correct` or `label`")),
    };
    let rec = FeedbackRecord {
        id: id.clone(),
        prediction_id: Some(pid.to_string()),
        created_at: now,
        positive,
        true_label: Some(true_label),
        p_dog: pred.p_dog,
        comment,
        source: FeedbackSource::V2,
    };
    let outcome = state.store.upsert_feedback(&rec).await?;
    count_feedback(positive);
    Ok(FeedbackResponse {
        status: "received".into(),
        id,
        feedback: None,
        resultat_prediction: None,
        input_user: None,
        prediction_id: Some(pid.into()),
        positive,
        label: Some(true_label),
        replaced: outcome == FeedbackOutcome::Replaced,
        timestamp,
        saved_to_db: true,
    })
}
