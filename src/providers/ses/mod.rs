//! Amazon SES v2 `SendEmail`: `POST /v2/email/outbound-emails` (JSON), signed with AWS SigV4
//! (signing name `ses`, although the host is `email.{region}.amazonaws.com`) by the official
//! `aws-sigv4` signer. `200 {"MessageId": …}`; our id travels as the `herald_id` email tag.

pub mod receipts;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::Channel;
use crate::providers::http::{HttpReply, execute, generic};
use crate::providers::settings::{BuildEnv, Common, EmailSender, Origin, Vendor};
use crate::providers::{OutboundMessage, Provider, ProviderAccepted, ProviderError, ReceiptVerifier, email_parts};
use crate::receipts::{Incoming, ReceiptContext, ReceiptError, Verified};
use crate::secret::Secret;

/// `kind = "ses"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub from: EmailSender,
    pub session_token: Option<Secret>,
    pub configuration_set: Option<String>,
    pub base_url: Option<Origin>,
    /// SNS topics whose messages are accepted as receipts.
    #[serde(default)]
    pub sns_topic_arns: Vec<String>,
    /// Extra hosts SNS signing certificates may come from (besides sns.<region>.amazonaws.com).
    #[serde(default)]
    pub sns_cert_hosts: Vec<String>,
}

impl Vendor for Config {
    const CHANNELS: &'static [Channel] = &[Channel::Email];
    const SECRETS: &'static [(&'static str, &'static str)] =
        &[("secret_access_key", "secret_access_key_file"), ("session_token", "session_token_file")];

    fn build(&self, _: &str, common: &Common, env: &BuildEnv<'_>) -> Result<Arc<dyn Provider>, String> {
        Ok(Arc::new(Ses::new(self, common, env.client.clone())?))
    }
}

pub struct Ses {
    client: reqwest::Client,
    url: String,
    region: String,
    access_key_id: String,
    secret_access_key: Secret,
    session_token: Option<Secret>,
    configuration_set: Option<String>,
    from: String,
    timeout: Duration,
    /// Receipts come through SNS: which topics and certificate hosts are accepted.
    sns: receipts::Sns,
    sns_client: reqwest::Client,
}

impl Ses {
    fn new(cfg: &Config, common: &Common, client: reqwest::Client) -> Result<Self, String> {
        let public = format!("https://email.{}.amazonaws.com", cfg.region);
        // SNS certificates and subscription confirmations come from URLs in the messages: the
        // hosts are allow-listed, and no redirect is followed away from them.
        let sns_client = crate::providers::public_net::client(true).map_err(|e| format!("http client: {e}"))?;
        Ok(Ses {
            client,
            sns_client,
            url: format!("{}/v2/email/outbound-emails", Origin::or(cfg.base_url.as_ref(), &public)),
            region: cfg.region.clone(),
            access_key_id: cfg.access_key_id.clone(),
            secret_access_key: cfg.secret_access_key.clone(),
            session_token: cfg.session_token.clone(),
            configuration_set: cfg.configuration_set.clone(),
            from: cfg.from.as_str().to_owned(),
            timeout: common.timeout(),
            sns: receipts::Sns {
                topic_arns: cfg.sns_topic_arns.clone(),
                cert_hosts: cfg.sns_cert_hosts.clone(),
                allow_private_networks: common.allow_private_networks,
            },
        })
    }

    pub fn body(&self, msg: &OutboundMessage) -> Result<Value, ProviderError> {
        let e = email_parts(msg, &self.from)?;
        let mut body_parts = serde_json::Map::new();
        if let Some(t) = e.text {
            body_parts.insert("Text".into(), json!({"Data": t, "Charset": "UTF-8"}));
        }
        if let Some(h) = e.html {
            body_parts.insert("Html".into(), json!({"Data": h, "Charset": "UTF-8"}));
        }
        let mut simple = json!({"Subject": {"Data": e.subject, "Charset": "UTF-8"}, "Body": body_parts});
        if let Some(u) = e.unsubscribe_url {
            simple["Headers"] = json!([
                {"Name": "List-Unsubscribe", "Value": format!("<{u}>")},
                {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}
            ]);
        }
        let mut body = json!({
            "FromEmailAddress": e.from,
            "Destination": {"ToAddresses": [e.to]},
            "Content": {"Simple": simple},
            "EmailTags": [{"Name": "herald_id", "Value": msg.id.to_string()}],
        });
        if let Some(r) = e.reply_to {
            body["ReplyToAddresses"] = json!([r]);
        }
        if let Some(cs) = &self.configuration_set {
            body["ConfigurationSetName"] = json!(cs);
        }
        Ok(body)
    }

