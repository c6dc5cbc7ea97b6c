//! The audience index: per shop, every visitor's behavior in two shapes.
//!
//! * **Columns** answer population questions (audience sizes): roaring
//!   bitmaps of dense visitor ids per action and day (of the shop's clock), per tag, per member
//!   tier, and per item and category (any action) as candidate filters.
//! * **Rows** answer one-visitor questions (decisions): a compact profile per
//!   visitor holding its de-duplicated (hour, action, item, category) entries,
//!   its distinct purchases, tags and tier, so one decision reads one small
//!   record under one shard lock instead of probing hundreds of bitmaps.
//!
//! Both are updated by the same `apply`, idempotently: entries and bitmap
//! bits are sets, purchases are de-duplicated by event id (or by item and
//! timestamp), and tags and tiers keep the value with the latest timestamp,
//! so events may arrive out of order and more than once.
//!
//! Hours and days are the shop's clock hours (`crate::time`, "The
//! clock-hour frame"): a [`ShopIndex`] holds its time zone, fixed when it is
//! created, buckets every event by the clock hour of its `ts`, and converts
//! `now` the same way ([`ShopIndex::clock_ms`]) before a window's range is
//! computed. A UTC shop's clock is the instant itself. Re-bucketing an index
//! into another zone is not possible exactly (an hour bucket does not keep
//! its events' minutes), which is why the zone cannot change after creation.
//!
//! Memory: a shop may know tens of millions of visitors, most of whom did
//! little, so a visitor costs what it holds. Its id lives in an arena
//! interner (`index/interner.rs`: 11-21 bytes plus the id's own), its profile in
//! 32 bytes inline in its shard's array (which grows by an eighth, not
//! double) with the entries in one exact-size block (6 bytes an entry while
//! its items are below 131,072 and categories below 255, 8 bytes below 16.7M
//! items and 2047 categories, else 12) and purchases and tags boxed apart in
//! exact-size blocks, allocated only for the visitors who have them
//! (exposure facts and a wide tier one box further). Roaring grows a
//! container by doubling; [`ShopIndex::compact`], which the server runs
//! every few minutes, re-allocates the bitmaps that stopped changing at
//! their exact size. `cargo bench -p vitrine-benches --bench memory`
//! measures it.
//!
//! Concurrency: visitor profiles live in 256 shards, each behind its own
//! `RwLock`; bitmaps sit behind per-action locks and sharded maps. A decision
//! takes one shared shard lock; nothing on the read path is global. Writers
//! take a profile shard lock first and bitmap locks second; readers never
//! hold a bitmap lock while they take a profile lock. Items (`index/items.rs`)
//! are names -> ids in one map and facts by id in locked shards; apply takes
//! an item's locks outside any profile lock, a decision reads an item's facts
//! by id under its profile's shard lock.

pub(crate) mod exposures;
mod interner;
pub(crate) mod items;
mod line_table;
mod read;

#[cfg(test)]
mod attack17;

pub(crate) use interner::Interner;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use ahash::RandomState;
use dashmap::DashMap;
use parking_lot::RwLock;
use roaring::RoaringBitmap;

use crate::event::{Action, ActionSet, Event};
use crate::hash::stable_hash;
use crate::time::{day_of, HourRange, Window, Zone, MAX_WINDOW_HOURS};
use read::Latest;

/// Marks "no category" in an entry.
pub(crate) const NONE: u32 = u32::MAX;
pub(crate) const SHARD_BITS: u32 = 8;
pub(crate) const SHARDS: usize = 1 << SHARD_BITS;
/// Days of purchase counts kept per item for popularity.
pub(crate) const POPULARITY_DAYS: usize = 8;

/// Inserts `x` into the sorted, unique `v`; false when it was already there.
/// Facts mostly arrive in time order, so the end is checked first.
#[inline]
pub(crate) fn insert_sorted<T: Ord>(v: &mut Vec<T>, x: T) -> bool {
    match v.last() {
        None => v.push(x),
        Some(last) if *last < x => v.push(x),
        _ => match v.binary_search(&x) {
            Ok(_) => return false,
            Err(at) => v.insert(at, x),
        },
    }
    true
}

/// One de-duplicated behavior fact of a visitor, as readers see it (a
/// profile stores it packed in 6, 8 or 12 bytes: see [`Profile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub(crate) hour: u32,
    pub(crate) action: u8,
    pub(crate) item: u32,
    pub(crate) category: u32,
}

/// Hours an entry can hold (a wide entry's `hour << 2 | action` fits a
/// `u32`). Every event's clock hour is far below: year 9999 is hour ~70.4M.
pub(crate) const MAX_ENTRY_HOUR: u32 = (1 << 30) - 1;

/// A profile's `facts` are `u16` words, every packed value high word first,
/// so that comparing word slices compares the values (and the entries).
/// Words before the entries: a `u64` holding [`WIDE`] or [`EIGHT`] (the
/// entries' width; neither: 6 bytes) and, 15 bits per item action, how many
/// hours the action's latest entry lies before the last entry
/// ([`LATEST_NONE`]: no entry of the action; [`LATEST_FAR`]: 32,766 hours
/// or more, found by a scan).
const HEAD: usize = 4;
/// The bit of the head that marks wide (12-byte) entries.
const WIDE: u64 = 1 << 63;
/// The bit of the head that marks narrow (8-byte) entries.
const EIGHT: u64 = 1 << 62;
const LATEST_BITS: u32 = 15;
const LATEST_NONE: u64 = (1 << LATEST_BITS) - 1;
const LATEST_FAR: u64 = LATEST_NONE - 1;
/// Words of a compact entry (48 bits):
/// `hour << 27 | action << 25 | item << 8 | category`.
const COMPACT: usize = 3;
/// Words of a narrow entry (a `u64`): `hour << 37 | action << 35 | item << 11 | category`.
const NARROW: usize = 4;
/// Words of a wide entry: the `u32`s `hour << 2 | action`, item, category.
const WIDE_WORDS: usize = 6;
/// Compact bounds: hour below 2^21 (clock hours until the year 2209), item
/// below 2^17 (131,072), category below 255; the code 255 is "no category".
const COMPACT_HOURS: u32 = 1 << 21;
const COMPACT_ITEMS: u32 = 1 << 17;
const COMPACT_NONE: u32 = 0xFF;
/// Narrow bounds: hour below 2^27 (every event's hour), item below 2^24,
/// category below 2047; the code 2047 is "no category" (the "no category"
/// codes sort last, as [`NONE`] does, so entries of every width sort alike).
const NARROW_HOURS: u32 = 1 << 27;
const NARROW_ITEMS: u32 = 1 << 24;
const NARROW_NONE: u32 = 0x7FF;

impl Entry {
    /// The entry in `width` words, `None` when it does not fit them.
    #[inline]
    fn pack(&self, width: usize) -> Option<[u16; WIDE_WORDS]> {
        let action = self.action & 3;
        let code = |none: u32| match self.category {
            NONE => Some(none),
            c if c < none => Some(c),
            _ => None,
        };
        // The low `16 * width` bits of `v`, high word first.
        let split = |v: u64| {
            let w = [(v >> 48) as u16, (v >> 32) as u16, (v >> 16) as u16, v as u16, 0, 0];
            if width == NARROW {
                w
            } else {
                [w[1], w[2], w[3], 0, 0, 0]
            }
        };
        match width {
            WIDE_WORDS => {
                let hour_action = self.hour << 2 | u32::from(action);
                let mut w = [0u16; WIDE_WORDS];
                for (i, x) in [hour_action, self.item, self.category].into_iter().enumerate() {
                    w[2 * i] = (x >> 16) as u16;
                    w[2 * i + 1] = x as u16;
                }
                Some(w)
            }
            NARROW => {
                let category = code(NARROW_NONE)?;
                if self.hour >= NARROW_HOURS || self.item >= NARROW_ITEMS {
                    return None;
                }
                Some(split(
                    u64::from(self.hour) << 37
                        | u64::from(action) << 35
                        | u64::from(self.item) << 11
                        | u64::from(category),
                ))
            }
            _ => {
                let category = code(COMPACT_NONE)?;
                if self.hour >= COMPACT_HOURS || self.item >= COMPACT_ITEMS {
                    return None;
                }
                Some(split(
                    u64::from(self.hour) << 27
                        | u64::from(action) << 25
                        | u64::from(self.item) << 8
                        | u64::from(category),
                ))
            }
        }
    }

