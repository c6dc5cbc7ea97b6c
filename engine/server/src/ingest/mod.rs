//! Kafka ingest (`docs/events.md`): the behavior topic applied to the
//! audience index, at least once, state first.
//!
//! The key design choice: one dedicated OS thread runs a librdkafka
//! `BaseConsumer` poll loop, polling batches of up to [`BATCH`] messages and
//! handing each message to the apply thread that owns its partition
//! (`partition % apply_threads`); the apply threads apply to the index and
//! hand the batch back. With one apply thread the poll thread decodes and
//! validates each event and hands over its strings; with more, it hands
//! over key and payload (copied once) and the apply threads decode
//! (`apply.rs`). Only then does the poll
//! thread store the next offsets of what was applied
//! (`enable.auto.offset.store=false` + `store_offsets`), and librdkafka's
//! auto-commit commits stored offsets every second. So an offset is never
//! committed before its event is in the index, and a redelivery after a
//! crash or an outage re-applies events the index already holds, which
//! changes nothing (`Index::apply` is idempotent).
//!
//! * **Assignment.** Every replica holds the whole index, so every replica
//!   reads every partition: the consumer assigns all partitions of the topic
//!   itself (no group membership, no rebalances) and re-reads the partition
//!   count every `partition_check` to pick up partitions added later (read
//!   from their beginning). The group id only names where this replica's
//!   offsets are committed. With no rebalances there is no revoke; the final
//!   commit happens at shutdown.
//! * **Start.** A replica that loaded a snapshot resumes each partition from
//!   the offset the snapshot records (`KafkaConfig::resume`; partitions it
//!   does not list from their beginning), so that state = snapshot + the
//!   rest of the log. Without a snapshot of the topic, it reads every
//!   partition from its earliest retained offset ([`KafkaStart::Earliest`],
//!   the default), or from the group's committed offsets
//!   ([`KafkaStart::Committed`]; earliest where there are none). Group
//!   commits are kept for monitoring tools, never for resuming a snapshot.
//! * **Readiness.** At start the consumer reads each partition's high
//!   watermark; it is caught up once it has applied up to those (or reached
//!   the end of a partition), and only then do `/readyz` and gRPC health
//!   report SERVING.
//! * **Encodings.** `--kafka-encoding` says how behavior payloads are
//!   encoded: `json` (the default), `proto` (protobuf `vitrine.v1.Event`s),
//!   or `header`: each message's `content-type` header says (none or
//!   `application/json` is JSON, `application/x-protobuf` protobuf); both
//!   are validated by the same code (`encoding.rs`, `docs/events.md`).
//! * **Bad messages** (not JSON or protobuf, invalid events, oversized,
//!   tombstones, an unknown `content-type`) are
//!   counted by reason, logged at a bounded rate with topic, partition and
//!   offset, forwarded to the dead-letter topic when one is set, and their
//!   offsets are stored like any other: one bad message never stalls a
//!   partition.
//! * **Outages.** librdkafka reconnects on its own; while no broker is
//!   reachable `vitrine_kafka_up` is 0, the outage is logged, decisions keep
//!   being served from the index, and fetching resumes at the position it
//!   stopped at.

mod apply;
mod consumer;
mod context;
mod dead_letter;
mod encoding;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use tokio::sync::watch;

pub use dead_letter::{MESSAGE_HEADER, REASON_HEADER, SOURCE_HEADER};
pub use encoding::{Encoding, MessageEncoding, CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE, PROTOBUF_CONTENT_TYPE};

use crate::config::{KafkaConfig, KafkaStart};
use crate::metrics::KafkaMetrics;
use crate::state::Engine;

/// The most messages applied between two offset stores.
pub const BATCH: usize = 4096;

/// librdkafka's `fetch.wait.max.ms` for the behavior consumer: the longest
/// a broker may hold a fetch while it waits for data (see `consumer.rs`).
pub const FETCH_WAIT_MAX_MS: &str = "3";

/// librdkafka's `fetch.queue.backoff.ms` for the behavior consumer: how long
/// a partition's next fetch waits when its prefetch queue is full (see
/// `consumer.rs`).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// What the consumer has done so far (also for tests and tools).
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages read (applied + rejected).
    pub messages: AtomicU64,
    /// Events applied to the index.
    pub applied: AtomicU64,
    /// Messages rejected.
    pub rejected: AtomicU64,
    /// Messages handed to the apply threads (`messages` once they are done).
    pub dispatched: AtomicU64,
    /// Polls that waited and found no message: each one after the last
    /// message read proves the consumer had nothing more to hand over.
    pub idle_polls: AtomicU64,
    /// Per partition, the offset after the last message applied or
    /// rejected (-1: none yet): every message before it is in the index.
    pub positions: parking_lot::Mutex<Vec<i64>>,
}

/// A snapshot of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgressCounts {
    /// Messages read.
    pub messages: u64,
    /// Events applied.
    pub applied: u64,
    /// Messages rejected.
    pub rejected: u64,
    /// Messages handed to the apply threads.
    pub dispatched: u64,
    /// Polls that found no message.
    pub idle_polls: u64,
}

