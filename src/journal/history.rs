//! A record's change history, newest first: what arrived, and what became of it.

use serde_json::Value;
use sqlx::Row;

use super::model::ChangeId;
use super::{Journal, JournalError};

/// One change to a record, as the operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub id: ChangeId,
    pub op: String,
    pub origin: String,
    pub received_at: i64,
    pub source_modified_at: Option<i64>,
    pub status: String,
    /// `created`, `written`, `echo`, `stale`, `conflict`, … once settled.
    pub outcome: Option<String>,
    /// Per flow: the outcome and its detail (conflicts with both values, reasons).
    pub detail: Option<Value>,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// The dead letter it left, if any: (id, status).
    pub dead_letter: Option<(i64, String)>,
}

impl Journal {
    /// The changes to one record, newest first, `limit` at a time; `before` pages on (ids only
    /// grow, so a page is stable while new changes arrive).
    pub async fn record_history(
        &self,
        connector: &str,
        object: &str,
        record_id: &str,
        before: Option<ChangeId>,
        limit: u32,
    ) -> Result<(Vec<HistoryEntry>, Option<ChangeId>), JournalError> {
        let rows = sqlx::query(
            "SELECT c.id, c.op, c.origin, c.received_at, c.source_modified_at, c.status,
                    c.outcome, c.detail, c.attempts, c.last_error,
                    d.id AS letter_id, d.status AS letter_status
               FROM changes c LEFT JOIN dead_letters d ON d.change_id = c.id
              WHERE c.connector = ? AND c.object = ? AND c.record_id = ? AND c.id < ?
              ORDER BY c.id DESC
              LIMIT ?",
        )
        .bind(connector)
        .bind(object)
        .bind(record_id)
        .bind(before.map_or(i64::MAX, |id| id.0))
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let detail: Option<String> = row.try_get("detail")?;
            let letter_id: Option<i64> = row.try_get("letter_id")?;
            let letter_status: Option<String> = row.try_get("letter_status")?;
            entries.push(HistoryEntry {
                id: ChangeId(row.try_get("id")?),
                op: row.try_get("op")?,
                origin: row.try_get("origin")?,
                received_at: row.try_get("received_at")?,
                source_modified_at: row.try_get("source_modified_at")?,
                status: row.try_get("status")?,
                outcome: row.try_get("outcome")?,
                detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
                attempts: row.try_get("attempts")?,
                last_error: row.try_get("last_error")?,
                dead_letter: letter_id.zip(letter_status),
            });
        }
        let next = if entries.len() > limit as usize {
            entries.truncate(limit as usize);
            entries.last().map(|e| e.id)
        } else {
            None
        };
        Ok((entries, next))
    }
}

/// The backlog of one side of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    pub pending: i64,
    pub in_flight: i64,
    /// When the oldest unsettled change was received, epoch ms.
    pub oldest_received_at: Option<i64>,
}

impl Journal {
    /// Unsettled changes from one connector's object.
    pub async fn backlog(&self, connector: &str, object: &str) -> Result<Backlog, JournalError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(status = 'pending'), 0) AS pending,
                    COALESCE(SUM(status = 'in_flight'), 0) AS in_flight,
                    MIN(received_at) AS oldest
               FROM changes
              WHERE connector = ? AND object = ? AND status IN ('pending', 'in_flight')",
        )
        .bind(connector)
        .bind(object)
        .fetch_one(self.pool())
        .await?;
        Ok(Backlog {
            pending: row.try_get("pending")?,
            in_flight: row.try_get("in_flight")?,
            oldest_received_at: row.try_get("oldest")?,
        })
    }

    /// Open dead letters of a flow.
    pub async fn open_dead_letters(&self, flow: &str) -> Result<i64, JournalError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM dead_letters WHERE flow = ? AND status = 'open'",
        )
        .bind(flow)
        .fetch_one(self.pool())
        .await?)
    }
}

/// The unsettled changes of one connector's object in one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacklogGroup {
    pub connector: String,
    pub object: String,
    /// `pending` or `in_flight`.
    pub status: String,
    pub count: i64,
    /// When the oldest of them was received, epoch ms.
    pub oldest_received_at: i64,
}

/// Open dead letters of one flow refused by one connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenLetters {
    /// `None` for a letter no flow was named on.
    pub flow: Option<String>,
    pub connector: String,
    pub count: i64,
}

impl Journal {
    /// Every connector's and object's unsettled changes, for `/metrics`.
    ///
    /// Only unsettled rows are read (the status index finds them), so a scrape costs the size
    /// of the backlog, not of the whole history.
    pub async fn backlog_by_object(&self) -> Result<Vec<BacklogGroup>, JournalError> {
        let rows = sqlx::query(
            "SELECT connector, object, status, COUNT(*) AS count, MIN(received_at) AS oldest
               FROM changes
              WHERE status IN ('pending', 'in_flight')
              GROUP BY connector, object, status",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(BacklogGroup {
                    connector: row.try_get("connector")?,
                    object: row.try_get("object")?,
                    status: row.try_get("status")?,
                    count: row.try_get("count")?,
                    oldest_received_at: row.try_get("oldest")?,
                })
            })
            .collect()
    }

    /// Open dead letters by flow and the connector that refused, for `/metrics`: unlike a
    /// counter it survives restarts and falls when letters are replayed, discarded or superseded.
    pub async fn open_dead_letters_by_flow(&self) -> Result<Vec<OpenLetters>, JournalError> {
        let rows = sqlx::query(
            "SELECT flow, connector, COUNT(*) AS count
               FROM dead_letters
              WHERE status = 'open'
              GROUP BY flow, connector",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OpenLetters {
                    flow: row.try_get("flow")?,
                    connector: row.try_get("connector")?,
                    count: row.try_get("count")?,
                })
            })
            .collect()
    }
}
