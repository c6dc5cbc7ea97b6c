//! Audience sizes: how many known visitors of a shop match an expression,
//! by bitmap algebra over the index's columns.
//!
//! `and` intersects and stops on an empty set, `not x` is the universe minus
//! `x` (inside an `and`, a plain difference), `or` is a multi-way union.
//! Atoms are exact bitmaps where the columns allow (whole-day windows, tags,
//! tiers); otherwise a bitmap of candidates (the days the window touches, the
//! item's or category's visitors, the window's purchasers) is narrowed by
//! checking each candidate's profile.
//!
//! Ranges are cut from the shop's clock (`crate::time`, "The clock-hour
//! frame"): `now` is converted once, when the evaluator is made.

use roaring::{MultiOps, RoaringBitmap};

use crate::claims::ClaimLedger;
use crate::event::{Action, ActionSet};
use crate::index::{Entry, Profile, ShopIndex, SHARDS, SHARD_BITS};
use crate::rules::expr::{Filter, Metric};
use crate::rules::plan::{Atom, Node, NodeId, Plan};
use crate::time::HourRange;

/// Evaluates expressions of one plan to bitmaps at one instant.
pub struct SizeEval<'a> {
    plan: &'a Plan,
    shop: &'a ShopIndex,
    /// Answers `claimed(...)`.
    ledger: &'a dyn ClaimLedger,
    /// The shop's clock at the instant sized for.
    now_ms: i64,
    universe: RoaringBitmap,
    /// Each audience over the whole universe, once computed.
    memo: Vec<Option<RoaringBitmap>>,
    /// The cost of each audience's expression, once computed.
    costs: Vec<Option<Cost>>,
}

impl std::fmt::Debug for SizeEval<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SizeEval")
            .field("shop", &self.shop.name())
            .field("now_ms", &self.now_ms)
            .field("universe", &self.universe.len())
            .finish_non_exhaustive()
    }
}

/// How an operand is computed, cheapest first: `and` evaluates its operands
/// in this order, so costly ones only see the visitors that remain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cost {
    /// A memoized audience or a constant.
    Known,
    /// Bitmap algebra only.
    Exact,
    /// Candidates narrowed by checking profiles.
    Checked,
}

