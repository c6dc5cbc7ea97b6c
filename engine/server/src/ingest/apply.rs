//! The apply threads: apply events to the index (decoding them first when
//! the poll thread has not); and rejections, shared with the poll thread.
//!
//! The poll thread fills a [`SubBatch`] for the apply thread that owns each
//! message's partition (`partition % threads`), so a partition's messages
//! are applied in offset order by one thread. An [`Ack`] returns each
//! sub-batch, with the next offset of every partition in it, once all of it
//! is applied: only then are those offsets stored.
//!
//! Who decodes depends on the apply threads (issue 17). With one (two cores
//! or fewer), the poll thread decodes and admits each behavior event
//! ([`decode_into`]: `Event::from_json` or `Event::from_proto`, as the
//! message's `content-type` says, borrowing from librdkafka's payload, the shop checks, rejections counted, logged and dead-lettered
//! there) and copies only the decoded event's strings into the sub-batch;
//! the apply thread rebuilds the borrowed [`Event`] and applies it. That
//! splits the per-event work between the two threads, where the apply thread
//! alone was the limit (CPU per event measured by `kafka_ingest throughput`:
//! apply thread 1.23 -> 1.00 us, poll thread 0.31 -> 0.65 us). With more
//! apply threads, they decode in parallel: the poll thread copies key and
//! payload once, and the apply thread decodes (strings borrowed from the
//! sub-batch). Either way, what can be done once per batch is: the shop's
//! rule-set and `--shops` checks run once per run of events of one shop
//! ([`Admission`]), and `vitrine_ingest_events_applied_total` is counted once
//! per action per sub-batch.

use std::borrow::Cow;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use parking_lot::Mutex;
use vitrine_core::{Action, Event, EventError};

use super::dead_letter::{DeadLetter, Source};
use super::encoding::Encoding;
use super::RateLimited;
use crate::config::Stream;
use crate::metrics::decisions::RecordRejected;
use crate::metrics::{KafkaMetrics, Rejected};
use crate::state::Engine;

/// Counting, logging (rate-limited) and dead-lettering rejected messages.
#[derive(Debug)]
pub(super) struct Rejects {
    pub(super) stream: Stream,
    pub(super) engine: Arc<Engine>,
    pub(super) dead_letter: Option<DeadLetter>,
    pub(super) log: Mutex<RateLimited>,
}

impl Rejects {
    /// Logs (rate-limited) a decision record refused; counted by the decision log.
    pub(super) fn log_decision(&self, topic: &str, partition: i32, offset: i64, reason: RecordRejected) {
        if self.log.lock().allow() {
            tracing::warn!(
                topic,
                partition,
                offset,
                reason = reason.as_str(),
                "Kafka: decision record refused, skipped"
            );
        }
    }

    pub(super) fn reject(&self, source: Source<'_>, reason: Rejected, detail: &str) {
        if self.stream == Stream::Decisions {
            // Only the poll thread's rejections come here for this stream.
            let reason = match reason {
                Rejected::Tombstone => RecordRejected::Tombstone,
                _ => RecordRejected::Oversized,
            };
            self.engine.decisions.rejected(reason);
            self.log_decision(source.topic, source.partition, source.offset, reason);
            return;
        }
        self.engine.metrics.reject(reason);
        // The shop label: read (bounded, as the event decoder bounds it)
        // only from a payload that was parsed anyway, never an oversized one.
        let shop = match reason {
            Rejected::Event(_) => Encoding::from_content_type(source.content_type)
                .ok()
                .and_then(|encoding| encoding.shop_of(source.payload?)),
            Rejected::Oversized | Rejected::Tombstone | Rejected::UnknownContentType => None,
        };
        (self.engine.metrics.shops).rejected(shop.as_deref(), |s| self.engine.rules.serving(s));
        if self.log.lock().allow() {
            tracing::warn!(
                topic = source.topic,
                partition = source.partition,
                offset = source.offset,
                reason = reason.as_str(),
                "Kafka: message rejected, skipped: {detail}"
            );
        }
        if let Some(dl) = &self.dead_letter {
            dl.forward(source, reason.as_str(), detail);
        }
    }
}

