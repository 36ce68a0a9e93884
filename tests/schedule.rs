//! Scheduled flows end to end: runs started through the admin API poll the emulators, plan
//! through the engine and write with the vendors' bulk APIs; the figures come from the
//! emulators' own call counters and state.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sims::Sims;
use serde_json::{json, Value};
use tandem::journal::{Journal, Watermark};

const TOKEN: &str = "admin-secret";

/// A scheduled flow, Jira issues ↔ Salesforce Cases, with a schedule no test waits for: runs
/// are started through the API.
const FLOW: &str = r#"
[dispatch]
base_delay = "50ms"
max_delay = "200ms"
max_attempts = 3
lease = "2s"

[flows.nightly]
mode = { scheduled = { every = "1h" } }
left = { connector = "jira", object = "issue", filter = "project = SUP", marker = "customfield_10050" }
right = { connector = "salesforce", object = "Case", marker = "Jira_Key__c" }

[flows.nightly.defaults.left]
project = { key = "SUP" }
issuetype = { name = "Task" }

[[flows.nightly.fields]]
left = "summary"
right = "Subject"

[[flows.nightly.fields]]
left = "priority.name"
right = "Priority"
map = { Highest = "High", High = "High", Medium = "Medium", Low = "Low", Lowest = "Low" }
reverse_map = { High = "High", Medium = "Medium", Low = "Low" }
"#;

