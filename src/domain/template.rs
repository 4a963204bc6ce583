//! Templates: a version's per-channel texts, with variants per BCP 47 locale, rendered with
//! minijinja in strict mode. `Template::parse` checks a `PUT` body (every text must compile);
//! `Template::variant` picks the best locale (`pt-BR` → `pt` → the default); `render` turns
//! one channel's part into a `content` object, which `domain::content` then checks like any
//! content a caller sent. Nothing here reads the database: `store::templates` keeps versions.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::FieldError;
use super::channel::Channel;
use super::content::{self, Content, EmailContent, PushContent, Rules, SmsContent, escape};

/// A variant: the parts of some channels, each shaped as the channel's `content` with every
/// string a template (`html` auto-escaped, the rest not; push `data` values are sent as they are).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Parts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<SmsContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushContent>,
}

impl Parts {
    pub fn has(&self, channel: Channel) -> bool {
        match channel {
            Channel::Email => self.email.is_some(),
            Channel::Sms => self.sms.is_some(),
            Channel::Push => self.push.is_some(),
        }
    }

    pub fn channels(&self) -> Vec<Channel> {
        Channel::ALL.into_iter().filter(|c| self.has(*c)).collect()
    }

    /// Each text of the part with its pointer below the part and the name minijinja knows it
    /// by (its extension decides auto-escaping).
    fn texts(&self, channel: Channel) -> Vec<(&'static str, &str)> {
        let mut out: Vec<(&'static str, &str)> = Vec::new();
        match channel {
            Channel::Email => {
                if let Some(e) = &self.email {
                    out.push(("subject", &e.subject));
                    out.extend(e.text.as_deref().map(|t| ("text", t)));
                    out.extend(e.html.as_deref().map(|t| ("html", t)));
                    out.extend(e.from.as_deref().map(|t| ("from", t)));
                    out.extend(e.reply_to.as_deref().map(|t| ("reply_to", t)));
                    out.extend(e.unsubscribe_url.as_deref().map(|t| ("unsubscribe_url", t)));
                }
            }
            Channel::Sms => out.extend(self.sms.as_ref().map(|s| ("text", s.text.as_str()))),
            Channel::Push => {
                if let Some(p) = &self.push {
                    out.extend(p.title.as_deref().map(|t| ("title", t)));
                    out.extend(p.body.as_deref().map(|t| ("body", t)));
                }
            }
        }
        out
    }
}

/// A template version's body: the default variant's parts, and variants by locale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Body", into = "Body")]
pub struct Template {
    pub default_locale: Option<String>,
    pub parts: Parts,
    pub locales: BTreeMap<String, Parts>,
}

/// A template version's body, as `PUT` takes it and `GET` returns it: the default parts at
/// the top level (serde's `flatten` would lose `deny_unknown_fields` and error paths).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TemplateBody, example = json!({"default_locale": "en", "email": {"subject": "Welcome, {{ first_name }}",
    "text": "Hi {{ first_name }}", "html": "<p>Hi {{ first_name }}</p>"}, "sms": {"text": "Hi {{ first_name }}"},
    "locales": {"pt": {"sms": {"text": "Olá {{ first_name }}"}}, "pt-BR": {"sms": {"text": "Oi {{ first_name }}"}}}}))]
pub struct Body {
    /// The locale of the default variant (the top-level parts), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<EmailContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sms: Option<SmsContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    push: Option<PushContent>,
    /// Variants by BCP 47 tag; a channel a variant leaves out comes from the default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    locales: BTreeMap<String, Parts>,
}

impl From<Body> for Template {
    fn from(b: Body) -> Self {
        Template {
            default_locale: b.default_locale,
            parts: Parts { email: b.email, sms: b.sms, push: b.push },
            locales: b.locales,
        }
    }
}

impl From<Template> for Body {
    fn from(t: Template) -> Self {
        Body {
            default_locale: t.default_locale,
            email: t.parts.email,
            sms: t.parts.sms,
            push: t.parts.push,
            locales: t.locales,
        }
    }
}

const MAX_LOCALES: usize = 100;

