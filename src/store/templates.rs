//! Template versions, per tenant. A `PUT` adds a version (never changes one); sends and
//! previews read a version by number or the latest.

use std::sync::Arc;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use super::{StoreError, StoreResult};
use crate::domain::TenantId;
use crate::domain::template::{Book, Template, Version};

/// Add a version of `name` (the first creates the template); returns it.
pub async fn put(pool: &PgPool, tenant: TenantId, name: &str, template: &Template) -> StoreResult<Version> {
    let body = serde_json::to_value(template).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut tx = super::begin(pool).await?;
    let version: i32 = sqlx::query_scalar(
        "INSERT INTO templates (tenant_id, name, latest) VALUES ($1, $2, 1)
         ON CONFLICT (tenant_id, name) DO UPDATE SET latest = templates.latest + 1, updated_at = now()
         RETURNING latest",
    )
    .bind(tenant.as_uuid())
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    let created_at = sqlx::query_scalar(
        "INSERT INTO template_versions (tenant_id, name, version, body) VALUES ($1, $2, $3, $4) RETURNING created_at",
    )
    .bind(tenant.as_uuid())
    .bind(name)
    .bind(version)
    .bind(body)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Version { name: name.to_owned(), version, template: template.clone(), created_at })
}

fn version(r: &PgRow) -> StoreResult<Version> {
    let body: serde_json::Value = r.try_get("body")?;
    Ok(Version {
        name: r.try_get("name")?,
        version: r.try_get("version")?,
        template: serde_json::from_value(body).map_err(|e| StoreError::Corrupt(format!("template body: {e}")))?,
        created_at: r.try_get("created_at")?,
    })
}

/// Version `version` of `name`, or its latest.
pub async fn get(
    conn: &mut PgConnection,
    tenant: TenantId,
    name: &str,
    version_no: Option<i32>,
) -> StoreResult<Option<Version>> {
    let row = sqlx::query(
        "SELECT v.name, v.version, v.body, v.created_at FROM templates t
         JOIN template_versions v ON v.tenant_id = t.tenant_id AND v.name = t.name
                                 AND v.version = coalesce($3, t.latest)
         WHERE t.tenant_id = $1 AND t.name = $2",
    )
    .bind(tenant.as_uuid())
    .bind(name)
    .bind(version_no)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(version).transpose()
}

/// The versions a request refers to, in one statement (a batch may name many).
#[tracing::instrument(name = "store.templates.book", skip_all)]
pub async fn book(pool: &PgPool, tenant: TenantId, wanted: &[(String, Option<i32>)]) -> StoreResult<Book> {
    let mut book = Book::default();
    if wanted.is_empty() {
        return Ok(book);
    }
    let rows = sqlx::query(
        "SELECT w.ord, v.name, v.version, v.body, v.created_at
         FROM unnest($2::text[], $3::int[]) WITH ORDINALITY AS w(name, version, ord)
         JOIN templates t ON t.tenant_id = $1 AND t.name = w.name
         JOIN template_versions v ON v.tenant_id = t.tenant_id AND v.name = t.name
                                 AND v.version = coalesce(w.version, t.latest)",
    )
    .bind(tenant.as_uuid())
    .bind(wanted.iter().map(|w| w.0.as_str()).collect::<Vec<_>>())
    .bind(wanted.iter().map(|w| w.1).collect::<Vec<_>>())
    .fetch_all(&mut *super::session(pool).await?)
    .await?;
    for r in &rows {
        let ord: i64 = r.try_get("ord")?;
        let asked = usize::try_from(ord - 1).ok().and_then(|i| wanted.get(i)).cloned();
        if let Some(asked) = asked {
            book.insert(asked, Arc::new(version(r)?));
        }
    }
    Ok(book)
}

/// One template in a list: its latest version.
pub struct TemplateListing {
    pub latest: Version,
    pub first_created_at: time::OffsetDateTime,
}

/// A page of a tenant's templates by name, after `after`.
pub async fn list(
    conn: &mut PgConnection,
    tenant: TenantId,
    after: Option<&str>,
    limit: i64,
) -> StoreResult<Vec<TemplateListing>> {
    let rows = sqlx::query(
        "SELECT v.name, v.version, v.body, v.created_at, t.created_at AS first_created_at FROM templates t
         JOIN template_versions v ON v.tenant_id = t.tenant_id AND v.name = t.name AND v.version = t.latest
         WHERE t.tenant_id = $1 AND ($2::text IS NULL OR t.name > $2)
         ORDER BY t.name LIMIT $3",
    )
    .bind(tenant.as_uuid())
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok(TemplateListing { latest: version(r)?, first_created_at: r.try_get("first_created_at")? }))
        .collect()
}