    /// The entry packed in `w` (its length is its width).
    #[inline]
    fn unpack(w: &[u16]) -> Entry {
        let two = |a: u16, b: u16| u32::from(a) << 16 | u32::from(b);
        match *w {
            [a, b, c] => {
                let v = u64::from(two(a, b)) << 16 | u64::from(c);
                let category = (v & 0xFF) as u32;
                Entry {
                    hour: (v >> 27) as u32,
                    action: (v >> 25 & 3) as u8,
                    item: (v >> 8 & 0x1_FFFF) as u32,
                    category: if category == COMPACT_NONE { NONE } else { category },
                }
            }
            [a, b, c, d] => {
                let v = u64::from(two(a, b)) << 32 | u64::from(two(c, d));
                let category = (v & 0x7FF) as u32;
                Entry {
                    hour: (v >> 37) as u32,
                    action: (v >> 35 & 3) as u8,
                    item: (v >> 11 & 0xFF_FFFF) as u32,
                    category: if category == NARROW_NONE { NONE } else { category },
                }
            }
            [a, b, c, d, e, f] => {
                let hour_action = two(a, b);
                Entry {
                    hour: hour_action >> 2,
                    action: (hour_action & 3) as u8,
                    item: two(c, d),
                    category: two(e, f),
                }
            }
            // Profiles hold only the widths above.
            _ => Entry {
                hour: 0,
                action: 0,
                item: 0,
                category: NONE,
            },
        }
    }

    /// The hour of the entry packed in `w`.
    #[inline]
    fn hour_of(w: &[u16]) -> u32 {
        let high = match *w {
            [a, b, ..] => u32::from(a) << 16 | u32::from(b),
            _ => 0,
        };
        match w.len() {
            WIDE_WORDS => high >> 2,
            NARROW => high >> 5,
            _ => high >> 11,
        }
    }

