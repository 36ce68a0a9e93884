//! The Jira Cloud client: REST v3 over [`Http`], JQL search paging, workflow transitions for
//! status, comments as plain text, and signed webhooks.
//!
//! Wire facts come from `shared/api/jira.md`; anything taken on weaker evidence is marked
//! (unconfirmed) where it is used.

pub mod jql;
mod webhook;
mod wire;

use std::collections::{BTreeMap, HashMap};

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::Method;
use serde_json::{json, Map, Value};
use url::Url;

use super::http::{Answer, Http, DEFAULT_PAUSE};
use super::{
    CallStats, Comment, ConnectorError, Created, ErrorKind, Marker, NewRecord, Page, Record,
    Webhook, WebhookError, WebhookRequest,
};
use crate::adf;
use crate::config::{JiraAuth, JiraSettings, Secret};

/// The only object this connector syncs.
const ISSUE: &str = "issue";
/// Page size of `search/jql` when fields are asked for (Jira's cap is 100 then).
const SEARCH_PAGE: usize = 100;
/// Jira's `issue/bulk` takes at most 50 issues per call.
const BULK_CHUNK: usize = 50;
/// Page size of comment listings.
const COMMENT_PAGE: usize = 100;
/// Marker values looked up in one search by `create_many` (keeps the JQL short).
const MARKER_LOOKUP_CHUNK: usize = 50;

// No `Debug`: the client holds the credentials.
pub struct JiraClient {
    http: Http,
    base_url: Url,
    /// `Basic …` or `Bearer …`, marked sensitive so it is never printed.
    auth: HeaderValue,
    webhook_secret: Option<Secret>,
    allow_unsigned_webhooks: bool,
    /// The API user's profile time zone (`myself.timeZone`): JQL dates are read in it.
    time_zone: tokio::sync::OnceCell<chrono_tz::Tz>,
}

/// A status wanted on an issue, by name or id (`{"name":"Done"}`, `{"id":"3"}` or `"Done"`).
struct WantedStatus(String);

impl WantedStatus {
    fn from_field(value: &Value) -> Option<WantedStatus> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o
                .get("name")
                .or_else(|| o.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        }
        .filter(|s| !s.trim().is_empty())
        .map(WantedStatus)
    }

    /// Whether a status object (`{"id","name",…}`) is this one: names case-insensitively.
    fn is(&self, status: &Value) -> bool {
        let wanted = self.0.trim();
        status
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.trim().eq_ignore_ascii_case(wanted))
            || wire::id_of(status.get("id")).is_some_and(|id| id == wanted)
    }
}

