//! Scheduled flows: runs that poll every side of a flow since its watermark, then drain what the
//! journal holds for it through the engine with bulk writes.
//!
//! A scheduled flow's changes (polled, or arriving by webhook) wait in the journal: the
//! realtime dispatcher leaves its objects alone (`dispatch::scheduled_only`). A run takes them
//! in rounds, one task per record, and the tasks' writes meet in a [`Batch`] that sends them in
//! the vendors' bulk calls. Every change is settled on its own as its result comes back, so a
//! run is checkpointed by the journal itself: killed half-way, what was settled stays settled,
//! and what was not is claimed again by the next run (released when the daemon starts again,
//! see `Journal::take_over`, with its attempt counted so a create looks for its marker first).
//!
//! Two runs of one flow never overlap: starting one is an insert that a partial unique index
//! refuses while another runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backfill::{BackfillError, Backfiller, Plan};
use crate::config::{FlowMode, FlowSettings, ReconcileSchedule, Schedule, Settings};
use crate::connectors::limit::{calls_in_scope, counting_calls};
use crate::connectors::{Connectors, COMMENT_OBJECT};
use crate::dispatch::{scheduled_only, Dispatcher, Settled};
use crate::ingest::{self, Poller};
use crate::journal::{now_ms, Journal, JournalError, Objects, RunCounts, StartRunError, Watermark};
use crate::metrics::Metrics;
use crate::reconcile::{ReconcileError, Reconciler, Report};
use crate::sync::batch::Batch;
use crate::sync::engine::Engine;

/// Changes a run takes from the journal per round: one task each, their writes batched.
const ROUND: u32 = 1000;
/// A run goes on while a change of its flow falls due within this long (a quick retry, a pair
/// waiting for its older half); anything later waits for the next run.
const LINGER: Duration = Duration::from_secs(5);
/// Rounds in a row that settle nothing before a run gives up waiting.
const MAX_IDLE_ROUNDS: u32 = 20;

/// What a run does.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// Poll every side since its watermark, then drain.
    Scheduled,
    /// Pair and link what exists on both sides, then create the rest.
    Backfill,
}

