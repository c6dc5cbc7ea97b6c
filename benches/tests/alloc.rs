//! A decision allocates nothing but its answer.
//!
//! A counting global allocator (its own test binary, so nothing else shares
//! the counters) measures `decide` for known, active and anonymous visitors,
//! with and without an explanation, over a small index and a rule file that
//! uses every kind of atom (behaviors with and without item and category
//! filters, the three metrics, tier, tag, every context key and test,
//! `days_since`, `preview_tier`, `offered`, `claimed`), banner and benefit
//! holdouts, caps and budgets, complements, pools, `exclude_purchased` and
//! the add-on. Every allocation (and reallocation) during the call must be
//! one of the returned `Decision`'s own heap blocks: its items, its
//! held-out entries and, with `explain`, the explanation's lists and strings.
//!
//! One form is left out: `claimed(WINDOW)` without a filter asks the claim
//! ledger about every benefit the shop was ever granted, and iterating the
//! ledger's `DashMap` allocates one guard per shard (dashmap's iterator);
//! `claimed(WINDOW, kind=...)` and `benefit=` look benefits up by id and
//! allocate nothing.

#![allow(clippy::expect_used)]

use std::alloc::System;
use std::collections::HashMap;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use vitrine_core::exposure::Exposure;
use vitrine_core::{
    decide, Action, ClaimLedger, Context, DecideRequest, Event, LedgerClaim, MemoryLedger, RuleSet, ShopIndex,
};

mod common;

use common::decide_counted;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// 2026-11-20T12:00:00Z.
const NOW: i64 = 1_795_176_000_000;

const RULES: &str = r#"shop: s
timezone: Asia/Shanghai
tiers:
  by: spend(30d)
  levels:
    - { tier: 1, name: silver, at: 50 }
    - { tier: 2, name: gold, at: 200 }
audiences:
  new_visitor:     not visited(30d)
  browser:         viewed(7d) and not carted(7d)
  cart_abandoner:  carted(7d) and not purchased(7d)
  loyal:           purchase_count(30d) >= 2 or spend(30d) >= 100
  big_basket:      avg_order(30d) >= 40
  vip:             member_tier >= 3
  silver_up:       preview_tier >= 1
  price_sensitive: tag("price_sensitive")
  shoes_fan:       viewed(14d, category="shoes") or favorited(30d, category="shoes")
  hot_item_fan:    viewed(3d, item="sku-1") or carted(72h, item="sku-2")
  lapsed:          days_since(purchase) >= 2 and days_since(purchase) < 30
  south:           ctx.region in ["south", "southwest"]
  on_item_page:    ctx.page == "item" and ctx.item != ""
  mobile:          ctx.device == "mobile" or ctx.channel != "email"
  big_cart:        ctx.cart_total >= 150
  campaign:        ctx.campaign == "bf"
  seen_coupon:     offered(7d, kind="coupon") or offered(7d, benefit="points-2x")
  seen_deals:      offered(3d, banner="deals") or offered(3d)
  claimed_any:     claimed(30d, kind="coupon") or claimed(30d, kind="points")
  claimed_coupon:  claimed(30d, benefit="coupon-10")
banners:
  - when: vip and south
    banner: vip-south
    holdout: 50%
  - when: cart_abandoner and on_item_page
    banner: finish-your-order
    holdout: 50%
  - when: (price_sensitive or big_basket) and not vip and (browser or seen_deals)
    banner: deals
    params: { image: "d.jpg" }
  - when: shoes_fan or hot_item_fan or lapsed or silver_up or campaign or mobile
    banner: spotlight
    holdout: 20%
  - banner: default
items:
  limit: 6
  exclude_purchased: 30d
  add_on: { threshold: 99, cart_total: ctx.cart_total }
  pools:
    - when: cart_abandoner
      items: [sku-1, sku-2, sku-3, sku-5, sku-8]
    - when: shoes_fan
      items: [sku-3, sku-4, sku-6, unknown-item]
    - when: loyal or vip or big_cart
      items: [sku-7, sku-9, sku-10]
    - items: [sku-0, sku-1, sku-2, sku-3, sku-4, sku-5, sku-6, sku-7, sku-8, sku-9, sku-11]
  complements:
    sku-1: [sku-1, sku-5, sku-12, sku-13]
    sku-2: [sku-6, sku-14]
benefits:
  - id: vip-ticket
    when: vip
    kind: ticket
    budget: 5000
  - id: coupon-10
    when: (cart_abandoner or browser) and not claimed_coupon
    kind: coupon
    cap: { per_visitor: 1, window: 30d }
    holdout: 30%
  - id: win-back
    when: lapsed and not seen_coupon and not claimed_any
    kind: coupon
    cap: { per_visitor: 2, window: 7d }
    budget: 100000
    holdout: 30%
  - id: points-2x
    when: loyal and not price_sensitive
    kind: points
