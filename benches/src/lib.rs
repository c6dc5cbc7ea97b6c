//! Deterministic synthetic data shared by the benches of `vitrine-core`.
//!
//! One shop ([`SHOP`]) with `V` visitors (1,000,000 by default; the
//! `VITRINE_BENCH_VISITORS` environment variable overrides it for quick runs)
//! and [`HISTORY_DAYS`] days of history ending at [`NOW_MS`]:
//!
//! * visitor activity is skewed (a capped Pareto law, about 10 behavior
//!   events per visitor on average, a few heavy visitors with up to
//!   [`MAX_EVENTS_PER_VISITOR`]), grouped in sessions;
//! * actions come in the ratio 100 views : 10 carts : 5 favorites : 2
//!   purchases; carts, favorites and purchases mostly concern an item viewed
//!   earlier in the same session;
//! * items are Zipf-distributed (s = [`ZIPF_S`]) over [`ITEMS`] items in
//!   [`CATEGORIES`] categories (`sku-i` belongs to `cat-{i % 20}`), each item
//!   with a fixed price from 10.00 to 500.00;
//! * a sprinkle of `tag` / `untag` events (`price_sensitive`, `student`) and
//!   `member` events (tiers 0 to 5).
//!
//! Everything comes from one fixed seed, so every run sees the same events.
//! Events are kept compact ([`Record`], 24 bytes) and turned into
//! [`vitrine_core::Event`]s that borrow every string from the [`Dataset`].

use std::borrow::Cow;
use std::fmt;
use std::time::Instant;

// The workspace's one generator: bench datasets are the same bit for bit
// as long as its reference-pinned stream is.
pub use vitrine_core::hash::{mix64, SplitMix64};
use vitrine_core::{Action, Context, DecideRequest, Event, RuleSet, ShopIndex};

/// The one shop of the dataset.
pub const SHOP: &str = "bench-shop";
/// The benches' "now": 2026-11-20T12:00:00Z, in ms since the Unix epoch.
pub const NOW_MS: i64 = 1_795_176_000_000;
/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;
/// Days of history, ending at [`NOW_MS`].
pub const HISTORY_DAYS: i64 = 30;
/// Items of the catalog (`sku-0` .. `sku-19999`).
pub const ITEMS: u32 = 20_000;
/// Categories (`cat-0` .. `cat-19`); item `i` is in `cat-{i % 20}`.
pub const CATEGORIES: u32 = 20;
/// Visitors when `VITRINE_BENCH_VISITORS` is not set.
pub const DEFAULT_VISITORS: u32 = 1_000_000;
/// The exponent of the items' Zipf law.
pub const ZIPF_S: f64 = 1.1;
/// The most behavior events one visitor gets.
pub const MAX_EVENTS_PER_VISITOR: u32 = 2_000;
/// The tags that `tag` events set.
pub const TAGS: [&str; 2] = ["price_sensitive", "student"];
/// The seed of every dataset.
pub const SEED: u64 = 0x7669_7472_696e_6521;

/// Regions a request may come from ("" = unknown).
pub const REGIONS: [&str; 6] = ["south", "southwest", "north", "east", "west", ""];
/// Page types of requests.
pub const PAGES: [&str; 5] = ["home", "item", "category", "cart", "search"];

/// The visitor count: `VITRINE_BENCH_VISITORS` (underscores allowed), else 1,000,000.
pub fn visitors_from_env() -> u32 {
    match std::env::var("VITRINE_BENCH_VISITORS") {
        Ok(text) => match text.replace('_', "").trim().parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => panic!("VITRINE_BENCH_VISITORS must be a positive whole number, found `{text}`"),
        },
        Err(_) => DEFAULT_VISITORS,
    }
}

/// Whether this bench binary runs as a benchmark (`cargo bench`: `--bench`
/// and no `--test`) rather than as a smoke test (`cargo test --benches`),
/// the way criterion decides it.
pub fn benchmarking() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// Visitors for this run: [`visitors_from_env`] when benchmarking, 20,000
/// in a smoke test.
pub fn run_visitors() -> u32 {
    if benchmarking() {
        visitors_from_env()
    } else {
        20_000
    }
}

