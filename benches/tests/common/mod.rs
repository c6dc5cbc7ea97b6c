//! What the counting-allocator tests (`alloc.rs`, `alloc_ranked.rs`, each
//! its own test binary) share.

use std::alloc::System;

use stats_alloc::{Region, StatsAlloc};
use vitrine_core::{decide, ClaimLedger, DecideRequest, Decision, RuleSet, ShopIndex};

/// Decides `req` counting, in `global`, the heap blocks the call makes
/// (allocations and reallocations): (the decision, blocks made, blocks the
/// decision owns). Equal counts mean the call allocated only its answer.
pub fn decide_counted<'r>(
    global: &StatsAlloc<System>,
    rules: &'r RuleSet,
    shop: &ShopIndex,
    ledger: &dyn ClaimLedger,
    req: &DecideRequest<'_>,
) -> (Decision<'r>, u64, u64) {
    let region = Region::new(global);
    let d = decide(rules, Some(shop), ledger, req);
    let change = region.change();
    let made = (change.allocations + change.reallocations) as u64;
    let owned = owned_blocks(&d);
    (d, made, owned)
}

/// The heap blocks a decision owns: each allocation the call may make.
pub fn owned_blocks(d: &Decision<'_>) -> u64 {
    let block = |capacity: usize| u64::from(capacity > 0);
    let mut n = block(d.items.capacity()) + block(d.held_out.capacity());
    if let Some(e) = &d.explanation {
        n += block(e.audiences.capacity()) + block(e.steps.capacity());
        n += e.audiences.iter().map(|a| block(a.capacity())).sum::<u64>();
        n += e.steps.iter().map(|s| block(s.entry.capacity())).sum::<u64>();
    }
    n
}
