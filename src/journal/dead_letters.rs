//! Dead letters as operators see them: listed, inspected, replayed, discarded, superseded.
//!
//! Everything here runs on the pool, not on the ingest writer: these are rare, operator-driven
//! writes, and the writer's group commit is for webhook throughput. A replay never re-sends the
//! failed payload; it appends a fresh change with an empty snapshot so that the sync engine reads
//! the record's current state and plans again (the data may have been fixed since).

use std::fmt;
use std::str::FromStr;

use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::model::{ChangeId, ChangeOp, DeadLetterId, Origin};
use super::{now_ms, Journal, JournalError};

/// Most letters one page returns.
pub const MAX_DEAD_LETTER_PAGE: u32 = 500;

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterStatus {
    /// Waiting for an operator.
    Open,
    /// An operator replayed it: `replay_change_id` is the change that replay appended.
    Replayed,
    /// An operator gave up on it.
    Discarded,
    /// A later change to the same record synced, so this failure no longer matters.
    Superseded,
}

impl DeadLetterStatus {
    pub const ALL: [DeadLetterStatus; 4] = [
        DeadLetterStatus::Open,
        DeadLetterStatus::Replayed,
        DeadLetterStatus::Discarded,
        DeadLetterStatus::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterStatus::Open => "open",
            DeadLetterStatus::Replayed => "replayed",
            DeadLetterStatus::Discarded => "discarded",
            DeadLetterStatus::Superseded => "superseded",
        }
    }
}

impl fmt::Display for DeadLetterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeadLetterStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        DeadLetterStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown dead letter status `{s}`"))
    }
}

/// Which dead letters a listing or a bulk replay covers. Every field narrows; `None` matches all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub flow: Option<String>,
    /// The connector whose write failed (the dead letter's own connector).
    pub connector: Option<String>,
    /// The vendor's error code.
    pub code: Option<String>,
    /// `None` means any status. Defaults to open: what still needs an operator.
    pub status: Option<DeadLetterStatus>,
    /// Last failure at or after this time, epoch milliseconds.
    pub since: Option<i64>,
    /// Last failure strictly before this time, epoch milliseconds: consecutive windows
    /// `[a, b)`, `[b, c)` never count a letter twice.
    pub until: Option<i64>,
}

impl Default for DeadLetterFilter {
    fn default() -> Self {
        Self {
            flow: None,
            connector: None,
            code: None,
            status: Some(DeadLetterStatus::Open),
            since: None,
            until: None,
        }
    }
}

/// The change a dead letter came from: the source record whose sync failed.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterChange {
    pub id: ChangeId,
    pub connector: String,
    pub object: String,
    pub record_id: String,
    pub op: ChangeOp,
    pub origin: Origin,
    pub snapshot: serde_json::Value,
}

/// A row of `dead_letters` with the change it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: DeadLetterId,
    pub flow: Option<String>,
    /// The connector whose write failed.
    pub connector: String,
    pub operation: String,
    /// What was sent (or would have been).
    pub payload: serde_json::Value,
    pub http_status: Option<u16>,
    pub vendor_code: Option<String>,
    pub vendor_message: Option<String>,
    pub attempts: i64,
    /// Epoch milliseconds.
    pub first_failed_at: i64,
    /// Epoch milliseconds.
    pub last_failed_at: i64,
    pub status: DeadLetterStatus,
    /// When it stopped being open, epoch milliseconds.
    pub resolved_at: Option<i64>,
    pub replay_change_id: Option<ChangeId>,
    pub change: DeadLetterChange,
}

/// What a bulk replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkReplay {
    /// Each replayed letter with the change its replay appended, oldest letter first.
    pub replayed: Vec<(DeadLetterId, ChangeId)>,
    /// More open letters matched than the call was allowed to replay.
    pub more: bool,
}

