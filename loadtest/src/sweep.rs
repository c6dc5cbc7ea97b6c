//! `vitrine-loadtest sweep`: the decide phase of `run` at increasing rates,
//! to find the highest rate at which Decide's p99 stays under a limit
//! (1 ms by default) with no errors.
//!
//! Each step is a full open-loop phase (warm-up discarded, latency from the
//! intended send time), so a rate the server cannot sustain shows up as a
//! p99 that grows with the step's duration rather than as a lower achieved
//! rate with flattering percentiles. On a shared machine one stall can fail
//! a 10 s step, so a failure is confirmed before it counts: the step is run
//! again, up to `--attempts` runs in all, and fails only when most of those
//! runs fail (every run is printed and kept in the JSON). The sweep stops
//! at the first failing step unless asked to keep going, and never goes
//! past `--max`.

use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Value};

use crate::report::{round2, Summary};
use crate::run::{Load, LoadConfig, Target};

/// Settings of `sweep`.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Shared settings.
    pub load: LoadConfig,
    /// First rate, requests per second.
    pub start: u64,
    /// Increment between steps.
    pub step: u64,
    /// Last rate tried at most.
    pub max: u64,
    /// Measured duration of each step.
    pub duration: Duration,
    /// A step passes when Decide's p99 is below this, in µs, and nothing failed.
    pub p99_limit_us: u64,
    /// Also measure the Health/Check baseline at each rate.
    pub baseline: bool,
    /// Go on after a failing step.
    pub keep_going: bool,
    /// Runs of a failing step, at most, before it counts as failed (odd, >= 1).
    pub attempts: usize,
    /// Quiet time between steps.
    pub pause: Duration,
    /// Write the lines to stderr (stdout gets the JSON).
    pub json: bool,
}

/// One run at one rate.
#[derive(Debug, Clone)]
pub struct Step {
    /// Target requests per second.
    pub rate: u64,
    /// What Decide did.
    pub decide: Summary,
    /// What the baseline did, if measured.
    pub baseline: Option<Summary>,
    /// p99 under the limit and no errors.
    pub passed: bool,
}

impl Step {
    /// The line printed for this step.
    pub fn line(&self, limit_us: u64) -> String {
        let d = &self.decide;
        let mut line = format!(
            "rate {:>6}/s  achieved {:>9.1}/s  decide p50 {:>6} p90 {:>6} p99 {:>7} p99.9 {:>7} max {:>8} µs  errors {}",
            self.rate,
            d.achieved_rps,
            d.p50_us,
            d.p90_us,
            d.p99_us,
            d.p999_us,
            d.max_us,
            d.errors_text()
        );
        if let Some(b) = &self.baseline {
            line.push_str(&format!(
                "  | baseline p50 {} p99 {} µs errors {}",
                b.p50_us,
                b.p99_us,
                b.errors_text()
            ));
        }
        line.push_str(
            if self.passed {
                "  ok".into()
            } else {
                format!("  FAIL (p99 >= {limit_us} µs or errors)")
            }
            .as_str(),
        );
        line
    }
}

/// The verdict on a rate from its runs so far (`passed[i]`: run i passed),
/// or `None` while more runs are needed. A first run that passes settles
/// it; after a failure the rate passes when most of `attempts` runs pass.
pub fn verdict(passed: &[bool], attempts: usize) -> Option<bool> {
    let (&first, _) = passed.split_first()?;
    if first {
        return Some(true);
    }
    let need = attempts / 2 + 1;
    let passes = passed.iter().filter(|p| **p).count();
    let fails = passed.len() - passes;
    if passes >= need {
        Some(true)
    } else if fails > attempts.saturating_sub(need) {
        Some(false)
    } else {
        None
    }
}

/// Whether a run's Decide summary passes.
pub fn passes(decide: &Summary, limit_us: u64) -> bool {
    decide.ok > 0 && decide.p99_us < limit_us && decide.errors_total() == 0
}

/// The rates of a sweep: `start, start + step, ..` up to `max`.
pub fn rates(start: u64, step: u64, max: u64) -> anyhow::Result<Vec<u64>> {
    if start == 0 || step == 0 || max < start {
        bail!("need --start >= 1, --step >= 1 and --max >= --start");
    }
    let steps = (max - start) / step + 1;
    if steps > 1000 {
        bail!("{steps} steps: raise --step");
    }
    Ok((0..steps).map(|i| start + i * step).collect())
}

