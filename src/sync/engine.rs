//! What one change means for one flow, decided and carried out: create the counterpart, update
//! the fields that changed, or nothing (our own write coming back, an older state, a conflict
//! the other side won), with the link to store when it is done.
//!
//! The engine reads and writes vendors through the connectors and reads the journal; it never
//! settles a change itself (the dispatcher does, in one transaction with the link).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::batch::Batch;
use super::mapping::{self, Side};
use crate::config::{
    ConflictPolicy, DeletePolicy, FieldRule, FlowSettings, Settings, SideSettings,
};
use crate::connectors::{Connector, ConnectorError, Connectors, ErrorKind, Marker, NewRecord};
use crate::journal::{now_ms, ChangeId, ChangeOp, Journal, JournalError, Link, Origin, Synced};

/// One or more changes to a record, coalesced: the latest value of every field observed.
#[derive(Debug, Clone)]
pub struct Work {
    pub connector: String,
    pub object: String,
    pub record_id: String,
    pub op: ChangeOp,
    pub snapshot: Map<String, Value>,
    pub modified_at: Option<i64>,
    pub origin: Origin,
    /// The lead change's attempts, this one included.
    pub attempts: i64,
    /// The lead change (the oldest of those coalesced).
    pub lead: ChangeId,
}

/// What a flow did with a change.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    /// `created`, `written`, `linked`, `echo`, `stale`, `conflict`, `deleted`, `unlinked`,
    /// `skipped`.
    pub outcome: &'static str,
    /// The link to store (or `None`: leave it as it is).
    pub link: Option<Link>,
    /// Remove this link: (link namespace, left id).
    pub unlink: Option<(String, String)>,
    /// Why, for the record's history: conflicts with both values, the reason of a skip.
    pub detail: Value,
}

/// A flow that could not be carried out.
#[derive(Debug)]
pub enum Failed {
    /// The vendor refused or failed: retry or dead-letter by its kind.
    Vendor(Box<VendorFailure>),
    /// An older change to the counterpart is unsettled: it goes first (its link update is not
    /// committed yet, and deciding now would mistake that write's echo for an edit, or settle
    /// a conflict twice).
    Busy(std::time::Duration),
    Journal(JournalError),
}

#[derive(Debug)]
pub struct VendorFailure {
    pub error: ConnectorError,
    /// What was being written, for the dead letter.
    pub operation: String,
    pub payload: Value,
    /// A link to store anyway: the counterpart exists (a create whose follow-up failed).
    pub link: Option<Link>,
}

impl From<JournalError> for Failed {
    fn from(e: JournalError) -> Self {
        Failed::Journal(e)
    }
}

fn vendor(error: ConnectorError, operation: &str, payload: Value) -> Failed {
    Failed::vendor(error, operation, payload)
}

impl Failed {
    pub fn vendor(error: ConnectorError, operation: &str, payload: Value) -> Failed {
        Failed::Vendor(Box::new(VendorFailure {
            error,
            operation: operation.to_string(),
            payload,
            link: None,
        }))
    }
}

/// A flow a change feeds: the flow, its name and the side the change is on.
pub struct Route<'a> {
    pub name: &'a str,
    pub flow: &'a FlowSettings,
    pub side: Side,
    /// Another flow reads the same connector and object.
    pub shared: bool,
}

impl Route<'_> {
    /// The side the flow writes to for this change.
    pub fn target(&self) -> &SideSettings {
        self.side.other().of(self.flow)
    }
}

pub struct Engine {
    settings: std::sync::Arc<Settings>,
    connectors: Connectors,
    journal: Journal,
}

fn modified(link: &Link, side: Side) -> Option<i64> {
    match side {
        Side::Left => link.left_modified_at,
        Side::Right => link.right_modified_at,
    }
}

fn set_modified(link: &mut Link, side: Side, at: i64) {
    let slot = match side {
        Side::Left => &mut link.left_modified_at,
        Side::Right => &mut link.right_modified_at,
    };
    *slot = Some(slot.map_or(at, |current| current.max(at)));
}

fn synced_on(synced: &Synced, side: Side) -> &Value {
    match side {
        Side::Left => &synced.left,
        Side::Right => &synced.right,
    }
}

fn synced_pair(rule: &FieldRule, side: Side, value: &Value) -> Synced {
    let other = mapping::translate(rule, side, value);
    match side {
        Side::Left => Synced {
            left: value.clone(),
            right: other,
        },
        Side::Right => Synced {
            left: other,
            right: value.clone(),
        },
    }
}

