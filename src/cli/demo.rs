//! `tandem demo`: both vendor emulators and the daemon in one process on loopback, a realtime and
//! a scheduled flow between them, live edits on both sides, and what syncs printed as it happens.
//!
//! Everything lives in a data directory of its own (a fresh temporary one by default, removed at
//! exit), so the demo never reads `config/local.toml` nor touches `./data`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use rand::seq::IndexedRandom as _;
use rand::Rng as _;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::{FlowSettings, LogFormat, Settings, Sources};
use crate::journal::Journal;
use crate::sim::jira::{self, JiraSim};
use crate::sim::salesforce::notify::OutboundMessage;
use crate::sim::salesforce::{self, SalesforceSim, ORG_ID};

#[derive(Clone, clap::Args)]
pub struct DemoArgs {
    /// Address of the daemon (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = loopback)]
    pub listen: SocketAddr,
    /// Address of the Jira Cloud emulator (loopback only).
    #[arg(long, default_value = "127.0.0.1:8081", value_parser = loopback)]
    pub jira_listen: SocketAddr,
    /// Address of the Salesforce emulator (loopback only).
    #[arg(long, default_value = "127.0.0.1:8082", value_parser = loopback)]
    pub salesforce_listen: SocketAddr,
    /// Stop by itself after this long (e.g. `30s`); default: run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Keep the database, config and secrets here (kept at exit); default: a fresh temporary
    /// directory, removed at exit.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// How often to make a live edit on one side or the other.
    #[arg(long, default_value = "3s", value_parser = positive_duration)]
    pub edit_every: Duration,
}

/// The emulators answer without authentication under `/__sim/`: never on a public interface.
fn loopback(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|e| format!("`{text}` is not an address like 127.0.0.1:8080 ({e})"))?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!(
            "the demo listens on loopback only (127.0.0.1 or ::1), not {}",
            addr.ip()
        ))
    }
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        Err("must be longer than 0s".into())
    } else {
        Ok(duration)
    }
}

/// Exit codes: 0 after a clean stop, 1 if anything could not start.
pub fn main(args: DemoArgs, log_format: Option<LogFormat>) -> ExitCode {
    // The demo's own lines go to stdout; the daemon's logs (stderr) only when something is wrong,
    // unless RUST_LOG asks for more.
    crate::telemetry::init(log_format.unwrap_or(LogFormat::Pretty), "warn");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args));
    // Emulator webhook retries may still be sleeping: they are not worth waiting for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The data directory; a temporary one is removed when this is dropped, on every exit path.
struct DataDir {
    path: PathBuf,
    remove: bool,
}

impl DataDir {
    fn new(given: Option<PathBuf>) -> anyhow::Result<DataDir> {
        let (path, remove) = match given {
            Some(path) => (path, false),
            None => (
                std::env::temp_dir().join(format!("tandem-demo-{}", uuid::Uuid::new_v4().simple())),
                true,
            ),
        };
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the data directory {}", path.display()))?;
        // Links in an old database name records of emulators that no longer exist, and its
        // secrets are not this run's: a given directory must not hold an earlier demo.
        if !remove
            && ["tandem.db", "tandem.toml", "admin-token"]
                .iter()
                .any(|name| path.join(name).exists())
        {
            return Err(anyhow!(
                "{} already holds an earlier demo; give an empty directory to --data-dir",
                path.display()
            ));
        }
        // The config names the database and secret files by path: absolute, whatever the cwd.
        let path = std::path::absolute(&path)
            .with_context(|| format!("resolving the data directory {}", path.display()))?;
        Ok(DataDir { path, remove })
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.remove {
            if let Err(error) = std::fs::remove_dir_all(&self.path) {
                eprintln!("warning: could not remove {}: {error}", self.path.display());
            }
        }
    }
}

/// Secrets as an operator would deploy them: one file each, readable by the owner only.
fn write_secret(dir: &Path, name: &str, value: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("writing the secret file {}", path.display()))?;
    std::io::Write::write_all(&mut file, value.as_bytes())
        .with_context(|| format!("writing the secret file {}", path.display()))?;
    Ok(path)
}

fn random_secret() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    hex::encode(bytes)
}

/// A TOML literal string: no escapes, so any path without a `'` is safe.
fn literal(path: &Path) -> anyhow::Result<String> {
    let text = path.display().to_string();
    if text.contains('\'') || text.contains('\n') {
        return Err(anyhow!(
            "the path {text} cannot be written in the demo's config"
        ));
    }
    Ok(format!("'{text}'"))
}

struct Secrets {
    jira_webhook: String,
    sf_webhook: String,
    admin: String,
}

