//! The durable change journal on SQLite: what was observed, what is owed, what failed.
//!
//! Ingest appends through one group-committing writer ([`writer`]); workers claim due changes by
//! lease and settle them ([`queue`]). Nothing is acknowledged to a sender before its row commits.

mod dead_letters;
mod history;
mod links;
mod model;
mod queue;
mod runs;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use dead_letters::{
    BulkReplay, DeadLetter, DeadLetterChange, DeadLetterFilter, DeadLetterStatus, ReplayError,
    MAX_DEAD_LETTER_PAGE,
};
pub use history::{Backlog, BacklogGroup, HistoryEntry, OpenLetters};
pub use links::{Link, Settlement, Synced, Unsettled};
pub use model::{
    Appended, Change, ChangeId, ChangeOp, ChangeStatus, DeadLetterId, NewChange, NewDeadLetter,
    Origin, Watermark,
};
pub use queue::{Objects, TakenOver};
pub use runs::{Run, RunCounts, StartRunError};

use crate::config::{JournalSettings, StorageSettings, Synchronous};

/// The migrations in `migrations/`, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("invalid storage URL `{url}`: {source}")]
    Url {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create the database directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the journal commit failed: {0}")]
    CommitFailed(#[source] Arc<sqlx::Error>),
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the journal writer has stopped")]
    WriterStopped,
    #[error("change {0} is no longer leased to this worker")]
    LeaseLost(ChangeId),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
}

/// Counters the writer keeps; `/metrics` registers the same handles.
#[derive(Debug, Default, Clone)]
pub struct JournalStats {
    /// Transactions committed by the writer.
    pub commits: Counter,
    /// Append requests those transactions carried (requests / commits = the mean group size).
    pub committed_requests: Counter,
    /// Changes stored as new rows.
    pub appended: Counter,
    /// Changes absorbed by their dedupe key.
    pub duplicates: Counter,
}

/// Workers to wake when their kind of change is committed: see [`Journal::subscribe`].
#[derive(Default)]
pub(crate) struct Wakers(std::sync::Mutex<Vec<Waker>>);

struct Waker {
    connector: String,
    except: Vec<String>,
    notify: Arc<tokio::sync::Notify>,
}

impl Wakers {
    /// Wake whoever takes a new change of these (connector, object) pairs.
    pub(crate) fn wake<'a>(&self, new: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let wakers = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if wakers.is_empty() {
            return;
        }
        let mut woken = vec![false; wakers.len()];
        for (connector, object) in new {
            for (waker, woken) in wakers.iter().zip(woken.iter_mut()) {
                if !*woken
                    && waker.connector == connector
                    && !waker.except.iter().any(|o| o == object)
                {
                    waker.notify.notify_one();
                    *woken = true;
                }
            }
        }
    }
}

/// Handle to the journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    pool: SqlitePool,
    writer: mpsc::Sender<writer::Message>,
    stats: Arc<JournalStats>,
    wakers: Arc<Wakers>,
    writer_task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

/// Connection options every connection gets (PRAGMAs are per connection in SQLite).
pub fn connect_options(storage: &StorageSettings) -> Result<SqliteConnectOptions, JournalError> {
    let options =
        SqliteConnectOptions::from_str(&storage.url).map_err(|source| JournalError::Url {
            url: storage.url.clone(),
            source,
        })?;
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match storage.synchronous {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(storage.busy_timeout)
        .foreign_keys(true))
}

