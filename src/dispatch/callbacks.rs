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

use super::record::{fenced, unrecorded};
use super::{Dispatcher, Outcome};
use crate::domain::recipient::check_endpoint;
use crate::domain::retry::{Decision, RetryPolicy};
use crate::domain::{Status, webhook};
use crate::providers::public_net;
use crate::store::notifications;
use crate::store::tracking::{self, Applied, ClaimedCallback, Lease};
use crate::views::NotificationView;

impl Dispatcher {
    /// Deliver one status callback. Success and failures are both recorded in the timeline.
    pub(super) async fn deliver_callback(&self, cb: ClaimedCallback, deadline: Option<Instant>) -> Outcome {
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
            .with_retries(lease, || async {
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
        let Ok(key) = webhook::signing_key(&secret) else {
            return Err((
                url,
                "no signing secret: set callbacks.signing_secret or `herald tenants set --signing-secret`".into(),
                true,
            ));
        };
        let parsed = check_endpoint(&url, cfg.allow_private_networks).map_err(|e| (url.clone(), e, true))?;

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
        let Ok(_sending) = self.inner.sends.acquire().await else {
            return Err((url, "the dispatcher is stopping".into(), false));
        };
        let resp = self
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
            .await
            .map_err(|e| match public_net::refusal(&e) {
                // Not tried, so nothing about the address is learnt: refused, for good.
                Some(refused) => (url.clone(), refused.to_string(), true),
                None => (url.clone(), format!("no answer: {}", e.without_url()), false),
            })?;
        let retry_after = crate::providers::http::retry_after(resp.headers());
        Ok((url, resp.status().as_u16(), retry_after))
    }
}
