//! Decisions: banner, items and benefit for one visitor, and claims.
//!
//! A decision reads the rule set and the visitor's profile under one shard
//! read lock and allocates only its answer: the items and held-out lists
//! and, with `explain`, the explanation's lists and strings, each once at
//! its final size. Its working memory (the audience memo, the visitor's
//! item signals, the ranked candidates) is a per-thread [`Scratch`] reused
//! from decision to decision, trimmed back to [`SCRATCH_KEEP`] elements per
//! buffer after one that needed more; candidates are compared by the
//! rule-local ids of [`crate::rules::catalog`], not by string, and an
//! item's facts are read through the id the catalog caches for it in the
//! shop's item table (`crate::index::items`), without hashing its name or
//! taking a lock.
//! The visitor's latest hour of each action (what most behavior atoms need
//! to answer) is decoded from the profile's head by the first behavior atom
//! of a decision and kept for its other atoms.
//! `benches/tests/alloc.rs` counts the allocations with a counting global
//! allocator. One exception: `claimed(WINDOW)` without a filter iterates the
//! claim ledger's map of benefits, whose iterator allocates (see that test).
//! Everything a decision returns borrows from the rule set.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use crate::claims::{ClaimLedger, ClaimOutcome, LedgerClaim, LedgerError};
use crate::eval::addon::{add_on_picks, AddOnPick};
use crate::eval::items::{ItemAt, SignalBuffers, Signals};
pub use crate::eval::items::{ItemReason, Pick, AFFINITY_WINDOW};
use crate::event::Action;
use crate::hash::held_out;
use crate::index::{Profile, ShopIndex};
use crate::rules::catalog::UNKNOWN;
use crate::rules::plan::{Atom, CtxKey, Facts, Memo, NodeId};
use crate::rules::tiers::{preview_tier, TierPreview, Tiers};
pub use crate::rules::Slot;
use crate::rules::{Benefit, RuleSet, MAX_ITEM_LIMIT};
use crate::time::Zone;

/// The request's context (the `Context` message of `proto/vitrine/v1/vitrine.proto`);
/// a missing value is "".
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
    /// The visitor is in the entry's control group (a benefit's or a banner's holdout).
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
    /// The chosen banner entry's `params` (empty without a banner).
    pub banner_params: &'r [(Arc<str>, Arc<str>)],
    /// Grants left of the chosen benefit, when it has a budget.
    pub remaining: Option<u64>,
    /// The tier the visitor's history earns, when the file has `tiers` and the visitor is known.
    pub tier_preview: Option<TierPreview<'r>>,
    /// `threshold - cart total`, when the file's add-on applies to the request.
    pub add_on_gap: Option<f64>,
    /// Entries skipped because the visitor is in their holdout, in order
    /// (banners, then benefits). Anonymous visitors hash as the empty id,
    /// as they always have for benefits: all of them fall in or out alike.
    pub held_out: Vec<(Slot, &'r str)>,
}

/// The leaf tests for one visitor: their profile plus the request context.
struct VisitorFacts<'a> {
    shop: Option<&'a ShopIndex>,
    profile: Option<&'a Profile>,
    context: &'a Context<'a>,
    /// The shop's clock at the request's instant (`ShopIndex::clock_ms`):
    /// every window range is cut from it.
    clock_ms: i64,
    /// The file's tiers, for `preview_tier`.
    tiers: Option<&'a Tiers>,
    /// For `claimed(...)`: the ledger, the shop's name, the visitor's id and
    /// the zone whose clock the windows count (`clock_of`'s).
    claims: (&'a dyn ClaimLedger, &'a str, &'a str, &'a Zone),
    /// The profile's latest hour of each action, decoded by the first
    /// behavior atom that asks and kept for the decision's others.
    latest: Cell<Option<[u32; 4]>>,
}

/// The shop's clock at `now_ms`: the index's zone (fixed when it was
/// created), else, for a shop without an index yet, the rule set's.
#[inline]
fn clock_of(rules: &RuleSet, shop: Option<&ShopIndex>, now_ms: i64) -> i64 {
    zone_of(rules, shop).clock_ms(now_ms)
}

/// The zone whose clock a shop's windows count: [`clock_of`]'s.
#[inline]
fn zone_of<'a>(rules: &'a RuleSet, shop: Option<&'a ShopIndex>) -> &'a Zone {
    shop.map_or(&rules.zone, ShopIndex::zone)
}

