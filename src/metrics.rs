//! Prometheus metrics: counters updated where things happen, gauges read from the journal at
//! scrape time (so they are never stale and cost nothing between scrapes).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::journal::{now_ms, Journal, JournalError, JournalStats};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The configured connector name, or `unknown` (never the raw path: it is caller-controlled).
    pub connector: String,
    pub result: WebhookResult,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum WebhookResult {
    bad_request,
    too_large,
    unknown_connector,
    unsupported,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub webhook_requests: Family<WebhookLabels, Counter>,
    journal_depth: Family<StatusLabels, Gauge>,
    journal_oldest_age: Gauge<f64, AtomicU64>,
}

impl Metrics {
    pub fn new(journal: &JournalStats) -> Metrics {
        let mut registry = Registry::with_prefix("tandem");
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
        let journal_oldest_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "journal_oldest_unsettled_age_seconds",
            "Age of the oldest change still pending or in flight (0 when none)",
            journal_oldest_age.clone(),
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
            journal_depth,
            journal_oldest_age,
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

    /// Refresh the journal gauges and render the exposition text.
    pub async fn render(&self, journal: &Journal) -> Result<String, JournalError> {
        for (status, count) in journal.depth_by_status().await? {
            self.journal_depth
                .get_or_create(&StatusLabels {
                    status: status.as_str(),
                })
                .set(count);
        }
        let age = journal
            .oldest_unsettled_received_at()
            .await?
            .map_or(0.0, |at| (now_ms() - at).max(0) as f64 / 1000.0);
        self.journal_oldest_age.set(age);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        Ok(text)
    }
}
