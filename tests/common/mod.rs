//! Test harness: the real application on an ephemeral loopback port over a real SQLite file.
#![allow(dead_code)]

pub mod sims;

use std::net::SocketAddr;
use std::path::PathBuf;

use tandem::app::{AppError, Application};
use tandem::config::{Settings, Sources};
use tandem::journal::{ChangeOp, Journal, NewChange, Origin};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub addr: SocketAddr,
    pub journal: Journal,
    pub shutdown: CancellationToken,
    pub server: JoinHandle<Result<(), AppError>>,
    pub client: reqwest::Client,
    pub dir: TempDir,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stop the app and wait for it to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
    }
}

/// Settings as a deployment layers them: compiled-in defaults, `config/local.toml` (here: a
/// fresh database in `dir` and an ephemeral port), then `overlay` as the `--config` file.
pub fn settings(dir: &TempDir, overlay: &str) -> Settings {
    settings_in(dir.path(), overlay)
}

/// [`settings`] in a directory the caller owns (a child process shares its parent's).
pub fn settings_in(dir: &std::path::Path, overlay: &str) -> Settings {
    let db = dir.join("tandem.db");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("config/local.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nurl = \"sqlite://{}\"\n",
            db.display()
        ),
    )
    .unwrap();
    let file = dir.join("test.toml");
    std::fs::write(&file, overlay).unwrap();
    Settings::load_from(&Sources {
        base_dir: dir.to_path_buf(),
        file: Some(file),
        env: false,
    })
    .unwrap()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

pub async fn spawn_app_with(overlay: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(&dir, overlay);
    spawn_with(settings, dir).await
}

/// The real application on `settings`, keeping `dir` (its database) alive with it.
pub async fn spawn_with(settings: Settings, dir: TempDir) -> TestApp {
    let app = Application::build(settings).await.unwrap();
    let addr = app.local_addr();
    let journal = app.journal().clone();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        addr,
        journal,
        shutdown,
        server,
        client: reqwest::Client::new(),
        dir,
    }
}

pub fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("tandem.db")
}

/// A journal on a fresh migrated database in `dir`.
pub async fn open_journal(dir: &TempDir, overlay: &str) -> Journal {
    let settings = settings(dir, overlay);
    let journal = Journal::open(&settings.storage, &settings.journal)
        .await
        .unwrap();
    journal.migrate().await.unwrap();
    journal
}

pub fn change(record_id: &str, dedupe_key: &str) -> NewChange {
    NewChange {
        connector: "jira".into(),
        object: "issue".into(),
        record_id: record_id.into(),
        op: ChangeOp::Upsert,
        snapshot: serde_json::json!({ "summary": format!("edit {dedupe_key}") }),
        source_modified_at: Some(1_700_000_000_000),
        origin: Origin::Webhook,
        dedupe_key: dedupe_key.into(),
    }
}

/// Run the `tandem` binary with `args` in `dir` (blocking, off the runtime's threads), with a
/// clean environment; (exit code, stdout, stderr).
pub async fn tandem(dir: &std::path::Path, args: Vec<String>) -> (i32, String, String) {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(&args)
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}
