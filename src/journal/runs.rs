//! Scheduled runs (`sync_runs`): one row per run with the figures an operator compares between
//! runs, and the rule that two runs of one flow never overlap.
//!
//! The partial unique index on `(flow) WHERE status = 'running'` is the lock: starting a run is
//! an insert that fails while another is running. A run says it is alive every few seconds
//! (`heartbeat_at`); one that stopped saying so died with its process, and the next start marks
//! it interrupted and gives the changes it had claimed back to the queue at once.

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use utoipa::ToSchema;

use super::{now_ms, Journal, JournalError};

/// What a run did, as counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct RunCounts {
    /// Changes the run took from the journal (coalesced ones included).
    pub seen: i64,
    /// Changes whose write landed: created, written, linked, deleted, unlinked.
    pub written: i64,
    /// Changes that needed no write: echo, stale, conflict lost, outside the filter.
    pub skipped: i64,
    /// Changes that failed: to be retried, or dead-lettered.
    pub failed: i64,
    /// Vendor calls made by the run (polls included).
    pub api_calls: i64,
}

/// One row of `sync_runs`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Run {
    pub id: i64,
    pub flow: String,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub status: String,
    /// `schedule`, `api`, `start` (catching up at start) or `cli`.
    pub trigger: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    #[serde(flatten)]
    pub counts: RunCounts,
    /// Where the run is: its phase and each poll's figures.
    pub checkpoint: Option<Value>,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartRunError {
    #[error("run {0} of this flow is still running")]
    Running(i64),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl From<sqlx::Error> for StartRunError {
    fn from(error: sqlx::Error) -> Self {
        StartRunError::Journal(error.into())
    }
}

const COLUMNS: &str = "id, flow, status, trigger, started_at, ended_at, seen, written, skipped, \
                       failed, api_calls, checkpoint, error";

impl Journal {
    /// Start a run of `flow` owned by `owner`, unless one is running.
    ///
    /// A run left `running` by a dead process is not this function's concern: the daemon owns
    /// the journal and marks such runs interrupted when it starts (`Journal::take_over`), so a
    /// running row here is always a live run of this process.
    pub async fn start_run(
        &self,
        flow: &str,
        owner: &str,
        trigger: &str,
    ) -> Result<i64, StartRunError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let inserted = sqlx::query_scalar::<_, i64>(
            "INSERT INTO sync_runs (flow, started_at, status, owner, heartbeat_at, trigger)
             VALUES (?, ?, 'running', ?, ?, ?)
             ON CONFLICT DO NOTHING
             RETURNING id",
        )
        .bind(flow)
        .bind(now)
        .bind(owner)
        .bind(now)
        .bind(trigger)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = inserted else {
            let running: i64 = sqlx::query_scalar(
                "SELECT id FROM sync_runs WHERE flow = ? AND status = 'running'",
            )
            .bind(flow)
            .fetch_one(&mut *tx)
            .await?;
            return Err(StartRunError::Running(running));
        };
        tx.commit().await?;
        Ok(id)
    }

    /// The run is alive; store what it has done so far.
    pub async fn run_progress(
        &self,
        run: i64,
        counts: &RunCounts,
        checkpoint: &Value,
    ) -> Result<(), JournalError> {
        sqlx::query(
            "UPDATE sync_runs
                SET heartbeat_at = ?, seen = ?, written = ?, skipped = ?, failed = ?,
                    api_calls = ?, checkpoint = ?
              WHERE id = ? AND status = 'running'",
        )
        .bind(now_ms())
        .bind(counts.seen)
        .bind(counts.written)
        .bind(counts.skipped)
        .bind(counts.failed)
        .bind(counts.api_calls)
        .bind(checkpoint.to_string())
        .bind(run)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// End the run: `succeeded` or `failed` (with why).
    pub async fn finish_run(
        &self,
        run: i64,
        counts: &RunCounts,
        checkpoint: &Value,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        let now = now_ms();
        sqlx::query(
            "UPDATE sync_runs
                SET status = ?, ended_at = ?, heartbeat_at = ?, seen = ?, written = ?,
                    skipped = ?, failed = ?, api_calls = ?, checkpoint = ?, error = ?
              WHERE id = ? AND status = 'running'",
        )
        .bind(if error.is_some() {
            "failed"
        } else {
            "succeeded"
        })
        .bind(now)
        .bind(now)
        .bind(counts.seen)
        .bind(counts.written)
        .bind(counts.skipped)
        .bind(counts.failed)
        .bind(counts.api_calls)
        .bind(checkpoint.to_string())
        .bind(error)
        .bind(run)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The run was stopped (the daemon is shutting down): the changes it holds go back to the
    /// queue for the next run, in the same transaction.
    pub async fn interrupt_run(
        &self,
        run: i64,
        owner: &str,
        counts: &RunCounts,
        checkpoint: &Value,
    ) -> Result<(), JournalError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE sync_runs
                SET status = 'interrupted', ended_at = ?, heartbeat_at = ?, seen = ?,
                    written = ?, skipped = ?, failed = ?, api_calls = ?, checkpoint = ?,
                    error = 'stopped by a shutdown'
              WHERE id = ? AND status = 'running'",
        )
        .bind(now)
        .bind(now)
        .bind(counts.seen)
        .bind(counts.written)
        .bind(counts.skipped)
        .bind(counts.failed)
        .bind(counts.api_calls)
        .bind(checkpoint.to_string())
        .bind(run)
        .execute(&mut *tx)
        .await?;
        release(&mut tx, owner, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A flow's runs, newest first, `limit` at a time, before run id `before`.
    pub async fn runs(
        &self,
        flow: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Run>, JournalError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM sync_runs WHERE flow = ? AND id < ? ORDER BY id DESC LIMIT ?"
        ))
        .bind(flow)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    pub async fn run(&self, id: i64) -> Result<Option<Run>, JournalError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM sync_runs WHERE id = ?"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    pub async fn last_run(&self, flow: &str) -> Result<Option<Run>, JournalError> {
        Ok(self.runs(flow, None, 1).await?.pop())
    }

    /// The records of `connector`/`object` with a change still pending or in flight.
    pub async fn unsettled_records(
        &self,
        connector: &str,
        object: &str,
    ) -> Result<std::collections::HashSet<String>, JournalError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT record_id FROM changes
              WHERE status IN ('pending', 'in_flight') AND connector = ? AND object = ?",
        )
        .bind(connector)
        .bind(object)
        .fetch_all(self.pool())
        .await?;
        Ok(ids.into_iter().collect())
    }

    /// Keep a reconcile report (JSON); the newest per flow is what the API shows.
    pub async fn save_reconcile_report(
        &self,
        flow: &str,
        started_at: i64,
        report: &Value,
    ) -> Result<i64, JournalError> {
        let id = sqlx::query_scalar(
            "INSERT INTO reconcile_reports (flow, started_at, report) VALUES (?, ?, ?)
             RETURNING id",
        )
        .bind(flow)
        .bind(started_at)
        .bind(report.to_string())
        .fetch_one(self.pool())
        .await?;
        Ok(id)
    }

    /// The newest reconcile report of a flow.
    pub async fn last_reconcile_report(&self, flow: &str) -> Result<Option<Value>, JournalError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT report FROM reconcile_reports WHERE flow = ? ORDER BY id DESC LIMIT 1",
        )
        .bind(flow)
        .fetch_optional(self.pool())
        .await?;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| JournalError::Corrupt(format!("a reconcile report is not JSON: {e}")))
        })
        .transpose()
    }

    /// When the next change of these records is due, if any is pending.
    pub async fn next_due(
        &self,
        connector: &str,
        objects: &[String],
    ) -> Result<Option<i64>, JournalError> {
        let objects = serde_json::to_string(objects).unwrap_or_else(|_| "[]".into());
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM changes
              WHERE status = 'pending' AND connector = ?
                AND object IN (SELECT value FROM json_each(?))",
        )
        .bind(connector)
        .bind(objects)
        .fetch_one(self.pool())
        .await?;
        Ok(due)
    }
}

/// Give the changes a stopped run held back to the queue, due now. Their attempt stays
/// counted: a create among them may have happened, and looks for its marker first.
async fn release(
    tx: &mut sqlx::SqliteConnection,
    owner: &str,
    now: i64,
) -> Result<(), JournalError> {
    sqlx::query(
        "UPDATE changes
            SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                next_attempt_at = ?, updated_at = ?
          WHERE status = 'in_flight' AND lease_owner = ?",
    )
    .bind(now)
    .bind(now)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn run_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Run, JournalError> {
    let checkpoint: Option<String> = row.try_get("checkpoint")?;
    Ok(Run {
        id: row.try_get("id")?,
        flow: row.try_get("flow")?,
        status: row.try_get("status")?,
        trigger: row.try_get("trigger")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        counts: RunCounts {
            seen: row.try_get("seen")?,
            written: row.try_get("written")?,
            skipped: row.try_get("skipped")?,
            failed: row.try_get("failed")?,
            api_calls: row.try_get("api_calls")?,
        },
        checkpoint: checkpoint.and_then(|text| serde_json::from_str(&text).ok()),
        error: row.try_get("error")?,
    })
}
