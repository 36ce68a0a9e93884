//! Reconcile: list both sides of a flow, compare them with the links, and report what webhooks
//! and polls missed: records without a counterpart, linked pairs whose fields drifted apart
//! (with both values), and links whose record is gone. `repair` fixes them by appending changes
//! to the journal, so the engine decides each one as it decides any change: policies, echo
//! rules, markers and filters all still hold.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::config::{FlowSettings, Settings, SideSettings};
use crate::connectors::{self, Connector, ConnectorError, Connectors, Record};
use crate::journal::{now_ms, ChangeOp, Journal, JournalError, Link, NewChange, Origin};
use crate::sync::mapping::{self, Side};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("no flow named `{0}` is configured")]
    UnknownFlow(String),
    #[error(transparent)]
    Vendor(#[from] ConnectorError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// A record on one side with no counterpart in the flow.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Missing {
    /// `left` or `right`: where the record is.
    pub side: String,
    pub connector: String,
    pub object: String,
    pub id: String,
    /// The record carries a marker naming an original: a copy Tandem made whose link is lost.
    pub marker: Option<String>,
}

/// One field of a linked pair whose values disagree.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FieldDrift {
    pub left_field: String,
    pub right_field: String,
    pub left: Value,
    pub right: Value,
    /// Which side differs from what Tandem last synced: `left`, `right`, `both` or `neither`.
    pub changed_since_sync: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Drift {
    pub left_id: String,
    pub right_id: String,
    pub fields: Vec<FieldDrift>,
}

/// A link one of whose records no longer exists.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Orphan {
    pub left_id: String,
    pub right_id: String,
    /// `left`, `right` or `both`.
    pub missing: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub flow: String,
    pub started_at: i64,
    pub ended_at: i64,
    /// Only records modified since then were listed (epoch ms), or everything.
    pub since: Option<i64>,
    pub repair: bool,
    pub listed_left: usize,
    pub listed_right: usize,
    pub links: usize,
    /// Records left out because a change to them is still in the journal: they are not
    /// settled, so comparing them would report what is already on its way.
    pub in_flight: usize,
    pub missing: Vec<Missing>,
    pub drifted: Vec<Drift>,
    pub orphaned: Vec<Orphan>,
    /// Changes appended by the repair.
    pub enqueued: usize,
    /// API calls the reconcile spent.
    pub api_calls: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.drifted.is_empty() && self.orphaned.is_empty()
    }
}

/// What was listed (and read) of each side, by record id: left, right.
pub type Listed = [HashMap<String, Record>; 2];

/// Both sides of a flow listed (filters applied), with the fields its rules, markers and match
/// keys read; modified since `since` if given.
pub async fn list_both(
    connectors: &Connectors,
    flow: &FlowSettings,
    since: Option<i64>,
) -> Result<Listed, ConnectorError> {
    let mut listed: Listed = Default::default();
    for (i, side) in [Side::Left, Side::Right].into_iter().enumerate() {
        let conf = side.of(flow);
        let connector = connectors.get(&conf.connector).ok_or_else(|| {
            ConnectorError::new(
                &conf.connector,
                "list",
                connectors::ErrorKind::Rejected,
                "no such connector",
            )
        })?;
        let fields = crate::ingest::side_fields(flow, side == Side::Left, connector.kind());
        listed[i] = list_side(connector, conf, &fields, since)
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
    }
    Ok(listed)
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Left => 0,
        Side::Right => 1,
    }
}

/// Every record of a flow side (its filter applied), modified since `since` if given.
pub async fn list_side(
    connector: &Connector,
    side: &SideSettings,
    fields: &[String],
    since: Option<i64>,
) -> Result<Vec<Record>, ConnectorError> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = connector
            .changed_since(
                &side.object,
                side.filter.as_deref(),
                since,
                fields,
                cursor.as_deref(),
            )
            .await?;
        out.extend(page.records);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(out),
        }
    }
}

pub struct Reconciler<'a> {
    pub settings: &'a Settings,
    pub connectors: &'a Connectors,
    pub journal: &'a Journal,
}

