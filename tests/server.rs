//! The HTTP server end to end: a real listener on loopback, a real SQLite file.

mod common;

use std::time::Duration;

use common::{spawn_app, spawn_app_with};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn json(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

/// A Jira connector whose API token comes from a file in `dir`.
fn jira_connector(dir: &std::path::Path) -> String {
    let secret = dir.join("jira-token");
    std::fs::write(&secret, "token").unwrap();
    format!(
        "[connectors.jira]\nkind = \"jira\"\nbase_url = \"http://127.0.0.1:1\"\n\
         auth = {{ method = \"basic\", email = \"a@b.test\", api_token = {{ file = \"{}\" }} }}\n",
        secret.display()
    )
}

#[tokio::test]
async fn healthz_answers_while_the_process_runs() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["status"], "ok");
    app.stop().await;
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let echoed = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "caller-chosen-1")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "caller-chosen-1");
    app.stop().await;
}

#[tokio::test]
async fn readyz_is_unavailable_until_migrations_are_applied() {
    let app = spawn_app_with("[storage]\nmigrate_on_start = false\n").await;
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(json(response).await["error"]["code"], "migrations_pending");

    app.journal.migrate().await.unwrap();
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["status"], "ready");
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_body_gets_413_with_a_json_error_and_touches_nothing() {
    let app = spawn_app_with("[server]\nmax_body_bytes = 1024\n").await;
    let response = app
        .client
        .post(app.url("/webhooks/jira"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(json(response).await["error"]["code"], "payload_too_large");
    let depth: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM changes")
        .fetch_one(app.journal.pool())
        .await
        .unwrap();
    assert_eq!(depth, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_chunked_body_without_a_length_also_gets_413() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(&format!(
        "[server]\nmax_body_bytes = 1024\n{}",
        jira_connector(dir.path())
    ))
    .await;
    // Chunked transfer: no Content-Length for the middleware to refuse up front, so the limit
    // trips while the handler reads the body.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let mut request =
        b"POST /webhooks/jira HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..8 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'x'; 512]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"code\":\"bad_body\""), "{response}");
    assert_eq!(app.journal.stats().appended.get(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_webhook_for_an_unknown_connector_is_404_and_counted() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/webhooks/nosuch"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body = json(response).await;
    assert_eq!(body["error"]["code"], "unknown_connector");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nosuch"));

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"tandem_webhook_requests_total{connector="unknown",result="unknown_connector"} 1"#
        ),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(json(response).await["error"]["code"], "not_found");
    let response = app.client.post(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(json(response).await["error"]["code"], "method_not_allowed");
    app.stop().await;
}

#[tokio::test]
async fn metrics_expose_journal_depth_by_status_and_the_oldest_age() {
    let app = spawn_app().await;
    app.journal
        .append(common::change("10001", "wh-1"))
        .await
        .unwrap();
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for line in [
        r#"tandem_journal_changes{status="pending"} 1"#,
        r#"tandem_journal_changes{status="dead"} 0"#,
        r#"tandem_journal_backlog{connector="jira",object="issue",status="pending"} 1"#,
        "tandem_journal_appended_total 1",
        "# TYPE tandem_journal_oldest_unsettled_age_seconds gauge",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_request_that_outlives_the_timeout_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(&format!(
        "[server]\nrequest_timeout = \"300ms\"\n{}",
        jira_connector(dir.path())
    ))
    .await;
    // Headers and half the body, then silence: the handler is stuck reading.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /webhooks/jira HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("request_timeout"), "{response}");
    app.stop().await;
}

#[tokio::test]
async fn shutdown_refuses_new_connections_but_finishes_the_request_in_flight() {
    let app = spawn_app().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /webhooks/nosuch HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    app.shutdown.cancel();
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(app.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener still accepts after shutdown began");
    assert!(
        !app.server.is_finished(),
        "the server quit with a request in flight"
    );

    stream.write_all(b"67890").await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    tokio::time::timeout(Duration::from_secs(5), app.server)
        .await
        .expect("the server stops once the request is answered")
        .unwrap()
        .unwrap();
}

/// Read one whole HTTP/1.1 response (headers plus a Content-Length body).
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("a response within 5s")
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
        if n == 0 {
            return text;
        }
    }
}

#[tokio::test]
async fn a_second_daemon_on_the_same_journal_is_refused_until_the_first_stops() {
    let dir = tempfile::tempdir().unwrap();
    let first = tandem::app::Application::build(common::settings(&dir, ""))
        .await
        .unwrap();
    let Err(error) = tandem::app::Application::build(common::settings(&dir, "")).await else {
        panic!("a second daemon started on a journal the first one owns");
    };
    let message = error.to_string();
    assert!(
        matches!(error, tandem::app::AppError::AlreadyRunning { .. }),
        "{message}"
    );
    assert!(message.contains("tandem.db.lock"), "{message}");
    // The refused start touched nothing the first one holds: it still serves, and once it has
    // stopped, the next one starts.
    let addr = first.local_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(first.run_until_stopped(shutdown.clone()));
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    shutdown.cancel();
    server.await.unwrap().unwrap();
    let again = tandem::app::Application::build(common::settings(&dir, ""))
        .await
        .unwrap();
    drop(again);
}
