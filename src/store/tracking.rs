//! The one writer of delivery status. Every status change after acceptance — claim (`sending`),
//! a provider's answer (`sent`, `retrying`, `failed`), expiry, cancel and lease rescue — is a
//! statement here, guarded twice:
//!
//! * by the job's fencing token: a worker may finish a job only while it holds the lease it was
//!   given (`lease_token` matches and the row is still `running`), so a worker that stalled past
//!   its lease cannot overwrite the work of the worker that took the job back;
//! * by the status machine: the `UPDATE notifications` only applies from the statuses that
//!   `Status::sources_of` allows, so nothing moves backwards.
//!
//! Each statement is one round trip: job row, notification row and timeline event change
//! together, jobs row first (see the lock order in `store`).

use std::sync::LazyLock;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;

use super::StoreResult;
use crate::domain::{Channel, NotificationId, Priority, Status, TenantId};

/// Statuses that send a status callback to the caller.
pub const CALLBACK_STATUSES: [Status; 8] = [
    Status::Sent,
    Status::Delivered,
    Status::Bounced,
    Status::Complained,
    Status::Failed,
    Status::Expired,
    Status::Cancelled,
    Status::Suppressed,
];

/// A CTE appended to statements whose `upd` CTE returns `(id, tenant_id, status, callback_url)`
/// for notifications whose status just changed: it queues a status callback (a `callback`
/// job) for each that has a callback URL, its own or its tenant's. Queued in the same
/// statement as the change, so a callback is never lost nor sent for a change that rolled back.
pub(crate) const QUEUE_CALLBACK: &str = ", cb AS (
             INSERT INTO jobs (notification_id, kind, queue, priority, run_at, max_attempts, payload)
             SELECT u.id, 'callback', 'callback', 1, now(), 0,
                    jsonb_build_object('type', 'notification.' || u.status, 'status', u.status,
                                       'at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))
             FROM upd u JOIN tenants t ON t.id = u.tenant_id
             WHERE coalesce(u.callback_url, t.callback_url) IS NOT NULL
               AND u.status IN ('sent', 'delivered', 'bounced', 'complained', 'failed', 'expired', 'cancelled', 'suppressed')
         )";

/// `WITH {body}{QUEUE_CALLBACK} {tail}`, built once per statement.
fn with_callback(body: &str, tail: &str) -> String {
    format!("WITH {body}{QUEUE_CALLBACK} {tail}")
}

/// A job a worker holds a lease on, with what it needs to send.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    pub job_id: i64,
    pub lease_token: i64,
    pub attempt: i32,
    pub max_attempts: i32,
    /// Index into the channel's provider list to start from (failover).
    pub route_index: i32,
    pub notification_id: NotificationId,
    pub tenant_id: TenantId,
    pub channel: Channel,
    pub to: Value,
    pub content: Value,
    pub expires_at: Option<OffsetDateTime>,
    pub priority: Priority,
    /// The recipient is on the tenant's suppression list: do not send.
    pub suppressed: bool,
}

/// A fenced handle on a claimed job: what every completion needs.
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    pub job_id: i64,
    pub token: i64,
    pub notification_id: NotificationId,
}

impl ClaimedJob {
    pub fn lease(&self) -> Lease {
        Lease { job_id: self.job_id, token: self.lease_token, notification_id: self.notification_id }
    }
}

/// Lanes in claim order: every channel at high priority, then normal, then low.
fn lanes() -> (Vec<&'static str>, Vec<i16>) {
    let mut queues = Vec::new();
    let mut priorities = Vec::new();
    for p in Priority::ALL {
        for c in Channel::ALL {
            queues.push(c.as_str());
            priorities.push(p.lane());
        }
    }
    (queues, priorities)
}

