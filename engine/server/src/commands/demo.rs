//! The demo: the rule files of `rules/` over a generated stream of behavior,
//! so a newcomer's first command already shows personalized decisions.
//!
//! The stream is deterministic. For each shop it reads what the rule file
//! refers to (pool and complement items, `item=` / `category=` filters,
//! tags) and generates visitors of every lifecycle stage the product cares
//! about: browsers, cart abandoners, recent and repeat buyers, lapsed buyers,
//! members of every tier, each with a share of tagged visitors.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use vitrine_core::eval::decide::Explanation;
use vitrine_core::event::Fields;
use vitrine_core::hash::SplitMix64;
use vitrine_core::rules::expr::Filter;
use vitrine_core::rules::plan::Atom;
use vitrine_core::{audience_sizes, decide, Context, DecideRequest, Event, Index, MemoryLedger, RuleSet};

/// The most items a shop's demo stream uses (the first by name of those its
/// rule file names): what `--demo` seeds is bounded by visitors, not by the
/// size of a rule file's vocabulary.
pub const MAX_DEMO_ITEMS: usize = 200;
/// The most categories a shop's demo stream uses.
pub const MAX_DEMO_CATEGORIES: usize = 50;
/// The most tags a shop's demo stream uses; each demo visitor carries about
/// a quarter of them.
pub const MAX_DEMO_TAGS: usize = 32;

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

/// The demo's random stream: the workspace's one generator, reduced by
/// modulo rather than by [`SplitMix64::below`]'s multiply-shift, so that
/// the demo data stays what it has always been for a given rule file.
struct Rng(SplitMix64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }
}

/// What a rule file talks about: the vocabulary of its demo stream, at most
/// [`MAX_DEMO_ITEMS`] items, [`MAX_DEMO_CATEGORIES`] categories and
/// [`MAX_DEMO_TAGS`] tags.
struct Vocabulary {
    items: Vec<String>,
    categories: Vec<String>,
    tags: Vec<String>,
}

impl Vocabulary {
    fn of(rules: &RuleSet) -> Vocabulary {
        let mut items = BTreeSet::new();
        let mut categories = BTreeSet::new();
        let mut tags = BTreeSet::new();
        for pool in &rules.items().pools {
            for i in pool.items.iter() {
                keep_first(&mut items, i.to_string(), MAX_DEMO_ITEMS);
            }
        }
        for (item, complements) in &rules.items().complements {
            keep_first(&mut items, item.to_string(), MAX_DEMO_ITEMS);
            for i in complements.iter() {
                keep_first(&mut items, i.to_string(), MAX_DEMO_ITEMS);
            }
        }
        for atom in rules.plan.atoms() {
            match atom {
                Atom::Behavior {
                    filter: Some(Filter::Item(i)),
                    ..
                } => {
                    keep_first(&mut items, i.clone(), MAX_DEMO_ITEMS);
                }
                Atom::Behavior {
                    filter: Some(Filter::Category(c)),
                    ..
                } => {
                    keep_first(&mut categories, c.clone(), MAX_DEMO_CATEGORIES);
                }
                Atom::Tag(t) => {
                    keep_first(&mut tags, t.to_string(), MAX_DEMO_TAGS);
                }
                _ => {}
            }
        }
        if items.is_empty() {
            items.extend((1..=8).map(|i| format!("sku-{i:03}")));
        }
        if categories.is_empty() {
            categories.extend(["cat-a", "cat-b", "cat-c", "cat-d"].map(String::from));
        }
        Vocabulary {
            items: items.into_iter().collect(),
            categories: categories.into_iter().collect(),
            tags: tags.into_iter().collect(),
        }
    }

    /// Items keep one category, chosen by position.
    fn category_of(&self, item: usize) -> &str {
        &self.categories[item % self.categories.len()]
    }
}

/// Adds `value` to `set`, keeping only the `max` first values in order, so
/// the set never grows past `max` whatever the rule file names.
fn keep_first(set: &mut BTreeSet<String>, value: String, max: usize) {
    set.insert(value);
    if set.len() > max {
        set.pop_last();
    }
}

