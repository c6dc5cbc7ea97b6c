//! The apply threads: decode (borrowing from the batch's bytes), validate and
//! apply events to the index; and rejections, shared with the poll thread.
//!
//! The poll thread copies each message's key and payload into a
//! [`SubBatch`] (one memcpy; the decoded event then borrows from it) for the
//! apply thread that owns the message's partition (`partition % threads`),
//! so a partition's messages are applied in offset order by one thread. An
//! [`Ack`] returns each sub-batch, with the next offset of every partition in
//! it, once all of it is applied: only then are those offsets stored.
//!
//! Per event, an apply thread only decodes (`Event::from_json`'s scanner,
//! strings borrowed from the sub-batch) and applies; what can be done once
//! per sub-batch is: the shop's rule-set and `--shops` checks run once per
//! run of events of one shop, and `vitrine_ingest_events_applied_total` is
//! counted once per action per sub-batch.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use parking_lot::Mutex;
use vitrine_core::{Action, Event};

use super::dead_letter::{DeadLetter, Source};
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
            Rejected::Event(_) => source.payload.and_then(crate::metrics::labels::shop_of),
            Rejected::Oversized | Rejected::Tombstone => None,
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

/// One message's slot in a sub-batch (not a catalog item): byte ranges
/// into [`SubBatch::bytes`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) partition: i32,
    pub(super) offset: i64,
    key: Option<(u32, u32)>,
    /// `None`: already rejected by the poll thread; only its offset counts.
    payload: Option<(u32, u32)>,
}

/// Messages for one apply thread.
#[derive(Debug, Default)]
pub(super) struct SubBatch {
    bytes: Vec<u8>,
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
        self.slots.clear();
        self.next.clear();
    }

    fn span(&mut self, data: &[u8]) -> (u32, u32) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(data);
        (start, self.bytes.len() as u32)
    }

    /// Adds a message to decode and apply.
    pub(super) fn push(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, payload: &[u8]) {
        let key = key.map(|k| self.span(k));
        let payload = Some(self.span(payload));
        self.push_slot(Slot {
            partition,
            offset,
            key,
            payload,
        });
    }

    /// Adds a message the poll thread already rejected: its offset counts.
    pub(super) fn push_rejected(&mut self, partition: i32, offset: i64) {
        self.push_slot(Slot {
            partition,
            offset,
            key: None,
            payload: None,
        });
    }

    fn push_slot(&mut self, slot: Slot) {
        match self.next.iter_mut().find(|(p, _)| *p == slot.partition) {
            Some((_, next)) => *next = (*next).max(slot.offset + 1),
            None => self.next.push((slot.partition, slot.offset + 1)),
        }
        self.slots.push(slot);
    }

    fn slice(&self, range: Option<(u32, u32)>) -> Option<&[u8]> {
        range.map(|(s, e)| &self.bytes[s as usize..e as usize])
    }
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
    // The shop of the last event admitted in this sub-batch: events of one
    // shop come in runs, so the rule-set and `--shops` checks run once per
    // run, not per event. Cleared per sub-batch, so a rules change is seen
    // within one.
    let mut admitted = String::new();
    while let Ok(batch) = batches.recv() {
        let (mut applied, mut rejected) = (0, 0);
        // Events applied by action, counted once per sub-batch.
        let mut by_action = [0u64; 7];
        admitted.clear();
        for slot in &batch.slots {
            let Some(payload) = batch.slice(slot.payload) else {
                rejected += 1;
                continue;
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
            let decoded = match Event::from_json(payload) {
                Ok(e) if !admitted.is_empty() && *e.shop == *admitted => Ok(e),
                Ok(e) if !engine.cluster.shops.serves(&e.shop) => {
                    // Another replica group's shop (`--shops`): not an error.
                    crate::metrics::ingest_skipped_other_shop();
                    continue;
                }
                Ok(e) => engine.admit(e).inspect(|e| {
                    admitted.clear();
                    admitted.push_str(&e.shop);
                }),
                Err(e) => Err(e),
            };
            match decoded {
                Ok(event) => {
                    engine.apply_uncounted(&event);
                    by_action[event.action as usize] += 1;
                    let age_ms = batch.now_ms.saturating_sub(event.ts).max(0);
                    metrics.event_age.record(age_ms as f64 / 1000.0);
                    applied += 1;
                }
                Err(e) => {
                    rejected += 1;
                    let source = Source {
                        topic: &topic,
                        partition: slot.partition,
                        offset: slot.offset,
                        key: batch.slice(slot.key),
                        payload: Some(payload),
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

    /// The per-sub-batch shortcuts change nothing: within one sub-batch,
    /// events of a served shop around events of a shop without rules are
    /// applied and the others rejected as `unknown_shop`, and the applied
    /// counter counts each action exactly; a shop whose rules arrive later
    /// is served from the next sub-batch on.
    #[test]
    fn a_sub_batch_mixing_shops_is_admitted_event_by_event_and_counted_per_action() {
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
        let thread = {
            let (engine, rejects) = (engine.clone(), rejects.clone());
            std::thread::spawn(move || run(Stream::Behavior, "t".into(), engine, metrics, rejects, batch_rx, ack_tx))
        };
        let event = |shop: &str, visitor: &str, rest: &str| {
            format!(r#"{{"shop":"{shop}","visitor":"{visitor}","ts":{NOW},{rest}}}"#)
        };
        let view = r#""action":"view","item":"i-1""#;
        let mut batch = SubBatch::default();
        for (offset, payload) in [
            event("a", "v-1", view),
            event("b", "v-2", view),
            event("a", "v-1", r#""action":"cart","item":"i-1""#),
            event("a", "v-3", view),
            event("c", "v-4", r#""action":"tag","tag":"t""#),
            event("b", "v-5", r#""action":"purchase","item":"i-2","price":5"#),
            event("a", "v-1", r#""action":"purchase","item":"i-2","price":5"#),
            "not json".to_string(),
            event("b", "v-6", view),
        ]
        .iter()
        .enumerate()
        {
            batch.push(0, offset as i64, None, payload.as_bytes());
        }
        batch_tx.send(batch).unwrap();
        let ack = ack_rx.recv().unwrap();
        assert_eq!((ack.applied, ack.rejected), (5, 4));

        let mut batch = ack.batch;
        batch.clear();
        push(&engine.rules, "b");
        batch.push(0, 9, None, event("b", "v-7", view).as_bytes());
        batch.push(0, 10, None, event("a", "v-8", view).as_bytes());
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
            [4.0, 1.0, 1.0, 1.0]
        );
        let rejected = |reason: &str| series(&text, &format!("vitrine_ingest_rejected_total{{reason=\"{reason}\"}}"));
        assert_eq!([rejected("unknown_shop"), rejected("invalid_json")], [3.0, 1.0]);
        for (shop, visitors) in [("a", 3), ("b", 1), ("c", 1)] {
            let known = engine.index.shop(shop).map_or(0, |s| s.visitor_count());
            assert_eq!(known, visitors, "{shop}");
        }
    }
}