/// What a slot of a sub-batch holds.
#[derive(Debug, Clone, Copy)]
enum Held {
    /// Already rejected by the poll thread; only its offset counts.
    Rejected,
    /// Another replica group's shop (`--shops`), skipped and counted by the
    /// poll thread; only its offset counts.
    Skipped,
    /// A message to decode here: byte ranges into [`SubBatch::bytes`], and
    /// how the payload is encoded (its `content-type` header kept for a
    /// dead letter).
    Message {
        key: Option<(u32, u32)>,
        payload: (u32, u32),
        content_type: Option<(u32, u32)>,
        encoding: Encoding,
    },
    /// An event the poll thread decoded and admitted: an index into
    /// [`SubBatch::events`].
    Event(u32),
}

/// One message's slot in a sub-batch (not a catalog item).
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) partition: i32,
    pub(super) offset: i64,
    held: Held,
}

/// A decoded event whose strings are ranges of [`SubBatch::text`]: what the
/// poll thread hands over when it decodes (`decode_on_poll`), so the apply
/// thread only rebuilds the borrowed [`Event`] and applies it. Ranges fit a
/// `u32`: a sub-batch holds at most [`super::BATCH`] events of at most six
/// ids of at most [`vitrine_core::MAX_ID_BYTES`] each.
#[derive(Debug, Clone, Copy)]
struct Decoded {
    shop: (u32, u32),
    visitor: (u32, u32),
    item: Option<(u32, u32)>,
    category: Option<(u32, u32)>,
    tag: Option<(u32, u32)>,
    id: Option<(u32, u32)>,
    action: Action,
    price: f64,
    quantity: u32,
    tier: u32,
    ts: i64,
}

/// Messages for one apply thread.
#[derive(Debug, Default)]
pub(super) struct SubBatch {
    bytes: Vec<u8>,
    /// The strings of [`SubBatch::events`], back to back.
    text: String,
    events: Vec<Decoded>,
    slots: Vec<Slot>,
    /// Per partition in the sub-batch: the offset after its last message.
    pub(super) next: Vec<(i32, i64)>,
    /// Server clock when the batch was polled (for event ages).
    pub(super) now_ms: i64,
}

impl SubBatch {
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Empties it for reuse, keeping its allocations.
    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.text.clear();
        self.events.clear();
        self.slots.clear();
        self.next.clear();
    }

    fn span(&mut self, data: &[u8]) -> (u32, u32) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(data);
        (start, self.bytes.len() as u32)
    }

    fn text_span(&mut self, text: &str) -> (u32, u32) {
        let start = self.text.len() as u32;
        self.text.push_str(text);
        (start, self.text.len() as u32)
    }

    fn text_of(&self, (s, e): (u32, u32)) -> Cow<'_, str> {
        Cow::Borrowed(self.text.get(s as usize..e as usize).unwrap_or_default())
    }

    /// Adds a JSON message (no `content-type` header) to decode and apply.
    pub(super) fn push(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, payload: &[u8]) {
        self.push_encoded(partition, offset, key, payload, None, Encoding::Json);
    }

    /// Adds a message to decode as `encoding` and apply; `content_type` is
    /// its header's value, kept for a dead letter.
    pub(super) fn push_encoded(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        content_type: Option<&[u8]>,
        encoding: Encoding,
    ) {
        let key = key.map(|k| self.span(k));
        let payload = self.span(payload);
        let content_type = content_type.map(|c| self.span(c));
        self.push_slot(
            partition,
            offset,
            Held::Message {
                key,
                payload,
                content_type,
                encoding,
            },
        );
    }

    /// Adds an event decoded and admitted by the poll thread: to apply.
    pub(super) fn push_event(&mut self, partition: i32, offset: i64, event: &Event<'_>) {
        let decoded = Decoded {
            shop: self.text_span(&event.shop),
            visitor: self.text_span(&event.visitor),
            item: event.item.as_deref().map(|t| self.text_span(t)),
            category: event.category.as_deref().map(|t| self.text_span(t)),
            tag: event.tag.as_deref().map(|t| self.text_span(t)),
            id: event.id.as_deref().map(|t| self.text_span(t)),
            action: event.action,
            price: event.price,
            quantity: event.quantity,
            tier: event.tier,
            ts: event.ts,
        };
        let index = self.events.len() as u32;
        self.events.push(decoded);
        self.push_slot(partition, offset, Held::Event(index));
    }

    /// Adds a message the poll thread already rejected: its offset counts.
    pub(super) fn push_rejected(&mut self, partition: i32, offset: i64) {
        self.push_slot(partition, offset, Held::Rejected);
    }

    /// Adds an event of another replica group's shop: its offset counts.
    pub(super) fn push_skipped(&mut self, partition: i32, offset: i64) {
        self.push_slot(partition, offset, Held::Skipped);
    }

    fn push_slot(&mut self, partition: i32, offset: i64, held: Held) {
        match self.next.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, next)) => *next = (*next).max(offset + 1),
            None => self.next.push((partition, offset + 1)),
        }
        self.slots.push(Slot {
            partition,
            offset,
            held,
        });
    }

    fn slice(&self, range: Option<(u32, u32)>) -> Option<&[u8]> {
        range.map(|(s, e)| &self.bytes[s as usize..e as usize])
    }

    /// The event a [`SubBatch::push_event`] stored, borrowing its strings.
    fn event(&self, index: u32) -> Option<Event<'_>> {
        let d = self.events.get(index as usize)?;
        Some(Event {
            shop: self.text_of(d.shop),
            visitor: self.text_of(d.visitor),
            action: d.action,
            item: d.item.map(|t| self.text_of(t)),
            category: d.category.map(|t| self.text_of(t)),
            price: d.price,
            quantity: d.quantity,
            tag: d.tag.map(|t| self.text_of(t)),
            tier: d.tier,
            ts: d.ts,
            id: d.id.map(|t| self.text_of(t)),
        })
    }
}

