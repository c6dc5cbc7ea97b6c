//! A shop's item table: item names -> dense ids, and each item's facts
//! ([`ItemInfo`]: category, price, purchases per day) by id.
//!
//! Events name items by string; decisions ask about the same few dozen items
//! (a rule file's pools and complements) again and again. So the names sit in
//! one map, consulted when an event is applied or a name must be resolved,
//! and the facts in a table indexed by id ([`ITEM_SHARDS`] shards, each a
//! `Vec` under its own lock: shard `id % ITEM_SHARDS`, slot `id / ITEM_SHARDS`):
//! once a rule file's items are resolved to ids (`crate::rules::catalog`
//! keeps them per table), a decision reads their facts without hashing a
//! string. Items are only ever added, and an id never changes.
//!
//! A resolution can be cached: [`ItemTable::serial`] tells tables apart (a
//! snapshot load builds a new one) and [`ItemTable::added`] counts the items
//! whose names can be found, bumped only after an item's name is in the map.
//! A name looked up after reading `added() == n` and not found belongs to an
//! item added later, so `added()` is above `n` by the time the item can be
//! found: a cache that read `n` before resolving needs re-checking its
//! unknown names only when `added()` has moved.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ahash::RandomState;
use dashmap::DashMap;
use parking_lot::RwLock;

use super::{ItemInfo, POPULARITY_DAYS};

/// Shards of the facts table (a power of two).
pub(crate) const ITEM_SHARDS: usize = 16;

/// Serials of item tables: each table gets the next one (0 is never used).
static SERIALS: AtomicU64 = AtomicU64::new(1);

/// A shop's items: names -> ids, facts by id (see the module docs).
#[derive(Debug)]
pub(crate) struct ItemTable {
    ids: DashMap<Box<str>, u32, RandomState>,
    /// Shard `id % ITEM_SHARDS`, slot `id / ITEM_SHARDS`.
    facts: Box<[RwLock<Vec<ItemInfo>>]>,
    /// The next id to hand out.
    pub(crate) next: AtomicU32,
    /// Items whose names are in `ids` (bumped after the insert).
    added: AtomicU32,
    serial: u64,
}

