//! Vonage SMS delivery receipts (DLRs): GET or POST, form or JSON, one per message part.
//! Signed with `sig` over the other parameters sorted by name, as `&k=v` pairs with `&` and
//! `=` in values replaced by `_`: MD5 of that string plus the secret (`md5hash`, the default)
//! or an HMAC keyed with the secret. The signed `timestamp` must be within the replay window.

use std::time::Duration;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::{Value, json};

use crate::domain::Status;
use crate::receipts::{Incoming, Receipt, ReceiptError, Target, fresh, same};

fn signing_string(params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != "sig").collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    sorted.iter().map(|(k, v)| format!("&{k}={}", v.replace(['&', '='], "_"))).collect()
}

fn hmac_hex<M: Mac + hmac::digest::KeyInit>(secret: &str, data: &str) -> String {
    match <M as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(data.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// The expected `sig` (lowercase hex) for `params` under `method`.
pub fn signature(params: &[(String, String)], secret: &str, method: &str) -> String {
    let s = signing_string(params);
    match method {
        "md5" => hmac_hex::<Hmac<Md5>>(secret, &s),
        "sha1" => hmac_hex::<Hmac<sha1::Sha1>>(secret, &s),
        "sha256" => hmac_hex::<Hmac<sha2::Sha256>>(secret, &s),
        "sha512" => hmac_hex::<Hmac<sha2::Sha512>>(secret, &s),
        _ => hex::encode(Md5::digest(format!("{s}{secret}").as_bytes())),
    }
}

/// Parameters from the query, a form body or a JSON body (values as strings).
fn params(incoming: &Incoming<'_>) -> Vec<(String, String)> {
    if incoming.body.starts_with(b"{") {
        let mut p: Vec<(String, String)> =
            url::form_urlencoded::parse(incoming.query.as_bytes()).into_owned().collect();
        if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(incoming.body) {
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                p.push((k, v));
            }
        }
        return p;
    }
    incoming.params()
}

pub fn verify(
    incoming: &Incoming<'_>,
    secret: Option<&str>,
    method: &str,
    max_age: Duration,
) -> Result<Vec<Receipt>, ReceiptError> {
    let Some(secret) = secret else {
        return Err(ReceiptError::NotConfigured("providers.NAME.signature_secret"));
    };
    let p = params(incoming);
    let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let given = get("sig").ok_or(ReceiptError::Unsigned("sig parameter"))?;
    let expected = signature(&p, secret, method);
    if !same(expected.as_bytes(), given.to_ascii_lowercase().as_bytes()) {
        return Err(ReceiptError::BadSignature("sig"));
    }
    let ts = get("timestamp").and_then(|t| t.parse::<i64>().ok()).ok_or(ReceiptError::Unsigned("timestamp"))?;
    if !fresh(ts, max_age) {
        return Err(ReceiptError::Stale);
    }
    let message_id = get("messageId").ok_or_else(|| ReceiptError::Malformed("no messageId".into()))?;
    let state = get("status").unwrap_or_default();
    let err_code = get("err-code").unwrap_or_else(|| "0".into());
    let target = match get("client-ref").and_then(|r| r.parse().ok()) {
        Some(id) => Target::Notification(id),
        None => Target::ProviderMessageId(message_id.clone()),
    };
    let (status, suppress) = map(&state, &err_code);
    Ok(vec![Receipt {
        dedupe_key: format!("{message_id}:{state}:{err_code}"),
        target,
        provider_message_id: Some(message_id.clone()),
        provider_status: state.clone(),
        status,
        suppress,
        detail: json!({"provider_status": state, "err_code": err_code, "message_id": message_id}),
        replay_token: None,
    }])
}

/// Vonage DLR `status` (and `err-code`) → ours:
///
/// | Vonage | Herald |
/// | --- | --- |
/// | `accepted`, `buffered` | no change |
/// | `delivered` | `delivered` |
/// | `expired`, `failed`, `rejected`, `unknown` | `failed`; suppress on err-code 3 (absent, permanent), 4 (barred), 9 (opted out), 12 (unreachable) |
pub fn map(state: &str, err_code: &str) -> (Option<Status>, Option<String>) {
    match state {
        "delivered" => (Some(Status::Delivered), None),
        "expired" | "failed" | "rejected" | "unknown" => {
            let suppress = matches!(err_code, "3" | "4" | "9" | "12").then(|| format!("Vonage err-code {err_code}"));
            (Some(Status::Failed), suppress)
        }
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector() -> Vec<(String, String)> {
        [
            ("message-timestamp", "2013-11-21 15:27:30"),
            ("messageId", "020000001B0FE827"),
            ("msisdn", "14843472194"),
            ("text", "Test again"),
            ("timestamp", "1385047698"),
            ("to", "13239877404"),
            ("type", "text"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// vonage-ruby-sdk's signature tests.
    #[test]
    fn official_vectors() {
        let secret = "my_secret_key_for_testing";
        let p = vector();
        assert_eq!(
            signing_string(&p),
            "&message-timestamp=2013-11-21 15:27:30&messageId=020000001B0FE827&msisdn=14843472194&text=Test again&timestamp=1385047698&to=13239877404&type=text"
        );
        assert_eq!(signature(&p, secret, "md5hash"), "d2e7b1dc968737c5998ad624e02f90b7");
        assert_eq!(signature(&p, secret, "md5"), "ddebd46008c2d4e93cce578a332a52d5");
        assert_eq!(signature(&p, secret, "sha1"), "27d0d05c2876c7cb1720dbcdba4d492e1e55c09a");
        assert_eq!(signature(&p, secret, "sha256"), "ddb8397c2b90aac7f3882d306475c9a5058c92322eef43c92b298b6e0fc0d330");
        assert_eq!(
            signature(&p, secret, "sha512"),
            "e0d3c650f8c9d1a5c174d10dddbfb003e561f59b265616208b0487c5d819481cd3c311d59cf6165ecd1139622d5ba3a256c0d763ac4a9ad9144b5a426b94fe82"
        );
        let k = |v: &str| vec![("k".to_string(), v.to_string())];
        for v in ["_", "&", "="] {
            assert_eq!(signature(&k(v), secret, "md5hash"), "c3d6a686ab9c7e7408bb1c0506e9629a");
        }
        let p2: Vec<(String, String)> = [("a", "1"), ("b", "2"), ("timestamp", "1461605396")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(signature(&p2, "secret", "md5hash"), "6af838ef94998832dbfc29020b564830");
    }

    #[test]
    fn status_table() {
        let rows = [
            ("accepted", "0", None, false),
            ("buffered", "0", None, false),
            ("delivered", "0", Some(Status::Delivered), false),
            ("expired", "1", Some(Status::Failed), false),
            ("failed", "3", Some(Status::Failed), true),
            ("rejected", "9", Some(Status::Failed), true),
            ("failed", "8", Some(Status::Failed), false),
            ("unknown", "99", Some(Status::Failed), false),
        ];
        for (state, code, status, suppress) in rows {
            let (st, sup) = map(state, code);
            assert_eq!((st, sup.is_some()), (status, suppress), "{state} {code}");
        }
    }
}
