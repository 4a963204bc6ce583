//! The one writer of delivery status. Every status change after acceptance — claim (`sending`),
//! a provider's answer (`sent`, `retrying`, `failed`), expiry, cancel, lease rescue and
//! provider receipts (`receipt`) — is a statement here, guarded twice:
//!
//! * by the job's fencing token: a worker may finish a job only while the job carries the token
//!   of its claim (every claim bumps it), so a worker that stalled past its lease cannot
//!   overwrite the work of the worker that claimed the job again;
//! * by the status machine: the `UPDATE notifications` only applies from the statuses that
//!   `Status::sources_of` allows, so nothing moves backwards.
//!
//! Each statement is one round trip: job row, notification row and timeline event change
//! together, jobs row first (see the lock order in `store`).

pub(crate) mod claim;
pub(crate) mod complete;
pub(crate) mod receipt;
#[cfg(test)]
mod tests;

use std::sync::LazyLock;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;

use super::{StoreResult, clean};
use crate::domain::{Channel, NotificationId, Priority, Status, TenantId};

#[cfg(test)]
pub(crate) use claim::claim;
pub(crate) use claim::{Bounds, Claimed, ClaimedCallback, ClaimedJob, Lane, claim_within};
pub(crate) use complete::{Completion, Outcome, complete, recorded_send};

/// A CTE appended to statements whose `upd` CTE returns `(id, tenant_id, status, callback_url)`
/// for notifications whose status just changed: it queues a status callback (a `callback`
/// job) for each that has a callback URL, its own or its tenant's, and whose new status is
/// one of `Status::ANNOUNCED`, bound as parameter `$param` (`announced()`). Queued in the same
/// statement as the change, so a callback is never lost nor sent for a change that rolled back.
/// (The ingest write, `herald_ingest` of migration 0018, holds a copy: change both.)
pub(crate) fn queue_callback(param: usize) -> String {
    QUEUE_CALLBACK.replace("$ANNOUNCED", &format!("${param}"))
}

/// The value of `queue_callback`'s parameter.
pub(crate) fn announced() -> Vec<&'static str> {
    Status::names(&Status::ANNOUNCED)
}

const QUEUE_CALLBACK: &str = ", cb AS (
             INSERT INTO jobs (notification_id, tenant_id, kind, queue, priority, run_at, max_attempts, payload)
             SELECT u.id, u.tenant_id, 'callback', 'callback', 1, now(), 0,
                    jsonb_build_object('type', 'notification.' || u.status, 'status', u.status,
                                       'at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))
             FROM upd u JOIN tenants t ON t.id = u.tenant_id
             WHERE coalesce(u.callback_url, t.callback_url) IS NOT NULL
               AND u.status = ANY($ANNOUNCED::text[])
         )";

/// A fenced handle on a claimed job: what every completion needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lease {
    pub(crate) job_id: i64,
    pub(crate) token: i64,
    pub(crate) notification_id: NotificationId,
    /// When the lease ends, by this process's clock (taken before the claim, so never late):
    /// past it the job may be rescued and claimed again, and an outcome is no longer ours to
    /// record.
    pub(crate) until: std::time::Instant,
}

/// The result of a fenced completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// The lease was still ours and the status changed.
    Yes,
    /// The lease was lost (the job was rescued and maybe re-claimed): nothing changed but the
    /// attempt was recorded in the timeline, marked `fenced`.
    Fenced,
}

fn applied(n: i64) -> Applied {
    if n > 0 { Applied::Yes } else { Applied::Fenced }
}

/// Give back a job that was claimed but not sent (shutdown, an open circuit on every
/// provider, pacing): it is due again after `delay`, and the claim does not count as an attempt.
#[tracing::instrument(name = "store.tracking.release", skip_all)]
pub(crate) async fn release(
    conn: &mut PgConnection,
    lease: Lease,
    delay: Duration,
    reason: Option<&str>,
) -> StoreResult<Applied> {
    give_back(conn, lease, Due::After(delay), reason, None).await
}

/// Hold back a claimed job until `until` because a send limit is full: `release` with a
/// `deferred` event that says which limit and until when.
#[tracing::instrument(name = "store.tracking.defer", skip_all)]
pub(crate) async fn defer(
    conn: &mut PgConnection,
    lease: Lease,
    until: OffsetDateTime,
    detail: &Value,
) -> StoreResult<Applied> {
    give_back(conn, lease, Due::At(until), None, Some(detail)).await
}