async fn calls(base: &str) -> Value {
    reqwest::get(format!("{base}/__sim/calls"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn reset_calls(base: &str) {
    reqwest::Client::new()
        .delete(format!("{base}/__sim/calls"))
        .send()
        .await
        .unwrap();
}

fn total(calls: &Value) -> u64 {
    calls["total"].as_u64().unwrap()
}

/// Create `n` Jira issues through the emulator's bulk create (50 a call); their ids (what the
/// cases' marker holds).
async fn create_issues(sims: &Sims, n: usize, prefix: &str) -> Vec<String> {
    let issues: Vec<(String, Option<String>)> =
        (0..n).map(|i| (format!("{prefix} {i}"), None)).collect();
    issues_with_keys(sims, &issues).await
}

async fn edit_issue(sims: &Sims, key: &str, summary: &str) {
    let response = reqwest::Client::new()
        .put(format!("{}/rest/api/3/issue/{key}", sims.jira.base_url()))
        .basic_auth("sim@example.com", Some("sim-token"))
        .json(&json!({"fields": {"summary": summary}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}

/// Run the `tandem` binary in a scratch directory; (code, stdout, stderr).
async fn cli(args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    common::tandem(dir.path(), args.iter().map(|a| a.to_string()).collect()).await
}

/// An issue as Jira answers it, or `None` once it is deleted.
async fn get_issue(sims: &Sims, id: &str) -> Option<Value> {
    let response = reqwest::Client::new()
        .get(format!("{}/rest/api/3/issue/{id}", sims.jira.base_url()))
        .basic_auth("sim@example.com", Some("sim-token"))
        .send()
        .await
        .unwrap();
    match response.status().as_u16() {
        404 => None,
        200 => Some(response.json().await.unwrap()),
        other => panic!("GET issue {id}: {other}"),
    }
}

async fn admin(app: &common::TestApp, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = app
        .client
        .request(method, app.url(&format!("/api/v1{path}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Start a run of `nightly` and wait for it to end; the run's row.
async fn run(app: &common::TestApp) -> Value {
    let (status, body) = admin(app, reqwest::Method::POST, "/flows/nightly/run").await;
    assert_eq!(status, 202, "{body}");
    let id = body["run"]["id"].as_i64().unwrap();
    assert_eq!(body["run"]["status"], "running");
    wait_for_run(app, id).await
}

async fn wait_for_run(app: &common::TestApp, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, flow) = admin(app, reqwest::Method::GET, "/flows/nightly").await;
        let run = flow["recent_runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap();
        if run["status"] != "running" {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cases by their Jira marker; panics on a duplicate.
fn cases_by_marker(sims: &Sims) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for case in sims.sf.records("Case") {
        if let Some(marker) = case["Jira_Key__c"].as_str() {
            let previous = out.insert(marker.to_string(), case.clone());
            assert!(previous.is_none(), "two cases carry the marker {marker}");
        }
    }
    out
}

/// The emulators' connectors, the flow, and the admin token (from a file, as secrets are).
fn config(sims: &Sims, dir: &tempfile::TempDir) -> String {
    config_with(sims, dir, FLOW)
}

fn config_with(sims: &Sims, dir: &tempfile::TempDir, flow: &str) -> String {
    let token = dir.path().join("admin-token");
    std::fs::write(&token, TOKEN).unwrap();
    let admin = format!("[admin]\ntoken = {{ file = \"{}\" }}\n", token.display());
    sims.config(dir, &format!("{admin}{flow}"))
}

async fn start(sims: &Sims) -> common::TestApp {
    start_with(sims, FLOW).await
}

async fn start_with(sims: &Sims, flow: &str) -> common::TestApp {
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings(&dir, &config_with(sims, &dir, flow));
    common::spawn_with(settings, dir).await
}

#[tokio::test]
async fn a_scheduled_run_writes_a_thousand_changes_in_a_handful_of_salesforce_calls() {
    let sims = Sims::start().await;
    let app = start(&sims).await;
    // The flow's watermark is set when the daemon starts: only later changes are the runs'.
    let keys = create_issues(&sims, 1000, "bulk").await;
    reset_calls(&sims.sf.base_url()).await;
    reset_calls(&sims.jira.base_url()).await;

    let first = run(&app).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["seen"], 1000, "{first}");
    assert_eq!(first["written"], 1000, "{first}");
    assert_eq!(first["failed"], 0);
    let sf_calls = calls(&sims.sf.base_url()).await;
    let jira_calls = calls(&sims.jira.base_url()).await;
    eprintln!(
        "first run (1000 creates): salesforce {} calls {}, jira {} calls",
        total(&sf_calls),
        sf_calls["by_endpoint"],
        total(&jira_calls)
    );
    assert!(total(&sf_calls) <= 10, "{sf_calls}");
    assert_eq!(
        first["api_calls"].as_u64().unwrap(),
        total(&sf_calls) + total(&jira_calls),
        "the run counts every call it makes"
    );
    let cases = cases_by_marker(&sims);
    assert_eq!(cases.len(), 1000);
    for key in &keys {
        assert!(cases[key]["Subject"].as_str().unwrap().starts_with("bulk "));
        assert_eq!(cases[key]["Priority"], "High");
    }

    // 1,000 edits to the same records: updates, 200 per sObject Collections call.
    for (i, key) in keys.iter().enumerate() {
        edit_issue(&sims, key, &format!("edited {i}")).await;
    }
    reset_calls(&sims.sf.base_url()).await;
    let second = run(&app).await;
    let sf_calls = calls(&sims.sf.base_url()).await;
    eprintln!(
        "second run (1000 updates, 1000 echoes of the creates): {second}; salesforce calls {}",
        sf_calls["by_endpoint"]
    );
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(second["written"], 1000, "{second}");
    // The cases the first run created come back from the Salesforce poll: older than the
    // edits just written, so they are checked with fresh reads (in bulk) and found stale.
    assert_eq!(second["skipped"], 1000, "{second}");
    assert!(total(&sf_calls) <= 10, "{sf_calls}");
    let cases = cases_by_marker(&sims);
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cases[key]["Subject"], format!("edited {i}"));
    }

    // Nothing new from Jira: the next run only sees the echoes of those updates.
    let third = run(&app).await;
    assert_eq!(third["written"], 0, "{third}");
    assert_eq!(third["skipped"], third["seen"], "{third}");
    app.stop().await;
    sims.stop().await;
}

#[tokio::test]
async fn records_that_fail_in_a_bulk_call_fail_alone() {
    let sims = Sims::start().await;
    let app = start(&sims).await;
    let keys = create_issues(&sims, 30, "partial").await;
    let first = run(&app).await;
    assert_eq!(first["written"], 30, "{first}");
    let cases = cases_by_marker(&sims);
    // Three of the cases are locked by someone else: their updates fail with
    // UNABLE_TO_LOCK_ROW every time, the others land in the same collection calls.
    let locked: Vec<&String> = keys.iter().take(3).collect();
    for key in &locked {
        sims.sf
            .lock_record(cases[*key]["Id"].as_str().unwrap(), None);
    }
    for key in &keys {
        edit_issue(&sims, key, &format!("{key} again")).await;
    }
    let second = run(&app).await;
    assert_eq!(second["written"], 27, "{second}");
    assert_eq!(
        second["failed"],
        3 * 3,
        "three records, three attempts each: {second}"
    );
    let cases = cases_by_marker(&sims);
    for key in &keys {
        let expected = if locked.contains(&key) {
            format!("partial {}", keys.iter().position(|k| k == key).unwrap())
        } else {
            format!("{key} again")
        };
        assert_eq!(cases[key]["Subject"], expected);
    }
    let (_, letters) = admin(
        &app,
        reqwest::Method::GET,
        "/dead-letters?flow=nightly&status=open",
    )
    .await;
    let letters = letters["items"].as_array().unwrap();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(letters
        .iter()
        .all(|l| l["vendor_code"] == "UNABLE_TO_LOCK_ROW"));
    app.stop().await;
    sims.stop().await;
}

#[tokio::test]
async fn two_runs_of_a_flow_never_overlap() {
    let sims = Sims::start().await;
    let app = start(&sims).await;
    create_issues(&sims, 50, "overlap").await;
    // Slow vendors keep the first run going while the second is asked for.
    reqwest::Client::new()
        .put(format!("{}/__sim/faults", sims.sf.base_url()))
        .json(&json!({ "latency_ms": 300 }))
        .send()
        .await
        .unwrap();
    let (status, body) = admin(&app, reqwest::Method::POST, "/flows/nightly/run").await;
    assert_eq!(status, 202, "{body}");
    let id = body["run"]["id"].as_i64().unwrap();
    let (status, body) = admin(&app, reqwest::Method::POST, "/flows/nightly/run").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "run_in_progress");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&id.to_string()));
    // At the journal itself: many starts at once, one winner.
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..10 {
        let journal = app.journal.clone();
        starts.spawn(async move {
            journal
                .start_run("other", &format!("owner-{i}"), "test")
                .await
        });
    }
    let mut won = 0;
    while let Some(result) = starts.join_next().await {
        match result.unwrap() {
            Ok(_) => won += 1,
            Err(tandem::journal::StartRunError::Running(_)) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(won, 1);
    let finished = wait_for_run(&app, id).await;
    assert_eq!(finished["status"], "succeeded");
    assert_eq!(finished["written"], 50);

    // A realtime flow has no runs; an unknown flow is 404.
    let (status, body) = admin(&app, reqwest::Method::POST, "/flows/nope/run").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_flow");
    app.stop().await;
    sims.stop().await;
}

#[tokio::test]
async fn run_routes_refuse_a_realtime_flow_and_never_show_another_flows_run() {
    let sims = Sims::start().await;
    // Beside `nightly`, a realtime flow that no test record feeds: Salesforce Contacts → Jira.
    let realtime = "\n[flows.live]\nleft = { connector = \"jira\", object = \"issue\", filter = \"project = OPS\", marker = \"customfield_10051\" }\n\
                    right = { connector = \"salesforce\", object = \"Contact\" }\ndirection = \"right_to_left\"\n\
                    [[flows.live.fields]]\nleft = \"summary\"\nright = \"LastName\"\n";
    let app = start_with(&sims, &format!("{FLOW}{realtime}")).await;
    let (status, body) = admin(&app, reqwest::Method::POST, "/flows/live/run").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_scheduled");

    // A run of another flow is not one of nightly's; nor is an id that names no run.
    let other = app
        .journal
        .start_run("live", "owner", "test")
        .await
        .unwrap();
    for id in [other.to_string(), "999999".to_string(), "abc".to_string()] {
        let (status, body) = admin(
            &app,
            reqwest::Method::GET,
            &format!("/flows/nightly/runs/{id}"),
        )
        .await;
        assert_eq!(status, 404, "{id}: {body}");
        assert_eq!(body["error"]["code"], "unknown_run", "{id}");
    }
    app.stop().await;
    sims.stop().await;
}

const CHILD_ENV: &str = "SCHEDULE_CHILD_DIR";
const CHILD_TEST: &str = "a_run_killed_half_way_is_resumed_by_the_next_without_duplicates";

/// The killed daemon: this test binary re-run as a child, pointed at the parent's emulators
/// and database. It starts a run and waits to be killed.
async fn run_child(dir: &str) {
    let dir = std::path::Path::new(dir);
    let config = std::fs::read_to_string(dir.join("overlay.toml")).unwrap();
    let settings = common::settings_in(dir, &config);
    let app = tandem::app::Application::build(settings).await.unwrap();
    let url = format!("http://{}", app.local_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let _server = tokio::spawn(app.run_until_stopped(stop.clone()));
    let response = reqwest::Client::new()
        .post(format!("{url}/api/v1/flows/nightly/run"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    println!("run started");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

// Two workers: the child settles changes while its next bulk call is on the wire, as the daemon
// does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_half_way_is_resumed_by_the_next_without_duplicates() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        run_child(&dir).await;
        return;
    }
    let sims = Sims::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&sims, &dir);
    std::fs::write(dir.path().join("overlay.toml"), &config).unwrap();
    // The flow's watermark predates the issues, so the child's run reads them all.
    {
        let journal: Journal = common::open_journal(&dir, &config).await;
        let mark = Watermark {
            connector: "jira".into(),
            object: "issue".into(),
            scope: "nightly".into(),
            position: tandem::journal::now_ms() - 60_000,
            last_record_id: String::new(),
        };
        journal.append_all(Vec::new(), Some(mark)).await.unwrap();
        journal.close().await;
    }
    let keys = create_issues(&sims, 1000, "resume").await;
    // Each collection call takes 400 ms: the kill lands between calls.
    reqwest::Client::new()
        .put(format!("{}/__sim/faults", sims.sf.base_url()))
        .json(&json!({ "latency_ms": 400 }))
        .send()
        .await
        .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let started = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // libtest prints the test's name without a newline before the test's own output.
            .any(|line| line.ends_with("run started"))
    });
    // Kill once some cases exist but not all.
    let deadline = Instant::now() + Duration::from_secs(60);
    let db = sqlx::SqlitePool::connect_with(
        tandem::journal::connect_options(&common::settings_in(dir.path(), &config).storage)
            .unwrap(),
    )
    .await
    .unwrap();
    loop {
        let made = sims.sf.records("Case").len();
        // Past the first collection call, and some of its changes settled (the collection
        // calls of a run overlap, so a case count alone does not say that).
        let settled: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM changes WHERE connector = 'jira' AND status = 'done'",
        )
        .fetch_one(&db)
        .await
        .unwrap_or(0);
        if (400..1000).contains(&made) && settled > 0 {
            break;
        }
        assert!(
            made < 1000,
            "the run finished before the kill; slow it down"
        );
        assert!(Instant::now() < deadline, "the child's run wrote nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL: no shutdown, no release of anything.
    child.wait().unwrap();
    db.close().await;
    assert!(started.join().unwrap());
    let before_resume = sims.sf.records("Case").len();
    assert!(before_resume < 1000);
    let settled_at_kill: i64 = {
        let journal = common::open_journal(&dir, &config).await;
        let n = sqlx::query_scalar(
            "SELECT COUNT(*) FROM changes WHERE connector = 'jira' AND status = 'done'",
        )
        .fetch_one(journal.pool())
        .await
        .unwrap();
        journal.close().await;
        n
    };
    reqwest::Client::new()
        .put(format!("{}/__sim/faults", sims.sf.base_url()))
        .json(&json!({ "latency_ms": 0 }))
        .send()
        .await
        .unwrap();

    // The next daemon on the same database owns it (its lock), so it takes over at once: the
    // dead run is marked interrupted and its leases released at start, without waiting for its
    // heartbeat to age, and the run is caught up straight away.
    let settings = common::settings_in(dir.path(), &config);
    let app = common::spawn_with(settings, dir).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let catch_up = loop {
        let (_, flow) = admin(&app, reqwest::Method::GET, "/flows/nightly").await;
        let runs = flow["recent_runs"].as_array().unwrap().clone();
        if runs.len() == 2 {
            assert_eq!(runs[1]["status"], "interrupted", "{}", runs[1]);
            assert_eq!(runs[0]["trigger"], "start", "{}", runs[0]);
            break runs[0]["id"].as_i64().unwrap();
        }
        assert!(Instant::now() < deadline, "no catch-up run: {runs:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let resumed = wait_for_run(&app, catch_up).await;
    assert_eq!(resumed["status"], "succeeded", "{resumed}");

    // Every issue has exactly one case (cases_by_marker panics on a duplicate) …
    let cases = cases_by_marker(&sims);
    assert_eq!(cases.len(), 1000);
    for key in &keys {
        assert!(cases.contains_key(key));
    }
    // … every change settled once, and what the killed run settled was not done again.
    let settled: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, COUNT(*) FROM changes WHERE connector = 'jira' GROUP BY status",
    )
    .fetch_all(app.journal.pool())
    .await
    .unwrap();
    assert_eq!(settled, vec![("done".to_string(), 1000)]);
    assert!(
        settled_at_kill > 0,
        "the kill came before anything was settled"
    );
    // The resumed run writes exactly what the killed one had not settled (the cases the
    // killed run made come back from the Salesforce poll as skipped echoes).
    let resumed_written = resumed["written"].as_i64().unwrap();
    assert_eq!(resumed_written, 1000 - settled_at_kill, "{resumed}");
    let links: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM links WHERE flow = 'nightly'")
        .fetch_one(app.journal.pool())
        .await
        .unwrap();
    assert_eq!(links, 1000);
    eprintln!(
        "killed after {before_resume} cases existed and {settled_at_kill} changes were settled; \
         the next run wrote {resumed_written}, {} of them again (upserted on their marker)",
        before_resume as i64 - settled_at_kill
    );
    app.stop().await;
    sims.stop().await;
}

async fn reconcile(app: &common::TestApp, query: &str) -> Value {
    let (status, report) = admin(
        app,
        reqwest::Method::POST,
        &format!("/flows/nightly/reconcile?{query}"),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    report
}

#[tokio::test]
async fn reconcile_finds_each_kind_of_drift_and_repair_fixes_it_through_the_flow() {
    let sims = Sims::start().await;
    // Deletes propagate, so repairing an orphaned link removes the record left behind.
    let flow = FLOW.replace(
        "mode = { scheduled = { every = \"1h\" } }",
        "mode = { scheduled = { every = \"1h\" } }\ndeletes = \"propagate\"",
    );
    let app = start_with(&sims, &flow).await;
    let (_, none) = admin(&app, reqwest::Method::GET, "/flows/nightly/reconcile").await;
    assert_eq!(none["error"]["code"], "no_report");
    let ids = create_issues(&sims, 4, "pair").await;
    assert_eq!(run(&app).await["written"], 4);
    let clean = reconcile(&app, "").await;
    assert_eq!(clean["links"], 4, "{clean}");
    assert!(clean["missing"].as_array().unwrap().is_empty(), "{clean}");
    assert!(clean["drifted"].as_array().unwrap().is_empty(), "{clean}");
    assert!(clean["orphaned"].as_array().unwrap().is_empty(), "{clean}");

    // Plant one of each, behind Tandem's back (no webhooks, no run).
    let cases = cases_by_marker(&sims);
    let case = |i: usize| cases[&ids[i]]["Id"].as_str().unwrap().to_string();
    // Drift on the right: a case edited where no notification reached Tandem.
    sims.sf
        .update("Case", &case(0), json!({"Subject": "edited in Salesforce"}))
        .unwrap();
    // Drift on the left.
    edit_issue(&sims, &ids[1], "edited in Jira").await;
    // An orphaned link: the case is gone.
    sims.sf.delete(&case(2)).unwrap();
    // A missing counterpart: an issue no run has seen yet.
    let new = create_issues(&sims, 1, "unseen").await.remove(0);

    // As an operator sees it in the terminal …
    let (code, table, stderr) = cli(&[
        "reconcile",
        "--flow",
        "nightly",
        "--url",
        &app.url(""),
        "--token",
        TOKEN,
    ])
    .await;
    eprintln!("{table}");
    assert_eq!(code, 0, "{stderr}");
    for heading in ["MISSING COUNTERPARTS", "DRIFTED FIELDS", "ORPHANED LINKS"] {
        assert!(table.contains(heading), "{table}");
    }
    assert!(table.contains("edited in Salesforce"), "{table}");
    let (code, _, stderr) = cli(&[
        "reconcile",
        "--flow",
        "nope",
        "--url",
        &app.url(""),
        "--token",
        TOKEN,
    ])
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("no flow named `nope`"), "{stderr}");
    // … and as JSON.
    let report = reconcile(&app, "").await;
    let missing = report["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 1, "{report}");
    assert_eq!(missing[0]["side"], "left");
    assert_eq!(missing[0]["id"], new.as_str());
    let drifted = report["drifted"].as_array().unwrap();
    assert_eq!(drifted.len(), 2, "{report}");
    let by_left = |id: &str| {
        drifted
            .iter()
            .find(|d| d["left_id"] == id)
            .unwrap_or_else(|| panic!("no drift for {id}: {report}"))
    };
    let right_edit = &by_left(&ids[0])["fields"][0];
    assert_eq!(right_edit["left_field"], "summary");
    assert_eq!(right_edit["left"], "pair 0");
    assert_eq!(right_edit["right"], "edited in Salesforce");
    assert_eq!(right_edit["changed_since_sync"], "right");
    let left_edit = &by_left(&ids[1])["fields"][0];
    assert_eq!(left_edit["left"], "edited in Jira");
    assert_eq!(left_edit["right"], "pair 1");
    assert_eq!(left_edit["changed_since_sync"], "left");
    let orphaned = report["orphaned"].as_array().unwrap();
    assert_eq!(orphaned.len(), 1, "{report}");
    assert_eq!(orphaned[0]["left_id"], ids[2].as_str());
    assert_eq!(orphaned[0]["missing"], "right");
    assert_eq!(report["enqueued"], 0, "a report alone changes nothing");
    // The last report is kept.
    let (status, last) = admin(&app, reqwest::Method::GET, "/flows/nightly/reconcile").await;
    assert_eq!(status, 200);
    assert_eq!(last, report);

    // Repair: changes through the normal planner, carried out by the flow's next run.
    let repaired = reconcile(&app, "repair=true").await;
    assert_eq!(repaired["enqueued"], 4, "{repaired}");
    let after = run(&app).await;
    assert_eq!(after["status"], "succeeded", "{after}");
    let cases = cases_by_marker(&sims);
    assert!(
        cases.contains_key(&new),
        "the missing counterpart was created"
    );
    assert_eq!(
        get_issue(&sims, &ids[0]).await.unwrap()["fields"]["summary"],
        "edited in Salesforce",
        "the right side's edit went left"
    );
    assert_eq!(cases[&ids[1]]["Subject"], "edited in Jira");
    assert!(
        get_issue(&sims, &ids[2]).await.is_none(),
        "the orphan's issue was deleted, as the flow's delete policy says"
    );
    let clean = reconcile(&app, "").await;
    assert!(clean["missing"].as_array().unwrap().is_empty(), "{clean}");
    assert!(clean["drifted"].as_array().unwrap().is_empty(), "{clean}");
    assert!(clean["orphaned"].as_array().unwrap().is_empty(), "{clean}");
    assert_eq!(clean["links"], 4, "{clean}");

    // Bad input is refused before anything is listed.
    let (status, body) = admin(
        &app,
        reqwest::Method::POST,
        "/flows/nightly/reconcile?since=yesterday",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    app.stop().await;
    sims.stop().await;
}

#[tokio::test]
async fn a_flow_reconciles_itself_on_its_schedule() {
    let sims = Sims::start().await;
    let flow = FLOW.replace(
        "mode = { scheduled = { every = \"1h\" } }",
        "mode = { scheduled = { every = \"1h\" } }\nreconcile = { every = \"300ms\", since = \"1h\" }",
    );
    let app = start_with(&sims, &flow).await;
    create_issues(&sims, 2, "scheduled reconcile").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, report) = admin(&app, reqwest::Method::GET, "/flows/nightly/reconcile").await;
        if status == 200 && report["missing"].as_array().unwrap().len() == 2 {
            assert_eq!(report["repair"], false);
            assert!(report["since"].as_i64().is_some());
            break;
        }
        assert!(Instant::now() < deadline, "no scheduled report: {report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
    sims.stop().await;
}

/// Jira issues made directly in the emulator (before Tandem), each with its summary and the
/// case number it may hold; their ids.
async fn issues_with_keys(sims: &Sims, issues: &[(String, Option<String>)]) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for chunk in issues.chunks(50) {
        let updates: Vec<Value> = chunk
            .iter()
            .map(|(summary, key)| {
                let mut fields = json!({
                    "project": {"key": "SUP"},
                    "issuetype": {"name": "Task"},
                    "summary": summary,
                    "priority": {"name": "High"},
                });
                if let Some(key) = key {
                    fields["customfield_10051"] = json!(key);
                }
                json!({ "fields": fields })
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
            ids.push(issue["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids.len(), issues.len());
    ids
}

/// A case made directly in the emulator; (id, case number).
fn case(sims: &Sims, subject: &str) -> (String, String) {
    let id = sims
        .sf
        .insert(
            "Case",
            json!({"Subject": subject, "Priority": "High", "Origin": "Web"}),
        )
        .unwrap();
    let number = sims.sf.record(&id).unwrap()["CaseNumber"]
        .as_str()
        .unwrap()
        .to_string();
    (id, number)
}

const MATCHED: &str = r#"left = { connector = "jira", object = "issue", filter = "project = SUP", marker = "customfield_10050", match_key = "customfield_10051" }
right = { connector = "salesforce", object = "Case", marker = "Jira_Key__c", match_key = "CaseNumber" }"#;

fn matched_flow() -> String {
    FLOW.replace(
        r#"left = { connector = "jira", object = "issue", filter = "project = SUP", marker = "customfield_10050" }
right = { connector = "salesforce", object = "Case", marker = "Jira_Key__c" }"#,
        MATCHED,
    )
    .replace(
        "[flows.nightly.defaults.left]",
        "[flows.nightly.defaults.right]\nOrigin = \"Web\"\n\n[flows.nightly.defaults.left]",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_links_existing_pairs_by_match_key_and_creates_only_the_rest() {
    let sims = Sims::start().await;
    // Before Tandem: six cases, and issues of which four name a case's number, two name the
    // same one, and two name none.
    let cases: Vec<(String, String)> = (0..6).map(|i| case(&sims, &format!("case {i}"))).collect();
    let mut issues: Vec<(String, Option<String>)> = (0..4)
        .map(|i| (format!("case {i}"), Some(cases[i].1.clone())))
        .collect();
    issues[3].0 = "a different summary".into();
    issues.push(("twin a".into(), Some(cases[4].1.clone())));
    issues.push(("twin b".into(), Some(cases[4].1.clone())));
    issues.push(("lonely 1".into(), None));
    issues.push(("lonely 2".into(), None));
    let ids = issues_with_keys(&sims, &issues).await;
    let app = start_with(&sims, &matched_flow()).await;
    let remote = [
        "--url".to_string(),
        app.url(""),
        "--token".into(),
        TOKEN.into(),
    ];
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["backfill", "--flow", "nightly"]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect();
        args.extend(remote.iter().cloned());
        args
    };
    let scratch = tempfile::tempdir().unwrap();

    // A dry run says what it would do and does nothing.
    let (code, out, err) = common::tandem(scratch.path(), args(&["--dry-run"])).await;
    eprintln!("{out}");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("would link 4 pairs, create 3 records, leave 3 ambiguous"),
        "{out}"
    );
    assert!(
        out.contains("summary"),
        "the differing field is named: {out}"
    );
    let links = |app: &common::TestApp| {
        let pool = app.journal.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM links WHERE flow = 'nightly'")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(links(&app).await, 0);
    assert_eq!(sims.sf.records("Case").len(), 6);

    let (code, out, err) = common::tandem(scratch.path(), args(&[])).await;
    eprintln!("{out}");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("succeeded"), "{out}");
    // Four pairs linked, not copied; two lonely issues and one lonely case created across.
    assert_eq!(links(&app).await, 4 + 3);
    let by_marker = cases_by_marker(&sims);
    assert_eq!(sims.sf.records("Case").len(), 6 + 2);
    assert!(by_marker.contains_key(&ids[6]) && by_marker.contains_key(&ids[7]));
    for paired in &ids[..4] {
        assert!(
            !by_marker.contains_key(paired),
            "a paired issue got a copy instead of its case"
        );
    }
    let made_in_jira: Vec<Value> = sims
        .sf
        .records("Case")
        .into_iter()
        .filter(|c| c["Subject"] == "case 5")
        .collect();
    assert_eq!(made_in_jira.len(), 1);
    let link: (String,) = sqlx::query_as("SELECT left_id FROM links WHERE right_id = ?")
        .bind(made_in_jira[0]["Id"].as_str().unwrap())
        .fetch_one(app.journal.pool())
        .await
        .unwrap();
    let copy = get_issue(&sims, &link.0).await.unwrap();
    assert_eq!(
        copy["fields"]["summary"], "case 5",
        "the lonely case got its issue"
    );
    let (_, flow) = admin(&app, reqwest::Method::GET, "/flows/nightly").await;
    let last = &flow["last_run"];
    assert_eq!(last["trigger"], "backfill");
    assert_eq!(last["checkpoint"]["linked"], 4);
    assert_eq!(last["checkpoint"]["ambiguous"], 3);

    // Again: everything is linked or ambiguous; nothing more is created.
    let (code, out, _) = common::tandem(scratch.path(), args(&["--dry-run"])).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("would link 0 pairs, create 0 records"),
        "{out}"
    );
    app.stop().await;
    sims.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backfill_resumes_without_duplicates() {
    let sims = Sims::start().await;
    let lonely: Vec<(String, Option<String>)> =
        (0..500).map(|i| (format!("old issue {i}"), None)).collect();
    let ids = issues_with_keys(&sims, &lonely).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(&sims, &dir, &matched_flow());
    let settings = common::settings(&dir, &config);
    let app = common::spawn_with(settings.clone(), dir).await;
    // Slow collection calls: the daemon is stopped while the backfill writes.
    reqwest::Client::new()
        .put(format!("{}/__sim/faults", sims.sf.base_url()))
        .json(&json!({ "latency_ms": 300 }))
        .send()
        .await
        .unwrap();
    let (status, started) = admin(&app, reqwest::Method::POST, "/flows/nightly/backfill").await;
    assert_eq!(status, 202, "{started}");
    let (status, body) = admin(&app, reqwest::Method::POST, "/flows/nightly/run").await;
    assert_eq!(status, 409, "a backfill holds the flow's run lock: {body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while sims.sf.records("Case").len() < 200 {
        assert!(Instant::now() < deadline, "the backfill wrote nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let common::TestApp {
        shutdown,
        server,
        dir,
        ..
    } = app;
    shutdown.cancel();
    server.await.unwrap().unwrap();
    let at_stop = sims.sf.records("Case").len();
    assert!(at_stop < 500, "stopped too late to interrupt anything");
    reqwest::Client::new()
        .put(format!("{}/__sim/faults", sims.sf.base_url()))
        .json(&json!({ "latency_ms": 0 }))
        .send()
        .await
        .unwrap();

    let app = common::spawn_with(settings, dir).await;
    let (_, flow) = admin(&app, reqwest::Method::GET, "/flows/nightly").await;
    assert_eq!(flow["last_run"]["status"], "interrupted", "{flow}");
    let (status, body) = admin(&app, reqwest::Method::POST, "/flows/nightly/backfill").await;
    assert_eq!(status, 202, "{body}");
    let id = body["run"]["id"].as_i64().unwrap();
    let resumed = wait_for_run(&app, id).await;
    assert_eq!(resumed["status"], "succeeded", "{resumed}");
    let by_marker = cases_by_marker(&sims); // panics on a duplicate
    assert_eq!(by_marker.len(), 500);
    for id in &ids {
        assert!(by_marker.contains_key(id));
    }
    let links: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM links WHERE flow = 'nightly'")
        .fetch_one(app.journal.pool())
        .await
        .unwrap();
    assert_eq!(links, 500);
    eprintln!(
        "stopped with {at_stop} cases made; the resumed backfill: {}",
        resumed["checkpoint"]
    );
    // Every case the interrupted backfill made was kept: linked then, or paired by its
    // marker now; only the rest was created.
    let checkpoint = &resumed["checkpoint"];
    let made_before = checkpoint["listed"]["right"].as_u64().unwrap();
    assert_eq!(
        checkpoint["already_linked"].as_u64().unwrap() + checkpoint["linked"].as_u64().unwrap(),
        made_before,
        "{resumed}"
    );
    assert_eq!(checkpoint["total"].as_u64().unwrap(), 500 - made_before);
    app.stop().await;
    sims.stop().await;
}

#[tokio::test]
async fn a_scheduled_run_creates_jira_issues_fifty_to_a_call() {
    let sims = Sims::start().await;
    let app = start(&sims).await;
    let cases: Vec<String> = (0..120)
        .map(|i| {
            sims.sf
                .insert(
                    "Case",
                    json!({"Subject": format!("from salesforce {i}"), "Priority": "Low", "Origin": "Web"}),
                )
                .unwrap()
        })
        .collect();
    reset_calls(&sims.jira.base_url()).await;
    let run = run(&app).await;
    assert_eq!(run["written"], 120, "{run}");
    let jira = calls(&sims.jira.base_url()).await;
    eprintln!("120 cases → issues: jira calls {}", jira["by_endpoint"]);
    let bulk = jira["by_endpoint"]["POST /rest/api/{v}/issue/bulk"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(bulk, 3, "50 + 50 + 20: {jira}");
    assert!(
        jira["by_endpoint"]
            .get("POST /rest/api/{v}/issue")
            .is_none(),
        "no issue was created alone: {jira}"
    );
    // Each issue carries its case's id in the marker, and the priority mapped back.
    for case in &cases {
        let link: (String,) = sqlx::query_as("SELECT left_id FROM links WHERE right_id = ?")
            .bind(case)
            .fetch_one(app.journal.pool())
            .await
            .unwrap();
        let issue = get_issue(&sims, &link.0).await.unwrap();
        assert_eq!(issue["fields"]["customfield_10050"], case.as_str());
        assert_eq!(issue["fields"]["priority"]["name"], "Low");
    }
    app.stop().await;
    sims.stop().await;
}
