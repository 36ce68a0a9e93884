//! Settings: layered sources, typed at load, validated before anything is built.
//!
//! Layers, later wins: the defaults compiled into the binary (`config/default.toml`), the same file
//! on disk if present, `config/local.toml` if present, the `--config FILE`, then environment
//! variables `TANDEM__SECTION__KEY`. Parsing errors carry the key path that caused them
//! (`connectors.jira.auth.api_token: environment variable JIRA_API_TOKEN is not set`); cross-checks
//! (a flow naming a connector that does not exist, ...) are collected so one run reports them all.

mod flow;
mod secret;
mod types;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use flow::{
    ConflictPolicy, DeletePolicy, Direction, FieldRule, FlowMode, FlowSettings, ReconcileSchedule,
    Schedule, SideSettings, Transform,
};
pub use secret::Secret;
pub use types::{
    ConnectorKind, ConnectorSettings, JiraAuth, JiraSettings, LimitSettings, SalesforceAuth,
    SalesforceSettings,
};

/// The defaults every other layer overrides; compiled in so the binary runs anywhere.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Everything Tandem reads from its configuration, checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub journal: JournalSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    pub ingest: IngestSettings,
    pub dispatch: DispatchSettings,
    /// Configured systems, by the name flows and webhook URLs use.
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorSettings>,
    /// Sync flows, by name.
    #[serde(default)]
    pub flows: BTreeMap<String, FlowSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP server binds. Default `127.0.0.1:8080` (loopback only).
    pub listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// A request still running after this gets 408. Default `30s`.
    #[serde(with = "types::duration")]
    pub request_timeout: Duration,
    /// How long shutdown waits for in-flight requests and workers. Default `30s`.
    #[serde(with = "types::duration")]
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// The journal database. Default `sqlite://data/tandem.db`.
    pub url: String,
    /// SQLite `synchronous`: `full` (default; every commit survives power loss) or `normal`.
    pub synchronous: Synchronous,
    /// How long a connection waits for the write lock before failing. Default `5s`.
    #[serde(with = "types::duration")]
    pub busy_timeout: Duration,
    /// Pooled connections for reads and the dispatcher's updates. Default 8.
    pub max_connections: u32,
    /// Apply pending migrations at start. Default true; turn off to run `tandem migrate` yourself.
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSettings {
    /// Share one transaction (one fsync) among concurrent inserts. Default true.
    pub group_commit: bool,
    /// Most insert requests one group commit takes. Default 1024.
    pub max_batch: usize,
    /// Insert requests that may wait for the writer before callers are pushed back. Default 8192.
    pub queue_capacity: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// How often a realtime flow polls each side anyway, to catch what webhooks missed.
    /// Default `15m`.
    #[serde(with = "types::duration")]
    pub safety_poll_interval: Duration,
    /// How far before its watermark a poll starts reading again: covers clock skew and records
    /// committed late with an earlier modified time. Default `2m`.
    #[serde(with = "types::duration")]
    pub overlap: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchSettings {
    /// Attempts before a change that keeps failing with retryable errors is dead-lettered.
    /// Default 8.
    pub max_attempts: u32,
    /// A change still failing this long after it was received is dead-lettered even with
    /// attempts left. Default `24h`.
    #[serde(with = "types::duration")]
    pub max_age: Duration,
    /// First retry delay; doubles per attempt, with full jitter. Default `1s`.
    #[serde(with = "types::duration")]
    pub base_delay: Duration,
    /// Longest retry delay. Default `5m`.
    #[serde(with = "types::duration")]
    pub max_delay: Duration,
    /// Changes one worker claims at a time. Default 32.
    pub batch: u32,
    /// How long a claim is held; an expired claim is taken over (its worker died). Default `2m`.
    #[serde(with = "types::duration")]
    pub lease: Duration,
    /// Consecutive transport or 5xx failures that open a connector's circuit breaker. Default 5.
    pub breaker_threshold: u32,
    /// How long an open breaker stops calls before one probe is let through. Default `30s`.
    #[serde(with = "types::duration")]
    pub breaker_cooldown: Duration,
    /// How long a worker with nothing to do waits before looking again. Default `200ms`.
    #[serde(with = "types::duration")]
    pub idle_wait: Duration,
    /// How long an idle worker woken by new work waits before claiming it, so that a burst of
    /// edits to one record goes out as one write: freshness traded for API calls. `0s` claims
    /// at once. Default `50ms`.
    #[serde(with = "types::duration")]
    pub coalesce: Duration,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A `tracing` filter, e.g. `info` or `tandem=debug,info`. Default `info`; `RUST_LOG` wins.
    #[serde(default)]
    pub level: Option<String>,
    /// `pretty` (default) or `json`; the `--log-format` flag wins.
    #[serde(default)]
    pub format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Bearer token for `/api/v1`; without one the admin API is refused.
    #[serde(default)]
    pub token: Option<Secret>,
}

/// One configuration mistake, with the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Source(#[from] config::ConfigError),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The individual mistakes, for callers that report them one by one.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Invalid(p) => p.clone(),
            other => vec![Problem {
                path: String::new(),
                message: other.to_string(),
            }],
        }
    }
}

