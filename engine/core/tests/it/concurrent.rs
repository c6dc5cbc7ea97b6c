//! Concurrency: writers apply events while readers decide and size, on real
//! threads, with nothing torn.
//!
//! * [`readers_see_prefixes_of_each_visitors_events`]: every visitor goes
//!   through a fixed sequence of member and purchase events, applied by two
//!   writers (the second re-delivers everything, in another visitor order).
//!   The banners form a ladder with one rung per prefix of that sequence, so a
//!   decision that mixes states (a tier from one moment and a purchase count
//!   from another) lands on the `torn` fallback. Each reader checks that per
//!   visitor it only ever climbs, that item lists are exact (right length, no
//!   duplicates, nothing the decision's own state says was bought), and that
//!   the sizes of monotone audiences never shrink; at the end every value is
//!   exact.
//! * [`concurrent_writers_converge_to_the_sequential_state`]: three writers
//!   apply the same mixed stream (every action, duplicates, tag and tier ties)
//!   in three different orders at once, while readers decide and size; the
//!   result must be indistinguishable from applying the stream once, in order,
//!   on one thread.
//!
//! Loops are bounded by iteration counts, never by wall-clock time.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::thread;

use vitrine_core::event::Fields;
use vitrine_core::hash::SplitMix64;
use vitrine_core::{decide, size_of, DecideRequest, Decision, Event, Index, MemoryLedger, RuleSet};

const SHOP: &str = "s";
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// Noon UTC, 2026-11-10.
const NOW: i64 = 20_767 * DAY + 12 * HOUR;

fn event(visitor: &str, action: &str, ts: i64) -> Fields<'static> {
    Fields {
        shop: Some(SHOP.into()),
        visitor: Some(visitor.to_string().into()),
        action: Some(action.to_string().into()),
        ts: Some(ts),
        ..Fields::default()
    }
}

fn apply(index: &Index, fields: &Fields<'static>) {
    index.apply(&Event::validate(fields.clone()).unwrap());
}

fn decide_at<'r>(rules: &'r RuleSet, index: &Index, ledger: &MemoryLedger, visitor: &str) -> Decision<'r> {
    let shop = index.shop(SHOP);
    decide(
        rules,
        shop.as_deref(),
        ledger,
        &DecideRequest {
            visitor,
            explain: true,
            now_ms: NOW,
            ..DecideRequest::default()
        },
    )
}

fn size(rules: &RuleSet, index: &Index, expression: &str) -> u64 {
    let shop = index.shop(SHOP);
    size_of(
        Some(rules),
        shop.as_deref(),
        &vitrine_core::MemoryLedger::new(),
        expression,
        NOW,
    )
    .unwrap()
}

fn assert_distinct(d: &Decision<'_>, limit: usize, what: &str) {
    let ids: HashSet<&str> = d.items.iter().map(|p| p.id).collect();
    assert_eq!(ids.len(), d.items.len(), "{what}: an item twice in {:?}", d.items);
    assert!(d.items.len() <= limit, "{what}: more than {limit} items: {:?}", d.items);
}

// ------------------------------------------------- prefixes of a known sequence

/// Visitors of the ladder test.
const LADDER_VISITORS: usize = 48;
/// Steps per visitor: member tier k, then purchase k.
const STEPS: usize = 5;
const EVENTS_PER_VISITOR: usize = 2 * STEPS;
const PRICE: u32 = 10;
const LIMIT: usize = 3;
/// Reader iterations: at least this many, then on until the writers are done...
const MIN_READS: usize = 400;
/// ...but never more than this many.
const MAX_READS: usize = 10_000;
const READERS: usize = 3;

/// Event `n` (0-based) of visitor `v`'s sequence: even `n` raises the tier
/// to `n / 2 + 1`, odd `n` buys item `p<n / 2 + 1>` (with an id).
fn ladder_event(v: usize, n: usize) -> Fields<'static> {
    let k = n / 2 + 1;
    let ts = NOW - 2 * HOUR + k as i64 * 60_000 + (n % 2) as i64;
    let visitor = format!("v{v}");
    if n.is_multiple_of(2) {
        Fields {
            tier: Some(k as i64),
            ..event(&visitor, "member", ts)
        }
    } else {
        Fields {
            item: Some(format!("p{k}").into()),
            price: Some(f64::from(PRICE)),
            id: Some(format!("{visitor}-p{k}").into()),
            ..event(&visitor, "purchase", ts)
        }
    }
}

/// The state after the first `p` events of a sequence: (tier, purchases).
fn state(p: usize) -> (usize, usize) {
    (p.div_ceil(2), p / 2)
}

