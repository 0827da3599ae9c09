//! Health, readiness and model information.
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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

/// The version of the seed's API that this service implements (`/api/info`'s `version`).
pub const SEED_API_VERSION: &str = "1.0.0";

/// The seed's `GET /api/info`: public, because the seed's clients call it without a token to
/// check that the model is loaded. The seed's fields, the service and model versions beside
/// them, and nothing else (operators find the model card on `/info` and the dashboard).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InfoResponse {
    pub model_loaded: bool,
    /// The seed API version implemented.
    #[schema(example = "1.0.0")]
    pub version: String,
    /// Weights of the served model (0 without a model).
    pub parameters: usize,
    /// The served model's name (its directory's name), never a filesystem path.
    #[schema(example = "effnet-lite0")]
    pub model_path: String,
    /// This service's version.
    pub service_version: String,
    /// The served model's version (from its card).
    pub model_version: Option<String>,
}

/// Whether the model is loaded, and which (the seed's route; no token needed).
#[utoipa::path(get, path = "/api/info", tag = "health", responses((status = 200, body = InfoResponse)))]
pub async fn info(State(state): State<AppState>) -> Json<InfoResponse> {
    let m = state.loaded_model();
    let model_path = state.cfg.model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Json(InfoResponse {
        model_loaded: m.is_some(),
        version: SEED_API_VERSION.into(),
        parameters: m.as_ref().map_or(0, |m| m.card.parameters),
        model_path,
        service_version: env!("CARGO_PKG_VERSION").into(),
        model_version: m.map(|m| m.card.version.clone()),
    })
}
