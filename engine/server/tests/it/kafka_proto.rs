//! Binary behavior events on Kafka (issue 17): JSON and protobuf messages
//! mixed in one partition, each decoded as its `content-type` header says,
//! against librdkafka's in-process mock cluster. Every wait is bounded and
//! waits for a signal (readiness, counters), never a sleep.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};
use vitrine::config::KafkaConfig;
use vitrine::ingest::{MessageEncoding, CONTENT_TYPE_HEADER, PROTOBUF_CONTENT_TYPE, REASON_HEADER};
use vitrine_core::Event;
use vitrine_proto::v1 as pb;

use crate::kafka::{reader_from_start, Harness, DEAD, NOW, TOPIC};
use crate::support::{temp_dir, wait_until, WAIT};

/// One message: payload and `content-type` header (`None`: no header).
struct Msg {
    payload: Vec<u8>,
    content_type: Option<&'static str>,
    /// The JSON twin of an event that must be applied; `None` for one that
    /// must be rejected.
    applied_as: Option<String>,
    /// The reason it is rejected with.
    rejected: Option<&'static str>,
}

fn json(event: &str) -> String {
    format!(r#"{{"shop":"apparel","ts":{NOW},{event}}}"#)
}

fn proto(event: pb::Event) -> Vec<u8> {
    pb::Event {
        shop: "apparel".into(),
        ts: Some(NOW),
        ..event
    }
    .encode_to_vec()
}

fn messages() -> Vec<Msg> {
    let ok = |payload: Vec<u8>, content_type, twin: &str| Msg {
        payload,
        content_type,
        applied_as: Some(json(twin)),
        rejected: None,
    };
    let bad = |payload: Vec<u8>, content_type, reason| Msg {
        payload,
        content_type,
        applied_as: None,
        rejected: Some(reason),
    };
    let view = r#""visitor":"v-1","action":"view","item":"sku-1","category":"tops""#;
    let purchase = r#""visitor":"v-2","action":"purchase","item":"sku-2","price":19.5,"quantity":3,"id":"o-1""#;
    let mut broken = proto(pb::Event {
        visitor: "v-3".into(),
        action: "view".into(),
        item: "sku-3".into(),
        ..pb::Event::default()
    });
    broken.truncate(broken.len() - 2);
    vec![
        // JSON without a header, with `application/json` and with parameters.
        ok(json(view).into_bytes(), None, view),
        ok(
            json(r#""visitor":"v-1","action":"cart","item":"sku-1""#).into_bytes(),
            Some("application/json"),
            r#""visitor":"v-1","action":"cart","item":"sku-1""#,
        ),
        // Protobuf, under both names, every kind of field.
        ok(
            proto(pb::Event {
                visitor: "v-2".into(),
                action: "purchase".into(),
                item: "sku-2".into(),
                price: Some(19.5),
                quantity: Some(3),
                id: "o-1".into(),
                ..pb::Event::default()
            }),
            Some(PROTOBUF_CONTENT_TYPE),
            purchase,
        ),
        ok(
            proto(pb::Event {
                visitor: "v-2".into(),
                action: "member".into(),
                tier: Some(4),
                ..pb::Event::default()
            }),
            Some("application/protobuf; proto=vitrine.v1.Event"),
            r#""visitor":"v-2","action":"member","tier":4"#,
        ),
        ok(
            proto(pb::Event {
                visitor: "v-4".into(),
                action: "tag".into(),
                tag: "vip".into(),
                ..pb::Event::default()
            }),
            Some(PROTOBUF_CONTENT_TYPE),
            r#""visitor":"v-4","action":"tag","tag":"vip""#,
        ),
        bad(broken, Some(PROTOBUF_CONTENT_TYPE), "invalid_proto"),
        // `shop` (field 1) as a varint.
        bad(vec![0x08, 0x01], Some(PROTOBUF_CONTENT_TYPE), "wrong_type"),
        // A valid protobuf event failing validation: the JSON path's reason.
        bad(
            proto(pb::Event {
                visitor: "v-5".into(),
                action: "buy".into(),
                item: "sku-5".into(),
                ..pb::Event::default()
            }),
            Some(PROTOBUF_CONTENT_TYPE),
            "unknown_action",
        ),
        // A JSON payload labelled protobuf, and the other way round: no guessing.
        bad(json(view).into_bytes(), Some(PROTOBUF_CONTENT_TYPE), "invalid_proto"),
        bad(
            proto(pb::Event {
                visitor: "v-6".into(),
                action: "view".into(),
                item: "sku-6".into(),
                ..pb::Event::default()
            }),
            None,
            "invalid_json",
        ),
        bad(json(view).into_bytes(), Some("text/plain"), "unknown_content_type"),
        ok(
            json(r#""visitor":"v-7","action":"favorite","item":"sku-7""#).into_bytes(),
            None,
            r#""visitor":"v-7","action":"favorite","item":"sku-7""#,
        ),
    ]
}

fn produce(brokers: &str, messages: &[Msg]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "1")
        .create()
        .unwrap();
    for m in messages {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(TOPIC).key("k").partition(0).payload(&m.payload);
        if let Some(ct) = m.content_type {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: CONTENT_TYPE_HEADER,
                value: Some(ct),
            }));
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(WAIT).unwrap();
}

/// The index the applied events must build: their JSON twins applied directly.
fn reference(messages: &[Msg]) -> Vec<u8> {
    let h = Harness::new("proto-reference");
    for twin in messages.iter().filter_map(|m| m.applied_as.as_ref()) {
        h.engine.apply(&Event::from_json(twin.as_bytes()).unwrap());
    }
    vitrine_core::snapshot::encode(&h.engine.index, b"")
}

/// The dead letters: (reason, content-type header) of each.
fn dead_letters(brokers: &str, count: usize) -> Vec<(String, Option<String>)> {
    let dlq = reader_from_start(brokers, DEAD, "dlq-reader");
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < count && start.elapsed() < WAIT {
        if let Some(Ok(m)) = dlq.poll(Duration::from_millis(100)) {
            let header = |key: &str| {
                m.headers()?
                    .iter()
                    .find(|h| h.key == key)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            got.push((header(REASON_HEADER).unwrap(), header(CONTENT_TYPE_HEADER)));
        }
    }
    got
}

/// With `--kafka-encoding header`, JSON and protobuf events in one
/// partition, each read as its header says, whichever thread decodes (one apply thread: the poll thread
/// decodes; two: the apply threads do): the valid ones build exactly the
/// index their JSON twins build; a broken protobuf event, a protobuf event
/// failing validation, a payload under the wrong header and an unknown
/// `content-type` are each rejected with their reason, counted and
/// dead-lettered with their original `content-type`.
#[test]
fn json_and_protobuf_events_mix_in_one_partition_and_bad_ones_are_rejected_precisely() {
    let messages = messages();
    let want_index = reference(&messages);
    let mut want_rejected: BTreeMap<&str, usize> = BTreeMap::new();
    for reason in messages.iter().filter_map(|m| m.rejected) {
        *want_rejected.entry(reason).or_default() += 1;
    }
    let applied = messages.iter().filter(|m| m.applied_as.is_some()).count() as u64;
    let rejected = messages.len() as u64 - applied;
    for apply_threads in [1, 2] {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic(TOPIC, 1, 1).unwrap();
        cluster.create_topic(DEAD, 1, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        produce(&brokers, &messages);
        let h = Harness::new("proto-mixed");
        let config = KafkaConfig {
            group: "proto".into(),
            apply_threads,
            dead_letter_topic: Some(DEAD.to_string()),
            encoding: MessageEncoding::Header,
            ..KafkaConfig::new(&brokers)
        };
        let ingest = h.start(&config);
        let rx = ingest.caught_up();
        wait_until("the consumer to catch up", || *rx.borrow());
        let progress = ingest.progress();
        assert_eq!(
            (progress.messages, progress.applied, progress.rejected),
            (messages.len() as u64, applied, rejected),
            "apply_threads {apply_threads}"
        );
        for (reason, n) in &want_rejected {
            assert_eq!(h.rejected(reason), *n as f64, "{reason}, apply_threads {apply_threads}");
        }
        assert_eq!(
            vitrine_core::snapshot::encode(&h.engine.index, b""),
            want_index,
            "the index differs from the JSON twins', apply_threads {apply_threads}"
        );
        assert!(ingest.stop(WAIT));
        let mut got = dead_letters(&brokers, rejected as usize);
        got.sort();
        let mut want: Vec<(String, Option<String>)> = messages
            .iter()
            .filter_map(|m| Some((m.rejected?.to_string(), m.content_type.map(str::to_string))))
            .collect();
        want.sort();
        assert_eq!(
            got, want,
            "dead letters (reason, content-type), apply_threads {apply_threads}"
        );
    }
}

/// `--kafka-encoding json` (the default) and `proto` read no header: every
/// message is what the operator said, whatever its `content-type`, so a
/// mislabelled or mixed topic is rejected message by message, never
/// guessed; decoded on the poll thread and on the apply threads alike.
#[test]
fn the_topic_wide_encodings_read_no_header() {
    let view = r#""visitor":"v-1","action":"view","item":"sku-1""#;
    let proto_view = || {
        proto(pb::Event {
            visitor: "v-1".into(),
            action: "view".into(),
            item: "sku-1".into(),
            ..pb::Event::default()
        })
    };
    let messages = [
        (proto_view(), Some(PROTOBUF_CONTENT_TYPE)),
        (proto_view(), None),
        (json(view).into_bytes(), Some("application/json")),
        (json(view).into_bytes(), Some("text/plain")),
        (json(view).into_bytes(), None),
    ];
    for (mode, applied, reason) in [
        (MessageEncoding::Json, 3, "invalid_json"),
        (MessageEncoding::Protobuf, 2, "invalid_proto"),
    ] {
        for apply_threads in [1, 2] {
            let cluster = MockCluster::new(1).unwrap();
            cluster.create_topic(TOPIC, 1, 1).unwrap();
            let brokers = cluster.bootstrap_servers();
            let msgs: Vec<Msg> = messages
                .iter()
                .map(|(payload, content_type)| Msg {
                    payload: payload.clone(),
                    content_type: *content_type,
                    applied_as: None,
                    rejected: None,
                })
                .collect();
            produce(&brokers, &msgs);
            let h = Harness::new("proto-modes");
            let config = KafkaConfig {
                group: "modes".into(),
                apply_threads,
                encoding: mode,
                ..KafkaConfig::new(&brokers)
            };
            let ingest = h.start(&config);
            let rx = ingest.caught_up();
            wait_until("the consumer to catch up", || *rx.borrow());
            let p = ingest.progress();
            let what = format!("{mode:?}, apply_threads {apply_threads}");
            assert_eq!((p.messages, p.applied, p.rejected), (5, applied, 5 - applied), "{what}");
            assert_eq!(h.rejected(reason), (5 - applied) as f64, "{what}");
            assert_eq!(h.rejected("unknown_content_type"), 0.0, "{what}");
            assert!(ingest.stop(WAIT));
        }
    }
}

/// `vitrine kafka produce --encoding proto` sends each JSON line as its
/// protobuf twin, keyed by visitor, with the header the consumer reads; a
/// line that is not a valid event cannot be encoded and stops it (exit 2).
#[test]
fn kafka_produce_sends_protobuf_events_with_their_content_type() {
    use vitrine::commands::produce;
    use vitrine::ingest::Encoding;

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = temp_dir("proto-produce");
    let lines = [
        json(r#""visitor":"v-1","action":"view","item":"sku-1","category":"tops""#),
        json(r#""visitor":"v-2","action":"purchase","item":"sku-2","price":19.5,"quantity":3,"id":"o-1""#),
        json(r#""visitor":"v-2","action":"member","tier":0"#),
    ];
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n\n").unwrap();
    let mut out = Vec::new();
    let code = produce::run(&brokers, TOPIC, &[], Encoding::Protobuf, Some(&file), &mut out);
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("produced 3 messages to {TOPIC}\n")
    );

    let reader = reader_from_start(&brokers, TOPIC, "produce-reader");
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < lines.len() && start.elapsed() < WAIT {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
            let content_type = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == CONTENT_TYPE_HEADER)?
                    .value
                    .map(<[u8]>::to_vec)
            });
            assert_eq!(content_type.as_deref(), Some(PROTOBUF_CONTENT_TYPE.as_bytes()));
            let event = Event::from_proto(m.payload().unwrap()).unwrap();
            assert_eq!(m.key(), Some(event.visitor.as_bytes()));
            got.push(event.to_json());
        }
    }
    let want: Vec<String> = lines
        .iter()
        .map(|l| Event::from_json(l.as_bytes()).unwrap().to_json())
        .collect();
    assert_eq!(got, want);

    std::fs::write(&file, format!("{}\nnot json\n", lines[0])).unwrap();
    let code = produce::run(&brokers, TOPIC, &[], Encoding::Protobuf, Some(&file), &mut Vec::new());
    assert_eq!(code, std::process::ExitCode::from(2));
}
