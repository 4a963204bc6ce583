//! The send path of one claimed job, in phases: `prepare` (may it be sent at all, and to
//! which providers), choose a route (failover order, circuit breakers), take a turn (pacing, a
//! send slot; a stopping dispatcher gives the job back here), call the provider within the
//! budget, and record the outcome (`record`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::{Instrument, error, info, info_span};

use super::record::{fenced, unrecorded};
use super::{Attempt, Dispatcher, Outcome, SEND_BUDGET_OF_LEASE};
use crate::domain::trace::TraceParent;
use crate::domain::{Content, Recipient, Status};
use crate::metrics;
use crate::providers::resilience::{Admit, Health};
use crate::providers::{OutboundMessage, ProviderError, Registry, Route};
use crate::store::limits::{self, SlotOutcome};
use crate::store::notifications::rfc3339;
use crate::store::tracking::{self, Applied, ClaimedJob, Completion};

/// The end of a job that `prepare` decided without calling a provider.
struct End {
    status: Status,
    event: &'static str,
    error: String,
    detail: Value,
}

/// Whether a claimed job may be sent, and to which providers (in failover order): not when it
/// expired, exhausted its attempts through lost leases, is suppressed, cannot be read back, or
/// no provider takes its recipient.
fn prepare(job: &ClaimedJob, registry: &Registry) -> Result<(OutboundMessage, Vec<Arc<Route>>), End> {
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
    let message = match outbound(job) {
        Ok(m) => m,
        Err(e) => return end(Status::Failed, "attempt", e, attempt),
    };
    let candidates = registry.candidates(job.channel, &message.to);
    if candidates.is_empty() {
        let msg = format!("no provider configured for channel {} can deliver to this recipient", job.channel);
        return end(Status::Failed, "attempt", msg, attempt);
    }
    Ok((message, candidates))
}

