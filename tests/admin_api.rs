//! The admin API end to end: the real app on loopback over a real SQLite file, dead letters made
//! the way the dispatcher makes them (append, claim, dead-letter).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{spawn_app, spawn_app_with, TestApp};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use tandem::journal::{
    ChangeId, DeadLetterId, DeadLetterStatus, Journal, NewChange, NewDeadLetter, ReplayError,
};

/// One admin route, as a client calls it.
struct Route {
    method: &'static str,
    /// `{letter}` stands for an open dead letter made for the request and `{code}` for its
    /// vendor code; `records/crm/...` names the connector [`spawn_admin_with_connector`] adds.
    path: &'static str,
    body: Option<&'static str>,
    /// The answer with the right token.
    ok: u16,
}

/// Every route under `/api/v1`, each checked for its token (missing, wrong, right) and for
/// `admin_disabled` when no token is configured. A new admin route gets a line here.
#[rustfmt::skip]
const ROUTES: &[Route] = &[
    Route { method: "GET", path: "/api/v1/dead-letters", body: None, ok: 200 },
    Route { method: "GET", path: "/api/v1/dead-letters?status=any&limit=1", body: None, ok: 200 },
    Route { method: "GET", path: "/api/v1/dead-letters/{letter}", body: None, ok: 200 },
    Route { method: "POST", path: "/api/v1/dead-letters/{letter}/replay", body: None, ok: 202 },
    Route { method: "POST", path: "/api/v1/dead-letters/replay", body: Some(r#"{"code":"{code}"}"#), ok: 202 },
    Route { method: "DELETE", path: "/api/v1/dead-letters/{letter}", body: None, ok: 204 },
    Route { method: "GET", path: "/api/v1/flows", body: None, ok: 200 },
    // No flow is configured here: the flow routes answer 404 `unknown_flow` (tests/schedule.rs
    // drives them on a real flow).
    Route { method: "GET", path: "/api/v1/flows/nightly", body: None, ok: 404 },
    Route { method: "GET", path: "/api/v1/flows/nightly/runs?limit=5", body: None, ok: 404 },
    Route { method: "POST", path: "/api/v1/flows/nightly/run", body: None, ok: 404 },
    Route { method: "GET", path: "/api/v1/flows/nightly/reconcile", body: None, ok: 404 },
    Route { method: "GET", path: "/api/v1/flows/nightly/runs/1", body: None, ok: 404 },
    Route { method: "POST", path: "/api/v1/flows/nightly/backfill?dry_run=true", body: None, ok: 404 },
    Route { method: "POST", path: "/api/v1/flows/nightly/reconcile", body: None, ok: 404 },
    Route { method: "GET", path: "/api/v1/connectors", body: None, ok: 200 },
    Route { method: "GET", path: "/api/v1/records/crm/issue/CRM-1?limit=5", body: None, ok: 200 },
    // Unknown paths are behind the token too: without it nobody learns which paths exist.
    Route { method: "GET", path: "/api/v1/no-such-thing", body: None, ok: 404 },
];

const TOKEN: &str = "admin-token-for-tests";
const LEASE: Duration = Duration::from_secs(60);

/// The app with `admin.token` read from a file, as a deployment would configure it.
async fn spawn_admin() -> TestApp {
    spawn_admin_with("").await
}

/// [`spawn_admin`] with a Jira connector named `crm` that no test change comes from (its
/// dispatcher must not claim the changes the tests dead-letter by hand), for the record routes.
async fn spawn_admin_with_connector() -> TestApp {
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("crm-token");
    std::fs::write(&token, "token").unwrap();
    spawn_admin_with(&format!(
        "[connectors.crm]\nkind = \"jira\"\nbase_url = \"http://127.0.0.1:1\"\n\
         auth = {{ method = \"basic\", email = \"a@b.test\", api_token = {{ file = \"{}\" }} }}\n",
        token.display()
    ))
    .await
}

async fn spawn_admin_with(extra: &str) -> TestApp {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("admin-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    // The secret is read while settings load; the file need not outlive this call.
    spawn_app_with(&format!(
        "[admin]\ntoken = {{ file = \"{}\" }}\n{extra}",
        file.display()
    ))
    .await
}

impl Route {
    fn method(&self) -> Method {
        Method::from_bytes(self.method.as_bytes()).unwrap()
    }

    /// The path and body with `letter` and `code` put in.
    fn with(&self, letter: DeadLetterId, code: &str) -> (String, Option<String>) {
        let fill = |text: &str| {
            text.replace("{letter}", &letter.to_string())
                .replace("{code}", code)
        };
        (fill(self.path), self.body.map(fill))
    }

    fn needs_letter(&self) -> bool {
        self.path.contains("{letter}")
            || self.path.contains("{code}")
            || self.body.is_some_and(|b| b.contains("{code}"))
    }
}

fn send(app: &TestApp, method: Method, path: &str, body: Option<&str>) -> RequestBuilder {
    let mut request = app.client.request(method, app.url(path));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    request
}

fn request(app: &TestApp, method: Method, path: &str) -> RequestBuilder {
    app.client.request(method, app.url(path)).bearer_auth(TOKEN)
}

async fn get(app: &TestApp, path: &str) -> Response {
    request(app, Method::GET, path).send().await.unwrap()
}

async fn json(response: Response) -> Value {
    response.json().await.unwrap()
}

/// What a dead letter is about.
#[derive(Clone, Copy)]
struct Failure<'a> {
    record: &'a str,
    flow: &'a str,
    connector: &'a str,
    code: &'a str,
}

const DEFAULT: Failure<'static> = Failure {
    record: "JIRA-1",
    flow: "support",
    connector: "sf",
    code: "FIELD_CUSTOM_VALIDATION_EXCEPTION",
};

/// Fail a fresh change for `failure.record` the way the dispatcher does. Tests make their letters
/// before replaying any: a replay's pending change would otherwise be claimed here.
/// A dead letter for `record`, otherwise [`DEFAULT`].
async fn letter_on(app: &TestApp, record: &str) -> (ChangeId, DeadLetterId) {
    dead_letter(app, Failure { record, ..DEFAULT }).await
}

async fn dead_letter(app: &TestApp, failure: Failure<'_>) -> (ChangeId, DeadLetterId) {
    dead_letter_for(app, common::change(failure.record, &unique_key()), failure).await
}

async fn dead_letter_for(
    app: &TestApp,
    change: NewChange,
    failure: Failure<'_>,
) -> (ChangeId, DeadLetterId) {
    dead_letter_in(&app.journal, change, failure).await
}

async fn dead_letter_in(
    journal: &Journal,
    change: NewChange,
    failure: Failure<'_>,
) -> (ChangeId, DeadLetterId) {
    let id = journal.append(change).await.unwrap().id();
    let claimed = journal.claim("worker", 1, LEASE).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), vec![id]);
    let letter = journal
        .dead_letter(
            id,
            "worker",
            NewDeadLetter {
                flow: Some(failure.flow.into()),
                connector: failure.connector.into(),
                operation: "update Case".into(),
                payload: json!({ "Subject": format!("from {}", failure.record) }),
                http_status: Some(400),
                vendor_code: Some(failure.code.into()),
                vendor_message: Some("Subject is invalid".into()),
                first_failed_at: 1_700_000_000_000,
            },
        )
        .await
        .unwrap();
    (id, letter)
}

