//! Pruning: finished notifications (with their events and receipts) after
//! `retention.notifications_days`, unmatched receipts after the same time, idempotency keys
//! after `retention.idempotency_hours`, signed receipt tokens after a week, and dashboard
//! sign-in links and the session keys they made a day after they expire.
//!
//! Every statement walks an index range, so a pass with nothing to prune reads a few pages
//! whatever the size of the tables: notifications by id (UUIDv7 ids sort by creation time, and
//! a notification last updated before the cutoff was created before it), their events and
//! receipts by notification, the rest by their time columns. Deletes run in batches of 1,000,
//! each in its own transaction under a transaction-scoped advisory lock (any number of
//! replicas can call this and one works at a time, without long locks on hot rows), and a pass
//! goes on while batches come back full, up to `MAX_BATCHES` per kind.

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use super::StoreResult;
use crate::domain::{NotificationId, Status};

/// Rows removed by one pruning pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub notifications: u64,
    pub idempotency_keys: u64,
    pub unmatched_receipts: u64,
}

const BATCH: i64 = 1000;

/// At most this many batches of each kind per pass (a pass is bounded; the next one goes on).
const MAX_BATCHES: usize = 20;

/// Finished notifications created and last updated before the cutoff, oldest first from a
/// cursor, with their receipts and timeline. `$1` cursor id, `$2` cutoff id
/// (`NotificationId::floor_at`), `$3` cutoff time, `$4` batch size, `$5` the finished statuses
/// (`finished()`). Public for the scale test, which EXPLAINs it.
///
/// * Only finished notifications: anything with live work (a send job) stays, whatever its
///   age. A status callback still being retried past retention finds its notification gone
///   and gives up.
/// * `FOR UPDATE SKIP LOCKED`: a notification that a receipt is changing right now (and
///   queueing a callback for) is skipped, not deleted under it; a receipt that comes after the
///   lock finds the notification gone and is kept as unmatched.
/// * No foreign key cascades (migration 0004): the timeline goes with its notification.
pub const PRUNE_NOTIFICATIONS: &str = "WITH old AS (
         SELECT n.id FROM notifications n
         WHERE n.id > $1 AND n.id < $2 AND n.updated_at < $3
           AND n.status = ANY($5::text[])
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.notification_id = n.id AND j.kind = 'send')
         ORDER BY n.id LIMIT $4
         FOR UPDATE OF n SKIP LOCKED
     ), r AS (
         DELETE FROM receipts WHERE notification_id = ANY(ARRAY(SELECT id FROM old))
     ), e AS (
         DELETE FROM notification_events WHERE notification_id = ANY(ARRAY(SELECT id FROM old))
     ), d AS (
         DELETE FROM notifications WHERE id = ANY(ARRAY(SELECT id FROM old)) RETURNING id
     )
     SELECT count(*), (SELECT id FROM d ORDER BY id DESC LIMIT 1) FROM d";

/// Receipts that matched no notification, received before `$1`.
pub const PRUNE_UNMATCHED_RECEIPTS: &str = "WITH old AS (
         SELECT provider, dedupe_key FROM receipts
         WHERE notification_id IS NULL AND received_at < $1 ORDER BY received_at LIMIT $2
     ), d AS (
         DELETE FROM receipts r USING old WHERE r.provider = old.provider AND r.dedupe_key = old.dedupe_key
         RETURNING 1
     )
     SELECT count(*) FROM d";

const PRUNE_IDEMPOTENCY_KEYS: &str = "WITH old AS (
         SELECT tenant_id, key FROM idempotency_keys WHERE created_at < $1 ORDER BY created_at LIMIT $2
     ), d AS (
         DELETE FROM idempotency_keys k USING old WHERE k.tenant_id = old.tenant_id AND k.key = old.key RETURNING 1
     )
     SELECT count(*) FROM d";

/// Signed receipt tokens are kept a week: far past any replay window (`receipts.max_age_secs`).
const PRUNE_RECEIPT_TOKENS: &str = "WITH old AS (
         SELECT provider, token FROM receipt_tokens WHERE seen_at < $1 ORDER BY seen_at LIMIT $2
     ), d AS (
         DELETE FROM receipt_tokens t USING old WHERE t.provider = old.provider AND t.token = old.token RETURNING 1
     )
     SELECT count(*) FROM d";

/// Send-limit windows that have ended count nothing any more.
const PRUNE_SEND_WINDOWS: &str = "WITH old AS (
         SELECT scope, tenant_id, channel, subject, window_start FROM send_windows WHERE ends_at < least($1, now())
         ORDER BY ends_at LIMIT $2
     ), d AS (
         DELETE FROM send_windows s USING old
         WHERE (s.scope, s.tenant_id, s.channel, s.subject, s.window_start)
             = (old.scope, old.tenant_id, old.channel, old.subject, old.window_start)
         RETURNING 1
     )
     SELECT count(*) FROM d";

