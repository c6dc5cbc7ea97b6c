//! Benefit claims: caps per visitor and budgets per benefit, behind a
//! [`ClaimLedger`] interface so that a durable ledger can replace the
//! in-memory one without touching decisions.
//!
//! Decide only *peeks* at usage (to offer or skip a benefit); Claim consumes,
//! and does so atomically: the check of cap and budget, the grant and the
//! record of a `claim_id` happen under one lock per benefit.

use std::collections::HashMap;
use std::sync::Arc;

use ahash::RandomState;
use dashmap::DashMap;
use parking_lot::Mutex;

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimOutcome {
    /// Granted: the benefit is the visitor's.
    Granted,
    /// The visitor has had the benefit `per_visitor` times within the cap window.
    CapReached,
    /// The benefit's budget is spent.
    BudgetExhausted,
    /// The visitor is not in the benefit's audience right now.
    NotEligible,
    /// The visitor is in the benefit's control group.
    HeldOut,
    /// Now is outside the benefit's `starts`/`ends`.
    OutsideWindow,
}

impl ClaimOutcome {
    /// Every outcome, for pre-registering metrics.
    pub const ALL: [ClaimOutcome; 6] = [
        ClaimOutcome::Granted,
        ClaimOutcome::CapReached,
        ClaimOutcome::BudgetExhausted,
        ClaimOutcome::NotEligible,
        ClaimOutcome::HeldOut,
        ClaimOutcome::OutsideWindow,
    ];

    /// The wire name (`GRANTED`, `CAP_REACHED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimOutcome::Granted => "GRANTED",
            ClaimOutcome::CapReached => "CAP_REACHED",
            ClaimOutcome::BudgetExhausted => "BUDGET_EXHAUSTED",
            ClaimOutcome::NotEligible => "NOT_ELIGIBLE",
            ClaimOutcome::HeldOut => "HELD_OUT",
            ClaimOutcome::OutsideWindow => "OUTSIDE_WINDOW",
        }
    }
}

/// What a claim asks the ledger to do.
#[derive(Debug, Clone, Copy)]
pub struct LedgerClaim<'a> {
    /// Storefront.
    pub shop: &'a str,
    /// Benefit id.
    pub benefit: &'a str,
    /// Visitor id.
    pub visitor: &'a str,
    /// The claim's instant (ms).
    pub now_ms: i64,
    /// Makes retries idempotent: a known id gets its first answer back.
    pub claim_id: Option<&'a str>,
    /// (per visitor, window in ms), if capped.
    pub cap: Option<(u32, i64)>,
    /// Total grants allowed, if budgeted.
    pub budget: Option<u64>,
    /// Set when eligibility already failed: recorded (for `claim_id`) and returned.
    pub denied: Option<ClaimOutcome>,
}

/// What the ledger reports for a visitor and benefit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Grants of the benefit to anybody, ever.
    pub total: u64,
    /// Grants to this visitor within the window asked for.
    pub visitor_in_window: u32,
}

/// Why the ledger gave no answer: the claim was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The ledger failed (I/O in a durable ledger).
    #[error("claim ledger failed: {0}")]
    Failed(String),
    /// The `claim_id` already answers a claim of another visitor (of the
    /// same shop and benefit). Its answer belongs to that visitor: it is
    /// neither given to this one nor replaced (hardening #12).
    #[error("claim_id `{claim_id}` is already used by a claim of another visitor; use a new claim_id")]
    ClaimIdInUse {
        /// The reused id.
        claim_id: String,
    },
}

/// A recorded answer to a `claim_id`, bound to the visitor who claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The first answer.
    pub outcome: ClaimOutcome,
    /// The visitor it was given to.
    pub visitor: Box<str>,
}

impl Answer {
    /// The answer a claim with this id gets: the recorded one for the same
    /// visitor (a retry), [`LedgerError::ClaimIdInUse`] for another.
    pub fn for_visitor(&self, visitor: &str, claim_id: &str) -> Result<ClaimOutcome, LedgerError> {
        if *self.visitor == *visitor {
            Ok(self.outcome)
        } else {
            Err(LedgerError::ClaimIdInUse {
                claim_id: claim_id.to_string(),
            })
        }
    }
}

