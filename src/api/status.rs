//! What an operator asks first: how are the connectors doing, and what happened to a record.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::config::{FlowMode, Schedule};
use crate::connectors::BreakerState;
use crate::journal::{ChangeId, Run};
use crate::reconcile::Report;
use crate::schedule::RunError;

const DEFAULT_PAGE: u32 = 50;

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectorList {
    pub connectors: Vec<ConnectorStatus>,
}

/// One connector's traffic control as it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectorStatus {
    pub name: String,
    /// `jira` or `salesforce`.
    pub kind: String,
    pub requests_per_second: f64,
    pub burst: Option<u32>,
    pub max_concurrency: u32,
    pub quota: Quota,
    /// Seconds until a paused connector sends again; null when not paused.
    pub paused_for_seconds: Option<f64>,
    pub breaker: Breaker,
}

/// Today's calls (UTC) against Tandem's budget, beside the vendor's own figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct Quota {
    /// The UTC day the counts are for, `yyyy-mm-dd`.
    pub day: String,
    /// Calls Tandem made today.
    pub used: u64,
    /// Tandem's daily budget; null when unlimited.
    pub budget: Option<u64>,
    /// The smaller of what the budget leaves and what the vendor says is left.
    pub remaining: Option<u64>,
    /// The vendor's own daily count, as last reported.
    pub vendor_used: Option<u64>,
    /// The vendor's daily allowance, as last reported.
    pub vendor_max: Option<u64>,
    /// Calls left in the vendor's rate-limit window (Jira `X-RateLimit-Remaining`).
    pub vendor_window_remaining: Option<u64>,
    /// The window's allowance (Jira `X-RateLimit-Limit`).
    pub vendor_window_limit: Option<u64>,
}

/// The circuit breaker, mirrored from the limiter's so that the document lists the values.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Breaker {
    Closed,
    Open,
    HalfOpen,
}

impl From<BreakerState> for Breaker {
    fn from(state: BreakerState) -> Self {
        match state {
            BreakerState::Closed => Breaker::Closed,
            BreakerState::Open => Breaker::Open,
            BreakerState::HalfOpen => Breaker::HalfOpen,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlowList {
    pub flows: Vec<FlowStatus>,
}

/// One flow as the operator sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlowStatus {
    pub name: String,
    pub mode: Mode,
    /// `both`, `left_to_right` or `right_to_left`.
    pub direction: String,
    pub sides: Sides,
    pub open_dead_letters: i64,
    pub outcomes_since_start: Outcomes,
    /// The newest run of a scheduled flow; null for a realtime flow or before its first run.
    pub last_run: Option<Run>,
    /// When a scheduled flow runs next, epoch milliseconds; null for a realtime flow.
    pub next_run_at: Option<i64>,
}

/// `GET /api/v1/flows/{name}`: the flow's status with its recent runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlowDetail {
    #[serde(flatten)]
    pub status: FlowStatus,
    /// Up to ten, newest first.
    pub recent_runs: Vec<Run>,
}

/// `"realtime"`, or `{"scheduled": {…}}` with the schedule as configured.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Realtime,
    Scheduled(ScheduleView),
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ScheduleView {
    Every {
        /// As humantime writes it: `15m`, `1h 30m`.
        every: String,
    },
    Cron {
        cron: String,
        /// An IANA time zone name.
        timezone: String,
    },
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Sides {
    pub left: Side,
    pub right: Side,
}

/// One side of a flow: its backlog and its connector's breaker.
#[derive(Debug, Serialize, ToSchema)]
pub struct Side {
    pub connector: String,
    pub object: String,
    pub pending: i64,
    pub in_flight: i64,
    /// Age of the oldest change still owed; null when none is.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Null if the connector is not configured.
    pub breaker: Option<Breaker>,
}

/// What the engine did with the flow's changes since the daemon started.
///
/// Fields in alphabetical order, as the map this replaced was: the dashboard shows them in the
/// order they arrive.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Outcomes {
    pub conflict: u64,
    pub created: u64,
    pub deleted: u64,
    /// Tandem's own writes coming back.
    pub echo: u64,
    pub failed: u64,
    pub linked: u64,
    pub skipped: u64,
    pub stale: u64,
    pub unlinked: u64,
    pub written: u64,
}

/// A page of a flow's runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunPage {
    pub runs: Vec<Run>,
    /// Pass back as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// The run `POST /api/v1/flows/{name}/run` started.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunStarted {
    pub run: Option<Run>,
}

