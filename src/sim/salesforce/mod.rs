//! Salesforce emulator: OAuth, the REST data API (sObjects, SOQL, sObject Collections, limits),
//! and change notifications, written from `shared/api/salesforce.md`.
//!
//! Code map: [`schema`] owns object and field metadata, [`store`] the records and write rules,
//! [`soql`] the query language, [`auth`] tokens and the daily allowance, [`routes`] the HTTP
//! surface, [`notify`] Outbound Messages and JSON change events, [`ids`] record ids, [`error`]
//! the error bodies. **State sits behind one `RwLock` that is never held across an `.await`;
//! notifications are queued only after it is released.**

pub mod auth;
pub mod error;
pub mod ids;
pub mod notify;
pub mod routes;
pub mod schema;
pub mod soql;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use self::auth::Auth;
use self::error::SfError;
use self::notify::{ChangeEventEndpoint, Notifier, OutboundMessage, RegisterError};
use self::schema::{Schema, SeedFile};
use self::store::{Store, Upserted};
use super::control::{Control, Faults, Vendor};
use super::outbox::{Outbox, RetryPolicy};
use super::SimServer;

/// The emulated org's id (`00D…`, 18 characters).
pub const ORG_ID: &str = "00D5g00000TaNdEEAV";

/// API versions served, newest last, with their release names.
pub const VERSIONS: &[(&str, &str)] = &[
    ("55.0", "Summer '22"),
    ("56.0", "Winter '23"),
    ("57.0", "Spring '23"),
    ("58.0", "Summer '23"),
    ("59.0", "Winter '24"),
    ("60.0", "Spring '24"),
    ("61.0", "Summer '24"),
    ("62.0", "Winter '25"),
];

pub const LATEST_VERSION: &str = "62.0";

// No `Debug`: the options hold credentials.
#[derive(Clone, clap::Args)]
pub struct Options {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// URL clients are told to use (`instance_url`); default `http://` + the bound address.
    #[arg(long, env = "TANDEM_SIM_SF_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Connected app consumer key.
    #[arg(long, env = "TANDEM_SIM_SF_CLIENT_ID", default_value = "sim-client")]
    pub client_id: String,
    /// Connected app consumer secret.
    #[arg(
        long,
        env = "TANDEM_SIM_SF_CLIENT_SECRET",
        default_value = "sim-secret"
    )]
    pub client_secret: String,
    /// Username the JWT bearer grant's `sub` must name.
    #[arg(
        long,
        env = "TANDEM_SIM_SF_USERNAME",
        default_value = "integration@tandem.sim"
    )]
    pub username: String,
    /// PEM public key or certificate that verifies JWT bearer assertions (RS256). Without it
    /// the JWT grant is refused.
    #[arg(long, env = "TANDEM_SIM_SF_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Session lifetime from issue.
    #[arg(long, default_value = "2h")]
    pub token_ttl: humantime::Duration,
    /// Daily API request allowance.
    #[arg(long, default_value_t = 100_000)]
    pub daily_limit: u64,
    /// Start without the standard objects (Case, CaseComment, Account, Contact).
    #[arg(long)]
    pub no_seed: bool,
    /// JSON file with extra objects and fields.
    #[arg(long)]
    pub seed_file: Option<PathBuf>,
    /// First wait before re-sending an unacknowledged notification; doubles each time.
    #[arg(long, default_value = "100ms")]
    pub notify_retry_delay: humantime::Duration,
    /// Re-sends before a notification is given up.
    #[arg(long, default_value_t = 10)]
    pub notify_retries: usize,
    #[command(flatten)]
    pub faults: Faults,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
            username: "integration@tandem.sim".into(),
            jwt_public_key: None,
            token_ttl: Duration::from_secs(2 * 60 * 60).into(),
            daily_limit: 100_000,
            no_seed: false,
            seed_file: None,
            notify_retry_delay: Duration::from_millis(100).into(),
            notify_retries: 10,
            faults: Faults::default(),
        }
    }
}

