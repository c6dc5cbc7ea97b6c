//! The synthetic dataset: one rule file per load-test shop and a stream of
//! behavior events for its visitors, both a pure function of a seed.
//!
//! Everything here is deterministic: the rule file of shop `i` depends only
//! on `(seed, i)` and the catalog size, and the events of visitor `n` of shop
//! `i` only on `(seed, i, n)` and the clock `now_ms` they are spread back
//! from. That is what lets `run` push exactly the files `seed` pushed, pick
//! visitors `v-{n}` that `seed` created, and lets two seeds of the same
//! arguments build the same audiences. No I/O, no clock, no network.
//!
//! The shape of the data:
//! - items `sku-0000` .. with Zipf-distributed popularity (item 0 most
//!   popular), item `k` in category `cat-{k % categories}`, a fixed price each;
//! - every visitor has a preferred category, one to eight sessions spread
//!   over the last `days`, a few views per session, and per view a 10 %
//!   chance of a cart (a fifth of which turn into a purchase) and an
//!   independent 5 % chance of a favorite: views : carts : favorites :
//!   purchases come out at about 100 : 10 : 5 : 2;
//! - some visitors carry tags (`price_sensitive`, `newsletter`) and member
//!   tiers (1..5).

use std::fmt::Write as _;

use vitrine_core::hash::{mix64, SplitMix64};
use vitrine_proto::v1 as pb;

/// The random stream for `(seed, a, b)`, independent of the others: the
/// workspace's one generator ([`SplitMix64`]), started from a mix of the three.
pub fn stream_rng(seed: u64, a: u64, b: u64) -> SplitMix64 {
    SplitMix64::new(mix64(mix64(seed ^ mix64(a.wrapping_add(0x517c_c1b7))) ^ b))
}

/// A uniform element of a slice of constants ("" for an empty one).
pub fn pick_str<'a>(rng: &mut SplitMix64, xs: &[&'a str]) -> &'a str {
    rng.pick(xs).copied().unwrap_or("")
}

/// 1 + the number of failures before a success of probability `p`, at most `max`.
fn geometric(rng: &mut SplitMix64, p: f64, max: u32) -> u32 {
    let mut n = 1;
    while n < max && !rng.chance(p) {
        n += 1;
    }
    n
}

/// Zipf-distributed ranks `0..n`: rank `k` is drawn with probability
/// proportional to `1 / (k + 1)^s`.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n` ranks (at least one) with exponent `s`.
    pub fn new(n: usize, s: f64) -> Zipf {
        let n = n.max(1);
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 0..n {
            total += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// One rank.
    pub fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c <= u).min(self.cdf.len() - 1)
    }
}

/// The parameters every generated shop shares.
#[derive(Debug, Clone)]
pub struct DatasetConfig {
    /// The seed everything derives from.
    pub seed: u64,
    /// Items in each shop's catalog.
    pub items: usize,
    /// Categories items are spread over.
    pub categories: usize,
    /// Zipf exponent of item popularity.
    pub zipf_s: f64,
}

impl Default for DatasetConfig {
    fn default() -> DatasetConfig {
        DatasetConfig {
            seed: 42,
            items: 2000,
            categories: 20,
            zipf_s: 1.0,
        }
    }
}

/// The name of load-test shop `i`.
pub fn shop_name(i: usize) -> String {
    format!("load-{i}")
}

/// The id of visitor `n` (in every shop).
pub fn visitor_id(n: u64) -> String {
    format!("v-{n}")
}

/// The id of visitor `n` with its number zero-padded to `digits`
/// (`vitrine serve --demo` names its visitors `v-0000`..: 4 digits).
pub fn visitor_id_padded(n: u64, digits: usize) -> String {
    format!("v-{n:0digits$}")
}

/// The id of item `k`.
pub fn item_id(k: usize) -> String {
    format!("sku-{k:04}")
}

/// The name of category `c`.
pub fn category_name(c: usize) -> String {
    format!("cat-{c:02}")
}

