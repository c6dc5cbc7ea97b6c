//! Decisions: banner, items and benefit for one visitor, and claims.
//!
//! A decision reads the rule set and the visitor's profile under one shard
//! read lock and allocates only its answer (and, with `explain`, the
//! explanation). Everything it returns borrows from the rule set.

use std::collections::HashMap;

use crate::claims::{ClaimLedger, ClaimOutcome, LedgerClaim, LedgerError};
use crate::event::Action;
use crate::hash::held_out;
use crate::index::{Profile, ShopIndex, NONE};
use crate::rules::plan::{Atom, CtxKey, Facts, Memo, NodeId};
use crate::rules::{Benefit, RuleSet, MAX_ITEM_LIMIT};
use crate::time::{Unit, Window};

/// How far back the visitor's carts, favorites and category views shape the ranking.
pub const AFFINITY_WINDOW: Window = Window {
    amount: 30,
    unit: Unit::Days,
};

/// The request's context (CONTRACT section 4); a missing value is "".
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// Page type, e.g. `home`, `item`.
    pub page: &'a str,
    /// The item the page shows.
    pub item: &'a str,
    /// Region, e.g. `south`.
    pub region: &'a str,
    /// Device, e.g. `mobile`.
    pub device: &'a str,
    /// Traffic channel.
    pub channel: &'a str,
    /// Any other `ctx.NAME`.
    pub attributes: Option<&'a HashMap<String, String>>,
}

impl Context<'_> {
    /// The value an atom reads.
    pub fn get(&self, key: &CtxKey) -> &str {
        match key {
            CtxKey::Page => self.page,
            CtxKey::Item => self.item,
            CtxKey::Region => self.region,
            CtxKey::Device => self.device,
            CtxKey::Channel => self.channel,
            CtxKey::Attr(name) => self.attributes.and_then(|a| a.get(&**name)).map_or("", String::as_str),
        }
    }
}

/// A decision request for a shop whose rule set and index the caller holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecideRequest<'a> {
    /// Visitor id; empty for an anonymous visitor.
    pub visitor: &'a str,
    /// Request context.
    pub context: Context<'a>,
    /// Items wanted; 0 = the file's limit.
    pub item_limit: u32,
    /// Whether to explain the decision.
    pub explain: bool,
    /// The instant to decide at (ms since the epoch).
    pub now_ms: i64,
}

/// Why an item is in the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemReason {
    /// Completes the item in the request's context.
    Complement,
    /// The visitor carted it (within 30 days) and has not bought it.
    InCart,
    /// The visitor favorited it (within 30 days) and has not bought it.
    Favorited,
    /// The visitor viewed its category within 30 days.
    ViewedCategory,
    /// Bought by the shop's buyers in the last 7 days.
    Popular,
    /// From a matching pool, in the author's order.
    Pool,
}

impl ItemReason {
    /// The short reason sent to the renderer.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemReason::Complement => "complement",
            ItemReason::InCart => "in_cart",
            ItemReason::Favorited => "favorited",
            ItemReason::ViewedCategory => "viewed_category",
            ItemReason::Popular => "popular",
            ItemReason::Pool => "pool",
        }
    }
}

/// One recommended item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick<'r> {
    /// Item id.
    pub id: &'r str,
    /// Why it is there.
    pub reason: ItemReason,
}

/// Which part of the answer an explanation step is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The banner.
    Banner,
    /// The items.
    Items,
    /// The benefit.
    Benefit,
}

/// What happened to one entry of the rule file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepOutcome {
    /// This entry decided the slot.
    Chosen,
    /// This entry contributed candidates (pools, complements).
    Contributed,
    /// Its `when` did not hold.
    NotMatched,
    /// Now is outside the benefit's starts/ends.
    OutsideWindow,
    /// The visitor is in the benefit's control group.
    HeldOut,
    /// The visitor reached the benefit's cap.
    CapReached,
    /// The benefit's budget is spent.
    BudgetExhausted,
    /// A capped benefit cannot be offered to an anonymous visitor.
    NeedsVisitor,
}

