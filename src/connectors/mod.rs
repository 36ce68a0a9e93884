//! The clients that talk to the vendors, behind one [`Connector`] the rest of Tandem uses without
//! knowing which vendor it is.
//!
//! Each vendor module owns its wire format: requests and answers, authentication, error bodies,
//! rate-limit headers, query-language escaping (`jira::jql`, `salesforce::soql`: every value put
//! into a query goes through them), and the parsing of its webhooks into journal changes.
//! Connectors never touch the database; usage counts leave through [`limit::Limiter`].

pub mod error;
pub mod http;
pub mod jira;
pub mod limit;
pub mod salesforce;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use error::{ConnectorError, ErrorKind};
pub use limit::{BreakerState, CallStats, Limiter, QuotaSnapshot, Usage};

use crate::config::{ConnectorKind, ConnectorSettings, Settings};
use crate::journal::NewChange;

/// The object name comment changes carry, on every vendor (Jira comments, Salesforce
/// `CaseComment`); their snapshot is a [`Comment`].
pub const COMMENT_OBJECT: &str = "comment";

/// A record as read from a vendor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The vendor's stable id: Jira's numeric issue id (not the key, which changes on a move),
    /// Salesforce's 18-character id.
    pub id: String,
    /// The vendor's modified time (Jira `updated`, Salesforce `SystemModstamp`), epoch ms.
    pub modified_at: i64,
    /// The fields as the vendor's REST API shows them (Jira v3: rich text as ADF).
    pub fields: Map<String, Value>,
}

/// One page of a listing; `next` continues it.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<Record>,
    /// Opaque cursor for the next page (`nextPageToken`, `nextRecordsUrl`); `None` at the end.
    pub next: Option<String>,
}

/// The idempotency marker: the field on the target that holds the source record's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub field: String,
    pub value: String,
}

/// A record to create, with its marker.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    pub fields: Map<String, Value>,
    pub marker: Option<Marker>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: String,
    /// False when the marker found an existing record (it was updated, not created).
    pub created: bool,
    /// The record exists, but part of the write failed after it was made (Jira: the status
    /// transition after the create). The caller links the record first, then retries the rest
    /// as an update, so a retry never creates a second record.
    pub incomplete: Option<ConnectorError>,
}

/// A comment on a record, text as plain text on every vendor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub id: String,
    /// The record the comment belongs to.
    pub parent_id: String,
    pub body: String,
    pub created_at: i64,
    pub modified_at: i64,
}

/// What the webhook sender expects back once its changes are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookReply {
    /// An empty 2xx.
    Empty,
    /// A SOAP `notificationsResponse` with `Ack` = `true` (Salesforce Outbound Messages).
    SoapAck,
}

/// An accepted webhook: the changes it carries and the answer owed after they commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub changes: Vec<NewChange>,
    pub reply: WebhookReply,
}

/// What a webhook receiver sees of the request.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The token from the URL path (`/webhooks/{connector}/{token}`), if any.
    pub path_token: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Missing or wrong signature/token, or the wrong organization: 401, nothing parsed.
    #[error("{0}")]
    Unauthorized(String),
    /// The body is not what this vendor sends: 400 with the reason.
    #[error("{0}")]
    Malformed(String),
}

/// One configured system, whichever vendor it is.
pub enum Connector {
    Jira(jira::JiraClient),
    Salesforce(salesforce::SalesforceClient),
}

macro_rules! each {
    ($self:ident, $c:ident => $body:expr) => {
        match $self {
            Connector::Jira($c) => $body,
            Connector::Salesforce($c) => $body,
        }
    };
}

impl Connector {
    pub fn build(
        name: &str,
        settings: &ConnectorSettings,
        stats: CallStats,
    ) -> Result<Connector, ConnectorError> {
        Ok(match settings {
            ConnectorSettings::Jira(s) => Connector::Jira(jira::JiraClient::new(name, s, stats)?),
            ConnectorSettings::Salesforce(s) => {
                Connector::Salesforce(salesforce::SalesforceClient::new(name, s, stats)?)
            }
        })
    }

    pub fn name(&self) -> &str {
        each!(self, c => c.http().connector())
    }

    pub fn kind(&self) -> ConnectorKind {
        match self {
            Connector::Jira(_) => ConnectorKind::Jira,
            Connector::Salesforce(_) => ConnectorKind::Salesforce,
        }
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        each!(self, c => c.http().limiter())
    }

    /// Check the credentials with a cheap call (Jira `myself`, a Salesforce token and `limits`).
    pub async fn check(&self) -> Result<(), ConnectorError> {
        each!(self, c => c.check().await)
    }

    /// Read one record; `fields` empty means all. `None` when it does not exist (or is deleted).
    pub async fn read(
        &self,
        object: &str,
        id: &str,
        fields: &[String],
    ) -> Result<Option<Record>, ConnectorError> {
        each!(self, c => c.read(object, id, fields).await)
    }

    /// Read many records by id, in as few calls as the vendor allows; missing ones are absent.
    pub async fn read_many(
        &self,
        object: &str,
        ids: &[String],
        fields: &[String],
    ) -> Result<Vec<Record>, ConnectorError> {
        each!(self, c => c.read_many(object, ids, fields).await)
    }