/// Mark a claimed job's send as counted in its send limits' windows (in the transaction that
/// counted it: `limits::take_send_slot`), so that it is never counted again.
#[tracing::instrument(name = "store.tracking.slot_taken", skip_all)]
pub(crate) async fn slot_taken(conn: &mut PgConnection, lease: Lease) -> StoreResult<Applied> {
    let n = sqlx::query("UPDATE jobs SET slot_taken = true WHERE id = $1 AND lease_token = $2 AND state = 'running'")
        .bind(lease.job_id)
        .bind(lease.token)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(applied(i64::try_from(n).unwrap_or(i64::MAX)))
}

/// When a job given back is due again.
enum Due {
    After(Duration),
    At(OffsetDateTime),
}

/// The job back to `available` (its claim not counted as an attempt), the notification back
/// to `queued` with `next_attempt_at` when it is due later, and a `deferred` event with
/// `deferred`'s detail when given.
async fn give_back(
    conn: &mut PgConnection,
    lease: Lease,
    due: Due,
    reason: Option<&str>,
    deferred: Option<&Value>,
) -> StoreResult<Applied> {
    let (at, delay) = match due {
        Due::After(d) => (None, d.as_secs_f64()),
        Due::At(t) => (Some(t), 0.0),
    };
    let n: i64 = sqlx::query_scalar(
        "WITH j AS (
             UPDATE jobs SET state = 'available', attempt = attempt - 1, leased_until = NULL, locked_by = NULL,
                             run_at = coalesce($6, now() + make_interval(secs => $3))
             WHERE id = $1 AND lease_token = $2 AND state = 'running'
             RETURNING notification_id, run_at
         ), upd AS (
             UPDATE notifications n
             SET status = 'queued', updated_at = now(), last_error = coalesce($5, n.last_error),
                 next_attempt_at = CASE WHEN $6 IS NOT NULL OR $3 > 0 THEN j.run_at END
             FROM j WHERE n.id = j.notification_id AND n.status = ANY($4)
             RETURNING n.id
         ), ev AS (
             INSERT INTO notification_events (notification_id, type, status, detail)
             SELECT id, 'deferred', 'queued', $7 FROM upd WHERE $7::jsonb IS NOT NULL
         )
         SELECT count(*) FROM upd",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .bind(delay)
    .bind(Status::sources_of(Status::Queued))
    .bind(reason.map(|r| clean::text(r).into_owned()))
    .bind(at)
    .bind(deferred)
    .fetch_one(conn)
    .await?;
    Ok(applied(n))
}

/// Bring `tenant`'s deferred sends on `channels` due now (after its quotas changed), so the
/// new quota decides about them at once instead of the old deferral's wait: `queued`
/// notifications whose job waits for a later time without its send counted yet. Each is
/// looked at again by the next claim and sent, or deferred anew with a `deferred` event.
/// Returns how many were woken.
pub(crate) async fn wake_deferred(conn: &mut PgConnection, tenant: TenantId, channels: &[Channel]) -> StoreResult<u64> {
    let queues: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
    let lanes: Vec<i16> = Priority::ALL.iter().map(|p| p.lane()).collect();
    let n: i64 = sqlx::query_scalar(
        "WITH j AS (
             UPDATE jobs j SET run_at = now()
             FROM notifications n
             WHERE j.state = 'available' AND j.queue = ANY($2) AND j.priority = ANY($3) AND j.tenant_id = $1
               AND j.kind = 'send' AND NOT j.slot_taken AND j.run_at > now()
               AND n.id = j.notification_id AND n.status = 'queued'
             RETURNING j.notification_id
         ), upd AS (
             UPDATE notifications SET next_attempt_at = NULL, updated_at = now()
             WHERE id = ANY(ARRAY(SELECT notification_id FROM j)) AND status = 'queued'
             RETURNING id
         )
         SELECT count(*) FROM upd",
    )
    .bind(tenant.as_uuid())
    .bind(queues)
    .bind(lanes)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Take back jobs whose lease expired (their worker died or stalled). Runs under a
