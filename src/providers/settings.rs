//! `[providers.NAME]` sections, typed per kind. Each kind's module owns its `Config`
//! (`deny_unknown_fields`, required keys as plain fields, values parsed into their types) and
//! implements `Vendor`; the table in `kinds.rs` ties a `kind = "..."` to it, and reads a
//! whole section (`ProviderSettings::parse`). The keys every
//! provider has (timeout, pacing, circuit breaker) are `Common`, split off before the kind's
//! own keys are read, since `deny_unknown_fields` does not combine with `flatten`.
//!
//! A section is read from figment's values (not by serde through `Settings`), so that every
//! error names its key, `providers.NAME.KEY`, whichever layer (file, environment) it came from.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use figment::error::Kind;
use figment::value::{Dict, Tag, Value};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::Provider;
use crate::domain::Channel;

fn default_timeout_ms() -> u64 {
    15_000
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown_ms() -> u64 {
    30_000
}

/// The keys every provider has, whatever its kind.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Common {
    /// The longest one send may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Pacing: at most this many sends per second (they wait, never fail).
    pub max_per_second: Option<f64>,
    /// Pacing: at most this many sends in flight at once.
    pub max_in_flight: Option<usize>,
    /// Circuit breaker: consecutive transient failures that open it.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// Circuit breaker: how long it stays open before one probe is let through.
    #[serde(default = "default_breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
    /// Web Push endpoints and SNS certificate URLs may be private (tests, labs).
    #[serde(default)]
    pub allow_private_networks: bool,
}

impl Common {
    /// `timeout_ms`: the longest one send may take.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms)
    }

    /// The keys above, as spelled in TOML (checked against the struct by a test).
    pub(super) const KEYS: [&'static str; 6] = [
        "timeout_ms",
        "max_per_second",
        "max_in_flight",
        "breaker_failures",
        "breaker_cooldown_ms",
        "allow_private_networks",
    ];

    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(r) = self.max_per_second
            && !(r > 0.0 && r.is_finite())
        {
            return Err(("max_per_second", "must be a positive number".into()));
        }
        if self.max_in_flight == Some(0) {
            return Err(("max_in_flight", "must be at least 1".into()));
        }
        if self.breaker_failures == 0 {
            return Err(("breaker_failures", "must be at least 1".into()));
        }
        if self.timeout_ms == 0 {
            return Err(("timeout_ms", "must be at least 1".into()));
        }
        Ok(())
    }
}

impl Default for Common {
    fn default() -> Self {
        Common {
            timeout_ms: default_timeout_ms(),
            max_per_second: None,
            max_in_flight: None,
            breaker_failures: default_breaker_failures(),
            breaker_cooldown_ms: default_breaker_cooldown_ms(),
            allow_private_networks: false,
        }
    }
}

/// What a provider kind's module gives the registry: its typed section and its adapter.
pub trait Vendor: DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static {
    /// The channels it can carry.
    const CHANNELS: &'static [Channel];
    /// Its secret keys, each with the key naming a file that holds it instead
    /// (`("api_key", "api_key_file")`): the file is read when settings load, and neither may
    /// be empty (an empty key would make signatures anyone can compute).
    const SECRETS: &'static [(&'static str, &'static str)] = &[];
    /// Rules across keys, once each key is well formed: the key at fault and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        Ok(())
    }
    /// The adapter. `name` is the section's (`[providers.NAME]`), for receipts URLs and logs.
    fn build(&self, name: &str, common: &Common, env: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String>;
}

/// What a provider is built with besides its own section.
pub struct BuildEnv<'a> {
    /// The shared client for providers with a fixed origin (it follows same-origin redirects).
    pub client: &'a reqwest::Client,
    /// `server.public_base_url`, for providers told where to send receipts.
    pub public_base_url: &'a str,
}