    /// The entry packed in `w` as a number that orders entries as they sort.
    #[inline]
    fn rank(w: &[u16]) -> u128 {
        let two = |a: u16, b: u16| u128::from(a) << 16 | u128::from(b);
        match *w {
            [a, b, c] => two(a, b) << 16 | u128::from(c),
            [a, b, c, d] => two(a, b) << 32 | two(c, d),
            [a, b, c, d, e, f] => two(a, b) << 64 | two(c, d) << 32 | two(e, f),
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Purchase {
    pub(crate) key: u64,
    pub(crate) hour: u32,
    pub(crate) item: u32,
    pub(crate) amount: f64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct TagState {
    pub(crate) tag: u32,
    pub(crate) ts: i64,
    pub(crate) present: bool,
}

/// A profile's `tier` word: no member event yet.
const NO_TIER: u64 = 0;
/// A profile's `tier` word: the (ts, tier) pair is in `More::tier`.
const TIER_IN_MORE: u64 = u64::MAX;

/// The facts most visitors never have, boxed apart (one pointer in a
/// profile): 40 bytes plus exact-size blocks of purchases and tags (a
/// visitor with one purchase pays 40 + 24 bytes, not a `Vec`'s 4 slots).
#[derive(Debug, Clone, Default)]
struct More {
    /// Unique by key.
    purchases: Box<[Purchase]>,
    tags: Box<[TagState]>,
    /// Exposure facts and a wide tier: rarer still, boxed once more.
    rare: Option<Box<Rare>>,
}

/// The rarest facts of a visitor.
#[derive(Debug, Clone, Default)]
struct Rare {
    /// Exposure facts (decisions offered and held out), sorted, unique.
    exposures: Vec<exposures::Fact>,
    /// (ts, tier) when it does not pack into the profile's `tier` word.
    tier: Option<(i64, u32)>,
}

/// `items` with `item` appended, re-allocated at its exact size.
fn push_exact<T>(items: &mut Box<[T]>, item: T) {
    let mut v = std::mem::take(items).into_vec();
    v.reserve_exact(1);
    v.push(item);
    *items = v.into_boxed_slice();
}

/// Everything the index knows about one visitor of one shop, in 32 bytes
/// plus exact-size heap blocks, only when there is something to hold.
///
/// * `facts`: empty, or a head (the latest hour of each item action
///   as hours before the last entry, 15 bits each, and the width: 8 bytes)
///   followed by the entries, sorted and unique, all of one width, the
///   smallest that holds every one: compact (6 bytes: an hour before the
///   year 2209, an item below 131,072, a category below 255), narrow (8
///   bytes: an hour below 2^27, an item below 16.7M, a category below 2047)
///   or wide (12 bytes). Items are numbered as a shop first sees them, so
///   a shop's first 131,072 items (and 255 categories) fit 6 bytes.
///   An entry that does not fit the profile's width re-packs the profile in
///   the next width that holds it; only expiry narrows it again.
///   Re-allocated at its exact size on every new entry: a profile holds a few
///   to a few hundred entries, so the copy is small, and no slack is kept.
/// * `tier`: the latest member event packed as `(ts + 1) << 16 | tier`
///   ([`NO_TIER`] before one; [`TIER_IN_MORE`] when the ts is outside
///   `0..=MAX_TS` or the tier does not fit 16 bits).
/// * `more`: purchases and tags (exact-size blocks), and one box further
///   exposure facts and a wide tier.
#[derive(Debug, Clone, Default)]
pub(crate) struct Profile {
    facts: Box<[u16]>,
    tier: u64,
    more: Option<Box<More>>,
}

impl Profile {
    /// The head words as a `u64` (0 when there are no entries).
    #[inline]
    fn head(&self) -> u64 {
        match *self.facts {
            [a, b, c, d, ..] => u64::from(a) << 48 | u64::from(b) << 32 | u64::from(c) << 16 | u64::from(d),
            _ => 0,
        }
    }

    /// Words per entry: compact (also when empty), narrow or wide.
    #[inline]
    fn width(&self) -> usize {
        let head = self.head();
        if head & WIDE != 0 {
            WIDE_WORDS
        } else if head & EIGHT != 0 {
            NARROW
        } else {
            COMPACT
        }
    }

    /// The packed entries.
    #[inline]
    fn packed(&self) -> std::slice::ChunksExact<'_, u16> {
        self.facts.get(HEAD..).unwrap_or_default().chunks_exact(self.width())
    }

    /// How many entries the profile holds.
    #[inline]
    pub(crate) fn entry_count(&self) -> usize {
        self.packed().len()
    }

    /// The entries, sorted (oldest first).
    #[inline]
    pub(crate) fn entries(&self) -> impl DoubleEndedIterator<Item = Entry> + ExactSizeIterator + Clone + '_ {
        self.unpacked(None)
    }

    /// The entries (only those whose hour lies in `range`, found by two
    /// binary searches, with a range), oldest first.
    #[inline]
    pub(crate) fn unpacked(&self, range: Option<HourRange>) -> Entries<'_> {
        let words = self.facts.get(HEAD..).unwrap_or_default();
        match self.width() {
            COMPACT => Entries::Compact(window(words, range).iter()),
            NARROW => Entries::Narrow(window(words, range).iter()),
            _ => Entries::Wide(window(words, range).iter()),
        }
    }

    /// 1 + the hour of the latest entry of `action`, 0 when none.
    #[inline]
    fn latest(&self, action: u8) -> u32 {
        let code = self.head() >> (LATEST_BITS * u32::from(action & 3)) & LATEST_NONE;
        match code {
            LATEST_NONE => 0,
            LATEST_FAR => self
                .entries()
                .rev()
                .find(|e| e.action == action)
                .map_or(0, |e| e.hour + 1),
            d => self
                .packed()
                .next_back()
                .map_or(0, |w| Entry::hour_of(w) + 1 - d as u32),
        }
    }

    /// 1 + the hour of the latest entry of each action, 0 when none: decoded
    /// once for a decision whose atoms ask it several times (see
    /// [`Profile::has_action_in_given`]).
    #[inline]
    pub(crate) fn latest_hours(&self) -> Latest {
        let head = self.head();
        let last = self.packed().next_back().map(Entry::hour_of);
        let mut latest = [0; 4];
        for (action, l) in latest.iter_mut().enumerate() {
            *l = match head >> (LATEST_BITS * action as u32) & LATEST_NONE {
                LATEST_NONE => 0,
                LATEST_FAR => self.latest(action as u8),
                d => last.map_or(0, |h| h + 1 - d as u32),
            };
        }
        latest
    }

    /// The head of entries whose last one is in `last_hour`, with the latest
    /// hours + 1 `latest` (0: none).
    fn make_head(latest: [u32; 4], last_hour: u32, width: usize) -> [u16; HEAD] {
        let mut head = match width {
            WIDE_WORDS => WIDE,
            NARROW => EIGHT,
            _ => 0,
        };
        for (action, l) in latest.into_iter().enumerate() {
            let code = match l {
                0 => LATEST_NONE,
                l => u64::from(last_hour + 1 - l).min(LATEST_FAR),
            };
            head |= code << (LATEST_BITS * action as u32);
        }
        [
            (head >> 48) as u16,
            (head >> 32) as u16,
            (head >> 16) as u16,
            head as u16,
        ]
    }

    /// Distinct purchases (unique by key).
    #[inline]
    pub(crate) fn purchases(&self) -> &[Purchase] {
        self.more.as_deref().map_or(&[], |m| &m.purchases)
    }

    /// Tag states, one per tag ever applied.
    #[inline]
    pub(crate) fn tags(&self) -> &[TagState] {
        self.more.as_deref().map_or(&[], |m| &m.tags)
    }

    /// Exposure facts, sorted and unique.
    #[inline]
    pub(crate) fn exposures(&self) -> &[exposures::Fact] {
        self.rare().map_or(&[], |r| &r.exposures)
    }

    /// The exposure facts, to change (allocating the rare part when absent).
    pub(crate) fn exposures_mut(&mut self) -> &mut Vec<exposures::Fact> {
        &mut self.rare_mut().exposures
    }

    fn more_mut(&mut self) -> &mut More {
        self.more.get_or_insert_with(Box::default)
    }

    fn rare(&self) -> Option<&Rare> {
        self.more.as_deref().and_then(|m| m.rare.as_deref())
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.more_mut().rare.get_or_insert_with(Box::default)
    }

    /// (ts, tier) of the latest member event, `None` before one.
    pub(crate) fn tier_state(&self) -> Option<(i64, u32)> {
        match self.tier {
            NO_TIER => None,
            TIER_IN_MORE => self.rare().and_then(|r| r.tier),
            word => Some(((word >> 16) as i64 - 1, (word & 0xFFFF) as u32)),
        }
    }

    pub(crate) fn set_tier_state(&mut self, state: Option<(i64, u32)>) {
        if let Some(rare) = self.more.as_deref_mut().and_then(|m| m.rare.as_deref_mut()) {
            rare.tier = None;
        }
        self.tier = match state {
            None => NO_TIER,
            Some((ts, tier)) if (0..=crate::event::MAX_TS).contains(&ts) && tier < 0xFFFF => {
                (ts as u64 + 1) << 16 | u64::from(tier)
            }
            Some(wide) => {
                self.rare_mut().tier = Some(wide);
                TIER_IN_MORE
            }
        };
    }

    /// Inserts an entry; false when it was already there.
    pub(crate) fn insert(&mut self, entry: Entry) -> bool {
        if entry.hour > MAX_ENTRY_HOUR {
            return false;
        }
        let mut width = self.width();
        let key = match entry.pack(width) {
            Some(key) => key,
            None => {
                // The first entry that does not fit the profile's width:
                // every entry goes to the next width that holds it.
                width = if width < NARROW && entry.pack(NARROW).is_some() {
                    NARROW
                } else {
                    WIDE_WORDS
                };
                let entries: Vec<Entry> = self.entries().collect();
                self.pack_entries(&entries, width);
                match entry.pack(width) {
                    Some(key) => key,
                    None => return false,
                }
            }
        };
        match width {
            COMPACT => self.insert_packed::<COMPACT>(&entry, &key),
            NARROW => self.insert_packed::<NARROW>(&entry, &key),
            _ => self.insert_packed::<WIDE_WORDS>(&entry, &key),
        }
    }

    /// [`Profile::insert`] of `entry`, packed in `key`, into a profile of
    /// `W`-word entries (so every slice below has a length known when compiled).
    #[inline]
    fn insert_packed<const W: usize>(&mut self, entry: &Entry, key: &[u16; WIDE_WORDS]) -> bool {
        let key = &key[..W];
        let rank = Entry::rank(key);
        let words = self.facts.get(HEAD..).unwrap_or_default();
        let n = words.len() / W;
        let word = |i: usize| Entry::rank(&words[i * W..i * W + W]);
        // Facts mostly arrive in time order: the end first.
        let at = if n == 0 || word(n - 1) < rank {
            n
        } else {
            let (mut lo, mut hi) = (0, n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                match word(mid).cmp(&rank) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => return false,
                }
            }
            lo
        };
        let mut latest = self.latest_hours();
        let mine = &mut latest[entry.action as usize & 3];
        *mine = (*mine).max(entry.hour + 1);
        let last_hour = match n.checked_sub(1) {
            Some(last) if at < n => Entry::hour_of(&words[last * W..last * W + W]),
            _ => entry.hour,
        };
        let split = HEAD + at * W;
        let mut facts = Vec::with_capacity(HEAD + (n + 1) * W);
        facts.extend_from_slice(&Profile::make_head(latest, last_hour, W));
        facts.extend_from_slice(self.facts.get(HEAD..split).unwrap_or_default());
        facts.extend_from_slice(key);
        facts.extend_from_slice(self.facts.get(split..).unwrap_or_default());
        self.facts = facts.into_boxed_slice();
        true
    }

    /// Replaces the entries with `entries` (sorted, unique, hours at most
    /// [`MAX_ENTRY_HOUR`]: the caller checked) and recomputes the latest hours.
    pub(crate) fn set_entries(&mut self, entries: &[Entry]) {
        let fits = |width| entries.iter().all(|e| e.pack(width).is_some());
        let width = [COMPACT, NARROW].into_iter().find(|&w| fits(w)).unwrap_or(WIDE_WORDS);
        self.pack_entries(entries, width);
    }

    /// Stores `entries` (that fit) `width` words each.
    fn pack_entries(&mut self, entries: &[Entry], width: usize) {
        if entries.is_empty() {
            self.facts = Box::default();
            return;
        }
        let mut facts = Vec::with_capacity(HEAD + entries.len() * width);
        facts.extend_from_slice(&[0; HEAD]);
        let mut latest = [0u32; 4];
        let mut last_hour = 0;
        for e in entries {
            if let Some(key) = e.pack(width) {
                facts.extend_from_slice(&key[..width]);
                let l = &mut latest[e.action as usize & 3];
                *l = (*l).max(e.hour + 1);
                last_hour = last_hour.max(e.hour);
            }
        }
        facts[..HEAD].copy_from_slice(&Profile::make_head(latest, last_hour, width));
        self.facts = facts.into_boxed_slice();
    }

    fn add_purchase(&mut self, purchase: Purchase) -> bool {
        if self.purchases().iter().any(|p| p.key == purchase.key) {
            return false;
        }
        push_exact(&mut self.more_mut().purchases, purchase);
        true
    }

