//! The event log: behavior events on disk before they are acknowledged.
//!
//! In embedded mode, `Ingest/Track` appends the validated events of a call
//! with [`EventLog::append`] (one record per event, all in one batch, so they
//! become durable together) and answers once [`EventLog::wait`] returns. A
//! snapshot of the in-memory index records the LSN it covers; a restart loads
//! the snapshot and replays the log after that LSN ([`EventLog::open`]), and
//! once a snapshot is durable, [`EventLog::compact`] deletes the segments it
//! covers. Segments, batches, checksums, repair and refusal are those of
//! [`crate::storage::wal`], with kind [`KIND`].
//!
//! # Record format
//!
//! One event per record; integers little-endian, varints LEB128.
//!
//! ```text
//! event := action u8 | flags u8 | ts zigzag-varint | shop str | visitor str
//!          | [item str] | [category str] | [tag str] | [id str]
//!          | [price f64] | [quantity varint] | [tier varint]
//! flags := 1 item | 2 category | 4 tag | 8 id
//!          | 16 price (absent: 0.0) | 32 quantity (absent: 1) | 64 tier (absent: 0)
//! str   := varint length | UTF-8 bytes
//! action:  0 view, 1 cart, 2 favorite, 3 purchase, 4 tag, 5 untag, 6 member
//! ```
//!
//! Absent fields take the defaults [`Event::validate`] gives, so a view costs
//! no bytes for price, quantity or tier. The decoder checks the format (codes,
//! flags, varints, UTF-8, exact length) and borrows every string from the
//! record; it stores events as given and does not re-run the validation.

use std::borrow::Cow;
use std::io;
use std::path::Path;

use vitrine_core::codec::{unzigzag, varint_len, zigzag, Put, Reader};
use vitrine_core::{Action, Event};

pub use crate::storage::wal::{CompactReport, OpenError, Recovery, Stats, WalError, DEFAULT_SEGMENT_BYTES};
use crate::storage::wal::{Failpoints, FailureHook, Options, Wal};

/// The record format of the event log, in its segments' headers.
pub const KIND: [u8; 4] = *b"EVT1";

const ITEM: u8 = 1;
const CATEGORY: u8 = 2;
const TAG: u8 = 4;
const ID: u8 = 8;
const PRICE: u8 = 16;
const QUANTITY: u8 = 32;
const TIER: u8 = 64;

/// Action codes on disk (fixed here, not by the enum's order).
const ACTIONS: [(Action, u8); 7] = [
    (Action::View, 0),
    (Action::Cart, 1),
    (Action::Favorite, 2),
    (Action::Purchase, 3),
    (Action::Tag, 4),
    (Action::Untag, 5),
    (Action::Member, 6),
];

fn flags_of(e: &Event<'_>) -> u8 {
    let mut flags = 0;
    for (field, flag) in [(&e.item, ITEM), (&e.category, CATEGORY), (&e.tag, TAG), (&e.id, ID)] {
        if field.is_some() {
            flags |= flag;
        }
    }
    // By bits, so that -0.0 keeps its sign.
    if e.price.to_bits() != 0 {
        flags |= PRICE;
    }
    if e.quantity != 1 {
        flags |= QUANTITY;
    }
    if e.tier != 0 {
        flags |= TIER;
    }
    flags
}

fn strings<'e, 'a>(e: &'e Event<'a>) -> impl Iterator<Item = &'e str> {
    [
        Some(&e.shop),
        Some(&e.visitor),
        e.item.as_ref(),
        e.category.as_ref(),
        e.tag.as_ref(),
        e.id.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|s| s.as_ref())
}

/// The length of `event`'s record.
pub fn encoded_len(event: &Event<'_>) -> usize {
    let flags = flags_of(event);
    let mut len = 2 + varint_len(zigzag(event.ts));
    len += strings(event)
        .map(|s| varint_len(s.len() as u64) + s.len())
        .sum::<usize>();
    if flags & PRICE != 0 {
        len += 8;
    }
    if flags & QUANTITY != 0 {
        len += varint_len(event.quantity.into());
    }
    if flags & TIER != 0 {
        len += varint_len(event.tier.into());
    }
    len
}