/// The lifecycle stages of demo visitors, cycled through by visitor number.
const PERSONAS: [&str; 7] = [
    "browser",
    "cart-abandoner",
    "recent-buyer",
    "loyal",
    "lapsed",
    "member",
    "window-shopper",
];

/// Generates the demo stream of one shop ending at `now_ms`: at most
/// `visitors * (13 + MAX_DEMO_TAGS)` events, whatever the rule file.
pub fn events(rules: &RuleSet, visitors: usize, now_ms: i64) -> Vec<Event<'static>> {
    let vocab = Vocabulary::of(rules);
    let mut rng = Rng(SplitMix64::new(0x5eed ^ u64::from(rules.shop.len() as u32)));
    let mut out = Vec::new();
    let shop = rules.shop.to_string();
    for n in 0..visitors {
        let visitor = format!("v-{n:04}");
        let persona = PERSONAS[n % PERSONAS.len()];
        let mut push = |action: &str, item: Option<usize>, ts: i64, extra: Fields<'static>| {
            let fields = Fields {
                shop: Some(Cow::Owned(shop.clone())),
                visitor: Some(Cow::Owned(visitor.clone())),
                action: Some(Cow::Owned(action.to_string())),
                item: item.map(|i| Cow::Owned(vocab.items[i].clone())),
                category: item.map(|i| Cow::Owned(vocab.category_of(i).to_string())),
                ts: Some(ts.max(0)),
                ..extra
            };
            if let Ok(event) = Event::validate(fields) {
                out.push(event);
            }
        };
        let n_items = vocab.items.len() as u64;
        let days_ago = |rng: &mut Rng, from: i64, to: i64| {
            now_ms - (from + rng.below((to - from) as u64) as i64) * DAY - rng.below(24) as i64 * HOUR
        };
        let views = 1 + rng.below(6);
        for _ in 0..views {
            let ts = days_ago(&mut rng, 0, 30);
            push("view", Some(rng.below(n_items) as usize), ts, Fields::default());
        }
        let purchase = |rng: &mut Rng, from, to| Fields {
            price: Some((10 + rng.below(60) * 10) as f64),
            quantity: Some(1 + rng.below(2) as i64),
            ts: Some(days_ago(rng, from, to)),
            ..Fields::default()
        };
        match persona {
            "cart-abandoner" => {
                let item = rng.below(n_items) as usize;
                push("cart", Some(item), days_ago(&mut rng, 0, 5), Fields::default());
                push(
                    "favorite",
                    Some(rng.below(n_items) as usize),
                    days_ago(&mut rng, 0, 20),
                    Fields::default(),
                );
            }
            "recent-buyer" => {
                let p = purchase(&mut rng, 0, 40);
                let ts = p.ts.unwrap_or(now_ms);
                push("purchase", Some(rng.below(n_items) as usize), ts, p);
            }
            "loyal" => {
                for _ in 0..3 + rng.below(4) {
                    let p = purchase(&mut rng, 0, 360);
                    let ts = p.ts.unwrap_or(now_ms);
                    push("purchase", Some(rng.below(n_items) as usize), ts, p);
                }
            }
            "lapsed" => {
                let p = purchase(&mut rng, 190, 360);
                let ts = p.ts.unwrap_or(now_ms);
                push("purchase", Some(rng.below(n_items) as usize), ts, p);
            }
            "member" => {
                let tier = Fields {
                    tier: Some(1 + rng.below(5) as i64),
                    ..Fields::default()
                };
                push("member", None, days_ago(&mut rng, 0, 90), tier);
            }
            _ => {}
        }
        for tag in &vocab.tags {
            if rng.below(4) == 0 {
                let tag = Fields {
                    tag: Some(Cow::Owned(tag.clone())),
                    ..Fields::default()
                };
                push("tag", None, days_ago(&mut rng, 0, 60), tag);
            }
        }
    }
    out
}

