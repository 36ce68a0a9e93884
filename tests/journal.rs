//! The journal against a real SQLite file: dedupe, leases, ordering, group commit, watermarks.

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::{change, open_journal};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tandem::journal::{Appended, ChangeId, ChangeStatus, JournalError, NewDeadLetter, Watermark};

const LEASE: Duration = Duration::from_secs(60);

/// Claim up to 10 due changes for worker `w`; their ids, in order.
async fn claimed_ids(journal: &tandem::journal::Journal) -> Vec<ChangeId> {
    journal
        .claim("w", 10, LEASE)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect()
}

#[tokio::test]
async fn a_change_delivered_twice_with_one_dedupe_key_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;

    let first = journal.append(change("10001", "wh-1")).await.unwrap();
    let second = journal.append(change("10001", "wh-1")).await.unwrap();

    let Appended::New(id) = first else {
        panic!("first delivery must be new: {first:?}")
    };
    assert_eq!(second, Appended::Duplicate(id));
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM changes")
        .fetch_one(journal.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(journal.stats().duplicates.get(), 1);
    journal.close().await;
}

#[tokio::test]
async fn duplicates_inside_one_batch_are_absorbed_too() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let appended = journal
        .append_all(vec![change("1", "k"), change("1", "k")], None)
        .await
        .unwrap();
    assert!(matches!(appended[0], Appended::New(_)));
    assert_eq!(appended[1], Appended::Duplicate(appended[0].id()));
    journal.close().await;
}

#[tokio::test]
async fn a_claimed_change_is_not_claimed_again_while_its_lease_holds() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let id = journal.append(change("1", "a")).await.unwrap().id();

    let claimed = journal.claim("worker-a", 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, id);
    assert_eq!(claimed[0].attempts, 1);
    assert_eq!(claimed[0].snapshot["summary"], "edit a");
    assert!(journal
        .claim("worker-b", 10, LEASE)
        .await
        .unwrap()
        .is_empty());
    journal.close().await;
}

#[tokio::test]
async fn a_lease_that_expires_is_claimed_again_and_the_old_owner_cannot_settle_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let id = journal.append(change("1", "a")).await.unwrap().id();

    // worker-a claims with a lease that runs out at once, as if it had crashed.
    let first = journal.claim("worker-a", 10, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(5)).await;

    let second = journal.claim("worker-b", 10, LEASE).await.unwrap();
    assert_eq!(second.len(), 1, "the expired claim is picked up again");
    assert_eq!(second[0].id, id);
    assert_eq!(second[0].attempts, 2);

    let late = journal.complete(id, "worker-a", "written").await;
    assert!(matches!(late, Err(JournalError::LeaseLost(lost)) if lost == id));
    journal.complete(id, "worker-b", "written").await.unwrap();
    let (status, outcome): (String, String) =
        sqlx::query_as("SELECT status, outcome FROM changes WHERE id = ?")
            .bind(id.0)
            .fetch_one(journal.pool())
            .await
            .unwrap();
    assert_eq!((status.as_str(), outcome.as_str()), ("done", "written"));
    journal.close().await;
}

#[tokio::test]
async fn changes_to_one_record_are_claimed_one_at_a_time_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let a1 = journal.append(change("A", "a1")).await.unwrap().id();
    let a2 = journal.append(change("A", "a2")).await.unwrap().id();
    let b1 = journal.append(change("B", "b1")).await.unwrap().id();

    let batch = claimed_ids(&journal).await;
    assert_eq!(
        batch,
        vec![a1, b1],
        "a2 waits behind a1; other records go in parallel"
    );

    journal.complete(a1, "w", "written").await.unwrap();
    let batch = claimed_ids(&journal).await;
    assert_eq!(batch, vec![a2]);
    journal.close().await;
}

#[tokio::test]
async fn a_change_put_back_for_retry_waits_for_its_delay_and_keeps_the_record_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let first = journal.append(change("A", "a1")).await.unwrap().id();
    journal.append(change("A", "a2")).await.unwrap();

    journal.claim("w", 10, LEASE).await.unwrap();
    journal
        .retry_later(first, "w", Duration::from_millis(200), "503 from target")
        .await
        .unwrap();
    assert!(
        journal.claim("w", 10, LEASE).await.unwrap().is_empty(),
        "neither the delayed change nor the later one for the same record is due"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let again = journal.claim("w", 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (first, 2));
    journal.close().await;
}

