//! Measures Kafka ingest (issue 4); reports, asserts nothing.
//!
//! * `throughput`: pre-fills a fresh 4-partition topic with `--events` JSON
//!   events (the benches' synthetic shop history, about 10 events per
//!   visitor, ~112 bytes each), waits for the broker to settle, then,
//!   alternating for `--rounds`, times a consumer that reads the topic and
//!   does nothing (the same librdkafka settings and batch poll loop, payloads
//!   only touched) and Vitrine's ingest (copy to its apply thread, decode,
//!   validate, apply, store offsets) until each has read every event.
//!   Reports events/s of both and their ratio. `--encoding proto` produces
//!   protobuf `vitrine.v1.Event`s (header `content-type:
//!   application/x-protobuf`) instead; `--encoding both` one topic of each,
//!   rounds alternating between them. Vitrine's consumer is told each
//!   topic's encoding (`--kafka-encoding json` or `proto`), or with
//!   `--by-header` reads each message's header (`--kafka-encoding header`).
//! * `freshness`: Vitrine's ingest on a fresh topic while a producer
//!   (`linger.ms` 5, `--linger-ms`; acks 1) sends `--rate` events/s for `--seconds`; one
//!   event in 50 tags a new visitor, and a prober runs the Decide RPC's
//!   synchronous path (`vitrine::api::grpc::decide`) every 0.5 ms for each pending
//!   probe until the decision shows the tag's banner. Reports p50/p99/max of
//!   produce -> first Decide reflecting the event, and, to say where a tail
//!   comes from, per probe: produce -> the broker's acknowledgement,
//!   acknowledgement -> Decide, and produce -> a plain "witness" consumer of
//!   the same topic with the same fetch settings (a probe the witness also
//!   saw late was late before any consumer could read it); the slowest 1%
//!   listed with all three; the machine's CPU pressure (`/proc/pressure/cpu`).
//!
//! Both report CPU time per event of each consumer's threads (apply, poll,
//! librdkafka; from `/proc/self/task/*/schedstat`), which the machine's other
//! load does not change the way it changes the wall clock, and with
//! `--broker-pid PID` the broker's CPU.
//! * `apply`: decode and apply alone, from payloads in memory, on one thread:
//!   the ceiling of one apply thread; then decode alone of the same events
//!   as JSON and as protobuf (`decode_all_json`, `decode_all_proto`: for
//!   `valgrind --tool=callgrind --toggle-collect=...` instruction counts).
//!
//! Without `--brokers` both run against librdkafka's in-process mock
//! cluster (which then shares the CPU with the measured code); with
//! `--brokers 127.0.0.1:9092` against a running broker, e.g. Tansu:
//! `tansu broker --storage-engine memory://tansu/ --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092`.
//! `--kafka-option KEY=VALUE` overrides a librdkafka property of Vitrine's
//! consumer (e.g. `fetch.wait.max.ms=500`, librdkafka's default), and
//! `--apply-threads N` its apply threads. `VITRINE_LOG=info` shows its logs.
//!
//! ```sh
//! cargo run --release -p vitrine --example kafka_ingest -- --brokers 127.0.0.1:9092 throughput --events 2000000 --rounds 3
//! cargo run --release -p vitrine --example kafka_ingest -- --brokers 127.0.0.1:9092 freshness --rate 10000 --seconds 20
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use vitrine::clock::now_ms;
use vitrine::commands::produce::Deliveries;
use vitrine::config::KafkaConfig;
use vitrine::ingest::{Encoding, Ingest, MessageEncoding, BATCH, CONTENT_TYPE_HEADER, PROTOBUF_CONTENT_TYPE};
use vitrine::metrics::Metrics;
use vitrine::rules_store::{Origin, RuleStore};
use vitrine::state::Engine;
use vitrine_benches::Dataset;
use vitrine_core::{Action, Event};
use vitrine_proto::v1 as pb;

