//! The `tandem` binary as a user runs it: check-config, migrate, serve with a signal to stop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECRETS: [(&str, &str); 5] = [
    ("JIRA_API_TOKEN", "jira-token-value-1"),
    ("JIRA_WEBHOOK_SECRET", "jira-hook-value-2"),
    ("SF_CLIENT_SECRET", "sf-secret-value-3"),
    ("TANDEM_ADMIN_TOKEN", "admin-token-value-4"),
    ("SF_WEBHOOK_SECRET", "sf-hook-value-5"),
];

fn example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml"))
        .unwrap()
}

/// Run `tandem` in a clean directory with only the given environment (plus PATH).
fn tandem(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn check(config: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tandem.toml");
    std::fs::write(&file, config).unwrap();
    let out = tandem(
        dir.path(),
        &["check-config", "--config", file.to_str().unwrap()],
        env,
    );
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_configuration_passes_check_config_without_printing_secrets() {
    let (code, stdout, stderr) = check(&example(), &SECRETS);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    assert!(
        stdout.contains("connector jira: jira at https://acme.atlassian.net/"),
        "{stdout}"
    );
    assert!(
        stdout.contains("flow support: jira/issue ↔ salesforce/Case"),
        "{stdout}"
    );
    for (_, value) in SECRETS {
        assert!(
            !stdout.contains(value) && !stderr.contains(value),
            "{value} leaked"
        );
    }
}

/// Each class of mistake: (what the test breaks, the edit, the expected message).
#[test]
fn each_class_of_mistake_is_explained_with_its_key_path_and_a_non_zero_exit() {
    let cases: [(&str, &str, &str, &str); 5] = [
        (
            "unknown key",
            "burst = 20 ",
            "brust = 20 ",
            "connectors.jira.limits.brust: unknown field `brust`",
        ),
        (
            "flow naming a missing connector",
            "right = { connector = \"salesforce\"",
            "right = { connector = \"sfdc\"",
            "flows.support.right.connector: no connector named `sfdc` (configured: jira, salesforce)",
        ),
        (
            "malformed duration",
            "timeout = \"30s\"",
            "timeout = \"30 parsecs\"",
            "connectors.jira.limits.timeout: `30 parsecs` is not a duration",
        ),
        (
            "malformed cron",
            "mode = \"realtime\"",
            "mode = { scheduled = { cron = \"every night\" } }",
            "flows.support.mode: scheduled.cron `every night` is not a cron expression",
        ),
        (
            "missing secret",
            "",
            "",
            "connectors.jira.auth.api_token: environment variable JIRA_API_TOKEN is not set",
        ),
    ];
    for (what, from, to, expected) in cases {
        let config = if from.is_empty() {
            example()
        } else {
            assert!(
                example().contains(from),
                "{what}: the example no longer has `{from}`"
            );
            example().replacen(from, to, 1)
        };
        let env: Vec<(&str, &str)> = if what == "missing secret" {
            SECRETS[1..].to_vec()
        } else {
            SECRETS.to_vec()
        };
        let (code, _, stderr) = check(&config, &env);
        assert_eq!(code, 2, "{what}: exit code; stderr: {stderr}");
        assert!(
            stderr.contains(expected),
            "{what}: expected `{expected}` in:\n{stderr}"
        );
    }
}

#[test]
fn environment_variables_override_the_files() {
    let (code, stdout, _) = check("", &[("TANDEM__SERVER__LISTEN", "127.0.0.1:9191")]);
    assert_eq!(code, 0);
    assert!(stdout.contains("server.listen  127.0.0.1:9191"), "{stdout}");

    let (code, _, stderr) = check("", &[("TANDEM__SERVER__LISTEN", "not-an-address")]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("server.listen: invalid socket address"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = tandem(dir.path(), &["check-config", "--config", "nope.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml does not exist"));
}

#[test]
fn migrate_creates_the_database_and_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = tandem(dir.path(), &["migrate"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("data/tandem.db").is_file());
    // A second run finds nothing to do.
    assert!(tandem(dir.path(), &["migrate"], &[]).status.success());
}

#[test]
fn serve_starts_on_the_defaults_answers_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["serve", "--log-format", "json"])
        .current_dir(dir.path())
        .env("TANDEM__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.get(format!("{base}/healthz")).send().await {
                Ok(r) if r.status() == 200 => break,
                _ if Instant::now() > deadline => panic!("serve did not come up"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert!(metrics
            .text()
            .await
            .unwrap()
            .contains("tandem_journal_changes"));
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "serve ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    assert!(log.contains("\"message\":\"stopped\""), "{log}");
    assert!(data_file(dir.path()).is_file());
}

fn data_file(dir: &Path) -> PathBuf {
    dir.join("data/tandem.db")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start `tandem sim VENDOR` standalone, wait until `probe` answers 2xx/4xx, then SIGTERM it.
fn standalone_emulator_answers_and_stops(vendor: &str, probe: &str) {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["sim", vendor, "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}{probe}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match reqwest::get(&url).await {
                Ok(r) => break r.status().as_u16(),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{vendor} emulator did not come up: {e}"),
            }
        }
    });
    assert!(status < 500, "{vendor}: {probe} answered {status}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            assert!(exit.success(), "{vendor} emulator exit: {exit:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{vendor} emulator ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_jira_emulator_runs_standalone() {
    standalone_emulator_answers_and_stops("jira", "/rest/api/3/serverInfo");
}

#[test]
fn the_salesforce_emulator_runs_standalone() {
    standalone_emulator_answers_and_stops("salesforce", "/services/data/");
}
