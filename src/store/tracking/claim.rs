//! Claiming due work, fairly and in batches. Work waits in lanes: one per (channel, priority)
//! for sends, one for status callbacks. A claim of `limit` jobs is shared between the lanes
//! that have due work by weight: a weighted round robin over the lanes' queues, so a backlog
//! in one lane never fills the whole claim (200,000 low-priority emails do not hold back a
//! high-priority one, nor any SMS), `high` goes first but `normal` and `low` always get a
//! share, and callbacks keep theirs while sends drain. A lane with little work leaves its share
//! to the others. Each lane may also be capped (a paced provider's channel, the callbacks'
//! budget).
//!
//! Inside a lane, the share is dealt round robin between the tenants that have due work in
//! it: each tenant's oldest job, then each one's second, and so on. A tenant's backlog of any
//! size therefore holds another tenant's lone message back by at most one claim. A lane may
//! also cap what one tenant gets, less what that tenant already has in flight (callbacks: a
//! tenant's hanging receiver holds only its own share).
//!
//! A claim is bounded in bytes too: jobs are taken in the order of the round robin while the
//! content claimed stays under the caller's budget (at least one job), so a worker's memory
//! follows bytes, not job counts.
//!
//! One statement: find each lane's tenants (a skip scan of the claim index), count each
//! tenant's due work (up to the caps, without locking), choose the shares, then lock that many
//! rows per lane and tenant with `SKIP LOCKED` and lease those within the byte budget.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::Lease;
use crate::domain::{Channel, Content, NotificationId, Priority, Recipient, Status, TenantId};
use crate::store::{StoreError, StoreResult};

/// The queue name and priority of the status-callback lane.
pub(crate) const CALLBACK_QUEUE: &str = "callback";
const CALLBACK_PRIORITY: i16 = 1;

/// One lane of the claim: its queue and priority, its weight in the share, the most jobs it
/// may be given in one claim, and the most one tenant may hold of it (counting what the
/// tenant has in flight: `Bounds::busy`).
#[derive(Clone, Debug)]
pub(crate) struct Lane {
    pub(crate) queue: &'static str,
    pub(crate) priority: i16,
    pub(crate) weight: f64,
    pub(crate) cap: i64,
    pub(crate) tenant_cap: i64,
}

/// Shares by priority: of every 7 jobs claimed from a channel's full lanes, 4 high, 2 normal
/// and 1 low.
pub(crate) fn priority_weight(p: Priority) -> f64 {
    match p {
        Priority::High => 4.0,
        Priority::Normal => 2.0,
        Priority::Low => 1.0,
    }
}

/// Status callbacks' share against one channel's full lanes: as much as `normal` sends.
pub(crate) const CALLBACK_WEIGHT: f64 = 2.0;

impl Lane {
    pub(crate) fn send(channel: Channel, priority: Priority, cap: i64) -> Lane {
        Lane {
            queue: channel.as_str(),
            priority: priority.lane(),
            weight: priority_weight(priority),
            cap,
            tenant_cap: cap,
        }
    }

    /// The status callbacks' lane: at most `cap` jobs, at most `per_tenant` a tenant.
    pub(crate) fn callbacks(cap: i64, per_tenant: i64) -> Lane {
        Lane {
            queue: CALLBACK_QUEUE,
            priority: CALLBACK_PRIORITY,
            weight: CALLBACK_WEIGHT,
            cap,
            tenant_cap: per_tenant,
        }
    }

    /// Every lane, each capped at `cap` (tests).
    #[cfg(test)]
    pub(crate) fn all(cap: i64) -> Vec<Lane> {
        let mut lanes: Vec<Lane> =
            Priority::ALL.into_iter().flat_map(|p| Channel::ALL.map(|c| Lane::send(c, p, cap))).collect();
        lanes.push(Lane::callbacks(cap, cap));
        lanes
    }
}