/// Claim up to `limit` due jobs, lane by lane, under a lease of `lease`. The row locks last only
/// for this statement: the provider call happens after commit, protected by the lease.
pub async fn claim(conn: &mut PgConnection, limit: i64, lease: Duration, worker: &str) -> StoreResult<Vec<ClaimedJob>> {
    let (queues, priorities) = lanes();
    // `picked` is MATERIALIZED so the LIMIT bounds the locking (PostgreSQL BUG #15715: an
    // `IN (SELECT … LIMIT … FOR UPDATE)` can be re-evaluated and over-claim). The state literal
    // matches the partial index `jobs_claim_idx`; each lane's `run_at <= now()` is an index
    // range, so future rows are never walked.
    let rows = sqlx::query(
        "WITH lanes AS (
             SELECT q, p FROM unnest($1::text[], $2::smallint[]) AS l(q, p)
         ), picked AS MATERIALIZED (
             SELECT j.id FROM lanes CROSS JOIN LATERAL (
                 SELECT id FROM jobs
                 WHERE state = 'available' AND queue = lanes.q AND priority = lanes.p AND run_at <= now()
                 ORDER BY run_at, id
                 LIMIT $3
                 FOR NO KEY UPDATE SKIP LOCKED
             ) j
             LIMIT $3
         ), claimed AS (
             UPDATE jobs j
             SET state = 'running', attempt = j.attempt + 1, lease_token = j.lease_token + 1,
                 leased_until = now() + make_interval(secs => $4), locked_by = $5
             FROM picked WHERE j.id = picked.id
             RETURNING j.id, j.notification_id, j.attempt, j.max_attempts, j.lease_token, j.route_index
         ), marked AS (
             UPDATE notifications n
             SET status = 'sending', next_attempt_at = NULL, updated_at = now()
             FROM claimed c WHERE n.id = c.notification_id
             RETURNING n.id, n.tenant_id, n.channel, n.recipient, n.recipient_key, n.content, n.expires_at, n.priority
         )
         SELECT c.id AS job_id, c.lease_token, c.attempt, c.max_attempts, c.route_index,
                m.id, m.tenant_id, m.channel, m.recipient, m.content, m.expires_at, m.priority,
                EXISTS (SELECT 1 FROM suppressions s
                        WHERE s.tenant_id = m.tenant_id AND s.channel = m.channel AND s.recipient = m.recipient_key)
                    AS suppressed
         FROM claimed c JOIN marked m ON m.id = c.notification_id",
    )
    .bind(&queues)
    .bind(&priorities)
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(worker)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let channel: String = r.try_get("channel")?;
            let priority: String = r.try_get("priority")?;
            Ok(ClaimedJob {
                job_id: r.try_get("job_id")?,
                lease_token: r.try_get("lease_token")?,
                attempt: r.try_get("attempt")?,
                max_attempts: r.try_get("max_attempts")?,
                route_index: r.try_get("route_index")?,
                notification_id: NotificationId::from_uuid(r.try_get("id")?),
                tenant_id: TenantId::from_uuid(r.try_get("tenant_id")?),
                channel: Channel::parse(&channel).ok_or_else(|| super::StoreError::Corrupt(channel.clone()))?,
                to: r.try_get("recipient")?,
                content: r.try_get("content")?,
                expires_at: r.try_get("expires_at")?,
                priority: Priority::parse(&priority).ok_or_else(|| super::StoreError::Corrupt(priority.clone()))?,
                suppressed: r.try_get("suppressed")?,
            })
        })
        .collect()
}

/// The result of a fenced completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The lease was still ours and the status changed.
    Yes,
    /// The lease was lost (the job was rescued and maybe re-claimed): nothing changed but the
    /// attempt was recorded in the timeline, marked `fenced`.
    Fenced,
}

fn applied(n: i64) -> Applied {
    if n > 0 { Applied::Yes } else { Applied::Fenced }
}

