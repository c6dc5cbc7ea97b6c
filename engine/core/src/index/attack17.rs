//! Attacks on the packed profile (issue 17's second round): entries at
//! the packing boundaries (hours near 2^27 and 2^30, items near 2^24,
//! categories near 2047, the switch from 8- to 12-byte entries in the
//! middle of a profile, entries arriving out of order around it, latest
//! hours more than 15 bits before the last entry), checked against a
//! plain sorted set; tiers at the 16-bit and timestamp edges; and
//! snapshots of all of them, whole and with bits flipped. Then the 6-byte
//! entries (items 131,071/131,072, categories 254/255/256, hours around
//! 2^21) through snapshots before and after expiry narrows them, compacted
//! bitmaps (run containers) against plain sets under every operation
//! audience sizes use, and the item table's lock-free views under
//! concurrent interning and updates.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::time::HourRange;

/// Hours at and around every boundary the packing has.
fn hour() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            32_765,
            32_766,
            32_767,
            32_768,
            65_535,
            70_400_000,
            NARROW_HOURS - 32_767,
            NARROW_HOURS - 1,
            NARROW_HOURS,
            NARROW_HOURS + 1,
            MAX_ENTRY_HOUR - 32_766,
            MAX_ENTRY_HOUR - 1,
            MAX_ENTRY_HOUR,
            MAX_ENTRY_HOUR + 1,
            u32::MAX - 1,
            u32::MAX,
        ]),
        0u32..100,
        32_700u32..32_900,
    ]
}

fn item() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(vec![0, 1, NARROW_ITEMS - 1, NARROW_ITEMS, u32::MAX - 1, u32::MAX]),
        0u32..4,
    ]
}

fn category() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(vec![0, 2_045, 2_046, 2_047, 2_048, NONE - 1, NONE]),
        0u32..3,
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (hour(), 0u8..4, item(), category()).prop_map(|(hour, action, item, category)| Entry {
        hour,
        action,
        item,
        category,
    })
}

fn range() -> impl Strategy<Value = HourRange> {
    (hour(), hour()).prop_map(|(a, b)| HourRange {
        first: a.min(b),
        last: a.max(b),
    })
}

