//! Kafka ingest (issue 4) against librdkafka's in-process mock cluster: the
//! real Kafka protocol, no set-up. Every wait is bounded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use vitrine::config::{Config, KafkaConfig, KafkaStart};
use vitrine::ingest::{Ingest, REASON_HEADER};
use vitrine::metrics::Metrics;
use vitrine::rules_store::{Origin, RuleStore};
use vitrine::state::Engine;
use vitrine_core::{size_of, Event, Index, ShopIndex};

use crate::support::{http_get, metric_value, temp_dir, wait_until, TempDir, WAIT};

pub(crate) const TOPIC: &str = "vitrine.behavior";
pub(crate) const DEAD: &str = "vitrine.dead";
/// 2026-11-20T00:00:00Z.
pub(crate) const NOW: i64 = 1_795_132_800_000;
const MAX_BYTES: usize = 1024;

fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 4, 1).unwrap();
    cluster.create_topic(DEAD, 1, 1).unwrap();
    // Cluster mode reads the claims topic too (the mock has no CreateTopics).
    cluster.create_topic("vitrine.claims", 6, 1).unwrap();
    cluster.create_topic("vitrine.decisions", 2, 1).unwrap();
    cluster
}

fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "1")
        .create()
        .unwrap()
}

/// A message: key and payload (`None` = tombstone).
#[derive(Debug, Clone)]
struct Msg {
    key: String,
    payload: Option<Vec<u8>>,
}

