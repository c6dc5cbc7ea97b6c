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
//! every [`POLL`] (2 ms; it polls so that `try_send` never has to wake it):
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
pub mod file;
pub mod id;
pub mod kafka;
pub mod record;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::metrics::decisions::{DecisionMetrics, Dropped, RecordRejected};
use crate::state::Engine;
use file::FileLog;
use id::DecisionIds;
use kafka::Publisher;
use record::Record;

/// Default of `--decision-log-queue`.
pub const DEFAULT_QUEUE: usize = 65_536;
/// Default of `--decision-log-max-bytes` (256 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// Default of `--decision-log-keep`.
pub const DEFAULT_KEEP: usize = 4;
/// The largest `--decision-log-queue` (each slot reserves about 160 bytes
/// at start: 16M slots would be 2.5 GiB).
pub const MAX_QUEUE: usize = 16 << 20;
/// The most `--decision-log-keep`.
pub const MAX_KEEP: usize = 1000;
/// The smallest `--decision-log-max-bytes`.
pub const MIN_MAX_BYTES: u64 = 4096;
/// Records the drainer takes between two checks of its stop flag and file flushes.
const BATCH: usize = 1024;
/// How long the drainer sleeps once the queue is empty: the most a record
/// waits before it is applied or published (see `Drainer::run`).
pub const POLL: Duration = Duration::from_millis(2);

/// The decision log's settings (`--decision-log*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionLogConfig {
    /// Records queued at most; more are dropped and counted. 0: no
    /// decision log (decisions still get ids; no exposures are recorded).
    pub queue: usize,
    /// JSON-lines file of every record (embedded mode only).
    pub file: Option<PathBuf>,
    /// The file rotates before it would pass this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` newest ... `FILE.<keep>`).
    pub keep: usize,
}

