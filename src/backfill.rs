//! Backfill: the first sync of records that existed before Tandem.
//!
//! Both sides are listed (the flow's filters applied). Records that already belong together are
//! paired before anything is created: by the flow's match key (`left.match_key` holds the same
//! value as `right.match_key`, e.g. a Jira field holding the case number), or by a marker a
//! copy carries. A pair is linked with what it already agrees on; fields that differ are left
//! for the next change of either side (or a reconcile with `--repair`, where the flow's conflict
//! policy decides). The rest is created on the other side through the journal and the engine,
//! in bulk, by a run of the flow (`schedule::Scheduler::backfill`).
//!
//! Every step is idempotent, which is what makes a backfill resumable: linked records are not
//! planned again, a listed state enters the journal once (its dedupe key is the one polls use),
//! and creates are upserts on the marker.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::config::{FlowSettings, Settings};
use crate::connectors::{self, ConnectorError, Connectors, Record};
use crate::journal::{ChangeOp, Journal, JournalError, Link, NewChange, Origin, Synced};
use crate::reconcile::{list_both, Listed};
use crate::sync::mapping::{self, Side};

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("no flow named `{0}` is configured")]
    UnknownFlow(String),
    #[error(transparent)]
    Vendor(#[from] ConnectorError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Two records found to belong together.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Pair {
    pub left_id: String,
    pub right_id: String,
    /// `match_key` or `marker`.
    pub by: &'static str,
    /// Mapped fields whose values differ between the two (left field names).
    pub differing: Vec<String>,
}

/// A record with no counterpart, to be created on the other side.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ToCreate {
    /// Where the record is: `left` or `right`.
    pub side: &'static str,
    pub id: String,
}

/// A match key value several records share: left alone rather than guessed.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Ambiguous {
    pub side: &'static str,
    pub id: String,
    pub key: String,
    pub candidates: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Plan {
    pub flow: String,
    pub listed_left: usize,
    pub listed_right: usize,
    pub already_linked: usize,
    pub pairs: Vec<Pair>,
    pub create: Vec<ToCreate>,
    pub ambiguous: Vec<Ambiguous>,
}

