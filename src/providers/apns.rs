//! Apple Push Notification service, token auth, over HTTP/2 only (APNs has no HTTP/1.1).
//! The provider token is an ES256 JWT (`kid` = key id, `iss` = team id, `iat`), reused for
//! 50 minutes (Apple refuses tokens older than an hour and throttles frequent new ones).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::http::{HttpReply, execute, generic};
use super::settings::{BuildEnv, Common, Origin, Vendor};
use super::{OutboundMessage, Provider, ProviderAccepted, ProviderError, push_parts};
use crate::domain::recipient::PushTarget;
use crate::domain::{Channel, Priority, Recipient};

/// `kind = "apns"` (token auth).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub team_id: String,
    pub key_id: String,
    /// The `.p8` key Apple issued.
    pub private_key_file: PathBuf,
    /// The app's bundle id.
    pub topic: String,
    #[serde(default)]
    pub environment: ApnsEnvironment,
    pub base_url: Option<Origin>,
}

/// Which Apple origin to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApnsEnvironment {
    #[default]
    Production,
    Sandbox,
}

impl Vendor for Config {
    const CHANNELS: &'static [Channel] = &[Channel::Push];

    fn build(&self, _: &str, common: &Common, _: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String> {
        Ok(Arc::new(Apns::new(self, common)?))
    }
}

const TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);

pub struct Apns {
    client: reqwest::Client,
    origin: String,
    team_id: String,
    key_id: String,
    topic: String,
    key: EncodingKey,
    token: Mutex<Option<(String, Instant)>>,
    timeout: Duration,
}

impl Apns {
    fn new(cfg: &Config, common: &Common) -> Result<Self, String> {
        let path = &cfg.private_key_file;
        let pem = std::fs::read(path).map_err(|e| format!("private_key_file {}: {e}", path.display()))?;
        let key = EncodingKey::from_ec_pem(&pem).map_err(|e| format!("private_key_file: not a .p8 P-256 key: {e}"))?;
        // HTTP/2 from the first byte: over TLS ALPN offers only h2; over plain TCP (a local
        // fake) it is h2c with prior knowledge.
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Apns {
            client,
            origin: Origin::or(
                cfg.base_url.as_ref(),
                match cfg.environment {
                    ApnsEnvironment::Production => "https://api.push.apple.com",
                    ApnsEnvironment::Sandbox => "https://api.sandbox.push.apple.com",
                },
            ),
            team_id: cfg.team_id.clone(),
            key_id: cfg.key_id.clone(),
            topic: cfg.topic.clone(),
            key,
            token: Mutex::new(None),
            timeout: common.timeout(),
        })
    }

    fn provider_token(&self, force_new: bool) -> Result<String, ProviderError> {
        let mut cached = self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !force_new
            && let Some((t, made)) = cached.as_ref()
            && made.elapsed() < TOKEN_REUSE
        {
            return Ok(t.clone());
        }
        let iat = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let token = jsonwebtoken::encode(&header, &json!({"iss": self.team_id, "iat": iat}), &self.key)
            .map_err(|e| ProviderError::Transient(format!("apns: signing the provider token: {e}")))?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// The JSON payload: `aps.alert` with title and body, custom data beside `aps`.
    pub fn payload(msg: &OutboundMessage) -> Result<Value, ProviderError> {
        let p = push_parts(msg)?;
        let mut alert = serde_json::Map::new();
        if let Some(t) = &p.title {
            alert.insert("title".into(), json!(t));
        }
        if let Some(b) = &p.body {
            alert.insert("body".into(), json!(b));
        }
        let mut payload = json!({"aps": {"alert": alert, "sound": "default"}});
        for (k, v) in &p.data {
            if k != "aps" {
                payload[k] = json!(v);
            }
        }
        Ok(payload)
    }
}