/// Appends `event`'s record to `out`.
pub fn encode(event: &Event<'_>, out: &mut Vec<u8>) {
    let flags = flags_of(event);
    let code = ACTIONS.iter().find(|(a, _)| *a == event.action).map_or(0, |(_, c)| *c);
    out.put_u8(code);
    out.put_u8(flags);
    out.put_varint(zigzag(event.ts));
    for s in strings(event) {
        out.put_str(s);
    }
    if flags & PRICE != 0 {
        out.put_f64(event.price);
    }
    if flags & QUANTITY != 0 {
        out.put_varint(event.quantity.into());
    }
    if flags & TIER != 0 {
        out.put_varint(event.tier.into());
    }
}

/// An optional string field, present when `flag` is set.
fn opt_str<'a>(r: &mut Reader<'a>, flags: u8, flag: u8) -> vitrine_core::codec::Result<Option<Cow<'a, str>>> {
    if flags & flag == 0 {
        return Ok(None);
    }
    r.str().map(|s| Some(Cow::Borrowed(s)))
}

/// Decodes one event record (exactly `record`), borrowing its strings.
/// Never panics: garbage gets an error.
pub fn decode(record: &[u8]) -> Result<Event<'_>, &'static str> {
    read_event(record).map_err(|e| e.what)
}

fn read_event(record: &[u8]) -> vitrine_core::codec::Result<Event<'_>> {
    let mut r = Reader::new(record);
    let code = r.u8()?;
    let action = ACTIONS
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(a, _)| *a)
        .ok_or_else(|| r.error("unknown action code"))?;
    let flags = r.u8()?;
    if flags & 0x80 != 0 {
        return Err(r.error("unknown event flags"));
    }
    let ts = unzigzag(r.varint()?);
    let shop = Cow::Borrowed(r.str()?);
    let visitor = Cow::Borrowed(r.str()?);
    let item = opt_str(&mut r, flags, ITEM)?;
    let category = opt_str(&mut r, flags, CATEGORY)?;
    let tag = opt_str(&mut r, flags, TAG)?;
    let id = opt_str(&mut r, flags, ID)?;
    let price = if flags & PRICE != 0 { r.f64()? } else { 0.0 };
    let quantity = if flags & QUANTITY != 0 { r.varint_u32()? } else { 1 };
    let tier = if flags & TIER != 0 { r.varint_u32()? } else { 0 };
    // One encoding per event: a field present with its default is written
    // by no encoder (see `flags_of`), so it is damage, not an event.
    if (flags & PRICE != 0 && price.to_bits() == 0)
        || (flags & QUANTITY != 0 && quantity == 1)
        || (flags & TIER != 0 && tier == 0)
    {
        return Err(r.error("an event field present with its default value"));
    }
    if !r.is_empty() {
        return Err(r.error("event record longer than its fields"));
    }
    Ok(Event {
        shop,
        visitor,
        action,
        item,
        category,
        price,
        quantity,
        tag,
        tier,
        ts,
        id,
    })
}

/// The durable log of accepted events (see the module docs).
#[derive(Debug)]
pub struct EventLog {
    wal: Wal,
}