/// A record's links and change history.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordView {
    pub connector: String,
    pub object: String,
    pub id: String,
    /// Its counterpart in each flow that has linked it.
    pub links: Vec<RecordLink>,
    /// Its changes, newest first.
    pub history: Vec<HistoryItem>,
    /// Pass back as `cursor` for the next page of history; null on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordLink {
    pub flow: String,
    /// Which side of the flow the record is on: `left` or `right`.
    pub side: String,
    pub counterpart: Counterpart,
    /// The values last synced, per field rule, in each side's own form.
    pub synced: Vec<SyncedField>,
    /// The newest left-side modified time accounted for, epoch milliseconds.
    pub left_modified_at: Option<i64>,
    /// The newest right-side modified time accounted for, epoch milliseconds.
    pub right_modified_at: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Counterpart {
    pub connector: String,
    pub object: String,
    pub id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SyncedField {
    pub left_field: Option<String>,
    pub right_field: Option<String>,
    pub left: Value,
    pub right: Value,
}

/// One change to the record and what became of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryItem {
    pub change_id: i64,
    /// `upsert` or `delete`.
    pub op: String,
    /// `webhook`, `poll`, `reconcile`, `backfill` or `replay`.
    pub origin: String,
    /// Epoch milliseconds.
    pub received_at: i64,
    /// The source's own modified time, epoch milliseconds, when it said.
    pub source_modified_at: Option<i64>,
    /// `pending`, `in_flight`, `done` or `dead`.
    pub status: String,
    /// `created`, `written`, `echo`, `stale`, `conflict`, …; null while unsettled.
    pub outcome: Option<String>,
    /// The outcome's particulars (a conflict's values, policy and winner).
    pub detail: Option<Value>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub dead_letter: Option<HistoryLetter>,
}

/// The dead letter a change ended in.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryLetter {
    pub id: i64,
    pub status: String,
}

/// `GET /api/v1/connectors`: rate, concurrency, daily budget used and left, the vendor's own
/// figures, pause and breaker state.
#[utoipa::path(
    get,
    path = "/api/v1/connectors",
    tag = "status",
    operation_id = "list_connectors",
    summary = "Each connector's rate, concurrency, daily budget, the vendor's figures, pause and breaker",
    responses((status = 200, description = "Every configured connector.", body = ConnectorList)),
)]
pub async fn connectors(State(state): State<AppState>) -> Json<ConnectorList> {
    let mut out = Vec::new();
    for (name, connector) in state.connectors.iter() {
        let quota = connector.limiter().snapshot();
        let limits = state
            .settings
            .connectors
            .get(name)
            .map(|c| c.limits().clone())
            .unwrap_or_default();
        out.push(ConnectorStatus {
            name: name.to_string(),
            kind: connector.kind().as_str().into(),
            requests_per_second: limits.requests_per_second,
            burst: limits.burst,
            max_concurrency: limits.max_concurrency,
            paused_for_seconds: quota.paused_for.map(|d| d.as_secs_f64()),
            quota: Quota {
                day: quota.day,
                used: quota.used,
                budget: quota.budget,
                remaining: quota.remaining,
                vendor_used: quota.server_used,
                vendor_max: quota.server_max,
                vendor_window_remaining: quota.window_remaining,
                vendor_window_limit: quota.window_limit,
            },
            breaker: connector.limiter().breaker_state().into(),
        });
    }
    Json(ConnectorList { connectors: out })
}

