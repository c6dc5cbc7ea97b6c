//! A fixed number of decisions over the bench shop, for instruction counts:
//! `decide_calls KIND CALLS` with KIND one of `known`, `explain`, `active`,
//! `heavy` (the heaviest 1% of events' visitors), `anonymous` (`VITRINE_BENCH_VISITORS`, default 20,000 here, sets the
//! shop's size). Under callgrind, count only the decisions:
//!
//! ```text
//! cargo build --release -p vitrine-benches --example decide_calls
//! VITRINE_BENCH_VISITORS=5000 valgrind --tool=callgrind \
//!   --toggle-collect='vitrine_core::eval::decide::decide' \
//!   target/release/examples/decide_calls known 5000
//! ```
//!
//! and divide the instructions collected by CALLS: a count that other
//! processes on the machine do not disturb, where timings would. (Under
//! valgrind, 20,000 visitors ran out of its heap on this machine.)

use std::hint::black_box;

use vitrine_benches::{Fixture, RequestSpec};
use vitrine_core::{decide, MemoryLedger};

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "known".to_string());
    let calls: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let visitors = match std::env::var_os("VITRINE_BENCH_VISITORS") {
        Some(_) => vitrine_benches::visitors_from_env(),
        None => 20_000,
    };
    let fx = Fixture::with_visitors(visitors);
    let ledger = MemoryLedger::new();
    let (specs, explain): (Vec<RequestSpec>, bool) = match kind.as_str() {
        "known" => (fx.dataset.requests(calls, 1, false), false),
        "explain" => (fx.dataset.requests(calls, 2, false), true),
        "active" => (fx.dataset.active_requests(calls, 3), false),
        "heavy" => (fx.dataset.heavy_requests(calls, 5), false),
        "anonymous" => (fx.dataset.requests(calls, 4, true), false),
        other => {
            eprintln!("unknown kind `{other}`: known, explain, active, heavy or anonymous");
            std::process::exit(2);
        }
    };
    let mut items = 0;
    for spec in &specs {
        let req = fx.dataset.request(spec, explain);
        items += black_box(decide(&fx.rules, Some(&fx.index), &ledger, black_box(&req)))
            .items
            .len();
    }
    println!("{kind}: {calls} decisions, {items} items");
}
