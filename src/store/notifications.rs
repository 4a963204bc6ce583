//! Accepting and reading notifications. Accepting is one transaction: the idempotency key, the
//! notification, its first event and its job commit together (an outbox), so a 202 always has
//! a job behind it and a rolled-back request never leaves one.

use std::sync::LazyLock;

use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::tracking::QUEUE_CALLBACK;
use super::{StoreError, StoreResult, WAKE_CHANNEL};
use crate::domain::{Channel, NewNotification, NotificationId, Priority, Status, TenantId};

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
     attempts, provider, provider_message_id, last_error, send_at, expires_at, next_attempt_at, created_at, updated_at";

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
    })
}

/// The outcome of an accept.
#[derive(Debug)]
pub enum Accepted {
    /// Newly stored: the notification and its first timeline event.
    Created(Box<NotificationRecord>, EventRecord),
    /// The idempotency key was used before with the same request: here is the original.
    Replayed(NotificationId),
    /// The idempotency key was used before with a different request.
    KeyConflict,
}

/// An idempotency key and the hash of the request it came with.
pub struct IdempotencyKey<'a> {
    pub key: &'a str,
    pub request_hash: &'a [u8],
}

/// Store a new notification. Without an idempotency key this is one statement (atomic on its
/// own); with one, the key and the notification commit in one transaction. `notify` sends the
/// wake-up, which PostgreSQL delivers only at commit.
pub async fn accept(
    pool: &PgPool,
    tenant: TenantId,
    n: &NewNotification,
    max_attempts: u32,
    idempotency: Option<IdempotencyKey<'_>>,
    notify: bool,
) -> StoreResult<Accepted> {
    let id = NotificationId::new();
    let Some(ik) = idempotency else {
        let mut conn = pool.acquire().await?;
        return insert_one(&mut conn, tenant, id, n, max_attempts, notify).await;
    };
    let mut tx = pool.begin().await?;
    // A concurrent request with the same key blocks here until the first commits, then
    // sees the conflict; so exactly one notification is made per key.
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, notification_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, key) DO NOTHING",
    )
    .bind(tenant.as_uuid())
    .bind(ik.key)
    .bind(ik.request_hash)
    .bind(id.as_uuid())
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        let (hash, original): (Vec<u8>, Uuid) = sqlx::query_as(
            "SELECT request_hash, notification_id FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
        )
        .bind(tenant.as_uuid())
        .bind(ik.key)
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        return Ok(if hash == ik.request_hash {
            Accepted::Replayed(NotificationId::from_uuid(original))
        } else {
            Accepted::KeyConflict
        });
    }
    let created = insert_one(&mut tx, tenant, id, n, max_attempts, notify).await?;
    tx.commit().await?;
    Ok(created)
}

