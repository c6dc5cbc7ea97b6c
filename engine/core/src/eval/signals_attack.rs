//! The signals' item flags (carted, favorited, bought within the affinity
//! window), attacked: few entries (sorted, binary search) and many (the
//! hash table) against a plain model, a `BTreeMap` of the entries' flags;
//! ids that collide in the hash, ids at 0 and near `u32::MAX`, entries at
//! the window's edges, an item under all three flags; and the table kept
//! in a thread's scratch: a light visitor after a heavy one, or after a
//! decision that panicked, sees only its own flags.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::decide::{decide, DecideRequest, Decision};
use super::items::{ItemReason, Signals, AFFINITY_WINDOW};
use crate::claims::{ClaimLedger, ClaimOutcome, LedgerClaim, LedgerError, MemoryLedger, Usage};
use crate::event::{Event, Fields};
use crate::hash::SplitMix64;
use crate::index::{Entry, Profile, ShopIndex, NONE};
use crate::rules::RuleSet;
use crate::time::HourRange;
use crate::Context;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// 2026-11-14T10:25:00Z.
const NOW: i64 = 1_794_325_500_000;

const CARTED: u8 = 1;
const FAVORITED: u8 = 2;
const BOUGHT: u8 = 4;

/// The top 13 bits of the signals' hash: ids equal in them share their
/// first slot in every table of up to 8,192 slots.
fn top_bits(id: u32) -> u64 {
    u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 51
}

/// `n` ids whose hash lands on the same first slot in every table up to
/// 8,192 slots: those with the top bits `top` (all ones: the last slot, so
/// that probing wraps around to the first).
fn colliding(top: u64, n: usize) -> Vec<u32> {
    let ids: Vec<u32> = (0..u32::MAX).filter(|&id| top_bits(id) == top).take(n).collect();
    assert_eq!(ids.len(), n);
    ids
}

/// The model: each item's flags from the entries whose hour is in `range`.
fn model(entries: &[Entry], range: HourRange) -> BTreeMap<u32, u8> {
    let mut flags = BTreeMap::new();
    for e in entries.iter().filter(|e| range.contains(e.hour)) {
        let flag = match e.action {
            1 => CARTED,
            2 => FAVORITED,
            3 => BOUGHT,
            _ => continue,
        };
        *flags.entry(e.item).or_insert(0) |= flag;
    }
    flags
}

/// The reason the model gives an item the shop has not seen.
fn reason(flags: u8) -> ItemReason {
    if flags & BOUGHT == 0 && flags & CARTED != 0 {
        ItemReason::InCart
    } else if flags & BOUGHT == 0 && flags & FAVORITED != 0 {
        ItemReason::Favorited
    } else {
        ItemReason::Pool
    }
}

/// A profile holding `entries` (sorted and made unique here).
fn profile(entries: &mut Vec<Entry>) -> Profile {
    entries.sort_unstable();
    entries.dedup();
    let mut p = Profile::default();
    p.set_entries(entries);
    p
}

/// `n` entries over `ids`, actions view to purchase, hours from 32 days
/// before now to 1 hour after, the window's edge hours and the hours
/// beside them often.
fn entries(rng: &mut SplitMix64, ids: &[u32], n: usize, range: HourRange) -> Vec<Entry> {
    let edges = [
        range.first - 1,
        range.first,
        range.first + 1,
        range.last - 1,
        range.last,
        range.last + 1,
    ];
    (0..n)
        .map(|_| {
            let hour = if rng.below(4) == 0 {
                edges[rng.below(edges.len() as u64) as usize]
            } else {
                range.first - 48 + rng.below(u64::from(range.last - range.first) + 50) as u32
            };
            let action = rng.below(4) as u8;
            Entry {
                hour,
                action,
                item: ids[rng.below(ids.len() as u64) as usize],
                category: if action == 0 { rng.below(300) as u32 } else { NONE },
            }
        })
        .collect()
}

