//! A hash table of `u32` values whose probe reads one cache line.
//!
//! The interner's table (`index/interner.rs`) maps a name's hash to the
//! arena offset of its record; the record holds the name, so a lookup
//! reads the table and then the record. hashbrown keeps its 7-bit tags and
//! its buckets in two arrays, so its probe touched two cache lines before
//! the record: at a million visitors each was a miss. Here a [`Group`] is
//! one 64-byte line with 12 one-byte tags beside their 12 values, so a
//! probe that ends in its first group (nearly all do) costs one miss
//! before the record.
//!
//! - Hash bits: the group is picked by the low bits, the tag is the top
//!   byte (0 becomes 1: a zero tag marks a free slot), and the interner
//!   picks its shard from bits 40..46, so the three are independent.
//! - A group fills its slots in order and counts them: an insert checks
//!   only the slots in use for an equal value and takes the next one.
//! - Probing goes to the next group (wrapping) when a group is full. Each
//!   group counts the inserts that went past it (saturating at 255): an
//!   insert only goes past a full group and nothing is ever removed, so a
//!   value whose probe starts at or before a group with a zero count is in
//!   a group up to it, and a lookup that finds no match there stops. A
//!   probe visits each group at most once, so it ends even in a table with
//!   every group overflowed. (Names are hashed with per-process random
//!   seeds, so a client cannot aim them at one group.)
//! - Load: at most [`LOAD_PER_GROUP`] values per group on average (10 of
//!   12, 83%, near hashbrown's 87.5%); one more doubles the groups and
//!   re-inserts every value by its key's hash, which the caller gives
//!   (the table keeps no hashes).
//!
//! Values are compared by the caller (`eq`), so equal tags in one group
//! only cost a comparison each; the table never decides equality itself.
//! Tags are matched by a plain loop: matching all 12 at once in a 16-byte
//! word (SWAR) took more instructions per decision and was no faster.

/// Slots in a group.
const SLOTS: usize = 12;

/// The most values a table holds per group on average before it doubles.
pub(crate) const LOAD_PER_GROUP: usize = 10;

/// One 64-byte line: 12 tags, how many slots are in use (the first ones),
/// the count of inserts that probed past it, and 12 values.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Group {
    tags: [u8; SLOTS],
    used: u8,
    overflow: u8,
    at: [u32; SLOTS],
}

const _: () = assert!(std::mem::size_of::<Group>() == 64);

const EMPTY: Group = Group {
    tags: [0; SLOTS],
    used: 0,
    overflow: 0,
    at: [0; SLOTS],
};

/// The tag of a hash: its top byte, never 0 (the tag of a free slot).
#[inline]
fn tag(hash: u64) -> u8 {
    ((hash >> 56) as u8).max(1)
}

/// `u32` values by hash, in groups of one cache line.
#[derive(Default)]
pub(crate) struct LineTable {
    /// A power of two of groups, or none.
    groups: Vec<Group>,
    /// Values held.
    len: usize,
}

impl LineTable {
    /// A table that holds `n` values without growing.
    pub(crate) fn with_capacity(n: usize) -> LineTable {
        let groups = match n {
            0 => 0,
            n => n.div_ceil(LOAD_PER_GROUP).next_power_of_two(),
        };
        LineTable {
            groups: vec![EMPTY; groups],
            len: 0,
        }
    }

    /// Values held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// How many values fit before the table doubles.
    pub(crate) fn capacity(&self) -> usize {
        self.groups.len() * LOAD_PER_GROUP
    }