impl Facts for VisitorFacts<'_> {
    fn atom(&self, atom: &Atom) -> bool {
        use crate::rules::expr::{Filter, Metric};
        match atom {
            Atom::Ctx { key, test } => test.test(self.context.get(key)),
            Atom::PreviewTier { cmp, value } => {
                let tier = preview_tier(self.tiers, self.profile, self.clock_ms);
                cmp.test(f64::from(tier), *value)
            }
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
                    .map_or((0, 0.0), |p| p.purchases_in(window.range(self.clock_ms)));
                let v = match metric {
                    Metric::PurchaseCount => f64::from(count),
                    Metric::Spend => spend,
                    Metric::AvgOrder if count == 0 => return false,
                    Metric::AvgOrder => spend / f64::from(count),
                };
                cmp.test(v, *value)
            }
            Atom::Tag(tag) => match (self.profile, self.shop) {
                // Most visitors carry no tag: no need to look its name up.
                (Some(p), Some(shop)) => p.has_any_tag() && shop.tags.get(tag).is_some_and(|id| p.has_tag(id)),
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
                let range = window.range(self.clock_ms);
                let actions = *actions;
                let of_action = |e: &crate::index::Entry| actions.contains(Action::BEHAVIORS[e.action as usize]);
                let latest = match self.latest.get() {
                    Some(latest) => latest,
                    None => {
                        let latest = p.latest_hours();
                        self.latest.set(Some(latest));
                        latest
                    }
                };
                let any = p.has_action_in_given(&latest, actions, range);
                match filter {
                    None => any,
                    // Without any entry of the actions in the window, no
                    // entry of the item or category: no need to look it up.
                    Some(_) if !any => false,
                    Some(Filter::Item(item)) => match shop.item_id(item) {
                        Some(id) => p.entries_in(range).rev().any(|e| e.item == id && of_action(&e)),
                        None => false,
                    },
                    Some(Filter::Category(cat)) => match shop.categories.get(cat) {
                        Some(id) => p.entries_in(range).rev().any(|e| e.category == id && of_action(&e)),
                        None => false,
                    },
                }
            }
            Atom::DaysSince { actions, cmp, value } => {
                let Some(p) = self.profile else { return false };
                match days_since(p, *actions, self.clock_ms) {
                    Some(days) => cmp.test(f64::from(days), *value),
                    None => false,
                }
            }
            Atom::Offered { window, offers } => match (self.profile, self.shop) {
                (Some(p), Some(shop)) => crate::exposure::offered(shop, p, window.range(self.clock_ms), offers),
                _ => false,
            },
            Atom::Claimed { window, offers } => {
                let (ledger, name, visitor, zone) = self.claims;
                let range = window.range(self.clock_ms);
                crate::exposure::claimed(ledger, (zone, name), visitor, range, offers)
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

/// Most candidates one decision ranks (2^29, so that the order of
/// appearance fits a [`rank_key`]); a rule file naming that many pool items
/// is far beyond any `--max-rule-file-bytes` a server loads. Candidates
/// past it are not ranked.
pub const MAX_RANKED: usize = 1 << 29;

/// One number that orders ranked candidates as (reason, strongest first,
/// first to appear): reason in the top 3 bits, `u32::MAX - strength` in the
/// next 32, `order` (below [`MAX_RANKED`]) in the low 29. Compared in one
/// instruction where the tuple took three.
#[inline]
fn rank_key(reason: ItemReason, strength: u32, order: usize) -> u64 {
    (reason as u64) << 61 | u64::from(u32::MAX - strength) << 29 | (order % MAX_RANKED) as u64
}

/// The reason a [`rank_key`] was made of.
#[inline]
fn reason_of(key: u64) -> ItemReason {
    ItemReason::ALL[(key >> 61) as usize % ItemReason::ALL.len()]
}

fn decide_with<'r>(
    rules: &'r RuleSet,
    shop: Option<&ShopIndex>,
    profile: Option<&Profile>,
    ledger: &dyn ClaimLedger,
    req: &DecideRequest<'_>,
) -> Decision<'r> {
    with_scratch(|scratch| decide_in(rules, shop, profile, ledger, req, scratch))
}

/// Elements each buffer of a thread's [`Scratch`] keeps between decisions;
/// a decision that needed more gives the rest back when it ends.
pub const SCRATCH_KEEP: usize = 4096;

/// A decision's working memory, kept per thread between decisions so that a
/// decision allocates only its answer: the audience memo, the visitor's
/// item signals, the ranked pool candidates and the add-on's priced ones.
/// Candidates are kept as positions in the rule file (see [`ItemAt`]), not
/// as borrowed ids, so the buffers outlive any one rule set.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    memo: Memo,
    signals: SignalBuffers,
    /// (rank key, where): see [`rank_key`].
    ranked: Vec<(u64, ItemAt)>,
    /// (price, order of appearance, where): the add-on's candidates.
    pub(crate) priced: Vec<(f64, u32, ItemAt)>,
    /// A bit per rule-local item id ([`crate::rules::catalog`]): placed or judged already.
    seen: Vec<u64>,
}

