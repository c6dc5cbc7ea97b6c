//! The binary way in: [`Event::from_proto`](super::Event::from_proto)
//! decodes one protobuf-encoded `vitrine.v1.Event`
//! (`proto/vitrine/v1/vitrine.proto`), for producers that can send it
//! (`docs/events.md`, "Binary events").
//!
//! The key design choice: this file only reads the wire format into the
//! same [`Fields`] the JSON decoders and `Ingest/Track` fill, and
//! [`Event::validate`](super::Event::validate) decides, so every limit,
//! reason and message is the JSON path's. The mapping is Track's: an empty
//! string is an absent field, and the proto3 `optional` fields (`price`,
//! `quantity`, `tier`, `ts`) are absent only when not on the wire.
//!
//! One pass over the bytes, hand-written over the wire format (varints,
//! length-delimited strings, `fixed64` for `double price`): strings borrow
//! from the message (UTF-8 checked), nothing is allocated unless an event
//! is rejected (its message). Proto3 rules: a field repeated on the wire is
//! the last one read; unknown fields of wire types 0, 1, 2 and 5 are
//! skipped. Hostile input costs linear work and never a panic: a truncated
//! or overlong varint (more than 10 bytes, or a 10th byte above 1, as prost
//! refuses it), a tag above `u32`, field number 0, wire types 6 and 7, a
//! length past the end, a string that is not UTF-8 and groups (wire types 3
//! and 4, deprecated and never part of `Event`) are `invalid_proto`; a known
//! field with another wire type than its own is `wrong_type`.

use std::borrow::Cow;

use super::{EventError, Field, Fields, RejectReason};

/// Wire types (<https://protobuf.dev/programming-guides/encoding/>).
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// The longest varint: 10 bytes hold 64 bits.
const MAX_VARINT_BYTES: usize = 10;

/// The fields of a protobuf `Event`, or why the bytes are not one.
pub(super) fn fields(bytes: &[u8]) -> Result<Fields<'_>, EventError> {
    let mut r = Reader { bytes, pos: 0 };
    let mut f = Fields::default();
    while r.pos < bytes.len() {
        let at = r.pos;
        let key = r.varint()?;
        let Ok(key) = u32::try_from(key) else {
            return Err(r.broken(at, format_args!("tag {key} is larger than 32 bits")));
        };
        let wire = (key & 7) as u8;
        let number = key >> 3;
        if wire > FIXED32 {
            return Err(r.broken(at, format_args!("wire type {wire} does not exist")));
        }
        if number == 0 {
            return Err(r.broken(at, format_args!("field number 0 does not exist")));
        }
        if wire == START_GROUP || wire == END_GROUP {
            return Err(r.broken(
                at,
                format_args!("field {number} is a group (wire type {wire}); groups are not accepted"),
            ));
        }
        let field = Field::of(number);
        if let Some(field) = field {
            if field.wire() != wire {
                return Err(EventError::new(
                    RejectReason::WrongType,
                    format!(
                        "`{}` (field {number}) must have wire type {} ({}), not {wire}",
                        field.name(),
                        field.wire(),
                        wire_name(field.wire())
                    ),
                ));
            }
        }
        match wire {
            VARINT => {
                let value = r.varint()?;
                // int64: the two's complement of the 64 bits.
                let value = Some(value as i64);
                match field {
                    Some(Field::Quantity) => f.quantity = value,
                    Some(Field::Tier) => f.tier = value,
                    Some(Field::Ts) => f.ts = value,
                    _ => {}
                }
            }
            FIXED64 => {
                let value = r.take(8, at)?;
                if let (Some(Field::Price), Ok(bits)) = (field, <[u8; 8]>::try_from(value)) {
                    f.price = Some(f64::from_le_bytes(bits));
                }
            }
            FIXED32 => {
                r.take(4, at)?;
            }
            _ => {
                let len_at = r.pos;
                let len = r.varint()?;
                let left = bytes.len() - r.pos;
                let len = match usize::try_from(len) {
                    Ok(len) if len <= left => len,
                    _ => {
                        return Err(r.broken(
                            len_at,
                            format_args!("field {number} is {len} bytes long, past the end ({left} bytes left)"),
                        ))
                    }
                };
                let value = r.take(len, at)?;
                let Some(field) = field else { continue };
                let Ok(text) = std::str::from_utf8(value) else {
                    return Err(r.broken(at, format_args!("`{}` (field {number}) is not UTF-8", field.name())));
                };
                // Track's mapping: an empty string is an absent field.
                let text = (!text.is_empty()).then_some(Cow::Borrowed(text));
                match field {
                    Field::Shop => f.shop = text,
                    Field::Visitor => f.visitor = text,
                    Field::Action => f.action = text,
                    Field::Item => f.item = text,
                    Field::Category => f.category = text,
                    Field::Tag => f.tag = text,
                    Field::Id => f.id = text,
                    Field::Price | Field::Quantity | Field::Tier | Field::Ts => {}
                }
            }
        }
    }
    Ok(f)
}