impl Reconciler<'_> {
    fn connector(&self, side: &SideSettings) -> Result<&Connector, ReconcileError> {
        self.connectors
            .get(&side.connector)
            .map(|c| c.as_ref())
            .ok_or_else(|| {
                ReconcileError::Vendor(ConnectorError::new(
                    &side.connector,
                    "reconcile",
                    connectors::ErrorKind::Rejected,
                    "no such connector",
                ))
            })
    }

    /// Compare the flow's two sides with its links; with `repair`, append the changes that fix
    /// what was found.
    pub async fn run(
        &self,
        name: &str,
        since: Option<i64>,
        repair: bool,
    ) -> Result<Report, ReconcileError> {
        let flow = self
            .settings
            .flows
            .get(name)
            .ok_or_else(|| ReconcileError::UnknownFlow(name.to_string()))?;
        let started_at = now_ms();
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (mut report, listed) = connectors::limit::counting_calls(
            calls.clone(),
            self.compare(name, flow, since, started_at),
        )
        .await?;
        if repair {
            report.repair = true;
            report.enqueued = self
                .repair(name, flow, &report, &listed, started_at)
                .await?;
        }
        report.api_calls = calls.load(std::sync::atomic::Ordering::Relaxed);
        report.ended_at = now_ms();
        Ok(report)
    }

    async fn compare(
        &self,
        name: &str,
        flow: &FlowSettings,
        since: Option<i64>,
        started_at: i64,
    ) -> Result<(Report, Listed), ReconcileError> {
        let mut listed = list_both(self.connectors, flow, since).await?;
        let mut busy: [HashSet<String>; 2] = Default::default();
        for (i, side) in [Side::Left, Side::Right].into_iter().enumerate() {
            let conf = side.of(flow);
            busy[i] = self
                .journal
                .unsettled_records(&conf.connector, &conf.object)
                .await?;
        }
        let links = self.journal.links(name).await?;
        let mut report = Report {
            flow: name.to_string(),
            started_at,
            ended_at: started_at,
            since,
            repair: false,
            listed_left: listed[0].len(),
            listed_right: listed[1].len(),
            links: links.len(),
            in_flight: 0,
            missing: Vec::new(),
            drifted: Vec::new(),
            orphaned: Vec::new(),
            enqueued: 0,
            api_calls: 0,
        };

        // The other half of a link whose one half was listed, read in bulk: with `since` it may
        // simply not have changed; without, it may be outside the filter. Only a record that
        // cannot be read is gone.
        let mut wanted: [Vec<String>; 2] = Default::default();
        for link in &links {
            let (l, r) = (
                listed[0].contains_key(&link.left_id),
                listed[1].contains_key(&link.right_id),
            );
            if l != r || (!l && since.is_none()) {
                if !l {
                    wanted[0].push(link.left_id.clone());
                }
                if !r {
                    wanted[1].push(link.right_id.clone());
                }
            }
        }
        for (i, side) in [Side::Left, Side::Right].into_iter().enumerate() {
            if wanted[i].is_empty() {
                continue;
            }
            let conf = side.of(flow);
            let connector = self.connector(conf)?;
            let fields = crate::ingest::side_fields(flow, side == Side::Left, connector.kind());
            for record in connector
                .read_many(&conf.object, &wanted[i], &fields)
                .await?
            {
                listed[i].insert(record.id.clone(), record);
            }
        }

        // Looked up once per link: sets, not the lists handed to `read_many`.
        let wanted: [HashSet<&str>; 2] = wanted
            .each_ref()
            .map(|ids| ids.iter().map(String::as_str).collect());
        let mut linked: [HashSet<&str>; 2] = Default::default();
        for link in &links {
            linked[0].insert(&link.left_id);
            linked[1].insert(&link.right_id);
            if busy[0].contains(&link.left_id) || busy[1].contains(&link.right_id) {
                report.in_flight += 1;
                continue;
            }
            let (left, right) = (listed[0].get(&link.left_id), listed[1].get(&link.right_id));
            let was_wanted = |i: usize, id: &String| wanted[i].contains(id.as_str());
            let gone_left = left.is_none() && was_wanted(0, &link.left_id);
            let gone_right = right.is_none() && was_wanted(1, &link.right_id);
            if gone_left || gone_right {
                report.orphaned.push(Orphan {
                    left_id: link.left_id.clone(),
                    right_id: link.right_id.clone(),
                    missing: match (gone_left, gone_right) {
                        (true, true) => "both",
                        (true, false) => "left",
                        _ => "right",
                    }
                    .to_string(),
                });
                continue;
            }
            if let (Some(left), Some(right)) = (left, right) {
                let fields = drift(flow, link, left, right);
                if !fields.is_empty() {
                    report.drifted.push(Drift {
                        left_id: link.left_id.clone(),
                        right_id: link.right_id.clone(),
                        fields,
                    });
                }
            }
        }

        for (i, side) in [Side::Left, Side::Right].into_iter().enumerate() {
            if !side.feeds(flow.direction) {
                continue;
            }
            let conf = side.of(flow);
            let mut ids: Vec<&String> = listed[i]
                .keys()
                .filter(|id| !linked[i].contains(id.as_str()))
                .collect();
            ids.sort();
            for id in ids {
                if busy[i].contains(id) {
                    report.in_flight += 1;
                    continue;
                }
                let record = &listed[i][id];
                // Read as backfill reads it, so a numeric marker is reported too.
                let marker = crate::backfill::key_text(record, conf.marker.as_deref());
                report.missing.push(Missing {
                    side: side.as_str().to_string(),
                    connector: conf.connector.clone(),
                    object: conf.object.clone(),
                    id: id.clone(),
                    marker,
                });
            }
        }
        Ok((report, listed))
    }

    /// Append the changes that fix what `report` found; how many.
    async fn repair(
        &self,
        name: &str,
        flow: &FlowSettings,
        report: &Report,
        listed: &Listed,
        started_at: i64,
    ) -> Result<usize, ReconcileError> {
        let mut changes = Vec::new();
        let change = |side: Side, id: &str, op: ChangeOp| {
            let conf = side.of(flow);
            // The state as listed, with its time: a complete snapshot needs no read, and the
            // conflict policy can compare both sides' values and times. A record that changes
            // again before the change is carried out is read afresh by the engine's stale check.
            let record = (op == ChangeOp::Upsert)
                .then(|| listed[side_index(side)].get(id))
                .flatten();
            NewChange {
                // One per record and reconcile: a second reconcile may repair it again.
                dedupe_key: format!(
                    "reconcile/{name}/{started_at}/{}/{}/{id}/{}",
                    conf.connector,
                    conf.object,
                    op.as_str()
                ),
                connector: conf.connector.clone(),
                object: conf.object.clone(),
                record_id: id.to_string(),
                op,
                snapshot: Value::Object(record.map(|r| r.fields.clone()).unwrap_or_default()),
                source_modified_at: record.map(|r| r.modified_at),
                origin: Origin::Reconcile,
            }
        };
        for missing in &report.missing {
            let side = if missing.side == "left" {
                Side::Left
            } else {
                Side::Right
            };
            changes.push(change(side, &missing.id, ChangeOp::Upsert));
        }
        for drift in &report.drifted {
            // The side that changed since the last sync carries the news; when both did (or
            // the link never knew a value), both are sent and the flow's conflict policy
            // decides, field by field.
            let mut left = false;
            let mut right = false;
            for field in &drift.fields {
                match field.changed_since_sync.as_str() {
                    "left" => left = true,
                    "right" => right = true,
                    _ => {
                        left = true;
                        right = true;
                    }
                }
            }
            if left && Side::Left.feeds(flow.direction) {
                changes.push(change(Side::Left, &drift.left_id, ChangeOp::Upsert));
            }
            if right && Side::Right.feeds(flow.direction) {
                changes.push(change(Side::Right, &drift.right_id, ChangeOp::Upsert));
            }
        }
        for orphan in &report.orphaned {
            // The record is gone: a delete, which the flow's delete policy turns into an
            // unlink, a delete of the counterpart, or nothing.
            if orphan.missing != "right" && Side::Left.feeds(flow.direction) {
                changes.push(change(Side::Left, &orphan.left_id, ChangeOp::Delete));
            }
            if orphan.missing != "left" && Side::Right.feeds(flow.direction) {
                changes.push(change(Side::Right, &orphan.right_id, ChangeOp::Delete));
            }
        }
        let count = changes.len();
        if count > 0 {
            self.journal.append_all(changes, None).await?;
        }
        Ok(count)
    }
}

