//! Per-connector traffic control: a request rate with a burst (governor), a cap on requests in
//! flight, a pause that stops all traffic after the vendor says "too many", and a daily budget.
//!
//! The budget is counted here in memory and persisted by the application (`api_usage`, see
//! `app`): connectors never touch the database. What the vendor reports about its own count
//! (`Sforce-Limit-Info`, Jira's `X-RateLimit-*`) caps what is left, so other integrations
//! spending the same org allowance are accounted for.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{ConnectorError, ErrorKind};
use crate::config::LimitSettings;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub connector: String,
    /// The HTTP status (`200`, `429`), or `error` when no answer came.
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectorLabel {
    pub connector: String,
}

/// Counters every connector updates; `/metrics` registers the same handles.
#[derive(Debug, Clone, Default)]
pub struct CallStats {
    /// Vendor calls by connector and HTTP status.
    pub calls: Family<CallLabels, Counter>,
    /// Times a connector was paused by the vendor (429, `REQUEST_LIMIT_EXCEEDED`, quota at 0).
    pub pauses: Family<ConnectorLabel, Counter>,
}

/// The budget as `/metrics` and the API show it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaSnapshot {
    /// The UTC day the counts are for, `yyyy-mm-dd`.
    pub day: String,
    /// Calls Tandem made today.
    pub used: u64,
    /// Tandem's budget for today: `daily_budget`, or `daily_budget_share` of the vendor's
    /// allowance once the vendor has reported it, whichever is smaller.
    pub budget: Option<u64>,
    /// Calls left: the smaller of what the budget leaves and what the vendor says is left.
    pub remaining: Option<u64>,
    /// The vendor's own count and allowance, as last reported.
    pub server_used: Option<u64>,
    pub server_max: Option<u64>,
    /// A windowed vendor quota (Jira's `X-RateLimit-Remaining` of `X-RateLimit-Limit`), as
    /// last reported; separate from the daily figures.
    pub window_remaining: Option<u64>,
    pub window_limit: Option<u64>,
    /// How long traffic stays paused, if it is.
    pub paused_for: Option<Duration>,
}

/// A day's count to persist (see [`Limiter::take_unsaved`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub day: String,
    pub calls: u64,
    pub server_used: Option<u64>,
    pub server_max: Option<u64>,
}

/// The circuit breaker's state, as `/metrics` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Calls fail fast until the cooldown ends.
    Open,
    /// The cooldown ended; one probe call is out.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Consecutive transport/5xx failures open it; after the cooldown one probe goes through; a
/// success closes it, a failure opens it again.
struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

struct State {
    breaker: Breaker,
    paused_until: Option<Instant>,
    day: NaiveDate,
    used: u64,
    server_used: Option<u64>,
    server_max: Option<u64>,
    window: Option<(u64, u64)>,
    unsaved: bool,
}

/// One per connector; every call to the vendor goes through [`Limiter::acquire`].
pub struct Limiter {
    connector: String,
    rate: DefaultDirectRateLimiter,
    slots: Arc<Semaphore>,
    daily_budget: Option<u64>,
    daily_share: Option<f64>,
    /// A caller waits out a pause this short; a longer one fails fast so the work waits in the
    /// journal instead of in memory.
    max_wait: Duration,
    state: Mutex<State>,
    stats: CallStats,
}

/// Held while a request is in flight (the concurrency slot).
pub struct Permit {
    _slot: OwnedSemaphorePermit,
}

