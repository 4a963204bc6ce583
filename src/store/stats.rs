//! What operators look at: counts, latencies, throughput, queue depth and recent failures over
//! a window of time, for one tenant or all. Every query is bounded by the window and backed by
//! an index, so its cost follows the traffic of the window, not the size of the tables:
//! notifications by UUIDv7 id range (the primary key), their events by the BRIN index on `at`,
//! the queue by the claim and lease indexes, recent failures by `(indexed_status, id)`. One tenant's
//! read only that tenant's rows (see the queries). Each snapshot is read in one read-only
//! transaction under a statement timeout.

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use time::{Duration, OffsetDateTime};

use super::StoreResult;
use crate::domain::recipient::mask;
use crate::domain::{Channel, NotificationId, Priority, TenantId};

/// Notifications created in the window, by status, channel and provider.
#[derive(Clone, Debug, Serialize)]
pub struct CountRow {
    pub status: String,
    pub channel: String,
    pub provider: Option<String>,
    pub count: i64,
}

/// Seconds from acceptance to an event, over the events of the window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: i64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// Provider calls in the window.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptRow {
    pub provider: String,
    pub attempts: i64,
    pub failed: i64,
}

/// One bucket of the throughput chart.
#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub accepted: i64,
    pub sent: i64,
    pub delivered: i64,
    pub failed: i64,
}

/// Send jobs of one lane (channel and priority).
#[derive(Clone, Debug, Serialize)]
pub struct LaneRow {
    pub channel: String,
    pub priority: String,
    /// Waiting, due or not.
    pub waiting: i64,
    /// Waiting and due now.
    pub due: i64,
    /// Being sent.
    pub running: i64,
    /// How long the oldest due job has waited, in seconds.
    pub oldest_due_age_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub id: NotificationId,
    pub channel: String,
    /// Masked (`a***@example.com`): a dashboard is looked at over shoulders.
    pub to: String,
    pub provider: Option<String>,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Everything `GET /v1/stats` and the dashboard show that comes from the database.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub counts: Vec<CountRow>,
    pub accepted_to_sent: Latency,
    pub accepted_to_delivered: Latency,
    pub attempts: Vec<AttemptRow>,
    pub throughput: Vec<Bucket>,
    pub queue: Vec<LaneRow>,
    /// Jobs whose lease ran out without an answer (their worker died or stalled); the
    /// rescuer puts them back.
    pub stuck: i64,
    pub recent_failures: Vec<Failure>,
}

// The queries, public so that the scale test can EXPLAIN them on a million rows. Each comes
// in two forms: every tenant's (admin), over the window's events by the BRIN index on `at`,
// and one tenant's, which reads only that tenant's rows: its notifications created in the
// window by `(tenant_id, id)`, their events by `(notification_id, id)`, its queue by the claim
// index (which leads with the lane, then the tenant). A tenant's stats therefore cost what its
// own traffic costs, whatever the other tenants do.
pub const COUNTS_SQL: &str = "SELECT status, channel, provider, count(*) AS n FROM notifications
         WHERE id >= $1 AND ($2::uuid IS NULL OR tenant_id = $2) AND ($3::text IS NULL OR category = $3)
         GROUP BY status, channel, provider ORDER BY status, channel, provider";

/// Latency from acceptance without reading the notification: a UUIDv7 id holds its creation
/// millisecond in its first 48 bits.
macro_rules! latency_of_events {
    () => {
        "SELECT e.type, count(*) AS n,
                percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM e.at)
                    - ('x' || substr(replace(e.notification_id::text, '-', ''), 1, 12))::bit(48)::bigint / 1000.0) AS p"
    };
}

pub const LATENCY_SQL: &str = concat!(
    latency_of_events!(),
    " FROM notification_events e
         WHERE e.at >= $1
           AND ((e.type = 'attempt' AND e.status = 'sent') OR (e.type = 'receipt' AND e.status = 'delivered'))
         GROUP BY e.type"
);

