//! Exposures: the decisions a visitor was given, as the index keeps them.
//!
//! Every decision is a logged offer (the server's decision log); every
//! replica applies the log to its index with [`ShopIndex::apply_exposure`],
//! so `offered(...)` atoms and the lift report see every replica's
//! decisions. An exposure names the banner shown, the benefit offered and
//! the entries the visitor was held out of (their control groups).
//!
//! Like behavior, exposures are kept in two shapes:
//!
//! * **Columns**: per entry (a benefit or a banner id, interned) and per
//!   day of the shop, a bitmap of the visitors it was offered to and a
//!   bitmap of the visitors held out of it. Audience sizes of `offered(Nd)`
//!   and the lift report's candidate groups are unions of these.
//! * **Rows**: per visitor profile, the sorted, unique facts
//!   `(hour, entry, held_out)`. Hours, not days: `offered(12h)` and the lift
//!   report's conversion window (a purchase within W after the first
//!   exposure) are answered to the hour from the rows.
//!
//! Applying is idempotent and order-insensitive (facts and bits are sets):
//! a record applied twice, or late, changes nothing, or the same as in
//! order. A record is bounded ([`MAX_HELD_OUT`], [`MAX_ID_BYTES`]) and each
//! shop interns at most [`MAX_ENTRIES`] distinct banner and benefit ids;
//! past a bound the record is refused whole ([`Exposure::check`]).
//! Exposures expire with the rest of the index (400 days).

use dashmap::DashMap;
use roaring::RoaringBitmap;

use crate::claims::ClaimLedger;
use crate::index::exposures::{Exposures, Fact, BANNER_BIT};
use crate::index::{insert_sorted, Interner, Profile, ShopIndex};
use crate::rules::plan::Offers;
use crate::rules::Slot;
use crate::time::{hour_of, HourRange, Zone, HOUR_MS, MAX_NOW_MS};

/// Most entries one record may list as held out: as many as a rule file
/// may give a holdout, so a decision's record always lists them all.
pub const MAX_HELD_OUT: usize = crate::rules::MAX_HOLDOUT_ENTRIES;
/// Longest visitor, banner or benefit id in a record, in bytes.
pub const MAX_ID_BYTES: usize = 512;
pub use crate::index::exposures::MAX_ENTRIES;

/// One logged decision as the index applies it (the decision log's record, section "Decision log").
#[derive(Debug, Clone, Copy)]
pub struct Exposure<'a> {
    /// When the decision was made (ms since the epoch).
    pub ts_ms: i64,
    /// The visitor; never empty (anonymous decisions are not logged).
    pub visitor: &'a str,
    /// The banner shown.
    pub banner: Option<&'a str>,
    /// The benefit offered.
    pub benefit: Option<&'a str>,
    /// Entries the visitor was held out of (`Slot::Banner` or `Slot::Benefit`).
    pub held_out: &'a [(Slot, &'a str)],
}

/// Why an exposure record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExposureError {
    /// The visitor id is empty.
    #[error("exposure without a visitor id")]
    MissingVisitor,
    /// An id is empty or longer than [`MAX_ID_BYTES`].
    #[error("exposure {what} id is empty or longer than {MAX_ID_BYTES} bytes")]
    BadId {
        /// Which id: `visitor`, `banner`, `benefit` or `held_out`.
        what: &'static str,
    },
    /// More than [`MAX_HELD_OUT`] held-out entries.
    #[error("exposure lists {0} held-out entries, more than the limit of {MAX_HELD_OUT}")]
    TooManyHeldOut(usize),
    /// A held-out entry of the items slot, which has no holdout.
    #[error("exposure holds a visitor out of the items slot, which has no holdout")]
    HeldOutOfItems,
    /// The instant is outside `0..=MAX_NOW_MS`.
    #[error("exposure instant {0} ms is outside 0..={MAX_NOW_MS}")]
    BadInstant(i64),
    /// The shop already keeps exposures of [`MAX_ENTRIES`] distinct ids of that slot.
    #[error("the shop keeps exposures of {MAX_ENTRIES} distinct ids already")]
    TooManyEntries,
}

