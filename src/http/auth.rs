//! `Authorization: Bearer <key>` → `Caller`. A missing or unknown key is a 401 problem;
//! scopes are checked by the handler (`require`), giving 403.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::problem::ApiError;
use crate::store::keys::{self, Caller, Scope};

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("send an API key as `Authorization: Bearer <key>`"))?;
        let value = value.to_str().map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
        let key = match value.split_once(' ') {
            Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() => key.trim(),
            _ => return Err(ApiError::unauthorized("use the Bearer scheme: `Authorization: Bearer <key>`")),
        };
        let mut conn = state.pool.acquire().await.map_err(crate::store::StoreError::from)?;
        keys::authenticate(&mut conn, key)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the API key is unknown or revoked"))
    }
}

pub fn require(caller: &Caller, scope: Scope) -> Result<(), ApiError> {
    if caller.has(scope) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("this API key lacks the `{}` scope", scope.as_str())))
    }
}
