//! Vonage SMS API: `POST /sms/json`, form body with `api_key`/`api_secret`. Errors arrive as
//! HTTP 200 with a non-zero `messages[].status`, so the body is always classified. Our id
//! travels as `client-ref`, echoed in delivery receipts.

pub mod receipts;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::Channel;
use crate::providers::http::{execute, generic};
use crate::providers::settings::{BuildEnv, Common, NonEmpty, Origin, Vendor};
use crate::providers::{OutboundMessage, Provider, ProviderAccepted, ProviderError, ReceiptVerifier, sms_parts};
use crate::receipts::{Incoming, ReceiptContext, ReceiptError, Verified};
use crate::secret::Secret;

/// `kind = "vonage"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub api_key: Secret,
    pub api_secret: Secret,
    pub from: NonEmpty,
    pub base_url: Option<Origin>,
    /// Signed delivery receipts: the signature secret, and how they are signed.
    pub signature_secret: Option<Secret>,
    /// md5hash (the default), md5, sha1, sha256 or sha512.
    pub signature_method: Option<String>,
}

impl Vendor for Config {
    const CHANNELS: &'static [Channel] = &[Channel::Sms];
    const SECRETS: &'static [(&'static str, &'static str)] = &[
        ("api_key", "api_key_file"),
        ("api_secret", "api_secret_file"),
        ("signature_secret", "signature_secret_file"),
    ];

    fn check(&self) -> Result<(), (&'static str, String)> {
        match &self.signature_method {
            Some(m) if !["md5hash", "md5", "sha1", "sha256", "sha512"].contains(&m.as_str()) => {
                Err(("signature_method", "must be md5hash, md5, sha1, sha256 or sha512".into()))
            }
            _ => Ok(()),
        }
    }

    fn build(&self, name: &str, common: &Common, env: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String> {
        Ok(Arc::new(Vonage {
            client: env.client.clone(),
            url: format!("{}/sms/json", Origin::or(self.base_url.as_ref(), "https://rest.nexmo.com")),
            api_key: self.api_key.expose().to_owned(),
            api_secret: self.api_secret.clone(),
            from: self.from.as_str().to_owned(),
            callback: env.receipts_url(name),
            timeout: common.timeout(),
            signature_secret: self.signature_secret.clone(),
            signature_method: self.signature_method.clone().unwrap_or_else(|| "md5hash".into()),
        }))
    }
}

pub struct Vonage {
    client: reqwest::Client,
    url: String,
    api_key: String,
    api_secret: Secret,
    from: String,
    callback: Option<String>,
    timeout: Duration,
    /// Signed delivery receipts: the signature secret and method (`md5hash` by default).
    signature_secret: Option<Secret>,
    signature_method: String,
}

impl Vonage {
    pub fn form(&self, msg: &OutboundMessage) -> Result<Vec<(&'static str, String)>, ProviderError> {
        let (to, text) = sms_parts(msg)?;
        let mut form = vec![
            ("api_key", self.api_key.clone()),
            ("api_secret", self.api_secret.expose().to_owned()),
            ("from", self.from.clone()),
            // Vonage wants E.164 without the leading '+'.
            ("to", to.trim_start_matches('+').to_owned()),
            ("text", text.to_owned()),
            ("client-ref", msg.id.to_string()),
        ];
        if !text.is_ascii() {
            form.push(("type", "unicode".into()));
        }
        if let Some(cb) = &self.callback {
            form.push(("callback", cb.clone()));
            form.push(("status-report-req", "1".into()));
        }
        Ok(form)
    }
}

#[async_trait]
impl Provider for Vonage {
    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError> {
        let form = self.form(msg)?;
        let reply = execute(self.client.post(&self.url).form(&form).timeout(self.timeout)).await?;
        if !reply.status.is_success() {
            return Err(generic(
                reply.status,
                reply.retry_after(),
                format!("vonage {}: {}", reply.status.as_u16(), reply.snippet()),
            ));
        }
        accepted(&reply.json())
    }

    fn receipts(&self) -> Option<&dyn ReceiptVerifier> {
        Some(self)
    }
}

