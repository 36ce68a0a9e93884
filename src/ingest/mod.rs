//! Polling workers: each side of a realtime flow that feeds the other is read every
//! `ingest.safety_poll_interval`, from its watermark, into the journal (a scheduled flow's runs
//! use the same [`Poller`]).
//!
//! Webhooks are the fast path; polling is what makes the journal complete anyway (a dropped
//! webhook, a receiver that was down, a vendor that cannot send). A poll reads everything
//! modified since `watermark - overlap`, oldest first, page by page; each page is stored with the
//! watermark it reaches in one transaction. So a poll that dies half-way keeps the watermark of
//! its last stored page and the next one resumes there, and a record read twice (overlap, a
//! resumed page, ties at the watermark's time) is absorbed by its dedupe key: the key is the
//! record id and its modified time, the same one a webhook for that state carries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{ConnectorKind, FlowMode, FlowSettings, Settings, SideSettings};
use crate::connectors::{self, Connector, ConnectorError, Connectors};
use crate::journal::{now_ms, ChangeOp, Journal, JournalError, NewChange, Origin, Watermark};
use crate::metrics::{Metrics, PollLabels, PollResult};

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Vendor(#[from] ConnectorError),
    #[error("storing the page failed: {0}")]
    Journal(#[from] JournalError),
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollOutcome {
    pub pages: u32,
    /// Records read (re-reads included).
    pub seen: u64,
    /// Records stored as new changes.
    pub new: u64,
}

/// One side of one flow, read as a source.
pub struct Poller {
    flow: String,
    side: SideSettings,
    fields: Vec<String>,
    connector: Arc<Connector>,
    journal: Journal,
    overlap: Duration,
}

impl Poller {
    pub fn new(
        flow: &str,
        side: &SideSettings,
        fields: Vec<String>,
        connector: Arc<Connector>,
        journal: Journal,
        overlap: Duration,
    ) -> Poller {
        Poller {
            flow: flow.to_string(),
            side: side.clone(),
            fields,
            connector,
            journal,
            overlap,
        }
    }

    pub fn flow(&self) -> &str {
        &self.flow
    }

    pub fn connector(&self) -> &str {
        &self.side.connector
    }

    pub fn object(&self) -> &str {
        &self.side.object
    }

    /// Read from the watermark to the end, storing page by page.
    ///
    /// Without a watermark (the first poll of a flow side) reading starts `overlap` before now:
    /// records that existed before Tandem are the business of `backfill`, which pairs them by
    /// match key instead of creating copies.
    pub async fn poll_once(&self) -> Result<PollOutcome, PollError> {
        let started = now_ms();
        let overlap = i64::try_from(self.overlap.as_millis()).unwrap_or(i64::MAX);
        let name = self.connector.name().to_string();
        let mut mark = self
            .journal
            .watermark(&name, &self.side.object, &self.flow)
            .await?;
        let since = mark
            .as_ref()
            .map_or(started, |m| m.position)
            .saturating_sub(overlap);
        let mut outcome = PollOutcome::default();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .connector
                .changed_since(
                    &self.side.object,
                    self.side.filter.as_deref(),
                    Some(since),
                    &self.fields,
                    cursor.as_deref(),
                )
                .await?;
            outcome.pages += 1;
            outcome.seen += page.records.len() as u64;
            let mut changes = Vec::with_capacity(page.records.len());
            for record in page.records {
                let next = (record.modified_at, record.id.clone());
                if mark
                    .as_ref()
                    .is_none_or(|m| next > (m.position, m.last_record_id.clone()))
                {
                    mark = Some(Watermark {
                        connector: name.clone(),
                        object: self.side.object.clone(),
                        scope: self.flow.clone(),
                        position: next.0,
                        last_record_id: next.1,
                    });
                }
                changes.push(NewChange {
                    dedupe_key: connectors::state_key(
                        &name,
                        &self.side.object,
                        &record.id,
                        record.modified_at,
                    ),
                    connector: name.clone(),
                    object: self.side.object.clone(),
                    record_id: record.id,
                    op: ChangeOp::Upsert,
                    snapshot: serde_json::Value::Object(record.fields),
                    source_modified_at: Some(record.modified_at),
                    origin: Origin::Poll,
                });
            }
            if page.next.is_none() {
                // Everything modified before the poll started has been read: the next poll can
                // start from here (less the overlap) even if nothing changed.
                let end = (started, String::new());
                if mark
                    .as_ref()
                    .is_none_or(|m| end > (m.position, m.last_record_id.clone()))
                {
                    mark = Some(Watermark {
                        connector: name.clone(),
                        object: self.side.object.clone(),
                        scope: self.flow.clone(),
                        position: end.0,
                        last_record_id: end.1,
                    });
                }
            }
            let appended = self.journal.append_all(changes, mark.clone()).await?;
            outcome.new += appended
                .iter()
                .filter(|a| matches!(a, crate::journal::Appended::New(_)))
                .count() as u64;
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(outcome),
            }
        }
    }
}

