//! The Salesforce connector against the emulator over real HTTP: every call, its error
//! classification, sessions, paging, collections and hostile values.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tandem::config::SalesforceSettings;
use tandem::connectors::salesforce::{soql, SalesforceClient};
use tandem::connectors::{CallStats, ConnectorError, ErrorKind, Marker, NewRecord};
use tandem::sim::salesforce::{Options, SalesforceSim};
use tempfile::TempDir;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const USERNAME: &str = "integration@tandem.sim";

struct Env {
    sim: SalesforceSim,
    client: Arc<SalesforceClient>,
    _dir: TempDir,
}

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("fields must be an object"),
    }
}

fn secret_file(dir: &TempDir, name: &str, value: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, value).expect("write secret");
    path.display().to_string()
}

fn client_for(
    sim: &SalesforceSim,
    auth: Value,
    timeout: &str,
) -> Result<SalesforceClient, ConnectorError> {
    let settings: SalesforceSettings = serde_json::from_value(json!({
        "base_url": sim.base_url(),
        "api_version": "60.0",
        "auth": auth,
        "limits": {
            "requests_per_second": 10000.0,
            "max_concurrency": 32,
            "timeout": timeout,
            "connect_timeout": "2s",
        },
    }))
    .expect("settings deserialize");
    SalesforceClient::new("sf", &settings, CallStats::default())
}

async fn start_with(options: Options, secret: &str, timeout: &str) -> Env {
    let sim = SalesforceSim::start(options)
        .await
        .expect("emulator starts");
    let dir = TempDir::new().expect("temp dir");
    let path = secret_file(&dir, "client_secret", secret);
    let client = client_for(
        &sim,
        json!({ "method": "client_credentials", "client_id": "sim-client", "client_secret": { "file": path } }),
        timeout,
    )
    .expect("client builds");
    Env {
        sim,
        client: Arc::new(client),
        _dir: dir,
    }
}

async fn start() -> Env {
    start_with(Options::default(), "sim-secret", "5s").await
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn faults(&self, faults: Value) {
        let status = reqwest::Client::new()
            .put(self.url("/__sim/faults"))
            .json(&faults)
            .send()
            .await
            .expect("faults call")
            .status();
        assert!(status.is_success(), "faults refused: {status}");
    }

    async fn calls(&self) -> Value {
        reqwest::Client::new()
            .get(self.url("/__sim/calls"))
            .send()
            .await
            .expect("calls call")
            .json()
            .await
            .expect("calls json")
    }

    async fn calls_to(&self, endpoint: &str) -> u64 {
        self.calls().await["by_endpoint"][endpoint]
            .as_u64()
            .unwrap_or(0)
    }

    async fn total_calls(&self) -> u64 {
        self.calls().await["total"].as_u64().unwrap_or(0)
    }

    async fn reset_calls(&self) {
        reqwest::Client::new()
            .delete(self.url("/__sim/calls"))
            .send()
            .await
            .expect("reset calls");
    }

    async fn case(&self, subject: &str) -> String {
        self.client
            .create(
                "Case",
                NewRecord {
                    fields: fields(json!({ "Subject": subject, "Status": "New" })),
                    marker: None,
                },
            )
            .await
            .expect("case created")
            .id
    }
}

