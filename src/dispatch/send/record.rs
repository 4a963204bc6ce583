//! Recording what became of a claimed job: every outcome goes through `complete` (gathered
//! with the outcomes of concurrent sends into one statement), retried a few times, because
//! an outcome that cannot be written means the job is sent again after its lease expires.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{debug, error, info, warn};

use super::Attempt;
use crate::dispatch::{Dispatcher, Ended};
use crate::domain::retry::Decision;
use crate::domain::{Channel, Status};
use crate::providers::ProviderError;
use crate::store::limits::Held;
use crate::store::notifications::rfc3339;
use crate::store::tracking::{self, Applied, ClaimedJob, Completion, Lease};
use crate::store::{StoreError, suppressions};

impl Dispatcher {
    /// A provider said the recipient cannot receive: stop sending to it (hard bounce, opt-out,
    /// dead push token). Best effort: the failure itself is recorded either way.
    pub(super) async fn suppress(&self, job: &ClaimedJob, reason: &str, provider: &str) {
        let res = async {
            let mut conn = crate::store::session(&self.inner.pool).await?;
            let done =
                suppressions::add(&mut conn, job.tenant_id, job.channel, &job.recipient_key, None, reason, provider)
                    .await?;
            conn.finish().await?;
            Ok::<_, StoreError>(done)
        }
        .await;
        match res {
            Ok(true) => info!(provider, "recipient added to the suppression list"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "could not add the recipient to the suppression list"),
        }
    }

    /// Put a claimed job back without counting an attempt (no provider was called).
    pub(super) async fn put_back(&self, lease: Lease, delay: Duration, reason: &str) -> Ended {
        debug!(delay_ms = delay.as_millis() as u64, reason, "putting the job back");
        let res = self
            .with_retries(lease, || async {
                let mut conn = crate::store::session(&self.inner.pool).await?;
                let done = tracking::release(&mut conn, lease, delay, Some(reason)).await?;
                conn.finish().await?;
                Ok::<_, StoreError>(done)
            })
            .await;
        match res {
            Ok(Applied::Yes) => Ended::Deferred,
            Ok(Applied::Fenced) => fenced(),
            Err(e) => unrecorded(&e),
        }
    }

    /// Hold a claimed job back until a full send limit has room (a `deferred` event).
    pub(super) async fn defer(&self, lease: Lease, channel: Channel, held: &Held) -> Ended {
        let key = held.limit.key(channel);
        let detail = json!({
            "reason": held.limit.scope.reason(),
            "limit": {"key": key, "max": held.limit.max, "window_secs": held.limit.window_secs},
            "until": rfc3339(held.until),
        });
        debug!(reason = held.limit.scope.reason(), until = %rfc3339(held.until), "deferring the send");
        let res = self
            .with_retries(lease, || async {
                let mut conn = crate::store::session(&self.inner.pool).await?;
                let done = tracking::defer(&mut conn, lease, held.until, &detail).await?;
                conn.finish().await?;
                Ok::<_, StoreError>(done)
            })
            .await;
        match res {
            Ok(Applied::Yes) => {
                crate::metrics::deferred(channel.as_str(), held.limit.scope.reason());
                Ended::Deferred
            }
            Ok(Applied::Fenced) => fenced(),
            Err(e) => unrecorded(&e),
        }
    }

    pub(super) async fn record_failure(
        &self,
        at: Attempt,
        provider: Option<&str>,
        next_route: i32,
        failure: &ProviderError,
    ) -> Ended {
        let Attempt { lease, number: attempt, max: max_attempts, expires_at, retry_unknown } = at;
        let detail = tracking::error_detail(failure.class(), &failure.to_string(), attempt);
        let retryable = match failure {
            ProviderError::Unknown(_) => retry_unknown,
            _ => failure.is_retryable(),
        };
        if !retryable {
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
                    Ok(Applied::Yes) => Ended::Retried,
                    Ok(Applied::Fenced) => fenced(),
                    Err(e) => unrecorded(&e),
                }
            }
        }
    }

    pub(super) async fn finish(
        &self,
        lease: Lease,
        status: Status,
        event: &str,
        provider: Option<&str>,
        error: &str,
        detail: Value,
    ) -> Ended {
        let outcome = tracking::Outcome::finished(status, event, provider, error);
        let res = self.complete(Completion { lease, outcome, detail }).await;
        match res {
            Ok(Applied::Yes) if status == Status::Expired => Ended::Expired,
            Ok(Applied::Yes) => Ended::Failed,
            Ok(Applied::Fenced) => fenced(),
            Err(e) => unrecorded(&e),
        }
    }

    /// Record an outcome, written together with the outcomes of concurrent sends; a recorded
    /// send then has the receipts that came before it applied (in a later, shared read).
    pub(super) async fn complete(&self, c: Completion) -> Result<Applied, StoreError> {
        let applied = self
            .with_retries(c.lease, || async {
                self.inner.completions.submit(c.clone()).await.map_err(|e| StoreError::Unavailable(e.to_string()))?
            })
            .await;
        // Only providers that call back can have sent a receipt that came first.
        if let (Ok(Applied::Yes), Some(sent)) = (&applied, tracking::recorded_send(&c))
            && self.inner.registry.provider(&sent.provider).is_some_and(|p| p.receipts().is_some())
        {
            let _ = self.inner.early_receipts.submit(sent).await;
        }
        applied
    }

    /// Recording an outcome is worth trying until shortly before the lease ends: giving up
    /// means the job is rescued and sent again once the lease expires, and after that a record
    /// would be fenced anyway. Waits grow from 50 ms to 2 s between tries (a database failover
    /// takes seconds).
    pub(in crate::dispatch) async fn with_retries<T, F, Fut>(&self, lease: Lease, f: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let margin = (self.inner.settings.lease() / 10).min(RECORD_MARGIN);
        let give_up_at = lease.until.checked_sub(margin).unwrap_or(lease.until);
        let mut delay = Duration::from_millis(50);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() + delay < give_up_at => {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "recording the outcome failed; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How long before its lease ends a worker stops trying to record an outcome (at most a tenth
/// of the lease): the rest is left for the clock difference with the database.
const RECORD_MARGIN: Duration = Duration::from_secs(2);

pub(in crate::dispatch) fn fenced() -> Ended {
    warn!(
        "lease lost before the outcome was recorded (another worker took the job back); attempt kept in the timeline"
    );
    Ended::Fenced
}

pub(in crate::dispatch) fn unrecorded(e: &StoreError) -> Ended {
    error!(error = %e, "could not record the outcome; the job will be retried after its lease expires");
    Ended::Unrecorded
}
