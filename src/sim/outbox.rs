//! Outgoing webhook delivery with the vendor's retry behaviour.
//!
//! Each delivery runs as its own task, so deliveries can overtake each other, as the real
//! services' can. The verdict on an answer and the retry schedule are the vendor's (Jira: retry
//! on 408/409/425/429/5xx and connection failures, up to 5 retries; Salesforce Outbound Messages:
//! retry until the answer carries the `Ack`). Schedules are shortened by default so that tests
//! and the demo see retries in seconds, not the minutes and hours the real services wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde::Serialize;
use tokio::sync::Notify;

use super::control::Control;

/// What to do after an answer (or its absence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    Retry,
    GiveUp,
}

/// Judges an answer: `None` for a connection failure or timeout.
pub type Judge = fn(Option<StatusCode>, &[u8]) -> Verdict;

#[derive(Clone)]
pub struct RetryPolicy {
    /// Waits before each retry; the number of entries is the number of retries.
    pub delays: Vec<Duration>,
    pub judge: Judge,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

/// One webhook to send.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
    Dropped,
}

/// A delivery as `/__sim/state` and tests see it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    pub id: u64,
    pub url: String,
    pub attempts: u32,
    pub status: DeliveryStatus,
    pub last_http_status: Option<u16>,
}

pub struct Outbox {
    client: reqwest::Client,
    control: Arc<Control>,
    policy: RetryPolicy,
    records: Mutex<Vec<DeliveryRecord>>,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Outbox {
    pub fn new(control: Arc<Control>, policy: RetryPolicy) -> Arc<Outbox> {
        Arc::new(Outbox {
            client: reqwest::Client::builder()
                .timeout(policy.timeout)
                .build()
                .expect("a plain HTTP client builds"),
            control,
            policy,
            records: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    /// Queue a delivery; returns at once.
    pub fn send(self: &Arc<Self>, delivery: Delivery) {
        self.queue(delivery, None);
    }

    /// Queue a delivery whose retries carry `header: N` (the retry number), as Jira's do.
    pub fn send_numbered(self: &Arc<Self>, delivery: Delivery, header: &'static str) {
        self.queue(delivery, Some(header));
    }

    fn queue(self: &Arc<Self>, delivery: Delivery, retry_header: Option<&'static str>) {
        let dropped = self.control.faults().drop_webhooks;
        let id = {
            // The id is taken under the same lock as the push, so it is always the index + 1.
            let mut records = self.records.lock().expect("outbox lock");
            let id = records.len() as u64 + 1;
            records.push(DeliveryRecord {
                id,
                url: delivery.url.clone(),
                attempts: 0,
                status: if dropped {
                    DeliveryStatus::Dropped
                } else {
                    DeliveryStatus::Pending
                },
                last_http_status: None,
            });
            id
        };
        if dropped {
            return;
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let outbox = self.clone();
        tokio::spawn(async move {
            outbox.deliver(id, delivery, retry_header).await;
            if outbox.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
                outbox.idle.notify_waiters();
            }
        });
    }

    async fn deliver(&self, id: u64, delivery: Delivery, retry_header: Option<&'static str>) {
        let mut attempt = 0usize;
        loop {
            let mut request = self.client.post(&delivery.url).body(delivery.body.clone());
            for (name, value) in &delivery.headers {
                request = request.header(name, value);
            }
            if let (Some(header), true) = (retry_header, attempt > 0) {
                request = request.header(header, attempt.to_string());
            }
            let (status, verdict) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let body = response.bytes().await.unwrap_or_default();
                    (Some(status), (self.policy.judge)(Some(status), &body))
                }
                Err(_) => (None, (self.policy.judge)(None, &[])),
            };
            let final_status = match verdict {
                Verdict::Delivered => Some(DeliveryStatus::Delivered),
                Verdict::GiveUp => Some(DeliveryStatus::Failed),
                Verdict::Retry if attempt >= self.policy.delays.len() => {
                    Some(DeliveryStatus::Failed)
                }
                Verdict::Retry => None,
            };
            self.update(id, |r| {
                r.attempts += 1;
                r.last_http_status = status.map(|s| s.as_u16());
                if let Some(s) = &final_status {
                    r.status = s.clone();
                }
            });
            if final_status.is_some() {
                return;
            }
            tokio::time::sleep(self.policy.delays[attempt]).await;
            attempt += 1;
        }
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut DeliveryRecord)) {
        let mut records = self.records.lock().expect("outbox lock");
        // Records are never removed and ids are their position + 1 (see `queue`).
        let at = usize::try_from(id.saturating_sub(1)).unwrap_or(usize::MAX);
        if let Some(record) = records.get_mut(at) {
            debug_assert_eq!(record.id, id);
            f(record);
        }
    }

    pub fn records(&self) -> Vec<DeliveryRecord> {
        self.records.lock().expect("outbox lock").clone()
    }

    /// Wait until no delivery is pending (or `timeout` passes); true if idle.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight.load(Ordering::SeqCst) == 0;
            }
        }
    }
}
