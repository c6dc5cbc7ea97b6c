//! Attacks on the second round's speed and memory work (issue 17): the
//! per-thread decision scratch (reused across rule sets of other sizes,
//! after a decision that panicked, while the thread's locals are being
//! destroyed) and the arena interner under concurrent interning; bitmap
//! compaction during apply and anywhere in a random stream against an
//! index never compacted; item names equal modulo normalisation or at the
//! length bound; one rule set's cached item ids under many threads and
//! two indexes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vitrine_core::claims::Usage;
use vitrine_core::{
    decide, ClaimLedger, ClaimOutcome, Context, DecideRequest, Event, Index, LedgerClaim, LedgerError, MemoryLedger,
    RuleSet,
};

const HOUR: i64 = 3_600_000;
const NOW: i64 = 1_794_000_000_000;

/// A large rule file: one pool of 5,000 items (more than a scratch keeps),
/// complements, the add-on, audiences and a benefit with a budget (so a
/// decision asks the ledger).
fn large_rules() -> String {
    let items: Vec<String> = (0..5_000).map(|i| format!("i{i}")).collect();
    format!(
        "shop: s\naudiences:\n  carts: carted(30d)\n  viewers: viewed(30d)\n  tagged: tag(\"t\")\n\
         banners:\n  - when: carts\n    banner: b-carts\n  - banner: b-default\n\
         items:\n  limit: 40\n  exclude_purchased: 30d\n  add_on:\n    threshold: 100\n    cart_total: ctx.cart_total\n\
         \x20 pools:\n    - when: viewers\n      items: [{}]\n    - items: [i3, i2, i1, i0, x1, x2]\n\
         \x20 complements:\n    i7: [i8, i9, i7, x1, x3]\n\
         benefits:\n  - id: bn\n    when: carts\n    kind: coupon\n    budget: 5\n",
        items.join(", ")
    )
}

/// A small rule file naming some of the same items in another order.
const SMALL_RULES: &str = "shop: s\naudiences:\n  viewers: viewed(30d)\n\
banners:\n  - when: viewers\n    banner: b-small\n\
items:\n  limit: 3\n  pools:\n    - items: [x2, i1, x1]\n  complements:\n    x1: [i0]\n";

/// A shop whose visitors carted, viewed, favorited and bought some of the
/// items, with prices, categories and a tag.
fn shop() -> Index {
    let index = Index::new();
    for v in 0..6 {
        for (k, action) in ["view", "cart", "favorite", "purchase", "view", "view"]
            .iter()
            .enumerate()
        {
            let item = format!("i{}", (v * 13 + k * 7) % 60);
            let json = format!(
                r#"{{"shop":"s","visitor":"v{v}","action":"{action}","item":"{item}","category":"c{}","price":{},"ts":{}}}"#,
                k % 3,
                50 + (v * 31 + k * 17) % 90,
                NOW - (k as i64 + 1) * HOUR
            );
            index.apply(&Event::from_json(json.as_bytes()).unwrap());
        }
    }
    let tag = format!(r#"{{"shop":"s","visitor":"v1","action":"tag","tag":"t","ts":{NOW}}}"#);
    index.apply(&Event::from_json(tag.as_bytes()).unwrap());
    index
}

/// The requests asked: each visitor (and an anonymous one and a stranger),
/// with and without a context item and a cart total, explained.
fn requests(attributes: &HashMap<String, String>) -> Vec<DecideRequest<'_>> {
    let mut out = Vec::new();
    for visitor in ["v0", "v1", "v2", "v3", "v4", "v5", "", "stranger"] {
        for item in ["", "i7", "x1", "nope"] {
            out.push(DecideRequest {
                visitor,
                context: Context {
                    item,
                    attributes: Some(attributes),
                    ..Context::default()
                },
                item_limit: 0,
                explain: true,
                now_ms: NOW,
            });
        }
    }
    out
}

/// Every request's decision, as text, under `rules`.
fn decisions(rules: &RuleSet, index: &Index, ledger: &dyn ClaimLedger) -> Vec<String> {
    let attributes = HashMap::from([("cart_total".to_string(), "30".to_string())]);
    let shop = index.shop("s");
    requests(&attributes)
        .iter()
        .map(|req| format!("{:?}", decide(rules, shop.as_deref(), ledger, req)))
        .collect()
}

