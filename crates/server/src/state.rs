//! Shared state of the service: model, store, tokens, and the rows waiting for the database.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use catsdogs_core::batcher::{BatchError, Batcher, RunBatch};
use catsdogs_core::{LoadedModel, Prediction};
use catsdogs_store::{PredictionRecord, Store, StoreError};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::auth::Tokens;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::images::ImageStore;
use crate::inference_log::{InferenceLog, LogRow};
use crate::retention::Holdings;
use crate::session::SessionKeys;

/// One image to classify: a file as uploaded, or pixels (inference-protocol tensors).
pub enum ImageInput {
    Encoded(Vec<u8>),
    Pixels(image::RgbImage),
}

/// Cheap to clone; every handler gets one.
pub type AppState = Arc<Shared>;

/// Most prediction rows kept in memory while the database is down.
pub const OUTBOX_CAPACITY: usize = 100_000;

/// The model being served and the batcher that runs it, swapped together by a reload: a
/// request holds its `Arc<Serving>` from decode to answer, so it finishes on the model it
/// started with, and the old batcher drains its queue when the last such request is done.
pub struct Serving {
    pub model: Arc<LoadedModel>,
    batcher: Batcher<image::RgbImage, Prediction>,
}

impl Serving {
    fn new(model: LoadedModel, cfg: &ServerConfig) -> Arc<Self> {
        let model = Arc::new(model);
        Arc::new(Self { batcher: Batcher::new(cfg.batching, forward_pass(model.clone())), model })
    }
}

/// Loads the model directory the configuration names (with its backend, threads and
/// test-time flip), on the blocking pool.
pub async fn load_model(cfg: &ServerConfig) -> Result<LoadedModel, String> {
    let (model_dir, backend, threads, tta_flip) =
        (cfg.model_dir.clone(), cfg.backend, cfg.inference_threads, cfg.tta_flip);
    tokio::task::spawn_blocking(move || {
        LoadedModel::load(&model_dir, backend, threads).map(|mut m| {
            m.tta_flip = tta_flip;
            m
        })
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()))
}

/// Everything handlers share.
pub struct Shared {
    pub cfg: ServerConfig,
    serving: std::sync::RwLock<Option<Arc<Serving>>>,
    /// Why the model is not loaded, for readiness and 503 messages.
    model_error: Mutex<Option<String>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    pub store: Store,
    pub tokens: Tokens,
    pub outbox: Outbox,
    /// Set once migrations have run against the current database.
    pub migrated: AtomicBool,
    pub store_error: Mutex<Option<String>>,
    /// Bounds how many requests decode and resize at once (the CPU work outside the model).
    pub inference_slots: Arc<Semaphore>,
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
}

/// Prediction rows that could not be written yet; retried in order, spilled to disk at shutdown.
#[derive(Default)]
pub struct Outbox {
    rows: Mutex<VecDeque<PredictionRecord>>,
    flushing: tokio::sync::Mutex<()>,
    pub dropped: AtomicU64,
}

impl Outbox {
    pub fn push(&self, rec: PredictionRecord) {
        let mut q = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() >= OUTBOX_CAPACITY {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("outbox full: oldest unsaved prediction row dropped");
        }
        q.push_back(rec);
    }
    fn front(&self) -> Option<PredictionRecord> {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).front().cloned()
    }
    fn remove_front(&self, id: &str) {
        let mut q = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.front().is_some_and(|r| r.id == id) {
            q.pop_front();
        }
    }
    /// Drops a queued row (erasure of a prediction the database has not seen yet) and
    /// returns it.
    pub fn remove(&self, id: &str) -> Option<PredictionRecord> {
        let mut q = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = q.iter().position(|r| r.id == id)?;
        q.remove(i)
    }
    pub fn len(&self) -> usize {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn take_all(&self) -> Vec<PredictionRecord> {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..).collect()
    }

    /// Writes queued rows in order; stops at the first failure. A row leaves the queue only
    /// once written, so it stays visible (readiness, spill at shutdown) while a write is tried.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let _one_writer = self.flushing.lock().await;
        let mut n = 0;
        while let Some(rec) = self.front() {
            match store.insert_prediction(&rec).await {
                Ok(()) => n += 1,
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::error!(error = %e, id = %rec.id, "prediction row rejected by the database; dropped");
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.remove_front(&rec.id);
        }
        Ok(n)
    }

    /// Saves queued rows as JSON lines (at shutdown, when the database is still down).
    pub fn spill(&self, path: &Path) -> std::io::Result<usize> {
        let rows = self.take_all();
        if rows.is_empty() {
            return Ok(0);
        }
        let mut text = String::new();
        for r in &rows {
            text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(text.as_bytes())?;
        Ok(rows.len())
    }

    /// Loads rows spilled by an earlier run and removes the file.
    pub fn restore(&self, path: &Path) -> std::io::Result<usize> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut n = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(r) => {
                    self.push(r);
                    n += 1;
                }
                Err(e) => tracing::error!(error = %e, "skipping unreadable spilled prediction row"),
            }
        }
        std::fs::remove_file(path)?;
        Ok(n)
    }
}