pub const TENANT_LATENCY_SQL: &str = concat!(
    latency_of_events!(),
    " FROM notifications n JOIN notification_events e ON e.notification_id = n.id
         WHERE n.tenant_id = $2 AND n.id >= $3 AND e.at >= $1
           AND ((e.type = 'attempt' AND e.status = 'sent') OR (e.type = 'receipt' AND e.status = 'delivered'))
         GROUP BY e.type"
);

/// `TENANT_LATENCY_SQL` for one category's notifications (`$4`), of one tenant or of all.
pub const CATEGORY_LATENCY_SQL: &str = concat!(
    latency_of_events!(),
    " FROM notifications n JOIN notification_events e ON e.notification_id = n.id
         WHERE ($2::uuid IS NULL OR n.tenant_id = $2) AND n.category = $4 AND n.id >= $3 AND e.at >= $1
           AND ((e.type = 'attempt' AND e.status = 'sent') OR (e.type = 'receipt' AND e.status = 'delivered'))
         GROUP BY e.type"
);

pub const ATTEMPTS_SQL: &str =
    "SELECT e.provider, count(*) AS attempts, count(*) FILTER (WHERE e.detail ? 'error_class') AS failed
         FROM notification_events e
         WHERE e.at >= $1 AND e.type = 'attempt' AND e.provider IS NOT NULL
         GROUP BY e.provider ORDER BY e.provider";

pub const TENANT_ATTEMPTS_SQL: &str =
    "SELECT e.provider, count(*) AS attempts, count(*) FILTER (WHERE e.detail ? 'error_class') AS failed
         FROM notifications n JOIN notification_events e ON e.notification_id = n.id
         WHERE n.tenant_id = $2 AND n.id >= $3 AND e.at >= $1 AND e.type = 'attempt' AND e.provider IS NOT NULL
         GROUP BY e.provider ORDER BY e.provider";

/// `TENANT_ATTEMPTS_SQL` for one category's notifications (`$4`), of one tenant or of all.
pub const CATEGORY_ATTEMPTS_SQL: &str =
    "SELECT e.provider, count(*) AS attempts, count(*) FILTER (WHERE e.detail ? 'error_class') AS failed
         FROM notifications n JOIN notification_events e ON e.notification_id = n.id
         WHERE ($2::uuid IS NULL OR n.tenant_id = $2) AND n.category = $4 AND n.id >= $3 AND e.at >= $1
           AND e.type = 'attempt' AND e.provider IS NOT NULL
         GROUP BY e.provider ORDER BY e.provider";

macro_rules! throughput_buckets {
    () => {
        "WITH buckets AS (
             SELECT generate_series(date_bin($3, $1, 'epoch'), $4, $3) AS at
         ), acc AS (
             SELECT date_bin($3, created_at, 'epoch') AS at, count(*) AS n FROM notifications
             WHERE id >= $5 AND created_at >= $1 AND ($2::uuid IS NULL OR tenant_id = $2)
               AND ($6::text IS NULL OR category = $6) GROUP BY 1
         ), ev AS (
             SELECT date_bin($3, e.at, 'epoch') AS at,
                    count(*) FILTER (WHERE e.type = 'attempt' AND e.status = 'sent') AS sent,
                    count(*) FILTER (WHERE e.type = 'receipt' AND e.status = 'delivered') AS delivered,
                    count(*) FILTER (WHERE e.status = 'failed') AS failed"
    };
}

macro_rules! throughput_end {
    () => {
        " GROUP BY 1
         )
         SELECT b.at, coalesce(acc.n, 0) AS accepted, coalesce(ev.sent, 0) AS sent,
                coalesce(ev.delivered, 0) AS delivered, coalesce(ev.failed, 0) AS failed
         FROM buckets b LEFT JOIN acc ON acc.at = b.at LEFT JOIN ev ON ev.at = b.at ORDER BY b.at"
    };
}

pub const THROUGHPUT_SQL: &str = concat!(
    throughput_buckets!(),
    " FROM notification_events e
             WHERE e.at >= $1 AND (e.type IN ('attempt', 'receipt', 'expired') AND e.status IS NOT NULL)",
    throughput_end!()
);

