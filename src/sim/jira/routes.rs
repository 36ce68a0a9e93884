//! The Jira emulator's HTTP surface: `/rest/api/{2,3}/…` over one store, and admin webhooks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};

use super::jql;
use super::render::{self, FieldSelection};
use super::store::{format_time, Api, Event, Issue, JiraError, Store};
use super::webhooks;
use crate::sim::control::Control;
use crate::sim::outbox::Outbox;

#[derive(Clone)]
pub struct Sim {
    pub store: Arc<Mutex<Store>>,
    pub outbox: Arc<Outbox>,
    pub control: Arc<Control>,
    pub limiter: Arc<Mutex<RateWindow>>,
    pub burst: Arc<Mutex<BurstLimit>>,
}

impl Sim {
    /// The store. A handler that panicked mid-request must not take the emulator down with
    /// it, so a poisoned lock is recovered rather than propagated.
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Send the webhooks an event produces (built under the lock, sent after it).
    fn emit(&self, store: &Store, event: &Event, actor: &str) {
        let now = chrono::Utc::now().timestamp_millis();
        for delivery in webhooks::deliveries(store, event, actor, now) {
            self.outbox
                .send_numbered(delivery, "X-Atlassian-Webhook-Retry");
        }
    }
}

/// A points budget per window, as Jira Cloud's quota works; `limit = 0` turns it off.
pub struct RateWindow {
    pub limit: u64,
    pub window: Duration,
    started: Instant,
    used: u64,
}

impl RateWindow {
    pub fn new(limit: u64, window: Duration) -> Self {
        RateWindow {
            limit,
            window,
            started: Instant::now(),
            used: 0,
        }
    }
}

/// Jira's per-second burst limit, per endpoint and method: above `limit` calls in a one-second
/// window, 429 with `Retry-After` and `RateLimit-Reason: jira-burst-based`; `limit = 0` turns it
/// off. Unlike the points quota it sends no `X-RateLimit-*` headers on the calls it lets through
/// (Atlassian documents those for the quota; what a burst-limited answer carries besides
/// `Retry-After` and the reason is not confirmed). The real defaults (about 100/s for GET and
/// POST, 50/s for PUT and DELETE) are unconfirmed too; here one limit applies to each endpoint.
pub struct BurstLimit {
    pub limit: u64,
    windows: HashMap<(Method, String), (Instant, u64)>,
}

impl BurstLimit {
    pub fn new(limit: u64) -> Self {
        BurstLimit {
            limit,
            windows: HashMap::new(),
        }
    }

    /// Spend one call on `endpoint`; `Err(wait)` when its second is used up.
    fn spend(&mut self, endpoint: (Method, String)) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let (started, used) = self.windows.entry(endpoint).or_insert((now, 0));
        if now.duration_since(*started) >= Duration::from_secs(1) {
            *started = now;
            *used = 0;
        }
        if *used >= self.limit {
            return Err(Duration::from_secs(1).saturating_sub(now.duration_since(*started)));
        }
        *used += 1;
        Ok(())
    }
}

impl IntoResponse for JiraError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self.body())).into_response()
    }
}

type Answer = Result<Response, JiraError>;

/// The authenticated account: HTTP basic (email + API token) or an OAuth bearer token.
pub struct Caller(pub String);

fn unauthenticated() -> Response {
    // Jira Cloud answers some 401s in plain text; clients must parse both shapes.
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/plain;charset=UTF-8")],
        "Client must be authenticated to access this resource.",
    )
        .into_response()
}

impl FromRequestParts<Sim> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, sim: &Sim) -> Result<Self, Response> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(unauthenticated)?;
        let store = sim.lock();
        if let Some(encoded) = header.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(unauthenticated)?;
            let (email, token) = decoded.split_once(':').ok_or_else(unauthenticated)?;
            return store
                .accounts
                .iter()
                .find(|a| a.email.eq_ignore_ascii_case(email) && a.api_token == token)
                .map(|a| Caller(a.account_id.clone()))
                .ok_or_else(unauthenticated);
        }
        if let Some(token) = header.strip_prefix("Bearer ") {
            return store
                .oauth_tokens
                .get(token.trim())
                .map(|account| Caller(account.clone()))
                .ok_or_else(unauthenticated);
        }
        Err(unauthenticated())
    }
}

/// A caller who may be anonymous: no `Authorization` header is `None`; a header with bad
/// credentials is still a 401.
pub struct MaybeCaller(pub Option<Caller>);

impl FromRequestParts<Sim> for MaybeCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, sim: &Sim) -> Result<Self, Response> {
        if parts.headers.contains_key(header::AUTHORIZATION) {
            Caller::from_request_parts(parts, sim)
                .await
                .map(|c| MaybeCaller(Some(c)))
        } else {
            Ok(MaybeCaller(None))
        }
    }
}

/// The `2` or `3` in `/rest/api/{version}/…`.
pub struct Version(pub Api);

