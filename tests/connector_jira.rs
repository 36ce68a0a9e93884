//! The Jira client against the Jira emulator over real HTTP on 127.0.0.1.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::{json, Map, Value};
use tandem::config::JiraSettings;
use tandem::connectors::jira::JiraClient;
use tandem::connectors::{
    CallStats, ConnectorError, ErrorKind, Marker, NewRecord, WebhookRequest, COMMENT_OBJECT,
};
use tandem::journal::ChangeOp;
use tandem::sim::jira::{JiraSim, Options};

const MARKER: &str = "customfield_10050";

/// A webhook delivery as received: headers and raw body.
type Delivery = (HeaderMap, Vec<u8>);

struct Site {
    sim: JiraSim,
    http: reqwest::Client,
}

impl Site {
    async fn start() -> Site {
        Site::with(Options::default()).await
    }

    async fn with(options: Options) -> Site {
        Site {
            sim: JiraSim::start(options).await.unwrap(),
            http: reqwest::Client::new(),
        }
    }

    /// A client with the emulator's account; `token` overrides the API token.
    fn client_with(&self, token: &str, timeout: &str, extra: Value) -> JiraClient {
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), token).unwrap();
        let mut settings = json!({
            "base_url": self.sim.base_url(),
            "auth": {"method": "basic", "email": "sim@example.com", "api_token": {"file": secret.path()}},
            "limits": {"requests_per_second": 10000.0, "burst": 10000, "max_concurrency": 8, "timeout": timeout},
        });
        if let (Some(target), Some(extra)) = (settings.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                target.insert(k.clone(), v.clone());
            }
        }
        let settings: JiraSettings = serde_json::from_value(settings).unwrap();
        JiraClient::new("jira", &settings, CallStats::default()).unwrap()
    }

    fn client(&self) -> JiraClient {
        self.client_with("sim-token", "5s", json!({}))
    }

    async fn faults(&self, faults: Value) {
        let response = self
            .http
            .put(format!("{}/__sim/faults", self.sim.base_url()))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{faults}");
    }

    async fn calls(&self) -> Value {
        self.http
            .get(format!("{}/__sim/calls", self.sim.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn fields(summary: &str) -> Map<String, Value> {
    let value = json!({
        "project": {"key": "SUP"},
        "issuetype": {"name": "Task"},
        "summary": summary,
    });
    value.as_object().unwrap().clone()
}

fn new_record(summary: &str, marker: Option<&str>) -> NewRecord {
    NewRecord {
        fields: fields(summary),
        marker: marker.map(|value| Marker {
            field: MARKER.into(),
            value: value.into(),
        }),
    }
}

fn object(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

fn status_of(fields: &Map<String, Value>) -> &str {
    fields["status"]["name"].as_str().unwrap()
}

fn expect_err<T: std::fmt::Debug>(
    result: Result<T, ConnectorError>,
    kind: ErrorKind,
) -> ConnectorError {
    match result {
        Err(e) if e.kind == kind => e,
        other => panic!("expected {kind:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn credentials_are_checked_and_refusals_classified() {
    let site = Site::with(Options {
        oauth_tokens: vec!["oauth-access".into()],
        ..Options::default()
    })
    .await;
    site.client().check().await.unwrap();

    let wrong = site.client_with("not-the-token", "5s", json!({}));
    let error = expect_err(wrong.check().await, ErrorKind::Auth);
    assert_eq!(error.status, Some(401));
    // Jira's plain-text 401 body, kept verbatim.
    assert_eq!(
        error.message,
        "Client must be authenticated to access this resource."
    );
    expect_err(wrong.read("issue", "10001", &[]).await, ErrorKind::Auth);

    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "oauth-access").unwrap();
    let settings: JiraSettings = serde_json::from_value(json!({
        "base_url": site.sim.base_url(),
        "auth": {"method": "oauth", "access_token": {"file": secret.path()}},
    }))
    .unwrap();
    let oauth = JiraClient::new("jira", &settings, CallStats::default()).unwrap();
    oauth.check().await.unwrap();
}

#[tokio::test]
async fn issues_are_created_read_updated_transitioned_and_deleted() {
    let site = Site::start().await;
    let jira = site.client();
    let hostile = "\") OR 1=1 -- \\ \"quoted\" *?\nline two";
    let mut create = fields(hostile);
    create.insert("description".into(), tandem::adf::from_text("rich text"));
    let created = jira
        .create(
            "issue",
            NewRecord {
                fields: create,
                marker: None,
            },
        )
        .await
        .unwrap();
    assert!(created.created);
    assert!(
        created.id.bytes().all(|b| b.is_ascii_digit()),
        "numeric id, not a key"
    );

    let record = jira.read("issue", &created.id, &[]).await.unwrap().unwrap();
    assert_eq!(record.id, created.id);
    assert_eq!(record.fields["summary"], hostile);
    assert_eq!(record.fields["description"]["type"], "doc", "v3: ADF");
    assert_eq!(status_of(&record.fields), "To Do");
    let now = chrono::Utc::now().timestamp_millis();
    assert!((now - record.modified_at).abs() < 60_000);

    let narrow = jira
        .read("issue", &created.id, &["summary".to_string()])
        .await
        .unwrap()
        .unwrap();
    let mut keys: Vec<&str> = narrow.fields.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["summary", "updated"]);

    // Fields and a status in one update: the edit, then the transition.
    jira.update(
        "issue",
        &created.id,
        object(json!({"summary": "renamed", "status": {"name": "In Progress"}})),
    )
    .await
    .unwrap();
    let record = jira.read("issue", &created.id, &[]).await.unwrap().unwrap();
    assert_eq!(record.fields["summary"], "renamed");
    assert_eq!(status_of(&record.fields), "In Progress");
    // Already there: nothing to do. Then on to Done, by a plain status name.
    jira.update(
        "issue",
        &created.id,
        object(json!({"status": "in progress"})),
    )
    .await
    .unwrap();
    jira.update("issue", &created.id, object(json!({"status": "Done"})))
        .await
        .unwrap();
    let record = jira.read("issue", &created.id, &[]).await.unwrap().unwrap();
    assert_eq!(status_of(&record.fields), "Done");

    // To Do has no transition straight to Done.
    let other = jira
        .create("issue", new_record("fresh", None))
        .await
        .unwrap();
    let error = expect_err(
        jira.update(
            "issue",
            &other.id,
            object(json!({"status": {"name": "Done"}})),
        )
        .await,
        ErrorKind::Rejected,
    );
    assert_eq!(
        error.message,
        format!(
            "no transition from \"To Do\" to \"Done\" on issue {}",
            other.id
        )
    );
    assert!(!error.is_retryable());

    // A status given at creation is reached by a transition afterwards.
    let mut started = fields("started");
    started.insert("status".into(), json!({"name": "In Progress"}));
    let started = jira
        .create(
            "issue",
            NewRecord {
                fields: started,
                marker: None,
            },
        )
        .await
        .unwrap();
    let record = jira.read("issue", &started.id, &[]).await.unwrap().unwrap();
    assert_eq!(status_of(&record.fields), "In Progress");

    // Jira's validation messages are kept.
    let error = expect_err(
        jira.update("issue", &other.id, object(json!({"colour": "red"})))
            .await,
        ErrorKind::Rejected,
    );
    assert_eq!(error.status, Some(400));
    assert!(
        error
            .message
            .contains("colour: Field 'colour' cannot be set"),
        "{}",
        error.message
    );
    let error = expect_err(
        jira.update("issue", "99999", object(json!({"summary": "x"})))
            .await,
        ErrorKind::NotFound,
    );
    assert_eq!(
        error.message,
        "Issue does not exist or you do not have permission to see it."
    );

    jira.delete("issue", &other.id).await.unwrap();
    assert_eq!(jira.read("issue", &other.id, &[]).await.unwrap(), None);
    let error = expect_err(jira.delete("issue", &other.id).await, ErrorKind::NotFound);
    assert_eq!(error.status, Some(404));

    // Other objects and path tricks are refused before any call.
    expect_err(jira.read("Case", "1", &[]).await, ErrorKind::Rejected);
    expect_err(
        jira.read("issue", "../myself", &[]).await,
        ErrorKind::Rejected,
    );
}

#[tokio::test]
async fn bulk_create_maps_each_outcome_to_its_input() {
    let site = Site::start().await;
    let jira = site.client();
    let mut records: Vec<NewRecord> = (0..120)
        .map(|i| new_record(&format!("bulk {i}"), Some(&format!("BULK-{i}"))))
        .collect();
    records[77].fields.remove("summary");
    records[5]
        .fields
        .insert("status".into(), json!({"name": "In Progress"}));
    let results = jira.create_many("issue", records).await.unwrap();
    assert_eq!(results.len(), 120);
    let mut ids = HashSet::new();
    for (i, result) in results.iter().enumerate() {
        if i == 77 {
            let error = result.as_ref().unwrap_err();
            assert_eq!(error.kind, ErrorKind::Rejected);
            assert_eq!(error.status, Some(400));
            assert_eq!(
                error.message,
                "summary: You must specify a summary of the issue."
            );
            continue;
        }
        let created = result.as_ref().unwrap();
        assert!(created.created);
        assert!(ids.insert(created.id.clone()));
        let record = jira.read("issue", &created.id, &[]).await.unwrap().unwrap();
        assert_eq!(record.fields["summary"], format!("bulk {i}"), "index {i}");
        assert_eq!(record.fields[MARKER], format!("BULK-{i}"));
        let want = if i == 5 { "In Progress" } else { "To Do" };
        assert_eq!(status_of(&record.fields), want);
    }
    let calls = site.calls().await;
    let bulk = calls["by_endpoint"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.contains("/issue/bulk"))
        .map(|(_, v)| v.as_u64().unwrap());
    assert_eq!(bulk, Some(3), "chunks of at most 50: {calls}");

    // Again with the same markers: nothing new, the existing issues are updated.
    let again: Vec<NewRecord> = (0..3)
        .map(|i| new_record(&format!("bulk again {i}"), Some(&format!("BULK-{i}"))))
        .collect();
    let results = jira.create_many("issue", again).await.unwrap();
    for result in results {
        let created = result.unwrap();
        assert!(!created.created);
        assert!(ids.contains(&created.id));
    }
}

#[tokio::test]
async fn changed_since_pages_to_the_end_without_gaps_or_duplicates() {
    let site = Site::start().await;
    let jira = site.client();
    let records: Vec<NewRecord> = (0..1030)
        .map(|i| new_record(&format!("seed {i}"), None))
        .collect();
    let created: HashSet<String> = jira
        .create_many("issue", records)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect();
    assert_eq!(created.len(), 1030);

    let since = chrono::Utc::now().timestamp_millis() - 5 * 60_000;
    for (filter, since) in [
        (Some("project = SUP"), Some(since)),
        (None, Some(since)),
        (Some("project = SUP"), None),
        (None, None),
    ] {
        let mut seen = HashSet::new();
        let mut last = i64::MIN;
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = jira
                .changed_since(
                    "issue",
                    filter,
                    since,
                    &["summary".into()],
                    cursor.as_deref(),
                )
                .await
                .unwrap();
            pages += 1;
            for record in &page.records {
                assert!(seen.insert(record.id.clone()), "duplicate {}", record.id);
                assert!(record.modified_at >= last, "oldest first");
                last = record.modified_at;
                assert!(record.fields.contains_key("summary"));
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, created, "{filter:?} {since:?}");
        assert_eq!(pages, 11);
    }

    // A window that starts in the future is an empty listing, not an error.
    let future = chrono::Utc::now().timestamp_millis() + 3_600_000;
    jira.changed_since("issue", Some("project = SUP"), Some(future), &[], None)
        .await
        .unwrap();
    // A broken operator filter is Jira's 400, kept.
    let error = expect_err(
        jira.changed_since("issue", Some("project = NOPE"), None, &[], None)
            .await,
        ErrorKind::Rejected,
    );
    assert!(error
        .message
        .contains("The value 'NOPE' does not exist for the field 'project'."));
    expect_err(
        jira.changed_since("issue", None, None, &[], Some("not-ours"))
            .await,
        ErrorKind::Rejected,
    );
}

#[tokio::test]
async fn markers_are_found_exactly_whatever_they_contain() {
    let site = Site::start().await;
    let jira = site.client();
    let values = [
        "\") OR 1=1 --",
        "OR 1 1",
        "a \"quoted\" value",
        "a quoted value",
        "back\\slash\\",
        "back slash",
        "500A",
        "500a",
        "wild*card?",
        "wildcard",
    ];
    let mut ids = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let created = jira
            .create("issue", new_record(&format!("marker {i}"), Some(value)))
            .await
            .unwrap();
        assert!(created.created);
        ids.push(created.id);
    }
    for (value, id) in values.iter().zip(&ids) {
        let marker = Marker {
            field: MARKER.into(),
            value: value.to_string(),
        };
        let found = jira
            .find_by_marker("issue", &marker, &["summary".into()])
            .await
            .unwrap_or_else(|e| panic!("{value:?}: {e}"))
            .unwrap_or_else(|| panic!("{value:?} not found"));
        assert_eq!(&found.id, id, "{value:?}");
        assert_eq!(found.fields[MARKER], *value);
        assert!(found.fields.contains_key("summary"));
    }
    let missing = Marker {
        field: MARKER.into(),
        value: "\" OR project = SUP OR summary ~ \"".into(),
    };
    assert_eq!(
        jira.find_by_marker("issue", &missing, &[]).await.unwrap(),
        None
    );
    let not_custom = Marker {
        field: "summary".into(),
        value: "x".into(),
    };
    expect_err(
        jira.find_by_marker("issue", &not_custom, &[]).await,
        ErrorKind::Rejected,
    );
}

#[tokio::test]
async fn comments_are_listed_added_edited_and_deleted_as_plain_text() {
    let site = Site::start().await;
    let jira = site.client();
    let issue = jira
        .create("issue", new_record("talk", None))
        .await
        .unwrap();
    let first = jira
        .add_comment(&issue.id, "hello\nworld\n\nsecond paragraph")
        .await
        .unwrap();
    assert_eq!(first.parent_id, issue.id);
    assert_eq!(first.body, "hello\nworld\n\nsecond paragraph");
    assert!(first.created_at > 0 && first.modified_at >= first.created_at);
    for i in 0..104 {
        jira.add_comment(&issue.id, &format!("comment {i}"))
            .await
            .unwrap();
    }
    let all = jira.comments(&issue.id).await.unwrap();
    assert_eq!(all.len(), 105, "paged to the end");
    assert_eq!(all[0], first);
    assert_eq!(all[104].body, "comment 103");

    jira.edit_comment(&issue.id, &first.id, "edited")
        .await
        .unwrap();
    let all = jira.comments(&issue.id).await.unwrap();
    assert_eq!(all[0].body, "edited");
    assert!(all[0].modified_at >= all[0].created_at);
    jira.delete_comment(&issue.id, &first.id).await.unwrap();
    assert_eq!(jira.comments(&issue.id).await.unwrap().len(), 104);
    let error = expect_err(
        jira.delete_comment(&issue.id, &first.id).await,
        ErrorKind::NotFound,
    );
    assert!(
        error.message.contains("Can not find a comment"),
        "{}",
        error.message
    );
    expect_err(jira.comments("99999").await, ErrorKind::NotFound);
}

#[tokio::test]
async fn rate_limits_outages_and_hangs_are_classified() {
    let site = Site::start().await;
    let jira = site.client_with("sim-token", "1s", json!({}));
    let issue = jira
        .create("issue", new_record("faults", None))
        .await
        .unwrap();

    // A 429 storm: rate limited, the connector paused for Retry-After.
    site.faults(json!({"rate_limit_rate": 1.0, "retry_after_secs": 1}))
        .await;
    let error = expect_err(
        jira.read("issue", &issue.id, &[]).await,
        ErrorKind::RateLimited,
    );
    assert_eq!(error.status, Some(429));
    assert_eq!(error.retry_after, Some(Duration::from_secs(1)));
    assert!(error.is_retryable());
    assert!(jira.http().limiter().snapshot().paused_for.is_some());
    site.faults(json!({})).await;
    // The next call waits out the pause, then goes through.
    let started = Instant::now();
    assert!(jira.read("issue", &issue.id, &[]).await.unwrap().is_some());
    assert!(started.elapsed() >= Duration::from_millis(500));

    site.faults(json!({"error_rate": 1.0})).await;
    let error = expect_err(jira.read("issue", &issue.id, &[]).await, ErrorKind::Server);
    assert!(matches!(error.status, Some(500 | 503)));
    assert_eq!(error.message, "Internal server error");

    site.faults(json!({"hang_rate": 1.0})).await;
    let started = Instant::now();
    let error = expect_err(jira.check().await, ErrorKind::Transport);
    assert!(error.message.contains("timed out"), "{}", error.message);
    assert!(started.elapsed() < Duration::from_secs(5));
    site.faults(json!({})).await;
    jira.check().await.unwrap();
}

#[tokio::test]
async fn the_servers_quota_headers_are_observed_and_a_spent_quota_pauses() {
    let site = Site::with(Options {
        rate_limit: 3,
        // Long enough that the reset is never within the client's 1 s wait.
        rate_window: Duration::from_secs(3600),
        ..Options::default()
    })
    .await;
    let jira = site.client();
    jira.check().await.unwrap();
    let snapshot = jira.http().limiter().snapshot();
    assert_eq!(
        (snapshot.window_remaining, snapshot.window_limit),
        (Some(2), Some(3))
    );
    // A window quota is not a daily allowance: it never feeds the daily budget.
    assert_eq!((snapshot.server_used, snapshot.server_max), (None, None));
    jira.check().await.unwrap();
    jira.check().await.unwrap();
    // Remaining 0 with a reset time: paused until then, so the next call fails fast.
    let snapshot = jira.http().limiter().snapshot();
    assert_eq!(snapshot.window_remaining, Some(0));
    assert!(snapshot.paused_for.is_some());
    let started = Instant::now();
    expect_err(jira.check().await, ErrorKind::RateLimited);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn the_emulators_webhooks_parse_into_changes() {
    let received: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push((headers, body.to_vec()));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let site = Site::start().await;
    site.sim.add_webhook(&hook_url, Some("hook-secret"), None);
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "hook-secret").unwrap();
    let jira = site.client_with(
        "sim-token",
        "5s",
        json!({"webhook_secret": {"file": secret.path()}}),
    );
    let issue = jira
        .create("issue", new_record("hooked", Some("500X")))
        .await
        .unwrap();
    let comment = jira.add_comment(&issue.id, "from a hook").await.unwrap();
    jira.delete("issue", &issue.id).await.unwrap();

    // Created, comment_created + issue_updated (commented), deleted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.lock().unwrap().len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deliveries = received.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 4);
    let mut changes = Vec::new();
    for (headers, body) in &deliveries {
        let hook = jira
            .parse_webhook(&WebhookRequest {
                headers,
                body,
                path_token: None,
            })
            .unwrap();
        changes.extend(hook.changes);
        // Tampered bodies are refused.
        let mut tampered = body.clone();
        tampered.push(b' ');
        assert!(jira
            .parse_webhook(&WebhookRequest {
                headers,
                body: &tampered,
                path_token: None,
            })
            .is_err());
    }
    let created = changes
        .iter()
        .find(|c| c.object == "issue" && c.op == ChangeOp::Upsert)
        .unwrap();
    assert_eq!(created.record_id, issue.id);
    assert_eq!(created.snapshot[MARKER], "500X");
    assert!(created
        .dedupe_key
        .starts_with(&format!("jira/issue/{}@", issue.id)));
    let on_comment = changes.iter().find(|c| c.object == COMMENT_OBJECT).unwrap();
    assert_eq!(on_comment.record_id, comment.id);
    assert_eq!(on_comment.snapshot["body"], "from a hook");
    assert_eq!(on_comment.snapshot["parent_id"], issue.id.as_str());
    assert!(changes
        .iter()
        .any(|c| c.op == ChangeOp::Delete && c.record_id == issue.id));
}
