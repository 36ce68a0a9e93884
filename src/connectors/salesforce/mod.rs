//! The Salesforce REST client: OAuth sessions ([`auth`]), sObject reads and writes, SOQL polling
//! ([`soql`] builds every query), sObject Collections for batches, and notifications
//! ([`webhook`]: Outbound Messages and JSON change events).
//!
//! Every data call goes through [`Http::send`] (limiter, counting, timeouts) and then through
//! [`SalesforceClient::failure`], the one place vendor errors are classified.

mod auth;
pub mod soql;
mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::http::{Answer, Http};
use super::{
    CallStats, Comment, ConnectorError, Created, ErrorKind, Marker, NewRecord, Page, Record,
    Webhook, WebhookError, WebhookRequest,
};
use crate::config::SalesforceSettings;

/// sObject Collections take at most 200 records a call.
const COLLECTION_MAX: usize = 200;

/// Names Tandem's writes in CDC `changeOrigin`, so its own changes can be told apart.
const CALL_OPTIONS: &str = "client=tandem";

const SESSION_EXPIRED: &str = "INVALID_SESSION_ID";
const LIMIT_EXCEEDED: &str = "REQUEST_LIMIT_EXCEEDED";

const COMMENT_FIELDS: &str =
    "Id, ParentId, CommentBody, CreatedDate, LastModifiedDate, SystemModstamp";

// No `Debug`: the client holds credentials and sessions.
pub struct SalesforceClient {
    http: Http,
    api_version: String,
    /// How long to stop all calls after `REQUEST_LIMIT_EXCEEDED` (`limits.probe_after`).
    /// Salesforce sends no `Retry-After` and its window is rolling: back off and probe,
    /// watching `Sforce-Limit-Info`.
    limit_pause: Duration,
    // Boxed: the `Connector` enum holds clients inline, and these are large.
    tokens: Box<auth::Tokens>,
    webhooks: Box<webhook::Settings>,
}

/// Where a request goes on the instance.
enum Target {
    /// A path below `/services/data/vXX.X/`, its segments already percent-encoded.
    Data(String),
    /// A path the vendor gave (`nextRecordsUrl`), used as is on the instance URL.
    Instance(String),
}

struct Call<'a> {
    method: Method,
    target: Target,
    query: Vec<(&'static str, String)>,
    body: Option<&'a Value>,
}

impl<'a> Call<'a> {
    fn new(method: Method, target: Target) -> Call<'a> {
        Call {
            method,
            target,
            query: Vec::new(),
            body: None,
        }
    }

    fn get(path: String) -> Call<'a> {
        Call::new(Method::GET, Target::Data(path))
    }

    fn param(mut self, name: &'static str, value: String) -> Self {
        self.query.push((name, value));
        self
    }

    fn json(mut self, body: &'a Value) -> Self {
        self.body = Some(body);
        self
    }
}

/// One item of an sObject Collections answer: `(id, created)` or its error.
type ItemOutcome = Result<(String, Option<bool>), ConnectorError>;

/// A vendor error body: the first code and every message.
struct VendorError {
    code: Option<String>,
    message: String,
}

impl SalesforceClient {
    pub fn new(
        name: &str,
        settings: &SalesforceSettings,
        stats: CallStats,
    ) -> Result<Self, ConnectorError> {
        Ok(Self {
            http: Http::new(name, &settings.limits, stats)?,
            api_version: settings.api_version.clone(),
            limit_pause: settings.limits.probe_after,
            tokens: Box::new(auth::Tokens::new(name, &settings.base_url, &settings.auth)?),
            webhooks: Box::new(webhook::Settings {
                connector: name.to_string(),
                secret: settings.webhook_secret.clone(),
                allow_unauthenticated: settings.allow_unauthenticated_webhooks,
                organization_id: settings.organization_id.clone(),
            }),
        })
    }

    pub fn http(&self) -> &Http {
        &self.http
    }

    fn name(&self) -> &str {
        self.http.connector()
    }

