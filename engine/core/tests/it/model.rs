//! Model-based property test of audience evaluation.
//!
//! What it proves: for random event streams (out of order, some events
//! delivered more than once, tag/untag and member events sometimes tied on
//! `ts`) and a rule file of 1-4 random audiences `a0..a3` (expressions over
//! every non-context atom, with `and`/`or`/`not`/parentheses, and references
//! to earlier audiences), both of the engine's evaluators agree with a
//! deliberately naive model written straight from the documentation
//! (`rules/README.md`, "Audiences"; `docs/events.md`; the README's "How it works"):
//!
//! * `decide` (one visitor's profile under its shard lock) shows banner `b<i>`
//!   for the first audience `a<i>` the model says the visitor is in (`none`
//!   if none), and its explanation lists exactly the audiences the model
//!   says, for every visitor, for a visitor the shop has never seen and for
//!   an anonymous one;
//! * `size_of` by audience name and by expression text, and `audience_sizes`,
//!   all equal the model's count of known visitors in each audience.
//!
//! The model evaluates the parser's tree of each expression (the parser
//! itself is tested elsewhere), so what is tested is the meaning of the
//! atoms and connectives, in both evaluators.
//!
//! The model shares nothing with the index: it keeps each visitor's events
//! as a plain list, de-duplicates purchases by `id` (else by item and `ts`),
//! and computes window buckets, tiers and tags from the raw timestamps. `now`
//! moves by a random number of hours around an anchor, so day and hour
//! boundaries fall at different places relative to the events in each case,
//! and a few events lie after `now` (they must never count).
//!
//! Each case runs in a random shop time zone (`timezone:`): UTC,
//! Asia/Shanghai, America/New_York (DST), Asia/Kathmandu (+05:45) or
//! Australia/Lord_Howe (a 30-minute DST shift). The model reads each raw
//! timestamp's UTC offset from jiff's zone database and cuts hours and days
//! from `ts + offset`, the shop's clock (`rules/README.md`, "Time zone"). The
//! anchor is sometimes moved next to a DST change of New York or Lord Howe,
//! so `now` and the events straddle it.
//!
//! Every distinct generated event has its own `ts` (its index is added in
//! milliseconds) and ids are unique, so de-duplication only ever merges true
//! duplicates: exact copies, or a purchase redelivered under the same id with
//! a `ts` moved by 500 ms inside the same hour (so only the id can merge it,
//! and which copy wins cannot matter). Conversely, some purchases get a
//! sibling: the same item in the same hour, 250 ms later, under another id
//! or none, which must count as a second purchase. The only ties are the
//! deliberate ones between tag, untag and member events, whose outcome the
//! README fixes.

use std::collections::BTreeSet;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;
use vitrine_core::event::Fields;
use vitrine_core::rules::expr::{self, Behavior, Expr, Filter, Metric};
use vitrine_core::time::Zone;
use vitrine_core::time::{Unit, Window};
use vitrine_core::{audience_sizes, decide, size_of, DecideRequest, Event, Index, MemoryLedger, RuleSet};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// The anchor events are spread around: noon UTC of 2026-11-10, so that `now`
/// (anchor +- 30h) crosses both neighbouring midnights.
const T0: i64 = 20_767 * DAY + 12 * HOUR;

/// The shop time zones of the cases.
const ZONES: [&str; 5] = [
    "UTC",
    "Asia/Shanghai",
    "America/New_York",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
];

/// Whole hours to move a case's anchor by: none, or next to a DST change
/// (New York 2026-11-01T06:00Z and 2026-03-08T07:00Z, Lord Howe
/// 2026-10-03T15:30Z and 2026-04-04T15:00Z).
const SHIFTS: [i64; 5] = [0, -222, -5_933, -908, -5_277];

const VISITORS: usize = 8;
const ITEMS: usize = 4;
const CATEGORIES: usize = 2;
const TAGS: usize = 2;
const SHOP: &str = "s";

/// The seven actions, in the order of `docs/events.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    View,
    Cart,
    Favorite,
    Purchase,
    Tag,
    Untag,
    Member,
}

const ACTS: [Act; 7] = [
    Act::View,
    Act::Cart,
    Act::Favorite,
    Act::Purchase,
    Act::Tag,
    Act::Untag,
    Act::Member,
];

impl Act {
    fn name(self) -> &'static str {
        match self {
            Act::View => "view",
            Act::Cart => "cart",
            Act::Favorite => "favorite",
            Act::Purchase => "purchase",
            Act::Tag => "tag",
            Act::Untag => "untag",
            Act::Member => "member",
        }
    }

    fn is_behavior(self) -> bool {
        matches!(self, Act::View | Act::Cart | Act::Favorite | Act::Purchase)
    }
}

/// One event as the model sees it. Only the fields that matter for its
/// action are set; prices are counted in halves so every sum is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ev {
    visitor: usize,
    act: Act,
    item: Option<usize>,
    category: Option<usize>,
    price_halves: u32,
    quantity: u32,
    tag: Option<usize>,
    tier: u32,
    ts: i64,
    id: Option<String>,
}

