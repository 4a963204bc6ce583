//! A notification as a caller asks for it: `NewNotification::parse` turns a request body into
//! a well-formed value or a list of every problem found, each addressed by a JSON Pointer.
//! Content is given as is or rendered from a template (looked up beforehand, in a `Book`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::FieldError;
use super::channel::Channel;
use super::content::{self, Errors, escape};
pub use super::content::{Content, EmailContent, PushContent, SmsContent, parse_mailbox};
use super::recipient::{Recipient, check_endpoint};
use super::template::{self, Book, TemplateUse};

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
    /// What kind of message this is (`newsletter`); none: transactional, which category
    /// suppressions and the hosted unsubscribe never touch.
    pub category: Option<String>,
    /// The template the content was rendered from.
    pub template: Option<TemplateUse>,
}

/// Limits and switches that parsing needs from configuration, and the templates the request
/// refers to.
#[derive(Clone, Copy, Debug)]
pub struct ParseOptions<'a> {
    pub now: OffsetDateTime,
    pub allow_private_push: bool,
    pub allow_private_callbacks: bool,
    /// `channels.sms.default_region`: national numbers are read as this region's.
    pub sms_region: Option<phonenumber::country::Id>,
    /// `channels.sms.max_segments`: longer texts are refused.
    pub sms_max_segments: Option<u32>,
    /// `channels.X.max_*`: how big content may be.
    pub caps: content::Caps,
    /// The domains the tenant's `from` may use (its own list, else
    /// `channels.email.sender_domains`); `None`: any.
    pub sender_domains: Option<&'a [String]>,
    pub templates: &'a Book,
    /// What the request's renders may still spend, together.
    pub render_budget: &'a template::RenderBudget,
}

impl<'a> ParseOptions<'a> {
    /// Defaults (nothing private allowed, no limits but the default caps) over `templates`,
    /// rendering within `budget`.
    pub fn new(templates: &'a Book, budget: &'a template::RenderBudget) -> Self {
        ParseOptions {
            now: OffsetDateTime::now_utc(),
            allow_private_push: false,
            allow_private_callbacks: false,
            sms_region: None,
            sms_max_segments: None,
            caps: content::Caps::default(),
            sender_domains: None,
            templates,
            render_budget: budget,
        }
    }

    fn rules(&self) -> content::Rules<'a> {
        content::Rules {
            allow_private_links: self.allow_private_callbacks,
            sms_max_segments: self.sms_max_segments,
            caps: self.caps,
            sender_domains: self.sender_domains,
        }
    }
}

/// The fields a notification request may have (the OpenAPI schema is held to this list).
pub const FIELDS: [&str; 12] = [
    "channel",
    "to",
    "content",
    "template",
    "locale",
    "send_at",
    "expires_at",
    "priority",
    "tags",
    "metadata",
    "callback_url",
    "category",
];
const MAX_TAGS: usize = 20;
const MAX_TAG_LEN: usize = 100;
const MAX_METADATA_BYTES: usize = 8 * 1024;

impl NewNotification {
    pub fn parse(body: &Value, opts: ParseOptions<'_>) -> Result<Self, Vec<FieldError>> {
        let mut errs = Errors(Vec::new());
        let Some(obj) = body.as_object() else {
            return Err(vec![FieldError::new("", "the body must be a JSON object")]);
        };
        let nul = content::nul_problems(body, "");
        if !nul.is_empty() {
            return Err(nul);
        }
        for key in obj.keys() {
            if !FIELDS.contains(&key.as_str()) {
                errs.add(format!("/{}", escape(key)), "unknown field");
            }
        }

        let channel = parse_channel(obj, &mut errs);
        let to = parse_to(obj, channel, opts, &mut errs);
        let (content, template_use) = parse_content(obj, channel, opts, &mut errs);

        let send_at = parse_time(obj, "send_at", &mut errs);
        let expires_at = parse_time(obj, "expires_at", &mut errs);
        if let Some(exp) = expires_at {
            if exp <= opts.now {
                errs.add("/expires_at", "must be in the future");
            } else if send_at.is_some_and(|s| exp <= s) {
                errs.add("/expires_at", "must be after send_at");
            }
        }

        let priority = parse_priority(obj, &mut errs);
        let tags = parse_tags(obj, &mut errs);
        let metadata = parse_metadata(obj, &mut errs);
        let callback_url = parse_callback_url(obj, opts, &mut errs);
        let category = parse_category(obj, &mut errs);

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
                category,
                template: template_use,
            }),
            _ => Err(errs.0),
        }
    }
}

/// The fields of a notification's `template`.
pub const TEMPLATE_FIELDS: [&str; 3] = ["name", "version", "data"];