impl Exposure<'_> {
    /// Checks the record's bounds (the shop-wide [`MAX_ENTRIES`] is checked when applied).
    pub fn check(&self) -> Result<(), ExposureError> {
        if self.visitor.is_empty() {
            return Err(ExposureError::MissingVisitor);
        }
        let bad = |id: &str| id.is_empty() || id.len() > MAX_ID_BYTES;
        if self.visitor.len() > MAX_ID_BYTES {
            return Err(ExposureError::BadId { what: "visitor" });
        }
        if self.banner.is_some_and(bad) {
            return Err(ExposureError::BadId { what: "banner" });
        }
        if self.benefit.is_some_and(bad) {
            return Err(ExposureError::BadId { what: "benefit" });
        }
        if self.held_out.len() > MAX_HELD_OUT {
            return Err(ExposureError::TooManyHeldOut(self.held_out.len()));
        }
        for (slot, id) in self.held_out {
            if *slot == Slot::Items {
                return Err(ExposureError::HeldOutOfItems);
            }
            if bad(id) {
                return Err(ExposureError::BadId { what: "held_out" });
            }
        }
        if !(0..=MAX_NOW_MS).contains(&self.ts_ms) {
            return Err(ExposureError::BadInstant(self.ts_ms));
        }
        Ok(())
    }
}

impl Profile {
    /// Inserts an exposure fact; false when it was already there.
    pub(crate) fn insert_exposure(&mut self, fact: Fact) -> bool {
        insert_sorted(self.exposures_mut(), fact)
    }

    /// Whether a fact in `range` passes `keep` (newest first).
    #[inline]
    pub(crate) fn any_exposure(&self, range: HourRange, keep: impl FnMut(&Fact) -> bool) -> bool {
        self.exposures()
            .iter()
            .rev()
            .skip_while(|f| f.hour > range.last)
            .take_while(|f| f.hour >= range.first)
            .any(keep)
    }
}

impl ShopIndex {
    /// Applies one logged decision of this shop: idempotent, in any order.
    /// Returns whether the index changed; false for a duplicate and for a
    /// record [`Exposure::check`] refuses or that would intern more than
    /// [`MAX_ENTRIES`] ids (the caller counts those).
    pub fn apply_exposure(&self, e: &Exposure<'_>) -> bool {
        self.try_apply_exposure(e).unwrap_or(false)
    }

    /// [`ShopIndex::apply_exposure`], saying why a record is refused:
    /// `Ok(changed)`, or the bound it crosses, so that the caller can count
    /// it as rejected rather than applied.
    pub fn try_apply_exposure(&self, e: &Exposure<'_>) -> Result<bool, ExposureError> {
        e.check()?;
        let columns = &self.exposures;
        // On the shop's clock, as its events are: windows and conversion
        // windows compare like with like.
        let hour = hour_of(self.clock_ms(e.ts_ms));
        let mut facts = [Fact {
            hour,
            entry: 0,
            held_out: false,
        }; MAX_HELD_OUT + 2];
        let mut n = 0;
        let offered = [(Slot::Banner, e.banner), (Slot::Benefit, e.benefit)];
        let listed = offered
            .iter()
            .filter_map(|&(slot, id)| Some((slot, id?, false)))
            .chain(e.held_out.iter().map(|&(slot, id)| (slot, id, true)));
        // Refused whole past the bound on ids: nothing interned first.
        let new = |interner: &Interner, slot| {
            let unknown = |&(s, id, _): &(Slot, &str, bool)| s == slot && interner.get(id).is_none();
            listed.clone().filter(unknown).count() as u32
        };
        if columns.benefits.len() + new(&columns.benefits, Slot::Benefit) > MAX_ENTRIES
            || columns.banners.len() + new(&columns.banners, Slot::Banner) > MAX_ENTRIES
        {
            return Err(ExposureError::TooManyEntries);
        }
        for (slot, id, held_out) in listed {
            let Some(entry) = columns.intern(slot, id) else {
                return Err(ExposureError::TooManyEntries);
            };
            facts[n] = Fact { hour, entry, held_out };
            n += 1;
        }
        if n == 0 {
            return Ok(false);
        }
        let vid = self.visitors.intern(e.visitor);
        let day = day_of_hour(hour);
        let mut new = [false; MAX_HELD_OUT + 2];
        self.with_profile_mut(vid, |profile| {
            for (fact, new) in facts[..n].iter().zip(new.iter_mut()) {
                *new = profile.insert_exposure(*fact);
            }
        });
        // A known fact means its bit is already set.
        for (fact, _) in facts[..n].iter().zip(new).filter(|(_, new)| *new) {
            self.note_day(day);
            columns.set(day, fact, vid);
        }
        Ok(new.iter().any(|&b| b))
    }
}