#[derive(Debug, Parser)]
struct Args {
    /// A running broker; none = librdkafka's in-process mock cluster.
    #[arg(long, global = true)]
    brokers: Option<String>,
    /// Apply threads of Vitrine's ingest (default: as `vitrine serve`).
    #[arg(long, global = true)]
    apply_threads: Option<usize>,
    /// A librdkafka property for Vitrine's consumer, e.g. `fetch.wait.max.ms=500`.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", global = true)]
    kafka_options: Vec<String>,
    /// The broker's process id (a local Tansu): its CPU time is reported
    /// beside the consumers'.
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    /// Vitrine's consumer learns each message's encoding from its
    /// `content-type` header (`--kafka-encoding header`) instead of from
    /// the topic (`json` or `proto`, as produced).
    #[arg(long, global = true)]
    by_header: bool,
    #[command(subcommand)]
    what: What,
}

/// How Vitrine's consumer is configured beyond the defaults.
#[derive(Debug, Clone, Default)]
struct Tuning {
    apply_threads: Option<usize>,
    options: Vec<(String, String)>,
    /// Not Vitrine's: the broker process to report the CPU of.
    broker_pid: Option<u32>,
    /// `--kafka-encoding header` rather than the topic's encoding.
    by_header: bool,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Consume-and-apply rate against a do-nothing consumer.
    Throughput {
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// How the events are produced: `json`, `proto` (protobuf
        /// `vitrine.v1.Event`s, header `content-type:
        /// application/x-protobuf`), or `both`: one topic of each, rounds
        /// alternating between them (an A/B in one run).
        #[arg(long, value_enum, default_value_t = Encodings::Json)]
        encoding: Encodings,
    },
    /// Decode and apply alone, from payloads in memory (no Kafka): the
    /// ceiling; then decode alone, JSON and protobuf, of the same events.
    Apply {
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
    },
    /// Produce -> first Decide that reflects the event.
    Freshness {
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The producer's `linger.ms`: how long it holds a message to batch
        /// it with the next ones (part of every latency measured).
        #[arg(long, default_value_t = 5)]
        linger_ms: u32,
    },
}

/// The encodings `throughput` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Encodings {
    Json,
    Proto,
    Both,
}

impl Encodings {
    fn list(self) -> &'static [Encoding] {
        match self {
            Encodings::Json => &[Encoding::Json],
            Encodings::Proto => &[Encoding::Protobuf],
            Encodings::Both => &[Encoding::Json, Encoding::Protobuf],
        }
    }
}

/// The short name of an encoding in reports.
fn name(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Json => "json",
        Encoding::Protobuf => "proto",
    }
}

/// Partitions of the measured topics on a real broker.
const PARTITIONS: i32 = 4;

/// The broker: a mock cluster kept alive, or an address.
struct Broker {
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
    brokers: String,
    /// Partitions per topic: the mock cluster keeps at most 5 MB per
    /// partition (it trims older messages), so it gets enough of them.
    partitions: i32,
}

impl Broker {
    fn new(brokers: Option<String>, events: usize) -> Broker {
        match brokers {
            Some(b) => Broker {
                _mock: None,
                brokers: b,
                partitions: PARTITIONS,
            },
            None => {
                let mock = MockCluster::new(1).unwrap();
                let brokers = mock.bootstrap_servers();
                Broker {
                    _mock: Some(mock),
                    brokers,
                    partitions: PARTITIONS.max((events * 200 / (4 << 20)) as i32 + 1),
                }
            }
        }
    }

    fn create_topic(&self, name: &str) {
        if let Some(mock) = &self._mock {
            mock.create_topic(name, self.partitions, 1).unwrap();
            return;
        }
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .unwrap();
        let topic = NewTopic::new(name, self.partitions, TopicReplication::Fixed(1));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let results = rt
            .block_on(admin.create_topics([&topic], &AdminOptions::new()))
            .unwrap();
        for r in results {
            if let Err((t, e)) = r {
                assert_eq!(e, RDKafkaErrorCode::TopicAlreadyExists, "creating {t}: {e}");
            }
        }
        // Let metadata settle.
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn producer<C: ProducerContext + Default>(brokers: &str, linger_ms: &str) -> BaseProducer<C> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms)
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("acks", "1")
        .create_with_context(C::default())
        .unwrap()
}

/// Panics unless every message was acknowledged.
fn flush(p: &BaseProducer<Deliveries>, sent: u64) {
    p.flush(Duration::from_secs(300)).unwrap();
    let failed = p.context().failed.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(failed, 0, "{failed} of {sent} messages not delivered");
}