impl StepOutcome {
    /// Every outcome, for pre-registering metrics.
    pub const ALL: [StepOutcome; 8] = [
        StepOutcome::Chosen,
        StepOutcome::Contributed,
        StepOutcome::NotMatched,
        StepOutcome::OutsideWindow,
        StepOutcome::HeldOut,
        StepOutcome::CapReached,
        StepOutcome::BudgetExhausted,
        StepOutcome::NeedsVisitor,
    ];

    /// Human words for the outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Chosen => "chosen",
            StepOutcome::Contributed => "contributed",
            StepOutcome::NotMatched => "not matched",
            StepOutcome::OutsideWindow => "outside window",
            StepOutcome::HeldOut => "held out",
            StepOutcome::CapReached => "cap reached",
            StepOutcome::BudgetExhausted => "budget exhausted",
            StepOutcome::NeedsVisitor => "needs a visitor id",
        }
    }
}

/// One line of an explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The slot.
    pub slot: Slot,
    /// The entry, e.g. `banners[1]`, `pools[0]`, `complements`, `benefits[2] cart-coupon-10`.
    pub entry: String,
    /// What happened.
    pub outcome: StepOutcome,
}

/// Why the decision is what it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explanation {
    /// Every audience of the file the visitor matches, in file order.
    pub audiences: Vec<String>,
    /// Entry by entry, slot by slot.
    pub steps: Vec<Step>,
}

/// The answer to a decision request.
#[derive(Debug, Clone, Default)]
pub struct Decision<'r> {
    /// Banner id, if an entry matched.
    pub banner: Option<&'r str>,
    /// Items, best first.
    pub items: Vec<Pick<'r>>,
    /// The benefit on offer, if any.
    pub benefit: Option<&'r Benefit>,
    /// Present when asked for.
    pub explanation: Option<Explanation>,
}

/// The leaf tests for one visitor: their profile plus the request context.
struct VisitorFacts<'a> {
    shop: Option<&'a ShopIndex>,
    profile: Option<&'a Profile>,
    context: &'a Context<'a>,
    now_ms: i64,
}

impl Facts for VisitorFacts<'_> {
    fn atom(&self, atom: &Atom) -> bool {
        use crate::rules::expr::{Filter, Metric};
        match atom {
            Atom::Ctx { key, test } => test.test(self.context.get(key)),
            Atom::Tier { cmp, value } => {
                let tier = self.profile.map_or(0, Profile::tier);
                cmp.test(f64::from(tier), *value)
            }
            Atom::Metric {
                metric,
                window,
                cmp,
                value,
            } => {
                let (count, spend) = self
                    .profile
                    .map_or((0, 0.0), |p| p.purchases_in(window.range(self.now_ms)));
                let v = match metric {
                    Metric::PurchaseCount => f64::from(count),
                    Metric::Spend => spend,
                };
                cmp.test(v, *value)
            }
            Atom::Tag(tag) => match (self.profile, self.shop) {
                (Some(p), Some(shop)) => shop.tags.get(tag).is_some_and(|id| p.has_tag(id)),
                _ => false,
            },
            Atom::Behavior {
                actions,
                window,
                filter,
            } => {
                let (Some(p), Some(shop)) = (self.profile, self.shop) else {
                    return false;
                };
                let range = window.range(self.now_ms);
                let actions = *actions;
                let of_action = |e: &crate::index::Entry| actions.contains(Action::BEHAVIORS[e.action as usize]);
                match filter {
                    None => p.has_action_in(actions, range),
                    Some(Filter::Item(item)) => match shop.item(item).map(|i| i.id) {
                        Some(id) => p.any_entry(range, |e| e.item == id && of_action(e)),
                        None => false,
                    },
                    Some(Filter::Category(cat)) => match shop.categories.get(cat) {
                        Some(id) => p.any_entry(range, |e| e.category == id && of_action(e)),
                        None => false,
                    },
                }
            }
        }
    }
}

