//! Member-tier preview: the `tiers` block of a rule file, and the tier a
//! visitor's purchase history earns under it.
//!
//! ```yaml
//! tiers:
//!   by: spend(365d)               # spend(W) or purchase_count(W)
//!   levels:                       # tier numbers and `at` strictly ascending
//!     - { tier: 1, name: silver, at: 500 }
//!     - { tier: 2, name: gold,   at: 2000 }
//! ```
//!
//! A visitor's value is `by` over its window ending now (the same sums as
//! the `spend(W)` and `purchase_count(W)` atoms); its tier is the highest
//! level whose `at` the value reaches, 0 below the first. The `preview_tier`
//! atom compares that tier; a decision for a known visitor reports it with
//! the next level and the gap to it ([`TierPreview`]).

use std::sync::Arc;

use std::collections::HashMap;

use super::yaml::{Node, Pos};
use super::Loader;
use crate::index::Profile;
use crate::rules::expr::Metric;
use crate::time::Window;

/// Most levels in a `tiers` block.
pub const MAX_TIER_LEVELS: usize = 32;

/// One level of a `tiers` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    /// The tier number a visitor at this level has (>= 1).
    pub tier: u32,
    /// Its name, handed to the renderer.
    pub name: Arc<str>,
    /// The value of `by` that reaches it.
    pub at: f64,
}

/// A validated `tiers` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Tiers {
    /// What the levels measure: spend or purchase count...
    pub metric: Metric,
    /// ...over this window ending now.
    pub window: Window,
    /// Levels, `tier` and `at` strictly ascending; never empty.
    pub levels: Vec<Level>,
}

/// The tier a visitor's history earns, and what is missing to the next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierPreview<'r> {
    /// 0 below the first level.
    pub tier: u32,
    /// "" for tier 0.
    pub name: &'r str,
    /// The next level up, `None` at the top.
    pub next: Option<(u32, &'r str)>,
    /// `at` of the next level minus the value (> 0); 0 at the top.
    pub gap: f64,
}

impl Tiers {
    /// The visitor's value of `by` at clock reading `clock_ms` (the shop's
    /// clock; 0 without a profile).
    pub(crate) fn value(&self, profile: Option<&Profile>, clock_ms: i64) -> f64 {
        let (count, spend) = profile.map_or((0, 0.0), |p| p.purchases_in(self.window.range(clock_ms)));
        match self.metric {
            Metric::PurchaseCount => f64::from(count),
            Metric::Spend => spend,
            // `by` is spend(W) or purchase_count(W) (the loader refuses the rest).
            Metric::AvgOrder if count == 0 => 0.0,
            Metric::AvgOrder => spend / f64::from(count),
        }
    }

    /// How many levels `value` reaches (0 = none).
    fn reached(&self, value: f64) -> usize {
        self.levels.iter().take_while(|l| value >= l.at).count()
    }

    /// The tier `value` earns: 0 below the first level.
    pub fn tier_of(&self, value: f64) -> u32 {
        match self.reached(value) {
            0 => 0,
            n => self.levels[n - 1].tier,
        }
    }

    /// The preview for `value`.
    pub fn preview(&self, value: f64) -> TierPreview<'_> {
        let n = self.reached(value);
        let (tier, name) = match n {
            0 => (0, ""),
            n => (self.levels[n - 1].tier, &*self.levels[n - 1].name),
        };
        let next = self.levels.get(n);
        TierPreview {
            tier,
            name,
            next: next.map(|l| (l.tier, &*l.name)),
            gap: next.map_or(0.0, |l| l.at - value),
        }
    }
}

/// The tier `preview_tier` reads: under `tiers`, else 0.
pub(crate) fn preview_tier(tiers: Option<&Tiers>, profile: Option<&Profile>, now_ms: i64) -> u32 {
    tiers.map_or(0, |t| t.tier_of(t.value(profile, now_ms)))
}

const TIERS_KEYS: &[&str] = &["by", "levels"];
const LEVEL_KEYS: &[&str] = &["tier", "name", "at"];

