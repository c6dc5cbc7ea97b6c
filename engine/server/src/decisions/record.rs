//! The decision record: one Decide as the decision log carries it.
//!
//! On the wire (a Kafka message's payload, a line of `--decision-log`) it
//! is one JSON object with every field present, in this order:
//!
//! ```json
//! {"decision_id":"9f3c2a1b44d0e7a5-1a","ts":1764400000000,"shop":"demo-apparel",
//!  "visitor":"v-1","revision":3,"banner":"welcome-back","items":["sku-1","sku-2"],
//!  "benefit":null,"held_out":[{"slot":"benefit","id":"cart-coupon-10"}],
//!  "replica":"9f3c2a1b44d0e7a5"}
//! ```
//!
//! `ts` is the decision's instant (ms since the Unix epoch: the request's
//! `now_ms`, else the server clock), `revision` the rule revision that
//! decided, `banner` and `benefit` the chosen ids or `null` when the slot is
//! empty, `items` the item ids in order (at most 100, the items limit),
//! `held_out` the entries the visitor was eligible for but held out from
//! (slot `banner` or `benefit`), `replica` the deciding process (the prefix
//! of its decision ids). An anonymous decision has `"visitor":""`.
//!
//! Reading records back ([`parse`]) treats the bytes as hostile: anyone
//! with write access to the topic can produce. A record over
//! [`MAX_RECORD_BYTES`], with an id over 512 bytes (or an empty shop or
//! decision id), more than [`MAX_ITEMS`] items or [`MAX_HELD_OUT`]
//! hold-outs, another slot, or a `ts` outside the event range is refused
//! with its reason; every replica refuses the same records. Unknown fields
//! are ignored (a newer writer may add some).

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vitrine_core::eval::decide::Slot;
use vitrine_core::event::{MAX_ID_BYTES, MAX_TS};

use super::id::DecisionIds;
use crate::metrics::decisions::RecordRejected;

/// The largest record read back, in bytes.
pub const MAX_RECORD_BYTES: usize = 128 << 10;
/// The most items a record may list (a decision's items limit).
pub const MAX_ITEMS: usize = vitrine_core::rules::MAX_ITEM_LIMIT as usize;
/// The most hold-outs a record may list: as many entries as a rule file
/// may give a holdout, so a decision is never cut short.
pub const MAX_HELD_OUT: usize = vitrine_core::exposure::MAX_HELD_OUT;

/// One decision, owned, as the Decide path queues it: shared ids where the
/// rule set has them (`Arc`), the visitor and item ids in one buffer.
#[derive(Debug, Clone)]
pub struct Record {
    /// Sequence number of its `decision_id`.
    pub seq: u64,
    /// The decision's instant, ms.
    pub ts_ms: i64,
    /// The shop.
    pub shop: Arc<str>,
    /// The rule revision that decided.
    pub revision: u64,
    /// The banner shown.
    pub banner: Option<Arc<str>>,
    /// The benefit offered.
    pub benefit: Option<Arc<str>>,
    /// Entries held out.
    pub held_out: Vec<(Slot, Box<str>)>,
    /// The visitor's id, then each item id.
    text: String,
    /// Where each item id ends in `text` (the visitor ends at the first start).
    item_ends: Vec<u32>,
    visitor_end: u32,
}

