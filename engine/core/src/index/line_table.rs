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
//! - Probing goes to the next group (wrapping) when a group is full. Each
//!   group counts the inserts that went past it (saturating at 255):
//!   nothing is ever removed, so a group with a zero count was never full
//!   when an insert came by, and a lookup that finds no match in it stops
//!   there. A probe visits each group at most once, so it ends even in a
//!   table with every group overflowed.
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

/// One 64-byte line: 12 tags (0: free), the count of inserts that probed
/// past it, and 12 values.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Group {
    tags: [u8; SLOTS],
    overflow: u8,
    at: [u32; SLOTS],
}

const _: () = assert!(std::mem::size_of::<Group>() == 64);

const EMPTY: Group = Group {
    tags: [0; SLOTS],
    overflow: 0,
    at: [0; SLOTS],
};

/// The tag of a hash: its top byte, never 0.
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

    /// Adds `at` under `hash` (the caller checked that no equal value is
    /// held); `rehash` gives the hash of a held value when the table grows.
    pub(crate) fn insert(&mut self, hash: u64, at: u32, rehash: impl Fn(u32) -> u64) {
        if self.len >= self.capacity() {
            self.grow(&rehash);
        }
        while !self.place(hash, at) {
            // Past the load limit a free slot always exists; this only
            // guards the invariant instead of trusting it.
            self.grow(&rehash);
        }
        self.len += 1;
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
            if let Some(i) = group.tags.iter().position(|&t| t == 0) {
                group.tags[i] = tag;
                group.at[i] = at;
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
            for (&t, &at) in group.tags.iter().zip(&group.at) {
                if t != 0 {
                    // Twice the groups hold every value of a table that
                    // held them all.
                    self.place(rehash(at), at);
                }
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
                // Tags 0..tags (0 is stored as 1: shares a tag with 1).
                let hash = crafted((next() % tags) as u8, next() % groups);
                let key_hash = |k: u32| model.get(&k).copied().unwrap_or(hash);
                assert_eq!(table.find(hash, |at| at == key), None, "absent before insert");
                table.insert(hash, key, key_hash);
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
            }
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
            table.insert(hash, at, rehash);
        }
        assert_eq!(table.groups[1].overflow, 1);
        assert_eq!(table.groups[2].overflow, 0);
        for at in 0..13 {
            assert_eq!(table.find(hash, |a| a == at), Some(at));
        }
        let mut compared = 0;
        assert_eq!(table.find(hash, |_| { compared += 1; false }), None);
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
            group.at = std::array::from_fn(|i| (g * SLOTS + i) as u32);
            group.overflow = 255;
        }
        let mut compared = 0;
        assert_eq!(table.find(hash, |_| { compared += 1; false }), None);
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
            table.insert(hash(at), at, hash);
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
            assert!(table.capacity() < 2 * n + 2 * LOAD_PER_GROUP, "{n}: not more than double");
        }
        assert_eq!(LineTable::with_capacity(0).groups.len(), 0);
    }
}