/// One banner per prefix length `p`, whose `when` holds exactly in that
/// state; anything else falls through to `torn`.
fn ladder_rules() -> RuleSet {
    let mut file = String::from(
        "shop: s\naudiences:\n  gold: member_tier >= 3\n  buyer: purchased(30d)\n  \
         tagged: tag(\"t\")\nbanners:\n",
    );
    for p in (0..=EVENTS_PER_VISITOR).rev() {
        let (tier, bought) = state(p);
        let mut when = format!(
            "member_tier == {tier} and purchase_count(30d) == {bought} and spend(30d) == {} \
             and not purchased(1d, item=\"p{}\")",
            bought as u32 * PRICE,
            bought + 1
        );
        if bought > 0 {
            when += &format!(" and purchased(1d, item=\"p{bought}\")");
        }
        file += &format!("  - when: '{when}'\n    banner: s{p}\n");
    }
    file += "  - banner: torn\n";
    file += &format!("items:\n  limit: {LIMIT}\n  exclude_purchased: 30d\n  pools:\n    - items: [");
    let pool: Vec<String> = (1..=STEPS)
        .map(|k| format!("p{k}"))
        .chain(["x1".into(), "x2".into()])
        .collect();
    file += &pool.join(", ");
    file += "]\n";
    RuleSet::load(&file).unwrap_or_else(|e| panic!("{e}\n{file}"))
}

/// Sizes that can only grow while the ladder writers run.
const MONOTONE: [&str; 10] = [
    "member_tier >= 3",
    "member_tier == 5",
    "gold",
    "purchased(30d)",
    "purchase_count(30d) >= 3",
    "spend(30d) >= 40",
    "purchased(1d, item=\"p5\")",
    "gold and buyer",
    "viewed(30d) or purchased(30d)",
    "tagged",
];

#[test]
fn readers_see_prefixes_of_each_visitors_events() {
    let rules = ladder_rules();
    let index = Index::new();
    let ledger = MemoryLedger::new();
    let writers_done = AtomicUsize::new(0);
    let readers_ready = AtomicUsize::new(0);
    const WRITERS: usize = 3;
    let start = Barrier::new(WRITERS + READERS);

    let observed: Vec<(usize, usize)> = thread::scope(|s| {
        // Two writers deliver every ladder event, step by step across all
        // visitors, the second in reverse visitor order: each visitor's
        // events stay in sequence order, so whatever the interleaving its
        // state is always a prefix of the sequence.
        for w in 0..2 {
            let (index, start, writers_done, readers_ready) = (&index, &start, &writers_done, &readers_ready);
            s.spawn(move || {
                start.wait();
                // Let every reader see the empty state first (bounded, in
                // case a reader dies before it is ready).
                for _ in 0..1_000_000 {
                    if readers_ready.load(Ordering::Acquire) >= READERS {
                        break;
                    }
                    thread::yield_now();
                }
                for n in 0..EVENTS_PER_VISITOR {
                    for i in 0..LADDER_VISITORS {
                        let v = if w == 0 { i } else { LADDER_VISITORS - 1 - i };
                        apply(index, &ladder_event(v, n));
                        thread::yield_now();
                    }
                }
                writers_done.fetch_add(1, Ordering::AcqRel);
            });
        }
        // A third writer adds other visitors: views and tags, new interned
        // visitors and items while the readers read.
        {
            let (index, start, writers_done) = (&index, &start, &writers_done);
            s.spawn(move || {
                start.wait();
                for i in 0..LADDER_VISITORS {
                    let visitor = format!("u{i}");
                    apply(
                        index,
                        &Fields {
                            item: Some("x1".into()),
                            category: Some("c".into()),
                            ..event(&visitor, "view", NOW - HOUR)
                        },
                    );
                    apply(
                        index,
                        &Fields {
                            tag: Some("t".into()),
                            ..event(&visitor, "tag", NOW - HOUR)
                        },
                    );
                    thread::yield_now();
                }
                writers_done.fetch_add(1, Ordering::AcqRel);
            });
        }
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                let (rules, index, ledger, start) = (&rules, &index, &ledger, &start);
                let (writers_done, readers_ready) = (&writers_done, &readers_ready);
                s.spawn(move || {
                    let mut rng = SplitMix64::new(r as u64 + 1);
                    let mut seen = [0usize; LADDER_VISITORS];
                    let mut sizes = [0u64; MONOTONE.len()];
                    let mut climbs = 0;
                    start.wait();
                    let mut reads = 0;
                    while reads < MAX_READS && (reads < MIN_READS || writers_done.load(Ordering::Acquire) < WRITERS) {
                        let v = rng.index(LADDER_VISITORS);
                        let visitor = format!("v{v}");
                        let d = decide_at(rules, index, ledger, &visitor);
                        if reads == 0 {
                            readers_ready.fetch_add(1, Ordering::AcqRel);
                        }
                        let banner = d.banner.unwrap();
                        let p: usize = banner
                            .strip_prefix('s')
                            .and_then(|p| p.parse().ok())
                            .unwrap_or_else(|| panic!("reader {r}: torn decision for {visitor}: {banner}"));
                        assert!(
                            p >= seen[v],
                            "reader {r}: {visitor} went back from s{} to s{p}",
                            seen[v]
                        );
                        climbs += usize::from(p > seen[v]);
                        seen[v] = p;
                        let what = format!("reader {r}, {visitor} at s{p}");
                        assert_distinct(&d, LIMIT, &what);
                        let (_, bought) = state(p);
                        // Everything in the pool but what this very state says was bought.
                        assert_eq!(d.items.len(), LIMIT.min(STEPS + 2 - bought), "{what}: {:?}", d.items);
                        for k in 1..=bought {
                            let item = format!("p{k}");
                            assert!(d.items.iter().all(|i| i.id != item), "{what}: offers bought {item}");
                        }
                        if reads % 16 == 0 {
                            for (i, expression) in MONOTONE.iter().enumerate() {
                                let n = size(rules, index, expression);
                                assert!(
                                    n >= sizes[i],
                                    "reader {r}: size of `{expression}` went down from {} to {n}",
                                    sizes[i]
                                );
                                assert!(n <= 2 * LADDER_VISITORS as u64, "{expression}: {n}");
                                sizes[i] = n;
                            }
                        }
                        reads += 1;
                    }
                    (reads, climbs)
                })
            })
            .collect();
        readers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("ladder readers (reads, climbs observed): {observed:?}");

    // Exact final values.
    let n = LADDER_VISITORS as u64;
    for v in 0..LADDER_VISITORS {
        let d = decide_at(&rules, &index, &ledger, &format!("v{v}"));
        assert_eq!(d.banner, Some("s10"), "v{v}");
        let items: Vec<&str> = d.items.iter().map(|p| p.id).collect();
        assert_eq!(items, ["x1", "x2"], "v{v}");
        let d = decide_at(&rules, &index, &ledger, &format!("u{v}"));
        assert_eq!(d.banner, Some("s0"), "u{v}");
    }
    for (expression, want) in [
        ("member_tier >= 3", n),
        ("member_tier == 5", n),
        ("member_tier == 4", 0),
        ("purchase_count(30d) == 5", n),
        ("spend(30d) == 50", n),
        ("purchased(30d)", n),
        ("purchased(1d, item=\"p5\")", n),
        ("gold and buyer", n),
        ("tagged", n),
        ("viewed(30d) or purchased(30d)", 2 * n),
        ("not gold", n),
        ("true", 2 * n),
    ] {
        assert_eq!(size(&rules, &index, expression), want, "{expression}");
    }
}

