//! The catsdogs HTTP service: seed-compatible JSON API, bearer auth, OpenAPI docs, pages.
//!
//! `build` loads the model and opens the store (the service starts even when the
//! database is down: predictions still answer and their rows wait in memory);
//! `run` serves until the shutdown future resolves, then drains in-flight requests and
//! writes (or spills to disk) every pending row.
pub mod api;
pub mod auth;
pub mod charts;
pub mod config;
pub mod error;
pub mod grpc;
pub mod limits;
pub mod pages;
pub mod session;
pub mod state;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use catsdogs_store::{Store, StoreOptions, redact_url};
use sha2::Digest;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub use catsdogs_store::Retention;
pub use config::{Clock, ServerConfig, system_clock};
pub use error::ApiError;
pub use state::{AppState, Shared};

/// Errors that stop the service from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Secret(#[from] auth::TokenFileError),
    #[error(transparent)]
    Store(#[from] catsdogs_store::StoreError),
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error(
        "an API token from {source_name} has {len} characters: tokens must have at least {MIN_TOKEN_LEN} \
         (a short token can be guessed); generate one with `openssl rand -hex 24`"
    )]
    WeakToken { source_name: String, len: usize },
}

/// Shortest API token accepted, from any source (flag, environment, `.env`, secrets file).
pub const MIN_TOKEN_LEN: usize = 16;

/// Refuses a token shorter than [`MIN_TOKEN_LEN`], naming where it came from (never the token).
fn check_token_strength(token: &str, source_name: &str) -> Result<(), StartError> {
    let len = token.chars().count();
    if len < MIN_TOKEN_LEN { Err(StartError::WeakToken { source_name: source_name.into(), len }) } else { Ok(()) }
}

/// A built service: state plus routes.
pub struct App {
    pub state: AppState,
    pub router: Router,
}

/// Where the token came from, for the one line printed at start (never the token itself).
#[derive(Debug, Clone)]
pub enum TokenSource {
    Configured(usize),
    File { path: std::path::PathBuf, created: bool },
}

/// Loads the model, opens the store and assembles the routes.
pub async fn build(cfg: ServerConfig) -> Result<(App, TokenSource), StartError> {
    cfg.validate()?;
    let limits = limits::Limits::new(cfg.limits.clone()).map_err(config::ConfigError::from)?;
    for dir in [&cfg.data_dir, &cfg.shared_dir] {
        catsdogs_store::private::create_dir_all(dir)
            .map_err(|source| StartError::DataDir { path: dir.display().to_string(), source })?;
    }
    make_private(&cfg);
    warn_if_replicas_cannot_share(&cfg);
    let secrets = cfg.secrets_dir.clone().unwrap_or_else(|| cfg.data_dir.clone());
    let (tokens, source) = if cfg.tokens.iter().any(|t| !t.trim().is_empty()) {
        for t in cfg.tokens.iter().filter(|t| !t.trim().is_empty()) {
            check_token_strength(t.trim(), "API_TOKEN / --api-token")?;
        }
        (auth::Tokens::new(&cfg.tokens), TokenSource::Configured(cfg.tokens.len()))
    } else {
        // The secrets file refuses secrets shorter than 32 characters itself.
        let (token, path, created) = auth::load_or_create_secret(&secrets, "api-token")?;
        (auth::Tokens::new(&[token]), TokenSource::File { path, created })
    };
    let (key, _, _) = auth::load_or_create_secret(&secrets, "pseudonym-key")?;
    let pseudonym_key: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
    let (key, _, _) = auth::load_or_create_secret(&secrets, "session-key")?;
    let session_key: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();

    let model = catsdogs_core::Classifier::load(&cfg.engine_config()).await;
    let _ = telemetry::prometheus();
    match &model {
        Ok(m) => {
            telemetry::record_model_info(&m.card.version, m.card.architecture);
            tracing::info!(version = %m.card.version, backend = %m.backend_kind(), "model loaded")
        }
        Err(e) => {
            tracing::error!(error = %e, dir = %cfg.model_dir.display(), "model not loaded; /api/predict answers 503")
        }
    }

    let url = cfg.effective_database_url();
    let erasure_key = Some(catsdogs_store::ErasureKey::new(pseudonym_key));
    let store = Store::open(&url, &StoreOptions { erasure_key, ..StoreOptions::default() })?;
    tracing::info!(url = %redact_url(&url), "store configured");
    let state: AppState = Arc::new(Shared::new(cfg, model, store, tokens, pseudonym_key, session_key, limits));
    state.measure_images().await;
    match state.outbox.restore(&state.spill_path()) {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "restored prediction rows saved at the last shutdown"),
        Err(e) => tracing::error!(error = %e, "cannot read spilled prediction rows"),
    }
    state.maintain_store().await;
    audit_token_changes(&state).await;
    if let Some(e) = state.store_error() {
        tracing::warn!(error = %e, "database not reachable at start; retrying in the background");
    }
    let router = router(state.clone());
    Ok((App { state, router }, source))
}

