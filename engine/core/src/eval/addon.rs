//! The smart add-on's share of the items slot (see [`crate::rules::addon`]).

use std::sync::Arc;

use crate::eval::items::{ItemAt, ItemReason, Pick, Signals};
use crate::index::ShopIndex;
use crate::rules::catalog::UNKNOWN;
use crate::rules::{Pool, RuleSet};

/// Starts `picks` with the add-on items: from the complements of the
/// context item and the pools `pool_matches` accepts (in file order),
/// those with a known price of at least the gap, cheapest first (ties in
/// that order), never the context item, an item already picked or one the
/// signals exclude (bought within `exclude_purchased`); at most `limit`.
/// `priced` is scratch memory (cleared first).
pub(super) fn add_on_picks<'r>(
    rules: &'r RuleSet,
    shop: &ShopIndex,
    pick: &AddOnPick<'_, 'r>,
    picks: &mut Vec<Pick<'r>>,
    priced: &mut Vec<(f64, u32, ItemAt)>,
    mut pool_matches: impl FnMut(&Pool) -> bool,
) {
    let AddOnPick {
        signals,
        context_item,
        complements,
        complement_ids,
        shop_ids,
        gap,
        limit,
    } = *pick;
    let catalog = &rules.items.catalog;
    let at = |list: u32, rids: &'r [u32]| {
        move |(pos, id): (usize, &'r std::sync::Arc<str>)| {
            let rid = rids.get(pos).copied().unwrap_or(UNKNOWN);
            (ItemAt { list, pos: pos as u32 }, &**id, rid)
        }
    };
    let pools = rules
        .items
        .pools
        .iter()
        .enumerate()
        .filter(|(_, pool)| pool_matches(pool))
        .flat_map(|(i, pool)| pool.items.iter().enumerate().map(at(i as u32, catalog.pool(i))));
    let candidates = complements
        .iter()
        .enumerate()
        .map(at(ItemAt::COMPLEMENTS, complement_ids))
        .chain(pools);
    priced.clear();
    for (order, (where_, id, rid)) in candidates.enumerate() {
        if id == context_item
            || picks.iter().any(|p| p.id == id)
            || priced.iter().any(|c| c.2.id(rules, complements) == id)
        {
            continue;
        }
        let item = shop_ids.get(rid as usize).copied().unwrap_or(UNKNOWN);
        let Some(price) = shop.items.view(item).and_then(|info| info.price()) else {
            continue;
        };
        if price >= gap && signals.judge_id(item).is_some() {
            priced.push((price, order as u32, where_));
        }
    }
    priced.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let room = limit.saturating_sub(picks.len());
    picks.extend(priced.iter().take(room).map(|(_, _, where_)| Pick {
        id: where_.id(rules, complements),
        reason: ItemReason::AddOn,
    }));
}

/// Decisions under the second edition of the language: the add-on, banner
/// params and schedules, pool schedules, the tier preview, the budget left.
/// What the add-on needs of the decision in progress.
pub(crate) struct AddOnPick<'a, 'r> {
    pub(crate) signals: &'a Signals<'a>,
    pub(crate) context_item: &'a str,
    pub(crate) complements: &'r [Arc<str>],
    /// The complements' rule-local ids (`crate::rules::catalog`).
    pub(crate) complement_ids: &'r [u32],
    /// Per rule-local id, its id in the shop's item table.
    pub(crate) shop_ids: &'a [u32],
    pub(crate) gap: f64,
    pub(crate) limit: usize,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::claims::{ClaimLedger, MemoryLedger};
    use crate::eval::decide::{decide, Context, DecideRequest, Decision, ItemReason, Slot, StepOutcome};
    use crate::event::{Action, Event};
    use crate::index::Index;
    use crate::rules::RuleSet;
    use crate::{claim, ClaimOutcome, ClaimRequest};

    const HOUR: i64 = 3_600_000;
    /// 2026-11-10T15:45:00Z.
    const NOW: i64 = 1_794_325_500_000;

