//! The sync engine end to end: the daemon between both emulators over real HTTP, fed by their
//! webhooks, writing through their APIs; every assertion reads the emulators' own state.

mod common;

use std::time::{Duration, Instant};

use common::sims::{Sims, JIRA_SECRET, SF_TOKEN};
use common::TestApp;
use serde_json::{json, Value};
use tandem::sim::salesforce::notify::OutboundMessage;

/// A realtime flow between the two emulators; webhooks carry the changes.
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

/// id, connector, record id, origin, outcome, detail.
type HistoryRow = (i64, String, String, String, Option<String>, Option<String>);

struct World {
    sims: Sims,
    app: TestApp,
    http: reqwest::Client,
}

impl World {
    async fn start(extra: &str) -> World {
        World::start_with(FLOW, extra).await
    }

    async fn start_with(flow: &str, extra: &str) -> World {
        let sims = Sims::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = sims.config(&dir, &format!("{flow}\n{extra}"));
        let settings = common::settings(&dir, &config);
        let app = common::spawn_with(settings, dir).await;
        sims.jira
            .add_webhook(&app.url("/webhooks/jira"), Some(JIRA_SECRET), None);
        sims.sf
            .add_outbound_message(OutboundMessage {
                url: app.url(&format!("/webhooks/salesforce/{SF_TOKEN}")),
                object: "Case".into(),
                fields: [
                    "Subject",
                    "Description",
                    "Priority",
                    "Status",
                    "Jira_Key__c",
                    "SystemModstamp",
                ]
                .map(String::from)
                .to_vec(),
            })
            .unwrap();
        World {
            sims,
            app,
            http: reqwest::Client::new(),
        }
    }

    async fn stop(self) {
        self.app.stop().await;
        self.sims.stop().await;
    }