/// Why one dead letter could not be replayed or discarded.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("dead letter {0} does not exist")]
    NotFound(DeadLetterId),
    #[error("dead letter {id} is {status}, not open")]
    NotOpen {
        id: DeadLetterId,
        status: DeadLetterStatus,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl From<sqlx::Error> for ReplayError {
    fn from(error: sqlx::Error) -> Self {
        ReplayError::Journal(error.into())
    }
}

const SELECT_LETTER: &str = "SELECT d.id, d.change_id, d.flow, d.connector, d.operation, d.payload,
        d.http_status, d.vendor_code, d.vendor_message, d.attempts, d.first_failed_at,
        d.last_failed_at, d.status, d.resolved_at, d.replay_change_id,
        c.connector AS change_connector, c.object, c.record_id, c.op, c.origin, c.snapshot
   FROM dead_letters d JOIN changes c ON c.id = d.change_id";

impl Journal {
    /// One page of dead letters, newest first, and the cursor for the next page (`None` on the
    /// last page).
    ///
    /// Keyset paging on the id: letters inserted while a client pages get higher ids, so they
    /// never shift the pages still to come. `limit` is clamped to `1..=MAX_DEAD_LETTER_PAGE`.
    pub async fn list_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        cursor: Option<DeadLetterId>,
        limit: u32,
    ) -> Result<(Vec<DeadLetter>, Option<DeadLetterId>), JournalError> {
        let limit = limit.clamp(1, MAX_DEAD_LETTER_PAGE);
        let mut query = QueryBuilder::<Sqlite>::new(SELECT_LETTER);
        push_filter(&mut query, filter);
        if let Some(cursor) = cursor {
            query.push(" AND d.id < ").push_bind(cursor.0);
        }
        // One more than asked tells whether a next page exists without a second query.
        query
            .push(" ORDER BY d.id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = query.build().fetch_all(self.pool()).await?;
        let mut letters = rows
            .iter()
            .map(letter_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if letters.len() > limit as usize {
            letters.truncate(limit as usize);
            letters.last().map(|l| l.id)
        } else {
            None
        };
        Ok((letters, next))
    }

    /// One dead letter with its change.
    pub async fn dead_letter_by_id(
        &self,
        id: DeadLetterId,
    ) -> Result<Option<DeadLetter>, JournalError> {
        let row = sqlx::query(&format!("{SELECT_LETTER} WHERE d.id = ?"))
            .bind(id.0)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(letter_from_row).transpose()
    }

    /// Replay an open dead letter: append a change for the same record that makes the sync
    /// engine read fresh state, and mark the letter replayed, atomically.
    pub async fn replay_dead_letter(&self, id: DeadLetterId) -> Result<ChangeId, ReplayError> {
        // IMMEDIATE: the write lock is taken (and waited for) up front, never upgraded midway.
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let change = replay_in(&mut tx, id, now_ms()).await?;
        tx.commit().await?;
        Ok(change)
    }

    /// Replay every open letter matching `filter` (its status is ignored: only open letters can
    /// be replayed), oldest first, at most `max` of them, in one transaction.
    ///
    /// Oldest first so that the new changes to one record are appended in the order the
    /// original failures happened.
    pub async fn replay_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        max: u32,
    ) -> Result<BulkReplay, JournalError> {
        let filter = DeadLetterFilter {
            status: Some(DeadLetterStatus::Open),
            ..filter.clone()
        };
        let now = now_ms();
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT d.id FROM dead_letters d JOIN changes c ON c.id = d.change_id",
        );
        push_filter(&mut query, &filter);
        query
            .push(" ORDER BY d.id LIMIT ")
            .push_bind(i64::from(max) + 1);
        let mut ids: Vec<i64> = query.build_query_scalar().fetch_all(&mut *tx).await?;
        let more = ids.len() > max as usize;
        ids.truncate(max as usize);
        let mut replayed = Vec::with_capacity(ids.len());
        for id in ids {
            let id = DeadLetterId(id);
            // Selected as open under this transaction's write lock: nobody can resolve it first.
            let change = replay_in(&mut tx, id, now).await.map_err(|e| match e {
                ReplayError::Journal(e) => e,
                other => {
                    JournalError::Corrupt(format!("bulk replay lost a selected letter: {other}"))
                }
            })?;
            replayed.push((id, change));
        }
        tx.commit().await?;
        Ok(BulkReplay { replayed, more })
    }

    /// Give up on an open dead letter.
    pub async fn discard_dead_letter(&self, id: DeadLetterId) -> Result<(), ReplayError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(
            "UPDATE dead_letters SET status = 'discarded', resolved_at = ?
              WHERE id = ? AND status = 'open'",
        )
        .bind(now_ms())
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_open(&mut tx, id).await);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Mark the open dead letters of one source record superseded: a later change to that record
    /// synced, so their failures are history. Returns how many were marked.
    pub async fn supersede_dead_letters(
        &self,
        connector: &str,
        object: &str,
        record_id: &str,
    ) -> Result<u64, JournalError> {
        let mut conn = self.pool().acquire().await?;
        Ok(supersede_in(&mut conn, (connector, object, record_id), now_ms()).await?)
    }
}