impl Scratch {
    fn trim(&mut self) {
        self.memo.trim(SCRATCH_KEEP);
        self.signals.trim(SCRATCH_KEEP);
        self.ranked.shrink_to(SCRATCH_KEEP);
        self.priced.shrink_to(SCRATCH_KEEP);
        self.seen.shrink_to(SCRATCH_KEEP);
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch, or a fresh one when it is in use
/// (a decision inside a decision, which nothing does today) or gone (the
/// thread is ending).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    // The answer is written once, where it ends up, not passed out through
    // `Option`s and `Result`s: a decision is a few hundred bytes, and each
    // layer copied it (callgrind: four `memcpy`s a decision).
    let mut f = Some(f);
    let mut answer = None;
    let _ = SCRATCH.try_with(|cell| {
        if let Ok(mut scratch) = cell.try_borrow_mut() {
            if let Some(f) = f.take() {
                answer = Some(f(&mut scratch));
            }
            scratch.trim();
        }
    });
    match (answer, f) {
        (Some(answer), _) => answer,
        (None, Some(f)) => f(&mut Scratch::default()),
        (None, None) => unreachable!("`f` ran and answered"),
    }
}

/// Sets `id`'s bit; false when it was set already.
#[inline]
fn mark(seen: &mut [u64], id: u32) -> bool {
    match seen.get_mut((id / 64) as usize) {
        Some(word) => {
            let bit = 1u64 << (id % 64);
            let new = *word & bit == 0;
            *word |= bit;
            new
        }
        None => true,
    }
}

/// Whether `id`'s bit is set.
#[inline]
fn marked(seen: &[u64], id: u32) -> bool {
    seen.get((id / 64) as usize)
        .is_some_and(|word| word & (1u64 << (id % 64)) != 0)
}

/// A step's entry text, written into a string of its final size (one allocation).
fn entry_text(args: std::fmt::Arguments<'_>, len_hint: usize) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(len_hint + 24);
    let _ = text.write_fmt(args);
    text
}

fn decide_in<'r>(
    rules: &'r RuleSet,
    shop: Option<&ShopIndex>,
    profile: Option<&Profile>,
    ledger: &dyn ClaimLedger,
    req: &DecideRequest<'_>,
    scratch: &mut Scratch,
) -> Decision<'r> {
    let Scratch {
        memo,
        signals: signal_buffers,
        ranked,
        priced,
        seen,
    } = scratch;
    let clock_ms = clock_of(rules, shop, req.now_ms);
    let facts = VisitorFacts {
        shop,
        profile,
        context: &req.context,
        clock_ms,
        tiers: rules.plan.tiers.as_deref(),
        claims: (ledger, &rules.shop, req.visitor, zone_of(rules, shop)),
        latest: Cell::new(None),
    };
    let plan = &rules.plan;
    memo.reset(plan.audiences().len());
    let items = &rules.items;
    // Every step an explanation can list, so its list is allocated once.
    let most_steps = rules.banners.len() + items.pools.len() + rules.benefits.len() + 2;
    let mut steps = req.explain.then(|| Vec::with_capacity(most_steps));
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
    let mut held: Vec<(Slot, &'r str)> = Vec::new();
    let mut hold = |slot: Slot, id: &'r str| {
        if held.capacity() == 0 {
            let entries = rules
                .banners
                .iter()
                .map(|b| b.holdout_bp)
                .chain(rules.benefits.iter().map(|b| b.holdout_bp));
            held.reserve_exact(entries.filter(|bp| *bp > 0).count());
        }
        held.push((slot, id));
    };

    // Banner: the first entry whose `when` holds, unless the visitor is in
    // its holdout: then the next one, as if the entry were not there.
    let mut banner = None;
    let mut banner_params: &'r [(Arc<str>, Arc<str>)] = &[];
    for (i, b) in rules.banners.iter().enumerate() {
        let text = || entry_text(format_args!("banners[{i}] {}", b.id), 10 + b.id.len());
        if !b.in_window(req.now_ms) {
            step(Slot::Banner, &text, StepOutcome::OutsideWindow);
            continue;
        }
        if matches(b.when, memo) {
            if held_out(&rules.shop, &b.id, req.visitor, b.holdout_bp) {
                hold(Slot::Banner, &b.id);
                step(Slot::Banner, &text, StepOutcome::HeldOut);
                continue;
            }
            banner = Some(&*b.id);
            banner_params = &b.params;
            step(Slot::Banner, &text, StepOutcome::Chosen);
            break;
        }
        step(Slot::Banner, &text, StepOutcome::NotMatched);
    }

    // Items: complements, then the matching pools' items, ranked.
    let limit = match req.item_limit {
        0 => items.limit,
        n => n.min(MAX_ITEM_LIMIT),
    } as usize;
    let signals = Signals::reusing(
        shop,
        profile,
        items.exclude_purchased,
        clock_ms,
        std::mem::take(signal_buffers),
    );
    let context_item = req.context.item;
    // Candidates are compared by rule-local id: the context item's, if the
    // section names it, and a bit per id placed or judged already. The
    // section cannot change after loading, so the catalog describes it.
    let context_list: Option<&'r [Arc<str>]> = match context_item {
        "" => None,
        item => items.complements.get(item).map(|list| &list[..]),
    };
    let complements = context_list.unwrap_or_default();
    let catalog = &items.catalog;
    let context_id = catalog.id(context_item);
    let complements_of = context_id.and_then(|id| catalog.complements(id));
    // Each rule-local id's id in the shop's item table, held only while the
    // items are chosen.
    let resolved = catalog.shop_ids(shop.map(|s| &s.items));
    let shop_ids = resolved.as_deref().unwrap_or_default();
    let shop_id = |rid: u32| shop_ids.get(rid as usize).copied().unwrap_or(UNKNOWN);
    seen.clear();
    seen.resize(catalog.len().div_ceil(64), 0);
    let mut picks: Vec<Pick<'r>> = Vec::with_capacity(limit);
    let add_on_gap = items
        .add_on
        .as_ref()
        .and_then(|a| a.gap(req.context.get(&a.cart_total)));
    if let (Some(gap), Some(shop)) = (add_on_gap, shop) {
        let pool_matches =
            |pool: &crate::rules::Pool, memo: &mut Memo| pool.in_window(req.now_ms) && matches(pool.when, memo);
        let pick = AddOnPick {
            signals: &signals,
            context_item,
            complements,
            complement_ids: complements_of.map_or(&[][..], |(ids, _)| ids),
            shop_ids,
            gap,
            limit,
        };
        add_on_picks(rules, shop, &pick, &mut picks, priced, |pool| pool_matches(pool, memo));
        for p in &picks {
            if let Some(id) = catalog.id(p.id) {
                mark(seen, id);
            }
        }
        step(Slot::Items, &|| "add_on".to_string(), StepOutcome::Contributed);
    }
    if let Some((ids, _)) = complements_of {
        for (id, &rid) in complements.iter().zip(ids) {
            if picks.len() < limit
                && Some(rid) != context_id
                && !marked(seen, rid)
                && signals.judge_id(shop_id(rid)).is_some()
            {
                mark(seen, rid);
                picks.push(Pick {
                    id,
                    reason: ItemReason::Complement,
                });
            }
        }
        step(
            Slot::Items,
            &|| entry_text(format_args!("complements of {context_item}"), context_item.len()),
            StepOutcome::Contributed,
        );
    }
    ranked.clear();
    for (i, pool) in items.pools.iter().enumerate() {
        let text = || entry_text(format_args!("pools[{i}]"), 8);
        if !pool.in_window(req.now_ms) {
            step(Slot::Items, &text, StepOutcome::OutsideWindow);
            continue;
        }
        if !matches(pool.when, memo) {
            step(Slot::Items, &text, StepOutcome::NotMatched);
            continue;
        }
        step(Slot::Items, &text, StepOutcome::Contributed);
        // An item judged once is judged alike again: skipping it is exact.
        for (pos, &rid) in catalog.pool(i).iter().enumerate() {
            if Some(rid) == context_id || !mark(seen, rid) {
                continue;
            }
            let Some((reason, strength)) = signals.judge_id(shop_id(rid)) else {
                continue;
            };
            let at = ItemAt {
                list: i as u32,
                pos: pos as u32,
            };
            if ranked.len() == MAX_RANKED {
                break;
            }
            ranked.push((rank_key(reason, strength, ranked.len()), at));
        }
    }
    drop(resolved);
    *signal_buffers = signals.into_buffers();
    // Keys are unique (the order of appearance is in them): an unstable
    // sort is exact, and unlike a stable one never allocates.
    ranked.sort_unstable_by_key(|&(key, _)| key);
    let room = limit.saturating_sub(picks.len());
    picks.extend(ranked.iter().take(room).map(|&(key, at)| Pick {
        id: at.id(rules, complements),
        reason: reason_of(key),
    }));

    // Benefit: the first eligible one.
    let mut benefit = None;
    let mut remaining = None;
    for (i, b) in rules.benefits.iter().enumerate() {
        let (outcome, left) = if !matches(b.when, memo) {
            (StepOutcome::NotMatched, None)
        } else {
            offer_with_remaining(rules, b, req.visitor, req.now_ms, ledger)
        };
        step(
            Slot::Benefit,
            &|| entry_text(format_args!("benefits[{i}] {}", b.id), 11 + b.id.len()),
            outcome,
        );
        if outcome == StepOutcome::HeldOut {
            hold(Slot::Benefit, &b.id);
        }
        if outcome == StepOutcome::Chosen {
            benefit = Some(b);
            remaining = left;
            break;
        }
    }
    let tier_preview = match (plan.tiers.as_deref(), profile) {
        (Some(tiers), Some(p)) => Some(tiers.preview(tiers.value(Some(p), clock_ms))),
        _ => None,
    };

    let explanation = steps.map(|steps| {
        let matched = |slot: usize, memo: &mut Memo| plan.eval_audience(slot as u32, &facts, memo);
        let count = (0..plan.audiences().len()).filter(|&slot| matched(slot, memo)).count();
        let mut audiences = Vec::with_capacity(count);
        for (slot, a) in plan.audiences().iter().enumerate() {
            if matched(slot, memo) {
                audiences.push(a.name.to_string());
            }
        }
        Explanation { audiences, steps }
    });
    Decision {
        banner,
        items: picks,
        benefit,
        explanation,
        banner_params,
        remaining,
        tier_preview,
        add_on_gap,
        held_out: held,
    }
}

