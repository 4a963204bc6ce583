//! Amazon SES events through SNS. The SNS message signature (RSA PKCS#1 v1.5, SHA-1 for
//! `SignatureVersion` 1, SHA-256 for 2) is checked with the certificate at `SigningCertURL`,
//! fetched only from an allowed host (AWS's own `sns.<region>.amazonaws.com`, plus
//! `sns_cert_hosts` for tests and private partitions) and cached. `TopicArn` must be one of
//! `sns_topic_arns`. Subscription confirmations are confirmed by fetching `SubscribeURL`
//! (same host rule). The SES event is a JSON string inside `Message`.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{
    RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::Status;
use crate::receipts::{Incoming, Receipt, ReceiptError, Target, Verified, fresh};

/// Signing certificates' public keys, by URL: fetched once per process.
static CERT_KEYS: LazyLock<Mutex<HashMap<String, Vec<u8>>>> = LazyLock::new(Default::default);

/// `sns.<region>.amazonaws.com` (or `.com.cn`), as AWS's own validators require: a plain
/// `*.amazonaws.com` check would accept S3 buckets.
fn aws_sns_host(host: &str) -> bool {
    let rest = host.strip_prefix("sns.").unwrap_or("");
    let region = rest.strip_suffix(".amazonaws.com").or_else(|| rest.strip_suffix(".amazonaws.com.cn"));
    region.is_some_and(|r| r.len() >= 3 && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// What an SES provider accepts from SNS.
#[derive(Clone, Debug)]
pub struct Sns {
    /// `sns_topic_arns`: topics whose messages are accepted.
    pub topic_arns: Vec<String>,
    /// `sns_cert_hosts`: hosts signing certificates may come from besides sns.<region>.amazonaws.com.
    pub cert_hosts: Vec<String>,
    pub allow_private_networks: bool,
}

/// An SNS URL we may fetch: https (http only with `allow_private_networks`), an allowed host.
fn allowed_url(raw: &str, cfg: &Sns, pem: bool) -> Result<url::Url, ReceiptError> {
    let refuse = |why: &str| ReceiptError::Untrusted(format!("{raw}: {why}"));
    let url = url::Url::parse(raw).map_err(|_| refuse("not a URL"))?;
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && cfg.allow_private_networks);
    let host = url.host_str().unwrap_or_default();
    let host_port = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let host_ok = aws_sns_host(host) || cfg.cert_hosts.iter().any(|h| h == host || *h == host_port);
    if !scheme_ok || !host_ok {
        return Err(refuse("not an allowed SNS host"));
    }
    if pem && !url.path().to_ascii_lowercase().ends_with(".pem") {
        return Err(refuse("a signing certificate URL ends in .pem"));
    }
    Ok(url)
}

async fn cert_key(url: &url::Url, client: &reqwest::Client) -> Result<Vec<u8>, ReceiptError> {
    if let Some(k) = CERT_KEYS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(url.as_str()) {
        return Ok(k.clone());
    }
    let fail = |why: String| ReceiptError::Untrusted(format!("signing certificate {url}: {why}"));
    let resp = client
        .get(url.as_str())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("answered {}", resp.status())));
    }
    // A certificate is a couple of KiB: read no more than 16.
    let pem = crate::providers::http::read_capped(resp, 16 * 1024).await.map_err(|e| match e {
        crate::providers::http::ReadError::Transport(e) => fail(e.without_url().to_string()),
        crate::providers::http::ReadError::TooLong => fail("over 16 KiB: not a certificate".into()),
    })?;
    let key = public_key_of(&pem).map_err(fail)?;
    CERT_KEYS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(url.to_string(), key.clone());
    Ok(key)
}

