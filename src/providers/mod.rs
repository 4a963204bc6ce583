//! Provider adapters and the registry that routes a channel to them. Adapters translate one
//! message into one provider call and classify every failure; only the class decides what the
//! dispatcher does next (retry, fail over, give up), never the error text.
//!
//! Each configured provider is wrapped in a `Route` with its circuit breaker and pacer; a
//! channel's routes are kept in the configured failover order.

pub mod apns;
pub mod chaos;
pub mod fcm;
pub mod http;
pub mod kinds;
pub mod log;
pub mod mailgun;
pub mod public_net;
pub mod resilience;
pub mod sendgrid;
pub mod ses;
pub mod settings;
pub mod smtp;
pub mod twilio;
pub mod vonage;
pub mod web_push;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::domain::{Channel, Content, NotificationId, Priority, Recipient};
use crate::receipts::{Incoming, ReceiptContext, ReceiptError, Verified};
pub use kinds::{ProviderConfig, ProviderKind, ProviderSettings};
use resilience::{Breaker, Pacer};
use time::OffsetDateTime;

/// One message, ready to hand to a provider.
#[derive(Clone, Debug)]
pub struct OutboundMessage {
    pub id: NotificationId,
    pub channel: Channel,
    pub to: Recipient,
    pub content: Content,
    /// 1 for the first attempt. Adapters may use `(id, attempt)` for provider idempotency keys.
    pub attempt: u32,
    pub priority: Priority,
    /// Push adapters map this to the platform's expiry (APNs `apns-expiration`, Web Push `TTL`).
    pub expires_at: Option<OffsetDateTime>,
    /// The caller's `metadata` and `tags`, for providers that pass them on (`webhook`).
    pub metadata: Value,
    pub tags: Vec<String>,
    /// W3C `traceparent` for this call (the notification's trace, a new span), for providers
    /// that take one (`webhook`).
    pub traceparent: Option<String>,
}

/// A provider accepted the message.
#[derive(Clone, Debug, Default)]
pub struct ProviderAccepted {
    pub provider_message_id: Option<String>,
    /// Anything worth keeping in the timeline (e.g. the provider's reply text).
    pub detail: serde_json::Map<String, Value>,
}

impl ProviderAccepted {
    /// Accepted under the provider's message id, with nothing more to keep.
    pub fn with_id(provider_message_id: Option<String>) -> Self {
        ProviderAccepted { provider_message_id, detail: Default::default() }
    }
}

/// Why a send did not go through, by what should happen next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying, on the next provider if there is one: network trouble, timeouts, 5xx,
    /// SMTP 4xx, and provider-level refusals (our credentials or account).
    #[error("{0}")]
    Transient(String),
    /// The provider asked us to slow down, perhaps saying for how long.
    #[error("{message}")]
    RateLimited { retry_after: Option<Duration>, message: String },
    /// Retrying will not help: the request itself is wrong (content, sender, policy).
    #[error("{0}")]
    Permanent(String),
    /// The recipient does not exist or cannot receive this (candidate for suppression).
    #[error("{0}")]
    RecipientInvalid(String),
    /// No answer, but the request may have reached the provider (a timeout after it was sent,
    /// the connection lost before the answer): it may have been sent. Whether to try again
    /// is the channel's `on_unknown` policy (a retry may send twice).
    #[error("{0}")]
    Unknown(String),
}

/// Every `outcome` of an attempt, as metrics label it: `sent`, or the error's `class`.
pub const ATTEMPT_OUTCOMES: [&str; 6] =
    ["sent", "transient", "rate_limited", "permanent", "recipient_invalid", "unknown"];