/// Whether a matching benefit can be offered now, short of its audience,
/// and the grants left of its budget (when it has one and usage was read).
fn offer_with_remaining(
    rules: &RuleSet,
    b: &Benefit,
    visitor: &str,
    now_ms: i64,
    ledger: &dyn ClaimLedger,
) -> (StepOutcome, Option<u64>) {
    if !b.in_window(now_ms) {
        return (StepOutcome::OutsideWindow, None);
    }
    if visitor.is_empty() && b.cap.is_some() {
        return (StepOutcome::NeedsVisitor, None);
    }
    if held_out(&rules.shop, &b.id, visitor, b.holdout_bp) {
        return (StepOutcome::HeldOut, None);
    }
    let mut remaining = None;
    if b.cap.is_some() || b.budget.is_some() {
        let since = b.cap.map(|c| now_ms.saturating_sub(c.window.millis()));
        let usage = ledger.usage(&rules.shop, &b.id, visitor, since);
        if b.cap.is_some_and(|c| usage.visitor_in_window >= c.per_visitor) {
            return (StepOutcome::CapReached, None);
        }
        if b.budget.is_some_and(|budget| usage.total >= budget) {
            return (StepOutcome::BudgetExhausted, None);
        }
        remaining = b.budget.map(|budget| budget.saturating_sub(usage.total));
    }
    (StepOutcome::Chosen, remaining)
}

/// Whole days of the shop's calendar between clock reading `clock_ms` and
/// the visitor's latest entry of `actions` at or before its hour; `None`
/// without one.
pub(crate) fn days_since(p: &Profile, actions: crate::event::ActionSet, clock_ms: i64) -> Option<u32> {
    let now_hour = crate::time::hour_of(clock_ms);
    p.latest_until(actions, now_hour).map(|h| now_hour / 24 - h / 24)
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
    Ok(ledger.claim(&prepare_claim(rules, shop, ledger, req)?)?)
}

/// What only the replica that takes a claim can check (the benefit exists,
/// the visitor is in its audience at the claim's instant, its window, the
/// holdout), as the ledger call that decides the rest (cap, budget,
/// `claim_id`). A failed check is the claim's `denied` outcome. `ledger`
/// answers the audience's `claimed(...)` atoms.
pub fn prepare_claim<'a>(
    rules: &'a RuleSet,
    shop: Option<&ShopIndex>,
    ledger: &dyn ClaimLedger,
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
            clock_ms: clock_of(rules, shop, req.now_ms),
            tiers: rules.plan.tiers.as_deref(),
            claims: (ledger, &rules.shop, req.visitor, zone_of(rules, shop)),
            latest: Cell::new(None),
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

