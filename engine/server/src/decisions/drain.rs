//! The running decision log: the drainer thread that empties the queue
//! [`super::Decisions::offer`] fills, and its start and stop (see the
//! parent module's docs). The drainer needs the [`Engine`] to apply
//! records, which is why it lives here and not beside [`super::Decisions`],
//! which the engine holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::apply;
use super::file::FileLog;
use super::kafka::Publisher;
use super::record::Record;
use crate::config::{DecisionLogConfig, KafkaConfig};
use crate::ingest::RateLimited;
use crate::metrics::decisions::Dropped;
use crate::state::Engine;

/// Records the drainer takes between two checks of its stop flag and file flushes.
const BATCH: usize = 1024;
/// How long the drainer sleeps once the queue is empty: the most a record
/// waits before it is applied or published (see `Drainer::run`).
pub const POLL: Duration = Duration::from_millis(2);

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
    /// The queue [`super::Decisions::offer`] sends into.
    pub(super) queue: SyncSender<Record>,
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
        let mut errors = RateLimited::new(10);
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

    fn handle(&mut self, engine: &Engine, r: &Record, errors: &mut RateLimited) {
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

    fn flush(&mut self, engine: &Engine, errors: &mut RateLimited) {
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
pub fn start(engine: &Arc<Engine>, config: &DecisionLogConfig, kafka: Option<&KafkaConfig>) -> anyhow::Result<()> {
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
