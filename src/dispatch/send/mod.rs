//! One claimed send, in phases. Each phase is one function that takes what the last one made
//! and either makes the next or ends the job (having written how: `record`):
//!
//! ```text
//! ClaimedJob ─ready→ Ready ─admit→ Admitted ─call→ Called ─record→ Ended
//! ```
//!
//! * `ready`: may it be sent at all (expired, attempts used up by lost leases, suppressed,
//!   unreadable, no provider for its recipient), and to which providers in failover order;
//! * `admit`: a route past its circuit breaker, a slot in the send limits (`limits`), then
//!   the provider's pacing and a turn to send within the send's budget. A stopping dispatcher
//!   gives the job back here, before any provider is called;
//! * `call`: the provider's answer within the budget, with its metrics and breaker health;
//! * `record`: the outcome written through `store::tracking` (`record.rs`).

mod limits;
mod record;

pub(super) use limits::SendLimits;
pub(super) use record::{fenced, unrecorded};

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::{Instrument, error, info, info_span};

use super::{Dispatcher, Ended, SEND_BUDGET_OF_LEASE};
use crate::domain::Status;
use crate::domain::TenantId;
use crate::domain::trace::TraceParent;
use crate::fair::FairPermit;
use crate::metrics;
use crate::providers::resilience::{Admit, Health, PacePermit};
use crate::providers::{OutboundMessage, ProviderAccepted, ProviderError, Registry, Route};
use crate::store::tracking::{self, Applied, ClaimedJob, Completion, Lease};
use limits::Slot;

/// A job that may be sent: its message and the providers that can take it, in failover order.
struct Ready {
    job: ClaimedJob,
    message: OutboundMessage,
    routes: Vec<Arc<Route>>,
    /// When processing began: the send's budget counts from here.
    started: Instant,
}

/// A job given its turn: the route it goes through and the permits that hold its place until
/// the provider has answered.
struct Admitted {
    ready: Ready,
    /// Index into `Ready::routes`.
    route: usize,
    /// The end of the send's budget: the provider call must answer by then.
    budget_end: Instant,
    _paced: Option<PacePermit>,
    _sending: FairPermit<TenantId>,
}

/// The provider's answer to one call.
struct Called {
    job: ClaimedJob,
    route: Arc<Route>,
    /// The route the next attempt starts from when this one failed (failover).
    next_route: i32,
    result: Result<ProviderAccepted, ProviderError>,
}

/// The end of a job that `ready` decided without calling a provider.
struct End {
    status: Status,
    event: &'static str,
    error: String,
    detail: Value,
}

impl Dispatcher {
    /// One job: decide, send, record. Never panics out: a panic in a provider is caught and the
    /// job is retried like a transient failure.
    pub(super) async fn process(&self, job: ClaimedJob, deadline: Option<Instant>) -> Ended {
        // In the trace of the request that created it: one trace from accept to receipt.
        let span = info_span!("dispatch", notification.id = %job.notification_id, attempt = job.attempt,
                              channel = %job.channel, trace_id = tracing::field::Empty);
        crate::telemetry::join_trace(&span, job.traceparent.as_deref());
        let at = Attempt::of(&job, false);
        let route_index = job.route_index;
        let result = AssertUnwindSafe(self.phases(job, deadline).instrument(span.clone())).catch_unwind().await;
        match result {
            Ok(ended) => ended,
            Err(_) => {
                error!(parent: &span, "send panicked; retrying the job");
                let failure = ProviderError::Transient("internal error: the send panicked".into());
                self.record_failure(Attempt { expires_at: None, ..at }, None, route_index, &failure)
                    .instrument(span)
                    .await
            }
        }
    }

    async fn phases(&self, job: ClaimedJob, deadline: Option<Instant>) -> Ended {
        let lease = job.lease();
        let ready = match ready(job, &self.inner.registry) {
            Ok(ready) => ready,
            Err(End { status, event, error, detail }) => {
                return self.finish(lease, status, event, None, &error, detail).await;
            }
        };
        let admitted = match self.admit(ready, deadline).await {
            Ok(admitted) => admitted,
            Err(ended) => return ended,
        };
        let called = call(admitted).await;
        self.record(called).await
    }

