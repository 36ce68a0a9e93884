//! `POST /webhooks/{connector}` (and `/webhooks/{connector}/{token}` for senders that cannot add
//! headers): the entry point every vendor webhook comes through.
//!
//! Common to all vendors, here: the connector lookup (404 before the body is looked at), the body
//! limit (413, in the middleware), storing the changes and counting every outcome. The vendor's
//! connector authenticates and parses (`Connector::parse_webhook`): authentication first, so
//! nothing of an unauthenticated body is read. The sender gets its 2xx (or its SOAP `Ack`) only
//! after the changes are committed; if the journal cannot commit it gets a 503 and retries.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::connectors::{WebhookError, WebhookReply, WebhookRequest};
use crate::journal::{Appended, Origin};
use crate::metrics::WebhookResult;

type BodyResult = Result<Bytes, axum::extract::rejection::BytesRejection>;

#[utoipa::path(
    post,
    path = "/webhooks/{connector}",
    tag = "webhooks",
    operation_id = "receive_webhook",
    summary = "Webhook intake: authenticate, parse, commit, then answer",
    description = "Jira webhooks are signed (`X-Hub-Signature: sha256=…`, HMAC-SHA256 of the body with \
        the connector's `webhook_secret`). Salesforce notifications (a SOAP Outbound Message or JSON \
        change events) carry the shared secret in `X-Tandem-Webhook-Token`, or in the path: see \
        `/webhooks/{connector}/{token}`. Nothing is written unless the request is authenticated and \
        parses; the answer comes only after the changes are committed.",
    params(
        ("connector" = String, Path, description = "A configured connector's name."),
        ("X-Hub-Signature" = Option<String>, Header,
            description = "Jira: `sha256=<hex HMAC-SHA256 of the body>`."),
        ("X-Tandem-Webhook-Token" = Option<String>, Header,
            description = "Salesforce: the connector's `webhook_secret`, for senders that can set headers."),
    ),
    request_body(
        description = "The vendor's notification as it sends it.",
        content((serde_json::Value = "application/json"), (String = "text/xml")),
    ),
    responses(
        (status = 200, description = "Committed; the SOAP `Ack` an Outbound Message sender waits for.",
            body = String, content_type = "text/xml", example = json!(SOAP_ACK)),
        (status = 204, description = "Committed (or already stored, or nothing to store)."),
        (status = 400, description = "`malformed_webhook`: the body does not parse, with the reason; \
            `bad_body`: the body could not be read.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: bad or missing signature or token.", body = ErrorBody),
        (status = 404, description = "`unknown_connector`: no connector of that name is configured.",
            body = ErrorBody),
        (status = 413, description = "`payload_too_large`: past `server.max_body_bytes`.", body = ErrorBody),
        (status = 503, description = "`journal_unavailable`: not stored; the sender should retry.",
            body = ErrorBody),
    ),
)]
pub async fn receive(
    State(state): State<AppState>,
    Path(connector): Path<String>,
    headers: HeaderMap,
    body: BodyResult,
) -> Result<Response, ApiError> {
    handle(state, connector, None, headers, body).await
}

