//! `/v1/suppressions`: a tenant's do-not-send list, per channel.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::AppState;
use super::auth::require;
use super::extract::Params;
use super::paging;
use super::problem::ApiError;
use super::schemas::Problem;
use crate::domain::notification::{CATEGORY_RULE, is_category};
use crate::domain::recipient::recipient_key;
use crate::domain::{Channel, FieldError};
use crate::store::keys::{Caller, Scope};
use crate::store::suppressions::{self, Suppression};

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct SuppressionView {
    channel: Channel,
    recipient: String,
    /// The one category it blocks; null: every message to the recipient on the channel.
    category: Option<String>,
    reason: String,
    source: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

/// A page of items and the cursor of the next page (null on the last).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct SuppressionPage {
    items: Vec<SuppressionView>,
    next_cursor: Option<String>,
}

impl From<Suppression> for SuppressionView {
    fn from(s: Suppression) -> Self {
        SuppressionView {
            channel: s.channel,
            recipient: s.recipient,
            category: s.category,
            reason: s.reason,
            source: s.source,
            created_at: s.created_at,
        }
    }
}

fn channel_param(raw: &str) -> Result<Channel, ApiError> {
    Channel::parse(raw).ok_or_else(|| ApiError::not_found(format!("no channel {raw}")))
}

pub(super) const DEFAULT_LIMIT: i64 = 100;
/// The fields of `POST /v1/suppressions`.
pub(super) const FIELDS: [&str; 4] = ["channel", "recipient", "category", "reason"];
const MAX_LIMIT: i64 = 1000;

/// `GET /v1/suppressions`'s parameters.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    channel: Option<String>,
    category: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// The tenant's suppressed recipients.
#[utoipa::path(get, path = "/v1/suppressions", operation_id = "listSuppressions", tag = "suppressions", security(("api_key" = [])),
    params(("channel" = Option<crate::domain::Channel>, Query),
           ("category" = Option<String>, Query, pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$", description = "Only the suppressions of this category"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "1 to 1000, default 100"),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "A page of suppressions", body = SuppressionPage), (status = 400, response = Problem)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<ListQuery>,
) -> Result<Json<SuppressionPage>, ApiError> {
    require(&caller, Scope::Read)?;
    let channel = q
        .channel
        .as_deref()
        .map(|c| Channel::parse(c).ok_or_else(|| ApiError::bad_parameter("channel", "must be email, sms or push")))
        .transpose()?;
    let category = q.category.as_deref().map(category_param).transpose()?;
    let limit = paging::limit(q.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    // `channel\nrecipient\ncategory` (a cursor of the build before categories has no category).
    let after = paging::cursor(q.cursor.as_deref(), |b| {
        let text = String::from_utf8(b).ok()?;
        let mut parts = text.splitn(3, '\n').map(str::to_owned);
        Some((parts.next()?, parts.next()?, parts.next().unwrap_or_default()))
    })?;
    let mut conn = crate::store::session(&state.pool).await?;
    let rows = suppressions::list(&mut conn, caller.tenant_id, channel, category, after, limit + 1).await?;
    let position = |s: &Suppression| format!("{}\n{}\n{}", s.channel, s.recipient, s.category.as_deref().unwrap_or(""));
    let (rows, next) = paging::page(rows, limit, position);
    Ok(Json(SuppressionPage { items: rows.into_iter().map(Into::into).collect(), next_cursor: next }))
}

/// Suppress a recipient: nothing is sent to it on that channel until it is deleted.
#[utoipa::path(post, path = "/v1/suppressions", operation_id = "createSuppression", tag = "suppressions", security(("api_key" = [])),
    request_body = crate::http::schemas::SuppressionRequest,
    responses((status = 201, description = "Suppressed", body = SuppressionView), (status = 200, description = "Already suppressed", body = SuppressionView),
              (status = 400, response = Problem), (status = 422, response = Problem)))]
