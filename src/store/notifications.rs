//! Accepting and reading notifications. Accepting is one transaction: the idempotency key, the
//! notification, its first event and its job commit together (an outbox), so a 202 always has
//! a job behind it and a rolled-back request never leaves one.

use std::sync::LazyLock;

use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

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
    /// Newly stored.
    Created(NotificationId),
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

/// Store a new notification and its job in one transaction. `notify` sends the wake-up
/// (delivered by PostgreSQL only at commit, and coalesced within a transaction).
pub async fn accept(
    pool: &PgPool,
    tenant: TenantId,
    n: &NewNotification,
    max_attempts: u32,
    idempotency: Option<IdempotencyKey<'_>>,
    notify: bool,
) -> StoreResult<Accepted> {
    let mut tx = pool.begin().await?;
    let id = NotificationId::new();
    if let Some(ik) = idempotency {
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
    }
    insert_one(&mut tx, tenant, id, n, max_attempts).await?;
    let due_now = n.send_at.is_none_or(|t| t <= OffsetDateTime::now_utc());
    if notify && due_now {
        sqlx::query("SELECT pg_notify($1, '')").bind(WAKE_CHANNEL).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(Accepted::Created(id))
}

async fn insert_one(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: NotificationId,
    n: &NewNotification,
    max_attempts: u32,
) -> StoreResult<()> {
    let now = OffsetDateTime::now_utc();
    let suppression: Option<String> =
        sqlx::query_scalar("SELECT reason FROM suppressions WHERE tenant_id = $1 AND channel = $2 AND recipient = $3")
            .bind(tenant.as_uuid())
            .bind(n.channel.as_str())
            .bind(n.to.key())
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(reason) = suppression {
        return insert_suppressed(conn, tenant, id, n, now, &reason).await;
    }
    let scheduled = n.send_at.is_some_and(|t| t > now);
    let status = if scheduled { Status::Scheduled } else { Status::Queued };
    let content = serde_json::to_value(&n.content).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let event_detail = n.send_at.filter(|_| scheduled).map(|t| serde_json::json!({ "send_at": rfc3339(t) }));
    // One round trip: the notification, its first timeline event and its job.
    sqlx::query(
        "WITH n AS (
             INSERT INTO notifications (id, tenant_id, channel, recipient, recipient_key, content, status, priority,
                                        tags, metadata, callback_url, send_at, expires_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)
             RETURNING id
         ), e AS (
             INSERT INTO notification_events (notification_id, at, type, status, detail)
             SELECT id, $14, $15, $7, $16 FROM n
         )
         INSERT INTO jobs (notification_id, queue, priority, run_at, max_attempts)
         SELECT id, $3, $17, coalesce($12, $14), $18 FROM n",
    )
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
    .execute(conn)
    .await?;
    Ok(())
}

/// A notification to a suppressed recipient: stored (nothing accepted is lost) as
/// `suppressed`, with no job, and its status callback queued.
async fn insert_suppressed(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: NotificationId,
    n: &NewNotification,
    now: OffsetDateTime,
    reason: &str,
) -> StoreResult<()> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH upd AS (
                 INSERT INTO notifications (id, tenant_id, channel, recipient, recipient_key, content, status, priority,
                                            tags, metadata, callback_url, send_at, expires_at, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, 'suppressed', $7, $8, $9, $10, $11, $12, $13, $13)
                 RETURNING id, tenant_id, status, callback_url
             ), e AS (
                 INSERT INTO notification_events (notification_id, at, type, status, detail)
                 SELECT id, $13, 'suppressed', 'suppressed', jsonb_build_object('reason', $14::text) FROM upd
             ){} SELECT count(*) FROM upd",
            super::tracking::QUEUE_CALLBACK
        )
    });
    let content = serde_json::to_value(&n.content).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(id.as_uuid())
        .bind(tenant.as_uuid())
        .bind(n.channel.as_str())
        .bind(n.to.to_json())
        .bind(n.to.key())
        .bind(content)
        .bind(n.priority.as_str())
        .bind(&n.tags)
        .bind(Value::Object(n.metadata.clone()))
        .bind(&n.callback_url)
        .bind(n.send_at)
        .bind(n.expires_at)
        .bind(now)
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
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
