//! The dispatcher: claims due jobs, sends each through its channel's provider, and records the
//! outcome through `store::tracking`. One job is one send. The container loop (`run`), tests
//! (`run_once`) and a Lambda invocation (`drain`) share `claim_batch` and `process`.
//!
//! Invariants:
//! * no row lock is held across a provider call: the claim commits first, and the lease plus its
//!   fencing token protect the job while the call runs;
//! * every send is bounded by a timeout inside the lease, so a live worker finishes (or gives
//!   up) before anyone may rescue its job;
//! * a job whose outcome could not be recorded keeps its lease and is rescued when it expires:
//!   delivery is at-least-once, never at-most-once by accident.

pub mod callbacks;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::batching::{Coalescer, Limits};
use crate::config::{CallbackSettings, DispatchSettings, RetentionSettings, Settings};
use crate::domain::Channel;
use crate::domain::recipient::check_endpoint;
use crate::domain::retry::{Decision, RetryPolicy};
use crate::domain::{Content, Priority, Recipient, Status};
use crate::providers::http::ensure_public;
use crate::providers::resilience::{Admit, Health};
use crate::providers::{OutboundMessage, ProviderError, Registry};
use crate::store::tracking::{self, Applied, Claimed, ClaimedCallback, ClaimedJob, Completion, Lane, Lease};
use crate::store::{StoreError, WAKE_CHANNEL};
use crate::store::{notifications, suppressions};
use crate::views::NotificationView;

/// What a run did, by outcome. Also the JSON summary of a Lambda worker invocation.
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
    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Sent => self.sent += 1,
            Outcome::Retried => self.retried += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Expired => self.expired += 1,
            Outcome::Fenced => self.fenced += 1,
            Outcome::Deferred => self.deferred += 1,
            Outcome::CallbackDelivered => self.callbacks_delivered += 1,
            Outcome::CallbackRetried | Outcome::CallbackFailed => self.callbacks_failed += 1,
            Outcome::Unrecorded => {}
        }
    }
}

/// The attempt a failure belongs to.
#[derive(Clone, Copy)]
struct Attempt {
    lease: Lease,
    number: i32,
    max: i32,
    expires_at: Option<OffsetDateTime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
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
    /// Outcomes of concurrent sends, written together (`tracking::complete`).
    completions: Coalescer<Completion, Result<Applied, StoreError>>,
    /// Sends claimed and not yet finished, by channel (`Channel::index`): a paced channel is
    /// not handed more than its providers admit within a lease.
    in_flight: [AtomicUsize; 3],
    registry: Arc<Registry>,
    settings: DispatchSettings,
    retention: RetentionSettings,
    callbacks: CallbackSettings,
    /// For status callbacks: never follows redirects (a 3xx is a failed delivery).
    http: reqwest::Client,
    worker_id: String,
}

