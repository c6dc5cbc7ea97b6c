//! Times loading one snapshot file: the read, then [`snapshot::decode`]
//! (header, checksum, every section decoded and every bitmap rebuilt),
//! `--runs` times (3); prints each run and the median. For A/B runs of the
//! decoder on a file the restart example left (`--keep`), without
//! rebuilding the dataset. `--write OUT` then writes the decoded index
//! again, in this build's format version, to `OUT`.
//!
//! ```sh
//! cargo run --release -p vitrine-benches --example snapshot_load -- FILE [--runs N] [--write OUT]
//! ```

use std::time::Instant;

use vitrine_core::snapshot;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut runs = 3usize;
    let mut write = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "--write" => write = args.next(),
            other => file = Some(other.to_string()),
        }
    }
    let Some(file) = file else {
        eprintln!("usage: snapshot_load FILE [--runs N] [--write OUT]");
        std::process::exit(2);
    };
    let mut times = Vec::with_capacity(runs);
    for run in 1..=runs {
        let t = Instant::now();
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("{file}: {e}");
                std::process::exit(1);
            }
        };
        let read = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let loaded = match snapshot::decode(&bytes) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{file}: {e}");
                std::process::exit(1);
            }
        };
        let decode = t.elapsed().as_secs_f64();
        let visitors: u64 = loaded.index.shops().iter().map(|s| s.stats().visitors).sum();
        println!(
            "run {run}: read {read:.3} s, decode {decode:.3} s ({} bytes, {visitors} visitors), RSS {} MB",
            bytes.len(),
            rss_kib() / 1024
        );
        times.push(decode);
        if let Some(out) = write.as_deref().filter(|_| run == runs) {
            let t = Instant::now();
            let bytes = snapshot::encode(&loaded.index, &loaded.meta);
            let encode = t.elapsed().as_secs_f64();
            if let Err(e) = std::fs::write(out, &bytes) {
                eprintln!("{out}: {e}");
                std::process::exit(1);
            }
            println!("wrote {out}: {} bytes, encode {encode:.3} s", bytes.len());
        }
        drop(loaded);
    }
    times.sort_by(f64::total_cmp);
    println!("decode median {:.3} s of {runs}", times[times.len() / 2]);
}

/// This process's resident set in KiB (0 where /proc does not say).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