/// Every id the entries name, and `absent` ones they do not, judge as the
/// model says.
fn check(s: &Signals<'_>, model: &BTreeMap<u32, u8>, ids: &[u32], absent: &[u32], what: &str) {
    for &id in ids.iter().chain(absent) {
        let flags = model.get(&id).copied().unwrap_or(0);
        assert_eq!(
            s.judge_id(id),
            Some((reason(flags), 0)),
            "{what}: item {id} flags {flags:03b}"
        );
    }
}

/// Random profiles of every size around the table's threshold (16) and far
/// past it, over ids of every kind (small, colliding, at 0, near
/// `u32::MAX`), judge as the model says; so do ids the profile lacks that
/// collide with those it has.
#[test]
fn judge_matches_a_model_of_the_entries() {
    let shop = ShopIndex::new("s");
    let range = AFFINITY_WINDOW.range(NOW);
    let last_slot = colliding(0x1FFF, 40);
    let first_slot = colliding(0, 40);
    let high: Vec<u32> = (1..40).map(|k| u32::MAX - k).collect();
    let small: Vec<u32> = (0..40).collect();
    let spread: Vec<u32> = {
        let mut rng = SplitMix64::new(99);
        (0..3000).map(|_| rng.next_u64() as u32 & 0x00FF_FFFF).collect()
    };
    let kinds: [(&str, Vec<u32>); 5] = [
        ("small", small.clone()),
        ("last slot", last_slot[..20].to_vec()),
        (
            "mixed",
            [&small[..8], &first_slot[..20], &last_slot[..20], &high[..]].concat(),
        ),
        ("high", high.clone()),
        ("spread", spread),
    ];
    let mut rng = SplitMix64::new(7);
    for (kind, ids) in &kinds {
        for n in [0, 1, 2, 15, 16, 17, 18, 31, 32, 33, 100, 333, 1000, 5000] {
            for round in 0..3 {
                let mut es = entries(&mut rng, ids, n, range);
                let p = profile(&mut es);
                let m = model(&es, range);
                let s = Signals::of(Some(&shop), Some(&p), None, NOW);
                let absent: Vec<u32> = [&last_slot[20..], &first_slot[20..], &[0, 1, u32::MAX - 1, 12345][..]]
                    .concat()
                    .into_iter()
                    .filter(|id| !ids.contains(id))
                    .collect();
                check(&s, &m, ids, &absent, &format!("{kind}, {n} entries, round {round}"));
            }
        }
    }
}

/// Exactly counted: 16 item entries in the window (sorted) and 17 (the
/// table), an item under all three flags, one under two, the others one,
/// entries one hour outside either edge of the window counting for nothing.
#[test]
fn the_threshold_the_edges_and_all_three_flags() {
    let shop = ShopIndex::new("s");
    let range = AFFINITY_WINDOW.range(NOW);
    let ids = colliding(0x1FFF, 20);
    for n in [16usize, 17] {
        let mut es = Vec::new();
        // Item 0: all three flags (bought: Pool); item 1 carted and
        // favorited (in the cart); the others one flag at an edge hour
        // inside, and a purchase just outside: `n` entries in the window.
        for (k, &id) in ids.iter().enumerate().take(n - 3) {
            let hour = if k % 2 == 0 { range.first } else { range.last };
            let actions: &[u8] = match k {
                0 => &[1, 2, 3],
                1 => &[1, 2],
                _ => &[1 + (k % 2) as u8],
            };
            for &action in actions {
                es.push(Entry {
                    hour,
                    action,
                    item: id,
                    category: NONE,
                });
            }
            if k >= 2 {
                let outside = if k % 2 == 0 { range.first - 1 } else { range.last + 1 };
                es.push(Entry {
                    hour: outside,
                    action: 3,
                    item: id,
                    category: NONE,
                });
            }
        }
        let in_window = es.iter().filter(|e| range.contains(e.hour)).count();
        assert_eq!(in_window, n);
        let p = profile(&mut es);
        let m = model(&es, range);
        assert_eq!(m[&ids[0]], CARTED | FAVORITED | BOUGHT);
        let s = Signals::of(Some(&shop), Some(&p), None, NOW);
        assert_eq!(s.judge_id(ids[0]), Some((ItemReason::Pool, 0)), "{n}: bought wins");
        assert_eq!(s.judge_id(ids[1]), Some((ItemReason::InCart, 0)), "{n}: carted wins");
        assert_eq!(s.judge_id(ids[2]), Some((ItemReason::InCart, 0)), "{n}");
        assert_eq!(s.judge_id(ids[3]), Some((ItemReason::Favorited, 0)), "{n}");
        check(&s, &m, &ids, &[], &format!("{n} in-window entries"));
    }
}

