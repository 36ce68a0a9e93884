//! Bulk writes for a scheduled run: the engine decides each change on its own, as in realtime,
//! but its writes are gathered and sent with the vendors' bulk APIs (Salesforce sObject
//! Collections, up to 200 records a call; Jira bulk create, up to 50).
//!
//! The run starts one task per claimed change and tells the batch how many there are. A task
//! that reaches its write parks it here and waits. A queue is sent as soon as it is full, and
//! everything parked is sent once every task still running is parked (nobody else can add to
//! it): no timer, so a batch is as large as the work allows and never waits for nothing. Each
//! record gets its own result back, so a partial failure retries or dead-letters that record
//! alone.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::config::ConnectorKind;
use crate::connectors::limit::{calls_in_scope, counting_calls};
use crate::connectors::{Connector, ConnectorError, Connectors, Created, NewRecord, Record};

type Reply<T> = oneshot::Sender<Result<T, ConnectorError>>;
/// A connector and an object: one queue, one kind of bulk call.
type Key = (String, String);
type Update = (String, Map<String, Value>, Reply<()>);
type Create = (NewRecord, Reply<Created>);
/// A connector, an object and the fields asked for: one queue of reads.
type ReadKey = (String, String, Vec<String>);
type Read = (String, Reply<Option<Record>>);

#[derive(Default)]
struct Queues {
    /// Tasks of the run not finished yet.
    outstanding: usize,
    /// Writes parked, over all queues.
    parked: usize,
    updates: BTreeMap<Key, Vec<Update>>,
    creates: BTreeMap<Key, Vec<Create>>,
    reads: BTreeMap<ReadKey, Vec<Read>>,
}

/// Writes ready to send: taken out of the queues under the lock, sent after it.
#[derive(Default)]
struct Ready {
    updates: Vec<(Key, Vec<Update>)>,
    creates: Vec<(Key, Vec<Create>)>,
    reads: Vec<(ReadKey, Vec<Read>)>,
}

impl Ready {
    fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.creates.is_empty() && self.reads.is_empty()
    }
}

pub struct Batch {
    connectors: Connectors,
    queues: Mutex<Queues>,
    /// The run's call counter, for sends started from a task's drop.
    calls: Option<Arc<AtomicU64>>,
}

/// Held by each task of the run; dropping it (finished, failed or panicked) tells the batch the
/// task will park nothing more.
pub struct Member {
    batch: Arc<Batch>,
}

