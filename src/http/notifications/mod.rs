//! `/v1/notifications`: create, read, cancel, retry; lists in `list`.

pub(super) mod list;

pub(super) use list::DEFAULT_LIMIT;

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::require;
use super::deadline::Committing;
use super::extract::{idempotency_header, json_body, traceparent};
use super::problem::ApiError;
use super::schemas::Problem;
use crate::accept::{self, Accepted};
use crate::domain::{NotificationId, Status, TenantId};
use crate::store::keys::{Caller, Scope};
use crate::store::notifications as store;
use crate::store::tracking::{self, CancelOutcome, RetryOutcome};
use crate::store::{EventRecord, NotificationRecord};
use crate::views::NotificationView;

async fn load(state: &AppState, id: NotificationId, caller: &Caller) -> Result<NotificationView, ApiError> {
    let mut conn = crate::store::session(&state.pool).await?;
    let record = store::get(&mut conn, id, caller.tenant_filter())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no notification {id}")))?;
    let events = store::events(&mut conn, &record).await?;
    let names = tenant_names(&mut conn, caller, &[record.tenant_id]).await?;
    let mut view = NotificationView::new(record, Some(events));
    view.tenant = names.into_values().next();
    Ok(view)
}

/// The names of the tenants of `ids`: the caller's own, or, for an admin key (which sees every
/// tenant's notifications), looked up.
async fn tenant_names(
    conn: &mut sqlx::PgConnection,
    caller: &Caller,
    ids: &[TenantId],
) -> Result<HashMap<TenantId, String>, ApiError> {
    if !caller.is_admin() || ids.iter().all(|t| *t == caller.tenant_id) {
        return Ok(HashMap::from([(caller.tenant_id, caller.tenant.clone())]));
    }
    let mut unique = ids.to_vec();
    unique.sort();
    unique.dedup();
    Ok(crate::store::keys::tenant_names(conn, &unique).await?)
}

fn parse_id(raw: &str) -> Result<NotificationId, ApiError> {
    // An id that cannot exist is simply not found (and leaks nothing about other tenants).
    raw.parse().map_err(|_| ApiError::not_found(format!("no notification {raw}")))
}

/// The timeline of a notification just created: its derived first event and, for a
/// suppressed recipient, the `suppressed` event written with it.
pub(super) fn created_events(record: &NotificationRecord, suppressed_reason: Option<&str>) -> Vec<EventRecord> {
    let mut events = vec![store::first_event(record)];
    if record.status == Status::Suppressed {
        events.push(EventRecord {
            at: record.created_at,
            kind: "suppressed".into(),
            status: Some(Status::Suppressed),
            provider: None,
            detail: Some(serde_json::json!({ "reason": suppressed_reason })),
        });
    }
    events
}

/// Create one notification. Answered `202` once it is committed; with an `Idempotency-Key` seen
/// before, `200` and the original.
#[utoipa::path(post, path = "/v1/notifications", operation_id = "createNotification", tag = "notifications", security(("api_key" = [])),
    request_body = crate::http::schemas::NotificationRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried POST safe (at most 255 characters)"),
           ("traceparent" = Option<String>, Header, description = "W3C trace context, continued into dispatch")),
    responses((status = 202, description = "Accepted", body = crate::views::NotificationView),
              (status = 200, description = "A replay of an earlier request with the same key", body = crate::views::NotificationView),
              (status = 400, response = Problem), (status = 409, response = Problem), (status = 422, response = Problem)))]
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    committing: Option<axum::Extension<Committing>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require(&caller, Scope::Send)?;
    let request = accept::Request {
        body: json_body(&body)?,
        key: idempotency_header(&headers)?,
        traceparent: traceparent(&headers),
    };
    // From the write on, the answer is the write's outcome, whatever the request timeout.
    let accepted = state.intake.one(&caller, request, || committing.map_or((), |c| c.begin())).await?;
    answer(&state, &caller, accepted).await
}