impl BuildEnv<'_> {
    /// Where provider `name`'s receipts go (`/webhooks/NAME`), when Herald knows its public URL.
    pub fn receipts_url(&self, name: &str) -> Option<String> {
        let base = self.public_base_url.trim_end_matches('/');
        (!base.is_empty()).then(|| format!("{base}/webhooks/{name}"))
    }
}

/// A key of a section at fault: `key` is relative to the section (`api_key`), `tag` finds the
/// layer it came from.
#[derive(Debug)]
pub struct SectionError {
    pub key: String,
    pub message: String,
    pub tag: Tag,
}

impl SectionError {
    pub(super) fn new(key: &str, tag: Tag, message: impl Into<String>) -> Self {
        SectionError { key: key.to_owned(), message: message.into(), tag }
    }
}

/// A figment error's kind in the words of the docs, not of Rust: `invalid type: found string
/// "2525x", expected u16` reads `"2525x" is not a whole number (0 to 65535)`, and no message
/// nests backticks.
pub fn plain(kind: &Kind) -> String {
    let expected = |e: &str| -> String {
        match e {
            "u8" => "a whole number (0 to 255)".into(),
            "u16" => "a whole number (0 to 65535)".into(),
            "u32" | "u64" | "usize" => "a whole number, 0 or more".into(),
            "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
            "f32" | "f64" => "a number".into(),
            "a boolean" | "bool" => "true or false".into(),
            other => other.replace('`', ""),
        }
    };
    match kind {
        Kind::InvalidType(actual, e) => format!("{} is not {}", actual.to_string().replace('`', ""), expected(e)),
        Kind::InvalidValue(actual, e) => format!("{} is not {}", actual.to_string().replace('`', ""), expected(e)),
        Kind::UnknownField(_, known) => format!("is not a setting here; the settings are {}", known.join(", ")),
        Kind::MissingField(_) => "is required".to_owned(),
        Kind::UnknownVariant(v, known) => format!("{v} is not one of {}", known.join(", ")),
        other => other.to_string().replace('`', ""),
    }
}

/// Name the key of a figment error the way the docs spell it: a missing or unknown field is
/// the key itself, not the table holding it. The key's value in `section` (else the section)
/// tells which layer it came from.
pub(super) fn keyed(e: &figment::Error, base: &str, what: &str, section: &Value) -> SectionError {
    let mut path: Vec<String> = base.split('.').filter(|p| !p.is_empty()).map(str::to_owned).collect();
    path.extend(e.path.iter().cloned());
    // figment's path may end with the field already: name it once.
    let mut push = |f: &str| {
        if path.last().map(String::as_str) != Some(f) {
            path.push(f.to_owned());
        }
    };
    let message = match &e.kind {
        Kind::MissingField(f) => {
            push(f);
            format!("is required for {what}")
        }
        Kind::UnknownField(f, known) => {
            push(f);
            format!("is not a setting of {what}; its settings are {}", known.join(", "))
        }
        other => plain(other),
    };
    let key = path.join(".");
    let tag = section.find_ref(&key).map_or(section.tag(), Value::tag);
    SectionError { key, message, tag }
}

/// A kind's own keys: `*_file` secrets read into their keys, then the typed `Config`.
pub(super) fn parse_vendor<T: Vendor>(kind: &str, mut table: Dict, section: &Value) -> Result<T, SectionError> {
    let what = format!("kind {kind}");
    for &(key, file_key) in T::SECRETS {
        if let Some(file) = table.remove(file_key) {
            let path: PathBuf = file.deserialize().map_err(|e| keyed(&e, file_key, &what, section))?;
            if table.contains_key(key) {
                return Err(SectionError::new(
                    file_key,
                    file.tag(),
                    format!("give either {key} or {file_key}, not both"),
                ));
            }
            let raw = std::fs::read_to_string(&path)
                .map_err(|e| SectionError::new(file_key, file.tag(), format!("cannot read {}: {e}", path.display())))?;
            table.insert(key.to_owned(), Value::from(raw.trim_end_matches(['\r', '\n']).to_owned()));
        }
        if let Some(v) = table.get(key)
            && v.as_str().is_some_and(str::is_empty)
        {
            return Err(SectionError::new(key, v.tag(), "must not be empty"));
        }
    }
    let config: T = Value::Dict(section.tag(), table).deserialize().map_err(|e| keyed(&e, "", &what, section))?;
    config.check().map_err(|(key, message)| {
        let tag = section.find_ref(key).map_or(section.tag(), Value::tag);
        SectionError::new(key, tag, message)
    })?;
    Ok(config)
}

