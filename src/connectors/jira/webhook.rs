//! Jira webhooks: the `X-Hub-Signature` check, then the envelope turned into journal changes.

use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use super::wire::{id_of, parse_time};
use crate::adf;
use crate::config::Secret;
use crate::connectors::{
    delete_key, state_key, Comment, Webhook, WebhookError, WebhookReply, WebhookRequest,
    COMMENT_OBJECT,
};
use crate::journal::{ChangeOp, NewChange, Origin};

/// How a connector authenticates its webhooks.
pub struct WebhookAuth<'a> {
    pub secret: Option<&'a Secret>,
    pub allow_unsigned: bool,
}

/// Check the signature, then parse. Nothing of the body is looked at before it is authenticated.
pub fn parse(
    connector: &str,
    auth: &WebhookAuth<'_>,
    request: &WebhookRequest<'_>,
) -> Result<Webhook, WebhookError> {
    authenticate(auth, request)?;
    let payload: Value = serde_json::from_slice(request.body)
        .map_err(|e| WebhookError::Malformed(format!("the body is not JSON: {e}")))?;
    let changes = changes(connector, request, &payload)?;
    Ok(Webhook {
        changes,
        reply: WebhookReply::Empty,
    })
}

fn authenticate(auth: &WebhookAuth<'_>, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
    let Some(secret) = auth.secret else {
        return if auth.allow_unsigned {
            Ok(())
        } else {
            Err(WebhookError::Unauthorized(
                "no webhook_secret is configured for this connector and unsigned webhooks are \
                 not allowed"
                    .into(),
            ))
        };
    };
    let header = request
        .headers
        .get("x-hub-signature")
        .ok_or_else(|| WebhookError::Unauthorized("missing X-Hub-Signature header".into()))?
        .to_str()
        .map_err(|_| WebhookError::Unauthorized("X-Hub-Signature is not ASCII".into()))?;
    // `method=signature`: Atlassian says other methods may come, so the prefix is checked rather
    // than assumed.
    let (method, signature) = header.split_once('=').ok_or_else(|| {
        WebhookError::Unauthorized("X-Hub-Signature is not `method=signature`".into())
    })?;
    if method != "sha256" {
        // The method is echoed shortened: it is unauthenticated input.
        let shown: String = method.chars().take(16).collect();
        return Err(WebhookError::Unauthorized(format!(
            "unsupported X-Hub-Signature method `{shown}` (expected sha256)"
        )));
    }
    let signature = hex::decode(signature.trim())
        .map_err(|_| WebhookError::Unauthorized("X-Hub-Signature is not hex".into()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| WebhookError::Unauthorized("the webhook secret cannot key HMAC".into()))?;
    mac.update(request.body);
    // Constant time: a timing difference would let a caller guess the signature byte by byte.
    mac.verify_slice(&signature)
        .map_err(|_| WebhookError::Unauthorized("X-Hub-Signature does not match the body".into()))
}

fn malformed(message: impl Into<String>) -> WebhookError {
    WebhookError::Malformed(message.into())
}

fn changes(
    connector: &str,
    request: &WebhookRequest<'_>,
    payload: &Value,
) -> Result<Vec<NewChange>, WebhookError> {
    if !payload.is_object() {
        return Err(malformed("the body is not a JSON object"));
    }
    let event = payload
        .get("webhookEvent")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("webhookEvent is missing"))?;
    let timestamp = payload.get("timestamp").and_then(Value::as_i64);
    let issue_id = || {
        id_of(payload.get("issue").and_then(|i| i.get("id")))
            .ok_or_else(|| malformed(format!("{event}: issue.id is missing")))
    };
    let change = |object: &str, record_id: String, op, snapshot, modified, dedupe_key| NewChange {
        connector: connector.to_string(),
        object: object.to_string(),
        record_id,
        op,
        snapshot,
        source_modified_at: modified,
        origin: Origin::Webhook,
        dedupe_key,
    };
    Ok(match event {
        "jira:issue_created" | "jira:issue_updated" => {
            let id = issue_id()?;
            let fields = payload
                .get("issue")
                .and_then(|i| i.get("fields"))
                .and_then(Value::as_object)
                .ok_or_else(|| malformed(format!("{event}: issue.fields is missing")))?;
            let updated = fields
                .get("updated")
                .and_then(Value::as_str)
                .and_then(parse_time);
            let dedupe_key = match updated {
                // The same key a poll would compute for this state, so either path records it
                // once.
                Some(ms) => state_key(connector, "issue", &id, ms),
                None => {
                    // Without `updated` the delivery id is the only stable key: it is the same
                    // across Jira's retries.
                    let delivery = request
                        .headers
                        .get("x-atlassian-webhook-identifier")
                        .and_then(|v| v.to_str().ok())
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| {
                            malformed(format!(
                                "{event}: neither issue.fields.updated nor \
                                 X-Atlassian-Webhook-Identifier is present"
                            ))
                        })?;
                    format!("{connector}/webhook/{delivery}")
                }
            };
            vec![change(
                "issue",
                id,
                ChangeOp::Upsert,
                Value::Object(snapshot(fields)),
                updated.or(timestamp),
                dedupe_key,
            )]
        }
        "jira:issue_deleted" => {
            let id = issue_id()?;
            let key = delete_key(connector, "issue", &id);
            vec![change(
                "issue",
                id,
                ChangeOp::Delete,
                json!({}),
                timestamp,
                key,
            )]
        }
        "comment_created" | "comment_updated" => {
            let parent_id = issue_id()?;
            let comment = parse_comment(event, payload.get("comment"), parent_id)?;
            let key = state_key(connector, COMMENT_OBJECT, &comment.id, comment.modified_at);
            let snapshot =
                serde_json::to_value(&comment).map_err(|e| malformed(format!("{event}: {e}")))?;
            vec![change(
                COMMENT_OBJECT,
                comment.id.clone(),
                ChangeOp::Upsert,
                snapshot,
                Some(comment.modified_at),
                key,
            )]
        }
        "comment_deleted" => {
            let parent_id = issue_id()?;
            let id = id_of(payload.get("comment").and_then(|c| c.get("id")))
                .ok_or_else(|| malformed(format!("{event}: comment.id is missing")))?;
            let key = delete_key(connector, COMMENT_OBJECT, &id);
            vec![change(
                COMMENT_OBJECT,
                id,
                ChangeOp::Delete,
                json!({ "parent_id": parent_id }),
                timestamp,
                key,
            )]
        }
        // issue_property_set and the like: nothing to sync, but accepted so Jira stops retrying.
        _ => Vec::new(),
    })
}