impl Ev {
    fn fields(&self) -> Fields<'static> {
        let behavior = self.act.is_behavior();
        let purchase = self.act == Act::Purchase;
        Fields {
            shop: Some(SHOP.into()),
            visitor: Some(format!("v{}", self.visitor).into()),
            action: Some(self.act.name().into()),
            item: self.item.map(|i| format!("i{i}").into()),
            category: self.category.filter(|_| behavior).map(|c| format!("c{c}").into()),
            price: purchase.then(|| f64::from(self.price_halves) / 2.0),
            quantity: purchase.then_some(i64::from(self.quantity)),
            tag: self.tag.map(|t| format!("t{t}").into()),
            tier: (self.act == Act::Member).then_some(i64::from(self.tier)),
            ts: Some(self.ts),
            id: self.id.clone().map(Into::into),
        }
    }
}

/// The random choices behind one event, before it gets its `ts` and id.
#[derive(Debug, Clone)]
struct Raw {
    visitor: usize,
    act: Act,
    item: usize,
    category: Option<usize>,
    price_halves: u32,
    quantity: u32,
    tag: usize,
    tier: u32,
    /// Hours relative to the anchor.
    hour: i64,
    /// Whole seconds into that hour.
    second: i64,
    with_id: bool,
    /// Put it in the hour of the visitor's previous event (same-hour neighbours).
    same_hour: bool,
    /// For tag, untag and member: reuse the `ts` of the visitor's previous such event.
    tie: bool,
}

fn raw_event() -> impl Strategy<Value = Raw> {
    let what = (
        0..VISITORS,
        select(ACTS.to_vec()),
        0..ITEMS,
        prop::option::weighted(0.75, 0..CATEGORIES),
        0u32..40,
        1u32..=3,
        0..TAGS,
        0u32..=5,
    );
    let when = (
        // Mostly within the last 40 days, a few after the anchor, many close to it.
        prop_oneof![2 => -(40 * 24)..(2 * 24i64), 3 => -50..8i64],
        // On the hour, at its last second, or anywhere in it.
        prop_oneof![Just(0i64), Just(3_599i64), 0..3_600i64],
        prop::bool::weighted(0.5),
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.4),
    );
    (what, when).prop_map(
        |(
            (visitor, act, item, category, price_halves, quantity, tag, tier),
            (hour, second, with_id, same_hour, tie),
        )| Raw {
            visitor,
            act,
            item,
            category,
            price_halves,
            quantity,
            tag,
            tier,
            hour,
            second,
            with_id,
            same_hour,
            tie,
        },
    )
}

/// Gives each raw event its `ts` (distinct: the index is added in ms, and
/// seconds are whole) and, when asked for, a unique id.
fn build(raws: &[Raw]) -> Vec<Ev> {
    let mut events: Vec<Ev> = Vec::with_capacity(raws.len());
    for (i, r) in raws.iter().enumerate() {
        let mut hour = T0 / HOUR + r.hour;
        if r.same_hour {
            if let Some(prev) = events.iter().rev().find(|e| e.visitor == r.visitor) {
                hour = prev.ts.div_euclid(HOUR);
            }
        }
        let mut ts = hour * HOUR + r.second * 1000 + i as i64;
        let tie_group = |e: &Ev| match r.act {
            Act::Tag | Act::Untag => matches!(e.act, Act::Tag | Act::Untag) && e.tag == Some(r.tag),
            Act::Member => e.act == Act::Member,
            _ => false,
        };
        if r.tie {
            if let Some(prev) = events.iter().rev().find(|e| e.visitor == r.visitor && tie_group(e)) {
                ts = prev.ts;
            }
        }
        events.push(Ev {
            visitor: r.visitor,
            act: r.act,
            item: r.act.is_behavior().then_some(r.item),
            category: if r.act.is_behavior() { r.category } else { None },
            price_halves: if r.act == Act::Purchase { r.price_halves } else { 0 },
            quantity: if r.act == Act::Purchase { r.quantity } else { 1 },
            tag: matches!(r.act, Act::Tag | Act::Untag).then_some(r.tag),
            tier: if r.act == Act::Member { r.tier } else { 0 },
            ts,
            id: r.with_id.then(|| format!("e{i}")),
        });
    }
    events
}

fn window() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (1u32..=48).prop_map(|n| format!("{n}h")),
        3 => (1u32..=45).prop_map(|n| format!("{n}d")),
        1 => select(vec!["400d", "9600h", "24h", "48h"]).prop_map(String::from),
    ]
}

fn cmp() -> impl Strategy<Value = &'static str> {
    select(vec!["==", "!=", "<", "<=", ">", ">="])
}