impl Record {
    /// A record of a decision for `visitor` with `items`.
    #[allow(clippy::too_many_arguments)]
    pub fn new<'a>(
        seq: u64,
        ts_ms: i64,
        shop: &Arc<str>,
        revision: u64,
        visitor: &str,
        banner: Option<&Arc<str>>,
        benefit: Option<&Arc<str>>,
        items: impl ExactSizeIterator<Item = &'a str> + Clone,
        held_out: &[(Slot, &str)],
    ) -> Record {
        let n = items.len().min(MAX_ITEMS);
        let bytes = visitor.len() + items.clone().take(n).map(str::len).sum::<usize>();
        let mut text = String::with_capacity(bytes);
        text.push_str(visitor);
        let visitor_end = text.len() as u32;
        let mut item_ends = Vec::with_capacity(n);
        for item in items.take(n) {
            text.push_str(item);
            item_ends.push(text.len() as u32);
        }
        Record {
            seq,
            ts_ms,
            shop: shop.clone(),
            revision,
            banner: banner.cloned(),
            benefit: benefit.cloned(),
            held_out: held_out
                .iter()
                .take(MAX_HELD_OUT)
                .map(|&(s, id)| (s, id.into()))
                .collect(),
            text,
            item_ends,
            visitor_end,
        }
    }

    /// The visitor ("" for an anonymous decision).
    pub fn visitor(&self) -> &str {
        &self.text[..self.visitor_end as usize]
    }

    /// The item ids, in order.
    pub fn items(&self) -> impl Iterator<Item = &str> + '_ {
        let mut start = self.visitor_end as usize;
        self.item_ends.iter().map(move |&end| {
            let item = &self.text[start..end as usize];
            start = end as usize;
            item
        })
    }

    /// The wire form, borrowing from this record.
    pub fn wire<'a>(&'a self, decision_id: &'a str, replica: &'a str) -> Wire<'a> {
        Wire {
            decision_id: Cow::Borrowed(decision_id),
            ts: self.ts_ms,
            shop: Cow::Borrowed(&self.shop),
            visitor: Cow::Borrowed(self.visitor()),
            revision: self.revision,
            banner: self.banner.as_deref().map(Cow::Borrowed),
            items: self.items().map(Cow::Borrowed).collect(),
            benefit: self.benefit.as_deref().map(Cow::Borrowed),
            held_out: self
                .held_out
                .iter()
                .map(|(slot, id)| HeldOut {
                    slot: Cow::Borrowed(slot_name(*slot)),
                    id: Cow::Borrowed(id),
                })
                .collect(),
            replica: Cow::Borrowed(replica),
        }
    }

    /// The JSON line of this record (no newline).
    pub fn to_json(&self, ids: &DecisionIds, replica: &str) -> String {
        let id = ids.format(self.seq);
        self.wire(&id, replica).to_json()
    }
}

/// A record on the wire: written by [`Record::wire`], read by [`parse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wire<'a> {
    /// Unique per decision.
    #[serde(borrow)]
    pub decision_id: Cow<'a, str>,
    /// ms since the Unix epoch.
    pub ts: i64,
    /// The shop.
    #[serde(borrow)]
    pub shop: Cow<'a, str>,
    /// The visitor ("" = anonymous).
    #[serde(borrow)]
    pub visitor: Cow<'a, str>,
    /// The rule revision that decided.
    pub revision: u64,
    /// The banner shown, or null.
    #[serde(borrow)]
    pub banner: Option<Cow<'a, str>>,
    /// The item ids.
    #[serde(borrow)]
    pub items: Vec<Cow<'a, str>>,
    /// The benefit offered, or null.
    #[serde(borrow)]
    pub benefit: Option<Cow<'a, str>>,
    /// Entries held out.
    #[serde(borrow)]
    pub held_out: Vec<HeldOut<'a>>,
    /// The deciding process.
    #[serde(borrow)]
    pub replica: Cow<'a, str>,
}

/// One held-out entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldOut<'a> {
    /// `banner` or `benefit`.
    #[serde(borrow)]
    pub slot: Cow<'a, str>,
    /// The entry's id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
}

impl Wire<'_> {
    /// One JSON object, no newline.
    pub fn to_json(&self) -> String {
        // Strings, integers and lists only: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The held-out entries as the index takes them (after [`parse`], every
    /// slot is `banner` or `benefit`).
    pub fn held_out_slots(&self) -> impl Iterator<Item = (Slot, &str)> + '_ {
        self.held_out
            .iter()
            .filter_map(|h| slot_of(&h.slot).map(|slot| (slot, &*h.id)))
    }
}

/// The wire name of a held-out slot.
pub fn slot_name(slot: Slot) -> &'static str {
    match slot {
        Slot::Banner => "banner",
        Slot::Items => "items",
        Slot::Benefit => "benefit",
    }
}

fn slot_of(name: &str) -> Option<Slot> {
    match name {
        "banner" => Some(Slot::Banner),
        "benefit" => Some(Slot::Benefit),
        _ => None,
    }
}

