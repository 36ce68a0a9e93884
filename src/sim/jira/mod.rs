//! Jira Cloud emulator (`tandem sim jira`): REST v2/v3 over one store, JQL search, workflow
//! transitions, comments, entity properties, signed webhooks with retries, a points rate limit.
//!
//! Seeded by default with project `SUP` (Task, Bug), the five priorities, the workflow
//! To Do → In Progress → Done and back, and custom fields `customfield_10050` / `10051`.

pub mod jql;
pub mod render;
mod routes;
pub mod store;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::control::{self, Control, Faults, Vendor};
use super::outbox::{Outbox, RetryPolicy};
use super::SimServer;
use store::{SeedFile, Store};

// No `Debug`: the options hold credentials.
#[derive(Clone, clap::Args)]
pub struct Options {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Email of the API account (HTTP basic user).
    #[arg(long, env = "JIRA_SIM_EMAIL", default_value = "sim@example.com")]
    pub email: String,
    /// API token of the API account (HTTP basic password).
    #[arg(long, env = "JIRA_SIM_TOKEN", default_value = "sim-token")]
    pub token: String,
    /// An OAuth 2.0 bearer token accepted for the API account (repeatable).
    #[arg(long = "oauth-token")]
    pub oauth_tokens: Vec<String>,
    /// Start empty: no project, no custom fields.
    #[arg(long)]
    pub no_seed: bool,
    /// JSON file with more projects, custom fields and accounts.
    #[arg(long)]
    pub seed_file: Option<PathBuf>,
    /// Points per rate-limit window, one per request (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub rate_limit: u64,
    /// Length of the rate-limit window.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub rate_window: Duration,
    /// Jira's burst limit: calls per second to each endpoint and method, above which it answers
    /// 429 `jira-burst-based` with `Retry-After` (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub burst_limit: u64,
    /// Register a webhook for every event at start (repeatable).
    #[arg(long = "webhook")]
    pub webhooks: Vec<String>,
    /// Secret the start-up webhooks are signed with.
    #[arg(long, env = "JIRA_SIM_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// Wait before the first webhook retry; each later retry waits twice as long. Jira Cloud
    /// waits 5–15 minutes; the default is short so retries are visible in tests and the demo.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub webhook_retry_delay: Duration,
    #[command(flatten)]
    pub faults: Faults,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            email: "sim@example.com".into(),
            token: "sim-token".into(),
            oauth_tokens: Vec::new(),
            no_seed: false,
            seed_file: None,
            rate_limit: 0,
            rate_window: Duration::from_secs(60),
            burst_limit: 0,
            webhooks: Vec::new(),
            webhook_secret: None,
            webhook_retry_delay: Duration::from_secs(1),
            faults: Faults::default(),
        }
    }
}

/// A running Jira emulator.
pub struct JiraSim {
    server: SimServer,
    sim: routes::Sim,
}

impl JiraSim {
    pub async fn start(options: Options) -> std::io::Result<JiraSim> {
        let seed = match &options.seed_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)?;
                let seed: SeedFile = serde_json::from_str(&text).map_err(|e| {
                    std::io::Error::other(format!("seed file {}: {e}", path.display()))
                })?;
                Some(seed)
            }
        };
        let mut store = Store::new(String::new(), &options.email, &options.token);
        if !options.no_seed {
            store.seed_default();
        }
        if let Some(seed) = &seed {
            store
                .apply_seed(seed)
                .map_err(|e| std::io::Error::other(format!("seed file: {e}")))?;
        }
        let api_account = store.accounts[0].account_id.clone();
        for token in &options.oauth_tokens {
            store
                .oauth_tokens
                .insert(token.clone(), api_account.clone());
        }
        for url in &options.webhooks {
            store.add_webhook(
                "tandem".into(),
                url.clone(),
                webhooks::EVENTS.iter().map(|e| e.to_string()).collect(),
                None,
                options.webhook_secret.clone(),
            );
        }
        options
            .faults
            .validate()
            .map_err(|e| std::io::Error::other(format!("invalid fault settings: {e}")))?;
        let control = Control::new(Vendor::Jira, options.faults.clone());
        // Jira: up to 5 retries.
        let delays = (0..5)
            .map(|i| options.webhook_retry_delay * 2u32.pow(i))
            .collect();
        let outbox = Outbox::new(
            control.clone(),
            RetryPolicy {
                delays,
                judge: webhooks::judge,
                timeout: Duration::from_secs(10),
            },
        );
        let sim = routes::Sim {
            store: Arc::new(Mutex::new(store)),
            outbox,
            control: control.clone(),
            limiter: Arc::new(Mutex::new(routes::RateWindow::new(
                options.rate_limit,
                options.rate_window,
            ))),
            burst: Arc::new(Mutex::new(routes::BurstLimit::new(options.burst_limit))),
        };
        let dump_sim = sim.clone();
        let dump: control::StateDump = Arc::new(move || state_dump(&dump_sim));
        let router = routes::router(sim.clone()).merge(control::routes(control, dump));
        let server = SimServer::start(options.listen, router).await?;
        sim.lock().base_url = server.base_url();
        Ok(JiraSim { server, sim })
    }

    /// `http://127.0.0.1:PORT`: the site URL (`https://{site}.atlassian.net` in real life).
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    pub fn control(&self) -> &Arc<Control> {
        &self.sim.control
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.sim.outbox
    }

    /// The store, for tests that seed or inspect state directly. Do not hold across `.await`.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.sim.lock()
    }

    /// Register a webhook as a Jira admin would; returns its id.
    pub fn add_webhook(&self, url: &str, secret: Option<&str>, jql: Option<&str>) -> u64 {
        self.sim.lock().add_webhook(
            "tandem".into(),
            url.into(),
            webhooks::EVENTS.iter().map(|e| e.to_string()).collect(),
            jql.map(str::to_string),
            secret.map(str::to_string),
        )
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

fn state_dump(sim: &routes::Sim) -> serde_json::Value {
    let store = sim.lock();
    let issues: Vec<_> = store
        .issues
        .values()
        .map(|i| {
            json!({
                "id": i.id.to_string(),
                "key": i.key,
                "summary": i.summary,
                "status": store.status(&i.status_id).map(|s| s.name.clone()),
                "updated": store::format_time(i.updated),
                "labels": i.labels,
                "custom": i.custom,
                "comments": i.comments.len(),
                "properties": i.properties,
            })
        })
        .collect();
    let hooks: Vec<_> = store
        .webhooks
        .iter()
        .map(|h| json!({ "id": h.id, "url": h.url, "events": h.events, "jql": h.jql, "signed": h.secret.is_some() }))
        .collect();
    json!({ "issues": issues, "webhooks": hooks, "deliveries": sim.outbox.records() })
}

/// `tandem sim jira`: run until `shutdown` is cancelled.
pub async fn serve(options: Options, shutdown: CancellationToken) -> std::io::Result<()> {
    let email = options.email.clone();
    let sim = JiraSim::start(options).await?;
    tracing::info!(
        base_url = %sim.base_url(),
        email = %email,
        "Jira emulator listening; authenticate with HTTP basic (email and the configured API token)"
    );
    println!("jira emulator at {}", sim.base_url());
    shutdown.cancelled().await;
    sim.stop().await;
    Ok(())
}
