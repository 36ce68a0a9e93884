//! Comments as child records: a Jira comment ↔ a Salesforce `CaseComment`, each pair linked
//! under the flow's comment namespace, on parents the flow has already linked.
//!
//! A comment Tandem writes carries a short signature naming the comment it came from
//! (`[Tandem: jira/10023]`). Comments have no field for an idempotency marker on either
//! vendor, and their notifications can arrive before the link of the write that caused them is
//! committed: the signature is what tells Tandem that a new comment is its own, so it is linked
//! and never copied back.

use serde_json::{json, Value};

use super::engine::{Done, Engine, Failed, Route, Work};
use super::mapping::Side;
use crate::config::DeletePolicy;
use crate::connectors::{Comment, ErrorKind, COMMENT_OBJECT};
use crate::journal::{ChangeOp, Link, Synced};

/// The link namespace of a flow's comments (comment ids can collide with record ids).
pub fn comment_flow(flow: &str) -> String {
    format!("{flow}/comments")
}

const PREFIX: &str = "[Tandem: ";

/// The body with Tandem's signature, naming the source comment.
pub fn sign(body: &str, connector: &str, id: &str) -> String {
    format!("{body}\n\n{PREFIX}{connector}/{id}]")
}

/// The body without Tandem's signature, and the source comment it names, if signed.
pub fn unsign(body: &str) -> (String, Option<(String, String)>) {
    let trimmed = body.trim_end();
    if let Some(start) = trimmed.rfind(PREFIX) {
        let tail = &trimmed[start + PREFIX.len()..];
        if let Some(inner) = tail.strip_suffix(']') {
            if let Some((connector, id)) = inner.split_once('/') {
                if !connector.is_empty() && !id.is_empty() && !inner.contains('\n') {
                    let text = trimmed[..start].trim_end().to_string();
                    return (text, Some((connector.to_string(), id.to_string())));
                }
            }
        }
    }
    (trimmed.to_string(), None)
}

fn done(
    outcome: &'static str,
    link: Option<Link>,
    unlink: Option<(String, String)>,
    detail: Value,
) -> Done {
    Done {
        outcome,
        link,
        unlink,
        detail,
    }
}

/// Comment text is the same on both sides (plain text; the signature is not part of it).
fn same_on_both(body: &str) -> Synced {
    Synced {
        left: json!(body),
        right: json!(body),
    }
}

/// The link of comment `ours` on side `side` with comment `theirs` on the other side.
fn comment_link(namespace: String, side: Side, ours: &str, theirs: String, body: &str) -> Link {
    let (left_id, right_id) = match side {
        Side::Left => (ours.to_string(), theirs),
        Side::Right => (theirs, ours.to_string()),
    };
    Link {
        flow: namespace,
        left_id,
        right_id,
        synced: [(0, same_on_both(body))].into(),
        left_modified_at: None,
        right_modified_at: None,
    }
}