/// The shop checks of events in arrival order: events of one shop come in
/// runs, so the rule-set and `--shops` checks run once per run, not per
/// event. [`Admission::clear`] once per batch, so a rules change is seen
/// within one.
#[derive(Debug, Default)]
pub(super) struct Admission {
    /// The shop of the last event admitted since the last clear.
    admitted: String,
}

impl Admission {
    pub(super) fn clear(&mut self) {
        self.admitted.clear();
    }

    /// The event if its shop is served here; `Ok(None)` for another replica
    /// group's shop (`--shops`: not an error, counted here).
    pub(super) fn admit<'a>(&mut self, engine: &Engine, event: Event<'a>) -> Result<Option<Event<'a>>, EventError> {
        if !self.admitted.is_empty() && *event.shop == *self.admitted {
            return Ok(Some(event));
        }
        if !engine.cluster.shops.serves(&event.shop) {
            crate::metrics::ingest_skipped_other_shop();
            return Ok(None);
        }
        let event = engine.admit(event)?;
        self.admitted.clear();
        self.admitted.push_str(&event.shop);
        Ok(Some(event))
    }
}

/// Decodes (as `encoding`) and admits a behavior message on the poll thread
/// (`decode_on_poll`) into `sub`: an event to apply, or a rejection counted,
/// logged and dead-lettered right here, or a skip; its offset counts either way.
pub(super) fn decode_into(
    sub: &mut SubBatch,
    admission: &mut Admission,
    rejects: &Rejects,
    metrics: &KafkaMetrics,
    source: Source<'_>,
    payload: &[u8],
    encoding: Encoding,
) {
    let (p, offset) = (source.partition, source.offset);
    match encoding
        .decode(payload)
        .and_then(|e| admission.admit(&rejects.engine, e))
    {
        Ok(Some(event)) => {
            // The age at the batch's poll, as the apply thread would record it.
            record_age(metrics, sub.now_ms, &event);
            sub.push_event(p, offset, &event);
        }
        Ok(None) => sub.push_skipped(p, offset),
        Err(e) => {
            rejects.reject(source, Rejected::Event(e.reason), &e.message);
            sub.push_rejected(p, offset);
        }
    }
}

/// Records an applied event's age: the server clock when its batch was
/// polled minus its `ts`.
fn record_age(metrics: &KafkaMetrics, now_ms: i64, event: &Event<'_>) {
    let age_ms = now_ms.saturating_sub(event.ts).max(0);
    metrics.event_age.record(age_ms as f64 / 1000.0);
}

/// A sub-batch applied: returned to the poll thread with its counts.
#[derive(Debug)]
pub(super) struct Ack {
    pub(super) batch: SubBatch,
    pub(super) applied: u64,
    pub(super) rejected: u64,
}

