//! Reading a cluster topic in order: every partition, from a given offset
//! (or the beginning), one record at a time, on one thread.
//!
//! Every replica reads the whole topic and applies each record with the same
//! deterministic function, so replicas that have read the same prefix of each
//! partition hold the same state. Records of one shop (rules) or one benefit
//! (claims) share a partition (the key decides), so their order is the
//! partition's order, the same everywhere.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;

/// The longest a poll waits; also how quickly a stop request is noticed.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How often metadata and watermarks are retried while they fail.
const RETRY: Duration = Duration::from_millis(500);
/// Bound of one metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the partition count is read again (topics can grow).
const PARTITION_CHECK: Duration = Duration::from_secs(30);

/// The header that carries a record's [`RequestId`].
pub const REQUEST_HEADER: &str = "vitrine-request";

/// Who wrote a record and which of its calls waits for it: the replica's
/// random id (drawn at start) and a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId {
    /// The replica, random per process start.
    pub replica: u64,
    /// The call, counted from 1 per process.
    pub seq: u64,
}

impl RequestId {
    /// The header value: 16 bytes, big-endian replica then seq.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.replica.to_be_bytes());
        out[8..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// Reads a header value; `None` unless it is exactly 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<RequestId> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        let (replica, seq) = bytes.split_at(8);
        Some(RequestId {
            replica: u64::from_be_bytes(replica.try_into().ok()?),
            seq: u64::from_be_bytes(seq.try_into().ok()?),
        })
    }
}

/// One record, as the apply function sees it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key, if any.
    pub key: Option<&'a [u8]>,
    /// Payload, if any (a tombstone has none).
    pub payload: Option<&'a [u8]>,
    /// The writer's request id, if it set one.
    pub request: Option<RequestId>,
}

/// Where a reader starts.
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// (partition, next offset) to resume at; partitions not listed are read
    /// from their beginning.
    pub resume: Vec<(i32, i64)>,
}

/// Per partition: the next offset to apply, and the high watermark read at
/// start (what "caught up" means).
#[derive(Debug, Clone, Copy)]
struct Partition {
    next: i64,
    start_high: Option<i64>,
    at_end: bool,
}

/// A running reader; stops when dropped or [`LogReader::stop`]ped.
#[derive(Debug)]
pub struct LogReader {
    topic: String,
    stop: Arc<AtomicBool>,
    caught_up: watch::Receiver<bool>,
    thread: Option<JoinHandle<()>>,
}