/// Where grants are counted.
pub trait ClaimLedger: Send + Sync {
    /// Current usage, without changing anything.
    fn usage(&self, shop: &str, benefit: &str, visitor: &str, since_ms: Option<i64>) -> Usage;
    /// Decides and records a claim atomically.
    fn claim(&self, claim: &LedgerClaim<'_>) -> Result<ClaimOutcome, LedgerError>;
    /// Whether `visitor` was granted one of `benefits` (any benefit of the
    /// shop with `None`) at an instant `at` accepts: `claimed(...)` (which
    /// accepts the instants whose hour on the shop's clock is in its window).
    fn granted(&self, shop: &str, visitor: &str, benefits: Option<&[Arc<str>]>, at: &dyn Fn(i64) -> bool) -> bool;
    /// Calls `f` with each visitor granted one of `benefits` (any with
    /// `None`) at an instant `at` accepts, once per benefit it was granted:
    /// the candidates of a `claimed(...)` audience size.
    fn grantees(&self, shop: &str, benefits: Option<&[Arc<str>]>, at: &dyn Fn(i64) -> bool, f: &mut dyn FnMut(&str));
}

/// [`ClaimLedger::granted`] over the [`ShopsOf`] shape both ledgers
/// share, each benefit's [`Grants`] read by `grants` under its lock.
pub fn shops_granted<S>(
    shops: &ShopsOf<S>,
    grants: impl Fn(&S) -> &Grants,
    (shop, visitor): (&str, &str),
    benefits: Option<&[Arc<str>]>,
    at: &dyn Fn(i64) -> bool,
) -> bool {
    let Some(ledgers) = shops.get(shop).map(|l| l.value().clone()) else {
        return false;
    };
    let hit = |state: &Mutex<S>| grants(&state.lock()).granted(visitor, at);
    match benefits {
        None => ledgers.iter().any(|b| hit(b.value())),
        Some(ids) => ids.iter().any(|id| ledgers.get(&**id).is_some_and(|b| hit(b.value()))),
    }
}

/// [`ClaimLedger::grantees`] over the [`ShopsOf`] shape both ledgers share.
pub fn shops_grantees<S>(
    shops: &ShopsOf<S>,
    grants: impl Fn(&S) -> &Grants,
    shop: &str,
    benefits: Option<&[Arc<str>]>,
    at: &dyn Fn(i64) -> bool,
    f: &mut dyn FnMut(&str),
) {
    let Some(ledgers) = shops.get(shop).map(|l| l.value().clone()) else {
        return;
    };
    let mut each = |state: &Mutex<S>| {
        let state = state.lock();
        for (visitor, times) in grants(&state).visitors() {
            if times.iter().any(|&t| at(t)) {
                f(visitor);
            }
        }
    };
    match benefits {
        None => ledgers.iter().for_each(|b| each(b.value())),
        Some(ids) => {
            for id in ids {
                if let Some(b) = ledgers.get(&**id) {
                    each(b.value());
                }
            }
        }
    }
}

/// The grants of one benefit, and the cap and budget rules every ledger
/// applies to them.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    total: u64,
    by_visitor: HashMap<Box<str>, Vec<i64>, RandomState>,
}

impl Grants {
    /// Grants to anybody, ever.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Grants to `visitor` after `since_ms` (all of them with `None`).
    pub fn in_window(&self, visitor: &str, since_ms: Option<i64>) -> u32 {
        self.by_visitor.get(visitor).map_or(0, |ts| {
            ts.iter().filter(|&&t| since_ms.is_none_or(|s| t > s)).count() as u32
        })
    }

    /// Whether `visitor` has a grant at an instant `at` accepts.
    pub fn granted(&self, visitor: &str, at: &dyn Fn(i64) -> bool) -> bool {
        self.by_visitor.get(visitor).is_some_and(|ts| ts.iter().any(|&t| at(t)))
    }

