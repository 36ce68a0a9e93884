//! The admin API under `/api/v1`, behind the admin bearer token: the token check and the dead
//! letters (the status routes are in `status`).
//!
//! Request input is parsed here by hand rather than by axum's extractors so that every mistake
//! answers with the same JSON error body naming the parameter at fault (the extractors' own
//! rejections are plain text). The answers that the token layer adds to every route (401, 503)
//! are documented once, in `openapi`, rather than on each handler.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use super::error::{ErrorBody, ErrorDetail};
use super::{ApiError, AppState};
use crate::journal::{
    DeadLetter, DeadLetterFilter, DeadLetterId, DeadLetterStatus, ReplayError, MAX_DEAD_LETTER_PAGE,
};

/// Letters per page when the client does not say.
const DEFAULT_PAGE: u32 = 50;
/// Most letters one bulk replay resolves; the answer says when more are left.
const MAX_BULK_REPLAY: u32 = 1000;
/// Versioned so the cursor's encoding can change without misreading old cursors.
const CURSOR_PREFIX: &str = "dl1:";

/// The admin routes, relative to `/api/v1`. The caller applies [`require_token`] over them.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/dead-letters", get(list))
        .route("/dead-letters/replay", post(replay_matching))
        .route("/dead-letters/{id}", get(show).delete(discard))
        .route("/dead-letters/{id}/replay", post(replay_one))
        .route("/connectors", get(super::status::connectors))
        .route("/flows", get(super::status::flows))
        .route("/flows/{name}", get(super::status::flow))
        .route("/flows/{name}/runs", get(super::status::runs))
        .route("/flows/{name}/run", post(super::status::run))
        .route("/flows/{name}/runs/{id}", get(super::status::one_run))
        .route("/flows/{name}/backfill", post(super::status::backfill))
        .route(
            "/flows/{name}/reconcile",
            get(super::status::last_reconcile).post(super::status::reconcile),
        )
        .route(
            "/records/{connector}/{object}/{id}",
            get(super::status::record),
        )
        // Its own fallback so that the token layer covers unknown paths too: without the token
        // nobody learns which admin paths exist.
        .fallback(|| async { ApiError::not_found("not_found", "no such endpoint") })
}

/// Refuse every admin request without the configured bearer token.
///
/// No token configured means the admin API is off, never open. The token is compared as a
/// SHA-256 digest in constant time: equal-length digests leak neither the token's bytes nor its
/// length through timing. Neither the presented nor the configured token is ever logged.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.settings.admin.token.as_ref() else {
        return ApiError::unavailable(
            "admin_disabled",
            "the admin API is disabled: set `admin.token` to enable it, e.g. \
             [admin] token = { env = \"TANDEM_ADMIN_TOKEN\" } or { file = \"/path\" }",
        )
        .into_response();
    };
    match bearer(request.headers()) {
        Some(presented) if same_token(presented.as_bytes(), expected.expose().as_bytes()) => {
            next.run(request).await
        }
        _ => unauthorized(),
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, RFC 7235).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

fn same_token(presented: &[u8], expected: &[u8]) -> bool {
    let presented = Sha256::digest(presented);
    let expected = Sha256::digest(expected);
    presented.ct_eq(&expected).into()
}

fn unauthorized() -> Response {
    // One answer for a missing, malformed or wrong token: the caller learns nothing about which.
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid admin token is required: send `Authorization: Bearer <admin.token>`",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tandem-admin\""),
    );
    response
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A page of dead letters, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetterItem>,
    /// Pass back as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// A dead letter as listed: everything but the payload and the snapshot, which may be large.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterItem {
    pub id: i64,
    /// The flow the failed write was for.
    pub flow: Option<String>,
    /// The connector whose write failed.
    pub connector: String,
    /// The connector the change came from.
    pub source_connector: String,
    pub object: String,
    /// The record's id on the source side.
    pub record_id: String,
    /// The change that failed.
    pub change_id: i64,
    /// What was attempted, in words: `create Case`, `update issue 10001`, `read Case 500…`.
    pub operation: String,
    /// The vendor's HTTP status, when it answered.
    pub http_status: Option<u16>,
    pub vendor_code: Option<String>,
    pub vendor_message: Option<String>,
    pub attempts: i64,
    /// RFC 3339, UTC.
    pub first_failed_at: String,
    /// RFC 3339, UTC.
    pub last_failed_at: String,
    pub status: LetterStatus,
    /// The change a replay appended.
    pub replay_change_id: Option<i64>,
}