/// `base_url`: an origin only (`scheme://host[:port]`); the adapter adds the API path.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Origin(String);

impl Origin {
    /// `base_url` when set, else the provider's public origin.
    pub fn or(base_url: Option<&Origin>, public: &str) -> String {
        base_url.map_or(public, |o| o.0.as_str()).trim_end_matches('/').to_owned()
    }
}

impl TryFrom<String> for Origin {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = url::Url::parse(&s).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.host().is_some() && matches!(u.path(), "" | "/")
        });
        if ok { Ok(Origin(s)) } else { Err("must be an origin only, such as https://api.example.com".into()) }
    }
}

impl FromStr for Origin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Origin::try_from(s.to_owned())
    }
}

/// An email sender, `addr` or `Name <addr>`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct EmailSender(String);

impl EmailSender {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EmailSender {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        crate::domain::notification::parse_mailbox(&s)?;
        Ok(EmailSender(s))
    }
}

impl FromStr for EmailSender {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EmailSender::try_from(s.to_owned())
    }
}

/// A string that must say something (an SMTP host, an SMS sender id). An all-digit sender
/// given in the environment arrives as a number; it is taken as its digits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "StringOrNumber")]
pub struct NonEmpty(String);

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    Text(String),
    Number(u64),
}

impl TryFrom<StringOrNumber> for NonEmpty {
    type Error = &'static str;
    fn try_from(v: StringOrNumber) -> Result<Self, &'static str> {
        match v {
            StringOrNumber::Text(s) => NonEmpty::try_from(s),
            StringOrNumber::Number(n) => Ok(NonEmpty(n.to_string())),
        }
    }
}

impl NonEmpty {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NonEmpty {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, &'static str> {
        if s.trim().is_empty() { Err("must not be empty") } else { Ok(NonEmpty(s)) }
    }
}

impl FromStr for NonEmpty {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, &'static str> {
        NonEmpty::try_from(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_keys_are_the_struct_fields() {
        // Every listed key is a field, and every field is listed (a struct with them all set
        // reads, and the defaults differ from what is set).
        let table: Dict = [
            ("timeout_ms", Value::from(7u64)),
            ("max_per_second", Value::from(2.5f64)),
            ("max_in_flight", Value::from(3u64)),
            ("breaker_failures", Value::from(4u64)),
            ("breaker_cooldown_ms", Value::from(9u64)),
            ("allow_private_networks", Value::from(true)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(table.keys().collect::<Vec<_>>().len(), Common::KEYS.len());
        assert!(Common::KEYS.iter().all(|k| table.contains_key(*k)));
        let c: Common = Value::from(table).deserialize().expect("every key is a field");
        assert_eq!((c.timeout_ms, c.max_in_flight, c.breaker_failures), (7, Some(3), 4));
    }

    #[test]
    fn origins_are_origins() {
        assert!("https://api.example.com".parse::<Origin>().is_ok());
        assert!("http://127.0.0.1:8080/".parse::<Origin>().is_ok());
        assert!("https://x.test/v3".parse::<Origin>().is_err());
        assert!("ftp://x.test".parse::<Origin>().is_err());
        assert_eq!(Origin::or(Some(&"http://a.test/".parse().expect("origin")), "https://b.test"), "http://a.test");
        assert_eq!(Origin::or(None, "https://b.test"), "https://b.test");
    }
}
