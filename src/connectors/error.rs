//! How a vendor call failed, classified once so callers decide without knowing the vendor.

use std::time::Duration;

/// What kind of failure a vendor call met; decides whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No answer: connect failure, reset, timeout. Retryable; counts towards the circuit breaker.
    Transport,
    /// 5xx from the vendor. Retryable; counts towards the circuit breaker.
    Server,
    /// 429, or Salesforce `REQUEST_LIMIT_EXCEEDED`: the connector is paused. Retryable after
    /// `retry_after`.
    RateLimited,
    /// Tandem's own daily budget for this connector is spent. Retryable after `retry_after`.
    Budget,
    /// The connector's circuit breaker is open: the call was not made. Retryable after
    /// `retry_after`.
    CircuitOpen,
    /// A transient clash on the vendor's side (Jira 409, Salesforce `UNABLE_TO_LOCK_ROW`).
    /// Retryable.
    Conflict,
    /// Credentials refused (after one token refresh where the vendor has tokens). Permanent until
    /// an operator fixes the configuration.
    Auth,
    /// No permission for this record or operation. Permanent.
    Forbidden,
    /// The record (or endpoint) does not exist, or is deleted. Permanent.
    NotFound,
    /// The vendor refused the content: validation, bad JQL/SOQL, missing required field, no
    /// workflow transition to the wanted status. Permanent.
    Rejected,
    /// An answer Tandem cannot understand (not the documented shape). Permanent: retrying gets
    /// the same answer; the message says what was wrong.
    Protocol,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transport => "transport",
            ErrorKind::Server => "server",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Budget => "budget",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Auth => "auth",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Protocol => "protocol",
        }
    }

    /// The call was held back by Tandem's own traffic control, not tried and failed: waiting
    /// for it is not an attempt of the change.
    pub fn is_held_back(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited | ErrorKind::Budget | ErrorKind::CircuitOpen
        )
    }

    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Transport
                | ErrorKind::Server
                | ErrorKind::RateLimited
                | ErrorKind::Budget
                | ErrorKind::CircuitOpen
                | ErrorKind::Conflict
        )
    }
}

/// A failed vendor call, with what the vendor said kept verbatim for the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{connector} {operation}: {}{message}", status.map(|s| format!("HTTP {s} ")).unwrap_or_default())]
pub struct ConnectorError {
    /// The configured connector name.
    pub connector: String,
    /// What was being done, e.g. `update issue`, `query Case`.
    pub operation: String,
    pub kind: ErrorKind,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The vendor's error code (`REQUIRED_FIELD_MISSING`, `INVALID_SESSION_ID`), when it gave one.
    pub code: Option<String>,
    /// The vendor's message(s), or what went wrong on the way.
    pub message: String,
    /// When trying again makes sense (from `Retry-After`, a pause or a budget reset).
    pub retry_after: Option<Duration>,
}

impl ConnectorError {
    pub fn new(
        connector: &str,
        operation: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> ConnectorError {
        ConnectorError {
            connector: connector.to_string(),
            operation: operation.into(),
            kind,
            status: None,
            code: None,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The classification of an HTTP status when the body says nothing more specific.
    pub fn kind_for_status(status: u16) -> ErrorKind {
        match status {
            401 => ErrorKind::Auth,
            403 => ErrorKind::Forbidden,
            404 | 410 => ErrorKind::NotFound,
            408 | 425 => ErrorKind::Transport,
            409 => ErrorKind::Conflict,
            429 => ErrorKind::RateLimited,
            500..=599 => ErrorKind::Server,
            _ => ErrorKind::Rejected,
        }
    }
}
