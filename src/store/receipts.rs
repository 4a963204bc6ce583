//! Applying verified provider receipts: each distinct receipt is recorded once in the inbox,
//! then in the notification's timeline, and moves its status only where the status machine
//! allows (a late `sent` never undoes `delivered`; `delivered` after `bounced` is recorded but
//! does not resurrect); the status write is `tracking::receipt`'s. Receipts that match no
//! notification are kept as unmatched, and receipts that come before their send is recorded
//! are applied when it is.

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool, Row};

use super::tracking::receipt;
use super::{StoreResult, clean};
use crate::domain::{NotificationId, Status};
use crate::receipts::{Receipt, Target};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// Seen before: acknowledged, nothing done.
    Duplicate,
    /// No notification has that id or provider message id.
    Unmatched,
    /// Recorded in the timeline; `changed` when it moved the status.
    /// `traceparent`: the one the notification was created with (as stored), to continue its
    /// trace.
    Recorded { changed: bool, traceparent: Option<String> },
    /// Its notification's send is not recorded yet: kept, and applied when it is.
    Held,
}

/// Bind a signed token to the receipt it came with. `false`: the token was used before with
/// another receipt (a replayed signature carrying forged event data). The same receipt again
/// (a provider's redelivery) is fine: the inbox dedupes it.
pub async fn bind_token(pool: &PgPool, provider: &str, token: &str, dedupe_key: &str) -> StoreResult<bool> {
    let (token, dedupe_key) = (clean::text(token), clean::text(dedupe_key));
    let mut s = super::session(pool).await?;
    let bound: String = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO receipt_tokens (provider, token, dedupe_key) VALUES ($1, $2, $3)
             ON CONFLICT (provider, token) DO NOTHING
             RETURNING dedupe_key
         )
         SELECT dedupe_key FROM ins
         UNION ALL
         SELECT dedupe_key FROM receipt_tokens WHERE provider = $1 AND token = $2 AND NOT EXISTS (SELECT 1 FROM ins)",
    )
    .bind(provider)
    .bind(token.as_ref())
    .bind(dedupe_key.as_ref())
    .fetch_one(&mut *s)
    .await?;
    s.finish().await?;
    Ok(bound == dedupe_key)
}

#[tracing::instrument(name = "store.receipts.apply", skip_all)]
pub async fn apply(pool: &PgPool, provider: &str, r: &Receipt) -> StoreResult<ReceiptOutcome> {
    // What a provider sent (a bounce reason echoing a remote server) may hold a NUL.
    let r = &storable(r);
    let mut tx = super::begin(pool).await?;
    // `suppress` is kept so that a receipt applied later (see `tracking::receipt`) still adds
    // its suppression.
    let payload = json!({"status": r.status.map(Status::as_str), "detail": r.detail, "suppress": r.suppress});
    let inserted = sqlx::query(
        "INSERT INTO receipts (provider, dedupe_key, provider_message_id, provider_status, payload)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(provider)
    .bind(&r.dedupe_key)
    .bind(&r.provider_message_id)
    .bind(&r.provider_status)
    .bind(&payload)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(ReceiptOutcome::Duplicate);
    }
    // Lock the notification so concurrent receipts for it apply one after the other.
    let id = match &r.target {
        Target::Notification(id) => Some(*id),
        Target::ProviderMessageId(pmid) => by_message_id(&mut tx, provider, pmid).await?,
    };
    let locked = match id {
        Some(id) => receipt::lock(&mut tx, id).await?,
        None => None,
    };
    let Some(n) = locked else {
        tx.commit().await?;
        // The send may have been recorded since the lookup: if so, apply the receipt now (it
        // is taken by one of this and the record of the send, never both).
        if let Target::ProviderMessageId(pmid) = &r.target {
            let mut conn = super::session(pool).await?;
            if let Some(id) = by_message_id(&mut conn, provider, pmid).await? {
                let sent = receipt::Recorded {
                    notification_id: id,
                    provider: provider.to_owned(),
                    provider_message_id: Some(pmid.clone()),
                };
                let early = receipt::apply_early(&mut conn, &[sent]).await?;
                conn.finish().await?;
                if early.applied > 0 {
                    return Ok(ReceiptOutcome::Recorded { changed: early.changed > 0, traceparent: None });
                }
            }
        }
        return Ok(ReceiptOutcome::Unmatched);
    };
    // Before its send is recorded, a receipt waits in the inbox, applied by the record.
    let held = receipt::must_wait(&n, r.status);
    sqlx::query("UPDATE receipts SET notification_id = $3, held = $4 WHERE provider = $1 AND dedupe_key = $2")
        .bind(provider)
        .bind(&r.dedupe_key)
        .bind(n.id.as_uuid())
        .bind(held)
        .execute(&mut *tx)
        .await?;
    let changed = if held { false } else { receipt::record(&mut tx, &n, provider, r.status, r.detail.clone()).await? };
    if let (Some(reason), Some(channel)) = (&r.suppress, n.channel) {
        super::suppressions::add(&mut tx, n.tenant, channel, &n.recipient_key, None, reason, provider).await?;
    }
    tx.commit().await?;
    let traceparent = n.traceparent;
    Ok(if held { ReceiptOutcome::Held } else { ReceiptOutcome::Recorded { changed, traceparent } })
}