/// A catalog: item ids, categories, prices and popularity.
#[derive(Debug, Clone)]
pub struct Catalog {
    config: DatasetConfig,
    popularity: Zipf,
    in_category: Zipf,
}

impl Catalog {
    /// The catalog of `config` (at least one item per category).
    pub fn new(config: &DatasetConfig) -> Catalog {
        let categories = config.categories.max(1);
        let items = config.items.max(categories);
        let config = DatasetConfig {
            items,
            categories,
            ..config.clone()
        };
        Catalog {
            popularity: Zipf::new(items, config.zipf_s),
            in_category: Zipf::new(items / categories, config.zipf_s),
            config,
        }
    }

    /// The parameters, after clamping.
    pub fn config(&self) -> &DatasetConfig {
        &self.config
    }

    /// The category of item `k`.
    pub fn category_of(&self, k: usize) -> usize {
        k % self.config.categories
    }

    /// The `rank`-th most popular item of category `c`.
    pub fn item_in_category(&self, c: usize, rank: usize) -> usize {
        rank * self.config.categories + c % self.config.categories
    }

    /// A Zipf-popular item of the whole catalog.
    pub fn popular_item(&self, rng: &mut SplitMix64) -> usize {
        self.popularity.sample(rng)
    }

    /// A Zipf-popular item of category `c`.
    pub fn popular_item_in(&self, c: usize, rng: &mut SplitMix64) -> usize {
        self.item_in_category(c, self.in_category.sample(rng))
    }

    /// The fixed price of item `k`, 5.00 to 499.99.
    pub fn price(&self, k: usize) -> f64 {
        let cents = 500 + mix64(self.config.seed ^ (k as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)) % 49_500;
        cents as f64 / 100.0
    }
}

/// Behavior events for the visitors of the generated shops.
#[derive(Debug, Clone)]
pub struct EventGenerator {
    catalog: Catalog,
    days: u32,
    now_ms: i64,
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

impl EventGenerator {
    /// Events spread over the `days` (at least 1) before `now_ms`.
    pub fn new(catalog: Catalog, days: u32, now_ms: i64) -> EventGenerator {
        EventGenerator {
            catalog,
            days: days.max(1),
            now_ms,
        }
    }

    /// Appends every event of visitor `n` of shop `shop` to `out`.
    pub fn visitor(&self, shop: usize, n: u64, out: &mut Vec<pb::Event>) {
        let catalog = &self.catalog;
        let mut rng = stream_rng(catalog.config.seed, shop as u64, n);
        let shop_name = shop_name(shop);
        let visitor = visitor_id(n);
        let event = |action: &str, ts: i64| pb::Event {
            shop: shop_name.clone(),
            visitor: visitor.clone(),
            action: action.to_string(),
            ts: Some(ts),
            ..pb::Event::default()
        };
        let item_event = |action: &str, item: usize, ts: i64| pb::Event {
            item: item_id(item),
            category: category_name(catalog.category_of(item)),
            ..event(action, ts)
        };
        // Attributes are set at least an hour before now; sessions start at
        // least three hours before now and last under two and a half.
        let span = i64::from(self.days) * DAY_MS;
        let random_ts = |rng: &mut SplitMix64| self.now_ms - HOUR_MS - rng.below((span - HOUR_MS) as u64) as i64;
        let session_start =
            |rng: &mut SplitMix64| self.now_ms - 3 * HOUR_MS - rng.below((span - 3 * HOUR_MS) as u64) as i64;

        let preferred = rng.index(catalog.config.categories);
        let sessions = geometric(&mut rng, 0.5, 8);
        for _ in 0..sessions {
            let mut ts = session_start(&mut rng);
            let views = geometric(&mut rng, 0.3, 30);
            for _ in 0..views {
                let item = if rng.chance(0.6) {
                    catalog.popular_item_in(preferred, &mut rng)
                } else {
                    catalog.popular_item(&mut rng)
                };
                out.push(item_event("view", item, ts));
                let r = rng.next_f64();
                if r < 0.10 {
                    ts += 5_000 + rng.below(60_000) as i64;
                    out.push(item_event("cart", item, ts));
                    if r < 0.02 {
                        ts += 30_000 + rng.below(120_000) as i64;
                        out.push(pb::Event {
                            price: Some(catalog.price(item)),
                            quantity: Some(if rng.chance(0.1) { 2 } else { 1 }),
                            ..item_event("purchase", item, ts)
                        });
                    }
                }
                if rng.chance(0.05) {
                    ts += 1_000 + rng.below(10_000) as i64;
                    out.push(item_event("favorite", item, ts));
                }
                ts += 5_000 + rng.below(60_000) as i64;
            }
        }

        if rng.chance(0.2) {
            out.push(pb::Event {
                tag: "price_sensitive".into(),
                ..event("tag", random_ts(&mut rng))
            });
        }
        if rng.chance(0.1) {
            let ts = random_ts(&mut rng);
            out.push(pb::Event {
                tag: "newsletter".into(),
                ..event("tag", ts)
            });
            if rng.chance(0.1) {
                out.push(pb::Event {
                    tag: "newsletter".into(),
                    ..event("untag", ts + 1 + rng.below(HOUR_MS as u64) as i64)
                });
            }
        }
        if rng.chance(0.3) {
            let tier = match rng.below(100) {
                0..40 => 1,
                40..65 => 2,
                65..80 => 3,
                80..92 => 4,
                _ => 5,
            };
            out.push(pb::Event {
                tier: Some(tier),
                ..event("member", random_ts(&mut rng))
            });
        }
    }

