//! Connector settings and the serde helpers that keep key paths intact through tagged sections.

use std::time::Duration;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use url::Url;

use super::Secret;

/// Marks an inner key path inside a serde error message (see [`nested`]).
const MARK: char = '\u{1}';

/// Deserialize a buffered section, keeping the path of an error found inside it.
///
/// Tagged sections (`kind = "jira"`, `method = "basic"`) are buffered before the variant is
/// chosen, which would otherwise lose the path below them; the inner path travels in the message
/// and [`split_nested`] puts it back.
pub(crate) fn nested<T: DeserializeOwned, E: serde::de::Error>(
    value: Value,
    prefix: Option<&str>,
) -> Result<T, E> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let outer = e.path().to_string();
        let message = e.inner().to_string();
        let (inner, message) = split_nested(&message);
        let mut parts: Vec<&str> = Vec::new();
        parts.extend(prefix);
        if outer != "." {
            parts.push(&outer);
        }
        parts.extend(inner);
        if parts.is_empty() {
            E::custom(message)
        } else {
            E::custom(format!("{MARK}{}{MARK}{message}", parts.join(".")))
        }
    })
}

/// Split a message made by [`nested`] into its inner path and the message proper.
pub(crate) fn split_nested(message: &str) -> (Option<&str>, &str) {
    if let Some(rest) = message.strip_prefix(MARK) {
        if let Some((path, msg)) = rest.split_once(MARK) {
            return (Some(path), msg);
        }
    }
    (None, message)
}

/// Remove and return the tag of a tagged section, checking it against the allowed values.
fn take_tag<E: serde::de::Error>(
    value: &mut Value,
    tag: &str,
    allowed: &[&str],
) -> Result<String, E> {
    let Some(table) = value.as_object_mut() else {
        return Err(E::custom("expected a table"));
    };
    let located = |msg: String| E::custom(format!("{MARK}{tag}{MARK}{msg}"));
    match table.remove(tag) {
        None => Err(located(format!(
            "missing; expected one of {}",
            allowed.join(", ")
        ))),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(s),
        Some(other) => Err(located(format!(
            "unknown value {other}; expected one of {}",
            allowed.join(", ")
        ))),
    }
}

/// Durations as humans write them: `30s`, `15m`, `1h 30m`, `250ms`.
pub(crate) mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(D::Error::custom)
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. `30s`, `15m`, `1h`"))
    }

    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = Option::<String>::deserialize(d)?;
            text.map(|t| parse(&t).map_err(D::Error::custom))
                .transpose()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorKind {
    Jira,
    Salesforce,
}

impl ConnectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorKind::Jira => "jira",
            ConnectorKind::Salesforce => "salesforce",
        }
    }
}

/// One configured system.
#[derive(Debug, Clone)]
pub enum ConnectorSettings {
    Jira(JiraSettings),
    Salesforce(SalesforceSettings),
}

impl<'de> Deserialize<'de> for ConnectorSettings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = Value::deserialize(d)?;
        match take_tag::<D::Error>(&mut value, "kind", &["jira", "salesforce"])?.as_str() {
            "jira" => nested(value, None).map(ConnectorSettings::Jira),
            _ => nested(value, None).map(ConnectorSettings::Salesforce),
        }
    }
}

impl ConnectorSettings {
    pub fn kind(&self) -> ConnectorKind {
        match self {
            ConnectorSettings::Jira(_) => ConnectorKind::Jira,
            ConnectorSettings::Salesforce(_) => ConnectorKind::Salesforce,
        }
    }

    pub fn limits(&self) -> &LimitSettings {
        match self {
            ConnectorSettings::Jira(j) => &j.limits,
            ConnectorSettings::Salesforce(s) => &s.limits,
        }
    }

    pub fn base_url(&self) -> &Url {
        match self {
            ConnectorSettings::Jira(j) => &j.base_url,
            ConnectorSettings::Salesforce(s) => &s.base_url,
        }
    }

    /// Problems as (path below the connector, message).
    pub(crate) fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !matches!(self.base_url().scheme(), "http" | "https") {
            problems.push((
                "base_url".to_string(),
                format!("`{}` must be an http or https URL", self.base_url()),
            ));
        }
        let limits = self.limits();
        if !(limits.requests_per_second.is_finite() && limits.requests_per_second > 0.0) {
            problems.push((
                "limits.requests_per_second".into(),
                "must be greater than 0".into(),
            ));
        }
        if limits.burst == Some(0) {
            problems.push(("limits.burst".into(), "must be at least 1".into()));
        }
        if limits.max_concurrency == 0 {
            problems.push(("limits.max_concurrency".into(), "must be at least 1".into()));
        }
        if limits.probe_after.is_zero() {
            problems.push(("limits.probe_after".into(), "must be longer than 0s".into()));
        }
        if limits.daily_budget == Some(0) {
            problems.push((
                "limits.daily_budget".into(),
                "must be at least 1 (leave it out for no budget)".into(),
            ));
        }
        if let Some(share) = limits.daily_budget_share {
            if self.kind() == ConnectorKind::Jira {
                problems.push((
                    "limits.daily_budget_share".into(),
                    "Jira reports no daily allowance to take a share of; set daily_budget".into(),
                ));
            } else if !(share > 0.0 && share <= 1.0) {
                problems.push((
                    "limits.daily_budget_share".into(),
                    format!("{share} is not a share in (0, 1]"),
                ));
            }
        }
        if let ConnectorSettings::Salesforce(sf) = self {
            let valid = sf
                .api_version
                .split_once('.')
                .is_some_and(|(major, minor)| {
                    !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()) && minor == "0"
                });
            if !valid {
                problems.push((
                    "api_version".into(),
                    format!("`{}` is not an API version like `60.0`", sf.api_version),
                ));
            }
        }
        problems
    }
}

