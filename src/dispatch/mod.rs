//! The dispatcher: claims due jobs, sends each through its channel's provider, and records the
//! outcome through `store::tracking`. One job is one send. The container loop (`run`), tests
//! (`run_once`) and a Lambda invocation (`drain`) share `claim_batch` and `process`. The
//! phases of one job live beside this loop: `send` (one send, in typed phases from the claim
//! to the written outcome), `callbacks` (one status callback).
//!
//! Invariants:
//! * no row lock is held across a provider call: the claim commits first, and the lease plus its
//!   fencing token protect the job while the call runs;
//! * every send is bounded by a timeout inside the lease, so a live worker finishes (or gives
//!   up) before anyone may rescue its job;
//! * a job whose outcome could not be recorded keeps its lease and is rescued when it expires:
//!   delivery is at-least-once, never at-most-once by accident.

pub mod callbacks;
mod send;
mod wake;

use wake::Wake;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::batching::{Coalescer, Limits};
use crate::config::{CallbackSettings, DispatchSettings, OnUnknown, RetentionSettings, Settings};
use crate::domain::Channel;
use crate::domain::Priority;
use crate::domain::TenantId;
use crate::domain::retry::RetryPolicy;
use crate::fair::FairGate;
use crate::providers::Registry;
use crate::store::StoreError;
use crate::store::tracking::receipt::Recorded;
use crate::store::tracking::{self, Applied, Bounds, Claimed, Completion, Lane};

/// Claimed jobs a dispatcher holds per send slot (`dispatch.concurrency`): measured with the
/// `log` provider, 4 gave about a quarter more throughput than 1 (claims overlap completions).
const HELD_PER_SEND_SLOT: usize = 4;

/// Free slots at which the next batch is claimed while every slot is busy: a quarter of a
/// batch, rather than one job each time one send ends.
fn refill_at(s: &DispatchSettings) -> usize {
    (s.batch_size.min(s.concurrency) / 4).max(1)
}

/// The part of a lease a send may use (from claim to the provider's answer), so a live send is
/// never rescued; a paced send may spend half of it waiting for its turn.
const SEND_BUDGET_OF_LEASE: f64 = 0.8;

/// How long a claimed job may wait for its provider's pacer: what the claim of a paced
/// channel is sized to.
fn pacing_window(lease: Duration) -> Duration {
    lease.mul_f64(SEND_BUDGET_OF_LEASE / 2.0)
}

/// What a run did, by outcome. Serialized, the answer of a Lambda worker invocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub claimed: u64,
    pub sent: u64,
    pub retried: u64,
    pub failed: u64,
    pub expired: u64,
    /// Completions refused because the lease had been lost.
    pub fenced: u64,
    pub rescued: u64,
    /// Claimed but put back without a provider call (every circuit open, pacing).
    pub deferred: u64,
    pub callbacks_delivered: u64,
    /// Callback attempts that failed (retried later or given up).
    pub callbacks_failed: u64,
}

impl Summary {
    fn add(&mut self, o: Ended) {
        match o {
            Ended::Sent => self.sent += 1,
            Ended::Retried => self.retried += 1,
            Ended::Failed => self.failed += 1,
            Ended::Expired => self.expired += 1,
            Ended::Fenced => self.fenced += 1,
            Ended::Deferred => self.deferred += 1,
            Ended::CallbackDelivered => self.callbacks_delivered += 1,
            Ended::CallbackRetried | Ended::CallbackFailed => self.callbacks_failed += 1,
            Ended::Unrecorded => {}
        }
    }
}

/// How the work on one claimed job ended: what `Summary` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Sent,
    Retried,
    Failed,
    Expired,
    Fenced,
    /// Put back without calling a provider (open circuits, pacing); not an attempt.
    Deferred,
    CallbackDelivered,
    CallbackRetried,
    CallbackFailed,
    /// The outcome could not be written; the lease will lapse and the job be rescued.
    Unrecorded,
}

