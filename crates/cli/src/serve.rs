//! `catsdogs serve`: the HTTP service with defaults that work on a fresh machine.
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use catsdogs_core::BackendKind;
use catsdogs_server::config::{DEFAULT_GRPC_ADDR, GrpcListen};
use catsdogs_server::{ServerConfig, TokenSource};
use clap::Args;

use crate::commands::DEFAULT_MODEL_DIR;

/// Where `catsdogs serve` listens unless told otherwise (and where `catsdogs healthcheck`
/// looks for it).
const DEFAULT_ADDR: &str = "127.0.0.1:8000";

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CATSDOGS_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// Address of the Open Inference Protocol's gRPC service (default 127.0.0.1:8001, where
    /// a taken port only warns; an address given here that cannot be bound stops the start).
    #[arg(long, env = "CATSDOGS_GRPC_ADDR", conflicts_with = "no_grpc")]
    pub grpc_addr: Option<SocketAddr>,
    /// No gRPC service.
    #[arg(long, env = "CATSDOGS_NO_GRPC")]
    pub no_grpc: bool,
    /// Directory for the SQLite database, the generated token and the pseudonymisation key.
    #[arg(long, env = "CATSDOGS_STATE_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// `sqlite://FILE` or `postgres://USER:PASS@HOST:PORT/DB` (default: SQLite in --data-dir;
    /// the seed's DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD are used when DB_HOST is set).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Model directory (model.json + model.onnx).
    #[arg(long, env = "CATSDOGS_MODEL", default_value = DEFAULT_MODEL_DIR)]
    pub model: PathBuf,
    /// Model registry listed by GET /api/admin/models and the dashboard (default: the
    /// folder holding --model when that is a registry's `current` link).
    #[arg(long, env = "CATSDOGS_REGISTRY")]
    pub registry: Option<PathBuf>,
    #[arg(long, env = "CATSDOGS_BACKEND", default_value = "onnxruntime")]
    pub backend: BackendKind,
    /// Accepted bearer tokens, comma-separated (several during a rotation). Without one, a
    /// random token is generated in --data-dir/api-token (mode 0600).
    #[arg(long, env = "API_TOKEN", hide_env_values = true, value_delimiter = ',')]
    pub api_token: Vec<String>,
    /// Largest upload per file, in MiB.
    #[arg(long, env = "CATSDOGS_MAX_UPLOAD_MIB", default_value_t = 10.0)]
    pub max_upload_mib: f64,
    /// Most files in one /api/predict/batch request.
    #[arg(long, env = "CATSDOGS_MAX_BATCH_FILES", default_value_t = 32)]
    pub max_batch_files: usize,
    /// Test-time flip: average each image with its mirror image (twice the forward cost).
    #[arg(long, env = "CATSDOGS_TTA_FLIP")]
    pub tta_flip: bool,
    /// Mark the web page's session cookie `Secure` (when served over HTTPS, e.g. behind a proxy).
    #[arg(long, env = "CATSDOGS_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// Inference threads (default: all cores).
    #[arg(long, env = "CATSDOGS_THREADS")]
    pub threads: Option<usize>,
    /// Where every replica keeps what another replica must find: consented images and the
    /// inference log. Replicas on one database mount the same folder here (default: --data-dir).
    #[arg(long, env = "CATSDOGS_SHARED_DIR")]
    pub shared_dir: Option<PathBuf>,
    /// This replica's name in its inference-log files (default: the host name).
    #[arg(long, env = "CATSDOGS_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Inference log directory, one CSV per UTC day and replica (default: --shared-dir/logs).
    #[arg(long, env = "CATSDOGS_INFERENCE_LOG_DIR")]
    pub inference_log_dir: Option<PathBuf>,
    /// Do not write the inference log.
    #[arg(long, env = "CATSDOGS_NO_INFERENCE_LOG")]
    pub no_inference_log: bool,
    /// Longest a request may take, upload included (slower ones get 408).
    #[arg(long, env = "CATSDOGS_REQUEST_TIMEOUT_S", default_value_t = 60)]
    pub request_timeout_s: u64,
    /// Longest a client may take to send its request headers (slower ones are cut off).
    #[arg(long, env = "CATSDOGS_HEADER_TIMEOUT_S", default_value_t = 10)]
    pub header_timeout_s: u64,
    /// Minutes between two runs of the automatic retention purge.
    #[arg(long, env = "CATSDOGS_PURGE_EVERY_MIN", default_value_t = 60)]
    pub purge_every_min: u64,
    /// Directory holding api-token, pseudonym-key and session-key (default: --data-dir);
    /// point every replica at the same secrets, e.g. /run/secrets.
    #[arg(long, env = "CATSDOGS_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    #[command(flatten)]
    pub retention: crate::db::RetentionArgs,
    /// Largest number of images in one forward pass (dynamic batching across requests).
    #[arg(long, env = "CATSDOGS_MAX_BATCH", default_value_t = 8)]
    pub max_batch: usize,
    /// Longest an image waits for others to share its forward pass, in milliseconds.
    #[arg(long, env = "CATSDOGS_BATCH_WAIT_MS", default_value_t = 2)]
    pub batch_wait_ms: u64,
    /// Images that may wait for the model at once; beyond, requests get 503 + Retry-After.
    #[arg(long, env = "CATSDOGS_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,
    /// Memory one image's decode may take, in MiB (JPEGs count at the DCT scale they are
    /// decoded at); beyond, 422 `image_too_large`.
    #[arg(long, env = "CATSDOGS_MAX_DECODE_MIB", default_value_t = 128)]
    pub max_decode_mib: u64,
    /// Memory all decodes in flight may take together, in MiB; a decode waits up to 1 s for
    /// room, then 503 `overloaded`.
    #[arg(long, env = "CATSDOGS_DECODE_BUDGET_MIB", default_value_t = 384)]
    pub decode_budget_mib: u64,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Limits against abusive clients (see docs/reliability.md, "Limits").
