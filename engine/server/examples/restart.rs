//! Measures durability's costs (issue 5); reports, asserts nothing.
//!
//! Builds the benches' synthetic shop history (`--visitors`, 1,000,000 by
//! default: about 10 events per visitor over 30 days, which make 3.3M
//! (visitor, action, day) entries since a visitor's events cluster in
//! sessions), adds `--extra-days` (8) views per visitor on distinct days of
//! the 30 (to reach the issue's 10M day entries), writes it as a
//! snapshot into a fresh `--data-dir` the way the server does (timing the
//! encode and the write: temp file, fsync, rename), then `--rounds` times
//! starts the real binary on that data directory and times spawn -> the
//! first `/readyz` answering 200 (snapshot load and journal replay happen
//! before the listeners open, so that is restart-to-ready), and kills it
//! with SIGKILL (so the next round loads the same snapshot).
//!
//! ```sh
//! cargo build --release -p vitrine --bin vitrine
//! cargo run --release -p vitrine --example restart -- --rounds 3
//! ```
//!
//! `--bin PATH` names the binary (default `target/release/vitrine`),
//! `--dir PATH` where the data directory goes (default: the system temp dir).
//! `--keep` leaves the data directory in place and prints its path;
//! `--reuse PATH` skips building and writing and restarts on the root a
//! `--keep` run left (for A/B runs of two binaries on the same snapshot).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vitrine::storage::snapshots::{Position, SnapshotDir};
use vitrine_benches::{Dataset, DAY_MS, ITEMS, NOW_MS, SHOP};
use vitrine_core::event::Fields;
use vitrine_core::{Event, Index};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET /readyz; true on 200.
fn ready(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut visitors = 1_000_000u32;
    let mut rounds = 3usize;
    let mut extra_days = 8u32;
    let mut bin = PathBuf::from("target/release/vitrine");
    let mut base = std::env::temp_dir();
    let mut keep = false;
    let mut reuse: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--visitors" => visitors = value().parse().unwrap(),
            "--rounds" => rounds = value().parse().unwrap(),
            "--extra-days" => extra_days = value().parse().unwrap(),
            "--bin" => bin = value().into(),
            "--dir" => base = value().into(),
            "--keep" => keep = true,
            "--reuse" => reuse = Some(value().into()),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        bin.exists(),
        "{} does not exist: cargo build --release -p vitrine --bin vitrine",
        bin.display()
    );

    let (root, size, writes) = match reuse {
        Some(root) => {
            let size = std::fs::read_dir(root.join("data/snapshots"))
                .unwrap()
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0);
            (root, size, vec![0.0])
        }
        None => build(visitors, extra_days, &base),
    };
    let (data, rules) = (root.join("data"), root.join("rules"));
    let mut times = Vec::new();
    for round in 1..=rounds {
        let (grpc, metrics) = (free_port(), free_port());
        let started = Instant::now();
        let mut child = Command::new(&bin)
            .args(["serve", "--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .arg("--data-dir")
            .arg(&data)
            .arg("--rules-dir")
            .arg(&rules)
            .env("VITRINE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        while !ready(metrics) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the server exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let secs = started.elapsed().as_secs_f64();
        let rss = rss_kib(child.id());
        println!(
            "round {round}: spawn -> /readyz 200 in {secs:.3} s, RSS {:.0} MB",
            rss as f64 / 1024.0
        );
        times.push(secs);
        child.kill().unwrap();
        child.wait().unwrap();
    }
    println!(
        "summary: snapshot {:.1} MiB, write median {:.3} s; restart-to-ready median {:.3} s of {rounds} (target <= 5 s)",
        size as f64 / (1 << 20) as f64,
        median(writes),
        median(times)
    );
    if keep {
        println!("kept {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// The server's resident set in KiB (0 where /proc does not say).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Builds the index, writes it three times as a snapshot into a fresh data
/// directory under `base`; returns the root, the snapshot's bytes and the
/// write times.
fn build(visitors: u32, extra_days: u32, base: &std::path::Path) -> (PathBuf, u64, Vec<f64>) {
    let t = Instant::now();
    let dataset = Dataset::generate(visitors);
    let index = Index::new();
    for event in dataset.events() {
        index.apply(&event);
    }
    let mut events = dataset.len() as u64;
    for v in 0..visitors {
        let visitor = format!("v-{v}");
        for j in 0..extra_days.min(30) {
            // Distinct days per visitor: a visitor-dependent start, stepping by 1.
            let day = i64::from((v.wrapping_mul(7) + j) % 30);
            let item = format!("sku-{}", (v.wrapping_mul(31).wrapping_add(j * 17)) % ITEMS);
            let event = Event::validate(Fields {
                shop: Some(SHOP.into()),
                visitor: Some(visitor.as_str().into()),
                action: Some("view".into()),
                item: Some(item.as_str().into()),
                ts: Some(NOW_MS - day * DAY_MS - 3_600_000),
                ..Fields::default()
            })
            .unwrap();
            index.apply(&event);
            events += 1;
        }
    }
    let stats = index.shop(SHOP).unwrap().stats();
    println!(
        "index: {} visitors, {} events, {} (visitor, action, day) entries, {} profile entries; built in {:.1} s",
        stats.visitors,
        events,
        stats.day_entries,
        stats.profile_entries,
        t.elapsed().as_secs_f64()
    );
    drop(dataset);

    let root = base.join(format!("vitrine-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (data, rules) = (root.join("data"), root.join("rules"));
    std::fs::create_dir_all(&rules).unwrap();
    let snapshots = SnapshotDir::open(&data, 3).unwrap();
    let position = Position {
        created_ms: 0,
        ..Position::default()
    };
    let mut writes = Vec::new();
    let mut size = 0;
    for _ in 0..3 {
        let w = snapshots.write(&index, &position).unwrap();
        println!(
            "snapshot write: encode {:.3} s + write/fsync/rename {:.3} s, {:.1} MiB",
            w.encode.as_secs_f64(),
            w.write.as_secs_f64(),
            w.bytes as f64 / (1 << 20) as f64
        );
        writes.push((w.encode + w.write).as_secs_f64());
        size = w.bytes;
    }
    drop(index);
    (root, size, writes)
}