/// A Zipf law over ranks `0..n` (rank 0 the most likely), sampled by
/// inverting its cumulative distribution with a binary search.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// P(rank k) proportional to `1 / (k + 1)^s`.
    pub fn new(n: u32, s: f64) -> Zipf {
        assert!(n > 0, "a Zipf law needs at least one rank");
        let mut total = 0.0;
        let cdf = (1..=n)
            .map(|k| {
                total += 1.0 / f64::from(k).powf(s);
                total
            })
            .collect();
        Zipf { cdf }
    }

    /// Ranks of the law.
    pub fn len(&self) -> u32 {
        self.cdf.len() as u32
    }

    /// Whether the law has no ranks (never: `new` requires one).
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// A random rank.
    #[inline]
    pub fn sample(&self, rng: &mut SplitMix64) -> u32 {
        let total = self.cdf[self.cdf.len() - 1];
        let u = rng.next_f64() * total;
        (self.cdf.partition_point(|&c| c <= u) as u32).min(self.len() - 1)
    }
}

/// Many short strings in one buffer.
struct Names {
    text: String,
    ends: Vec<u32>,
}

impl Names {
    fn new(n: u32, mut write: impl FnMut(&mut String, u32)) -> Names {
        let mut names = Names {
            text: String::new(),
            ends: Vec::with_capacity(n as usize),
        };
        for i in 0..n {
            write(&mut names.text, i);
            names.ends.push(names.text.len() as u32);
        }
        names.text.shrink_to_fit();
        names
    }

    #[inline]
    fn get(&self, i: u32) -> &str {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    fn len(&self) -> u32 {
        self.ends.len() as u32
    }
}

/// One event, compactly: strings are indexes into the [`Dataset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Event time (ms).
    pub ts: i64,
    /// Visitor index (`v-{index}`).
    pub visitor: u32,
    /// Item index for view, cart, favorite and purchase; index into
    /// [`TAGS`] for tag and untag; the tier for member.
    pub value: u32,
    /// What happened.
    pub action: Action,
    /// Quantity, for purchases.
    pub quantity: u8,
}

/// Counts of a dataset's events, by action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mix {
    /// `view`
    pub views: u64,
    /// `cart`
    pub carts: u64,
    /// `favorite`
    pub favorites: u64,
    /// `purchase`
    pub purchases: u64,
    /// `tag` and `untag`
    pub tags: u64,
    /// `member`
    pub members: u64,
}

impl Mix {
    /// The four item actions.
    pub fn behaviors(&self) -> u64 {
        self.views + self.carts + self.favorites + self.purchases
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} views, {} carts, {} favorites, {} purchases, {} tag/untag, {} member",
            self.views, self.carts, self.favorites, self.purchases, self.tags, self.members
        )
    }
}

/// The unit price of an item: fixed per item, from 10.00 to 500.00.
pub fn item_price(item: u32) -> f64 {
    10.0 + (mix64(u64::from(item) ^ 0x0070_7269_6365) % 49_001) as f64 / 100.0
}

/// A synthetic shop history: names and time-ordered events.
pub struct Dataset {
    visitors: Names,
    items: Names,
    categories: Names,
    records: Vec<Record>,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("visitors", &self.visitors.len())
            .field("items", &self.items.len())
            .field("events", &self.records.len())
            .finish()
    }
}

/// Weights of view, cart, favorite and purchase.
const ACTION_WEIGHTS: [(Action, u64); 4] = [
    (Action::View, 100),
    (Action::Cart, 10),
    (Action::Favorite, 5),
    (Action::Purchase, 2),
];

impl Dataset {
    /// The dataset with `visitors` visitors, from [`SEED`].
    pub fn generate(visitors: u32) -> Dataset {
        Dataset::generate_seeded(visitors, SEED)
    }

    /// The dataset with `visitors` visitors from a given seed.
    pub fn generate_seeded(visitors: u32, seed: u64) -> Dataset {
        use std::fmt::Write as _;
        let names = |prefix: &'static str| {
            move |s: &mut String, i: u32| {
                let _ = write!(s, "{prefix}{i}");
            }
        };
        let visitor_names = Names::new(visitors, names("v-"));
        let items = Names::new(ITEMS, names("sku-"));
        let categories = Names::new(CATEGORIES, names("cat-"));

