//! Behavior events (`docs/events.md`): decoding and validation.
//!
//! One JSON object per event ([`Event::from_json`]), or one protobuf
//! `vitrine.v1.Event` ([`Event::from_proto`], `event/proto.rs`); both fill
//! the same [`Fields`] and [`Event::validate`] decides, so the two
//! encodings accept and reject alike. Decoding borrows from the input where
//! it can, so the Kafka consumer can decode without copying strings.
//! Unknown fields are ignored, so producers may add fields without breaking
//! ingest.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

mod proto;
mod scan;

#[cfg(test)]
mod attack17;

/// The latest event time accepted: 9999-12-31T23:59:59.999Z. Keeps hour
/// numbers far from `u32::MAX`, so the index's hour arithmetic cannot overflow.
pub const MAX_TS: i64 = 253_402_300_799_999;

/// The longest id an event (or a request) may carry, in bytes: shop,
/// visitor, item, category, tag and event id. Ids are keys of the index and
/// the journals, so one long id costs memory and disk on every path it takes.
pub const MAX_ID_BYTES: usize = 512;

/// A behavior or profile action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Action {
    /// The visitor viewed an item.
    View = 0,
    /// The visitor added an item to the cart.
    Cart = 1,
    /// The visitor favorited an item.
    Favorite = 2,
    /// The visitor bought an item.
    Purchase = 3,
    /// A tag was set on the visitor.
    Tag = 4,
    /// A tag was removed from the visitor.
    Untag = 5,
    /// The visitor's member tier changed.
    Member = 6,
}

impl Action {
    /// Every action, in the order of their numbers.
    pub const ALL: [Action; 7] = [
        Action::View,
        Action::Cart,
        Action::Favorite,
        Action::Purchase,
        Action::Tag,
        Action::Untag,
        Action::Member,
    ];

    /// The four item actions, in index order.
    pub const BEHAVIORS: [Action; 4] = [Action::View, Action::Cart, Action::Favorite, Action::Purchase];

    /// Parses the `action` field.
    pub fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "view" => Action::View,
            "cart" => Action::Cart,
            "favorite" => Action::Favorite,
            "purchase" => Action::Purchase,
            "tag" => Action::Tag,
            "untag" => Action::Untag,
            "member" => Action::Member,
            _ => return None,
        })
    }

    /// The name used in events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::View => "view",
            Action::Cart => "cart",
            Action::Favorite => "favorite",
            Action::Purchase => "purchase",
            Action::Tag => "tag",
            Action::Untag => "untag",
            Action::Member => "member",
        }
    }

    /// Whether the action is about an item (view, cart, favorite, purchase).
    pub fn is_behavior(self) -> bool {
        (self as u8) < 4
    }
}

/// A set of item actions, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActionSet(u8);

impl ActionSet {
    /// All four item actions (`visited`).
    pub const ALL: ActionSet = ActionSet(0b1111);

    /// Just one action.
    pub const fn one(action: Action) -> ActionSet {
        ActionSet(1 << action as u8)
    }

    /// Whether the set holds the action.
    #[inline]
    pub fn contains(self, action: Action) -> bool {
        self.0 & (1 << action as u8) != 0
    }

    /// The item actions in the set.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::BEHAVIORS.into_iter().filter(move |a| self.contains(*a))
    }
}

/// A validated behavior event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    /// Storefront.
    pub shop: Cow<'a, str>,
    /// Visitor id (never empty).
    pub visitor: Cow<'a, str>,
    /// What happened.
    pub action: Action,
    /// Item, for view, cart, favorite and purchase.
    pub item: Option<Cow<'a, str>>,
    /// Category of the item, when known.
    pub category: Option<Cow<'a, str>>,
    /// Unit price (>= 0): required on purchases, optional on views, carts
    /// and favorites, where 0 means none. The latest by `ts` is the item's
    /// known price (the smart add-on reads it).
    pub price: f64,
    /// Quantity, for purchases (>= 1).
    pub quantity: u32,
    /// Tag, for tag and untag.
    pub tag: Option<Cow<'a, str>>,
    /// Member tier, for member.
    pub tier: u32,
    /// Event time, milliseconds since the Unix epoch.
    pub ts: i64,
    /// Optional event id (de-duplicates purchases).
    pub id: Option<Cow<'a, str>>,
}

