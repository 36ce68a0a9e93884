//! Dispatchers: one per connector, draining the changes that connector's records produced into
//! the other side of every flow they feed, by lease.
//!
//! A claimed change takes the later pending changes to its record with it (coalescing: one
//! write carries the latest value of every field). Each flow is carried out by the engine;
//! success settles the changes and stores the links in one transaction; a retryable failure
//! puts them back with exponential backoff and full jitter (never sooner than the vendor's
//! `Retry-After`); a permanent one, or too many attempts, leaves a dead letter with everything
//! an operator needs, and the rest of the journal keeps moving.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{DispatchSettings, Settings};
use crate::connectors::Connectors;
use tracing::Instrument;

use crate::journal::{
    now_ms, Change, ChangeId, ChangeOp, Journal, JournalError, Link, NewDeadLetter, Objects,
    Settlement,
};
use crate::metrics::Metrics;
use crate::sync::batch::Batch;
use crate::sync::engine::{Engine, Failed, Work};

/// The delay before attempt `attempts + 1`: exponential from `base`, capped at `max`, with full
/// jitter (a random share of it, so retries of many changes spread out), and never sooner than
/// what the vendor asked for.
///
/// Written here rather than taken from a backoff crate: the attempt count lives in the journal,
/// not in a retry loop, so all that is needed is this one pure function of it.
pub fn backoff(
    attempts: i64,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exponent = u32::try_from(attempts.clamp(1, 32) - 1).unwrap_or(31);
    let ceiling = base.saturating_mul(1u32 << exponent.min(30)).min(max);
    let jittered = ceiling.mul_f64(rand::rng().random_range(0.0..=1.0));
    jittered.max(retry_after.unwrap_or_default())
}

pub struct Dispatcher {
    connector: String,
    owner: String,
    engine: Arc<Engine>,
    journal: Journal,
    metrics: Arc<Metrics>,
    settings: DispatchSettings,
    /// Objects of this connector that feed scheduled flows only: their changes wait for the
    /// flow's run, which writes them in bulk.
    scheduled_only: Vec<String>,
}

/// What became of the changes a claimed change carried (it and its coalesced followers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Settled with an outcome (`written`, `echo`, …).
    Done { outcome: String, changes: usize },
    /// Failed; to be tried again after a backoff.
    Retrying { changes: usize },
    /// Failed for good; a dead letter holds it.
    Dead { changes: usize },
    /// Given back untried: waiting for an older change of the pair, or for quota.
    Deferred,
}

impl Dispatcher {
    /// A dispatcher leasing changes as `owner`: one per connector in the daemon, or a scheduled
    /// run's own.
    pub fn new(
        connector: &str,
        owner: String,
        engine: Arc<Engine>,
        journal: Journal,
        metrics: Arc<Metrics>,
        settings: DispatchSettings,
    ) -> Dispatcher {
        Dispatcher {
            connector: connector.to_string(),
            owner,
            engine,
            journal,
            metrics,
            settings,
            scheduled_only: Vec::new(),
        }
    }

    /// Claim and carry out one batch; returns how many changes were claimed.
    pub async fn run_once(self: &Arc<Self>) -> Result<usize, JournalError> {
        let claimed = self
            .journal
            .claim_from(
                &self.connector,
                Objects::Except(&self.scheduled_only),
                &self.owner,
                self.settings.batch,
                self.settings.lease,
            )
            .await?;
        let count = claimed.len();
        // Distinct records (the claim hands out one change per record): safe to run at once;
        // each connector's limiter bounds the calls.
        let mut tasks = JoinSet::new();
        let mut ids = std::collections::HashMap::new();
        for change in claimed {
            let this = Arc::clone(self);
            let id = change.id;
            let task = tasks.spawn(async move { this.process(change, None).await });
            ids.insert(task.id(), id);
        }
        while let Some(result) = tasks.join_next_with_id().await {
            match result {
                Ok((_, Ok(_))) => {}
                Ok((task, Err(error))) => {
                    let change_id = ids.get(&task).map(|id| id.0);
                    tracing::warn!(connector = %self.connector, change_id, %error, "settling a change failed; its lease will expire and it is retried")
                }
                Err(panic) => {
                    let change_id = ids.get(&panic.id()).map(|id| id.0);
                    tracing::error!(connector = %self.connector, change_id, %panic, "a change's task panicked; its lease will expire and it is retried")
                }
            }
        }
        Ok(count)
    }

