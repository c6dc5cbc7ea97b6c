//! `Ingest/Track` in a cluster: the call's valid events go to the behavior
//! topic, keyed by visitor like any producer's, so every replica applies
//! them (through its consumer, exactly as Kafka events). The call answers
//! once the broker holds every event (`acks=all`); the events are then in
//! every replica's index within the consumer's latency, the taking
//! replica's included.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use vitrine_core::Event;
/// One event as Track produces it: the key (its visitor) and its JSON.
pub fn record(event: &Event<'_>) -> (String, String) {
    (event.visitor.to_string(), event.to_json())
}

use super::producer::{LogProducer, Pending, Unavailable};
use crate::config::KafkaConfig;

/// The behavior topic, as Track writes to it.
pub struct TrackLog {
    topic: String,
    producer: LogProducer,
    pending: Arc<Pending<()>>,
    timeout: Duration,
}

impl std::fmt::Debug for TrackLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackLog")
            .field("topic", &self.topic)
            .field("waiting", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl TrackLog {
    /// A writer of the behavior topic.
    pub fn start(kafka: &KafkaConfig, replica: u64) -> Result<TrackLog, KafkaError> {
        let pending = Arc::new(Pending::new(replica));
        let failed = pending.clone();
        let producer = LogProducer::new(
            &kafka.brokers,
            &kafka.options,
            &kafka.topic,
            kafka.max_message_bytes,
            kafka.cluster_timeout,
            move |seq, why| failed.fail(seq, why),
        )?;
        let delivered = pending.clone();
        producer.on_delivered(move |seq| delivered.delivered(seq, ()));
        Ok(TrackLog {
            topic: kafka.topic.clone(),
            producer,
            pending,
            timeout: kafka.cluster_timeout,
        })
    }

    /// Produces `events` (visitor key, JSON) and waits until the broker holds all of them
    /// (bounded by `--cluster-timeout`). On an error some events may have
    /// been written: a retry applies them again, which changes nothing
    /// (applying is idempotent, purchases de-duplicate by id).
    pub async fn send(&self, events: &[(String, String)]) -> Result<(), Unavailable> {
        let mut answers = Vec::with_capacity(events.len());
        for (key, json) in events {
            let (id, answer) = self.pending.register(key.as_bytes(), json.as_bytes());
            if let Err(e) = self.producer.send(key.as_bytes(), json.as_bytes(), id) {
                self.pending.forget(id.seq);
                for (seq, _) in answers {
                    self.pending.forget(seq);
                }
                return Err(e);
            }
            answers.push((id.seq, answer));
        }
        let all = async {
            for (_, answer) in &mut answers {
                match answer.await {
                    Ok(result) => result?,
                    Err(_) => return Err(Unavailable("the behavior topic writer stopped".to_string())),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.timeout, all).await {
            Ok(result) => result,
            Err(_) => {
                for (seq, _) in &answers {
                    self.pending.forget(*seq);
                }
                Err(Unavailable(format!(
                    "topic {} did not acknowledge the events within {:?}",
                    self.topic, self.timeout
                )))
            }
        }
    }

    /// Waits up to `timeout` for queued events to be delivered (shutdown).
    pub fn flush(&self, timeout: Duration) {
        self.producer.flush(timeout);
    }
}