impl Default for DecisionLogConfig {
    fn default() -> DecisionLogConfig {
        DecisionLogConfig {
            queue: DEFAULT_QUEUE,
            file: None,
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }
}

impl DecisionLogConfig {
    /// Checks the flags' values; problems go to `problems` (all at once).
    pub fn from_args(args: &crate::cli::ServeArgs, problems: &mut Vec<String>) -> DecisionLogConfig {
        let mut config = DecisionLogConfig {
            file: args.decision_log.clone(),
            ..DecisionLogConfig::default()
        };
        match args.decision_log_queue.parse::<usize>() {
            Ok(n) if n <= MAX_QUEUE => config.queue = n,
            _ => problems.push(format!(
                "--decision-log-queue: `{}` is not a whole number from 0 (off) to {MAX_QUEUE}",
                args.decision_log_queue
            )),
        }
        if config.queue == 0 && args.decision_log.is_some() {
            problems.push("--decision-log: needs a --decision-log-queue above 0".to_string());
        }
        match args.decision_log_max_bytes.parse::<u64>() {
            Ok(n) if n >= MIN_MAX_BYTES => config.max_bytes = n,
            _ => problems.push(format!(
                "--decision-log-max-bytes: `{}` is not a whole number of at least {MIN_MAX_BYTES}",
                args.decision_log_max_bytes
            )),
        }
        match args.decision_log_keep.parse::<usize>() {
            Ok(n) if n <= MAX_KEEP => config.keep = n,
            _ => problems.push(format!(
                "--decision-log-keep: `{}` is not a whole number from 0 to {MAX_KEEP}",
                args.decision_log_keep
            )),
        }
        if let Some(file) = &args.decision_log {
            if file.is_dir() {
                problems.push(format!("--decision-log: {} is a directory", file.display()));
            }
            if args.kafka_brokers.is_some() {
                problems.push(
                    "--decision-log: only without --kafka-brokers (with Kafka the decisions topic is the log)"
                        .to_string(),
                );
            }
        }
        config
    }
}

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

/// Where the drainer sends records.
#[derive(Debug)]
pub enum Sink {
    /// Embedded: apply in-process, and append to the file when set.
    InProcess(Option<FileLog>),
    /// Cluster: publish to the decisions topic.
    Kafka(Publisher),
}

/// A running decision log: the queue's sending end and the drainer thread.
#[derive(Debug)]
pub struct DecisionLog {
    queue: SyncSender<Record>,
    stop: Arc<AtomicBool>,
    /// Gate the drainer holds while it works, for tests that block it.
    gate: Arc<Mutex<()>>,
    done: Mutex<Option<(mpsc::Receiver<()>, std::thread::JoinHandle<()>)>>,
}

impl DecisionLog {
    /// Starts the log of `engine` (set once: a second start is refused).
    pub fn start(engine: &Arc<Engine>, config: &DecisionLogConfig, sink: Sink) -> std::io::Result<()> {
        let (queue, records) = mpsc::sync_channel(config.queue.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Mutex::new(()));
        let (done_tx, done_rx) = mpsc::channel();
        let drainer = Drainer {
            engine: Arc::downgrade(engine),
            records,
            sink,
            stop: stop.clone(),
            gate: gate.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("vitrine-decisions".to_string())
            .spawn(move || {
                drainer.run();
                drop(done_tx);
            })?;
        let log = DecisionLog {
            queue,
            stop,
            gate,
            done: Mutex::new(Some((done_rx, thread))),
        };
        engine
            .decisions
            .log
            .set(log)
            .map_err(|_| std::io::Error::other("the decision log is already running"))
    }

    /// Holds the drainer between batches while the guard lives (tests: a
    /// queue that cannot drain).
    pub fn block_drainer(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.gate.lock()
    }

    /// Whether [`DecisionLog::stop`] was called (tests: to open a held
    /// drainer only once the shutdown asked it to stop).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Stops the drainer after it has drained the queue, flushed the file
    /// and (with Kafka) waited for deliveries, all within `timeout`; false
    /// if it did not finish in time.
    pub fn stop(&self, timeout: Duration) -> bool {
        self.stop.store(true, Ordering::Release);
        let Some((done, thread)) = self.done.lock().take() else {
            return true;
        };
        match done.recv_timeout(timeout) {
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!("decision log: the drainer did not stop within {timeout:?}; leaving it");
                false
            }
            _ => {
                let _ = thread.join();
                true
            }
        }
    }
}

/// The drainer thread's state.
struct Drainer {
    /// Weak, so the thread does not keep a dropped engine alive.
    engine: Weak<Engine>,
    records: Receiver<Record>,
    sink: Sink,
    stop: Arc<AtomicBool>,
    gate: Arc<Mutex<()>>,
}

impl Drainer {
    /// Polls rather than blocks: a receiver blocked in `recv` makes every
    /// `try_send` wake it (a futex syscall on the Decide path, and a thread
    /// switch on a busy core; measured: Decide 11 -> 34 us server-side).
    /// Polling every [`POLL`] keeps `try_send` to a few atomic operations.
    fn run(mut self) {
        let mut errors = crate::ingest::RateLimited::new(10);
        let mut disconnected = false;
        while !disconnected {
            let Some(engine) = self.engine.upgrade() else { break };
            let stopping = self.stop.load(Ordering::Acquire);
            let gate = self.gate.clone();
            let held = gate.lock();
            let mut taken = 0u64;
            // Stopping: drain everything queued; else one batch at a time.
            while stopping || taken < BATCH as u64 {
                match self.records.try_recv() {
                    Ok(r) => {
                        self.handle(&engine, &r, &mut errors);
                        taken += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            let d = &engine.decisions;
            if taken > 0 {
                d.stats.drained.fetch_add(taken, Ordering::Relaxed);
                d.depth.fetch_sub(taken as i64, Ordering::Relaxed);
            }
            d.metrics.queue_depth.set(d.depth.load(Ordering::Relaxed).max(0) as f64);
            if taken < BATCH as u64 {
                // The queue ran empty: what is buffered goes to the file.
                self.flush(&engine, &mut errors);
                drop(held);
                drop(engine);
                if stopping {
                    break;
                }
                std::thread::sleep(POLL);
            }
        }
        if let Some(engine) = self.engine.upgrade() {
            self.flush(&engine, &mut errors);
        }
        if let Sink::Kafka(publisher) = &self.sink {
            publisher.flush(Duration::from_secs(5));
        }
    }

    fn handle(&mut self, engine: &Engine, r: &Record, errors: &mut crate::ingest::RateLimited) {
        let d = &engine.decisions;
        match &mut self.sink {
            Sink::Kafka(publisher) => {
                let json = r.to_json(&d.ids, &d.replica);
                if !publisher.send(r.visitor(), &json) {
                    d.dropped(Dropped::Kafka);
                }
            }
            Sink::InProcess(file) => {
                if let Err(reason) = apply::apply_own(engine, r) {
                    d.rejected(reason);
                }
                if let Some(file) = file {
                    let json = r.to_json(&d.ids, &d.replica);
                    match file.append(&json) {
                        Ok(()) => {
                            d.stats.written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            d.dropped(Dropped::File);
                            if errors.allow() {
                                tracing::error!(
                                    "decision log: writing the file failed (the decision was applied): {e}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn flush(&mut self, engine: &Engine, errors: &mut crate::ingest::RateLimited) {
        if let Sink::InProcess(Some(file)) = &mut self.sink {
            if let Err(e) = file.flush() {
                engine.decisions.dropped(Dropped::File);
                if errors.allow() {
                    tracing::error!("decision log: flushing the file failed: {e}");
                }
            }
        }
    }
}

/// How long a shutdown waits for the drainer to empty the queue, flush the
/// file and (with Kafka) see the records delivered.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts `engine`'s decision log: publishing to the decisions topic with
/// `kafka`, else applying in-process (and appending to `config.file`).
pub fn start(
    engine: &Arc<Engine>,
    config: &DecisionLogConfig,
    kafka: Option<&crate::config::KafkaConfig>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if config.queue == 0 {
        tracing::warn!("--decision-log-queue 0: no decision log; offered(...) and the lift report see no decisions");
        return Ok(());
    }
    let sink = match kafka {
        Some(k) => Sink::Kafka(
            Publisher::new(&k.brokers, &k.options, &k.decisions_topic, engine.decisions.clone())
                .context("starting the decisions topic writer")?,
        ),
        None => Sink::InProcess(match &config.file {
            Some(path) => Some(
                FileLog::open(path, config.max_bytes, config.keep)
                    .with_context(|| format!("opening --decision-log {}", path.display()))?,
            ),
            None => None,
        }),
    };
    DecisionLog::start(engine, config, sink).context("starting the decision log")?;
    Ok(())
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
        stream: crate::ingest::Stream::Decisions,
        dead_letter_topic: None,
        max_message_bytes: record::MAX_RECORD_BYTES,
        resume,
        // Applying an exposure is cheap: one thread keeps up.
        apply_threads: 1,
        ..kafka.clone()
    }
}
