//! `offered(...)` and `claimed(...)` against a brute-force check.
//!
//! Random decisions (exposures, some applied twice and out of order) and
//! random grants in a claim ledger; for a set of expressions over every
//! filter (`benefit=`, `kind=`, `banner=`, none) and both window units,
//! `decide` (its explanation lists every audience the visitor is in) and
//! `size_of` (by audience name and by expression text) agree with a check
//! written from `rules/README.md` ("Offers and claims") over the raw
//! records, before and after a snapshot round trip. Visitors who only
//! claimed are unknown to the index: `decide` still sees their grants,
//! sizes count known visitors only.

use std::collections::BTreeSet;

use vitrine_core::claims::LedgerClaim;
use vitrine_core::eval::decide::Slot;
use vitrine_core::hash::SplitMix64;
use vitrine_core::rules::expr::{self, Expr, OfferFilter};
use vitrine_core::time::{Unit, Window};
use vitrine_core::{decide, size_of, ClaimLedger, DecideRequest, Exposure, Index, MemoryLedger, RuleSet};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// Noon UTC, 2026-11-10.
const T0: i64 = 20_767 * DAY + 12 * HOUR;
const SHOP: &str = "s";
const VISITORS: usize = 8;

const BENEFITS: [(&str, &str); 4] = [
    ("c10", "coupon"),
    ("c20", "coupon"),
    ("pts", "points"),
    ("tkt", "ticket"),
];

const EXPRESSIONS: &[&str] = &[
    "offered(3d)",
    "offered(5h)",
    r#"offered(2d, benefit="c10")"#,
    r#"offered(7d, kind="coupon")"#,
    r#"offered(30h, banner="gold")"#,
    r#"offered(4d, kind="nothing")"#,
    r#"offered(9d, benefit="unknown")"#,
    "claimed(3d)",
    r#"claimed(10h, kind="coupon")"#,
    r#"claimed(2d, benefit="pts")"#,
    r#"not offered(6d, kind="coupon") and claimed(9d)"#,
    r#"offered(1d, banner="plain") or claimed(20h, kind="ticket")"#,
];

#[derive(Debug, Clone)]
struct Decision {
    ts: i64,
    visitor: usize,
    banner: &'static str,
    benefit: Option<&'static str>,
    held_out: Vec<(Slot, &'static str)>,
}

#[derive(Debug, Clone)]
struct Grant {
    ts: i64,
    visitor: usize,
    benefit: &'static str,
}

fn rule_file() -> String {
    let mut file = format!("shop: {SHOP}\naudiences:\n");
    for (i, text) in EXPRESSIONS.iter().enumerate() {
        file += &format!("  a{i}: '{text}'\n");
    }
    file += "benefits:\n";
    for (id, kind) in BENEFITS {
        file += &format!("  - id: {id}\n    kind: {kind}\n    when: false\n");
    }
    file
}

/// The window test of `rules/README.md`: `Nh` is the current hour and the
/// N - 1 before it, `Nd` today (UTC) and the N - 1 days before it.
fn in_window(window: Window, now: i64, ts: i64) -> bool {
    let (hour, now_hour) = (ts.div_euclid(HOUR), now.div_euclid(HOUR));
    let n = i64::from(window.amount);
    match window.unit {
        Unit::Hours => now_hour - n < hour && hour <= now_hour,
        Unit::Days => {
            let (day, today) = (hour.div_euclid(24), now_hour.div_euclid(24));
            today - n < day && day <= today
        }
    }
}

fn kind_of(benefit: &str) -> Option<&'static str> {
    BENEFITS.iter().find(|(id, _)| *id == benefit).map(|(_, k)| *k)
}

fn benefit_matches(filter: &Option<OfferFilter>, benefit: &str) -> bool {
    match filter {
        None => true,
        Some(OfferFilter::Benefit(id)) => benefit == id,
        Some(OfferFilter::Kind(kind)) => kind_of(benefit) == Some(kind.as_str()),
        Some(OfferFilter::Banner(_)) => false,
    }
}

fn holds(e: &Expr, visitor: usize, decisions: &[Decision], grants: &[Grant], now: i64) -> bool {
    match e {
        Expr::And(xs) => xs.iter().all(|x| holds(x, visitor, decisions, grants, now)),
        Expr::Or(xs) => xs.iter().any(|x| holds(x, visitor, decisions, grants, now)),
        Expr::Not(x) => !holds(x, visitor, decisions, grants, now),
        Expr::Offered { window, filter } => decisions.iter().any(|d| {
            d.visitor == visitor
                && in_window(*window, now, d.ts)
                && match filter {
                    Some(OfferFilter::Banner(id)) => d.banner == id,
                    _ => d.benefit.is_some_and(|b| benefit_matches(filter, b)),
                }
        }),
        Expr::Claimed { window, filter } => grants
            .iter()
            .any(|g| g.visitor == visitor && in_window(*window, now, g.ts) && benefit_matches(filter, g.benefit)),
        other => panic!("not generated: {other:?}"),
    }
}