impl FromRequestParts<Sim> for Version {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &Sim) -> Result<Self, Response> {
        match parts.uri.path().split('/').nth(3) {
            Some("2") => Ok(Version(Api::V2)),
            Some("3") => Ok(Version(Api::V3)),
            _ => Err(JiraError::new(404, "Unknown API version.").into_response()),
        }
    }
}

fn json_body(bytes: &[u8]) -> Result<Value, JiraError> {
    serde_json::from_slice(bytes).map_err(|e| {
        JiraError::new(
            400,
            format!("Unexpected character or malformed JSON in the request body: {e}"),
        )
    })
}

fn ok(status: StatusCode, value: Value) -> Answer {
    Ok((status, Json(value)).into_response())
}

fn find_id(store: &Store, key: &str) -> Result<u64, JiraError> {
    store.resolve(key).ok_or_else(JiraError::issue_not_found)
}

pub fn router(sim: Sim) -> Router {
    let api = Router::new()
        .route("/rest/api/{v}/myself", get(myself))
        .route("/rest/api/{v}/serverInfo", get(server_info))
        .route("/rest/api/{v}/field", get(fields))
        .route("/rest/api/{v}/priority", get(priorities))
        .route("/rest/api/{v}/status", get(statuses))
        .route("/rest/api/{v}/issuetype", get(issue_types))
        .route("/rest/api/{v}/project", get(projects))
        .route("/rest/api/{v}/project/search", get(project_search))
        .route("/rest/api/{v}/project/{key}", get(project))
        .route(
            "/rest/api/{v}/issue/createmeta/{project}/issuetypes",
            get(createmeta_types),
        )
        .route(
            "/rest/api/{v}/issue/createmeta/{project}/issuetypes/{type}",
            get(createmeta_fields),
        )
        .route("/rest/api/{v}/issue", post(create_issue))
        .route("/rest/api/{v}/issue/bulk", post(bulk_create))
        .route(
            "/rest/api/{v}/issue/{key}",
            get(get_issue).put(edit_issue).delete(delete_issue),
        )
        .route("/rest/api/{v}/issue/{key}/changelog", get(changelog))
        .route(
            "/rest/api/{v}/issue/{key}/transitions",
            get(transitions).post(do_transition),
        )
        .route(
            "/rest/api/{v}/issue/{key}/comment",
            get(list_comments).post(add_comment),
        )
        .route(
            "/rest/api/{v}/issue/{key}/comment/{id}",
            get(get_comment).put(update_comment).delete(delete_comment),
        )
        .route("/rest/api/{v}/issue/{key}/properties", get(property_keys))
        .route(
            "/rest/api/{v}/issue/{key}/properties/{prop}",
            get(get_property).put(put_property).delete(delete_property),
        )
        .route(
            "/rest/api/{v}/search/jql",
            get(search_jql_get).post(search_jql_post),
        )
        .route(
            "/rest/api/{v}/search/approximate-count",
            post(approximate_count),
        )
        .route(
            "/rest/api/{v}/search",
            get(search_old_get).post(search_old_post),
        )
        .route(
            "/rest/webhooks/1.0/webhook",
            get(list_webhooks).post(register_webhook),
        )
        .route(
            "/rest/webhooks/1.0/webhook/{id}",
            get(get_webhook).delete(delete_webhook),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            rate_limit,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            sim.control.clone(),
            crate::sim::control::inject,
        ));
    api.with_state(sim)
}

enum Budget {
    Unlimited,
    Exhausted(Response),
    Spent {
        limit: u64,
        remaining: u64,
        reset: Duration,
    },
}

/// Count every call against the window's budget and report it in Jira's headers.
async fn rate_limit(State(sim): State<Sim>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || request.uri().path().to_string(),
            |p| p.as_str().to_string(),
        );
    let burst = sim
        .burst
        .lock()
        .expect("burst lock")
        .spend((request.method().clone(), endpoint));
    if let Err(wait) = burst {
        // Retry-After is whole seconds: the rest of this second rounds up to 1.
        return sim.control.rate_limited(wait.as_secs().max(1));
    }
    match spend(&sim) {
        Budget::Unlimited => next.run(request).await,
        Budget::Exhausted(response) => response,
        Budget::Spent {
            limit,
            remaining,
            reset,
        } => {
            let mut response = next.run(request).await;
            let headers = response.headers_mut();
            headers.insert("X-RateLimit-Limit", HeaderValue::from(limit));
            headers.insert("X-RateLimit-Remaining", HeaderValue::from(remaining));
            set_reset(
                headers,
                chrono::Utc::now() + chrono::Duration::from_std(reset).unwrap_or_default(),
            );
            if remaining * 5 < limit {
                headers.insert("X-RateLimit-NearLimit", HeaderValue::from_static("true"));
            }
            response
        }
    }
}