/// The decisions of each rule set on a thread that never decided before.
fn fresh(rules: &RuleSet, index: &Index) -> Vec<String> {
    std::thread::scope(|s| {
        s.spawn(|| decisions(rules, index, &MemoryLedger::new()))
            .join()
            .unwrap()
    })
}

/// One thread deciding under a large rule set, then a small one, then the
/// large one again (its scratch sized by each in turn) decides exactly as
/// threads that decide under one rule set only.
#[test]
fn a_thread_switching_rule_sets_decides_as_fresh_threads() {
    let index = shop();
    let large = RuleSet::load(&large_rules()).unwrap();
    let small = RuleSet::load(SMALL_RULES).unwrap();
    let (want_large, want_small) = (fresh(&large, &index), fresh(&small, &index));
    assert!(want_large.iter().any(|d| d.contains("AddOn")), "the add-on contributes");
    assert!(
        want_large.iter().any(|d| d.contains("Complement")),
        "complements contribute"
    );
    let ledger = MemoryLedger::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            for round in 0..3 {
                assert_eq!(decisions(&large, &index, &ledger), want_large, "large, round {round}");
                assert_eq!(decisions(&small, &index, &ledger), want_small, "small, round {round}");
            }
        })
        .join()
        .unwrap();
    });
}

/// A ledger that panics in the middle of a decision when told to.
struct Exploding {
    inner: MemoryLedger,
    armed: AtomicBool,
}

impl Exploding {
    fn check(&self) {
        if self.armed.load(Ordering::Relaxed) {
            panic!("the ledger exploded");
        }
    }
}

impl ClaimLedger for Exploding {
    fn usage(&self, shop: &str, benefit: &str, visitor: &str, since_ms: Option<i64>) -> Usage {
        self.check();
        self.inner.usage(shop, benefit, visitor, since_ms)
    }
    fn claim(&self, claim: &LedgerClaim<'_>) -> Result<ClaimOutcome, LedgerError> {
        self.check();
        self.inner.claim(claim)
    }
    fn granted(&self, shop: &str, visitor: &str, benefits: Option<&[Arc<str>]>, at: &dyn Fn(i64) -> bool) -> bool {
        self.check();
        self.inner.granted(shop, visitor, benefits, at)
    }
    fn grantees(&self, shop: &str, benefits: Option<&[Arc<str>]>, at: &dyn Fn(i64) -> bool, f: &mut dyn FnMut(&str)) {
        self.check();
        self.inner.grantees(shop, benefits, at, f)
    }
}

/// A decision that panics half-way (its ledger panics while the benefit
/// is judged, with the scratch in use) leaves the thread's scratch usable:
/// the next decisions on that thread are exactly those of a fresh thread.
#[test]
fn a_decision_that_panicked_leaves_the_scratch_usable() {
    let index = shop();
    let large = RuleSet::load(&large_rules()).unwrap();
    let small = RuleSet::load(SMALL_RULES).unwrap();
    let (want_large, want_small) = (fresh(&large, &index), fresh(&small, &index));
    let ledger = Exploding {
        inner: MemoryLedger::new(),
        armed: AtomicBool::new(false),
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            for rules in [&large, &small, &large] {
                ledger.armed.store(true, Ordering::Relaxed);
                let panicked =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decisions(&large, &index, &ledger)));
                assert!(panicked.is_err(), "the ledger was asked");
                ledger.armed.store(false, Ordering::Relaxed);
                let want = if std::ptr::eq(rules, &large) {
                    &want_large
                } else {
                    &want_small
                };
                assert_eq!(&decisions(rules, &index, &ledger), want);
            }
        })
        .join()
        .unwrap();
    });
}

