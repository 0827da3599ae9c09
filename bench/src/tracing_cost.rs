//! Section 10: what OpenTelemetry tracing costs. Two `catsdogs serve` on the same model,
//! started alike except that one exports its spans over OTLP/HTTP (protobuf, every span
//! sampled) to a receiver in this process:
//! (a) one client, requests alternating between the two servers on the same photo, on
//!     small and 12 MP photos;
//! (b) closed-loop clients, three runs on each server in ABBA order.
//! The receiver decodes every export and counts its spans: a traced row whose spans never
//! arrived would measure an exporter that does nothing, so the section fails instead.
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;

use crate::serve::{self, Api, Photo, Server, median, second_side};
use crate::sizes::{SizeClass, photos_of};

/// How much section 10 measures.
#[derive(Clone, Copy)]
pub struct Counts {
    /// One-client requests per server and photo size (0 skips the section).
    pub requests: usize,
    /// Concurrent clients of (b).
    pub clients: usize,
    /// Seconds of each run of (b); three runs per server.
    pub secs: f64,
}

/// What the in-process OTLP receiver has decoded so far.
#[derive(Clone, Default)]
struct Received {
    exports: Arc<AtomicUsize>,
    spans: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl Received {
    fn spans(&self) -> usize {
        self.spans.load(Ordering::Relaxed)
    }
}

/// An OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf) on an ephemeral loopback
/// port, answering as a collector does; its base URL.
async fn receiver() -> Result<(String, Received)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let received = Received::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| async move {
            let len = body.len();
            match ExportTraceServiceRequest::decode(body) {
                Ok(r) => {
                    let spans: usize =
                        r.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                    sink.spans.fetch_add(spans, Ordering::Relaxed);
                    sink.exports.fetch_add(1, Ordering::Relaxed);
                    sink.bytes.fetch_add(len, Ordering::Relaxed);
                    let answer = ExportTraceServiceResponse::default().encode_to_vec();
                    ([(axum::http::header::CONTENT_TYPE, "application/x-protobuf")], answer).into_response()
                }
                Err(_) => axum::http::StatusCode::BAD_REQUEST.into_response(),
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, received))
}

/// Waits (10 s at most) until the receiver's span count stops growing; the count.
async fn settled(received: &Received) -> usize {
    let mut last = received.spans();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = received.spans();
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    received.spans()
}

/// Appends section 10 to `report`.
pub async fn section(
    exe: &Path,
    model: &Path,
    max_batch: usize,
    Counts { requests, clients, secs }: Counts,
    small: &[Photo],
    report: &mut String,
) -> Result<()> {
    if requests == 0 || small.is_empty() {
        return Ok(());
    }
    let (endpoint, received) = receiver().await?;
    // Export every 200 ms rather than every 5 s, so the counts below include the last
    // requests; every span sampled (the SDK's default sampler, said explicitly).
    let traced_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let plain = Server::catsdogs_with_env(exe, model, max_batch, &[]).await?;
    let traced = Server::catsdogs_with_env(exe, model, max_batch, &traced_env).await?;
    let c = reqwest::Client::new();
    writeln!(
        report,
        "## 10. What tracing costs\n\n`catsdogs serve` on {} twice, one exporting every span over OTLP/HTTP \
         (protobuf, sampler `always_on`, batch export every 200 ms) to a receiver in the benchmark that decodes \
         each export, one without an exporter. One client: requests alternate between the two servers on the \
         same photo, {requests} per server and size, medians. Clients: {clients} closed-loop clients, runs of \
         {secs} s in the order untraced, traced, traced, untraced, untraced, traced, medians of 3. \
         The receiver shares the machine's cores, as a collector beside the service would.\n\n| load | untraced | traced | cost |\n\
         |---|---|---|---|",
        model.display()
    )?;
    let mut traced_requests = 0usize;
    for class in [SizeClass::Small, SizeClass::TwelveMp] {
        let photos = photos_of(&small[..small.len().min(4)], class)?;
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for i in 0..requests * 2 + 2 {
            let photo = &photos[(i / 2) % photos.len()];
            let use_traced = second_side(i);
            let server = if use_traced { &traced } else { &plain };
            let t = Instant::now();
            serve::predict(&c, &server.base, Api::Catsdogs, photo).await?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            traced_requests += usize::from(use_traced);
            if i < 2 {
                continue; // one warm-up pair per size
            }
            if use_traced { on.push(ms) } else { off.push(ms) }
        }
        let (a, b) = (median(&mut off), median(&mut on));
        writeln!(report, "| one client, {} (ms) | {a:.2} | {b:.2} | {:+.1} % |", class.name(), (b / a - 1.0) * 100.0)?;
        eprintln!("tracing one client {}: {a:.2} ms untraced, {b:.2} traced", class.name());
    }
    // Spans per request from the one-client rows, where every traced request is counted.
    let one_client_spans = settled(&received).await;
    if one_client_spans == 0 {
        bail!("the traced server exported no span to {endpoint}: the traced rows measured nothing");
    }
    let photos = Arc::new(small.iter().map(|p| Photo { bytes: p.bytes.clone(), label: p.label }).collect::<Vec<_>>());
    let (mut off, mut on) = (Vec::new(), Vec::new());
    // ABBA order, so a machine that speeds up or slows down over the runs hits both alike.
    for use_traced in [false, true, true, false, false, true] {
        let cell = serve::measure(if use_traced { &traced } else { &plain }, &photos, clients, secs).await;
        if cell.errors > 0 {
            bail!("{} errors in a tracing run", cell.errors);
        }
        if use_traced {
            on.push(cell.rate());
        } else {
            off.push(cell.rate());
        }
    }
    let (a, b) = (median(&mut off), median(&mut on));
    writeln!(report, "| {clients} clients, small (req/s) | {a:.1} | {b:.1} | {:+.1} % |", (1.0 - b / a) * 100.0)?;
    eprintln!("tracing {clients} clients: {a:.1} req/s untraced, {b:.1} traced");
    let spans = settled(&received).await;
    if spans <= one_client_spans {
        bail!("the traced server exported no span during the client runs: the traced row measured nothing");
    }
    let (exports, bytes) = (received.exports.load(Ordering::Relaxed), received.bytes.load(Ordering::Relaxed));
    writeln!(
        report,
        "\nCost: latency added, or throughput lost. The receiver decoded {spans} spans in {exports} exports \
         ({:.0} KiB); the one-client rows' {traced_requests} traced requests gave {one_client_spans}: {:.1} spans \
         per request.\n",
        bytes as f64 / 1024.0,
        one_client_spans as f64 / traced_requests.max(1) as f64
    )?;
    Ok(())
}