"#;

const VISITORS: usize = 300;
const ITEMS: usize = 16;
const CATEGORIES: [&str; 3] = ["shoes", "bags", "hats"];

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

fn visitor(i: usize) -> String {
    format!("v{i}")
}

/// Visitor `i` has `i % 40` behavior events over the last 35 days (visitor 0
/// none: a known id without history is interned by an exposure below), tags,
/// member tiers, purchases, decisions and grants.
fn world() -> (ShopIndex, MemoryLedger) {
    let shop = ShopIndex::with_zone("s", jiff_zone());
    let mut rng = Rng(7);
    for i in 1..VISITORS {
        let v = visitor(i);
        for _ in 0..(i % 40) {
            let action = [
                Action::View,
                Action::View,
                Action::View,
                Action::Cart,
                Action::Favorite,
                Action::Purchase,
            ][rng.below(6) as usize];
            let item = rng.below(ITEMS as u64) as usize;
            let ts = NOW - rng.below(35 * DAY as u64) as i64;
            let item_name = format!("sku-{item}");
            shop.apply(&Event {
                item: Some(item_name.into()),
                category: Some(CATEGORIES[item % CATEGORIES.len()].into()),
                price: if action == Action::Purchase {
                    10.0 + item as f64 * 9.0
                } else {
                    5.0 + item as f64 * 9.0
                },
                id: (action == Action::Purchase).then(|| format!("o-{i}-{ts}").into()),
                ..Event::new("s", v.clone(), action, ts)
            });
        }
        if i % 3 == 0 {
            shop.apply(&Event {
                tag: Some("price_sensitive".into()),
                ..Event::new("s", v.clone(), Action::Tag, NOW - 5 * DAY)
            });
        }
        if i % 5 == 0 {
            shop.apply(&Event {
                tier: (i % 6) as u32,
                ..Event::new("s", v.clone(), Action::Member, NOW - 9 * DAY)
            });
        }
    }
    let ledger = MemoryLedger::new();
    for i in (0..VISITORS).step_by(4) {
        let v = visitor(i);
        let (banner, benefit) = match i % 3 {
            0 => ("deals", Some("coupon-10")),
            1 => ("default", Some("points-2x")),
            _ => ("spotlight", None),
        };
        let held_out: &[(vitrine_core::rules::Slot, &str)] = if i % 8 == 0 {
            &[(vitrine_core::rules::Slot::Benefit, "win-back")]
        } else {
            &[]
        };
        shop.apply_exposure(&Exposure {
            ts_ms: NOW - (i as i64 % 9) * DAY,
            visitor: &v,
            banner: Some(banner),
            benefit,
            held_out,
        });
        if i % 12 == 0 {
            let claim = LedgerClaim {
                shop: "s",
                benefit: if i % 24 == 0 { "coupon-10" } else { "win-back" },
                visitor: &v,
                now_ms: NOW - (i as i64 % 20) * DAY,
                claim_id: None,
                cap: None,
                budget: None,
                denied: None,
            };
            ledger.claim(&claim).expect("a memory ledger claim");
        }
    }
    (shop, ledger)
}

fn jiff_zone() -> vitrine_core::time::Zone {
    RuleSet::load(RULES).expect("the rule file loads").zone.clone()
}

