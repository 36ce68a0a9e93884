//! `GET /api/v1/openapi.json`: the document covers every route the daemon serves, documents the
//! admin token's answers and the error body everywhere, and real answers fit it.

mod common;
#[path = "common/openapi.rs"]
mod openapi;

use std::collections::BTreeSet;

use common::sims::Sims;
use common::{spawn_app, spawn_app_with, TestApp};
use openapi::Spec;
use reqwest::{Method, Response};
use serde_json::{json, Value};
use tandem::journal::{ChangeId, DeadLetterId, NewChange, NewDeadLetter};

const TOKEN: &str = "openapi-admin-token";
const DOC: &str = "/api/v1/openapi.json";

/// Every route the router serves, as the document must name it. A new route gets a line here
/// (and [`every_listed_route_is_served`] checks that each one is).
#[rustfmt::skip]
const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/assets/{name}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("post", "/webhooks/{connector}"),
    ("post", "/webhooks/{connector}/{token}"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/dead-letters"),
    ("post", "/api/v1/dead-letters/replay"),
    ("get", "/api/v1/dead-letters/{id}"),
    ("delete", "/api/v1/dead-letters/{id}"),
    ("post", "/api/v1/dead-letters/{id}/replay"),
    ("get", "/api/v1/connectors"),
    ("get", "/api/v1/flows"),
    ("get", "/api/v1/flows/{name}"),
    ("get", "/api/v1/flows/{name}/runs"),
    ("post", "/api/v1/flows/{name}/run"),
    ("get", "/api/v1/flows/{name}/runs/{id}"),
    ("post", "/api/v1/flows/{name}/backfill"),
    ("get", "/api/v1/flows/{name}/reconcile"),
    ("post", "/api/v1/flows/{name}/reconcile"),
    ("get", "/api/v1/records/{connector}/{object}/{id}"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// A scheduled flow no test waits for: runs start through the API.
const FLOW: &str = r#"
[flows.nightly]
mode = { scheduled = { every = "1h" } }
left = { connector = "jira", object = "issue", filter = "project = SUP", marker = "customfield_10050" }
right = { connector = "salesforce", object = "Case", marker = "Jira_Key__c" }

[[flows.nightly.fields]]
left = "summary"
right = "Subject"
"#;

async fn spawn_admin(extra: &str) -> TestApp {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("admin-token");
    std::fs::write(&file, TOKEN).unwrap();
    spawn_app_with(&format!(
        "[admin]\ntoken = {{ file = \"{}\" }}\n{extra}",
        file.display()
    ))
    .await
}

async fn document(app: &TestApp) -> Value {
    let response = app.client.get(app.url(DOC)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "the document is served as JSON"
    );
    response.json().await.unwrap()
}

/// Every (method, path) the document describes.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(*method).is_some() {
                out.insert((method.to_string(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_public() {
    // Public even where the admin API is off, and without a token where it is on.
    for app in [spawn_app().await, spawn_admin("").await] {
        let doc = document(&app).await;
        let version = doc["openapi"].as_str().unwrap();
        assert!(version.starts_with("3.1"), "openapi {version}");
        assert_eq!(doc["info"]["title"], "Tandem");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(doc["info"]["description"]
            .as_str()
            .unwrap()
            .contains("Bearer"));
        assert_eq!(
            doc["paths"][DOC]["get"].get("security"),
            None,
            "the document needs no token"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn every_route_is_documented_and_nothing_else() {
    let app = spawn_app().await;
    let documented = operations(&document(&app).await);
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = expected.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&expected).collect();
    assert!(missing.is_empty(), "routes the document lacks: {missing:?}");
    assert!(extra.is_empty(), "documented but not routed: {extra:?}");
    app.stop().await;
}

/// Each listed route reaches a handler rather than the router's fallback, so the list (and with
/// it the document) does not name paths the router lacks.
#[tokio::test]
async fn every_listed_route_is_served() {
    let app = spawn_admin("").await;
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{id}", "1")
            .replace("{name}", "nope")
            .replace("{connector}", "nope")
            .replace("{object}", "issue")
            .replace("{token}", "t");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = app
            .client
            .request(method.clone(), app.url(&concrete))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_ne!(status, 405, "{method} {concrete}: {body}");
        assert!(
            !(status == 404 && body.contains("no such endpoint")),
            "{method} {concrete} fell through to the fallback: {body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn every_error_answer_is_the_error_body_and_admin_routes_document_their_token() {
    let app = spawn_app().await;
    let spec = Spec::strict(document(&app).await);
    let doc = spec.doc();

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");

    let error = spec.named("ErrorBody").expect("an ErrorBody schema");
    assert_eq!(error["required"], json!(["error"]));
    let detail = spec.resolve(&error["properties"]["error"]);
    let required: BTreeSet<&str> = detail["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, BTreeSet::from(["code", "message"]));

    for (method, path) in operations(doc) {
        let operation = &doc["paths"][&path][&method];
        let at = format!("{method} {path}");
        let responses = operation["responses"].as_object().unwrap();

        for (status, response) in responses {
            let code: u16 = status.parse().unwrap_or_else(|_| panic!("{at}: {status}"));
            if code < 400 {
                continue;
            }
            let content = spec.resolve(response)["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{at} {status}: no content"));
            let keys: Vec<&String> = content.keys().collect();
            assert_eq!(keys, ["application/json"], "{at} {status}");
            assert_eq!(
                content["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                "{at} {status}"
            );
        }

        // Every path parameter is described.
        let params: BTreeSet<&str> = operation["parameters"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        assert_eq!(params, in_path, "{at}: path parameters");

        let admin = path.starts_with("/api/v1/") && path != DOC;
        if admin {
            assert_eq!(
                operation["security"],
                json!([{ "bearer": [] }]),
                "{at}: the bearer scheme"
            );
            for status in ["401", "503"] {
                assert!(responses.contains_key(status), "{at}: no {status}");
            }
        } else {
            assert_eq!(operation.get("security"), None, "{at} is public");
        }
    }
    app.stop().await;
}

/// The live checks below mean something: the checker refuses what the document does not allow.
#[tokio::test]
async fn the_checker_refuses_what_the_document_does_not_allow() {
    let app = spawn_app().await;
    let spec = Spec::strict(document(&app).await);
    let schema = spec
        .response_schema("get", "/api/v1/dead-letters", 200)
        .unwrap();
    let item = json!({
        "id": 1, "flow": null, "connector": "sf", "source_connector": "jira", "object": "issue",
        "record_id": "1", "change_id": 1, "operation": "create Case", "http_status": null,
        "vendor_code": null, "vendor_message": null, "attempts": 1,
        "first_failed_at": "2023-11-14T22:13:20.000Z", "last_failed_at": "2023-11-14T22:13:20.000Z",
        "status": "open", "replay_change_id": null,
    });
    let page = |item: Value| json!({ "items": [item], "next_cursor": null });
    assert_eq!(
        spec.check(schema, &page(item.clone())),
        Vec::<String>::new()
    );
    let mut wrong = Vec::new();
    for (key, value) in [
        ("status", json!("lost")),
        ("connector", Value::Null),
        ("attempts", json!("1")),
    ] {
        let mut bad = item.clone();
        bad[key] = value;
        wrong.push(page(bad));
    }
    let mut missing = item.clone();
    missing.as_object_mut().unwrap().remove("record_id");
    wrong.push(page(missing));
    wrong.push(json!({ "next_cursor": null }));
    for body in wrong {
        assert!(!spec.check(schema, &body).is_empty(), "accepted {body}");
    }
    app.stop().await;
}

/// The answer fits what the document says `method template` answers with its status.
async fn fits(spec: &Spec, method: &str, template: &str, response: Response) -> Value {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    let at = format!("{method} {template} → {status}");
    let documented = spec.doc()["paths"][template][method]["responses"]
        .get(status.to_string())
        .map(|r| spec.resolve(r).clone())
        .unwrap_or_else(|| panic!("{at}: status not in the document ({text})"));
    let Some(content_type) = content_type else {
        assert!(text.is_empty(), "{at}: a body without a content type");
        assert_eq!(
            documented.get("content"),
            None,
            "{at}: documented with a body"
        );
        return Value::Null;
    };
    assert!(
        documented["content"].get(&content_type).is_some(),
        "{at}: {content_type} is not documented: {}",
        documented["content"]
    );
    if content_type != "application/json" {
        return Value::String(text);
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    let schema = spec.response_schema(method, template, status).unwrap();
    let problems = spec.check(schema, &body);
    assert!(problems.is_empty(), "{at}: {problems:#?}\n{body:#}");
    body
}

/// A dead letter as the dispatcher makes one, for a change from a connector no dispatcher drains.
async fn dead_letter(app: &TestApp, record: &str) -> (ChangeId, DeadLetterId) {
    let change = NewChange {
        connector: "crm".into(),
        ..common::change(record, &format!("openapi-{record}"))
    };
    let id = app.journal.append(change).await.unwrap().id();
    let claimed = app
        .journal
        .claim("test", 1, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), vec![id]);
    let letter = app
        .journal
        .dead_letter(
            id,
            "test",
            NewDeadLetter {
                flow: Some("nightly".into()),
                connector: "salesforce".into(),
                operation: "update Case".into(),
                payload: json!({ "Subject": record }),
                http_status: Some(400),
                vendor_code: Some("FIELD_CUSTOM_VALIDATION_EXCEPTION".into()),
                vendor_message: Some("Subject is invalid".into()),
                first_failed_at: 1_700_000_000_000,
            },
        )
        .await
        .unwrap();
    (id, letter)
}

#[tokio::test]
async fn live_answers_fit_the_document() {
    let sims = Sims::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_admin(&sims.config(&dir, FLOW)).await;
    let spec = Spec::strict(document(&app).await);
    let (_, first) = dead_letter(&app, "CRM-1").await;
    let (_, second) = dead_letter(&app, "CRM-2").await;

    let call = |method: Method, path: String| {
        app.client
            .request(method, app.url(&path))
            .bearer_auth(TOKEN)
    };
    let get = |path: &str| call(Method::GET, path.to_string());

    let page = fits(
        &spec,
        "get",
        "/api/v1/dead-letters",
        get("/api/v1/dead-letters?limit=1").send().await.unwrap(),
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert!(page["next_cursor"].is_string());
    let last = fits(
        &spec,
        "get",
        "/api/v1/dead-letters",
        get(&format!(
            "/api/v1/dead-letters?limit=1&cursor={}",
            page["next_cursor"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert!(last["next_cursor"].is_null());

    let letter = fits(
        &spec,
        "get",
        "/api/v1/dead-letters/{id}",
        get(&format!("/api/v1/dead-letters/{first}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(letter["payload"], json!({ "Subject": "CRM-1" }));
    assert!(letter["resolved_at"].is_null());

    for (path, status) in [
        ("/api/v1/dead-letters/999999", 404),
        ("/api/v1/dead-letters/nope", 400),
    ] {
        let response = get(path).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        let body = fits(&spec, "get", "/api/v1/dead-letters/{id}", response).await;
        assert!(body["error"]["code"].is_string(), "{path} → {status}");
    }
    fits(
        &spec,
        "get",
        "/api/v1/dead-letters",
        get("/api/v1/dead-letters?colour=red").send().await.unwrap(),
    )
    .await;

    // Without the token: 401, documented once for every admin route.
    let unauthorized = app
        .client
        .get(app.url("/api/v1/dead-letters"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let body = fits(&spec, "get", "/api/v1/dead-letters", unauthorized).await;
    assert_eq!(body["error"]["code"], "unauthorized");

    let replay = format!("/api/v1/dead-letters/{first}/replay");
    let replayed = fits(
        &spec,
        "post",
        "/api/v1/dead-letters/{id}/replay",
        call(Method::POST, replay.clone()).send().await.unwrap(),
    )
    .await;
    assert_eq!(replayed["dead_letter"], first.0);
    let conflict = fits(
        &spec,
        "post",
        "/api/v1/dead-letters/{id}/replay",
        call(Method::POST, replay).send().await.unwrap(),
    )
    .await;
    assert_eq!(conflict["error"]["code"], "not_open");
    assert_eq!(conflict["error"]["status"], "replayed");

    fits(
        &spec,
        "delete",
        "/api/v1/dead-letters/{id}",
        call(Method::DELETE, format!("/api/v1/dead-letters/{second}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let bulk = fits(
        &spec,
        "post",
        "/api/v1/dead-letters/replay",
        call(Method::POST, "/api/v1/dead-letters/replay".into())
            .header("content-type", "application/json")
            .body(r#"{"since": 0, "until": "2100-01-01T00:00:00Z"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bulk["replayed"], 0, "both letters are resolved by now");
    fits(
        &spec,
        "post",
        "/api/v1/dead-letters/replay",
        call(Method::POST, "/api/v1/dead-letters/replay".into())
            .body(r#"{"status": "open"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;

    let connectors = fits(
        &spec,
        "get",
        "/api/v1/connectors",
        get("/api/v1/connectors").send().await.unwrap(),
    )
    .await;
    assert_eq!(connectors["connectors"].as_array().unwrap().len(), 2);

    let started = fits(
        &spec,
        "post",
        "/api/v1/flows/{name}/run",
        call(Method::POST, "/api/v1/flows/nightly/run".into())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(started["run"]["flow"], "nightly");
    let flows = fits(
        &spec,
        "get",
        "/api/v1/flows",
        get("/api/v1/flows").send().await.unwrap(),
    )
    .await;
    assert_eq!(flows["flows"][0]["mode"]["scheduled"]["every"], "1h");
    let flow = fits(
        &spec,
        "get",
        "/api/v1/flows/{name}",
        get("/api/v1/flows/nightly").send().await.unwrap(),
    )
    .await;
    assert!(!flow["recent_runs"].as_array().unwrap().is_empty());
    fits(
        &spec,
        "get",
        "/api/v1/flows/{name}/runs",
        get("/api/v1/flows/nightly/runs?limit=1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let run_id = started["run"]["id"].as_i64().unwrap();
    let one = fits(
        &spec,
        "get",
        "/api/v1/flows/{name}/runs/{id}",
        get(&format!("/api/v1/flows/nightly/runs/{run_id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(one["id"], run_id);
    let never = fits(
        &spec,
        "get",
        "/api/v1/flows/{name}/reconcile",
        get("/api/v1/flows/nightly/reconcile").send().await.unwrap(),
    )
    .await;
    assert_eq!(never["error"]["code"], "no_report");
    let report = fits(
        &spec,
        "post",
        "/api/v1/flows/{name}/reconcile",
        call(
            Method::POST,
            "/api/v1/flows/nightly/reconcile?since=1h".into(),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(report["flow"], "nightly");
    let kept = fits(
        &spec,
        "get",
        "/api/v1/flows/{name}/reconcile",
        get("/api/v1/flows/nightly/reconcile").send().await.unwrap(),
    )
    .await;
    assert_eq!(kept, report);
    let plan = fits(
        &spec,
        "post",
        "/api/v1/flows/{name}/backfill",
        call(
            Method::POST,
            "/api/v1/flows/nightly/backfill?dry_run=true".into(),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(plan["flow"], "nightly");
    for path in ["/api/v1/flows/daily", "/api/v1/flows/daily/runs"] {
        let body = fits(
            &spec,
            "get",
            if path.ends_with("runs") {
                "/api/v1/flows/{name}/runs"
            } else {
                "/api/v1/flows/{name}"
            },
            get(path).send().await.unwrap(),
        )
        .await;
        assert_eq!(body["error"]["code"], "unknown_flow");
    }

    let record = fits(
        &spec,
        "get",
        "/api/v1/records/{connector}/{object}/{id}",
        get("/api/v1/records/jira/issue/10001?limit=5")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(record["history"], json!([]));
    fits(
        &spec,
        "get",
        "/api/v1/records/{connector}/{object}/{id}",
        get("/api/v1/records/nope/issue/1").send().await.unwrap(),
    )
    .await;

    // The public routes.
    let plain = |path: &str| app.client.get(app.url(path)).send();
    fits(&spec, "get", "/healthz", plain("/healthz").await.unwrap()).await;
    fits(&spec, "get", "/readyz", plain("/readyz").await.unwrap()).await;
    fits(&spec, "get", "/metrics", plain("/metrics").await.unwrap()).await;
    fits(&spec, "get", "/", plain("/").await.unwrap()).await;
    fits(
        &spec,
        "get",
        "/assets/{name}",
        plain("/assets/dashboard.css").await.unwrap(),
    )
    .await;
    fits(
        &spec,
        "get",
        "/assets/{name}",
        plain("/assets/nope.js").await.unwrap(),
    )
    .await;
    let webhook = |path: &str, body: &'static str| {
        app.client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let unsigned = fits(
        &spec,
        "post",
        "/webhooks/{connector}",
        webhook("/webhooks/jira", "{}").await.unwrap(),
    )
    .await;
    assert_eq!(unsigned["error"]["code"], "unauthorized");
    fits(
        &spec,
        "post",
        "/webhooks/{connector}",
        webhook("/webhooks/nope", "{}").await.unwrap(),
    )
    .await;
    let malformed = fits(
        &spec,
        "post",
        "/webhooks/{connector}/{token}",
        webhook(
            &format!("/webhooks/salesforce/{}", common::sims::SF_TOKEN),
            "not xml",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(malformed["error"]["code"], "malformed_webhook");

    app.stop().await;
    sims.stop().await;
}

#[tokio::test]
async fn with_no_admin_token_the_admin_routes_answer_the_documented_503() {
    let app = spawn_app().await;
    let spec = Spec::strict(document(&app).await);
    let response = app
        .client
        .get(app.url("/api/v1/flows"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body = fits(&spec, "get", "/api/v1/flows", response).await;
    assert_eq!(body["error"]["code"], "admin_disabled");
    app.stop().await;
}