    /// A route, a send-limit slot and a turn to send, or the job's end without a call: put
    /// back (every circuit open, no turn in time, stopping), deferred or expired (a full send
    /// limit).
    async fn admit(&self, ready: Ready, deadline: Option<Instant>) -> Result<Admitted, Ended> {
        let job = &ready.job;
        let lease = job.lease();
        let route = match choose_route(&ready) {
            Ok(index) => index,
            Err(wait) => {
                let reason = format!("every provider for {} has an open circuit; waiting", job.channel);
                return Err(self.put_back(lease, wait, &reason).await);
            }
        };
        // Throttles and quotas count a notification once (`slot_taken` is kept on its job, so
        // a put-back, a rescue or a retry is not counted again), before it waits for a
        // provider's pacing: a send held back here takes no provider's turn.
        match self.take_slot(job).await {
            Slot::Taken => {}
            Slot::Held(held) => return Err(self.defer(lease, job.channel, &held).await),
            Slot::Expired { error, detail } => {
                return Err(self.finish(lease, Status::Expired, "expired", None, &error, detail).await);
            }
            Slot::Fenced => return Err(fenced()),
            Slot::Unknown(e) => {
                return Err(self.put_back(lease, Duration::from_secs(1), &format!("send limits unknown: {e}")).await);
            }
        }
        // Sends are bounded well inside the lease (so nobody rescues a live send) and, in
        // Lambda, by the time left before the deadline. Pacing may use part of that budget;
        // a job that cannot get its turn in time is put back, not failed.
        let mut budget_end = ready.started + self.inner.settings.lease().mul_f64(SEND_BUDGET_OF_LEASE);
        if let Some(d) = deadline {
            budget_end = budget_end.min(d);
        }
        // Until the provider is called, a stopping dispatcher gives the job back at once (no
        // attempt counted) rather than leaving it leased until a rescue.
        let turn = tokio::select! {
            biased;
            () = self.inner.stopping.cancelled() => Err("the dispatcher is stopping".to_owned()),
            turn = self.take_turn(&ready.routes[route], job.tenant_id, budget_end) => turn,
        };
        match turn {
            Ok((paced, sending)) => Ok(Admitted { ready, route, budget_end, _paced: paced, _sending: sending }),
            Err(reason) => Err(self.put_back(lease, Duration::ZERO, &reason).await),
        }
    }

    /// The provider's pacing (at most half of what is left of the budget), then one of
    /// `dispatch.concurrency`'s sends in flight, given round robin between tenants. Waiting
    /// for either counts against the send's budget: a job still waiting when it ends (a Lambda
    /// deadline) goes back unsent.
    async fn take_turn(
        &self,
        route: &Route,
        tenant: TenantId,
        budget_end: Instant,
    ) -> Result<(Option<PacePermit>, FairPermit<TenantId>), String> {
        let paced = if route.pacer.is_limited() {
            let pace_budget = budget_end.saturating_duration_since(Instant::now()) / 2;
            match route.pacer.acquire(tenant, pace_budget).await {
                Some(p) => Some(p),
                None => return Err(format!("provider {} is at its pacing limit; waiting", route.name.as_str())),
            }
        } else {
            None
        };
        let Ok(sending) = tokio::time::timeout_at(budget_end, self.inner.sends.acquire(tenant)).await else {
            return Err("no turn to send within the send's budget; waiting".to_owned());
        };
        Ok((paced, sending))
    }

    /// Write what the provider answered: `sent`, or a failure retried or final (a recipient the
    /// provider called invalid is suppressed first).
    async fn record(&self, called: Called) -> Ended {
        let Called { job, route, next_route, result } = called;
        let lease = job.lease();
        let accepted = match result {
            Ok(accepted) => accepted,
            Err(failure) => {
                if let ProviderError::RecipientInvalid(reason) = &failure {
                    self.suppress(&job, reason, route.name.as_str()).await;
                }
                let at = Attempt::of(&job, self.inner.retry_unknown[job.channel.index()]);
                return self.record_failure(at, Some(route.name.as_str()), next_route, &failure).await;
            }
        };
        let mut detail = accepted.detail;
        detail.insert("attempt".into(), json!(job.attempt));
        if let Some(id) = &accepted.provider_message_id {
            detail.insert("provider_message_id".into(), json!(id));
        }
        let outcome = tracking::Outcome::Sent {
            provider: route.name.as_str().to_owned(),
            provider_message_id: accepted.provider_message_id,
        };
        match self.complete(Completion { lease, outcome, detail: Value::Object(detail) }).await {
            Ok(Applied::Yes) => {
                info!(provider = route.name.as_str(), "sent");
                if let Some(waited) = job.notification_id.age() {
                    metrics::accept_to_sent(job.channel.as_str(), waited);
                }
                Ended::Sent
            }
            Ok(Applied::Fenced) => fenced(),
            Err(e) => unrecorded(&e),
        }
    }
}

