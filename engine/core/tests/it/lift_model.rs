//! The lift report against a plain recomputation, and on synthetic shops
//! with a known effect.
//!
//! * Model: random decisions (exposures with banners, benefits and
//!   held-out entries, applied out of order and some twice), random
//!   purchases (some redelivered) and random queries (id or all, window,
//!   `[from, to)`); the report equals a recomputation from the same raw
//!   events written from `docs/measurement.md`: visitor counts, conversions,
//!   rates and spend exactly (prices are whole, so sums are exact), lift and
//!   interval by the documented formulas.
//! * Known effect: 20,000 visitors decided by `decide` under a 50% holdout,
//!   treated visitors converting with probability 12%, control 8% (fixed
//!   seed): the interval contains the true 0.04 and excludes 0.
//! * A/A: both groups convert at 10%: the interval contains 0.

use std::collections::BTreeMap;

use vitrine_core::eval::decide::Slot;
use vitrine_core::event::Fields;
use vitrine_core::hash::SplitMix64;
use vitrine_core::time::{Unit, Window};
use vitrine_core::{
    decide, lift, DecideRequest, Event, Exposure, Index, LiftQuery, LiftRow, MemoryLedger, RuleSet, ShopIndex,
};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// Noon UTC, 2026-11-10.
const T0: i64 = 20_767 * DAY + 12 * HOUR;
const SHOP: &str = "s";

const RULES: &str = "shop: s
banners:
  - banner: gold
    holdout: 20%
  - banner: plain
benefits:
  - id: c10
    kind: coupon
    holdout: 30%
  - id: pts
    kind: points
";

/// Entries as the model names them.
const ENTRIES: [(Slot, &str); 4] = [
    (Slot::Banner, "gold"),
    (Slot::Banner, "plain"),
    (Slot::Benefit, "c10"),
    (Slot::Benefit, "pts"),
];

#[derive(Debug, Clone)]
struct Decision {
    ts: i64,
    visitor: usize,
    banner: Option<&'static str>,
    benefit: Option<&'static str>,
    held_out: Vec<(Slot, &'static str)>,
}

#[derive(Debug, Clone)]
struct Purchase {
    ts: i64,
    visitor: usize,
    amount: u32,
    id: String,
}

fn purchase_event(p: &Purchase) -> Event<'static> {
    Event::validate(Fields {
        shop: Some(SHOP.into()),
        visitor: Some(format!("v{}", p.visitor).into()),
        action: Some("purchase".into()),
        item: Some("sku".into()),
        price: Some(f64::from(p.amount)),
        ts: Some(p.ts),
        id: Some(p.id.clone().into()),
        ..Fields::default()
    })
    .unwrap()
}

fn apply_decision(shop: &ShopIndex, d: &Decision) {
    let visitor = format!("v{}", d.visitor);
    shop.apply_exposure(&Exposure {
        ts_ms: d.ts,
        visitor: &visitor,
        banner: d.banner,
        benefit: d.benefit,
        held_out: &d.held_out,
    });
}