#[tokio::test]
async fn a_dead_letter_records_the_failure_and_settles_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let id = journal.append(change("A", "a1")).await.unwrap().id();
    journal.claim("w", 1, LEASE).await.unwrap();

    let letter = NewDeadLetter {
        flow: Some("support".into()),
        connector: "sf".into(),
        operation: "update Case".into(),
        payload: serde_json::json!({ "Subject": "x" }),
        http_status: Some(400),
        vendor_code: Some("FIELD_CUSTOM_VALIDATION_EXCEPTION".into()),
        vendor_message: Some("Subject must not be x".into()),
        first_failed_at: 1_700_000_000_000,
    };
    assert!(matches!(
        journal
            .dead_letter(id, "someone-else", letter.clone())
            .await,
        Err(JournalError::LeaseLost(_))
    ));
    journal.dead_letter(id, "w", letter).await.unwrap();

    let row: (String, i64, String, i64) = sqlx::query_as(
        "SELECT d.vendor_code, d.attempts, c.status, d.http_status
           FROM dead_letters d JOIN changes c ON c.id = d.change_id",
    )
    .fetch_one(journal.pool())
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "FIELD_CUSTOM_VALIDATION_EXCEPTION".into(),
            1,
            "dead".into(),
            400
        )
    );
    let depth = journal.depth_by_status().await.unwrap();
    assert!(depth.contains(&(ChangeStatus::Dead, 1)));
    journal.close().await;
}

#[tokio::test]
async fn group_commit_answers_no_caller_before_its_row_is_visible_to_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let url = format!("sqlite://{}", common::db_path(&dir).display());

    let mut tasks = Vec::new();
    for writer in 0..32 {
        let journal = journal.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            // An independent connection, not the journal's pool: it sees only committed data.
            let mut observer = SqliteConnectOptions::from_str(&url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            for n in 0..20 {
                let key = format!("w{writer}-{n}");
                let id = journal.append(change(&key, &key)).await.unwrap().id();
                let seen: Option<i64> = sqlx::query_scalar("SELECT id FROM changes WHERE id = ?")
                    .bind(id.0)
                    .fetch_optional(&mut observer)
                    .await
                    .unwrap();
                assert_eq!(seen, Some(id.0), "{key} answered before it was committed");
            }
            observer.close().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = journal.stats();
    assert_eq!(stats.appended.get(), 640);
    assert!(
        stats.commits.get() < stats.committed_requests.get(),
        "concurrent requests shared commits ({} commits for {} requests)",
        stats.commits.get(),
        stats.committed_requests.get()
    );
    journal.close().await;
}

#[tokio::test]
async fn without_group_commit_every_request_has_its_own_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "[journal]\ngroup_commit = false\n").await;
    let mut tasks = Vec::new();
    for n in 0..16 {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            journal.append(change("r", &format!("k{n}"))).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(journal.stats().commits.get(), 16);
    journal.close().await;
}

#[tokio::test]
async fn a_poll_page_and_its_watermark_commit_together_and_the_watermark_never_rewinds() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let mark = |position: i64, last: &str| Watermark {
        connector: "sf".into(),
        object: "Case".into(),
        scope: "support".into(),
        position,
        last_record_id: last.into(),
    };
    assert_eq!(
        journal.watermark("sf", "Case", "support").await.unwrap(),
        None
    );

    let appended = journal
        .append_all(
            vec![change("1", "p1"), change("2", "p2")],
            Some(mark(2_000, "500B")),
        )
        .await
        .unwrap();
    assert_eq!(appended.len(), 2);
    assert_eq!(
        journal.watermark("sf", "Case", "support").await.unwrap(),
        Some(mark(2_000, "500B"))
    );

    // A late page from an overlapping window: its rows are deduplicated, the mark stays put.
    journal
        .append_all(vec![change("1", "p1")], Some(mark(1_000, "500Z")))
        .await
        .unwrap();
    assert_eq!(
        journal.watermark("sf", "Case", "support").await.unwrap(),
        Some(mark(2_000, "500B"))
    );
    // Same time, later id: the tie-break moves it forward.
    journal
        .append_all(vec![], Some(mark(2_000, "500C")))
        .await
        .unwrap();
    assert_eq!(
        journal.watermark("sf", "Case", "support").await.unwrap(),
        Some(mark(2_000, "500C"))
    );
    journal.close().await;
}

