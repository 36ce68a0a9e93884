//! What every scenario uses: the emulators, the daemon (in process or as a child process),
//! configuration, the load generator, statistics and the results file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tandem::app::Application;
use tandem::config::{Settings, Sources};
use tandem::journal::Journal;
use tandem::sim::jira::JiraSim;
use tandem::sim::salesforce::{SalesforceSim, ORG_ID};
use tokio_util::sync::CancellationToken;

pub const JIRA_SECRET: &str = "jira-webhook-secret";
pub const SF_TOKEN: &str = "sf-path-token";
pub const ADMIN_TOKEN: &str = "bench-admin-token";
/// The child-process mode of this binary: a daemon on the configuration in this directory.
pub const CHILD_ENV: &str = "TANDEM_BENCH_CHILD_DIR";

/// Options every scenario reads.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub repetitions: usize,
}

/// Where results and scratch databases go: `target/bench/` of the source tree, as the journal
/// bench does (a real disk, so `synchronous=FULL` costs what it costs).
pub fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh directory for a database and its config, removed afterwards unless `BENCH_KEEP`
/// is set (then its path is printed: the daemon's log is in it).
pub fn scratch_dir() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new();
    if std::env::var("BENCH_KEEP").is_ok() {
        dir.disable_cleanup(true);
    }
    let dir = dir.tempdir_in(out_dir()).unwrap();
    if std::env::var("BENCH_KEEP").is_ok() {
        println!("  (keeping {})", dir.path().display());
    }
    dir
}

/// An environment knob, or its default.
pub fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The daemon's log filter: `info` as `tandem serve` runs by default (`BENCH_LOG=off` for none).
pub fn log_level() -> String {
    knob("BENCH_LOG", "info".to_string())
}

/// Log as `tandem serve` does (pretty, the daemon's filter) for the daemons in this process,
/// into `target/bench/pipeline-daemon.log` rather than the terminal.
pub fn install_log() {
    let level = log_level();
    if level == "off" {
        return;
    }
    let file = std::fs::File::create(out_dir().join("pipeline-daemon.log")).unwrap();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}