/// Mark a record's open letters superseded, inside the caller's transaction (the dispatcher
/// does it in the one that settles the record's successful change).
pub(super) async fn supersede_in(
    conn: &mut SqliteConnection,
    (connector, object, record_id): (&str, &str, &str),
    now: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE dead_letters SET status = 'superseded', resolved_at = ?
          WHERE status = 'open'
            AND change_id IN (SELECT id FROM changes
                               WHERE connector = ? AND object = ? AND record_id = ?)",
    )
    .bind(now)
    .bind(connector)
    .bind(object)
    .bind(record_id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// The replay of one letter inside the caller's transaction.
async fn replay_in(
    conn: &mut SqliteConnection,
    id: DeadLetterId,
    now: i64,
) -> Result<ChangeId, ReplayError> {
    let change_id: Option<i64> = sqlx::query_scalar(
        "UPDATE dead_letters SET status = 'replayed', resolved_at = ?
          WHERE id = ? AND status = 'open'
      RETURNING change_id",
    )
    .bind(now)
    .bind(id.0)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(change_id) = change_id else {
        return Err(not_open(conn, id).await);
    };
    // The uuid keeps a second replay of the same letter (after it failed again) from being
    // absorbed as a duplicate of the first.
    let dedupe_key = format!("replay/{id}/{}", uuid::Uuid::new_v4());
    let replay: i64 = sqlx::query_scalar(
        "INSERT INTO changes (connector, object, record_id, op, snapshot, source_modified_at,
                              origin, received_at, dedupe_key, status, next_attempt_at,
                              updated_at)
         SELECT connector, object, record_id, op, '{}', NULL, ?, ?, ?, 'pending', ?, ?
           FROM changes WHERE id = ?
      RETURNING id",
    )
    .bind(Origin::Replay.as_str())
    .bind(now)
    .bind(&dedupe_key)
    .bind(now)
    .bind(now)
    .bind(change_id)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("UPDATE dead_letters SET replay_change_id = ? WHERE id = ?")
        .bind(replay)
        .bind(id.0)
        .execute(&mut *conn)
        .await?;
    Ok(ChangeId(replay))
}

/// Why an update that required an open letter touched nothing.
async fn not_open(conn: &mut SqliteConnection, id: DeadLetterId) -> ReplayError {
    let status: Result<Option<String>, _> =
        sqlx::query_scalar("SELECT status FROM dead_letters WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&mut *conn)
            .await;
    match status {
        Err(error) => error.into(),
        Ok(None) => ReplayError::NotFound(id),
        Ok(Some(status)) => match status.parse() {
            Ok(status) => ReplayError::NotOpen { id, status },
            Err(message) => JournalError::Corrupt(message).into(),
        },
    }
}

/// Append the filter's conditions as a `WHERE` clause (always present, so callers can add
/// `AND …`).
fn push_filter(query: &mut QueryBuilder<'_, Sqlite>, filter: &DeadLetterFilter) {
    query.push(" WHERE 1 = 1");
    if let Some(flow) = &filter.flow {
        query.push(" AND d.flow = ").push_bind(flow.clone());
    }
    if let Some(connector) = &filter.connector {
        query
            .push(" AND d.connector = ")
            .push_bind(connector.clone());
    }
    if let Some(code) = &filter.code {
        query.push(" AND d.vendor_code = ").push_bind(code.clone());
    }
    if let Some(status) = filter.status {
        query.push(" AND d.status = ").push_bind(status.as_str());
    }
    if let Some(since) = filter.since {
        query.push(" AND d.last_failed_at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" AND d.last_failed_at < ").push_bind(until);
    }
}

fn letter_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<DeadLetter, JournalError> {
    let json = |name: &str| -> Result<serde_json::Value, JournalError> {
        let text: String = row.try_get(name)?;
        serde_json::from_str(&text)
            .map_err(|e| JournalError::Corrupt(format!("dead letter {name} is not JSON: {e}")))
    };
    let text = |name: &str| -> Result<String, JournalError> { Ok(row.try_get(name)?) };
    let http_status: Option<i64> = row.try_get("http_status")?;
    let http_status = http_status
        .map(|s| {
            u16::try_from(s)
                .map_err(|_| JournalError::Corrupt(format!("dead letter HTTP status {s}")))
        })
        .transpose()?;
    let replay_change_id: Option<i64> = row.try_get("replay_change_id")?;
    Ok(DeadLetter {
        id: DeadLetterId(row.try_get("id")?),
        flow: row.try_get("flow")?,
        connector: text("connector")?,
        operation: text("operation")?,
        payload: json("payload")?,
        http_status,
        vendor_code: row.try_get("vendor_code")?,
        vendor_message: row.try_get("vendor_message")?,
        attempts: row.try_get("attempts")?,
        first_failed_at: row.try_get("first_failed_at")?,
        last_failed_at: row.try_get("last_failed_at")?,
        status: text("status")?.parse().map_err(JournalError::Corrupt)?,
        resolved_at: row.try_get("resolved_at")?,
        replay_change_id: replay_change_id.map(ChangeId),
        change: DeadLetterChange {
            id: ChangeId(row.try_get("change_id")?),
            connector: text("change_connector")?,
            object: text("object")?,
            record_id: text("record_id")?,
            op: text("op")?.parse().map_err(JournalError::Corrupt)?,
            origin: text("origin")?.parse().map_err(JournalError::Corrupt)?,
            snapshot: json("snapshot")?,
        },
    })
}
