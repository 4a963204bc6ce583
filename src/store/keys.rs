//! Tenants and API keys. A key is shown once, at creation; only its SHA-256 is stored, and
//! requests are authenticated by looking that hash up.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::StoreResult;
use crate::domain::{ApiKeyId, TenantId};

pub const KEY_PREFIX: &str = "hrld_";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Send,
    Read,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        [Scope::Send, Scope::Read, Scope::Admin].into_iter().find(|x| x.as_str() == s.trim())
    }
}

/// Who is calling: the tenant behind a valid, unrevoked key, and what the key may do.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key_id: ApiKeyId,
    pub tenant_id: TenantId,
    pub scopes: Vec<Scope>,
    /// The tenant's name, as `keys create --tenant` gave it.
    pub tenant: String,
    /// The tenant has a callback signing secret of its own.
    pub tenant_signs: bool,
    /// The tenant has a default callback URL.
    pub tenant_callback: bool,
    /// The tenant's own request rate limit (`tenants set --requests-per-second`; 0: none);
    /// `None`: `limits.requests_per_second`.
    pub requests_per_second: Option<u32>,
    /// The email domains the tenant's `from` may use (`tenants set --sender-domains`);
    /// `None`: `channels.email.sender_domains`.
    pub sender_domains: Option<Vec<String>>,
}

impl Caller {
    /// `admin` implies every other scope.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }

    /// The tenant filter for reads: `None` (all tenants) for admins.
    pub fn tenant_filter(&self) -> Option<TenantId> {
        (!self.is_admin()).then_some(self.tenant_id)
    }
}

#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub id: ApiKeyId,
    pub tenant: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Create the tenant if it does not exist; return its id.
pub async fn ensure_tenant(conn: &mut PgConnection, name: &str) -> StoreResult<TenantId> {
    // The no-op update makes RETURNING give the id whether or not the row was new.
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO tenants (id, name) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
         RETURNING id",
    )
    .bind(TenantId::new().as_uuid())
    .bind(name)
    .fetch_one(conn)
    .await?;
    Ok(TenantId::from_uuid(id))
}

/// Create tenant `name` with its own callback signing secret, unless it exists. Returns
/// whether it was created now (an existing tenant keeps its secret, or its lack of one).
pub async fn create_tenant(conn: &mut PgConnection, name: &str, signing_secret: Option<&str>) -> StoreResult<bool> {
    let created: Option<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO tenants (id, name, signing_secret) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING id",
    )
    .bind(TenantId::new().as_uuid())
    .bind(name)
    .bind(signing_secret)
    .fetch_optional(conn)
    .await?;
    Ok(created.is_some())
}

/// Create tenant `name` unless it exists, with a callback signing secret of its own unless
/// `shared_secret` (`callbacks.signing_secret` is set: the operator's choice of one secret for
/// every tenant without its own). Returns the new secret, to show once.
pub async fn create_tenant_for(
    conn: &mut PgConnection,
    name: &str,
    shared_secret: bool,
) -> StoreResult<Option<String>> {
    let secret = (!shared_secret).then(crate::domain::webhook::new_signing_secret);
    let created = create_tenant(conn, name, secret.as_deref()).await?;
    Ok(secret.filter(|_| created))
}

/// A tenant's own callback signing secret, if it has one.
pub async fn tenant_secret(conn: &mut PgConnection, name: &str) -> StoreResult<Option<String>> {
    let secret: Option<Option<String>> = sqlx::query_scalar("SELECT signing_secret FROM tenants WHERE name = $1")
        .bind(name)
        .fetch_optional(conn)
        .await?;
    Ok(secret.flatten())
}

/// The names of these tenants.
pub async fn tenant_names(
    conn: &mut PgConnection,
    ids: &[TenantId],
) -> StoreResult<std::collections::HashMap<TenantId, String>> {
    let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, name FROM tenants WHERE id = ANY($1)")
        .bind(ids.iter().map(super::super::domain::ids::TenantId::as_uuid).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|(id, name)| (TenantId::from_uuid(id), name)).collect())
}

/// A tenant's id by name.
pub async fn tenant_id(conn: &mut PgConnection, name: &str) -> StoreResult<Option<TenantId>> {
    let id: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1").bind(name).fetch_optional(conn).await?;
    Ok(id.map(TenantId::from_uuid))
}

/// What `herald tenants set` changes; `None` (and no quotas) leaves a setting as it is.
#[derive(Clone, Debug, Default)]
pub struct TenantChanges<'a> {
    pub callback_url: Option<&'a str>,
    pub signing_secret: Option<&'a str>,
    pub requests_per_second: Option<u32>,
    /// The tenant's own send quotas by key (`sms.per_day`): a number (0: none), or `None` to
    /// go back to the configured one.
    pub quotas: Vec<(String, Option<u32>)>,
    /// The email domains its `from` may use: `Some(None)` clears its own list (back to
    /// `channels.email.sender_domains`).
    pub sender_domains: Option<Option<Vec<String>>>,
}

/// A tenant after `set_tenant`.
pub struct TenantSet {
    pub id: TenantId,
    /// Its own send quotas as they now are.
    pub own_quotas: serde_json::Value,
    /// Sends its old quotas had deferred that are due again (`tracking::wake_deferred`).
    pub woken: u64,
}