/// One round trip: the notification, its first timeline event and its job, or, for a
/// recipient on the tenant's suppression list, the notification as `suppressed` with no job
/// and its status callback queued; then the wake-up for a job that is due now.
async fn insert_one(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: NotificationId,
    n: &NewNotification,
    max_attempts: u32,
    notify: bool,
) -> StoreResult<Accepted> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH sup AS (
                 SELECT reason FROM suppressions WHERE tenant_id = $2 AND channel = $3 AND recipient = $5
             ), n AS (
                 INSERT INTO notifications (id, tenant_id, channel, recipient, recipient_key, content, status, priority,
                                            tags, metadata, callback_url, send_at, expires_at, created_at, updated_at)
                 SELECT $1, $2, $3, $4, $5, $6, CASE WHEN EXISTS (SELECT 1 FROM sup) THEN 'suppressed' ELSE $7 END,
                        $8, $9, $10, $11, $12, $13, $14, $14
                 RETURNING {COLUMNS}
             ), e AS (
                 INSERT INTO notification_events (notification_id, at, type, status, detail)
                 SELECT n.id, $14, CASE WHEN n.status = 'suppressed' THEN 'suppressed' ELSE $15 END, n.status,
                        CASE WHEN n.status = 'suppressed' THEN jsonb_build_object('reason', (SELECT reason FROM sup LIMIT 1))
                             ELSE $16 END
                 FROM n
                 RETURNING at, type, status, detail
             ), j AS (
                 INSERT INTO jobs (notification_id, queue, priority, run_at, max_attempts)
                 SELECT n.id, $3, $17, coalesce($12, $14), $18 FROM n WHERE n.status <> 'suppressed'
                 RETURNING run_at
             ), upd AS (
                 SELECT id, tenant_id, status, callback_url FROM n WHERE status = 'suppressed'
             ){QUEUE_CALLBACK}, wake AS (
                 SELECT pg_notify($19, '') FROM j WHERE $20 AND j.run_at <= now()
             )
             SELECT n.*, e.at AS event_at, e.type AS event_type, e.status AS event_status, e.detail AS event_detail,
                    (SELECT count(*) FROM wake) AS woke
             FROM n, e"
        )
    });
    let now = OffsetDateTime::now_utc();
    let scheduled = n.send_at.is_some_and(|t| t > now);
    let status = if scheduled { Status::Scheduled } else { Status::Queued };
    let content = serde_json::to_value(&n.content).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let event_detail = n.send_at.filter(|_| scheduled).map(|t| serde_json::json!({ "send_at": rfc3339(t) }));
    let row = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(id.as_uuid())
        .bind(tenant.as_uuid())
        .bind(n.channel.as_str())
        .bind(n.to.to_json())
        .bind(n.to.key())
        .bind(content)
        .bind(status.as_str())
        .bind(n.priority.as_str())
        .bind(&n.tags)
        .bind(Value::Object(n.metadata.clone()))
        .bind(&n.callback_url)
        .bind(n.send_at)
        .bind(n.expires_at)
        .bind(now)
        .bind(if scheduled { "scheduled" } else { "accepted" })
        .bind(event_detail)
        .bind(n.priority.lane())
        .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
        .bind(WAKE_CHANNEL)
        .bind(notify)
        .fetch_one(conn)
        .await?;
    let event_status: Option<String> = row.try_get("event_status")?;
    let event = EventRecord {
        at: row.try_get("event_at")?,
        kind: row.try_get("event_type")?,
        status: event_status.as_deref().and_then(Status::parse),
        provider: None,
        detail: row.try_get("event_detail")?,
    };
    Ok(Accepted::Created(Box::new(record(&row)?), event))
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// One notification, if `tenant` (or an admin, with `None`) may see it.
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

pub async fn events(conn: &mut PgConnection, id: NotificationId) -> StoreResult<Vec<EventRecord>> {
    let rows = sqlx::query(
        "SELECT at, type, status, provider, detail FROM notification_events WHERE notification_id = $1 ORDER BY id",
    )
    .bind(id.as_uuid())
    .fetch_all(conn)
    .await?;
    rows.iter()
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
        .collect()
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
    pub created_after: Option<OffsetDateTime>,
    pub created_before: Option<OffsetDateTime>,
    pub before_id: Option<NotificationId>,
    pub limit: i64,
}

pub async fn list(conn: &mut PgConnection, f: &ListFilter) -> StoreResult<Vec<NotificationRecord>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications
         WHERE ($1::uuid IS NULL OR tenant_id = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR channel = $3)
           AND ($4::text IS NULL OR recipient_key = $4)
           AND ($5::text IS NULL OR tags @> ARRAY[$5::text])
           AND ($6::timestamptz IS NULL OR created_at > $6)
           AND ($7::timestamptz IS NULL OR created_at < $7)
           AND ($8::uuid IS NULL OR id < $8)
         ORDER BY id DESC
         LIMIT $9"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(f.tenant.map(|t| t.as_uuid()))
        .bind(f.status.map(Status::as_str))
        .bind(f.channel.map(Channel::as_str))
        .bind(&f.to)
        .bind(&f.tag)
        .bind(f.created_after)
        .bind(f.created_before)
        .bind(f.before_id.map(|i| i.as_uuid()))
        .bind(f.limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(record).collect()
}