/// What one claim may take besides the lanes' caps: at most `limit` jobs and, past the first,
/// `bytes` of content; `busy` is what tenants already hold of a lane's queue (callbacks in
/// flight), counted against the lane's `tenant_cap`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds<'a> {
    pub(crate) limit: i64,
    pub(crate) bytes: i64,
    pub(crate) busy: &'a [(&'static str, TenantId, i64)],
}

impl Bounds<'_> {
    /// `limit` jobs, whatever their size (tests).
    #[cfg(test)]
    pub(crate) fn jobs(limit: i64) -> Bounds<'static> {
        Bounds { limit, bytes: i64::MAX, busy: &[] }
    }
}

/// A send a worker holds a lease on, with what it needs to send.
#[derive(Clone, Debug)]
pub(crate) struct ClaimedJob {
    pub(crate) job_id: i64,
    pub(crate) lease_token: i64,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    /// Index into the channel's provider list to start from (failover).
    pub(crate) route_index: i32,
    pub(crate) notification_id: NotificationId,
    pub(crate) tenant_id: TenantId,
    pub(crate) channel: Channel,
    /// Its recipient and content, read back as domain types here at the store's boundary; or
    /// why the stored row cannot be read (the send fails with that reason, and the rest of the
    /// claim is not held back by it).
    pub(crate) payload: Result<Box<Payload>, String>,
    /// The recipient as one string (what throttles count per).
    pub(crate) recipient_key: String,
    /// Its send was counted in the send limits' windows already (`limits::take_send_slot`).
    pub(crate) slot_taken: bool,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) priority: Priority,
    /// The recipient is on the tenant's suppression list: do not send.
    pub(crate) suppressed: bool,
    /// The bytes of its content and metadata as JSON (what the claim's byte budget counted).
    pub(crate) size_bytes: i64,
    pub(crate) metadata: Value,
    pub(crate) tags: Vec<String>,
    /// The W3C `traceparent` of the request that created it.
    pub(crate) traceparent: Option<String>,
    /// When the lease ends (see `Lease::until`).
    pub(crate) leased_until: Instant,
}

impl ClaimedJob {
    pub(crate) fn lease(&self) -> Lease {
        Lease {
            job_id: self.job_id,
            token: self.lease_token,
            notification_id: self.notification_id,
            until: self.leased_until,
        }
    }
}

/// What a claimed send delivers.
#[derive(Clone, Debug)]
pub(crate) struct Payload {
    pub(crate) to: Recipient,
    pub(crate) content: Content,
}

impl Payload {
    /// Read back what acceptance stored (and validated then).
    fn read(channel: Channel, to: &Value, content: Value) -> Result<Box<Payload>, String> {
        let to =
            Recipient::parse(channel, to, true).map_err(|e| format!("stored recipient unreadable: {}", e.detail))?;
        let content = Content::from_stored(channel, content).map_err(|e| format!("stored content unreadable: {e}"))?;
        Ok(Box::new(Payload { to, content }))
    }
}

/// A status callback a worker holds a lease on.
#[derive(Clone, Debug)]
pub(crate) struct ClaimedCallback {
    pub(crate) job_id: i64,
    pub(crate) lease_token: i64,
    pub(crate) attempt: i32,
    pub(crate) notification_id: NotificationId,
    pub(crate) tenant_id: TenantId,
    /// `{"type", "status", "at"}` as queued.
    pub(crate) event: Value,
    /// When the lease ends (see `Lease::until`).
    pub(crate) leased_until: Instant,
}

impl ClaimedCallback {
    pub(crate) fn lease(&self) -> Lease {
        Lease {
            job_id: self.job_id,
            token: self.lease_token,
            notification_id: self.notification_id,
            until: self.leased_until,
        }
    }
}

/// One unit of claimed work.
#[derive(Clone, Debug)]
pub(crate) enum Claimed {
    Send(ClaimedJob),
    Callback(ClaimedCallback),
}

