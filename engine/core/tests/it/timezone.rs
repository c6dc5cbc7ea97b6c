//! Local days in a shop's time zone, end to end: the boundaries at local
//! midnight in Asia/Shanghai and America/New_York, New York's DST days, a
//! schedule that starts at local midnight, `days_since` and `avg_order`;
//! decisions and sizes agree at every instant.

use vitrine_core::event::Fields;
use vitrine_core::time::parse_rfc3339;
use vitrine_core::{decide, size_of, DecideRequest, Event, Index, MemoryLedger, RuleSet};

const AUDIENCES: [&str; 8] = [
    "today",
    "two_days",
    "last_24h",
    "recent",
    "lapsed",
    "bought_today",
    "big_baskets",
    "small_baskets",
];

fn rules(zone: &str) -> RuleSet {
    RuleSet::load(&format!(
        r#"shop: s
timezone: {zone}
audiences:
  today: visited(1d)
  two_days: visited(2d)
  last_24h: visited(24h)
  recent: days_since(visit) == 0
  lapsed: days_since(visit) >= 1 and days_since(visit) < 3
  bought_today: days_since(purchase) < 1
  big_baskets: avg_order(1d) >= 50
  small_baskets: avg_order(1d) < 50
benefits:
  - id: singles-day
    kind: coupon
    starts: 2026-11-11T00:00:00
    ends: 2026-11-12T00:00:00
"#
    ))
    .unwrap()
}

/// A shop in `zone` with its index on that zone's clock.
struct Shop {
    rules: RuleSet,
    index: Index,
}

impl Shop {
    fn new(zone: &str) -> Shop {
        let rules = rules(zone);
        let index = Index::new();
        index.shop_or_create_in("s", || rules.zone.clone());
        Shop { rules, index }
    }

    fn event(&self, visitor: &str, action: &str, price: f64, at: &str) {
        let fields = Fields {
            shop: Some("s".into()),
            visitor: Some(visitor.to_string().into()),
            action: Some(action.to_string().into()),
            item: Some("sku-1".into()),
            price: (action == "purchase").then_some(price),
            ts: Some(ms(at)),
            id: Some(format!("{visitor}-{at}").into()),
            ..Fields::default()
        };
        self.index
            .apply_in(&Event::validate(fields).unwrap(), || self.rules.zone.clone());
    }

    /// The audiences each visitor is in at `at`, by decide, checked against
    /// the sizes at the same instant.
    fn audiences(&self, visitors: &[&str], at: &str) -> Vec<Vec<String>> {
        let now_ms = ms(at);
        let shop = self.index.shop("s");
        let per_visitor: Vec<Vec<String>> = visitors
            .iter()
            .map(|v| {
                let d = decide(
                    &self.rules,
                    shop.as_deref(),
                    &MemoryLedger::new(),
                    &DecideRequest {
                        visitor: v,
                        explain: true,
                        now_ms,
                        ..DecideRequest::default()
                    },
                );
                d.explanation.unwrap().audiences
            })
            .collect();
        for name in AUDIENCES {
            let counted = per_visitor.iter().filter(|a| a.iter().any(|x| x == name)).count() as u64;
            assert_eq!(
                size_of(Some(&self.rules), shop.as_deref(), &MemoryLedger::new(), name, now_ms),
                Ok(counted),
                "size of {name} at {at}"
            );
        }
        per_visitor
    }

    fn benefit(&self, at: &str) -> Option<String> {
        let d = decide(
            &self.rules,
            self.index.shop("s").as_deref(),
            &MemoryLedger::new(),
            &DecideRequest {
                visitor: "v",
                now_ms: ms(at),
                ..DecideRequest::default()
            },
        );
        d.benefit.map(|b| b.id.to_string())
    }
}