/// One atom of the language (no `ctx.`), as text. `@k` stands for a
/// reference to an earlier audience of the file; see [`resolve_refs`].
fn atom() -> impl Strategy<Value = String> {
    let behavior = (
        select(vec!["visited", "viewed", "carted", "favorited", "purchased"]),
        window(),
        prop_oneof![
            3 => Just(String::new()),
            // One more item and category than the events use: never seen by the shop.
            2 => (0..=ITEMS).prop_map(|i| format!(", item=\"i{i}\"")),
            2 => (0..=CATEGORIES).prop_map(|c| format!(", category=\"c{c}\"")),
        ],
    )
        .prop_map(|(b, w, f)| format!("{b}({w}{f})"));
    let count = (
        window(),
        cmp(),
        prop_oneof![4 => (0u32..=4).prop_map(|n| n.to_string()), 1 => select(vec!["1.5", "-1"]).prop_map(String::from)],
    )
        .prop_map(|(w, c, n)| format!("purchase_count({w}) {c} {n}"));
    let spend = (window(), cmp(), 0u32..=160).prop_map(|(w, c, h)| format!("spend({w}) {c} {}", f64::from(h) / 2.0));
    let avg_order =
        (window(), cmp(), 0u32..=120).prop_map(|(w, c, h)| format!("avg_order({w}) {c} {}", f64::from(h) / 2.0));
    let days_since = (
        select(vec!["visit", "view", "cart", "favorite", "purchase"]),
        cmp(),
        prop_oneof![6 => (0u32..=3).prop_map(|n| n.to_string()), 3 => (0u32..=45).prop_map(|n| n.to_string()), 1 => select(vec!["1.5", "-1"]).prop_map(String::from)],
    )
        .prop_map(|(a, c, n)| format!("days_since({a}) {c} {n}"));
    let tier = (
        cmp(),
        prop_oneof![6 => (0u32..=6).prop_map(|n| n.to_string()), 1 => Just("2.5".to_string())],
    )
        .prop_map(|(c, n)| format!("member_tier {c} {n}"));
    let tag = (0..=TAGS).prop_map(|t| format!("tag(\"t{t}\")"));
    let constant = select(vec!["true", "false"]).prop_map(String::from);
    let reference = (0u32..10).prop_map(|k| format!("@{k}"));
    prop_oneof![
        5 => behavior,
        2 => count,
        2 => spend,
        2 => avg_order,
        3 => days_since,
        2 => tier,
        2 => tag,
        1 => constant,
        1 => reference,
        3 => language_atom()
    ]
}

/// The second edition's atoms the model covers here: `preview_tier CMP N`
/// and `ctx.n CMP NUMBER` (numeric context; the request's `n` is random).
fn language_atom() -> impl Strategy<Value = String> {
    let preview = (
        cmp(),
        prop_oneof![6 => (0u32..=7).prop_map(|n| n.to_string()), 1 => Just("1.5".to_string())],
    )
        .prop_map(|(c, n)| format!("preview_tier {c} {n}"));
    let ctx = (cmp(), select(vec!["0", "1", "2.5", "3", "-1", "10"])).prop_map(|(c, n)| format!("ctx.n {c} {n}"));
    prop_oneof![3 => preview, 1 => ctx]
}

/// A random `tiers` block: (by as text, levels as (tier, at)).
#[derive(Debug, Clone)]
struct TiersSpec {
    metric: Metric,
    window: String,
    levels: Vec<(u32, f64)>,
}

impl TiersSpec {
    fn yaml(&self) -> String {
        let by = match self.metric {
            Metric::Spend => "spend",
            Metric::PurchaseCount => "purchase_count",
            Metric::AvgOrder => unreachable!("tiers_spec draws spend or purchase_count"),
        };
        let mut out = format!("tiers:\n  by: {by}({})\n  levels:\n", self.window);
        for (tier, at) in &self.levels {
            out += &format!("    - {{ tier: {tier}, name: l{tier}, at: {at} }}\n");
        }
        out
    }

    /// The model's tier and gap for a value of `by`.
    fn tier(&self, value: f64) -> (u32, f64) {
        let tier = self
            .levels
            .iter()
            .filter(|(_, at)| value >= *at)
            .map(|(t, _)| *t)
            .max()
            .unwrap_or(0);
        let gap = self
            .levels
            .iter()
            .find(|(_, at)| value < *at)
            .map_or(0.0, |(_, at)| at - value);
        (tier, gap)
    }
}

fn tiers_spec() -> impl Strategy<Value = Option<TiersSpec>> {
    let spec = (
        prop::bool::ANY,
        window(),
        prop::collection::vec((1u32..=2, 1u32..=40), 1..=3),
    )
        .prop_map(|(spend, window, steps)| {
            let (mut tier, mut at) = (0u32, 0u32);
            let levels = steps
                .into_iter()
                .map(|(dt, da)| {
                    tier += dt;
                    at += if spend { da } else { da.div_ceil(20) };
                    (tier, if spend { f64::from(at) / 2.0 } else { f64::from(at) })
                })
                .collect();
            TiersSpec {
                metric: if spend { Metric::Spend } else { Metric::PurchaseCount },
                window,
                levels,
            }
        });
    prop::option::weighted(0.75, spec)
}