impl Dispatcher {
    pub fn new(pool: PgPool, registry: Arc<Registry>, settings: &Settings) -> Self {
        let worker_id = format!("{}:{}", hostname(), uuid::Uuid::new_v4().simple());
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let writer_pool = pool.clone();
        let completions = Coalescer::new(
            // Two writers: one gathers outcomes while the other's statement runs.
            Limits { max_items: 500, max_writers: 2, linger: Duration::ZERO },
            move |items: Vec<Completion>| {
                let pool = writer_pool.clone();
                async move {
                    let res = async {
                        let mut conn = pool.acquire().await?;
                        tracking::complete(&mut conn, &items).await
                    }
                    .await;
                    match res {
                        Ok(applied) => applied.into_iter().map(Ok).collect(),
                        // Each caller retries on its own (`with_retries`), in a later batch.
                        Err(e) => {
                            let msg = e.to_string();
                            items.iter().map(|_| Err(StoreError::Unavailable(msg.clone()))).collect()
                        }
                    }
                }
            },
        );
        Self {
            inner: Arc::new(Inner {
                pool,
                completions,
                in_flight: Default::default(),
                registry,
                settings: settings.dispatch.clone(),
                retention: settings.retention.clone(),
                callbacks: settings.callbacks.clone(),
                http,
                worker_id,
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

    /// Rescue expired leases, claim one batch, send it, and wait for every send to finish.
    pub async fn run_once(&self) -> Result<Summary, StoreError> {
        let mut summary = Summary { rescued: self.rescue().await?, ..Summary::default() };
        let limit = self.inner.settings.batch_size.min(self.inner.settings.concurrency);
        let jobs = self.claim_batch(limit).await?;
        summary.claimed = jobs.len() as u64;
        let mut set = JoinSet::new();
        for job in jobs {
            let this = self.clone();
            set.spawn(async move { this.process_work(job, None).await });
        }
        while let Some(res) = set.join_next().await {
            summary.add(res.unwrap_or(Outcome::Unrecorded));
        }
        Ok(summary)
    }

    /// Send due work until none is left or `deadline - margin` is reached (Lambda worker mode).
    /// Each send is bounded by the time left before the deadline.
    pub async fn drain(&self, deadline: Instant, margin: Duration) -> Result<Summary, StoreError> {
        let mut summary = Summary { rescued: self.rescue().await?, ..Summary::default() };
        self.prune().await;
        let limit = self.inner.settings.batch_size.min(self.inner.settings.concurrency);
        loop {
            let stop_claiming_at = deadline.checked_sub(margin).unwrap_or(deadline);
            if Instant::now() >= stop_claiming_at {
                break;
            }
            let jobs = self.claim_batch(limit).await?;
            if jobs.is_empty() {
                break;
            }
            summary.claimed += jobs.len() as u64;
            let mut set = JoinSet::new();
            // Leave time after the last send to record its outcome before the deadline.
            let send_deadline = deadline.checked_sub(margin.min(Duration::from_millis(500))).unwrap_or(deadline);
            for job in jobs {
                let this = self.clone();
                set.spawn(async move { this.process_work(job, Some(send_deadline)).await });
            }
            while let Some(res) = set.join_next().await {
                summary.add(res.unwrap_or(Outcome::Unrecorded));
            }
        }
        Ok(summary)
    }

    /// The long-running loop: claim whenever there are free slots and due work, wake on
    /// `LISTEN/NOTIFY` or the poll interval, and on `cancel` stop claiming and give in-flight
    /// sends `shutdown_grace_ms` to finish.
    pub async fn run(&self, cancel: CancellationToken) {
        let s = &self.inner.settings;
        let slots = Arc::new(Semaphore::new(s.concurrency));
        let mut in_flight: JoinSet<Outcome> = JoinSet::new();
        let mut wake = Wake::new(&self.inner.pool, s.listen_notify).await;
        let rescue_every = Duration::from_millis(s.rescue_interval_ms);
        let mut next_rescue = Instant::now();
        let poll = Duration::from_millis(s.poll_interval_ms);
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
                wake.reconnect_if_lost().await;
                next_rescue = Instant::now() + rescue_every;
            }

            let free = slots.available_permits().min(s.batch_size);
            let mut claimed = 0;
            if free > 0 {
                match self.claim_batch(free).await {
                    Ok(jobs) => {
                        claimed = jobs.len();
                        for job in jobs {
                            let Ok(permit) = slots.clone().acquire_owned().await else { break };
                            let this = self.clone();
                            in_flight.spawn(async move {
                                let outcome = this.process_work(job, None).await;
                                drop(permit);
                                outcome
                            });
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "claim failed; backing off");
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(poll) => {}
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
                _ = cancel.cancelled() => break,
                _ = in_flight.join_next(), if waiting_for_slot && !in_flight.is_empty() => {}
                _ = wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }

        while in_flight.try_join_next().is_some() {}
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
                info!(notifications = p.notifications, idempotency_keys = p.idempotency_keys, "pruned past retention")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "pruning failed"),
        }
    }

    async fn rescue(&self) -> Result<u64, StoreError> {
        let n = tracking::rescue_expired(&self.inner.pool, 1000).await?;
        if n > 0 {
            warn!(rescued = n, "took back jobs whose lease expired");
        }
        Ok(n)
    }

    /// Claim up to `limit` jobs, shared fairly between the lanes (`tracking::claim`). A channel
    /// whose every provider is paced gets no more than they admit within a lease, less what
    /// it already has in flight.
    async fn claim_batch(&self, limit: usize) -> Result<Vec<Claimed>, StoreError> {
        let lease = self.inner.settings.lease();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut lanes = Vec::with_capacity(10);
        for p in Priority::ALL {
            for c in Channel::ALL {
                let cap = match self.inner.registry.admits_within(c, lease) {
                    Some(admits) => {
                        let busy = self.inner.in_flight[c.index()].load(Ordering::Relaxed);
                        i64::try_from(admits.saturating_sub(busy)).unwrap_or(0).min(limit)
                    }
                    None => limit,
                };
                lanes.push(Lane::send(c, p, cap));
            }
        }
        lanes.push(Lane::callbacks(limit));
        let mut conn = self.inner.pool.acquire().await?;
        let work = tracking::claim(&mut conn, &lanes, limit, lease, &self.inner.worker_id).await?;
        for w in &work {
            if let Claimed::Send(job) = w {
                self.inner.in_flight[job.channel.index()].fetch_add(1, Ordering::Relaxed);
            }
        }
        if !work.is_empty() {
            debug!(claimed = work.len(), "claimed jobs");
        }
        Ok(work)
    }

    async fn process_work(&self, work: Claimed, deadline: Option<Instant>) -> Outcome {
        match work {
            Claimed::Send(job) => {
                let channel = job.channel;
                let outcome = self.process(job, deadline).await;
                self.inner.in_flight[channel.index()].fetch_sub(1, Ordering::Relaxed);
                outcome
            }
            Claimed::Callback(cb) => {
                let span = info_span!("callback", notification.id = %cb.notification_id, attempt = cb.attempt);
                self.deliver_callback(cb, deadline).instrument(span).await
            }
        }
    }

    /// Deliver one status callback. Success and failures are both recorded in the timeline.
    async fn deliver_callback(&self, cb: ClaimedCallback, deadline: Option<Instant>) -> Outcome {
        let lease = cb.lease();
        let cfg = &self.inner.callbacks;
        let attempt = cb.attempt;
        let event_type = cb.event["type"].as_str().unwrap_or("notification.updated").to_owned();
        let (result, url) = match self.send_callback(&cb, deadline).await {
            Ok((url, status, _)) if (200..300).contains(&status) => {
                let detail = json!({"url": url, "response_status": status, "attempt": attempt, "event": event_type});
                return self.callback_recorded(lease, None, detail, Outcome::CallbackDelivered).await;
            }
            Ok((url, status, retry_after)) => {
                ((Some(status), format!("answered {status}"), retry_after, status == 410), url)
            }
            Err((url, e, permanent)) => ((None, e, None, permanent), url),
        };
        let (status, error, retry_after, permanent) = result;
        let mut detail = json!({"url": url, "attempt": attempt, "event": event_type, "error": error});
        if let Some(st) = status {
            detail["response_status"] = json!(st);
        }
        let policy = RetryPolicy { max_attempts: cfg.max_attempts, ..self.policy(1) };
        let decision = if permanent {
            Decision::GiveUp
        } else {
            policy.decide(u32::try_from(attempt).unwrap_or(u32::MAX), retry_after, rand::random::<f64>())
        };
        match decision {
            Decision::Retry(delay) => {
                info!(error = %error, delay_ms = delay.as_millis() as u64, "status callback failed; will retry");
                self.callback_recorded(lease, Some(delay), detail, Outcome::CallbackRetried).await
            }
            Decision::GiveUp => {
                warn!(error = %error, "status callback given up");
                detail["gave_up"] = json!(true);
                self.callback_recorded(lease, None, detail, Outcome::CallbackFailed).await
            }
        }
    }

    async fn callback_recorded(
        &self,
        lease: Lease,
        retry_in: Option<Duration>,
        detail: Value,
        outcome: Outcome,
    ) -> Outcome {
        let res = self
            .with_retries(|| async {
                let mut conn = self.inner.pool.acquire().await?;
                tracking::callback_attempted(&mut conn, lease, retry_in, detail.clone()).await
            })
            .await;
        match res {
            Ok(Applied::Yes) => outcome,
            Ok(Applied::Fenced) => fenced(),
            Err(e) => unrecorded(&e),
        }
    }

    /// POST the event; `Ok((url, status, retry_after))` for any HTTP answer, `Err((url, error,
    /// permanent))` when none could be had.
    async fn send_callback(
        &self,
        cb: &ClaimedCallback,
        deadline: Option<Instant>,
    ) -> Result<(String, u16, Option<Duration>), (String, String, bool)> {
        let cfg = &self.inner.callbacks;
        let mut conn = self.inner.pool.acquire().await.map_err(|e| (String::new(), e.to_string(), false))?;
        let Some((url, tenant_secret)) = tracking::callback_target(&mut conn, cb.notification_id)
            .await
            .map_err(|e| (String::new(), e.to_string(), false))?
        else {
            return Err((String::new(), "the notification has no callback URL any more".into(), true));
        };
        let record = notifications::get(&mut conn, cb.notification_id, None)
            .await
            .map_err(|e| (url.clone(), e.to_string(), false))?
            .ok_or_else(|| (url.clone(), "the notification is gone".to_string(), true))?;
        drop(conn);
        let secret = tenant_secret.unwrap_or_else(|| cfg.signing_secret.expose().to_owned());
        let Some(key) = callbacks::secret_key(&secret) else {
            return Err((
                url,
                "no signing secret: set callbacks.signing_secret or `herald tenants set --signing-secret`".into(),
                true,
            ));
        };
        let parsed = check_endpoint(&url, cfg.allow_private_networks).map_err(|e| (url.clone(), e, true))?;
        ensure_public(&parsed, cfg.allow_private_networks).await.map_err(|e| (url.clone(), e, true))?;

        // The data is the notification as the API returns it (without events), with the
        // status this event announces; `timestamp` orders events of one notification.
        let mut view = NotificationView::new(record, None);
        if let Some(st) = cb.event["status"].as_str().and_then(Status::parse) {
            view.status = st;
        }
        let body = json!({"type": cb.event["type"], "timestamp": cb.event["at"], "data": view}).to_string();
        let msg_id = format!("msg_{}_{}", cb.notification_id.as_uuid().simple(), cb.job_id);
        let ts = OffsetDateTime::now_utc().unix_timestamp();
        let mut timeout = Duration::from_millis(cfg.timeout_ms);
        if let Some(d) = deadline {
            timeout = timeout.min(d.saturating_duration_since(Instant::now()));
        }
        let resp = self
            .inner
            .http
            .post(parsed.as_str())
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", callbacks::sign(&key, &msg_id, ts, body.as_bytes()))
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| (url.clone(), format!("no answer: {}", e.without_url()), false))?;
        let retry_after = crate::providers::http::retry_after(resp.headers());
        Ok((url, resp.status().as_u16(), retry_after))
    }

    /// One job: decide, send, record. Never panics out: a panic in a provider is caught and the
    /// job is retried like a transient failure.
    async fn process(&self, job: ClaimedJob, deadline: Option<Instant>) -> Outcome {
        let span = info_span!("dispatch", notification.id = %job.notification_id, attempt = job.attempt, channel = %job.channel);
        let lease = job.lease();
        let attempt = job.attempt;
        let max_attempts = job.max_attempts;
        let route_index = job.route_index;
        let result = AssertUnwindSafe(self.process_inner(job, deadline).instrument(span.clone())).catch_unwind().await;
        match result {
            Ok(outcome) => outcome,
            Err(_) => {
                error!(parent: &span, "send panicked; retrying the job");
                let failure = ProviderError::Transient("internal error: the send panicked".into());
                let at = Attempt { lease, number: attempt, max: max_attempts, expires_at: None };
                self.record_failure(at, None, route_index, &failure).instrument(span).await
            }
        }
    }

    async fn process_inner(&self, job: ClaimedJob, deadline: Option<Instant>) -> Outcome {
        let started = Instant::now();
        let lease = job.lease();
        let now = OffsetDateTime::now_utc();
        if job.expires_at.is_some_and(|t| t <= now) {
            return self
                .finish(lease, Status::Expired, "expired", None, "expired before it could be sent", json!({}))
                .await;
        }
        if job.attempt > job.max_attempts {
            // Only reachable through lease rescues: the worker keeps dying on this message.
            let msg = format!("attempts exhausted ({} of {}) after lost leases", job.attempt - 1, job.max_attempts);
            return self.finish(lease, Status::Failed, "attempt", None, &msg, json!({"attempt": job.attempt})).await;
        }
        if job.suppressed {
            let msg = "the recipient is on the suppression list";
            return self.finish(lease, Status::Suppressed, "suppressed", None, msg, json!({})).await;
        }
        let message = match outbound(&job) {
            Ok(m) => m,
            Err(e) => {
                return self.finish(lease, Status::Failed, "attempt", None, &e, json!({"attempt": job.attempt})).await;
            }
        };
        let candidates = self.inner.registry.candidates(job.channel, &message.to);
        if candidates.is_empty() {
            let msg = format!("no provider configured for channel {} can deliver to this recipient", job.channel);
            return self.finish(lease, Status::Failed, "attempt", None, &msg, json!({"attempt": job.attempt})).await;
        }

        // Failover order starts at the job's route index; providers with an open circuit are
        // skipped. When every one is open, the job waits for the first to half-open.
        let n = candidates.len();
        let start = usize::try_from(job.route_index).unwrap_or(0) % n;
        let mut soonest: Option<Duration> = None;
        let chosen = (0..n).map(|i| (start + i) % n).find(|&i| match candidates[i].breaker.admit() {
            Admit::Yes => true,
            Admit::No(wait) => {
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                false
            }
        });
        let Some(index) = chosen else {
            let wait = soonest.unwrap_or(Duration::from_secs(1));
            let reason = format!("every provider for {} has an open circuit; waiting", job.channel);
            return self.put_back(lease, wait, &reason).await;
        };
        let route = &candidates[index];
        let provider = &route.provider;

        // Sends are bounded well inside the lease (so nobody rescues a live send) and, in
        // Lambda, by the time left before the deadline. Pacing may use part of that budget;
        // a job that cannot get its turn in time is put back, not failed.
        let mut budget_end = started + self.inner.settings.lease().mul_f64(0.8);
        if let Some(d) = deadline {
            budget_end = budget_end.min(d);
        }
        let _permit = if route.pacer.is_limited() {
            let pace_budget = budget_end.saturating_duration_since(Instant::now()) / 2;
            match route.pacer.acquire(pace_budget).await {
                Some(p) => Some(p),
                None => {
                    let reason = format!("provider {} is at its pacing limit; waiting", provider.name());
                    return self.put_back(lease, Duration::ZERO, &reason).await;
                }
            }
        } else {
            None
        };
        let limit = provider.timeout().min(budget_end.saturating_duration_since(Instant::now()));
        let result = match tokio::time::timeout(limit, provider.send(&message)).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::Transient(format!("timed out after {} ms", limit.as_millis()))),
        };
        route.breaker.record(match &result {
            Ok(_) => Health::Answered,
            Err(e) => e.health(),
        });
        match result {
            Ok(accepted) => {
                let mut detail = accepted.detail;
                detail.insert("attempt".into(), json!(job.attempt));
                if let Some(id) = &accepted.provider_message_id {
                    detail.insert("provider_message_id".into(), json!(id));
                }
                let outcome = tracking::Outcome::Sent {
                    provider: provider.name().to_owned(),
                    provider_message_id: accepted.provider_message_id,
                };
                let res = self.complete(Completion { lease, outcome, detail: Value::Object(detail) }).await;
                match res {
                    Ok(Applied::Yes) => {
                        info!(provider = provider.name(), "sent");
                        Outcome::Sent
                    }
                    Ok(Applied::Fenced) => fenced(),
                    Err(e) => unrecorded(&e),
                }
            }
            Err(failure) => {
                if let ProviderError::RecipientInvalid(reason) = &failure {
                    self.suppress(&job, &message.to.key(), reason, provider.name()).await;
                }
                // A transient failure moves the next attempt to the next provider in the list.
                let next_route = i32::try_from((index + 1) % n).unwrap_or(0);
                let attempt = Attempt { lease, number: job.attempt, max: job.max_attempts, expires_at: job.expires_at };
                self.record_failure(attempt, Some(provider.name()), next_route, &failure).await
            }
        }
    }