fn produce(producer: &BaseProducer, messages: &[Msg]) {
    for m in messages {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(TOPIC).key(m.key.as_str());
        if let Some(p) = &m.payload {
            record = record.payload(p);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(WAIT).unwrap();
}

/// A deterministic stream of valid events over two shops: every action,
/// purchases with and without ids, repeated deliveries of some events.
fn valid_events(n: usize, seed: u64) -> Vec<String> {
    let mut rng = vitrine_core::hash::SplitMix64::new(seed);
    let mut next = move |m: u64| rng.below(m);
    let mut out: Vec<String> = Vec::with_capacity(n);
    while out.len() < n {
        if out.len() > 10 && next(10) == 0 {
            // An exact duplicate of an earlier event (at-least-once producers).
            let i = next(out.len() as u64) as usize;
            out.push(out[i].clone());
            continue;
        }
        let shop = ["apparel", "books"][next(2) as usize];
        let visitor = format!("v-{}", next(60));
        let ts = NOW - (next(30 * 24) as i64) * 3_600_000 - next(3_600_000) as i64;
        let item = format!("sku-{}", next(10));
        let category = format!("c{}", next(4));
        let e = match next(9) {
            0..=2 => format!(
                r#"{{"shop":"{shop}","visitor":"{visitor}","action":"view","item":"{item}","category":"{category}","ts":{ts}}}"#
            ),
            3 => format!(
                r#"{{"shop":"{shop}","visitor":"{visitor}","action":"cart","item":"{item}","category":"{category}","ts":{ts}}}"#
            ),
            4 => format!(r#"{{"shop":"{shop}","visitor":"{visitor}","action":"favorite","item":"{item}","ts":{ts}}}"#),
            5 => {
                let price = 10 + next(90);
                let quantity = 1 + next(3);
                if next(2) == 0 {
                    let id = format!("order-{}", next(1_000_000));
                    format!(
                        r#"{{"shop":"{shop}","visitor":"{visitor}","action":"purchase","item":"{item}","price":{price}.5,"quantity":{quantity},"id":"{id}","ts":{ts}}}"#
                    )
                } else {
                    format!(
                        r#"{{"shop":"{shop}","visitor":"{visitor}","action":"purchase","item":"{item}","price":{price},"quantity":{quantity},"ts":{ts}}}"#
                    )
                }
            }
            6 => format!(
                r#"{{"shop":"{shop}","visitor":"{visitor}","action":"tag","tag":"t{}","ts":{ts}}}"#,
                next(2)
            ),
            7 => format!(
                r#"{{"shop":"{shop}","visitor":"{visitor}","action":"untag","tag":"t{}","ts":{ts}}}"#,
                next(2)
            ),
            _ => format!(
                r#"{{"shop":"{shop}","visitor":"{visitor}","action":"member","tier":{},"ts":{ts}}}"#,
                next(6)
            ),
        };
        out.push(e);
    }
    out
}

fn valid(events: &[String]) -> Vec<Msg> {
    events
        .iter()
        .map(|e| Msg {
            key: Event::from_json(e.as_bytes()).unwrap().visitor.to_string(),
            payload: Some(e.clone().into_bytes()),
        })
        .collect()
}

/// Malformed messages, `count` of each reason.
fn malformed(count: usize) -> Vec<(&'static str, Msg)> {
    let msg = |payload: Option<String>| Msg {
        key: "v-bad".into(),
        payload: payload.map(String::into_bytes),
    };
    let mut out = Vec::new();
    for i in 0..count {
        out.push(("invalid_json", msg(Some(format!("not json {i}")))));
        out.push((
            "missing_field",
            msg(Some(format!(
                r#"{{"shop":"apparel","visitor":"v-{i}","action":"view","ts":{NOW}}}"#
            ))),
        ));
        out.push((
            "wrong_type",
            msg(Some(format!(
                r#"{{"shop":"apparel","visitor":"v-{i}","action":"view","item":7,"ts":{NOW}}}"#
            ))),
        ));
        out.push((
            "unknown_action",
            msg(Some(format!(
                r#"{{"shop":"apparel","visitor":"v-{i}","action":"buy","item":"sku-1","ts":{NOW}}}"#
            ))),
        ));
        out.push((
            "invalid_value",
            msg(Some(format!(
                r#"{{"shop":"apparel","visitor":"v-{i}","action":"purchase","item":"sku-1","price":-1,"ts":{NOW}}}"#
            ))),
        ));
        out.push((
            "oversized",
            msg(Some(format!(
                r#"{{"shop":"apparel","visitor":"v-{i}","action":"view","item":"sku-1","ts":{NOW},"pad":"{}"}}"#,
                "x".repeat(MAX_BYTES)
            ))),
        ));
        out.push(("tombstone", msg(None)));
    }
    out
}

/// Interleaves `b` into `a` evenly.
fn interleave(a: Vec<Msg>, b: Vec<Msg>) -> Vec<Msg> {
    let step = (a.len() / b.len().max(1)).max(1);
    let mut b = b.into_iter();
    let mut out = Vec::new();
    for (i, m) in a.into_iter().enumerate() {
        out.push(m);
        if i % step == 0 {
            out.extend(b.next());
        }
    }
    out.extend(b);
    out
}

/// An engine whose metric handles record into their own recorder, so counts
/// are exact whatever other tests of this process do (`kafka_proto.rs` too).
pub(crate) struct Harness {
    _dir: TempDir,
    pub(crate) engine: Arc<Engine>,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Harness {
    pub(crate) fn new(name: &str) -> Harness {
        let dir = temp_dir(name);
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let metrics = metrics::with_local_recorder(&recorder, Metrics::new);
        let rules = RuleStore::new(&dir.path().join("rules"), &dir.path().join("data"));
        // Events of shops without a rule set are rejected: serve both shops.
        for shop in ["apparel", "books"] {
            rules
                .push(
                    &format!("shop: {shop}\nbanners:\n  - banner: default\n"),
                    Origin::Push,
                    false,
                    NOW,
                )
                .unwrap();
        }
        let engine = Arc::new(Engine::new(rules, metrics));
        Harness {
            _dir: dir,
            engine,
            recorder,
            handle,
        }
    }

    pub(crate) fn start(&self, config: &KafkaConfig) -> Ingest {
        metrics::with_local_recorder(&self.recorder, || Ingest::start(self.engine.clone(), config)).unwrap()
    }

    /// The value of one series, 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        metric_value(&self.handle.render(), series)
    }

    pub(crate) fn rejected(&self, reason: &str) -> f64 {
        self.metric(&format!("vitrine_ingest_rejected_total{{reason=\"{reason}\"}}"))
    }

    fn applied(&self) -> f64 {
        ["view", "cart", "favorite", "purchase", "tag", "untag", "member"]
            .iter()
            .map(|a| self.metric(&format!("vitrine_ingest_events_applied_total{{action=\"{a}\"}}")))
            .sum()
    }
}

fn kafka_config(brokers: &str, group: &str) -> KafkaConfig {
    KafkaConfig {
        group: group.to_string(),
        max_message_bytes: MAX_BYTES,
        partition_check: Duration::from_secs(1),
        options: vec![("reconnect.backoff.max.ms".into(), "200".into())],
        ..KafkaConfig::new(brokers)
    }
}

fn wait_caught_up(ingest: &Ingest) {
    let rx = ingest.caught_up();
    wait_until("the consumer to catch up", || *rx.borrow());
}

/// A consumer of `group` assigned to partition 0 of `topic`, from its
/// first message.
pub(crate) fn reader_from_start(brokers: &str, topic: &str, group: &str) -> BaseConsumer {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    reader.assign(&tpl).unwrap();
    reader
}

/// (partition, high watermark) of every non-empty partition of [`TOPIC`].
fn high_watermarks(brokers: &str) -> Vec<(i32, i64)> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "watermarks")
        .create()
        .unwrap();
    (0..4)
        .map(|p| (p, reader.fetch_watermarks(TOPIC, p, WAIT).unwrap().1))
        .filter(|&(_, high)| high > 0)
        .collect()
}

/// Waits until no message can arrive any more: the consumer stands at every
/// partition's high watermark, has since polled and found nothing, and every
/// message it handed to the apply threads is counted.
fn wait_drained(ingest: &Ingest, brokers: &str) {
    let highs = high_watermarks(brokers);
    wait_until("the consumer at every high watermark", || ingest.positions() == highs);
    let idle = ingest.progress().idle_polls;
    wait_until("an empty poll after the last message", || {
        ingest.progress().idle_polls > idle
    });
    let dispatched = ingest.progress().dispatched;
    wait_until("every dispatched message to be counted", || {
        ingest.progress().messages >= dispatched
    });
}

/// Purchase totals per (shop, visitor), de-duplicated as `docs/events.md` says
/// (by event id, else by item and ts).
fn purchase_model(events: &[String]) -> HashMap<(String, String), (u32, f64)> {
    let mut seen = HashSet::new();
    let mut totals: HashMap<(String, String), (u32, f64)> = HashMap::new();
    for e in events {
        let e = Event::from_json(e.as_bytes()).unwrap();
        if e.action != vitrine_core::Action::Purchase {
            continue;
        }
        let key = match &e.id {
            Some(id) => format!("{}|{}|id|{id}", e.shop, e.visitor),
            None => format!("{}|{}|{}|{}", e.shop, e.visitor, e.item.as_deref().unwrap_or(""), e.ts),
        };
        if seen.insert(key) {
            let t = totals.entry((e.shop.to_string(), e.visitor.to_string())).or_default();
            t.0 += 1;
            t.1 += e.amount();
        }
    }
    totals
}

/// Asserts that `index` holds exactly what applying `events` directly gives,
/// and that its purchase totals equal the plain model's.
fn assert_index_matches(index: &Index, events: &[String]) {
    let model = Index::new();
    for e in events {
        model.apply(&Event::from_json(e.as_bytes()).unwrap());
    }
    let totals = purchase_model(events);
    for shop in ["apparel", "books"] {
        let (got, want) = (index.shop(shop).unwrap(), model.shop(shop).unwrap());
        let stats = |s: &ShopIndex| {
            let st = s.stats();
            (st.visitors, st.day_entries, st.profile_entries)
        };
        assert_eq!(
            stats(&got),
            stats(&want),
            "{shop}: (visitors, day entries, profile entries)"
        );
        let size =
            |s: &ShopIndex, expr: &str| size_of(None, Some(s), &vitrine_core::MemoryLedger::new(), expr, NOW).unwrap();
        let mut exprs: Vec<String> = [
            "visited(400d)",
            "viewed(7d)",
            "carted(30d)",
            "favorited(400d)",
            "purchased(400d)",
            "purchased(12h)",
            "viewed(400d, item=\"sku-3\")",
            "carted(400d, category=\"c1\")",
            "tag(\"t0\")",
            "tag(\"t1\") and not tag(\"t0\")",
            "member_tier >= 1",
            "member_tier >= 4",
        ]
        .map(String::from)
        .to_vec();
        let shop_totals: Vec<(u32, f64)> = totals.iter().filter(|((s, _), _)| s == shop).map(|(_, t)| *t).collect();
        let max_count = shop_totals.iter().map(|t| t.0).max().unwrap_or(0);
        for k in 1..=max_count + 1 {
            let expr = format!("purchase_count(400d) >= {k}");
            let want = shop_totals.iter().filter(|t| t.0 >= k).count() as u64;
            assert_eq!(size(&got, &expr), want, "{shop}: {expr}");
            exprs.push(expr);
        }
        for (_, spend) in &shop_totals {
            let expr = format!("spend(400d) >= {spend}");
            let want = shop_totals.iter().filter(|t| t.1 >= *spend).count() as u64;
            assert_eq!(size(&got, &expr), want, "{shop}: {expr}");
        }
        for expr in &exprs {
            assert_eq!(size(&got, expr), size(&want, expr), "{shop}: {expr}");
        }
    }
}

#[test]
fn valid_events_apply_and_malformed_ones_are_counted_skipped_and_dead_lettered() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let h = Harness::new("mixed");
    let events = valid_events(600, 1);
    let bad = malformed(3);
    let mut want_rejected: BTreeMap<&str, usize> = BTreeMap::new();
    for (reason, _) in &bad {
        *want_rejected.entry(reason).or_default() += 1;
    }
    let total = events.len() + bad.len();
    produce(
        &producer(&brokers),
        &interleave(valid(&events), bad.iter().map(|(_, m)| m.clone()).collect()),
    );

    let config = KafkaConfig {
        dead_letter_topic: Some(DEAD.to_string()),
        ..kafka_config(&brokers, "mixed")
    };
    let ingest = h.start(&config);
    wait_caught_up(&ingest);
    assert_eq!(
        ingest.progress().messages,
        total as u64,
        "caught up = every message read"
    );
    assert_eq!(ingest.progress().applied, events.len() as u64);

    assert_index_matches(&h.engine.index, &events);
    for (reason, n) in &want_rejected {
        assert_eq!(
            h.rejected(reason),
            *n as f64,
            "vitrine_ingest_rejected_total{{reason={reason}}}"
        );
    }
    assert_eq!(h.applied(), events.len() as f64, "vitrine_ingest_events_applied_total");
    assert!(
        h.metric("vitrine_ingest_event_age_seconds_count") >= events.len() as f64,
        "every applied event's age is recorded"
    );
    assert!(ingest.stop(WAIT));

    // The dead-letter topic holds each bad message once: original key and
    // payload, the reason in a header.
    let dlq = reader_from_start(&brokers, DEAD, "dlq-reader");
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let mut payloads = HashSet::new();
    let start = Instant::now();
    while got.values().sum::<usize>() < bad.len() && start.elapsed() < WAIT {
        if let Some(Ok(m)) = dlq.poll(Duration::from_millis(100)) {
            let headers = m.headers().unwrap();
            let reason = headers
                .iter()
                .find(|h| h.key == REASON_HEADER)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap();
            assert_eq!(m.key(), Some(&b"v-bad"[..]));
            payloads.insert(m.payload().map(<[u8]>::to_vec));
            *got.entry(reason).or_default() += 1;
        }
    }
    let want: BTreeMap<String, usize> = want_rejected.iter().map(|(r, n)| (r.to_string(), *n)).collect();
    assert_eq!(got, want, "dead-lettered messages by reason");
    for (_, m) in &bad {
        assert!(payloads.contains(&m.payload), "original payload forwarded");
    }
}