/// A decision made while the thread's locals are destroyed (from another
/// thread-local's destructor, after the scratch may be gone) decides as
/// any other.
#[test]
fn a_decision_while_the_thread_ends_decides_as_any_other() {
    let index = Arc::new(shop());
    let large = Arc::new(RuleSet::load(&large_rules()).unwrap());
    let want = fresh(&large, &index);
    struct DecideOnDrop {
        index: Arc<Index>,
        rules: Arc<RuleSet>,
        out: std::sync::mpsc::Sender<Vec<String>>,
    }
    impl Drop for DecideOnDrop {
        fn drop(&mut self) {
            let _ = self.out.send(decisions(&self.rules, &self.index, &MemoryLedger::new()));
        }
    }
    thread_local! {
        static LATE: std::cell::RefCell<Option<DecideOnDrop>> = const { std::cell::RefCell::new(None) };
    }
    for decide_first in [false, true] {
        let (tx, rx) = std::sync::mpsc::channel();
        let (index, rules) = (index.clone(), large.clone());
        std::thread::spawn(move || {
            // Registered before the scratch (whose destructor then runs
            // first) or after it (run last), depending on the first use.
            if decide_first {
                decisions(&rules, &index, &MemoryLedger::new());
            }
            LATE.with(|late| *late.borrow_mut() = Some(DecideOnDrop { index, rules, out: tx }));
            if !decide_first {
                let _ = decisions(&large_rules_loaded(), &shop(), &MemoryLedger::new());
            }
        })
        .join()
        .unwrap();
        assert_eq!(rx.recv().unwrap(), want, "decided first: {decide_first}");
    }
}

fn large_rules_loaded() -> RuleSet {
    RuleSet::load(&large_rules()).unwrap()
}

/// Visitors interned from eight threads at once, each name by several
/// threads: ids are dense (`0..n`), one per name, and every name finds its
/// id; a snapshot taken afterwards holds them all.
#[test]
fn concurrent_interning_gives_dense_unique_ids() {
    let index = Index::new();
    let names = 4_000;
    std::thread::scope(|s| {
        for t in 0..8 {
            let index = &index;
            s.spawn(move || {
                for k in 0..names {
                    // Each thread walks the names from another place.
                    let v = (k * 7 + t * 501) % names;
                    let json = format!(r#"{{"shop":"s","visitor":"v{v}","action":"tag","tag":"t","ts":{NOW}}}"#);
                    index.apply(&Event::from_json(json.as_bytes()).unwrap());
                }
            });
        }
    });
    let shop = index.shop("s").unwrap();
    assert_eq!(shop.visitor_count(), names as u32);
    let mut ids: Vec<u32> = (0..names).map(|v| shop.visitor_id(&format!("v{v}")).unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..names as u32).collect::<Vec<_>>());
    let back = vitrine_core::snapshot::decode(&vitrine_core::snapshot::encode(&index, b"")).unwrap();
    let again = back.index.shop("s").unwrap();
    for v in 0..names {
        let name = format!("v{v}");
        assert_eq!(again.visitor_id(&name), shop.visitor_id(&name), "{name}");
    }
}