    fn error(
        &self,
        operation: &str,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> ConnectorError {
        ConnectorError::new(self.name(), operation, kind, message)
    }

    // ---- transport ------------------------------------------------------------------------

    /// One data call with the current session; on an expired session, one renewal (shared
    /// with every other request that hit the same expiry) and one retry.
    async fn send(&self, operation: &str, call: &Call<'_>) -> Result<Answer, ConnectorError> {
        let session = self.tokens.session(&self.http).await?;
        let answer = self.send_once(operation, call, &session).await?;
        let expired = answer.status == 401
            && vendor_error(&answer.body)
                .and_then(|e| e.code)
                .is_none_or(|code| code == SESSION_EXPIRED);
        if !expired {
            return Ok(answer);
        }
        let session = self.tokens.renew(&self.http, session.generation).await?;
        self.send_once(operation, call, &session).await
    }

    async fn send_once(
        &self,
        operation: &str,
        call: &Call<'_>,
        session: &Arc<auth::Session>,
    ) -> Result<Answer, ConnectorError> {
        let url = match &call.target {
            Target::Data(path) => format!(
                "{}/services/data/v{}/{path}",
                session.instance_url, self.api_version
            ),
            Target::Instance(path) => format!("{}{path}", session.instance_url),
        };
        let mut request = self
            .http
            .client()
            .request(call.method.clone(), url)
            .bearer_auth(&session.token)
            .header(reqwest::header::ACCEPT, "application/json")
            .header("Sforce-Call-Options", CALL_OPTIONS);
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        if let Some(body) = call.body {
            request = request.json(body);
        }
        let answer = self.http.send(operation, request).await?;
        self.observe_usage(&answer);
        Ok(answer)
    }

    /// `Sforce-Limit-Info: api-usage=N/M[; per-app-api-usage=…]`: the org-wide count, which
    /// other integrations spend too.
    fn observe_usage(&self, answer: &Answer) {
        let Some(info) = answer.header("sforce-limit-info") else {
            return;
        };
        let usage = info.split(';').find_map(|part| {
            let (used, max) = part.trim().strip_prefix("api-usage=")?.split_once('/')?;
            Some((used.trim().parse().ok()?, max.trim().parse().ok()?))
        });
        match usage {
            Some((used, max)) => self.http.limiter().observe_server_usage(used, max),
            None => tracing::debug!(connector = %self.name(), "unreadable Sforce-Limit-Info"),
        }
    }

    /// The error for a failed answer, classified from the vendor's code, else the status.
    fn failure(&self, operation: &str, answer: &Answer) -> ConnectorError {
        let (code, message) = match vendor_error(&answer.body) {
            Some(VendorError { code, message }) => (code, message),
            None => (
                None,
                format!("unexpected answer: {}", excerpt(&answer.body)),
            ),
        };
        let kind = classify(code.as_deref(), Some(answer.status));
        let mut error = self
            .error(operation, kind, message)
            .with_status(answer.status);
        if code.as_deref() == Some(LIMIT_EXCEEDED) {
            // No Retry-After comes with it: back off and probe.
            self.http.limiter().pause(self.limit_pause);
            error = error.with_retry_after(self.limit_pause);
        } else if let Some(after) = answer.retry_after() {
            error = error.with_retry_after(after);
        }
        match code {
            Some(code) => error.with_code(code),
            None => error,
        }
    }

    fn protocol(&self, operation: &str, answer: &Answer, what: &str) -> ConnectorError {
        self.error(
            operation,
            ErrorKind::Protocol,
            format!("{what}: {}", excerpt(&answer.body)),
        )
        .with_status(answer.status)
    }

    fn json_body(&self, operation: &str, answer: &Answer) -> Result<Value, ConnectorError> {
        serde_json::from_slice(&answer.body)
            .map_err(|_| self.protocol(operation, answer, "the answer is not JSON"))
    }

    // ---- validation -----------------------------------------------------------------------

    fn check_object(&self, operation: &str, object: &str) -> Result<(), ConnectorError> {
        if soql::is_object_name(object) {
            Ok(())
        } else {
            Err(self.error(
                operation,
                ErrorKind::Rejected,
                format!("`{object}` is not a Salesforce object name"),
            ))
        }
    }

    fn check_field(&self, operation: &str, field: &str) -> Result<(), ConnectorError> {
        if soql::is_identifier(field) {
            Ok(())
        } else {
            Err(self.error(
                operation,
                ErrorKind::Rejected,
                format!("`{field}` is not a Salesforce field name"),
            ))
        }
    }

    /// Ids go into URL paths: only the 15/18-character alphanumeric form is accepted.
    fn check_id(&self, operation: &str, id: &str) -> Result<(), ConnectorError> {
        if matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(())
        } else {
            Err(self
                .error(
                    operation,
                    ErrorKind::Rejected,
                    format!("`{id}` is not a Salesforce record id"),
                )
                .with_code("MALFORMED_ID"))
        }
    }

    /// The requested fields plus `Id` and `SystemModstamp`, which every [`Record`] needs.
    fn select_list(
        &self,
        operation: &str,
        fields: &[String],
    ) -> Result<Vec<String>, ConnectorError> {
        let mut list = vec!["Id".to_string(), "SystemModstamp".to_string()];
        for field in fields {
            self.check_field(operation, field)?;
            if !list.iter().any(|f| f.eq_ignore_ascii_case(field)) {
                list.push(field.clone());
            }
        }
        Ok(list)
    }

