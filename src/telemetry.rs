//! Logging and tracing: `tracing` to stderr (stdout carries only command results), pretty or
//! JSON, `RUST_LOG` overriding `log.level`; and, when `tracing.otlp_endpoint` is set, spans
//! exported over OTLP/HTTP (protobuf) with W3C trace context, so that one trace shows a
//! notification from its request through its attempts to its receipts. Off by default.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, Settings};
use crate::domain::trace::TraceParent;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

pub fn init(settings: &Settings) {
    // PostgreSQL's notices ("relation _sqlx_migrations already exists, skipping" on every
    // start) are not news: shown only when asked for by RUST_LOG.
    let mut directives =
        std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| settings.log.level.clone());
    if !directives.contains("sqlx") {
        directives.push_str(",sqlx::postgres::notice=warn");
    }
    // Colours only for a person at a terminal, not for files, pipes and log collectors.
    let ansi = std::io::stderr().is_terminal();
    let filter = EnvFilter::new(directives);
    let fmt: BoxedLayer = match settings.log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let mut layers: Vec<BoxedLayer> = vec![fmt];
    if let Some(otlp) = otlp(settings) {
        layers.push(otlp);
    }
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry().with(layers).try_init();
}

/// The OTLP exporter, when configured. A batch of spans is sent from a thread of its own, so
/// a slow collector never holds up a request or a send.
fn otlp(settings: &Settings) -> Option<BoxedLayer> {
    let cfg = &settings.tracing;
    if cfg.otlp_endpoint.is_empty() {
        return None;
    }
    let exporter =
        match opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(&cfg.otlp_endpoint).build() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("warning: tracing.otlp_endpoint: cannot export spans: {e}");
                return None;
            }
        };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(cfg.service_name.clone()).build())
        .build();
    let tracer = provider.tracer("herald");
    let _ = PROVIDER.set(provider);
    // Herald's own spans (request, dispatch, receipt), whatever the log level says.
    let spans = tracing_subscriber::filter::Targets::new().with_target("herald", tracing::Level::INFO);
    Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(spans).boxed())
}

/// Send the spans still buffered (at exit).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.shutdown();
    }
}

/// Put `span` (declared with an empty `trace_id` field) in the trace of a stored W3C
/// `traceparent`, when it is a valid one: the trace id on its log lines, and its parent when
/// spans are exported.
pub fn join_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some((raw, trace)) = traceparent.and_then(|t| TraceParent::parse(t).map(|p| (t, p))) else {
        return;
    };
    span.record("trace_id", trace.trace_id());
    continue_trace(span, raw);
}

/// Make `span` part of the trace of a W3C `traceparent` (no effect when nothing exports).
fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if PROVIDER.get().is_none() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
}

/// The W3C `traceparent` of `span`, when spans are exported (else `None`).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    PROVIDER.get()?;
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}