/// The request's `ctx.n`: a number, text that is not one, or nothing.
fn ctx_value() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.8,
        select(vec![
            "0", "1", "2.5", "3", "-1", "10", "1e1", "abc", "", " 3", "NaN", "inf",
        ])
        .prop_map(String::from),
    )
}

/// The model's value of `by` (spend or purchase count in its window) for
/// de-duplicated `events`.
fn by_value(metric: Metric, window: Window, events: &[Ev], now: i64, clock: &Clock) -> f64 {
    let bought = events
        .iter()
        .filter(|ev| ev.act == Act::Purchase && in_window(window, now, ev.ts, clock));
    let bought: Vec<&Ev> = bought.collect();
    let spend = f64::from(bought.iter().map(|ev| ev.price_halves * ev.quantity).sum::<u32>()) / 2.0;
    match metric {
        Metric::PurchaseCount => bought.len() as f64,
        Metric::Spend => spend,
        Metric::AvgOrder if bought.is_empty() => 0.0,
        Metric::AvgOrder => spend / bought.len() as f64,
    }
}

/// The model of `preview_tier`: 0 without a `tiers` block.
fn model_preview_tier(tiers: Option<&TiersSpec>, events: &[Ev], now: i64, clock: &Clock) -> u32 {
    tiers.map_or(0, |t| {
        let w = Window::parse(&t.window).unwrap_or_else(|e| panic!("generated window: {e}"));
        t.tier(by_value(t.metric, w, events, now, clock)).0
    })
}

/// The model of `ctx.n CMP NUMBER`: false unless `n` is a finite number.
fn model_ctx_number(cmp: expr::Cmp, want: f64, value: Option<&str>) -> bool {
    value
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .is_some_and(|v| cmp.test(v, want))
}

/// Whether audience expression `e` reads `ctx.`, itself or through an audience.
fn reads_ctx(e: &Expr, audiences: &[Expr]) -> bool {
    let mut found = false;
    e.walk(&mut |x| match x {
        Expr::Ctx { .. } => found = true,
        Expr::Ref { name, .. } => {
            let j: usize = name
                .strip_prefix('a')
                .and_then(|j| j.parse().ok())
                .unwrap_or(usize::MAX);
            found |= audiences.get(j).is_some_and(|a| reads_ctx(a, audiences));
        }
        _ => {}
    });
    found
}

/// A random expression as text: atoms joined by `and`/`or`, negated, parenthesized.
fn expression() -> impl Strategy<Value = String> {
    atom().prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} or {b}")),
            inner.clone().prop_map(|a| format!("not {a}")),
            inner.prop_map(|a| format!("({a})")),
        ]
    })
}

#[derive(Debug, Clone)]
struct Scenario {
    /// What is applied: every distinct event, some twice or more, shuffled.
    stream: Vec<Ev>,
    now: i64,
    /// The shop's `timezone:`.
    zone: &'static str,
    /// Audiences `a0`, `a1`, ... of the rule file, in order.
    expressions: Vec<String>,
    /// The file's `tiers` block, if any.
    tiers: Option<TiersSpec>,
    /// The request's `ctx.n`.
    ctx_n: Option<String>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let now = (-30i64..30, 0i64..3_600).prop_map(|(h, s)| T0 + h * HOUR + s * 1000 + 500);
    // Plain `prop_map`s only (no `prop_flat_map`), so a failure shrinks well:
    // fewer events, fewer copies, a simpler expression.
    (
        prop::collection::vec(raw_event(), 0..100),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3), 0..30),
        any::<u64>(),
        now,
        prop::collection::vec(expression(), 1..=4),
        (select(ZONES.to_vec()), select(SHIFTS.to_vec())),
        (tiers_spec(), ctx_value()),
    )
        .prop_map(
            |(raws, copies, seed, now, expressions, (zone, shift), (tiers, ctx_n))| Scenario {
                tiers,
                ctx_n,
                stream: stream(&build(&raws), &copies, seed)
                    .into_iter()
                    .map(|e| Ev {
                        ts: e.ts + shift * HOUR,
                        ..e
                    })
                    .collect(),
                now: now + shift * HOUR,
                zone,
                expressions: expressions
                    .iter()
                    .enumerate()
                    .map(|(i, e)| resolve_refs(e, i))
                    .collect(),
            },
        )
}

/// Turns each `@k` of audience `i`'s text into a reference to an earlier
/// audience, `a<k mod i>` (so there are no cycles), or `tag("t0")` in `a0`.
fn resolve_refs(text: &str, i: usize) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '@' {
            out.push(c);
            continue;
        }
        let k = chars.next().and_then(|d| d.to_digit(10)).unwrap_or(0) as usize;
        match i {
            0 => out += "tag(\"t0\")",
            _ => out += &format!("a{}", k % i),
        }
    }
    out
}

