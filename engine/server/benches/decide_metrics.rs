//! What metrics cost a decision: the Decide RPC's synchronous part
//! (request checked, decision made, response built) with its metrics recorded
//! through the real Prometheus recorder (`decide_measured`), against the same
//! work on the same engine with nothing recorded (`decide` under the same
//! panic guard).
//!
//! `decide_measured` also counts the shop's chosen entries
//! (`vitrine_decisions_by_entry_total`), timed alone at the end.
//!
//! The engine holds 100,000 visitors by default (`VITRINE_BENCH_VISITORS`
//! overrides, up to 100,000) and the 20-audience rule set. Besides
//! criterion's means, 31 rounds of 20,000 calls alternate off/on (and which
//! of the two goes first) so that machine noise hits both alike; between rounds the exporter's upkeep runs, as the
//! server runs it every `--rules-poll`. The report is the ratio of the medians.
//!
//! `cargo bench -p vitrine --bench decide_metrics`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use vitrine::api::grpc::{decide, decide_measured, guarded, record_decision};
use vitrine::metrics::{self, Metrics};
use vitrine::rules_store::{Origin, RuleStore};
use vitrine::state::Engine;
use vitrine_benches::{Dataset, NOW_MS, RULES_20};
use vitrine_proto::v1 as pb;

const ROUNDS: usize = 31;
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
    let handle = match metrics::install() {
        Ok(h) => h,
        Err(e) => panic!("installing the recorder: {e}"),
    };
    let engine = engine(&dataset, Metrics::new(), "metrics");
    let reqs = requests(&dataset);

    let run_off = |r: &pb::DecideRequest| {
        let _ = black_box(guarded("Decide", || decide(&engine, black_box(r))));
    };
    let run_on = |r: &pb::DecideRequest| {
        let _ = black_box(decide_measured(&engine, black_box(r)));
    };
    let rounds = if vitrine_benches::benchmarking() { ROUNDS } else { 1 };
    let (mut t_off, mut t_on) = (Vec::new(), Vec::new());
    round(&reqs, 0, &run_off);
    round(&reqs, 0, &run_on);
    for r in 0..rounds {
        // Alternate which goes first, so neither always runs on warm caches.
        if r % 2 == 0 {
            t_off.push(round(&reqs, r * 977, &run_off));
            t_on.push(round(&reqs, r * 977, &run_on));
        } else {
            t_on.push(round(&reqs, r * 977, &run_on));
            t_off.push(round(&reqs, r * 977, &run_off));
        }
        handle.run_upkeep();
    }
    let (m_off, m_on) = (median(t_off), median(t_on));
    println!(
        "decide handler, {visitors} visitors: metrics off {m_off:.0} ns, on {m_on:.0} ns per call (medians of {rounds} alternating rounds of {CALLS_PER_ROUND}); on/off = {:.3}",
        m_on / m_off
    );
    // The recording alone (clock reads, three counters, the histogram), timed
    // over many calls: its share of a decision is what metrics cost.
    let responses: Vec<pb::DecideResponse> = reqs.iter().take(64).filter_map(|r| decide(&engine, r).ok()).collect();
    let calls = 1_000_000;
    let t = Instant::now();
    for i in 0..calls {
        let start = Instant::now();
        record_decision(&engine.metrics, start, black_box(&responses[i % responses.len()]));
    }
    let record_ns = t.elapsed().as_nanos() as f64 / calls as f64;
    println!(
        "recording one decision's metrics: {record_ns:.0} ns = {:.1}% of a {m_off:.0} ns decision (on/off = {:.3})",
        100.0 * record_ns / m_off,
        (m_off + record_ns) / m_off
    );
    // The per-shop, per-entry counters alone (issue 16): the cached
    // handles' lookup and two atomic adds.
    let served = match engine.rules.serving(vitrine_benches::SHOP) {
        Some(s) => s,
        None => panic!("the bench shop has no rules"),
    };
    let t = Instant::now();
    for i in 0..calls {
        let banner = (i % 2 == 0).then_some(0);
        (engine.metrics.shops).decided(
            vitrine_benches::SHOP,
            served.revision,
            &served.rules,
            black_box(banner),
            None,
        );
    }
    let entry_ns = t.elapsed().as_nanos() as f64 / calls as f64;
    println!(
        "recording one decision's shop and entry counters: {entry_ns:.0} ns = {:.1}% of a {m_off:.0} ns decision",
        100.0 * entry_ns / m_off
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
