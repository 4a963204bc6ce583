//! Firebase Cloud Messaging HTTP v1. Auth is Google's service-account flow: an RS256 JWT
//! (`iss` = client email, `aud` = the JSON's `token_uri`, the messaging scope) exchanged at
//! `token_uri` for an access token, cached and refreshed five minutes before it expires, one
//! refresh at a time. Sends go to `{base_url}/v1/projects/{project_id}/messages:send`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::http::{HttpReply, execute, generic};
use super::settings::{BuildEnv, Common, Origin, Vendor};
use super::{OutboundMessage, Provider, ProviderAccepted, ProviderError, push_parts};
use crate::domain::recipient::PushTarget;
use crate::domain::{Channel, Recipient};
use crate::secret::Secret;

/// `kind = "fcm"`: Google's service-account JSON, inline or as `service_account_file`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub service_account_json: Secret,
    pub base_url: Option<Origin>,
}

impl Vendor for Config {
    const CHANNELS: &'static [Channel] = &[Channel::Push];
    const SECRETS: &'static [(&'static str, &'static str)] = &[("service_account_json", "service_account_file")];

    fn build(&self, _: &str, common: &Common, env: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String> {
        let account: ServiceAccount = serde_json::from_str(self.service_account_json.expose())
            .map_err(|e| format!("service account JSON: {e}"))?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| format!("service account private_key: {e}"))?;
        let origin = Origin::or(self.base_url.as_ref(), "https://fcm.googleapis.com");
        Ok(Arc::new(Fcm {
            client: env.client.clone(),
            url: format!("{origin}/v1/projects/{}/messages:send", account.project_id),
            account,
            key,
            token: Mutex::new(None),
            timeout: common.timeout(),
        }))
    }
}

pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The fields of a Google service-account JSON that the flow needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub private_key: String,
    pub private_key_id: Option<String>,
    pub client_email: String,
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

struct CachedToken {
    value: String,
    refresh_at: Instant,
}

pub struct Fcm {
    client: reqwest::Client,
    url: String,
    account: ServiceAccount,
    key: EncodingKey,
    token: Mutex<Option<CachedToken>>,
    timeout: Duration,
}

impl Fcm {
    /// A valid access token. The lock makes concurrent senders wait for one refresh instead of
    /// each asking Google for a token.
    async fn access_token(&self) -> Result<String, ProviderError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims {
            iss: &self.account.client_email,
            scope: SCOPE,
            aud: &self.account.token_uri,
            iat: now,
            exp: now + 3600,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.account.private_key_id.clone();
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| ProviderError::Transient(format!("fcm: signing the token request: {e}")))?;
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())];
        let reply = execute(self.client.post(&self.account.token_uri).form(&form).timeout(self.timeout)).await?;
        let body = reply.json();
        let (Some(token), true) = (body["access_token"].as_str(), reply.status.is_success()) else {
            // invalid_grant (clock skew, revoked key) is our configuration: keep the message.
            return Err(ProviderError::Transient(format!(
                "fcm: token request refused ({}): {}",
                reply.status,
                reply.snippet()
            )));
        };
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(3600));
        let refresh_in = lifetime.saturating_sub(Duration::from_secs(300)).max(Duration::from_secs(30));
        *cached = Some(CachedToken { value: token.to_owned(), refresh_at: Instant::now() + refresh_in });
        Ok(token.to_owned())
    }

    pub fn body(&self, msg: &OutboundMessage) -> Result<Value, ProviderError> {
        let Recipient::Push(PushTarget::Fcm(token)) = &msg.to else {
            return Err(ProviderError::Permanent("fcm carries FCM tokens only".into()));
        };
        let p = push_parts(msg)?;
        let mut notification = serde_json::Map::new();
        if let Some(t) = &p.title {
            notification.insert("title".into(), json!(t));
        }
        if let Some(b) = &p.body {
            notification.insert("body".into(), json!(b));
        }
        let mut message = json!({"token": token, "notification": notification});
        if !p.data.is_empty() {
            message["data"] = json!(p.data);
        }
        // A retry replaces an undelivered copy on the device instead of adding a second one.
        message["android"] = json!({"collapse_key": msg.id.to_string()});
        Ok(json!({ "message": message }))
    }
}

