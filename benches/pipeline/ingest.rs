//! `ingest`: signed Jira webhooks accepted durably, per second, at 1/16/64/256 concurrent
//! senders; the same load against a bare axum handler on the same box as the ceiling.
//!
//! The daemon runs in this process on its own multi-threaded runtime (as `tandem serve` does);
//! the load generator is a single-threaded tokio runtime on the main thread (hyper's bare
//! client connection, one keep-alive connection per sender). The webhook body is a real
//! `jira:issue_updated` delivery captured from the Jira emulator, re-stamped with a fresh issue
//! id and `updated` time per request (so every request is a new journal row, not a duplicate)
//! and signed with HMAC-SHA256 before the clock starts.
//!
//! The Jira issues feed a scheduled flow that is never run here, so the dispatcher leaves the
//! changes in the journal: what is measured is intake (authenticate, parse, commit, answer).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{json, Value};

use crate::common::*;

const FLOW: &str = r#"
[flows.nightly]
mode = { scheduled = { every = "24h" } }
left = { connector = "jira", object = "issue", filter = "project = SUP", marker = "customfield_10050" }
right = { connector = "salesforce", object = "Case", marker = "Jira_Key__c" }
[flows.nightly.defaults.left]
project = { key = "SUP" }
issuetype = { name = "Task" }
[[flows.nightly.fields]]
left = "summary"
right = "Subject"
"#;

/// A captured webhook body cut around the issue id and its `updated` time.
struct Template {
    parts: Vec<String>,
    /// Between parts i and i+1: the id (true) or the updated time (false).
    holes: Vec<bool>,
}

