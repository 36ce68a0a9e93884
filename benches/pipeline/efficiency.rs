//! `efficiency`: vendor API calls per synced change, realtime vs scheduled: 10,000 edits to
//! 1,000 linked records in bursts (1, 2, 3, 5 or 10 edits 10 ms apart to one record), half the
//! records edited in Jira (through its REST API), half in Salesforce (in the emulator's store,
//! which sends the Outbound Message as a UI edit would).
//!
//! Calls are the emulators' own counters, both emulators, everything Tandem sent: writes,
//! completion reads (Jira webhooks carry no ADF description), echo handling, polls, bulk calls.
//! The people's own Jira edits go through the same counter and are subtracted (each is exactly
//! one `PUT /rest/api/{v}/issue/{key}`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::realtime::{self, World};

const HUMAN_EDIT: &str = "PUT /rest/api/{v}/issue/{key}";
const BURSTS: [usize; 5] = [1, 2, 3, 5, 10];

/// One burst: a record index and how many edits.
fn bursts(edits: usize, records: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut made, mut seed) = (0usize, 0x2545_f491_4f6c_dd1du64);
    let mut i = 0;
    while made < edits {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let size = BURSTS[i % BURSTS.len()].min(edits - made);
        out.push(((seed % records as u64) as usize, size));
        made += size;
        i += 1;
    }
    out
}