#[async_trait]
impl Provider for Fcm {
    fn send_timeout(&self, configured: Duration) -> Duration {
        configured * 2 // a token refresh and a send
    }

    fn accepts(&self, to: &Recipient) -> bool {
        matches!(to, Recipient::Push(PushTarget::Fcm(_)))
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError> {
        let body = self.body(msg)?;
        let token = self.access_token().await?;
        let reply = execute(self.client.post(&self.url).bearer_auth(token).json(&body).timeout(self.timeout)).await?;
        if reply.status.is_success() {
            return Ok(ProviderAccepted {
                provider_message_id: reply.json()["name"].as_str().map(str::to_owned),
                detail: Default::default(),
            });
        }
        if reply.status == reqwest::StatusCode::UNAUTHORIZED {
            // The token was revoked or expired early: fetch a new one next time.
            *self.token.lock().await = None;
        }
        Err(classify(&reply))
    }
}

/// FCM v1 errors: `error.status`, refined by `error.details[].errorCode` (FcmError):
///
/// | error | class |
/// | --- | --- |
/// | `UNREGISTERED` (404), `SENDER_ID_MISMATCH` (403) | recipient invalid |
/// | `INVALID_ARGUMENT` (400) | permanent |
/// | `QUOTA_EXCEEDED`, `RESOURCE_EXHAUSTED`, 429 | rate limited (`Retry-After`) |
/// | `UNAVAILABLE` (503), `INTERNAL` (500), other 5xx (may be HTML) | transient |
/// | `THIRD_PARTY_AUTH_ERROR`, `UNAUTHENTICATED` (401), `PERMISSION_DENIED` (403) | transient (provider-level) |
pub fn classify(reply: &HttpReply) -> ProviderError {
    let body = reply.json();
    let err = &body["error"];
    let code = err["details"]
        .as_array()
        .and_then(|d| d.iter().find_map(|x| x["errorCode"].as_str()))
        .or(err["status"].as_str())
        .unwrap_or("")
        .to_owned();
    let message = err["message"].as_str().map_or_else(|| reply.snippet(), str::to_owned);
    let what = format!("fcm {} {code}: {message}", reply.status.as_u16());
    match code.as_str() {
        "UNREGISTERED" | "SENDER_ID_MISMATCH" => ProviderError::RecipientInvalid(what),
        "INVALID_ARGUMENT" => ProviderError::Permanent(what),
        "QUOTA_EXCEEDED" | "RESOURCE_EXHAUSTED" => {
            ProviderError::RateLimited { retry_after: reply.retry_after(), message: what }
        }
        "UNAVAILABLE" | "INTERNAL" | "THIRD_PARTY_AUTH_ERROR" | "UNAUTHENTICATED" | "PERMISSION_DENIED" => {
            ProviderError::Transient(what)
        }
        _ => generic(reply.status, reply.retry_after(), what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn reply(status: u16, error_status: &str, error_code: Option<&str>) -> HttpReply {
        let details = match error_code {
            Some(c) => json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c}]),
            None => json!([]),
        };
        let body = json!({"error": {"code": status, "message": "m", "status": error_status, "details": details}});
        HttpReply {
            status: StatusCode::from_u16(status).expect("status"),
            headers: Default::default(),
            body: body.to_string().into(),
        }
    }

    #[test]
    fn error_table() {
        let rows = [
            (404, "NOT_FOUND", Some("UNREGISTERED"), "recipient_invalid"),
            (403, "PERMISSION_DENIED", Some("SENDER_ID_MISMATCH"), "recipient_invalid"),
            (400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), "permanent"),
            (400, "INVALID_ARGUMENT", None, "permanent"),
            (429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"), "rate_limited"),
            (503, "UNAVAILABLE", Some("UNAVAILABLE"), "transient"),
            (500, "INTERNAL", Some("INTERNAL"), "transient"),
            (401, "UNAUTHENTICATED", Some("THIRD_PARTY_AUTH_ERROR"), "transient"),
            (401, "UNAUTHENTICATED", None, "transient"),
        ];
        for (status, st, code, class) in rows {
            assert_eq!(classify(&reply(status, st, code)).class(), class, "{status} {st} {code:?}");
        }
        let html =
            HttpReply { status: StatusCode::BAD_GATEWAY, headers: Default::default(), body: "<html>502</html>".into() };
        assert_eq!(classify(&html).class(), "transient");
    }
}