/// The webhook's fields as a snapshot. Webhooks carry the v2 shape: rich text as plain strings.
/// Those are left out so the engine re-reads them through v3 as ADF instead of writing a
/// flattened string over formatted text; ADF values (some tenants send them) are kept. Comments
/// travel as their own changes. Textarea custom fields cannot be told apart from plain text
/// fields here and are kept as sent (unconfirmed whether they arrive flattened).
fn snapshot(fields: &Map<String, Value>) -> Map<String, Value> {
    let mut out = fields.clone();
    out.remove("comment");
    for rich in ["description", "environment"] {
        if out.get(rich).is_some_and(Value::is_string) {
            out.remove(rich);
        }
    }
    out
}

fn parse_comment(
    event: &str,
    comment: Option<&Value>,
    parent_id: String,
) -> Result<Comment, WebhookError> {
    let comment = comment
        .filter(|c| c.is_object())
        .ok_or_else(|| malformed(format!("{event}: comment is missing")))?;
    let id = id_of(comment.get("id"))
        .ok_or_else(|| malformed(format!("{event}: comment.id is missing")))?;
    let time = |name: &str| {
        comment
            .get(name)
            .and_then(Value::as_str)
            .and_then(parse_time)
            .ok_or_else(|| malformed(format!("{event}: comment.{name} is not a Jira timestamp")))
    };
    let created_at = time("created")?;
    let modified_at = time("updated").unwrap_or(created_at);
    Ok(Comment {
        id,
        parent_id,
        body: body_text(comment.get("body")),
        created_at,
        modified_at,
    })
}