#[async_trait]
impl Provider for Apns {
    fn accepts(&self, to: &Recipient) -> bool {
        matches!(to, Recipient::Push(PushTarget::Apns(_)))
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError> {
        let Recipient::Push(PushTarget::Apns(device)) = &msg.to else {
            return Err(ProviderError::Permanent("apns carries APNs device tokens only".into()));
        };
        let payload = Self::payload(msg)?;
        let expiration = msg.expires_at.map_or(0, |t| t.unix_timestamp().max(0));
        let priority = if msg.priority == Priority::Low { "5" } else { "10" };
        let url = format!("{}/3/device/{device}", self.origin);
        let mut retried_token = false;
        loop {
            let token = self.provider_token(retried_token)?;
            let req = self
                .client
                .post(&url)
                .header("authorization", format!("bearer {token}"))
                .header("apns-topic", &self.topic)
                .header("apns-push-type", "alert")
                .header("apns-priority", priority)
                .header("apns-expiration", expiration.to_string())
                // Our id: APNs echoes it as apns-id, and a retry collapses onto the first copy.
                .header("apns-id", msg.id.to_string())
                .header("apns-collapse-id", msg.id.to_string())
                .json(&payload)
                .timeout(self.timeout);
            let reply = execute(req).await?;
            if reply.status.is_success() {
                let id = reply.headers.get("apns-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                return Ok(ProviderAccepted::with_id(id));
            }
            let reason = reason(&reply);
            if reason == "ExpiredProviderToken" && !retried_token {
                // Our cached token is older than Apple allows: make a new one and try once more.
                retried_token = true;
                continue;
            }
            return Err(classify(&reply));
        }
    }
}

fn reason(reply: &HttpReply) -> String {
    reply.json()["reason"].as_str().unwrap_or("").to_owned()
}

/// APNs answers (`reason` in the JSON body):
///
/// | status, reason | class |
/// | --- | --- |
/// | 400 `BadDeviceToken`, 400 `DeviceTokenNotForTopic`, 410 `Unregistered` / `ExpiredToken` | recipient invalid |
/// | 400 other (`BadTopic`, `PayloadEmpty`, `BadCollapseId`, …), 413 `PayloadTooLarge` | permanent |
/// | 403 `InvalidProviderToken`, `ExpiredProviderToken`, `MissingProviderToken`, `BadCertificate` | transient (provider-level) |
/// | 429 `TooManyRequests`, `TooManyProviderTokenUpdates` | rate limited |
/// | 500 `InternalServerError`, 503 `ServiceUnavailable` / `Shutdown` | transient |
pub fn classify(reply: &HttpReply) -> ProviderError {
    let reason = reason(reply);
    let what = format!("apns {} {reason}", reply.status.as_u16());
    match (reply.status.as_u16(), reason.as_str()) {
        (400, "BadDeviceToken" | "DeviceTokenNotForTopic") | (410, _) => ProviderError::RecipientInvalid(what),
        (403, _) => ProviderError::Transient(what),
        _ => generic(reply.status, reply.retry_after(), what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn error_table() {
        let rows = [
            (400, "BadDeviceToken", "recipient_invalid"),
            (400, "DeviceTokenNotForTopic", "recipient_invalid"),
            (410, "Unregistered", "recipient_invalid"),
            (410, "ExpiredToken", "recipient_invalid"),
            (400, "BadTopic", "permanent"),
            (400, "PayloadEmpty", "permanent"),
            (413, "PayloadTooLarge", "permanent"),
            (403, "InvalidProviderToken", "transient"),
            (403, "ExpiredProviderToken", "transient"),
            (429, "TooManyRequests", "rate_limited"),
            (500, "InternalServerError", "transient"),
            (503, "ServiceUnavailable", "transient"),
        ];
        for (status, reason, class) in rows {
            let reply = HttpReply {
                status: StatusCode::from_u16(status).expect("status"),
                headers: Default::default(),
                body: json!({"reason": reason}).to_string().into(),
            };
            assert_eq!(classify(&reply).class(), class, "{status} {reason}");
        }
    }
}
