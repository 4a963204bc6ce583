//! The send limits a first attempt must fit in (`channels.X.recipient_max`, `tenant_per_minute`,
//! `tenant_per_day`, and the tenants' own quotas from `tenants set --quota`), and the decision
//! a claimed job gets from them.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use serde_json::{Value, json};
use sqlx::PgPool;
use tracing::warn;

use super::Dispatcher;
use crate::domain::send_limit::{Quotas, SendLimit};
use crate::domain::{Channel, TenantId};
use crate::store::limits::{self as store, Held, SlotOutcome};
use crate::store::notifications::rfc3339;
use crate::store::tracking::ClaimedJob;

/// The configured limits by channel, and the tenants' own quotas as last read.
pub(in crate::dispatch) struct SendLimits {
    /// By channel (`Channel::index`): the throttles and quotas a first attempt must fit in
    /// (none: no check).
    configured: [Vec<SendLimit>; 3],
    /// The tenants with send quotas of their own (`refresh`).
    tenant_quotas: RwLock<Arc<HashMap<TenantId, Quotas>>>,
}

/// What the send limits say about one claimed job.
pub(super) enum Slot {
    /// Counted (now or on an earlier attempt): send.
    Taken,
    /// A window is full: come back at `Held::until`.
    Held(Held),
    /// Held past its `expires_at`, it would only expire later: it expires now.
    Expired { error: String, detail: Value },
    /// The lease was lost.
    Fenced,
    /// The limits could not be read or counted: try again shortly.
    Unknown(String),
}

impl SendLimits {
    pub(in crate::dispatch) fn new(configured: [Vec<SendLimit>; 3]) -> Self {
        SendLimits { configured, tenant_quotas: RwLock::default() }
    }

    /// Read which tenants have send quotas of their own (at each rescue interval, and at the
    /// start of `run_once` and `drain`): `tenants set --quota` reaches running dispatchers
    /// within `dispatch.rescue_interval_ms`.
    pub(in crate::dispatch) async fn refresh(&self, pool: &PgPool) {
        match store::tenant_quotas(pool).await {
            Ok(q) => *self.tenant_quotas.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(q),
            Err(e) => warn!(error = %e, "could not read the tenants' send quotas; keeping the last ones read"),
        }
    }

    /// The throttles and quotas a first attempt must fit in: its channel's, with the tenant's
    /// own quotas in place of the configured ones.
    fn of(&self, tenant: TenantId, channel: Channel) -> Vec<SendLimit> {
        let configured = &self.configured[channel.index()];
        let quotas = self.tenant_quotas.read().unwrap_or_else(PoisonError::into_inner).clone();
        match quotas.get(&tenant) {
            Some(own) => own.apply(channel, configured),
            None => configured.clone(),
        }
    }
}

impl Dispatcher {
    /// Count the job in its send limits' windows, once per notification (`slot_taken` stays
    /// on its job through put-backs, rescues and retries).
    pub(super) async fn take_slot(&self, job: &ClaimedJob) -> Slot {
        if job.slot_taken {
            return Slot::Taken;
        }
        let limits = self.inner.send_limits.of(job.tenant_id, job.channel);
        if limits.is_empty() {
            return Slot::Taken;
        }
        let taken = store::take_send_slot(
            &self.inner.pool,
            job.lease(),
            job.tenant_id,
            job.channel,
            &job.recipient_key,
            &limits,
        )
        .await;
        match taken {
            Ok(SlotOutcome::Taken) => Slot::Taken,
            Ok(SlotOutcome::Fenced) => Slot::Fenced,
            Ok(SlotOutcome::Held(held)) => match job.expires_at.filter(|e| *e <= held.until) {
                Some(expires_at) => Slot::Expired {
                    error: format!(
                        "a send limit ({}) holds it until {}, after its expires_at {}",
                        held.limit.describe(job.channel),
                        rfc3339(held.until),
                        rfc3339(expires_at)
                    ),
                    detail: json!({"reason": held.limit.scope.reason(), "until": rfc3339(held.until)}),
                },
                None => Slot::Held(held),
            },
            Err(e) => Slot::Unknown(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use crate::store::tracking::{self, Lane};
    use crate::testing::TestDb;

    /// A worker that claims a send and dies before taking its slot in the send limits: the
    /// rescued attempt takes the slot, and the send is counted once.
    #[tokio::test]
    async fn a_send_whose_worker_died_before_its_slot_is_counted_once() {
        let t = TestDb::with(|s| s.channels.sms.recipient_max = 1).await;
        let acme = t.caller("acme").await;
        let sms = json!({"channel": "sms", "to": "+14155550100", "content": {"text": "hi"}});
        let first = t.accept(&acme, sms.clone()).await;
        let mut conn = t.pool().acquire().await.expect("conn");
        let claimed = tracking::claim(&mut conn, &Lane::all(10), 10, Duration::from_secs(60), "doomed").await;
        assert_eq!(claimed.expect("claim").len(), 1);
        sqlx::query("UPDATE jobs SET leased_until = now() - interval '1 second' WHERE state = 'running'")
            .execute(&mut *conn)
            .await
            .expect("lapse");
        drop(conn);
        let s = t.app.dispatcher().run_once().await.expect("dispatch");
        assert_eq!((s.rescued, s.sent), (1, 1), "{s:?}");
        assert_eq!(t.notification(first).await["attempts"], 2);
        let second = t.accept(&acme, sms).await;
        t.app.dispatcher().run_once().await.expect("dispatch");
        assert_eq!(t.notification(second).await["status"], "queued", "the rescued send was counted");
        let counted: i32 = sqlx::query_scalar("SELECT sum(sends)::int FROM send_windows WHERE scope = 'recipient'")
            .fetch_one(t.pool())
            .await
            .expect("sum");
        assert_eq!(counted, 2, "the first once, the second over the limit");
    }
}