    /// Carry out a claimed change (and the later changes to its record, coalesced), with the
    /// writes sent through `batch` when a scheduled run gives one, and settle them.
    pub async fn process(
        &self,
        lead: Change,
        batch: Option<&Batch>,
    ) -> Result<Settled, JournalError> {
        let followers = self
            .journal
            .claim_followers(&lead, &self.owner, self.settings.lease)
            .await?;
        let ids: Vec<ChangeId> = std::iter::once(lead.id)
            .chain(followers.iter().map(|c| c.id))
            .collect();
        let work = coalesce(&lead, &followers);
        let record = (
            lead.connector.as_str(),
            lead.object.as_str(),
            lead.record_id.as_str(),
        );
        let routes = self.engine.routes(&lead.connector, &lead.object);
        let span = tracing::info_span!(
            "change",
            change_id = %lead.id,
            connector = %lead.connector,
            object = %lead.object,
            record_id = %lead.record_id,
            coalesced = followers.len(),
        );
        async move {
        let changes = ids.len();
        if routes.is_empty() {
            let settlement = Settlement {
                outcome: "no_flow".into(),
                detail: json!({}),
                ..Settlement::default()
            };
            self.journal
                .settle(&ids, &self.owner, &settlement, Some(record))
                .await?;
            return Ok(Settled::Done { outcome: settlement.outcome, changes });
        }

        let mut saved: Vec<Link> = Vec::new();
        let mut removed = Vec::new();
        let mut outcomes = Map::new();
        let mut first_outcome = None;
        let mut failure = None;
        for route in &routes {
            match self.engine.sync_in(&work, route, batch).await {
                Ok(done) => {
                    self.metrics
                        .count_sync(route.name, &route.target().connector, done.outcome);
                    if done.outcome == "written" || done.outcome == "created" {
                        if let Some(at) = work.modified_at {
                            self.metrics
                                .observe_latency(route.name, (now_ms() - at).max(0));
                        }
                    }
                    if let Some(conflicts) = done.detail.get("conflicts").and_then(Value::as_array)
                    {
                        self.metrics
                            .count_conflicts(route.name, conflicts.len() as u64);
                    }
                    let counterpart = done.link.as_ref().map(|link| match route.side {
                        crate::sync::mapping::Side::Left => link.right_id.as_str(),
                        crate::sync::mapping::Side::Right => link.left_id.as_str(),
                    });
                    tracing::info!(
                        flow = route.name,
                        target = %route.target().connector,
                        counterpart,
                        outcome = done.outcome,
                        "synced"
                    );
                    first_outcome.get_or_insert(done.outcome);
                    outcomes.insert(
                        route.name.to_string(),
                        json!({ "outcome": done.outcome, "detail": done.detail }),
                    );
                    saved.extend(done.link);
                    removed.extend(done.unlink);
                }
                Err(failed) => {
                    failure = Some((route.name.to_string(), failed));
                    break;
                }
            }
        }

        let Some((flow, failed)) = failure else {
            let settlement = Settlement {
                save: saved,
                remove: removed,
                outcome: first_outcome.unwrap_or("skipped").to_string(),
                detail: Value::Object(outcomes),
            };
            self.journal
                .settle(&ids, &self.owner, &settlement, Some(record))
                .await?;
            return Ok(Settled::Done { outcome: settlement.outcome, changes });
        };

        // Flows that succeeded keep their links, whatever happens to this one: their retry is
        // then an echo, not a rewrite. So does a counterpart that exists although its flow
        // failed (a create whose follow-up failed).
        let mut failed = failed;
        if let Failed::Vendor(failure) = &mut failed {
            saved.extend(failure.link.take());
        }
        if !saved.is_empty() {
            self.journal.save_links(&saved).await?;
        }
        let (error, operation, payload) = match failed {
            Failed::Busy(wait) => {
                for id in &ids {
                    self.journal.defer(*id, &self.owner, wait).await?;
                }
                return Ok(Settled::Deferred);
            }
            Failed::Journal(error) => return Err(error),
            Failed::Vendor(failure) => (failure.error, failure.operation, failure.payload),
        };
        if error.kind.is_held_back() {
            // Quota, a vendor pause or an open breaker: the change waits its turn in the
            // journal; it has not failed, so it uses up no attempt.
            let delay = error
                .retry_after
                .unwrap_or(self.settings.base_delay)
                .max(self.settings.base_delay);
            tracing::info!(flow = %flow, %error, wait_ms = delay.as_millis() as u64, "held back; waiting");
            for id in &ids {
                self.journal.defer(*id, &self.owner, delay).await?;
            }
            return Ok(Settled::Deferred);
        }
        self.metrics.count_sync(&flow, &error.connector, "failed");
        let attempts = lead.attempts;
        let age = Duration::from_millis(u64::try_from(now_ms() - lead.received_at).unwrap_or(0));
        if error.is_retryable()
            && attempts < i64::from(self.settings.max_attempts)
            && age < self.settings.max_age
        {
            let delay = backoff(
                attempts,
                self.settings.base_delay,
                self.settings.max_delay,
                error.retry_after,
            );
            tracing::warn!(flow = %flow, %error, attempts, retry_in_ms = delay.as_millis() as u64, "sync failed; will retry");
            for id in &ids {
                self.journal
                    .retry_later(*id, &self.owner, delay, &error.to_string())
                    .await?;
            }
            return Ok(Settled::Retrying { changes });
        }
        tracing::error!(flow = %flow, %error, attempts, "sync failed for good; dead-lettered");
        let letter = NewDeadLetter {
            flow: Some(flow.clone()),
            connector: error.connector.clone(),
            operation,
            payload: json!({
                "write": payload,
                "change": {
                    "op": lead.op.as_str(),
                    "snapshot": Value::Object(work.snapshot.clone()),
                    "origin": lead.origin.as_str(),
                },
                "error_kind": error.kind.as_str(),
            }),
            http_status: error.status,
            vendor_code: error.code.clone(),
            vendor_message: Some(error.message.clone()),
            first_failed_at: now_ms(),
        };
        // The coalesced followers ride on the lead's dead letter, in its transaction: a replay
        // reads fresh state, which holds their values too.
        self.journal
            .dead_letter_with(lead.id, &ids[1..], &self.owner, letter)
            .await?;
        self.metrics.count_dead_letter(&flow, &error.connector);
        Ok(Settled::Dead { changes })
        }
        .instrument(span)
        .await
    }
}

