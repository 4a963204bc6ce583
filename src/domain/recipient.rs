//! Recipients, parsed rather than validated: once a `Recipient` exists it is well formed for
//! its channel. The checks are deliberately syntactic; deliverability is the provider's call.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use super::channel::Channel;

/// An email address (`local@domain`), lower-cased in the domain part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

/// Whether every dot-separated label of `domain` is a DNS label: 1 to 63 letters, digits and
/// hyphens, not starting or ending with a hyphen (letters of any script when `unicode`).
pub fn labels_ok(domain: &str, unicode: bool) -> bool {
    domain.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| (if unicode { c.is_alphanumeric() } else { c.is_ascii_alphanumeric() }) || c == '-')
    })
}

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        if s.len() > 254 {
            return Err("an email address is at most 254 characters".into());
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err("expected an email address such as alice@example.com".into());
        };
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.chars().all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
        let domain_ok = domain.contains('.') && labels_ok(domain, true);
        if !local_ok || !domain_ok {
            return Err("expected an email address such as alice@example.com".into());
        }
        Ok(Self(format!("{local}@{}", domain.to_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number in E.164 form: `+`, a country code not starting with 0, at most 15 digits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let digits = raw.strip_prefix('+').unwrap_or("");
        let ok =
            (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
        if ok { Ok(Self(raw.to_owned())) } else { Err("expected an E.164 phone number such as +14155550100".into()) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Web Push subscription as the browser's `PushSubscription.toJSON()` gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebPushSubscription {
    pub endpoint: String,
    pub keys: WebPushKeys,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebPushKeys {
    pub p256dh: String,
    pub auth: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushTarget {
    Fcm(String),
    Apns(String),
    WebPush(WebPushSubscription),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    Email(EmailAddress),
    Sms(PhoneNumber),
    Push(PushTarget),
}

/// A problem with a recipient: where below `/to` (empty for `to` itself) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientError {
    pub pointer: String,
    pub detail: String,
}

impl RecipientError {
    fn at(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        RecipientError { pointer: pointer.into(), detail: detail.into() }
    }
}

impl Recipient {
    /// Parse the request's `to` for `channel`. `allow_private` relaxes the Web Push endpoint rule
    /// (https, public host) for tests and private deployments.
    pub fn parse(channel: Channel, to: &Value, allow_private: bool) -> Result<Self, RecipientError> {
        let whole = |d: String| RecipientError::at("", d);
        match channel {
            Channel::Email => {
                let s = to.as_str().ok_or_else(|| whole("must be a string".into()))?;
                EmailAddress::parse(s).map(Recipient::Email).map_err(whole)
            }
            Channel::Sms => {
                let s = to.as_str().ok_or_else(|| whole("must be a string".into()))?;
                PhoneNumber::parse(s).map(Recipient::Sms).map_err(whole)
            }
            Channel::Push => parse_push(to, allow_private).map(Recipient::Push),
        }
    }

    /// The `to` value as stored and returned.
    pub fn to_json(&self) -> Value {
        match self {
            Recipient::Email(e) => json!(e.as_str()),
            Recipient::Sms(p) => json!(p.as_str()),
            Recipient::Push(PushTarget::Fcm(t)) => json!({ "fcm": t }),
            Recipient::Push(PushTarget::Apns(t)) => json!({ "apns": t }),
            Recipient::Push(PushTarget::WebPush(sub)) => json!({ "web_push": sub }),
        }
    }

    /// Its flat key (see `recipient_key`): what is stored beside it, and matched by the `to`
    /// filter and the suppression list.
    pub fn key(&self) -> String {
        let (channel, raw) = match self {
            Recipient::Email(e) => (Channel::Email, e.as_str()),
            Recipient::Sms(p) => (Channel::Sms, p.as_str()),
            Recipient::Push(PushTarget::Fcm(t) | PushTarget::Apns(t)) => (Channel::Push, t.as_str()),
            Recipient::Push(PushTarget::WebPush(sub)) => (Channel::Push, sub.endpoint.as_str()),
        };
        recipient_key(Some(channel), raw).unwrap_or_else(|_| raw.to_owned())
    }

    /// A form safe for logs: enough to correlate, not enough to identify a person.
    pub fn masked(&self) -> String {
        mask(&self.key())
    }
}

/// The one flat key of a recipient, computed here only: the `recipient_key` stored with a
/// notification, the `to` filter of the list, and the suppression list all compare it, so
/// `Alice@Example.com` given to any of them meets `alice@example.com` in the others.
///
/// * email: the whole address lower-cased (mailbox names are case-insensitive in practice);
/// * SMS: the E.164 number;
/// * push: a hex device token (APNs) lower-cased, other tokens (FCM) and Web Push endpoints as
///   given, since they are case-sensitive.
///
/// Without a channel (the list's `to` filter), the form of `raw` says which it is.
pub fn recipient_key(channel: Option<Channel>, raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let channel = channel.unwrap_or(if raw.contains('@') && !raw.contains("://") {
        Channel::Email
    } else if raw.starts_with('+') {
        Channel::Sms
    } else {
        Channel::Push
    });
    match channel {
        Channel::Email => EmailAddress::parse(raw).map(|e| e.as_str().to_lowercase()),
        Channel::Sms => PhoneNumber::parse(raw).map(|p| p.as_str().to_owned()),
        Channel::Push if raw.is_empty() || raw.len() > 4096 => {
            Err("must be a push token or a Web Push endpoint".into())
        }
        Channel::Push if raw.len() >= 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(raw.to_ascii_lowercase()),
        Channel::Push => Ok(raw.to_owned()),
    }
}

/// Keep the first two and last two characters of a recipient key.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 6 {
        return "***".into();
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}***{tail}")
}

fn parse_push(to: &Value, allow_private: bool) -> Result<PushTarget, RecipientError> {
    let obj = to
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| RecipientError::at("", r#"must be one of {"fcm": …}, {"apns": …}, {"web_push": …}"#))?;
    let (kind, value) = obj.iter().next().ok_or_else(|| RecipientError::at("", "empty"))?;
    let at = |p: &str, d: &str| RecipientError::at(format!("/{kind}{p}"), d);
    match kind.as_str() {
        "fcm" => {
            let t = value.as_str().ok_or_else(|| at("", "must be a string"))?;
            if t.is_empty() || t.len() > 4096 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(at("", "must be an FCM registration token"));
            }
            Ok(PushTarget::Fcm(t.to_owned()))
        }
        "apns" => {
            let t = value.as_str().ok_or_else(|| at("", "must be a string"))?;
            if t.len() < 64 || t.len() > 200 || t.len() % 2 != 0 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(at("", "must be an APNs device token in hex (64 or more hex digits)"));
            }
            Ok(PushTarget::Apns(t.to_ascii_lowercase()))
        }
        "web_push" => {
            let sub: WebPushSubscription = serde_json::from_value(value.clone())
                .map_err(|_| at("", "must be a push subscription: {\"endpoint\", \"keys\": {\"p256dh\", \"auth\"}}"))?;
            check_endpoint(&sub.endpoint, allow_private).map_err(|d| at("/endpoint", &d))?;
            let p256dh = URL_SAFE_NO_PAD.decode(sub.keys.p256dh.trim_end_matches('='));
            if !matches!(p256dh.as_deref(), Ok([4, rest @ ..]) if rest.len() == 64) {
                return Err(at("/keys/p256dh", "must be a base64url uncompressed P-256 public key (65 bytes)"));
            }
            let auth = URL_SAFE_NO_PAD.decode(sub.keys.auth.trim_end_matches('='));
            if !matches!(auth.as_deref(), Ok(a) if a.len() == 16) {
                return Err(at("/keys/auth", "must be a base64url 16-byte auth secret"));
            }
            Ok(PushTarget::WebPush(sub))
        }
        _ => Err(RecipientError::at("", r#"must be one of {"fcm": …}, {"apns": …}, {"web_push": …}"#)),
    }
}

/// A user-supplied URL we will later call (Web Push endpoint, callback URL): https, and not a
/// literal non-public address (`is_private_ip`), unless private networks are allowed. Names
/// are checked where they are used: the resolver of `providers::public_net` connects only to
/// their public addresses.
pub fn check_endpoint(raw: &str, allow_private: bool) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return Err("must be an https:// URL".into()),
    }
    let host = url.host().ok_or_else(|| "must have a host".to_string())?;
    if !allow_private {
        let private = match host {
            url::Host::Ipv4(ip) => is_private_ip(ip.into()),
            url::Host::Ipv6(ip) => is_private_ip(ip.into()),
            url::Host::Domain(d) => {
                // `localhost.` is `localhost` too.
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                d == "localhost" || d.ends_with(".localhost")
            }
        };
        if private {
            return Err("must not point at a private, loopback or link-local address".into());
        }
    }
    Ok(url)
}

/// Whether a user-supplied URL may make us call `ip` (SSRF): only globally routable unicast
/// addresses may be called. Refused: IPv4 "this network" 0/8, private 10/8, 172.16/12 and
/// 192.168/16, shared (carrier-grade NAT, some clouds' metadata) 100.64/10, loopback 127/8,
/// link-local 169.254/16 (cloud metadata), IETF protocol 192.0.0/24, benchmarking 198.18/15,
/// multicast 224/4, reserved 240/4 and broadcast; IPv6 outside global unicast 2000::/3 (which
/// leaves out loopback, unspecified, unique-local fc00::/7, link-local fe80::/10, site-local
/// fec0::/10, multicast ff00::/8 and NAT64 64:ff9b::/96), 6to4 2002::/16 and Teredo 2001::/32
/// (both carry an IPv4 address of any kind), and IPv4-mapped or -compatible addresses of a
/// refused IPv4 address.
pub fn is_private_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            a == 0
                || a == 10
                || a == 127
                || (a == 100 && (64..128).contains(&b))
                || (a == 169 && b == 254)
                || (a == 172 && (16..32).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 192 && b == 168)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 224
        }
        std::net::IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_private_ip(v4.into());
            }
            let s = ip.segments();
            if s[..6] == [0; 6] {
                // ::/96, IPv4-compatible (deprecated), including :: and ::1.
                return true;
            }
            (s[0] & 0xe000) != 0x2000 || s[0] == 0x2002 || (s[0] == 0x2001 && s[1] == 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn emails() {
        assert_eq!(EmailAddress::parse("Alice@Example.COM").map(|e| e.0), Ok("Alice@example.com".into()));
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "a b@example.com",
            "alice@example",
            "a..b@example.com",
            "alice@-x.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones() {
        assert!(PhoneNumber::parse("+14155550100").is_ok());
        for bad in ["14155550100", "+0123456789", "+1415", "+1415555010012345", "+1415-555-0100", "12345"] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn push_targets() {
        let apns = "a".repeat(64);
        assert!(Recipient::parse(Channel::Push, &json!({"apns": apns}), false).is_ok());
        assert!(Recipient::parse(Channel::Push, &json!({"apns": "xyz"}), false).is_err());
        assert!(Recipient::parse(Channel::Push, &json!({"fcm": "tok en"}), false).is_err());
        assert!(Recipient::parse(Channel::Push, &json!({"fcm": "abc:def"}), false).is_ok());
        assert!(Recipient::parse(Channel::Push, &json!("abc"), false).is_err());
        let key = URL_SAFE_NO_PAD.encode([[4u8].as_slice(), &[7u8; 64]].concat());
        let auth = URL_SAFE_NO_PAD.encode([1u8; 16]);
        let sub = |endpoint: &str| json!({"web_push": {"endpoint": endpoint, "keys": {"p256dh": key, "auth": auth}}});
        assert!(Recipient::parse(Channel::Push, &sub("https://push.example.net/x"), false).is_ok());
        let err = Recipient::parse(Channel::Push, &sub("http://127.0.0.1:9/x"), false).unwrap_err();
        assert_eq!(err.pointer, "/web_push/endpoint");
        assert!(Recipient::parse(Channel::Push, &sub("http://127.0.0.1:9/x"), true).is_ok());
        assert!(Recipient::parse(Channel::Push, &sub("https://10.0.0.8/x"), false).is_err());
    }

    #[test]
    fn only_global_unicast_addresses_may_be_called() {
        let refused = [
            "0.1.2.3",
            "10.0.0.5",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.1.2.3",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:10.0.0.5",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:5",
            "2002:a00:5::1",
            "2001:0:4136:e378::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ];
        for ip in refused {
            assert!(is_private_ip(ip.parse().unwrap()), "{ip} must be refused");
        }
        let allowed = [
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "192.0.1.1",
            "223.255.255.255",
            "::ffff:93.184.215.14",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
        ];
        for ip in allowed {
            assert!(!is_private_ip(ip.parse().unwrap()), "{ip} must be allowed");
        }
        for url in [
            "https://localhost./x",
            "https://LOCALHOST/x",
            "https://a.localhost./x",
            "https://[::ffff:7f00:1]/x",
            "https://2130706433/x",
            "https://100.100.100.200/x",
        ] {
            assert!(check_endpoint(url, false).is_err(), "{url} must be refused");
        }
        assert!(check_endpoint("https://push.example.com/x", false).is_ok());
    }

    #[test]
    fn masking_hides_the_middle() {
        assert_eq!(mask("alice@example.com"), "al***om");
        assert_eq!(mask("abc"), "***");
    }

    proptest! {
        #[test]
        fn e164_accepts_exactly_plus_and_8_to_15_digits(d in "[1-9][0-9]{0,20}") {
            let ok = PhoneNumber::parse(&format!("+{d}")).is_ok();
            prop_assert_eq!(ok, (8..=15).contains(&d.len()));
        }

        #[test]
        fn email_parser_never_panics(s in "\\PC*") {
            let _ = EmailAddress::parse(&s);
        }
    }
}