/// A match key's value as text (Salesforce auto-numbers are strings, a Jira number field is a
/// number): trimmed; empty means none.
pub(crate) fn key_text(record: &Record, path: Option<&str>) -> Option<String> {
    let value = mapping::get_path(&record.fields, path?)?;
    let text = match value {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// The link of a pair: what the two already agree on counts as synced; the rest is left out,
/// so the next change of either side writes it.
pub fn pair_link(flow_name: &str, flow: &FlowSettings, left: &Record, right: &Record) -> Link {
    let mut synced = BTreeMap::new();
    for (index, rule) in flow.fields.iter().enumerate() {
        if let (Some(left), Some(right)) = agreement(flow, rule, left, right) {
            synced.insert(index, Synced { left, right });
        }
    }
    Link {
        flow: flow_name.to_string(),
        left_id: left.id.clone(),
        right_id: right.id.clone(),
        synced,
        left_modified_at: Some(left.modified_at),
        right_modified_at: Some(right.modified_at),
    }
}

/// Both values of a rule when they agree (as the rule translates them), else `(None, None)`.
fn agreement(
    flow: &FlowSettings,
    rule: &crate::config::FieldRule,
    left: &Record,
    right: &Record,
) -> (Option<Value>, Option<Value>) {
    let own = |record: &Record, path: &str| {
        mapping::own_form(
            rule,
            mapping::get_path(&record.fields, path).unwrap_or(&Value::Null),
        )
    };
    let (l, r) = (own(left, &rule.left), own(right, &rule.right));
    let agree = if rule.direction.unwrap_or(flow.direction).writes_right() {
        mapping::translate(rule, Side::Left, &l) == r
    } else {
        mapping::translate(rule, Side::Right, &r) == l
    };
    if agree {
        (Some(l), Some(r))
    } else {
        (None, None)
    }
}

pub struct Backfiller<'a> {
    pub settings: &'a Settings,
    pub connectors: &'a Connectors,
    pub journal: &'a Journal,
}

impl Backfiller<'_> {
    /// List both sides and decide what to link and what to create. Writes nothing.
    pub async fn plan(&self, name: &str) -> Result<(Plan, Listed), BackfillError> {
        let flow = self
            .settings
            .flows
            .get(name)
            .ok_or_else(|| BackfillError::UnknownFlow(name.to_string()))?;
        let listed = list_both(self.connectors, flow, None).await?;
        let links = self.journal.links(name).await?;
        let mut linked: [HashSet<String>; 2] = Default::default();
        for link in &links {
            linked[0].insert(link.left_id.clone());
            linked[1].insert(link.right_id.clone());
        }
        let mut plan = Plan {
            flow: name.to_string(),
            listed_left: listed[0].len(),
            listed_right: listed[1].len(),
            already_linked: listed[0]
                .keys()
                .filter(|id| linked[0].contains(*id))
                .count(),
            pairs: Vec::new(),
            create: Vec::new(),
            ambiguous: Vec::new(),
        };
        let unlinked = |i: usize| -> Vec<&Record> {
            let mut records: Vec<&Record> = listed[i]
                .values()
                .filter(|r| !linked[i].contains(&r.id))
                .collect();
            records.sort_by(|a, b| a.id.cmp(&b.id));
            records
        };
        let (lefts, rights) = (unlinked(0), unlinked(1));
        let mut paired: [HashSet<String>; 2] = Default::default();
        let mut push_pair = |plan: &mut Plan, l: &Record, r: &Record, by: &'static str| {
            if paired[0].contains(&l.id) || paired[1].contains(&r.id) {
                return;
            }
            paired[0].insert(l.id.clone());
            paired[1].insert(r.id.clone());
            let differing = flow
                .fields
                .iter()
                .filter(|rule| agreement(flow, rule, l, r).0.is_none())
                .map(|rule| rule.left.clone())
                .collect();
            plan.pairs.push(Pair {
                left_id: l.id.clone(),
                right_id: r.id.clone(),
                by,
                differing,
            });
        };

        // A copy Tandem made carries its original's id in its marker.
        let right_by_id: HashMap<&str, &Record> =
            rights.iter().map(|r| (r.id.as_str(), *r)).collect();
        let left_by_id: HashMap<&str, &Record> =
            lefts.iter().map(|r| (r.id.as_str(), *r)).collect();
        for l in &lefts {
            if let Some(original) = key_text(l, flow.left.marker.as_deref()) {
                if let Some(r) = right_by_id.get(original.as_str()) {
                    push_pair(&mut plan, l, r, "marker");
                }
            }
        }
        for r in &rights {
            if let Some(original) = key_text(r, flow.right.marker.as_deref()) {
                if let Some(l) = left_by_id.get(original.as_str()) {
                    push_pair(&mut plan, l, r, "marker");
                }
            }
        }

        // The match key, where both sides name one; a value shared by several records on
        // either side is reported, not guessed.
        if let (Some(lk), Some(rk)) = (
            flow.left.match_key.as_deref(),
            flow.right.match_key.as_deref(),
        ) {
            let mut by_key: [BTreeMap<String, Vec<&Record>>; 2] = Default::default();
            for (i, records, path) in [(0, &lefts, lk), (1, &rights, rk)] {
                for record in records.iter() {
                    if let Some(key) = key_text(record, Some(path)) {
                        by_key[i].entry(key).or_default().push(record);
                    }
                }
            }
            for (key, ls) in &by_key[0] {
                let Some(rs) = by_key[1].get(key) else {
                    continue;
                };
                if ls.len() == 1 && rs.len() == 1 {
                    push_pair(&mut plan, ls[0], rs[0], "match_key");
                    continue;
                }
                for (side, records, other) in [("left", ls, rs.len()), ("right", rs, ls.len())] {
                    for record in records.iter() {
                        plan.ambiguous.push(Ambiguous {
                            side,
                            id: record.id.clone(),
                            key: key.clone(),
                            candidates: other,
                        });
                    }
                }
            }
        }
        let ambiguous: HashSet<(&str, String)> = plan
            .ambiguous
            .iter()
            .map(|a| (a.side, a.id.clone()))
            .collect();
        for (i, side, records) in [(0, Side::Left, &lefts), (1, Side::Right, &rights)] {
            if !side.feeds(flow.direction) {
                continue;
            }
            for record in records.iter() {
                if paired[i].contains(&record.id)
                    || ambiguous.contains(&(side.as_str(), record.id.clone()))
                {
                    continue;
                }
                plan.create.push(ToCreate {
                    side: side.as_str(),
                    id: record.id.clone(),
                });
            }
        }
        Ok((plan, listed))
    }

    /// Link the plan's pairs (one transaction) and append a change for each record to create;
    /// the flow's run then creates the counterparts in bulk.
    pub async fn apply(&self, plan: &Plan, listed: &Listed) -> Result<(), BackfillError> {
        let flow = self
            .settings
            .flows
            .get(&plan.flow)
            .ok_or_else(|| BackfillError::UnknownFlow(plan.flow.clone()))?;
        let links: Vec<Link> = plan
            .pairs
            .iter()
            .filter_map(|pair| {
                let l = listed[0].get(&pair.left_id)?;
                let r = listed[1].get(&pair.right_id)?;
                Some(pair_link(&plan.flow, flow, l, r))
            })
            .collect();
        if !links.is_empty() {
            self.journal.save_links(&links).await?;
        }
        let mut changes = Vec::new();
        for item in &plan.create {
            let (i, side) = if item.side == "left" {
                (0, Side::Left)
            } else {
                (1, Side::Right)
            };
            let Some(record) = listed[i].get(&item.id) else {
                continue;
            };
            let conf = side.of(flow);
            changes.push(NewChange {
                // The key a poll of this state would use: stored once, whoever sees it first.
                dedupe_key: connectors::state_key(
                    &conf.connector,
                    &conf.object,
                    &record.id,
                    record.modified_at,
                ),
                connector: conf.connector.clone(),
                object: conf.object.clone(),
                record_id: record.id.clone(),
                op: ChangeOp::Upsert,
                snapshot: Value::Object(record.fields.clone()),
                source_modified_at: Some(record.modified_at),
                origin: Origin::Backfill,
            });
        }
        for chunk in changes.chunks(500) {
            self.journal.append_all(chunk.to_vec(), None).await?;
        }
        Ok(())
    }
}