/// What gets applied: the distinct events plus some copies, in an order
/// shuffled by `seed`.
fn stream(events: &[Ev], copies: &[(prop::sample::Index, u8)], seed: u64) -> Vec<Ev> {
    let mut stream = events.to_vec();
    if !events.is_empty() {
        stream.extend(copies.iter().map(|(at, kind)| {
            let mut copy = events[at.index(events.len())].clone();
            if copy.act == Act::Purchase {
                match kind {
                    // Redelivered under its id with another `ts` in the same hour: counts once.
                    1 if copy.id.is_some() => copy.ts += 500,
                    // Not a copy: another purchase of the same item in the same hour.
                    2 => {
                        copy.ts += 250;
                        copy.id = copy.id.map(|id| format!("{id}-sibling"));
                    }
                    _ => {}
                }
            }
            copy
        }));
    }
    vitrine_core::hash::SplitMix64::new(seed).shuffle(&mut stream);
    stream
}

// ---------------------------------------------------------------- the model

/// The shop's clock: `ts` plus its zone's UTC offset at `ts`, from jiff.
#[derive(Debug, Clone)]
struct Clock(jiff::tz::TimeZone);

impl Clock {
    fn of(zone: &str) -> Clock {
        Clock(jiff::tz::TimeZone::get(zone).unwrap_or_else(|e| panic!("{zone}: {e}")))
    }

    fn utc() -> Clock {
        Clock(jiff::tz::TimeZone::UTC)
    }

    fn local(&self, ts: i64) -> i64 {
        let at = jiff::Timestamp::from_millisecond(ts).unwrap_or_else(|e| panic!("{ts}: {e}"));
        ts + i64::from(self.0.to_offset(at).seconds()) * 1000
    }

    /// The local hour of `ts` (hours since the epoch of the shop's clock).
    fn hour(&self, ts: i64) -> i64 {
        self.local(ts).div_euclid(HOUR)
    }
}

/// Whether an event at `ts` falls in `window` at `now`: whole clock hours
/// for `h`, whole local days for `d`, never a later bucket than `now`'s.
fn in_window(window: Window, now: i64, ts: i64, clock: &Clock) -> bool {
    let (hour, now_hour) = (clock.hour(ts), clock.hour(now));
    let n = i64::from(window.amount);
    match window.unit {
        Unit::Hours => now_hour - n < hour && hour <= now_hour,
        Unit::Days => {
            let (day, today) = (hour.div_euclid(24), now_hour.div_euclid(24));
            today - n < day && day <= today
        }
    }
}

/// The visitor's events as delivered, de-duplicated: a purchase counts once
/// per id (else per item and `ts`); other events are facts, kept once.
fn history(stream: &[Ev], visitor: usize) -> Vec<Ev> {
    let mut purchases = BTreeSet::new();
    let mut kept: Vec<Ev> = Vec::new();
    for e in stream.iter().filter(|e| e.visitor == visitor) {
        let new = if e.act == Act::Purchase {
            let key = match &e.id {
                Some(id) => (id.clone(), None),
                None => (String::new(), Some((e.item, e.ts))),
            };
            purchases.insert(key)
        } else {
            !kept.contains(e)
        };
        if new {
            kept.push(e.clone());
        }
    }
    kept
}

fn behavior_acts(b: Behavior, act: Act) -> bool {
    match b {
        Behavior::Visited => act.is_behavior(),
        Behavior::Viewed => act == Act::View,
        Behavior::Carted => act == Act::Cart,
        Behavior::Favorited => act == Act::Favorite,
        Behavior::Purchased => act == Act::Purchase,
    }
}