        let zipf = Zipf::new(ITEMS, ZIPF_S);
        let mut rng = SplitMix64::new(seed);
        let start = NOW_MS - HISTORY_DAYS * DAY_MS;
        let span = (HISTORY_DAYS * DAY_MS) as u64;
        let total_weight: u64 = ACTION_WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut records = Vec::with_capacity(visitors as usize * 10 + visitors as usize / 4);
        for v in 0..visitors {
            // Skewed activity: a Pareto law (alpha 1.5, minimum 3.6), capped; mean about 10.
            let u = 1.0 - rng.next_f64();
            let n = ((3.6 / u.powf(1.0 / 1.5)) as u32).clamp(1, MAX_EVENTS_PER_VISITOR);
            let mut ts = start;
            let mut viewed: Option<u32> = None;
            for j in 0..n {
                if j == 0 || rng.chance(1.0 / 6.0) {
                    // A new session at a random time of the history.
                    ts = start + rng.below(span) as i64;
                    viewed = None;
                } else {
                    ts += 5_000 + rng.below(175_000) as i64;
                }
                let mut w = rng.below(total_weight);
                let mut action = Action::View;
                for (a, weight) in ACTION_WEIGHTS {
                    if w < weight {
                        action = a;
                        break;
                    }
                    w -= weight;
                }
                let item = match viewed {
                    Some(item) if action != Action::View && rng.chance(0.7) => item,
                    _ => zipf.sample(&mut rng),
                };
                if action == Action::View {
                    viewed = Some(item);
                }
                let quantity = if action != Action::Purchase {
                    1
                } else {
                    match rng.below(100) {
                        0..90 => 1,
                        90..98 => 2,
                        _ => 3,
                    }
                };
                records.push(Record {
                    ts: ts.min(NOW_MS),
                    visitor: v,
                    value: item,
                    action,
                    quantity,
                });
            }
            // Profile events.
            let mut profile = |action: Action, value: u32, rng: &mut SplitMix64| {
                records.push(Record {
                    ts: start + rng.below(span) as i64,
                    visitor: v,
                    value,
                    action,
                    quantity: 1,
                });
            };
            if rng.chance(0.08) {
                profile(Action::Tag, 0, &mut rng);
                if rng.chance(0.1) {
                    profile(Action::Untag, 0, &mut rng);
                }
            }
            if rng.chance(0.03) {
                profile(Action::Tag, 1, &mut rng);
            }
            if rng.chance(0.12) {
                let tier = match rng.below(100) {
                    0..10 => 0,
                    10..45 => 1,
                    45..70 => 2,
                    70..85 => 3,
                    85..95 => 4,
                    _ => 5,
                };
                profile(Action::Member, tier, &mut rng);
                if rng.chance(0.2) {
                    profile(Action::Member, (tier + 1).min(5), &mut rng);
                }
            }
        }
        // A stream in event-time order, visitors interleaved (as from Kafka).
        records.sort_unstable_by_key(|r| (r.ts, r.visitor));
        Dataset {
            visitors: visitor_names,
            items,
            categories,
            records,
        }
    }

    /// Visitors of the dataset.
    pub fn visitor_count(&self) -> u32 {
        self.visitors.len()
    }

    /// The name of visitor `i` (`v-{i}`).
    #[inline]
    pub fn visitor(&self, i: u32) -> &str {
        self.visitors.get(i)
    }

    /// The name of item `i` (`sku-{i}`).
    #[inline]
    pub fn item(&self, i: u32) -> &str {
        self.items.get(i)
    }

    /// The category of item `i` (`cat-{i % 20}`).
    #[inline]
    pub fn category_of(&self, item: u32) -> &str {
        self.categories.get(item % CATEGORIES)
    }

    /// Every event, in time order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The events' counts by action.
    pub fn mix(&self) -> Mix {
        let mut mix = Mix::default();
        for r in &self.records {
            match r.action {
                Action::View => mix.views += 1,
                Action::Cart => mix.carts += 1,
                Action::Favorite => mix.favorites += 1,
                Action::Purchase => mix.purchases += 1,
                Action::Tag | Action::Untag => mix.tags += 1,
                Action::Member => mix.members += 1,
            }
        }
        mix
    }

    /// The event of a record; every string borrows from the dataset.
    #[inline]
    pub fn event(&self, r: &Record) -> Event<'_> {
        let mut event = Event::new(SHOP, self.visitor(r.visitor), r.action, r.ts);
        match r.action {
            Action::View | Action::Cart | Action::Favorite | Action::Purchase => {
                event.item = Some(Cow::Borrowed(self.item(r.value)));
                event.category = Some(Cow::Borrowed(self.category_of(r.value)));
                if r.action == Action::Purchase {
                    event.price = item_price(r.value);
                    event.quantity = u32::from(r.quantity);
                }
            }
            Action::Tag | Action::Untag => event.tag = Some(Cow::Borrowed(TAGS[r.value as usize])),
            Action::Member => event.tier = r.value,
        }
        event
    }

    /// Every event, in time order.
    pub fn events(&self) -> impl Iterator<Item = Event<'_>> + '_ {
        self.records.iter().map(|r| self.event(r))
    }

    /// The shop's index with every event applied.
    pub fn build_index(&self) -> ShopIndex {
        build_index(self.events())
    }

    /// The shop's index on `zone`'s clock with every event applied.
    pub fn build_index_in(&self, zone: vitrine_core::time::Zone) -> ShopIndex {
        let shop = ShopIndex::with_zone(SHOP, zone);
        for event in self.events() {
            shop.apply(&event);
        }
        shop
    }

    /// `n` decision requests from a seed: a uniformly random known visitor
    /// (or an anonymous one with `anonymous`), a random region and page; item
    /// pages name a Zipf-random item.
    pub fn requests(&self, n: usize, seed: u64, anonymous: bool) -> Vec<RequestSpec> {
        let mut rng = SplitMix64::new(seed);
        let zipf = Zipf::new(ITEMS, ZIPF_S);
        (0..n)
            .map(|_| {
                let visitor = (!anonymous).then(|| rng.below(u64::from(self.visitor_count())) as u32);
                let region = rng.pick(&REGIONS).copied().unwrap_or_default();
                let page = rng.pick(&PAGES).copied().unwrap_or_default();
                let item = (page == "item").then(|| zipf.sample(&mut rng));
                RequestSpec {
                    visitor,
                    region,
                    page,
                    item,
                }
            })
            .collect()
    }

    /// Like [`Dataset::requests`], but the visitor is the one of a random
    /// event, so active visitors ask more often (as in real traffic).
    pub fn active_requests(&self, n: usize, seed: u64) -> Vec<RequestSpec> {
        let mut rng = SplitMix64::new(seed ^ 0x00ac_717e);
        let mut specs = self.requests(n, seed, false);
        for spec in &mut specs {
            spec.visitor = Some(self.records[rng.below(self.records.len() as u64) as usize].visitor);
        }
        specs
    }

    /// Like [`Dataset::active_requests`], but only for the heaviest
    /// visitors, those whose events are the 1% of all events with the most
    /// events per visitor: the tail of the active visitor's latency, for
    /// instruction counts of that tail alone.
    pub fn heavy_requests(&self, n: usize, seed: u64) -> Vec<RequestSpec> {
        let mut events = vec![0u32; self.visitor_count() as usize];
        for r in &self.records {
            events[r.visitor as usize] += 1;
        }
        let mut by_events: Vec<u32> = (0..self.visitor_count()).collect();
        by_events.sort_unstable_by_key(|v| std::cmp::Reverse(events[*v as usize]));
        let (mut heavy, mut covered) = (Vec::new(), 0usize);
        for v in by_events {
            if covered * 100 >= self.records.len() {
                break;
            }
            covered += events[v as usize] as usize;
            heavy.push(v);
        }
        let mut rng = SplitMix64::new(seed ^ 0x0ea7_7e11);
        let mut specs = self.requests(n, seed, false);
        for spec in &mut specs {
            spec.visitor = rng.pick(&heavy).copied();
        }
        specs
    }

    /// The decision request of a spec.
    #[inline]
    pub fn request(&self, spec: &RequestSpec, explain: bool) -> DecideRequest<'_> {
        DecideRequest {
            visitor: spec.visitor.map_or("", |v| self.visitor(v)),
            context: Context {
                page: spec.page,
                item: spec.item.map_or("", |i| self.item(i)),
                region: spec.region,
                ..Context::default()
            },
            item_limit: 0,
            explain,
            now_ms: NOW_MS,
        }
    }
}

