//! Web Push: RFC 8030 delivery, RFC 8291 `aes128gcm` payload encryption (by the
//! `web-push-native` crate), RFC 8292 VAPID. The VAPID JWT is signed here with `jsonwebtoken`
//! because its `aud` must be the endpoint's origin *including* a non-default port, which the
//! crate's own VAPID helper drops.
//!
//! Endpoints are user-supplied: https only, no redirects, and no private, loopback, link-local
//! or reserved address (checked on the URL at request time, and on every address connected to
//! by `public_net`'s resolver) unless `allow_private_networks` is on.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use serde::Deserialize;
use serde_json::json;

use super::http::{HttpReply, execute, generic};
use super::settings::{BuildEnv, Common, Vendor};
use super::{OutboundMessage, Provider, ProviderAccepted, ProviderError, public_net, push_parts};
use crate::domain::recipient::{PushTarget, check_endpoint};
use crate::domain::{Channel, Priority, Recipient};
use crate::secret::Secret;

/// `kind = "web_push"` (VAPID).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The raw 32-byte P-256 private key, base64url.
    pub vapid_private_key: Secret,
    /// `mailto:` or `https:` contact for push services.
    pub vapid_subject: String,
}

impl Vendor for Config {
    const CHANNELS: &'static [Channel] = &[Channel::Push];
    const SECRETS: &'static [(&'static str, &'static str)] = &[("vapid_private_key", "vapid_private_key_file")];

    fn build(&self, _: &str, common: &Common, _: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String> {
        // Endpoints come from callers: no redirects, public addresses only (unless allowed).
        let client = public_net::client(common.allow_private_networks).map_err(|e| format!("http client: {e}"))?;
        Ok(Arc::new(WebPush::new(self, common, client)?))
    }
}

/// How long a push service keeps an undelivered message when the notification has no expiry.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// VAPID tokens may live at most 24 hours (RFC 8292 §2).
const VAPID_LIFETIME: Duration = Duration::from_secs(12 * 3600);

pub struct WebPush {
    client: reqwest::Client,
    vapid_key: EncodingKey,
    /// The VAPID public key, base64url uncompressed point: the `k=` of the header.
    vapid_public: String,
    subject: String,
    allow_private: bool,
    timeout: Duration,
}

impl WebPush {
    fn new(cfg: &Config, common: &Common, client: reqwest::Client) -> Result<Self, String> {
        let raw = &cfg.vapid_private_key;
        let bytes = URL_SAFE_NO_PAD
            .decode(raw.expose().trim().trim_end_matches('='))
            .map_err(|_| "vapid_private_key: not base64url".to_string())?;
        let secret = p256::SecretKey::from_slice(&bytes)
            .map_err(|_| "vapid_private_key: not a raw 32-byte P-256 private key".to_string())?;
        let der = secret.to_pkcs8_der().map_err(|e| format!("vapid_private_key: {e}"))?;
        let vapid_key = EncodingKey::from_ec_der(der.as_bytes());
        let public = secret.public_key();
        let vapid_public = URL_SAFE_NO_PAD.encode(p256::EncodedPoint::from(public).as_bytes());
        Ok(WebPush {
            client,
            vapid_key,
            vapid_public,
            subject: cfg.vapid_subject.clone(),
            allow_private: common.allow_private_networks,
            timeout: common.timeout(),
        })
    }

    /// `Authorization: vapid t=<JWT>, k=<public key>` for an endpoint origin.
    pub fn vapid_header(&self, audience: &str) -> Result<String, ProviderError> {
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + VAPID_LIFETIME.as_secs();
        let claims = json!({"aud": audience, "exp": exp, "sub": self.subject});
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.vapid_key)
            .map_err(|e| ProviderError::Transient(format!("web push: signing VAPID: {e}")))?;
        Ok(format!("vapid t={token}, k={}", self.vapid_public))
    }
}

