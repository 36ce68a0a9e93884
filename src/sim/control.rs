//! Fault injection, per-endpoint call counters and the `/__sim/` control routes.
//!
//! Faults are settable at start and at run time (`PUT /__sim/faults`). Injected errors use the
//! vendor's own shapes: Jira's `{"errorMessages":[…]}` with 429 + `Retry-After`, Salesforce's
//! error array with `REQUEST_LIMIT_EXCEEDED` (403, no `Retry-After`, as the real API does).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Faults to inject. Rates are shares of requests in `[0, 1]`, drawn independently per request.
/// Settable at start (`--fault-*` flags of `tandem sim …`) and at run time (`PUT /__sim/faults`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Latency added before every answer, milliseconds.
    #[arg(long = "fault-latency-ms", default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of calls answered 500 or 503 (half each).
    #[arg(long = "fault-error-rate", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Share of calls answered as rate-limited (a storm at 1.0).
    #[arg(long = "fault-rate-limit-rate", default_value_t = 0.0)]
    pub rate_limit_rate: f64,
    /// `Retry-After` on injected Jira 429s, seconds.
    #[arg(long = "fault-retry-after-secs", default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Share of calls never answered: the client's timeout is what ends them.
    #[arg(long = "fault-hang-rate", default_value_t = 0.0)]
    pub hang_rate: f64,
    /// Drop outgoing webhooks and notifications instead of delivering them.
    #[arg(long = "fault-drop-webhooks")]
    pub drop_webhooks: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency_ms: 0,
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            hang_rate: 0.0,
            drop_webhooks: false,
        }
    }
}

impl Faults {
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("hang_rate", self.hang_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Jira,
    Salesforce,
}

/// Shared by an emulator's handlers and its control routes.
pub struct Control {
    vendor: Vendor,
    faults: RwLock<Faults>,
    calls: Mutex<HashMap<String, u64>>,
}

impl Control {
    pub fn new(vendor: Vendor, faults: Faults) -> Arc<Control> {
        Arc::new(Control {
            vendor,
            faults: RwLock::new(faults),
            calls: Mutex::new(HashMap::new()),
        })
    }

    pub fn faults(&self) -> Faults {
        self.faults.read().expect("faults lock").clone()
    }

    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        *self.faults.write().expect("faults lock") = faults;
        Ok(())
    }

    /// Calls by `METHOD /route/{template}`, control routes excluded.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        let calls = self.calls.lock().expect("calls lock");
        calls.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Total calls across every endpoint.
    pub fn total_calls(&self) -> u64 {
        self.calls.lock().expect("calls lock").values().sum()
    }

    pub fn reset_calls(&self) {
        self.calls.lock().expect("calls lock").clear();
    }

    fn count(&self, key: String) {
        *self
            .calls
            .lock()
            .expect("calls lock")
            .entry(key)
            .or_default() += 1;
    }

    /// The vendor's answer for an injected 500/503.
    fn server_error(&self, status: StatusCode) -> Response {
        match self.vendor {
            Vendor::Jira => (
                status,
                Json(json!({ "errorMessages": ["Internal server error"], "errors": {} })),
            )
                .into_response(),
            Vendor::Salesforce => {
                let code = if status == StatusCode::SERVICE_UNAVAILABLE {
                    "SERVER_UNAVAILABLE"
                } else {
                    "UNKNOWN_EXCEPTION"
                };
                (
                    status,
                    Json(
                        json!([{ "message": "An unexpected error occurred.", "errorCode": code }]),
                    ),
                )
                    .into_response()
            }
        }
    }

    /// The vendor's answer when its rate limit is hit.
    pub fn rate_limited(&self, retry_after_secs: u64) -> Response {
        match self.vendor {
            Vendor::Jira => {
                let mut response = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({ "errorMessages": ["Rate limit exceeded."], "errors": {} })),
                )
                    .into_response();
                let headers = response.headers_mut();
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                headers.insert(
                    "RateLimit-Reason",
                    HeaderValue::from_static("jira-burst-based"),
                );
                response
            }
            Vendor::Salesforce => (
                StatusCode::FORBIDDEN,
                Json(json!([{
                    "message": "TotalRequests Limit exceeded.",
                    "errorCode": "REQUEST_LIMIT_EXCEEDED"
                }])),
            )
                .into_response(),
        }
    }
}

/// Count the call, then apply the configured faults. Installed with `route_layer`, so the
/// matched route template is known.
pub async fn inject(State(control): State<Arc<Control>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_string(),
        |p| p.as_str().to_string(),
    );
    control.count(format!("{} {route}", request.method()));
    let faults = control.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let roll: f64 = rand::random();
    if roll < faults.hang_rate {
        // Never answers; ends when the client gives up and the connection closes.
        std::future::pending::<()>().await;
    }
    let roll = roll - faults.hang_rate;
    if roll >= 0.0 && roll < faults.rate_limit_rate {
        return control.rate_limited(faults.retry_after_secs);
    }
    let roll = roll - faults.rate_limit_rate;
    if roll >= 0.0 && roll < faults.error_rate {
        let status = if rand::random::<bool>() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return control.server_error(status);
    }
    next.run(request).await
}

/// Returns the emulator's state as JSON, for `GET /__sim/state`.
pub type StateDump = Arc<dyn Fn() -> Value + Send + Sync>;

#[derive(Clone)]
struct ControlState {
    control: Arc<Control>,
    dump: StateDump,
}

/// `/__sim/faults` (GET, PUT), `/__sim/calls` (GET, DELETE), `/__sim/state` (GET).
pub fn routes(control: Arc<Control>, dump: StateDump) -> Router {
    Router::new()
        .route("/__sim/faults", get(get_faults).put(put_faults))
        .route("/__sim/calls", get(get_calls).delete(delete_calls))
        .route("/__sim/state", get(get_state))
        .with_state(ControlState { control, dump })
}

async fn get_faults(State(s): State<ControlState>) -> Json<Faults> {
    Json(s.control.faults())
}

async fn put_faults(
    State(s): State<ControlState>,
    Json(faults): Json<Faults>,
) -> Result<Json<Faults>, (StatusCode, Json<Value>)> {
    s.control
        .set_faults(faults)
        .map_err(|e| (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))))?;
    Ok(Json(s.control.faults()))
}

async fn get_calls(State(s): State<ControlState>) -> Json<Value> {
    Json(json!({ "total": s.control.total_calls(), "by_endpoint": s.control.calls() }))
}

async fn delete_calls(State(s): State<ControlState>) -> StatusCode {
    s.control.reset_calls();
    StatusCode::NO_CONTENT
}

async fn get_state(State(s): State<ControlState>) -> Json<Value> {
    Json((s.dump)())
}
