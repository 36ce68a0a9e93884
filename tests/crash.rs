//! Crash safety: a process appending in a loop is killed with SIGKILL; every change it had been
//! told was stored must be in the database, and the database must be intact.
//!
//! The child is this same test binary, re-run with `CRASH_CHILD_DB` set: the test function then
//! plays the child and appends until it is killed, printing each acknowledged key.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tandem::config::{JournalSettings, StorageSettings, Synchronous};
use tandem::journal::Journal;

const TEST_NAME: &str = "a_writer_killed_with_sigkill_loses_no_acknowledged_change";
const CHILD_ENV: &str = "CRASH_CHILD_DB";
/// Enough acknowledged appends that the kill lands amid group commits.
const ACKS_BEFORE_KILL: usize = 3_000;

#[test]
fn a_writer_killed_with_sigkill_loses_no_acknowledged_change() {
    if let Ok(db) = std::env::var(CHILD_ENV) {
        run_child(&db);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = common::db_path(&dir);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Read acknowledgements on a thread so the kill can happen mid-stream.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(key) = line.strip_prefix("ack ") {
                let _ = tx.send(key.to_string());
            }
        }
    });
    let mut acked = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < ACKS_BEFORE_KILL && Instant::now() < deadline {
        if let Ok(key) = rx.recv_timeout(Duration::from_millis(100)) {
            acked.insert(key);
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix: no destructor, no flush, no close.
    child.wait().unwrap();
    reader.join().unwrap();
    // Acknowledgements printed before the kill but not yet read.
    acked.extend(rx.try_iter());
    assert!(
        acked.len() >= ACKS_BEFORE_KILL,
        "the child acknowledged only {} appends in 60s",
        acked.len()
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut conn = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(integrity, "ok");
        let stored: HashSet<String> = sqlx::query_scalar("SELECT dedupe_key FROM changes")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect();
        let lost: Vec<&String> = acked.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged changes were lost, e.g. {:?}",
            lost.len(),
            acked.len(),
            lost.iter().take(5).collect::<Vec<_>>()
        );
        conn.close().await.unwrap();
    });
}

/// Append from many concurrent tasks forever; print a key only after its append returned.
fn run_child(db: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let storage = StorageSettings {
            url: format!("sqlite://{db}"),
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            max_connections: 4,
            migrate_on_start: true,
        };
        let settings = JournalSettings {
            group_commit: true,
            max_batch: 1024,
            queue_capacity: 8192,
        };
        let journal = Journal::open(&storage, &settings).await.unwrap();
        journal.migrate().await.unwrap();
        let mut tasks = Vec::new();
        for writer in 0..16 {
            let journal = journal.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0.. {
                    let key = format!("w{writer}-{n}");
                    journal.append(common::change(&key, &key)).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {key}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}