/// Says loudly when a replica on PostgreSQL (which several replicas share) keeps consented
/// images or its inference log in a folder of its own: another replica's export, erasure
/// and retention purge could not reach them.
fn warn_if_replicas_cannot_share(cfg: &ServerConfig) {
    let shared_db = cfg.effective_database_url().starts_with("postgres");
    let log_private = cfg.inference_log_dir.as_ref().is_some_and(|d| d.starts_with(&cfg.data_dir));
    if shared_db && (cfg.shared_dir == cfg.data_dir || log_private) {
        tracing::warn!(
            shared_dir = %cfg.shared_dir.display(),
            "PostgreSQL with a private shared directory: if other replicas use this database, their erasures, \
             exports and purges cannot reach this replica's consented images and inference log. Mount one folder \
             in every replica and pass it as --shared-dir (CATSDOGS_SHARED_DIR)"
        );
    }
}

/// Makes what the service keeps readable by its own user only (folders 0700, files 0600),
/// fixing what an older version or a copy left readable. A folder whose modes cannot be
/// changed (a shared mount owned by someone else) is reported, not fatal.
fn make_private(cfg: &ServerConfig) {
    let mut roots = vec![cfg.data_dir.clone(), cfg.shared_dir.clone()];
    roots.extend(cfg.inference_log_dir.clone());
    if let Some(url) = &cfg.database_url
        && let Some(file) = catsdogs_store::sqlite_file(url)
    {
        roots.extend(["", "-wal", "-shm"].map(|suffix| {
            let mut name = file.clone().into_os_string();
            name.push(suffix);
            std::path::PathBuf::from(name)
        }));
    }
    for root in roots {
        match catsdogs_store::private::make_private(&root) {
            Ok(0) => {}
            Ok(n) => tracing::info!(path = %root.display(), changed = n, "made files private (0600) and folders 0700"),
            Err(e) => tracing::warn!(path = %root.display(), error = %e, "cannot make the files private"),
        }
    }
}

/// All routes.
pub fn router(state: AppState) -> Router {
    let upload_limit = state.cfg.max_upload_bytes.saturating_add(64 * 1024);
    let batch_limit = state.cfg.max_upload_bytes.saturating_mul(state.cfg.max_batch_files).saturating_add(64 * 1024);
    // Base64 in JSON makes files 4/3 larger.
    let v2_limit = (batch_limit / 3).saturating_mul(4).saturating_add(64 * 1024);
    // The web page may classify and send feedback with its session cookie + CSRF header.
    let page_callable = Router::new()
        .route("/api/predict", post(api::predict::predict).layer(DefaultBodyLimit::max(upload_limit)))
        .route("/api/predict/batch", post(api::predict::predict_batch).layer(DefaultBodyLimit::max(batch_limit)))
        .route("/api/feedback", post(api::feedback::feedback).layer(DefaultBodyLimit::max(64 * 1024)))
        .route_layer(from_fn_with_state(state.clone(), auth::require_token_or_page));
    let protected = Router::new()
        .route("/api/metrics/daily", get(api::metrics::daily))
        .route("/api/metrics/7d", get(api::metrics::last_7_days))
        .route("/api/metrics/drift", get(api::drift::drift_report))
        .route("/api/predictions/{id}", get(api::predictions::export).delete(api::predictions::erase))
        .route("/api/admin/model/reload", post(api::admin::reload_model))
        .route("/api/admin/drift/reference", post(api::drift::rebuild_reference))
        .route("/api/admin/models", get(api::admin::list_models))
        .route("/metrics", get(telemetry::metrics_endpoint))
        .route_layer(from_fn_with_state(state.clone(), auth::require_token));
    // The inference protocol's routes answer errors in its own shape (`{"error": "..."}`).
    let inference_protocol = Router::new()
        .route("/v2", get(api::v2::server_metadata))
        .route("/v2/models/{name}", get(api::v2::model_metadata))
        .route("/v2/models/{name}/ready", get(api::v2::model_ready))
        .route("/v2/models/{name}/infer", post(api::v2::infer).layer(DefaultBodyLimit::max(v2_limit)))
        .route("/v2/models/{name}/versions/{version}", get(api::v2::versioned_metadata))
        .route("/v2/models/{name}/versions/{version}/ready", get(api::v2::versioned_ready))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(api::v2::versioned_infer).layer(DefaultBodyLimit::max(v2_limit)),
        )
        .route_layer(from_fn_with_state(state.clone(), auth::require_token))
        .route("/v2/health/live", get(api::v2::live))
        .route("/v2/health/ready", get(api::v2::ready))
        .layer(axum::middleware::map_response(api::v2::protocol_error_shape));
    let public = Router::new()
        .route("/api/health", get(api::health::api_health))
        .route("/api/info", get(api::health::info))
        .route("/health", get(api::health::seed_health))
        .merge(pages::routes(state.clone()));
    let export = state.cfg.trace_export;
    let routes = Router::new()
        .merge(page_callable)
        .merge(protected)
        .merge(inference_protocol)
        .merge(public)
        .merge(Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", api::ApiDoc::openapi())).layer(
            tower_http::set_header::SetResponseHeaderLayer::overriding(
                axum::http::header::CONTENT_SECURITY_POLICY,
                axum::http::HeaderValue::from_static(pages::DOCS_CONTENT_SECURITY_POLICY),
            ),
        ))
        .fallback(not_found)
        .layer(tower_http::set_header::SetResponseHeaderLayer::if_not_present(
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            axum::http::HeaderValue::from_static("nosniff"),
        ))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), request_deadline))
        .layer(axum::middleware::from_fn(telemetry::http_metrics))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::internal("the request handler crashed"))
        }));
    // Inside the request span: the response's `traceparent` is that span's.
    let routes = if export { routes.layer(axum::middleware::from_fn(telemetry::trace_response)) } else { routes };
    routes
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |req: &axum::extract::Request| telemetry::request_span(req, export)),
        )
        // Outermost: every request gets an id (or keeps the caller's when it is a short
        // token), echoed in the response.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::map_request(telemetry::drop_unsafe_request_id))
        .with_state(state)
}