/// `vitrine demo`: loads the rule files, applies a demo stream, prints
/// audience sizes and a few explained decisions, then what to try next.
pub fn run(rules_dir: &Path, visitors: usize, now_ms: i64, out: &mut impl Write) -> std::io::Result<bool> {
    let mut paths: Vec<_> = std::fs::read_dir(rules_dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    let index = Index::new();
    let ledger = MemoryLedger::new();
    let mut ok = true;
    for path in &paths {
        let source = crate::rules_store::read_rule_file(path, vitrine_core::rules::Limits::default().max_file_bytes)?;
        let rules = match RuleSet::load(&source) {
            Ok(r) => r,
            Err(errors) => {
                ok = false;
                for e in &errors.0 {
                    writeln!(out, "{}:{e}", path.display())?;
                }
                if let Some(line) = errors.omitted_line() {
                    writeln!(out, "{}: {line}", path.display())?;
                }
                continue;
            }
        };
        let stream = events(&rules, visitors, now_ms);
        for event in &stream {
            index.apply_in(event, || rules.zone.clone());
        }
        let shop = index.shop(&rules.shop);
        writeln!(
            out,
            "\n== {} ({}): {} events from {visitors} visitors",
            rules.shop,
            path.display(),
            stream.len()
        )?;
        writeln!(out, "audiences:")?;
        for (name, size) in audience_sizes(&rules, shop.as_deref(), &ledger, now_ms) {
            match size {
                Some(n) => writeln!(out, "  {name:<24} {n:>6} visitors")?,
                None => writeln!(out, "  {name:<24}      - (reads the request context)")?,
            }
        }
        for (visitor, persona) in [
            ("", "anonymous"),
            ("v-0001", PERSONAS[1]),
            ("v-0003", PERSONAS[3]),
            ("v-0005", PERSONAS[5]),
        ] {
            let context = Context {
                page: "home",
                region: "south",
                device: "mobile",
                ..Context::default()
            };
            let d = decide(
                &rules,
                shop.as_deref(),
                &ledger,
                &DecideRequest {
                    visitor,
                    context,
                    explain: true,
                    now_ms,
                    ..DecideRequest::default()
                },
            );
            let items: Vec<String> = d
                .items
                .iter()
                .map(|p| format!("{} ({})", p.id, p.reason.as_str()))
                .collect();
            writeln!(
                out,
                "decide visitor={visitor:?} [{persona}] page=home region=south device=mobile"
            )?;
            writeln!(out, "  banner:  {}", d.banner.unwrap_or("-"))?;
            writeln!(out, "  items:   {}", items.join(", "))?;
            writeln!(
                out,
                "  benefit: {}",
                d.benefit.map_or("-".to_string(), |b| format!("{} ({})", b.id, b.kind))
            )?;
            if let Some(Explanation { audiences, .. }) = &d.explanation {
                writeln!(out, "  matched: {}", audiences.join(", "))?;
            }
        }
    }
    writeln!(
        out,
        "\nWhat to try next:\n  vitrine rules validate rules/*.yaml          # check rule files, errors as file:line:column\n  edit a file in rules/ and run the demo again  # see decisions change\n  cargo bench -p vitrine-benches              # measure decide, apply, size and compile\n  vitrine serve --demo, then: vitrine report lift --shop demo-beauty --window 7d  # did member-points make members buy more?"
    )?;
    Ok(ok)
}

/// What a newcomer can try against a running server: real commands with the
/// server's real addresses and shops.
/// With `studio`, the rule studio's page comes second.
pub fn hints(grpc: std::net::SocketAddr, http: std::net::SocketAddr, shops: &[(String, u64)], studio: bool) -> String {
    let mut out = String::new();
    let listing: Vec<String> = shops.iter().map(|(s, r)| format!("{s} (revision {r})")).collect();
    out.push_str(&format!(
        "\nVitrine is serving {} on {grpc}; metrics on http://{http}/metrics\n",
        if listing.is_empty() {
            "no shops yet (push a rule file)".to_string()
        } else {
            listing.join(", ")
        }
    ));
    let shop = shops.first().map_or("demo-apparel", |(s, _)| s.as_str());
    let studio = if studio {
        format!("  open http://{http}/studio#shop={shop}   # the rule studio: edit, check, try a visitor, publish, roll back\n")
    } else {
        String::new()
    };
    out.push_str(&format!(
        "\nWhat to try next:\n  grpcurl -plaintext {grpc} list\n{studio}  grpcurl -plaintext -d '{{\"shop\":\"{shop}\",\"visitor\":\"v-0001\",\"context\":{{\"page\":\"home\",\"region\":\"south\"}},\"explain\":true}}' {grpc} vitrine.v1.Decision/Decide\n  grpcurl -plaintext -d '{{\"shop\":\"{shop}\",\"expression\":\"visited(7d) and not purchased(30d)\"}}' {grpc} vitrine.v1.Audiences/Size\n  grpcurl -plaintext -d '{{\"events\":[{{\"shop\":\"{shop}\",\"visitor\":\"v-new\",\"action\":\"cart\",\"item\":\"sku-101\",\"ts\":{now}}}]}}' {grpc} vitrine.v1.Ingest/Track\n  grpcurl -plaintext -d '{{\"shop\":\"{shop}\"}}' {grpc} vitrine.v1.Rules/List\n  vitrine rules push rules/{shop}.yaml --addr {grpc}\n  curl -s http://{http}/metrics | grep ^vitrine_\n  vitrine report lift --shop {lift_shop} --window 7d --addr {grpc}\n",
        now = crate::clock::now_ms(),
        lift_shop = shops
            .iter()
            .find(|(s, _)| s == "demo-beauty")
            .map_or(shop, |(s, _)| s.as_str()),
    ));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashSet;

    use super::*;

    /// The hints name the studio second, at the HTTP address, opened on the first shop.
    #[test]
    fn the_hints_open_the_studio_when_it_is_served() {
        let (grpc, http) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        let shops = [("demo-apparel".to_string(), 1)];
        let with = hints(grpc, http, &shops, true);
        let lines: Vec<&str> = with.lines().skip_while(|l| *l != "What to try next:").collect();
        assert!(
            lines[2].starts_with("  open http://127.0.0.1:2/studio#shop=demo-apparel"),
            "{with}"
        );
        assert!(!hints(grpc, http, &shops, false).contains("/studio"));
    }

    /// Regression (hardening #18): `--demo` seeds a bounded vocabulary per
    /// shop, so a rule file naming 3,000 tags and 3,000 items does not make
    /// the demo stream (and the index it fills) grow with the file: the
    /// stream stays linear in the visitors.
    #[test]
    fn the_demo_stream_is_bounded_by_visitors_not_by_the_rule_file() {
        let mut source = String::from("shop: big\naudiences:\n");
        // 3,000 tags and items in 1,000 audiences (the most a file may have).
        for n in 0..1_000 {
            let [a, b, c] = [3 * n, 3 * n + 1, 3 * n + 2];
            source.push_str(&format!(
                "  t{n}: tag(\"tag-{a:05}\") or tag(\"tag-{b:05}\") or tag(\"tag-{c:05}\") or visited(7d, item=\"sku-{a:05}\") or visited(7d, item=\"sku-{b:05}\") or visited(7d, item=\"sku-{c:05}\")\n"
            ));
        }
        source.push_str("banners:\n  - banner: default\n");
        let rules = RuleSet::load(&source).unwrap();
        let visitors = 100;
        let stream = events(&rules, visitors, 1_795_132_800_000);
        assert!(
            stream.len() <= visitors * (13 + MAX_DEMO_TAGS),
            "{} events from {visitors} visitors",
            stream.len()
        );
        let tags: HashSet<_> = stream.iter().filter_map(|e| e.tag.as_deref()).collect();
        let items: HashSet<_> = stream.iter().filter_map(|e| e.item.as_deref()).collect();
        assert!(tags.len() <= MAX_DEMO_TAGS, "{} tags", tags.len());
        assert!(items.len() <= MAX_DEMO_ITEMS, "{} items", items.len());
        // The first ones by name: the same stream at every start.
        assert!(tags.contains("tag-00000"));
    }
}