impl Claimed {
    #[cfg(test)]
    pub(crate) fn lease(&self) -> Lease {
        match self {
            Claimed::Send(j) => j.lease(),
            Claimed::Callback(c) => c.lease(),
        }
    }
}

/// Claim up to `limit` due jobs from `lanes`, shared by weight, under a lease of `lease`
/// (tests: the dispatcher claims within its bounds, `claim_within`).
#[cfg(test)]
pub(crate) async fn claim(
    conn: &mut PgConnection,
    lanes: &[Lane],
    limit: i64,
    lease: Duration,
    worker: &str,
) -> StoreResult<Vec<Claimed>> {
    claim_within(conn, lanes, Bounds::jobs(limit), lease, worker).await
}

/// The claim statement (see `claim_within`). Public for the scale test, which EXPLAINs it on
/// a million queued jobs.
///
/// `tenants` is a skip scan of the claim index: one descent per tenant with work in a lane
/// (a recursive CTE, PostgreSQL having no loose index scan), whatever the backlog's size.
/// `due` ranks each tenant's due jobs in a lane 1, 2, 3…; `ranked` deals the lane out round
/// robin between its tenants (ties in random order, so no tenant is always first), and
/// ordering every lane's jobs by rank / weight and taking `limit` is the weighted round
/// robin between lanes; `share` counts what each (lane, tenant) won. The inner `LIMIT $6`s
/// keep the row estimates small (an unknown LIMIT is planned as a tenth of the table, which
/// turned JIT compilation on: a second per claim). `picked` is MATERIALIZED so the LIMITs
/// bound the locking (PostgreSQL BUG #15715); `sized` keeps, in round-robin order, the jobs
/// whose content fits in the byte budget (the first always does). The `= ANY(ARRAY(…))`
/// updates keep the planner on indexes even with a generic plan and a million-row backlog.
/// The state literal matches the partial index `jobs_claim_idx`; each `run_at <= now()` is
/// an index range, so future rows are never walked.
///
/// A send job is claimed only with a notification that may be sent (the status machine's
/// sources of `sending`); one whose notification is gone (deleted by hand, or by retention
/// racing a late receipt) or may not be sent any more is deleted instead (`dead`), so it
/// neither loops through claims and rescues nor resurrects a finished notification.
pub(crate) const CLAIM_SQL: &str = "WITH lanes AS (
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::float8[], $4::bigint[], $5::bigint[])
                 AS l(q, p, w, cap, tcap)
         ), busy AS (
             SELECT * FROM unnest($10::text[], $11::uuid[], $12::bigint[]) AS b(q, t, n)
         ), tenants AS (
             SELECT l.q, l.p, l.w, l.cap, t.tenant_id,
                    least(l.cap, l.tcap - coalesce((SELECT b.n FROM busy b WHERE b.q = l.q AND b.t = t.tenant_id), 0))
                        AS tcap
             FROM lanes l CROSS JOIN LATERAL (
                 WITH RECURSIVE r(tenant_id) AS (
                     (SELECT tenant_id FROM jobs WHERE state = 'available' AND queue = l.q AND priority = l.p
                      ORDER BY tenant_id LIMIT 1)
                     UNION ALL
                     SELECT (SELECT j.tenant_id FROM jobs j
                             WHERE j.state = 'available' AND j.queue = l.q AND j.priority = l.p
                               AND j.tenant_id > r.tenant_id
                             ORDER BY j.tenant_id LIMIT 1)
                     FROM r WHERE r.tenant_id IS NOT NULL
                 )
                 SELECT tenant_id FROM r WHERE tenant_id IS NOT NULL
             ) t
             WHERE l.cap > 0
         ), due AS (
             SELECT t.q, t.p, t.w, t.cap, t.tenant_id, d.rn FROM tenants t CROSS JOIN LATERAL (
                 SELECT row_number() OVER () AS rn FROM (
                     SELECT 1 FROM jobs
                     WHERE state = 'available' AND queue = t.q AND priority = t.p AND tenant_id = t.tenant_id
                       AND run_at <= now()
                     ORDER BY run_at, id
                     LIMIT $6
                 ) x
             ) d
             WHERE d.rn <= t.tcap
         ), ranked AS (
             SELECT q, p, w, cap, tenant_id, row_number() OVER (PARTITION BY q, p ORDER BY rn, random()) AS lrn
             FROM due
         ), share AS (
             SELECT q, p, tenant_id, count(*) AS n
             FROM (SELECT q, p, tenant_id FROM ranked WHERE lrn <= cap ORDER BY lrn / w, w DESC LIMIT $6) s
             GROUP BY q, p, tenant_id
         ), picked AS MATERIALIZED (
             SELECT j.id, j.rn, j.kind = 'callback' OR j.size IS NOT NULL AS live, coalesce(j.size, 0) AS size
             FROM share CROSS JOIN LATERAL (
                 SELECT x.id, x.kind, row_number() OVER () AS rn,
                        CASE WHEN x.kind = 'callback' THEN 0
                             ELSE (SELECT coalesce(n.size_bytes, octet_length(n.content::text) + octet_length(n.metadata::text))
                                   FROM notifications n WHERE n.id = x.notification_id AND n.status = ANY($9)) END AS size
                 FROM (
                     SELECT id, kind, notification_id FROM jobs
                     WHERE state = 'available' AND queue = share.q AND priority = share.p
                       AND tenant_id = share.tenant_id AND run_at <= now()
                     ORDER BY run_at, id
                     LIMIT share.n
                     FOR NO KEY UPDATE SKIP LOCKED
                 ) x
             ) j
             LIMIT $6
         ), sized AS (
             SELECT id, live, sum(size) OVER (ORDER BY rn, id ROWS UNBOUNDED PRECEDING) - size AS before FROM picked
         ), dead AS (
             DELETE FROM jobs WHERE id = ANY(ARRAY(SELECT id FROM picked WHERE NOT live))
         ), claimed AS (
             UPDATE jobs j
             SET state = 'running', attempt = j.attempt + 1, lease_token = j.lease_token + 1,
                 leased_until = now() + make_interval(secs => $7), locked_by = $8
             WHERE j.id = ANY(ARRAY(SELECT id FROM sized WHERE live AND before < $13))
             RETURNING j.id, j.kind, j.notification_id, j.tenant_id, j.attempt, j.max_attempts, j.lease_token,
                       j.route_index, j.payload, j.slot_taken
         ), marked AS (
             UPDATE notifications n
             SET status = 'sending', next_attempt_at = NULL, updated_at = now()
             WHERE n.id = ANY(ARRAY(SELECT notification_id FROM claimed WHERE kind = 'send')) AND n.status = ANY($9)
             RETURNING n.id, n.tenant_id, n.channel, n.recipient, n.recipient_key, n.content, n.expires_at, n.priority,
                       n.metadata, n.tags, n.traceparent, n.category,
                       coalesce(n.size_bytes, octet_length(n.content::text) + octet_length(n.metadata::text)) AS size_bytes
         )
         SELECT c.id AS job_id, c.kind, c.lease_token, c.attempt, c.max_attempts, c.route_index, c.payload, c.slot_taken,
                c.notification_id, c.tenant_id, m.channel, m.recipient, m.recipient_key, m.content, m.expires_at,
                m.priority, m.metadata, m.tags, m.traceparent, m.size_bytes,
                EXISTS (SELECT 1 FROM suppressions s
                        WHERE s.tenant_id = m.tenant_id AND s.channel = m.channel AND s.recipient = m.recipient_key
                          AND (s.category = '' OR s.category = m.category))
                    AS suppressed
         FROM claimed c LEFT JOIN marked m ON c.kind = 'send' AND m.id = c.notification_id
         WHERE c.kind = 'callback' OR m.id IS NOT NULL";

