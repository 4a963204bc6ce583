//! Applying verified provider receipts: each distinct receipt is recorded once in the inbox,
//! then in the notification's timeline, and moves its status only where the status machine
//! allows (a late `sent` never undoes `delivered`; `delivered` after `bounced` is recorded but
//! does not resurrect). Receipts that match no notification are kept as unmatched.

use std::sync::LazyLock;

use serde_json::{Value, json};
use sqlx::{PgPool, Row};

use super::StoreResult;
use super::tracking::QUEUE_CALLBACK;
use crate::domain::{Channel, NotificationId, Status, TenantId};
use crate::receipts::{Receipt, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Seen before: acknowledged, nothing done.
    Duplicate,
    /// No notification has that id or provider message id.
    Unmatched,
    /// Recorded in the timeline; `changed` when it moved the status.
    Recorded { changed: bool },
}

/// Bind a signed token to the receipt it came with. `false`: the token was used before with
/// another receipt (a replayed signature carrying forged event data). The same receipt again
/// (a provider's redelivery) is fine: the inbox dedupes it.
pub async fn bind_token(pool: &PgPool, provider: &str, token: &str, dedupe_key: &str) -> StoreResult<bool> {
    let bound: String = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO receipt_tokens (provider, token, dedupe_key) VALUES ($1, $2, $3)
             ON CONFLICT (provider, token) DO NOTHING
             RETURNING dedupe_key
         )
         SELECT dedupe_key FROM ins
         UNION ALL
         SELECT dedupe_key FROM receipt_tokens WHERE provider = $1 AND token = $2 AND NOT EXISTS (SELECT 1 FROM ins)",
    )
    .bind(provider)
    .bind(token)
    .bind(dedupe_key)
    .fetch_one(pool)
    .await?;
    Ok(bound == dedupe_key)
}

pub async fn apply(pool: &PgPool, provider: &str, r: &Receipt) -> StoreResult<Applied> {
    let mut tx = pool.begin().await?;
    let payload = json!({"status": r.status.map(Status::as_str), "detail": r.detail});
    let inserted = sqlx::query(
        "INSERT INTO receipts (provider, dedupe_key, provider_message_id, provider_status, payload)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(provider)
    .bind(&r.dedupe_key)
    .bind(&r.provider_message_id)
    .bind(&r.provider_status)
    .bind(&payload)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(Applied::Duplicate);
    }
    // Lock the notification so concurrent receipts for it apply one after the other.
    let row = match &r.target {
        Target::Notification(id) => {
            sqlx::query(
                "SELECT id, tenant_id, channel, recipient_key, status FROM notifications WHERE id = $1 FOR UPDATE",
            )
            .bind(id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?
        }
        Target::ProviderMessageId(pmid) => {
            sqlx::query(
                "SELECT id, tenant_id, channel, recipient_key, status FROM notifications
             WHERE provider = $1 AND provider_message_id = $2 FOR UPDATE",
            )
            .bind(provider)
            .bind(pmid)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    let Some(row) = row else {
        tx.commit().await?;
        return Ok(Applied::Unmatched);
    };
    let id = NotificationId::from_uuid(row.try_get("id")?);
    let tenant = TenantId::from_uuid(row.try_get("tenant_id")?);
    let channel: String = row.try_get("channel")?;
    let recipient: String = row.try_get("recipient_key")?;
    let current: String = row.try_get("status")?;
    sqlx::query("UPDATE receipts SET notification_id = $3 WHERE provider = $1 AND dedupe_key = $2")
        .bind(provider)
        .bind(&r.dedupe_key)
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await?;

    // Receipts speak about messages a provider accepted: they move only statuses from `sent`
    // on. A receipt for a message still queued, retrying or being sent (an early event echoed
    // by our id) is recorded without a status change, so it can never end a notification whose
    // send job is still live.
    let target = r.status.filter(|st| {
        Status::parse(&current).is_some_and(|cur| {
            matches!(cur, Status::Sent | Status::Delivered | Status::Bounced) && cur.can_move_to(*st)
        })
    });
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH upd AS (
                 UPDATE notifications SET status = $2, updated_at = now()
                 WHERE id = $1 AND $2::text IS NOT NULL AND status = ANY($3)
                 RETURNING id, tenant_id, status, callback_url
             ), ev AS (
                 INSERT INTO notification_events (notification_id, type, status, provider, detail)
                 SELECT $1, 'receipt', (SELECT status FROM upd), $4, $5
             ){QUEUE_CALLBACK}
             SELECT count(*) FROM upd"
        )
    });
    let mut detail = r.detail.clone();
    if r.status.is_some() && target.is_none() {
        // Recorded for the record; the status machine keeps the later status.
        detail["status_unchanged"] = json!(true);
    }
    let sources = target.map(Status::sources_of).unwrap_or_default();
    let changed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(id.as_uuid())
        .bind(target.map(Status::as_str))
        .bind(&sources)
        .bind(provider)
        .bind(&detail)
        .fetch_one(&mut *tx)
        .await?;
    if let (Some(reason), Some(channel)) = (&r.suppress, Channel::parse(&channel)) {
        super::suppressions::add(&mut tx, tenant, channel, &recipient, reason, provider).await?;
    }
    tx.commit().await?;
    Ok(Applied::Recorded { changed: changed > 0 })
}

/// For tests and operators: unmatched receipts kept in the inbox.
pub async fn unmatched(pool: &PgPool, provider: &str) -> StoreResult<Vec<Value>> {
    let rows = sqlx::query(
        "SELECT payload FROM receipts WHERE provider = $1 AND notification_id IS NULL ORDER BY received_at",
    )
    .bind(provider)
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| Ok(r.try_get("payload")?)).collect()
}