/// The shop's day of an hour: the day columns' key.
pub(crate) fn day_of_hour(hour: u32) -> u32 {
    ShopIndex::today(i64::from(hour) * HOUR_MS)
}

/// Whether a grant at instant `t` falls in `range`, hours of the shop's
/// clock in `zone` (its index's zone, else its rule set's).
pub(crate) fn grant_in(zone: &Zone, range: HourRange, t: i64) -> bool {
    range.contains(hour_of(zone.clock_ms(t)))
}

/// The keys of the entries `offers` names that the shop has exposures of;
/// `None` for any benefit.
pub(crate) fn keys_of(shop: &ShopIndex, offers: &Offers) -> Option<Vec<u32>> {
    let mut keys = Vec::new();
    each_key(shop, offers, |k| keys.push(k)).then_some(keys)
}

/// Calls `f` with the key of each entry `offers` names that the shop has
/// exposures of; false (and no call) for any benefit.
fn each_key(shop: &ShopIndex, offers: &Offers, f: impl FnMut(u32)) -> bool {
    let ex = &shop.exposures;
    match offers {
        Offers::AnyBenefit => return false,
        Offers::Benefits { ids, .. } => ids.iter().filter_map(|id| ex.key(Slot::Benefit, id)).for_each(f),
        Offers::Banner(id) => ex.key(Slot::Banner, id).into_iter().for_each(f),
    }
    true
}

/// Entries of a `kind=` that a decision checks without allocating.
const FEW: usize = 8;

/// `offered(...)` for one visitor: a fact in `range` of an entry `offers`
/// names, not held out. Allocates nothing for up to [`FEW`] entries.
pub(crate) fn offered(shop: &ShopIndex, p: &Profile, range: HourRange, offers: &Offers) -> bool {
    if p.exposures().is_empty() {
        return false;
    }
    let mut few = [0u32; FEW];
    let mut n = 0;
    let mut many = Vec::new();
    let listed = each_key(shop, offers, |k| {
        if n < FEW {
            few[n] = k;
            n += 1;
        } else {
            if many.is_empty() {
                many.extend_from_slice(&few);
            }
            many.push(k);
        }
    });
    let keys = match (listed, many.is_empty()) {
        (false, _) => None,
        (true, true) => Some(&few[..n]),
        (true, false) => Some(&many[..]),
    };
    offered_in(p, range, keys)
}

/// Whether `p` was offered, within `range`, an entry of `keys` (any benefit with `None`).
pub(crate) fn offered_in(p: &Profile, range: HourRange, keys: Option<&[u32]>) -> bool {
    match keys {
        None => p.any_exposure(range, |f| !f.held_out && !f.is_banner()),
        Some(keys) => !keys.is_empty() && p.any_exposure(range, |f| !f.held_out && keys.contains(&f.entry)),
    }
}

/// The benefit ids `claimed(...)` asks the ledger about (`None`: any);
/// `Err(())` when it can hold for nobody.
pub(crate) fn claimed_ids(offers: &Offers) -> Result<Option<&[std::sync::Arc<str>]>, ()> {
    match offers {
        Offers::AnyBenefit => Ok(None),
        Offers::Benefits { ids, .. } if ids.is_empty() => Err(()),
        Offers::Benefits { ids, .. } => Ok(Some(&ids[..])),
        Offers::Banner(_) => Err(()),
    }
}

