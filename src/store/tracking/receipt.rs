//! What receipts do to a notification's status. A receipt speaks about a message a provider
//! accepted, so it moves only statuses from `sent` on, and only where the status machine
//! allows (a late `sent` never undoes `delivered`).
//!
//! A receipt can also come before Herald has recorded the send it is about (Twilio calls back
//! within milliseconds of accepting a message): it then finds its notification still `sending`
//! (it is `held`), or finds none because the provider's message id is not stored yet (it stays
//! unmatched). Recording the send (`complete`) applies such receipts, oldest first.

use std::collections::HashSet;

use serde_json::{Value, json};
use sqlx::{PgConnection, Row};
use std::sync::LazyLock;

use super::{announced, queue_callback};
use crate::domain::{Channel, NotificationId, Status, TenantId};
use crate::store::{StoreResult, suppressions};

/// A notification locked (`FOR UPDATE`) for a receipt, as the receipt needs it.
#[derive(Clone, Debug)]
pub(crate) struct Locked {
    pub(crate) id: NotificationId,
    pub(crate) tenant: TenantId,
    pub(crate) channel: Option<Channel>,
    pub(crate) recipient_key: String,
    pub(crate) status: Option<Status>,
    /// The W3C `traceparent` it was created with.
    pub(crate) traceparent: Option<String>,
}

/// Lock notification `id` for a receipt; `None` if it does not exist.
pub(crate) async fn lock(conn: &mut PgConnection, id: NotificationId) -> StoreResult<Option<Locked>> {
    let row = sqlx::query(
        "SELECT tenant_id, channel, recipient_key, status, traceparent FROM notifications WHERE id = $1 FOR UPDATE",
    )
    .bind(id.as_uuid())
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(Locked {
            id,
            tenant: TenantId::from_uuid(r.try_get("tenant_id")?),
            channel: Channel::parse(r.try_get::<&str, _>("channel")?),
            recipient_key: r.try_get("recipient_key")?,
            status: Status::parse(r.try_get::<&str, _>("status")?),
            traceparent: r.try_get("traceparent")?,
        })
    })
    .transpose()
}

/// Whether a receipt leading to `status` must wait for the send to be recorded: the
/// notification is still queued, being sent or retrying.
pub(crate) fn must_wait(n: &Locked, status: Option<Status>) -> bool {
    status.is_some() && n.status.is_some_and(Status::receipt_waits)
}

/// Record a receipt on a locked notification: a `receipt` event in its timeline and, where the
/// status machine allows, the status it leads to (with its status callback). Returns whether
/// the status changed.
pub(crate) async fn record(
    conn: &mut PgConnection,
    n: &Locked,
    provider: &str,
    status: Option<Status>,
    mut detail: Value,
) -> StoreResult<bool> {
    let target = status.zip(n.status).and_then(|(reported, current)| current.after_receipt(reported));
    if status.is_some() && target.is_none() {
        // Recorded for the record; the status machine keeps the later status.
        detail["status_unchanged"] = json!(true);
    }
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH upd AS (
                 UPDATE notifications SET status = $2, updated_at = now()
                 WHERE id = $1 AND $2::text IS NOT NULL AND status = ANY($3)
                 RETURNING id, tenant_id, status, callback_url
             ), ev AS (
                 INSERT INTO notification_events (notification_id, type, status, provider, detail)
                 SELECT $1, 'receipt', (SELECT status FROM upd), $4, $5
             ){}
             SELECT count(*) FROM upd",
            queue_callback(6)
        )
    });
    let sources = target.map(Status::sources_of).unwrap_or_default();
    let changed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(n.id.as_uuid())
        .bind(target.map(Status::as_str))
        .bind(&sources)
        .bind(provider)
        .bind(&detail)
        .bind(announced())
        .fetch_one(conn)
        .await?;
    Ok(changed > 0)
}

/// A send just recorded, whose early receipts are to be applied.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    pub(crate) notification_id: NotificationId,
    pub(crate) provider: String,
    pub(crate) provider_message_id: Option<String>,
}