impl JiraClient {
    pub fn new(
        name: &str,
        settings: &JiraSettings,
        stats: CallStats,
    ) -> Result<Self, ConnectorError> {
        let credentials = match &settings.auth {
            JiraAuth::Basic { email, api_token } => {
                use base64::Engine as _;
                let pair = format!("{email}:{}", api_token.expose());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            JiraAuth::OAuth { access_token } => format!("Bearer {}", access_token.expose()),
        };
        let mut auth = HeaderValue::from_str(&credentials).map_err(|_| {
            // Without the value: it is the secret.
            ConnectorError::new(
                name,
                "configure",
                ErrorKind::Auth,
                "the Jira credentials contain characters not allowed in an HTTP header",
            )
        })?;
        auth.set_sensitive(true);
        Ok(Self {
            http: Http::new(name, &settings.limits, stats)?,
            base_url: settings.base_url.clone(),
            auth,
            webhook_secret: settings.webhook_secret.clone(),
            allow_unsigned_webhooks: settings.allow_unsigned_webhooks,
            time_zone: tokio::sync::OnceCell::new(),
        })
    }

    pub fn http(&self) -> &Http {
        &self.http
    }

    fn name(&self) -> &str {
        self.http.connector()
    }

    fn fail(&self, operation: &str, kind: ErrorKind, message: impl Into<String>) -> ConnectorError {
        ConnectorError::new(self.name(), operation, kind, message)
    }

    fn protocol(&self, operation: &str, message: impl Into<String>) -> ConnectorError {
        self.fail(operation, ErrorKind::Protocol, message)
    }

    fn check_object(&self, operation: &str, object: &str) -> Result<(), ConnectorError> {
        if object == ISSUE {
            Ok(())
        } else {
            Err(self.fail(
                operation,
                ErrorKind::Rejected,
                format!("the Jira connector syncs only `issue`, not `{object}`"),
            ))
        }
    }

    /// Ids become path segments: refuse anything that is not an id or key, so a value can never
    /// walk to another endpoint (`..`) or smuggle a query.
    fn check_id(&self, operation: &str, id: &str) -> Result<(), ConnectorError> {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && id.bytes().any(|b| b.is_ascii_alphanumeric());
        if valid {
            Ok(())
        } else {
            Err(self.fail(
                operation,
                ErrorKind::Rejected,
                format!("{id:?} is not a Jira issue or comment id"),
            ))
        }
    }

    /// `{base}/rest/api/3/{segments…}`, each segment percent-encoded. The base may carry a path
    /// (`https://api.atlassian.com/ex/jira/{cloudId}` for OAuth).
    fn url(&self, operation: &str, segments: &[&str]) -> Result<Url, ConnectorError> {
        let mut url = self.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .map_err(|_| {
                self.fail(
                    operation,
                    ErrorKind::Rejected,
                    "base_url cannot take a path",
                )
            })?
            .pop_if_empty()
            .extend(["rest", "api", "3"])
            .extend(segments);
        Ok(url)
    }

    /// One call through the limiter. Reads Jira's rate-limit headers from every answer.
    async fn call(
        &self,
        operation: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Answer, ConnectorError> {
        let mut request = self
            .http
            .client()
            .request(method, url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = self.http.send(operation, request).await?;
        self.observe_rate_limit(&answer);
        Ok(answer)
    }

    /// Like [`call`](Self::call), but any status outside `expected` is an error.
    async fn call_expect(
        &self,
        operation: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
        expected: &[u16],
    ) -> Result<Answer, ConnectorError> {
        let answer = self.call(operation, method, url, body).await?;
        if expected.contains(&answer.status) {
            Ok(answer)
        } else {
            Err(self.error(operation, &answer))
        }
    }

    fn observe_rate_limit(&self, answer: &Answer) {
        let number = |name: &str| {
            answer
                .header(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(limit), Some(remaining)) =
            (number("x-ratelimit-limit"), number("x-ratelimit-remaining"))
        else {
            return;
        };
        let limiter = self.http.limiter();
        // Jira's quota is per window (hourly points, or a burst window), not per day: it is
        // shown beside the daily budget, never mixed into it.
        limiter.observe_window_quota(remaining, limit);
        if remaining == 0 {
            // The quota is spent until the reset: stop all traffic rather than collect 429s.
            // The reset is given to the minute; a minute more never resumes early.
            let wait = answer
                .header("x-ratelimit-reset")
                .and_then(wire::parse_reset)
                .and_then(|reset| wire::until(reset + chrono::Duration::minutes(1)))
                .unwrap_or(std::time::Duration::from_secs(60));
            limiter.pause(wait);
        }
    }

    /// Classify an error answer, keeping Jira's messages verbatim.
    fn error(&self, operation: &str, answer: &Answer) -> ConnectorError {
        let message = wire::error_message(&answer.body).unwrap_or_else(|| {
            let reason = reqwest::StatusCode::from_u16(answer.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no reason given");
            format!("HTTP {} {reason}", answer.status)
        });
        let mut error = self.http.error(operation, answer, message);
        if answer.status == 429 && error.retry_after.is_none() {
            // `Http::send` paused the connector for this long.
            error = error.with_retry_after(DEFAULT_PAUSE);
        }
        error
    }

    fn json(&self, operation: &str, answer: &Answer) -> Result<Value, ConnectorError> {
        serde_json::from_slice(&answer.body)
            .map_err(|e| self.protocol(operation, format!("the answer is not JSON: {e}")))
    }

    /// A record from an issue in a v3 answer.
    fn record(&self, operation: &str, issue: &Value) -> Result<Record, ConnectorError> {
        let id = wire::id_of(issue.get("id"))
            .ok_or_else(|| self.protocol(operation, "an issue in the answer has no id"))?;
        let fields = issue
            .get("fields")
            .and_then(Value::as_object)
            .ok_or_else(|| self.protocol(operation, format!("issue {id} has no fields object")))?;
        let updated = fields
            .get("updated")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                self.protocol(operation, format!("issue {id} has no `updated` field"))
            })?;
        let modified_at = wire::parse_time(updated).ok_or_else(|| {
            self.protocol(
                operation,
                format!("issue {id}: `updated` {updated:?} is not a Jira timestamp"),
            )
        })?;
        Ok(Record {
            id,
            modified_at,
            fields: fields.clone(),
        })
    }

    /// The `fields` to ask for: the caller's plus `updated` (needed for `modified_at`); all
    /// when the caller asks for none.
    fn field_list(fields: &[String]) -> Vec<String> {
        if fields.is_empty() {
            return vec!["*all".to_string()];
        }
        let mut list: Vec<String> = fields.to_vec();
        if !list.iter().any(|f| f == "updated") {
            list.push("updated".to_string());
        }
        list
    }

    pub async fn check(&self) -> Result<(), ConnectorError> {
        let op = "check credentials";
        let url = self.url(op, &["myself"])?;
        let answer = self.call_expect(op, Method::GET, url, None, &[200]).await?;
        // Some endpoints answer anonymous callers with 200 and nothing; `myself` names the
        // account, so an answer without one means the credentials were not used.
        let me = self.json(op, &answer)?;
        if wire::id_of(me.get("accountId")).is_none() {
            return Err(self.protocol(op, "`myself` answered without an accountId"));
        }
        let zone = self.zone_of(op, &me)?;
        let _ = self.time_zone.set(zone);
        Ok(())
    }

    fn zone_of(&self, op: &str, me: &Value) -> Result<chrono_tz::Tz, ConnectorError> {
        let name = me
            .get("timeZone")
            .and_then(Value::as_str)
            .ok_or_else(|| self.protocol(op, "`myself` answered without a timeZone"))?;
        name.parse::<chrono_tz::Tz>().map_err(|_| {
            self.protocol(
                op,
                format!("`myself` names a time zone this build does not know: {name:?}"),
            )
        })
    }

    /// The API user's time zone, asked for once.
    async fn time_zone(&self, op: &str) -> Result<chrono_tz::Tz, ConnectorError> {
        self.time_zone
            .get_or_try_init(|| async {
                let url = self.url(op, &["myself"])?;
                let answer = self.call_expect(op, Method::GET, url, None, &[200]).await?;
                let me = self.json(op, &answer)?;
                self.zone_of(op, &me)
            })
            .await
            .copied()
    }

    pub async fn read(
        &self,
        object: &str,
        id: &str,
        fields: &[String],
    ) -> Result<Option<Record>, ConnectorError> {
        let op = "read issue";
        self.check_object(op, object)?;
        self.check_id(op, id)?;
        let mut url = self.url(op, &["issue", id])?;
        if !fields.is_empty() {
            url.query_pairs_mut()
                .append_pair("fields", &Self::field_list(fields).join(","));
        }
        let answer = self.call(op, Method::GET, url, None).await?;
        match answer.status {
            200 => {
                let issue = self.json(op, &answer)?;
                self.record(op, &issue).map(Some)
            }
            // Deleted, or not visible to this account: Jira does not tell them apart.
            404 => Ok(None),
            _ => Err(self.error(op, &answer)),
        }
    }

    /// Read many issues by id: one `search/jql` page per 100 ids (`id in (…)`). Ids that no
    /// longer exist (or are not visible) are absent.
    pub async fn read_many(
        &self,
        object: &str,
        ids: &[String],
        fields: &[String],
    ) -> Result<Vec<Record>, ConnectorError> {
        let op = "read issues";
        self.check_object(op, object)?;
        for id in ids {
            self.check_id(op, id)?;
        }
        let list = Self::field_list(fields);
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(SEARCH_PAGE) {
            let quoted: Vec<String> = chunk.iter().map(|id| jql::quote(id)).collect();
            let query = format!("id in ({})", quoted.join(", "));
            let mut token = None;
            loop {
                let (issues, next) = self.search(op, &query, &list, token.as_deref()).await?;
                for issue in &issues {
                    out.push(self.record(op, issue)?);
                }
                match next {
                    Some(next) => token = Some(next),
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// One page of `search/jql` (never the removed offset-paged `/search`).
    async fn search(
        &self,
        op: &str,
        jql: &str,
        fields: &[String],
        token: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), ConnectorError> {
        let mut body = json!({
            "jql": jql,
            "fields": fields,
            "maxResults": SEARCH_PAGE,
        });
        if let Some(token) = token {
            body["nextPageToken"] = json!(token);
        }
        let url = self.url(op, &["search", "jql"])?;
        let answer = self
            .call_expect(op, Method::POST, url, Some(&body), &[200])
            .await?;
        let page = self.json(op, &answer)?;
        let issues = page
            .get("issues")
            .and_then(Value::as_array)
            .ok_or_else(|| self.protocol(op, "the search answer has no issues array"))?
            .clone();
        // The end: no token, or `isLast` (either alone is enough).
        let is_last = page.get("isLast").and_then(Value::as_bool) == Some(true);
        let next = page
            .get("nextPageToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && !is_last)
            .map(str::to_string);
        Ok((issues, next))
    }

    pub async fn changed_since(
        &self,
        object: &str,
        filter: Option<&str>,
        since: Option<i64>,
        fields: &[String],
        cursor: Option<&str>,
    ) -> Result<Page, ConnectorError> {
        let op = "query issue";
        self.check_object(op, object)?;
        // A page token belongs to the exact JQL of its first page: the cursor carries the
        // window's start so every later page sends the same text. The start is an absolute
        // minute: a relative date (`-15m`) would be evaluated again on every page and slide
        // forward while a long listing is paged, skipping what slides out.
        let (start, token) = match cursor {
            None => (since.map(|ms| ms.div_euclid(60_000) * 60_000), None),
            Some(cursor) => {
                let (start, token) = Cursor::parse(cursor).ok_or_else(|| {
                    self.fail(
                        op,
                        ErrorKind::Rejected,
                        "the cursor was not made by this connector",
                    )
                })?;
                (start, Some(token))
            }
        };
        let mut clauses = Vec::new();
        if let Some(filter) = filter.map(str::trim).filter(|f| !f.is_empty()) {
            // The operator's filter is the one raw clause; parentheses keep its ORs inside.
            clauses.push(format!("({filter})"));
        }
        if let Some(start) = start {
            // JQL dates have minute precision and are read in the API user's profile time zone
            // (`myself.timeZone`), not UTC; rounding down to the minute only widens the window,
            // and the caller already subtracts an overlap and drops records it has seen.
            let zone = self.time_zone(op).await?;
            let at = chrono::DateTime::from_timestamp_millis(start)
                .ok_or_else(|| self.fail(op, ErrorKind::Rejected, "`since` is out of range"))?
                .with_timezone(&zone);
            clauses.push(format!(
                "updated >= {}",
                jql::quote(&at.format("%Y-%m-%d %H:%M").to_string())
            ));
        }
        if clauses.is_empty() {
            // `search/jql` refuses unbounded queries; this bound selects everything.
            clauses.push(format!("updated >= {}", jql::quote("1970-01-01")));
        }
        let query = format!("{} ORDER BY updated ASC, key ASC", clauses.join(" AND "));
        let (issues, next) = self
            .search(op, &query, &Self::field_list(fields), token.as_deref())
            .await?;
        let records = issues
            .iter()
            .map(|issue| self.record(op, issue))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            records,
            next: next.map(|token| Cursor::format(start, &token)),
        })
    }

    /// The number of a custom field id, `customfield_10050` → `10050`.
    fn custom_field_number<'a>(&self, op: &str, field: &'a str) -> Result<&'a str, ConnectorError> {
        field
            .strip_prefix("customfield_")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                self.fail(
                    op,
                    ErrorKind::Rejected,
                    format!("the marker field must be a custom field id like customfield_10050, not {field:?}"),
                )
            })
    }

    /// Search `field` for any of `values` and return, per value, the first issue (oldest
    /// first) whose field holds exactly that value.
    ///
    /// Jira Cloud's text custom fields take no `=` in JQL, only the text search `~`, which
    /// ignores case and punctuation: it narrows the candidates, and the exact comparison is made
    /// here. Search is eventually consistent, so an issue created moments ago may be missing.
    async fn find_exact(
        &self,
        op: &str,
        field: &str,
        values: &[&str],
        fields: &[String],
    ) -> Result<HashMap<String, Value>, ConnectorError> {
        let number = self.custom_field_number(op, field)?;
        let wanted: Vec<&str> = values.iter().copied().filter(|v| !v.is_empty()).collect();
        let mut found: HashMap<String, Value> = HashMap::new();
        if wanted.is_empty() {
            return Ok(found);
        }
        let clauses: Vec<String> = wanted
            .iter()
            .map(|v| format!("cf[{number}] ~ {}", jql::quote_text(v)))
            .collect();
        let query = format!("({}) ORDER BY created ASC, key ASC", clauses.join(" OR "));
        let mut asked = Self::field_list(fields);
        if !asked.iter().any(|f| f == field || f == "*all") {
            asked.push(field.to_string());
        }
        let mut token: Option<String> = None;
        loop {
            let (issues, next) = self.search(op, &query, &asked, token.as_deref()).await?;
            for issue in issues {
                let value = issue
                    .get("fields")
                    .and_then(|f| f.get(field))
                    .and_then(Value::as_str);
                if let Some(value) = value {
                    if wanted.contains(&value) && !found.contains_key(value) {
                        found.insert(value.to_string(), issue);
                    }
                }
            }
            if found.len() == wanted.len() {
                break;
            }
            match next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        Ok(found)
    }

    pub async fn find_by_marker(
        &self,
        object: &str,
        marker: &Marker,
        fields: &[String],
    ) -> Result<Option<Record>, ConnectorError> {
        let op = "find issue by marker";
        self.check_object(op, object)?;
        let mut found = self
            .find_exact(op, &marker.field, &[marker.value.as_str()], fields)
            .await?;
        match found.remove(&marker.value) {
            Some(issue) => self.record(op, &issue).map(Some),
            None => Ok(None),
        }
    }

    /// Whether the issue is among those `filter` (operator JQL) selects.
    pub async fn matches(
        &self,
        object: &str,
        id: &str,
        filter: &str,
    ) -> Result<bool, ConnectorError> {
        let op = "match issue to filter";
        self.check_object(op, object)?;
        self.check_id(op, id)?;
        let jql = format!("id = {} AND ({filter})", jql::quote(id));
        let (issues, _) = self.search(op, &jql, &["id".to_string()], None).await?;
        Ok(!issues.is_empty())
    }

    /// The fields of a create, as an edit of an issue that already exists: `project` and
    /// `issuetype` only choose where a new issue goes (changing them is a move, which the edit
    /// endpoint refuses).
    fn as_edit(mut fields: Map<String, Value>) -> Map<String, Value> {
        fields.remove("project");
        fields.remove("issuetype");
        fields
    }

    /// Split the fields to create or edit from a wanted status, which only a transition sets.
    fn split_status(mut fields: Map<String, Value>) -> (Map<String, Value>, Option<WantedStatus>) {
        let status = fields
            .remove("status")
            .as_ref()
            .and_then(WantedStatus::from_field);
        (fields, status)
    }

    pub async fn create(&self, object: &str, record: NewRecord) -> Result<Created, ConnectorError> {
        let op = "create issue";
        self.check_object(op, object)?;
        // Jira has no upsert, and a marker search before every create would double the calls
        // of the common case. A create whose outcome is unknown (a timeout) is what can
        // duplicate: the dispatcher looks the marker up before retrying one.
        let (mut fields, status) = Self::split_status(record.fields);
        if let Some(marker) = &record.marker {
            fields.insert(marker.field.clone(), Value::String(marker.value.clone()));
        }
        let url = self.url(op, &["issue"])?;
        let body = json!({ "fields": fields });
        let answer = self
            .call_expect(op, Method::POST, url, Some(&body), &[201, 200])
            .await?;
        let created = self.json(op, &answer)?;
        let id = wire::id_of(created.get("id"))
            .ok_or_else(|| self.protocol(op, "the create answer has no issue id"))?;
        let incomplete = match status {
            Some(status) => self.after_create_transition(&id, &status).await.err(),
            None => None,
        };
        Ok(Created {
            id,
            created: true,
            incomplete,
        })
    }

    /// Reach the status an issue was created with. The issue exists either way: a failure is
    /// returned as [`Created::incomplete`], never as the create's error, so the caller keeps
    /// the new id and does not create again.
    async fn after_create_transition(
        &self,
        id: &str,
        status: &WantedStatus,
    ) -> Result<(), ConnectorError> {
        self.transition_to(id, status).await.map_err(|mut e| {
            e.message = format!(
                "issue {id} was created, but its status could not be set: {}",
                e.message
            );
            e
        })
    }

    pub async fn update(
        &self,
        object: &str,
        id: &str,
        fields: Map<String, Value>,
    ) -> Result<(), ConnectorError> {
        let op = "update issue";
        self.check_object(op, object)?;
        self.check_id(op, id)?;
        let (fields, status) = Self::split_status(fields);
        if !fields.is_empty() {
            let url = self.url(op, &["issue", id])?;
            let body = json!({ "fields": fields });
            self.call_expect(op, Method::PUT, url, Some(&body), &[204, 200])
                .await?;
        }
        if let Some(status) = status {
            self.transition_to(id, &status).await?;
        }
        Ok(())
    }

    /// Move an issue to a status through its workflow: the transition whose target matches,
    /// by name or id (transition ids differ per workflow, so they are never assumed).
    async fn transition_to(&self, id: &str, wanted: &WantedStatus) -> Result<(), ConnectorError> {
        let op = "transition issue";
        self.check_id(op, id)?;
        // The current status and the transitions from it in one call.
        let mut url = self.url(op, &["issue", id])?;
        url.query_pairs_mut()
            .append_pair("fields", "status")
            .append_pair("expand", "transitions");
        let answer = self.call_expect(op, Method::GET, url, None, &[200]).await?;
        let issue = self.json(op, &answer)?;
        let current = issue
            .get("fields")
            .and_then(|f| f.get("status"))
            .cloned()
            .unwrap_or(Value::Null);
        if wanted.is(&current) {
            return Ok(());
        }
        let transitions = issue
            .get("transitions")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                self.protocol(op, format!("issue {id}: no transitions in the answer"))
            })?;
        let chosen = transitions
            .iter()
            .filter(|t| t.get("isAvailable").and_then(Value::as_bool) != Some(false))
            .find(|t| t.get("to").is_some_and(|to| wanted.is(to)));
        let Some(transition) = chosen else {
            // Also what an account without the transition permission sees: an empty list.
            let current = current
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            return Err(self.fail(
                op,
                ErrorKind::Rejected,
                format!(
                    "no transition from \"{current}\" to \"{}\" on issue {id}",
                    wanted.0
                ),
            ));
        };
        let transition_id = wire::id_of(transition.get("id"))
            .ok_or_else(|| self.protocol(op, format!("issue {id}: a transition has no id")))?;
        let url = self.url(op, &["issue", id, "transitions"])?;
        let body = json!({ "transition": { "id": transition_id } });
        self.call_expect(op, Method::POST, url, Some(&body), &[204, 200])
            .await?;
        Ok(())
    }

    pub async fn create_many(
        &self,
        object: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Result<Created, ConnectorError>>, ConnectorError> {
        let op = "create issues";
        self.check_object(op, object)?;
        let total = records.len();
        let mut results: Vec<Option<Result<Created, ConnectorError>>> =
            (0..total).map(|_| None).collect();

        // Markers already present: update those issues instead (Jira has no upsert).
        let existing = self.existing_markers(op, &records).await?;
        let mut to_create: Vec<(usize, Map<String, Value>, Option<WantedStatus>)> = Vec::new();
        for (index, record) in records.into_iter().enumerate() {
            let found = record
                .marker
                .as_ref()
                .and_then(|m| existing.get(&(m.field.clone(), m.value.clone())));
            if let Some(id) = found {
                let outcome = self
                    .update(object, id, Self::as_edit(record.fields))
                    .await
                    .map(|()| Created {
                        id: id.clone(),
                        created: false,
                        incomplete: None,
                    });
                results[index] = Some(outcome);
                continue;
            }
            let (mut fields, status) = Self::split_status(record.fields);
            if let Some(marker) = &record.marker {
                fields.insert(marker.field.clone(), Value::String(marker.value.clone()));
            }
            to_create.push((index, fields, status));
        }

        let mut failure: Option<ConnectorError> = None;
        for chunk in to_create.chunks(BULK_CHUNK) {
            if let Some(error) = &failure {
                // An earlier chunk failed as a whole (rate limit, outage, credentials): the
                // rest would too; they are reported with that error, untried.
                for (index, _, _) in chunk {
                    results[*index] = Some(Err(error.clone()));
                }
                continue;
            }
            let body = json!({
                "issueUpdates": chunk
                    .iter()
                    .map(|(_, fields, _)| json!({ "fields": fields }))
                    .collect::<Vec<_>>(),
            });
            let outcomes = match self.bulk_create(op, &body, chunk.len()).await {
                Ok(outcomes) => outcomes,
                Err(error) => {
                    let nothing_done = results.iter().all(Option::is_none);
                    if nothing_done {
                        // Not one outcome is known: the caller gets the one error.
                        return Err(error);
                    }
                    for (index, _, _) in chunk {
                        results[*index] = Some(Err(error.clone()));
                    }
                    failure = Some(error);
                    continue;
                }
            };
            for ((index, _, status), outcome) in chunk.iter().zip(outcomes) {
                let outcome = match (outcome, status) {
                    (Ok(id), Some(status)) => {
                        let incomplete = self.after_create_transition(&id, status).await.err();
                        Ok(Created {
                            id,
                            created: true,
                            incomplete,
                        })
                    }
                    (Ok(id), None) => Ok(Created {
                        id,
                        created: true,
                        incomplete: None,
                    }),
                    (Err(e), _) => Err(e),
                };
                results[*index] = Some(outcome);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(self.protocol(op, "no outcome was recorded for this item")))
            })
            .collect())
    }