/// Runs the sweep, printing one line per rate; returns the JSON report.
pub async fn sweep(config: SweepConfig) -> anyhow::Result<Value> {
    let rates = rates(config.start, config.step, config.max)?;
    if config.duration.is_zero() {
        bail!("--duration must be positive");
    }
    if config.attempts.is_multiple_of(2) {
        bail!("--attempts must be odd (1, 3, 5, ..), so that most runs decide");
    }
    let limit = config.p99_limit_us;
    let json = config.json;
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let load = Load::connect(config.load.clone()).await?;
    say(format!(
        "sweep: open-loop Decide at {}..={} req/s step {}, {:?} per step after a {:?} warm-up; \
         pass = p99 < {limit} µs and no errors",
        config.start,
        rates.last().copied().unwrap_or(config.start),
        config.step,
        config.duration,
        load.config().warmup
    ));
    // Per rate: its runs and the verdict.
    let mut results: Vec<(Vec<Step>, bool)> = Vec::new();
    let mut first = true;
    for &rate in &rates {
        let mut runs: Vec<Step> = Vec::new();
        let passed = loop {
            if !first && !config.pause.is_zero() {
                tokio::time::sleep(config.pause).await;
            }
            first = false;
            let step = measure(&load, &config, rate).await?;
            let mut line = step.line(limit);
            if !runs.is_empty() || !step.passed {
                line.push_str(&format!("  [run {} of at most {}]", runs.len() + 1, config.attempts));
            }
            say(line);
            runs.push(step);
            let outcomes: Vec<bool> = runs.iter().map(|r| r.passed).collect();
            if let Some(v) = verdict(&outcomes, config.attempts) {
                break v;
            }
        };
        if runs.len() > 1 {
            say(format!(
                "rate {rate:>6}/s  {} ({} of {} runs passed)",
                if passed { "passes" } else { "fails" },
                runs.iter().filter(|r| r.passed).count(),
                runs.len()
            ));
        }
        results.push((runs, passed));
        if !passed && !config.keep_going {
            break;
        }
    }
    let verdicts: Vec<(u64, bool)> = results
        .iter()
        .filter_map(|(runs, passed)| runs.first().map(|r| (r.rate, *passed)))
        .collect();
    let best = highest_passing(&verdicts);
    match best {
        Some(rate) => say(format!(
            "highest rate with decide p99 < {limit} µs and no errors: {rate} req/s"
        )),
        None => say(format!("no rate tried kept decide p99 < {limit} µs with no errors")),
    }
    let run_json = |s: &Step| {
        json!({
            "passed": s.passed,
            "decide": s.decide.to_json(),
            "baseline": s.baseline.as_ref().map(Summary::to_json),
            "achieved_ratio": if s.rate > 0 { round2(s.decide.achieved_rps / s.rate as f64) } else { 0.0 },
        })
    };
    Ok(json!({
        "p99_limit_us": limit,
        "attempts": config.attempts,
        "highest_passing_rps": best,
        "steps": results.iter().filter_map(|(runs, passed)| runs.first().map(|r| json!({
            "rate": r.rate,
            "passed": passed,
            "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
        }))).collect::<Vec<_>>(),
    }))
}

/// One run at `rate`: the baseline phase if asked for, then Decide.
async fn measure(load: &Load, config: &SweepConfig, rate: u64) -> anyhow::Result<Step> {
    let phase = |name: &'static str, target: Target, background: bool| async move {
        let report = load
            .phase(
                &format!("{name} {rate}/s"),
                rate as f64,
                config.duration,
                &[target],
                background,
            )
            .await?;
        anyhow::Ok(report.summaries.into_iter().next())
    };
    let baseline = if config.baseline {
        phase("baseline", Target::Health, false).await?
    } else {
        None
    };
    let decide = phase("decide", Target::Decide, true).await?.unwrap_or_default();
    let passed = passes(&decide, config.p99_limit_us);
    Ok(Step {
        rate,
        decide,
        baseline,
        passed,
    })
}

/// The highest rate that passed, below the first rate that failed
/// (`(rate, passed)` in sweep order).
///
/// A rate that passes only after a lower one failed is noise, not capacity.
pub fn highest_passing(verdicts: &[(u64, bool)]) -> Option<u64> {
    verdicts
        .iter()
        .take_while(|(_, passed)| *passed)
        .map(|(rate, _)| *rate)
        .last()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn summary(p99_us: u64, errors: u64) -> Summary {
        let mut e = BTreeMap::new();
        if errors > 0 {
            e.insert("Unavailable".to_string(), errors);
        }
        Summary {
            ok: 100,
            p99_us,
            errors: e,
            ..Summary::default()
        }
    }

    #[test]
    fn rate_steps() {
        assert_eq!(rates(1000, 1000, 5000).unwrap(), vec![1000, 2000, 3000, 4000, 5000]);
        assert_eq!(rates(1000, 3000, 5000).unwrap(), vec![1000, 4000]);
        assert_eq!(rates(7, 1, 7).unwrap(), vec![7]);
        assert!(rates(0, 1, 5).is_err());
        assert!(rates(1, 0, 5).is_err());
        assert!(rates(10, 1, 5).is_err());
        assert!(rates(1, 1, 1_000_000).is_err());
    }

    #[test]
    fn pass_and_highest() {
        assert!(passes(&summary(999, 0), 1000));
        assert!(!passes(&summary(1000, 0), 1000));
        assert!(!passes(&summary(10, 1), 1000));
        assert!(!passes(&Summary::default(), 1000));
        let step = |rate, passed| Step {
            rate,
            decide: Summary::default(),
            baseline: None,
            passed,
        };
        assert_eq!(highest_passing(&[(1, true), (2, true), (3, false), (4, true)]), Some(2));
        assert_eq!(highest_passing(&[(1, false), (2, true)]), None);
        assert_eq!(highest_passing(&[]), None);
        assert!(step(5, false).line(1000).ends_with("FAIL (p99 >= 1000 µs or errors)"));
    }

    #[test]
    fn a_failure_counts_only_when_most_runs_fail() {
        // One run: its result.
        assert_eq!(verdict(&[true], 1), Some(true));
        assert_eq!(verdict(&[false], 1), Some(false));
        // Three runs at most: a pass settles it, a failure asks for more.
        assert_eq!(verdict(&[], 3), None);
        assert_eq!(verdict(&[true], 3), Some(true));
        assert_eq!(verdict(&[false], 3), None);
        assert_eq!(verdict(&[false, false], 3), Some(false));
        assert_eq!(verdict(&[false, true], 3), None);
        assert_eq!(verdict(&[false, true, true], 3), Some(true));
        assert_eq!(verdict(&[false, true, false], 3), Some(false));
        // Five: three passes needed after a failure.
        assert_eq!(verdict(&[false, true, true], 5), None);
        assert_eq!(verdict(&[false, true, true, true], 5), Some(true));
        assert_eq!(verdict(&[false, false, true, false], 5), Some(false));
    }
}
