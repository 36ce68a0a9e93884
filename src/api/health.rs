//! Liveness, readiness and the Prometheus endpoint.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::{ApiError, AppState};

/// The process is up and serving HTTP; says nothing about its dependencies.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready to take traffic: the database answers and every migration is applied.
pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    match state.journal.migrations_current().await {
        Ok(true) => Ok((StatusCode::OK, Json(json!({ "status": "ready" })))),
        Ok(false) => Err(ApiError::unavailable(
            "migrations_pending",
            "database migrations are not applied; run `tandem migrate`",
        )),
        Err(error) => {
            tracing::warn!(%error, "readiness check could not reach the database");
            Err(ApiError::unavailable(
                "database_unavailable",
                format!("database unreachable: {error}"),
            ))
        }
    }
}

pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = state
        .metrics
        .render(&state.journal, &state.connectors, &state.settings.flows)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}
