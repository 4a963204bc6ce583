//! `[providers.NAME]` sections. One flat struct for every kind keeps the TOML and the
//! `HERALD__PROVIDERS__NAME__KEY` environment form simple; `validate` then checks that each
//! kind has its required keys and no keys of another kind, naming the key at fault.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Secret, invalid};
use crate::domain::Channel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Log,
    Smtp,
    Sendgrid,
    Ses,
    Mailgun,
    Twilio,
    Vonage,
    Fcm,
    Apns,
    WebPush,
    Webhook,
    Chaos,
}

/// APNs environment: which Apple origin to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApnsEnvironment {
    #[default]
    Production,
    Sandbox,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Log => "log",
            ProviderKind::Smtp => "smtp",
            ProviderKind::Sendgrid => "sendgrid",
            ProviderKind::Ses => "ses",
            ProviderKind::Mailgun => "mailgun",
            ProviderKind::Twilio => "twilio",
            ProviderKind::Vonage => "vonage",
            ProviderKind::Fcm => "fcm",
            ProviderKind::Apns => "apns",
            ProviderKind::WebPush => "web_push",
            ProviderKind::Webhook => "webhook",
            ProviderKind::Chaos => "chaos",
        }
    }

    /// Channels this kind of provider can carry.
    pub fn serves(self, channel: Channel) -> bool {
        match self {
            ProviderKind::Log | ProviderKind::Chaos | ProviderKind::Webhook => true,
            ProviderKind::Smtp | ProviderKind::Sendgrid | ProviderKind::Ses | ProviderKind::Mailgun => {
                channel == Channel::Email
            }
            ProviderKind::Twilio | ProviderKind::Vonage => channel == Channel::Sms,
            ProviderKind::Fcm | ProviderKind::Apns | ProviderKind::WebPush => channel == Channel::Push,
        }
    }

    /// The provider's public origin, used when `base_url` is not set.
    pub fn default_origin(self, region: Option<&str>) -> Option<String> {
        match self {
            ProviderKind::Sendgrid => Some("https://api.sendgrid.com".into()),
            ProviderKind::Ses => Some(format!("https://email.{}.amazonaws.com", region.unwrap_or("us-east-1"))),
            ProviderKind::Mailgun => Some("https://api.mailgun.net".into()),
            ProviderKind::Twilio => Some("https://api.twilio.com".into()),
            ProviderKind::Vonage => Some("https://rest.nexmo.com".into()),
            ProviderKind::Fcm => Some("https://fcm.googleapis.com".into()),
            // APNs: chosen by `environment` (see `ProviderSettings::origin`).
            ProviderKind::Apns => Some("https://api.push.apple.com".into()),
            // Web Push: the endpoint comes from each subscription.
            ProviderKind::Log | ProviderKind::Smtp | ProviderKind::Chaos | ProviderKind::WebPush => None,
            // Webhook: `url` is the whole URL.
            ProviderKind::Webhook => None,
        }
    }

    /// Keys this kind requires, and keys it accepts beyond the common ones.
    fn keys(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            ProviderKind::Log => (&[], &["latency_ms"]),
            ProviderKind::Smtp => {
                (&["host", "from"], &["port", "tls", "username", "password", "password_file", "pool_max_size"])
            }
            ProviderKind::Sendgrid => (&["api_key", "from"], &["api_key_file", "base_url", "webhook_public_key"]),
            ProviderKind::Ses => (
                &["region", "access_key_id", "secret_access_key", "from"],
                &[
                    "secret_access_key_file",
                    "session_token",
                    "configuration_set",
                    "base_url",
                    "sns_topic_arns",
                    "sns_cert_hosts",
                ],
            ),
            ProviderKind::Mailgun => (
                &["domain", "api_key", "from"],
                &["api_key_file", "base_url", "webhook_signing_key", "webhook_signing_key_file"],
            ),
            ProviderKind::Twilio => {
                (&["account_sid", "auth_token"], &["auth_token_file", "from", "messaging_service_sid", "base_url"])
            }
            ProviderKind::Vonage => (
                &["api_key", "api_secret", "from"],
                &["api_secret_file", "signature_secret", "signature_secret_file", "signature_method", "base_url"],
            ),
            // One of service_account_file / service_account_json: checked in `validate`.
            ProviderKind::Fcm => (&[], &["service_account_file", "service_account_json", "base_url"]),
            ProviderKind::Apns => (&["team_id", "key_id", "private_key_file", "topic"], &["environment", "base_url"]),
            ProviderKind::WebPush => (&["vapid_private_key", "vapid_subject"], &["vapid_private_key_file"]),
            ProviderKind::Webhook => (&["url", "signing_secret"], &["signing_secret_file"]),
            ProviderKind::Chaos => {
                (&[], &["failure_rate", "error_class", "latency_ms", "latency_jitter_ms", "retry_after_ms", "seed"])
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    None,
    #[default]
    Starttls,
    Tls,
}

/// The failure a `chaos` provider injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChaosClass {
    #[default]
    Transient,
    RateLimited,
    Permanent,
    RecipientInvalid,
}