#[test]
fn broker_outage_and_request_errors_lose_nothing_and_double_nothing() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let h = Harness::new("faults");
    let events = valid_events(900, 2);
    let (first, rest) = events.split_at(300);
    let (second, third) = rest.split_at(300);
    let producer = producer(&brokers);
    produce(&producer, &valid(first));

    let ingest = h.start(&kafka_config(&brokers, "faults"));
    wait_caught_up(&ingest);
    assert_eq!(ingest.progress().applied, first.len() as u64);
    wait_until("vitrine_kafka_up 1", || h.metric("vitrine_kafka_up") == 1.0);

    // The broker goes away: visible in metrics, and nothing is applied twice.
    cluster.broker_down(1).unwrap();
    wait_until("vitrine_kafka_up 0", || h.metric("vitrine_kafka_up") == 0.0);
    wait_until("the outage counted as client errors", || {
        h.metric("vitrine_kafka_errors_total{kind=\"client\"}") > 0.0
    });
    // Produced during the outage: the producer holds them until the broker is back.
    for m in valid(second) {
        let record: BaseRecord<'_, str, [u8]> = BaseRecord::to(TOPIC)
            .key(m.key.as_str())
            .payload(m.payload.as_deref().unwrap());
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    // The consumer fails again after they were sent: the outage spans their
    // production.
    let errors = h.metric("vitrine_kafka_errors_total{kind=\"client\"}");
    wait_until("another client error after producing", || {
        h.metric("vitrine_kafka_errors_total{kind=\"client\"}") > errors
    });
    cluster.broker_up(1).unwrap();
    producer.flush(WAIT).unwrap();
    wait_until("the events produced during the outage", || {
        ingest.progress().applied == (first.len() + second.len()) as u64
    });
    wait_until("vitrine_kafka_up 1 again", || h.metric("vitrine_kafka_up") == 1.0);

    // Failing fetches, offset lookups and commits, then a dropped connection.
    use RDKafkaRespErr::*;
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR__TRANSPORT,
            RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        ],
    );
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    produce(&producer, &valid(third));
    wait_until("every event", || ingest.progress().applied == events.len() as u64);
    // Nothing lost, nothing doubled: each message was handed over once and
    // the index equals the one built from the events directly. Drained
    // first, so a message handed over twice would be counted by now.
    wait_drained(&ingest, &brokers);
    assert_eq!(ingest.progress().messages, events.len() as u64);
    assert_eq!(h.applied(), events.len() as f64);
    assert_index_matches(&h.engine.index, &events);
    wait_until("a failed commit to be counted", || {
        h.metric("vitrine_kafka_errors_total{kind=\"commit\"}") >= 1.0
    });
    assert!(ingest.stop(WAIT));

    // Resuming from what the failing commits left committed re-reads at
    // most a tail of the topic, and the index stays exact.
    let resumed = h.start(&KafkaConfig {
        start: KafkaStart::Committed,
        ..kafka_config(&brokers, "faults")
    });
    wait_caught_up(&resumed);
    assert!(resumed.progress().messages < events.len() as u64);
    assert_index_matches(&h.engine.index, &events);
    assert!(resumed.stop(WAIT));
}

