//! RFC 9457 problem details. Handlers return `ApiError`; the `problem_context` middleware
//! adds `instance` and `request_id` to every problem, and turns any other error response
//! (an unknown route, a body over the limit, a timeout, a panic) into a problem too, so that
//! every error a client sees has the same shape.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::domain::FieldError;
use crate::store::StoreError;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Short machine-readable kind; the `type` URI is `/problems/{kind}`.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub errors: Vec<Value>,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, kind, title, detail: detail.into(), errors: Vec::new(), headers: Vec::new() }
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", if one.pointer.is_empty() { "body" } else { &one.pointer }, one.detail),
            many => format!("the request has {} problems; see errors", many.len()),
        };
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", "Invalid request", detail);
        e.errors = errors.into_iter().map(|f| json!({"pointer": f.pointer, "detail": f.detail})).collect();
        e
    }

    /// A bad request header, named as such rather than as a body pointer.
    pub fn header_problem(name: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let mut e =
            Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", "Invalid request", format!("{name}: {detail}"));
        e.errors = vec![json!({"header": name, "detail": detail})];
        e
    }

    /// A problem with a query parameter (RFC 9457 §3.1 uses `parameter` for these).
    pub fn bad_parameter(name: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-parameter",
            "Invalid query parameter",
            format!("{name}: {detail}"),
        );
        e.errors = vec![json!({"parameter": name, "detail": detail})];
        e
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", "Malformed request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Missing or invalid API key", detail);
        e.headers.push((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        e
    }

    /// A provider's receipt whose signature does not check: no API key is involved.
    pub fn bad_signature(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "bad-signature", "Invalid receipt signature", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed for this API key", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn conflict(kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, title, detail)
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", "internal error")
    }

    /// The problem document (without `instance` and `request_id`, which the middleware adds).
    pub fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("/problems/{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if !self.errors.is_empty() {
            body["errors"] = Value::Array(self.errors.clone());
        }
        body
    }
}

impl From<crate::accept::Refused> for ApiError {
    fn from(r: crate::accept::Refused) -> Self {
        use crate::accept::Refused;
        match r {
            Refused::Invalid(errors) => ApiError::validation(errors),
            Refused::Header { name, detail } => ApiError::header_problem(name, detail),
            Refused::KeyConflict => ApiError::conflict(
                "idempotency-conflict",
                "Idempotency key reused",
                "this Idempotency-Key was already used with a different request body",
            ),
            Refused::Store(e) => e.into(),
            Refused::Internal => ApiError::internal(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // SQLSTATE class 22 (data exception): a value PostgreSQL cannot store, such as a NUL
        // character in text. The client's input, not our failure.
        if let StoreError::Db(sqlx::Error::Database(db)) = &e
            && db.code().is_some_and(|c| c.starts_with("22"))
        {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "unstorable-value",
                "Invalid value",
                "the request contains a value that cannot be stored (for example a NUL character)",
            );
        }
        // Logged once here, inside the request span; the client only learns it was internal.
        tracing::error!(error = %e, "request failed");
        if let StoreError::Unavailable(why) = &e {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", why.clone());
        }
        if let StoreError::OutcomeUnknown(why) = &e {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome-unknown",
                "Outcome unknown",
                format!(
                    "the database went away while this request was being written ({why}) and has not come back to \
                     say whether it was stored: retry with the same Idempotency-Key to get the stored one, if any"
                ),
            );
        }
        // 57014: a read ran past its statement timeout (server.request_timeout_ms).
        if let StoreError::Db(sqlx::Error::Database(db)) = &e
            && db.code().as_deref() == Some("57014")
        {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                "the query took longer than server.request_timeout_ms; try again, or ask for less",
            );
        }
        if let StoreError::Db(db) = &e
            && crate::store::is_transient(db)
        {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                "the database is not reachable or is restarting; nothing was changed",
            );
        }
        ApiError::internal()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, [(header::CONTENT_TYPE, PROBLEM_JSON)], self.body().to_string()).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

fn generic(status: StatusCode) -> ApiError {
    let (kind, title, detail) = match status {
        StatusCode::NOT_FOUND => ("not-found", "Not found", "no such resource".to_string()),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method-not-allowed", "Method not allowed", "this resource does not support that method".into())
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("too-large", "Request body too large", "the request body is over server.max_body_bytes".into())
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported-media-type", "Unsupported media type", "send application/json".into())
        }
        StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => {
            ("unavailable", "Service unavailable", "the request took too long; try again".into())
        }
        s if s.is_server_error() => ("internal", "Internal error", "internal error".into()),
        s => ("error", "Request failed", s.canonical_reason().unwrap_or("error").to_string()),
    };
    ApiError::new(status, kind, title, detail)
}

/// Middleware: make every error response a problem carrying `instance` and `request_id`.
pub async fn problem_context(req: Request, next: Next) -> Response {
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let instance = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem =
        resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    let (mut parts, body) = resp.into_parts();
    let mut problem: Value = if is_problem {
        match to_bytes(body, 1 << 20).await.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            Some(v) => v,
            None => generic(status).body(),
        }
    } else {
        generic(status).body()
    };
    problem["instance"] = json!(instance);
    problem["request_id"] = json!(request_id);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    // Every 503 says when to come back: the database restarting, a timeout, not ready yet.
    if status == StatusCode::SERVICE_UNAVAILABLE && !parts.headers.contains_key(header::RETRY_AFTER) {
        parts.headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Response::from_parts(parts, Body::from(problem.to_string()))
}
