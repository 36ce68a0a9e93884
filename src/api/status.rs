//! What an operator asks first: how are the connectors doing, and what happened to a record.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::journal::ChangeId;

const DEFAULT_PAGE: u32 = 50;

/// `GET /api/v1/connectors`: rate, concurrency, daily budget used and left, the vendor's own
/// figures, pause and breaker state.
pub async fn connectors(State(state): State<AppState>) -> Json<Value> {
    let mut out = Vec::new();
    for (name, connector) in state.connectors.iter() {
        let quota = connector.limiter().snapshot();
        let limits = state
            .settings
            .connectors
            .get(name)
            .map(|c| c.limits().clone())
            .unwrap_or_default();
        out.push(json!({
            "name": name,
            "kind": connector.kind().as_str(),
            "requests_per_second": limits.requests_per_second,
            "burst": limits.burst,
            "max_concurrency": limits.max_concurrency,
            "quota": {
                "day": quota.day,
                "used": quota.used,
                "budget": quota.budget,
                "remaining": quota.remaining,
                "vendor_used": quota.server_used,
                "vendor_max": quota.server_max,
                "vendor_window_remaining": quota.window_remaining,
                "vendor_window_limit": quota.window_limit,
            },
            "paused_for_seconds": quota.paused_for.map(|d| d.as_secs_f64()),
            "breaker": connector.limiter().breaker_state().as_str(),
        }));
    }
    Json(json!({ "connectors": out }))
}

/// `GET /api/v1/flows`: each flow's mode, backlog per side, open dead letters and what its
/// changes came to since the daemon started.
pub async fn flows(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let internal = |e: crate::journal::JournalError| ApiError::internal(&e);
    let now = crate::journal::now_ms();
    let mut out = Vec::new();
    for (name, flow) in &state.settings.flows {
        let mut sides = serde_json::Map::new();
        for (label, side) in [("left", &flow.left), ("right", &flow.right)] {
            let backlog = state
                .journal
                .backlog(&side.connector, &side.object)
                .await
                .map_err(internal)?;
            let breaker = state
                .connectors
                .get(&side.connector)
                .map(|c| c.limiter().breaker_state().as_str());
            sides.insert(
                label.to_string(),
                json!({
                    "connector": side.connector,
                    "object": side.object,
                    "pending": backlog.pending,
                    "in_flight": backlog.in_flight,
                    "oldest_pending_age_seconds": backlog
                        .oldest_received_at
                        .map(|at| (now - at).max(0) as f64 / 1000.0),
                    "breaker": breaker,
                }),
            );
        }
        let outcomes: serde_json::Map<String, Value> = [
            "created", "written", "linked", "echo", "stale", "conflict", "deleted", "unlinked",
            "skipped", "failed",
        ]
        .into_iter()
        .map(|o| (o.to_string(), json!(state.metrics.sync_count(name, o))))
        .collect();
        let mode = match &flow.mode {
            crate::config::FlowMode::Realtime => json!("realtime"),
            crate::config::FlowMode::Scheduled(crate::config::Schedule::Every(every)) => {
                json!({ "scheduled": { "every": humantime::format_duration(*every).to_string() } })
            }
            crate::config::FlowMode::Scheduled(crate::config::Schedule::Cron {
                expression,
                ..
            }) => {
                json!({ "scheduled": { "cron": expression } })
            }
        };
        out.push(json!({
            "name": name,
            "mode": mode,
            "direction": flow.direction.as_str(),
            "sides": sides,
            "open_dead_letters": state.journal.open_dead_letters(name).await.map_err(internal)?,
            "outcomes_since_start": outcomes,
        }));
    }
    Ok(Json(json!({ "flows": out })))
}

/// `GET /api/v1/records/{connector}/{object}/{id}?limit=&cursor=`: the record's links (its
/// counterpart in each flow, and what was last synced) and its change history, newest first.
pub async fn record(
    State(state): State<AppState>,
    Path((connector, object, id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    if state.connectors.get(&connector).is_none() {
        return Err(ApiError::not_found(
            "unknown_connector",
            format!("no connector named `{connector}` is configured"),
        ));
    }
    let mut limit = DEFAULT_PAGE;
    let mut before = None;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if value.is_empty() {
            continue;
        }
        match name.as_ref() {
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=500).contains(n))
                    .ok_or_else(|| bad_request("`limit` must be a number from 1 to 500"))?
            }
            "cursor" => {
                before = Some(ChangeId(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            bad_request(
                            "`cursor` is not one this server issued; pass `next_cursor` unchanged",
                        )
                        })?,
                ))
            }
            other => {
                return Err(bad_request(format!(
                    "unknown query parameter `{other}`; expected limit or cursor"
                )))
            }
        }
    }
    let internal = |e: crate::journal::JournalError| ApiError::internal(&e);
    let mut links = Vec::new();
    for (flow_name, flow) in &state.settings.flows {
        for (left, side, other) in [
            (true, &flow.left, &flow.right),
            (false, &flow.right, &flow.left),
        ] {
            if side.connector != connector || side.object != object {
                continue;
            }
            if let Some(link) = state
                .journal
                .link(flow_name, left, &id)
                .await
                .map_err(internal)?
            {
                let counterpart = if left { &link.right_id } else { &link.left_id };
                links.push(json!({
                    "flow": flow_name,
                    "side": if left { "left" } else { "right" },
                    "counterpart": {
                        "connector": other.connector,
                        "object": other.object,
                        "id": counterpart,
                    },
                    "synced": link.synced.iter().map(|(rule, values)| json!({
                        "left_field": flow.fields.get(*rule).map(|r| r.left.as_str()),
                        "right_field": flow.fields.get(*rule).map(|r| r.right.as_str()),
                        "left": values.left,
                        "right": values.right,
                    })).collect::<Vec<_>>(),
                    "left_modified_at": link.left_modified_at,
                    "right_modified_at": link.right_modified_at,
                }));
            }
        }
    }
    let (history, next) = state
        .journal
        .record_history(&connector, &object, &id, before, limit)
        .await
        .map_err(internal)?;
    let history: Vec<Value> = history
        .iter()
        .map(|entry| {
            json!({
                "change_id": entry.id,
                "op": entry.op,
                "origin": entry.origin,
                "received_at": entry.received_at,
                "source_modified_at": entry.source_modified_at,
                "status": entry.status,
                "outcome": entry.outcome,
                "detail": entry.detail,
                "attempts": entry.attempts,
                "last_error": entry.last_error,
                "dead_letter": entry.dead_letter.as_ref().map(|(id, status)| json!({"id": id, "status": status})),
            })
        })
        .collect();
    Ok(Json(json!({
        "connector": connector,
        "object": object,
        "id": id,
        "links": links,
        "history": history,
        "next_cursor": next.map(|id| id.0.to_string()),
    })))
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(axum::http::StatusCode::BAD_REQUEST, "bad_request", message)
}