/// A dead letter's whole story: the list item plus what was refused and where it came from.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterDetail {
    #[serde(flatten)]
    pub item: DeadLetterItem,
    /// What was sent to the vendor (or would have been).
    pub payload: Value,
    /// The change's operation: `upsert` or `delete`.
    pub op: String,
    /// How the change arrived: `webhook`, `poll`, `reconcile`, `backfill` or `replay`.
    pub origin: String,
    /// The fields the change observed (possibly partial).
    pub snapshot: Value,
    /// When it stopped being open, RFC 3339, UTC.
    pub resolved_at: Option<String>,
}

/// Mirrors the journal's `DeadLetterStatus` so that the document lists the values.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LetterStatus {
    Open,
    Replayed,
    Discarded,
    Superseded,
}

impl From<DeadLetterStatus> for LetterStatus {
    fn from(status: DeadLetterStatus) -> Self {
        match status {
            DeadLetterStatus::Open => LetterStatus::Open,
            DeadLetterStatus::Replayed => LetterStatus::Replayed,
            DeadLetterStatus::Discarded => LetterStatus::Discarded,
            DeadLetterStatus::Superseded => LetterStatus::Superseded,
        }
    }
}

/// The answer to a replay of one dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub dead_letter: i64,
    /// The change the replay appended; the engine reads the record's state afresh for it.
    pub change_id: i64,
}

/// The answer to a replay by filter.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkReplayed {
    /// How many letters were replayed.
    pub replayed: usize,
    /// The changes the replays appended, in the order of `dead_letters`.
    pub change_ids: Vec<i64>,
    /// The letters replayed, oldest first.
    pub dead_letters: Vec<i64>,
    /// More open letters matched than one call replays: call again.
    pub more: bool,
}

/// `GET /api/v1/dead-letters`
#[utoipa::path(
    get,
    path = "/api/v1/dead-letters",
    tag = "dead letters",
    operation_id = "list_dead_letters",
    summary = "Failed changes, newest first",
    params(
        ("flow" = Option<String>, Query, description = "Only this flow's letters."),
        ("connector" = Option<String>, Query, description = "Only letters whose write to this connector failed."),
        ("code" = Option<String>, Query, description = "Only this vendor error code."),
        ("status" = Option<String>, Query,
            description = "`open` (the default), `replayed`, `discarded`, `superseded`, or `any`."),
        ("since" = Option<String>, Query,
            description = "Last failed at or after: RFC 3339 or epoch milliseconds."),
        ("until" = Option<String>, Query,
            description = "Last failed before: RFC 3339 or epoch milliseconds."),
        ("limit" = Option<u32>, Query, minimum = 1,
            description = "Page size, 50 by default; larger values are capped, not refused."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page, unchanged."),
    ),
    responses(
        (status = 200, description = "A page of dead letters.", body = DeadLetterPage),
        (status = 400, description = "`bad_request`: an unknown parameter or a value that does not parse.",
            body = ErrorBody),
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let mut filter = DeadLetterFilter::default();
    let mut limit = DEFAULT_PAGE;
    let mut cursor = None;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        // An empty value (`?flow=`) means "not filtered", as HTML forms send it.
        if value.is_empty() {
            continue;
        }
        let value = value.into_owned();
        match name.as_ref() {
            "flow" => filter.flow = Some(value),
            "connector" => filter.connector = Some(value),
            "code" => filter.code = Some(value),
            "status" => filter.status = parse_status(&value)?,
            "since" => filter.since = Some(parse_time("since", &value)?),
            "until" => filter.until = Some(parse_time("until", &value)?),
            "limit" => limit = parse_limit(&value)?,
            "cursor" => cursor = Some(decode_cursor(&value)?),
            other => {
                return Err(bad_request(format!(
                    "unknown query parameter `{other}`; expected flow, connector, code, status, \
                     since, until, limit or cursor"
                )))
            }
        }
    }
    let (letters, next) = state
        .journal
        .list_dead_letters(&filter, cursor, limit)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(DeadLetterPage {
        items: letters.iter().map(item).collect(),
        next_cursor: next.map(encode_cursor),
    }))
}

/// `GET /api/v1/dead-letters/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/dead-letters/{id}",
    tag = "dead letters",
    operation_id = "show_dead_letter",
    summary = "One dead letter, with the payload that was refused and the change it came from",
    params(("id" = i64, Path, minimum = 1, description = "The dead letter's id.")),
    responses(
        (status = 200, description = "The dead letter.", body = DeadLetterDetail),
        (status = 400, description = "`bad_request`: the id is not a positive integer.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dead letter.", body = ErrorBody),
    ),
)]
pub(super) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterDetail>, ApiError> {
    let id = parse_id(&id)?;
    let letter = state
        .journal
        .dead_letter_by_id(id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| missing(id))?;
    Ok(Json(DeadLetterDetail {
        item: item(&letter),
        op: letter.change.op.as_str().into(),
        origin: letter.change.origin.as_str().into(),
        resolved_at: letter.resolved_at.map(rfc3339),
        payload: letter.payload,
        snapshot: letter.change.snapshot,
    }))
}

