//! The poll thread: assignment, the batch poll loop, offsets, readiness.
//! Decoding and applying happen on the apply threads ([`super::apply`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::apply::{self, Ack, Admission, Rejects, SubBatch};
use super::context::ClientHooks;
use super::dead_letter::DeadLetter;
use super::dead_letter::Source;
use super::encoding::{content_type, Encoding, MessageEncoding, PROTOBUF_CONTENT_TYPE};
use super::{Progress, RateLimited, BATCH};
use crate::clock::now_ms;
use crate::config::{KafkaConfig, KafkaStart, Stream};
use crate::metrics::{KafkaErrorKind, KafkaMetrics, Rejected};
use crate::state::Engine;

/// The longest a poll waits for the first message of a batch; also how
/// quickly a stop request is noticed.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How often watermarks and metadata are retried while they fail.
const RETRY: Duration = Duration::from_secs(1);
/// Bound of one metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the commit at close may wait for an unreachable coordinator
/// (`session.timeout.ms`; with manual assignment it bounds nothing else).
const CLOSE_COMMIT_TIMEOUT_MS: &str = "5000";
/// Sub-batches queued per apply thread before the poll thread waits.
const QUEUED_PER_THREAD: usize = 4;
/// The longest a poll waits for the first message of a batch while
/// sub-batches are out with the apply threads: their acknowledgements (and
/// so the offsets stored, the progress counted and readiness) are taken in
/// between polls, so a [`POLL_WAIT`] after the last message of a burst
/// would hold them back up to 100 ms. Polls that find nothing while work is
/// in flight cost at most 1,000 wake-ups a second.
const ACK_WAIT: Duration = Duration::from_millis(1);

/// Per partition: where the consumer stands.
#[derive(Debug, Clone)]
struct PartitionState {
    /// The offset after the last message applied (or rejected); -1: none yet.
    next: i64,
    /// The offset after the last message handed to an apply thread.
    dispatched: i64,
    /// Whether `next` moved since the last offset store.
    dirty: bool,
    /// (low, high) watermarks read at start, once known.
    start_watermarks: Option<(i64, i64)>,
    /// `dispatched` when the end of the partition was last reached.
    eof_at: Option<i64>,
}

impl PartitionState {
    fn new() -> PartitionState {
        PartitionState {
            next: -1,
            dispatched: -1,
            dirty: false,
            start_watermarks: None,
            eof_at: None,
        }
    }

    /// Caught up with what the partition held at start.
    fn caught_up(&self) -> bool {
        self.eof_at.is_some_and(|at| self.next >= at)
            || matches!(self.start_watermarks, Some((low, high)) if high <= low || self.next >= high)
    }
}

/// Everything the loop mutates besides the consumer itself.
struct State {
    topic: Arc<str>,
    max_message_bytes: usize,
    start: KafkaStart,
    /// Next offsets per partition from the loaded snapshot.
    resume: Option<Vec<(i32, i64)>>,
    partition_check: Duration,
    metrics: KafkaMetrics,
    rejects: Arc<Rejects>,
    stop: Arc<AtomicBool>,
    ready: watch::Sender<bool>,
    caught_up: bool,
    started: Instant,
    progress: Arc<Progress>,
    partitions: Vec<PartitionState>,
    error_log: RateLimited,
    /// Emptied sub-batches, for reuse.
    pool: Vec<SubBatch>,
    /// Sub-batches handed out and not yet acknowledged.
    in_flight: usize,
    /// Whether this thread decodes and admits behavior events itself, so
    /// the apply thread only applies: with one apply thread (two cores or
    /// fewer), decoding here splits the per-event work between the two
    /// threads; with more, the apply threads decode in parallel.
    decode_on_poll: bool,
    /// The shop checks of the events this thread decodes.
    admission: Admission,
    /// How behavior payloads are encoded (`--kafka-encoding`).
    encoding: MessageEncoding,
}

/// The consumer's threads: this one polls, the apply threads apply.
pub(super) struct Worker {
    consumer: BaseConsumer<ClientHooks>,
    state: State,
    appliers: Vec<SyncSender<SubBatch>>,
    threads: Vec<JoinHandle<()>>,
    acks: Receiver<Ack>,
}

