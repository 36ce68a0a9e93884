//! The Salesforce emulator through plain HTTP, written from the documented wire shapes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode as AxumStatus;
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;
use tandem::sim::outbox::DeliveryStatus;
use tandem::sim::salesforce::notify::{ChangeEventEndpoint, OutboundMessage};
use tandem::sim::salesforce::{Options, SalesforceSim, ORG_ID};

const V: &str = "v60.0";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

async fn start(options: Options) -> SalesforceSim {
    SalesforceSim::start(options)
        .await
        .expect("emulator starts")
}

async fn start_default() -> SalesforceSim {
    start(Options::default()).await
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

fn data(sim: &SalesforceSim, path: &str) -> String {
    format!("{}/services/data/{V}/{path}", sim.base_url())
}

async fn token(sim: &SalesforceSim) -> String {
    let answer: Value = http()
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client"),
            ("client_secret", "sim-secret"),
        ])
        .send()
        .await
        .expect("token call")
        .json()
        .await
        .expect("token json");
    answer["access_token"]
        .as_str()
        .expect("an access token")
        .to_string()
}

async fn create(sim: &SalesforceSim, token: &str, object: &str, body: Value) -> String {
    let response = http()
        .post(data(sim, &format!("sobjects/{object}/")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("create call");
    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: Value = response.json().await.expect("create json");
    answer["id"].as_str().expect("an id").to_string()
}

async fn get(sim: &SalesforceSim, token: &str, path: &str) -> (StatusCode, Value) {
    let response = http()
        .get(data(sim, path))
        .bearer_auth(token)
        .send()
        .await
        .expect("get call");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn send_json(
    sim: &SalesforceSim,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let response = http()
        .request(method, data(sim, path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("call");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The first error of a Salesforce error array: (errorCode, fields).
fn error_of(body: &Value) -> (String, Value) {
    let first = &body.as_array().expect("an error array")[0];
    assert!(first["message"].is_string(), "{body}");
    (
        first["errorCode"].as_str().expect("errorCode").to_string(),
        first["fields"].clone(),
    )
}

async fn query(sim: &SalesforceSim, token: &str, soql: &str) -> (StatusCode, Value) {
    let response = http()
        .get(data(sim, "query"))
        .query(&[("q", soql)])
        .bearer_auth(token)
        .send()
        .await
        .expect("query call");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn is_sf_datetime(value: &Value) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.3f%z").is_ok()
        && text.ends_with("+0000")
        && text.len() == 28
}

fn jwt(key_file: &str, iss: &str, sub: &str, aud: &str, exp_offset: i64) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{key_file}")).expect("fixture key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("an RSA private key");
    let claims = json!({
        "iss": iss,
        "sub": sub,
        "aud": aud,
        "exp": chrono::Utc::now().timestamp() + exp_offset,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .expect("JWT signs")
}

async fn jwt_grant(sim: &SalesforceSim, assertion: &str) -> (StatusCode, Value) {
    let response = http()
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion),
        ])
        .send()
        .await
        .expect("token call");
    let status = response.status();
    (status, response.json().await.expect("token json"))
}

fn jwt_options() -> Options {
    Options {
        jwt_public_key: Some(format!("{FIXTURES}/sf_jwt_test_key.pub.pem").into()),
        ..Options::default()
    }
}

#[tokio::test]
async fn the_version_list_is_public_and_names_each_version() {
    let sim = start_default().await;
    let response = http()
        .get(format!("{}/services/data/", sim.base_url()))
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let versions: Value = response.json().await.expect("json");
    let v60 = versions
        .as_array()
        .expect("an array")
        .iter()
        .find(|v| v["version"] == "60.0")
        .expect("60.0 is served");
    assert_eq!(v60["url"], "/services/data/v60.0");
    assert!(v60["label"].is_string());
    sim.stop().await;
}

#[tokio::test]
async fn the_client_credentials_grant_answers_a_signed_bearer_token_for_the_instance() {
    let sim = start_default().await;
    let response = http()
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client"),
            ("client_secret", "sim-secret"),
        ])
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["instance_url"], sim.base_url());
    assert!(answer["scope"].is_string());
    assert!(answer.get("refresh_token").is_none());
    let issued_at = answer["issued_at"].as_str().expect("issued_at is a string");
    let ms: i64 = issued_at.parse().expect("epoch milliseconds");
    assert!((chrono::Utc::now().timestamp_millis() - ms).abs() < 60_000);
    // The documented signature: HMAC-SHA256 over id + issued_at with the consumer secret.
    let id = answer["id"].as_str().expect("id");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"sim-secret").expect("hmac key");
    mac.update(id.as_bytes());
    mac.update(issued_at.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(answer["signature"], expected);

    let token = answer["access_token"].as_str().expect("token");
    let (status, _) = get(&sim, token, "limits").await;
    assert_eq!(status, StatusCode::OK);
    sim.stop().await;
}

#[tokio::test]
async fn client_credentials_may_come_as_http_basic_auth() {
    let sim = start_default().await;
    let response = http()
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .basic_auth("sim-client", Some("sim-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    sim.stop().await;
}

#[tokio::test]
async fn a_wrong_client_secret_or_unknown_client_id_is_refused_with_a_400() {
    let sim = start_default().await;
    for (id, secret, error) in [
        ("sim-client", "wrong", "invalid_client"),
        ("someone-else", "sim-secret", "invalid_client_id"),
    ] {
        let response = http()
            .post(format!("{}/services/oauth2/token", sim.base_url()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
            ])
            .send()
            .await
            .expect("call");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], error);
        assert!(body["error_description"].is_string());
    }
    sim.stop().await;
}

#[tokio::test]
async fn a_jwt_signed_with_the_configured_key_gets_a_token() {
    let sim = start(jwt_options()).await;
    let assertion = jwt(
        "sf_jwt_test_key.pem",
        "sim-client",
        sim.username(),
        "https://login.salesforce.com",
        180,
    );
    let (status, answer) = jwt_grant(&sim, &assertion).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let token = answer["access_token"].as_str().expect("token");
    let (status, _) = get(&sim, token, "limits").await;
    assert_eq!(status, StatusCode::OK);
    sim.stop().await;
}

#[tokio::test]
async fn a_jwt_with_a_bad_signature_audience_issuer_or_expiry_is_refused() {
    let sim = start(jwt_options()).await;
    let user = sim.username().to_string();
    let login = "https://login.salesforce.com";
    let cases = [
        (
            jwt("sf_jwt_other_key.pem", "sim-client", &user, login, 180),
            "invalid_grant",
        ),
        (
            jwt(
                "sf_jwt_test_key.pem",
                "sim-client",
                &user,
                "https://example.com",
                180,
            ),
            "invalid_grant",
        ),
        (
            jwt("sf_jwt_test_key.pem", "not-the-app", &user, login, 180),
            "invalid_client_id",
        ),
        (
            jwt("sf_jwt_test_key.pem", "sim-client", &user, login, -600),
            "invalid_grant",
        ),
        (
            jwt(
                "sf_jwt_test_key.pem",
                "sim-client",
                "nobody@example.com",
                login,
                180,
            ),
            "invalid_grant",
        ),
        ("not.a.jwt".to_string(), "invalid_grant"),
    ];
    for (assertion, error) in cases {
        let (status, answer) = jwt_grant(&sim, &assertion).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"], error, "{answer}");
    }
    sim.stop().await;
}

#[tokio::test]
async fn an_expired_or_unknown_token_gets_401_invalid_session_id() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let (status, _) = get(&sim, &token, "limits").await;
    assert_eq!(status, StatusCode::OK);

    sim.expire_tokens();
    let (status, body) = get(&sim, &token, "limits").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body[0]["message"], "Session expired or invalid");
    assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");

    let (status, _) = get(&sim, "00Dxx!garbage", "limits").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = http().get(data(&sim, "limits")).send().await.expect("call");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Expiry through the control route too.
    let token = self::token(&sim).await;
    let response = http()
        .post(format!("{}/__sim/tokens/expire", sim.base_url()))
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, _) = get(&sim, &token, "limits").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    sim.stop().await;
}

