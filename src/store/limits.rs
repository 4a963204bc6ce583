//! Request rate limits shared by every replica: a counter per tenant per second in
//! PostgreSQL (fixed windows; a burst across a second's edge may see up to twice the limit in
//! one rolling second, the usual price of fixed windows). One statement per request, only
//! when a limit applies.

use sqlx::PgPool;

use super::StoreResult;
use crate::domain::TenantId;

/// Count one request of `tenant` in the current second; the count so far, this one included.
/// The tenant's windows older than a few seconds go in the same statement.
pub async fn count_request(pool: &PgPool, tenant: TenantId) -> StoreResult<i64> {
    let n: i32 = sqlx::query_scalar(
        "WITH gone AS (
             DELETE FROM api_request_windows
             WHERE tenant_id = $1 AND second < date_trunc('second', now()) - interval '5 seconds'
         )
         INSERT INTO api_request_windows (tenant_id, second, requests)
         VALUES ($1, date_trunc('second', now()), 1)
         ON CONFLICT (tenant_id, second) DO UPDATE SET requests = api_request_windows.requests + 1
         RETURNING requests",
    )
    .bind(tenant.as_uuid())
    .fetch_one(pool)
    .await?;
    Ok(i64::from(n))
}
