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
mod schemas;
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
use axum::routing::{get, post};
use sqlx::PgPool;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::batching::{Coalescer, Limits};
use crate::config::Settings;
use crate::providers::Registry;
use crate::store::{self, StoreResult, ingest::Accepted, ingest::Submission};

pub use auth::KeyCache;
pub use stats::StatsCache;

/// Single POSTs are accepted through this: many requests, one statement.
pub type Ingest = Coalescer<Submission, Written>;

/// A single POST's result from the group committer (`ingest`).
pub enum Written {
    /// Known when its group's write ended.
    Known(StoreResult<Accepted>),
    /// Its group's connection was lost after the write went out, so it may have committed: it
    /// is being settled (`store::ingest::settle_unknown`) in a task of its own, so that writes
    /// caught by an outage hold none of the committer's writers, and the requests that arrive
    /// during the outage get their 503 at once instead of waiting behind them.
    Settling(tokio::sync::oneshot::Receiver<StoreResult<Accepted>>),
}

impl Written {
    /// The write's outcome, once it is known (or known to be unknown).
    pub async fn outcome(self) -> Result<StoreResult<Accepted>, crate::batching::Lost> {
        match self {
            Written::Known(r) => Ok(r),
            Written::Settling(rx) => rx.await.map_err(|_| crate::batching::Lost),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// The pool of reads that can be slow (stats, lists), apart from `pool`, whose
    /// connections accepts need (`database.read_max_connections`).
    pub reads: PgPool,
    /// Work that is CPU-bound and can be long (template renders, a batch's validation) runs
    /// off the async runtime, on at most this many threads at once (`off_runtime`).
    pub cpu: Arc<tokio::sync::Semaphore>,
    pub settings: Arc<Settings>,
    pub registry: Arc<Registry>,
    /// What acceptance takes from the configuration, read once at start.
    pub rules: Arc<crate::accept::AcceptRules>,
    pub keys: Arc<KeyCache>,
    pub ingest: Ingest,
    pub stats: Arc<StatsCache>,
}

/// The group committer of `POST /v1/notifications` (see `batching`).
pub fn ingest(pool: PgPool, settings: &Settings) -> Ingest {
    let notify = settings.dispatch.listen_notify;
    let limits = Limits {
        max_items: settings.server.group_commit_max_items,
        // Two writers: one gathers and writes while the other waits for its commit; more would
        // only take connections from the rest of the API.
        max_writers: 2.min(settings.database.max_connections as usize),
        linger: Duration::from_micros(settings.server.group_commit_linger_us),
    };
    Coalescer::new(limits, move |items: Vec<Submission>| {
        let pool = pool.clone();
        async move {
            let results = store::ingest::write_batch(&pool, &items, notify).await;
            if !results.iter().any(store::ingest::is_unknown) {
                return results.into_iter().map(Written::Known).collect();
            }
            let mut answers = Vec::with_capacity(items.len());
            let (mut unsettled, mut replies) = (Vec::new(), Vec::new());
            for (item, result) in items.into_iter().zip(results) {
                if store::ingest::is_unknown(&result) {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    unsettled.push((item, result));
                    replies.push(tx);
                    answers.push(Written::Settling(rx));
                } else {
                    answers.push(Written::Known(result));
                }
            }
            tokio::spawn(async move {
                let (items, mut results): (Vec<Submission>, Vec<_>) = unsettled.into_iter().unzip();
                store::ingest::settle_unknown(&pool, &items, &mut results).await;
                for (reply, result) in replies.into_iter().zip(results) {
                    // The caller may have gone (client hung up); the settle was for the log too.
                    let _ = reply.send(result);
                }
            });
            answers
        }
    })
}

/// Run `f` on the blocking pool, at most `state.cpu` of them at once: a request that renders
/// a thousand templates holds one of those threads, never the runtime's, so `/healthz` and
/// every other request keep being served.
pub(crate) async fn off_runtime<R: Send + 'static>(
    state: &AppState,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, problem::ApiError> {
    let _turn = state.cpu.acquire().await.map_err(|_| problem::ApiError::internal())?;
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "a CPU-bound task failed");
        problem::ApiError::internal()
    })
}

/// Threads for `off_runtime`: one fewer than the cores (at least one), so the runtime always
/// has a core to answer on.
pub fn cpu_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).max(1)
}

pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let max_body = state.settings.server.max_body_bytes;
    let timeout = Duration::from_millis(state.settings.server.request_timeout_ms);
    let api = Router::new()
        .route("/v1/notifications", post(notifications::create).get(notifications::list))
        .route(
            "/v1/notifications/batch",
            post(batch::create).layer(DefaultBodyLimit::max(batch::MAX_BODY_BYTES.max(max_body))),
        )
        .route("/v1/notifications/{id}", get(notifications::get))
        .route("/v1/notifications/{id}/cancel", post(notifications::cancel))
        .route("/v1/notifications/{id}/retry", post(notifications::retry))
        .route("/v1/templates", get(templates::list))
        .route("/v1/templates/{name}", get(templates::get).put(templates::put))
        .route("/v1/templates/{name}/preview", post(templates::preview))
        .route("/v1/stats", get(stats::get))
        .route("/v1/suppressions", get(suppressions::list).post(suppressions::create))
        .route("/v1/suppressions/{channel}/{recipient}", axum::routing::delete(suppressions::delete))
        .route("/webhooks/{provider}", get(webhooks::receive_by_query).post(webhooks::receive))
        .route("/metrics", get(metrics::scrape))
        .route("/ops", get(ops::page))
        .route("/ops/session", post(ops::session::create))
        .route("/ops/app.js", get(ops::script))
        .route("/ops/app.css", get(ops::style))
        .route("/ops/icon.svg", get(ops::icon))
        .route("/favicon.ico", get(ops::icon))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/", get(meta::index))
        .route("/version", get(meta::version))
        .route("/problems/{kind}", get(meta::problem_page))
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