/// One decision request, compactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSpec {
    /// Visitor index; `None` for an anonymous visitor.
    pub visitor: Option<u32>,
    /// `ctx.region`
    pub region: &'static str,
    /// `ctx.page`
    pub page: &'static str,
    /// `ctx.item`: an item index on item pages.
    pub item: Option<u32>,
}

/// A fresh index of [`SHOP`] with `events` applied in order.
pub fn build_index<'a>(events: impl IntoIterator<Item = Event<'a>>) -> ShopIndex {
    let shop = ShopIndex::new(SHOP);
    for event in events {
        shop.apply(&event);
    }
    shop
}

/// Loads a rule file, panicking with every error when it does not load.
pub fn load_rules(source: &str) -> RuleSet {
    match RuleSet::load(source) {
        Ok(rules) => rules,
        Err(errors) => panic!("bench rule file does not load:\n{errors}"),
    }
}

/// The 20-audience rule file of the decision and size benches.
pub const RULES_20: &str = r#"shop: bench-shop

audiences:
  new_visitor:      not visited(30d)
  browser:          viewed(7d) and not carted(7d)
  active_now:       visited(12h)
  cart_abandoner:   carted(7d) and not purchased(7d)
  recent_buyer:     purchased(48h)
  buyer:            purchased(30d)
  loyal:            purchase_count(30d) >= 3 or spend(30d) >= 1000
  big_spender:      spend(30d) >= 500
  small_spender:    buyer and spend(30d) < 50
  vip:              member_tier >= 4
  member:           member_tier >= 1
  price_sensitive:  tag("price_sensitive")
  student:          tag("student")
  shoes_fan:        viewed(14d, category="cat-3") or favorited(30d, category="cat-3")
  hot_item_fan:     viewed(3d, item="sku-0") or carted(72h, item="sku-1")
  gadget_carter:    carted(14d, category="cat-7") and not purchased(14d, category="cat-7")
  south:            ctx.region in ["south", "southwest"]
  on_item_page:     ctx.page == "item"
  deal_hunter:      (price_sensitive or student) and not vip and (browser or cart_abandoner)
  win_back:         buyer and not purchased(7d) and not cart_abandoner and not new_visitor