/// The report recomputed from the raw events, as the docs define it.
fn model(
    decisions: &[Decision],
    purchases: &[Purchase],
    entries: &[(Slot, &str)],
    window: Window,
    from: i64,
    to: i64,
) -> Vec<LiftRow> {
    // An exposure is in range when its hour starts in [from, to).
    let in_range = |ts: i64| {
        let start = ts - ts.rem_euclid(HOUR);
        start >= from && (to == 0 || start < to)
    };
    // Purchases de-duplicated by id.
    let mut unique: BTreeMap<&str, &Purchase> = BTreeMap::new();
    for p in purchases {
        unique.entry(&p.id).or_insert(p);
    }
    entries
        .iter()
        .map(|&(slot, id)| {
            // Per visitor: (hour of first exposure, held out?), offered first within an hour.
            let mut first: BTreeMap<usize, (i64, bool)> = BTreeMap::new();
            for d in decisions.iter().filter(|d| in_range(d.ts)) {
                let offered = match slot {
                    Slot::Banner => d.banner == Some(id),
                    _ => d.benefit == Some(id),
                };
                let held = d.held_out.contains(&(slot, id));
                let groups = [offered.then_some(false), held.then_some(true)];
                for group in groups.into_iter().flatten() {
                    let key = (d.ts.div_euclid(HOUR), group);
                    let e = first.entry(d.visitor).or_insert(key);
                    *e = (*e).min(key);
                }
            }
            let mut n = [0u64; 2];
            let mut converted = [0u64; 2];
            let mut spend = [0u64; 2];
            for (visitor, (hour, held)) in first {
                let g = usize::from(held);
                n[g] += 1;
                let window_hours = window.hours() as i64;
                let bought: Vec<u32> = unique
                    .values()
                    .filter(|p| {
                        let h = p.ts.div_euclid(HOUR);
                        p.visitor == visitor && h >= hour && h < hour + window_hours
                    })
                    .map(|p| p.amount)
                    .collect();
                converted[g] += u64::from(!bought.is_empty());
                spend[g] += bought.iter().map(|&a| u64::from(a)).sum::<u64>();
            }
            let rate = |g: usize| {
                if n[g] == 0 {
                    0.0
                } else {
                    converted[g] as f64 / n[g] as f64
                }
            };
            let per = |g: usize| if n[g] == 0 { 0.0 } else { spend[g] as f64 / n[g] as f64 };
            let (p1, p2) = (rate(0), rate(1));
            // Agresti-Caffo: one conversion and one non-conversion added to each group.
            let (ci_low, ci_high) = if n[0] == 0 || n[1] == 0 {
                (-1.0, 1.0)
            } else {
                let q = |g: usize| (converted[g] as f64 + 1.0) / (n[g] as f64 + 2.0);
                let (q1, q2) = (q(0), q(1));
                let se = (q1 * (1.0 - q1) / (n[0] as f64 + 2.0) + q2 * (1.0 - q2) / (n[1] as f64 + 2.0)).sqrt();
                ((q1 - q2 - 1.96 * se).max(-1.0), (q1 - q2 + 1.96 * se).min(1.0))
            };
            LiftRow {
                slot,
                id: id.to_string(),
                treated: n[0],
                control: n[1],
                treated_converted: converted[0],
                control_converted: converted[1],
                treated_rate: p1,
                control_rate: p2,
                lift: p1 - p2,
                ci_low,
                ci_high,
                treated_spend: per(0),
                control_spend: per(1),
            }
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12
}

fn same(got: &LiftRow, want: &LiftRow) -> bool {
    (
        got.slot,
        &got.id,
        got.treated,
        got.control,
        got.treated_converted,
        got.control_converted,
    ) == (
        want.slot,
        &want.id,
        want.treated,
        want.control,
        want.treated_converted,
        want.control_converted,
    ) && got.treated_rate == want.treated_rate
        && got.control_rate == want.control_rate
        && got.treated_spend == want.treated_spend
        && got.control_spend == want.control_spend
        && close(got.lift, want.lift)
        && close(got.ci_low, want.ci_low)
        && close(got.ci_high, want.ci_high)
}

#[test]
fn the_report_equals_a_plain_recomputation() {
    let rules = RuleSet::load(RULES).unwrap();
    for seed in 0..60u64 {
        let mut rng = SplitMix64::new(seed);
        let visitors = 1 + rng.below(12) as usize;
        let span = 10 * DAY;
        let decisions: Vec<Decision> = (0..rng.below(60))
            .map(|_| {
                let pick = |rng: &mut SplitMix64, of: &[&'static str]| {
                    let i = rng.below(of.len() as u64 + 1) as usize;
                    of.get(i).copied()
                };
                let banner = pick(&mut rng, &["gold", "plain"]);
                let benefit = pick(&mut rng, &["c10", "pts"]);
                let held_out = (0..rng.below(3)).map(|_| ENTRIES[rng.below(4) as usize]).collect();
                Decision {
                    ts: T0 + rng.below(span as u64) as i64,
                    visitor: rng.below(visitors as u64) as usize,
                    banner,
                    benefit,
                    held_out,
                }
            })
            .collect();
        let purchases: Vec<Purchase> = (0..rng.below(40))
            .map(|i| Purchase {
                ts: T0 - DAY + rng.below((span + 9 * DAY) as u64) as i64,
                visitor: rng.below(visitors as u64) as usize,
                amount: 1 + rng.below(100) as u32,
                id: format!("p{i}"),
            })
            .collect();
        // Applied shuffled, some twice.
        let index = Index::new();
        let shop = index.shop_or_create(SHOP);
        let mut order: Vec<usize> = (0..decisions.len() + purchases.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for &i in &order {
            for _ in 0..1 + rng.below(2) {
                match i.checked_sub(decisions.len()) {
                    None => apply_decision(&shop, &decisions[i]),
                    Some(p) => shop.apply(&purchase_event(&purchases[p])),
                }
            }
        }
        let restored = vitrine_core::snapshot::decode(&vitrine_core::snapshot::encode(&index, b"")).unwrap();
        for _ in 0..8 {
            let window = match rng.below(3) {
                0 => Window {
                    amount: 1 + rng.below(48) as u32,
                    unit: Unit::Hours,
                },
                _ => Window {
                    amount: 1 + rng.below(10) as u32,
                    unit: Unit::Days,
                },
            };
            let bound = |rng: &mut SplitMix64| match rng.below(3) {
                0 => 0,
                _ => T0 + rng.below(span as u64) as i64,
            };
            let (mut from, mut to) = (bound(&mut rng), bound(&mut rng));
            if to != 0 && from > to {
                std::mem::swap(&mut from, &mut to);
            }
            let id = match rng.below(5) {
                4 => None,
                i => Some(ENTRIES[i as usize].1),
            };
            let q = LiftQuery {
                id,
                window,
                from_ms: from,
                to_ms: to,
            };
            let entries: Vec<(Slot, &str)> = match id {
                Some(id) => ENTRIES.iter().copied().filter(|e| e.1 == id).collect(),
                None => vec![ENTRIES[0], ENTRIES[2]],
            };
            let want = model(&decisions, &purchases, &entries, window, from, to);
            for index in [&index, &restored.index] {
                let got = lift(&rules, index.shop(SHOP).as_deref(), &q).unwrap();
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert!(same(g, w), "seed {seed}, {q:?}\n got {g:?}\nwant {w:?}");
                }
            }
        }
    }
}

/// Decides for `n` visitors under a 50% holdout of `c10`, logs each
/// decision as an exposure at `T0`, and has each visitor buy within the
/// week with probability `treated` or `control` (in thousandths).
fn experiment(seed: u64, n: usize, treated: u64, control: u64) -> LiftRow {
    let rules = RuleSet::load(
        "shop: s\nbenefits:\n  - id: c10\n    kind: coupon\n    holdout: 50%\n  - id: pts\n    kind: points\n",
    )
    .unwrap();
    let shop = ShopIndex::new(SHOP);
    let ledger = MemoryLedger::new();
    let mut rng = SplitMix64::new(seed);
    for v in 0..n {
        let visitor = format!("v{v}");
        let ts = T0 + rng.below(DAY as u64) as i64;
        let d = decide(
            &rules,
            Some(&shop),
            &ledger,
            &DecideRequest {
                visitor: &visitor,
                now_ms: ts,
                ..DecideRequest::default()
            },
        );
        let held: Vec<(Slot, &str)> = d.held_out.clone();
        assert!(shop.apply_exposure(&Exposure {
            ts_ms: ts,
            visitor: &visitor,
            banner: d.banner,
            benefit: d.benefit.map(|b| &*b.id),
            held_out: &held,
        }));
        let p = if held.is_empty() { treated } else { control };
        if rng.below(1_000) < p {
            shop.apply(&purchase_event(&Purchase {
                ts: ts + rng.below(6 * DAY as u64) as i64,
                visitor: v,
                amount: 50,
                id: format!("p{v}"),
            }));
        }
    }
    let week = Window {
        amount: 7,
        unit: Unit::Days,
    };
    let rows = lift(
        &rules,
        Some(&shop),
        &LiftQuery {
            id: None,
            window: week,
            from_ms: 0,
            to_ms: 0,
        },
    )
    .unwrap();
    assert_eq!(rows.len(), 1);
    rows[0].clone()
}

#[test]
fn a_known_effect_is_found() {
    let row = experiment(7, 20_000, 120, 80);
    assert_eq!(row.treated + row.control, 20_000);
    assert!(
        row.treated.abs_diff(row.control) < 600,
        "a 50% holdout splits evenly: {row:?}"
    );
    assert!(row.ci_low < 0.04 && 0.04 < row.ci_high, "{row:?}");
    assert!(row.ci_low > 0.0, "{row:?}");
    assert!((row.treated_spend - 50.0 * row.treated_rate).abs() < 1e-9);
}

#[test]
fn an_aa_test_finds_nothing() {
    let row = experiment(11, 20_000, 100, 100);
    assert!(row.ci_low < 0.0 && 0.0 < row.ci_high, "{row:?}");
}
