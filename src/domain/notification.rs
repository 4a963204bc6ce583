//! A notification as a caller asks for it: `NewNotification::parse` turns a request body into
//! a well-formed value or a list of every problem found, each addressed by a JSON Pointer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::FieldError;
use super::channel::Channel;
use super::recipient::{EmailAddress, Recipient, check_endpoint};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The queue lane: lower is claimed first.
    pub fn lane(self) -> i16 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsContent {
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq)]
pub struct NewNotification {
    pub channel: Channel,
    pub to: Recipient,
    pub content: Content,
    pub send_at: Option<OffsetDateTime>,
    pub expires_at: Option<OffsetDateTime>,
    pub priority: Priority,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    pub callback_url: Option<String>,
}

/// Limits and switches that parsing needs from configuration.
#[derive(Clone, Copy, Debug)]
pub struct ParseOptions {
    pub now: OffsetDateTime,
    pub allow_private_push: bool,
    pub allow_private_callbacks: bool,
    /// `channels.sms.default_region`: national numbers are read as this region's.
    pub sms_region: Option<phonenumber::country::Id>,
    /// `channels.sms.max_segments`: longer texts are refused.
    pub sms_max_segments: Option<u32>,
}

const TOP_LEVEL: [&str; 10] =
    ["channel", "to", "content", "template", "send_at", "expires_at", "priority", "tags", "metadata", "callback_url"];
const MAX_TAGS: usize = 20;
const MAX_TAG_LEN: usize = 100;
const MAX_METADATA_BYTES: usize = 8 * 1024;
const MAX_SUBJECT_LEN: usize = 998;
const MAX_SMS_LEN: usize = 1600;

struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, pointer: impl Into<String>, detail: impl Into<String>) {
        self.0.push(FieldError::new(pointer, detail));
    }
}

impl NewNotification {
    pub fn parse(body: &Value, opts: ParseOptions) -> Result<Self, Vec<FieldError>> {
        let mut errs = Errors(Vec::new());
        let Some(obj) = body.as_object() else {
            return Err(vec![FieldError::new("", "the body must be a JSON object")]);
        };
        for key in obj.keys() {
            if !TOP_LEVEL.contains(&key.as_str()) {
                errs.add(format!("/{}", escape(key)), "unknown field");
            }
        }

        let channel = match obj.get("channel") {
            None => {
                errs.add("/channel", "is required: one of email, sms, push");
                None
            }
            Some(v) => {
                let c = v.as_str().and_then(Channel::parse);
                if c.is_none() {
                    errs.add("/channel", "must be one of email, sms, push");
                }
                c
            }
        };

        let to = match (channel, obj.get("to")) {
            (_, None) => {
                errs.add("/to", "is required");
                None
            }
            (None, Some(_)) => None,
            // An SMS number must be one that can exist (and may be national, with a region).
            (Some(Channel::Sms), Some(v)) => match v.as_str().map(|s| super::sms::number(s, opts.sms_region)) {
                Some(Ok(p)) => Some(Recipient::Sms(p)),
                Some(Err(e)) => {
                    errs.add("/to", e);
                    None
                }
                None => {
                    errs.add("/to", "must be a string");
                    None
                }
            },
            (Some(ch), Some(v)) => match Recipient::parse(ch, v, opts.allow_private_push) {
                Ok(r) => Some(r),
                Err(e) => {
                    errs.add(format!("/to{}", e.pointer), e.detail);
                    None
                }
            },
        };

        let content = match (obj.get("content"), obj.get("template")) {
            (Some(_), Some(_)) => {
                errs.add("/template", "give exactly one of content and template");
                None
            }
            (None, Some(_)) => {
                errs.add("/template", "templates are not available in this version of Herald; send content");
                None
            }
            (None, None) => {
                errs.add("/content", "is required");
                None
            }
            (Some(v), None) => channel.and_then(|ch| parse_content(ch, v, opts, &mut errs)),
        };

        let send_at = parse_time(obj, "send_at", &mut errs);
        let expires_at = parse_time(obj, "expires_at", &mut errs);
        if let Some(exp) = expires_at {
            if exp <= opts.now {
                errs.add("/expires_at", "must be in the future");
            } else if send_at.is_some_and(|s| exp <= s) {
                errs.add("/expires_at", "must be after send_at");
            }
        }

        let priority = match obj.get("priority") {
            None | Some(Value::Null) => Priority::Normal,
            Some(v) => v.as_str().and_then(Priority::parse).unwrap_or_else(|| {
                errs.add("/priority", "must be one of high, normal, low");
                Priority::Normal
            }),
        };

        let mut tags = Vec::new();
        match obj.get("tags") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if items.len() > MAX_TAGS {
                    errs.add("/tags", format!("at most {MAX_TAGS} tags"));
                }
                for (i, t) in items.iter().enumerate() {
                    match t.as_str() {
                        Some(s) if !s.is_empty() && s.len() <= MAX_TAG_LEN => tags.push(s.to_owned()),
                        _ => errs.add(
                            format!("/tags/{i}"),
                            format!("must be a non-empty string of at most {MAX_TAG_LEN} bytes"),
                        ),
                    }
                }
            }
            Some(_) => errs.add("/tags", "must be an array of strings"),
        }

        let metadata = match obj.get("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => {
                if Value::Object(m.clone()).to_string().len() > MAX_METADATA_BYTES {
                    errs.add("/metadata", format!("must serialize to at most {MAX_METADATA_BYTES} bytes"));
                }
                m.clone()
            }
            Some(_) => {
                errs.add("/metadata", "must be an object");
                Map::new()
            }
        };

        let callback_url = match obj.get("callback_url") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match check_endpoint(s, opts.allow_private_callbacks) {
                Ok(_) => Some(s.clone()),
                Err(d) => {
                    errs.add("/callback_url", d);
                    None
                }
            },
            Some(_) => {
                errs.add("/callback_url", "must be a string");
                None
            }
        };

        match (errs.0.is_empty(), channel, to, content) {
            (true, Some(channel), Some(to), Some(content)) => Ok(NewNotification {
                channel,
                to,
                content,
                send_at,
                expires_at,
                priority,
                tags,
                metadata,
                callback_url,
            }),
            _ => Err(errs.0),
        }
    }
}

