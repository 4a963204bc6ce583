//! `/v1/notifications`: create, read, list, cancel.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::auth::require;
use super::deadline::Committing;
use super::extract::Params;
use super::paging;
use super::problem::ApiError;
use super::schemas::Problem;
use super::{AppState, off_runtime};
use crate::accept::{self, IdempotencyKey, request_hash};
use crate::domain::recipient::recipient_key;
use crate::domain::template::{Book, RenderBudget};
use crate::domain::{Channel, FieldError, NotificationId, Status, TenantId};
use crate::store::ingest::{self, Accepted, Submission};
use crate::store::keys::{Caller, Scope};
use crate::store::notifications::{self as store, ListFilter};
use crate::store::tracking::{self, CancelOutcome, RetryOutcome};
use crate::store::{EventRecord, NotificationRecord};
use crate::views::NotificationView;

pub(super) const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;
/// A list page ends early (with a `next_cursor`) once its notifications' content and metadata
/// reach this many bytes: 500 emails of 512 KiB would otherwise be a 250 MiB answer.
const PAGE_BYTES: i64 = 4 * 1024 * 1024;

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

pub(super) fn key_conflict() -> ApiError {
    ApiError::conflict(
        "idempotency-conflict",
        "Idempotency key reused",
        "this Idempotency-Key was already used with a different request body",
    )
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
    let value = json_body(&body)?;
    let key = idempotency_header(&headers)?;
    let templates = accept::templates_for(&state.pool, &caller, std::iter::once(&value)).await?;
    // Rendering a template is CPU work (up to its fuel): off the runtime's threads.
    let (prepared, value) = if value.get("template").is_some() {
        let (st, c, k) = (state.clone(), caller.clone(), key.clone());
        off_runtime(&state, move || (prepare(&st, &c, &value, k, &templates), value)).await?
    } else {
        (prepare(&state, &caller, &value, key.clone(), &templates), value)
    };
    let submission = match prepared {
        Ok(mut s) => {
            s.traceparent = traceparent(&headers);
            s
        }
        // A retry of a request that no longer validates still gets its original answer.
        Err(errors) => match key {
            Some(k) => {
                match ingest::earlier_use(&state.pool, caller.tenant_id, k.as_str(), &request_hash(&value)).await? {
                    Some(earlier) => return answer(&state, &caller, earlier).await,
                    None => return Err(ApiError::validation(errors)),
                }
            }
            None => return Err(ApiError::validation(errors)),
        },
    };
    // Written with whatever other requests are being accepted at the same moment: one
    // statement and one commit for the group, and the 202 only after that commit. From here
    // on the answer is the write's outcome, whatever the request timeout.
    if let Some(axum::Extension(c)) = committing {
        c.begin();
    }
    let written = state.ingest.submit(submission).await.map_err(|_| ApiError::internal())?;
    let outcome = written.outcome().await.map_err(|_| ApiError::internal())??;
    answer(&state, &caller, outcome).await
}

/// `accept::prepare` with this server's rules and providers, over a request's own budget.
fn prepare(
    state: &AppState,
    caller: &Caller,
    value: &Value,
    key: Option<IdempotencyKey>,
    templates: &Book,
) -> Result<Submission, Vec<FieldError>> {
    let budget = RenderBudget::per_request();
    let opts = state.rules.parse_options(caller, templates, &budget);
    accept::prepare(&state.rules, &state.registry, caller, value, key, opts)
}

/// The response to an accept: 202 with the new notification, or 200 with the original one.
async fn answer(state: &AppState, caller: &Caller, outcome: Accepted) -> Result<Response, ApiError> {
    let (view, status, replayed) = match outcome {
        // Built from what was written: no second read.
        Accepted::Created { record, suppressed_reason } => {
            crate::metrics::accepted(record.channel.as_str(), 1);
            let events = created_events(&record, suppressed_reason.as_deref());
            let mut view = NotificationView::new(*record, Some(events));
            view.tenant = Some(caller.tenant.clone());
            (view, StatusCode::ACCEPTED, false)
        }
        Accepted::Replayed { id, .. } => (load(state, id, caller).await?, StatusCode::OK, true),
        Accepted::KeyConflict => return Err(key_conflict()),
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

/// A page of notifications, newest first, and the cursor of the next page (null on the last).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Page {
    items: Vec<NotificationView>,
    next_cursor: Option<String>,
}

/// `GET /v1/notifications`'s parameters (see its attribute for what each means).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    status: Option<String>,
    channel: Option<String>,
    to: Option<String>,
    tag: Option<String>,
    tenant: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn parse_time_param(given: Option<&str>, name: &str) -> Result<Option<OffsetDateTime>, ApiError> {
    given
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339)
                .map_err(|_| ApiError::bad_parameter(name, "must be an RFC 3339 timestamp"))
        })
        .transpose()
}

