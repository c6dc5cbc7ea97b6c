//! `decide` over the 20-audience rule set and the 1M-visitor index.
//!
//! First, outside criterion, 200,000 individually timed decisions for random
//! known visitors (random region and page, no explanation) give the latency
//! distribution (p50 .. max), each timed from a request whose names are in
//! cache, as a server's just-decoded request is; then criterion measures the
//! mean per decision for a known visitor, with an explanation, for an
//! activity-weighted visitor and for an anonymous visitor.
//!
//! The same run then measures [`vitrine_benches::rules_20_zoned`] (the shop
//! on Asia/Shanghai's clock, `days_since` and `avg_order`) over a second
//! index of the same events built on that clock: "known visitor" and
//! "known visitor, Asia/Shanghai" compare the two rule sets (the second index
//! doubles the bench's memory).
//!
//! Like `vitrine serve`, the bench first restarts itself with glibc's
//! malloc on transparent huge pages (`VITRINE_BENCH_HUGE_PAGES=off` keeps
//! 4 KiB pages, for an A/B run).
//!
//! `cargo bench -p vitrine-benches --bench decide`
//! (`VITRINE_BENCH_VISITORS=100000` for a quicker run).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use vitrine_benches::{benchmarking, Fixture, Percentiles, RequestSpec};
use vitrine_core::{decide, Context, DecideRequest, MemoryLedger, RuleSet, ShopIndex};

/// Individually timed decisions of the latency report.
const LATENCY_CALLS: usize = 200_000;

fn latency(fx: &Fixture, ledger: &MemoryLedger, label: &str, specs: &[RequestSpec], explain: bool) {
    latency_of(fx, &fx.rules, &fx.index, ledger, label, specs, explain);
}

fn latency_of(
    fx: &Fixture,
    rules: &RuleSet,
    index: &ShopIndex,
    ledger: &MemoryLedger,
    label: &str,
    specs: &[RequestSpec],
    explain: bool,
) {
    // A server decides on a request it has just decoded: the visitor's and
    // the item's names are in cache. So the names are copied out of the
    // dataset (a random read of it, a cache miss or two at 1M visitors)
    // before the clock starts, and only `decide` is timed.
    let (mut visitor, mut item) = (String::new(), String::new());
    let mut timed = |spec: &RequestSpec| {
        let req = fx.dataset.request(spec, explain);
        visitor.clear();
        visitor.push_str(req.visitor);
        item.clear();
        item.push_str(req.context.item);
        let req = DecideRequest {
            visitor: &visitor,
            context: Context {
                item: &item,
                ..req.context
            },
            ..req
        };
        let t = Instant::now();
        black_box(decide(rules, Some(index), ledger, black_box(&req)));
        t.elapsed()
    };
    // Warm caches and branch predictors on other requests first.
    for spec in specs.iter().rev().take(specs.len() / 10) {
        timed(spec);
    }
    let mut nanos = Vec::with_capacity(specs.len());
    let started = Instant::now();
    for spec in specs {
        nanos.push(timed(spec).as_nanos() as u64);
    }
    let wall = started.elapsed();
    if let Some(p) = Percentiles::of(&mut nanos) {
        println!(
            "decide latency [{label}]: {p} ({:.0} decisions/s on one thread)",
            specs.len() as f64 / wall.as_secs_f64()
        );
    }
}

/// What the decisions look like, so the figures can be judged.
fn outcomes(fx: &Fixture, ledger: &MemoryLedger, specs: &[RequestSpec]) {
    let mut banners: BTreeMap<&str, usize> = BTreeMap::new();
    let mut benefits: BTreeMap<&str, usize> = BTreeMap::new();
    let mut items = 0;
    for spec in specs {
        let d = decide(&fx.rules, Some(&fx.index), ledger, &fx.dataset.request(spec, false));
        *banners.entry(d.banner.unwrap_or("-")).or_default() += 1;
        *benefits.entry(d.benefit.map_or("-", |b| &*b.id)).or_default() += 1;
        items += d.items.len();
    }
    println!(
        "decisions of {} random visitors: banners {banners:?}; benefits {benefits:?}; {:.2} items each",
        specs.len(),
        items as f64 / specs.len() as f64
    );
}

// The server's own start-up step (`vitrine serve --huge-pages`), so that
// the bench measures the heap the server runs on.
#[path = "../../engine/server/src/huge_pages.rs"]
#[allow(dead_code)] // the server's restore-time `hold`
mod huge_pages;

fn main() {
    // Off for an A/B run: `VITRINE_BENCH_HUGE_PAGES=off`.
    match std::env::var("VITRINE_BENCH_HUGE_PAGES").as_deref() {
        Ok("off") => println!("huge pages: off (VITRINE_BENCH_HUGE_PAGES)"),
        _ => println!("huge pages: {}", huge_pages::reexec()),
    }
    let fx = Fixture::load();
    let ledger = MemoryLedger::new();
    let calls = if benchmarking() { LATENCY_CALLS } else { 2_000 };

    let known = fx.dataset.requests(calls, 1, false);
    outcomes(&fx, &ledger, &known[..calls.min(20_000)]);
    latency(&fx, &ledger, "known visitor", &known, false);
    latency(
        &fx,
        &ledger,
        "known visitor, explain",
        &fx.dataset.requests(calls, 2, false),
        true,
    );
    latency(
        &fx,
        &ledger,
        "active visitor",
        &fx.dataset.active_requests(calls, 3),
        false,
    );
    latency(&fx, &ledger, "anonymous", &fx.dataset.requests(calls, 4, true), false);

    let zoned_rules = vitrine_benches::load_rules(&vitrine_benches::rules_20_zoned());
    let zoned_index = fx.dataset.build_index_in(zoned_rules.zone.clone());
    latency_of(
        &fx,
        &zoned_rules,
        &zoned_index,
        &ledger,
        "known visitor, Asia/Shanghai",
        &known,
        false,
    );

    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    let cases: [(&str, Vec<RequestSpec>, bool); 4] = [
        ("known_visitor", fx.dataset.requests(1 << 16, 11, false), false),
        ("known_visitor_explain", fx.dataset.requests(1 << 16, 12, false), true),
        ("active_visitor", fx.dataset.active_requests(1 << 16, 13), false),
        ("anonymous", fx.dataset.requests(1 << 16, 14, true), false),
    ];
    for (name, specs, explain) in &cases {
        group.bench_function(*name, |b| {
            let mut i = 0;
            b.iter(|| {
                let req = fx.dataset.request(&specs[i % specs.len()], *explain);
                i += 1;
                decide(&fx.rules, Some(&fx.index), &ledger, &req)
            })
        });
    }
    let specs = fx.dataset.requests(1 << 16, 11, false);
    group.bench_function("known_visitor_asia_shanghai", |b| {
        let mut i = 0;
        b.iter(|| {
            let req = fx.dataset.request(&specs[i % specs.len()], false);
            i += 1;
            decide(&zoned_rules, Some(&zoned_index), &ledger, &req)
        })
    });
    group.finish();
    c.final_summary();
}
