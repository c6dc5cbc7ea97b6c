//! `vitrine-loadtest sweep`: the decide phase of `run` at increasing rates,
//! to find the highest rate at which Decide's p99 stays under a limit
//! (1 ms by default) with no errors.
//!
//! Each step is a full open-loop phase (warm-up discarded, latency from the
//! intended send time), so a rate the server cannot sustain shows up as a
//! p99 that grows with the step's duration rather than as a lower achieved
//! rate with flattering percentiles. The sweep stops at the first failing
//! step unless asked to keep going, and never goes past `--max`.

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
    /// Quiet time between steps.
    pub pause: Duration,
    /// Write the lines to stderr (stdout gets the JSON).
    pub json: bool,
}

/// One rate of the sweep.
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

/// Whether a step's Decide summary passes.
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
    let limit = config.p99_limit_us;
    let json = config.json;
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let load = Load::connect(config.load).await?;
    say(format!(
        "sweep: open-loop Decide at {}..={} req/s step {}, {:?} per step after a {:?} warm-up; \
         pass = p99 < {limit} µs and no errors",
        config.start,
        rates.last().copied().unwrap_or(config.start),
        config.step,
        config.duration,
        load.config().warmup
    ));
    let mut steps: Vec<Step> = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        if i > 0 && !config.pause.is_zero() {
            tokio::time::sleep(config.pause).await;
        }
        let baseline = if config.baseline {
            let b = load
                .phase(
                    &format!("baseline {rate}/s"),
                    rate as f64,
                    config.duration,
                    &[Target::Health],
                    false,
                )
                .await?;
            b.summaries.into_iter().next()
        } else {
            None
        };
        let d = load
            .phase(
                &format!("decide {rate}/s"),
                rate as f64,
                config.duration,
                &[Target::Decide],
                true,
            )
            .await?;
        let decide = d.summaries.into_iter().next().unwrap_or_default();
        let passed = passes(&decide, limit);
        let step = Step {
            rate,
            decide,
            baseline,
            passed,
        };
        say(step.line(limit));
        steps.push(step);
        if !passed && !config.keep_going {
            break;
        }
    }
    let best = highest_passing(&steps);
    match best {
        Some(rate) => say(format!(
            "highest rate with decide p99 < {limit} µs and no errors: {rate} req/s"
        )),
        None => say(format!("no rate tried kept decide p99 < {limit} µs with no errors")),
    }
    Ok(json!({
        "p99_limit_us": limit,
        "highest_passing_rps": best,
        "steps": steps.iter().map(|s| json!({
            "rate": s.rate,
            "passed": s.passed,
            "decide": s.decide.to_json(),
            "baseline": s.baseline.as_ref().map(Summary::to_json),
            "achieved_ratio": if s.rate > 0 { round2(s.decide.achieved_rps / s.rate as f64) } else { 0.0 },
        })).collect::<Vec<_>>(),
    }))
}

/// The highest rate among the steps that passed, below the first failure.
///
/// A rate that passes only after a lower one failed is noise, not capacity.
pub fn highest_passing(steps: &[Step]) -> Option<u64> {
    steps.iter().take_while(|s| s.passed).map(|s| s.rate).last()
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
        assert_eq!(
            highest_passing(&[step(1, true), step(2, true), step(3, false), step(4, true)]),
            Some(2)
        );
        assert_eq!(highest_passing(&[step(1, false), step(2, true)]), None);
        assert_eq!(highest_passing(&[]), None);
        assert!(step(5, false).line(1000).ends_with("FAIL (p99 >= 1000 µs or errors)"));
    }
}
