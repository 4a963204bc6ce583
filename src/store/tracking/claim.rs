//! Claiming due work, fairly and in batches. Work waits in lanes: one per (channel, priority)
//! for sends, one for status callbacks. A claim of `limit` jobs is shared between the lanes
//! that have due work by weight: a weighted round robin over the lanes' queues, so a backlog
//! in one lane never fills the whole claim (200,000 low-priority emails do not hold back a
//! high-priority one, nor any SMS), `high` goes first but `normal` and `low` always get a
//! share, and callbacks keep theirs while sends drain. A lane with little work leaves its share
//! to the others. Each lane may also be capped (a paced provider's channel).
//!
//! One statement: count each lane's due work (up to its cap, without locking), choose the
//! shares, then lock that many rows per lane with `SKIP LOCKED` and lease them.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::Lease;
use crate::domain::{Channel, NotificationId, Priority, Status, TenantId};
use crate::store::{StoreError, StoreResult};

/// The queue name and priority of the status-callback lane.
pub const CALLBACK_QUEUE: &str = "callback";
const CALLBACK_PRIORITY: i16 = 1;

/// One lane of the claim: its queue and priority, its weight in the share, and the most
/// jobs it may be given in one claim.
#[derive(Clone, Debug)]
pub struct Lane {
    pub queue: &'static str,
    pub priority: i16,
    pub weight: f64,
    pub cap: i64,
}

/// Shares by priority: of every 7 jobs claimed from a channel's full lanes, 4 high, 2 normal
/// and 1 low.
pub fn priority_weight(p: Priority) -> f64 {
    match p {
        Priority::High => 4.0,
        Priority::Normal => 2.0,
        Priority::Low => 1.0,
    }
}

/// Status callbacks' share against one channel's full lanes: as much as `normal` sends.
pub const CALLBACK_WEIGHT: f64 = 2.0;

impl Lane {
    pub fn send(channel: Channel, priority: Priority, cap: i64) -> Lane {
        Lane { queue: channel.as_str(), priority: priority.lane(), weight: priority_weight(priority), cap }
    }

    pub fn callbacks(cap: i64) -> Lane {
        Lane { queue: CALLBACK_QUEUE, priority: CALLBACK_PRIORITY, weight: CALLBACK_WEIGHT, cap }
    }

    /// Every lane, each capped at `cap`.
    pub fn all(cap: i64) -> Vec<Lane> {
        let mut lanes: Vec<Lane> =
            Priority::ALL.into_iter().flat_map(|p| Channel::ALL.map(|c| Lane::send(c, p, cap))).collect();
        lanes.push(Lane::callbacks(cap));
        lanes
    }
}

/// A send a worker holds a lease on, with what it needs to send.
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
    /// The recipient as one string (what throttles count per).
    pub recipient_key: String,
    /// Its send was counted in the send limits' windows already (`limits::take_send_slot`).
    pub slot_taken: bool,
    pub content: Value,
    pub expires_at: Option<OffsetDateTime>,
    pub priority: Priority,
    /// The recipient is on the tenant's suppression list: do not send.
    pub suppressed: bool,
    pub metadata: Value,
    pub tags: Vec<String>,
    /// The W3C `traceparent` of the request that created it.
    pub traceparent: Option<String>,
    /// When the lease ends (see `Lease::until`).
    pub leased_until: Instant,
}

impl ClaimedJob {
    pub fn lease(&self) -> Lease {
        Lease {
            job_id: self.job_id,
            token: self.lease_token,
            notification_id: self.notification_id,
            until: self.leased_until,
        }
    }
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
    /// When the lease ends (see `Lease::until`).
    pub leased_until: Instant,
}