/// The lead change with its followers' values on top: the latest value of every field.
///
/// Followers come in arrival order, which is not always the order of the edits (webhooks can
/// arrive out of order): if one is older than what came before it, the snapshot is dropped and
/// the engine reads fresh state instead of trusting a merge.
fn coalesce(lead: &Change, followers: &[Change]) -> Work {
    let mut snapshot = Map::new();
    let mut op = lead.op;
    let mut modified_at = lead.source_modified_at;
    let mut origin = lead.origin;
    let mut read_fresh = false;
    for change in std::iter::once(lead).chain(followers) {
        if let (Some(newest), Some(at)) = (modified_at, change.source_modified_at) {
            if at < newest {
                read_fresh = true;
            }
        }
        if change.op == ChangeOp::Delete || op == ChangeOp::Delete {
            // A delete's snapshot (a comment's parent) replaces what came before; an upsert
            // after a delete (an undelete) starts again from its own.
            snapshot.clear();
        }
        if let Value::Object(fields) = &change.snapshot {
            snapshot.extend(fields.clone());
        }
        op = change.op;
        origin = change.origin;
        modified_at = match (modified_at, change.source_modified_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => b.or(a),
        };
    }
    // An empty snapshot (a replay, a gap event) also means "read it".
    let last_empty = followers
        .last()
        .is_some_and(|c| c.snapshot.as_object().is_some_and(Map::is_empty));
    if (read_fresh || last_empty) && op != ChangeOp::Delete {
        snapshot.clear();
        modified_at = None;
    }
    Work {
        connector: lead.connector.clone(),
        object: lead.object.clone(),
        record_id: lead.record_id.clone(),
        op,
        snapshot,
        modified_at,
        origin,
        attempts: lead.attempts,
        lead: lead.id,
    }
}

