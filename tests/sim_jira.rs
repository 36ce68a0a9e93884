//! The Jira emulator through plain HTTP calls written from Atlassian's documented shapes.

#[path = "common/openapi.rs"]
mod openapi;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use reqwest::{Client, RequestBuilder, Response};
use serde_json::{json, Value};
use sha2::Sha256;
use tandem::sim::jira::{JiraSim, Options};

struct Site {
    sim: JiraSim,
    http: Client,
}

impl Site {
    async fn start() -> Site {
        Self::with(Options::default()).await
    }

    async fn with(options: Options) -> Site {
        Site {
            sim: JiraSim::start(options).await.unwrap(),
            http: Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.http
            .get(self.url(path))
            .basic_auth("sim@example.com", Some("sim-token"))
    }

    fn send(&self, method: reqwest::Method, path: &str, body: Value) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .basic_auth("sim@example.com", Some("sim-token"))
            .json(&body)
    }

    /// Send `body` as JSON with the API account's credentials; the status and decoded answer.
    async fn call(&self, method: reqwest::Method, path: &str, body_json: Value) -> (u16, Value) {
        body(self.send(method, path, body_json).send().await.unwrap()).await
    }

    async fn create(&self, summary: &str) -> Value {
        let response = self
            .send(
                reqwest::Method::POST,
                "/rest/api/3/issue",
                json!({"fields": {
                    "project": {"key": "SUP"},
                    "issuetype": {"name": "Task"},
                    "summary": summary,
                    "description": adf("Created by a test"),
                }}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }
}

fn adf(text: &str) -> Value {
    json!({"version": 1, "type": "doc", "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": text}]}
    ]})
}