    async fn jira(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.sims.jira.base_url()))
            .basic_auth("sim@example.com", Some("sim-token"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    /// A Case made in Salesforce, its synced Jira issue, and a quiet journal: (case, issue).
    async fn linked_case(&self, fields: Value) -> (String, String) {
        let case = self.sims.sf.insert("Case", fields).unwrap();
        let issue = self.wait_counterpart(None, Some(&case)).await;
        self.settle().await;
        (case, issue)
    }

    /// An issue made in Jira in project SUP; its id.
    async fn create_issue(&self, fields: Value) -> String {
        let mut all = json!({"project": {"key": "SUP"}, "issuetype": {"name": "Task"}});
        all.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        let created = self
            .jira(
                reqwest::Method::POST,
                "/rest/api/3/issue",
                Some(json!({ "fields": all })),
            )
            .await;
        created["id"].as_str().unwrap().to_string()
    }

    async fn issue(&self, id: &str) -> Value {
        self.jira(
            reqwest::Method::GET,
            &format!("/rest/api/3/issue/{id}"),
            None,
        )
        .await
    }

    async fn counterpart(&self, left: Option<&str>, right: Option<&str>) -> Option<String> {
        let links = self.app.journal.links("support").await.unwrap();
        links.into_iter().find_map(|l| match (left, right) {
            (Some(id), _) if l.left_id == id => Some(l.right_id),
            (_, Some(id)) if l.right_id == id => Some(l.left_id),
            _ => None,
        })
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

    /// The counterpart of a record, once the flow has linked it.
    async fn wait_counterpart(&self, left: Option<&str>, right: Option<&str>) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(id) = self.counterpart(left, right).await {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "no counterpart for {left:?} {right:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Writes the emulators served: Jira issue creates/edits/transitions, Salesforce record
    /// creates/updates (upserts included).
    async fn writes(&self) -> (u64, u64) {
        let calls = |base: String| async move {
            reqwest::get(format!("{base}/__sim/calls"))
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        };
        let count = |calls: &Value, keys: &[&str]| -> u64 {
            calls["by_endpoint"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| keys.contains(&k.as_str()))
                        .map(|(_, v)| v.as_u64().unwrap_or(0))
                        .sum()
                })
                .unwrap_or(0)
        };
        let jira = calls(self.sims.jira.base_url()).await;
        let sf = calls(self.sims.sf.base_url()).await;
        (
            count(
                &jira,
                &[
                    "POST /rest/api/{v}/issue",
                    "PUT /rest/api/{v}/issue/{key}",
                    "POST /rest/api/{v}/issue/{key}/transitions",
                ],
            ),
            count(
                &sf,
                &[
                    "POST /services/data/{v}/sobjects/{ty}",
                    "PATCH /services/data/{v}/sobjects/{ty}/{id}",
                    "PATCH /services/data/{v}/sobjects/{ty}/{field}/{value}",
                ],
            ),
        )
    }
}

#[tokio::test]
async fn an_issue_becomes_a_case_and_a_case_becomes_an_issue() {
    let world = World::start("").await;
    let issue = world
        .create_issue(json!({
            "summary": "Printer on fire",
            "priority": {"name": "Highest"},
            "description": tandem::adf::from_text("Smoke in room 4"),
        }))
        .await;
    let case = world.wait_counterpart(Some(&issue), None).await;
    let record = world.sims.sf.record(&case).unwrap();
    assert_eq!(record["Subject"], "Printer on fire");
    assert_eq!(record["Priority"], "High");
    assert_eq!(record["Description"], "Smoke in room 4");
    assert_eq!(record["Status"], "New");
    assert_eq!(record["Origin"], "Web");
    assert_eq!(record["Jira_Key__c"], issue.as_str());

    let case = world
        .sims
        .sf
        .insert(
            "Case",
            json!({"Subject": "Refund please", "Priority": "Low", "Status": "Working"}),
        )
        .unwrap();
    let issue = world.wait_counterpart(None, Some(&case)).await;
    world.settle().await;
    let fields = world.issue(&issue).await["fields"].clone();
    assert_eq!(fields["summary"], "Refund please");
    assert_eq!(fields["priority"]["name"], "Low");
    assert_eq!(fields["status"]["name"], "In Progress");
    assert_eq!(fields["customfield_10050"], case.as_str());
    world.stop().await;
}

#[tokio::test]
async fn edits_follow_both_ways_and_each_comes_back_as_an_echo_not_a_write() {
    let world = World::start("").await;
    let (case, issue) = world
        .linked_case(json!({"Subject": "first", "Priority": "Medium"}))
        .await;
    let before = world.writes().await;

    // One human edit in Jira: exactly one write in Salesforce, none back in Jira.
    world
        .jira(
            reqwest::Method::PUT,
            &format!("/rest/api/3/issue/{issue}"),
            Some(json!({"fields": {"summary": "edited in Jira"}})),
        )
        .await;
    world.settle().await;
    assert_eq!(
        world.sims.sf.record(&case).unwrap()["Subject"],
        "edited in Jira"
    );
    let after_jira = world.writes().await;
    let log: Vec<HistoryRow> = sqlx::query_as(
        "SELECT id, connector, record_id, origin, outcome, detail FROM changes ORDER BY id",
    )
    .fetch_all(world.app.journal.pool())
    .await
    .unwrap();
    assert_eq!(after_jira.0 - before.0, 1, "the human edit only: {log:#?}");
    assert_eq!(after_jira.1 - before.1, 1, "one write in Salesforce");

    // One human edit in Salesforce, including a status: Jira follows through a transition.
    world
        .sims
        .sf
        .update(
            "Case",
            &case,
            json!({"Subject": "edited in SF", "Status": "Working"}),
        )
        .unwrap();
    world.settle().await;
    let fields = world.issue(&issue).await["fields"].clone();
    assert_eq!(fields["summary"], "edited in SF");
    assert_eq!(fields["status"]["name"], "In Progress");
    let after_sf = world.writes().await;
    assert_eq!(after_sf.1 - after_jira.1, 0, "no write back to Salesforce");
    // The edit and the transition.
    assert_eq!(after_sf.0 - after_jira.0, 2);

    let echoes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM changes WHERE outcome = 'echo'")
        .fetch_one(world.app.journal.pool())
        .await
        .unwrap();
    assert!(echoes >= 2, "{echoes}");
    world.stop().await;
}

#[tokio::test]
async fn a_burst_of_edits_to_one_record_coalesces_into_fewer_writes() {
    let world = World::start("").await;
    let (case, issue) = world.linked_case(json!({"Subject": "v0"})).await;
    let before = world.writes().await;
    for n in 1..=10 {
        world
            .sims
            .sf
            .update("Case", &case, json!({"Subject": format!("v{n}")}))
            .unwrap();
    }
    world.settle().await;
    let after = world.writes().await;
    let jira_writes = after.0 - before.0;
    assert!(jira_writes < 10, "{jira_writes} writes for 10 edits");
    assert_eq!(world.issue(&issue).await["fields"]["summary"], "v10");
    world.stop().await;
}

#[tokio::test]
async fn a_refused_write_is_dead_lettered_others_keep_syncing_and_a_fix_supersedes_it() {
    let world = World::start("").await;
    let (case, issue) = world
        .linked_case(json!({"Subject": "needs escalation"}))
        .await;
    // `Escalated` has no Jira status, so no workflow transition reaches it: permanent.
    world
        .sims
        .sf
        .update("Case", &case, json!({"Status": "Escalated"}))
        .unwrap();
    let other = world
        .sims
        .sf
        .insert("Case", json!({"Subject": "unaffected"}))
        .unwrap();
    world.wait_counterpart(None, Some(&other)).await;
    world.settle().await;
    let letters: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT d.connector, d.status, c.record_id, d.vendor_message
           FROM dead_letters d JOIN changes c ON c.id = d.change_id",
    )
    .fetch_all(world.app.journal.pool())
    .await
    .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].0, "jira");
    assert_eq!(letters[0].1, "open");
    assert_eq!(letters[0].2, case);
    assert!(
        letters[0].3.as_deref().unwrap_or("").contains("Escalated"),
        "{letters:?}"
    );
    assert_eq!(
        world.issue(&issue).await["fields"]["status"]["name"],
        "To Do"
    );

    // Fixing the data in Salesforce syncs the record and supersedes its dead letter.
    world
        .sims
        .sf
        .update("Case", &case, json!({"Status": "Working"}))
        .unwrap();
    world.settle().await;
    assert_eq!(
        world.issue(&issue).await["fields"]["status"]["name"],
        "In Progress"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM dead_letters")
        .fetch_one(world.app.journal.pool())
        .await
        .unwrap();
    assert_eq!(status, "superseded");
    world.stop().await;
}