/// Why an event was rejected; bounded, so usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Not a JSON object.
    InvalidJson,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// `action` is not one of the seven actions.
    UnknownAction,
    /// A field has a value outside its range (empty visitor, negative price, ...).
    InvalidValue,
    /// An id (shop, visitor, item, category, tag, event id) is longer than [`MAX_ID_BYTES`].
    TooLong,
    /// No rule set serves the event's shop: the server keeps no state for it
    /// (decided by the server, which knows the rule sets; never by [`Event::validate`]).
    UnknownShop,
    /// Not a protobuf `Event`: the wire format is broken (truncated, an
    /// overlong varint, a length past the end, a string not UTF-8, a group).
    InvalidProto,
}

impl RejectReason {
    /// Every reason, for pre-registering metrics.
    pub const ALL: [RejectReason; 8] = [
        RejectReason::InvalidJson,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::UnknownAction,
        RejectReason::InvalidValue,
        RejectReason::TooLong,
        RejectReason::UnknownShop,
        RejectReason::InvalidProto,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::UnknownAction => "unknown_action",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::TooLong => "too_long",
            RejectReason::UnknownShop => "unknown_shop",
            RejectReason::InvalidProto => "invalid_proto",
        }
    }
}

/// A rejected event: the reason and a precise message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", reason.as_str())]
pub struct EventError {
    /// The bounded reason.
    pub reason: RejectReason,
    /// What exactly was wrong.
    pub message: String,
}

impl EventError {
    fn new(reason: RejectReason, message: impl Into<String>) -> EventError {
        EventError {
            reason,
            message: message.into(),
        }
    }

    /// An event's error that the server, not the event, decides.
    pub fn unknown_shop(shop: &str) -> EventError {
        EventError::new(
            RejectReason::UnknownShop,
            format!("no rule set serves shop `{shop}`: push its rules before its events"),
        )
    }

    fn missing(field: &str) -> EventError {
        EventError::new(RejectReason::MissingField, format!("missing field `{field}`"))
    }
}

