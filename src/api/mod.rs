//! The HTTP surface: health, metrics, webhook intake, the admin API under `/api/v1`, and the
//! operator dashboard at `/` that calls it.
//!
//! **The API layer never calls a vendor**: it reads and writes the journal only.

mod admin;
mod dashboard;
mod error;
mod health;
mod openapi;
mod status;
mod webhooks;

use std::sync::Arc;

use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use tower::util::MapResponseLayer;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use openapi::ApiDoc;

use crate::config::Settings;
use crate::connectors::Connectors;
use crate::journal::Journal;
use crate::metrics::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub journal: Journal,
    pub metrics: Arc<Metrics>,
    /// For webhook parsing only: the API layer never calls a vendor.
    pub connectors: Connectors,
    /// Starts scheduled runs on request (`POST /api/v1/flows/{name}/run`).
    pub scheduler: Arc<crate::schedule::Scheduler>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let server = &state.settings.server;
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let request_id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!(
                    "http",
                    method = %request.method(),
                    path = %loggable_path(request.uri().path()),
                    request_id,
                )
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        // Outside the body limit, which answers 413 itself before any handler runs.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            webhooks::count_oversized,
        ))
        .layer(MapResponseLayer::new(
            error::json_error_bodies::<tower_http::limit::ResponseBody<axum::body::Body>>,
        ))
        .layer(RequestBodyLimitLayer::new(server.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            server.request_timeout,
        ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/webhooks/{connector}", post(webhooks::receive))
        .route(
            "/webhooks/{connector}/{token}",
            post(webhooks::receive_with_token),
        )
        // Beside the admin routes but outside their token layer: the document is public.
        .route(openapi::PATH, get(openapi::document))
        .nest(
            "/api/v1",
            admin::router().layer(axum::middleware::from_fn_with_state(
                state.clone(),
                admin::require_token,
            )),
        )
        .merge(dashboard::router())
        .fallback(|| async { ApiError::not_found("not_found", "no such endpoint") })
        .layer(middleware)
        .with_state(state)
}

/// The request path for logs, with a webhook's path token (a shared secret) masked.
fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.strip_prefix("/webhooks/") {
        Some(rest) if rest.contains('/') => {
            let connector = rest.split('/').next().unwrap_or_default();
            format!("/webhooks/{connector}/***").into()
        }
        _ => path.into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_webhook_path_token_never_reaches_the_logs() {
        assert_eq!(
            super::loggable_path("/webhooks/salesforce/s3cret"),
            "/webhooks/salesforce/***"
        );
        assert_eq!(super::loggable_path("/webhooks/jira"), "/webhooks/jira");
        assert_eq!(super::loggable_path("/metrics"), "/metrics");
    }
}
