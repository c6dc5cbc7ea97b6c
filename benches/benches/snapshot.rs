//! Index snapshots: encode time, size, file write and read, decode time.
//!
//! 1. Generates the dataset (1,000,000 visitors by default,
//!    `VITRINE_BENCH_VISITORS` overrides) and applies it to an `Index`.
//! 2. Encodes it three times and prints the median time and the size (also
//!    per (visitor, action, day) entry and per profile entry).
//! 3. Writes the snapshot to a temp file with fsync and reads it back.
//! 4. Decodes it three times (the restart path: rows decoded, every bitmap
//!    rebuilt) and prints the median; checks that stats, every audience size
//!    of the 20-audience rule file and 20,000 explained decisions are equal.
//! 5. For comparison, the design not taken: the same bitmaps (day, item,
//!    category, tag and tier bitmaps rebuilt here from the dataset) written
//!    with roaring's `serialize_into` and read back with `deserialize_from`.
//!
//! `cargo bench -p vitrine-benches --bench snapshot`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

use roaring::RoaringBitmap;
use vitrine_benches::{load_rules, run_visitors, secs, Dataset, NOW_MS, RULES_20, SHOP};
use vitrine_core::snapshot::{decode, encode};
use vitrine_core::{audience_sizes, decide, Action, Index, MemoryLedger, ShopIndex};

const RUNS: usize = 3;

/// The value, or a panic naming what failed (benches stop on any error).
fn or_die<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The bitmaps an index holds, rebuilt from the dataset under the index's visitor ids.
fn bitmaps(dataset: &Dataset, shop: &ShopIndex) -> Vec<RoaringBitmap> {
    let mut days: BTreeMap<(u8, i64), RoaringBitmap> = BTreeMap::new();
    let mut items: BTreeMap<u32, RoaringBitmap> = BTreeMap::new();
    let mut categories: BTreeMap<(u32, u8, i64), RoaringBitmap> = BTreeMap::new();
    let mut tags: BTreeMap<u32, RoaringBitmap> = BTreeMap::new();
    let mut tiers: BTreeMap<u32, RoaringBitmap> = BTreeMap::new();
    let mut latest: BTreeMap<(u32, u32), (i64, bool)> = BTreeMap::new();
    let mut tier_of: BTreeMap<u32, (i64, u32)> = BTreeMap::new();
    for r in dataset.records() {
        let Some(vid) = shop.visitor_id(dataset.visitor(r.visitor)) else {
            continue;
        };
        let day = r.ts / vitrine_benches::DAY_MS;
        match r.action {
            Action::View | Action::Cart | Action::Favorite | Action::Purchase => {
                days.entry((r.action as u8, day)).or_default().insert(vid);
                items.entry(r.value).or_default().insert(vid);
                let category = r.value % vitrine_benches::CATEGORIES;
                categories
                    .entry((category, r.action as u8, day))
                    .or_default()
                    .insert(vid);
            }
            Action::Tag | Action::Untag => {
                let state = (r.ts, r.action == Action::Tag);
                let e = latest.entry((vid, r.value)).or_insert(state);
                if (state.0, !state.1) > (e.0, !e.1) {
                    *e = state;
                }
            }
            Action::Member => {
                let e = tier_of.entry(vid).or_insert((r.ts, r.value));
                if (r.ts, r.value) > *e {
                    *e = (r.ts, r.value);
                }
            }
        }
    }
    for ((vid, tag), (_, present)) in latest {
        if present {
            tags.entry(tag).or_default().insert(vid);
        }
    }
    for (vid, (_, tier)) in tier_of {
        if tier > 0 {
            tiers.entry(tier).or_default().insert(vid);
        }
    }
    days.into_values()
        .chain(items.into_values())
        .chain(categories.into_values())
        .chain(tags.into_values())
        .chain(tiers.into_values())
        .collect()
}

