//! Jira's formats: timestamps, error bodies and rate-limit headers.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

pub use crate::connectors::parse_timestamp as parse_time;

/// `X-RateLimit-Reset`: ISO 8601 to the minute, `yyyy-MM-ddTHH:mmZ`. Seconds are tolerated in
/// case Atlassian sends them (unconfirmed).
pub fn parse_reset(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%MZ")
        .map(|t| t.and_utc())
        .ok()
        .or_else(|| {
            DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
}

/// How long until `reset`, if it is in the future.
pub fn until(reset: DateTime<Utc>) -> Option<Duration> {
    (reset - Utc::now()).to_std().ok().filter(|d| !d.is_zero())
}

/// The message of a Jira error answer, verbatim: `errorMessages` joined, then the field errors
/// as `field: message`. 401s (and proxies in front of Jira) may answer in plain text, which is
/// kept as it is; an empty body gives `None`.
pub fn error_message(body: &[u8]) -> Option<String> {
    if let Ok(json) = serde_json::from_slice::<Value>(body) {
        if let Some(message) = json_error_message(&json) {
            return Some(message);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    // An HTML error page can be long: keep enough to recognise it.
    const LIMIT: usize = 2000;
    Some(match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    })
}

/// The message of a `{"errorMessages":[…],"errors":{…}}` value (also the shape of a bulk
/// create's `elementErrors`); `None` when it carries none.
pub fn json_error_message(json: &Value) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    if let Some(messages) = json.get("errorMessages").and_then(Value::as_array) {
        parts.extend(
            messages
                .iter()
                .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string)),
        );
    }
    if let Some(errors) = json.get("errors").and_then(Value::as_object) {
        parts.extend(errors.iter().map(|(field, message)| {
            let message = message
                .as_str()
                .map_or_else(|| message.to_string(), str::to_string);
            format!("{field}: {message}")
        }));
    }
    // Some gateways answer `{"message": "…"}` (unconfirmed for Jira itself).
    if parts.is_empty() {
        if let Some(message) = json.get("message").and_then(Value::as_str) {
            parts.push(message.to_string());
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// An id in an answer: Jira sends ids as strings, but a number is read the same.
pub fn id_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jira_timestamps_keep_their_offset() {
        assert_eq!(
            parse_time("2024-12-29T08:41:23.303+0530"),
            Some(1_735_441_883_303)
        );
        assert_eq!(
            parse_time("2024-12-29T03:11:23.303+0000"),
            Some(1_735_441_883_303)
        );
        assert_eq!(
            parse_time("2024-12-29T03:11:23.303Z"),
            Some(1_735_441_883_303)
        );
        assert_eq!(parse_time("2024-12-29"), None);
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn reset_headers_parse_to_the_minute() {
        let t = parse_reset("2026-03-01T10:05Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-01T10:05:00+00:00");
        assert!(parse_reset("soon").is_none());
    }

    #[test]
    fn error_bodies_keep_jiras_words() {
        let body = json!({"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}});
        assert_eq!(
            error_message(body.to_string().as_bytes()).unwrap(),
            "Issue does not exist or you do not have permission to see it."
        );
        let body = json!({"errorMessages": ["one"], "errors": {"summary": "You must specify a summary of the issue."}});
        assert_eq!(
            error_message(body.to_string().as_bytes()).unwrap(),
            "one; summary: You must specify a summary of the issue."
        );
        assert_eq!(
            error_message(b"Client must be authenticated to access this resource.").unwrap(),
            "Client must be authenticated to access this resource."
        );
        assert_eq!(error_message(b"  "), None);
        assert_eq!(
            error_message(b"{\"unexpected\":true}").unwrap(),
            "{\"unexpected\":true}"
        );
    }
}