/// A rule set's `items` section used to be public and editable after
/// loading, and the rule-local item ids computed at load time went stale
/// (appended pool items dropped, added complement lists ignored); decisions
/// then checked the catalog against the section every time. The section is
/// now read-only once loaded (`RuleSet::items` hands out `&ItemRules`, the
/// field is private, and a `RuleSet` is only built by loading a file): an
/// edit no longer compiles (the `compile_fail` example on `RuleSet::items`
/// pins it), so the test that edited it cannot be written any more.
///
/// What can still change under a loaded rule set is the shop's item table:
/// items it learns after a decision resolved the rule items' ids (the
/// catalog caches them per table), and another table (another index, a
/// snapshot loaded). Decisions must be those of a rule set that never
/// decided before.
#[test]
fn rule_items_the_shop_learns_later_or_another_index_decide_as_a_fresh_rule_set() {
    let text = "shop: s\naudiences:\n  viewers: viewed(30d)\nitems:\n  limit: 40\n  add_on:\n    threshold: 100\n    cart_total: ctx.cart_total\n\
                \x20 pools:\n    - items: [i3, i7, x7, i1, i20, x9]\n    - items: [i13, x8, i26, i3, x1]\n\
                \x20 complements:\n    x1: [i0, x9, i39, i7]\n    i7: [x8, i8, i1]\n";
    let rules = RuleSet::load(text).unwrap();
    let index = shop();
    let ledger = MemoryLedger::new();
    assert_eq!(
        decisions(&rules, &index, &ledger),
        fresh(&RuleSet::load(text).unwrap(), &index)
    );
    // The shop learns x1, x7, x8 and x9 (bought, carted, priced, categorised).
    for (k, (item, action)) in [("x9", "purchase"), ("x8", "cart"), ("x1", "view"), ("x7", "purchase")]
        .iter()
        .enumerate()
    {
        for v in 0..3 {
            let json = format!(
                r#"{{"shop":"s","visitor":"v{v}","action":"{action}","item":"{item}","category":"c{k}","price":{},"ts":{}}}"#,
                110 + k * 10,
                NOW - (k as i64 + 2) * HOUR
            );
            index.apply(&Event::from_json(json.as_bytes()).unwrap());
        }
        let want = fresh(&RuleSet::load(text).unwrap(), &index);
        assert_eq!(decisions(&rules, &index, &ledger), want, "after {item}");
    }
    // Another index (a snapshot of this one, and a shop that numbered the
    // items otherwise), then this one again.
    let back = vitrine_core::snapshot::decode(&vitrine_core::snapshot::encode(&index, b""))
        .unwrap()
        .index;
    // The same items as `index`, numbered in the opposite order.
    let mut names: Vec<String> = (0..6)
        .flat_map(|v| (0..6).map(move |k| format!("i{}", (v * 13 + k * 7) % 60)))
        .chain(["x9", "x8", "x1", "x7"].map(String::from))
        .collect();
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    let other = Index::new();
    for (k, item) in names.iter().rev().enumerate() {
        let json = format!(
            r#"{{"shop":"s","visitor":"v{}","action":"{}","item":"{item}","category":"c{}","price":{},"ts":{}}}"#,
            k % 4,
            ["purchase", "cart", "view", "favorite"][k % 4],
            k % 3,
            100 + k * 7,
            NOW - (k as i64 + 1) * HOUR
        );
        other.apply(&Event::from_json(json.as_bytes()).unwrap());
    }
    for ix in [&back, &other, &index, &other] {
        assert_eq!(decisions(&rules, ix, &ledger), fresh(&RuleSet::load(text).unwrap(), ix));
    }
    assert_eq!(decisions(&rules.clone(), &index, &ledger), fresh(&rules, &index));
}

const DAY: i64 = 24 * HOUR;

/// Rules whose audiences read every kind of bitmap compaction touches:
/// day bitmaps per action, category and item filters, tags, tiers.
const COMPACTION_RULES: &str = r#"shop: s
audiences:
  viewers: viewed(7d)
  carts_c1: carted(7d, category="c1")
  buyers: purchased(30d)
  fav_i3: favorited(30d, item="i3")
  tagged: tag("t1")
  gold: member_tier >= 2
  recent: visited(2d)
  mixed: (viewed(3d) or tag("t2")) and not purchased(1d) and member_tier < 3
banners:
  - when: gold
    banner: b-gold
  - when: carts_c1
    banner: b-carts
  - banner: b-default
items:
  limit: 6
  pools:
    - when: viewers
      items: [i0, i1, i2, i3, i4, i5, i6, i7, i8, i9]
    - items: [i10, i11, i12, i3]
"#;

/// Event `k` of visitor `v` (each visitor's events in one fixed order):
/// behavior over the last 6 days, tags and untags, tier changes.
fn compaction_event(v: u32, k: u32) -> String {
    let ts = NOW - i64::from((v * 5 + k * 11) % 144) * HOUR - i64::from(k);
    let item = (v * 3 + k * 7) % 40;
    match (v + k) % 7 {
        0..=2 => format!(
            r#"{{"shop":"s","visitor":"v{v}","action":"{}","item":"i{item}","category":"c{}","price":{},"ts":{ts}}}"#,
            ["view", "cart", "favorite"][((v + k) % 3) as usize],
            item % 6,
            10 + item
        ),
        3 => format!(
            r#"{{"shop":"s","visitor":"v{v}","action":"purchase","item":"i{item}","category":"c{}","price":{},"id":"o{v}-{k}","ts":{ts}}}"#,
            item % 6,
            10 + item
        ),
        4 | 5 => format!(
            r#"{{"shop":"s","visitor":"v{v}","action":"{}","tag":"t{}","ts":{ts}}}"#,
            if k.is_multiple_of(3) { "untag" } else { "tag" },
            k % 3
        ),
        _ => format!(
            r#"{{"shop":"s","visitor":"v{v}","action":"member","tier":{},"ts":{ts}}}"#,
            k % 4
        ),
    }
}