#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// Provider calls in flight: `dispatch.concurrency`, taken in turn by tenant, so one
    /// tenant's waiting backlog does not hold back another tenant's message.
    sends: FairGate<TenantId>,
    /// Status callbacks in flight, by tenant: the claim keeps them within
    /// `callbacks.concurrency` and `callbacks.per_tenant_concurrency`, apart from the sends.
    callbacks_in_flight: Mutex<HashMap<TenantId, i64>>,
    /// Bytes of content (and metadata) of the sends claimed and not yet finished: claims stay
    /// within `dispatch.max_held_bytes`.
    held_bytes: AtomicI64,
    /// Cancelled when `run` stops: jobs not yet handed to a provider are given back.
    stopping: CancellationToken,
    /// Outcomes of concurrent sends, written together (`tracking::complete`).
    completions: Coalescer<Completion, Result<Applied, StoreError>>,
    /// Sends just recorded whose early receipts are applied together
    /// (`tracking::receipt::apply_early`), after and apart from the records.
    early_receipts: Coalescer<Recorded, ()>,
    /// Sends claimed and not yet finished, by channel (`Channel::index`): a paced channel is
    /// not handed more than its providers admit within a lease.
    in_flight: [AtomicUsize; 3],
    /// By channel (`Channel::index`): whether an attempt of unknown outcome is tried again
    /// (`channels.X.on_unknown`).
    retry_unknown: [bool; 3],
    /// The throttles and quotas a first attempt must fit in.
    send_limits: send::SendLimits,
    registry: Arc<Registry>,
    settings: DispatchSettings,
    retention: RetentionSettings,
    callbacks: CallbackSettings,
    /// For status callbacks: never follows redirects (a 3xx is a failed delivery), and connects
    /// only to public addresses unless `callbacks.allow_private_networks`.
    http: reqwest::Client,
    worker_id: String,
    /// Where wake-ups are listened for (see `listen_options`).
    listen_url: Listen,
}

/// Where `LISTEN` connects.
enum Listen {
    /// The dispatcher's pool's database.
    Pool,
    /// PostgreSQL itself, past a transaction pooler (`database.direct_url`).
    Direct(String),
    /// Behind a pooler with no direct URL: nowhere.
    Off,
}

impl Dispatcher {
    pub fn new(pool: PgPool, registry: Arc<Registry>, settings: &Settings) -> Self {
        // `App::dispatcher` builds the client where a failure is an error; here (tests,
        // embedders) failing means TLS cannot be set up at all, which building the registry
        // would have reported first. A default client would follow redirects and call private
        // addresses, so there is no fallback.
        let http = crate::providers::public_net::client(settings.callbacks.allow_private_networks)
            .expect("an HTTP client for status callbacks");
        Self::with_callback_client(pool, registry, settings, http)
    }