/// A query result being paged through with `nextRecordsUrl`.
pub(crate) struct Cursor {
    rows: Arc<Vec<Value>>,
    batch: usize,
    all_rows: bool,
    last_used: Instant,
}

/// Everything the handlers share.
pub struct Shared {
    pub schema: Arc<Schema>,
    pub store: RwLock<Store>,
    pub auth: Auth,
    pub control: Arc<Control>,
    pub notifier: Notifier,
    pub daily_limit: u64,
    pub api_used: AtomicU64,
    /// When the current 24-hour allowance began.
    allowance_since: Mutex<Instant>,
    pub(crate) cursors: Mutex<HashMap<String, Cursor>>,
    next_cursor: AtomicU64,
    base_url: OnceLock<String>,
}

impl Shared {
    /// Start a fresh allowance once 24 hours have passed. Salesforce's window is rolling (each
    /// call ages out 24 h after it was made); resetting in one step is simpler and keeps a
    /// long-running demo or benchmark from locking itself out for good.
    pub fn roll_allowance(&self) {
        let mut since = self
            .allowance_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if since.elapsed() >= Duration::from_secs(24 * 60 * 60) {
            *since = Instant::now();
            self.api_used.store(0, Ordering::SeqCst);
        }
    }

    pub fn base_url(&self) -> String {
        self.base_url.get().cloned().unwrap_or_default()
    }

    /// Run `write` as one transaction and notify its changes once the lock is released.
    pub fn commit<T>(&self, origin: &str, write: impl FnOnce(&mut Store) -> T) -> T {
        let (result, changes) = {
            let mut store = self.store.write().expect("store lock");
            let result = write(&mut store);
            (result, store.take_changes())
        };
        self.notifier.publish(&changes, origin, &self.base_url());
        result
    }

    /// Keep `rows` for `nextRecordsUrl` paging; returns the cursor id (`01g…`).
    pub(crate) fn open_cursor(
        &self,
        rows: Arc<Vec<Value>>,
        batch: usize,
        all_rows: bool,
    ) -> String {
        let id = ids::make("01g", self.next_cursor.fetch_add(1, Ordering::Relaxed));
        let mut cursors = self.cursors.lock().expect("cursors lock");
        // Locators expire when idle (about 15 minutes in Salesforce, unconfirmed).
        let now = Instant::now();
        cursors.retain(|_, c| now.duration_since(c.last_used) < Duration::from_secs(15 * 60));
        cursors.insert(
            id.clone(),
            Cursor {
                rows,
                batch,
                all_rows,
                last_used: now,
            },
        );
        id
    }

    /// The rows, batch size and `queryAll` flag of an open cursor.
    pub(crate) fn cursor(&self, id: &str) -> Option<(Arc<Vec<Value>>, usize, bool)> {
        let mut cursors = self.cursors.lock().expect("cursors lock");
        let cursor = cursors.get_mut(id)?;
        cursor.last_used = Instant::now();
        Some((cursor.rows.clone(), cursor.batch, cursor.all_rows))
    }

    fn dump(&self) -> Value {
        let store = self.store.read().expect("store lock");
        let mut records: Vec<&store::Record> = store.all().collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        let records: Vec<Value> = records
            .into_iter()
            .map(|r| {
                json!({ "type": r.object, "id": r.id, "deleted": r.deleted, "fields": r.fields })
            })
            .collect();
        json!({
            "org_id": ORG_ID,
            "api_usage": { "used": self.api_used.load(Ordering::Relaxed), "max": self.daily_limit },
            "records": records,
            "outbound_messages": self.notifier.outbound_messages(),
            "change_event_endpoints": self.notifier.change_event_endpoints(),
            "deliveries": {
                "outbound_messages": self.notifier.soap_outbox().records(),
                "change_events": self.notifier.event_outbox().records(),
            },
        })
    }
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Seed(#[from] schema::SeedError),
    #[error("reading JWT public key {path}")]
    JwtKeyRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("JWT public key {path} is not an RSA PEM key or certificate")]
    JwtKeyParse {
        path: String,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("invalid fault settings: {0}")]
    Faults(String),
}