fn apply_json(index: &Index, json: &str) {
    index.apply(&Event::from_json(json.as_bytes()).unwrap());
}

/// Every name (visitors, items, categories, tags) interned in one order, so
/// that two indexes fed the same events number them alike.
fn seeded() -> Index {
    let index = Index::new();
    for v in 0..VISITORS {
        apply_json(
            &index,
            &format!(
                r#"{{"shop":"s","visitor":"v{v}","action":"tag","tag":"seed","ts":{}}}"#,
                NOW - 20 * DAY
            ),
        );
    }
    for t in 0..3 {
        apply_json(
            &index,
            &format!(
                r#"{{"shop":"s","visitor":"v0","action":"tag","tag":"t{t}","ts":{}}}"#,
                NOW - 20 * DAY
            ),
        );
    }
    for i in 0..40 {
        apply_json(
            &index,
            &format!(
                r#"{{"shop":"s","visitor":"v0","action":"view","item":"i{i}","category":"c{}","ts":{}}}"#,
                i % 6,
                NOW - 20 * DAY
            ),
        );
    }
    index
}

const VISITORS: u32 = 240;
const EVENTS_PER_VISITOR: u32 = 30;

/// Everything two indexes must agree on: snapshot bytes, audience sizes,
/// every visitor's decision, and the index's counts.
/// Snapshot bytes, audience sizes, decisions, counts.
type Observed = (Vec<u8>, Vec<(String, Option<u64>)>, Vec<String>, [u64; 3]);

fn observe(index: &Index, rules: &RuleSet, now: i64) -> Observed {
    let shop = index.shop("s").unwrap();
    let ledger = MemoryLedger::new();
    let sizes = vitrine_core::audience_sizes(rules, Some(&shop), &ledger, now);
    let decisions = (0..VISITORS)
        .map(|v| {
            let visitor = format!("v{v}");
            let req = DecideRequest {
                visitor: &visitor,
                context: Context::default(),
                item_limit: 0,
                explain: true,
                now_ms: now,
            };
            format!("{:?}", decide(rules, Some(&shop), &ledger, &req))
        })
        .collect();
    let stats = shop.stats();
    (
        vitrine_core::snapshot::encode(index, b""),
        sizes,
        decisions,
        [stats.visitors, stats.day_entries, stats.profile_entries],
    )
}

