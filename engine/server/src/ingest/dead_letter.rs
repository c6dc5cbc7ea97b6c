//! Forwarding rejected messages to `--kafka-dead-letter-topic`: the original
//! key, payload and `content-type` header, with why and where from in
//! headers.
//!
//! Best effort by design: a forward is queued before the bad message's
//! offset is stored, but its delivery is not awaited, so a dead-letter topic
//! that is missing or slow never stalls ingest. Failed deliveries are counted
//! (`vitrine_kafka_errors_total{kind="dead_letter"}`) and logged.

use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use super::RateLimited;
use crate::metrics::{KafkaErrorKind, KafkaMetrics};

/// Where a message came from, for logs and dead letters.
#[derive(Debug, Clone, Copy)]
pub(super) struct Source<'a> {
    pub(super) topic: &'a str,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) key: Option<&'a [u8]>,
    pub(super) payload: Option<&'a [u8]>,
    /// The message's `content-type` header value, if it had one: forwarded
    /// with the dead letter, so it can be decoded there.
    pub(super) content_type: Option<&'a [u8]>,
}

/// Header naming the rejection reason (a `vitrine_ingest_rejected_total` label value).
pub const REASON_HEADER: &str = "vitrine-reject-reason";
/// Header with the precise rejection message.
pub const MESSAGE_HEADER: &str = "vitrine-reject-message";
/// Header with the source `topic/partition/offset`.
pub const SOURCE_HEADER: &str = "vitrine-source";

/// The dead-letter producer's context: counts deliveries.
#[derive(Debug)]
pub(super) struct DeadLetterContext {
    topic: String,
    metrics: KafkaMetrics,
    log: Mutex<RateLimited>,
}

impl ClientContext for DeadLetterContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) && self.log.lock().allow() {
            tracing::warn!(target: "librdkafka", "dead-letter producer: {fac}: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.log.lock().allow() {
            tracing::warn!("Kafka dead-letter producer: {error}: {reason}");
        }
    }
}

impl ProducerContext for DeadLetterContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.metrics.dead_lettered.increment(1),
            Err((e, _)) => {
                self.metrics.error(KafkaErrorKind::DeadLetter);
                if self.log.lock().allow() {
                    tracing::warn!(
                        topic = %self.topic,
                        "Kafka: a dead-letter forward failed (does the topic exist?): {e}"
                    );
                }
            }
        }
    }
}

/// The dead-letter topic and its producer.
pub(super) struct DeadLetter {
    producer: BaseProducer<DeadLetterContext>,
    topic: String,
    metrics: KafkaMetrics,
}

impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetter {
    pub(super) fn new(
        brokers: &str,
        topic: &str,
        options: &[(String, String)],
        metrics: KafkaMetrics,
    ) -> Result<DeadLetter, KafkaError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers)
            .set("client.id", "vitrine-dead-letter")
            .set("linger.ms", "20")
            // Give up on a forward after 30 s rather than librdkafka's 5 min.
            .set("message.timeout.ms", "30000");
        crate::kafka_options::apply(&mut client, options);
        let producer = client.create_with_context(DeadLetterContext {
            topic: topic.to_string(),
            metrics: metrics.clone(),
            log: Mutex::new(RateLimited::new(10)),
        })?;
        Ok(DeadLetter {
            producer,
            topic: topic.to_string(),
            metrics,
        })
    }

    /// Queues a forward of a rejected message; never blocks for long.
    pub(super) fn forward(&self, message: Source<'_>, reason: &str, detail: &str) {
        let source = format!("{}/{}/{}", message.topic, message.partition, message.offset);
        let mut headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: REASON_HEADER,
                value: Some(reason),
            })
            .insert(Header {
                key: MESSAGE_HEADER,
                value: Some(detail),
            })
            .insert(Header {
                key: SOURCE_HEADER,
                value: Some(&source),
            });
        if let Some(content_type) = message.content_type {
            headers = headers.insert(Header {
                key: super::encoding::CONTENT_TYPE_HEADER,
                value: Some(content_type),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).headers(headers);
        if let Some(key) = message.key {
            record = record.key(key);
        }
        if let Some(payload) = message.payload {
            record = record.payload(payload);
        }
        for _ in 0..10 {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    self.failed(&e);
                    return;
                }
            }
        }
        self.failed(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
    }

    fn failed(&self, e: &KafkaError) {
        self.metrics.error(KafkaErrorKind::DeadLetter);
        tracing::warn!(topic = %self.topic, "Kafka: could not queue a dead-letter forward: {e}");
    }

    /// Serves delivery reports.
    pub(super) fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Waits up to `timeout` for queued forwards.
    pub(super) fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            self.metrics.error(KafkaErrorKind::DeadLetter);
            tracing::warn!(
                topic = %self.topic,
                in_flight = self.producer.in_flight_count(),
                "Kafka: dead-letter forwards not delivered at shutdown: {e}"
            );
        }
    }
}