pub(super) async fn create(State(state): State<AppState>, caller: Caller, body: Bytes) -> Result<Response, ApiError> {
    require(&caller, Scope::Send)?;
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::malformed(format!("the body is not valid JSON: {e}")))?;
    super::extract::refuse_nul(&value)?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::validation(vec![FieldError::new("", "the body must be a JSON object")]));
    };
    let mut errors: Vec<FieldError> = obj
        .keys()
        .filter(|k| !FIELDS.contains(&k.as_str()))
        .map(|k| FieldError::new(format!("/{}", crate::domain::content::escape(k)), "unknown field"))
        .collect();
    let channel = match value.get("channel").and_then(Value::as_str).and_then(Channel::parse) {
        Some(c) => Some(c),
        None => {
            errors.push(FieldError::new("/channel", "is required: one of email, sms, push"));
            None
        }
    };
    let recipient = match (channel, value.get("recipient").and_then(Value::as_str)) {
        (_, None) => {
            errors.push(FieldError::new("/recipient", "is required"));
            None
        }
        (None, Some(_)) => None,
        (Some(ch), Some(r)) => match recipient_key(Some(ch), r) {
            Ok(k) => Some(k),
            Err(d) => {
                errors.push(FieldError::new("/recipient", d));
                None
            }
        },
    };
    let category = match value.get("category") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if is_category(c) => Some(c.clone()),
        Some(_) => {
            errors.push(FieldError::new("/category", CATEGORY_RULE));
            None
        }
    };
    let reason = match value.get("reason") {
        None | Some(Value::Null) => "added through the API".to_owned(),
        Some(Value::String(r)) if r.len() <= 500 => r.clone(),
        Some(_) => {
            errors.push(FieldError::new("/reason", "must be a string of at most 500 bytes"));
            String::new()
        }
    };
    let (Some(channel), Some(recipient), true) = (channel, recipient, errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let mut conn = crate::store::session(&state.pool).await?;
    let category = category.as_deref();
    let created = suppressions::add(&mut conn, caller.tenant_id, channel, &recipient, category, &reason, "api").await?;
    let row = suppressions::get(&mut conn, caller.tenant_id, channel, &recipient, category)
        .await?
        .ok_or_else(ApiError::internal)?;
    conn.finish().await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(SuppressionView::from(row))).into_response())
}

/// `DELETE /v1/suppressions/{channel}/{recipient}`'s parameters.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteQuery {
    category: Option<String>,
}

/// Lift a suppression: the one of every category, or with `category`, that category's.
#[utoipa::path(delete, path = "/v1/suppressions/{channel}/{recipient}", operation_id = "deleteSuppression", tag = "suppressions", security(("api_key" = [])),
    params(("channel" = crate::domain::Channel, Path), ("recipient" = String, Path),
           ("category" = Option<String>, Query, pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$", description = "Lift this category's suppression instead of the one of every category")),
    responses((status = 204, description = "Deleted"), (status = 400, response = Problem), (status = 404, response = Problem)))]
pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((channel, recipient)): Path<(String, String)>,
    Params(q): Params<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    require(&caller, Scope::Send)?;
    let channel = channel_param(&channel)?;
    let category = q.category.as_deref().map(category_param).transpose()?;
    let key = recipient_key(Some(channel), &recipient).unwrap_or(recipient);
    let mut conn = crate::store::session(&state.pool).await?;
    let removed = suppressions::remove(&mut conn, caller.tenant_id, channel, &key, category).await?;
    conn.finish().await?;
    match (removed, category) {
        (true, _) => Ok(StatusCode::NO_CONTENT),
        (false, None) => Err(ApiError::not_found(format!("{key} is not suppressed on {channel}"))),
        (false, Some(c)) => Err(ApiError::not_found(format!("{key} is not suppressed on {channel} for category {c}"))),
    }
}

/// A `category` parameter, checked.
fn category_param(raw: &str) -> Result<&str, ApiError> {
    if is_category(raw) { Ok(raw) } else { Err(ApiError::bad_parameter("category", CATEGORY_RULE)) }
}
