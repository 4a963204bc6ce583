//! What the server says about itself: `GET /` (an index), `GET /version`, and
//! `GET /problems/{kind}`, the page each problem's `type` URI points at. Also the rule that a
//! JSON API takes JSON: a body sent with another `Content-Type` gets a 415 problem.

use axum::Json;
use axum::extract::{Path, Request};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};

use super::problem::ApiError;
use super::schemas::Problem;

/// Where things are.
#[utoipa::path(get, path = "/", operation_id = "getIndex", tag = "service", responses((status = 200, description = "What this service is and where to go next", body = Object)))]
pub(super) async fn index() -> Json<Value> {
    Json(json!({
        "name": "herald",
        "version": crate::VERSION,
        "links": {
            "notifications": "/v1/notifications",
            "batch": "/v1/notifications/batch",
            "suppressions": "/v1/suppressions",
            "stats": "/v1/stats",
            "dashboard": "/ops",
            "metrics": "/metrics",
            "openapi": "/openapi.json",
            "docs": "/docs",
            "health": "/healthz",
            "ready": "/readyz",
            "version": "/version",
            "problems": "/problems/{type}",
        },
    }))
}

/// The version and git revision of this build.
#[utoipa::path(get, path = "/version", operation_id = "getVersion", tag = "service", responses((status = 200, description = "The version and build", body = Object)))]
pub(super) async fn version() -> Json<Value> {
    let rev = (!crate::GIT_REV.is_empty()).then_some(crate::GIT_REV);
    Json(json!({"version": env!("CARGO_PKG_VERSION"), "git_revision": rev}))
}

/// Every problem type the API answers with: its `type` (`/problems/{kind}`), status, title,
/// and what a client should do about it.
pub(super) const PROBLEMS: &[(&str, u16, &str, &str)] = &[
    (
        "validation",
        422,
        "Invalid request",
        "The request body (or a header) does not validate. `errors` lists each problem with its JSON Pointer into the body (`pointer`) or the header's name (`header`). Fix those and send again.",
    ),
    (
        "invalid-parameter",
        400,
        "Invalid query parameter",
        "A query parameter is unknown or has a bad value; `errors[].parameter` names it.",
    ),
    ("malformed", 400, "Malformed request", "The body is not valid JSON, or not an object where one is expected."),
    (
        "unsupported-media-type",
        415,
        "Unsupported media type",
        "Send JSON bodies with `Content-Type: application/json`.",
    ),
    (
        "unstorable-value",
        400,
        "Invalid value",
        "The request holds a value PostgreSQL cannot store, such as a NUL character in a string.",
    ),
    (
        "too-large",
        413,
        "Request body too large",
        "The body is over `server.max_body_bytes` (16 MiB and 1,000 items for the batch API). Split it.",
    ),
    (
        "unauthorized",
        401,
        "Missing or invalid API key",
        "Send `Authorization: Bearer <key>` with a key from `herald keys create` that has not been revoked.",
    ),
    (
        "link-refused",
        401,
        "Sign-in link refused",
        "A dashboard sign-in link that is unknown, altered, expired or used already. Each works once, for 15 minutes at most: make a new one with `herald ops-link --tenant NAME`.",
    ),
    (
        "bad-signature",
        401,
        "Invalid receipt signature",
        "A delivery receipt at `/webhooks/{provider}` whose signature does not check with the provider's configured secret (or is missing, stale or replayed). Check the provider's signing key in `[providers.NAME]` and that `server.public_base_url` is the URL the provider calls.",
    ),
    (
        "forbidden",
        403,
        "Not allowed for this API key",
        "The key lacks the scope this needs (`send`, `read` or `admin`), or the resource is another tenant's.",
    ),
    ("not-found", 404, "Not found", "No such resource, or not one this key's tenant can see."),
    ("method-not-allowed", 405, "Method not allowed", "This path does not take that method."),
    (
        "rate-limited",
        429,
        "Too many requests",
        "The tenant is over its request limit (`limits.requests_per_second`, or its own). Retry after `Retry-After`.",
    ),
    (
        "headers-too-large",
        431,
        "Request headers too large",
        "The request's headers are over 32 KiB in all. Send fewer or shorter headers.",
    ),
    (
        "idempotency-conflict",
        409,
        "Idempotency key reused",
        "The `Idempotency-Key` was used before with a different request body. Use a new key for a new request.",
    ),
    (
        "not-cancellable",
        409,
        "Notification cannot be cancelled",
        "Only a notification that is scheduled, queued or retrying can be cancelled; this one is being sent or is finished.",
    ),
    (
        "not-retryable",
        409,
        "Notification cannot be retried",
        "Only a notification that failed, expired or bounced can be retried (`POST /v1/notifications/{id}/retry`, admin); this one is still on its way or was delivered.",
    ),
    (
        "unavailable",
        503,
        "Service unavailable",
        "Herald cannot reach its database, or the request took too long. Nothing was accepted: retry after `Retry-After` (or a second).",
    ),
    (
        "outcome-unknown",
        503,
        "Outcome unknown",
        "The database went away while this request was being written, and did not come back in time to say whether it was stored. Retry with the same `Idempotency-Key`: you get the stored notification if there is one, and a new one if not.",
    ),
    (
        "not-ready",
        503,
        "Not ready",
        "The database is unreachable or its migrations are not applied (`herald migrate`).",
    ),
    (
        "internal",
        500,
        "Internal error",
        "A bug or an unexpected failure; the server logged it with the `request_id` of this problem.",
    ),
    ("error", 400, "Request failed", "Another client error; `detail` says which."),
];