    /// A provider said the recipient cannot receive: stop sending to it (hard bounce, opt-out,
    /// dead push token). Best effort: the failure itself is recorded either way.
    async fn suppress(&self, job: &ClaimedJob, recipient: &str, reason: &str, provider: &str) {
        let res = async {
            let mut conn = self.inner.pool.acquire().await?;
            suppressions::add(&mut conn, job.tenant_id, job.channel, recipient, reason, provider).await
        }
        .await;
        match res {
            Ok(true) => info!(provider, "recipient added to the suppression list"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "could not add the recipient to the suppression list"),
        }
    }

    /// Put a claimed job back without counting an attempt (no provider was called).
    async fn put_back(&self, lease: Lease, delay: Duration, reason: &str) -> Outcome {
        debug!(delay_ms = delay.as_millis() as u64, reason, "putting the job back");
        let res = self
            .with_retries(|| async {
                let mut conn = self.inner.pool.acquire().await?;
                tracking::release(&mut conn, lease, delay, Some(reason)).await
            })
            .await;
        match res {
            Ok(Applied::Yes) => Outcome::Deferred,
            Ok(Applied::Fenced) => fenced(),
            Err(e) => unrecorded(&e),
        }
    }

    async fn record_failure(
        &self,
        at: Attempt,
        provider: Option<&str>,
        next_route: i32,
        failure: &ProviderError,
    ) -> Outcome {
        let Attempt { lease, number: attempt, max: max_attempts, expires_at } = at;
        let detail = tracking::error_detail(failure.class(), &failure.to_string(), attempt);
        if !failure.is_retryable() {
            warn!(provider, class = failure.class(), error = %failure, "send failed permanently");
            return self.finish(lease, Status::Failed, "attempt", provider, &failure.to_string(), detail).await;
        }
        let attempt_u = u32::try_from(attempt).unwrap_or(u32::MAX);
        match self.policy(max_attempts).decide(attempt_u, failure.retry_after(), rand::random::<f64>()) {
            Decision::GiveUp => {
                let msg = format!("attempts exhausted ({attempt} of {max_attempts}); last error: {failure}");
                warn!(provider, error = %failure, "giving up");
                self.finish(lease, Status::Failed, "attempt", provider, &msg, detail).await
            }
            Decision::Retry(delay) => {
                let due = OffsetDateTime::now_utc() + delay;
                if expires_at.is_some_and(|t| due >= t) {
                    let msg = format!("expires before the next attempt; last error: {failure}");
                    return self.finish(lease, Status::Expired, "attempt", provider, &msg, detail).await;
                }
                info!(provider, class = failure.class(), error = %failure, delay_ms = delay.as_millis() as u64, "will retry");
                let outcome = tracking::Outcome::Retrying {
                    provider: provider.map(str::to_owned),
                    delay,
                    next_route,
                    error: failure.to_string(),
                };
                let res = self.complete(Completion { lease, outcome, detail }).await;
                match res {
                    Ok(Applied::Yes) => Outcome::Retried,
                    Ok(Applied::Fenced) => fenced(),
                    Err(e) => unrecorded(&e),
                }
            }
        }
    }