/// Decides banner, items and benefit for one visitor of the rule set's shop.
///
/// `shop` is the shop's index (`None` when it has seen no events yet).
pub fn decide<'r>(
    rules: &'r RuleSet,
    shop: Option<&ShopIndex>,
    ledger: &dyn ClaimLedger,
    req: &DecideRequest<'_>,
) -> Decision<'r> {
    let vid = if req.visitor.is_empty() {
        None
    } else {
        shop.and_then(|s| s.visitor_id(req.visitor))
    };
    match (shop, vid) {
        (Some(s), Some(id)) => s.with_profile(id, |profile| decide_with(rules, shop, profile, ledger, req)),
        _ => decide_with(rules, shop, None, ledger, req),
    }
}

fn decide_with<'r>(
    rules: &'r RuleSet,
    shop: Option<&ShopIndex>,
    profile: Option<&Profile>,
    ledger: &dyn ClaimLedger,
    req: &DecideRequest<'_>,
) -> Decision<'r> {
    let facts = VisitorFacts {
        shop,
        profile,
        context: &req.context,
        now_ms: req.now_ms,
    };
    let plan = &rules.plan;
    let mut memo = Memo::new(plan.audiences().len());
    let mut steps = req.explain.then(Vec::new);
    let mut step = |slot: Slot, entry: &dyn Fn() -> String, outcome: StepOutcome| {
        if let Some(steps) = steps.as_mut() {
            steps.push(Step {
                slot,
                entry: entry(),
                outcome,
            });
        }
    };
    let matches = |when: Option<NodeId>, memo: &mut Memo| when.is_none_or(|w| plan.eval(w, &facts, memo));

    // Banner: the first entry whose `when` holds.
    let mut banner = None;
    for (i, b) in rules.banners.iter().enumerate() {
        if matches(b.when, &mut memo) {
            banner = Some(&*b.id);
            step(Slot::Banner, &|| format!("banners[{i}] {}", b.id), StepOutcome::Chosen);
            break;
        }
        step(
            Slot::Banner,
            &|| format!("banners[{i}] {}", b.id),
            StepOutcome::NotMatched,
        );
    }

    // Items: complements, then the matching pools' items, ranked.
    let items = &rules.items;
    let limit = match req.item_limit {
        0 => items.limit,
        n => n.min(MAX_ITEM_LIMIT),
    } as usize;
    let signals = Signals::of(shop, profile, items.exclude_purchased, req.now_ms);
    let context_item = req.context.item;
    let mut picks: Vec<Pick<'r>> = Vec::with_capacity(limit);
    let taken = |picks: &[Pick<'_>], id: &str| picks.iter().any(|p| p.id == id);
    if !context_item.is_empty() {
        if let Some(complements) = items.complements.get(context_item) {
            for id in complements {
                if picks.len() < limit
                    && id.as_ref() != context_item
                    && !taken(&picks, id)
                    && signals.judge(id).is_some()
                {
                    picks.push(Pick {
                        id,
                        reason: ItemReason::Complement,
                    });
                }
            }
            step(
                Slot::Items,
                &|| format!("complements of {context_item}"),
                StepOutcome::Contributed,
            );
        }
    }
    let mut ranked: Vec<(ItemReason, u32, usize, &'r str)> = Vec::new();
    for (i, pool) in items.pools.iter().enumerate() {
        if !matches(pool.when, &mut memo) {
            step(Slot::Items, &|| format!("pools[{i}]"), StepOutcome::NotMatched);
            continue;
        }
        step(Slot::Items, &|| format!("pools[{i}]"), StepOutcome::Contributed);
        for id in &pool.items {
            if id.as_ref() == context_item || taken(&picks, id) || ranked.iter().any(|r| r.3 == id.as_ref()) {
                continue;
            }
            let Some((reason, strength)) = signals.judge(id) else {
                continue;
            };
            ranked.push((reason, u32::MAX - strength, ranked.len(), id));
        }
    }
    ranked.sort_unstable();
    picks.extend(
        ranked
            .into_iter()
            .take(limit.saturating_sub(picks.len()))
            .map(|(reason, _, _, id)| Pick { id, reason }),
    );

    // Benefit: the first eligible one.
    let mut benefit = None;
    for (i, b) in rules.benefits.iter().enumerate() {
        let outcome = if !matches(b.when, &mut memo) {
            StepOutcome::NotMatched
        } else {
            offer(rules, b, req.visitor, req.now_ms, ledger)
        };
        step(Slot::Benefit, &|| format!("benefits[{i}] {}", b.id), outcome);
        if outcome == StepOutcome::Chosen {
            benefit = Some(b);
            break;
        }
    }

    let explanation = steps.map(|steps| Explanation {
        audiences: plan
            .audiences()
            .iter()
            .enumerate()
            .filter(|(slot, _)| plan.eval_audience(*slot as u32, &facts, &mut memo))
            .map(|(_, a)| a.name.to_string())
            .collect(),
        steps,
    });
    Decision {
        banner,
        items: picks,
        benefit,
        explanation,
    }
}

/// Whether a matching benefit can be offered now, short of its audience.
fn offer(rules: &RuleSet, b: &Benefit, visitor: &str, now_ms: i64, ledger: &dyn ClaimLedger) -> StepOutcome {
    if !b.in_window(now_ms) {
        return StepOutcome::OutsideWindow;
    }
    if visitor.is_empty() && b.cap.is_some() {
        return StepOutcome::NeedsVisitor;
    }
    if held_out(&rules.shop, &b.id, visitor, b.holdout_bp) {
        return StepOutcome::HeldOut;
    }
    if b.cap.is_some() || b.budget.is_some() {
        let since = b.cap.map(|c| now_ms.saturating_sub(c.window.millis()));
        let usage = ledger.usage(&rules.shop, &b.id, visitor, since);
        if b.cap.is_some_and(|c| usage.visitor_in_window >= c.per_visitor) {
            return StepOutcome::CapReached;
        }
        if b.budget.is_some_and(|budget| usage.total >= budget) {
            return StepOutcome::BudgetExhausted;
        }
    }
    StepOutcome::Chosen
}

/// What the visitor's recent history says about items.
#[derive(Default)]
struct Signals<'a> {
    shop: Option<&'a ShopIndex>,
    today: u32,
    /// (item id, bit 0 carted, bit 1 favorited, bit 2 bought) within the affinity window.
    items: Vec<(u32, u8)>,
    /// (category id, views) within the affinity window.
    categories: Vec<(u32, u32)>,
    /// Item ids bought within `exclude_purchased`.
    excluded: Vec<u32>,
}

