//! Pruning: finished notifications (with their events and receipts) after
//! `retention.notifications_days`, idempotency keys after `retention.idempotency_hours`.
//! Deletes run in small batches under a transaction-scoped advisory lock, so any number of
//! replicas can call this and only one works at a time, without long locks on hot rows.

use sqlx::PgPool;

use super::StoreResult;

/// Rows removed by one pruning pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub notifications: u64,
    pub idempotency_keys: u64,
}

const BATCH: i64 = 1000;

pub async fn prune(pool: &PgPool, notifications_days: u32, idempotency_hours: u32) -> StoreResult<Pruned> {
    let mut tx = pool.begin().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('herald:retention'))")
        .fetch_one(&mut *tx)
        .await?;
    if !got {
        return Ok(Pruned::default());
    }
    // Only finished notifications: anything with live work (a send job) stays, whatever its age.
    // (A status callback still being retried past retention finds its notification gone and
    // gives up; `jobs_send_notification_uq` answers this check.)
    let notifications: i64 = sqlx::query_scalar(
        "WITH old AS (
             SELECT n.id FROM notifications n
             WHERE n.updated_at < now() - make_interval(days => $1)
               AND n.status IN ('sent', 'delivered', 'failed', 'bounced', 'complained', 'cancelled', 'expired', 'suppressed')
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.notification_id = n.id AND j.kind = 'send')
             ORDER BY n.id LIMIT $2
         ), r AS (
             DELETE FROM receipts WHERE notification_id IN (SELECT id FROM old)
         ), e AS (
             -- No foreign key cascades here (migration 0004): the timeline goes with its notification.
             DELETE FROM notification_events WHERE notification_id IN (SELECT id FROM old)
         ), d AS (
             DELETE FROM notifications WHERE id IN (SELECT id FROM old) RETURNING 1
         )
         SELECT count(*) FROM d",
    )
    .bind(i32::try_from(notifications_days).unwrap_or(i32::MAX))
    .bind(BATCH)
    .fetch_one(&mut *tx)
    .await?;
    let keys: i64 = sqlx::query_scalar(
        "WITH old AS (
             SELECT tenant_id, key FROM idempotency_keys
             WHERE created_at < now() - make_interval(hours => $1) LIMIT $2
         ), d AS (
             DELETE FROM idempotency_keys k USING old WHERE k.tenant_id = old.tenant_id AND k.key = old.key RETURNING 1
         )
         SELECT count(*) FROM d",
    )
    .bind(i32::try_from(idempotency_hours).unwrap_or(i32::MAX))
    .bind(BATCH)
    .fetch_one(&mut *tx)
    .await?;
    // Signed receipt tokens are kept a week: far past any replay window (`receipts.max_age_secs`).
    sqlx::query(
        "DELETE FROM receipt_tokens WHERE (provider, token) IN (
             SELECT provider, token FROM receipt_tokens WHERE seen_at < now() - interval '7 days' LIMIT $1)",
    )
    .bind(BATCH)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Pruned {
        notifications: u64::try_from(notifications).unwrap_or(0),
        idempotency_keys: u64::try_from(keys).unwrap_or(0),
    })
}
