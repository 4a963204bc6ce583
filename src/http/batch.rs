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

use super::auth::require;
use super::deadline::Committing;
use super::notifications::{idempotency_header, json_body, key_conflict, traceparent};
use super::problem::ApiError;
use super::schemas::Problem;
use super::{AppState, off_runtime};
use crate::accept::{self, IdempotencyKey, request_hash};
use crate::domain::Channel;
use crate::domain::FieldError;
use crate::domain::notification::ParseOptions;
use crate::domain::template::RenderBudget;
use crate::store::ingest::{self, Accepted, Submission};
use crate::store::keys::{Caller, Scope};

pub(super) const MAX_ITEMS: usize = 1000;
/// The fields of a batch request; and the one field an item has beyond a notification's.
pub(super) const FIELDS: [&str; 1] = ["notifications"];
pub(super) const ITEM_KEY: &str = "idempotency_key";
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

    // Validate every item, off the runtime (templates render there, and a thousand SMS
    // numbers are checked against libphonenumber's metadata), within one rendering budget.
    let templates = accept::templates_for(&state.pool, &caller, items.iter()).await?;
    let traceparent = traceparent(&headers);
    let max_item_bytes = state.settings.server.max_body_bytes;
    let (st, c) = (state.clone(), caller.clone());
    let checked = off_runtime(&state, move || {
        let budget = RenderBudget::per_request();
        let opts = st.rules.parse_options(&c, &templates, &budget);
        items
            .into_iter()
            .enumerate()
            .map(|(index, mut item)| {
                let checked = item_submission(&st, &c, index, &mut item, batch_key.as_ref(), max_item_bytes, opts);
                (index, checked, item)
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let mut results: Vec<Option<Value>> = vec![None; checked.len()];
    let (mut indices, mut submissions) = (Vec::with_capacity(checked.len()), Vec::with_capacity(checked.len()));
    for (index, checked, item) in checked {
        let refused = match checked {
            Ok(mut s) => {
                s.traceparent.clone_from(&traceparent);
                indices.push(index);
                submissions.push(s);
                continue;
            }
            Err(refused) => *refused,
        };
        results[index] = Some(match refused {
            // A retried item that no longer validates still gets its original answer.
            (problem, Some(key)) => {
                match ingest::earlier_use(&state.pool, caller.tenant_id, key.as_str(), &request_hash(&item)).await? {
                    Some(earlier) => item_result(index, Ok(earlier)),
                    None => item_problem(index, &problem),
                }
            }
            (problem, None) => item_problem(index, &problem),
        });
    }
    // From here on the answer is the write's outcome, whatever the request timeout.
    if let Some(axum::Extension(c)) = committing {
        c.begin();
    }
    let outcomes = ingest::accept_batch(&state.pool, &submissions, state.settings.dispatch.listen_notify).await;
    let mut accepted = [0u64; 3];
    for (index, outcome) in indices.into_iter().zip(outcomes) {
        if let Ok(Accepted::Created { record, .. }) = &outcome {
            accepted[record.channel.index()] += 1;
        }
        results[index] = Some(item_result(index, outcome.map_err(ApiError::from)));
    }
    for (channel, n) in Channel::ALL.into_iter().zip(accepted).filter(|(_, n)| *n > 0) {
        crate::metrics::accepted(channel.as_str(), n);
    }
    let results: Vec<Value> = results.into_iter().flatten().collect();
    Ok((StatusCode::OK, Json(json!({ "results": results }))))
}

/// One item: take out its `idempotency_key`, then validate the rest as a notification. Field
/// pointers are into the whole request (`/notifications/3/to`). A refused item comes back with
/// its key, if it has one.
fn item_submission(
    state: &AppState,
    caller: &Caller,
    index: usize,
    item: &mut Value,
    batch_key: Option<&IdempotencyKey>,
    max_item_bytes: usize,
    opts: ParseOptions<'_>,
) -> Result<Submission, Box<(ApiError, Option<IdempotencyKey>)>> {
    let at = |e: FieldError| FieldError::new(format!("/notifications/{index}{}", e.pointer), e.detail);
    // An item that could not be sent on its own (server.max_body_bytes) is not taken in a batch.
    let size = crate::store::ingest::json_len(item);
    if size > max_item_bytes {
        let e = FieldError::new(
            "",
            format!("this item is {size} bytes; an item may be at most server.max_body_bytes ({max_item_bytes})"),
        );
        return Err(Box::new((ApiError::validation(vec![at(e)]), None)));
    }
    let own_key = match item.as_object_mut().and_then(|o| o.remove(ITEM_KEY)) {
        None => None,
        Some(k) => match k.as_str().and_then(IdempotencyKey::parse) {
            Some(k) => Some(k),
            None => {
                let e = FieldError::new("/idempotency_key", "must be 1 to 255 visible ASCII characters");
                return Err(Box::new((ApiError::validation(vec![at(e)]), None)));
            }
        },
    };
    let key = match (own_key, batch_key) {
        (Some(k), _) => Some(k),
        (None, Some(b)) => {
            let Some(k) = b.for_item(index) else {
                let e = ApiError::header_problem(
                    "Idempotency-Key",
                    "too long to key 1,000 items; use at most 250 characters",
                );
                return Err(Box::new((e, None)));
            };
            Some(k)
        }
        (None, None) => None,
    };
    accept::prepare(&state.rules, &state.registry, caller, item, key.clone(), opts)
        .map_err(|errs| Box::new((ApiError::validation(errs.into_iter().map(at).collect()), key)))
}

/// One item's entry in the answer: its notification (new, or the original of a replay), or
/// its problem.
fn item_result(index: usize, outcome: Result<Accepted, ApiError>) -> Value {
    match outcome {
        Ok(Accepted::Created { record, .. }) => json!({"index": index, "id": record.id, "status": record.status}),
        Ok(Accepted::Replayed { id, status }) => json!({"index": index, "id": id, "status": status, "replayed": true}),
        Ok(Accepted::KeyConflict) => item_problem(index, &key_conflict()),
        Err(e) => item_problem(index, &e),
    }
}

fn item_problem(index: usize, problem: &ApiError) -> Value {
    json!({ "index": index, "problem": problem.body() })
}
