//! The single journal writer: group commit for ingest.
//!
//! Every webhook handler and poller hands its changes to this one task. It takes whatever has
//! queued up (up to `max_batch` requests), writes them in one transaction — one fsync — and only
//! then answers each caller. Under load many requests share a commit; alone, a request commits at
//! once (no timer: the batch is whatever arrived while the previous commit was on disk).
//! If a group fails, its requests are retried one by one, so one bad request cannot fail its
//! neighbours.

use std::sync::Arc;

use std::collections::{HashMap, HashSet};

use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::model::{Appended, ChangeId, NewChange, Watermark};
use super::{now_ms, JournalError, JournalStats};

pub(super) type Reply = oneshot::Sender<Result<Vec<Appended>, JournalError>>;

pub(super) enum Message {
    Append(Request),
    /// Finish everything queued before this message, close the connection, then ack.
    Stop(oneshot::Sender<()>),
}

pub(super) struct Request {
    pub changes: Vec<NewChange>,
    pub watermark: Option<Watermark>,
    pub reply: Reply,
}

pub(super) async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Message>,
    max_batch: usize,
    stats: Arc<JournalStats>,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch.min(4096));
    let mut stops: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Append(request) => batch.push(request),
                Message::Stop(ack) => {
                    stops.push(ack);
                    break;
                }
            }
            if batch.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            commit(&mut conn, &mut batch, &stats).await;
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

/// Rows per multi-row INSERT: 11 parameters a row stays far below SQLite's 32,766 limit.
const ROWS_PER_STATEMENT: usize = 256;

/// Write one group in one transaction and answer every request in it.
///
/// The happy path is a handful of statements for the whole group. If the group fails, each of its
/// requests is retried alone, so one bad request cannot take its neighbours down with it.
async fn commit(conn: &mut SqliteConnection, batch: &mut Vec<Request>, stats: &JournalStats) {
    let results: Vec<Result<Vec<Appended>, JournalError>> = match write_group(conn, batch).await {
        Ok(results) => {
            stats.commits.inc();
            results.into_iter().map(Ok).collect()
        }
        Err(error) if batch.len() > 1 => {
            tracing::warn!(%error, requests = batch.len(), "group commit failed; retrying each request alone");
            let mut results = Vec::with_capacity(batch.len());
            for request in batch.iter() {
                results.push(
                    match write_group(conn, std::slice::from_ref(request)).await {
                        Ok(mut one) => {
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
            results
        }
        Err(error) => {
            tracing::error!(%error, "journal commit failed");
            vec![Err(JournalError::CommitFailed(Arc::new(error)))]
        }
    };
    for appended in results.iter().flatten() {
        stats.committed_requests.inc();
        for appended in appended {
            match appended {
                Appended::New(_) => stats.appended.inc(),
                Appended::Duplicate(_) => stats.duplicates.inc(),
            };
        }
    }
    // Answer only now: every Ok below is durable.
    for (request, result) in batch.drain(..).zip(results) {
        let _ = request.reply.send(result);
    }
}

/// One transaction for `requests`; on error it is rolled back and nothing is kept.
async fn write_group(
    conn: &mut SqliteConnection,
    requests: &[Request],
) -> Result<Vec<Vec<Appended>>, sqlx::Error> {
    // IMMEDIATE takes the write lock up front, so the busy timeout applies here and not to a
    // half-done transaction.
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let written = async {
        let changes: Vec<&NewChange> = requests.iter().flat_map(|r| &r.changes).collect();
        let mut appended = insert_changes(conn, &changes, now_ms()).await?.into_iter();
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            results.push(appended.by_ref().take(request.changes.len()).collect());
            if let Some(mark) = &request.watermark {
                advance_watermark(conn, mark).await?;
            }
        }
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        Ok(results)
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
    changes: &[&NewChange],
    now: i64,
) -> Result<Vec<Appended>, sqlx::Error> {
    let mut inserted: HashMap<String, i64> = HashMap::with_capacity(changes.len());
    for chunk in changes.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO changes (connector, object, record_id, op, snapshot, source_modified_at, \
             origin, received_at, dedupe_key, next_attempt_at, updated_at) ",
        );
        query.push_values(chunk, |mut row, change| {
            row.push_bind(&change.connector)
                .push_bind(&change.object)
                .push_bind(&change.record_id)
                .push_bind(change.op.as_str())
                .push_bind(change.snapshot.to_string())
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
        .map(|c| c.dedupe_key.as_str())
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
        .map(|change| {
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