/// A template name: what the URL path carries.
pub fn valid_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// A well-formed BCP 47 tag (RFC 5646 syntax: a 2–8 letter language, then subtags of 1–8
/// letters or digits). Whether the language exists is not checked: an unknown one falls back.
pub fn valid_locale(tag: &str) -> bool {
    let mut subtags = tag.split('-');
    let lang_ok =
        subtags.next().is_some_and(|l| (2..=8).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphabetic()));
    lang_ok && subtags.all(|s| (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

impl Template {
    /// Read a `PUT` body: its shape, its locales, and every text compiled.
    pub fn parse(body: &Value) -> Result<Template, Vec<FieldError>> {
        let template: Template = serde_path_to_error::deserialize(body).map_err(|e| {
            let pointer: String = e
                .path()
                .iter()
                .filter_map(|seg| match seg {
                    serde_path_to_error::Segment::Map { key } => Some(format!("/{}", escape(key))),
                    serde_path_to_error::Segment::Seq { index } => Some(format!("/{index}")),
                    _ => None,
                })
                .collect();
            vec![FieldError::new(pointer, e.into_inner().to_string())]
        })?;
        let mut errs = Vec::new();
        if let Some(d) = &template.default_locale
            && !valid_locale(d)
        {
            errs.push(FieldError::new("/default_locale", "must be a BCP 47 tag such as en or pt-BR"));
        }
        if template.parts.channels().is_empty() {
            errs.push(FieldError::new("", "give the default parts of at least one channel: email, sms or push"));
        }
        if template.locales.len() > MAX_LOCALES {
            errs.push(FieldError::new("/locales", format!("at most {MAX_LOCALES} locales")));
        }
        let mut seen = HashSet::new();
        for (tag, parts) in &template.locales {
            let at = format!("/locales/{}", escape(tag));
            if !valid_locale(tag) {
                errs.push(FieldError::new(&at, "must be keyed by a BCP 47 tag such as en or pt-BR"));
            } else if !seen.insert(tag.to_ascii_lowercase()) {
                errs.push(FieldError::new(&at, "is listed twice (tags match whatever their case)"));
            } else if template.default_locale.as_deref().is_some_and(|d| d.eq_ignore_ascii_case(tag)) {
                errs.push(FieldError::new(&at, "is the default_locale: put its parts at the top level"));
            }
            if parts.channels().is_empty() {
                errs.push(FieldError::new(&at, "a variant needs the parts of at least one channel"));
            }
            compile_all(parts, &at, &mut errs);
        }
        compile_all(&template.parts, "", &mut errs);
        if errs.is_empty() { Ok(template) } else { Err(errs) }
    }

    /// The variant for `requested`: the longest prefix of the tag that names a variant
    /// (`pt-BR-x` → `pt-BR` → `pt`, matched whatever the case), else the default. Returns its
    /// tag (the default's is `default_locale`) and its parts.
    pub fn variant(&self, requested: Option<&str>) -> (Option<&str>, &Parts) {
        self.best(requested, |_| true)
    }

    /// The part of `channel` for `requested`: from the best variant that has one, down the
    /// same chain (`pt-BR` without an SMS text → `pt` → the default). `None`: no variant has it.
    pub fn part_for(&self, channel: Channel, requested: Option<&str>) -> Option<(Option<&str>, &Parts)> {
        let found = self.best(requested, |p| p.has(channel));
        found.1.has(channel).then_some(found)
    }

    fn best(&self, requested: Option<&str>, wanted: impl Fn(&Parts) -> bool) -> (Option<&str>, &Parts) {
        let default = (self.default_locale.as_deref(), &self.parts);
        let Some(mut tag) = requested else { return default };
        loop {
            if self.default_locale.as_deref().is_some_and(|d| d.eq_ignore_ascii_case(tag)) && wanted(&self.parts) {
                return default;
            }
            if let Some((t, p)) = self.locales.iter().find(|(t, p)| t.eq_ignore_ascii_case(tag) && wanted(p)) {
                return (Some(t.as_str()), p);
            }
            match tag.rfind('-') {
                Some(i) => tag = &tag[..i],
                None => return default,
            }
        }
    }
}

/// A stored version.
#[derive(Clone, Debug)]
pub struct Version {
    pub name: String,
    pub version: i32,
    pub template: Template,
    pub created_at: time::OffsetDateTime,
}

/// The versions a request refers to, looked up before it is parsed (parsing reads no
/// database): by name and the version asked for (`None`: the latest).
#[derive(Clone, Debug, Default)]
pub struct Book(HashMap<(String, Option<i32>), Arc<Version>>);

impl Book {
    pub fn get(&self, name: &str, version: Option<i32>) -> Option<&Version> {
        self.0.get(&(name.to_owned(), version)).map(Arc::as_ref)
    }

    pub fn insert(&mut self, asked: (String, Option<i32>), found: Arc<Version>) {
        self.0.insert(asked, found);
    }
}

/// Where a notification's content came from: stored with it, shown by `GET`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateUse {
    pub name: String,
    pub version: i32,
    /// The variant used: its tag, or the template's `default_locale` (`null` when it has none).
    pub locale: Option<String>,
}

/// The template a notification body refers to (`{"template": {"name", "version"}}`), if any,
/// as far as it is well-formed (parsing reports the rest).
pub fn reference(body: &Value) -> Option<(String, Option<i32>)> {
    let t = body.get("template")?;
    let name = t.get("name")?.as_str().filter(|n| valid_name(n))?;
    let version = match t.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(version_number(v)?),
    };
    Some((name.to_owned(), version))
}

