//! `/metrics` after real syncs: the daemon between both emulators makes creates, edits, echoes,
//! a conflict and a dead letter, then one scrape is read with a Prometheus text parser and every
//! series the operator surface promises is looked for, with its labels.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::sims::{Sims, JIRA_SECRET, SF_TOKEN};
use common::TestApp;
use prometheus_parse::{Sample, Scrape, Value as Metric};
use serde_json::{json, Value};
use tandem::sim::salesforce::notify::OutboundMessage;

/// The realtime flow of `tests/sync.rs`, trimmed to two fields (summary and status are enough
/// for an edit, a conflict and a refused transition).
const FLOW: &str = r#"
[ingest]
safety_poll_interval = "1h"

[dispatch]
idle_wait = "10ms"
base_delay = "50ms"
max_delay = "200ms"
max_attempts = 3

[flows.support]
left = { connector = "jira", object = "issue", filter = "project = SUP", marker = "customfield_10050" }
right = { connector = "salesforce", object = "Case", marker = "Jira_Key__c" }
conflict = "last_write_wins"

[flows.support.defaults.left]
project = { key = "SUP" }
issuetype = { name = "Task" }

[flows.support.defaults.right]
Origin = "Web"

[[flows.support.fields]]
left = "summary"
right = "Subject"

[[flows.support.fields]]
left = "status.name"
right = "Status"
map = { "To Do" = "New", "In Progress" = "Working", "Done" = "Closed" }
"#;

struct World {
    sims: Sims,
    app: TestApp,
    http: reqwest::Client,
    settings: tandem::config::Settings,
}

impl World {
    async fn start() -> World {
        let sims = Sims::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = sims.config(&dir, FLOW);
        let settings = common::settings(&dir, &config);
        let app = common::spawn_with(settings.clone(), dir).await;
        sims.jira
            .add_webhook(&app.url("/webhooks/jira"), Some(JIRA_SECRET), None);
        sims.sf
            .add_outbound_message(OutboundMessage {
                url: app.url(&format!("/webhooks/salesforce/{SF_TOKEN}")),
                object: "Case".into(),
                fields: ["Subject", "Status", "Jira_Key__c", "SystemModstamp"]
                    .map(String::from)
                    .to_vec(),
            })
            .unwrap();
        World {
            sims,
            app,
            http: reqwest::Client::new(),
            settings,
        }
    }

    async fn stop(self) {
        self.app.stop().await;
        self.sims.stop().await;
    }