/// Compaction running again and again (closing day after day) while three
/// threads apply events and a fourth asks audience sizes: afterwards the
/// index equals one fed the same events without compaction (snapshot
/// bytes, sizes, decisions, counts) and its bitmaps take no more bytes;
/// late events for closed, compacted days, untags and tier changes (bits
/// taken out of run containers) and expiry keep the two equal.
#[test]
fn compaction_during_apply_changes_nothing_but_bytes() {
    let rules = RuleSet::load(COMPACTION_RULES).unwrap();
    let (compacted, plain) = (seeded(), seeded());
    let shop = compacted.shop("s").unwrap();
    let passes = std::sync::atomic::AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut appliers = Vec::new();
        for t in 0..3 {
            let (compacted, passes) = (&compacted, &passes);
            appliers.push(s.spawn(move || {
                let mut seen = 0;
                for k in 0..EVENTS_PER_VISITOR {
                    for v in (t..VISITORS).step_by(3) {
                        apply_json(compacted, &compaction_event(v, k));
                    }
                    // Let a compaction pass run between each round of events.
                    while passes.load(Ordering::Acquire) == seen {
                        std::thread::yield_now();
                    }
                    seen = passes.load(Ordering::Acquire);
                }
            }));
        }
        let (shop, passes, done) = (&shop, &passes, &done);
        s.spawn(move || {
            let mut pass = 0i64;
            while !done.load(Ordering::Acquire) {
                // Close the days one quarter-day at a time, then stay at NOW.
                shop.compact((NOW - 7 * DAY + pass * 6 * HOUR).min(NOW));
                pass += 1;
                passes.fetch_add(1, Ordering::AcqRel);
            }
        });
        s.spawn(move || {
            let ledger = MemoryLedger::new();
            while !done.load(Ordering::Acquire) {
                for expr in [
                    "viewed(7d)",
                    "carted(7d, category=\"c1\") or tag(\"t1\")",
                    "member_tier >= 2",
                ] {
                    vitrine_core::size_of(None, Some(shop), &ledger, expr, NOW).unwrap();
                }
            }
        });
        for a in appliers {
            a.join().unwrap();
        }
        done.store(true, Ordering::Release);
    });
    for k in 0..EVENTS_PER_VISITOR {
        for v in 0..VISITORS {
            apply_json(&plain, &compaction_event(v, k));
        }
    }
    assert!(passes.load(Ordering::Acquire) >= u64::from(EVENTS_PER_VISITOR));
    let want = observe(&plain, &rules, NOW);
    assert_eq!(observe(&compacted, &rules, NOW), want);
    assert!(
        want.1.iter().all(|(_, size)| size.is_some_and(|n| n > 0)),
        "{:?}",
        want.1
    );
    let bytes = |index: &Index| index.shop("s").unwrap().stats().bitmap_bytes;
    assert!(
        bytes(&compacted) <= bytes(&plain),
        "{} > {}",
        bytes(&compacted),
        bytes(&plain)
    );

    // Late events for closed, compacted days; untags and tier changes.
    shop.compact(NOW);
    for index in [&compacted, &plain] {
        for v in 0..VISITORS {
            let late = NOW - i64::from(3 + v % 3) * DAY - i64::from(v) * 1000;
            apply_json(
                index,
                &format!(r#"{{"shop":"s","visitor":"v{v}","action":"cart","item":"i3","category":"c1","ts":{late}}}"#),
            );
            apply_json(
                index,
                &format!(
                    r#"{{"shop":"s","visitor":"v{v}","action":"favorite","item":"i3","category":"c3","ts":{late}}}"#
                ),
            );
            apply_json(
                index,
                &format!(
                    r#"{{"shop":"s","visitor":"v{v}","action":"untag","tag":"t{}","ts":{NOW}}}"#,
                    v % 3
                ),
            );
            apply_json(
                index,
                &format!(
                    r#"{{"shop":"s","visitor":"v{v}","action":"member","tier":{},"ts":{NOW}}}"#,
                    v % 5
                ),
            );
        }
    }
    assert_eq!(observe(&compacted, &rules, NOW), observe(&plain, &rules, NOW));
    shop.compact(NOW + DAY);
    assert_eq!(
        observe(&compacted, &rules, NOW + DAY),
        observe(&plain, &rules, NOW + DAY)
    );
    for index in [&compacted, &plain] {
        index.expire(NOW + 40 * DAY);
    }
    shop.compact(NOW + 41 * DAY);
    assert_eq!(
        observe(&compacted, &rules, NOW + 41 * DAY),
        observe(&plain, &rules, NOW + 41 * DAY)
    );
}