/// The model's verdict for one visitor with de-duplicated `events` at `now`
/// on the shop's `clock`. `audiences[j]` is the parsed expression of audience `a<j>`.
fn holds(e: &Expr, audiences: &[Expr], events: &[Ev], now: i64, clock: &Clock, lang: &Lang<'_>) -> bool {
    match e {
        Expr::Const(b) => *b,
        Expr::And(xs) => xs.iter().all(|x| holds(x, audiences, events, now, clock, lang)),
        Expr::Or(xs) => xs.iter().any(|x| holds(x, audiences, events, now, clock, lang)),
        Expr::Not(x) => !holds(x, audiences, events, now, clock, lang),
        Expr::Ref { name, .. } => {
            let j: usize = name
                .strip_prefix('a')
                .and_then(|j| j.parse().ok())
                .unwrap_or_else(|| panic!("unexpected audience name {name}"));
            holds(&audiences[j], audiences, events, now, clock, lang)
        }
        Expr::Behavior {
            behavior,
            window,
            filter,
        } => events.iter().any(|ev| {
            behavior_acts(*behavior, ev.act)
                && in_window(*window, now, ev.ts, clock)
                && match filter {
                    None => true,
                    Some(Filter::Item(item)) => ev.item.is_some_and(|i| format!("i{i}") == *item),
                    Some(Filter::Category(cat)) => ev.category.is_some_and(|c| format!("c{c}") == *cat),
                }
        }),
        Expr::Metric {
            metric,
            window,
            cmp,
            value,
        } => {
            let bought = events
                .iter()
                .filter(|ev| ev.act == Act::Purchase && in_window(*window, now, ev.ts, clock));
            let (count, halves) = bought.fold((0u32, 0u32), |(n, h), ev| (n + 1, h + ev.price_halves * ev.quantity));
            let v = match metric {
                Metric::PurchaseCount => f64::from(count),
                Metric::Spend => f64::from(halves) / 2.0,
                Metric::AvgOrder if count == 0 => return false,
                Metric::AvgOrder => f64::from(halves) / 2.0 / f64::from(count),
            };
            cmp.test(v, *value)
        }
        Expr::Tier { cmp, value } => {
            let tier = events
                .iter()
                .filter(|ev| ev.act == Act::Member)
                .max_by_key(|ev| (ev.ts, ev.tier))
                .map_or(0, |ev| ev.tier);
            cmp.test(f64::from(tier), *value)
        }
        Expr::Tag(tag) => events
            .iter()
            .filter(|ev| matches!(ev.act, Act::Tag | Act::Untag) && ev.tag.is_some_and(|t| format!("t{t}") == *tag))
            .max_by_key(|ev| (ev.ts, ev.act == Act::Untag))
            .is_some_and(|ev| ev.act == Act::Tag),
        Expr::Ctx {
            key,
            test: expr::CtxTest::Num(cmp, want),
            ..
        } if key == "n" => model_ctx_number(*cmp, *want, lang.ctx_n),
        Expr::PreviewTier { cmp, value } => {
            cmp.test(f64::from(model_preview_tier(lang.tiers, events, now, clock)), *value)
        }
        Expr::Ctx { .. } => panic!("the generator never writes {e:?}"),
        Expr::DaysSince { action, cmp, value } => {
            // Local days since the latest such event up to now's clock hour.
            let now_hour = clock.hour(now);
            let latest = events
                .iter()
                .filter(|ev| behavior_acts(*action, ev.act) && clock.hour(ev.ts) <= now_hour)
                .map(|ev| clock.hour(ev.ts))
                .max();
            match latest {
                Some(hour) => cmp.test((now_hour.div_euclid(24) - hour.div_euclid(24)) as f64, *value),
                None => false,
            }
        }
        // Offers and claims have their own brute-force test (offers.rs).
        Expr::Offered { .. } | Expr::Claimed { .. } => panic!("the generator never writes {e:?}"),
    }
}

/// What the second edition's atoms read besides the events.
struct Lang<'a> {
    tiers: Option<&'a TiersSpec>,
    ctx_n: Option<&'a str>,
}

// ---------------------------------------------------------------- the test

fn describe_now(now: i64, clock: &Clock) -> String {
    let hour = clock.hour(now);
    format!(
        "{now} in {:?} (local hour {hour}, day {}, hour of day {}; UTC offset {} min)",
        clock.0.iana_name(),
        hour / 24,
        hour % 24,
        (clock.local(now) - now) / 60_000
    )
}

/// The rule file: audience `a<i>` is expression i; banner `b<i>` shows when
/// `a<i>` is the first audience that holds, `none` when none does.
fn rule_file(expressions: &[String], zone: &str, tiers: Option<&TiersSpec>) -> String {
    let mut file = format!(
        "shop: {SHOP}\ntimezone: {zone}\n{}audiences:\n",
        tiers.map(TiersSpec::yaml).unwrap_or_default()
    );
    for (i, text) in expressions.iter().enumerate() {
        file += &format!("  a{i}: '{text}'\n");
    }
    file += "banners:\n";
    for i in 0..expressions.len() {
        file += &format!("  - when: a{i}\n    banner: b{i}\n");
    }
    file + "  - banner: none\n"
}