#[derive(Args)]
pub struct LimitArgs {
    /// Upload bytes held in memory at once across all requests, in MiB; beyond, uploads get
    /// 503 `overloaded` with Retry-After.
    #[arg(long, env = "CATSDOGS_UPLOAD_BUDGET_MIB", default_value_t = 256.0)]
    pub upload_budget_mib: f64,
    /// Files per request from the web page's visitor sessions.
    #[arg(long, env = "CATSDOGS_VISITOR_MAX_FILES", default_value_t = 4)]
    pub visitor_max_files: usize,
    /// Largest file from a visitor session, in MiB.
    #[arg(long, env = "CATSDOGS_VISITOR_MAX_UPLOAD_MIB", default_value_t = 10.0)]
    pub visitor_max_upload_mib: f64,
    /// Visitor calls (API and forms) per session: `PER_MINUTE[:BURST]`.
    #[arg(long, env = "CATSDOGS_RATE_LIMIT_VISITOR", default_value = "30:20")]
    pub rate_limit_visitor: catsdogs_server::limits::RateLimit,
    /// New sessions per client address: `PER_MINUTE[:BURST]`.
    #[arg(long, env = "CATSDOGS_RATE_LIMIT_SESSIONS", default_value = "30:60")]
    pub rate_limit_sessions: catsdogs_server::limits::RateLimit,
    /// Calls per API token, `PER_MINUTE[:BURST]` (default: token clients are not limited).
    #[arg(long, env = "CATSDOGS_RATE_LIMIT_TOKEN")]
    pub rate_limit_token: Option<catsdogs_server::limits::RateLimit>,
    /// Wrong tokens on /login from one address within 15 minutes before a lockout.
    #[arg(long, env = "CATSDOGS_LOGIN_MAX_FAILURES", default_value_t = 5)]
    pub login_max_failures: u32,
    /// First sign-in lockout in seconds; each further one doubles, up to --login-lockout-max-s.
    #[arg(long, env = "CATSDOGS_LOGIN_LOCKOUT_S", default_value_t = 60)]
    pub login_lockout_s: u64,
    #[arg(long, env = "CATSDOGS_LOGIN_LOCKOUT_MAX_S", default_value_t = 900)]
    pub login_lockout_max_s: u64,
    /// Proxies (addresses or CIDR ranges, comma-separated) whose X-Forwarded-For is believed
    /// for the client address; from anyone else the header is ignored.
    #[arg(long, env = "CATSDOGS_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<ipnet::IpNet>,
    /// Consented images kept per visitor session and day.
    #[arg(long, env = "CATSDOGS_IMAGES_PER_SESSION", default_value_t = 20)]
    pub images_per_session: u32,
    /// Disk space all kept images may take, in MiB; beyond, images are not kept
    /// (`image_kept: false`) and predictions still answer.
    #[arg(long, env = "CATSDOGS_IMAGES_MAX_MIB", default_value_t = 2048)]
    pub images_max_mib: u64,
}

