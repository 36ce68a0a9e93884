//! The single journal writer: group commit for ingest.
//!
//! Every webhook handler and poller hands its changes to this one task. It takes whatever has
//! queued up (up to `max_batch` requests), writes them in one transaction — one fsync — and only
//! then answers each caller. Under load many requests share a commit; alone, a request commits at
//! once (no timer: the batch is whatever arrived while the previous commit was on disk).
//! Each request sits in its own savepoint, so one failing request does not fail its neighbours.

use std::sync::Arc;

use sqlx::{Connection, SqliteConnection};
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

/// Write one group in one transaction and answer every request in it.
async fn commit(conn: &mut SqliteConnection, batch: &mut Vec<Request>, stats: &JournalStats) {
    let isolate = batch.len() > 1;
    let now = now_ms();
    let mut results: Vec<Result<Vec<Appended>, JournalError>> = Vec::with_capacity(batch.len());

    let outcome: Result<(), sqlx::Error> = async {
        // IMMEDIATE takes the write lock up front, so the busy timeout applies here and not to a
        // half-done transaction.
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        for request in batch.iter() {
            if isolate {
                sqlx::query("SAVEPOINT request").execute(&mut *conn).await?;
            }
            match write_request(conn, request, now).await {
                Ok(appended) => {
                    if isolate {
                        sqlx::query("RELEASE request").execute(&mut *conn).await?;
                    }
                    results.push(Ok(appended));
                }
                Err(error) if isolate => {
                    sqlx::query("ROLLBACK TO request")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("RELEASE request").execute(&mut *conn).await?;
                    results.push(Err(error.into()));
                }
                Err(error) => return Err(error),
            }
        }
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        Ok(())
    }
    .await;

    if let Err(error) = outcome {
        // The connection may be inside the failed transaction; leave it clean for the next group.
        if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
            tracing::debug!(%rollback, "rollback after a failed group commit");
        }
        tracing::error!(%error, requests = batch.len(), "journal group commit failed");
        let shared = Arc::new(error);
        results = batch
            .iter()
            .map(|_| Err(JournalError::CommitFailed(shared.clone())))
            .collect();
    } else {
        stats.commits.inc();
        stats.committed_requests.inc_by(batch.len() as u64);
        for appended in results.iter().flatten().flatten() {
            match appended {
                Appended::New(_) => stats.appended.inc(),
                Appended::Duplicate(_) => stats.duplicates.inc(),
            };
        }
    }
    // Answer only now: the group is durable (or definitively failed).
    for (request, result) in batch.drain(..).zip(results) {
        let _ = request.reply.send(result);
    }
}

async fn write_request(
    conn: &mut SqliteConnection,
    request: &Request,
    now: i64,
) -> Result<Vec<Appended>, sqlx::Error> {
    let mut appended = Vec::with_capacity(request.changes.len());
    for change in &request.changes {
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO changes (connector, object, record_id, op, snapshot, source_modified_at,
                                  origin, received_at, dedupe_key, next_attempt_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (dedupe_key) DO NOTHING
             RETURNING id",
        )
        .bind(&change.connector)
        .bind(&change.object)
        .bind(&change.record_id)
        .bind(change.op.as_str())
        .bind(change.snapshot.to_string())
        .bind(change.source_modified_at)
        .bind(change.origin.as_str())
        .bind(now)
        .bind(&change.dedupe_key)
        .bind(now)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        appended.push(match inserted {
            Some(id) => Appended::New(ChangeId(id)),
            None => {
                let id: i64 = sqlx::query_scalar("SELECT id FROM changes WHERE dedupe_key = ?")
                    .bind(&change.dedupe_key)
                    .fetch_one(&mut *conn)
                    .await?;
                Appended::Duplicate(ChangeId(id))
            }
        });
    }
    if let Some(mark) = &request.watermark {
        // A watermark only moves forward: a late, overlapping poll page cannot rewind it.
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
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(appended)
}
