//! Wiring and lifecycle: open the journal, bind the listener, serve until told to stop, then
//! stop in order (no new connections, in-flight requests finish, the journal writer commits what
//! it holds, connections close).

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::connectors::{CallStats, ConnectorError, Connectors};
use crate::ingest;
use crate::journal::{Journal, JournalError};
use crate::metrics::Metrics;
use crate::schedule::Scheduler;
use crate::sync::engine::Engine;

/// How often API call counts are written to `api_usage`. A crash loses at most this much
/// counting: the budget is a guard rail, and the vendor's own count still caps it.
const USAGE_FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("connector: {0}")]
    Connector(#[from] ConnectorError),
    #[error(
        "another Tandem daemon is using {database} (it holds {lock}); \
         stop it first, or give this one its own `storage.url`"
    )]
    AlreadyRunning { database: String, lock: String },
    #[error("cannot lock {lock}: {source}")]
    Lock {
        lock: String,
        #[source]
        source: std::io::Error,
    },
}

/// One daemon per journal: an exclusive lock on `<database>.lock`, held for the daemon's life
/// and dropped by the kernel when the process dies (so a SIGKILL leaves no stale lock). Owning
/// the journal is what lets a starting daemon take back every lease at once: a lease still
/// held can only be a dead process's. `None` for an in-memory database, which nobody shares.
fn lock_journal(
    storage: &crate::config::StorageSettings,
) -> Result<Option<std::fs::File>, AppError> {
    let file = crate::journal::connect_options(storage)?
        .get_filename()
        .to_path_buf();
    if file.as_os_str().is_empty() || file == std::path::Path::new(":memory:") {
        return Ok(None);
    }
    let mut name = file.clone().into_os_string();
    name.push(".lock");
    let lock = std::path::PathBuf::from(name);
    let shown = lock.display().to_string();
    let handle = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| AppError::Lock {
            lock: shown.clone(),
            source,
        })?;
    match handle.try_lock() {
        Ok(()) => Ok(Some(handle)),
        Err(std::fs::TryLockError::WouldBlock) => Err(AppError::AlreadyRunning {
            database: file.display().to_string(),
            lock: shown,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(AppError::Lock {
            lock: shown,
            source,
        }),
    }
}

pub struct Application {
    listener: TcpListener,
    engine: Arc<Engine>,
    state: AppState,
    /// Held until the daemon has stopped: see [`lock_journal`].
    lock: Option<std::fs::File>,
}

impl Application {
    /// Open the journal (migrating it if `storage.migrate_on_start`) and bind the listener.
    /// `server.listen` with port 0 binds an ephemeral port: see [`Application::local_addr`].
    pub async fn build(settings: Settings) -> Result<Application, AppError> {
        let journal = Journal::open(&settings.storage, &settings.journal).await?;
        let lock = match lock_journal(&settings.storage) {
            Ok(lock) => lock,
            Err(error) => {
                journal.close().await;
                return Err(error);
            }
        };
        if settings.storage.migrate_on_start {
            if let Err(e) = journal.migrate().await {
                journal.close().await;
                return Err(e.into());
            }
        }
        let addr = settings.server.listen;
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(source) => {
                journal.close().await;
                return Err(AppError::Bind { addr, source });
            }
        };
        let calls = CallStats::default();
        let connectors = match Connectors::build(&settings, &calls) {
            Ok(connectors) => connectors,
            Err(error) => {
                journal.close().await;
                return Err(error.into());
            }
        };
        // Today's spending so far survives a restart.
        for (name, connector) in connectors.iter() {
            let limiter = connector.limiter();
            let day = limiter.snapshot().day;
            if let Some((calls, server_used, server_max)) = journal.api_usage(name, &day).await? {
                limiter.restore(&crate::connectors::Usage {
                    day,
                    calls,
                    server_used,
                    server_max,
                });
            }
        }
        for (_, connector) in connectors.iter() {
            connector.limiter().set_breaker(
                settings.dispatch.breaker_threshold,
                settings.dispatch.breaker_cooldown,
            );
        }
        let metrics = Arc::new(Metrics::new(journal.stats(), &calls));
        let settings = Arc::new(settings);
        let engine = Arc::new(Engine::new(
            settings.clone(),
            connectors.clone(),
            journal.clone(),
        ));
        let scheduler = Scheduler::new(
            settings.clone(),
            connectors.clone(),
            journal.clone(),
            metrics.clone(),
            engine.clone(),
        );
        Ok(Application {
            listener,
            engine,
            state: AppState {
                settings,
                journal,
                metrics,
                connectors,
                scheduler,
            },
            lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    pub fn journal(&self) -> &Journal {
        &self.state.journal
    }

    /// Serve until `shutdown` is cancelled, then stop gracefully within `server.shutdown_timeout`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let Application {
            listener,
            engine,
            state,
            lock,
        } = self;
        let grace = state.settings.server.shutdown_timeout;
        let journal = state.journal.clone();
        let connectors = state.connectors.clone();
        tracing::info!(addr = %listener.local_addr().map_err(AppError::Serve)?, "listening");
        let workers = CancellationToken::new();
        // Credentials are checked at start so a wrong token shows in the log at once, not at the
        // first change; a vendor that is down does not stop Tandem from taking webhooks.
        for (name, connector) in connectors.iter() {
            let (name, connector) = (name.clone(), connector.clone());
            let stop = workers.clone();
            tokio::spawn(async move {
                tokio::select! {
                    result = connector.check() => match result {
                        Ok(()) => tracing::info!(connector = %name, "connector credentials accepted"),
                        Err(error) => tracing::warn!(connector = %name, %error, "connector check failed"),
                    },
                    () = stop.cancelled() => {}
                }
            });
        }
        // One daemon owns a SQLite journal: what is still leased or running is a dead process's.
        match journal.take_over().await {
            Ok(taken) => {
                for (run, flow) in &taken.runs {
                    tracing::warn!(
                        flow,
                        run,
                        "a run of a previous process was interrupted; it is caught up now"
                    );
                }
                if taken.changes > 0 {
                    tracing::info!(
                        changes = taken.changes,
                        "took back changes a previous process left in flight"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not take over from a previous process; its leases will expire")
            }
        }
        let mut dispatchers = crate::dispatch::spawn(
            state.settings.clone(),
            state.connectors.clone(),
            engine,
            state.journal.clone(),
            state.metrics.clone(),
            workers.clone(),
        );
        let mut pollers = ingest::spawn(
            ingest::pollers(&state.settings, &state.connectors, &state.journal),
            state.settings.ingest.safety_poll_interval,
            state.metrics.clone(),
            workers.clone(),
        );
        let scheduler = state.scheduler.clone();
        let mut timers = match scheduler.start().await {
            Ok(timers) => timers,
            Err(error) => {
                // Stop what was started, in the usual order, before reporting it.
                workers.cancel();
                while pollers.join_next().await.is_some() {}
                while dispatchers.join_next().await.is_some() {}
                journal.close().await;
                return Err(error.into());
            }
        };
        let usage = tokio::spawn(flush_usage_until(
            connectors.clone(),
            journal.clone(),
            workers.clone(),
        ));
        let server = axum::serve(listener, api::router(state))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        tokio::pin!(server);
        let served = tokio::select! {
            result = &mut server => result.map_err(AppError::Serve),
            () = shutdown.cancelled() => {
                tracing::info!(grace = ?grace, "shutting down: finishing in-flight requests");
                match tokio::time::timeout(grace, &mut server).await {
                    Ok(result) => result.map_err(AppError::Serve),
                    Err(_) => {
                        tracing::warn!(
                            grace = ?grace,
                            "in-flight requests did not finish in time; closing them"
                        );
                        Ok(())
                    }
                }
            }
        };
        // Workers stop at their next await; a poll page is stored with its watermark or not at
        // all, so stopping mid-poll loses nothing.
        workers.cancel();
        while pollers.join_next().await.is_some() {}
        timers.abort_all();
        while timers.join_next().await.is_some() {}
        // A run being stopped gives its claimed changes back and is marked interrupted.
        scheduler.stop().await;
        // A change cut off mid-flight keeps its lease until it expires or the next start takes
        // it back, then is retried: its write is idempotent (the marker on creates, echo
        // suppression on updates).
        while dispatchers.join_next().await.is_some() {}
        let _ = usage.await;
        // Every acknowledged change is already committed; this flushes what is queued and closes
        // the database cleanly (WAL checkpointed by the last connection).
        journal.close().await;
        // Only now may another daemon open this journal.
        drop(lock);
        tracing::info!("stopped");
        served
    }
}

/// Persist each connector's API call count while running, and once more when stopping.
async fn flush_usage_until(connectors: Connectors, journal: Journal, stop: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(USAGE_FLUSH_EVERY) => false,
            () = stop.cancelled() => true,
        };
        for (name, connector) in connectors.iter() {
            if let Some(usage) = connector.limiter().take_unsaved() {
                if let Err(error) = journal
                    .save_api_usage(
                        name,
                        &usage.day,
                        usage.calls,
                        usage.server_used,
                        usage.server_max,
                    )
                    .await
                {
                    connector.limiter().mark_unsaved();
                    tracing::warn!(connector = %name, %error, "could not save API usage");
                }
            }
        }
        if stopping {
            return;
        }
    }
}