impl<'a> SizeEval<'a> {
    /// An evaluator over `shop` (and its grants in `ledger`) at `now_ms`.
    pub fn new(plan: &'a Plan, shop: &'a ShopIndex, ledger: &'a dyn ClaimLedger, now_ms: i64) -> SizeEval<'a> {
        SizeEval {
            plan,
            shop,
            ledger,
            now_ms: shop.clock_ms(now_ms),
            universe: shop.universe(),
            memo: vec![None; plan.audiences().len()],
            costs: vec![None; plan.audiences().len()],
        }
    }

    /// The visitors matching the expression at `id`. Context atoms must have
    /// been ruled out by the caller; here they match nobody.
    pub fn bitmap(&mut self, id: NodeId) -> RoaringBitmap {
        let universe = self.universe.clone();
        self.eval(id, &universe)
    }

    /// The visitors in the audience with this slot.
    pub fn bitmap_of_audience(&mut self, slot: u32) -> RoaringBitmap {
        let universe = self.universe.clone();
        self.audience(slot, &universe)
    }

    /// The visitors of `scope` matching the expression at `id`.
    ///
    /// Recursive: the loader bounds the nesting depth of every expression
    /// with its audiences inlined, and so the stack.
    fn eval(&mut self, id: NodeId, scope: &RoaringBitmap) -> RoaringBitmap {
        if scope.is_empty() {
            return RoaringBitmap::new();
        }
        let plan = self.plan;
        match plan.node(id) {
            Node::Const(true) => scope.clone(),
            Node::Const(false) => RoaringBitmap::new(),
            Node::And(children) => {
                let mut order: Vec<(Cost, NodeId)> = children.iter().map(|&c| (self.cost(c), c)).collect();
                order.sort_by_key(|(cost, _)| *cost);
                let mut acc = scope.clone();
                for (_, c) in order {
                    if acc.is_empty() {
                        break;
                    }
                    acc = self.eval(c, &acc);
                }
                acc
            }
            Node::Or(children) => {
                let parts: Vec<RoaringBitmap> = children.iter().map(|&c| self.eval(c, scope)).collect();
                parts.union()
            }
            Node::Not(inner) => scope - self.eval(*inner, scope),
            Node::Audience(slot) => self.audience(*slot, scope),
            Node::Atom(atom) => self.atom(atom, scope),
        }
    }

    /// An audience is computed once, over every visitor, and then
    /// intersected with each scope it is asked for: evaluating it within
    /// each narrower scope would repeat the work once per path through the
    /// references, which is exponential in a file like
    /// `a_i: (tag("x") and a_{i+1}) or (tag("y") and a_{i+1})`.
    fn audience(&mut self, slot: u32, scope: &RoaringBitmap) -> RoaringBitmap {
        let s = slot as usize;
        if self.memo[s].is_none() {
            let root = self.plan.audiences()[s].root;
            let universe = self.universe.clone();
            let b = self.eval(root, &universe);
            self.memo[s] = Some(b);
        }
        match &self.memo[s] {
            Some(b) => b & scope,
            None => RoaringBitmap::new(),
        }
    }

    /// How costly the expression at `id` is; each audience's cost is computed once.
    fn cost(&mut self, id: NodeId) -> Cost {
        let plan = self.plan;
        match plan.node(id) {
            Node::Const(_) => Cost::Known,
            Node::And(xs) | Node::Or(xs) => xs.iter().map(|&x| self.cost(x)).max().unwrap_or(Cost::Known),
            Node::Not(x) => self.cost(*x),
            Node::Audience(slot) => {
                let s = *slot as usize;
                if self.memo[s].is_some() {
                    return Cost::Known;
                }
                if let Some(c) = self.costs[s] {
                    return c;
                }
                let c = self.cost(plan.audiences()[s].root);
                self.costs[s] = Some(c);
                c
            }
            Node::Atom(Atom::Behavior { window, filter, .. }) => {
                let whole_days = window.range(self.now_ms).whole_days();
                match filter {
                    None | Some(Filter::Category(_)) if whole_days => Cost::Exact,
                    _ => Cost::Checked,
                }
            }
            Node::Atom(Atom::Metric { .. } | Atom::DaysSince { .. } | Atom::PreviewTier { .. }) => Cost::Checked,
            Node::Atom(Atom::Offered { window, .. }) if window.range(self.now_ms).whole_days() => Cost::Exact,
            Node::Atom(Atom::Offered { .. } | Atom::Claimed { .. }) => Cost::Checked,
            Node::Atom(_) => Cost::Exact,
        }
    }

    fn atom(&self, atom: &Atom, scope: &RoaringBitmap) -> RoaringBitmap {
        let shop = self.shop;
        match atom {
            Atom::Behavior {
                actions,
                window,
                filter,
            } => {
                let range = window.range(self.now_ms);
                let actions = *actions;
                let is_action = move |e: &Entry| actions.contains(Action::BEHAVIORS[e.action as usize]);
                match filter {
                    None => {
                        let mut candidates = self.days(actions, range, None);
                        candidates &= scope;
                        if range.whole_days() {
                            return candidates;
                        }
                        self.retain(candidates, |p| p.has_action_in(actions, range))
                    }
                    Some(Filter::Category(cat)) => {
                        let Some(id) = shop.categories.get(cat) else {
                            return RoaringBitmap::new();
                        };
                        let mut candidates = self.days(actions, range, Some(id));
                        candidates &= scope;
                        if range.whole_days() {
                            return candidates;
                        }
                        self.retain(candidates, |p| p.any_entry(range, |e| e.category == id && is_action(e)))
                    }
                    Some(Filter::Item(item)) => {
                        let Some(id) = shop.item_id(item) else {
                            return RoaringBitmap::new();
                        };
                        let mut candidates = match shop.item_visitors.get(&id) {
                            Some(set) => set.value() & scope,
                            None => return RoaringBitmap::new(),
                        };
                        candidates &= self.days(actions, range, None);
                        self.retain(candidates, |p| p.any_entry(range, |e| e.item == id && is_action(e)))
                    }
                }
            }
            Atom::Metric {
                metric,
                window,
                cmp,
                value,
            } => {
                let range = window.range(self.now_ms);
                let mut buyers = self.days(ActionSet::one(Action::Purchase), range, None);
                buyers &= scope;
                let test = |p: &Profile| {
                    let (count, spend) = p.purchases_in(range);
                    let v = match metric {
                        Metric::PurchaseCount => f64::from(count),
                        Metric::Spend => spend,
                        Metric::AvgOrder if count == 0 => return false,
                        Metric::AvgOrder => spend / f64::from(count),
                    };
                    cmp.test(v, *value)
                };
                // `avg_order` is false without purchases, whatever it compares.
                if *metric != Metric::AvgOrder && cmp.test(0.0, *value) {
                    // Everyone without purchases matches: subtract the buyers who fail.
                    let failing = self.retain(buyers, |p| !test(p));
                    scope - failing
                } else {
                    self.retain(buyers, test)
                }
            }
            Atom::Tier { cmp, value } => {
                let tiers = shop.tier_visitors.read();
                let parts: Vec<&RoaringBitmap> = tiers
                    .iter()
                    .filter(|(t, _)| cmp.test(f64::from(**t), *value))
                    .map(|(_, b)| b)
                    .collect();
                let mut result = parts.into_iter().union();
                if cmp.test(0.0, *value) {
                    result |= scope - tiers.values().union();
                }
                result & scope
            }
            Atom::Tag(tag) => shop
                .tags
                .get(tag)
                .and_then(|id| shop.tag_visitors.get(&id).map(|b| b.value() & scope))
                .unwrap_or_default(),
            Atom::Ctx { .. } => RoaringBitmap::new(),
            Atom::DaysSince { actions, cmp, value } => {
                // Candidates: every visitor with an entry of the actions on
                // some day up to today; each one's latest entry decides.
                let today = crate::time::hour_of(self.now_ms) / 24;
                let mut candidates = self.days(
                    *actions,
                    HourRange {
                        first: 0,
                        last: today.saturating_mul(24).saturating_add(23),
                    },
                    None,
                );
                candidates &= scope;
                let now_ms = self.now_ms;
                self.retain(candidates, |p| {
                    crate::eval::decide::days_since(p, *actions, now_ms).is_some_and(|d| cmp.test(f64::from(d), *value))
                })
            }
            Atom::PreviewTier { cmp, value } => self.preview_tier(*cmp, *value, scope),
            Atom::Offered { window, offers } => {
                // Candidates from the day columns; exact for whole days,
                // else checked against the hours in the profiles.
                let range = window.range(self.now_ms);
                let (first, last) = range.days();
                let keys = crate::exposure::keys_of(shop, offers);
                let mut candidates = shop.exposures.union(keys.as_deref(), false, first, last);
                candidates &= scope;
                if range.whole_days() {
                    return candidates;
                }
                self.retain(candidates, |p| crate::exposure::offered_in(p, range, keys.as_deref()))
            }
            Atom::Claimed { window, offers } => {
                let Ok(benefits) = crate::exposure::claimed_ids(offers) else {
                    return RoaringBitmap::new();
                };
                let range = window.range(self.now_ms);
                let at = |t| crate::exposure::grant_in(shop.zone(), range, t);
                let mut ids = Vec::new();
                self.ledger.grantees(shop.name(), benefits, &at, &mut |v| {
                    if let Some(id) = shop.visitor_id(v) {
                        ids.push(id);
                    }
                });
                ids.sort_unstable();
                ids.dedup();
                RoaringBitmap::from_sorted_iter(ids).unwrap_or_default() & scope
            }
        }
    }

    /// `preview_tier CMP value`: the purchasers in the `by` window are
    /// checked profile by profile; everyone else has the tier a value of 0
    /// earns (tier 0), so matches as a whole or not at all.
    fn preview_tier(&self, cmp: crate::rules::expr::Cmp, value: f64, scope: &RoaringBitmap) -> RoaringBitmap {
        use crate::rules::tiers::preview_tier;
        let tiers = self.plan.tiers.as_deref();
        let now_ms = self.now_ms;
        let test = |p: &Profile| cmp.test(f64::from(preview_tier(tiers, Some(p), now_ms)), value);
        let zero = cmp.test(f64::from(preview_tier(tiers, None, now_ms)), value);
        let Some(t) = tiers else {
            return if zero { scope.clone() } else { RoaringBitmap::new() };
        };
        let mut buyers = self.days(ActionSet::one(Action::Purchase), t.window.range(now_ms), None);
        buyers &= scope;
        if zero {
            scope - self.retain(buyers, |p| !test(p))
        } else {
            self.retain(buyers, test)
        }
    }

    /// Union of the day bitmaps of `actions` (in `category`, if given) over
    /// the days `range` touches.
    fn days(&self, actions: ActionSet, range: HourRange, category: Option<u32>) -> RoaringBitmap {
        let (first, last) = range.days();
        let mut parts = Vec::new();
        match category {
            None => {
                for a in actions.iter() {
                    let days = self.shop.days[a as usize].read();
                    parts.push(days.range(first..=last).map(|(_, b)| b).union());
                }
            }
            Some(cat) => {
                if let Some(days) = self.shop.category_days.get(&cat) {
                    for a in actions.iter() {
                        parts.push(days[a as usize].range(first..=last).map(|(_, b)| b).union());
                    }
                }
            }
        }
        parts.union()
    }

    /// The candidates whose profile passes `keep`, checked shard by shard
    /// so that each shard's lock is taken once.
    fn retain(&self, candidates: RoaringBitmap, keep: impl Fn(&Profile) -> bool) -> RoaringBitmap {
        let mut by_shard: Vec<Vec<u32>> = vec![Vec::new(); SHARDS];
        for v in &candidates {
            by_shard[v as usize & (SHARDS - 1)].push(v);
        }
        let mut kept = Vec::new();
        for (shard, ids) in by_shard.iter().enumerate().filter(|(_, ids)| !ids.is_empty()) {
            self.shop.with_shard(shard, |profiles| {
                kept.extend(
                    ids.iter()
                        .copied()
                        .filter(|&v| profiles.get((v >> SHARD_BITS) as usize).is_some_and(&keep)),
                );
            });
        }
        kept.sort_unstable();
        RoaringBitmap::from_sorted_iter(kept).unwrap_or_default()
    }
}

/// Why an expression cannot be sized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// The expression does not parse.
    #[error("column {column}: {message}")]
    Syntax {
        /// 1-based column in the expression.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// It names an audience the shop's rule set does not define.
    #[error("column {column}: undefined audience `{name}`")]
    UndefinedAudience {
        /// 1-based column in the expression.
        column: usize,
        /// The name.
        name: String,
    },
    /// It reads the request context, which a population does not have.
    #[error("the expression reads `ctx.`, directly or through an audience; sizes count visitors, not requests")]
    UsesContext,
}

/// The 1-based column (in characters) of a byte offset, on a character
/// boundary or not.
fn column(text: &str, offset: usize) -> usize {
    text.char_indices().take_while(|&(i, _)| i < offset).count() + 1
}

/// How many known visitors of the shop match `expression` (an audience name
/// or any expression without `ctx.` atoms) at `now_ms`, the expression
/// within the default [`crate::rules::expr::Limits`].
pub fn size_of(
    rules: Option<&crate::RuleSet>,
    shop: Option<&ShopIndex>,
    ledger: &dyn ClaimLedger,
    expression: &str,
    now_ms: i64,
) -> Result<u64, SizeError> {
    size_of_with(
        rules,
        shop,
        ledger,
        expression,
        now_ms,
        &crate::rules::expr::Limits::default(),
    )
}

/// [`size_of`] with the expression within `limits`.
pub fn size_of_with(
    rules: Option<&crate::RuleSet>,
    shop: Option<&ShopIndex>,
    ledger: &dyn ClaimLedger,
    expression: &str,
    now_ms: i64,
    limits: &crate::rules::expr::Limits,
) -> Result<u64, SizeError> {
    let expr = crate::rules::expr::parse_with(expression, limits).map_err(|e| SizeError::Syntax {
        column: column(expression, e.offset),
        message: e.message,
    })?;
    let mut plan = rules.map(|r| r.plan.clone()).unwrap_or_default();
    let mut undefined = None;
    expr.walk(&mut |e| {
        if let crate::rules::expr::Expr::Ref { name, span } = e {
            if undefined.is_none() && plan.audience(name).is_none() {
                undefined = Some(SizeError::UndefinedAudience {
                    column: column(expression, span.start),
                    name: name.clone(),
                });
            }
        }
    });
    if let Some(e) = undefined {
        return Err(e);
    }
    let root = plan.compile(&expr);
    if let Some(rules) = rules {
        plan.resolve_kinds(rules.benefits.iter().map(|b| (&b.id, &*b.kind)));
    }
    if plan.uses_ctx(root) {
        return Err(SizeError::UsesContext);
    }
    Ok(match shop {
        Some(shop) => SizeEval::new(&plan, shop, ledger, now_ms).bitmap(root).len(),
        None => 0,
    })
}

/// Each audience of the rule set with its current size (`None` for one that reads `ctx.`).
pub fn audience_sizes(
    rules: &crate::RuleSet,
    shop: Option<&ShopIndex>,
    ledger: &dyn ClaimLedger,
    now_ms: i64,
) -> Vec<(String, Option<u64>)> {
    let plan = &rules.plan;
    let mut eval = shop.map(|s| SizeEval::new(plan, s, ledger, now_ms));
    plan.audiences()
        .iter()
        .enumerate()
        .map(|(slot, a)| {
            let size = (!a.uses_ctx).then(|| match eval.as_mut() {
                Some(e) => e.bitmap_of_audience(slot as u32).len(),
                None => 0,
            });
            (a.name.to_string(), size)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::MemoryLedger;
    use crate::eval::decide::{decide, DecideRequest};
    use crate::event::{Event, Fields};
    use crate::index::Index;
    use crate::RuleSet;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    /// 2026-11-10T15:45:00Z: mid-hour, so partial windows have partial hours.
    const NOW: i64 = 1_794_325_500_000;

    fn fields(shop: &str, visitor: &str, action: &str, ts: i64) -> Fields<'static> {
        Fields {
            shop: Some(shop.to_string().into()),
            visitor: Some(visitor.to_string().into()),
            action: Some(action.to_string().into()),
            ts: Some(ts),
            ..Fields::default()
        }
    }

    fn item(shop: &str, visitor: &str, action: &str, item: &str, category: &str, ts: i64) -> Fields<'static> {
        Fields {
            item: Some(item.to_string().into()),
            category: Some(category.to_string().into()),
            ..fields(shop, visitor, action, ts)
        }
    }

    /// Six visitors of shop `s` (and one of shop `t`, who must never count):
    /// a viewed tops an hour ago and is tagged vip; b carted shoes 2 days
    /// ago and has tier 3; c bought tops (50) 3 days ago and sku-3 (200) 10
    /// days ago and is tagged vip; d viewed shoes 20 days ago and has tier 5;
    /// e favorited 40 days ago; f only has an `other` tag.
    fn index() -> Index {
        let index = Index::new();
        let events = [
            item("s", "a", "view", "sku-1", "tops", NOW - HOUR),
            Fields {
                tag: Some("vip".into()),
                ..fields("s", "a", "tag", NOW - DAY)
            },
            item("s", "b", "cart", "sku-2", "shoes", NOW - 2 * DAY),
            Fields {
                tier: Some(3),
                ..fields("s", "b", "member", NOW - DAY)
            },
            Fields {
                price: Some(50.0),
                ..item("s", "c", "purchase", "sku-1", "tops", NOW - 3 * DAY)
            },
            Fields {
                price: Some(200.0),
                ..item("s", "c", "purchase", "sku-3", "shoes", NOW - 10 * DAY)
            },
            Fields {
                tag: Some("vip".into()),
                ..fields("s", "c", "tag", NOW - DAY)
            },
            item("s", "d", "view", "sku-3", "shoes", NOW - 20 * DAY),
            Fields {
                tier: Some(5),
                ..fields("s", "d", "member", NOW - DAY)
            },
            item("s", "e", "favorite", "sku-2", "shoes", NOW - 40 * DAY),
            Fields {
                tag: Some("other".into()),
                ..fields("s", "f", "tag", NOW - DAY)
            },
            Fields {
                tag: Some("vip".into()),
                ..fields("t", "z", "tag", NOW - DAY)
            },
            item("t", "z", "view", "sku-1", "tops", NOW - HOUR),
        ];
        for f in events {
            index.apply(&Event::validate(f).unwrap());
        }
        index
    }

    /// Brute force: one decision per known visitor, through the per-visitor
    /// evaluator, with the expression as the only banner's `when`.
    fn brute_force(shop: &ShopIndex, expression: &str) -> u64 {
        let rules = RuleSet::load(&format!("shop: s\nbanners:\n  - when: {expression}\n    banner: yes\n")).unwrap();
        ["a", "b", "c", "d", "e", "f"]
            .iter()
            .filter(|v| {
                let req = DecideRequest {
                    visitor: v,
                    now_ms: NOW,
                    ..DecideRequest::default()
                };
                decide(&rules, Some(shop), &MemoryLedger::new(), &req).banner == Some("yes")
            })
            .count() as u64
    }

    #[test]
    fn each_operator_counts_what_a_visitor_by_visitor_check_counts() {
        let index = index();
        let shop = index.shop("s").unwrap();
        assert_eq!(shop.visitor_count(), 6);
        let cases: [(&str, u64); 24] = [
            ("true", 6),
            ("false", 0),
            (r#"tag("vip")"#, 2),
            (r#"tag("nobody")"#, 0),
            (r#"not tag("vip")"#, 4),
            (r#"not not tag("vip")"#, 2),
            ("visited(1d)", 1),
            ("visited(12h)", 1),
            ("visited(7d)", 3),
            ("visited(30d)", 4),
            ("not visited(30d)", 2),
            (r#"viewed(30d, category="shoes")"#, 1),
            (r#"viewed(30d, category="tops")"#, 1),
            (r#"visited(30d, category="shoes")"#, 3),
            (r#"purchased(30d, item="sku-1")"#, 1),
            (r#"viewed(30d, item="sku-1")"#, 1),
            ("purchase_count(30d) >= 2", 1),
            ("spend(30d) < 100", 5),
            ("member_tier >= 4", 1),
            ("member_tier < 4", 5),
            (r#"tag("vip") and visited(1d)"#, 1),
            (r#"tag("vip") or member_tier >= 4"#, 3),
            (r#"tag("vip") and not visited(1d)"#, 1),
            (
                r#"not (tag("vip") or visited(7d)) and (carted(60d) or favorited(60d) or true)"#,
                3,
            ),
        ];
        for (expression, want) in cases {
            let got = size_of(None, Some(&shop), &MemoryLedger::new(), expression, NOW).unwrap();
            assert_eq!(
                (got, brute_force(&shop, expression)),
                (want, want),
                "{expression}: (size, brute force)"
            );
        }
    }

    #[test]
    fn not_is_the_complement_within_the_shops_known_visitors() {
        let index = index();
        let shop = index.shop("s").unwrap();
        let mut plan = Plan::default();
        let tag = plan.compile(&crate::rules::expr::parse(r#"tag("vip")"#).unwrap());
        let not_tag = plan.compile(&crate::rules::expr::parse(r#"not tag("vip")"#).unwrap());
        let ledger = MemoryLedger::new();
        let mut eval = SizeEval::new(&plan, &shop, &ledger, NOW);
        let (yes, no) = (eval.bitmap(tag), eval.bitmap(not_tag));
        assert!(yes.is_disjoint(&no));
        assert_eq!(&yes | &no, shop.universe());
        let ids = |names: &[&str]| -> RoaringBitmap { names.iter().map(|n| shop.visitor_id(n).unwrap()).collect() };
        assert_eq!(no, ids(&["b", "d", "e", "f"]));
        // Shop t's vip is not one of s's visitors, and t has its own universe.
        let t = index.shop("t").unwrap();
        assert_eq!(
            size_of(None, Some(&t), &MemoryLedger::new(), r#"not tag("vip")"#, NOW),
            Ok(0)
        );
        assert_eq!(
            size_of(None, None, &MemoryLedger::new(), r#"not tag("vip")"#, NOW),
            Ok(0)
        );
    }

    #[test]
    fn audiences_are_sized_by_name_and_inside_expressions() {
        let index = index();
        let shop = index.shop("s").unwrap();
        let rules = RuleSet::load(
            "shop: s\naudiences:\n  vip: tag(\"vip\")\n  recent: visited(7d)\n  both: vip and recent\n  south: ctx.region == \"south\"\n",
        )
        .unwrap();
        assert_eq!(
            size_of(Some(&rules), Some(&shop), &MemoryLedger::new(), "both", NOW),
            Ok(2)
        );
        assert_eq!(
            size_of(Some(&rules), Some(&shop), &MemoryLedger::new(), "not both", NOW),
            Ok(4)
        );
        assert_eq!(
            size_of(Some(&rules), Some(&shop), &MemoryLedger::new(), "vip or recent", NOW),
            Ok(3)
        );
        assert_eq!(
            audience_sizes(&rules, Some(&shop), &MemoryLedger::new(), NOW),
            [
                ("vip".to_string(), Some(2)),
                ("recent".to_string(), Some(3)),
                ("both".to_string(), Some(2)),
                ("south".to_string(), None),
            ]
        );
        assert_eq!(
            size_of(Some(&rules), Some(&shop), &MemoryLedger::new(), "south", NOW),
            Err(SizeError::UsesContext)
        );
        assert_eq!(
            size_of(Some(&rules), Some(&shop), &MemoryLedger::new(), "vip and nope", NOW),
            Err(SizeError::UndefinedAudience {
                column: 9,
                name: "nope".into()
            })
        );
    }

    #[test]
    fn and_evaluates_exact_operands_before_checked_ones() {
        let mut plan = Plan::default();
        let mut cost_of = |text: &str| {
            let id = plan.compile(&crate::rules::expr::parse(text).unwrap());
            (id, text.to_string())
        };
        let cases = [
            cost_of("true"),
            cost_of(r#"tag("x")"#),
            cost_of("visited(7d)"),
            cost_of("visited(12h)"),
            cost_of(r#"visited(7d, item="i")"#),
            cost_of("spend(7d) > 1"),
            cost_of(r#"not tag("x") or spend(7d) > 1"#),
        ];
        let shop = ShopIndex::new("s");
        let ledger = MemoryLedger::new();
        let mut eval = SizeEval::new(&plan, &shop, &ledger, NOW);
        let costs: Vec<Cost> = cases.iter().map(|(id, _)| eval.cost(*id)).collect();
        assert_eq!(
            costs,
            [
                Cost::Known,
                Cost::Exact,
                Cost::Exact,
                Cost::Checked,
                Cost::Checked,
                Cost::Checked,
                Cost::Checked
            ]
        );
    }

    #[test]
    fn error_columns_count_characters_not_bytes() {
        assert_eq!(column("abc", 0), 1);
        assert_eq!(column("abc", 2), 3);
        assert_eq!(column("éé x", 4), 3, "two 2-byte characters before byte 4");
        assert_eq!(column("é", 1), 2, "inside a character: after it");
        // `?` is the 14th character and the 15th byte.
        match size_of(None, None, &MemoryLedger::new(), "tag(\"é\") and ?", NOW) {
            Err(SizeError::Syntax { column, .. }) => assert_eq!(column, 14),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }
}