impl From<StartError> for std::io::Error {
    fn from(error: StartError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, error)
    }
}

pub struct SalesforceSim {
    server: SimServer,
    shared: Arc<Shared>,
}

impl SalesforceSim {
    pub async fn start(options: Options) -> std::io::Result<SalesforceSim> {
        let shared = build(&options)?;
        let router = routes::router(shared.clone());
        let server = SimServer::start(options.listen, router).await?;
        let base = options
            .public_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| server.base_url());
        let _ = shared.base_url.set(base);
        Ok(SalesforceSim { server, shared })
    }

    /// The My Domain URL, which is also the `instance_url` in this emulator.
    pub fn base_url(&self) -> String {
        self.shared.base_url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn control(&self) -> &Arc<Control> {
        &self.shared.control
    }

    /// Outbound Message deliveries.
    pub fn outbox(&self) -> &Arc<Outbox> {
        self.shared.notifier.soap_outbox()
    }

    /// JSON change event deliveries (a separate outbox: its judge differs).
    pub fn event_outbox(&self) -> &Arc<Outbox> {
        self.shared.notifier.event_outbox()
    }

    /// Wait until both outboxes are idle; true if they are.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let soap = self.outbox().settle(timeout).await;
        let events = self.event_outbox().settle(timeout).await;
        soap && events
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }

    pub fn client_id(&self) -> &str {
        &self.shared.auth.client_id
    }

    pub fn username(&self) -> &str {
        &self.shared.auth.username
    }

    /// A session token, as the token endpoint would issue.
    pub fn issue_token(&self) -> String {
        self.shared.auth.issue()
    }

    /// End every session; the next data call gets 401 `INVALID_SESSION_ID`.
    pub fn expire_tokens(&self) {
        self.shared.auth.expire_all();
    }

    /// Calls counted against the daily allowance so far.
    pub fn api_usage(&self) -> u64 {
        self.shared.api_used.load(Ordering::Relaxed)
    }

    pub fn set_api_usage(&self, used: u64) {
        self.shared.api_used.store(used, Ordering::Relaxed);
    }

    /// Create a record directly, as a user in Salesforce's UI would (notifications fire,
    /// `changeOrigin` is empty). Needs a Tokio runtime when notification endpoints exist.
    pub fn insert(&self, object: &str, fields: Value) -> Result<String, SfError> {
        let body = object_body(fields)?;
        self.shared.commit("", |store| store.create(object, &body))
    }

    pub fn update(&self, object: &str, id: &str, fields: Value) -> Result<(), SfError> {
        let body = object_body(fields)?;
        self.shared
            .commit("", |store| store.update(object, id, &body))
    }

    pub fn upsert(
        &self,
        object: &str,
        field: &str,
        value: &str,
        fields: Value,
    ) -> Result<Upserted, SfError> {
        let body = object_body(fields)?;
        self.shared
            .commit("", |store| store.upsert(object, field, value, &body))
    }

    pub fn delete(&self, id: &str) -> Result<(), SfError> {
        self.shared.commit("", |store| store.delete(None, id))
    }

    /// A record with all its fields (deleted ones too), or `None`.
    pub fn record(&self, id: &str) -> Option<Value> {
        let store = self.shared.store.read().expect("store lock");
        store.find(id).map(|r| {
            let mut value = r.to_json(&format!("v{LATEST_VERSION}"), None);
            if let Some(map) = value.as_object_mut() {
                map.insert("_deleted".into(), Value::Bool(r.deleted));
            }
            value
        })
    }

    /// Live records of `object`, in id order.
    pub fn records(&self, object: &str) -> Vec<Value> {
        let store = self.shared.store.read().expect("store lock");
        store
            .scan(object, false)
            .map(|r| r.to_json(&format!("v{LATEST_VERSION}"), None))
            .collect()
    }

    /// Make writes to `id` fail with `UNABLE_TO_LOCK_ROW`: `times` writes, or until unlocked.
    pub fn lock_record(&self, id: &str, times: Option<u32>) {
        self.shared
            .store
            .write()
            .expect("store lock")
            .lock(id, times);
    }

    pub fn unlock_record(&self, id: &str) {
        self.shared.store.write().expect("store lock").unlock(id);
    }

    pub fn add_outbound_message(&self, config: OutboundMessage) -> Result<String, RegisterError> {
        self.shared.notifier.add_outbound_message(config)
    }

    pub fn add_change_event_endpoint(
        &self,
        endpoint: ChangeEventEndpoint,
    ) -> Result<(), RegisterError> {
        self.shared.notifier.add_change_event_endpoint(endpoint)
    }

    /// What `GET /__sim/state` answers.
    pub fn state(&self) -> Value {
        self.shared.dump()
    }
}

