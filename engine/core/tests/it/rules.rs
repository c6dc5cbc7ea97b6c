//! Rule files: the full example loads, and every listed mistake is
//! reported with its exact message at its exact `line:column`.

use vitrine_core::RuleSet;

/// A rule file using every key (`rules/README.md`, "The shape of a file").
pub const FULL_EXAMPLE: &str = r#"shop: demo-apparel              # required: the storefront this rule set governs

audiences:                      # name -> audience expression (section 2)
  new_visitor:     not visited(365d)
  returning:       visited(30d) and not purchased(365d)
  cart_abandoner:  carted(7d) and not purchased(7d)
  loyal:           purchase_count(365d) >= 3 or spend(365d) >= 2000
  lapsed:          purchased(360d) and not purchased(180d)
  vip:             member_tier >= 4
  price_sensitive: tag("price_sensitive")
  south:           ctx.region in ["south", "southwest"]

banners:                        # ordered; the first entry whose `when` matches wins
  - when: vip
    banner: vip-gold
  - when: new_visitor and south
    banner: welcome-south
  - banner: default             # no `when`: always matches (the fallback)

items:
  limit: 6                      # at most this many items in a decision
  exclude_purchased: 30d        # never show what the visitor bought within this window
  pools:                        # candidate items; every pool whose `when` matches contributes
    - when: cart_abandoner
      items: [sku-101, sku-102, sku-103]
    - items: [sku-001, sku-002, sku-003, sku-004, sku-005, sku-006, sku-007]
  complements:                  # cross-sell for the item in the request's context
    sku-wallet: [sku-cardholder, sku-keyring]

benefits:                       # ordered by priority; the first eligible one is offered
  - id: early-access
    when: vip
    kind: ticket
    params: { enter_early_minutes: "30" }
    starts: 2026-11-10T23:30:00+08:00
    ends:   2026-11-11T00:00:00+08:00
    budget: 500                 # at most 500 grants in total
  - id: cart-coupon-10
    when: cart_abandoner and price_sensitive
    kind: coupon
    params: { amount: "10", min_spend: "99" }
    cap: { per_visitor: 1, window: 30d }   # at most one grant per visitor per 30 days
    holdout: 10%                # 10% of the audience never gets it (control group)
  - id: double-points
    when: loyal and not price_sensitive
    kind: points
    params: { multiplier: "2" }
"#;

