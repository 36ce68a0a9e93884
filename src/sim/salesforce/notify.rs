//! Change notifications: Outbound Messages (SOAP, retried until acknowledged) and JSON events
//! shaped like Change Data Capture events, both sent through an [`Outbox`].
//!
//! One API call is one transaction: its changes share a CDC `transactionKey` and go out in one
//! Outbound Message per configured action (up to 100 `Notification`s each, as Salesforce batches).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::StatusCode;
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::ids;
use super::schema::{FieldType, Schema};
use super::store::{parse_datetime, Change, ChangeType, SIM_USER_ID};
use super::ORG_ID;
use crate::sim::outbox::{Delivery, Outbox, Verdict};

pub const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
pub const SOBJECT_NS: &str = "urn:sobject.enterprise.soap.sforce.com";
pub const SOAP_ENV_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// An Outbound Message action: which object's creates and edits to send, and which fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboundMessage {
    pub url: String,
    pub object: String,
    /// Fields sent besides `Id`.
    #[serde(default)]
    pub fields: Vec<String>,
}

/// A receiver of JSON change events; `objects` empty means every object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeEventEndpoint {
    pub url: String,
    #[serde(default)]
    pub objects: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredOutboundMessage {
    pub action_id: String,
    #[serde(flatten)]
    pub config: OutboundMessage,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("no object named {0}")]
    UnknownObject(String),
    #[error("no field {field} on {object}")]
    UnknownField { object: String, field: String },
    #[error("not an http(s) URL: {0}")]
    BadUrl(String),
}

/// Outbound Messages count as delivered only on HTTP 200 whose body holds
/// `Envelope/Body/notificationsResponse/Ack` = `true` in the outbound namespace.
pub fn judge_ack(status: Option<StatusCode>, body: &[u8]) -> Verdict {
    if status == Some(StatusCode::OK) && has_ack(body) {
        Verdict::Delivered
    } else {
        Verdict::Retry
    }
}

/// JSON change events: any 2xx delivers; throttling, timeouts and server errors retry; other
/// client errors will not get better by retrying.
pub fn judge_json(status: Option<StatusCode>, _body: &[u8]) -> Verdict {
    match status {
        Some(s) if s.is_success() => Verdict::Delivered,
        None => Verdict::Retry,
        Some(s)
            if s.is_server_error()
                || s == StatusCode::REQUEST_TIMEOUT
                || s == StatusCode::TOO_MANY_REQUESTS =>
        {
            Verdict::Retry
        }
        Some(_) => Verdict::GiveUp,
    }
}

