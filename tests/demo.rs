//! `tandem demo` as a user runs it: the built binary, its own emulators and daemon, stopped by
//! `--duration`; everything asserted from what it prints.

use std::net::TcpListener;
use std::process::Command;

/// A loopback port free right now (the listener is dropped before the demo binds it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_demo_syncs_both_ways_shows_a_dead_letter_and_stops_cleanly_by_itself() {
    let cwd = tempfile::tempdir().unwrap();
    let (daemon, jira, sf) = (free_port(), free_port(), free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{daemon}"),
            "--jira-listen",
            &format!("127.0.0.1:{jira}"),
            "--salesforce-listen",
            &format!("127.0.0.1:{sf}"),
            "--duration",
            "6s",
            "--edit-every",
            "500ms",
        ])
        .current_dir(cwd.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(output.status.code(), Some(0), "{context}");

    for url in [
        format!("http://127.0.0.1:{daemon}/metrics"),
        format!("http://127.0.0.1:{daemon}/healthz"),
        format!("http://127.0.0.1:{daemon}/api/v1/dead-letters"),
        format!("http://127.0.0.1:{jira}"),
        format!("http://127.0.0.1:{sf}"),
    ] {
        assert!(stdout.contains(&url), "no {url} in the banner\n{context}");
    }
    assert!(
        stdout.contains("curl -H 'Authorization: Bearer "),
        "{context}"
    );
    assert!(stdout.contains("Ctrl-C"), "{context}");

    let lines: Vec<&str> = stdout.lines().collect();
    let has = |from: &str, to: &str, what: &str| {
        lines.iter().any(|l| {
            l.split_once(from).is_some_and(|(_, rest)| {
                rest.split_once(" → ")
                    .is_some_and(|(_, rest)| rest.starts_with(to) && rest.contains(what))
            })
        })
    };
    assert!(
        has("  jira SUP-", "salesforce Case", "  created"),
        "no Jira → Salesforce create\n{context}"
    );
    assert!(
        has("  salesforce Case", "jira SUP-", "  created"),
        "no Salesforce → Jira create\n{context}"
    );
    assert!(
        has("  salesforce Account", "jira ONB-", "  created"),
        "the scheduled flow's first run made no onboarding issue\n{context}"
    );
    assert!(
        lines.iter().any(|l| l.contains("  echo")),
        "no echo line\n{context}"
    );
    assert!(
        lines.iter().any(|l| l.contains("DEAD LETTER #1")),
        "no dead letter\n{context}"
    );
    assert!(stdout.contains("stopped:"), "{context}");
    assert!(
        !cwd.path().join("data").exists(),
        "the demo created ./data in its working directory"
    );
    assert!(
        std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "the demo left files in its working directory"
    );
}

#[test]
fn the_demo_refuses_a_port_that_is_taken_with_exit_1() {
    let cwd = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--jira-listen",
            &format!("127.0.0.1:{port}"),
            "--salesforce-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--duration",
            "1s",
        ])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot start the Jira emulator") && stderr.contains("--jira-listen"),
        "{stderr}"
    );
}