const CARTED: u8 = 1;
const FAVORITED: u8 = 2;
const BOUGHT: u8 = 4;

impl<'a> Signals<'a> {
    fn of(shop: Option<&'a ShopIndex>, profile: Option<&Profile>, exclude: Option<Window>, now_ms: i64) -> Signals<'a> {
        let mut s = Signals {
            shop,
            today: ShopIndex::today(now_ms),
            ..Signals::default()
        };
        let Some(p) = profile else { return s };
        if let Some(w) = exclude {
            let range = w.range(now_ms);
            s.excluded = p
                .purchases
                .iter()
                .filter(|b| range.contains(b.hour))
                .map(|b| b.item)
                .collect();
        }
        let range = AFFINITY_WINDOW.range(now_ms);
        p.any_entry(range, |e| {
            let flag = match Action::BEHAVIORS[e.action as usize] {
                Action::Cart => CARTED,
                Action::Favorite => FAVORITED,
                Action::Purchase => BOUGHT,
                _ => 0,
            };
            if flag != 0 {
                s.items.push((e.item, flag));
            } else if e.category != NONE {
                match s.categories.iter_mut().find(|(c, _)| *c == e.category) {
                    Some((_, n)) => *n += 1,
                    None => s.categories.push((e.category, 1)),
                }
            }
            false
        });
        // Sorted by item with flags merged, for binary search.
        s.items.sort_unstable_by_key(|(i, _)| *i);
        s.items.dedup_by(|(item, flag), (kept, kept_flag)| {
            let same = item == kept;
            if same {
                *kept_flag |= *flag;
            }
            same
        });
        s
    }

    /// The item's rank class and strength within the class, or `None` when
    /// the visitor bought it within `exclude_purchased`. One index lookup.
    fn judge(&self, item: &str) -> Option<(ItemReason, u32)> {
        let Some(info) = self.shop.and_then(|s| s.item(item)) else {
            return Some((ItemReason::Pool, 0));
        };
        if self.excluded.contains(&info.id) {
            return None;
        }
        let flags = self
            .items
            .binary_search_by_key(&info.id, |(i, _)| *i)
            .map_or(0, |at| self.items[at].1);
        if flags & BOUGHT == 0 {
            if flags & CARTED != 0 {
                return Some((ItemReason::InCart, 0));
            }
            if flags & FAVORITED != 0 {
                return Some((ItemReason::Favorited, 0));
            }
        }
        let category = info.category();
        if let Some((_, views)) = self.categories.iter().find(|(c, _)| *c == category && category != NONE) {
            return Some((ItemReason::ViewedCategory, *views));
        }
        Some(match info.popularity(self.today) {
            0 => (ItemReason::Pool, 0),
            n => (ItemReason::Popular, n),
        })
    }
}

/// A claim of a benefit by a visitor.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimRequest<'a> {
    /// Visitor id (required).
    pub visitor: &'a str,
    /// Benefit id.
    pub benefit: &'a str,
    /// The claim's instant (ms).
    pub now_ms: i64,
    /// Makes retries idempotent.
    pub claim_id: Option<&'a str>,
    /// Context for benefits whose audience reads `ctx.`.
    pub context: Context<'a>,
}