/// A running Kafka ingest: the consumer thread and its signals.
#[derive(Debug)]
pub struct Ingest {
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
    caught_up: watch::Receiver<bool>,
    progress: Arc<Progress>,
}

impl Ingest {
    /// Creates the consumer (a bad configuration fails here) and starts its
    /// thread. Metric handles are created on the calling thread.
    pub fn start(engine: Arc<Engine>, config: &KafkaConfig) -> Result<Ingest, KafkaError> {
        let metrics = KafkaMetrics::new();
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        if let Some(resume) = &config.resume {
            // Until the partitions are assigned, a snapshot must still
            // record where the loaded one stood (not "nothing yet", which
            // would make the next start re-read every partition).
            let mut positions = progress.positions.lock();
            for &(p, offset) in resume {
                let Ok(p) = usize::try_from(p) else { continue };
                if positions.len() <= p {
                    positions.resize(p + 1, -1);
                }
                positions[p] = offset;
            }
        }
        let (ready_tx, caught_up) = watch::channel(false);
        let worker = consumer::Worker::new(engine, config, metrics, stop.clone(), ready_tx, progress.clone())?;
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("vitrine-kafka".to_string())
            .spawn(move || {
                if catch_unwind(AssertUnwindSafe(|| worker.run())).is_err() {
                    tracing::error!("Kafka: the consumer thread panicked; ingest stopped (decisions are still served)");
                }
                drop(done_tx);
            })
            .map_err(|e| KafkaError::ClientCreation(format!("starting the consumer thread: {e}")))?;
        tracing::info!(
            brokers = %config.brokers,
            topic = %config.topic,
            group = %config.group,
            start = match config.start {
                KafkaStart::Earliest => "earliest",
                KafkaStart::Committed => "committed",
            },
            "Kafka ingest started"
        );
        Ok(Ingest {
            stop,
            done,
            thread: Some(thread),
            caught_up,
            progress,
        })
    }

    /// Turns true once the consumer has caught up with the high watermarks
    /// it saw at start (and stays true).
    pub fn caught_up(&self) -> watch::Receiver<bool> {
        self.caught_up.clone()
    }

    /// What the consumer has done so far.
    pub fn progress(&self) -> ProgressCounts {
        ProgressCounts {
            messages: self.progress.messages.load(Ordering::Acquire),
            applied: self.progress.applied.load(Ordering::Acquire),
            rejected: self.progress.rejected.load(Ordering::Acquire),
            dispatched: self.progress.dispatched.load(Ordering::Acquire),
            idle_polls: self.progress.idle_polls.load(Ordering::Acquire),
        }
    }

    /// (partition, next offset) of every partition with one: everything
    /// before it is in the index. Read before a snapshot encodes the index.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        positions(&self.progress)
    }

    /// A handle that reads [`Ingest::positions`] after the ingest is moved away.
    pub fn positions_reader(&self) -> impl Fn() -> Vec<(i32, i64)> + Send + Sync + 'static {
        let progress = self.progress.clone();
        move || positions(&progress)
    }

    /// Stops the consumer: finishes the batch in hand, stores and commits
    /// its offsets, closes. Blocks up to `timeout`; false if the thread did
    /// not finish in time (it is left to finish on its own).
    pub fn stop(mut self, timeout: Duration) -> bool {
        self.stop.store(true, Ordering::Release);
        match self.done.recv_timeout(timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!("Kafka: the consumer did not stop within {timeout:?}; leaving it");
                false
            }
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
                true
            }
        }
    }
}

impl Drop for Ingest {
    /// A dropped ingest stops its thread (without waiting for it).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn positions(progress: &Progress) -> Vec<(i32, i64)> {
    let positions = progress.positions.lock();
    positions
        .iter()
        .enumerate()
        .filter(|&(_, &next)| next >= 0)
        .map(|(p, &next)| (p as i32, next))
        .collect()
}

/// A log gate: at most `max` lines per 10 s window, then one line saying how
/// many were suppressed.
#[derive(Debug)]
pub(crate) struct RateLimited {
    max: u32,
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

impl RateLimited {
    const WINDOW: Duration = Duration::from_secs(10);

    pub(crate) fn new(max: u32) -> RateLimited {
        RateLimited {
            max,
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether to log the next line.
    pub(crate) fn allow(&mut self) -> bool {
        if self.window_start.elapsed() >= Self::WINDOW {
            if self.suppressed > 0 {
                tracing::warn!(
                    "Kafka: {} similar log lines suppressed in the last window",
                    self.suppressed
                );
            }
            self.window_start = Instant::now();
            self.in_window = 0;
            self.suppressed = 0;
        }
        if self.in_window < self.max {
            self.in_window += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_allows_max_per_window() {
        let mut gate = RateLimited::new(3);
        assert_eq!((0..10).filter(|_| gate.allow()).count(), 3);
        assert_eq!(gate.suppressed, 7);
    }
}
