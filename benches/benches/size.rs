//! Audience sizes over the 1M-visitor index: `size_of` of 3-atom
//! expressions, of one audience of the 20-audience file by name, and every
//! audience of the file at once (what a rule push reports).
//!
//! `cargo bench -p vitrine-benches --bench size`

use std::time::{Duration, Instant};

use criterion::Criterion;
use vitrine_benches::{Fixture, NOW_MS};
use vitrine_core::{audience_sizes, size_of};

/// (bench name, expression).
const CASES: [(&str, &str); 4] = [
    (
        "viewed_7d_and_not_purchased_30d_and_spend_365d_lt_100",
        "viewed(7d) and not purchased(30d) and spend(365d) < 100",
    ),
    (
        "carted_7d_cat3_or_tag_price_sensitive",
        r#"carted(7d, category="cat-3") or tag("price_sensitive")"#,
    ),
    ("audience_deal_hunter", "deal_hunter"),
    ("audience_win_back", "win_back"),
];

fn main() {
    let fx = Fixture::load();
    let size = |expr: &str| match size_of(
        Some(&fx.rules),
        Some(&fx.index),
        &vitrine_core::MemoryLedger::new(),
        expr,
        NOW_MS,
    ) {
        Ok(n) => n,
        Err(e) => panic!("cannot size `{expr}`: {e}"),
    };
    for (_, expr) in CASES {
        let t = Instant::now();
        let n = size(expr);
        println!(
            "size_of `{expr}` = {n} visitors (first call {:.2} ms)",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    // Where the 3-atom expression's time goes: each operand alone.
    for part in [
        "viewed(7d)",
        "purchased(30d)",
        "spend(365d) < 100",
        "viewed(7d) and not purchased(30d)",
    ] {
        let t = Instant::now();
        let n = size(part);
        println!("  part `{part}` = {n} ({:.2} ms)", t.elapsed().as_secs_f64() * 1e3);
    }
    let mut each = Vec::new();
    for a in fx.rules.plan.audiences().iter().filter(|a| !a.uses_ctx) {
        let t = Instant::now();
        let n = size(&a.name);
        each.push(format!("{} {n} ({:.1} ms)", a.name, t.elapsed().as_secs_f64() * 1e3));
    }
    println!("size_of each audience by name: {}", each.join(", "));
    let t = Instant::now();
    let sizes = audience_sizes(&fx.rules, Some(&fx.index), &vitrine_core::MemoryLedger::new(), NOW_MS);
    println!(
        "audience_sizes of all 20 audiences in {:.2} ms: {sizes:?}",
        t.elapsed().as_secs_f64() * 1e3
    );

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = c.benchmark_group("size_of");
    for (name, expr) in CASES {
        group.bench_function(name, |b| b.iter(|| size(expr)));
    }
    group.bench_function("audience_sizes_all_20", |b| {
        b.iter(|| audience_sizes(&fx.rules, Some(&fx.index), &vitrine_core::MemoryLedger::new(), NOW_MS))
    });
    group.finish();
    c.final_summary();
}