banners:
  - when: vip and south
    banner: vip-south
  - when: vip
    banner: vip-gold
  - when: cart_abandoner and on_item_page
    banner: finish-your-order
  - when: new_visitor and south
    banner: welcome-south
  - when: deal_hunter
    banner: deals
  - when: shoes_fan or gadget_carter
    banner: category-spotlight
  - banner: default

items:
  limit: 6
  exclude_purchased: 30d
  pools:
    - when: cart_abandoner
      items: [sku-1, sku-2, sku-3, sku-5, sku-8, sku-13, sku-21]
    - when: shoes_fan
      items: [sku-3, sku-23, sku-43, sku-63, sku-83, sku-103, sku-123, sku-143]
    - when: loyal or vip
      items: [sku-100, sku-200, sku-300, sku-400, sku-500, sku-600]
    - when: deal_hunter and not on_item_page
      items: [sku-9, sku-19, sku-29, sku-39, sku-49, sku-59]
    - items: [sku-0, sku-1, sku-2, sku-3, sku-4, sku-5, sku-6, sku-7, sku-8, sku-9, sku-10, sku-11]
  complements:
    sku-0: [sku-20, sku-40, sku-60]
    sku-1: [sku-21, sku-41]
    sku-2: [sku-22, sku-42, sku-62, sku-82]
    sku-7: [sku-27, sku-47]

