//! The event log: throughput and latency of `EventLog::append` + `wait`
//! (what `Ingest/Track` does in embedded mode) with calls of 10 events, at 1
//! and 8 concurrent appenders, every call `fdatasync`'d before it returns.
//!
//! Events are purchase-shaped (every field set, the largest records) or
//! views, 1 in 10 purchases, written to a log in the system temp directory
//! (`VITRINE_BENCH_DIR` overrides; put it on the disk you mean to measure).
//! Each appender runs for `VITRINE_BENCH_SECONDS` (3 by default). Printed per
//! concurrency: events/s, latency percentiles of one append + wait, and
//! records per `fdatasync`; then the time to reopen the log (replay every
//! event through the decoder).
//!
//! `cargo bench -p vitrine --bench event_log`

use std::borrow::Cow;
use std::time::{Duration, Instant};

use vitrine::storage::event_log::{EventLog, DEFAULT_SEGMENT_BYTES};
use vitrine_benches::{Percentiles, NOW_MS, SHOP};
use vitrine_core::{Action, Event};

mod disk;
use disk::{dir_bytes, drive, fresh_dir, or_die, seconds};

/// Events per append call.
const PER_CALL: usize = 10;

/// The `i`th event of a visitor: a purchase 1 time in 10, else a view.
fn event<'a>(visitor: &'a str, items: &'a [String], i: usize) -> Event<'a> {
    let purchase = i % 10 == 9;
    let action = if purchase { Action::Purchase } else { Action::View };
    Event {
        item: Some(Cow::Borrowed(&items[i % items.len()])),
        category: Some(Cow::Borrowed("cat-7")),
        price: if purchase { 129.0 } else { 0.0 },
        quantity: if purchase { 2 } else { 1 },
        id: purchase.then(|| Cow::Owned(format!("order-{visitor}-{i}"))),
        ..Event::new(SHOP, visitor, action, NOW_MS + i as i64)
    }
}

/// `appenders` threads appending for `run`; returns (calls, elapsed, latencies).
fn append_for(log: &EventLog, appenders: usize, run: Duration) -> (usize, Duration, Vec<u64>) {
    let items: Vec<String> = (0..100).map(|i| format!("sku-{i}")).collect();
    let visitors: Vec<Vec<String>> = (0..appenders)
        .map(|t| (0..1000).map(|v| format!("visitor-{t}-{v}")).collect())
        .collect();
    drive(
        appenders,
        run,
        |t| (&visitors[t], Vec::with_capacity(PER_CALL)),
        |(visitors, batch), call| {
            let call = call as usize;
            let visitor = &visitors[call % visitors.len()];
            batch.clear();
            batch.extend((0..PER_CALL).map(|k| event(visitor, &items, call * PER_CALL + k)));
            let t0 = Instant::now();
            let lsn = or_die(log.append(batch), "append");
            or_die(log.wait(lsn), "wait");
            t0.elapsed().as_nanos() as u64
        },
    )
}

fn main() {
    let dir = fresh_dir("event-log-bench");
    let run = seconds();
    println!("event log in {}: append of {PER_CALL} events + wait", dir.display());
    for appenders in [1, 8] {
        let log_dir = dir.join(format!("a{appenders}"));
        let (log, _) = or_die(
            EventLog::open(&log_dir, 0, DEFAULT_SEGMENT_BYTES, |_, _| {}),
            "open the log",
        );
        let (calls, elapsed, mut lat) = append_for(&log, appenders, run);
        let stats = log.stats();
        let Some(p) = Percentiles::of(&mut lat) else {
            continue;
        };
        println!(
            "{appenders} appender(s): {:>8.0} events/s ({:.0} calls/s); {:.1} records per fdatasync ({} batches, {:.1} bytes/event); latency {p}",
            (calls * PER_CALL) as f64 / elapsed.as_secs_f64(),
            calls as f64 / elapsed.as_secs_f64(),
            stats.records as f64 / stats.batches.max(1) as f64,
            stats.batches,
            stats.bytes as f64 / stats.records.max(1) as f64,
        );
        drop(log);
        let t = Instant::now();
        let mut replayed = 0u64;
        let (reopened, recovery) = or_die(
            EventLog::open(&log_dir, 0, DEFAULT_SEGMENT_BYTES, |_, e| {
                replayed += u64::from(e.action == Action::Purchase) + 1;
            }),
            "reopen the log",
        );
        let replay = t.elapsed();
        assert_eq!(recovery.records, (calls * PER_CALL) as u64);
        assert!(replayed >= recovery.records);
        println!(
            "    reopen: {} events ({} segments, {:.1} MiB) replayed in {:.3} s ({:.0} events/s)",
            recovery.records,
            recovery.segments,
            dir_bytes(reopened.dir()) as f64 / (1024.0 * 1024.0),
            replay.as_secs_f64(),
            recovery.records as f64 / replay.as_secs_f64().max(1e-9),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