/// The demo's configuration: what an operator would write in `config/local.toml`.
fn config_toml(
    data: &Path,
    jira: &str,
    sf: &str,
    listen: SocketAddr,
    secrets: &Secrets,
) -> anyhow::Result<String> {
    let jira_token = literal(&write_secret(data, "jira-api-token", "sim-token")?)?;
    let jira_secret = literal(&write_secret(
        data,
        "jira-webhook-secret",
        &secrets.jira_webhook,
    )?)?;
    let sf_secret = literal(&write_secret(
        data,
        "salesforce-client-secret",
        "sim-secret",
    )?)?;
    let sf_token = literal(&write_secret(
        data,
        "salesforce-webhook-token",
        &secrets.sf_webhook,
    )?)?;
    let admin = literal(&write_secret(data, "admin-token", &secrets.admin)?)?;
    let db = data.join("tandem.db");
    Ok(format!(
        r#"# Written by `tandem demo`. Secrets are files beside this one, never inline.

[server]
listen = "{listen}"
shutdown_timeout = "5s"

[storage]
url = "sqlite://{db}"

[admin]
token = {{ file = {admin} }}

[ingest]
# Webhooks carry the realtime flow; the safety poll is a net, not the show.
safety_poll_interval = "1m"

[dispatch]
# Short waits so a change shows on the other side within a blink.
idle_wait = "20ms"
base_delay = "200ms"
max_delay = "2s"
max_attempts = 5

[connectors.jira]
kind = "jira"
base_url = "{jira}"
auth = {{ method = "basic", email = "sim@example.com", api_token = {{ file = {jira_token} }} }}
webhook_secret = {{ file = {jira_secret} }}
[connectors.jira.limits]
requests_per_second = 50
timeout = "5s"

[connectors.salesforce]
kind = "salesforce"
base_url = "{sf}"
auth = {{ method = "client_credentials", client_id = "sim-client", client_secret = {{ file = {sf_secret} }} }}
organization_id = "{ORG_ID}"
webhook_secret = {{ file = {sf_token} }}
[connectors.salesforce.limits]
requests_per_second = 50
timeout = "5s"

# Support issues in Jira project SUP <-> Salesforce cases, as they happen.
[flows.support]
left = {{ connector = "jira", object = "issue", filter = "project = SUP", marker = "customfield_10050" }}
right = {{ connector = "salesforce", object = "Case", marker = "Jira_Key__c" }}
direction = "both"
mode = "realtime"
conflict = "last_write_wins"
# Comment sync is not built yet.
comments = false

[flows.support.defaults.left]
project = {{ key = "SUP" }}
issuetype = {{ name = "Task" }}

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
map = {{ Highest = "High", High = "High", Medium = "Medium", Low = "Low", Lowest = "Low" }}
reverse_map = {{ High = "High", Medium = "Medium", Low = "Low" }}

[[flows.support.fields]]
left = "status.name"
right = "Status"
map = {{ "To Do" = "New", "In Progress" = "Working", "Done" = "Closed" }}

# New customer accounts become onboarding issues in Jira project ONB, every 30 seconds.
#
# It syncs Account, not Case, on purpose. A polled change is not tagged with the flow whose poll
# read it, and polled changes skip the filter check, so two flows over the same sObject would
# each act on records the other flow's filter selected (a Case polled by one flow would be
# created in Jira by the other too). Distinct objects keep the flows apart: Jira changes never
# feed this flow (it only writes Jira), and its issues live outside `support`'s `project = SUP`.
[flows.nightly]
left = {{ connector = "jira", object = "issue", filter = "project = ONB", marker = "customfield_10060" }}
right = {{ connector = "salesforce", object = "Account", filter = "Type = 'Customer - Direct'" }}
direction = "right_to_left"
mode = {{ scheduled = {{ every = "30s" }} }}

[flows.nightly.defaults.left]
project = {{ key = "ONB" }}
issuetype = {{ name = "Task" }}

[[flows.nightly.fields]]
left = "summary"
right = "Name"

[[flows.nightly.fields]]
left = "description"
right = "Description"
transform = "adf_text"
"#,
        db = db.display(),
    ))
}

/// Realistic support traffic: (summary, description, Jira priority).
const ISSUES: &[(&str, &str, &str)] = &[
    (
        "Checkout page times out for EU customers",
        "Since the 09:00 deploy, /checkout returns 504 for about a third of EU requests.",
        "Highest",
    ),
    (
        "Password reset email never arrives",
        "Customer tried three times; nothing in spam. Other customers on the same domain are fine.",
        "High",
    ),
    (
        "Export to CSV drops the last row",
        "The exported invoice list always misses its final line.",
        "Medium",
    ),
    (
        "Dark mode makes the invoice total unreadable",
        "Grey on dark grey in the totals box.",
        "Low",
    ),
    (
        "SSO login loops back to the sign-in page",
        "Okta tenant acme-corp; started after the certificate rotation.",
        "High",
    ),
    (
        "Typo in the German welcome email",
        "\"Wilkommen\" should be \"Willkommen\".",
        "Lowest",
    ),
];

/// (Subject, Description, Priority).
const CASES: &[(&str, &str, &str)] = &[
    (
        "Invoice shows the wrong VAT rate",
        "Customer in Austria was charged 19% instead of 20%.",
        "High",
    ),
    (
        "Cannot add a second admin user",
        "The invite button is greyed out on the Team plan.",
        "Medium",
    ),
    (
        "Mobile app crashes when opening attachments",
        "iOS 17.4, PDF attachments larger than 10 MB.",
        "High",
    ),
    (
        "Request: monthly usage report by email",
        "Finance would like the usage summary every first Monday.",
        "Low",
    ),
    (
        "Refund not received after cancellation",
        "Cancelled on the 3rd; refund promised within 5 days.",
        "Medium",
    ),
    (
        "Webhook deliveries delayed by hours",
        "Events from yesterday 14:00 arrived at 19:30.",
        "High",
    ),
];

