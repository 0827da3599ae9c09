//! OpenTelemetry traces for `catsdogs serve`: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, request spans and their stages go to an
//! OTLP collector; otherwise nothing is built and no span leaves the process.
//!
//! The exporter reads the standard variables itself (endpoint, headers, timeout); the
//! protocol is chosen here because the specification's default, `http/protobuf`, is not
//! the one the exporter crate picks when all its transports are compiled in.
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::registry::LookupSpan;

/// How spans travel to the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc`: the collector's trace service, usually on port 4317.
    Grpc,
    /// `http/protobuf` (the default): `POST {endpoint}/v1/traces`, usually on port 4318.
    HttpProtobuf,
    /// `http/json`: the same route with the JSON encoding.
    HttpJson,
}

impl FromStr for OtlpProtocol {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "http/json" => Ok(Self::HttpJson),
            other => bail!("unknown OTLP protocol {other:?}: use grpc, http/protobuf or http/json"),
        }
    }
}

/// The first of these variables that is set and not empty.
fn first_env(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
}

/// The trace protocol the environment asks for; `http/protobuf` when it names none.
pub fn protocol_from_env() -> Result<OtlpProtocol> {
    first_env(&["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"])
        .map_or(Ok(OtlpProtocol::HttpProtobuf), |p| p.parse().context("OTEL_EXPORTER_OTLP_PROTOCOL"))
}

/// Spans exported over OTLP; flushed and shut down by [`TraceExport::shutdown`] (or on drop).
pub struct TraceExport {
    provider: SdkTracerProvider,
    pub protocol: OtlpProtocol,
}

impl TraceExport {
    /// The exporter the environment configures, or `None` when no OTLP endpoint is set.
    /// Call it inside the server's Tokio runtime: the gRPC transport's connection lives there.
    pub fn from_env() -> Result<Option<Self>> {
        if first_env(&["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]).is_none() {
            return Ok(None);
        }
        let protocol = protocol_from_env()?;
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match protocol {
            OtlpProtocol::Grpc => builder.with_tonic().with_protocol(Protocol::Grpc).build(),
            OtlpProtocol::HttpProtobuf => builder.with_http().with_protocol(Protocol::HttpBinary).build(),
            OtlpProtocol::HttpJson => builder.with_http().with_protocol(Protocol::HttpJson).build(),
        }
        .context("cannot build the OTLP span exporter (check OTEL_EXPORTER_OTLP_ENDPOINT)")?;
        // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES still win over these defaults.
        let mut resource = Resource::builder();
        if first_env(&["OTEL_SERVICE_NAME"]).is_none() {
            resource = resource.with_service_name("catsdogs");
        }
        let resource =
            resource.with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        // The server continues incoming `traceparent` headers and writes its own.
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(Some(Self { provider, protocol }))
    }

    /// The `tracing` layer that turns the server's request spans into OpenTelemetry spans.
    /// Only spans of the server crate pass: log events (which may name ids) stay in the log.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("catsdogs"))
            .with_threads(false)
            .with_location(false)
            .with_filter(FilterFn::new(|meta| meta.is_span() && meta.target().starts_with("catsdogs_server")))
    }

    /// Sends the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OpenTelemetry exporter did not shut down cleanly");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_as_the_specification_spells_them() {
        assert_eq!("grpc".parse::<OtlpProtocol>().ok(), Some(OtlpProtocol::Grpc));
        assert_eq!("http/protobuf".parse::<OtlpProtocol>().ok(), Some(OtlpProtocol::HttpProtobuf));
        assert_eq!(" HTTP/JSON ".parse::<OtlpProtocol>().ok(), Some(OtlpProtocol::HttpJson));
        assert!("http".parse::<OtlpProtocol>().is_err());
    }
}
