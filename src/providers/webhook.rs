//! The `webhook` provider: hands every message to an HTTP endpoint of the operator's (an
//! in-house SMS gateway, a chat bridge, a test harness), for any channel. It POSTs
//! `{"id", "channel", "to", "content", "metadata", "tags"}` as a Standard Webhook
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature` with `signing_secret`); `webhook-id`
//! is the same for every attempt of a notification, so the receiver can drop a repeat.
//! A 2xx answer is sent (an `id` string in a JSON answer is kept as the provider's message id);
//! other answers are classified like any HTTP provider's (429 and 5xx retried, other 4xx final).
//! `url` is the operator's configuration, like `base_url`: `http://` and private addresses are
//! allowed.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::http::{execute, generic};
use super::{OutboundMessage, Provider, ProviderAccepted, ProviderError};
use crate::config::ProviderSettings;
use crate::domain::webhook;

pub struct Webhook {
    client: reqwest::Client,
    url: String,
    key: Vec<u8>,
    timeout: Duration,
}

impl Webhook {
    pub fn new(name: &str, cfg: &ProviderSettings, client: reqwest::Client) -> Result<Self, String> {
        let secret = cfg.signing_secret.as_ref().map(|s| s.expose()).unwrap_or_default();
        let key = webhook::signing_key(secret).map_err(|e| format!("providers.{name}.signing_secret: {e}"))?;
        Ok(Webhook {
            client,
            url: cfg.url.clone().unwrap_or_default(),
            key,
            timeout: Duration::from_millis(cfg.timeout_ms),
        })
    }
}

#[async_trait]
impl Provider for Webhook {
    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError> {
        let body = json!({
            "id": msg.id,
            "channel": msg.channel,
            "to": msg.to.to_json(),
            "content": msg.content,
            "metadata": msg.metadata,
            "tags": msg.tags,
        })
        .to_string();
        let msg_id = format!("msg_{}", msg.id.as_uuid().simple());
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", webhook::sign(&self.key, &msg_id, ts, body.as_bytes()))
            .body(body)
            .timeout(self.timeout);
        let reply = execute(req).await?;
        if reply.status.is_success() {
            let id = reply.json()["id"].as_str().map(str::to_owned);
            return Ok(ProviderAccepted::with_id(id));
        }
        Err(generic(
            reply.status,
            reply.retry_after(),
            format!("webhook {}: {}", reply.status.as_u16(), reply.snippet()),
        ))
    }
}
