//! Provider adapters and the registry that routes a channel to them. Adapters translate one
//! message into one provider call and classify every failure; only the class decides what the
//! dispatcher does next (retry, give up), never the error text.

pub mod log;
pub mod smtp;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::config::{ProviderSettings, Settings};
use crate::domain::{Channel, Content, NotificationId, Recipient};

/// One message, ready to hand to a provider.
#[derive(Clone, Debug)]
pub struct OutboundMessage {
    pub id: NotificationId,
    pub channel: Channel,
    pub to: Recipient,
    pub content: Content,
    /// 1 for the first attempt. Adapters may use `(id, attempt)` for provider idempotency keys.
    pub attempt: u32,
}

/// A provider accepted the message.
#[derive(Clone, Debug, Default)]
pub struct Accepted {
    pub provider_message_id: Option<String>,
    /// Anything worth keeping in the timeline (e.g. the provider's reply text).
    pub detail: serde_json::Map<String, Value>,
}

/// Why a send did not go through, by what should happen next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying: network trouble, timeouts, 5xx, SMTP 4xx.
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
}

impl ProviderError {
    pub fn class(&self) -> &'static str {
        match self {
            ProviderError::Transient(_) => "transient",
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Permanent(_) => "permanent",
            ProviderError::RecipientInvalid(_) => "recipient_invalid",
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
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// The configured name (`[providers.NAME]`).
    fn name(&self) -> &str;
    /// Longest a single send may take; the dispatcher also bounds it by the lease.
    fn timeout(&self) -> Duration;
    async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, ProviderError>;
}

#[derive(Debug, thiserror::Error)]
#[error("provider `{name}`: {message}")]
pub struct BuildError {
    pub name: String,
    pub message: String,
}

/// Providers by name, and each channel's providers in failover order.
#[derive(Clone, Default)]
pub struct Registry {
    by_name: BTreeMap<String, Arc<dyn Provider>>,
    routes: BTreeMap<&'static str, Vec<Arc<dyn Provider>>>,
}

impl Registry {
    pub fn from_settings(settings: &Settings) -> Result<Registry, BuildError> {
        let mut by_name: BTreeMap<String, Arc<dyn Provider>> = BTreeMap::new();
        for (name, p) in &settings.providers {
            let provider: Arc<dyn Provider> = match p {
                ProviderSettings::Log(cfg) => Arc::new(log::LogProvider::new(name, cfg)),
                ProviderSettings::Smtp(cfg) => Arc::new(
                    smtp::SmtpProvider::new(name, cfg).map_err(|message| BuildError { name: name.clone(), message })?,
                ),
            };
            by_name.insert(name.clone(), provider);
        }
        let mut routes = BTreeMap::new();
        for channel in Channel::ALL {
            let list =
                settings.channels.get(channel).providers.iter().filter_map(|n| by_name.get(n).cloned()).collect();
            routes.insert(channel.as_str(), list);
        }
        Ok(Registry { by_name, routes })
    }

    /// The providers for a channel, in failover order (empty when none is configured).
    pub fn route(&self, channel: Channel) -> &[Arc<dyn Provider>] {
        self.routes.get(channel.as_str()).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.by_name.get(name)
    }
}