/// Whether a claimed job may be sent, and to which providers (in failover order): not when it
/// expired, exhausted its attempts through lost leases, is suppressed, could not be read back,
/// or no provider takes its recipient.
fn ready(job: ClaimedJob, registry: &Registry) -> Result<Ready, End> {
    let started = Instant::now();
    let end = |status, event, error: String, detail| Err(End { status, event, error, detail });
    let attempt = json!({"attempt": job.attempt});
    if job.expires_at.is_some_and(|t| t <= OffsetDateTime::now_utc()) {
        return end(Status::Expired, "expired", "expired before it could be sent".into(), json!({}));
    }
    if job.attempt > job.max_attempts {
        // Only reachable through lease rescues: the worker keeps dying on this message.
        let msg = format!("attempts exhausted ({} of {}) after lost leases", job.attempt - 1, job.max_attempts);
        return end(Status::Failed, "attempt", msg, attempt);
    }
    if job.suppressed {
        return end(Status::Suppressed, "suppressed", "the recipient is on the suppression list".into(), json!({}));
    }
    let payload = match &job.payload {
        Ok(p) => p,
        Err(e) => return end(Status::Failed, "attempt", e.clone(), attempt),
    };
    let routes = registry.candidates(job.channel, &payload.to);
    if routes.is_empty() {
        let msg = format!("no provider configured for channel {} can deliver to this recipient", job.channel);
        return end(Status::Failed, "attempt", msg, attempt);
    }
    let message = OutboundMessage {
        id: job.notification_id,
        channel: job.channel,
        to: payload.to.clone(),
        content: payload.content.clone(),
        attempt: u32::try_from(job.attempt).unwrap_or(1),
        priority: job.priority,
        expires_at: job.expires_at,
        metadata: job.metadata.clone(),
        tags: job.tags.clone(),
        // Set when the provider is called (`call`).
        traceparent: None,
    };
    Ok(Ready { job, message, routes, started })
}

/// The route to call: failover order starts at the job's route index, and providers with an
/// open circuit are skipped. When every one is open, how long until the first half-opens.
fn choose_route(ready: &Ready) -> Result<usize, Duration> {
    let n = ready.routes.len();
    let start = usize::try_from(ready.job.route_index).unwrap_or(0) % n;
    let mut soonest: Option<Duration> = None;
    let chosen = (0..n).map(|i| (start + i) % n).find(|&i| match ready.routes[i].breaker.admit() {
        Admit::Yes => true,
        Admit::No(wait) => {
            soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            false
        }
    });
    chosen.ok_or_else(|| soonest.unwrap_or(Duration::from_secs(1)))
}

/// Call the provider within what is left of the budget. A call cut short by it has an unknown
/// outcome: it was under way and may have been sent.
async fn call(admitted: Admitted) -> Called {
    let Admitted { ready, route, budget_end, _paced, _sending } = admitted;
    let Ready { job, mut message, routes, .. } = ready;
    let next_route = i32::try_from((route + 1) % routes.len()).unwrap_or(0);
    let route = routes[route].clone();
    let limit = route.timeout.min(budget_end.saturating_duration_since(Instant::now()));
    // The call's own context: this span's when spans are exported, else a new span id in the
    // notification's trace.
    message.traceparent = crate::telemetry::traceparent_of(&tracing::Span::current())
        .or_else(|| job.traceparent.as_deref().and_then(TraceParent::parse).map(|t| t.child().to_string()));
    let called = Instant::now();
    let result = match tokio::time::timeout(limit, route.provider.send(&message)).await {
        Ok(r) => r,
        Err(_) => Err(ProviderError::Unknown(format!("timed out after {} ms", limit.as_millis()))),
    };
    let class = result.as_ref().map_or_else(ProviderError::class, |_| "sent");
    metrics::attempt(job.channel.as_str(), route.name.as_str(), class, called.elapsed());
    // The turn ends with the answer, before the outcome is written.
    drop((_paced, _sending));
    route.breaker.record(match &result {
        Ok(_) => Health::Answered,
        Err(e) => e.health(),
    });
    Called { job, route, next_route, result }
}

/// The attempt a failure belongs to.
#[derive(Clone, Copy)]
struct Attempt {
    lease: Lease,
    number: i32,
    max: i32,
    expires_at: Option<OffsetDateTime>,
    /// The channel's `on_unknown`: try again after an attempt whose outcome is unknown.
    retry_unknown: bool,
}

impl Attempt {
    fn of(job: &ClaimedJob, retry_unknown: bool) -> Attempt {
        Attempt {
            lease: job.lease(),
            number: job.attempt,
            max: job.max_attempts,
            expires_at: job.expires_at,
            retry_unknown,
        }
    }
}