/// `r` with every text made storable (`clean`).
fn storable(r: &Receipt) -> Receipt {
    let text = |s: &str| clean::text(s).into_owned();
    Receipt {
        dedupe_key: text(&r.dedupe_key),
        target: match &r.target {
            Target::ProviderMessageId(p) => Target::ProviderMessageId(text(p)),
            t @ Target::Notification(_) => t.clone(),
        },
        provider_message_id: r.provider_message_id.as_deref().map(text),
        provider_status: text(&r.provider_status),
        status: r.status,
        suppress: r.suppress.as_deref().map(text),
        detail: clean::json(&r.detail).into_owned(),
        replay_token: r.replay_token.as_deref().map(text),
    }
}

/// Keep a verified receipt that could not be applied (the database refused it as it was),
/// as malformed and unmatched, under a key derived from its own: the rest of its batch is
/// applied and acknowledged, and this one is there to look at until retention.
pub async fn keep_malformed(pool: &PgPool, provider: &str, r: &Receipt, error: &str) -> StoreResult<()> {
    let payload = json!({"malformed": clean::text(error), "provider_status": clean::text(&r.provider_status)});
    let mut s = super::session(pool).await?;
    sqlx::query(
        "INSERT INTO receipts (provider, dedupe_key, provider_status, payload) VALUES ($1, $2, 'malformed', $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(provider)
    .bind(format!("malformed:{}", crate::receipts::hashed_key(&[&r.dedupe_key])))
    .bind(payload)
    .execute(&mut *s)
    .await?;
    s.finish().await?;
    Ok(())
}

/// The notification a provider's message id was recorded for: on the `attempt` event of the
/// send (migration 0016), the latest if an operator's retry sent it again.
async fn by_message_id(conn: &mut PgConnection, provider: &str, pmid: &str) -> StoreResult<Option<NotificationId>> {
    let id: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT notification_id FROM notification_events
         WHERE provider = $1 AND provider_message_id = $2 ORDER BY id DESC LIMIT 1",
    )
    .bind(provider)
    .bind(pmid)
    .fetch_optional(conn)
    .await?;
    Ok(id.map(NotificationId::from_uuid))
}

/// For tests and operators: unmatched receipts kept in the inbox.
pub async fn unmatched(pool: &PgPool, provider: &str) -> StoreResult<Vec<Value>> {
    let mut s = super::session(pool).await?;
    let rows = sqlx::query(
        "SELECT payload FROM receipts WHERE provider = $1 AND notification_id IS NULL ORDER BY received_at",
    )
    .bind(provider)
    .fetch_all(&mut *s)
    .await?;
    rows.iter().map(|r| Ok(r.try_get("payload")?)).collect()
}