/// MiB given as a decimal number, in bytes (saturating; the server's checks name a value
/// out of range).
fn mib(v: f64) -> usize {
    if v.is_finite() && v > 0.0 { (v * 1024.0 * 1024.0) as usize } else { 0 }
}

impl LimitArgs {
    fn config(self) -> catsdogs_server::limits::LimitsConfig {
        let defaults = catsdogs_server::limits::LimitsConfig::default();
        catsdogs_server::limits::LimitsConfig {
            upload_budget_bytes: mib(self.upload_budget_mib),
            visitor_max_files: self.visitor_max_files,
            visitor_max_upload_bytes: mib(self.visitor_max_upload_mib),
            visitor_rate: self.rate_limit_visitor,
            token_rate: self.rate_limit_token,
            session_rate: self.rate_limit_sessions,
            login_max_failures: self.login_max_failures,
            login_lockout: std::time::Duration::from_secs(self.login_lockout_s),
            login_lockout_max: std::time::Duration::from_secs(self.login_lockout_max_s),
            trusted_proxies: self.trusted_proxy,
            images_per_session_per_day: self.images_per_session,
            images_max_total_bytes: self.images_max_mib.saturating_mul(1024 * 1024),
            ..defaults
        }
    }
}

/// `catsdogs healthcheck`: for container health checks where no curl is installed.
#[derive(Args)]
pub struct HealthcheckArgs {
    /// Readiness URL to query (plain HTTP). Default: `/api/health` on the address given by
    /// --addr, with 127.0.0.1 in place of a wildcard address (0.0.0.0 or [::]).
    #[arg(long, env = "CATSDOGS_HEALTHCHECK_URL")]
    pub url: Option<String>,
    /// The address `catsdogs serve` listens on (the same CATSDOGS_ADDR), used when no URL
    /// is given.
    #[arg(long, env = "CATSDOGS_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,
    #[arg(long, default_value_t = 3)]
    pub timeout_s: u64,
}

/// The readiness URL for a server listening on `addr`: `/api/health` there, probed on
/// 127.0.0.1 (same port) when `addr` is a wildcard (0.0.0.0 or [::]) that cannot be dialled.
pub fn health_url_for(addr: SocketAddr) -> String {
    let target = if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    format!("http://{target}/api/health")
}

/// GETs the URL (--url / CATSDOGS_HEALTHCHECK_URL, else derived from --addr / CATSDOGS_ADDR);
/// success when the status is 200.
pub fn healthcheck(a: HealthcheckArgs) -> Result<bool> {
    use std::io::{Read, Write};
    let url = a.url.filter(|u| !u.trim().is_empty()).unwrap_or_else(|| health_url_for(a.addr));
    let rest = url.trim().strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let timeout = std::time::Duration::from_secs(a.timeout_s.max(1));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)?.next().context("cannot resolve the host")?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 16];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    let ok = line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.0 200");
    eprintln!("{url} {}", line.lines().next().unwrap_or("no answer"));
    Ok(ok)
}

/// The seed's PostgreSQL settings, when DB_HOST is set.
fn seed_database_url() -> Option<String> {
    let host = std::env::var("DB_HOST").ok().filter(|h| !h.is_empty())?;
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let (port, name, user, pass) =
        (var("DB_PORT", "5432"), var("DB_NAME", "catsdogs"), var("DB_USER", "postgres"), var("DB_PASSWORD", ""));
    let creds = if pass.is_empty() { user } else { format!("{user}:{pass}") };
    Some(format!("postgres://{creds}@{host}:{port}/{name}"))
}

/// The machine's host name (a container's or pod's name), or `replica`.
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "replica".into())
}

