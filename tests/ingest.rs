//! Ingest end to end: the daemon's webhook receivers and pollers against both emulators over
//! real HTTP on loopback, into a real SQLite journal.

mod common;

use common::sims::{Sims, JIRA_SECRET, SF_TOKEN};

use std::time::{Duration, Instant};

use common::TestApp;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tandem::connectors::{CallStats, Connectors, ErrorKind};
use tandem::ingest::{self, Poller};
use tandem::journal::Journal;
use tandem::sim::salesforce::notify::{ChangeEventEndpoint, OutboundMessage};
use tandem::sim::salesforce::ORG_ID;
use tempfile::TempDir;

/// A flow between the two emulators, polled often.
const FLOW: &str = r#"
[ingest]
safety_poll_interval = "200ms"

[flows.support]
left = { connector = "jira", object = "issue", filter = "project = SUP", marker = "customfield_10050" }
right = { connector = "salesforce", object = "Case", marker = "Jira_Key__c" }

[[flows.support.fields]]
left = "summary"
right = "Subject"
"#;

/// (connector, object, record id, origin) of every change, in id order.
async fn changes(journal: &Journal) -> Vec<(String, String, String, String)> {
    sqlx::query_as("SELECT connector, object, record_id, origin FROM changes ORDER BY id")
        .fetch_all(journal.pool())
        .await
        .unwrap()
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An Outbound Message with one Case notification, as Salesforce sends it.
fn envelope(org: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{org}</OrganizationId><ActionId>04k000000000001AAA</ActionId><SessionId xsi:nil="true"/><EnterpriseUrl>x</EnterpriseUrl><PartnerUrl>x</PartnerUrl><Notification><Id>04l000000000009AAA</Id><sObject xsi:type="sf:Case" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>500000000000999AAA</sf:Id><sf:Subject>forged</sf:Subject></sObject></Notification></notifications></soapenv:Body></soapenv:Envelope>"#
    )
}

