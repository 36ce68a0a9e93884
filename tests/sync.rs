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
    settings: tandem::config::Settings,
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
        let app = common::spawn_with(settings.clone(), dir).await;
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
            settings,
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

    /// Both records' current state enters the journal in one transaction, as two notifications
    /// arriving together would: neither side's change can be carried out before the other is
    /// seen.
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

    /// A Jira user deletes something (an issue, a comment) by its API path.
    async fn jira_delete(&self, path: &str) {
        let response = self
            .http
            .delete(format!("{}{path}", self.sims.jira.base_url()))
            .basic_auth("sim@example.com", Some("sim-token"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "DELETE {path}");
    }

    /// A Jira user edits an issue's fields.
    async fn edit_issue(&self, issue: &str, fields: Value) {
        self.jira(
            reqwest::Method::PUT,
            &format!("/rest/api/3/issue/{issue}"),
            Some(json!({ "fields": fields })),
        )
        .await;
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
async fn new_work_wakes_an_idle_dispatcher_instead_of_waiting_for_its_next_look() {
    // An hour between looks: only the wake-up on commit can deliver these in time.
    let flow = FLOW.replace("idle_wait = \"10ms\"", "idle_wait = \"1h\"");
    let world = World::start_with(&flow, "").await;
    // Both dispatchers have had their first look and are idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let issue = world
        .create_issue(json!({ "summary": "Wake up", "priority": {"name": "Low"} }))
        .await;
    let case = world.wait_counterpart(Some(&issue), None).await;
    assert_eq!(world.sims.sf.record(&case).unwrap()["Subject"], "Wake up");
    world
        .sims
        .sf
        .update("Case", &case, json!({ "Subject": "Awake" }))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while world.issue(&issue).await["fields"]["summary"] != "Awake" {
        assert!(Instant::now() < deadline, "the edit never reached Jira");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
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
        .edit_issue(&issue, json!({"summary": "edited in Jira"}))
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

/// `GET /api/v1{path}` with the admin token the replay test configures.
async fn admin_get(world: &World, path: &str) -> Value {
    world
        .http
        .get(format!("{}/api/v1{path}", world.app.url("")))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
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
    // Every notification is in (acknowledged), the breaker opens, and the changes wait.
    assert!(
        world
            .sims
            .jira
            .outbox()
            .settle(Duration::from_secs(10))
            .await
    );
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
        let page: Value = admin_get(&world, "/dead-letters").await;
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
    let shown: Value = admin_get(&world, &format!("/dead-letters/{}", letter["id"])).await;
    assert_eq!(shown["status"], "replayed");

    // Why did the record not sync, and what happened since: its links and its history.
    let record: Value = admin_get(&world, &format!("/records/jira/issue/{issue}")).await;
    assert_eq!(record["links"][0]["flow"], "support");
    assert_eq!(record["links"][0]["counterpart"]["id"], case.as_str());
    assert_eq!(record["links"][0]["synced"][0]["left"], "replay me");
    let history = record["history"].as_array().unwrap();
    assert_eq!(history[0]["origin"], "replay", "newest first");
    assert_eq!(history[0]["outcome"], "created");
    let failed = history
        .iter()
        .find(|h| !h["dead_letter"].is_null())
        .expect("the change that failed");
    assert_eq!(failed["dead_letter"]["status"], "replayed");
    assert_eq!(failed["status"], "dead");
    let connectors: Value = admin_get(&world, "/connectors").await;
    let names: Vec<&str> = connectors["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["jira", "salesforce"]);
    assert!(
        connectors["connectors"][1]["quota"]["used"]
            .as_u64()
            .unwrap()
            > 0
    );
    // Paging the history, and bad input refused with the reason.
    let first = admin_get(&world, &format!("/records/jira/issue/{issue}?limit=1")).await;
    assert_eq!(first["history"].as_array().unwrap().len(), 1);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("more history")
        .to_string();
    let second = admin_get(
        &world,
        &format!("/records/jira/issue/{issue}?limit=1&cursor={cursor}"),
    )
    .await;
    assert_ne!(
        second["history"][0]["change_id"],
        first["history"][0]["change_id"]
    );
    for (path, status, code) in [
        ("/records/nope/issue/1", 404, "unknown_connector"),
        ("/records/jira/issue/1?limit=0", 400, "bad_request"),
        ("/records/jira/issue/1?cursor=-4", 400, "bad_request"),
        ("/records/jira/issue/1?sort=asc", 400, "bad_request"),
    ] {
        let response = world
            .http
            .get(api(path))
            .bearer_auth("admin-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{path}");
    }
    let flows = admin_get(&world, "/flows").await;
    let support = &flows["flows"][0];
    assert_eq!(support["name"], "support");
    assert_eq!(support["mode"], "realtime");
    assert_eq!(support["open_dead_letters"], 0, "the letter was replayed");
    assert_eq!(support["sides"]["right"]["breaker"], "closed");
    assert!(support["outcomes_since_start"]["created"].as_u64().unwrap() >= 1);
    assert!(support["outcomes_since_start"]["failed"].as_u64().unwrap() >= 1);
    let unauthorized = world
        .http
        .get(api(&format!("/records/jira/issue/{issue}")))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    world.stop().await;
}

/// Both sides edit the summary between syncs; `first` edits first. Returns the summary each
/// side ends with, and the conflict the journal recorded.
async fn conflict(policy: &str, first: &str) -> (String, String, Value) {
    let flow = FLOW.replace(
        "conflict = \"last_write_wins\"",
        &format!("conflict = \"{policy}\""),
    );
    let world = World::start_with(&flow, "").await;
    let (case, issue) = world.linked_case(json!({"Subject": "original"})).await;
    // The edits reach Tandem only through `observe_together`.
    for base in [world.sims.jira.base_url(), world.sims.sf.base_url()] {
        faults(&base, json!({"drop_webhooks": true})).await;
    }
    let edit_jira = || async {
        world
            .edit_issue(&issue, json!({"summary": "from jira"}))
            .await;
    };
    let edit_sf = || {
        world
            .sims
            .sf
            .update("Case", &case, json!({"Subject": "from sf"}))
            .unwrap()
    };
    if first == "jira" {
        edit_jira().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        edit_sf();
    } else {
        edit_sf();
        tokio::time::sleep(Duration::from_millis(20)).await;
        edit_jira().await;
    }
    world.observe_together(&issue, &case).await;
    world.settle().await;
    let jira = world.issue(&issue).await["fields"]["summary"]
        .as_str()
        .unwrap()
        .to_string();
    let sf = world.sims.sf.record(&case).unwrap()["Subject"]
        .as_str()
        .unwrap()
        .to_string();
    let details: Vec<Option<String>> =
        sqlx::query_scalar("SELECT detail FROM changes WHERE detail LIKE '%conflicts%'")
            .fetch_all(world.app.journal.pool())
            .await
            .unwrap();
    assert_eq!(details.len(), 1, "one conflict recorded: {details:?}");
    let detail: Value = serde_json::from_str(details[0].as_deref().unwrap()).unwrap();
    world.stop().await;
    (
        jira,
        sf,
        detail["support"]["detail"]["conflicts"][0].clone(),
    )
}

#[tokio::test]
async fn a_field_edited_on_both_sides_goes_to_the_last_writer_and_the_loser_is_kept() {
    let (jira, sf, seen) = conflict("last_write_wins", "jira").await;
    assert_eq!((jira.as_str(), sf.as_str()), ("from sf", "from sf"));
    assert_eq!(seen["policy"], "last_write_wins");
    assert_eq!(seen["winner"], "right");
    assert_eq!(seen["left"], "from jira");
    assert_eq!(seen["right"], "from sf");

    let (jira, sf, seen) = conflict("last_write_wins", "sf").await;
    assert_eq!((jira.as_str(), sf.as_str()), ("from jira", "from jira"));
    assert_eq!(seen["winner"], "left");
}

#[tokio::test]
async fn prefer_left_and_prefer_right_win_whoever_wrote_last() {
    let (jira, sf, conflict_seen) = conflict("prefer_left", "jira").await;
    assert_eq!((jira.as_str(), sf.as_str()), ("from jira", "from jira"));
    assert_eq!(conflict_seen["winner"], "left");
    let (jira, sf, conflict_seen) = conflict("prefer_right", "sf").await;
    assert_eq!((jira.as_str(), sf.as_str()), ("from sf", "from sf"));
    assert_eq!(conflict_seen["winner"], "right");
}

/// A worker claims the change for a Case, gets as far as `step`, and dies (its lease expires);
/// the daemon then starts on the same database. Exactly one Jira issue must exist for the Case.
async fn crash_during_create(step: &str) {
    let sims = Sims::start().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings(&dir, &sims.config(&dir, FLOW));
    let case = sims
        .sf
        .insert("Case", json!({"Subject": format!("crash {step}")}))
        .unwrap();
    {
        let journal = tandem::journal::Journal::open(&settings.storage, &settings.journal)
            .await
            .unwrap();
        journal.migrate().await.unwrap();
        let connectors = tandem::connectors::Connectors::build(
            &settings,
            &tandem::connectors::CallStats::default(),
        )
        .unwrap();
        let record = connectors
            .get("salesforce")
            .unwrap()
            .read("Case", &case, &[])
            .await
            .unwrap()
            .unwrap();
        journal
            .append(tandem::journal::NewChange {
                connector: "salesforce".into(),
                object: "Case".into(),
                record_id: case.clone(),
                op: tandem::journal::ChangeOp::Upsert,
                dedupe_key: format!("crash-{step}"),
                snapshot: Value::Object(record.fields.clone()),
                source_modified_at: Some(record.modified_at),
                origin: tandem::journal::Origin::Webhook,
            })
            .await
            .unwrap();
        let claimed = journal
            .claim_from(
                "salesforce",
                tandem::journal::Objects::All,
                "doomed",
                10,
                Duration::from_millis(300),
            )
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let lead = &claimed[0];
        let engine = tandem::sync::engine::Engine::new(
            std::sync::Arc::new(settings.clone()),
            connectors,
            journal.clone(),
        );
        let work = tandem::sync::engine::Work {
            connector: lead.connector.clone(),
            object: lead.object.clone(),
            record_id: lead.record_id.clone(),
            op: lead.op,
            snapshot: lead.snapshot.as_object().unwrap().clone(),
            modified_at: lead.source_modified_at,
            origin: lead.origin,
            attempts: lead.attempts,
            lead: lead.id,
        };
        match step {
            "before the remote call" => {}
            "after the remote call" => {
                let routes = engine.routes("salesforce", "Case");
                let done = engine.sync(&work, &routes[0]).await.ok().unwrap();
                assert_eq!(done.outcome, "created");
                // ... and dies before the link and the change are committed.
            }
            "after the link commit" => {
                let routes = engine.routes("salesforce", "Case");
                let done = engine.sync(&work, &routes[0]).await.ok().unwrap();
                let settlement = tandem::journal::Settlement {
                    save: done.link.into_iter().collect(),
                    outcome: done.outcome.into(),
                    ..Default::default()
                };
                journal
                    .settle(
                        &[lead.id],
                        "doomed",
                        &settlement,
                        Some(("salesforce", "Case", &case)),
                    )
                    .await
                    .unwrap();
            }
            other => panic!("no step {other}"),
        }
        journal.close().await;
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    let app = common::spawn_with(settings, dir).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM changes WHERE connector = 'salesforce' AND status != 'done'",
        )
        .fetch_one(app.journal.pool())
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{step}: the change never settled"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let issues: Vec<String> = sims
        .jira
        .store()
        .issues
        .values()
        .filter(|issue| {
            issue
                .custom
                .get("customfield_10050")
                .and_then(Value::as_str)
                == Some(case.as_str())
        })
        .map(|issue| issue.id.to_string())
        .collect();
    assert_eq!(issues.len(), 1, "{step}: {issues:?}");
    let links = app.journal.links("support").await.unwrap();
    assert!(links
        .iter()
        .any(|l| l.right_id == case && l.left_id == issues[0]));
    app.stop().await;
    sims.stop().await;
}

#[tokio::test]
async fn a_crash_at_any_step_of_a_create_leaves_exactly_one_counterpart() {
    for step in [
        "before the remote call",
        "after the remote call",
        "after the link commit",
    ] {
        crash_during_create(step).await;
    }
}

#[tokio::test]
async fn salesforce_quota_spent_mid_run_pauses_then_resumes_and_nothing_is_lost() {
    let world = World::start("").await;
    let (_, first) = world.linked_case(json!({"Subject": "before"})).await;
    // The org's allowance is spent (by Tandem or anyone): REQUEST_LIMIT_EXCEEDED.
    world.sims.sf.set_api_usage(100_000);
    let mut issues = vec![first];
    for n in 0..4 {
        issues.push(
            world
                .create_issue(json!({"summary": format!("while out of quota {n}")}))
                .await,
        );
    }
    // Paused and waiting, not dead-lettered: the changes stay in the journal.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let text = reqwest::get(world.app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"tandem_connector_pauses_total{connector="salesforce"}"#),
        "{text}"
    );
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(world.app.journal.pool())
        .await
        .unwrap();
    assert_eq!(dead, 0);
    for issue in &issues[1..] {
        assert_eq!(world.counterpart(Some(issue), None).await, None);
    }
    // The allowance resets: the next probe succeeds and everything is delivered.
    world.sims.sf.set_api_usage(0);
    for issue in &issues[1..] {
        world.wait_counterpart(Some(issue), None).await;
    }
    world.settle().await;
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(world.app.journal.pool())
        .await
        .unwrap();
    assert_eq!(dead, 0);
    world.stop().await;
}

#[tokio::test]
async fn an_edit_seen_by_webhook_and_by_poll_is_written_once() {
    // Polls every 150 ms besides the webhooks: each state arrives both ways.
    let flow = FLOW.replace(
        "safety_poll_interval = \"1h\"",
        "safety_poll_interval = \"150ms\"",
    );
    let world = World::start_with(&flow, "").await;
    let (case, issue) = world.linked_case(json!({"Subject": "twice seen"})).await;
    let before = world.writes().await;
    world
        .edit_issue(&issue, json!({"summary": "seen twice"}))
        .await;
    world.settle().await;
    // Several more polls re-read both records.
    tokio::time::sleep(Duration::from_millis(600)).await;
    world.settle().await;
    let after = world.writes().await;
    assert_eq!(
        world.sims.sf.record(&case).unwrap()["Subject"],
        "seen twice"
    );
    assert_eq!(after.1 - before.1, 1, "one write in Salesforce");
    assert_eq!(after.0 - before.0, 1, "the human edit only in Jira");
    // The polls ran, read the same states, and stored nothing: the dedupe key of a record state
    // is the same whichever way it arrives.
    let text = reqwest::get(world.app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let runs: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"tandem_poll_runs_total{flow="support",connector="jira",result="ok"} "#,
            )
        })
        .unwrap()
        .parse()
        .unwrap();
    assert!(runs >= 3, "{runs}");
    world.stop().await;
}

#[tokio::test]
async fn deletes_follow_the_flows_policy() {
    let flow = FLOW.replace(
        "conflict = \"last_write_wins\"",
        "conflict = \"last_write_wins\"\ndeletes = \"propagate\"",
    );
    let world = World::start_with(&flow, "").await;
    let issue = world
        .create_issue(json!({"summary": "to be deleted"}))
        .await;
    let case = world.wait_counterpart(Some(&issue), None).await;
    world.settle().await;
    world
        .jira_delete(&format!("/rest/api/3/issue/{issue}"))
        .await;
    world.settle().await;
    assert_eq!(world.sims.sf.record(&case).unwrap()["_deleted"], true);
    assert!(world.app.journal.links("support").await.unwrap().is_empty());
    world.stop().await;

    // The default, `unlink`: the counterpart stays, the pair is forgotten.
    let world = World::start("").await;
    let issue = world.create_issue(json!({"summary": "unlinked"})).await;
    let case = world.wait_counterpart(Some(&issue), None).await;
    world.settle().await;
    world
        .jira_delete(&format!("/rest/api/3/issue/{issue}"))
        .await;
    world.settle().await;
    assert_eq!(world.sims.sf.record(&case).unwrap()["_deleted"], false);
    assert!(world.app.journal.links("support").await.unwrap().is_empty());
    world.stop().await;
}

#[tokio::test]
async fn comments_follow_both_ways_once_each_and_edits_follow() {
    let flow = FLOW.replace(
        "conflict = \"last_write_wins\"",
        "conflict = \"last_write_wins\"\ncomments = true",
    );
    let world = World::start_with(&flow, "").await;
    world
        .sims
        .sf
        .add_outbound_message(OutboundMessage {
            url: world.app.url(&format!("/webhooks/salesforce/{SF_TOKEN}")),
            object: "CaseComment".into(),
            fields: ["ParentId", "CommentBody", "CreatedDate", "LastModifiedDate"]
                .map(String::from)
                .to_vec(),
        })
        .unwrap();
    let (case, issue) = world.linked_case(json!({"Subject": "talk about it"})).await;
    let connectors = tandem::connectors::Connectors::build(
        &world.settings,
        &tandem::connectors::CallStats::default(),
    )
    .unwrap();
    let comments = |connector: &'static str, parent: String| {
        let connectors = connectors.clone();
        async move {
            connectors
                .get(connector)
                .unwrap()
                .comments(&parent)
                .await
                .unwrap()
        }
    };

    // A Jira comment becomes a CaseComment, signed; nothing comes back.
    let jira_comment = world
        .jira(
            reqwest::Method::POST,
            &format!("/rest/api/3/issue/{issue}/comment"),
            Some(json!({"body": tandem::adf::from_text("Customer called back")})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    world.settle().await;
    let on_case = comments("salesforce", case.clone()).await;
    assert_eq!(on_case.len(), 1);
    assert_eq!(
        tandem::sync::comments::unsign(&on_case[0].body),
        (
            "Customer called back".to_string(),
            Some(("jira".to_string(), jira_comment.clone()))
        )
    );
    assert_eq!(comments("jira", issue.clone()).await.len(), 1);

    // A CaseComment becomes a Jira comment; nothing comes back.
    world
        .sims
        .sf
        .insert(
            "CaseComment",
            json!({"ParentId": case, "CommentBody": "Refund approved"}),
        )
        .unwrap();
    world.settle().await;
    let on_issue = comments("jira", issue.clone()).await;
    assert_eq!(on_issue.len(), 2, "{on_issue:?}");
    assert_eq!(
        tandem::sync::comments::unsign(&on_issue[1].body).0,
        "Refund approved"
    );
    assert_eq!(comments("salesforce", case.clone()).await.len(), 2);

    // Editing the Jira comment edits its copy.
    world
        .jira(
            reqwest::Method::PUT,
            &format!("/rest/api/3/issue/{issue}/comment/{jira_comment}"),
            Some(json!({"body": tandem::adf::from_text("Customer called back twice")})),
        )
        .await;
    world.settle().await;
    let on_case = comments("salesforce", case.clone()).await;
    assert_eq!(
        tandem::sync::comments::unsign(&on_case[0].body).0,
        "Customer called back twice"
    );
    assert_eq!(on_case.len(), 2);

    // Deleting it, under the default `unlink`: the copy stays, the comment pair is forgotten,
    // the record pair is not.
    world
        .jira_delete(&format!("/rest/api/3/issue/{issue}/comment/{jira_comment}"))
        .await;
    world.settle().await;
    assert_eq!(comments("salesforce", case.clone()).await.len(), 2);
    let comment_links = world.app.journal.links("support/comments").await.unwrap();
    assert_eq!(comment_links.len(), 1, "{comment_links:?}");
    assert!(comment_links.iter().all(|l| l.left_id != jira_comment));
    assert_eq!(world.app.journal.links("support").await.unwrap().len(), 1);
    world.stop().await;
}

#[tokio::test]
async fn a_429_from_the_target_holds_the_change_without_using_its_attempts() {
    let world = World::start("").await;
    // Jira answers every call with 429 and Retry-After: 1.
    faults(
        &world.sims.jira.base_url(),
        json!({"rate_limit_rate": 1.0, "retry_after_secs": 1}),
    )
    .await;
    let case = world
        .sims
        .sf
        .insert("Case", json!({"Subject": "while Jira is throttling"}))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, attempts): (String, i64) =
        sqlx::query_as("SELECT status, attempts FROM changes WHERE record_id = ?")
            .bind(&case)
            .fetch_one(world.app.journal.pool())
            .await
            .unwrap();
    // FLOW allows 3 attempts; waiting out a rate limit is not one.
    assert_ne!(status, "dead");
    assert!(attempts <= 1, "{attempts}");
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(world.app.journal.pool())
        .await
        .unwrap();
    assert_eq!(dead, 0);

    faults(&world.sims.jira.base_url(), json!({})).await;
    let issue = world.wait_counterpart(None, Some(&case)).await;
    world.settle().await;
    assert_eq!(
        world.issue(&issue).await["fields"]["summary"],
        "while Jira is throttling"
    );
    world.stop().await;
}
