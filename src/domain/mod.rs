//! The vocabulary of Herald: ids, channels, recipients, content, the status machine and the
//! retry policy. Nothing here knows about HTTP or SQL; `http` parses requests into these types
//! and `store` persists them.

pub mod channel;
pub mod content;
pub mod ids;
pub mod notification;
pub mod ops_link;
pub mod recipient;
pub mod retry;
pub mod send_limit;
pub mod sms;
pub mod status;
pub mod template;
pub mod tenant;
pub mod trace;
pub mod webhook;

pub use channel::Channel;
pub use ids::{ApiKeyId, NotificationId, TenantId};
pub use notification::{Content, NewNotification, Priority};
pub use recipient::Recipient;
pub use status::Status;

/// One problem found in a request, addressed by a JSON Pointer (RFC 6901) into the request body.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub pointer: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { pointer: pointer.into(), detail: detail.into() }
    }
}
