//! The `log` provider: writes each message to the log and reports it sent. It is what
//! `herald dev` uses, so that every send is visible without any account anywhere.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tracing::info;

use super::settings::{BuildEnv, Common, Vendor};
use super::{OutboundMessage, Provider, ProviderAccepted, ProviderError};
use crate::domain::{Channel, Content};

/// `kind = "log"`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Wait this long before each send reports back (benchmarks, rehearsals).
    #[serde(default)]
    pub latency_ms: u64,
}

impl Vendor for Config {
    const CHANNELS: &'static [Channel] = &Channel::ALL;

    fn build(&self, name: &str, _: &Common, _: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String> {
        Ok(Arc::new(LogProvider { name: name.to_owned(), latency: Duration::from_millis(self.latency_ms) }))
    }
}

pub struct LogProvider {
    name: String,
    latency: Duration,
}

#[async_trait]
impl Provider for LogProvider {
    fn send_timeout(&self, _configured: Duration) -> Duration {
        self.latency + Duration::from_secs(5)
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        // Showing the content is this provider's purpose; the recipient stays masked. The
        // notification id, attempt and channel are on the dispatch span around this line.
        let summary = match &msg.content {
            Content::Email(e) => match (&e.text, &e.html) {
                (Some(t), _) => format!("subject={:?} text={:?}", e.subject, clip(t)),
                (None, Some(h)) => format!("subject={:?} html={:?}", e.subject, clip(h)),
                (None, None) => format!("subject={:?}", e.subject),
            },
            Content::Sms(s) => format!("text={:?}", clip(&s.text)),
            Content::Push(p) => {
                let body = clip(p.body.as_deref().unwrap_or_default());
                format!("title={:?} body={body:?} data={:?}", p.title.as_deref().unwrap_or_default(), p.data)
            }
        };
        info!(provider = %self.name, to = %msg.to.masked(), "sent: {summary}");
        Ok(ProviderAccepted { provider_message_id: Some(format!("log-{}", msg.id)), detail: Default::default() })
    }
}

/// At most 1,000 characters of a text, for one log line.
fn clip(text: &str) -> String {
    match text.char_indices().nth(1000) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}
