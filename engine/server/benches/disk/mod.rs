//! What the disk benches (`claims`, `event_log`) share: their settings, the
//! scratch directory, and N threads timing one operation each in a loop.

use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Duration;

use vitrine_benches::benchmarking;

/// The value, or a panic naming what failed (benches stop on any error).
pub fn or_die<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// How long each thread runs: `VITRINE_BENCH_SECONDS` (3 by default) when
/// benchmarking, 200 ms as a test.
pub fn seconds() -> Duration {
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

/// A fresh scratch directory `vitrine-{name}-{pid}` in `VITRINE_BENCH_DIR`,
/// or in the system temp directory.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::var_os("VITRINE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("vitrine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    or_die(std::fs::create_dir_all(&dir), "create the bench directory");
    dir
}

/// The bytes of the files in `dir` (a journal's segments).
pub fn dir_bytes(dir: &Path) -> u64 {
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

/// `threads` threads, started together, each calling `op(&mut state, i)`
/// for i = 0, 1, ... until `run` is over, with `state = setup(thread)`;
/// `op` returns the latency it measured, in ns. Returns (calls, elapsed,
/// every latency).
pub fn drive<S>(
    threads: usize,
    run: Duration,
    setup: impl Fn(usize) -> S + Sync,
    op: impl Fn(&mut S, u64) -> u64 + Sync,
) -> (usize, Duration, Vec<u64>) {
    let barrier = Barrier::new(threads + 1);
    let (lat, elapsed) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, setup, op) = (&barrier, &setup, &op);
                s.spawn(move || {
                    let mut state = setup(t);
                    let mut lat = Vec::with_capacity(1 << 16);
                    barrier.wait();
                    let start = std::time::Instant::now();
                    let mut i = 0u64;
                    while start.elapsed() < run {
                        lat.push(op(&mut state, i));
                        i += 1;
                    }
                    lat
                })
            })
            .collect();
        barrier.wait();
        let start = std::time::Instant::now();
        let lat: Vec<Vec<u64>> = handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(lat) => lat,
                Err(_) => panic!("a bench thread panicked"),
            })
            .collect();
        (lat, start.elapsed())
    });
    let lat: Vec<u64> = lat.into_iter().flatten().collect();
    (lat.len(), elapsed, lat)
}
