//! Journal append throughput and latency: group commit on vs off, 1 and 64 concurrent writers,
//! `synchronous=FULL`, a real file on disk.
//!
//! ```text
//! cargo bench --bench journal             # 3 repetitions per case, medians reported
//! cargo bench --bench journal -- --quick  # 1 repetition, smaller counts
//! ```
//!
//! Prints a table and writes `target/bench/journal.json`. A report, not a test: nothing fails.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem::config::{JournalSettings, StorageSettings, Synchronous};
use tandem::journal::{ChangeOp, Journal, NewChange, Origin};

#[derive(Clone, Copy)]
struct Case {
    group_commit: bool,
    writers: usize,
    appends: usize,
}

struct Measured {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    mean_group: f64,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 4 } else { 1 };
    let repetitions = if quick { 1 } else { 3 };
    let cases = [
        Case {
            group_commit: false,
            writers: 1,
            appends: 4_000 / scale,
        },
        Case {
            group_commit: false,
            writers: 64,
            appends: 8_000 / scale,
        },
        Case {
            group_commit: true,
            writers: 1,
            appends: 4_000 / scale,
        },
        Case {
            group_commit: true,
            writers: 64,
            appends: 64_000 / scale,
        },
    ];
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    println!(
        "journal appends, synchronous=FULL, {} cores, median of {repetitions}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<13} {:>7} {:>9} {:>12} {:>9} {:>9} {:>10}",
        "group commit", "writers", "appends", "appends/s", "p50 ms", "p99 ms", "per commit"
    );
    let mut rows = Vec::new();
    for case in cases {
        // Warm-up: page cache, prepared statements, allocator.
        runtime.block_on(run(
            &out_dir,
            Case {
                appends: 256,
                ..case
            },
        ));
        let mut runs: Vec<Measured> = (0..repetitions)
            .map(|_| runtime.block_on(run(&out_dir, case)))
            .collect();
        runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        let m = &runs[runs.len() / 2];
        println!(
            "{:<13} {:>7} {:>9} {:>12.0} {:>9.2} {:>9.2} {:>10.1}",
            if case.group_commit { "on" } else { "off" },
            case.writers,
            case.appends,
            m.per_second,
            m.p50.as_secs_f64() * 1e3,
            m.p99.as_secs_f64() * 1e3,
            m.mean_group,
        );
        rows.push(serde_json::json!({
            "group_commit": case.group_commit,
            "writers": case.writers,
            "appends": case.appends,
            "appends_per_second": m.per_second.round(),
            "p50_ms": m.p50.as_secs_f64() * 1e3,
            "p99_ms": m.p99.as_secs_f64() * 1e3,
            "mean_requests_per_commit": m.mean_group,
        }));
    }
    let report = serde_json::json!({ "bench": "journal", "synchronous": "full", "results": rows });
    let path = out_dir.join("journal.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("wrote {}", path.display());
}

async fn run(dir: &std::path::Path, case: Case) -> Measured {
    let tmp = tempfile::tempdir_in(dir).unwrap();
    let storage = StorageSettings {
        url: format!("sqlite://{}", tmp.path().join("bench.db").display()),
        synchronous: Synchronous::Full,
        busy_timeout: Duration::from_secs(5),
        max_connections: 4,
        migrate_on_start: true,
    };
    let settings = JournalSettings {
        group_commit: case.group_commit,
        max_batch: 1024,
        queue_capacity: 8192,
    };
    let journal = Journal::open(&storage, &settings).await.unwrap();
    journal.migrate().await.unwrap();

    let per_writer = case.appends / case.writers;
    let started = Instant::now();
    let tasks: Vec<_> = (0..case.writers)
        .map(|w| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_writer);
                for n in 0..per_writer {
                    let change = NewChange {
                        connector: "jira".into(),
                        object: "issue".into(),
                        record_id: format!("{}", 10_000 + (w * per_writer + n) % 1_000),
                        op: ChangeOp::Upsert,
                        snapshot: serde_json::json!({
                            "summary": "Printer on floor 3 is on fire",
                            "priority": { "name": "High" },
                            "status": { "name": "In Progress" },
                        }),
                        source_modified_at: Some(1_700_000_000_000 + n as i64),
                        origin: Origin::Webhook,
                        dedupe_key: format!("w{w}-{n}"),
                    };
                    let t = Instant::now();
                    journal.append(change).await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(case.appends);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let stats = journal.stats();
    let mean_group = stats.committed_requests.get() as f64 / stats.commits.get().max(1) as f64;
    journal.close().await;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Measured {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        mean_group,
    }
}
