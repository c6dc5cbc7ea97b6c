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
//! A decision does not even take those locks: what it reads of an item
//! (category, price, purchases per day) lives only in an [`ItemView`] of
//! atomics, written by the writer that changes the item, under the item's
//! shard lock, and read with plain loads. The facts table keeps only what
//! the view cannot hold: when the category and the price were told (a
//! [`Told`], 16 bytes an item; a writer rebuilds the whole [`ItemInfo`] from
//! it and the view under the lock, changes it and writes both back, so
//! read-modify-writes stay serialized). Facts shards grow by an eighth. Views sit in buckets of doubling size allocated
//! as ids are handed out (`OnceLock`s: no lock to find one either). A
//! decision judging ~25 items thus does no read-modify-write per item, which
//! a lock does twice (and each is a fence that waits for the decision's
//! outstanding cache misses).
//!
//! A resolution can be cached: [`ItemTable::serial`] tells tables apart (a
//! snapshot load builds a new one) and [`ItemTable::added`] counts the items
//! whose names can be found, bumped only after an item's name is in the map.
//! A name looked up after reading `added() == n` and not found belongs to an
//! item added later, so `added()` is above `n` by the time the item can be
//! found: a cache that read `n` before resolving needs re-checking its
//! unknown names only when `added()` has moved.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use ahash::RandomState;
use dashmap::DashMap;
use parking_lot::RwLock;

use super::{ItemInfo, NONE, POPULARITY_DAYS};

/// Shards of the facts table (a power of two).
pub(crate) const ITEM_SHARDS: usize = 16;

/// Items in the first bucket of views (`1 << FIRST_BUCKET_BITS`); bucket `b`
/// holds twice as many as bucket `b - 1`.
const FIRST_BUCKET_BITS: u32 = 5;
/// Buckets of views: enough for every `u32` id.
const BUCKETS: usize = 28;

/// The price word of an item without a price (a NaN, never a valid price).
const NO_PRICE: u64 = u64::MAX;

/// What a decision reads of an item (category, price, purchases per day),
/// copied from its [`ItemInfo`] by the writer that changed it, under that
/// item's shard lock, and read with plain atomic loads: no lock, no
/// read-modify-write on the decision's path. Each word is the latest
/// value written; a reader racing a writer sees each word old or new.
#[derive(Debug)]
pub(crate) struct ItemView {
    category: AtomicU32,
    price: AtomicU64,
    /// `day << 32 | purchases`, one per slot of `ItemInfo::buys`.
    buys: [AtomicU64; POPULARITY_DAYS],
    /// The latest day with purchases (0: none; [`REWRITING`] while the
    /// writer changes `popular`), from which `popular` holds.
    popular_from: AtomicU32,
    /// The popularity on `popular_from` and on each of the 6 days after it
    /// (from the 7th on, it is 0: no purchase is later), so that a decision
    /// judging ~25 items reads two words an item, not the eight of `buys`.
    /// One word for the latest day alone answered only on that day: in the
    /// decide bench, the day after the data, 3 calls in 4 counted the buys.
    popular: [AtomicU32; POPULARITY_SPAN],
}

/// Days [`ItemView::popular`] holds: the popularity window's 7.
const POPULARITY_SPAN: usize = 7;

/// [`ItemView::popular_from`] while `popular` is being rewritten: readers
/// count the buys instead.
const REWRITING: u32 = u32::MAX;

/// The latest day of `buys` (each `(day, purchases)`) with purchases (0
/// when none), and the popularity on it and each of the 6 days after it
/// (saturating at `u32::MAX`).
fn popularity_from(buys: &[(u32, u32)]) -> (u32, [u32; POPULARITY_SPAN]) {
    let latest = buys
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(day, _)| *day)
        .max()
        .unwrap_or(0);
    let mut popular = [0; POPULARITY_SPAN];
    for (k, value) in popular.iter_mut().enumerate() {
        // The window of day `latest + k` starts 6 days before it.
        let first = (u64::from(latest) + k as u64).saturating_sub(6);
        let sum: u64 = buys
            .iter()
            .filter(|(day, n)| *n > 0 && u64::from(*day) >= first)
            .map(|(_, n)| u64::from(*n))
            .sum();
        *value = u32::try_from(sum).unwrap_or(u32::MAX);
    }
    (latest, popular)
}