/// The buffers a heavy visitor's signals leave (what a thread's scratch
/// keeps) give a light visitor, then one without a profile, only their
/// own flags; and the heavy one again its own.
#[test]
fn a_light_visitor_after_a_heavy_one_sees_only_its_own_flags() {
    let shop = ShopIndex::new("s");
    let range = AFFINITY_WINDOW.range(NOW);
    let mut rng = SplitMix64::new(3);
    let heavy_ids = [colliding(0x1FFF, 30), (0..300).collect()].concat();
    let mut heavy = entries(&mut rng, &heavy_ids, 2000, range);
    let heavy_profile = profile(&mut heavy);
    let heavy_model = model(&heavy, range);
    assert!(heavy_model.values().filter(|f| **f & CARTED != 0).count() > 100);
    for light_n in [0usize, 1, 5, 16, 17, 40] {
        let s = Signals::of(Some(&shop), Some(&heavy_profile), None, NOW);
        check(&s, &heavy_model, &heavy_ids, &[], "heavy");
        let buffers = s.into_buffers();
        let light_ids: Vec<u32> = heavy_ids.iter().rev().take(10).copied().collect();
        let mut light = entries(&mut rng, &light_ids, light_n, range);
        let light_profile = profile(&mut light);
        let light_model = model(&light, range);
        let s = Signals::reusing(Some(&shop), Some(&light_profile), None, NOW, buffers);
        check(
            &s,
            &light_model,
            &heavy_ids,
            &[],
            &format!("light ({light_n}) after heavy"),
        );
        let s = Signals::reusing(Some(&shop), None, None, NOW, s.into_buffers());
        check(&s, &BTreeMap::new(), &heavy_ids, &[], "no profile after light");
        let s = Signals::reusing(Some(&shop), Some(&heavy_profile), None, NOW, s.into_buffers());
        check(&s, &heavy_model, &heavy_ids, &[], "heavy again");
    }
}

const RULES: &str = r#"shop: s
audiences:
  claimed_any: claimed(30d)
items:
  limit: 40
  pools:
    - when: not claimed_any
      items: [i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, i12, i13, i14, i15, i16, i17, i18, i19, i20, i21, i22, i23, i24, i25, i26, i27, i28, i29, i30, i31, i32, i33, i34, i35, i36, i37, i38, i39]
"#;

fn event(visitor: &str, action: &str, item: &str, ts: i64) -> Event<'static> {
    Event::validate(Fields {
        shop: Some("s".into()),
        visitor: Some(visitor.to_string().into()),
        action: Some(action.to_string().into()),
        item: Some(item.to_string().into()),
        price: (action == "purchase").then_some(10.0),
        ts: Some(ts),
        ..Fields::default()
    })
    .unwrap()
}

/// The shop: `heavy` carted or favorited every pool item (80 entries),
/// `light` carted one.
fn shop() -> ShopIndex {
    let shop = ShopIndex::new("s");
    for k in 0..40 {
        let item = format!("i{k}");
        shop.apply(&event("heavy", "cart", &item, NOW - 2 * DAY + k * HOUR));
        shop.apply(&event("heavy", "favorite", &item, NOW - 3 * DAY + k * HOUR));
    }
    shop.apply(&event("light", "cart", "i7", NOW - DAY));
    shop
}