// ------------------------------------------------- convergence

const MIX_VISITORS: usize = 24;
const MIX_EVENTS: usize = 400;

/// A mixed stream: every action, few items and categories, tag/untag and
/// member events on a handful of timestamps (so ties are common), purchases
/// with unique ids or none (and then a unique `ts`).
fn mixed_events(seed: u64) -> Vec<Fields<'static>> {
    let mut rng = SplitMix64::new(seed);
    let actions = ["view", "cart", "favorite", "purchase", "tag", "untag", "member"];
    (0..MIX_EVENTS)
        .map(|i| {
            let visitor = format!("m{}", rng.index(MIX_VISITORS));
            let action = actions[rng.index(actions.len())];
            // Spread over 10 days, unique to the millisecond.
            let ts = NOW - rng.index(10 * 24) as i64 * HOUR + rng.index(3_600) as i64 * 1000 + i as i64;
            let mut f = event(&visitor, action, ts);
            match action {
                "tag" | "untag" => {
                    f.tag = Some(format!("t{}", rng.index(2)).into());
                    f.ts = Some(NOW - rng.index(3) as i64 * HOUR);
                }
                "member" => {
                    f.tier = Some(rng.index(6) as i64);
                    f.ts = Some(NOW - rng.index(3) as i64 * HOUR);
                }
                _ => {
                    f.item = Some(format!("i{}", rng.index(6)).into());
                    if rng.index(4) > 0 {
                        f.category = Some(format!("c{}", rng.index(2)).into());
                    }
                    if action == "purchase" {
                        f.price = Some(rng.index(40) as f64 / 2.0);
                        f.quantity = Some(1 + rng.index(3) as i64);
                        if rng.index(2) == 0 {
                            f.id = Some(format!("o{i}").into());
                        }
                    }
                }
            }
            f
        })
        .collect()
}