/// `claimed(...)` for one visitor: a grant in `range` of a benefit `offers`
/// names (any benefit without a filter); never for an anonymous visitor.
pub(crate) fn claimed(
    ledger: &dyn ClaimLedger,
    (zone, shop): (&Zone, &str),
    visitor: &str,
    range: HourRange,
    offers: &Offers,
) -> bool {
    let Ok(benefits) = claimed_ids(offers) else {
        return false;
    };
    !visitor.is_empty() && ledger.granted(shop, visitor, benefits, &|t| grant_in(zone, range, t))
}

// ---------------------------------------------------------------- snapshot

/// The names of an interner in id order, cut at the first id not visible yet.
fn capture(interner: &Interner) -> Vec<Box<str>> {
    let mut slots: Vec<Option<Box<str>>> = vec![None; interner.len() as usize];
    interner.for_each(|name, id| {
        if let Some(slot) = slots.get_mut(id as usize) {
            *slot = Some(name.into());
        }
    });
    slots.into_iter().map_while(|s| s).collect()
}

/// A fact's entry as written: `id << 1 | banner`.
fn entry_code(entry: u32) -> u64 {
    u64::from(entry & !BANNER_BIT) << 1 | u64::from(entry & BANNER_BIT != 0)
}

/// Encodes the body of a shop's EXPOSURES snapshot section (format in
/// `snapshot.rs`); `None` when the shop has no exposures. Like the
/// profiles, each shard is read under its lock at its own instant; facts of
/// entries and visitors interned after their dictionaries were captured are
/// left out (they are newer than the snapshot).
pub(crate) fn encode_section(shop: &ShopIndex) -> Option<Vec<u8>> {
    use crate::codec::{begin_len, end_len, Put};
    use crate::index::{SHARDS, SHARD_BITS};
    let ex = &shop.exposures;
    if ex.benefits.len() == 0 && ex.banners.len() == 0 {
        return None;
    }
    let benefits = capture(&ex.benefits);
    let banners = capture(&ex.banners);
    let visitors = shop.visitor_count();
    let keeps = |f: &Fact| {
        let id = f.entry & !BANNER_BIT;
        id < if f.is_banner() { banners.len() } else { benefits.len() } as u32
    };
    let mut out = Vec::new();
    out.put_str(shop.name());
    out.put_u32(visitors);
    out.put_u32(benefits.len() as u32);
    out.put_u32(banners.len() as u32);
    for names in [&benefits, &banners] {
        let at = begin_len(&mut out);
        for name in names {
            out.put_str(name);
        }
        end_len(&mut out, at);
    }
    let at = begin_len(&mut out);
    for shard in 0..SHARDS {
        shop.with_shard(shard, |profiles| {
            for (slot, p) in profiles.iter().enumerate() {
                let vid = (slot << SHARD_BITS | shard) as u64;
                let n = p.exposures().iter().filter(|f| keeps(f)).count();
                if n == 0 || vid >= u64::from(visitors) {
                    continue;
                }
                out.put_varint(vid);
                out.put_varint(n as u64);
                let mut hour = 0;
                for f in p.exposures().iter().filter(|f| keeps(f)) {
                    out.put_varint(u64::from(f.hour - hour));
                    hour = f.hour;
                    out.put_varint(entry_code(f.entry) << 1 | u64::from(f.held_out));
                }
            }
        });
    }
    end_len(&mut out, at);
    Some(out)
}

