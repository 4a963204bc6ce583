//! Reading notifications (accepting them is `store::ingest`).

use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;

use super::{StoreError, StoreResult};
use crate::domain::{Channel, NotificationId, Priority, Status, TenantId};

/// A notification as stored.
#[derive(Clone, Debug)]
pub struct NotificationRecord {
    pub id: NotificationId,
    pub tenant_id: TenantId,
    pub channel: Channel,
    pub to: Value,
    pub content: Value,
    pub status: Status,
    pub priority: Priority,
    pub tags: Vec<String>,
    pub metadata: Value,
    pub callback_url: Option<String>,
    pub attempts: i32,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub last_error: Option<String>,
    pub send_at: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
    pub next_attempt_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// The template the content was rendered from: `{"name", "version", "locale"}`.
    pub template: Option<Value>,
    /// What kind of message it is; none: transactional.
    pub category: Option<String>,
}

#[derive(Clone, Debug)]
pub struct EventRecord {
    pub at: OffsetDateTime,
    pub kind: String,
    pub status: Option<Status>,
    pub provider: Option<String>,
    pub detail: Option<Value>,
}

const COLUMNS: &str = "id, tenant_id, channel, recipient, content, status, priority, tags, metadata, callback_url, \
     attempts, provider, provider_message_id, last_error, send_at, expires_at, next_attempt_at, created_at, updated_at, \
     template, category";

fn record(r: &PgRow) -> StoreResult<NotificationRecord> {
    let channel: String = r.try_get("channel")?;
    let status: String = r.try_get("status")?;
    let priority: String = r.try_get("priority")?;
    Ok(NotificationRecord {
        id: NotificationId::from_uuid(r.try_get("id")?),
        tenant_id: TenantId::from_uuid(r.try_get("tenant_id")?),
        channel: Channel::parse(&channel).ok_or_else(|| StoreError::Corrupt(format!("channel {channel}")))?,
        to: r.try_get("recipient")?,
        content: r.try_get("content")?,
        status: Status::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("status {status}")))?,
        priority: Priority::parse(&priority).ok_or_else(|| StoreError::Corrupt(format!("priority {priority}")))?,
        tags: r.try_get("tags")?,
        metadata: r.try_get("metadata")?,
        callback_url: r.try_get("callback_url")?,
        attempts: r.try_get("attempts")?,
        provider: r.try_get("provider")?,
        provider_message_id: r.try_get("provider_message_id")?,
        last_error: r.try_get("last_error")?,
        send_at: r.try_get("send_at")?,
        expires_at: r.try_get("expires_at")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        template: r.try_get("template")?,
        category: r.try_get("category")?,
    })
}

/// The first event of every timeline, derived rather than stored (it would be a third row per
/// accepted notification): `accepted`, or `scheduled` for a send in the future.
pub fn first_event(r: &NotificationRecord) -> EventRecord {
    match r.send_at.filter(|t| *t > r.created_at) {
        Some(t) => EventRecord {
            at: r.created_at,
            kind: "scheduled".into(),
            status: Some(Status::Scheduled),
            provider: None,
            detail: Some(serde_json::json!({ "send_at": rfc3339(t) })),
        },
        None => EventRecord {
            at: r.created_at,
            kind: "accepted".into(),
            status: Some(Status::Queued),
            provider: None,
            detail: None,
        },
    }
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// One notification, if `tenant` (or an admin, with `None`) may see it.
#[tracing::instrument(name = "store.notifications.get", skip_all)]
pub async fn get(
    conn: &mut PgConnection,
    id: NotificationId,
    tenant: Option<TenantId>,
) -> StoreResult<Option<NotificationRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM notifications WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.as_uuid())
        .bind(tenant.map(|t| t.as_uuid()))
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(record).transpose()
}

