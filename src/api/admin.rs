//! The admin API under `/api/v1`, behind the admin bearer token: dead letters for now.
//!
//! Request input is parsed here by hand rather than by axum's extractors so that every mistake
//! answers with the same JSON error body naming the parameter at fault (the extractors' own
//! rejections are plain text).

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
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

/// `GET /api/v1/dead-letters`
async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "items": letters.iter().map(item).collect::<Vec<_>>(),
        "next_cursor": next.map(encode_cursor),
    })))
}

/// `GET /api/v1/dead-letters/{id}`
async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let letter = state
        .journal
        .dead_letter_by_id(id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| missing(id))?;
    let mut body = item(&letter);
    if let Value::Object(fields) = &mut body {
        fields.insert("payload".into(), letter.payload.clone());
        fields.insert("op".into(), letter.change.op.as_str().into());
        fields.insert("origin".into(), letter.change.origin.as_str().into());
        fields.insert("snapshot".into(), letter.change.snapshot.clone());
        fields.insert("resolved_at".into(), letter.resolved_at.map(rfc3339).into());
    }
    Ok(Json(body))
}

/// `POST /api/v1/dead-letters/{id}/replay`
async fn replay_one(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(error) => return error.into_response(),
    };
    match state.journal.replay_dead_letter(id).await {
        Ok(change) => {
            tracing::info!(dead_letter = %id, change_id = %change, "dead letter replayed");
            (
                StatusCode::ACCEPTED,
                Json(json!({ "dead_letter": id, "change_id": change })),
            )
                .into_response()
        }
        Err(error) => resolve_failed(error),
    }
}

/// The body of `POST /api/v1/dead-letters/replay`. No `status`: only open letters replay.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkFilter {
    flow: Option<String>,
    connector: Option<String>,
    code: Option<String>,
    since: Option<TimeArg>,
    until: Option<TimeArg>,
}

/// A time in a JSON body: epoch milliseconds as a number, or a string the query accepts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TimeArg {
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
async fn replay_matching(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
        Json(json!({
            "replayed": replay.replayed.len(),
            "change_ids": replay.replayed.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
            "dead_letters": replay.replayed.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
            "more": replay.more,
        })),
    ))
}

/// `DELETE /api/v1/dead-letters/{id}`
async fn discard(State(state): State<AppState>, Path(id): Path<String>) -> Response {
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
            Json(json!({ "error": {
                "code": "not_open",
                "message": format!("dead letter {id} is {status}; only open dead letters can be \
                                    replayed or discarded"),
                "status": status.as_str(),
            }})),
        )
            .into_response(),
        ReplayError::Journal(error) => ApiError::internal(&error).into_response(),
    }
}

/// A list item: everything but the (possibly large) payload and snapshot.
fn item(letter: &DeadLetter) -> Value {
    json!({
        "id": letter.id,
        "flow": letter.flow,
        "connector": letter.connector,
        "source_connector": letter.change.connector,
        "object": letter.change.object,
        "record_id": letter.change.record_id,
        "change_id": letter.change.id,
        "operation": letter.operation,
        "http_status": letter.http_status,
        "vendor_code": letter.vendor_code,
        "vendor_message": letter.vendor_message,
        "attempts": letter.attempts,
        "first_failed_at": rfc3339(letter.first_failed_at),
        "last_failed_at": rfc3339(letter.last_failed_at),
        "status": letter.status.as_str(),
        "replay_change_id": letter.replay_change_id,
    })
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
