//! The index's share of exposures (decisions offered and held out; the
//! module [`crate::exposure`] applies them and answers for them): per shop,
//! the entry dictionaries and the per-day columns; per visitor, the facts.

use std::collections::BTreeMap;

use ahash::RandomState;
use dashmap::DashMap;
use roaring::{MultiOps, RoaringBitmap};

use crate::index::Interner;
use crate::rules::Slot;

/// Most distinct banner ids, and most distinct benefit ids, one shop keeps
/// exposures of (a rule file has far fewer; this bounds a hostile log).
pub const MAX_ENTRIES: u32 = 65_536;

/// The high bit of an entry key marks a banner; benefits have it clear.
pub(crate) const BANNER_BIT: u32 = 1 << 31;

/// One exposure fact of a visitor: in `hour`, `entry` was offered to it
/// (`held_out` false) or it was held out of `entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Fact {
    pub(crate) hour: u32,
    pub(crate) entry: u32,
    pub(crate) held_out: bool,
}

impl Fact {
    pub(crate) fn is_banner(&self) -> bool {
        self.entry & BANNER_BIT != 0
    }
}

/// Per day of the shop: the visitors offered an entry, and those held out of it.
#[derive(Debug, Clone, Default)]
pub(crate) struct EntryDays {
    pub(crate) offered: BTreeMap<u32, RoaringBitmap>,
    pub(crate) held_out: BTreeMap<u32, RoaringBitmap>,
}

impl EntryDays {
    /// The day bitmaps of one group.
    pub(crate) fn group(&self, held_out: bool) -> &BTreeMap<u32, RoaringBitmap> {
        if held_out {
            &self.held_out
        } else {
            &self.offered
        }
    }

    pub(crate) fn group_mut(&mut self, held_out: bool) -> &mut BTreeMap<u32, RoaringBitmap> {
        if held_out {
            &mut self.held_out
        } else {
            &mut self.offered
        }
    }

    /// The union of one group's bitmaps over days `first..=last`.
    pub(crate) fn union(&self, held_out: bool, first: u32, last: u32) -> RoaringBitmap {
        if first > last {
            return RoaringBitmap::new();
        }
        self.group(held_out).range(first..=last).map(|(_, b)| b).union()
    }
}

/// A shop's exposure columns and entry dictionaries.
#[derive(Debug, Default)]
pub(crate) struct Exposures {
    pub(crate) benefits: Interner,
    pub(crate) banners: Interner,
    /// Entry key -> its day bitmaps.
    pub(crate) days: DashMap<u32, EntryDays, RandomState>,
}

impl Exposures {
    /// The key of a known entry.
    pub(crate) fn key(&self, slot: Slot, id: &str) -> Option<u32> {
        match slot {
            Slot::Banner => self.banners.get(id).map(|k| k | BANNER_BIT),
            Slot::Benefit => self.benefits.get(id),
            Slot::Items => None,
        }
    }

    /// The key of an entry, interned when new; `None` past [`MAX_ENTRIES`].
    pub(crate) fn intern(&self, slot: Slot, id: &str) -> Option<u32> {
        if let Some(k) = self.key(slot, id) {
            return Some(k);
        }
        let (interner, bit) = match slot {
            Slot::Banner => (&self.banners, BANNER_BIT),
            Slot::Benefit => (&self.benefits, 0),
            Slot::Items => return None,
        };
        if interner.len() >= MAX_ENTRIES {
            return None;
        }
        Some(interner.intern(id) | bit)
    }

    /// Sets the column bits of one fact.
    pub(crate) fn set(&self, day: u32, fact: &Fact, vid: u32) {
        self.days
            .entry(fact.entry)
            .or_default()
            .group_mut(fact.held_out)
            .entry(day)
            .or_default()
            .insert(vid);
    }

    /// The union of one group's day bitmaps over days `first..=last`, of
    /// the entries `keys` (every benefit with `None`).
    pub(crate) fn union(&self, keys: Option<&[u32]>, held_out: bool, first: u32, last: u32) -> RoaringBitmap {
        let mut parts = Vec::new();
        match keys {
            None => {
                for entry in self.days.iter().filter(|e| e.key() & BANNER_BIT == 0) {
                    parts.push(entry.union(held_out, first, last));
                }
            }
            Some(keys) => {
                for key in keys {
                    if let Some(entry) = self.days.get(key) {
                        parts.push(entry.union(held_out, first, last));
                    }
                }
            }
        }
        parts.union()
    }

    /// Drops the day bitmaps before `first_day`.
    pub(crate) fn expire(&self, first_day: u32) {
        for mut entry in self.days.iter_mut() {
            let EntryDays { offered, held_out } = entry.value_mut();
            for group in [offered, held_out] {
                let kept = group.split_off(&first_day);
                *group = kept;
            }
        }
    }

    /// Compacts the day bitmaps of days `from..to` (`ShopIndex::compact`); returns how many.
    pub(crate) fn compact(&self, from: u32, to: u32) -> u64 {
        let mut n = 0;
        for mut entry in self.days.iter_mut() {
            let EntryDays { offered, held_out } = entry.value_mut();
            n += crate::index::compact_days(offered, from, to) + crate::index::compact_days(held_out, from, to);
        }
        n
    }
}