/// The page a problem's `type` points at.
#[utoipa::path(get, path = "/problems/{kind}", operation_id = "getProblemType", tag = "service", params(("kind" = String, Path)),
    responses((status = 200, description = "A page that explains the problem", body = String, content_type = "text/html"), (status = 404, response = Problem)))]
pub(super) async fn problem_page(Path(kind): Path<String>) -> Result<Html<String>, ApiError> {
    let (kind, status, title, text) = PROBLEMS
        .iter()
        .find(|(k, ..)| *k == kind)
        .ok_or_else(|| ApiError::not_found(format!("no problem type {kind}")))?;
    let others: String =
        PROBLEMS.iter().map(|(k, s, t, _)| format!("<li><a href=\"/problems/{k}\">{k}</a> ({s}): {t}</li>")).collect();
    Ok(Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} ({kind})</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}}\
         code{{background:#f2f2f2;padding:0 .2em}}</style></head><body>\
         <p><code>/problems/{kind}</code>, HTTP {status}</p><h1>{title}</h1><p>{}</p>\
         <p>Every error from the Herald API is an RFC 9457 problem (<code>application/problem+json</code>) with \
         <code>type</code>, <code>title</code>, <code>status</code>, <code>detail</code>, <code>instance</code> and \
         <code>request_id</code>.</p><h2>All problem types</h2><ul>{others}</ul></body></html>",
        code_spans(text)
    )))
}

/// `a `b` c` → `a <code>b</code> c` (the texts above are ours: nothing to escape).
fn code_spans(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(i, part)| if i % 2 == 1 { format!("<code>{part}</code>") } else { part.into() })
        .collect()
}

/// Middleware: a body sent to the JSON API with a `Content-Type` other than JSON is a 415
/// problem (a form post by `curl -d` without `-H 'Content-Type: application/json'` says
/// so, rather than failing to parse). A body without any `Content-Type` is read as JSON.
/// The most header bytes (names and values) a request may carry: real clients send a few
/// hundred; a flood of them is refused before any handler parses them.
pub(super) const MAX_HEADER_BYTES: usize = 32 * 1024;

/// A NUL in a path segment or a query parameter (`%00`) can never name anything Herald
/// stores, and PostgreSQL would refuse it as a parameter: refused here, for every route.
pub(super) async fn refuse_nul_in_url(req: Request, next: Next) -> Response {
    if req.uri().path_and_query().is_some_and(|pq| pq.as_str().contains("%00")) {
        return ApiError::malformed("the URL contains a NUL character (%00)").into_response();
    }
    next.run(req).await
}

pub(super) async fn limit_headers(req: Request, next: Next) -> Response {
    let size: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if size > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "Request headers too large",
            format!("the request's headers take {size} bytes; at most {MAX_HEADER_BYTES} are accepted"),
        )
        .into_response();
    }
    next.run(req).await
}

pub(super) async fn json_only(req: Request, next: Next) -> Response {
    let has_body = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if has_body
        && req.uri().path().starts_with("/v1/")
        && let Some(ct) = req.headers().get(header::CONTENT_TYPE)
    {
        let essence = ct.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            let what = if essence.is_empty() { "an empty Content-Type".to_owned() } else { format!("`{essence}`") };
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                format!("the body was sent as {what}: send JSON with Content-Type: application/json"),
            )
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_type_has_a_page() {
        let used = [
            "validation",
            "invalid-parameter",
            "malformed",
            "unsupported-media-type",
            "unstorable-value",
            "too-large",
            "unauthorized",
            "forbidden",
            "not-found",
            "method-not-allowed",
            "headers-too-large",
            "rate-limited",
            "idempotency-conflict",
            "not-cancellable",
            "not-retryable",
            "unavailable",
            "outcome-unknown",
            "not-ready",
            "internal",
        ];
        for kind in used {
            assert!(PROBLEMS.iter().any(|(k, ..)| *k == kind), "{kind}");
        }
        assert_eq!(code_spans("a `b` c"), "a <code>b</code> c");
    }
}