/// A version number as a request gives it: a positive integer.
pub fn version_number(v: &Value) -> Option<i32> {
    v.as_i64().and_then(|v| i32::try_from(v).ok()).filter(|v| *v > 0)
}

/// Render one channel's part and check it as that channel's content, as a send would: the
/// rendered object and the content read from it. A missing variable points into `data`
/// (`data_at`); a rendered text the channel refuses is reported at `at`.
pub fn render_checked(
    parts: &Parts,
    channel: Channel,
    data: &Map<String, Value>,
    data_at: &str,
    at: &str,
    rules: Rules<'_>,
    budget: &RenderBudget,
) -> Result<(Value, Content), Vec<FieldError>> {
    let rendered = render(parts, channel, data, data_at, budget).map_err(|e| vec![e])?;
    match content::parse(channel, &rendered, rules) {
        Ok(c) => Ok((rendered, c)),
        Err(problems) => Err(problems
            .into_iter()
            .map(|p| {
                let field = p.pointer.strip_prefix("/content").unwrap_or(&p.pointer);
                let field = if field.is_empty() { String::new() } else { format!(" {}", &field[1..]) };
                FieldError::new(at, format!("the rendered {channel}{field} {}", p.detail))
            })
            .collect()),
    }
}

fn compile_all(parts: &Parts, at: &str, errs: &mut Vec<FieldError>) {
    // What no rendering could make sendable is refused now rather than at every send.
    if let Some(e) = &parts.email {
        if e.subject.trim().is_empty() {
            errs.push(FieldError::new(format!("{at}/email/subject"), "must not be empty"));
        }
        if e.text.as_deref().is_none_or(str::is_empty) && e.html.as_deref().is_none_or(str::is_empty) {
            errs.push(FieldError::new(format!("{at}/email"), "email needs text and/or html"));
        }
    }
    if parts.sms.as_ref().is_some_and(|s| s.text.trim().is_empty()) {
        errs.push(FieldError::new(format!("{at}/sms/text"), "must not be empty"));
    }
    if let Some(p) = &parts.push
        && p.title.as_deref().is_none_or(str::is_empty)
        && p.body.as_deref().is_none_or(str::is_empty)
    {
        errs.push(FieldError::new(format!("{at}/push"), "push needs a title and/or a body"));
    }
    for channel in parts.channels() {
        for (field, source) in parts.texts(channel) {
            if let Err(e) = ENV.template_from_named_str(field, source) {
                errs.push(FieldError::new(
                    format!("{at}/{channel}/{field}"),
                    format!("does not compile: {}{}", describe(&e), position(&e, source)),
                ));
            }
        }
    }
}

/// Enough for any real message (a few thousand loop steps; a typical text spends about 50): a
/// template that loops for ever runs out and is refused. A text that spends all of it takes
/// about 1 ms to render in a release build (2 ms on a busy machine), so `REQUEST_FUEL` bounds
/// what a request's texts spend together.
const FUEL: u64 = 50_000;

/// What the renders of one request (a single POST, a preview, or every item of a batch) may
/// spend together: 40 texts that each spend all their `FUEL`, 40 to 80 ms of one thread, while
/// a thousand ordinary items of three texts (about 50 steps a text) spend a tenth of it. Past
/// it, the request's remaining templated items are refused with a 422 rather than rendered.
pub const REQUEST_FUEL: u64 = 40 * FUEL;