    /// One page of the records of `object` matching `filter` (JQL / SOQL `WHERE` clause, written
    /// by the operator) modified at or after `since` (epoch ms; `None` for all), oldest first,
    /// ties in id order. Pass the previous page's `next` to continue.
    pub async fn changed_since(
        &self,
        object: &str,
        filter: Option<&str>,
        since: Option<i64>,
        fields: &[String],
        cursor: Option<&str>,
    ) -> Result<Page, ConnectorError> {
        each!(self, c => c.changed_since(object, filter, since, fields, cursor).await)
    }

    /// Whether a record is among those the operator's `filter` selects (asked before creating
    /// a counterpart for a record that arrived by webhook, which no filter narrowed).
    pub async fn matches(
        &self,
        object: &str,
        id: &str,
        filter: &str,
    ) -> Result<bool, ConnectorError> {
        each!(self, c => c.matches(object, id, filter).await)
    }

    /// The record whose marker field holds `marker.value`, if any.
    pub async fn find_by_marker(
        &self,
        object: &str,
        marker: &Marker,
        fields: &[String],
    ) -> Result<Option<Record>, ConnectorError> {
        each!(self, c => c.find_by_marker(object, marker, fields).await)
    }

    /// Create a record carrying its marker. Salesforce upserts on the marker, so a retry cannot
    /// create twice; Jira has no upsert, so before retrying a create whose outcome is unknown
    /// the caller looks the marker up ([`Connector::find_by_marker`]).
    pub async fn create(&self, object: &str, record: NewRecord) -> Result<Created, ConnectorError> {
        each!(self, c => c.create(object, record).await)
    }

    /// Change fields of one record (Jira: a `status` value is reached through a transition).
    pub async fn update(
        &self,
        object: &str,
        id: &str,
        fields: Map<String, Value>,
    ) -> Result<(), ConnectorError> {
        each!(self, c => c.update(object, id, fields).await)
    }

    /// Create many records in as few calls as the vendor allows; one result per input, in
    /// order. The outer error means no item's outcome is known.
    pub async fn create_many(
        &self,
        object: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Result<Created, ConnectorError>>, ConnectorError> {
        each!(self, c => c.create_many(object, records).await)
    }

    /// Update many records; one result per input, in order.
    pub async fn update_many(
        &self,
        object: &str,
        updates: Vec<(String, Map<String, Value>)>,
    ) -> Result<Vec<Result<(), ConnectorError>>, ConnectorError> {
        each!(self, c => c.update_many(object, updates).await)
    }

    pub async fn delete(&self, object: &str, id: &str) -> Result<(), ConnectorError> {
        each!(self, c => c.delete(object, id).await)
    }

    /// Every comment on a record, oldest first.
    pub async fn comments(&self, parent_id: &str) -> Result<Vec<Comment>, ConnectorError> {
        each!(self, c => c.comments(parent_id).await)
    }

    pub async fn add_comment(
        &self,
        parent_id: &str,
        body: &str,
    ) -> Result<Comment, ConnectorError> {
        each!(self, c => c.add_comment(parent_id, body).await)
    }

    pub async fn edit_comment(
        &self,
        parent_id: &str,
        comment_id: &str,
        body: &str,
    ) -> Result<(), ConnectorError> {
        each!(self, c => c.edit_comment(parent_id, comment_id, body).await)
    }

    pub async fn delete_comment(
        &self,
        parent_id: &str,
        comment_id: &str,
    ) -> Result<(), ConnectorError> {
        each!(self, c => c.delete_comment(parent_id, comment_id).await)
    }

    /// Verify and parse a webhook. Authentication comes first: nothing of an unauthenticated
    /// body is parsed.
    pub fn parse_webhook(&self, request: &WebhookRequest<'_>) -> Result<Webhook, WebhookError> {
        each!(self, c => c.parse_webhook(request))
    }
}

/// Every configured connector, by name.
#[derive(Clone, Default)]
pub struct Connectors {
    by_name: Arc<BTreeMap<String, Arc<Connector>>>,
}

impl Connectors {
    pub fn build(settings: &Settings, stats: &CallStats) -> Result<Connectors, ConnectorError> {
        let mut by_name = BTreeMap::new();
        for (name, connector) in &settings.connectors {
            by_name.insert(
                name.clone(),
                Arc::new(Connector::build(name, connector, stats.clone())?),
            );
        }
        Ok(Connectors {
            by_name: Arc::new(by_name),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Connector>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<Connector>)> {
        self.by_name.iter()
    }
}

/// The dedupe key of an observed record state: the same whether a webhook or a poll saw it, so
/// one edit enters the journal once however many ways it arrives.
pub fn state_key(connector: &str, object: &str, record_id: &str, modified_at: i64) -> String {
    format!("{connector}/{object}/{record_id}@{modified_at}")
}

/// The dedupe key of a deletion, for vendors where a record is deleted once (Jira has no
/// undelete; Salesforce change events carry their own event identity instead).
pub fn delete_key(connector: &str, object: &str, record_id: &str) -> String {
    format!("{connector}/{object}/{record_id}@deleted")
}

/// Epoch ms of a vendor timestamp, whichever form it comes in: Jira's
/// `2024-12-29T08:41:23.303+0530` (offset without a colon, in some user's zone: always
/// applied), Salesforce REST's `…+0000`, SOAP and change events' `…Z`, RFC 3339.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp_millis());
    }
    ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%z"]
        .iter()
        .find_map(|format| chrono::DateTime::parse_from_str(text, format).ok())
        .map(|at| at.timestamp_millis())
}

/// Compare a secret in constant time.
pub fn secret_matches(expected: &[u8], given: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    expected.len() == given.len() && bool::from(expected.ct_eq(given))
}