/// Apply the receipts that came before these sends were recorded: those held for the
/// notification (whichever provider sent them: a receipt by our id is about this
/// notification), and unmatched ones carrying the provider's message id. Each is taken (linked,
/// no longer held) by a conditional update, so when a receipt races the record of its send,
/// exactly one of the two applies it.
#[tracing::instrument(name = "store.tracking.apply_early", skip_all, fields(sends = sent.len()))]
pub(crate) async fn apply_early(conn: &mut PgConnection, sent: &[Recorded]) -> StoreResult<Early> {
    if sent.is_empty() {
        return Ok(Early::default());
    }
    // Almost always none is waiting, and the receipts that could be are few whatever the size
    // of the inbox: held ones, and unmatched ones from the last hour (an early receipt comes
    // before the record of its send by at most a lease and its retries). One read of those,
    // by two small partial indexes, compared here, costs the same for 1 send or 500 (a lookup
    // per send cost receipt-capable dispatch a quarter of its rate); only when many are
    // waiting does the full match below run for every send.
    const MANY: usize = 1000;
    let waiting: Vec<(Option<uuid::Uuid>, String, Option<String>)> = sqlx::query_as(
        "(SELECT notification_id, provider, provider_message_id FROM receipts WHERE held LIMIT $1)
         UNION ALL
         (SELECT notification_id, provider, provider_message_id FROM receipts
          WHERE notification_id IS NULL AND received_at > now() - interval '1 hour' LIMIT $1)",
    )
    .bind(MANY as i64)
    .fetch_all(&mut *conn)
    .await?;
    if waiting.len() < MANY {
        let ids: HashSet<uuid::Uuid> = sent.iter().map(|s| s.notification_id.as_uuid()).collect();
        let messages: HashSet<(&str, &str)> =
            sent.iter().filter_map(|s| s.provider_message_id.as_deref().map(|m| (s.provider.as_str(), m))).collect();
        let concerned = waiting.iter().any(|(id, provider, pmid)| match (id, pmid) {
            (Some(id), _) => ids.contains(id),
            (None, Some(m)) => messages.contains(&(provider.as_str(), m.as_str())),
            (None, None) => false,
        });
        if !concerned {
            return Ok(Early::default());
        }
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let rows = sqlx::query(
        "WITH input AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) AS i(id, provider, pmid)
         ), held AS (
             UPDATE receipts r SET held = false
             FROM input i WHERE r.notification_id = i.id AND r.held
             RETURNING r.notification_id, r.provider, r.payload, r.received_at, false AS was_unmatched
         ), unmatched AS (
             UPDATE receipts r SET notification_id = i.id
             FROM input i
             WHERE r.notification_id IS NULL AND r.provider = i.provider AND r.provider_message_id = i.pmid
             RETURNING r.notification_id, r.provider, r.payload, r.received_at, true AS was_unmatched
         )
         SELECT * FROM held UNION ALL SELECT * FROM unmatched ORDER BY notification_id, received_at",
    )
    .bind(sent.iter().map(|s| s.notification_id.as_uuid()).collect::<Vec<_>>())
    .bind(sent.iter().map(|s| s.provider.as_str()).collect::<Vec<_>>())
    .bind(sent.iter().map(|s| s.provider_message_id.as_deref()).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Early::default());
    }
    let mut early = Early { applied: rows.len(), changed: 0 };
    // Rows come ordered by notification, so notifications are locked in one order.
    for row in &rows {
        let id = NotificationId::from_uuid(row.try_get("notification_id")?);
        let provider: String = row.try_get("provider")?;
        let payload: Value = row.try_get("payload")?;
        let Some(n) = lock(&mut tx, id).await? else { continue };
        let status = payload["status"].as_str().and_then(Status::parse);
        let mut detail = payload["detail"].clone();
        detail["early"] = json!(true);
        if record(&mut tx, &n, &provider, status, detail).await? {
            early.changed += 1;
        }
        // A held receipt's suppression was added when it came; an unmatched one's tenant was
        // not known until now.
        if row.try_get::<bool, _>("was_unmatched")?
            && let (Some(reason), Some(channel)) = (payload["suppress"].as_str(), n.channel)
        {
            suppressions::add(&mut tx, n.tenant, channel, &n.recipient_key, None, reason, &provider).await?;
        }
    }
    tx.commit().await?;
    Ok(early)
}

/// What `apply_early` did: receipts applied, and how many of them moved a status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Early {
    pub(crate) applied: usize,
    pub(crate) changed: usize,
}