/// Render `{"template": {"name", "version", "data"}}` for `channel` and check the result as
/// content. Problems of the rendered content are the template's, so they point at `/template`.
fn from_template(
    channel: Channel,
    t: &Value,
    locale: Option<&str>,
    opts: ParseOptions<'_>,
    errs: &mut Errors,
) -> Option<(Content, TemplateUse)> {
    let Some(obj) = t.as_object() else {
        errs.add("/template", "must be an object: {\"name\": \"welcome\", \"version\": 3, \"data\": {…}}");
        return None;
    };
    let before = errs.0.len();
    for key in obj.keys().filter(|k| !TEMPLATE_FIELDS.contains(&k.as_str())) {
        errs.add(format!("/template/{}", escape(key)), "unknown field");
    }
    let name = match obj.get("name") {
        Some(Value::String(n)) if template::valid_name(n) => Some(n.as_str()),
        Some(_) => {
            errs.add("/template/name", "must be a template name (letters, digits, `.`, `_`, `-`)");
            None
        }
        None => {
            errs.add("/template/name", "is required");
            None
        }
    };
    let version = match obj.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => match template::version_number(v) {
            Some(v) => Some(v),
            None => {
                errs.add("/template/version", "must be a positive integer");
                None
            }
        },
    };
    let empty = Map::new();
    let data = match obj.get("data") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => {
            errs.add("/template/data", "must be an object");
            &empty
        }
    };
    let name = name.filter(|_| errs.0.len() == before)?;
    let Some(found) = opts.templates.get(name, version) else {
        match version {
            Some(v) => errs.add("/template/version", format!("template `{name}` has no version {v}")),
            None => errs.add("/template/name", format!("no template named `{name}`")),
        }
        return None;
    };
    let Some((variant, parts)) = found.template.part_for(channel, locale) else {
        errs.add("/template", format!("template `{name}` version {} has no {channel} part", found.version));
        return None;
    };
    match template::render_checked(
        parts,
        channel,
        data,
        "/template/data",
        "/template",
        opts.rules(),
        opts.render_budget,
    ) {
        Ok((_, c)) => {
            Some((c, TemplateUse { name: name.to_owned(), version: found.version, locale: variant.map(str::to_owned) }))
        }
        Err(problems) => {
            errs.0.extend(problems);
            None
        }
    }
}

/// `t` as PostgreSQL keeps and gives it back: in UTC, to the microsecond (sqlx truncates the
/// rest), so that an answer built from what was written shows what a later read does.
pub fn stored_precision(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

/// `channel`: required, one of email, sms, push.
fn parse_channel(obj: &Map<String, Value>, errs: &mut Errors) -> Option<Channel> {
    match obj.get("channel") {
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
    }
}

/// `to`, read for its channel (none when the channel is unknown: nothing to read it as).
fn parse_to(
    obj: &Map<String, Value>,
    channel: Option<Channel>,
    opts: ParseOptions<'_>,
    errs: &mut Errors,
) -> Option<Recipient> {
    match (channel, obj.get("to")) {
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
    }
}

/// `content`, or a `template` rendered (in `locale`): exactly one of them. The content, and
/// which template version made it.
fn parse_content(
    obj: &Map<String, Value>,
    channel: Option<Channel>,
    opts: ParseOptions<'_>,
    errs: &mut Errors,
) -> (Option<Content>, Option<TemplateUse>) {
    let locale = match obj.get("locale") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(l)) if template::valid_locale(l) => Ok(Some(l.as_str())),
        Some(_) => {
            errs.add("/locale", "must be a BCP 47 tag such as en or pt-BR");
            Err(())
        }
    };
    let mut template_use = None;
    let content = match (obj.get("content"), obj.get("template")) {
        (Some(_), Some(_)) => {
            errs.add("/template", "give exactly one of content and template");
            None
        }
        (None, Some(t)) => match (channel, locale) {
            (Some(ch), Ok(locale)) => match from_template(ch, t, locale, opts, errs) {
                Some((content, used)) => {
                    template_use = Some(used);
                    Some(content)
                }
                None => None,
            },
            _ => None,
        },
        (None, None) => {
            errs.add("/content", "is required");
            None
        }
        (Some(v), None) => channel.and_then(|ch| content::parse_into(ch, v, opts.rules(), errs)),
    };
    (content, template_use)
}

/// `category`: absent or null for a transactional message, else a name (`is_category`).
fn parse_category(obj: &Map<String, Value>, errs: &mut Errors) -> Option<String> {
    match obj.get("category") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if is_category(c) => Some(c.clone()),
        Some(_) => {
            errs.add("/category", CATEGORY_RULE);
            None
        }
    }
}

/// What a category looks like, as a problem's detail says it.
pub const CATEGORY_RULE: &str =
    "must be 1 to 64 of a-z, 0-9, '_', '.' and '-', starting with a letter or digit (such as newsletter)";

