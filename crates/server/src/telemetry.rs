//! Prometheus metrics (`/metrics`) and per-request tracing with a request id.
//!
//! Metric names (all prefixed `catsdogs_`):
//! - `http_requests_total{route,method,status}`, `http_request_duration_seconds{route}`;
//! - `prediction_duration_seconds{stage}` with stage `queue` (waiting for an inference
//!   slot), `decode` (decode + resize), `model` (forward pass) and `total`;
//! - `batch_size` (images per forward pass), `predictions_total{label}`,
//!   `prediction_errors_total{code}`, `feedback_total{verdict}`;
//! - `model_info{version,architecture}` (1 for the model served, 0 for one a hot reload
//!   replaced), `store_errors_total{operation}`,
//!   `outbox_rows` (prediction rows waiting for the database), `inference_log_errors_total`.
use catsdogs_model::Architecture;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

/// Latency buckets in seconds: 1 ms to 10 s.
const SECONDS_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; later calls return the same handle.
/// `None` when another recorder was installed first (metrics are then not exported).
pub fn prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("catsdogs_batch_size".into()), &BATCH_BUCKETS));
            match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::error!(error = %e, "Prometheus recorder not installed; /metrics stays empty");
                    None
                }
            }
        })
        .clone()
}

/// Middleware: counts every request by route template (never the raw path, which would
/// create one series per id) and status, and times it.
pub async fn http_metrics(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    // Only standard methods become label values: any token is a valid method to hyper, and
    // each new label value would be a new series.
    use axum::http::Method;
    let method: &'static str = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("catsdogs_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("catsdogs_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics_endpoint(State(state): State<AppState>) -> Response {
    metrics::gauge!("catsdogs_outbox_rows").set(state.outbox.len() as f64);
    match prometheus() {
        Some(h) => {
            h.run_upkeep();
            ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], h.render())
                .into_response()
        }
        None => crate::error::ApiError::unavailable("metrics_unavailable", "no metrics recorder").into_response(),
    }
}

/// Records the loaded model as `catsdogs_model_info{version,architecture} 1`.
pub fn record_model_info(version: &str, architecture: Architecture) {
    metrics::gauge!("catsdogs_model_info", "version" => version.to_string(), "architecture" => architecture.as_str())
        .set(1.0);
}

/// Sets the series of a model that a hot reload replaced to 0, so that only the served
/// model's series reads 1 (a query on `catsdogs_model_info == 1` finds one version).
pub fn retire_model_info(version: &str, architecture: Architecture) {
    metrics::gauge!("catsdogs_model_info", "version" => version.to_string(), "architecture" => architecture.as_str())
        .set(0.0);
}

/// Removes a caller's `x-request-id` unless it is 1-64 characters of `[A-Za-z0-9._-]`, so
/// logs cannot be fed arbitrary text; a fresh id is then generated.
pub async fn drop_unsafe_request_id(mut req: Request) -> Request {
    let ok = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).is_some_and(|v| {
        (1..=64).contains(&v.len()) && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    });
    if !ok {
        req.headers_mut().remove("x-request-id");
    }
    req
}

/// One span per request, named by method and route, carrying the request id that
/// `SetRequestIdLayer` put in `x-request-id` (and that the response echoes).
pub fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| req.uri().path(), |p| p.as_str());
    tracing::info_span!("request", request_id = %id, method = %req.method(), route = %route)
}
