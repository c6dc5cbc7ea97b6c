//! `vitrine kafka produce`: JSON lines to a topic, keyed by visitor, as JSON
//! or as protobuf `vitrine.v1.Event`s (`--encoding`; a test and demo aid;
//! producers in production are the storefronts' own).

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::client::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use vitrine_core::Event;

use crate::ingest::{Encoding, CONTENT_TYPE_HEADER, PROTOBUF_CONTENT_TYPE};

/// Counts deliveries that failed.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Messages the broker never acknowledged.
    pub failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("vitrine kafka produce: delivery failed: {e}");
            }
        }
    }
}

/// A producer tuned like the storefront producers the freshness figures
/// assume: `linger.ms` 5, every message acknowledged by the leader; then
/// `options` (`--kafka-option`).
pub fn producer(
    brokers: &str,
    options: &[(String, String)],
) -> Result<BaseProducer<Deliveries>, rdkafka::error::KafkaError> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers)
        .set("client.id", "vitrine-produce")
        .set("linger.ms", "5")
        .set("acks", "1")
        .set("message.timeout.ms", "30000");
    crate::kafka_options::apply(&mut client, options);
    client.create_with_context(Deliveries::default())
}

/// Sends `payload` (a JSON event) keyed by its visitor (unkeyed when it is
/// not a valid event, so malformed test input goes through too), waiting
/// while the local queue is full.
pub fn send(producer: &BaseProducer<Deliveries>, topic: &str, payload: &[u8]) -> Result<(), String> {
    send_as(producer, topic, payload, Encoding::Json)
}

/// [`send`] as `encoding`: with [`Encoding::Protobuf`], the event's
/// `to_proto` with header `content-type: application/x-protobuf`; a line
/// that is not a valid event cannot be encoded so, and is refused.
pub fn send_as(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    payload: &[u8],
    encoding: Encoding,
) -> Result<(), String> {
    let event = Event::from_json(payload);
    let binary;
    let mut record: BaseRecord<'_, [u8], [u8]> = match encoding {
        Encoding::Json => BaseRecord::to(topic).payload(payload),
        Encoding::Protobuf => {
            let event = event
                .as_ref()
                .map_err(|e| format!("--encoding proto: not a valid event, cannot encode it: {e}"))?;
            binary = event.to_proto();
            BaseRecord::to(topic)
                .payload(&binary[..])
                .headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: CONTENT_TYPE_HEADER,
                    value: Some(PROTOBUF_CONTENT_TYPE),
                }))
        }
    };
    if let Ok(event) = &event {
        record = record.key(event.visitor.as_bytes());
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e.to_string()),
        }
    }
}

/// Runs the subcommand; exit 1 on any failed delivery, 2 on bad input.
pub fn run(
    brokers: &str,
    topic: &str,
    options: &[(String, String)],
    encoding: Encoding,
    file: Option<&Path>,
    out: &mut impl Write,
) -> ExitCode {
    let input: Box<dyn BufRead> = match file {
        Some(path) => match std::fs::File::open(path) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                eprintln!("vitrine kafka produce: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => Box::new(std::io::stdin().lock()),
    };
    let producer = match producer(brokers, options) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vitrine kafka produce: {e}");
            return ExitCode::from(2);
        }
    };
    let mut sent = 0u64;
    for (number, line) in input.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("vitrine kafka produce: reading input: {e}");
                return ExitCode::from(2);
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        if encoding == Encoding::Protobuf {
            if let Err(e) = Event::from_json(line.as_bytes()) {
                eprintln!(
                    "vitrine kafka produce: line {}: --encoding proto: not a valid event, cannot encode it: {e}",
                    number + 1
                );
                return ExitCode::from(2);
            }
        }
        if let Err(e) = send_as(&producer, topic, line.as_bytes(), encoding) {
            eprintln!("vitrine kafka produce: {e}");
            return ExitCode::FAILURE;
        }
        sent += 1;
        producer.poll(Duration::ZERO);
    }
    if let Err(e) = producer.flush(Duration::from_secs(30)) {
        eprintln!(
            "vitrine kafka produce: {e}: {} of {sent} not delivered",
            producer.in_flight_count()
        );
        return ExitCode::FAILURE;
    }
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("vitrine kafka produce: {failed} of {sent} messages not delivered");
        return ExitCode::FAILURE;
    }
    let _ = writeln!(out, "produced {sent} messages to {topic}");
    ExitCode::SUCCESS
}