#[tokio::test]
async fn depth_and_age_report_what_is_owed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    assert_eq!(journal.oldest_unsettled_received_at().await.unwrap(), None);
    journal.append(change("1", "a")).await.unwrap();
    journal.append(change("2", "b")).await.unwrap();
    journal.claim("w", 1, LEASE).await.unwrap();

    let depth = journal.depth_by_status().await.unwrap();
    assert_eq!(
        depth,
        vec![
            (ChangeStatus::Pending, 1),
            (ChangeStatus::InFlight, 1),
            (ChangeStatus::Done, 0),
            (ChangeStatus::Dead, 0),
        ]
    );
    assert!(journal
        .oldest_unsettled_received_at()
        .await
        .unwrap()
        .is_some());
    journal.close().await;
}

#[tokio::test]
async fn migrations_are_reported_missing_until_applied() {
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings(&dir, "");
    let journal = tandem::journal::Journal::open(&settings.storage, &settings.journal)
        .await
        .unwrap();
    assert!(!journal.migrations_current().await.unwrap());
    journal.migrate().await.unwrap();
    assert!(journal.migrations_current().await.unwrap());
    journal.migrate().await.unwrap();
    journal.close().await;
}

#[tokio::test]
async fn appending_after_close_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    journal.close().await;
    assert!(matches!(
        journal.append(change("1", "a")).await,
        Err(JournalError::WriterStopped)
    ));
}

#[tokio::test]
async fn a_dead_letter_keeps_the_first_failure_and_takes_its_riders_along() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let lead = journal.append(change("A", "a1")).await.unwrap().id();
    journal.claim("w", 1, LEASE).await.unwrap();
    journal
        .retry_later(lead, "w", Duration::ZERO, "timed out")
        .await
        .unwrap();
    let first: i64 = sqlx::query_scalar("SELECT first_failed_at FROM changes WHERE id = ?")
        .bind(lead.0)
        .fetch_one(journal.pool())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = journal.claim("w", 1, LEASE).await.unwrap().remove(0);
    let rider = journal.append(change("A", "a2")).await.unwrap().id();
    let claimed = journal.claim_followers(&again, "w", LEASE);
    assert_eq!(claimed.await.unwrap().len(), 1);
    let letter = NewDeadLetter {
        flow: None,
        connector: "sf".into(),
        operation: "update Case".into(),
        payload: serde_json::json!({}),
        http_status: Some(503),
        vendor_code: None,
        vendor_message: None,
        first_failed_at: tandem::journal::now_ms(),
    };
    journal
        .dead_letter_with(lead, &[rider], "w", letter)
        .await
        .unwrap();
    let (first_failed, last_failed): (i64, i64) =
        sqlx::query_as("SELECT first_failed_at, last_failed_at FROM dead_letters")
            .fetch_one(journal.pool())
            .await
            .unwrap();
    assert_eq!(first_failed, first);
    assert!(last_failed > first_failed);
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM changes WHERE id = ?")
        .bind(rider.0)
        .fetch_one(journal.pool())
        .await
        .unwrap();
    assert_eq!(outcome, "dead");
    journal.close().await;
}

#[tokio::test]
async fn the_database_runs_in_wal_mode_with_full_sync() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(journal.pool())
        .await
        .unwrap();
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(journal.pool())
        .await
        .unwrap();
    assert_eq!((mode.as_str(), sync), ("wal", 2));
    journal.close().await;
}

#[tokio::test]
async fn a_request_that_fails_inside_a_group_does_not_fail_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    // Stand-in for any per-row failure the database can raise.
    sqlx::query(
        "CREATE TRIGGER reject_poison BEFORE INSERT ON changes WHEN NEW.record_id = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned row'); END",
    )
    .execute(journal.pool())
    .await
    .unwrap();

    let tasks: Vec<_> = (0..64)
        .map(|n| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let record = if n == 31 {
                    "poison".to_string()
                } else {
                    format!("r{n}")
                };
                journal.append(change(&record, &format!("k{n}"))).await
            })
        })
        .collect();
    let mut failed = Vec::new();
    for (n, task) in tasks.into_iter().enumerate() {
        if let Err(error) = task.await.unwrap() {
            assert!(matches!(error, JournalError::CommitFailed(_)), "{error}");
            failed.push(n);
        }
    }
    assert_eq!(failed, vec![31]);
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM changes")
        .fetch_one(journal.pool())
        .await
        .unwrap();
    assert_eq!(stored, 63);
    journal.close().await;
}