/// The 1-minute load average, from /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `VmHWM` (peak resident set) and `VmRSS` of a process, in KiB.
pub fn memory_kib(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The value at quantile `q` of sorted samples.
pub fn quantile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// The median of repetitions, by `key`.
pub fn median_by<T: Clone>(mut runs: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    runs[runs.len() / 2].clone()
}

/// Both emulators, started on the current runtime.
pub struct Sims {
    pub jira: JiraSim,
    pub sf: SalesforceSim,
}

impl Sims {
    pub async fn start() -> Sims {
        Sims::start_with(Default::default()).await
    }

    pub async fn start_with(jira: tandem::sim::jira::Options) -> Sims {
        Sims {
            jira: JiraSim::start(jira).await.unwrap(),
            sf: SalesforceSim::start(Default::default()).await.unwrap(),
        }
    }

    pub async fn stop(self) {
        self.jira.stop().await;
        self.sf.stop().await;
    }

    /// Connectors for both emulators (secrets in files under `dir`), the admin token, then
    /// `extra`. `jira_limits` is the Jira connector's `[limits]` table body.
    pub fn config(&self, dir: &Path, jira_limits: &str, extra: &str) -> String {
        let secret = |name: &str, value: &str| {
            let path = dir.join(name);
            std::fs::write(&path, value).unwrap();
            path.display().to_string()
        };
        format!(
            r#"
[admin]
token = {{ file = "{admin}" }}

[connectors.jira]
kind = "jira"
base_url = "{jira}"
auth = {{ method = "basic", email = "sim@example.com", api_token = {{ file = "{jira_token}" }} }}
webhook_secret = {{ file = "{jira_secret}" }}
[connectors.jira.limits]
{jira_limits}

[connectors.salesforce]
kind = "salesforce"
base_url = "{sf}"
auth = {{ method = "client_credentials", client_id = "sim-client", client_secret = {{ file = "{sf_secret}" }} }}
organization_id = "{org}"
webhook_secret = {{ file = "{sf_token}" }}
[connectors.salesforce.limits]
requests_per_second = 1000
max_concurrency = 8
timeout = "10s"
{extra}
"#,
            admin = secret("admin-token", ADMIN_TOKEN),
            jira = self.jira.base_url(),
            jira_token = secret("jira-token", "sim-token"),
            jira_secret = secret("jira-secret", JIRA_SECRET),
            sf = self.sf.base_url(),
            sf_secret = secret("sf-secret", "sim-secret"),
            org = ORG_ID,
            sf_token = secret("sf-token", SF_TOKEN),
        )
    }

    /// Register the daemon at `base` for both emulators' notifications: a Jira admin webhook
    /// and a Case Outbound Message carrying `fields`.
    pub fn register_webhooks(&self, base: &str, fields: &[&str]) {
        self.jira
            .add_webhook(&format!("{base}/webhooks/jira"), Some(JIRA_SECRET), None);
        self.sf
            .add_outbound_message(tandem::sim::salesforce::notify::OutboundMessage {
                url: format!("{base}/webhooks/salesforce/{SF_TOKEN}"),
                object: "Case".into(),
                fields: fields.iter().map(|f| f.to_string()).collect(),
            })
            .unwrap();
    }

    /// `n` Jira issues made in the emulator's store directly (no HTTP, no webhook); their ids.
    pub fn seed_issues(&self, n: usize, prefix: &str) -> Vec<String> {
        let mut store = self.jira.store();
        let actor = store.accounts[0].account_id.clone();
        (0..n)
            .map(|i| {
                let body = json!({"fields": {
                    "project": {"key": "SUP"},
                    "issuetype": {"name": "Task"},
                    "summary": format!("{prefix} {i}"),
                    "priority": {"name": "Medium"},
                }});
                store
                    .create_issue(tandem::sim::jira::store::Api::V3, &actor, &body)
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// Both emulators' call counters: (total, by endpoint), per emulator.
    pub fn calls(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        (self.jira.control().calls(), self.sf.control().calls())
    }

    pub fn reset_calls(&self) {
        self.jira.control().reset_calls();
        self.sf.control().reset_calls();
    }

    /// Wait until neither emulator has a notification on its way.
    pub async fn settle(&self) {
        self.jira.outbox().settle(Duration::from_secs(30)).await;
        self.sf.settle(Duration::from_secs(30)).await;
    }
}

/// Settings as a deployment layers them: compiled-in defaults, `config/local.toml` (a fresh
/// database in `dir`, an ephemeral port), then `overlay` as the `--config` file.
pub fn settings_in(dir: &Path, overlay: &str) -> Settings {
    let db = dir.join("tandem.db");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("config/local.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nurl = \"sqlite://{}\"\n",
            db.display()
        ),
    )
    .unwrap();
    let file = dir.join("overlay.toml");
    std::fs::write(&file, overlay).unwrap();
    Settings::load_from(&Sources {
        base_dir: dir.to_path_buf(),
        file: Some(file),
        env: false,
    })
    .unwrap()
}

/// The daemon in this process.
pub struct Daemon {
    pub addr: SocketAddr,
    pub journal: Journal,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tandem::app::AppError>>,
}

impl Daemon {
    /// Build and serve on the current runtime.
    pub async fn start(settings: Settings) -> Daemon {
        let app = Application::build(settings).await.unwrap();
        let addr = app.local_addr();
        let journal = app.journal().clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        Daemon {
            addr,
            journal,
            stop,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// The daemon as a child process: this bench binary re-run with [`CHILD_ENV`] set to a
/// directory holding `overlay.toml`; it prints `listening ADDR` once it serves.
pub struct ChildDaemon {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ChildDaemon {
    pub fn spawn(dir: &Path) -> ChildDaemon {
        use std::io::{BufRead, BufReader};
        // Its log (the daemon's default: `info`, pretty, to stderr) goes to a file, as under a
        // service manager.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, dir)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the child daemon exited before it listened")
                .unwrap();
            if let Some(addr) = line.strip_prefix("listening ") {
                break addr.parse().unwrap();
            }
        };
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ChildDaemon { child, addr }
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL: no destructor, no flush, no close.
    pub fn kill(self) {
        drop(self);
    }
}

/// Killed however the bench ends (a panic included), so no daemon outlives it holding the port
/// and the journal's lock.
impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child side of [`ChildDaemon`]: serve until killed.
pub fn run_child(dir: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = Path::new(dir);
        let overlay = std::fs::read_to_string(dir.join("overlay.toml")).unwrap();
        let settings = settings_in(dir, &overlay);
        let level = log_level();
        if level != "off" {
            tandem::telemetry::init(tandem::config::LogFormat::Pretty, &level);
        }
        let app = Application::build(settings).await.unwrap();
        println!("listening {}", app.local_addr());
        let stop = CancellationToken::new();
        app.run_until_stopped(stop).await.unwrap();
    });
}

/// The admin API, with the bench's token.
pub async fn admin(base: &str, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method, format!("{base}/api/v1{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A Prometheus counter's value summed over the series whose labels contain every `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

pub async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The load generator: one HTTP/1.1 keep-alive connection per sender, hyper's bare client
// connection (no pool, no redirects, no decompression), requests built from pre-made bodies.

/// A request to send: path, headers, body.
#[derive(Clone)]
pub struct Shot {
    pub path: Arc<str>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub ok: usize,
    pub failed: usize,
    pub elapsed: Duration,
    /// Sorted latencies of the successful requests, microseconds.
    pub latencies_us: Vec<u32>,
    /// Indexes (into the shots) of the requests answered 2xx.
    pub acked: Vec<usize>,
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p(&self, q: f64) -> f64 {
        f64::from(quantile(&self.latencies_us, q)) / 1e3
    }
}

/// Send `shots` (each once, in order, shared among `senders` connections) to `addr`, stopping
/// early after `max_time`. 2xx counts as ok.
pub async fn drive(
    addr: SocketAddr,
    senders: usize,
    shots: Arc<Vec<Shot>>,
    max_time: Duration,
) -> LoadResult {
    drive_paced(addr, senders, shots, max_time, None).await
}

/// [`drive`], sending at most `per_second` requests a second in all when given.
pub async fn drive_paced(
    addr: SocketAddr,
    senders: usize,
    shots: Arc<Vec<Shot>>,
    max_time: Duration,
    per_second: Option<f64>,
) -> LoadResult {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Every connection is open before the clock starts.
    let ready = Arc::new(tokio::sync::Barrier::new(senders + 1));
    let deadline = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..senders {
        let (next, shots, ready, deadline) =
            (next.clone(), shots.clone(), ready.clone(), deadline.clone());
        tasks.spawn(async move {
            let connected = match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => {
                    stream.set_nodelay(true).unwrap();
                    hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                        .await
                        .ok()
                }
                Err(_) => None,
            };
            ready.wait().await;
            let Some((mut sender, conn)) = connected else {
                return (Vec::new(), Vec::new(), 1);
            };
            let conn = tokio::spawn(conn);
            let deadline = *deadline.get().unwrap();
            let began = Instant::now();
            let mut latencies = Vec::new();
            let mut acked = Vec::new();
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= shots.len() || Instant::now() >= deadline {
                    break;
                }
                if let Some(rate) = per_second {
                    let due = began + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let shot = &shots[i];
                let mut request = hyper::Request::post(&*shot.path)
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json");
                for (name, value) in &shot.headers {
                    request = request.header(*name, value);
                }
                let request = request.body(Full::new(shot.body.clone())).unwrap();
                let t = Instant::now();
                if sender.ready().await.is_err() {
                    failed += 1;
                    break;
                }
                match sender.send_request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let _ = response.into_body().collect().await;
                        if ok {
                            latencies.push(t.elapsed().as_micros() as u32);
                            acked.push(i);
                        } else {
                            failed += 1;
                        }
                    }
                    Err(_) => {
                        failed += 1;
                        break;
                    }
                }
            }
            drop(sender);
            let _ = conn.await;
            (latencies, acked, failed)
        });
    }
    // Set before the barrier releases anyone (connecting time is not in `max_time`'s count
    // that matters: `elapsed` starts after the barrier).
    deadline.set(Instant::now() + max_time).unwrap();
    ready.wait().await;
    let started = Instant::now();
    let mut result = LoadResult::default();
    while let Some(joined) = tasks.join_next().await {
        let (latencies, acked, failed) = joined.unwrap();
        result.acked.extend(acked);
        result.ok += latencies.len();
        result.failed += failed;
        result.latencies_us.extend(latencies);
    }
    result.elapsed = started.elapsed();
    result.latencies_us.sort_unstable();
    result
}

/// A runtime like the daemon's: multi-threaded, one worker per core.
pub fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The load generator's own runtime: one thread (the main thread), so it takes at most one
/// core's worth of CPU from the server it measures.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A tiny HTTP server on `runtime` that records every body posted to it (webhook capture).
pub struct Capture {
    pub url: String,
    pub bodies: Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Bytes)>>>,
}

pub async fn capture() -> Capture {
    let bodies: Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Bytes)>>> = Default::default();
    let store = bodies.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: Bytes| {
        let store = store.clone();
        async move {
            store.lock().unwrap().push((headers, body));
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Capture { url, bodies }
}

/// Create `count` Jira issues through the REST API's bulk endpoint (50 a call), as people would:
/// the emulator applies them, stamps `updated` and sends its webhooks.
pub async fn create_issues(jira: &JiraSim, count: usize, label: &str, priority: &str) {
    let http = reqwest::Client::new();
    for start in (0..count).step_by(50) {
        let updates: Vec<Value> = (start..count.min(start + 50))
            .map(|i| {
                json!({"fields": {
                    "project": {"key": "SUP"},
                    "issuetype": {"name": "Task"},
                    "summary": format!("{label} {i}"),
                    "priority": {"name": priority},
                    "description": tandem::adf::from_text(&format!("{label} {i}.")),
                }})
            })
            .collect();
        http.post(format!("{}/rest/api/3/issue/bulk", jira.base_url()))
            .basic_auth("sim@example.com", Some("sim-token"))
            .json(&json!({ "issueUpdates": updates }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
}

/// Wait until `done` holds, checking every `every`, at most `timeout`; whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, every: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if done().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Changes still owed (pending or in flight).
pub async fn open_changes(pool: &sqlx::SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM changes WHERE status IN ('pending', 'in_flight')")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Parse a Salesforce/Jira timestamp into epoch ms.
pub fn epoch_ms(text: &str) -> Option<i64> {
    tandem::connectors::parse_timestamp(text)
}

/// Print a table: a header and rows of cells, columns padded.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:>w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row.clone()));
    }
}
