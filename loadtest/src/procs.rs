//! `run --procs N`: N load-generator processes against one server, their
//! histograms merged into one report.
//!
//! One process's client (tonic, h2, tokio) spends more CPU per call than
//! the server does, so one generator runs out of CPU before the server
//! does; several processes (on other cores than the server's, e.g. under
//! `taskset -c 1-3`) measure the server's own limit. The key design choice:
//! each process is this same binary with the same arguments, told its part
//! by the environment (`VITRINE_LOADTEST_PART=i/N`): it sends 1/N of the
//! rate on its own connections with its own random stream of requests, and
//! prints its raw outcomes (HDR histogram counts, requests, errors; see
//! [`crate::report::Recorder::to_part`]) as one JSON line. The parent adds
//! the histograms up, so percentiles are of all calls, not averages of
//! per-process percentiles.
//!
//! Background load (`--events-rate`, `--push-every`) is refused with
//! `--procs`: N processes would each send it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::report::{Recorder, RunReport};
use crate::run::{self, RunConfig};

/// The environment variable that makes a process one part of `--procs`.
pub const PART_ENV: &str = "VITRINE_LOADTEST_PART";

/// The most processes `--procs` starts.
pub const MAX_PROCS: usize = 64;

/// This process's part, `(i, n)` from `VITRINE_LOADTEST_PART=i/N`, if set.
pub fn part_from_env() -> anyhow::Result<Option<(usize, usize)>> {
    let Ok(text) = std::env::var(PART_ENV) else {
        return Ok(None);
    };
    parse_part(&text).map(Some)
}

fn parse_part(text: &str) -> anyhow::Result<(usize, usize)> {
    let parsed = text
        .split_once('/')
        .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)));
    match parsed {
        Some((i, n)) if (1..=MAX_PROCS).contains(&n) && i < n => Ok((i, n)),
        _ => bail!("{PART_ENV}=`{text}`: expected I/N with 0 <= I < N <= {MAX_PROCS}"),
    }
}

/// Refuses what `--procs` cannot split.
pub fn check(config: &RunConfig, procs: usize) -> anyhow::Result<()> {
    if !(1..=MAX_PROCS).contains(&procs) {
        bail!("--procs must be between 1 and {MAX_PROCS}");
    }
    if procs > 1 && (config.load.events_rate > 0.0 || config.load.push_every.is_some()) {
        bail!("--events-rate and --push-every cannot be combined with --procs (each process would send them)");
    }
    Ok(())
}

/// One part's run: 1/N of the rate, its own request stream; the JSON line
/// the parent reads.
pub async fn run_part(mut config: RunConfig, (i, n): (usize, usize)) -> anyhow::Result<Value> {
    config.rate /= n as f64;
    config.load.progress = false;
    let (report, [baseline, decide]) = run::run_recorded(config, i as u64 + 1).await?;
    Ok(json!({
        "part": i,
        "baseline": baseline.to_part(),
        "decide": decide.to_part(),
        "pacer_max_lag_us": report.pacer_max_lag.as_micros() as u64,
    }))
}

/// Starts `procs` copies of this process with the same arguments, waits
/// for them (each run is bounded by its own phases and timeouts) and merges
/// what they recorded. Blocking.
pub fn run_procs(config: &RunConfig, procs: usize) -> anyhow::Result<RunReport> {
    let exe = std::env::current_exe().context("finding this program to start its parts")?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let mut children = Vec::with_capacity(procs);
    for i in 0..procs {
        let child = Command::new(&exe)
            .args(&args)
            .env(PART_ENV, format!("{i}/{procs}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting part {i} of {procs}"))?;
        children.push(child);
    }
    let start = Instant::now();
    let (mut baseline, mut decide) = (Recorder::new(), Recorder::new());
    let mut lag = Duration::ZERO;
    let mut failed = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for part {i}"))?;
        if !out.status.success() {
            failed.push(format!("part {i}: {}", out.status));
            continue;
        }
        let part: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("part {i} printed no result (its errors are above)"))?;
        let recorder = |key: &str| {
            part.get(key)
                .and_then(|p| Recorder::from_part(p, start))
                .with_context(|| format!("part {i}: no `{key}` outcomes in its result"))
        };
        baseline.merge(&recorder("baseline")?);
        decide.merge(&recorder("decide")?);
        let part_lag = part.get("pacer_max_lag_us").and_then(Value::as_u64).unwrap_or(0);
        lag = lag.max(Duration::from_micros(part_lag));
    }
    if !failed.is_empty() {
        bail!("{} of {procs} parts failed: {}", failed.len(), failed.join("; "));
    }
    let c = &config.load;
    Ok(RunReport {
        addr: c.addr.clone(),
        mode: config.mode.name(),
        rate: config.rate,
        duration: config.duration,
        warmup: c.warmup,
        connections: c.connections.max(1) * procs,
        decide: decide.summary(),
        baseline: baseline.summary(),
        background: None,
        pacer_max_lag: lag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_parse_within_bounds() {
        assert_eq!(parse_part("0/1").unwrap(), (0, 1));
        assert_eq!(parse_part("2/3").unwrap(), (2, 3));
        for bad in ["3/3", "0/0", "1", "a/2", "0/65", "-1/2", ""] {
            assert!(parse_part(bad).is_err(), "{bad}");
        }
    }

    /// A part's outcomes survive the trip through JSON: the merged
    /// percentiles are those of all calls.
    #[test]
    fn recorders_merge_across_the_json_line() {
        let t0 = Instant::now();
        let (mut a, mut b) = (Recorder::new(), Recorder::new());
        for us in 1..=900u64 {
            a.record(t0, t0 + Duration::from_micros(us), Ok(()));
        }
        for us in 0..100u64 {
            b.record(t0, t0 + Duration::from_micros(10_000 + us), Ok(()));
        }
        b.record(t0, t0, Err("ResourceExhausted"));
        let mut merged = Recorder::new();
        for r in [&a, &b] {
            let line = serde_json::to_string(&r.to_part()).unwrap();
            let back = Recorder::from_part(&serde_json::from_str(&line).unwrap(), t0).unwrap();
            merged.merge(&back);
        }
        let mut direct = a.clone();
        direct.merge(&b);
        let (m, d) = (merged.summary(), direct.summary());
        assert_eq!(
            (m.requests, m.ok, m.p50_us, m.p99_us, m.max_us),
            (1001, 1000, d.p50_us, d.p99_us, d.max_us)
        );
        assert!(
            m.p99_us >= 10_000,
            "the slow part's tail is in the merged p99: {}",
            m.p99_us
        );
        assert_eq!(m.errors.get("ResourceExhausted"), Some(&1));
        assert!(Recorder::from_part(&json!({"counts": 1}), t0).is_none());
    }
}
