//! What a notification says, by channel, and the rules it must keep: `parse` reads a
//! `content` object (sent as is, or rendered from a template) into `Content` or every problem
//! found, each addressed by a JSON Pointer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::FieldError;
use super::channel::Channel;
use super::recipient::{EmailAddress, check_endpoint};

/// What `parse` needs from configuration and from the tenant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rules<'a> {
    /// `callbacks.allow_private_networks`: an unsubscribe URL may be `http://` or private.
    pub allow_private_links: bool,
    /// `channels.sms.max_segments`: longer texts are refused.
    pub sms_max_segments: Option<u32>,
    pub caps: Caps,
    /// The domains `from` may use (and their subdomains); `None`: any.
    pub sender_domains: Option<&'a [String]>,
}

/// How big content may be, by channel: what one message may make a worker hold, and the
/// providers' own limits (`channels.email.max_content_bytes`, `channels.push.max_payload_bytes`,
/// `channels.sms.max_characters`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Bytes of subject, text and html together.
    pub email_bytes: usize,
    /// Bytes of title, body and data (as JSON) together: APNs and FCM take 4 KiB.
    pub push_bytes: usize,
    /// Characters of text.
    pub sms_characters: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps { email_bytes: 512 * 1024, push_bytes: 4096, sms_characters: 1600 }
    }
}

const MAX_SUBJECT_LEN: usize = 998;

/// Every string in `v` (keys too) that holds a NUL character, as problems at their pointers
/// below `at`: PostgreSQL stores no NUL in text or jsonb, so such a request is refused whole
/// at validation rather than failing (with its neighbours) at the database.
pub fn nul_problems(v: &Value, at: &str) -> Vec<FieldError> {
    fn walk(v: &Value, at: &str, out: &mut Vec<FieldError>) {
        match v {
            Value::String(s) if s.contains('\0') => out.push(FieldError::new(at, NUL_DETAIL)),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{at}/{i}"), out);
                }
            }
            Value::Object(m) => {
                for (k, item) in m {
                    let here = format!("{at}/{}", escape(k));
                    if k.contains('\0') {
                        out.push(FieldError::new(&here, "the field name contains a NUL character (\\u0000)"));
                    }
                    walk(item, &here, out);
                }
            }
            _ => {}
        }
    }
    // Pointers are built only for a request that has a NUL: the usual one costs a scan.
    let mut out = Vec::new();
    if has_nul(v) {
        walk(v, at, &mut out);
    }
    out
}

/// Whether any string of `v` (or object key) holds a NUL character.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

const NUL_DETAIL: &str = "contains a NUL character (\\u0000), which cannot be stored";

/// Check a domain as `channels.email.sender_domains` and `--sender-domains` take it: a DNS
/// name such as `acme.com` (no scheme, no `@`).
pub fn check_domain(d: &str) -> Result<(), String> {
    if d.len() <= 253 && super::recipient::labels_ok(d, false) {
        Ok(())
    } else {
        Err(format!("`{d}` is not a domain such as acme.com"))
    }
}

/// Whether `address`'s domain is one of `allowed` or a subdomain of one (case aside).
pub fn domain_allowed(address: &EmailAddress, allowed: &[String]) -> bool {
    let domain = address.as_str().rsplit_once('@').map_or("", |(_, d)| d).to_ascii_lowercase();
    allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        domain == a || domain.strip_suffix(&a).is_some_and(|rest| rest.ends_with('.'))
    })
}