    /// `new` with the client status callbacks are sent with (tests give one whose resolver
    /// answers with addresses of their choosing: `public_net::client_with`).
    pub fn with_callback_client(
        pool: PgPool,
        registry: Arc<Registry>,
        settings: &Settings,
        http: reqwest::Client,
    ) -> Self {
        let worker_id = format!("{}:{}", hostname(), uuid::Uuid::new_v4().simple());
        let writer_pool = pool.clone();
        let completions = Coalescer::new(
            // Two writers: one gathers outcomes while the other's statement runs.
            Limits { max_items: 500, max_writers: 2, linger: Duration::ZERO },
            move |items: Vec<Completion>| {
                let pool = writer_pool.clone();
                async move { write_completions(&pool, &items).await }
            },
        );
        let early_pool = pool.clone();
        let early_receipts = Coalescer::new(
            Limits { max_items: 500, max_writers: 1, linger: Duration::ZERO },
            move |items: Vec<Recorded>| {
                let pool = early_pool.clone();
                async move {
                    let res = async {
                        let mut conn = crate::store::session(&pool).await?;
                        let done = tracking::receipt::apply_early(&mut conn, &items).await?;
                        conn.finish().await?;
                        Ok::<_, StoreError>(done)
                    }
                    .await;
                    if let Err(e) = res {
                        // The sends are recorded: the receipts stay in the inbox, held or unmatched.
                        warn!(error = %e, "could not apply receipts that came before their send was recorded");
                    }
                    vec![(); items.len()]
                }
            },
        );
        Self {
            inner: Arc::new(Inner {
                pool,
                completions,
                early_receipts,
                sends: FairGate::new(settings.dispatch.concurrency),
                callbacks_in_flight: Mutex::default(),
                held_bytes: AtomicI64::new(0),
                stopping: CancellationToken::new(),
                in_flight: Default::default(),
                retry_unknown: Channel::ALL.map(|c| settings.on_unknown(c) == OnUnknown::Retry),
                send_limits: send::SendLimits::new(Channel::ALL.map(|c| settings.channels.get(c).send_limits())),
                registry,
                settings: settings.dispatch.clone(),
                retention: settings.retention.clone(),
                callbacks: settings.callbacks.clone(),
                http,
                worker_id,
                listen_url: match (settings.database.transaction_pooler, settings.database.direct_url.is_empty()) {
                    (false, _) => Listen::Pool,
                    (true, false) => Listen::Direct(settings.database.direct_url.expose().to_owned()),
                    (true, true) => Listen::Off,
                },
            }),
        }
    }

    fn policy(&self, max_attempts: i32) -> RetryPolicy {
        let s = &self.inner.settings;
        RetryPolicy {
            base: Duration::from_millis(s.retry_base_ms),
            max: Duration::from_millis(s.retry_max_ms),
            max_attempts: u32::try_from(max_attempts).unwrap_or(1),
        }
    }

    async fn refresh_quotas(&self) {
        self.inner.send_limits.refresh(&self.inner.pool).await;
    }

    /// Rescue expired leases, claim one batch, send it, and wait for every send to finish.
    pub async fn run_once(&self) -> Result<Summary, StoreError> {
        let mut summary = Summary { rescued: self.rescue().await?, ..Summary::default() };
        self.refresh_quotas().await;
        let limit = self.inner.settings.batch_size.min(self.inner.settings.concurrency);
        let jobs = self.claim_batch(limit).await?;
        summary.claimed = jobs.len() as u64;
        let mut set = JoinSet::new();
        for job in jobs {
            let this = self.clone();
            set.spawn(async move { this.process_work(job, None).await });
        }
        while let Some(res) = set.join_next().await {
            summary.add(res.unwrap_or(Ended::Unrecorded));
        }
        Ok(summary)
    }