/// The fields a side's rules, marker and match key read, for the poll to ask for.
pub fn side_fields(flow: &FlowSettings, left: bool, kind: ConnectorKind) -> Vec<String> {
    let side = if left { &flow.left } else { &flow.right };
    let paths = flow
        .fields
        .iter()
        .map(|rule| if left { &rule.left } else { &rule.right })
        .chain(side.marker.iter())
        .chain(side.match_key.iter())
        .map(String::as_str);
    crate::sync::mapping::fields_for(kind, paths)
}

/// The pollers of one flow: a side is polled when the flow writes to the other side.
pub fn flow_pollers(
    name: &str,
    flow: &FlowSettings,
    connectors: &Connectors,
    journal: &Journal,
    overlap: Duration,
) -> Vec<Poller> {
    let mut out = Vec::new();
    for (left, side, feeds) in [
        (true, &flow.left, flow.direction.writes_right()),
        (false, &flow.right, flow.direction.writes_left()),
    ] {
        if !feeds {
            continue;
        }
        // Validated in config: every flow names configured connectors.
        let Some(connector) = connectors.get(&side.connector) else {
            continue;
        };
        out.push(Poller::new(
            name,
            side,
            side_fields(flow, left, connector.kind()),
            connector.clone(),
            journal.clone(),
            overlap,
        ));
    }
    out
}

/// The safety pollers of the realtime flows. A scheduled flow's sides are polled by its runs
/// (`schedule`), not here.
pub fn pollers(settings: &Settings, connectors: &Connectors, journal: &Journal) -> Vec<Poller> {
    settings
        .flows
        .iter()
        .filter(|(_, flow)| matches!(flow.mode, FlowMode::Realtime))
        .flat_map(|(name, flow)| {
            flow_pollers(name, flow, connectors, journal, settings.ingest.overlap)
        })
        .collect()
}

/// Run every poller until `shutdown`: once at start (to catch up on what happened while Tandem
/// was down), then every `interval`. A failed poll keeps its watermark and is tried at the next
/// tick; a vendor pause is honoured by the connector's limiter.
pub fn spawn(
    pollers: Vec<Poller>,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for poller in pollers {
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                let started = Instant::now();
                let result = tokio::select! {
                    result = poller.poll_once() => result,
                    () = shutdown.cancelled() => return,
                };
                let labels = |result| PollLabels {
                    flow: poller.flow().to_string(),
                    connector: poller.connector().to_string(),
                    result,
                };
                let labels = match result {
                    Ok(outcome) => {
                        metrics.count_ingested(poller.connector(), Origin::Poll, outcome.new);
                        tracing::info!(
                            flow = poller.flow(),
                            connector = poller.connector(),
                            pages = outcome.pages,
                            seen = outcome.seen,
                            new = outcome.new,
                            "poll done"
                        );
                        labels(PollResult::ok)
                    }
                    Err(error) => {
                        tracing::warn!(
                            flow = poller.flow(),
                            connector = poller.connector(),
                            %error,
                            "poll failed; the watermark stays and the next poll resumes from it"
                        );
                        labels(PollResult::failed)
                    }
                };
                metrics.poll_runs.get_or_create(&labels).inc();
                metrics
                    .poll_duration
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(extra: &str) -> FlowSettings {
        let text = format!(
            r#"
left = {{ connector = "jira", object = "issue", marker = "customfield_10050", match_key = "customfield_10051" }}
right = {{ connector = "sf", object = "Case", marker = "Jira_Key__c" }}
{extra}
[[fields]]
left = "summary"
right = "Subject"
[[fields]]
left = "priority.name"
right = "Priority"
[[fields]]
left = "status.name"
right = "Status"
"#
        );
        toml_value(&text)
    }

    fn toml_value(text: &str) -> FlowSettings {
        crate::config::from_toml(text)
    }

    #[test]
    fn a_poll_asks_for_the_top_level_fields_the_rules_marker_and_match_key_read() {
        let flow = flow("");
        assert_eq!(
            side_fields(&flow, true, ConnectorKind::Jira),
            vec![
                "customfield_10050",
                "customfield_10051",
                "priority",
                "status",
                "summary"
            ]
        );
        assert_eq!(
            side_fields(&flow, false, ConnectorKind::Salesforce),
            vec!["Jira_Key__c", "Priority", "Status", "Subject"]
        );
        let related = toml_value(
            r#"
left = { connector = "jira", object = "issue" }
right = { connector = "sf", object = "Case" }
direction = "right_to_left"
[[fields]]
left = "customfield_10060"
right = "Account.Name"
"#,
        );
        assert_eq!(
            side_fields(&related, false, ConnectorKind::Salesforce),
            vec!["Account.Name"]
        );
    }
}
