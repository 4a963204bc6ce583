//! `/webhooks/{provider}`: provider receipts. Authenticated by each provider's own signature
//! scheme, not API keys; a bad or missing signature is a 401 problem and changes nothing.
//! Verified receipts are acknowledged with 2xx even when duplicated or unmatched, so the
//! provider stops retrying.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};
use tracing::{info, info_span, warn};

use super::AppState;
use super::problem::ApiError;
use super::schemas::Problem;
use crate::metrics;
use crate::receipts::{Incoming, Receipt, ReceiptContext, ReceiptError, Verified};
use crate::store::receipts::{self as store, ReceiptOutcome};

/// A provider's delivery receipts sent as a query string (Vonage's `GET` callbacks), checked
/// like `receive`'s.
#[utoipa::path(get, path = "/webhooks/{provider}", operation_id = "receiveReceiptByQuery", tag = "receipts",
    params(("provider" = String, Path, description = "The configured provider name ([providers.NAME])")),
    responses((status = 200, description = "Counts of what was applied", body = Object),
              (status = 400, response = Problem), (status = 401, response = Problem), (status = 404, response = Problem),
              (status = 503, response = Problem)))]
pub(super) async fn receive_by_query(
    state: State<AppState>,
    name: Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    receive(state, name, method, uri, headers, body).await
}

/// A provider's delivery receipts, checked by that provider's own signature scheme (no API key).
#[utoipa::path(post, path = "/webhooks/{provider}", operation_id = "receiveReceipt", tag = "receipts",
    params(("provider" = String, Path, description = "The configured provider name ([providers.NAME])")),
    request_body(content = Object, description = "The provider's own format", content_type = "application/json"),
    responses((status = 200, description = "Counts of what was applied", body = Object),
              (status = 400, response = Problem), (status = 401, response = Problem), (status = 404, response = Problem),
              (status = 503, response = Problem)))]
pub(super) async fn receive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let provider =
        state.registry.provider(&name).ok_or_else(|| ApiError::not_found(format!("no provider named {name}")))?;
    let incoming =
        Incoming { method: method.as_str(), query: uri.query().unwrap_or(""), headers: &headers, body: &body };
    let path = format!("/webhooks/{name}");
    let ctx = ReceiptContext {
        path: &path,
        public_base_url: &state.settings.server.public_base_url,
        max_age: Duration::from_secs(state.settings.receipts.max_age_secs),
    };
    let Some(verifier) = provider.receipts() else {
        let kind = state.settings.providers.get(&name).map_or("?", |p| p.kind().as_str());
        return Err(ApiError::not_found(format!("provider {name} (kind {kind}) sends no receipts")));
    };
    let receipts = match verifier.verify(&incoming, &ctx).await {
        Ok(Verified::Receipts(r)) => r,
        Ok(Verified::Acknowledged(what)) => {
            info!(provider = %name, "{what}");
            return Ok((StatusCode::OK, Json(json!({"acknowledged": what}))));
        }
        Err(why) => {
            metrics::receipt(&name, why.reason(), 1);
            if let ReceiptError::Malformed(detail) = why {
                return Err(ApiError::malformed(detail));
            }
            warn!(provider = %name, reason = why.reason(), "receipt refused: {why}");
            return Err(ApiError::bad_signature(format!("receipt signature check failed: {why}")));
        }
    };
    let tally = apply_each(&state, &name, &receipts).await?;
    Ok((StatusCode::OK, Json(tally.answer(&name, receipts.len()))))
}

/// What became of a request's receipts, by result.
#[derive(Default)]
struct Tally {
    applied: u64,
    held: u64,
    duplicates: u64,
    unmatched: u64,
    malformed: u64,
}

impl Tally {
    /// Counted in the metrics, and the answer's body.
    fn answer(&self, provider: &str, received: usize) -> Value {
        let Tally { applied, held, duplicates, unmatched, malformed } = *self;
        let by_result = [
            ("applied", applied),
            ("held", held),
            ("duplicate", duplicates),
            ("unmatched", unmatched),
            ("malformed", malformed),
        ];
        for (result, n) in by_result {
            if n > 0 {
                metrics::receipt(provider, result, n);
            }
        }
        json!({"received": received, "applied": applied, "held": held, "duplicates": duplicates,
               "unmatched": unmatched, "malformed": malformed})
    }
}

/// Apply each receipt on its own: one the database refuses as it is (a value it cannot keep)
/// is kept as malformed and the rest are applied, so a redelivery of the batch does not fail
/// again on it and lose the others. The database being away fails the request (503), and the
/// provider delivers the batch again; what was applied is then a duplicate.
async fn apply_each(state: &AppState, name: &str, receipts: &[Receipt]) -> Result<Tally, ApiError> {
    let mut tally = Tally::default();
    for r in receipts {
        if let Some(token) = &r.replay_token {
            match store::bind_token(&state.pool, name, token, &r.dedupe_key).await {
                Ok(true) => {}
                Ok(false) => {
                    metrics::receipt(name, "replayed", 1);
                    warn!(provider = %name, "receipt refused: its signed token was already used for another event");
                    return Err(ApiError::bad_signature(
                        "this signature's token was already used for another event (a replayed signature)",
                    ));
                }
                Err(e) if crate::store::is_data_error(&e) => {
                    keep_malformed(state, name, r, &e).await?;
                    tally.malformed += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        match store::apply(&state.pool, name, r).await {
            Ok(ReceiptOutcome::Duplicate) => tally.duplicates += 1,
            Ok(ReceiptOutcome::Unmatched) => {
                warn!(provider = %name, provider_status = %r.provider_status, "receipt matches no notification; kept as unmatched");
                tally.unmatched += 1;
            }
            Ok(ReceiptOutcome::Recorded { changed, traceparent }) => {
                // In the notification's trace: accept, attempts and this receipt in one view.
                let span = info_span!("receipt", provider = %name, trace_id = tracing::field::Empty);
                crate::telemetry::join_trace(&span, traceparent.as_deref());
                span.in_scope(|| info!(provider_status = %r.provider_status, changed, "receipt applied"));
                tally.applied += 1;
            }
            Ok(ReceiptOutcome::Held) => tally.held += 1,
            Err(e) if crate::store::is_data_error(&e) => {
                keep_malformed(state, name, r, &e).await?;
                tally.malformed += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(tally)
}

/// Keep a receipt that could not be applied as malformed (`store::receipts::keep_malformed`).
async fn keep_malformed(
    state: &AppState,
    provider: &str,
    r: &Receipt,
    e: &crate::store::StoreError,
) -> Result<(), ApiError> {
    warn!(provider, error = %e, "receipt could not be applied; kept as malformed");
    Ok(store::keep_malformed(&state.pool, provider, r, &e.to_string()).await?)
}