pub fn has_ack(body: &[u8]) -> bool {
    const PATH: [(&str, &str); 4] = [
        (SOAP_ENV_NS, "Envelope"),
        (SOAP_ENV_NS, "Body"),
        (OUTBOUND_NS, "notificationsResponse"),
        (OUTBOUND_NS, "Ack"),
    ];
    let mut reader = NsReader::from_reader(body);
    let mut path: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    loop {
        match reader.read_resolved_event() {
            Ok((ns, Event::Start(start))) => {
                let ns = match ns {
                    ResolveResult::Bound(ns) => ns.as_ref().to_vec(),
                    _ => Vec::new(),
                };
                path.push((ns, start.local_name().as_ref().to_vec()));
            }
            Ok((_, Event::End(_))) => {
                path.pop();
            }
            Ok((_, Event::Text(text))) => {
                let at_ack = path.len() == PATH.len()
                    && path
                        .iter()
                        .zip(PATH)
                        .all(|((ns, name), (want_ns, want_name))| {
                            ns == want_ns.as_bytes() && name == want_name.as_bytes()
                        });
                if at_ack && text.unescape().is_ok_and(|t| t.trim() == "true") {
                    return true;
                }
            }
            Ok((_, Event::Eof)) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// The SOAP API's dateTime form (`…Z`) of a stored REST datetime (`…+0000`).
fn soap_datetime(stored: &str) -> String {
    parse_datetime(stored)
        .map(|at| at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| stored.to_string())
}

pub struct Notifier {
    schema: Arc<Schema>,
    soap: Arc<Outbox>,
    events: Arc<Outbox>,
    outbound: RwLock<Vec<RegisteredOutboundMessage>>,
    endpoints: RwLock<Vec<ChangeEventEndpoint>>,
    next_action: AtomicU64,
    next_notification: AtomicU64,
    replay_id: AtomicU64,
    commit_number: AtomicU64,
}

impl Notifier {
    pub fn new(schema: Arc<Schema>, soap: Arc<Outbox>, events: Arc<Outbox>) -> Notifier {
        Notifier {
            schema,
            soap,
            events,
            outbound: RwLock::new(Vec::new()),
            endpoints: RwLock::new(Vec::new()),
            next_action: AtomicU64::new(1),
            next_notification: AtomicU64::new(1),
            replay_id: AtomicU64::new(1),
            commit_number: AtomicU64::new(10_000_000_000),
        }
    }

    pub fn soap_outbox(&self) -> &Arc<Outbox> {
        &self.soap
    }

    pub fn event_outbox(&self) -> &Arc<Outbox> {
        &self.events
    }

    /// Register an Outbound Message action; returns its `ActionId` (prefix `04k`).
    pub fn add_outbound_message(
        &self,
        mut config: OutboundMessage,
    ) -> Result<String, RegisterError> {
        check_url(&config.url)?;
        let object = self
            .schema
            .object(&config.object)
            .ok_or_else(|| RegisterError::UnknownObject(config.object.clone()))?;
        config.object = object.name.clone();
        let mut fields = Vec::new();
        for name in &config.fields {
            let field = object
                .field(name)
                .ok_or_else(|| RegisterError::UnknownField {
                    object: object.name.clone(),
                    field: name.clone(),
                })?;
            if field.name != "Id" && !fields.contains(&field.name) {
                fields.push(field.name.clone());
            }
        }
        config.fields = fields;
        let action_id = ids::make("04k", self.next_action.fetch_add(1, Ordering::Relaxed));
        self.outbound
            .write()
            .expect("outbound lock")
            .push(RegisteredOutboundMessage {
                action_id: action_id.clone(),
                config,
            });
        Ok(action_id)
    }

    pub fn add_change_event_endpoint(
        &self,
        mut endpoint: ChangeEventEndpoint,
    ) -> Result<(), RegisterError> {
        check_url(&endpoint.url)?;
        for name in endpoint.objects.iter_mut() {
            let object = self
                .schema
                .object(name)
                .ok_or_else(|| RegisterError::UnknownObject(name.clone()))?;
            *name = object.name.clone();
        }
        self.endpoints
            .write()
            .expect("endpoints lock")
            .push(endpoint);
        Ok(())
    }

    pub fn outbound_messages(&self) -> Vec<RegisteredOutboundMessage> {
        self.outbound.read().expect("outbound lock").clone()
    }

    pub fn change_event_endpoints(&self) -> Vec<ChangeEventEndpoint> {
        self.endpoints.read().expect("endpoints lock").clone()
    }

    /// Send notifications for one committed transaction. `origin` is the CDC `changeOrigin`.
    /// Must run inside a Tokio runtime when any endpoint is registered.
    pub fn publish(&self, changes: &[Change], origin: &str, base_url: &str) {
        if changes.is_empty() {
            return;
        }
        self.publish_outbound(changes, base_url);
        self.publish_events(changes, origin);
    }

    fn publish_outbound(&self, changes: &[Change], base_url: &str) {
        let actions = self.outbound.read().expect("outbound lock").clone();
        for action in actions {
            let selected: Vec<&Change> = changes
                .iter()
                .filter(|c| c.object == action.config.object && c.kind != ChangeType::Delete)
                .collect();
            for batch in selected.chunks(100) {
                let body = self.envelope(&action, batch, base_url);
                self.soap.send(Delivery {
                    url: action.config.url.clone(),
                    headers: vec![
                        ("Content-Type".into(), "text/xml; charset=utf-8".into()),
                        // Salesforce sends an empty SOAPAction (unconfirmed).
                        ("SOAPAction".into(), "\"\"".into()),
                    ],
                    body: body.into_bytes(),
                });
            }
        }
    }

    /// The SOAP 1.1 envelope of an Outbound Message.
    fn envelope(
        &self,
        action: &RegisteredOutboundMessage,
        batch: &[&Change],
        base_url: &str,
    ) -> String {
        let org15 = &ORG_ID[..15];
        let mut xml = String::with_capacity(1024);
        xml.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        xml.push_str(&format!(
            r#"<soapenv:Envelope xmlns:soapenv="{SOAP_ENV_NS}" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#
        ));
        xml.push_str("<soapenv:Body>");
        xml.push_str(&format!(r#"<notifications xmlns="{OUTBOUND_NS}">"#));
        xml.push_str(&format!("<OrganizationId>{ORG_ID}</OrganizationId>"));
        xml.push_str(&format!("<ActionId>{}</ActionId>", action.action_id));
        xml.push_str(r#"<SessionId xsi:nil="true"/>"#);
        xml.push_str(&format!(
            "<EnterpriseUrl>{}</EnterpriseUrl>",
            escape(format!(
                "{base_url}/services/Soap/c/{}/{org15}",
                super::LATEST_VERSION
            ))
        ));
        xml.push_str(&format!(
            "<PartnerUrl>{}</PartnerUrl>",
            escape(format!(
                "{base_url}/services/Soap/u/{}/{org15}",
                super::LATEST_VERSION
            ))
        ));
        let object = self.schema.object(&action.config.object);
        for change in batch {
            let notification_id = ids::make(
                "04l",
                self.next_notification.fetch_add(1, Ordering::Relaxed),
            );
            xml.push_str("<Notification>");
            xml.push_str(&format!("<Id>{notification_id}</Id>"));
            xml.push_str(&format!(
                r#"<sObject xsi:type="sf:{}" xmlns:sf="{SOBJECT_NS}">"#,
                change.object
            ));
            xml.push_str(&format!("<sf:Id>{}</sf:Id>", change.id));
            for name in &action.config.fields {
                // Null fields are left out (unconfirmed: Salesforce may send them as xsi:nil).
                let Some(value) = change.record.get(name).filter(|v| !v.is_null()) else {
                    continue;
                };
                let kind = object.and_then(|o| o.field(name)).map(|f| f.kind);
                let text = match (kind, value) {
                    (Some(FieldType::Datetime), Value::String(s)) => soap_datetime(s),
                    (_, Value::String(s)) => s.clone(),
                    (_, other) => other.to_string(),
                };
                xml.push_str(&format!("<sf:{name}>{}</sf:{name}>", escape(text.as_str())));
            }
            xml.push_str("</sObject></Notification>");
        }
        xml.push_str("</notifications></soapenv:Body></soapenv:Envelope>");
        xml
    }

    fn publish_events(&self, changes: &[Change], origin: &str) {
        let endpoints = self.endpoints.read().expect("endpoints lock").clone();
        if endpoints.is_empty() {
            return;
        }
        let transaction_key = uuid::Uuid::new_v4().to_string();
        let commit_number = self.commit_number.fetch_add(1, Ordering::Relaxed);
        let commit_ms = changes
            .iter()
            .map(|c| c.commit_ms)
            .max()
            .unwrap_or_default();
        for (index, change) in changes.iter().enumerate() {
            let event = self.change_event(
                change,
                origin,
                &transaction_key,
                index + 1,
                commit_ms,
                commit_number,
            );
            let body = serde_json::to_vec(&event).unwrap_or_default();
            for endpoint in &endpoints {
                if !endpoint.objects.is_empty() && !endpoint.objects.contains(&change.object) {
                    continue;
                }
                self.events.send(Delivery {
                    url: endpoint.url.clone(),
                    headers: vec![("Content-Type".into(), "application/json".into())],
                    body: body.clone(),
                });
            }
        }
    }

    fn change_event(
        &self,
        change: &Change,
        origin: &str,
        transaction_key: &str,
        sequence: usize,
        commit_ms: i64,
        commit_number: u64,
    ) -> Value {
        let object = self.schema.object(&change.object);
        // CDC leaves out the id (it is in recordIds) and the system-only stamps.
        let excluded = ["Id", "IsDeleted", "SystemModstamp"];
        let (changed, fields): (Vec<String>, Vec<&String>) = match change.kind {
            ChangeType::Create => (
                Vec::new(),
                change
                    .changed
                    .iter()
                    .filter(|f| !excluded.contains(&f.as_str()))
                    .collect(),
            ),
            ChangeType::Update => {
                let changed: Vec<String> = change
                    .changed
                    .iter()
                    .filter(|f| !excluded.contains(&f.as_str()))
                    .cloned()
                    .collect();
                (
                    changed,
                    change
                        .changed
                        .iter()
                        .filter(|f| !excluded.contains(&f.as_str()))
                        .collect(),
                )
            }
            ChangeType::Delete => (Vec::new(), Vec::new()),
        };
        let mut payload = Map::new();
        payload.insert(
            "ChangeEventHeader".into(),
            json!({
                "entityName": change.object,
                "recordIds": [change.id],
                "changeType": change.kind.as_str(),
                "changeOrigin": origin,
                "transactionKey": transaction_key,
                "sequenceNumber": sequence,
                "commitTimestamp": commit_ms,
                "commitNumber": commit_number,
                "commitUser": SIM_USER_ID,
                "changedFields": changed,
                "diffFields": [],
                "nulledFields": if change.kind == ChangeType::Update { change.nulled.clone() } else { Vec::new() },
            }),
        );
        for name in fields {
            let value = change.record.get(name).cloned().unwrap_or(Value::Null);
            let kind = object.and_then(|o| o.field(name)).map(|f| f.kind);
            // Datetimes in CometD/JSON CDC events use the `Z` form (unconfirmed).
            let value = match (kind, &value) {
                (Some(FieldType::Datetime), Value::String(s)) => Value::String(soap_datetime(s)),
                _ => value,
            };
            payload.insert(name.clone(), value);
        }
        let schema_id = schema_id(&change.object);
        json!({
            "data": {
                "schema": schema_id,
                "payload": payload,
                "event": { "replayId": self.replay_id.fetch_add(1, Ordering::Relaxed) },
            },
            "channel": channel(&change.object),
        })
    }
}

/// `/data/CaseChangeEvent`; custom objects drop the `c`: `/data/Invoice__ChangeEvent`.
fn channel(object: &str) -> String {
    match object.strip_suffix("__c") {
        Some(base) => format!("/data/{base}__ChangeEvent"),
        None => format!("/data/{object}ChangeEvent"),
    }
}

/// A stable schema id per object, shaped like the 22-character ids CDC events carry.
fn schema_id(object: &str) -> String {
    use base64::Engine as _;
    let digest = Sha256::digest(object.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

fn check_url(url: &str) -> Result<(), RegisterError> {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(()),
        _ => Err(RegisterError::BadUrl(url.to_string())),
    }
}

/// The retry schedule: `first`, doubling, at most two hours apart (Salesforce's cap), `count`
/// retries in all.
pub fn retry_delays(first: Duration, count: usize) -> Vec<Duration> {
    let cap = Duration::from_secs(2 * 60 * 60);
    (0..count)
        .map(|i| first.saturating_mul(1u32 << i.min(20)).min(cap))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_in_the_outbound_namespace_counts() {
        let body = format!(
            r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV_NS}"><soapenv:Body><notificationsResponse xmlns="{OUTBOUND_NS}"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#
        );
        assert!(has_ack(body.as_bytes()));
        assert_eq!(
            judge_ack(Some(StatusCode::OK), body.as_bytes()),
            Verdict::Delivered
        );
        assert_eq!(
            judge_ack(Some(StatusCode::ACCEPTED), body.as_bytes()),
            Verdict::Retry
        );
    }

    #[test]
    fn an_ack_that_is_false_or_in_the_wrong_namespace_does_not_count() {
        let falsy = format!(
            r#"<s:Envelope xmlns:s="{SOAP_ENV_NS}"><s:Body><n:notificationsResponse xmlns:n="{OUTBOUND_NS}"><n:Ack>false</n:Ack></n:notificationsResponse></s:Body></s:Envelope>"#
        );
        let wrong_ns = format!(
            r#"<s:Envelope xmlns:s="{SOAP_ENV_NS}"><s:Body><notificationsResponse><Ack>true</Ack></notificationsResponse></s:Body></s:Envelope>"#
        );
        assert!(!has_ack(falsy.as_bytes()));
        assert!(!has_ack(wrong_ns.as_bytes()));
        assert!(!has_ack(b"OK"));
        assert_eq!(judge_ack(None, b""), Verdict::Retry);
    }

    #[test]
    fn retry_delays_double_and_are_capped_at_two_hours() {
        let delays = retry_delays(Duration::from_secs(1800), 4);
        assert_eq!(
            delays,
            vec![
                Duration::from_secs(1800),
                Duration::from_secs(3600),
                Duration::from_secs(7200),
                Duration::from_secs(7200)
            ]
        );
    }
}
