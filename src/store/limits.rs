//! Limits shared by every replica, counted in PostgreSQL in fixed windows (a burst across a
//! window's edge may see up to twice the limit in one rolling window, the usual price of
//! fixed windows):
//! * API requests per tenant per second: one statement per request, only when a limit applies;
//! * sends per recipient and per tenant (`channels.X.recipient_max`, `tenant_per_minute`,
//!   `tenant_per_day`): one transaction per first attempt, only when a limit applies.

use std::collections::HashMap;

use sqlx::{PgPool, Row};
use time::OffsetDateTime;

use super::StoreResult;
use super::tracking::{Applied, Lease};
use crate::domain::send_limit::{LimitScope, Quotas, SendLimit};
use crate::domain::{Channel, TenantId};

/// Count one request of `tenant` in the current second; the count so far, this one included.
/// The tenant's windows older than a few seconds go in the same statement.
#[tracing::instrument(name = "store.limits.count_request", skip_all)]
pub async fn count_request(pool: &PgPool, tenant: TenantId) -> StoreResult<i64> {
    let mut s = super::session(pool).await?;
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
    .fetch_one(&mut *s)
    .await?;
    s.finish().await?;
    Ok(i64::from(n))
}

/// The tenants that have send quotas of their own (`tenants set --quota`), with them.
pub async fn tenant_quotas(pool: &PgPool) -> StoreResult<HashMap<TenantId, Quotas>> {
    let mut s = super::session(pool).await?;
    let rows = sqlx::query("SELECT id, send_quotas FROM tenants WHERE send_quotas <> '{}'").fetch_all(&mut *s).await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let quotas = Quotas::from_json(&r.try_get::<serde_json::Value, _>("send_quotas")?);
        if !quotas.is_empty() {
            out.insert(TenantId::from_uuid(r.try_get("id")?), quotas);
        }
    }
    Ok(out)
}

/// Over a send limit: the first limit that is full, and when the send may be tried again.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub limit: SendLimit,
    pub until: OffsetDateTime,
}

/// Take a slot in every window `limits` count for this send (`subject` is the recipient key,
/// for throttles), or none and the time to come back. Counting and checking are one statement
/// under the windows' row locks, so replicas sending at once never pass a limit together.
///
/// A full window keeps the count of the sends it turned away: the n-th send over a limit of
/// `max` comes back `(n - 1) / max` windows later, so a backlog is spread over the windows
/// that can take it instead of all returning at the next window's start. The other windows'
/// slots are given back (no send was made).
///
/// The job (`lease`) is marked as counted in the same transaction, so it is never counted
/// again: not when it is put back or rescued before its send, nor when it is retried. A lost
/// lease counts nothing (`Held` is not returned then: the job is someone else's now).
#[tracing::instrument(name = "store.limits.take_send_slot", skip_all)]
pub(crate) async fn take_send_slot(
    pool: &PgPool,
    lease: Lease,
    tenant: TenantId,
    channel: Channel,
    subject: &str,
    limits: &[SendLimit],
) -> StoreResult<SlotOutcome> {
    if limits.is_empty() {
        return Ok(SlotOutcome::Taken);
    }
    let scopes: Vec<&str> = limits.iter().map(|l| l.scope.as_str()).collect();
    let subjects: Vec<&str> =
        limits.iter().map(|l| if l.scope == LimitScope::Recipient { subject } else { "" }).collect();
    let secs: Vec<i64> = limits.iter().map(|l| i64::try_from(l.window_secs).unwrap_or(i64::MAX)).collect();
    let mut tx = super::begin(pool).await?;
    let rows = sqlx::query(
        "WITH w AS (
             SELECT scope, subject, secs, ord,
                    to_timestamp(floor(extract(epoch FROM now()) / secs) * secs) AS window_start
             FROM unnest($3::text[], $4::text[], $5::bigint[]) WITH ORDINALITY AS w(scope, subject, secs, ord)
         )
         INSERT INTO send_windows AS s (scope, tenant_id, channel, subject, window_start, ends_at, sends)
         SELECT scope, $1, $2, subject, window_start, window_start + make_interval(secs => secs), 1
         FROM w ORDER BY ord
         ON CONFLICT (scope, tenant_id, channel, subject, window_start) DO UPDATE SET sends = s.sends + 1
         RETURNING scope, window_start, sends",
    )
    .bind(tenant.as_uuid())
    .bind(channel.as_str())
    .bind(&scopes)
    .bind(&subjects)
    .bind(&secs)
    .fetch_all(&mut *tx)
    .await?;
    let mut held: Option<Held> = None;
    let mut within = Vec::new();
    for r in &rows {
        let scope: String = r.try_get("scope")?;
        let start: OffsetDateTime = r.try_get("window_start")?;
        let sends: i32 = r.try_get("sends")?;
        let Some(limit) = limits.iter().find(|l| l.scope.as_str() == scope) else { continue };
        let max = i64::from(limit.max);
        if i64::from(sends) <= max {
            within.push((scope, start));
            continue;
        }
        let windows_later = (i64::from(sends) - 1) / max;
        let until = start
            + time::Duration::seconds(
                windows_later.saturating_mul(i64::try_from(limit.window_secs).unwrap_or(i64::MAX)),
            );
        if held.as_ref().is_none_or(|h| until > h.until) {
            held = Some(Held { limit: *limit, until });
        }
    }
    if let Some(h) = held {
        // Nothing else to write for the job: it stays uncounted and comes back at `until`.
        if !within.is_empty() {
            give_back(&mut tx, tenant, channel, subject, &within).await?;
        }
        tx.commit().await?;
        return Ok(SlotOutcome::Held(h));
    }
    if super::tracking::slot_taken(&mut tx, lease).await? == Applied::Fenced {
        return Ok(SlotOutcome::Fenced); // rolled back: nothing counted
    }
    tx.commit().await?;
    Ok(SlotOutcome::Taken)
}

/// What `take_send_slot` did.
#[derive(Clone, Debug, PartialEq)]
pub enum SlotOutcome {
    /// Counted in every window: send.
    Taken,
    /// A window is full: come back at `Held::until`.
    Held(Held),
    /// The lease was lost: the job is no longer this worker's.
    Fenced,
}

/// Give back the slots taken in the windows that had room, when another was full.
async fn give_back(
    tx: &mut sqlx::PgConnection,
    tenant: TenantId,
    channel: Channel,
    subject: &str,
    within: &[(String, OffsetDateTime)],
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE send_windows s SET sends = s.sends - 1
             FROM unnest($3::text[], $4::timestamptz[]) AS g(scope, window_start)
             WHERE s.scope = g.scope AND s.tenant_id = $1 AND s.channel = $2
               AND s.subject = CASE WHEN g.scope = 'recipient' THEN $5 ELSE '' END
               AND s.window_start = g.window_start",
    )
    .bind(tenant.as_uuid())
    .bind(channel.as_str())
    .bind(within.iter().map(|w| w.0.as_str()).collect::<Vec<_>>())
    .bind(within.iter().map(|w| w.1).collect::<Vec<_>>())
    .bind(subject)
    .execute(tx)
    .await?;
    Ok(())
}
