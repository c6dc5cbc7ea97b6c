//! Rule-local ids of the items an `items` section names, computed when the
//! file is loaded so that a decision compares candidates by number: each
//! distinct item id of the pools, the complement lists and the complement
//! keys gets a dense `u32`, and a decision keeps a bitset of the ones it
//! has already placed instead of comparing strings.
//!
//! The section's fields are public, so a caller may edit a loaded rule set
//! (add a pool, replace an item, change a complement list). A decision
//! therefore checks that the catalog still describes the section
//! ([`ItemCatalog::describes`]: the pools' items are the very `Arc`s it was
//! built from, and the context item's complement list too) and, when it
//! does not, decides with a catalog built afresh from the edited section.

use std::collections::HashMap;
use std::sync::Arc;

use ahash::RandomState;

/// The items of an `items` section by rule-local id (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ItemCatalog {
    /// Every named item (and complement key) -> its id.
    ids: HashMap<Box<str>, u32, RandomState>,
    /// Per pool, in file order, the ids of its items in order.
    pools: Vec<Box<[u32]>>,
    /// Per id, the index into `complements` of its complement list.
    complements_of: Vec<Option<u32>>,
    /// Complement lists: their ids and their items.
    complements: Vec<ComplementList>,
    /// Per pool, the items it was built from (compared by address).
    sources: Vec<Box<[Arc<str>]>>,
    /// How many complement lists the section had.
    complement_keys: usize,
}

/// One complement list: its items' ids and the items.
type ComplementList = (Box<[u32]>, Vec<Arc<str>>);

impl ItemCatalog {
    /// The catalog of `pools` (each pool's items) and `complements`.
    pub(crate) fn of<'a>(
        pools: impl Iterator<Item = &'a [Arc<str>]> + Clone,
        complements: &HashMap<Box<str>, Vec<Arc<str>>>,
    ) -> ItemCatalog {
        let pools_again = pools.clone();
        let mut catalog = ItemCatalog::default();
        catalog.pools = pools
            .map(|items| items.iter().map(|id| catalog.intern(id)).collect())
            .collect();
        for (key, list) in complements {
            let key = catalog.intern(key);
            let ids = list.iter().map(|id| catalog.intern(id)).collect();
            let at = catalog.complements.len() as u32;
            catalog.complements.push((ids, list.clone()));
            catalog.complements_of.resize(catalog.ids.len(), None);
            catalog.complements_of[key as usize] = Some(at);
        }
        catalog.complements_of.resize(catalog.ids.len(), None);
        catalog.sources = pools_again.map(|items| items.into()).collect();
        catalog.complement_keys = complements.len();
        catalog
    }

    /// Whether the catalog still describes a section whose pools are
    /// `pools`, with `complement_keys` complement lists of which the context
    /// item's is `context_list`, given the catalog's own list for the
    /// context item, `mine`: the same pools of the very same item `Arc`s,
    /// and the same list for the context item. One pointer comparison per
    /// pool item, no allocation.
    pub(crate) fn describes(
        &self,
        pools: &[super::Pool],
        complement_keys: usize,
        context_list: Option<&[Arc<str>]>,
        mine: Option<&[Arc<str>]>,
    ) -> bool {
        let same =
            |a: &[Arc<str>], b: &[Arc<str>]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y));
        pools.len() == self.sources.len()
            && pools.iter().zip(&self.sources).all(|(p, s)| same(&p.items, s))
            && complement_keys == self.complement_keys
            && match (context_list, mine) {
                (None, None) => true,
                (Some(a), Some(b)) => same(a, b),
                _ => false,
            }
    }

    fn intern(&mut self, item: &str) -> u32 {
        let next = self.ids.len() as u32;
        *self.ids.entry(item.into()).or_insert(next)
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
}