fn default_timeout_ms() -> u64 {
    15_000
}
fn default_pool() -> u32 {
    10
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown_ms() -> u64 {
    30_000
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    pub kind: ProviderKind,

    // Common to every kind.
    /// HTTP providers: the origin only (`scheme://host[:port]`); the adapter adds the API path.
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Pacing: at most this many sends per second (they wait, never fail).
    #[serde(default)]
    pub max_per_second: Option<f64>,
    /// Pacing: at most this many sends in flight at once.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Circuit breaker: consecutive transient failures that open it.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// Circuit breaker: how long it stays open before one probe is let through.
    #[serde(default = "default_breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
    #[serde(default)]
    pub allow_private_networks: bool,

    // Sender identity.
    #[serde(default)]
    pub from: Option<String>,

    // SMTP.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_pool")]
    pub pool_max_size: u32,

    // SendGrid, Mailgun, Vonage.
    #[serde(default)]
    pub api_key: Option<Secret>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    // Mailgun.
    #[serde(default)]
    pub domain: Option<String>,
    // SES.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub session_token: Option<Secret>,
    #[serde(default)]
    pub configuration_set: Option<String>,
    // Twilio.
    #[serde(default)]
    pub account_sid: Option<String>,
    #[serde(default)]
    pub auth_token: Option<Secret>,
    #[serde(default)]
    pub auth_token_file: Option<PathBuf>,
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    // Vonage.
    #[serde(default)]
    pub api_secret: Option<Secret>,
    #[serde(default)]
    pub api_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub signature_secret: Option<Secret>,
    #[serde(default)]
    pub signature_secret_file: Option<PathBuf>,

    // FCM: Google's service-account JSON, as a file or inline.
    #[serde(default)]
    pub service_account_file: Option<PathBuf>,
    #[serde(default)]
    pub service_account_json: Option<Secret>,
    // APNs (token auth).
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub environment: ApnsEnvironment,
    // Web Push (VAPID).
    #[serde(default)]
    pub vapid_private_key: Option<Secret>,
    #[serde(default)]
    pub vapid_private_key_file: Option<PathBuf>,
    #[serde(default)]
    pub vapid_subject: Option<String>,

    // Webhook: where to POST each message, and the Standard Webhooks secret to sign it with.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub signing_secret: Option<Secret>,
    #[serde(default)]
    pub signing_secret_file: Option<PathBuf>,

    // Receipts.
    /// SendGrid: the Event Webhook verification key (base64 DER, as the settings page shows).
    #[serde(default)]
    pub webhook_public_key: Option<String>,
    /// Mailgun: the HTTP webhook signing key (falls back to `api_key`).
    #[serde(default)]
    pub webhook_signing_key: Option<Secret>,
    #[serde(default)]
    pub webhook_signing_key_file: Option<PathBuf>,
    /// Vonage: how receipts are signed: md5hash (default), md5, sha1, sha256, sha512.
    #[serde(default)]
    pub signature_method: Option<String>,
    /// SES: SNS topics whose messages are accepted.
    #[serde(default)]
    pub sns_topic_arns: Vec<String>,
    /// SES: extra hosts SNS signing certificates may come from (besides sns.<region>.amazonaws.com).
    #[serde(default)]
    pub sns_cert_hosts: Vec<String>,

    // log and chaos.
    #[serde(default)]
    pub latency_ms: u64,
    // chaos.
    #[serde(default)]
    pub failure_rate: f64,
    #[serde(default)]
    pub error_class: ChaosClass,
    #[serde(default)]
    pub latency_jitter_ms: u64,
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    #[serde(default)]
    pub seed: Option<u64>,
}

impl ProviderSettings {
    /// A provider of `kind` with every other key at its default (for code and tests).
    pub fn new(kind: ProviderKind) -> Self {
        ProviderSettings {
            kind,
            base_url: None,
            timeout_ms: default_timeout_ms(),
            max_per_second: None,
            max_in_flight: None,
            breaker_failures: default_breaker_failures(),
            breaker_cooldown_ms: default_breaker_cooldown_ms(),
            allow_private_networks: false,
            from: None,
            host: None,
            port: None,
            tls: SmtpTls::default(),
            username: None,
            password: None,
            password_file: None,
            pool_max_size: default_pool(),
            api_key: None,
            api_key_file: None,
            domain: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            secret_access_key_file: None,
            session_token: None,
            configuration_set: None,
            account_sid: None,
            auth_token: None,
            auth_token_file: None,
            messaging_service_sid: None,
            api_secret: None,
            api_secret_file: None,
            signature_secret: None,
            signature_secret_file: None,
            service_account_file: None,
            service_account_json: None,
            team_id: None,
            key_id: None,
            private_key_file: None,
            topic: None,
            environment: ApnsEnvironment::default(),
            vapid_private_key: None,
            vapid_private_key_file: None,
            vapid_subject: None,
            url: None,
            signing_secret: None,
            signing_secret_file: None,
            webhook_public_key: None,
            webhook_signing_key: None,
            webhook_signing_key_file: None,
            signature_method: None,
            sns_topic_arns: Vec::new(),
            sns_cert_hosts: Vec::new(),
            latency_ms: 0,
            failure_rate: 0.0,
            error_class: ChaosClass::default(),
            latency_jitter_ms: 0,
            retry_after_ms: None,
            seed: None,
        }
    }

    pub fn smtp_port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }

    /// The origin HTTP calls go to: `base_url`, else the provider's public origin.
    pub fn origin(&self) -> String {
        let apns_sandbox = (self.kind == ProviderKind::Apns && self.environment == ApnsEnvironment::Sandbox)
            .then(|| "https://api.sandbox.push.apple.com".to_owned());
        self.base_url
            .clone()
            .or(apns_sandbox)
            .or_else(|| self.kind.default_origin(self.region.as_deref()))
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned()
    }

    /// Which provider-specific keys are set: (key, set?).
    fn set_keys(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("base_url", self.base_url.is_some()),
            ("from", self.from.is_some()),
            ("host", self.host.is_some()),
            ("port", self.port.is_some()),
            ("tls", self.tls != SmtpTls::default()),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
            ("password_file", self.password_file.is_some()),
            ("pool_max_size", self.pool_max_size != default_pool()),
            ("api_key", self.api_key.is_some()),
            ("api_key_file", self.api_key_file.is_some()),
            ("domain", self.domain.is_some()),
            ("region", self.region.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
            ("secret_access_key_file", self.secret_access_key_file.is_some()),
            ("session_token", self.session_token.is_some()),
            ("configuration_set", self.configuration_set.is_some()),
            ("account_sid", self.account_sid.is_some()),
            ("auth_token", self.auth_token.is_some()),
            ("auth_token_file", self.auth_token_file.is_some()),
            ("messaging_service_sid", self.messaging_service_sid.is_some()),
            ("api_secret", self.api_secret.is_some()),
            ("api_secret_file", self.api_secret_file.is_some()),
            ("signature_secret", self.signature_secret.is_some()),
            ("signature_secret_file", self.signature_secret_file.is_some()),
            ("service_account_file", self.service_account_file.is_some()),
            ("service_account_json", self.service_account_json.is_some()),
            ("team_id", self.team_id.is_some()),
            ("key_id", self.key_id.is_some()),
            ("private_key_file", self.private_key_file.is_some()),
            ("topic", self.topic.is_some()),
            ("environment", self.environment != ApnsEnvironment::default()),
            ("vapid_private_key", self.vapid_private_key.is_some()),
            ("vapid_private_key_file", self.vapid_private_key_file.is_some()),
            ("vapid_subject", self.vapid_subject.is_some()),
            ("url", self.url.is_some()),
            ("signing_secret", self.signing_secret.is_some()),
            ("signing_secret_file", self.signing_secret_file.is_some()),
            ("webhook_public_key", self.webhook_public_key.is_some()),
            ("webhook_signing_key", self.webhook_signing_key.is_some()),
            ("webhook_signing_key_file", self.webhook_signing_key_file.is_some()),
            ("signature_method", self.signature_method.is_some()),
            ("sns_topic_arns", !self.sns_topic_arns.is_empty()),
            ("sns_cert_hosts", !self.sns_cert_hosts.is_empty()),
            ("latency_ms", self.latency_ms != 0),
            ("failure_rate", self.failure_rate != 0.0),
            ("error_class", self.error_class != ChaosClass::default()),
            ("latency_jitter_ms", self.latency_jitter_ms != 0),
            ("retry_after_ms", self.retry_after_ms.is_some()),
            ("seed", self.seed.is_some()),
        ]
    }

    /// Replace each `<secret>_file` by the file's content.
    pub(super) fn resolve_secret_files(&mut self, name: &str) -> Result<(), ConfigError> {
        let pairs: [(&str, &mut Option<Secret>, &Option<PathBuf>); 9] = [
            ("signing_secret", &mut self.signing_secret, &self.signing_secret_file),
            ("webhook_signing_key", &mut self.webhook_signing_key, &self.webhook_signing_key_file),
            ("service_account_json", &mut self.service_account_json, &self.service_account_file),
            ("vapid_private_key", &mut self.vapid_private_key, &self.vapid_private_key_file),
            ("password", &mut self.password, &self.password_file),
            ("api_key", &mut self.api_key, &self.api_key_file),
            ("secret_access_key", &mut self.secret_access_key, &self.secret_access_key_file),
            ("auth_token", &mut self.auth_token, &self.auth_token_file),
            ("api_secret", &mut self.api_secret, &self.api_secret_file),
        ];
        for (key, secret, file) in pairs {
            if let Some(path) = file {
                // `service_account_file` is the file form of `service_account_json`.
                let file_key = match key {
                    "service_account_json" => format!("providers.{name}.service_account_file"),
                    _ => format!("providers.{name}.{key}_file"),
                };
                if secret.is_some() {
                    let file = file_key.rsplit('.').next().unwrap_or_default().to_owned();
                    return Err(invalid(file_key, format!("give either {key} or {file}, not both")));
                }
                *secret = Some(super::read_secret(path, &file_key)?);
            }
        }
        if let Some(path) = &self.signature_secret_file {
            let file_key = format!("providers.{name}.signature_secret_file");
            if self.signature_secret.is_some() {
                return Err(invalid(file_key, "give either signature_secret or signature_secret_file, not both"));
            }
            self.signature_secret = Some(super::read_secret(path, &file_key)?);
        }
        Ok(())
    }

    pub(super) fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("providers.{name}.{k}");
        let (required, optional) = self.kind.keys();
        let set = self.set_keys();
        // `X_file` is allowed wherever `X` is.
        let allowed = |k: &str| {
            let base = k.strip_suffix("_file").unwrap_or(k);
            [k, base].iter().any(|x| required.contains(x) || optional.contains(x))
        };
        if let Some((k, _)) = set.iter().find(|(k, s)| *s && !allowed(k)) {
            return Err(invalid(key(k), format!("is not a setting of kind {}", self.kind.as_str())));
        }
        for k in required {
            if !set.iter().any(|(n, s)| n == k && *s) {
                return Err(invalid(key(k), format!("is required for kind {}", self.kind.as_str())));
            }
        }
        if let Some(base) = &self.base_url {
            let ok = url::Url::parse(base)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some() && matches!(u.path(), "" | "/"))
                .unwrap_or(false);
            if !ok {
                return Err(invalid(key("base_url"), "must be an origin only, such as https://api.example.com"));
            }
        }
        if let Some(u) = &self.url {
            let ok = url::Url::parse(u)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(invalid(key("url"), "must be an http(s) URL such as https://gateway.internal/notify"));
            }
        }
        if let Some(s) = &self.signing_secret
            && let Err(e) = crate::domain::webhook::signing_key(s.expose())
        {
            return Err(invalid(key("signing_secret"), e));
        }
        if let Some(from) = &self.from {
            match self.kind {
                // SMS senders are numbers or alphanumeric ids, not mailboxes.
                ProviderKind::Twilio | ProviderKind::Vonage => {
                    if from.trim().is_empty() {
                        return Err(invalid(key("from"), "must not be empty"));
                    }
                }
                _ => {
                    if let Err(e) = crate::domain::notification::parse_mailbox(from) {
                        return Err(invalid(key("from"), e));
                    }
                }
            }
        }
        if self.kind == ProviderKind::Twilio && self.from.is_none() && self.messaging_service_sid.is_none() {
            return Err(invalid(key("from"), "kind twilio needs from or messaging_service_sid"));
        }
        if self.kind == ProviderKind::Fcm && self.service_account_json.is_none() {
            return Err(invalid(
                key("service_account_file"),
                "kind fcm needs service_account_file or service_account_json",
            ));
        }
        if self.kind == ProviderKind::Smtp {
            if self.host.as_deref().is_some_and(|h| h.trim().is_empty()) {
                return Err(invalid(key("host"), "must not be empty"));
            }
            if self.password.is_some() && self.username.is_none() {
                return Err(invalid(key("username"), "is required when a password is set"));
            }
        }
        for (k, secret) in [
            ("password", &self.password),
            ("api_key", &self.api_key),
            ("secret_access_key", &self.secret_access_key),
            ("session_token", &self.session_token),
            ("auth_token", &self.auth_token),
            ("api_secret", &self.api_secret),
            ("signature_secret", &self.signature_secret),
            ("webhook_signing_key", &self.webhook_signing_key),
            ("service_account_json", &self.service_account_json),
            ("vapid_private_key", &self.vapid_private_key),
            ("signing_secret", &self.signing_secret),
        ] {
            if secret.as_ref().is_some_and(Secret::is_empty) {
                // An empty key would make signatures anyone can compute.
                return Err(invalid(key(k), "must not be empty"));
            }
        }
        if let Some(m) = &self.signature_method
            && !["md5hash", "md5", "sha1", "sha256", "sha512"].contains(&m.as_str())
        {
            return Err(invalid(key("signature_method"), "must be md5hash, md5, sha1, sha256 or sha512"));
        }
        // `webhook_public_key` is parsed into its key by the SendGrid provider when it is built.
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(invalid(key("failure_rate"), "must be between 0 and 1"));
        }
        if let Some(r) = self.max_per_second
            && !(r > 0.0 && r.is_finite())
        {
            return Err(invalid(key("max_per_second"), "must be a positive number"));
        }
        if self.max_in_flight == Some(0) {
            return Err(invalid(key("max_in_flight"), "must be at least 1"));
        }
        if self.breaker_failures == 0 {
            return Err(invalid(key("breaker_failures"), "must be at least 1"));
        }
        if self.timeout_ms == 0 {
            return Err(invalid(key("timeout_ms"), "must be at least 1"));
        }
        Ok(())
    }
}
