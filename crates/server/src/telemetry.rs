//! Prometheus metrics (`/metrics`), per-request tracing with a request id, and (when the
//! process exports traces) OpenTelemetry: W3C `traceparent` continued and answered, and
//! the stages of a prediction as child spans (`read`, `decode`, `queue`, `model`, `store`).
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
use std::time::{Instant, SystemTime};

use catsdogs_core::Classified;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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

/// One span per request, named by method and route template (never the raw path: it may
/// hold a prediction id), carrying the request id that `SetRequestIdLayer` put in
/// `x-request-id` (and that the response echoes). With `export`, the span follows the
/// OpenTelemetry HTTP conventions and continues the caller's `traceparent`.
pub fn request_span<B>(req: &axum::http::Request<B>, export: bool) -> tracing::Span {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
    span_for(req, route, export)
}

/// [`request_span`] for a gRPC call: the route is the method's path
/// (`/inference.GRPCInferenceService/ModelInfer`), which names no id.
pub fn grpc_span<B>(req: &axum::http::Request<B>, export: bool) -> tracing::Span {
    let path = req.uri().path();
    let known = path.starts_with("/inference.GRPCInferenceService/")
        && path.len() <= 64
        && path[1..].chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/'));
    span_for(req, if known { path } else { "unmatched" }, export)
}

fn span_for<B>(req: &axum::http::Request<B>, route: &str, export: bool) -> tracing::Span {
    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
    let method = req.method().as_str();
    if !export {
        return tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    }
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = %route,
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    // Fails only when no OpenTelemetry layer is installed: the span then stays a log span.
    let _ = span.set_parent(parent);
    span
}

/// Middleware (inside the request span, only when traces are exported): records the
/// status on the span and answers with the span's `traceparent`, so the caller can find
/// the server's side of its trace.
pub async fn trace_response(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let span = tracing::Span::current();
    span.record("http.response.status_code", resp.status().as_u16());
    if resp.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    inject_traceparent(resp.headers_mut());
    resp
}

/// Writes the current span's `traceparent` into `headers` (HTTP response headers, or a
/// gRPC response's initial metadata).
pub fn inject_traceparent(headers: &mut axum::http::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// Reads W3C trace-context headers for the propagator.
struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// Writes W3C trace-context headers for the propagator.
struct HeaderInjector<'a>(&'a mut axum::http::HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (axum::http::HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// A stage of a prediction request, exported as a child span of the request span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the upload (multipart fields, or the inference request's tensors).
    Read,
    /// Decode, orientation and resize of the request's images.
    Decode,
    /// Waiting in the batcher's queue.
    Queue,
    /// The forward pass the image was part of.
    Model,
    /// The prediction row, the inference-log line and a consented image.
    Store,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Decode => "decode",
            Self::Queue => "queue",
            Self::Model => "model",
            Self::Store => "store",
        }
    }
}

/// The stage spans of one request. Built from the engine's timings after the fact (the
/// queue and the forward pass run on the batcher's thread, shared by several requests),
/// with their real start and end times. Without trace export it holds nothing and does
/// nothing.
pub struct StageSpans {
    parent: Option<opentelemetry::Context>,
}

impl StageSpans {
    /// The stages of the request being handled (whose span is the current span).
    pub fn of_current_request(export: bool) -> Self {
        Self { parent: export.then(|| tracing::Span::current().context()) }
    }

    /// Runs `work` as `stage`.
    pub async fn time<F: Future>(&self, stage: Stage, work: F) -> F::Output {
        if self.parent.is_none() {
            return work.await;
        }
        let started = Instant::now();
        let out = work.await;
        self.add(stage, started, Instant::now());
        out
    }

    /// The decode span of a request whose images entered the engine at `submitted`, then
    /// the queue and model spans of each image.
    pub fn classified<'a>(&self, submitted: Instant, answers: impl IntoIterator<Item = &'a Classified>) {
        if self.parent.is_none() {
            return;
        }
        let mut decode_done = false;
        for (i, c) in answers.into_iter().enumerate() {
            let t = &c.timings;
            let decoded = submitted + t.decode;
            if !decode_done {
                self.add(Stage::Decode, submitted, decoded);
                decode_done = true;
            }
            let image = opentelemetry::KeyValue::new("catsdogs.image.index", i as i64);
            self.add_with(Stage::Queue, decoded, decoded + t.queue, vec![image.clone()]);
            let batch = opentelemetry::KeyValue::new("catsdogs.batch.size", t.batch_size as i64);
            let version = opentelemetry::KeyValue::new("catsdogs.model.version", c.model_version.to_string());
            self.add_with(Stage::Model, decoded + t.queue, decoded + t.queue + t.forward, vec![image, batch, version]);
        }
    }

    /// A stage that ran from `start` to `end`.
    pub fn add(&self, stage: Stage, start: Instant, end: Instant) {
        self.add_with(stage, start, end, Vec::new());
    }

    fn add_with(&self, stage: Stage, start: Instant, end: Instant, attributes: Vec<opentelemetry::KeyValue>) {
        use opentelemetry::trace::{Span as _, Tracer as _};
        let Some(parent) = &self.parent else { return };
        let (now_wall, now) = (SystemTime::now(), Instant::now());
        let wall = |t: Instant| now_wall.checked_sub(now.saturating_duration_since(t)).unwrap_or(now_wall);
        let tracer = opentelemetry::global::tracer("catsdogs");
        let mut span = tracer
            .span_builder(stage.name())
            .with_kind(opentelemetry::trace::SpanKind::Internal)
            .with_start_time(wall(start))
            .with_attributes(attributes)
            .start_with_context(&tracer, parent);
        span.end_with_timestamp(wall(end));
    }
}