benefits:
  - id: singles-day-early
    when: vip
    kind: ticket
    params: { enter_early_minutes: "30" }
    starts: 2026-11-10T00:00:00+08:00
    ends:   2026-11-30T00:00:00+08:00
    budget: 5000
  - id: cart-coupon-10
    when: cart_abandoner and price_sensitive
    kind: coupon
    params: { amount: "10", min_spend: "99" }
    cap: { per_visitor: 1, window: 30d }
    holdout: 10%
  - id: win-back-15
    when: win_back and not recent_buyer
    kind: coupon
    params: { amount: "15" }
    cap: { per_visitor: 2, window: 7d }
    budget: 100000
  - id: double-points
    when: loyal and not price_sensitive
    kind: points
    params: { multiplier: "2" }
"#;

/// [`RULES_20`] in a shop on Asia/Shanghai's clock, with recency and order
/// value: `loyal` reads `avg_order`, `win_back` is a `days_since` band, the
/// early-access ticket starts at local midnight. Same shape, same audiences.
pub fn rules_20_zoned() -> String {
    let replace = [
        ("shop: bench-shop\n", "shop: bench-shop\ntimezone: Asia/Shanghai\n"),
        (
            "loyal:            purchase_count(30d) >= 3 or spend(30d) >= 1000",
            "loyal:            purchase_count(30d) >= 3 or avg_order(30d) >= 300",
        ),
        (
            "win_back:         buyer and not purchased(7d) and not cart_abandoner and not new_visitor",
            "win_back:         days_since(purchase) >= 7 and days_since(purchase) < 30 and not cart_abandoner",
        ),
        ("starts: 2026-11-10T00:00:00+08:00", "starts: 2026-11-10T00:00:00"),
    ];
    let mut text = RULES_20.to_string();
    for (from, to) in replace {
        assert!(text.contains(from), "RULES_20 no longer holds `{from}`");
        text = text.replace(from, to);
    }
    text
}

/// A 50-audience rule file (about 5 KB, 150 lines) for the parse bench: every kind of
/// atom, references to earlier audiences, 12 banners, 8 pools, 6 benefits.
pub fn rules_50() -> String {
    use std::fmt::Write as _;
    let mut s = String::from("shop: bench-shop\n\naudiences:\n");
    for i in 0..50u32 {
        let d = 1 + i % 30;
        let c = i % CATEGORIES;
        let expr = match i % 10 {
            0 => format!("viewed({d}d) and not purchased({}d)", d + 7),
            1 => format!("carted({}h, category=\"cat-{c}\") and not purchased({d}d)", 6 + i),
            2 => format!(
                "purchase_count({}d) >= {} or spend({}d) >= {}",
                30 + i,
                1 + i % 4,
                90 + i,
                100 * (i + 1)
            ),
            3 => format!("member_tier >= {} and not tag(\"student\")", 1 + i % 5),
            4 => format!("tag(\"price_sensitive\") and viewed({d}d, item=\"sku-{}\")", i * 7),
            5 => format!("ctx.region in [\"south\", \"southwest\", \"r{i}\"] and a{:02}", i - 1),
            6 => format!("(a{:02} or a{:02}) and not a{:02}", i - 3, i - 5, i - 6),
            7 => format!("favorited({d}d) or carted({d}d, item=\"sku-{}\")", i * 11),
            8 => format!(
                "ctx.page == \"item\" or (visited({}h) and spend(90d) < {})",
                1 + i % 24,
                20 + i
            ),
            _ => format!("not (a{:02} and a{:02}) and purchased({}d)", i - 9, i - 2, 300 + i),
        };
        let _ = writeln!(s, "  a{i:02}: {expr}");
    }
    s.push_str("\nbanners:\n");
    for i in 0..12u32 {
        let _ = writeln!(
            s,
            "  - when: a{:02} and not a{:02}\n    banner: banner-{i}",
            (i * 4) % 50,
            (i * 4 + 3) % 50
        );
    }
    s.push_str("  - banner: default\n\nitems:\n  limit: 6\n  exclude_purchased: 30d\n  pools:\n");
    for p in 0..8u32 {
        let items: Vec<String> = (0..8).map(|k| format!("sku-{}", p * 100 + k * 3)).collect();
        let _ = writeln!(
            s,
            "    - when: a{:02} or a{:02}\n      items: [{}]",
            p * 6,
            p * 6 + 1,
            items.join(", ")
        );
    }
    s.push_str("    - items: [sku-0, sku-1, sku-2, sku-3, sku-4, sku-5]\n  complements:\n");
    for k in 0..10u32 {
        let _ = writeln!(s, "    sku-{k}: [sku-{}, sku-{}]", k + 20, k + 40);
    }
    s.push_str("\nbenefits:\n");
    for b in 0..6u32 {
        let _ = writeln!(
            s,
            "  - id: benefit-{b}\n    when: a{:02} and not a{:02}\n    kind: coupon\n    params: {{ amount: \"{}\", min_spend: \"{}\" }}",
            b * 8,
            b * 8 + 5,
            5 * (b + 1),
            50 * (b + 1)
        );
        match b % 3 {
            0 => {
                let _ = writeln!(s, "    cap: {{ per_visitor: {}, window: 30d }}\n    holdout: 5%", b + 1);
            }
            1 => {
                let _ = writeln!(
                    s,
                    "    starts: 2026-11-{:02}T00:00:00+08:00\n    ends:   2026-11-{:02}T00:00:00+08:00\n    budget: {}",
                    1 + b,
                    21 + b,
                    1000 * (b + 1)
                );
            }
            _ => {}
        }
    }
    s
}