fn send(p: &BaseProducer<Deliveries>, topic: &str, key: &str, payload: &[u8], encoding: Encoding) {
    let record = BaseRecord::to(topic).key(key).payload(payload);
    match encoding {
        Encoding::Json => send_record(p, record),
        Encoding::Protobuf => send_record(
            p,
            record.headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                key: CONTENT_TYPE_HEADER,
                value: Some(PROTOBUF_CONTENT_TYPE),
            })),
        ),
    }
}

/// Sends, waiting while the local queue is full.
fn send_record<C: ProducerContext>(p: &BaseProducer<C>, mut record: BaseRecord<'_, str, [u8], C::DeliveryOpaque>) {
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                p.poll(Duration::from_millis(5));
            }
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
}

/// The freshness producer's context: when the broker acknowledged each
/// probe (its delivery report, taken by the producer's next poll, at most
/// 0.1 ms later at 10,000 events/s).
#[derive(Debug, Default)]
struct ProbeAcks {
    failed: std::sync::atomic::AtomicU64,
    acked: std::sync::Mutex<HashMap<u64, Instant>>,
}

impl rdkafka::client::ClientContext for ProbeAcks {}

impl ProducerContext for ProbeAcks {
    /// The probe's number + 1; 0 for other events.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, probe: usize) {
        if result.is_err() {
            self.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else if probe > 0 {
            self.acked.lock().unwrap().insert(probe as u64 - 1, Instant::now());
        }
    }
}