/// The errors of a file as `line:column: message` lines.
fn errors(source: &str) -> Vec<String> {
    match RuleSet::load(source) {
        Ok(_) => panic!("expected errors, the file loaded"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(source: &str) -> String {
    let all = errors(source);
    assert_eq!(all.len(), 1, "{all:#?}");
    all[0].clone()
}

#[test]
fn the_contract_example_loads() {
    let rules = RuleSet::load(FULL_EXAMPLE).unwrap();
    assert_eq!(&*rules.shop, "demo-apparel");
    assert_eq!(rules.plan.audiences().len(), 8);
    assert_eq!(rules.banners.len(), 3);
    assert_eq!(rules.items().limit, 6);
    assert_eq!(rules.items().pools.len(), 2);
    assert_eq!(rules.benefits.len(), 3);
    let coupon = rules.benefit("cart-coupon-10").unwrap();
    assert_eq!(coupon.holdout_bp, 1000);
    assert_eq!(coupon.cap.unwrap().per_visitor, 1);
    let ticket = rules.benefit("early-access").unwrap();
    assert_eq!(ticket.budget, Some(500));
    assert_eq!(ticket.starts, Some(1_794_324_600_000));
    assert_eq!(ticket.ends, Some(1_794_326_400_000));
    assert_eq!(&*ticket.params[0].1, "30");
    assert!(rules.plan.audiences()[7].uses_ctx, "south reads ctx.region");
    assert!(!rules.plan.audiences()[0].uses_ctx);
}

#[test]
fn unknown_keys() {
    assert_eq!(
        one_error("shop: s\nbanner:\n  - banner: x\n"),
        "2:1: unknown key `banner` in the rule file; expected one of: shop, audiences, banners, items, benefits, timezone, tiers"
    );
    assert_eq!(
        one_error("shop: s\nbenefits:\n  - id: b\n    kind: coupon\n    budgett: 5\n"),
        "5:5: unknown key `budgett` in a benefit; expected one of: id, when, kind, params, starts, ends, budget, cap, holdout"
    );
    assert_eq!(
        one_error("shop: s\nitems:\n  pools:\n    - items: [a]\n      whn: x\n"),
        "5:7: unknown key `whn` in a pool; expected one of: when, items, starts, ends"
    );
}

#[test]
fn duplicate_ids() {
    assert_eq!(
        one_error("shop: s\naudiences:\n  a: true\n  b: false\n  a: false\n"),
        "5:3: duplicate audience `a` (first defined at 3:3)"
    );
    assert_eq!(
        one_error("shop: s\nbenefits:\n  - id: b\n    kind: k\n  - id: b\n    kind: k\n"),
        "5:9: duplicate benefit id `b` (first defined at 3:9)"
    );
}

#[test]
fn undefined_references_point_into_the_expression() {
    assert_eq!(
        one_error(
            "shop: s\naudiences:\n  vip: member_tier >= 4\nbanners:\n  - when: vip and not vipp\n    banner: x\n"
        ),
        "5:23: undefined audience `vipp`"
    );
    // A multi-line plain scalar: the column is where the name stands in the file.
    assert_eq!(
        one_error("shop: s\naudiences:\n  a: visited(7d) and\n     (tag(\"x\") or nobody)\n"),
        "4:19: undefined audience `nobody`"
    );
    // A double-quoted scalar: the column counts the opening quote.
    assert_eq!(
        one_error("shop: s\naudiences:\n  a: \"ghost\"\n"),
        "3:7: undefined audience `ghost`"
    );
}

#[test]
fn cycles() {
    assert_eq!(
        one_error("shop: s\naudiences:\n  a: b and true\n  b: c\n  c: a or false\n"),
        "5:6: audience reference cycle: a -> b -> c -> a"
    );
    assert_eq!(
        one_error("shop: s\naudiences:\n  a: not a\n"),
        "3:10: audience reference cycle: a -> a"
    );
}

#[test]
fn malformed_windows() {
    assert_eq!(
        one_error("shop: s\naudiences:\n  a: viewed(7x)\n"),
        "3:13: invalid window `7x`: expected a whole number followed by h or d, e.g. 7d or 12h"
    );
    assert_eq!(
        one_error("shop: s\naudiences:\n  a: carted(0d)\n"),
        "3:13: invalid window `0d`: must be at least 1h"
    );
    assert_eq!(
        one_error("shop: s\naudiences:\n  a: spend(401d) > 5\n"),
        "3:12: invalid window `401d`: longer than the maximum of 400d"
    );
    assert_eq!(
        one_error("shop: s\nitems:\n  exclude_purchased: 30 days\n"),
        "3:22: invalid window `30 days`: expected a whole number followed by h or d, e.g. 7d or 12h"
    );
    assert_eq!(
        one_error("shop: s\nbenefits:\n  - id: b\n    kind: k\n    cap: { per_visitor: 1, window: 0h }\n"),
        "5:36: invalid window `0h`: must be at least 1h"
    );
}

#[test]
fn malformed_percentages() {
    for (text, col) in [("110%", 14), ("10", 14), ("-5%", 14), ("ten%", 14)] {
        assert_eq!(
            one_error(&format!(
                "shop: s\nbenefits:\n  - id: b\n    kind: k\n    holdout: {text}\n"
            )),
            format!("5:{col}: invalid percentage `{text}`: expected 0% to 100%, e.g. 10%")
        );
    }
    let rules = RuleSet::load("shop: s\nbenefits:\n  - id: b\n    kind: k\n    holdout: 2.5%\n").unwrap();
    assert_eq!(rules.benefits[0].holdout_bp, 250);
}

#[test]
fn malformed_timestamps_and_inverted_windows() {
    assert_eq!(
        one_error("shop: s\nbenefits:\n  - id: b\n    kind: k\n    starts: 2026-11-10 23:30\n"),
        "5:13: invalid timestamp `2026-11-10 23:30`: expected RFC 3339, e.g. 2026-11-10T23:30:00+08:00"
    );
    assert_eq!(
        one_error(
            "shop: s\nbenefits:\n  - id: b\n    kind: k\n    starts: 2026-11-11T00:00:00+08:00\n    ends: 2026-11-10T16:00:00Z\n"
        ),
        "6:11: `ends` must be after `starts`"
    );
}

#[test]
fn every_error_of_a_file_at_once() {
    let source = "shop: s\naudiences:\n  a: viewed(7x)\n  b: c\n  a: true\nbanners:\n  - when: zzz\n    banner: x\nbenefits:\n  - id: b\n    kind: k\n    holdout: 200%\n    colour: red\n";
    assert_eq!(
        errors(source),
        vec![
            "3:13: invalid window `7x`: expected a whole number followed by h or d, e.g. 7d or 12h",
            "4:6: undefined audience `c`",
            "5:3: duplicate audience `a` (first defined at 3:3)",
            "7:11: undefined audience `zzz`",
            "12:14: invalid percentage `200%`: expected 0% to 100%, e.g. 10%",
            "13:5: unknown key `colour` in a benefit; expected one of: id, when, kind, params, starts, ends, budget, cap, holdout",
        ]
    );
}

#[test]
fn shape_errors() {
    assert_eq!(
        one_error(""),
        "1:1: empty rule file: expected a mapping with at least `shop`"
    );
    assert_eq!(one_error("audiences: {}\n"), "1:1: missing required key `shop`");
    assert_eq!(
        one_error("shop: s\nbanners: nope\n"),
        "2:10: `banners` must be a list, found a scalar"
    );
    assert_eq!(
        one_error("shop: s\nbenefits:\n  - id: b\n"),
        "3:5: benefit is missing required key `kind`"
    );
    assert_eq!(
        one_error("shop: s\nitems:\n  limit: 0\n"),
        "3:10: `limit` must be a whole number from 1 to 100, found `0`"
    );
    assert_eq!(
        one_error("shop: s\nshop: t\n"),
        "2:1: duplicate key `shop` in the rule file (first at 1:1)"
    );
    assert_eq!(
        one_error("shop: [s\n"),
        "2:1: invalid YAML: while parsing a flow sequence, expected ',' or ']'"
    );
    assert_eq!(
        one_error("shop: s\naudiences:\n  Big: true\n"),
        "3:3: invalid audience name `Big`: use lower-case letters, digits and `_`, not starting with a digit, and not a keyword"
    );
    assert_eq!(
        one_error("shop: s\naudiences:\n  a: viewd(7d)\n"),
        "3:6: unknown function `viewd`"
    );
}