/// Item names the item table must keep apart or refuse: the same letter
/// composed and decomposed (NFC "é" and NFD "e\u{301}" are two items, as
/// their bytes differ), a name of exactly `MAX_ID_BYTES` (kept, one more
/// byte refused), an empty one (refused). Decisions under rules naming
/// some of them read the right item's facts, before and after a snapshot
/// round trip, and a rule set that resolved them before the shop knew
/// them decides as a fresh one afterwards.
#[test]
fn item_names_equal_modulo_normalisation_or_at_the_length_bound_stay_apart() {
    let nfc = "caf\u{e9}";
    let nfd = "cafe\u{301}";
    let long = "\u{e9}".repeat(vitrine_core::event::MAX_ID_BYTES / 2);
    assert_eq!(long.len(), vitrine_core::event::MAX_ID_BYTES);
    let too_long = format!("{long}x");
    let event = |visitor: &str, action: &str, item: &str, price: u32, hours: i64| {
        format!(
            r#"{{"shop":"s","visitor":"{visitor}","action":"{action}","item":"{item}","category":"c-{}","price":{price},"ts":{}}}"#,
            item.len(),
            NOW - hours * HOUR
        )
    };
    assert!(Event::from_json(event("v0", "view", &too_long, 5, 1).as_bytes()).is_err());
    assert!(Event::from_json(event("v0", "view", "", 5, 1).as_bytes()).is_err());
    let text = format!(
        "shop: s\nitems:\n  limit: 5\n  exclude_purchased: 30d\n  add_on:\n    threshold: 100\n    cart_total: ctx.cart_total\n  pools:\n    - items: [\"{nfc}\", \"{long}\", plain]\n  complements:\n    \"{nfd}\": [\"{nfc}\", \"{long}\"]\n"
    );
    let rules = RuleSet::load(&text).unwrap();
    let index = Index::new();
    let ledger = MemoryLedger::new();
    let attributes = HashMap::from([("cart_total".to_string(), "30".to_string())]);
    let decide_all = |index: &Index, rules: &RuleSet| -> Vec<String> {
        let shop = index.shop("s");
        ["v0", "v1", "v2"]
            .iter()
            .flat_map(|visitor| [nfc, nfd, long.as_str(), ""].map(|item| (*visitor, item)))
            .flat_map(|(visitor, item)| [(visitor, item, true), (visitor, item, false)])
            .map(|(visitor, item, add_on)| {
                let req = DecideRequest {
                    visitor,
                    context: Context {
                        item,
                        attributes: add_on.then_some(&attributes),
                        ..Context::default()
                    },
                    item_limit: 0,
                    explain: false,
                    now_ms: NOW,
                };
                format!("{:?}", decide(rules, shop.as_deref(), &ledger, &req))
            })
            .collect()
    };
    // The shop exists (so the rule items are resolved, all unknown) ...
    apply_json(&index, &event("v9", "view", "other", 1, 9));
    let before = decide_all(&index, &rules);
    // ... then learns the items: v0 carted the decomposed one (only), v1
    // bought the long one, prices differ per item.
    for json in [
        event("v0", "cart", nfd, 80, 3),
        event("v1", "purchase", &long, 90, 2),
        event("v2", "view", nfc, 95, 1),
        event("v2", "view", "plain", 70, 1),
    ] {
        apply_json(&index, &json);
    }
    let shop = index.shop("s").unwrap();
    assert_eq!(shop.item_price(nfc), Some(95.0));
    assert_eq!(shop.item_price(nfd), Some(80.0));
    assert_eq!(shop.item_price(&long), Some(90.0));
    let after = decide_all(&index, &rules);
    assert_ne!(after, before);
    assert_eq!(after, decide_all(&index, &RuleSet::load(&text).unwrap()));
    // Without the add-on (odd rows): v0 carted the decomposed item, so the
    // composed one is a plain pool item; v1 bought the long one (excluded);
    // v2 viewed the composed one's category.
    let pick = |item: &str, reason: &str| format!("Pick {{ id: {item:?}, reason: {reason} }}");
    assert!(after[7].contains(&pick(nfc, "Pool")), "{}", after[7]);
    assert!(!after[15].contains(&format!("{long:?}")), "{}", after[15]);
    assert!(after[23].contains(&pick(nfc, "ViewedCategory")), "{}", after[23]);
    let back = vitrine_core::snapshot::decode(&vitrine_core::snapshot::encode(&index, b""))
        .unwrap()
        .index;
    let again = back.shop("s").unwrap();
    for item in [nfc, nfd, long.as_str()] {
        assert_eq!(again.item_price(item), shop.item_price(item), "{item}");
    }
    assert_eq!(decide_all(&back, &rules), after);
}