    /// Replaces the purchases (unique by key: the caller checked).
    pub(crate) fn set_purchases(&mut self, purchases: Vec<Purchase>) {
        if !purchases.is_empty() || self.more.is_some() {
            self.more_mut().purchases = purchases.into_boxed_slice();
        }
    }

    /// Replaces the tag states (one per tag: the caller checked).
    pub(crate) fn set_tags(&mut self, tags: Vec<TagState>) {
        if !tags.is_empty() || self.more.is_some() {
            self.more_mut().tags = tags.into_boxed_slice();
        }
    }

    /// Applies a tag or untag; returns the new presence when it changed.
    fn set_tag(&mut self, tag: u32, ts: i64, present: bool) -> Option<bool> {
        // At equal timestamps the removal wins, whatever the arrival order.
        let newer = |old: &TagState| (ts, !present) > (old.ts, !old.present);
        let tags = &mut self.more_mut().tags;
        match tags.iter_mut().find(|t| t.tag == tag) {
            Some(state) if newer(state) => {
                let was = state.present;
                state.ts = ts;
                state.present = present;
                (was != present).then_some(present)
            }
            Some(_) => None,
            None => {
                push_exact(tags, TagState { tag, ts, present });
                present.then_some(true)
            }
        }
    }

    /// Applies a member event; returns (old tier, new tier) when the tier changed.
    fn set_tier(&mut self, ts: i64, tier: u32) -> Option<(u32, u32)> {
        let current = self.tier_state();
        let old = current.map_or(0, |(_, t)| t);
        // At equal timestamps the higher tier wins, whatever the arrival order.
        if current.is_none_or(|cur| (ts, tier) > cur) {
            self.set_tier_state(Some((ts, tier)));
            return (old != tier).then_some((old, tier));
        }
        None
    }

    pub(crate) fn tier(&self) -> u32 {
        self.tier_state().map_or(0, |(_, t)| t)
    }

    pub(crate) fn has_tag(&self, tag: u32) -> bool {
        self.tags().iter().any(|t| t.tag == tag && t.present)
    }

    /// Whether an entry of `actions` lies in `range` and passes `keep`.
    #[inline]
    pub(crate) fn any_entry(&self, range: HourRange, mut keep: impl FnMut(&Entry) -> bool) -> bool {
        self.unpacked(Some(range)).rev().any(|e| keep(&e))
    }

    /// Distinct purchases in `range`: (count, spend).
    pub(crate) fn purchases_in(&self, range: HourRange) -> (u32, f64) {
        self.purchases()
            .iter()
            .filter(|p| range.contains(p.hour))
            .fold((0, 0.0), |(n, s), p| (n + 1, s + p.amount))
    }

    /// Whether any entry of `actions` lies in `range`: O(1) when the latest
    /// entry of each action settles it, a scan otherwise.
    #[inline]
    pub(crate) fn has_action_in(&self, actions: ActionSet, range: HourRange) -> bool {
        self.has_action_by(|action| self.latest(action), actions, range)
    }

    fn expire(&mut self, first_hour: u32) {
        if self.entries().next().is_some_and(|e| e.hour < first_hour) {
            let kept: Vec<Entry> = self.entries().filter(|e| e.hour >= first_hour).collect();
            self.set_entries(&kept);
        }
        if let Some(more) = self.more.as_deref_mut() {
            if more.purchases.iter().any(|p| p.hour < first_hour) {
                let kept: Vec<Purchase> = more
                    .purchases
                    .iter()
                    .filter(|p| p.hour >= first_hour)
                    .copied()
                    .collect();
                more.purchases = kept.into_boxed_slice();
            }
            if let Some(rare) = more.rare.as_deref_mut() {
                rare.exposures.retain(|f| f.hour >= first_hour);
            }
        }
    }

    /// The clock hour of the latest entry of `actions` at or before hour
    /// `now_hour` (entries in later hours do not count): O(1) when the
    /// latest entry of each action settles it, a scan from the end otherwise.
    pub(crate) fn latest_until(&self, actions: ActionSet, now_hour: u32) -> Option<u32> {
        let mut best: Option<u32> = None;
        let mut later = false;
        for action in actions.iter() {
            match self.latest(action as u8) {
                0 => {}
                l if l - 1 <= now_hour => best = best.max(Some(l - 1)),
                _ => later = true,
            }
        }
        if later {
            let found = self
                .entries()
                .rev()
                .skip_while(|e| e.hour > now_hour)
                .find(|e| actions.contains(Action::BEHAVIORS[e.action as usize]));
            best = best.max(found.map(|e| e.hour));
        }
        best
    }
}

/// The `W`-word entries in `words` (those whose hour lies in `range`, with one).
#[inline]
fn window<const W: usize>(words: &[u16], range: Option<HourRange>) -> &[[u16; W]] {
    let (chunks, _) = words.as_chunks::<W>();
    match range {
        None => chunks,
        Some(range) => {
            let start = chunks.partition_point(|w| Entry::hour_of(w) < range.first);
            let end = chunks.partition_point(|w| Entry::hour_of(w) <= range.last).max(start);
            &chunks[start..end]
        }
    }
}

/// A profile's entries, unpacked as they are read: one arm per width, so
/// each unpacks words of a size known when compiled.
#[derive(Debug, Clone)]
pub(crate) enum Entries<'a> {
    Compact(std::slice::Iter<'a, [u16; COMPACT]>),
    Narrow(std::slice::Iter<'a, [u16; NARROW]>),
    Wide(std::slice::Iter<'a, [u16; WIDE_WORDS]>),
}

impl Iterator for Entries<'_> {
    type Item = Entry;

    #[inline]
    fn next(&mut self) -> Option<Entry> {
        match self {
            Entries::Compact(it) => it.next().map(|w| Entry::unpack(w)),
            Entries::Narrow(it) => it.next().map(|w| Entry::unpack(w)),
            Entries::Wide(it) => it.next().map(|w| Entry::unpack(w)),
        }
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match self {
            Entries::Compact(it) => it.len(),
            Entries::Narrow(it) => it.len(),
            Entries::Wide(it) => it.len(),
        };
        (n, Some(n))
    }

    /// Matches the width once for the whole loop, not once per entry (a
    /// heavy visitor's 30-day scan unpacks hundreds): `for_each` and every
    /// adapter that folds run on it.
    #[inline]
    fn fold<B, F: FnMut(B, Entry) -> B>(self, init: B, mut f: F) -> B {
        match self {
            Entries::Compact(it) => it.fold(init, |acc, w| f(acc, Entry::unpack(w))),
            Entries::Narrow(it) => it.fold(init, |acc, w| f(acc, Entry::unpack(w))),
            Entries::Wide(it) => it.fold(init, |acc, w| f(acc, Entry::unpack(w))),
        }
    }
}

impl DoubleEndedIterator for Entries<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<Entry> {
        match self {
            Entries::Compact(it) => it.next_back().map(|w| Entry::unpack(w)),
            Entries::Narrow(it) => it.next_back().map(|w| Entry::unpack(w)),
            Entries::Wide(it) => it.next_back().map(|w| Entry::unpack(w)),
        }
    }
}

impl ExactSizeIterator for Entries<'_> {}

/// Per item action (view, cart, favorite, purchase): day -> visitors.
pub(crate) type DayBitmaps = [BTreeMap<u32, RoaringBitmap>; 4];

/// Catalog facts about one item, learned from events: the whole of them,
/// as writers change them and snapshots read them. The item table
/// (`items.rs`) does not store this struct: it keeps the told times apart
/// and the values in the item's view, and rebuilds it when asked.
#[derive(Debug, Clone)]
pub(crate) struct ItemInfo {
    pub(crate) id: u32,
    /// (ts, category) of the newest event that named a category.
    pub(crate) category: Option<(i64, u32)>,
    /// (day, distinct purchases) ring, one slot per day.
    pub(crate) buys: [(u32, u32); POPULARITY_DAYS],
    /// (ts, price) of the newest event that told a price (ties: the higher price).
    pub(crate) price: Option<(i64, f64)>,
}