/// transaction-scoped advisory lock so that many replicas do not rescue at once; returns how
/// many jobs were rescued. The rescued row gets a new claim (and token) before anyone sends.
#[tracing::instrument(name = "store.tracking.rescue", skip_all)]
pub(crate) async fn rescue_expired(pool: &PgPool, limit: i64) -> StoreResult<u64> {
    let mut tx = crate::store::begin(pool).await?;
    let got: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('herald:rescue'))").fetch_one(&mut *tx).await?;
    if !got {
        return Ok(0);
    }
    // The UPDATE re-checks state and lease on the locked row version, so a job completed or
    // re-claimed since the scan is left alone (River #1302). A job whose notification is gone
    // (deleted by hand, or by retention racing a late receipt) is deleted, not rescued: there
    // is nothing to send nor a timeline to explain it in.
    let n: i64 = sqlx::query_scalar(
        "WITH stale AS MATERIALIZED (
             SELECT j.id, EXISTS (SELECT 1 FROM notifications n WHERE n.id = j.notification_id) AS live
             FROM (SELECT id, notification_id FROM jobs WHERE state = 'running' AND leased_until < now()
                   ORDER BY id LIMIT $1
                   FOR NO KEY UPDATE SKIP LOCKED) j
         ), gone AS (
             DELETE FROM jobs j USING stale
             WHERE j.id = stale.id AND NOT stale.live AND j.state = 'running' AND j.leased_until < now()
         ), r AS (
             UPDATE jobs j SET state = 'available', run_at = now(), leased_until = NULL, locked_by = NULL
             FROM stale WHERE j.id = stale.id AND stale.live AND j.state = 'running' AND j.leased_until < now()
             RETURNING j.notification_id, j.attempt, j.kind
         ), upd AS (
             UPDATE notifications n SET status = 'queued', updated_at = now()
             FROM r WHERE r.kind = 'send' AND n.id = r.notification_id AND n.status = ANY($2)
             RETURNING n.id
         ), ev AS (
             INSERT INTO notification_events (notification_id, type, status, detail)
             SELECT r.notification_id, 'rescued', CASE WHEN r.kind = 'send' THEN 'queued' END,
                    jsonb_build_object('attempt', r.attempt, 'job', r.kind,
                                       'reason', 'lease expired: the worker stopped mid-attempt, outcome unknown')
             FROM r
         )
         SELECT count(*) FROM r",
    )
    .bind(limit)
    .bind(Status::sources_of(Status::Queued))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The result of a cancel request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CancelOutcome {
    Cancelled,
    /// Not cancellable from its current status (sending, or finished).
    NotCancellable(Status),
    NotFound,
}

/// Cancel a notification that has not been handed to a provider yet.
#[tracing::instrument(name = "store.tracking.cancel", skip_all)]
pub(crate) async fn cancel(
    pool: &PgPool,
    id: NotificationId,
    tenant: Option<TenantId>,
    by: &str,
) -> StoreResult<CancelOutcome> {
    let mut tx = crate::store::begin(pool).await?;
    // Jobs row first (lock order). A job being sent is `running` and is not deleted; the
    // re-check of `state` after a concurrent claim makes this race-free.
    let deleted = sqlx::query(
        "DELETE FROM jobs j USING notifications n
         WHERE j.notification_id = $1 AND j.kind = 'send' AND j.state = 'available'
           AND n.id = j.notification_id AND ($2::uuid IS NULL OR n.tenant_id = $2)",
    )
    .bind(id.as_uuid())
    .bind(tenant.map(|t| t.as_uuid()))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH {}{} {}",
            "upd AS (
                 UPDATE notifications SET status = 'cancelled', next_attempt_at = NULL, updated_at = now()
                 WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) AND status = ANY($3) AND $4
                 RETURNING id, tenant_id, status, callback_url
             ), ev AS (
                 INSERT INTO notification_events (notification_id, type, status, detail)
                 SELECT id, 'cancelled', 'cancelled', jsonb_build_object('by', $5::text) FROM upd
             )",
            queue_callback(6),
            "SELECT (SELECT count(*) FROM upd) AS cancelled,
                    (SELECT status FROM notifications WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)) AS status",
        )
    });
    let row = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(id.as_uuid())
        .bind(tenant.map(|t| t.as_uuid()))
        .bind(Status::sources_of(Status::Cancelled))
        .bind(deleted == 1)
        .bind(by)
        .bind(announced())
        .fetch_one(&mut *tx)
        .await?;
    let cancelled: i64 = row.try_get("cancelled")?;
    let status: Option<String> = row.try_get("status")?;
    if cancelled == 1 {
        tx.commit().await?;
        return Ok(CancelOutcome::Cancelled);
    }
    // Nothing is changed on refusal: if a job row was deleted, the rollback puts it back.
    tx.rollback().await?;
    Ok(match status.as_deref().and_then(Status::parse) {
        Some(st) => CancelOutcome::NotCancellable(st),
        None => CancelOutcome::NotFound,
    })
}

/// The result of an operator's retry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RetryOutcome {
    Retried,
    /// Not retryable from its current status (see `Status::RETRYABLE`).
    NotRetryable(Status),
    NotFound,
}

