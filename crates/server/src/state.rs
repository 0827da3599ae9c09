//! Shared state of the HTTP service: the serving engine, the store, tokens and sessions, and
//! the rows waiting for the database.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use catsdogs_core::{Classifier, LoadedModel};
use catsdogs_store::{Holdings, ImageStore, InferenceLog, LogRow, Outbox, PredictionRecord, Store};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::Tokens;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::limits::Limits;
use crate::session::SessionKeys;

/// Cheap to clone; every handler gets one.
pub type AppState = Arc<Shared>;

/// Everything handlers share.
pub struct Shared {
    pub cfg: ServerConfig,
    /// The serving engine: model, decode pool, batcher.
    pub engine: Classifier,
    pub store: Store,
    pub tokens: Tokens,
    pub outbox: Outbox,
    /// Set once migrations have run against the current database.
    pub migrated: AtomicBool,
    pub store_error: Mutex<Option<String>>,
    pseudonym_key: [u8; 32],
    /// Signs the web page's session cookies and CSRF tokens.
    pub sessions: SessionKeys,
    /// One CSV line per prediction.
    pub inference_log: InferenceLog,
    /// Images kept with the uploader's consent.
    pub images: ImageStore,
    pub started: Instant,
    /// Predictions answered since start (whether or not they reached the database).
    pub predictions_served: AtomicU64,
    /// Rate limits, the upload budget and the quotas.
    pub limits: Limits,
    /// Drift scores of closed days for the dashboard.
    pub drift_days: crate::api::drift::DayCache,
}