/// Seconds since `start`, for progress lines.
pub fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// A dataset, its index and the 20-audience rule set, built once per bench.
pub struct Fixture {
    /// The events.
    pub dataset: Dataset,
    /// Every event applied.
    pub index: ShopIndex,
    /// [`RULES_20`], loaded.
    pub rules: RuleSet,
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("dataset", &self.dataset)
            .field("index", &self.index.stats())
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// Generates [`run_visitors`] visitors and builds their index,
    /// printing what it did to stderr.
    pub fn load() -> Fixture {
        Fixture::with_visitors(run_visitors())
    }

    /// Generates `visitors` visitors and builds their index (progress on stderr).
    pub fn with_visitors(visitors: u32) -> Fixture {
        let rules = load_rules(RULES_20);
        let t = Instant::now();
        let dataset = Dataset::generate(visitors);
        eprintln!(
            "dataset: {} visitors, {} events ({}) generated in {:.2} s",
            dataset.visitor_count(),
            dataset.len(),
            dataset.mix(),
            secs(t)
        );
        let t = Instant::now();
        let index = dataset.build_index();
        let stats = index.stats();
        eprintln!(
            "index: built in {:.2} s ({:.0} events/s); {} visitors, {} day entries, {} profile entries, {} bitmap bytes",
            secs(t),
            dataset.len() as f64 / secs(t),
            stats.visitors,
            stats.day_entries,
            stats.profile_entries,
            stats.bitmap_bytes
        );
        Fixture { dataset, index, rules }
    }
}

/// Sorted-sample percentiles, for latency reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Mean (ns).
    pub mean: f64,
    /// Median (ns).
    pub p50: u64,
    /// 90th percentile (ns).
    pub p90: u64,
    /// 99th percentile (ns).
    pub p99: u64,
    /// 99.9th percentile (ns).
    pub p999: u64,
    /// Largest (ns).
    pub max: u64,
}