    async fn jira(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .http
            .request(method, format!("{}{path}", self.sims.jira.base_url()))
            .basic_auth("sim@example.com", Some("sim-token"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    async fn faults(&self, faults: Value) {
        for base in [self.sims.jira.base_url(), self.sims.sf.base_url()] {
            let response = self
                .http
                .put(format!("{base}/__sim/faults"))
                .json(&faults)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
        }
    }

    /// The counterpart of a record, once the flow has linked it.
    async fn wait_counterpart(&self, left: Option<&str>, right: Option<&str>) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let links = self.app.journal.links("support").await.unwrap();
            let found = links.into_iter().find_map(|l| match (left, right) {
                (Some(id), _) if l.left_id == id => Some(l.right_id),
                (_, Some(id)) if l.right_id == id => Some(l.left_id),
                _ => None,
            });
            if let Some(id) = found {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "no counterpart for {left:?} {right:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until no change is pending or in flight and the emulators have delivered.
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        // Quiet twice in a row, 100 ms apart: a last write's echo may still be on its way.
        let mut quiet = 0;
        while quiet < 2 {
            self.sims.jira.outbox().settle(Duration::from_secs(5)).await;
            self.sims.sf.settle(Duration::from_secs(5)).await;
            let open: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM changes WHERE status IN ('pending', 'in_flight')",
            )
            .fetch_one(self.app.journal.pool())
            .await
            .unwrap();
            quiet = if open == 0 { quiet + 1 } else { 0 };
            assert!(Instant::now() < deadline, "the journal never drained");
            tokio::time::sleep(Duration::from_millis(if open == 0 { 100 } else { 25 })).await;
        }
    }

    /// Both records' current state enters the journal in one transaction, so that neither
    /// side's change is carried out before the other is seen: a conflict, decided once.
    async fn observe_together(&self, issue: &str, case: &str) {
        let connectors = tandem::connectors::Connectors::build(
            &self.settings,
            &tandem::connectors::CallStats::default(),
        )
        .unwrap();
        let mut changes = Vec::new();
        for (connector, object, id) in [("jira", "issue", issue), ("salesforce", "Case", case)] {
            let record = connectors
                .get(connector)
                .unwrap()
                .read(object, id, &[])
                .await
                .unwrap()
                .unwrap();
            changes.push(tandem::journal::NewChange {
                connector: connector.into(),
                object: object.into(),
                record_id: id.into(),
                op: tandem::journal::ChangeOp::Upsert,
                dedupe_key: tandem::connectors::state_key(
                    connector,
                    object,
                    id,
                    record.modified_at,
                ),
                snapshot: Value::Object(record.fields),
                source_modified_at: Some(record.modified_at),
                origin: tandem::journal::Origin::Poll,
            });
        }
        self.app.journal.append_all(changes, None).await.unwrap();
    }

    async fn scrape(&self) -> (String, Scrape) {
        let response = self
            .http
            .get(self.app.url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        (text, scrape)
    }
}

/// Every sample of one series family (histograms by their base name).
fn family<'a>(scrape: &'a Scrape, name: &str) -> Vec<&'a Sample> {
    scrape.samples.iter().filter(|s| s.metric == name).collect()
}

/// The one sample of `name` whose labels are exactly `labels`.
fn sample<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a Sample {
    let found: Vec<_> = family(scrape, name)
        .into_iter()
        .filter(|s| {
            s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    found[0]
}

fn value(sample: &Sample) -> f64 {
    match &sample.value {
        Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
        other => panic!("{}: not a single value: {other:?}", sample.metric),
    }
}

/// The sum over the samples of `name` whose labels are exactly `labels` (0 when none).
fn sum_where(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    family(scrape, name)
        .into_iter()
        .filter(|s| {
            s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(value)
        .sum()
}

fn at(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(sample(scrape, name, labels))
}

/// A family is present, and every one of its samples carries exactly these label names.
fn assert_labels(scrape: &Scrape, name: &str, expected: &[&str]) {
    let samples = family(scrape, name);
    assert!(!samples.is_empty(), "no `{name}` series");
    let expected: BTreeSet<&str> = expected.iter().copied().collect();
    for s in samples {
        let names: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(names, expected, "{name}: {:?}", s.labels);
    }
}

/// Observations in a histogram sample, checked for a sane shape on the way.
fn histogram_count(sample: &Sample) -> f64 {
    let Metric::Histogram(buckets) = &sample.value else {
        panic!("{}: not a histogram: {:?}", sample.metric, sample.value);
    };
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count),
        "{}: buckets not cumulative: {buckets:?}",
        sample.metric
    );
    let last = buckets.last().expect("a bucket");
    assert!(last.less_than.is_infinite(), "the last bucket is +Inf");
    last.count
}

#[tokio::test]
async fn a_scrape_after_a_sync_has_every_promised_series_with_its_labels() {
    let world = World::start().await;

    // A create each way.
    let issue = world
        .jira(
            reqwest::Method::POST,
            "/rest/api/3/issue",
            json!({"fields": {"project": {"key": "SUP"}, "issuetype": {"name": "Task"},
                              "summary": "Printer on fire"}}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let case = world.wait_counterpart(Some(&issue), None).await;
    let other_case = world
        .sims
        .sf
        .insert("Case", json!({"Subject": "Refund please"}))
        .unwrap();
    let other_issue = world.wait_counterpart(None, Some(&other_case)).await;
    world.settle().await;

    // An edit, which comes back as an echo.
    world
        .jira(
            reqwest::Method::PUT,
            &format!("/rest/api/3/issue/{issue}"),
            json!({"fields": {"summary": "Printer still on fire"}}),
        )
        .await;
    world.settle().await;

    // Both sides edit the other pair's summary before either is synced: a conflict.
    world.faults(json!({"drop_webhooks": true})).await;
    world
        .jira(
            reqwest::Method::PUT,
            &format!("/rest/api/3/issue/{other_issue}"),
            json!({"fields": {"summary": "from jira"}}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    world
        .sims
        .sf
        .update("Case", &other_case, json!({"Subject": "from sf"}))
        .unwrap();
    world.observe_together(&other_issue, &other_case).await;
    world.settle().await;
    world.faults(json!({})).await;

    // A status Jira's workflow cannot reach: refused for good, a dead letter.
    world
        .sims
        .sf
        .update("Case", &case, json!({"Status": "Escalated"}))
        .unwrap();
    world.settle().await;

    // The start-up polls run beside all of this; wait for them rather than assume.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (text, scrape) = loop {
        let (text, scrape) = world.scrape().await;
        if family(&scrape, "tandem_poll_runs_total").len() >= 2 {
            break (text, scrape);
        }
        assert!(Instant::now() < deadline, "no poll ran:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let jira = [("connector", "jira")];
    let sf = [("connector", "salesforce")];
    let support_jira = [("flow", "support"), ("connector", "jira")];

    // Changes ingested, by connector and origin.
    assert_labels(
        &scrape,
        "tandem_changes_ingested_total",
        &["connector", "origin"],
    );
    for connector in ["jira", "salesforce"] {
        let ingested = at(
            &scrape,
            "tandem_changes_ingested_total",
            &[("connector", connector), ("origin", "webhook")],
        );
        assert!(ingested >= 1.0, "{connector}: {ingested}");
    }
    assert_labels(
        &scrape,
        "tandem_webhook_requests_total",
        &["connector", "result"],
    );
    assert!(
        at(
            &scrape,
            "tandem_webhook_requests_total",
            &[("connector", "salesforce"), ("result", "accepted")]
        ) >= 1.0
    );

    // What the engine did, by flow, target connector and outcome; echoes are the `echo`
    // outcome.
    assert_labels(
        &scrape,
        "tandem_sync_outcomes_total",
        &["flow", "connector", "outcome"],
    );
    let outcome = |o: &str| {
        ["jira", "salesforce"]
            .iter()
            .map(|c| {
                sum_where(
                    &scrape,
                    "tandem_sync_outcomes_total",
                    &[("flow", "support"), ("connector", c), ("outcome", o)],
                )
            })
            .sum::<f64>()
    };
    assert!(outcome("created") >= 2.0, "one create each way");
    assert!(outcome("written") >= 1.0);
    assert!(outcome("echo") >= 1.0);
    assert!(outcome("failed") >= 1.0);
    assert_labels(&scrape, "tandem_sync_conflicts_total", &["flow"]);
    assert!(
        at(
            &scrape,
            "tandem_sync_conflicts_total",
            &[("flow", "support")]
        ) >= 1.0
    );

    // Latency from the source's modified time to the counterpart written.
    assert_labels(&scrape, "tandem_sync_latency_seconds", &["flow"]);
    let latency = sample(
        &scrape,
        "tandem_sync_latency_seconds",
        &[("flow", "support")],
    );
    let observed = histogram_count(latency);
    assert!(
        observed >= 3.0,
        "two creates and an edit at least: {observed}"
    );
    assert_eq!(
        at(
            &scrape,
            "tandem_sync_latency_seconds_count",
            &[("flow", "support")]
        ),
        observed
    );
    let latency_sum = at(
        &scrape,
        "tandem_sync_latency_seconds_sum",
        &[("flow", "support")],
    );
    assert!(latency_sum >= 0.0);
    // Real durations: something, and on loopback well under the retry horizon on average.
    assert!(
        latency_sum > 0.0 && latency_sum / observed < 15.0,
        "{latency_sum}"
    );

    // Dead letters: made since start, and open now.
    assert_labels(&scrape, "tandem_dead_letters_total", &["flow", "connector"]);
    assert_eq!(at(&scrape, "tandem_dead_letters_total", &support_jira), 1.0);
    assert_labels(&scrape, "tandem_dead_letters_open", &["flow", "connector"]);
    assert_eq!(at(&scrape, "tandem_dead_letters_open", &support_jira), 1.0);
    assert_eq!(
        at(
            &scrape,
            "tandem_dead_letters_open",
            &[("flow", "support"), ("connector", "salesforce")]
        ),
        0.0
    );

    // The journal: depth by status overall, the backlog and its age per connector and object.
    assert_labels(&scrape, "tandem_journal_changes", &["status"]);
    assert!(at(&scrape, "tandem_journal_changes", &[("status", "done")]) >= 4.0);
    assert!(at(&scrape, "tandem_journal_changes", &[("status", "dead")]) >= 1.0);
    assert_labels(
        &scrape,
        "tandem_journal_backlog",
        &["connector", "object", "status"],
    );
    assert_labels(
        &scrape,
        "tandem_journal_oldest_unsettled_age_seconds",
        &["connector", "object"],
    );
    for (connector, object) in [("jira", "issue"), ("salesforce", "Case")] {
        for status in ["pending", "in_flight"] {
            let depth = at(
                &scrape,
                "tandem_journal_backlog",
                &[
                    ("connector", connector),
                    ("object", object),
                    ("status", status),
                ],
            );
            assert_eq!(depth, 0.0, "{connector} {object} {status}: drained");
        }
        let age = at(
            &scrape,
            "tandem_journal_oldest_unsettled_age_seconds",
            &[("connector", connector), ("object", object)],
        );
        assert_eq!(age, 0.0, "nothing owed");
    }
    assert!(at(&scrape, "tandem_journal_appended_total", &[]) >= 1.0);

    // Vendor calls by status, quota, breaker.
    assert_labels(
        &scrape,
        "tandem_connector_calls_total",
        &["connector", "status"],
    );
    for connector in ["jira", "salesforce"] {
        let answered: f64 = family(&scrape, "tandem_connector_calls_total")
            .into_iter()
            .filter(|s| s.labels.get("connector") == Some(connector))
            .filter(|s| s.labels.get("status").is_some_and(|st| st.starts_with('2')))
            .map(value)
            .sum();
        assert!(answered >= 1.0, "{connector}: no 2xx call counted");
    }
    for s in family(&scrape, "tandem_connector_calls_total") {
        let status = s.labels.get("status").unwrap();
        assert!(
            status == "error" || status.parse::<u16>().is_ok(),
            "status is an HTTP code or `error`: {status}"
        );
    }
    assert_labels(&scrape, "tandem_connector_quota_used", &["connector"]);
    assert!(at(&scrape, "tandem_connector_quota_used", &jira) >= 1.0);
    assert!(at(&scrape, "tandem_connector_quota_used", &sf) >= 1.0);
    assert_labels(&scrape, "tandem_connector_quota_remaining", &["connector"]);
    let remaining = at(&scrape, "tandem_connector_quota_remaining", &sf);
    assert!(remaining > 0.0 && remaining < 100_000.0, "{remaining}");
    assert_eq!(at(&scrape, "tandem_connector_quota_budget", &sf), 100_000.0);
    assert_labels(&scrape, "tandem_connector_breaker_state", &["connector"]);
    assert_eq!(at(&scrape, "tandem_connector_breaker_state", &jira), 0.0);
    assert_eq!(at(&scrape, "tandem_connector_breaker_state", &sf), 0.0);
    assert_eq!(at(&scrape, "tandem_connector_paused_seconds", &sf), 0.0);

    // Polls of each flow side: runs and their duration.
    assert_labels(
        &scrape,
        "tandem_poll_runs_total",
        &["flow", "connector", "result"],
    );
    assert_labels(
        &scrape,
        "tandem_poll_duration_seconds",
        &["flow", "connector", "result"],
    );
    for connector in ["jira", "salesforce"] {
        let labels = [
            ("flow", "support"),
            ("connector", connector),
            ("result", "ok"),
        ];
        assert!(at(&scrape, "tandem_poll_runs_total", &labels) >= 1.0);
        let duration = sample(&scrape, "tandem_poll_duration_seconds", &labels);
        assert!(histogram_count(duration) >= 1.0);
    }

    // Every family has its help text; counters are typed as counters.
    for name in [
        "tandem_changes_ingested",
        "tandem_sync_outcomes",
        "tandem_sync_conflicts",
        "tandem_dead_letters",
        "tandem_connector_calls",
        "tandem_poll_runs",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} counter\n")),
            "{name} is a counter"
        );
        assert!(scrape.docs.contains_key(name), "{name} has help text");
    }
    world.stop().await;
}

#[tokio::test]
async fn a_backlog_shows_per_connector_and_object_and_drains_back_to_zero() {
    let app = common::spawn_app().await;
    for n in 0..3 {
        app.journal
            .append(common::change(&format!("1000{n}"), &format!("wh-{n}")))
            .await
            .unwrap();
    }
    let mut sf = common::change("500A", "sf-1");
    sf.connector = "salesforce".into();
    sf.object = "Case".into();
    app.journal.append(sf).await.unwrap();
    let claimed = app
        .journal
        .claim("worker", 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);

    let scrape = |app: &TestApp| {
        let request = app.client.get(app.url("/metrics"));
        async move {
            let text = request.send().await.unwrap().text().await.unwrap();
            Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
        }
    };
    let before = scrape(&app).await;
    let depth = |scrape: &Scrape, connector: &str, object: &str, status: &str| {
        at(
            scrape,
            "tandem_journal_backlog",
            &[
                ("connector", connector),
                ("object", object),
                ("status", status),
            ],
        )
    };
    // The oldest change is claimed first, and it is Jira's.
    assert_eq!(depth(&before, "jira", "issue", "in_flight"), 1.0);
    assert_eq!(depth(&before, "jira", "issue", "pending"), 2.0);
    assert_eq!(depth(&before, "salesforce", "Case", "pending"), 1.0);
    let age = |connector: &str, object: &str| {
        at(
            &before,
            "tandem_journal_oldest_unsettled_age_seconds",
            &[("connector", connector), ("object", object)],
        )
    };
    assert!(age("salesforce", "Case") >= 0.0);
    // Jira's change was appended first, so its oldest is at least as old.
    assert!(age("jira", "issue") >= age("salesforce", "Case"));

    sqlx::query("UPDATE changes SET status = 'done', lease_owner = NULL")
        .execute(app.journal.pool())
        .await
        .unwrap();
    let after = scrape(&app).await;
    // No flow is configured, so a drained object has nothing left to show.
    assert!(family(&after, "tandem_journal_backlog").is_empty());
    assert!(family(&after, "tandem_journal_oldest_unsettled_age_seconds").is_empty());
    assert_eq!(
        at(&after, "tandem_journal_changes", &[("status", "done")]),
        4.0
    );
    app.stop().await;
}