async fn body(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn basic_auth_bearer_tokens_and_anonymous_callers_are_told_apart() {
    let site = Site::with(Options {
        oauth_tokens: vec!["oauth-123".into()],
        ..Options::default()
    })
    .await;
    let (status, me) = body(site.get("/rest/api/3/myself").send().await.unwrap()).await;
    assert_eq!(
        (status, me["emailAddress"].as_str()),
        (200, Some("sim@example.com"))
    );
    assert_eq!(me["timeZone"], "UTC");

    let bearer = site
        .http
        .get(site.url("/rest/api/3/myself"))
        .bearer_auth("oauth-123")
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);

    for request in [
        site.http.get(site.url("/rest/api/3/myself")),
        site.http
            .get(site.url("/rest/api/3/myself"))
            .basic_auth("sim@example.com", Some("wrong")),
        site.http
            .get(site.url("/rest/api/3/myself"))
            .bearer_auth("nope"),
    ] {
        let (status, text) = body(request.send().await.unwrap()).await;
        assert_eq!(status, 401);
        assert_eq!(
            text,
            "Client must be authenticated to access this resource."
        );
    }
    // Wrong credentials on search are still a 401 …
    let (status, _) = body(
        site.http
            .get(site.url("/rest/api/3/search/jql?jql=project%3DSUP"))
            .basic_auth("sim@example.com", Some("revoked"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    // … but search answers anonymous callers with an empty page: clients must check /myself.
    let (status, page) = body(
        site.http
            .get(site.url("/rest/api/3/search/jql?jql=project%3DSUP"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, page["issues"].as_array().unwrap().len()), (200, 0));
}

#[tokio::test]
async fn server_info_says_cloud_and_metadata_lists_the_seeded_site() {
    let site = Site::start().await;
    let (_, info) = body(site.get("/rest/api/3/serverInfo").send().await.unwrap()).await;
    assert_eq!(info["deploymentType"], "Cloud");
    let (_, priorities) = body(site.get("/rest/api/3/priority").send().await.unwrap()).await;
    let names: Vec<&str> = priorities
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Highest", "High", "Medium", "Low", "Lowest"]);
    let (_, project) = body(site.get("/rest/api/3/project/SUP").send().await.unwrap()).await;
    let types: Vec<&str> = project["issueTypes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Task", "Bug"]);
    let (_, fields) = body(site.get("/rest/api/3/field").send().await.unwrap()).await;
    assert!(fields
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["id"] == "customfield_10050" && f["custom"] == true));
    let (status, _) = body(site.get("/rest/api/3/project/NOPE").send().await.unwrap()).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn v3_speaks_adf_and_v2_plain_text_over_the_same_issue() {
    let site = Site::start().await;
    let created = site.create("Printer on fire").await;
    assert_eq!(created["key"], "SUP-1");
    assert!(created["id"].as_str().unwrap().parse::<u64>().is_ok());

    let (_, v3) = body(site.get("/rest/api/3/issue/SUP-1").send().await.unwrap()).await;
    assert_eq!(v3["fields"]["description"]["type"], "doc");
    assert_eq!(v3["fields"]["status"]["statusCategory"]["key"], "new");
    let (_, v2) = body(site.get("/rest/api/2/issue/SUP-1").send().await.unwrap()).await;
    assert_eq!(v2["fields"]["description"], "Created by a test");
    let updated = v2["fields"]["updated"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_str(updated, "%Y-%m-%dT%H:%M:%S%.3f%z").is_ok(),
        "Jira's timestamp format: {updated}"
    );

    // v3 refuses a plain string where ADF belongs; v2 takes it.
    let (status, error) = site
        .call(
            reqwest::Method::PUT,
            "/rest/api/3/issue/SUP-1",
            json!({"fields": {"description": "plain"}}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error["errors"]["description"]
        .as_str()
        .unwrap()
        .contains("Atlassian Document"));
    let response = site
        .send(
            reqwest::Method::PUT,
            "/rest/api/2/issue/SUP-1",
            json!({"fields": {"description": "plain"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (_, v3) = body(
        site.get("/rest/api/3/issue/SUP-1?fields=description")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        v3["fields"]["description"]["content"][0]["content"][0]["text"],
        "plain"
    );
    assert!(
        v3["fields"].get("summary").is_none(),
        "only the asked-for fields"
    );
}

#[tokio::test]
async fn create_and_edit_validate_like_jira() {
    let site = Site::start().await;
    let post = |fields: Value| {
        site.send(
            reqwest::Method::POST,
            "/rest/api/3/issue",
            json!({ "fields": fields }),
        )
    };
    let (status, error) = body(
        post(json!({"project": {"key": "SUP"}, "issuetype": {"name": "Task"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        error["errors"]["summary"],
        "You must specify a summary of the issue."
    );
    let (status, error) = body(
        post(json!({"project": {"key": "NOPE"}, "issuetype": {"name": "Task"}, "summary": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error["errors"]["project"].as_str()),
        (400, Some("Specify a valid project ID or key"))
    );
    let (status, error) = body(post(json!({"project": {"key": "SUP"}, "issuetype": {"name": "Task"}, "summary": "x", "customfield_99999": "y"})).send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(error["errors"]["customfield_99999"]
        .as_str()
        .unwrap()
        .contains("cannot be set"));
    let (status, _) = site
        .call(
            reqwest::Method::POST,
            "/rest/api/3/issue",
            json!("not an object"),
        )
        .await;
    assert_eq!(status, 400);

    // A project can be named by id, key or name.
    let by_name = post(json!({"project": {"name": "Support"}, "issuetype": {"name": "Task"}, "summary": "by name"}))
        .send()
        .await
        .unwrap();
    assert_eq!(by_name.status(), 201);
    // Status is not a field: a direct edit is refused as Jira refuses it.
    let (status, error) = site
        .call(
            reqwest::Method::PUT,
            "/rest/api/3/issue/SUP-1",
            json!({"fields": {"status": {"name": "Done"}}}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        error["errors"]["status"],
        "Field 'status' cannot be set. It is not on the appropriate screen, or unknown."
    );
    // `update` operations and `returnIssue`.
    let (status, issue) = site.call(reqwest::Method::PUT,
            "/rest/api/3/issue/SUP-1?returnIssue=true",
            json!({"fields": {"priority": {"name": "High"}, "customfield_10050": "500000000000001AAA"},
                   "update": {"labels": [{"add": "hw"}, {"add": "urgent"}]}})).await;
    assert_eq!(status, 200);
    assert_eq!(issue["fields"]["priority"]["name"], "High");
    assert_eq!(issue["fields"]["labels"], json!(["hw", "urgent"]));
    assert_eq!(issue["fields"]["customfield_10050"], "500000000000001AAA");
    let (_, log) = body(
        site.get("/rest/api/3/issue/SUP-1/changelog")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let fields: Vec<&str> = log["values"][0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["fieldId"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["priority", "labels", "customfield_10050"]);

    let (status, error) = body(site.get("/rest/api/3/issue/SUP-99").send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(
        error["errorMessages"][0],
        "Issue does not exist or you do not have permission to see it."
    );
}

#[tokio::test]
async fn status_changes_go_through_the_workflow_transitions() {
    let site = Site::start().await;
    site.create("walk the workflow").await;
    let transitions = |site: &Site| {
        let request = site.get("/rest/api/3/issue/SUP-1/transitions");
        async move {
            let (_, t) = body(request.send().await.unwrap()).await;
            t["transitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["id"].as_str().unwrap().to_string(),
                        t["to"]["name"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        transitions(&site).await,
        [("21".to_string(), "In Progress".to_string())]
    );
    // `expand=transitions` on the issue lists the same, beside the current status.
    let (_, issue) = body(
        site.get("/rest/api/3/issue/SUP-1?fields=status&expand=transitions")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(issue["fields"]["status"]["name"], "To Do");
    assert_eq!(issue["transitions"][0]["id"], "21");
    assert_eq!(issue["transitions"][0]["to"]["name"], "In Progress");
    let go = |id: &str| {
        site.send(
            reqwest::Method::POST,
            "/rest/api/3/issue/SUP-1/transitions",
            json!({"transition": {"id": id}}),
        )
        .send()
    };
    let (status, error) = body(go("31").await.unwrap()).await;
    assert_eq!(status, 400, "To Do cannot jump to Done");
    assert!(error["errorMessages"][0]
        .as_str()
        .unwrap()
        .contains("not valid"));
    assert_eq!(go("21").await.unwrap().status(), 204);
    assert_eq!(go("31").await.unwrap().status(), 204);
    let (_, issue) = body(
        site.get("/rest/api/3/issue/SUP-1?fields=status,resolution")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(issue["fields"]["status"]["name"], "Done");
    assert_eq!(issue["fields"]["resolution"]["name"], "Done");
    // And back.
    assert_eq!(
        transitions(&site).await,
        [("21".to_string(), "In Progress".to_string())]
    );
    assert_eq!(go("21").await.unwrap().status(), 204);
    let (_, issue) = body(
        site.get("/rest/api/3/issue/SUP-1?fields=status,resolution")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (
            issue["fields"]["status"]["name"].as_str(),
            &issue["fields"]["resolution"]
        ),
        (Some("In Progress"), &Value::Null)
    );
}

#[tokio::test]
async fn comments_can_be_listed_added_updated_and_deleted() {
    let site = Site::start().await;
    site.create("talk").await;
    let (status, c) = site
        .call(
            reqwest::Method::POST,
            "/rest/api/3/issue/SUP-1/comment",
            json!({"body": adf("first")}),
        )
        .await;
    assert_eq!(status, 201);
    let id = c["id"].as_str().unwrap().to_string();
    let (status, _) = site
        .call(
            reqwest::Method::POST,
            "/rest/api/2/issue/SUP-1/comment",
            json!({"body": "second"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, c) = site
        .call(
            reqwest::Method::PUT,
            &format!("/rest/api/3/issue/SUP-1/comment/{id}"),
            json!({"body": adf("first, edited")}),
        )
        .await;
    assert_eq!(
        (
            status,
            c["body"]["content"][0]["content"][0]["text"].as_str()
        ),
        (200, Some("first, edited"))
    );
    let (_, page) = body(
        site.get("/rest/api/2/issue/SUP-1/comment?orderBy=-created")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page["total"], 2);
    assert_eq!(page["comments"][0]["body"], "second");
    let response = site
        .http
        .delete(site.url(&format!("/rest/api/3/issue/SUP-1/comment/{id}")))
        .basic_auth("sim@example.com", Some("sim-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (status, _) = body(
        site.get(&format!("/rest/api/3/issue/SUP-1/comment/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, error) = site
        .call(
            reqwest::Method::POST,
            "/rest/api/3/issue/SUP-1/comment",
            json!({"body": "plain in v3"}),
        )
        .await;
    assert_eq!(status, 400, "{error}");
}

#[tokio::test]
async fn entity_properties_hold_json_per_issue() {
    let site = Site::start().await;
    site.create("marked").await;
    let put = site
        .send(
            reqwest::Method::PUT,
            "/rest/api/3/issue/SUP-1/properties/tandem.link",
            json!({"caseId": "500x"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let again = site
        .send(
            reqwest::Method::PUT,
            "/rest/api/3/issue/SUP-1/properties/tandem.link",
            json!({"caseId": "500y"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let (_, prop) = body(
        site.get("/rest/api/3/issue/SUP-1/properties/tandem.link")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        prop,
        json!({"key": "tandem.link", "value": {"caseId": "500y"}})
    );
    let (_, keys) = body(
        site.get("/rest/api/3/issue/SUP-1/properties")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(keys["keys"][0]["key"], "tandem.link");
}

#[tokio::test]
async fn bulk_create_reports_each_failure_by_position() {
    let site = Site::start().await;
    let good = |s: &str| json!({"fields": {"project": {"key": "SUP"}, "issuetype": {"id": "10001"}, "summary": s}});
    let (status, answer) = site.call(reqwest::Method::POST,
            "/rest/api/3/issue/bulk",
            json!({"issueUpdates": [good("one"), {"fields": {"project": {"key": "SUP"}, "issuetype": {"id": "10001"}}}, good("three")]})).await;
    assert_eq!(status, 201);
    assert_eq!(answer["issues"].as_array().unwrap().len(), 2);
    assert_eq!(answer["errors"][0]["failedElementNumber"], 1);
    assert_eq!(
        answer["errors"][0]["elementErrors"]["errors"]["summary"],
        "You must specify a summary of the issue."
    );
    let many: Vec<Value> = (0..51).map(|i| good(&i.to_string())).collect();
    let (status, _) = site
        .call(
            reqwest::Method::POST,
            "/rest/api/3/issue/bulk",
            json!({ "issueUpdates": many }),
        )
        .await;
    assert_eq!(status, 400, "at most 50 a call");
}

#[tokio::test]
async fn search_pages_to_the_end_with_next_page_tokens_and_no_total() {
    let site = Site::start().await;
    {
        let mut store = site.sim.store();
        for n in 0..230 {
            store
                .create_issue(
                    tandem::sim::jira::store::Api::V2,
                    "5b10a2844c20165700ede21g",
                    &json!({"fields": {"project": {"key": "SUP"}, "issuetype": {"name": "Task"}, "summary": format!("bulk {n}")}}),
                )
                .unwrap();
        }
    }
    let jql = "project = SUP AND updated >= \"2000-01-01 00:00\" ORDER BY updated ASC, key ASC";
    let mut token: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let mut request = json!({"jql": jql, "maxResults": 100, "fields": ["summary", "updated"]});
        if let Some(t) = &token {
            request["nextPageToken"] = json!(t);
        }
        let (status, page) = site
            .call(reqwest::Method::POST, "/rest/api/3/search/jql", request)
            .await;
        assert_eq!(status, 200, "{page}");
        assert!(page.get("total").is_none() && page.get("startAt").is_none());
        pages += 1;
        for issue in page["issues"].as_array().unwrap() {
            seen.push(issue["key"].as_str().unwrap().to_string());
        }
        match page.get("nextPageToken").and_then(Value::as_str) {
            Some(t) => {
                assert_eq!(page["isLast"], false);
                token = Some(t.to_string());
            }
            None => {
                assert_eq!(page["isLast"], true);
                break;
            }
        }
    }
    assert_eq!((pages, seen.len()), (3, 230));
    assert_eq!(seen.first().map(String::as_str), Some("SUP-1"));
    assert_eq!(seen.last().map(String::as_str), Some("SUP-230"));

    // Default fields: only the id.
    let (_, page) = body(
        site.get("/rest/api/3/search/jql?jql=key%20%3D%20SUP-7")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        page["issues"],
        json!([{"id": site.sim.store().find("SUP-7").unwrap().id.to_string()}])
    );
    let (_, count) = site
        .call(
            reqwest::Method::POST,
            "/rest/api/3/search/approximate-count",
            json!({"jql": "project = SUP"}),
        )
        .await;
    assert_eq!(count["count"], 230);
    // The old offset search, for older clients.
    let (_, old) = body(site.get("/rest/api/2/search?jql=project%3DSUP%20ORDER%20BY%20key%20ASC&startAt=200&maxResults=50").send().await.unwrap()).await;
    assert_eq!(
        (
            old["total"].as_u64(),
            old["issues"].as_array().unwrap().len()
        ),
        (Some(230), 30)
    );
    assert_eq!(old["issues"][0]["key"], "SUP-201");
}

#[tokio::test]
async fn bad_jql_is_a_400_in_jiras_shape_never_a_wrong_answer() {
    let site = Site::start().await;
    for (jql, expected) in [
        (
            "project = NOPE",
            "The value 'NOPE' does not exist for the field 'project'.",
        ),
        (
            "colour = red",
            "Field 'colour' does not exist or you do not have permission to view it.",
        ),
        (
            "summary = printer",
            "The operator '=' is not supported by the 'summary' field.",
        ),
        (
            "updated >= \"yesterday\"",
            "Date value 'yesterday' for field 'updated' is invalid",
        ),
        (
            "ORDER BY key DESC",
            "Unbounded JQL queries are not allowed here.",
        ),
        // Once a panic under the store lock: must be a 400, and the site must keep serving.
        ("updated >= \"-1é\"", "is invalid"),
        ("updated >= \"-99999999999999w\"", "is invalid"),
    ] {
        let (status, error) = site
            .call(
                reqwest::Method::POST,
                "/rest/api/3/search/jql",
                json!({"jql": jql}),
            )
            .await;
        assert_eq!(status, 400, "{jql}");
        let message = error["errorMessages"][0].as_str().unwrap();
        assert!(message.contains(expected), "{jql}: {message}");
    }
    let (status, _) = site
        .call(
            reqwest::Method::POST,
            "/rest/api/3/search/jql",
            json!({"jql": "project = SUP", "startAt": 0}),
        )
        .await;
    assert_eq!(
        status, 400,
        "startAt is refused on the token-paged endpoint"
    );
    assert_eq!(
        site.get("/rest/api/3/myself")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, _) = body(
        site.get("/rest/api/3/search/jql?jql=project%3DSUP&nextPageToken=garbage")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
}

/// Requests a receiver saw: headers and raw body.
type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A webhook receiver: records every request, answers from a script (then 200).
#[derive(Clone, Default)]
struct Receiver {
    seen: Seen,
    script: Arc<Mutex<Vec<u16>>>,
}

impl Receiver {
    async fn start(script: Vec<u16>) -> (Receiver, String) {
        let receiver = Receiver {
            script: Arc::new(Mutex::new(script)),
            ..Receiver::default()
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    state.seen.lock().unwrap().push((headers, body.to_vec()));
                    let mut script = state.script.lock().unwrap();
                    let code = if script.is_empty() {
                        200
                    } else {
                        script.remove(0)
                    };
                    StatusCode::from_u16(code).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    fn events(&self) -> Vec<(HeaderMap, Value)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(h, b)| (h.clone(), serde_json::from_slice(b).unwrap()))
            .collect()
    }
}

/// An independent check of Jira's signature: HMAC-SHA256 of the raw body, lowercase hex.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(header) = headers.get("x-hub-signature").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&hex::decode(hex_sig).unwrap_or_default())
        .is_ok()
}

#[tokio::test]
async fn webhooks_are_signed_carry_jiras_envelope_and_follow_comment_events() {
    let site = Site::start().await;
    let (receiver, url) = Receiver::start(vec![]).await;
    site.sim.add_webhook(
        &url,
        Some("It's a Secret to Everybody"),
        Some("project = SUP"),
    );
    site.create("hooked").await;
    site.send(
        reqwest::Method::PUT,
        "/rest/api/3/issue/SUP-1",
        json!({"fields": {"summary": "hooked, edited"}}),
    )
    .send()
    .await
    .unwrap();
    site.send(
        reqwest::Method::POST,
        "/rest/api/3/issue/SUP-1/comment",
        json!({"body": adf("hello")}),
    )
    .send()
    .await
    .unwrap();
    assert!(site.sim.outbox().settle(Duration::from_secs(10)).await);

    let raw = receiver.seen.lock().unwrap().clone();
    assert_eq!(
        raw.len(),
        4,
        "created, updated, comment_created, issue_updated(issue_commented)"
    );
    for (headers, body) in &raw {
        assert!(
            verify("It's a Secret to Everybody", headers, body),
            "signature must verify"
        );
        assert!(headers.contains_key("x-atlassian-webhook-identifier"));
    }
    let events = receiver.events();
    let names: Vec<&str> = events
        .iter()
        .map(|(_, e)| e["webhookEvent"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"jira:issue_created") && names.contains(&"comment_created"));
    let (_, updated) = events
        .iter()
        .find(|(_, e)| {
            e["webhookEvent"] == "jira:issue_updated"
                && e["issue_event_type_name"] == "issue_updated"
        })
        .unwrap();
    assert_eq!(updated["changelog"]["items"][0]["fieldId"], "summary");
    assert_eq!(
        updated["changelog"]["items"][0]["toString"],
        "hooked, edited"
    );
    assert!(updated["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(updated["issue"]["key"], "SUP-1");
    // The v2 shape: rich text as a plain string.
    assert_eq!(
        updated["issue"]["fields"]["description"],
        "Created by a test"
    );
    let commented = events
        .iter()
        .find(|(_, e)| e["issue_event_type_name"] == "issue_commented")
        .unwrap();
    assert_eq!(commented.1["comment"]["body"], "hello");
}

#[tokio::test]
async fn a_failed_webhook_is_retried_with_the_same_identifier_and_a_retry_count() {
    let site = Site::with(Options {
        webhook_retry_delay: Duration::from_millis(20),
        ..Options::default()
    })
    .await;
    let (receiver, url) = Receiver::start(vec![503, 429]).await;
    site.sim.add_webhook(&url, None, None);
    site.create("flaky receiver").await;
    assert!(site.sim.outbox().settle(Duration::from_secs(10)).await);
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let ids: Vec<_> = seen
        .iter()
        .map(|(h, _)| h["x-atlassian-webhook-identifier"].clone())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "same identifier across retries"
    );
    assert!(!seen[0].0.contains_key("x-atlassian-webhook-retry"));
    assert_eq!(seen[2].0["x-atlassian-webhook-retry"], "2");
    assert!(
        !seen[0].0.contains_key("x-hub-signature"),
        "no secret, no signature"
    );

    // A 400 is not retried.
    let (receiver, url) = Receiver::start(vec![400]).await;
    site.sim.add_webhook(&url, None, None);
    site.create("refused").await;
    assert!(site.sim.outbox().settle(Duration::from_secs(10)).await);
    assert_eq!(receiver.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_admin_webhook_endpoint_registers_filters_and_deletes() {
    let site = Site::start().await;
    let (receiver, url) = Receiver::start(vec![]).await;
    let (status, hook) = site
        .call(
            reqwest::Method::POST,
            "/rest/webhooks/1.0/webhook",
            json!({"name": "tandem", "url": url, "events": ["jira:issue_created"],
                   "filters": {"issue-related-events-section": "labels = sync"}, "secret": "s"}),
        )
        .await;
    assert_eq!(status, 201);
    site.create("not labelled").await;
    site.send(
        reqwest::Method::POST,
        "/rest/api/3/issue",
        json!({"fields": {"project": {"key": "SUP"}, "issuetype": {"name": "Task"}, "summary": "labelled", "labels": ["sync"]}}),
    )
    .send()
    .await
    .unwrap();
    assert!(site.sim.outbox().settle(Duration::from_secs(10)).await);
    let events = receiver.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1["issue"]["fields"]["summary"], "labelled");
    let id = hook["self"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let deleted = site
        .http
        .delete(site.url(&format!("/rest/webhooks/1.0/webhook/{id}")))
        .basic_auth("sim@example.com", Some("sim-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let (status, _) = site
        .call(
            reqwest::Method::POST,
            "/rest/webhooks/1.0/webhook",
            json!({"url": url, "events": ["jira:nope"]}),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_points_budget_answers_429_with_retry_after_and_rate_limit_headers() {
    let site = Site::with(Options {
        rate_limit: 5,
        rate_window: Duration::from_secs(60),
        ..Options::default()
    })
    .await;
    let mut last = None;
    for _ in 0..5 {
        last = Some(site.get("/rest/api/3/myself").send().await.unwrap());
    }
    let last = last.unwrap();
    assert_eq!(last.status(), 200);
    assert_eq!(last.headers()["x-ratelimit-limit"], "5");
    assert_eq!(last.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(last.headers()["x-ratelimit-nearlimit"], "true");
    let reset = last.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        chrono::NaiveDateTime::parse_from_str(&reset, "%Y-%m-%dT%H:%MZ").is_ok(),
        "{reset}"
    );
    let limited = site.get("/rest/api/3/myself").send().await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(
        limited.headers()["ratelimit-reason"],
        "jira-quota-tenant-based"
    );
}

#[tokio::test]
async fn the_burst_limit_is_per_endpoint_and_second_and_answers_429_burst_based() {
    let site = Site::with(Options {
        burst_limit: 3,
        ..Options::default()
    })
    .await;
    for _ in 0..3 {
        let ok = site.get("/rest/api/3/myself").send().await.unwrap();
        assert_eq!(ok.status(), 200);
        // No quota here: the quota's headers stay away.
        assert!(ok.headers().get("x-ratelimit-remaining").is_none());
    }
    let limited = site.get("/rest/api/3/myself").send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_eq!(limited.headers()["ratelimit-reason"], "jira-burst-based");
    let (_, error) = body(limited).await;
    assert!(error["errorMessages"].is_array());
    // Another endpoint has its own second.
    let other = site.get("/rest/api/3/issue/SUP-1").send().await.unwrap();
    assert_ne!(other.status(), 429);
    // The next second starts afresh.
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    let again = site.get("/rest/api/3/myself").send().await.unwrap();
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn injected_faults_are_vendor_shaped_and_calls_are_counted_by_endpoint() {
    let site = Site::start().await;
    site.create("count me").await;
    site.get("/rest/api/3/issue/SUP-1").send().await.unwrap();
    site.get("/rest/api/2/issue/SUP-1").send().await.unwrap();
    let (_, calls) = body(
        site.http
            .get(site.url("/__sim/calls"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(calls["by_endpoint"]["GET /rest/api/{v}/issue/{key}"], 2);
    assert_eq!(calls["by_endpoint"]["POST /rest/api/{v}/issue"], 1);

    let set = |faults: Value| {
        site.http
            .put(site.url("/__sim/faults"))
            .json(&faults)
            .send()
    };
    assert_eq!(set(json!({"error_rate": 1.0})).await.unwrap().status(), 200);
    let (status, error) = body(site.get("/rest/api/3/myself").send().await.unwrap()).await;
    assert!(status == 500 || status == 503);
    assert!(error["errorMessages"].is_array());
    set(json!({"rate_limit_rate": 1.0, "retry_after_secs": 7}))
        .await
        .unwrap();
    let storm = site.get("/rest/api/3/myself").send().await.unwrap();
    assert_eq!(
        (
            storm.status().as_u16(),
            storm.headers()["retry-after"].to_str().unwrap()
        ),
        (429, "7")
    );
    set(json!({"hang_rate": 1.0})).await.unwrap();
    let hung = site
        .get("/rest/api/3/myself")
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
    set(json!({"latency_ms": 100})).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        site.get("/rest/api/3/myself")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(set(json!({"error_rate": 2.0})).await.unwrap().status(), 400);

    let (receiver, url) = Receiver::start(vec![]).await;
    site.sim.add_webhook(&url, None, None);
    set(json!({"drop_webhooks": true})).await.unwrap();
    site.create("dropped").await;
    assert!(site.sim.outbox().settle(Duration::from_secs(5)).await);
    assert!(receiver.seen.lock().unwrap().is_empty());
    let (_, state) = body(
        site.http
            .get(site.url("/__sim/state"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(state["issues"].as_array().unwrap().len(), 2);
    assert_eq!(state["deliveries"][0]["status"], "dropped");
}

#[tokio::test]
async fn every_v3_answer_conforms_to_the_published_openapi_description() {
    let spec = openapi::Spec::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/api/jira-cloud-openapi-v3.json"),
    );
    let site = Site::start().await;
    site.create("conformance").await;
    site.send(
        reqwest::Method::POST,
        "/rest/api/3/issue/SUP-1/comment",
        json!({"body": adf("c")}),
    )
    .send()
    .await
    .unwrap();
    site.send(
        reqwest::Method::PUT,
        "/rest/api/3/issue/SUP-1/properties/p",
        json!({"a": 1}),
    )
    .send()
    .await
    .unwrap();
    site.send(
        reqwest::Method::PUT,
        "/rest/api/3/issue/SUP-1",
        json!({"fields": {"summary": "conformance 2"}}),
    )
    .send()
    .await
    .unwrap();
    let comment_id = site.sim.store().find("SUP-1").unwrap().comments[0].id;
    let issue_create = json!({"fields": {"project": {"key": "SUP"}, "issuetype": {"name": "Task"}, "summary": "x"}});
    // (method, spec path, concrete path, body, expected status)
    let calls: Vec<(&str, &str, String, Option<Value>, u16)> = vec![
        (
            "get",
            "/rest/api/3/myself",
            "/rest/api/3/myself".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/serverInfo",
            "/rest/api/3/serverInfo".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/field",
            "/rest/api/3/field".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/priority",
            "/rest/api/3/priority".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/status",
            "/rest/api/3/status".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/issuetype",
            "/rest/api/3/issuetype".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/project",
            "/rest/api/3/project".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/project/search",
            "/rest/api/3/project/search".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/project/{projectIdOrKey}",
            "/rest/api/3/project/SUP".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/issue/createmeta/{projectIdOrKey}/issuetypes",
            "/rest/api/3/issue/createmeta/SUP/issuetypes".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/issue/createmeta/{projectIdOrKey}/issuetypes/{issueTypeId}",
            "/rest/api/3/issue/createmeta/SUP/issuetypes/10001".into(),
            None,
            200,
        ),
        (
            "post",
            "/rest/api/3/issue",
            "/rest/api/3/issue".into(),
            Some(issue_create.clone()),
            201,
        ),
        (
            "post",
            "/rest/api/3/issue/bulk",
            "/rest/api/3/issue/bulk".into(),
            Some(json!({"issueUpdates": [issue_create]})),
            201,
        ),
        (
            "get",
            "/rest/api/3/issue/{issueIdOrKey}",
            "/rest/api/3/issue/SUP-1?expand=renderedFields,names,changelog,transitions".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/issue/{issueIdOrKey}",
            "/rest/api/3/issue/SUP-99".into(),
            None,
            404,
        ),
        (
            "put",
            "/rest/api/3/issue/{issueIdOrKey}",
            "/rest/api/3/issue/SUP-1".into(),
            Some(json!({"fields": {"status": {"name": "Done"}}})),
            400,
        ),
        (
            "get",
            "/rest/api/3/issue/{issueIdOrKey}/changelog",
            "/rest/api/3/issue/SUP-1/changelog".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/issue/{issueIdOrKey}/transitions",
            "/rest/api/3/issue/SUP-1/transitions".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/issue/{issueIdOrKey}/comment",
            "/rest/api/3/issue/SUP-1/comment".into(),
            None,
            200,
        ),
        (
            "post",
            "/rest/api/3/issue/{issueIdOrKey}/comment",
            "/rest/api/3/issue/SUP-1/comment".into(),
            Some(json!({"body": adf("d")})),
            201,
        ),
        (
            "get",
            "/rest/api/3/issue/{issueIdOrKey}/comment/{id}",
            format!("/rest/api/3/issue/SUP-1/comment/{comment_id}"),
            None,
            200,
        ),
        (
            "put",
            "/rest/api/3/issue/{issueIdOrKey}/comment/{id}",
            format!("/rest/api/3/issue/SUP-1/comment/{comment_id}"),
            Some(json!({"body": adf("e")})),
            200,
        ),
        (
            "get",
            "/rest/api/3/issue/{issueIdOrKey}/properties",
            "/rest/api/3/issue/SUP-1/properties".into(),
            None,
            200,
        ),
        (
            "get",
            "/rest/api/3/issue/{issueIdOrKey}/properties/{propertyKey}",
            "/rest/api/3/issue/SUP-1/properties/p".into(),
            None,
            200,
        ),
        (
            "post",
            "/rest/api/3/search/jql",
            "/rest/api/3/search/jql".into(),
            Some(json!({"jql": "project = SUP", "fields": ["*all"], "maxResults": 1})),
            200,
        ),
        (
            "get",
            "/rest/api/3/search/jql",
            "/rest/api/3/search/jql?jql=project%3DSUP&fields=summary,status".into(),
            None,
            200,
        ),
        (
            "post",
            "/rest/api/3/search/jql",
            "/rest/api/3/search/jql".into(),
            Some(json!({"jql": "colour = red"})),
            400,
        ),
        (
            "post",
            "/rest/api/3/search/approximate-count",
            "/rest/api/3/search/approximate-count".into(),
            Some(json!({"jql": "project = SUP"})),
            200,
        ),
        (
            "get",
            "/rest/api/3/search",
            "/rest/api/3/search?jql=project%3DSUP".into(),
            None,
            200,
        ),
    ];
    let mut failures = Vec::new();
    for (method, spec_path, path, request_body, expected) in calls {
        let method_upper = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut request = site
            .http
            .request(method_upper, site.url(&path))
            .basic_auth("sim@example.com", Some("sim-token"));
        if let Some(b) = &request_body {
            request = request.json(b);
        }
        let (status, answer) = body(request.send().await.unwrap()).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        // Error answers without their own schema are Jira's documented ErrorCollection.
        let schema = spec
            .response_schema(method, spec_path, status)
            .or_else(|| {
                (status >= 400)
                    .then(|| spec.named("ErrorCollection"))
                    .flatten()
            })
            .unwrap_or_else(|| {
                panic!("the description has no JSON schema for {method} {spec_path} {status}")
            });
        for problem in spec.check(schema, &answer) {
            failures.push(format!("{method} {path} → {status}: {problem}"));
        }
    }
    assert!(
        failures.is_empty(),
        "non-conforming answers:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_seed_file_adds_projects_fields_accounts_and_replaces_the_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.json");
    std::fs::write(
        &seed,
        json!({
            "projects": [{"key": "OPS", "name": "Operations"}],
            "custom_fields": [{"id": "customfield_10100", "name": "Case Number", "type": "string"}],
            "accounts": [{"email": "ann@example.com", "display_name": "Ann", "api_token": "ann-token"}],
            "workflow": {
                "statuses": [{"name": "Open", "category": "new"}, {"name": "Closed", "category": "done"}],
                "transitions": [{"name": "Close", "from": ["Open"], "to": "Closed"},
                                {"name": "Reopen", "from": ["Closed"], "to": "Open"}]
            }
        })
        .to_string(),
    )
    .unwrap();
    let site = Site::with(Options {
        no_seed: true,
        seed_file: Some(seed),
        ..Options::default()
    })
    .await;
    let (status, _) = body(site.get("/rest/api/3/project/SUP").send().await.unwrap()).await;
    assert_eq!(status, 404, "--no-seed leaves out the default project");
    let created = site
        .http
        .post(site.url("/rest/api/3/issue"))
        .basic_auth("ann@example.com", Some("ann-token"))
        .json(&json!({"fields": {"project": {"key": "OPS"}, "issuetype": {"name": "Bug"}, "summary": "s", "customfield_10100": "00001001"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let (_, issue) = body(site.get("/rest/api/3/issue/OPS-1").send().await.unwrap()).await;
    assert_eq!(issue["fields"]["status"]["name"], "Open");
    assert_eq!(issue["fields"]["reporter"]["displayName"], "Ann");
    let (_, t) = body(
        site.get("/rest/api/3/issue/OPS-1/transitions")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(t["transitions"][0]["name"], "Close");
    assert_eq!(t["transitions"][0]["to"]["statusCategory"]["key"], "done");
}

#[tokio::test]
async fn an_inconsistent_seed_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.json");
    std::fs::write(
        &seed,
        r#"{"workflow":{"statuses":[{"name":"Open","category":"new"}],"transitions":[{"name":"x","from":["Open"],"to":"Gone"}]}}"#,
    )
    .unwrap();
    let error = JiraSim::start(Options {
        seed_file: Some(seed),
        ..Options::default()
    })
    .await
    .err()
    .expect("refused");
    assert!(
        error.to_string().contains("unknown status `Gone`"),
        "{error}"
    );
}

#[tokio::test]
async fn faults_can_be_set_at_start_and_invalid_ones_are_refused() {
    let faults = tandem::sim::control::Faults {
        rate_limit_rate: 1.0,
        retry_after_secs: 3,
        ..Default::default()
    };
    let site = Site::with(Options {
        faults,
        ..Options::default()
    })
    .await;
    let storm = site.get("/rest/api/3/myself").send().await.unwrap();
    assert_eq!(storm.status(), 429);
    assert_eq!(storm.headers()["retry-after"], "3");
    let invalid = tandem::sim::control::Faults {
        hang_rate: 1.5,
        ..Default::default()
    };
    let error = JiraSim::start(Options {
        faults: invalid,
        ..Options::default()
    })
    .await
    .err()
    .expect("refused");
    assert!(
        error
            .to_string()
            .contains("hang_rate must be between 0 and 1"),
        "{error}"
    );
}
