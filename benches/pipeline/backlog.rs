//! `backlog`: 100,000 pending changes against a target limited to R requests/s.
//!
//! The Jira emulator answers 429 above R calls per second to an endpoint (Jira's burst limit,
//! `burst_limit = R`: `RateLimit-Reason: jira-burst-based`, `Retry-After`), and the Jira
//! connector is configured as an operator would for such a vendor:
//! `limits.requests_per_second = R` (burst left at its default, R).
//! The journal is filled before the daemon starts with one pending Salesforce Case change
//! (`origin = poll`, a complete snapshot) for each of 100,000 linked pairs, so each needs
//! exactly one Jira update and no read. The daemon runs as a child process (this binary
//! re-run) so that its peak RSS (`VmHWM` from /proc) is its own.
//!
//! A first, smaller run with the target not limited measures Tandem's own drain rate (what it
//! could do for any R), so a limited run's figure can be told apart from the dispatcher's.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::sqlite::SqlitePoolOptions;
use tandem::journal::{ChangeOp, Journal, NewChange, Origin};

use crate::common::*;

const FLOW: &str = r#"
[flows.backlog]
left = { connector = "jira", object = "issue", filter = "project = SUP", marker = "customfield_10050" }
right = { connector = "salesforce", object = "Case", marker = "Jira_Key__c" }
[flows.backlog.defaults.left]
project = { key = "SUP" }
issuetype = { name = "Task" }
[[flows.backlog.fields]]
left = "summary"
right = "Subject"
"#;

fn case_id(n: usize) -> String {
    format!("500B0000{n:010}")
}

/// How the Jira connector's `limits` are set for a run.
struct Setting {
    label: &'static str,
    requests_per_second: f64,
    /// `None`: Tandem's default (the rate, rounded up).
    burst: Option<u64>,
}

/// Drain `changes` pending changes into Jira, limited by the emulator to `limit` calls per
/// second (Jira's burst limit), or not limited at all.
fn drain(limit: Option<u64>, setting: &Setting, changes: usize, cap: Duration) -> Value {
    let server = server_runtime();
    let client = client_runtime();
    let dir = scratch_dir();
    let sims = server.block_on(Sims::start_with(tandem::sim::jira::Options {
        burst_limit: limit.unwrap_or(0),
        ..Default::default()
    }));
    // Unlimited: a rate Tandem never reaches, and as many calls at once as the realtime flow
    // uses elsewhere.
    let rate = setting.requests_per_second;
    let burst = setting
        .burst
        .map(|b| format!("\nburst = {b}"))
        .unwrap_or_default();
    let overlay = sims.config(
        dir.path(),
        &format!("requests_per_second = {rate}{burst}\ntimeout = \"10s\""),
        FLOW,
    );
    let settings = settings_in(dir.path(), &overlay);

    // The backlog: issues in Jira, links, and one pending change per pair.
    let started = Instant::now();
    let issues = sims.seed_issues(changes, "backlog");
    {
        // Made an hour ago: the flow's first safety poll (from now less the overlap) does not
        // see them, so the only work is the backlog.
        let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
        let mut store = sims.jira.store();
        for issue in store.issues.values_mut() {
            issue.created = hour_ago;
            issue.updated = hour_ago;
        }
    }
    server.block_on(async {
        let journal = Journal::open(&settings.storage, &settings.journal)
            .await
            .unwrap();
        journal.migrate().await.unwrap();
        let now = tandem::journal::now_ms();
        let mut tx = journal.pool().begin().await.unwrap();
        for (n, issue) in issues.iter().enumerate() {
            let synced =
                json!({ "0": { "left": format!("backlog {n}"), "right": format!("backlog {n}") } });
            sqlx::query(
                "INSERT INTO links (flow, left_id, right_id, synced, left_modified_at,
                                    right_modified_at, created_at, updated_at)
                 VALUES ('backlog', ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(issue)
            .bind(case_id(n))
            .bind(synced.to_string())
            .bind(now - 60_000)
            .bind(now - 60_000)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        let all: Vec<NewChange> = (0..changes)
            .map(|n| {
                let id = case_id(n);
                NewChange {
                    connector: "salesforce".into(),
                    object: "Case".into(),
                    dedupe_key: tandem::connectors::state_key("salesforce", "Case", &id, now),
                    record_id: id,
                    op: ChangeOp::Upsert,
                    snapshot: json!({ "Subject": format!("drained {n}") }),
                    source_modified_at: Some(now),
                    origin: Origin::Poll,
                }
            })
            .collect();
        let mut iter = all.into_iter().peekable();
        while iter.peek().is_some() {
            let chunk: Vec<NewChange> = iter.by_ref().take(1_000).collect();
            journal.append_all(chunk, None).await.unwrap();
        }
        journal.close().await;
    });
    println!(
        "  {changes} pending changes, target {}; setup {:.1}s",
        limit.map_or("not limited".to_string(), |r| format!(
            "limited to {r} requests/s"
        )),
        started.elapsed().as_secs_f64()
    );

    let options_db = tandem::journal::connect_options(&settings.storage).unwrap();
    let child = ChildDaemon::spawn(dir.path());
    let started = Instant::now();
    let pid = child.pid();
    let base = child.url("");
    let (samples, drained_at, last_done, peak_rss) = client.block_on(async {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options_db)
            .await
            .unwrap();
        let deadline = started + cap;
        let mut samples: Vec<(f64, i64)> = Vec::new();
        let mut peak_rss = 0;
        let mut done = 0;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            done = sqlx::query_scalar(
                "SELECT COUNT(*) FROM changes
                  WHERE connector = 'salesforce' AND status IN ('done', 'dead')",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            samples.push((started.elapsed().as_secs_f64(), done));
            peak_rss = peak_rss.max(memory_kib(&pid).1);
            if done as usize >= changes {
                break;
            }
        }
        let at = started.elapsed();
        pool.close().await;
        (samples, at, done, peak_rss)
    });
    let metrics = client.block_on(scrape(&base));
    let (hwm, rss) = memory_kib(&pid);
    child.kill();
    let status = |s: &str| {
        metric(
            &metrics,
            "tandem_connector_calls_total",
            &["connector=\"jira\"", &format!("status=\"{s}\"")],
        )
    };
    let jira_calls = metric(
        &metrics,
        "tandem_connector_calls_total",
        &["connector=\"jira\""],
    );
    let throttled = status("429");
    let pauses = metric(
        &metrics,
        "tandem_connector_pauses_total",
        &["connector=\"jira\""],
    );
    let outcomes: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("tandem_sync_outcomes_total{"))
        .map(str::to_string)
        .collect();
    // Steady state: between 10 % and 90 % drained (start-up and the tail left out).
    let at = |share: f64| {
        samples
            .iter()
            .find(|(_, d)| *d as f64 >= share * changes as f64)
            .map(|(t, d)| (*t, *d))
    };
    let steady = match (at(0.1), at(0.9)) {
        (Some((t1, d1)), Some((t2, d2))) if t2 > t1 => (d2 - d1) as f64 / (t2 - t1),
        _ => 0.0,
    };
    let overall = last_done as f64 / drained_at.as_secs_f64();
    let row = vec![
        limit.map_or("none".to_string(), |r| r.to_string()),
        setting.label.to_string(),
        last_done.to_string(),
        format!("{:.1}", drained_at.as_secs_f64()),
        format!("{overall:.0}"),
        format!("{steady:.0}"),
        limit.map_or("-".to_string(), |r| format!("{:.3}", steady / r as f64)),
        format!("{jira_calls:.0}"),
        format!("{throttled:.0}"),
        format!("{:.1}", hwm as f64 / 1024.0),
    ];
    for line in &outcomes {
        println!("    {line}");
    }
    server.block_on(sims.stop());
    json!({
        "table_row": row,
        "rate_limit": limit,
        "tandem_requests_per_second": setting.requests_per_second,
        "tandem_burst": setting.burst,
        "changes": changes,
        "drained": last_done,
        "seconds": drained_at.as_secs_f64(),
        "overall_per_second": overall,
        "steady_per_second": steady,
        "steady_share_of_rate": limit.map(|r| steady / r as f64),
        "overall_share_of_rate": limit.map(|r| overall / r as f64),
        "jira_calls": jira_calls,
        "jira_429s": throttled,
        "jira_pauses": pauses,
        "peak_rss_kib_vmhwm": hwm,
        "rss_kib_at_end": rss,
        "rss_kib_max_sampled": peak_rss,
        "rss_source": "the daemon child process's /proc/PID/status VmHWM",
        "outcomes": outcomes,
        "progress": samples,
    })
}

