//! The `log` provider: writes each message to the log and reports it sent. It is what
//! `herald dev` uses, so that every send is visible without any account anywhere.

use std::time::Duration;

use async_trait::async_trait;
use tracing::info;

use super::{Accepted, OutboundMessage, Provider, ProviderError};
use crate::config::ProviderSettings;
use crate::domain::Content;

pub struct LogProvider {
    name: String,
    latency: Duration,
}

impl LogProvider {
    pub fn new(name: &str, cfg: &ProviderSettings) -> Self {
        Self { name: name.to_owned(), latency: Duration::from_millis(cfg.latency_ms) }
    }
}

#[async_trait]
impl Provider for LogProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn timeout(&self) -> Duration {
        self.latency + Duration::from_secs(5)
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, ProviderError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        // Showing the content is this provider's purpose; the recipient stays masked.
        let summary = match &msg.content {
            Content::Email(e) => format!("subject={:?}", e.subject),
            Content::Sms(s) => format!("text={:?}", s.text),
            Content::Push(p) => format!("title={:?} body={:?}", p.title, p.body),
        };
        info!(
            provider = %self.name,
            notification.id = %msg.id,
            channel = %msg.channel,
            to = %msg.to.masked(),
            attempt = msg.attempt,
            "log provider: {summary}"
        );
        Ok(Accepted { provider_message_id: Some(format!("log-{}", msg.id)), detail: Default::default() })
    }
}
