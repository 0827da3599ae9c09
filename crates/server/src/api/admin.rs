//! Model administration (operators only, audited): `POST /api/admin/model/reload` serves
//! the model directory again after a promotion or a rollback, without a restart and without
//! dropping requests; `GET /api/admin/models` lists the registry's versions.
use axum::Json;
use axum::extract::{Extension, State};
use catsdogs_core::registry::RegistryError;
use catsdogs_model::Architecture;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// The versions before and after a reload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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

/// One version in the model registry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelVersion {
    pub version: String,
    #[schema(value_type = String)]
    pub architecture: Architecture,
    pub created_at: String,
    /// Whether the registry's `current` link points at it.
    pub current: bool,
    /// Whether this process serves it now (differs from `current` until a reload).
    pub loaded: bool,
    /// Metrics on its own validation split.
    pub validation_accuracy: Option<f64>,
    pub validation_roc_auc: Option<f64>,
    pub validation_log_loss: Option<f64>,
    pub validation_images: Option<usize>,
    /// Digest of the training folder.
    pub data_digest: Option<String>,
    /// For a retrained model: the version it was fine-tuned from, and the feedback used.
    pub parent: Option<String>,
    pub feedback_digest: Option<String>,
    pub feedback_examples: Option<usize>,
    /// Outcome of its evaluation gate, when one ran.
    pub gate_passed: Option<bool>,
}

/// A promotion or rollback, from the registry's log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PromotionEntry {
    pub at: String,
    pub version: String,
    pub previous: Option<String>,
    pub actor: String,
    pub rollback: bool,
    pub gate_passed: Option<bool>,
}

/// The registry's versions and history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelsReport {
    /// The registry directory, or `null` when the model is not served from one.
    pub registry: Option<String>,
    pub loaded_version: Option<String>,
    /// Oldest first.
    pub versions: Vec<ModelVersion>,
    /// Oldest first.
    pub promotions: Vec<PromotionEntry>,
}

/// Reads the registry the served model comes from (blocking file reads, off the runtime).
pub async fn models_report(state: &AppState) -> Result<ModelsReport, ApiError> {
    let loaded_version = state.loaded_model().map(|m| m.card.version.clone());
    let Some(registry) = state.cfg.registry() else {
        return Ok(ModelsReport { registry: None, loaded_version, versions: Vec::new(), promotions: Vec::new() });
    };
    let dir = registry.dir().display().to_string();
    let read =
        tokio::task::spawn_blocking(move || Ok::<_, RegistryError>((registry.versions()?, registry.promotions()?)));
    let (versions, promotions) = read
        .await
        .map_err(|_| ApiError::internal("reading the registry crashed"))?
        .map_err(|e| ApiError::internal(format!("cannot read the model registry: {e}")))?;
    let versions = versions
        .into_iter()
        .map(|v| ModelVersion {
            loaded: loaded_version.as_deref() == Some(v.version.as_str()),
            current: v.served,
            validation_accuracy: v.validation.as_ref().map(|m| m.accuracy),
            validation_roc_auc: v.validation.as_ref().map(|m| m.roc_auc),
            validation_log_loss: v.validation.as_ref().map(|m| m.log_loss),
            validation_images: v.validation.as_ref().map(|m| m.count),
            parent: v.lineage.as_ref().map(|l| l.parent.clone()),
            feedback_digest: v.lineage.as_ref().map(|l| l.feedback_digest.clone()),
            feedback_examples: v.lineage.as_ref().map(|l| l.feedback_train),
            data_digest: v.data_digest,
            gate_passed: v.gate_passed,
            version: v.version,
            architecture: v.architecture,
            created_at: v.created_at,
        })
        .collect();
    let promotions = promotions
        .into_iter()
        .map(|p| PromotionEntry {
            at: p.at,
            version: p.version,
            previous: p.previous,
            actor: p.actor,
            rollback: p.rollback,
            gate_passed: p.gate_passed,
        })
        .collect();
    Ok(ModelsReport { registry: Some(dir), loaded_version, versions, promotions })
}

/// The model versions in the registry, their metrics and lineage, and the promotion log.
#[utoipa::path(
    get, path = "/api/admin/models", tag = "admin",
    responses(
        (status = 200, description = "Versions oldest first; `registry` is null when the model is not served from a registry's `current` link", body = ModelsReport),
        (status = 401, description = "Missing or invalid token", body = crate::error::ErrorBody),
        (status = 500, description = "The registry cannot be read", body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_models(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ModelsReport>, ApiError> {
    let report = models_report(&state).await?;
    let target = report.registry.clone().unwrap_or_else(|| "no registry".into());
    if let Err(e) = state.store.audit((state.cfg.clock)(), &caller.fingerprint, "model_list", &target).await {
        tracing::warn!(error = %e, "model listing not audited: database unavailable");
    }
    Ok(Json(report))
}