/// A claim that could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The rule set has no such benefit.
    #[error("unknown benefit `{0}`")]
    UnknownBenefit(String),
    /// Claims need a visitor id.
    #[error("a claim needs a visitor id")]
    MissingVisitor,
    /// The ledger failed; nothing was granted.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Grants a benefit if the visitor is eligible now and cap and budget allow, atomically:
/// [`prepare_claim`], then the ledger.
pub fn claim(
    rules: &RuleSet,
    shop: Option<&ShopIndex>,
    ledger: &dyn ClaimLedger,
    req: &ClaimRequest<'_>,
) -> Result<ClaimOutcome, ClaimError> {
    Ok(ledger.claim(&prepare_claim(rules, shop, req)?)?)
}

/// What only the replica that takes a claim can check (the benefit exists,
/// the visitor is in its audience at the claim's instant, its window, the
/// holdout), as the ledger call that decides the rest (cap, budget,
/// `claim_id`). A failed check is the claim's `denied` outcome.
pub fn prepare_claim<'a>(
    rules: &'a RuleSet,
    shop: Option<&ShopIndex>,
    req: &ClaimRequest<'a>,
) -> Result<LedgerClaim<'a>, ClaimError> {
    let b = rules
        .benefit(req.benefit)
        .ok_or_else(|| ClaimError::UnknownBenefit(req.benefit.to_string()))?;
    if req.visitor.is_empty() {
        return Err(ClaimError::MissingVisitor);
    }
    let vid = shop.and_then(|s| s.visitor_id(req.visitor));
    let eligible = |profile: Option<&Profile>| {
        let facts = VisitorFacts {
            shop,
            profile,
            context: &req.context,
            now_ms: req.now_ms,
        };
        b.when
            .is_none_or(|w| rules.plan.eval(w, &facts, &mut Memo::new(rules.plan.audiences().len())))
    };
    let in_audience = match (shop, vid) {
        (Some(s), Some(id)) => s.with_profile(id, eligible),
        _ => eligible(None),
    };
    let denied = if !b.in_window(req.now_ms) {
        Some(ClaimOutcome::OutsideWindow)
    } else if !in_audience {
        Some(ClaimOutcome::NotEligible)
    } else if held_out(&rules.shop, &b.id, req.visitor, b.holdout_bp) {
        Some(ClaimOutcome::HeldOut)
    } else {
        None
    };
    Ok(LedgerClaim {
        shop: &rules.shop,
        benefit: &b.id,
        visitor: req.visitor,
        now_ms: req.now_ms,
        claim_id: req.claim_id,
        cap: b.cap.map(|c| (c.per_visitor, c.window.millis())),
        budget: b.budget,
        denied,
    })
}
