//! Hostile inputs against the rule language's second edition and the
//! measurement work, each found by an attack and pinned here: what the
//! input was, what it must do.

use std::collections::HashMap;

use vitrine_core::time::{parse_timestamp_in, Zone, MAX_NOW_MS};
use vitrine_core::{decide, snapshot, Context, DecideRequest, Event, Index, MemoryLedger, RuleSet};

/// jiff's last instant, 9999-12-30T22:00:00Z: past it the zone database
/// has no answer, though events and requests go on to MAX_NOW_MS.
const DATABASE_END_MS: i64 = 253_402_207_200_000;

/// A purchase whose `price * quantity` overflows to infinity was accepted,
/// stored in the profile, written to the snapshot, and the snapshot then
/// refused to load ("purchase amount is not a finite non-negative number"):
/// one hostile event made every later restart fail. It is refused instead.
#[test]
fn a_purchase_whose_amount_overflows_is_refused_and_snapshots_still_load() {
    let hostile =
        br#"{"shop":"s","visitor":"v","action":"purchase","item":"i","price":1e308,"quantity":2,"ts":1794000900000}"#;
    let err = Event::from_json(hostile).unwrap_err();
    assert_eq!(err.message, "`price` * `quantity` must be a finite number");
    // The largest accepted amount still round-trips through a snapshot.
    let index = Index::new();
    let ok =
        br#"{"shop":"s","visitor":"v","action":"purchase","item":"i","price":1e308,"quantity":1,"ts":1794000900000}"#;
    index.apply(&Event::from_json(ok).unwrap());
    let bytes = snapshot::encode(&index, b"");
    assert!(snapshot::decode(&bytes).is_ok());
}

/// Past the zone database's last instant the offset used to fall to 0, so
/// in a zone east of UTC a later instant read an earlier clock (Shanghai's
/// clock went back 8 hours at 9999-12-30T22:00Z): events and decisions of
/// the last day were bucketed out of order.
#[test]
fn the_shop_clock_never_runs_backwards_up_to_the_last_instant() {
    for name in [
        "Asia/Shanghai",
        "Pacific/Kiritimati",
        "America/New_York",
        "Asia/Kathmandu",
    ] {
        let zone = Zone::get(name).unwrap();
        let mut last = i64::MIN;
        let mut ts = DATABASE_END_MS - 3 * 3_600_000;
        while ts <= MAX_NOW_MS {
            let clock = zone.clock_ms(ts);
            assert!(clock >= last, "{name}: clock at {ts} is {clock}, before {last}");
            last = clock;
            ts += 60_000;
        }
        let at_end = zone.offset_ms(MAX_NOW_MS);
        assert_eq!(at_end, zone.offset_ms(DATABASE_END_MS - 1), "{name}");
    }
}

/// A wall time of 9999-12-31 east of UTC is an instant before MAX_NOW_MS,
/// yet it was refused as "invalid timestamp ... expected RFC 3339".
#[test]
fn a_local_time_on_the_last_day_east_of_utc_is_a_timestamp() {
    let kiritimati = Zone::get("Pacific/Kiritimati").unwrap();
    // +14:00: 23:59:59 local is 09:59:59Z the same day.
    assert_eq!(
        parse_timestamp_in("9999-12-31T23:59:59", &kiritimati),
        parse_timestamp_in("9999-12-31T09:59:59Z", &kiritimati)
    );
    let rules = RuleSet::load(
        "shop: s\ntimezone: Pacific/Kiritimati\nbanners:\n  - banner: until-the-end\n    ends: 9999-12-31T23:59:59\n",
    );
    assert!(rules.is_ok(), "{:?}", rules.err());
}