/// `POST /api/v1/dead-letters/{id}/replay`
#[utoipa::path(
    post,
    path = "/api/v1/dead-letters/{id}/replay",
    tag = "dead letters",
    operation_id = "replay_dead_letter",
    summary = "Send one open dead letter's record through the engine again, with fresh state",
    params(("id" = i64, Path, minimum = 1, description = "The dead letter's id.")),
    responses(
        (status = 202, description = "Replayed: a change is appended and the letter is `replayed`.",
            body = Replayed),
        (status = 400, description = "`bad_request`: the id is not a positive integer.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dead letter.", body = ErrorBody),
        (status = 409, description = "`not_open`: the letter was already resolved; `error.status` says how.",
            body = ErrorBody),
    ),
)]
pub(super) async fn replay_one(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(error) => return error.into_response(),
    };
    match state.journal.replay_dead_letter(id).await {
        Ok(change) => {
            tracing::info!(dead_letter = %id, change_id = %change, "dead letter replayed");
            (
                StatusCode::ACCEPTED,
                Json(Replayed {
                    dead_letter: id.0,
                    change_id: change.0,
                }),
            )
                .into_response()
        }
        Err(error) => resolve_failed(error),
    }
}

/// The body of `POST /api/v1/dead-letters/replay`: which open letters to replay, every field
/// narrowing (`{}` for all). No `status`: only open letters replay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkFilter {
    flow: Option<String>,
    connector: Option<String>,
    code: Option<String>,
    /// Last failed at or after.
    since: Option<TimeArg>,
    /// Last failed before.
    until: Option<TimeArg>,
}

/// A time in a JSON body: epoch milliseconds as a number, or a string the query accepts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TimeArg {
    Millis(i64),
    Text(String),
}

impl TimeArg {
    fn millis(&self, name: &str) -> Result<i64, ApiError> {
        match self {
            TimeArg::Millis(ms) => Ok(*ms),
            TimeArg::Text(text) => parse_time(name, text),
        }
    }
}

/// `POST /api/v1/dead-letters/replay`
///
/// The body is required even to mean "everything": `{}` is a deliberate choice, an empty POST
/// might be an accident.
#[utoipa::path(
    post,
    path = "/api/v1/dead-letters/replay",
    tag = "dead letters",
    operation_id = "replay_dead_letters",
    summary = "Replay every open dead letter matching a filter",
    description = "At most 1000 letters per call; `more` says when others matched.",
    request_body(content = BulkFilter, description = "`{}` for every open dead letter; required even then."),
    responses(
        (status = 202, description = "Replayed.", body = BulkReplayed),
        (status = 400, description = "`bad_request`: the body is not such an object, or a time does not parse.",
            body = ErrorBody),
    ),
)]
pub(super) async fn replay_matching(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<BulkReplayed>), ApiError> {
    let body: BulkFilter = serde_json::from_slice(&body).map_err(|e| {
        bad_request(format!(
            "the body must be a JSON object with any of flow, connector, code, since, until \
             (`{{}}` for every open dead letter): {e}"
        ))
    })?;
    let filter = DeadLetterFilter {
        flow: body.flow,
        connector: body.connector,
        code: body.code,
        status: Some(DeadLetterStatus::Open),
        since: body.since.map(|t| t.millis("since")).transpose()?,
        until: body.until.map(|t| t.millis("until")).transpose()?,
    };
    let replay = state
        .journal
        .replay_dead_letters(&filter, MAX_BULK_REPLAY)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    tracing::info!(
        replayed = replay.replayed.len(),
        more = replay.more,
        "dead letters replayed by filter"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(BulkReplayed {
            replayed: replay.replayed.len(),
            change_ids: replay.replayed.iter().map(|(_, c)| c.0).collect(),
            dead_letters: replay.replayed.iter().map(|(d, _)| d.0).collect(),
            more: replay.more,
        }),
    ))
}

/// `DELETE /api/v1/dead-letters/{id}`
#[utoipa::path(
    delete,
    path = "/api/v1/dead-letters/{id}",
    tag = "dead letters",
    operation_id = "discard_dead_letter",
    summary = "Give up on an open dead letter",
    params(("id" = i64, Path, minimum = 1, description = "The dead letter's id.")),
    responses(
        (status = 204, description = "Discarded."),
        (status = 400, description = "`bad_request`: the id is not a positive integer.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such dead letter.", body = ErrorBody),
        (status = 409, description = "`not_open`: the letter was already resolved; `error.status` says how.",
            body = ErrorBody),
    ),
)]
pub(super) async fn discard(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(error) => return error.into_response(),
    };
    match state.journal.discard_dead_letter(id).await {
        Ok(()) => {
            tracing::info!(dead_letter = %id, "dead letter discarded");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => resolve_failed(error),
    }
}