/// The provider accepted the message.
pub async fn mark_sent(
    conn: &mut PgConnection,
    lease: Lease,
    provider: &str,
    provider_message_id: Option<&str>,
    detail: Value,
) -> StoreResult<Applied> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        with_callback(
            "done AS (
                 DELETE FROM jobs WHERE id = $1 AND lease_token = $2 AND state = 'running'
                 RETURNING notification_id, attempt
             ), upd AS (
                 UPDATE notifications n
                 SET status = 'sent', provider = $3, provider_message_id = $4, attempts = d.attempt,
                     last_error = NULL, next_attempt_at = NULL, updated_at = now()
                 FROM done d WHERE n.id = d.notification_id AND n.status = ANY($5)
                 RETURNING n.id, n.tenant_id, n.status, n.callback_url
             ), ev AS (
                 INSERT INTO notification_events (notification_id, type, status, provider, detail)
                 SELECT $6, 'attempt', (SELECT 'sent' FROM upd),
                        $3, CASE WHEN EXISTS (SELECT 1 FROM done) THEN $7 ELSE $7 || '{\"fenced\": true}' END
             )",
            // The lease decides: a job we still held is ours to finish, whatever the status did.
            "SELECT count(*) FROM done",
        )
    });
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(lease.job_id)
        .bind(lease.token)
        .bind(provider)
        .bind(provider_message_id)
        .bind(Status::sources_of(Status::Sent))
        .bind(lease.notification_id.as_uuid())
        .bind(detail)
        .fetch_one(conn)
        .await?;
    Ok(applied(n))
}

/// A transient failure: the job goes back to the queue, due after `delay`, and its next
/// attempt starts from provider `next_route` of the channel's list (failover).
pub async fn mark_retrying(
    conn: &mut PgConnection,
    lease: Lease,
    provider: Option<&str>,
    delay: Duration,
    next_route: i32,
    error: &str,
    detail: Value,
) -> StoreResult<Applied> {
    let n: i64 = sqlx::query_scalar(
        "WITH j AS (
             UPDATE jobs SET state = 'available', run_at = now() + make_interval(secs => $3),
                             leased_until = NULL, locked_by = NULL, route_index = $9
             WHERE id = $1 AND lease_token = $2 AND state = 'running'
             RETURNING notification_id, attempt, run_at
         ), upd AS (
             UPDATE notifications n
             SET status = 'retrying', attempts = j.attempt, next_attempt_at = j.run_at, last_error = $4,
                 provider = coalesce($5, n.provider), updated_at = now()
             FROM j WHERE n.id = j.notification_id AND n.status = ANY($6)
             RETURNING n.id, n.next_attempt_at
         ), ev AS (
             INSERT INTO notification_events (notification_id, type, status, provider, detail)
             SELECT $7, 'attempt', (SELECT 'retrying' FROM upd), $5,
                    CASE WHEN EXISTS (SELECT 1 FROM upd)
                         THEN $8 || jsonb_build_object('next_attempt_at', (SELECT next_attempt_at FROM upd))
                         WHEN EXISTS (SELECT 1 FROM j) THEN $8
                         ELSE $8 || '{\"fenced\": true}' END
         )
         SELECT count(*) FROM j",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .bind(delay.as_secs_f64())
    .bind(error)
    .bind(provider)
    .bind(Status::sources_of(Status::Retrying))
    .bind(lease.notification_id.as_uuid())
    .bind(detail)
    .bind(next_route)
    .fetch_one(conn)
    .await?;
    Ok(applied(n))
}