#[test]
fn a_restarted_consumer_resumes_from_its_committed_offsets_with_exact_purchase_totals() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let h = Harness::new("restart");
    let events = valid_events(800, 3);
    let (before, after) = events.split_at(500);
    let producer = producer(&brokers);
    produce(&producer, &valid(before));
    let config = KafkaConfig {
        start: KafkaStart::Committed,
        ..kafka_config(&brokers, "restart")
    };

    // No committed offsets yet: from the earliest.
    let first = h.start(&config);
    wait_caught_up(&first);
    assert_eq!(first.progress().messages, before.len() as u64);
    assert!(first.stop(WAIT), "stops and commits in time");

    produce(&producer, &valid(after));
    let second = h.start(&config);
    wait_caught_up(&second);
    // Only what came after the commit was read again.
    assert_eq!(second.progress().messages, after.len() as u64);
    assert_index_matches(&h.engine.index, &events);
    assert!(second.stop(WAIT));

    // A fresh replica (empty index, default start) reads the whole retained
    // log, whatever the group committed.
    let fresh = Harness::new("fresh");
    let third = fresh.start(&kafka_config(&brokers, "restart"));
    wait_caught_up(&third);
    assert_eq!(third.progress().messages, events.len() as u64);
    assert_index_matches(&fresh.engine.index, &events);
    assert!(third.stop(WAIT));
}