fn request(visitor: &str) -> DecideRequest<'_> {
    DecideRequest {
        visitor,
        context: Context::default(),
        item_limit: 0,
        explain: false,
        now_ms: NOW,
    }
}

/// The picks as (id, reason).
fn picks(d: &Decision<'_>) -> Vec<(String, ItemReason)> {
    d.items.iter().map(|p| (p.id.to_string(), p.reason)).collect()
}

/// A light visitor's decision on a fresh thread.
fn fresh(rules: &RuleSet, shop: &ShopIndex, visitor: &str) -> Vec<(String, ItemReason)> {
    std::thread::scope(|s| {
        s.spawn(|| picks(&decide(rules, Some(shop), &MemoryLedger::new(), &request(visitor))))
            .join()
            .unwrap()
    })
}

/// On one thread: the heavy visitor (the table), then the light one and an
/// unknown one decide as on a fresh thread.
#[test]
fn decisions_after_a_heavy_visitor_on_the_thread_are_its_own() {
    let rules = RuleSet::load(RULES).unwrap();
    let shop = shop();
    let ledger = MemoryLedger::new();
    let light = fresh(&rules, &shop, "light");
    assert_eq!(
        light.iter().filter(|(_, r)| *r == ItemReason::InCart).count(),
        1,
        "{light:?}"
    );
    let nobody = fresh(&rules, &shop, "nobody");
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..2 {
                let heavy = picks(&decide(&rules, Some(&shop), &ledger, &request("heavy")));
                assert!(heavy.iter().all(|(_, r)| *r == ItemReason::InCart), "{heavy:?}");
                assert_eq!(heavy.len(), 40);
                assert_eq!(picks(&decide(&rules, Some(&shop), &ledger, &request("light"))), light);
                assert_eq!(picks(&decide(&rules, Some(&shop), &ledger, &request("heavy"))), heavy);
                assert_eq!(picks(&decide(&rules, Some(&shop), &ledger, &request("nobody"))), nobody);
            }
        })
        .join()
        .unwrap()
    });
}

/// A ledger that panics when asked whether a visitor was granted anything
/// (the pool's `when`, read after the signals are built).
struct Panicking;

impl ClaimLedger for Panicking {
    fn usage(&self, _: &str, _: &str, _: &str, _: Option<i64>) -> Usage {
        Usage::default()
    }

    fn claim(&self, _: &LedgerClaim<'_>) -> Result<ClaimOutcome, LedgerError> {
        panic!("claim")
    }

    fn granted(&self, _: &str, _: &str, _: Option<&[Arc<str>]>, _: &dyn Fn(i64) -> bool) -> bool {
        panic!("the ledger fails mid-decision")
    }

    fn grantees(&self, _: &str, _: Option<&[Arc<str>]>, _: &dyn Fn(i64) -> bool, _: &mut dyn FnMut(&str)) {}
}

/// A heavy visitor's decision that panics with its signals built leaves
/// the thread's next decisions, light and heavy, as on a fresh thread.
#[test]
fn decisions_after_a_panicked_heavy_decision_are_their_own() {
    let rules = RuleSet::load(RULES).unwrap();
    let shop = shop();
    let ledger = MemoryLedger::new();
    let light = fresh(&rules, &shop, "light");
    let heavy = fresh(&rules, &shop, "heavy");
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..2 {
                let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    decide(&rules, Some(&shop), &Panicking, &request("heavy"))
                }));
                assert!(panicked.is_err(), "the ledger panicked");
                assert_eq!(picks(&decide(&rules, Some(&shop), &ledger, &request("light"))), light);
                assert_eq!(picks(&decide(&rules, Some(&shop), &ledger, &request("heavy"))), heavy);
            }
        })
        .join()
        .unwrap()
    });
}
