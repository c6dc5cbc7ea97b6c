//! The interner and its line table under hostile names, against a
//! `HashMap` model: the empty name, names up to the server's visitor-id
//! bound ([`MAX_ID_BYTES`]) that differ only in their last byte (or only
//! in a multi-byte character at the end), names crafted under fixed seeds
//! to share a shard and the low bits that pick a group (so they crowd a
//! few groups at every table size and overflow into their neighbours),
//! interleaved with snapshot round trips: the names captured in id order
//! and rebuilt as `snapshot.rs` does (`from_names_sized`), and whole
//! indexes through `snapshot::encode` / `decode`.

use std::collections::HashMap;

use super::*;
use crate::event::MAX_ID_BYTES;
use crate::hash::SplitMix64;

/// Every (name, id) of `interner`, checked against `model` both ways.
fn agrees(interner: &Interner, model: &HashMap<String, u32>, what: &str) {
    assert_eq!(interner.len() as usize, model.len(), "{what}: len");
    for (name, &id) in model {
        assert_eq!(interner.get(name), Some(id), "{what}: {} bytes", name.len());
    }
    let mut seen = 0;
    interner.for_each(|name, id| {
        assert_eq!(model.get(name), Some(&id), "{what}: {} bytes", name.len());
        seen += 1;
    });
    assert_eq!(seen, model.len(), "{what}: for_each");
}

/// The round trip `snapshot.rs` makes: names in id order, rebuilt sized by
/// their bytes.
fn round_trip(interner: &Interner) -> Interner {
    let mut names = vec![String::new(); interner.len() as usize];
    interner.for_each(|name, id| names[id as usize] = name.to_string());
    let bytes = names.iter().map(String::len).sum();
    match Interner::from_names_sized(names.iter().map(String::as_str), bytes) {
        Ok(rebuilt) => rebuilt,
        Err(i) => panic!("name {i} repeats in a round trip"),
    }
}

/// Hostile names: empty, at the bound, one byte apart at the end, one
/// character apart at the end, and random lengths up to the bound.
fn hostile_names() -> Vec<String> {
    let mut names = vec![String::new(), " ".into(), "\0".into()];
    let long = "v".repeat(MAX_ID_BYTES - 1);
    for b in (b'!'..=b'~').chain([b'\0', b'\x7f']) {
        names.push(format!("{long}{}", b as char));
    }
    let long2 = "é".repeat((MAX_ID_BYTES - 4) / 2);
    for c in ['a', 'ß', '€', '😀', '\u{10FFFF}'] {
        names.push(format!("{long2}{c}"));
    }
    // Lengths at the record's varint bounds and the arena's growth steps.
    for n in [1, 63, 64, 65, 127, 128, 129, 255, 256, 511, MAX_ID_BYTES] {
        names.push("x".repeat(n));
        names.push(format!("{}y", "x".repeat(n - 1)));
    }
    let mut rng = SplitMix64::new(9);
    for i in 0..2_000 {
        let n = rng.index(MAX_ID_BYTES + 1);
        let mut name: String = (0..n).map(|k| (b'a' + ((i + k) % 26) as u8) as char).collect();
        name.truncate(n.saturating_sub(8));
        name.push_str(&format!("{i:08}"));
        names.push(name);
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| n.len() <= MAX_ID_BYTES && seen.insert(n.clone()));
    names
}

#[test]
fn hostile_names_against_a_map_through_round_trips() {
    let names = hostile_names();
    let mut interner = Interner::default();
    let mut model: HashMap<String, u32> = HashMap::new();
    for (k, name) in names.iter().enumerate() {
        let id = interner.intern(name);
        let want = model.len() as u32;
        assert_eq!(*model.entry(name.clone()).or_insert(want), id, "{} bytes", name.len());
        // Again: the same id, nothing new.
        assert_eq!(interner.intern(name), id);
        if k % 331 == 0 {
            agrees(&interner, &model, "before a round trip");
            interner = round_trip(&interner);
            agrees(&interner, &model, "after a round trip");
        }
    }
    agrees(&interner, &model, "at the end");
    let rebuilt = round_trip(&interner);
    agrees(&rebuilt, &model, "rebuilt at the end");
    // Absent names one byte off every held long one.
    for name in names.iter().filter(|n| n.len() == MAX_ID_BYTES) {
        let mut off = name.clone();
        off.pop();
        off.push('\u{1}');
        if !model.contains_key(&off) {
            assert_eq!(rebuilt.get(&off), None);
        }
    }
}

