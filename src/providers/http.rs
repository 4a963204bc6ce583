//! Pieces every HTTP provider adapter shares: running a request with transport errors
//! classified, reading `Retry-After`, and the generic HTTP status classes (research §1.3)
//! that provider tables refine.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;

use super::ProviderError;

pub struct HttpReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl HttpReply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text, cut short for error messages.
    pub fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut s: String = text.chars().take(300).collect();
        if text.chars().count() > 300 {
            s.push('…');
        }
        s
    }

    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers)
    }
}

/// The most of a provider's answer that is read: their answers are a few hundred bytes, and a
/// hostile or broken endpoint must not stream gigabytes into memory.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Send `req`. Only transport failures (and an answer over `MAX_ANSWER_BYTES`) are errors
/// here; any HTTP answer is returned for the adapter's own table to classify.
pub async fn execute(req: RequestBuilder) -> Result<HttpReply, ProviderError> {
    let resp = req.send().await.map_err(transport_error)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = read_capped(resp, MAX_ANSWER_BYTES).await.map_err(|e| match e {
        ReadError::Transport(e) => transport_error(e),
        ReadError::TooLong => {
            ProviderError::Transient(format!("the answer ({status}) is over {} KiB", MAX_ANSWER_BYTES / 1024))
        }
    })?;
    Ok(HttpReply { status, headers, body })
}

pub enum ReadError {
    Transport(reqwest::Error),
    TooLong,
}

/// Read a response body of at most `cap` bytes; stop as soon as it is longer.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<bytes::Bytes, ReadError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ReadError::TooLong);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > cap {
            return Err(ReadError::TooLong);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn transport_error(e: reqwest::Error) -> ProviderError {
    // Without the URL: it can carry account ids, and it adds nothing the provider name doesn't.
    let e = e.without_url();
    if let Some(refused) = super::public_net::refusal(&e) {
        return ProviderError::Permanent(refused.to_string());
    }
    // Not connected: the request never left. Connected: it may have been received, whatever
    // went wrong after (a timeout, a reset before the answer).
    if e.is_connect() {
        ProviderError::Transient(format!("could not connect: {e}"))
    } else if e.is_timeout() {
        ProviderError::Unknown(format!("timed out after the request was sent: {e}"))
    } else {
        ProviderError::Unknown(format!("no answer: {e}"))
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// The class of an HTTP status when the provider's own table has nothing more specific.
pub fn generic(status: StatusCode, retry_after: Option<Duration>, what: String) -> ProviderError {
    match status.as_u16() {
        429 => ProviderError::RateLimited { retry_after, message: what },
        408 | 500..=599 => ProviderError::Transient(what),
        // Our credentials or account, not this message: keep it and let failover and the
        // circuit breaker deal with the provider.
        401 | 403 => ProviderError::Transient(format!("provider refused our credentials: {what}")),
        _ => ProviderError::Permanent(what),
    }
}

/// Split `Name <addr>` into (name, addr).
pub fn split_mailbox(raw: &str) -> (Option<String>, String) {
    match (raw.find('<'), raw.rfind('>')) {
        (Some(open), Some(close)) if open < close => {
            let name = raw[..open].trim().trim_matches('"').trim();
            (Some(name.to_owned()).filter(|n| !n.is_empty()), raw[open + 1..close].trim().to_owned())
        }
        _ => (None, raw.trim().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).expect("header"));
        let d = retry_after(&h).expect("date");
        assert!(d > Duration::from_secs(55) && d <= Duration::from_secs(60), "{d:?}");
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn generic_status_classes() {
        let c = |s: u16| generic(StatusCode::from_u16(s).expect("status"), None, String::new()).class();
        assert_eq!(c(429), "rate_limited");
        for s in [408, 500, 502, 503, 504, 401, 403] {
            assert_eq!(c(s), "transient", "{s}");
        }
        for s in [400, 404, 413, 422] {
            assert_eq!(c(s), "permanent", "{s}");
        }
    }

    #[test]
    fn mailboxes_split() {
        assert_eq!(split_mailbox("Billing <b@example.com>"), (Some("Billing".into()), "b@example.com".into()));
        assert_eq!(split_mailbox("b@example.com"), (None, "b@example.com".into()));
    }
}
