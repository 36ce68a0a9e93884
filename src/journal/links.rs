//! Links (which left record pairs with which right record in a flow, and what was last synced
//! between them) and the transactions that settle a synced change together with its link.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

use super::model::{Change, ChangeId};
use super::queue::{changes_from_rows, lease_held};
use super::{ms, now_ms, Journal, JournalError};

/// A rule's value last synced, in each side's own form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Synced {
    pub left: Value,
    pub right: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub flow: String,
    pub left_id: String,
    pub right_id: String,
    /// By rule index.
    pub synced: BTreeMap<usize, Synced>,
    /// The newest modified time of each side that has been accounted for (synced, or decided
    /// against), epoch ms: a change older than this is stale.
    pub left_modified_at: Option<i64>,
    pub right_modified_at: Option<i64>,
}

/// A change that is unsettled for a record, seen from another worker (conflict detection).
#[derive(Debug, Clone, PartialEq)]
pub struct Unsettled {
    pub id: ChangeId,
    /// When it is due again, epoch ms (a change backing off is due later).
    pub next_attempt_at: i64,
    pub snapshot: Value,
    pub source_modified_at: Option<i64>,
}

fn link_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Link, JournalError> {
    let synced: String = row.try_get("synced")?;
    let synced: BTreeMap<String, Synced> = serde_json::from_str(&synced)
        .map_err(|e| JournalError::Corrupt(format!("link values are not JSON: {e}")))?;
    let synced = synced
        .into_iter()
        .filter_map(|(k, v)| k.parse().ok().map(|k: usize| (k, v)))
        .collect();
    Ok(Link {
        flow: row.try_get("flow")?,
        left_id: row.try_get("left_id")?,
        right_id: row.try_get("right_id")?,
        synced,
        left_modified_at: row.try_get("left_modified_at")?,
        right_modified_at: row.try_get("right_modified_at")?,
    })
}