impl Worker {
    pub(super) fn new(
        engine: Arc<Engine>,
        config: &KafkaConfig,
        metrics: KafkaMetrics,
        stop: Arc<AtomicBool>,
        ready: watch::Sender<bool>,
        progress: Arc<Progress>,
    ) -> Result<Worker, KafkaError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("client.id", "vitrine")
            // State first: an offset is stored only once its event is
            // applied; auto-commit then commits what was stored.
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", CLOSE_COMMIT_TIMEOUT_MS)
            // End-of-partition events mark a partition caught up.
            .set("enable.partition.eof", "true")
            // Freshness: the longest a broker may hold a fetch while it
            // waits for data (librdkafka's default is 500 ms). Kafka answers
            // as soon as data arrives, but a broker that holds fetches for
            // the whole wait (Tansu does: p99 517 ms produce -> Decide at
            // 500 ms) adds up to this much to every event; 3 ms caps it.
            // Measured on Tansu at 10,000 events/s, produce -> Decide: 10 ms
            // gave p50 19-21 ms, 3 ms gives p50 10-12 ms (p99 median 23 ms
            // over 7 runs). The price is ~330 empty fetches/s per broker
            // connection when idle: Tansu's idle CPU 10-12% -> 20-22% of a
            // core, this process's 5-6% -> 7-9%. Operators who prefer the
            // quieter idle set `--kafka-option fetch.wait.max.ms=10`.
            .set("fetch.wait.max.ms", super::FETCH_WAIT_MAX_MS)
            // Catching up, applying is slower than fetching, so the
            // prefetch queue fills; librdkafka then postpones the partition's
            // next fetch by this much (default 1 s), and the drained queue
            // would leave the apply threads idle: 10 ms keeps them fed
            // (measured from a pre-filled topic: 129k -> 650k events/s).
            .set("fetch.queue.backoff.ms", super::FETCH_QUEUE_BACKOFF_MS)
            // Lag and connectivity metrics.
            .set("statistics.interval.ms", "1000")
            // A recovered broker is found within 2 s (default backoff up to 10 s).
            .set("reconnect.backoff.max.ms", "2000");
        for (key, value) in &config.options {
            client.set(key, value);
        }
        let context = ClientHooks::new(&config.topic, metrics.clone(), config.stream == Stream::Behavior);
        let consumer: BaseConsumer<ClientHooks> = client.create_with_context(context)?;
        let dead_letter = match &config.dead_letter_topic {
            Some(topic) => Some(DeadLetter::new(
                &config.brokers,
                topic,
                &config.options,
                metrics.clone(),
            )?),
            None => None,
        };
        let topic: Arc<str> = config.topic.as_str().into();
        let rejects = Arc::new(Rejects {
            stream: config.stream,
            engine: engine.clone(),
            dead_letter,
            log: Mutex::new(RateLimited::new(20)),
        });
        let (ack_tx, acks) = mpsc::channel();
        let mut appliers = Vec::new();
        let mut threads = Vec::new();
        let stream = config.stream;
        for i in 0..config.apply_threads.max(1) {
            let (tx, rx) = mpsc::sync_channel(QUEUED_PER_THREAD);
            let (topic, engine, metrics, rejects, ack_tx) = (
                topic.clone(),
                engine.clone(),
                metrics.clone(),
                rejects.clone(),
                ack_tx.clone(),
            );
            let thread = std::thread::Builder::new()
                .name(format!("vitrine-apply-{i}"))
                .spawn(move || apply::run(stream, topic, engine, metrics, rejects, rx, ack_tx))
                .map_err(|e| KafkaError::ClientCreation(format!("starting an apply thread: {e}")))?;
            appliers.push(tx);
            threads.push(thread);
        }
        Ok(Worker {
            consumer,
            state: State {
                topic,
                max_message_bytes: config.max_message_bytes,
                start: config.start,
                resume: config.resume.clone(),
                partition_check: config.partition_check,
                metrics,
                rejects,
                stop,
                ready,
                caught_up: false,
                started: Instant::now(),
                progress,
                partitions: Vec::new(),
                error_log: RateLimited::new(10),
                pool: Vec::new(),
                in_flight: 0,
                decode_on_poll: stream == Stream::Behavior && config.apply_threads.max(1) == 1,
                admission: Admission::default(),
                encoding: config.encoding,
            },
            appliers,
            threads,
            acks,
        })
    }

    /// The loop: until stopped, keep the assignment current, poll batches,
    /// hand them to the apply threads, store what they acknowledge.
    pub(super) fn run(mut self) {
        let mut next_metadata = Instant::now();
        let mut next_watermarks = Instant::now();
        while !self.state.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= next_metadata {
                let ok = self.state.check_partitions(&self.consumer);
                next_metadata = now + if ok { self.state.partition_check } else { RETRY };
            }
            if !self.state.caught_up && now >= next_watermarks && !self.state.partitions.is_empty() {
                self.state.read_start_watermarks(&self.consumer);
                next_watermarks = now + RETRY;
            }
            if !self.batch() {
                tracing::error!(topic = %self.state.topic, "Kafka: an apply thread stopped; ingest stops (decisions are still served)");
                break;
            }
            while let Ok(ack) = self.acks.try_recv() {
                self.state.acknowledged(ack);
            }
            self.state.store_offsets(&self.consumer);
            if !self.state.caught_up {
                self.state.check_caught_up();
            }
        }
        self.finish();
    }

    /// Polls up to [`BATCH`] messages and hands them to the apply threads;
    /// false if an apply thread is gone.
    fn batch(&mut self) -> bool {
        let threads = self.appliers.len();
        let mut subs: Vec<Option<SubBatch>> = (0..threads).map(|_| None).collect();
        let mut messages = 0usize;
        let mut now = 0;
        self.state.admission.clear();
        while messages < BATCH {
            let wait = match (messages, self.state.in_flight) {
                (0, 0) => POLL_WAIT,
                (0, _) => ACK_WAIT,
                _ => Duration::ZERO,
            };
            match self.consumer.poll(wait) {
                None => {
                    if messages == 0 {
                        self.state.progress.idle_polls.fetch_add(1, Ordering::Release);
                    }
                    break;
                }
                Some(Ok(message)) => {
                    if messages == 0 {
                        now = now_ms();
                    }
                    messages += 1;
                    let p = message.partition();
                    let sub = subs[p.unsigned_abs() as usize % threads]
                        .get_or_insert_with(|| self.state.pool.pop().unwrap_or_default());
                    sub.now_ms = now;
                    self.state.dispatch(&message, sub);
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(state) = usize::try_from(p).ok().and_then(|p| self.state.partitions.get_mut(p)) {
                        state.eof_at = Some(state.dispatched);
                    }
                }
                // Already counted and logged by the context's error callback.
                Some(Err(_)) => break,
            }
        }
        if let Some(dl) = &self.state.rejects.dead_letter {
            dl.poll();
        }
        // Counted once per batch, before any of it can be acknowledged.
        if messages > 0 {
            self.state
                .progress
                .dispatched
                .fetch_add(messages as u64, Ordering::Release);
        }
        for (tx, sub) in self.appliers.iter().zip(subs) {
            if let Some(mut sub) = sub {
                sub.now_ms = now;
                self.state.in_flight += 1;
                if tx.send(sub).is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// At shutdown: let the apply threads finish what they hold, store what
    /// was applied, flush dead-letter forwards and close; closing commits the
    /// stored offsets (librdkafka's final auto-commit), bounded by
    /// `session.timeout.ms` when no broker answers.
    fn finish(self) {
        let Worker {
            consumer,
            mut state,
            appliers,
            threads,
            acks,
        } = self;
        drop(appliers);
        while state.in_flight > 0 {
            match acks.recv_timeout(Duration::from_secs(10)) {
                Ok(ack) => state.acknowledged(ack),
                Err(_) => break,
            }
        }
        for thread in threads {
            let _ = thread.join();
        }
        state.store_offsets(&consumer);
        if let Some(dl) = &state.rejects.dead_letter {
            dl.flush(Duration::from_secs(5));
        }
        let context = consumer.context().clone();
        let failures = context.commit_failures.load(Ordering::Acquire);
        let started = Instant::now();
        drop(consumer);
        if context.commit_failures.load(Ordering::Acquire) == failures {
            tracing::info!(
                topic = %state.topic,
                seconds = started.elapsed().as_secs_f64(),
                "Kafka: consumer closed, applied offsets committed"
            );
        } else {
            tracing::warn!(
                topic = %state.topic,
                "Kafka: consumer closed without committing its last offsets; the next start with --kafka-start committed re-reads from the previous commit (re-applying is harmless)"
            );
        }
        state.metrics.up.set(0.0);
    }
}

impl State {
    /// Reads the topic's partition count and assigns partitions not yet
    /// assigned; false when the metadata could not be read.
    fn check_partitions(&mut self, consumer: &BaseConsumer<ClientHooks>) -> bool {
        let count = match consumer.fetch_metadata(Some(&*self.topic), REQUEST_TIMEOUT) {
            Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == &*self.topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => t.partitions().len(),
                Some(t) => {
                    if self.error_log.allow() {
                        tracing::warn!(
                            topic = %self.topic,
                            "Kafka: the topic is not available ({:?}); create it (e.g. `tansu topic create {} --partitions 4`); retrying",
                            t.error(),
                            self.topic
                        );
                    }
                    return false;
                }
                None => return false,
            },
            Err(e) => {
                self.metrics.error(KafkaErrorKind::Client);
                if self.error_log.allow() {
                    tracing::warn!(topic = %self.topic, "Kafka: reading the topic's metadata failed: {e}; retrying");
                }
                return false;
            }
        };
        let known = self.partitions.len();
        if count <= known {
            return true;
        }
        let mut added = TopicPartitionList::with_capacity(count - known);
        let mut resumed = Vec::with_capacity(count - known);
        for p in known..count {
            // A partition the loaded snapshot covers resumes where it
            // stopped. Otherwise: with a snapshot, the partition is new to
            // it, so from its beginning; without one, partitions present at
            // start begin where configured; partitions added while running
            // are new to this index: from their beginning.
            let from_snapshot = self
                .resume
                .as_ref()
                .map(|r| r.iter().find(|&&(rp, _)| rp as usize == p).map(|&(_, o)| o));
            resumed.push(from_snapshot.flatten());
            let offset = match (from_snapshot, known, self.start) {
                (Some(Some(o)), _, _) => Offset::Offset(o),
                (Some(None), _, _) => Offset::Beginning,
                (None, 0, KafkaStart::Committed) => Offset::Stored,
                _ => Offset::Beginning,
            };
            if let Err(e) = added.add_partition_offset(&self.topic, p as i32, offset) {
                tracing::error!(topic = %self.topic, partition = p, "Kafka: {e}");
                return false;
            }
        }
        if let Err(e) = consumer.incremental_assign(&added) {
            self.metrics.error(KafkaErrorKind::Client);
            tracing::error!(topic = %self.topic, "Kafka: assigning partitions {known}..{count} failed: {e}; retrying");
            return false;
        }
        self.partitions.resize(count, PartitionState::new());
        for (state, offset) in self.partitions[known..].iter_mut().zip(resumed) {
            if let Some(o) = offset {
                // Everything before it is in the index already.
                state.next = o;
                state.dispatched = o;
            }
        }
        self.publish_positions();
        tracing::info!(topic = %self.topic, partitions = count, "Kafka: reading partitions {known}..{count}");
        true
    }

    /// Reads the high watermarks that define "caught up", for partitions
    /// still missing them; stops at the first failure (retried later).
    fn read_start_watermarks(&mut self, consumer: &BaseConsumer<ClientHooks>) {
        for p in 0..self.partitions.len() {
            if self.partitions[p].start_watermarks.is_some() {
                continue;
            }
            match consumer.fetch_watermarks(&self.topic, p as i32, REQUEST_TIMEOUT) {
                Ok(w) => {
                    let state = &mut self.partitions[p];
                    if state.next > w.1 {
                        // The snapshot is ahead of the topic: it was
                        // recreated, or the snapshot is another topic's.
                        tracing::warn!(
                            topic = %self.topic,
                            partition = p,
                            snapshot_offset = state.next,
                            high_watermark = w.1,
                            "Kafka: the snapshot's offset is beyond the partition's high watermark (topic recreated? \
                             Tansu 0.6 also under-reports watermarks); the index keeps the snapshot's events, and \
                             this partition is left out of the next snapshot (so a restart re-reads it whole)"
                        );
                        state.next = -1;
                        state.dispatched = -1;
                        self.partitions[p].start_watermarks = Some(w);
                        self.publish_positions();
                        continue;
                    }
                    state.start_watermarks = Some(w);
                }
                Err(e) => {
                    self.metrics.error(KafkaErrorKind::Client);
                    if self.error_log.allow() {
                        tracing::warn!(topic = %self.topic, partition = p, "Kafka: reading watermarks failed: {e}; retrying");
                    }
                    return;
                }
            }
        }
    }

    fn check_caught_up(&mut self) {
        if self.partitions.is_empty() || !self.partitions.iter().all(PartitionState::caught_up) {
            return;
        }
        for (p, state) in self.partitions.iter().enumerate() {
            tracing::debug!(
                topic = %self.topic,
                partition = p,
                next = state.next,
                watermarks = ?state.start_watermarks,
                eof_at = ?state.eof_at,
                "Kafka: partition caught up"
            );
        }
        self.caught_up = true;
        tracing::info!(
            topic = %self.topic,
            partitions = self.partitions.len(),
            messages = self.progress.messages.load(Ordering::Relaxed),
            seconds = self.started.elapsed().as_secs_f64(),
            "Kafka: caught up with the topic"
        );
        self.ready.send_replace(true);
    }

    /// Adds a message to its apply thread's sub-batch; rejects right here
    /// what needs no decoding (tombstones, oversized messages).
    fn dispatch(&mut self, message: &BorrowedMessage<'_>, sub: &mut SubBatch) {
        let (p, offset) = (message.partition(), message.offset());
        let Ok(index) = usize::try_from(p) else {
            return;
        };
        if index >= self.partitions.len() {
            self.partitions.resize(index + 1, PartitionState::new());
        }
        let state = &mut self.partitions[index];
        state.dispatched = state.dispatched.max(offset + 1);
        // A behavior message's `content-type` header, read once and only
        // when it decides (`encoding.rs`: librdkafka allocates to read
        // headers); decision records have one encoding of their own.
        let behavior = self.rejects.stream == Stream::Behavior;
        let header = match self.encoding {
            MessageEncoding::Header if behavior => content_type(message.headers()),
            // Said with a dead letter, so it can be decoded there.
            MessageEncoding::Protobuf if behavior => Ok(Some(PROTOBUF_CONTENT_TYPE.as_bytes())),
            _ => Ok(None),
        };
        let source = Source {
            topic: &self.topic,
            partition: p,
            offset,
            key: message.key(),
            payload: message.payload(),
            content_type: header.as_ref().ok().copied().flatten(),
        };
        match message.payload() {
            None => {
                self.rejects
                    .reject(source, Rejected::Tombstone, "the message has no payload");
                sub.push_rejected(p, offset);
            }
            Some(payload) if payload.len() > self.max_message_bytes => {
                let detail = format!(
                    "{} bytes, more than --kafka-max-message-bytes {}",
                    payload.len(),
                    self.max_message_bytes
                );
                self.rejects.reject(source, Rejected::Oversized, &detail);
                sub.push_rejected(p, offset);
            }
            Some(payload) if !behavior => sub.push(p, offset, message.key(), payload),
            Some(payload) => {
                // The encoding the operator or the producer names; no header is JSON.
                let named = match self.encoding {
                    MessageEncoding::Json => Ok(Encoding::Json),
                    MessageEncoding::Protobuf => Ok(Encoding::Protobuf),
                    MessageEncoding::Header => header.and_then(Encoding::from_content_type),
                };
                let encoding = match named {
                    Ok(encoding) => encoding,
                    Err(detail) => {
                        self.rejects.reject(source, Rejected::UnknownContentType, &detail);
                        sub.push_rejected(p, offset);
                        return;
                    }
                };
                if self.decode_on_poll {
                    apply::decode_into(
                        sub,
                        &mut self.admission,
                        &self.rejects,
                        &self.metrics,
                        source,
                        payload,
                        encoding,
                    );
                } else {
                    sub.push_encoded(p, offset, message.key(), payload, source.content_type, encoding);
                }
            }
        }
    }

    /// Takes in an applied sub-batch: its offsets may now be stored.
    fn acknowledged(&mut self, ack: Ack) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Ack {
            mut batch,
            applied,
            rejected,
        } = ack;
        for &(p, next) in &batch.next {
            if let Some(state) = usize::try_from(p).ok().and_then(|p| self.partitions.get_mut(p)) {
                if next > state.next {
                    state.next = next;
                    state.dirty = true;
                }
            }
        }
        self.publish_positions();
        let progress = &self.progress;
        progress.messages.fetch_add(batch.len() as u64, Ordering::Release);
        progress.applied.fetch_add(applied, Ordering::Release);
        progress.rejected.fetch_add(rejected, Ordering::Release);
        batch.clear();
        if self.pool.len() < 16 {
            self.pool.push(batch);
        }
    }

    /// Publishes each partition's `next` (what a snapshot may record).
    fn publish_positions(&self) {
        let mut positions = self.progress.positions.lock();
        positions.clear();
        positions.extend(self.partitions.iter().map(|s| s.next));
    }

    /// Stores the next offsets of partitions that moved: what auto-commit
    /// commits next.
    fn store_offsets(&mut self, consumer: &BaseConsumer<ClientHooks>) {
        let mut tpl = TopicPartitionList::new();
        for (p, state) in self.partitions.iter_mut().enumerate() {
            if state.dirty {
                state.dirty = false;
                if let Err(e) = tpl.add_partition_offset(&self.topic, p as i32, Offset::Offset(state.next)) {
                    tracing::error!(topic = %self.topic, partition = p, "Kafka: {e}");
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.store_offsets(&tpl) {
            self.metrics.error(KafkaErrorKind::Commit);
            if self.error_log.allow() {
                tracing::warn!(topic = %self.topic, "Kafka: storing offsets failed: {e}");
            }
        }
    }
}
