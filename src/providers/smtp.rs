//! Email over SMTP with lettre: a pooled async transport, TLS by `none` / `starttls` / `tls`.
//! Replies are classified by RFC 5321 and RFC 3463: 4xx is transient, 5xx permanent, and a
//! 5xx with an enhanced `5.1.x` code means the address itself is bad.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use serde_json::json;

use super::settings::{BuildEnv, Common, EmailSender, NonEmpty, Vendor};
use super::{OutboundMessage, Provider, ProviderAccepted, ProviderError};
use crate::domain::{Channel, Content, Recipient};
use crate::secret::Secret;

/// `kind = "smtp"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub host: NonEmpty,
    pub from: EmailSender,
    /// By `tls`: 25 for `none`, 587 for `starttls`, 465 for `tls`.
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    #[serde(default = "default_pool")]
    pub pool_max_size: u32,
}

fn default_pool() -> u32 {
    10
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    None,
    #[default]
    Starttls,
    Tls,
}

impl Config {
    /// A relay at `host` sending as `from`, with every other key at its default.
    pub fn new(host: NonEmpty, from: EmailSender) -> Self {
        Config { host, from, port: None, tls: SmtpTls::default(), username: None, password: None, pool_max_size: 10 }
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }
}

impl Vendor for Config {
    const CHANNELS: &'static [Channel] = &[Channel::Email];
    const SECRETS: &'static [(&'static str, &'static str)] = &[("password", "password_file")];

    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.password.is_some() && self.username.is_none() {
            return Err(("username", "is required when a password is set".into()));
        }
        Ok(())
    }

    fn build(&self, _: &str, common: &Common, _: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String> {
        Ok(Arc::new(SmtpProvider::new(self, common.timeout())?))
    }
}

pub struct SmtpProvider {
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl SmtpProvider {
    fn new(cfg: &Config, timeout: Duration) -> Result<Self, String> {
        let host = cfg.host.as_str();
        let builder = match cfg.tls {
            // Plaintext: only for local relays and test servers.
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(|e| e.to_string())?
            }
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(|e| e.to_string())?,
        };
        let mut builder = builder
            .port(cfg.port())
            .timeout(Some(timeout))
            .pool_config(PoolConfig::new().max_size(cfg.pool_max_size).idle_timeout(Duration::from_secs(60)));
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        let from: Mailbox = cfg.from.as_str().parse().map_err(|e| format!("from: {e}"))?;
        Ok(Self { from, transport: builder.build() })
    }

    fn build(&self, msg: &OutboundMessage) -> Result<(Message, String), ProviderError> {
        let (Recipient::Email(to), Content::Email(content)) = (&msg.to, &msg.content) else {
            return Err(ProviderError::Permanent("smtp carries email only".into()));
        };
        let bad = |what: &str, e: &dyn std::fmt::Display| ProviderError::Permanent(format!("{what}: {e}"));
        let from: Mailbox = match &content.from {
            Some(f) => f.parse().map_err(|e| bad("from", &e))?,
            None => self.from.clone(),
        };
        // Our own Message-ID is the provider message id: SMTP gives no other stable one.
        let message_id = format!("<{}.{}@{}>", msg.id, msg.attempt, from.email.domain());
        let mut builder = Message::builder()
            .from(from)
            .to(Mailbox::new(None, to.as_str().parse().map_err(|e| bad("to", &e))?))
            .subject(content.subject.clone())
            .message_id(Some(message_id.clone()));
        if let Some(r) = &content.reply_to {
            builder = builder.reply_to(r.parse().map_err(|e| bad("reply_to", &e))?);
        }
        let body = match (&content.text, &content.html) {
            (Some(text), Some(html)) => MultiPart::alternative_plain_html(text.clone(), html.clone()),
            (None, Some(html)) => {
                MultiPart::mixed().singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(html.clone()))
            }
            (Some(text), None) => MultiPart::mixed().singlepart(SinglePart::plain(text.clone())),
            (None, None) => return Err(ProviderError::Permanent("email has neither text nor html".into())),
        };
        let mut message = builder.multipart(body).map_err(|e| bad("message", &e))?;
        if let Some(url) = &content.unsubscribe_url {
            // RFC 8058 one-click unsubscribe.
            let headers = message.headers_mut();
            headers
                .insert_raw(HeaderValue::new(HeaderName::new_from_ascii_str("List-Unsubscribe"), format!("<{url}>")));
            headers.insert_raw(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".into(),
            ));
        }
        Ok((message, message_id))
    }
}

