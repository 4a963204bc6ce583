//! The request bodies and answers of the API that are not types of their own elsewhere, as
//! schemas for the OpenAPI document (`openapi.rs`) and as public types that a Rust client (or
//! an embedder's tests) can build requests with and read answers into: the handlers validate
//! bodies by hand (`NewNotification::parse` reads raw JSON to name every bad field), so these
//! types describe them, and a drift test keeps them to the parsers' fields. A leaf of `http`:
//! handlers name these in their `#[utoipa::path]` attributes.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::{ToResponse, ToSchema};

use crate::domain::{Channel, Priority, Status};

/// An RFC 9457 problem: every error the API answers.
#[derive(Deserialize, ToSchema, ToResponse)]
#[schema(example = json!({"type": "/problems/validation", "title": "Invalid request", "status": 422,
    "detail": "the request has 1 invalid field", "instance": "/v1/notifications",
    "request_id": "0193a5b2-7c1e-7000-8000-3c2f1e0a9b12", "errors": [{"pointer": "/to", "detail": "not an E.164 number"}]}))]
#[response(description = "A problem (RFC 9457), `application/problem+json`", content_type = "application/problem+json")]
pub struct Problem {
    /// `/problems/{kind}`: a page that explains it.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request's path (absent on a batch item's problem: the batch has one).
    pub instance: Option<String>,
    /// The `x-request-id` of the request, as logged.
    pub request_id: Option<String>,
    /// For validation problems: what is wrong where.
    pub errors: Option<Vec<ProblemItem>>,
}

/// One thing wrong with a request: a JSON Pointer into the body, a header, or a parameter.
#[derive(Deserialize, ToSchema)]
pub struct ProblemItem {
    pub pointer: Option<String>,
    pub header: Option<String>,
    pub parameter: Option<String>,
    pub detail: String,
}

/// Who to send to, by channel: an email address, an E.164 number, or a push target.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum To {
    /// `alice@example.com` (email) or `+14155550100` (sms).
    Address(String),
    Fcm {
        fcm: String,
    },
    Apns {
        apns: String,
    },
    WebPush {
        web_push: WebPushSubscription,
    },
}

/// A browser's Push API subscription.
#[derive(Deserialize, ToSchema)]
pub struct WebPushSubscription {
    pub endpoint: String,
    pub keys: WebPushKeys,
}

#[derive(Deserialize, ToSchema)]
pub struct WebPushKeys {
    pub p256dh: String,
    pub auth: String,
}

/// What to send, by channel.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ContentRequest {
    Email(EmailContent),
    Sms(SmsContent),
    Push(PushContent),
}

/// Email: a subject and `text` and/or `html`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailContent {
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    /// `addr` or `Name <addr>`; the provider's `from` when absent.
    pub from: Option<String>,
    pub reply_to: Option<String>,
    /// Sent as RFC 8058 one-click `List-Unsubscribe`.
    pub unsubscribe_url: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmsContent {
    pub text: String,
}

/// Push: a title and/or a body, and optional data (a string map).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushContent {
    pub title: Option<String>,
    pub body: Option<String>,
    pub data: Option<BTreeMap<String, String>>,
}

/// A notification to send.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"channel": "email", "to": "alice@example.com",
    "content": {"subject": "Welcome", "text": "Hi Alice"}, "tags": ["welcome"]}))]
pub struct NotificationRequest {
    pub channel: Channel,
    pub to: To,
    /// Exactly one of `content` and `template`.
    pub content: Option<ContentRequest>,
    pub template: Option<TemplateRef>,
    /// BCP 47: picks the template's variant (`pt-BR`, else `pt`, else its default).
    pub locale: Option<String>,
    /// Send no earlier than this.
    #[serde(with = "time::serde::rfc3339::option")]
    pub send_at: Option<OffsetDateTime>,
    /// Give up (`expired`) if not sent by then.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub priority: Option<Priority>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<BTreeMap<String, Value>>,
    /// Status callbacks (Standard Webhooks) go here; the tenant's default URL when absent.
    pub callback_url: Option<String>,
    /// What kind of message this is (`newsletter`): category suppressions and the hosted
    /// unsubscribe act on it. None: a transactional message, which they never touch.
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$")]
    pub category: Option<String>,
}

/// Content rendered from a stored template.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "welcome", "version": 3, "data": {"first_name": "Alice"}}))]
pub struct TemplateRef {
    pub name: String,
    /// The latest when absent.
    pub version: Option<i32>,
    /// The template's variables.
    pub data: Option<BTreeMap<String, Value>>,
}

/// `POST /v1/templates/{name}/preview`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"data": {"first_name": "Alice"}, "locale": "pt-BR", "channel": "sms"}))]
pub struct PreviewRequest {
    pub data: Option<BTreeMap<String, Value>>,
    /// BCP 47: the variant to render (with fallback).
    pub locale: Option<String>,
    /// One channel's part only; every part when absent.
    pub channel: Option<Channel>,
    /// A version; the latest when absent.
    pub version: Option<i32>,
}

/// Up to 1,000 notifications; each may carry its own `idempotency_key` (the document's
/// `BatchNotification`: a `NotificationRequest` with that field, made by `openapi::conventions`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    #[schema(min_items = 1, max_items = 1000)]
    pub notifications: Vec<NotificationRequest>,
}

/// One item's result: its notification, or its problem.
#[derive(Deserialize, ToSchema)]
pub struct BatchItem {
    pub index: usize,
    pub id: Option<uuid::Uuid>,
    pub status: Option<Status>,
    pub replayed: Option<bool>,
    pub problem: Option<Problem>,
}

#[derive(Deserialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchItem>,
}

/// `POST /v1/suppressions`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"channel": "sms", "recipient": "+14155550100", "reason": "asked to stop"}))]
pub struct SuppressionRequest {
    pub channel: Channel,
    pub recipient: String,
    /// Block only notifications of this category; none: every notification to the recipient.
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$")]
    pub category: Option<String>,
    pub reason: Option<String>,
}