#[async_trait]
impl Provider for WebPush {
    fn accepts(&self, to: &Recipient) -> bool {
        matches!(to, Recipient::Push(PushTarget::WebPush(_)))
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError> {
        let Recipient::Push(PushTarget::WebPush(sub)) = &msg.to else {
            return Err(ProviderError::Permanent("web_push carries Web Push subscriptions only".into()));
        };
        let url = check_endpoint(&sub.endpoint, self.allow_private)
            .map_err(|e| ProviderError::Permanent(format!("web push endpoint: {e}")))?;
        let key = |s: &str| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok();
        let ua_public = key(&sub.keys.p256dh)
            .and_then(|b| p256::PublicKey::from_sec1_bytes(&b).ok())
            .ok_or_else(|| ProviderError::RecipientInvalid("web push: bad p256dh key".into()))?;
        let auth = key(&sub.keys.auth)
            .filter(|a| a.len() == 16)
            .map(|a| auth_secret(&a))
            .ok_or_else(|| ProviderError::RecipientInvalid("web push: bad auth secret".into()))?;

        let p = push_parts(msg)?;
        let plaintext = json!({"id": msg.id.to_string(), "title": p.title, "body": p.body, "data": p.data}).to_string();
        let body = web_push_native::encrypt(plaintext.into_bytes(), &ua_public, &auth)
            .map_err(|e| ProviderError::Permanent(format!("web push: encrypting: {e:?}")))?;

        let ttl = match msg.expires_at {
            Some(t) => (t - time::OffsetDateTime::now_utc()).whole_seconds().max(0) as u64,
            None => DEFAULT_TTL.as_secs(),
        };
        let urgency = match msg.priority {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        };
        // The audience is the origin, port included when it is not the default.
        let audience = url.origin().ascii_serialization();
        let req = self
            .client
            .post(url.as_str())
            .header("authorization", self.vapid_header(&audience)?)
            .header("ttl", ttl.to_string())
            .header("urgency", urgency)
            // A retry replaces an undelivered earlier copy (RFC 8030 §5.4).
            .header("topic", msg.id.as_uuid().simple().to_string())
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .body(body)
            .timeout(self.timeout);
        let reply = execute(req).await?;
        if reply.status.is_success() {
            let id = reply.headers.get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
            return Ok(ProviderAccepted::with_id(id));
        }
        Err(classify(&reply))
    }
}

/// The 16-byte auth secret as the crate's type (a generic-array 0.14 array, whose slice
/// constructor is deprecated upstream but is the only one that crate version offers).
fn auth_secret(bytes: &[u8]) -> web_push_native::Auth {
    let mut auth = web_push_native::Auth::default();
    auth.copy_from_slice(bytes);
    auth
}

/// Push service answers (RFC 8030 and the services' docs):
///
/// | status | class |
/// | --- | --- |
/// | 404, 410 (subscription expired or unsubscribed) | recipient invalid |
/// | 400, 413 (bad request, payload too large) | permanent |
/// | 401, 403 (VAPID refused) | transient (provider-level: our keys) |
/// | 429 | rate limited |
/// | 5xx | transient |
pub fn classify(reply: &HttpReply) -> ProviderError {
    let what = format!("web push {}: {}", reply.status.as_u16(), reply.snippet());
    match reply.status.as_u16() {
        404 | 410 => ProviderError::RecipientInvalid(what),
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
            (404, "recipient_invalid"),
            (410, "recipient_invalid"),
            (400, "permanent"),
            (413, "permanent"),
            (401, "transient"),
            (403, "transient"),
            (429, "rate_limited"),
            (500, "transient"),
            (503, "transient"),
        ];
        for (status, class) in rows {
            let reply = HttpReply {
                status: StatusCode::from_u16(status).expect("s"),
                headers: Default::default(),
                body: "".into(),
            };
            assert_eq!(classify(&reply).class(), class, "{status}");
        }
    }

    /// RFC 8291 Appendix A: the example message decrypts with the user agent's private key and
    /// auth secret to the example plaintext.
    #[test]
    fn rfc8291_appendix_a_vector_decrypts() {
        let b = |s: &str| URL_SAFE_NO_PAD.decode(s).expect("base64url");
        let ua_private = p256::SecretKey::from_slice(&b("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")).expect("key");
        let auth = auth_secret(&b("BTBZMqHH6r4Tts7J_aSIgg"));
        let body = b(
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
        );
        let plain = web_push_native::decrypt(body, &ua_private, &auth).expect("decrypt");
        assert_eq!(plain, b"When I grow up, I want to be a watermelon");
    }

    #[test]
    fn the_vapid_audience_keeps_a_non_default_port() {
        let cfg = Config {
            vapid_private_key: Secret::new("RS0WdYWWo1HajXg3NZR1olzCf31i-ZBGDkFyCs7j1jw"),
            vapid_subject: "mailto:ops@example.com".into(),
        };
        let wp = WebPush::new(&cfg, &Common::default(), reqwest::Client::new()).expect("provider");
        let url = url::Url::parse("https://push.example.net:8443/sub/1").expect("url");
        let header = wp.vapid_header(&url.origin().ascii_serialization()).expect("header");
        let token = header.strip_prefix("vapid t=").and_then(|h| h.split(',').next()).expect("token");
        let claims = URL_SAFE_NO_PAD.decode(token.split('.').nth(1).expect("claims")).expect("b64");
        let claims: serde_json::Value = serde_json::from_slice(&claims).expect("json");
        assert_eq!(claims["aud"], "https://push.example.net:8443");
        assert_eq!(claims["sub"], "mailto:ops@example.com");
        assert!(header.contains(", k=B"), "{header}");
    }
}