async fn faults(base: &str, faults: Value) {
    let response = reqwest::Client::new()
        .put(format!("{base}/__sim/faults"))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

#[tokio::test]
async fn a_target_down_opens_the_breaker_holds_everything_and_recovery_delivers_it_all() {
    let flow = FLOW.replace(
        "max_attempts = 3",
        "max_attempts = 50\nbreaker_threshold = 3\nbreaker_cooldown = \"300ms\"",
    );
    let world = World::start_with(&flow, "").await;
    faults(&world.sims.sf.base_url(), json!({"error_rate": 1.0})).await;
    let mut issues = Vec::new();
    for n in 0..5 {
        let issue = world
            .create_issue(json!({"summary": format!("during the outage {n}")}))
            .await;
        issues.push(issue);
    }
    // The breaker opens, and the changes wait in the journal.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(world.app.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(r#"tandem_connector_breaker_state{connector="salesforce"} 1"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker never opened:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM changes WHERE connector = 'jira' AND status IN ('pending', 'in_flight')",
    )
    .fetch_one(world.app.journal.pool())
    .await
    .unwrap();
    assert!(waiting >= 5, "{waiting}");
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(world.app.journal.pool())
        .await
        .unwrap();
    assert_eq!(dead, 0);

    faults(&world.sims.sf.base_url(), json!({})).await;
    for issue in &issues {
        let case = world.wait_counterpart(Some(issue), None).await;
        assert!(world.sims.sf.record(&case).unwrap()["Subject"]
            .as_str()
            .unwrap()
            .starts_with("during the outage"));
    }
    world.stop().await;
}

#[tokio::test]
async fn retries_exhausted_leave_a_dead_letter_that_replays_over_http_once_the_target_is_back() {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "admin-secret").unwrap();
    // The breaker opens during the outage; a short cooldown lets the replay through soon.
    let flow = FLOW.replace(
        "max_attempts = 3",
        "max_attempts = 3\nbreaker_cooldown = \"200ms\"",
    );
    let world = World::start_with(
        &flow,
        &format!(
            "[admin]\ntoken = {{ file = \"{}\" }}\n",
            token.path().display()
        ),
    )
    .await;
    faults(&world.sims.sf.base_url(), json!({"error_rate": 1.0})).await;
    let issue = world.create_issue(json!({"summary": "replay me"})).await;
    let api = |path: &str| format!("{}/api/v1{path}", world.app.url(""));
    let deadline = Instant::now() + Duration::from_secs(15);
    let letter = loop {
        let page: Value = world
            .http
            .get(api("/dead-letters"))
            .bearer_auth("admin-secret")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(item) = page["items"].as_array().and_then(|items| items.first()) {
            break item.clone();
        }
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letter["record_id"], issue.as_str());
    assert_eq!(letter["connector"], "salesforce");
    assert!(letter["http_status"] == 500 || letter["http_status"] == 503);

    faults(&world.sims.sf.base_url(), json!({})).await;
    let replay = world
        .http
        .post(api(&format!("/dead-letters/{}/replay", letter["id"])))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    let case = world.wait_counterpart(Some(&issue), None).await;
    assert_eq!(world.sims.sf.record(&case).unwrap()["Subject"], "replay me");
    let shown: Value = world
        .http
        .get(api(&format!("/dead-letters/{}", letter["id"])))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "replayed");
    world.stop().await;
}