pub const TENANT_THROUGHPUT_SQL: &str = concat!(
    throughput_buckets!(),
    " FROM notifications n JOIN notification_events e ON e.notification_id = n.id
             WHERE n.tenant_id = $2 AND n.id >= $5 AND e.at >= $1
               AND (e.type IN ('attempt', 'receipt', 'expired') AND e.status IS NOT NULL)",
    throughput_end!()
);

/// `TENANT_THROUGHPUT_SQL` for one category's notifications (`$6`), of one tenant or of all.
pub const CATEGORY_THROUGHPUT_SQL: &str = concat!(
    throughput_buckets!(),
    " FROM notifications n JOIN notification_events e ON e.notification_id = n.id
             WHERE ($2::uuid IS NULL OR n.tenant_id = $2) AND n.category = $6 AND n.id >= $5 AND e.at >= $1
               AND (e.type IN ('attempt', 'receipt', 'expired') AND e.status IS NOT NULL)",
    throughput_end!()
);

pub const FAILURES_SQL: &str = "SELECT id, channel, recipient_key, provider, last_error, updated_at FROM notifications
         WHERE indexed_status = 'failed' AND ($1::uuid IS NULL OR tenant_id = $1)
           AND ($2::text IS NULL OR category = $2)
         ORDER BY id DESC LIMIT 10";

/// Send jobs by lane: each lane's waiting work by the claim index, what is being sent by the
/// lease index. `$1` is the lanes' queues, `$2` their priorities; `$3` a tenant, or NULL.
pub const LANES_SQL: &str = "SELECT l.q AS queue, l.p AS priority, w.waiting, w.due, r.running, w.oldest
         FROM unnest($1::text[], $2::smallint[]) AS l(q, p)
         CROSS JOIN LATERAL (
             SELECT count(*) AS waiting, count(*) FILTER (WHERE j.run_at <= now()) AS due,
                    extract(epoch FROM now() - min(j.run_at) FILTER (WHERE j.run_at <= now()))::float8 AS oldest
             FROM jobs j
             WHERE j.state = 'available' AND j.queue = l.q AND j.priority = l.p
               AND ($3::uuid IS NULL OR j.tenant_id = $3)
         ) w
         CROSS JOIN LATERAL (
             SELECT count(*) AS running FROM jobs j
             WHERE j.state = 'running' AND j.queue = l.q AND j.priority = l.p AND ($3::uuid IS NULL OR j.tenant_id = $3)
         ) r
         WHERE w.waiting > 0 OR r.running > 0
         ORDER BY l.q, l.p";

pub const STUCK_SQL: &str = "SELECT count(*) FROM jobs j WHERE j.state = 'running' AND j.leased_until < now()
           AND ($1::uuid IS NULL OR j.tenant_id = $1)";

/// The bucket width of the throughput chart for a window: about 60 buckets.
pub fn bucket_for(window: Duration) -> Duration {
    let secs = (window.whole_seconds() / 60).max(5);
    // Round to a width people read: 5 s, 1 min, 15 min, 1 h, 3 h…
    [5, 10, 30, 60, 300, 900, 1800, 3600, 10_800, 21_600]
        .into_iter()
        .find(|w| *w >= secs)
        .map_or(Duration::seconds(secs), Duration::seconds)
}

/// The window a snapshot reads: from `since` to `now`, for one tenant or every tenant.
/// `floor` is the smallest notification id created at `since` (ids are time-ordered).
struct Window<'a> {
    now: OffsetDateTime,
    since: OffsetDateTime,
    floor: uuid::Uuid,
    tenant: Option<uuid::Uuid>,
    /// Only this category's notifications (their queue is not told apart: lanes and stuck jobs
    /// are the tenant's whatever the category).
    category: Option<&'a str>,
}

