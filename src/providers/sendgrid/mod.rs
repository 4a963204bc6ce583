//! SendGrid v3 Mail Send: `POST /v3/mail/send` with a Bearer key; `202` with an empty body,
//! and the message id in the `X-Message-Id` header. Our id travels in `custom_args`, which
//! SendGrid echoes in every Event Webhook event.

pub mod receipts;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::Channel;
use crate::providers::http::{HttpReply, execute, generic, split_mailbox};
use crate::providers::settings::{BuildEnv, Common, EmailSender, Origin, Vendor};
use crate::providers::{OutboundMessage, Provider, ProviderAccepted, ProviderError, ReceiptVerifier, email_parts};
use crate::receipts::{Incoming, ReceiptContext, ReceiptError, Verified};
use crate::secret::Secret;

/// `kind = "sendgrid"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub api_key: Secret,
    pub from: EmailSender,
    pub base_url: Option<Origin>,
    /// The Event Webhook verification key (base64 DER, as the settings page shows).
    pub webhook_public_key: Option<String>,
}

impl Vendor for Config {
    const CHANNELS: &'static [Channel] = &[Channel::Email];
    const SECRETS: &'static [(&'static str, &'static str)] = &[("api_key", "api_key_file")];

    fn check(&self) -> Result<(), (&'static str, String)> {
        match &self.webhook_public_key {
            Some(k) if receipts::verifying_key(k).is_none() => {
                Err(("webhook_public_key", "must be the base64 DER P-256 public key SendGrid shows".into()))
            }
            _ => Ok(()),
        }
    }

    fn build(&self, _: &str, common: &Common, env: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String> {
        Ok(Arc::new(SendGrid {
            client: env.client.clone(),
            url: format!("{}/v3/mail/send", Origin::or(self.base_url.as_ref(), "https://api.sendgrid.com")),
            api_key: self.api_key.clone(),
            from: self.from.as_str().to_owned(),
            timeout: common.timeout(),
            webhook_key: self.webhook_public_key.as_deref().and_then(receipts::verifying_key),
        }))
    }
}

pub struct SendGrid {
    client: reqwest::Client,
    url: String,
    api_key: Secret,
    from: String,
    timeout: Duration,
    /// The Event Webhook verification key (`webhook_public_key`), if receipts are set up.
    webhook_key: Option<p256::ecdsa::VerifyingKey>,
}

impl SendGrid {
    pub fn body(&self, msg: &OutboundMessage) -> Result<Value, ProviderError> {
        let e = email_parts(msg, &self.from)?;
        let address = |raw: &str| {
            let (name, email) = split_mailbox(raw);
            match name {
                Some(n) => json!({"email": email, "name": n}),
                None => json!({"email": email}),
            }
        };
        let mut content = Vec::new();
        if let Some(t) = e.text {
            content.push(json!({"type": "text/plain", "value": t}));
        }
        if let Some(h) = e.html {
            content.push(json!({"type": "text/html", "value": h}));
        }
        let mut body = json!({
            "personalizations": [{"to": [{"email": e.to}], "custom_args": {"herald_id": msg.id.to_string()}}],
            "from": address(e.from),
            "subject": e.subject,
            "content": content,
        });
        if let Some(r) = e.reply_to {
            body["reply_to"] = address(r);
        }
        if let Some(u) = e.unsubscribe_url {
            body["headers"] =
                json!({"List-Unsubscribe": format!("<{u}>"), "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"});
        }
        Ok(body)
    }
}

#[async_trait]
impl Provider for SendGrid {
    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError> {
        let body = self.body(msg)?;
        let req = self.client.post(&self.url).bearer_auth(self.api_key.expose()).json(&body).timeout(self.timeout);
        let reply = execute(req).await?;
        if reply.status.is_success() {
            let id = reply.headers.get("x-message-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
            return Ok(ProviderAccepted::with_id(id));
        }
        Err(classify(&reply))
    }

    fn receipts(&self) -> Option<&dyn ReceiptVerifier> {
        Some(self)
    }
}

#[async_trait]
impl ReceiptVerifier for SendGrid {
    async fn verify(&self, incoming: &Incoming<'_>, ctx: &ReceiptContext<'_>) -> Result<Verified, ReceiptError> {
        receipts::verify(incoming, self.webhook_key.as_ref(), ctx.max_age).map(Verified::Receipts)
    }
}

/// SendGrid's error answers (Mail Send errors reference):
///
/// | answer | class |
/// | --- | --- |
/// | 400 with an error on a `personalizations…to` field | recipient invalid |
/// | 400, 413 (other validation) | permanent |
/// | 401, 403 (bad key, unverified sender) | transient (provider-level: fail over) |
/// | 429 (`X-RateLimit-Reset` epoch seconds) | rate limited |
/// | 5xx | transient |
pub fn classify(reply: &HttpReply) -> ProviderError {
    let body = reply.json();
    let errors = body["errors"].as_array().cloned().unwrap_or_default();
    let message = errors.iter().filter_map(|e| e["message"].as_str()).collect::<Vec<_>>().join("; ");
    let what =
        format!("sendgrid {}: {}", reply.status.as_u16(), if message.is_empty() { reply.snippet() } else { message });
    if reply.status == StatusCode::BAD_REQUEST
        && errors
            .iter()
            .any(|e| e["field"].as_str().is_some_and(|f| f.starts_with("personalizations") && f.contains(".to")))
    {
        return ProviderError::RecipientInvalid(what);
    }
    if reply.status == StatusCode::TOO_MANY_REQUESTS {
        let reset = reply
            .headers
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .and_then(|epoch| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
                Some(Duration::from_secs(epoch.saturating_sub(now)))
            });
        return ProviderError::RateLimited { retry_after: reply.retry_after().or(reset), message: what };
    }
    generic(reply.status, reply.retry_after(), what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn reply(status: u16, body: &str, headers: &[(&'static str, &str)]) -> HttpReply {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        HttpReply { status: StatusCode::from_u16(status).expect("status"), headers: h, body: body.to_owned().into() }
    }

    #[test]
    fn error_table() {
        let bad_to = r#"{"errors":[{"message":"Does not contain a valid address.","field":"personalizations.0.to.0.email","help":null}]}"#;
        let bad_from = r#"{"errors":[{"message":"The from address does not match a verified Sender Identity.","field":"from","help":null}]}"#;
        let throttled = r#"{"errors":[{"field":null,"message":"too many requests"}]}"#;
        // (status, body, headers, class)
        type Row<'a> = (u16, &'a str, &'a [(&'static str, &'a str)], &'a str);
        let rows: [Row<'_>; 8] = [
            (400, bad_to, &[], "recipient_invalid"),
            (400, r#"{"errors":[{"message":"The subject is required.","field":"subject"}]}"#, &[], "permanent"),
            (413, "", &[], "permanent"),
            (
                401,
                r#"{"errors":[{"message":"The provided authorization grant is invalid, expired, or revoked"}]}"#,
                &[],
                "transient",
            ),
            (403, bad_from, &[], "transient"),
            (429, throttled, &[("x-ratelimit-reset", "9999999999")], "rate_limited"),
            (500, "", &[], "transient"),
            (503, "<html>unavailable</html>", &[], "transient"),
        ];
        for (status, body, headers, class) in rows {
            assert_eq!(classify(&reply(status, body, headers)).class(), class, "{status} {body}");
        }
        let e = classify(&reply(429, throttled, &[("retry-after", "7")]));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    }
}