/// `threshold: 1e308` and a cart total of `-1e308` made the add-on gap
/// infinite: reported to the renderer as `inf` (JSON has no such number),
/// and no price covers it. Such a request has no add-on.
#[test]
fn an_add_on_gap_is_always_a_finite_number() {
    let rules = RuleSet::load("shop: s\nitems:\n  add_on:\n    threshold: 1e308\n").unwrap();
    let index = Index::new();
    let gap = |total: &str| {
        let attrs: HashMap<String, String> = [("cart_total".to_string(), total.to_string())].into();
        let req = DecideRequest {
            visitor: "v",
            context: Context {
                attributes: Some(&attrs),
                ..Context::default()
            },
            item_limit: 0,
            explain: false,
            now_ms: 1_794_000_000_000,
        };
        decide(&rules, index.shop("s").as_deref(), &MemoryLedger::default(), &req).add_on_gap
    };
    assert_eq!(gap("-1e308"), None);
    assert_eq!(gap("1e307"), Some(1e308 - 1e307));
    for not_a_number in ["1e309", "-1e309", "NaN", " 5", "0x5", "inf"] {
        assert_eq!(gap(not_a_number), None, "{not_a_number:?}");
    }
}

/// What held: an exposure at a local hour boundary of a +05:45 zone and of
/// New York's repeated hour counts alike in `offered(1h)` decisions, its
/// size, and the lift report's range.
#[test]
fn offered_in_hours_agrees_in_decide_size_and_lift_at_local_hour_boundaries() {
    use vitrine_core::time::{Unit, Window};
    use vitrine_core::{lift, size_of, Exposure, LiftQuery};
    const HOUR: i64 = 3_600_000;
    // 2026-11-10T18:15:00Z is 00:00 in Kathmandu; 2026-11-01T06:00Z is
    // 01:00 EST in New York, the repeated hour (05:00Z was 01:00 EDT).
    for (zone, boundary) in [
        ("Asia/Kathmandu", 1_794_334_500_000_i64),
        ("America/New_York", 1_793_512_800_000),
    ] {
        let rules = RuleSet::load(&format!(
            "shop: s\ntimezone: {zone}\naudiences:\n  recent: offered(1h, benefit=\"c\")\nbanners:\n  - banner: seen\n    when: recent\nbenefits:\n  - id: c\n    kind: coupon\n    holdout: 50%\n"
        ))
        .unwrap();
        for (exposed, label) in [
            (boundary - 1, "just before"),
            (boundary, "at"),
            (boundary + HOUR / 2, "inside"),
        ] {
            let index = Index::new();
            let shop = index.shop_or_create_in("s", || rules.zone.clone());
            assert!(shop.apply_exposure(&Exposure {
                ts_ms: exposed,
                visitor: "v",
                banner: None,
                benefit: Some("c"),
                held_out: &[],
            }));
            for now in [boundary, boundary + HOUR - 1, boundary + HOUR, boundary + 2 * HOUR - 1] {
                let req = DecideRequest {
                    visitor: "v",
                    context: Context::default(),
                    item_limit: 0,
                    explain: false,
                    now_ms: now,
                };
                let decided = decide(&rules, Some(&shop), &MemoryLedger::default(), &req).banner == Some("seen");
                let size = size_of(Some(&rules), Some(&shop), &MemoryLedger::default(), "recent", now).unwrap();
                assert_eq!(decided, size == 1, "{zone} exposure {label} the boundary, now {now}");
            }
            let counted = |from_ms| {
                let q = LiftQuery {
                    id: Some("c"),
                    window: Window {
                        amount: 1,
                        unit: Unit::Hours,
                    },
                    from_ms,
                    to_ms: 0,
                };
                lift(&rules, Some(&shop), &q).unwrap()[0].treated
            };
            // An exposure is in the range when its clock hour starts at or
            // after the clock reading of `from_ms` (in New York's repeated
            // hour, an instant of the first 01:xx has the second's clock hour).
            let hour_start = shop.clock_ms(exposed).div_euclid(HOUR) * HOUR;
            for from in [boundary - HOUR, boundary, boundary + 1] {
                let expected = hour_start >= shop.clock_ms(from);
                assert_eq!(
                    counted(from) == 1,
                    expected,
                    "{zone} exposure {label} the boundary, from {from}"
                );
            }
        }
    }
}

