//! Health, readiness and model information.
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use catsdogs_model::Architecture;

use crate::error::ApiError;
use crate::state::AppState;

/// The seed's `/health` body, plus whether the database answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SeedHealth {
    /// `healthy` when the model is loaded and the database reachable, else `degraded`.
    pub status: String,
    pub model_loaded: bool,
    pub store_reachable: bool,
}

/// Model part of the readiness report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelHealth {
    pub loaded: bool,
    pub version: Option<String>,
    pub backend: Option<String>,
    pub error: Option<String>,
}

/// Database part of the readiness report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StoreHealth {
    /// `sqlite` or `postgres`.
    pub kind: String,
    pub reachable: bool,
    pub migrated: bool,
    /// Prediction rows answered during an outage and not yet written.
    pub pending_rows: usize,
    /// Rows lost since start (queue overflow past 100,000, or rejected by the database).
    pub dropped_rows: u64,
    pub error: Option<String>,
}

/// Liveness and readiness.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthReport {
    /// `ready` or `not_ready`.
    pub status: String,
    /// Always true when the process answers.
    pub live: bool,
    pub ready: bool,
    pub model: ModelHealth,
    pub store: StoreHealth,
    pub uptime_s: f64,
    pub version: String,
}

async fn store_reachable(state: &AppState) -> (bool, Option<String>) {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => (true, None),
        Ok(Err(e)) => (false, Some(e.to_string())),
        Err(_) => (false, Some("database did not answer within 2 s".into())),
    }
}

/// Readiness: 200 when the model is loaded and the database reachable, 503 otherwise.
#[utoipa::path(
    get, path = "/api/health", tag = "health",
    responses(
        (status = 200, description = "Ready", body = HealthReport),
        (status = 503, description = "Alive but not ready; the body says why", body = HealthReport),
    )
)]
pub async fn api_health(State(state): State<AppState>) -> (StatusCode, Json<HealthReport>) {
    let (reachable, ping_error) = store_reachable(&state).await;
    let migrated = state.migrated.load(Ordering::Acquire);
    if reachable && !migrated {
        state.maintain_store().await;
    }
    let migrated = state.migrated.load(Ordering::Acquire);
    let loaded = state.loaded_model();
    let model = ModelHealth {
        loaded: loaded.is_some(),
        version: loaded.as_ref().map(|m| m.card.version.clone()),
        backend: loaded.as_ref().map(|m| m.backend_kind().to_string()),
        error: state.model_error(),
    };
    let store = StoreHealth {
        kind: format!("{:?}", state.store.kind()).to_lowercase(),
        reachable,
        migrated,
        pending_rows: state.outbox.len(),
        dropped_rows: state.outbox.dropped.load(Ordering::Relaxed),
        error: ping_error.or_else(|| (!migrated).then(|| state.store_error()).flatten()),
    };
    let ready = model.loaded && reachable && migrated;
    let report = HealthReport {
        status: if ready { "ready" } else { "not_ready" }.into(),
        live: true,
        ready,
        model,
        store,
        uptime_s: state.started.elapsed().as_secs_f64(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(report))
}

/// The seed's health route (always 200 while the process answers).
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = SeedHealth)))]
pub async fn seed_health(State(state): State<AppState>) -> Json<SeedHealth> {
    let (reachable, _) = store_reachable(&state).await;
    let loaded = state.loaded_model().is_some();
    Json(SeedHealth {
        status: if loaded && reachable { "healthy" } else { "degraded" }.into(),
        model_loaded: loaded,
        store_reachable: reachable,
    })
}

/// The seed's `/api/info` fields plus the model card's essentials.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InfoResponse {
    pub model_loaded: bool,
    /// Name of the model directory (not its absolute path).
    pub model_path: String,
    /// Service version.
    pub version: String,
    pub parameters: usize,
    pub model_version: Option<String>,
    #[schema(value_type = Option<String>)]
    pub architecture: Option<Architecture>,
    pub backend: Option<String>,
    pub input_size: Option<u32>,
    pub classes: Vec<String>,
    /// Validation metrics from the model card.
    #[schema(value_type = Object)]
    pub validation: Option<serde_json::Value>,
}

/// Model information.
#[utoipa::path(
    get, path = "/api/info", tag = "health",
    responses(
        (status = 200, body = InfoResponse),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn info(State(state): State<AppState>) -> Result<Json<InfoResponse>, ApiError> {
    let loaded = state.loaded_model();
    let m = loaded.as_ref();
    let dir_name = state.cfg.model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Json(InfoResponse {
        model_loaded: m.is_some(),
        model_path: dir_name,
        version: env!("CARGO_PKG_VERSION").into(),
        parameters: m.map(|m| m.card.parameters).unwrap_or(0),
        model_version: m.map(|m| m.card.version.clone()),
        architecture: m.map(|m| m.card.architecture),
        backend: m.map(|m| m.backend_kind().to_string()),
        input_size: m.map(|m| m.card.preprocessing.config.size),
        classes: m.map(|m| m.card.classes.iter().map(|c| c.to_string()).collect()).unwrap_or_default(),
        validation: m.and_then(|m| m.card.validation.as_ref()).and_then(|v| serde_json::to_value(v).ok()),
    }))
}