impl ItemInfo {
    /// Learns `price` told at `ts`: the newest wins, at equal `ts` the
    /// higher, so the result does not depend on arrival order.
    pub(crate) fn learn_price(&mut self, ts: i64, price: f64) {
        if self.price.is_none_or(|(t, p)| ts > t || (ts == t && price > p)) {
            self.price = Some((ts, price));
        }
    }

    pub(crate) fn category(&self) -> u32 {
        self.category.map_or(NONE, |(_, c)| c)
    }

    /// Distinct purchases of the item over the 7 days ending with `today`
    /// (what `items::ItemView::popularity` reads for decisions).
    #[cfg(test)]
    pub(crate) fn popularity(&self, today: u32) -> u32 {
        self.buys
            .iter()
            .filter(|(day, _)| *day <= today && today - day < 7)
            .map(|(_, n)| n)
            .sum()
    }

    /// Counts one distinct purchase on `day`. The ring ends up holding, per
    /// slot, the latest day seen and its count, whatever the arrival order.
    pub(crate) fn add_buy(&mut self, day: u32) {
        let slot = &mut self.buys[day as usize % POPULARITY_DAYS];
        if slot.0 == day {
            slot.1 += 1;
        } else if slot.0 < day {
            *slot = (day, 1);
        }
    }
}

/// Memory and size figures of one shop's index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Interned visitors.
    pub visitors: u64,
    /// (visitor, action, day) bits set in the day bitmaps.
    pub day_entries: u64,
    /// Profile entries (visitor, hour, action, item, category).
    pub profile_entries: u64,
    /// Serialized bytes of every bitmap.
    pub bitmap_bytes: u64,
}

/// The audience index of one shop.
#[derive(Debug)]
pub struct ShopIndex {
    name: Arc<str>,
    /// The zone whose clock hours the index counts; fixed at creation.
    zone: Zone,
    pub(crate) visitors: Interner,
    /// Item names -> ids, and each item's facts by id.
    pub(crate) items: items::ItemTable,
    pub(crate) categories: Interner,
    pub(crate) tags: Interner,
    /// Shard `id & (SHARDS - 1)`, slot `id >> SHARD_BITS`.
    pub(crate) profiles: Box<[RwLock<Vec<Profile>>]>,
    /// Per item action: day -> visitors with that action that day.
    pub(crate) days: [RwLock<BTreeMap<u32, RoaringBitmap>>; 4],
    /// Visitors with any event for the item (a superset filter; not expired).
    pub(crate) item_visitors: DashMap<u32, RoaringBitmap, RandomState>,
    /// Per category and item action: day -> visitors with that action in the category that day.
    pub(crate) category_days: DashMap<u32, DayBitmaps, RandomState>,
    /// Visitors carrying each tag.
    pub(crate) tag_visitors: DashMap<u32, RoaringBitmap, RandomState>,
    /// Visitors per member tier above 0.
    pub(crate) tier_visitors: RwLock<BTreeMap<u32, RoaringBitmap>>,
    /// Exposure columns: per banner and benefit, day -> visitors offered / held out.
    pub(crate) exposures: exposures::Exposures,
    /// Days before this one have had their bitmaps compacted ([`ShopIndex::compact`]).
    compacted_days: AtomicU32,
    /// The earliest compacted day a bit was set in since the last
    /// compaction (`u32::MAX`: none), so that the next one copies it again.
    late_day: AtomicU32,
}

impl ShopIndex {
    /// An empty index for `name`, on UTC's clock.
    pub fn new(name: &str) -> ShopIndex {
        ShopIndex::with_zone(name, Zone::utc())
    }

    /// An empty index for `name` that counts hours on `zone`'s clock.
    pub fn with_zone(name: &str, zone: Zone) -> ShopIndex {
        ShopIndex {
            name: name.into(),
            zone,
            visitors: Interner::default(),
            items: items::ItemTable::default(),
            categories: Interner::default(),
            tags: Interner::default(),
            profiles: (0..SHARDS).map(|_| RwLock::new(Vec::new())).collect(),
            days: Default::default(),
            item_visitors: DashMap::default(),
            category_days: DashMap::default(),
            tag_visitors: DashMap::default(),
            tier_visitors: RwLock::default(),
            exposures: Default::default(),
            compacted_days: AtomicU32::new(0),
            late_day: AtomicU32::new(u32::MAX),
        }
    }

    /// The shop's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many visitors the shop knows (ids `0..n`).
    pub fn visitor_count(&self) -> u32 {
        self.visitors.len()
    }

    /// The dense id of a known visitor.
    pub fn visitor_id(&self, visitor: &str) -> Option<u32> {
        self.visitors.get(visitor)
    }

    /// Every known visitor.
    pub fn universe(&self) -> RoaringBitmap {
        let mut all = RoaringBitmap::new();
        all.insert_range(0..self.visitor_count());
        all
    }

    /// Runs `f` on the visitor's profile under its shard's read lock
    /// (`None` for an id without events yet).
    #[inline]
    pub(crate) fn with_profile<R>(&self, id: u32, f: impl FnOnce(Option<&Profile>) -> R) -> R {
        let shard = self.profiles[id as usize & (SHARDS - 1)].read();
        f(shard.get((id >> SHARD_BITS) as usize))
    }

    /// Runs `f` on one shard's profiles (slot = id >> 8) under its read lock.
    pub(crate) fn with_shard<R>(&self, shard: usize, f: impl FnOnce(&[Profile]) -> R) -> R {
        f(&self.profiles[shard].read())
    }

    pub(crate) fn with_profile_mut<R>(&self, id: u32, f: impl FnOnce(&mut Profile) -> R) -> R {
        let mut shard = self.profiles[id as usize & (SHARDS - 1)].write();
        let slot = (id >> SHARD_BITS) as usize;
        if shard.len() <= slot {
            // Grown by an eighth, not doubled: the copies are cheap next to
            // applying the events that add visitors, and slack is memory.
            let more = slot + 1 - shard.len();
            if shard.capacity() - shard.len() < more {
                let eighth = shard.len() / 8;
                shard.reserve_exact(more.max(eighth).max(16));
            }
            shard.resize_with(slot + 1, Profile::default);
        }
        f(&mut shard[slot])
    }

    /// The facts of an item seen in events, copied.
    #[cfg(test)]
    pub(crate) fn item(&self, item: &str) -> Option<ItemInfo> {
        let id = self.items.id(item)?;
        self.items.facts(id, ItemInfo::clone)
    }

    /// The id of an item seen in events.
    #[inline]
    pub(crate) fn item_id(&self, item: &str) -> Option<u32> {
        self.items.id(item)
    }

    fn intern_item(&self, item: &str, category: Option<(u32, i64)>, price: Option<(i64, f64)>) -> u32 {
        let id = self.items.intern(item);
        if category.is_some() || price.is_some() {
            self.items.update(id, |info| {
                if let Some((cat, ts)) = category {
                    if info.category.is_none_or(|cur| (ts, cat) > cur) {
                        info.category = Some((ts, cat));
                    }
                }
                if let Some((ts, p)) = price {
                    info.learn_price(ts, p);
                }
            });
        }
        id
    }