    /// Send due work until none is left or `deadline - margin` is reached (Lambda worker mode).
    /// Each send is bounded by the time left before the deadline. Like `run`, it claims the
    /// next batch while the last one's outcomes are being written, so that an invocation drains
    /// as fast as a long-running worker (a benchmark row); it returns once nothing it claimed
    /// is still in flight.
    pub async fn drain(&self, deadline: Instant, margin: Duration) -> Result<Summary, StoreError> {
        let s = &self.inner.settings;
        let mut summary = Summary { rescued: self.rescue().await?, ..Summary::default() };
        self.prune().await;
        self.refresh_quotas().await;
        let slots = Arc::new(Semaphore::new(s.concurrency * HELD_PER_SEND_SLOT));
        let refill_at = refill_at(s);
        let stop_claiming_at = deadline.checked_sub(margin).unwrap_or(deadline);
        // Leave time after the last send to record its outcome before the deadline.
        let send_deadline = deadline.checked_sub(margin.min(Duration::from_millis(500))).unwrap_or(deadline);
        let mut in_flight: JoinSet<Ended> = JoinSet::new();
        let mut nothing_due = false;
        let mut claim_error = None;
        loop {
            while let Some(res) = in_flight.try_join_next() {
                summary.add(res.unwrap_or(Ended::Unrecorded));
            }
            let available = slots.available_permits();
            let may_claim = !nothing_due && claim_error.is_none() && Instant::now() < stop_claiming_at;
            if may_claim && (available >= refill_at || in_flight.is_empty()) {
                let free = available.min(s.batch_size);
                match self.claim_batch(free).await {
                    Ok(jobs) => {
                        nothing_due = jobs.is_empty();
                        let full = jobs.len() == free;
                        summary.claimed += jobs.len() as u64;
                        self.start(jobs, &slots, &mut in_flight, Some(send_deadline)).await;
                        if full {
                            continue; // more may be due right now
                        }
                    }
                    // Sends under way still finish and record their outcomes.
                    Err(e) => claim_error = Some(e),
                }
            }
            match in_flight.join_next().await {
                Some(res) => summary.add(res.unwrap_or(Ended::Unrecorded)),
                None if nothing_due || claim_error.is_some() || Instant::now() >= stop_claiming_at => break,
                None => {}
            }
        }
        match claim_error {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }

    /// Start the work of each claimed job, each holding one of `slots` until it ends (`deadline`:
    /// a Lambda invocation's, bounding each send).
    async fn start(
        &self,
        jobs: Vec<Claimed>,
        slots: &Arc<Semaphore>,
        in_flight: &mut JoinSet<Ended>,
        deadline: Option<Instant>,
    ) {
        for job in jobs {
            let Ok(permit) = slots.clone().acquire_owned().await else { break };
            let this = self.clone();
            in_flight.spawn(async move {
                let outcome = this.process_work(job, deadline).await;
                drop(permit);
                outcome
            });
        }
    }

    /// The long-running loop: claim whenever there are free slots and due work, wake on
    /// `LISTEN/NOTIFY` or the poll interval, and on `cancel` stop claiming and give in-flight
    /// sends `shutdown_grace_ms` to finish.
    pub async fn run(&self, cancel: CancellationToken) {
        let s = &self.inner.settings;
        // Jobs held at once: sending, waiting for a turn to send, or having their outcome
        // written. More than `concurrency`, so the next batch is claimed while the last one's
        // outcomes are still being written (claim and completion statements overlap).
        let slots = Arc::new(Semaphore::new(s.concurrency * HELD_PER_SEND_SLOT));
        let mut in_flight: JoinSet<Ended> = JoinSet::new();
        let mut wake = Wake::new(self.listen_options()).await;
        let rescue_every = Duration::from_millis(s.rescue_interval_ms);
        let mut next_rescue = Instant::now();
        let poll = Duration::from_millis(s.poll_interval_ms);
        let refill_at = refill_at(s);
        info!(worker = %self.inner.worker_id, concurrency = s.concurrency, "dispatcher started");

        loop {
            if cancel.is_cancelled() {
                break;
            }
            while let Some(res) = in_flight.try_join_next() {
                if let Err(e) = res {
                    error!(error = %e, "dispatch task failed");
                }
            }
            if Instant::now() >= next_rescue {
                if let Err(e) = self.rescue().await {
                    warn!(error = %e, "lease rescue failed");
                }
                self.prune().await;
                self.refresh_quotas().await;
                wake.reconnect_if_lost().await;
                next_rescue = Instant::now() + rescue_every;
            }

            // Claim in batches: with every slot busy, wait until a quarter of a batch is free
            // rather than claiming one job each time one send ends.
            let available = slots.available_permits();
            let free = if available >= refill_at || in_flight.is_empty() { available.min(s.batch_size) } else { 0 };
            let mut claimed = 0;
            if free > 0 {
                match self.claim_batch(free).await {
                    Ok(jobs) => {
                        claimed = jobs.len();
                        self.start(jobs, &slots, &mut in_flight, None).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "claim failed; backing off");
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            () = tokio::time::sleep(poll) => {}
                        }
                        continue;
                    }
                }
            }
            if free > 0 && claimed == free {
                continue; // a full batch: more may be due right now
            }
            let waiting_for_slot = free == 0;
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                _ = in_flight.join_next(), if waiting_for_slot && !in_flight.is_empty() => {}
                () = wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }

        while in_flight.try_join_next().is_some() {}
        // Jobs still waiting for their turn are given back now; sends under way get the grace.
        self.inner.stopping.cancel();
        let grace = Duration::from_millis(s.shutdown_grace_ms);
        info!(in_flight = in_flight.len(), grace_ms = s.shutdown_grace_ms, "dispatcher stopping");
        let finished = tokio::time::timeout(grace, async { while in_flight.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            // Their leases lapse and another worker takes them back: at-least-once.
            warn!(abandoned = in_flight.len(), "in-flight sends did not finish within the grace period");
            in_flight.abort_all();
        }
        info!("dispatcher stopped");
    }

    /// Retention: drop finished notifications and old idempotency keys (a batch per call).
    pub async fn prune(&self) {
        let r = &self.inner.retention;
        match crate::store::retention::prune(&self.inner.pool, r.notifications_days, r.idempotency_hours).await {
            Ok(p) if p != Default::default() => {
                info!(notifications = p.notifications, idempotency_keys = p.idempotency_keys, "pruned past retention");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "pruning failed"),
        }
    }

    async fn rescue(&self) -> Result<u64, StoreError> {
        let n = tracking::rescue_expired(&self.inner.pool, 1000).await?;
        if n > 0 {
            crate::metrics::rescued(n);
            warn!(rescued = n, "took back jobs whose lease expired");
        }
        Ok(n)
    }