/// Claim due jobs from `lanes` within `bounds`, shared by weight between lanes and round robin
/// between tenants, under a lease of `lease`. The row locks last only for this statement: the
/// provider call happens after commit, protected by the lease.
#[tracing::instrument(name = "store.tracking.claim", skip_all, fields(limit = bounds.limit))]
pub(crate) async fn claim_within(
    conn: &mut PgConnection,
    lanes: &[Lane],
    bounds: Bounds<'_>,
    lease: Duration,
    worker: &str,
) -> StoreResult<Vec<Claimed>> {
    let leased_until = Instant::now() + lease;
    let busy_queues: Vec<&str> = bounds.busy.iter().map(|(q, ..)| *q).collect();
    let (busy_tenants, busy_counts): (Vec<uuid::Uuid>, Vec<i64>) =
        bounds.busy.iter().map(|(_, t, n)| (t.as_uuid(), *n)).unzip();
    let rows = sqlx::query(CLAIM_SQL)
        // Planned for its parameters on every call: a cached generic plan of this statement took
        // half a second against a million-row backlog where a custom plan takes milliseconds.
        .persistent(false)
        .bind(lanes.iter().map(|l| l.queue).collect::<Vec<_>>())
        .bind(lanes.iter().map(|l| l.priority).collect::<Vec<_>>())
        .bind(lanes.iter().map(|l| l.weight).collect::<Vec<_>>())
        .bind(lanes.iter().map(|l| l.cap).collect::<Vec<_>>())
        .bind(lanes.iter().map(|l| l.tenant_cap).collect::<Vec<_>>())
        .bind(bounds.limit)
        .bind(lease.as_secs_f64())
        .bind(worker)
        .bind(Status::sources_of(Status::Sending))
        .bind(busy_queues)
        .bind(busy_tenants)
        .bind(busy_counts)
        .bind(bounds.bytes.max(1))
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get("kind")?;
            let notification_id = NotificationId::from_uuid(r.try_get("notification_id")?);
            if kind == "callback" {
                return Ok(Claimed::Callback(ClaimedCallback {
                    job_id: r.try_get("job_id")?,
                    lease_token: r.try_get("lease_token")?,
                    attempt: r.try_get("attempt")?,
                    notification_id,
                    tenant_id: TenantId::from_uuid(r.try_get("tenant_id")?),
                    event: r.try_get::<Option<Value>, _>("payload")?.unwrap_or(Value::Null),
                    leased_until,
                }));
            }
            let channel: String = r.try_get("channel")?;
            let channel = Channel::parse(&channel).ok_or_else(|| StoreError::Corrupt(channel.clone()))?;
            let priority: String = r.try_get("priority")?;
            Ok(Claimed::Send(ClaimedJob {
                job_id: r.try_get("job_id")?,
                lease_token: r.try_get("lease_token")?,
                attempt: r.try_get("attempt")?,
                max_attempts: r.try_get("max_attempts")?,
                route_index: r.try_get("route_index")?,
                notification_id,
                tenant_id: TenantId::from_uuid(r.try_get("tenant_id")?),
                channel,
                payload: Payload::read(channel, &r.try_get::<Value, _>("recipient")?, r.try_get("content")?),
                recipient_key: r.try_get("recipient_key")?,
                slot_taken: r.try_get("slot_taken")?,
                expires_at: r.try_get("expires_at")?,
                priority: Priority::parse(&priority).ok_or_else(|| StoreError::Corrupt(priority.clone()))?,
                suppressed: r.try_get("suppressed")?,
                size_bytes: r.try_get::<Option<i32>, _>("size_bytes")?.map_or(0, i64::from),
                metadata: r.try_get("metadata")?,
                tags: r.try_get("tags")?,
                traceparent: r.try_get("traceparent")?,
                leased_until,
            }))
        })
        .collect()
}