/// Appends the protobuf encoding of `e` to `out`: fields in number order,
/// the ones the action uses, as [`Event::to_json`](super::Event::to_json)
/// writes them (`from_proto` reads it back to the same event).
pub(super) fn encode(e: &super::Event<'_>, out: &mut Vec<u8>) {
    use super::Action;
    let string = |out: &mut Vec<u8>, number: u32, s: Option<&str>| {
        if let Some(s) = s.filter(|s| !s.is_empty()) {
            put_varint(out, u64::from(number << 3 | u32::from(LEN)));
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
    };
    let int = |out: &mut Vec<u8>, number: u32, v: i64| {
        put_varint(out, u64::from(number << 3 | u32::from(VARINT)));
        put_varint(out, v as u64);
    };
    string(out, 1, Some(&e.shop));
    string(out, 2, Some(&e.visitor));
    string(out, 3, Some(e.action.as_str()));
    string(out, 4, e.item.as_deref());
    string(out, 5, e.category.as_deref());
    let price = match e.action {
        Action::Purchase => true,
        Action::View | Action::Cart | Action::Favorite => e.price.to_bits() != 0,
        Action::Tag | Action::Untag | Action::Member => false,
    };
    if price {
        put_varint(out, u64::from(6 << 3 | u32::from(FIXED64)));
        out.extend_from_slice(&e.price.to_le_bytes());
    }
    if e.action == Action::Purchase {
        int(out, 7, i64::from(e.quantity));
    }
    string(out, 8, e.tag.as_deref());
    if e.action == Action::Member {
        int(out, 9, i64::from(e.tier));
    }
    int(out, 10, e.ts);
    string(out, 11, e.id.as_deref());
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The `shop` of a protobuf event, if the bytes are one and name it: for
/// the rejection metrics' shop label, only ever compared with the served
/// shops.
pub(super) fn shop_of(bytes: &[u8]) -> Option<&str> {
    match fields(bytes).ok()?.shop? {
        Cow::Borrowed(shop) => Some(shop),
        Cow::Owned(_) => None,
    }
}

fn wire_name(wire: u8) -> &'static str {
    match wire {
        VARINT => "varint",
        FIXED64 => "fixed64",
        LEN => "length-delimited",
        _ => "fixed32",
    }
}

impl Field {
    /// The field numbered `number` in `vitrine.v1.Event`.
    fn of(number: u32) -> Option<Field> {
        Some(match number {
            1 => Field::Shop,
            2 => Field::Visitor,
            3 => Field::Action,
            4 => Field::Item,
            5 => Field::Category,
            6 => Field::Price,
            7 => Field::Quantity,
            8 => Field::Tag,
            9 => Field::Tier,
            10 => Field::Ts,
            11 => Field::Id,
            _ => return None,
        })
    }

    /// The wire type of the field's proto type.
    fn wire(self) -> u8 {
        match self {
            Field::Price => FIXED64,
            Field::Quantity | Field::Tier | Field::Ts => VARINT,
            _ => LEN,
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// An `invalid_proto` error about the bytes from `at` on.
    fn broken(&self, at: usize, what: std::fmt::Arguments<'_>) -> EventError {
        EventError::new(
            RejectReason::InvalidProto,
            format!("not a protobuf Event: {what} (at byte {at} of {})", self.bytes.len()),
        )
    }

    /// A base-128 varint, as prost reads it: at most 10 bytes, the 10th
    /// holding only the 64th bit.
    #[inline]
    fn varint(&mut self) -> Result<u64, EventError> {
        // Tags and string lengths: one byte.
        if let Some(&b) = self.bytes.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.long_varint()
    }

    #[inline(never)]
    fn long_varint(&mut self) -> Result<u64, EventError> {
        let at = self.pos;
        let mut value = 0u64;
        for i in 0..MAX_VARINT_BYTES {
            let Some(&b) = self.bytes.get(at + i) else {
                return Err(self.broken(at, format_args!("truncated varint")));
            };
            if i == MAX_VARINT_BYTES - 1 && b > 1 {
                return Err(self.broken(at, format_args!("varint larger than 64 bits")));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.pos = at + i + 1;
                return Ok(value);
            }
        }
        Err(self.broken(at, format_args!("varint longer than {MAX_VARINT_BYTES} bytes")))
    }

    /// The next `n` bytes of the field whose tag is at `at`.
    #[inline]
    fn take(&mut self, n: usize, at: usize) -> Result<&'a [u8], EventError> {
        match self.bytes.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(value) => {
                self.pos += n;
                Ok(value)
            }
            None => Err(self.broken(at, format_args!("truncated field"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;
    use vitrine_proto::v1 as pb;

    use super::super::{Event, MAX_ID_BYTES, MAX_TS};
    use super::*;

    /// Track's mapping of a decoded message (`api/grpc.rs`): what
    /// `from_proto` must read from the bytes prost decoded it from.
    fn track_fields(e: pb::Event) -> Fields<'static> {
        let text = |s: String| (!s.is_empty()).then_some(Cow::Owned(s));
        Fields {
            shop: text(e.shop),
            visitor: text(e.visitor),
            action: text(e.action),
            item: text(e.item),
            category: text(e.category),
            price: e.price,
            quantity: e.quantity,
            tag: text(e.tag),
            tier: e.tier,
            ts: e.ts,
            id: text(e.id),
        }
    }

    /// The JSON event with the same fields (`None` when a price is not
    /// finite: JSON has no such number).
    fn json_of(e: &pb::Event) -> Option<String> {
        let mut o = serde_json::Map::new();
        for (key, value) in [
            ("shop", &e.shop),
            ("visitor", &e.visitor),
            ("action", &e.action),
            ("item", &e.item),
            ("category", &e.category),
            ("tag", &e.tag),
            ("id", &e.id),
        ] {
            if !value.is_empty() {
                o.insert(key.into(), value.as_str().into());
            }
        }
        if let Some(price) = e.price {
            o.insert("price".into(), serde_json::Number::from_f64(price)?.into());
        }
        for (key, value) in [("quantity", e.quantity), ("tier", e.tier), ("ts", e.ts)] {
            if let Some(v) = value {
                o.insert(key.into(), v.into());
            }
        }
        Some(serde_json::Value::Object(o).to_string())
    }

    /// `from_proto` against prost (the wire format) and the JSON path
    /// (validation): prost decodes the bytes, then Track's mapping and the
    /// equivalent JSON must give the same event or the same error, price
    /// bits included; where prost refuses the bytes, so does `from_proto`,
    /// as `invalid_proto` or `wrong_type`. Groups are the one difference:
    /// prost skips one in an unknown field, `from_proto` refuses it.
    fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
        let ours = Event::from_proto(bytes);
        match pb::Event::decode(bytes) {
            Ok(message) => {
                if let Err(e) = &ours {
                    if e.reason == RejectReason::InvalidProto && e.message.contains("groups are not accepted") {
                        return Ok(());
                    }
                }
                let json = json_of(&message);
                // serde_json reads some 17-digit prices 1 ulp off: the JSON
                // twin carries the price the JSON path reads.
                let mut json_twin = message.clone();
                json_twin.price = json_twin
                    .price
                    .map(|p| serde_json::from_str(&serde_json::to_string(&p).unwrap_or_default()).unwrap_or(p));
                let json_track = Event::validate(track_fields(json_twin)).map(|e| into_owned(&e));
                let track = Event::validate(track_fields(message)).map(|e| into_owned(&e));
                let ours = ours.map(|e| into_owned(&e));
                prop_assert_eq!(&ours, &track, "{:?}", bytes);
                if let Ok(e) = &ours {
                    if let Ok(t) = &track {
                        prop_assert_eq!(e.price.to_bits(), t.price.to_bits());
                    }
                }
                if let Some(json) = json {
                    let from_json = Event::from_json(json.as_bytes()).map(|e| into_owned(&e));
                    prop_assert_eq!(&json_track, &from_json, "{}", json);
                    prop_assert_eq!(ours.is_ok(), from_json.is_ok(), "{}", json);
                }
            }
            Err(prost_error) => {
                let reason = ours.as_ref().map_err(|e| e.reason);
                prop_assert!(
                    matches!(reason, Err(RejectReason::InvalidProto | RejectReason::WrongType)),
                    "prost refused {:?} ({}), from_proto said {:?}",
                    bytes,
                    prost_error,
                    ours
                );
            }
        }
        Ok(())
    }

    fn into_owned(e: &Event<'_>) -> Event<'static> {
        let own = |t: &Cow<'_, str>| Cow::Owned(t.to_string());
        Event {
            shop: own(&e.shop),
            visitor: own(&e.visitor),
            item: e.item.as_ref().map(own),
            category: e.category.as_ref().map(own),
            tag: e.tag.as_ref().map(own),
            id: e.id.as_ref().map(own),
            ..Event::new("", "", e.action, e.ts)
        }
        .with_numbers(e)
    }

    impl Event<'static> {
        fn with_numbers(mut self, e: &Event<'_>) -> Event<'static> {
            self.price = e.price;
            self.quantity = e.quantity;
            self.tier = e.tier;
            self
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => Just(String::new()),
            3 => Just("s".to_string()),
            2 => "[a-z0-9-]{1,6}",
            1 => Just("q\"uote\\back\nline\u{1F600}".to_string()),
            1 => Just("x".repeat(MAX_ID_BYTES)),
            1 => Just("x".repeat(MAX_ID_BYTES + 1)),
        ]
    }

    fn action() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::sample::select(vec!["view", "cart", "favorite", "purchase", "tag", "untag", "member"])
                .prop_map(str::to_string),
            1 => Just(String::new()),
            1 => Just("buy".to_string()),
        ]
    }

    fn int() -> impl Strategy<Value = Option<i64>> {
        prop::option::of(prop_oneof![
            prop::sample::select(vec![
                0,
                1,
                -1,
                2,
                i64::from(u32::MAX),
                i64::from(u32::MAX) + 1,
                MAX_TS,
                MAX_TS + 1,
                1_794_000_000_000,
                i64::MIN,
                i64::MAX,
            ]),
            any::<i64>(),
        ])
    }

    fn price() -> impl Strategy<Value = Option<f64>> {
        prop::option::of(prop_oneof![
            prop::sample::select(vec![
                0.0,
                -0.0,
                12.5,
                -1.0,
                1e308,
                f64::MAX,
                f64::MIN_POSITIVE,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ]),
            any::<f64>(),
        ])
    }

    prop_compose! {
        fn event()(
            shop in text(), visitor in text(), action in action(), item in text(),
            category in text(), price in price(), quantity in int(), tag in text(),
            tier in int(), ts in int(), id in text(),
        ) -> pb::Event {
            pb::Event { shop, visitor, action, item, category, price, quantity, tag, tier, ts, id }
        }
    }

    /// An unknown field: its number, and a value of wire type 0, 1, 2 or 5.
    fn unknown() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![12u32..40, Just(536_870_911u32)],
            0u8..4,
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..20),
        )
            .prop_map(|(number, kind, n, data)| {
                let mut out = Vec::new();
                let wire = [VARINT, FIXED64, LEN, FIXED32][kind as usize];
                prost::encoding::encode_varint(u64::from(number << 3 | u32::from(wire)), &mut out);
                match wire {
                    VARINT => prost::encoding::encode_varint(n, &mut out),
                    FIXED64 => out.extend_from_slice(&n.to_le_bytes()),
                    LEN => {
                        prost::encoding::encode_varint(data.len() as u64, &mut out);
                        out.extend_from_slice(&data);
                    }
                    _ => out.extend_from_slice(&(n as u32).to_le_bytes()),
                }
                out
            })
    }

    /// A known field written by hand, as other encoders may: strings
    /// empty or not (proto3 encoders leave out empty ones; this one does
    /// not), varints of any value.
    fn known() -> impl Strategy<Value = Vec<u8>> {
        (
            1u32..12,
            any::<u64>(),
            prop_oneof![Just(""), Just("s"), Just("view"), Just("tag")],
        )
            .prop_map(|(number, n, text)| {
                let mut out = Vec::new();
                let wire = Field::of(number).map_or(LEN, Field::wire);
                prost::encoding::encode_varint(u64::from(number << 3 | u32::from(wire)), &mut out);
                match wire {
                    VARINT => prost::encoding::encode_varint(n, &mut out),
                    FIXED64 => out.extend_from_slice(&n.to_le_bytes()),
                    _ => {
                        prost::encoding::encode_varint(text.len() as u64, &mut out);
                        out.extend_from_slice(text.as_bytes());
                    }
                }
                out
            })
    }

    /// One or two events back to back (protobuf's merge: a field on the
    /// wire twice is the last one) with unknown fields before, between and
    /// after.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        (
            event(),
            prop::option::of(event()),
            prop::collection::vec(prop_oneof![unknown(), known()], 0..3),
        )
            .prop_map(|(a, b, unknown)| {
                let mut out = Vec::new();
                let mut unknown = unknown.into_iter();
                out.extend(unknown.next().unwrap_or_default());
                a.encode(&mut out).unwrap_or_default();
                out.extend(unknown.next().unwrap_or_default());
                if let Some(b) = b {
                    b.encode(&mut out).unwrap_or_default();
                }
                out.extend(unknown.next().unwrap_or_default());
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Generated events (valid and not, merged, with unknown fields):
        /// the same event or error as prost + Track and as the JSON path.
        #[test]
        fn from_proto_agrees_with_prost_and_from_json(bytes in message()) {
            agree(&bytes)?;
        }

        /// The same, then a byte changed, inserted or cut.
        #[test]
        fn mutated_messages_agree_with_prost(
            bytes in message(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            how in 0u8..3,
        ) {
            let mut bytes = bytes;
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                match how {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => bytes.truncate(i),
                }
            }
            agree(&bytes)?;
        }

        /// Random bytes: never a panic, and prost's verdict.
        #[test]
        fn random_bytes_agree_with_prost(bytes in prop::collection::vec(any::<u8>(), 0..48)) {
            agree(&bytes)?;
        }

        /// Every prefix of a valid message.
        #[test]
        fn every_prefix_agrees_with_prost(bytes in message()) {
            for n in 0..=bytes.len() {
                agree(&bytes[..n])?;
            }
        }
    }

    fn purchase() -> pb::Event {
        pb::Event {
            shop: "demo-apparel".into(),
            visitor: "v-1".into(),
            action: "purchase".into(),
            item: "sku-101".into(),
            category: "tops".into(),
            price: Some(129.0),
            quantity: Some(2),
            ts: Some(1_794_000_900_000),
            id: "order-7".into(),
            ..pb::Event::default()
        }
    }

    /// Strings borrow from the message: no copy, no allocation.
    #[test]
    fn decodes_without_copying_strings() {
        let bytes = purchase().encode_to_vec();
        let e = Event::from_proto(&bytes).unwrap();
        assert_eq!(e.amount(), 258.0);
        let range = bytes.as_ptr_range();
        for s in [
            Some(&e.shop),
            Some(&e.visitor),
            e.item.as_ref(),
            e.category.as_ref(),
            e.id.as_ref(),
        ] {
            let s = s.unwrap();
            assert!(matches!(s, Cow::Borrowed(_)));
            assert!(range.contains(&s.as_ptr()), "{s} was copied");
        }
        assert_eq!(Event::proto_shop(&bytes), Some("demo-apparel"));
    }

    fn reject(bytes: &[u8]) -> (RejectReason, String) {
        let e = Event::from_proto(bytes).unwrap_err();
        (e.reason, e.message)
    }

    /// The precise errors of a broken wire format.
    #[test]
    fn broken_wire_formats_have_precise_errors() {
        let bad = |m: &str| (RejectReason::InvalidProto, format!("not a protobuf Event: {m}"));
        // Field 10 (ts), varint, cut after a continuation byte.
        assert_eq!(reject(&[0x50, 0x80]), bad("truncated varint (at byte 1 of 2)"));
        assert_eq!(
            reject(&[0x50, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            bad("varint larger than 64 bits (at byte 1 of 11)")
        );
        assert_eq!(
            reject(&[0x50, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00]),
            bad("varint larger than 64 bits (at byte 1 of 12)")
        );
        // Field 1 (shop) says 5 bytes, 2 follow.
        assert_eq!(
            reject(&[0x0a, 0x05, b'a', b'b']),
            bad("field 1 is 5 bytes long, past the end (2 bytes left) (at byte 1 of 4)")
        );
        // A length above u32 (2^35).
        assert_eq!(
            reject(&[0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, b'a']),
            bad("field 1 is 34359738368 bytes long, past the end (1 bytes left) (at byte 1 of 8)")
        );
        // Field 6 (price) is fixed64: 3 of its 8 bytes.
        assert_eq!(reject(&[0x31, 1, 2, 3]), bad("truncated field (at byte 0 of 4)"));
        assert_eq!(
            reject(&[0x0a, 0x01, 0xff]),
            bad("`shop` (field 1) is not UTF-8 (at byte 0 of 3)")
        );
        assert_eq!(reject(&[0x07]), bad("wire type 7 does not exist (at byte 0 of 1)"));
        assert_eq!(
            reject(&[0x00, 0x00]),
            bad("field number 0 does not exist (at byte 0 of 2)")
        );
        assert_eq!(
            reject(&[0xff, 0xff, 0xff, 0xff, 0x7f]),
            bad("tag 34359738367 is larger than 32 bits (at byte 0 of 5)")
        );
        // Field 20 as a group (start, end): prost would skip it; refused.
        assert_eq!(
            reject(&[0xa3, 0x01, 0xa4, 0x01]),
            bad("field 20 is a group (wire type 3); groups are not accepted (at byte 0 of 4)")
        );
        assert_eq!(
            reject(&[0xa4, 0x01]),
            bad("field 20 is a group (wire type 4); groups are not accepted (at byte 0 of 2)")
        );
        // Known fields with the wrong wire type.
        assert_eq!(
            reject(&[0x08, 0x01]),
            (
                RejectReason::WrongType,
                "`shop` (field 1) must have wire type 2 (length-delimited), not 0".into()
            )
        );
        assert_eq!(
            reject(&[0x52, 0x01, b'1']),
            (
                RejectReason::WrongType,
                "`ts` (field 10) must have wire type 0 (varint), not 2".into()
            )
        );
        assert_eq!(
            reject(&[0x35, 0, 0, 0, 0]),
            (
                RejectReason::WrongType,
                "`price` (field 6) must have wire type 1 (fixed64), not 5".into()
            )
        );
        // The empty message is a valid one with nothing in it.
        assert_eq!(reject(&[]), (RejectReason::MissingField, "missing field `shop`".into()));
    }

    /// Validation is the JSON path's, message for message.
    #[test]
    fn validation_errors_are_the_json_paths() {
        let mut e = purchase();
        e.quantity = Some(0);
        assert_eq!(
            reject(&e.encode_to_vec()),
            (
                RejectReason::InvalidValue,
                "`quantity` must be between 1 and 4294967295".into()
            )
        );
        let mut e = purchase();
        e.price = None;
        assert_eq!(
            reject(&e.encode_to_vec()),
            (RejectReason::MissingField, "missing field `price`".into())
        );
        let mut e = purchase();
        e.ts = Some(-1);
        assert_eq!(
            reject(&e.encode_to_vec()),
            (RejectReason::InvalidValue, "`ts` must be >= 0".into())
        );
        let mut e = purchase();
        e.action = "buy".into();
        assert_eq!(reject(&e.encode_to_vec()).0, RejectReason::UnknownAction);
        let mut e = purchase();
        e.visitor = "x".repeat(MAX_ID_BYTES + 1);
        assert_eq!(
            reject(&e.encode_to_vec()),
            (
                RejectReason::TooLong,
                "`visitor` is 513 bytes long; at most 512 are accepted".into()
            )
        );
        // An empty string is absent, as on Track.
        let mut e = purchase();
        e.item = String::new();
        assert_eq!(
            reject(&e.encode_to_vec()),
            (RejectReason::MissingField, "missing field `item`".into())
        );
    }

    /// `to_proto` writes what `from_proto` reads back to the same event,
    /// and what prost reads as its JSON twin's fields, for every action.
    #[test]
    fn to_proto_round_trips_through_from_proto_and_prost() {
        let events = super::super::tests::round_trip_events();
        for event in events {
            let bytes = event.to_proto();
            assert_eq!(Event::from_proto(&bytes), Ok(event.clone()), "{bytes:?}");
            let message = pb::Event::decode(&bytes[..]).unwrap();
            let json = event.to_json();
            assert_eq!(
                Event::validate(track_fields(message)),
                Event::from_json(json.as_bytes()),
                "{json}"
            );
        }
    }

    /// A field twice on the wire: the last one counts, an unknown field
    /// between them is skipped.
    #[test]
    fn the_last_of_a_repeated_field_wins() {
        let mut bytes = purchase().encode_to_vec();
        bytes.extend([0x50, 0x01]); // ts = 1
        bytes.extend([0xf8, 0x01, 0x05]); // field 31, varint 5
        bytes.extend([0x0a, 0x01, b's']); // shop = "s"
        let e = Event::from_proto(&bytes).unwrap();
        assert_eq!((e.ts, &*e.shop), (1, "s"));
    }
}