    /// The ids of issues already carrying the markers of `records`, by (field, value).
    async fn existing_markers(
        &self,
        op: &str,
        records: &[NewRecord],
    ) -> Result<HashMap<(String, String), String>, ConnectorError> {
        let mut by_field: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for marker in records.iter().filter_map(|r| r.marker.as_ref()) {
            let values = by_field.entry(marker.field.as_str()).or_default();
            if !values.contains(&marker.value.as_str()) {
                values.push(marker.value.as_str());
            }
        }
        let mut existing = HashMap::new();
        for (field, values) in by_field {
            for chunk in values.chunks(MARKER_LOOKUP_CHUNK) {
                let found = self
                    .find_exact(op, field, chunk, &["updated".to_string()])
                    .await?;
                for (value, issue) in found {
                    if let Some(id) = wire::id_of(issue.get("id")) {
                        existing.insert((field.to_string(), value), id);
                    }
                }
            }
        }
        Ok(existing)
    }

    /// One `issue/bulk` call; one id or error per issue sent, in order.
    async fn bulk_create(
        &self,
        op: &str,
        body: &Value,
        sent: usize,
    ) -> Result<Vec<Result<String, ConnectorError>>, ConnectorError> {
        let url = self.url(op, &["issue", "bulk"])?;
        let answer = self.call(op, Method::POST, url, Some(body)).await?;
        // 201 when any issue was created; 400 when none was, still with per-item errors.
        let parsed = match answer.status {
            200 | 201 | 400 => serde_json::from_slice::<Value>(&answer.body).ok(),
            _ => None,
        };
        let shape = parsed.as_ref().and_then(|v| {
            Some((
                v.get("issues")?.as_array()?,
                v.get("errors").and_then(Value::as_array),
            ))
        });
        let Some((issues, errors)) = shape else {
            return Err(self.error(op, &answer));
        };
        let mut failed: BTreeMap<usize, ConnectorError> = BTreeMap::new();
        for error in errors.into_iter().flatten() {
            let Some(at) = error
                .get("failedElementNumber")
                .and_then(Value::as_u64)
                .map(|n| n as usize)
                .filter(|n| *n < sent)
            else {
                return Err(self.protocol(
                    op,
                    format!("a bulk create error names no valid failedElementNumber: {error}"),
                ));
            };
            let status = error
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(400);
            let message = error
                .get("elementErrors")
                .and_then(wire::json_error_message)
                .unwrap_or_else(|| "the issue was not created (no reason given)".to_string());
            failed.insert(
                at,
                self.fail(op, ConnectorError::kind_for_status(status), message)
                    .with_status(status),
            );
        }
        // Successes are listed in input order, skipping the failed elements.
        if issues.len() + failed.len() != sent {
            return Err(self.protocol(
                op,
                format!(
                    "bulk create of {sent} answered {} created and {} failed",
                    issues.len(),
                    failed.len()
                ),
            ));
        }
        let mut created = issues.iter();
        let mut out = Vec::with_capacity(sent);
        for at in 0..sent {
            if let Some(error) = failed.remove(&at) {
                out.push(Err(error));
                continue;
            }
            let id = created
                .next()
                .and_then(|issue| wire::id_of(issue.get("id")));
            out.push(id.ok_or_else(|| self.protocol(op, "a created issue has no id")));
        }
        Ok(out)
    }