/// Names crafted under fixed seeds: one shard, and the same low 8 bits
/// (the same group in every table of up to 256 groups, neighbours
/// beyond), among names that are one byte apart at the end.
#[test]
fn names_crafted_to_share_a_group_against_a_map() {
    let hasher = RandomState::with_seeds(5, 6, 7, 8);
    let prefix = "p".repeat(MAX_ID_BYTES - 12);
    let mut crowded = Vec::new();
    let mut spread = Vec::new();
    for i in 0u64..3_000_000 {
        let name = format!("{prefix}{i:012}");
        let hash = hasher.hash_one(name.as_str());
        let shard = (hash >> SHARD_SHIFT) as usize & (SHARDS - 1);
        if shard == 9 && hash & 0xFF == 0x2A {
            crowded.push(name);
            if crowded.len() == 160 {
                break;
            }
        } else if i % 997 == 0 && spread.len() < 400 {
            spread.push(name);
        }
    }
    assert!(crowded.len() >= 100, "{} crafted names", crowded.len());
    let mut interner = Interner::with_hasher(hasher.clone());
    let mut model: HashMap<String, u32> = HashMap::new();
    let all: Vec<&String> = crowded.iter().chain(&spread).collect();
    // Crowded and spread names alternate, the crowded ones first in full.
    for (k, name) in all.iter().enumerate() {
        let id = interner.intern(name);
        let want = model.len() as u32;
        assert_eq!(*model.entry((*name).clone()).or_insert(want), id);
        if k % 37 == 0 {
            agrees(&interner, &model, "crafted");
        }
        if k % 101 == 0 {
            // A rebuilt interner hashes with fresh seeds: the crafted names
            // meet there no more than any others; re-crafted, go on.
            let rebuilt = round_trip(&interner);
            agrees(&rebuilt, &model, "crafted, rebuilt");
            let again = Interner::with_hasher(hasher.clone());
            let mut names = vec![String::new(); interner.len() as usize];
            interner.for_each(|name, id| names[id as usize] = name.to_string());
            for name in &names {
                again.intern(name);
            }
            agrees(&again, &model, "crafted, re-interned under the same seeds");
            interner = again;
        }
    }
    agrees(&interner, &model, "crafted, at the end");
    // Absent names that share the group: not found.
    for i in 3_000_000u64..3_400_000 {
        let name = format!("{prefix}{i:012}");
        let hash = hasher.hash_one(name.as_str());
        if (hash >> SHARD_SHIFT) as usize & (SHARDS - 1) == 9 && hash & 0xFF == 0x2A {
            assert_eq!(interner.get(&name), None);
        }
    }
}

/// Whole indexes with hostile visitor names through the real snapshot
/// codec: every name keeps its id, and interning goes on after it.
#[test]
fn hostile_visitor_names_through_snapshots() {
    use crate::event::{Action, Event};
    let names = hostile_names();
    let index = super::super::Index::new();
    let mut model: HashMap<String, u32> = HashMap::new();
    for (k, name) in names.iter().enumerate() {
        index.apply(&Event::new("s", name.as_str(), Action::View, 1_000 + k as i64));
        if k % 500 == 499 || k + 1 == names.len() {
            let bytes = crate::snapshot::encode(&index, b"meta");
            let decoded = match crate::snapshot::decode(&bytes) {
                Ok(s) => s,
                Err(e) => panic!("decode: {e}"),
            };
            let shop = index.shop("s").unwrap_or_else(|| panic!("no shop"));
            let back = decoded.index.shop("s").unwrap_or_else(|| panic!("no shop back"));
            model.clear();
            shop.visitors.for_each(|name, id| {
                model.insert(name.to_string(), id);
            });
            assert_eq!(model.len(), k + 1);
            agrees(&back.visitors, &model, "decoded");
            assert_eq!(
                crate::snapshot::encode(&decoded.index, b"meta"),
                bytes,
                "encode(decode(x)) == x"
            );
            let next = back.visitors.intern("a name never seen before, after the round trip");
            assert_eq!(next as usize, k + 1);
        }
    }
}
