//! `GET /v1/stats?window=1h`: what the dashboard shows, as JSON. A key with `read` sees its
//! tenant's notifications; `admin` sees every tenant's. Snapshots are cached per tenant and
//! window for a couple of seconds, so that many open dashboards cost what one does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::AppState;
use super::auth::require;
use super::extract::Params;
use super::problem::ApiError;
use super::schemas::Problem;
use crate::domain::TenantId;
use crate::domain::notification::{CATEGORY_RULE, is_category};
use crate::store::StoreError;
use crate::store::keys::{Caller, Scope};
use crate::store::stats::{self, Snapshot};

/// The windows offered, by name.
pub(super) const WINDOWS: [(&str, time::Duration); 4] = [
    ("5m", time::Duration::minutes(5)),
    ("1h", time::Duration::hours(1)),
    ("24h", time::Duration::hours(24)),
    ("7d", time::Duration::days(7)),
];

/// The window when none is asked for.
pub(super) const DEFAULT_WINDOW: &str = "1h";

/// How long a snapshot is served again before it is read anew. Snapshots are read through
/// the reads' own pool (`database.read_max_connections`) under a statement timeout, so however
/// many keys ask, they never take the connections accepts need.
const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// Whose stats, over which window, of which category.
type CacheKey = (Option<TenantId>, &'static str, Option<String>);

/// One snapshot: read once by whoever asks first, shared with everyone who asks while it is
/// read (single flight) and for `CACHE_FOR` after.
type Slot = Arc<tokio::sync::OnceCell<(Instant, Arc<Snapshot>)>>;

/// Recent snapshots, and those being read.
#[derive(Default)]
pub struct StatsCache {
    entries: Mutex<HashMap<CacheKey, Slot>>,
}

impl StatsCache {
    async fn get(
        &self,
        state: &AppState,
        tenant: Option<TenantId>,
        window: (&'static str, time::Duration),
        category: Option<&str>,
    ) -> Result<Arc<Snapshot>, ApiError> {
        let timeout = std::time::Duration::from_millis(state.settings.server.request_timeout_ms);
        let read = stats::snapshot(&state.reads, window.1, tenant, category, timeout);
        Ok(self.get_or_read((tenant, window.0, category.map(str::to_owned)), read).await?)
    }

    /// The snapshot of `key`: a fresh one from the cache, else the one being read by another
    /// request, else `read`. Concurrent misses of one key read once.
    async fn get_or_read(
        &self,
        key: CacheKey,
        read: impl Future<Output = Result<Snapshot, StoreError>>,
    ) -> Result<Arc<Snapshot>, StoreError> {
        let slot = {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            // Stale snapshots go; snapshots being read (not set yet) stay, to be shared.
            entries.retain(|_, slot| slot.get().is_none_or(|(at, _)| at.elapsed() < CACHE_FOR));
            Arc::clone(entries.entry(key).or_default())
        };
        // A failed read leaves the slot empty: the next waiter reads again.
        let (_, snap) =
            slot.get_or_try_init(|| async { Ok::<_, StoreError>((Instant::now(), Arc::new(read.await?))) }).await?;
        Ok(Arc::clone(snap))
    }
}

/// `GET /v1/stats`'s parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsQuery {
    window: Option<String>,
    category: Option<String>,
}

/// What happened over a window: counts, latency, attempts, queue and recent failures.
#[utoipa::path(get, path = "/v1/stats", operation_id = "getStats", tag = "operators", security(("api_key" = [])),
    params(("window" = Option<String>, Query, description = "5m, 1h (default), 24h or 7d"),
           ("category" = Option<String>, Query, pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$",
            description = "Only this category's notifications (the queue and stuck jobs are not told apart by category)")),
    responses((status = 200, description = "The window's figures", body = StatsView), (status = 400, response = Problem)))]
pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<StatsQuery>,
) -> Result<Json<StatsView>, ApiError> {
    if !caller.has(Scope::Read) {
        require(&caller, Scope::Admin)?;
    }
    let name = q.window.as_deref().unwrap_or(DEFAULT_WINDOW);
    let window = WINDOWS
        .into_iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| ApiError::bad_parameter("window", format!("`{name}` is not a window; use 5m, 1h, 24h or 7d")))?;
    let category = q.category.as_deref();
    if category.is_some_and(|c| !is_category(c)) {
        return Err(ApiError::bad_parameter("category", CATEGORY_RULE));
    }
    let tenant = caller.tenant_filter();
    let snap = state.stats.get(&state, tenant, window, category).await?;
    let mut view = render(&state, &caller, window, &snap);
    view.category = q.category;
    Ok(Json(view))
}

/// `GET /v1/stats`: what happened over `window`, for one tenant (`tenant`) or, with an admin
/// key, every tenant (`tenant` null). The README's "Operators" section explains each figure.
#[derive(Serialize, ToSchema)]
pub(super) struct StatsView {
    /// `5m`, `1h`, `24h` or `7d`.
    window: String,
    /// The window, RFC 3339 in UTC.
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
    tenant: Option<String>,
    /// The one category the figures are of; null: every notification.
    category: Option<String>,
    notifications: Counts,
    latency_seconds: Latencies,
    /// Provider calls, by provider.
    attempts: Vec<AttemptStats>,
    /// The providers this process routes to, and their circuit breakers.
    providers: Vec<ProviderState>,
    throughput: Throughput,
    /// Send jobs by lane (channel and priority).
    queue: Vec<Lane>,
    /// Jobs whose lease ran out without an answer; the rescuer puts them back.
    stuck: i64,
    /// The latest failures of the window, newest first.
    recent_failures: Vec<FailureView>,
}

/// Notifications created in the window: in all, by status, by channel and status, by
/// provider and status.
#[derive(Serialize, ToSchema)]
struct Counts {
    total: i64,
    by_status: BTreeMap<String, i64>,
    by_channel: BTreeMap<String, BTreeMap<String, i64>>,
    by_provider: BTreeMap<String, BTreeMap<String, i64>>,
}

#[derive(Serialize, ToSchema)]
struct Latencies {
    accepted_to_sent: Latency,
    accepted_to_delivered: Latency,
}

/// Seconds from acceptance to an event, over the events of the window (null percentiles
/// when there were none).
#[derive(Serialize, ToSchema)]
struct Latency {
    count: i64,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
}

#[derive(Serialize, ToSchema)]
struct AttemptStats {
    provider: String,
    attempts: i64,
    /// Attempts that failed (not notifications: a notification may fail over and be sent).
    failed: i64,
    /// `failed / attempts`, 0 to 1.
    failure_rate: f64,
}

#[derive(Serialize, ToSchema)]
struct ProviderState {
    name: String,
    kind: Option<String>,
    /// `closed`, `open` or `half_open`.
    breaker: String,
}

#[derive(Serialize, ToSchema)]
struct Throughput {
    bucket_seconds: i64,
    buckets: Vec<Bucket>,
}

/// What happened in one bucket of the window, from `at`.
#[derive(Serialize, ToSchema)]
struct Bucket {
    #[schema(format = DateTime)]
    at: String,
    accepted: i64,
    sent: i64,
    delivered: i64,
    failed: i64,
}

#[derive(Serialize, ToSchema)]
struct Lane {
    #[schema(value_type = crate::domain::Channel)]
    channel: String,
    #[schema(value_type = crate::domain::Priority)]
    priority: String,
    /// Waiting, due or not.
    waiting: i64,
    /// Waiting and due now.
    due: i64,
    /// Being sent.
    running: i64,
    /// How long the oldest due job has waited, in seconds.
    oldest_due_age_seconds: Option<f64>,
}

#[derive(Serialize, ToSchema)]
struct FailureView {
    #[schema(format = Uuid)]
    id: String,
    #[schema(value_type = crate::domain::Channel)]
    channel: String,
    /// Masked (`a***@example.com`).
    to: String,
    provider: Option<String>,
    error: Option<String>,
    #[schema(format = DateTime)]
    at: String,
}

impl From<&stats::Latency> for Latency {
    fn from(l: &stats::Latency) -> Self {
        Latency { count: l.count, p50: l.p50, p90: l.p90, p99: l.p99 }
    }
}