impl Drop for Member {
    fn drop(&mut self) {
        let ready = {
            let mut queues = self.batch.lock();
            queues.outstanding = queues.outstanding.saturating_sub(1);
            self.batch.take_ready(&mut queues)
        };
        if !ready.is_empty() {
            let batch = self.batch.clone();
            let send = async move { batch.send(ready).await };
            match self.batch.calls.clone() {
                Some(calls) => tokio::spawn(counting_calls(calls, send)),
                None => tokio::spawn(send),
            };
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Update,
    Create,
    Read,
}

/// The most records one bulk call takes, or `None` when the vendor has no bulk call worth
/// using (Jira edits are one issue per call: its bulk edit is an asynchronous task that sets
/// the same values on every issue).
fn chunk(kind: ConnectorKind, op: Op) -> Option<usize> {
    match (kind, op) {
        // sObject Collections take 200 records; 200 quoted ids keep a SOQL `IN` short.
        (ConnectorKind::Salesforce, _) => Some(200),
        (ConnectorKind::Jira, Op::Create) => Some(50),
        // One `search/jql` page.
        (ConnectorKind::Jira, Op::Read) => Some(100),
        (ConnectorKind::Jira, Op::Update) => None,
    }
}

impl Batch {
    pub fn new(connectors: Connectors) -> Arc<Batch> {
        Arc::new(Batch {
            connectors,
            queues: Mutex::new(Queues::default()),
            calls: calls_in_scope(),
        })
    }

    /// A task joins the batch; it leaves when the returned member is dropped.
    pub fn join(self: &Arc<Self>) -> Member {
        self.lock().outstanding += 1;
        Member {
            batch: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Full queues, or everything once every running task is parked. A parked write whose
    /// task is gone (the run was stopped and its tasks dropped) is discarded, never sent: its
    /// change was given back to the journal and nobody would settle the write.
    fn take_ready(&self, queues: &mut Queues) -> Ready {
        let kind = |connector: &str| self.connectors.get(connector).map(|c| c.kind());
        let Queues {
            outstanding,
            parked,
            updates,
            creates,
            reads,
        } = queues;
        discard_abandoned(updates, parked, |(_, _, r)| r.is_closed());
        discard_abandoned(creates, parked, |(_, r)| r.is_closed());
        discard_abandoned(reads, parked, |(_, r)| r.is_closed());
        let all = *parked > 0 && *parked >= *outstanding;
        let full = |connector: &str, len: usize, op: Op| {
            all || kind(connector)
                .and_then(|k| chunk(k, op))
                .is_some_and(|max| len >= max)
        };
        Ready {
            updates: take_full(updates, parked, |k, n| full(&k.0, n, Op::Update)),
            creates: take_full(creates, parked, |k, n| full(&k.0, n, Op::Create)),
            reads: take_full(reads, parked, |k, n| full(&k.0, n, Op::Read)),
        }
    }

    /// Send ready writes one bulk call at a time, answering each call's records as soon as it
    /// returns: they are settled while the next call is on its way, so a run killed mid-way
    /// has at most one call's records written but not yet settled.
    async fn send(&self, ready: Ready) {
        for ((connector, object), items) in ready.updates {
            let Some(target) = self.connectors.get(&connector) else {
                continue;
            };
            let size = chunk(target.kind(), Op::Update).unwrap_or(1);
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                let (writes, replies): (Vec<_>, Vec<_>) = items
                    .by_ref()
                    .take(size)
                    .map(|(id, fields, reply)| ((id, fields), reply))
                    .unzip();
                answer(replies, target.update_many(&object, writes).await);
            }
        }
        for ((connector, object), items) in ready.creates {
            let Some(target) = self.connectors.get(&connector) else {
                continue;
            };
            let size = chunk(target.kind(), Op::Create).unwrap_or(1);
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                let (records, replies): (Vec<_>, Vec<_>) = items.by_ref().take(size).unzip();
                answer(replies, target.create_many(&object, records).await);
            }
        }
        for ((connector, object, fields), items) in ready.reads {
            let Some(source) = self.connectors.get(&connector) else {
                continue;
            };
            let size = chunk(source.kind(), Op::Read).unwrap_or(1);
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                let (ids, replies): (Vec<_>, Vec<_>) = items.by_ref().take(size).unzip();
                match source.read_many(&object, &ids, &fields).await {
                    Ok(records) => {
                        let mut found: std::collections::HashMap<String, Record> =
                            records.into_iter().map(|r| (r.id.clone(), r)).collect();
                        for (id, reply) in ids.iter().zip(replies) {
                            let _ = reply.send(Ok(found.remove(id)));
                        }
                    }
                    Err(error) => {
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
            }
        }
    }

    /// Park a write, send what is ready, and wait for this write's result.
    async fn park<T>(&self, add: impl FnOnce(&mut Queues, Reply<T>)) -> Result<T, ConnectorError> {
        let (reply, result) = oneshot::channel();
        let ready = {
            let mut queues = self.lock();
            add(&mut queues, reply);
            queues.parked += 1;
            self.take_ready(&mut queues)
        };
        if !ready.is_empty() {
            self.send(ready).await;
        }
        result.await.unwrap_or_else(|_| {
            Err(ConnectorError::new(
                "batch",
                "bulk write",
                crate::connectors::ErrorKind::Transport,
                "the bulk call carrying this write was cancelled",
            ))
        })
    }

    /// Update one record, in a bulk call where the vendor has one.
    pub async fn update(
        &self,
        target: &Connector,
        object: &str,
        id: &str,
        fields: Map<String, Value>,
    ) -> Result<(), ConnectorError> {
        if chunk(target.kind(), Op::Update).is_none() {
            return target.update(object, id, fields).await;
        }
        let key = (target.name().to_string(), object.to_string());
        let id = id.to_string();
        self.park(move |queues, reply| {
            queues
                .updates
                .entry(key)
                .or_default()
                .push((id, fields, reply))
        })
        .await
    }

    /// Read one record (`None`: it no longer exists), in a bulk read.
    pub async fn read(
        &self,
        source: &Connector,
        object: &str,
        id: &str,
        fields: Vec<String>,
    ) -> Result<Option<Record>, ConnectorError> {
        let key = (source.name().to_string(), object.to_string(), fields);
        let id = id.to_string();
        self.park(move |queues, reply| queues.reads.entry(key).or_default().push((id, reply)))
            .await
    }

    /// Create one record (idempotently on its marker: Salesforce upserts on it, Jira's bulk
    /// create looks the markers up first), in a bulk call.
    pub async fn create(
        &self,
        target: &Connector,
        object: &str,
        record: NewRecord,
    ) -> Result<Created, ConnectorError> {
        let key = (target.name().to_string(), object.to_string());
        self.park(move |queues, reply| queues.creates.entry(key).or_default().push((record, reply)))
            .await
    }
}

/// Drop the parked writes nobody waits for any more, and the queues they leave empty.
fn discard_abandoned<K: Ord, T>(
    queues: &mut BTreeMap<K, Vec<T>>,
    parked: &mut usize,
    abandoned: impl Fn(&T) -> bool,
) {
    for items in queues.values_mut() {
        let before = items.len();
        items.retain(|item| !abandoned(item));
        *parked -= before - items.len();
    }
    queues.retain(|_, items| !items.is_empty());
}

/// Take the queues `full` says are ready to send.
fn take_full<K: Ord + Clone, T>(
    queues: &mut BTreeMap<K, Vec<T>>,
    parked: &mut usize,
    full: impl Fn(&K, usize) -> bool,
) -> Vec<(K, Vec<T>)> {
    let keys: Vec<K> = queues
        .iter()
        .filter(|(key, items)| full(key, items.len()))
        .map(|(key, _)| key.clone())
        .collect();
    keys.into_iter()
        .filter_map(|key| {
            let items = queues.remove(&key)?;
            *parked -= items.len();
            Some((key, items))
        })
        .collect()
}

/// One result per parked write, in order; a call that failed as a whole fails each of them.
fn answer<T>(
    replies: Vec<Reply<T>>,
    results: Result<Vec<Result<T, ConnectorError>>, ConnectorError>,
) {
    match results {
        Ok(results) => {
            let mut results = results.into_iter();
            for reply in replies {
                let result = results.next().unwrap_or_else(|| {
                    Err(ConnectorError::new(
                        "batch",
                        "bulk write",
                        crate::connectors::ErrorKind::Protocol,
                        "the bulk answer has fewer results than records sent",
                    ))
                });
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