/// Over a cap: the one field that alone exceeds it, else the content as a whole.
fn over_cap(errs: &mut Errors, fields: &[(&str, usize)], total: usize, cap: usize, what: &str, key: &str) {
    if total <= cap {
        return;
    }
    let pointer = match fields.iter().find(|(_, n)| *n > cap) {
        Some((field, _)) => format!("/content/{field}"),
        None => "/content".to_owned(),
    };
    errs.add(pointer, format!("{what} {total} bytes; {key} allows {cap}"));
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailContent {
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe_url: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmsContent {
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// What to send, by channel. Serialized (untagged) as the `content` object of the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Content {
    Email(EmailContent),
    Sms(SmsContent),
    Push(PushContent),
}

impl Content {
    /// Read back stored content for a known channel.
    pub fn from_stored(channel: Channel, value: Value) -> Result<Content, serde_json::Error> {
        Ok(match channel {
            Channel::Email => Content::Email(serde_json::from_value(value)?),
            Channel::Sms => Content::Sms(serde_json::from_value(value)?),
            Channel::Push => Content::Push(serde_json::from_value(value)?),
        })
    }
}

pub(super) struct Errors(pub(super) Vec<FieldError>);

impl Errors {
    pub(super) fn add(&mut self, pointer: impl Into<String>, detail: impl Into<String>) {
        self.0.push(FieldError::new(pointer, detail));
    }
}

/// Escape a key for use in a JSON Pointer (RFC 6901 §3).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn opt_string(obj: &Map<String, Value>, key: &str, errs: &mut Errors) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errs.add(format!("/content/{key}"), "must be a string");
            None
        }
    }
}

/// The fields a `channel` notification's content may have.
pub fn fields(channel: Channel) -> &'static [&'static str] {
    match channel {
        Channel::Email => &["subject", "text", "html", "from", "reply_to", "unsubscribe_url"],
        Channel::Sms => &["text"],
        Channel::Push => &["title", "body", "data"],
    }
}

/// Read `v` as the content of a `channel` notification, or every problem found.
pub fn parse(channel: Channel, v: &Value, rules: Rules<'_>) -> Result<Content, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());
    parse_into(channel, v, rules, &mut errs).ok_or(errs.0)
}

pub(super) fn parse_into(channel: Channel, v: &Value, rules: Rules<'_>, errs: &mut Errors) -> Option<Content> {
    let Some(obj) = v.as_object() else {
        errs.add("/content", "must be an object");
        return None;
    };
    let allowed = fields(channel);
    let before = errs.0.len();
    for key in obj.keys() {
        if !allowed.contains(&key.as_str()) {
            errs.add(format!("/content/{}", escape(key)), format!("unknown field for the {channel} channel"));
        }
    }
    let content = match channel {
        Channel::Email => email(obj, rules, errs),
        Channel::Sms => sms(obj, rules, errs),
        Channel::Push => push(obj, rules, errs),
    };
    (errs.0.len() == before).then_some(content)
}

/// An email's content: a one-line subject, text and/or html within the cap, and a sender,
/// reply-to and unsubscribe link that are valid (the sender within the tenant's domains).
fn email(obj: &Map<String, Value>, rules: Rules<'_>, errs: &mut Errors) -> Content {
    let subject = opt_string(obj, "subject", errs);
    match &subject {
        None => errs.add("/content/subject", "is required for email"),
        Some(s) if s.trim().is_empty() => errs.add("/content/subject", "must not be empty"),
        Some(s) if s.contains(['\r', '\n']) => errs.add("/content/subject", "must be one line"),
        Some(s) if s.len() > MAX_SUBJECT_LEN => errs.add("/content/subject", "is too long"),
        _ => {}
    }
    let text = opt_string(obj, "text", errs);
    let html = opt_string(obj, "html", errs);
    if text.as_deref().is_none_or(str::is_empty) && html.as_deref().is_none_or(str::is_empty) {
        errs.add("/content", "email needs text and/or html");
    }
    let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let (subject_len, text_len, html_len) = (len(&subject), len(&text), len(&html));
    over_cap(
        errs,
        &[("subject", subject_len), ("text", text_len), ("html", html_len)],
        subject_len + text_len + html_len,
        rules.caps.email_bytes,
        "subject, text and html together are",
        "channels.email.max_content_bytes",
    );
    let from = opt_string(obj, "from", errs);
    if let Some(f) = &from {
        match parse_mailbox(f) {
            Err(d) => errs.add("/content/from", d),
            Ok(addr) => {
                if let Some(allowed) = rules.sender_domains
                    && !domain_allowed(&addr, allowed)
                {
                    errs.add(
                        "/content/from",
                        format!(
                            "this tenant may send only from {} (or their subdomains); set with \
                             channels.email.sender_domains or `herald tenants set T --sender-domains`",
                            allowed.join(", ")
                        ),
                    );
                }
            }
        }
    }
    let reply_to = opt_string(obj, "reply_to", errs);
    if let Some(r) = &reply_to
        && let Err(d) = parse_mailbox(r)
    {
        errs.add("/content/reply_to", d);
    }
    let unsubscribe_url = opt_string(obj, "unsubscribe_url", errs);
    if let Some(u) = &unsubscribe_url {
        // RFC 8058 one-click unsubscribe requires https.
        if let Err(d) = check_endpoint(u, rules.allow_private_links) {
            errs.add("/content/unsubscribe_url", d);
        }
    }
    Content::Email(EmailContent { subject: subject.unwrap_or_default(), text, html, from, reply_to, unsubscribe_url })
}

