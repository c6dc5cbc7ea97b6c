//! librdkafka's callbacks: its log lines and errors into `tracing`, its
//! statistics into the lag and connectivity metrics, and commit results.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use super::RateLimited;
use crate::metrics::{KafkaErrorKind, KafkaMetrics};

/// The consumer's hooks (librdkafka's "client context"; named apart from
/// the decision `Context`): shared with librdkafka, called on the consumer
/// thread from inside `poll`.
#[derive(Debug)]
pub(super) struct ClientHooks {
    topic: String,
    metrics: KafkaMetrics,
    /// Whether the statistics set `vitrine_ingest_lag_messages` (the
    /// behavior consumer's; the decisions consumer leaves it alone).
    lag: bool,
    /// Whether a broker connection was up at the last statistics or error.
    up: AtomicBool,
    /// Failed commits seen.
    pub(super) commit_failures: AtomicU64,
    log: Mutex<RateLimited>,
}

impl ClientHooks {
    pub(super) fn new(topic: &str, metrics: KafkaMetrics, lag: bool) -> ClientHooks {
        metrics.up.set(0.0);
        ClientHooks {
            topic: topic.to_string(),
            metrics,
            lag,
            up: AtomicBool::new(false),
            commit_failures: AtomicU64::new(0),
            log: Mutex::new(RateLimited::new(20)),
        }
    }

    /// Records broker connectivity, logging transitions once.
    fn set_up(&self, up: bool) {
        self.metrics.up.set(if up { 1.0 } else { 0.0 });
        if self.up.swap(up, Ordering::AcqRel) != up {
            if up {
                tracing::info!(topic = %self.topic, "Kafka: connected; ingest runs");
            } else {
                tracing::warn!(
                    topic = %self.topic,
                    "Kafka: no broker reachable; decisions keep being served from the index, ingest resumes where it stopped when a broker is back"
                );
            }
        }
    }
}

impl ClientContext for ClientHooks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                if self.log.lock().allow() {
                    tracing::error!(target: "librdkafka", "{fac}: {message}");
                }
            }
            RDKafkaLogLevel::Warning => {
                if self.log.lock().allow() {
                    tracing::warn!(target: "librdkafka", "{fac}: {message}");
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::debug!(target: "librdkafka", "{fac}: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::trace!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn stats(&self, stats: Statistics) {
        // Bootstrap entries (nodeid -1) stand for the same brokers as the
        // learned ones; logical ones (the group coordinator) are reported too.
        self.set_up(stats.brokers.values().any(|b| b.state == "UP"));
        let Some(topic) = stats.topics.get(&self.topic).filter(|_| self.lag) else {
            return;
        };
        for (&id, p) in &topic.partitions {
            if id < 0 || !p.desired || p.hi_offset < 0 {
                continue;
            }
            // Applied and stored, else handed to the application (applied
            // within the same batch), else nothing read yet: all retained.
            let done = if p.stored_offset >= 0 {
                p.stored_offset
            } else if p.app_offset >= 0 {
                p.app_offset
            } else if p.lo_offset >= 0 {
                p.lo_offset
            } else {
                continue;
            };
            KafkaMetrics::lag(id).set((p.hi_offset - done).max(0) as f64);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        match code {
            // Reaching the end of a partition is news, not an error.
            Some(RDKafkaErrorCode::PartitionEOF) => return,
            Some(RDKafkaErrorCode::AllBrokersDown) => self.set_up(false),
            _ => {}
        }
        self.metrics.error(KafkaErrorKind::Client);
        if self.log.lock().allow() {
            tracing::warn!(topic = %self.topic, "Kafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for ClientHooks {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {}
            // Nothing stored since the last commit: nothing to do.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.commit_failures.fetch_add(1, Ordering::Relaxed);
                self.metrics.error(KafkaErrorKind::Commit);
                if self.log.lock().allow() {
                    tracing::warn!(
                        topic = %self.topic,
                        partitions = offsets.count(),
                        "Kafka: committing offsets failed (they stay stored and are committed again): {e}"
                    );
                }
            }
        }
    }
}
