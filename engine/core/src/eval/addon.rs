//! The smart add-on's share of the items slot (see [`crate::rules::addon`]).

use crate::eval::decide::{ItemReason, Pick, Signals};
use crate::index::ShopIndex;
use crate::rules::{Pool, RuleSet};

/// Starts `picks` with the add-on items: from the complements of
/// `context_item` and the pools `pool_matches` accepts (in file order),
/// those with a known price of at least `gap`, cheapest first (ties in
/// that order), never the context item, an item already picked or one
/// `signals` excludes (bought within `exclude_purchased`); at most `limit`.
#[allow(clippy::too_many_arguments)]
pub(super) fn add_on_picks<'r>(
    rules: &'r RuleSet,
    shop: &ShopIndex,
    signals: &Signals<'_>,
    context_item: &str,
    gap: f64,
    limit: usize,
    picks: &mut Vec<Pick<'r>>,
    mut pool_matches: impl FnMut(&Pool) -> bool,
) {
    let items = &rules.items;
    let complements = match context_item {
        "" => None,
        item => items.complements.get(item),
    };
    let pools = items.pools.iter().filter(|pool| pool_matches(pool));
    let candidates = complements
        .into_iter()
        .flatten()
        .chain(pools.flat_map(|pool| pool.items.iter()));
    // (price, order of appearance, id)
    let mut priced: Vec<(f64, usize, &'r str)> = Vec::new();
    for (order, id) in candidates.enumerate() {
        let id: &'r str = id;
        if id == context_item || picks.iter().any(|p| p.id == id) || priced.iter().any(|c| c.2 == id) {
            continue;
        }
        let Some(price) = shop.item(id).and_then(|info| info.price).map(|(_, p)| p) else {
            continue;
        };
        if price >= gap && signals.judge(id).is_some() {
            priced.push((price, order, id));
        }
    }
    priced.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let room = limit.saturating_sub(picks.len());
    picks.extend(priced.into_iter().take(room).map(|(_, _, id)| Pick {
        id,
        reason: ItemReason::AddOn,
    }));
}