impl EventLog {
    /// Opens (or creates) the event log in `dir` and replays, in LSN order,
    /// every event after `after_lsn` (the LSN the loaded snapshot covers; 0
    /// for none) into `apply`. New segments start past `segment_bytes`
    /// ([`DEFAULT_SEGMENT_BYTES`] is the usual choice). See
    /// [`crate::storage::wal::Wal::open`] for the recovery rules, notably
    /// [`OpenError::Gap`] and [`Recovery::restarted_at`].
    pub fn open(
        dir: &Path,
        after_lsn: u64,
        segment_bytes: u64,
        apply: impl FnMut(u64, Event<'_>),
    ) -> Result<(EventLog, Recovery), OpenError> {
        EventLog::open_with(dir, after_lsn, segment_bytes, None, apply)
    }

    /// [`EventLog::open`], with `on_failure` told when the log fails closed.
    pub fn open_with(
        dir: &Path,
        after_lsn: u64,
        segment_bytes: u64,
        on_failure: Option<FailureHook>,
        mut apply: impl FnMut(u64, Event<'_>),
    ) -> Result<(EventLog, Recovery), OpenError> {
        let options = Options {
            segment_bytes,
            start_after: after_lsn,
            on_failure,
            ..Options::new("event-log", KIND)
        };
        let (wal, recovery) = Wal::open(dir, options, |lsn, record| {
            apply(lsn, decode(record)?);
            Ok(())
        })?;
        Ok((EventLog { wal }, recovery))
    }

    /// Queues `events`, one record each, in order and in one batch; returns
    /// the last one's LSN (0 if `events` is empty) without waiting.
    pub fn append(&self, events: &[Event<'_>]) -> Result<u64, WalError> {
        self.wal.append_many(events, encoded_len, encode)
    }

    /// Waits until the event with LSN `lsn` (and every one before it) is on disk.
    pub fn wait(&self, lsn: u64) -> Result<(), WalError> {
        self.wal.wait(lsn)
    }

    /// The LSN up to which every event is on disk.
    pub fn durable_lsn(&self) -> u64 {
        self.wal.durable_lsn()
    }

    /// The first LSN the log still holds.
    pub fn first_lsn(&self) -> u64 {
        self.wal.first_lsn()
    }

    /// Deletes the segments whose events all have an LSN of at most `upto_lsn`
    /// (call it with the LSN of a snapshot once that snapshot is durable).
    pub fn compact(&self, upto_lsn: u64) -> io::Result<CompactReport> {
        self.wal.compact(upto_lsn)
    }

    /// Batches, records and bytes written since open; segments now.
    pub fn stats(&self) -> Stats {
        self.wal.stats()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        self.wal.dir()
    }

    /// The writer's failpoints, for fault-injection tests.
    pub fn failpoints(&self) -> std::sync::Arc<Failpoints> {
        self.wal.failpoints()
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn event(action: Action, mask: u8, n: u64) -> Event<'static> {
        let text = |name: &str| Cow::Owned(format!("{name}-{n}"));
        Event {
            shop: text("shop"),
            visitor: text("visitör"),
            action,
            item: (mask & 1 != 0).then(|| text("item")),
            category: (mask & 2 != 0).then(|| text("cat")),
            price: [0.0, 129.5, -0.0, 1e300][(n % 4) as usize],
            quantity: [1, 2, u32::MAX, 0][(n / 4 % 4) as usize],
            tag: (mask & 4 != 0).then(|| text("tag")),
            tier: [0, 5, u32::MAX][(n / 16 % 3) as usize],
            ts: [1_794_000_900_000, 0, -1, i64::MAX, i64::MIN][(n % 5) as usize],
            id: (mask & 8 != 0).then_some(Cow::Borrowed("")),
        }
    }

    /// Every action, every combination of optional fields, and values at
    /// the edges of every number.
    fn all_events() -> Vec<Event<'static>> {
        let mut out = Vec::new();
        for (action, _) in ACTIONS {
            for mask in 0..16u8 {
                for n in 0..60 {
                    out.push(event(action, mask, n));
                }
            }
        }
        out
    }

    /// The event, owning its strings.
    fn owned(e: Event<'_>) -> Event<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        Event {
            shop: own(e.shop),
            visitor: own(e.visitor),
            item: e.item.map(own),
            category: e.category.map(own),
            tag: e.tag.map(own),
            id: e.id.map(own),
            ..e
        }
    }

    /// Equal, and -0.0 kept apart from 0.0.
    fn same(a: &Event<'_>, b: &Event<'_>) -> bool {
        a == b && a.price.to_bits() == b.price.to_bits()
    }

    #[test]
    fn events_roundtrip_exactly_and_borrow_from_the_record() {
        for e in all_events() {
            let mut buf = Vec::new();
            encode(&e, &mut buf);
            assert_eq!(buf.len(), encoded_len(&e), "{e:?}");
            let back = decode(&buf).unwrap();
            assert!(same(&back, &e), "{e:?} came back as {back:?}");
            assert!(matches!(back.shop, Cow::Borrowed(_)));
            // Every cut is refused, as is any trailing byte.
            for cut in 0..buf.len() {
                assert!(decode(&buf[..cut]).is_err(), "{e:?} cut at {cut}");
            }
            buf.push(0);
            assert!(decode(&buf).is_err());
        }
        // A view costs nothing for its price, quantity and tier.
        let view = Event::from_json(br#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":1}"#).unwrap();
        assert_eq!(encoded_len(&view), 2 + 1 + 2 + 2 + 2);
    }

    #[test]
    fn garbage_gets_a_precise_error() {
        assert_eq!(decode(&[7, 0, 0, 0, 0]), Err("unknown action code"));
        assert_eq!(decode(&[0, 0x80, 0, 0, 0]), Err("unknown event flags"));
        assert_eq!(decode(&[0, 0, 0, 1, 0xff, 0]), Err("a string field is not UTF-8"));
        let overlong = [0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0];
        assert_eq!(decode(&overlong), Err("varint overflows 64 bits"));
        let big_tier = [6, TIER, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x10];
        assert_eq!(decode(&big_tier), Err("a number field overflows 32 bits"));
    }

    /// A field present with its default (the proptest below found quantity
    /// 1 spelled out) is not a second encoding of the same event.
    #[test]
    fn a_field_present_with_its_default_is_refused() {
        let quantity_one = [0, 47, 0, 2, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1];
        assert_eq!(
            decode(&quantity_one).map(|_| ()),
            Err("an event field present with its default value")
        );
    }

    mod fuzz_records {
        use proptest::prelude::*;

        use super::*;
        use vitrine_testkit::{apply, config, mutations};

        /// Bytes shaped like a record, so that many decode: a known action
        /// code, flags, then mostly small bytes (lengths that fit, ASCII).
        fn near_record() -> impl Strategy<Value = Vec<u8>> {
            let codes: Vec<u8> = ACTIONS.iter().map(|(_, c)| *c).collect();
            let byte = prop_oneof![3 => 0u8..6, 1 => any::<u8>()];
            (
                prop::sample::select(codes),
                0u8..0x80,
                proptest::collection::vec(byte, 0..48),
            )
                .prop_map(|(code, flags, tail)| {
                    let mut bytes = vec![code, flags];
                    bytes.extend(tail);
                    bytes
                })
        }

        proptest! {
            #![proptest_config(config(512))]

            /// Garbage gets an error, or an event whose own encoding is no
            /// longer than the garbage and decodes back to it: what a damaged
            /// record decodes to is what it spells, nothing made up. (Not
            /// byte-equal: a flag set for a default value, such as quantity
            /// 1, or a varint with padding, spells the same event.)
            #[test]
            fn fuzz_event_record_arbitrary(bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..96), near_record()]) {
                if let Ok(e) = decode(&bytes) {
                    let mut again = Vec::new();
                    encode(&e, &mut again);
                    prop_assert!(again.len() <= bytes.len(), "{again:?} longer than {bytes:?}");
                    let back = decode(&again).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(format!("{back:?}"), format!("{e:?}"));
                }
            }
            /// Mutations of valid records decode or are refused, never panic;
            /// what decodes re-encodes stably (compared as bytes: a price may now be NaN).
            #[test]
            fn fuzz_event_record_mutated(which in any::<prop::sample::Index>(), muts in mutations()) {
                let events = all_events();
                let e = &events[which.index(events.len())];
                let mut buf = Vec::new();
                encode(e, &mut buf);
                apply(&mut buf, &muts, 0);
                if let Ok(d) = decode(&buf) {
                    let mut again = Vec::new();
                    encode(&d, &mut again);
                    let mut third = Vec::new();
                    encode(&decode(&again).unwrap(), &mut third);
                    prop_assert_eq!(third, again);
                }
            }
        }

        proptest! {
            // Each case writes and reopens a log: fewer cases.
            #![proptest_config(config(64))]

            /// A damaged log file (the header kept, so that the damage
            /// reaches the records) opens with an error, or replays a prefix
            /// of what was appended: in order, each event as it was written,
            /// none skipped, none made up.
            #[test]
            fn fuzz_event_log_damaged_segment(muts in mutations()) {
                let dir = tempfile::tempdir().unwrap();
                let events: Vec<Event<'static>> = all_events().into_iter().step_by(97).take(40).collect();
                let (log, _) = EventLog::open(dir.path(), 0, 1 << 20, |_, _| {}).unwrap();
                for chunk in events.chunks(5) {
                    log.wait(log.append(chunk).unwrap()).unwrap();
                }
                drop(log);
                let segment = dir.path().join(crate::storage::wal::segment_name(1));
                let mut bytes = std::fs::read(&segment).unwrap();
                apply(&mut bytes, &muts, crate::storage::wal::SEGMENT_HEADER_LEN);
                std::fs::write(&segment, &bytes).unwrap();
                let mut seen = Vec::new();
                if EventLog::open(dir.path(), 0, 1 << 20, |lsn, e| seen.push((lsn, owned(e)))).is_ok() {
                    prop_assert!(seen.len() <= events.len());
                    for (i, (lsn, e)) in seen.iter().enumerate() {
                        prop_assert_eq!(*lsn, i as u64 + 1);
                        prop_assert!(same(e, &events[i]), "lsn {}: {:?} was {:?}", lsn, e, events[i]);
                    }
                }
            }
        }
    }

