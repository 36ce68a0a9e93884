//! Criterion micro-benchmarks of the hot pure functions on the ingest and sync paths:
//! webhook authentication and parsing, hashing, dedupe keys, field mapping, ADF, snapshots.
//!
//! ```text
//! cargo bench --bench micro            # all
//! cargo bench --bench micro -- webhook # those whose name contains `webhook`
//! ```

use std::hint::black_box;

use axum::http::HeaderMap;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Map, Value};
use tandem::config::{Settings, Sources};
use tandem::connectors::{CallStats, Connectors, WebhookRequest};
use tandem::sync::mapping::{self, Side};

const SECRET: &str = "jira-webhook-secret";

/// The flow of the README's example, on two connectors that are never called.
fn settings(dir: &std::path::Path) -> Settings {
    let secret = |name: &str, value: &str| {
        let path = dir.join(name);
        std::fs::write(&path, value).unwrap();
        path.display().to_string()
    };
    let overlay = format!(
        r#"
[connectors.jira]
kind = "jira"
base_url = "http://127.0.0.1:9"
auth = {{ method = "basic", email = "sim@example.com", api_token = {{ file = "{token}" }} }}
webhook_secret = {{ file = "{secret}" }}

[connectors.salesforce]
kind = "salesforce"
base_url = "http://127.0.0.1:9"
auth = {{ method = "client_credentials", client_id = "sim-client", client_secret = {{ file = "{token}" }} }}
organization_id = "00D000000000001AAA"
webhook_secret = {{ file = "{secret}" }}

[flows.support]
left = {{ connector = "jira", object = "issue", marker = "customfield_10050" }}
right = {{ connector = "salesforce", object = "Case", marker = "Jira_Key__c" }}
[[flows.support.fields]]
left = "summary"
right = "Subject"
[[flows.support.fields]]
left = "description"
right = "Description"
transform = "adf_text"
[[flows.support.fields]]
left = "priority.name"
right = "Priority"
map = {{ Highest = "High", High = "High", Medium = "Medium", Low = "Low", Lowest = "Low" }}
reverse_map = {{ High = "High", Medium = "Medium", Low = "Low" }}
[[flows.support.fields]]
left = "status.name"
right = "Status"
map = {{ "To Do" = "New", "In Progress" = "Working", "Done" = "Closed" }}
"#,
        token = secret("token", "sim-token"),
        secret = secret("secret", SECRET),
    );
    let file = dir.join("micro.toml");
    std::fs::write(&file, overlay).unwrap();
    Settings::load_from(&Sources {
        base_dir: dir.to_path_buf(),
        file: Some(file),
        env: false,
    })
    .unwrap()
}

/// A `jira:issue_updated` delivery shaped as the Jira emulator sends it (v2 fields).
fn jira_body() -> Vec<u8> {
    let user = json!({
        "self": "https://example.atlassian.net/rest/api/2/user?accountId=5b10a2844c20165700ede21g",
        "accountId": "5b10a2844c20165700ede21g",
        "displayName": "Mia Krystof",
        "emailAddress": "mia@example.com",
        "active": true,
        "timeZone": "Europe/Paris",
        "accountType": "atlassian"
    });
    json!({
        "timestamp": 1_732_000_000_000i64,
        "webhookEvent": "jira:issue_updated",
        "issue_event_type_name": "issue_generic",
        "user": user,
        "issue": {
            "id": "10042",
            "key": "SUP-42",
            "self": "https://example.atlassian.net/rest/api/2/issue/10042",
            "fields": {
                "summary": "Printer on floor 3 is on fire",
                "description": "Smoke coming out of the paper tray since 9am.",
                "priority": {"id": "2", "name": "High", "self": "https://example.atlassian.net/rest/api/2/priority/2"},
                "status": {"id": "3", "name": "In Progress", "statusCategory": {"id": 4, "key": "indeterminate", "name": "In Progress"}},
                "issuetype": {"id": "10001", "name": "Task", "subtask": false},
                "project": {"id": "10000", "key": "SUP", "name": "Support"},
                "labels": ["hardware", "floor-3"],
                "created": "2024-11-19T08:00:00.000+0000",
                "updated": "2024-11-19T09:41:23.303+0000",
                "reporter": user,
                "assignee": user,
                "creator": user,
                "customfield_10050": null,
                "customfield_10051": null,
                "comment": {"comments": [], "total": 0, "maxResults": 0, "startAt": 0}
            }
        },
        "changelog": {"id": "10100", "items": [
            {"field": "summary", "fieldtype": "jira", "from": null,
             "fromString": "Printer on floor 3", "to": null, "toString": "Printer on floor 3 is on fire"}
        ]}
    })
    .to_string()
    .into_bytes()
}

