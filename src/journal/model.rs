//! The journal's row types: what callers hand in and what they get back.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A row of the `changes` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChangeId(pub i64);

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A row of the `dead_letters` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeadLetterId(pub i64);

impl fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    Upsert,
    Delete,
}

/// How a change reached the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Webhook,
    Poll,
    Reconcile,
    Backfill,
    Replay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeStatus {
    Pending,
    InFlight,
    Done,
    Dead,
}

macro_rules! sql_text {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $text),+ }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(<$ty>::$variant),)+
                    other => Err(format!("unknown {} `{other}`", stringify!($ty))),
                }
            }
        }
    };
}

sql_text!(ChangeOp { Upsert => "upsert", Delete => "delete" });
sql_text!(Origin {
    Webhook => "webhook",
    Poll => "poll",
    Reconcile => "reconcile",
    Backfill => "backfill",
    Replay => "replay",
});
sql_text!(ChangeStatus {
    Pending => "pending",
    InFlight => "in_flight",
    Done => "done",
    Dead => "dead",
});

impl ChangeStatus {
    pub const ALL: [ChangeStatus; 4] = [
        ChangeStatus::Pending,
        ChangeStatus::InFlight,
        ChangeStatus::Done,
        ChangeStatus::Dead,
    ];
}

/// An observation that a record changed, as ingest hands it to the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChange {
    pub connector: String,
    pub object: String,
    pub record_id: String,
    pub op: ChangeOp,
    /// The fields observed, as a JSON object (may be partial).
    pub snapshot: serde_json::Value,
    /// The source's own modified time, epoch milliseconds, when it said.
    pub source_modified_at: Option<i64>,
    pub origin: Origin,
    /// Identifies the event: a redelivery carries the same key and is absorbed.
    pub dedupe_key: String,
}

/// What appending one change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored as a new row.
    New(ChangeId),
    /// A change with the same dedupe key was already there.
    Duplicate(ChangeId),
}

impl Appended {
    pub fn id(self) -> ChangeId {
        match self {
            Appended::New(id) | Appended::Duplicate(id) => id,
        }
    }
}

/// How far a poller has read; stored with the page it read, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub connector: String,
    pub object: String,
    /// The flow the poll belongs to, or empty for a connector-wide poll.
    pub scope: String,
    /// Source modified time reached, epoch milliseconds.
    pub position: i64,
    /// The last record id at `position`, breaking ties among equal times.
    pub last_record_id: String,
}

/// A change claimed by a worker under a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub id: ChangeId,
    pub connector: String,
    pub object: String,
    pub record_id: String,
    pub op: ChangeOp,
    pub snapshot: serde_json::Value,
    pub source_modified_at: Option<i64>,
    pub origin: Origin,
    pub received_at: i64,
    pub dedupe_key: String,
    /// Attempts including the current one.
    pub attempts: i64,
    pub lease_expires_at: i64,
}

/// Everything an operator needs to understand and replay a permanent failure.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    pub flow: Option<String>,
    pub connector: String,
    pub operation: String,
    pub payload: serde_json::Value,
    pub http_status: Option<u16>,
    pub vendor_code: Option<String>,
    pub vendor_message: Option<String>,
    /// When the first attempt failed, epoch milliseconds.
    pub first_failed_at: i64,
}