/// Escape a key for use in a JSON Pointer (RFC 6901 §3).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn parse_time(obj: &Map<String, Value>, key: &str, errs: &mut Errors) -> Option<OffsetDateTime> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match OffsetDateTime::parse(s, &Rfc3339) {
            Ok(t) => Some(t),
            Err(_) => {
                errs.add(format!("/{key}"), "must be an RFC 3339 timestamp such as 2026-12-01T09:00:00Z");
                None
            }
        },
        Some(_) => {
            errs.add(format!("/{key}"), "must be an RFC 3339 timestamp string");
            None
        }
    }
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

fn parse_content(channel: Channel, v: &Value, opts: ParseOptions, errs: &mut Errors) -> Option<Content> {
    let Some(obj) = v.as_object() else {
        errs.add("/content", "must be an object");
        return None;
    };
    let allowed: &[&str] = match channel {
        Channel::Email => &["subject", "text", "html", "from", "reply_to", "unsubscribe_url"],
        Channel::Sms => &["text"],
        Channel::Push => &["title", "body", "data"],
    };
    let before = errs.0.len();
    for key in obj.keys() {
        if !allowed.contains(&key.as_str()) {
            errs.add(format!("/content/{}", escape(key)), format!("unknown field for the {channel} channel"));
        }
    }
    let content = match channel {
        Channel::Email => {
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
            let from = opt_string(obj, "from", errs);
            if let Some(f) = &from
                && let Err(d) = parse_mailbox(f)
            {
                errs.add("/content/from", d);
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
                if let Err(d) = check_endpoint(u, opts.allow_private_callbacks) {
                    errs.add("/content/unsubscribe_url", d);
                }
            }
            Content::Email(EmailContent {
                subject: subject.unwrap_or_default(),
                text,
                html,
                from,
                reply_to,
                unsubscribe_url,
            })
        }
        Channel::Sms => {
            let text = opt_string(obj, "text", errs);
            match &text {
                None => errs.add("/content/text", "is required for sms"),
                Some(t) if t.trim().is_empty() => errs.add("/content/text", "must not be empty"),
                Some(t) if t.chars().count() > MAX_SMS_LEN => {
                    errs.add("/content/text", format!("at most {MAX_SMS_LEN} characters"));
                }
                Some(t) => {
                    let s = super::sms::segments(t);
                    if let Some(max) = opts.sms_max_segments
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
        Channel::Push => {
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
            Content::Push(PushContent { title, body, data })
        }
    };
    (errs.0.len() == before).then_some(content)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts() -> ParseOptions {
        ParseOptions {
            now: OffsetDateTime::now_utc(),
            allow_private_push: false,
            allow_private_callbacks: false,
            sms_region: None,
            sms_max_segments: None,
        }
    }

    fn pointers(body: &Value) -> Vec<String> {
        NewNotification::parse(body, opts()).unwrap_err().into_iter().map(|e| e.pointer).collect()
    }

    #[test]
    fn a_full_email_parses() {
        let n = NewNotification::parse(
            &json!({"channel": "email", "to": "alice@example.com",
                    "content": {"subject": "Welcome", "text": "Hi", "from": "Billing <billing@example.com>"},
                    "priority": "high", "tags": ["billing"], "metadata": {"order": "A-17"},
                    "send_at": "2099-12-01T09:00:00Z", "expires_at": "2099-12-01T10:00:00Z"}),
            opts(),
        )
        .expect("valid");
        assert_eq!(n.channel, Channel::Email);
        assert_eq!(n.priority, Priority::High);
        assert_eq!(n.tags, vec!["billing"]);
    }

    #[test]
    fn every_problem_is_reported_with_its_pointer() {
        let p = pointers(
            &json!({"channel": "email", "to": "nope", "content": {"text": "x"}, "priority": "urgent", "colour": 1}),
        );
        assert_eq!(p, vec!["/colour", "/to", "/content/subject", "/priority"]);
    }

    #[test]
    fn sms_and_push_content_rules() {
        assert_eq!(
            pointers(&json!({"channel": "sms", "to": "+14155550100", "content": {"text": ""}})),
            vec!["/content/text"]
        );
        assert_eq!(
            pointers(&json!({"channel": "push", "to": {"fcm": "t"}, "content": {"data": {"a": 1}}})),
            vec!["/content", "/content/data/a"]
        );
        assert_eq!(pointers(&json!({"channel": "fax", "to": "x", "content": {}})), vec!["/channel"]);
    }

    #[test]
    fn content_or_template_but_not_both() {
        assert_eq!(pointers(&json!({"channel": "sms", "to": "+14155550100"})), vec!["/content"]);
        assert_eq!(
            pointers(
                &json!({"channel": "sms", "to": "+14155550100", "content": {"text": "x"}, "template": {"name": "w"}})
            ),
            vec!["/template"]
        );
    }

    #[test]
    fn expiry_must_follow_send_at() {
        let p = pointers(&json!({"channel": "sms", "to": "+14155550100", "content": {"text": "x"},
                               "send_at": "2099-12-01T10:00:00Z", "expires_at": "2099-12-01T09:00:00Z"}));
        assert_eq!(p, vec!["/expires_at"]);
        let p = pointers(
            &json!({"channel": "sms", "to": "+14155550100", "content": {"text": "x"}, "expires_at": "2001-01-01T00:00:00Z"}),
        );
        assert_eq!(p, vec!["/expires_at"]);
    }

    #[test]
    fn callback_urls_must_be_public_https() {
        let base = json!({"channel": "sms", "to": "+14155550100", "content": {"text": "x"}});
        let with = |u: &str| {
            let mut b = base.clone();
            b["callback_url"] = json!(u);
            b
        };
        assert_eq!(pointers(&with("http://example.com/h")), vec!["/callback_url"]);
        assert_eq!(pointers(&with("https://192.168.1.2/h")), vec!["/callback_url"]);
        assert!(NewNotification::parse(&with("https://example.com/h"), opts()).is_ok());
    }

    #[test]
    fn mailboxes() {
        assert!(parse_mailbox("Billing <billing@example.com>").is_ok());
        assert!(parse_mailbox("billing@example.com").is_ok());
        assert!(parse_mailbox("Billing <billing@example.com").is_err());
    }
}
