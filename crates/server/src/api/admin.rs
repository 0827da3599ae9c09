//! `POST /api/admin/model/reload`: serve the model directory again after a promotion or a
//! rollback, without a restart and without dropping requests (operators only, audited).
use axum::Json;
use axum::extract::{Extension, State};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// The versions before and after a reload.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadReport {
    pub previous_version: String,
    pub model_version: String,
}

/// Reload the model from the configured model directory.
#[utoipa::path(
    post, path = "/api/admin/model/reload", tag = "admin",
    responses(
        (status = 200, description = "The new model serves every request that starts from now on", body = ReloadReport),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 422, description = "The directory holds no loadable model; the previous one stays", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn reload_model(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ReloadReport>, ApiError> {
    let (previous_version, model_version) = state.reload_model(&caller.fingerprint).await?;
    Ok(Json(ReloadReport { previous_version, model_version }))
}
