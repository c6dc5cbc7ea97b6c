//! Event apply throughput on one thread.
//!
//! Pre-generates 2,000,000 events (about 200,000 visitors, in event-time
//! order, `VITRINE_BENCH_EVENTS` overrides the count) into a `Vec<Event>`,
//! then, timed with `Instant`, applies them all to a fresh `ShopIndex` (three
//! runs) and applies the same events again to the filled index (the
//! idempotent duplicate path), printing events/s. Criterion then measures
//! 100,000 events into a fresh index and the same 100,000 re-applied.
//!
//! `cargo bench -p vitrine-benches --bench apply`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput};
use vitrine_benches::{benchmarking, secs, Dataset, SHOP};
use vitrine_core::{Event, ShopIndex};

const DEFAULT_EVENTS: usize = 2_000_000;
const CRITERION_EVENTS: usize = 100_000;

fn events_from_env() -> usize {
    if !benchmarking() {
        return 50_000;
    }
    match std::env::var("VITRINE_BENCH_EVENTS") {
        Ok(text) => match text.replace('_', "").trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("VITRINE_BENCH_EVENTS must be a positive whole number, found `{text}`"),
        },
        Err(_) => DEFAULT_EVENTS,
    }
}

fn apply_all(index: &ShopIndex, events: &[Event<'_>]) {
    for event in events {
        index.apply(black_box(event));
    }
}

/// Applies `events` to `index`, returning events per second.
fn timed(index: &ShopIndex, events: &[Event<'_>]) -> f64 {
    let t = Instant::now();
    apply_all(index, events);
    events.len() as f64 / secs(t)
}

fn main() {
    let wanted = events_from_env();
    let t = Instant::now();
    let dataset = Dataset::generate((wanted / 10).max(1) as u32 + 1);
    let events: Vec<Event<'_>> = dataset.events().take(wanted).collect();
    eprintln!(
        "{} events of {} visitors ({}) ready in {:.2} s",
        events.len(),
        dataset.visitor_count(),
        dataset.mix(),
        secs(t)
    );

    let mut fresh = Vec::new();
    let mut index = ShopIndex::new(SHOP);
    for run in 1..=3 {
        index = ShopIndex::new(SHOP);
        let rate = timed(&index, &events);
        println!(
            "apply run {run}: {} events into a fresh index: {rate:.0} events/s",
            events.len()
        );
        fresh.push(rate);
    }
    fresh.sort_by(f64::total_cmp);
    let stats = index.stats();
    println!(
        "apply into a fresh index: median {:.0} events/s ({:.0} ns/event); index: {} visitors, {} day entries, {} profile entries",
        fresh[fresh.len() / 2],
        1e9 / fresh[fresh.len() / 2],
        stats.visitors,
        stats.day_entries,
        stats.profile_entries
    );
    let rate = timed(&index, &events);
    assert_eq!(index.stats(), stats, "re-applying duplicates must change nothing");
    println!(
        "re-apply the same {} events (duplicates, idempotent path): {rate:.0} events/s ({:.0} ns/event)",
        events.len(),
        1e9 / rate
    );
    drop(index);

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let slice = &events[..CRITERION_EVENTS.min(events.len())];
    let mut group = c.benchmark_group("apply");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(slice.len() as u64));
    group.bench_function(format!("fresh_index_{}", slice.len()), |b| {
        b.iter_batched(
            || ShopIndex::new(SHOP),
            |index| {
                apply_all(&index, slice);
                index
            },
            BatchSize::PerIteration,
        )
    });
    let filled = ShopIndex::new(SHOP);
    apply_all(&filled, slice);
    group.bench_function(format!("reapply_duplicates_{}", slice.len()), |b| {
        b.iter(|| apply_all(&filled, slice))
    });
    group.finish();
    c.final_summary();
}