/// The fuel one request's renders have left (see `REQUEST_FUEL`).
#[derive(Debug)]
pub struct RenderBudget {
    left: Cell<u64>,
}

impl RenderBudget {
    pub fn new(fuel: u64) -> Self {
        RenderBudget { left: Cell::new(fuel) }
    }

    pub fn per_request() -> Self {
        Self::new(REQUEST_FUEL)
    }

    /// Fuel left.
    pub fn left(&self) -> u64 {
        self.left.get()
    }

    fn spend(&self, fuel: u64) {
        self.left.set(self.left.get().saturating_sub(fuel));
    }
}

/// The most one text may render to; past it the render stops and is refused. Above every
/// channel's own limit (an API body is 1 MiB by default), so it only stops runaway templates.
const MAX_RENDERED_BYTES: usize = 1024 * 1024;

/// Rendered output, refused past `MAX_RENDERED_BYTES` (minijinja stops at the first failed write).
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDERED_BYTES {
            return Err(std::io::Error::other("the rendered text is too long"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Render one text, at most `MAX_RENDERED_BYTES` of it, charging the fuel it used to `budget`.
fn render_text(
    t: &minijinja::Template<'_, '_>,
    ctx: &minijinja::Value,
    budget: &RenderBudget,
) -> Result<String, minijinja::Error> {
    let mut out = Capped(Vec::new());
    let rendered = t.render_captured_to(ctx, &mut out);
    // A failed render is charged in full: it may have run out of fuel (or come close).
    budget.spend(rendered.as_ref().ok().and_then(|c| c.state().fuel_levels()).map_or(FUEL, |(used, _)| used));
    rendered.map_err(|e| {
        if e.kind() == ErrorKind::WriteFailure {
            minijinja::Error::new(
                ErrorKind::WriteFailure,
                format!("renders to more than {} KiB", MAX_RENDERED_BYTES / 1024),
            )
        } else {
            e
        }
    })?;
    // minijinja writes whole UTF-8 strings, and a refused write ends the render.
    String::from_utf8(out.0).map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "rendered invalid UTF-8"))
}

/// One environment for every render: strict about undefined values, HTML parts escaped.
static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_auto_escape_callback(|name| if name == "html" { AutoEscape::Html } else { AutoEscape::None });
    env
});

fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// ` (line L, column C)` of an error in `source`, where minijinja knows it.
fn position(e: &minijinja::Error, source: &str) -> String {
    let Some(line) = e.line() else { return String::new() };
    match e.range() {
        Some(r) if r.start <= source.len() && source.is_char_boundary(r.start) => {
            let before = &source[..r.start];
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" (line {line}, column {column})")
        }
        _ => format!(" (line {line})"),
    }
}

/// Render one channel's part with `data` into a `content` object. A variable the data lacks
/// is named, and pointed at where it belongs in the request (`data_at` is where `data` is).
/// Every text is charged to `budget`; once it is spent, the render is refused.
pub fn render(
    parts: &Parts,
    channel: Channel,
    data: &Map<String, Value>,
    data_at: &str,
    budget: &RenderBudget,
) -> Result<Value, FieldError> {
    let ctx = minijinja::Value::from(minijinja::value::Serde(data));
    let mut out = Map::new();
    for (field, source) in parts.texts(channel) {
        if budget.left() == 0 {
            return Err(FieldError::new(
                data_at,
                format!(
                    "not rendered: this request's templates used up its rendering budget ({REQUEST_FUEL} steps); \
                     send its templated items in smaller batches"
                ),
            ));
        }
        // Texts were compiled at `PUT`; a stored one that no longer compiles is reported the same way.
        let (e, absent) = match ENV.template_from_named_str(field, source) {
            Ok(t) => match render_text(&t, &ctx, budget) {
                Ok(s) => {
                    out.insert(field.to_owned(), Value::String(s));
                    continue;
                }
                Err(e) => {
                    let absent = (e.kind() == ErrorKind::UndefinedError).then(|| absent_variable(&t, data, &e, source));
                    (e, absent.flatten())
                }
            },
            Err(e) => (e, None),
        };
        let at = position(&e, source);
        return Err(match absent {
            Some(path) => {
                let pointer: String = path.split('.').map(|p| format!("/{}", escape(p))).collect();
                FieldError::new(
                    format!("{data_at}{pointer}"),
                    format!("{channel}.{field} uses `{path}`, which data does not have{at}"),
                )
            }
            None => FieldError::new(data_at, format!("{channel}.{field} does not render: {}{at}", describe(&e))),
        });
    }
    if channel == Channel::Push
        && let Some(p) = &parts.push
        && !p.data.is_empty()
    {
        out.insert("data".into(), serde_json::to_value(&p.data).unwrap_or_default());
    }
    Ok(Value::Object(out))
}