impl Loader<'_> {
    /// The `tiers` block.
    pub(super) fn tiers(&mut self, node: &Node) -> Option<Tiers> {
        let fields = self.fields(node, "`tiers`", TIERS_KEYS)?;
        let by = match fields.get("by") {
            Some(n) => self.tier_by(n),
            None => {
                self.error(node.pos(), "`tiers` is missing required key `by`");
                None
            }
        };
        let Some(levels_node) = fields.get("levels") else {
            self.error(node.pos(), "`tiers` is missing required key `levels`");
            return None;
        };
        let entries = self.list(levels_node, "`levels`")?;
        if entries.is_empty() {
            self.error(levels_node.pos(), "`levels` must not be empty");
            return None;
        }
        if let Some(extra) = entries.get(MAX_TIER_LEVELS) {
            self.error(
                extra.pos(),
                format!("too many levels: more than the limit of {MAX_TIER_LEVELS}"),
            );
            return None;
        }
        let mut levels: Vec<Level> = Vec::with_capacity(entries.len());
        let mut complete = true;
        let mut names: HashMap<&str, Pos> = HashMap::new();
        for entry in entries {
            let Some(level) = self.fields(entry, "a level", LEVEL_KEYS) else {
                complete = false;
                continue;
            };
            let required = |loader: &mut Self, key: &str| {
                let found = level.get(key).copied();
                if found.is_none() {
                    loader.error(entry.pos(), format!("level is missing required key `{key}`"));
                }
                found
            };
            let (tier_node, name_node, at_node) =
                (required(self, "tier"), required(self, "name"), required(self, "at"));
            let tier = tier_node.and_then(|n| {
                self.integer(n, "`tier`", 1, u64::from(u32::MAX))
                    .map(|t| (t as u32, n.pos()))
            });
            let name = name_node.and_then(|n| self.string(n, "`name`").map(|s| (s, n.pos())));
            let at = at_node.and_then(|n| self.positive(n, "`at`").map(|a| (a, n.pos())));
            if let Some((name, pos)) = name {
                match names.get(name) {
                    Some(first) => self.error(pos, format!("duplicate level name `{name}` (first at {first})")),
                    None => {
                        names.insert(name, pos);
                    }
                }
            }
            let (Some((tier, tier_pos)), Some((name, _)), Some((at, at_pos))) = (tier, name, at) else {
                complete = false;
                continue;
            };
            if let Some(prev) = levels.last() {
                if tier <= prev.tier {
                    self.error(
                        tier_pos,
                        format!("`tier` must be greater than the previous level's ({})", prev.tier),
                    );
                }
                if at <= prev.at {
                    self.error(
                        at_pos,
                        format!("`at` must be greater than the previous level's ({})", prev.at),
                    );
                }
            }
            levels.push(Level {
                tier,
                name: name.into(),
                at,
            });
        }
        let (metric, window) = by?;
        complete.then_some(Tiers { metric, window, levels })
    }

    /// `by: spend(W)` or `by: purchase_count(W)`.
    fn tier_by(&mut self, node: &Node) -> Option<(Metric, Window)> {
        let text = self.string(node, "`by`")?;
        let call = |name: &str| text.strip_prefix(name)?.strip_prefix('(')?.strip_suffix(')');
        let (metric, window) = match (call("spend"), call("purchase_count")) {
            (Some(w), _) => (Metric::Spend, w),
            (_, Some(w)) => (Metric::PurchaseCount, w),
            _ => {
                self.error(
                    node.pos(),
                    format!("`by` must be spend(W) or purchase_count(W), e.g. spend(365d), found `{text}`"),
                );
                return None;
            }
        };
        match Window::parse(window.trim()) {
            Ok(w) => Some((metric, w)),
            Err(message) => {
                self.error(node.pos(), message);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Unit;

    fn tiers() -> Tiers {
        let level = |tier, name: &str, at| Level {
            tier,
            name: name.into(),
            at,
        };
        Tiers {
            metric: Metric::Spend,
            window: Window {
                amount: 365,
                unit: Unit::Days,
            },
            levels: vec![
                level(1, "silver", 500.0),
                level(2, "gold", 2000.0),
                level(5, "platinum", 10000.0),
            ],
        }
    }

    #[test]
    fn a_level_is_reached_at_its_at_and_the_gap_is_to_the_next() {
        let t = tiers();
        let p = |v| {
            let p = t.preview(v);
            (
                p.tier,
                p.name.to_string(),
                p.next.map(|(n, s)| (n, s.to_string())),
                p.gap,
            )
        };
        assert_eq!(p(0.0), (0, "".into(), Some((1, "silver".into())), 500.0));
        assert_eq!(p(499.5), (0, "".into(), Some((1, "silver".into())), 0.5));
        assert_eq!(p(500.0), (1, "silver".into(), Some((2, "gold".into())), 1500.0));
        assert_eq!(p(1999.0), (1, "silver".into(), Some((2, "gold".into())), 1.0));
        assert_eq!(p(2000.0), (2, "gold".into(), Some((5, "platinum".into())), 8000.0));
        assert_eq!(p(10000.0), (5, "platinum".into(), None, 0.0));
        assert_eq!(p(1e12), (5, "platinum".into(), None, 0.0));
        assert_eq!(t.tier_of(9999.99), 2);
        assert_eq!(preview_tier(None, None, 0), 0);
        assert_eq!(preview_tier(Some(&t), None, 0), 0);
    }
}