fn webhooks(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let connectors = Connectors::build(&settings, &CallStats::default()).unwrap();
    let jira = connectors.get("jira").unwrap();
    let body = jira_body();
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-hub-signature",
        tandem::sim::jira::webhooks::signature(SECRET, &body)
            .parse()
            .unwrap(),
    );
    let mut group = c.benchmark_group("webhook");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("jira_parse_signed", |b| {
        b.iter(|| {
            let request = WebhookRequest {
                headers: &headers,
                body: black_box(&body),
                path_token: None,
            };
            jira.parse_webhook(&request).unwrap()
        })
    });
    group.bench_function("hmac_sha256", |b| {
        b.iter(|| tandem::sim::jira::webhooks::signature(SECRET, black_box(&body)))
    });
    group.bench_function("json_parse_body", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).unwrap())
    });
    group.finish();

    let webhook = jira
        .parse_webhook(&WebhookRequest {
            headers: &headers,
            body: &body,
            path_token: None,
        })
        .unwrap();
    let snapshot = webhook.changes[0].snapshot.clone();
    let text = snapshot.to_string();
    let mut group = c.benchmark_group("journal");
    group.bench_function("state_key", |b| {
        b.iter(|| {
            tandem::connectors::state_key(
                black_box("jira"),
                "issue",
                black_box("10042"),
                1_732_000_000_000,
            )
        })
    });
    group.bench_function("snapshot_to_string", |b| {
        b.iter(|| black_box(&snapshot).to_string())
    });
    group.bench_function("snapshot_from_str", |b| {
        b.iter(|| serde_json::from_str::<Value>(black_box(&text)).unwrap())
    });
    group.finish();
}

fn mapping(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let flow = &settings.flows["support"];
    let issue: Map<String, Value> = json!({
        "summary": "Printer on floor 3 is on fire",
        "description": tandem::adf::from_text("Smoke coming out of the paper tray since 9am.\n\nSecond paragraph with more detail about the printer."),
        "priority": {"name": "High"},
        "status": {"name": "In Progress"},
    })
    .as_object()
    .unwrap()
    .clone();
    let mut group = c.benchmark_group("mapping");
    group.bench_function("jira_issue_to_case_fields", |b| {
        b.iter(|| {
            let mut out = Map::new();
            for rule in &flow.fields {
                let raw = mapping::get_path(black_box(&issue), Side::Left.path(rule))
                    .cloned()
                    .unwrap_or(Value::Null);
                let own = mapping::own_form(rule, &raw);
                let theirs = mapping::translate(rule, Side::Left, &own);
                mapping::put(
                    &mut out,
                    rule,
                    tandem::config::ConnectorKind::Salesforce,
                    Side::Right.path(rule),
                    &theirs,
                );
            }
            out
        })
    });
    let adf = issue["description"].clone();
    group.bench_function("adf_to_text", |b| {
        b.iter(|| tandem::adf::to_text(black_box(&adf)))
    });
    let text = tandem::adf::to_text(&adf);
    group.bench_function("adf_from_text", |b| {
        b.iter(|| tandem::adf::from_text(black_box(&text)))
    });
    group.finish();
}

criterion_group!(benches, webhooks, mapping);
criterion_main!(benches);
