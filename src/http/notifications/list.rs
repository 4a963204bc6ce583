//! `GET /v1/notifications`: a tenant's notifications (an admin's: every tenant's), newest
//! first, filtered, in pages that end by count or by bytes.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::super::AppState;
use super::super::auth::require;
use super::super::extract::Params;
use super::super::paging;
use super::super::problem::ApiError;
use super::super::schemas::Problem;
use super::tenant_names;
use crate::domain::notification::{CATEGORY_RULE, is_category};
use crate::domain::recipient::recipient_key;
use crate::domain::{Channel, NotificationId, Status, TenantId};
use crate::store::keys::{Caller, Scope};
use crate::store::notifications::{self as store, ListFilter};
use crate::views::NotificationView;

pub(in crate::http) const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;
/// A list page ends early (with a `next_cursor`) once its notifications' content and metadata
/// reach this many bytes: 500 emails of 512 KiB would otherwise be a 250 MiB answer.
const PAGE_BYTES: i64 = 4 * 1024 * 1024;

/// A page of notifications, newest first, and the cursor of the next page (null on the last).
#[derive(Serialize, utoipa::ToSchema)]
pub(in crate::http) struct Page {
    items: Vec<NotificationView>,
    next_cursor: Option<String>,
}

/// `GET /v1/notifications`'s parameters (see its attribute for what each means).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::http) struct ListQuery {
    status: Option<String>,
    channel: Option<String>,
    to: Option<String>,
    tag: Option<String>,
    category: Option<String>,
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
           ("category" = Option<String>, Query, pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$", description = "Only notifications of this category"),
           ("created_after" = Option<String>, Query, description = "RFC 3339"),
           ("created_before" = Option<String>, Query, description = "RFC 3339"),
           ("tenant" = Option<String>, Query, description = "Admin keys: one tenant's"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "1 to 500, default 50; a page also ends early (with a next_cursor) once its notifications' content and metadata reach 4 MiB"),
           ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, description = "A page of notifications, newest first", body = Page), (status = 400, response = Problem)))]
pub(in crate::http) async fn list(
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
    let category = q.category.filter(|c| !c.is_empty());
    if category.as_deref().is_some_and(|c| !is_category(c)) {
        return Err(ApiError::bad_parameter("category", CATEGORY_RULE));
    }
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
        category,
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