#[tokio::test]
async fn a_token_past_its_ttl_is_refused() {
    let sim = start(Options {
        token_ttl: Duration::ZERO.into(),
        ..Options::default()
    })
    .await;
    let token = token(&sim).await;
    let (status, body) = get(&sim, &token, "limits").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(&body).0, "INVALID_SESSION_ID");
    sim.stop().await;
}

#[tokio::test]
async fn a_case_is_created_read_updated_and_deleted_with_salesforce_fields() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let response = http()
        .post(data(&sim, "sobjects/Case/"))
        .bearer_auth(&token)
        .json(&json!({"Subject": "Printer on fire", "Origin": "Web", "Jira_Key__c": "SUP-1"}))
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::CREATED);
    let limit_info = response
        .headers()
        .get("Sforce-Limit-Info")
        .and_then(|v| v.to_str().ok())
        .expect("Sforce-Limit-Info")
        .to_string();
    assert!(limit_info.starts_with("api-usage="), "{limit_info}");
    let created: Value = response.json().await.expect("json");
    assert_eq!(created["success"], true);
    assert_eq!(created["errors"], json!([]));
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 18);
    assert!(id.starts_with("500"));

    let (status, case) = get(&sim, &token, &format!("sobjects/Case/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(case["attributes"]["type"], "Case");
    assert_eq!(
        case["attributes"]["url"],
        format!("/services/data/{V}/sobjects/Case/{id}")
    );
    assert_eq!(case["Id"], id);
    assert_eq!(case["Subject"], "Printer on fire");
    assert_eq!(case["Status"], "New", "the picklist default applies");
    assert_eq!(case["IsDeleted"], false);
    let number = case["CaseNumber"].as_str().expect("CaseNumber");
    assert_eq!(number.len(), 8);
    assert!(number.chars().all(|c| c.is_ascii_digit()));
    for stamp in ["CreatedDate", "LastModifiedDate", "SystemModstamp"] {
        assert!(is_sf_datetime(&case[stamp]), "{stamp}: {}", case[stamp]);
    }

    // A 15-character id names the same record.
    let (status, short) = get(
        &sim,
        &token,
        &format!("sobjects/Case/{}?fields=Id,Subject", &id[..15]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(short["Id"], id);
    assert!(
        short.get("Status").is_none(),
        "only the asked fields: {short}"
    );

    let (status, _) = send_json(
        &sim,
        &token,
        reqwest::Method::PATCH,
        &format!("sobjects/Case/{id}"),
        json!({"Status": "Escalated"}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, updated) = get(&sim, &token, &format!("sobjects/Case/{id}")).await;
    assert_eq!(updated["Status"], "Escalated");
    assert!(updated["SystemModstamp"].as_str() > case["SystemModstamp"].as_str());

    let response = http()
        .delete(data(&sim, &format!("sobjects/Case/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, body) = get(&sim, &token, &format!("sobjects/Case/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body).0, "ENTITY_IS_DELETED");
    let (status, body) = send_json(
        &sim,
        &token,
        reqwest::Method::PATCH,
        &format!("sobjects/Case/{id}"),
        json!({"Subject": "again"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body).0, "ENTITY_IS_DELETED");
    assert_eq!(
        sim.record(&id).expect("kept in the recycle bin")["IsDeleted"],
        true
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_value_outside_a_restricted_picklist_is_refused() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let (status, body) = send_json(
        &sim,
        &token,
        reqwest::Method::POST,
        "sobjects/Case",
        json!({"Status": "Pending Vendor"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (code, fields) = error_of(&body);
    assert_eq!(code, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    assert_eq!(fields, json!(["Status"]));
    sim.stop().await;
}

#[tokio::test]
async fn a_missing_required_field_is_refused_with_its_name() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let (status, body) = send_json(
        &sim,
        &token,
        reqwest::Method::POST,
        "sobjects/Contact",
        json!({"FirstName": "Ada"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (code, fields) = error_of(&body);
    assert_eq!(code, "REQUIRED_FIELD_MISSING");
    assert_eq!(fields, json!(["LastName"]));

    // Clearing a required field on update is refused the same way.
    let id = create(&sim, &token, "Account", json!({"Name": "Acme"})).await;
    let (status, body) = send_json(
        &sim,
        &token,
        reqwest::Method::PATCH,
        &format!("sobjects/Account/{id}"),
        json!({"Name": null}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "REQUIRED_FIELD_MISSING");
    sim.stop().await;
}

#[tokio::test]
async fn unknown_and_read_only_fields_and_bad_json_are_refused() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let (status, body) = send_json(
        &sim,
        &token,
        reqwest::Method::POST,
        "sobjects/Case",
        json!({"Nope__c": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "INVALID_FIELD");

    let (status, body) = send_json(
        &sim,
        &token,
        reqwest::Method::POST,
        "sobjects/Case",
        json!({"CaseNumber": "1"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "INVALID_FIELD_FOR_INSERT_UPDATE");

    let response = http()
        .post(data(&sim, "sobjects/Case"))
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    assert_eq!(error_of(&body).0, "JSON_PARSER_ERROR");

    let (status, body) = send_json(
        &sim,
        &token,
        reqwest::Method::POST,
        "sobjects/Contact",
        json!({"LastName": "Lovelace", "AccountId": "not-an-id"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_of(&body),
        ("MALFORMED_ID".to_string(), json!(["AccountId"]))
    );

    let (status, body) = get(&sim, &token, "sobjects/Case/5005g000000000zAAA").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body).0, "NOT_FOUND");
    let (status, _) = get(&sim, &token, "sobjects/Nope__c/describe").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get(&sim, &token, "sobjects/Case/describe?fields=x").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sim.stop().await;
}

#[tokio::test]
async fn a_duplicate_external_id_is_refused() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let first = create(&sim, &token, "Case", json!({"Jira_Key__c": "SUP-7"})).await;
    let (status, body) = send_json(
        &sim,
        &token,
        reqwest::Method::POST,
        "sobjects/Case",
        json!({"Jira_Key__c": "sup-7"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "DUPLICATE_VALUE");
    assert!(body[0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains(&first));
    sim.stop().await;
}

#[tokio::test]
async fn describe_reports_the_custom_external_id_and_the_standard_picklists() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let (status, describe) = get(&sim, &token, "sobjects/Case/describe").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(describe["keyPrefix"], "500");
    let fields = describe["fields"].as_array().expect("fields");
    let field = |name: &str| {
        fields
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} described"))
            .clone()
    };
    let jira = field("Jira_Key__c");
    assert_eq!(jira["externalId"], true);
    assert_eq!(jira["unique"], true);
    assert_eq!(jira["custom"], true);
    assert_eq!(jira["type"], "string");
    for (name, value) in [
        ("Status", "Escalated"),
        ("Priority", "High"),
        ("Origin", "Web"),
    ] {
        let picklist = field(name);
        assert_eq!(picklist["type"], "picklist");
        assert!(picklist["picklistValues"]
            .as_array()
            .expect("values")
            .iter()
            .any(|v| v["value"] == value));
    }
    assert_eq!(field("CaseNumber")["createable"], false);
    for object in ["CaseComment", "Account", "Contact"] {
        let (status, _) = get(&sim, &token, &format!("sobjects/{object}/describe")).await;
        assert_eq!(status, StatusCode::OK, "{object}");
    }
    sim.stop().await;
}

fn seed_with_legacy_id() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        file.path(),
        json!({
            "fields": {"Case": [
                {"name": "Legacy_Id__c", "type": "string", "externalId": true},
                {"name": "Severity__c", "type": "picklist", "picklistValues": ["S1", "S2"], "required": false}
            ]},
            "objects": [{"name": "Invoice__c", "keyPrefix": "a01", "fields": [
                {"name": "Amount__c", "type": "currency"}
            ]}]
        })
        .to_string(),
    )
    .expect("seed written");
    file
}

#[tokio::test]
async fn upsert_by_external_id_creates_then_updates_and_reports_which() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let (status, created) = send_json(
        &sim,
        &token,
        reqwest::Method::PATCH,
        "sobjects/Case/Jira_Key__c/SUP-42",
        json!({"Subject": "first"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["created"], true);
    assert_eq!(created["success"], true);
    let id = created["id"].as_str().expect("id").to_string();

    let (status, updated) = send_json(
        &sim,
        &token,
        reqwest::Method::PATCH,
        "sobjects/Case/Jira_Key__c/SUP-42",
        json!({"Subject": "second"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["created"], false);
    assert_eq!(updated["id"], id);

    let (status, case) = get(&sim, &token, "sobjects/Case/Jira_Key__c/SUP-42").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(case["Subject"], "second");
    assert_eq!(case["Jira_Key__c"], "SUP-42");

    let (status, body) = send_json(
        &sim,
        &token,
        reqwest::Method::PATCH,
        "sobjects/Case/Subject/x",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body).0, "NOT_FOUND");
    let (status, _) = get(&sim, &token, "sobjects/Case/Jira_Key__c/SUP-404").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    sim.stop().await;
}

#[tokio::test]
async fn a_non_unique_external_id_held_by_several_records_answers_300() {
    let seed = seed_with_legacy_id();
    let sim = start(Options {
        seed_file: Some(seed.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    let token = token(&sim).await;
    let a = create(
        &sim,
        &token,
        "Case",
        json!({"Legacy_Id__c": "L-1", "Severity__c": "S1"}),
    )
    .await;
    let b = create(&sim, &token, "Case", json!({"Legacy_Id__c": "L-1"})).await;
    let (status, body) = get(&sim, &token, "sobjects/Case/Legacy_Id__c/L-1").await;
    assert_eq!(status, StatusCode::MULTIPLE_CHOICES);
    let urls = body.as_array().expect("an array of URLs");
    assert_eq!(urls.len(), 2);
    assert!(urls
        .iter()
        .any(|u| u.as_str().unwrap_or_default().ends_with(&a)));
    assert!(urls
        .iter()
        .any(|u| u.as_str().unwrap_or_default().ends_with(&b)));
    let (status, _) = send_json(
        &sim,
        &token,
        reqwest::Method::PATCH,
        "sobjects/Case/Legacy_Id__c/L-1",
        json!({"Subject": "which?"}),
    )
    .await;
    assert_eq!(status, StatusCode::MULTIPLE_CHOICES);

    // The seed file's custom object works end to end.
    let invoice = create(
        &sim,
        &token,
        "Invoice__c",
        json!({"Name": "INV-1", "Amount__c": 12.5}),
    )
    .await;
    assert!(invoice.starts_with("a01"));
    let (status, body) = send_json(
        &sim,
        &token,
        reqwest::Method::POST,
        "sobjects/Case",
        json!({"Severity__c": "S9"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    sim.stop().await;
}

#[tokio::test]
async fn a_locked_record_answers_unable_to_lock_row_until_the_lock_clears() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let id = create(&sim, &token, "Case", json!({"Subject": "busy"})).await;
    sim.lock_record(&id, Some(1));
    let path = format!("sobjects/Case/{id}");
    let (status, body) = send_json(
        &sim,
        &token,
        reqwest::Method::PATCH,
        &path,
        json!({"Subject": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "UNABLE_TO_LOCK_ROW");
    let (status, _) = send_json(
        &sim,
        &token,
        reqwest::Method::PATCH,
        &path,
        json!({"Subject": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // And through the control route, until unlocked.
    let lock_url = format!("{}/__sim/locks/{id}", sim.base_url());
    let response = http().put(&lock_url).send().await.expect("call");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    for _ in 0..2 {
        let (status, _) = send_json(
            &sim,
            &token,
            reqwest::Method::PATCH,
            &path,
            json!({"Subject": "y"}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    http().delete(&lock_url).send().await.expect("call");
    let (status, _) = send_json(
        &sim,
        &token,
        reqwest::Method::PATCH,
        &path,
        json!({"Subject": "y"}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    sim.stop().await;
}

#[tokio::test]
async fn the_daily_allowance_is_counted_reported_and_enforced() {
    let sim = start(Options {
        daily_limit: 3,
        ..Options::default()
    })
    .await;
    let token = token(&sim).await;
    let (status, limits) = get(&sim, &token, "limits").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(limits["DailyApiRequests"]["Max"], 3);
    assert_eq!(limits["DailyApiRequests"]["Remaining"], 2);
    create(&sim, &token, "Account", json!({"Name": "A"})).await;
    let response = http()
        .get(data(&sim, "limits"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("Sforce-Limit-Info")
            .and_then(|v| v.to_str().ok()),
        Some("api-usage=3/3")
    );

    let response = http()
        .get(data(&sim, "limits"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get("Retry-After").is_none());
    let body: Value = response.json().await.expect("json");
    assert_eq!(error_of(&body).0, "REQUEST_LIMIT_EXCEEDED");

    // The token endpoint does not count and still answers.
    let _ = self::token(&sim).await;
    assert_eq!(sim.api_usage(), 3);
    sim.stop().await;
}

#[tokio::test]
async fn soql_filters_on_datetimes_strings_booleans_ids_and_in_lists() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let a = create(
        &sim,
        &token,
        "Case",
        json!({"Subject": "it's \"quoted\"", "Origin": "Web"}),
    )
    .await;
    let b = create(
        &sim,
        &token,
        "Case",
        json!({"Subject": "second", "Origin": "Phone", "IsEscalated": true}),
    )
    .await;
    let c = create(
        &sim,
        &token,
        "Case",
        json!({"Subject": "third", "Status": "Closed"}),
    )
    .await;

    let (status, all) = query(
        &sim,
        &token,
        "SELECT Id, Subject FROM Case ORDER BY SystemModstamp, Id",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["totalSize"], 3);
    assert_eq!(all["done"], true);
    assert!(all.get("nextRecordsUrl").is_none());
    let ids: Vec<&str> = all["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["Id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids, vec![a.as_str(), b.as_str(), c.as_str()]);
    assert_eq!(all["records"][0]["attributes"]["type"], "Case");
    assert!(all["records"][0].get("Status").is_none());

    let ids_of = |body: &Value| -> Vec<String> {
        body["records"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|x| x["Id"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let cases = [
        (
            r#"SELECT Id FROM Case WHERE Subject = 'it\'s \"QUOTED\"'"#.to_string(),
            vec![a.clone()],
        ),
        (
            "SELECT Id FROM Case WHERE Origin IN ('Web', 'Phone') ORDER BY Id DESC".to_string(),
            vec![b.clone(), a.clone()],
        ),
        (
            "SELECT Id FROM Case WHERE Origin = null".to_string(),
            vec![c.clone()],
        ),
        (
            "SELECT Id FROM Case WHERE IsEscalated = true OR Status = 'Closed'".to_string(),
            vec![b.clone(), c.clone()],
        ),
        (
            "SELECT Id FROM Case WHERE NOT (Status = 'Closed') AND Origin != 'Web'".to_string(),
            vec![b.clone()],
        ),
        (
            format!("SELECT Id FROM Case WHERE Id = '{}'", &a[..15]),
            vec![a.clone()],
        ),
        (
            "SELECT Id FROM Case WHERE CreatedDate > 2000-01-01T00:00:00+01:00 LIMIT 2".to_string(),
            vec![a.clone(), b.clone()],
        ),
        (
            "SELECT Id FROM Case WHERE CreatedDate < 2000-01-01T00:00:00Z".to_string(),
            vec![],
        ),
    ];
    for (soql, expected) in cases {
        let (status, body) = query(&sim, &token, &soql).await;
        assert_eq!(status, StatusCode::OK, "{soql}: {body}");
        assert_eq!(ids_of(&body), expected, "{soql}");
    }

    // A polling watermark: only what changed at or after it.
    let (_, row) = get(
        &sim,
        &token,
        &format!("sobjects/Case/{b}?fields=SystemModstamp"),
    )
    .await;
    let stamp = row["SystemModstamp"]
        .as_str()
        .expect("stamp")
        .replace("+0000", "Z");
    let (_, newer) = query(
        &sim,
        &token,
        &format!("SELECT Id FROM Case WHERE SystemModstamp >= {stamp} ORDER BY SystemModstamp, Id"),
    )
    .await;
    assert_eq!(ids_of(&newer), vec![b.clone(), c.clone()]);
    sim.stop().await;
}

#[tokio::test]
async fn malformed_or_unsupported_soql_is_a_400_never_a_wrong_answer() {
    let sim = start_default().await;
    let token = token(&sim).await;
    for soql in [
        "SELECT Id FROM Case WHERE",
        "SELECT Id FROM Case WHERE Subject = 'a\\qb'",
        "SELECT Id FROM Case WHERE Subject LIKE 'a%'",
        "SELECT Id FROM Case WHERE CreatedDate = TODAY",
        "SELECT Id FROM Case WHERE Status = 'New' AND Origin = 'Web' OR Priority = 'High'",
        "SELECT COUNT() FROM Case",
        "SELEKT Id FROM Case",
    ] {
        let (status, body) = query(&sim, &token, soql).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{soql}");
        assert_eq!(error_of(&body).0, "MALFORMED_QUERY", "{soql}");
    }
    let (status, body) = query(&sim, &token, "SELECT Id, Nope__c FROM Case").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "INVALID_FIELD");
    let (status, body) = query(&sim, &token, "SELECT Id FROM Nope__c").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "INVALID_TYPE");
    sim.stop().await;
}

#[tokio::test]
async fn a_large_result_pages_to_the_end_through_next_records_url() {
    let sim = start_default().await;
    for i in 0..4_500 {
        sim.insert("Case", json!({"Subject": format!("case {i}")}))
            .expect("inserted");
    }
    let token = token(&sim).await;
    let (status, mut page) = query(
        &sim,
        &token,
        "SELECT Id, Subject FROM Case ORDER BY SystemModstamp, Id",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut sizes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    loop {
        assert_eq!(page["totalSize"], 4_500);
        let records = page["records"].as_array().expect("records");
        sizes.push(records.len());
        for r in records {
            assert!(seen.insert(r["Id"].as_str().expect("id").to_string()));
        }
        if page["done"] == true {
            assert!(page.get("nextRecordsUrl").is_none());
            break;
        }
        let next = page["nextRecordsUrl"].as_str().expect("nextRecordsUrl");
        assert!(
            next.starts_with(&format!("/services/data/{V}/query/01g")),
            "{next}"
        );
        page = http()
            .get(format!("{}{next}", sim.base_url()))
            .bearer_auth(&token)
            .send()
            .await
            .expect("next page")
            .json()
            .await
            .expect("json");
    }
    assert_eq!(sizes, vec![2000, 2000, 500]);
    assert_eq!(seen.len(), 4_500);

    let response = http()
        .get(data(&sim, "query"))
        .query(&[("q", "SELECT Id FROM Case")])
        .header("Sforce-Query-Options", "batchSize=1000")
        .bearer_auth(&token)
        .send()
        .await
        .expect("call");
    let first: Value = response.json().await.expect("json");
    assert_eq!(first["records"].as_array().map(Vec::len), Some(1000));

    let (status, body) = get(&sim, &token, "query/01gnonsense-2000").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "INVALID_QUERY_LOCATOR");
    sim.stop().await;
}

#[tokio::test]
async fn query_all_includes_deleted_rows_and_query_does_not() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let id = create(&sim, &token, "Case", json!({})).await;
    sim.delete(&id).expect("deleted");
    let (_, live) = query(&sim, &token, "SELECT Id FROM Case").await;
    assert_eq!(live["totalSize"], 0);
    let response = http()
        .get(data(&sim, "queryAll"))
        .query(&[("q", "SELECT Id, IsDeleted FROM Case")])
        .bearer_auth(&token)
        .send()
        .await
        .expect("call");
    let all: Value = response.json().await.expect("json");
    assert_eq!(all["totalSize"], 1);
    assert_eq!(all["records"][0]["IsDeleted"], true);
    sim.stop().await;
}

#[tokio::test]
async fn a_collection_create_reports_each_item_in_order_with_partial_success() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let (status, results) = send_json(
        &sim,
        &token,
        reqwest::Method::POST,
        "composite/sobjects",
        json!({"allOrNone": false, "records": [
            {"attributes": {"type": "Case"}, "Subject": "ok"},
            {"attributes": {"type": "Case"}, "Status": "Nope"},
            {"attributes": {"type": "Account"}, "Name": "Acme"}
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let results = results.as_array().expect("array").clone();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["success"], true);
    assert!(results[0]["id"]
        .as_str()
        .unwrap_or_default()
        .starts_with("500"));
    assert_eq!(results[1]["success"], false);
    assert_eq!(
        results[1]["errors"][0]["statusCode"],
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    );
    assert!(results[1]["errors"][0].get("errorCode").is_none());
    assert_eq!(results[2]["success"], true);
    assert!(results[2]["id"]
        .as_str()
        .unwrap_or_default()
        .starts_with("001"));
    sim.stop().await;
}

#[tokio::test]
async fn an_all_or_none_collection_rolls_every_item_back_when_one_fails() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let (status, results) = send_json(
        &sim,
        &token,
        reqwest::Method::POST,
        "composite/sobjects",
        json!({"allOrNone": true, "records": [
            {"attributes": {"type": "Case"}, "Subject": "ok"},
            {"attributes": {"type": "Contact"}, "FirstName": "no last name"}
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(results[0]["success"], false);
    assert_eq!(
        results[0]["errors"][0]["statusCode"],
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert_eq!(
        results[1]["errors"][0]["statusCode"],
        "REQUIRED_FIELD_MISSING"
    );
    assert!(sim.records("Case").is_empty(), "nothing was kept");

    let (status, body) = send_json(
        &sim,
        &token,
        reqwest::Method::POST,
        "composite/sobjects",
        json!({"records": (0..201).map(|_| json!({"attributes": {"type": "Case"}})).collect::<Vec<_>>()}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    sim.stop().await;
}

#[tokio::test]
async fn collection_update_delete_and_upsert_follow_the_documented_shapes() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let a = create(&sim, &token, "Case", json!({"Subject": "a"})).await;
    let b = create(&sim, &token, "Case", json!({"Subject": "b"})).await;

    let (status, results) = send_json(
        &sim,
        &token,
        reqwest::Method::PATCH,
        "composite/sobjects",
        json!({"allOrNone": false, "records": [
            {"attributes": {"type": "Case"}, "Id": a, "Subject": "a2"},
            {"attributes": {"type": "Case"}, "Id": "001xx000003DGb2999", "Subject": "bad"}
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(results[0], json!({"id": a, "success": true, "errors": []}));
    assert_eq!(results[1]["success"], false);
    assert_eq!(results[1]["errors"][0]["statusCode"], "MALFORMED_ID");
    assert_eq!(results[1]["errors"][0]["fields"], json!(["Id"]));
    assert_eq!(sim.record(&a).expect("a")["Subject"], "a2");

    let (status, results) = send_json(
        &sim,
        &token,
        reqwest::Method::PATCH,
        "composite/sobjects/Case/Jira_Key__c",
        json!({"allOrNone": false, "records": [
            {"attributes": {"type": "Case"}, "Jira_Key__c": "SUP-1", "Subject": "new"},
            {"attributes": {"type": "Case"}, "Jira_Key__c": "SUP-1", "Subject": "same key again"}
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(results[0]["created"], true);
    assert_eq!(results[1]["created"], false);
    assert_eq!(results[0]["id"], results[1]["id"]);

    let response = http()
        .delete(data(
            &sim,
            &format!("composite/sobjects?ids={a},{b},bogus&allOrNone=false"),
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let results: Value = response.json().await.expect("json");
    assert_eq!(results[0], json!({"id": a, "success": true, "errors": []}));
    assert_eq!(results[1]["success"], true);
    assert_eq!(results[2]["success"], false);
    assert_eq!(results[2]["errors"][0]["statusCode"], "MALFORMED_ID");
    assert_eq!(sim.record(&b).expect("b")["IsDeleted"], true);

    let (status, rows) = send_json(
        &sim,
        &token,
        reqwest::Method::POST,
        "composite/sobjects/Case",
        json!({"ids": [results[0]["id"], "5005g000000000zAAA"], "fields": ["Id", "Subject"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows[1], Value::Null);
    sim.stop().await;
}

#[tokio::test]
async fn the_control_routes_count_calls_dump_state_and_inject_faults() {
    let sim = start_default().await;
    let token = token(&sim).await;
    let id = create(&sim, &token, "Case", json!({})).await;
    let calls: Value = http()
        .get(format!("{}/__sim/calls", sim.base_url()))
        .send()
        .await
        .expect("call")
        .json()
        .await
        .expect("json");
    assert_eq!(
        calls["by_endpoint"]["POST /services/data/{v}/sobjects/{ty}/"],
        1
    );
    assert_eq!(calls["by_endpoint"]["POST /services/oauth2/token"], 1);
    let state: Value = http()
        .get(format!("{}/__sim/state", sim.base_url()))
        .send()
        .await
        .expect("call")
        .json()
        .await
        .expect("json");
    assert_eq!(state["org_id"], ORG_ID);
    assert_eq!(state["records"][0]["id"], id);

    let response = http()
        .put(format!("{}/__sim/faults", sim.base_url()))
        .json(&json!({"error_rate": 1.0}))
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = get(&sim, &token, "limits").await;
    assert!(status.is_server_error());
    assert!(body[0]["errorCode"].is_string());
    sim.stop().await;
}

/// A test receiver: records bodies, answers per `answer`.
#[derive(Clone)]
struct Receiver {
    bodies: Arc<Mutex<Vec<String>>>,
    calls: Arc<AtomicUsize>,
    fail_first: usize,
    ack: bool,
}

async fn receive(
    State(receiver): State<Receiver>,
    body: Bytes,
) -> (AxumStatus, [(&'static str, &'static str); 1], String) {
    let n = receiver.calls.fetch_add(1, Ordering::SeqCst);
    receiver
        .bodies
        .lock()
        .expect("bodies")
        .push(String::from_utf8_lossy(&body).into_owned());
    if n < receiver.fail_first {
        return (
            AxumStatus::INTERNAL_SERVER_ERROR,
            [("Content-Type", "text/plain")],
            "boom".into(),
        );
    }
    let ack = if receiver.ack { "true" } else { "false" };
    (
        AxumStatus::OK,
        [("Content-Type", "text/xml")],
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>{ack}</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#
        ),
    )
}

async fn spawn_receiver(fail_first: usize, ack: bool) -> (String, Receiver) {
    let receiver = Receiver {
        bodies: Arc::new(Mutex::new(Vec::new())),
        calls: Arc::new(AtomicUsize::new(0)),
        fail_first,
        ack,
    };
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), receiver)
}

type Element = (String, String, Vec<(String, String)>, String);

/// Every element of an XML document as (namespace, local name, attributes as written, text).
fn elements(xml: &str) -> Vec<Element> {
    fn element(ns: ResolveResult, e: &quick_xml::events::BytesStart) -> Element {
        let namespace = match ns {
            ResolveResult::Bound(n) => String::from_utf8_lossy(n.as_ref()).into_owned(),
            _ => String::new(),
        };
        let attrs = e
            .attributes()
            .filter_map(Result::ok)
            .map(|a| {
                (
                    String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                    String::from_utf8_lossy(&a.value).into_owned(),
                )
            })
            .collect();
        let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        (namespace, name, attrs, String::new())
    }
    let mut reader = NsReader::from_str(xml);
    let mut out: Vec<Element> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    loop {
        match reader.read_resolved_event().expect("well-formed XML") {
            (ns, Event::Start(e)) => {
                out.push(element(ns, &e));
                open.push(out.len() - 1);
            }
            (ns, Event::Empty(e)) => out.push(element(ns, &e)),
            (_, Event::End(_)) => {
                open.pop();
            }
            (_, Event::Text(t)) => {
                if let Some(&i) = open.last() {
                    out[i].3.push_str(&t.unescape().expect("text"));
                }
            }
            (_, Event::Eof) => break,
            _ => {}
        }
    }
    out
}

const OUTBOUND: &str = "http://soap.sforce.com/2005/09/outbound";
const SOBJECT: &str = "urn:sobject.enterprise.soap.sforce.com";
const SOAPENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";

fn find<'a>(elements: &'a [Element], ns: &str, name: &str) -> Vec<&'a Element> {
    elements
        .iter()
        .filter(|e| e.0 == ns && e.1 == name)
        .collect()
}

#[tokio::test]
async fn an_outbound_message_is_delivered_as_the_documented_soap_envelope() {
    let sim = start_default().await;
    let (url, receiver) = spawn_receiver(0, true).await;
    // Registered through the control route, as a standalone user would.
    let response = http()
        .post(format!("{}/__sim/outbound-messages", sim.base_url()))
        .json(&json!({"url": url, "object": "Case", "fields": ["Status", "Subject", "Jira_Key__c", "LastModifiedDate"]}))
        .send()
        .await
        .expect("call");
    assert_eq!(response.status(), StatusCode::CREATED);
    let action_id = response.json::<Value>().await.expect("json")["actionId"]
        .as_str()
        .expect("actionId")
        .to_string();
    let token = token(&sim).await;
    let id = create(
        &sim,
        &token,
        "Case",
        json!({"Subject": "Fish & <chips>", "Jira_Key__c": "SUP-9"}),
    )
    .await;
    assert!(sim.settle(Duration::from_secs(10)).await);

    let records = sim.outbox().records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, DeliveryStatus::Delivered);
    assert_eq!(records[0].attempts, 1);

    let bodies = receiver.bodies.lock().expect("bodies").clone();
    assert_eq!(bodies.len(), 1);
    let xml = elements(&bodies[0]);
    assert_eq!(find(&xml, SOAPENV, "Envelope").len(), 1);
    assert_eq!(find(&xml, SOAPENV, "Body").len(), 1);
    assert_eq!(find(&xml, OUTBOUND, "notifications").len(), 1);
    assert_eq!(find(&xml, OUTBOUND, "OrganizationId")[0].3, ORG_ID);
    assert_eq!(find(&xml, OUTBOUND, "ActionId")[0].3, action_id);
    let session = find(&xml, OUTBOUND, "SessionId")[0];
    assert!(session.2.iter().any(|(k, v)| k == "xsi:nil" && v == "true"));
    assert!(find(&xml, OUTBOUND, "EnterpriseUrl")[0]
        .3
        .starts_with(&sim.base_url()));
    assert!(find(&xml, OUTBOUND, "PartnerUrl")[0]
        .3
        .starts_with(&sim.base_url()));
    let notification_ids = find(&xml, OUTBOUND, "Id");
    assert_eq!(notification_ids.len(), 1);
    assert_eq!(notification_ids[0].3.len(), 18);
    let sobject = find(&xml, OUTBOUND, "sObject")[0];
    assert!(sobject
        .2
        .iter()
        .any(|(k, v)| k == "xsi:type" && v == "sf:Case"));
    assert_eq!(find(&xml, SOBJECT, "Id")[0].3, id);
    assert_eq!(find(&xml, SOBJECT, "Status")[0].3, "New");
    assert_eq!(find(&xml, SOBJECT, "Subject")[0].3, "Fish & <chips>");
    assert_eq!(find(&xml, SOBJECT, "Jira_Key__c")[0].3, "SUP-9");
    sim.stop().await;
}

#[tokio::test]
async fn an_outbound_message_is_retried_until_the_receiver_acknowledges() {
    let sim = start_default().await;
    let (url, receiver) = spawn_receiver(1, true).await;
    sim.add_outbound_message(OutboundMessage {
        url,
        object: "Case".into(),
        fields: vec!["Status".into()],
    })
    .expect("registered");
    sim.insert("Case", json!({"Subject": "retry me"}))
        .expect("inserted");
    assert!(sim.settle(Duration::from_secs(10)).await);
    let records = sim.outbox().records();
    assert_eq!(records[0].status, DeliveryStatus::Delivered);
    assert_eq!(records[0].attempts, 2);
    assert_eq!(receiver.calls.load(Ordering::SeqCst), 2);
    let bodies = receiver.bodies.lock().expect("bodies").clone();
    assert_eq!(bodies[0], bodies[1], "the retry resends the same message");
    sim.stop().await;
}

#[tokio::test]
async fn a_200_without_an_ack_is_not_a_delivery() {
    let sim = start(Options {
        notify_retries: 2,
        notify_retry_delay: Duration::from_millis(10).into(),
        ..Options::default()
    })
    .await;
    let (url, receiver) = spawn_receiver(0, false).await;
    sim.add_outbound_message(OutboundMessage {
        url,
        object: "Case".into(),
        fields: vec![],
    })
    .expect("registered");
    sim.insert("Case", json!({})).expect("inserted");
    assert!(sim.settle(Duration::from_secs(10)).await);
    let records = sim.outbox().records();
    assert_eq!(records[0].status, DeliveryStatus::Failed);
    assert_eq!(records[0].attempts, 3);
    assert_eq!(receiver.calls.load(Ordering::SeqCst), 3);
    sim.stop().await;
}

#[tokio::test]
async fn change_events_carry_the_cdc_header_and_only_changed_fields() {
    let sim = start_default().await;
    let (url, receiver) = spawn_receiver(0, true).await;
    sim.add_change_event_endpoint(ChangeEventEndpoint {
        url,
        objects: vec!["Case".into()],
    })
    .expect("registered");
    let token = token(&sim).await;
    let response = http()
        .post(data(&sim, "sobjects/Case"))
        .bearer_auth(&token)
        .header("Sforce-Call-Options", "client=tandem")
        .json(&json!({"Subject": "cdc", "Origin": "Web"}))
        .send()
        .await
        .expect("call");
    let id = response.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(sim.settle(Duration::from_secs(10)).await);
    sim.update("Case", &id, json!({"Status": "Escalated", "Origin": null}))
        .expect("updated");
    assert!(sim.settle(Duration::from_secs(10)).await);
    sim.delete(&id).expect("deleted");
    assert!(sim.settle(Duration::from_secs(10)).await);
    // Accounts are not subscribed.
    sim.insert("Account", json!({"Name": "quiet"}))
        .expect("inserted");
    assert!(sim.settle(Duration::from_secs(10)).await);

    let events: Vec<Value> = receiver
        .bodies
        .lock()
        .expect("bodies")
        .iter()
        .map(|b| serde_json::from_str(b).expect("JSON event"))
        .collect();
    assert_eq!(events.len(), 3);
    for event in &events {
        assert_eq!(event["channel"], "/data/CaseChangeEvent");
        assert!(event["data"]["schema"].is_string());
        assert!(event["data"]["event"]["replayId"].is_u64());
        let header = &event["data"]["payload"]["ChangeEventHeader"];
        assert_eq!(header["entityName"], "Case");
        assert_eq!(header["recordIds"], json!([id]));
        assert!(header["transactionKey"].is_string());
        assert_eq!(header["sequenceNumber"], 1);
        assert!(header["commitTimestamp"].is_i64());
        assert!(header["commitNumber"].is_u64());
        assert!(header["commitUser"].is_string());
        assert_eq!(header["diffFields"], json!([]));
    }
    let create = &events[0]["data"]["payload"];
    assert_eq!(create["ChangeEventHeader"]["changeType"], "CREATE");
    assert_eq!(
        create["ChangeEventHeader"]["changeOrigin"],
        "com/salesforce/api/rest/60.0;client=tandem"
    );
    assert_eq!(create["Subject"], "cdc");

    let update = &events[1]["data"]["payload"];
    let header = &update["ChangeEventHeader"];
    assert_eq!(header["changeType"], "UPDATE");
    assert_eq!(header["changeOrigin"], "");
    let changed: Vec<&str> = header["changedFields"]
        .as_array()
        .expect("changedFields")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        changed.contains(&"Status")
            && changed.contains(&"Origin")
            && changed.contains(&"LastModifiedDate"),
        "{changed:?}"
    );
    assert!(!changed.contains(&"Subject"));
    assert_eq!(header["nulledFields"], json!(["Origin"]));
    assert_eq!(update["Status"], "Escalated");
    assert_eq!(update["Origin"], Value::Null);
    assert!(
        update.get("Subject").is_none(),
        "an UPDATE carries only what changed"
    );

    let delete = events[2]["data"]["payload"].as_object().expect("payload");
    assert_eq!(delete["ChangeEventHeader"]["changeType"], "DELETE");
    assert_eq!(delete.len(), 1, "a DELETE carries only the header");
    sim.stop().await;
}

#[tokio::test]
async fn a_collection_write_is_one_transaction_and_one_batched_outbound_message() {
    let sim = start_default().await;
    let (om_url, om) = spawn_receiver(0, true).await;
    let (cdc_url, cdc) = spawn_receiver(0, true).await;
    sim.add_outbound_message(OutboundMessage {
        url: om_url,
        object: "Case".into(),
        fields: vec!["Subject".into()],
    })
    .expect("registered");
    sim.add_change_event_endpoint(ChangeEventEndpoint {
        url: cdc_url,
        objects: vec![],
    })
    .expect("registered");
    let token = token(&sim).await;
    let (status, _) = send_json(
        &sim,
        &token,
        reqwest::Method::POST,
        "composite/sobjects",
        json!({"records": [
            {"attributes": {"type": "Case"}, "Subject": "one"},
            {"attributes": {"type": "Case"}, "Subject": "two"}
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(sim.settle(Duration::from_secs(10)).await);
    let soap = om.bodies.lock().expect("bodies").clone();
    assert_eq!(soap.len(), 1);
    assert_eq!(find(&elements(&soap[0]), OUTBOUND, "Notification").len(), 2);
    let events: Vec<Value> = cdc
        .bodies
        .lock()
        .expect("bodies")
        .iter()
        .map(|b| serde_json::from_str(b).expect("json"))
        .collect();
    assert_eq!(events.len(), 2);
    let key = |e: &Value| e["data"]["payload"]["ChangeEventHeader"]["transactionKey"].clone();
    assert_eq!(key(&events[0]), key(&events[1]));
    let mut sequence: Vec<u64> = events
        .iter()
        .filter_map(|e| e["data"]["payload"]["ChangeEventHeader"]["sequenceNumber"].as_u64())
        .collect();
    sequence.sort_unstable();
    assert_eq!(sequence, vec![1, 2]);
    sim.stop().await;
}