/// The response to an accept: 202 with the new notification, or 200 with the original one.
async fn answer(state: &AppState, caller: &Caller, accepted: Accepted) -> Result<Response, ApiError> {
    let (view, status, replayed) = match accepted {
        // Built from what was written: no second read.
        Accepted::Created { record, suppressed_reason } => {
            crate::metrics::accepted(record.channel.as_str(), 1);
            let events = created_events(&record, suppressed_reason.as_deref());
            let mut view = NotificationView::new(*record, Some(events));
            view.tenant = Some(caller.tenant.clone());
            (view, StatusCode::ACCEPTED, false)
        }
        Accepted::Replayed { id, .. } => (load(state, id, caller).await?, StatusCode::OK, true),
    };
    let id = view.id;
    let mut resp = (status, Json(view)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/notifications/{id}")) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    if replayed {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// One notification with its timeline.
#[utoipa::path(get, path = "/v1/notifications/{id}", operation_id = "getNotification", tag = "notifications", security(("api_key" = [])),
    params(("id" = String, Path, description = "The notification's id")),
    responses((status = 200, description = "The notification with its timeline", body = crate::views::NotificationView), (status = 400, response = Problem),
              (status = 404, response = Problem)))]
pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<NotificationView>, ApiError> {
    require(&caller, Scope::Read)?;
    let id = parse_id(&id)?;
    Ok(Json(load(&state, id, &caller).await?))
}

/// Cancel a notification that is scheduled, queued or retrying.
#[utoipa::path(post, path = "/v1/notifications/{id}/cancel", operation_id = "cancelNotification", tag = "notifications", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, description = "Cancelled", body = crate::views::NotificationView), (status = 400, response = Problem),
              (status = 404, response = Problem), (status = 409, response = Problem)))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<NotificationView>, ApiError> {
    require(&caller, Scope::Send)?;
    let id = parse_id(&id)?;
    let by = format!("api key {}", caller.key_id);
    match tracking::cancel(&state.pool, id, caller.tenant_filter(), &by).await? {
        CancelOutcome::Cancelled => Ok(Json(load(&state, id, &caller).await?)),
        CancelOutcome::NotFound => Err(ApiError::not_found(format!("no notification {id}"))),
        CancelOutcome::NotCancellable(st) => Err(ApiError::conflict(
            "not-cancellable",
            "Notification cannot be cancelled",
            format!("the notification is {st}; only scheduled, queued or retrying notifications can be cancelled"),
        )),
    }
}

/// `POST /v1/notifications/{id}/retry` (admin): requeue a failed, expired or bounced one.
#[utoipa::path(post, path = "/v1/notifications/{id}/retry", operation_id = "retryNotification", tag = "operators", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, description = "Requeued", body = crate::views::NotificationView), (status = 400, response = Problem),
              (status = 404, response = Problem), (status = 409, response = Problem)))]
pub(super) async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<NotificationView>, ApiError> {
    require(&caller, Scope::Admin)?;
    let id = parse_id(&id)?;
    let by = format!("api key {}", caller.key_id);
    let channel = store::channel_of(&state.pool, id).await?;
    let Some(channel) = channel else {
        return Err(ApiError::not_found(format!("no notification {id}")));
    };
    let max_attempts = i32::try_from(state.settings.max_attempts(channel)).unwrap_or(i32::MAX);
    match tracking::retry(&state.pool, id, caller.tenant_filter(), &by, max_attempts).await? {
        RetryOutcome::Retried => Ok(Json(load(&state, id, &caller).await?)),
        RetryOutcome::NotFound => Err(ApiError::not_found(format!("no notification {id}"))),
        RetryOutcome::NotRetryable(st) => Err(ApiError::conflict(
            "not-retryable",
            "Notification cannot be retried",
            format!("the notification is {st}; only failed, expired or bounced notifications can be retried"),
        )),
    }
}
