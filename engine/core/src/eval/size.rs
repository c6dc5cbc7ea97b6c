//! Audience sizes: how many known visitors of a shop match an expression,
//! by bitmap algebra over the index's columns.
//!
//! `and` intersects and stops on an empty set, `not x` is the universe minus
//! `x` (inside an `and`, a plain difference), `or` is a multi-way union.
//! Atoms are exact bitmaps where the columns allow (whole-day windows, tags,
//! tiers); otherwise a bitmap of candidates (the days the window touches, the
//! item's or category's visitors, the window's purchasers) is narrowed by
//! checking each candidate's profile.

use roaring::{MultiOps, RoaringBitmap};

use crate::event::{Action, ActionSet};
use crate::index::{Entry, Profile, ShopIndex, SHARDS, SHARD_BITS};
use crate::rules::expr::{Filter, Metric};
use crate::rules::plan::{Atom, Node, NodeId, Plan};
use crate::time::HourRange;

/// Evaluates expressions of one plan to bitmaps at one instant.
#[derive(Debug)]
pub struct SizeEval<'a> {
    plan: &'a Plan,
    shop: &'a ShopIndex,
    now_ms: i64,
    universe: RoaringBitmap,
    /// Each audience over the whole universe, once computed.
    memo: Vec<Option<RoaringBitmap>>,
    /// The cost of each audience's expression, once computed.
    costs: Vec<Option<Cost>>,
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
    /// An evaluator over `shop` at `now_ms`.
    pub fn new(plan: &'a Plan, shop: &'a ShopIndex, now_ms: i64) -> SizeEval<'a> {
        SizeEval {
            plan,
            shop,
            now_ms,
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
            Node::Atom(Atom::Metric { .. }) => Cost::Checked,
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
                        let Some(id) = shop.item(item).map(|info| info.id) else {
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
                    };
                    cmp.test(v, *value)
                };
                if cmp.test(0.0, *value) {
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
    expression: &str,
    now_ms: i64,
) -> Result<u64, SizeError> {
    size_of_with(rules, shop, expression, now_ms, &crate::rules::expr::Limits::default())
}

/// [`size_of`] with the expression within `limits`.
pub fn size_of_with(
    rules: Option<&crate::RuleSet>,
    shop: Option<&ShopIndex>,
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
    if plan.uses_ctx(root) {
        return Err(SizeError::UsesContext);
    }
    Ok(match shop {
        Some(shop) => SizeEval::new(&plan, shop, now_ms).bitmap(root).len(),
        None => 0,
    })
}

/// Each audience of the rule set with its current size (`None` for one that reads `ctx.`).
pub fn audience_sizes(rules: &crate::RuleSet, shop: Option<&ShopIndex>, now_ms: i64) -> Vec<(String, Option<u64>)> {
    let plan = &rules.plan;
    let mut eval = shop.map(|s| SizeEval::new(plan, s, now_ms));
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