impl Shared {
    /// What a purge or an erasure must clean.
    pub fn holdings(&self) -> Holdings<'_> {
        Holdings { store: &self.store, log: self.inference_log.files(), images: &self.images }
    }

    pub fn new(
        cfg: ServerConfig,
        model: Result<LoadedModel, String>,
        store: Store,
        tokens: Tokens,
        pseudonym_key: [u8; 32],
        session_key: [u8; 32],
    ) -> Self {
        let (serving, model_error) = match model {
            Ok(m) => (Some(Serving::new(m, &cfg)), None),
            Err(e) => (None, Some(e)),
        };
        let slots = cfg.max_concurrent_inferences.max(1);
        let cfg_secure = cfg.secure_cookies;
        let log_dir = cfg.inference_log_dir.clone();
        let images = ImageStore::new(&cfg.data_dir);
        Self {
            cfg,
            serving: std::sync::RwLock::new(serving),
            model_error: Mutex::new(model_error),
            reloading: tokio::sync::Mutex::new(()),
            store,
            tokens,
            outbox: Outbox::default(),
            migrated: AtomicBool::new(false),
            store_error: Mutex::new(None),
            inference_slots: Arc::new(Semaphore::new(slots)),
            pseudonym_key,
            sessions: SessionKeys::new(session_key, cfg_secure),
            inference_log: InferenceLog::start(log_dir),
            images,
            started: Instant::now(),
            predictions_served: AtomicU64::new(0),
        }
    }

    /// Where queued rows go at shutdown when the database is down.
    pub fn spill_path(&self) -> PathBuf {
        self.cfg.data_dir.join("pending-predictions.jsonl")
    }

    fn serving(&self) -> Result<Arc<Serving>, ApiError> {
        self.serving.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone().ok_or_else(|| {
            ApiError::unavailable(
                "model_unavailable",
                format!("no model loaded: {}", self.model_error().as_deref().unwrap_or("unknown reason")),
            )
        })
    }

    /// The model served now, or 503 saying why there is none.
    pub fn model(&self) -> Result<Arc<LoadedModel>, ApiError> {
        self.serving().map(|s| s.model.clone())
    }

    /// The model served now, if any.
    pub fn loaded_model(&self) -> Option<Arc<LoadedModel>> {
        self.serving().ok().map(|s| s.model.clone())
    }

    /// Why no model is loaded (or why the last reload failed).
    pub fn model_error(&self) -> Option<String> {
        self.model_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn model_version(&self) -> String {
        self.loaded_model().map(|m| m.card.version.clone()).unwrap_or_else(|| "none".into())
    }

    /// Loads the configured model directory again (after `catsdogs models promote` or a
    /// rollback moved it) and swaps it in without dropping requests: requests already
    /// decoding or queued finish on the old model. On failure the old model stays.
    /// Returns the (previous, new) versions; audited under `actor`.
    pub async fn reload_model(&self, actor: &str) -> Result<(String, String), ApiError> {
        let _one = self.reloading.lock().await;
        let previous = self.model_version();
        let previous_info = self.loaded_model().map(|m| (m.card.version.clone(), m.card.architecture.clone()));
        let model = load_model(&self.cfg).await.map_err(|e| {
            tracing::error!(error = %e, dir = %self.cfg.model_dir.display(), "model reload failed; the current model stays");
            ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "model_reload_failed", e)
        })?;
        let version = model.card.version.clone();
        // The old series first: reloading the same version leaves it at 1.
        if let Some((old_version, old_architecture)) = &previous_info {
            crate::telemetry::retire_model_info(old_version, old_architecture);
        }
        crate::telemetry::record_model_info(&version, &model.card.architecture);
        let fresh = Serving::new(model, &self.cfg);
        *self.serving.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fresh);
        *self.model_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let detail = format!("{previous} -> {version} from {}", self.cfg.model_dir.display());
        if let Err(e) = self.store.audit((self.cfg.clock)(), actor, "model_reload", &detail).await {
            tracing::warn!(error = %e, "model reload not audited: database unavailable");
        }
        tracing::info!(actor, %detail, "model reloaded");
        Ok((previous, version))
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

    /// Classifies one file on the blocking pool; returns the prediction and the time it took
    /// (decode + forward; waiting for a slot is measured separately).
    pub async fn classify(&self, bytes: Vec<u8>) -> Result<(Prediction, f64), (ApiError, f64)> {
        let (mut results, ms) = self.classify_many(vec![bytes]).await.map_err(|e| (e, 0.0))?;
        match results.pop() {
            Some(Ok(p)) => Ok((p, ms)),
            Some(Err(e)) => Err((e, ms)),
            None => Err((ApiError::internal("no result for the file"), ms)),
        }
    }

    /// Classifies several files in one batch; each file gets its own result.
    pub async fn classify_many(
        &self,
        files: Vec<Vec<u8>>,
    ) -> Result<(Vec<Result<Prediction, ApiError>>, f64), ApiError> {
        self.classify_inputs(files.into_iter().map(ImageInput::Encoded).collect()).await
    }

    /// Classifies encoded files or raw pixels; each input gets its own result. Decoding
    /// runs on the blocking pool (parallel within the request, bounded across requests);
    /// the decoded images join the batcher's queue with other requests' images. The time
    /// returned covers decode, queue and forward.
    pub async fn classify_inputs(
        &self,
        files: Vec<ImageInput>,
    ) -> Result<(Vec<Result<Prediction, ApiError>>, f64), ApiError> {
        let serving = self.serving()?;
        let (model, batcher) = (serving.model.clone(), &serving.batcher);
        let queued = Instant::now();
        // Workers wait briefly for these images while they are decoded, to batch them
        // with others; the announcement ends once they are submitted.
        let arrival = batcher.announce(files.len());
        let permit =
            self.inference_slots.clone().acquire_owned().await.map_err(|_| ApiError::internal("shutting down"))?;
        let t = Instant::now();
        let decoded = tokio::task::spawn_blocking(move || {
            // The slot is held by the work itself: a request that times out and is dropped
            // does not free it while its decoding still runs.
            let _permit = permit;
            use rayon::prelude::*;
            let prepare = |input: &ImageInput| match input {
                ImageInput::Encoded(b) => model.preprocess(b),
                ImageInput::Pixels(img) => model.preprocess_pixels(img),
            };
            if files.len() == 1 {
                files.iter().map(prepare).collect::<Vec<_>>()
            } else {
                files.par_iter().map(prepare).collect()
            }
        })
        .await
        .map_err(|e| ApiError::internal(format!("decoding task failed: {e}")))?;
        metrics::histogram!("catsdogs_prediction_duration_seconds", "stage" => "decode")
            .record(t.elapsed().as_secs_f64());

        let mut results: Vec<Result<Prediction, ApiError>> = Vec::with_capacity(decoded.len());
        let mut pending = Vec::new();
        for (slot, r) in decoded.into_iter().enumerate() {
            let img = match r {
                Ok(img) => img,
                Err(e) => {
                    results.push(Err(ApiError::from(e)));
                    continue;
                }
            };
            results.push(Err(ApiError::internal("not classified")));
            let (tx, rx) = tokio::sync::oneshot::channel();
            match batcher.submit(img, Box::new(move |r| drop(tx.send(r)))) {
                Ok(()) => pending.push((slot, rx)),
                Err(e) => results[slot] = Err(batch_error(e)),
            }
        }
        drop(arrival);
        for (slot, rx) in pending {
            results[slot] = match rx.await {
                Ok(Ok((p, timing))) => {
                    metrics::histogram!("catsdogs_prediction_duration_seconds", "stage" => "queue")
                        .record(timing.queue.as_secs_f64());
                    Ok(p)
                }
                Ok(Err(e)) => Err(batch_error(e)),
                Err(_) => Err(ApiError::internal("the inference worker dropped the request")),
            };
        }
        Ok((results, queued.elapsed().as_secs_f64() * 1e3))
    }

    /// Writes a prediction row (and its inference-log line), or queues the row when the
    /// database is unavailable.
    pub async fn record_prediction(&self, rec: PredictionRecord) {
        self.predictions_served.fetch_add(1, Ordering::Relaxed);
        match (&rec.label, &rec.error_code) {
            (Some(label), _) => {
                metrics::counter!("catsdogs_predictions_total", "label" => label.clone()).increment(1);
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
            label: rec.label.clone(),
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
        match self.store.insert_prediction(&rec).await {
            Ok(()) => {}
            Err(e) if e.is_unavailable() => {
                metrics::counter!("catsdogs_store_errors_total", "operation" => "insert_prediction").increment(1);
                tracing::warn!(error = %e, id = %rec.id, "database unavailable; prediction row queued");
                self.set_store_error(Some(e.to_string()));
                self.outbox.push(rec);
            }
            Err(e) => tracing::error!(error = %e, id = %rec.id, "prediction row rejected by the database"),
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

/// The batcher's forward pass over the loaded model; records the model-stage metrics
/// once per batch.
fn forward_pass(model: Arc<LoadedModel>) -> Arc<RunBatch<image::RgbImage, Prediction>> {
    Arc::new(move |images: &[image::RgbImage]| {
        let t = Instant::now();
        let out = model.predict_images(images).map_err(|e| e.to_string());
        metrics::histogram!("catsdogs_prediction_duration_seconds", "stage" => "model")
            .record(t.elapsed().as_secs_f64());
        metrics::histogram!("catsdogs_batch_size").record(images.len() as f64);
        out
    })
}

/// The API's answer for an input the batcher could not classify.
fn batch_error(e: BatchError) -> ApiError {
    match e {
        BatchError::QueueFull(_) => {
            ApiError::unavailable("overloaded", "too many images waiting for the model; retry shortly")
        }
        BatchError::Stopped => ApiError::unavailable("shutting_down", "the service is stopping"),
        BatchError::Failed(m) | BatchError::Panicked(m) => {
            tracing::error!(error = %m, "inference failed");
            ApiError::internal(format!("inference failed: {m}"))
        }
    }
}
