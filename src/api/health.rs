//! Liveness, readiness and the Prometheus endpoint.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::{ApiError, AppState};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` from `/healthz`, `ready` from `/readyz`.
    pub status: &'static str,
}

/// The process is up and serving HTTP; says nothing about its dependencies.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    summary = "Liveness: the process serves HTTP",
    responses((status = 200, description = "Always, while the process serves.", body = Health,
        example = json!({"status": "ok"}))),
)]
pub async fn healthz() -> impl IntoResponse {
    Json(Health { status: "ok" })
}

/// Ready to take traffic: the database answers and every migration is applied.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    summary = "Readiness: the database answers and every migration is applied",
    responses(
        (status = 200, description = "Ready.", body = Health, example = json!({"status": "ready"})),
        (status = 503, description = "`migrations_pending` or `database_unavailable`.", body = ErrorBody),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    match state.journal.migrations_current().await {
        Ok(true) => Ok((StatusCode::OK, Json(Health { status: "ready" }))),
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

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    operation_id = "metrics",
    summary = "Prometheus/OpenMetrics text; every series prefixed `tandem_`",
    responses(
        (status = 200, description = "The scrape.", body = String, content_type = OPENMETRICS),
        (status = 500, description = "`internal`: the journal could not be read.", body = ErrorBody),
    ),
)]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = state
        .metrics
        .render(&state.journal, &state.connectors, &state.settings.flows)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(([(header::CONTENT_TYPE, OPENMETRICS)], text))
}