impl Default for ItemView {
    fn default() -> ItemView {
        ItemView {
            category: AtomicU32::new(NONE),
            price: AtomicU64::new(NO_PRICE),
            buys: Default::default(),
            popular_from: AtomicU32::new(0),
            popular: Default::default(),
        }
    }
}

impl ItemView {
    /// Writes `info` to the view; called under the item's shard lock.
    fn publish(&self, info: &ItemInfo) {
        self.publish_values(info);
        self.publish_buys(&info.buys);
    }

    /// Writes `info`'s category and price (see [`ItemView::publish`]).
    fn publish_values(&self, info: &ItemInfo) {
        self.category.store(info.category(), Ordering::Relaxed);
        let price = info.price.map_or(NO_PRICE, |(_, p)| p.to_bits());
        self.price.store(price, Ordering::Relaxed);
    }

    /// Writes the purchases per day and the popularity they give (see
    /// [`ItemView::publish`]).
    fn publish_buys(&self, buys: &[(u32, u32); POPULARITY_DAYS]) {
        // A seqlock with the day as its sequence: readers that see
        // `REWRITING`, or a day that changed while they read, count the buys.
        self.popular_from.store(REWRITING, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        for (word, (day, n)) in self.buys.iter().zip(buys) {
            word.store(u64::from(*day) << 32 | u64::from(*n), Ordering::Relaxed);
        }
        let (from, popular) = popularity_from(buys);
        for (word, value) in self.popular.iter().zip(popular) {
            word.store(value, Ordering::Relaxed);
        }
        self.popular_from.store(from, Ordering::Release);
    }

    /// The facts of item `id`, whose told times are `told`: the view holds
    /// the rest (read under the item's shard lock, so exact).
    fn facts(&self, id: u32, told: Told) -> ItemInfo {
        let category = self.category();
        let mut buys = [(0, 0); POPULARITY_DAYS];
        for (slot, word) in buys.iter_mut().zip(&self.buys) {
            let word = word.load(Ordering::Relaxed);
            *slot = ((word >> 32) as u32, word as u32);
        }
        ItemInfo {
            id,
            category: (category != NONE).then_some((told.category, category)),
            buys,
            price: self.price().map(|price| (told.price, price)),
        }
    }

    /// The item's category ([`NONE`] without one).
    #[inline]
    pub(crate) fn category(&self) -> u32 {
        self.category.load(Ordering::Relaxed)
    }

    /// The item's known price.
    #[inline]
    pub(crate) fn price(&self) -> Option<f64> {
        match self.price.load(Ordering::Relaxed) {
            NO_PRICE => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    /// Distinct purchases over the 7 days ending with `today`, as
    /// `ItemInfo::popularity` counts them.
    #[inline]
    pub(crate) fn popularity(&self, today: u32) -> u32 {
        self.popularity_with(today, || ())
    }

    /// [`ItemView::popularity`], running `between` after its first read of
    /// the day (for a test to rewrite the view there).
    #[inline]
    fn popularity_with(&self, today: u32, between: impl FnOnce()) -> u32 {
        let from = self.popular_from.load(Ordering::Acquire);
        between();
        if from != REWRITING && today >= from {
            let ahead = (today - from) as usize;
            let n = self.popular.get(ahead).map_or(0, |n| n.load(Ordering::Relaxed));
            std::sync::atomic::fence(Ordering::Acquire);
            // The same day after the read: `n` is that day's (a rewrite
            // that kept the day wrote the same day's value).
            if self.popular_from.load(Ordering::Relaxed) == from {
                return n;
            }
        }
        self.buys
            .iter()
            .map(|word| word.load(Ordering::Relaxed))
            .map(|word| ((word >> 32) as u32, word as u32))
            .filter(|(day, _)| *day <= today && today - day < 7)
            // Saturating, as `popularity_from` is: a plain sum overflows
            // (a panic in debug builds, a wrapped count in release).
            .fold(0u32, |sum, (_, n)| sum.saturating_add(n))
    }
}

/// The bucket of views holding `id`, and its place there.
#[inline]
fn bucket_of(id: u32) -> (usize, usize) {
    let n = u64::from(id) + (1 << FIRST_BUCKET_BITS);
    let bucket = 63 - n.leading_zeros() - FIRST_BUCKET_BITS;
    (bucket as usize, (n - (1u64 << (bucket + FIRST_BUCKET_BITS))) as usize)
}

/// What the table keeps of an item beside its [`ItemView`]: when its
/// category and its price were told (meaningful only while the view has
/// them), which decides whether a later event's value wins. The view holds
/// the values themselves and the purchases per day, so an item's facts
/// take 16 bytes here instead of a whole [`ItemInfo`] (120 bytes).
#[derive(Debug, Clone, Copy, Default)]
struct Told {
    category: i64,
    price: i64,
}

impl Told {
    fn of(info: &ItemInfo) -> Told {
        Told {
            category: info.category.map_or(0, |(ts, _)| ts),
            price: info.price.map_or(0, |(ts, _)| ts),
        }
    }
}

/// Serials of item tables: each table gets the next one (0 is never used).
static SERIALS: AtomicU64 = AtomicU64::new(1);

/// A shop's items: names -> ids, facts by id (see the module docs).
#[derive(Debug)]
pub(crate) struct ItemTable {
    ids: DashMap<Box<str>, u32, RandomState>,
    /// Shard `id % ITEM_SHARDS`, slot `id / ITEM_SHARDS`: the told times;
    /// the lock also serializes the writers of the item's view.
    facts: Box<[RwLock<Vec<Told>>]>,
    /// The next id to hand out.
    pub(crate) next: AtomicU32,
    /// Items whose names are in `ids` (bumped after the insert).
    added: AtomicU32,
    serial: u64,
    /// What decisions read, by id: bucket `b` holds `32 << b` items,
    /// allocated when its first id is handed out (see [`ItemView`]).
    views: [OnceLock<Box<[ItemView]>>; BUCKETS],
}

impl Default for ItemTable {
    fn default() -> ItemTable {
        ItemTable {
            ids: DashMap::default(),
            facts: (0..ITEM_SHARDS).map(|_| RwLock::new(Vec::new())).collect(),
            next: AtomicU32::new(0),
            added: AtomicU32::new(0),
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
            views: Default::default(),
        }
    }
}

/// A fresh item's facts.
#[cfg(test)]
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
        for shard in table.facts.iter_mut() {
            shard.get_mut().reserve_exact(count.div_ceil(ITEM_SHARDS));
        }
        for (i, info) in infos.iter().take(count).enumerate() {
            table.view_slot(i as u32).publish(info);
            let (shard, _) = place(i as u32);
            table.facts[shard].get_mut().push(Told::of(info));
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
    pub(crate) fn facts<R>(&self, id: u32, f: impl FnOnce(&ItemInfo) -> R) -> Option<R> {
        let (shard, slot) = place(id);
        let facts = self.facts.get(shard)?.read();
        let told = *facts.get(slot)?;
        Some(f(&self.view(id)?.facts(id, told)))
    }

    /// Runs `f` on the facts of item `id` to change them, then publishes
    /// them to its [`ItemView`] (nothing for an unknown id).
    pub(crate) fn update(&self, id: u32, f: impl FnOnce(&mut ItemInfo)) {
        let (shard, slot) = place(id);
        if let Some(shard) = self.facts.get(shard) {
            let mut facts = shard.write();
            if let Some(told) = facts.get_mut(slot) {
                let view = self.view_slot(id);
                let mut info = view.facts(id, *told);
                let buys = info.buys;
                f(&mut info);
                *told = Told::of(&info);
                view.publish_values(&info);
                // Most updates tell a category or a price: the purchases
                // and their popularity word are written only when they moved.
                if info.buys != buys {
                    view.publish_buys(&info.buys);
                }
            }
        }
    }

    /// What a decision reads of item `id`, without a lock (`None` for an id
    /// not handed out).
    #[inline]
    pub(crate) fn view(&self, id: u32) -> Option<&ItemView> {
        let (bucket, at) = bucket_of(id);
        self.views.get(bucket)?.get()?.get(at)
    }

    /// The view of item `id`, its bucket allocated if need be.
    fn view_slot(&self, id: u32) -> &ItemView {
        let (bucket, at) = bucket_of(id);
        let size = 1usize << (bucket as u32 + FIRST_BUCKET_BITS);
        let views = self.views[bucket].get_or_init(|| (0..size).map(|_| ItemView::default()).collect());
        &views[at]
    }

    /// The id of `item`, added when new.
    pub(crate) fn intern(&self, item: &str) -> u32 {
        if let Some(id) = self.id(item) {
            return id;
        }
        let mut fresh_id = None;
        let id = *self.ids.entry(item.into()).or_insert_with(|| {
            let id = self.next.fetch_add(1, Ordering::AcqRel);
            // The facts' and view's slots exist before the name can be found.
            self.view_slot(id);
            let (shard, slot) = place(id);
            let mut facts = self.facts[shard].write();
            if facts.len() <= slot {
                // Grown by an eighth, not doubled (as profiles are).
                let more = slot + 1 - facts.len();
                if facts.capacity() - facts.len() < more {
                    let eighth = facts.len() / 8;
                    facts.reserve_exact(more.max(eighth).max(16));
                }
                facts.resize(slot + 1, Told::default());
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
        for (shard, lock) in self.facts.iter().enumerate() {
            let facts = lock.read();
            for (slot, told) in facts.iter().enumerate() {
                let id = (slot * ITEM_SHARDS + shard) as u32;
                if let Some(view) = self.view(id).filter(|_| id < below) {
                    f(&view.facts(id, *told));
                }
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
        table.update(33, |info| {
            info.category = Some((5, 9));
            info.add_buy(100);
            info.add_buy(96);
            info.add_buy(90);
        });
        let view = |id| table.view(id).map(|v| (v.category(), v.price(), v.popularity(100)));
        assert_eq!(view(33), Some((9, Some(2.5), 2)));
        assert_eq!(view(39), Some((NONE, None, 0)));
        assert_eq!(table.id("i33"), Some(33));
        assert_eq!(table.id("nope"), None);
    }

    /// Threads interning overlapping names get one dense id per name, every
    /// id's facts slot names that id, and a reader never finds a name whose
    /// item `added` does not count yet (what the rule catalogs' cache relies on).
    #[test]
    fn concurrent_interning_gives_dense_ids_counted_once_findable() {
        let table = ItemTable::default();
        let names: Vec<String> = (0..600).map(|i| format!("item-{i}")).collect();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (table, names) = (&table, &names);
                s.spawn(move || {
                    for k in 0..names.len() {
                        table.intern(&names[(k * 7 + t * 151) % names.len()]);
                    }
                });
            }
            s.spawn(|| {
                for name in names.iter().cycle().take(5_000) {
                    let added = table.added();
                    if let Some(id) = table.id(name) {
                        assert!(table.facts(id, |info| info.id) == Some(id), "{name}");
                    } else {
                        // Not findable: `added` has not counted it yet.
                        assert!(added < names.len() as u32);
                    }
                }
            });
        });
        assert_eq!((table.len(), table.added()), (600, 600));
        let mut ids: Vec<u32> = names.iter().map(|n| table.id(n).unwrap_or(u32::MAX)).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..600).collect::<Vec<_>>());
        for id in 0..600 {
            assert_eq!(table.facts(id, |info| info.id), Some(id));
        }
    }

    /// Views sit at every id, bucket boundaries included, each id once.
    #[test]
    fn buckets_cover_every_id_once() {
        let mut next = (0, 0);
        for id in 0..5_000u32 {
            let (bucket, at) = bucket_of(id);
            assert_eq!((bucket, at), next, "{id}");
            let size = 1usize << (bucket as u32 + FIRST_BUCKET_BITS);
            next = if at + 1 == size {
                (bucket + 1, 0)
            } else {
                (bucket, at + 1)
            };
        }
        assert_eq!(bucket_of(u32::MAX).0, BUCKETS - 1);
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

    /// A reader whose view is rewritten between its reads of the day (a
    /// purchase on a later day moved it) counts the buys instead of using
    /// the new day's popularity, which counts that later purchase.
    #[test]
    fn a_rewrite_during_a_read_sends_the_reader_to_the_buys() {
        let mut info = fresh(0);
        info.add_buy(100);
        let view = ItemView::default();
        view.publish(&info);
        assert_eq!(view.popularity(101), 1);
        info.add_buy(103);
        info.add_buy(103);
        // The reader has read the day (100) when the view is rewritten to
        // day 103's, whose index 1 is day 104's popularity: 3.
        let seen = view.popularity_with(101, || view.publish(&info));
        assert_eq!(seen, 1, "day 101 counts the purchase on day 100 only");
        assert_eq!(
            (view.popularity(101), view.popularity(104), view.popularity(110)),
            (1, 3, 0)
        );
    }

    /// The view's popularity agrees with counting the buys on every day
    /// around the purchases: rings filled in any order, days at the old
    /// word's bounds, counts past `u32` in sum.
    #[test]
    fn the_popularity_word_agrees_with_counting_the_buys() {
        use proptest::prelude::*;
        let days = prop_oneof![
            0u32..40,
            20_000u32..20_040,
            (1u32 << 21) - 20..(1u32 << 21) + 20,
            u32::MAX - 40..=u32::MAX - 8,
        ];
        let counts = prop_oneof![1u32..4, Just(u32::MAX / 2)];
        let buys = proptest::collection::vec((days, counts), 0..24);
        proptest!(ProptestConfig::with_cases(2_000), |(buys in buys, spread in 0u32..30)| {
            let mut info = fresh(0);
            for (day, n) in &buys {
                for _ in 0..(*n).min(3) {
                    info.add_buy(*day);
                }
                // Large counts go in whole, as a snapshot can hold them.
                if *n > 3 {
                    let slot = &mut info.buys[*day as usize % POPULARITY_DAYS];
                    if slot.0 == *day {
                        slot.1 = *n;
                    }
                }
            }
            let view = ItemView::default();
            view.publish(&info);
            let latest = info.buys.iter().map(|(d, _)| *d).max().unwrap_or(0);
            for today in latest.saturating_sub(spread)..=latest.saturating_add(spread).min(u32::MAX - 8) {
                let counted: u64 = info
                    .buys
                    .iter()
                    .filter(|(day, _)| *day <= today && u64::from(*day) + 7 > u64::from(today))
                    .map(|(_, n)| u64::from(*n))
                    .sum();
                if let Ok(counted) = u32::try_from(counted) {
                    prop_assert_eq!(view.popularity(today), counted, "today {}", today);
                }
            }
        });
    }
}

#[cfg(test)]
#[path = "items_attack.rs"]
mod attack;

#[cfg(test)]
#[path = "popularity_attack.rs"]
mod popularity_attack;
