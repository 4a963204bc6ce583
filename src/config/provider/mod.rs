//! `[providers.NAME]` sections. One flat struct for every kind keeps the TOML and the
//! `HERALD__PROVIDERS__NAME__KEY` environment form simple; `validate` then checks that each
//! kind has its required keys and no keys of another kind, naming the key at fault.

use std::path::PathBuf;

use serde::Deserialize;

mod checks;

use super::Secret;
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
}