impl ClaimedCallback {
    pub fn lease(&self) -> Lease {
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
pub enum Claimed {
    Send(ClaimedJob),
    Callback(ClaimedCallback),
}

impl Claimed {
    pub fn lease(&self) -> Lease {
        match self {
            Claimed::Send(j) => j.lease(),
            Claimed::Callback(c) => c.lease(),
        }
    }
}

/// Claim up to `limit` due jobs from `lanes`, shared by weight, under a lease of `lease`. The
/// row locks last only for this statement: the provider call happens after commit, protected
/// by the lease.
pub async fn claim(
    conn: &mut PgConnection,
    lanes: &[Lane],
    limit: i64,
    lease: Duration,
    worker: &str,
) -> StoreResult<Vec<Claimed>> {
    // `due` ranks each lane's due jobs 1, 2, 3…; ordering all of them by rank / weight and
    // taking `limit` is a weighted round robin (ties to the heavier lane), and `share` counts
    // what each lane won. `picked` is MATERIALIZED so the LIMITs bound the locking
    // (PostgreSQL BUG #15715). The `ORDER BY` in `due` and the `= ANY(ARRAY(…))` updates keep
    // the planner on indexes even with a generic plan and a million-row backlog (with plain
    // joins it chose sequential scans of `jobs` and `notifications`, and a claim took a
    // second). The state literal matches the partial index `jobs_claim_idx`; each lane's
    // `run_at <= now()` is an index range, so future rows are never walked.
    //
    // A send job is claimed only with a notification that may be sent (the status machine's
    // sources of `sending`); one whose notification is gone (deleted by hand, or by retention
    // racing a late receipt) or may not be sent any more is deleted instead (`dead`), so it
    // neither loops through claims and rescues nor resurrects a finished notification.
    let leased_until = Instant::now() + lease;
    let rows = sqlx::query(
        "WITH lanes AS (
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::float8[], $4::bigint[]) AS l(q, p, w, cap)
         ), due AS (
             SELECT lanes.q, lanes.p, lanes.w, d.rn FROM lanes CROSS JOIN LATERAL (
                 SELECT row_number() OVER () AS rn FROM (
                     SELECT 1 FROM jobs
                     WHERE state = 'available' AND queue = lanes.q AND priority = lanes.p AND run_at <= now()
                     ORDER BY run_at, id
                     LIMIT lanes.cap
                 ) x
             ) d
             WHERE lanes.cap > 0
         ), share AS (
             SELECT q, p, count(*) AS n FROM (SELECT q, p FROM due ORDER BY rn / w, w DESC LIMIT $5) s GROUP BY q, p
         ), picked AS MATERIALIZED (
             SELECT j.id, j.kind = 'callback' OR EXISTS (
                        SELECT 1 FROM notifications n WHERE n.id = j.notification_id AND n.status = ANY($8)) AS live
             FROM share CROSS JOIN LATERAL (
                 SELECT id, kind, notification_id FROM jobs
                 WHERE state = 'available' AND queue = share.q AND priority = share.p AND run_at <= now()
                 ORDER BY run_at, id
                 LIMIT share.n
                 FOR NO KEY UPDATE SKIP LOCKED
             ) j
             LIMIT $5
         ), dead AS (
             DELETE FROM jobs WHERE id = ANY(ARRAY(SELECT id FROM picked WHERE NOT live))
         ), claimed AS (
             UPDATE jobs j
             SET state = 'running', attempt = j.attempt + 1, lease_token = j.lease_token + 1,
                 leased_until = now() + make_interval(secs => $6), locked_by = $7
             WHERE j.id = ANY(ARRAY(SELECT id FROM picked WHERE live))
             RETURNING j.id, j.kind, j.notification_id, j.attempt, j.max_attempts, j.lease_token, j.route_index,
                       j.payload, j.slot_taken
         ), marked AS (
             UPDATE notifications n
             SET status = 'sending', next_attempt_at = NULL, updated_at = now()
             WHERE n.id = ANY(ARRAY(SELECT notification_id FROM claimed WHERE kind = 'send')) AND n.status = ANY($8)
             RETURNING n.id, n.tenant_id, n.channel, n.recipient, n.recipient_key, n.content, n.expires_at, n.priority,
                       n.metadata, n.tags, n.traceparent
         )
         SELECT c.id AS job_id, c.kind, c.lease_token, c.attempt, c.max_attempts, c.route_index, c.payload, c.slot_taken,
                c.notification_id, m.tenant_id, m.channel, m.recipient, m.recipient_key, m.content, m.expires_at, m.priority,
                m.metadata, m.tags, m.traceparent,
                EXISTS (SELECT 1 FROM suppressions s
                        WHERE s.tenant_id = m.tenant_id AND s.channel = m.channel AND s.recipient = m.recipient_key)
                    AS suppressed
         FROM claimed c LEFT JOIN marked m ON c.kind = 'send' AND m.id = c.notification_id
         WHERE c.kind = 'callback' OR m.id IS NOT NULL",
    )
    // Planned for its parameters on every call: a cached generic plan of this statement took
    // half a second against a million-row backlog where a custom plan takes milliseconds.
    .persistent(false)
    .bind(lanes.iter().map(|l| l.queue).collect::<Vec<_>>())
    .bind(lanes.iter().map(|l| l.priority).collect::<Vec<_>>())
    .bind(lanes.iter().map(|l| l.weight).collect::<Vec<_>>())
    .bind(lanes.iter().map(|l| l.cap).collect::<Vec<_>>())
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(worker)
    .bind(Status::sources_of(Status::Sending))
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
                    event: r.try_get::<Option<Value>, _>("payload")?.unwrap_or(Value::Null),
                    leased_until,
                }));
            }
            let channel: String = r.try_get("channel")?;
            let priority: String = r.try_get("priority")?;
            Ok(Claimed::Send(ClaimedJob {
                job_id: r.try_get("job_id")?,
                lease_token: r.try_get("lease_token")?,
                attempt: r.try_get("attempt")?,
                max_attempts: r.try_get("max_attempts")?,
                route_index: r.try_get("route_index")?,
                notification_id,
                tenant_id: TenantId::from_uuid(r.try_get("tenant_id")?),
                channel: Channel::parse(&channel).ok_or_else(|| StoreError::Corrupt(channel.clone()))?,
                to: r.try_get("recipient")?,
                recipient_key: r.try_get("recipient_key")?,
                slot_taken: r.try_get("slot_taken")?,
                content: r.try_get("content")?,
                expires_at: r.try_get("expires_at")?,
                priority: Priority::parse(&priority).ok_or_else(|| StoreError::Corrupt(priority.clone()))?,
                suppressed: r.try_get("suppressed")?,
                metadata: r.try_get("metadata")?,
                tags: r.try_get("tags")?,
                traceparent: r.try_get("traceparent")?,
                leased_until,
            }))
        })
        .collect()
}