/// Notifications, newest first, filtered.
#[utoipa::path(get, path = "/v1/notifications", operation_id = "listNotifications", tag = "notifications", security(("api_key" = [])),
    params(("status" = Option<crate::domain::Status>, Query), ("channel" = Option<crate::domain::Channel>, Query),
           ("to" = Option<String>, Query, description = "A recipient"), ("tag" = Option<String>, Query),
           ("created_after" = Option<String>, Query, description = "RFC 3339"),
           ("created_before" = Option<String>, Query, description = "RFC 3339"),
           ("tenant" = Option<String>, Query, description = "Admin keys: one tenant's"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "1 to 500, default 50; a page also ends early (with a next_cursor) once its notifications' content and metadata reach 4 MiB"),
           ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, description = "A page of notifications, newest first", body = Page), (status = 400, response = Problem)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<ListQuery>,
) -> Result<Json<Page>, ApiError> {
    require(&caller, Scope::Read)?;
    let status = q
        .status
        .as_deref()
        .map(|s| Status::parse(s).ok_or_else(|| ApiError::bad_parameter("status", "not a notification status")))
        .transpose()?;
    let channel = q
        .channel
        .as_deref()
        .map(|s| Channel::parse(s).ok_or_else(|| ApiError::bad_parameter("channel", "must be email, sms or push")))
        .transpose()?;
    let limit = paging::limit(q.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let before_id =
        paging::cursor(q.cursor.as_deref(), |b| uuid::Uuid::from_slice(&b).ok().map(NotificationId::from_uuid))?;
    // The same key as stored (a value that is no recipient of any channel matches nothing).
    let to = q.to.map(|t| recipient_key(channel, &t).unwrap_or(t));
    // Lists read through the reads' pool, under the request timeout: a slow list never holds
    // a connection that accepts need.
    let timeout = std::time::Duration::from_millis(state.settings.server.request_timeout_ms);
    let mut tx = crate::store::read_tx(&state.reads, timeout).await?;
    let conn = &mut *tx;
    // `tenant` narrows an admin's view to one tenant; any other key sees only its own.
    let tenant = match &q.tenant {
        None => caller.tenant_filter(),
        Some(name) if *name == caller.tenant => Some(caller.tenant_id),
        Some(name) if caller.is_admin() => {
            crate::domain::tenant::check_name(name).map_err(|e| ApiError::bad_parameter("tenant", e))?;
            // An unknown tenant has no notifications: the nil id matches none.
            Some(crate::store::keys::tenant_id(conn, name).await?.unwrap_or(TenantId::from_uuid(uuid::Uuid::nil())))
        }
        Some(_) => {
            return Err(ApiError::forbidden(format!(
                "this key is tenant `{}`'s: it sees only that tenant's notifications",
                caller.tenant
            )));
        }
    };
    let filter = ListFilter {
        tenant,
        status,
        channel,
        to,
        tag: q.tag,
        created_after: parse_time_param(q.created_after.as_deref(), "created_after")?,
        created_before: parse_time_param(q.created_before.as_deref(), "created_before")?,
        before_id,
        limit: limit + 1,
        max_bytes: PAGE_BYTES,
    };
    let (rows, fetched) = store::list(conn, &filter).await?;
    let (rows, next_cursor) = if rows.len() < fetched {
        // Ended by its bytes: the next page starts after its last row.
        let next = rows.last().map(|r| paging::encode(r.id.as_uuid().as_bytes()));
        (rows, next)
    } else {
        paging::page(rows, limit, |r| *r.id.as_uuid().as_bytes())
    };
    let names = tenant_names(conn, &caller, &rows.iter().map(|r| r.tenant_id).collect::<Vec<_>>()).await?;
    let items = rows
        .into_iter()
        .map(|r| {
            let tenant = names.get(&r.tenant_id).cloned();
            let mut view = NotificationView::new(r, None);
            view.tenant = tenant;
            view
        })
        .collect();
    Ok(Json(Page { items, next_cursor }))
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