    pub async fn update_many(
        &self,
        object: &str,
        updates: Vec<(String, Map<String, Value>)>,
    ) -> Result<Vec<Result<(), ConnectorError>>, ConnectorError> {
        self.check_object("update issues", object)?;
        // Jira's bulk edit is asynchronous (a task to poll) and per-field; one edit per issue
        // keeps the outcomes per record and synchronous.
        let mut results = Vec::with_capacity(updates.len());
        for (id, fields) in updates {
            results.push(self.update(object, &id, fields).await);
        }
        Ok(results)
    }

    pub async fn delete(&self, object: &str, id: &str) -> Result<(), ConnectorError> {
        let op = "delete issue";
        self.check_object(op, object)?;
        self.check_id(op, id)?;
        // Without `deleteSubtasks`: an issue with subtasks is refused (400) rather than taking
        // its subtasks with it.
        let url = self.url(op, &["issue", id])?;
        self.call_expect(op, Method::DELETE, url, None, &[204, 200])
            .await?;
        Ok(())
    }

    fn comment(&self, op: &str, parent_id: &str, value: &Value) -> Result<Comment, ConnectorError> {
        let id = wire::id_of(value.get("id"))
            .ok_or_else(|| self.protocol(op, "a comment in the answer has no id"))?;
        let time = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .and_then(wire::parse_time)
                .ok_or_else(|| {
                    self.protocol(
                        op,
                        format!("comment {id}: `{name}` is not a Jira timestamp"),
                    )
                })
        };
        let created_at = time("created")?;
        let modified_at = time("updated").unwrap_or(created_at);
        Ok(Comment {
            id: id.clone(),
            parent_id: parent_id.to_string(),
            body: webhook::body_text(value.get("body")),
            created_at,
            modified_at,
        })
    }

    pub async fn comments(&self, parent_id: &str) -> Result<Vec<Comment>, ConnectorError> {
        let op = "list comments";
        self.check_id(op, parent_id)?;
        let mut out = Vec::new();
        loop {
            let mut url = self.url(op, &["issue", parent_id, "comment"])?;
            url.query_pairs_mut()
                .append_pair("orderBy", "created")
                .append_pair("startAt", &out.len().to_string())
                .append_pair("maxResults", &COMMENT_PAGE.to_string());
            let answer = self.call_expect(op, Method::GET, url, None, &[200]).await?;
            let page = self.json(op, &answer)?;
            let comments = page
                .get("comments")
                .and_then(Value::as_array)
                .ok_or_else(|| self.protocol(op, "the answer has no comments array"))?;
            for comment in comments {
                out.push(self.comment(op, parent_id, comment)?);
            }
            let total = page
                .get("total")
                .and_then(Value::as_u64)
                .map(|t| t as usize);
            // An empty page ends it too, so a wrong `total` cannot loop forever.
            if comments.is_empty() || total.is_none_or(|t| out.len() >= t) {
                break;
            }
        }
        Ok(out)
    }

    pub async fn add_comment(
        &self,
        parent_id: &str,
        body: &str,
    ) -> Result<Comment, ConnectorError> {
        let op = "add comment";
        self.check_id(op, parent_id)?;
        let url = self.url(op, &["issue", parent_id, "comment"])?;
        let request = json!({ "body": adf::from_text(body) });
        let answer = self
            .call_expect(op, Method::POST, url, Some(&request), &[201, 200])
            .await?;
        let comment = self.json(op, &answer)?;
        self.comment(op, parent_id, &comment)
    }

    pub async fn edit_comment(
        &self,
        parent_id: &str,
        comment_id: &str,
        body: &str,
    ) -> Result<(), ConnectorError> {
        let op = "edit comment";
        self.check_id(op, parent_id)?;
        self.check_id(op, comment_id)?;
        let url = self.url(op, &["issue", parent_id, "comment", comment_id])?;
        let request = json!({ "body": adf::from_text(body) });
        self.call_expect(op, Method::PUT, url, Some(&request), &[200, 204])
            .await?;
        Ok(())
    }

    pub async fn delete_comment(
        &self,
        parent_id: &str,
        comment_id: &str,
    ) -> Result<(), ConnectorError> {
        let op = "delete comment";
        self.check_id(op, parent_id)?;
        self.check_id(op, comment_id)?;
        let url = self.url(op, &["issue", parent_id, "comment", comment_id])?;
        self.call_expect(op, Method::DELETE, url, None, &[204, 200])
            .await?;
        Ok(())
    }

    pub fn parse_webhook(&self, request: &WebhookRequest<'_>) -> Result<Webhook, WebhookError> {
        webhook::parse(
            self.name(),
            &webhook::WebhookAuth {
                secret: self.webhook_secret.as_ref(),
                allow_unsigned: self.allow_unsigned_webhooks,
            },
            request,
        )
    }
}

