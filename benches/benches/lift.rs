//! The lift report over 1,000,000 exposed visitors (`VITRINE_BENCH_VISITORS`
//! to change): each visitor has 1 to 3 decisions over 14 days under a 10%
//! holdout of the coupon (the others get points), and about 10% of them buy
//! within a week. Measures building the exposures, one report for the
//! entry (`id` asked), and the report over a 7-day range of exposures.
//!
//! `cargo bench -p vitrine-benches --bench lift`

use std::time::{Duration, Instant};

use criterion::Criterion;
use vitrine_benches::{run_visitors, DAY_MS, NOW_MS};
use vitrine_core::eval::decide::Slot;
use vitrine_core::event::Fields;
use vitrine_core::hash::{held_out, SplitMix64};
use vitrine_core::time::{Unit, Window};
use vitrine_core::{lift, Event, Exposure, LiftQuery, RuleSet, ShopIndex};

const RULES: &str = "shop: bench-shop
benefits:
  - id: coupon-10
    kind: coupon
    holdout: 10%
  - id: points
    kind: points
";

fn build(visitors: u32) -> ShopIndex {
    let shop = ShopIndex::new("bench-shop");
    let mut rng = SplitMix64::new(0x6c69_6674);
    let start = NOW_MS - 14 * DAY_MS;
    for v in 0..visitors {
        let visitor = format!("v{v:07}");
        let out = held_out("bench-shop", "coupon-10", &visitor, 1_000);
        let held: &[(Slot, &str)] = if out { &[(Slot::Benefit, "coupon-10")] } else { &[] };
        let mut first = i64::MAX;
        for _ in 0..1 + rng.below(3) {
            let ts = start + rng.below(14 * DAY_MS as u64) as i64;
            first = first.min(ts);
            shop.apply_exposure(&Exposure {
                ts_ms: ts,
                visitor: &visitor,
                banner: None,
                benefit: Some(if out { "points" } else { "coupon-10" }),
                held_out: held,
            });
        }
        if rng.below(100) < if out { 8 } else { 11 } {
            let event = Event::validate(Fields {
                shop: Some("bench-shop".into()),
                visitor: Some(visitor.clone().into()),
                action: Some("purchase".into()),
                item: Some("sku".into()),
                price: Some(20.0 + rng.below(200) as f64),
                ts: Some(first + rng.below(7 * DAY_MS as u64) as i64),
                ..Fields::default()
            });
            if let Ok(event) = event {
                shop.apply(&event);
            }
        }
    }
    shop
}

fn main() {
    let rules = RuleSet::load(RULES).unwrap_or_else(|e| panic!("bench rules: {e}"));
    let visitors = run_visitors();
    let t = Instant::now();
    let shop = build(visitors);
    println!(
        "{visitors} exposed visitors built in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let week = Window {
        amount: 7,
        unit: Unit::Days,
    };
    let all = LiftQuery {
        id: Some("coupon-10"),
        window: week,
        from_ms: 0,
        to_ms: 0,
    };
    let last_week = LiftQuery {
        from_ms: NOW_MS - 7 * DAY_MS,
        to_ms: NOW_MS,
        ..all
    };
    for (name, q) in [("all", &all), ("last_week", &last_week)] {
        let t = Instant::now();
        let rows = lift(&rules, Some(&shop), q).unwrap_or_else(|e| panic!("lift: {e}"));
        println!("lift {name} in {:.1} ms: {rows:?}", t.elapsed().as_secs_f64() * 1e3);
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut group = c.benchmark_group("lift");
    group.bench_function("one_entry_all_exposures", |b| {
        b.iter(|| lift(&rules, Some(&shop), &all))
    });
    group.bench_function("one_entry_last_7_days", |b| {
        b.iter(|| lift(&rules, Some(&shop), &last_week))
    });
    group.finish();
    c.final_summary();
}