#[test]
fn stopping_while_the_broker_is_down_is_bounded() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let h = Harness::new("down");
    let events = valid_events(50, 4);
    produce(&producer(&brokers), &valid(&events));
    let mut config = kafka_config(&brokers, "down");
    // The commit at close waits this long for a coordinator (5 s in service).
    config.options.push(("session.timeout.ms".into(), "1000".into()));
    let ingest = h.start(&config);
    wait_caught_up(&ingest);
    cluster.broker_down(1).unwrap();
    wait_until("vitrine_kafka_up 0", || h.metric("vitrine_kafka_up") == 0.0);
    // Bounded: `stop` gives up waiting after WAIT and says so (no timed
    // assertion beyond that: this machine's speed is not the property).
    assert!(ingest.stop(WAIT), "the consumer did not stop within {WAIT:?}");
    assert_index_matches(&h.engine.index, &events);
}

#[test]
fn a_topic_created_after_start_is_picked_up() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let h = Harness::new("late");
    let ingest = h.start(&kafka_config(&brokers, "late"));
    // Two empty polls: the loop has looked for the topic's partitions and
    // checked whether it caught up at least once in between.
    wait_until("the consumer to poll without a topic", || {
        ingest.progress().idle_polls >= 2
    });
    assert!(
        !*ingest.caught_up().borrow(),
        "not ready while the topic does not exist"
    );
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let events = valid_events(100, 5);
    produce(&producer(&brokers), &valid(&events));
    wait_until("every event", || ingest.progress().applied == events.len() as u64);
    wait_caught_up(&ingest);
    assert_index_matches(&h.engine.index, &events);
    assert!(ingest.stop(WAIT));
}

