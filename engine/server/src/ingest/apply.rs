//! The apply threads: decode (borrowing from the batch's bytes), validate and
//! apply events to the index; and rejections, shared with the poll thread.
//!
//! The poll thread copies each message's key and payload into a
//! [`SubBatch`] (one memcpy; the decoded event then borrows from it) for the
//! apply thread that owns the message's partition (`partition % threads`),
//! so a partition's messages are applied in offset order by one thread. An
//! [`Ack`] returns each sub-batch, with the next offset of every partition in
//! it, once all of it is applied: only then are those offsets stored.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use parking_lot::Mutex;
use vitrine_core::Event;

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
    while let Ok(batch) = batches.recv() {
        let (mut applied, mut rejected) = (0, 0);
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
            let decoded = Event::from_json(payload);
            if decoded.as_ref().is_ok_and(|e| !engine.cluster.shops.serves(&e.shop)) {
                // Another replica group's shop (`--shops`): not an error.
                crate::metrics::ingest_skipped_other_shop();
                continue;
            }
            match decoded.and_then(|e| engine.admit(e)) {
                Ok(event) => {
                    engine.apply(&event);
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
