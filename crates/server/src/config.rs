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

/// Where the gRPC inference service listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcListen {
    /// No gRPC (`--no-grpc`; the library default, so tests opt in).
    Off,
    /// The conventional port ([`DEFAULT_GRPC_ADDR`]): when something else holds it, the
    /// server starts with a warning and without gRPC.
    Default(SocketAddr),
    /// An address the operator chose: when it cannot be bound, the start fails.
    Explicit(SocketAddr),
}

/// Triton's convention: HTTP on 8000, gRPC on 8001.
pub const DEFAULT_GRPC_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8001);

/// Everything the service needs to start.
#[derive(Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// The Open Inference Protocol's gRPC service (see [`GrpcListen`]).
    pub grpc: GrpcListen,
    /// Holds the SQLite file, the generated token and the pseudonymisation key.
    pub data_dir: PathBuf,
    /// What another replica must find (consented images; the inference log by default):
    /// one folder all replicas mount. Defaults to `data_dir` (one replica).
    pub shared_dir: PathBuf,
    /// This replica's name in its inference-log files (a host name made file-safe).
    pub replica_id: String,
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
    /// Rate limits, the upload budget and visitor quotas.
    pub limits: crate::limits::LimitsConfig,
    /// Memory one image's decode may take, in bytes (after JPEG DCT scaling).
    pub max_decode_bytes: u64,
    /// Memory all decodes in flight may take together, in bytes.
    pub decode_budget_bytes: u64,
    /// Request spans go to an OpenTelemetry exporter the process installed: incoming
    /// `traceparent` headers are continued, responses carry one, and predictions add their
    /// stage spans. Off: none of that work is done.
    pub trace_export: bool,
    pub clock: Clock,
}

/// A setting that cannot work, found at start (the message names the setting).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{setting} must be {rule}, got {value}")]
    OutOfRange { setting: &'static str, rule: &'static str, value: String },
    #[error(
        "the upload budget ({budget} bytes) is smaller than one largest upload ({upload} bytes): no upload could \
         ever be read; raise --upload-budget-mib or lower --max-upload-mib"
    )]
    BudgetBelowUpload { budget: usize, upload: usize },
    #[error(transparent)]
    Limits(#[from] crate::limits::LimitsError),
}

/// Largest single upload accepted by configuration (the body limits are computed from it).
pub const MAX_UPLOAD_BYTES_CEILING: usize = 1 << 30;
/// Most files in one request accepted by configuration.
pub const MAX_BATCH_FILES_CEILING: usize = 1024;

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
            max_decode_bytes: self.max_decode_bytes,
            decode_budget_bytes: self.decode_budget_bytes,
        }
    }

    /// Defaults that work on a fresh machine (loopback, SQLite under `data_dir`).
    pub fn new(model_dir: PathBuf, data_dir: PathBuf) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let log_dir = data_dir.join("logs");
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            grpc: GrpcListen::Off,
            shared_dir: data_dir.clone(),
            replica_id: "replica".into(),
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
            limits: crate::limits::LimitsConfig::default(),
            max_decode_bytes: catsdogs_core::DEFAULT_MAX_DECODE_BYTES,
            decode_budget_bytes: catsdogs_core::DEFAULT_DECODE_BUDGET_BYTES,
            trace_export: false,
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

    /// (files per request, bytes per file) for a caller: visitors get the smaller of their
    /// own limits and the general ones.
    pub fn upload_limits(&self, visitor: bool) -> (usize, usize) {
        if visitor {
            (
                self.limits.visitor_max_files.min(self.max_batch_files),
                self.limits.visitor_max_upload_bytes.min(self.max_upload_bytes),
            )
        } else {
            (self.max_batch_files, self.max_upload_bytes)
        }
    }

    /// Checks sizes, counts and durations before anything starts, so a setting that cannot
    /// work is an error naming it instead of a service that misbehaves (body limits that
    /// overflow, a zero timeout, a budget that no upload fits in). The database URL is
    /// checked by the store when it opens.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use std::time::Duration;
        fn range<T: PartialOrd + std::fmt::Debug>(
            setting: &'static str,
            rule: &'static str,
            value: T,
            ok: impl FnOnce(&T) -> bool,
        ) -> Result<(), ConfigError> {
            if ok(&value) {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange { setting, rule, value: format!("{value:?}") })
            }
        }
        let l = &self.limits;
        range("--max-upload-mib", "between 1 byte and 1 GiB", self.max_upload_bytes, |v| {
            (1..=MAX_UPLOAD_BYTES_CEILING).contains(v)
        })?;
        range("--max-batch-files", "between 1 and 1024", self.max_batch_files, |v| {
            (1..=MAX_BATCH_FILES_CEILING).contains(v)
        })?;
        range("--visitor-max-files", "at least 1", l.visitor_max_files, |v| *v >= 1)?;
        range("--visitor-max-upload-mib", "at least 1 byte", l.visitor_max_upload_bytes, |v| *v >= 1)?;
        let positive = |setting, d: Duration| range(setting, "longer than zero", d, |d| !d.is_zero());
        positive("--request-timeout-s", self.request_timeout)?;
        positive("--header-timeout-s", self.header_read_timeout)?;
        positive("--purge-every-min", self.purge_interval)?;
        positive("--login-lockout-s", l.login_lockout)?;
        positive("login window", l.login_window)?;
        range("--login-lockout-max-s", "at least --login-lockout-s", l.login_lockout_max, |d| *d >= l.login_lockout)?;
        range("--login-max-failures", "at least 1", l.login_max_failures, |v| *v >= 1)?;
        range("--max-batch", "between 1 and 1024", self.batching.max_batch, |v| (1..=1024).contains(v))?;
        range("--queue-capacity", "at least 1", self.batching.queue_capacity, |v| *v >= 1)?;
        range("--threads", "at least 1", self.inference_threads, |v| *v >= 1)?;
        range("--max-decode-mib", "at least 1 MiB", self.max_decode_bytes, |v| *v >= 1 << 20)?;
        range("--decode-budget-mib", "at least --max-decode-mib", self.decode_budget_bytes, |v| {
            *v >= self.max_decode_bytes
        })?;
        if l.upload_budget_bytes < self.max_upload_bytes {
            return Err(ConfigError::BudgetBelowUpload {
                budget: l.upload_budget_bytes,
                upload: self.max_upload_bytes,
            });
        }
        crate::limits::Limits::new(l.clone())?;
        Ok(())
    }

    /// The database URL actually used.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("catsdogs.db").display()),
        }
    }
}
