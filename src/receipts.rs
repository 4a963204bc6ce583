//! What provider receipts are made of, shared by every vendor's verifier (each in its provider
//! module: `providers::<kind>::receipts`, reached through `Provider::receipts`): the
//! request as received, the verified receipt in Herald's terms, the errors, and the
//! constant-time and replay-window helpers. Nothing changes unless a signature holds; applying
//! a verified receipt is `store::receipts::apply`. Imports nothing of Herald but `domain`.

use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::domain::{NotificationId, Status};

/// Which notification a receipt is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Our id, echoed back by the provider (custom args, tags, client-ref).
    Notification(NotificationId),
    /// The provider's message id, recorded when the provider accepted the message.
    ProviderMessageId(String),
}

/// One verified receipt, mapped to Herald's terms.
#[derive(Clone, Debug)]
pub struct Receipt {
    /// The provider's event id, or a key built from what makes the receipt distinct.
    pub dedupe_key: String,
    pub target: Target,
    pub provider_message_id: Option<String>,
    /// The provider's own word for the state (`delivered`, `bounce`, …).
    pub provider_status: String,
    /// The status it leads to, if any (interim states lead to none).
    pub status: Option<Status>,
    /// Add the recipient to the suppression list, for this reason.
    pub suppress: Option<String>,
    /// Kept in the timeline event and the inbox.
    pub detail: Value,
    /// For schemes whose signature does not cover the event (Mailgun signs only a timestamp
    /// and a token): the signed token, which may be used for this one event only.
    pub replay_token: Option<String>,
}

/// A verified request that is not a receipt (an SNS subscription confirmation).
#[derive(Debug)]
pub enum Verified {
    Receipts(Vec<Receipt>),
    Acknowledged(String),
}

/// What a verifier needs besides the request.
pub struct ReceiptContext<'a> {
    /// `/webhooks/NAME`, as the provider calls it.
    pub path: &'a str,
    /// `server.public_base_url`: the URL the provider signs (Twilio).
    pub public_base_url: &'a str,
    /// `receipts.max_age_secs`: the replay window of signed timestamps.
    pub max_age: Duration,
}

/// Why a receipt request was refused. Every kind but `Malformed` is a failed authenticity
/// check (401); none changes any state.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// Checking needs a key Herald was not given (`providers.NAME.KEY`, or a server key).
    #[error("receipts need {0}")]
    NotConfigured(&'static str),
    /// The request carries no signature (or no part of one): the header or field named.
    #[error("no {0}")]
    Unsigned(&'static str),
    /// The signature named does not verify.
    #[error("{0} does not match")]
    BadSignature(&'static str),
    /// Signed, but too old or too far in the future: a replay, or a skewed clock.
    #[error("timestamp outside the replay window")]
    Stale,
    /// Signed by someone Herald does not trust (an SNS topic or certificate host).
    #[error("{0}")]
    Untrusted(String),
    /// Authentic or not, not a request this provider sends.
    #[error("{0}")]
    Malformed(String),
}

impl ReceiptError {
    /// A short, fixed name of the refusal (for logs and metrics).
    pub fn reason(&self) -> &'static str {
        match self {
            ReceiptError::NotConfigured(_) => "not_configured",
            ReceiptError::Unsigned(_) => "unsigned",
            ReceiptError::BadSignature(_) => "bad_signature",
            ReceiptError::Stale => "stale",
            ReceiptError::Untrusted(_) => "untrusted",
            ReceiptError::Malformed(_) => "malformed",
        }
    }
}

/// The parts of the request verifiers need: the raw body, never re-serialised.
pub struct Incoming<'a> {
    pub method: &'a str,
    /// The query string as received (without `?`), or empty.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
}

impl Incoming<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Form or query parameters, in the order received.
    pub fn params(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = url::form_urlencoded::parse(self.query.as_bytes()).into_owned().collect();
        let is_form = self.header("content-type").is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if is_form || (self.method == "POST" && !self.body.is_empty() && !self.body.starts_with(b"{")) {
            p.extend(url::form_urlencoded::parse(self.body).into_owned());
        }
        p
    }
}

/// Constant-time equality of two byte strings.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Whether a signed unix timestamp is within the replay window.
pub fn fresh(timestamp: i64, max_age: Duration) -> bool {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    now.abs_diff(timestamp) <= max_age.as_secs()
}

/// A stable key for receipts whose provider gives no event id.
pub fn hashed_key(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}
