//! `POST /v1/notifications/batch`: up to `MAX_ITEMS` notifications in one request. Each item is
//! validated on its own; the valid ones are committed together in one transaction, and the
//! answer lists, per index, the notification created or the item's problem. An item may carry
//! its own `idempotency_key`; a batch `Idempotency-Key` header gives every item without one the
//! key `{header}/{index}`, so a batch retried whole answers with the same notifications.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::AppState;
use super::auth::require;
use super::deadline::Committing;
use super::extract::{idempotency_header, json_body, traceparent};
use super::problem::ApiError;
use super::schemas::Problem;
use crate::accept::{self, Accepted, Refused};
use crate::domain::FieldError;
use crate::store::keys::{Caller, Scope};

pub(super) const MAX_ITEMS: usize = 1000;
/// The fields of a batch request; and the one field an item has beyond a notification's.
pub(super) const FIELDS: [&str; 1] = ["notifications"];
pub(super) use accept::ITEM_KEY;
/// The body limit of this route: 1,000 items of up to 16 KiB each (a long email is rarely more),
/// or the server's own limit if that is larger.
pub(super) const MAX_BODY_BYTES: usize = MAX_ITEMS * 16 * 1024;

/// Create up to 1,000 notifications in one request; valid items are committed together.
#[utoipa::path(post, path = "/v1/notifications/batch", operation_id = "createNotificationBatch", tag = "notifications", security(("api_key" = [])),
    request_body = crate::http::schemas::BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "For the whole batch")),
    responses((status = 200, description = "A result per item", body = crate::http::schemas::BatchResponse),
              (status = 400, response = Problem),
              (status = 422, response = Problem)))]
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    committing: Option<axum::Extension<Committing>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require(&caller, Scope::Send)?;
    let batch_key = idempotency_header(&headers)?;
    let mut value = json_body(&body)?;
    let Some(Value::Array(items)) = value.get_mut("notifications").map(Value::take) else {
        return Err(ApiError::validation(vec![FieldError::new(
            "/notifications",
            "required: an array of notifications ({\"notifications\": [...]})",
        )]));
    };
    if let Some(other) = value.as_object().and_then(|o| o.keys().find(|k| *k != FIELDS[0])) {
        return Err(ApiError::validation(vec![FieldError::new(format!("/{other}"), "unknown field")]));
    }
    if items.is_empty() || items.len() > MAX_ITEMS {
        let mut e = ApiError::validation(vec![FieldError::new(
            "/notifications",
            format!("must hold 1 to {MAX_ITEMS} notifications; this batch has {}", items.len()),
        )]);
        if items.len() > MAX_ITEMS {
            e.status = StatusCode::PAYLOAD_TOO_LARGE;
            e.kind = "too-many-items";
            e.title = "Too many items";
        }
        return Err(e);
    }

    let batch = accept::Batch { items, key: batch_key, traceparent: traceparent(&headers) };
    // From the write on, the answer is the write's outcome, whatever the request timeout.
    let outcomes = state.intake.many(&caller, batch, || committing.map_or((), |c| c.begin())).await?;
    let results: Vec<Value> =
        outcomes.into_iter().enumerate().map(|(index, outcome)| item_result(index, outcome)).collect();
    Ok((StatusCode::OK, Json(json!({ "results": results }))))
}

/// One item's entry in the answer: its notification (new, or the original of a replay), or
/// its problem.
fn item_result(index: usize, outcome: Result<Accepted, Refused>) -> Value {
    match outcome {
        Ok(Accepted::Created { record, .. }) => json!({"index": index, "id": record.id, "status": record.status}),
        Ok(Accepted::Replayed { id, status }) => json!({"index": index, "id": id, "status": status, "replayed": true}),
        Err(refused) => json!({ "index": index, "problem": ApiError::from(refused).body() }),
    }
}