fn expect_err<T: std::fmt::Debug>(outcome: Result<T, ConnectorError>) -> ConnectorError {
    match outcome {
        Err(error) => error,
        Ok(value) => panic!("expected an error, got {value:?}"),
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn records_round_trip_and_errors_are_classified() {
    let env = start().await;
    let client = &env.client;
    client.check().await.expect("check passes");
    // Sforce-Limit-Info (and the limits answer) reach the limiter.
    let snapshot = client.http().limiter().snapshot();
    assert_eq!(snapshot.server_max, Some(100_000));
    assert!(snapshot.server_used.is_some_and(|used| used >= 1));

    let id = env.case("first").await;
    let record = client
        .read("Case", &id, &strings(&["Subject"]))
        .await
        .unwrap()
        .expect("the case exists");
    assert_eq!(record.id, id);
    assert!(record.modified_at > 1_600_000_000_000);
    assert_eq!(record.fields["Subject"], "first");
    assert!(record.fields.contains_key("SystemModstamp"));
    assert!(!record.fields.contains_key("attributes"));
    let all = client.read("Case", &id, &[]).await.unwrap().unwrap();
    assert!(all.fields.contains_key("CaseNumber"));

    client
        .update("Case", &id, fields(json!({ "Subject": "second" })))
        .await
        .unwrap();
    let record = client
        .read("Case", &id, &strings(&["Subject"]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.fields["Subject"], "second");

    // Rejections keep the vendor's code and message.
    let error = expect_err(
        client
            .update("Case", &id, fields(json!({ "Nope__c": 1 })))
            .await,
    );
    assert_eq!((error.kind, error.status), (ErrorKind::Rejected, Some(400)));
    assert_eq!(error.code.as_deref(), Some("INVALID_FIELD"));
    let error = expect_err(
        client
            .create(
                "CaseComment",
                NewRecord {
                    fields: fields(json!({ "CommentBody": "orphan" })),
                    marker: None,
                },
            )
            .await,
    );
    assert_eq!(error.kind, ErrorKind::Rejected);
    assert_eq!(error.code.as_deref(), Some("REQUIRED_FIELD_MISSING"));
    assert!(!error.is_retryable());
    let error = expect_err(client.read("Case", &id, &strings(&["Bogus__c"])).await);
    assert_eq!(error.code.as_deref(), Some("INVALID_FIELD"));

    // Names that are not identifiers never reach the vendor.
    let before = env.total_calls().await;
    for outcome in [
        client
            .read("Case", &id, &strings(&["Subject FROM Case --"]))
            .await
            .err(),
        client.read("Case;x", &id, &[]).await.err(),
        client.read("Case", "../limits", &[]).await.err(),
        client
            .changed_since("Case", None, None, &strings(&["Id) OR (Id"]), None)
            .await
            .err(),
        client
            .changed_since("Case", None, None, &[], Some("https://evil.example/x"))
            .await
            .err(),
    ] {
        assert_eq!(outcome.expect("refused").kind, ErrorKind::Rejected);
    }
    assert_eq!(env.total_calls().await, before);

    client.delete("Case", &id).await.unwrap();
    assert_eq!(client.read("Case", &id, &[]).await.unwrap(), None);
    let error = expect_err(client.delete("Case", &id).await);
    assert_eq!(error.kind, ErrorKind::NotFound);
    assert_eq!(
        client
            .read("Case", "500000000000099AAA", &[])
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_wrong_client_secret_is_an_auth_error() {
    let env = start_with(Options::default(), "not-the-secret", "5s").await;
    let error = expect_err(env.client.check().await);
    assert_eq!(error.kind, ErrorKind::Auth);
    assert_eq!(error.code.as_deref(), Some("invalid_client"));
    assert!(error.message.contains("invalid client credentials"));
    assert!(!error.message.contains("not-the-secret"));
}

#[tokio::test]
async fn a_request_limit_storm_pauses_the_connector() {
    let env = start().await;
    env.client.check().await.unwrap();
    env.faults(json!({ "rate_limit_rate": 1.0 })).await;
    let error = expect_err(env.client.read("Case", "500000000000001AAA", &[]).await);
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert_eq!(error.code.as_deref(), Some("REQUEST_LIMIT_EXCEEDED"));
    assert_eq!(error.retry_after, Some(Duration::from_secs(60)));
    let paused = env.client.http().limiter().snapshot().paused_for;
    assert!(paused.is_some_and(|d| d > Duration::from_secs(50)));
    // Paused: the next call fails fast without reaching Salesforce.
    let before = env.total_calls().await;
    let error = expect_err(env.client.read("Case", "500000000000001AAA", &[]).await);
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert_eq!(env.total_calls().await, before);
}

#[tokio::test]
async fn server_errors_are_retryable_server_errors() {
    let env = start().await;
    env.client.check().await.unwrap();
    env.faults(json!({ "error_rate": 1.0 })).await;
    let error = expect_err(env.client.read("Case", "500000000000001AAA", &[]).await);
    assert_eq!(error.kind, ErrorKind::Server);
    assert!(matches!(error.status, Some(500 | 503)));
    assert!(error.is_retryable());
}

#[tokio::test]
async fn a_hung_call_ends_as_a_transport_error_after_the_timeout() {
    let env = start_with(Options::default(), "sim-secret", "300ms").await;
    env.client.check().await.unwrap();
    env.faults(json!({ "hang_rate": 1.0 })).await;
    let started = Instant::now();
    let error = expect_err(env.client.read("Case", "500000000000001AAA", &[]).await);
    assert_eq!(error.kind, ErrorKind::Transport);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_locked_row_is_a_retryable_conflict() {
    let env = start().await;
    let id = env.case("locked").await;
    env.sim.lock_record(&id, None);
    let error = expect_err(
        env.client
            .update("Case", &id, fields(json!({ "Subject": "x" })))
            .await,
    );
    assert_eq!(error.kind, ErrorKind::Conflict);
    assert_eq!(error.code.as_deref(), Some("UNABLE_TO_LOCK_ROW"));
    assert!(error.is_retryable());
    let other = env.case("free").await;
    let results = env
        .client
        .update_many(
            "Case",
            vec![
                (id.clone(), fields(json!({ "Subject": "a" }))),
                (other.clone(), fields(json!({ "Subject": "b" }))),
                ("not-an-id".into(), fields(json!({ "Subject": "c" }))),
            ],
        )
        .await
        .expect("the call is answered");
    assert_eq!(results.len(), 3);
    let locked = results[0].clone().expect_err("locked");
    assert_eq!(
        (locked.kind, locked.code.as_deref()),
        (ErrorKind::Conflict, Some("UNABLE_TO_LOCK_ROW"))
    );
    assert!(results[1].is_ok());
    let bad = results[2].clone().expect_err("malformed");
    assert_eq!(
        (bad.kind, bad.code.as_deref()),
        (ErrorKind::Rejected, Some("MALFORMED_ID"))
    );
    env.sim.unlock_record(&id);
    env.client
        .update("Case", &id, fields(json!({ "Subject": "x" })))
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_reads_on_an_expired_session_share_one_renewal() {
    let env = start().await;
    let id = env.case("shared").await;
    env.reset_calls().await;
    let status = reqwest::Client::new()
        .post(env.url("/__sim/tokens/expire"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success());
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = env.client.clone();
        let id = id.clone();
        reads.spawn(async move { client.read("Case", &id, &[]).await });
    }
    while let Some(outcome) = reads.join_next().await {
        let record = outcome.expect("task").expect("read succeeds");
        assert_eq!(record.expect("found").id, id);
    }
    assert_eq!(env.calls_to("POST /services/oauth2/token").await, 1);
    // A second expiry is renewed again.
    env.sim.expire_tokens();
    env.client.read("Case", &id, &[]).await.unwrap().unwrap();
    assert_eq!(env.calls_to("POST /services/oauth2/token").await, 2);
}

#[tokio::test]
async fn jwt_bearer_sessions_with_the_fixture_key() {
    let options = Options {
        jwt_public_key: Some(format!("{FIXTURES}/sf_jwt_test_key.pub.pem").into()),
        ..Options::default()
    };
    let sim = SalesforceSim::start(options).await.unwrap();
    let jwt = |key: &str| {
        json!({
            "method": "jwt_bearer",
            "client_id": "sim-client",
            "username": USERNAME,
            "private_key": { "file": format!("{FIXTURES}/{key}") },
        })
    };
    let client = client_for(&sim, jwt("sf_jwt_test_key.pem"), "5s").unwrap();
    client.check().await.expect("the JWT grant is accepted");
    let other = client_for(&sim, jwt("sf_jwt_other_key.pem"), "5s").unwrap();
    let error = expect_err(other.check().await);
    assert_eq!(
        (error.kind, error.code.as_deref()),
        (ErrorKind::Auth, Some("invalid_grant"))
    );
    // A key that is not a key is a configuration error before any call.
    let dir = TempDir::new().unwrap();
    let junk = secret_file(&dir, "junk.pem", "not a key");
    let error = client_for(
        &sim,
        json!({ "method": "jwt_bearer", "client_id": "sim-client", "username": USERNAME, "private_key": { "file": junk } }),
        "5s",
    )
    .err()
    .expect("refused");
    assert_eq!(error.kind, ErrorKind::Auth);
}

#[tokio::test]
async fn changed_since_pages_to_the_end_without_gaps_or_repeats() {
    let env = start().await;
    let records: Vec<NewRecord> = (0..2_600)
        .map(|i| NewRecord {
            fields: fields(json!({ "Subject": format!("bulk {i}"), "Status": if i % 2 == 0 { "New" } else { "Working" } })),
            marker: None,
        })
        .collect();
    let created: Vec<String> = env
        .client
        .create_many("Case", records)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.expect("created").id)
        .collect();
    assert_eq!(created.len(), 2_600);

    env.reset_calls().await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut last = (i64::MIN, String::new());
    loop {
        let page = env
            .client
            .changed_since(
                "Case",
                None,
                Some(0),
                &strings(&["Subject"]),
                cursor.as_deref(),
            )
            .await
            .unwrap();
        for record in page.records {
            let key = (record.modified_at, record.id.clone());
            assert!(key > last, "not in (SystemModstamp, Id) order");
            last = key;
            seen.push(record.id);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 2_600);
    assert_eq!(unique.len(), 2_600);
    assert!(created.iter().all(|id| unique.contains(id)));
    assert_eq!(env.total_calls().await, 2, "2,000 and 600 rows: two pages");

    // The operator's filter and the watermark narrow the query.
    let page = env
        .client
        .changed_since("Case", Some("Status = 'Working'"), Some(last.0), &[], None)
        .await
        .unwrap();
    assert!(!page.records.is_empty());
    // The datetime literal is whole seconds: the window starts at the second, never later.
    let second = last.0.div_euclid(1000) * 1000;
    assert!(page.records.iter().all(|r| r.modified_at >= second));
    let page = env
        .client
        .changed_since(
            "Case",
            Some("Status = 'Working' OR Status = 'New'"),
            Some(second + 1000),
            &[],
            None,
        )
        .await
        .unwrap();
    // Nothing was modified in a later second than the last record.
    assert!(page.records.is_empty());
    assert_eq!(page.next, None);
}

#[tokio::test]
async fn a_collection_maps_each_result_to_its_input() {
    let env = start().await;
    env.client.check().await.unwrap();
    env.reset_calls().await;
    let records: Vec<NewRecord> = (0..250)
        .map(|i| NewRecord {
            fields: fields(json!({ "Subject": format!("c{i}"), "Status": if i == 217 { "Bogus" } else { "New" } })),
            marker: None,
        })
        .collect();
    let results = env.client.create_many("Case", records).await.unwrap();
    assert_eq!(results.len(), 250);
    assert_eq!(
        env.calls_to("POST /services/data/{v}/composite/sobjects")
            .await,
        2
    );
    for (i, result) in results.iter().enumerate() {
        if i == 217 {
            let error = result.clone().expect_err("the invalid record fails");
            assert_eq!(error.kind, ErrorKind::Rejected);
            assert_eq!(
                error.code.as_deref(),
                Some("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST")
            );
        } else {
            let created = result.clone().expect("created");
            assert!(created.created);
            let record = env.sim.record(&created.id).expect("stored");
            assert_eq!(record["Subject"], format!("c{i}"));
        }
    }

    // With markers: an upsert on the marker field, idempotent when repeated.
    let marked = |n: usize| -> Vec<NewRecord> {
        (0..n)
            .map(|i| NewRecord {
                fields: fields(json!({ "Subject": format!("m{i}") })),
                marker: Some(Marker {
                    field: "Jira_Key__c".into(),
                    value: format!("BULK-{i}"),
                }),
            })
            .collect()
    };
    env.reset_calls().await;
    let first = env.client.create_many("Case", marked(210)).await.unwrap();
    assert_eq!(
        env.calls_to("PATCH /services/data/{v}/composite/sobjects/{ty}/{field}")
            .await,
        2
    );
    let second = env.client.create_many("Case", marked(210)).await.unwrap();
    for (a, b) in first.iter().zip(&second) {
        let (a, b) = (a.clone().unwrap(), b.clone().unwrap());
        assert!(a.created && !b.created);
        assert_eq!(a.id, b.id);
    }
    let record = env.sim.record(&first[5].clone().unwrap().id).unwrap();
    assert_eq!(record["Jira_Key__c"], "BULK-5");
}

#[tokio::test]
async fn an_upsert_by_marker_twice_updates_the_same_record() {
    let env = start().await;
    let marker = Marker {
        field: "Jira_Key__c".into(),
        value: "PROJ-1".into(),
    };
    let record = |subject: &str| NewRecord {
        fields: fields(json!({ "Subject": subject, "Id": "ignored", "Jira_Key__c": "ignored" })),
        marker: Some(marker.clone()),
    };
    let first = env.client.create("Case", record("one")).await.unwrap();
    assert!(first.created);
    let second = env.client.create("Case", record("two")).await.unwrap();
    assert!(!second.created);
    assert_eq!(first.id, second.id);
    let found = env
        .client
        .find_by_marker("Case", &marker, &strings(&["Subject", "Jira_Key__c"]))
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.id, first.id);
    assert_eq!(found.fields["Subject"], "two");
    assert_eq!(found.fields["Jira_Key__c"], "PROJ-1");
    let missing = Marker {
        field: "Jira_Key__c".into(),
        value: "PROJ-404".into(),
    };
    assert_eq!(
        env.client
            .find_by_marker("Case", &missing, &[])
            .await
            .unwrap(),
        None
    );
    let error = expect_err(
        env.client
            .find_by_marker(
                "Case",
                &Marker {
                    field: "Jira_Key__c) OR (Id".into(),
                    value: "x".into(),
                },
                &[],
            )
            .await,
    );
    assert_eq!(error.kind, ErrorKind::Rejected);
}

#[tokio::test]
async fn hostile_marker_values_find_exactly_their_record() {
    let env = start().await;
    let values = [
        "it's",
        r"back\slash",
        "') OR Id != null --",
        "\") OR 1=1 --",
        "a/b?c#d&e=f",
        "50%_off",
        "x y+z",
        "ünïcødé",
        "...",
    ];
    let mut ids = Vec::new();
    for value in values {
        let created = env
            .client
            .create(
                "Case",
                NewRecord {
                    fields: fields(json!({ "Subject": value })),
                    marker: Some(Marker {
                        field: "Jira_Key__c".into(),
                        value: value.into(),
                    }),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{value}: {e}"));
        assert!(created.created, "{value} matched another record");
        ids.push(created.id);
    }
    for (value, id) in values.iter().zip(&ids) {
        let marker = Marker {
            field: "Jira_Key__c".into(),
            value: value.to_string(),
        };
        let found = env
            .client
            .find_by_marker("Case", &marker, &strings(&["Jira_Key__c"]))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{value} not found"));
        assert_eq!(&found.id, id, "{value}");
        assert_eq!(found.fields["Jira_Key__c"], *value);
    }
    for value in ["' OR Jira_Key__c != null OR Jira_Key__c = '", "..", ""] {
        let marker = Marker {
            field: "Jira_Key__c".into(),
            value: value.into(),
        };
        match env.client.find_by_marker("Case", &marker, &[]).await {
            Ok(found) => assert_eq!(found, None, "{value}"),
            Err(error) => assert_eq!(error.kind, ErrorKind::Rejected, "{value}"),
        }
    }
}

#[tokio::test]
async fn comments_round_trip_with_hostile_text() {
    let env = start().await;
    let case = env.case("with comments").await;
    let other = env.case("other").await;
    let hostile = "it's a \"test\" \\ with\nnewlines') OR Id != null --";
    let added = env.client.add_comment(&case, hostile).await.unwrap();
    assert_eq!(added.parent_id, case);
    assert_eq!(added.body, hostile);
    assert!(added.created_at > 0 && added.modified_at >= added.created_at);
    env.client.add_comment(&case, "second").await.unwrap();
    env.client.add_comment(&other, "elsewhere").await.unwrap();

    let comments = env.client.comments(&case).await.unwrap();
    assert_eq!(comments.len(), 2);
    assert_eq!(comments[0], added);
    assert_eq!(comments[1].body, "second");

    env.client
        .edit_comment(&case, &added.id, "edited 50%_off")
        .await
        .unwrap();
    let comments = env.client.comments(&case).await.unwrap();
    assert_eq!(comments[0].body, "edited 50%_off");
    env.client.delete_comment(&case, &added.id).await.unwrap();
    assert_eq!(env.client.comments(&case).await.unwrap().len(), 1);

    // A hostile parent id is a value, never SOQL: it matches nothing.
    for parent in [
        "') OR Id != null --",
        "x' OR ParentId != null OR ParentId = 'y",
    ] {
        match env.client.comments(parent).await {
            Ok(found) => assert!(found.is_empty(), "{parent} matched {found:?}"),
            Err(error) => assert_eq!(error.kind, ErrorKind::Rejected, "{parent}"),
        }
    }
    // The quoting the client uses is the public one.
    assert_eq!(soql::quote("it's"), r"'it\'s'");
}