/// One flow as the operator sees it: mode and schedule, backlog and breaker per side, open
/// dead letters, outcomes since the daemon started (echoes and conflicts among them), and its
/// last run.
async fn flow_status(
    state: &AppState,
    name: &str,
    flow: &crate::config::FlowSettings,
) -> Result<FlowStatus, ApiError> {
    let internal = |e: crate::journal::JournalError| ApiError::internal(&e);
    let now = crate::journal::now_ms();
    let sides = Sides {
        left: side_status(state, &flow.left, now).await?,
        right: side_status(state, &flow.right, now).await?,
    };
    let connectors = [flow.left.connector.as_str(), flow.right.connector.as_str()];
    let count = |outcome| state.metrics.sync_count(name, &connectors, outcome);
    let outcomes = Outcomes {
        conflict: count("conflict"),
        created: count("created"),
        deleted: count("deleted"),
        echo: count("echo"),
        failed: count("failed"),
        linked: count("linked"),
        skipped: count("skipped"),
        stale: count("stale"),
        unlinked: count("unlinked"),
        written: count("written"),
    };
    let last_run = state.journal.last_run(name).await.map_err(internal)?;
    let (mode, next_run) = match &flow.mode {
        FlowMode::Realtime => (Mode::Realtime, None),
        FlowMode::Scheduled(schedule) => {
            let next = crate::schedule::next_after(
                schedule,
                last_run.as_ref().map_or(now, |run| run.started_at),
            );
            let schedule = match schedule {
                Schedule::Every(every) => ScheduleView::Every {
                    every: humantime::format_duration(*every).to_string(),
                },
                Schedule::Cron {
                    expression,
                    timezone,
                    ..
                } => ScheduleView::Cron {
                    cron: expression.clone(),
                    timezone: timezone.name().to_string(),
                },
            };
            (Mode::Scheduled(schedule), Some(next.timestamp_millis()))
        }
    };
    Ok(FlowStatus {
        name: name.to_string(),
        mode,
        direction: flow.direction.as_str().into(),
        sides,
        open_dead_letters: state
            .journal
            .open_dead_letters(name)
            .await
            .map_err(internal)?,
        outcomes_since_start: outcomes,
        last_run,
        next_run_at: next_run,
    })
}

async fn side_status(
    state: &AppState,
    side: &crate::config::SideSettings,
    now: i64,
) -> Result<Side, ApiError> {
    let backlog = state
        .journal
        .backlog(&side.connector, &side.object)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Side {
        connector: side.connector.clone(),
        object: side.object.clone(),
        pending: backlog.pending,
        in_flight: backlog.in_flight,
        oldest_pending_age_seconds: backlog
            .oldest_received_at
            .map(|at| (now - at).max(0) as f64 / 1000.0),
        breaker: state
            .connectors
            .get(&side.connector)
            .map(|c| c.limiter().breaker_state().into()),
    })
}

/// `GET /api/v1/flows`: every flow's status (see [`flow`]).
#[utoipa::path(
    get,
    path = "/api/v1/flows",
    tag = "status",
    operation_id = "list_flows",
    summary = "Each flow's mode, direction, backlog per side, breaker, open dead letters and outcomes",
    responses((status = 200, description = "Every configured flow.", body = FlowList)),
)]
pub async fn flows(State(state): State<AppState>) -> Result<Json<FlowList>, ApiError> {
    let mut out = Vec::new();
    for (name, flow) in &state.settings.flows {
        out.push(flow_status(&state, name, flow).await?);
    }
    Ok(Json(FlowList { flows: out }))
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
#[utoipa::path(
    get,
    path = "/api/v1/flows/{name}",
    tag = "status",
    operation_id = "show_flow",
    summary = "One flow's status with its recent runs",
    params(("name" = String, Path, description = "The flow's name in the configuration.")),
    responses(
        (status = 200, description = "The flow.", body = FlowDetail),
        (status = 404, description = "`unknown_flow`: no flow of that name is configured.", body = ErrorBody),
    ),
)]
pub async fn flow(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<FlowDetail>, ApiError> {
    let settings = known_flow(&state, &name)?;
    let status = flow_status(&state, &name, settings).await?;
    let recent_runs = state
        .journal
        .runs(&name, None, 10)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(FlowDetail {
        status,
        recent_runs,
    }))
}

/// `GET /api/v1/flows/{name}/runs?limit=&cursor=`: a flow's runs, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/flows/{name}/runs",
    tag = "status",
    operation_id = "list_runs",
    summary = "A flow's scheduled runs, newest first",
    params(
        ("name" = String, Path, description = "The flow's name in the configuration."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size, 50 by default."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page, unchanged."),
    ),
    responses(
        (status = 200, description = "A page of runs.", body = RunPage),
        (status = 400, description = "`bad_request`: an unknown parameter or a value out of range.",
            body = ErrorBody),
        (status = 404, description = "`unknown_flow`: no flow of that name is configured.", body = ErrorBody),
    ),
)]
pub async fn runs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<RunPage>, ApiError> {
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
    Ok(Json(RunPage {
        runs,
        next_cursor: next,
    }))
}