/// Dashboard sign-in links a day past their expiry (used or not: either way worth nothing).
const PRUNE_OPS_LINKS: &str = "WITH old AS (
         SELECT id FROM ops_links WHERE expires_at < $1 ORDER BY expires_at LIMIT $2
     ), d AS (
         DELETE FROM ops_links l USING old WHERE l.id = old.id RETURNING 1
     )
     SELECT count(*) FROM d";

/// The dashboard session keys those links made, a day past their expiry (refused since).
const PRUNE_SESSION_KEYS: &str = "WITH old AS (
         SELECT id FROM api_keys WHERE expires_at < $1 ORDER BY expires_at LIMIT $2
     ), d AS (
         DELETE FROM api_keys k USING old WHERE k.id = old.id RETURNING 1
     )
     SELECT count(*) FROM d";

/// One batch of one kind.
enum Step {
    Notifications { cursor: uuid::Uuid },
    UnmatchedReceipts,
    IdempotencyKeys,
    ReceiptTokens,
    SendWindows,
    OpsLinks,
    SessionKeys,
}

pub async fn prune(pool: &PgPool, notifications_days: u32, idempotency_hours: u32) -> StoreResult<Pruned> {
    let now = OffsetDateTime::now_utc();
    let cutoff = now - time::Duration::days(i64::from(notifications_days));
    let keys_cutoff = now - time::Duration::hours(i64::from(idempotency_hours));
    let tokens_cutoff = now - time::Duration::days(7);
    let expired_cutoff = now - time::Duration::days(1);
    let mut pruned = Pruned::default();
    let steps = [
        Step::Notifications { cursor: uuid::Uuid::nil() },
        Step::UnmatchedReceipts,
        Step::IdempotencyKeys,
        Step::ReceiptTokens,
        Step::SendWindows,
        Step::OpsLinks,
        Step::SessionKeys,
    ];
    for mut step in steps {
        for _ in 0..MAX_BATCHES {
            let mut tx = super::begin(pool).await?;
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('herald:retention'))")
                .fetch_one(&mut *tx)
                .await?;
            if !got {
                return Ok(pruned); // another replica is pruning
            }
            let n = match &mut step {
                Step::Notifications { cursor } => {
                    let (n, last) = notifications(&mut tx, *cursor, cutoff).await?;
                    *cursor = last.unwrap_or(*cursor);
                    pruned.notifications += n;
                    n
                }
                Step::UnmatchedReceipts => {
                    let n = count(&mut tx, PRUNE_UNMATCHED_RECEIPTS, cutoff).await?;
                    pruned.unmatched_receipts += n;
                    n
                }
                Step::IdempotencyKeys => {
                    let n = count(&mut tx, PRUNE_IDEMPOTENCY_KEYS, keys_cutoff).await?;
                    pruned.idempotency_keys += n;
                    n
                }
                Step::ReceiptTokens => count(&mut tx, PRUNE_RECEIPT_TOKENS, tokens_cutoff).await?,
                Step::SendWindows => count(&mut tx, PRUNE_SEND_WINDOWS, now).await?,
                Step::OpsLinks => count(&mut tx, PRUNE_OPS_LINKS, expired_cutoff).await?,
                Step::SessionKeys => count(&mut tx, PRUNE_SESSION_KEYS, expired_cutoff).await?,
            };
            tx.commit().await?;
            if n < BATCH as u64 {
                break;
            }
        }
    }
    Ok(pruned)
}

async fn notifications(
    conn: &mut PgConnection,
    cursor: uuid::Uuid,
    cutoff: OffsetDateTime,
) -> StoreResult<(u64, Option<uuid::Uuid>)> {
    let (n, last): (i64, Option<uuid::Uuid>) = sqlx::query_as(PRUNE_NOTIFICATIONS)
        .bind(cursor)
        .bind(NotificationId::floor_at(cutoff))
        .bind(cutoff)
        .bind(BATCH)
        .bind(finished())
        .fetch_one(conn)
        .await?;
    Ok((u64::try_from(n).unwrap_or(0), last))
}

/// `PRUNE_NOTIFICATIONS`'s `$5`: `Status::FINISHED`.
pub fn finished() -> Vec<&'static str> {
    Status::names(&Status::FINISHED)
}

async fn count(conn: &mut PgConnection, sql: &'static str, before: OffsetDateTime) -> StoreResult<u64> {
    let n: i64 = sqlx::query_scalar(sql).bind(before).bind(BATCH).fetch_one(conn).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}
