//! A decision that ranks many pool candidates allocates only its answer.
//!
//! Rule files whose pools name more than 256 and up to 4,000 items (the
//! scratch keeps 4,096 ranked candidates between decisions, see
//! `SCRATCH_KEEP` in `engine/core/src/eval/decide.rs`), most of them of
//! equal strength, so that the rank key's order of appearance decides:
//! with a counting global allocator (its own test binary), every
//! allocation during `decide` must be one of the answer's own blocks (its
//! items; with `explain`, the explanation's lists and strings).

#![allow(clippy::expect_used)]

use std::alloc::System;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use vitrine_core::{decide, Action, Context, DecideRequest, Event, MemoryLedger, RuleSet, ShopIndex};

mod common;

use common::decide_counted;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const HOUR: i64 = 3_600_000;
/// Noon UTC, 2026-11-10.
const NOW: i64 = 20_767 * 24 * HOUR + 12 * HOUR;

fn item(i: usize) -> String {
    format!("i-{i}")
}

/// Items `0..n` in one pool, the last half again in a second one.
fn rules(n: usize) -> RuleSet {
    let list = |ids: std::ops::Range<usize>| ids.map(item).collect::<Vec<_>>().join(", ");
    let text = format!(
        "shop: s\nitems:\n  limit: 100\n  pools:\n    - items: [{}]\n    - items: [{}]\n",
        list(0..n),
        list(n / 2..n)
    );
    RuleSet::load(&text).expect("the rule file loads")
}

/// Items bought once or twice by others (popularity 1 or 2, or none);
/// visitor `me` carted and favorited a few far down the list.
fn shop(n: usize) -> ShopIndex {
    let shop = ShopIndex::new("s");
    for i in 0..n {
        for k in 0..i % 3 {
            shop.apply(&Event {
                item: Some(item(i).into()),
                price: 10.0,
                id: Some(format!("o-{i}-{k}").into()),
                ..Event::new("s", format!("other-{k}"), Action::Purchase, NOW - HOUR)
            });
        }
    }
    for (i, action) in [(n - 1, Action::Cart), (n - 2, Action::Favorite), (7, Action::View)] {
        shop.apply(&Event {
            item: Some(item(i).into()),
            ..Event::new("s", "me", action, NOW - 2 * HOUR)
        });
    }
    shop
}

#[test]
fn ranking_many_equal_candidates_allocates_only_the_answer() {
    let ledger = MemoryLedger::new();
    let mut failures = Vec::new();
    for n in [300, 4_000] {
        // n distinct candidates: the second pool's items appear twice and
        // are ranked once.
        let rules = rules(n);
        let shop = shop(n);
        for (visitor, limit, explain) in [("me", 100, false), ("me", 3, true), ("new", 100, false), ("", 40, true)] {
            let req = DecideRequest {
                visitor,
                context: Context::default(),
                item_limit: limit,
                explain,
                now_ms: NOW,
            };
            drop(decide(&rules, Some(&shop), &ledger, &req));
            let (d, made, owned) = decide_counted(GLOBAL, &rules, &shop, &ledger, &req);
            assert_eq!(d.items.len(), limit as usize, "{n} items: the pools fill the answer");
            if made != owned {
                failures.push(format!(
                    "{n} items, visitor {visitor:?}, limit {limit}, explain {explain}: {made} allocations for {owned} owned blocks"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
