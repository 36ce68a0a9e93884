//! `latency`: a realtime flow, 200 edits/s made in Jira, the time from the emulator applying
//! an edit (the issue's `updated`) to the counterpart Case being written (its
//! `SystemModstamp`). Both timestamps come from the emulators' own clocks in this process, so
//! the bench's polling interval does not enter the figure. The emulators add no latency.
//!
//! Run on the default dispatch settings, then with `dispatch.coalesce = "0s"`: an idle
//! dispatcher is woken by a new change's commit and waits `coalesce` (50 ms by default) for the
//! rest of a burst before claiming, which is a floor under the latency of a change to a quiet
//! record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::realtime::{self, World};

struct Edit {
    case: String,
    value: String,
    applied_ms: i64,
}

#[derive(Clone, Default)]
struct Measured {
    edits: usize,
    rate: f64,
    latencies_ms: Vec<i64>,
    superseded: usize,
    missing: usize,
}

impl Measured {
    fn p(&self, q: f64) -> i64 {
        quantile(&self.latencies_ms, q)
    }
}

async fn measure(world: &World, rep: usize, rate: u32, seconds: u64) -> Measured {
    let http = reqwest::Client::new();
    let base = world.sims.jira.base_url();
    let total = (u64::from(rate) * seconds) as usize;
    let outstanding: Arc<Mutex<Vec<Edit>>> = Arc::default();
    let latest: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut result = Measured::default();
    for n in 0..total {
        interval.tick().await;
        let (issue, case) = world.pairs[n % world.pairs.len()].clone();
        let value = format!("latency {rep}-{n}");
        let jira = &world.sims.jira;
        let applied = {
            realtime::edit_issue(&http, &base, &issue, json!({ "summary": value })).await;
            jira.store()
                .find(&issue)
                .map(|i| i.updated.timestamp_millis())
                .unwrap()
        };
        latest.lock().unwrap().insert(case.clone(), value.clone());
        outstanding.lock().unwrap().push(Edit {
            case,
            value,
            applied_ms: applied,
        });
        // Check what has landed now and then, from this same task (cheap: an in-process read).
        if n % 10 == 0 {
            check(world, &outstanding, &latest, &mut result);
        }
    }
    let sent_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !outstanding.lock().unwrap().is_empty() && Instant::now() < deadline {
        check(world, &outstanding, &latest, &mut result);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    result.missing = outstanding.lock().unwrap().len();
    result.edits = total;
    result.rate = total as f64 / sent_in.as_secs_f64();
    result.latencies_ms.sort_unstable();
    result
}

/// Move every edit whose value reached its Case into `result`.
fn check(
    world: &World,
    outstanding: &Mutex<Vec<Edit>>,
    latest: &Mutex<HashMap<String, String>>,
    result: &mut Measured,
) {
    let latest = latest.lock().unwrap();
    outstanding.lock().unwrap().retain(|edit| {
        let Some(case) = world.sims.sf.record(&edit.case) else {
            return true;
        };
        if case["Subject"] == edit.value.as_str() {
            let written = case["SystemModstamp"].as_str().and_then(epoch_ms).unwrap();
            result.latencies_ms.push(written - edit.applied_ms);
            return false;
        }
        if latest.get(&edit.case) != Some(&edit.value) {
            // A later edit of the same record came first (or coalesced this one).
            result.superseded += 1;
            return false;
        }
        true
    });
}

pub fn run(options: &Options) -> Value {
    let server = server_runtime();
    let client = client_runtime();
    let rate: u32 = knob("BENCH_LATENCY_RATE", 200);
    let seconds: u64 = knob("BENCH_LATENCY_SECONDS", if options.quick { 4 } else { 10 });
    let records: usize = knob("BENCH_LATENCY_RECORDS", 500);
    let variants = [
        ("default (coalesce 50ms)", ""),
        ("coalesce 0s", "[dispatch]\ncoalesce = \"0s\"\n"),
    ];
    println!(
        "latency: {rate} Jira edits/s for {seconds}s over {records} linked records, median of {}",
        options.repetitions
    );
    let mut rows = Vec::new();
    let mut table = Vec::new();
    for (name, extra) in variants {
        let world = server.block_on(realtime::start(records, extra));
        println!(
            "  {name}: setup (the daemon syncing {records} new issues) took {:.1}s",
            world.setup.as_secs_f64()
        );
        // Warm-up.
        client.block_on(measure(&world, 0, rate, 1));
        let runs: Vec<Measured> = (1..=options.repetitions)
            .map(|rep| client.block_on(measure(&world, rep, rate, seconds)))
            .collect();
        let m = median_by(runs, |r| r.p(0.5) as f64);
        table.push(vec![
            name.to_string(),
            format!("{:.0}", m.rate),
            m.latencies_ms.len().to_string(),
            m.p(0.50).to_string(),
            m.p(0.90).to_string(),
            m.p(0.99).to_string(),
            m.latencies_ms.last().copied().unwrap_or(0).to_string(),
            m.superseded.to_string(),
            m.missing.to_string(),
        ]);
        rows.push(json!({
            "variant": name,
            "edits": m.edits,
            "edits_per_second": m.rate,
            "measured": m.latencies_ms.len(),
            "p50_ms": m.p(0.50),
            "p90_ms": m.p(0.90),
            "p99_ms": m.p(0.99),
            "max_ms": m.latencies_ms.last(),
            "superseded": m.superseded,
            "never_arrived": m.missing,
            "setup_seconds": world.setup.as_secs_f64(),
        }));
        server.block_on(async move {
            world.daemon.stop().await;
            world.sims.stop().await;
        });
    }
    print_table(
        &[
            "dispatch",
            "edits/s",
            "measured",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "superseded",
            "missing",
        ],
        &table,
    );
    json!({ "rate": rate, "seconds": seconds, "records": records, "variants": rows })
}
