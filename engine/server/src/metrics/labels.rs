//! Metrics labelled by shop and rule entry, with label values taken only
//! from the rule files a replica serves, never from a request or an event.
//!
//! Three series families:
//! - `vitrine_decisions_by_entry_total{shop, slot, entry}`: the banner id or
//!   benefit id a decision chose, or `none`;
//! - `vitrine_claims_by_benefit_total{shop, benefit, result}`;
//! - `vitrine_ingest_rejected_by_shop_total{shop}`.
//!
//! The handles of a shop are built once per served revision (the first
//! Decide, Claim or rejection that meets it), filed by entry index, so that
//! Decide records with one lock-free map load, one hash of the shop name and
//! two atomic adds: no string is formatted and no lock taken per call.
//!
//! # The cap
//! Per shop: one series per distinct banner id, seven per benefit id (its
//! decisions and six claim results), two `none` and one for rejected events,
//! summed over every revision served since the process started. Over every
//! shop together at most [`MAX_LABELED_SERIES`] such series exist; a value
//! that would pass the cap folds into `entry`/`benefit="other"` of its shop,
//! and a shop that cannot fit into `shop="other"` (a fixed 11 series beyond
//! the cap). Events and calls for shops no rule set serves count under
//! `shop="other"` and never create a series.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ahash::RandomState;
use arc_swap::ArcSwap;
use metrics::Counter;
use parking_lot::Mutex;
use vitrine_core::{ClaimOutcome, RuleSet};

/// `vitrine_decisions_by_entry_total{shop, slot, entry}`
pub const DECISIONS_BY_ENTRY: &str = "vitrine_decisions_by_entry_total";
/// `vitrine_claims_by_benefit_total{shop, benefit, result}`
pub const CLAIMS_BY_BENEFIT: &str = "vitrine_claims_by_benefit_total";
/// `vitrine_ingest_rejected_by_shop_total{shop}`
pub const REJECTED_BY_SHOP: &str = "vitrine_ingest_rejected_by_shop_total";

/// The most series with a shop's own label values (everything but
/// `shop="other"`), over every shop and revision since start.
pub const MAX_LABELED_SERIES: usize = 20_000;

/// The label value that every value beyond the cap, and every shop no rule
/// set serves, folds into.
pub const OTHER: &str = "other";
/// The entry of an empty slot.
pub const NONE: &str = "none";

const OUTCOMES: usize = ClaimOutcome::ALL.len();

/// Describes the labelled families (once, at start-up).
pub(super) fn describe() {
    metrics::describe_counter!(
        DECISIONS_BY_ENTRY,
        "Which rule entry do a shop's visitors get? Decisions by shop, slot (banner, benefit) and entry (the banner or benefit id the rule file defines, none, or other beyond the series cap)."
    );
    metrics::describe_counter!(
        CLAIMS_BY_BENEFIT,
        "Which of a shop's benefits are claimed, and with what result? Claims by shop, benefit id and result (GRANTED, CAP_REACHED, ...)."
    );
    metrics::describe_counter!(
        REJECTED_BY_SHOP,
        "Whose events are rejected? Rejected Track and Kafka events by shop; shops no rule set serves (and events with no readable shop) count as shop=\"other\"."
    );
}

