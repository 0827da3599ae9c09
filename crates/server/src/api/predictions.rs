//! `GET /api/predictions/{id}` (what is held about a prediction) and
//! `DELETE /api/predictions/{id}` (erasure): the data-subject rights of `docs/privacy.md`.
//! Both are administrative actions: operator only, and written to the audit log.
use axum::Json;
use axum::extract::{Extension, Path, State};
use catsdogs_store::{FeedbackRecord, PredictionRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use catsdogs_store::retention::{self, RetentionError};

/// Everything stored about one prediction.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictionExport {
    #[schema(value_type = Object)]
    pub prediction: PredictionRecord,
    #[schema(value_type = Option<Object>)]
    pub feedback: Option<FeedbackRecord>,
    /// Its lines in the inference log (CSV, header in `inference_log_header`).
    pub inference_log: Vec<String>,
    pub inference_log_header: String,
}

/// What an erasure removed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErasureReport {
    pub id: String,
    pub predictions: u64,
    pub feedback: u64,
    pub inference_log_lines: u64,
    /// Consented image files deleted (0 or 1).
    pub images: u64,
}

fn parse_id(id: &str) -> Result<String, ApiError> {
    id.parse::<catsdogs_store::PredictionId>()
        .map(String::from)
        .map_err(|_| ApiError::not_found("unknown_prediction", "no prediction has this id"))
}

async fn audit(state: &AppState, caller: &Caller, action: &str, target: &str) -> Result<(), ApiError> {
    // An administrative action that cannot be audited does not happen.
    state.store.audit((state.cfg.clock)(), &caller.fingerprint, action, target).await?;
    Ok(())
}

/// Export everything held about one prediction.
#[utoipa::path(
    get, path = "/api/predictions/{id}", tag = "privacy",
    params(("id" = String, Path, description = "Prediction id")),
    responses(
        (status = 200, description = "The stored row, its feedback and its log lines", body = PredictionExport),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown prediction id", body = crate::error::ErrorBody),
        (status = 503, description = "Database unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<PredictionExport>, ApiError> {
    let id = parse_id(&id)?;
    let prediction = state
        .store
        .get_prediction(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_prediction", "no prediction has this id"))?;
    audit(&state, &caller, "export", &format!("prediction {id}")).await?;
    let feedback = state.store.feedback_for(&id).await?;
    state.inference_log.flush().await;
    let inference_log = match state.inference_log.files() {
        Some(f) => {
            let wanted = id.clone();
            f.off_thread(move |f| f.lines_for(&wanted))
                .await
                .map_err(|e| ApiError::internal(format!("cannot read the inference log: {e}")))?
        }
        None => Vec::new(),
    };
    Ok(Json(PredictionExport {
        prediction,
        feedback,
        inference_log,
        inference_log_header: catsdogs_store::inference_log::HEADER.to_string(),
    }))
}

/// Erase one prediction: its row, its feedback and its inference-log lines.
#[utoipa::path(
    delete, path = "/api/predictions/{id}", tag = "privacy",
    params(("id" = String, Path, description = "Prediction id")),
    responses(
        (status = 200, description = "What was removed", body = ErasureReport),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 404, description = "Nothing is held about this id", body = crate::error::ErrorBody),
        (status = 503, description = "Database unavailable", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn erase(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ErasureReport>, ApiError> {
    let id = parse_id(&id)?;
    state.inference_log.flush().await;
    let now = (state.cfg.clock)();
    let removed = retention::erase_id(state.holdings(), &id, now, &caller.fingerprint).await.map_err(|e| match e {
        // Down: nothing was removed; the caller retries (503 + Retry-After).
        RetentionError::Store(e) => ApiError::from(e),
        RetentionError::Log(e) => ApiError::internal(format!(
            "the prediction is erased but some of its files could not be removed yet ({e}); the server \
                 retries until they are"
        )),
        RetentionError::NoErasureKey => ApiError::internal("erasure is not configured"),
    })?;
    let (images, lines) = (removed.images, removed.inference_log_lines);
    let removed = removed.rows;
    if removed.predictions == 0 && lines == 0 && images == 0 {
        return Err(ApiError::not_found("unknown_prediction", "no prediction has this id"));
    }
    // The id stays in the audit log only, not in the process log.
    tracing::info!(actor = %caller.fingerprint, "prediction erased");
    Ok(Json(ErasureReport {
        id,
        predictions: removed.predictions,
        feedback: removed.feedback,
        inference_log_lines: lines,
        images,
    }))
}