/// The counters are the process's: the tests of this binary take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_decision_allocates_only_its_answer() {
    let _turn = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let rules = RuleSet::load(RULES).expect("the rule file loads");
    let (shop, ledger) = world();
    let attributes: HashMap<String, String> = [("campaign".to_string(), "bf".to_string())].into();
    let cart_totals = ["", "20", "150", "98.5", "not a number"];
    let pages = ["home", "item", "cart"];
    let regions = ["south", "north", ""];
    // Active visitors (long histories) come up as often as quiet ones: i % 40 events.
    let names: Vec<String> = (0..VISITORS + 20).map(visitor).collect();
    let mut rng = Rng(11);
    let mut checked = 0;
    let mut with_items = 0;
    let mut with_held = 0;
    let mut failures = Vec::new();
    for round in 0..2_000 {
        let who: &str = match round % 10 {
            0 => "",
            // Unknown to the index: decided as a visitor without history.
            1 => &names[VISITORS + round % 20],
            _ => &names[rng.below(VISITORS as u64) as usize],
        };
        let cart_total = cart_totals[rng.below(cart_totals.len() as u64) as usize];
        let mut extra = attributes.clone();
        extra.insert("cart_total".to_string(), cart_total.to_string());
        let page = pages[rng.below(3) as usize];
        let item = format!("sku-{}", rng.below(ITEMS as u64 + 2));
        let req = DecideRequest {
            visitor: who,
            context: Context {
                page,
                item: if page == "item" { &item } else { "" },
                region: regions[rng.below(3) as usize],
                device: if round % 2 == 0 { "mobile" } else { "desktop" },
                channel: if round % 3 == 0 { "email" } else { "search" },
                attributes: (round % 4 != 0).then_some(&extra),
            },
            item_limit: [0, 3, 40][round % 3] as u32,
            explain: round % 2 == 1,
            now_ms: NOW - (round as i64 % 5) * HOUR,
        };
        // Once first, so one-time lazy set-up (if any) is not counted.
        drop(decide(&rules, Some(&shop), &ledger, &req));
        let (d, made, owned) = decide_counted(GLOBAL, &rules, &shop, &ledger, &req);
        if made != owned && failures.len() < 5 {
            failures.push(format!(
                "visitor {who:?} explain {} page {page}: {made} allocations for {owned} owned blocks ({} items, {} held out)",
                req.explain,
                d.items.len(),
                d.held_out.len(),
            ));
        }
        checked += 1;
        with_items += usize::from(!d.items.is_empty());
        with_held += usize::from(!d.held_out.is_empty());
        drop(d);
    }
    assert!(
        failures.is_empty(),
        "decisions allocated beyond their answer:\n{}",
        failures.join("\n")
    );
    // The inputs reached the paths they are meant to.
    assert_eq!(checked, 2_000);
    assert!(with_items > 1_000, "{with_items} decisions with items");
    assert!(with_held > 50, "{with_held} decisions with a holdout");
}

/// Heavy visitors: 17 to 2,000 carts, favorites and purchases within 30
/// days (the signals' hash table, up to `SCRATCH_KEEP` slots, which a
/// thread keeps). A visitor's second decision on a thread allocates only
/// its answer, also after a light visitor's and another heavy one's in
/// between: the table grows once, then is reused. (Past 2,048 entries the
/// table outgrows what a thread keeps, `SCRATCH_KEEP`, and is given back
/// after each decision: a 5,000-entry visitor's decisions made 4 blocks
/// beyond their answer, by design.)
#[test]
fn a_heavy_visitors_second_decision_allocates_only_its_answer() {
    let _turn = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    const SIZES: [usize; 5] = [17, 100, 500, 1_000, 2_000];
    let rules = RuleSet::load(RULES).expect("the rule file loads");
    let shop = ShopIndex::with_zone("s", jiff_zone());
    let actions = [Action::Cart, Action::Favorite, Action::Purchase];
    for (h, &n) in SIZES.iter().enumerate() {
        for k in 0..n {
            let action = actions[k % 3];
            // One entry an hour, over the last 29 days; item ids past the
            // rule file's pools too.
            let ts = NOW - (k as i64 % (29 * 24)) * HOUR - (k as i64 / (29 * 24)) * 60_000;
            shop.apply(&Event {
                item: Some(format!("sku-{}", k % 3_000).into()),
                category: Some(CATEGORIES[k % CATEGORIES.len()].into()),
                price: 10.0,
                id: (action == Action::Purchase).then(|| format!("o-heavy{h}-{k}").into()),
                ..Event::new("s", format!("heavy{h}"), action, ts)
            });
        }
    }
    shop.apply(&Event {
        item: Some("sku-1".into()),
        ..Event::new("s", "light", Action::Cart, NOW - DAY)
    });
    let ledger = MemoryLedger::new();
    let names: Vec<String> = (0..SIZES.len()).map(|h| format!("heavy{h}")).collect();
    let request = |who: &'static str, explain: bool| DecideRequest {
        visitor: who,
        context: Context::default(),
        item_limit: 40,
        explain,
        now_ms: NOW,
    };
    let names: Vec<&'static str> = names.into_iter().map(|n| &*Box::leak(n.into_boxed_str())).collect();
    let mut failures = Vec::new();
    for explain in [false, true] {
        // The first decisions grow the scratch, the heaviest to its most.
        for &who in names.iter().chain(&["light"]) {
            drop(decide(&rules, Some(&shop), &ledger, &request(who, explain)));
        }
        // Each heavy visitor again, a light one and another heavy one between.
        for (h, &heavy) in names.iter().enumerate() {
            for who in [heavy, "light", names[(h + 1) % names.len()], heavy] {
                let req = request(who, explain);
                let (d, made, owned) = decide_counted(GLOBAL, &rules, &shop, &ledger, &req);
                if made != owned {
                    failures.push(format!(
                        "{who} after {heavy} (explain {explain}): {made} allocations for {owned} owned blocks"
                    ));
                }
                assert!(!d.items.is_empty(), "{who}: no items");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "decisions allocated beyond their answer:\n{}",
        failures.join("\n")
    );
}