/// The RSA public key (PKCS#1 DER) of a PEM certificate.
pub fn public_key_of(pem: &[u8]) -> Result<Vec<u8>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    let cert = pem.parse_x509().map_err(|e| format!("not X.509: {e}"))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// The string SNS signs: `key\nvalue\n` for the type's keys, in this fixed order.
pub fn string_to_sign(msg: &Value) -> String {
    let keys: &[&str] = match msg["Type"].as_str() {
        Some("Notification") => &["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
        _ => &["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"],
    };
    keys.iter().filter_map(|k| msg[*k].as_str().map(|v| format!("{k}\n{v}\n"))).collect()
}

pub fn signature_holds(msg: &Value, public_key: &[u8]) -> bool {
    let alg = match msg["SignatureVersion"].as_str() {
        Some("1") => &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        Some("2") => &RSA_PKCS1_2048_8192_SHA256,
        _ => return false,
    };
    let Some(sig) = msg["Signature"].as_str().and_then(|s| STANDARD.decode(s).ok()) else { return false };
    UnparsedPublicKey::new(alg, public_key).verify(string_to_sign(msg).as_bytes(), &sig).is_ok()
}

pub async fn verify(
    incoming: &Incoming<'_>,
    cfg: &Sns,
    client: &reqwest::Client,
    max_age: Duration,
) -> Result<Verified, ReceiptError> {
    let msg: Value = serde_json::from_slice(incoming.body)
        .map_err(|e| ReceiptError::Malformed(format!("not an SNS message: {e}")))?;
    let topic = msg["TopicArn"].as_str().unwrap_or_default();
    if cfg.topic_arns.is_empty() {
        return Err(ReceiptError::NotConfigured("providers.NAME.sns_topic_arns"));
    }
    if !cfg.topic_arns.iter().any(|t| t == topic) {
        return Err(ReceiptError::Untrusted(format!("topic {topic} is not in sns_topic_arns")));
    }
    let cert_url = msg["SigningCertURL"].as_str().or(msg["SigningCertUrl"].as_str()).unwrap_or_default();
    let cert_url = allowed_url(cert_url, cfg, true)?;
    let key = cert_key(&cert_url, client).await?;
    if !signature_holds(&msg, &key) {
        return Err(ReceiptError::BadSignature("the SNS signature"));
    }
    // SNS redelivers with the original Timestamp, for up to an hour under a custom retry
    // policy: the window is at least that long, and MessageId deduplicates replays within it.
    let window = max_age.max(Duration::from_secs(3600));
    let at = msg["Timestamp"].as_str().and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    if !at.is_some_and(|t| fresh(t.unix_timestamp(), window)) {
        return Err(ReceiptError::Stale);
    }
    match msg["Type"].as_str() {
        Some("SubscriptionConfirmation") => {
            let raw = msg["SubscribeURL"].as_str().or(msg["SubscribeUrl"].as_str()).unwrap_or_default();
            let url = allowed_url(raw, cfg, false)?;
            let resp = client.get(url.as_str()).timeout(Duration::from_secs(5)).send().await;
            match resp {
                Ok(r) if r.status().is_success() => Ok(Verified::Acknowledged(format!("subscribed to {topic}"))),
                Ok(r) => {
                    Err(ReceiptError::Malformed(format!("confirming the subscription: SNS answered {}", r.status())))
                }
                Err(e) => Err(ReceiptError::Malformed(format!("confirming the subscription: {}", e.without_url()))),
            }
        }
        Some("UnsubscribeConfirmation") => Ok(Verified::Acknowledged(format!("unsubscribed from {topic}"))),
        Some("Notification") => {
            let sns_id = msg["MessageId"].as_str().unwrap_or_default().to_owned();
            let event: Value = msg["Message"]
                .as_str()
                .and_then(|m| serde_json::from_str(m).ok())
                .ok_or_else(|| ReceiptError::Malformed("Message is not an SES event".into()))?;
            Ok(Verified::Receipts(ses_receipt(&sns_id, &event).into_iter().collect()))
        }
        other => Err(ReceiptError::Malformed(format!("unknown SNS message type {other:?}"))),
    }
}

fn ses_receipt(sns_id: &str, e: &Value) -> Option<Receipt> {
    // Configuration-set publishing says `eventType`; identity notifications `notificationType`.
    let kind = e["eventType"].as_str().or(e["notificationType"].as_str())?.to_owned();
    let pmid = e["mail"]["messageId"].as_str().map(str::to_owned);
    let target = match e["mail"]["tags"]["herald_id"][0].as_str().and_then(|id| id.parse().ok()) {
        Some(id) => Target::Notification(id),
        None => Target::ProviderMessageId(pmid.clone()?),
    };
    let bounce_type = e["bounce"]["bounceType"].as_str();
    let (status, suppress) = map(&kind, bounce_type);
    Some(Receipt {
        dedupe_key: sns_id.to_owned(),
        target,
        provider_message_id: pmid,
        provider_status: kind.clone(),
        status,
        suppress,
        detail: json!({"provider_status": kind, "bounce_type": bounce_type, "bounce_sub_type": e["bounce"]["bounceSubType"],
                       "complaint_type": e["complaint"]["complaintFeedbackType"]}),
        replay_token: None,
    })
}

/// SES event types → ours:
///
/// | SES | Herald |
/// | --- | --- |
/// | `Send` | `sent` |
/// | `Delivery` | `delivered` |
/// | `Bounce` with `bounceType: Permanent` | `bounced`, suppress |
/// | `Bounce` (`Transient`, `Undetermined`) | no change |
/// | `Complaint` | `complained`, suppress |
/// | `Reject`, `Rendering Failure` | `failed` |
/// | `DeliveryDelay`, `Open`, `Click`, `Subscription` | no change |
pub fn map(kind: &str, bounce_type: Option<&str>) -> (Option<Status>, Option<String>) {
    match (kind, bounce_type) {
        ("Send", _) => (Some(Status::Sent), None),
        ("Delivery", _) => (Some(Status::Delivered), None),
        ("Bounce", Some("Permanent")) => (Some(Status::Bounced), Some("permanent bounce".into())),
        ("Complaint", _) => (Some(Status::Complained), Some("complaint".into())),
        ("Reject" | "Rendering Failure", _) => (Some(Status::Failed), None),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_serve_certificates() {
        assert!(aws_sns_host("sns.us-east-1.amazonaws.com"));
        assert!(aws_sns_host("sns.cn-north-1.amazonaws.com.cn"));
        assert!(!aws_sns_host("sns.amazonaws.com"));
        assert!(!aws_sns_host("evil-bucket.s3.amazonaws.com"));
        assert!(!aws_sns_host("sns.us-east-1.amazonaws.com.evil.test"));
        let cfg = Sns { topic_arns: Vec::new(), cert_hosts: Vec::new(), allow_private_networks: false };
        assert!(allowed_url("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem", &cfg, true).is_ok());
        assert!(allowed_url("http://sns.eu-west-1.amazonaws.com/x.pem", &cfg, true).is_err(), "https only");
        assert!(allowed_url("https://sns.eu-west-1.amazonaws.com/x.txt", &cfg, true).is_err());
    }

    #[test]
    fn the_string_to_sign_follows_the_documented_order() {
        let n = json!({"Type": "Notification", "MessageId": "m", "TopicArn": "t", "Subject": "s", "Message": "hi\nthere", "Timestamp": "ts", "Signature": "x"});
        assert_eq!(
            string_to_sign(&n),
            "Message\nhi\nthere\nMessageId\nm\nSubject\ns\nTimestamp\nts\nTopicArn\nt\nType\nNotification\n"
        );
        let c = json!({"Type": "SubscriptionConfirmation", "MessageId": "m", "Token": "k", "TopicArn": "t", "Message": "m2", "SubscribeURL": "u", "Timestamp": "ts"});
        assert_eq!(
            string_to_sign(&c),
            "Message\nm2\nMessageId\nm\nSubscribeURL\nu\nTimestamp\nts\nToken\nk\nTopicArn\nt\nType\nSubscriptionConfirmation\n"
        );
    }

    #[test]
    fn event_table() {
        let rows = [
            ("Send", None, Some(Status::Sent), false),
            ("Delivery", None, Some(Status::Delivered), false),
            ("Bounce", Some("Permanent"), Some(Status::Bounced), true),
            ("Bounce", Some("Transient"), None, false),
            ("Complaint", None, Some(Status::Complained), true),
            ("Reject", None, Some(Status::Failed), false),
            ("Rendering Failure", None, Some(Status::Failed), false),
            ("DeliveryDelay", None, None, false),
            ("Open", None, None, false),
        ];
        for (kind, bounce, status, suppress) in rows {
            let (st, sup) = map(kind, bounce);
            assert_eq!((st, sup.is_some()), (status, suppress), "{kind} {bounce:?}");
        }
    }
}