/// A comment body as plain text: v2 strings as they are, ADF flattened.
pub fn body_text(body: Option<&Value>) -> String {
    match body {
        Some(Value::String(text)) => text.clone(),
        Some(doc @ Value::Object(_)) => adf::to_text(doc),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    const SECRET: &str = "It's a Secret to Everybody";

    fn secret() -> Secret {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), SECRET).unwrap();
        let reference = json!({ "file": file.path() });
        serde_json::from_value(reference).unwrap()
    }

    fn sign(body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn headers(signature: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(s) = signature {
            headers.insert("X-Hub-Signature", HeaderValue::from_str(s).unwrap());
        }
        headers.insert(
            "X-Atlassian-Webhook-Identifier",
            HeaderValue::from_static("delivery-1"),
        );
        headers
    }

    fn run(
        secret: Option<&Secret>,
        allow_unsigned: bool,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Webhook, WebhookError> {
        parse(
            "jira",
            &WebhookAuth {
                secret,
                allow_unsigned,
            },
            &WebhookRequest {
                headers,
                body,
                path_token: None,
            },
        )
    }

    fn signed(payload: &Value) -> Result<Webhook, WebhookError> {
        let body = payload.to_string().into_bytes();
        let s = secret();
        run(Some(&s), false, &headers(Some(&sign(&body))), &body)
    }

    /// An issue as the emulator's webhooks carry it (v2 shape).
    fn issue() -> Value {
        json!({
            "id": "10001", "key": "SUP-1", "self": "http://sim/rest/api/2/issue/10001",
            "fields": {
                "summary": "printer on fire",
                "description": "plain v2 text",
                "status": {"id": "3", "name": "In Progress"},
                "customfield_10050": "500A",
                "comment": {"comments": [], "total": 0},
                "updated": "2024-12-29T08:41:23.303+0530",
                "created": "2024-12-29T08:40:00.000+0530",
            }
        })
    }

    #[test]
    fn the_published_test_vector_verifies() {
        let s = secret();
        let body = b"Hello World!";
        let good = "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9";
        assert_eq!(sign(body), good);
        // The body is not JSON, so a verified signature gets as far as parsing.
        let result = run(Some(&s), false, &headers(Some(good)), body);
        assert!(
            matches!(result, Err(WebhookError::Malformed(_))),
            "{result:?}"
        );
    }

    #[test]
    fn wrong_missing_or_unknown_signatures_are_refused_before_parsing() {
        let s = secret();
        let body = b"Hello World!";
        let wrong = "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c8";
        for (header, reason) in [
            (Some(wrong), "does not match"),
            (None, "missing"),
            (
                Some("sha1=a4771c39fbe90f317c7824e83ddef3caae9cb3d9"),
                "unsupported",
            ),
            (Some("sha256=zz"), "not hex"),
            (
                Some("a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9"),
                "method",
            ),
        ] {
            match run(Some(&s), false, &headers(header), body) {
                Err(WebhookError::Unauthorized(message)) => {
                    assert!(message.contains(reason), "{header:?}: {message}")
                }
                other => panic!("{header:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn without_a_secret_only_an_explicit_opt_in_accepts_webhooks() {
        let body = json!({"webhookEvent": "issue_property_set", "timestamp": 1}).to_string();
        assert!(matches!(
            run(None, false, &headers(None), body.as_bytes()),
            Err(WebhookError::Unauthorized(_))
        ));
        let accepted = run(None, true, &headers(None), body.as_bytes()).unwrap();
        assert!(accepted.changes.is_empty());
        assert_eq!(accepted.reply, WebhookReply::Empty);
    }

    #[test]
    fn issue_events_become_upserts_keyed_by_their_state() {
        for event in ["jira:issue_created", "jira:issue_updated"] {
            let hook = signed(&json!({
                "timestamp": 1_735_442_999_000_i64, "webhookEvent": event,
                "issue_event_type_name": "issue_generic", "issue": issue(),
            }))
            .unwrap();
            let [change] = hook.changes.as_slice() else {
                panic!("{:?}", hook.changes)
            };
            assert_eq!(change.object, "issue");
            assert_eq!(change.record_id, "10001");
            assert_eq!(change.op, ChangeOp::Upsert);
            assert_eq!(change.origin, Origin::Webhook);
            assert_eq!(change.source_modified_at, Some(1_735_441_883_303));
            assert_eq!(change.dedupe_key, "jira/issue/10001@1735441883303");
            let snapshot = change.snapshot.as_object().unwrap();
            assert_eq!(snapshot["summary"], "printer on fire");
            assert_eq!(snapshot["customfield_10050"], "500A");
            assert!(!snapshot.contains_key("description"), "v2 text is re-read");
            assert!(!snapshot.contains_key("comment"));
        }
        // ADF rich text is kept.
        let mut with_adf = issue();
        with_adf["fields"]["description"] = adf::from_text("rich");
        let hook =
            signed(&json!({"webhookEvent": "jira:issue_updated", "issue": with_adf})).unwrap();
        assert!(hook.changes[0].snapshot.get("description").is_some());
    }

    #[test]
    fn an_issue_event_without_updated_falls_back_to_the_delivery_id() {
        let mut bare = issue();
        bare["fields"].as_object_mut().unwrap().remove("updated");
        let hook =
            signed(&json!({"webhookEvent": "jira:issue_updated", "timestamp": 5, "issue": bare}))
                .unwrap();
        assert_eq!(hook.changes[0].dedupe_key, "jira/webhook/delivery-1");
        assert_eq!(hook.changes[0].source_modified_at, Some(5));

        let body = json!({"webhookEvent": "jira:issue_updated", "issue": bare}).to_string();
        let mut no_id = headers(Some(&sign(body.as_bytes())));
        no_id.remove("X-Atlassian-Webhook-Identifier");
        let s = secret();
        assert!(matches!(
            run(Some(&s), false, &no_id, body.as_bytes()),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn deletions_and_comments_map_to_their_changes() {
        let hook = signed(
            &json!({"webhookEvent": "jira:issue_deleted", "timestamp": 7, "issue": issue()}),
        )
        .unwrap();
        let change = &hook.changes[0];
        assert_eq!(
            (change.op, change.dedupe_key.as_str(), &change.snapshot),
            (ChangeOp::Delete, "jira/issue/10001@deleted", &json!({}))
        );

        let comment = json!({
            "id": "10100", "body": "hello\nworld",
            "created": "2024-12-29T08:41:23.303+0530", "updated": "2024-12-29T08:42:23.303+0530",
        });
        for event in ["comment_created", "comment_updated"] {
            let hook =
                signed(&json!({"webhookEvent": event, "issue": issue(), "comment": comment}))
                    .unwrap();
            let change = &hook.changes[0];
            assert_eq!(change.object, COMMENT_OBJECT);
            assert_eq!(change.record_id, "10100");
            assert_eq!(change.dedupe_key, "jira/comment/10100@1735441943303");
            let parsed: Comment = serde_json::from_value(change.snapshot.clone()).unwrap();
            assert_eq!(
                parsed,
                Comment {
                    id: "10100".into(),
                    parent_id: "10001".into(),
                    body: "hello\nworld".into(),
                    created_at: 1_735_441_883_303,
                    modified_at: 1_735_441_943_303,
                }
            );
        }
        let mut adf_comment = comment.clone();
        adf_comment["body"] = adf::from_text("from adf");
        let hook = signed(
            &json!({"webhookEvent": "comment_created", "issue": issue(), "comment": adf_comment}),
        )
        .unwrap();
        assert_eq!(hook.changes[0].snapshot["body"], "from adf");

        let hook = signed(
            &json!({"webhookEvent": "comment_deleted", "issue": issue(), "comment": comment}),
        )
        .unwrap();
        let change = &hook.changes[0];
        assert_eq!(change.op, ChangeOp::Delete);
        assert_eq!(change.snapshot, json!({"parent_id": "10001"}));
        assert_eq!(change.dedupe_key, "jira/comment/10100@deleted");
    }

    #[test]
    fn other_events_are_accepted_without_changes_and_junk_is_malformed() {
        let hook =
            signed(&json!({"webhookEvent": "issue_property_set", "issue": issue()})).unwrap();
        assert!(hook.changes.is_empty());
        for junk in [
            json!([1, 2]),
            json!({"issue": issue()}),
            json!({"webhookEvent": "jira:issue_updated"}),
            json!({"webhookEvent": "comment_created", "issue": issue()}),
        ] {
            assert!(
                matches!(signed(&junk), Err(WebhookError::Malformed(_))),
                "{junk}"
            );
        }
    }
}
