//! Built-in emulators of Jira Cloud and Salesforce, speaking the vendors' wire formats.
//!
//! Tests, the demo and the benchmarks run against these, in process or standalone
//! (`tandem sim jira|salesforce`). What they share lives here: the server handle, fault injection
//! and call counters under `/__sim/` ([`control`]), and webhook delivery with retries ([`outbox`]).
//! The emulators never use Tandem's connector code: they are written from the vendors'
//! documentation on their own, so that a test against them is an independent check.

pub mod control;
pub mod jira;
pub mod outbox;
pub mod salesforce;

use std::future::IntoFuture;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running emulator's HTTP server.
pub struct SimServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl SimServer {
    /// Bind `listen` (port 0 for an ephemeral port) and serve `router` until stopped.
    pub async fn start(listen: SocketAddr, router: Router) -> std::io::Result<SimServer> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let server = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        let task = tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(%error, "emulator server failed");
            }
        });
        Ok(SimServer {
            addr,
            shutdown,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting, let in-flight requests finish, and wait.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}