/// An apply thread's loop: until the poll thread hangs up.
pub(super) fn run(
    stream: Stream,
    topic: Arc<str>,
    engine: Arc<Engine>,
    metrics: KafkaMetrics,
    rejects: Arc<Rejects>,
    batches: Receiver<SubBatch>,
    acks: Sender<Ack>,
) {
    let mut admission = Admission::default();
    while let Ok(batch) = batches.recv() {
        let (mut applied, mut rejected) = (0, 0);
        // Events applied by action, counted once per sub-batch.
        let mut by_action = [0u64; 7];
        admission.clear();
        let mut apply = |event: &Event<'_>| {
            engine.apply_uncounted(event);
            by_action[event.action as usize] += 1;
        };
        for slot in &batch.slots {
            let (key, payload, content_type, encoding) = match slot.held {
                Held::Rejected => {
                    rejected += 1;
                    continue;
                }
                Held::Skipped => continue,
                Held::Event(index) => {
                    // Its age was recorded by the poll thread.
                    if let Some(event) = batch.event(index) {
                        apply(&event);
                        applied += 1;
                    }
                    continue;
                }
                Held::Message {
                    key,
                    payload,
                    content_type,
                    encoding,
                } => (
                    key,
                    batch.slice(Some(payload)).unwrap_or_default(),
                    content_type,
                    encoding,
                ),
            };
            if stream == Stream::Decisions {
                match crate::decisions::apply::apply_message(&engine, Some(payload)) {
                    Ok(_) => applied += 1,
                    Err(reason) => {
                        rejected += 1;
                        rejects.log_decision(&topic, slot.partition, slot.offset, reason);
                    }
                }
                continue;
            }
            match encoding.decode(payload).and_then(|e| admission.admit(&engine, e)) {
                Ok(Some(event)) => {
                    apply(&event);
                    record_age(&metrics, batch.now_ms, &event);
                    applied += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    rejected += 1;
                    let source = Source {
                        topic: &topic,
                        partition: slot.partition,
                        offset: slot.offset,
                        key: batch.slice(key),
                        payload: Some(payload),
                        content_type: batch.slice(content_type),
                    };
                    rejects.reject(source, Rejected::Event(e.reason), &e.message);
                }
            }
        }
        for action in Action::ALL {
            engine.count_applied(action, by_action[action as usize]);
        }
        if acks
            .send(Ack {
                batch,
                applied,
                rejected,
            })
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;
    use crate::metrics::Metrics;
    use crate::rules_store::{Origin, RuleStore};

    const NOW: i64 = 1_790_000_000_000;

    fn push(store: &RuleStore, shop: &str) {
        store
            .push(
                &format!("shop: {shop}\nbanners:\n  - banner: default\n"),
                Origin::Push,
                false,
                NOW,
            )
            .unwrap();
    }

    fn series(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Fills `batch` with `payloads` from `first` on, as the poll thread
    /// does: raw messages for the apply thread to decode, or decoded here.
    fn fill(batch: &mut SubBatch, on_poll: Option<(&Rejects, &KafkaMetrics)>, first: i64, payloads: &[String]) {
        let mut admission = Admission::default();
        for (i, payload) in payloads.iter().enumerate() {
            let offset = first + i as i64;
            match on_poll {
                None => batch.push(0, offset, None, payload.as_bytes()),
                Some((rejects, metrics)) => {
                    let source = Source {
                        topic: "t",
                        partition: 0,
                        offset,
                        key: None,
                        payload: Some(payload.as_bytes()),
                        content_type: None,
                    };
                    decode_into(
                        batch,
                        &mut admission,
                        rejects,
                        metrics,
                        source,
                        payload.as_bytes(),
                        Encoding::Json,
                    );
                }
            }
        }
    }

    /// The per-sub-batch shortcuts change nothing: within one sub-batch,
    /// events of a served shop around events of a shop without rules are
    /// applied and the others rejected as `unknown_shop`, and the applied
    /// counter counts each action exactly; a shop whose rules arrive later
    /// is served from the next sub-batch on. The same whether the apply
    /// thread decodes or the poll thread does (`decode_on_poll`, issue 17),
    /// to the byte: both indexes encode to the same snapshot.
    #[test]
    fn a_sub_batch_mixing_shops_is_admitted_event_by_event_and_counted_per_action() {
        let on_apply = mixing_shops(false);
        let on_poll = mixing_shops(true);
        assert_eq!(
            vitrine_core::snapshot::encode(&on_apply.index, b""),
            vitrine_core::snapshot::encode(&on_poll.index, b""),
            "the index differs when the poll thread decodes"
        );
    }

    fn mixing_shops(decode_on_poll: bool) -> Arc<Engine> {
        let dir = tempfile::TempDir::new().unwrap();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let store = RuleStore::new(&dir.path().join("rules"), &dir.path().join("data"));
        push(&store, "a");
        push(&store, "c");
        let (engine, metrics) = metrics::with_local_recorder(&recorder, || {
            (Arc::new(Engine::new(store, Metrics::new())), KafkaMetrics::new())
        });
        let rejects = Arc::new(Rejects {
            stream: Stream::Behavior,
            engine: engine.clone(),
            dead_letter: None,
            log: Mutex::new(RateLimited::new(20)),
        });
        let (batch_tx, batch_rx) = mpsc::channel();
        let (ack_tx, ack_rx) = mpsc::channel();
        let poll_metrics = metrics.clone();
        let thread = {
            let (engine, rejects) = (engine.clone(), rejects.clone());
            std::thread::spawn(move || run(Stream::Behavior, "t".into(), engine, metrics, rejects, batch_rx, ack_tx))
        };
        let event = |shop: &str, visitor: &str, rest: &str| {
            format!(r#"{{"shop":"{shop}","visitor":"{visitor}","ts":{NOW},{rest}}}"#)
        };
        let view = r#""action":"view","item":"i-1""#;
        let mut batch = SubBatch::default();
        let poller = decode_on_poll.then_some((&*rejects, &poll_metrics));
        let payloads = [
            event("a", "v-1", view),
            event("b", "v-2", view),
            event("a", "v-1", r#""action":"cart","item":"i-1""#),
            event("a", "v-3", view),
            event("c", "v-4", r#""action":"tag","tag":"t""#),
            event("b", "v-5", r#""action":"purchase","item":"i-2","price":5"#),
            event("a", "v-1", r#""action":"purchase","item":"i-2","price":5"#),
            "not json".to_string(),
            event("b", "v-6", view),
            // Every field, escapes (decoded into owned strings) and an id.
            event(
                "a",
                "v-\\u0039",
                r#""action":"purchase","item":"i-\"3","category":"c\/1","price":2.5,"quantity":3,"id":"o-\u00e9""#,
            ),
            event("a", "v-9", r#""action":"member","tier":4"#),
            event("a", "v-9", r#""action":"untag","tag":"t""#),
            event(
                "a",
                "v-9",
                r#""action":"favorite","item":"i-4","category":"c-2","price":1.25"#,
            ),
        ];
        fill(&mut batch, poller, 0, &payloads);
        batch_tx.send(batch).unwrap();
        let ack = ack_rx.recv().unwrap();
        assert_eq!((ack.applied, ack.rejected), (9, 4));

        let mut batch = ack.batch;
        batch.clear();
        push(&engine.rules, "b");
        fill(
            &mut batch,
            poller,
            13,
            &[event("b", "v-7", view), event("a", "v-8", view)],
        );
        batch_tx.send(batch).unwrap();
        let ack = ack_rx.recv().unwrap();
        assert_eq!((ack.applied, ack.rejected), (2, 0));
        drop(batch_tx);
        thread.join().unwrap();

        let text = handle.render();
        let applied = |action: &str| {
            series(
                &text,
                &format!("vitrine_ingest_events_applied_total{{action=\"{action}\"}}"),
            )
        };
        assert_eq!(
            [applied("view"), applied("cart"), applied("purchase"), applied("tag")],
            [4.0, 1.0, 2.0, 1.0]
        );
        assert_eq!(
            [applied("member"), applied("untag"), applied("favorite")],
            [1.0, 1.0, 1.0]
        );
        // One age per event applied, whichever thread decoded it.
        assert_eq!(series(&text, "vitrine_ingest_event_age_seconds_count"), 11.0);
        let rejected = |reason: &str| series(&text, &format!("vitrine_ingest_rejected_total{{reason=\"{reason}\"}}"));
        assert_eq!([rejected("unknown_shop"), rejected("invalid_json")], [3.0, 1.0]);
        for (shop, visitors) in [("a", 4), ("b", 1), ("c", 1)] {
            let known = engine.index.shop(shop).map_or(0, |s| s.visitor_count());
            assert_eq!(known, visitors, "{shop}");
        }
        let a = engine.index.shop("a").unwrap();
        assert!(a.visitor_id("v-9").is_some(), "the escaped visitor id decoded");
        engine
    }
}