/// Request rate, concurrency and daily budget of one connector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Sustained request rate. Default 10.
    #[serde(default = "default_rps")]
    pub requests_per_second: f64,
    /// Requests allowed at once above the rate. Default: the rate, rounded up.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Requests in flight at once. Default 4.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    /// API calls Tandem may spend per UTC day; leave out for no budget.
    #[serde(default)]
    pub daily_budget: Option<u64>,
    /// Tandem's share of the vendor's reported allowance (`0.5` = half of the org's daily API
    /// requests), leaving the rest to the org's other integrations. With `daily_budget` too, the
    /// smaller wins.
    #[serde(default)]
    pub daily_budget_share: Option<f64>,
    /// Whole-request timeout. Default `30s`.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// TCP/TLS connect timeout. Default `5s`.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// How long all calls stop when the vendor says its allowance is spent without saying
    /// until when (Salesforce `REQUEST_LIMIT_EXCEEDED`); then one call probes. Default `60s`.
    #[serde(default = "default_probe_after", with = "duration")]
    pub probe_after: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            requests_per_second: default_rps(),
            burst: None,
            max_concurrency: default_concurrency(),
            daily_budget: None,
            daily_budget_share: None,
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            probe_after: default_probe_after(),
        }
    }
}

fn default_rps() -> f64 {
    10.0
}
fn default_concurrency() -> u32 {
    4
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_probe_after() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JiraSettings {
    /// `https://{site}.atlassian.net`, or `https://api.atlassian.com/ex/jira/{cloudId}` for OAuth.
    pub base_url: Url,
    pub auth: JiraAuth,
    /// Shared secret Jira signs webhooks with (`X-Hub-Signature`).
    #[serde(default)]
    pub webhook_secret: Option<Secret>,
    /// Accept unsigned webhooks. Default false; only for a network you trust end to end.
    #[serde(default)]
    pub allow_unsigned_webhooks: bool,
    #[serde(default)]
    pub limits: LimitSettings,
}

/// How Tandem authenticates to Jira Cloud.
#[derive(Debug, Clone)]
pub enum JiraAuth {
    /// Account email and API token (HTTP basic).
    Basic { email: String, api_token: Secret },
    /// An OAuth 2.0 access token (bearer).
    OAuth { access_token: Secret },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JiraBasic {
    email: String,
    api_token: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JiraOAuth {
    access_token: Secret,
}

impl<'de> Deserialize<'de> for JiraAuth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = Value::deserialize(d)?;
        match take_tag::<D::Error>(&mut value, "method", &["basic", "oauth"])?.as_str() {
            "basic" => nested::<JiraBasic, _>(value, None).map(|b| JiraAuth::Basic {
                email: b.email,
                api_token: b.api_token,
            }),
            _ => nested::<JiraOAuth, _>(value, None).map(|o| JiraAuth::OAuth {
                access_token: o.access_token,
            }),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceSettings {
    /// The org's My Domain URL (`https://{mydomain}.my.salesforce.com`); tokens come from here and
    /// the token answer's `instance_url` is used for data calls.
    pub base_url: Url,
    /// REST API version. Default `60.0`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    pub auth: SalesforceAuth,
    /// The 18-character org id; Outbound Messages from any other org are refused.
    #[serde(default)]
    pub organization_id: Option<String>,
    /// Shared secret every notification must carry, in the URL (`/webhooks/{name}/{secret}`:
    /// Outbound Messages cannot add headers) or in an `X-Tandem-Webhook-Token` header.
    #[serde(default)]
    pub webhook_secret: Option<Secret>,
    /// Accept notifications without the secret. Default false; only for a network you trust.
    #[serde(default)]
    pub allow_unauthenticated_webhooks: bool,
    #[serde(default)]
    pub limits: LimitSettings,
}

fn default_api_version() -> String {
    "60.0".to_string()
}

/// How Tandem authenticates to Salesforce (both flows give no refresh token; Tandem asks again).
#[derive(Debug, Clone)]
pub enum SalesforceAuth {
    ClientCredentials {
        client_id: String,
        client_secret: Secret,
    },
    JwtBearer {
        client_id: String,
        username: String,
        /// PEM RSA private key whose certificate is on the connected app.
        private_key: Secret,
        /// `aud` claim. Default `https://login.salesforce.com`.
        audience: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SfClientCredentials {
    client_id: String,
    client_secret: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SfJwtBearer {
    client_id: String,
    username: String,
    private_key: Secret,
    #[serde(default = "default_audience")]
    audience: String,
}

fn default_audience() -> String {
    "https://login.salesforce.com".to_string()
}

impl<'de> Deserialize<'de> for SalesforceAuth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = Value::deserialize(d)?;
        let allowed = ["client_credentials", "jwt_bearer"];
        match take_tag::<D::Error>(&mut value, "method", &allowed)?.as_str() {
            "client_credentials" => nested::<SfClientCredentials, _>(value, None).map(|c| {
                SalesforceAuth::ClientCredentials {
                    client_id: c.client_id,
                    client_secret: c.client_secret,
                }
            }),
            _ => nested::<SfJwtBearer, _>(value, None).map(|j| SalesforceAuth::JwtBearer {
                client_id: j.client_id,
                username: j.username,
                private_key: j.private_key,
                audience: j.audience,
            }),
        }
    }
}
