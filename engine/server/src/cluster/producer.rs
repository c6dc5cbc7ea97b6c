//! Writing to a cluster topic and waiting for the record to come back.
//!
//! A replica that takes a Push or a Claim does not apply it: it produces a
//! record, tagged with a [`RequestId`], and waits until its own reader of the
//! topic applies that record, exactly as every other replica does. The
//! answer is what applying decided ([`Pending::complete`]), or UNAVAILABLE when
//! the record cannot be written or does not come back within the bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tokio::sync::oneshot;

use super::log::{Record, RequestId, REQUEST_HEADER};

/// Why a call through a cluster topic has no answer. Maps to UNAVAILABLE:
/// nothing was applied on behalf of the caller, or it is unknown whether the
/// record was written (a retry with the same `claim_id` is safe).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// A waiting call: the fingerprint of its record and where its answer goes.
type Waiter<T> = (u64, oneshot::Sender<Result<T, Unavailable>>);

/// The calls of this replica waiting for their records, by sequence number.
///
/// A call is answered only by a record carrying its request id *and* its
/// key and payload: anyone can write to a cluster topic, and a record with
/// a copied `vitrine-request` header but other content (another visitor's
/// claim, another file) must not answer the call with its outcome.
#[derive(Debug)]
pub struct Pending<T> {
    replica: u64,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiter<T>>>,
    /// Keyed per process, so no writer can aim at a fingerprint.
    hasher: ahash::RandomState,
}

impl<T> Pending<T> {
    /// An empty table for the replica `replica`.
    pub fn new(replica: u64) -> Pending<T> {
        Pending {
            replica,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            hasher: ahash::RandomState::new(),
        }
    }

    fn fingerprint(&self, key: Option<&[u8]>, payload: Option<&[u8]>) -> u64 {
        self.hasher.hash_one((key, payload))
    }

    /// A new request id for a record of `key` and `payload`, and the
    /// receiver of its answer.
    pub fn register(&self, key: &[u8], payload: &[u8]) -> (RequestId, oneshot::Receiver<Result<T, Unavailable>>) {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let fingerprint = self.fingerprint(Some(key), Some(payload));
        self.waiting.lock().insert(seq, (fingerprint, tx));
        (
            RequestId {
                replica: self.replica,
                seq,
            },
            rx,
        )
    }

    /// Whether a record tagged `id` was written by this replica.
    pub fn is_mine(&self, id: Option<RequestId>) -> bool {
        id.is_some_and(|id| id.replica == self.replica)
    }

    /// Hands `value` to the call waiting for `record`, if it is this
    /// replica's, still waiting (it may have timed out, or the record is a
    /// replay) and the record is the one the call wrote (same key and
    /// payload: not a forgery carrying a copied request id).
    pub fn complete(&self, record: &Record<'_>, value: T) {
        let Some(id) = record.request.filter(|id| id.replica == self.replica) else {
            return;
        };
        let mut waiting = self.waiting.lock();
        let Some((fingerprint, _)) = waiting.get(&id.seq) else {
            return;
        };
        if *fingerprint != self.fingerprint(record.key, record.payload) {
            drop(waiting);
            tracing::warn!(
                partition = record.partition,
                offset = record.offset,
                "a cluster record carries this replica's request id but not its content: applied, answered to nobody"
            );
            return;
        }
        if let Some((_, tx)) = waiting.remove(&id.seq) {
            let _ = tx.send(Ok(value));
        }
    }

    /// Hands `value` to the call waiting for `seq` on this replica's own
    /// delivery report (the broker holds the record; used where the answer
    /// is the write itself, not what applying it decided).
    pub fn delivered(&self, seq: u64, value: T) {
        if let Some((_, tx)) = self.waiting.lock().remove(&seq) {
            let _ = tx.send(Ok(value));
        }
    }

    /// Fails the call waiting for `seq` (its record was not written).
    pub fn fail(&self, seq: u64, why: String) {
        if let Some((_, tx)) = self.waiting.lock().remove(&seq) {
            let _ = tx.send(Err(Unavailable(why)));
        }
    }

    /// Forgets a call that stopped waiting.
    pub fn forget(&self, seq: u64) {
        self.waiting.lock().remove(&seq);
    }

    /// Calls waiting now.
    pub fn len(&self) -> usize {
        self.waiting.lock().len()
    }

    /// Whether no call waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A random replica id: the process id and the clock through a randomly
/// seeded hasher, so two processes started in the same nanosecond differ.
pub fn replica_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    ahash::RandomState::new().hash_one((std::process::id(), nanos))
}

/// The producer's callbacks: failed deliveries fail their calls; statistics
/// tell whether any broker is reachable.
struct Hooks {
    topic: String,
    up: Arc<AtomicBool>,
    failed: Box<dyn Fn(u64, String) + Send + Sync>,
    /// Called with the sequence number of each record the broker acknowledged.
    delivered: std::sync::OnceLock<Box<dyn Fn(u64) + Send + Sync>>,
}