    /// Usage as [`ClaimLedger::usage`] reports it.
    pub fn usage(&self, visitor: &str, since_ms: Option<i64>) -> Usage {
        Usage {
            total: self.total,
            visitor_in_window: self.in_window(visitor, since_ms),
        }
    }

    /// The answer `claim` gets now, recording nothing: its `denied` outcome,
    /// else `CapReached`, `BudgetExhausted` or `Granted`. (`claim_id` is the
    /// caller's business.)
    pub fn check(&self, claim: &LedgerClaim<'_>) -> ClaimOutcome {
        if let Some(denied) = claim.denied {
            denied
        } else if claim
            .cap
            .is_some_and(|(max, window)| self.in_window(claim.visitor, Some(claim.now_ms - window)) >= max)
        {
            ClaimOutcome::CapReached
        } else if claim.budget.is_some_and(|b| self.total >= b) {
            ClaimOutcome::BudgetExhausted
        } else {
            ClaimOutcome::Granted
        }
    }

    /// Every visitor with grants, and the instants of their grants.
    pub fn visitors(&self) -> impl Iterator<Item = (&str, &[i64])> {
        self.by_visitor.iter().map(|(v, t)| (&**v, t.as_slice()))
    }

    /// Grants restored from a state snapshot: `total` grants to anybody, and
    /// each visitor's grant instants. Refuses a total below the grants listed.
    pub fn from_parts(
        total: u64,
        by_visitor: impl IntoIterator<Item = (Box<str>, Vec<i64>)>,
    ) -> Result<Grants, &'static str> {
        let mut grants = Grants {
            total,
            by_visitor: HashMap::default(),
        };
        let mut listed: u64 = 0;
        for (visitor, times) in by_visitor {
            listed = listed.saturating_add(times.len() as u64);
            if !times.is_empty() {
                grants.by_visitor.entry(visitor).or_default().extend(times);
            }
        }
        if listed > total {
            return Err("more grants listed than the total");
        }
        Ok(grants)
    }

    /// Records a grant to `visitor` at `at_ms`.
    pub fn grant(&mut self, visitor: &str, at_ms: i64) {
        self.total += 1;
        match self.by_visitor.get_mut(visitor) {
            Some(times) => times.push(at_ms),
            None => {
                self.by_visitor.insert(visitor.into(), vec![at_ms]);
            }
        }
    }

    /// Takes back one grant made by [`Grants::grant`] (when it could not be
    /// made durable); false when there is no such grant.
    pub fn revoke(&mut self, visitor: &str, at_ms: i64) -> bool {
        let Some(times) = self.by_visitor.get_mut(visitor) else {
            return false;
        };
        let Some(at) = times.iter().rposition(|&t| t == at_ms) else {
            return false;
        };
        times.remove(at);
        if times.is_empty() {
            self.by_visitor.remove(visitor);
        }
        self.total -= 1;
        true
    }
}

#[derive(Debug, Default)]
struct BenefitLedger {
    grants: Grants,
    answers: HashMap<Box<str>, Answer, RandomState>,
}

impl BenefitLedger {
    fn grants(&self) -> &Grants {
        &self.grants
    }
}

/// A correct, non-durable ledger: one mutex per (shop, benefit).
#[derive(Debug, Default)]
pub struct MemoryLedger {
    shops: ShopsOf<BenefitLedger>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> MemoryLedger {
        MemoryLedger::default()
    }

    fn with<R>(&self, shop: &str, benefit: &str, f: impl FnOnce(&mut BenefitLedger) -> R) -> R {
        let ledgers = match self.shops.get(shop) {
            Some(l) => l.value().clone(),
            None => self.shops.entry(shop.into()).or_default().value().clone(),
        };
        if let Some(ledger) = ledgers.get(benefit) {
            return f(&mut ledger.lock());
        }
        let ledger = ledgers.entry(benefit.into()).or_default();
        let mut guard = ledger.lock();
        f(&mut guard)
    }
}

/// One benefit's state as a state file holds it: its grants and each
/// `claim_id`'s first answer.
#[derive(Debug, Clone, Default)]
pub struct BenefitImage {
    /// Grants so far.
    pub grants: Grants,
    /// Recorded answers by `claim_id`, sorted by id in [`MemoryLedger::image`].
    pub answers: Vec<(Box<str>, Answer)>,
}

