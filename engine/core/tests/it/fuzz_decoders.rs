//! Random-input tests of the core decoders a file or a message reaches:
//! the snapshot decoder ([`snapshot::decode`], [`snapshot::peek_meta`]) and
//! the JSON event decoder ([`Event::from_json`]). Arbitrary bytes and
//! mutations of valid encodings (bytes flipped, cut, extended; snapshots
//! also re-sealed with valid checksums, so that the mutation reaches the
//! body decoder) must get a value or an error: never a panic, an abort or
//! an allocation sized by a length field rather than by the input.
//!
//! `cargo test -p vitrine-core --test it fuzz_` runs a short round; a long
//! one: `PROPTEST_CASES=200000 cargo test --release -p vitrine-core --test it fuzz_`.

use proptest::prelude::*;
use vitrine_core::eval::decide::Slot;
use vitrine_core::time::Zone;
use vitrine_core::{snapshot, Event, Exposure, Index};
use vitrine_testkit::{apply, config, mutations};

const EVENTS: [&str; 6] = [
    r#"{"shop":"s","visitor":"v1","action":"view","item":"sku-1","category":"tops","ts":1794000900000}"#,
    r#"{"shop":"s","visitor":"v1","action":"purchase","item":"sku-2","price":12.5,"quantity":2,"id":"o1","ts":1794000960000}"#,
    r#"{"shop":"s","visitor":"v2","action":"cart","item":"sku-1","ts":1794001000000}"#,
    r#"{"shop":"s","visitor":"v2","action":"tag","tag":"vip","ts":1794001000001}"#,
    r#"{"shop":"s","visitor":"v3","action":"member","tier":4,"ts":1794001000002}"#,
    r#"{"shop":"t","visitor":"v1","action":"favorite","item":"sku-9","ts":1794001000003}"#,
];

/// A valid snapshot of a small index over two shops.
fn valid_snapshot() -> Vec<u8> {
    let index = Index::new();
    for json in EVENTS {
        index.apply(&Event::from_json(json.as_bytes()).unwrap());
    }
    snapshot::encode(&index, b"meta")
}

/// A valid snapshot with every optional section: a shop on a non-UTC
/// clock (ZONE), item prices (PRICES) and offers and hold-outs (EXPOSURES).
fn valid_snapshot_with_sections() -> Vec<u8> {
    let index = Index::new();
    let zone = || Zone::get("Asia/Kathmandu").unwrap();
    for json in EVENTS {
        index.apply_in(&Event::from_json(json.as_bytes()).unwrap(), zone);
    }
    let shop = index.shop_or_create_in("s", zone);
    for (i, visitor) in ["v1", "v2", "v3"].into_iter().enumerate() {
        let held: &[(Slot, &str)] = if i == 1 { &[(Slot::Benefit, "c10")] } else { &[] };
        shop.apply_exposure(&Exposure {
            ts_ms: 1_794_000_000_000 + i as i64 * 3_600_000,
            visitor,
            banner: Some("gold"),
            benefit: (i != 1).then_some("c10"),
            held_out: held,
        });
    }
    snapshot::encode(&index, b"meta")
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn fuzz_snapshot_sections_mutated_valid(mutations in mutations(), seal in any::<bool>()) {
        let mut bytes = valid_snapshot_with_sections();
        apply(&mut bytes, &mutations, 0);
        if seal {
            snapshot::reseal(&mut bytes);
        }
        let _ = snapshot::peek_meta(&bytes);
        if let Ok(decoded) = snapshot::decode(&bytes) {
            let again = snapshot::encode(&decoded.index, &decoded.meta);
            prop_assert!(snapshot::decode(&again).is_ok());
        }
    }

    #[test]
    fn fuzz_snapshot_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), seal in any::<bool>()) {
        let mut bytes = bytes;
        if seal {
            // A valid header over garbage: the body decoder sees it all.
            let mut framed = valid_snapshot()[..snapshot::HEADER_LEN].to_vec();
            framed.extend_from_slice(&bytes);
            snapshot::reseal(&mut framed);
            bytes = framed;
        }
        let _ = snapshot::peek_meta(&bytes);
        let _ = snapshot::decode(&bytes);
    }

    #[test]
    fn fuzz_snapshot_mutated_valid(mutations in mutations(), seal in any::<bool>()) {
        let mut bytes = valid_snapshot();
        apply(&mut bytes, &mutations, 0);
        if seal {
            snapshot::reseal(&mut bytes);
        }
        let _ = snapshot::peek_meta(&bytes);
        if let Ok(decoded) = snapshot::decode(&bytes) {
            // What decodes encodes again, and that decodes too.
            let again = snapshot::encode(&decoded.index, &decoded.meta);
            prop_assert!(snapshot::decode(&again).is_ok());
        }
    }

    #[test]
    fn fuzz_event_json_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Event::from_json(&bytes);
    }

    #[test]
    fn fuzz_event_json_mutated_valid(which in 0..EVENTS.len(), mutations in mutations()) {
        let mut bytes = EVENTS[which].as_bytes().to_vec();
        apply(&mut bytes, &mutations, 0);
        let _ = Event::from_json(&bytes);
    }

    #[test]
    fn fuzz_event_json_deep_nesting(depth in 1usize..20_000, open in prop_oneof![Just('['), Just('{')]) {
        // Nesting inside a field: the JSON parser's own depth limit answers.
        let mut text = String::from(r#"{"shop":"s","visitor":"v","action":"view","item":"#);
        for _ in 0..depth {
            text.push(open);
            if open == '{' {
                text.push_str(r#""k":"#);
            }
        }
        text.push('1');
        let _ = Event::from_json(text.as_bytes());
    }
}

#[test]
fn fuzz_inputs_start_valid() {
    let bytes = valid_snapshot();
    let mut resealed = bytes.clone();
    snapshot::reseal(&mut resealed);
    assert_eq!(resealed, bytes, "reseal of a valid snapshot changes nothing");
    let decoded = snapshot::decode(&bytes).unwrap();
    assert_eq!(decoded.meta, b"meta");
    let sections = snapshot::decode(&valid_snapshot_with_sections()).unwrap();
    let again = snapshot::encode(&sections.index, &sections.meta);
    assert_eq!(
        again,
        valid_snapshot_with_sections(),
        "every section survives a round trip"
    );
    for json in EVENTS {
        Event::from_json(json.as_bytes()).unwrap();
    }
}
