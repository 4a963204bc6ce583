//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::problem::ApiError;
use super::schemas::Problem;
use crate::store;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", operation_id = "getHealth", tag = "service", responses((status = 200, description = "Alive", body = Object)))]
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers and every migration this binary knows has been applied.
/// Readiness: the database answers and its migrations are current.
#[utoipa::path(get, path = "/readyz", operation_id = "getReadiness", tag = "service", responses((status = 200, description = "Ready: the database answers", body = Object), (status = 503, response = Problem)))]
pub(super) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let unavailable = |detail: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready", detail);
    match store::migrations_current(&state.pool).await {
        Ok(true) => Ok(Json(json!({"status": "ready"}))),
        Ok(false) => Err(unavailable("database migrations are not applied: run `herald migrate`")),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(unavailable("the database is not reachable"))
        }
    }
}
