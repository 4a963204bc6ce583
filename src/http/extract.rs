//! What handlers take from a request besides its body: a query string read into a struct that
//! names its parameters (`Params`). Unknown and repeated parameters are refused as 400
//! problems that name them, like a bad value, instead of each handler keeping a list of the
//! keys it knows.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::problem::ApiError;

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
