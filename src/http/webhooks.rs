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
use tracing::{info, warn};

use super::AppState;
use super::problem::ApiError;
use crate::config::ProviderKind;
use crate::receipts::{self, Incoming, ReceiptError, Verified};
use crate::store::receipts::{self as store, Applied};

pub async fn receive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let settings = &state.settings;
    let cfg = settings.providers.get(&name).ok_or_else(|| ApiError::not_found(format!("no provider named {name}")))?;
    let incoming =
        Incoming { method: method.as_str(), query: uri.query().unwrap_or(""), headers: &headers, body: &body };
    let max_age = Duration::from_secs(settings.receipts.max_age_secs);
    let path = format!("/webhooks/{name}");
    let verified = match cfg.kind {
        ProviderKind::Twilio => receipts::twilio::verify(
            &incoming,
            cfg.auth_token.as_ref().map(|s| s.expose()).unwrap_or_default(),
            &settings.server.public_base_url,
            &path,
        )
        .map(Verified::Receipts),
        ProviderKind::Vonage => receipts::vonage::verify(
            &incoming,
            cfg.signature_secret.as_ref().map(|s| s.expose()).filter(|s| !s.is_empty()),
            cfg.signature_method.as_deref().unwrap_or("md5hash"),
            max_age,
        )
        .map(Verified::Receipts),
        ProviderKind::Sendgrid => {
            receipts::sendgrid::verify(&incoming, cfg.webhook_public_key.as_deref(), max_age).map(Verified::Receipts)
        }
        ProviderKind::Mailgun => {
            let key = [&cfg.webhook_signing_key, &cfg.api_key]
                .into_iter()
                .flatten()
                .map(|s| s.expose())
                .find(|s| !s.is_empty())
                .unwrap_or_default();
            receipts::mailgun::verify(&incoming, key, max_age).map(Verified::Receipts)
        }
        ProviderKind::Ses => receipts::sns::verify(&incoming, cfg, &state.http, max_age).await,
        _ => {
            return Err(ApiError::not_found(format!("provider {name} (kind {}) sends no receipts", cfg.kind.as_str())));
        }
    };
    let receipts = match verified {
        Ok(Verified::Receipts(r)) => r,
        Ok(Verified::Acknowledged(what)) => {
            info!(provider = %name, "{what}");
            return Ok((StatusCode::OK, Json(json!({"acknowledged": what}))));
        }
        Err(ReceiptError::Unauthorized(why)) => {
            warn!(provider = %name, reason = %why, "receipt refused: signature check failed");
            return Err(ApiError::unauthorized(format!("receipt signature check failed: {why}")));
        }
        Err(ReceiptError::BadRequest(why)) => return Err(ApiError::malformed(why)),
    };
    let (mut applied, mut duplicates, mut unmatched) = (0, 0, 0);
    for r in &receipts {
        if let Some(token) = &r.replay_token
            && !store::bind_token(&state.pool, &name, token, &r.dedupe_key).await?
        {
            warn!(provider = %name, "receipt refused: its signed token was already used for another event");
            return Err(ApiError::unauthorized(
                "this signature's token was already used for another event (a replayed signature)",
            ));
        }
        match store::apply(&state.pool, &name, r).await? {
            Applied::Duplicate => duplicates += 1,
            Applied::Unmatched => {
                warn!(provider = %name, provider_status = %r.provider_status, "receipt matches no notification; kept as unmatched");
                unmatched += 1;
            }
            Applied::Recorded { .. } | Applied::Held => applied += 1,
        }
    }
    Ok((
        StatusCode::OK,
        Json(json!({"received": receipts.len(), "applied": applied, "duplicates": duplicates, "unmatched": unmatched})),
    ))
}