fn backfill_failed(error: BackfillError) -> RunError {
    match error {
        BackfillError::Journal(e) => RunError::Journal(e),
        other => RunError::Poll(other.to_string()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no flow named `{0}` is configured")]
    UnknownFlow(String),
    #[error("flow `{0}` is realtime; only scheduled flows have runs")]
    NotScheduled(String),
    #[error("run {0} of this flow is still running")]
    Running(i64),
    #[error("{0}")]
    Poll(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl From<StartRunError> for RunError {
    fn from(error: StartRunError) -> Self {
        match error {
            StartRunError::Running(id) => RunError::Running(id),
            StartRunError::Journal(e) => RunError::Journal(e),
        }
    }
}

pub struct Scheduler {
    settings: Arc<Settings>,
    connectors: Connectors,
    journal: Journal,
    metrics: Arc<Metrics>,
    engine: Arc<Engine>,
    stop: CancellationToken,
    runs: Mutex<JoinSet<()>>,
}

/// What a run has done so far, shared with its heartbeat.
#[derive(Default)]
struct Progress {
    counts: RunCounts,
    checkpoint: serde_json::Map<String, Value>,
}

impl Scheduler {
    pub fn new(
        settings: Arc<Settings>,
        connectors: Connectors,
        journal: Journal,
        metrics: Arc<Metrics>,
        engine: Arc<Engine>,
    ) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            settings,
            connectors,
            journal,
            metrics,
            engine,
            stop: CancellationToken::new(),
            runs: Mutex::new(JoinSet::new()),
        })
    }

    fn any_flow(&self, name: &str) -> Result<&FlowSettings, RunError> {
        self.settings
            .flows
            .get(name)
            .ok_or_else(|| RunError::UnknownFlow(name.to_string()))
    }

    fn flow(&self, name: &str) -> Result<&FlowSettings, RunError> {
        let flow = self.any_flow(name)?;
        match flow.mode {
            FlowMode::Scheduled(_) => Ok(flow),
            FlowMode::Realtime => Err(RunError::NotScheduled(name.to_string())),
        }
    }

    /// How long a run may go without a heartbeat before it is taken for dead.
    fn liveness(&self) -> Duration {
        self.settings.dispatch.lease
    }

    /// Start a run of `flow` now (`trigger`: who asked), unless one is running.
    pub async fn trigger(self: &Arc<Self>, flow: &str, trigger: &str) -> Result<i64, RunError> {
        self.flow(flow)?;
        self.begin(flow, trigger, Job::Scheduled).await
    }

    /// Start a backfill of `flow` (realtime or scheduled): a run that pairs and links what
    /// already belongs together, then creates the rest in bulk. It holds the flow's run lock,
    /// so it never overlaps a scheduled run.
    pub async fn backfill(self: &Arc<Self>, flow: &str) -> Result<i64, RunError> {
        self.any_flow(flow)?;
        self.begin(flow, "backfill", Job::Backfill).await
    }

    /// What a backfill of `flow` would link and create, written nowhere.
    pub async fn backfill_plan(&self, flow: &str) -> Result<Plan, BackfillError> {
        Ok(self.backfiller().plan(flow).await?.0)
    }

    fn backfiller(&self) -> Backfiller<'_> {
        Backfiller {
            settings: &self.settings,
            connectors: &self.connectors,
            journal: &self.journal,
        }
    }

    async fn begin(self: &Arc<Self>, flow: &str, trigger: &str, job: Job) -> Result<i64, RunError> {
        if self.stop.is_cancelled() {
            return Err(RunError::Journal(JournalError::WriterStopped));
        }
        let owner = format!("run-{flow}-{}", uuid::Uuid::new_v4());
        let id = self.journal.start_run(flow, &owner, trigger).await?;
        tracing::info!(flow, run = id, trigger, "run started");
        let this = self.clone();
        let flow = flow.to_string();
        let mut runs = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Reap the runs that have ended, or the set grows for the daemon's whole life.
        while runs.try_join_next().is_some() {}
        runs.spawn(async move { this.run(flow, id, owner, job).await });
        Ok(id)
    }

    async fn run(self: Arc<Self>, flow: String, id: i64, owner: String, job: Job) {
        let calls = Arc::new(AtomicU64::new(0));
        let progress = Mutex::new(Progress::default());
        let started = std::time::Instant::now();
        let snapshot = |progress: &Mutex<Progress>| {
            let p = progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut counts = p.counts;
            counts.api_calls = i64::try_from(calls.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
            (counts, Value::Object(p.checkpoint.clone()))
        };
        let work = counting_calls(calls.clone(), async {
            match job {
                Job::Scheduled => self.execute(&flow, &owner, &progress).await,
                Job::Backfill => self.execute_backfill(&flow, &owner, &progress).await,
            }
        });
        // Boxed rather than pinned in place, so that a stop can drop it (and with it every task
        // of its round) before the run's changes are given back.
        let mut work = Box::pin(work);
        let beat = (self.liveness() / 4).max(Duration::from_millis(100));
        let result = loop {
            tokio::select! {
                result = &mut work => break Some(result),
                () = tokio::time::sleep(beat) => {
                    let (counts, checkpoint) = snapshot(&progress);
                    if let Err(error) = self.journal.run_progress(id, &counts, &checkpoint).await {
                        tracing::warn!(flow, run = id, %error, "saving the run's progress failed");
                    }
                }
                () = self.stop.cancelled() => break None,
            }
        };
        // The work ends here, finished or not: no task of it writes to a vendor after its
        // changes are released (their parked bulk writes are discarded, see `sync::batch`).
        drop(work);
        let (counts, checkpoint) = snapshot(&progress);
        let Some(result) = result else {
            // Stopping: the changes this run holds go back to the queue for the next run.
            if let Err(error) = self
                .journal
                .interrupt_run(id, &owner, &counts, &checkpoint)
                .await
            {
                tracing::warn!(flow, run = id, %error, "marking the run interrupted failed; the next run will");
            }
            tracing::info!(flow, run = id, "run interrupted by shutdown");
            return;
        };
        let error = result.err().map(|e| e.to_string());
        if let Err(e) = self
            .journal
            .finish_run(id, &counts, &checkpoint, error.as_deref())
            .await
        {
            tracing::warn!(flow, run = id, error = %e, "recording the run's end failed");
        }
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // One line with the figures an operator compares between runs.
        tracing::info!(
            flow,
            run = id,
            status = if error.is_some() {
                "failed"
            } else {
                "succeeded"
            },
            seen = counts.seen,
            written = counts.written,
            skipped = counts.skipped,
            failed = counts.failed,
            api_calls = counts.api_calls,
            elapsed_ms,
            "run finished"
        );
        if let Some(error) = &error {
            tracing::warn!(flow, run = id, %error, "the run had errors");
        }
    }

    /// Poll, then drain. A poll that fails does not stop the drain (what is in the journal is
    /// still written); it fails the run, and its watermark stays for the next one.
    async fn execute(
        &self,
        name: &str,
        owner: &str,
        progress: &Mutex<Progress>,
    ) -> Result<(), RunError> {
        let flow = self.flow(name)?;
        let update = |f: &mut dyn FnMut(&mut Progress)| {
            f(&mut progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner))
        };
        update(&mut |p| {
            p.checkpoint.insert("phase".into(), json!("poll"));
        });
        let mut poll_errors = Vec::new();
        for poller in self.pollers(name, flow) {
            let key = format!("{}/{}", poller.connector(), poller.object());
            let figures = match poller.poll_once().await {
                Ok(outcome) => {
                    self.metrics.count_ingested(
                        poller.connector(),
                        crate::journal::Origin::Poll,
                        outcome.new,
                    );
                    json!({ "pages": outcome.pages, "seen": outcome.seen, "new": outcome.new })
                }
                Err(error) => {
                    tracing::warn!(flow = name, connector = poller.connector(), %error, "the run's poll failed; its watermark stays");
                    poll_errors.push(format!("polling {key}: {error}"));
                    json!({ "error": error.to_string() })
                }
            };
            update(&mut |p| {
                let polls = p.checkpoint.entry("polls").or_insert_with(|| json!({}));
                polls[&key] = figures.clone();
            });
        }

        update(&mut |p| {
            p.checkpoint.insert("phase".into(), json!("write"));
        });
        self.drain(name, &self.scopes(flow), owner, progress)
            .await?;
        update(&mut |p| {
            p.checkpoint.insert("phase".into(), json!("done"));
        });
        if poll_errors.is_empty() {
            Ok(())
        } else {
            Err(RunError::Poll(poll_errors.join("; ")))
        }
    }

    /// Take the due changes of `scopes` round after round, their writes batched, until none
    /// is due within [`LINGER`].
    async fn drain(
        &self,
        name: &str,
        scopes: &BTreeMap<String, Vec<String>>,
        owner: &str,
        progress: &Mutex<Progress>,
    ) -> Result<(), RunError> {
        let update = |f: &mut dyn FnMut(&mut Progress)| {
            f(&mut progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner))
        };
        let dispatcher = Arc::new(Dispatcher::new(
            &format!("run:{name}"),
            owner.to_string(),
            self.engine.clone(),
            self.journal.clone(),
            self.metrics.clone(),
            self.settings.dispatch.clone(),
        ));
        let mut idle_rounds = 0;
        let mut rounds = 0u64;
        loop {
            let mut claimed = Vec::new();
            for (connector, objects) in scopes {
                claimed.extend(
                    self.journal
                        .claim_from(
                            connector,
                            Objects::Only(objects),
                            owner,
                            ROUND,
                            self.settings.dispatch.lease,
                        )
                        .await?,
                );
            }
            if claimed.is_empty() {
                let mut due = None::<i64>;
                for (connector, objects) in scopes {
                    if let Some(at) = self.journal.next_due(connector, objects).await? {
                        due = Some(due.map_or(at, |d| d.min(at)));
                    }
                }
                let wait =
                    due.map(|at| Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)));
                match wait {
                    Some(wait) if wait <= LINGER && idle_rounds < MAX_IDLE_ROUNDS => {
                        idle_rounds += 1;
                        tokio::time::sleep(wait.max(Duration::from_millis(20))).await;
                        continue;
                    }
                    _ => break,
                }
            }
            rounds += 1;
            let settled = self.drain_round(&dispatcher, claimed, progress).await;
            idle_rounds = if settled { 0 } else { idle_rounds + 1 };
            update(&mut |p| {
                p.checkpoint.insert("rounds".into(), json!(rounds));
            });
            if idle_rounds >= MAX_IDLE_ROUNDS {
                break;
            }
        }
        Ok(())
    }

    /// A backfill: plan, link the pairs, append the records to create, and drain them.
    async fn execute_backfill(
        &self,
        name: &str,
        owner: &str,
        progress: &Mutex<Progress>,
    ) -> Result<(), RunError> {
        let flow = self.any_flow(name)?;
        let set = |key: &str, value: Value| {
            progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .checkpoint
                .insert(key.to_string(), value);
        };
        set("phase", json!("list"));
        let backfiller = self.backfiller();
        let (plan, listed) = backfiller.plan(name).await.map_err(backfill_failed)?;
        set(
            "listed",
            json!({ "left": plan.listed_left, "right": plan.listed_right }),
        );
        set("already_linked", json!(plan.already_linked));
        set("linked", json!(plan.pairs.len()));
        set("ambiguous", json!(plan.ambiguous.len()));
        set("total", json!(plan.create.len()));
        set("phase", json!("link"));
        backfiller
            .apply(&plan, &listed)
            .await
            .map_err(backfill_failed)?;
        tracing::info!(
            flow = name,
            linked = plan.pairs.len(),
            to_create = plan.create.len(),
            ambiguous = plan.ambiguous.len(),
            "backfill planned; creating"
        );
        set("phase", json!("write"));
        // Every side the flow reads from, realtime or not: the backfill's creates go out in
        // bulk (the realtime dispatcher may take some of them; leases keep each to one).
        let mut scopes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (side, feeds) in [
            (&flow.left, flow.direction.writes_right()),
            (&flow.right, flow.direction.writes_left()),
        ] {
            if feeds {
                let objects = scopes.entry(side.connector.clone()).or_default();
                if !objects.contains(&side.object) {
                    objects.push(side.object.clone());
                }
            }
        }
        self.drain(name, &scopes, owner, progress).await?;
        set("phase", json!("done"));
        Ok(())
    }

    /// One task per claimed change, their writes meeting in one batch; returns whether any
    /// change was settled (rather than deferred).
    async fn drain_round(
        &self,
        dispatcher: &Arc<Dispatcher>,
        claimed: Vec<crate::journal::Change>,
        progress: &Mutex<Progress>,
    ) -> bool {
        let batch = Batch::new(self.connectors.clone());
        // Every task joins before any starts: the batch sends early when all members present
        // are parked, so a member missing from the count would cut a batch short.
        let members: Vec<_> = claimed.iter().map(|_| batch.join()).collect();
        let calls = calls_in_scope();
        let mut tasks = JoinSet::new();
        for (change, member) in claimed.into_iter().zip(members) {
            let dispatcher = dispatcher.clone();
            let batch = batch.clone();
            let work = async move {
                let _member = member;
                dispatcher.process(change, Some(&batch)).await
            };
            match calls.clone() {
                Some(calls) => tasks.spawn(counting_calls(calls, work)),
                None => tasks.spawn(work),
            };
        }
        let mut settled_any = false;
        while let Some(joined) = tasks.join_next().await {
            let settled = match joined {
                Ok(Ok(settled)) => settled,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "settling a change failed; its lease will expire and it is retried");
                    continue;
                }
                Err(panic) => {
                    tracing::error!(%panic, "a change's task panicked; its lease will expire and it is retried");
                    continue;
                }
            };
            let mut p = progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let counts = &mut p.counts;
            match settled {
                Settled::Done { outcome, changes } => {
                    settled_any = true;
                    counts.seen += changes as i64;
                    if matches!(
                        outcome.as_str(),
                        "created" | "written" | "linked" | "deleted" | "unlinked"
                    ) {
                        counts.written += changes as i64;
                    } else {
                        counts.skipped += changes as i64;
                    }
                }
                Settled::Retrying { changes } | Settled::Dead { changes } => {
                    settled_any = true;
                    counts.seen += changes as i64;
                    counts.failed += changes as i64;
                }
                Settled::Deferred => {}
            }
        }
        settled_any
    }

    /// The pollers of the flow's sides that feed the other.
    fn pollers(&self, name: &str, flow: &FlowSettings) -> Vec<Poller> {
        ingest::flow_pollers(
            name,
            flow,
            &self.connectors,
            &self.journal,
            self.settings.ingest.overlap,
        )
    }

    /// The connectors and objects whose changes the flow's runs take: its source sides (and
    /// comments, if it syncs them), less what a realtime flow also reads (the realtime
    /// dispatcher carries those at once).
    fn scopes(&self, flow: &FlowSettings) -> BTreeMap<String, Vec<String>> {
        let mut scopes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (side, feeds) in [
            (&flow.left, flow.direction.writes_right()),
            (&flow.right, flow.direction.writes_left()),
        ] {
            if !feeds {
                continue;
            }
            let waiting = scheduled_only(&self.settings, &side.connector);
            let mut objects = vec![side.object.clone()];
            if flow.comments {
                objects.push(COMMENT_OBJECT.to_string());
            }
            let entry = scopes.entry(side.connector.clone()).or_default();
            for object in objects {
                if waiting.contains(&object) && !entry.contains(&object) {
                    entry.push(object);
                }
            }
        }
        scopes.retain(|_, objects| !objects.is_empty());
        scopes
    }

    /// Before the first run of a scheduled flow side, its watermark is set to now: the first
    /// run reads what changed since the daemon first started with the flow, and what existed
    /// before is backfill's.
    async fn prepare(&self) -> Result<(), JournalError> {
        for (name, flow) in &self.settings.flows {
            if !matches!(flow.mode, FlowMode::Scheduled(_)) {
                continue;
            }
            for poller in self.pollers(name, flow) {
                let scope = name.clone();
                if self
                    .journal
                    .watermark(poller.connector(), poller.object(), &scope)
                    .await?
                    .is_none()
                {
                    let mark = Watermark {
                        connector: poller.connector().to_string(),
                        object: poller.object().to_string(),
                        scope,
                        position: now_ms(),
                        last_record_id: String::new(),
                    };
                    self.journal.append_all(Vec::new(), Some(mark)).await?;
                }
            }
        }
        Ok(())
    }

    /// Start the timers of the scheduled flows. A run missed while the daemon was down (or
    /// one interrupted) is started at once.
    pub async fn start(self: &Arc<Self>) -> Result<JoinSet<()>, JournalError> {
        self.prepare().await?;
        let mut timers = JoinSet::new();
        for (name, flow) in &self.settings.flows {
            if let Some(plan) = &flow.reconcile {
                let this = self.clone();
                let (name, plan) = (name.clone(), plan.clone());
                timers.spawn(async move { this.reconcile_timer(&name, &plan).await });
            }
            let FlowMode::Scheduled(schedule) = &flow.mode else {
                continue;
            };
            let this = self.clone();
            let (name, schedule) = (name.clone(), schedule.clone());
            timers.spawn(async move { this.timer(&name, &schedule).await });
        }
        Ok(timers)
    }

    async fn timer(self: Arc<Self>, flow: &str, schedule: &Schedule) {
        let mut trigger = "start";
        loop {
            let last = match self.journal.last_run(flow).await {
                Ok(last) => last,
                Err(error) => {
                    tracing::warn!(flow, %error, "reading the last run failed");
                    None
                }
            };
            let wait = match &last {
                Some(run) if run.status == "running" => Duration::from_secs(1),
                // A scheduled run cut off by a stop is caught up at start; an interrupted
                // backfill waits for the operator to run it again.
                Some(run)
                    if run.status == "interrupted"
                        && trigger == "start"
                        && run.trigger.as_deref() != Some("backfill") =>
                {
                    Duration::ZERO
                }
                Some(run) => until(next_after(schedule, run.started_at), Utc::now()),
                None => until(next_after(schedule, now_ms()), Utc::now()),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.stop.cancelled() => return,
            }
            if last.as_ref().is_some_and(|run| run.status == "running") {
                continue;
            }
            match self.trigger(flow, trigger).await {
                Ok(_) | Err(RunError::Running(_)) => {}
                Err(error) => tracing::warn!(flow, %error, "starting a scheduled run failed"),
            }
            trigger = "schedule";
            // Not straight back: when starting failed, the schedule's time is still past and
            // the next look would try again at once, in a loop.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    /// Reconcile `flow` now: compare both sides with the links, keep the report, and with
    /// `repair` append the changes that fix what was found. `since`: only records modified
    /// that long ago or later.
    pub async fn reconcile(
        &self,
        flow: &str,
        since: Option<Duration>,
        repair: bool,
    ) -> Result<Report, ReconcileError> {
        let since = since.map(|d| now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let report = Reconciler {
            settings: &self.settings,
            connectors: &self.connectors,
            journal: &self.journal,
        }
        .run(flow, since, repair)
        .await?;
        let json = serde_json::to_value(&report).unwrap_or_default();
        self.journal
            .save_reconcile_report(flow, report.started_at, &json)
            .await?;
        tracing::info!(
            flow,
            missing = report.missing.len(),
            drifted = report.drifted.len(),
            orphaned = report.orphaned.len(),
            in_flight = report.in_flight,
            enqueued = report.enqueued,
            api_calls = report.api_calls,
            "reconciled"
        );
        Ok(report)
    }

    /// Reconcile a flow on its `reconcile` schedule, counting from the last report.
    async fn reconcile_timer(self: Arc<Self>, flow: &str, plan: &ReconcileSchedule) {
        loop {
            let last = match self.journal.last_reconcile_report(flow).await {
                Ok(report) => report.and_then(|r| r["started_at"].as_i64()),
                Err(error) => {
                    tracing::warn!(flow, %error, "reading the last reconcile report failed");
                    None
                }
            };
            let wait = until(
                next_after(&plan.schedule, last.unwrap_or_else(now_ms)),
                Utc::now(),
            );
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.stop.cancelled() => return,
            }
            let stop = self.stop.clone();
            tokio::select! {
                result = self.reconcile(flow, plan.since, plan.repair) => {
                    if let Err(error) = result {
                        tracing::warn!(flow, %error, "a scheduled reconcile failed");
                        // Not again at once: the schedule counts from the last report.
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(60)) => {}
                            () = stop.cancelled() => return,
                        }
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }

    /// Stop the timers' runs: each gives back the changes it holds and is marked interrupted.
    pub async fn stop(&self) {
        self.stop.cancel();
        let mut runs = std::mem::take(
            &mut *self
                .runs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        while runs.join_next().await.is_some() {}
    }
}

/// When a flow scheduled so runs next, given its last run started at `last` (epoch ms).
pub fn next_after(schedule: &Schedule, last: i64) -> DateTime<Utc> {
    let last = Utc
        .timestamp_millis_opt(last)
        .single()
        .unwrap_or_else(Utc::now);
    match schedule {
        Schedule::Every(every) => {
            last + chrono::Duration::from_std(*every).unwrap_or(chrono::Duration::MAX)
        }
        Schedule::Cron { cron, timezone, .. } => cron
            .find_next_occurrence(&last.with_timezone(timezone), false)
            .map(|at| at.with_timezone(&Utc))
            // A cron that never fires again (validated at load) looks again daily.
            .unwrap_or_else(|_| last + chrono::Duration::days(1)),
    }
}

fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(text: &str) -> Schedule {
        match crate::config::from_toml::<crate::config::FlowMode>(text) {
            FlowMode::Scheduled(schedule) => schedule,
            FlowMode::Realtime => panic!("not scheduled: {text}"),
        }
    }

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn every_counts_from_the_last_run() {
        let every = schedule(r#"scheduled = { every = "15m" }"#);
        assert_eq!(
            next_after(&every, at("2026-11-24T10:00:00Z")),
            DateTime::parse_from_rfc3339("2026-11-24T10:15:00Z").unwrap()
        );
    }

    #[test]
    fn a_cron_is_read_in_its_time_zone_daylight_saving_included() {
        let utc = schedule(r#"scheduled = { cron = "0 2 * * *" }"#);
        assert_eq!(
            next_after(&utc, at("2026-11-24T10:00:00Z")),
            DateTime::parse_from_rfc3339("2026-11-25T02:00:00Z").unwrap()
        );
        let paris = schedule(r#"scheduled = { cron = "0 2 * * *", timezone = "Europe/Paris" }"#);
        // Winter: Paris is UTC+1.
        assert_eq!(
            next_after(&paris, at("2026-11-24T10:00:00Z")),
            DateTime::parse_from_rfc3339("2026-11-25T01:00:00Z").unwrap()
        );
        // Summer: UTC+2.
        assert_eq!(
            next_after(&paris, at("2026-07-01T10:00:00Z")),
            DateTime::parse_from_rfc3339("2026-07-02T00:00:00Z").unwrap()
        );
    }

    #[test]
    fn a_bad_time_zone_or_one_without_cron_is_refused_with_the_reason() {
        let refused = |value: serde_json::Value| {
            serde_json::from_value::<FlowMode>(value)
                .unwrap_err()
                .to_string()
        };
        let text = refused(json!({"scheduled": {"cron": "0 2 * * *", "timezone": "Mars/Olympus"}}));
        assert!(
            text.contains("`Mars/Olympus` is not an IANA time zone"),
            "{text}"
        );
        let text = refused(json!({"scheduled": {"every": "1h", "timezone": "Europe/Paris"}}));
        assert!(text.contains("timezone goes with `cron`"), "{text}");
        let text = refused(json!({"scheduled": {"every": "1h", "cron": "0 2 * * *"}}));
        assert!(text.contains("exactly one of `every` or `cron`"), "{text}");
    }
}
