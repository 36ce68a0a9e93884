//! Prometheus metrics: counters updated where things happen, gauges read from the journal at
//! scrape time (so they are never stale and cost nothing between scrapes).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::FlowSettings;
use crate::connectors::{CallStats, Connectors};
use crate::journal::{now_ms, Journal, JournalError, JournalStats, Origin};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The configured connector name, or `unknown` (never the raw path: it is caller-controlled).
    pub connector: String,
    pub result: WebhookResult,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum WebhookResult {
    /// Stored: at least one new change.
    accepted,
    /// Every change it carried was already stored (a redelivery).
    duplicate,
    /// Authentic and well-formed, but nothing Tandem syncs (e.g. an issue property event).
    ignored,
    unauthorized,
    bad_request,
    too_large,
    unknown_connector,
    /// The journal could not commit; the sender was told to retry.
    unavailable,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestLabels {
    pub connector: String,
    pub origin: OriginLabel,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum OriginLabel {
    webhook,
    poll,
    reconcile,
    backfill,
    replay,
}

impl From<Origin> for OriginLabel {
    fn from(origin: Origin) -> Self {
        match origin {
            Origin::Webhook => OriginLabel::webhook,
            Origin::Poll => OriginLabel::poll,
            Origin::Reconcile => OriginLabel::reconcile,
            Origin::Backfill => OriginLabel::backfill,
            Origin::Replay => OriginLabel::replay,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    pub flow: String,
    pub connector: String,
    pub result: PollResult,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PollResult {
    ok,
    failed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabels {
    connector: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    flow: String,
    /// The connector the flow writes to for this change (the other side's).
    connector: String,
    /// created, written, linked, echo, stale, conflict, deleted, unlinked, skipped, failed.
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    flow: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    flow: String,
    connector: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

/// One side of a flow: the changes a connector's object produced.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    connector: String,
    object: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BacklogLabels {
    connector: String,
    object: String,
    /// `pending` or `in_flight`.
    status: String,
}

/// A change still owed is in one of these; every configured flow side shows both, even at zero.
const UNSETTLED: [&str; 2] = ["pending", "in_flight"];

pub struct Metrics {
    registry: Registry,
    pub webhook_requests: Family<WebhookLabels, Counter>,
    /// New journal rows by connector and how they arrived.
    pub ingested: Family<IngestLabels, Counter>,
    pub poll_runs: Family<PollLabels, Counter>,
    pub poll_duration: Family<PollLabels, Histogram>,
    journal_depth: Family<StatusLabels, Gauge>,
    journal_backlog: Family<BacklogLabels, Gauge>,
    journal_oldest_age: Family<ObjectLabels, Gauge<f64, AtomicU64>>,
    open_dead_letters: Family<DeadLetterLabels, Gauge>,
    quota_used: Family<ConnectorLabels, Gauge>,
    quota_remaining: Family<ConnectorLabels, Gauge>,
    quota_budget: Family<ConnectorLabels, Gauge>,
    vendor_quota_used: Family<ConnectorLabels, Gauge>,
    vendor_quota_max: Family<ConnectorLabels, Gauge>,
    vendor_window_remaining: Family<ConnectorLabels, Gauge>,
    vendor_window_limit: Family<ConnectorLabels, Gauge>,
    paused_seconds: Family<ConnectorLabels, Gauge<f64, AtomicU64>>,
    breaker_state: Family<ConnectorLabels, Gauge>,
    sync_outcomes: Family<SyncLabels, Counter>,
    conflicts: Family<FlowLabels, Counter>,
    sync_latency: Family<FlowLabels, Histogram>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    /// Held while the per-object and per-flow gauges are cleared, refilled and encoded, so that
    /// two scrapes at once never see each other's half-refilled families.
    scrape: tokio::sync::Mutex<()>,
}

impl Metrics {
    pub fn new(journal: &JournalStats, calls: &CallStats) -> Metrics {
        let mut registry = Registry::with_prefix("tandem");
        registry.register(
            "connector_calls",
            "Vendor API calls by connector and HTTP status (`error`: no answer)",
            calls.calls.clone(),
        );
        registry.register(
            "connector_pauses",
            "Times a connector paused all traffic on the vendor's rate limit",
            calls.pauses.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<ConnectorLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let quota_used = gauge(
            &mut registry,
            "connector_quota_used",
            "API calls Tandem made today (UTC) per connector",
        );
        let quota_remaining = gauge(
            &mut registry,
            "connector_quota_remaining",
            "API calls left today: the smaller of Tandem's budget and the vendor's remaining allowance (absent when neither is known)",
        );
        let quota_budget = gauge(
            &mut registry,
            "connector_quota_budget",
            "Tandem's daily budget per connector (absent when unlimited)",
        );
        let vendor_quota_used = gauge(
            &mut registry,
            "connector_vendor_quota_used",
            "The vendor's own count of calls, as last reported (Sforce-Limit-Info, X-RateLimit-*)",
        );
        let vendor_quota_max = gauge(
            &mut registry,
            "connector_vendor_quota_max",
            "The vendor's allowance, as last reported",
        );
        let vendor_window_remaining = gauge(
            &mut registry,
            "connector_vendor_window_remaining",
            "Calls left in the vendor's current rate-limit window (Jira X-RateLimit-Remaining)",
        );
        let vendor_window_limit = gauge(
            &mut registry,
            "connector_vendor_window_limit",
            "The vendor's rate-limit window size (Jira X-RateLimit-Limit)",
        );
        let paused_seconds = Family::<ConnectorLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "connector_paused_seconds",
            "Seconds until a paused connector sends again (0 when not paused)",
            paused_seconds.clone(),
        );
        let breaker_state = gauge(
            &mut registry,
            "connector_breaker_state",
            "Circuit breaker per connector: 0 closed, 1 open (calls stop), 2 half-open (one probe out)",
        );
        let sync_outcomes = Family::<SyncLabels, Counter>::default();
        registry.register(
            "sync_outcomes",
            "What the engine did with changes, by flow and outcome (echo: our own write coming back)",
            sync_outcomes.clone(),
        );
        let conflicts = Family::<FlowLabels, Counter>::default();
        registry.register(
            "sync_conflicts",
            "Fields changed on both sides since the last sync, settled by the flow's policy",
            conflicts.clone(),
        );
        let sync_latency = Family::<FlowLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 16))
        });
        registry.register(
            "sync_latency_seconds",
            "From the source's modified time to the counterpart written",
            sync_latency.clone(),
        );
        let dead_letters = Family::<DeadLetterLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Changes that failed for good, by flow and the connector that refused",
            dead_letters.clone(),
        );
        let ingested = Family::<IngestLabels, Counter>::default();
        registry.register(
            "changes_ingested",
            "Changes stored in the journal, by connector and origin",
            ingested.clone(),
        );
        let poll_runs = Family::<PollLabels, Counter>::default();
        registry.register(
            "poll_runs",
            "Polls of a flow side, by result",
            poll_runs.clone(),
        );
        let poll_duration = Family::<PollLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 14))
        });
        registry.register(
            "poll_duration_seconds",
            "How long a poll of a flow side took",
            poll_duration.clone(),
        );
        let webhook_requests = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_requests",
            "Webhook requests received, by connector and result",
            webhook_requests.clone(),
        );
        let journal_depth = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "journal_changes",
            "Changes in the journal, by status",
            journal_depth.clone(),
        );
        let journal_backlog = Family::<BacklogLabels, Gauge>::default();
        registry.register(
            "journal_backlog",
            "Changes still owed (pending or in flight), by the connector and object they came from",
            journal_backlog.clone(),
        );
        let journal_oldest_age = Family::<ObjectLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "journal_oldest_unsettled_age_seconds",
            "Age of the oldest change still pending or in flight, by the connector and object it came from (0 when none)",
            journal_oldest_age.clone(),
        );
        let open_dead_letters = Family::<DeadLetterLabels, Gauge>::default();
        registry.register(
            "dead_letters_open",
            "Dead letters waiting for an operator, by flow and the connector that refused (read from the journal: survives restarts)",
            open_dead_letters.clone(),
        );
        registry.register(
            "journal_commits",
            "Transactions committed by the journal writer",
            journal.commits.clone(),
        );
        registry.register(
            "journal_committed_requests",
            "Append requests carried by those commits (divide by commits for the group size)",
            journal.committed_requests.clone(),
        );
        registry.register(
            "journal_appended",
            "Changes stored as new journal rows",
            journal.appended.clone(),
        );
        registry.register(
            "journal_duplicates",
            "Changes absorbed by an existing dedupe key",
            journal.duplicates.clone(),
        );
        Metrics {
            registry,
            webhook_requests,
            ingested,
            poll_runs,
            poll_duration,
            journal_depth,
            journal_backlog,
            journal_oldest_age,
            open_dead_letters,
            quota_used,
            quota_remaining,
            quota_budget,
            vendor_quota_used,
            vendor_quota_max,
            vendor_window_remaining,
            vendor_window_limit,
            paused_seconds,
            breaker_state,
            sync_outcomes,
            conflicts,
            sync_latency,
            dead_letters,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// A change of `flow` whose counterpart is on `connector` ended with `outcome`.
    pub fn count_sync(&self, flow: &str, connector: &str, outcome: &str) {
        self.sync_outcomes
            .get_or_create(&SyncLabels {
                flow: flow.to_string(),
                connector: connector.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// How many changes of a flow (written to any of `connectors`) ended with `outcome` since
    /// the process started.
    pub fn sync_count(&self, flow: &str, connectors: &[&str], outcome: &str) -> u64 {
        let mut seen = Vec::new();
        connectors
            .iter()
            .filter(|c| {
                let first = !seen.contains(c);
                seen.push(*c);
                first
            })
            // `get`, not `get_or_create`: a status read must not register series nothing counts.
            .map(|connector| {
                self.sync_outcomes
                    .get(&SyncLabels {
                        flow: flow.to_string(),
                        connector: connector.to_string(),
                        outcome: outcome.to_string(),
                    })
                    .map_or(0, |counter| counter.get())
            })
            .sum()
    }

    pub fn count_conflicts(&self, flow: &str, n: u64) {
        self.conflicts
            .get_or_create(&FlowLabels {
                flow: flow.to_string(),
            })
            .inc_by(n);
    }

    pub fn observe_latency(&self, flow: &str, millis: i64) {
        self.sync_latency
            .get_or_create(&FlowLabels {
                flow: flow.to_string(),
            })
            .observe(millis as f64 / 1000.0);
    }

    pub fn count_dead_letter(&self, flow: &str, connector: &str) {
        self.dead_letters
            .get_or_create(&DeadLetterLabels {
                flow: flow.to_string(),
                connector: connector.to_string(),
            })
            .inc();
    }

    pub fn count_ingested(&self, connector: &str, origin: Origin, new: u64) {
        if new > 0 {
            self.ingested
                .get_or_create(&IngestLabels {
                    connector: connector.to_string(),
                    origin: origin.into(),
                })
                .inc_by(new);
        }
    }

    pub fn count_webhook(&self, connector: &str, result: WebhookResult) {
        self.webhook_requests
            .get_or_create(&WebhookLabels {
                connector: connector.to_string(),
                result,
            })
            .inc();
    }

    /// Refresh the gauges read at scrape time and render the exposition text.
    pub async fn render(
        &self,
        journal: &Journal,
        connectors: &Connectors,
        flows: &BTreeMap<String, FlowSettings>,
    ) -> Result<String, JournalError> {
        let _one_scrape_at_a_time = self.scrape.lock().await;
        for (name, connector) in connectors.iter() {
            let quota = connector.limiter().snapshot();
            let labels = ConnectorLabels {
                connector: name.clone(),
            };
            let set = |family: &Family<ConnectorLabels, Gauge>, value: Option<u64>| match value {
                Some(v) => {
                    family
                        .get_or_create(&labels)
                        .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
                None => {
                    family.remove(&labels);
                }
            };
            set(&self.quota_used, Some(quota.used));
            set(&self.quota_remaining, quota.remaining);
            set(&self.quota_budget, quota.budget);
            set(&self.vendor_quota_used, quota.server_used);
            set(&self.vendor_quota_max, quota.server_max);
            set(&self.vendor_window_remaining, quota.window_remaining);
            set(&self.vendor_window_limit, quota.window_limit);
            self.breaker_state.get_or_create(&labels).set(
                match connector.limiter().breaker_state() {
                    crate::connectors::BreakerState::Closed => 0,
                    crate::connectors::BreakerState::Open => 1,
                    crate::connectors::BreakerState::HalfOpen => 2,
                },
            );
            self.paused_seconds
                .get_or_create(&labels)
                .set(quota.paused_for.map_or(0.0, |d| d.as_secs_f64()));
        }
        for (status, count) in journal.depth_by_status().await? {
            self.journal_depth
                .get_or_create(&StatusLabels {
                    status: status.as_str(),
                })
                .set(count);
        }
        let backlog = journal.backlog_by_object().await?;
        let letters = journal.open_dead_letters_by_flow().await?;
        let now = now_ms();

        // Rebuilt from scratch: a drained object or a flow removed from the configuration must
        // not keep its last value. Every configured flow side is present, at zero when idle, so
        // that an alert on it sees 0 rather than no data.
        self.journal_backlog.clear();
        self.journal_oldest_age.clear();
        self.open_dead_letters.clear();
        for (flow, settings) in flows {
            for side in [&settings.left, &settings.right] {
                for status in UNSETTLED {
                    self.journal_backlog
                        .get_or_create(&BacklogLabels {
                            connector: side.connector.clone(),
                            object: side.object.clone(),
                            status: status.to_string(),
                        })
                        .set(0);
                }
                self.journal_oldest_age
                    .get_or_create(&ObjectLabels {
                        connector: side.connector.clone(),
                        object: side.object.clone(),
                    })
                    .set(0.0);
                self.open_dead_letters
                    .get_or_create(&DeadLetterLabels {
                        flow: flow.clone(),
                        connector: side.connector.clone(),
                    })
                    .set(0);
            }
        }
        for group in backlog {
            let age = (now - group.oldest_received_at).max(0) as f64 / 1000.0;
            let oldest = self.journal_oldest_age.get_or_create(&ObjectLabels {
                connector: group.connector.clone(),
                object: group.object.clone(),
            });
            if age > oldest.get() {
                oldest.set(age);
            }
            self.journal_backlog
                .get_or_create(&BacklogLabels {
                    connector: group.connector,
                    object: group.object,
                    status: group.status,
                })
                .set(group.count);
        }
        for letter in letters {
            self.open_dead_letters
                .get_or_create(&DeadLetterLabels {
                    flow: letter.flow.unwrap_or_default(),
                    connector: letter.connector,
                })
                .set(letter.count);
        }

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        Ok(text)
    }
}