/// The fields of a linked pair that disagree, with which side moved since the last sync.
fn drift(flow: &FlowSettings, link: &Link, left: &Record, right: &Record) -> Vec<FieldDrift> {
    let mut out = Vec::new();
    for (index, rule) in flow.fields.iter().enumerate() {
        let direction = rule.direction.unwrap_or(flow.direction);
        let raw = |record: &Record, path: &str| {
            mapping::own_form(
                rule,
                mapping::get_path(&record.fields, path).unwrap_or(&Value::Null),
            )
        };
        let (l, r) = (raw(left, &rule.left), raw(right, &rule.right));
        let agree = if direction.writes_right() {
            mapping::translate(rule, Side::Left, &l) == r
        } else {
            mapping::translate(rule, Side::Right, &r) == l
        };
        if agree {
            continue;
        }
        let synced = link.synced.get(&index);
        let moved_left = synced.is_none_or(|s| s.left != l);
        let moved_right = synced.is_none_or(|s| s.right != r);
        out.push(FieldDrift {
            left_field: rule.left.clone(),
            right_field: rule.right.clone(),
            left: l,
            right: r,
            changed_since_sync: match (moved_left, moved_right) {
                (true, true) => "both",
                (true, false) => "left",
                (false, true) => "right",
                (false, false) => "neither",
            }
            .to_string(),
        });
    }
    out
}