/// What an agent or an engineer retitles a ticket to as they learn more.
const RETITLES: &[&str] = &[
    "Checkout 504s traced to the EU payment gateway",
    "Password reset emails blocked by the customer's mail filter",
    "CSV export off-by-one in the pagination of invoices",
    "Customer confirmed: happens on every browser",
    "Workaround sent; waiting for the customer to confirm",
    "Escalated by the account manager: renewal at risk",
    "Reproduced on staging",
];

/// (Name, Description) of new customer accounts.
const ACCOUNTS: &[(&str, &str)] = &[
    (
        "Acme Corporation",
        "Enterprise plan, 250 seats, kickoff next week.",
    ),
    (
        "Globex Industries",
        "Team plan, migrating from a competitor.",
    ),
    ("Initech", "Pilot with the finance department."),
    (
        "Umbrella Health",
        "Needs SSO and a signed DPA before go-live.",
    ),
];

/// What the demo's flows map, for naming the fields of a create: (flow, left, right).
const RULES: &[(&str, &str, &str)] = &[
    ("support", "summary", "Subject"),
    ("support", "description", "Description"),
    ("support", "priority.name", "Priority"),
    ("support", "status.name", "Status"),
    ("nightly", "summary", "Name"),
    ("nightly", "description", "Description"),
];

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // Installed first: a Ctrl-C while starting still goes through the cleanup below.
    let stop = CancellationToken::new();
    tokio::spawn(super::cancel_on_signal(stop.clone()));
    let data = DataDir::new(args.data_dir.clone())?;

    let jira = JiraSim::start(jira::Options {
        listen: args.jira_listen,
        ..Default::default()
    })
    .await
    .with_context(|| {
        format!(
            "cannot start the Jira emulator on {} (port taken? move it with --jira-listen)",
            args.jira_listen
        )
    })?;
    let sf = SalesforceSim::start(salesforce::Options {
        listen: args.salesforce_listen,
        ..Default::default()
    })
    .await
    .with_context(|| {
        format!(
            "cannot start the Salesforce emulator on {} (port taken? move it with --salesforce-listen)",
            args.salesforce_listen
        )
    })?;
    {
        let mut store = jira.store();
        store.add_project("ONB", "Customer Onboarding");
        store.add_custom_field(
            "customfield_10060",
            "Salesforce Account Id",
            jira::store::FieldKind::String,
        );
    }

    let secrets = Secrets {
        jira_webhook: random_secret(),
        sf_webhook: random_secret(),
        admin: random_secret(),
    };
    let config = data.path.join("tandem.toml");
    std::fs::write(
        &config,
        config_toml(
            &data.path,
            &jira.base_url(),
            &sf.base_url(),
            args.listen,
            &secrets,
        )?,
    )
    .with_context(|| format!("writing {}", config.display()))?;
    // The data directory as base: the demo reads no config/local.toml from where it is run.
    let settings = Settings::load_from(&Sources {
        base_dir: data.path.clone(),
        file: Some(config.clone()),
        env: false,
    })
    .context("the demo's configuration is invalid (a bug in the demo)")?;
    let flows = settings.flows.clone();

    // Before the daemon starts: the scheduled flow's first run (started through the API right
    // after start, see `connect_and_seed`) reads back `ingest.overlap` and finds them, so the
    // first onboarding issues show without a 30 s wait.
    for (name, description) in &ACCOUNTS[..2] {
        sf.insert(
            "Account",
            json!({"Name": name, "Description": description, "Type": "Customer - Direct"}),
        )
        .context("seeding accounts")?;
    }

    let app = Application::build(settings).await.with_context(|| {
        format!(
            "cannot start the daemon on {} (port taken? move it with --listen)",
            args.listen
        )
    })?;
    let addr = app.local_addr();
    let journal = app.journal().clone();
    let daemon_stop = CancellationToken::new();
    let mut daemon = tokio::spawn(app.run_until_stopped(daemon_stop.clone()));

    let base = format!("http://{addr}");
    let jira = Arc::new(jira);
    let sf = Arc::new(sf);
    let world = World {
        jira: jira.clone(),
        sf: sf.clone(),
        http: reqwest::Client::new(),
        journal: journal.clone(),
        flows,
        plans: Arc::new(Mutex::new(HashMap::new())),
    };
    if let Err(error) = connect_and_seed(&world, &base, &secrets).await {
        daemon_stop.cancel();
        let _ = daemon.await;
        return Err(error);
    }

    banner(
        &base,
        &jira.base_url(),
        &sf.base_url(),
        &secrets.admin,
        &data,
        &args,
    );

    if let Some(duration) = args.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.cancel();
        });
    }
    let world = Arc::new(world);
    let edits_stop = CancellationToken::new();
    let editor = tokio::spawn(edit_until(
        world.clone(),
        args.edit_every,
        edits_stop.clone(),
    ));
    let watch_stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_until(
        world.clone(),
        base.clone(),
        secrets.admin.clone(),
        watch_stop.clone(),
    ));

    let early = tokio::select! {
        () = stop.cancelled() => None,
        result = &mut daemon => Some(result),
    };
    if let Some(result) = early {
        edits_stop.cancel();
        watch_stop.cancel();
        result.context("the daemon task panicked")??;
        return Err(anyhow!("the daemon stopped on its own"));
    }
    edits_stop.cancel();
    let _ = editor.await;
    println!("{}  stopping: no more edits", clock());
    // A moment for the last edit to sync and be shown.
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch_stop.cancel();
    let summary = watcher.await.ok();
    daemon_stop.cancel();
    daemon
        .await
        .context("the daemon task panicked")?
        .context("the daemon failed")?;
    drop(world);
    if let Ok(jira) = Arc::try_unwrap(jira) {
        jira.stop().await;
    }
    if let Ok(sf) = Arc::try_unwrap(sf) {
        sf.stop().await;
    }
    if let Some(Some(summary)) = summary {
        println!("{}  stopped: {summary}", clock());
    }
    if data.remove {
        println!("{}  removed {}", clock(), data.path.display());
    } else {
        println!(
            "{}  kept {} (database, config and secrets)",
            clock(),
            data.path.display()
        );
    }
    Ok(())
}

