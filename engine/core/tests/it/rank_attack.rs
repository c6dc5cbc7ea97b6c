//! The packed rank key (`eval/decide.rs`, `rank_key`) against a plain
//! stable sort: rule files whose pools name more than 256 and more than
//! 4096 items, most of them with equal strengths (popularity 1 or 2, or
//! none), a few in the visitor's cart or favorites far down the lists, and
//! pools that overlap (an item appearing twice is ranked once, where it
//! first appears). The picks must be the first `limit` of the candidates
//! stably sorted by (reason, strongest first), the candidates judged as
//! `eval/items.rs` says: bought ones by popularity only, then carted,
//! favorited, popular (distinct purchases over 7 days), else pool.

use std::collections::HashSet;

use vitrine_core::eval::items::ItemReason;
use vitrine_core::{decide, Action, Context, DecideRequest, Event, MemoryLedger, RuleSet, ShopIndex};

const HOUR: i64 = 3_600_000;
/// Noon UTC, 2026-11-10.
const NOW: i64 = 20_767 * 24 * HOUR + 12 * HOUR;
const ME: &str = "me";

fn item(i: usize) -> String {
    format!("i-{i}")
}

/// Distinct purchases of item `i` by others (today): 0, 1 or 2.
fn popularity(i: usize) -> u32 {
    (i % 3) as u32
}

/// A rule file with one pool of items `0..n` and, when `n > 8`, a second
/// pool over the last half of them and `n / 4` more; the candidates in
/// order of first appearance.
fn rules(n: usize) -> (String, Vec<usize>) {
    let first: Vec<usize> = (0..n).collect();
    let second: Vec<usize> = (n / 2..n + n / 4).collect();
    let list = |ids: &[usize]| ids.iter().map(|&i| item(i)).collect::<Vec<_>>().join(", ");
    let text = format!(
        "shop: s\nitems:\n  limit: 100\n  pools:\n    - items: [{}]\n    - items: [{}]\n",
        list(&first),
        list(&second)
    );
    let mut seen = HashSet::new();
    let order = first.into_iter().chain(second).filter(|i| seen.insert(*i)).collect();
    (text, order)
}

/// The visitor's carted, favorited and bought items among `0..total`.
fn mine(total: usize) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let carted = vec![total - 1, total / 2 + 1, 10, total - 7];
    let favorited = vec![total - 2, 5, total / 3];
    // Bought and carted: judged by popularity.
    let bought = vec![total - 7, 4];
    (carted, favorited, bought)
}

fn shop(total: usize) -> ShopIndex {
    let shop = ShopIndex::new("s");
    let (carted, favorited, bought) = mine(total);
    for i in 0..total {
        for k in 0..popularity(i) {
            shop.apply(&Event {
                item: Some(item(i).into()),
                price: 10.0,
                id: Some(format!("o-{i}-{k}").into()),
                ..Event::new("s", format!("other-{k}"), Action::Purchase, NOW - HOUR)
            });
        }
    }
    for (list, action) in [
        (&carted, Action::Cart),
        (&favorited, Action::Favorite),
        (&bought, Action::Purchase),
    ] {
        for &i in list {
            shop.apply(&Event {
                item: Some(item(i).into()),
                price: 10.0,
                id: (action == Action::Purchase).then(|| format!("mine-{i}").into()),
                ..Event::new("s", ME, action, NOW - 2 * HOUR)
            });
        }
    }
    shop
}

/// The model's picks: judged, stably sorted by (reason, strongest first).
fn model(total: usize, order: &[usize], limit: usize) -> Vec<(String, ItemReason)> {
    let (carted, favorited, bought) = mine(total);
    let mut judged: Vec<(usize, ItemReason, u32)> = order
        .iter()
        .map(|&i| {
            // My own purchase counts toward popularity too.
            let pop = popularity(i) + u32::from(bought.contains(&i));
            let (reason, strength) = if !bought.contains(&i) && carted.contains(&i) {
                (ItemReason::InCart, 0)
            } else if !bought.contains(&i) && favorited.contains(&i) {
                (ItemReason::Favorited, 0)
            } else if pop > 0 {
                (ItemReason::Popular, pop)
            } else {
                (ItemReason::Pool, 0)
            };
            (i, reason, strength)
        })
        .collect();
    judged.sort_by_key(|&(_, reason, strength)| (reason as usize, std::cmp::Reverse(strength)));
    judged
        .into_iter()
        .take(limit)
        .map(|(i, reason, _)| (item(i), reason))
        .collect()
}

#[test]
fn picks_equal_a_stable_sort_over_many_equal_candidates() {
    for n in [300, 3_500, 6_000] {
        let (text, order) = rules(n);
        let total = n + n / 4;
        assert!(order.len() == total && (total > 256));
        let rules = RuleSet::load(&text).unwrap();
        let shop = shop(total);
        let ledger = MemoryLedger::new();
        for limit in [100u32, 37, 1] {
            let req = DecideRequest {
                visitor: ME,
                context: Context::default(),
                item_limit: limit,
                explain: false,
                now_ms: NOW,
            };
            let d = decide(&rules, Some(&shop), &ledger, &req);
            let got: Vec<(String, ItemReason)> = d.items.iter().map(|p| (p.id.to_string(), p.reason)).collect();
            let want = model(total, &order, limit as usize);
            assert_eq!(got.len(), want.len(), "{n} items, limit {limit}");
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{n} items, limit {limit}: pick {k}");
            }
        }
    }
}