/// `POST /api/v1/flows/{name}/run`: start a run of a scheduled flow now. 202 with the run;
/// 409 `run_in_progress` while one runs, 409 `not_scheduled` for a realtime flow.
#[utoipa::path(
    post,
    path = "/api/v1/flows/{name}/run",
    tag = "status",
    operation_id = "start_run",
    summary = "Start a run of a scheduled flow now",
    params(("name" = String, Path, description = "The flow's name in the configuration.")),
    responses(
        (status = 202, description = "Started: the run as it stands.", body = RunStarted),
        (status = 404, description = "`unknown_flow`: no flow of that name is configured.", body = ErrorBody),
        (status = 409, description = "`run_in_progress`: a run of the flow is still going; \
            `not_scheduled`: the flow is realtime.", body = ErrorBody),
    ),
)]
pub async fn run(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(axum::http::StatusCode, Json<RunStarted>), ApiError> {
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
            Ok((axum::http::StatusCode::ACCEPTED, Json(RunStarted { run })))
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

/// A dry run's plan, or the backfill run started.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BackfillAnswer {
    Plan(crate::backfill::Plan),
    Started(RunStarted),
}

/// `POST /api/v1/flows/{name}/backfill`: start a backfill (202 with its run; 409 while a run
/// of the flow is going). `?dry_run=true`: answer what it would link and create, and write
/// nothing.
#[utoipa::path(
    post,
    path = "/api/v1/flows/{name}/backfill",
    tag = "status",
    operation_id = "backfill",
    summary = "Backfill a flow: pair existing records by match key or marker, link, create the rest",
    params(
        ("name" = String, Path, description = "The flow's name in the configuration."),
        ("dry_run" = Option<bool>, Query, description = "Answer the plan; write nothing."),
    ),
    responses(
        (status = 200, description = "The dry run's plan.", body = crate::backfill::Plan),
        (status = 202, description = "Started: the backfill's run (follow it at \
            `/api/v1/flows/{name}/runs/{id}`).", body = RunStarted),
        (status = 400, description = "`bad_request`: an unknown or malformed parameter.", body = ErrorBody),
        (status = 404, description = "`unknown_flow`.", body = ErrorBody),
        (status = 409, description = "`run_in_progress`: a run of the flow is going.", body = ErrorBody),
        (status = 502, description = "`vendor_error`: a side could not be listed.", body = ErrorBody),
    ),
)]
pub async fn backfill(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<(axum::http::StatusCode, Json<BackfillAnswer>), ApiError> {
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
            Ok(plan) => Ok((axum::http::StatusCode::OK, Json(BackfillAnswer::Plan(plan)))),
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
                Json(BackfillAnswer::Started(RunStarted { run })),
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
#[utoipa::path(
    get,
    path = "/api/v1/flows/{name}/runs/{id}",
    tag = "status",
    operation_id = "get_run",
    summary = "One run of a flow, with its progress (checkpoint) while it goes",
    params(
        ("name" = String, Path, description = "The flow's name in the configuration."),
        ("id" = i64, Path, description = "The run's id."),
    ),
    responses(
        (status = 200, description = "The run.", body = Run),
        (status = 404, description = "`unknown_flow`, or `unknown_run`.", body = ErrorBody),
    ),
)]
pub async fn one_run(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Run>, ApiError> {
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
    Ok(Json(run))
}

/// `POST /api/v1/flows/{name}/reconcile?since=24h&repair=true`: compare both sides with the
/// links now and answer the report (kept: `GET` shows the newest).
#[utoipa::path(
    post,
    path = "/api/v1/flows/{name}/reconcile",
    tag = "status",
    operation_id = "reconcile",
    summary = "Compare both sides of a flow with its links; optionally repair",
    params(
        ("name" = String, Path, description = "The flow's name in the configuration."),
        ("since" = Option<String>, Query, description = "Only records modified this long ago or \
            later, e.g. `24h`; default everything."),
        ("repair" = Option<bool>, Query, description = "Append the changes that fix what is found."),
    ),
    responses(
        (status = 200, description = "The report (also kept: `GET` answers the newest).", body = Report),
        (status = 400, description = "`bad_request`: a malformed `since` or `repair`.", body = ErrorBody),
        (status = 404, description = "`unknown_flow`.", body = ErrorBody),
        (status = 502, description = "`vendor_error`: a side could not be listed.", body = ErrorBody),
    ),
)]
pub async fn reconcile(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Report>, ApiError> {
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
        Ok(report) => Ok(Json(report)),
        Err(crate::reconcile::ReconcileError::Vendor(error)) => Err(ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "vendor_error",
            format!("reconcile could not list a side: {error}"),
        )),
        Err(error) => Err(ApiError::internal(&error)),
    }
}