fn spend(sim: &Sim) -> Budget {
    let mut w = sim.limiter.lock().expect("limiter lock");
    if w.limit == 0 {
        return Budget::Unlimited;
    }
    if w.started.elapsed() >= w.window {
        w.started = Instant::now();
        w.used = 0;
    }
    let reset = w.window.saturating_sub(w.started.elapsed());
    if w.used >= w.limit {
        let reset_at = chrono::Utc::now() + chrono::Duration::from_std(reset).unwrap_or_default();
        let mut response = sim.control.rate_limited(reset.as_secs().max(1));
        let headers = response.headers_mut();
        headers.insert("X-RateLimit-Limit", HeaderValue::from(w.limit));
        headers.insert("X-RateLimit-Remaining", HeaderValue::from(0));
        set_reset(headers, reset_at);
        headers.insert(
            "RateLimit-Reason",
            HeaderValue::from_static("jira-quota-tenant-based"),
        );
        return Budget::Exhausted(response);
    }
    w.used += 1;
    Budget::Spent {
        limit: w.limit,
        remaining: w.limit - w.used,
        reset,
    }
}

fn set_reset(headers: &mut HeaderMap, at: chrono::DateTime<chrono::Utc>) {
    // ISO 8601 to the minute, as Jira sends it: yyyy-MM-ddTHH:mmZ.
    if let Ok(v) = HeaderValue::from_str(&at.format("%Y-%m-%dT%H:%MZ").to_string()) {
        headers.insert("X-RateLimit-Reset", v);
    }
}

async fn myself(State(sim): State<Sim>, caller: Caller, _: Version) -> Answer {
    let store = sim.lock();
    let mut user = render::user(&store, &caller.0);
    user["locale"] = json!("en_US");
    user["groups"] = json!({ "size": 1, "items": [] });
    ok(StatusCode::OK, user)
}

async fn server_info(State(sim): State<Sim>, _: Version) -> Answer {
    let store = sim.lock();
    ok(
        StatusCode::OK,
        json!({
            "baseUrl": store.base_url,
            "displayUrl": store.base_url,
            "version": "1001.0.0-SNAPSHOT",
            "versionNumbers": [1001, 0, 0],
            "deploymentType": "Cloud",
            "buildNumber": 100_289,
            "buildDate": "2026-11-01T00:00:00.000+0000",
            "serverTime": format_time(chrono::Utc::now()),
            "scmInfo": "tandem-sim",
            "serverTitle": "Jira",
            "serverTimeZone": "Etc/UTC",
        }),
    )
}

async fn fields(State(sim): State<Sim>, _: Caller, _: Version) -> Answer {
    let store = sim.lock();
    let system = [
        ("summary", "Summary", "string"),
        ("description", "Description", "string"),
        ("status", "Status", "status"),
        ("priority", "Priority", "priority"),
        ("issuetype", "Issue Type", "issuetype"),
        ("project", "Project", "project"),
        ("labels", "Labels", "array"),
        ("assignee", "Assignee", "user"),
        ("reporter", "Reporter", "user"),
        ("created", "Created", "datetime"),
        ("updated", "Updated", "datetime"),
        ("duedate", "Due date", "date"),
        ("comment", "Comment", "comments-page"),
    ];
    let mut out: Vec<Value> = system
        .iter()
        .map(|(id, name, kind)| {
            json!({
                "id": id, "key": id, "name": name, "custom": false, "orderable": true,
                "navigable": true, "searchable": true, "clauseNames": [id],
                "schema": { "type": kind, "system": id },
            })
        })
        .collect();
    for f in &store.custom_fields {
        let number = f.id.trim_start_matches("customfield_");
        let kind = match f.kind {
            super::store::FieldKind::String => "string",
            super::store::FieldKind::Number => "number",
            super::store::FieldKind::Date => "date",
            super::store::FieldKind::Datetime => "datetime",
        };
        out.push(json!({
            "id": f.id, "key": f.id, "name": f.name, "custom": true, "orderable": true,
            "navigable": true, "searchable": true,
            "clauseNames": [format!("cf[{number}]"), f.name],
            "schema": {
                "type": kind,
                "custom": "com.atlassian.jira.plugin.system.customfieldtypes:textfield",
                "customId": number.parse::<u64>().unwrap_or(0),
            },
        }));
    }
    ok(StatusCode::OK, Value::Array(out))
}

async fn priorities(State(sim): State<Sim>, _: Caller, _: Version) -> Answer {
    let store = sim.lock();
    let list: Vec<Value> = store
        .priorities
        .iter()
        .map(|p| render::priority(&store, &p.id))
        .collect();
    ok(StatusCode::OK, Value::Array(list))
}

async fn statuses(State(sim): State<Sim>, _: Caller, _: Version) -> Answer {
    let store = sim.lock();
    let list: Vec<Value> = store
        .statuses
        .iter()
        .map(|s| render::status(&store, &s.id))
        .collect();
    ok(StatusCode::OK, Value::Array(list))
}