/// For senders that cannot add headers (Salesforce Outbound Messages).
#[utoipa::path(
    post,
    path = "/webhooks/{connector}/{token}",
    tag = "webhooks",
    operation_id = "receive_webhook_with_token",
    summary = "Webhook intake with the shared secret in the path",
    description = "As `/webhooks/{connector}`, for senders that cannot add headers: Salesforce \
        Outbound Messages. The token is masked in the logs.",
    params(
        ("connector" = String, Path, description = "A configured connector's name."),
        ("token" = String, Path, description = "The connector's `webhook_secret`."),
    ),
    request_body(
        description = "The vendor's notification as it sends it.",
        content((String = "text/xml"), (serde_json::Value = "application/json")),
    ),
    responses(
        (status = 200, description = "Committed; the SOAP `Ack` an Outbound Message sender waits for.",
            body = String, content_type = "text/xml", example = json!(SOAP_ACK)),
        (status = 204, description = "Committed (or already stored, or nothing to store)."),
        (status = 400, description = "`malformed_webhook`: the body does not parse, with the reason; \
            `bad_body`: the body could not be read.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: wrong token, or a message from another organization.",
            body = ErrorBody),
        (status = 404, description = "`unknown_connector`: no connector of that name is configured.",
            body = ErrorBody),
        (status = 413, description = "`payload_too_large`: past `server.max_body_bytes`.", body = ErrorBody),
        (status = 503, description = "`journal_unavailable`: not stored; the sender should retry.",
            body = ErrorBody),
    ),
)]
pub async fn receive_with_token(
    State(state): State<AppState>,
    Path((connector, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: BodyResult,
) -> Result<Response, ApiError> {
    handle(state, connector, Some(token), headers, body).await
}

async fn handle(
    state: AppState,
    name: String,
    token: Option<String>,
    headers: HeaderMap,
    body: BodyResult,
) -> Result<Response, ApiError> {
    let Some(connector) = state.connectors.get(&name) else {
        state
            .metrics
            .count_webhook("unknown", WebhookResult::unknown_connector);
        return Err(ApiError::not_found(
            "unknown_connector",
            format!("no connector named `{name}` is configured"),
        ));
    };
    let count = |result| state.metrics.count_webhook(&name, result);
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            // 413s are counted by `count_oversized`, whichever layer answers them.
            if status != StatusCode::PAYLOAD_TOO_LARGE {
                count(WebhookResult::bad_request);
            }
            return Err(ApiError::new(status, "bad_body", rejection.body_text()));
        }
    };
    let parsed = connector.parse_webhook(&WebhookRequest {
        headers: &headers,
        body: &body,
        path_token: token.as_deref(),
    });
    let webhook = match parsed {
        Ok(webhook) => webhook,
        Err(WebhookError::Unauthorized(reason)) => {
            count(WebhookResult::unauthorized);
            tracing::warn!(connector = %name, reason = %loggable(&reason), "webhook refused");
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                reason,
            ));
        }
        Err(WebhookError::Malformed(reason)) => {
            count(WebhookResult::bad_request);
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_webhook",
                reason,
            ));
        }
    };
    let result = if webhook.changes.is_empty() {
        WebhookResult::ignored
    } else {
        let records: Vec<(String, String)> = webhook
            .changes
            .iter()
            .map(|c| (c.object.clone(), c.record_id.clone()))
            .collect();
        let appended = match state.journal.append_all(webhook.changes, None).await {
            Ok(appended) => appended,
            Err(error) => {
                count(WebhookResult::unavailable);
                tracing::error!(connector = %name, %error, "webhook not stored; the sender will retry");
                return Err(ApiError::unavailable(
                    "journal_unavailable",
                    "the change could not be stored; retry later",
                ));
            }
        };
        // Ids only: a snapshot is customer data and stays in the journal.
        for (appended, (object, record_id)) in appended.iter().zip(&records) {
            let (change_id, stored) = match appended {
                Appended::New(id) => (id, "new"),
                Appended::Duplicate(id) => (id, "duplicate"),
            };
            tracing::debug!(%change_id, connector = %name, %object, %record_id, stored, "webhook change stored");
        }
        let new = appended
            .iter()
            .filter(|a| matches!(a, Appended::New(_)))
            .count() as u64;
        state.metrics.count_ingested(&name, Origin::Webhook, new);
        if new == 0 {
            WebhookResult::duplicate
        } else {
            WebhookResult::accepted
        }
    };
    count(result);
    Ok(match webhook.reply {
        WebhookReply::Empty => StatusCode::NO_CONTENT.into_response(),
        WebhookReply::SoapAck => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
            Body::from(SOAP_ACK),
        )
            .into_response(),
    })
}

/// Count webhook bodies refused for size. The body limit answers a too-long `Content-Length`
/// before routing, so the handler never sees those; this layer sits outside it and sees both.
pub async fn count_oversized(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let connector = request
        .uri()
        .path()
        .strip_prefix("/webhooks/")
        .map(|rest| rest.split('/').next().unwrap_or_default().to_string());
    let response = next.run(request).await;
    if let Some(name) = connector {
        if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
            // Only a configured name becomes a label: the path is caller-controlled.
            let label = if state.connectors.get(&name).is_some() {
                name.as_str()
            } else {
                "unknown"
            };
            state.metrics.count_webhook(label, WebhookResult::too_large);
        }
    }
    response
}

/// A refusal reason as logged: it may quote what an unauthenticated sender put in its body
/// (an organization id), so its length is the sender's choice unless it is cut here.
fn loggable(reason: &str) -> &str {
    const MAX: usize = 200;
    match reason.char_indices().nth(MAX) {
        Some((at, _)) => &reason[..at],
        None => reason,
    }
}

/// The answer an Outbound Message sender needs to stop retrying.
const SOAP_ACK: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">"#,
    r#"<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">"#,
    r#"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#
);

#[cfg(test)]
mod tests {
    #[test]
    fn a_refusal_reason_is_logged_at_most_200_characters_long() {
        assert_eq!(
            super::loggable("wrong webhook token"),
            "wrong webhook token"
        );
        let long = format!("from organization {}", "é".repeat(10_000));
        assert_eq!(super::loggable(&long).chars().count(), 200);
    }
}