/// `GET /api/v1/flows/{name}/reconcile`: the newest reconcile report of the flow.
#[utoipa::path(
    get,
    path = "/api/v1/flows/{name}/reconcile",
    tag = "status",
    operation_id = "last_reconcile",
    summary = "The newest reconcile report of a flow",
    params(("name" = String, Path, description = "The flow's name in the configuration.")),
    responses(
        (status = 200, description = "The newest report.", body = Report),
        (status = 404, description = "`unknown_flow`, or `no_report`: never reconciled.", body = ErrorBody),
    ),
)]
pub async fn last_reconcile(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Report>, ApiError> {
    known_flow(&state, &name)?;
    let stored = state
        .journal
        .last_reconcile_report(&name)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    stored
        .map(|value| {
            serde_json::from_value::<Report>(value)
                .map(Json)
                .map_err(|e| ApiError::internal(&e))
        })
        .transpose()?
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
#[utoipa::path(
    get,
    path = "/api/v1/records/{connector}/{object}/{id}",
    tag = "status",
    operation_id = "show_record",
    summary = "A record's links and its change history, newest first",
    params(
        ("connector" = String, Path, description = "A configured connector's name."),
        ("object" = String, Path, description = "The vendor's object: `issue`, `Case`, …"),
        ("id" = String, Path, description = "The record's id on that connector."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500,
            description = "History entries per page, 50 by default."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page, unchanged."),
    ),
    responses(
        (status = 200, description = "The record; empty links and history if Tandem never saw it.",
            body = RecordView),
        (status = 400, description = "`bad_request`: an unknown parameter or a value out of range.",
            body = ErrorBody),
        (status = 404, description = "`unknown_connector`: no connector of that name is configured.",
            body = ErrorBody),
    ),
)]
pub async fn record(
    State(state): State<AppState>,
    Path((connector, object, id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<RecordView>, ApiError> {
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
                links.push(RecordLink {
                    flow: flow_name.clone(),
                    side: if left { "left" } else { "right" }.into(),
                    counterpart: Counterpart {
                        connector: other.connector.clone(),
                        object: other.object.clone(),
                        id: counterpart.clone(),
                    },
                    synced: link
                        .synced
                        .iter()
                        .map(|(rule, values)| SyncedField {
                            left_field: flow.fields.get(*rule).map(|r| r.left.clone()),
                            right_field: flow.fields.get(*rule).map(|r| r.right.clone()),
                            left: values.left.clone(),
                            right: values.right.clone(),
                        })
                        .collect(),
                    left_modified_at: link.left_modified_at,
                    right_modified_at: link.right_modified_at,
                });
            }
        }
    }
    let (history, next) = state
        .journal
        .record_history(&connector, &object, &id, before, limit)
        .await
        .map_err(internal)?;
    let history = history
        .into_iter()
        .map(|entry| HistoryItem {
            change_id: entry.id.0,
            op: entry.op,
            origin: entry.origin,
            received_at: entry.received_at,
            source_modified_at: entry.source_modified_at,
            status: entry.status,
            outcome: entry.outcome,
            detail: entry.detail,
            attempts: entry.attempts,
            last_error: entry.last_error,
            dead_letter: entry
                .dead_letter
                .map(|(id, status)| HistoryLetter { id, status }),
        })
        .collect();
    Ok(Json(RecordView {
        connector,
        object,
        id,
        links,
        history,
        next_cursor: next.map(|id| id.0.to_string()),
    }))
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(axum::http::StatusCode::BAD_REQUEST, "bad_request", message)
}
