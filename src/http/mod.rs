//! The HTTP API. `router(state)` is the one router used by the server, tests and (later) Lambda.

mod auth;
mod batch;
mod deadline;
mod extract;
mod health;
mod meta;
mod metrics;
mod notifications;
pub mod openapi;
mod ops;
mod paging;
pub mod problem;
mod routes;
pub mod schemas;
pub mod serve;
mod stats;
mod suppressions;
mod templates;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, header};
use axum::middleware;
use axum::routing::get;
use sqlx::PgPool;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::config::Settings;
use crate::providers::Registry;

pub use auth::KeyCache;
pub use stats::StatsCache;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// The pool of reads that can be slow (stats, lists), apart from `pool`, whose
    /// connections accepts need (`database.read_max_connections`).
    pub reads: PgPool,
    /// Work that is CPU-bound and can be long (a template preview's render) runs off the
    /// async runtime (`off_runtime`).
    pub cpu: crate::cpu::CpuPool,
    pub settings: Arc<Settings>,
    pub registry: Arc<Registry>,
    /// Acceptance: request bodies become stored notifications.
    pub intake: crate::accept::Intake,
    pub keys: Arc<KeyCache>,
    pub stats: Arc<StatsCache>,
}

/// Run `f` off the async runtime (`cpu::CpuPool`), answering a 500 if it could not finish.
pub(crate) async fn off_runtime<R: Send + 'static>(
    state: &AppState,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, problem::ApiError> {
    state.cpu.run(f).await.map_err(|_| problem::ApiError::internal())
}

pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let max_body = state.settings.server.max_body_bytes;
    let timeout = Duration::from_millis(state.settings.server.request_timeout_ms);
    let keyed = routes::keyed(batch::MAX_BODY_BYTES.max(max_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::limit_requests));
    let (documented, _) = keyed.merge(routes::open()).split_for_parts();
    let api = documented
        .route("/ops/app.js", get(ops::script))
        .route("/ops/app.css", get(ops::style))
        .route("/ops/icon.svg", get(ops::icon))
        .route("/favicon.ico", get(ops::icon))
        // `/openapi.json`, and `/docs` rendering it (Swagger UI, built into the binary).
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .external_url_unchecked("/openapi.json", openapi::document().clone()),
        )
        .route_layer(middleware::from_fn(metrics::track))
        .fallback(|| async { problem::ApiError::not_found("no such resource") })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);

    // Outermost first: compression, request id, its echo, tracing, problem shaping, panics,
    // timeout.
    api.layer(
        ServiceBuilder::new()
            .layer(compression())
            .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION]))
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(PropagateRequestIdLayer::new(request_id))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|req: &Request<_>| {
                        let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
                        // The path only: query strings can carry recipients.
                        let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(),
                                                       request_id = %id, trace_id = tracing::field::Empty);
                        let traceparent = req.headers().get("traceparent").and_then(|v| v.to_str().ok());
                        crate::telemetry::join_trace(&span, traceparent);
                        span
                    })
                    .on_response(DefaultOnResponse::new().level(Level::DEBUG)),
            )
            .layer(middleware::from_fn(problem::problem_context))
            .layer(middleware::from_fn(meta::limit_headers))
            .layer(middleware::from_fn(meta::refuse_nul_in_url))
            .layer(middleware::from_fn(meta::json_only))
            .layer(CatchPanicLayer::new())
            .layer(middleware::from_fn_with_state(timeout, deadline::limit)),
    )
}

/// Answers compressed (br or gzip) for clients that accept it: lists, stats, `/metrics`, the
/// OpenAPI document and the dashboard's assets. Not below 1 KiB (a single POST's answer:
/// compressing it costs more CPU than the bytes it saves), nor event streams or images.
fn compression() -> CompressionLayer<impl tower_http::compression::Predicate> {
    use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
    CompressionLayer::new().compress_when(
        SizeAbove::new(1024).and(NotForContentType::GRPC).and(NotForContentType::IMAGES).and(NotForContentType::SSE),
    )
}
