//! Rule-local ids of the items an `items` section names, computed when the
//! file is loaded so that a decision compares candidates by number: each
//! distinct item id of the pools, the complement lists and the complement
//! keys gets a dense `u32`, and a decision keeps a bitset of the ones it
//! has already placed instead of comparing strings.
//!
//! A loaded rule set's `items` section cannot change (`RuleSet::items`
//! hands out a shared reference only, and a `RuleSet` cannot be built
//! outside this crate but by loading a file), so the catalog always
//! describes the section it was built from: a decision does not check.
//!
//! The catalog also keeps, for the shop's item table a decision last used
//! ([`ItemCatalog::shop_ids`]), each rule-local id's id in that table, so
//! that a decision reads an item's facts without hashing its name. Items
//! are only ever added to a table: a name the table did not know is looked
//! up again only once the table has added items since (see
//! `crate::index::items`), and a different table (another shop's index, a
//! snapshot loaded) is resolved afresh.

use std::collections::HashMap;
use std::sync::Arc;

use ahash::RandomState;
use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::index::items::ItemTable;

/// A rule item the shop's item table does not know (yet).
pub(crate) const UNKNOWN: u32 = u32::MAX;

/// The items of an `items` section by rule-local id (see the module docs).
#[derive(Debug, Default)]
pub struct ItemCatalog {
    /// Every named item (and complement key) -> its id.
    ids: HashMap<Box<str>, u32, RandomState>,
    /// Per id, the item's name.
    names: Vec<Arc<str>>,
    /// Per pool, in file order, the ids of its items in order.
    pools: Vec<Box<[u32]>>,
    /// Per id, the index into `complements` of its complement list.
    complements_of: Vec<Option<u32>>,
    /// Complement lists: their ids and their items.
    complements: Vec<ComplementList>,
    /// Per id, its id in the item table a decision last used.
    resolved: RwLock<Resolved>,
}

impl Clone for ItemCatalog {
    /// The same catalog; the clone resolves item ids afresh.
    fn clone(&self) -> ItemCatalog {
        ItemCatalog {
            ids: self.ids.clone(),
            names: self.names.clone(),
            pools: self.pools.clone(),
            complements_of: self.complements_of.clone(),
            complements: self.complements.clone(),
            resolved: RwLock::default(),
        }
    }
}

/// The rule-local ids resolved against one shop's item table.
#[derive(Debug, Default)]
struct Resolved {
    /// The table's serial (0: none yet).
    table: u64,
    /// `ItemTable::added` read before the last resolution.
    added: u32,
    /// How many ids the table did not know.
    unknown: usize,
    /// Per rule-local id, the table's id or [`UNKNOWN`].
    ids: Vec<u32>,
}

impl Resolved {
    /// Whether the ids hold for `table` whose `added()` reads `added`.
    #[inline]
    fn holds(&self, table: &ItemTable, added: u32, len: usize) -> bool {
        self.table == table.serial() && self.ids.len() == len && (self.unknown == 0 || self.added == added)
    }
}

/// One complement list: its items' ids and the items.
type ComplementList = (Box<[u32]>, Vec<Arc<str>>);

impl ItemCatalog {
    /// The catalog of `pools` (each pool's items) and `complements`.
    pub(crate) fn of<'a>(
        pools: impl Iterator<Item = &'a [Arc<str>]>,
        complements: &HashMap<Box<str>, Vec<Arc<str>>>,
    ) -> ItemCatalog {
        let mut catalog = ItemCatalog::default();
        catalog.pools = pools
            .map(|items| items.iter().map(|id| catalog.intern(id)).collect())
            .collect();
        for (key, list) in complements {
            let key = catalog.intern(&Arc::from(&**key));
            let ids = list.iter().map(|id| catalog.intern(id)).collect();
            let at = catalog.complements.len() as u32;
            catalog.complements.push((ids, list.clone()));
            catalog.complements_of.resize(catalog.ids.len(), None);
            catalog.complements_of[key as usize] = Some(at);
        }
        catalog.complements_of.resize(catalog.ids.len(), None);
        catalog
    }

    fn intern(&mut self, item: &Arc<str>) -> u32 {
        let next = self.ids.len() as u32;
        let names = &mut self.names;
        *self.ids.entry((**item).into()).or_insert_with(|| {
            names.push(item.clone());
            next
        })
    }

    /// How many distinct ids there are (ids are `0..len`).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the section names no item.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The id of an item the section names.
    pub fn id(&self, item: &str) -> Option<u32> {
        match item {
            "" => None,
            item => self.ids.get(item).copied(),
        }
    }

    /// The ids of pool `pool`'s items, in order (empty for no such pool).
    pub fn pool(&self, pool: usize) -> &[u32] {
        self.pools.get(pool).map_or(&[], |ids| &ids[..])
    }

    /// The complements of the item with id `id`: their ids and items.
    pub fn complements(&self, id: u32) -> Option<(&[u32], &[Arc<str>])> {
        let at = (*self.complements_of.get(id as usize)?)?;
        self.complements
            .get(at as usize)
            .map(|(ids, items)| (&ids[..], &items[..]))
    }

    /// Each rule-local id's id in `table` ([`UNKNOWN`] for an item it does
    /// not know), indexed by rule-local id; empty without a table. Resolves
    /// names only when the cached ids are not `table`'s, or some were
    /// unknown and the table has added items since (see the module docs).
    pub(crate) fn shop_ids(&self, table: Option<&ItemTable>) -> Option<MappedRwLockReadGuard<'_, [u32]>> {
        let table = table?;
        let added = table.added();
        let len = self.names.len();
        let cached = self.resolved.read();
        if cached.holds(table, added, len) {
            return Some(RwLockReadGuard::map(cached, |r| &r.ids[..]));
        }
        drop(cached);
        let mut r = self.resolved.write();
        // Read again: another thread may have resolved in between.
        let added = table.added();
        if !r.holds(table, added, len) {
            if r.table != table.serial() || r.ids.len() != len {
                r.table = table.serial();
                r.ids.clear();
                r.ids.resize(len, UNKNOWN);
            }
            let mut unknown = 0;
            for (id, name) in r.ids.iter_mut().zip(&self.names) {
                if *id == UNKNOWN {
                    *id = table.id(name).unwrap_or(UNKNOWN);
                    unknown += usize::from(*id == UNKNOWN);
                }
            }
            r.unknown = unknown;
            r.added = added;
        }
        Some(RwLockReadGuard::map(RwLockWriteGuard::downgrade(r), |r| &r.ids[..]))
    }
}