impl ClientContext for Hooks {
    fn stats(&self, stats: Statistics) {
        self.up
            .store(stats.brokers.values().any(|b| b.state == "UP"), Ordering::Release);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.up.store(false, Ordering::Release);
        }
        tracing::debug!(topic = %self.topic, "Kafka producer: {error}: {reason}");
    }
}

impl ProducerContext for Hooks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => {
                self.up.store(true, Ordering::Release);
                if let Some(delivered) = self.delivered.get() {
                    delivered(seq as u64);
                }
            }
            Err((e, _)) => (self.failed)(seq as u64, format!("writing to topic {} failed: {e}", self.topic)),
        }
    }
}

/// Writes one cluster topic: the idempotent producer with `acks=all`, so a
/// record is in every in-sync replica of the partition before it counts,
/// and retries never duplicate or reorder it.
pub struct LogProducer {
    topic: String,
    producer: ThreadedProducer<Hooks>,
    up: Arc<AtomicBool>,
}

impl std::fmt::Debug for LogProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogProducer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl LogProducer {
    /// A producer of `topic`; `failed(seq, why)` is called for each record
    /// that could not be written within `timeout`.
    pub fn new(
        brokers: &str,
        options: &[(String, String)],
        topic: &str,
        max_message_bytes: usize,
        timeout: Duration,
        failed: impl Fn(u64, String) + Send + Sync + 'static,
    ) -> Result<LogProducer, KafkaError> {
        let up = Arc::new(AtomicBool::new(false));
        let hooks = Hooks {
            topic: topic.to_string(),
            up: up.clone(),
            failed: Box::new(failed),
            delivered: std::sync::OnceLock::new(),
        };
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers)
            .set("client.id", "vitrine-cluster")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // A call waits for its record; batching would only add latency.
            .set("linger.ms", "0")
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
            .set("message.max.bytes", max_message_bytes.max(1_000_000).to_string())
            .set("statistics.interval.ms", "1000")
            .set("reconnect.backoff.max.ms", "2000");
        for (key, value) in options {
            client.set(key, value);
        }
        Ok(LogProducer {
            topic: topic.to_string(),
            producer: client.create_with_context(hooks)?,
            up,
        })
    }

    /// Calls `delivered(seq)` for every record the broker acknowledges (set
    /// once; later calls are ignored).
    pub fn on_delivered(&self, delivered: impl Fn(u64) + Send + Sync + 'static) {
        let _ = self.producer.client().context().delivered.set(Box::new(delivered));
    }

    /// Whether a broker was reachable at the last sign (statistics every
    /// second, deliveries, errors).
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Queues a record tagged `id`; an error means it was not queued.
    pub fn send(&self, key: &[u8], payload: &[u8], id: RequestId) -> Result<(), Unavailable> {
        let id_bytes = id.to_bytes();
        let headers = OwnedHeaders::new().insert(Header {
            key: REQUEST_HEADER,
            value: Some(&id_bytes[..]),
        });
        let record = BaseRecord::with_opaque_to(&self.topic, id.seq as usize)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.producer
            .send(record)
            .map_err(|(e, _)| Unavailable(format!("writing to topic {} failed: {e}", self.topic)))
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// Produces a record and waits for the answer its application gives, at
/// most `timeout`.
pub async fn call<T>(
    pending: &Pending<T>,
    producer: &LogProducer,
    key: &[u8],
    payload: &[u8],
    timeout: Duration,
) -> Result<T, Unavailable> {
    let (id, answer) = pending.register(key, payload);
    if let Err(e) = producer.send(key, payload, id) {
        pending.forget(id.seq);
        return Err(e);
    }
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(Unavailable("the cluster log stopped".to_string())),
        Err(_) => {
            pending.forget(id.seq);
            Err(Unavailable(format!(
                "no answer from topic {} within {timeout:?}: the record may still be applied later (retry with the same claim_id, or check the revision)",
                producer.topic
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(id: RequestId, key: &'a [u8], payload: Option<&'a [u8]>) -> Record<'a> {
        Record {
            partition: 0,
            offset: 0,
            key: Some(key),
            payload,
            request: Some(id),
        }
    }

    /// A record with a copied request id but other content (a foreign
    /// producer read the header off the topic) does not answer the call;
    /// the call's own record does.
    #[test]
    fn a_forged_request_id_does_not_answer_the_call() {
        let pending = Pending::<&str>::new(7);
        let (id, mut answer) = pending.register(b"shop/benefit", b"mine");
        pending.complete(&record(id, b"shop/benefit", Some(b"forged")), "the forgery's outcome");
        pending.complete(&record(id, b"shop/other", Some(b"mine")), "the forgery's outcome");
        pending.complete(&record(id, b"shop/benefit", None), "a tombstone's outcome");
        assert!(answer.try_recv().is_err(), "still waiting");
        assert_eq!(pending.len(), 1);
        pending.complete(&record(id, b"shop/benefit", Some(b"mine")), "my outcome");
        assert_eq!(answer.try_recv(), Ok(Ok("my outcome")));
        assert!(pending.is_empty());
    }
}
