//! Strings to dense `u32` ids, in about 11 to 21 bytes a name beyond its
//! own: 5 in its record, 6.4 to 12.8 in the table (8.4 at a million names),
//! the rest the arena's slack.
//!
//! A shop interns every visitor it hears of, so this table is the one part
//! of the index that grows with visitors who did nothing else. It is split
//! into [`SHARDS`] shards by a few middle bits of the name's hash, each
//! behind its own `RwLock`; a shard keeps one arena of records (id, name
//! length, name: no allocation per name) and a table of `u32` arena offsets
//! whose keys are compared in the arena (`index/line_table.rs`: 12 one-byte
//! tags and their 12 offsets in one 64-byte line, so a lookup reads that
//! line and then the record; 5.33 bytes a slot, at most 10 of 12 slots used
//! on average). The arena grows by a quarter at a time, not double (apply
//! pays a few more copies, the index less slack).
//!
//! Ids are dense and assigned in arrival order (`0..len()`) across shards,
//! so the other parts of the index can hold them in arrays and bitmaps.
//! Nothing is ever removed.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use ahash::RandomState;
use parking_lot::RwLock;

use super::line_table::LineTable;

/// Names `from_names_sized` hashes, and whose groups it reads, before it
/// inserts them.
const LOAD_BATCH: usize = 16;

/// Shards of an interner: a power of two.
const SHARDS: usize = 64;
/// The hash bits that pick a shard: above those the table uses for the
/// group of a shard of up to 2^40 groups, below its tag (the top byte).
const SHARD_SHIFT: u32 = 40;

/// One shard: names in an arena, their offsets in a hash table.
#[derive(Default)]
struct Shard {
    /// Offsets into `arena` of the records, hashed by name.
    table: LineTable,
    /// Records back to back: id u32 (little-endian) | name length varint | name.
    arena: Vec<u8>,
}

/// The id and the name of the record at `at` (empty for a bad offset,
/// which the shard never makes).
#[inline]
fn record(arena: &[u8], at: u32) -> (u32, &[u8]) {
    let rest = arena.get(at as usize..).unwrap_or_default();
    let Some((id, rest)) = rest.split_first_chunk::<4>() else {
        return (u32::MAX, &[]);
    };
    let (mut len, mut shift, mut used) = (0usize, 0, 0);
    for &b in rest.iter().take(5) {
        len |= usize::from(b & 0x7F) << shift;
        shift += 7;
        used += 1;
        if b < 0x80 {
            break;
        }
    }
    let name = rest.get(used..used + len).unwrap_or_default();
    (u32::from_le_bytes(*id), name)
}

impl Shard {
    #[inline]
    fn find(&self, hash: u64, key: &str) -> Option<u32> {
        self.table
            .find(hash, |at| record(&self.arena, at).1 == key.as_bytes())
            .map(|at| record(&self.arena, at).0)
    }

    /// `Err` with the id of `key` if it is here, else `Ok` with the id
    /// `next` gives, under which `key` is appended (one probe for both).
    fn add(&mut self, hasher: &RandomState, hash: u64, key: &str, next: impl FnOnce() -> u32) -> Result<u32, u32> {
        // A shard's arena past 4 GiB (256 GiB of names per interner) is far
        // beyond any memory this runs in; the offset saturates rather than panic.
        let at = u32::try_from(self.arena.len()).unwrap_or(u32::MAX);
        let arena = &self.arena;
        let added = self.table.insert_new(
            hash,
            at,
            |held| record(arena, held).1 == key.as_bytes(),
            |held| hasher.hash_one(name_str(record(arena, held).1)),
        );
        if let Err(held) = added {
            return Err(record(arena, held).0);
        }
        let id = next();
        // The record's exact size, so that an arena reserved for its
        // records (`from_names_sized`) is filled without growing.
        let varint = (usize::BITS - (key.len() | 1).leading_zeros()).div_ceil(7) as usize;
        let need = 4 + varint + key.len();
        if self.arena.capacity() - self.arena.len() < need {
            let more = need.max(self.arena.len() / 4).max(64);
            self.arena.reserve_exact(more);
        }
        self.arena.extend_from_slice(&id.to_le_bytes());
        let mut len = key.len();
        while len >= 0x80 {
            self.arena.push(len as u8 | 0x80);
            len >>= 7;
        }
        self.arena.push(len as u8);
        self.arena.extend_from_slice(key.as_bytes());
        Ok(id)
    }