/// The JSON of an event (`docs/events.md`).
fn json(e: &Event<'_>, out: &mut String) {
    out.clear();
    let _ = write!(
        out,
        r#"{{"shop":"{}","visitor":"{}","action":"{}","ts":{}"#,
        e.shop, e.visitor, e.action, e.ts
    );
    if let Some(item) = &e.item {
        let _ = write!(out, r#","item":"{item}""#);
    }
    if let Some(category) = &e.category {
        let _ = write!(out, r#","category":"{category}""#);
    }
    match e.action {
        Action::Purchase => {
            let _ = write!(out, r#","price":{},"quantity":{}"#, e.price, e.quantity);
        }
        Action::Tag | Action::Untag => {
            let _ = write!(out, r#","tag":"{}""#, e.tag.as_deref().unwrap_or_default());
        }
        Action::Member => {
            let _ = write!(out, r#","tier":{}"#, e.tier);
        }
        _ => {}
    }
    out.push('}');
}

/// This run's scratch directory (rule store of the measured engines).
fn scratch() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("vitrine-kafka-ingest-{}", std::process::id()))
}

fn engine(name: &str, rules: Option<&str>) -> Arc<Engine> {
    let dir = scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let store = RuleStore::new(&dir.join("rules"), &dir.join("data"));
    if let Some(rules) = rules {
        store.push(rules, Origin::Push, false, now_ms()).unwrap();
    }
    Arc::new(Engine::new(store, Metrics::new()))
}

fn config(brokers: &str, topic: &str, group: &str, tuning: &Tuning) -> KafkaConfig {
    let defaults = KafkaConfig::new(brokers);
    KafkaConfig {
        topic: topic.to_string(),
        group: group.to_string(),
        options: tuning.options.clone(),
        apply_threads: tuning.apply_threads.unwrap_or(defaults.apply_threads),
        ..defaults
    }
}

/// [`config`] for a topic of `encoding`: the consumer told the topic's
/// encoding, or to read each message's header (`--by-header`).
fn config_for(brokers: &str, topic: &str, group: &str, tuning: &Tuning, encoding: Encoding) -> KafkaConfig {
    KafkaConfig {
        encoding: match (tuning.by_header, encoding) {
            (true, _) => MessageEncoding::Header,
            (false, Encoding::Json) => MessageEncoding::Json,
            (false, Encoding::Protobuf) => MessageEncoding::Protobuf,
        },
        ..config(brokers, topic, group, tuning)
    }
}

/// Reads `n` messages and does nothing with them: Vitrine's consumer
/// settings (its fetch wait and fetch queue backoff) and poll loop, without
/// decoding, applying or storing offsets.
fn noop_consume(broker: &Broker, topic: &str, n: usize) -> (Duration, Cpu) {
    let cpu = thread_cpu();
    let start = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .set("group.id", format!("noop-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", vitrine::ingest::FETCH_WAIT_MAX_MS)
        // As Vitrine's: with librdkafka's default (1 s), a full prefetch
        // queue postpones the next fetch by a second, and this consumer
        // measured 200-500k events/s in such rounds against ~1M in others.
        .set("fetch.queue.backoff.ms", vitrine::ingest::FETCH_QUEUE_BACKOFF_MS)
        .set("statistics.interval.ms", "1000")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..broker.partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.incremental_assign(&tpl).unwrap();
    let (mut seen, mut bytes) = (0usize, 0usize);
    while seen < n {
        let mut batch = 0;
        while batch < BATCH {
            let wait = if batch == 0 {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            match consumer.poll(wait) {
                Some(Ok(m)) => {
                    bytes += m.payload().map_or(0, |p| p.len() + usize::from(p[0]));
                    batch += 1;
                }
                Some(Err(_)) | None => break,
            }
        }
        seen += batch;
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "noop consumer stuck at {seen}"
        );
    }
    black_box(bytes);
    let took = start.elapsed();
    (took, Cpu::since(&cpu))
}

fn vitrine_consume(
    broker: &Broker,
    topic: &str,
    n: usize,
    round: usize,
    tuning: &Tuning,
    encoding: Encoding,
) -> (Duration, Cpu) {
    // The shop must be served: events of shops without rules are rejected.
    let engine = engine(&format!("throughput-{round}"), Some(vitrine_benches::RULES_20));
    let cpu = thread_cpu();
    let start = Instant::now();
    let group = format!("bench-{}-{round}", now_ms());
    let config = config_for(&broker.brokers, topic, &group, tuning, encoding);
    let ingest = Ingest::start(engine, &config).unwrap();
    while (ingest.progress().messages as usize) < n {
        std::thread::sleep(Duration::from_millis(1));
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "ingest stuck: {:?}",
            ingest.progress()
        );
    }
    let took = start.elapsed();
    // Before the stop: the apply threads end with it.
    let cpu = Cpu::since(&cpu);
    let p = ingest.progress();
    assert_eq!((p.messages as usize, p.applied as usize), (n, n), "{p:?}");
    ingest.stop(Duration::from_secs(10));
    (took, cpu)
}

/// CPU seconds all threads of process `pid` have used (0 without one).
fn process_cpu(pid: Option<u32>) -> f64 {
    let Some(dir) = pid.and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok()) else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum::<u64>() as f64
        / 1e9
}

/// Seconds in which some runnable task of the machine waited for a CPU
/// (`/proc/pressure/cpu`, "some"): how busy the machine was with others.
fn cpu_pressure() -> f64 {
    std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|s| {
            let some = s.lines().find(|l| l.starts_with("some"))?;
            some.split_whitespace()
                .find_map(|f| f.strip_prefix("total="))?
                .parse::<u64>()
                .ok()
        })
        .map_or(0.0, |us| us as f64 / 1e6)
}

/// CPU time per thread of this process (ns on a CPU, from
/// `/proc/self/task/*/schedstat`): thread id -> (name, ns).
fn thread_cpu() -> HashMap<u32, (String, u64)> {
    let mut threads = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for task in dir.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        threads.insert(tid, (comm.trim().to_string(), ns));
    }
    threads
}

/// CPU seconds a consumer's threads used in a round, by role: the thread
/// that applies (Vitrine's apply threads), the one that polls (Vitrine's
/// poll thread, or the main thread for the do-nothing consumer),
/// librdkafka's own threads, and the rest. Noise-proof beside the wall
/// clock on a busy machine: a thread's CPU time per event is its cost,
/// whatever else ran.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    apply: f64,
    poll: f64,
    librdkafka: f64,
    other: f64,
}

impl Cpu {
    fn since(before: &HashMap<u32, (String, u64)>) -> Cpu {
        let main = std::process::id();
        let mut cpu = Cpu::default();
        for (tid, (name, ns)) in thread_cpu() {
            let start = before.get(&tid).map_or(0, |b| b.1);
            let s = ns.saturating_sub(start) as f64 / 1e9;
            if name.starts_with("vitrine-apply") {
                cpu.apply += s;
            } else if name == "vitrine-kafka" || tid == main {
                cpu.poll += s;
            } else if name.starts_with("rdk:") {
                cpu.librdkafka += s;
            } else {
                cpu.other += s;
            }
        }
        cpu
    }

