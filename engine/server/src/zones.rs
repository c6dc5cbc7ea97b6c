//! Shop time zones on a serving replica.
//!
//! A shop's index counts hours on the clock of one time zone, fixed when the
//! index is created: the `timezone:` of the rule set serving the shop when
//! its first event is applied (`vitrine_core::time`, "The clock-hour frame").
//! The index cannot be re-bucketed into another zone exactly (an hour bucket
//! does not keep its events' minutes), so a rule change that moves a shop
//! with an index to another zone is refused where it can be: `Rules/Push`
//! and `Rules/Rollback` (and their dry runs) answer FAILED_PRECONDITION with
//! [`StoreError::ZoneChange`]. Where it cannot be (a record of the cluster
//! rules topic, which every replica applies in order, and the rule files of
//! `--rules-dir` at start-up and at each poll), the rules serve, the index
//! keeps its zone for every window, and [`Conflicts::check`] logs an error
//! once per shop and zone and counts it in
//! `vitrine_rules_zone_conflicts_total`. `rules/README.md` ("Time zone")
//! tells the operator how to move a shop to another zone.

use std::collections::HashMap;

use parking_lot::Mutex;
use vitrine_core::time::Zone;
use vitrine_core::{Index, RuleSet};

use crate::metrics;
use crate::rules_store::{RuleStore, StoreError};

/// Refuses `rules` when its zone differs from the zone of the shop's
/// existing index.
pub fn check(index: &Index, rules: &RuleSet) -> Result<(), StoreError> {
    match index.shop(&rules.shop) {
        Some(shop) if *shop.zone() != rules.zone => Err(StoreError::ZoneChange {
            shop: rules.shop.to_string(),
            index_zone: shop.zone().name().to_string(),
            rules_zone: rules.zone.name().to_string(),
        }),
        _ => Ok(()),
    }
}

/// The zone a new index of `shop` counts hours on: its serving rule set's
/// (UTC when none serves it).
pub fn zone_for(store: &RuleStore, shop: &str) -> Zone {
    store
        .with_serving(shop, |served| served.rules.zone.clone())
        .unwrap_or_else(Zone::utc)
}

/// The conflicts already reported: shop -> the rule set's zone.
#[derive(Debug, Default)]
pub struct Conflicts {
    reported: Mutex<HashMap<Box<str>, Zone>>,
}

impl Conflicts {
    /// Compares every shop's index with its serving rule set, reporting
    /// each new disagreement once (log and counter); returns how many shops
    /// disagree now. One lookup per shop with an index: for start-up, the
    /// rules poll and the rules topic, never a request.
    pub fn check(&self, index: &Index, store: &RuleStore) -> usize {
        let mut disagree = 0;
        for shop in index.shops() {
            let Some(rules_zone) = store.with_serving(shop.name(), |s| s.rules.zone.clone()) else {
                continue;
            };
            let mut reported = self.reported.lock();
            if *shop.zone() == rules_zone {
                reported.remove(shop.name());
                continue;
            }
            disagree += 1;
            if reported.get(shop.name()) == Some(&rules_zone) {
                continue;
            }
            reported.insert(shop.name().into(), rules_zone.clone());
            metrics::zone_conflict();
            tracing::error!(
                shop = shop.name(),
                index_zone = shop.zone().name(),
                rules_zone = rules_zone.name(),
                "the serving rules set another time zone than the one the shop's index counts hours in: \
                 windows keep following the index's zone; to move the shop, rebuild its index \
                 (rules/README.md, \"Time zone\")"
            );
        }
        disagree
    }
}