impl Engine {
    /// Carry out one comment change for one flow.
    pub async fn sync_comment(&self, work: &Work, route: &Route<'_>) -> Result<Done, Failed> {
        let s = route.side;
        let t = s.other();
        let (s_conf, t_conf) = (self.side(route.flow, s), self.side(route.flow, t));
        let namespace = comment_flow(route.name);
        let comment: Option<Comment> =
            serde_json::from_value(Value::Object(work.snapshot.clone())).ok();
        let parent_id = comment.as_ref().map(|c| c.parent_id.clone()).or_else(|| {
            work.snapshot
                .get("parent_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let Some(parent_id) = parent_id else {
            return Ok(done(
                "skipped",
                None,
                None,
                json!({"reason": "the comment names no parent"}),
            ));
        };
        let Some(parent) = self
            .journal()
            .link(route.name, s == Side::Left, &parent_id)
            .await?
        else {
            // The parent's own create may still be on its way: let it go first.
            let pending = self
                .journal()
                .unsettled(&s_conf.connector, &s_conf.object, &parent_id)
                .await?;
            if let Some(due) = pending.iter().map(|c| c.next_attempt_at).min() {
                let wait = u64::try_from(due - crate::journal::now_ms()).unwrap_or(0);
                return Err(Failed::Busy(std::time::Duration::from_millis(
                    wait.clamp(50, 60_000),
                )));
            }
            return Ok(done(
                "skipped",
                None,
                None,
                json!({"reason": "the parent is not linked in this flow"}),
            ));
        };
        let t_parent = match t {
            Side::Left => parent.left_id.clone(),
            Side::Right => parent.right_id.clone(),
        };
        let link = self
            .journal()
            .link(&namespace, s == Side::Left, &work.record_id)
            .await?;
        let target = self.connector_named(&t_conf.connector)?;

        if work.op == ChangeOp::Delete {
            let Some(link) = link else {
                return Ok(done(
                    "skipped",
                    None,
                    None,
                    json!({"reason": "deleted, but never linked"}),
                ));
            };
            let t_id = match t {
                Side::Left => link.left_id.clone(),
                Side::Right => link.right_id.clone(),
            };
            return match route.flow.deletes {
                DeletePolicy::Ignore => Ok(done(
                    "skipped",
                    None,
                    None,
                    json!({"reason": "deletes are ignored"}),
                )),
                DeletePolicy::Unlink => Ok(done(
                    "unlinked",
                    None,
                    Some((namespace.clone(), link.left_id)),
                    json!({}),
                )),
                DeletePolicy::Propagate => {
                    match target.delete_comment(&t_parent, &t_id).await {
                        Ok(()) => {}
                        Err(e) if e.kind == ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(Failed::vendor(e, "delete comment", json!({ "id": t_id })))
                        }
                    }
                    Ok(done(
                        "deleted",
                        None,
                        Some((namespace.clone(), link.left_id)),
                        json!({ "counterpart": t_id }),
                    ))
                }
            };
        }

        let Some(comment) = comment else {
            return Ok(done(
                "skipped",
                None,
                None,
                json!({"reason": "no comment body was observed"}),
            ));
        };
        let (body, signed_by) = unsign(&comment.body);
        match link {
            None => {
                if let Some((_, origin)) = signed_by {
                    // Tandem's own comment: link it to the one it was copied from.
                    let link = comment_link(namespace, s, &work.record_id, origin, &body);
                    return Ok(done("linked", Some(link), None, json!({})));
                }
                let text = sign(&body, &s_conf.connector, &work.record_id);
                let created = target.add_comment(&t_parent, &text).await.map_err(|e| {
                    Failed::vendor(
                        e,
                        "add comment",
                        json!({ "parent": t_parent, "body": text }),
                    )
                })?;
                let link = comment_link(namespace, s, &work.record_id, created.id.clone(), &body);
                Ok(done(
                    "created",
                    Some(link),
                    None,
                    json!({ "created": created.id }),
                ))
            }
            Some(link) => {
                // Pairs of comments are serialised like pairs of records: an older change to
                // the copy goes first, then the link is read again.
                let t_id = match t {
                    Side::Left => link.left_id.clone(),
                    Side::Right => link.right_id.clone(),
                };
                self.wait_for_older(&t_conf.connector, COMMENT_OBJECT, &t_id, work.lead)
                    .await?;
                let Some(mut link) = self
                    .journal()
                    .link(&namespace, s == Side::Left, &work.record_id)
                    .await?
                else {
                    return Ok(done(
                        "skipped",
                        None,
                        None,
                        json!({"reason": "unlinked meanwhile"}),
                    ));
                };
                let last = link.synced.get(&0).map(|v| match s {
                    Side::Left => v.left.clone(),
                    Side::Right => v.right.clone(),
                });
                if last == Some(json!(body)) {
                    return Ok(done("echo", None, None, json!({})));
                }
                let text = sign(&body, &s_conf.connector, &work.record_id);
                target
                    .edit_comment(&t_parent, &t_id, &text)
                    .await
                    .map_err(|e| {
                        Failed::vendor(e, "edit comment", json!({ "id": t_id, "body": text }))
                    })?;
                link.synced.insert(0, same_on_both(&body));
                Ok(done("written", Some(link), None, json!({})))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_round_trips_and_ordinary_text_is_left_alone() {
        let signed = sign("Looks fixed.\nThanks", "jira", "10023");
        assert_eq!(
            unsign(&signed),
            (
                "Looks fixed.\nThanks".to_string(),
                Some(("jira".to_string(), "10023".to_string()))
            )
        );
        assert_eq!(
            unsign("plain [Tandem: words"),
            ("plain [Tandem: words".to_string(), None)
        );
        assert_eq!(unsign("ends with ]"), ("ends with ]".to_string(), None));
        // Rich text round trips may add trailing whitespace.
        assert_eq!(unsign(&format!("{signed}\n")).1.unwrap().1, "10023");
    }
}
