//! OpenTelemetry: `catsdogs serve` with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an
//! in-test OTLP receiver (the collector's trace service, from the `opentelemetry-proto`
//! definitions) over gRPC and over HTTP/protobuf. A predict sent with a W3C `traceparent`
//! must arrive as a server span under the caller's span, with its stages as children, and
//! no span may carry a prediction id or an uploaded file's name.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::response::IntoResponse;
use catsdogs_server::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use catsdogs_server::grpc::proto::model_infer_request::InferInputTensor;
use catsdogs_server::grpc::proto::{ModelInferRequest, ServerLiveRequest};
use catsdogs_testkit::seed_cnn_dir;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

use crate::helpers::{Server, TOKEN, png, shared_secrets};

/// The caller's trace: a trace id and the span id of the caller's own span.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// A file name that must not reach any span.
const FILE_NAME: &str = "private-holiday-photo-of-rex.png";

/// Every export request the receiver got.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

impl Received {
    fn push(&self, r: ExportTraceServiceRequest) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(r);
    }

    /// Every span received so far, of any trace.
    fn spans(&self) -> Vec<Span> {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.iter().flat_map(|r| &r.resource_spans).flat_map(|r| &r.scope_spans).flat_map(|s| s.spans.clone()).collect()
    }

    /// Every byte received, to search for what must never be exported.
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).iter().flat_map(Message::encode_to_vec).collect()
    }

    /// Waits (20 s at most) until the spans of `trace` include a span named `name` and
    /// every stage named in `stages` under it; those spans.
    async fn wait_for(&self, trace: &[u8], name: &str, stages: &[&str]) -> Vec<Span> {
        let mut spans = Vec::new();
        for _ in 0..200 {
            spans = self.spans().into_iter().filter(|s| s.trace_id == trace).collect();
            if let Some(server) = spans.iter().find(|s| s.name == name) {
                let children: Vec<&str> =
                    spans.iter().filter(|s| s.parent_span_id == server.span_id).map(|s| s.name.as_str()).collect();
                if stages.iter().all(|st| children.contains(st)) {
                    return spans;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let names: Vec<String> = spans.iter().map(|s| s.name.clone()).collect();
        panic!("no span {name:?} with stages {stages:?} in trace; got {names:?}")
    }
}

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC trace receiver on an ephemeral loopback port.
async fn grpc_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Received::default();
    let service = TraceServiceServer::new(Collector(received.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, received)
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) on an ephemeral loopback port.
async fn http_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Received::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| async move {
            match ExportTraceServiceRequest::decode(body) {
                Ok(r) => {
                    sink.push(r);
                    let answer = ExportTraceServiceResponse::default().encode_to_vec();
                    ([(axum::http::header::CONTENT_TYPE, "application/x-protobuf")], answer).into_response()
                }
                Err(_) => axum::http::StatusCode::BAD_REQUEST.into_response(),
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{CALLER_SPAN}-01")
}

/// The string attribute `key` of `span`.
fn attribute(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    })
}

/// Starts `catsdogs serve` exporting to `endpoint` with these extra variables.
fn traced_server(dir: &std::path::Path, endpoint: &str, extra: &[(&str, &str)]) -> Server {
    let secrets = shared_secrets(dir);
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        // Export every 100 ms instead of every 5 s: the test waits for the spans.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("CATSDOGS_GRPC_ADDR", "127.0.0.1:0"),
    ];
    env.extend_from_slice(extra);
    Server::start_with_env(None, &dir.join("data"), &secrets, &seed_cnn_dir(), &env)
}

/// `POST /api/predict` of one image named [`FILE_NAME`] with the caller's `traceparent`.
async fn predict_in_trace(server: &Server) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(png(7)).file_name(FILE_NAME);
    let r = reqwest::Client::new()
        .post(format!("{}/api/predict", server.base))
        .bearer_auth(TOKEN)
        .header("traceparent", traceparent())
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("predict");
    assert_eq!(r.status(), 200);
    r
}

/// [`predict_in_trace`]: the prediction id and the answer's `traceparent`.
async fn traced_predict(server: &Server) -> (String, String) {
    let r = predict_in_trace(server).await;
    let answered = r.headers().get("traceparent").and_then(|v| v.to_str().ok()).expect("a traceparent answer");
    let answered = answered.to_string();
    let body: serde_json::Value = r.json().await.expect("json");
    (body["id"].as_str().expect("id").to_string(), answered)
}