impl Engine {
    pub fn new(
        settings: std::sync::Arc<Settings>,
        connectors: Connectors,
        journal: Journal,
    ) -> Engine {
        Engine {
            settings,
            connectors,
            journal,
        }
    }

    /// The flows a change to `connector`/`object` feeds (the flow writes to the other side).
    pub fn routes(&self, connector: &str, object: &str) -> Vec<Route<'_>> {
        let comment = object == crate::connectors::COMMENT_OBJECT;
        let mut routes = Vec::new();
        for (name, flow) in &self.settings.flows {
            for side in [Side::Left, Side::Right] {
                let s = side.of(flow);
                let covers = if comment {
                    flow.comments
                } else {
                    s.object == object
                };
                if s.connector == connector && covers && side.feeds(flow.direction) {
                    routes.push(Route {
                        name,
                        flow,
                        side,
                        shared: false,
                    });
                }
            }
        }
        let shared = routes.len() > 1;
        for route in &mut routes {
            route.shared = shared;
        }
        routes
    }

    pub(super) fn journal(&self) -> &Journal {
        &self.journal
    }

    pub(super) fn side<'f>(&self, flow: &'f FlowSettings, side: Side) -> &'f SideSettings {
        side.of(flow)
    }

    pub(super) fn connector_named(&self, name: &str) -> Result<&Connector, Failed> {
        self.connector(name)
    }

    fn connector(&self, name: &str) -> Result<&Connector, Failed> {
        // Validated at load: flows name configured connectors.
        self.connectors
            .get(name)
            .map(|c| c.as_ref())
            .ok_or_else(|| {
                vendor(
                    ConnectorError::new(name, "route", ErrorKind::Rejected, "no such connector"),
                    "route",
                    Value::Null,
                )
            })
    }

    /// The rules a change on `side` writes to the other side, with their index.
    fn rules(flow: &FlowSettings, side: Side) -> Vec<(usize, &FieldRule)> {
        flow.fields
            .iter()
            .enumerate()
            .filter(|(_, rule)| side.feeds(rule.direction.unwrap_or(flow.direction)))
            .collect()
    }

    /// Carry out one flow for one (coalesced) change.
    pub async fn sync(&self, work: &Work, route: &Route<'_>) -> Result<Done, Failed> {
        self.sync_in(work, route, None).await
    }

    /// [`Engine::sync`], with the writes sent through `batch` (a scheduled run's bulk calls)
    /// when one is given.
    pub async fn sync_in(
        &self,
        work: &Work,
        route: &Route<'_>,
        batch: Option<&Batch>,
    ) -> Result<Done, Failed> {
        if work.object == crate::connectors::COMMENT_OBJECT {
            return self.sync_comment(work, route).await;
        }
        let (flow, s) = (route.flow, route.side);
        let t = s.other();
        let (s_conf, t_conf) = (s.of(flow), t.of(flow));
        let source = self.connector(&s_conf.connector)?;
        let target = self.connector(&t_conf.connector)?;
        let mut link = self
            .journal
            .link(route.name, s == Side::Left, &work.record_id)
            .await?;
        if let Some(found) = &link {
            // Pairs are serialised: the oldest unsettled change of a linked pair goes first and
            // sees the younger ones (conflicts are decided there, once); a younger one waits,
            // before deciding anything, for the older one's link update. Ids are a total order,
            // so the oldest never waits: no deadlock. The link is read again after the check:
            // what an older change committed meanwhile is what this one decides on.
            let t_id = match t {
                Side::Left => &found.left_id,
                Side::Right => &found.right_id,
            };
            if let Err(busy) = self
                .wait_for_older(&t_conf.connector, &t_conf.object, t_id, work.lead)
                .await
            {
                // Our own write coming back needs no turn: it carries nothing new whatever the
                // older change decides, and settling it leaves the link to that change. (A
                // scheduled run sees the echoes of its last writes together with new edits of
                // the other side; waiting would make each echo look stale and cost a read.)
                if work.op != ChangeOp::Delete && work.modified_at.is_some() {
                    let rules = Self::rules(flow, s);
                    let complete = rules
                        .iter()
                        .all(|(_, r)| mapping::get_path(&work.snapshot, s.path(r)).is_some());
                    let values = Self::values(&rules, s, &work.snapshot);
                    if complete && Self::changed(&rules, s, &values, found).is_empty() {
                        return Ok(done(
                            "echo",
                            None,
                            json!({ "reason": "nothing new while an older change of the pair waits" }),
                        ));
                    }
                }
                return Err(busy);
            }
            link = self
                .journal
                .link(route.name, s == Side::Left, &work.record_id)
                .await?;
        }

        if work.op == ChangeOp::Delete {
            return self.delete(work, route, link, target, t_conf).await;
        }

        let rules = Self::rules(flow, s);
        let mut paths: Vec<&str> = rules.iter().map(|(_, r)| s.path(r)).collect();
        if link.is_none() {
            paths.extend(s_conf.marker.as_deref());
        }
        let mut snapshot = work.snapshot.clone();
        let mut modified_at = work.modified_at;
        let mut fresh = false;
        let complete = paths
            .iter()
            .all(|p| mapping::get_path(&snapshot, p).is_some());
        if !complete || modified_at.is_none() {
            match self
                .read(source, &s_conf.object, &work.record_id, &paths, batch)
                .await?
            {
                Some(record) => {
                    snapshot = record.fields;
                    modified_at = Some(record.modified_at);
                    fresh = true;
                }
                None => return Ok(skipped("the source record no longer exists")),
            }
        }
        let mut values = Self::values(&rules, s, &snapshot);

        let Some(mut link) = link else {
            return self
                .create(
                    work,
                    route,
                    &rules,
                    &values,
                    &snapshot,
                    modified_at,
                    source,
                    target,
                    batch,
                )
                .await;
        };

        // Older than what was already synced from this side: skip, unless it differs from
        // what was synced, which a fresh read settles (clocks are not to be trusted alone).
        if let (Some(at), Some(known)) = (modified_at, modified(&link, s)) {
            if at <= known && !fresh {
                if Self::changed(&rules, s, &values, &link).is_empty() {
                    // Nothing new: typically our own write coming back.
                    return Ok(done("echo", None, json!({})));
                }
                match self
                    .read(source, &s_conf.object, &work.record_id, &paths, batch)
                    .await?
                {
                    Some(record) => {
                        values = Self::values(&rules, s, &record.fields);
                        modified_at = Some(record.modified_at);
                        if Self::changed(&rules, s, &values, &link).is_empty() {
                            return Ok(done("stale", None, json!({})));
                        }
                    }
                    None => return Ok(skipped("the source record no longer exists")),
                }
            }
        }

        let mut changed = Self::changed(&rules, s, &values, &link);
        if let Some(at) = modified_at {
            set_modified(&mut link, s, at);
        }
        if changed.is_empty() {
            // Our own write coming back (or an edit of fields this flow does not map).
            return Ok(done("echo", Some(link), json!({})));
        }

        // A field changed here and, since the last sync, on the other side too.
        let t_id = match t {
            Side::Left => link.left_id.clone(),
            Side::Right => link.right_id.clone(),
        };
        let pending = self
            .journal
            .unsettled(&t_conf.connector, &t_conf.object, &t_id)
            .await?;
        let mut conflicts = Vec::new();
        if !pending.is_empty() {
            let mut theirs = Map::new();
            let mut their_time = None;
            for change in &pending {
                if let Value::Object(fields) = &change.snapshot {
                    theirs.extend(fields.clone());
                }
                their_time = change.source_modified_at.or(their_time);
            }
            let mut keep = Vec::new();
            for (index, rule) in changed {
                let Some(raw) = mapping::get_path(&theirs, t.path(rule)) else {
                    keep.push((index, rule));
                    continue;
                };
                let their_value = mapping::own_form(rule, raw);
                let ours = &values[&index];
                let last = link.synced.get(&index).map(|v| synced_on(v, t).clone());
                let ours_there = mapping::translate(rule, s, ours);
                if last.as_ref() == Some(&their_value) || their_value == ours_there {
                    keep.push((index, rule));
                    continue;
                }
                let policy = rule.conflict.unwrap_or(flow.conflict);
                let winner = match policy {
                    ConflictPolicy::PreferLeft => Side::Left,
                    ConflictPolicy::PreferRight => Side::Right,
                    ConflictPolicy::LastWriteWins => match (their_time, modified_at) {
                        (Some(theirs), Some(ours)) if theirs > ours => t,
                        _ => s,
                    },
                };
                let (left, right) = match s {
                    Side::Left => (ours.clone(), their_value.clone()),
                    Side::Right => (their_value.clone(), ours.clone()),
                };
                conflicts.push(json!({
                    "rule": index,
                    "left_field": rule.left,
                    "right_field": rule.right,
                    "left": left,
                    "right": right,
                    "policy": policy_name(policy),
                    "winner": winner.as_str(),
                }));
                tracing::info!(
                    flow = route.name,
                    record_id = %work.record_id,
                    field = %s.path(rule),
                    policy = policy_name(policy),
                    winner = winner.as_str(),
                    "conflict: both sides changed the field since the last sync"
                );
                if winner == s {
                    // The other side's pending change lost: it is older than what is settled.
                    if let Some(at) = their_time {
                        set_modified(&mut link, t, at);
                    }
                    keep.push((index, rule));
                }
            }
            changed = keep;
        }
        let mut detail = json!({
            "fields": changed.iter().map(|(_, rule)| s.path(rule)).collect::<Vec<_>>(),
        });
        if !conflicts.is_empty() {
            detail["conflicts"] = Value::Array(conflicts);
        }
        if changed.is_empty() {
            return Ok(done("conflict", Some(link), detail));
        }

        let mut fields = Map::new();
        for (index, rule) in &changed {
            let there = mapping::translate(rule, s, &values[index]);
            mapping::put(&mut fields, rule, target.kind(), t.path(rule), &there);
        }
        let payload = Value::Object(fields.clone());
        let operation = format!("update {} {t_id}", t_conf.object);
        match batch {
            Some(batch) => batch.update(target, &t_conf.object, &t_id, fields).await,
            None => target.update(&t_conf.object, &t_id, fields).await,
        }
        .map_err(|e| vendor(e, &operation, payload))?;
        for (index, rule) in &changed {
            link.synced
                .insert(*index, synced_pair(rule, s, &values[index]));
        }
        // A lower bound of the vendor's modified time of our write: an older change from that
        // side is stale (a fresh read confirms it when it carries different values).
        set_modified(&mut link, t, now_ms());
        Ok(Done {
            outcome: "written",
            link: Some(link),
            unlink: None,
            detail,
        })
    }

    /// `Busy` while `record` has an unsettled change older than `lead`, with how long to wait:
    /// until that change is due again (it may be backing off), within bounds.
    pub(super) async fn wait_for_older(
        &self,
        connector: &str,
        object: &str,
        record_id: &str,
        lead: ChangeId,
    ) -> Result<(), Failed> {
        let older = self
            .journal
            .unsettled(connector, object, record_id)
            .await?
            .into_iter()
            .filter(|c| c.id < lead)
            .map(|c| c.next_attempt_at)
            .min();
        match older {
            None => Ok(()),
            Some(due) => {
                let wait = u64::try_from(due - now_ms()).unwrap_or(0);
                Err(Failed::Busy(std::time::Duration::from_millis(
                    wait.clamp(50, 60_000),
                )))
            }
        }
    }

    async fn read(
        &self,
        connector: &Connector,
        object: &str,
        id: &str,
        paths: &[&str],
        batch: Option<&Batch>,
    ) -> Result<Option<crate::connectors::Record>, Failed> {
        let fields = mapping::fields_for(connector.kind(), paths.iter().copied());
        match batch {
            Some(batch) => batch.read(connector, object, id, fields).await,
            None => connector.read(object, id, &fields).await,
        }
        .map_err(|e| vendor(e, &format!("read {object} {id}"), Value::Null))
    }

    fn values(
        rules: &[(usize, &FieldRule)],
        side: Side,
        snapshot: &Map<String, Value>,
    ) -> BTreeMap<usize, Value> {
        rules
            .iter()
            .map(|(index, rule)| {
                let raw = mapping::get_path(snapshot, side.path(rule)).unwrap_or(&Value::Null);
                (*index, mapping::own_form(rule, raw))
            })
            .collect()
    }

    fn changed<'f>(
        rules: &[(usize, &'f FieldRule)],
        side: Side,
        values: &BTreeMap<usize, Value>,
        link: &Link,
    ) -> Vec<(usize, &'f FieldRule)> {
        rules
            .iter()
            .filter(|(index, _)| {
                link.synced.get(index).map(|v| synced_on(v, side)) != values.get(index)
            })
            .copied()
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        work: &Work,
        route: &Route<'_>,
        rules: &[(usize, &FieldRule)],
        values: &BTreeMap<usize, Value>,
        snapshot: &Map<String, Value>,
        modified_at: Option<i64>,
        source: &Connector,
        target: &Connector,
        batch: Option<&Batch>,
    ) -> Result<Done, Failed> {
        let (flow, s) = (route.flow, route.side);
        let t = s.other();
        let (s_conf, t_conf) = (s.of(flow), t.of(flow));
        let new_link = |t_id: String, synced: BTreeMap<usize, Synced>| {
            let (left_id, right_id) = match s {
                Side::Left => (work.record_id.clone(), t_id),
                Side::Right => (t_id, work.record_id.clone()),
            };
            let mut link = Link {
                flow: route.name.to_string(),
                left_id,
                right_id,
                synced,
                left_modified_at: None,
                right_modified_at: None,
            };
            if let Some(at) = modified_at {
                set_modified(&mut link, s, at);
            }
            link
        };
        let all_synced: BTreeMap<usize, Synced> = rules
            .iter()
            .map(|(index, rule)| (*index, synced_pair(rule, s, &values[index])))
            .collect();

        // A record Tandem created from the other side (its marker names the original): link
        // it, whether the create's own commit has landed yet or not. Never create it back.
        if let Some(marker) = s_conf.marker.as_deref() {
            if let Some(Value::String(original)) = mapping::get_path(snapshot, marker) {
                if !original.is_empty() {
                    // The create that made this record may not have committed its link yet:
                    // let it, then this change is an ordinary one on a linked pair.
                    self.wait_for_older(&t_conf.connector, &t_conf.object, original, work.lead)
                        .await?;
                    if let Some(link) = self
                        .journal
                        .link(route.name, s == Side::Left, &work.record_id)
                        .await?
                    {
                        // Linked meanwhile: nothing to create; the next change is compared
                        // with what that link says.
                        return Ok(done("echo", Some(link), json!({})));
                    }
                    let link = new_link(original.clone(), all_synced);
                    return Ok(done("linked", Some(link), json!({})));
                }
            }
        }
        // A webhook is not narrowed by the flow's filter the way a poll is; and a poll read by
        // one flow says nothing about another flow's filter on the same object.
        // Polls, backfill and reconcile list with the filter; a webhook or a replay did not.
        let listed = matches!(
            work.origin,
            Origin::Poll | Origin::Backfill | Origin::Reconcile
        );
        if !listed || route.shared {
            if let Some(filter) = s_conf.filter.as_deref() {
                let inside = source
                    .matches(&s_conf.object, &work.record_id, filter)
                    .await
                    .map_err(|e| vendor(e, "match filter", Value::Null))?;
                if !inside {
                    return Ok(skipped("outside the flow's filter"));
                }
            }
        }

        let mut fields = Map::new();
        for (index, rule) in rules {
            let value = &values[index];
            if value.is_null() {
                continue;
            }
            let there = mapping::translate(rule, s, value);
            mapping::put(&mut fields, rule, target.kind(), t.path(rule), &there);
        }
        let defaults = match t {
            Side::Left => &flow.defaults.left,
            Side::Right => &flow.defaults.right,
        };
        for (key, value) in defaults {
            fields.entry(key.clone()).or_insert_with(|| value.clone());
        }
        let marker = t_conf.marker.as_ref().map(|field| Marker {
            field: field.clone(),
            value: work.record_id.clone(),
        });
        let payload = Value::Object(fields.clone());
        let operation = format!("create {}", t_conf.object);

        let record = NewRecord {
            fields,
            marker: marker.clone(),
        };
        if let Some(batch) = batch {
            // Bulk creates are idempotent on the marker on both vendors (Salesforce upserts
            // on it; Jira's bulk create looks the batch's markers up in one search first), so
            // no lookup of its own is needed even when the create may have happened already.
            let created = batch
                .create(target, &t_conf.object, record)
                .await
                .map_err(|e| vendor(e, &operation, payload.clone()))?;
            let link = new_link(created.id.clone(), all_synced);
            return finish_create(created, link, route, t, operation, payload);
        }
        // A create that may have happened already (a retry after a timeout or a crash, a replay,
        // any record whose changes failed before) looks for its marker first, so the
        // counterpart is linked, not made twice. A first, clean attempt does not pay the call.
        let uncertain = work.attempts > 1
            || work.origin == Origin::Replay
            || self
                .journal
                .had_trouble(&work.connector, &work.object, &work.record_id)
                .await?;
        if uncertain {
            if let Some(marker) = &marker {
                let found = target
                    .find_by_marker(&t_conf.object, marker, &[])
                    .await
                    .map_err(|e| vendor(e, &operation, payload.clone()))?;
                if let Some(found) = found {
                    // An earlier attempt created it: write the fields as an update (a create's
                    // defaults, like Jira's project, are not editable) and link it.
                    let mut update = Map::new();
                    for (index, rule) in rules {
                        let there = mapping::translate(rule, s, &values[index]);
                        mapping::put(&mut update, rule, target.kind(), t.path(rule), &there);
                    }
                    target
                        .update(&t_conf.object, &found.id, update)
                        .await
                        .map_err(|e| vendor(e, &operation, payload.clone()))?;
                    let mut link = new_link(found.id.clone(), all_synced);
                    set_modified(&mut link, t, now_ms());
                    return Ok(Done {
                        outcome: "linked",
                        link: Some(link),
                        unlink: None,
                        detail: json!({ "found_by_marker": found.id }),
                    });
                }
            }
        }
        let created = target
            .create(&t_conf.object, record)
            .await
            .map_err(|e| vendor(e, &operation, payload.clone()))?;
        let link = new_link(created.id.clone(), all_synced);
        finish_create(created, link, route, t, operation, payload)
    }

    async fn delete(
        &self,
        work: &Work,
        route: &Route<'_>,
        link: Option<Link>,
        target: &Connector,
        t_conf: &SideSettings,
    ) -> Result<Done, Failed> {
        let Some(link) = link else {
            return Ok(skipped("deleted, but never linked"));
        };
        let t_id = match route.side.other() {
            Side::Left => link.left_id.clone(),
            Side::Right => link.right_id.clone(),
        };
        let mut result = Done {
            outcome: "unlinked",
            link: None,
            unlink: Some((route.name.to_string(), link.left_id.clone())),
            detail: json!({ "counterpart": t_id }),
        };
        match route.flow.deletes {
            DeletePolicy::Ignore => Ok(done(
                "skipped",
                None,
                json!({"reason": "deletes are ignored"}),
            )),
            DeletePolicy::Unlink => Ok(result),
            DeletePolicy::Propagate => {
                let operation = format!("delete {} {t_id}", t_conf.object);
                match target.delete(&t_conf.object, &t_id).await {
                    Ok(()) => {}
                    // Already gone: the goal is reached.
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Err(vendor(e, &operation, json!({ "id": t_id }))),
                }
                tracing::info!(flow = route.name, record_id = %work.record_id, counterpart = %t_id, "deleted the counterpart");
                result.outcome = "deleted";
                Ok(result)
            }
        }
    }
}