impl ProviderError {
    pub fn class(&self) -> &'static str {
        match self {
            ProviderError::Transient(_) => "transient",
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Permanent(_) => "permanent",
            ProviderError::RecipientInvalid(_) => "recipient_invalid",
            ProviderError::Unknown(_) => "unknown",
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, ProviderError::Transient(_) | ProviderError::RateLimited { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// What this says about the provider's health, for its circuit breaker.
    pub fn health(&self) -> resilience::Health {
        match self {
            ProviderError::Transient(_) | ProviderError::Unknown(_) => resilience::Health::Failed,
            ProviderError::RateLimited { .. } => resilience::Health::Throttled,
            ProviderError::Permanent(_) | ProviderError::RecipientInvalid(_) => resilience::Health::Answered,
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// The longest one send may take, given `timeout_ms`: by default that; adapters that make
    /// several round trips per send (or wait on purpose) take more. The dispatcher also bounds
    /// it by the lease.
    fn send_timeout(&self, configured: Duration) -> Duration {
        configured
    }
    /// Whether this provider can deliver to this recipient (push providers serve one kind of
    /// token each); email and SMS providers take every recipient of their channel.
    fn accepts(&self, _to: &Recipient) -> bool {
        true
    }
    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError>;
    /// How this provider's receipts (`/webhooks/NAME`) are verified; `None`, the default, when
    /// it sends none. A provider that does may report on a message before its send is recorded.
    fn receipts(&self) -> Option<&dyn ReceiptVerifier> {
        None
    }
}

/// A vendor's receipt check: its own signature scheme over the raw request, then its states
/// mapped to Herald's.
#[async_trait]
pub trait ReceiptVerifier: Send + Sync {
    async fn verify(&self, incoming: &Incoming<'_>, ctx: &ReceiptContext<'_>) -> Result<Verified, ReceiptError>;
}

#[derive(Debug, thiserror::Error)]
#[error("provider `{name}`: {message}")]
pub struct BuildError {
    pub name: String,
    pub message: String,
}

/// A provider with its configured name, send timeout, circuit breaker and pacer.
pub struct Route {
    /// `[providers.NAME]`.
    pub name: String,
    /// The longest one send may take (`Provider::send_timeout` of `timeout_ms`).
    pub timeout: Duration,
    pub provider: Arc<dyn Provider>,
    pub breaker: Breaker,
    pub pacer: Pacer,
}

/// Providers by name, and each channel's routes in failover order.
#[derive(Clone, Default)]
pub struct Registry {
    routes: BTreeMap<&'static str, Vec<Arc<Route>>>,
    by_name: BTreeMap<String, Arc<Route>>,
}

/// One HTTP client for every provider with a fixed origin: shared connection pools, rustls.
/// It follows a redirect only within the origin it was sent to (and at most 5): a provider's
/// answer cannot send Herald, with its credentials, anywhere else.
fn http_client(redirects: reqwest::redirect::Policy) -> Result<reqwest::Client, BuildError> {
    reqwest::Client::builder()
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(redirects)
        .build()
        .map_err(|e| BuildError { name: "http client".into(), message: e.to_string() })
}

fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first().map(url::Url::origin);
        if attempt.previous().len() <= 5 && first.as_ref() == Some(&attempt.url().origin()) {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

impl Registry {
    /// Build every configured provider, and each channel's routes in its order (`routes`:
    /// provider names by channel). `public_base_url` is where receipts reach Herald.
    pub fn new(
        providers: &BTreeMap<String, ProviderSettings>,
        routes: impl Fn(Channel) -> Vec<String>,
        public_base_url: &str,
    ) -> Result<Registry, BuildError> {
        let client = http_client(same_origin_redirects())?;
        let env = settings::BuildEnv { client: &client, public_base_url };
        let mut by_name: BTreeMap<String, Arc<Route>> = BTreeMap::new();
        for (name, cfg) in providers {
            let c = &cfg.common;
            let provider =
                cfg.vendor.build(name, c, &env).map_err(|message| BuildError { name: name.clone(), message })?;
            let route = Route {
                name: name.clone(),
                timeout: provider.send_timeout(c.timeout()),
                provider,
                breaker: Breaker::new(name, c.breaker_failures, Duration::from_millis(c.breaker_cooldown_ms)),
                pacer: Pacer::new(c.max_per_second, c.max_in_flight),
            };
            by_name.insert(name.clone(), Arc::new(route));
        }
        let mut by_channel = BTreeMap::new();
        for channel in Channel::ALL {
            let list = routes(channel).iter().filter_map(|n| by_name.get(n).cloned()).collect();
            by_channel.insert(channel.as_str(), list);
        }
        Ok(Registry { routes: by_channel, by_name })
    }

    /// Every configured route, by name.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_name.values()
    }

    /// The provider configured as `[providers.NAME]`.
    pub fn provider(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.by_name.get(name).map(|r| &r.provider)
    }

    /// Whether any provider of `channel` can deliver to `to` (checked when accepting).
    pub fn can_deliver(&self, channel: Channel, to: &Recipient) -> bool {
        self.route(channel).iter().any(|r| r.provider.accepts(to))
    }

    /// The routes that can deliver to `to` on `channel`, in failover order.
    pub fn candidates(&self, channel: Channel, to: &Recipient) -> Vec<Arc<Route>> {
        self.route(channel).iter().filter(|r| r.provider.accepts(to)).cloned().collect()
    }

    /// How many sends a channel's providers admit within `window` when every one of them is
    /// paced by a rate; `None` when any is unpaced.
    pub fn admits_within(&self, channel: Channel, window: Duration) -> Option<usize> {
        let routes = self.route(channel);
        if routes.is_empty() {
            return None;
        }
        routes.iter().map(|r| r.pacer.admits_within(window)).sum()
    }

    /// How long until any provider of `channel` takes a send again, when none takes one now
    /// (every circuit open); `None` when one would.
    pub fn closed_for(&self, channel: Channel) -> Option<Duration> {
        let routes = self.route(channel);
        if routes.is_empty() {
            return None;
        }
        routes.iter().map(|r| r.breaker.closed_for()).try_fold(Duration::MAX, |soonest, w| w.map(|w| soonest.min(w)))
    }

    /// Every route of a channel (empty when none is configured).
    pub fn route(&self, channel: Channel) -> &[Arc<Route>] {
        self.routes.get(channel.as_str()).map_or(&[], Vec::as_slice)
    }
}

/// The parts of an email every email adapter maps to its own wire format.
pub struct EmailParts<'a> {
    pub to: &'a str,
    /// `addr` or `Name <addr>`: the content's `from`, else the provider's.
    pub from: &'a str,
    pub reply_to: Option<&'a str>,
    pub subject: &'a str,
    pub text: Option<&'a str>,
    pub html: Option<&'a str>,
    pub unsubscribe_url: Option<&'a str>,
}

pub fn email_parts<'a>(msg: &'a OutboundMessage, default_from: &'a str) -> Result<EmailParts<'a>, ProviderError> {
    let (Recipient::Email(to), Content::Email(c)) = (&msg.to, &msg.content) else {
        return Err(ProviderError::Permanent("this provider carries email only".into()));
    };
    Ok(EmailParts {
        to: to.as_str(),
        from: c.from.as_deref().unwrap_or(default_from),
        reply_to: c.reply_to.as_deref(),
        subject: &c.subject,
        text: c.text.as_deref().filter(|t| !t.is_empty()),
        html: c.html.as_deref().filter(|h| !h.is_empty()),
        unsubscribe_url: c.unsubscribe_url.as_deref(),
    })
}

/// (E.164 number, text) of an SMS.
pub fn sms_parts(msg: &OutboundMessage) -> Result<(&str, &str), ProviderError> {
    match (&msg.to, &msg.content) {
        (Recipient::Sms(to), Content::Sms(c)) => Ok((to.as_str(), &c.text)),
        _ => Err(ProviderError::Permanent("this provider carries sms only".into())),
    }
}

/// (title, body, data) of a push notification.
pub fn push_parts(msg: &OutboundMessage) -> Result<&crate::domain::notification::PushContent, ProviderError> {
    match &msg.content {
        Content::Push(p) => Ok(p),
        _ => Err(ProviderError::Permanent("this provider carries push only".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::{ATTEMPT_OUTCOMES, ProviderError};

    /// Every error class is an outcome the metrics register from the start.
    #[test]
    fn every_error_class_is_a_primed_attempt_outcome() {
        let m = || "m".to_owned();
        for e in [
            ProviderError::Transient(m()),
            ProviderError::RateLimited { retry_after: None, message: m() },
            ProviderError::Permanent(m()),
            ProviderError::RecipientInvalid(m()),
            ProviderError::Unknown(m()),
        ] {
            assert!(ATTEMPT_OUTCOMES.contains(&e.class()), "{}", e.class());
        }
    }
}