#[tokio::test]
async fn concurrent_settlements_share_commits_and_one_with_a_lost_lease_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let mut ids = Vec::new();
    for n in 0..40 {
        let key = format!("s{n}");
        ids.push(
            journal
                .append(change(&n.to_string(), &key))
                .await
                .unwrap()
                .id(),
        );
    }
    let claimed = journal.claim("worker-a", 100, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 40);
    let commits_before = journal.stats().commits.get();
    let settlement = tandem::journal::Settlement {
        outcome: "written".into(),
        detail: serde_json::json!({}),
        ..Default::default()
    };
    // Forty settlements at once, one of them by a worker that does not hold the lease.
    let mut tasks = tokio::task::JoinSet::new();
    for (n, id) in ids.iter().enumerate() {
        let (journal, settlement, id) = (journal.clone(), settlement.clone(), *id);
        let owner = if n == 7 { "worker-b" } else { "worker-a" };
        tasks.spawn(async move { (id, journal.settle(&[id], owner, &settlement, None).await) });
    }
    let mut lost = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, result) = joined.unwrap();
        match result {
            Ok(()) => {}
            Err(JournalError::LeaseLost(at)) => {
                assert_eq!(at, id);
                lost.push(id);
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(lost, vec![ids[7]]);
    let commits = journal.stats().commits.get() - commits_before;
    assert!(commits < 40, "{commits} commits for 40 settlements");
    let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM changes WHERE status = 'done'")
        .fetch_one(journal.pool())
        .await
        .unwrap();
    assert_eq!(done, 39);
    let (status, owner): (String, Option<String>) =
        sqlx::query_as("SELECT status, lease_owner FROM changes WHERE id = ?")
            .bind(ids[7].0)
            .fetch_one(journal.pool())
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), owner.as_deref()),
        ("in_flight", Some("worker-a"))
    );
    journal.close().await;
}

#[tokio::test]
async fn leases_and_runs_left_by_a_dead_process_are_taken_over_at_once_with_attempts_counted() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let id = journal.append(change("1", "a")).await.unwrap().id();
    let claimed = journal.claim("dead-worker", 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(journal.claim("next", 10, LEASE).await.unwrap().is_empty());

    let run = journal
        .start_run("nightly", "dead-worker", "schedule")
        .await
        .unwrap();
    let taken = journal.take_over().await.unwrap();
    assert_eq!(taken.changes, 1);
    assert_eq!(taken.runs, vec![(run, "nightly".to_string())]);
    let interrupted = journal.run(run).await.unwrap().unwrap();
    assert_eq!(interrupted.status, "interrupted");
    let again = journal.claim("next", 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, id);
    assert_eq!(again[0].attempts, 2, "the interrupted attempt still counts");
    journal.close().await;
}

#[tokio::test]
async fn a_claim_finds_due_changes_behind_a_large_backlog_of_objects_it_leaves_alone() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    // 5,000 pending changes of an object this claimer excludes, then one it takes.
    let mut batch = Vec::new();
    for n in 0..5_000 {
        let mut c = change(&n.to_string(), &format!("x{n}"));
        c.object = "scheduled".into();
        batch.push(c);
    }
    journal.append_all(batch, None).await.unwrap();
    let wanted = journal.append(change("w", "wanted")).await.unwrap().id();
    let excluded = vec!["scheduled".to_string()];
    let claimed = journal
        .claim_from(
            "jira",
            tandem::journal::Objects::Except(&excluded),
            "w",
            10,
            LEASE,
        )
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![wanted]
    );
    let only = vec!["scheduled".to_string()];
    let claimed = journal
        .claim_from(
            "jira",
            tandem::journal::Objects::Only(&only),
            "r",
            10,
            LEASE,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 10);
    assert!(
        claimed.windows(2).all(|w| w[0].id < w[1].id),
        "oldest first"
    );
    journal.close().await;
}

#[tokio::test]
async fn a_subscriber_is_woken_by_new_changes_it_would_claim_and_by_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(&dir, "").await;
    let woken = journal.subscribe("jira", &["comment".to_string()]);
    let wakes = || async {
        tokio::time::timeout(Duration::from_millis(200), woken.notified())
            .await
            .is_ok()
    };
    // Another connector's change, and one of an object it leaves to others: no wake.
    let mut other = change("1", "other");
    other.connector = "salesforce".into();
    journal.append(other).await.unwrap();
    let mut left = change("2", "left");
    left.object = "comment".into();
    journal.append(left).await.unwrap();
    assert!(!wakes().await);
    // Its own kind, committed while nobody waits: the wake is kept for the next wait.
    journal.append(change("3", "mine")).await.unwrap();
    assert!(wakes().await);
    // A duplicate stores nothing new, so it wakes nobody.
    journal.append(change("3", "mine")).await.unwrap();
    assert!(!wakes().await);
    journal.close().await;
}