impl Journal {
    /// Open (creating the file and its directory if needed) and start the writer.
    /// Does not migrate: see [`Journal::migrate`].
    pub async fn open(
        storage: &StorageSettings,
        settings: &JournalSettings,
    ) -> Result<Journal, JournalError> {
        let options = connect_options(storage)?;
        let file = options.get_filename();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            if file != Path::new(":memory:") {
                std::fs::create_dir_all(dir).map_err(|source| JournalError::Directory {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(storage.max_connections)
            .connect_with(options.clone())
            .await?;
        let conn = sqlx::ConnectOptions::connect(&options).await?;
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let stats = Arc::new(JournalStats::default());
        let max_batch = if settings.group_commit {
            settings.max_batch
        } else {
            1
        };
        let wakers = Arc::new(Wakers::default());
        let task = tokio::spawn(writer::run(
            conn,
            rx,
            max_batch,
            stats.clone(),
            wakers.clone(),
        ));
        Ok(Journal {
            pool,
            writer: tx,
            wakers,
            stats,
            writer_task: Arc::new(std::sync::Mutex::new(Some(task))),
        })
    }

    /// Apply every migration not yet applied.
    pub async fn migrate(&self) -> Result<(), JournalError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Whether every compiled-in migration has been applied successfully.
    pub async fn migrations_current(&self) -> Result<bool, JournalError> {
        let exists: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        if exists == 0 {
            return Ok(false);
        }
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1")
                .fetch_all(&self.pool)
                .await?;
        Ok(MIGRATOR
            .iter()
            .all(|m| m.migration_type.is_down_migration() || applied.contains(&m.version)))
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// A wake-up for each commit that stores a new change of `connector` to an object outside
    /// `except`: an idle worker waits on it beside its timer and claims new work as soon as it
    /// is durable instead of at its next look. A commit while nobody waits leaves one permit,
    /// so none is missed; changes it leaves to others (`except`) never wake it.
    pub fn subscribe(&self, connector: &str, except: &[String]) -> Arc<tokio::sync::Notify> {
        let notify = Arc::new(tokio::sync::Notify::new());
        self.wakers
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Waker {
                connector: connector.to_string(),
                except: except.to_vec(),
                notify: notify.clone(),
            });
        notify
    }

    /// Store one change durably; returns once it is committed.
    pub async fn append(&self, change: NewChange) -> Result<Appended, JournalError> {
        let mut appended = self.append_all(vec![change], None).await?;
        appended.pop().ok_or(JournalError::WriterStopped)
    }

    /// Store changes and (optionally) advance a poll watermark, atomically; returns once committed.
    pub async fn append_all(
        &self,
        changes: Vec<NewChange>,
        watermark: Option<Watermark>,
    ) -> Result<Vec<Appended>, JournalError> {
        let (reply, answer) = oneshot::channel();
        let snapshots = changes.iter().map(|c| c.snapshot.to_string()).collect();
        self.writer
            .send(writer::Message::Append(writer::Request {
                changes,
                snapshots,
                watermark,
                reply,
            }))
            .await
            .map_err(|_| JournalError::WriterStopped)?;
        answer.await.map_err(|_| JournalError::WriterStopped)?
    }

    /// The watermark a poller left, if any.
    pub async fn watermark(
        &self,
        connector: &str,
        object: &str,
        scope: &str,
    ) -> Result<Option<Watermark>, JournalError> {
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT position, last_record_id FROM watermarks
              WHERE connector = ? AND object = ? AND scope = ?",
        )
        .bind(connector)
        .bind(object)
        .bind(scope)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(position, last_record_id)| Watermark {
            connector: connector.to_string(),
            object: object.to_string(),
            scope: scope.to_string(),
            position,
            last_record_id,
        }))
    }

    /// Number of changes in each status (every status present, zero included).
    pub async fn depth_by_status(&self) -> Result<Vec<(ChangeStatus, i64)>, JournalError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM changes GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        ChangeStatus::ALL
            .iter()
            .map(|status| {
                let count = rows
                    .iter()
                    .find(|(s, _)| s == status.as_str())
                    .map_or(0, |(_, n)| *n);
                Ok((*status, count))
            })
            .collect()
    }

    /// When the oldest change still owed (pending or in flight) was received, epoch ms.
    pub async fn oldest_unsettled_received_at(&self) -> Result<Option<i64>, JournalError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(received_at) FROM changes WHERE status IN ('pending', 'in_flight')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// The API calls counted for a connector on a UTC day (`yyyy-mm-dd`):
    /// (calls, vendor's used, vendor's max).
    pub async fn api_usage(
        &self,
        connector: &str,
        day: &str,
    ) -> Result<Option<(u64, Option<u64>, Option<u64>)>, JournalError> {
        let row: Option<(i64, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT calls, server_used, server_max FROM api_usage WHERE connector = ? AND day = ?",
        )
        .bind(connector)
        .bind(day)
        .fetch_optional(&self.pool)
        .await?;
        let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(row.map(|(calls, used, max)| (unsigned(calls), used.map(unsigned), max.map(unsigned))))
    }

    /// Store a connector's count for a day. The count only grows: a stale writer cannot lower it.
    pub async fn save_api_usage(
        &self,
        connector: &str,
        day: &str,
        calls: u64,
        server_used: Option<u64>,
        server_max: Option<u64>,
    ) -> Result<(), JournalError> {
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO api_usage (connector, day, calls, server_used, server_max, updated_at)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (connector, day) DO UPDATE SET
                 calls = MAX(api_usage.calls, excluded.calls),
                 server_used = COALESCE(excluded.server_used, api_usage.server_used),
                 server_max = COALESCE(excluded.server_max, api_usage.server_max),
                 updated_at = excluded.updated_at",
        )
        .bind(connector)
        .bind(day)
        .bind(signed(calls))
        .bind(server_used.map(signed))
        .bind(server_max.map(signed))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stop the writer after it has committed everything queued, then close every connection.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.writer.send(writer::Message::Stop(ack)).await.is_ok() {
            let _ = done.await;
        }
        let task = self.writer_task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        self.pool.close().await;
    }
}

/// Now, in Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