    /// The SigV4 headers (`authorization`, `x-amz-date`, and the session token if any) for a
    /// request with these headers and this exact body.
    pub fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        time: SystemTime,
    ) -> Result<Vec<(String, String)>, String> {
        let creds = Credentials::new(
            &self.access_key_id,
            self.secret_access_key.expose(),
            self.session_token.as_ref().map(|t| t.expose().to_owned()),
            None,
            "herald-config",
        );
        let identity = creds.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ses")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let signable = SignableRequest::new(method, url, headers.iter().copied(), SignableBody::Bytes(body))
            .map_err(|e| e.to_string())?;
        let (instructions, _signature) = sign(signable, &params).map_err(|e| e.to_string())?.into_parts();
        Ok(instructions.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }
}

#[async_trait]
impl Provider for Ses {
    async fn send(&self, msg: &OutboundMessage) -> Result<ProviderAccepted, ProviderError> {
        let body = serde_json::to_vec(&self.body(msg)?).map_err(|e| ProviderError::Permanent(e.to_string()))?;
        let content_type = "application/json";
        let signed = self
            .sign("POST", &self.url, &[("content-type", content_type)], &body, SystemTime::now())
            .map_err(|e| ProviderError::Permanent(format!("ses signing: {e}")))?;
        let mut req = self.client.post(&self.url).header("content-type", content_type).body(body).timeout(self.timeout);
        for (k, v) in signed {
            req = req.header(k, v);
        }
        let reply = execute(req).await?;
        if reply.status.is_success() {
            let id = reply.json()["MessageId"].as_str().map(str::to_owned);
            return Ok(ProviderAccepted::with_id(id));
        }
        Err(classify(&reply))
    }

    fn receipts(&self) -> Option<&dyn ReceiptVerifier> {
        Some(self)
    }
}

#[async_trait]
impl ReceiptVerifier for Ses {
    async fn verify(&self, incoming: &Incoming<'_>, ctx: &ReceiptContext<'_>) -> Result<Verified, ReceiptError> {
        receipts::verify(incoming, &self.sns, &self.sns_client, ctx.max_age).await
    }
}

/// The error name: `x-amzn-ErrorType` (`Name:namespace…`), else the body's `__type`/`code`.
fn error_type(reply: &HttpReply) -> String {
    let from_header = reply
        .headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).to_owned());
    let body = reply.json();
    let from_body =
        body["__type"].as_str().or(body["code"].as_str()).map(|t| t.rsplit('#').next().unwrap_or(t).to_owned());
    from_header.or(from_body).unwrap_or_default()
}