impl Percentiles {
    /// Percentiles of nanosecond samples (sorted in place); `None` when empty.
    pub fn of(samples: &mut [u64]) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[(((samples.len() as f64) * q).ceil() as usize).clamp(1, samples.len()) - 1];
        Some(Percentiles {
            count: samples.len(),
            mean: samples.iter().map(|&s| s as f64).sum::<f64>() / samples.len() as f64,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1],
        })
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |ns: u64| ns as f64 / 1_000.0;
        write!(
            f,
            "n={} mean={:.2}us p50={:.2}us p90={:.2}us p99={:.2}us p99.9={:.2}us max={:.2}us",
            self.count,
            self.mean / 1_000.0,
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.p999),
            us(self.max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitrine_core::event::Fields;
    use vitrine_core::{decide, size_of, MemoryLedger};

    #[test]
    fn now_is_2026_11_20_noon_utc() {
        // 2026-11-20 is day 20,777 since 1970-01-01.
        assert_eq!(NOW_MS, (20_777 * 24 + 12) * 3_600_000);
    }

    #[test]
    fn generation_is_deterministic_and_has_the_intended_mix() {
        let a = Dataset::generate(5_000);
        let b = Dataset::generate(5_000);
        assert_eq!(a.records(), b.records());
        let mix = a.mix();
        let per_visitor = mix.behaviors() as f64 / 5_000.0;
        assert!((7.0..13.0).contains(&per_visitor), "{per_visitor} events per visitor");
        let views = mix.views as f64;
        assert!((0.07..0.13).contains(&(mix.carts as f64 / views)), "{mix}");
        assert!((0.03..0.07).contains(&(mix.favorites as f64 / views)), "{mix}");
        assert!((0.01..0.03).contains(&(mix.purchases as f64 / views)), "{mix}");
        assert!(mix.tags > 0 && mix.members > 0, "{mix}");
        let first = NOW_MS - HISTORY_DAYS * DAY_MS;
        assert!(a.records().windows(2).all(|w| w[0].ts <= w[1].ts));
        assert!(a.records().iter().all(|r| (first..=NOW_MS).contains(&r.ts)));
    }

    #[test]
    fn events_are_valid_and_equal_to_their_validated_fields() {
        let data = Dataset::generate(300);
        for e in data.events() {
            let fields = Fields {
                shop: Some(e.shop.clone()),
                visitor: Some(e.visitor.clone()),
                action: Some(e.action.as_str().into()),
                item: e.item.clone(),
                category: e.category.clone(),
                price: (e.action == Action::Purchase).then_some(e.price),
                quantity: (e.action == Action::Purchase).then_some(i64::from(e.quantity)),
                tag: e.tag.clone(),
                tier: (e.action == Action::Member).then_some(i64::from(e.tier)),
                ts: Some(e.ts),
                id: None,
            };
            assert_eq!(Event::validate(fields).as_ref(), Ok(&e));
        }
    }

    #[test]
    fn the_zoned_rule_set_loads_and_reads_the_new_atoms() {
        let rules = load_rules(&rules_20_zoned());
        assert_eq!(rules.zone.name(), "Asia/Shanghai");
        let atoms = format!("{:?}", rules.plan.atoms().collect::<Vec<_>>());
        assert!(atoms.contains("DaysSince") && atoms.contains("AvgOrder"), "{atoms}");
        assert_eq!(
            rules.plan.audiences().len(),
            load_rules(RULES_20).plan.audiences().len()
        );
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let z = Zipf::new(ITEMS, ZIPF_S);
        let mut rng = SplitMix64::new(1);
        let mut top = 0;
        for _ in 0..10_000 {
            let r = z.sample(&mut rng);
            assert!(r < ITEMS);
            top += u32::from(r < 10);
        }
        // P(rank < 10) is 0.39 for s = 1.1 over 20,000 ranks.
        assert!((3_600..4_200).contains(&top), "{top}");
    }

    #[test]
    fn rule_files_load_and_decide() {
        let rules = load_rules(RULES_20);
        assert_eq!(rules.plan.audiences().len(), 20);
        assert_eq!(load_rules(&rules_50()).plan.audiences().len(), 50);
        let data = Dataset::generate(2_000);
        let index = data.build_index();
        assert_eq!(index.stats().visitors, 2_000);
        let ledger = MemoryLedger::new();
        for spec in data.requests(200, 7, false).iter().chain(&data.requests(20, 8, true)) {
            let d = decide(&rules, Some(&index), &ledger, &data.request(spec, true));
            assert!(d.banner.is_some());
            assert!(!d.items.is_empty() && d.items.len() <= 6);
        }
        let n = size_of(
            Some(&rules),
            Some(&index),
            &vitrine_core::MemoryLedger::new(),
            "viewed(7d) and not purchased(30d)",
            NOW_MS,
        );
        assert!(matches!(n, Ok(n) if n > 0 && n < 2_000), "{n:?}");
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<u64> = (1..=1000).rev().collect();
        let p = Percentiles::of(&mut v).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.p999, p.max), (500, 900, 990, 999, 1000));
    }
}
