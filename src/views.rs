//! How a notification looks from outside: the JSON the API returns and status callbacks carry.

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use crate::domain::{Channel, NotificationId, Status};
use crate::store::{EventRecord, NotificationRecord};

/// A notification as the API returns it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "0193a5b2-7c1e-7000-8000-3c2f1e0a9b11", "tenant": "acme", "status": "delivered", "channel": "sms",
    "to": "+14155550100", "content": {"text": "Your code is 123456"}, "priority": "normal", "tags": [],
    "metadata": {}, "callback_url": null, "category": null, "attempts": 1, "provider": "twilio", "provider_message_id": "SM1f0e",
    "error": null, "created_at": "2026-12-01T09:00:00Z", "updated_at": "2026-12-01T09:00:04Z", "send_at": null,
    "expires_at": null, "next_attempt_at": null,
    "events": [
        {"at": "2026-12-01T09:00:00Z", "type": "accepted", "status": "queued"},
        {"at": "2026-12-01T09:00:01Z", "type": "attempt", "status": "sent", "provider": "twilio",
         "detail": {"attempt": 1, "provider_message_id": "SM1f0e"}},
        {"at": "2026-12-01T09:00:04Z", "type": "receipt", "status": "delivered", "provider": "twilio",
         "detail": {"provider_status": "delivered"}}
    ]
}))]
pub struct NotificationView {
    #[schema(value_type = uuid::Uuid)]
    pub id: NotificationId,
    /// The tenant's name (what `herald keys create --tenant` was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub status: Status,
    channel: Channel,
    /// As sent: an address, a number or a push target.
    to: Value,
    content: Value,
    /// When the content was rendered from a template: which one, and the variant used.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::domain::template::TemplateUse>)]
    template: Option<Value>,
    #[schema(value_type = crate::domain::Priority)]
    priority: &'static str,
    tags: Vec<String>,
    metadata: Value,
    callback_url: Option<String>,
    /// What kind of message it is (`newsletter`); null: transactional.
    category: Option<String>,
    attempts: i32,
    provider: Option<String>,
    provider_message_id: Option<String>,
    error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    send_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    next_attempt_at: Option<OffsetDateTime>,
    /// SMS only: how carriers will send and bill the text.
    #[serde(skip_serializing_if = "Option::is_none")]
    sms: Option<crate::domain::sms::Segments>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<EventView>>,
}

/// One event of the timeline.
#[derive(Serialize, utoipa::ToSchema)]
struct EventView {
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    /// `accepted`, `scheduled`, `attempt`, `receipt`, `callback`, `cancelled`, `expired`,
    /// `suppressed`, `rescued`, `retried` or `deferred`.
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<Value>,
}

impl NotificationView {
    pub fn new(r: NotificationRecord, events: Option<Vec<EventRecord>>) -> Self {
        let sms =
            (r.channel == Channel::Sms).then(|| r.content["text"].as_str().map(crate::domain::sms::segments)).flatten();
        NotificationView {
            sms,
            id: r.id,
            tenant: None,
            status: r.status,
            channel: r.channel,
            to: r.to,
            content: r.content,
            template: r.template,
            priority: r.priority.as_str(),
            tags: r.tags,
            metadata: r.metadata,
            callback_url: r.callback_url,
            category: r.category,
            attempts: r.attempts,
            provider: r.provider,
            provider_message_id: r.provider_message_id,
            error: r.last_error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            send_at: r.send_at,
            expires_at: r.expires_at,
            next_attempt_at: r.next_attempt_at,
            events: events.map(|evs| {
                evs.into_iter()
                    .map(|e| EventView {
                        at: e.at,
                        kind: e.kind,
                        status: e.status,
                        provider: e.provider,
                        detail: e.detail,
                    })
                    .collect()
            }),
        }
    }
}
