//! A realtime flow between the two emulators with linked records, for `latency` and
//! `efficiency`: the daemon in process, fed by the emulators' own webhooks and Outbound
//! Messages, on the default dispatch settings unless a scenario says otherwise.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::*;

/// Jira issues ↔ Salesforce Cases, as the README's example flow: summary, description (ADF ↔
/// text), priority, status.
pub const FLOW: &str = r#"
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
left = "description"
right = "Description"
transform = "adf_text"

[[flows.support.fields]]
left = "priority.name"
right = "Priority"
map = { Highest = "High", High = "High", Medium = "Medium", Low = "Low", Lowest = "Low" }
reverse_map = { High = "High", Medium = "Medium", Low = "Low" }

[[flows.support.fields]]
left = "status.name"
right = "Status"
map = { "To Do" = "New", "In Progress" = "Working", "Done" = "Closed" }
"#;

pub const OM_FIELDS: [&str; 6] = [
    "Subject",
    "Description",
    "Priority",
    "Status",
    "Jira_Key__c",
    "SystemModstamp",
];

pub struct World {
    pub sims: Sims,
    pub daemon: Daemon,
    /// (Jira issue id, Case id), linked by the flow.
    pub pairs: Vec<(String, String)>,
    pub setup: Duration,
    pub _dir: TempDir,
}

/// Both emulators, the daemon with the realtime flow (and `extra` config), and `records`
/// Jira issues that the daemon itself has synced to Cases (bulk-created in Jira, so each comes
/// to the daemon as a webhook): the setup goes through the pipeline being measured.
pub async fn start(records: usize, extra: &str) -> World {
    let started = Instant::now();
    let dir = scratch_dir();
    let sims = Sims::start().await;
    let overlay = sims.config(
        dir.path(),
        "requests_per_second = 1000\nmax_concurrency = 8\ntimeout = \"10s\"",
        &format!("{FLOW}\n{extra}"),
    );
    let daemon = Daemon::start(settings_in(dir.path(), &overlay)).await;
    sims.register_webhooks(&daemon.url(""), &OM_FIELDS);
    let http = reqwest::Client::new();
    let mut issues = Vec::new();
    for start in (0..records).step_by(50) {
        let updates: Vec<Value> = (start..records.min(start + 50))
            .map(|i| {
                json!({"fields": {
                    "project": {"key": "SUP"},
                    "issuetype": {"name": "Task"},
                    "summary": format!("record {i}"),
                    "priority": {"name": "Medium"},
                    "description": tandem::adf::from_text(&format!("Seeded record {i}.")),
                }})
            })
            .collect();
        let answer: Value = http
            .post(format!("{}/rest/api/3/issue/bulk", sims.jira.base_url()))
            .basic_auth("sim@example.com", Some("sim-token"))
            .json(&json!({ "issueUpdates": updates }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for issue in answer["issues"].as_array().unwrap() {
            issues.push(issue["id"].as_str().unwrap().to_string());
        }
    }
    let journal = daemon.journal.clone();
    let linked = wait_until(Duration::from_secs(300), Duration::from_millis(100), || {
        let journal = journal.clone();
        async move {
            journal.links("support").await.unwrap().len() >= records
                && open_changes(journal.pool()).await == 0
        }
    })
    .await;
    assert!(linked, "the daemon did not link the seeded records in time");
    settle(&sims, &daemon).await;
    let links = daemon.journal.links("support").await.unwrap();
    let by_left: std::collections::HashMap<String, String> =
        links.into_iter().map(|l| (l.left_id, l.right_id)).collect();
    let pairs = issues
        .into_iter()
        .map(|i| {
            let case = by_left[&i].clone();
            (i, case)
        })
        .collect();
    World {
        sims,
        daemon,
        pairs,
        setup: started.elapsed(),
        _dir: dir,
    }
}

/// Quiet: no notification on its way and nothing owed, twice in a row 100 ms apart.
pub async fn settle(sims: &Sims, daemon: &Daemon) {
    let mut quiet = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while quiet < 2 {
        sims.settle().await;
        let open = open_changes(daemon.journal.pool()).await;
        quiet = if open == 0 { quiet + 1 } else { 0 };
        assert!(Instant::now() < deadline, "the journal never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A person edits a Jira issue (through the REST API, as a browser would).
pub async fn edit_issue(http: &reqwest::Client, base: &str, issue: &str, fields: Value) {
    let response = http
        .put(format!("{base}/rest/api/3/issue/{issue}"))
        .basic_auth("sim@example.com", Some("sim-token"))
        .json(&json!({ "fields": fields }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}
