//! SendGrid Event Webhook: a JSON array of events, signed with ECDSA P-256 / SHA-256 over the
//! timestamp header immediately followed by the raw body (`X-Twilio-Email-Event-Webhook-
//! Signature`, base64 DER; `…-Timestamp`). The key is the base64 DER public key SendGrid shows.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde_json::{Value, json};

use crate::domain::Status;
use crate::receipts::{Incoming, Receipt, ReceiptError, Target, fresh, hashed_key};

pub fn verifying_key(b64_der: &str) -> Option<VerifyingKey> {
    let der = STANDARD.decode(b64_der.trim()).ok()?;
    VerifyingKey::from_public_key_der(&der).ok()
}

/// Whether `signature` (base64 DER) signs `timestamp ‖ body` under `key`.
pub fn signature_holds(key: &VerifyingKey, signature: &str, timestamp: &str, body: &[u8]) -> bool {
    let Some(sig) = STANDARD.decode(signature.trim()).ok().and_then(|d| Signature::from_der(&d).ok()) else {
        return false;
    };
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(body);
    key.verify(&signed, &sig).is_ok()
}

pub fn verify(
    incoming: &Incoming<'_>,
    key: Option<&VerifyingKey>,
    max_age: Duration,
) -> Result<Vec<Receipt>, ReceiptError> {
    let key = key.ok_or(ReceiptError::NotConfigured("providers.NAME.webhook_public_key"))?;
    let sig = incoming
        .header("x-twilio-email-event-webhook-signature")
        .ok_or(ReceiptError::Unsigned("X-Twilio-Email-Event-Webhook-Signature"))?;
    let ts = incoming
        .header("x-twilio-email-event-webhook-timestamp")
        .ok_or(ReceiptError::Unsigned("X-Twilio-Email-Event-Webhook-Timestamp"))?;
    if !signature_holds(key, sig, ts, incoming.body) {
        return Err(ReceiptError::BadSignature("the event webhook signature"));
    }
    if !ts.parse::<i64>().is_ok_and(|t| fresh(t, max_age)) {
        return Err(ReceiptError::Stale);
    }
    let events: Vec<Value> = serde_json::from_slice(incoming.body)
        .map_err(|e| ReceiptError::Malformed(format!("not a JSON array of events: {e}")))?;
    Ok(events.iter().filter_map(receipt).collect())
}

fn receipt(e: &Value) -> Option<Receipt> {
    let event = e["event"].as_str()?.to_owned();
    // sg_message_id = X-Message-Id + per-recipient suffixes.
    let pmid = e["sg_message_id"].as_str().map(|m| m.split('.').next().unwrap_or(m).to_owned());
    let target = match e["herald_id"].as_str().and_then(|id| id.parse().ok()) {
        Some(id) => Target::Notification(id),
        None => Target::ProviderMessageId(pmid.clone()?),
    };
    let dedupe_key = match e["sg_event_id"].as_str() {
        Some(id) => id.to_owned(),
        None => hashed_key(&[&event, pmid.as_deref().unwrap_or(""), &e["timestamp"].to_string()]),
    };
    let (status, suppress) = map(&event, e["type"].as_str(), e["reason"].as_str());
    Some(Receipt {
        dedupe_key,
        target,
        provider_message_id: pmid,
        provider_status: event.clone(),
        status,
        suppress,
        detail: json!({"provider_status": event, "reason": e["reason"], "response": e["response"], "type": e["type"]}),
        replay_token: None,
    })
}

/// SendGrid events → ours:
///
/// | event | Herald |
/// | --- | --- |
/// | `processed` | `sent` |
/// | `delivered` | `delivered` |
/// | `bounce` (`type: bounce`) | `bounced`, suppress |
/// | `bounce` (`type: blocked`), `dropped` | `failed` (a drop for a bounced or invalid address also suppresses) |
/// | `spamreport` | `complained`, suppress |
/// | `unsubscribe`, `group_unsubscribe` | no change, suppress |
/// | `deferred`, `open`, `click`, others | no change |
pub fn map(event: &str, bounce_type: Option<&str>, reason: Option<&str>) -> (Option<Status>, Option<String>) {
    match (event, bounce_type) {
        ("processed", _) => (Some(Status::Sent), None),
        ("delivered", _) => (Some(Status::Delivered), None),
        ("bounce", Some("blocked")) => (Some(Status::Failed), None),
        ("bounce", _) => (Some(Status::Bounced), Some(format!("hard bounce: {}", reason.unwrap_or("bounce")))),
        ("dropped", _) => {
            let r = reason.unwrap_or("");
            let suppress = (r.contains("Bounced") || r.contains("Invalid")).then(|| format!("dropped: {r}"));
            (Some(Status::Failed), suppress)
        }
        ("spamreport", _) => (Some(Status::Complained), Some("spam complaint".into())),
        ("unsubscribe" | "group_unsubscribe", _) => (None, Some("unsubscribed".into())),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sendgrid-nodejs and sendgrid-python event webhook tests.
    #[test]
    fn official_vectors() {
        let key = verifying_key("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==").expect("key");
        let sig = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";
        let body = br#"{"category":"example_payload","event":"test_event","message_id":"message_id"}"#;
        assert!(signature_holds(&key, sig, "1588788367", body));
        assert!(!signature_holds(&key, sig, "1588788368", body), "another timestamp");
        assert!(!signature_holds(&key, sig, "1588788367", b"payload"), "another body");
        assert!(!signature_holds(&key, &sig.replace("NH2j/0=", "NH3j/0="), "1588788367", body), "a changed signature");
        let other = verifying_key("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA==").expect("key");
        assert!(!signature_holds(&other, sig, "1588788367", body), "another key");

        let key = verifying_key("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==").expect("key");
        let sig = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM=";
        let body = "[{\"email\":\"hello@world.com\",\"event\":\"dropped\",\"reason\":\"Bounced Address\",\"sg_event_id\":\"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA\",\"sg_message_id\":\"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0\",\"smtp-id\":\"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>\",\"timestamp\":1600112492}]\r\n";
        assert!(signature_holds(&key, sig, "1600112502", body.as_bytes()));
        assert!(!signature_holds(&key, sig, "1600112502", body.trim_end().as_bytes()), "the trailing CRLF is signed");
        let events: Vec<Value> = serde_json::from_str(body.trim_end()).expect("json");
        let r = receipt(&events[0]).expect("receipt");
        assert_eq!(r.target, Target::ProviderMessageId("LRzXl_NHStOGhQ4kofSm_A".into()));
        assert_eq!((r.status, r.suppress.is_some()), (Some(Status::Failed), true));
    }

    #[test]
    fn event_table() {
        let rows = [
            ("processed", None, None, Some(Status::Sent), false),
            ("delivered", None, None, Some(Status::Delivered), false),
            ("deferred", None, None, None, false),
            ("bounce", Some("bounce"), Some("550 5.1.1 unknown user"), Some(Status::Bounced), true),
            ("bounce", Some("blocked"), Some("blocked by policy"), Some(Status::Failed), false),
            ("dropped", None, Some("Invalid"), Some(Status::Failed), true),
            ("dropped", None, Some("Spam Content"), Some(Status::Failed), false),
            ("spamreport", None, None, Some(Status::Complained), true),
            ("unsubscribe", None, None, None, true),
            ("open", None, None, None, false),
        ];
        for (event, ty, reason, status, suppress) in rows {
            let (st, sup) = map(event, ty, reason);
            assert_eq!((st, sup.is_some()), (status, suppress), "{event} {ty:?}");
        }
    }
}
