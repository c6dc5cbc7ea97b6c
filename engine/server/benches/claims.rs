//! Durable claims: throughput and latency of `DurableLedger::claim` with the
//! journal fsync'd before every answer, at 1, 4 and 16 concurrent claimers.
//!
//! Every claim is a grant of one shared, budgeted benefit (the worst case:
//! each claim writes a record, and all claimers contend for one benefit's
//! lock) with a `claim_id`, to a journal in the system temp directory
//! (`VITRINE_BENCH_DIR` overrides; put it on the disk you mean to measure).
//! Each claimer runs for `VITRINE_BENCH_SECONDS` (3 by default). Printed per
//! concurrency: claims/s, latency percentiles of one `claim()` call, and
//! records per `fdatasync` (how much group commit batched). For scale, the
//! bench first times a lone 100-byte append + `fdatasync` on the same disk,
//! and at the end the reopen (replay) of the journal it wrote.
//!
//! `cargo bench -p vitrine --bench claims`

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use vitrine::journal::DurableLedger;
use vitrine_benches::{benchmarking, Percentiles};
use vitrine_core::{ClaimLedger, ClaimOutcome, LedgerClaim};

/// The value, or a panic naming what failed (benches stop on any error).
fn or_die<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn seconds() -> Duration {
    if !benchmarking() {
        return Duration::from_millis(200);
    }
    let secs = std::env::var("VITRINE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

fn base_dir() -> PathBuf {
    std::env::var_os("VITRINE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("vitrine-claims-bench-{}", std::process::id()))
}

/// Latency of one small append + fdatasync on the bench's disk.
fn raw_fdatasync(dir: &Path) -> Option<Percentiles> {
    let path = dir.join("fsync-probe");
    let mut file = OpenOptions::new().create(true).append(true).open(&path).ok()?;
    let mut samples = Vec::new();
    for _ in 0..if benchmarking() { 300 } else { 20 } {
        let t = Instant::now();
        file.write_all(&[7; 100]).ok()?;
        file.sync_data().ok()?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let _ = std::fs::remove_file(&path);
    Percentiles::of(&mut samples)
}

/// The bytes of the files in `dir` (the journal's segments).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `claimers` threads claiming for `run`; returns (claims, elapsed, latencies).
fn drive(ledger: &DurableLedger, claimers: usize, run: Duration) -> (usize, Duration, Vec<u64>) {
    let barrier = Barrier::new(claimers + 1);
    let (lat, elapsed) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..claimers)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(1 << 16);
                    barrier.wait();
                    let start = Instant::now();
                    let mut i = 0u64;
                    while start.elapsed() < run {
                        let visitor = format!("visitor-{t}-{i}");
                        let claim_id = format!("order-{t}-{i}");
                        let claim = LedgerClaim {
                            shop: "bench-shop",
                            benefit: "singles-day-early",
                            visitor: &visitor,
                            now_ms: 1_795_176_000_000 + i as i64,
                            claim_id: Some(&claim_id),
                            cap: Some((1, 30 * 86_400_000)),
                            budget: Some(u64::MAX),
                            denied: None,
                        };
                        let t0 = Instant::now();
                        let outcome = ledger.claim(&claim);
                        lat.push(t0.elapsed().as_nanos() as u64);
                        assert!(matches!(outcome, Ok(ClaimOutcome::Granted)), "{outcome:?}");
                        i += 1;
                    }
                    lat
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let lat: Vec<Vec<u64>> = handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(lat) => lat,
                Err(_) => panic!("a claimer panicked"),
            })
            .collect();
        (lat, start.elapsed())
    });
    let lat: Vec<u64> = lat.into_iter().flatten().collect();
    (lat.len(), elapsed, lat)
}

fn main() {
    let dir = base_dir();
    let _ = std::fs::remove_dir_all(&dir);
    or_die(std::fs::create_dir_all(&dir), "create the bench directory");
    let run = seconds();
    if let Some(p) = raw_fdatasync(&dir) {
        println!("raw 100-byte append + fdatasync on {}: {p}", dir.display());
    }
    let mut total_records = 0;
    for claimers in [1, 4, 16] {
        let ledger_dir = dir.join(format!("c{claimers}"));
        let ledger = or_die(DurableLedger::open(&ledger_dir), "open the journal");
        let (claims, elapsed, mut lat) = drive(&ledger, claimers, run);
        let stats = ledger.stats();
        total_records += stats.records;
        let Some(p) = Percentiles::of(&mut lat) else {
            continue;
        };
        println!(
            "{claimers:>2} claimers: {:>8.0} claims/s; {:.2} records per fdatasync ({} batches); latency {p}",
            claims as f64 / elapsed.as_secs_f64(),
            stats.records as f64 / stats.batches.max(1) as f64,
            stats.batches,
        );
        drop(ledger);
        let t = Instant::now();
        let reopened = or_die(DurableLedger::open(&ledger_dir), "reopen the journal");
        let replay = t.elapsed();
        let r = reopened.recovery();
        assert_eq!(r.grants, claims as u64);
        assert_eq!(
            reopened.usage("bench-shop", "singles-day-early", "", None).total,
            claims as u64
        );
        println!(
            "    reopen: {} records ({} batches, {:.1} MiB) replayed in {:.3} s",
            r.records,
            r.batches,
            dir_bytes(reopened.path()) as f64 / (1024.0 * 1024.0),
            replay.as_secs_f64()
        );
    }
    println!("{total_records} records written in all");
    let _ = std::fs::remove_dir_all(&dir);
}