/// Every read of `p` agrees with the sorted set `model`.
fn check(p: &Profile, model: &BTreeSet<Entry>, ranges: &[HourRange]) -> Result<(), TestCaseError> {
    let entries: Vec<Entry> = p.entries().collect();
    let expected: Vec<Entry> = model.iter().copied().collect();
    prop_assert_eq!(&entries, &expected);
    prop_assert_eq!(p.entry_count(), model.len());
    for action in 0..4u8 {
        let latest = model
            .iter()
            .filter(|e| e.action == action)
            .map(|e| e.hour + 1)
            .max()
            .unwrap_or(0);
        prop_assert_eq!(p.latest(action), latest, "latest of action {}", action);
    }
    for &range in ranges {
        let inside: Vec<Entry> = model.iter().filter(|e| range.contains(e.hour)).copied().collect();
        prop_assert_eq!(p.entries_in(range).collect::<Vec<_>>(), inside.clone(), "{:?}", range);
        // Each action alone, and all four (`visited`).
        for mask in [1u8, 2, 4, 8, 15] {
            let set = match mask {
                15 => ActionSet::ALL,
                m => ActionSet::one(Action::BEHAVIORS[m.trailing_zeros() as usize]),
            };
            let of = |e: &Entry| mask >> e.action & 1 == 1;
            prop_assert_eq!(
                p.has_action_in(set, range),
                inside.iter().any(of),
                "has_action_in {:?} {:?}",
                mask,
                range
            );
            let until = model
                .iter()
                .filter(|e| e.hour <= range.last && of(e))
                .map(|e| e.hour)
                .max();
            prop_assert_eq!(
                p.latest_until(set, range.last),
                until,
                "latest_until {:?} {:?}",
                mask,
                range
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Inserting entries in any order, repeats included, keeps exactly the
    /// set of those whose hour an entry can hold, and every read agrees;
    /// expiring, repacking and a snapshot round trip keep agreeing.
    #[test]
    fn a_profile_is_the_set_of_its_entries(
        entries in prop::collection::vec(entry(), 0..24),
        ranges in prop::collection::vec(range(), 1..4),
        expire_at in hour(),
    ) {
        let mut p = Profile::default();
        let mut model = BTreeSet::new();
        for e in &entries {
            let fits = e.hour <= MAX_ENTRY_HOUR;
            let new = fits && model.insert(*e);
            prop_assert_eq!(p.insert(*e), new, "insert {:?}", e);
            check(&p, &model, &ranges)?;
        }
        let all: Vec<Entry> = model.iter().copied().collect();
        let mut q = Profile::default();
        q.set_entries(&all);
        check(&q, &model, &ranges)?;
        p.expire(expire_at);
        model.retain(|e| e.hour >= expire_at);
        check(&p, &model, &ranges)?;
    }

    /// A member state at the edges of the packed tier word reads back as set.
    #[test]
    fn tier_states_read_back(
        ts in prop_oneof![
            prop::sample::select(vec![i64::MIN, -2, -1, 0, 1, crate::event::MAX_TS - 1, crate::event::MAX_TS, crate::event::MAX_TS + 1, i64::MAX]),
            any::<i64>(),
        ],
        tier in prop_oneof![prop::sample::select(vec![0u32, 1, 0xFFFE, 0xFFFF, 0x1_0000, u32::MAX]), any::<u32>()],
        with_more in any::<bool>(),
    ) {
        let mut p = Profile::default();
        if with_more {
            p.exposures_mut();
        }
        prop_assert_eq!(p.tier_state(), None);
        p.set_tier_state(Some((ts, tier)));
        prop_assert_eq!(p.tier_state(), Some((ts, tier)));
        prop_assert_eq!(p.tier(), tier);
        p.set_tier_state(Some((0, 1)));
        prop_assert_eq!(p.tier_state(), Some((0, 1)));
        p.set_tier_state(None);
        prop_assert_eq!(p.tier_state(), None);
    }
}

/// A visitor's name, entries and member state.
type Expected = (String, Vec<Entry>, Option<(i64, u32)>);

/// A shop whose visitors hold entries at every boundary the packing has
/// (hours 2^27 - 1, 2^27 and 2^30 - 1, latest hours 32,766 and more
/// before the last entry, categories 2046 to 2049, a profile going wide
/// in the middle and entries arriving before its first) and member states
/// at the edges of the packed tier word.
fn boundary_index() -> (crate::Index, Vec<Expected>) {
    let index = crate::Index::new();
    let shop = index.shop_or_create("s");
    for c in 0..2_050 {
        shop.categories.intern(&format!("c{c}"));
    }
    for i in 0..4 {
        shop.intern_item(&format!("i{i}"), None, None);
    }
    let hours = [
        0,
        32_766,
        32_767,
        70_400_000,
        NARROW_HOURS - 1,
        NARROW_HOURS,
        MAX_ENTRY_HOUR - 32_767,
        MAX_ENTRY_HOUR,
    ];
    let tiers = [
        None,
        Some((-1, 3)),
        Some((0, 0xFFFE)),
        Some((0, 0xFFFF)),
        Some((crate::event::MAX_TS, u32::MAX)),
        Some((crate::event::MAX_TS + 1, 1)),
        Some((i64::MIN, 0)),
        Some((i64::MAX, 7)),
    ];
    let mut expected = Vec::new();
    for v in 0..24usize {
        let name = format!("v{v}");
        let vid = shop.visitors.intern(&name);
        let mut model = BTreeSet::new();
        // Each visitor its own order: some go wide in the middle, some get
        // entries older than their first afterwards.
        for k in 0..12usize {
            let at = (v * 7 + k * 5) % hours.len();
            let e = Entry {
                hour: hours[at] - (v % 3) as u32 * u32::from(hours[at] > 2),
                action: ((v + k) % 4) as u8,
                item: ((v + k) % 4) as u32,
                category: match (v + k) % 5 {
                    0 => NONE,
                    1 => 2_046,
                    2 => 2_047,
                    3 => 2_049,
                    _ => (k % 3) as u32,
                },
            };
            if v % 2 == 0 && e.category >= 2_047 && e.category != NONE {
                continue;
            }
            shop.with_profile_mut(vid, |p| p.insert(e));
            model.insert(e);
        }
        let tier = tiers[v % tiers.len()];
        shop.with_profile_mut(vid, |p| p.set_tier_state(tier));
        expected.push((name, model.into_iter().collect(), tier));
    }
    (index, expected)
}

/// The boundary profiles survive a snapshot: same entries, same latest
/// hours, same member state, and the same bytes when encoded again.
#[test]
fn boundary_profiles_round_trip_through_a_snapshot() {
    let (index, expected) = boundary_index();
    let bytes = crate::snapshot::encode(&index, b"");
    let back = crate::snapshot::decode(&bytes).unwrap().index;
    let shop = back.shop("s").unwrap();
    for (name, entries, tier) in &expected {
        let vid = shop.visitor_id(name).unwrap();
        shop.with_profile(vid, |p| {
            let p = p.unwrap();
            assert_eq!(&p.entries().collect::<Vec<_>>(), entries, "{name}");
            for action in 0..4u8 {
                let latest = entries.iter().filter(|e| e.action == action).map(|e| e.hour + 1).max();
                assert_eq!(p.latest(action), latest.unwrap_or(0), "{name} action {action}");
            }
            assert_eq!(p.tier_state(), *tier, "{name}");
        });
    }
    assert_eq!(crate::snapshot::encode(&back, b""), bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    /// Bits flipped (and the checksums made to match) anywhere in the
    /// snapshot of the boundary profiles: the decoder returns an error or
    /// an index, never panics, and what it returns encodes and decodes again.
    #[test]
    fn a_damaged_snapshot_of_boundary_profiles_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        thread_local! {
            static BYTES: Vec<u8> = crate::snapshot::encode(&boundary_index().0, b"");
        }
        let mut bytes = BYTES.with(Clone::clone);
        for (at, bit) in flips {
            // The header is checked by its own checksum: damage the payload.
            let i = 32 + at.index(bytes.len() - 32);
            bytes[i] ^= 1 << bit;
        }
        if let Some(cut) = cut {
            bytes.truncate(32 + cut.index(bytes.len() - 32));
        }
        crate::snapshot::reseal(&mut bytes);
        if let Ok(snapshot) = crate::snapshot::decode(&bytes) {
            let again = crate::snapshot::encode(&snapshot.index, b"");
            prop_assert!(crate::snapshot::decode(&again).is_ok());
        }
    }
}

/// Hours, items and categories at and around the 6-byte entries' bounds
/// (and a few of the 8-byte ones, so profiles cross both switches).
fn compact_entry() -> impl Strategy<Value = Entry> {
    let hour = prop_oneof![
        prop::sample::select(vec![
            0,
            COMPACT_HOURS - 32_767,
            COMPACT_HOURS - 2,
            COMPACT_HOURS - 1,
            COMPACT_HOURS,
            COMPACT_HOURS + 1,
            COMPACT_HOURS + 32_767,
            NARROW_HOURS,
        ]),
        COMPACT_HOURS - 40..COMPACT_HOURS + 40,
    ];
    let item = prop_oneof![
        prop::sample::select(vec![
            0,
            COMPACT_ITEMS - 1,
            COMPACT_ITEMS,
            COMPACT_ITEMS + 1,
            NARROW_ITEMS
        ]),
        0u32..3,
    ];
    let category = prop_oneof![
        prop::sample::select(vec![0, 253, 254, 255, 256, NARROW_NONE, NONE]),
        0u32..3,
    ];
    (hour, 0u8..4, item, category).prop_map(|(hour, action, item, category)| Entry {
        hour,
        action,
        item,
        category,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// 6-byte entries: inserting entries at their bounds in any order keeps
    /// exactly the set inserted, every read agrees, the profile's width is
    /// the smallest that holds every entry (as `set_entries` packs it), and
    /// expiry re-packs what is left in the smallest width again.
    #[test]
    fn six_byte_entries_are_the_set_of_their_entries(
        entries in prop::collection::vec(compact_entry(), 0..24),
        first in 0u32..COMPACT_HOURS + 64,
    ) {
        let ranges = [
            HourRange { first, last: first + 50 },
            HourRange { first: 0, last: COMPACT_HOURS - 1 },
            HourRange { first: COMPACT_HOURS - 1, last: NARROW_HOURS },
        ];
        let smallest = |model: &BTreeSet<Entry>| {
            [COMPACT, NARROW]
                .into_iter()
                .find(|&w| model.iter().all(|e| e.pack(w).is_some()))
                .unwrap_or(WIDE_WORDS)
        };
        let mut p = Profile::default();
        let mut model = BTreeSet::new();
        for e in &entries {
            prop_assert_eq!(p.insert(*e), model.insert(*e), "insert {:?}", e);
            check(&p, &model, &ranges)?;
            prop_assert_eq!(p.width(), smallest(&model));
        }
        let mut q = Profile::default();
        q.set_entries(&model.iter().copied().collect::<Vec<_>>());
        prop_assert_eq!(&q.facts, &p.facts);
        p.expire(first);
        model.retain(|e| e.hour >= first);
        check(&p, &model, &ranges)?;
        if !model.is_empty() {
            prop_assert_eq!(p.width(), smallest(&model));
        }
    }
}

/// Sets with runs (what compaction turns into run containers), scattered
/// members, and members on both sides of a container boundary (65,536).
fn run_set() -> impl Strategy<Value = BTreeSet<u32>> {
    let run = (
        prop_oneof![0u32..300, 65_000u32..66_000, 130_000u32..132_000],
        1u32..5_000,
    );
    (
        prop::collection::vec(run, 0..6),
        prop::collection::vec(0u32..200_000, 0..40),
    )
        .prop_map(|(runs, scattered)| {
            let mut set: BTreeSet<u32> = scattered.into_iter().collect();
            for (start, len) in runs {
                set.extend(start..start + len);
            }
            set
        })
}

/// What the index does to a bitmap after compaction: add a visitor
/// (`true`) or take one out (untag, a tier change).
fn edits() -> impl Strategy<Value = Vec<(bool, u32)>> {
    prop::collection::vec(
        (
            any::<bool>(),
            prop_oneof![0u32..300, 65_530u32..65_545, 0u32..200_000, 131_070u32..131_080],
        ),
        0..60,
    )
}

use roaring::MultiOps;

fn bitmap_of(set: &BTreeSet<u32>) -> RoaringBitmap {
    set.iter().copied().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// A compacted bitmap (run containers, exact size) is the same set as
    /// before, keeps taking inserts and removals, and every operation
    /// audience sizes use (`&=`, `|=`, `-`, unions of many, `len`,
    /// `contains`, `is_empty`, iteration, the universe minus a union)
    /// gives what the plain sets give, compacted operands on either side.
    #[test]
    fn compacted_bitmaps_are_the_same_sets(
        a in run_set(),
        b in run_set(),
        c in run_set(),
        edits_a in edits(),
        edits_b in edits(),
    ) {
        let (mut ma, mut mb) = (a.clone(), b.clone());
        let (mut xa, mut xb, xc) = (bitmap_of(&a), bitmap_of(&b), bitmap_of(&c));
        let (mut pa, mut pb) = (xa.clone(), xb.clone());
        compact_bitmap(&mut xa);
        compact_bitmap(&mut xb);
        let mut xc_compact = xc.clone();
        compact_bitmap(&mut xc_compact);
        prop_assert_eq!(xa.iter().collect::<Vec<_>>(), ma.iter().copied().collect::<Vec<_>>());
        for (edits, model, compacted, plain) in [(&edits_a, &mut ma, &mut xa, &mut pa), (&edits_b, &mut mb, &mut xb, &mut pb)] {
            for &(add, v) in edits {
                if add {
                    prop_assert_eq!(compacted.insert(v), model.insert(v), "insert {}", v);
                    plain.insert(v);
                } else {
                    prop_assert_eq!(compacted.remove(v), model.remove(&v), "remove {}", v);
                    plain.remove(v);
                }
            }
            prop_assert_eq!(compacted.len(), model.len() as u64);
            prop_assert_eq!(compacted.is_empty(), model.is_empty());
            prop_assert_eq!(compacted.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(&*compacted, &*plain);
            for v in [0u32, 1, 299, 65_535, 65_536, 131_071, 131_072, 199_999] {
                prop_assert_eq!(compacted.contains(v), model.contains(&v), "contains {}", v);
            }
            // Compacting again after edits keeps the set too.
            compact_bitmap(compacted);
            prop_assert_eq!(&*compacted, &*plain);
        }
        let set = |b: &RoaringBitmap| b.iter().collect::<BTreeSet<u32>>();
        let and: BTreeSet<u32> = ma.intersection(&mb).copied().collect();
        let or: BTreeSet<u32> = ma.union(&mb).copied().collect();
        let minus: BTreeSet<u32> = ma.difference(&mb).copied().collect();
        for (l, r) in [(&xa, &xb), (&pa, &xb), (&xa, &pb)] {
            let mut x = l.clone();
            x &= r;
            prop_assert_eq!(set(&x), and.clone());
            prop_assert_eq!(x.len(), and.len() as u64);
            let mut x = l.clone();
            x |= r;
            prop_assert_eq!(set(&x), or.clone());
            prop_assert_eq!(x.len(), or.len() as u64);
            let x = l.clone() - r;
            prop_assert_eq!(set(&x), minus.clone());
            prop_assert_eq!(x.len(), minus.len() as u64);
        }
        let all: BTreeSet<u32> = ma.iter().chain(&mb).chain(&c).copied().collect();
        let union = [&xa, &xb, &xc_compact].into_iter().union();
        prop_assert_eq!(set(&union), all.clone());
        prop_assert_eq!(union.len(), all.len() as u64);
        let mut universe = RoaringBitmap::new();
        universe.insert_range(0..200_000);
        let rest = universe - [&xa, &xb, &xc_compact].into_iter().union();
        prop_assert_eq!(rest.len(), 200_000 - all.iter().filter(|&&v| v < 200_000).count() as u64);
    }
}

/// Items interned from several threads, each item's category and price
/// changed by several writers, while readers look items up by name and
/// read their views: a view only ever shows a category or a price its own
/// item was given (never another item's, never a torn value), ids are
/// dense and unique, and once the writers are done every view equals the
/// item's facts.
#[test]
fn concurrent_item_views_show_only_their_own_items_values() {
    use super::items::ItemTable;
    use std::sync::atomic::AtomicBool;

    const ITEMS: u32 = 700; // past several view buckets (32, 64, 128, 256, 512)
    let table = ItemTable::default();
    let done = AtomicBool::new(false);
    // Item k's category values are k << 8 | j, its prices k * 1000 + j.
    let own = |k: u32, category: u32, price: Option<f64>| {
        (category == NONE || category >> 8 == k) && price.is_none_or(|p| p.fract() == 0.0 && (p as u32) / 1000 == k)
    };
    std::thread::scope(|s| {
        let mut writers = Vec::new();
        for t in 0..3u32 {
            let table = &table;
            writers.push(s.spawn(move || {
                for round in 0..4u32 {
                    for n in 0..ITEMS {
                        let k = (n * 3 + t * 233 + round * 101) % ITEMS;
                        let id = table.intern(&format!("item-{k}"));
                        let j = t * 4 + round;
                        table.update(id, |info| {
                            let ts = i64::from(j);
                            if info.category.is_none_or(|cur| (ts, k << 8 | j) > cur) {
                                info.category = Some((ts, k << 8 | j));
                            }
                            info.learn_price(ts, f64::from(k * 1000 + j));
                            info.add_buy(100 + j % 7);
                        });
                    }
                }
            }));
        }
        let (table, done) = (&table, &done);
        for _ in 0..2 {
            s.spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    for k in 0..ITEMS {
                        let Some(id) = table.id(&format!("item-{k}")) else {
                            continue;
                        };
                        assert!(id < table.len(), "item-{k}: id {id} not handed out");
                        let view = table.view(id).expect("a found item has a view");
                        assert!(
                            own(k, view.category(), view.price()),
                            "item-{k} (id {id}) shows another's values"
                        );
                        assert!(view.popularity(106) <= 3 * 4);
                    }
                }
            });
        }
        // Stop the readers once every writer is done.
        for w in writers {
            w.join().expect("a writer panicked");
        }
        done.store(true, std::sync::atomic::Ordering::Release);
    });
    assert_eq!((table.len(), table.added()), (ITEMS, ITEMS));
    let mut ids: Vec<u32> = (0..ITEMS)
        .map(|k| table.id(&format!("item-{k}")).unwrap_or(u32::MAX))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..ITEMS).collect::<Vec<_>>());
    for k in 0..ITEMS {
        let id = table.id(&format!("item-{k}")).unwrap_or(u32::MAX);
        let facts = table.facts(id, |info| {
            (
                info.id,
                info.category(),
                info.price.map(|(_, p)| p),
                info.popularity(106),
            )
        });
        let view = table.view(id).map(|v| (id, v.category(), v.price(), v.popularity(106)));
        assert_eq!(facts, view, "item-{k}");
        // Every writer's latest value won: category k << 8 | 11, price k * 1000 + 11.
        assert_eq!(
            facts.map(|f| (f.1, f.2)),
            Some((k << 8 | 11, Some(f64::from(k * 1000 + 11))))
        );
    }
}

/// A shop past every 6-byte bound (131,073 items, 300 categories) whose
/// visitors hold entries at those bounds, inserted in scrambled orders:
/// a snapshot round trip gives every profile back word for word (so in the
/// same, smallest width), encodes to the same bytes, and after expiry
/// narrows some profiles back to 6 bytes, a second round trip agrees again.
#[test]
fn six_byte_bounds_round_trip_through_snapshots_before_and_after_expiry() {
    let index = crate::Index::new();
    let shop = index.shop_or_create("s");
    for c in 0..300 {
        shop.categories.intern(&format!("c{c}"));
    }
    for i in 0..=COMPACT_ITEMS {
        shop.items.intern(&format!("i{i}"));
    }
    let hours = [
        0,
        5,
        COMPACT_HOURS - 40_000,
        COMPACT_HOURS - 2,
        COMPACT_HOURS - 1,
        COMPACT_HOURS,
        COMPACT_HOURS + 1,
    ];
    let items = [0, 1, COMPACT_ITEMS - 2, COMPACT_ITEMS - 1, COMPACT_ITEMS];
    let categories = [0, 253, 254, 255, 256, 299, NONE];
    let mut models = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for v in 0..96 {
        let vid = shop.visitors.intern(&format!("v{v}"));
        let mut model = BTreeSet::new();
        // Some visitors only within the 6-byte bounds, some past one bound.
        let (h, i, c) = match v % 4 {
            0 => (4, 4, 3),
            1 => (7, 4, 3),
            2 => (4, 5, 3),
            _ => (7, 5, 7),
        };
        for _ in 0..1 + next(14) {
            let e = Entry {
                hour: hours[next(h)],
                action: next(4) as u8,
                item: items[next(i)],
                category: categories[next(c)],
            };
            let new = model.insert(e);
            assert_eq!(shop.with_profile_mut(vid, |p| p.insert(e)), new, "v{v} {e:?}");
        }
        models.push(model);
    }
    let smallest = |model: &BTreeSet<Entry>| {
        [COMPACT, NARROW]
            .into_iter()
            .find(|&w| model.iter().all(|e| e.pack(w).is_some()))
            .unwrap_or(WIDE_WORDS)
    };
    let round_trip = |index: &crate::Index, models: &[BTreeSet<Entry>]| {
        let shop = index.shop("s").unwrap_or_else(|| unreachable!());
        let bytes = crate::snapshot::encode(index, b"");
        let back = crate::snapshot::decode(&bytes)
            .map(|s| s.index)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let again = back.shop("s").unwrap_or_else(|| unreachable!());
        assert_eq!(again.items.len(), COMPACT_ITEMS + 1);
        for (v, model) in models.iter().enumerate() {
            let name = format!("v{v}");
            let (vid, back_vid) = (shop.visitor_id(&name), again.visitor_id(&name));
            let facts = shop.with_profile(vid.unwrap_or(u32::MAX), |p| p.map(|p| (p.facts.clone(), p.width())));
            let back = again.with_profile(back_vid.unwrap_or(u32::MAX), |p| {
                p.map(|p| (p.facts.clone(), p.width(), p.entries().collect::<Vec<_>>()))
            });
            let entries: Vec<Entry> = model.iter().copied().collect();
            match (facts, back) {
                (Some((words, width)), Some((back_words, back_width, back_entries))) => {
                    assert_eq!(back_entries, entries, "{name}");
                    assert_eq!(back_words, words, "{name}");
                    if !model.is_empty() {
                        assert_eq!((width, back_width), (smallest(model), smallest(model)), "{name}");
                    }
                }
                (facts, back) => assert!(
                    model.is_empty() && facts.is_none_or(|f| f.0.is_empty()) && back.is_none_or(|b| b.0.is_empty()),
                    "{name}"
                ),
            }
        }
        assert_eq!(crate::snapshot::encode(&back, b""), bytes);
    };
    round_trip(&index, &models);
    // Expiry from the hour 6-byte entries end: what is left of the profiles
    // that went wider for an hour alone packs in 6 bytes again, if it can.
    for first in [6, COMPACT_HOURS - 1, COMPACT_HOURS] {
        for (v, model) in models.iter_mut().enumerate() {
            let vid = shop.visitor_id(&format!("v{v}")).unwrap_or(u32::MAX);
            shop.with_profile_mut(vid, |p| p.expire(first));
            model.retain(|e| e.hour >= first);
        }
        round_trip(&index, &models);
    }
}
