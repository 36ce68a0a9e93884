//! The single journal writer: group commit for ingest.
//!
//! Every webhook handler and poller hands its changes to this one task. It takes whatever has
//! queued up (up to `max_batch` requests), writes them in one transaction — one fsync — and only
//! then answers each caller. Under load many requests share a commit; alone, a request commits at
//! once (no timer: the batch is whatever arrived while the previous commit was on disk).
//! If a group fails, its requests are retried one by one, so one bad request cannot fail its
//! neighbours.
//!
//! Workers' settlements (a synced change marked done with its links) come through the same
//! task: each runs in its own savepoint inside the group's transaction, so many settle in one
//! commit, none waits for SQLite's write lock behind another (a pooled connection that finds
//! the lock taken sleeps in SQLite's busy handler, 1 ms, then 2, 5, 10 ms …), and one whose
//! lease was lost fails alone.

use std::sync::Arc;

use std::collections::{HashMap, HashSet};

use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::links::Settlement;
use super::model::{Appended, ChangeId, NewChange, Watermark};
use super::{now_ms, JournalError, JournalStats};

pub(super) type Reply = oneshot::Sender<Result<Vec<Appended>, JournalError>>;

pub(super) enum Message {
    Append(Request),
    Settle(SettleRequest),
    /// Finish everything queued before this message, close the connection, then ack.
    Stop(oneshot::Sender<()>),
}

pub(super) struct Request {
    pub changes: Vec<NewChange>,
    /// Each change's snapshot as JSON text, made by the caller: serialising is the costliest
    /// part of a row, and this task is alone while callers are many.
    pub snapshots: Vec<String>,
    pub watermark: Option<Watermark>,
    pub reply: Reply,
}

/// [`super::Journal::settle`]'s work, done by the writer.
pub(super) struct SettleRequest {
    pub changes: Vec<ChangeId>,
    pub owner: String,
    pub settlement: Settlement,
    /// (connector, object, record id) whose open dead letters are superseded.
    pub supersede: Option<(String, String, String)>,
    pub reply: oneshot::Sender<Result<(), JournalError>>,
}

pub(super) async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Message>,
    max_batch: usize,
    stats: Arc<JournalStats>,
    wakers: Arc<super::Wakers>,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch.min(4096));
    let mut settles: Vec<SettleRequest> = Vec::new();
    let mut stops: Vec<oneshot::Sender<()>> = Vec::new();
    // A settlement that did not fit in the last group: the first of the next.
    let mut carried: Option<Message> = None;
    loop {
        let first = match carried.take() {
            Some(message) => message,
            None => match rx.recv().await {
                Some(message) => message,
                None => break,
            },
        };
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Append(request) => batch.push(request),
                Message::Settle(request) if settles.len() >= max_batch.min(SETTLES_PER_GROUP) => {
                    carried = Some(Message::Settle(request));
                    break;
                }
                Message::Settle(request) => settles.push(request),
                Message::Stop(ack) => {
                    stops.push(ack);
                    break;
                }
            }
            if batch.len() + settles.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() || !settles.is_empty() {
            commit(&mut conn, &mut batch, &mut settles, &stats, &wakers).await;
        }
        if !stops.is_empty() {
            break;
        }
    }
    // Anything sent after the stop is refused: its caller sees `WriterStopped`.
    rx.close();
    while let Ok(message) = rx.try_recv() {
        if let Message::Stop(ack) = message {
            stops.push(ack);
        }
    }
    if let Err(error) = conn.close().await {
        tracing::warn!(%error, "closing the journal writer's connection failed");
    }
    for ack in stops {
        let _ = ack.send(());
    }
}

/// Settlements per group: each is a few statements, so a group of them holds the write lock
/// (and the appends queued behind it) for a while; this keeps a group's commit to milliseconds
/// and lets the first settlements of a burst commit without waiting for the last.
const SETTLES_PER_GROUP: usize = 64;

/// Rows per multi-row INSERT: 11 parameters a row stays far below SQLite's 32,766 limit.
const ROWS_PER_STATEMENT: usize = 256;