impl Template {
    fn cut(text: &str) -> Template {
        let (mut parts, mut holes) = (Vec::new(), Vec::new());
        let mut rest = text;
        loop {
            let id = rest.find("@@ID@@").map(|at| (at, true, 6));
            let up = rest.find("@@UPDATED@@").map(|at| (at, false, 11));
            let next = match (id, up) {
                (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
                (a, b) => a.or(b),
            };
            let Some((at, is_id, len)) = next else { break };
            parts.push(rest[..at].to_string());
            holes.push(is_id);
            rest = &rest[at + len..];
        }
        parts.push(rest.to_string());
        assert_eq!(
            holes.len(),
            2,
            "the template has one id and one updated time"
        );
        Template { parts, holes }
    }

    fn body(&self, id: u64, updated: &str) -> String {
        let id = id.to_string();
        let mut out = String::with_capacity(self.parts.iter().map(String::len).sum::<usize>() + 64);
        for (i, part) in self.parts.iter().enumerate() {
            out.push_str(part);
            if let Some(&is_id) = self.holes.get(i) {
                out.push_str(if is_id { &id } else { updated });
            }
        }
        out
    }
}

/// A real `jira:issue_updated` delivery from the emulator, as the template.
async fn template(sims: &Sims) -> (Template, usize) {
    let capture = capture().await;
    sims.jira.add_webhook(&capture.url, Some(JIRA_SECRET), None);
    let http = reqwest::Client::new();
    let base = sims.jira.base_url();
    let created: Value = http
        .post(format!("{base}/rest/api/3/issue"))
        .basic_auth("sim@example.com", Some("sim-token"))
        .json(&json!({"fields": {
            "project": {"key": "SUP"},
            "issuetype": {"name": "Task"},
            "summary": "Printer on floor 3 is on fire",
            "priority": {"name": "High"},
            "description": tandem::adf::from_text("Smoke coming out of the paper tray since 9am."),
            "labels": ["hardware", "floor-3"],
        }}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    http.put(format!("{base}/rest/api/3/issue/{id}"))
        .basic_auth("sim@example.com", Some("sim-token"))
        .json(&json!({"fields": {"summary": "Printer on floor 3 is still on fire"}}))
        .send()
        .await
        .unwrap();
    sims.settle().await;
    sims.jira.store().webhooks.clear();
    let bodies = capture.bodies.lock().unwrap().clone();
    let (_, body) = bodies
        .iter()
        .find(|(_, b)| {
            serde_json::from_slice::<Value>(b).unwrap()["webhookEvent"] == "jira:issue_updated"
        })
        .expect("the emulator sent an issue_updated webhook");
    let mut payload: Value = serde_json::from_slice(body).unwrap();
    payload["issue"]["id"] = json!("@@ID@@");
    payload["issue"]["fields"]["updated"] = json!("@@UPDATED@@");
    (Template::cut(&payload.to_string()), body.len())
}

/// `count` signed, distinct deliveries starting at issue number `first`.
fn shots(template: &Template, first: u64, count: usize) -> Arc<Vec<Shot>> {
    let path: Arc<str> = Arc::from("/webhooks/jira");
    let base = chrono::Utc::now();
    Arc::new(
        (0..count as u64)
            .map(|n| {
                let updated = (base + chrono::Duration::milliseconds(n as i64))
                    .format("%Y-%m-%dT%H:%M:%S%.3f%z")
                    .to_string();
                let body = template.body(1_000_000 + first + n, &updated);
                let signature =
                    tandem::sim::jira::webhooks::signature(JIRA_SECRET, body.as_bytes());
                Shot {
                    path: path.clone(),
                    headers: vec![("x-hub-signature", signature)],
                    body: Bytes::from(body),
                }
            })
            .collect(),
    )
}

#[derive(Clone)]
struct Level {
    tandem: LoadResult,
    bare: LoadResult,
    mean_group: f64,
}

pub fn run(options: &Options) -> Value {
    let server = server_runtime();
    let client = client_runtime();
    let dir = scratch_dir();
    let sims = server.block_on(Sims::start());
    let (template, body_bytes) = server.block_on(template(&sims));
    let overlay = sims.config(
        dir.path(),
        "requests_per_second = 1000\ntimeout = \"10s\"",
        FLOW,
    );
    let daemon = server.block_on(Daemon::start(settings_in(dir.path(), &overlay)));
    let bare = server.block_on(async {
        let app = axum::Router::new().route(
            "/webhooks/jira",
            axum::routing::post(|_body: Bytes| async { axum::http::StatusCode::OK }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });

    let levels: Vec<usize> = knob("BENCH_INGEST_SENDERS", "1,16,64,256".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let per_run: usize = knob(
        "BENCH_INGEST_REQUESTS",
        if options.quick { 10_000 } else { 60_000 },
    );
    let max_time = Duration::from_secs(knob(
        "BENCH_INGEST_SECONDS",
        if options.quick { 4 } else { 8 },
    ));
    println!(
        "ingest: webhook body {body_bytes} bytes, synchronous=FULL, up to {per_run} requests or {}s per run, median of {}",
        max_time.as_secs(),
        options.repetitions
    );
    let mut next_issue = 0u64;
    let mut rows = Vec::new();
    let mut table = Vec::new();
    for &senders in &levels {
        // One sender is latency-bound: fewer requests say as much.
        let count = if senders == 1 { per_run / 10 } else { per_run };
        // Warm-up: connections, page cache, prepared statements, allocator.
        let warm = shots(&template, next_issue, 2_000.min(count));
        next_issue += warm.len() as u64;
        client.block_on(drive(daemon.addr, senders, warm.clone(), max_time));
        client.block_on(drive(bare, senders, warm, max_time));
        let mut runs = Vec::new();
        for _ in 0..options.repetitions {
            let load = shots(&template, next_issue, count);
            next_issue += load.len() as u64;
            let stats = daemon.journal.stats();
            let (commits, requests) = (stats.commits.get(), stats.committed_requests.get());
            let tandem = client.block_on(drive(daemon.addr, senders, load.clone(), max_time));
            let stats = daemon.journal.stats();
            let mean_group = (stats.committed_requests.get() - requests) as f64
                / (stats.commits.get() - commits).max(1) as f64;
            // `BENCH_INGEST_BARE=0` leaves the bare handler out (when profiling the daemon).
            let bare = if knob("BENCH_INGEST_BARE", 1) == 1 {
                client.block_on(drive(bare, senders, load, max_time))
            } else {
                LoadResult {
                    elapsed: Duration::from_secs(1),
                    ..LoadResult::default()
                }
            };
            runs.push(Level {
                tandem,
                bare,
                mean_group,
            });
        }
        let m = median_by(runs, |l| l.tandem.per_second());
        let bare_m = m.bare.per_second();
        let share = m.tandem.per_second() / bare_m;
        table.push(vec![
            senders.to_string(),
            m.tandem.ok.to_string(),
            format!("{:.0}", m.tandem.per_second()),
            format!("{:.2}", m.tandem.p(0.50)),
            format!("{:.2}", m.tandem.p(0.99)),
            m.tandem.failed.to_string(),
            format!("{:.1}", m.mean_group),
            format!("{:.0}", bare_m),
            format!("{:.2}", m.bare.p(0.99)),
            format!("{:.0} %", share * 100.0),
        ]);
        rows.push(json!({
            "senders": senders,
            "requests": m.tandem.ok,
            "failed": m.tandem.failed,
            "per_second": m.tandem.per_second().round(),
            "p50_ms": m.tandem.p(0.50),
            "p99_ms": m.tandem.p(0.99),
            "mean_requests_per_commit": m.mean_group,
            "bare_per_second": bare_m.round(),
            "bare_p50_ms": m.bare.p(0.50),
            "bare_p99_ms": m.bare.p(0.99),
            "share_of_bare": share,
        }));
    }
    print_table(
        &[
            "senders",
            "accepted",
            "webhooks/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "per commit",
            "bare/s",
            "bare p99",
            "share",
        ],
        &table,
    );
    let stored: i64 = server.block_on(async {
        sqlx::query_scalar("SELECT COUNT(*) FROM changes")
            .fetch_one(daemon.journal.pool())
            .await
            .unwrap()
    });
    println!("journal rows after the runs: {stored}");
    server.block_on(daemon.stop());
    server.block_on(sims.stop());
    json!({
        "load_generator": "hyper http1 client, one keep-alive connection per sender, one thread",
        "body_bytes": body_bytes,
        "synchronous": "full",
        "levels": rows,
    })
}