    /// `?fields=` for a record read; nothing (all fields) when none are asked for.
    fn fields_param(
        &self,
        operation: &str,
        fields: &[String],
    ) -> Result<Option<String>, ConnectorError> {
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.select_list(operation, fields)?.join(",")))
    }

    fn marker_segment(&self, operation: &str, marker: &Marker) -> Result<String, ConnectorError> {
        self.check_field(operation, &marker.field)?;
        // An empty value or a dot segment cannot be addressed in a URL path: the request
        // would reach a different resource.
        if matches!(marker.value.as_str(), "" | "." | "..") {
            return Err(self.error(
                operation,
                ErrorKind::Rejected,
                format!(
                    "marker value `{}` cannot be used as an external id",
                    marker.value
                ),
            ));
        }
        Ok(format!("{}/{}", marker.field, segment(&marker.value)))
    }

    fn record(&self, operation: &str, value: Value) -> Result<Record, ConnectorError> {
        record_from(value).map_err(|what| self.error(operation, ErrorKind::Protocol, what))
    }

    // ---- operations -----------------------------------------------------------------------

    pub async fn check(&self) -> Result<(), ConnectorError> {
        let op = "check limits";
        let answer = self.send(op, &Call::get("limits".into())).await?;
        if !answer.is_success() {
            return Err(self.failure(op, &answer));
        }
        let body = self.json_body(op, &answer)?;
        let daily = &body["DailyApiRequests"];
        match (daily["Max"].as_u64(), daily["Remaining"].as_u64()) {
            (Some(max), Some(remaining)) => {
                self.http
                    .limiter()
                    .observe_server_usage(max.saturating_sub(remaining), max);
                Ok(())
            }
            _ => Err(self.protocol(op, &answer, "no DailyApiRequests in the limits")),
        }
    }

    pub async fn read(
        &self,
        object: &str,
        id: &str,
        fields: &[String],
    ) -> Result<Option<Record>, ConnectorError> {
        let op = format!("read {object}");
        self.check_object(&op, object)?;
        self.check_id(&op, id)?;
        if fields.iter().any(|f| f.contains('.')) {
            // Relationship fields (`Account.Name`) are not fields of the record's own resource:
            // only SOQL selects them.
            let text = format!(
                "SELECT {} FROM {object} WHERE Id = {}",
                self.select_list(&op, fields)?.join(", "),
                soql::quote(id)
            );
            let call = Call::get("query".into()).param("q", text);
            let (rows, _) = self.query_page(&op, &call).await?;
            return rows
                .into_iter()
                .next()
                .map(|row| self.record(&op, row))
                .transpose();
        }
        let mut call = Call::get(format!("sobjects/{object}/{id}"));
        if let Some(list) = self.fields_param(&op, fields)? {
            call = call.param("fields", list);
        }
        let answer = self.send(&op, &call).await?;
        match answer.status {
            200 => {
                let body = self.json_body(&op, &answer)?;
                self.record(&op, body).map(Some)
            }
            // Never existed or deleted (`NOT_FOUND`, `ENTITY_IS_DELETED`): both mean gone.
            404 => Ok(None),
            _ => Err(self.failure(&op, &answer)),
        }
    }

    pub async fn changed_since(
        &self,
        object: &str,
        filter: Option<&str>,
        since: Option<i64>,
        fields: &[String],
        cursor: Option<&str>,
    ) -> Result<Page, ConnectorError> {
        let op = format!("query {object}");
        self.check_object(&op, object)?;
        let call = match cursor {
            Some(next) => self.next_page(&op, next)?,
            None => {
                let select = self.select_list(&op, fields)?.join(", ");
                let mut conditions = Vec::new();
                // The operator's filter is the one raw clause: it comes from the configuration,
                // not from record data. Parentheses keep its OR from escaping our AND.
                if let Some(filter) = filter.map(str::trim).filter(|f| !f.is_empty()) {
                    conditions.push(format!("({filter})"));
                }
                if let Some(since) = since {
                    conditions.push(format!("SystemModstamp >= {}", soql::datetime(since)));
                }
                let mut text = format!("SELECT {select} FROM {object}");
                if !conditions.is_empty() {
                    text.push_str(" WHERE ");
                    text.push_str(&conditions.join(" AND "));
                }
                text.push_str(" ORDER BY SystemModstamp, Id");
                Call::get("query".into()).param("q", text)
            }
        };
        let (rows, next) = self.query_page(&op, &call).await?;
        let records = rows
            .into_iter()
            .map(|row| self.record(&op, row))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page { records, next })
    }

    /// A `nextRecordsUrl` to follow. It is opaque but may have been stored: it must stay a
    /// path on the instance, so the session token is never sent elsewhere.
    fn next_page(&self, operation: &str, next: &str) -> Result<Call<'static>, ConnectorError> {
        let valid = next.starts_with("/services/data/")
            && !next.contains(['\\', '#', '@'])
            && !next.split('/').any(|s| s == "..");
        if !valid {
            return Err(self.error(
                operation,
                ErrorKind::Rejected,
                format!("`{next}` is not a query cursor of this connector"),
            ));
        }
        Ok(Call::new(Method::GET, Target::Instance(next.to_string())))
    }

    /// Read many records of `object` by id: one SOQL query per 200 ids (`Id IN (…)` keeps the
    /// query well inside the URL limit at that size). Ids that no longer exist are absent.
    pub async fn read_many(
        &self,
        object: &str,
        ids: &[String],
        fields: &[String],
    ) -> Result<Vec<Record>, ConnectorError> {
        let op = format!("read many {object}");
        self.check_object(&op, object)?;
        for id in ids {
            self.check_id(&op, id)?;
        }
        let select = self.select_list(&op, fields)?.join(", ");
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(COLLECTION_MAX) {
            let list: Vec<String> = chunk.iter().map(|id| soql::quote(id)).collect();
            let text = format!(
                "SELECT {select} FROM {object} WHERE Id IN ({})",
                list.join(", ")
            );
            let mut call = Call::get("query".into()).param("q", text);
            loop {
                let (rows, next) = self.query_page(&op, &call).await?;
                for row in rows {
                    out.push(self.record(&op, row)?);
                }
                match next {
                    Some(next) => call = self.next_page(&op, &next)?,
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// One page of a query: its rows and the `nextRecordsUrl`, if not done.
    async fn query_page(
        &self,
        operation: &str,
        call: &Call<'_>,
    ) -> Result<(Vec<Value>, Option<String>), ConnectorError> {
        let answer = self.send(operation, call).await?;
        if !answer.is_success() {
            return Err(self.failure(operation, &answer));
        }
        let body = self.json_body(operation, &answer)?;
        let Some(rows) = body["records"].as_array() else {
            return Err(self.protocol(operation, &answer, "no records in the query answer"));
        };
        let done = body["done"].as_bool().unwrap_or(true);
        let next = match (done, body["nextRecordsUrl"].as_str()) {
            (true, _) => None,
            (false, Some(next)) => Some(next.to_string()),
            (false, None) => {
                return Err(self.protocol(
                    operation,
                    &answer,
                    "the query is not done but names no nextRecordsUrl",
                ))
            }
        };
        Ok((rows.clone(), next))
    }

    pub async fn find_by_marker(
        &self,
        object: &str,
        marker: &Marker,
        fields: &[String],
    ) -> Result<Option<Record>, ConnectorError> {
        let op = format!("find {object} by {}", marker.field);
        self.check_object(&op, object)?;
        let path = format!("sobjects/{object}/{}", self.marker_segment(&op, marker)?);
        let mut call = Call::get(path);
        if let Some(list) = self.fields_param(&op, fields)? {
            call = call.param("fields", list);
        }
        let answer = self.send(&op, &call).await?;
        match answer.status {
            200 => {
                let body = self.json_body(&op, &answer)?;
                self.record(&op, body).map(Some)
            }
            300 => Err(self.ambiguous(&op, &answer, marker)),
            404 => Ok(None),
            _ => Err(self.failure(&op, &answer)),
        }
    }

    /// 300 Multiple Choices: several records carry the marker; which one is meant is for a
    /// human to decide.
    fn ambiguous(&self, operation: &str, answer: &Answer, marker: &Marker) -> ConnectorError {
        let count = serde_json::from_slice::<Vec<Value>>(&answer.body)
            .map(|urls| urls.len().to_string())
            .unwrap_or_else(|_| "several".into());
        self.error(
            operation,
            ErrorKind::Rejected,
            format!(
                "the marker is ambiguous: {count} records have {} = {}",
                marker.field, marker.value
            ),
        )
        .with_status(answer.status)
        .with_code("MULTIPLE_CHOICES")
    }

    pub async fn create(&self, object: &str, record: NewRecord) -> Result<Created, ConnectorError> {
        let Some(marker) = record.marker else {
            return self.insert(object, record.fields).await;
        };
        let op = format!("upsert {object}");
        self.check_object(&op, object)?;
        let path = format!("sobjects/{object}/{}", self.marker_segment(&op, &marker)?);
        // The external id travels in the URL: neither it nor `Id` may be in the body.
        let mut fields = record.fields;
        fields.retain(|name, _| {
            !name.eq_ignore_ascii_case("Id")
                && !name.eq_ignore_ascii_case(&marker.field)
                && name != "attributes"
        });
        let body = Value::Object(fields);
        let answer = self
            .send(
                &op,
                &Call::new(Method::PATCH, Target::Data(path)).json(&body),
            )
            .await?;
        match answer.status {
            200 | 201 => {
                let reply = self.json_body(&op, &answer)?;
                let id = reply["id"]
                    .as_str()
                    .ok_or_else(|| self.protocol(&op, &answer, "no id in the upsert answer"))?;
                Ok(Created {
                    id: id.to_string(),
                    created: reply["created"].as_bool().unwrap_or(answer.status == 201),
                    incomplete: None,
                })
            }
            // Older API versions answer an update with 204 and no body: look the id up.
            204 => match self.find_by_marker(object, &marker, &[]).await? {
                Some(found) => Ok(Created {
                    id: found.id,
                    created: false,
                    incomplete: None,
                }),
                None => Err(self.protocol(
                    &op,
                    &answer,
                    "the upsert updated a record the marker no longer finds",
                )),
            },
            300 => Err(self.ambiguous(&op, &answer, &marker)),
            _ => Err(self.failure(&op, &answer)),
        }
    }

    async fn insert(
        &self,
        object: &str,
        fields: Map<String, Value>,
    ) -> Result<Created, ConnectorError> {
        let op = format!("create {object}");
        self.check_object(&op, object)?;
        let body = Value::Object(fields);
        let call = Call::new(Method::POST, Target::Data(format!("sobjects/{object}"))).json(&body);
        let answer = self.send(&op, &call).await?;
        if answer.status != 201 && answer.status != 200 {
            return Err(self.failure(&op, &answer));
        }
        let reply = self.json_body(&op, &answer)?;
        let id = reply["id"]
            .as_str()
            .ok_or_else(|| self.protocol(&op, &answer, "no id in the create answer"))?;
        Ok(Created {
            id: id.to_string(),
            created: true,
            incomplete: None,
        })
    }

    pub async fn update(
        &self,
        object: &str,
        id: &str,
        fields: Map<String, Value>,
    ) -> Result<(), ConnectorError> {
        let op = format!("update {object}");
        self.check_object(&op, object)?;
        self.check_id(&op, id)?;
        let body = Value::Object(fields);
        let call = Call::new(
            Method::PATCH,
            Target::Data(format!("sobjects/{object}/{id}")),
        )
        .json(&body);
        let answer = self.send(&op, &call).await?;
        if answer.is_success() {
            Ok(())
        } else {
            Err(self.failure(&op, &answer))
        }
    }

    pub async fn create_many(
        &self,
        object: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Result<Created, ConnectorError>>, ConnectorError> {
        let op = format!("create many {object}");
        self.check_object(&op, object)?;
        let mut results: Vec<Option<Result<Created, ConnectorError>>> = vec![None; records.len()];
        // Records with a marker are upserted on it (one call per marker field, as collections
        // upsert on one field); records without one are plainly created.
        let mut groups: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        for (index, record) in records.iter().enumerate() {
            match &record.marker {
                Some(marker) => match self.marker_segment(&op, marker) {
                    Ok(_) => groups
                        .entry(Some(marker.field.clone()))
                        .or_default()
                        .push(index),
                    Err(error) => results[index] = Some(Err(error)),
                },
                None => groups.entry(None).or_default().push(index),
            }
        }
        let mut batches = Vec::new();
        for (field, indexes) in groups {
            for chunk in indexes.chunks(COLLECTION_MAX) {
                batches.push((field.clone(), chunk.to_vec()));
            }
        }
        let mut answered = false;
        let mut failed: Option<ConnectorError> = None;
        for (field, chunk) in batches {
            if let Some(error) = &failed {
                for &i in &chunk {
                    results[i] = Some(Err(error.clone()));
                }
                continue;
            }
            let payload: Vec<Value> = chunk
                .iter()
                .map(|&i| collection_record(object, &records[i]))
                .collect();
            let body = json!({ "allOrNone": false, "records": payload });
            let call = match &field {
                Some(field) => Call::new(
                    Method::PATCH,
                    Target::Data(format!("composite/sobjects/{object}/{field}")),
                ),
                None => Call::new(Method::POST, Target::Data("composite/sobjects".into())),
            }
            .json(&body);
            match self.collection(&op, &call, chunk.len()).await {
                Ok(items) => {
                    answered = true;
                    for (&i, item) in chunk.iter().zip(items) {
                        results[i] = Some(item.map(|(id, created)| Created {
                            id,
                            // Plain creates always create; an upsert says (unconfirmed that
                            // `created` is always present: missing reads as an update).
                            created: field.is_none() || created.unwrap_or(false),
                            incomplete: None,
                        }));
                    }
                }
                // Nothing is known of any item yet: the whole batch failed.
                Err(error) if !answered => return Err(error),
                // Earlier calls did write: keep their outcomes, and give this call's error to
                // its items and to the ones not sent.
                Err(error) => {
                    for &i in &chunk {
                        results[i] = Some(Err(error.clone()));
                    }
                    failed = Some(error);
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(self.error(&op, ErrorKind::Protocol, "no result"))))
            .collect())
    }

    /// One sObject Collections call: per item, in input order, its outcome.
    async fn collection(
        &self,
        operation: &str,
        call: &Call<'_>,
        expected: usize,
    ) -> Result<Vec<ItemOutcome>, ConnectorError> {
        let answer = self.send(operation, call).await?;
        if !answer.is_success() {
            return Err(self.failure(operation, &answer));
        }
        let items: Vec<Value> = serde_json::from_slice(&answer.body)
            .map_err(|_| self.protocol(operation, &answer, "the answer is not a result array"))?;
        if items.len() != expected {
            return Err(self.protocol(
                operation,
                &answer,
                &format!("{} results for {expected} records", items.len()),
            ));
        }
        Ok(items
            .into_iter()
            .map(|item| self.collection_item(operation, &item))
            .collect())
    }

    fn collection_item(&self, operation: &str, item: &Value) -> ItemOutcome {
        if item["success"].as_bool() == Some(true) {
            let id = item["id"].as_str().ok_or_else(|| {
                self.error(
                    operation,
                    ErrorKind::Protocol,
                    format!("a success without an id: {item}"),
                )
            })?;
            return Ok((id.to_string(), item["created"].as_bool()));
        }
        // Item errors use `statusCode`, not `errorCode`.
        let errors = item["errors"].as_array().cloned().unwrap_or_default();
        let code = errors
            .first()
            .and_then(|e| e["statusCode"].as_str())
            .map(str::to_string);
        let message = join_messages(&errors)
            .unwrap_or_else(|| format!("the item failed without an error: {item}"));
        let error = self.error(operation, classify(code.as_deref(), None), message);
        Err(match code {
            Some(code) => error.with_code(code),
            None => error,
        })
    }

    pub async fn update_many(
        &self,
        object: &str,
        updates: Vec<(String, Map<String, Value>)>,
    ) -> Result<Vec<Result<(), ConnectorError>>, ConnectorError> {
        let op = format!("update many {object}");
        self.check_object(&op, object)?;
        let mut results: Vec<Result<(), ConnectorError>> = Vec::with_capacity(updates.len());
        let mut failed: Option<ConnectorError> = None;
        for chunk in updates.chunks(COLLECTION_MAX) {
            if let Some(error) = &failed {
                results.extend(chunk.iter().map(|_| Err(error.clone())));
                continue;
            }
            let payload: Vec<Value> = chunk
                .iter()
                .map(|(id, fields)| {
                    let mut record = fields.clone();
                    record.retain(|name, _| !name.eq_ignore_ascii_case("Id"));
                    record.insert("attributes".into(), json!({ "type": object }));
                    record.insert("Id".into(), Value::String(id.clone()));
                    Value::Object(record)
                })
                .collect();
            let body = json!({ "allOrNone": false, "records": payload });
            let call =
                Call::new(Method::PATCH, Target::Data("composite/sobjects".into())).json(&body);
            match self.collection(&op, &call, chunk.len()).await {
                Ok(items) => results.extend(items.into_iter().map(|item| item.map(|_| ()))),
                Err(error) if results.is_empty() => return Err(error),
                Err(error) => {
                    results.extend(chunk.iter().map(|_| Err(error.clone())));
                    failed = Some(error);
                }
            }
        }
        Ok(results)
    }

    pub async fn delete(&self, object: &str, id: &str) -> Result<(), ConnectorError> {
        let op = format!("delete {object}");
        self.check_object(&op, object)?;
        self.check_id(&op, id)?;
        let call = Call::new(
            Method::DELETE,
            Target::Data(format!("sobjects/{object}/{id}")),
        );
        let answer = self.send(&op, &call).await?;
        if answer.is_success() {
            Ok(())
        } else {
            Err(self.failure(&op, &answer))
        }
    }

    /// Whether the record is among those `filter` (an operator's SOQL `WHERE` clause) selects.
    pub async fn matches(
        &self,
        object: &str,
        id: &str,
        filter: &str,
    ) -> Result<bool, ConnectorError> {
        let op = format!("match {object} to filter");
        self.check_object(&op, object)?;
        let text = format!(
            "SELECT Id FROM {object} WHERE Id = {} AND ({filter})",
            soql::quote(id)
        );
        let call = Call::get("query".into()).param("q", text);
        let (rows, _) = self.query_page(&op, &call).await?;
        Ok(!rows.is_empty())
    }

    pub async fn comments(&self, parent_id: &str) -> Result<Vec<Comment>, ConnectorError> {
        let op = "query CaseComment";
        let text = format!(
            "SELECT {COMMENT_FIELDS} FROM CaseComment WHERE ParentId = {} ORDER BY CreatedDate, Id",
            soql::quote(parent_id)
        );
        let mut call = Call::get("query".into()).param("q", text);
        let mut comments = Vec::new();
        loop {
            let (rows, next) = self.query_page(op, &call).await?;
            for row in rows {
                comments.push(
                    comment_from(&row).map_err(|what| self.error(op, ErrorKind::Protocol, what))?,
                );
            }
            match next {
                Some(next) => call = self.next_page(op, &next)?,
                None => return Ok(comments),
            }
        }
    }

    pub async fn add_comment(
        &self,
        parent_id: &str,
        body: &str,
    ) -> Result<Comment, ConnectorError> {
        let op = "create CaseComment";
        let payload = json!({ "ParentId": parent_id, "CommentBody": body });
        let call =
            Call::new(Method::POST, Target::Data("sobjects/CaseComment".into())).json(&payload);
        let answer = self.send(op, &call).await?;
        if answer.status != 201 && answer.status != 200 {
            return Err(self.failure(op, &answer));
        }
        let reply = self.json_body(op, &answer)?;
        let id = reply["id"]
            .as_str()
            .ok_or_else(|| self.protocol(op, &answer, "no id in the create answer"))?
            .to_string();
        // The create answer has no timestamps; read them back. The comment exists either way:
        // a failed read must not make the caller create it again.
        let fields: Vec<String> = COMMENT_FIELDS.split(", ").map(str::to_string).collect();
        let read_back = match self.read("CaseComment", &id, &fields).await {
            Ok(Some(record)) => comment_from(&Value::Object(record.fields)).ok(),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(connector = %self.name(), %error, "reading a new comment back failed");
                None
            }
        };
        Ok(read_back.unwrap_or_else(|| {
            let now = chrono::Utc::now().timestamp_millis();
            Comment {
                id,
                parent_id: parent_id.to_string(),
                body: body.to_string(),
                created_at: now,
                modified_at: now,
            }
        }))
    }

    /// `ParentId` is create-only on CaseComment: the comment id alone addresses it.
    pub async fn edit_comment(
        &self,
        _parent_id: &str,
        comment_id: &str,
        body: &str,
    ) -> Result<(), ConnectorError> {
        let mut fields = Map::new();
        fields.insert("CommentBody".into(), Value::String(body.to_string()));
        self.update("CaseComment", comment_id, fields).await
    }

    pub async fn delete_comment(
        &self,
        _parent_id: &str,
        comment_id: &str,
    ) -> Result<(), ConnectorError> {
        self.delete("CaseComment", comment_id).await
    }

    pub fn parse_webhook(&self, request: &WebhookRequest<'_>) -> Result<Webhook, WebhookError> {
        webhook::parse(&self.webhooks, request)
    }
}

/// How a vendor error code (else the HTTP status) decides what the caller does next.
fn classify(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    match code {
        Some(SESSION_EXPIRED) => ErrorKind::Auth,
        Some(LIMIT_EXCEEDED) => ErrorKind::RateLimited,
        Some("UNABLE_TO_LOCK_ROW") => ErrorKind::Conflict,
        Some("ENTITY_IS_DELETED" | "NOT_FOUND") => ErrorKind::NotFound,
        // A query that ran too long on the vendor's side: a later, smaller (or luckier) run can
        // succeed, so it is retried rather than dead-lettered. (Splitting the window is left
        // to the poller's next, later-starting run.)
        Some("SERVER_UNAVAILABLE" | "QUERY_TIMEOUT") => ErrorKind::Server,
        Some("INSUFFICIENT_ACCESS_OR_READONLY") => ErrorKind::Forbidden,
        _ => match status {
            Some(status @ 400..=599) => ConnectorError::kind_for_status(status),
            // A per-item error has no status of its own: the vendor refused that record.
            None => ErrorKind::Rejected,
            Some(_) => ErrorKind::Protocol,
        },
    }
}

/// `[{"message","errorCode","fields"}]`; `None` when the body is not that shape.
fn vendor_error(body: &[u8]) -> Option<VendorError> {
    let items: Vec<Value> = serde_json::from_slice(body).ok()?;
    let first = items.first()?.as_object()?;
    let code = first
        .get("errorCode")
        .and_then(Value::as_str)
        .map(str::to_string);
    let message = join_messages(&items)?;
    Some(VendorError { code, message })
}

fn join_messages(items: &[Value]) -> Option<String> {
    let messages: Vec<&str> = items.iter().filter_map(|e| e["message"].as_str()).collect();
    (!messages.is_empty()).then(|| messages.join("; "))
}

/// The start of a body for an error message: enough to recognise an HTML error page.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    if out.is_empty() {
        out.push_str("(empty body)");
    }
    out
}

/// Percent-encode one URL path segment: everything but unreserved characters.
fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A record of a collection call: `attributes.type`, the fields, and the marker field.
fn collection_record(object: &str, record: &NewRecord) -> Value {
    let mut fields = record.fields.clone();
    fields.retain(|name, _| !name.eq_ignore_ascii_case("Id") && name != "attributes");
    if let Some(marker) = &record.marker {
        fields.retain(|name, _| !name.eq_ignore_ascii_case(&marker.field));
        fields.insert(marker.field.clone(), Value::String(marker.value.clone()));
    }
    fields.insert("attributes".into(), json!({ "type": object }));
    Value::Object(fields)
}

pub(crate) use super::parse_timestamp;

fn record_from(value: Value) -> Result<Record, String> {
    let Value::Object(mut fields) = value else {
        return Err("a record is not a JSON object".into());
    };
    fields.remove("attributes");
    let id = fields
        .get("Id")
        .and_then(Value::as_str)
        .ok_or("a record without Id")?
        .to_string();
    let stamp = fields
        .get("SystemModstamp")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("record {id} has no SystemModstamp"))?;
    let modified_at = parse_timestamp(stamp)
        .ok_or_else(|| format!("record {id}: SystemModstamp `{stamp}` is not a timestamp"))?;
    Ok(Record {
        id,
        modified_at,
        fields,
    })
}