fn render(state: &AppState, caller: &Caller, window: (&str, time::Duration), s: &Snapshot) -> StatsView {
    let now = OffsetDateTime::now_utc();
    let stamp = crate::store::notifications::rfc3339;
    let mut counts =
        Counts { total: 0, by_status: BTreeMap::new(), by_channel: BTreeMap::new(), by_provider: BTreeMap::new() };
    for c in &s.counts {
        counts.total += c.count;
        *counts.by_status.entry(c.status.clone()).or_default() += c.count;
        *counts.by_channel.entry(c.channel.clone()).or_default().entry(c.status.clone()).or_default() += c.count;
        if let Some(p) = &c.provider {
            *counts.by_provider.entry(p.clone()).or_default().entry(c.status.clone()).or_default() += c.count;
        }
    }
    let attempts = s
        .attempts
        .iter()
        .map(|a| AttemptStats {
            provider: a.provider.clone(),
            attempts: a.attempts,
            failed: a.failed,
            failure_rate: if a.attempts > 0 { a.failed as f64 / a.attempts as f64 } else { 0.0 },
        })
        .collect();
    // Breakers live in the process that sends: known here when this process dispatches too.
    let providers = state
        .registry
        .routes()
        .map(|r| ProviderState {
            name: r.name.clone(),
            kind: state.settings.providers.get(&r.name).map(|p| p.kind().as_str().to_owned()),
            breaker: r.breaker.state_name().to_owned(),
        })
        .collect();
    let buckets = s
        .throughput
        .iter()
        .map(|b| Bucket {
            at: stamp(b.at),
            accepted: b.accepted,
            sent: b.sent,
            delivered: b.delivered,
            failed: b.failed,
        })
        .collect();
    let queue = s
        .queue
        .iter()
        .map(|q| Lane {
            channel: q.channel.clone(),
            priority: q.priority.clone(),
            waiting: q.waiting,
            due: q.due,
            running: q.running,
            oldest_due_age_seconds: q.oldest_due_age_seconds,
        })
        .collect();
    let recent_failures = s
        .recent_failures
        .iter()
        .map(|f| FailureView {
            id: f.id.to_string(),
            channel: f.channel.clone(),
            to: f.to.clone(),
            provider: f.provider.clone(),
            error: f.error.clone(),
            at: stamp(f.at),
        })
        .collect();
    StatsView {
        category: None,
        window: window.0.to_owned(),
        from: stamp(now - window.1),
        to: stamp(now),
        tenant: (!caller.is_admin()).then(|| caller.tenant.clone()),
        notifications: counts,
        latency_seconds: Latencies {
            accepted_to_sent: (&s.accepted_to_sent).into(),
            accepted_to_delivered: (&s.accepted_to_delivered).into(),
        },
        attempts,
        providers,
        throughput: Throughput { bucket_seconds: stats::bucket_for(window.1).whole_seconds(), buckets },
        queue,
        stuck: s.stuck,
        recent_failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn empty() -> Snapshot {
        Snapshot {
            counts: vec![],
            accepted_to_sent: stats::Latency::default(),
            accepted_to_delivered: stats::Latency::default(),
            attempts: vec![],
            throughput: vec![],
            queue: vec![],
            stuck: 0,
            recent_failures: vec![],
        }
    }

    #[tokio::test]
    async fn concurrent_misses_of_one_key_read_once() {
        let cache = Arc::new(StatsCache::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..14 {
            let (cache, reads) = (cache.clone(), reads.clone());
            tasks.push(tokio::spawn(async move {
                let read = async {
                    reads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    Ok(empty())
                };
                cache.get_or_read((None, "7d", None), read).await.expect("snapshot");
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "14 identical requests, one read");
        // Another key is its own read; a failed read is not kept.
        let failed = cache.get_or_read((None, "1h", None), async { Err(StoreError::Unavailable("down".into())) }).await;
        assert!(failed.is_err());
        cache.get_or_read((None, "1h", None), async { Ok(empty()) }).await.expect("read again");
    }
}
