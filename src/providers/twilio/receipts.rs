//! Twilio status callbacks: form POSTs signed with `X-Twilio-Signature` =
//! base64(HMAC-SHA1(auth token, URL + every parameter name and value, sorted by name)).
//! The URL is the one Twilio called: `server.public_base_url` + the path and query, because a
//! proxy changes what the server sees. Twilio signs no timestamp: duplicates are deduplicated.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha1::Sha1;

use crate::domain::Status;
use crate::receipts::{Incoming, Receipt, ReceiptError, Target, same};

/// The signature of `params` posted to `url`.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) else { return String::new() };
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The URL forms Twilio's own validators accept: as configured, and with/without the port.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    if let Ok(mut u) = url::Url::parse(url) {
        if u.port().is_some() {
            let _ = u.set_port(None);
            out.push(u.to_string());
        } else if let Some(p) = u.port_or_known_default() {
            // `Url` drops default ports; write the explicit form by hand.
            let host = u.host_str().unwrap_or_default().to_owned();
            let s = u.to_string().replacen(&host, &format!("{host}:{p}"), 1);
            out.push(s);
        }
    }
    out
}

pub fn verify(
    incoming: &Incoming<'_>,
    auth_token: &str,
    public_base_url: &str,
    path: &str,
) -> Result<Vec<Receipt>, ReceiptError> {
    if auth_token.is_empty() {
        return Err(ReceiptError::NotConfigured("providers.NAME.auth_token"));
    }
    if public_base_url.is_empty() {
        return Err(ReceiptError::NotConfigured("server.public_base_url (Twilio signs the URL it called)"));
    }
    let given = incoming.header("x-twilio-signature").ok_or(ReceiptError::Unsigned("X-Twilio-Signature"))?;
    let mut url = format!("{}{path}", public_base_url.trim_end_matches('/'));
    if !incoming.query.is_empty() {
        url = format!("{url}?{}", incoming.query);
    }
    // Signed parameters are the POST body's; the query is part of the URL.
    let body_params: Vec<(String, String)> = url::form_urlencoded::parse(incoming.body).into_owned().collect();
    let ok =
        url_variants(&url).iter().any(|u| same(signature(auth_token, u, &body_params).as_bytes(), given.as_bytes()));
    if !ok {
        return Err(ReceiptError::BadSignature("X-Twilio-Signature"));
    }
    let get = |k: &str| body_params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let sid =
        get("MessageSid").or_else(|| get("SmsSid")).ok_or_else(|| ReceiptError::Malformed("no MessageSid".into()))?;
    let state = get("MessageStatus").or_else(|| get("SmsStatus")).unwrap_or_default();
    let error_code = get("ErrorCode");
    let (status, suppress) = map(&state, error_code.as_deref());
    Ok(vec![Receipt {
        dedupe_key: format!("{sid}:{state}:{}", error_code.clone().unwrap_or_default()),
        target: Target::ProviderMessageId(sid.clone()),
        provider_message_id: Some(sid),
        provider_status: state.clone(),
        status,
        suppress,
        detail: json!({"provider_status": state, "error_code": error_code}),
        replay_token: None,
    }])
}

/// Twilio `MessageStatus` → ours (research §1.2):
///
/// | Twilio | Herald |
/// | --- | --- |
/// | `queued`, `accepted`, `scheduled`, `sending`, `canceled`, others | no change |
/// | `sent` | `sent` |
/// | `delivered`, `read` | `delivered` |
/// | `undelivered`, `failed` | `failed`; suppress on 21610 (opted out), 30005 (unknown handset), 30006 (landline) |
pub fn map(state: &str, error_code: Option<&str>) -> (Option<Status>, Option<String>) {
    match state {
        "sent" => (Some(Status::Sent), None),
        "delivered" | "read" => (Some(Status::Delivered), None),
        "undelivered" | "failed" => {
            let suppress = match error_code {
                Some("21610") => Some("recipient opted out (Twilio 21610)".to_owned()),
                Some(c @ ("30005" | "30006")) => Some(format!("undeliverable number (Twilio {c})")),
                _ => None,
            };
            (Some(Status::Failed), suppress)
        }
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// twilio-python's request validator tests.
    #[test]
    fn official_vectors() {
        let p = params(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(signature("12345", url, &p), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert_eq!(
            signature("12345", "https://mycompany.com:443/myapp.php?foo=1&bar=2", &p),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        );
        assert_eq!(
            signature("12345", "http://mycompany.com:1234/myapp.php?foo=1&bar=2", &p),
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
        );
        let dup = params(&[("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]);
        assert_eq!(signature("12345", url, &dup), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
        // The validator accepts the port and no-port forms of the same URL.
        assert!(url_variants(url).iter().any(|u| signature("12345", u, &p) == "kvajT1Ptam85bY51eRf/AJRuM3w="));
    }

    #[test]
    fn status_table() {
        let rows = [
            ("queued", None, None, false),
            ("sending", None, None, false),
            ("sent", None, Some(Status::Sent), false),
            ("delivered", None, Some(Status::Delivered), false),
            ("read", None, Some(Status::Delivered), false),
            ("undelivered", Some("30003"), Some(Status::Failed), false),
            ("failed", Some("21610"), Some(Status::Failed), true),
            ("undelivered", Some("30006"), Some(Status::Failed), true),
            ("canceled", None, None, false),
        ];
        for (state, code, status, suppress) in rows {
            let (st, sup) = map(state, code);
            assert_eq!((st, sup.is_some()), (status, suppress), "{state} {code:?}");
        }
    }
}