fn missing(id: DeadLetterId) -> ApiError {
    ApiError::not_found("not_found", format!("dead letter {id} does not exist"))
}

fn resolve_failed(error: ReplayError) -> Response {
    match error {
        ReplayError::NotFound(id) => missing(id).into_response(),
        // The usual error body, plus the status as its own field so a client need not parse
        // the message to show it.
        ReplayError::NotOpen { id, status } => (
            StatusCode::CONFLICT,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: "not_open".into(),
                    message: format!(
                        "dead letter {id} is {status}; only open dead letters can be replayed \
                         or discarded"
                    ),
                    status: Some(status.as_str().into()),
                },
            }),
        )
            .into_response(),
        ReplayError::Journal(error) => ApiError::internal(&error).into_response(),
    }
}

fn item(letter: &DeadLetter) -> DeadLetterItem {
    DeadLetterItem {
        id: letter.id.0,
        flow: letter.flow.clone(),
        connector: letter.connector.clone(),
        source_connector: letter.change.connector.clone(),
        object: letter.change.object.clone(),
        record_id: letter.change.record_id.clone(),
        change_id: letter.change.id.0,
        operation: letter.operation.clone(),
        http_status: letter.http_status,
        vendor_code: letter.vendor_code.clone(),
        vendor_message: letter.vendor_message.clone(),
        attempts: letter.attempts,
        first_failed_at: rfc3339(letter.first_failed_at),
        last_failed_at: rfc3339(letter.last_failed_at),
        status: letter.status.into(),
        replay_change_id: letter.replay_change_id.map(|c| c.0),
    }
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

fn parse_id(raw: &str) -> Result<DeadLetterId, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(DeadLetterId)
        .ok_or_else(|| bad_request(format!("dead letter id `{raw}` is not a positive integer")))
}

fn parse_status(raw: &str) -> Result<Option<DeadLetterStatus>, ApiError> {
    if raw == "any" {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        bad_request(format!(
            "status `{raw}` is not one of open, replayed, discarded, superseded, any"
        ))
    })
}

fn parse_limit(raw: &str) -> Result<u32, ApiError> {
    // Too large is not a mistake worth refusing: the page is capped and `next_cursor` says more.
    match raw.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n.min(MAX_DEAD_LETTER_PAGE)),
        _ => Err(bad_request(format!(
            "limit `{raw}` is not a positive integer (at most {MAX_DEAD_LETTER_PAGE} are returned)"
        ))),
    }
}

/// RFC 3339 (`2026-01-31T12:00:00Z`, any offset) or Unix epoch milliseconds.
fn parse_time(name: &str, raw: &str) -> Result<i64, ApiError> {
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw.parse().map_err(|_| {
            bad_request(format!(
                "`{name}`: {raw} is too large for epoch milliseconds"
            ))
        });
    }
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            bad_request(format!(
                "`{name}`: `{raw}` is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor epoch \
                 milliseconds: {e}"
            ))
        })
}

fn encode_cursor(id: DeadLetterId) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{id}"))
}

fn decode_cursor(raw: &str) -> Result<DeadLetterId, ApiError> {
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(CURSOR_PREFIX)?.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .map(DeadLetterId)
        .ok_or_else(|| {
            bad_request("`cursor` is not one this server issued; pass `next_cursor` unchanged")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        let cursor = encode_cursor(DeadLetterId(42));
        assert_eq!(decode_cursor(&cursor).unwrap(), DeadLetterId(42));
        for bad in ["", "42", "!!", &URL_SAFE_NO_PAD.encode("dl1:-3")] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_rfc3339_or_epoch_millis() {
        assert_eq!(
            parse_time("since", "1700000000000").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("since", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("since", "2023-11-15T00:13:20+02:00").unwrap(),
            1_700_000_000_000
        );
        let error = parse_time("until", "yesterday").unwrap_err();
        assert!(error.message.contains("until"), "{}", error.message);
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn only_a_well_formed_bearer_header_yields_a_token() {
        let header = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(bearer(&header("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&header("bearer abc")), Some("abc"));
        assert_eq!(bearer(&header("Basic abc")), None);
        assert_eq!(bearer(&header("Bearer")), None);
        assert_eq!(bearer(&header("Bearer ")), None);
        assert_eq!(bearer(&header("Bearer a b")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abc", b"abd"));
        assert!(!same_token(b"abc", b"abcd"));
    }
}
