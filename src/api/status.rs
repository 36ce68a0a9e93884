//! What an operator asks first: how are the connectors doing, and what happened to a record.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::config::{FlowMode, Schedule};
use crate::journal::ChangeId;
use crate::schedule::RunError;

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

/// One flow as the operator sees it: mode and schedule, backlog and breaker per side, open
/// dead letters, outcomes since the daemon started (echoes and conflicts among them), and its
/// last run.
async fn flow_status(
    state: &AppState,
    name: &str,
    flow: &crate::config::FlowSettings,
) -> Result<Value, ApiError> {
    let internal = |e: crate::journal::JournalError| ApiError::internal(&e);
    let now = crate::journal::now_ms();
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
    .map(|o| {
        let connectors = [flow.left.connector.as_str(), flow.right.connector.as_str()];
        (
            o.to_string(),
            json!(state.metrics.sync_count(name, &connectors, o)),
        )
    })
    .collect();
    let (mode, next_run) = match &flow.mode {
        FlowMode::Realtime => (json!("realtime"), None),
        FlowMode::Scheduled(schedule) => {
            let last = state.journal.last_run(name).await.map_err(internal)?;
            let next = crate::schedule::next_after(
                schedule,
                last.as_ref().map_or(now, |run| run.started_at),
            );
            let mode = match schedule {
                Schedule::Every(every) => {
                    json!({ "scheduled": { "every": humantime::format_duration(*every).to_string() } })
                }
                Schedule::Cron {
                    expression,
                    timezone,
                    ..
                } => json!({ "scheduled": { "cron": expression, "timezone": timezone.name() } }),
            };
            (mode, Some(next.timestamp_millis()))
        }
    };
    let last_run = state.journal.last_run(name).await.map_err(internal)?;
    Ok(json!({
        "name": name,
        "mode": mode,
        "direction": flow.direction.as_str(),
        "sides": sides,
        "open_dead_letters": state.journal.open_dead_letters(name).await.map_err(internal)?,
        "outcomes_since_start": outcomes,
        "last_run": last_run,
        "next_run_at": next_run,
    }))
}

/// `GET /api/v1/flows`: every flow's status (see [`flow`]).
pub async fn flows(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for (name, flow) in &state.settings.flows {
        out.push(flow_status(&state, name, flow).await?);
    }
    Ok(Json(json!({ "flows": out })))
}

fn known_flow<'s>(
    state: &'s AppState,
    name: &str,
) -> Result<&'s crate::config::FlowSettings, ApiError> {
    state.settings.flows.get(name).ok_or_else(|| {
        ApiError::not_found(
            "unknown_flow",
            format!("no flow named `{name}` is configured"),
        )
    })
}

/// `GET /api/v1/flows/{name}`: one flow's status with its recent runs.
pub async fn flow(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let settings = known_flow(&state, &name)?;
    let mut out = flow_status(&state, &name, settings).await?;
    let runs = state
        .journal
        .runs(&name, None, 10)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    out["recent_runs"] = json!(runs);
    Ok(Json(out))
}

/// `GET /api/v1/flows/{name}/runs?limit=&cursor=`: a flow's runs, newest first.
pub async fn runs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    known_flow(&state, &name)?;
    let (limit, before) = page(query)?;
    let mut runs = state
        .journal
        .runs(&name, before, limit + 1)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let next = if runs.len() > limit as usize {
        runs.truncate(limit as usize);
        runs.last().map(|run| run.id.to_string())
    } else {
        None
    };
    Ok(Json(json!({ "runs": runs, "next_cursor": next })))
}

/// `POST /api/v1/flows/{name}/run`: start a run of a scheduled flow now. 202 with the run;
/// 409 `run_in_progress` while one runs, 409 `not_scheduled` for a realtime flow.
pub async fn run(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    known_flow(&state, &name)?;
    let conflict =
        |code, message: String| ApiError::new(axum::http::StatusCode::CONFLICT, code, message);
    match state.scheduler.trigger(&name, "api").await {
        Ok(id) => {
            let run = state
                .journal
                .run(id)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            Ok((
                axum::http::StatusCode::ACCEPTED,
                Json(json!({ "run": run })),
            ))
        }
        Err(RunError::Running(id)) => Err(conflict(
            "run_in_progress",
            format!("run {id} of flow `{name}` is still running"),
        )),
        Err(error @ RunError::NotScheduled(_)) => Err(conflict("not_scheduled", error.to_string())),
        Err(RunError::UnknownFlow(_)) => Err(ApiError::not_found(
            "unknown_flow",
            format!("no flow named `{name}` is configured"),
        )),
        Err(error) => Err(ApiError::internal(&error)),
    }
}