    /// Claim up to `limit` jobs, shared fairly between the lanes and, inside each, between
    /// tenants (`tracking::claim`). A channel whose every provider is paced gets no more than
    /// they admit within a lease, less what it already has in flight; one whose every circuit
    /// is open gets none until the first cool-down ends (claiming it would only put the jobs
    /// back); and no send is claimed past `dispatch.max_held_bytes` of content held. Callbacks
    /// get their own budget, per process and per tenant.
    async fn claim_batch(&self, limit: usize) -> Result<Vec<Claimed>, StoreError> {
        let s = &self.inner.settings;
        let lease = s.lease();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let held = self.inner.held_bytes.load(Ordering::Relaxed);
        let room = i64::try_from(s.max_held_bytes).unwrap_or(i64::MAX).saturating_sub(held);
        let mut lanes = Vec::with_capacity(10);
        for p in Priority::ALL {
            for c in Channel::ALL {
                let cap = if room <= 0 || self.inner.registry.closed_for(c).is_some() {
                    0
                } else {
                    match self.inner.registry.admits_within(c, pacing_window(lease)) {
                        Some(admits) => {
                            let busy = self.inner.in_flight[c.index()].load(Ordering::Relaxed);
                            i64::try_from(admits.saturating_sub(busy)).unwrap_or(0).min(limit)
                        }
                        None => limit,
                    }
                };
                lanes.push(Lane::send(c, p, cap));
            }
        }
        let busy: Vec<(&'static str, TenantId, i64)> =
            self.callbacks_in_flight().iter().map(|(t, n)| (tracking::claim::CALLBACK_QUEUE, *t, *n)).collect();
        let total: i64 = busy.iter().map(|(_, _, n)| n).sum();
        let cb = &self.inner.callbacks;
        let cb_room = i64::try_from(cb.concurrency).unwrap_or(i64::MAX).saturating_sub(total).clamp(0, limit);
        lanes.push(Lane::callbacks(cb_room, i64::try_from(cb.per_tenant_concurrency).unwrap_or(i64::MAX)));
        let bounds = Bounds { limit, bytes: room.max(1), busy: &busy };
        // Committed before any of it is sent (behind a pooler the session is a transaction).
        let mut conn = crate::store::session(&self.inner.pool).await?;
        let work = tracking::claim_within(&mut conn, &lanes, bounds, lease, &self.inner.worker_id).await?;
        conn.finish().await?;
        for w in &work {
            match w {
                Claimed::Send(job) => {
                    self.inner.in_flight[job.channel.index()].fetch_add(1, Ordering::Relaxed);
                    self.inner.held_bytes.fetch_add(job.size_bytes, Ordering::Relaxed);
                }
                Claimed::Callback(cb) => *self.callbacks_in_flight().entry(cb.tenant_id).or_default() += 1,
            }
        }
        if !work.is_empty() {
            debug!(claimed = work.len(), "claimed jobs");
        }
        Ok(work)
    }

    /// Where `LISTEN` connects: the dispatcher's own database, or behind a transaction pooler
    /// `database.direct_url` (without it, none: wake-ups poll).
    fn listen_options(&self) -> Option<sqlx::postgres::PgConnectOptions> {
        if !self.inner.settings.listen_notify {
            return None;
        }
        match &self.inner.listen_url {
            Listen::Pool => Some((*self.inner.pool.connect_options()).clone()),
            Listen::Direct(url) => match url.parse() {
                Ok(o) => Some(o),
                Err(e) => {
                    warn!(error = %e, "database.direct_url cannot be read; wake-ups poll");
                    None
                }
            },
            Listen::Off => {
                info!(
                    "behind a transaction pooler without database.direct_url: no LISTEN, wake-ups poll every dispatch.poll_interval_ms"
                );
                None
            }
        }
    }

    fn callbacks_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, i64>> {
        self.inner.callbacks_in_flight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn process_work(&self, work: Claimed, deadline: Option<Instant>) -> Ended {
        match work {
            Claimed::Send(job) => {
                let (channel, size) = (job.channel, job.size_bytes);
                let outcome = self.process(job, deadline).await;
                self.inner.in_flight[channel.index()].fetch_sub(1, Ordering::Relaxed);
                self.inner.held_bytes.fetch_sub(size, Ordering::Relaxed);
                outcome
            }
            Claimed::Callback(cb) => {
                let tenant = cb.tenant_id;
                let span = info_span!("callback", notification.id = %cb.notification_id, attempt = cb.attempt);
                let outcome = self.deliver_callback(cb, deadline).instrument(span).await;
                let mut busy = self.callbacks_in_flight();
                if let Some(n) = busy.get_mut(&tenant) {
                    *n -= 1;
                    if *n <= 0 {
                        busy.remove(&tenant);
                    }
                }
                outcome
            }
        }
    }
}

/// Write concurrent outcomes together. One the database refuses as it is fails alone
/// (`store::isolating`), and is written again without the provider's details
/// (`Completion::plain`), so that it is recorded rather than left `sending` and sent again.
/// Any other failure is each caller's to retry (`with_retries`), in a later batch.
async fn write_completions(pool: &PgPool, items: &[Completion]) -> Vec<Result<Applied, StoreError>> {
    let whole = complete_committed(pool, items).await;
    let mut results = crate::store::isolating(items, whole, |chunk| {
        let pool = pool.clone();
        Box::pin(async move { complete_committed(&pool, chunk).await })
    })
    .await;
    for (item, result) in items.iter().zip(results.iter_mut()) {
        let Err(e) = result else { continue };
        if !crate::store::is_data_error(e) {
            continue;
        }
        warn!(error = %e, notification.id = %item.lease.notification_id, "an outcome could not be stored as it was; storing it without the provider's details");
        let plain = item.plain(&e.to_string());
        *result = complete_committed(pool, std::slice::from_ref(&plain))
            .await
            .and_then(|mut a| a.pop().ok_or_else(|| StoreError::Corrupt("no result for an outcome".into())));
    }
    results
}

/// `tracking::complete` in a session of its own, committed (behind a pooler the session is a
/// transaction).
async fn complete_committed(pool: &PgPool, items: &[Completion]) -> Result<Vec<Applied>, StoreError> {
    let mut conn = crate::store::session(pool).await?;
    let done = tracking::complete(&mut conn, items).await?;
    conn.finish().await?;
    Ok(done)
}

fn hostname() -> String {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "herald".into())
}
