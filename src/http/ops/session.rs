//! `POST /ops/session`: a sign-in link (`herald ops-link`) traded for a dashboard session. The
//! dashboard's script finds the link's token in the page's fragment and posts it here; a
//! link that is unknown, altered, expired or used already gets one and the same refusal, so
//! the answer tells a guesser nothing. What a good link gives is a key of its tenant's with
//! the `read` scope that lasts `SESSION`: the dashboard then uses it as a pasted key.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::super::AppState;
use super::super::problem::ApiError;
use super::super::schemas::Problem;
use crate::domain::ops_link;
use crate::store::{self, ops_links};

/// How long a dashboard session lasts: a working day.
const SESSION: time::Duration = time::Duration::hours(8);

/// `POST /ops/session`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(in crate::http) struct SessionRequest {
    /// The token after `#link=` in the sign-in link.
    link: String,
}

/// A dashboard session: a key with the `read` scope of the link's tenant, until `expires_at`.
#[derive(Serialize, ToSchema)]
pub(in crate::http) struct SessionView {
    tenant: String,
    key: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

fn refused() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "link-refused",
        "Sign-in link refused",
        "this sign-in link is unknown, altered, expired or used already: each works once, for 15 minutes at most; \
         make a new one with `herald ops-link --tenant NAME`",
    )
}

/// Trade a sign-in link for a dashboard session (no API key: the link is the credential).
#[utoipa::path(post, path = "/ops/session", operation_id = "createDashboardSession", tag = "operators",
    request_body = SessionRequest,
    responses((status = 200, description = "A key with the read scope for the dashboard", body = SessionView),
              (status = 400, response = Problem), (status = 401, response = Problem),
              (status = 422, response = Problem), (status = 503, response = Problem)))]
pub(in crate::http) async fn create(State(state): State<AppState>, body: Bytes) -> Result<Json<SessionView>, ApiError> {
    let request: SessionRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::malformed(format!("the body must be {{\"link\": \"…\"}}: {e}")))?;
    let (id, mac) = ops_link::parse(&request.link).ok_or_else(refused)?;
    let mut conn = store::session(&state.pool).await?;
    let link = ops_links::find(&mut conn, id).await?.ok_or_else(refused)?;
    let key = ops_links::signing_key(&mut conn, ops_link::KEY_PURPOSE).await?;
    conn.finish().await?;
    if !ops_link::verify(&key, &mac, link.id, link.tenant_id, link.expires_at) {
        return Err(refused());
    }
    let session = ops_links::redeem(&state.pool, link.id, SESSION).await?.ok_or_else(refused)?;
    Ok(Json(SessionView { tenant: session.tenant, key: session.key, expires_at: session.expires_at }))
}