/// The objects of `connector` whose changes only scheduled flows read (comments as
/// [`crate::connectors::COMMENT_OBJECT`]): the realtime dispatcher leaves them to the runs.
pub fn scheduled_only(settings: &Settings, connector: &str) -> Vec<String> {
    let mut realtime = std::collections::BTreeSet::new();
    let mut scheduled = std::collections::BTreeSet::new();
    for flow in settings.flows.values() {
        for (side, feeds) in [
            (&flow.left, flow.direction.writes_right()),
            (&flow.right, flow.direction.writes_left()),
        ] {
            if !feeds || side.connector != connector {
                continue;
            }
            let set = match flow.mode {
                crate::config::FlowMode::Realtime => &mut realtime,
                crate::config::FlowMode::Scheduled(_) => &mut scheduled,
            };
            set.insert(side.object.clone());
            if flow.comments {
                set.insert(crate::connectors::COMMENT_OBJECT.to_string());
            }
        }
    }
    scheduled.difference(&realtime).cloned().collect()
}

/// Start one dispatcher per connector until `shutdown`.
pub fn spawn(
    settings: Arc<Settings>,
    connectors: Connectors,
    engine: Arc<Engine>,
    journal: Journal,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for (name, _) in connectors.iter() {
        let mut dispatcher = Dispatcher::new(
            name,
            format!("{name}-{}", uuid::Uuid::new_v4()),
            engine.clone(),
            journal.clone(),
            metrics.clone(),
            settings.dispatch.clone(),
        );
        dispatcher.scheduled_only = scheduled_only(&settings, name);
        // Woken by new work the moment it is committed; `idle_wait` still paces the look for
        // work that comes due by time (retries, deferrals, expired leases).
        let woken = journal.subscribe(name, &dispatcher.scheduled_only);
        let dispatcher = Arc::new(dispatcher);
        let shutdown = shutdown.clone();
        let idle = settings.dispatch.idle_wait;
        let coalesce = settings.dispatch.coalesce;
        tasks.spawn(async move {
            loop {
                let claimed = tokio::select! {
                    result = dispatcher.run_once() => result,
                    () = shutdown.cancelled() => return,
                };
                let wait = match claimed {
                    Ok(0) => idle,
                    Ok(_) => Duration::ZERO,
                    Err(error) => {
                        tracing::warn!(connector = %dispatcher.connector, %error, "claiming changes failed");
                        idle
                    }
                };
                if !wait.is_zero() {
                    let woken = tokio::select! {
                        () = tokio::time::sleep(wait) => false,
                        () = woken.notified() => true,
                        () = shutdown.cancelled() => return,
                    };
                    // The first edit of a burst wakes the worker; the rest of the burst
                    // arrives while it waits and is coalesced into the same claim.
                    if woken && !coalesce.is_zero() {
                        tokio::select! {
                            () = tokio::time::sleep(coalesce) => {}
                            () = shutdown.cancelled() => return,
                        }
                    }
                }
            }
        });
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_jittered_and_honours_retry_after() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for attempts in 1..=20 {
            let ceiling = base.saturating_mul(1 << (attempts - 1).min(30)).min(max);
            let delay = backoff(attempts, base, max, None);
            assert!(delay <= ceiling, "{attempts}: {delay:?} > {ceiling:?}");
        }
        assert!(backoff(1, base, max, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
    }
}
