//! What metrics cost a decision: the Decide RPC's synchronous part
//! (request checked, decision made, response built) with its metrics recorded
//! through a real Prometheus recorder, against the same work with metrics off.
//!
//! Both engines hold the same dataset (100,000 visitors by default;
//! `VITRINE_BENCH_VISITORS` overrides) and the 20-audience rule set. Besides
//! criterion's means, rounds of 20,000 calls alternate off/on so that machine
//! noise hits both alike; the report is the ratio of the medians.
//!
//! `cargo bench -p vitrine --bench decide_metrics`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use vitrine::engine::Engine;
use vitrine::grpc::{decide, decide_measured};
use vitrine::metrics::{self, Metrics};
use vitrine::store::{Origin, RuleStore};
use vitrine_benches::{Dataset, NOW_MS, RULES_20};
use vitrine_proto::v1 as pb;

const ROUNDS: usize = 15;
const CALLS_PER_ROUND: usize = 20_000;

fn engine(dataset: &Dataset, metrics: Metrics, name: &str) -> Engine {
    let dir = std::env::temp_dir().join(format!("vitrine-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = RuleStore::new(&dir.join("rules"), &dir.join("data"));
    if let Err(e) = store.push(RULES_20, Origin::Push, false, NOW_MS) {
        panic!("bench rules: {e}");
    }
    let engine = Engine::new(store, metrics);
    for event in dataset.events() {
        engine.index.apply(&event);
    }
    let _ = std::fs::remove_dir_all(&dir);
    engine
}

fn requests(dataset: &Dataset) -> Vec<pb::DecideRequest> {
    dataset
        .requests(1 << 14, 7, false)
        .iter()
        .map(|spec| {
            let r = dataset.request(spec, false);
            pb::DecideRequest {
                shop: vitrine_benches::SHOP.to_string(),
                visitor: r.visitor.to_string(),
                context: Some(pb::Context {
                    page: r.context.page.to_string(),
                    item: r.context.item.to_string(),
                    region: r.context.region.to_string(),
                    ..pb::Context::default()
                }),
                item_limit: 0,
                explain: false,
                now_ms: NOW_MS,
            }
        })
        .collect()
}

/// Nanoseconds per call over one round.
fn round(reqs: &[pb::DecideRequest], start: usize, f: &impl Fn(&pb::DecideRequest)) -> f64 {
    let t = Instant::now();
    for i in 0..CALLS_PER_ROUND {
        f(&reqs[(start + i) % reqs.len()]);
    }
    t.elapsed().as_nanos() as f64 / CALLS_PER_ROUND as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let visitors = vitrine_benches::run_visitors().min(100_000);
    let dataset = Dataset::generate(visitors);
    // Handles made before the recorder is installed are no-ops: metrics off.
    let off = engine(&dataset, Metrics::new(), "off");
    if let Err(e) = metrics::install() {
        panic!("installing the recorder: {e}");
    }
    let on = engine(&dataset, Metrics::new(), "on");
    let reqs = requests(&dataset);

    let run_off = |r: &pb::DecideRequest| {
        let _ = black_box(decide(&off, black_box(r)));
    };
    let run_on = |r: &pb::DecideRequest| {
        let _ = black_box(decide_measured(&on, black_box(r)));
    };
    let rounds = if vitrine_benches::benchmarking() { ROUNDS } else { 1 };
    let (mut t_off, mut t_on) = (Vec::new(), Vec::new());
    round(&reqs, 0, &run_off);
    round(&reqs, 0, &run_on);
    for r in 0..rounds {
        t_off.push(round(&reqs, r * 977, &run_off));
        t_on.push(round(&reqs, r * 977, &run_on));
    }
    let (m_off, m_on) = (median(t_off), median(t_on));
    println!(
        "decide handler, {visitors} visitors: metrics off {m_off:.0} ns, on {m_on:.0} ns per call (medians of {rounds} alternating rounds of {CALLS_PER_ROUND}); on/off = {:.3}",
        m_on / m_off
    );

    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = c.benchmark_group("decide_handler");
    group.bench_function("metrics_off", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            run_off(&reqs[i % reqs.len()])
        })
    });
    group.bench_function("metrics_on", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            run_on(&reqs[i % reqs.len()])
        })
    });
    group.finish();
    c.final_summary();
}