/// An SMS's text: not empty, within the characters and segments allowed.
fn sms(obj: &Map<String, Value>, rules: Rules<'_>, errs: &mut Errors) -> Content {
    let text = opt_string(obj, "text", errs);
    match &text {
        None => errs.add("/content/text", "is required for sms"),
        Some(t) if t.trim().is_empty() => errs.add("/content/text", "must not be empty"),
        Some(t) if t.chars().count() > rules.caps.sms_characters => {
            let n = t.chars().count();
            let cap = rules.caps.sms_characters;
            errs.add("/content/text", format!("is {n} characters; channels.sms.max_characters allows {cap}"));
        }
        Some(t) => {
            if let Some(max) = rules.sms_max_segments
                && let s = super::sms::segments(t)
                && s.segments > max
            {
                let why = match s.encoding {
                    super::sms::Encoding::Gsm7 => "GSM-7".to_owned(),
                    super::sms::Encoding::Ucs2 => {
                        let chars: String = s.ucs2_characters.iter().take(5).collect();
                        format!("UCS-2, because of {chars:?}")
                    }
                };
                errs.add(
                    "/content/text",
                    format!("takes {} segments ({why}); channels.sms.max_segments allows {max}", s.segments),
                );
            }
        }
    }
    Content::Sms(SmsContent { text: text.unwrap_or_default() })
}

/// A push's title and/or body and string data, within the payload cap.
fn push(obj: &Map<String, Value>, rules: Rules<'_>, errs: &mut Errors) -> Content {
    let title = opt_string(obj, "title", errs);
    let body = opt_string(obj, "body", errs);
    if title.as_deref().is_none_or(str::is_empty) && body.as_deref().is_none_or(str::is_empty) {
        errs.add("/content", "push needs a title and/or a body");
    }
    let mut data = BTreeMap::new();
    match obj.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                match v.as_str() {
                    Some(s) => {
                        data.insert(k.clone(), s.to_owned());
                    }
                    None => errs.add(format!("/content/data/{}", escape(k)), "values must be strings"),
                }
            }
        }
        Some(_) => errs.add("/content/data", "must be an object of strings"),
    }
    let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let data_len = if data.is_empty() { 0 } else { serde_json::to_string(&data).map_or(0, |s| s.len()) };
    over_cap(
        errs,
        &[("title", len(&title)), ("body", len(&body)), ("data", data_len)],
        len(&title) + len(&body) + data_len,
        rules.caps.push_bytes,
        "title, body and data together are",
        "channels.push.max_payload_bytes",
    );
    Content::Push(PushContent { title, body, data })
}

/// Accept `addr@example.com` or `Display Name <addr@example.com>`.
pub fn parse_mailbox(raw: &str) -> Result<EmailAddress, String> {
    let addr = match (raw.find('<'), raw.rfind('>')) {
        (Some(open), Some(close)) if open < close && close == raw.trim_end().len() - 1 => &raw[open + 1..close],
        (None, None) => raw,
        _ => return Err("expected addr@example.com or Name <addr@example.com>".into()),
    };
    if raw.contains(['\r', '\n']) {
        return Err("must be one line".into());
    }
    EmailAddress::parse(addr)
}
