//! The `webhook` provider: hands every message to an HTTP endpoint of the operator's (an
//! in-house SMS gateway, a chat bridge, a test harness), for any channel. It POSTs
//! `{"id", "channel", "to", "content", "metadata", "tags"}` as a Standard Webhook
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature` with `signing_secret`); `webhook-id`
//! is the same for every attempt of a notification, so the receiver can drop a repeat.
//! A 2xx answer is sent (an `id` string in a JSON answer is kept as the provider's message id);
//! other answers are classified like any HTTP provider's (429 and 5xx retried, other 4xx final).
//! `url` is the operator's configuration, like `base_url`: `http://` and private addresses are
//! allowed. A notification created with a W3C `traceparent` is posted with one (its trace, a
//! span of this call).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::http::{execute, generic};
use super::settings::{BuildEnv, Common, Vendor};
use super::{OutboundMessage, Provider, ProviderAccepted, ProviderError};
use crate::domain::{Channel, webhook};
use crate::secret::Secret;

/// `kind = "webhook"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The whole URL each message is POSTed to.
    pub url: WebhookUrl,
    /// `whsec_…`, the Standard Webhooks secret the receiver verifies with.
    pub signing_secret: Secret,
}

/// An http(s) URL.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct WebhookUrl(String);

impl TryFrom<String> for WebhookUrl {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, &'static str> {
        let ok = url::Url::parse(&s).map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if ok.unwrap_or(false) {
            Ok(WebhookUrl(s))
        } else {
            Err("must be an http(s) URL such as https://gateway.internal/notify")
        }
    }
}

impl std::str::FromStr for WebhookUrl {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, &'static str> {
        WebhookUrl::try_from(s.to_owned())
    }
}

impl Vendor for Config {
    const CHANNELS: &'static [Channel] = &Channel::ALL;
    const SECRETS: &'static [(&'static str, &'static str)] = &[("signing_secret", "signing_secret_file")];

    fn check(&self) -> Result<(), (&'static str, String)> {
        webhook::signing_key(self.signing_secret.expose()).map(drop).map_err(|e| ("signing_secret", e))
    }

    fn build(&self, _: &str, common: &Common, env: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String> {
        Ok(Arc::new(Webhook {
            client: env.client.clone(),
            url: self.url.0.clone(),
            key: webhook::signing_key(self.signing_secret.expose())?,
            timeout: common.timeout(),
        }))
    }
}

pub struct Webhook {
    client: reqwest::Client,
    url: String,
    key: Vec<u8>,
    timeout: Duration,
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
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", webhook::sign(&self.key, &msg_id, ts, body.as_bytes()))
            .body(body)
            .timeout(self.timeout);
        // The gateway is the operator's own: it may join the notification's trace.
        if let Some(tp) = &msg.traceparent {
            req = req.header("traceparent", tp);
        }
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