const MIX_RULES: &str = r#"shop: s
audiences:
  tagged: tag("t0") and not tag("t1")
  gold: member_tier >= 3
  two: member_tier == 2
  buyer: purchase_count(10d) >= 2 or spend(10d) > 30
  recent: visited(6h, category="c0") or carted(2d, item="i1")
  fav: favorited(3d) and not purchased(3d)
  lapsed: purchased(10d) and not purchased(2d)
banners:
  - when: gold and tagged
    banner: gold-tagged
  - when: buyer
    banner: buyer
  - when: recent or two
    banner: recent
  - banner: default
items:
  limit: 4
  exclude_purchased: 2d
  pools:
    - when: fav
      items: [i0, i1, i2]
    - items: [i0, i1, i2, i3, i4, i5]
"#;

const MIX_SIZES: [&str; 10] = [
    "tagged",
    "gold",
    "two",
    "buyer",
    "recent",
    "fav",
    "lapsed",
    "not tagged and member_tier < 5",
    "visited(1h) or viewed(26h, item=\"i3\") or purchase_count(1d) == 1",
    "true",
];

#[test]
fn concurrent_writers_converge_to_the_sequential_state() {
    let rules = RuleSet::load(MIX_RULES).unwrap();
    let ledger = MemoryLedger::new();
    for seed in 1..=3u64 {
        let events = mixed_events(seed);

        // One thread, each event once, in order.
        let sequential = Index::new();
        for f in &events {
            apply(&sequential, f);
        }

        // Three writers, each delivering the whole stream plus some copies,
        // each in its own order, while two readers decide and size.
        let concurrent = Index::new();
        const WRITERS: usize = 3;
        const MIX_READERS: usize = 2;
        let done = AtomicUsize::new(0);
        let start = Barrier::new(WRITERS + MIX_READERS);
        thread::scope(|s| {
            for w in 0..WRITERS {
                let mut rng = SplitMix64::new(seed * 100 + w as u64);
                let mut mine: Vec<&Fields<'static>> = events.iter().collect();
                for _ in 0..MIX_EVENTS / 4 {
                    mine.push(&events[rng.index(events.len())]);
                }
                rng.shuffle(&mut mine);
                let (concurrent, start, done) = (&concurrent, &start, &done);
                s.spawn(move || {
                    start.wait();
                    for (i, f) in mine.into_iter().enumerate() {
                        apply(concurrent, f);
                        if i % 8 == 0 {
                            thread::yield_now();
                        }
                    }
                    done.fetch_add(1, Ordering::AcqRel);
                });
            }
            for r in 0..MIX_READERS {
                let (rules, concurrent, ledger, start, done) = (&rules, &concurrent, &ledger, &start, &done);
                s.spawn(move || {
                    let mut rng = SplitMix64::new(seed * 1000 + r as u64);
                    start.wait();
                    let mut reads = 0;
                    while reads < MAX_READS && (reads < MIN_READS || done.load(Ordering::Acquire) < WRITERS) {
                        let visitor = format!("m{}", rng.index(MIX_VISITORS));
                        let d = decide_at(rules, concurrent, ledger, &visitor);
                        assert!(d.banner.is_some(), "{visitor}: no banner despite the fallback");
                        assert_distinct(&d, 4, &format!("mixed reader {r}, {visitor}"));
                        if reads % 32 == 0 {
                            let known = u64::from(concurrent.shop(SHOP).map_or(0, |s| s.visitor_count()));
                            for expression in MIX_SIZES {
                                let n = size(rules, concurrent, expression);
                                // Visitors only ever become known: a size read
                                // after `known` is bounded by the total only.
                                assert!(n <= MIX_VISITORS as u64, "{expression}: {n} (known before: {known})");
                            }
                        }
                        reads += 1;
                    }
                });
            }
        });

        // Now indistinguishable from the sequential index.
        for expression in MIX_SIZES {
            assert_eq!(
                size(&rules, &concurrent, expression),
                size(&rules, &sequential, expression),
                "seed {seed}: size of `{expression}`"
            );
        }
        for v in 0..MIX_VISITORS {
            let visitor = format!("m{v}");
            let got = decide_at(&rules, &concurrent, &ledger, &visitor);
            let want = decide_at(&rules, &sequential, &ledger, &visitor);
            let what = format!("seed {seed}, {visitor}");
            assert_eq!(got.banner, want.banner, "{what}");
            assert_eq!(got.items, want.items, "{what}");
            assert_eq!(
                got.explanation.map(|x| x.audiences),
                want.explanation.map(|x| x.audiences),
                "{what}"
            );
        }
    }
}