    /// Applies one validated event of this shop. Idempotent.
    pub fn apply(&self, event: &Event<'_>) {
        let vid = self.visitors.intern(&event.visitor);
        match event.action {
            Action::View | Action::Cart | Action::Favorite | Action::Purchase => {
                let Some(item_name) = event.item.as_deref() else { return };
                let category = event.category.as_deref().map(|c| self.categories.intern(c));
                let price = event.item_price().map(|p| (event.ts, p));
                let item = self.intern_item(item_name, category.map(|c| (c, event.ts)), price);
                let hour = self.zone.clock_hour(event.ts);
                let entry = Entry {
                    hour,
                    action: event.action as u8,
                    item,
                    category: category.unwrap_or(NONE),
                };
                let (new_entry, new_purchase) = self.with_profile_mut(vid, |profile| {
                    let new_entry = profile.insert(entry);
                    let new_purchase = event.action == Action::Purchase
                        && profile.add_purchase(Purchase {
                            key: purchase_key(event),
                            hour,
                            item,
                            amount: event.amount(),
                        });
                    (new_entry, new_purchase)
                });
                // A known entry means every bit below is already set.
                if new_entry {
                    let (action, day) = (event.action as usize, hour / 24);
                    self.note_day(day);
                    self.days[action].write().entry(day).or_default().insert(vid);
                    self.item_visitors.entry(item).or_default().insert(vid);
                    if let Some(category) = category {
                        let mut days = self.category_days.entry(category).or_default();
                        days[action].entry(day).or_default().insert(vid);
                    }
                }
                if new_purchase {
                    self.items.update(item, |info| info.add_buy(hour / 24));
                }
            }
            Action::Tag | Action::Untag => {
                let Some(tag_name) = event.tag.as_deref() else { return };
                let tag = self.tags.intern(tag_name);
                let present = event.action == Action::Tag;
                self.with_profile_mut(vid, |profile| {
                    // Bitmaps change under the profile lock so they follow its order.
                    match profile.set_tag(tag, event.ts, present) {
                        Some(true) => {
                            self.tag_visitors.entry(tag).or_default().insert(vid);
                        }
                        Some(false) => {
                            if let Some(mut set) = self.tag_visitors.get_mut(&tag) {
                                set.remove(vid);
                            }
                        }
                        None => {}
                    }
                });
            }
            Action::Member => {
                self.with_profile_mut(vid, |profile| {
                    if let Some((old, new)) = profile.set_tier(event.ts, event.tier) {
                        let mut tiers = self.tier_visitors.write();
                        if old > 0 {
                            if let Some(set) = tiers.get_mut(&old) {
                                set.remove(vid);
                            }
                        }
                        if new > 0 {
                            tiers.entry(new).or_default().insert(vid);
                        }
                    }
                });
            }
        }
    }

    /// Drops what lies beyond the 400-day retention at `now_ms`: day bitmaps
    /// and profile entries and purchases older than the longest window.
    pub fn expire(&self, now_ms: i64) {
        let keep = Window {
            amount: MAX_WINDOW_HOURS / 24,
            unit: crate::time::Unit::Days,
        }
        .range(self.clock_ms(now_ms));
        let first_day = keep.first / 24;
        for days in &self.days {
            let mut days = days.write();
            let kept = days.split_off(&first_day);
            *days = kept;
        }
        for mut category in self.category_days.iter_mut() {
            for days in category.value_mut().iter_mut() {
                let kept = days.split_off(&first_day);
                *days = kept;
            }
        }
        for shard in self.profiles.iter() {
            for profile in shard.write().iter_mut() {
                profile.expire(keep.first);
            }
        }
        self.exposures.expire(first_day);
    }

    /// Re-allocates bitmaps at their exact size, run-length encoding the
    /// containers where that is smaller (roaring's `optimize`): the day,
    /// category and exposure bitmaps of the days closed since the last call
    /// (each closed day once, and again after late events set bits in it), and
    /// every item, tag and tier bitmap (these keep changing, so each call
    /// copies them again). Roaring grows a container's array by doubling,
    /// so a bitmap that stopped changing holds up to half its bytes as
    /// slack. The server calls this every `INDEX_COMPACT_INTERVAL`
    /// (`commands/serve.rs`); it costs about what copying those bitmaps
    /// costs and holds each lock for one bitmap (a category: its days).
    /// Returns how many bitmaps it compacted.
    pub fn compact(&self, now_ms: i64) -> u64 {
        let today = day_of(self.clock_ms(now_ms));
        // Days already compacted that late events (a backlog applied after
        // a restart, say) have set bits in since are copied again.
        let late = self.late_day.swap(u32::MAX, Ordering::Relaxed);
        let from = self.compacted_days.load(Ordering::Relaxed).min(late);
        let mut n = 0;
        if from < today {
            // One bitmap (or one category) per lock taken, so applying
            // events waits for one copy at most.
            for days in &self.days {
                let keys: Vec<u32> = days.read().range(from..today).map(|(day, _)| *day).collect();
                for day in keys {
                    if let Some(b) = days.write().get_mut(&day) {
                        compact_bitmap(b);
                        n += 1;
                    }
                }
            }
            let categories: Vec<u32> = self.category_days.iter().map(|c| *c.key()).collect();
            for category in categories {
                if let Some(mut days) = self.category_days.get_mut(&category) {
                    for days in days.iter_mut() {
                        n += compact_days(days, from, today);
                    }
                }
            }
            n += self.exposures.compact(from, today);
            self.compacted_days.fetch_max(today, Ordering::Relaxed);
        }
        for map in [&self.item_visitors, &self.tag_visitors] {
            let keys: Vec<u32> = map.iter().map(|b| *b.key()).collect();
            for key in keys {
                if let Some(mut b) = map.get_mut(&key) {
                    compact_bitmap(&mut b);
                    n += 1;
                }
            }
        }
        for b in self.tier_visitors.write().values_mut() {
            compact_bitmap(b);
            n += 1;
        }
        n
    }

    /// Marks `day` for the next [`ShopIndex::compact`] when its bitmaps were
    /// already compacted: one load per new entry, a write only for late ones.
    #[inline]
    pub(crate) fn note_day(&self, day: u32) {
        if day < self.compacted_days.load(Ordering::Relaxed) {
            self.late_day.fetch_min(day, Ordering::Relaxed);
        }
    }

    /// Sizes of the index, for metrics and benches.
    pub fn stats(&self) -> IndexStats {
        let mut stats = IndexStats {
            visitors: u64::from(self.visitor_count()),
            ..IndexStats::default()
        };
        // Empty bitmaps (left behind by untag and tier changes) hold nothing and
        // a snapshot does not restore them: they do not count.
        let mut add = |b: &RoaringBitmap| {
            if !b.is_empty() {
                stats.bitmap_bytes += b.serialized_size() as u64;
            }
        };
        for days in &self.days {
            for b in days.read().values() {
                add(b);
                stats.day_entries += b.len();
            }
        }
        for map in [&self.item_visitors, &self.tag_visitors] {
            for b in map.iter() {
                add(b.value());
            }
        }
        for category in self.category_days.iter() {
            for b in category.value().iter().flat_map(|days| days.values()) {
                add(b);
            }
        }
        for b in self.tier_visitors.read().values() {
            add(b);
        }
        for shard in self.profiles.iter() {
            stats.profile_entries += shard.read().iter().map(|p| p.entry_count() as u64).sum::<u64>();
        }
        stats
    }

    /// The known price of an item: the latest `price` events told.
    pub fn item_price(&self, item: &str) -> Option<f64> {
        let id = self.items.id(item)?;
        self.items.facts(id, |info| info.price).flatten().map(|(_, p)| p)
    }

    /// Today's day number at clock reading `clock_ms` (for popularity).
    pub(crate) fn today(clock_ms: i64) -> u32 {
        day_of(clock_ms)
    }

    /// The zone whose clock the index counts hours on.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// The shop's clock at an instant (`crate::time::Zone::clock_ms`): what
    /// window ranges are computed from.
    #[inline]
    pub fn clock_ms(&self, now_ms: i64) -> i64 {
        self.zone.clock_ms(now_ms)
    }

    /// Replaces the zone of an index nobody shares yet (a snapshot's ZONE
    /// section, read after the shop's rows).
    pub(crate) fn set_zone(&mut self, zone: Zone) {
        self.zone = zone;
    }
}

/// `b` at its exact size, in run containers where they are smaller.
pub(crate) fn compact_bitmap(b: &mut RoaringBitmap) {
    b.optimize();
    *b = b.clone();
}

