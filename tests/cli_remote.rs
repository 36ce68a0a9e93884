//! `tandem dlq` and `tandem flows` as an operator runs them, against a running daemon.

mod common;

use serde_json::Value;
use tandem::journal::NewDeadLetter;

use common::tandem;

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_lists_shows_and_replays_dead_letters_from_the_command_line() {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "cli-admin").unwrap();
    let app = common::spawn_app_with(&format!(
        "[admin]\ntoken = {{ file = \"{}\" }}\n",
        token.path().display()
    ))
    .await;
    let id = app
        .journal
        .append(common::change("SUP-7", "cli-1"))
        .await
        .unwrap()
        .id();
    app.journal
        .claim("w", 1, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    app.journal
        .dead_letter(
            id,
            "w",
            NewDeadLetter {
                flow: Some("support".into()),
                connector: "salesforce".into(),
                operation: "update Case".into(),
                payload: serde_json::json!({"Subject": "x".repeat(300)}),
                http_status: Some(400),
                vendor_code: Some("STRING_TOO_LONG".into()),
                vendor_message: Some("Subject: data value too large".into()),
                first_failed_at: tandem::journal::now_ms(),
            },
        )
        .await
        .unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let remote = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend([
            "--url".into(),
            app.url(""),
            "--token".into(),
            "cli-admin".into(),
        ]);
        all
    };

    let (code, out, err) = tandem(cwd.path(), remote(&["dlq", "list"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("STRING_TOO_LONG") && out.contains("SUP-7"),
        "{out}"
    );
    assert!(out.starts_with("ID"), "a table: {out}");

    let (code, out, _) = tandem(
        cwd.path(),
        remote(&["dlq", "list", "--json", "--code", "NOPE"]),
    )
    .await;
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["items"], serde_json::json!([]));

    let (code, out, _) = tandem(cwd.path(), remote(&["dlq", "show", "1"])).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("Subject: data value too large") && out.contains("payload"),
        "{out}"
    );

    let (code, out, err) = tandem(cwd.path(), remote(&["dlq", "replay", "1"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed as change"), "{out}");
    let (code, _, err) = tandem(cwd.path(), remote(&["dlq", "replay", "1"])).await;
    assert_eq!(code, 1);
    assert!(err.contains("409"), "{err}");

    let (code, out, err) = tandem(cwd.path(), remote(&["flows"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("FLOW"), "{out}");

    // A wrong token and an unreachable daemon are explained, exit 1.
    let (code, _, err) = tandem(
        cwd.path(),
        vec![
            "dlq".into(),
            "list".into(),
            "--url".into(),
            app.url(""),
            "--token".into(),
            "wrong".into(),
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("refused the admin token"), "{err}");
    let (code, _, err) = tandem(
        cwd.path(),
        vec![
            "flows".into(),
            "--url".into(),
            "http://127.0.0.1:9".into(),
            "--token".into(),
            "x".into(),
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the daemon"), "{err}");
    app.stop().await;
}
