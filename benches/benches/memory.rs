//! Live heap of the audience index, measured by a counting global allocator.
//!
//! 1. Interns every visitor alone (one `member` event with tier 0 each, which
//!    creates the visitor's id and empty profile but sets no bitmap bit): the
//!    heap it adds, divided by the visitors, is the cost of a known visitor.
//! 2. Builds the full index of the dataset: the heap it adds, less the
//!    visitors' part, divided by the (visitor, action, day) entries of the day
//!    bitmaps, is the cost of one such entry (everything included: profile
//!    entries and purchases, day, item and category bitmaps, tags, tiers).
//!    The figures are after `ShopIndex::compact` (bitmaps re-allocated at
//!    their exact size), which a server runs every `INDEX_COMPACT_INTERVAL`;
//!    the heap before it is printed too.
//! 3. Items: an index of `VITRINE_BENCH_ITEMS` distinct items (default
//!    1,000,000; 2,000 in a smoke test), each viewed once (with a category
//!    and a price) by a visitor of its own: the heap it adds per item is
//!    everything such an item costs (its name, name entry, facts and view,
//!    its visitor bitmap, the visitor and their one-entry profile); the
//!    item table's share is what changes when the table does.
//!
//! `cargo bench -p vitrine-benches --bench memory`

use std::alloc::System;
use std::time::Instant;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use vitrine_benches::{run_visitors, secs, Dataset, NOW_MS, SHOP};
use vitrine_core::{Action, Event, ShopIndex};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes currently allocated on the heap.
fn live() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

/// The process's resident set, from /proc (Linux), for reference.
fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l[6..].trim().to_string())
        })
        .unwrap_or_else(|| "n/a".into())
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let visitors = run_visitors();
    let t = Instant::now();
    let dataset = Dataset::generate(visitors);
    println!(
        "dataset: {} visitors, {} events ({}) in {:.2} s; heap {:.1} MiB",
        dataset.visitor_count(),
        dataset.len(),
        dataset.mix(),
        secs(t),
        mib(live())
    );

    // 1. Visitors only.
    let base = live();
    let index = ShopIndex::new(SHOP);
    let empty = live() - base;
    for v in 0..dataset.visitor_count() {
        index.apply(&Event::new(SHOP, dataset.visitor(v), Action::Member, NOW_MS - 1));
    }
    let visitor_part = live() - base - empty;
    let stats = index.stats();
    assert_eq!(stats.day_entries, 0);
    let per_visitor = visitor_part as f64 / stats.visitors as f64;
    println!(
        "empty index: {empty} bytes; {} visitors interned alone: {:.1} MiB = {per_visitor:.1} bytes per visitor",
        stats.visitors,
        mib(visitor_part)
    );
    drop(index);

    // 2. The full dataset.
    let base = live();
    let t = Instant::now();
    let index = dataset.build_index();
    let built = secs(t);
    let before_compaction = live() - base - empty;
    let t = Instant::now();
    let compacted = index.compact(NOW_MS);
    println!(
        "compaction (as the server runs it every INDEX_COMPACT_INTERVAL): {compacted} bitmaps in {:.2} s; heap {:.1} -> {:.1} MiB",
        secs(t),
        mib(before_compaction),
        mib(live() - base - empty)
    );
    let total = live() - base - empty;
    let stats = index.stats();
    let entries_part = total - (per_visitor * stats.visitors as f64) as i64;
    println!(
        "full index, after compaction: {} events applied in {built:.1} s; heap {:.1} MiB ({:.1} bytes per visitor overall); process RSS {}",
        dataset.len(),
        mib(total),
        total as f64 / stats.visitors as f64,
        rss()
    );
    println!(
        "stats: visitors {}, day_entries {}, profile_entries {}, bitmap_bytes {} ({:.1} MiB serialized, {:.2} bytes per day entry)",
        stats.visitors,
        stats.day_entries,
        stats.profile_entries,
        stats.bitmap_bytes,
        mib(stats.bitmap_bytes as i64),
        stats.bitmap_bytes as f64 / stats.day_entries.max(1) as f64
    );
    println!("bytes per interned visitor: {per_visitor:.1}");
    println!(
        "bytes per (visitor, action, day) entry: {:.1}  [(total {} - visitors {}) / {} day entries]",
        entries_part as f64 / stats.day_entries.max(1) as f64,
        total,
        (per_visitor * stats.visitors as f64) as i64,
        stats.day_entries
    );
    println!(
        "bytes per profile entry (same numerator): {:.1}; profile entries per day entry: {:.2}",
        entries_part as f64 / stats.profile_entries.max(1) as f64,
        stats.profile_entries as f64 / stats.day_entries.max(1) as f64
    );
    drop(index);

    items_only();
}

/// Part 3: bytes per item of an index holding only items (see the docs).
fn items_only() {
    let items: u32 = if vitrine_benches::benchmarking() {
        match std::env::var("VITRINE_BENCH_ITEMS") {
            Ok(text) => match text.replace('_', "").trim().parse::<u32>() {
                Ok(n) if n > 0 => n,
                _ => panic!("VITRINE_BENCH_ITEMS must be a positive whole number, found `{text}`"),
            },
            Err(_) => 1_000_000,
        }
    } else {
        2_000
    };
    let names: Vec<String> = (0..items).map(|i| format!("sku-{i:08}")).collect();
    let name_bytes: i64 = names.iter().map(|n| n.len() as i64).sum();
    let base = live();
    let index = ShopIndex::new(SHOP);
    let empty = live() - base;
    let mut event = Event::new(SHOP, "v", Action::View, NOW_MS - 1);
    event.category = Some("tops".into());
    event.price = 19.5;
    for (i, name) in names.iter().enumerate() {
        index.apply(&Event {
            visitor: format!("v{i}").into(),
            item: Some(name.as_str().into()),
            ..event.clone()
        });
    }
    let added = live() - base - empty;
    println!(
        "items: {items} items, each viewed once by its own visitor: heap {:.1} MiB over the empty index; {:.1} bytes per item ({:.1} of them the name's own)",
        mib(added),
        added as f64 / f64::from(items),
        name_bytes as f64 / f64::from(items)
    );
    drop(index);
}