/// The end of the road without a send: `failed` (permanent error, attempts exhausted) or
/// `expired`. `event` is the timeline entry: `attempt` when a provider was called.
pub async fn mark_finished(
    conn: &mut PgConnection,
    lease: Lease,
    status: Status,
    event: &str,
    provider: Option<&str>,
    error: &str,
    detail: Value,
) -> StoreResult<Applied> {
    debug_assert!(matches!(status, Status::Failed | Status::Expired | Status::Suppressed));
    static SQL: LazyLock<String> = LazyLock::new(|| {
        with_callback(
            "done AS (
                 DELETE FROM jobs WHERE id = $1 AND lease_token = $2 AND state = 'running'
                 RETURNING notification_id, attempt
             ), upd AS (
                 UPDATE notifications n
                 SET status = $3, attempts = d.attempt, last_error = $4, provider = coalesce($5, n.provider),
                     next_attempt_at = NULL, updated_at = now()
                 FROM done d WHERE n.id = d.notification_id AND n.status = ANY($6)
                 RETURNING n.id, n.tenant_id, n.status, n.callback_url
             ), ev AS (
                 INSERT INTO notification_events (notification_id, type, status, provider, detail)
                 SELECT $7, $8, (SELECT $3 FROM upd), $5,
                        CASE WHEN EXISTS (SELECT 1 FROM done) THEN $9 ELSE $9 || '{\"fenced\": true}' END
             )",
            "SELECT count(*) FROM done",
        )
    });
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(lease.job_id)
        .bind(lease.token)
        .bind(status.as_str())
        .bind(error)
        .bind(provider)
        .bind(Status::sources_of(status))
        .bind(lease.notification_id.as_uuid())
        .bind(event)
        .bind(detail)
        .fetch_one(conn)
        .await?;
    Ok(applied(n))
}

/// Give back a job that was claimed but not sent (shutdown, an open circuit on every
/// provider, pacing): it is due again after `delay`, and the claim does not count as an attempt.
pub async fn release(
    conn: &mut PgConnection,
    lease: Lease,
    delay: Duration,
    reason: Option<&str>,
) -> StoreResult<Applied> {
    let n: i64 = sqlx::query_scalar(
        "WITH j AS (
             UPDATE jobs SET state = 'available', attempt = attempt - 1, leased_until = NULL, locked_by = NULL,
                             run_at = now() + make_interval(secs => $3)
             WHERE id = $1 AND lease_token = $2 AND state = 'running'
             RETURNING notification_id, run_at
         ), upd AS (
             UPDATE notifications n
             SET status = 'queued', updated_at = now(), last_error = coalesce($5, n.last_error),
                 next_attempt_at = CASE WHEN $3 > 0 THEN j.run_at END
             FROM j WHERE n.id = j.notification_id AND n.status = ANY($4)
             RETURNING n.id
         )
         SELECT count(*) FROM upd",
    )
    .bind(lease.job_id)
    .bind(lease.token)
    .bind(delay.as_secs_f64())
    .bind(Status::sources_of(Status::Queued))
    .bind(reason)
    .fetch_one(conn)
    .await?;
    Ok(applied(n))
}