/// A series key: metric name and label values, as registered.
type Key = (&'static str, Arc<str>, Arc<str>, Arc<str>);

/// The handles of one shop under one served revision.
#[derive(Debug)]
pub struct ShopCounters {
    revision: u64,
    /// Per banner entry (by index): its id's counter.
    banners: Vec<Counter>,
    banner_none: Counter,
    /// Per benefit entry (by index): its id's counter.
    benefits: Vec<Counter>,
    benefit_none: Counter,
    /// Per benefit entry: its id, and its claims by outcome (in `ClaimOutcome::ALL` order).
    claims: Vec<(Arc<str>, [Counter; OUTCOMES])>,
    claims_other: [Counter; OUTCOMES],
    rejected: Counter,
}

impl ShopCounters {
    /// Counts one decision: the chosen banner and benefit entries (indices into the rule set).
    #[inline]
    pub fn decided(&self, banner: Option<usize>, benefit: Option<usize>) {
        match banner {
            Some(i) => self.banners.get(i).unwrap_or(&self.banner_none),
            None => &self.banner_none,
        }
        .increment(1);
        match benefit {
            Some(i) => self.benefits.get(i).unwrap_or(&self.benefit_none),
            None => &self.benefit_none,
        }
        .increment(1);
    }

    fn claimed(&self, benefit: &str, outcome: ClaimOutcome) {
        let counters = self
            .claims
            .iter()
            .find(|(id, _)| **id == *benefit)
            .map_or(&self.claims_other, |(_, c)| c);
        if let Some(i) = ClaimOutcome::ALL.iter().position(|o| *o == outcome) {
            counters[i].increment(1);
        }
    }
}

/// The labelled series of every served shop; see the module docs.
#[derive(Debug)]
pub struct ShopSeries {
    shops: ArcSwap<HashMap<Arc<str>, Arc<ShopCounters>, RandomState>>,
    registry: Mutex<Registry>,
    /// `vitrine_ingest_rejected_by_shop_total{shop="other"}`.
    rejected_other: Counter,
}

#[derive(Debug)]
struct Registry {
    cap: usize,
    keys: HashSet<Key, RandomState>,
}

impl Registry {
    /// The counter of `key`, registered if it is new and the cap allows
    /// (always for `shop="other"`); `None` past the cap.
    fn counter(&mut self, key: Key) -> Option<Counter> {
        let (name, shop, a, b) = &key;
        let capped = &**shop != OTHER;
        if capped && !self.keys.contains(&key) {
            if self.keys.len() >= self.cap {
                return None;
            }
            self.keys.insert(key.clone());
        }
        let shop = shop.to_string();
        Some(match *name {
            DECISIONS_BY_ENTRY => {
                metrics::counter!(DECISIONS_BY_ENTRY, "shop" => shop, "slot" => a.to_string(), "entry" => b.to_string())
            }
            CLAIMS_BY_BENEFIT => {
                metrics::counter!(CLAIMS_BY_BENEFIT, "shop" => shop, "benefit" => a.to_string(), "result" => b.to_string())
            }
            _ => metrics::counter!(REJECTED_BY_SHOP, "shop" => shop),
        })
    }

    /// The first of `keys` (shop and two label values, tried in order)
    /// that fits; the last should be under `shop="other"`, which always does.
    fn first(&mut self, name: &'static str, keys: &[(&Arc<str>, &str, &str)]) -> Counter {
        keys.iter()
            .find_map(|(shop, a, b)| self.counter((name, Arc::clone(shop), (*a).into(), (*b).into())))
            .unwrap_or_else(Counter::noop)
    }
}

impl Default for ShopSeries {
    fn default() -> Self {
        ShopSeries::with_cap(MAX_LABELED_SERIES)
    }
}

impl ShopSeries {
    /// Series for at most `cap` shop-labelled series (tests use small caps).
    pub fn with_cap(cap: usize) -> ShopSeries {
        let mut registry = Registry {
            cap,
            keys: HashSet::default(),
        };
        let rejected_other = registry
            .counter((REJECTED_BY_SHOP, OTHER.into(), "".into(), "".into()))
            .unwrap_or_else(Counter::noop);
        ShopSeries {
            shops: ArcSwap::default(),
            registry: Mutex::new(registry),
            rejected_other,
        }
    }

    /// The handles of `shop` serving `revision` of `rules`: from the cache,
    /// or built (once per revision) and cached.
    #[inline]
    pub fn of(&self, shop: &str, revision: u64, rules: &RuleSet) -> Arc<ShopCounters> {
        if let Some(c) = self.shops.load().get(shop).filter(|c| c.revision == revision) {
            return c.clone();
        }
        self.build(shop, revision, rules)
    }

    /// Counts one decision of `shop` (see [`ShopCounters::decided`]), through
    /// the cached handles: a map load and two atomic adds.
    #[inline]
    pub fn decided(&self, shop: &str, revision: u64, rules: &RuleSet, banner: Option<usize>, benefit: Option<usize>) {
        if let Some(c) = self.shops.load().get(shop).filter(|c| c.revision == revision) {
            c.decided(banner, benefit);
            return;
        }
        self.build(shop, revision, rules).decided(banner, benefit);
    }

    /// Counts a claim of `benefit` (an id the caller may have made up) of a served shop.
    pub fn claimed(&self, shop: &str, revision: u64, rules: &RuleSet, benefit: &str, outcome: ClaimOutcome) {
        self.of(shop, revision, rules).claimed(benefit, outcome);
    }

    /// Counts a rejected event of `shop`: its own series when a rule set
    /// serves it (`serving` gives its revision and rules), else `shop="other"`.
    pub fn rejected<R>(&self, shop: Option<&str>, serving: impl FnOnce(&str) -> Option<R>)
    where
        R: std::ops::Deref<Target = crate::rules_store::Served>,
    {
        let Some(shop) = shop else {
            self.rejected_other.increment(1);
            return;
        };
        if let Some(c) = self.shops.load().get(shop) {
            c.rejected.increment(1);
            return;
        }
        match serving(shop) {
            Some(served) => self.build(shop, served.revision, &served.rules).rejected.increment(1),
            None => self.rejected_other.increment(1),
        }
    }

    #[cold]
    fn build(&self, shop: &str, revision: u64, rules: &RuleSet) -> Arc<ShopCounters> {
        let mut registry = self.registry.lock();
        // Another call may have built it while this one waited.
        if let Some(c) = self.shops.load().get(shop).filter(|c| c.revision == revision) {
            return c.clone();
        }
        let name: Arc<str> = shop.into();
        let other: Arc<str> = OTHER.into();
        let (shop, other) = (&name, &other);
        let r = &mut *registry;
        let mut decision = |slot: &str, id: &str| {
            r.first(
                DECISIONS_BY_ENTRY,
                &[(shop, slot, id), (shop, slot, OTHER), (other, slot, OTHER)],
            )
        };
        let banners = rules.banners.iter().map(|b| decision("banner", &b.id)).collect();
        let benefits = rules.benefits.iter().map(|b| decision("benefit", &b.id)).collect();
        let banner_none = r.first(DECISIONS_BY_ENTRY, &[(shop, "banner", NONE), (other, "banner", NONE)]);
        let benefit_none = r.first(DECISIONS_BY_ENTRY, &[(shop, "benefit", NONE), (other, "benefit", NONE)]);
        let mut folded = false;
        let claims = rules
            .benefits
            .iter()
            .map(|b| {
                let counters = ClaimOutcome::ALL.map(|o| {
                    r.counter((CLAIMS_BY_BENEFIT, shop.clone(), b.id.clone(), o.as_str().into()))
                        .unwrap_or_else(|| {
                            folded = true;
                            r.first(
                                CLAIMS_BY_BENEFIT,
                                &[(shop, OTHER, o.as_str()), (other, OTHER, o.as_str())],
                            )
                        })
                });
                (b.id.clone(), counters)
            })
            .collect();
        // `benefit="other"` of the shop exists only when one of its benefits
        // did not fit; a claim of a benefit the current revision lacks (a
        // push between its answer and this count) counts under shop="other".
        let claims_other = ClaimOutcome::ALL.map(|o| {
            let fallback = (other, OTHER, o.as_str());
            if folded {
                r.first(CLAIMS_BY_BENEFIT, &[(shop, OTHER, o.as_str()), fallback])
            } else {
                r.first(CLAIMS_BY_BENEFIT, &[fallback])
            }
        });
        let rejected = r.first(REJECTED_BY_SHOP, &[(shop, "", ""), (other, "", "")]);
        let counters = Arc::new(ShopCounters {
            revision,
            banners,
            banner_none,
            benefits,
            benefit_none,
            claims,
            claims_other,
            rejected,
        });
        let mut shops = HashMap::clone(&self.shops.load());
        shops.insert(name.clone(), counters.clone());
        self.shops.store(Arc::new(shops));
        counters
    }
}

/// The `shop` field of a JSON event that failed validation, if it has one
/// that is a string: only ever compared with the served shops, never a label.
pub fn shop_of(payload: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct ShopOnly<'a> {
        #[serde(borrow)]
        shop: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<ShopOnly<'_>>(payload).ok()?.shop
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    fn rules(shop: &str, banners: &[&str]) -> RuleSet {
        let mut yaml = format!("shop: {shop}\nbanners:\n");
        for b in banners {
            yaml.push_str(&format!("  - when: ctx.page == \"{b}\"\n    banner: {b}\n"));
        }
        yaml.push_str("benefits:\n  - id: coupon\n    kind: coupon\n");
        match RuleSet::load(&yaml) {
            Ok(r) => r,
            Err(e) => panic!("{e:?}\n{yaml}"),
        }
    }

    /// The sorted series lines (name, labels and value) of a rendering.
    fn lines(text: &str) -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    /// Issue 16: past the cap, entries fold into `other` of their shop, and
    /// shops into `shop="other"`; a shop's own series never pass the cap,
    /// however many shops and revisions come.
    #[test]
    fn series_past_the_cap_fold_into_other() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let series = ShopSeries::with_cap(5);
            let a = rules("a", &["x", "y", "z"]);
            // x, y, z, coupon and banner none fit; the rest of `a` does not.
            series.decided("a", 1, &a, Some(1), Some(0));
            series.decided("a", 1, &a, None, None);
            series.claimed("a", 1, &a, "coupon", ClaimOutcome::Granted);
            series.rejected(Some("a"), |_| None::<Arc<crate::rules_store::Served>>);
            // A new revision with a new banner id, and a whole new shop.
            let a2 = rules("a", &["w"]);
            series.decided("a", 2, &a2, Some(0), None);
            for shop in ["b", "c"] {
                series.decided(shop, 1, &rules(shop, &["x"]), Some(0), Some(0));
            }
            series.rejected(Some("nobody"), |_| None::<Arc<crate::rules_store::Served>>);
        });
        let text = handle.render();
        assert_eq!(
            lines(&text),
            [
                "vitrine_claims_by_benefit_total{shop=\"other\",benefit=\"other\",result=\"BUDGET_EXHAUSTED\"} 0",
                "vitrine_claims_by_benefit_total{shop=\"other\",benefit=\"other\",result=\"CAP_REACHED\"} 0",
                "vitrine_claims_by_benefit_total{shop=\"other\",benefit=\"other\",result=\"GRANTED\"} 1",
                "vitrine_claims_by_benefit_total{shop=\"other\",benefit=\"other\",result=\"HELD_OUT\"} 0",
                "vitrine_claims_by_benefit_total{shop=\"other\",benefit=\"other\",result=\"NOT_ELIGIBLE\"} 0",
                "vitrine_claims_by_benefit_total{shop=\"other\",benefit=\"other\",result=\"OUTSIDE_WINDOW\"} 0",
                "vitrine_decisions_by_entry_total{shop=\"a\",slot=\"banner\",entry=\"none\"} 1",
                "vitrine_decisions_by_entry_total{shop=\"a\",slot=\"banner\",entry=\"x\"} 0",
                "vitrine_decisions_by_entry_total{shop=\"a\",slot=\"banner\",entry=\"y\"} 1",
                "vitrine_decisions_by_entry_total{shop=\"a\",slot=\"banner\",entry=\"z\"} 0",
                "vitrine_decisions_by_entry_total{shop=\"a\",slot=\"benefit\",entry=\"coupon\"} 1",
                "vitrine_decisions_by_entry_total{shop=\"other\",slot=\"banner\",entry=\"none\"} 0",
                "vitrine_decisions_by_entry_total{shop=\"other\",slot=\"banner\",entry=\"other\"} 3",
                "vitrine_decisions_by_entry_total{shop=\"other\",slot=\"benefit\",entry=\"none\"} 2",
                "vitrine_decisions_by_entry_total{shop=\"other\",slot=\"benefit\",entry=\"other\"} 2",
                "vitrine_ingest_rejected_by_shop_total{shop=\"other\"} 2",
            ]
        );
    }

    #[test]
    fn the_shop_of_a_rejected_payload_is_read_only_from_a_json_string() {
        assert_eq!(shop_of(br#"{"shop":"a","ts":"x"}"#).as_deref(), Some("a"));
        assert_eq!(shop_of(br#"{"shop":7}"#), None);
        assert_eq!(shop_of(b"not json"), None);
        assert_eq!(shop_of(br#"{"visitor":"v"}"#), None);
    }
}