/// Write one group in one transaction and answer every request in it.
///
/// The happy path is a handful of statements for the whole group. If the group fails, each of its
/// requests is retried alone, so one bad request cannot take its neighbours down with it.
async fn commit(
    conn: &mut SqliteConnection,
    batch: &mut Vec<Request>,
    settles: &mut Vec<SettleRequest>,
    stats: &JournalStats,
    wakers: &super::Wakers,
) {
    type Results = (
        Vec<Result<Vec<Appended>, JournalError>>,
        Vec<Result<(), JournalError>>,
    );
    let (appended, settled): Results = match write_group(conn, batch, settles).await {
        Ok((appended, settled)) => {
            stats.commits.inc();
            (appended.into_iter().map(Ok).collect(), settled)
        }
        Err(error) if batch.len() + settles.len() > 1 => {
            tracing::warn!(%error, requests = batch.len() + settles.len(), "group commit failed; retrying each request alone");
            let mut appended = Vec::with_capacity(batch.len());
            for request in batch.iter() {
                appended.push(
                    match write_group(conn, std::slice::from_ref(request), &[]).await {
                        Ok((mut one, _)) => {
                            stats.commits.inc();
                            Ok(one.pop().unwrap_or_default())
                        }
                        Err(error) => {
                            tracing::error!(%error, "journal commit failed");
                            Err(JournalError::CommitFailed(Arc::new(error)))
                        }
                    },
                );
            }
            let mut settled = Vec::with_capacity(settles.len());
            for request in settles.iter() {
                settled.push(
                    match write_group(conn, &[], std::slice::from_ref(request)).await {
                        Ok((_, mut one)) => {
                            stats.commits.inc();
                            one.pop().unwrap_or(Ok(()))
                        }
                        Err(error) => {
                            tracing::error!(%error, "journal commit failed");
                            Err(JournalError::CommitFailed(Arc::new(error)))
                        }
                    },
                );
            }
            (appended, settled)
        }
        Err(error) => {
            tracing::error!(%error, "journal commit failed");
            let error = Arc::new(error);
            (
                batch
                    .iter()
                    .map(|_| Err(JournalError::CommitFailed(error.clone())))
                    .collect(),
                settles
                    .iter()
                    .map(|_| Err(JournalError::CommitFailed(error.clone())))
                    .collect(),
            )
        }
    };
    for appended in appended.iter().flatten() {
        stats.committed_requests.inc();
        for appended in appended {
            match appended {
                Appended::New(_) => stats.appended.inc(),
                Appended::Duplicate(_) => stats.duplicates.inc(),
            };
        }
    }
    for _ in settled.iter().flatten() {
        stats.committed_requests.inc();
    }
    // Every Ok below is durable: wake the workers for the new changes, then answer.
    wakers.wake(batch.iter().zip(&appended).flat_map(|(request, result)| {
        let results = result.as_deref().unwrap_or_default();
        request
            .changes
            .iter()
            .zip(results)
            .filter(|(_, appended)| matches!(appended, Appended::New(_)))
            .map(|(change, _)| (change.connector.as_str(), change.object.as_str()))
    }));
    for (request, result) in batch.drain(..).zip(appended) {
        let _ = request.reply.send(result);
    }
    for (request, result) in settles.drain(..).zip(settled) {
        let _ = request.reply.send(result);
    }
}

/// One transaction for `requests` and `settles`; on error it is rolled back and nothing is
/// kept. A settlement that fails (its lease was lost) is rolled back to its savepoint and
/// answered with its error; the others still commit.
async fn write_group(
    conn: &mut SqliteConnection,
    requests: &[Request],
    settles: &[SettleRequest],
) -> Result<(Vec<Vec<Appended>>, Vec<Result<(), JournalError>>), sqlx::Error> {
    // IMMEDIATE takes the write lock up front, so the busy timeout applies here and not to a
    // half-done transaction.
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let written = async {
        let now = now_ms();
        let changes: Vec<(&NewChange, &str)> = requests
            .iter()
            .flat_map(|r| r.changes.iter().zip(r.snapshots.iter().map(String::as_str)))
            .collect();
        let mut appended = if changes.is_empty() {
            Vec::new().into_iter()
        } else {
            insert_changes(conn, &changes, now).await?.into_iter()
        };
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            results.push(appended.by_ref().take(request.changes.len()).collect());
            if let Some(mark) = &request.watermark {
                advance_watermark(conn, mark).await?;
            }
        }
        let mut settled = Vec::with_capacity(settles.len());
        for request in settles {
            sqlx::query("SAVEPOINT settle").execute(&mut *conn).await?;
            let supersede = request
                .supersede
                .as_ref()
                .map(|(c, o, r)| (c.as_str(), o.as_str(), r.as_str()));
            let result = super::links::settle_in(
                conn,
                &request.changes,
                &request.owner,
                &request.settlement,
                supersede,
                now,
            )
            .await;
            if result.is_err() {
                sqlx::query("ROLLBACK TO settle")
                    .execute(&mut *conn)
                    .await?;
            }
            sqlx::query("RELEASE settle").execute(&mut *conn).await?;
            settled.push(result);
        }
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        Ok((results, settled))
    }
    .await;
    if written.is_err() {
        // Leave the connection clean for the next group.
        if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
            tracing::debug!(%rollback, "rollback after a failed commit");
        }
    }
    written
}