fn check(sc: &Scenario) -> Result<(), TestCaseError> {
    let mut parsed = Vec::new();
    for text in &sc.expressions {
        let e = expr::parse(text)
            .map_err(|e| TestCaseError::fail(format!("generated expression `{text}` does not parse: {e:?}")))?;
        parsed.push(e);
    }
    let file = rule_file(&sc.expressions, sc.zone, sc.tiers.as_ref());
    let clock = Clock::of(sc.zone);
    let lang = Lang {
        tiers: sc.tiers.as_ref(),
        ctx_n: sc.ctx_n.as_deref(),
    };
    let attributes: std::collections::HashMap<String, String> =
        sc.ctx_n.iter().map(|v| ("n".to_string(), v.clone())).collect();
    let rules = RuleSet::load(&file).map_err(|e| TestCaseError::fail(format!("rule file rejected: {e}\n{file}")))?;

    let index = Index::new();
    let zone = Zone::get(sc.zone).ok_or_else(|| TestCaseError::fail(format!("no zone {}", sc.zone)))?;
    prop_assert_eq!(&rules.zone, &zone);
    for ev in &sc.stream {
        let event = Event::validate(ev.fields())
            .map_err(|e| TestCaseError::fail(format!("generated event {ev:?} rejected: {e}")))?;
        index.apply_in(&event, || zone.clone());
    }
    let shop = index.shop(SHOP);
    let ledger = MemoryLedger::new();
    let now = sc.now;
    let names: Vec<String> = sc
        .expressions
        .iter()
        .enumerate()
        .map(|(i, _)| format!("a{i}"))
        .collect();

    let visitors: Vec<String> = (0..VISITORS)
        .map(|v| format!("v{v}"))
        .chain(["ghost".to_string(), String::new()])
        .collect();
    let mut counts = vec![0u64; parsed.len()];
    let mut verdicts = Vec::new();
    for (v, visitor) in visitors.iter().enumerate() {
        let events = if v < VISITORS {
            history(&sc.stream, v)
        } else {
            Vec::new()
        };
        let known = !events.is_empty();
        let want: Vec<bool> = parsed
            .iter()
            .map(|e| holds(e, &parsed, &events, now, &clock, &lang))
            .collect();
        for (count, _) in counts.iter_mut().zip(&want).filter(|(_, w)| **w) {
            *count += u64::from(known);
        }
        verdicts.push(format!("{visitor:?}: {want:?}"));
        let decision = decide(
            &rules,
            shop.as_deref(),
            &ledger,
            &DecideRequest {
                visitor,
                explain: true,
                now_ms: now,
                context: vitrine_core::Context {
                    attributes: Some(&attributes),
                    ..vitrine_core::Context::default()
                },
                ..DecideRequest::default()
            },
        );
        check_tier_preview(&decision, lang.tiers, known, &events, now, &clock)?;
        // On a disagreement, the first expression the engine and the model disagree on.
        let listed: Vec<String> = decision.explanation.map(|x| x.audiences).unwrap_or_default();
        let wrong = names.iter().zip(&want).position(|(n, w)| listed.contains(n) != *w);
        let context = |i: usize| {
            format!(
                "\nexpression a{i}: {}\nparsed: {:?}\nmodel says: {}\nnow: {}\nvisitor: {visitor:?}\nits events (de-duplicated): {events:#?}",
                sc.expressions[i],
                parsed[i],
                want[i],
                describe_now(now, &clock)
            )
        };
        let first = want.iter().position(|w| *w);
        let want_banner = first.map_or("none".to_string(), |i| format!("b{i}"));
        prop_assert_eq!(
            decision.banner,
            Some(want_banner.as_str()),
            "decide's banner disagrees with the model{}",
            context(wrong.or(first).unwrap_or(0))
        );
        let want_listed: Vec<String> = names
            .iter()
            .zip(&want)
            .filter(|(_, w)| **w)
            .map(|(n, _)| n.clone())
            .collect();
        prop_assert_eq!(
            &listed,
            &want_listed,
            "decide's explanation disagrees with the model{}",
            context(wrong.unwrap_or(0))
        );
    }

    let context = |i: usize| {
        format!(
            "\nexpression a{i}: {}\nparsed: {:?}\nnow: {}\nmodel verdicts per visitor: {verdicts:?}\nstream: {:#?}",
            sc.expressions[i],
            parsed[i],
            describe_now(now, &clock),
            sc.stream
        )
    };
    let sizes = audience_sizes(&rules, shop.as_deref(), &vitrine_core::MemoryLedger::new(), now);
    for (i, text) in sc.expressions.iter().enumerate() {
        if reads_ctx(&parsed[i], &parsed) {
            prop_assert_eq!(
                &sizes[i],
                &(names[i].clone(), None),
                "an audience reading ctx. has no size"
            );
            prop_assert_eq!(
                size_of(
                    Some(&rules),
                    shop.as_deref(),
                    &vitrine_core::MemoryLedger::new(),
                    &names[i],
                    now
                ),
                Err(vitrine_core::SizeError::UsesContext)
            );
            continue;
        }
        let by_name = size_of(
            Some(&rules),
            shop.as_deref(),
            &vitrine_core::MemoryLedger::new(),
            &names[i],
            now,
        );
        prop_assert_eq!(
            by_name,
            Ok(counts[i]),
            "size_of by name disagrees with the model{}",
            context(i)
        );
        let by_text = size_of(
            Some(&rules),
            shop.as_deref(),
            &vitrine_core::MemoryLedger::new(),
            text,
            now,
        );
        prop_assert_eq!(
            by_text,
            Ok(counts[i]),
            "size_of by text disagrees with the model{}",
            context(i)
        );
        prop_assert_eq!(
            &sizes[i],
            &(names[i].clone(), Some(counts[i])),
            "audience_sizes disagrees with the model{}",
            context(i)
        );
    }
    Ok(())
}