fn comment_from(row: &Value) -> Result<Comment, String> {
    let text = |name: &str| row.get(name).and_then(Value::as_str);
    let time = |name: &str| text(name).and_then(parse_timestamp);
    let id = text("Id").ok_or("a CaseComment without Id")?;
    let created_at =
        time("CreatedDate").ok_or_else(|| format!("comment {id} has no CreatedDate"))?;
    Ok(Comment {
        id: id.to_string(),
        parent_id: text("ParentId").unwrap_or_default().to_string(),
        // A comment may be blank; Salesforce then sends null.
        body: text("CommentBody").unwrap_or_default().to_string(),
        created_at,
        modified_at: time("LastModifiedDate")
            .or_else(|| time("SystemModstamp"))
            .unwrap_or(created_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_decide_the_kind() {
        for (code, status, kind) in [
            (Some("INVALID_SESSION_ID"), Some(401), ErrorKind::Auth),
            (
                Some("REQUEST_LIMIT_EXCEEDED"),
                Some(403),
                ErrorKind::RateLimited,
            ),
            (Some("UNABLE_TO_LOCK_ROW"), None, ErrorKind::Conflict),
            (Some("ENTITY_IS_DELETED"), Some(404), ErrorKind::NotFound),
            (Some("SERVER_UNAVAILABLE"), Some(503), ErrorKind::Server),
            (Some("QUERY_TIMEOUT"), Some(400), ErrorKind::Server),
            (Some("UNKNOWN_EXCEPTION"), Some(500), ErrorKind::Server),
            (
                Some("INSUFFICIENT_ACCESS_OR_READONLY"),
                Some(400),
                ErrorKind::Forbidden,
            ),
            (
                Some("REQUIRED_FIELD_MISSING"),
                Some(400),
                ErrorKind::Rejected,
            ),
            (Some("MALFORMED_ID"), None, ErrorKind::Rejected),
            (None, Some(302), ErrorKind::Protocol),
        ] {
            assert_eq!(classify(code, status), kind, "{code:?} {status:?}");
        }
    }

    #[test]
    fn error_bodies_keep_the_first_code_and_every_message() {
        let body =
            br#"[{"message":"a","errorCode":"X","fields":[]},{"message":"b","errorCode":"Y"}]"#;
        let error = vendor_error(body).unwrap();
        assert_eq!(error.code.as_deref(), Some("X"));
        assert_eq!(error.message, "a; b");
        assert!(vendor_error(b"<html>oops</html>").is_none());
        assert!(vendor_error(b"[]").is_none());
    }

    #[test]
    fn path_segments_are_fully_encoded() {
        assert_eq!(segment("ABC-1"), "ABC-1");
        assert_eq!(segment("a/b?c#d e%f'"), "a%2Fb%3Fc%23d%20e%25f%27");
        assert_eq!(segment("ü"), "%C3%BC");
    }

    #[test]
    fn records_lose_attributes_and_get_their_stamp() {
        let record = record_from(json!({
            "attributes": {"type": "Case"},
            "Id": "500000000000001AAA",
            "SystemModstamp": "2024-01-15T10:00:00.000+0000",
            "Subject": "x"
        }))
        .unwrap();
        assert_eq!(record.modified_at, 1_705_312_800_000);
        assert!(!record.fields.contains_key("attributes"));
        assert_eq!(record.fields["Subject"], "x");
        assert!(record_from(json!({"Id": "x"})).is_err());
        assert_eq!(
            parse_timestamp("2024-01-15T10:00:00.000Z"),
            Some(1_705_312_800_000)
        );
        assert_eq!(
            parse_timestamp("2024-01-15T10:00:00+0000"),
            Some(1_705_312_800_000)
        );
    }
}