/// `POST /api/v1/flows/{name}/backfill`: start a backfill (202 with its run; 409 while a run
/// of the flow is going). `?dry_run=true`: answer what it would link and create, and write
/// nothing.
pub async fn backfill(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    known_flow(&state, &name)?;
    let mut dry_run = false;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            ("dry_run", "" | "true" | "1") => dry_run = true,
            ("dry_run", "false" | "0") => dry_run = false,
            ("dry_run", _) => return Err(bad_request("`dry_run` is true or false")),
            (other, _) => {
                return Err(bad_request(format!(
                    "unknown query parameter `{other}`; expected dry_run"
                )))
            }
        }
    }
    if dry_run {
        return match state.scheduler.backfill_plan(&name).await {
            Ok(plan) => Ok((axum::http::StatusCode::OK, Json(json!(plan)))),
            Err(crate::backfill::BackfillError::Vendor(error)) => Err(ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "vendor_error",
                format!("backfill could not list a side: {error}"),
            )),
            Err(error) => Err(ApiError::internal(&error)),
        };
    }
    match state.scheduler.backfill(&name).await {
        Ok(id) => {
            let run = state
                .journal
                .run(id)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            Ok((
                axum::http::StatusCode::ACCEPTED,
                Json(json!({ "run": run })),
            ))
        }
        Err(RunError::Running(id)) => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "run_in_progress",
            format!("run {id} of flow `{name}` is still running"),
        )),
        Err(error) => Err(ApiError::internal(&error)),
    }
}

/// `GET /api/v1/flows/{name}/runs/{id}`: one run, with its progress while it goes.
pub async fn one_run(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    known_flow(&state, &name)?;
    let missing = || ApiError::not_found("unknown_run", format!("flow `{name}` has no run {id}"));
    let id: i64 = id.parse().map_err(|_| missing())?;
    let run = state
        .journal
        .run(id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .filter(|run| run.flow == name)
        .ok_or_else(missing)?;
    Ok(Json(json!(run)))
}

/// `POST /api/v1/flows/{name}/reconcile?since=24h&repair=true`: compare both sides with the
/// links now and answer the report (kept: `GET` shows the newest).
pub async fn reconcile(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    known_flow(&state, &name)?;
    let mut since = None;
    let mut repair = false;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "since" if !value.is_empty() => {
                since = Some(humantime::parse_duration(&value).map_err(|_| {
                    bad_request(format!(
                        "`since` must be a duration like `24h` or `30m`, not `{value}`"
                    ))
                })?)
            }
            "since" => {}
            "repair" => {
                repair = match value.as_ref() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad_request("`repair` is true or false")),
                }
            }
            other => {
                return Err(bad_request(format!(
                    "unknown query parameter `{other}`; expected since or repair"
                )))
            }
        }
    }
    match state.scheduler.reconcile(&name, since, repair).await {
        Ok(report) => Ok(Json(json!(report))),
        Err(crate::reconcile::ReconcileError::Vendor(error)) => Err(ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "vendor_error",
            format!("reconcile could not list a side: {error}"),
        )),
        Err(error) => Err(ApiError::internal(&error)),
    }
}

/// `GET /api/v1/flows/{name}/reconcile`: the newest reconcile report of the flow.
pub async fn last_reconcile(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    known_flow(&state, &name)?;
    state
        .journal
        .last_reconcile_report(&name)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(
                "no_report",
                format!("flow `{name}` has not been reconciled yet; POST to this path to run one"),
            )
        })
}

/// `limit` (1..=500, default 50) and `cursor` (an id to page before) from a query string.
fn page(query: Option<String>) -> Result<(u32, Option<i64>), ApiError> {
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
                before = Some(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            bad_request(
                        "`cursor` is not one this server issued; pass `next_cursor` unchanged",
                    )
                        })?,
                )
            }
            other => {
                return Err(bad_request(format!(
                    "unknown query parameter `{other}`; expected limit or cursor"
                )))
            }
        }
    }
    Ok((limit, before))
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
    let (limit, before) = page(query)?;
    let before = before.map(ChangeId);
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
