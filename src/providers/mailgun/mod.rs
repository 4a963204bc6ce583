//! Mailgun Messages API: `POST /v3/{domain}/messages`, basic auth `api:<key>`, form body.
//! `200 {"id": "<…>", "message": "Queued. Thank you."}`; our id travels as `v:herald_id`.

pub mod receipts;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Deserialize;

use crate::domain::Channel;
use crate::providers::http::{HttpReply, execute, generic};
use crate::providers::settings::{BuildEnv, Common, EmailSender, Origin, Vendor};
use crate::providers::{OutboundMessage, Provider, ProviderAccepted, ProviderError, ReceiptVerifier, email_parts};
use crate::receipts::{Incoming, ReceiptContext, ReceiptError, Verified};
use crate::secret::Secret;

/// `kind = "mailgun"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub domain: String,
    pub api_key: Secret,
    pub from: EmailSender,
    pub base_url: Option<Origin>,
    /// The HTTP webhook signing key (falls back to `api_key`).
    pub webhook_signing_key: Option<Secret>,
}

impl Vendor for Config {
    const CHANNELS: &'static [Channel] = &[Channel::Email];
    const SECRETS: &'static [(&'static str, &'static str)] =
        &[("api_key", "api_key_file"), ("webhook_signing_key", "webhook_signing_key_file")];

    fn build(&self, _: &str, common: &Common, env: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String> {
        let origin = Origin::or(self.base_url.as_ref(), "https://api.mailgun.net");
        Ok(Arc::new(Mailgun {
            client: env.client.clone(),
            url: format!("{origin}/v3/{}/messages", self.domain),
            api_key: self.api_key.clone(),
            from: self.from.as_str().to_owned(),
            timeout: common.timeout(),
            signing_key: self.webhook_signing_key.clone().unwrap_or_else(|| self.api_key.clone()),
        }))
    }
}

pub struct Mailgun {
    client: reqwest::Client,
    url: String,
    api_key: Secret,
    from: String,
    timeout: Duration,
    /// The webhook signing key: `webhook_signing_key`, else `api_key`.
    signing_key: Secret,
}

impl Mailgun {
    pub fn form(&self, msg: &OutboundMessage) -> Result<Vec<(&'static str, String)>, ProviderError> {
        let e = email_parts(msg, &self.from)?;
        let mut form = vec![("from", e.from.to_owned()), ("to", e.to.to_owned()), ("subject", e.subject.to_owned())];
        if let Some(t) = e.text {
            form.push(("text", t.to_owned()));
        }
        if let Some(h) = e.html {
            form.push(("html", h.to_owned()));
        }
        if let Some(r) = e.reply_to {
            form.push(("h:Reply-To", r.to_owned()));
        }
        if let Some(u) = e.unsubscribe_url {
            form.push(("h:List-Unsubscribe", format!("<{u}>")));
            form.push(("h:List-Unsubscribe-Post", "List-Unsubscribe=One-Click".into()));
        }
        form.push(("v:herald_id", msg.id.to_string()));
        Ok(form)
    }
}

#[async_trait]
impl Provider for Mailgun {
    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError> {
        let form = self.form(msg)?;
        let req = self
            .client
            .post(&self.url)
            .basic_auth("api", Some(self.api_key.expose()))
            .form(&form)
            .timeout(self.timeout);
        let reply = execute(req).await?;
        if reply.status.is_success() {
            // Events carry the Message-ID without angle brackets: store it that way.
            let id = reply.json()["id"].as_str().map(|s| s.trim_matches(['<', '>']).to_owned());
            return Ok(ProviderAccepted::with_id(id));
        }
        Err(classify(&reply))
    }

    fn receipts(&self) -> Option<&dyn ReceiptVerifier> {
        Some(self)
    }
}

#[async_trait]
impl ReceiptVerifier for Mailgun {
    async fn verify(&self, incoming: &Incoming<'_>, ctx: &ReceiptContext<'_>) -> Result<Verified, ReceiptError> {
        receipts::verify(incoming, self.signing_key.expose(), ctx.max_age).map(Verified::Receipts)
    }
}

/// Mailgun's answers (API responses reference):
///
/// | answer | class |
/// | --- | --- |
/// | 400 `{"message": …}` naming the `to` address | recipient invalid |
/// | 400 other | permanent |
/// | 401, 403 | transient (provider-level) |
/// | 404 (domain not found; "eventually consistent") | transient |
/// | 429 | rate limited |
/// | 5xx | transient |
pub fn classify(reply: &HttpReply) -> ProviderError {
    let message = reply.json()["message"].as_str().map_or_else(|| reply.snippet(), str::to_owned);
    let what = format!("mailgun {}: {message}", reply.status.as_u16());
    match reply.status {
        StatusCode::BAD_REQUEST if message.to_ascii_lowercase().contains("'to' parameter is not a valid address") => {
            ProviderError::RecipientInvalid(what)
        }
        StatusCode::NOT_FOUND => ProviderError::Transient(what),
        s => generic(s, reply.retry_after(), what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> HttpReply {
        HttpReply {
            status: StatusCode::from_u16(status).expect("status"),
            headers: Default::default(),
            body: body.to_owned().into(),
        }
    }

    #[test]
    fn error_table() {
        let rows = [
            (
                400,
                r#"{"message": "'to' parameter is not a valid address. please check documentation"}"#,
                "recipient_invalid",
            ),
            (400, r#"{"message": "'from' parameter is missing"}"#, "permanent"),
            (401, "Forbidden", "transient"),
            (
                403,
                r#"{"message": "Domain example.com is not allowed to send: Free accounts are for test purposes only."}"#,
                "transient",
            ),
            (404, r#"{"message": "Domain not found: example.com"}"#, "transient"),
            (429, r#"{"message": "Too many requests"}"#, "rate_limited"),
            (500, "", "transient"),
        ];
        for (status, body, class) in rows {
            assert_eq!(classify(&reply(status, body)).class(), class, "{status} {body}");
        }
    }
}
