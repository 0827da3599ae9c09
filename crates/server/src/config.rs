//! Service settings, filled by the CLI from flags, environment and `.env`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use catsdogs_core::BackendKind;
use chrono::{DateTime, Utc};

/// Source of "now": the system clock in production, a fixed instant in tests.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// Everything the service needs to start.
#[derive(Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// Holds the SQLite file, the generated token and the pseudonymisation key.
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; `None` = SQLite file in `data_dir`.
    pub database_url: Option<String>,
    pub model_dir: PathBuf,
    /// The model registry listed by the admin API and the dashboard; `None` = the folder
    /// holding `model_dir` when that is a registry's `current` link.
    pub registry_dir: Option<PathBuf>,
    pub backend: BackendKind,
    /// Accepted bearer tokens (several during a rotation). Empty = generate one in `data_dir`.
    pub tokens: Vec<String>,
    /// Largest accepted upload per file, in bytes.
    pub max_upload_bytes: usize,
    /// Most files in one `/api/predict/batch` request.
    pub max_batch_files: usize,
    /// Threads ONNX Runtime may use per inference.
    pub inference_threads: usize,
    /// Requests allowed to decode and resize their images at the same time.
    pub max_concurrent_inferences: usize,
    /// Test-time flip (image + mirror image averaged; twice the forward cost).
    pub tta_flip: bool,
    /// Where the API token, pseudonymisation key and session key are read (and generated
    /// when absent); `None` = `data_dir`. Replicas must share these (Docker/Kubernetes secrets).
    pub secrets_dir: Option<PathBuf>,
    /// Mark the page's session cookie `Secure` (set when served over HTTPS).
    pub secure_cookies: bool,
    /// Inference log directory (one CSV per UTC day); `None` switches the log off.
    pub inference_log_dir: Option<PathBuf>,
    /// How long rows are kept before the automatic purge removes them.
    pub retention: catsdogs_store::Retention,
    /// How often the purge runs inside the server.
    pub purge_interval: std::time::Duration,
    /// Longest a request may take, body upload included (slow uploads get 408).
    pub request_timeout: std::time::Duration,
    /// Dynamic batching: largest batch, longest wait for company, queue bound, workers.
    pub batching: catsdogs_core::batcher::BatcherConfig,
    /// Longest a client may take to send a request's headers before the connection is
    /// closed (slowloris).
    pub header_read_timeout: std::time::Duration,
    /// How often pending rows are retried while the database is down.
    pub retry_interval: std::time::Duration,
    pub clock: Clock,
}

impl ServerConfig {
    /// What the serving engine needs of this configuration.
    pub fn engine_config(&self) -> catsdogs_core::EngineConfig {
        catsdogs_core::EngineConfig {
            model_dir: self.model_dir.clone(),
            backend: self.backend,
            inference_threads: self.inference_threads,
            tta_flip: self.tta_flip,
            batching: self.batching,
            max_concurrent_decodes: self.max_concurrent_inferences,
        }
    }

    /// Defaults that work on a fresh machine (loopback, SQLite under `data_dir`).
    pub fn new(model_dir: PathBuf, data_dir: PathBuf) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let log_dir = data_dir.join("logs");
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir,
            database_url: None,
            model_dir,
            registry_dir: None,
            backend: BackendKind::Onnxruntime,
            tokens: Vec::new(),
            max_upload_bytes: 10 * 1024 * 1024,
            max_batch_files: 32,
            inference_threads: cores,
            max_concurrent_inferences: cores,
            tta_flip: false,
            secure_cookies: false,
            secrets_dir: None,
            request_timeout: std::time::Duration::from_secs(60),
            header_read_timeout: std::time::Duration::from_secs(10),
            batching: catsdogs_core::batcher::BatcherConfig::default(),
            inference_log_dir: Some(log_dir),
            retention: catsdogs_store::Retention::default(),
            purge_interval: std::time::Duration::from_secs(3600),
            retry_interval: std::time::Duration::from_secs(2),
            clock: system_clock(),
        }
    }

    /// The registry the served model belongs to, if any.
    pub fn registry(&self) -> Option<catsdogs_core::registry::Registry> {
        let dir = match &self.registry_dir {
            Some(d) => d.clone(),
            None => {
                let is_link = std::fs::symlink_metadata(&self.model_dir).is_ok_and(|m| m.file_type().is_symlink());
                if !is_link || self.model_dir.file_name().is_none_or(|n| n != "current") {
                    return None;
                }
                self.model_dir.parent()?.to_path_buf()
            }
        };
        Some(catsdogs_core::registry::Registry::new(dir))
    }

    /// The database URL actually used.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("catsdogs.db").display()),
        }
    }
}
