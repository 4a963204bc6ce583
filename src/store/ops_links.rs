//! Sign-in links to the dashboard, and the keys the server signs with (migration 0017). A link
//! is a row; its token (`domain::ops_link`) is checked against the row, and using it marks the
//! row used and makes the browser a short-lived key with the `read` scope, in one transaction.

use rand::RngCore;
use sqlx::{PgConnection, PgPool, Row};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::StoreResult;
use super::keys::{self, Scope};
use crate::domain::TenantId;

/// One link, as stored.
pub struct Link {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub expires_at: OffsetDateTime,
}

/// What a used link gave: a key of the tenant's with the `read` scope, until `expires_at`.
pub struct Session {
    pub tenant: String,
    pub key: String,
    pub expires_at: OffsetDateTime,
}

/// The server's key for `purpose`, made (32 random bytes) the first time any replica asks.
pub async fn signing_key(conn: &mut PgConnection, purpose: &str) -> StoreResult<Vec<u8>> {
    let mut fresh = [0u8; 32];
    rand::rng().fill_bytes(&mut fresh);
    // Inserted or not (another replica may have won), the stored one is the key.
    sqlx::query("INSERT INTO signing_keys (purpose, key) VALUES ($1, $2) ON CONFLICT (purpose) DO NOTHING")
        .bind(purpose)
        .bind(fresh.as_slice())
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_scalar("SELECT key FROM signing_keys WHERE purpose = $1").bind(purpose).fetch_one(conn).await?)
}

/// A new link for tenant `tenant` (by name), good for `ttl`; `None` when there is no such
/// tenant.
pub async fn create(conn: &mut PgConnection, tenant: &str, ttl: Duration) -> StoreResult<Option<Link>> {
    let Some(tenant_id) = keys::tenant_id(conn, tenant).await? else { return Ok(None) };
    let id = Uuid::now_v7();
    let expires_at: OffsetDateTime = sqlx::query_scalar(
        "INSERT INTO ops_links (id, tenant_id, expires_at)
         VALUES ($1, $2, date_trunc('milliseconds', now()) + $3 * interval '1 millisecond')
         RETURNING expires_at",
    )
    .bind(id)
    .bind(tenant_id.as_uuid())
    .bind(ttl.whole_milliseconds() as f64)
    .fetch_one(conn)
    .await?;
    Ok(Some(Link { id, tenant_id, expires_at }))
}

/// Link `id` as stored, used or not.
pub async fn find(conn: &mut PgConnection, id: Uuid) -> StoreResult<Option<Link>> {
    let row =
        sqlx::query("SELECT tenant_id, expires_at FROM ops_links WHERE id = $1").bind(id).fetch_optional(conn).await?;
    row.map(|r| {
        Ok(Link { id, tenant_id: TenantId::from_uuid(r.try_get("tenant_id")?), expires_at: r.try_get("expires_at")? })
    })
    .transpose()
}

/// Use link `id`: if it is unused and unexpired, mark it used and make a key of its tenant's
/// with the `read` scope that lasts `session`; else `None` (and nothing changes). Checked and
/// marked in one statement, so two browsers racing with one link get one session.
pub async fn redeem(pool: &PgPool, id: Uuid, session: Duration) -> StoreResult<Option<Session>> {
    let mut tx = super::begin(pool).await?;
    let tenant: Option<(Uuid, String)> = sqlx::query_as(
        "UPDATE ops_links l SET used_at = now()
         FROM tenants t
         WHERE l.id = $1 AND l.used_at IS NULL AND l.expires_at > now() AND t.id = l.tenant_id
         RETURNING t.id, t.name",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((tenant_id, tenant)) = tenant else { return Ok(None) };
    let expires_at = OffsetDateTime::now_utc() + session;
    let (_, key) =
        keys::create_key_until(&mut tx, TenantId::from_uuid(tenant_id), &[Scope::Read], Some(expires_at)).await?;
    tx.commit().await?;
    Ok(Some(Session { tenant, key, expires_at }))
}