    /// The value under `hash` for which `eq` holds.
    #[inline]
    pub(crate) fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let mask = self.groups.len().wrapping_sub(1);
        let tag = tag(hash);
        let mut g = hash as usize & mask;
        for _ in 0..self.groups.len() {
            let group = self.groups.get(g)?;
            // All 12: a fixed count compiles to less than the slots in use.
            for (&t, &at) in group.tags.iter().zip(&group.at) {
                if t == tag && eq(at) {
                    return Some(at);
                }
            }
            if group.overflow == 0 {
                return None;
            }
            g = (g + 1) & mask;
        }
        None
    }

    /// Reads the group a probe for `hash` starts at (to have its line
    /// loaded before an insert needs it); returns its used slots.
    #[inline]
    pub(crate) fn touch(&self, hash: u64) -> u8 {
        let mask = self.groups.len().wrapping_sub(1);
        self.groups.get(hash as usize & mask).map_or(0, |group| group.used)
    }

    /// Adds `at` under `hash`, unless a value under `hash` for which `eq`
    /// holds is there: then `Err` with that value, and nothing added (one
    /// probe for both: the first group with a free slot ends the search).
    /// `rehash` gives the hash of a held value when the table grows.
    pub(crate) fn insert_new(
        &mut self,
        hash: u64,
        at: u32,
        mut eq: impl FnMut(u32) -> bool,
        rehash: impl Fn(u32) -> u64,
    ) -> Result<(), u32> {
        if self.len >= self.capacity() {
            self.grow(&rehash);
        }
        loop {
            let mask = self.groups.len().wrapping_sub(1);
            let tag = tag(hash);
            let mut g = hash as usize & mask;
            for _ in 0..self.groups.len() {
                let Some(group) = self.groups.get_mut(g) else {
                    break;
                };
                let used = usize::from(group.used).min(SLOTS);
                for (&t, &held) in group.tags[..used].iter().zip(&group.at[..used]) {
                    if t == tag && eq(held) {
                        return Err(held);
                    }
                }
                if let (Some(t), Some(a)) = (group.tags.get_mut(used), group.at.get_mut(used)) {
                    *t = tag;
                    *a = at;
                    group.used += 1;
                    self.len += 1;
                    return Ok(());
                }
                // Counted even when a later group holds an equal value: a
                // count only makes lookups look further.
                group.overflow = group.overflow.saturating_add(1);
                g = (g + 1) & mask;
            }
            // Below the load limit a free slot always exists; this only
            // guards the invariant instead of trusting it.
            self.grow(&rehash);
        }
    }

    /// Puts `at` in the first free slot of its probe; false if every group
    /// is full.
    fn place(&mut self, hash: u64, at: u32) -> bool {
        let mask = self.groups.len().wrapping_sub(1);
        let tag = tag(hash);
        let mut g = hash as usize & mask;
        for _ in 0..self.groups.len() {
            let Some(group) = self.groups.get_mut(g) else {
                return false;
            };
            let i = usize::from(group.used);
            if let (Some(t), Some(a)) = (group.tags.get_mut(i), group.at.get_mut(i)) {
                *t = tag;
                *a = at;
                group.used += 1;
                return true;
            }
            group.overflow = group.overflow.saturating_add(1);
            g = (g + 1) & mask;
        }
        false
    }

    /// Doubles the groups (one, from none) and re-inserts every value.
    fn grow(&mut self, rehash: &impl Fn(u32) -> u64) {
        let groups = (self.groups.len() * 2).max(1);
        let old = std::mem::replace(&mut self.groups, vec![EMPTY; groups]);
        for group in &old {
            let used = usize::from(group.used).min(SLOTS);
            for &at in &group.at[..used] {
                // Twice the groups hold every value of a table that held
                // them all.
                self.place(rehash(at), at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A hash whose tag, group and overflow we choose: `tag` in the top
    /// byte, `group` in the low bits.
    fn crafted(tag: u8, group: u64) -> u64 {
        u64::from(tag) << 56 | group
    }

    /// Against a map, with hashes drawn from a space so small that many
    /// values share their group and tag (and some their whole hash): every
    /// value is found under its own hash and key, none under another's
    /// key, across several doublings.
    #[test]
    fn model_with_crowded_hashes() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..20 {
            let mut table = LineTable::default();
            // key (the value itself) -> hash
            let mut model: HashMap<u32, u64> = HashMap::new();
            let tags = 1 + round as u64 % 4;
            let groups = 1 + round as u64 * 3;
            for key in 0..2_000u32 {
                // Tag 0 is stored as 1: it shares a tag with 1.
                let hash = crafted((next() % tags) as u8, next() % groups);
                let key_hash = |k: u32| model.get(&k).copied().unwrap_or(hash);
                assert_eq!(table.find(hash, |at| at == key), None, "absent before insert");
                assert_eq!(table.insert_new(hash, key, |at| at == key, key_hash), Ok(()));
                model.insert(key, hash);
                assert_eq!(table.len(), model.len());
                if key % 97 == 0 {
                    for (&k, &h) in &model {
                        assert_eq!(table.find(h, |at| at == k), Some(k), "round {round}: key {k}");
                    }
                }
            }
            for (&k, &h) in &model {
                assert_eq!(table.find(h, |at| at == k), Some(k));
                assert_eq!(table.find(h, |at| at == k + 10_000), None);
                let rehash = |_| unreachable!("a repeat adds nothing");
                assert_eq!(
                    table.insert_new(h, k + 10_000, |at| at == k, rehash),
                    Err(k),
                    "a repeat"
                );
            }
            assert_eq!(table.len(), model.len());
            assert!(table.len() <= table.capacity());
        }
    }

    /// Thirteen values of one group and tag: the thirteenth overflows into
    /// the next group, and all are found; a key that is absent is looked
    /// for past the full group, and a hash starting at the next group does
    /// not see the first group's values.
    #[test]
    fn overflow_is_followed_and_counted() {
        let mut table = LineTable::with_capacity(40);
        assert_eq!(table.groups.len(), 4);
        let hash = crafted(7, 1);
        let rehash = |_| unreachable!("no growth within capacity");
        for at in 0..13 {
            assert_eq!(table.insert_new(hash, at, |_| false, rehash), Ok(()));
        }
        assert_eq!(table.groups[1].overflow, 1);
        assert_eq!(table.groups[2].overflow, 0);
        for at in 0..13 {
            assert_eq!(table.find(hash, |a| a == at), Some(at));
        }
        let mut compared = 0;
        assert_eq!(
            table.find(hash, |_| {
                compared += 1;
                false
            }),
            None
        );
        assert_eq!(compared, 13, "both groups' matching tags compared");
        assert_eq!(table.find(crafted(7, 2), |a| a == 0), None);
    }

    /// A lookup of an absent value ends in a table whose every group is
    /// full and overflowed (which the load limit never lets happen: the
    /// probe still visits each group only once).
    #[test]
    fn absent_value_in_a_table_of_overflowed_groups() {
        let mut table = LineTable::with_capacity(40);
        let n = table.groups.len();
        let hash = crafted(9, 0);
        for (g, group) in table.groups.iter_mut().enumerate() {
            group.tags = [tag(hash); SLOTS];
            group.used = SLOTS as u8;
            group.at = std::array::from_fn(|i| (g * SLOTS + i) as u32);
            group.overflow = 255;
        }
        let mut compared = 0;
        assert_eq!(
            table.find(hash, |_| {
                compared += 1;
                false
            }),
            None
        );
        assert_eq!(compared, n * SLOTS, "every slot once");
        assert_eq!(table.find(crafted(9, 3), |a| a == 5), Some(5), "found after wrapping");
        assert!(!table.place(hash, 1_000), "no free slot");
    }

    /// Growth doubles from one group through many, keeping the load limit.
    #[test]
    fn growth_doubles_and_keeps_the_load_limit() {
        let mut table = LineTable::default();
        assert_eq!(table.capacity(), 0);
        let hash = |at: u32| u64::from(at).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut sizes = vec![];
        for at in 0..50_000 {
            assert_eq!(table.insert_new(hash(at), at, |_| false, hash), Ok(()));
            if sizes.last() != Some(&table.groups.len()) {
                sizes.push(table.groups.len());
            }
        }
        assert_eq!(sizes, (0..14).map(|k| 1 << k).collect::<Vec<_>>());
        assert_eq!(table.capacity(), 8192 * LOAD_PER_GROUP);
        for at in 0..50_000 {
            assert_eq!(table.find(hash(at), |a| a == at), Some(at));
        }
    }

    #[test]
    fn sized_tables_do_not_grow() {
        for n in [1, 9, 10, 11, 100, 10_240, 10_241] {
            let table = LineTable::with_capacity(n);
            assert!(table.capacity() >= n, "{n}");
            assert!(
                table.capacity() < 2 * n + 2 * LOAD_PER_GROUP,
                "{n}: not more than double"
            );
        }
        assert_eq!(LineTable::with_capacity(0).groups.len(), 0);
    }
}