/// Grants left of a budgeted benefit, as the ledger counts them now
/// (`None` for a benefit without a budget, or one the rule set lacks).
/// What a Claim reports after its answer: read after the grant, so with
/// concurrent claims it may already count later grants too.
pub fn remaining(rules: &RuleSet, benefit: &str, ledger: &dyn ClaimLedger) -> Option<u64> {
    let b = rules.benefit(benefit)?;
    let budget = b.budget?;
    Some(budget.saturating_sub(ledger.usage(&rules.shop, &b.id, "", None).total))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::claims::{MemoryLedger, Usage};
    use crate::event::{Event, Fields};
    use crate::time::{Unit, Window};

    const DAY: i64 = 86_400_000;
    /// 2026-11-10T15:45:00Z.
    const NOW: i64 = 1_794_325_500_000;

    /// Whether a matching benefit can be offered now (the outcome alone).
    fn offer(rules: &RuleSet, b: &Benefit, visitor: &str, now_ms: i64, ledger: &dyn ClaimLedger) -> StepOutcome {
        offer_with_remaining(rules, b, visitor, now_ms, ledger).0
    }

    const RULES: &str = r#"shop: s
audiences:
  carter: carted(7d)
  vip: member_tier >= 4
  south: ctx.region == "south"
banners:
  - when: vip
    banner: vip-gold
  - when: carter
    banner: your-cart
  - when: south
    banner: welcome-south
  - banner: default
items:
  limit: 4
  exclude_purchased: 30d
  pools:
    - when: carter
      items: [sku-c1, sku-c2]
    - when: vip
      items: [sku-v1]
    - items: [sku-1, sku-2, sku-c1, sku-3, sku-4, sku-5]
  complements:
    sku-1: [sku-1, sku-9, sku-2]
benefits:
  - id: capped
    when: carter
    kind: coupon
    cap: { per_visitor: 1, window: 30d }
  - id: open
    kind: points
"#;

    fn event(visitor: &str, action: &str, item: Option<&str>, category: Option<&str>, ts: i64) -> Event<'static> {
        Event::validate(Fields {
            shop: Some("s".into()),
            visitor: Some(visitor.to_string().into()),
            action: Some(action.to_string().into()),
            item: item.map(|s| s.to_string().into()),
            category: category.map(|s| s.to_string().into()),
            price: (action == "purchase").then_some(10.0),
            tier: (action == "member").then_some(5),
            ts: Some(ts),
            ..Fields::default()
        })
        .unwrap()
    }

    /// A ledger that reports fixed usage and remembers the window it was asked about.
    struct FixedUsage {
        usage: Usage,
        asked_since: Mutex<Vec<Option<i64>>>,
    }

    impl FixedUsage {
        fn new(total: u64, visitor_in_window: u32) -> FixedUsage {
            FixedUsage {
                usage: Usage {
                    total,
                    visitor_in_window,
                },
                asked_since: Mutex::new(Vec::new()),
            }
        }
    }

    impl ClaimLedger for FixedUsage {
        fn usage(&self, _: &str, _: &str, _: &str, since_ms: Option<i64>) -> Usage {
            self.asked_since.lock().unwrap().push(since_ms);
            self.usage
        }
        fn claim(&self, _: &LedgerClaim<'_>) -> Result<ClaimOutcome, LedgerError> {
            unreachable!("decide never claims")
        }
        fn granted(&self, _: &str, _: &str, _: Option<&[std::sync::Arc<str>]>, _: &dyn Fn(i64) -> bool) -> bool {
            false
        }
        fn grantees(
            &self,
            _: &str,
            _: Option<&[std::sync::Arc<str>]>,
            _: &dyn Fn(i64) -> bool,
            _: &mut dyn FnMut(&str),
        ) {
        }
    }

    fn decide_at<'r>(
        rules: &'r RuleSet,
        shop: Option<&ShopIndex>,
        visitor: &str,
        context: Context<'_>,
    ) -> Decision<'r> {
        decide(
            rules,
            shop,
            &MemoryLedger::new(),
            &DecideRequest {
                visitor,
                context,
                explain: true,
                now_ms: NOW,
                ..DecideRequest::default()
            },
        )
    }

    fn steps(d: &Decision<'_>, slot: Slot) -> Vec<(String, StepOutcome)> {
        let e = d.explanation.as_ref().unwrap();
        e.steps
            .iter()
            .filter(|s| s.slot == slot)
            .map(|s| (s.entry.clone(), s.outcome))
            .collect()
    }

    fn items<'r>(d: &Decision<'r>) -> Vec<(&'r str, ItemReason)> {
        d.items.iter().map(|p| (p.id, p.reason)).collect()
    }

    /// The rank key orders as the (reason, strongest first, first to
    /// appear) triple it packs, and gives its reason back.
    #[test]
    fn rank_keys_order_as_reason_then_strength() {
        let strengths = [0, 1, 2, 7, u32::MAX / 2, u32::MAX - 1, u32::MAX];
        let pairs: Vec<(ItemReason, u32)> = ItemReason::ALL
            .iter()
            .flat_map(|&r| strengths.iter().map(move |&s| (r, s)))
            .collect();
        let orders = [0, 1, 5, MAX_RANKED - 2, MAX_RANKED - 1];
        for &(r, s) in &pairs {
            for &o in &orders {
                assert_eq!(reason_of(rank_key(r, s, o)), r);
                for &(r2, s2) in &pairs {
                    for &o2 in &orders {
                        let tuple = (r, std::cmp::Reverse(s), o).cmp(&(r2, std::cmp::Reverse(s2), o2));
                        let keys = rank_key(r, s, o).cmp(&rank_key(r2, s2, o2));
                        assert_eq!(keys, tuple, "{r:?} {s} {o} / {r2:?} {s2} {o2}");
                    }
                }
            }
        }
        for (i, r) in ItemReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn context_reads_each_key_and_a_missing_attribute_as_empty() {
        let attributes: HashMap<String, String> = [("campaign".to_string(), "bf".to_string())].into();
        let ctx = Context {
            page: "item",
            item: "sku-1",
            region: "south",
            device: "mobile",
            channel: "email",
            attributes: Some(&attributes),
        };
        let keys = [
            CtxKey::Page,
            CtxKey::Item,
            CtxKey::Region,
            CtxKey::Device,
            CtxKey::Channel,
            CtxKey::Attr("campaign".into()),
            CtxKey::Attr("absent".into()),
        ];
        assert_eq!(
            keys.iter().map(|k| ctx.get(k)).collect::<Vec<_>>(),
            ["item", "sku-1", "south", "mobile", "email", "bf", ""]
        );
        assert_eq!(Context::default().get(&CtxKey::Attr("campaign".into())), "");
    }

    #[test]
    fn the_first_matching_banner_wins_and_later_ones_are_not_looked_at() {
        let rules = RuleSet::load(RULES).unwrap();
        let shop = ShopIndex::new("s");
        shop.apply(&event("v", "cart", Some("sku-c1"), None, NOW - DAY));
        let south = Context {
            region: "south",
            ..Context::default()
        };
        // A carter in the south: `your-cart` comes first in the file.
        let d = decide_at(&rules, Some(&shop), "v", south);
        assert_eq!(d.banner, Some("your-cart"));
        assert_eq!(
            steps(&d, Slot::Banner),
            [
                ("banners[0] vip-gold".to_string(), StepOutcome::NotMatched),
                ("banners[1] your-cart".to_string(), StepOutcome::Chosen),
            ]
        );
        assert_eq!(d.explanation.unwrap().audiences, ["carter", "south"]);
        // Becoming a VIP puts the first entry first.
        shop.apply(&event("v", "member", None, None, NOW - DAY));
        let d = decide_at(&rules, Some(&shop), "v", south);
        assert_eq!(d.banner, Some("vip-gold"));
        assert_eq!(
            steps(&d, Slot::Banner),
            [("banners[0] vip-gold".to_string(), StepOutcome::Chosen)]
        );
        assert_eq!(d.explanation.unwrap().audiences, ["carter", "vip", "south"]);
    }

    #[test]
    fn anonymous_unknown_and_no_index_visitors_decide_alike() {
        let rules = RuleSet::load(RULES).unwrap();
        let shop = ShopIndex::new("s");
        shop.apply(&event("known", "view", Some("sku-1"), Some("tops"), NOW - DAY));
        let south = Context {
            region: "south",
            ..Context::default()
        };
        let answers: Vec<_> = [
            decide_at(&rules, Some(&shop), "", south),
            decide_at(&rules, Some(&shop), "stranger", south),
            decide_at(&rules, None, "stranger", south),
        ]
        .iter()
        .map(|d| {
            (
                d.banner,
                items(d).into_iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>(),
                d.benefit.map(|b| b.id.to_string()),
                d.explanation.clone().unwrap().audiences,
            )
        })
        .collect();
        let expected = (
            Some("welcome-south"),
            vec!["sku-1".to_string(), "sku-2".into(), "sku-c1".into(), "sku-3".into()],
            Some("open".to_string()),
            vec!["south".to_string()],
        );
        assert_eq!(answers, [expected.clone(), expected.clone(), expected]);
    }

    #[test]
    fn an_empty_profile_matches_nothing_behavioral() {
        // A visitor known to the index (a tag event) with no behavior at all.
        let rules = RuleSet::load(RULES).unwrap();
        let shop = ShopIndex::new("s");
        shop.apply(
            &Event::validate(Fields {
                shop: Some("s".into()),
                visitor: Some("tagged".into()),
                action: Some("tag".into()),
                tag: Some("x".into()),
                ts: Some(NOW - DAY),
                ..Fields::default()
            })
            .unwrap(),
        );
        let d = decide_at(&rules, Some(&shop), "tagged", Context::default());
        assert_eq!(d.banner, Some("default"));
        assert_eq!(d.explanation.unwrap().audiences, Vec::<String>::new());
        assert_eq!(
            items(&decide_at(&rules, Some(&shop), "tagged", Context::default())),
            [
                ("sku-1", ItemReason::Pool),
                ("sku-2", ItemReason::Pool),
                ("sku-c1", ItemReason::Pool),
                ("sku-3", ItemReason::Pool),
            ]
        );
    }

    #[test]
    fn complements_come_first_without_the_context_item_or_duplicates() {
        let rules = RuleSet::load(RULES).unwrap();
        let ctx = Context {
            item: "sku-1",
            ..Context::default()
        };
        let d = decide_at(&rules, None, "", ctx);
        // sku-1 is the page's item (skipped in complements and pools); sku-2
        // is a complement, so the pool does not repeat it.
        assert_eq!(
            items(&d),
            [
                ("sku-9", ItemReason::Complement),
                ("sku-2", ItemReason::Complement),
                ("sku-c1", ItemReason::Pool),
                ("sku-3", ItemReason::Pool),
            ]
        );
        assert_eq!(
            steps(&d, Slot::Items),
            [
                ("complements of sku-1".to_string(), StepOutcome::Contributed),
                ("pools[0]".to_string(), StepOutcome::NotMatched),
                ("pools[1]".to_string(), StepOutcome::NotMatched),
                ("pools[2]".to_string(), StepOutcome::Contributed),
            ]
        );
        // A smaller limit asked for cuts complements too; 0 means the file's.
        let ask = |item_limit| {
            decide(
                &rules,
                None,
                &MemoryLedger::new(),
                &DecideRequest {
                    context: ctx,
                    item_limit,
                    now_ms: NOW,
                    ..DecideRequest::default()
                },
            )
            .items
            .iter()
            .map(|p| p.id)
            .collect::<Vec<_>>()
        };
        assert_eq!(ask(1), ["sku-9"]);
        assert_eq!(ask(0).len(), 4);
        assert_eq!(ask(100), ["sku-9", "sku-2", "sku-c1", "sku-3", "sku-4", "sku-5"]);
    }

    #[test]
    fn matching_pools_rank_carts_first_and_skip_recent_purchases() {
        let rules = RuleSet::load(RULES).unwrap();
        let shop = ShopIndex::new("s");
        shop.apply(&event("v", "cart", Some("sku-c2"), None, NOW - DAY));
        shop.apply(&event("v", "purchase", Some("sku-1"), None, NOW - 2 * DAY));
        // Bought 40 days ago: outside exclude_purchased (30d), shown again.
        shop.apply(&event("v", "purchase", Some("sku-2"), None, NOW - 40 * DAY));
        let d = decide_at(&rules, Some(&shop), "v", Context::default());
        assert_eq!(
            items(&d),
            [
                ("sku-c2", ItemReason::InCart),
                ("sku-c1", ItemReason::Pool),
                ("sku-2", ItemReason::Pool),
                ("sku-3", ItemReason::Pool),
            ]
        );
        assert_eq!(
            steps(&d, Slot::Items),
            [
                ("pools[0]".to_string(), StepOutcome::Contributed),
                ("pools[1]".to_string(), StepOutcome::NotMatched),
                ("pools[2]".to_string(), StepOutcome::Contributed),
            ]
        );
    }

    #[test]
    fn judge_orders_signals_cart_over_favorite_over_category_over_popularity() {
        let shop = ShopIndex::new("s");
        shop.apply(&event("v", "cart", Some("carted"), Some("c"), NOW - DAY));
        shop.apply(&event("v", "favorite", Some("faved"), Some("c"), NOW - DAY));
        // Carted and then bought (3 days ago, outside a 1-day exclusion): no longer "in cart".
        shop.apply(&event("v", "cart", Some("bought"), Some("other"), NOW - 4 * DAY));
        shop.apply(&event("v", "purchase", Some("bought"), Some("other"), NOW - 3 * DAY));
        shop.apply(&event("v", "view", Some("seen"), Some("c"), NOW - DAY));
        shop.apply(&event("v", "view", Some("seen2"), Some("c"), NOW - 2 * DAY));
        shop.apply(&event("x", "view", Some("in-c"), Some("c"), NOW - 40 * DAY));
        shop.apply(&event("x", "purchase", Some("hot"), None, NOW - DAY));
        shop.apply(&event("y", "purchase", Some("hot"), None, NOW - DAY));
        shop.apply(&event("x", "view", Some("cold"), None, NOW - DAY));
        let id = shop.visitor_id("v").unwrap();
        let exclude = Some(Window {
            amount: 1,
            unit: Unit::Days,
        });
        let judged = shop.with_profile(id, |p| {
            let s = Signals::of(Some(&shop), p, exclude, NOW);
            ["carted", "faved", "bought", "in-c", "hot", "cold", "never-seen"].map(|i| s.judge(i))
        });
        assert_eq!(
            judged,
            [
                Some((ItemReason::InCart, 0)),
                Some((ItemReason::Favorited, 0)),
                // Carted, then bought: no longer in the cart; its category
                // saw no views (carts and purchases are not views), and its
                // one purchase in the last 7 days makes it popular.
                Some((ItemReason::Popular, 1)),
                // Two views of category `c` (seen, seen2).
                Some((ItemReason::ViewedCategory, 2)),
                Some((ItemReason::Popular, 2)),
                Some((ItemReason::Pool, 0)),
                Some((ItemReason::Pool, 0)),
            ]
        );
        // Within the exclusion window, a purchase hides the item.
        let exclude = Some(Window {
            amount: 7,
            unit: Unit::Days,
        });
        let bought = shop.with_profile(id, |p| Signals::of(Some(&shop), p, exclude, NOW).judge("bought"));
        assert_eq!(bought, None);
    }

    /// A visitor's carts, favorites and purchases judge the same whether
    /// they are few (sorted, searched by halves) or many (the signals' hash
    /// table): every item's reason is the one its own events give, entries
    /// past the affinity window count for nothing, and repeated entries of
    /// an item merge.
    #[test]
    fn judge_reads_few_and_many_item_entries_alike() {
        let actions = ["cart", "favorite", "purchase", "cart", "favorite"];
        for entries in [1, 5, 16, 17, 40, 333] {
            let shop = ShopIndex::new("s");
            let items = entries / 2 + 1;
            // (carted, favorited, bought) within 30 days, per item.
            let mut flags = vec![(false, false, false); items];
            for k in 0..entries {
                let (item, action) = (k % items, actions[k * 7 % actions.len()]);
                // Every third entry is 40 days old: outside the window.
                let old = k % 3 == 2;
                let ts = if old {
                    NOW - 40 * DAY
                } else {
                    NOW - 20 * DAY + k as i64 * 1000
                };
                shop.apply(&event("v", action, Some(&format!("i{item}")), None, ts));
                if !old {
                    let f = &mut flags[item];
                    match action {
                        "cart" => f.0 = true,
                        "favorite" => f.1 = true,
                        _ => f.2 = true,
                    }
                }
            }
            let id = shop.visitor_id("v").unwrap();
            shop.with_profile(id, |p| {
                let s = Signals::of(Some(&shop), p, None, NOW);
                for (item, (carted, favorited, bought)) in flags.iter().enumerate() {
                    let expected = match (carted, favorited, bought) {
                        (true, _, false) => ItemReason::InCart,
                        (false, true, false) => ItemReason::Favorited,
                        // Bought 20 days ago: not popular in the last 7 days.
                        _ => ItemReason::Pool,
                    };
                    assert_eq!(
                        s.judge(&format!("i{item}")),
                        Some((expected, 0)),
                        "{entries} entries, item {item}"
                    );
                }
                assert_eq!(s.judge("never-seen"), Some((ItemReason::Pool, 0)));
            });
        }
    }

    fn benefit(rules: &RuleSet, id: &str) -> Benefit {
        rules.benefit(id).unwrap().clone()
    }

    #[test]
    fn a_benefit_window_includes_its_start_and_excludes_its_end() {
        let rules = RuleSet::load(RULES).unwrap();
        let b = Benefit {
            starts: Some(NOW),
            ends: Some(NOW + DAY),
            ..benefit(&rules, "open")
        };
        let ledger = FixedUsage::new(0, 0);
        let at = |t| offer(&rules, &b, "v", t, &ledger);
        assert_eq!(
            [at(NOW - 1), at(NOW), at(NOW + DAY - 1), at(NOW + DAY)],
            [
                StepOutcome::OutsideWindow,
                StepOutcome::Chosen,
                StepOutcome::Chosen,
                StepOutcome::OutsideWindow
            ]
        );
    }

    #[test]
    fn a_capped_benefit_needs_a_visitor_and_reads_usage_over_its_window() {
        let rules = RuleSet::load(RULES).unwrap();
        let capped = benefit(&rules, "capped");
        let fresh = FixedUsage::new(0, 0);
        assert_eq!(offer(&rules, &capped, "", NOW, &fresh), StepOutcome::NeedsVisitor);
        assert_eq!(offer(&rules, &capped, "v", NOW, &fresh), StepOutcome::Chosen);
        assert_eq!(*fresh.asked_since.lock().unwrap(), [Some(NOW - 30 * DAY)]);
        assert_eq!(
            offer(&rules, &capped, "v", NOW, &FixedUsage::new(1, 1)),
            StepOutcome::CapReached
        );
        // A budget alone: anonymous visitors may see it, until it is spent.
        let budgeted = Benefit {
            budget: Some(3),
            ..benefit(&rules, "open")
        };
        let used = FixedUsage::new(2, 0);
        assert_eq!(offer(&rules, &budgeted, "", NOW, &used), StepOutcome::Chosen);
        assert_eq!(*used.asked_since.lock().unwrap(), [None]);
        assert_eq!(
            offer(&rules, &budgeted, "", NOW, &FixedUsage::new(3, 0)),
            StepOutcome::BudgetExhausted
        );
        // Neither: the ledger is not asked.
        let open = FixedUsage::new(u64::MAX, u32::MAX);
        assert_eq!(
            offer(&rules, &benefit(&rules, "open"), "", NOW, &open),
            StepOutcome::Chosen
        );
        assert!(open.asked_since.lock().unwrap().is_empty());
    }

    #[test]
    fn holdout_follows_the_stable_bucket_of_shop_benefit_and_visitor() {
        let rules = RuleSet::load(RULES).unwrap();
        let half = Benefit {
            holdout_bp: 5_000,
            ..benefit(&rules, "open")
        };
        let ledger = FixedUsage::new(0, 0);
        let outcomes: Vec<StepOutcome> = (0..40)
            .map(|i| offer(&rules, &half, &format!("v-{i}"), NOW, &ledger))
            .collect();
        let expected: Vec<StepOutcome> = (0..40)
            .map(|i| match held_out("s", "open", &format!("v-{i}"), 5_000) {
                true => StepOutcome::HeldOut,
                false => StepOutcome::Chosen,
            })
            .collect();
        assert_eq!(outcomes, expected);
        // Deterministic, and both groups are present among 40 visitors.
        let again: Vec<StepOutcome> = (0..40)
            .map(|i| offer(&rules, &half, &format!("v-{i}"), NOW, &ledger))
            .collect();
        assert_eq!(outcomes, again);
        assert!(outcomes.contains(&StepOutcome::HeldOut) && outcomes.contains(&StepOutcome::Chosen));
        let all = Benefit {
            holdout_bp: 10_000,
            ..benefit(&rules, "open")
        };
        assert_eq!(offer(&rules, &all, "anyone", NOW, &ledger), StepOutcome::HeldOut);
    }

    #[test]
    fn benefit_steps_stop_at_the_first_offered_one() {
        let rules = RuleSet::load(RULES).unwrap();
        let shop = ShopIndex::new("s");
        shop.apply(&event("v", "cart", Some("sku-c1"), None, NOW - DAY));
        let d = decide_at(&rules, Some(&shop), "v", Context::default());
        assert_eq!(d.benefit.map(|b| &*b.id), Some("capped"));
        assert_eq!(
            steps(&d, Slot::Benefit),
            [("benefits[0] capped".to_string(), StepOutcome::Chosen)]
        );
        let d = decide_at(&rules, Some(&shop), "", Context::default());
        assert_eq!(d.benefit.map(|b| &*b.id), Some("open"));
        assert_eq!(
            steps(&d, Slot::Benefit),
            [
                ("benefits[0] capped".to_string(), StepOutcome::NotMatched),
                ("benefits[1] open".to_string(), StepOutcome::Chosen),
            ]
        );
        // Without `explain`, no explanation is built.
        let quiet = decide(
            &rules,
            Some(&shop),
            &MemoryLedger::new(),
            &DecideRequest {
                visitor: "v",
                now_ms: NOW,
                ..DecideRequest::default()
            },
        );
        assert!(quiet.explanation.is_none());
        assert_eq!(quiet.banner, Some("your-cart"));
    }

    /// A held-out visitor gets the next eligible banner, as if the entry were
    /// not in the file; the decision lists what it was held out of.
    #[test]
    fn a_held_out_visitor_falls_through_to_the_next_banner() {
        let rules = RuleSet::load(
            "shop: s\nbanners:\n  - banner: gold\n    holdout: 50%\n  - when: false\n    banner: never\n  - banner: plain\nbenefits:\n  - id: pts\n    kind: points\n    holdout: 50%\n  - id: open\n    kind: points\n",
        )
        .unwrap();
        assert_eq!(rules.banners[0].holdout_bp, 5_000);
        let mut seen = [false; 2];
        for i in 0..40 {
            let visitor = format!("v-{i}");
            let d = decide_at(&rules, None, &visitor, Context::default());
            let banner_out = held_out("s", "gold", &visitor, 5_000);
            let benefit_out = held_out("s", "pts", &visitor, 5_000);
            seen[usize::from(banner_out)] = true;
            assert_eq!(d.banner, Some(if banner_out { "plain" } else { "gold" }));
            assert_eq!(
                d.benefit.map(|b| &*b.id),
                Some(if benefit_out { "open" } else { "pts" })
            );
            let mut want = Vec::new();
            if banner_out {
                want.push((Slot::Banner, "gold"));
            }
            if benefit_out {
                want.push((Slot::Benefit, "pts"));
            }
            assert_eq!(d.held_out, want, "{visitor}");
            let first = steps(&d, Slot::Banner)[0].clone();
            let outcome = if banner_out {
                StepOutcome::HeldOut
            } else {
                StepOutcome::Chosen
            };
            assert_eq!(first, ("banners[0] gold".to_string(), outcome));
        }
        assert_eq!(seen, [true, true], "both groups among 40 visitors");
        let all = RuleSet::load("shop: s\nbanners:\n  - banner: gold\n    holdout: 100%\n").unwrap();
        let d = decide_at(&all, None, "v", Context::default());
        assert_eq!((d.banner, d.held_out), (None, vec![(Slot::Banner, "gold")]));
    }
}