fn unique_key() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("event-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn ids(body: &Value) -> Vec<i64> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_i64().unwrap())
        .collect()
}

async fn letter_status(app: &TestApp, id: DeadLetterId) -> (String, Option<i64>, Option<i64>) {
    sqlx::query_as("SELECT status, resolved_at, replay_change_id FROM dead_letters WHERE id = ?")
        .bind(id.0)
        .fetch_one(app.journal.pool())
        .await
        .unwrap()
}

async fn assert_error(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let body = json(response).await;
    assert_eq!(body["error"]["code"], code, "{body}");
    body
}

/// `(METHOD, path template)` of every route `src/api/admin.rs` registers, read from its source.
fn registered_routes() -> Vec<(String, String)> {
    let source = include_str!("../src/api/admin.rs");
    let mut routes = Vec::new();
    for block in source.split(".route(").skip(1) {
        let block = block.split(".fallback(").next().unwrap();
        let path = block.split('"').nth(1).expect("a route's path literal");
        for method in ["get", "post", "put", "patch", "delete"] {
            let registered = block
                .match_indices(&format!("{method}("))
                .any(|(at, _)| at == 0 || !block.as_bytes()[at - 1].is_ascii_alphanumeric());
            if registered {
                routes.push((method.to_uppercase(), path.to_string()));
            }
        }
    }
    routes
}