#[test]
fn offered_and_claimed_match_a_brute_force_check_in_decide_and_sizes() {
    let rules = RuleSet::load(&rule_file()).unwrap();
    let parsed: Vec<Expr> = EXPRESSIONS.iter().map(|t| expr::parse(t).unwrap()).collect();
    for seed in 0..40u64 {
        let mut rng = SplitMix64::new(seed);
        // Instants on a few days' hours, often on an hour's first
        // millisecond, so that records fall on every bound of the windows.
        let hours = 4 * 24;
        let start = T0 - 2 * DAY;
        let at = |rng: &mut SplitMix64| {
            let ms = if rng.below(2) == 0 {
                0
            } else {
                rng.below(HOUR as u64) as i64
            };
            start + rng.below(hours) as i64 * HOUR + ms
        };
        let decisions: Vec<Decision> = (0..rng.below(40))
            .map(|_| Decision {
                ts: at(&mut rng),
                // The last visitor only ever claims.
                visitor: rng.below(VISITORS as u64 - 1) as usize,
                banner: ["gold", "plain"][rng.below(2) as usize],
                benefit: [Some("c10"), Some("c20"), Some("pts"), Some("tkt"), None][rng.below(5) as usize],
                held_out: (0..rng.below(2))
                    .map(|_| (Slot::Benefit, BENEFITS[rng.below(4) as usize].0))
                    .collect(),
            })
            .collect();
        let grants: Vec<Grant> = (0..rng.below(20))
            .map(|_| Grant {
                ts: at(&mut rng),
                visitor: rng.below(VISITORS as u64) as usize,
                benefit: BENEFITS[rng.below(4) as usize].0,
            })
            .collect();
        let index = Index::new();
        let shop = index.shop_or_create(SHOP);
        let mut order: Vec<usize> = (0..decisions.len()).chain(0..decisions.len() / 3).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for i in order {
            let d = &decisions[i];
            let visitor = format!("v{}", d.visitor);
            shop.apply_exposure(&Exposure {
                ts_ms: d.ts,
                visitor: &visitor,
                banner: Some(d.banner),
                benefit: d.benefit,
                held_out: &d.held_out,
            });
        }
        let ledger = MemoryLedger::new();
        for g in &grants {
            let visitor = format!("v{}", g.visitor);
            ledger
                .claim(&LedgerClaim {
                    shop: SHOP,
                    benefit: g.benefit,
                    visitor: &visitor,
                    now_ms: g.ts,
                    claim_id: None,
                    cap: None,
                    budget: None,
                    denied: None,
                })
                .unwrap();
        }
        let known: BTreeSet<usize> = decisions.iter().map(|d| d.visitor).collect();
        let restored = vitrine_core::snapshot::decode(&vitrine_core::snapshot::encode(&index, b"")).unwrap();
        for step in 0..6 {
            let now = at(&mut rng);
            for (name, index) in [("live", &index), ("restored", &restored.index)] {
                let shop = index.shop(SHOP);
                for v in 0..VISITORS {
                    let visitor = format!("v{v}");
                    let d = decide(
                        &rules,
                        shop.as_deref(),
                        &ledger,
                        &DecideRequest {
                            visitor: &visitor,
                            now_ms: now,
                            explain: true,
                            ..DecideRequest::default()
                        },
                    );
                    let got = d.explanation.unwrap().audiences;
                    let want: Vec<String> = (0..EXPRESSIONS.len())
                        .filter(|&i| holds(&parsed[i], v, &decisions, &grants, now))
                        .map(|i| format!("a{i}"))
                        .collect();
                    assert_eq!(got, want, "seed {seed} step {step} {name} visitor {v} now {now}");
                }
                for (i, text) in EXPRESSIONS.iter().enumerate() {
                    let want = known
                        .iter()
                        .filter(|&&v| holds(&parsed[i], v, &decisions, &grants, now))
                        .count() as u64;
                    for asked in [format!("a{i}"), text.to_string()] {
                        let got = size_of(Some(&rules), shop.as_deref(), &ledger, &asked, now).unwrap();
                        assert_eq!(got, want, "seed {seed} step {step} {name} size of `{asked}` now {now}");
                    }
                }
            }
        }
    }
}

#[test]
fn kind_resolves_to_the_benefits_of_that_kind_in_the_file() {
    let rules = RuleSet::load(&rule_file()).unwrap();
    let atom = rules
        .plan
        .atoms()
        .find_map(|a| match a {
            vitrine_core::rules::plan::Atom::Offered {
                offers: vitrine_core::rules::plan::Offers::Benefits { kind: Some(k), ids },
                ..
            } if &**k == "coupon" => Some(ids.iter().map(|id| id.to_string()).collect::<Vec<_>>()),
            _ => None,
        })
        .unwrap();
    assert_eq!(atom, ["c10", "c20"]);
}