/// The cursor of `changed_since`: Jira's page token plus the window (in minutes) its query
/// was made with, `v1:<minutes or ->:<token>`.
struct Cursor;

impl Cursor {
    /// `v2:<window start, epoch ms, or ->:<nextPageToken>`.
    fn format(start: Option<i64>, token: &str) -> String {
        let start = start.map_or_else(|| "-".to_string(), |m| m.to_string());
        format!("v2:{start}:{token}")
    }

    fn parse(cursor: &str) -> Option<(Option<i64>, String)> {
        let rest = cursor.strip_prefix("v2:")?;
        let (window, token) = rest.split_once(':')?;
        if token.is_empty() {
            return None;
        }
        let window = match window {
            "-" => None,
            m => Some(m.parse().ok()?),
        };
        Some((window, token.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let c = Cursor::format(Some(17), "abc:def");
        assert_eq!(Cursor::parse(&c), Some((Some(17), "abc:def".to_string())));
        let c = Cursor::format(None, "tok");
        assert_eq!(Cursor::parse(&c), Some((None, "tok".to_string())));
        assert_eq!(Cursor::parse("tok"), None);
        assert_eq!(Cursor::parse("v2:x:tok"), None);
        assert_eq!(Cursor::parse("v2:5:"), None);
        // The relative-window cursors of an earlier build are not accepted.
        assert_eq!(Cursor::parse("v1:5:tok"), None);
    }

    #[test]
    fn wanted_statuses_match_by_name_or_id() {
        let wanted = WantedStatus::from_field(&json!({"name": "done"})).unwrap();
        assert!(wanted.is(&json!({"id": "10002", "name": "Done"})));
        assert!(!wanted.is(&json!({"id": "3", "name": "In Progress"})));
        let by_id = WantedStatus::from_field(&json!({"id": "3"})).unwrap();
        assert!(by_id.is(&json!({"id": "3", "name": "In Progress"})));
        assert!(WantedStatus::from_field(&json!("To Do")).is_some());
        assert!(WantedStatus::from_field(&json!(null)).is_none());
        assert!(WantedStatus::from_field(&json!("")).is_none());
    }

    #[test]
    fn field_lists_always_carry_updated() {
        assert_eq!(JiraClient::field_list(&[]), ["*all"]);
        assert_eq!(
            JiraClient::field_list(&["summary".into()]),
            ["summary", "updated"]
        );
        assert_eq!(JiraClient::field_list(&["updated".into()]), ["updated"]);
    }
}