/// Decodes an EXPOSURES section body into `index`, whose SHOP sections are
/// already decoded; every byte is validated (ids against their
/// dictionaries, facts sorted and unique, each visitor once).
pub(crate) fn decode_section(
    index: &crate::index::Index,
    mut r: crate::codec::Reader<'_>,
) -> Result<(), crate::codec::Error> {
    let name = r.str()?;
    let Some(shop) = index.shop(name) else {
        return Err(r.error("exposures of a shop without a SHOP section"));
    };
    if shop.exposures.benefits.len() > 0 || shop.exposures.banners.len() > 0 {
        return Err(r.error("duplicate EXPOSURES section"));
    }
    let visitors = r.u32()?;
    let counts = [r.u32()?, r.u32()?];
    let mut dictionaries = Vec::with_capacity(2);
    for count in counts {
        let mut block = block(&mut r)?;
        let count = block.check_count(count.into(), 1)?;
        if count > MAX_ENTRIES as usize {
            return Err(block.error("more entries than an index keeps"));
        }
        let mut names = Vec::with_capacity(count);
        for _ in 0..count {
            names.push(block.str()?);
        }
        block.finish()?;
        let interner = Interner::from_names(names.into_iter()).map_err(|_| block.error("duplicate entry id"))?;
        dictionaries.push(interner);
    }
    let mut rows = block(&mut r)?;
    r.finish()?;
    let (Some(banners), Some(benefits)) = (dictionaries.pop(), dictionaries.pop()) else {
        return Err(r.error("missing entry dictionaries"));
    };
    let known = shop.visitor_count();
    let mut seen = RoaringBitmap::new();
    let mut facts = Vec::new();
    while !rows.is_empty() {
        let vid = rows.varint()?;
        if vid >= u64::from(visitors) || !seen.insert(vid as u32) {
            return Err(rows.error("exposure visitor out of range or repeated"));
        }
        let n = rows.count(2)?;
        facts.clear();
        let mut hour: u32 = 0;
        for _ in 0..n {
            hour = hour
                .checked_add(rows.varint_u32()?)
                .ok_or_else(|| rows.error("exposure hour out of range"))?;
            let code = rows.varint()?;
            let (held_out, banner, id) = (code & 1 == 1, code >> 1 & 1 == 1, code >> 2);
            let limit = if banner { banners.len() } else { benefits.len() };
            if id >= u64::from(limit) {
                return Err(rows.error("exposure entry out of range"));
            }
            let entry = id as u32 | if banner { BANNER_BIT } else { 0 };
            let fact = Fact { hour, entry, held_out };
            if facts.last().is_some_and(|last| *last >= fact) {
                return Err(rows.error("exposure facts out of order"));
            }
            facts.push(fact);
        }
        // Visitors interned after the SHOP section's dictionary: newer than the snapshot.
        if vid as u32 >= known {
            continue;
        }
        shop.with_profile_mut(vid as u32, |p| *p.exposures_mut() = facts.clone());
    }
    let columns = Exposures {
        benefits,
        banners,
        days: DashMap::default(),
    };
    // Columns from the rows, as the other bitmaps are rebuilt on load.
    for vid in seen.iter().filter(|&v| v < known) {
        shop.with_profile(vid, |p| {
            for f in p.map_or(&[][..], |p| p.exposures()) {
                columns.set(day_of_hour(f.hour), f, vid);
            }
        });
    }
    // The shop is shared already: move the columns in field by field.
    let ex = &shop.exposures;
    // Both shop dictionaries are empty (checked above): interning the names
    // in id order gives each its id.
    for (from, to) in [(&columns.benefits, &ex.benefits), (&columns.banners, &ex.banners)] {
        for name in capture(from) {
            to.intern(&name);
        }
    }
    for (key, days) in columns.days.into_iter() {
        ex.days.insert(key, days);
    }
    Ok(())
}