/// Every shop's benefits' state, shops and benefits sorted by name.
pub type LedgerImage = Vec<(Box<str>, Vec<(Box<str>, BenefitImage)>)>;

/// The shape both ledgers keep their state in: per shop, per benefit, the
/// benefit's state `S` behind its own lock.
pub type ShopsOf<S> = DashMap<Box<str>, Arc<DashMap<Box<str>, Mutex<S>, RandomState>>, RandomState>;

/// Every shop's benefits as a [`LedgerImage`], shops and benefits sorted by
/// name, each benefit's state copied by `copy` under its lock: the one walk
/// both ledgers (this one and the server's durable one) snapshot with.
pub fn ledger_image<S>(shops: &ShopsOf<S>, copy: impl Fn(&S) -> BenefitImage) -> LedgerImage {
    let mut image: LedgerImage = shops
        .iter()
        .map(|shop| {
            let mut benefits: Vec<_> = shop
                .value()
                .iter()
                .map(|b| (b.key().clone(), copy(&b.value().lock())))
                .collect();
            benefits.sort_by(|a, b| a.0.cmp(&b.0));
            (shop.key().clone(), benefits)
        })
        .collect();
    image.sort_by(|a, b| a.0.cmp(&b.0));
    image
}

impl MemoryLedger {
    /// A copy of the whole state, sorted (equal ledgers give equal images
    /// up to the order of visitors inside [`Grants`]).
    pub fn image(&self) -> LedgerImage {
        ledger_image(&self.shops, |ledger: &BenefitLedger| {
            let mut answers: Vec<_> = ledger.answers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            answers.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            BenefitImage {
                grants: ledger.grants.clone(),
                answers,
            }
        })
    }

    /// A ledger holding `image` (a benefit listed twice: the last one stands).
    pub fn from_image(image: LedgerImage) -> MemoryLedger {
        let ledger = MemoryLedger::new();
        for (shop, benefits) in image {
            let shop_ledger = ledger.shops.entry(shop).or_default().value().clone();
            for (benefit, b) in benefits {
                let state = BenefitLedger {
                    grants: b.grants,
                    answers: b.answers.into_iter().collect(),
                };
                shop_ledger.insert(benefit, Mutex::new(state));
            }
        }
        ledger
    }
}

impl ClaimLedger for MemoryLedger {
    fn usage(&self, shop: &str, benefit: &str, visitor: &str, since_ms: Option<i64>) -> Usage {
        let Some(ledgers) = self.shops.get(shop) else {
            return Usage::default();
        };
        let usage = match ledgers.get(benefit) {
            Some(ledger) => ledger.lock().grants.usage(visitor, since_ms),
            None => Usage::default(),
        };
        usage
    }

    fn claim(&self, claim: &LedgerClaim<'_>) -> Result<ClaimOutcome, LedgerError> {
        self.with(claim.shop, claim.benefit, |ledger| {
            if let Some(id) = claim.claim_id {
                if let Some(first) = ledger.answers.get(id) {
                    return first.for_visitor(claim.visitor, id);
                }
            }
            let outcome = ledger.grants.check(claim);
            if outcome == ClaimOutcome::Granted {
                ledger.grants.grant(claim.visitor, claim.now_ms);
            }
            if let Some(id) = claim.claim_id {
                let answer = Answer {
                    outcome,
                    visitor: claim.visitor.into(),
                };
                ledger.answers.insert(id.into(), answer);
            }
            Ok(outcome)
        })
    }

    fn granted(&self, shop: &str, visitor: &str, benefits: Option<&[Arc<str>]>, at: &dyn Fn(i64) -> bool) -> bool {
        shops_granted(&self.shops, BenefitLedger::grants, (shop, visitor), benefits, at)
    }

