//! Suppression lists: recipients a tenant must not send to, per channel.

use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::StoreResult;
use crate::domain::{Channel, TenantId};

#[derive(Clone, Debug)]
pub struct Suppression {
    pub channel: Channel,
    pub recipient: String,
    pub reason: String,
    pub source: String,
    pub created_at: OffsetDateTime,
}

/// Add a recipient to a tenant's suppression list (no-op if already there).
pub async fn add(
    conn: &mut PgConnection,
    tenant: TenantId,
    channel: Channel,
    recipient: &str,
    reason: &str,
    source: &str,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "INSERT INTO suppressions (tenant_id, channel, recipient, reason, source) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant.as_uuid())
    .bind(channel.as_str())
    .bind(recipient)
    // A reason may quote a provider's answer.
    .bind(super::clean::text(reason).as_ref())
    .bind(source)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A page of a tenant's suppressions, ordered by (channel, recipient), after `after`.
pub async fn list(
    conn: &mut PgConnection,
    tenant: TenantId,
    channel: Option<Channel>,
    after: Option<(String, String)>,
    limit: i64,
) -> StoreResult<Vec<Suppression>> {
    let (after_channel, after_recipient) = after.unzip();
    let rows = sqlx::query(
        "SELECT channel, recipient, reason, source, created_at FROM suppressions
         WHERE tenant_id = $1 AND ($2::text IS NULL OR channel = $2)
           AND ($3::text IS NULL OR (channel, recipient) > ($3, $4))
         ORDER BY channel, recipient
         LIMIT $5",
    )
    .bind(tenant.as_uuid())
    .bind(channel.map(Channel::as_str))
    .bind(after_channel)
    .bind(after_recipient)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let channel: String = r.try_get("channel")?;
            Ok(Suppression {
                channel: Channel::parse(&channel).ok_or_else(|| super::StoreError::Corrupt(channel.clone()))?,
                recipient: r.try_get("recipient")?,
                reason: r.try_get("reason")?,
                source: r.try_get("source")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

pub async fn get(
    conn: &mut PgConnection,
    tenant: TenantId,
    channel: Channel,
    recipient: &str,
) -> StoreResult<Option<Suppression>> {
    let row: Option<(String, String, OffsetDateTime)> = sqlx::query_as(
        "SELECT reason, source, created_at FROM suppressions WHERE tenant_id = $1 AND channel = $2 AND recipient = $3",
    )
    .bind(tenant.as_uuid())
    .bind(channel.as_str())
    .bind(recipient)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(reason, source, created_at)| Suppression {
        channel,
        recipient: recipient.to_owned(),
        reason,
        source,
        created_at,
    }))
}

pub async fn remove(conn: &mut PgConnection, tenant: TenantId, channel: Channel, recipient: &str) -> StoreResult<bool> {
    let done = sqlx::query("DELETE FROM suppressions WHERE tenant_id = $1 AND channel = $2 AND recipient = $3")
        .bind(tenant.as_uuid())
        .bind(channel.as_str())
        .bind(recipient)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}
