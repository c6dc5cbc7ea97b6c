//! Publishing decision records to the decisions topic (cluster mode).
//!
//! One librdkafka producer, fed by the decision log's drainer thread: key =
//! visitor (none for an anonymous decision), payload = the record's JSON.
//! Records are batched (`linger.ms` 5) and not idempotent: a retried record
//! may appear twice, which applying absorbs (an exposure is a set entry).
//! A record librdkafka refuses (its own queue full) or cannot deliver
//! within `message.timeout.ms` is counted as dropped (`reason="kafka"`).

use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;

use super::Decisions;
use crate::metrics::decisions::Dropped;

/// How long librdkafka may try to deliver a record before it is dropped.
pub const DELIVERY_TIMEOUT_MS: u32 = 30_000;
/// Records librdkafka holds while brokers are slow or away, beyond the
/// decision log's own queue.
pub const PRODUCER_QUEUE: u32 = 100_000;

struct Hooks {
    decisions: Arc<Decisions>,
}

impl ClientContext for Hooks {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!("decision log producer: {error}: {reason}");
    }
}

impl ProducerContext for Hooks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.decisions.published(),
            Err((e, _)) => {
                self.decisions.dropped(Dropped::Kafka);
                tracing::debug!("decision log: a record was not delivered: {e}");
            }
        }
    }
}

/// The decisions topic, as the drainer writes to it.
pub struct Publisher {
    topic: String,
    producer: ThreadedProducer<Hooks>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A producer of `topic` on `brokers`, with the operator's `options`
    /// (TLS, SASL) applied last.
    pub fn new(
        brokers: &str,
        options: &[(String, String)],
        topic: &str,
        decisions: Arc<Decisions>,
    ) -> Result<Publisher, KafkaError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers)
            .set("client.id", "vitrine-decisions")
            .set("linger.ms", "5")
            .set("message.timeout.ms", DELIVERY_TIMEOUT_MS.to_string())
            .set("queue.buffering.max.messages", PRODUCER_QUEUE.to_string())
            .set("reconnect.backoff.max.ms", "2000");
        for (key, value) in options {
            client.set(key, value);
        }
        Ok(Publisher {
            topic: topic.to_string(),
            producer: client.create_with_context(Hooks { decisions })?,
        })
    }

    /// Queues one record without waiting; false if librdkafka refused it.
    pub fn send(&self, visitor: &str, json: &str) -> bool {
        let mut record = BaseRecord::to(&self.topic).payload(json);
        if !visitor.is_empty() {
            record = record.key(visitor);
        }
        self.producer.send(record).is_ok()
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: std::time::Duration) {
        let _ = self.producer.flush(timeout);
    }
}