const RULES: &str = "shop: apparel
audiences:
  vip: member_tier >= 4
  buyer: purchased(30d)
banners:
  - when: vip
    banner: vip-gold
  - when: buyer
    banner: thanks
  - banner: default
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_rules_topic_and_the_consumer_and_calls_are_answered_meanwhile() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use vitrine_proto::v1 as pb;

    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let now = vitrine::clock::now_ms();
    let events: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"shop":"apparel","visitor":"v-{i}","action":"view","item":"sku-1","ts":{now}}}"#))
        .chain([
            format!(r#"{{"shop":"apparel","visitor":"v-vip","action":"member","tier":5,"ts":{now}}}"#),
            format!(
                r#"{{"shop":"apparel","visitor":"v-buyer","action":"purchase","item":"sku-1","price":10,"ts":{now}}}"#
            ),
        ])
        .collect();
    produce(&producer(&brokers), &valid(&events));

    // The broker is down at start: the server serves, but is not ready.
    cluster.broker_down(1).unwrap();
    let dir = temp_dir("ready");
    std::fs::write(dir.path().join("rules/apparel.yaml"), RULES).unwrap();
    let config = Config {
        max_in_flight: 64,
        max_queue_wait: None,
        shutdown_grace: Duration::ZERO,
        rules_poll: Duration::from_secs(1),
        kafka: Some(kafka_config(&brokers, "ready")),
        snapshot_interval: None,
        ..Config::local(dir.path())
    };
    let server = vitrine::commands::serve::start(config).await.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut decision = pb::decision_client::DecisionClient::new(channel.clone());
    let mut audiences = pb::audiences_client::AudiencesClient::new(channel);
    let status = |svc: &str| tonic_health::pb::HealthCheckRequest {
        service: svc.to_string(),
    };
    let decide = |visitor: &str| pb::DecideRequest {
        shop: "apparel".into(),
        visitor: visitor.into(),
        ..Default::default()
    };

    // With the broker down nothing can be read: the rules live in the rules
    // topic (the rules directory only seeds it), so the replica answers
    // but is not ready, and knows no shop yet.
    for svc in ["", "vitrine.v1.Decision"] {
        let s = health.check(status(svc)).await.unwrap().into_inner().status;
        assert_eq!(
            s,
            ServingStatus::NotServing as i32,
            "health of `{svc}` before catching up"
        );
    }
    assert!(http_get(server.metrics_addr, "/readyz")
        .await
        .starts_with("HTTP/1.1 503"));
    let e = decision.decide(decide("v-vip")).await.unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::NotFound,
        "no rules before the rules topic is read: {e:?}"
    );

    // The broker is back: the rules topic is read and seeded from the rules
    // directory, the consumer catches up, then the server is ready.
    cluster.broker_up(1).unwrap();
    let start = Instant::now();
    loop {
        let s = health.check(status("")).await.unwrap().into_inner().status;
        if s == ServingStatus::Serving as i32 {
            break;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(http_get(server.metrics_addr, "/readyz")
        .await
        .starts_with("HTTP/1.1 200"));
    let d = decision.decide(decide("v-vip")).await.unwrap().into_inner();
    assert_eq!(d.banner.unwrap().id, "vip-gold");
    let d = decision.decide(decide("v-buyer")).await.unwrap().into_inner();
    assert_eq!(d.banner.unwrap().id, "thanks");
    let size = audiences
        .size(pb::SizeRequest {
            shop: "apparel".into(),
            expression: "visited(1d)".into(),
            now_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((size.size, size.known_visitors), (51, 52));

    // Lag and connectivity are exported (statistics come every second).
    let start = Instant::now();
    loop {
        let metrics = http_get(server.metrics_addr, "/metrics").await;
        // Other tests' consumers may set the same lag series: its presence is the point.
        if metrics.contains("vitrine_kafka_up 1") && metrics.contains("vitrine_ingest_lag_messages{partition=\"0\"}") {
            break;
        }
        assert!(start.elapsed() < WAIT, "lag and up metrics missing from:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::timeout(WAIT, server.shutdown()).await.unwrap().unwrap();
}

#[test]
fn a_resumed_consumer_reports_the_snapshot_offsets_until_it_has_read_further() {
    // A cluster whose only broker is down: the consumer cannot assign
    // anything, and a snapshot taken meanwhile must still record where the
    // loaded snapshot stood (an empty list would make the next start re-read
    // every partition from its beginning).
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("vitrine.behavior", 4, 1).unwrap();
    cluster.broker_down(1).unwrap();
    let h = Harness::new("resume-positions");
    let config = KafkaConfig {
        resume: Some(vec![(0, 5), (2, 7)]),
        ..kafka_config(&cluster.bootstrap_servers(), "resume-positions")
    };
    let ingest = h.start(&config);
    // Two client errors: the consumer has polled, and met the outage, twice.
    wait_until("the consumer to poll with the broker down", || {
        h.metric("vitrine_kafka_errors_total{kind=\"client\"}") >= 2.0
    });
    assert_eq!(ingest.positions(), [(0, 5), (2, 7)]);
    assert!(ingest.stop(Duration::from_secs(10)));
}