/// A notification's timeline: its derived first event, then the stored ones in order.
#[tracing::instrument(name = "store.notifications.events", skip_all)]
pub async fn events(conn: &mut PgConnection, r: &NotificationRecord) -> StoreResult<Vec<EventRecord>> {
    let rows = sqlx::query(
        "SELECT at, type, status, provider, detail FROM notification_events WHERE notification_id = $1 ORDER BY id",
    )
    .bind(r.id.as_uuid())
    .fetch_all(conn)
    .await?;
    let stored = rows
        .iter()
        .map(|r| {
            let status: Option<String> = r.try_get("status")?;
            Ok(EventRecord {
                at: r.try_get("at")?,
                kind: r.try_get("type")?,
                status: status.as_deref().and_then(Status::parse),
                provider: r.try_get("provider")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let mut events = Vec::with_capacity(stored.len() + 1);
    events.push(first_event(r));
    events.extend(stored);
    Ok(events)
}

/// Filters of `GET /v1/notifications`. `before_id` is the keyset cursor: results are newest
/// first, and a page continues below the last id of the previous one.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub tenant: Option<TenantId>,
    pub status: Option<Status>,
    pub channel: Option<Channel>,
    pub to: Option<String>,
    pub tag: Option<String>,
    pub category: Option<String>,
    pub created_after: Option<OffsetDateTime>,
    pub created_before: Option<OffsetDateTime>,
    pub before_id: Option<NotificationId>,
    pub limit: i64,
    /// A page ends early, after at least one row, once its rows' content and metadata reach
    /// this many bytes (`notifications.size_bytes`).
    pub max_bytes: i64,
}

/// The statement behind `list`. Public for the scale test, which EXPLAINs it.
///
/// Time bounds are also id bounds (`$10`, `$11`): UUIDv7 ids sort by creation time, so every
/// index ending in `id` (by tenant, by tenant and status, by recipient, the primary key)
/// answers them as a range instead of discarding the rows outside it.
///
/// A status is matched by `indexed_status` (`$13`) when the list indexes hold it
/// (`Status::is_indexed`), else by `status` (`$2`); never both, or the planner would take the
/// two for independent conditions, expect a few rows, and sort them all instead of walking
/// the index in order. `queued` and `sending` are found through their send jobs (`$14`): a
/// tenant with no backlog has none, and the walk would read its whole history to say so.
///
/// A page is also bounded in bytes (`$12`): rows are kept, newest first, while the bytes of
/// those before them stay under it, so one page of big messages costs what `$12` allows, not
/// `limit` times the biggest. `fetched` says how many rows the limit alone would have given.
pub fn list_sql() -> String {
    format!(
        "SELECT * FROM (
             SELECT p.*, sum(p.bytes) OVER (ORDER BY p.id DESC ROWS UNBOUNDED PRECEDING) - p.bytes AS before,
                    count(*) OVER () AS fetched
             FROM (
         SELECT {COLUMNS},
                coalesce(size_bytes, octet_length(content::text) + octet_length(metadata::text)) AS bytes
         FROM notifications
         WHERE ($1::uuid IS NULL OR tenant_id = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($13::text IS NULL OR indexed_status = $13)
           AND (NOT $14 OR id = ANY(ARRAY(SELECT notification_id FROM jobs
                                          WHERE kind = 'send' AND ($1::uuid IS NULL OR tenant_id = $1))))
           AND ($3::text IS NULL OR channel = $3)
           AND ($4::text IS NULL OR recipient_key = $4)
           AND ($5::text IS NULL OR (tags @> ARRAY[$5::text] AND tags <> '{{}}'))
           AND ($6::timestamptz IS NULL OR created_at > $6)
           AND ($7::timestamptz IS NULL OR created_at < $7)
           AND ($8::uuid IS NULL OR id < $8)
           AND ($10::uuid IS NULL OR id >= $10)
           AND ($11::uuid IS NULL OR id < $11)
           AND ($15::text IS NULL OR category = $15)
         ORDER BY id DESC
         LIMIT $9
             ) p
         ) page
         WHERE before < $12
         ORDER BY id DESC"
    )
}

/// `list_sql`'s `$2`, `$13` and `$14` for a status filter, as `list_sql` says.
pub fn status_binds(status: Option<Status>) -> (Option<&'static str>, Option<&'static str>, bool) {
    match status {
        Some(s) if s.is_indexed() => (None, Some(s.as_str()), false),
        Some(s) => (Some(s.as_str()), None, s.is_pending()),
        None => (None, None, false),
    }
}

/// The id range a `created_at` bound allows. An id is minted a moment before its
/// `created_at` is taken, so the range is widened by a second each way; the exact bound is the
/// `created_at` condition beside it.
pub fn id_bounds(
    after: Option<OffsetDateTime>,
    before: Option<OffsetDateTime>,
) -> (Option<uuid::Uuid>, Option<uuid::Uuid>) {
    let slack = time::Duration::seconds(1);
    (after.map(|t| NotificationId::floor_at(t - slack)), before.map(|t| NotificationId::floor_at(t + slack)))
}

/// A page of notifications, and how many rows the limit alone would have given (more than the
/// page holds when its bytes cut it short).
#[tracing::instrument(name = "store.notifications.list", skip_all)]
pub async fn list(conn: &mut PgConnection, f: &ListFilter) -> StoreResult<(Vec<NotificationRecord>, usize)> {
    let (from_id, to_id) = id_bounds(f.created_after, f.created_before);
    let (by_status, by_indexed_status, through_jobs) = status_binds(f.status);
    let rows = sqlx::query(sqlx::AssertSqlSafe(list_sql()))
        .bind(f.tenant.map(|t| t.as_uuid()))
        .bind(by_status)
        .bind(f.channel.map(Channel::as_str))
        .bind(&f.to)
        .bind(&f.tag)
        .bind(f.created_after)
        .bind(f.created_before)
        .bind(f.before_id.map(|i| i.as_uuid()))
        .bind(f.limit)
        .bind(from_id)
        .bind(to_id)
        .bind(f.max_bytes.max(1))
        .bind(by_indexed_status)
        .bind(through_jobs)
        .bind(&f.category)
        .fetch_all(conn)
        .await?;
    let fetched = match rows.first() {
        Some(r) => usize::try_from(r.try_get::<i64, _>("fetched")?).unwrap_or(0),
        None => 0,
    };
    Ok((rows.iter().map(record).collect::<StoreResult<_>>()?, fetched))
}

/// A notification's channel, if it exists (for its attempt budget).
pub async fn channel_of(pool: &PgPool, id: NotificationId) -> StoreResult<Option<Channel>> {
    let channel: Option<String> = sqlx::query_scalar("SELECT channel FROM notifications WHERE id = $1")
        .bind(id.as_uuid())
        .fetch_optional(&mut *super::session(pool).await?)
        .await?;
    Ok(channel.as_deref().and_then(Channel::parse))
}
