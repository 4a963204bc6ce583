//! The `chaos` provider: fails a configurable share of sends with a configurable error class,
//! after configurable latency, so that operators can rehearse outages, failover and the
//! circuit breaker without touching a real provider. Successful sends are only logged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tracing::info;

use super::settings::{BuildEnv, Common, Vendor};
use super::{OutboundMessage, Provider, ProviderAccepted, ProviderError};
use crate::domain::Channel;

/// `kind = "chaos"`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The share of sends that fail, 0 to 1.
    #[serde(default)]
    pub failure_rate: f64,
    #[serde(default)]
    pub error_class: ChaosClass,
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub latency_jitter_ms: u64,
    /// The `Retry-After` a `rate_limited` failure carries.
    pub retry_after_ms: Option<u64>,
    /// A seed makes the failures repeatable.
    pub seed: Option<u64>,
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
    /// As if the request was sent and no answer came (a timeout after sending).
    Unknown,
}

impl Vendor for Config {
    const CHANNELS: &'static [Channel] = &Channel::ALL;

    fn check(&self) -> Result<(), (&'static str, String)> {
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(("failure_rate", "must be between 0 and 1".into()));
        }
        Ok(())
    }

    fn build(&self, name: &str, _: &Common, _: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String> {
        Ok(Arc::new(Chaos::new(name, self)))
    }
}

pub struct Chaos {
    name: String,
    failure_rate: f64,
    class: ChaosClass,
    latency: Duration,
    jitter_ms: u64,
    retry_after: Option<Duration>,
    rng: Mutex<StdRng>,
}

impl Chaos {
    fn new(name: &str, cfg: &Config) -> Self {
        let rng = match cfg.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Chaos {
            name: name.to_owned(),
            failure_rate: cfg.failure_rate,
            class: cfg.error_class,
            latency: Duration::from_millis(cfg.latency_ms),
            jitter_ms: cfg.latency_jitter_ms,
            retry_after: cfg.retry_after_ms.map(Duration::from_millis),
            rng: Mutex::new(rng),
        }
    }
}

#[async_trait]
impl Provider for Chaos {
    fn send_timeout(&self, _configured: Duration) -> Duration {
        self.latency + Duration::from_millis(self.jitter_ms) + Duration::from_secs(5)
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError> {
        let (fail, jitter) = {
            let mut rng = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let fail = rng.random::<f64>() < self.failure_rate;
            let jitter = if self.jitter_ms > 0 { rng.random_range(0..=self.jitter_ms) } else { 0 };
            (fail, jitter)
        };
        let delay = self.latency + Duration::from_millis(jitter);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if fail {
            let class = match self.class {
                ChaosClass::Transient => "transient",
                ChaosClass::RateLimited => "rate-limited",
                ChaosClass::Permanent => "permanent",
                ChaosClass::RecipientInvalid => "recipient-invalid",
                ChaosClass::Unknown => "unknown-outcome",
            };
            let what = format!("chaos: injected {class} failure");
            return Err(match self.class {
                ChaosClass::Transient => ProviderError::Transient(what),
                ChaosClass::RateLimited => ProviderError::RateLimited { retry_after: self.retry_after, message: what },
                ChaosClass::Permanent => ProviderError::Permanent(what),
                ChaosClass::RecipientInvalid => ProviderError::RecipientInvalid(what),
                ChaosClass::Unknown => ProviderError::Unknown(what),
            });
        }
        info!(provider = %self.name, notification.id = %msg.id, to = %msg.to.masked(), "chaos provider: sent");
        Ok(ProviderAccepted {
            provider_message_id: Some(format!("chaos-{}-{}", msg.id, msg.attempt)),
            detail: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::recipient::PhoneNumber;
    use crate::domain::{Channel, Content, NotificationId, Recipient};

    #[tokio::test]
    async fn the_failure_rate_and_class_are_honoured() {
        let cfg = Config {
            failure_rate: 0.3,
            error_class: ChaosClass::RateLimited,
            retry_after_ms: Some(1500),
            seed: Some(7),
            ..Config::default()
        };
        let chaos = Chaos::new("c", &cfg);
        let msg = OutboundMessage {
            id: NotificationId::new(),
            channel: Channel::Sms,
            to: Recipient::Sms(PhoneNumber::parse("+14155550100").expect("phone")),
            content: Content::Sms(crate::domain::notification::SmsContent { text: "x".into() }),
            attempt: 1,
            priority: crate::domain::Priority::Normal,
            expires_at: None,
            metadata: serde_json::json!({}),
            tags: Vec::new(),
            traceparent: None,
        };
        let mut failures = 0;
        for _ in 0..1000 {
            if let Err(e) = chaos.send(&msg).await {
                assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
                assert_eq!(e.to_string(), "chaos: injected rate-limited failure");
                failures += 1;
            }
        }
        assert!((220..380).contains(&failures), "{failures} failures of 1000 at rate 0.3");
    }
}