/// Make the edits: each burst's edits 10 ms apart, bursts started `per_second` apart (all at
/// once when 0). Returns the people's Jira API calls.
async fn edit(world: &Arc<World>, edits: usize, per_second: u32, tag: &str) -> u64 {
    let http = reqwest::Client::new();
    let base = world.sims.jira.base_url();
    let human = Arc::new(AtomicU64::new(0));
    let mut n = 0usize;
    let plan = bursts(edits, world.pairs.len());
    let mut interval = (per_second > 0).then(|| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second)));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (record, size) in plan {
        if let Some(interval) = interval.as_mut() {
            interval.tick().await;
        }
        let (issue, case) = world.pairs[record].clone();
        let first = n;
        n += size;
        let (http, base, human) = (http.clone(), base.clone(), human.clone());
        let jira_side = record % 2 == 0;
        let tag = tag.to_string();
        let world = world.clone();
        tasks.spawn(async move {
            for k in 0..size {
                let value = format!("{tag} edit {}", first + k);
                let priority = if (first + k) % 4 == 3 {
                    Some(if (first + k) % 8 == 3 { "High" } else { "Low" })
                } else {
                    None
                };
                if jira_side {
                    let mut fields = json!({ "summary": value });
                    if let Some(p) = priority {
                        fields["priority"] = json!({ "name": p });
                    }
                    realtime::edit_issue(&http, &base, &issue, fields).await;
                    human.fetch_add(1, Ordering::Relaxed);
                } else {
                    let mut fields = json!({ "Subject": value });
                    if let Some(p) = priority {
                        fields["Priority"] = json!(p);
                    }
                    world.sims.sf.update("Case", &case, fields).unwrap();
                }
                if per_second > 0 && k + 1 < size {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    human.load(Ordering::Relaxed)
}

/// Records whose two sides disagree on the summary.
fn diverged(world: &World) -> usize {
    let store = world.sims.jira.store();
    world
        .pairs
        .iter()
        .filter(|(issue, case)| {
            let summary = store.find(issue).map(|i| i.summary.clone());
            let subject = world.sims.sf.record(case).map(|c| c["Subject"].clone());
            summary.as_deref() != subject.as_ref().and_then(Value::as_str)
        })
        .count()
}

struct Counted {
    tandem_calls: u64,
    by_endpoint: BTreeMap<String, u64>,
}

fn count(world: &World, human: u64) -> Counted {
    let (jira, sf) = world.sims.calls();
    let mut by_endpoint = BTreeMap::new();
    for (k, v) in jira {
        let v = if k == HUMAN_EDIT { v - human } else { v };
        if v > 0 {
            by_endpoint.insert(format!("jira {k}"), v);
        }
    }
    for (k, v) in sf {
        by_endpoint.insert(format!("salesforce {k}"), v);
    }
    Counted {
        tandem_calls: by_endpoint.values().sum(),
        by_endpoint,
    }
}

async fn outcomes(world: &World, since_id: i64) -> BTreeMap<String, i64> {
    let rows: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT outcome, COUNT(*) FROM changes WHERE id > ? GROUP BY outcome")
            .bind(since_id)
            .fetch_all(world.daemon.journal.pool())
            .await
            .unwrap();
    rows.into_iter()
        .map(|(o, n)| (o.unwrap_or_else(|| "unsettled".into()), n))
        .collect()
}

async fn last_change(world: &World) -> i64 {
    sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM changes")
        .fetch_one(world.daemon.journal.pool())
        .await
        .unwrap()
}

/// Start a run of `support` and wait for it to end; the run's row.
async fn scheduled_run(world: &World) -> Value {
    let base = world.daemon.url("");
    let (status, body) = admin(&base, reqwest::Method::POST, "/flows/support/run").await;
    assert_eq!(status, 202, "{body}");
    let id = body["run"]["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (_, flow) = admin(&base, reqwest::Method::GET, "/flows/support").await;
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

/// The scheduled flow's world: no webhooks registered (its runs poll), `records` issues made
/// in Jira and carried to Salesforce by a first run, a second run to absorb that run's echoes.
async fn scheduled_world(records: usize) -> World {
    let started = Instant::now();
    let dir = scratch_dir();
    let sims = Sims::start().await;
    let flow = realtime::FLOW.replace(
        "[flows.support]\n",
        "[flows.support]\nmode = { scheduled = { every = \"24h\" } }\n",
    );
    let overlay = sims.config(
        dir.path(),
        "requests_per_second = 1000\nmax_concurrency = 8\ntimeout = \"10s\"",
        &flow,
    );
    let daemon = Daemon::start(settings_in(dir.path(), &overlay)).await;
    // Through the REST API so that `updated` is past the flow's first watermark.
    create_issues(&sims.jira, records, "record", "Medium").await;
    let mut world = World {
        sims,
        daemon,
        pairs: Vec::new(),
        setup: Duration::ZERO,
        _dir: dir,
    };
    let first = scheduled_run(&world).await;
    assert_eq!(first["written"], records, "{first}");
    scheduled_run(&world).await;
    world.pairs = world
        .daemon
        .journal
        .links("support")
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.left_id, l.right_id))
        .collect();
    world.setup = started.elapsed();
    world
}

pub fn run(options: &Options) -> Value {
    let server = server_runtime();
    let client = client_runtime();
    let records: usize = knob(
        "BENCH_EFFICIENCY_RECORDS",
        if options.quick { 200 } else { 1_000 },
    );
    let edits: usize = knob(
        "BENCH_EFFICIENCY_EDITS",
        if options.quick { 2_000 } else { 10_000 },
    );
    let bursts_per_second: u32 = knob("BENCH_EFFICIENCY_BURSTS_PER_SECOND", 100);
    println!(
        "efficiency: {edits} edits to {records} records in bursts of {BURSTS:?} (10 ms apart), half in Jira, half in Salesforce"
    );

    // Realtime, on the default dispatch settings and with no coalescing window.
    let realtime = realtime_run(&server, &client, records, edits, bursts_per_second, "");
    let realtime_at_once = realtime_run(
        &server,
        &client,
        records,
        edits,
        bursts_per_second,
        "[dispatch]\ncoalesce = \"0s\"\n",
    );

    // Scheduled.
    let world = Arc::new(server.block_on(scheduled_world(records)));
    println!(
        "  scheduled setup (two runs carrying {records} new issues): {:.1}s",
        world.setup.as_secs_f64()
    );
    let scheduled = client.block_on(async {
        world.sims.reset_calls();
        let since = last_change(&world).await;
        let human = edit(&world, edits, 0, "scheduled").await;
        let started = Instant::now();
        let run = scheduled_run(&world).await;
        let run_seconds = started.elapsed().as_secs_f64();
        let first = count(&world, human);
        // The next run sees that run's writes come back: echoes, counted with it.
        let echo_run = scheduled_run(&world).await;
        let counted = count(&world, human);
        let outcomes = outcomes(&world, since).await;
        json!({
            "edits": edits,
            "records": records,
            "run": run,
            "run_seconds": run_seconds,
            "echo_run": echo_run,
            "api_calls_run": first.tandem_calls,
            "api_calls": counted.tandem_calls,
            "calls_per_edit": counted.tandem_calls as f64 / edits as f64,
            "by_endpoint": counted.by_endpoint,
            "journal_outcomes": outcomes,
            "diverged_records": diverged(&world),
        })
    });
    stop(&server, world);

    let row = |name: &str, r: &Value| {
        vec![
            name.to_string(),
            r["edits"].to_string(),
            r["api_calls"].to_string(),
            format!("{:.3}", r["calls_per_edit"].as_f64().unwrap()),
            r["diverged_records"].to_string(),
        ]
    };
    print_table(
        &["mode", "edits", "API calls", "calls/edit", "diverged"],
        &[
            row("realtime", &realtime),
            row("realtime, coalesce 0s", &realtime_at_once),
            row("scheduled", &scheduled),
        ],
    );
    for (name, r) in [
        ("realtime", &realtime),
        ("realtime, coalesce 0s", &realtime_at_once),
        ("scheduled", &scheduled),
    ] {
        println!("  {name} calls by endpoint: {}", r["by_endpoint"]);
        println!("  {name} journal outcomes: {}", r["journal_outcomes"]);
    }
    json!({ "realtime": realtime, "realtime_coalesce_0s": realtime_at_once, "scheduled": scheduled })
}

/// Stop the daemon and the emulators once the edit tasks are done with them.
fn stop(server: &tokio::runtime::Runtime, world: Arc<World>) {
    let world = Arc::try_unwrap(world)
        .ok()
        .expect("no edit task holds the world");
    server.block_on(async move {
        world.daemon.stop().await;
        world.sims.stop().await;
    });
}

/// The realtime flow with `extra` settings: the edits, then until every change is settled and
/// every notification delivered.
fn realtime_run(
    server: &tokio::runtime::Runtime,
    client: &tokio::runtime::Runtime,
    records: usize,
    edits: usize,
    bursts_per_second: u32,
    extra: &str,
) -> Value {
    let world = Arc::new(server.block_on(realtime::start(records, extra)));
    println!(
        "  realtime setup (the daemon syncing {records} new issues): {:.1}s",
        world.setup.as_secs_f64()
    );
    let result = client.block_on(async {
        world.sims.reset_calls();
        let since = last_change(&world).await;
        let started = Instant::now();
        let human = edit(&world, edits, bursts_per_second, "realtime").await;
        let edited_in = started.elapsed();
        realtime::settle(&world.sims, &world.daemon).await;
        let drained_in = started.elapsed();
        let counted = count(&world, human);
        let outcomes = outcomes(&world, since).await;
        json!({
            "settings": extra,
            "edits": edits,
            "records": records,
            "edits_seconds": edited_in.as_secs_f64(),
            "drained_seconds": drained_in.as_secs_f64(),
            "api_calls": counted.tandem_calls,
            "calls_per_edit": counted.tandem_calls as f64 / edits as f64,
            "by_endpoint": counted.by_endpoint,
            "journal_outcomes": outcomes,
            "diverged_records": diverged(&world),
        })
    });
    stop(server, world);
    result
}