impl Shared {
    /// What a purge or an erasure must clean.
    pub fn holdings(&self) -> Holdings<'_> {
        Holdings {
            store: &self.store,
            log: self.inference_log.files(),
            images: &self.images,
            queued: catsdogs_store::Queued::Outbox(&self.outbox),
        }
    }

    pub fn new(
        cfg: ServerConfig,
        model: Result<LoadedModel, String>,
        store: Store,
        tokens: Tokens,
        pseudonym_key: [u8; 32],
        session_key: [u8; 32],
        limits: Limits,
    ) -> Self {
        let engine = Classifier::new(cfg.engine_config(), model);
        let cfg_secure = cfg.secure_cookies;
        let log_dir = cfg.inference_log_dir.clone();
        let images = ImageStore::new(&cfg.shared_dir);
        let inference_log = InferenceLog::start(log_dir, &cfg.replica_id);
        Self {
            cfg,
            engine,
            store,
            tokens,
            outbox: Outbox::default(),
            migrated: AtomicBool::new(false),
            store_error: Mutex::new(None),
            pseudonym_key,
            sessions: SessionKeys::new(session_key, cfg_secure),
            inference_log,
            images,
            started: Instant::now(),
            predictions_served: AtomicU64::new(0),
            limits,
            drift_days: crate::api::drift::DayCache::default(),
        }
    }

    /// Where queued rows go at shutdown when the database is down.
    pub fn spill_path(&self) -> PathBuf {
        self.cfg.data_dir.join(catsdogs_store::outbox::SPILL_FILE)
    }

    /// The model served now, or 503 saying why there is none.
    pub fn model(&self) -> Result<Arc<LoadedModel>, ApiError> {
        Ok(self.engine.serving()?.model.clone())
    }

    /// The model served now, if any.
    pub fn loaded_model(&self) -> Option<Arc<LoadedModel>> {
        self.engine.model()
    }

    /// Why no model is loaded (paths cut; a failed reload answers its caller instead).
    pub fn model_error(&self) -> Option<String> {
        self.engine.model_error()
    }

    /// The version served now ("none" without a model), for descriptions of the service;
    /// an answer names the version that computed it ([`catsdogs_core::Classified`]).
    pub fn model_version(&self) -> String {
        self.engine.current_version().unwrap_or_else(|| "none".into())
    }

    /// Reloads the configured model directory (after `catsdogs models promote` or a
    /// rollback moved it); requests already under way finish on the old model. On failure
    /// the old model stays. Returns the (previous, new) versions; audited under `actor`.
    pub async fn reload_model(&self, actor: &str) -> Result<(String, String), ApiError> {
        let change = self
            .engine
            .reload()
            .await
            .map_err(|e| ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "model_reload_failed", e))?;
        let (version, architecture) = &change.current;
        // The old series first: reloading the same version leaves it at 1.
        if let Some((old_version, old_architecture)) = &change.previous {
            crate::telemetry::retire_model_info(old_version, *old_architecture);
        }
        crate::telemetry::record_model_info(version, *architecture);
        let previous = change.previous.map_or_else(|| "none".to_string(), |(v, _)| v);
        let detail = format!("{previous} -> {version} from {}", self.cfg.model_dir.display());
        if let Err(e) = self.store.audit((self.cfg.clock)(), actor, "model_reload", &detail).await {
            tracing::warn!(error = %e, "model reload not audited: database unavailable");
        }
        tracing::info!(actor, %detail, "model reloaded");
        Ok((previous, version.clone()))
    }

    /// A stable pseudonym for an uploaded file name: HMAC-SHA256 under the secret
    /// pseudonymisation key + the (sanitised) extension. Without the key the name cannot be
    /// recovered by hashing guesses.
    pub fn pseudonymise(&self, file_name: Option<&str>) -> Option<String> {
        let name = file_name?;
        // HMAC accepts keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.pseudonym_key).unwrap_or_else(|_| unreachable!());
        mac.update(name.as_bytes());
        let digest = mac.finalize().into_bytes();
        let ext = Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .filter(|e| e.len() <= 5 && e.chars().all(|c| c.is_ascii_alphanumeric()))
            .map(|e| format!(".{}", e.to_ascii_lowercase()))
            .unwrap_or_default();
        Some(format!("upload-{}{ext}", hex::encode(&digest[..8])))
    }

    /// Who owns a visitor's prediction, as stored with it: a keyed hash of the session id
    /// (never the id itself, which is the visitor's credential). Only that session may give
    /// feedback on the prediction.
    pub fn session_owner(&self, session_id: &str) -> String {
        // HMAC accepts keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.pseudonym_key).unwrap_or_else(|_| unreachable!());
        mac.update(b"owner|");
        mac.update(session_id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Re-measures the disk space of kept images (after a purge or an erasure freed some).
    pub async fn measure_images(&self) {
        let images = self.images.clone();
        if let Ok(bytes) = tokio::task::spawn_blocking(move || images.total_bytes()).await {
            self.limits.set_images_bytes(bytes);
        }
    }

    /// Writes a prediction row (and its inference-log line), or queues the row when the
    /// database is unavailable.
    pub async fn record_prediction(&self, rec: PredictionRecord) {
        self.predictions_served.fetch_add(1, Ordering::Relaxed);
        match (&rec.label, &rec.error_code) {
            (Some(label), _) => {
                metrics::counter!("catsdogs_predictions_total", "label" => label.as_str()).increment(1);
                metrics::histogram!("catsdogs_prediction_duration_seconds", "stage" => "total")
                    .record(rec.latency_ms / 1e3);
            }
            (None, code) => {
                let code = code.clone().unwrap_or_else(|| "unknown".into());
                metrics::counter!("catsdogs_prediction_errors_total", "code" => code).increment(1);
            }
        }
        self.inference_log.log(LogRow {
            time: rec.created_at,
            prediction_id: rec.id.clone(),
            model_version: rec.model_version.clone(),
            label: rec.label,
            p_dog: rec.p_dog,
            latency_ms: rec.latency_ms,
            status: if rec.status == catsdogs_store::PredictionStatus::Ok { "ok" } else { "error" },
            error_code: rec.error_code.clone(),
        });
        if !self.migrated.load(Ordering::Acquire) || !self.outbox.is_empty() {
            // Keep rows in order: while anything is queued, new rows queue behind it.
            self.outbox.push(rec);
            return;
        }
        // Log lines name no prediction id: an erased id must not survive in the process log.
        match self.store.insert_prediction(&rec).await {
            Ok(_) => {}
            Err(e) if e.is_unavailable() => {
                metrics::counter!("catsdogs_store_errors_total", "operation" => "insert_prediction").increment(1);
                tracing::warn!(error = %e, "database unavailable; prediction row queued");
                self.set_store_error(Some(e.to_string()));
                self.outbox.push(rec);
            }
            Err(e) => tracing::error!(error = %e, "prediction row rejected by the database"),
        }
    }

    pub fn set_store_error(&self, e: Option<String>) {
        *self.store_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = e;
    }

    pub fn store_error(&self) -> Option<String> {
        self.store_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// One pass of the background maintenance: migrate if needed, then flush queued rows.
    pub async fn maintain_store(&self) {
        if !self.migrated.load(Ordering::Acquire) {
            match self.store.migrate().await {
                Ok(()) => {
                    self.migrated.store(true, Ordering::Release);
                    tracing::info!(db = ?self.store.kind(), "database ready (migrations applied)");
                }
                Err(e) => {
                    self.set_store_error(Some(e.to_string()));
                    return;
                }
            }
        }
        match catsdogs_store::retention::retry_pending_erasures(self.holdings()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(erasures = n, "unfinished erasures completed"),
            // An outage is reported by the rows' flush below.
            Err(catsdogs_store::RetentionError::Store(e)) if e.is_unavailable() => {}
            Err(e) => tracing::warn!(error = %e, "unfinished erasures still pending; retrying"),
        }
        if !self.outbox.is_empty() {
            match self.outbox.flush(&self.store).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "queued prediction rows written to the database"),
                Ok(_) => {}
                Err(e) => {
                    self.set_store_error(Some(e.to_string()));
                    return;
                }
            }
        }
        self.set_store_error(None);
    }
}
