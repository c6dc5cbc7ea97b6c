//! Decisions, claims and sizes end to end through the public API.

use vitrine_core::eval::decide::{ItemReason, Slot, Step, StepOutcome};
use vitrine_core::event::Fields;
use vitrine_core::{
    audience_sizes, claim, decide, size_of, ClaimOutcome, ClaimRequest, Context, DecideRequest, Event, Index,
    MemoryLedger, RuleSet, SizeError,
};

use crate::rules::FULL_EXAMPLE;

const DAY: i64 = 86_400_000;
/// 2026-11-10T23:45:00+08:00: inside the example's early-access window.
const NOW: i64 = 1_794_325_500_000;

struct Shop {
    rules: RuleSet,
    index: Index,
    ledger: MemoryLedger,
}

fn event(visitor: &str, action: &str, item: Option<&str>, category: Option<&str>, ts: i64) -> Fields<'static> {
    Fields {
        shop: Some("demo-apparel".to_string().into()),
        visitor: Some(visitor.to_string().into()),
        action: Some(action.to_string().into()),
        item: item.map(|s| s.to_string().into()),
        category: category.map(|s| s.to_string().into()),
        ts: Some(ts),
        ..Fields::default()
    }
}

impl Shop {
    fn new(rules: &str) -> Shop {
        Shop {
            rules: RuleSet::load(rules).unwrap(),
            index: Index::new(),
            ledger: MemoryLedger::new(),
        }
    }

    fn apply(&self, fields: Fields<'static>) {
        self.index.apply(&Event::validate(fields).unwrap());
    }

    fn view(&self, v: &str, item: &str, cat: &str, ts: i64) {
        self.apply(event(v, "view", Some(item), Some(cat), ts));
    }

    fn cart(&self, v: &str, item: &str, ts: i64) {
        self.apply(event(v, "cart", Some(item), Some("tops"), ts));
    }

    fn buy(&self, v: &str, item: &str, price: f64, ts: i64) {
        self.apply(Fields {
            price: Some(price),
            ..event(v, "purchase", Some(item), Some("tops"), ts)
        });
    }

    fn tag(&self, v: &str, tag: &str, ts: i64) {
        self.apply(Fields {
            tag: Some(tag.to_string().into()),
            ..event(v, "tag", None, None, ts)
        });
    }

    fn tier(&self, v: &str, tier: i64, ts: i64) {
        self.apply(Fields {
            tier: Some(tier),
            ..event(v, "member", None, None, ts)
        });
    }