/// The checks both transports share: the server span continues the caller's span and is
/// the span the answer names; each stage is its child and lies within it.
fn check_predict_trace(spans: &[Span], answered: &str) {
    let server = spans.iter().find(|s| s.name == "POST /api/predict").expect("server span");
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN, "the server span's parent is the caller's span");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(attribute(server, "http.route").as_deref(), Some("/api/predict"));
    assert_eq!(attribute(server, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(answered, format!("00-{TRACE_ID}-{}-01", hex(&server.span_id)), "the answer names the server span");
    for stage in ["read", "decode", "queue", "model", "store"] {
        let s = spans
            .iter()
            .find(|s| s.name == stage && s.parent_span_id == server.span_id)
            .unwrap_or_else(|| panic!("no {stage} span under the server span"));
        assert!(s.start_time_unix_nano <= s.end_time_unix_nano, "{stage} ends before it starts");
        // Stage times are rebuilt from monotonic durations: allow 5 ms of clock rounding.
        let slack = 5_000_000;
        assert!(
            s.start_time_unix_nano + slack >= server.start_time_unix_nano
                && s.end_time_unix_nano <= server.end_time_unix_nano + slack,
            "{stage} lies outside the request"
        );
    }
    let model = spans.iter().find(|s| s.name == "model").expect("model span");
    assert_eq!(attribute(model, "catsdogs.batch.size").as_deref(), Some("1"));
}

/// OTLP over gRPC: a predict, a gRPC `ModelInfer` and an erasure, each under the caller's
/// trace, with route templates only.
pub async fn otlp_grpc_receives_a_predict_under_the_callers_span_with_its_stages() {
    let (addr, received) = grpc_receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("http://{addr}");
    let server = traced_server(dir.path(), &endpoint, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
    server.api().wait_ready().await;
    let trace = unhex(TRACE_ID);

    let (id, answered) = traced_predict(&server).await;
    let spans = received.wait_for(&trace, "POST /api/predict", &["read", "decode", "queue", "model", "store"]).await;
    check_predict_trace(&spans, &answered);

    // Erasure: the route template names the span, never the id.
    let r = reqwest::Client::new()
        .delete(format!("{}/api/predictions/{id}", server.base))
        .bearer_auth(TOKEN)
        .header("traceparent", traceparent())
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 200);
    received.wait_for(&trace, "DELETE /api/predictions/{id}", &[]).await;

    // The gRPC inference service continues the trace from its metadata too.
    let grpc_addr = grpc_address(&server).await;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{grpc_addr}")).await.expect("connect");
    let mut live = tonic::Request::new(ServerLiveRequest {});
    live.metadata_mut().insert("traceparent", traceparent().parse().expect("metadata"));
    let answer = client.server_live(live).await.expect("ServerLive");
    assert!(answer.metadata().get("traceparent").is_some(), "gRPC answers carry a traceparent");
    let tensor =
        InferInputTensor { name: "image".into(), datatype: "BYTES".into(), shape: vec![1], ..Default::default() };
    let mut raw = (png(8).len() as u32).to_le_bytes().to_vec();
    raw.extend(png(8));
    let mut infer = tonic::Request::new(ModelInferRequest {
        model_name: "catsdogs".into(),
        inputs: vec![tensor],
        raw_input_contents: vec![raw],
        ..Default::default()
    });
    infer.metadata_mut().insert("traceparent", traceparent().parse().expect("metadata"));
    infer.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("metadata"));
    client.model_infer(infer).await.expect("ModelInfer");
    let spans = received
        .wait_for(
            &trace,
            "POST /inference.GRPCInferenceService/ModelInfer",
            &["read", "decode", "queue", "model", "store"],
        )
        .await;
    let call = spans.iter().find(|s| s.name == "POST /inference.GRPCInferenceService/ModelInfer").expect("gRPC span");
    assert_eq!(hex(&call.parent_span_id), CALLER_SPAN);

    let exported = received.bytes();
    for secret in [id.as_str(), FILE_NAME] {
        assert!(!exported.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret:?} was exported in a span");
    }
}

/// The address `catsdogs serve` printed for its gRPC service.
async fn grpc_address(server: &Server) -> String {
    for _ in 0..100 {
        if let Some(addr) = server.stderr().lines().find_map(|l| l.strip_prefix("grpc listening on ")) {
            return addr.split_whitespace().next().unwrap_or_default().to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no gRPC address in the log:\n{}", server.stderr())
}

/// OTLP over HTTP/protobuf, the protocol used when `OTEL_EXPORTER_OTLP_PROTOCOL` is unset.
pub async fn otlp_http_protobuf_is_the_default_protocol() {
    let (addr, received) = http_receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = traced_server(dir.path(), &format!("http://{addr}"), &[]);
    server.api().wait_ready().await;
    let (_, answered) = traced_predict(&server).await;
    let spans =
        received.wait_for(&unhex(TRACE_ID), "POST /api/predict", &["read", "decode", "queue", "model", "store"]).await;
    check_predict_trace(&spans, &answered);
}

/// Without an OTLP endpoint nothing is traced: no `traceparent` in the answer.
pub async fn without_an_otlp_endpoint_the_answer_carries_no_traceparent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = shared_secrets(dir.path());
    let server = Server::start(None, &dir.path().join("data"), &secrets);
    server.api().wait_ready().await;
    let r = predict_in_trace(&server).await;
    assert!(r.headers().get("traceparent").is_none());
}