/// The link and outcome of a create, or, when what follows the create failed (a Jira status
/// transition), a failure that keeps the link: the record exists with everything but that.
fn finish_create(
    created: crate::connectors::Created,
    mut link: Link,
    route: &Route<'_>,
    t: Side,
    operation: String,
    payload: Value,
) -> Result<Done, Failed> {
    set_modified(&mut link, t, now_ms());
    if let Some(error) = created.incomplete {
        // Keep the link and what landed, forget the status rules so the retry writes them as
        // an update and their echo is not mistaken for an edit.
        link.synced.retain(|index, _| {
            let path = t.path(&route.flow.fields[*index]);
            path != "status" && !path.starts_with("status.")
        });
        return Err(Failed::Vendor(Box::new(VendorFailure {
            error,
            operation,
            payload,
            link: Some(link),
        })));
    }
    if !created.created {
        // It existed already (an earlier attempt made it): found by its marker and updated.
        return Ok(Done {
            outcome: "linked",
            link: Some(link),
            unlink: None,
            detail: json!({ "found_by_marker": created.id }),
        });
    }
    Ok(Done {
        outcome: "created",
        link: Some(link),
        unlink: None,
        detail: json!({ "created": created.id }),
    })
}

fn done(outcome: &'static str, link: Option<Link>, detail: Value) -> Done {
    Done {
        outcome,
        link,
        unlink: None,
        detail,
    }
}

fn skipped(reason: &str) -> Done {
    done("skipped", None, json!({ "reason": reason }))
}

fn policy_name(policy: ConflictPolicy) -> &'static str {
    match policy {
        ConflictPolicy::LastWriteWins => "last_write_wins",
        ConflictPolicy::PreferLeft => "prefer_left",
        ConflictPolicy::PreferRight => "prefer_right",
    }
}