/// POST a SOAP body to a webhook path of the daemon.
async fn post_soap(app: &TestApp, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("Content-Type", "text/xml")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(JIRA_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn jira_webhooks_are_verified_stored_once_and_refused_cleanly() {
    let sims = Sims::start().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings(&dir, &sims.config(&dir, ""));
    let app = common::spawn_with(settings, dir).await;
    sims.jira
        .add_webhook(&app.url("/webhooks/jira"), Some(JIRA_SECRET), None);

    // A real delivery from the emulator, signed with the shared secret.
    let id = sims.create_issue("from a webhook").await;
    assert!(sims.jira.outbox().settle(Duration::from_secs(10)).await);
    let stored = changes(&app.journal).await;
    assert_eq!(
        stored,
        vec![("jira".into(), "issue".into(), id.clone(), "webhook".into())]
    );

    // The same event delivered again is acknowledged and stored once.
    let body = json!({
        "timestamp": 1_700_000_000_000_i64,
        "webhookEvent": "jira:issue_updated",
        "issue": {"id": "424242", "key": "SUP-999", "fields": {
            "summary": "twice", "updated": "2024-12-29T08:41:23.303+0530"}},
    })
    .to_string();
    for _ in 0..2 {
        let response = app
            .client
            .post(app.url("/webhooks/jira"))
            .header("X-Hub-Signature", sign(body.as_bytes()))
            .header("X-Atlassian-Webhook-Identifier", "evt-1")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
    assert_eq!(changes(&app.journal).await.len(), 2);

    // Refused, and nothing written: a wrong signature, none at all, a signed body that is not
    // a Jira event.
    let other = body.replace("twice", "forged");
    let refused = [
        (Some("sha256=00".to_string()), other.clone(), 401),
        (None, other.clone(), 401),
        (Some(sign(b"not json")), "not json".to_string(), 400),
    ];
    for (signature, body, status) in refused {
        let mut request = app.client.post(app.url("/webhooks/jira")).body(body);
        if let Some(signature) = signature {
            request = request.header("X-Hub-Signature", signature);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        let error: Value = response.json().await.unwrap();
        assert!(error["error"]["message"].as_str().unwrap().len() > 3);
    }
    assert_eq!(changes(&app.journal).await.len(), 2);
    // Past the body limit: refused before any parsing, and counted.
    let response = app
        .client
        .post(app.url("/webhooks/jira"))
        .body(vec![b'x'; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(changes(&app.journal).await.len(), 2);

    let text = metrics(&app).await;
    for line in [
        r#"tandem_webhook_requests_total{connector="jira",result="accepted"} 2"#,
        r#"tandem_webhook_requests_total{connector="jira",result="duplicate"} 1"#,
        r#"tandem_webhook_requests_total{connector="jira",result="unauthorized"} 2"#,
        r#"tandem_webhook_requests_total{connector="jira",result="bad_request"} 1"#,
        r#"tandem_webhook_requests_total{connector="jira",result="too_large"} 1"#,
        r#"tandem_changes_ingested_total{connector="jira",origin="webhook"} 2"#,
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    app.stop().await;
    sims.stop().await;
}

#[tokio::test]
async fn salesforce_notifications_are_acknowledged_only_when_authentic() {
    let sims = Sims::start().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings(&dir, &sims.config(&dir, ""));
    let app = common::spawn_with(settings, dir).await;
    sims.sf
        .add_outbound_message(OutboundMessage {
            url: app.url(&format!("/webhooks/salesforce/{SF_TOKEN}")),
            object: "Case".into(),
            fields: vec!["Subject".into(), "Status".into(), "SystemModstamp".into()],
        })
        .unwrap();
    sims.sf
        .add_change_event_endpoint(ChangeEventEndpoint {
            url: app.url(&format!("/webhooks/salesforce/{SF_TOKEN}")),
            objects: vec!["Case".into()],
        })
        .unwrap();

    let id = sims
        .sf
        .insert("Case", json!({"Subject": "from an outbound message"}))
        .unwrap();
    assert!(sims.sf.settle(Duration::from_secs(10)).await);
    // The emulator counts a delivery only on an Ack: ours arrived.
    let soap = sims.sf.outbox().records();
    assert_eq!(soap.len(), 1);
    assert_eq!(
        soap[0].status,
        tandem::sim::outbox::DeliveryStatus::Delivered
    );
    let events = sims.sf.event_outbox().records();
    assert_eq!(
        events[0].status,
        tandem::sim::outbox::DeliveryStatus::Delivered
    );
    let stored = changes(&app.journal).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored.iter().all(|(c, o, r, origin)| c == "salesforce"
        && o == "Case"
        && *r == id
        && origin == "webhook"));

    // A wrong path token, no token, or another org: 401, nothing stored.
    for (path, body) in [
        ("/webhooks/salesforce/wrong".to_string(), envelope(ORG_ID)),
        ("/webhooks/salesforce".to_string(), envelope(ORG_ID)),
        (
            format!("/webhooks/salesforce/{SF_TOKEN}"),
            envelope("00D000000000001AAA"),
        ),
    ] {
        let response = post_soap(&app, &path, body).await;
        assert_eq!(response.status(), 401, "{path}");
    }
    // A malformed envelope with the right token is a 400 with the reason.
    let response = post_soap(
        &app,
        &format!("/webhooks/salesforce/{SF_TOKEN}"),
        "<soapenv:Envelope",
    )
    .await;
    assert_eq!(response.status(), 400);
    assert_eq!(changes(&app.journal).await.len(), 2);
    app.stop().await;
    sims.stop().await;
}

#[tokio::test]
async fn the_daemon_polls_both_sides_of_a_flow_into_the_journal() {
    let sims = Sims::start().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings(&dir, &sims.config(&dir, FLOW));
    let app = common::spawn_with(settings, dir).await;
    let issue = sims.create_issue("polled").await;
    let case = sims
        .sf
        .insert("Case", json!({"Subject": "polled too"}))
        .unwrap();
    until("both records polled", || async {
        let stored = changes(&app.journal).await;
        stored.contains(&("jira".into(), "issue".into(), issue.clone(), "poll".into()))
            && stored.contains(&(
                "salesforce".into(),
                "Case".into(),
                case.clone(),
                "poll".into(),
            ))
    })
    .await;
    // Later polls re-read the overlap window but store nothing twice. (The flow also syncs:
    // the counterparts it creates are polled too, so only these two records are counted.)
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ours = changes(&app.journal)
        .await
        .into_iter()
        .filter(|c| c.2 == issue || c.2 == case)
        .count();
    assert_eq!(ours, 2);
    let marks: Vec<(String, String, String)> =
        sqlx::query_as("SELECT connector, object, scope FROM watermarks ORDER BY connector")
            .fetch_all(app.journal.pool())
            .await
            .unwrap();
    assert_eq!(
        marks,
        vec![
            ("jira".into(), "issue".into(), "support".into()),
            ("salesforce".into(), "Case".into(), "support".into()),
        ]
    );
    let text = metrics(&app).await;
    for needle in [
        r#"tandem_poll_runs_total{flow="support",connector="jira",result="ok"}"#,
        r#"tandem_changes_ingested_total{connector="salesforce",origin="poll"}"#,
        r#"tandem_connector_calls_total{connector="salesforce",status="200"}"#,
        r#"tandem_connector_quota_used{connector="salesforce"}"#,
        r#"tandem_connector_quota_remaining{connector="salesforce"}"#,
        r#"tandem_connector_vendor_quota_max{connector="salesforce"} 100000"#,
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    app.stop().await;
    sims.stop().await;
}

/// A poller and the journal on their own, for tests that drive polls one by one.
async fn poller(sims: &Sims, dir: &TempDir, left: bool) -> (Poller, Journal, Connectors) {
    let settings = common::settings(dir, &sims.config(dir, FLOW));
    let journal = Journal::open(&settings.storage, &settings.journal)
        .await
        .unwrap();
    journal.migrate().await.unwrap();
    let connectors = Connectors::build(&settings, &CallStats::default()).unwrap();
    let mut pollers = ingest::pollers(&settings, &connectors, &journal);
    let index = if left { 0 } else { 1 };
    let poller = pollers.remove(index);
    (poller, journal, connectors)
}

#[tokio::test]
async fn a_poll_cut_off_half_way_resumes_without_loss_or_duplicates() {
    let sims = Sims::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (poller, journal, _connectors) = poller(&sims, &dir, true).await;
    let mut ids = Vec::new();
    for n in 0..450 {
        ids.push(sims.create_issue(&format!("issue {n}")).await);
    }
    // Each page now takes 300 ms: the poll is cut after a page or two of five.
    sims.jira
        .control()
        .set_faults(tandem::sim::control::Faults {
            latency_ms: 300,
            ..Default::default()
        })
        .unwrap();
    let cut = tokio::time::timeout(Duration::from_millis(1000), poller.poll_once()).await;
    assert!(cut.is_err(), "the poll should have been cut off");
    let partial = changes(&journal).await.len();
    assert!(partial < 450, "{partial}");
    sims.jira.control().set_faults(Default::default()).unwrap();

    let outcome = poller.poll_once().await.unwrap();
    assert_eq!(outcome.seen, 450);
    let stored = changes(&journal).await;
    let mut polled: Vec<String> = stored.iter().map(|c| c.2.clone()).collect();
    polled.sort();
    polled.dedup();
    assert_eq!(stored.len(), 450, "each record once");
    ids.sort();
    assert_eq!(polled, ids, "every record");
    journal.close().await;
    sims.stop().await;
}

#[tokio::test]
async fn a_record_changed_in_the_watermarks_second_is_read_once_and_not_again() {
    let sims = Sims::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (poller, journal, _connectors) = poller(&sims, &dir, false).await;
    let first = sims.sf.insert("Case", json!({"Subject": "a"})).unwrap();
    let second = sims.sf.insert("Case", json!({"Subject": "b"})).unwrap();
    assert_eq!(poller.poll_once().await.unwrap().new, 2);
    // Changed right after the poll, within the same second as its watermark.
    sims.sf
        .update("Case", &first, json!({"Subject": "a, edited"}))
        .unwrap();
    assert_eq!(poller.poll_once().await.unwrap().new, 1);
    // Nothing changed: the overlap is read again, nothing is stored again.
    let again = poller.poll_once().await.unwrap();
    assert_eq!(again.new, 0);
    assert!(again.seen >= 2);
    let stored = changes(&journal).await;
    let records: Vec<&str> = stored.iter().map(|c| c.2.as_str()).collect();
    assert_eq!(
        records,
        vec![first.as_str(), second.as_str(), first.as_str()]
    );
    journal.close().await;
    sims.stop().await;
}

#[tokio::test]
async fn a_429_storm_pauses_the_connector_and_the_next_poll_loses_nothing() {
    let sims = Sims::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (poller, journal, connectors) = poller(&sims, &dir, true).await;
    let first = sims.create_issue("before the storm").await;
    sims.jira
        .control()
        .set_faults(tandem::sim::control::Faults {
            rate_limit_rate: 1.0,
            retry_after_secs: 1,
            ..Default::default()
        })
        .unwrap();
    let error = poller.poll_once().await.unwrap_err();
    let ingest::PollError::Vendor(error) = error else {
        panic!("{error}")
    };
    assert_eq!(error.kind, ErrorKind::RateLimited);
    let limiter = connectors.get("jira").unwrap().limiter().clone();
    assert!(limiter.snapshot().paused_for.is_some(), "paused");
    assert!(changes(&journal).await.is_empty());
    assert!(journal
        .watermark("jira", "issue", "support")
        .await
        .unwrap()
        .is_none());

    sims.jira.control().set_faults(Default::default()).unwrap();
    let second = sims.create_issue("after the storm").await;
    // The next poll waits the pause out, then reads everything since the old watermark.
    let outcome = poller.poll_once().await.unwrap();
    assert_eq!(outcome.new, 2);
    let stored: Vec<String> = changes(&journal).await.into_iter().map(|c| c.2).collect();
    assert_eq!(stored, vec![first, second]);
    assert!(
        limiter
            .stats()
            .pauses
            .get_or_create(&tandem::connectors::limit::ConnectorLabel {
                connector: "jira".into()
            })
            .get()
            >= 1
    );
    journal.close().await;
    sims.stop().await;
}

#[tokio::test]
async fn api_calls_counted_today_survive_a_restart() {
    let sims = Sims::start().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings(&dir, &sims.config(&dir, FLOW));
    let app = common::spawn_with(settings.clone(), dir).await;
    until("a few Salesforce calls", || async {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT calls FROM api_usage WHERE connector = 'salesforce'")
                .fetch_optional(app.journal.pool())
                .await
                .unwrap();
        row.is_some_and(|(calls,)| calls >= 3)
    })
    .await;
    let dir = app.dir;
    app.shutdown.cancel();
    app.server.await.unwrap().unwrap();
    let journal = common::open_journal(&dir, &sims.config(&dir, FLOW)).await;
    let (before,): (i64,) =
        sqlx::query_as("SELECT calls FROM api_usage WHERE connector = 'salesforce'")
            .fetch_one(journal.pool())
            .await
            .unwrap();
    journal.close().await;

    let app = common::spawn_with(settings, dir).await;
    let text = metrics(&app).await;
    let used: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"tandem_connector_quota_used{connector="salesforce"} "#))
        .unwrap()
        .parse()
        .unwrap();
    assert!(used >= before, "{used} < {before}");
    app.stop().await;
    sims.stop().await;
}

#[tokio::test]
async fn a_redelivered_outbound_message_is_acknowledged_again_and_stored_once() {
    let sims = Sims::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = common::spawn_with(common::settings(&dir, &sims.config(&dir, "")), dir).await;
    for _ in 0..2 {
        let response = post_soap(
            &app,
            &format!("/webhooks/salesforce/{SF_TOKEN}"),
            envelope(ORG_ID),
        )
        .await;
        assert_eq!(response.status(), 200);
        // Without the Ack, Salesforce would keep resending for a day.
        assert!(response.text().await.unwrap().contains("<Ack>true</Ack>"));
    }
    assert_eq!(changes(&app.journal).await.len(), 1);
    let text = metrics(&app).await;
    for line in [
        r#"tandem_webhook_requests_total{connector="salesforce",result="accepted"} 1"#,
        r#"tandem_webhook_requests_total{connector="salesforce",result="duplicate"} 1"#,
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    app.stop().await;
    sims.stop().await;
}

#[tokio::test]
async fn a_webhook_the_journal_cannot_store_is_refused_so_the_vendor_retries() {
    let sims = Sims::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = common::spawn_with(common::settings(&dir, &sims.config(&dir, "")), dir).await;
    // The journal stops taking writes (the disk is gone, say); the server still answers.
    app.journal.close().await;
    let response = post_soap(
        &app,
        &format!("/webhooks/salesforce/{SF_TOKEN}"),
        envelope(ORG_ID),
    )
    .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "journal_unavailable");
    assert!(!body.to_string().contains("Ack"));
    // No Ack: Salesforce keeps the notification and delivers it again later.
    app.shutdown.cancel();
    let _ = app.server.await;
    sims.stop().await;
}
