//! The operator dashboard at `/`: how it is served (plain HTTP), and what an operator does with it
//! in headless Chromium: see a dead letter a failing emulator caused, replay it, see it resolve.
//!
//! The browser test needs Debian's `chromium` and `chromium-driver`. Without them it skips
//! loudly, unless `TANDEM_BROWSER_TESTS=1` (as in CI) makes their absence a failure.
//! `TANDEM_SCREENSHOT=1` also saves the page with data on it to `docs/dashboard.png`.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sims::{Sims, JIRA_SECRET, SF_TOKEN};
use common::TestApp;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tandem::sim::salesforce::notify::OutboundMessage;

const TOKEN: &str = "dashboard-admin-token";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; \
                   form-action 'self'";

/// Settings with the admin token read from a file, as a deployment configures it.
fn admin_overlay(dir: &Path) -> String {
    let file = dir.join("admin-token");
    std::fs::write(&file, TOKEN).unwrap();
    format!("[admin]\ntoken = {{ file = \"{}\" }}\n", file.display())
}

async fn get(
    app: &TestApp,
    path: &str,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let response = app.client.get(app.url(path)).send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn the_page_needs_no_token_and_is_served_under_a_strict_content_security_policy() {
    let secrets = tempfile::tempdir().unwrap();
    // With the admin API on and off alike: the page must load to say which it is.
    for overlay in [admin_overlay(secrets.path()), String::new()] {
        let app = common::spawn_app_with(&overlay).await;
        let (status, headers, body) = get(&app, "/").await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&headers, "content-security-policy"), CSP);
        assert_eq!(header(&headers, "cache-control"), "no-cache");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert!(body.starts_with("<!doctype html>"), "{body}");
        assert!(body.contains(r#"<script src="assets/dashboard.js" defer></script>"#));
        assert!(body.contains(r#"<link rel="stylesheet" href="assets/dashboard.css">"#));
        app.stop().await;
    }
}

#[tokio::test]
async fn assets_are_served_with_their_types_and_an_unknown_one_is_404() {
    let app = common::spawn_app().await;
    for (path, content_type) in [
        ("/assets/dashboard.js", "text/javascript; charset=utf-8"),
        ("/assets/dashboard.css", "text/css; charset=utf-8"),
    ] {
        let (status, headers, body) = get(&app, path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&headers, "content-type"), content_type, "{path}");
        assert_eq!(header(&headers, "cache-control"), "no-cache", "{path}");
        assert_eq!(header(&headers, "content-security-policy"), CSP, "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    for path in [
        "/assets/nope.js",
        "/assets/index.html",
        "/assets/..%2F..%2FCargo.toml",
        "/assets/",
    ] {
        let (status, headers, body) = get(&app, path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(
            header(&headers, "content-type"),
            "application/json",
            "{path}"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    app.stop().await;
}

/// What the policy forbids is also kept out of the files, so nothing depends on a browser
/// enforcing it: no other origin, no inline code or style, no markup built from strings.
#[tokio::test]
async fn the_page_references_nothing_outside_the_daemon_and_builds_no_markup_from_strings() {
    let app = common::spawn_app().await;
    let (_, _, html) = get(&app, "/").await;
    let (_, _, js) = get(&app, "/assets/dashboard.js").await;
    let (_, _, css) = get(&app, "/assets/dashboard.css").await;
    for (name, text) in [("page", &html), ("script", &js), ("stylesheet", &css)] {
        for external in [
            "http://",
            "https://",
            "src=\"//",
            "href=\"//",
            "url(",
            "@import",
        ] {
            assert!(!text.contains(external), "the {name} contains `{external}`");
        }
    }
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=").count(),
        "inline script"
    );
    for inline in [
        "<style",
        " style=",
        " onclick=",
        " onload=",
        " onsubmit=",
        "javascript:",
    ] {
        assert!(!html.contains(inline), "the page contains `{inline}`");
    }
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        ".style.",
        "localStorage",
    ] {
        assert!(!js.contains(sink), "the script uses `{sink}`");
    }
    app.stop().await;
}

// ---- in headless Chromium ----

/// A realtime flow between the emulators, quick to give up on a failing write.
const FLOW: &str = r#"
[ingest]
safety_poll_interval = "1h"

[dispatch]
idle_wait = "10ms"
base_delay = "50ms"
max_delay = "200ms"
max_attempts = 3
breaker_cooldown = "200ms"

[flows.support]
left = { connector = "jira", object = "issue", filter = "project = SUP", marker = "customfield_10050" }
right = { connector = "salesforce", object = "Case", marker = "Jira_Key__c" }
conflict = "last_write_wins"

[flows.support.defaults.left]
project = { key = "SUP" }
issuetype = { name = "Task" }

[flows.support.defaults.right]
Origin = "Web"

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
map = { Highest = "High", High = "High", Medium = "Medium", Low = "Low", Lowest = "Low" }
reverse_map = { High = "High", Medium = "Medium", Low = "Low" }

[[flows.support.fields]]
left = "status.name"
right = "Status"
map = { "To Do" = "New", "In Progress" = "Working", "Done" = "Closed" }

# A scheduled flow, for its runs: customer accounts become onboarding issues.
[flows.onboarding]
mode = { scheduled = { every = "1h" } }
direction = "right_to_left"
left = { connector = "jira", object = "issue", filter = "project = SUP", marker = "customfield_10051" }
right = { connector = "salesforce", object = "Account" }

[flows.onboarding.defaults.left]
project = { key = "SUP" }
issuetype = { name = "Task" }

[[flows.onboarding.fields]]
left = "summary"
right = "Name"
"#;

const WAIT: Duration = Duration::from_secs(20);

/// The emulators and the daemon between them, with the admin API on.
struct World {
    sims: Sims,
    app: TestApp,
    http: reqwest::Client,
}

impl World {
    async fn start() -> World {
        let sims = Sims::start().await;
        let dir = tempfile::tempdir().unwrap();
        let extra = format!("{FLOW}\n{}", admin_overlay(dir.path()));
        let settings = common::settings(&dir, &sims.config(&dir, &extra));
        let app = common::spawn_with(settings, dir).await;
        sims.jira
            .add_webhook(&app.url("/webhooks/jira"), Some(JIRA_SECRET), None);
        sims.sf
            .add_outbound_message(OutboundMessage {
                url: app.url(&format!("/webhooks/salesforce/{SF_TOKEN}")),
                object: "Case".into(),
                fields: [
                    "Subject",
                    "Description",
                    "Priority",
                    "Status",
                    "Jira_Key__c",
                    "SystemModstamp",
                ]
                .map(String::from)
                .to_vec(),
            })
            .unwrap();
        World {
            sims,
            app,
            http: reqwest::Client::new(),
        }
    }

    async fn stop(self) {
        self.app.stop().await;
        self.sims.stop().await;
    }

    async fn admin(&self, path: &str) -> Value {
        let response = self
            .http
            .get(self.app.url(&format!("/api/v1{path}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    async fn issue(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .http
            .request(method, format!("{}{path}", self.sims.jira.base_url()))
            .basic_auth("sim@example.com", Some("sim-token"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{path}");
        response.json().await.unwrap_or(Value::Null)
    }

    async fn create_issue(&self, summary: &str, priority: &str) -> String {
        let created = self
            .issue(
                reqwest::Method::POST,
                "/rest/api/3/issue",
                json!({"fields": {
                    "project": {"key": "SUP"},
                    "issuetype": {"name": "Task"},
                    "summary": summary,
                    "priority": {"name": priority},
                }}),
            )
            .await;
        created["id"].as_str().unwrap().to_string()
    }

    /// The Case an issue was synced to, once the flow has linked them.
    async fn case_of(&self, issue: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let links = self.app.journal.links("support").await.unwrap();
            if let Some(link) = links.into_iter().find(|l| l.left_id == issue) {
                return link.right_id;
            }
            assert!(Instant::now() < deadline, "issue {issue} was never synced");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until every change is settled and the emulators have delivered their notifications,
    /// so that only the change made next can fail.
    async fn settle(&self) {
        let deadline = Instant::now() + WAIT;
        // Quiet twice in a row: a write's echo may still be on its way.
        let mut quiet = 0;
        while quiet < 2 {
            self.sims.jira.outbox().settle(WAIT).await;
            self.sims.sf.settle(WAIT).await;
            let flows = self.admin("/flows").await;
            let busy: u64 = flows["flows"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|f| ["left", "right"].map(|s| f["sides"][s].clone()))
                .map(|s| s["pending"].as_u64().unwrap() + s["in_flight"].as_u64().unwrap())
                .sum();
            quiet = if busy == 0 { quiet + 1 } else { 0 };
            assert!(Instant::now() < deadline, "the journal never drained");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn faults(&self, faults: Value) {
        let response = self
            .http
            .put(format!("{}/__sim/faults", self.sims.sf.base_url()))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
}

/// Where a program is on `PATH`.
fn installed(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Chromium and its driver, or `None` after saying loudly why the test does not run.
fn browser_or_skip() -> Option<(PathBuf, PathBuf)> {
    let chromium = installed(&["chromium", "chromium-browser"]);
    let driver = installed(&["chromedriver"]);
    if let (Some(chromium), Some(driver)) = (&chromium, &driver) {
        return Some((chromium.clone(), driver.clone()));
    }
    let missing = [
        chromium.is_none().then_some("chromium"),
        driver.is_none().then_some("chromedriver"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" and ");
    if std::env::var("TANDEM_BROWSER_TESTS").as_deref() == Ok("1") {
        panic!(
            "TANDEM_BROWSER_TESTS=1 but the browser test cannot run: {missing} not found \
             on PATH (apt-get install chromium chromium-driver)"
        );
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of a passing
    // test, and a skip nobody sees is a pass nobody earned.
    let banner = format!(
        "\n************************************************************\n\
         skipped: chromium not installed ({missing} missing); the dashboard \
         was not tested in a browser. apt-get install chromium chromium-driver, \
         or set TANDEM_BROWSER_TESTS=1 to make this a failure.\n\
         ************************************************************\n"
    );
    let _ = std::io::stderr().write_all(banner.as_bytes());
    None
}

/// chromedriver on a loopback port, driving a fresh headless Chromium profile.
struct Browser {
    client: Client,
    driver: Child,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = profile.path().join("chromedriver.log");
        // chromedriver cannot be asked for a port of its choosing: take a free one from the OS.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            let status = reqwest::get(format!("{url}/status")).await;
            if let Ok(response) = status {
                if response.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let user_data = profile.path().join("user-data");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", user_data.display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a Chromium session");
        // The window's size includes what the browser draws around the page: make the page
        // itself 1280x900, the size the README's screenshot is taken at.
        let chrome = client
            .execute(
                "return [window.outerWidth - window.innerWidth, \
                 window.outerHeight - window.innerHeight];",
                vec![],
            )
            .await
            .unwrap();
        let extra = |i: usize| chrome[i].as_u64().unwrap_or(0) as u32;
        client
            .set_window_size(1280 + extra(0), 900 + extra(1))
            .await
            .unwrap();
        Browser {
            client,
            driver,
            log,
            _profile: profile,
        }
    }

    /// Close the browser, then its driver; on failure, show what the driver saw.
    async fn stop(mut self, failed: bool) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        if failed {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "chromedriver log (last lines):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// The text of the first element `css` finds once it contains `needle`.
async fn wait_text(client: &Client, css: &str, needle: &str) -> String {
    wait_until(client, css, needle, |text| text.contains(needle)).await
}

/// The text of the first element `css` finds once `ready` accepts it.
async fn wait_until(
    client: &Client,
    css: &str,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        // The page redraws while we look: a vanished element is tried again.
        if let Ok(element) = client.find(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                if ready(&text) {
                    return text;
                }
                last = text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "`{css}` never showed {what:?}; last seen: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_gone(client: &Client, css: &str) {
    let deadline = Instant::now() + WAIT;
    while !client.find_all(Locator::Css(css)).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "`{css}` is still on the page");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(client: &Client, css: &str) {
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("`{css}`: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click `{css}`: {e}"));
}

async fn type_into(client: &Client, css: &str, text: &str) {
    let field = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("`{css}`: {e}"));
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

#[tokio::test]
async fn in_chromium_a_dead_letter_from_a_failing_emulator_is_replayed_and_resolves() {
    let Some((chromium, chromedriver)) = browser_or_skip() else {
        return;
    };
    let started = Instant::now();
    let world = World::start().await;
    let browser = Browser::start(&chromium, &chromedriver).await;
    // Run the scenario as its own task so that a failed assertion still closes the browser.
    let outcome = tokio::spawn(scenario(world, browser.client.clone())).await;
    browser.stop(outcome.is_err()).await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
    eprintln!("browser test took {:.1?}", started.elapsed());
}

async fn scenario(world: World, browser: Client) {
    // Some history first, so the page has something to show besides the failure.
    let calm = world.create_issue("VPN drops every hour", "Medium").await;
    let issue = world.create_issue("Printer on fire", "High").await;
    world.case_of(&calm).await;
    let case = world.case_of(&issue).await;
    world.settle().await;

    // Salesforce refuses every call from now on: the issue's next change cannot be written.
    world.faults(json!({"error_rate": 1.0})).await;
    world
        .issue(
            reqwest::Method::PUT,
            &format!("/rest/api/3/issue/{issue}"),
            json!({"fields": {"summary": "Printer on fire, toner everywhere"}}),
        )
        .await;
    let deadline = Instant::now() + WAIT;
    let letter = loop {
        let page = world.admin("/dead-letters?status=open").await;
        if let Some(letter) = page["items"].as_array().and_then(|items| items.first()) {
            break letter.clone();
        }
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letter["record_id"], issue.as_str());
    assert_eq!(
        world.admin("/dead-letters?status=open").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "only the edit made during the outage fails"
    );
    let id = letter["id"].as_i64().unwrap();
    let vendor_message = letter["vendor_message"].as_str().unwrap().to_string();

    // A wrong token is refused and asked for again; the right one opens the dashboard.
    browser.goto(&world.app.url("/")).await.unwrap();
    type_into(&browser, "#token", "not-the-token").await;
    click(&browser, "#token-form button[type=submit]").await;
    wait_text(&browser, "#login-error", "refused").await;
    type_into(&browser, "#token", TOKEN).await;
    click(&browser, "#token-form button[type=submit]").await;

    let row = format!("#dl-{id}");
    let text = wait_text(&browser, &row, &vendor_message).await;
    assert!(text.contains(&issue), "{text}");
    assert!(text.contains("support"), "{text}");
    wait_text(&browser, "tr[data-flow=support]", "jira issue").await;
    wait_text(&browser, "tr[data-connector=salesforce]", "salesforce").await;

    // A scheduled flow's runs: started from the page, shown with their figures.
    world
        .sims
        .sf
        .insert("Account", json!({"Name": "Globex onboarding"}))
        .unwrap();
    click(&browser, "tr[data-flow=onboarding] button[data-action=run]").await;
    wait_text(&browser, "#notice", "Run #1 of onboarding started").await;
    // Salesforce is failing here (a 500 or a 503): the run says so, with the vendor's answer.
    let run = wait_text(&browser, "tr[data-flow=onboarding]", "failed run #1").await;
    assert!(run.contains("polling salesforce/Account"), "{run}");
    assert!(run.contains("HTTP 50"), "{run}");

    // The record's story so far: linked, then the change that failed.
    click(&browser, &format!("{row} button.link")).await;
    wait_text(&browser, "#record", &case).await;
    let failed = wait_text(&browser, "#record tr[data-change]", "dead").await;
    assert!(failed.contains(&format!("#{id} open")), "{failed}");
    if std::env::var("TANDEM_SCREENSHOT").as_deref() == Ok("1") {
        screenshot(&browser).await;
    }

    // The payload that was refused, pretty-printed.
    click(&browser, &format!("{row} button[data-action=payload]")).await;
    let payload = wait_text(&browser, &format!("#dl-payload-{id}"), "toner everywhere").await;
    assert!(payload.contains("\"Subject\""), "{payload}");

    // The target is back; the operator presses Replay.
    world.faults(json!({})).await;
    click(&browser, &format!("{row} button[data-action=replay]")).await;
    wait_text(&browser, "#notice", &format!("Dead letter #{id} replayed")).await;
    wait_gone(&browser, &row).await;
    let deadline = Instant::now() + WAIT;
    while world.sims.sf.record(&case).unwrap()["Subject"] != "Printer on fire, toner everywhere" {
        assert!(Instant::now() < deadline, "the Case was never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Salesforce is back: the next run of the scheduled flow goes through.
    click(&browser, "tr[data-flow=onboarding] button[data-action=run]").await;
    let run = wait_text(&browser, "tr[data-flow=onboarding]", "succeeded run #2").await;
    assert!(run.contains("written 1"), "{run}");
    assert_eq!(
        world.admin(&format!("/dead-letters/{id}")).await["status"],
        "replayed"
    );

    // Among the replayed letters, and in the record's history: written by the replay.
    click(&browser, "#dl-status option[value=replayed]").await;
    wait_text(
        &browser,
        &format!("{row}[data-status=replayed]"),
        "replayed",
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while world.admin(&format!("/records/jira/issue/{issue}")).await["history"][0]["outcome"]
        != "written"
    {
        assert!(Instant::now() < deadline, "the replay never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    click(&browser, &format!("{row} button.link")).await;
    let record = wait_text(&browser, "#record", &case).await;
    let newest = wait_text(&browser, "#record tr[data-change]", "replay").await;
    assert!(newest.contains("written"), "{newest}\n{record}");
    wait_text(&browser, "#record", &format!("#{id} replayed")).await;
    wait_until(
        &browser,
        "tr[data-flow=support] td:nth-child(5)",
        "no open dead letter",
        |text| text.trim() == "0",
    )
    .await;

    // Forgetting the token returns to the form.
    click(&browser, "#forget").await;
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#login:not([hidden])"))
        .await
        .unwrap();
    world.stop().await;

    // A daemon without an admin token: the page says so instead of asking for one.
    let app = common::spawn_app().await;
    browser.goto(&app.url("/")).await.unwrap();
    wait_text(&browser, "#disabled:not([hidden])", "admin.token").await;
    assert!(browser.find(Locator::Css("#login[hidden]")).await.is_ok());
    app.stop().await;
}

/// The page with data on it, for the README.
async fn screenshot(browser: &Client) {
    browser
        .execute("window.scrollTo(0, 0);", vec![])
        .await
        .unwrap();
    let png = browser.screenshot().await.unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot saved to {}", path.display());
}
