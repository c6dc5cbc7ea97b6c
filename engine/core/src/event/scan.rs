//! The fast path of [`Event::from_json`](super::Event::from_json): a
//! hand-rolled scanner for the flat event object producers send.
//!
//! The key design choice: the scanner never decides that an event is bad.
//! It accepts a strict subset of JSON (one object of scalar values, strings
//! without escapes or control characters, each known field at most once)
//! and returns the same [`Fields`] serde_json's derived decoder would; on
//! anything outside that subset (an escape, a nested value, a duplicate
//! field, a number that does not fit its field, trailing bytes, invalid
//! UTF-8, ...) it returns `None` and the caller decodes with serde_json,
//! whose verdict and error text stand. So every error message of
//! `docs/events.md` comes from one place, and the scanner only has to be
//! right about what it accepts, which the tests check against serde_json on
//! generated and mutated inputs.
//!
//! Prices go through serde_json's own number parser (on the number's bytes
//! alone), so a price decodes to the same `f64` bit for bit.

use std::borrow::Cow;

use super::{Field, Fields};

/// Integers with more digits than this leave the fast path (an `i64` holds
/// 18 digits whatever they are).
const MAX_INT_DIGITS: usize = 18;

/// The fields of `bytes`, or `None` when serde_json must decide.
pub(super) fn scan(bytes: &[u8]) -> Option<Fields<'_>> {
    // One UTF-8 check of the whole message (ASCII runs a word at a time);
    // strings are then slices of it, cut at quotes (char boundaries).
    let text = std::str::from_utf8(bytes).ok()?;
    let mut s = Scanner {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    let mut f = Fields::default();
    // Fields seen, as bits in the order of `Field` (a duplicate leaves).
    let mut seen = 0u16;
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if !s.eat_if(b'}') {
        loop {
            s.ws();
            let key = s.key()?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            if let Some(k) = key {
                let bit = 1u16 << k as u16;
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                s.field(k, &mut f)?;
            } else {
                s.skip_value()?;
            }
            s.ws();
            match s.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.ws();
    (s.pos == bytes.len()).then_some(f)
}

impl Field {
    /// The field named `name`: its bytes (at most 8) read as one
    /// little-endian word, so a name is matched with one comparison. Names
    /// hold no NUL (control characters leave the fast path), so the zero
    /// padding cannot make two names equal.
    #[inline]
    fn named(name: &[u8]) -> Option<Field> {
        if name.len() > 8 {
            return None;
        }
        let mut word = [0u8; 8];
        word[..name.len()].copy_from_slice(name);
        Some(match u64::from_le_bytes(word) {
            SHOP => Field::Shop,
            VISITOR => Field::Visitor,
            ACTION => Field::Action,
            ITEM => Field::Item,
            CATEGORY => Field::Category,
            PRICE => Field::Price,
            QUANTITY => Field::Quantity,
            TAG => Field::Tag,
            TIER => Field::Tier,
            TS => Field::Ts,
            ID => Field::Id,
            _ => return None,
        })
    }
}

/// A field name of at most 8 bytes as the word [`Field::of`] matches.
const fn word(name: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let mut i = 0;
    while i < name.len() {
        bytes[i] = name[i];
        i += 1;
    }
    u64::from_le_bytes(bytes)
}

const SHOP: u64 = word(b"shop");
const VISITOR: u64 = word(b"visitor");
const ACTION: u64 = word(b"action");
const ITEM: u64 = word(b"item");
const CATEGORY: u64 = word(b"category");
const PRICE: u64 = word(b"price");
const QUANTITY: u64 = word(b"quantity");
const TAG: u64 = word(b"tag");
const TIER: u64 = word(b"tier");
const TS: u64 = word(b"ts");
const ID: u64 = word(b"id");

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    /// JSON whitespace, as serde_json skips it.
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    #[inline]
    fn eat(&mut self, b: u8) -> Option<()> {
        (self.next()? == b).then_some(())
    }

    #[inline]
    fn eat_if(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(word.len())?;
        (self.bytes.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// A string's text between its quotes: no escape, no control
    /// character; else `None`.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        let rest = self.bytes.get(start..)?;
        let len = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.pos += len + 1;
        self.text.get(start..start + len)
    }

    /// An object key: `Some(key)` for a known field, `None` inside for another.
    fn key(&mut self) -> Option<Option<Field>> {
        Some(Field::named(self.string()?.as_bytes()))
    }

    /// `null` (absent) or a string.
    fn text(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.peek() == Some(b'n') {
            self.eat_word(b"null")?;
            return Some(None);
        }
        Some(Some(Cow::Borrowed(self.string()?)))
    }

    /// The bytes of a number in JSON's grammar, and whether it is an
    /// integer (no fraction, no exponent).
    fn number(&mut self) -> Option<(&'a [u8], bool)> {
        let start = self.pos;
        self.eat_if(b'-');
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut integer = true;
        if self.eat_if(b'.') {
            integer = false;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.some_digits()?;
        }
        Some((&self.bytes[start..self.pos], integer))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }

    /// `null` or an integer that fits an `i64` with room to spare.
    fn int(&mut self) -> Option<Option<i64>> {
        if self.peek() == Some(b'n') {
            self.eat_word(b"null")?;
            return Some(None);
        }
        let (text, integer) = self.number()?;
        if !integer {
            return None;
        }
        let (negative, digits) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        // serde_json reads `-0` as the float -0.0, which no integer field takes.
        if digits.len() > MAX_INT_DIGITS || (negative && digits == b"0") {
            return None;
        }
        let magnitude = digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        Some(Some(if negative { -magnitude } else { magnitude }))
    }

    /// `null` or a number, parsed by serde_json itself.
    fn float(&mut self) -> Option<Option<f64>> {
        if self.peek() == Some(b'n') {
            self.eat_word(b"null")?;
            return Some(None);
        }
        let (text, _) = self.number()?;
        serde_json::from_slice::<f64>(text).ok().map(Some)
    }

    fn field(&mut self, key: Field, f: &mut Fields<'a>) -> Option<()> {
        match key {
            Field::Shop => f.shop = self.text()?,
            Field::Visitor => f.visitor = self.text()?,
            Field::Action => f.action = self.text()?,
            Field::Item => f.item = self.text()?,
            Field::Category => f.category = self.text()?,
            Field::Tag => f.tag = self.text()?,
            Field::Id => f.id = self.text()?,
            Field::Price => f.price = self.float()?,
            Field::Quantity => f.quantity = self.int()?,
            Field::Tier => f.tier = self.int()?,
            Field::Ts => f.ts = self.int()?,
        }
        Some(())
    }

    /// An unknown field's value: a scalar; anything nested leaves the fast path.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'n' => self.eat_word(b"null"),
            b't' => self.eat_word(b"true"),
            b'f' => self.eat_word(b"false"),
            _ => self.number().map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::Event;
    use super::*;

    /// Both paths agree on the result, price bits and error text included.
    fn agree(bytes: &[u8]) {
        let fast = Event::from_json(bytes);
        let slow = Event::from_json_serde(bytes);
        assert_eq!(fast, slow, "{:?}", String::from_utf8_lossy(bytes));
        if let (Ok(a), Ok(b)) = (&fast, &slow) {
            assert_eq!(a.price.to_bits(), b.price.to_bits());
        }
    }

    /// The events of `docs/events.md` take the fast path, and decode as serde_json decodes them.
    #[test]
    fn the_documented_events_take_the_fast_path() {
        for json in [
            r#"{"shop":"demo-apparel","visitor":"v-1","action":"view","item":"sku-001","category":"tops","ts":1794000000000}"#,
            r#"{"shop":"demo-apparel","visitor":"v-1","action":"purchase","item":"sku-101","category":"tops","price":129.0,"quantity":1,"id":"order-7-line-1","ts":1794000900000}"#,
            r#"{"shop":"demo-apparel","visitor":"v-1","action":"tag","tag":"price_sensitive","ts":1794000000000}"#,
            r#"{"shop":"demo-apparel","visitor":"v-1","action":"member","tier":4,"ts":1794000000000}"#,
            " {\n\t\"shop\" : \"s\" , \"visitor\":\"v\",\"action\":\"view\",\"item\":\"i\",\"ts\":1,\"extra\":[]} ",
        ] {
            if !json.contains("extra") {
                assert!(scan(json.as_bytes()).is_some(), "{json}");
            }
            agree(json.as_bytes());
        }
    }

    /// What the scanner leaves to serde_json: each still decodes (or is
    /// rejected) exactly as before.
    #[test]
    fn inputs_outside_the_fast_path_fall_back() {
        for json in [
            "",
            "null",
            "[1]",
            "{",
            "{}",
            "{} x",
            r#"{"shop":"s","shop":"t","visitor":"v","action":"view","item":"i","ts":1}"#,
            r#"{"shop":"s\u0041","visitor":"v","action":"view","item":"i","ts":1}"#,
            r#"{"sh\u006fp":"s","visitor":"v","action":"view","item":"i","ts":1}"#,
            r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":1.0}"#,
            r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":1e3}"#,
            r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":01}"#,
            r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":-0}"#,
            r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":9223372036854775807}"#,
            r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":9223372036854775808}"#,
            r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":"1"}"#,
            r#"{"shop":"s","visitor":"v","action":"view","item":7,"ts":1}"#,
            r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":1,}"#,
            r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":1,"x":{"a":[1,{"b":null}]}}"#,
            r#"{"shop":"s","visitor":"v","action":"purchase","item":"i","price":1e400,"ts":1}"#,
            r#"{"shop":"s","visitor":"v","action":"purchase","item":"i","price":0.1e1,"quantity":null,"ts":1}"#,
            r#"{"shop":"s","visitor":"v","action":"purchase","item":"i","price":12345678901234567890123,"ts":1}"#,
            r#"{"shop":"s","visitor":"v","action":"view","item":"i","price":-0.0,"ts":1}"#,
            r#"{"shop":"s","visitor":"v","action":"view","item":"i","ts":1,"x":tru}"#,
            r#"{"shop":null,"visitor":"v","action":"view","item":"i","ts":1}"#,
            "{\"shop\":\"s\u{1}\",\"visitor\":\"v\",\"action\":\"view\",\"item\":\"i\",\"ts\":1}",
        ] {
            agree(json.as_bytes());
        }
        agree(b"{\"shop\":\"s\xff\",\"visitor\":\"v\",\"action\":\"view\",\"item\":\"i\",\"ts\":1}");
        agree(b"\xef\xbb\xbf{\"shop\":\"s\",\"visitor\":\"v\",\"action\":\"view\",\"item\":\"i\",\"ts\":1}");
    }

    /// JSON values of every kind the scanner meets, valid or not.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just(r#"{"a":[1,"\n"]}"#.to_string()),
            Just(r#""a\"b""#.to_string()),
            Just(r#""\ud800""#.to_string()),
            Just("\"\"".to_string()),
            Just("nul".to_string()),
            prop::sample::select(vec![
                "view", "cart", "favorite", "purchase", "tag", "untag", "member", "buy"
            ])
            .prop_map(|a| format!("\"{a}\"")),
            "[a-z0-9é-]{0,6}".prop_map(|s| format!("\"{s}\"")),
            any::<i64>().prop_map(|n| n.to_string()),
            (0i64..2_000_000_000_000).prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|x| x.to_string()),
            (0u32..100_000, 0u32..1000).prop_map(|(a, b)| format!("{a}.{b}")),
            "-?[0-9]{1,25}(\\.[0-9]{0,3})?([eE][+-]?[0-9]{0,4})?",
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "shop",
            "visitor",
            "action",
            "item",
            "category",
            "price",
            "quantity",
            "tag",
            "tier",
            "ts",
            "id",
            "x",
            "ids",
            "",
            "categories",
            "visitors",
            "tsx",
        ])
        .prop_map(|k| k.to_string())
    }

    fn ws() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", "", "", " ", "\n\t", "\r"]).prop_map(|w| w.to_string())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Generated objects, mostly valid events, then a byte changed,
        /// inserted or cut: both paths agree on every one.
        #[test]
        fn fast_and_serde_paths_agree(
            base in (
                Just(r#""shop":"s","visitor":"v","ts":1"#.to_string()),
                prop::collection::vec((ws(), key(), ws(), ws(), value(), ws()), 0..6),
            ),
            edit in prop::option::of((any::<prop::sample::Index>(), any::<u8>(), 0u8..3)),
        ) {
            let (head, fields) = base;
            let mut json = format!("{{{head}");
            for (w1, k, w2, w3, v, w4) in &fields {
                json.push_str(&format!(",{w1}\"{k}\"{w2}:{w3}{v}{w4}"));
            }
            json.push('}');
            let mut bytes = json.into_bytes();
            if let Some((at, byte, how)) = edit {
                let i = at.index(bytes.len());
                match how {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => bytes.truncate(i),
                }
            }
            agree(&bytes);
        }
    }
}
