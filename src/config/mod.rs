//! Settings: the embedded `config/default.toml`, overlaid by an optional file, overlaid by the
//! environment (`HERALD__SECTION__KEY`, plus plain `DATABASE_URL`). `Settings::load` returns
//! settings that have been checked as a whole; every error names the key at fault.
//! Secrets are wrapped in `Secret`, whose `Debug` never shows the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::domain::Channel;
use crate::domain::send_limit::{LimitScope, SendLimit};
use crate::providers::{BuildError, Registry};
pub use crate::providers::{ProviderKind, ProviderSettings};
pub use crate::secret::Secret;

pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
/// What `herald dev` changes (see `Settings::load_dev`).
pub const DEV_TOML: &str = include_str!("../../config/dev.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path} (given with {how}): {message}")]
    File { path: String, how: &'static str, message: String },
    #[error("configuration key `{key}`: {message}")]
    Figment { key: String, message: String },
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub dispatch: DispatchSettings,
    pub channels: ChannelsSettings,
    /// `[providers.NAME]`, each typed by its kind. Read by `from_figment` from figment's
    /// values rather than by serde here, so that errors name the key (see `providers::settings`).
    #[serde(skip)]
    pub providers: BTreeMap<String, ProviderSettings>,
    #[serde(default, rename = "providers")]
    _providers: serde::de::IgnoredAny,
    pub callbacks: CallbackSettings,
    pub receipts: ReceiptSettings,
    pub retention: RetentionSettings,
    pub metrics: MetricsSettings,
    pub limits: LimitSettings,
    pub tracing: TracingSettings,
    pub lambda: LambdaSettings,
    pub log: LogSettings,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    pub public_base_url: String,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    pub key_cache_ms: u64,
    pub group_commit_max_items: usize,
    pub group_commit_linger_us: u64,
    /// A client that has not sent its whole request head within this long is dropped.
    pub header_read_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    pub migrate_on_start: bool,
    pub acquire_timeout_ms: u64,
    /// 0: derived from `dispatch.concurrency` (see `dispatch_pool_size`).
    pub dispatch_max_connections: u32,
    /// The pool that stats, lists and the queue gauges read through, apart from the one that
    /// accepts notifications: reads can never take the connections that accepts need.
    pub read_max_connections: u32,
    /// `url` is a transaction-mode pooler's (PgBouncer `pool_mode = transaction`, Amazon RDS
    /// Proxy): no prepared statement survives a transaction, nor any session state.
    pub transaction_pooler: bool,
    /// A URL to PostgreSQL itself, bypassing the pooler, for `LISTEN` and migrations. Empty:
    /// none (behind a pooler, wake-ups then poll and migrations are not run at start).
    pub direct_url: Secret,
}