#[async_trait]
impl ReceiptVerifier for Vonage {
    async fn verify(&self, incoming: &Incoming<'_>, ctx: &ReceiptContext<'_>) -> Result<Verified, ReceiptError> {
        // An empty secret is refused when the section is read.
        let secret = self.signature_secret.as_ref().map(Secret::expose);
        receipts::verify(incoming, secret, &self.signature_method, ctx.max_age).map(Verified::Receipts)
    }
}

/// Read a `200` answer: every part must have status "0"; a long text is split into parts,
/// each with its own message id and its own receipt.
pub fn accepted(body: &Value) -> Result<ProviderAccepted, ProviderError> {
    let parts = body["messages"].as_array().cloned().unwrap_or_default();
    if parts.is_empty() {
        return Err(ProviderError::Transient(format!("vonage: unexpected answer {body}")));
    }
    if let Some(bad) = parts.iter().find(|p| p["status"].as_str() != Some("0")) {
        return Err(classify_status(bad["status"].as_str().unwrap_or("?"), bad["error-text"].as_str().unwrap_or("")));
    }
    let ids: Vec<&str> = parts.iter().filter_map(|p| p["message-id"].as_str()).collect();
    let mut detail = serde_json::Map::new();
    if ids.len() > 1 {
        detail.insert("message_parts".into(), json!(ids));
    }
    Ok(ProviderAccepted { provider_message_id: ids.first().map(std::string::ToString::to_string), detail })
}

/// Vonage SMS API `status` codes (developer.vonage.com/en/api-errors/sms):
///
/// | status | meaning | class |
/// | --- | --- | --- |
/// | 1 | throttled | rate limited |
/// | 5, 10 | internal error, too many binds | transient |
/// | 4, 8, 9, 11, 14, 15 | credentials, account barred, no credit, HTTP not enabled, bad signature, bad sender | transient (provider-level) |
/// | 7 | number barred | recipient invalid |
/// | 2, 3, 6, 12, 29, others | missing/invalid parameters, invalid message, too long, non-whitelisted destination | permanent |
pub fn classify_status(status: &str, text: &str) -> ProviderError {
    let what = format!("vonage status {status}: {text}");
    match status {
        "1" => ProviderError::RateLimited { retry_after: None, message: what },
        "5" | "10" | "4" | "8" | "9" | "11" | "14" | "15" => ProviderError::Transient(what),
        "7" => ProviderError::RecipientInvalid(what),
        _ => ProviderError::Permanent(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &str) -> Value {
        json!({"message-count": "1", "messages": [{"to": "447700900000", "status": status, "error-text": "x", "message-id": "0C000000217B7F02"}]})
    }

    #[test]
    fn status_table() {
        let rows = [
            ("1", "rate_limited"),
            ("2", "permanent"),
            ("3", "permanent"),
            ("4", "transient"),
            ("5", "transient"),
            ("6", "permanent"),
            ("7", "recipient_invalid"),
            ("8", "transient"),
            ("9", "transient"),
            ("10", "transient"),
            ("11", "transient"),
            ("12", "permanent"),
            ("14", "transient"),
            ("15", "transient"),
            ("29", "permanent"),
        ];
        for (status, class) in rows {
            let err = accepted(&answer(status)).expect_err(status);
            assert_eq!(err.class(), class, "status {status}");
        }
        let ok = accepted(&answer("0")).expect("accepted");
        assert_eq!(ok.provider_message_id.as_deref(), Some("0C000000217B7F02"));
    }

    #[test]
    fn a_failed_part_fails_the_message_and_parts_are_kept() {
        let body = json!({"message-count": "2", "messages": [
            {"status": "0", "message-id": "A"}, {"status": "0", "message-id": "B"}]});
        let ok = accepted(&body).expect("ok");
        assert_eq!(ok.detail["message_parts"], json!(["A", "B"]));
        let body = json!({"message-count": "2", "messages": [{"status": "0", "message-id": "A"}, {"status": "6", "error-text": "Invalid Message"}]});
        assert_eq!(accepted(&body).expect_err("bad part").class(), "permanent");
    }
}