fn main() {
    let visitors = run_visitors();
    let t = Instant::now();
    let dataset = Dataset::generate(visitors);
    eprintln!(
        "dataset: {} visitors, {} events ({}) in {:.1} s",
        dataset.visitor_count(),
        dataset.len(),
        dataset.mix(),
        secs(t)
    );
    let t = Instant::now();
    let index = Index::new();
    for event in dataset.events() {
        index.apply(&event);
    }
    let Some(shop) = index.shop(SHOP) else {
        panic!("the dataset has no events");
    };
    let stats = shop.stats();
    eprintln!("index: built in {:.1} s; {stats:?}", secs(t));

    // Encode.
    let mut times = Vec::new();
    let mut bytes = Vec::new();
    for _ in 0..RUNS {
        drop(bytes);
        let t = Instant::now();
        bytes = encode(&index, b"{\"offsets\":{}}");
        times.push(secs(t));
    }
    let encode_s = median(times);
    println!(
        "encode: {encode_s:.3} s (median of {RUNS}); {} bytes = {:.1} MiB; {:.2} bytes per day entry, {:.2} per profile entry",
        bytes.len(),
        mib(bytes.len()),
        bytes.len() as f64 / stats.day_entries.max(1) as f64,
        bytes.len() as f64 / stats.profile_entries.max(1) as f64
    );

    // Through a file.
    let path = std::env::temp_dir().join(format!("vitrine-snapshot-bench-{}.snap", std::process::id()));
    let t = Instant::now();
    {
        let mut file = or_die(std::fs::File::create(&path), "create the snapshot file");
        or_die(file.write_all(&bytes), "write the snapshot");
        or_die(file.sync_all(), "fsync the snapshot");
    }
    let write_s = secs(t);
    let t = Instant::now();
    let read = or_die(std::fs::read(&path), "read the snapshot");
    let read_s = secs(t);
    let _ = std::fs::remove_file(&path);
    assert_eq!(read, bytes);
    println!("file: write + fsync {write_s:.3} s, read {read_s:.3} s (page cache warm)");

    // Decode.
    let mut times = Vec::new();
    let mut loaded = None;
    for _ in 0..RUNS {
        drop(loaded.take());
        let t = Instant::now();
        let snapshot = or_die(decode(black_box(&read)), "decode the snapshot");
        times.push(secs(t));
        loaded = Some(snapshot);
    }
    let Some(loaded) = loaded else { unreachable!("RUNS > 0") };
    let decode_s = median(times);
    println!(
        "decode (rows + every bitmap rebuilt): {decode_s:.3} s (median of {RUNS}); {:.0} profile entries/s",
        stats.profile_entries as f64 / decode_s
    );
    let Some(restored) = loaded.index.shop(SHOP) else {
        panic!("the snapshot lost the shop");
    };
    assert_eq!(restored.stats(), stats, "stats differ after a roundtrip");
    let rules = load_rules(RULES_20);
    assert_eq!(
        audience_sizes(&rules, Some(&restored), &vitrine_core::MemoryLedger::new(), NOW_MS),
        audience_sizes(&rules, Some(&shop), &vitrine_core::MemoryLedger::new(), NOW_MS),
        "audience sizes differ after a roundtrip"
    );
    let ledger = MemoryLedger::new();
    for spec in dataset.requests(20_000, 3, false) {
        let req = dataset.request(&spec, true);
        assert_eq!(
            format!("{:?}", decide(&rules, Some(&restored), &ledger, &req)),
            format!("{:?}", decide(&rules, Some(&shop), &ledger, &req)),
            "a decision differs after a roundtrip"
        );
    }
    println!("roundtrip: stats, 20 audience sizes and 20,000 explained decisions equal");
    drop(loaded);

    // The alternative: serialized bitmaps.
    let t = Instant::now();
    let sets = bitmaps(&dataset, &shop);
    eprintln!("bitmaps for the comparison rebuilt in {:.1} s", secs(t));
    let mut blob = Vec::new();
    let t = Instant::now();
    for b in &sets {
        or_die(b.serialize_into(&mut blob), "serialize into a Vec");
    }
    let ser_s = secs(t);
    let t = Instant::now();
    let mut rest = blob.as_slice();
    let mut back = Vec::with_capacity(sets.len());
    while !rest.is_empty() {
        back.push(or_die(RoaringBitmap::deserialize_from(&mut rest), "deserialize"));
    }
    let de_s = secs(t);
    assert_eq!(back, sets);
    println!(
        "alternative, serialized bitmaps: {} bitmaps, {:.1} MiB (index reports {:.1} MiB), serialize {ser_s:.3} s, deserialize {de_s:.3} s",
        sets.len(),
        mib(blob.len()),
        mib(stats.bitmap_bytes as usize),
    );
}