/// A u64-length-prefixed block, as a reader of its own.
fn block<'a>(r: &mut crate::codec::Reader<'a>) -> Result<crate::codec::Reader<'a>, crate::codec::Error> {
    let n = r.u64()?;
    if n > r.remaining() as u64 {
        return Err(r.error("block runs past the end of the payload"));
    }
    r.sub(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::DAY_MS;

    const T: i64 = 20_000 * DAY_MS + 5 * 3_600_000;

    fn exposure<'a>(visitor: &'a str, ts_ms: i64, held_out: &'a [(Slot, &'a str)]) -> Exposure<'a> {
        Exposure {
            ts_ms,
            visitor,
            banner: Some("gold"),
            benefit: Some("coupon"),
            held_out,
        }
    }

    fn facts(shop: &ShopIndex, visitor: &str) -> Vec<Fact> {
        let vid = shop.visitor_id(visitor).unwrap();
        shop.with_profile(vid, |p| p.unwrap().exposures().to_vec())
    }

    fn column(shop: &ShopIndex, slot: Slot, id: &str, held_out: bool) -> Vec<(u32, Vec<u32>)> {
        let key = shop.exposures.key(slot, id).unwrap();
        let days = shop.exposures.days.get(&key).unwrap();
        days.group(held_out)
            .iter()
            .map(|(d, b)| (*d, b.iter().collect()))
            .collect()
    }

    #[test]
    fn applying_twice_or_out_of_order_gives_the_same_index() {
        let held = [(Slot::Benefit, "points")];
        let records = [
            exposure("a", T, &held),
            exposure("a", T + DAY_MS, &[]),
            exposure("b", T + 30 * 60_000, &[]),
        ];
        let forward = ShopIndex::new("s");
        let mut changed = Vec::new();
        for r in records.iter().chain(records.iter()) {
            changed.push(forward.apply_exposure(r));
        }
        assert_eq!(changed, [true, true, true, false, false, false]);
        let backward = ShopIndex::new("s");
        for r in records.iter().rev() {
            assert!(backward.apply_exposure(r));
        }
        for v in ["a", "b"] {
            assert_eq!(facts(&forward, v), facts(&backward, v));
        }
        assert_eq!(
            facts(&forward, "a").len(),
            5,
            "gold, coupon, points held out; gold, coupon a day later"
        );
        let day = ShopIndex::today(T);
        let a = forward.visitor_id("a").unwrap();
        let b = forward.visitor_id("b").unwrap();
        assert_eq!(
            column(&forward, Slot::Benefit, "coupon", false),
            [(day, vec![a, b]), (day + 1, vec![a])]
        );
        assert_eq!(column(&forward, Slot::Benefit, "points", true), [(day, vec![a])]);
        assert_eq!(column(&forward, Slot::Banner, "gold", false).len(), 2);
    }

    #[test]
    fn records_past_a_bound_are_refused_whole() {
        let shop = ShopIndex::new("s");
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let over = [(Slot::Benefit, "p"); MAX_HELD_OUT + 1];
        let cases: [(Exposure<'_>, ExposureError); 6] = [
            (exposure("", T, &[]), ExposureError::MissingVisitor),
            (exposure(&long, T, &[]), ExposureError::BadId { what: "visitor" }),
            (
                Exposure {
                    benefit: Some(&long),
                    ..exposure("a", T, &[])
                },
                ExposureError::BadId { what: "benefit" },
            ),
            (exposure("a", T, &over), ExposureError::TooManyHeldOut(MAX_HELD_OUT + 1)),
            (exposure("a", T, &[(Slot::Items, "x")]), ExposureError::HeldOutOfItems),
            (exposure("a", -1, &[]), ExposureError::BadInstant(-1)),
        ];
        for (record, error) in cases {
            assert_eq!(record.check(), Err(error.clone()));
            assert!(!shop.apply_exposure(&record), "{error}");
        }
        assert_eq!(shop.visitor_count(), 0, "a refused record interns nothing");
        assert_eq!(
            ExposureError::TooManyHeldOut(65).to_string(),
            "exposure lists 65 held-out entries, more than the limit of 64"
        );
        let nothing = Exposure {
            banner: None,
            benefit: None,
            ..exposure("a", T, &[])
        };
        assert!(!shop.apply_exposure(&nothing));
        let at_bound = [(Slot::Benefit, "p"); MAX_HELD_OUT];
        assert!(shop.apply_exposure(&exposure("a", T, &at_bound)));
    }

    #[test]
    fn expire_drops_exposures_older_than_400_days() {
        let shop = ShopIndex::new("s");
        let now = T + 1_000 * DAY_MS;
        shop.apply_exposure(&exposure("a", now - 401 * DAY_MS, &[]));
        shop.apply_exposure(&exposure("a", now - 399 * DAY_MS, &[]));
        shop.expire(now);
        assert_eq!(facts(&shop, "a").len(), 2);
        assert_eq!(column(&shop, Slot::Benefit, "coupon", false).len(), 1);
    }

    #[test]
    fn a_snapshot_round_trip_keeps_rows_and_rebuilds_columns() {
        let index = crate::index::Index::new();
        let shop = index.shop_or_create("s");
        let held = [(Slot::Benefit, "points"), (Slot::Banner, "silver")];
        shop.apply_exposure(&exposure("a", T, &held));
        shop.apply_exposure(&exposure("b", T + 3 * DAY_MS, &[]));
        shop.apply_exposure(&exposure("a", T + 2 * 3_600_000, &[]));
        index.shop_or_create("quiet");
        let bytes = crate::snapshot::encode(&index, b"m");
        let back = crate::snapshot::decode(&bytes).unwrap().index;
        let restored = back.shop("s").unwrap();
        for v in ["a", "b"] {
            assert_eq!(facts(&restored, v), facts(&shop, v));
        }
        for (slot, id, held_out) in [
            (Slot::Benefit, "coupon", false),
            (Slot::Banner, "gold", false),
            (Slot::Benefit, "points", true),
            (Slot::Banner, "silver", true),
        ] {
            assert_eq!(column(&restored, slot, id, held_out), column(&shop, slot, id, held_out));
        }
        assert_eq!(back.shop("quiet").unwrap().exposures.days.len(), 0);
        // Applying again after the load changes nothing; a new fact interns on.
        assert!(!restored.apply_exposure(&exposure("a", T, &held)));
        assert!(restored.apply_exposure(&Exposure {
            benefit: Some("new"),
            ..exposure("c", T, &[])
        }));
        assert_eq!(restored.exposures.key(Slot::Benefit, "new"), Some(2));
        // Every truncation of the section is refused, never a panic.
        let plain = crate::snapshot::encode(&crate::index::Index::new(), b"m");
        assert!(bytes.len() > plain.len());
        for cut in 1..40 {
            let mut damaged = bytes[..bytes.len() - cut].to_vec();
            crate::snapshot::reseal(&mut damaged);
            assert!(crate::snapshot::decode(&damaged).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn a_kind_of_many_benefits_is_checked_whole() {
        let shop = ShopIndex::new("s");
        let ids: Vec<std::sync::Arc<str>> = (0..FEW + 3).map(|i| format!("c{i}").into()).collect();
        let offers = Offers::Benefits {
            kind: Some("coupon".into()),
            ids: ids.clone().into(),
        };
        let range = HourRange {
            first: hour_of(T),
            last: hour_of(T),
        };
        for (i, id) in ids.iter().enumerate() {
            shop.apply_exposure(&Exposure {
                benefit: Some(id),
                ..exposure(&format!("v{i}"), T, &[])
            });
        }
        for (i, id) in ids.iter().enumerate() {
            let vid = shop.visitor_id(&format!("v{i}")).unwrap();
            assert!(
                shop.with_profile(vid, |p| offered(&shop, p.unwrap(), range, &offers)),
                "{id}"
            );
        }
        shop.apply_exposure(&Exposure {
            benefit: Some("other"),
            ..exposure("w", T, &[])
        });
        let vid = shop.visitor_id("w").unwrap();
        assert!(!shop.with_profile(vid, |p| offered(&shop, p.unwrap(), range, &offers)));
    }

    #[test]
    fn a_shop_keeps_at_most_max_entries_ids_per_slot() {
        let shop = ShopIndex::new("s");
        for i in 0..MAX_ENTRIES {
            let id = format!("b{i}");
            assert!(shop.apply_exposure(&Exposure {
                banner: None,
                benefit: Some(&id),
                ..exposure("a", T, &[])
            }));
        }
        let past = Exposure {
            banner: Some("fresh-banner"),
            benefit: Some("one-too-many"),
            ..exposure("b", T, &[])
        };
        assert!(!shop.apply_exposure(&past));
        assert_eq!(shop.exposures.key(Slot::Banner, "fresh-banner"), None, "refused whole");
        assert!(shop.apply_exposure(&Exposure {
            banner: Some("fresh-banner"),
            benefit: Some("b7"),
            ..exposure("b", T, &[])
        }));
    }
}