/// Read the snapshot of the window ending now, for `tenant` (or every tenant) and `category`
/// (or every notification), each statement cancelled past `timeout`.
#[tracing::instrument(name = "store.stats.snapshot", skip_all)]
pub async fn snapshot(
    pool: &PgPool,
    window: Duration,
    tenant: Option<TenantId>,
    category: Option<&str>,
    timeout: std::time::Duration,
) -> StoreResult<Snapshot> {
    let now = OffsetDateTime::now_utc();
    let since = now - window;
    let floor = NotificationId::floor_at(since);
    let w = Window { now, since, floor, tenant: tenant.map(|t| t.as_uuid()), category };
    let mut tx = super::read_tx(pool, timeout).await?;
    let conn = &mut *tx;
    let counts = counts(conn, &w).await?;
    let (accepted_to_sent, accepted_to_delivered) = latencies(conn, &w).await?;
    let attempts = attempts(conn, &w).await?;
    let throughput = throughput(conn, &w, bucket_for(window)).await?;
    let queue = lanes(&mut *conn, tenant).await?;
    let stuck = stuck(&mut *conn, tenant).await?;
    let recent_failures = recent_failures(conn, &w).await?;
    Ok(Snapshot {
        counts,
        accepted_to_sent,
        accepted_to_delivered,
        attempts,
        throughput,
        queue,
        stuck,
        recent_failures,
    })
}

/// Notifications created in the window, by status, channel and provider.
async fn counts(conn: &mut PgConnection, w: &Window<'_>) -> StoreResult<Vec<CountRow>> {
    let rows = sqlx::query(COUNTS_SQL).bind(w.floor).bind(w.tenant).bind(w.category).fetch_all(&mut *conn).await?;
    let rows = rows.into_iter().map(|r| {
        Ok(CountRow {
            status: r.try_get("status")?,
            channel: r.try_get("channel")?,
            provider: r.try_get("provider")?,
            count: r.try_get("n")?,
        })
    });
    Ok(rows.collect::<Result<Vec<_>, sqlx::Error>>()?)
}

/// From acceptance to the first `sent`, and to `delivered`: count and percentiles.
async fn latencies(conn: &mut PgConnection, w: &Window<'_>) -> StoreResult<(Latency, Latency)> {
    let rows = match (w.tenant, w.category) {
        (None, None) => sqlx::query(LATENCY_SQL).bind(w.since).fetch_all(&mut *conn).await?,
        (Some(t), None) => {
            sqlx::query(TENANT_LATENCY_SQL).bind(w.since).bind(t).bind(w.floor).fetch_all(&mut *conn).await?
        }
        (t, Some(c)) => {
            let q = sqlx::query(CATEGORY_LATENCY_SQL).bind(w.since).bind(t).bind(w.floor).bind(c);
            q.fetch_all(&mut *conn).await?
        }
    };
    let (mut accepted_to_sent, mut accepted_to_delivered) = (Latency::default(), Latency::default());
    for r in rows {
        let p: Vec<f64> = r.try_get("p")?;
        let l =
            Latency { count: r.try_get("n")?, p50: p.first().copied(), p90: p.get(1).copied(), p99: p.get(2).copied() };
        match r.try_get::<String, _>("type")?.as_str() {
            "attempt" => accepted_to_sent = l,
            _ => accepted_to_delivered = l,
        }
    }
    Ok((accepted_to_sent, accepted_to_delivered))
}

/// Provider calls in the window, and how many failed, by provider.
async fn attempts(conn: &mut PgConnection, w: &Window<'_>) -> StoreResult<Vec<AttemptRow>> {
    let rows = match (w.tenant, w.category) {
        (None, None) => sqlx::query(ATTEMPTS_SQL).bind(w.since).fetch_all(&mut *conn).await?,
        (Some(t), None) => {
            sqlx::query(TENANT_ATTEMPTS_SQL).bind(w.since).bind(t).bind(w.floor).fetch_all(&mut *conn).await?
        }
        (t, Some(c)) => {
            let q = sqlx::query(CATEGORY_ATTEMPTS_SQL).bind(w.since).bind(t).bind(w.floor).bind(c);
            q.fetch_all(&mut *conn).await?
        }
    };
    let rows = rows.into_iter().map(|r| {
        Ok(AttemptRow {
            provider: r.try_get("provider")?,
            attempts: r.try_get("attempts")?,
            failed: r.try_get("failed")?,
        })
    });
    Ok(rows.collect::<Result<Vec<_>, sqlx::Error>>()?)
}