async fn save_link(
    conn: &mut sqlx::SqliteConnection,
    link: &Link,
    now: i64,
) -> Result<(), sqlx::Error> {
    let synced: BTreeMap<String, &Synced> = link
        .synced
        .iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let synced = serde_json::to_string(&synced).unwrap_or_else(|_| "{}".to_string());
    // A record can only be in one link per flow on each side: a link found by the marker (the
    // counterpart's echo arriving before the create committed) and the create's own link
    // are the same pair, so either write lands on the one row.
    sqlx::query("DELETE FROM links WHERE flow = ? AND right_id = ? AND left_id != ?")
        .bind(&link.flow)
        .bind(&link.right_id)
        .bind(&link.left_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO links (flow, left_id, right_id, synced, left_modified_at, right_modified_at,
                            created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (flow, left_id) DO UPDATE SET
             right_id = excluded.right_id,
             synced = excluded.synced,
             left_modified_at = MAX(COALESCE(links.left_modified_at, 0), COALESCE(excluded.left_modified_at, 0)),
             right_modified_at = MAX(COALESCE(links.right_modified_at, 0), COALESCE(excluded.right_modified_at, 0)),
             updated_at = excluded.updated_at",
    )
    .bind(&link.flow)
    .bind(&link.left_id)
    .bind(&link.right_id)
    .bind(synced)
    .bind(link.left_modified_at)
    .bind(link.right_modified_at)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What settling a synced change writes, all in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Settlement {
    pub save: Vec<Link>,
    /// Links to remove, by (flow, left id).
    pub remove: Vec<(String, String)>,
    pub outcome: String,
    pub detail: Value,
}

impl Journal {
    /// The link of a record on one side of a flow.
    pub async fn link(
        &self,
        flow: &str,
        left: bool,
        record_id: &str,
    ) -> Result<Option<Link>, JournalError> {
        let sql = if left {
            "SELECT * FROM links WHERE flow = ? AND left_id = ?"
        } else {
            "SELECT * FROM links WHERE flow = ? AND right_id = ?"
        };
        let row = sqlx::query(sql)
            .bind(flow)
            .bind(record_id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(link_from_row).transpose()
    }

    /// Every link of a flow (reconcile, tests).
    pub async fn links(&self, flow: &str) -> Result<Vec<Link>, JournalError> {
        let rows = sqlx::query("SELECT * FROM links WHERE flow = ? ORDER BY id")
            .bind(flow)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(link_from_row).collect()
    }

    /// Store links now (a flow written while another flow of the same change failed).
    pub async fn save_links(&self, links: &[Link]) -> Result<(), JournalError> {
        let mut tx = self.pool().begin().await?;
        let now = now_ms();
        for link in links {
            save_link(&mut tx, link, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Changes to a record that are pending or in flight.
    pub async fn unsettled(
        &self,
        connector: &str,
        object: &str,
        record_id: &str,
    ) -> Result<Vec<Unsettled>, JournalError> {
        let rows = sqlx::query(
            "SELECT id, snapshot, source_modified_at, next_attempt_at FROM changes
              WHERE connector = ? AND object = ? AND record_id = ?
                AND status IN ('pending', 'in_flight')
              ORDER BY id",
        )
        .bind(connector)
        .bind(object)
        .bind(record_id)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for row in rows {
            let id = ChangeId(row.try_get("id")?);
            let snapshot: String = row.try_get("snapshot")?;
            out.push(Unsettled {
                id,
                next_attempt_at: row.try_get("next_attempt_at")?,
                snapshot: serde_json::from_str(&snapshot)
                    .map_err(|e| JournalError::Corrupt(format!("snapshot is not JSON: {e}")))?,
                source_modified_at: row.try_get("source_modified_at")?,
            });
        }
        Ok(out)
    }

    /// Whether a change to this record ever failed (retried or dead-lettered): a create for it
    /// may have happened without Tandem knowing.
    pub async fn had_trouble(
        &self,
        connector: &str,
        object: &str,
        record_id: &str,
    ) -> Result<bool, JournalError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM changes
              WHERE connector = ? AND object = ? AND record_id = ?
                AND (status = 'dead' OR attempts > 1)
              LIMIT 1",
        )
        .bind(connector)
        .bind(object)
        .bind(record_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }

    /// Give a claimed change back untried, to be claimed again after `delay`: its attempt is
    /// not counted (it waited for another worker, it did not fail).
    pub async fn defer(
        &self,
        id: ChangeId,
        owner: &str,
        delay: Duration,
    ) -> Result<(), JournalError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE changes
                SET status = 'pending', next_attempt_at = ?, attempts = MAX(attempts - 1, 0),
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = ?
              WHERE id = ? AND status = 'in_flight' AND lease_owner = ?",
        )
        .bind(now + ms(delay))
        .bind(now)
        .bind(id.0)
        .bind(owner)
        .execute(self.pool())
        .await?;
        lease_held(id, done.rows_affected())
    }

    /// Lease the due changes whose source is `connector` (one dispatcher per connector), of
    /// the objects `objects` selects (a scheduled flow's objects wait for its run).
    pub async fn claim_from(
        &self,
        connector: &str,
        objects: super::Objects<'_>,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Change>, JournalError> {
        self.claim_where(Some(connector), objects, owner, limit, lease)
            .await
    }

    /// Lease the later pending changes to the same record as `lead`, to coalesce them into one
    /// operation carrying the latest values.
    pub async fn claim_followers(
        &self,
        lead: &Change,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Change>, JournalError> {
        // Usually there are none: look before taking the write lock (an UPDATE of no rows
        // still takes it, and waits for it behind the journal writer). Both statements name the
        // record index: left to itself the planner takes the (connector, status, object) one
        // for `status = 'pending' AND id > ?` and walks every later pending change of the
        // object, which under a backlog of 100,000 cost ~20 ms per synced change.
        let any: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM changes INDEXED BY idx_changes_connector_object_record_id_id
              WHERE connector = ? AND object = ? AND record_id = ? AND id > ? AND status = 'pending'
              LIMIT 1",
        )
        .bind(&lead.connector)
        .bind(&lead.object)
        .bind(&lead.record_id)
        .bind(lead.id.0)
        .fetch_optional(self.pool())
        .await?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let rows = sqlx::query(
            "UPDATE changes INDEXED BY idx_changes_connector_object_record_id_id
                SET status = 'in_flight', lease_owner = ?1, lease_expires_at = ?2,
                    attempts = attempts + 1, updated_at = ?3
              WHERE connector = ?4 AND object = ?5 AND record_id = ?6 AND id > ?7
                AND status = 'pending'
          RETURNING id, connector, object, record_id, op, snapshot, source_modified_at, origin,
                    received_at, dedupe_key, attempts, lease_expires_at",
        )
        .bind(owner)
        .bind(now + ms(lease))
        .bind(now)
        .bind(&lead.connector)
        .bind(&lead.object)
        .bind(&lead.record_id)
        .bind(lead.id.0)
        .fetch_all(self.pool())
        .await?;
        changes_from_rows(&rows)
    }

    /// Settle claimed changes as done: links saved or removed, every change completed with its
    /// outcome and detail, and (given the record) its open dead letters superseded, in one
    /// transaction. Done by the journal writer, which commits concurrent settlements (and
    /// appends) together; returns once committed.
    pub async fn settle(
        &self,
        changes: &[ChangeId],
        owner: &str,
        settlement: &Settlement,
        supersede: Option<(&str, &str, &str)>,
    ) -> Result<(), JournalError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer
            .send(super::writer::Message::Settle(
                super::writer::SettleRequest {
                    changes: changes.to_vec(),
                    owner: owner.to_string(),
                    settlement: settlement.clone(),
                    supersede: supersede
                        .map(|(c, o, r)| (c.to_string(), o.to_string(), r.to_string())),
                    reply,
                },
            ))
            .await
            .map_err(|_| JournalError::WriterStopped)?;
        answer.await.map_err(|_| JournalError::WriterStopped)?
    }
}

/// [`Journal::settle`] inside the caller's transaction: an error leaves it for the caller to
/// roll back.
pub(super) async fn settle_in(
    conn: &mut sqlx::SqliteConnection,
    changes: &[ChangeId],
    owner: &str,
    settlement: &Settlement,
    supersede: Option<(&str, &str, &str)>,
    now: i64,
) -> Result<(), JournalError> {
    for link in &settlement.save {
        save_link(&mut *conn, link, now).await?;
    }
    for (flow, left_id) in &settlement.remove {
        sqlx::query("DELETE FROM links WHERE flow = ? AND left_id = ?")
            .bind(flow)
            .bind(left_id)
            .execute(&mut *conn)
            .await?;
    }
    let detail = settlement.detail.to_string();
    for id in changes {
        let done = sqlx::query(
            "UPDATE changes
                SET status = 'done', outcome = ?, detail = ?, lease_owner = NULL,
                    lease_expires_at = NULL, last_error = NULL, updated_at = ?
              WHERE id = ? AND status = 'in_flight' AND lease_owner = ?",
        )
        .bind(&settlement.outcome)
        .bind(&detail)
        .bind(now)
        .bind(id.0)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
        lease_held(*id, done.rows_affected())?;
    }
    if let Some(record) = supersede {
        super::dead_letters::supersede_in(conn, record, now).await?;
    }
    Ok(())
}
