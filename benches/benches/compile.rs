//! `RuleSet::load` (YAML parse + validate + compile) of a 50-audience rule
//! file, and of the 20-audience file of the other benches.
//!
//! `cargo bench -p vitrine-benches --bench compile`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use vitrine_benches::{load_rules, rules_50, RULES_20};
use vitrine_core::RuleSet;

fn main() {
    let rules_50 = rules_50();
    let loaded = load_rules(&rules_50);
    println!(
        "50-audience file: {} bytes, {} lines, {} audiences, {} banners, {} pools, {} benefits",
        rules_50.len(),
        rules_50.lines().count(),
        loaded.plan.audiences().len(),
        loaded.banners.len(),
        loaded.items().pools.len(),
        loaded.benefits.len()
    );
    load_rules(RULES_20);

    let mut c = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = c.benchmark_group("rules_load");
    for (name, text) in [("50_audiences", rules_50.as_str()), ("20_audiences", RULES_20)] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| b.iter(|| RuleSet::load(black_box(text))));
    }
    group.finish();
    c.final_summary();
}
