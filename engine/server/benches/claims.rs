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
use std::path::Path;
use std::time::{Duration, Instant};

use vitrine::storage::claims_journal::DurableLedger;
use vitrine_benches::{benchmarking, Percentiles};
use vitrine_core::{ClaimLedger, ClaimOutcome, LedgerClaim};

mod disk;
use disk::{dir_bytes, drive, fresh_dir, or_die, seconds};

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

/// `claimers` threads claiming for `run`; returns (claims, elapsed, latencies).
fn claim_for(ledger: &DurableLedger, claimers: usize, run: Duration) -> (usize, Duration, Vec<u64>) {
    drive(
        claimers,
        run,
        |t| t,
        |&mut t, i| {
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
            let ns = t0.elapsed().as_nanos() as u64;
            assert!(matches!(outcome, Ok(ClaimOutcome::Granted)), "{outcome:?}");
            ns
        },
    )
}

fn main() {
    let dir = fresh_dir("claims-bench");
    let run = seconds();
    if let Some(p) = raw_fdatasync(&dir) {
        println!("raw 100-byte append + fdatasync on {}: {p}", dir.display());
    }
    let mut total_records = 0;
    for claimers in [1, 4, 16] {
        let ledger_dir = dir.join(format!("c{claimers}"));
        let ledger = or_die(DurableLedger::open(&ledger_dir), "open the journal");
        let (claims, elapsed, mut lat) = claim_for(&ledger, claimers, run);
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