/// Reads a record written by any producer; refuses it, with the reason
/// it is counted under, unless it is within every bound (module docs).
pub fn parse(bytes: &[u8]) -> Result<Wire<'_>, RecordRejected> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordRejected::Oversized);
    }
    let wire: Wire<'_> = serde_json::from_slice(bytes).map_err(|_| RecordRejected::Malformed)?;
    let id_ok = |id: &str| id.len() <= MAX_ID_BYTES;
    let required_ok = |id: &str| !id.is_empty() && id_ok(id);
    let ids_ok = required_ok(&wire.decision_id)
        && required_ok(&wire.shop)
        && id_ok(&wire.visitor)
        && id_ok(&wire.replica)
        && wire.banner.as_deref().is_none_or(required_ok)
        && wire.benefit.as_deref().is_none_or(required_ok)
        && wire.items.iter().all(|i| id_ok(i))
        && wire.held_out.iter().all(|h| required_ok(&h.id));
    if wire.items.len() > MAX_ITEMS || wire.held_out.len() > MAX_HELD_OUT {
        return Err(RecordRejected::TooMany);
    }
    if !ids_ok {
        return Err(RecordRejected::BadId);
    }
    if wire.held_out.iter().any(|h| slot_of(&h.slot).is_none()) {
        return Err(RecordRejected::BadSlot);
    }
    if !(0..=MAX_TS).contains(&wire.ts) {
        return Err(RecordRejected::BadTs);
    }
    Ok(wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        let shop: Arc<str> = "demo-apparel".into();
        let banner: Arc<str> = "welcome-back".into();
        Record::new(
            0x1a,
            1_764_400_000_000,
            &shop,
            3,
            "v-1",
            Some(&banner),
            None,
            ["sku-1", "sku-2"].into_iter(),
            &[(Slot::Benefit, "cart-coupon-10")],
        )
    }

    #[test]
    fn the_json_is_exactly_the_documented_shape() {
        let ids = DecisionIds::new(0x9f3c_2a1b_44d0_e7a5);
        assert_eq!(
            record().to_json(&ids, &ids.replica()),
            r#"{"decision_id":"9f3c2a1b44d0e7a5-1a","ts":1764400000000,"shop":"demo-apparel","visitor":"v-1","revision":3,"banner":"welcome-back","items":["sku-1","sku-2"],"benefit":null,"held_out":[{"slot":"benefit","id":"cart-coupon-10"}],"replica":"9f3c2a1b44d0e7a5"}"#
        );
    }

    #[test]
    fn a_written_record_parses_back_to_itself() {
        let ids = DecisionIds::new(7);
        let r = record();
        let json = r.to_json(&ids, "r");
        let wire = parse(json.as_bytes()).unwrap();
        assert_eq!(wire, r.wire(&ids.format(0x1a), "r"));
        assert_eq!(
            wire.held_out_slots().collect::<Vec<_>>(),
            [(Slot::Benefit, "cart-coupon-10")]
        );
        assert_eq!(r.visitor(), "v-1");
        assert_eq!(r.items().collect::<Vec<_>>(), ["sku-1", "sku-2"]);
    }

    #[test]
    fn hostile_records_are_refused_with_their_reason() {
        let good = r#"{"decision_id":"d","ts":1,"shop":"s","visitor":"v","revision":1,"banner":null,"items":[],"benefit":null,"held_out":[],"replica":"r"}"#;
        assert!(parse(good.as_bytes()).is_ok());
        let with = |from: &str, to: &str| good.replace(from, to);
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let many_items = format!("[{}]", vec!["\"i\""; MAX_ITEMS + 1].join(","));
        let hold = r#"{"slot":"benefit","id":"b"}"#;
        let many_held = format!("[{}]", [hold; MAX_HELD_OUT + 1].join(","));
        let cases: Vec<(String, RecordRejected)> = vec![
            ("not json".to_string(), RecordRejected::Malformed),
            (with(r#""ts":1,"#, ""), RecordRejected::Malformed),
            (with(r#""ts":1"#, r#""ts":"1""#), RecordRejected::Malformed),
            (
                with(r#""decision_id":"d""#, r#""decision_id":"""#),
                RecordRejected::BadId,
            ),
            (with(r#""shop":"s""#, r#""shop":"""#), RecordRejected::BadId),
            (
                with(r#""visitor":"v""#, &format!(r#""visitor":"{long}""#)),
                RecordRejected::BadId,
            ),
            (with(r#""banner":null"#, r#""banner":"""#), RecordRejected::BadId),
            (
                with(r#""items":[]"#, &format!(r#""items":{many_items}"#)),
                RecordRejected::TooMany,
            ),
            (
                with(r#""held_out":[]"#, &format!(r#""held_out":{many_held}"#)),
                RecordRejected::TooMany,
            ),
            (
                with(r#""held_out":[]"#, r#""held_out":[{"slot":"items","id":"b"}]"#),
                RecordRejected::BadSlot,
            ),
            (with(r#""ts":1"#, r#""ts":-1"#), RecordRejected::BadTs),
            (
                format!("{}{}", good, " ".repeat(MAX_RECORD_BYTES)),
                RecordRejected::Oversized,
            ),
        ];
        for (text, reason) in cases {
            assert_eq!(parse(text.as_bytes()).map(|_| ()), Err(reason), "{:.200}", text);
        }
        // Unknown fields are ignored; an anonymous visitor is fine.
        let extra = with(r#""replica":"r""#, r#""replica":"r","future":{"a":[1]}"#);
        assert!(parse(extra.as_bytes()).is_ok());
        assert!(parse(with(r#""visitor":"v""#, r#""visitor":"""#).as_bytes()).is_ok());
    }
}