fn ms(at: &str) -> i64 {
    parse_rfc3339(at).unwrap_or_else(|| panic!("bad test timestamp {at}"))
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// An event at 23:59 local counts in "today" until local midnight; one at
/// 00:00 the next day is in a later bucket for "yesterday's" now, and the
/// first one is "yesterday" once the day turns.
fn midnight_boundary(zone: &str, offset: &str) {
    let shop = Shop::new(zone);
    shop.event("late", "view", 0.0, &format!("2026-11-10T23:59:00{offset}"));
    shop.event("late", "purchase", 80.0, &format!("2026-11-10T23:59:30{offset}"));
    shop.event("early", "view", 0.0, &format!("2026-11-11T00:00:00{offset}"));
    let visitors = ["late", "early"];
    assert_eq!(
        shop.audiences(&visitors, &format!("2026-11-10T23:59:59.999{offset}")),
        [
            names(&["today", "two_days", "last_24h", "recent", "bought_today", "big_baskets"]),
            names(&[]),
        ],
        "{zone}, one ms before midnight"
    );
    assert_eq!(
        shop.audiences(&visitors, &format!("2026-11-11T00:00:00{offset}")),
        [
            names(&["two_days", "last_24h", "lapsed"]),
            names(&["today", "two_days", "last_24h", "recent"]),
        ],
        "{zone}, at midnight"
    );
    assert_eq!(
        shop.audiences(&visitors, &format!("2026-11-12T00:00:00{offset}")),
        [names(&["lapsed"]), names(&["two_days", "lapsed"])],
        "{zone}, the day after"
    );
}

#[test]
fn shanghai_days_turn_at_local_midnight() {
    midnight_boundary("Asia/Shanghai", "+08:00");
}

#[test]
fn new_york_days_turn_at_local_midnight() {
    midnight_boundary("America/New_York", "-05:00");
}

/// 2026-11-01 has 25 hours in New York: `1d` covers all of them, and `24h`
/// (24 clock hours) spans 25 real ones; 2026-03-08 has 23, and `24h` spans
/// 23 real ones.
#[test]
fn new_york_dst_days_are_whole_local_days() {
    let shop = Shop::new("America/New_York");
    shop.event("first", "view", 0.0, "2026-11-01T00:30:00-04:00");
    shop.event("before", "view", 0.0, "2026-10-31T23:59:00-04:00");
    let visitors = ["first", "before"];
    let late = shop.audiences(&visitors, "2026-11-01T23:59:00-05:00");
    assert_eq!(
        late[0],
        names(&["today", "two_days", "last_24h", "recent"]),
        "24.5 real hours later"
    );
    assert_eq!(late[1], names(&["two_days", "lapsed"]));
    // Fall back: 01:30 EDT and 01:30 EST are one clock hour.
    shop.event("fold", "view", 0.0, "2026-11-01T01:30:00-04:00");
    let hour = |at| {
        let rules = RuleSet::load("shop: s\ntimezone: America/New_York\naudiences:\n  hour: visited(1h)\n").unwrap();
        size_of(
            Some(&rules),
            shop.index.shop("s").as_deref(),
            &MemoryLedger::new(),
            "hour",
            ms(at),
        )
    };
    assert_eq!(
        hour("2026-11-01T01:59:00-05:00"),
        Ok(1),
        "an hour and a half after, same clock hour"
    );
    assert_eq!(hour("2026-11-01T02:00:00-05:00"), Ok(0));

    let spring = Shop::new("America/New_York");
    spring.event("first", "view", 0.0, "2026-03-08T00:30:00-05:00");
    spring.event("before", "view", 0.0, "2026-03-07T23:59:00-05:00");
    let late = spring.audiences(&visitors, "2026-03-08T23:59:00-04:00");
    assert_eq!(
        late[0],
        names(&["today", "two_days", "last_24h", "recent"]),
        "22.5 real hours later, within 24 clock hours"
    );
    assert_eq!(late[1], names(&["two_days", "lapsed"]));
    let next = spring.audiences(&visitors, "2026-03-09T00:00:00-04:00");
    assert_eq!(next[0], names(&["two_days", "lapsed"]));
}

/// `starts: 2026-11-11T00:00:00` without an offset is Shanghai's midnight.
#[test]
fn a_schedule_starts_at_local_midnight() {
    let shop = Shop::new("Asia/Shanghai");
    assert_eq!(shop.benefit("2026-11-10T23:59:59.999+08:00"), None);
    assert_eq!(
        shop.benefit("2026-11-11T00:00:00+08:00").as_deref(),
        Some("singles-day")
    );
    assert_eq!(
        shop.benefit("2026-11-11T23:59:59.999+08:00").as_deref(),
        Some("singles-day")
    );
    assert_eq!(shop.benefit("2026-11-12T00:00:00+08:00"), None);
    // The same file in UTC starts eight hours later.
    let utc = Shop::new("UTC");
    assert_eq!(utc.benefit("2026-11-11T00:00:00+08:00"), None);
    assert_eq!(utc.benefit("2026-11-11T00:00:00Z").as_deref(), Some("singles-day"));
}

/// `avg_order` is false without a purchase in the window, whatever it
/// compares; with purchases it is spend over their count.
#[test]
fn avg_order_divides_spend_by_purchases() {
    let shop = Shop::new("Asia/Kathmandu");
    shop.event("big", "purchase", 40.0, "2026-11-10T10:00:00+05:45");
    shop.event("big", "purchase", 60.0, "2026-11-10T11:00:00+05:45");
    shop.event("small", "purchase", 49.5, "2026-11-10T00:00:00+05:45");
    shop.event("none", "view", 0.0, "2026-11-10T00:00:00+05:45");
    // Yesterday in Kathmandu (18:14 UTC on the 9th).
    shop.event("old", "purchase", 500.0, "2026-11-09T23:59:00+05:45");
    let at = shop.audiences(&["big", "small", "none", "old"], "2026-11-10T12:00:00+05:45");
    let baskets = |a: &Vec<String>| a.iter().filter(|n| n.ends_with("baskets")).cloned().collect::<Vec<_>>();
    assert_eq!(
        at.iter().map(baskets).collect::<Vec<_>>(),
        [
            names(&["big_baskets"]),
            names(&["small_baskets"]),
            names(&[]),
            names(&[])
        ]
    );
}
