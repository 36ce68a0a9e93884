//! Claiming and settling changes: the work queue side of the journal.
//!
//! SQLite has no `SKIP LOCKED`; a claim is one atomic `UPDATE … WHERE id IN (SELECT …) RETURNING`,
//! and every settle is conditional on the lease (`WHERE id = ? AND lease_owner = ?`): zero rows
//! means the lease expired and another worker owns the change now.

use std::time::Duration;

use sqlx::Row;

use super::model::{Change, ChangeId, DeadLetterId, NewDeadLetter};
use super::{ms, now_ms, Journal, JournalError};

/// What [`Journal::take_over`] took back.
#[derive(Debug, Default)]
pub struct TakenOver {
    /// Changes that were in flight.
    pub changes: u64,
    /// Runs that were running: (id, flow).
    pub runs: Vec<(i64, String)>,
}

/// Which objects of a connector a claim takes.
#[derive(Debug, Clone, Copy)]
pub enum Objects<'a> {
    All,
    Only(&'a [String]),
    Except(&'a [String]),
}

impl Journal {
    /// Lease up to `limit` due changes to `owner` for `lease`.
    ///
    /// Due: pending with `next_attempt_at` reached, or in flight under an expired lease (its
    /// worker died). Changes to one record come out one at a time and in order: a change is not
    /// claimable while an earlier change to the same record is unsettled.
    pub async fn claim(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Change>, JournalError> {
        self.claim_where(None, Objects::All, owner, limit, lease)
            .await
    }

    /// [`Journal::claim`], of the changes whose source is `connector` only (or of all), of the
    /// objects `objects` selects.
    pub(super) async fn claim_where(
        &self,
        connector: Option<&str>,
        objects: Objects<'_>,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Change>, JournalError> {
        let now = now_ms();
        // Read first, on a pooled connection and outside any write transaction: each object's
        // first due changes, oldest first, seeking in `idx_changes_connector_status_object_id`
        // (work proportional to what is claimed, not to the backlog).
        let connectors = match connector {
            Some(connector) => vec![connector.to_string()],
            None => self.connectors_with_changes().await?,
        };
        let mut candidates: Vec<i64> = Vec::new();
        for connector in &connectors {
            let names: Vec<String> = match objects {
                Objects::Only(list) => list.to_vec(),
                Objects::All => self.objects_unsettled(connector).await?,
                Objects::Except(list) => self
                    .objects_unsettled(connector)
                    .await?
                    .into_iter()
                    .filter(|o| !list.contains(o))
                    .collect(),
            };
            for object in &names {
                for (status, due_column) in [
                    ("pending", "next_attempt_at"),
                    ("in_flight", "lease_expires_at"),
                ] {
                    let ids: Vec<i64> = sqlx::query_scalar(&format!(
                        "SELECT c.id FROM changes c INDEXED BY idx_changes_connector_status_object_id
                          WHERE c.connector = ?1 AND c.status = '{status}' AND c.object = ?2
                            AND c.{due_column} <= ?3
                            AND NOT EXISTS (
                                SELECT 1 FROM changes e
                                 WHERE e.connector = c.connector AND e.object = c.object
                                   AND e.record_id = c.record_id AND e.id < c.id
                                   AND e.status IN ('pending', 'in_flight'))
                          ORDER BY c.id
                          LIMIT ?4"
                    ))
                    .bind(connector)
                    .bind(object)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await?;
                    candidates.extend(ids);
                }
            }
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        candidates.sort_unstable();
        candidates.truncate(limit as usize);
        // Then take them in one short write that checks again that each is still claimable
        // (another claimer may have been quicker): the write lock is held for a few rows only.
        let ids = serde_json::to_string(&candidates).unwrap_or_else(|_| "[]".into());
        let rows = sqlx::query(
            "UPDATE changes
                SET status = 'in_flight', lease_owner = ?1, lease_expires_at = ?2,
                    attempts = attempts + 1, updated_at = ?3
              WHERE id IN (SELECT value FROM json_each(?4))
                AND ((+status = 'pending' AND +next_attempt_at <= ?3)
                  OR (+status = 'in_flight' AND +lease_expires_at <= ?3))
                AND NOT EXISTS (
                    SELECT 1 FROM changes e
                     WHERE e.connector = changes.connector AND e.object = changes.object
                       AND e.record_id = changes.record_id AND e.id < changes.id
                       AND e.status IN ('pending', 'in_flight'))
          RETURNING id, connector, object, record_id, op, snapshot, source_modified_at, origin,
                    received_at, dedupe_key, attempts, lease_expires_at",
        )
        .bind(owner)
        .bind(now + ms(lease))
        .bind(now)
        .bind(ids)
        .fetch_all(self.pool())
        .await?;
        changes_from_rows(&rows)
    }

    /// Connectors that have any change, one index seek each.
    async fn connectors_with_changes(&self) -> Result<Vec<String>, JournalError> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let next: Option<String> = sqlx::query_scalar(
                "SELECT connector FROM changes INDEXED BY idx_changes_connector_status_object_id
                  WHERE connector > ? ORDER BY connector LIMIT 1",
            )
            .bind(&after)
            .fetch_optional(self.pool())
            .await?;
            match next {
                Some(connector) => {
                    after = connector.clone();
                    out.push(connector);
                }
                None => return Ok(out),
            }
        }
    }

    /// Objects of `connector` with a pending or in-flight change, one index seek each.
    async fn objects_unsettled(&self, connector: &str) -> Result<Vec<String>, JournalError> {
        let mut out: Vec<String> = Vec::new();
        for status in ["pending", "in_flight"] {
            let mut after = String::new();
            loop {
                let next: Option<String> = sqlx::query_scalar(
                    "SELECT MIN(object) FROM changes INDEXED BY idx_changes_connector_status_object_id
                      WHERE connector = ? AND status = ? AND object > ?",
                )
                .bind(connector)
                .bind(status)
                .bind(&after)
                .fetch_one(self.pool())
                .await?;
                match next {
                    Some(object) => {
                        after = object.clone();
                        if !out.contains(&object) {
                            out.push(object);
                        }
                    }
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// Take over from a dead process, when this one starts: on SQLite one daemon owns the
    /// database (`app::lock_journal`), so whatever is still leased or running is a dead
    /// process's (killed, or the machine lost). Its runs are marked `interrupted` (a scheduled
    /// one is caught up at once) and its changes are due again now rather than when their
    /// leases run out (`dispatch.lease`, 2 minutes by default). The attempt stays counted, as
    /// for a stopped run: a create among them may have reached the vendor, and looks for its
    /// marker first. One transaction.
    pub async fn take_over(&self) -> Result<TakenOver, JournalError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let runs: Vec<(i64, String)> = sqlx::query_as(
            "UPDATE sync_runs
                SET status = 'interrupted', ended_at = COALESCE(heartbeat_at, started_at),
                    error = 'the process running it stopped'
              WHERE status = 'running'
          RETURNING id, flow",
        )
        .fetch_all(&mut *tx)
        .await?;
        let released = sqlx::query(
            "UPDATE changes
                SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                    next_attempt_at = ?1, updated_at = ?1
              WHERE status = 'in_flight'",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(TakenOver {
            changes: released.rows_affected(),
            runs,
        })
    }

    /// Settle a claimed change as done with `outcome` (written, echo, stale, ...).
    pub async fn complete(
        &self,
        id: ChangeId,
        owner: &str,
        outcome: &str,
    ) -> Result<(), JournalError> {
        let done = sqlx::query(
            "UPDATE changes
                SET status = 'done', outcome = ?, lease_owner = NULL, lease_expires_at = NULL,
                    last_error = NULL, updated_at = ?
              WHERE id = ? AND status = 'in_flight' AND lease_owner = ?",
        )
        .bind(outcome)
        .bind(now_ms())
        .bind(id.0)
        .bind(owner)
        .execute(self.pool())
        .await?;
        lease_held(id, done.rows_affected())
    }

    /// Put a claimed change back to wait `delay` before its next attempt.
    pub async fn retry_later(
        &self,
        id: ChangeId,
        owner: &str,
        delay: Duration,
        error: &str,
    ) -> Result<(), JournalError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE changes
                SET status = 'pending', next_attempt_at = ?1, last_error = ?2,
                    first_failed_at = COALESCE(first_failed_at, ?3),
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = ?3
              WHERE id = ?4 AND status = 'in_flight' AND lease_owner = ?5",
        )
        .bind(now + ms(delay))
        .bind(error)
        .bind(now)
        .bind(id.0)
        .bind(owner)
        .execute(self.pool())
        .await?;
        lease_held(id, done.rows_affected())
    }

    /// Settle a claimed change as dead and record why, in one transaction.
    pub async fn dead_letter(
        &self,
        id: ChangeId,
        owner: &str,
        letter: NewDeadLetter,
    ) -> Result<DeadLetterId, JournalError> {
        self.dead_letter_with(id, &[], owner, letter).await
    }

    /// [`Journal::dead_letter`], also settling `riders` (changes coalesced into the dead one:
    /// a replay reads fresh state, which holds their values too) in the same transaction.
    pub async fn dead_letter_with(
        &self,
        id: ChangeId,
        riders: &[ChangeId],
        owner: &str,
        letter: NewDeadLetter,
    ) -> Result<DeadLetterId, JournalError> {
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        let settled: Option<(i64, Option<i64>)> = sqlx::query_as(
            "UPDATE changes
                SET status = 'dead', lease_owner = NULL, lease_expires_at = NULL,
                    last_error = ?, updated_at = ?
              WHERE id = ? AND status = 'in_flight' AND lease_owner = ?
          RETURNING attempts, first_failed_at",
        )
        .bind(
            letter
                .vendor_message
                .as_deref()
                .unwrap_or(&letter.operation),
        )
        .bind(now)
        .bind(id.0)
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((attempts, first_failed_at)) = settled else {
            return Err(JournalError::LeaseLost(id));
        };
        for rider in riders {
            let done = sqlx::query(
                "UPDATE changes
                    SET status = 'done', outcome = 'dead', detail = ?, lease_owner = NULL,
                        lease_expires_at = NULL, updated_at = ?
                  WHERE id = ? AND status = 'in_flight' AND lease_owner = ?",
            )
            .bind(serde_json::json!({ "dead_with": id }).to_string())
            .bind(now)
            .bind(rider.0)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
            lease_held(*rider, done.rows_affected())?;
        }
        let letter_id: i64 = sqlx::query_scalar(
            "INSERT INTO dead_letters (change_id, flow, connector, operation, payload, http_status,
                                       vendor_code, vendor_message, attempts, first_failed_at,
                                       last_failed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             RETURNING id",
        )
        .bind(id.0)
        .bind(&letter.flow)
        .bind(&letter.connector)
        .bind(&letter.operation)
        .bind(letter.payload.to_string())
        .bind(letter.http_status.map(i64::from))
        .bind(&letter.vendor_code)
        .bind(&letter.vendor_message)
        .bind(attempts)
        .bind(first_failed_at.unwrap_or(letter.first_failed_at))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(DeadLetterId(letter_id))
    }
}

pub(super) fn lease_held(id: ChangeId, rows: u64) -> Result<(), JournalError> {
    if rows == 0 {
        Err(JournalError::LeaseLost(id))
    } else {
        Ok(())
    }
}

/// Rows of `changes` as claimed (RETURNING order is unspecified: sorted by id here).
pub(super) fn changes_from_rows(
    rows: &[sqlx::sqlite::SqliteRow],
) -> Result<Vec<Change>, JournalError> {
    let mut changes = rows
        .iter()
        .map(change_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    changes.sort_by_key(|c| c.id);
    Ok(changes)
}

fn change_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Change, JournalError> {
    let text = |name: &str| -> Result<String, JournalError> { Ok(row.try_get(name)?) };
    let snapshot = text("snapshot")?;
    Ok(Change {
        id: ChangeId(row.try_get("id")?),
        connector: text("connector")?,
        object: text("object")?,
        record_id: text("record_id")?,
        op: text("op")?.parse().map_err(JournalError::Corrupt)?,
        snapshot: serde_json::from_str(&snapshot)
            .map_err(|e| JournalError::Corrupt(format!("snapshot is not JSON: {e}")))?,
        source_modified_at: row.try_get("source_modified_at")?,
        origin: text("origin")?.parse().map_err(JournalError::Corrupt)?,
        received_at: row.try_get("received_at")?,
        dedupe_key: text("dedupe_key")?,
        attempts: row.try_get("attempts")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
    })
}