/// The server's Tokio runtime (built before logging: the OTLP exporter lives in it).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// Serves until a shutdown signal; `trace_export` when an OTLP exporter is installed.
pub fn serve(a: ServeArgs, rt: &tokio::runtime::Runtime, trace_export: bool) -> Result<()> {
    let mut cfg = ServerConfig::new(a.model, a.data_dir);
    cfg.registry_dir = a.registry;
    cfg.addr = a.addr;
    cfg.grpc = match (a.no_grpc, a.grpc_addr) {
        (true, _) => GrpcListen::Off,
        (false, Some(addr)) => GrpcListen::Explicit(addr),
        (false, None) => GrpcListen::Default(DEFAULT_GRPC_ADDR),
    };
    cfg.database_url = a.database_url.or_else(seed_database_url);
    cfg.backend = a.backend;
    cfg.tokens = a.api_token.into_iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
    cfg.max_upload_bytes = mib(a.max_upload_mib);
    cfg.max_batch_files = a.max_batch_files;
    cfg.tta_flip = a.tta_flip;
    cfg.secure_cookies = a.secure_cookies;
    cfg.retention = a.retention.into();
    cfg.secrets_dir = a.secrets_dir;
    cfg.request_timeout = std::time::Duration::from_secs(a.request_timeout_s);
    cfg.header_read_timeout = std::time::Duration::from_secs(a.header_timeout_s);
    cfg.purge_interval = std::time::Duration::from_secs(a.purge_every_min.saturating_mul(60));
    cfg.limits = a.limits.config();
    cfg.max_decode_bytes = a.max_decode_mib.saturating_mul(1 << 20);
    cfg.decode_budget_bytes = a.decode_budget_mib.saturating_mul(1 << 20);
    if let Some(shared) = a.shared_dir {
        cfg.inference_log_dir = Some(shared.join("logs"));
        cfg.shared_dir = shared;
    }
    cfg.replica_id = catsdogs_store::inference_log::replica_id(&a.replica_id.unwrap_or_else(host_name));
    if a.no_inference_log {
        cfg.inference_log_dir = None;
    } else if let Some(dir) = a.inference_log_dir {
        cfg.inference_log_dir = Some(dir);
    }
    cfg.batching = catsdogs_core::batcher::BatcherConfig {
        max_batch: a.max_batch,
        max_wait: std::time::Duration::from_millis(a.batch_wait_ms),
        queue_capacity: a.queue_capacity,
        workers: 1,
    };
    if let Some(t) = a.threads {
        cfg.inference_threads = t;
        cfg.max_concurrent_inferences = t.max(1);
    }
    // Settings that cannot work stop here, before anything is bound or opened.
    cfg.validate().context("invalid configuration")?;
    cfg.trace_export = trace_export;
    rt.block_on(async move {
        let listener = catsdogs_server::bind(&cfg).await?;
        let grpc = catsdogs_server::bind_grpc(&cfg).await?;
        let (app, source) = catsdogs_server::build(cfg.clone()).await?;
        match source {
            TokenSource::Configured(n) => tracing::info!(tokens = n, "API tokens from API_TOKEN / --api-token"),
            TokenSource::File { path, created } => eprintln!(
                "API token {} {} (send it as `Authorization: Bearer <token>`)",
                if created { "generated in" } else { "read from" },
                path.display()
            ),
        }
        catsdogs_server::reload_on_sighup(app.state.clone());
        let addr = listener.local_addr().unwrap_or(cfg.addr);
        eprintln!("catsdogs listening on http://{addr}  (page: /  API docs: /docs/)");
        if let Some(addr) = grpc.as_ref().and_then(|l| l.local_addr().ok()) {
            eprintln!("grpc listening on {addr}  (inference.GRPCInferenceService)");
        }
        catsdogs_server::run_with_grpc(app, listener, grpc, catsdogs_server::shutdown_signal())
            .await
            .context("server failed")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn health_url_follows_the_serve_address() {
        assert_eq!(health_url_for(addr(DEFAULT_ADDR)), "http://127.0.0.1:8000/api/health");
        // Wildcards (the container's CATSDOGS_ADDR=0.0.0.0:8000) are probed on loopback.
        assert_eq!(health_url_for(addr("0.0.0.0:8000")), "http://127.0.0.1:8000/api/health");
        assert_eq!(health_url_for(addr("[::]:9000")), "http://127.0.0.1:9000/api/health");
        // A specific address is dialled as it is; IPv6 keeps its brackets.
        assert_eq!(health_url_for(addr("10.1.2.3:8080")), "http://10.1.2.3:8080/api/health");
        assert_eq!(health_url_for(addr("[::1]:8000")), "http://[::1]:8000/api/health");
    }
}