impl Default for ItemTable {
    fn default() -> ItemTable {
        ItemTable {
            ids: DashMap::default(),
            facts: (0..ITEM_SHARDS).map(|_| RwLock::new(Vec::new())).collect(),
            next: AtomicU32::new(0),
            added: AtomicU32::new(0),
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// A fresh item's facts.
fn fresh(id: u32) -> ItemInfo {
    ItemInfo {
        id,
        category: None,
        buys: [(0, 0); POPULARITY_DAYS],
        price: None,
    }
}

#[inline]
fn place(id: u32) -> (usize, usize) {
    (id as usize % ITEM_SHARDS, id as usize / ITEM_SHARDS)
}

impl ItemTable {
    /// A table of `names` with `infos` (id `i` is `names[i]`, `infos[i]`),
    /// as a snapshot holds them; `Err(i)` when name `i` repeats an earlier one.
    pub(crate) fn from_parts(names: Vec<&str>, infos: Vec<ItemInfo>) -> Result<ItemTable, usize> {
        let count = names.len().min(infos.len());
        let mut table = ItemTable {
            ids: DashMap::with_capacity_and_hasher(count, RandomState::default()),
            ..ItemTable::default()
        };
        for (i, name) in names.into_iter().take(count).enumerate() {
            if table.ids.insert(name.into(), i as u32).is_some() {
                return Err(i);
            }
        }
        for (i, mut info) in infos.into_iter().take(count).enumerate() {
            info.id = i as u32;
            let (shard, _) = place(i as u32);
            table.facts[shard].get_mut().push(info);
        }
        table.next.store(count as u32, Ordering::Relaxed);
        table.added.store(count as u32, Ordering::Release);
        Ok(table)
    }

    /// This table's serial: no other table of the process has it.
    #[inline]
    pub(crate) fn serial(&self) -> u64 {
        self.serial
    }

    /// How many items can be found by name (see the module docs).
    #[inline]
    pub(crate) fn added(&self) -> u32 {
        self.added.load(Ordering::Acquire)
    }

    /// How many ids have been handed out (ids are `0..len`).
    pub(crate) fn len(&self) -> u32 {
        self.next.load(Ordering::Acquire)
    }

    /// The id of an item seen in events.
    #[inline]
    pub(crate) fn id(&self, item: &str) -> Option<u32> {
        self.ids.get(item).map(|id| *id)
    }

    /// Runs `f` on the facts of item `id` (`None` for an unknown id).
    #[inline]
    pub(crate) fn facts<R>(&self, id: u32, f: impl FnOnce(&ItemInfo) -> R) -> Option<R> {
        let (shard, slot) = place(id);
        self.facts.get(shard)?.read().get(slot).map(f)
    }

    /// Runs `f` on the facts of item `id` to change them (nothing for an unknown id).
    pub(crate) fn update(&self, id: u32, f: impl FnOnce(&mut ItemInfo)) {
        let (shard, slot) = place(id);
        if let Some(shard) = self.facts.get(shard) {
            shard.write().get_mut(slot).map(f);
        }
    }

    /// The id of `item`, added when new.
    pub(crate) fn intern(&self, item: &str) -> u32 {
        if let Some(id) = self.id(item) {
            return id;
        }
        let mut fresh_id = None;
        let id = *self.ids.entry(item.into()).or_insert_with(|| {
            let id = self.next.fetch_add(1, Ordering::AcqRel);
            // The facts' slot exists before the name can be found.
            let (shard, slot) = place(id);
            let mut facts = self.facts[shard].write();
            if facts.len() <= slot {
                let from = facts.len() as u32;
                facts.extend((from..=slot as u32).map(|s| fresh(s * ITEM_SHARDS as u32 + shard as u32)));
            }
            fresh_id = Some(id);
            id
        });
        if fresh_id.is_some() {
            self.added.fetch_add(1, Ordering::AcqRel);
        }
        id
    }

    /// Every item's name and id, in no order.
    pub(crate) fn names(&self) -> impl Iterator<Item = (Box<str>, u32)> + '_ {
        self.ids.iter().map(|pair| (pair.key().clone(), *pair.value()))
    }

    /// Runs `f` on the facts of every item with an id below `below`, by shard.
    pub(crate) fn each_below(&self, below: u32, mut f: impl FnMut(&ItemInfo)) {
        for shard in self.facts.iter() {
            for info in shard.read().iter().filter(|info| info.id < below) {
                f(info);
            }
        }
    }
}

/// An item's name and facts, as the tests read the table.
#[cfg(test)]
pub(crate) struct ItemPair(Box<str>, ItemInfo);

#[cfg(test)]
impl ItemPair {
    pub(crate) fn key(&self) -> &str {
        &self.0
    }

    pub(crate) fn value(&self) -> &ItemInfo {
        &self.1
    }
}

#[cfg(test)]
impl ItemTable {
    /// Every item's name and facts, in no order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = ItemPair> + '_ {
        self.names()
            .filter_map(|(name, id)| self.facts(id, |info| ItemPair(name, info.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_and_facts_follow_them() {
        let table = ItemTable::default();
        let ids: Vec<u32> = (0..40).map(|i| table.intern(&format!("i{i}"))).collect();
        assert_eq!(ids, (0..40).collect::<Vec<_>>());
        assert_eq!(table.intern("i7"), 7);
        assert_eq!((table.len(), table.added()), (40, 40));
        table.update(33, |info| info.price = Some((1, 2.5)));
        assert_eq!(
            table.facts(33, |info| (info.id, info.price)),
            Some((33, Some((1, 2.5))))
        );
        assert_eq!(table.facts(40, |info| info.id), None);
        assert_eq!(table.id("i33"), Some(33));
        assert_eq!(table.id("nope"), None);
    }

    #[test]
    fn serials_differ() {
        assert_ne!(ItemTable::default().serial(), ItemTable::default().serial());
    }

    #[test]
    fn a_snapshot_table_refuses_a_repeated_name() {
        let infos = || (0..3).map(fresh).collect::<Vec<_>>();
        assert_eq!(ItemTable::from_parts(vec!["a", "b", "a"], infos()).err(), Some(2));
        let table = ItemTable::from_parts(vec!["a", "b", "c"], infos()).unwrap_or_default();
        assert_eq!((table.id("c"), table.len(), table.added()), (Some(2), 3, 3));
    }
}
