//! Polling workers: each flow side that feeds the other is read on the flow's schedule, from its
//! watermark, into the journal.
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

use chrono::Utc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{
    ConnectorKind, FlowMode, FlowSettings, IngestSettings, Schedule, Settings, SideSettings,
};
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
fn side_fields(flow: &FlowSettings, left: bool, kind: ConnectorKind) -> Vec<String> {
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

/// The pollers the flows need: a side is polled when the flow writes to the other side.
pub fn pollers(
    settings: &Settings,
    connectors: &Connectors,
    journal: &Journal,
) -> Vec<(Poller, Cadence)> {
    let mut out = Vec::new();
    for (name, flow) in &settings.flows {
        let cadence = Cadence::of(flow, &settings.ingest);
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
            out.push((
                Poller::new(
                    name,
                    side,
                    side_fields(flow, left, connector.kind()),
                    connector.clone(),
                    journal.clone(),
                    settings.ingest.overlap,
                ),
                cadence.clone(),
            ));
        }
    }
    out
}

/// When a flow side is polled.
#[derive(Debug, Clone)]
pub enum Cadence {
    Every(Duration),
    Cron(Box<croner::Cron>),
}

impl Cadence {
    pub fn of(flow: &FlowSettings, ingest: &IngestSettings) -> Cadence {
        match &flow.mode {
            FlowMode::Realtime => Cadence::Every(ingest.safety_poll_interval),
            FlowMode::Scheduled(Schedule::Every(every)) => Cadence::Every(*every),
            FlowMode::Scheduled(Schedule::Cron { cron, .. }) => Cadence::Cron(cron.clone()),
        }
    }

    /// How long from now until the next poll.
    pub fn next_in(&self) -> Duration {
        match self {
            Cadence::Every(every) => *every,
            Cadence::Cron(cron) => {
                let now = Utc::now();
                cron.find_next_occurrence(&now, false)
                    .ok()
                    .and_then(|at| (at - now).to_std().ok())
                    // A cron that never fires again (validated against at load) checks daily.
                    .unwrap_or(Duration::from_secs(86_400))
            }
        }
    }
}

/// Run every poller until `shutdown`: once at start (to catch up on what happened while Tandem
/// was down), then on its cadence. A failed poll keeps its watermark and is tried at the next
/// tick; a vendor pause is honoured by the connector's limiter.
pub fn spawn(
    pollers: Vec<(Poller, Cadence)>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for (poller, cadence) in pollers {
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
                    () = tokio::time::sleep(cadence.next_in()) => {}
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

    #[test]
    fn realtime_flows_poll_at_the_safety_interval_and_scheduled_ones_on_their_schedule() {
        let ingest = IngestSettings {
            safety_poll_interval: Duration::from_secs(900),
            overlap: Duration::from_secs(120),
        };
        assert!(matches!(
            Cadence::of(&flow(""), &ingest),
            Cadence::Every(d) if d == Duration::from_secs(900)
        ));
        assert!(matches!(
            Cadence::of(&flow("mode = { scheduled = { every = \"5m\" } }"), &ingest),
            Cadence::Every(d) if d == Duration::from_secs(300)
        ));
        let hourly = Cadence::of(
            &flow("mode = { scheduled = { cron = \"0 * * * *\" } }"),
            &ingest,
        );
        let next = hourly.next_in();
        assert!(
            next <= Duration::from_secs(3600) && next > Duration::ZERO,
            "{next:?}"
        );
    }
}
