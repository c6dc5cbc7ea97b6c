//! Golden bytes of every on-disk record format of the server: a fixed value
//! is encoded and compared with bytes written down from the encoder as it
//! was before the formats moved onto `vitrine_core::codec`, and those bytes
//! decode back to the value. A change here is a change of the disk format.

use std::borrow::Cow;

use dashmap::DashMap;
use vitrine_core::claims::Answer;
use vitrine_core::codec::hex;
use vitrine_core::{Action, ClaimOutcome, Event, Grants};

use crate::storage::claims_journal::{decode_state, encode_state_file, image_of, Image, Record};
use crate::storage::event_log;
use crate::storage::snapshots::{KafkaPosition, Position};
use crate::storage::wal::{segment_header, test_batch};
use vitrine_core::claims::BenefitImage;

fn unhex(s: &str) -> Vec<u8> {
    vitrine_core::codec::unhex(s).unwrap()
}

/// `bytes` are the golden `expected` (the message shows them as hex).
fn assert_golden(bytes: &[u8], expected: &str) {
    assert_eq!(hex(bytes), hex(&unhex(expected)), "golden bytes differ");
}

fn golden_event() -> Event<'static> {
    Event {
        shop: Cow::Borrowed("demo-shöp"),
        visitor: Cow::Borrowed("v-1"),
        action: Action::Purchase,
        item: Some(Cow::Borrowed("sku-9")),
        category: Some(Cow::Borrowed("shoes")),
        price: 129.5,
        quantity: 300,
        tag: None,
        tier: 2,
        ts: -1_794_000_900_000,
        id: Some(Cow::Borrowed("order-7")),
    }
}

const EVENT: &str = "\
    037bbfbecaacb6680a64656d6f2d7368c3b67003762d3105736b752d390573686f6573076f726465722d370000000000\
    306040ac0202";

#[test]
fn event_record_bytes_are_pinned() {
    let e = golden_event();
    let mut buf = Vec::new();
    event_log::encode(&e, &mut buf);
    assert_golden(&buf, EVENT);
    let back = event_log::decode(&buf).unwrap();
    assert_eq!(back, e);
    // A view: no price, quantity or tier bytes, a positive timestamp.
    let view = Event {
        action: Action::View,
        item: None,
        category: None,
        price: 0.0,
        quantity: 1,
        tier: 0,
        ts: 1_794_000_900_000,
        id: None,
        tag: Some(Cow::Borrowed("vip")),
        ..golden_event()
    };
    buf.clear();
    event_log::encode(&view, &mut buf);
    assert_golden(&buf, VIEW);
    assert_eq!(event_log::decode(&buf).unwrap(), view);
}

const VIEW: &str = "0004c0becaacb6680a64656d6f2d7368c3b67003762d3103766970";

fn golden_record() -> Record<'static> {
    Record {
        outcome: ClaimOutcome::CapReached,
        now_ms: 1_794_000_900_123,
        shop: "demo-shöp",
        benefit: "coupon",
        visitor: "v-1",
        claim_id: Some("order-7"),
    }
}

const RECORD: &str = "01011b50c9b2a10100000a0064656d6f2d7368c3b6700600636f75706f6e0300762d3107006f726465722d37";

#[test]
fn claim_record_bytes_are_pinned() {
    let r = golden_record();
    let mut buf = Vec::new();
    r.encode(&mut buf);
    assert_golden(&buf, RECORD);
    assert_eq!(Record::decode(&buf), Ok(r));
    let grant = Record {
        outcome: ClaimOutcome::Granted,
        claim_id: None,
        now_ms: -3,
        ..golden_record()
    };
    buf.clear();
    grant.encode(&mut buf);
    assert_golden(&buf, GRANT);
    assert_eq!(Record::decode(&buf), Ok(grant));
}

const GRANT: &str = "0000fdffffffffffffff0a0064656d6f2d7368c3b6700600636f75706f6e0300762d31";

fn golden_image() -> Image {
    let grants = Grants::from_parts(
        5,
        [
            (Box::<str>::from("v-1"), vec![1_794_000_000_000, 1_794_000_900_000]),
            (Box::<str>::from("v-2"), vec![-7]),
        ],
    )
    .unwrap();
    let answers = vec![
        (
            Box::<str>::from("order-7"),
            Answer {
                outcome: ClaimOutcome::Granted,
                visitor: "v-1".into(),
            },
        ),
        (
            Box::<str>::from("order-8"),
            Answer {
                outcome: ClaimOutcome::OutsideWindow,
                visitor: "v-2".into(),
            },
        ),
    ];
    let empty = BenefitImage {
        grants: Grants::default(),
        answers: Vec::new(),
    };
    vec![
        ("a-shop".into(), vec![("a-benefit".into(), empty)]),
        (
            "demo-shöp".into(),
            vec![("coupon".into(), BenefitImage { grants, answers })],
        ),
    ]
}

const STATE: &str = "\
    5654524e434c4d53010000002a000000000000009b0000000000000098a30fa8020000000600612d73686f7001000000\
    0900612d62656e65666974000000000000000000000000000000000a0064656d6f2d7368c3b670010000000600636f75\
    706f6e0500000000000000020000000300762d31020000000094bbb2a1010000a04fc9b2a10100000300762d32010000\
    00f9ffffffffffffff0200000007006f726465722d37000300762d3107006f726465722d38050300762d32";

#[test]
fn ledger_state_bytes_are_pinned() {
    let bytes = encode_state_file(42, &golden_image());
    assert_golden(&bytes, STATE);
    let shops = DashMap::default();
    assert_eq!(decode_state(&bytes, &shops), Ok(42));
    assert_eq!(encode_state_file(42, &image_of(&shops)), bytes);
}

fn golden_position() -> Position {
    Position {
        created_ms: 1_794_000_000_000,
        events_lsn: 42,
        kafka: Some(KafkaPosition {
            topic: "vitrine.behavior".into(),
            offsets: vec![(0, 10), (-1, -2), (3, i64::MAX)],
        }),
        revisions: vec![("demo-shöp".into(), 3), ("s".into(), u64::MAX)],
        decisions: None,
    }
}

const POSITION: &str = "\
    010094bbb2a10100002a00000000000000011000000076697472696e652e6265686176696f7203000000000000000a00\
    000000000000fffffffffeffffffffffffff03000000ffffffffffffff7f020000000a00000064656d6f2d7368c3b670\
    03000000000000000100000073ffffffffffffffff";

#[test]
fn snapshot_position_bytes_are_pinned() {
    let p = golden_position();
    assert_golden(&p.encode(), POSITION);
    assert_eq!(Position::decode(&unhex(POSITION)).unwrap(), p);
    let none = Position::default();
    assert_golden(&none.encode(), POSITION_NONE);
    assert_eq!(Position::decode(&unhex(POSITION_NONE)).unwrap(), none);
}

const POSITION_NONE: &str = "01000000000000000000000000000000000000000000";

const SEGMENT_HEADER: &str = "5654524e57414c530100000045565431050000000000000004000000000000000000000073c32af2";
const BATCH: &str = "5654524e425443480a00000002000000040000000000000088eed8ee02000000616200000000";

#[test]
fn wal_segment_header_and_batch_bytes_are_pinned() {
    assert_golden(&segment_header(*b"EVT1", 5, 4), SEGMENT_HEADER);
    assert_golden(&test_batch(&[b"ab", b""], 4), BATCH);
}
