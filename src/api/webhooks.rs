//! `POST /webhooks/{connector}`: the entry point every vendor webhook comes through.
//!
//! What is common to all vendors lives here: the connector lookup (404 for a name that is not
//! configured, before the body is looked at), the body limit (413, in the middleware) and the
//! request counter. Verifying and parsing each vendor's payload belongs to its connector's
//! receiver; until a kind has one, its webhooks are refused with 501 so that no sender is ever
//! told a change was stored when it was not.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{ApiError, AppState};
use crate::metrics::WebhookResult;

pub async fn receive(
    State(state): State<AppState>,
    Path(connector): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let Some(settings) = state.settings.connectors.get(&connector) else {
        state
            .metrics
            .count_webhook("unknown", WebhookResult::unknown_connector);
        return Err(ApiError::not_found(
            "unknown_connector",
            format!("no connector named `{connector}` is configured"),
        ));
    };
    if let Err(rejection) = body {
        let status = rejection.status();
        let result = if status == StatusCode::PAYLOAD_TOO_LARGE {
            WebhookResult::too_large
        } else {
            WebhookResult::bad_request
        };
        state.metrics.count_webhook(&connector, result);
        return Err(ApiError::new(status, "bad_body", rejection.body_text()));
    }
    state
        .metrics
        .count_webhook(&connector, WebhookResult::unsupported);
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "receiver_unavailable",
        format!(
            "this build has no webhook receiver for {} connectors yet; nothing was stored",
            settings.kind().as_str()
        ),
    ))
}