/// Take back jobs whose lease expired (their worker died or stalled). Runs under a
/// transaction-scoped advisory lock so that many replicas do not rescue at once; returns how
/// many jobs were rescued. The rescued row gets a new claim (and token) before anyone sends.
pub async fn rescue_expired(pool: &PgPool, limit: i64) -> StoreResult<u64> {
    let mut tx = pool.begin().await?;
    let got: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('herald:rescue'))").fetch_one(&mut *tx).await?;
    if !got {
        return Ok(0);
    }
    // The UPDATE re-checks state and lease on the locked row version, so a job completed or
    // re-claimed since the scan is left alone (River #1302).
    let n: i64 = sqlx::query_scalar(
        "WITH stale AS MATERIALIZED (
             SELECT id FROM jobs WHERE state = 'running' AND leased_until < now()
             ORDER BY id LIMIT $1
             FOR NO KEY UPDATE SKIP LOCKED
         ), r AS (
             UPDATE jobs j SET state = 'available', run_at = now(), leased_until = NULL, locked_by = NULL
             FROM stale WHERE j.id = stale.id AND j.state = 'running' AND j.leased_until < now()
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
pub enum CancelOutcome {
    Cancelled,
    /// Not cancellable from its current status (sending, or finished).
    NotCancellable(Status),
    NotFound,
}

/// Cancel a notification that has not been handed to a provider yet.
pub async fn cancel(
    pool: &PgPool,
    id: NotificationId,
    tenant: Option<TenantId>,
    by: &str,
) -> StoreResult<CancelOutcome> {
    let mut tx = pool.begin().await?;
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
        with_callback(
            "upd AS (
                 UPDATE notifications SET status = 'cancelled', next_attempt_at = NULL, updated_at = now()
                 WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) AND status = ANY($3) AND $4
                 RETURNING id, tenant_id, status, callback_url
             ), ev AS (
                 INSERT INTO notification_events (notification_id, type, status, detail)
                 SELECT id, 'cancelled', 'cancelled', jsonb_build_object('by', $5::text) FROM upd
             )",
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

pub fn error_detail(class: &str, message: &str, attempt: i32) -> Value {
    json!({ "attempt": attempt, "error_class": class, "error": message })
}

/// A status callback a worker holds a lease on.
#[derive(Clone, Debug)]
pub struct ClaimedCallback {
    pub job_id: i64,
    pub lease_token: i64,
    pub attempt: i32,
    pub notification_id: NotificationId,
    /// `{"type", "status", "at"}` as queued.
    pub event: Value,
}

impl ClaimedCallback {
    pub fn lease(&self) -> Lease {
        Lease { job_id: self.job_id, token: self.lease_token, notification_id: self.notification_id }
    }
}

/// Claim due status callbacks (their own lane, so a slow receiver never delays sends).
pub async fn claim_callbacks(
    conn: &mut PgConnection,
    limit: i64,
    lease: Duration,
    worker: &str,
) -> StoreResult<Vec<ClaimedCallback>> {
    let rows = sqlx::query(
        "WITH picked AS MATERIALIZED (
             SELECT id FROM jobs
             WHERE state = 'available' AND queue = 'callback' AND priority = 1 AND run_at <= now()
             ORDER BY run_at, id
             LIMIT $1
             FOR NO KEY UPDATE SKIP LOCKED
         )
         UPDATE jobs j
         SET state = 'running', attempt = j.attempt + 1, lease_token = j.lease_token + 1,
             leased_until = now() + make_interval(secs => $2), locked_by = $3
         FROM picked WHERE j.id = picked.id
         RETURNING j.id, j.lease_token, j.attempt, j.notification_id, j.payload",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(worker)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ClaimedCallback {
                job_id: r.try_get("id")?,
                lease_token: r.try_get("lease_token")?,
                attempt: r.try_get("attempt")?,
                notification_id: NotificationId::from_uuid(r.try_get("notification_id")?),
                event: r.try_get::<Option<Value>, _>("payload")?.unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// Record a callback attempt in the timeline; `retry_in` puts the job back (a failed
/// delivery with attempts left), `None` ends it (delivered, or given up).
pub async fn callback_attempted(
    conn: &mut PgConnection,
    lease: Lease,
    retry_in: Option<Duration>,
    detail: Value,
) -> StoreResult<Applied> {
    let n: i64 = sqlx::query_scalar(
        "WITH j AS (
             UPDATE jobs SET state = 'available', run_at = now() + make_interval(secs => $3),
                             leased_until = NULL, locked_by = NULL
             WHERE $4 AND id = $1 AND lease_token = $2 AND state = 'running'
             RETURNING id
         ), d AS (
             DELETE FROM jobs WHERE NOT $4 AND id = $1 AND lease_token = $2 AND state = 'running'
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
    .bind(detail)
    .fetch_one(conn)
    .await?;
    Ok(applied(n))
}

/// Where a notification's callbacks go and how they are signed: its own URL or its tenant's,
/// and the tenant's secret (the caller falls back to `callbacks.signing_secret`).
pub async fn callback_target(
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