/// Ends a request that takes longer than `request_timeout`, body upload included (a slow
/// or stalled upload must not hold a connection and its buffer forever).
async fn request_deadline(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(state.cfg.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request took longer than {} s", state.cfg.request_timeout.as_secs_f64()),
        )),
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found("not_found", format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not accept that method")
}

/// How often the server hands free memory back to the kernel.
const MEMORY_TRIM_INTERVAL: Duration = Duration::from_secs(5);
/// How often today's predictions are checked for drift (docs/drift.md).
const DRIFT_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// Binds `cfg.addr`.
pub async fn bind(cfg: &ServerConfig) -> Result<TcpListener, StartError> {
    TcpListener::bind(cfg.addr).await.map_err(|source| StartError::Bind { addr: cfg.addr.to_string(), source })
}

/// Binds the gRPC address `cfg.grpc` names, if any. An address the operator chose that
/// cannot be bound stops the start; the default port held by something else is a warning
/// and the server runs without gRPC.
pub async fn bind_grpc(cfg: &ServerConfig) -> Result<Option<TcpListener>, StartError> {
    match cfg.grpc {
        config::GrpcListen::Off => Ok(None),
        config::GrpcListen::Explicit(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| StartError::Bind { addr: addr.to_string(), source }),
        config::GrpcListen::Default(addr) => match TcpListener::bind(addr).await {
            Ok(l) => Ok(Some(l)),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "the default gRPC port is taken: no gRPC (set --grpc-addr or --no-grpc)");
                Ok(None)
            }
        },
    }
}

/// Serves HTTP until `shutdown` resolves; then finishes in-flight requests and saves
/// pending rows.
pub async fn run(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with_grpc(app, listener, None, shutdown).await
}