fn object_body(fields: Value) -> Result<Map<String, Value>, SfError> {
    match fields {
        Value::Object(map) => Ok(map),
        _ => Err(SfError::json("record fields must be a JSON object")),
    }
}

fn build(options: &Options) -> Result<Arc<Shared>, StartError> {
    let mut schema = if options.no_seed {
        Schema::default()
    } else {
        Schema::seeded()
    };
    if let Some(path) = &options.seed_file {
        schema.apply(SeedFile::load(path)?)?;
    }
    let schema = Arc::new(schema);
    let jwt_key = match &options.jwt_public_key {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| StartError::JwtKeyRead {
                path: path.display().to_string(),
                source,
            })?;
            Some(
                jsonwebtoken::DecodingKey::from_rsa_pem(&pem).map_err(|source| {
                    StartError::JwtKeyParse {
                        path: path.display().to_string(),
                        source,
                    }
                })?,
            )
        }
        None => None,
    };
    options.faults.validate().map_err(StartError::Faults)?;
    let control = Control::new(Vendor::Salesforce, options.faults.clone());
    let delays = notify::retry_delays(options.notify_retry_delay.into(), options.notify_retries);
    let soap = Outbox::new(
        control.clone(),
        RetryPolicy {
            delays: delays.clone(),
            judge: notify::judge_ack,
            timeout: Duration::from_secs(10),
        },
    );
    let events = Outbox::new(
        control.clone(),
        RetryPolicy {
            delays,
            judge: notify::judge_json,
            timeout: Duration::from_secs(10),
        },
    );
    Ok(Arc::new(Shared {
        store: RwLock::new(Store::new(schema.clone())),
        auth: Auth::new(
            options.client_id.clone(),
            options.client_secret.clone(),
            options.username.clone(),
            options.token_ttl.into(),
            jwt_key,
        ),
        control,
        notifier: Notifier::new(schema.clone(), soap, events),
        schema,
        daily_limit: options.daily_limit,
        api_used: AtomicU64::new(0),
        allowance_since: Mutex::new(Instant::now()),
        cursors: Mutex::new(HashMap::new()),
        next_cursor: AtomicU64::new(1),
        base_url: OnceLock::new(),
    }))
}

/// Standalone `tandem sim salesforce`: start, log the URL and credentials, run until `shutdown`.
pub async fn serve(options: Options, shutdown: CancellationToken) -> std::io::Result<()> {
    let sim = SalesforceSim::start(options.clone()).await?;
    let base = sim.base_url();
    tracing::info!(
        base_url = %base,
        token_url = %format!("{base}/services/oauth2/token"),
        client_id = %options.client_id,
        username = %options.username,
        org_id = ORG_ID,
        "salesforce emulator listening"
    );
    println!("Salesforce emulator at {base}");
    println!("  token endpoint: {base}/services/oauth2/token");
    // The default secret is public knowledge; one the operator chose is not printed.
    let secret = if options.client_secret == Options::default().client_secret {
        options.client_secret.as_str()
    } else {
        "<as configured>"
    };
    println!(
        "  client_id={} client_secret={secret} (JWT sub: {})",
        options.client_id, options.username
    );
    println!("  control: {base}/__sim/faults, {base}/__sim/calls, {base}/__sim/state");
    shutdown.cancelled().await;
    sim.stop().await;
    Ok(())
}
