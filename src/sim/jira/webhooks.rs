//! Jira's webhooks: which registrations an event matches, the payload, the signature, and the
//! retry verdicts (408, 409, 425, 429, 5xx and connection failures are retried; other 4xx not).

use axum::http::StatusCode;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::jql;
use super::render::{self, FieldSelection};
use super::store::{Api, Event, Issue, Store};
use crate::sim::outbox::{Delivery, Verdict};

pub const EVENTS: [&str; 6] = [
    "jira:issue_created",
    "jira:issue_updated",
    "jira:issue_deleted",
    "comment_created",
    "comment_updated",
    "comment_deleted",
];

pub fn judge(status: Option<StatusCode>, _body: &[u8]) -> Verdict {
    match status.map(|s| s.as_u16()) {
        Some(200..=299) => Verdict::Delivered,
        None | Some(408 | 409 | 425 | 429 | 500..=599) => Verdict::Retry,
        Some(_) => Verdict::GiveUp,
    }
}

/// `sha256=<lowercase hex HMAC-SHA256 of the body>`, Jira's `X-Hub-Signature`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

type View<'a> = (&'static str, &'static str, Vec<(&'static str, Value)>);

/// The deliveries one event produces: one per matching registration and event name. A comment
/// change also raises `jira:issue_updated` (`issue_commented`, …), as Jira does.
pub fn deliveries(store: &Store, event: &Event, actor: &str, timestamp_ms: i64) -> Vec<Delivery> {
    let comment_json = |issue: Option<&Issue>, id: u64| {
        issue
            .and_then(|i| {
                i.comments
                    .iter()
                    .find(|c| c.id == id)
                    .map(|c| render::comment(store, Api::V2, i, c))
            })
            .unwrap_or(Value::Null)
    };
    let (issue, views): (Option<&Issue>, Vec<View>) = match event {
        Event::IssueCreated { issue } => (
            store.issues.get(issue),
            vec![("jira:issue_created", "issue_created", vec![])],
        ),
        Event::IssueUpdated {
            issue,
            changelog,
            type_name,
        } => {
            let items = render::changelog_entry(store, changelog)["items"].clone();
            (
                store.issues.get(issue),
                vec![(
                    "jira:issue_updated",
                    *type_name,
                    vec![(
                        "changelog",
                        json!({ "id": changelog.id.to_string(), "items": items }),
                    )],
                )],
            )
        }
        Event::IssueDeleted { issue } => (
            Some(issue.as_ref()),
            vec![("jira:issue_deleted", "issue_deleted", vec![])],
        ),
        Event::CommentCreated { issue, comment } => {
            let found = store.issues.get(issue);
            let c = comment_json(found, *comment);
            (
                found,
                vec![
                    ("comment_created", "", vec![("comment", c.clone())]),
                    (
                        "jira:issue_updated",
                        "issue_commented",
                        vec![("comment", c)],
                    ),
                ],
            )
        }
        Event::CommentUpdated { issue, comment } => {
            let found = store.issues.get(issue);
            let c = comment_json(found, *comment);
            (
                found,
                vec![
                    ("comment_updated", "", vec![("comment", c.clone())]),
                    (
                        "jira:issue_updated",
                        "issue_comment_edited",
                        vec![("comment", c)],
                    ),
                ],
            )
        }
        Event::CommentDeleted { issue, comment } => {
            let found = store.issues.get(issue);
            let c = found.map_or(Value::Null, |i| render::comment(store, Api::V2, i, comment));
            (
                found,
                vec![
                    ("comment_deleted", "", vec![("comment", c.clone())]),
                    (
                        "jira:issue_updated",
                        "issue_comment_deleted",
                        vec![("comment", c)],
                    ),
                ],
            )
        }
    };
    let Some(issue) = issue else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, type_name, extra) in &views {
        for hook in store
            .webhooks
            .iter()
            .filter(|h| h.events.iter().any(|e| e == name))
        {
            // A filter is evaluated against the issue (as it was, for a delete).
            if let Some(filter) = &hook.jql {
                match jql::parse(filter, store) {
                    Ok(query) if query.matches(issue, store) => {}
                    Ok(_) => continue,
                    Err(error) => {
                        // Valid at registration, invalid now (e.g. a key it names was deleted).
                        tracing::warn!(
                            webhook = hook.id,
                            filter = %filter,
                            error = %error.messages.join(" "),
                            "webhook filter no longer parses; event not delivered"
                        );
                        continue;
                    }
                }
            }
            // Real captures show issue bodies in the v2 shape (plain-string rich text).
            let mut payload = json!({
                "timestamp": timestamp_ms,
                "webhookEvent": name,
                "user": render::user(store, actor),
                "issue": render::issue(store, Api::V2, issue, &FieldSelection::all(), &[]),
                "matchedWebhookIds": [hook.id],
            });
            if !type_name.is_empty() {
                payload["issue_event_type_name"] = json!(type_name);
            }
            for (key, value) in extra {
                payload[*key] = value.clone();
            }
            let body = payload.to_string().into_bytes();
            let mut headers = vec![
                ("Content-Type".to_string(), "application/json".to_string()),
                (
                    "User-Agent".to_string(),
                    "Atlassian Webhook HTTP Client".to_string(),
                ),
                // Unique per event and registration, the same across retries: the dedupe key.
                (
                    "X-Atlassian-Webhook-Identifier".to_string(),
                    uuid::Uuid::new_v4().to_string(),
                ),
                (
                    "X-Atlassian-Webhook-Flow".to_string(),
                    "Primary".to_string(),
                ),
            ];
            if let Some(secret) = &hook.secret {
                headers.push(("X-Hub-Signature".to_string(), signature(secret, &body)));
            }
            out.push(Delivery {
                url: hook.url.clone(),
                headers,
                body,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_atlassians_published_test_vector() {
        assert_eq!(
            signature("It's a Secret to Everybody", b"Hello World!"),
            "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9"
        );
    }

    #[test]
    fn retryable_answers_are_retried_and_other_client_errors_are_not() {
        assert_eq!(judge(Some(StatusCode::NO_CONTENT), b""), Verdict::Delivered);
        assert_eq!(judge(None, b""), Verdict::Retry);
        for code in [408, 409, 425, 429, 500, 503] {
            assert_eq!(
                judge(Some(StatusCode::from_u16(code).unwrap()), b""),
                Verdict::Retry,
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 410] {
            assert_eq!(
                judge(Some(StatusCode::from_u16(code).unwrap()), b""),
                Verdict::GiveUp,
                "{code}"
            );
        }
    }
}