    /// Every (name, id), in arrival order.
    fn each(&self, mut f: impl FnMut(&str, u32)) {
        let mut at = 0;
        while at < self.arena.len() {
            let (id, name) = record(&self.arena, at as u32);
            f(name_str(name), id);
            let mut varint = name.len() >> 7;
            let mut len_bytes = 1;
            while varint > 0 {
                varint >>= 7;
                len_bytes += 1;
            }
            at += 4 + len_bytes + name.len();
        }
    }
}

/// A record's name as text (it was copied from a `&str`).
#[inline]
fn name_str(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Strings to dense `u32` ids.
pub(crate) struct Interner {
    hasher: RandomState,
    shards: Box<[RwLock<Shard>]>,
    pub(crate) next: AtomicU32,
}

impl Default for Interner {
    fn default() -> Interner {
        Interner::with_hasher(RandomState::new())
    }
}

impl fmt::Debug for Interner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interner")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Interner {
    /// An empty interner hashing with `hasher` (tests fix its seeds).
    fn with_hasher(hasher: RandomState) -> Interner {
        Interner {
            hasher,
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            next: AtomicU32::new(0),
        }
    }

    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        &self.shards[(hash >> SHARD_SHIFT) as usize & (SHARDS - 1)]
    }

    /// The id of `key`, if interned.
    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.shard(hash).read().find(hash, key)
    }

    /// The id of `key`, assigning the next one if it is new.
    pub(crate) fn intern(&self, key: &str) -> u32 {
        let hash = self.hasher.hash_one(key);
        let lock = self.shard(hash);
        if let Some(id) = lock.read().find(hash, key) {
            return id;
        }
        // Assigned under the shard's write lock: a reader that sees the id
        // in a shard sees its name there too.
        let next = || self.next.fetch_add(1, Ordering::AcqRel);
        match lock.write().add(&self.hasher, hash, key, next) {
            Ok(id) | Err(id) => id,
        }
    }

    /// How many ids are assigned (`0..len()`).
    pub(crate) fn len(&self) -> u32 {
        self.next.load(Ordering::Acquire)
    }

    /// Calls `f` with every name and its id, shard by shard (each under its
    /// read lock), in no particular order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&str, u32)) {
        for lock in self.shards.iter() {
            lock.read().each(&mut f);
        }
    }

    /// An interner holding `names` under ids `0..n` in order; `Err(i)` when
    /// name `i` repeats an earlier one.
    pub(crate) fn from_names<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> Result<Interner, u32> {
        Interner::from_names_sized(names, 0)
    }

    /// [`from_names`](Self::from_names) for names of `name_bytes` bytes in
    /// all: each shard's arena is reserved once for its share of the
    /// records (and 1/32 more, for the hash's uneven split), so that
    /// filling it copies no arena over. The caller bounds `name_bytes` (a
    /// snapshot's: by the bytes of its block).
    pub(crate) fn from_names_sized<'a>(
        names: impl ExactSizeIterator<Item = &'a str>,
        name_bytes: usize,
    ) -> Result<Interner, u32> {
        let interner = Interner::default();
        let per_shard = names.len() / SHARDS + names.len() / SHARDS / 8 + 1;
        // A record: id (4 bytes), length varint (1 byte below 128), name.
        let records = name_bytes.saturating_add(names.len().saturating_mul(5)) / SHARDS;
        let arena = match name_bytes {
            0 => 0,
            _ => records + records / 32 + 64,
        };
        let mut shards: Vec<Shard> = (0..SHARDS)
            .map(|_| Shard {
                table: LineTable::with_capacity(per_shard),
                arena: Vec::with_capacity(arena),
            })
            .collect();
        let mut next = 0u32;
        let mut batch: Vec<(&str, u64)> = Vec::with_capacity(LOAD_BATCH);
        let mut names = names.peekable();
        while names.peek().is_some() {
            // Hash a batch and read each name's group first: the reads miss
            // the cache together, then the inserts find their lines loaded.
            batch.clear();
            let mut seen = 0u8;
            for name in names.by_ref().take(LOAD_BATCH) {
                let hash = interner.hasher.hash_one(name);
                seen ^= shards[(hash >> SHARD_SHIFT) as usize & (SHARDS - 1)].table.touch(hash);
                batch.push((name, hash));
            }
            std::hint::black_box(seen);
            for &(name, hash) in &batch {
                let shard = &mut shards[(hash >> SHARD_SHIFT) as usize & (SHARDS - 1)];
                if shard.add(&interner.hasher, hash, name, || next).is_err() {
                    return Err(next);
                }
                next += 1;
            }
        }
        Ok(Interner {
            shards: shards.into_iter().map(RwLock::new).collect(),
            next: AtomicU32::new(next),
            ..interner
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_and_stable() {
        let interner = Interner::default();
        let names: Vec<String> = (0..5_000).map(|i| format!("v-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(interner.intern(name), i as u32);
        }
        for (i, name) in names.iter().enumerate() {
            assert_eq!(interner.intern(name), i as u32, "again");
            assert_eq!(interner.get(name), Some(i as u32));
        }
        assert_eq!(interner.get("v-5000"), None);
        assert_eq!(interner.get(""), None);
        assert_eq!(interner.intern(""), 5_000, "the empty name is a name");
        assert_eq!(interner.len(), 5_001);
        let mut seen = vec![false; 5_001];
        interner.for_each(|name, id| {
            assert_eq!(interner.get(name), Some(id));
            seen[id as usize] = true;
        });
        assert!(seen.iter().all(|&s| s));
    }

    /// Names of every length class of the record's varint, and ones that
    /// share prefixes, come back whole (iteration walks the arena by them).
    #[test]
    fn long_names_and_prefixes_round_trip() {
        let interner = Interner::default();
        let names: Vec<String> = [0, 1, 127, 128, 300, 20_000]
            .iter()
            .flat_map(|&n| ["x".repeat(n), format!("{}y", "x".repeat(n))])
            .collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(interner.intern(name), i as u32);
        }
        let mut back = vec![String::new(); names.len()];
        interner.for_each(|name, id| back[id as usize] = name.to_string());
        assert_eq!(back, names);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(interner.get(name), Some(i as u32));
        }
    }

    #[test]
    fn from_names_keeps_order_and_refuses_repeats() {
        let rebuilt = Interner::from_names(["b", "a", "c"].into_iter()).unwrap();
        assert_eq!(
            (rebuilt.get("b"), rebuilt.get("a"), rebuilt.get("c")),
            (Some(0), Some(1), Some(2))
        );
        assert_eq!(rebuilt.intern("d"), 3);
        assert_eq!(Interner::from_names(["x", "y", "x"].into_iter()).err(), Some(2));
        // Names are inserted in batches: repeats at and across their bounds.
        let names: Vec<String> = (0..100).map(|i| format!("n-{i}")).collect();
        for (first, repeat) in [(0, 15), (0, 16), (3, 40), (15, 16), (99, 100)] {
            let mut with = names.clone();
            with.insert(repeat, names[first].clone());
            let rebuilt = Interner::from_names(with.iter().map(|n| n.as_str()));
            assert_eq!(rebuilt.err(), Some(repeat as u32), "{first} repeated at {repeat}");
        }
        let whole = Interner::from_names(names.iter().map(|n| n.as_str())).unwrap();
        assert_eq!(whole.len(), 100);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(whole.get(name), Some(i as u32));
        }
    }

    #[test]
    fn sized_arenas_are_filled_without_growing() {
        let names: Vec<String> = (0..100_000).map(|i| format!("v-{i}")).collect();
        let bytes = names.iter().map(|n| n.len()).sum();
        let sized = Interner::from_names_sized(names.iter().map(|n| n.as_str()), bytes).unwrap();
        let records = (bytes + 5 * names.len()) / SHARDS;
        let reserved = records + records / 32 + 64;
        let mut kept = 0;
        for shard in &sized.shards {
            let shard = shard.read();
            // A shard the hash gave more than its share may have grown once.
            if shard.arena.len() <= reserved {
                assert_eq!(shard.arena.capacity(), reserved, "reserved once, never grown");
                kept += 1;
            }
        }
        assert!(kept > SHARDS / 2, "{kept} shards within their share");
        for (i, name) in names.iter().enumerate() {
            assert_eq!(sized.get(name), Some(i as u32));
        }
        assert_eq!(sized.intern("new"), 100_000);
    }

    /// Against a map: names crowded into one shard, many of them with one
    /// tag (found by brute force under fixed seeds), so that their table
    /// doubles a dozen times and its groups hold several equal tags and
    /// overflow; plus names spread over every shard, and absent names with
    /// the same tag.
    #[test]
    fn model_with_names_that_share_shard_and_tag() {
        use std::collections::HashMap;

        let hasher = RandomState::with_seeds(1, 2, 3, 4);
        let interner = Interner::with_hasher(hasher.clone());
        let shard = |name: &str| (hasher.hash_one(name) >> SHARD_SHIFT) as usize & (SHARDS - 1);
        let tag = |name: &str| (hasher.hash_one(name) >> 56) as u8;
        let (mut crowded, mut same_tag, mut absent) = (vec![], vec![], vec![]);
        for i in 0..1_200_000 {
            let name = format!("c-{i}");
            if shard(&name) == 5 {
                if tag(&name) == 0x33 {
                    match i % 2 {
                        0 => same_tag.push(name),
                        _ => absent.push(name),
                    }
                } else if crowded.len() < 12_000 {
                    crowded.push(name);
                }
            }
        }
        assert!(
            same_tag.len() > 20 && absent.len() > 20,
            "{} {}",
            same_tag.len(),
            absent.len()
        );
        let mut model: HashMap<String, u32> = HashMap::new();
        let spread = (0..3_000).map(|i| format!("s-{i}"));
        let all: Vec<String> = crowded.into_iter().chain(same_tag).chain(spread).collect();
        for (n, name) in all.iter().enumerate() {
            // Every other name interned now, the rest later among repeats.
            let id = interner.intern(name);
            assert_eq!(model.insert(name.clone(), id), None);
            assert_eq!(id as usize, n);
            if n % 1_000 == 0 {
                for (name, &id) in &model {
                    assert_eq!(interner.get(name), Some(id), "{name}");
                }
            }
        }
        for (name, &id) in &model {
            assert_eq!(interner.get(name), Some(id), "{name}");
            assert_eq!(interner.intern(name), id, "{name} again");
        }
        for name in &absent {
            assert_eq!(interner.get(name), None, "{name}");
        }
        assert_eq!(interner.len() as usize, model.len());
        let mut seen = 0;
        interner.for_each(|name, id| {
            assert_eq!(model.get(name), Some(&id));
            seen += 1;
        });
        assert_eq!(seen, model.len());
        assert!(interner.shards[5].read().table.capacity() >= 12_000);
    }

    /// Threads interning the same names (two forwards, in step, two
    /// backwards), and reading them back meanwhile, agree on one id per
    /// name, and the ids are `0..n`, each once; over fresh interners.
    #[test]
    fn concurrent_interning_gives_one_dense_id_per_name() {
        use std::sync::Barrier;

        const THREADS: usize = 4;
        const NAMES: usize = 10_000;
        let names: Vec<String> = (0..NAMES).map(|i| format!("v-{i}")).collect();
        for round in 0..10 {
            let interner = Interner::default();
            let start = Barrier::new(THREADS);
            let seen: Vec<Vec<u32>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let (interner, names, start) = (&interner, &names, &start);
                        scope.spawn(move || {
                            start.wait();
                            let mut ids = vec![u32::MAX; NAMES];
                            for k in 0..NAMES {
                                let i = if t % 2 == 0 { k } else { NAMES - 1 - k };
                                let id = interner.intern(&names[i]);
                                assert_eq!(interner.get(&names[i]), Some(id));
                                ids[i] = id;
                            }
                            ids
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for ids in &seen[1..] {
                assert_eq!(ids, &seen[0], "round {round}: every thread saw the same id per name");
            }
            let mut sorted = seen[0].clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..NAMES as u32).collect::<Vec<_>>(), "dense, each once");
            assert_eq!(interner.len() as usize, NAMES);
        }
    }

    /// A snapshot's interner is sized up front: its tables never double
    /// while it loads. (2,400 names a shard fit 256 groups; with the 1/8
    /// added for the uneven split they take 512, which the interner would
    /// not have grown to.)
    #[test]
    fn sized_tables_are_filled_without_growing() {
        let names: Vec<String> = (0..153_600).map(|i| format!("v-{i}")).collect();
        let sized = Interner::from_names(names.iter().map(|n| n.as_str())).unwrap();
        let per_shard = names.len() / SHARDS + names.len() / SHARDS / 8 + 1;
        let reserved = LineTable::with_capacity(per_shard).capacity();
        assert_eq!(reserved, 5_120);
        for shard in &sized.shards {
            assert_eq!(shard.read().table.capacity(), reserved);
        }
    }
}

#[cfg(test)]
#[path = "interner_attack.rs"]
mod attack;