    /// One event "happening now" for a random known visitor of a random
    /// shop, with the same action mix as the dataset (background load).
    pub fn live(&self, rng: &mut SplitMix64, shops: usize, visitors: u64, now_ms: i64) -> pb::Event {
        let catalog = &self.catalog;
        let item = catalog.popular_item(rng);
        let action = match rng.below(117) {
            0..100 => "view",
            100..110 => "cart",
            110..115 => "favorite",
            _ => "purchase",
        };
        let purchase = action == "purchase";
        pb::Event {
            shop: shop_name(rng.index(shops.max(1))),
            visitor: visitor_id(rng.below(visitors.max(1))),
            action: action.to_string(),
            item: item_id(item),
            category: category_name(catalog.category_of(item)),
            price: purchase.then(|| catalog.price(item)),
            quantity: purchase.then_some(1),
            ts: Some(now_ms),
            ..pb::Event::default()
        }
    }
}

/// One batch of events for Track, and how many visitors it completed.
#[derive(Debug, Clone)]
pub struct Batch {
    /// At most the batch size.
    pub events: Vec<pb::Event>,
    /// Visitors whose last event is in this batch.
    pub visitors: u64,
}

/// Every event of `visitors` visitors of each of `shops` shops, shop by
/// shop, cut into batches of exactly `size` events (the last may be short).
#[derive(Debug)]
pub struct Batches {
    generator: EventGenerator,
    shops: usize,
    visitors: u64,
    size: usize,
    shop: usize,
    next: u64,
    pending: Vec<pb::Event>,
}

impl Batches {
    /// The batches of the whole dataset.
    pub fn new(generator: EventGenerator, shops: usize, visitors: u64, size: usize) -> Batches {
        Batches {
            generator,
            shops,
            visitors,
            size: size.max(1),
            shop: 0,
            next: 0,
            pending: Vec::new(),
        }
    }
}

impl Iterator for Batches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let mut completed = 0;
        while self.pending.len() < self.size && self.shop < self.shops {
            self.generator.visitor(self.shop, self.next, &mut self.pending);
            completed += 1;
            self.next += 1;
            if self.next >= self.visitors {
                self.next = 0;
                self.shop += 1;
            }
        }
        if self.pending.is_empty() {
            return None;
        }
        let rest = self.pending.split_off(self.pending.len().min(self.size));
        let events = std::mem::replace(&mut self.pending, rest);
        Some(Batch {
            events,
            visitors: completed,
        })
    }
}

