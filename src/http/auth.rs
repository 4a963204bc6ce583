//! `Authorization: Bearer <key>` → `Caller`. A missing or unknown key is a 401 problem;
//! scopes are checked by the handler (`require`), giving 403. Every `/v1` request passes
//! `limit_requests` first (a middleware), which finds the caller and counts the request in its
//! tenant's limit; the handler's `Caller` is then the one it found.
//!
//! Verified keys are cached in memory for `server.key_cache_ms` (by hash, never the key), so
//! the hot path makes no query for them; revoking a key takes effect on a running server
//! within that time. Unknown keys are not cached: a guessed key costs a lookup, not memory.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::problem::ApiError;
use crate::store::keys::{self, Caller, Scope};

/// The credentials of an `Authorization: Bearer <credentials>` value (the scheme in any case).
pub(super) fn bearer(value: &str) -> Option<&str> {
    match value.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() => Some(key.trim()),
        _ => None,
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("send an API key as `Authorization: Bearer <key>`"))?;
        let value = value.to_str().map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
        let key = bearer(value)
            .ok_or_else(|| ApiError::unauthorized("use the Bearer scheme: `Authorization: Bearer <key>`"))?;
        let hash = keys::hash_key(key);
        let caller = match state.keys.get(&hash) {
            Some(caller) => caller,
            None => {
                let mut conn = crate::store::session(&state.pool).await?;
                let caller = keys::authenticate(&mut conn, key)
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("the API key is unknown or revoked"))?;
                state.keys.put(hash, caller.clone());
                caller
            }
        };
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// Middleware of the keyed routes: the caller (401 without a valid key), and the request
/// counted in its tenant's limit (429 past it), before the handler runs.
pub(super) async fn limit_requests(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let caller = Caller::from_request_parts(&mut parts, &state).await?;
    count_request(&state, &caller).await?;
    Ok(next.run(Request::from_parts(parts, body)).await)
}

/// The tenant's request limit, when one applies: its own, else `limits.requests_per_second`.
async fn count_request(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let limit = caller.requests_per_second.unwrap_or(state.settings.limits.requests_per_second);
    if limit == 0 {
        return Ok(());
    }
    let count = crate::store::limits::count_request(&state.pool, caller.tenant_id).await?;
    if count > i64::from(limit) {
        let mut e = ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!("tenant {} may make {limit} requests a second; try again in a second", caller.tenant),
        );
        e.headers.push((header::RETRY_AFTER, axum::http::HeaderValue::from_static("1")));
        return Err(e);
    }
    Ok(())
}

/// Recently verified keys, by SHA-256.
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Vec<u8>, (Caller, Instant)>>,
}

/// More distinct live keys than this in one TTL is unusual; past it the cache starts afresh.
const MAX_CACHED_KEYS: usize = 10_000;

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        KeyCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn get(&self, hash: &[u8]) -> Option<Caller> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(hash).filter(|(_, at)| at.elapsed() < self.ttl).map(|(c, _)| c.clone())
    }

    fn put(&self, hash: Vec<u8>, caller: Caller) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHED_KEYS {
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if entries.len() >= MAX_CACHED_KEYS {
                entries.clear();
            }
        }
        entries.insert(hash, (caller, Instant::now()));
    }
}

pub(super) fn require(caller: &Caller, scope: Scope) -> Result<(), ApiError> {
    if caller.has(scope) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("this API key lacks the `{}` scope", scope.as_str())))
    }
}