impl DatabaseSettings {
    /// The dispatcher's own pool: the claim, batched completions and the odd lookup need a few
    /// connections whatever the concurrency (completions are grouped), a few more for very
    /// wide dispatchers. The `LISTEN` connection is separate from both pools.
    pub fn dispatch_pool_size(&self, concurrency: usize) -> u32 {
        if self.dispatch_max_connections > 0 {
            return self.dispatch_max_connections;
        }
        u32::try_from(4 + concurrency / 32).unwrap_or(u32::MAX).min(16)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchSettings {
    pub concurrency: usize,
    pub batch_size: usize,
    pub lease_secs: u64,
    pub poll_interval_ms: u64,
    pub listen_notify: bool,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub max_attempts: u32,
    pub shutdown_grace_ms: u64,
    pub rescue_interval_ms: u64,
    /// The content (and metadata) a worker holds at once, in bytes: claims stop short of it.
    pub max_held_bytes: u64,
}

impl DispatchSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsSettings {
    pub email: ChannelSettings,
    pub sms: ChannelSettings,
    pub push: ChannelSettings,
}

impl ChannelsSettings {
    pub fn get(&self, channel: Channel) -> &ChannelSettings {
        match channel {
            Channel::Email => &self.email,
            Channel::Sms => &self.sms,
            Channel::Push => &self.push,
        }
    }

    pub fn get_mut(&mut self, channel: Channel) -> &mut ChannelSettings {
        match channel {
            Channel::Email => &mut self.email,
            Channel::Sms => &mut self.sms,
            Channel::Push => &mut self.push,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    #[serde(default)]
    pub providers: Vec<String>,
    /// Overrides `dispatch.max_attempts` for this channel.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// After an attempt whose outcome is unknown (the request may have reached the provider,
    /// no answer came): try again (`retry`, which may send twice) or fail (`fail`). Default:
    /// `fail` for sms, `retry` for email and push.
    #[serde(default)]
    pub on_unknown: Option<OnUnknown>,
    /// SMS: ISO 3166 region national numbers are read in (`GB`); stored numbers are E.164.
    #[serde(default)]
    pub default_region: Option<String>,
    /// SMS: texts of more segments are refused (422).
    #[serde(default)]
    pub max_segments: Option<u32>,
    /// Sends to one recipient (address, number, push target) per `recipient_window_secs`,
    /// per tenant; more are deferred to the next window. 0: no throttle.
    #[serde(default)]
    pub recipient_max: u32,
    #[serde(default = "default_recipient_window_secs")]
    pub recipient_window_secs: u64,
    /// Sends per tenant per minute (UTC) on this channel; more are deferred. 0: no quota.
    #[serde(default)]
    pub tenant_per_minute: u32,
    /// Sends per tenant per day (UTC) on this channel; more are deferred. 0: no quota.
    #[serde(default)]
    pub tenant_per_day: u32,
    /// Email: the most bytes of subject, text and html together (default 524288).
    #[serde(default)]
    pub max_content_bytes: Option<usize>,
    /// Push: the most bytes of title, body and data as JSON (default 4096, the platforms').
    #[serde(default)]
    pub max_payload_bytes: Option<usize>,
    /// SMS: the most characters of text (default 1600).
    #[serde(default)]
    pub max_characters: Option<usize>,
    /// Email: the domains `from` may use (and their subdomains); unset: any. A tenant's own
    /// list (`herald tenants set T --sender-domains`) replaces it.
    #[serde(default)]
    pub sender_domains: Option<Vec<String>>,
}

fn default_recipient_window_secs() -> u64 {
    3600
}

/// The longest recipient window: a month.
const MAX_RECIPIENT_WINDOW_SECS: u64 = 31 * 86_400;

impl ChannelSettings {
    /// The send limits of this channel that are on, as windows counted per tenant.
    pub fn send_limits(&self) -> Vec<SendLimit> {
        [
            (LimitScope::Recipient, self.recipient_max, self.recipient_window_secs),
            (LimitScope::TenantMinute, self.tenant_per_minute, 60),
            (LimitScope::TenantDay, self.tenant_per_day, 86_400),
        ]
        .into_iter()
        .filter(|(_, max, _)| *max > 0)
        .map(|(scope, max, window_secs)| SendLimit { scope, max, window_secs, own: false })
        .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnknown {
    Retry,
    Fail,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackSettings {
    pub signing_secret: Secret,
    pub allow_private_networks: bool,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    /// Callback requests in flight per process: their own budget, never the sends'.
    pub concurrency: usize,
    /// Callback requests in flight per tenant and process: a tenant's hanging receiver holds
    /// no more than this.
    pub per_tenant_concurrency: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptSettings {
    /// Signed receipts older (or newer) than this are refused as replays.
    pub max_age_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    pub notifications_days: u32,
    pub idempotency_hours: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Bearer token `GET /metrics` asks for; empty: none.
    pub token: Secret,
    pub refresh_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// API requests per second per tenant; 0: none.
    pub requests_per_second: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSettings {
    /// OTLP/HTTP traces endpoint; empty: spans are not exported.
    pub otlp_endpoint: String,
    pub service_name: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaSettings {
    pub deadline_margin_ms: u64,
    /// The time a worker invocation drains for when its deadline cannot be right (absent, past
    /// already, or more than 15 minutes ahead: local emulators send such).
    pub fallback_budget_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `--config FILE`, else `HERALD_CONFIG`.
/// The config file, if one was given: with `--config`, else `HERALD_CONFIG`. One that cannot be
/// read or is not TOML is an error naming it and how it was given.
fn config_file(file: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    let (path, how) = match (file, std::env::var_os("HERALD_CONFIG")) {
        (Some(f), _) => (f.to_path_buf(), "--config"),
        (None, Some(f)) => (PathBuf::from(f), "HERALD_CONFIG"),
        (None, None) => return Ok(None),
    };
    let file_error = |message: String| ConfigError::File { path: path.display().to_string(), how, message };
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(e.to_string()))?;
    Figment::from(Toml::string(&text))
        .extract::<figment::value::Dict>()
        .map_err(|e| file_error(format!("not valid TOML: {}", e.kind.to_string().trim())))?;
    Ok(Some(path))
}

/// Where a value came from, for messages: the file's path, or the environment variable.
fn origin(m: &figment::Metadata, path: &[String]) -> String {
    match &m.source {
        Some(figment::Source::File(p)) => p.display().to_string(),
        _ if m.name.contains("HERALD__") => {
            let var: Vec<String> = path.iter().map(|k| k.to_uppercase()).collect();
            format!("the environment variable HERALD__{}", var.join("__"))
        }
        _ if m.name.contains("environment") => "the environment variable DATABASE_URL".to_owned(),
        _ => m.name.replace('`', ""),
    }
}

impl Settings {
    /// Load and check settings. `file` comes from `--config`; `HERALD_CONFIG` is its fallback.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::from_figment(&Self::figment(config_file(file)?.as_deref()))
    }

    pub fn figment(file: Option<&Path>) -> Figment {
        Self::figment_over(Figment::from(Toml::string(DEFAULT_TOML)), file)
    }

    /// `herald dev`'s settings: `config/dev.toml` laid over the defaults, then the usual file
    /// and environment layers, so an overlay can use (or replace) what dev sets up.
    pub fn load_dev(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let base = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(DEV_TOML));
        Self::from_figment(&Self::figment_over(base, config_file(file)?.as_deref()))
    }

    fn figment_over(mut fig: Figment, file: Option<&Path>) -> Figment {
        if let Some(path) = file {
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig
            .merge(Env::raw().only(&["DATABASE_URL"]).map(|_| "database.url".into()))
            .merge(Env::prefixed("HERALD__").split("__"));
        // figment reads `+15005550006` as the number 15005550006, losing the `+` of an E.164
        // sender: such values are kept as the strings they are.
        for (key, value) in std::env::vars() {
            let Some(path) = key.strip_prefix("HERALD__") else { continue };
            let digits = value.strip_prefix('+').unwrap_or_default();
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                let path = path.split("__").collect::<Vec<_>>().join(".").to_lowercase();
                fig = fig.merge(figment::providers::Serialized::default(&path, value));
            }
        }
        fig
    }

    pub fn from_figment(fig: &Figment) -> Result<Settings, ConfigError> {
        let mut s: Settings = fig.extract().map_err(|e| {
            // Name the key the way the docs spell it (a missing or unknown field is the key
            // itself), say what is wrong in plain words, and where the bad value came from.
            let mut path = e.path.clone();
            let field = match &e.kind {
                figment::error::Kind::MissingField(f) => Some(f.to_string()),
                figment::error::Kind::UnknownField(f, _) => Some(f.clone()),
                _ => None,
            };
            if let Some(f) = field
                && path.last() != Some(&f)
            {
                path.push(f);
            }
            let key = path.join(".").to_lowercase();
            let source = e.metadata.as_ref().map(|m| format!(" (from {})", origin(m, &e.path))).unwrap_or_default();
            ConfigError::Figment { key, message: format!("{}{source}", crate::providers::settings::plain(&e.kind)) }
        })?;
        s.providers = Self::providers(fig)?;
        s.validate()?;
        Ok(s)
    }

    /// Every `[providers.NAME]` section, typed by its kind.
    fn providers(fig: &Figment) -> Result<BTreeMap<String, ProviderSettings>, ConfigError> {
        let Ok(value) = fig.find_value("providers") else {
            return Ok(BTreeMap::new());
        };
        let Some(sections) = value.as_dict() else {
            return Err(invalid("providers", "must be a table of [providers.NAME] sections"));
        };
        let mut providers = BTreeMap::new();
        for (name, section) in sections {
            let p = ProviderSettings::parse(section).map_err(|e| {
                let key =
                    if e.key.is_empty() { format!("providers.{name}") } else { format!("providers.{name}.{}", e.key) };
                let source = fig
                    .get_metadata(e.tag)
                    .map(|m| {
                        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
                        format!(" (from {})", origin(m, &path))
                    })
                    .unwrap_or_default();
                invalid(key, format!("{}{source}", e.message))
            })?;
            providers.insert(name.clone(), p);
        }
        Ok(providers)
    }

    /// The providers, built, with each channel's routes.
    pub fn registry(&self) -> Result<Registry, BuildError> {
        Registry::new(&self.providers, |c| self.channels.get(c).providers.clone(), &self.server.public_base_url)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_dispatch()?;
        for channel in Channel::ALL {
            self.validate_channel(channel)?;
        }
        self.validate_callbacks_and_telemetry()
    }

    /// `server.*` and `database.*`.
    fn validate_server(&self) -> Result<(), ConfigError> {
        let srv = &self.server;
        if std::net::ToSocketAddrs::to_socket_addrs(&srv.listen).is_err() {
            return Err(invalid("server.listen", format!("`{}` is not a host:port address", srv.listen)));
        }
        if !srv.public_base_url.is_empty() {
            let ok = url::Url::parse(&srv.public_base_url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(invalid(
                    "server.public_base_url",
                    "must be an http(s) URL such as https://herald.example.com",
                ));
            }
        }
        if srv.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        let direct = self.database.direct_url.expose();
        if !direct.is_empty() && direct.parse::<sqlx::postgres::PgConnectOptions>().is_err() {
            return Err(invalid(
                "database.direct_url",
                "must be a PostgreSQL URL such as postgres://herald@db:5432/herald",
            ));
        }
        if srv.group_commit_max_items == 0 || srv.group_commit_max_items > 10_000 {
            return Err(invalid("server.group_commit_max_items", "must be between 1 and 10000"));
        }
        if srv.group_commit_linger_us > 100_000 {
            return Err(invalid("server.group_commit_linger_us", "must be at most 100000 (0.1 s)"));
        }
        Ok(())
    }

    /// `dispatch.*` and the providers' names.
    fn validate_dispatch(&self) -> Result<(), ConfigError> {
        let d = &self.dispatch;
        for (key, v) in [
            ("dispatch.concurrency", d.concurrency as u64),
            ("dispatch.batch_size", d.batch_size as u64),
            ("dispatch.lease_secs", d.lease_secs),
            ("dispatch.poll_interval_ms", d.poll_interval_ms),
            ("dispatch.retry_base_ms", d.retry_base_ms),
            ("dispatch.max_attempts", u64::from(d.max_attempts)),
            ("dispatch.rescue_interval_ms", d.rescue_interval_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if d.retry_max_ms < d.retry_base_ms {
            return Err(invalid("dispatch.retry_max_ms", "must be at least dispatch.retry_base_ms"));
        }
        for name in self.providers.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(invalid(format!("providers.{name}"), "provider names use letters, digits, '-' and '_'"));
            }
        }
        Ok(())
    }

    /// `channels.{channel}.*`: its providers exist and serve it, and its settings are its own.
    fn validate_channel(&self, channel: Channel) -> Result<(), ConfigError> {
        let ch = self.channels.get(channel);
        for (i, name) in ch.providers.iter().enumerate() {
            let key = format!("channels.{channel}.providers[{i}]");
            match self.providers.get(name) {
                None => {
                    return Err(invalid(key, format!("no provider named `{name}`: add a [providers.{name}] section")));
                }
                Some(p) if !p.kind().serves(channel) => {
                    return Err(invalid(
                        key,
                        format!("provider `{name}` (kind {}) cannot send {channel}", p.kind().as_str()),
                    ));
                }
                Some(_) => {}
            }
        }
        for (set, key, only) in [
            (ch.default_region.is_some(), "default_region", Channel::Sms),
            (ch.max_segments.is_some(), "max_segments", Channel::Sms),
            (ch.max_characters.is_some(), "max_characters", Channel::Sms),
            (ch.max_content_bytes.is_some(), "max_content_bytes", Channel::Email),
            (ch.sender_domains.is_some(), "sender_domains", Channel::Email),
            (ch.max_payload_bytes.is_some(), "max_payload_bytes", Channel::Push),
        ] {
            if set && channel != only {
                return Err(invalid(
                    format!("channels.{channel}.{key}"),
                    format!("is a setting of channels.{only} only"),
                ));
            }
        }
        for (v, key) in [
            (ch.max_characters, "max_characters"),
            (ch.max_content_bytes, "max_content_bytes"),
            (ch.max_payload_bytes, "max_payload_bytes"),
        ] {
            if v == Some(0) {
                return Err(invalid(format!("channels.{channel}.{key}"), "must be at least 1"));
            }
        }
        if let Some(r) = &ch.default_region
            && crate::domain::sms::region(r).is_none()
        {
            return Err(invalid(
                format!("channels.{channel}.default_region"),
                format!("`{r}` is not an ISO 3166 region code such as GB"),
            ));
        }
        if ch.max_segments == Some(0) {
            return Err(invalid(format!("channels.{channel}.max_segments"), "must be at least 1"));
        }
        if !(1..=MAX_RECIPIENT_WINDOW_SECS).contains(&ch.recipient_window_secs) {
            return Err(invalid(
                format!("channels.{channel}.recipient_window_secs"),
                format!("must be between 1 and {MAX_RECIPIENT_WINDOW_SECS} (31 days)"),
            ));
        }
        if ch.max_attempts == Some(0) {
            return Err(invalid(format!("channels.{channel}.max_attempts"), "must be at least 1"));
        }
        Ok(())
    }

    /// `callbacks.*`, `tracing.*`, `metrics.*` and the limits that must not be zero.
    fn validate_callbacks_and_telemetry(&self) -> Result<(), ConfigError> {
        let (srv, d) = (&self.server, &self.dispatch);
        let secret = self.callbacks.signing_secret.expose();
        if !secret.is_empty()
            && let Err(e) = crate::domain::webhook::signing_key(secret)
        {
            return Err(invalid("callbacks.signing_secret", e));
        }
        if !self.tracing.otlp_endpoint.is_empty() {
            let ok = url::Url::parse(&self.tracing.otlp_endpoint)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(invalid(
                    "tracing.otlp_endpoint",
                    "must be an http(s) URL such as http://otel-collector:4318/v1/traces",
                ));
            }
        }
        if self.metrics.refresh_ms < 100 {
            return Err(invalid("metrics.refresh_ms", "must be at least 100"));
        }
        if self.callbacks.max_attempts == 0 {
            return Err(invalid("callbacks.max_attempts", "must be at least 1"));
        }
        for (key, v) in [
            ("callbacks.concurrency", self.callbacks.concurrency as u64),
            ("callbacks.per_tenant_concurrency", self.callbacks.per_tenant_concurrency as u64),
            ("server.header_read_timeout_ms", srv.header_read_timeout_ms),
            ("server.max_connections", srv.max_connections as u64),
            ("database.read_max_connections", u64::from(self.database.read_max_connections)),
            ("dispatch.max_held_bytes", d.max_held_bytes),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if let Some(domains) = &self.channels.email.sender_domains {
            for (i, d) in domains.iter().enumerate() {
                if let Err(e) = crate::domain::content::check_domain(d) {
                    return Err(invalid(format!("channels.email.sender_domains[{i}]"), e));
                }
            }
        }
        Ok(())
    }

    /// `channels.X.on_unknown`, else the channel's default: an SMS sent twice costs money and
    /// annoys, so SMS does not retry blindly; email and push do.
    pub fn on_unknown(&self, channel: Channel) -> OnUnknown {
        self.channels.get(channel).on_unknown.unwrap_or(match channel {
            Channel::Sms => OnUnknown::Fail,
            Channel::Email | Channel::Push => OnUnknown::Retry,
        })
    }

    /// The size caps content is checked against (`channels.X.max_*`, else their defaults).
    pub fn content_caps(&self) -> crate::domain::content::Caps {
        let d = crate::domain::content::Caps::default();
        crate::domain::content::Caps {
            email_bytes: self.channels.email.max_content_bytes.unwrap_or(d.email_bytes),
            push_bytes: self.channels.push.max_payload_bytes.unwrap_or(d.push_bytes),
            sms_characters: self.channels.sms.max_characters.unwrap_or(d.sms_characters),
        }
    }

    pub fn max_attempts(&self, channel: Channel) -> u32 {
        self.channels.get(channel).max_attempts.unwrap_or(self.dispatch.max_attempts)
    }
}

#[cfg(test)]
#[expect(clippy::result_large_err, reason = "figment's Jail closures return figment::Error")]
mod tests;