    const RULES: &str = r#"shop: s
tiers:
  by: spend(30d)
  levels:
    - { tier: 1, name: silver, at: 100 }
    - { tier: 2, name: gold, at: 300 }
audiences:
  silver_up: preview_tier >= 1
  big_cart: ctx.cart_total >= 150
banners:
  - banner: tomorrow
    starts: 2026-11-11T00:00:00Z
  - when: silver_up
    banner: silver
    params: { image: "s.jpg", headline: "Silver already" }
  - when: big_cart
    banner: big
  - banner: default
items:
  limit: 4
  exclude_purchased: 30d
  add_on: { threshold: 99, cart_total: ctx.cart_total }
  pools:
    - items: [p-late]
      ends: 2026-11-10T00:00:00Z
    - items: [p-10, p-30, p-50, p-none, p-40]
  complements:
    c-0: [c-0, p-50, c-60, c-20]
benefits:
  - id: limited
    kind: gift
    budget: 5
  - id: open
    kind: points
"#;

    fn priced(item: &str, price: f64, ts: i64) -> Event<'static> {
        Event {
            item: Some(item.to_string().into()),
            price,
            ..Event::new("s", "someone", Action::View, ts)
        }
    }

    fn index() -> Index {
        let index = Index::new();
        for (item, price) in [
            ("p-10", 10.0),
            ("p-30", 30.0),
            ("p-50", 50.0),
            ("p-40", 40.0),
            ("c-60", 60.0),
            ("c-20", 20.0),
            ("c-0", 500.0),
            ("p-late", 70.0),
        ] {
            index.apply(&priced(item, price, NOW - 5 * HOUR));
        }
        index.apply(&Event {
            item: Some("p-none".into()),
            ..Event::new("s", "someone", Action::View, NOW - 5 * HOUR)
        });
        // "buyer" spent 120 (silver, 180 short of gold) and bought p-40 lately.
        index.apply(&Event {
            item: Some("p-40".into()),
            price: 120.0,
            ..Event::new("s", "buyer", Action::Purchase, NOW - 2 * HOUR)
        });
        // A newer view tells p-40's price as 40 again.
        index.apply(&priced("p-40", 40.0, NOW - HOUR));
        index
    }

    fn run<'r>(
        rules: &'r RuleSet,
        index: &Index,
        ledger: &dyn ClaimLedger,
        visitor: &str,
        item: &str,
        cart_total: Option<&str>,
    ) -> Decision<'r> {
        let attributes: HashMap<String, String> = cart_total
            .map(|t| ("cart_total".to_string(), t.to_string()))
            .into_iter()
            .collect();
        decide(
            rules,
            index.shop("s").as_deref(),
            ledger,
            &DecideRequest {
                visitor,
                context: Context {
                    item,
                    attributes: Some(&attributes),
                    ..Context::default()
                },
                explain: true,
                now_ms: NOW,
                ..DecideRequest::default()
            },
        )
    }

    fn items<'r>(d: &Decision<'r>) -> Vec<(&'r str, ItemReason)> {
        d.items.iter().map(|p| (p.id, p.reason)).collect()
    }

    #[test]
    fn add_on_items_cover_the_gap_cheapest_first_then_the_slot_as_before() {
        let rules = RuleSet::load(RULES).unwrap();
        let index = index();
        let ledger = MemoryLedger::new();
        use ItemReason::{AddOn, Complement, Pool};
        // Gap 99 - 64 = 35: of complements and matching pools, the known
        // prices >= 35, cheapest first; never the context item, never an
        // item of a pool out of its window, never a recent purchase (p-40
        // for "buyer"); then complements and pools as without an add-on.
        let d = run(&rules, &index, &ledger, "buyer", "c-0", Some("64"));
        assert_eq!(d.add_on_gap, Some(35.0));
        assert_eq!(
            items(&d),
            [("p-50", AddOn), ("c-60", AddOn), ("c-20", Complement), ("p-10", Pool)]
        );
        let d = run(&rules, &index, &ledger, "other", "", Some("64"));
        assert_eq!(
            items(&d),
            [("p-40", AddOn), ("p-50", AddOn), ("p-10", Pool), ("p-30", Pool)]
        );
        // A bigger gap leaves fewer items; none at all still reports the gap
        // (p-40, bought lately by "buyer", ranks first as before).
        let d = run(&rules, &index, &ledger, "other", "", Some("40"));
        assert_eq!(
            (d.add_on_gap, items(&d)[0]),
            (Some(59.0), ("p-40", ItemReason::Popular))
        );
        // No add-on at or past the threshold, or without a number.
        for total in [Some("99"), Some("150"), Some("ninety"), Some(""), None] {
            let d = run(&rules, &index, &ledger, "other", "", total);
            assert_eq!(d.add_on_gap, None, "{total:?}");
            assert!(items(&d).iter().all(|(_, r)| *r != AddOn), "{total:?}");
        }
        let steps: Vec<_> = run(&rules, &index, &ledger, "other", "", Some("64"))
            .explanation
            .unwrap()
            .steps
            .into_iter()
            .filter(|s| s.slot == Slot::Items)
            .map(|s| (s.entry, s.outcome))
            .collect();
        assert_eq!(
            steps,
            [
                ("add_on".to_string(), StepOutcome::Contributed),
                ("pools[0]".to_string(), StepOutcome::OutsideWindow),
                ("pools[1]".to_string(), StepOutcome::Contributed),
            ]
        );
    }

    #[test]
    fn banners_carry_params_and_skip_outside_their_window_and_tiers_preview() {
        let rules = RuleSet::load(RULES).unwrap();
        let index = index();
        let ledger = MemoryLedger::new();
        let d = run(&rules, &index, &ledger, "buyer", "", None);
        assert_eq!(d.banner, Some("silver"));
        let params: Vec<(&str, &str)> = d.banner_params.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(params, [("image", "s.jpg"), ("headline", "Silver already")]);
        let p = d.tier_preview.unwrap();
        assert_eq!((p.tier, p.name, p.next, p.gap), (1, "silver", Some((2, "gold")), 180.0));
        let banner_steps: Vec<_> = d
            .explanation
            .unwrap()
            .steps
            .into_iter()
            .filter(|s| s.slot == Slot::Banner)
            .map(|s| (s.entry, s.outcome))
            .collect();
        assert_eq!(
            banner_steps,
            [
                ("banners[0] tomorrow".to_string(), StepOutcome::OutsideWindow),
                ("banners[1] silver".to_string(), StepOutcome::Chosen),
            ]
        );
        // Numeric context: 150 >= 150 but "150x" is no number.
        let d = run(&rules, &index, &ledger, "other", "", Some("150"));
        assert_eq!((d.banner, d.banner_params.len()), (Some("big"), 0));
        let d = run(&rules, &index, &ledger, "other", "", Some("150x"));
        assert_eq!(d.banner, Some("default"));
        // A known visitor without purchases: tier 0; unknown and anonymous: none.
        let p = run(&rules, &index, &ledger, "someone", "", None).tier_preview.unwrap();
        assert_eq!((p.tier, p.name, p.next, p.gap), (0, "", Some((1, "silver")), 100.0));
        assert!(run(&rules, &index, &ledger, "stranger", "", None)
            .tier_preview
            .is_none());
        assert!(run(&rules, &index, &ledger, "", "", None).tier_preview.is_none());
        // Without `tiers`: no preview, and preview_tier is 0.
        let plain =
            RuleSet::load("shop: s\naudiences:\n  zero: preview_tier == 0\nbanners:\n  - when: zero\n    banner: z\n")
                .unwrap();
        let d = run(&plain, &index, &ledger, "buyer", "", None);
        assert_eq!((d.banner, d.tier_preview), (Some("z"), None));
    }

    #[test]
    fn remaining_counts_down_with_grants_and_is_absent_without_a_budget() {
        let rules = RuleSet::load(RULES).unwrap();
        let index = index();
        let ledger = MemoryLedger::new();
        let d = run(&rules, &index, &ledger, "buyer", "", None);
        assert_eq!((d.benefit.map(|b| &*b.id), d.remaining), (Some("limited"), Some(5)));
        for (i, visitor) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            let req = ClaimRequest {
                visitor,
                benefit: "limited",
                now_ms: NOW,
                ..ClaimRequest::default()
            };
            assert_eq!(claim(&rules, None, &ledger, &req).unwrap(), ClaimOutcome::Granted);
            let left = 4 - i as u64;
            assert_eq!(super::super::decide::remaining(&rules, "limited", &ledger), Some(left));
            let d = run(&rules, &index, &ledger, "buyer", "", None);
            if left > 0 {
                assert_eq!(d.remaining, Some(left));
            } else {
                assert_eq!((d.benefit.map(|b| &*b.id), d.remaining), (Some("open"), None));
            }
        }
        assert_eq!(super::super::decide::remaining(&rules, "open", &ledger), None);
        assert_eq!(super::super::decide::remaining(&rules, "nope", &ledger), None);
    }
}