impl LogReader {
    /// Starts reading `topic`; `apply` sees every record in partition order.
    pub fn start(
        brokers: &str,
        options: &[(String, String)],
        topic: &str,
        start: Start,
        mut apply: impl FnMut(Record<'_>) + Send + 'static,
    ) -> Result<LogReader, KafkaError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers)
            .set("client.id", "vitrine-cluster")
            // Assigned by hand, never committed: the applied state (and
            // the snapshot of it) says where to resume.
            .set("group.id", format!("vitrine-cluster-{topic}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Where the broker auto-creates topics (and librdkafka's mock
            // cluster, which has no CreateTopics), reading creates them too.
            .set("allow.auto.create.topics", "true")
            .set("enable.partition.eof", "true")
            // A record waits at most this long in a broker before a fetch
            // returns it (see the ingest consumer).
            .set("fetch.wait.max.ms", "10")
            .set("reconnect.backoff.max.ms", "2000");
        for (key, value) in options {
            client.set(key, value);
        }
        let consumer: BaseConsumer<DefaultConsumerContext> = client.create()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, caught_up) = watch::channel(false);
        let thread_stop = stop.clone();
        let name = topic.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("vitrine-log-{topic}"))
            .spawn(move || {
                let mut reader = Reader {
                    topic: name,
                    consumer,
                    resume: start.resume,
                    partitions: Vec::new(),
                    caught_up: false,
                    ready: ready_tx,
                };
                reader.run(&thread_stop, &mut apply);
            })
            .map_err(|e| KafkaError::ClientCreation(format!("starting the reader of {topic}: {e}")))?;
        Ok(LogReader {
            topic: topic.to_string(),
            stop,
            caught_up,
            thread: Some(thread),
        })
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// True once every partition was read up to its high watermark at start.
    pub fn caught_up(&self) -> watch::Receiver<bool> {
        self.caught_up.clone()
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Reader {
    topic: String,
    consumer: BaseConsumer<DefaultConsumerContext>,
    resume: Vec<(i32, i64)>,
    partitions: Vec<Partition>,
    caught_up: bool,
    ready: watch::Sender<bool>,
}

impl Reader {
    fn run(&mut self, stop: &AtomicBool, apply: &mut impl FnMut(Record<'_>)) {
        let mut next_metadata = Instant::now();
        let mut next_watermarks = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= next_metadata {
                next_metadata = now
                    + if self.check_partitions() {
                        PARTITION_CHECK
                    } else {
                        RETRY
                    };
            }
            if !self.caught_up && now >= next_watermarks && !self.partitions.is_empty() {
                self.read_watermarks();
                next_watermarks = now + RETRY;
            }
            if self.partitions.is_empty() {
                std::thread::park_timeout(POLL_WAIT);
                continue;
            }
            match self.consumer.poll(POLL_WAIT) {
                None => {}
                Some(Ok(message)) => {
                    let request = message
                        .headers()
                        .and_then(|h| h.iter().find(|h| h.key == REQUEST_HEADER))
                        .and_then(|h| h.value)
                        .and_then(RequestId::from_bytes);
                    let record = Record {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key(),
                        payload: message.payload(),
                        request,
                    };
                    apply(record);
                    let (partition, next) = (record.partition, record.offset + 1);
                    drop(message);
                    if let Some(p) = self.partition(partition) {
                        p.next = next;
                        p.at_end = false;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Some(p) = usize::try_from(partition).ok().and_then(|p| self.partitions.get_mut(p)) {
                        p.at_end = true;
                    }
                }
                Some(Err(e)) => tracing::debug!(topic = %self.topic, "Kafka: reading the cluster topic: {e}"),
            }
            if !self.caught_up {
                self.check_caught_up();
            }
        }
    }

    fn partition(&mut self, partition: i32) -> Option<&mut Partition> {
        usize::try_from(partition).ok().and_then(|p| self.partitions.get_mut(p))
    }

    /// Assigns partitions not yet assigned; false when metadata failed.
    fn check_partitions(&mut self) -> bool {
        let count = match self.consumer.fetch_metadata(Some(&self.topic), REQUEST_TIMEOUT) {
            Ok(m) => match m.topics().iter().find(|t| t.name() == self.topic) {
                Some(t) if t.error().is_none() => t.partitions().len(),
                _ => return false,
            },
            Err(_) => return false,
        };
        if count <= self.partitions.len() {
            return true;
        }
        let mut assignment = TopicPartitionList::new();
        for p in 0..count {
            let partition = i32::try_from(p).unwrap_or(i32::MAX);
            let offset = match self.partitions.get(p) {
                Some(known) => Offset::Offset(known.next),
                None => match self.resume.iter().find(|(q, _)| *q == partition) {
                    Some(&(_, next)) => Offset::Offset(next),
                    None => Offset::Beginning,
                },
            };
            if p >= self.partitions.len() {
                let next = match offset {
                    Offset::Offset(n) => n,
                    _ => 0,
                };
                self.partitions.push(Partition {
                    next,
                    // Partitions added after start hold nothing to catch up with.
                    start_high: if self.caught_up { Some(0) } else { None },
                    at_end: false,
                });
            }
            if assignment.add_partition_offset(&self.topic, partition, offset).is_err() {
                return false;
            }
        }
        match self.consumer.assign(&assignment) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(topic = %self.topic, "Kafka: assigning the cluster topic's partitions failed: {e}");
                false
            }
        }
    }

    fn read_watermarks(&mut self) {
        for (p, state) in self.partitions.iter_mut().enumerate() {
            if state.start_high.is_some() {
                continue;
            }
            let partition = i32::try_from(p).unwrap_or(i32::MAX);
            if let Ok((low, high)) = self.consumer.fetch_watermarks(&self.topic, partition, REQUEST_TIMEOUT) {
                state.start_high = Some(if high <= low { 0 } else { high });
            }
        }
    }

    fn check_caught_up(&mut self) {
        let done = !self.partitions.is_empty()
            && self
                .partitions
                .iter()
                .all(|p| p.at_end || p.start_high.is_some_and(|high| p.next >= high));
        if done {
            self.caught_up = true;
            let _ = self.ready.send(true);
            tracing::info!(topic = %self.topic, "Kafka: cluster topic read up to where it stood at start");
        }
    }
}
