//! The request bodies and answers of the API that are not types of their own elsewhere, as
//! schemas for the OpenAPI document (`openapi.rs`): the handlers validate bodies by hand
//! (`NewNotification::parse` reads raw JSON to name every bad field), so these types describe
//! them. A leaf of `http`: handlers name these in their `#[utoipa::path]` attributes.

#![allow(dead_code, reason = "types that describe request bodies; the handlers read the JSON themselves")]

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
pub(super) struct Problem {
    /// `/problems/{kind}`: a page that explains it.
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// The request's path (absent on a batch item's problem: the batch has one).
    instance: Option<String>,
    /// The `x-request-id` of the request, as logged.
    request_id: Option<String>,
    /// For validation problems: what is wrong where.
    errors: Option<Vec<ProblemItem>>,
}

/// One thing wrong with a request: a JSON Pointer into the body, a header, or a parameter.
#[derive(Deserialize, ToSchema)]
pub(super) struct ProblemItem {
    pointer: Option<String>,
    header: Option<String>,
    parameter: Option<String>,
    detail: String,
}

/// Who to send to, by channel: an email address, an E.164 number, or a push target.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(super) enum To {
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
pub(super) struct WebPushSubscription {
    endpoint: String,
    keys: WebPushKeys,
}

#[derive(Deserialize, ToSchema)]
pub(super) struct WebPushKeys {
    p256dh: String,
    auth: String,
}

/// What to send, by channel.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(super) enum ContentRequest {
    Email(EmailContent),
    Sms(SmsContent),
    Push(PushContent),
}

/// Email: a subject and `text` and/or `html`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EmailContent {
    subject: String,
    text: Option<String>,
    html: Option<String>,
    /// `addr` or `Name <addr>`; the provider's `from` when absent.
    from: Option<String>,
    reply_to: Option<String>,
    /// Sent as RFC 8058 one-click `List-Unsubscribe`.
    unsubscribe_url: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SmsContent {
    text: String,
}

/// Push: a title and/or a body, and optional data (a string map).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PushContent {
    title: Option<String>,
    body: Option<String>,
    data: Option<BTreeMap<String, String>>,
}

/// A notification to send.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"channel": "email", "to": "alice@example.com",
    "content": {"subject": "Welcome", "text": "Hi Alice"}, "tags": ["welcome"]}))]
pub(super) struct NotificationRequest {
    channel: Channel,
    to: To,
    /// Exactly one of `content` and `template`.
    content: Option<ContentRequest>,
    template: Option<TemplateRef>,
    /// BCP 47: picks the template's variant (`pt-BR`, else `pt`, else its default).
    locale: Option<String>,
    /// Send no earlier than this.
    #[serde(with = "time::serde::rfc3339::option")]
    send_at: Option<OffsetDateTime>,
    /// Give up (`expired`) if not sent by then.
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    priority: Option<Priority>,
    tags: Option<Vec<String>>,
    metadata: Option<BTreeMap<String, Value>>,
    /// Status callbacks (Standard Webhooks) go here; the tenant's default URL when absent.
    callback_url: Option<String>,
}

/// Content rendered from a stored template.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "welcome", "version": 3, "data": {"first_name": "Alice"}}))]
pub(super) struct TemplateRef {
    name: String,
    /// The latest when absent.
    version: Option<i32>,
    /// The template's variables.
    data: Option<BTreeMap<String, Value>>,
}

/// `POST /v1/templates/{name}/preview`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"data": {"first_name": "Alice"}, "locale": "pt-BR", "channel": "sms"}))]
pub(super) struct PreviewRequest {
    data: Option<BTreeMap<String, Value>>,
    /// BCP 47: the variant to render (with fallback).
    locale: Option<String>,
    /// One channel's part only; every part when absent.
    channel: Option<Channel>,
    /// A version; the latest when absent.
    version: Option<i32>,
}

/// Up to 1,000 notifications; each may carry its own `idempotency_key` (the document's
/// `BatchNotification`: a `NotificationRequest` with that field, made by `openapi::conventions`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    #[schema(min_items = 1, max_items = 1000)]
    notifications: Vec<NotificationRequest>,
}

/// One item's result: its notification, or its problem.
#[derive(Deserialize, ToSchema)]
pub(super) struct BatchItem {
    index: usize,
    id: Option<uuid::Uuid>,
    status: Option<Status>,
    replayed: Option<bool>,
    problem: Option<Problem>,
}

#[derive(Deserialize, ToSchema)]
pub(super) struct BatchResponse {
    results: Vec<BatchItem>,
}

/// `POST /v1/suppressions`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"channel": "sms", "recipient": "+14155550100", "reason": "asked to stop"}))]
pub(super) struct SuppressionRequest {
    channel: Channel,
    recipient: String,
    reason: Option<String>,
}
