//! The decision log: every Decide is a logged offer (`docs/storage.md`,
//! "The decision log").
//!
//! The key design choice: the request path only *queues*. Decide takes a
//! [`id::DecisionIds`] sequence number (one relaxed atomic add), builds an
//! owned [`record::Record`] (shared `Arc` ids from the rule set, the
//! visitor and item ids copied into one buffer) and `try_send`s it into a
//! bounded queue ([`DecisionLogConfig::queue`] records, preallocated). A
//! full queue drops the record and counts it
//! (`vitrine_decision_log_dropped_total{reason="queue_full"}`): publishing
//! never blocks or fails a Decide. One drainer thread empties the queue
//! every [`drain::POLL`] (2 ms; it polls so that `try_send` never has to wake it):
//!
//! * **with Kafka** it publishes each record as JSON to the decisions topic
//!   ([`kafka`]); every replica, this one included, reads the topic back
//!   with the behavior consumer's machinery ([`crate::ingest`]) and applies
//!   each record as an exposure ([`apply`]), so `offered(...)` and the lift
//!   report see every replica's decisions;
//! * **embedded** it applies each record as an exposure in-process and,
//!   with `--decision-log FILE`, appends it to the file as a JSON line
//!   ([`file`], rotated by size).
//!
//! Anonymous decisions (empty visitor) get a `decision_id` and are logged
//! like any other, but apply nothing: an exposure belongs to a visitor.

pub mod apply;
pub mod drain;
pub mod file;
pub mod id;
pub mod kafka;
pub mod record;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::TrySendError;
use std::sync::OnceLock;

pub use crate::config::DecisionLogConfig;
use crate::metrics::decisions::{DecisionMetrics, Dropped, RecordRejected};
use drain::DecisionLog;
use id::DecisionIds;
use record::Record;

/// What the decision log did so far (per engine, for tests and tools; the
/// Prometheus metrics count the same, per process).
#[derive(Debug, Default)]
pub struct Stats {
    /// Records queued.
    pub logged: AtomicU64,
    /// Records lost (queue full, Kafka, file).
    pub dropped: AtomicU64,
    /// Records the drainer took from the queue.
    pub drained: AtomicU64,
    /// Records the decisions topic acknowledged.
    pub published: AtomicU64,
    /// Lines written to `--decision-log` (buffered ones included).
    pub written: AtomicU64,
    /// Records applied to the index as exposures.
    pub exposures_applied: AtomicU64,
    /// Records read back and refused.
    pub rejected: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsCounts {
    /// Records queued.
    pub logged: u64,
    /// Records lost.
    pub dropped: u64,
    /// Records drained.
    pub drained: u64,
    /// Records acknowledged by the topic.
    pub published: u64,
    /// Lines written to the file.
    pub written: u64,
    /// Records applied as exposures.
    pub exposures_applied: u64,
    /// Records refused.
    pub rejected: u64,
}

/// The engine's decision ids and, once started, its decision log.
#[derive(Debug)]
pub struct Decisions {
    /// `decision_id`s.
    pub ids: DecisionIds,
    /// `replica` of every record: the ids' prefix.
    pub replica: String,
    stats: Stats,
    metrics: DecisionMetrics,
    depth: AtomicI64,
    log: OnceLock<DecisionLog>,
}

impl Default for Decisions {
    fn default() -> Decisions {
        let ids = DecisionIds::default();
        Decisions {
            replica: ids.replica(),
            ids,
            stats: Stats::default(),
            metrics: DecisionMetrics::new(),
            depth: AtomicI64::new(0),
            log: OnceLock::new(),
        }
    }
}

impl Decisions {
    /// Whether a decision log is running (records are worth building).
    #[inline]
    pub fn logging(&self) -> bool {
        self.log.get().is_some()
    }

    /// Queues a record; never blocks. A full queue drops it (counted).
    #[inline]
    pub fn offer(&self, record: Record) {
        let Some(log) = self.log.get() else {
            return;
        };
        match log.queue.try_send(record) {
            Ok(()) => {
                self.stats.logged.fetch_add(1, Ordering::Relaxed);
                self.metrics.logged.increment(1);
                // The gauge is set by the drainer, every few ms.
                self.depth.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped(Dropped::QueueFull),
        }
    }

    /// Counts a lost record.
    pub fn dropped(&self, reason: Dropped) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        self.metrics.dropped.increment(reason);
    }

    /// Counts a record the topic acknowledged.
    fn published(&self) {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a record applied as an exposure.
    pub fn exposure_applied(&self) {
        self.stats.exposures_applied.fetch_add(1, Ordering::Relaxed);
        self.metrics.exposures_applied.increment(1);
    }

    /// Counts a record refused on reading it back.
    pub fn rejected(&self, reason: RecordRejected) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.rejected.increment(reason);
    }

    /// What the log did so far.
    pub fn stats(&self) -> StatsCounts {
        let s = &self.stats;
        StatsCounts {
            logged: s.logged.load(Ordering::Acquire),
            dropped: s.dropped.load(Ordering::Acquire),
            drained: s.drained.load(Ordering::Acquire),
            published: s.published.load(Ordering::Acquire),
            written: s.written.load(Ordering::Acquire),
            exposures_applied: s.exposures_applied.load(Ordering::Acquire),
            rejected: s.rejected.load(Ordering::Acquire),
        }
    }

    /// The running log, if started.
    pub fn log(&self) -> Option<&DecisionLog> {
        self.log.get()
    }
}

/// The configuration of the consumer of the decisions topic, from the
/// behavior consumer's: same brokers, group and client options; resumes
/// from the loaded snapshot's decisions offsets when it has them.
pub fn consumer_config(
    kafka: &crate::config::KafkaConfig,
    snapshot: Option<&crate::storage::snapshots::KafkaPosition>,
) -> crate::config::KafkaConfig {
    let resume = match snapshot {
        Some(p) if p.topic == kafka.decisions_topic => Some(p.offsets.clone()),
        Some(p) => {
            tracing::warn!(
                snapshot_topic = %p.topic,
                topic = %kafka.decisions_topic,
                "the snapshot's decisions offsets are another topic's: ignored"
            );
            None
        }
        None => None,
    };
    crate::config::KafkaConfig {
        topic: kafka.decisions_topic.clone(),
        stream: crate::config::Stream::Decisions,
        dead_letter_topic: None,
        max_message_bytes: record::MAX_RECORD_BYTES,
        resume,
        // Applying an exposure is cheap: one thread keeps up.
        apply_threads: 1,
        ..kafka.clone()
    }
}