/// Where configuration comes from; tests point `base_dir` at a temporary directory.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Directory holding `config/default.toml` and `config/local.toml`.
    pub base_dir: PathBuf,
    /// The `--config FILE`, if given.
    pub file: Option<PathBuf>,
    /// Read `TANDEM__*` environment variables.
    pub env: bool,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            base_dir: PathBuf::from("."),
            file: None,
            env: true,
        }
    }
}

impl Settings {
    /// Load from the standard layers, relative to the current directory.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(&Sources {
            file: file.map(Path::to_path_buf),
            ..Sources::default()
        })
    }

    pub fn load_from(sources: &Sources) -> Result<Settings, ConfigError> {
        use config::{Environment, File, FileFormat};
        let mut builder = config::Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .add_source(File::from(sources.base_dir.join("config/default.toml")).required(false))
            .add_source(File::from(sources.base_dir.join("config/local.toml")).required(false));
        if let Some(file) = &sources.file {
            if !file.is_file() {
                return Err(ConfigError::MissingFile(file.clone()));
            }
            builder = builder.add_source(File::from(file.as_path()).format(FileFormat::Toml));
        }
        if sources.env {
            builder = builder.add_source(
                Environment::with_prefix("TANDEM")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            );
        }
        let value: serde_json::Value = builder.build()?.try_deserialize()?;
        Self::from_value(value)
    }

    /// Parse an already merged document: what the layers produce, or a test's literal.
    pub fn from_value(value: serde_json::Value) -> Result<Settings, ConfigError> {
        let settings: Settings = serde_path_to_error::deserialize(value)
            .map_err(|e| ConfigError::Invalid(vec![problem_from_path_error(e)]))?;
        let problems = settings.validate();
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Cross-checks that no single key can make: every mistake found, not just the first.
    fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut push = |path: String, message: String| problems.push(Problem { path, message });
        if self.server.max_body_bytes == 0 {
            push(
                "server.max_body_bytes".into(),
                "must be greater than 0".into(),
            );
        }
        if self.storage.max_connections == 0 {
            push(
                "storage.max_connections".into(),
                "must be at least 1".into(),
            );
        }
        if !self.storage.url.starts_with("sqlite:") {
            push(
                "storage.url".into(),
                format!(
                    "`{}` is not a SQLite URL (expected e.g. `sqlite://data/tandem.db`)",
                    self.storage.url
                ),
            );
        }
        if self.ingest.safety_poll_interval.is_zero() {
            push(
                "ingest.safety_poll_interval".into(),
                "must be longer than 0s".into(),
            );
        }
        if self.dispatch.max_attempts == 0 {
            push("dispatch.max_attempts".into(), "must be at least 1".into());
        }
        if self.dispatch.batch == 0 {
            push("dispatch.batch".into(), "must be at least 1".into());
        }
        if self.dispatch.breaker_threshold == 0 {
            push(
                "dispatch.breaker_threshold".into(),
                "must be at least 1".into(),
            );
        }
        // Zero would make a dispatcher spin on the database, or retry a failing vendor at once.
        for (key, value) in [
            ("dispatch.idle_wait", self.dispatch.idle_wait),
            ("dispatch.base_delay", self.dispatch.base_delay),
            ("dispatch.max_delay", self.dispatch.max_delay),
        ] {
            if value.is_zero() {
                push(key.into(), "must be longer than 0s".into());
            }
        }
        if self.dispatch.lease < Duration::from_secs(1) {
            push("dispatch.lease".into(), "must be at least 1s".into());
        }
        if self.journal.max_batch == 0 {
            push("journal.max_batch".into(), "must be at least 1".into());
        }
        if self.journal.queue_capacity == 0 {
            push("journal.queue_capacity".into(), "must be at least 1".into());
        }
        for (name, connector) in &self.connectors {
            for (path, message) in connector.validate() {
                push(format!("connectors.{name}.{path}"), message);
            }
        }
        for (name, flow) in &self.flows {
            for (path, message) in flow.validate(&self.connectors) {
                push(format!("flows.{name}.{path}"), message);
            }
        }
        problems
    }
}

/// A serde error deep inside a tagged section carries its inner path in its message (see
/// [`types::nested`]); stitch the two halves back into one key path.
fn problem_from_path_error(e: serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let outer = e.path().to_string();
    let message = e.inner().to_string();
    // serde_json appends " at line N column M" only for text input; a Value has none.
    let (inner, message) = types::split_nested(&message);
    let path = match (outer.as_str(), inner) {
        (".", None) => String::new(),
        (".", Some(inner)) => inner.to_string(),
        (outer, None) => outer.to_string(),
        (outer, Some(inner)) => format!("{outer}.{inner}"),
    };
    Problem {
        path,
        message: message.to_string(),
    }
}

/// A settings fragment from TOML text, for unit tests of the modules that use it.
#[cfg(test)]
pub(crate) fn from_toml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    let value: serde_json::Value = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .expect("valid TOML");
    serde_json::from_value(value).expect("the fragment's shape")
}

#[cfg(test)]
mod tests;
