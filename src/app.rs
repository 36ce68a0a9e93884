//! Wiring and lifecycle: open the journal, bind the listener, serve until told to stop, then
//! stop in order (no new connections, in-flight requests finish, the journal writer commits what
//! it holds, connections close).

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::journal::{Journal, JournalError};
use crate::metrics::Metrics;

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
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Open the journal (migrating it if `storage.migrate_on_start`) and bind the listener.
    /// `server.listen` with port 0 binds an ephemeral port: see [`Application::local_addr`].
    pub async fn build(settings: Settings) -> Result<Application, AppError> {
        let journal = Journal::open(&settings.storage, &settings.journal).await?;
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
        let metrics = Arc::new(Metrics::new(journal.stats()));
        Ok(Application {
            listener,
            state: AppState {
                settings: Arc::new(settings),
                journal,
                metrics,
            },
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
        let Application { listener, state } = self;
        let grace = state.settings.server.shutdown_timeout;
        let journal = state.journal.clone();
        tracing::info!(addr = %listener.local_addr().map_err(AppError::Serve)?, "listening");
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
        // Every acknowledged change is already committed; this flushes what is queued and closes
        // the database cleanly (WAL checkpointed by the last connection).
        journal.close().await;
        tracing::info!("stopped");
        served
    }
}