/// Compacts the bitmaps of days `from..to`; returns how many.
pub(crate) fn compact_days(days: &mut BTreeMap<u32, RoaringBitmap>, from: u32, to: u32) -> u64 {
    let mut n = 0;
    for (_, b) in days.range_mut(from..to) {
        compact_bitmap(b);
        n += 1;
    }
    n
}

/// The de-duplication key of a purchase: its id, else its item and timestamp.
fn purchase_key(event: &Event<'_>) -> u64 {
    match event.id.as_deref() {
        Some(id) => stable_hash(&[b"id", id.as_bytes()]),
        None => stable_hash(&[
            b"item",
            event.item.as_deref().unwrap_or_default().as_bytes(),
            &event.ts.to_le_bytes(),
        ]),
    }
}

/// Every shop's index.
#[derive(Debug, Default)]
pub struct Index {
    pub(crate) shops: DashMap<Box<str>, Arc<ShopIndex>, RandomState>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// The shop's index, if it has seen events.
    pub fn shop(&self, shop: &str) -> Option<Arc<ShopIndex>> {
        self.shops.get(shop).map(|s| s.value().clone())
    }

    /// The shop's index, created empty when new.
    pub fn shop_or_create(&self, shop: &str) -> Arc<ShopIndex> {
        if let Some(s) = self.shop(shop) {
            return s;
        }
        self.shops
            .entry(shop.into())
            .or_insert_with(|| Arc::new(ShopIndex::new(shop)))
            .clone()
    }

    /// Applies one validated event. Idempotent.
    pub fn apply(&self, event: &Event<'_>) {
        self.shop_or_create(&event.shop).apply(event);
    }

    /// The shop's index, created empty on `zone()`'s clock when new
    /// (`zone` is only called then).
    pub fn shop_or_create_in(&self, shop: &str, zone: impl FnOnce() -> Zone) -> Arc<ShopIndex> {
        if let Some(s) = self.shop(shop) {
            return s;
        }
        self.shops
            .entry(shop.into())
            .or_insert_with(|| Arc::new(ShopIndex::with_zone(shop, zone())))
            .clone()
    }

    /// Applies one validated event, creating its shop's index on `zone()`'s
    /// clock when new. Idempotent.
    pub fn apply_in(&self, event: &Event<'_>, zone: impl FnOnce() -> Zone) {
        self.shop_or_create_in(&event.shop, zone).apply(event);
    }

    /// Every shop's index.
    pub fn shops(&self) -> Vec<Arc<ShopIndex>> {
        self.shops.iter().map(|s| s.value().clone()).collect()
    }