/// A category: `^[a-z0-9][a-z0-9_.-]{0,63}$`.
pub fn is_category(c: &str) -> bool {
    let b = c.as_bytes();
    let inner = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'_' | b'.' | b'-');
    (1..=64).contains(&b.len()) && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit()) && b.iter().all(inner)
}

/// `priority`, `normal` when absent.
fn parse_priority(obj: &Map<String, Value>, errs: &mut Errors) -> Priority {
    match obj.get("priority") {
        None | Some(Value::Null) => Priority::Normal,
        Some(v) => v.as_str().and_then(Priority::parse).unwrap_or_else(|| {
            errs.add("/priority", "must be one of high, normal, low");
            Priority::Normal
        }),
    }
}

/// `tags`: at most `MAX_TAGS` non-empty strings of at most `MAX_TAG_LEN` bytes.
fn parse_tags(obj: &Map<String, Value>, errs: &mut Errors) -> Vec<String> {
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
    tags
}

/// `metadata`: an object of at most `MAX_METADATA_BYTES` as JSON.
fn parse_metadata(obj: &Map<String, Value>, errs: &mut Errors) -> Map<String, Value> {
    match obj.get("metadata") {
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
    }
}

/// `callback_url`: an endpoint Herald may call (public https unless private networks are allowed).
fn parse_callback_url(obj: &Map<String, Value>, opts: ParseOptions<'_>, errs: &mut Errors) -> Option<String> {
    match obj.get("callback_url") {
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
    }
}

fn parse_time(obj: &Map<String, Value>, key: &str, errs: &mut Errors) -> Option<OffsetDateTime> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match OffsetDateTime::parse(s, &Rfc3339) {
            Ok(t) => Some(stored_precision(t)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts() -> ParseOptions<'static> {
        ParseOptions::new(&NO_TEMPLATES, Box::leak(Box::new(template::RenderBudget::per_request())))
    }

    static NO_TEMPLATES: std::sync::LazyLock<Book> = std::sync::LazyLock::new(Book::default);

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
    fn a_nul_anywhere_is_refused_at_its_pointer() {
        let body = json!({"channel": "sms", "to": "+14155550100", "content": {"text": "a\u{0}b"},
                          "metadata": {"k": ["x", "y\u{0}"]}});
        assert_eq!(pointers(&body), vec!["/content/text", "/metadata/k/1"]);
    }

    #[test]
    fn content_over_its_cap_is_refused_naming_the_cap() {
        let big = "x".repeat(300 * 1024);
        let p = NewNotification::parse(
            &json!({"channel": "email", "to": "a@example.com", "content": {"subject": "s", "text": big, "html": big}}),
            opts(),
        )
        .unwrap_err();
        assert_eq!(p[0].pointer, "/content");
        assert!(p[0].detail.contains("channels.email.max_content_bytes allows 524288"), "{}", p[0].detail);
        let huge = "x".repeat(600 * 1024);
        assert_eq!(
            pointers(&json!({"channel": "email", "to": "a@example.com", "content": {"subject": "s", "html": huge}})),
            vec!["/content/html"]
        );
        let body = "y".repeat(5000);
        assert_eq!(
            pointers(&json!({"channel": "push", "to": {"fcm": "t"}, "content": {"title": "t", "body": body}})),
            vec!["/content/body"]
        );
        assert_eq!(
            pointers(&json!({"channel": "push", "to": {"fcm": "t"},
                             "content": {"title": "t".repeat(3000), "body": "b".repeat(1500)}})),
            vec!["/content"]
        );
        assert_eq!(
            pointers(&json!({"channel": "sms", "to": "+14155550100", "content": {"text": "z".repeat(1601)}})),
            vec!["/content/text"]
        );
    }

    #[test]
    fn a_from_outside_the_sender_domains_is_refused() {
        let allowed = vec!["acme.com".to_owned()];
        let opts = ParseOptions { sender_domains: Some(&allowed), ..opts() };
        let with = |from: &str| json!({"channel": "email", "to": "a@example.com", "content": {"subject": "s", "text": "t", "from": from}});
        assert!(NewNotification::parse(&with("Billing <billing@acme.com>"), opts).is_ok());
        assert!(NewNotification::parse(&with("billing@mail.ACME.com"), opts).is_ok());
        for bad in ["billing@tenant-b.example", "billing@notacme.com", "x@acme.com.evil.example"] {
            let e = NewNotification::parse(&with(bad), opts).unwrap_err();
            assert_eq!(e[0].pointer, "/content/from", "{bad}");
            assert!(e[0].detail.contains("acme.com"), "{}", e[0].detail);
        }
    }

    #[test]
    fn mailboxes() {
        assert!(parse_mailbox("Billing <billing@example.com>").is_ok());
        assert!(parse_mailbox("billing@example.com").is_ok());
        assert!(parse_mailbox("Billing <billing@example.com").is_err());
    }
}