/// The rule file of load-test shop `shop`: about 25 audiences using every
/// kind of atom, banners, item pools, complements and five benefits with
/// caps, budgets, holdouts and a time window. Valid per `rules/README.md`.
pub fn rule_file(shop: usize, catalog: &Catalog) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write_rule_file(&mut out, shop, catalog);
    out
}

fn write_rule_file(out: &mut String, shop: usize, catalog: &Catalog) -> std::fmt::Result {
    let config = catalog.config();
    let mut rng = stream_rng(config.seed, shop as u64, u64::MAX);
    let categories = config.categories;
    let per_category = config.items / categories;
    let featured = rng.index(categories);
    let bought_category = (featured + 1 + rng.index(categories - 1)) % categories.max(1);
    let hot_viewed = rng.index(10.min(config.items));
    let hot_carted = rng.index(10.min(config.items));
    let list = |items: &[usize]| -> String {
        let ids: Vec<String> = items.iter().map(|&k| item_id(k)).collect();
        format!("[{}]", ids.join(", "))
    };
    let in_featured = |from: usize, n: usize| {
        (from..from + n)
            .filter(|r| *r < per_category)
            .map(|r| catalog.item_in_category(featured, r))
            .collect::<Vec<_>>()
    };

    writeln!(
        out,
        "# Generated by vitrine-loadtest (seed {}): a synthetic storefront",
        config.seed
    )?;
    writeln!(
        out,
        "# with {} items over {} categories. Do not edit by hand.",
        config.items, categories
    )?;
    writeln!(out, "shop: {}", shop_name(shop))?;
    writeln!(out)?;
    writeln!(out, "audiences:")?;
    let audiences = [
        ("new_visitor", "not visited(365d)".to_string()),
        ("active_today", "visited(24h)".to_string()),
        ("recent_visitor", "visited(7d)".to_string()),
        ("returning", "visited(30d) and not purchased(365d)".to_string()),
        ("window_shopper", "viewed(3d) and not carted(3d)".to_string()),
        ("cart_abandoner", "carted(7d) and not purchased(7d)".to_string()),
        ("favoriter", "favorited(30d)".to_string()),
        ("buyer", "purchased(30d)".to_string()),
        ("repeat_buyer", "purchase_count(30d) >= 2".to_string()),
        ("big_spender", "spend(30d) >= 500".to_string()),
        ("loyal", "purchase_count(365d) >= 3 or spend(365d) >= 1500".to_string()),
        ("lapsing", "purchased(400d) and not purchased(14d)".to_string()),
        (
            "hot_item_viewer",
            format!("viewed(7d, item=\"{}\")", item_id(hot_viewed)),
        ),
        (
            "hot_item_carter",
            format!("carted(14d, item=\"{}\")", item_id(hot_carted)),
        ),
        (
            "category_fan",
            format!("viewed(7d, category=\"{}\")", category_name(featured)),
        ),
        (
            "category_buyer",
            format!("purchased(30d, category=\"{}\")", category_name(bought_category)),
        ),
        ("price_sensitive", "tag(\"price_sensitive\")".to_string()),
        ("newsletter", "tag(\"newsletter\")".to_string()),
        ("member", "member_tier >= 1".to_string()),
        ("vip", "member_tier >= 4".to_string()),
        ("south", "ctx.region in [\"south\", \"southwest\"]".to_string()),
        ("on_item_page", "ctx.page == \"item\"".to_string()),
        ("mobile", "ctx.device == \"mobile\"".to_string()),
        ("engaged_member", "member and (favoriter or buyer)".to_string()),
        (
            "deal_hunter",
            "price_sensitive and (cart_abandoner or window_shopper)".to_string(),
        ),
    ];
    for (name, expr) in &audiences {
        writeln!(out, "  {:<17}{expr}", format!("{name}:"))?;
    }

    writeln!(out)?;
    writeln!(out, "banners:")?;
    let banners = [
        ("vip and on_item_page", "vip-item-gold".to_string()),
        ("vip", "vip-gold".to_string()),
        ("cart_abandoner", "your-cart-is-waiting".to_string()),
        ("lapsing and loyal", "we-miss-you".to_string()),
        ("category_fan", format!("new-in-{}", category_name(featured))),
        ("new_visitor and south", "welcome-south".to_string()),
        ("new_visitor", "welcome".to_string()),
        ("mobile and returning", "get-the-app".to_string()),
    ];
    for (when, banner) in &banners {
        writeln!(out, "  - when: {when}")?;
        writeln!(out, "    banner: {banner}")?;
    }
    writeln!(out, "  - banner: default")?;

    writeln!(out)?;
    writeln!(out, "items:")?;
    writeln!(out, "  limit: 6")?;
    writeln!(out, "  exclude_purchased: 30d")?;
    writeln!(out, "  pools:")?;
    let top = |from: usize, n: usize| (from.min(config.items)..(from + n).min(config.items)).collect::<Vec<_>>();
    let pools = [
        ("cart_abandoner", in_featured(0, 5)),
        ("category_fan", in_featured(5, 8)),
        ("vip or loyal", top(20, 6)),
        ("deal_hunter", top(40, 6)),
    ];
    for (when, items) in pools.iter().filter(|(_, items)| !items.is_empty()) {
        writeln!(out, "    - when: {when}")?;
        writeln!(out, "      items: {}", list(items))?;
    }
    writeln!(out, "    - items: {}", list(&top(0, 12)))?;
    writeln!(out, "  complements:")?;
    let candidates = config.items.min(200);
    for k in 0..config.items.min(60) {
        let n = 2 + rng.index(2);
        let mut picks: Vec<usize> = Vec::with_capacity(n);
        for _ in 0..n * 4 {
            let c = rng.index(candidates);
            if c != k && !picks.contains(&c) {
                picks.push(c);
            }
            if picks.len() == n {
                break;
            }
        }
        if !picks.is_empty() {
            writeln!(out, "    {}: {}", item_id(k), list(&picks))?;
        }
    }

    writeln!(out)?;
    writeln!(out, "benefits:")?;
    writeln!(out, "  - id: vip-early-access")?;
    writeln!(out, "    when: vip")?;
    writeln!(out, "    kind: ticket")?;
    writeln!(out, "    params: {{ enter_early_minutes: \"30\" }}")?;
    writeln!(out, "    starts: 2025-01-01T00:00:00+00:00")?;
    writeln!(out, "    ends:   2099-12-31T23:59:59+00:00")?;
    writeln!(out, "    budget: 500")?;
    writeln!(out, "  - id: cart-coupon-10")?;
    writeln!(out, "    when: cart_abandoner and price_sensitive")?;
    writeln!(out, "    kind: coupon")?;
    writeln!(out, "    params: {{ amount: \"10\", min_spend: \"99\" }}")?;
    writeln!(out, "    cap: {{ per_visitor: 1, window: 30d }}")?;
    writeln!(out, "    holdout: 10%")?;
    writeln!(out, "  - id: win-back-20")?;
    writeln!(out, "    when: lapsing and loyal")?;
    writeln!(out, "    kind: coupon")?;
    writeln!(out, "    params: {{ amount: \"20\", min_spend: \"150\" }}")?;
    writeln!(out, "    budget: 1000")?;
    writeln!(out, "    cap: {{ per_visitor: 1, window: 180d }}")?;
    writeln!(out, "    holdout: 5%")?;
    writeln!(out, "  - id: category-gift")?;
    writeln!(out, "    when: category_buyer and on_item_page")?;
    writeln!(out, "    kind: gift")?;
    writeln!(out, "    params: {{ sku: \"{}\" }}", item_id(50.min(config.items - 1)))?;
    writeln!(out, "    cap: {{ per_visitor: 1, window: 90d }}")?;
    writeln!(out, "  - id: double-points")?;
    writeln!(out, "    when: loyal and not price_sensitive")?;
    writeln!(out, "    kind: points")?;
    writeln!(out, "    params: {{ multiplier: \"2\" }}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const NOW_MS: i64 = 1_794_000_000_000;

    fn catalog() -> Catalog {
        Catalog::new(&DatasetConfig::default())
    }

    #[test]
    fn rule_file_text_is_deterministic_and_per_shop() {
        let c = catalog();
        assert_eq!(rule_file(0, &c), rule_file(0, &c));
        assert_eq!(rule_file(2, &c), rule_file(2, &Catalog::new(&DatasetConfig::default())));
        assert_ne!(rule_file(0, &c), rule_file(1, &c));
        let other_seed = Catalog::new(&DatasetConfig {
            seed: 7,
            ..DatasetConfig::default()
        });
        assert_ne!(rule_file(0, &c), rule_file(0, &other_seed));
        assert!(rule_file(1, &c).contains("\nshop: load-1\n"));
    }

    #[test]
    fn rule_files_are_valid_rule_sets() {
        for config in [
            DatasetConfig::default(),
            DatasetConfig {
                seed: 9,
                items: 20,
                categories: 20,
                zipf_s: 1.2,
            },
            DatasetConfig {
                seed: 1,
                items: 50,
                categories: 3,
                zipf_s: 0.8,
            },
        ] {
            let c = Catalog::new(&config);
            for shop in 0..3 {
                let text = rule_file(shop, &c);
                if let Err(errors) = vitrine_core::RuleSet::load(&text) {
                    panic!("{config:?} shop {shop}:\n{errors}\n---\n{text}");
                }
            }
        }
    }

    #[test]
    fn rule_file_has_about_twenty_audiences_and_every_feature() {
        let text = rule_file(0, &catalog());
        let audiences = text
            .split("\n\n")
            .find(|s| s.starts_with("audiences:"))
            .map_or(0, |s| s.lines().count() - 1);
        assert!((20..=30).contains(&audiences), "{audiences} audiences");
        for needle in [
            "item=\"",
            "category=\"",
            "purchase_count(",
            "spend(",
            "tag(",
            "member_tier",
            "ctx.region",
            "cap:",
            "budget:",
            "holdout:",
            "complements:",
            "starts:",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn events_are_deterministic_and_complete() {
        let g = EventGenerator::new(catalog(), 30, NOW_MS);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        g.visitor(1, 17, &mut a);
        g.visitor(1, 17, &mut b);
        assert_eq!(a, b);
        let mut c = Vec::new();
        g.visitor(1, 18, &mut c);
        assert_ne!(a, c);

        let mut all = Vec::new();
        for n in 0..2000 {
            g.visitor(0, n, &mut all);
        }
        for e in &all {
            assert_eq!(e.shop, "load-0");
            assert!(e.visitor.starts_with("v-"));
            let ts = e.ts.unwrap_or(0);
            assert!(ts <= NOW_MS && ts > NOW_MS - 30 * DAY_MS, "{e:?}");
            match e.action.as_str() {
                "view" | "cart" | "favorite" => assert!(e.item.starts_with("sku-") && !e.category.is_empty()),
                "purchase" => {
                    assert!(e.item.starts_with("sku-"));
                    assert!(e.price.is_some_and(|p| (5.0..500.0).contains(&p)));
                    assert!(e.quantity.is_some_and(|q| q >= 1));
                }
                "tag" | "untag" => assert!(!e.tag.is_empty()),
                "member" => assert!(e.tier.is_some_and(|t| (1..=5).contains(&t))),
                other => panic!("unexpected action {other}"),
            }
        }
    }

    #[test]
    fn action_mix_is_about_100_10_5_2() {
        let g = EventGenerator::new(catalog(), 30, NOW_MS);
        let mut events = Vec::new();
        for n in 0..20_000 {
            g.visitor(0, n, &mut events);
        }
        let mut counts: HashMap<&str, f64> = HashMap::new();
        for e in &events {
            *counts.entry(e.action.as_str()).or_default() += 1.0;
        }
        let views = counts["view"];
        let per_100 = |a: &str| counts.get(a).copied().unwrap_or(0.0) * 100.0 / views;
        assert!((9.0..11.0).contains(&per_100("cart")), "carts {}", per_100("cart"));
        assert!(
            (4.3..5.7).contains(&per_100("favorite")),
            "favorites {}",
            per_100("favorite")
        );
        assert!(
            (1.6..2.4).contains(&per_100("purchase")),
            "purchases {}",
            per_100("purchase")
        );
        let tagged = counts["tag"] / 20_000.0;
        assert!((0.25..0.35).contains(&tagged), "tag events per visitor {tagged}");
        let members = counts["member"] / 20_000.0;
        assert!((0.27..0.33).contains(&members), "members {members}");
        let live_gen = EventGenerator::new(catalog(), 30, NOW_MS);
        let mut rng = SplitMix64::new(3);
        let mut live: HashMap<String, f64> = HashMap::new();
        for _ in 0..50_000 {
            *live.entry(live_gen.live(&mut rng, 3, 100, NOW_MS).action).or_default() += 1.0;
        }
        let ratio = live["cart"] * 100.0 / live["view"];
        assert!((9.0..11.0).contains(&ratio), "live carts {ratio}");
    }

    #[test]
    fn item_popularity_is_zipf_skewed() {
        let zipf = Zipf::new(2000, 1.0);
        let mut rng = SplitMix64::new(11);
        let mut hits = vec![0u32; 2000];
        let draws = 200_000;
        for _ in 0..draws {
            hits[zipf.sample(&mut rng)] += 1;
        }
        // With s = 1, rank 0 is drawn twice as often as rank 1 and ten times
        // as often as rank 9; the top 1 % of items take about 40 % of draws.
        let r01 = f64::from(hits[0]) / f64::from(hits[1]);
        let r09 = f64::from(hits[0]) / f64::from(hits[9]);
        assert!((1.8..2.2).contains(&r01), "rank0/rank1 = {r01}");
        assert!((8.5..11.5).contains(&r09), "rank0/rank9 = {r09}");
        let top20: u32 = hits[..20].iter().sum();
        let share = f64::from(top20) / f64::from(draws);
        assert!((0.40..0.50).contains(&share), "top 1% share {share}");
        assert!(hits[1..].iter().all(|&h| h < hits[0]));

        // The events follow it: the most viewed item is among the most popular.
        let g = EventGenerator::new(catalog(), 30, NOW_MS);
        let mut events = Vec::new();
        for n in 0..5000 {
            g.visitor(2, n, &mut events);
        }
        let mut views: HashMap<&str, u32> = HashMap::new();
        for e in events.iter().filter(|e| e.action == "view") {
            *views.entry(e.item.as_str()).or_default() += 1;
        }
        let top = views.iter().max_by_key(|(_, n)| **n).map(|(k, _)| *k).unwrap_or("");
        assert!(top < "sku-0020", "most viewed {top}");
    }

    #[test]
    fn batches_cover_every_visitor_once_in_exact_sizes() {
        let g = EventGenerator::new(catalog(), 30, NOW_MS);
        let mut expected = Vec::new();
        for shop in 0..2 {
            for n in 0..300 {
                g.visitor(shop, n, &mut expected);
            }
        }
        let batches: Vec<Batch> = Batches::new(g, 2, 300, 250).collect();
        assert!(batches.iter().rev().skip(1).all(|b| b.events.len() == 250));
        assert_eq!(batches.iter().map(|b| b.visitors).sum::<u64>(), 600);
        let got: Vec<pb::Event> = batches.into_iter().flat_map(|b| b.events).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut rng = SplitMix64::new(5);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            buckets[rng.index(10)] += 1;
        }
        assert!(buckets.iter().all(|&b| (9_500..10_500).contains(&b)), "{buckets:?}");
        assert!((0..1000).all(|_| rng.next_f64() < 1.0));
        assert_eq!(SplitMix64::new(1).below(0), 0);
    }
}