    /// Microseconds per event, "apply/poll/librdkafka".
    fn per_event(&self, n: usize) -> String {
        let us = |s: f64| s * 1e6 / n as f64;
        format!("{:.2}/{:.2}/{:.2}", us(self.apply), us(self.poll), us(self.librdkafka))
    }
}

/// Pre-fills a fresh topic with the dataset's first `events` events in
/// `encoding`; returns its name once the broker has settled.
fn prefill(broker: &Broker, dataset: &Dataset, events: usize, encoding: Encoding) -> String {
    let topic = format!("bench.throughput.{}.{}", name(encoding), now_ms());
    broker.create_topic(&topic);
    let t = Instant::now();
    let p = producer(&broker.brokers, "50");
    let (mut text, mut binary) = (String::new(), Vec::new());
    let mut bytes = 0;
    for r in &dataset.records()[..events] {
        let e = dataset.event(r);
        let payload = match encoding {
            Encoding::Json => {
                json(&e, &mut text);
                text.as_bytes()
            }
            Encoding::Protobuf => {
                binary.clear();
                e.write_proto(&mut binary);
                &binary[..]
            }
        };
        bytes += payload.len();
        send(&p, &topic, &e.visitor, payload, encoding);
        p.poll(Duration::ZERO);
    }
    flush(&p, events as u64);
    eprintln!(
        "pre-filled {topic}: {events} {} events, {:.0} bytes each on average ({:.1}s)",
        name(encoding),
        bytes as f64 / events as f64,
        t.elapsed().as_secs_f64()
    );
    // Let the broker settle: its high watermarks stop moving. (Tansu 0.6
    // reports the last batch's base offset + 1 as the high watermark, so
    // they may stay below the event count.)
    let t = Instant::now();
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .create()
        .unwrap();
    let mut last = (-1, Instant::now());
    loop {
        let end: i64 = (0..broker.partitions)
            .map(|p| {
                probe
                    .fetch_watermarks(&topic, p, Duration::from_secs(5))
                    .map_or(0, |(lo, hi)| hi - lo)
            })
            .sum();
        if end != last.0 {
            last = (end, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(2) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(300), "the broker does not settle");
        std::thread::sleep(Duration::from_millis(100));
    }
    topic
}

/// One encoding's figures over the rounds.
#[derive(Default)]
struct Rounds {
    noop: Vec<f64>,
    vitrine: Vec<f64>,
    busiest: Vec<f64>,
    /// Vitrine's CPU per event of all its threads (apply + poll + librdkafka).
    total: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn throughput(broker: &Broker, events: usize, rounds: usize, encodings: Encodings, tuning: &Tuning) {
    let t = Instant::now();
    let dataset = dataset(events);
    eprintln!("dataset: {} events ({:.1}s)", events, t.elapsed().as_secs_f64());
    let topics: Vec<(Encoding, String)> = encodings
        .list()
        .iter()
        .map(|&e| (e, prefill(broker, &dataset, events, e)))
        .collect();
    drop(dataset);
    let mut figures: Vec<Rounds> = topics.iter().map(|_| Rounds::default()).collect();
    for round in 0..rounds {
        for ((encoding, topic), f) in topics.iter().zip(&mut figures) {
            let (b, w) = (process_cpu(tuning.broker_pid), cpu_pressure());
            let (d, noop_cpu) = noop_consume(broker, topic, events);
            f.noop.push(events as f64 / d.as_secs_f64());
            let noop_others = format!(
                "broker {:.2} us/event, CPU pressure {:.0}%",
                (process_cpu(tuning.broker_pid) - b) * 1e6 / events as f64,
                (cpu_pressure() - w) * 100.0 / d.as_secs_f64()
            );
            let (b, w) = (process_cpu(tuning.broker_pid), cpu_pressure());
            let (d, cpu) = vitrine_consume(broker, topic, events, round, tuning, *encoding);
            f.vitrine.push(events as f64 / d.as_secs_f64());
            f.busiest.push(cpu.apply.max(cpu.poll) * 1e6 / events as f64);
            f.total
                .push((cpu.apply + cpu.poll + cpu.librdkafka) * 1e6 / events as f64);
            println!(
                "round {} {}: do-nothing consumer {:>9.0} events/s, Vitrine ingest {:>9.0} events/s, ratio {:.2}\n  \
                 CPU us/event apply/poll/librdkafka: do-nothing {} ({noop_others}); Vitrine {} (other {:.2}; \
                 broker {:.2} us/event, CPU pressure {:.0}%)",
                round + 1,
                name(*encoding),
                f.noop[round],
                f.vitrine[round],
                f.vitrine[round] / f.noop[round],
                noop_cpu.per_event(events),
                cpu.per_event(events),
                cpu.other * 1e6 / events as f64,
                (process_cpu(tuning.broker_pid) - b) * 1e6 / events as f64,
                (cpu_pressure() - w) * 100.0 / d.as_secs_f64()
            );
        }
    }
    for ((encoding, _), f) in topics.iter().zip(&figures) {
        let ratios: Vec<f64> = f.vitrine.iter().zip(&f.noop).map(|(v, n)| v / n).collect();
        println!(
            "{}: median of {rounds}: do-nothing {:.0} events/s, Vitrine {:.0} events/s, ratio per round {:.2}; \
             Vitrine's busiest thread (apply or poll) {:.2} us of CPU per event, all its threads {:.2}",
            name(*encoding),
            median(&f.noop),
            median(&f.vitrine),
            median(&ratios),
            median(&f.busiest),
            median(&f.total)
        );
    }
}

fn dataset(events: usize) -> Dataset {
    let visitors = (events / 10).max(1) as u32;
    let mut dataset = Dataset::generate(visitors);
    while dataset.len() < events {
        dataset = Dataset::generate(visitors * 2);
    }
    dataset
}

fn apply(events: usize) {
    let dataset = dataset(events);
    let mut buf = String::new();
    let payloads: Vec<Vec<u8>> = dataset.records()[..events]
        .iter()
        .map(|r| {
            json(&dataset.event(r), &mut buf);
            buf.clone().into_bytes()
        })
        .collect();
    drop(dataset);
    // The shop must be served: events of shops without rules are rejected.
    let engine = engine("apply", Some(vitrine_benches::RULES_20));
    let start = Instant::now();
    for p in &payloads {
        engine.apply(&Event::from_json(p).unwrap());
    }
    let took = start.elapsed();
    println!(
        "decode + apply, one thread, no Kafka: {:.0} events/s",
        events as f64 / took.as_secs_f64()
    );
    let binary: Vec<Vec<u8>> = payloads
        .iter()
        .map(|p| Event::from_json(p).unwrap().to_proto())
        .collect();
    for round in 0..3 {
        let start = Instant::now();
        decode_all_json(&payloads);
        let json = start.elapsed();
        let start = Instant::now();
        decode_all_proto(&binary);
        let proto = start.elapsed();
        println!(
            "decode alone, round {}: JSON {:.0} events/s ({:.0} ns/event), protobuf {:.0} events/s ({:.0} ns/event)",
            round + 1,
            events as f64 / json.as_secs_f64(),
            json.as_nanos() as f64 / events as f64,
            events as f64 / proto.as_secs_f64(),
            proto.as_nanos() as f64 / events as f64,
        );
    }
}

/// Decodes and validates every JSON payload (a callgrind
/// `--toggle-collect` target).
#[inline(never)]
fn decode_all_json(payloads: &[Vec<u8>]) {
    for p in payloads {
        black_box(Event::from_json(black_box(p)).unwrap());
    }
}

/// Decodes and validates every protobuf payload (a callgrind
/// `--toggle-collect` target).
#[inline(never)]
fn decode_all_proto(payloads: &[Vec<u8>]) {
    for p in payloads {
        black_box(Event::from_proto(black_box(p)).unwrap());
    }
}

const FRESH_RULES: &str = "shop: bench-fresh
audiences:
  probe: tag(\"probe\")
banners:
  - when: probe
    banner: probe
  - banner: default
";

fn freshness(broker: &Broker, rate: u64, seconds: u64, linger_ms: u32, tuning: &Tuning) {
    let topic = format!("bench.freshness.{}", now_ms());
    broker.create_topic(&topic);
    let engine = engine("freshness", Some(FRESH_RULES));
    let group = format!("fresh-{}", now_ms());
    let ingest = Ingest::start(engine.clone(), &config(&broker.brokers, &topic, &group, tuning)).unwrap();
    let ready = ingest.caught_up();
    while !*ready.borrow() {
        std::thread::sleep(Duration::from_millis(5));
    }

    // The witness: a plain consumer of the same topic with the same fetch
    // settings, noting when each probe reaches it. A late probe it also saw
    // late was late before any consumer could have it (producer, broker or
    // the machine); one it saw in time was late in Vitrine.
    let witness_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (fetching_tx, fetching) = mpsc::channel();
    let witness = {
        let (brokers, topic, partitions) = (broker.brokers.clone(), topic.clone(), broker.partitions);
        let stop = witness_stop.clone();
        std::thread::spawn(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", format!("witness-{}", now_ms()))
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "true")
                .set("fetch.wait.max.ms", vitrine::ingest::FETCH_WAIT_MAX_MS)
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
            }
            consumer.incremental_assign(&tpl).unwrap();
            let mut seen = HashMap::new();
            // Fetching once every partition's (empty) end was reached.
            let mut at_end = std::collections::HashSet::new();
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let probe = m
                            .key()
                            .and_then(|k| std::str::from_utf8(k).ok()?.strip_prefix("p-")?.parse::<u64>().ok());
                        if let Some(probe) = probe {
                            seen.entry(probe).or_insert_with(Instant::now);
                        }
                    }
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(p)))
                        if at_end.insert(p) && at_end.len() == partitions as usize =>
                    {
                        let _ = fetching_tx.send(());
                    }
                    _ => {}
                }
            }
            seen
        })
    };
    // Measured from when the witness fetches, as Vitrine (caught up) does.
    fetching.recv_timeout(Duration::from_secs(60)).unwrap();
    let pressure = cpu_pressure();
    let broker_cpu = process_cpu(tuning.broker_pid);
    let mut sent_at = Vec::new();
    let (tx, rx) = mpsc::channel::<(u64, Instant)>();
    let prober = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let mut pending: Vec<(u64, Instant, pb::DecideRequest)> = Vec::new();
            let mut latencies = Vec::new();
            let mut open = true;
            while open || !pending.is_empty() {
                loop {
                    match rx.try_recv() {
                        Ok((i, at)) => pending.push((
                            i,
                            at,
                            pb::DecideRequest {
                                shop: "bench-fresh".into(),
                                visitor: format!("p-{i}"),
                                ..Default::default()
                            },
                        )),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
                pending.retain(|&(i, at, ref req)| {
                    let d = vitrine::api::grpc::decide(&engine, req).unwrap();
                    if d.banner.is_some_and(|b| b.id == "probe") {
                        latencies.push((at.elapsed(), i));
                        false
                    } else {
                        at.elapsed() < Duration::from_secs(30)
                    }
                });
                std::thread::sleep(Duration::from_micros(500));
            }
            latencies
        })
    };

    let p: BaseProducer<ProbeAcks> = producer(&broker.brokers, &linger_ms.to_string());
    let total = rate * seconds;
    let start = Instant::now();
    let mut buf = String::new();
    let mut probes = 0u64;
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let ts = now_ms();
        if k % 50 == 0 {
            let visitor = format!("p-{probes}");
            buf.clear();
            let _ = write!(
                buf,
                r#"{{"shop":"bench-fresh","visitor":"{visitor}","action":"tag","tag":"probe","ts":{ts}}}"#
            );
            let at = Instant::now();
            let record = BaseRecord::with_opaque_to(&topic, probes as usize + 1);
            send_record(&p, record.key(visitor.as_str()).payload(buf.as_bytes()));
            tx.send((probes, at)).unwrap();
            sent_at.push(at);
            probes += 1;
        } else {
            let visitor = format!("f-{}", k % 100_000);
            buf.clear();
            let _ = write!(
                buf,
                r#"{{"shop":"bench-fresh","visitor":"{visitor}","action":"view","item":"sku-{}","ts":{ts}}}"#,
                k % 1000
            );
            send_record(
                &p,
                BaseRecord::with_opaque_to(&topic, 0)
                    .key(visitor.as_str())
                    .payload(buf.as_bytes()),
            );
        }
        p.poll(Duration::ZERO);
    }
    let sent_in = start.elapsed();
    p.flush(Duration::from_secs(300)).unwrap();
    let failed = p.context().failed.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(failed, 0, "{failed} of {total} messages not delivered");
    drop(tx);
    let mut latencies = prober.join().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let pressure = (cpu_pressure() - pressure) * 100.0 / elapsed;
    let broker_cpu = (process_cpu(tuning.broker_pid) - broker_cpu) * 100.0 / elapsed;
    witness_stop.store(true, std::sync::atomic::Ordering::Release);
    let witnessed = witness.join().unwrap();
    // Produce -> the witness, per probe.
    let witness_ms = |i: u64| -> Option<f64> {
        let seen = witnessed.get(&i)?;
        Some(seen.checked_duration_since(*sent_at.get(i as usize)?)?.as_secs_f64() * 1000.0)
    };
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |v: &[f64], q: f64| {
        v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    // One line's figures of sorted milliseconds.
    let spread = |v: &[f64]| {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            pct(v, 0.5),
            pct(v, 0.99),
            pct(v, 1.0)
        )
    };
    let acked = std::mem::take(&mut *p.context().acked.lock().unwrap());
    let ack_ms = |i: u64| -> Option<f64> {
        Some(
            acked
                .get(&i)?
                .checked_duration_since(*sent_at.get(i as usize)?)?
                .as_secs_f64()
                * 1000.0,
        )
    };
    let mut acks: Vec<f64> = (0..probes).filter_map(ack_ms).collect();
    acks.sort_by(f64::total_cmp);
    let decide: Vec<f64> = latencies.iter().map(|&(d, _)| ms(d)).collect();
    // What comes after the broker has the event: its fetch and Vitrine.
    let mut after_ack: Vec<f64> = latencies
        .iter()
        .filter_map(|&(d, i)| Some(ms(d) - ack_ms(i)?))
        .collect();
    after_ack.sort_by(f64::total_cmp);
    let mut seen: Vec<f64> = (0..probes).filter_map(witness_ms).collect();
    seen.sort_by(f64::total_cmp);
    println!(
        "freshness at {:.0} events/s for {:.1}s: {} of {probes} probes seen; produce -> first Decide reflecting it: {}",
        total as f64 / sent_in.as_secs_f64(),
        sent_in.as_secs_f64(),
        latencies.len(),
        spread(&decide)
    );
    println!(
        "  produce -> the broker's acknowledgement (acks=1, linger {linger_ms} ms): {}",
        spread(&acks)
    );
    println!(
        "  acknowledged -> first Decide reflecting it (the broker's fetch and Vitrine): {}",
        spread(&after_ack)
    );
    println!(
        "  produce -> a plain consumer (the witness, same fetch settings): {}",
        spread(&seen)
    );
    // The slowest 1% of decisions: how late the witness saw the same probes.
    let slow = &latencies[latencies.len() - latencies.len().div_ceil(100).min(latencies.len())..];
    let late_at_witness: Vec<String> = slow
        .iter()
        .map(|&(d, i)| {
            let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            format!("{:.0}/{}/{}", ms(d), opt(witness_ms(i)), opt(ack_ms(i)))
        })
        .collect();
    println!(
        "  slowest 1% as Decide/witness/ack ms: {}; CPU pressure (some task waiting) {pressure:.0}% of the time, broker CPU {broker_cpu:.0}% of a core",
        late_at_witness.join(" ")
    );
    ingest.stop(Duration::from_secs(10));
}

fn main() {
    let args = Args::parse();
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("VITRINE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let _ = vitrine::metrics::install();
    let events = match args.what {
        What::Throughput { events, .. } => events,
        What::Freshness { .. } | What::Apply { .. } => 0,
    };
    let tuning = Tuning {
        apply_threads: args.apply_threads,
        broker_pid: args.broker_pid,
        by_header: args.by_header,
        options: args
            .kafka_options
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("--kafka-option KEY=VALUE");
                (k.to_string(), v.to_string())
            })
            .collect(),
    };
    let broker = Broker::new(args.brokers, events);
    println!(
        "broker: {}, {} partitions per topic",
        if broker._mock.is_some() {
            "librdkafka mock cluster (in-process)".to_string()
        } else {
            broker.brokers.clone()
        },
        broker.partitions
    );
    match args.what {
        What::Throughput {
            events,
            rounds,
            encoding,
        } => throughput(&broker, events, rounds, encoding, &tuning),
        What::Freshness {
            rate,
            seconds,
            linger_ms,
        } => freshness(&broker, rate, seconds, linger_ms, &tuning),
        What::Apply { events } => apply(events),
    }
    let _ = std::fs::remove_dir_all(scratch());
}