    async fn finish(
        &self,
        lease: Lease,
        status: Status,
        event: &str,
        provider: Option<&str>,
        error: &str,
        detail: Value,
    ) -> Outcome {
        debug_assert!(matches!(status, Status::Failed | Status::Expired | Status::Suppressed));
        let outcome = tracking::Outcome::Finished {
            status,
            event: event.to_owned(),
            provider: provider.map(str::to_owned),
            error: error.to_owned(),
        };
        let res = self.complete(Completion { lease, outcome, detail }).await;
        match res {
            Ok(Applied::Yes) if status == Status::Expired => Outcome::Expired,
            Ok(Applied::Yes) => Outcome::Failed,
            Ok(Applied::Fenced) => fenced(),
            Err(e) => unrecorded(&e),
        }
    }

    /// Record an outcome, written together with the outcomes of concurrent sends.
    async fn complete(&self, c: Completion) -> Result<Applied, StoreError> {
        self.with_retries(|| async {
            self.inner.completions.submit(c.clone()).await.map_err(|e| StoreError::Unavailable(e.to_string()))?
        })
        .await
    }

    /// Recording an outcome is worth a few tries: giving up means the job is rescued and sent
    /// again after its lease expires.
    async fn with_retries<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(50);
        let mut tries = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if tries < 3 => {
                    warn!(error = %e, "recording the outcome failed; trying again");
                    tries += 1;
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn fenced() -> Outcome {
    warn!(
        "lease lost before the outcome was recorded (another worker took the job back); attempt kept in the timeline"
    );
    Outcome::Fenced
}

fn unrecorded(e: &StoreError) -> Outcome {
    error!(error = %e, "could not record the outcome; the job will be retried after its lease expires");
    Outcome::Unrecorded
}

/// Rebuild the message from what was stored at acceptance (and validated then).
fn outbound(job: &ClaimedJob) -> Result<OutboundMessage, String> {
    let to =
        Recipient::parse(job.channel, &job.to, true).map_err(|(_, d)| format!("stored recipient unreadable: {d}"))?;
    let content = Content::from_stored(job.channel, job.content.clone())
        .map_err(|e| format!("stored content unreadable: {e}"))?;
    Ok(OutboundMessage {
        id: job.notification_id,
        channel: job.channel,
        to,
        content,
        attempt: u32::try_from(job.attempt).unwrap_or(1),
        priority: job.priority,
        expires_at: job.expires_at,
    })
}

fn hostname() -> String {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "herald".into())
}

/// Wake-ups from `LISTEN`. Only a hint: when the listener is off or lost, polling carries on.
/// The listener has a connection of its own (a one-connection pool), so it never holds one of
/// the connections that claims and completions need.
struct Wake {
    listener: Option<PgListener>,
    pool: PgPool,
    enabled: bool,
}

impl Wake {
    async fn new(pool: &PgPool, enabled: bool) -> Self {
        let own = PgPoolOptions::new().max_connections(1).connect_lazy_with((*pool.connect_options()).clone());
        let mut w = Wake { listener: None, pool: own, enabled };
        w.reconnect_if_lost().await;
        w
    }

    async fn reconnect_if_lost(&mut self) {
        if !self.enabled || self.listener.is_some() {
            return;
        }
        match PgListener::connect_with(&self.pool).await {
            Ok(mut l) => match l.listen(WAKE_CHANNEL).await {
                Ok(()) => self.listener = Some(l),
                Err(e) => warn!(error = %e, "LISTEN failed; polling only"),
            },
            Err(e) => warn!(error = %e, "LISTEN connection failed; polling only"),
        }
    }

    /// Wait for a wake-up, then take every other one already received: one claim answers
    /// them all (accepting sends at most one per commit, but many commits may be waiting).
    async fn notified(&mut self) {
        match &mut self.listener {
            Some(l) => {
                if let Err(e) = l.recv().await {
                    warn!(error = %e, "LISTEN connection lost; polling until it is back");
                    self.listener = None;
                    return;
                }
                while l.next_buffered().is_some() {}
            }
            None => std::future::pending().await,
        }
    }
}
