//! `recovery`: SIGKILL under load, restart, and count what was lost or done twice.
//!
//! The daemon runs as a child process (this binary re-run) on a realtime flow, Jira issues →
//! Salesforce Cases. The bench plays Jira: it sends the `jira:issue_created` deliveries the
//! Jira emulator made for N new issues (captured with their signatures) with 16 concurrent
//! senders, and resends whatever was not answered 2xx, as Jira retries. While the daemon is
//! taking those webhooks and creating Cases, it is killed with SIGKILL (twice by default) and
//! started again on the same database and port.
//!
//! Afterwards: every acknowledged delivery's change must be in the journal exactly once, and
//! every issue must have exactly one Case carrying its marker (none missing, none twice), with
//! no issue created back in Jira. "Time to resume" is from the restart to `/readyz` answering
//! 200; "drained" from the last restart to every Case written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::sqlite::SqlitePoolOptions;

use crate::common::*;
use crate::realtime;

pub fn run(options: &Options) -> Value {
    let server = server_runtime();
    let client = client_runtime();
    let issues: usize = knob(
        "BENCH_RECOVERY_ISSUES",
        if options.quick { 1_000 } else { 3_000 },
    );
    let kills: usize = knob("BENCH_RECOVERY_KILLS", 2);
    let kill_after = Duration::from_millis(knob("BENCH_RECOVERY_KILL_AFTER_MS", 1_500));
    // Deliveries a second: slow enough that intake and the Case writes overlap each kill.
    let rate: f64 = knob("BENCH_RECOVERY_RATE", 400.0);
    let dir = scratch_dir();
    let sims = server.block_on(Sims::start());

    // Jira's deliveries for N new issues, as it signed them.
    let capture = server.block_on(capture());
    sims.jira.add_webhook(&capture.url, Some(JIRA_SECRET), None);
    server.block_on(async {
        create_issues(&sims.jira, issues, "recovery", "High").await;
        sims.settle().await;
    });
    sims.jira.store().webhooks.clear();
    let captured = capture.bodies.lock().unwrap().clone();
    let path: Arc<str> = Arc::from("/webhooks/jira");
    let mut shots = Vec::new();
    let mut keys = Vec::new();
    for (headers, body) in captured {
        let payload: Value = serde_json::from_slice(&body).unwrap();
        if payload["webhookEvent"] != "jira:issue_created" {
            continue;
        }
        let id = payload["issue"]["id"].as_str().unwrap().to_string();
        let updated = payload["issue"]["fields"]["updated"]
            .as_str()
            .and_then(epoch_ms)
            .unwrap();
        keys.push((
            id.clone(),
            tandem::connectors::state_key("jira", "issue", &id, updated),
        ));
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let mut sent = vec![("x-hub-signature", header("x-hub-signature").unwrap())];
        if let Some(delivery) = header("x-atlassian-webhook-identifier") {
            sent.push(("x-atlassian-webhook-identifier", delivery));
        }
        shots.push(Shot {
            path: path.clone(),
            headers: sent,
            body,
        });
    }
    assert_eq!(shots.len(), issues, "one issue_created delivery per issue");

    // A fixed port, so the Outbound Messages (the Cases' echoes) reach each incarnation.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let overlay = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n{}",
        sims.config(
            dir.path(),
            "requests_per_second = 1000\nmax_concurrency = 8\ntimeout = \"10s\"",
            realtime::FLOW,
        )
    );
    let settings = settings_in(dir.path(), &overlay);
    sims.sf
        .add_outbound_message(tandem::sim::salesforce::notify::OutboundMessage {
            url: format!("http://127.0.0.1:{port}/webhooks/salesforce/{SF_TOKEN}"),
            object: "Case".into(),
            fields: realtime::OM_FIELDS.iter().map(|f| f.to_string()).collect(),
        })
        .unwrap();

    let mut acked: HashSet<usize> = HashSet::new();
    let mut resume_ms = Vec::new();
    let mut acked_at_kill = Vec::new();
    let mut cases_at_kill = Vec::new();
    let mut held_at_kill: Vec<i64> = Vec::new();
    let mut last_start = Instant::now();
    let mut child = None;
    for incarnation in 0..=kills {
        let spawned = Instant::now();
        let daemon = ChildDaemon::spawn(dir.path());
        let ready = client.block_on(wait_until(
            Duration::from_secs(30),
            Duration::from_millis(2),
            || {
                let url = daemon.url("/readyz");
                async move {
                    reqwest::get(url)
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        ));
        assert!(ready, "the daemon did not become ready");
        let resumed = spawned.elapsed();
        if incarnation > 0 {
            resume_ms.push(resumed.as_secs_f64() * 1e3);
        }
        last_start = spawned;
        // What Jira still owes: every delivery not yet answered 2xx.
        let owed: Vec<usize> = (0..shots.len()).filter(|i| !acked.contains(i)).collect();
        let batch: Arc<Vec<Shot>> = Arc::new(owed.iter().map(|&i| shots[i].clone()).collect());
        let final_round = incarnation == kills;
        let result = client.block_on(async {
            let drive = drive_paced(daemon.addr, 16, batch, Duration::from_secs(120), Some(rate));
            if final_round {
                return drive.await;
            }
            // Kill while webhooks are coming in and Cases are being written.
            tokio::pin!(drive);
            tokio::select! {
                result = &mut drive => result,
                () = tokio::time::sleep(kill_after) => {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &daemon.pid()])
                        .status();
                    drive.await
                }
            }
        });
        acked.extend(result.acked.iter().map(|&k| owed[k]));
        if final_round {
            child = Some(daemon);
        } else {
            daemon.kill();
            acked_at_kill.push(acked.len());
            cases_at_kill.push(sims.sf.records("Case").len());
            // Changes the dead daemon held under a lease, taken back when the next one starts.
            let options_db = tandem::journal::connect_options(&settings.storage).unwrap();
            held_at_kill.push(client.block_on(async {
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options_db)
                    .await
                    .unwrap();
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM changes WHERE status = 'in_flight'")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                pool.close().await;
                n
            }));
        }
    }
    let child = child.unwrap();
    // Every delivery is acknowledged by now; wait until every change is settled and every
    // Case written.
    let pool = client
        .block_on(
            SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(tandem::journal::connect_options(&settings.storage).unwrap()),
        )
        .unwrap();
    let synced = client.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(400);
        loop {
            let cases = sims
                .sf
                .records("Case")
                .iter()
                .filter(|c| c["Jira_Key__c"].is_string())
                .count();
            let open = open_changes(&pool).await;
            if open == 0 && cases >= issues {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    client.block_on(pool.close());
    let drained = last_start.elapsed();
    client.block_on(async {
        sims.settle().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let options_db = tandem::journal::connect_options(&settings.storage).unwrap();
    let (stored, open): (HashMap<String, i64>, i64) = client.block_on(async {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options_db)
            .await
            .unwrap();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT dedupe_key, COUNT(*) FROM changes WHERE connector = 'jira' GROUP BY dedupe_key",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let open = open_changes(&pool).await;
        pool.close().await;
        (rows.into_iter().collect(), open)
    });
    child.kill();

    let lost_changes = acked
        .iter()
        .filter(|&&i| !stored.contains_key(&keys[i].1))
        .count();
    let duplicate_changes = stored.values().filter(|&&n| n > 1).count();
    let mut cases_by_marker: HashMap<String, usize> = HashMap::new();
    for case in sims.sf.records("Case") {
        if let Some(marker) = case["Jira_Key__c"].as_str() {
            *cases_by_marker.entry(marker.to_string()).or_default() += 1;
        }
    }
    let missing_cases = keys
        .iter()
        .filter(|(id, _)| !cases_by_marker.contains_key(id))
        .count();
    let duplicate_cases: usize = cases_by_marker.values().map(|n| n.saturating_sub(1)).sum();
    let (jira_calls, _) = sims.calls();
    let created_back = jira_calls
        .get("POST /rest/api/{v}/issue")
        .copied()
        .unwrap_or(0);
    let median_resume = {
        let mut r = resume_ms.clone();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied().unwrap_or(0.0)
    };
    print_table(
        &[
            "issues",
            "kills",
            "acked",
            "resume ms",
            "drained s",
            "lost",
            "dup changes",
            "missing cases",
            "dup cases",
            "created back",
        ],
        &[vec![
            issues.to_string(),
            kills.to_string(),
            acked.len().to_string(),
            format!("{median_resume:.0}"),
            format!("{:.1}", drained.as_secs_f64()),
            lost_changes.to_string(),
            duplicate_changes.to_string(),
            missing_cases.to_string(),
            duplicate_cases.to_string(),
            created_back.to_string(),
        ]],
    );
    println!(
        "  at each kill: {acked_at_kill:?} deliveries acknowledged, {cases_at_kill:?} Cases written, {held_at_kill:?} changes in flight (leased to the dead process)"
    );
    println!(
        "  after the last restart: every change settled and every Case written in {:.1}s; unsettled at the end: {open}",
        drained.as_secs_f64()
    );
    server.block_on(sims.stop());
    json!({
        "issues": issues,
        "kills": kills,
        "kill_after_ms": kill_after.as_millis() as u64,
        "acknowledged": acked.len(),
        "acknowledged_at_each_kill": acked_at_kill,
        "cases_at_each_kill": cases_at_kill,
        "resume_ms": resume_ms,
        "resume_ms_median": median_resume,
        "resume_measures": "restart (spawn) to /readyz 200",
        "drained_seconds_after_last_restart": drained.as_secs_f64(),
        "all_synced": synced,
        "in_flight_at_each_kill": held_at_kill,
        "rate_per_second": rate,
        "lost_acknowledged_changes": lost_changes,
        "duplicate_changes": duplicate_changes,
        "missing_cases": missing_cases,
        "duplicate_cases": duplicate_cases,
        "issues_created_back_in_jira": created_back,
        "unsettled_changes_at_end": open,
    })
}