    #[test]
    fn the_log_replays_what_was_appended_after_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let events = all_events();
        let (log, recovery) = EventLog::open(dir.path(), 0, 64 << 10, |_, _| panic!("empty log")).unwrap();
        assert_eq!((recovery.first_lsn, recovery.last_lsn, log.durable_lsn()), (1, 0, 0));
        assert_eq!(log.append(&[]).unwrap(), 0);
        let mut last = 0;
        for chunk in events.chunks(10) {
            last = log.append(chunk).unwrap();
            log.wait(last).unwrap();
        }
        assert_eq!(last, events.len() as u64);
        assert!(log.stats().segments > 2, "{:?}", log.stats());
        drop(log);

        for after in [0, 1, 555, 3_000, last - 1, last] {
            let mut seen = Vec::new();
            let (log, recovery) = EventLog::open(dir.path(), after, 64 << 10, |lsn, e| {
                assert!(same(&e, &events[lsn as usize - 1]), "lsn {lsn}");
                seen.push(lsn);
            })
            .unwrap();
            assert_eq!(seen, (after + 1..=last).collect::<Vec<_>>());
            assert_eq!(recovery.records, last - after);
            assert_eq!(log.durable_lsn(), last);
        }

        // A snapshot past the end (the log lost its tail): the log continues after it.
        let (log, recovery) = EventLog::open(dir.path(), last + 100, 64 << 10, |_, _| panic!("covered")).unwrap();
        assert_eq!(recovery.restarted_at, Some(last + 101));
        assert_eq!(log.append(&events[..1]).unwrap(), last + 101);
        let report = log.compact(last + 100).unwrap();
        assert_eq!(report.first_lsn, last + 101);
        drop(log);
        let mut seen = Vec::new();
        let (_log, _) = EventLog::open(dir.path(), last + 100, 64 << 10, |lsn, _| seen.push(lsn)).unwrap();
        assert_eq!(seen, [last + 101]);
    }

    #[test]
    fn a_log_of_claims_is_not_taken_for_events() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::storage::claims_journal::DurableLedger::open(dir.path()).unwrap());
        let err = EventLog::open(dir.path(), 0, 1 << 20, |_, _| {}).unwrap_err();
        assert!(matches!(err, OpenError::WrongKind { .. }), "{err}");
        assert!(
            err.to_string().ends_with("a log of `CLM1` records, not `EVT1`"),
            "{err}"
        );
    }
}
