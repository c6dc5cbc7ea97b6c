//! Replicas that agree: rule changes and claims go through Kafka topics that
//! every replica reads in order and applies with the same deterministic
//! rules (`docs/cluster.md`).
//!
//! * [`producer`]: the taking replica writes a record tagged with its
//!   request id and waits until its own reader applies it.
//! * [`claims`]: claims decided in the claims topic's order.
//! * [`log`]: one thread per topic reads every partition in order.
//! * [`topics`]: missing topics are created at start where the broker allows.
//! * [`shops`]: `--shops`, the shops this replica holds and serves.
//! * [`rules`]: rule changes through the rules topic.
//! * [`track`]: `Ingest/Track` events through the behavior topic.

pub mod claims;
pub mod log;
pub mod producer;
pub mod rules;
pub mod shops;
pub mod topics;
pub mod track;

use std::time::Duration;

use shops::Shops;
use topics::{Ensured, TopicSpec};

use crate::config::KafkaConfig;

/// Partitions of the behavior topic when Vitrine creates it.
pub const BEHAVIOR_PARTITIONS: i32 = 6;
/// Partitions of the claims topic when Vitrine creates it (a benefit's
/// claims share one: the key is shop and benefit).
pub const CLAIMS_PARTITIONS: i32 = 6;
/// Partitions of the decisions topic when Vitrine creates it (keyed by visitor).
pub const DECISIONS_PARTITIONS: i32 = 6;

/// Creates the topics a cluster replica reads that are missing, where the
/// broker allows it; logs what it did. The rules topic has one partition
/// (one order for every change) and, like the claims topic, keeps records
/// forever: a replica that starts without state rebuilds from them.
pub async fn ensure_topics(kafka: &KafkaConfig, limits: &vitrine_core::rules::Limits) {
    let rule_bytes = rules::max_payload(limits).to_string();
    let forever = |extra: Vec<(String, String)>| {
        let mut config = vec![
            ("retention.ms".to_string(), "-1".to_string()),
            ("retention.bytes".to_string(), "-1".to_string()),
        ];
        config.extend(extra);
        config
    };
    let mut specs = vec![
        TopicSpec {
            name: kafka.topic.clone(),
            partitions: BEHAVIOR_PARTITIONS,
            config: Vec::new(),
        },
        TopicSpec {
            name: kafka.rules_topic.clone(),
            partitions: 1,
            config: forever(vec![("max.message.bytes".to_string(), rule_bytes)]),
        },
        TopicSpec {
            name: kafka.claims_topic.clone(),
            partitions: CLAIMS_PARTITIONS,
            config: forever(Vec::new()),
        },
    ];
    // The decision log: retention as the behavior topic's (the broker's
    // default); a replica without a snapshot rebuilds exposures from it.
    specs.push(TopicSpec {
        name: kafka.decisions_topic.clone(),
        partitions: DECISIONS_PARTITIONS,
        config: Vec::new(),
    });
    if let Some(dead) = &kafka.dead_letter_topic {
        specs.push(TopicSpec {
            name: dead.clone(),
            partitions: 1,
            config: Vec::new(),
        });
    }
    let timeout = kafka.cluster_timeout.min(Duration::from_secs(2));
    for (topic, ensured) in topics::ensure(&kafka.brokers, &kafka.options, &specs, timeout).await {
        match ensured {
            Ensured::Created => tracing::info!(topic, "Kafka: topic created"),
            Ensured::Existed => tracing::debug!(topic, "Kafka: topic exists"),
            Ensured::Failed(why) => tracing::warn!(
                topic,
                "Kafka: could not create the topic ({why}); if it is missing, create it (see docs/cluster.md): readiness waits for it"
            ),
        }
    }
}

/// What the engine knows of the cluster: the shops this replica serves and,
/// with Kafka, the logs that Push, Rollback and Claim go through (set once at
/// start; unset = embedded, calls apply locally).
#[derive(Debug, Default)]
pub struct Cluster {
    /// `--shops`.
    pub shops: Shops,
    /// The rules topic (Push and Rollback go through it when set).
    pub rules: std::sync::OnceLock<rules::RulesLog>,
    /// The claims topic (set once at start with Kafka; unset: claims go to
    /// the local ledger).
    pub claims: std::sync::OnceLock<std::sync::Arc<claims::ClaimsLog>>,
    /// The behavior topic as `Ingest/Track` writes to it (set with Kafka).
    pub track: std::sync::OnceLock<track::TrackLog>,
}

impl Cluster {
    /// Waits until every cluster log set has read its topic up to where it
    /// stood at start; false if a reader ended first.
    pub async fn caught_up(&self) -> bool {
        if let Some(claims) = self.claims.get() {
            if claims.caught_up().wait_for(|c| *c).await.is_err() {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use parking_lot::Mutex;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    use super::log::{LogReader, Start};
    use super::producer::{call, LogProducer, Pending, Unavailable};

    /// A call answers with what applying its own record decided, and records
    /// of another replica reach the log but not the caller.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_gets_the_answer_its_record_applied_to() {
        let cluster = MockCluster::<DefaultProducerContext>::new(1).unwrap();
        cluster.create_topic("t", 3, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let seen = Arc::new(Mutex::new(Vec::<(i32, String)>::new()));
        let pending = Arc::new(Pending::<String>::new(7));
        let (s, p) = (seen.clone(), pending.clone());
        let mut reader = LogReader::start(&brokers, &[], "t", Start::default(), move |r| {
            let text = String::from_utf8_lossy(r.payload.unwrap_or_default()).to_string();
            s.lock().push((r.partition, text.clone()));
            p.complete(&r, format!("applied {text}"));
        })
        .unwrap();
        let failed = pending.clone();
        let producer = LogProducer::new(&brokers, &[], "t", 1 << 20, Duration::from_secs(5), move |seq, why| {
            failed.fail(seq, why)
        })
        .unwrap();
        let answer = call(&pending, &producer, b"k", b"one", Duration::from_secs(20)).await;
        assert_eq!(answer, Ok("applied one".to_string()));
        // Another replica's record: applied, answered to nobody here.
        let other = Pending::<String>::new(8);
        let (id, _rx) = other.register(b"k", b"two");
        producer.send(b"k", b"two", id).unwrap();
        let answer = call(&pending, &producer, b"k", b"three", Duration::from_secs(20)).await;
        assert_eq!(answer, Ok("applied three".to_string()));
        let seen: Vec<String> = seen.lock().iter().map(|(_, t)| t.clone()).collect();
        assert_eq!(seen, ["one", "two", "three"], "one key, one partition, log order");
        assert!(pending.is_empty());
        let mut caught_up = reader.caught_up();
        caught_up.wait_for(|c| *c).await.unwrap();
        reader.stop();
        // Nobody reads: the call gives up at its bound with UNAVAILABLE.
        let answer = call(&pending, &producer, b"k", b"four", Duration::from_millis(300)).await;
        assert!(
            matches!(answer, Err(Unavailable(ref m)) if m.contains("no answer")),
            "{answer:?}"
        );
        assert!(pending.is_empty(), "a timed-out call is forgotten");
    }
}