/// Refuses an id longer than [`MAX_ID_BYTES`].
fn bounded_id(field: &str, value: Option<&str>) -> Result<(), EventError> {
    match value {
        Some(v) if v.len() > MAX_ID_BYTES => Err(EventError::new(
            RejectReason::TooLong,
            format!(
                "`{field}` is {} bytes long; at most {MAX_ID_BYTES} are accepted",
                v.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// A JSON string that borrows from the input unless it holds escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    shop: Option<Text<'a>>,
    #[serde(borrow, default)]
    visitor: Option<Text<'a>>,
    #[serde(borrow, default)]
    action: Option<Text<'a>>,
    #[serde(borrow, default)]
    item: Option<Text<'a>>,
    #[serde(borrow, default)]
    category: Option<Text<'a>>,
    #[serde(default)]
    price: Option<f64>,
    #[serde(default)]
    quantity: Option<i64>,
    #[serde(borrow, default)]
    tag: Option<Text<'a>>,
    #[serde(default)]
    tier: Option<i64>,
    #[serde(default)]
    ts: Option<i64>,
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
}

impl<'a> Event<'a> {
    /// An event with no item, category, tag or id and the neutral values
    /// (price 0, quantity 1, tier 0): what parsers, generators and tests
    /// start from before setting the fields the action carries, e.g.
    /// `Event { item: Some("sku-1".into()), ..Event::new("s", "v", Action::View, ts) }`.
    /// Unvalidated: [`Event::from_json`] is the checked way in.
    pub fn new(shop: impl Into<Cow<'a, str>>, visitor: impl Into<Cow<'a, str>>, action: Action, ts: i64) -> Event<'a> {
        Event {
            shop: shop.into(),
            visitor: visitor.into(),
            action,
            item: None,
            category: None,
            price: 0.0,
            quantity: 1,
            tag: None,
            tier: 0,
            ts,
            id: None,
        }
    }

    /// The event as the JSON `from_json` reads (`docs/events.md`): what a
    /// cluster replica produces to the behavior topic for `Ingest/Track`.
    /// Fields the action does not use are left out.
    pub fn to_json(&self) -> String {
        let mut o = serde_json::Map::new();
        o.insert("shop".into(), self.shop.as_ref().into());
        o.insert("visitor".into(), self.visitor.as_ref().into());
        o.insert("action".into(), self.action.as_str().into());
        o.insert("ts".into(), self.ts.into());
        for (key, value) in [
            ("item", &self.item),
            ("category", &self.category),
            ("tag", &self.tag),
            ("id", &self.id),
        ] {
            if let Some(v) = value {
                o.insert(key.into(), v.as_ref().into());
            }
        }
        match self.action {
            Action::Purchase => {
                o.insert("price".into(), self.price.into());
                o.insert("quantity".into(), self.quantity.into());
            }
            Action::Member => {
                o.insert("tier".into(), self.tier.into());
            }
            Action::View | Action::Cart | Action::Favorite if self.price.to_bits() != 0 => {
                o.insert("price".into(), self.price.into());
            }
            _ => {}
        }
        serde_json::Value::Object(o).to_string()
    }

    /// Decodes and validates one JSON event.
    ///
    /// The flat objects producers send take a hand-rolled scanner
    /// (`event/scan.rs`); anything else, and every malformed input, is
    /// decoded by serde_json, so the result and each error text are the
    /// same either way.
    pub fn from_json(bytes: &'a [u8]) -> Result<Event<'a>, EventError> {
        match scan::scan(bytes) {
            Some(fields) => Event::validate(fields),
            None => Event::from_json_serde(bytes),
        }
    }

    /// Decodes and validates one protobuf-encoded `vitrine.v1.Event`
    /// (`event/proto.rs`): the fields as `Ingest/Track` reads them (an
    /// empty string is absent), validated exactly as [`Event::from_json`]
    /// validates, so the same event or the same error; plus
    /// `invalid_proto` and `wrong_type` for a broken wire format.
    pub fn from_proto(bytes: &'a [u8]) -> Result<Event<'a>, EventError> {
        Event::validate(proto::fields(bytes)?)
    }

    /// The event as the protobuf `vitrine.v1.Event` `from_proto` reads:
    /// the fields [`Event::to_json`] writes, in field-number order.
    pub fn to_proto(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_proto(&mut out);
        out
    }

    /// [`Event::to_proto`] appended to `out` (a producer's reused buffer).
    pub fn write_proto(&self, out: &mut Vec<u8>) {
        proto::encode(self, out);
    }

    /// The `shop` field of a protobuf event that failed validation, if it
    /// has one: for a rejection's shop label, only ever compared with the
    /// served shops.
    pub fn proto_shop(bytes: &'a [u8]) -> Option<&'a str> {
        proto::shop_of(bytes)
    }

    /// [`Event::from_json`] through serde_json alone: what the fast path
    /// must agree with.
    fn from_json_serde(bytes: &'a [u8]) -> Result<Event<'a>, EventError> {
        let raw: Raw<'a> = serde_json::from_slice(bytes).map_err(|e| {
            let reason = match e.classify() {
                serde_json::error::Category::Data => RejectReason::WrongType,
                _ => RejectReason::InvalidJson,
            };
            EventError::new(reason, e.to_string())
        })?;
        Event::validate(Fields {
            shop: raw.shop.map(|t| t.0),
            visitor: raw.visitor.map(|t| t.0),
            action: raw.action.map(|t| t.0),
            item: raw.item.map(|t| t.0),
            category: raw.category.map(|t| t.0),
            price: raw.price,
            quantity: raw.quantity,
            tag: raw.tag.map(|t| t.0),
            tier: raw.tier,
            ts: raw.ts,
            id: raw.id.map(|t| t.0),
        })
    }

    /// Validates an event given field by field (as the Track RPC does).
    pub fn validate(f: Fields<'a>) -> Result<Event<'a>, EventError> {
        let shop = f.shop.ok_or_else(|| EventError::missing("shop"))?;
        let visitor = f.visitor.ok_or_else(|| EventError::missing("visitor"))?;
        let action_name = f.action.ok_or_else(|| EventError::missing("action"))?;
        let ts = f.ts.ok_or_else(|| EventError::missing("ts"))?;
        bounded_id("shop", Some(&shop))?;
        bounded_id("action", Some(&action_name))?;
        bounded_id("visitor", Some(&visitor))?;
        bounded_id("item", f.item.as_deref())?;
        bounded_id("category", f.category.as_deref())?;
        bounded_id("tag", f.tag.as_deref())?;
        bounded_id("id", f.id.as_deref())?;
        if shop.is_empty() {
            return Err(EventError::new(RejectReason::InvalidValue, "`shop` must not be empty"));
        }
        if visitor.is_empty() {
            return Err(EventError::new(
                RejectReason::InvalidValue,
                "`visitor` must not be empty",
            ));
        }
        let action = Action::parse(&action_name).ok_or_else(|| {
            EventError::new(
                RejectReason::UnknownAction,
                format!(
                    "unknown action `{action_name}`; expected view, cart, favorite, purchase, tag, untag or member"
                ),
            )
        })?;
        if ts < 0 {
            return Err(EventError::new(RejectReason::InvalidValue, "`ts` must be >= 0"));
        }
        if ts > MAX_TS {
            return Err(EventError::new(
                RejectReason::InvalidValue,
                "`ts` must be at most 253402300799999 (9999-12-31T23:59:59.999Z) in milliseconds",
            ));
        }
        let mut event = Event {
            id: f.id,
            ..Event::new(shop, visitor, action, ts)
        };
        match action {
            Action::View | Action::Cart | Action::Favorite | Action::Purchase => {
                let item = f.item.ok_or_else(|| EventError::missing("item"))?;
                if item.is_empty() {
                    return Err(EventError::new(RejectReason::InvalidValue, "`item` must not be empty"));
                }
                event.item = Some(item);
                event.category = f.category.filter(|c| !c.is_empty());
                if action != Action::Purchase {
                    if let Some(price) = f.price {
                        if !(price >= 0.0 && price.is_finite()) {
                            return Err(EventError::new(RejectReason::InvalidValue, "`price` must be >= 0"));
                        }
                        // +0.0: a zero price is no price (the events journal stores none).
                        event.price = price + 0.0;
                    }
                }
                if action == Action::Purchase {
                    let price = f.price.ok_or_else(|| EventError::missing("price"))?;
                    if !(price >= 0.0 && price.is_finite()) {
                        return Err(EventError::new(RejectReason::InvalidValue, "`price` must be >= 0"));
                    }
                    let quantity = f.quantity.unwrap_or(1);
                    if !(1..=i64::from(u32::MAX)).contains(&quantity) {
                        return Err(EventError::new(
                            RejectReason::InvalidValue,
                            "`quantity` must be between 1 and 4294967295",
                        ));
                    }
                    // 1e308 x 2 is infinite: a stored amount must be finite
                    // (sums, averages and the snapshot decoder rely on it).
                    if !(price * quantity as f64).is_finite() {
                        return Err(EventError::new(
                            RejectReason::InvalidValue,
                            "`price` * `quantity` must be a finite number",
                        ));
                    }
                    event.price = price;
                    event.quantity = quantity as u32;
                }
            }
            Action::Tag | Action::Untag => {
                let tag = f.tag.ok_or_else(|| EventError::missing("tag"))?;
                if tag.is_empty() {
                    return Err(EventError::new(RejectReason::InvalidValue, "`tag` must not be empty"));
                }
                event.tag = Some(tag);
            }
            Action::Member => {
                let tier = f.tier.ok_or_else(|| EventError::missing("tier"))?;
                if !(0..=i64::from(u32::MAX)).contains(&tier) {
                    return Err(EventError::new(
                        RejectReason::InvalidValue,
                        "`tier` must be between 0 and 4294967295",
                    ));
                }
                event.tier = tier as u32;
            }
        }
        Ok(event)
    }

    /// The item price this event tells, if any: a purchase's price, or a
    /// non-zero price on a view, cart or favorite.
    pub fn item_price(&self) -> Option<f64> {
        match self.action {
            Action::Purchase => Some(self.price),
            Action::View | Action::Cart | Action::Favorite if self.price > 0.0 => Some(self.price),
            _ => None,
        }
    }

    /// The purchase amount, `price * quantity`.
    pub fn amount(&self) -> f64 {
        self.price * f64::from(self.quantity)
    }
}

/// The fields of an event, as both decoders read them: the JSON scanner by
/// name (`scan.rs`), the protobuf reader by number (`proto.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Shop,
    Visitor,
    Action,
    Item,
    Category,
    Price,
    Quantity,
    Tag,
    Tier,
    Ts,
    Id,
}

impl Field {
    /// The field's name (its JSON key).
    fn name(self) -> &'static str {
        match self {
            Field::Shop => "shop",
            Field::Visitor => "visitor",
            Field::Action => "action",
            Field::Item => "item",
            Field::Category => "category",
            Field::Price => "price",
            Field::Quantity => "quantity",
            Field::Tag => "tag",
            Field::Tier => "tier",
            Field::Ts => "ts",
            Field::Id => "id",
        }
    }
}

/// Event fields before validation; `None` means absent.
#[derive(Debug, Clone, Default)]
pub struct Fields<'a> {
    /// `shop`
    pub shop: Option<Cow<'a, str>>,
    /// `visitor`
    pub visitor: Option<Cow<'a, str>>,
    /// `action`
    pub action: Option<Cow<'a, str>>,
    /// `item`
    pub item: Option<Cow<'a, str>>,
    /// `category`
    pub category: Option<Cow<'a, str>>,
    /// `price`
    pub price: Option<f64>,
    /// `quantity`
    pub quantity: Option<i64>,
    /// `tag`
    pub tag: Option<Cow<'a, str>>,
    /// `tier`
    pub tier: Option<i64>,
    /// `ts`
    pub ts: Option<i64>,
    /// `id`
    pub id: Option<Cow<'a, str>>,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(json: &str) -> (RejectReason, String) {
        let e = Event::from_json(json.as_bytes()).unwrap_err();
        (e.reason, e.message)
    }

    #[test]
    fn decodes_the_contract_examples() {
        let e = Event::from_json(br#"{"shop":"demo-apparel","visitor":"v-1","action":"purchase","item":"sku-101","category":"tops","price":129.0,"quantity":2,"ts":1794000900000}"#).unwrap();
        assert_eq!(e.action, Action::Purchase);
        assert_eq!(e.amount(), 258.0);
        assert!(matches!(e.shop, Cow::Borrowed(_)));
        let e =
            Event::from_json(br#"{"shop":"s","visitor":"v","action":"member","tier":4,"ts":1,"extra":[1,2]}"#).unwrap();
        assert_eq!(e.tier, 4);
        let e =
            Event::from_json(br#"{"shop":"s","visitor":"v","action":"tag","tag":"price_sensitive","ts":1}"#).unwrap();
        assert_eq!(e.tag.as_deref(), Some("price_sensitive"));
    }

    /// Events of every action, with strings that need escaping and numbers
    /// at their bounds: what the encoders (`to_json`, `to_proto`) must write
    /// back to the same event.
    pub(super) fn round_trip_events() -> Vec<Event<'static>> {
        let tricky = "q\"uote\\back\nline\u{1F600}";
        vec![
            Event {
                item: Some("sku-1".into()),
                category: Some(tricky.into()),
                ..Event::new("s", "v", Action::View, 1_700_000_000_000)
            },
            Event {
                item: Some(tricky.into()),
                ..Event::new("s", "v", Action::Cart, 1)
            },
            Event {
                item: Some("sku-1".into()),
                price: 19.9,
                ..Event::new("s", "v", Action::Cart, 0)
            },
            Event {
                item: Some("sku-1".into()),
                ..Event::new("s", "v", Action::Favorite, 1)
            },
            Event {
                item: Some("sku-1".into()),
                price: 19.9,
                ..Event::new("s", "v", Action::View, 1)
            },
            Event {
                item: Some("sku-2".into()),
                price: 129.5,
                quantity: 3,
                id: Some("order-9".into()),
                ..Event::new(tricky, tricky, Action::Purchase, 2)
            },
            Event {
                item: Some("sku-2".into()),
                price: 129.5,
                quantity: 3,
                id: Some("order-9".into()),
                ..Event::new(tricky, tricky, Action::Purchase, MAX_TS)
            },
            Event {
                item: Some("sku-2".into()),
                price: 0.0,
                quantity: u32::MAX,
                ..Event::new("s", "v", Action::Purchase, 2)
            },
            Event {
                tag: Some("price_sensitive".into()),
                ..Event::new("s", "v", Action::Tag, 3)
            },
            Event {
                tag: Some(tricky.into()),
                ..Event::new("s", "v", Action::Untag, 3)
            },
            Event {
                tier: 0,
                ..Event::new("s", "v", Action::Member, 4)
            },
            Event {
                tier: 5,
                ..Event::new("s", "v", Action::Member, 4)
            },
            Event {
                tier: u32::MAX,
                ..Event::new("s", "v", Action::Member, 4)
            },
        ]
    }

    /// `to_json` writes what `from_json` reads back to the same event, for
    /// every action and with strings that need escaping (a Track call in a
    /// cluster reaches the other replicas this way).
    #[test]
    fn to_json_round_trips_through_from_json() {
        let events = round_trip_events();
        for event in events {
            let json = event.to_json();
            assert_eq!(Event::from_json(json.as_bytes()), Ok(event), "{json}");
        }
    }

    /// Views, carts and favorites may tell the item's price: checked as a
    /// purchase's is; 0 (or -0) is no price.
    #[test]
    fn item_events_may_carry_a_price() {
        let view = |price: &str| {
            Event::from_json(
                format!(r#"{{"shop":"s","visitor":"v","action":"view","item":"i","price":{price},"ts":1}}"#).as_bytes(),
            )
            .map(|e| (e.price.to_bits(), e.item_price()))
        };
        assert_eq!(view("12.5"), Ok((12.5f64.to_bits(), Some(12.5))));
        assert_eq!(view("0"), Ok((0, None)));
        assert_eq!(view("-0.0"), Ok((0, None)));
        assert_eq!(
            view("-1").map_err(|e| e.message),
            Err("`price` must be >= 0".to_string())
        );
        let e =
            Event::from_json(br#"{"shop":"s","visitor":"v","action":"purchase","item":"i","price":0,"ts":1}"#).unwrap();
        assert_eq!(e.item_price(), Some(0.0), "a purchase always tells its price");
        let e = Event::from_json(br#"{"shop":"s","visitor":"v","action":"tag","tag":"t","price":5,"ts":1}"#).unwrap();
        assert_eq!(e.item_price(), None);
    }

    /// Regression (hardening #5): a 100 KB id was accepted and journaled by
    /// Track and Kafka, though Decide, Claim and Size refuse such ids.
    #[test]
    fn ids_longer_than_the_limit_are_rejected_on_every_field() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let fits = "x".repeat(MAX_ID_BYTES);
        for (field, json) in [
            (
                "shop",
                format!(r#"{{"shop":"{long}","visitor":"v","action":"view","item":"i","ts":1}}"#),
            ),
            (
                "visitor",
                format!(r#"{{"shop":"s","visitor":"{long}","action":"view","item":"i","ts":1}}"#),
            ),
            (
                "action",
                format!(r#"{{"shop":"s","visitor":"v","action":"{long}","item":"i","ts":1}}"#),
            ),
            (
                "item",
                format!(r#"{{"shop":"s","visitor":"v","action":"view","item":"{long}","ts":1}}"#),
            ),
            (
                "category",
                format!(r#"{{"shop":"s","visitor":"v","action":"view","item":"i","category":"{long}","ts":1}}"#),
            ),
            (
                "tag",
                format!(r#"{{"shop":"s","visitor":"v","action":"tag","tag":"{long}","ts":1}}"#),
            ),
            (
                "id",
                format!(r#"{{"shop":"s","visitor":"v","action":"view","item":"i","id":"{long}","ts":1}}"#),
            ),
        ] {
            let (reason, message) = reject(&json);
            assert_eq!(reason, RejectReason::TooLong, "{field}");
            assert_eq!(
                message,
                format!("`{field}` is 513 bytes long; at most 512 are accepted"),
                "{field}"
            );
            assert!(Event::from_json(json.replace(&long, &fits).as_bytes()).is_ok() || field == "action");
        }
    }

    #[test]
    fn rejects_with_reasons() {
        assert_eq!(reject("not json").0, RejectReason::InvalidJson);
        assert_eq!(reject("[1]").0, RejectReason::WrongType);
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"v","action":"view","item":"i"}"#),
            (RejectReason::MissingField, "missing field `ts`".into())
        );
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"v","action":"view","ts":1}"#),
            (RejectReason::MissingField, "missing field `item`".into())
        );
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":"1"}"#).0,
            RejectReason::WrongType
        );
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"v","action":"view","item":7,"ts":1}"#).0,
            RejectReason::WrongType
        );
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"v","action":"buy","item":"i","ts":1}"#).0,
            RejectReason::UnknownAction
        );
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"v","action":"purchase","item":"i","ts":1}"#).1,
            "missing field `price`"
        );
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"v","action":"purchase","item":"i","price":-1,"ts":1}"#),
            (RejectReason::InvalidValue, "`price` must be >= 0".into())
        );
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"v","action":"purchase","item":"i","price":1,"quantity":0,"ts":1}"#).1,
            "`quantity` must be between 1 and 4294967295"
        );
        // The message names the bound that was crossed, above as below.
        assert_eq!(
            reject(
                r#"{"shop":"s","visitor":"v","action":"purchase","item":"i","price":1,"quantity":4294967296,"ts":1}"#
            )
            .1,
            "`quantity` must be between 1 and 4294967295"
        );
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"v","action":"member","tier":9223372036854775807,"ts":1}"#).1,
            "`tier` must be between 0 and 4294967295"
        );
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"","action":"view","item":"i","ts":1}"#).0,
            RejectReason::InvalidValue
        );
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"v","action":"member","tier":-1,"ts":1}"#).0,
            RejectReason::InvalidValue
        );
        // A ts in the far future would overflow hour arithmetic in the index.
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":9223372036854775807}"#).0,
            RejectReason::InvalidValue
        );
        assert!(
            Event::from_json(br#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":253402300799999}"#).is_ok()
        );
        assert_eq!(
            reject(r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":1"#).0,
            RejectReason::InvalidJson
        );
    }
}