    fn grantees(&self, shop: &str, benefits: Option<&[Arc<str>]>, at: &dyn Fn(i64) -> bool, f: &mut dyn FnMut(&str)) {
        shops_grantees(&self.shops, BenefitLedger::grants, shop, benefits, at, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim<'a>(visitor: &'a str, id: Option<&'a str>) -> LedgerClaim<'a> {
        LedgerClaim {
            shop: "s",
            benefit: "b",
            visitor,
            now_ms: 1_000,
            claim_id: id,
            cap: Some((1, 100)),
            budget: Some(2),
            denied: None,
        }
    }

    #[test]
    fn cap_budget_and_idempotent_retries() {
        let ledger = MemoryLedger::new();
        assert_eq!(ledger.claim(&claim("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        assert_eq!(
            ledger.claim(&claim("a", Some("c1"))).unwrap(),
            ClaimOutcome::Granted,
            "retry gets the first answer"
        );
        assert_eq!(ledger.claim(&claim("a", None)).unwrap(), ClaimOutcome::CapReached);
        assert_eq!(ledger.claim(&claim("b", None)).unwrap(), ClaimOutcome::Granted);
        assert_eq!(ledger.claim(&claim("c", None)).unwrap(), ClaimOutcome::BudgetExhausted);
        let later = LedgerClaim {
            now_ms: 1_200,
            budget: None,
            ..claim("a", None)
        };
        assert_eq!(
            ledger.claim(&later).unwrap(),
            ClaimOutcome::Granted,
            "cap window has passed"
        );
        assert_eq!(
            ledger.usage("s", "b", "a", None),
            Usage {
                total: 3,
                visitor_in_window: 2
            }
        );
    }

    /// Regression (hardening #12): a claim_id reused by another visitor got
    /// the first visitor's grant; now it is refused, and the retry of the
    /// visitor who owns it still gets its first answer.
    #[test]
    fn a_claim_id_is_bound_to_its_visitor() {
        let ledger = MemoryLedger::new();
        assert_eq!(ledger.claim(&claim("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        let ineligible = LedgerClaim {
            denied: Some(ClaimOutcome::NotEligible),
            ..claim("intruder", Some("c1"))
        };
        assert_eq!(
            ledger.claim(&ineligible),
            Err(LedgerError::ClaimIdInUse { claim_id: "c1".into() })
        );
        assert_eq!(ledger.claim(&claim("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        assert_eq!(
            ledger.usage("s", "b", "intruder", None),
            Usage {
                total: 1,
                visitor_in_window: 0
            }
        );
    }

    #[test]
    fn an_image_restores_the_same_answers() {
        let ledger = MemoryLedger::new();
        assert_eq!(ledger.claim(&claim("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        assert_eq!(ledger.claim(&claim("b", None)).unwrap(), ClaimOutcome::Granted);
        let copy = MemoryLedger::from_image(ledger.image());
        assert_eq!(copy.usage("s", "b", "a", None), ledger.usage("s", "b", "a", None));
        assert_eq!(copy.claim(&claim("a", Some("c1"))).unwrap(), ClaimOutcome::Granted);
        assert_eq!(copy.claim(&claim("c", None)).unwrap(), ClaimOutcome::BudgetExhausted);
        assert_eq!(copy.image().len(), 1);
    }

    #[test]
    fn revoke_takes_back_exactly_one_grant() {
        let mut grants = Grants::default();
        grants.grant("a", 10);
        grants.grant("a", 20);
        grants.grant("b", 10);
        assert!(grants.revoke("a", 10));
        assert!(!grants.revoke("a", 10), "only one grant at 10");
        assert!(!grants.revoke("c", 10));
        assert_eq!((grants.total(), grants.in_window("a", None)), (2, 1));
        assert!(grants.revoke("a", 20));
        assert_eq!(
            grants.usage("a", None),
            Usage {
                total: 1,
                visitor_in_window: 0
            }
        );
    }

    #[test]
    fn concurrent_claims_never_exceed_the_budget() {
        let ledger = Arc::new(MemoryLedger::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|i| {
                            let visitor = format!("v{t}-{i}");
                            let c = LedgerClaim {
                                cap: None,
                                budget: Some(37),
                                ..claim(&visitor, None)
                            };
                            ledger.claim(&c).unwrap() == ClaimOutcome::Granted
                        })
                        .count()
                })
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(granted, 37);
    }
}
