//! Suppression lists: recipients a tenant must not send to, per channel, for every category of
//! message or for one (`category`; stored as '' for every category).

use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::StoreResult;
use crate::domain::{Channel, TenantId};

#[derive(Clone, Debug)]
pub struct Suppression {
    pub channel: Channel,
    pub recipient: String,
    /// The one category it blocks; none: every message.
    pub category: Option<String>,
    pub reason: String,
    pub source: String,
    pub created_at: OffsetDateTime,
}

/// Add a recipient to a tenant's suppression list, for every message or for one category
/// (no-op if already there).
pub async fn add(
    conn: &mut PgConnection,
    tenant: TenantId,
    channel: Channel,
    recipient: &str,
    category: Option<&str>,
    reason: &str,
    source: &str,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "INSERT INTO suppressions (tenant_id, channel, recipient, category, reason, source)
         VALUES ($1, $2, $3, $6, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant.as_uuid())
    .bind(channel.as_str())
    .bind(recipient)
    // A reason may quote a provider's answer.
    .bind(super::clean::text(reason).as_ref())
    .bind(source)
    .bind(category.unwrap_or_default())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A suppression's place in a list: (channel, recipient, category).
pub type Position = (String, String, String);

/// A page of a tenant's suppressions, ordered by (channel, recipient, category), after
/// `after`; of one category only when `category` is given.
pub async fn list(
    conn: &mut PgConnection,
    tenant: TenantId,
    channel: Option<Channel>,
    category: Option<&str>,
    after: Option<Position>,
    limit: i64,
) -> StoreResult<Vec<Suppression>> {
    let (after_channel, after_recipient, after_category) = match after {
        Some((c, r, k)) => (Some(c), Some(r), Some(k)),
        None => (None, None, None),
    };
    let rows = sqlx::query(
        "SELECT channel, recipient, category, reason, source, created_at FROM suppressions
         WHERE tenant_id = $1 AND ($2::text IS NULL OR channel = $2)
           AND ($3::text IS NULL OR (channel, recipient, category) > ($3, $4, $6))
           AND ($7::text IS NULL OR category = $7)
         ORDER BY channel, recipient, category
         LIMIT $5",
    )
    .bind(tenant.as_uuid())
    .bind(channel.map(Channel::as_str))
    .bind(after_channel)
    .bind(after_recipient)
    .bind(limit)
    .bind(after_category)
    .bind(category)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let channel: String = r.try_get("channel")?;
            Ok(Suppression {
                channel: Channel::parse(&channel).ok_or_else(|| super::StoreError::Corrupt(channel.clone()))?,
                recipient: r.try_get("recipient")?,
                category: Some(r.try_get::<String, _>("category")?).filter(|c| !c.is_empty()),
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
    category: Option<&str>,
) -> StoreResult<Option<Suppression>> {
    let row: Option<(String, String, OffsetDateTime)> = sqlx::query_as(
        "SELECT reason, source, created_at FROM suppressions
         WHERE tenant_id = $1 AND channel = $2 AND recipient = $3 AND category = $4",
    )
    .bind(tenant.as_uuid())
    .bind(channel.as_str())
    .bind(recipient)
    .bind(category.unwrap_or_default())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(reason, source, created_at)| Suppression {
        channel,
        recipient: recipient.to_owned(),
        category: category.map(str::to_owned),
        reason,
        source,
        created_at,
    }))
}

/// Lift one suppression: of every category, or of `category`.
pub async fn remove(
    conn: &mut PgConnection,
    tenant: TenantId,
    channel: Channel,
    recipient: &str,
    category: Option<&str>,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "DELETE FROM suppressions WHERE tenant_id = $1 AND channel = $2 AND recipient = $3 AND category = $4",
    )
    .bind(tenant.as_uuid())
    .bind(channel.as_str())
    .bind(recipient)
    .bind(category.unwrap_or_default())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