/// The variable behind an undefined-value error: the expression minijinja points at when it
/// is a variable path that `data` lacks, else the first variable the template reads that
/// `data` lacks (a filter's error points at the filter).
fn absent_variable(
    t: &minijinja::Template<'_, '_>,
    data: &Map<String, Value>,
    e: &minijinja::Error,
    source: &str,
) -> Option<String> {
    let mut wanted: Vec<String> = t.undeclared_variables(true).into_iter().filter(|p| !resolves(data, p)).collect();
    wanted.sort();
    let pointed = e.range().and_then(|r| source.get(r)).map(str::trim);
    match pointed.and_then(|p| wanted.iter().find(|w| *w == p)) {
        Some(p) => Some(p.clone()),
        None => wanted.into_iter().next(),
    }
}

fn resolves(data: &Map<String, Value>, path: &str) -> bool {
    let mut parts = path.split('.');
    let Some(first) = parts.next() else { return true };
    let Some(mut v) = data.get(first) else { return false };
    for p in parts {
        match v.get(p) {
            Some(next) => v = next,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn budget() -> RenderBudget {
        RenderBudget::per_request()
    }

    fn data(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let t = Template::parse(&json!({"email": {"subject": "Hi {{ name }}", "text": "Hi {{ name }}",
                                                   "html": "<p>Hi {{ name }}</p>"}}))
        .expect("valid");
        let out = render(&t.parts, Channel::Email, &data(json!({"name": "<Tom & Jerry>"})), "/data", &budget())
            .expect("renders");
        assert_eq!(out["subject"], "Hi <Tom & Jerry>");
        assert_eq!(out["text"], "Hi <Tom & Jerry>");
        assert_eq!(out["html"], "<p>Hi &lt;Tom &amp; Jerry&gt;</p>");
    }

    #[test]
    fn a_missing_variable_is_named_with_its_pointer() {
        let t = Template::parse(&json!({"sms": {"text": "Code {{ code }} for {{ user.name }}"}})).expect("valid");
        let e = render(&t.parts, Channel::Sms, &data(json!({"code": 1, "user": {}})), "/template/data", &budget())
            .unwrap_err();
        assert_eq!(e.pointer, "/template/data/user/name");
        assert_eq!(e.detail, "sms.text uses `user.name`, which data does not have (line 1, column 24)");
        let e = render(&t.parts, Channel::Sms, &data(json!({"user": {"name": "A"}})), "/data", &budget()).unwrap_err();
        assert_eq!((e.pointer.as_str(), e.detail.contains("`code`")), ("/data/code", true), "{}", e.detail);
        // A filter's error points at the filter; the variable is still the one named.
        let t = Template::parse(&json!({"sms": {"text": "{{ name | upper }}"}})).expect("valid");
        let e = render(&t.parts, Channel::Sms, &Map::new(), "/data", &budget()).unwrap_err();
        assert_eq!(e.pointer, "/data/name", "{}", e.detail);
    }

    #[test]
    fn a_template_that_does_not_compile_is_refused_with_line_and_column() {
        let errs = Template::parse(&json!({"sms": {"text": "ok"},
            "locales": {"pt": {"email": {"subject": "Olá", "html": "<p>\n  {{ name </p>"}}}}))
        .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].pointer, "/locales/pt/email/html");
        assert!(errs[0].detail.contains("line 2, column"), "{}", errs[0].detail);
    }

    #[test]
    fn shapes_and_locales_are_checked() {
        let p = |v: Value| Template::parse(&v).unwrap_err().into_iter().map(|e| e.pointer).collect::<Vec<_>>();
        assert_eq!(p(json!({"sms": {"txt": "x"}})), vec!["/sms/txt"]);
        assert_eq!(p(json!({})), vec![""]);
        assert_eq!(
            p(json!({"sms": {"text": " "}, "email": {"subject": "s"}, "push": {"data": {"a": "b"}}})),
            vec!["/email", "/sms/text", "/push"]
        );
        assert_eq!(
            p(json!({"sms": {"text": "x"}, "locales": {"not a tag": {"sms": {"text": "y"}}}})),
            vec!["/locales/not a tag"]
        );
        assert_eq!(
            p(json!({"sms": {"text": "x"}, "default_locale": "en", "locales": {"EN": {"sms": {"text": "y"}}}})),
            vec!["/locales/EN"]
        );
    }

    #[test]
    fn locales_fall_back_from_region_to_language_to_default() {
        let t = Template::parse(
            &json!({"default_locale": "en", "sms": {"text": "Hi"}, "email": {"subject": "Hi", "text": "Hi"},
            "locales": {"pt": {"sms": {"text": "Olá"}}, "pt-BR": {"sms": {"text": "Oi"}}}}),
        )
        .expect("valid");
        assert_eq!(t.variant(Some("pt-BR")).0, Some("pt-BR"));
        assert_eq!(t.variant(Some("pt-br")).0, Some("pt-BR"));
        assert_eq!(t.variant(Some("pt-PT")).0, Some("pt"));
        assert_eq!(t.variant(Some("de-DE")).0, Some("en"));
        assert_eq!(t.variant(None).0, Some("en"));
        // pt-BR has no email part, nor pt: the default's is used.
        assert_eq!(t.part_for(Channel::Email, Some("pt-BR")).map(|p| p.0), Some(Some("en")));
        assert!(t.part_for(Channel::Push, Some("pt")).is_none());
    }

    #[test]
    fn a_request_renders_within_one_budget_then_refuses() {
        // Each text spends just under its own fuel; the request's budget runs out after about
        // REQUEST_FUEL / FUEL of them, and the rest are refused without being rendered.
        let t =
            Template::parse(&json!({"sms": {"text": "{% for i in range(12000) %}{% endfor %}x"}})).expect("compiles");
        let b = budget();
        let mut rendered = 0;
        let mut refused = 0;
        for _ in 0..1000 {
            match render(&t.parts, Channel::Sms, &Map::new(), "/data", &b) {
                Ok(_) => rendered += 1,
                Err(e) => {
                    assert!(e.detail.contains("rendering budget"), "{}", e.detail);
                    refused += 1;
                }
            }
        }
        assert!((40..=200).contains(&rendered), "{rendered} rendered");
        assert_eq!(rendered + refused, 1000);
        // An ordinary text costs a few steps: a thousand items are far inside the budget.
        let t = Template::parse(&json!({"sms": {"text": "Hi {{ name }}, your code is {{ code }}"}})).expect("compiles");
        let b = budget();
        let d = data(json!({"name": "Ana", "code": "123456"}));
        for _ in 0..1000 {
            render(&t.parts, Channel::Sms, &d, "/data", &b).expect("renders");
        }
        assert!(b.left() > REQUEST_FUEL / 2, "{} left", b.left());
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel() {
        let t = Template::parse(&json!({"sms": {"text": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"}}))
            .expect("compiles");
        let e = render(&t.parts, Channel::Sms, &Map::new(), "/data", &budget()).unwrap_err();
        assert!(e.detail.contains("fuel") || e.detail.contains("out of"), "{}", e.detail);
        // Output is bounded too, whatever the fuel: 300 × 10,000 characters is over 1 MiB.
        let t = Template::parse(
            &json!({"email": {"subject": "s", "text": "{% for i in range(300) %}{{ 'x' * 10000 }}{% endfor %}"}}),
        )
        .expect("compiles");
        let e = render(&t.parts, Channel::Email, &Map::new(), "/data", &budget()).unwrap_err();
        assert!(e.detail.contains("renders to more than 1024 KiB"), "{}", e.detail);
        let t = Template::parse(
            &json!({"email": {"subject": "s", "text": "{% for i in range(50) %}{{ 'x' * 10000 }}{% endfor %}"}}),
        )
        .expect("compiles");
        let out = render(&t.parts, Channel::Email, &Map::new(), "/data", &budget()).expect("half a MiB renders");
        assert_eq!(out["text"].as_str().map(str::len), Some(500_000));
    }
}