/// SES v2 errors (API reference, `SendEmail` errors). SES sends no `Retry-After`.
///
/// | error | class |
/// | --- | --- |
/// | `TooManyRequestsException` (429), `LimitExceededException`, `Throttling` | rate limited |
/// | `MessageRejected`, `BadRequestException` | permanent |
/// | `AccountSuspendedException`, `SendingPausedException`, `MailFromDomainNotVerifiedException`, `NotFoundException` | transient (provider-level: our account or configuration) |
/// | 403 (signature, credentials) | transient (provider-level) |
/// | 5xx | transient |
pub fn classify(reply: &HttpReply) -> ProviderError {
    let kind = error_type(reply);
    let body = reply.json();
    let message = body["message"].as_str().or(body["Message"].as_str()).map_or_else(|| reply.snippet(), str::to_owned);
    let what = format!("ses {} {kind}: {message}", reply.status.as_u16());
    match kind.as_str() {
        "TooManyRequestsException" | "LimitExceededException" | "Throttling" | "ThrottlingException" => {
            ProviderError::RateLimited { retry_after: None, message: what }
        }
        "MessageRejected" | "BadRequestException" => ProviderError::Permanent(what),
        "AccountSuspendedException"
        | "SendingPausedException"
        | "MailFromDomainNotVerifiedException"
        | "NotFoundException" => ProviderError::Transient(what),
        _ => generic(reply.status, reply.retry_after(), what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn reply(status: u16, kind: &str, message: &str) -> HttpReply {
        let mut h = HeaderMap::new();
        if !kind.is_empty() {
            h.insert(
                "x-amzn-errortype",
                HeaderValue::from_str(&format!("{kind}:http://internal.amazon.com/coral/com.amazonaws.sesv2/"))
                    .expect("h"),
            );
        }
        HttpReply {
            status: StatusCode::from_u16(status).expect("status"),
            headers: h,
            body: json!({"message": message}).to_string().into(),
        }
    }

    #[test]
    fn error_table() {
        let rows = [
            (429, "TooManyRequestsException", "Too many requests", "rate_limited"),
            (400, "LimitExceededException", "Maximum sending rate exceeded", "rate_limited"),
            (400, "MessageRejected", "Email address is not verified.", "permanent"),
            (400, "BadRequestException", "Missing final '@domain'", "permanent"),
            (400, "AccountSuspendedException", "suspended", "transient"),
            (400, "SendingPausedException", "paused", "transient"),
            (400, "MailFromDomainNotVerifiedException", "not verified", "transient"),
            (404, "NotFoundException", "Configuration set does not exist", "transient"),
            (403, "", "The request signature we calculated does not match", "transient"),
            (500, "InternalFailure", "", "transient"),
        ];
        for (status, kind, message, class) in rows {
            assert_eq!(classify(&reply(status, kind, message)).class(), class, "{status} {kind}");
        }
        // The body's __type is used when the header is missing.
        let r = HttpReply {
            status: StatusCode::BAD_REQUEST,
            headers: HeaderMap::new(),
            body: r#"{"__type": "com.amazonaws.sesv2#MessageRejected", "message": "x"}"#.into(),
        };
        assert_eq!(classify(&r).class(), "permanent");
    }

    /// AWS's published SigV4 test suite (`get-vanilla`, `post-vanilla`), signed by our call
    /// path with the suite's credentials, region, service and time.
    #[test]
    fn sigv4_matches_the_aws_test_suite() {
        let cfg = Config {
            region: "us-east-1".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            from: "a@example.com".parse().expect("sender"),
            session_token: None,
            configuration_set: None,
            base_url: None,
            sns_topic_arns: Vec::new(),
            sns_cert_hosts: Vec::new(),
        };
        let ses = Ses::new(&cfg, &Common::default(), reqwest::Client::new()).expect("ses");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 20150830T123600Z
        // The suite's service name is `service`; sign through the same aws-sigv4 call with it.
        let sign_as = |method: &str| {
            let creds = Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None, None, "t");
            let identity = creds.into();
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region("us-east-1")
                .name("service")
                .time(time)
                .settings(SigningSettings::default())
                .build()
                .expect("params")
                .into();
            let req = SignableRequest::new(
                method,
                "https://example.amazonaws.com/",
                std::iter::empty(),
                SignableBody::Bytes(b""),
            )
            .expect("signable");
            sign(req, &params).expect("sign").into_parts().1
        };
        assert_eq!(sign_as("GET"), "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
        assert_eq!(sign_as("POST"), "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b");

        // And Herald's own signing path produces the SES credential scope and signed headers.
        let headers = ses
            .sign(
                "POST",
                "https://email.us-east-1.amazonaws.com/v2/email/outbound-emails",
                &[("content-type", "application/json")],
                b"{}",
                time,
            )
            .expect("sign");
        let auth = headers.iter().find(|(k, _)| k == "authorization").expect("authorization").1.clone();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/ses/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="), "{auth}");
        assert!(headers.iter().any(|(k, v)| k == "x-amz-date" && v == "20150830T123600Z"));
    }
}