async fn issue_types(State(sim): State<Sim>, _: Caller, _: Version) -> Answer {
    let store = sim.lock();
    let list: Vec<Value> = store
        .issue_types
        .iter()
        .map(|t| render::issue_type(&store, &t.id))
        .collect();
    ok(StatusCode::OK, Value::Array(list))
}

fn project_full(store: &Store, key: &str) -> Option<Value> {
    let p = store.project(key)?;
    let mut value = render::project(store, &p.id);
    value["issueTypes"] = Value::Array(
        p.issue_types
            .iter()
            .map(|t| render::issue_type(store, t))
            .collect(),
    );
    Some(value)
}

async fn projects(State(sim): State<Sim>, _: Caller, _: Version) -> Answer {
    let store = sim.lock();
    let list: Vec<Value> = store
        .projects
        .iter()
        .filter_map(|p| project_full(&store, &p.id))
        .collect();
    ok(StatusCode::OK, Value::Array(list))
}

async fn project_search(State(sim): State<Sim>, _: Caller, _: Version) -> Answer {
    let store = sim.lock();
    let list: Vec<Value> = store
        .projects
        .iter()
        .filter_map(|p| project_full(&store, &p.id))
        .collect();
    ok(
        StatusCode::OK,
        json!({ "startAt": 0, "maxResults": 50, "total": list.len(), "isLast": true, "values": list }),
    )
}

async fn project(
    State(sim): State<Sim>,
    _: Caller,
    _: Version,
    Path((_, key)): Path<(String, String)>,
) -> Answer {
    let store = sim.lock();
    project_full(&store, &key)
        .map(|p| (StatusCode::OK, Json(p)).into_response())
        .ok_or_else(|| JiraError::new(404, format!("No project could be found with key '{key}'.")))
}

async fn createmeta_types(
    State(sim): State<Sim>,
    _: Caller,
    _: Version,
    Path((_, key)): Path<(String, String)>,
) -> Answer {
    let store = sim.lock();
    let p = store.project(&key).ok_or_else(|| {
        JiraError::new(404, format!("No project could be found with key '{key}'."))
    })?;
    let types: Vec<Value> = p
        .issue_types
        .iter()
        .map(|t| render::issue_type(&store, t))
        .collect();
    ok(
        StatusCode::OK,
        json!({ "startAt": 0, "maxResults": 50, "total": types.len(), "issueTypes": types }),
    )
}

async fn createmeta_fields(
    State(sim): State<Sim>,
    _: Caller,
    _: Version,
    Path((_, key, type_id)): Path<(String, String, String)>,
) -> Answer {
    let store = sim.lock();
    let p = store.project(&key).ok_or_else(|| {
        JiraError::new(404, format!("No project could be found with key '{key}'."))
    })?;
    if !p.issue_types.contains(&type_id) {
        return Err(JiraError::new(
            404,
            "The issue type is not valid for this project.",
        ));
    }
    let field = |id: &str, name: &str, required: bool, kind: &str| {
        json!({
            "fieldId": id, "key": id, "name": name, "required": required, "hasDefaultValue": false,
            "operations": ["set"], "schema": { "type": kind, "system": id },
        })
    };
    let mut fields = vec![
        field("project", "Project", true, "project"),
        field("issuetype", "Issue Type", true, "issuetype"),
        field("summary", "Summary", true, "string"),
        field("description", "Description", false, "string"),
        field("priority", "Priority", false, "priority"),
        field("labels", "Labels", false, "array"),
        field("assignee", "Assignee", false, "user"),
        field("duedate", "Due date", false, "date"),
    ];
    for f in &store.custom_fields {
        fields.push(field(&f.id, &f.name, false, "string"));
    }
    ok(
        StatusCode::OK,
        json!({ "startAt": 0, "maxResults": 50, "total": fields.len(), "fields": fields }),
    )
}

fn created(store: &Store, api: Api, id: u64) -> Value {
    let issue = &store.issues[&id];
    json!({
        "id": id.to_string(),
        "key": issue.key,
        "self": format!("{}/rest/api/{}/issue/{}", store.base_url, api.number(), id),
    })
}

async fn create_issue(
    State(sim): State<Sim>,
    caller: Caller,
    Version(api): Version,
    body: axum::body::Bytes,
) -> Answer {
    let body = json_body(&body)?;
    let mut store = sim.lock();
    let id = store.create_issue(api, &caller.0, &body)?;
    sim.emit(&store, &Event::IssueCreated { issue: id }, &caller.0);
    ok(StatusCode::CREATED, created(&store, api, id))
}