pub fn run(options: &Options) -> Value {
    let rate: u64 = knob("BENCH_BACKLOG_RATE", 1_000);
    let changes: usize = knob(
        "BENCH_BACKLOG_CHANGES",
        if options.quick { 10_000 } else { 100_000 },
    );
    let capacity_changes: usize = knob(
        "BENCH_BACKLOG_CAPACITY_CHANGES",
        if options.quick { 5_000 } else { 20_000 },
    );
    println!("backlog: first Tandem's own drain rate with the target not limited, then the backlog against a target limited to R = {rate} requests/s");
    let unlimited = Setting {
        label: "unlimited",
        requests_per_second: 100_000.0,
        burst: None,
    };
    let capacity = drain(None, &unlimited, capacity_changes, Duration::from_secs(120));
    // Long enough for R to drain it twice over; a run still draining then is cut off.
    let cap = Duration::from_secs((changes as u64 / rate) * 3 / 2 + 30);
    // As an operator first would: the vendor's figure, the default burst (a second's worth).
    let naive = Setting {
        label: "rate R, default burst",
        requests_per_second: rate as f64,
        burst: None,
    };
    let limited_naive = drain(Some(rate), &naive, changes, cap);
    // As the README advises for a per-second vendor limit: 95 % of it, bursts of 5 %.
    let advised = Setting {
        label: "0.95 R, burst 0.05 R",
        requests_per_second: rate as f64 * 0.95,
        burst: Some((rate / 20).max(1)),
    };
    let limited = drain(Some(rate), &advised, changes, cap);
    let rows: Vec<Vec<String>> = [&capacity, &limited_naive, &limited]
        .iter()
        .map(|r| {
            r["table_row"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    print_table(
        &[
            "R/s",
            "tandem limits",
            "drained",
            "seconds",
            "overall/s",
            "steady/s",
            "steady/R",
            "jira calls",
            "429s",
            "peak RSS MiB",
        ],
        &rows,
    );
    json!({ "capacity": capacity, "limited_default_burst": limited_naive, "limited": limited })
}