#[test]
fn the_route_table_covers_every_registered_admin_route() {
    let covers = |method: &str, template: &str| {
        ROUTES.iter().any(|route| {
            let path = route.path.trim_start_matches("/api/v1");
            let path = path.split('?').next().unwrap();
            let (want, have): (Vec<_>, Vec<_>) =
                (template.split('/').collect(), path.split('/').collect());
            route.method == method
                && want.len() == have.len()
                && want
                    .iter()
                    .zip(&have)
                    .all(|(w, h)| w == h || w.starts_with('{'))
        })
    };
    let registered = registered_routes();
    assert!(
        registered.len() >= 8,
        "the parse found routes: {registered:?}"
    );
    for (method, template) in &registered {
        assert!(
            covers(method, template),
            "{method} /api/v1{template} is not in ROUTES"
        );
    }
}

#[tokio::test]
async fn without_a_configured_token_every_admin_route_is_refused_not_open() {
    let app = spawn_app().await;
    for route in ROUTES {
        let (path, body) = route.with(DeadLetterId(1), "ANY");
        for authorization in [None, Some(format!("Bearer {TOKEN}"))] {
            let mut request = send(&app, route.method(), &path, body.as_deref());
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            let response = request.send().await.unwrap();
            let what = format!("{} {path} with {authorization:?}", route.method);
            assert_eq!(response.status(), 503, "{what}");
            let body = json(response).await;
            assert_eq!(body["error"]["code"], "admin_disabled", "{what}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("admin.token"),
                "{what}: {body}"
            );
        }
    }
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn every_admin_route_wants_the_right_bearer_token() {
    let app = spawn_admin_with_connector().await;
    let wrong = [
        None,
        Some("Basic YWRtaW46YWRtaW4=".to_string()),
        Some("Bearer".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some("Bearer short".to_string()),
        // Same length, last byte differs.
        Some(format!("Bearer {}X", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Token {TOKEN}")),
    ];
    // Each route its own letter, so a replay or a discard acts on one nobody else uses; all
    // made before any replay, whose pending change the helper's claim would otherwise take.
    let mut letters = Vec::new();
    for n in 0..ROUTES.len() {
        let code = format!("ROUTE-{n}");
        let record = format!("AUTH-{n}");
        let failure = Failure {
            record: &record,
            code: &code,
            ..DEFAULT
        };
        letters.push((dead_letter(&app, failure).await.1, code));
    }
    for (route, (letter, code)) in ROUTES.iter().zip(letters) {
        let (path, body) = route.with(letter, &code);
        let what = format!("{} {path}", route.method);
        for authorization in &wrong {
            let mut request = send(&app, route.method(), &path, body.as_deref());
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{what} with {authorization:?}");
            assert!(response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
            let error = assert_error(response, 401, "unauthorized").await;
            assert!(error["error"]["message"].is_string(), "{what}: {error}");
        }
        // None of the refused requests acted.
        assert_eq!(letter_status(&app, letter).await.0, "open", "{what}");

        let response = send(&app, route.method(), &path, body.as_deref())
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), route.ok, "{what}");
        if route.ok == 404 {
            let code = if route.path.starts_with("/api/v1/flows/") {
                "unknown_flow"
            } else {
                "not_found"
            };
            assert_error(response, 404, code).await;
        }
        // The right token on an id that does not exist: a 404, never a 401.
        if route.needs_letter() {
            let (path, body) = route.with(DeadLetterId(999_999), "NO-SUCH-CODE");
            let response = send(&app, route.method(), &path, body.as_deref())
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            assert!(
                status == 404 || (200..300).contains(&status),
                "{} {path}: {status}",
                route.method
            );
            if route.path.contains("{letter}") {
                // A letter that does not exist is not found …
                assert_error(response, 404, "not_found").await;
            } else {
                // … while a bulk replay by a code nobody has replays nothing, successfully.
                assert_eq!(status, route.ok, "{} {path}", route.method);
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["replayed"], 0, "{body}");
            }
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn listing_filters_by_flow_connector_code_time_and_status() {
    let app = spawn_admin().await;
    let (_, a) = dead_letter(&app, DEFAULT).await;
    let (_, b) = dead_letter(
        &app,
        Failure {
            record: "JIRA-2",
            flow: "billing",
            ..DEFAULT
        },
    )
    .await;
    let (_, c) = dead_letter(
        &app,
        Failure {
            record: "JIRA-3",
            connector: "jira",
            code: "INVALID_FIELD",
            ..DEFAULT
        },
    )
    .await;
    let (_, d) = letter_on(&app, "JIRA-4").await;
    // Known failure times: a and b in 2023, c and d in 2024.
    for (id, at) in [
        (a, 1_700_000_000_000_i64),
        (b, 1_700_000_100_000),
        (c, 1_704_067_200_000),
        (d, 1_704_067_300_000),
    ] {
        sqlx::query("UPDATE dead_letters SET last_failed_at = ? WHERE id = ?")
            .bind(at)
            .bind(id.0)
            .execute(app.journal.pool())
            .await
            .unwrap();
    }
    app.journal.discard_dead_letter(d).await.unwrap();

    let list = |query: &'static str| {
        let app = &app;
        async move {
            let response = get(app, &format!("/api/v1/dead-letters{query}")).await;
            assert_eq!(response.status(), 200, "{query}");
            ids(&json(response).await)
        }
    };
    // Open only by default, newest first.
    assert_eq!(list("").await, vec![c.0, b.0, a.0]);
    assert_eq!(list("?status=any").await, vec![d.0, c.0, b.0, a.0]);
    assert_eq!(list("?status=discarded").await, vec![d.0]);
    assert_eq!(list("?status=replayed").await, Vec::<i64>::new());
    assert_eq!(list("?flow=billing").await, vec![b.0]);
    assert_eq!(list("?connector=jira").await, vec![c.0]);
    assert_eq!(list("?code=INVALID_FIELD").await, vec![c.0]);
    assert_eq!(
        list("?code=FIELD_CUSTOM_VALIDATION_EXCEPTION&flow=support").await,
        vec![a.0]
    );
    // `since` inclusive, `until` exclusive; RFC 3339 or epoch milliseconds.
    assert_eq!(list("?since=2024-01-01T00:00:00Z").await, vec![c.0]);
    assert_eq!(
        list("?since=2024-01-01T00:00:00Z&status=any").await,
        vec![d.0, c.0]
    );
    assert_eq!(list("?until=1700000100000").await, vec![a.0]);
    assert_eq!(
        list("?since=1700000000000&until=2024-01-01T01:00:00%2B01:00").await,
        vec![b.0, a.0]
    );
    assert_eq!(list("?flow=").await, vec![c.0, b.0, a.0]);

    let response = get(&app, "/api/v1/dead-letters?status=any").await;
    let body = json(response).await;
    let item = &body["items"][3];
    assert_eq!(body["next_cursor"], Value::Null);
    assert_eq!(item["id"], a.0);
    assert_eq!(item["flow"], "support");
    assert_eq!(item["connector"], "sf");
    assert_eq!(item["source_connector"], "jira");
    assert_eq!(item["object"], "issue");
    assert_eq!(item["record_id"], "JIRA-1");
    assert_eq!(item["operation"], "update Case");
    assert_eq!(item["http_status"], 400);
    assert_eq!(item["vendor_code"], "FIELD_CUSTOM_VALIDATION_EXCEPTION");
    assert_eq!(item["vendor_message"], "Subject is invalid");
    assert_eq!(item["attempts"], 1);
    assert_eq!(item["first_failed_at"], "2023-11-14T22:13:20.000Z");
    assert_eq!(item["last_failed_at"], "2023-11-14T22:13:20.000Z");
    assert_eq!(item["status"], "open");
    assert_eq!(item["replay_change_id"], Value::Null);
    assert!(item.get("payload").is_none(), "lists leave payloads out");

    for (query, mentions) in [
        ("since=yesterday", "since"),
        ("until=2024-13-01T00:00:00Z", "until"),
        ("status=closed", "status"),
        ("limit=ten", "limit"),
        ("limit=0", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("conector=sf", "conector"),
    ] {
        let response = get(&app, &format!("/api/v1/dead-letters?{query}")).await;
        let body = assert_error(response, 400, "bad_request").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(mentions),
            "{query}: {body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn pages_hold_exactly_the_original_letters_while_new_ones_arrive() {
    let app = spawn_admin().await;
    let mut original = Vec::new();
    for n in 0..25 {
        let record = format!("P-{n}");
        let (_, id) = dead_letter(
            &app,
            Failure {
                record: &record,
                ..DEFAULT
            },
        )
        .await;
        original.push(id.0);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    let mut arrivals = 0;
    loop {
        let path = match &cursor {
            None => "/api/v1/dead-letters?limit=10".to_string(),
            Some(cursor) => format!("/api/v1/dead-letters?limit=10&cursor={cursor}"),
        };
        let body = json(get(&app, &path).await).await;
        pages += 1;
        seen.extend(ids(&body));
        // New failures land between page requests.
        for _ in 0..3 {
            let record = format!("NEW-{arrivals}");
            arrivals += 1;
            dead_letter(
                &app,
                Failure {
                    record: &record,
                    ..DEFAULT
                },
            )
            .await;
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    let mut expected = original.clone();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, no repeats, no gaps");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 25);

    // The arrivals are on a fresh first page.
    let body = json(get(&app, "/api/v1/dead-letters?limit=500").await).await;
    assert_eq!(ids(&body).len(), 25 + arrivals);
    assert_eq!(body["next_cursor"], Value::Null);
    app.stop().await;
}

/// Every page of a listing, from its first: `items` names the array and `id` each item's id.
/// After each page it waits for `inserted` to move, so the inserting task has always committed
/// a row between two page requests.
async fn walk_pages(
    app: &TestApp,
    first: &str,
    items: &str,
    id: &str,
    inserted: &mut tokio::sync::watch::Receiver<u64>,
) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let path = match &cursor {
            None => first.to_string(),
            Some(cursor) => format!("{first}&cursor={cursor}"),
        };
        let response = get(app, &path).await;
        assert_eq!(response.status(), 200, "{path}");
        let body = json(response).await;
        inserted.borrow_and_update();
        seen.extend(
            body[items]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item[id].as_i64().unwrap()),
        );
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return seen,
        }
        inserted.changed().await.unwrap();
    }
    panic!("paging {first} does not end");
}

/// What a walk must show: each row that existed before it, exactly once, and no row twice, in
/// one consistent order (newest first).
fn assert_walk(seen: &[i64], before: &[i64]) {
    let unique: HashSet<&i64> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a row seen twice: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {seen:?}"
    );
    let missing: Vec<&i64> = before.iter().filter(|id| !unique.contains(id)).collect();
    assert!(missing.is_empty(), "missed {missing:?} in {seen:?}");
}

#[tokio::test]
async fn dead_letter_pages_stay_whole_while_another_task_keeps_failing_changes() {
    let app = spawn_admin().await;
    for n in 0..30 {
        letter_on(&app, &format!("OLD-{n}")).await;
    }
    let (tx, mut inserted) = tokio::sync::watch::channel(0u64);
    let journal = app.journal.clone();
    let inserter = tokio::spawn(async move {
        // Bounded, and over as soon as the walk stops listening.
        for n in 1..=1000 {
            let record = format!("LIVE-{n}");
            let change = common::change(&record, &unique_key());
            dead_letter_in(
                &journal,
                change,
                Failure {
                    record: &record,
                    ..DEFAULT
                },
            )
            .await;
            if tx.send(n).is_err() {
                return n;
            }
        }
        1000
    });
    inserted.changed().await.unwrap();
    let before: Vec<i64> = sqlx::query_scalar("SELECT id FROM dead_letters")
        .fetch_all(app.journal.pool())
        .await
        .unwrap();
    let seen = walk_pages(
        &app,
        "/api/v1/dead-letters?limit=7",
        "items",
        "id",
        &mut inserted,
    )
    .await;
    drop(inserted);
    let made = inserter.await.unwrap();
    assert!(
        before.len() >= 31 && made >= 5,
        "{} before, {made} made",
        before.len()
    );
    assert_walk(&seen, &before);
    app.stop().await;
}

#[tokio::test]
async fn record_history_pages_stay_whole_while_the_record_keeps_changing() {
    let app = spawn_admin_with_connector().await;
    let edit = |n: u64| NewChange {
        connector: "crm".into(),
        object: "issue".into(),
        record_id: "CRM-7".into(),
        op: tandem::journal::ChangeOp::Upsert,
        snapshot: json!({ "summary": format!("edit {n}") }),
        source_modified_at: Some(1_700_000_000_000 + n as i64),
        origin: tandem::journal::Origin::Webhook,
        dedupe_key: format!("crm/issue/CRM-7@{n}"),
    };
    for n in 0..30 {
        app.journal.append(edit(n)).await.unwrap();
    }
    let (tx, mut inserted) = tokio::sync::watch::channel(0u64);
    let journal = app.journal.clone();
    let inserter = tokio::spawn(async move {
        for n in 1..=1000 {
            journal.append(edit(1000 + n)).await.unwrap();
            if tx.send(n).is_err() {
                return n;
            }
        }
        1000
    });
    inserted.changed().await.unwrap();
    let before: Vec<i64> = sqlx::query_scalar("SELECT id FROM changes WHERE record_id = 'CRM-7'")
        .fetch_all(app.journal.pool())
        .await
        .unwrap();
    let seen = walk_pages(
        &app,
        "/api/v1/records/crm/issue/CRM-7?limit=7",
        "history",
        "change_id",
        &mut inserted,
    )
    .await;
    drop(inserted);
    let made = inserter.await.unwrap();
    assert!(
        before.len() >= 31 && made >= 5,
        "{} before, {made} made",
        before.len()
    );
    assert_walk(&seen, &before);
    app.stop().await;
}

#[tokio::test]
async fn replaying_a_letter_appends_a_fresh_change_for_the_same_record() {
    let app = spawn_admin().await;
    let (original, letter) = dead_letter(&app, DEFAULT).await;

    let shown = json(get(&app, &format!("/api/v1/dead-letters/{letter}")).await).await;
    assert_eq!(shown["payload"], json!({ "Subject": "from JIRA-1" }));
    assert_eq!(shown["change_id"], original.0);
    assert_eq!(shown["op"], "upsert");
    assert_eq!(shown["origin"], "webhook");
    // The change's own snapshot, as the dispatcher saw it.
    assert!(shown["snapshot"]["summary"]
        .as_str()
        .unwrap()
        .starts_with("edit event-"));

    let response = request(
        &app,
        Method::POST,
        &format!("/api/v1/dead-letters/{letter}/replay"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 202);
    let body = json(response).await;
    assert_eq!(body["dead_letter"], letter.0);
    let replay = body["change_id"].as_i64().unwrap();
    assert!(replay > original.0);

    let row: (
        String,
        String,
        String,
        String,
        String,
        Option<i64>,
        String,
        String,
    ) = sqlx::query_as(
        "SELECT connector, object, record_id, op, snapshot, source_modified_at, origin, status
               FROM changes WHERE id = ?",
    )
    .bind(replay)
    .fetch_one(app.journal.pool())
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "jira".into(),
            "issue".into(),
            "JIRA-1".into(),
            "upsert".into(),
            "{}".into(),
            None,
            "replay".into(),
            "pending".into()
        )
    );
    let (status, resolved_at, replay_change_id) = letter_status(&app, letter).await;
    assert_eq!(status, "replayed");
    assert!(resolved_at.is_some());
    assert_eq!(replay_change_id, Some(replay));

    let shown = json(get(&app, &format!("/api/v1/dead-letters/{letter}")).await).await;
    assert_eq!(shown["status"], "replayed");
    assert_eq!(shown["replay_change_id"], replay);
    assert!(shown["resolved_at"].is_string());

    // Twice is a conflict, and says why.
    let again = request(
        &app,
        Method::POST,
        &format!("/api/v1/dead-letters/{letter}/replay"),
    )
    .send()
    .await
    .unwrap();
    let body = assert_error(again, 409, "not_open").await;
    assert_eq!(body["error"]["status"], "replayed");
    let discard = request(
        &app,
        Method::DELETE,
        &format!("/api/v1/dead-letters/{letter}"),
    )
    .send()
    .await
    .unwrap();
    assert_error(discard, 409, "not_open").await;

    // The sync engine picks the replay up like any change, with nothing stale to apply.
    let claimed = app.journal.claim("engine", 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, ChangeId(replay));
    assert_eq!(claimed[0].snapshot, json!({}));
    assert_eq!(claimed[0].origin, tandem::journal::Origin::Replay);

    let missing = request(&app, Method::POST, "/api/v1/dead-letters/999999/replay")
        .send()
        .await
        .unwrap();
    assert_error(missing, 404, "not_found").await;
    for path in [
        "/api/v1/dead-letters/abc/replay",
        "/api/v1/dead-letters/-1/replay",
    ] {
        let response = request(&app, Method::POST, path).send().await.unwrap();
        assert_error(response, 400, "bad_request").await;
    }
    assert_error(
        get(&app, "/api/v1/dead-letters/999999").await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        get(&app, "/api/v1/dead-letters/1.5").await,
        400,
        "bad_request",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn bulk_replay_takes_the_open_letters_matching_its_filter() {
    let app = spawn_admin().await;
    let mut ids = Vec::new();
    for (record, code, flow) in [
        ("A-1", "A", "support"),
        ("A-2", "A", "support"),
        ("A-3", "A", "support"),
        ("B-1", "B", "billing"),
        ("B-2", "B", "support"),
    ] {
        let failure = Failure {
            record,
            code,
            flow,
            ..DEFAULT
        };
        ids.push(dead_letter(&app, failure).await.1);
    }
    let [a1, a2, a3, b1, b2] = ids[..] else {
        unreachable!("five letters")
    };
    app.journal.discard_dead_letter(a3).await.unwrap();

    let replay = |body: &'static str| {
        let app = &app;
        async move {
            request(app, Method::POST, "/api/v1/dead-letters/replay")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    for bad in [
        "",
        "{",
        "[]",
        r#"{"status":"discarded"}"#,
        r#"{"since":"last week"}"#,
    ] {
        assert_error(replay(bad).await, 400, "bad_request").await;
    }
    let response = replay(r#"{"code":"A"}"#).await;
    assert_eq!(response.status(), 202);
    let body = json(response).await;
    assert_eq!(body["replayed"], 2, "the discarded A is not replayed");
    assert_eq!(body["change_ids"].as_array().unwrap().len(), 2);
    assert_eq!(body["more"], false);
    for letter in [a1, a2] {
        assert_eq!(letter_status(&app, letter).await.0, "replayed");
    }
    assert_eq!(letter_status(&app, a3).await.0, "discarded");

    let body = json(replay(r#"{"flow":"billing","until":4102444800000}"#).await).await;
    assert_eq!(body["replayed"], 1);
    assert_eq!(body["dead_letters"], json!([b1.0]));
    let body = json(replay(r#"{"since":"2100-01-01T00:00:00Z"}"#).await).await;
    assert_eq!(body["replayed"], 0);

    let body = json(replay("{}").await).await;
    assert_eq!(
        body["dead_letters"],
        json!([b2.0]),
        "only b2 was still open"
    );
    let (_, _, change) = letter_status(&app, b2).await;
    assert_eq!(body["change_ids"], json!([change.unwrap()]));
    let pending: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM changes WHERE origin = 'replay' AND status = 'pending'",
    )
    .fetch_one(app.journal.pool())
    .await
    .unwrap();
    assert_eq!(pending, 4);
    assert_eq!(json(replay("{}").await).await["replayed"], 0);
    app.stop().await;
}

#[tokio::test]
async fn discarding_resolves_a_letter_once() {
    let app = spawn_admin().await;
    let (_, letter) = dead_letter(&app, DEFAULT).await;
    let path = format!("/api/v1/dead-letters/{letter}");
    let response = request(&app, Method::DELETE, &path).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let (status, resolved_at, replay) = letter_status(&app, letter).await;
    assert_eq!((status.as_str(), replay), ("discarded", None));
    assert!(resolved_at.is_some());

    let again = request(&app, Method::DELETE, &path).send().await.unwrap();
    let body = assert_error(again, 409, "not_open").await;
    assert_eq!(body["error"]["status"], "discarded");
    let replay = request(&app, Method::POST, &format!("{path}/replay"))
        .send()
        .await
        .unwrap();
    assert_error(replay, 409, "not_open").await;

    let missing = request(&app, Method::DELETE, "/api/v1/dead-letters/424242")
        .send()
        .await
        .unwrap();
    assert_error(missing, 404, "not_found").await;
    let bad = request(&app, Method::DELETE, "/api/v1/dead-letters/x")
        .send()
        .await
        .unwrap();
    assert_error(bad, 400, "bad_request").await;
    let replays: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM changes WHERE origin = 'replay'")
        .fetch_one(app.journal.pool())
        .await
        .unwrap();
    assert_eq!(replays, 0);
    app.stop().await;
}

#[tokio::test]
async fn superseding_marks_only_that_records_open_letters() {
    let app = spawn_admin().await;
    let (_, r1) = letter_on(&app, "R").await;
    let (_, r2) = letter_on(&app, "R").await;
    let (_, r3) = letter_on(&app, "R").await;
    let (_, other_record) = letter_on(&app, "S").await;
    // Same record id in another connector's object: a different record.
    let mut elsewhere = common::change("R", &unique_key());
    elsewhere.connector = "salesforce".into();
    elsewhere.object = "Case".into();
    let (_, other_connector) = dead_letter_for(&app, elsewhere, DEFAULT).await;
    app.journal.discard_dead_letter(r2).await.unwrap();

    let marked = app
        .journal
        .supersede_dead_letters("jira", "issue", "R")
        .await
        .unwrap();
    assert_eq!(marked, 2);
    for (letter, status) in [
        (r1, "superseded"),
        (r2, "discarded"),
        (r3, "superseded"),
        (other_record, "open"),
        (other_connector, "open"),
    ] {
        assert_eq!(letter_status(&app, letter).await.0, status, "{letter}");
    }
    assert!(letter_status(&app, r1).await.1.is_some());
    assert_eq!(
        app.journal
            .supersede_dead_letters("jira", "issue", "R")
            .await
            .unwrap(),
        0
    );
    let body = json(get(&app, "/api/v1/dead-letters?status=superseded").await).await;
    assert_eq!(ids(&body), vec![r3.0, r1.0]);
    let replay = request(
        &app,
        Method::POST,
        &format!("/api/v1/dead-letters/{r1}/replay"),
    )
    .send()
    .await
    .unwrap();
    let body = assert_error(replay, 409, "not_open").await;
    assert_eq!(body["error"]["status"], "superseded");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_replays_of_one_letter_append_exactly_one_change() {
    let app = spawn_admin().await;
    let (_, letter) = dead_letter(&app, DEFAULT).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let journal = app.journal.clone();
        tasks.spawn(async move { journal.replay_dead_letter(letter).await });
    }
    let mut replayed = Vec::new();
    let mut refused = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(change) => replayed.push(change),
            Err(ReplayError::NotOpen { status, .. }) => {
                assert_eq!(status, DeadLetterStatus::Replayed);
                refused += 1;
            }
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!((replayed.len(), refused), (1, 7));
    let replays: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM changes WHERE origin = 'replay'")
        .fetch_one(app.journal.pool())
        .await
        .unwrap();
    assert_eq!(replays, 1);
    assert_eq!(
        letter_status(&app, letter).await.2,
        Some(replayed[0].0),
        "the letter points at the one change that was appended"
    );
    app.stop().await;
}
