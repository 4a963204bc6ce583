//! Status callbacks to callers, as Standard Webhooks 1.0: `webhook-id` (stable across retries),
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256(key, id.timestamp.body)>`,
//! body `{"type": "notification.<status>", "timestamp", "data": <the notification>}`.
//! The callback URL is checked again at delivery time, and the client connects only to
//! public addresses (`providers::public_net`; DNS can change since acceptance).

use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::{info, warn};

use super::send::{fenced, unrecorded};
use super::{Dispatcher, Ended};
use crate::domain::recipient::check_endpoint;
use crate::domain::retry::{Decision, RetryPolicy};
use crate::domain::{Status, webhook};
use crate::providers::public_net;
use crate::store::notifications;
use crate::store::tracking::{self, Applied, ClaimedCallback, Lease};
use crate::views::NotificationView;

/// What one callback request came to.
enum Delivery {
    /// The receiver answered (any status).
    Answered { url: String, status: u16, retry_after: Option<Duration> },
    /// No answer could be had; `permanent` when trying again cannot help.
    Failed { url: String, error: String, permanent: bool },
}

impl Delivery {
    fn failed(url: &str, error: impl Into<String>, permanent: bool) -> Delivery {
        Delivery::Failed { url: url.to_owned(), error: error.into(), permanent }
    }
}

impl Dispatcher {
    /// Deliver one status callback. Success and failures are both recorded in the timeline.
    pub(super) async fn deliver_callback(&self, cb: ClaimedCallback, deadline: Option<Instant>) -> Ended {
        let lease = cb.lease();
        let cfg = &self.inner.callbacks;
        let attempt = cb.attempt;
        let event_type = cb.event["type"].as_str().unwrap_or("notification.updated").to_owned();
        let (url, status, error, retry_after, permanent) = match self.send_callback(&cb, deadline).await {
            Delivery::Answered { url, status, .. } if (200..300).contains(&status) => {
                let detail = json!({"url": url, "response_status": status, "attempt": attempt, "event": event_type});
                crate::metrics::callback("delivered");
                return self.callback_recorded(lease, None, detail, Ended::CallbackDelivered).await;
            }
            // 410 Gone: the receiver says never again.
            Delivery::Answered { url, status, retry_after } => {
                (url, Some(status), format!("answered {status}"), retry_after, status == 410)
            }
            Delivery::Failed { url, error, permanent } => (url, None, error, None, permanent),
        };
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
                crate::metrics::callback("retrying");
                info!(error = %error, delay_ms = delay.as_millis() as u64, "status callback failed; will retry");
                self.callback_recorded(lease, Some(delay), detail, Ended::CallbackRetried).await
            }
            Decision::GiveUp => {
                crate::metrics::callback("given_up");
                warn!(error = %error, "status callback given up");
                detail["gave_up"] = json!(true);
                self.callback_recorded(lease, None, detail, Ended::CallbackFailed).await
            }
        }
    }

    async fn callback_recorded(
        &self,
        lease: Lease,
        retry_in: Option<Duration>,
        detail: Value,
        outcome: Ended,
    ) -> Ended {
        let res = self
            .with_retries(lease, || async {
                let mut conn = crate::store::session(&self.inner.pool).await?;
                let done = tracking::callback_attempted(&mut conn, lease, retry_in, detail.clone()).await?;
                conn.finish().await?;
                Ok::<_, crate::store::StoreError>(done)
            })
            .await;
        match res {
            Ok(Applied::Yes) => outcome,
            Ok(Applied::Fenced) => fenced(),
            Err(e) => unrecorded(&e),
        }
    }

    /// POST the event.
    async fn send_callback(&self, cb: &ClaimedCallback, deadline: Option<Instant>) -> Delivery {
        let cfg = &self.inner.callbacks;
        let target = async {
            let mut conn = crate::store::session(&self.inner.pool).await?;
            let Some((url, secret)) = tracking::callback_target(&mut conn, cb.notification_id).await? else {
                return Ok(None);
            };
            let record = notifications::get(&mut conn, cb.notification_id, None).await?;
            Ok::<_, crate::store::StoreError>(Some((url, secret, record)))
        };
        let (url, tenant_secret, record) = match target.await {
            Ok(Some((url, secret, Some(record)))) => (url, secret, record),
            Ok(Some((url, ..))) => return Delivery::failed(&url, "the notification is gone", true),
            Ok(None) => return Delivery::failed("", "the notification has no callback URL any more", true),
            Err(e) => return Delivery::failed("", e.to_string(), false),
        };
        let (secret, whose) = match tenant_secret {
            Some(s) => (s, "the tenant's signing secret is not usable"),
            None => (cfg.signing_secret.expose().to_owned(), "no signing secret"),
        };
        let Some(key) = webhook::stored_key(&secret) else {
            let why = format!(
                "{whose}: set one with `herald tenants set T --rotate-signing-secret` (or callbacks.signing_secret)"
            );
            return Delivery::failed(&url, why, true);
        };
        let parsed = match check_endpoint(&url, cfg.allow_private_networks) {
            Ok(u) => u,
            Err(e) => return Delivery::failed(&url, e, true),
        };

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
        let sent = self
            .inner
            .http
            .post(parsed.as_str())
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", webhook::sign(&key, &msg_id, ts, body.as_bytes()))
            .body(body)
            .timeout(timeout)
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let retry_after = crate::providers::http::retry_after(resp.headers());
                Delivery::Answered { url, status: resp.status().as_u16(), retry_after }
            }
            // Not tried, so nothing about the address is learnt: refused, for good.
            Err(e) => match public_net::refusal(&e) {
                Some(refused) => Delivery::failed(&url, refused.to_string(), true),
                None => Delivery::failed(&url, format!("no answer: {}", e.without_url()), false),
            },
        }
    }
}
