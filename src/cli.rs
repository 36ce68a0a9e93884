//! The `tandem` command line. Each command exists only once the work behind it does.

mod demo;
mod remote;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::{ConnectorSettings, FlowMode, LogFormat, Schedule, Settings};
use crate::journal::Journal;

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Bidirectional record sync: Jira Cloud ↔ Salesforce"
)]
pub struct Cli {
    /// Configuration file, layered over config/default.toml and config/local.toml
    /// (environment variables TANDEM__SECTION__KEY override all files).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon: HTTP server and workers, until SIGTERM or Ctrl-C.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Load and validate the configuration; explain every mistake; non-zero exit if any.
    CheckConfig,
    /// Both emulators and the daemon in one process on loopback, with live edits on both
    /// sides and what syncs printed as it happens. Ignores --config.
    Demo(Box<demo::DemoArgs>),
    /// Dead letters of a running daemon: list, show, replay, discard (through its admin API).
    Dlq {
        #[command(subcommand)]
        command: remote::Dlq,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// The flows of a running daemon: mode, backlog, dead letters, outcomes.
    Flows {
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Compare both sides of a flow with its links in a running daemon: missing counterparts,
    /// drifted fields, orphaned links; --repair appends the changes that fix them.
    Reconcile {
        #[arg(long)]
        flow: String,
        /// Only records modified this long ago or later (e.g. 24h); default everything.
        #[arg(long)]
        since: Option<String>,
        /// Append the changes that fix what is found, through the flow's normal planner.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// The first sync of records that existed before Tandem, in a running daemon: pair them by
    /// the flow's match key (or a copy's marker), link, and create the rest in bulk, with a
    /// progress bar. Resumable: run it again after an interruption.
    Backfill {
        #[arg(long)]
        flow: String,
        /// Print what would be linked and created; write nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Run one vendor emulator on its own, until SIGTERM or Ctrl-C.
    Sim {
        #[command(subcommand)]
        vendor: SimVendor,
    },
}

#[derive(Subcommand)]
pub enum SimVendor {
    /// Jira Cloud: REST v2/v3, JQL search, transitions, comments, signed webhooks.
    Jira(Box<crate::sim::jira::Options>),
    /// Salesforce: OAuth, sObjects, SOQL, composite, limits, Outbound Messages, change events.
    Salesforce(Box<crate::sim::salesforce::Options>),
}

/// Exit codes: 0 success, 1 runtime failure, 2 invalid configuration.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Sim { vendor } = cli.command {
        return run_sim(vendor, cli.log_format.unwrap_or(LogFormat::Pretty));
    }
    // The demo writes its own configuration: the layers in the working directory do not apply.
    if let Command::Demo(args) = cli.command {
        if cli.config.is_some() {
            eprintln!("note: the demo writes its own configuration; --config is ignored");
        }
        return demo::main(*args, cli.log_format);
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig = cli.command {
        print!("{}", describe(&settings));
        return ExitCode::SUCCESS;
    }
    // Operator commands print their answer; they need a runtime, not the daemon's logging.
    if matches!(
        cli.command,
        Command::Dlq { .. }
            | Command::Flows { .. }
            | Command::Reconcile { .. }
            | Command::Backfill { .. }
    ) {
        let result = tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| {
                runtime.block_on(async {
                    match cli.command {
                        Command::Dlq { command, remote } => {
                            remote::dlq(command, remote, settings).await
                        }
                        Command::Flows { remote } => remote::flows(remote, settings).await,
                        Command::Reconcile {
                            flow,
                            since,
                            repair,
                            remote,
                        } => {
                            remote::reconcile(&flow, since.as_deref(), repair, remote, settings)
                                .await
                        }
                        Command::Backfill {
                            flow,
                            dry_run,
                            remote,
                        } => remote::backfill(&flow, dry_run, remote, settings).await,
                        _ => unreachable!("matched above"),
                    }
                })
            });
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let format = cli
        .log_format
        .or(settings.log.format)
        .unwrap_or(LogFormat::Pretty);
    crate::telemetry::init(format, settings.log.level.as_deref().unwrap_or("info"));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => serve(settings).await,
            Command::Migrate => migrate(settings).await,
            Command::CheckConfig
            | Command::Sim { .. }
            | Command::Demo(_)
            | Command::Dlq { .. }
            | Command::Flows { .. }
            | Command::Reconcile { .. }
            | Command::Backfill { .. } => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "tandem failed");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_sim(vendor: SimVendor, format: LogFormat) -> ExitCode {
    crate::telemetry::init(format, "info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        match vendor {
            SimVendor::Jira(options) => crate::sim::jira::serve(*options, shutdown).await,
            SimVendor::Salesforce(options) => {
                crate::sim::salesforce::serve(*options, shutdown).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: the emulator failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let app = Application::build(settings)
        .await
        .context("starting the daemon")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    app.run_until_stopped(shutdown).await?;
    Ok(())
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let journal = Journal::open(&settings.storage, &settings.journal)
        .await
        .context("opening the database")?;
    let result = journal.migrate().await.context("applying migrations");
    journal.close().await;
    result?;
    println!("database {} is up to date", settings.storage.url);
    Ok(())
}

/// Cancel on SIGTERM (service managers, `docker stop`) or SIGINT (Ctrl-C).
async fn cancel_on_signal(token: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the daemon");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("stop signal received");
    token.cancel();
}

/// What `check-config` prints for a valid configuration (never a secret).
pub fn describe(settings: &Settings) -> String {
    let mut out = String::from("configuration OK\n");
    out += &format!("  server.listen  {}\n", settings.server.listen);
    out += &format!("  storage.url    {}\n", settings.storage.url);
    out += &format!(
        "  admin API      {}\n",
        if settings.admin.token.is_some() {
            "token configured"
        } else {
            "disabled (no admin.token)"
        }
    );
    for (name, connector) in &settings.connectors {
        let limits = connector.limits();
        let budget = limits
            .daily_budget
            .map_or("no daily budget".to_string(), |b| format!("{b} calls/day"));
        out += &format!(
            "  connector {name}: {} at {} ({} req/s, {budget})\n",
            connector.kind().as_str(),
            connector.base_url(),
            limits.requests_per_second,
        );
        if let ConnectorSettings::Jira(jira) = connector {
            if jira.webhook_secret.is_none() && !jira.allow_unsigned_webhooks {
                out += &format!(
                    "    note: no webhook_secret, so webhooks to /webhooks/{name} are refused\n"
                );
            }
        }
    }
    for (name, flow) in &settings.flows {
        let mode = match &flow.mode {
            FlowMode::Realtime => "realtime".to_string(),
            FlowMode::Scheduled(Schedule::Every(every)) => {
                format!("every {}", humantime::format_duration(*every))
            }
            FlowMode::Scheduled(Schedule::Cron { expression, .. }) => {
                format!("cron `{expression}`")
            }
        };
        out += &format!(
            "  flow {name}: {}/{} ↔ {}/{} ({}, {mode}, {} field rules)\n",
            flow.left.connector,
            flow.left.object,
            flow.right.connector,
            flow.right.object,
            flow.direction.as_str(),
            flow.fields.len()
        );
    }
    out
}
