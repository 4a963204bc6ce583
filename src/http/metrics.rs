//! `GET /metrics` (Prometheus text format, optionally behind `metrics.token`) and the layer
//! that counts and times every request by its route.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::problem::ApiError;
use super::schemas::Problem;
use crate::metrics;

/// Prometheus text format; with `metrics.token` set, only for `Authorization: Bearer <token>`.
#[utoipa::path(get, path = "/metrics", operation_id = "getMetrics", tag = "operators", security((), ("metrics_token" = [])),
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
              (status = 401, response = Problem)))]
pub(super) async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = state.settings.metrics.token.expose();
    if !token.is_empty() {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(super::auth::bearer)
            .unwrap_or_default();
        if !crate::receipts::same(given.as_bytes(), token.as_bytes()) {
            return Err(ApiError::unauthorized("send the metrics token as `Authorization: Bearer <metrics.token>`"));
        }
    }
    let mut resp = metrics::render().into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(resp)
}

/// Count and time a request under its route's pattern (`/v1/notifications/{id}`), never its
/// concrete path: ids and recipients stay out of label values.
pub(super) async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics::http(route, resp.status().as_u16(), started.elapsed());
    resp
}
