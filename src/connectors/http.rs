//! The one way a connector reaches its vendor: through the limiter, with timeouts, over a pooled
//! rustls client; every answer counted, every 429 turned into a pause of the whole connector.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;

use super::error::{ConnectorError, ErrorKind};
use super::limit::{CallStats, Limiter};
use crate::config::LimitSettings;

/// A vendor's answer, read to the end while the concurrency slot was held.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `Retry-After` as seconds or an HTTP date.
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get("retry-after")?.to_str().ok()?.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .ok()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How long to pause on a 429 that names no time: Atlassian's advice is a 5 s first backoff.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(5);

pub struct Http {
    connector: String,
    client: reqwest::Client,
    limiter: Arc<Limiter>,
}

impl Http {
    pub fn new(
        connector: &str,
        limits: &LimitSettings,
        stats: CallStats,
    ) -> Result<Http, ConnectorError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ConnectorError::new(
                    connector,
                    "build HTTP client",
                    ErrorKind::Transport,
                    e.to_string(),
                )
            })?;
        Ok(Http {
            connector: connector.to_string(),
            client,
            limiter: Arc::new(Limiter::new(connector, limits, stats)),
        })
    }

    pub fn connector(&self) -> &str {
        &self.connector
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Send one request and read its whole answer. Transport failures are errors; any HTTP
    /// answer, error statuses included, is returned for the vendor code to classify. A 429
    /// pauses the connector for `Retry-After` (or [`DEFAULT_PAUSE`]) before it is returned.
    pub async fn send(
        &self,
        operation: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Answer, ConnectorError> {
        let _permit = self.limiter.acquire(operation).await?;
        let transport = |e: reqwest::Error| {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "transport error"
            };
            // Without the URL: a query string can be long and carries record values.
            ConnectorError::new(
                &self.connector,
                operation,
                ErrorKind::Transport,
                format!("{what}: {}", e.without_url()),
            )
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                self.limiter.count_call(None);
                self.limiter.record_result(true);
                return Err(transport(e));
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => {
                self.limiter.count_call(None);
                self.limiter.record_result(true);
                return Err(transport(e));
            }
        };
        self.limiter.count_call(Some(status));
        self.limiter.record_result(status >= 500);
        let answer = Answer {
            status,
            headers,
            body,
        };
        if status == 429 {
            self.limiter
                .pause(answer.retry_after().unwrap_or(DEFAULT_PAUSE));
        }
        Ok(answer)
    }

    /// A generic error for an answer whose body names no vendor code.
    pub fn error(&self, operation: &str, answer: &Answer, message: String) -> ConnectorError {
        let mut error = ConnectorError::new(
            &self.connector,
            operation,
            ConnectorError::kind_for_status(answer.status),
            message,
        )
        .with_status(answer.status);
        if let Some(after) = answer.retry_after() {
            error = error.with_retry_after(after);
        }
        error
    }
}