/// Point both emulators' notifications at the daemon, as their admins would, then seed the
/// records the demo starts with.
async fn connect_and_seed(world: &World, base: &str, secrets: &Secrets) -> anyhow::Result<()> {
    world.jira.add_webhook(
        &format!("{base}/webhooks/jira"),
        Some(&secrets.jira_webhook),
        None,
    );
    world
        .sf
        .add_outbound_message(OutboundMessage {
            url: format!("{base}/webhooks/salesforce/{}", secrets.sf_webhook),
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
        .context("registering the Salesforce Outbound Message")?;

    for (summary, description, priority) in &ISSUES[..3] {
        world.create_issue(summary, description, priority).await?;
    }
    for (subject, description, priority) in &CASES[..3] {
        world.sf.insert(
            "Case",
            json!({"Subject": subject, "Description": description, "Priority": priority, "Origin": "Phone"}),
        )
        .context("seeding cases")?;
    }
    // Run the scheduled flow once now, as an operator would (`POST /api/v1/flows/nightly/run`):
    // its first run shows in the dashboard and the API at once, then every 30 s.
    let response = world
        .http
        .post(format!("{base}/api/v1/flows/nightly/run"))
        .bearer_auth(&secrets.admin)
        .send()
        .await
        .context("starting the scheduled flow's first run")?;
    if !response.status().is_success() {
        anyhow::bail!(
            "starting the scheduled flow's first run: {}",
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

fn banner(base: &str, jira: &str, sf: &str, admin: &str, data: &DataDir, args: &DemoArgs) {
    let edits = humantime::format_duration(args.edit_every);
    let stop = match args.duration {
        Some(d) => format!(
            "stops by itself after {}, or press Ctrl-C",
            humantime::format_duration(d)
        ),
        None => "press Ctrl-C to stop".to_string(),
    };
    println!(
        r#"
Tandem demo: Jira Cloud and Salesforce emulators, and the daemon between them.

  daemon        {base}
    dashboard   {base}/   (paste the admin token below)
    metrics     {base}/metrics
    health      {base}/healthz
    dead letters {base}/api/v1/dead-letters
                curl -H 'Authorization: Bearer {admin}' {base}/api/v1/dead-letters
    runs        curl -H 'Authorization: Bearer {admin}' {base}/api/v1/flows/nightly
    reconcile   tandem reconcile --flow support --url {base} --token {admin}
  admin token   {admin}
  Jira          {jira}   (basic auth sim@example.com / sim-token; state: {jira}/__sim/state)
  Salesforce    {sf}   (client credentials sim-client / sim-secret; state: {sf}/__sim/state)
  data          {data}

Flows: `support` (Jira SUP issues <-> Cases, realtime, by webhook) and `nightly` (new customer
Accounts -> onboarding issues in Jira ONB, every 30s). A live edit every {edits}; {stop}.
"#,
        data = data.path.display(),
    );
}

fn clock() -> String {
    chrono::Local::now().format("%H:%M:%S").to_string()
}

/// What happens to a dead letter the demo provokes on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// The demo fixes the case at this edit round: the fix syncs and supersedes the letter.
    FixAt(u64),
    /// Left for the operator to replay over HTTP, once the Jira workflow knows `Escalated`.
    Replay,
}

struct World {
    jira: Arc<JiraSim>,
    sf: Arc<SalesforceSim>,
    http: reqwest::Client,
    journal: Journal,
    flows: BTreeMap<String, FlowSettings>,
    /// Cases edited into a state Jira refuses, by case id.
    plans: Arc<Mutex<HashMap<String, Plan>>>,
}

impl World {
    async fn jira_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.jira.base_url()))
            .basic_auth("sim@example.com", Some("sim-token"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("Jira emulator {method} {path}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(anyhow!("Jira emulator {method} {path}: {status} {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create_issue(
        &self,
        summary: &str,
        description: &str,
        priority: &str,
    ) -> anyhow::Result<String> {
        let created = self
            .jira_call(
                reqwest::Method::POST,
                "/rest/api/3/issue",
                Some(json!({"fields": {
                    "project": {"key": "SUP"},
                    "issuetype": {"name": "Task"},
                    "summary": summary,
                    "description": crate::adf::from_text(description),
                    "priority": {"name": priority},
                }})),
            )
            .await?;
        created["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the Jira emulator's create answer has no id: {created}"))
    }

    fn jira_label(&self, id: &str) -> String {
        let key = id
            .parse::<u64>()
            .ok()
            .and_then(|n| self.jira.store().issues.get(&n).map(|i| i.key.clone()));
        match key {
            Some(key) => format!("jira {key}"),
            None => format!("jira issue {id}"),
        }
    }

    fn sf_label(&self, object: &str, id: &str) -> String {
        let record = self.sf.record(id);
        match (object, record) {
            ("Case", Some(r)) => match r["CaseNumber"].as_str() {
                Some(number) => format!("salesforce Case {number}"),
                None => format!("salesforce Case {id}"),
            },
            ("Account", Some(r)) => match r["Name"].as_str() {
                Some(name) => format!("salesforce Account \"{name}\""),
                None => format!("salesforce Account {id}"),
            },
            _ => format!("salesforce {object} {id}"),
        }
    }

    fn label(&self, connector: &str, object: &str, id: &str) -> String {
        if connector == "jira" {
            self.jira_label(id)
        } else {
            self.sf_label(object, id)
        }
    }

    /// A record's fields as they are now, read from the emulator's own state (no API call).
    fn fields(&self, connector: &str, id: &str) -> Map<String, Value> {
        if connector != "jira" {
            return match self.sf.record(id) {
                Some(Value::Object(fields)) => fields,
                _ => Map::new(),
            };
        }
        let store = self.jira.store();
        let Some(issue) = id.parse::<u64>().ok().and_then(|n| store.issues.get(&n)) else {
            return Map::new();
        };
        let name =
            |found: Option<String>| found.map_or(Value::Null, |name| json!({ "name": name }));
        let mut fields = Map::new();
        fields.insert("summary".into(), json!(issue.summary));
        fields.insert(
            "description".into(),
            issue.description.clone().unwrap_or(Value::Null),
        );
        fields.insert(
            "priority".into(),
            name(issue.priority_id.as_ref().and_then(|p| {
                store
                    .priorities
                    .iter()
                    .find(|x| &x.id == p)
                    .map(|x| x.name.clone())
            })),
        );
        fields.insert(
            "status".into(),
            name(store.status(&issue.status_id).map(|s| s.name.clone())),
        );
        fields
    }

    /// Support links: (Jira issue id, case id).
    async fn support_links(&self) -> anyhow::Result<Vec<(String, String)>> {
        let links = self
            .journal
            .links("support")
            .await
            .context("reading links")?;
        Ok(links.into_iter().map(|l| (l.left_id, l.right_id)).collect())
    }

    /// The Jira workflow gains `Escalated`, as a Jira admin would add it: Cases escalated in
    /// Salesforce then have a status to go to, and a replay succeeds.
    fn add_escalated_to_workflow(&self) {
        let mut store = self.jira.store();
        if store.statuses.iter().any(|s| s.name == "Escalated") {
            return;
        }
        let in_progress = store
            .statuses
            .iter()
            .find(|s| s.name == "In Progress")
            .map(|s| s.id.clone());
        let Some(in_progress) = in_progress else {
            return;
        };
        let escalated = "10100".to_string();
        store.statuses.push(jira::store::Status {
            id: escalated.clone(),
            name: "Escalated".into(),
            category: jira::store::Category::Indeterminate,
        });
        let from: Vec<String> = store
            .statuses
            .iter()
            .map(|s| s.id.clone())
            .filter(|id| *id != escalated)
            .collect();
        store.transitions.push(jira::store::Transition {
            id: "41".into(),
            name: "Escalate".into(),
            from,
            to: escalated.clone(),
        });
        for transition in &mut store.transitions {
            if transition.to == in_progress {
                transition.from.push(escalated.clone());
            }
        }
    }
}

/// Every `every`, one edit a person would make, alternating sides.
async fn edit_until(world: Arc<World>, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    let mut round = 0u64;
    let mut provoked = 0u32;
    let (mut next_issue, mut next_case, mut next_account) = (3usize, 3usize, 2usize);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        round += 1;
        let result = async {
            let due = {
                let plans = world.plans.lock().expect("plans lock");
                plans
                    .iter()
                    .find(|(_, plan)| **plan == Plan::FixAt(round))
                    .map(|(case, _)| case.clone())
            };
            if let Some(case) = due {
                return fix_case(&world, &case).await;
            }
            // The first two provoked failures: one fixed by the data, one left to replay.
            if round % 8 == 3 && provoked < 2 {
                provoked += 1;
                let plan = if provoked == 1 {
                    Plan::FixAt(round + 4)
                } else {
                    Plan::Replay
                };
                return escalate_case(&world, plan).await;
            }
            let jira_side = round % 2 == 1;
            match ((round - 1) / 2) % 4 {
                0 => retitle(&world, jira_side).await,
                1 => reprioritise(&world, jira_side).await,
                2 => move_status(&world, jira_side).await,
                _ if jira_side => {
                    let (summary, description, priority) = ISSUES[next_issue % ISSUES.len()];
                    next_issue += 1;
                    let id = world.create_issue(summary, description, priority).await?;
                    edit_line(&format!("new {}: \"{summary}\"", world.jira_label(&id)));
                    Ok(())
                }
                _ => {
                    let (subject, description, priority) = CASES[next_case % CASES.len()];
                    next_case += 1;
                    let id = world
                        .sf
                        .insert("Case", json!({"Subject": subject, "Description": description, "Priority": priority, "Origin": "Email"}))
                        .context("inserting a case")?;
                    edit_line(&format!("new {}: \"{subject}\"", world.sf_label("Case", &id)));
                    if next_case % 2 == 0 {
                        let (name, description) = ACCOUNTS[next_account % ACCOUNTS.len()];
                        next_account += 1;
                        world
                            .sf
                            .insert("Account", json!({"Name": name, "Description": description, "Type": "Customer - Direct"}))
                            .context("inserting an account")?;
                        edit_line(&format!(
                            "new salesforce Account \"{name}\" (the scheduled flow `nightly` picks it up within 30s)"
                        ));
                    }
                    Ok(())
                }
            }
        }
        .await;
        if let Err(error) = result {
            println!("{}  edit failed: {error:#}", clock());
        }
    }
}

fn edit_line(what: &str) {
    println!("{}  edit  {what}", clock());
}

/// A linked pair the demo may edit: not one held in a provoked failure.
async fn pick_pair(world: &World) -> anyhow::Result<Option<(String, String)>> {
    let links = world.support_links().await?;
    let plans = world.plans.lock().expect("plans lock").clone();
    let free: Vec<_> = links
        .into_iter()
        .filter(|(_, case)| !plans.contains_key(case))
        .collect();
    Ok(free.choose(&mut rand::rng()).cloned())
}

async fn retitle(world: &World, jira_side: bool) -> anyhow::Result<()> {
    let Some((issue, case)) = pick_pair(world).await? else {
        return Ok(());
    };
    let title = *RETITLES.choose(&mut rand::rng()).expect("titles");
    if jira_side {
        world
            .jira_call(
                reqwest::Method::PUT,
                &format!("/rest/api/3/issue/{issue}"),
                Some(json!({"fields": {"summary": title}})),
            )
            .await?;
        edit_line(&format!(
            "{}: summary → \"{title}\"",
            world.jira_label(&issue)
        ));
    } else {
        world
            .sf
            .update("Case", &case, json!({"Subject": title}))
            .context("updating a case")?;
        edit_line(&format!(
            "{}: Subject → \"{title}\"",
            world.sf_label("Case", &case)
        ));
    }
    Ok(())
}

async fn reprioritise(world: &World, jira_side: bool) -> anyhow::Result<()> {
    let Some((issue, case)) = pick_pair(world).await? else {
        return Ok(());
    };
    if jira_side {
        let priority = *["Highest", "High", "Medium", "Low"]
            .choose(&mut rand::rng())
            .expect("priorities");
        world
            .jira_call(
                reqwest::Method::PUT,
                &format!("/rest/api/3/issue/{issue}"),
                Some(json!({"fields": {"priority": {"name": priority}}})),
            )
            .await?;
        edit_line(&format!(
            "{}: priority → {priority}",
            world.jira_label(&issue)
        ));
    } else {
        let current = world.sf.record(&case).map(|r| r["Priority"].clone());
        let choices: Vec<&str> = ["High", "Medium", "Low"]
            .into_iter()
            .filter(|p| current.as_ref().and_then(Value::as_str) != Some(*p))
            .collect();
        let priority = *choices.choose(&mut rand::rng()).expect("priorities");
        world
            .sf
            .update("Case", &case, json!({"Priority": priority}))
            .context("updating a case")?;
        edit_line(&format!(
            "{}: Priority → {priority}",
            world.sf_label("Case", &case)
        ));
    }
    Ok(())
}

/// One workflow step: the statuses are a line (To Do, In Progress, Done), so only neighbours.
async fn move_status(world: &World, jira_side: bool) -> anyhow::Result<()> {
    let Some((issue, case)) = pick_pair(world).await? else {
        return Ok(());
    };
    if jira_side {
        let available = world
            .jira_call(
                reqwest::Method::GET,
                &format!("/rest/api/3/issue/{issue}/transitions"),
                None,
            )
            .await?;
        let transitions = available["transitions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let Some(transition) = transitions.choose(&mut rand::rng()) else {
            return Ok(());
        };
        world
            .jira_call(
                reqwest::Method::POST,
                &format!("/rest/api/3/issue/{issue}/transitions"),
                Some(json!({"transition": {"id": transition["id"]}})),
            )
            .await?;
        edit_line(&format!(
            "{}: status → {}",
            world.jira_label(&issue),
            transition["to"]["name"].as_str().unwrap_or("?")
        ));
    } else {
        let current = world
            .sf
            .record(&case)
            .and_then(|r| r["Status"].as_str().map(str::to_string))
            .unwrap_or_default();
        let next = match current.as_str() {
            "New" => "Working",
            "Working" => *["New", "Closed"]
                .choose(&mut rand::rng())
                .expect("statuses"),
            _ => "Working",
        };
        world
            .sf
            .update("Case", &case, json!({"Status": next}))
            .context("updating a case")?;
        edit_line(&format!(
            "{}: Status → {next}",
            world.sf_label("Case", &case)
        ));
    }
    Ok(())
}

async fn escalate_case(world: &World, plan: Plan) -> anyhow::Result<()> {
    let Some((_, case)) = pick_pair(world).await? else {
        return Ok(());
    };
    world
        .plans
        .lock()
        .expect("plans lock")
        .insert(case.clone(), plan);
    world
        .sf
        .update("Case", &case, json!({"Status": "Escalated"}))
        .context("updating a case")?;
    let then = match plan {
        Plan::FixAt(_) => "the demo sets it back to Working in 4 edits",
        Plan::Replay => "this one is left for you to replay over HTTP",
    };
    edit_line(&format!(
        "{}: Status → Escalated (Jira's workflow has no such status: expect a dead letter; {then})",
        world.sf_label("Case", &case)
    ));
    Ok(())
}

async fn fix_case(world: &World, case: &str) -> anyhow::Result<()> {
    world
        .sf
        .update("Case", case, json!({"Status": "Working"}))
        .context("updating a case")?;
    world.plans.lock().expect("plans lock").remove(case);
    edit_line(&format!(
        "{}: Status → Working (the fix: expect its dead letter superseded)",
        world.sf_label("Case", case)
    ));
    Ok(())
}

/// A settled change as the watcher reads it.
#[derive(sqlx::FromRow)]
struct Settled {
    id: i64,
    connector: String,
    object: String,
    record_id: String,
    status: String,
    outcome: Option<String>,
    detail: Option<String>,
    snapshot: String,
    updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct Letter {
    id: i64,
    flow: Option<String>,
    connector: String,
    operation: String,
    http_status: Option<i64>,
    vendor_code: Option<String>,
    vendor_message: Option<String>,
    status: String,
    record_connector: String,
    record_object: String,
    record_id: String,
}

#[derive(Default)]
struct Tally {
    created: u64,
    written: u64,
    echoes: u64,
    letters: u64,
}

/// Print each settled change and each dead letter once, until `stop`; then a last pass.
async fn watch_until(
    world: Arc<World>,
    base: String,
    admin: String,
    stop: CancellationToken,
) -> Option<String> {
    let mut watcher = Watcher {
        world,
        base,
        admin,
        floor: 0,
        printed: HashSet::new(),
        letters: HashMap::new(),
        tally: Tally::default(),
    };
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => false,
            () = stop.cancelled() => true,
        };
        if let Err(error) = watcher.pass().await {
            println!("{}  cannot read the journal: {error:#}", clock());
        }
        if stopping {
            let open = watcher.letters.values().filter(|s| *s == "open").count();
            let t = &watcher.tally;
            let letters = if t.letters == 1 { "letter" } else { "letters" };
            return Some(format!(
                "{} created, {} updated, {} echoes suppressed, {} dead {letters} ({open} open)",
                t.created, t.written, t.echoes, t.letters
            ));
        }
    }
}

struct Watcher {
    world: Arc<World>,
    base: String,
    admin: String,
    /// Every change up to here is settled and shown.
    floor: i64,
    printed: HashSet<i64>,
    /// Dead letters seen, with their last status.
    letters: HashMap<i64, String>,
    tally: Tally,
}

impl Watcher {
    async fn pass(&mut self) -> anyhow::Result<()> {
        let journal = self.world.journal.clone();
        let pool = journal.pool();
        let rows: Vec<Settled> = sqlx::query_as(
            "SELECT id, connector, object, record_id, status, outcome, detail, snapshot, updated_at
               FROM changes WHERE id > ? ORDER BY id",
        )
        .bind(self.floor)
        .fetch_all(pool)
        .await?;
        let mut contiguous = true;
        // Coalesced changes settle together with one detail: one line for them all.
        let mut shown: HashSet<(String, i64, String)> = HashSet::new();
        for row in &rows {
            let settled = row.status == "done" || row.status == "dead";
            if !settled {
                contiguous = false;
                continue;
            }
            if contiguous {
                self.floor = row.id;
            }
            if !self.printed.insert(row.id) || row.status == "dead" {
                continue;
            }
            let detail = row.detail.clone().unwrap_or_default();
            if !shown.insert((row.record_id.clone(), row.updated_at, detail)) {
                continue;
            }
            self.show(row).await;
        }
        self.printed.retain(|id| *id > self.floor);

        let letters: Vec<Letter> = sqlx::query_as(
            "SELECT d.id, d.flow, d.connector, d.operation, d.http_status, d.vendor_code,
                    d.vendor_message, d.status, c.connector AS record_connector,
                    c.object AS record_object, c.record_id
               FROM dead_letters d JOIN changes c ON c.id = d.change_id ORDER BY d.id",
        )
        .fetch_all(pool)
        .await?;
        for letter in letters {
            match self.letters.insert(letter.id, letter.status.clone()) {
                None => self.new_letter(&letter),
                Some(before) if before != letter.status => {
                    let why = match letter.status.as_str() {
                        "superseded" => "a later change to the record synced",
                        "replayed" => "replayed over HTTP",
                        "discarded" => "discarded over HTTP",
                        _ => "",
                    };
                    println!(
                        "{}  DEAD LETTER #{} {}: {why}",
                        clock(),
                        letter.id,
                        letter.status
                    );
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn new_letter(&mut self, letter: &Letter) {
        self.tally.letters += 1;
        let source = self.world.label(
            &letter.record_connector,
            &letter.record_object,
            &letter.record_id,
        );
        let why = match (letter.http_status, letter.vendor_code.as_deref()) {
            (Some(status), Some(code)) => format!(" (HTTP {status} {code})"),
            (Some(status), None) => format!(" (HTTP {status})"),
            (None, Some(code)) => format!(" ({code})"),
            (None, None) => String::new(),
        };
        println!(
            "{}  DEAD LETTER #{} {}: {} refused{why}: {}  [from {source}, flow {}]",
            clock(),
            letter.id,
            letter.connector,
            letter.operation,
            letter.vendor_message.as_deref().unwrap_or("no message"),
            letter.flow.as_deref().unwrap_or("-"),
        );
        let plan = self
            .world
            .plans
            .lock()
            .expect("plans lock")
            .get(&letter.record_id)
            .copied();
        match plan {
            Some(Plan::FixAt(_)) => println!(
                "          the demo fixes the case's data in a few edits; watch it become superseded"
            ),
            Some(Plan::Replay) => {
                // Fixing the case itself would supersede the letter; changing what Jira
                // accepts is what leaves a replay to do.
                self.world.add_escalated_to_workflow();
                println!(
                    "          left open for you: a Jira admin has now added `Escalated` to the workflow, so a replay succeeds:\n          \
                     curl -H 'Authorization: Bearer {admin}' {base}/api/v1/dead-letters/{id}\n          \
                     curl -X POST -H 'Authorization: Bearer {admin}' {base}/api/v1/dead-letters/{id}/replay",
                    admin = self.admin,
                    base = self.base,
                    id = letter.id,
                );
            }
            None => {}
        }
    }

    async fn show(&mut self, row: &Settled) {
        let outcome = row.outcome.as_deref().unwrap_or("");
        if outcome == "no_flow" {
            return;
        }
        let Some(Value::Object(flows)) = row
            .detail
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
        else {
            return;
        };
        let snapshot: Map<String, Value> = serde_json::from_str(&row.snapshot).unwrap_or_default();
        let source = self
            .world
            .label(&row.connector, &row.object, &row.record_id);
        for (flow, entry) in &flows {
            let outcome = entry["outcome"].as_str().unwrap_or("?");
            let detail = &entry["detail"];
            if outcome == "skipped" {
                // Records outside a flow (onboarding issues seen by `support`) are not news.
                continue;
            }
            let Some(settings) = self.world.flows.get(flow) else {
                continue;
            };
            let from_left =
                settings.left.connector == row.connector && settings.left.object == row.object;
            let target = if from_left {
                &settings.right
            } else {
                &settings.left
            };
            let counterpart = match detail["created"].as_str() {
                Some(id) => Some(id.to_string()),
                None => self.counterpart(flow, from_left, &row.record_id).await,
            };
            let target_label = match &counterpart {
                Some(id) => self.world.label(&target.connector, &target.object, id),
                None => format!("{} {}", target.connector, target.object),
            };
            let fields = |names: Vec<String>| {
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" (fields: {})", names.join(", "))
                }
            };
            let what = match outcome {
                "created" => {
                    self.tally.created += 1;
                    // A webhook's snapshot may be partial: the record as it is now tells better.
                    let current = self.world.fields(&row.connector, &row.record_id);
                    let names = RULES
                        .iter()
                        .filter(|(f, _, _)| f == flow)
                        .map(|(_, l, r)| if from_left { *l } else { *r })
                        .filter(|path| {
                            path_value(&current, path)
                                .or_else(|| path_value(&snapshot, path))
                                .is_some_and(|v| !v.is_null() && v != "")
                        })
                        .map(|path| path.split('.').next().unwrap_or(path).to_string())
                        .collect();
                    format!("created{}", fields(names))
                }
                "written" => {
                    self.tally.written += 1;
                    let names = detail["fields"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(|path| path.split('.').next().unwrap_or(path).to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    format!("updated{}", fields(names))
                }
                "echo" => {
                    self.tally.echoes += 1;
                    "echo: our own write coming back, nothing to do".into()
                }
                "linked" => {
                    self.tally.echoes += 1;
                    "echo: the record Tandem just created, linked, nothing to do".into()
                }
                "stale" => "stale: older than what was already synced, skipped".into(),
                "conflict" => "conflict: both sides changed it; the other side's value won".into(),
                other => other.to_string(),
            };
            let flow_note = if flow == "support" {
                String::new()
            } else {
                format!("  [{flow}]")
            };
            println!("{}  {source} → {target_label}  {what}{flow_note}", clock());
        }
    }

    async fn counterpart(&self, flow: &str, from_left: bool, id: &str) -> Option<String> {
        let link = self.world.journal.link(flow, from_left, id).await.ok()??;
        Some(if from_left {
            link.right_id
        } else {
            link.left_id
        })
    }
}

/// A dotted path into a snapshot (`priority.name`).
fn path_value<'a>(fields: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = fields.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    Some(value)
}
