//! OAuth 2.0 token endpoint (client credentials and JWT bearer grants), session checks on data
//! calls, and the daily API request allowance.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use super::error::SfError;
use super::store::SIM_USER_ID;
use super::{Shared, ORG_ID, VERSIONS};

/// The connected app and the sessions it has been given.
pub struct Auth {
    pub client_id: String,
    client_secret: String,
    pub username: String,
    ttl: Duration,
    jwt_key: Option<DecodingKey>,
    sessions: RwLock<HashMap<String, Instant>>,
}

impl Auth {
    pub fn new(
        client_id: String,
        client_secret: String,
        username: String,
        ttl: Duration,
        jwt_key: Option<DecodingKey>,
    ) -> Auth {
        Auth {
            client_id,
            client_secret,
            username,
            ttl,
            jwt_key,
            sessions: RwLock::new(HashMap::new()),
        }
    }

    /// A new session token, shaped like Salesforce's: the 15-character org id, `!`, then opaque
    /// characters.
    pub fn issue(&self) -> String {
        let token = format!(
            "{}!{}",
            &ORG_ID[..15],
            Alphanumeric.sample_string(&mut rand::rng(), 96)
        );
        let expires = Instant::now() + self.ttl;
        let mut sessions = self.sessions.write().expect("sessions lock");
        // Forget sessions that have run out, so a long run does not grow without bound.
        let now = Instant::now();
        sessions.retain(|_, until| *until > now);
        sessions.insert(token.clone(), expires);
        token
    }

    /// Salesforce sessions time out; this emulator counts the TTL from issue rather than from
    /// last use, which is the stricter of the two for clients.
    pub fn is_valid(&self, token: &str) -> bool {
        self.sessions
            .read()
            .expect("sessions lock")
            .get(token)
            .is_some_and(|until| *until > Instant::now())
    }

    /// End every session: the next data call answers 401 `INVALID_SESSION_ID`.
    pub fn expire_all(&self) {
        self.sessions.write().expect("sessions lock").clear();
    }

    fn signature(&self, id_url: &str, issued_at: &str) -> String {
        // Salesforce signs `id + issued_at` with the consumer secret (HMAC-SHA256, base64).
        let mut mac = Hmac::<Sha256>::new_from_slice(self.client_secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(id_url.as_bytes());
        mac.update(issued_at.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// Errors of the token endpoint: 400 `{"error","error_description"}`.
#[derive(Debug, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    error: &'static str,
    description: &'static str,
}

impl OAuthError {
    fn new(error: &'static str, description: &'static str) -> OAuthError {
        OAuthError { error, description }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": self.error, "error_description": self.description })),
        )
            .into_response()
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
}

/// `POST /services/oauth2/token`.
pub async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    match grant(&shared, &headers, &body) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn grant(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Response, OAuthError> {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let auth = &shared.auth;
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            let (id, secret) = match basic_credentials(headers) {
                Some(pair) => pair,
                None => (
                    form.get("client_id").cloned().unwrap_or_default(),
                    form.get("client_secret").cloned().unwrap_or_default(),
                ),
            };
            if id != auth.client_id {
                return Err(OAuthError::new(
                    "invalid_client_id",
                    "client identifier invalid",
                ));
            }
            if secret != auth.client_secret {
                return Err(OAuthError::new(
                    "invalid_client",
                    "invalid client credentials",
                ));
            }
        }
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let assertion = form
                .get("assertion")
                .ok_or_else(|| OAuthError::new("invalid_grant", "invalid assertion"))?;
            jwt_grant(shared, assertion)?;
        }
        Some(_) => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                "grant type not supported",
            ))
        }
        None => {
            return Err(OAuthError::new(
                "invalid_request",
                "grant type not supported",
            ))
        }
    }
    let base = shared.base_url();
    let access_token = auth.issue();
    let issued_at = chrono::Utc::now().timestamp_millis().to_string();
    let id_url = format!("{base}/id/{ORG_ID}/{SIM_USER_ID}");
    let signature = auth.signature(&id_url, &issued_at);
    Ok(Json(json!({
        "access_token": access_token,
        "instance_url": base,
        "id": id_url,
        "token_type": "Bearer",
        "issued_at": issued_at,
        "signature": signature,
        "scope": "api",
    }))
    .into_response())
}

fn jwt_grant(shared: &Shared, assertion: &str) -> Result<(), OAuthError> {
    let auth = &shared.auth;
    let key = auth.jwt_key.as_ref().ok_or_else(|| {
        OAuthError::new(
            "invalid_grant",
            "no certificate is configured for this connected app",
        )
    })?;
    let base = shared.base_url();
    let audiences = [
        "https://login.salesforce.com".to_string(),
        "https://test.salesforce.com".to_string(),
        base.clone(),
        format!("{base}/"),
    ];
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&audiences);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    // Salesforce allows a few minutes of clock skew (unconfirmed exact figure).
    validation.leeway = 60;
    let data = jsonwebtoken::decode::<Claims>(assertion, key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        // Error descriptions are the ones Salesforce is reported to give (unconfirmed wording).
        match e.kind() {
            ErrorKind::ExpiredSignature => {
                OAuthError::new("invalid_grant", "expired access/refresh token")
            }
            ErrorKind::InvalidAudience => OAuthError::new("invalid_grant", "audience is invalid"),
            _ => OAuthError::new("invalid_grant", "invalid assertion"),
        }
    })?;
    if data.claims.iss != auth.client_id {
        return Err(OAuthError::new(
            "invalid_client_id",
            "client identifier invalid",
        ));
    }
    if data.claims.sub != auth.username {
        return Err(OAuthError::new(
            "invalid_grant",
            "user hasn't approved this consumer",
        ));
    }
    Ok(())
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    // Salesforce also accepts the older `OAuth` scheme.
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("OAuth "))
        .map(str::trim)
}

fn limit_info(shared: &Shared) -> HeaderValue {
    let used = shared.api_used.load(Ordering::Relaxed);
    HeaderValue::from_str(&format!("api-usage={used}/{}", shared.daily_limit))
        .unwrap_or_else(|_| HeaderValue::from_static("api-usage=0/0"))
}

/// Every data call: a known API version, a live session, then one unit of the daily allowance.
/// Every answer carries `Sforce-Limit-Info`.
pub async fn require_session(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let version_known = request
        .uri()
        .path()
        .strip_prefix("/services/data/")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|v| {
            VERSIONS
                .iter()
                .any(|(known, _)| v.strip_prefix('v') == Some(known))
        });
    let mut response = if !version_known {
        SfError::not_found().into_response()
    } else if !bearer(request.headers()).is_some_and(|t| shared.auth.is_valid(t)) {
        SfError::session().into_response()
    } else {
        shared.roll_allowance();
        let limit = shared.daily_limit;
        let allowed = shared
            .api_used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used < limit).then_some(used + 1)
            })
            .is_ok();
        if allowed {
            next.run(request).await
        } else {
            shared.control.rate_limited(0)
        }
    };
    response
        .headers_mut()
        .insert("Sforce-Limit-Info", limit_info(&shared));
    response
}
