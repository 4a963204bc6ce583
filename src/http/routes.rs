//! Every documented route, each registered once: its method and path are read from its
//! handler's `#[utoipa::path]` attribute (`routes!`), which is also what the OpenAPI document
//! says of it (`openapi::document` takes the paths from here), so the router and the document
//! cannot disagree. The dashboard's assets and the
//! docs page, which the document does not describe, are added by `router`.

use axum::extract::DefaultBodyLimit;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use super::{AppState, batch, health, meta, metrics, notifications, ops, stats, suppressions, templates, webhooks};

/// The documented routes; a batch's body may be up to `batch_body_bytes`.
pub(super) fn documented(batch_body_bytes: usize) -> OpenApiRouter<AppState> {
    keyed(batch_body_bytes).merge(open())
}

/// The `/v1` routes: each takes an API key (and `router` puts the request limit before them).
pub(super) fn keyed(batch_body_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(notifications::create, notifications::list::list))
        .routes(with_body_limit(routes!(batch::create), batch_body_bytes))
        .routes(routes!(notifications::get))
        .routes(routes!(notifications::cancel))
        .routes(routes!(notifications::retry))
        .routes(routes!(templates::list))
        .routes(routes!(templates::get, templates::put))
        .routes(routes!(templates::preview))
        .routes(routes!(stats::get))
        .routes(routes!(suppressions::list, suppressions::create))
        .routes(routes!(suppressions::delete))
}

/// The routes that take no API key: receipts (each provider's signature), `/metrics` (its own
/// token), the dashboard's page and sign-in, health, version and the problem pages.
pub(super) fn open() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(webhooks::receive_by_query, webhooks::receive))
        .routes(routes!(metrics::scrape))
        .routes(routes!(ops::page))
        .routes(routes!(ops::session::create))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(meta::index))
        .routes(routes!(meta::version))
        .routes(routes!(meta::problem_page))
}

/// A route whose body limit is its own rather than `server.max_body_bytes`.
fn with_body_limit(route: UtoipaMethodRouter<AppState>, bytes: usize) -> UtoipaMethodRouter<AppState> {
    let (schemas, paths, method) = route;
    (schemas, paths, method.layer(DefaultBodyLimit::max(bytes)))
}