/// Accepted, sent, delivered and failed per bucket of `width`.
async fn throughput(conn: &mut PgConnection, w: &Window<'_>, width: Duration) -> StoreResult<Vec<Bucket>> {
    let sql = match (w.tenant, w.category) {
        (None, None) => THROUGHPUT_SQL,
        (Some(_), None) => TENANT_THROUGHPUT_SQL,
        (_, Some(_)) => CATEGORY_THROUGHPUT_SQL,
    };
    let rows = sqlx::query(sql)
        .bind(w.since)
        .bind(w.tenant)
        .bind(pg_interval(width))
        .bind(w.now)
        .bind(w.floor)
        .bind(w.category)
        .fetch_all(&mut *conn)
        .await?;
    let rows = rows.into_iter().map(|r| {
        Ok(Bucket {
            at: r.try_get("at")?,
            accepted: r.try_get("accepted")?,
            sent: r.try_get("sent")?,
            delivered: r.try_get("delivered")?,
            failed: r.try_get("failed")?,
        })
    });
    Ok(rows.collect::<Result<Vec<_>, sqlx::Error>>()?)
}

/// The latest failures, their recipients masked.
async fn recent_failures(conn: &mut PgConnection, w: &Window<'_>) -> StoreResult<Vec<Failure>> {
    let rows = sqlx::query(FAILURES_SQL).bind(w.tenant).bind(w.category).fetch_all(&mut *conn).await?;
    let rows = rows.into_iter().map(|r| {
        Ok(Failure {
            id: NotificationId::from_uuid(r.try_get("id")?),
            channel: r.try_get("channel")?,
            to: mask(&r.try_get::<String, _>("recipient_key")?),
            provider: r.try_get("provider")?,
            error: r.try_get("last_error")?,
            at: r.try_get("updated_at")?,
        })
    });
    Ok(rows.collect::<Result<Vec<_>, sqlx::Error>>()?)
}

/// The send lanes, for `LANES_SQL`: their queues and priorities.
pub fn lane_keys() -> (Vec<&'static str>, Vec<i16>) {
    Priority::ALL.iter().flat_map(|p| Channel::ALL.map(|c| (c.as_str(), p.lane()))).unzip()
}

/// Send jobs by lane (channel and priority): by the claim index (waiting) and the lease
/// index (running). For the dashboard and the `herald_queue_*` gauges.
pub async fn lanes(conn: &mut PgConnection, tenant: Option<TenantId>) -> StoreResult<Vec<LaneRow>> {
    let (queues, priorities) = lane_keys();
    Ok(sqlx::query(LANES_SQL)
        .bind(queues)
        .bind(priorities)
        .bind(tenant.map(|t| t.as_uuid()))
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| {
            let lane: i16 = r.try_get("priority")?;
            Ok(LaneRow {
                channel: r.try_get("queue")?,
                priority: Priority::ALL.into_iter().find(|p| p.lane() == lane).map_or("?", Priority::as_str).to_owned(),
                waiting: r.try_get("waiting")?,
                due: r.try_get("due")?,
                running: r.try_get("running")?,
                oldest_due_age_seconds: r.try_get("oldest")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?)
}

/// Jobs whose lease ran out without an outcome.
pub async fn stuck(conn: &mut PgConnection, tenant: Option<TenantId>) -> StoreResult<i64> {
    Ok(sqlx::query_scalar(STUCK_SQL).bind(tenant.map(|t| t.as_uuid())).fetch_one(&mut *conn).await?)
}

fn pg_interval(d: Duration) -> sqlx::postgres::types::PgInterval {
    sqlx::postgres::types::PgInterval { months: 0, days: 0, microseconds: d.whole_microseconds() as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_make_about_sixty_points() {
        assert_eq!(bucket_for(Duration::minutes(5)), Duration::seconds(5));
        assert_eq!(bucket_for(Duration::hours(1)), Duration::minutes(1));
        assert_eq!(bucket_for(Duration::hours(24)), Duration::minutes(30));
        assert_eq!(bucket_for(Duration::days(7)), Duration::hours(3));
    }
}