impl Limiter {
    pub fn new(connector: &str, limits: &LimitSettings, stats: CallStats) -> Limiter {
        // Validated in config: rate > 0, burst >= 1, concurrency >= 1.
        let period =
            Duration::from_secs_f64(1.0 / limits.requests_per_second).max(Duration::from_nanos(1));
        let burst = limits
            .burst
            .unwrap_or_else(|| limits.requests_per_second.ceil().max(1.0) as u32);
        let quota = Quota::with_period(period)
            .expect("a positive period")
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("at least 1"));
        Limiter {
            connector: connector.to_string(),
            rate: RateLimiter::direct(quota),
            slots: Arc::new(Semaphore::new(limits.max_concurrency.max(1) as usize)),
            daily_budget: limits.daily_budget,
            daily_share: limits.daily_budget_share,
            max_wait: limits.timeout,
            state: Mutex::new(State {
                breaker: Breaker {
                    threshold: u32::MAX,
                    cooldown: Duration::from_secs(30),
                    failures: 0,
                    open_until: None,
                    probing: false,
                },
                paused_until: None,
                day: today(),
                used: 0,
                server_used: None,
                server_max: None,
                window: None,
                unsaved: false,
            }),
            stats,
        }
    }

    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// Arm the circuit breaker: `threshold` consecutive transport/5xx failures open it for
    /// `cooldown`. (Off until called.)
    pub fn set_breaker(&self, threshold: u32, cooldown: Duration) {
        let mut state = self.state();
        state.breaker.threshold = threshold.max(1);
        state.breaker.cooldown = cooldown;
    }

    pub fn breaker_state(&self) -> BreakerState {
        let state = self.state();
        match state.breaker.open_until {
            None => BreakerState::Closed,
            Some(until) if until > Instant::now() => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// A call's result for the breaker: `failed` for no answer or a 5xx.
    pub fn record_result(&self, failed: bool) {
        let mut state = self.state();
        let breaker = &mut state.breaker;
        breaker.probing = false;
        if !failed {
            breaker.failures = 0;
            if breaker.open_until.take().is_some() {
                tracing::info!(connector = %self.connector, "circuit breaker closed: the probe succeeded");
            }
            return;
        }
        breaker.failures = breaker.failures.saturating_add(1);
        let reopen = breaker.open_until.is_some();
        if reopen || breaker.failures >= breaker.threshold {
            breaker.open_until = Some(Instant::now() + breaker.cooldown);
            tracing::warn!(
                connector = %self.connector,
                failures = breaker.failures,
                cooldown_s = breaker.cooldown.as_secs_f64(),
                "circuit breaker open: calls stop for the cooldown"
            );
        }
    }

    /// Refuse while the breaker is open; after the cooldown, let exactly one probe through.
    fn check_breaker(&self, state: &mut State, operation: &str) -> Result<(), ConnectorError> {
        let breaker = &mut state.breaker;
        let Some(until) = breaker.open_until else {
            return Ok(());
        };
        let now = Instant::now();
        let wait = if until > now {
            until - now
        } else if !breaker.probing {
            breaker.probing = true;
            return Ok(());
        } else {
            // A probe is out: wait for its answer (at most the cooldown again).
            breaker.cooldown.min(Duration::from_secs(1))
        };
        Err(ConnectorError::new(
            &self.connector,
            operation,
            ErrorKind::CircuitOpen,
            format!(
                "circuit breaker open after {} consecutive failures; next probe in {}s",
                breaker.failures,
                wait.as_secs()
            ),
        )
        .with_retry_after(wait))
    }

    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain numbers: a panic elsewhere cannot leave it inconsistent.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let day = today();
        if state.day != day {
            state.day = day;
            state.used = 0;
            state.unsaved = true;
        }
        state
    }

    /// Wait for the right to make one call: not paused, budget left, rate and a slot available.
    /// Counts the call against today's budget.
    pub async fn acquire(&self, operation: &str) -> Result<Permit, ConnectorError> {
        loop {
            self.wait_out_pause(operation).await?;
            self.rate.until_ready().await;
            let slot = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let mut state = self.state();
            // A pause may have begun while this call waited for the rate or a slot: calls
            // queued behind a 429 must not all go out as soon as slots free up.
            if state
                .paused_until
                .is_some_and(|until| until > Instant::now())
            {
                continue;
            }
            // Only Tandem's own budget refuses here. The vendor's count is advisory: it is only
            // refreshed by answers, so refusing on it would never recover. When the vendor is
            // really out, its refusal (429, `REQUEST_LIMIT_EXCEEDED`, a quota at 0 with a reset
            // time) pauses the connector, and the first call after the pause is the probe.
            // Checked and counted under one lock, so concurrent calls cannot overshoot it.
            self.check_breaker(&mut state, operation)?;
            if let Some(budget) = self.budget(&state).filter(|b| state.used >= *b) {
                return Err(ConnectorError::new(
                    &self.connector,
                    operation,
                    ErrorKind::Budget,
                    format!("today's budget of {budget} calls is spent"),
                )
                .with_retry_after(until_midnight()));
            }
            state.used += 1;
            state.unsaved = true;
            return Ok(Permit { _slot: slot });
        }
    }

    /// Sleep through a short pause; fail fast on a long one so the work waits in the journal.
    async fn wait_out_pause(&self, operation: &str) -> Result<(), ConnectorError> {
        loop {
            let wait = {
                let state = self.state();
                state
                    .paused_until
                    .and_then(|until| until.checked_duration_since(Instant::now()))
            };
            match wait {
                None => return Ok(()),
                Some(wait) if wait <= self.max_wait => tokio::time::sleep(wait).await,
                Some(wait) => {
                    return Err(ConnectorError::new(
                        &self.connector,
                        operation,
                        ErrorKind::RateLimited,
                        format!(
                            "paused by the vendor's rate limit for {}s more",
                            wait.as_secs()
                        ),
                    )
                    .with_retry_after(wait))
                }
            }
        }
    }

    /// Mark today's count as not yet persisted (after a failed save).
    pub fn mark_unsaved(&self) {
        self.state().unsaved = true;
    }

    /// Stop all traffic for `duration` (the longest pause asked for wins).
    pub fn pause(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut state = self.state();
        if state.paused_until.is_none_or(|current| current < until) {
            state.paused_until = Some(until);
        }
        drop(state);
        self.stats
            .pauses
            .get_or_create(&ConnectorLabel {
                connector: self.connector.clone(),
            })
            .inc();
        tracing::warn!(
            connector = %self.connector,
            seconds = duration.as_secs_f64(),
            "vendor rate limit: pausing all calls"
        );
    }

    /// Count one answer (or `None` for no answer) in `/metrics`.
    pub fn count_call(&self, status: Option<u16>) {
        let _ = CALLS_IN_SCOPE.try_with(|calls| calls.fetch_add(1, Ordering::Relaxed));
        self.stats
            .calls
            .get_or_create(&CallLabels {
                connector: self.connector.clone(),
                status: status.map_or_else(|| "error".to_string(), |s| s.to_string()),
            })
            .inc();
    }

    /// What the vendor says about its own count: `used` of `max`.
    pub fn observe_server_usage(&self, used: u64, max: u64) {
        let mut state = self.state();
        if state.server_used != Some(used) || state.server_max != Some(max) {
            state.server_used = Some(used);
            state.server_max = Some(max);
            state.unsaved = true;
        }
    }

    /// What the vendor says about a windowed quota: `remaining` of `limit` in the current
    /// window. Shown, not budgeted: the vendor's refusal pauses the connector.
    pub fn observe_window_quota(&self, remaining: u64, limit: u64) {
        self.state().window = Some((remaining, limit));
    }

    fn budget(&self, state: &State) -> Option<u64> {
        let share = self
            .daily_share
            .zip(state.server_max)
            .map(|(share, max)| (share * max as f64).floor() as u64);
        match (self.daily_budget, share) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn remaining(&self, state: &State) -> Option<u64> {
        let own = self.budget(state).map(|b| b.saturating_sub(state.used));
        let server = state
            .server_max
            .zip(state.server_used)
            .map(|(max, used)| max.saturating_sub(used));
        match (own, server) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn snapshot(&self) -> QuotaSnapshot {
        let state = self.state();
        QuotaSnapshot {
            day: state.day.to_string(),
            used: state.used,
            budget: self.budget(&state),
            remaining: self.remaining(&state),
            server_used: state.server_used,
            server_max: state.server_max,
            window_remaining: state.window.map(|w| w.0),
            window_limit: state.window.map(|w| w.1),
            paused_for: state
                .paused_until
                .and_then(|until| until.checked_duration_since(Instant::now())),
        }
    }

    /// Start from what was persisted for `day` (ignored unless it is today).
    pub fn restore(&self, usage: &Usage) {
        let mut state = self.state();
        if usage.day == state.day.to_string() {
            state.used = state.used.max(usage.calls);
            state.server_used = state.server_used.or(usage.server_used);
            state.server_max = state.server_max.or(usage.server_max);
        }
    }

    /// Today's count if it changed since the last call, for the application to persist.
    pub fn take_unsaved(&self) -> Option<Usage> {
        let mut state = self.state();
        if !state.unsaved {
            return None;
        }
        state.unsaved = false;
        Some(Usage {
            day: state.day.to_string(),
            calls: state.used,
            server_used: state.server_used,
            server_max: state.server_max,
        })
    }
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn until_midnight() -> Duration {
    let now = Utc::now();
    let midnight = (now.date_naive() + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    (midnight - now).to_std().unwrap_or(Duration::from_secs(60))
}

tokio::task_local! {
    /// Calls made on behalf of one piece of work (a scheduled run), whatever the connector.
    static CALLS_IN_SCOPE: Arc<AtomicU64>;
}

/// Run `work`, counting in `calls` every vendor call it makes (in this task; work spawned
/// from it is counted when it is wrapped the same way). This is how a run reports the calls it
/// spent, apart from the realtime traffic on the same connectors.
pub async fn counting_calls<F: std::future::Future>(calls: Arc<AtomicU64>, work: F) -> F::Output {
    CALLS_IN_SCOPE.scope(calls, work).await
}

/// The counter of the current [`counting_calls`] scope, to carry into spawned work.
pub fn calls_in_scope() -> Option<Arc<AtomicU64>> {
    CALLS_IN_SCOPE.try_with(Arc::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(budget: Option<u64>, share: Option<f64>) -> LimitSettings {
        LimitSettings {
            requests_per_second: 1000.0,
            daily_budget: budget,
            daily_budget_share: share,
            ..LimitSettings::default()
        }
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_until_midnight() {
        let limiter = Limiter::new("sf", &limits(Some(2), None), CallStats::default());
        limiter.acquire("a").await.unwrap();
        limiter.acquire("b").await.unwrap();
        let error = limiter.acquire("c").await.err().unwrap();
        assert_eq!(error.kind, ErrorKind::Budget);
        assert!(error.retry_after.unwrap() <= Duration::from_secs(86_400));
        assert_eq!(limiter.snapshot().remaining, Some(0));
    }

    #[tokio::test]
    async fn a_share_of_the_vendor_allowance_is_the_budget_once_reported() {
        let limiter = Limiter::new("sf", &limits(None, Some(0.5)), CallStats::default());
        assert_eq!(limiter.snapshot().budget, None);
        limiter.observe_server_usage(10, 100);
        let snap = limiter.snapshot();
        assert_eq!(snap.budget, Some(50));
        assert_eq!(snap.remaining, Some(50));
        // Other integrations spending the org's calls leave less than our share.
        limiter.observe_server_usage(95, 100);
        assert_eq!(limiter.snapshot().remaining, Some(5));
        // The vendor's count never blocks by itself: only answers refresh it, so a block on it
        // could never lift. The vendor's refusal pauses the connector instead.
        limiter.observe_server_usage(100, 100);
        assert_eq!(limiter.snapshot().remaining, Some(0));
        limiter.acquire("probe").await.unwrap();
    }

    #[tokio::test]
    async fn a_long_pause_fails_fast_and_a_short_one_is_waited_out() {
        let mut settings = limits(None, None);
        settings.timeout = Duration::from_millis(200);
        let limiter = Limiter::new("jira", &settings, CallStats::default());
        limiter.pause(Duration::from_secs(60));
        let error = limiter.acquire("x").await.err().unwrap();
        assert_eq!(error.kind, ErrorKind::RateLimited);
        assert!(error.retry_after.unwrap() > Duration::from_secs(50));

        let limiter = Limiter::new("jira", &settings, CallStats::default());
        limiter.pause(Duration::from_millis(50));
        let started = Instant::now();
        limiter.acquire("x").await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(45));
    }

    #[tokio::test]
    async fn a_call_queued_for_a_slot_when_the_pause_begins_waits_for_it_to_end() {
        let mut settings = limits(None, None);
        settings.max_concurrency = 1;
        let limiter = Arc::new(Limiter::new("jira", &settings, CallStats::default()));
        let held = limiter.acquire("first").await.unwrap();
        let queued = {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let _permit = limiter.acquire("second").await.unwrap();
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let paused_at = Instant::now();
        limiter.pause(Duration::from_millis(150));
        drop(held);
        let sent_at = queued.await.unwrap();
        assert!(sent_at.duration_since(paused_at) >= Duration::from_millis(140));
    }

    #[tokio::test]
    async fn the_breaker_opens_after_consecutive_failures_and_one_probe_closes_it() {
        let limiter = Limiter::new("sf", &limits(None, None), CallStats::default());
        limiter.set_breaker(3, Duration::from_millis(100));
        for _ in 0..2 {
            limiter.acquire("x").await.unwrap();
            limiter.record_result(true);
        }
        limiter.acquire("x").await.unwrap();
        limiter.record_result(false);
        assert_eq!(
            limiter.breaker_state(),
            BreakerState::Closed,
            "a success resets"
        );
        for _ in 0..3 {
            limiter.acquire("x").await.unwrap();
            limiter.record_result(true);
        }
        assert_eq!(limiter.breaker_state(), BreakerState::Open);
        let refused = limiter.acquire("x").await.err().unwrap();
        assert_eq!(refused.kind, ErrorKind::CircuitOpen);
        assert!(refused.retry_after.is_some());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(limiter.breaker_state(), BreakerState::HalfOpen);
        let _probe = limiter.acquire("probe").await.unwrap();
        assert!(
            limiter.acquire("second").await.is_err(),
            "one probe at a time"
        );
        limiter.record_result(true);
        assert_eq!(
            limiter.breaker_state(),
            BreakerState::Open,
            "a failed probe reopens"
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        limiter.acquire("probe").await.unwrap();
        limiter.record_result(false);
        assert_eq!(
            limiter.breaker_state(),
            BreakerState::Closed,
            "a good probe closes"
        );
        limiter.acquire("x").await.unwrap();
    }

    #[tokio::test]
    async fn restored_usage_counts_only_for_today_and_unsaved_is_reported_once() {
        let limiter = Limiter::new("sf", &limits(Some(100), None), CallStats::default());
        limiter.restore(&Usage {
            day: "2000-01-01".into(),
            calls: 99,
            server_used: None,
            server_max: None,
        });
        assert_eq!(limiter.snapshot().used, 0);
        let day = limiter.snapshot().day;
        limiter.restore(&Usage {
            day: day.clone(),
            calls: 40,
            server_used: None,
            server_max: None,
        });
        limiter.acquire("x").await.unwrap();
        let usage = limiter.take_unsaved().unwrap();
        assert_eq!((usage.day, usage.calls), (day, 41));
        assert_eq!(limiter.take_unsaved(), None);
    }
}