/// [`run`], plus the gRPC inference service on `grpc` when given (both stop together).
pub async fn run_with_grpc(
    app: App,
    listener: TcpListener,
    grpc: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = app.state.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grpc_task = grpc.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "gRPC inference service started");
        }
        let service = grpc::service(state.clone());
        let stop = signal(stopped.clone());
        let export = state.cfg.trace_export;
        // The same request spans as HTTP; with trace export, the answer's initial metadata
        // carries the call's `traceparent`.
        let tracing = tower::ServiceBuilder::new()
            .layer(
                TraceLayer::new_for_grpc()
                    .make_span_with(move |req: &axum::http::Request<_>| telemetry::grpc_span(req, export)),
            )
            .map_response(move |mut resp: axum::http::Response<_>| {
                if export {
                    telemetry::inject_traceparent(resp.headers_mut());
                }
                resp
            });
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(tracing)
                .add_service(service)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), stop)
                .await
        })
    });
    let maintenance = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(state.cfg.retry_interval).await;
                state.maintain_store().await;
            }
        })
    };
    let purging = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                scheduled_purge(&state).await;
                state.measure_images().await;
                tokio::time::sleep(state.cfg.purge_interval).await;
            }
        })
    };
    // The drift check of today's predictions, each hour (gauges; a warning when it fires).
    let drift_checks = {
        let state = state.clone();
        tokio::spawn(async move {
            // The first a minute after start (the model warmed up), then every hour.
            tokio::time::sleep(Duration::from_secs(60)).await;
            loop {
                api::drift::check_today(&state).await;
                tokio::time::sleep(DRIFT_CHECK_INTERVAL).await;
            }
        })
    };
    let pruning = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                state.limits.prune(std::time::Instant::now());
            }
        })
    };
    // Free memory goes back to the kernel every few seconds (bench section 6).
    let trimming = tokio::spawn(async move {
        loop {
            tokio::time::sleep(MEMORY_TRIM_INTERVAL).await;
            let _ = tokio::task::spawn_blocking(catsdogs_core::release_free_memory).await;
        }
    });
    let served = serve_connections(listener, app.router, state.cfg.header_read_timeout, signal(stopped)).await;
    if let Some(task) = grpc_task {
        match tokio::time::timeout(SHUTDOWN_GRACE, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "the gRPC service failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "the gRPC service panicked"),
            Err(_) => tracing::warn!("gRPC calls still running after the shutdown grace period were cut off"),
        }
    }
    trimming.abort();
    maintenance.abort();
    purging.abort();
    pruning.abort();
    drift_checks.abort();
    state.inference_log.flush().await;
    // Last chance to write queued rows; what cannot be written is kept on disk for the next start.
    let _ = tokio::time::timeout(Duration::from_secs(5), state.maintain_store()).await;
    if !state.outbox.is_empty() {
        match state.outbox.spill(&state.spill_path()) {
            Ok(n) => {
                tracing::warn!(rows = n, path = %state.spill_path().display(), "database down at shutdown; rows saved")
            }
            Err(e) => tracing::error!(error = %e, "could not save pending prediction rows"),
        }
    }
    state.store.close().await;
    served
}

/// How long in-flight requests may run once shutdown has begun.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The accept loop: HTTP/1.1 connections served by hyper with a header read timeout
/// (axum::serve has none, so a client dribbling header bytes held a connection forever),
/// then a graceful shutdown that lets in-flight requests finish.
async fn serve_connections(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Every request learns its connection's peer (rate limits per client address).
        let service = hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(limits::PeerAddr(peer));
                req
            },
        ));
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still running after the shutdown grace period were cut off");
    }
    Ok(())
}

/// One run of the automatic retention purge (skipped while the database is not ready).
pub async fn scheduled_purge(state: &AppState) {
    if !state.migrated.load(std::sync::atomic::Ordering::Acquire) {
        return;
    }
    state.inference_log.flush().await;
    let now = (state.cfg.clock)();
    if let Err(e) = catsdogs_store::retention::purge(state.holdings(), state.cfg.retention, now, "scheduler").await {
        metrics::counter!("catsdogs_store_errors_total", "operation" => "purge").increment(1);
        tracing::warn!(error = %e, "retention purge failed; retrying at the next run");
    }
}

/// Audits a change of the accepted tokens (a rotation): the sorted fingerprints are
/// compared with those of the newest `token_rotation` audit row, so the check lives in the
/// shared database and works for replicas whose disks are not kept (Kubernetes pods).
async fn audit_token_changes(state: &AppState) {
    let detail = format!("accepted token fingerprints: {}", state.tokens.fingerprints().join(","));
    match state.store.latest_audit_detail("token_rotation").await {
        Ok(Some(last)) if last == detail => {}
        Ok(_) => {
            if let Err(e) = state.store.audit((state.cfg.clock)(), "configuration", "token_rotation", &detail).await {
                tracing::warn!(error = %e, "token set not audited");
            }
        }
        // Checked again at the next start.
        Err(e) => tracing::warn!(error = %e, "token set not audited: database unavailable"),
    }
}

/// Reloads the model on every SIGHUP (`kill -HUP`, e.g. after `catsdogs models promote`).
pub fn reload_on_sighup(state: AppState) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload through POST /api/admin/model/reload");
            return;
        };
        while hup.recv().await.is_some() {
            // Failures are logged by the reload; the current model stays.
            let _ = state.reload_model("signal:SIGHUP").await;
        }
    });
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