#[async_trait]
impl Provider for SmtpProvider {
    fn send_timeout(&self, configured: Duration) -> Duration {
        // Connect, greet, MAIL, RCPT, DATA: several round trips, each bounded by `timeout_ms`.
        configured * 2
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError> {
        let (message, message_id) = self.build(msg)?;
        // The SMTP transaction runs in a task of its own, so that a caller giving up (timeout,
        // shutdown) never drops it half-way: lettre would put that connection back in the pool
        // mid-transaction, and the next message on it would read a stale reply. Left alone, the
        // transaction ends by itself within lettre's per-command timeout.
        let transport = self.transport.clone();
        let sent = tokio::spawn(async move { transport.send(message).await })
            .await
            .map_err(|e| ProviderError::Transient(format!("smtp task failed: {e}")))?;
        match sent {
            Ok(resp) => {
                let reply = resp.message().collect::<Vec<_>>().join(" ");
                let mut detail = serde_json::Map::new();
                detail.insert("smtp_reply".into(), json!(format!("{} {reply}", resp.code())));
                Ok(ProviderAccepted { provider_message_id: Some(message_id), detail })
            }
            Err(e) => Err(classify(&e)),
        }
    }
}

/// Map a lettre error to a class. Reply codes decide when there is one; anything else
/// (connection refused, TLS, timeouts) is a transport problem worth retrying.
pub fn classify(e: &lettre::transport::smtp::Error) -> ProviderError {
    let text = e.to_string();
    match e.status().map(|c| c.to_string()) {
        Some(code) => classify_reply(&code, &text),
        None if e.is_timeout() => ProviderError::Transient(format!("smtp timeout: {text}")),
        None => ProviderError::Transient(format!("smtp connection: {text}")),
    }
}

/// Classify an SMTP reply code (and its text, which carries the RFC 3463 enhanced code).
pub fn classify_reply(code: &str, text: &str) -> ProviderError {
    let msg = format!("smtp {code}: {text}");
    match code {
        // Authentication failures are our configuration, not the message: keep the message
        // and retry while an operator fixes the credentials.
        "530" | "534" | "535" | "538" => ProviderError::Transient(msg),
        c if c.starts_with('4') => ProviderError::Transient(msg),
        "550" | "551" | "553" if text.contains("5.1.") => ProviderError::RecipientInvalid(msg),
        "553" => ProviderError::RecipientInvalid(msg),
        c if c.starts_with('5') => ProviderError::Permanent(msg),
        _ => ProviderError::Transient(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_map_to_classes() {
        let cases = [
            ("421", "4.3.2 shutting down", "transient"),
            ("450", "4.2.1 greylisted", "transient"),
            ("451", "4.3.0 try again later", "transient"),
            ("452", "4.5.3 too many recipients", "transient"),
            ("535", "5.7.8 bad credentials", "transient"),
            ("550", "5.1.1 no such user", "recipient_invalid"),
            ("553", "5.1.3 bad address syntax", "recipient_invalid"),
            ("550", "5.7.1 rejected by policy", "permanent"),
            ("552", "5.3.4 message too big", "permanent"),
            ("554", "5.7.1 spam", "permanent"),
            ("500", "5.5.1 syntax error", "permanent"),
        ];
        for (code, text, class) in cases {
            assert_eq!(classify_reply(code, text).class(), class, "{code} {text}");
        }
    }
}