impl Dispatcher {
    /// One job: decide, send, record. Never panics out: a panic in a provider is caught and the
    /// job is retried like a transient failure.
    pub(super) async fn process(&self, job: ClaimedJob, deadline: Option<Instant>) -> Outcome {
        // In the trace of the request that created it: one trace from accept to receipt.
        let span = info_span!("dispatch", notification.id = %job.notification_id, attempt = job.attempt,
                              channel = %job.channel, trace_id = tracing::field::Empty);
        crate::telemetry::join_trace(&span, job.traceparent.as_deref());
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
                let at = Attempt { lease, number: attempt, max: max_attempts, expires_at: None, retry_unknown: false };
                self.record_failure(at, None, route_index, &failure).instrument(span).await
            }
        }
    }

    async fn process_inner(&self, job: ClaimedJob, deadline: Option<Instant>) -> Outcome {
        let started = Instant::now();
        let lease = job.lease();
        let (mut message, candidates) = match prepare(&job, &self.inner.registry) {
            Ok(ready) => ready,
            Err(End { status, event, error, detail }) => {
                return self.finish(lease, status, event, None, &error, detail).await;
            }
        };

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

        // Throttles and quotas count a notification once (`slot_taken` is kept on its job, so
        // a put-back, a rescue or a retry is not counted again), before it waits for a
        // provider's pacing: a send held back here takes no provider's turn.
        if !job.slot_taken {
            let limits = self.send_limits(job.tenant_id, job.channel);
            if !limits.is_empty() {
                let slot = limits::take_send_slot(
                    &self.inner.pool,
                    lease,
                    job.tenant_id,
                    job.channel,
                    &job.recipient_key,
                    &limits,
                )
                .await;
                match slot {
                    Ok(SlotOutcome::Taken) => {}
                    Ok(SlotOutcome::Held(held)) => {
                        // Held past its expiry, it would only expire later: it expires now.
                        if let Some(exp) = job.expires_at.filter(|e| *e <= held.until) {
                            let error = format!(
                                "a send limit ({}) holds it until {}, after its expires_at {}",
                                held.limit.describe(job.channel),
                                rfc3339(held.until),
                                rfc3339(exp)
                            );
                            let detail = json!({"reason": held.limit.scope.reason(), "until": rfc3339(held.until)});
                            return self.finish(lease, Status::Expired, "expired", None, &error, detail).await;
                        }
                        return self.defer(lease, job.channel, &held).await;
                    }
                    Ok(SlotOutcome::Fenced) => return fenced(),
                    Err(e) => {
                        return self
                            .put_back(lease, Duration::from_secs(1), &format!("send limits unknown: {e}"))
                            .await;
                    }
                }
            }
        }

        // Sends are bounded well inside the lease (so nobody rescues a live send) and, in
        // Lambda, by the time left before the deadline. Pacing may use part of that budget;
        // a job that cannot get its turn in time is put back, not failed.
        let mut budget_end = started + self.inner.settings.lease().mul_f64(SEND_BUDGET_OF_LEASE);
        if let Some(d) = deadline {
            budget_end = budget_end.min(d);
        }
        // Until the provider is called, a stopping dispatcher gives the job back at once (no
        // attempt counted) rather than leaving it leased until a rescue.
        let stopping = self.inner.stopping.cancelled();
        let waits = async {
            let paced = if route.pacer.is_limited() {
                let pace_budget = budget_end.saturating_duration_since(Instant::now()) / 2;
                match route.pacer.acquire(job.tenant_id, pace_budget).await {
                    Some(p) => Some(p),
                    None => return Err(format!("provider {} is at its pacing limit; waiting", route.name.as_str())),
                }
            } else {
                None
            };
            // `dispatch.concurrency` bounds the provider calls in flight; waiting for a turn
            // (given round robin between tenants) counts against the send's budget like pacing:
            // a job still waiting when the budget ends (a Lambda deadline) goes back unsent.
            let Ok(sending) = tokio::time::timeout_at(budget_end, self.inner.sends.acquire(job.tenant_id)).await else {
                return Err("no turn to send within the send's budget; waiting".to_owned());
            };
            Ok::<_, String>((paced, sending))
        };
        let (_paced, _sending) = tokio::select! {
            biased;
            () = stopping => return self.put_back(lease, Duration::ZERO, "the dispatcher is stopping").await,
            turn = waits => match turn {
                Ok(permits) => permits,
                Err(reason) => return self.put_back(lease, Duration::ZERO, &reason).await,
            },
        };
        let limit = route.timeout.min(budget_end.saturating_duration_since(Instant::now()));
        // The call's own context: this span's when spans are exported, else a new span id in
        // the notification's trace.
        message.traceparent = crate::telemetry::traceparent_of(&tracing::Span::current())
            .or_else(|| job.traceparent.as_deref().and_then(TraceParent::parse).map(|t| t.child().to_string()));
        let called = Instant::now();
        let result = match tokio::time::timeout(limit, provider.send(&message)).await {
            Ok(r) => r,
            // The call was under way: it may have been sent.
            Err(_) => Err(ProviderError::Unknown(format!("timed out after {} ms", limit.as_millis()))),
        };
        let outcome = result.as_ref().map_or_else(ProviderError::class, |_| "sent");
        metrics::attempt(job.channel.as_str(), route.name.as_str(), outcome, called.elapsed());
        drop((_paced, _sending));
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
                    provider: route.name.as_str().to_owned(),
                    provider_message_id: accepted.provider_message_id,
                };
                let res = self.complete(Completion { lease, outcome, detail: Value::Object(detail) }).await;
                match res {
                    Ok(Applied::Yes) => {
                        info!(provider = route.name.as_str(), "sent");
                        if let Some(waited) = job.notification_id.age() {
                            metrics::accept_to_sent(job.channel.as_str(), waited);
                        }
                        Outcome::Sent
                    }
                    Ok(Applied::Fenced) => fenced(),
                    Err(e) => unrecorded(&e),
                }
            }
            Err(failure) => {
                if let ProviderError::RecipientInvalid(reason) = &failure {
                    self.suppress(&job, reason, route.name.as_str()).await;
                }
                // A transient failure moves the next attempt to the next provider in the list.
                let next_route = i32::try_from((index + 1) % n).unwrap_or(0);
                let attempt = Attempt {
                    lease,
                    number: job.attempt,
                    max: job.max_attempts,
                    expires_at: job.expires_at,
                    retry_unknown: self.inner.retry_unknown[job.channel.index()],
                };
                self.record_failure(attempt, Some(route.name.as_str()), next_route, &failure).await
            }
        }
    }
}

/// Rebuild the message from what was stored at acceptance (and validated then).
fn outbound(job: &ClaimedJob) -> Result<OutboundMessage, String> {
    let to = Recipient::parse(job.channel, &job.to, true)
        .map_err(|e| format!("stored recipient unreadable: {}", e.detail))?;
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
        metadata: job.metadata.clone(),
        tags: job.tags.clone(),
        // Set when the provider is called (`process_inner`).
        traceparent: None,
    })
}