/// An operator's retry: a `failed`, `expired` or `bounced` notification goes back to `queued`
/// with a fresh attempt budget (`max_attempts`), a new send job due now, and a `retried` event
/// saying by whom and from which status. An expired one loses its passed `expires_at` (the
/// operator decided it is still worth sending). Not a move of the status machine: no
/// concurrent writer (a late receipt, a worker) can make it, only this explicit request.
#[tracing::instrument(name = "store.tracking.retry", skip_all)]
pub(crate) async fn retry(
    pool: &PgPool,
    id: NotificationId,
    tenant: Option<TenantId>,
    by: &str,
    max_attempts: i32,
) -> StoreResult<RetryOutcome> {
    // The plain reads below see the statement's snapshot: the status before the update.
    let mut s = crate::store::session(pool).await?;
    let row = sqlx::query(
        "WITH upd AS (
             UPDATE notifications
             SET status = 'queued', attempts = 0, next_attempt_at = NULL, last_error = NULL,
                 expires_at = CASE WHEN status = 'expired' THEN NULL ELSE expires_at END, updated_at = now()
             WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) AND status = ANY($3)
             RETURNING id, tenant_id, channel, priority
         ), j AS (
             INSERT INTO jobs (notification_id, tenant_id, queue, priority, run_at, max_attempts)
             SELECT u.id, u.tenant_id, u.channel, p.lane, now(), $4
             FROM upd u JOIN unnest($6::text[], $7::int2[]) AS p(name, lane) ON p.name = u.priority
             ON CONFLICT (notification_id) WHERE kind = 'send' DO NOTHING
         ), ev AS (
             INSERT INTO notification_events (notification_id, type, status, detail)
             SELECT u.id, 'retried', 'queued',
                    jsonb_build_object('by', $5::text, 'from', (SELECT status FROM notifications WHERE id = $1))
             FROM upd u
         )
         SELECT (SELECT count(*) FROM upd) AS retried,
                (SELECT status FROM notifications WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)) AS status",
    )
    .bind(id.as_uuid())
    .bind(tenant.map(|t| t.as_uuid()))
    .bind(Status::names(&Status::RETRYABLE))
    .bind(max_attempts)
    .bind(by)
    .bind(Priority::ALL.map(Priority::as_str))
    .bind(Priority::ALL.map(Priority::lane))
    .fetch_one(&mut *s)
    .await?;
    s.finish().await?;
    let retried: i64 = row.try_get("retried")?;
    let status: Option<String> = row.try_get("status")?;
    Ok(match (retried, status.as_deref().and_then(Status::parse)) {
        (1, _) => RetryOutcome::Retried,
        (_, Some(st)) => RetryOutcome::NotRetryable(st),
        (_, None) => RetryOutcome::NotFound,
    })
}

pub(crate) fn error_detail(class: &str, message: &str, attempt: i32) -> Value {
    json!({ "attempt": attempt, "error_class": class, "error": message })
}

/// Record a callback attempt in the timeline; `retry_in` puts the job back (a failed
/// delivery with attempts left), `None` ends it (delivered, or given up).
pub(crate) async fn callback_attempted(
    conn: &mut PgConnection,
    lease: Lease,
    retry_in: Option<Duration>,
    detail: Value,
) -> StoreResult<Applied> {
    let n: i64 = sqlx::query_scalar(
        "WITH j AS (
             UPDATE jobs SET state = 'available', run_at = now() + make_interval(secs => $3),
                             leased_until = NULL, locked_by = NULL
             WHERE $4 AND id = $1 AND lease_token = $2
             RETURNING id
         ), d AS (
             DELETE FROM jobs WHERE NOT $4 AND id = $1 AND lease_token = $2
             RETURNING id
         ), ev AS (
             INSERT INTO notification_events (notification_id, type, detail)
             SELECT $5, 'callback', $6 WHERE EXISTS (SELECT 1 FROM j) OR EXISTS (SELECT 1 FROM d)
         )
         SELECT (SELECT count(*) FROM j) + (SELECT count(*) FROM d)",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .bind(retry_in.unwrap_or_default().as_secs_f64())
    .bind(retry_in.is_some())
    .bind(lease.notification_id.as_uuid())
    // A receiver's error may carry anything.
    .bind(clean::json(&detail).as_ref())
    .fetch_one(conn)
    .await?;
    Ok(applied(n))
}

/// Where a notification's callbacks go and how they are signed: its own URL or its tenant's,
/// and the tenant's secret (the caller falls back to `callbacks.signing_secret`).
pub(crate) async fn callback_target(
    conn: &mut PgConnection,
    id: NotificationId,
) -> StoreResult<Option<(String, Option<String>)>> {
    let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT coalesce(n.callback_url, t.callback_url), t.signing_secret
         FROM notifications n JOIN tenants t ON t.id = n.tenant_id WHERE n.id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(|(url, secret)| url.map(|u| (u, secret))))
}