async fn bulk_create(
    State(sim): State<Sim>,
    caller: Caller,
    Version(api): Version,
    body: axum::body::Bytes,
) -> Answer {
    let body = json_body(&body)?;
    let updates = body
        .get("issueUpdates")
        .and_then(Value::as_array)
        .ok_or_else(|| JiraError::new(400, "issueUpdates must be an array of issues to create."))?;
    if updates.len() > 50 {
        return Err(JiraError::new(
            400,
            "The number of issues to create is more than the maximum 50.",
        ));
    }
    let mut store = sim.lock();
    let mut issues = Vec::new();
    let mut errors = Vec::new();
    for (i, update) in updates.iter().enumerate() {
        match store.create_issue(api, &caller.0, update) {
            Ok(id) => {
                sim.emit(&store, &Event::IssueCreated { issue: id }, &caller.0);
                issues.push(created(&store, api, id));
            }
            Err(e) => errors.push(json!({
                "status": e.status,
                "elementErrors": e.body(),
                "failedElementNumber": i,
            })),
        }
    }
    let status = if issues.is_empty() && !errors.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::CREATED
    };
    ok(status, json!({ "issues": issues, "errors": errors }))
}

async fn get_issue(
    State(sim): State<Sim>,
    _: Caller,
    Version(api): Version,
    Path((_, key)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let store = sim.lock();
    let issue = store.find(&key).ok_or_else(JiraError::issue_not_found)?;
    let fields = FieldSelection::parse(
        params.get("fields").map(String::as_str),
        FieldSelection::all(),
    );
    let expand: Vec<&str> = params
        .get("expand")
        .map(|e| e.split(',').map(str::trim).collect())
        .unwrap_or_default();
    ok(
        StatusCode::OK,
        render::issue(&store, api, issue, &fields, &expand),
    )
}

async fn edit_issue(
    State(sim): State<Sim>,
    caller: Caller,
    Version(api): Version,
    Path((_, key)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Answer {
    let body = json_body(&body)?;
    let mut store = sim.lock();
    let id = find_id(&store, &key)?;
    if let Some(changelog) = store.edit_issue(api, &caller.0, id, &body)? {
        let event = Event::IssueUpdated {
            issue: id,
            changelog,
            type_name: "issue_updated",
        };
        sim.emit(&store, &event, &caller.0);
    }
    if params.get("returnIssue").is_some_and(|v| v == "true") {
        let issue = &store.issues[&id];
        return ok(
            StatusCode::OK,
            render::issue(&store, api, issue, &FieldSelection::all(), &[]),
        );
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_issue(
    State(sim): State<Sim>,
    caller: Caller,
    _: Version,
    Path((_, key)): Path<(String, String)>,
) -> Answer {
    let mut store = sim.lock();
    let id = find_id(&store, &key)?;
    let issue = store.delete_issue(id)?;
    sim.emit(
        &store,
        &Event::IssueDeleted {
            issue: Box::new(issue),
        },
        &caller.0,
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn paging(
    params: &HashMap<String, String>,
    default_max: usize,
) -> Result<(usize, usize), JiraError> {
    let number = |name: &str, default: usize| -> Result<usize, JiraError> {
        params.get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                JiraError::new(400, format!("The '{name}' parameter must be a number."))
            })
        })
    };
    Ok((number("startAt", 0)?, number("maxResults", default_max)?))
}

async fn changelog(
    State(sim): State<Sim>,
    _: Caller,
    _: Version,
    Path((_, key)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let store = sim.lock();
    let issue = store.find(&key).ok_or_else(JiraError::issue_not_found)?;
    let (start, max) = paging(&params, 100)?;
    let max = max.clamp(1, 100);
    let values: Vec<Value> = issue
        .changelog
        .iter()
        .skip(start)
        .take(max)
        .map(|e| render::changelog_entry(&store, e))
        .collect();
    let total = issue.changelog.len();
    ok(
        StatusCode::OK,
        json!({
            "self": format!("{}/rest/api/3/issue/{}/changelog?startAt={start}&maxResults={max}", store.base_url, issue.key),
            "startAt": start, "maxResults": max, "total": total,
            "isLast": start + values.len() >= total, "values": values,
        }),
    )
}

async fn transitions(
    State(sim): State<Sim>,
    _: Caller,
    _: Version,
    Path((_, key)): Path<(String, String)>,
) -> Answer {
    let store = sim.lock();
    let id = find_id(&store, &key)?;
    let list: Vec<Value> = store
        .available_transitions(id)?
        .iter()
        .map(|t| render::transition(&store, t))
        .collect();
    ok(
        StatusCode::OK,
        json!({ "expand": "transitions", "transitions": list }),
    )
}

async fn do_transition(
    State(sim): State<Sim>,
    caller: Caller,
    Version(api): Version,
    Path((_, key)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Answer {
    let body = json_body(&body)?;
    let mut store = sim.lock();
    let id = find_id(&store, &key)?;
    let changelog = store.transition(api, &caller.0, id, &body)?;
    let event = Event::IssueUpdated {
        issue: id,
        changelog,
        type_name: "issue_generic",
    };
    sim.emit(&store, &event, &caller.0);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_comments(
    State(sim): State<Sim>,
    _: Caller,
    Version(api): Version,
    Path((_, key)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    let store = sim.lock();
    let issue = store.find(&key).ok_or_else(JiraError::issue_not_found)?;
    let (start, max) = paging(&params, 5000)?;
    let mut comments: Vec<_> = issue.comments.iter().collect();
    match params.get("orderBy").map(String::as_str) {
        Some("-created") => comments.sort_by_key(|c| std::cmp::Reverse(c.created)),
        _ => comments.sort_by_key(|c| c.created),
    }
    let total = comments.len();
    let page: Vec<_> = comments.into_iter().skip(start).take(max).collect();
    ok(
        StatusCode::OK,
        render::comments_page(&store, api, issue, &page, start, max, total),
    )
}

fn comment_of<'a>(issue: &'a Issue, id: &str) -> Result<&'a super::store::Comment, JiraError> {
    id.parse::<u64>()
        .ok()
        .and_then(|n| issue.comments.iter().find(|c| c.id == n))
        .ok_or_else(|| JiraError::new(404, format!("Can not find a comment for the id: {id}.")))
}

async fn add_comment(
    State(sim): State<Sim>,
    caller: Caller,
    Version(api): Version,
    Path((_, key)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Answer {
    let body = json_body(&body)?;
    let mut store = sim.lock();
    let id = find_id(&store, &key)?;
    let comment = store.add_comment(api, &caller.0, id, &body)?;
    sim.emit(
        &store,
        &Event::CommentCreated { issue: id, comment },
        &caller.0,
    );
    let issue = &store.issues[&id];
    let value = render::comment(&store, api, issue, comment_of(issue, &comment.to_string())?);
    ok(StatusCode::CREATED, value)
}

async fn get_comment(
    State(sim): State<Sim>,
    _: Caller,
    Version(api): Version,
    Path((_, key, comment)): Path<(String, String, String)>,
) -> Answer {
    let store = sim.lock();
    let issue = store.find(&key).ok_or_else(JiraError::issue_not_found)?;
    ok(
        StatusCode::OK,
        render::comment(&store, api, issue, comment_of(issue, &comment)?),
    )
}

async fn update_comment(
    State(sim): State<Sim>,
    caller: Caller,
    Version(api): Version,
    Path((_, key, comment)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Answer {
    let body = json_body(&body)?;
    let mut store = sim.lock();
    let id = find_id(&store, &key)?;
    let comment_id = comment_of(&store.issues[&id], &comment)?.id;
    store.update_comment(api, &caller.0, id, comment_id, &body)?;
    sim.emit(
        &store,
        &Event::CommentUpdated {
            issue: id,
            comment: comment_id,
        },
        &caller.0,
    );
    let issue = &store.issues[&id];
    ok(
        StatusCode::OK,
        render::comment(&store, api, issue, comment_of(issue, &comment)?),
    )
}

async fn delete_comment(
    State(sim): State<Sim>,
    caller: Caller,
    _: Version,
    Path((_, key, comment)): Path<(String, String, String)>,
) -> Answer {
    let mut store = sim.lock();
    let id = find_id(&store, &key)?;
    let comment_id = comment_of(&store.issues[&id], &comment)?.id;
    let removed = store.delete_comment(id, comment_id)?;
    sim.emit(
        &store,
        &Event::CommentDeleted {
            issue: id,
            comment: Box::new(removed),
        },
        &caller.0,
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn property_keys(
    State(sim): State<Sim>,
    _: Caller,
    _: Version,
    Path((_, key)): Path<(String, String)>,
) -> Answer {
    let store = sim.lock();
    let issue = store.find(&key).ok_or_else(JiraError::issue_not_found)?;
    let keys: Vec<Value> = issue
        .properties
        .keys()
        .map(|k| json!({ "key": k, "self": format!("{}/rest/api/3/issue/{}/properties/{k}", store.base_url, issue.id) }))
        .collect();
    ok(StatusCode::OK, json!({ "keys": keys }))
}

fn property_missing(prop: &str) -> JiraError {
    JiraError::new(
        404,
        format!("The property with key '{prop}' does not exist."),
    )
}

async fn get_property(
    State(sim): State<Sim>,
    _: Caller,
    _: Version,
    Path((_, key, prop)): Path<(String, String, String)>,
) -> Answer {
    let store = sim.lock();
    let issue = store.find(&key).ok_or_else(JiraError::issue_not_found)?;
    let value = issue
        .properties
        .get(&prop)
        .ok_or_else(|| property_missing(&prop))?;
    ok(StatusCode::OK, json!({ "key": prop, "value": value }))
}

async fn put_property(
    State(sim): State<Sim>,
    _: Caller,
    _: Version,
    Path((_, key, prop)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Answer {
    let value = json_body(&body)?;
    if prop.len() > 255 {
        return Err(JiraError::new(
            400,
            "The property key cannot be longer than 255 characters.",
        ));
    }
    let mut store = sim.lock();
    let id = find_id(&store, &key)?;
    let issue = store
        .issues
        .get_mut(&id)
        .ok_or_else(JiraError::issue_not_found)?;
    let existed = issue.properties.insert(prop, value).is_some();
    Ok(if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    }
    .into_response())
}

async fn delete_property(
    State(sim): State<Sim>,
    _: Caller,
    _: Version,
    Path((_, key, prop)): Path<(String, String, String)>,
) -> Answer {
    let mut store = sim.lock();
    let id = find_id(&store, &key)?;
    let issue = store
        .issues
        .get_mut(&id)
        .ok_or_else(JiraError::issue_not_found)?;
    issue
        .properties
        .remove(&prop)
        .ok_or_else(|| property_missing(&prop))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A search request, from query parameters or a JSON body.
struct SearchRequest {
    jql: String,
    fields: Option<String>,
    expand: Vec<String>,
    max_results: Option<usize>,
    start_at: Option<usize>,
    next_page_token: Option<String>,
}

fn search_from_params(params: &HashMap<String, String>) -> Result<SearchRequest, JiraError> {
    let number = |name: &str| -> Result<Option<usize>, JiraError> {
        params
            .get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    JiraError::new(400, format!("The '{name}' parameter must be a number."))
                })
            })
            .transpose()
    };
    Ok(SearchRequest {
        jql: params.get("jql").cloned().unwrap_or_default(),
        fields: params.get("fields").cloned(),
        expand: params
            .get("expand")
            .map(|e| e.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default(),
        max_results: number("maxResults")?,
        start_at: number("startAt")?,
        next_page_token: params.get("nextPageToken").cloned(),
    })
}

fn search_from_body(bytes: &[u8]) -> Result<SearchRequest, JiraError> {
    let body = json_body(bytes)?;
    let object = body
        .as_object()
        .ok_or_else(|| JiraError::new(400, "The request body must be a JSON object."))?;
    let number = |name: &str| object.get(name).and_then(Value::as_u64).map(|n| n as usize);
    let fields = match object.get("fields") {
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        ),
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let expand = match object.get("expand") {
        Some(Value::String(s)) => s.split(',').map(|s| s.trim().to_string()).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    Ok(SearchRequest {
        jql: object
            .get("jql")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        fields,
        expand,
        max_results: number("maxResults"),
        start_at: number("startAt"),
        next_page_token: object
            .get("nextPageToken")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// The issues a parsed query selects, in its order.
fn run_query<'a>(store: &'a Store, query: &jql::Query) -> Vec<&'a Issue> {
    let mut found: Vec<&Issue> = store
        .issues
        .values()
        .filter(|i| query.matches(i, store))
        .collect();
    query.sort(&mut found);
    found
}

/// Page tokens are opaque to clients; this one binds an offset to the query it belongs to.
fn page_token(offset: usize, jql: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{offset}:{jql}"))
}

fn page_offset(token: &str, jql: &str) -> Result<usize, JiraError> {
    let invalid = || JiraError::new(400, "The provided next page token is invalid or expired.");
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(invalid)?;
    let (offset, for_jql) = decoded.split_once(':').ok_or_else(invalid)?;
    if for_jql != jql {
        return Err(invalid());
    }
    offset.parse().map_err(|_| invalid())
}

fn search_jql(sim: &Sim, caller: MaybeCaller, api: Api, request: SearchRequest) -> Answer {
    if request.start_at.is_some() {
        return Err(JiraError::new(
            400,
            "Invalid request payload. Refer to the REST API documentation and try again. (startAt is not supported; use nextPageToken)",
        ));
    }
    // Anonymous callers get an empty answer, not a 401, as Jira Cloud does for search.
    if caller.0.is_none() {
        return ok(StatusCode::OK, json!({ "issues": [], "isLast": true }));
    }
    let store = sim.lock();
    let query = jql::parse(&request.jql, &store)?;
    if !query.is_bounded() {
        return Err(JiraError::new(
            400,
            "Unbounded JQL queries are not allowed here. Please add a search restriction to your query.",
        ));
    }
    let found = run_query(&store, &query);
    let fields = FieldSelection::parse(request.fields.as_deref(), FieldSelection::none());
    let cap = if fields.is_empty() { 5000 } else { 100 };
    let max = request.max_results.unwrap_or(50).clamp(1, cap);
    let start = match &request.next_page_token {
        Some(token) => page_offset(token, &request.jql)?,
        None => 0,
    };
    let expand: Vec<&str> = request.expand.iter().map(String::as_str).collect();
    let issues: Vec<Value> = found
        .iter()
        .skip(start)
        .take(max)
        .map(|i| {
            if fields.is_empty() && expand.is_empty() {
                json!({ "id": i.id.to_string() })
            } else {
                render::issue(&store, api, i, &fields, &expand)
            }
        })
        .collect();
    let next = start + issues.len();
    let mut answer = json!({ "issues": issues, "isLast": next >= found.len() });
    if next < found.len() {
        answer["nextPageToken"] = json!(page_token(next, &request.jql));
    }
    ok(StatusCode::OK, answer)
}

async fn search_jql_get(
    State(sim): State<Sim>,
    caller: MaybeCaller,
    Version(api): Version,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    search_jql(&sim, caller, api, search_from_params(&params)?)
}

async fn search_jql_post(
    State(sim): State<Sim>,
    caller: MaybeCaller,
    Version(api): Version,
    body: axum::body::Bytes,
) -> Answer {
    search_jql(&sim, caller, api, search_from_body(&body)?)
}

async fn approximate_count(
    State(sim): State<Sim>,
    _: Caller,
    _: Version,
    body: axum::body::Bytes,
) -> Answer {
    let body = json_body(&body)?;
    let jql = body.get("jql").and_then(Value::as_str).unwrap_or_default();
    let store = sim.lock();
    let count = run_query(&store, &jql::parse(jql, &store)?).len();
    ok(StatusCode::OK, json!({ "count": count }))
}

/// The old offset-paged search, kept for older clients (removed from Jira Cloud itself).
fn search_old(sim: &Sim, api: Api, request: SearchRequest) -> Answer {
    let store = sim.lock();
    let found = run_query(&store, &jql::parse(&request.jql, &store)?);
    let fields = FieldSelection::parse(request.fields.as_deref(), FieldSelection::all());
    let start = request.start_at.unwrap_or(0);
    let max = request.max_results.unwrap_or(50).clamp(1, 100);
    let expand: Vec<&str> = request.expand.iter().map(String::as_str).collect();
    let issues: Vec<Value> = found
        .iter()
        .skip(start)
        .take(max)
        .map(|i| render::issue(&store, api, i, &fields, &expand))
        .collect();
    ok(
        StatusCode::OK,
        json!({ "expand": "schema,names", "startAt": start, "maxResults": max, "total": found.len(), "issues": issues }),
    )
}

async fn search_old_get(
    State(sim): State<Sim>,
    _: Caller,
    Version(api): Version,
    Query(params): Query<HashMap<String, String>>,
) -> Answer {
    search_old(&sim, api, search_from_params(&params)?)
}

async fn search_old_post(
    State(sim): State<Sim>,
    _: Caller,
    Version(api): Version,
    body: axum::body::Bytes,
) -> Answer {
    search_old(&sim, api, search_from_body(&body)?)
}

fn webhook_json(store: &Store, hook: &super::store::Webhook) -> Value {
    json!({
        "self": format!("{}/rest/webhooks/1.0/webhook/{}", store.base_url, hook.id),
        "name": hook.name,
        "url": hook.url,
        "events": hook.events,
        "filters": { "issue-related-events-section": hook.jql.clone().unwrap_or_default() },
        "excludeBody": false,
        "enabled": true,
    })
}

/// `POST /rest/webhooks/1.0/webhook`: an admin webhook, optionally with a signing secret.
/// (Atlassian does not document this body precisely; this follows the admin UI's fields.)
async fn register_webhook(State(sim): State<Sim>, _: Caller, body: axum::body::Bytes) -> Answer {
    let body = json_body(&body)?;
    let url = body
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(JiraError::field(
            "url",
            "The webhook URL must be an absolute http(s) URL.",
        ));
    }
    let events: Vec<String> = body
        .get("events")
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Some(bad) = events
        .iter()
        .find(|e| !webhooks::EVENTS.contains(&e.as_str()))
    {
        return Err(JiraError::field(
            "events",
            format!("Unknown webhook event '{bad}'."),
        ));
    }
    let jql = body
        .get("filters")
        .and_then(|f| f.get("issue-related-events-section"))
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string);
    let mut store = sim.lock();
    if let Some(filter) = &jql {
        jql::parse(filter, &store)?;
    }
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("webhook")
        .to_string();
    let secret = body
        .get("secret")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let id = store.add_webhook(name, url, events, jql, secret);
    let hook = store
        .webhooks
        .iter()
        .find(|h| h.id == id)
        .expect("just added");
    ok(StatusCode::CREATED, webhook_json(&store, hook))
}

async fn list_webhooks(State(sim): State<Sim>, _: Caller) -> Answer {
    let store = sim.lock();
    let list: Vec<Value> = store
        .webhooks
        .iter()
        .map(|h| webhook_json(&store, h))
        .collect();
    ok(StatusCode::OK, Value::Array(list))
}

async fn get_webhook(State(sim): State<Sim>, _: Caller, Path(id): Path<u64>) -> Answer {
    let store = sim.lock();
    let hook = store
        .webhooks
        .iter()
        .find(|h| h.id == id)
        .ok_or_else(|| JiraError::new(404, "Webhook not found."))?;
    ok(StatusCode::OK, webhook_json(&store, hook))
}

async fn delete_webhook(State(sim): State<Sim>, _: Caller, Path(id): Path<u64>) -> Answer {
    let mut store = sim.lock();
    let before = store.webhooks.len();
    store.webhooks.retain(|h| h.id != id);
    if store.webhooks.len() == before {
        return Err(JiraError::new(404, "Webhook not found."));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