/// One rule set deciding from six threads at once against two indexes
/// that number the same items differently (its cached item ids flip from
/// one table to the other under the threads' feet), while a seventh thread
/// teaches one index items the rules name: every decision against the
/// index that does not change equals a fresh rule set's, and once the
/// teaching is done, so does every decision against the other.
#[test]
fn one_rule_set_deciding_against_two_changing_indexes_from_many_threads() {
    let text = "shop: s\naudiences:\n  viewers: viewed(30d)\nitems:\n  limit: 40\n  exclude_purchased: 30d\n  add_on:\n    threshold: 100\n    cart_total: ctx.cart_total\n\
                \x20 pools:\n    - when: viewers\n      items: [i3, i7, x7, i1, i20, x9, y0, y1, y2, y3]\n    - items: [i13, x8, i26, i3, x1, y4, y5]\n\
                \x20 complements:\n    x1: [i0, x9, i39, i7, y6]\n    i7: [x8, i8, i1, y7]\n";
    let rules = RuleSet::load(text).unwrap();
    let (steady, learning) = (shop(), shop());
    // `steady` numbers the rule's x and y items otherwise than `learning` will.
    let others = [
        "z0", "z1", "z2", "x7", "x1", "x8", "x9", "y7", "y6", "y5", "y4", "y3", "y2", "y1", "y0",
    ];
    for (k, item) in others.iter().enumerate() {
        let json = format!(
            r#"{{"shop":"s","visitor":"v{}","action":"cart","item":"{item}","category":"c{}","price":{},"ts":{}}}"#,
            k % 6,
            k % 3,
            120 + k,
            NOW - 2 * HOUR
        );
        apply_json(&steady, &json);
    }
    let want_steady = fresh(&RuleSet::load(text).unwrap(), &steady);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..6 {
            let (rules, steady, learning, want_steady, done) = (&rules, &steady, &learning, &want_steady, &done);
            s.spawn(move || {
                let ledger = MemoryLedger::new();
                let mut rounds = 0;
                while rounds < 3 || !done.load(Ordering::Acquire) {
                    if t % 2 == 0 {
                        assert_eq!(&decisions(rules, steady, &ledger), want_steady, "thread {t}");
                    } else {
                        let _ = decisions(rules, learning, &ledger);
                    }
                    rounds += 1;
                }
            });
        }
        s.spawn(|| {
            for k in 0..8 {
                for (item, action) in [("x9", "purchase"), ("x8", "cart"), ("x1", "view"), ("x7", "favorite")] {
                    let json = format!(
                        r#"{{"shop":"s","visitor":"v{}","action":"{action}","item":"{item}","category":"c{k}","price":{},"ts":{}}}"#,
                        k % 6,
                        105 + k * 3,
                        NOW - (k as i64 + 1) * HOUR
                    );
                    apply_json(&learning, &json);
                }
                let json = format!(
                    r#"{{"shop":"s","visitor":"v{}","action":"view","item":"y{k}","category":"c1","price":{},"ts":{}}}"#,
                    k % 6,
                    140 + k,
                    NOW - HOUR
                );
                apply_json(&learning, &json);
                std::thread::yield_now();
            }
            done.store(true, Ordering::Release);
        });
    });
    let ledger = MemoryLedger::new();
    assert_eq!(
        decisions(&rules, &learning, &ledger),
        fresh(&RuleSet::load(text).unwrap(), &learning)
    );
    assert_eq!(decisions(&rules, &steady, &ledger), want_steady);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Random events over the last 9 days with compaction passes at random
    /// points and clock readings (days closing in any order, a pass at an
    /// earlier clock after a later one, late events after a day closed):
    /// the index equals one fed the same events without compaction.
    #[test]
    fn compaction_anywhere_in_a_random_stream_changes_nothing(
        stream in proptest::collection::vec(
            (0u32..24, 0u32..60, 0u32..216, proptest::option::of(0i64..12)),
            1..160,
        ),
    ) {
        let rules = RuleSet::load(COMPACTION_RULES).unwrap();
        let (compacted, plain) = (seeded(), seeded());
        let shop = compacted.shop("s").unwrap();
        for (v, k, hours_ago, compact_at) in stream {
            let mut json = compaction_event(v, k);
            // Re-time the event: `hours_ago` before NOW.
            let ts = NOW - i64::from(hours_ago) * HOUR - i64::from(k);
            let at = json.rfind("\"ts\":").unwrap_or(0);
            json.replace_range(at.., &format!("\"ts\":{ts}}}"));
            apply_json(&compacted, &json);
            apply_json(&plain, &json);
            if let Some(days) = compact_at {
                shop.compact(NOW - 9 * DAY + days * DAY);
            }
        }
        let (a, b) = (observe(&compacted, &rules, NOW), observe(&plain, &rules, NOW));
        proptest::prop_assert_eq!(a.0, b.0);
        proptest::prop_assert_eq!(a.1, b.1);
        proptest::prop_assert_eq!(a.2, b.2);
        proptest::prop_assert_eq!(a.3, b.3);
    }
}