/// Change a tenant's settings (creating the tenant if missing). Sends that its old quotas
/// deferred on a channel whose quota changed are due again at once, so the new one decides.
pub async fn set_tenant(conn: &mut PgConnection, name: &str, changes: &TenantChanges<'_>) -> StoreResult<TenantSet> {
    let id = ensure_tenant(conn, name).await?;
    let set: serde_json::Map<String, serde_json::Value> =
        changes.quotas.iter().filter_map(|(k, n)| n.map(|n| (k.clone(), n.into()))).collect();
    let reset: Vec<&str> = changes.quotas.iter().filter(|(_, n)| n.is_none()).map(|(k, _)| k.as_str()).collect();
    let quotas: serde_json::Value = sqlx::query_scalar(
        "UPDATE tenants SET callback_url = coalesce($2, callback_url), signing_secret = coalesce($3, signing_secret),
                            requests_per_second = coalesce($4, requests_per_second),
                            send_quotas = (send_quotas || $5) - $6::text[],
                            sender_domains = CASE WHEN $7 THEN $8 ELSE sender_domains END
         WHERE id = $1
         RETURNING send_quotas",
    )
    .bind(id.as_uuid())
    .bind(changes.callback_url)
    .bind(changes.signing_secret)
    .bind(changes.requests_per_second.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
    .bind(serde_json::Value::Object(set))
    .bind(reset)
    .bind(changes.sender_domains.is_some())
    .bind(changes.sender_domains.clone().flatten())
    .fetch_one(&mut *conn)
    .await?;
    let channels: Vec<crate::domain::Channel> = changes
        .quotas
        .iter()
        .filter_map(|(k, _)| crate::domain::send_limit::parse_quota_key(k).ok())
        .map(|(c, _)| c)
        .collect();
    let woken = if channels.is_empty() { 0 } else { super::tracking::wake_deferred(conn, id, &channels).await? };
    Ok(TenantSet { id, own_quotas: quotas, woken })
}

/// Create a key for `tenant` (creating the tenant if needed). Returns the key id and the
/// plaintext key, which is never stored.
pub async fn create_key(conn: &mut PgConnection, tenant: &str, scopes: &[Scope]) -> StoreResult<(ApiKeyId, String)> {
    let tenant_id = ensure_tenant(conn, tenant).await?;
    create_key_until(conn, tenant_id, scopes, None).await
}

/// A new key of `tenant_id`'s, refused after `expires_at` when one is given (a dashboard
/// session made by a sign-in link, `store::ops_links`).
pub async fn create_key_until(
    conn: &mut PgConnection,
    tenant_id: TenantId,
    scopes: &[Scope],
    expires_at: Option<OffsetDateTime>,
) -> StoreResult<(ApiKeyId, String)> {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let key = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
    let id = ApiKeyId::new();
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, scopes, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.as_uuid())
    .bind(tenant_id.as_uuid())
    .bind(hash_key(&key))
    .bind(&key[..KEY_PREFIX.len() + 6])
    .bind(&scopes)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok((id, key))
}

pub async fn list_keys(conn: &mut PgConnection, tenant: Option<&str>) -> StoreResult<Vec<KeyInfo>> {
    let rows = sqlx::query(
        "SELECT k.id, t.name, k.prefix, k.scopes, k.created_at, k.revoked_at
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
         WHERE ($1::text IS NULL OR t.name = $1) AND (k.expires_at IS NULL OR k.expires_at > now())
         ORDER BY t.name, k.created_at",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(KeyInfo {
                id: ApiKeyId::from_uuid(r.try_get("id")?),
                tenant: r.try_get("name")?,
                prefix: r.try_get("prefix")?,
                scopes: r.try_get("scopes")?,
                created_at: r.try_get("created_at")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        })
        .collect()
}

/// Revoke a key; `false` when no live key has that id.
pub async fn revoke_key(conn: &mut PgConnection, id: ApiKeyId) -> StoreResult<bool> {
    let done = sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(id.as_uuid())
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Authenticate a presented key. The lookup is by hash, so the comparison an attacker could
/// time is between hashes they cannot steer.
pub async fn authenticate(conn: &mut PgConnection, presented: &str) -> StoreResult<Option<Caller>> {
    let row = sqlx::query(
        "SELECT k.id, k.tenant_id, k.scopes, t.name, t.signing_secret IS NOT NULL AS signs,
                t.callback_url IS NOT NULL AS callback, t.requests_per_second, t.sender_domains
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
         WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())",
    )
    .bind(hash_key(presented))
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let scopes: Vec<String> = r.try_get("scopes")?;
    Ok(Some(Caller {
        key_id: ApiKeyId::from_uuid(r.try_get("id")?),
        tenant_id: TenantId::from_uuid(r.try_get("tenant_id")?),
        scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        tenant: r.try_get("name")?,
        tenant_signs: r.try_get("signs")?,
        tenant_callback: r.try_get("callback")?,
        requests_per_second: r.try_get::<Option<i32>, _>("requests_per_second")?.and_then(|n| u32::try_from(n).ok()),
        sender_domains: r.try_get("sender_domains")?,
    }))
}