/// A decision's tier preview: the model's tier and gap for a known visitor
/// under a `tiers` block, absent otherwise.
fn check_tier_preview(
    decision: &vitrine_core::Decision<'_>,
    tiers: Option<&TiersSpec>,
    known: bool,
    events: &[Ev],
    now: i64,
    clock: &Clock,
) -> Result<(), TestCaseError> {
    let got = decision.tier_preview.map(|p| (p.tier, p.gap, p.next.map(|(t, _)| t)));
    let want = tiers.filter(|_| known).map(|t| {
        let w = Window::parse(&t.window).unwrap_or_else(|e| panic!("generated window: {e}"));
        let (tier, gap) = t.tier(by_value(t.metric, w, events, now, clock));
        let next = t.levels.iter().map(|(l, _)| *l).find(|l| *l > tier);
        (tier, gap, next)
    });
    prop_assert_eq!(got, want, "tier preview disagrees with the model; tiers {:?}", tiers);
    Ok(())
}

/// 128 cases unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let defaults = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        defaults.cases
    } else {
        128
    };
    ProptestConfig {
        cases,
        // Next to the crate's manifest (cargo runs tests from there).
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/it/model.txt",
        ))),
        ..defaults
    }
}

proptest! {
    #![proptest_config(config())]

    /// `decide`, `size_of` and `audience_sizes` agree with the model.
    #[test]
    fn decisions_and_sizes_agree_with_the_model(sc in scenario()) {
        check(&sc)?;
    }
}

/// The model's own window arithmetic, pinned on hand-made cases, so that an
/// agreement above is not two copies of one mistake.
#[test]
fn model_windows_follow_the_readme() {
    let w = |text: &str| Window::parse(text).unwrap();
    let utc = Clock::utc();
    let now = T0 + 5 * HOUR + 30 * 60_000; // 17:30 UTC
    let today = T0 - 12 * HOUR; // 00:00 UTC of the same day
    assert!(
        in_window(w("1h"), now, now - 30 * 60_000, &utc),
        "17:00 is the current hour"
    );
    assert!(!in_window(w("1h"), now, now - 31 * 60_000, &utc), "16:59 is not in 1h");
    assert!(in_window(w("2h"), now, now - 31 * 60_000, &utc));
    assert!(
        !in_window(w("1h"), now, now + 30 * 60_000, &utc),
        "18:00 is a later bucket"
    );
    assert!(in_window(w("1d"), now, today, &utc), "midnight today is in 1d");
    assert!(!in_window(w("1d"), now, today - 1, &utc), "yesterday is not in 1d");
    assert!(in_window(w("2d"), now, today - DAY, &utc));
    assert!(!in_window(w("2d"), now, today - DAY - 1, &utc));
    assert!(
        in_window(w("7d"), now, now + HOUR, &utc),
        "a day window covers all of today"
    );
    assert!(
        !in_window(w("12h"), now, now + HOUR, &utc),
        "an hour window ends with the current hour"
    );
    assert!(
        !in_window(w("7d"), now, today + DAY, &utc),
        "tomorrow is a later bucket"
    );
    assert!(in_window(w("24h"), now, now - 23 * HOUR, &utc));
    assert!(!in_window(w("24h"), now, now - 24 * HOUR, &utc));
}

/// The model's clock, pinned on hand-made instants: Shanghai's midnight,
/// Kathmandu's quarter hour, New York's 25-hour day.
#[test]
fn model_clock_follows_the_zone() {
    let w = |text: &str| Window::parse(text).unwrap();
    let at = |text: &str| vitrine_core::time::parse_rfc3339(text).unwrap();
    let shanghai = Clock::of("Asia/Shanghai");
    let now = at("2026-11-10T23:59:59+08:00");
    assert!(in_window(w("1d"), now, at("2026-11-10T00:00:00+08:00"), &shanghai));
    assert!(!in_window(w("1d"), now, at("2026-11-09T23:59:59+08:00"), &shanghai));
    assert!(!in_window(w("1d"), at("2026-11-11T00:00:00+08:00"), now, &shanghai));
    let kathmandu = Clock::of("Asia/Kathmandu");
    let ts = at("2026-11-10T00:00:00Z");
    assert_eq!(kathmandu.local(ts) - ts, (5 * 60 + 45) * 60_000);
    let ny = Clock::of("America/New_York");
    let late = at("2026-11-01T23:59:00-05:00");
    assert!(in_window(w("1d"), late, at("2026-11-01T00:00:00-04:00"), &ny));
    assert!(
        in_window(w("24h"), late, at("2026-11-01T00:00:00-04:00"), &ny),
        "25 real hours"
    );
    assert!(!in_window(w("1d"), late, at("2026-10-31T23:59:59-04:00"), &ny));
}