    /// Drops data beyond retention in every shop.
    pub fn expire(&self, now_ms: i64) {
        for shop in self.shops() {
            shop.expire(now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Fields;
    use crate::time::DAY_MS;

    fn ev(visitor: &str, action: &str, ts: i64) -> Fields<'static> {
        Fields {
            shop: Some("s".into()),
            visitor: Some(visitor.to_string().into()),
            action: Some(action.to_string().into()),
            item: Some("i".into()),
            category: Some("c".into()),
            price: Some(5.0),
            tag: Some("t".into()),
            tier: Some(0),
            ts: Some(ts),
            ..Fields::default()
        }
    }

    fn apply(shop: &ShopIndex, f: Fields<'static>) {
        shop.apply(&Event::validate(f).unwrap());
    }

    fn tagged(shop: &ShopIndex) -> u64 {
        shop.tags
            .get("t")
            .and_then(|t| shop.tag_visitors.get(&t).map(|b| b.len()))
            .unwrap_or(0)
    }

    #[test]
    fn applying_twice_changes_nothing() {
        let shop = ShopIndex::new("s");
        let events = [ev("a", "view", 10), ev("a", "purchase", 20), ev("b", "cart", DAY_MS)];
        for f in events.iter().chain(events.iter()) {
            apply(&shop, f.clone());
        }
        let stats = shop.stats();
        assert_eq!(stats.visitors, 2);
        assert_eq!(stats.day_entries, 3);
        assert_eq!(stats.profile_entries, 3);
        let vid = shop.visitor_id("a").unwrap();
        let (count, spend) = shop.with_profile(vid, |p| p.unwrap().purchases_in(HourRange { first: 0, last: 100 }));
        assert_eq!((count, spend), (1, 5.0));
    }

    #[test]
    fn purchases_dedupe_by_id_else_item_and_ts() {
        let shop = ShopIndex::new("s");
        let with_id = |id: &str, ts| Fields {
            id: Some(id.to_string().into()),
            ..ev("a", "purchase", ts)
        };
        apply(&shop, with_id("p1", 10));
        apply(&shop, with_id("p1", 10));
        apply(&shop, with_id("p2", 10));
        apply(&shop, ev("a", "purchase", 30));
        apply(&shop, ev("a", "purchase", 30));
        let vid = shop.visitor_id("a").unwrap();
        let (count, _) = shop.with_profile(vid, |p| p.unwrap().purchases_in(HourRange { first: 0, last: 1 }));
        assert_eq!(count, 3);
    }

    #[test]
    fn latest_tag_and_tier_win_in_any_order() {
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let shop = ShopIndex::new("s");
            let events = [ev("a", "tag", 10), ev("a", "untag", 20), ev("a", "tag", 20)];
            for i in order {
                apply(&shop, events[i].clone());
            }
            assert_eq!(tagged(&shop), 0, "untag wins the tie at ts 20, order {order:?}");
        }
        let shop = ShopIndex::new("s");
        let tier = |t: i64, ts| Fields {
            tier: Some(t),
            ..ev("a", "member", ts)
        };
        apply(&shop, tier(3, 30));
        apply(&shop, tier(5, 10));
        apply(&shop, tier(2, 30));
        let tiers = shop.tier_visitors.read();
        assert_eq!(tiers.get(&3).map(|b| b.len()), Some(1));
        assert_eq!(tiers.get(&5).map(|b| b.len()), None);
    }

    #[test]
    fn expire_drops_what_is_older_than_400_days() {
        let shop = ShopIndex::new("s");
        let now = 1_000 * DAY_MS;
        apply(&shop, ev("a", "view", now - 401 * DAY_MS));
        apply(&shop, ev("a", "purchase", now - 401 * DAY_MS));
        apply(&shop, ev("a", "view", now - 399 * DAY_MS));
        shop.expire(now);
        let stats = shop.stats();
        assert_eq!(stats.day_entries, 1);
        assert_eq!(stats.profile_entries, 1);
        let vid = shop.visitor_id("a").unwrap();
        assert!(shop.with_profile(vid, |p| p.unwrap().purchases().is_empty()));
        assert_eq!(stats.visitors, 1, "visitors stay known");
    }

    /// A profile's packed entries (narrow, then all wide once one does not
    /// fit 8 bytes) read back as the set a plain model holds, in any insert
    /// order, with the latest hour of each action and every read method.
    #[test]
    fn packed_entries_match_a_sorted_set() {
        use std::collections::BTreeSet;
        let mut rng = crate::hash::SplitMix64::new(17);
        for round in 0..200 {
            let mut profile = Profile::default();
            let mut model = BTreeSet::new();
            let wide_from = if round % 2 == 0 {
                usize::MAX
            } else {
                (rng.next_u64() % 40) as usize
            };
            for i in 0..(rng.next_u64() % 60) as usize {
                let r = rng.next_u64();
                let mut entry = Entry {
                    hour: 400_000 + (r % 500) as u32,
                    action: (r >> 10 & 3) as u8,
                    item: (r >> 12) as u32 % 5,
                    category: if r >> 20 & 3 == 0 { NONE } else { (r >> 22) as u32 % 3 },
                };
                if i == wide_from {
                    match r >> 30 & 3 {
                        0 => entry.category = NARROW_NONE,
                        1 => entry.item = NARROW_ITEMS,
                        2 => entry.hour = NARROW_HOURS,
                        _ => entry.category = u32::MAX - 1,
                    }
                }
                assert_eq!(profile.insert(entry), model.insert(entry), "round {round}, entry {i}");
                assert!(!profile.insert(entry), "again");
            }
            let back: Vec<Entry> = profile.entries().collect();
            assert_eq!(back, model.iter().copied().collect::<Vec<_>>(), "round {round}");
            assert_eq!(profile.entry_count(), model.len());
            assert_eq!(
                profile.width() == WIDE_WORDS,
                back.iter().any(|e| e.pack(NARROW).is_none())
            );
            for action in 0..4u8 {
                let latest = model
                    .iter()
                    .filter(|e| e.action == action)
                    .map(|e| e.hour + 1)
                    .max()
                    .unwrap_or(0);
                assert_eq!(profile.latest(action), latest, "round {round}, action {action}");
            }
            let range = HourRange {
                first: 400_100,
                last: 400_300,
            };
            let in_range = |e: &&Entry| range.contains(e.hour);
            for action in Action::BEHAVIORS {
                let set = ActionSet::one(action);
                let want = model.iter().filter(in_range).any(|e| e.action == action as u8);
                assert_eq!(profile.has_action_in(set, range), want);
                let until = model
                    .iter()
                    .filter(|e| e.hour <= 400_200 && e.action == action as u8)
                    .map(|e| e.hour)
                    .max();
                assert_eq!(profile.latest_until(set, 400_200), until);
            }
            assert_eq!(
                profile.any_entry(range, |e| e.item == 3),
                model.iter().filter(in_range).any(|e| e.item == 3)
            );
            let mut copy = Profile::default();
            copy.set_entries(&back);
            assert_eq!(copy.entries().collect::<Vec<_>>(), back);
            assert_eq!(copy.facts, profile.facts, "set_entries packs as inserts do");
        }
    }

    /// Tiers that do not pack into the profile's word (16 bits or more, or
    /// an instant outside the events' range) keep the same order rules.
    #[test]
    fn wide_tiers_and_instants_keep_the_latest() {
        let states = [
            (5, 0xFFFE),
            (5, 0xFFFF),
            (7, u32::MAX),
            (crate::event::MAX_TS, 2),
            (-1, 9),
            (-1, 0),
            (0, 0),
        ];
        let orders: [&[usize]; 4] = [
            &[0, 1, 2, 3, 4, 5, 6],
            &[6, 5, 4, 3, 2, 1, 0],
            &[2, 0, 4, 1, 6, 5, 3],
            &[5, 6, 4],
        ];
        for order in orders {
            let mut p = Profile::default();
            let mut model: Option<(i64, u32)> = None;
            for &i in order {
                let (ts, tier) = states[i];
                let old = model.map_or(0, |(_, t)| t);
                let changed = if model.is_none_or(|cur| (ts, tier) > cur) {
                    model = Some((ts, tier));
                    (old != tier).then_some((old, tier))
                } else {
                    None
                };
                assert_eq!(p.set_tier(ts, tier), changed, "{order:?} at {i}");
                assert_eq!(p.tier_state(), model);
                assert_eq!(p.tier(), model.map_or(0, |(_, t)| t));
            }
        }
    }

    /// Every bitmap the index holds, as (what, sorted members).
    fn bitmaps(shop: &ShopIndex) -> Vec<(String, Vec<u32>)> {
        let mut out = Vec::new();
        for (a, days) in shop.days.iter().enumerate() {
            for (day, b) in days.read().iter() {
                out.push((format!("day {a} {day}"), b.iter().collect()));
            }
        }
        for c in shop.category_days.iter() {
            for (a, days) in c.value().iter().enumerate() {
                for (day, b) in days {
                    out.push((format!("category {} {a} {day}", c.key()), b.iter().collect()));
                }
            }
        }
        for (what, map) in [("item", &shop.item_visitors), ("tag", &shop.tag_visitors)] {
            for b in map.iter() {
                out.push((format!("{what} {}", b.key()), b.value().iter().collect()));
            }
        }
        for (tier, b) in shop.tier_visitors.read().iter() {
            out.push((format!("tier {tier}"), b.iter().collect()));
        }
        out.sort();
        out
    }

    /// Compaction changes no bitmap's members, compacts each closed day
    /// once, and the bitmaps keep taking events afterwards.
    #[test]
    fn compaction_keeps_every_bitmap_and_closed_days_once() {
        let shop = ShopIndex::new("s");
        let now = 100 * DAY_MS;
        let events = |from: u32, to: u32| {
            (from..to).flat_map(move |v| {
                let visitor = format!("v{}", v * 37 % 5000);
                let ts = now - i64::from(v / 4 % 4) * DAY_MS;
                [
                    ev(&visitor, ["view", "cart", "favorite", "purchase"][v as usize % 4], ts),
                    ev(&visitor, if v % 3 == 0 { "untag" } else { "tag" }, ts),
                    Fields {
                        tier: Some(i64::from(v % 3)),
                        ..ev(&visitor, "member", ts + i64::from(v))
                    },
                ]
            })
        };
        for f in events(0, 3000) {
            apply(&shop, f);
        }
        let before = bitmaps(&shop);
        // 3 closed days x (4 day bitmaps + 4 of the one category) + item, tag, tiers 1 and 2.
        assert_eq!(shop.compact(now), 3 * 8 + 4);
        assert_eq!(bitmaps(&shop), before);
        assert_eq!(shop.compact(now), 4, "closed days are compacted once");
        for f in events(3000, 6000) {
            apply(&shop, f);
        }
        // Those events set bits in every closed day: copied again, once.
        assert_eq!(shop.compact(now), 3 * 8 + 4, "late events' days are compacted again");
        assert_eq!(shop.compact(now), 4);
        let fresh = ShopIndex::new("s");
        for f in events(0, 6000) {
            apply(&fresh, f);
        }
        assert_eq!(bitmaps(&shop), bitmaps(&fresh));
    }

    #[test]
    fn popularity_counts_distinct_purchases_over_seven_days() {
        let shop = ShopIndex::new("s");
        let now = 100 * DAY_MS;
        for (v, days_ago) in [("a", 0), ("b", 6), ("c", 7), ("a", 0)] {
            apply(&shop, ev(v, "purchase", now - days_ago * DAY_MS));
        }
        assert_eq!(shop.item("i").unwrap().popularity(ShopIndex::today(now)), 2);
    }

    /// An item's known price is the latest by `ts`, the higher at equal
    /// `ts`, whatever the order events arrive in; redelivery changes nothing.
    #[test]
    fn the_latest_price_wins_in_any_order() {
        let told = [(5, 30.0), (9, 20.0), (9, 25.0), (1, 99.0), (7, 0.0)];
        let event = |(ts, price): (i64, f64)| Event {
            item: Some("i".into()),
            price,
            ..Event::new("s", "v", if price == 0.0 { Action::Purchase } else { Action::View }, ts)
        };
        let mut orders = vec![told.to_vec()];
        orders.push(told.iter().rev().copied().collect());
        orders.push(vec![told[2], told[0], told[1], told[2], told[4], told[3]]);
        for order in orders {
            let shop = ShopIndex::new("s");
            for t in &order {
                shop.apply(&event(*t));
            }
            assert_eq!(shop.item("i").unwrap().price, Some((9, 25.0)), "{order:?}");
            assert_eq!(shop.item_price("i"), Some(25.0));
        }
        // A view without a price tells none; a later free purchase does.
        let shop = ShopIndex::new("s");
        shop.apply(&Event {
            item: Some("i".into()),
            ..Event::new("s", "v", Action::View, 1)
        });
        assert_eq!(shop.item_price("i"), None);
        shop.apply(&event((2, 0.0)));
        assert_eq!(shop.item_price("i"), Some(0.0));
        assert_eq!(shop.item_price("unknown"), None);
    }
}
