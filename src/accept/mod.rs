//! Acceptance: a request body becomes a notification ready to store (`Submission`), the same
//! way for a single POST, a batch's items and tests. The HTTP handlers extract and answer;
//! the rules (`rules`), the idempotency key and request hash (`idempotency`) and the checks
//! below are here, so a new acceptance rule goes here and both routes get it.

pub mod idempotency;
pub mod rules;

use serde_json::Value;
use sqlx::PgPool;

pub use idempotency::{IdempotencyKey, request_hash};
pub use rules::AcceptRules;

use crate::domain::notification::ParseOptions;
use crate::domain::template::Book;
use crate::domain::{FieldError, NewNotification};
use crate::providers::Registry;
use crate::store::StoreResult;
use crate::store::ingest::Submission;
use crate::store::keys::Caller;

/// Validate one notification (a request body, or an item of a batch) into a submission.
pub fn prepare(
    rules: &AcceptRules,
    registry: &Registry,
    caller: &Caller,
    value: &Value,
    key: Option<IdempotencyKey>,
    opts: ParseOptions<'_>,
) -> Result<Submission, Vec<FieldError>> {
    let n = NewNotification::parse(value, opts)?;
    // A callback that cannot be signed would fail on its first attempt, seen only in the
    // timeline: refuse the notification now instead.
    let calls_back = n.callback_url.is_some() || caller.tenant_callback;
    if calls_back && !caller.tenant_signs && !rules.shared_signing_secret {
        let whose = if n.callback_url.is_some() { "this callback_url" } else { "the tenant's default callback URL" };
        return Err(vec![FieldError::new(
            "/callback_url",
            format!(
                "{whose} cannot be signed: tenant `{}` has no callback signing secret and callbacks.signing_secret \
                 is unset; give it one with `herald tenants set {} --rotate-signing-secret`",
                caller.tenant, caller.tenant
            ),
        )]);
    }
    if !registry.can_deliver(n.channel, &n.to) {
        return Err(vec![FieldError::new(
            "/channel",
            format!("no provider in channels.{}.providers can deliver to this recipient", n.channel),
        )]);
    }
    let max_attempts = rules.max_attempts(n.channel);
    let idempotency = key.map(|k| (k.into_string(), request_hash(value)));
    Ok(Submission::new(caller.tenant_id, n, max_attempts, idempotency))
}

/// The template versions `bodies` refer to, looked up together (parsing reads no database).
pub async fn templates_for<'a>(
    pool: &PgPool,
    caller: &Caller,
    bodies: impl Iterator<Item = &'a Value>,
) -> StoreResult<Book> {
    let mut wanted: Vec<(String, Option<i32>)> = bodies.filter_map(crate::domain::template::reference).collect();
    wanted.sort();
    wanted.dedup();
    crate::store::templates::book(pool, caller.tenant_id, &wanted).await
}
