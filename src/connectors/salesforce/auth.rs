//! OAuth 2.0 sessions: client credentials or JWT bearer, fetched lazily, cached, and replaced
//! once per expiry however many requests notice it at the same time.
//!
//! Neither flow has a refresh token: a new session is simply asked for again. Nothing here
//! implements `Debug`, so a token or key cannot end up in a log by accident.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use url::Url;

use super::super::error::{ConnectorError, ErrorKind};
use super::super::http::Http;
use crate::config::{SalesforceAuth, Secret};

/// How long a JWT assertion is valid: Salesforce asks for about three minutes.
const ASSERTION_TTL: Duration = Duration::from_secs(180);

const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// One access token and where to use it.
pub(super) struct Session {
    pub token: String,
    /// The `instance_url` of the token answer, without a trailing slash.
    pub instance_url: String,
    /// Which fetch this is; a request that failed with an older session knows a newer one
    /// is already there.
    pub generation: u64,
}

enum Grant {
    ClientCredentials {
        client_id: String,
        client_secret: Secret,
    },
    JwtBearer {
        client_id: String,
        username: String,
        key: EncodingKey,
        audience: String,
    },
}

pub(super) struct Tokens {
    connector: String,
    token_url: Url,
    grant: Grant,
    /// The current session. A Tokio mutex held across the token call: requests arriving
    /// while a session is being fetched wait for it instead of fetching their own.
    current: Mutex<Option<Arc<Session>>>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    instance_url: String,
}

#[derive(Deserialize)]
struct TokenError {
    error: Option<String>,
    error_description: Option<String>,
}

impl Tokens {
    pub fn new(
        connector: &str,
        base_url: &Url,
        auth: &SalesforceAuth,
    ) -> Result<Tokens, ConnectorError> {
        let fail = |message: String| {
            ConnectorError::new(connector, "configure OAuth", ErrorKind::Auth, message)
        };
        let token_url = base_url
            .join("/services/oauth2/token")
            .map_err(|e| fail(format!("no token URL from base_url: {e}")))?;
        let grant = match auth {
            SalesforceAuth::ClientCredentials {
                client_id,
                client_secret,
            } => Grant::ClientCredentials {
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
            },
            SalesforceAuth::JwtBearer {
                client_id,
                username,
                private_key,
                audience,
            } => Grant::JwtBearer {
                client_id: client_id.clone(),
                username: username.clone(),
                // Parsed now so a bad key is a startup error, not a failure on the first sync.
                key: EncodingKey::from_rsa_pem(private_key.expose().as_bytes())
                    .map_err(|e| fail(format!("the JWT private key is not an RSA PEM key: {e}")))?,
                audience: audience.clone(),
            },
        };
        Ok(Tokens {
            connector: connector.to_string(),
            token_url,
            grant,
            current: Mutex::new(None),
        })
    }

    /// The cached session, fetching one on first use.
    pub async fn session(&self, http: &Http) -> Result<Arc<Session>, ConnectorError> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref() {
            return Ok(session.clone());
        }
        let session = Arc::new(self.fetch(http, 1).await?);
        *current = Some(session.clone());
        Ok(session)
    }

    /// A session newer than `stale`: fetched now if `stale` is still the current one, else the
    /// one another request already fetched. Many requests failing on one expired token thus
    /// cost one token call.
    pub async fn renew(&self, http: &Http, stale: u64) -> Result<Arc<Session>, ConnectorError> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref() {
            if session.generation != stale {
                return Ok(session.clone());
            }
        }
        let session = Arc::new(self.fetch(http, stale + 1).await?);
        *current = Some(session.clone());
        Ok(session)
    }

    fn error(&self, kind: ErrorKind, message: impl Into<String>) -> ConnectorError {
        ConnectorError::new(&self.connector, "get OAuth token", kind, message)
    }

    async fn fetch(&self, http: &Http, generation: u64) -> Result<Session, ConnectorError> {
        let form: Vec<(&str, String)> = match &self.grant {
            Grant::ClientCredentials {
                client_id,
                client_secret,
            } => vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", client_id.clone()),
                ("client_secret", client_secret.expose().to_string()),
            ],
            Grant::JwtBearer {
                client_id,
                username,
                key,
                audience,
            } => {
                let claims = Claims {
                    iss: client_id,
                    sub: username,
                    aud: audience,
                    exp: chrono::Utc::now().timestamp() + ASSERTION_TTL.as_secs() as i64,
                };
                let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
                    .map_err(|e| {
                        self.error(ErrorKind::Auth, format!("cannot sign the assertion: {e}"))
                    })?;
                vec![("grant_type", JWT_GRANT.into()), ("assertion", assertion)]
            }
        };
        // Token calls are not data API requests and do not spend the daily allowance, so they
        // bypass the limiter; they are still counted so they show in metrics.
        let limiter = http.limiter();
        let response = match http
            .client()
            .post(self.token_url.clone())
            .form(&form)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => {
                limiter.count_call(None);
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "transport error"
                };
                return Err(
                    self.error(ErrorKind::Transport, format!("{what}: {}", e.without_url()))
                );
            }
        };
        let status = response.status().as_u16();
        limiter.count_call(Some(status));
        let body = response.bytes().await.map_err(|e| {
            self.error(
                ErrorKind::Transport,
                format!("reading the token answer: {}", e.without_url()),
            )
        })?;
        if (200..300).contains(&status) {
            // serde's own message could quote a value, and a value here may be the token.
            let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
                self.error(
                    ErrorKind::Protocol,
                    "the token answer is not JSON with access_token and instance_url",
                )
                .with_status(status)
            })?;
            let instance = Url::parse(&answer.instance_url).map_err(|e| {
                self.error(
                    ErrorKind::Protocol,
                    format!("instance_url `{}` is not a URL: {e}", answer.instance_url),
                )
            })?;
            // The bearer token goes to this URL: only over TLS, except to a loopback address
            // (the emulators, a local proxy).
            let loopback = match instance.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(name)) => name == "localhost",
                None => false,
            };
            let secure = instance.scheme() == "https" || (instance.scheme() == "http" && loopback);
            if !secure || answer.access_token.is_empty() {
                return Err(self.error(
                    ErrorKind::Protocol,
                    "the token answer has no usable access_token, or an instance_url that is not https",
                ));
            }
            tracing::debug!(connector = %self.connector, generation, "new Salesforce session");
            return Ok(Session {
                token: answer.access_token,
                instance_url: answer.instance_url.trim_end_matches('/').to_string(),
                generation,
            });
        }
        let kind = match status {
            500..=599 => ErrorKind::Server,
            429 => ErrorKind::RateLimited,
            _ => ErrorKind::Auth,
        };
        let mut error = match serde_json::from_slice::<TokenError>(&body) {
            Ok(TokenError {
                error,
                error_description,
            }) if error.is_some() || error_description.is_some() => {
                let message = error_description
                    .clone()
                    .or_else(|| error.clone())
                    .unwrap_or_default();
                let e = self.error(kind, message);
                match error {
                    Some(code) => e.with_code(code),
                    None => e,
                }
            }
            // Faults in front of the token endpoint (an org over its limit, maintenance) may
            // answer with the data API's error array instead (unconfirmed).
            _ => match super::vendor_error(&body) {
                Some(vendor) => {
                    let e = self.error(
                        super::classify(vendor.code.as_deref(), Some(status)),
                        vendor.message,
                    );
                    match vendor.code {
                        Some(code) => e.with_code(code),
                        None => e,
                    }
                }
                None => self.error(kind, format!("token endpoint answered HTTP {status}")),
            },
        };
        error = error.with_status(status);
        Err(error)
    }
}
