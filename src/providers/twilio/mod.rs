//! Twilio Programmable Messaging: `POST /2010-04-01/Accounts/{sid}/Messages.json`, form body,
//! basic auth (account SID, auth token). `201` with the message `sid`. When
//! `server.public_base_url` is set, `StatusCallback` points Twilio's receipts at
//! `/webhooks/{provider name}`. Twilio has no idempotency key for sends.

pub mod receipts;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::domain::Channel;
use crate::providers::http::{HttpReply, execute, generic};
use crate::providers::settings::{BuildEnv, Common, NonEmpty, Origin, Vendor};
use crate::providers::{OutboundMessage, Provider, ProviderAccepted, ProviderError, ReceiptVerifier, sms_parts};
use crate::receipts::{Incoming, ReceiptContext, ReceiptError, Verified};
use crate::secret::Secret;

/// `kind = "twilio"`: `from` or `messaging_service_sid` (which wins when both are set).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub account_sid: String,
    pub auth_token: Secret,
    pub from: Option<NonEmpty>,
    pub messaging_service_sid: Option<String>,
    pub base_url: Option<Origin>,
}

impl Vendor for Config {
    const CHANNELS: &'static [Channel] = &[Channel::Sms];
    const SECRETS: &'static [(&'static str, &'static str)] = &[("auth_token", "auth_token_file")];

    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.from.is_none() && self.messaging_service_sid.is_none() {
            return Err(("from", "kind twilio needs from or messaging_service_sid".into()));
        }
        Ok(())
    }

    fn build(&self, name: &str, common: &Common, env: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String> {
        let origin = Origin::or(self.base_url.as_ref(), "https://api.twilio.com");
        Ok(Arc::new(Twilio {
            client: env.client.clone(),
            url: format!("{origin}/2010-04-01/Accounts/{}/Messages.json", self.account_sid),
            account_sid: self.account_sid.clone(),
            auth_token: self.auth_token.clone(),
            from: self.from.as_ref().map(|f| f.as_str().to_owned()),
            messaging_service_sid: self.messaging_service_sid.clone(),
            status_callback: env.receipts_url(name),
            timeout: common.timeout(),
        }))
    }
}

pub struct Twilio {
    client: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: Secret,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    status_callback: Option<String>,
    timeout: Duration,
}

impl Twilio {
    pub fn form(&self, msg: &OutboundMessage) -> Result<Vec<(&'static str, String)>, ProviderError> {
        let (to, text) = sms_parts(msg)?;
        let mut form = vec![("To", to.to_owned()), ("Body", text.to_owned())];
        match (&self.messaging_service_sid, &self.from) {
            (Some(mg), _) => form.push(("MessagingServiceSid", mg.clone())),
            (None, Some(from)) => form.push(("From", from.clone())),
            (None, None) => {
                return Err(ProviderError::Transient("twilio: neither from nor messaging_service_sid".into()));
            }
        }
        if let Some(cb) = &self.status_callback {
            form.push(("StatusCallback", cb.clone()));
        }
        Ok(form)
    }
}

#[async_trait]
impl Provider for Twilio {
    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError> {
        let form = self.form(msg)?;
        let req = self
            .client
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .form(&form)
            .timeout(self.timeout);
        let reply = execute(req).await?;
        if reply.status.is_success() {
            let body = reply.json();
            let mut detail = serde_json::Map::new();
            if let Some(st) = body["status"].as_str() {
                detail.insert("provider_status".into(), st.into());
            }
            return Ok(ProviderAccepted { provider_message_id: body["sid"].as_str().map(str::to_owned), detail });
        }
        Err(classify(&reply))
    }

    fn receipts(&self) -> Option<&dyn ReceiptVerifier> {
        Some(self)
    }
}

#[async_trait]
impl ReceiptVerifier for Twilio {
    async fn verify(&self, incoming: &Incoming<'_>, ctx: &ReceiptContext<'_>) -> Result<Verified, ReceiptError> {
        receipts::verify(incoming, self.auth_token.expose(), ctx.public_base_url, ctx.path).map(Verified::Receipts)
    }
}

/// Twilio error codes (twilio.com/docs/api/errors), by the `code` in the error body:
///
/// | code | meaning | class |
/// | --- | --- | --- |
/// | 21211, 21614, 21612, 21635 | invalid / non-mobile / unroutable / landline `To` | recipient invalid |
/// | 21610 | recipient replied STOP | recipient invalid (suppress) |
/// | 21608 | unverified `To` on a trial account | permanent |
/// | 21606 | `From` cannot send SMS | transient (provider-level: our configuration) |
/// | 20003 | authentication failed | transient (provider-level) |
/// | 20429, HTTP 429 | too many requests ("always safe to retry") | rate limited |
/// | other 4xx | | permanent |
/// | 5xx | Twilio internal | transient |
pub fn classify(reply: &HttpReply) -> ProviderError {
    let body = reply.json();
    let code = body["code"].as_i64();
    let message = body["message"].as_str().map_or_else(|| reply.snippet(), str::to_owned);
    let what =
        format!("twilio {} (code {}): {message}", reply.status.as_u16(), code.map_or("-".into(), |c| c.to_string()));
    match code {
        Some(21211 | 21614 | 21612 | 21635 | 21610) => ProviderError::RecipientInvalid(what),
        Some(21608) => ProviderError::Permanent(what),
        Some(21606 | 20003) => ProviderError::Transient(what),
        Some(20429) => ProviderError::RateLimited { retry_after: reply.retry_after(), message: what },
        _ => generic(reply.status, reply.retry_after(), what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use serde_json::json;

    fn reply(status: u16, code: Option<i64>) -> HttpReply {
        let body = match code {
            Some(c) => json!({"code": c, "message": "m", "more_info": format!("https://www.twilio.com/docs/errors/{c}"), "status": status}).to_string(),
            None => String::new(),
        };
        HttpReply {
            status: StatusCode::from_u16(status).expect("status"),
            headers: Default::default(),
            body: body.into(),
        }
    }

    #[test]
    fn error_table() {
        let rows = [
            (400, Some(21211), "recipient_invalid"),
            (400, Some(21614), "recipient_invalid"),
            (400, Some(21612), "recipient_invalid"),
            (400, Some(21635), "recipient_invalid"),
            (400, Some(21610), "recipient_invalid"),
            (400, Some(21608), "permanent"),
            (400, Some(21606), "transient"),
            (401, Some(20003), "transient"),
            (429, Some(20429), "rate_limited"),
            (429, None, "rate_limited"),
            (400, Some(21602), "permanent"),
            (500, Some(20500), "transient"),
            (503, None, "transient"),
        ];
        for (status, code, class) in rows {
            assert_eq!(classify(&reply(status, code)).class(), class, "{status} {code:?}");
        }
    }
}