    fn decide(&self, visitor: &str, context: Context<'_>) -> vitrine_core::Decision<'_> {
        let shop = self.index.shop(&self.rules.shop);
        decide(
            &self.rules,
            shop.as_deref(),
            &self.ledger,
            &DecideRequest {
                visitor,
                context,
                explain: true,
                now_ms: NOW,
                ..DecideRequest::default()
            },
        )
    }

    fn claim(&self, visitor: &str, benefit: &str, claim_id: Option<&str>) -> ClaimOutcome {
        let shop = self.index.shop(&self.rules.shop);
        claim(
            &self.rules,
            shop.as_deref(),
            &self.ledger,
            &ClaimRequest {
                visitor,
                benefit,
                now_ms: NOW,
                claim_id,
                context: Context::default(),
            },
        )
        .unwrap()
    }

    fn size(&self, expression: &str) -> Result<u64, SizeError> {
        size_of(
            Some(&self.rules),
            self.index.shop(&self.rules.shop).as_deref(),
            &vitrine_core::MemoryLedger::new(),
            expression,
            NOW,
        )
    }
}

fn items(d: &vitrine_core::Decision<'_>) -> Vec<(String, ItemReason)> {
    d.items.iter().map(|p| (p.id.to_string(), p.reason)).collect()
}

#[test]
fn banners_follow_audiences_and_context() {
    let shop = Shop::new(FULL_EXAMPLE);
    let south = Context {
        region: "southwest",
        ..Context::default()
    };
    // Anonymous and unknown visitors have no history: new visitors.
    assert_eq!(shop.decide("", south).banner, Some("welcome-south"));
    assert_eq!(shop.decide("stranger", south).banner, Some("welcome-south"));
    assert_eq!(shop.decide("stranger", Context::default()).banner, Some("default"));
    shop.view("v-1", "sku-001", "tops", NOW - 3 * DAY);
    assert_eq!(
        shop.decide("v-1", south).banner,
        Some("default"),
        "v-1 visited: not new"
    );
    shop.tier("v-1", 4, NOW - DAY);
    let d = shop.decide("v-1", south);
    assert_eq!(d.banner, Some("vip-gold"));
    let explanation = d.explanation.unwrap();
    assert_eq!(explanation.audiences, ["returning", "vip", "south"]);
    assert_eq!(
        explanation.steps[0],
        Step {
            slot: Slot::Banner,
            entry: "banners[0] vip-gold".into(),
            outcome: StepOutcome::Chosen
        }
    );
}

#[test]
fn items_rank_carts_then_categories_then_popularity_and_skip_purchases() {
    let rules = FULL_EXAMPLE.replace(
        "    - items: [sku-001, sku-002, sku-003, sku-004, sku-005, sku-006, sku-007]",
        "    - items: [sku-001, sku-002, sku-003, sku-004, sku-005, sku-006, sku-007, sku-wallet]",
    );
    let shop = Shop::new(&rules);
    // Catalog facts from other shoppers: categories and popularity.
    shop.view("x", "sku-004", "shoes", NOW - 40 * DAY);
    shop.buy("x", "sku-006", 10.0, NOW - 2 * DAY);
    shop.buy("y", "sku-006", 10.0, NOW - DAY);
    shop.buy("y", "sku-005", 10.0, NOW - DAY);
    // The visitor: carted sku-102 and sku-003, bought sku-003 and sku-001, viewed shoes.
    shop.cart("v", "sku-102", NOW - DAY);
    shop.cart("v", "sku-003", NOW - DAY);
    shop.buy("v", "sku-003", 20.0, NOW - DAY / 2);
    shop.buy("v", "sku-001", 20.0, NOW - 20 * DAY);
    shop.view("v", "sku-777", "shoes", NOW - 2 * DAY);
    let d = shop.decide(
        "v",
        Context {
            item: "sku-wallet",
            ..Context::default()
        },
    );
    assert_eq!(
        items(&d),
        [
            ("sku-cardholder".to_string(), ItemReason::Complement),
            ("sku-keyring".to_string(), ItemReason::Complement),
            ("sku-004".to_string(), ItemReason::ViewedCategory),
            ("sku-006".to_string(), ItemReason::Popular),
            ("sku-005".to_string(), ItemReason::Popular),
            ("sku-002".to_string(), ItemReason::Pool),
        ],
        "cart_abandoner does not hold (v bought within 7d), bought items and the context item are skipped"
    );
    // A cart abandoner sees the cart pool, carted item first.
    shop.cart("w", "sku-103", NOW - DAY);
    let d = shop.decide("w", Context::default());
    assert_eq!(items(&d)[0], ("sku-103".to_string(), ItemReason::InCart));
    assert_eq!(items(&d)[1], ("sku-006".to_string(), ItemReason::Popular));
    assert_eq!(d.items.len(), 6);
    let steps = d.explanation.unwrap().steps;
    assert!(steps.contains(&Step {
        slot: Slot::Items,
        entry: "pools[0]".into(),
        outcome: StepOutcome::Contributed
    }));
}

#[test]
fn benefits_respect_window_holdout_cap_and_budget() {
    let shop = Shop::new(FULL_EXAMPLE);
    // Cart abandoners who are price sensitive get the coupon unless held out.
    let mut held = None;
    let mut offered = None;
    for i in 0..200 {
        let v = format!("v{i}");
        shop.cart(&v, "sku-101", NOW - DAY);
        shop.tag(&v, "price_sensitive", NOW - DAY);
        let d = shop.decide(&v, Context::default());
        match d.benefit.map(|b| &*b.id) {
            Some("cart-coupon-10") => offered = offered.or(Some(v)),
            None => {
                let steps = d.explanation.unwrap().steps;
                assert!(steps.iter().any(|s| s.outcome == StepOutcome::HeldOut), "{steps:?}");
                held = held.or(Some(v));
            }
            other => panic!("{other:?}"),
        }
    }
    let (held, offered) = (held.unwrap(), offered.unwrap());
    assert_eq!(shop.claim(&held, "cart-coupon-10", None), ClaimOutcome::HeldOut);
    assert_eq!(
        shop.claim(&offered, "cart-coupon-10", Some("c-1")),
        ClaimOutcome::Granted
    );
    assert_eq!(
        shop.claim(&offered, "cart-coupon-10", Some("c-1")),
        ClaimOutcome::Granted,
        "a retry gets the first answer"
    );
    assert_eq!(
        shop.claim(&offered, "cart-coupon-10", Some("c-2")),
        ClaimOutcome::CapReached
    );
    let d = shop.decide(&offered, Context::default());
    assert!(d.benefit.is_none());
    assert!(d.explanation.unwrap().steps.contains(&Step {
        slot: Slot::Benefit,
        entry: "benefits[1] cart-coupon-10".into(),
        outcome: StepOutcome::CapReached
    }));
    assert_eq!(shop.claim("nobody", "cart-coupon-10", None), ClaimOutcome::NotEligible);

    // VIP early access: inside its window, budget-limited.
    let rules = FULL_EXAMPLE.replace("budget: 500", "budget: 1");
    let shop = Shop::new(&rules);
    shop.tier("a", 5, NOW - DAY);
    shop.tier("b", 4, NOW - DAY);
    assert_eq!(
        shop.decide("a", Context::default()).benefit.map(|b| &*b.id),
        Some("early-access")
    );
    assert_eq!(shop.claim("a", "early-access", None), ClaimOutcome::Granted);
    assert_eq!(shop.claim("b", "early-access", None), ClaimOutcome::BudgetExhausted);
    let d = shop.decide("b", Context::default());
    assert!(d.benefit.is_none());
    assert!(d
        .explanation
        .unwrap()
        .steps
        .iter()
        .any(|s| s.outcome == StepOutcome::BudgetExhausted));
    let later = ClaimRequest {
        visitor: "b",
        benefit: "early-access",
        now_ms: NOW + DAY,
        claim_id: None,
        context: Context::default(),
    };
    let index = shop.index.shop("demo-apparel");
    assert_eq!(
        claim(&shop.rules, index.as_deref(), &shop.ledger, &later).unwrap(),
        ClaimOutcome::OutsideWindow
    );
    assert!(claim(
        &shop.rules,
        index.as_deref(),
        &shop.ledger,
        &ClaimRequest {
            benefit: "nope",
            ..later
        }
    )
    .is_err());
}

#[test]
fn holdout_is_stable_across_revisions() {
    let a = Shop::new(FULL_EXAMPLE);
    let b = Shop::new(&FULL_EXAMPLE.replace("kind: coupon", "kind: voucher"));
    for i in 0..100 {
        let v = format!("v{i}");
        for shop in [&a, &b] {
            shop.cart(&v, "sku-101", NOW - DAY);
            shop.tag(&v, "price_sensitive", NOW - DAY);
        }
        assert_eq!(
            a.decide(&v, Context::default()).benefit.is_some(),
            b.decide(&v, Context::default()).benefit.is_some()
        );
    }
}

#[test]
fn audience_sizes_count_known_visitors() {
    let shop = Shop::new(FULL_EXAMPLE);
    shop.view("a", "sku-001", "tops", NOW - DAY);
    shop.cart("b", "sku-101", NOW - 2 * DAY);
    shop.buy("c", "sku-101", 1000.0, NOW - 10 * DAY);
    shop.buy("c", "sku-102", 1500.0, NOW - 300 * DAY);
    shop.buy("d", "sku-101", 10.0, NOW - 200 * DAY);
    shop.tier("e", 4, NOW);
    shop.tag("b", "price_sensitive", NOW);
    assert_eq!(shop.size("new_visitor"), Ok(1), "e has only a member event");
    assert_eq!(shop.size("cart_abandoner"), Ok(1));
    assert_eq!(shop.size("loyal"), Ok(1));
    assert_eq!(shop.size("lapsed"), Ok(1));
    assert_eq!(shop.size("vip or price_sensitive"), Ok(2));
    assert_eq!(shop.size("spend(365d) < 100"), Ok(4));
    assert_eq!(shop.size("member_tier == 0"), Ok(4));
    assert_eq!(shop.size("viewed(1h)"), Ok(0));
    assert_eq!(shop.size("south"), Err(SizeError::UsesContext));
    assert_eq!(
        shop.size("vip and nobody"),
        Err(SizeError::UndefinedAudience {
            column: 9,
            name: "nobody".into()
        })
    );
    assert!(matches!(shop.size("vip and"), Err(SizeError::Syntax { column: 8, .. })));
    let sizes = audience_sizes(
        &shop.rules,
        shop.index.shop("demo-apparel").as_deref(),
        &vitrine_core::MemoryLedger::new(),
        NOW,
    );
    assert_eq!(sizes[0], ("new_visitor".to_string(), Some(1)));
    assert_eq!(sizes[7], ("south".to_string(), None));
}
