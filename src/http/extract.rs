//! What handlers take from a request: a query string read into a struct that names its
//! parameters (`Params`; unknown and repeated parameters are refused as 400 problems that name
//! them, like a bad value, instead of each handler keeping a list of the keys it knows), a JSON
//! body whatever its Content-Type, the `Idempotency-Key` and the trace context. The caller
//! (`Caller`) is extracted in `auth`.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Query};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::problem::ApiError;
use crate::accept::IdempotencyKey;

/// A query string as `T` (`#[serde(deny_unknown_fields)]`, every field an `Option<String>` that
/// the handler checks with its own message).
pub(super) struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::try_from_uri(&parts.uri) {
            Ok(Query(t)) => Ok(Params(t)),
            Err(e) => Err(refused(&e.body_text())),
        }
    }
}

/// serde's words for a query it could not read, as a problem naming the parameter.
fn refused(text: &str) -> ApiError {
    // axum's text is "Failed to deserialize query string: {parameter}: {serde's message}".
    let quoted = |s: &str| s.split('`').nth(1).unwrap_or_default().to_owned();
    let after = |marker: &str| text.find(marker).map(|i| &text[i + marker.len()..]);
    if let Some(rest) = after("unknown field ") {
        let known: Vec<String> = rest
            .split("expected ")
            .nth(1)
            .unwrap_or_default()
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        return ApiError::bad_parameter(&quoted(rest), format!("unknown parameter; known: {}", known.join(", ")));
    }
    if let Some(rest) = after("duplicate field ") {
        return ApiError::bad_parameter(&quoted(rest), "given more than once");
    }
    let message = text.split_once(": ").map_or(text, |(_, m)| m);
    ApiError::malformed(format!("the query string cannot be read: {message}"))
}

/// Parse the body as JSON whatever Content-Type says: clients that forget the header (curl's
/// default is a form type) still get a useful answer, and malformed JSON is a 400 problem.
pub(super) fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::malformed(format!("the body is not valid JSON: {e}")))
}

/// A body whose strings hold a NUL character is refused whole, each at its pointer: nothing
/// of it could be stored. (A batch checks each item on its own instead, in its parse.)
pub(super) fn refuse_nul(v: &Value) -> Result<(), ApiError> {
    let problems = crate::domain::content::nul_problems(v, "");
    if problems.is_empty() { Ok(()) } else { Err(ApiError::validation(problems)) }
}

/// Validate the `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub(super) fn idempotency_header(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let ok = v.to_str().ok().and_then(IdempotencyKey::parse);
    ok.map(Some).ok_or_else(|| {
        ApiError::header_problem(
            "Idempotency-Key",
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
        )
    })
}

/// The trace context to keep with a notification: the request span's when spans are exported
/// (so that dispatch is its child), else the request's W3C `traceparent` when valid (an
/// invalid one is ignored, as the spec says).
pub(super) fn traceparent(headers: &HeaderMap) -> Option<String> {
    if let Some(own) = crate::telemetry::traceparent_of(&tracing::Span::current()) {
        return Some(own);
    }
    let raw = headers.get("traceparent")?.to_str().ok()?;
    crate::domain::trace::TraceParent::parse(raw).map(|t| t.to_string())
}