/// What held: context values a client controls compare as the docs say:
/// a value that is not a finite number makes every numeric atom false
/// (`!=` too), `-0` equals 0, and an underflow is 0.
#[test]
fn hostile_context_numbers_compare_as_documented() {
    let rules = RuleSet::load(
        "shop: s\naudiences:\n  ge: ctx.x >= 0\n  lt: ctx.x < 0\n  eq: ctx.x == 0\n  ne: ctx.x != 0\nbanners:\n  - banner: ge\n    when: ge\n  - banner: lt\n    when: lt\n  - banner: eq\n    when: eq\n  - banner: ne\n    when: ne\n",
    )
    .unwrap();
    let banner = |value: &str| {
        let attrs: HashMap<String, String> = [("x".to_string(), value.to_string())].into();
        let req = DecideRequest {
            visitor: "v",
            context: Context {
                attributes: Some(&attrs),
                ..Context::default()
            },
            item_limit: 0,
            explain: false,
            now_ms: 1_794_000_000_000,
        };
        decide(&rules, None, &MemoryLedger::default(), &req).banner
    };
    for not_a_number in [
        "1e309", "-1e309", "NaN", "inf", "-inf", " 5", "5 ", "0x5", "1_0", "", "٣",
    ] {
        assert_eq!(banner(not_a_number), None, "{not_a_number:?}");
    }
    for (value, want) in [
        ("-0", "ge"),
        ("1e-400", "ge"),
        ("-1e-400", "ge"),
        ("-1e308", "lt"),
        ("+5", "ge"),
        (".5", "ge"),
    ] {
        assert_eq!(banner(value), Some(want), "{value:?}");
    }
}

/// A visitor held out of more than 8 entries (nine banners with a holdout,
/// all matching) got a decision whose held-out list no record could carry:
/// the decision log cut it to 8 and the index refused more, so the later
/// entries (the benefits last) lost the visitor from their control groups
/// and the lift report undercounted them. Every held-out entry now reaches
/// the index, and a file may give at most 64 entries a holdout.
#[test]
fn every_entry_a_visitor_is_held_out_of_reaches_its_control_group() {
    use vitrine_core::time::{Unit, Window};
    use vitrine_core::{lift, Exposure, LiftQuery};
    let mut src = String::from("shop: s\nbanners:\n");
    for i in 0..9 {
        src.push_str(&format!("  - banner: b{i}\n    holdout: 100%\n"));
    }
    src.push_str("benefits:\n  - id: c\n    kind: coupon\n    holdout: 100%\n");
    let rules = RuleSet::load(&src).unwrap();
    let index = Index::new();
    let shop = index.shop_or_create("s");
    let req = DecideRequest {
        visitor: "v",
        context: Context::default(),
        item_limit: 0,
        explain: false,
        now_ms: 1_794_000_000_000,
    };
    let d = decide(&rules, Some(&shop), &MemoryLedger::default(), &req);
    assert_eq!(d.held_out.len(), 10);
    let exposure = Exposure {
        ts_ms: req.now_ms,
        visitor: "v",
        banner: d.banner,
        benefit: d.benefit.map(|b| &*b.id),
        held_out: &d.held_out,
    };
    assert_eq!(exposure.check(), Ok(()));
    assert!(shop.apply_exposure(&exposure));
    let q = LiftQuery {
        id: None,
        window: Window {
            amount: 7,
            unit: Unit::Days,
        },
        from_ms: 0,
        to_ms: 0,
    };
    let rows = lift(&rules, Some(&shop), &q).unwrap();
    assert_eq!(rows.len(), 10);
    for row in rows {
        assert_eq!((row.treated, row.control), (0, 1), "{}", row.id);
    }
}

#[test]
fn a_file_gives_at_most_64_entries_a_holdout() {
    let entries = |n: usize| {
        let mut src = String::from("shop: s\nbanners:\n  - banner: zero\n    holdout: 0%\n");
        for i in 0..n {
            src.push_str(&format!("  - banner: b{i}\n    holdout: 1%\n"));
        }
        src
    };
    assert!(RuleSet::load(&entries(64)).is_ok());
    let errors: Vec<String> = RuleSet::load(&entries(66))
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        ["134:14: more than 64 banners and benefits have a holdout (a decision record lists each entry a visitor is held out of)"]
    );
}