/// Insert every change (duplicates by dedupe key do nothing) and say, in input order, which were
/// new and which already existed — including repeats within `changes` itself.
async fn insert_changes(
    conn: &mut SqliteConnection,
    changes: &[(&NewChange, &str)],
    now: i64,
) -> Result<Vec<Appended>, sqlx::Error> {
    let mut inserted: HashMap<String, i64> = HashMap::with_capacity(changes.len());
    for chunk in changes.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO changes (connector, object, record_id, op, snapshot, source_modified_at, \
             origin, received_at, dedupe_key, next_attempt_at, updated_at) ",
        );
        query.push_values(chunk, |mut row, (change, snapshot)| {
            row.push_bind(&change.connector)
                .push_bind(&change.object)
                .push_bind(&change.record_id)
                .push_bind(change.op.as_str())
                .push_bind(*snapshot)
                .push_bind(change.source_modified_at)
                .push_bind(change.origin.as_str())
                .push_bind(now)
                .push_bind(&change.dedupe_key)
                .push_bind(now)
                .push_bind(now);
        });
        query.push(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key");
        let rows: Vec<(i64, String)> = query.build_query_as().fetch_all(&mut *conn).await?;
        inserted.extend(rows.into_iter().map(|(id, key)| (key, id)));
    }
    // Keys that were already stored before this group.
    let missing: Vec<&str> = changes
        .iter()
        .map(|(c, _)| c.dedupe_key.as_str())
        .filter(|k| !inserted.contains_key(*k))
        .collect();
    let mut existing: HashMap<String, i64> = HashMap::with_capacity(missing.len());
    for chunk in missing.chunks(ROWS_PER_STATEMENT) {
        let mut query =
            QueryBuilder::<Sqlite>::new("SELECT dedupe_key, id FROM changes WHERE dedupe_key IN (");
        let mut keys = query.separated(", ");
        for key in chunk {
            keys.push_bind(*key);
        }
        query.push(")");
        let rows: Vec<(String, i64)> = query.build_query_as().fetch_all(&mut *conn).await?;
        existing.extend(rows);
    }
    let mut first_seen: HashSet<&str> = HashSet::with_capacity(changes.len());
    changes
        .iter()
        .map(|(change, _)| {
            let key = change.dedupe_key.as_str();
            match inserted.get(key) {
                Some(&id) if first_seen.insert(key) => Ok(Appended::New(ChangeId(id))),
                Some(&id) => Ok(Appended::Duplicate(ChangeId(id))),
                None => existing
                    .get(key)
                    .map(|&id| Appended::Duplicate(ChangeId(id)))
                    .ok_or(sqlx::Error::RowNotFound),
            }
        })
        .collect()
}

/// A watermark only moves forward: a late, overlapping poll page cannot rewind it.
async fn advance_watermark(
    conn: &mut SqliteConnection,
    mark: &Watermark,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO watermarks (connector, object, scope, position, last_record_id, updated_at)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (connector, object, scope) DO UPDATE
            SET position = excluded.position,
                last_record_id = excluded.last_record_id,
                updated_at = excluded.updated_at
          WHERE (excluded.position, excluded.last_record_id)
              > (watermarks.position, watermarks.last_record_id)",
    )
    .bind(&mark.connector)
    .bind(&mark.object)
    .bind(&mark.scope)
    .bind(mark.position)
    .bind(&mark.last_record_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
