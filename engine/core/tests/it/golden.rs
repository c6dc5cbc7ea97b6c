//! Golden bytes of the snapshot format: a fixed index is encoded and
//! compared with bytes written down from the encoder as it was before the
//! format moved onto `vitrine_core::codec`, and those bytes decode back to an
//! index that encodes to them again. A change here is a change of the disk format.

use vitrine_core::codec::{hex, unhex};
use vitrine_core::{snapshot, Event, Index};

/// Two shops; views, a cart, purchases, a tag set and removed, a tier.
fn golden_index() -> Index {
    let index = Index::new();
    for json in [
        r#"{"shop":"b-shop","visitor":"v1","action":"view","item":"sku-1","category":"shoes","ts":1794000000000}"#,
        r#"{"shop":"b-shop","visitor":"v1","action":"cart","item":"sku-2","ts":1794003600000}"#,
        r#"{"shop":"b-shop","visitor":"v2","action":"purchase","item":"sku-1","price":129.5,"quantity":2,"id":"o-1","ts":1794007200000}"#,
        r#"{"shop":"b-shop","visitor":"v2","action":"tag","tag":"vip","ts":1794007200001}"#,
        r#"{"shop":"b-shop","visitor":"v1","action":"tag","tag":"vip","ts":1794007200002}"#,
        r#"{"shop":"b-shop","visitor":"v1","action":"untag","tag":"vip","ts":1794007200003}"#,
        r#"{"shop":"b-shop","visitor":"v3","action":"member","tier":3,"ts":1794000000000}"#,
        r#"{"shop":"a-shöp","visitor":"w","action":"favorite","item":"x","ts":0}"#,
    ] {
        index.apply(&Event::from_json(json.as_bytes()).unwrap());
    }
    index
}

const SNAPSHOT: &str = "\
    5654524e534e415001000000000000001f030000000000003b8e27e37fec78cf0104000000000000006d657461024d01\
    00000000000007612d7368c3b67001000000000000000000000001000000080200000000000000017700000000000000\
    000000000000000000030000000000000001780007010000000000000101020000000000000000000000000000000000\
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
    00000002b30100000000000006622d73686f700300000001000000010000000200000008090000000000000002763102\
    763202763306000000000000000573686f6573040000000000000003766970160000000000000005736b752d31010094\
    bbb2a101000005736b752d32004a010000000000000102f4d4790001050100000100037129b3a101000000000101ffd4\
    7900000172878967d09ab4629fb51e0000000000003070400100017129b3a1010000010001000000010094bbb2a10100\
    000300000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
    000000000000000000000000000000";

/// The PRICES section (kind 4) the golden index adds after its SHOP
/// sections: `b-shop`, one price, item 0 (`sku-1`) at ts 1794007200000, 129.5.
const PRICES: &str = "04190000000000000006622d73686f700100007129b3a10100000000000000306040";

#[test]
fn snapshot_bytes_are_pinned() {
    // The pinned bytes predate item prices: they load, without prices, and
    // encode back to themselves.
    let old = unhex(SNAPSHOT).unwrap();
    let loaded = snapshot::decode(&old).unwrap();
    assert_eq!(snapshot::encode(&loaded.index, &loaded.meta), old);
    // Today's encoding is the same bytes plus a PRICES section.
    let mut want = old.clone();
    want.extend_from_slice(&unhex(PRICES).unwrap());
    snapshot::reseal(&mut want);
    let bytes = snapshot::encode(&golden_index(), b"meta");
    assert_eq!(hex(&bytes), hex(&want), "golden bytes differ");
    let back = snapshot::decode(&bytes).unwrap();
    assert_eq!(
        back.index.shop("b-shop").and_then(|s| s.item_price("sku-1")),
        Some(129.5)
    );
    assert_eq!(back.meta, b"meta");
    assert_eq!(snapshot::encode(&back.index, &back.meta), bytes);
    assert_eq!(snapshot::peek_meta(&bytes[..60]).unwrap(), b"meta");
}
