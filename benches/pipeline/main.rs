//! The pipeline benchmarks: the emulators and the daemon on loopback under load.
//!
//! ```text
//! cargo bench --bench pipeline                      # every scenario
//! cargo bench --bench pipeline -- ingest latency    # some
//! cargo bench --bench pipeline -- --quick backlog   # smaller counts, one repetition
//! ```
//!
//! Scenarios: `ingest`, `latency`, `efficiency`, `backlog`, `recovery` (BENCHMARKS.md says what
//! each measures and how). Each prints a table and writes `target/bench/pipeline-SCENARIO.json`.
//! A report, not a test: nothing fails on a figure, only on a broken run.

mod backlog;
mod common;
mod efficiency;
mod ingest;
mod latency;
mod realtime;
mod recovery;

use serde_json::json;

const SCENARIOS: [&str; 5] = ["ingest", "latency", "efficiency", "backlog", "recovery"];

fn main() {
    if let Ok(dir) = std::env::var(common::CHILD_ENV) {
        common::run_child(&dir);
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick") || std::env::var("BENCH_QUICK").is_ok();
    // `cargo bench` passes `--bench`; anything else starting with `-` is ignored too.
    let mut chosen: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    for name in &chosen {
        if !SCENARIOS.contains(name) {
            eprintln!(
                "unknown scenario `{name}`; choose from {}",
                SCENARIOS.join(", ")
            );
            std::process::exit(2);
        }
    }
    if chosen.is_empty() {
        chosen = SCENARIOS.to_vec();
    }
    common::install_log();
    let options = common::Options {
        quick,
        repetitions: common::knob("BENCH_REPETITIONS", if quick { 1 } else { 3 }),
    };
    for name in chosen {
        let load_before = common::loadavg();
        let started = std::time::Instant::now();
        println!(
            "\n== {name}{} (load average {load_before}, {} cores)",
            if quick { ", quick" } else { "" },
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let results = match name {
            "ingest" => ingest::run(&options),
            "latency" => latency::run(&options),
            "efficiency" => efficiency::run(&options),
            "backlog" => backlog::run(&options),
            "recovery" => recovery::run(&options),
            _ => unreachable!(),
        };
        let elapsed = started.elapsed().as_secs_f64();
        let load_after = common::loadavg();
        println!("{name} took {elapsed:.0}s; load average after: {load_after}");
        let report = json!({
            "bench": "pipeline",
            "scenario": name,
            "quick": quick,
            "repetitions": options.repetitions,
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "seconds": elapsed.round(),
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "results": results,
        });
        let path = common::out_dir().join(format!("pipeline-{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
        println!("wrote {}", path.display());
    }
}
