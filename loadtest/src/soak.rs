//! `vitrine-loadtest soak`: a long mixed load (Decide, Track, Claim on one
//! open-loop schedule, and a Rules/Push every so often) while the server's
//! resident memory is sampled, to show that nothing leaks and nothing fails.
//!
//! The calls go through the same pacer and dispatch loop as `run`
//! ([`Load::drive`]); each tick picks its kind by the `--mix` weights. Every
//! `--sample-every` one line is printed with what the window did (calls and
//! failures per kind, failures per gRPC code, Decide p50/p99, RSS); at the
//! end a summary compares the RSS at the first sample after `--warmup` with
//! the RSS at the end. The soak fails (exit code 3) when any call failed —
//! shed calls (RESOURCE_EXHAUSTED) included, though reported apart — or when
//! RSS grew by more than `--max-rss-growth` percent.
//!
//! A push takes the shop's serving file (Rules/Get) and toggles its first
//! banner id (`x` <-> `x-soak`), so every push is a real change of a real
//! file and the shop keeps its audiences, benefits and size. The server
//! writes pushed files into its `--rules-dir`: soak a server whose rules
//! directory is a copy (`vitrine serve --demo` in a checkout would edit the
//! repository's `rules/`).
//!
//! RSS comes from `/proc/PID/status` (`VmRSS`) with `--pid`, else from
//! `process_resident_memory_bytes` on the server's `/metrics`
//! (`--metrics-addr`). Every loop ends: the schedule has a fixed count, the
//! sampler and the pusher stop with it, and every call has a timeout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use vitrine_proto::v1 as pb;

use crate::dataset::{stream_rng, visitor_id_padded, EventGenerator};
use crate::pacer::Schedule;
use crate::report::{code_name, Recorder, Summary, TIMEOUT};
use crate::run::{lock, Load, LoadConfig, Sinks};

/// The kinds of scheduled call, in the order of `--mix` and of the sinks.
pub const KINDS: [&str; 3] = ["decide", "track", "claim"];
const DECIDE: usize = 0;
const TRACK: usize = 1;
const CLAIM: usize = 2;
/// The code name of a shed call.
pub const SHED: &str = "ResourceExhausted";
/// The exit code of a soak that ran but failed its criteria.
pub const EXIT_FAILED: i32 = 3;
/// The longest `/metrics` answer read.
const MAX_METRICS_BYTES: u64 = 16 << 20;

/// Where the server's resident memory is read.
#[derive(Debug, Clone)]
pub enum RssSource {
    /// `/proc/PID/status`, `VmRSS`.
    Pid(u32),
    /// `process_resident_memory_bytes` from `http://ADDR/metrics`.
    Metrics(String),
}

/// Settings of `soak`.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Connections, dataset, timeout, in-flight cap, admin token.
    pub load: LoadConfig,
    /// The shops to load (they must exist on the server).
    pub shops: Vec<String>,
    /// Scheduled calls per second, all kinds together.
    pub rate: f64,
    /// Weights of Decide, Track and Claim.
    pub mix: [u32; 3],
    /// How long the schedule runs.
    pub duration: Duration,
    /// RSS is compared from the first sample after this.
    pub warmup: Duration,
    /// One line per this much time.
    pub sample_every: Duration,
    /// A Rules/Push this often (none when zero or absent).
    pub push_every: Option<Duration>,
    /// Where RSS is read.
    pub rss: RssSource,
    /// The largest RSS growth after warm-up that passes, percent.
    pub max_rss_growth: f64,
}

/// One RSS reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RssSample {
    /// Since the schedule started.
    pub elapsed: Duration,
    /// Resident bytes.
    pub bytes: u64,
}

/// What the pushes did.
#[derive(Debug, Clone, Default)]
pub struct PushStats {
    /// Pushes tried.
    pub calls: u64,
    /// Failed ones (the Get or the Push) by code name.
    pub errors: BTreeMap<String, u64>,
}

/// The outcome of a soak.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// Per kind ([`KINDS`]), the whole run.
    pub totals: Vec<Summary>,
    /// The pushes.
    pub pushes: PushStats,
    /// Every RSS reading, the last one after the drain.
    pub samples: Vec<RssSample>,
    /// The warm-up asked.
    pub warmup: Duration,
    /// The growth limit, percent.
    pub max_rss_growth: f64,
}

impl SoakReport {
    /// Failed calls of every kind and failed pushes, shed calls included.
    pub fn errors(&self) -> u64 {
        self.totals.iter().map(Summary::errors_total).sum::<u64>() + self.pushes.errors.values().sum::<u64>()
    }

    /// Of [`Self::errors`], the shed calls.
    pub fn shed(&self) -> u64 {
        self.totals.iter().filter_map(|s| s.errors.get(SHED)).sum::<u64>()
            + self.pushes.errors.get(SHED).copied().unwrap_or(0)
    }

    /// The first reading at or after the warm-up (else the last one).
    pub fn rss_after_warmup(&self) -> Option<RssSample> {
        self.samples
            .iter()
            .find(|s| s.elapsed >= self.warmup)
            .or(self.samples.last())
            .copied()
    }

    /// The last reading.
    pub fn rss_at_end(&self) -> Option<RssSample> {
        self.samples.last().copied()
    }

    /// `(end - after warm-up) / after warm-up`, percent.
    pub fn rss_growth(&self) -> Option<f64> {
        let (a, b) = (self.rss_after_warmup()?, self.rss_at_end()?);
        (a.bytes > 0).then(|| (b.bytes as f64 - a.bytes as f64) * 100.0 / a.bytes as f64)
    }

    /// Why the soak failed; empty when it passed.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.errors() > 0 {
            out.push(format!("{} errors ({} shed)", self.errors(), self.shed()));
        }
        match self.rss_growth() {
            Some(g) if g > self.max_rss_growth => out.push(format!("RSS grew {g:.1}% > {}%", self.max_rss_growth)),
            Some(_) => {}
            None => out.push("no RSS reading".into()),
        }
        out
    }

    /// The summary for people.
    pub fn text(&self) -> String {
        let mut out = String::from("soak summary\n");
        let calls: Vec<String> = KINDS
            .iter()
            .zip(&self.totals)
            .map(|(k, s)| format!("{k}={}", s.requests))
            .chain(std::iter::once(format!("push={}", self.pushes.calls)))
            .collect();
        let _ = writeln!(out, "  calls:  {}", calls.join(" "));
        let per_kind: Vec<String> = KINDS
            .iter()
            .zip(&self.totals)
            .map(|(k, s)| format!("{k}={}", s.errors_total()))
            .chain(std::iter::once(format!(
                "push={}",
                self.pushes.errors.values().sum::<u64>()
            )))
            .collect();
        let _ = writeln!(
            out,
            "  errors: {} (shed {}); by kind {}; by code {}",
            self.errors(),
            self.shed(),
            per_kind.join(" "),
            codes_text(&self.totals, &self.pushes)
        );
        if let Some(d) = self.totals.first() {
            let _ = writeln!(
                out,
                "  decide: p50 {} us, p99 {} us, p99.9 {} us, max {} us",
                d.p50_us, d.p99_us, d.p999_us, d.max_us
            );
        }
        match (self.rss_after_warmup(), self.rss_at_end(), self.rss_growth()) {
            (Some(a), Some(b), Some(g)) => {
                let _ = writeln!(
                    out,
                    "  rss:    {} after warm-up (at {}), {} at end (at {}), growth {g:+.2}% (limit {}%)",
                    mib(a.bytes),
                    secs(a.elapsed),
                    mib(b.bytes),
                    secs(b.elapsed),
                    self.max_rss_growth
                );
            }
            _ => out.push_str("  rss:    no reading\n"),
        }
        let failures = self.failures();
        if failures.is_empty() {
            out.push_str("  result: PASS\n");
        } else {
            let _ = writeln!(out, "  result: FAIL: {}", failures.join("; "));
        }
        out
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// Failures of all kinds by code name, `Code=n ...` or `none`.
fn codes_text(kinds: &[Summary], pushes: &PushStats) -> String {
    let mut all = Summary::default();
    for s in kinds {
        for (k, v) in &s.errors {
            *all.errors.entry(k.clone()).or_default() += v;
        }
    }
    for (k, v) in &pushes.errors {
        *all.errors.entry(k.clone()).or_default() += v;
    }
    all.errors_text()
}

/// The benefit ids of a rule file: the `- id:` entries of its top-level
/// `benefits:` section.
pub fn benefit_ids(content: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut inside = false;
    for line in content.lines() {
        let top_level = !line.is_empty() && !line.starts_with([' ', '\t', '#', '-']);
        if top_level {
            inside = line.trim_end() == "benefits:";
            continue;
        }
        if let Some(id) = line.trim().strip_prefix("- id:").filter(|_| inside) {
            let id = id.split('#').next().unwrap_or("").trim().trim_matches(['"', '\'']);
            if !id.is_empty() {
                ids.push(id.to_string());
            }
        }
    }
    ids
}

/// `content` with its first banner id toggled between `x` and `x-soak`;
/// `None` when it names no banner.
pub fn toggle_banner(content: &str) -> Option<String> {
    let mut out = String::with_capacity(content.len() + 8);
    let mut done = false;
    for line in content.split_inclusive('\n') {
        if !done {
            let body = line.trim_start().trim_start_matches("- ").trim_start();
            if let Some(rest) = body.strip_prefix("banner:") {
                let id = rest.split_whitespace().next().unwrap_or("");
                if !id.is_empty() && !id.starts_with('#') {
                    let at = line.len() - rest.len() + (rest.len() - rest.trim_start().len());
                    let toggled = match id.strip_suffix("-soak") {
                        Some(original) => original.to_string(),
                        None => format!("{id}-soak"),
                    };
                    out.push_str(&line[..at]);
                    out.push_str(&toggled);
                    out.push_str(&line[at + id.len()..]);
                    done = true;
                    continue;
                }
            }
        }
        out.push_str(line);
    }
    done.then_some(out)
}

/// The resident bytes of the server.
pub async fn read_rss(source: &RssSource) -> anyhow::Result<u64> {
    match source {
        RssSource::Pid(pid) => {
            let path = format!("/proc/{pid}/status");
            let status = tokio::fs::read_to_string(&path)
                .await
                .with_context(|| format!("reading {path}"))?;
            let kb = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .with_context(|| format!("no VmRSS in {path}"))?;
            Ok(kb.saturating_mul(1024))
        }
        RssSource::Metrics(addr) => {
            let fetch = async {
                let mut stream = tokio::net::TcpStream::connect(addr.as_str()).await?;
                stream
                    .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
                    .await?;
                let mut body = Vec::new();
                stream.take(MAX_METRICS_BYTES).read_to_end(&mut body).await?;
                Ok::<_, std::io::Error>(body)
            };
            let body = tokio::time::timeout(Duration::from_secs(5), fetch)
                .await
                .map_err(|_| anyhow::anyhow!("http://{addr}/metrics did not answer within 5s"))?
                .with_context(|| format!("fetching http://{addr}/metrics"))?;
            String::from_utf8_lossy(&body)
                .lines()
                .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v as u64)
                .with_context(|| {
                    format!(
                        "http://{addr}/metrics has no process_resident_memory_bytes: \
                         give the server's --pid instead"
                    )
                })
        }
    }
}

/// Samples of one window, printed as one line.
fn window_line(elapsed: Duration, window: &[Summary], pushes: &PushStats, rss: Option<u64>) -> String {
    let calls: Vec<String> = KINDS
        .iter()
        .zip(window)
        .map(|(k, s)| format!("{k}={}", s.requests))
        .collect();
    let errors: Vec<String> = KINDS
        .iter()
        .zip(window)
        .map(|(k, s)| format!("{k}={}", s.errors_total()))
        .collect();
    let shed: u64 = window.iter().filter_map(|s| s.errors.get(SHED)).sum();
    let d = &window[DECIDE];
    format!(
        "[{:>6}] calls {} push={} | errors {} push={} | codes {} | shed {shed} | decide p50 {} us p99 {} us | rss {}",
        secs(elapsed),
        calls.join(" "),
        pushes.calls,
        errors.join(" "),
        pushes.errors.values().sum::<u64>(),
        codes_text(window, pushes),
        d.p50_us,
        d.p99_us,
        rss.map_or("n/a".into(), mib)
    )
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `vitrine-loadtest soak`. Prints one line per sample on stdout and
/// returns the report (printed by the caller).
pub async fn soak(config: SoakConfig) -> anyhow::Result<SoakReport> {
    soak_with(config, |line| println!("{line}")).await
}

/// [`soak`], each sample line given to `out`.
pub async fn soak_with(config: SoakConfig, mut out: impl FnMut(&str) + Send + 'static) -> anyhow::Result<SoakReport> {
    if !config.rate.is_finite() || config.rate <= 0.0 || config.duration.is_zero() {
        bail!("--rate and --duration must be positive");
    }
    if config.sample_every.is_zero() {
        bail!("--sample-every must be positive");
    }
    let weight: u64 = config.mix.iter().map(|&w| u64::from(w)).sum();
    if weight == 0 {
        bail!("--mix needs a positive weight");
    }
    let count = (config.rate * config.duration.as_secs_f64()).round() as u64;
    if count > 10_000_000_000 {
        bail!("{count} calls is more than this tool is meant for; lower --rate or --duration");
    }
    // Fails early, before any load, when RSS cannot be read.
    read_rss(&config.rss).await?;
    let mut load_config = config.load.clone();
    load_config.warmup = Duration::ZERO;
    let load = Arc::new(Load::connect_to(load_config, config.shops.clone()).await?);

    // The shops' files: their benefits (for Claim).
    let auth = load.config().auth.clone();
    let mut rules = load.rules_client();
    let mut claimable: Vec<(String, Vec<String>)> = Vec::new();
    for shop in load.shops() {
        let got = rules
            .get(auth.request(pb::GetRequest {
                shop: shop.clone(),
                revision: 0,
            }))
            .await
            .with_context(|| format!("Rules/Get of shop `{shop}`"))?;
        let ids = benefit_ids(&got.get_ref().content);
        if !ids.is_empty() {
            claimable.push((shop.clone(), ids));
        }
    }
    if config.mix[CLAIM] > 0 && claimable.is_empty() {
        bail!("no shop's rule file has benefits to claim: set the claim share of --mix to 0");
    }

    let sinks = Sinks::new(KINDS.len());
    let schedule = Schedule {
        start: Instant::now() + Duration::from_millis(20),
        rate: config.rate,
        count,
    };
    let pushes = Arc::new(Mutex::new(PushStats::default()));
    let (stop_tx, stop_rx) = watch::channel(false);

    // The pusher.
    let pusher = config.push_every.filter(|d| !d.is_zero()).map(|every| {
        let (shops, pushes, mut stop) = (load.shops().to_vec(), pushes.clone(), stop_rx.clone());
        let (mut rules, auth, timeout) = (
            load.rules_client(),
            auth.clone(),
            load.config().timeout.max(Duration::from_secs(30)),
        );
        tokio::spawn(async move {
            let mut next = schedule.start + every;
            let mut i = 0usize;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = stop.changed() => break,
                }
                next += every;
                let shop = &shops[i % shops.len()];
                i += 1;
                let outcome = tokio::time::timeout(timeout, async {
                    let got = rules
                        .get(auth.request(pb::GetRequest {
                            shop: shop.clone(),
                            revision: 0,
                        }))
                        .await?;
                    let content = toggle_banner(&got.get_ref().content).ok_or_else(|| {
                        tonic::Status::failed_precondition(format!("shop `{shop}`'s file names no banner"))
                    })?;
                    rules
                        .push(auth.request(pb::PushRequest {
                            content,
                            dry_run: false,
                            expected_revision: 0,
                        }))
                        .await
                })
                .await;
                let mut p = lock(&pushes);
                p.calls += 1;
                let failed = match outcome {
                    Ok(Ok(_)) => None,
                    Ok(Err(s)) => Some(code_name(s.code())),
                    Err(_) => Some(TIMEOUT),
                };
                if let Some(name) = failed {
                    *p.errors.entry(name.to_string()).or_default() += 1;
                }
            }
        })
    });

    // The sampler: one line per window; the totals and RSS readings.
    let sampler = {
        let (sinks, pushes, rss, every, mut stop) = (
            sinks.clone(),
            pushes.clone(),
            config.rss.clone(),
            config.sample_every,
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            let mut totals: Vec<Recorder> = KINDS.iter().map(|_| Recorder::new()).collect();
            let mut samples = Vec::new();
            let mut pushes_seen = PushStats::default();
            let mut next = schedule.start + every;
            let mut last = false;
            while !last {
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = stop.changed() => last = true,
                }
                next += every;
                let window: Vec<Recorder> = (0..KINDS.len())
                    .map(|i| if last { sinks.finish(i) } else { sinks.take(i) })
                    .collect();
                for (t, w) in totals.iter_mut().zip(&window) {
                    t.merge(w);
                }
                let summaries: Vec<Summary> = window.iter().map(Recorder::summary).collect();
                let now_pushes = lock(&pushes).clone();
                let delta = PushStats {
                    calls: now_pushes.calls - pushes_seen.calls,
                    errors: now_pushes
                        .errors
                        .iter()
                        .map(|(k, v)| (k.clone(), v - pushes_seen.errors.get(k).copied().unwrap_or(0)))
                        .filter(|(_, v)| *v > 0)
                        .collect(),
                };
                pushes_seen = now_pushes;
                let elapsed = Instant::now().saturating_duration_since(schedule.start);
                let bytes = read_rss(&rss).await.ok();
                if let Some(bytes) = bytes {
                    samples.push(RssSample { elapsed, bytes });
                }
                out(&window_line(elapsed, &summaries, &delta, bytes));
            }
            (totals, samples)
        })
    };

    // The schedule.
    let mut pick_rng = stream_rng(config.load.dataset.seed, u64::MAX - 3, 0);
    let mut call_rng = stream_rng(config.load.dataset.seed, u64::MAX - 4, 0);
    let generator = EventGenerator::new(load.catalog().clone(), 30, 0);
    let (mix, visitors, connections) = (config.mix, load.config().visitors, load.connections() as u64);
    let (seed, digits) = (config.load.dataset.seed, load.config().visitor_digits.min(20));
    let driven = load
        .drive(
            "soak",
            schedule,
            0,
            &sinks,
            |_| {
                let mut r = pick_rng.below(weight);
                for (i, &w) in mix.iter().enumerate() {
                    if r < u64::from(w) {
                        return i;
                    }
                    r -= u64::from(w);
                }
                DECIDE
            },
            |which, tick| {
                let conn = (tick.seq % connections) as usize;
                let shops = load.shops();
                match which {
                    TRACK => {
                        let mut event = generator.live(&mut call_rng, 1, visitors, unix_ms());
                        event.shop = shops[call_rng.index(shops.len())].clone();
                        event.visitor = visitor_id_padded(call_rng.below(visitors), digits);
                        load.track_call(conn, pb::TrackRequest { events: vec![event] })
                    }
                    CLAIM if !claimable.is_empty() => {
                        let (shop, ids) = &claimable[call_rng.index(claimable.len())];
                        load.claim_call(
                            conn,
                            pb::ClaimRequest {
                                shop: shop.clone(),
                                visitor: visitor_id_padded(call_rng.below(visitors), digits),
                                benefit_id: ids[call_rng.index(ids.len())].clone(),
                                now_ms: 0,
                                claim_id: format!("soak-{seed}-{}", tick.seq),
                                context: None,
                            },
                        )
                    }
                    _ => load.decide_call(conn, &mut call_rng),
                }
            },
        )
        .await;
    let _ = stop_tx.send(true);
    if let Some(p) = pusher {
        p.await.context("the push task failed")?;
    }
    let (totals, samples) = sampler.await.context("the sampler task failed")?;
    driven?;
    let pushes = lock(&pushes).clone();
    Ok(SoakReport {
        totals: totals.iter().map(Recorder::summary).collect(),
        pushes,
        samples,
        warmup: config.warmup,
        max_rss_growth: config.max_rss_growth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "shop: s\n# banners\nbanners:\n  - when: vip\n    banner: thank-you  # first\n  - banner: default\nbenefits:\n  - id: coupon-10\n    kind: coupon\n  - id: \"points\"\nitems:\n  - id: not-a-benefit\n";

    #[test]
    fn visitor_ids_as_the_demo_names_them() {
        assert_eq!(visitor_id_padded(7, 4), "v-0007");
        assert_eq!(visitor_id_padded(12345, 4), "v-12345");
        assert_eq!(visitor_id_padded(7, 0), crate::dataset::visitor_id(7));
    }

    #[test]
    fn benefits_of_a_file() {
        assert_eq!(benefit_ids(FILE), ["coupon-10", "points"]);
        assert!(benefit_ids("shop: s\n").is_empty());
    }

    #[test]
    fn banner_toggles_back_and_forth() {
        let once = toggle_banner(FILE).unwrap();
        assert!(once.contains("    banner: thank-you-soak  # first\n"), "{once}");
        assert!(once.contains("  - banner: default\n"));
        assert_eq!(toggle_banner(&once).unwrap(), FILE);
        assert_eq!(toggle_banner("shop: s\n"), None);
        assert_eq!(
            toggle_banner("banners:\n  - banner: x").unwrap(),
            "banners:\n  - banner: x-soak"
        );
    }

    #[test]
    fn summary_passes_and_fails() {
        let sample = |s, mb: u64| RssSample {
            elapsed: Duration::from_secs(s),
            bytes: mb << 20,
        };
        let mut report = SoakReport {
            totals: vec![Summary::default(); 3],
            pushes: PushStats::default(),
            samples: vec![sample(10, 50), sample(20, 100), sample(30, 104)],
            warmup: Duration::from_secs(15),
            max_rss_growth: 5.0,
        };
        assert_eq!(report.rss_after_warmup(), Some(sample(20, 100)));
        assert!(report.failures().is_empty(), "{:?}", report.failures());
        assert!(report.text().contains("result: PASS"));
        report.samples.push(sample(40, 106));
        assert_eq!(report.failures(), ["RSS grew 6.0% > 5%"]);
        report.samples.pop();
        report.totals[2].errors.insert(SHED.into(), 2);
        report.pushes.errors.insert("Internal".into(), 1);
        assert_eq!((report.errors(), report.shed()), (3, 2));
        assert!(report.text().contains("errors: 3 (shed 2)"), "{}", report.text());
        assert!(report.text().contains("result: FAIL: 3 errors (2 shed)"));
    }
}

/// Runs a short soak against an in-process `vitrine serve --demo`.
#[cfg(test)]
mod server_tests {
    use clap::Parser as _;

    use super::*;
    use crate::client::Auth;
    use crate::dataset::DatasetConfig;

    /// Soak (hardening, soak command): a short mixed run against a demo
    /// server — Decide, Track, Claim and pushes of the shop's own file —
    /// answers every call, and the summary has every line.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn soak_against_a_demo_server_has_no_errors() {
        let dir = std::env::temp_dir().join(format!("vitrine-loadtest-soak-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::copy(
            repo.join("rules/demo-apparel.yaml"),
            dir.join("rules/demo-apparel.yaml"),
        )
        .unwrap();
        let (rules_dir, data_dir) = (dir.join("rules"), dir.join("data"));
        let cli = vitrine::cli::Cli::try_parse_from([
            "vitrine".as_ref(),
            "serve".as_ref(),
            "--grpc-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--metrics-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--rules-dir".as_ref(),
            rules_dir.as_os_str(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--demo".as_ref(),
            "--demo-visitors".as_ref(),
            "200".as_ref(),
            // A debug build sharing the machine with the client and the
            // test harness: shedding would be a property of this machine.
            "--max-queue-wait".as_ref(),
            "0".as_ref(),
            "--max-in-flight".as_ref(),
            "100000".as_ref(),
        ] as [&std::ffi::OsStr; 17])
        .unwrap();
        let vitrine::cli::Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let server = vitrine::commands::serve::start(vitrine::config::Config::from_args(&args).unwrap())
            .await
            .unwrap();

        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = lines.clone();
        let report = soak_with(
            SoakConfig {
                load: LoadConfig {
                    addr: server.grpc_addr.to_string(),
                    connections: 2,
                    shops: 1,
                    visitors: 200,
                    visitor_digits: 4,
                    dataset: DatasetConfig::default(),
                    warmup: Duration::ZERO,
                    timeout: Duration::from_secs(30),
                    max_in_flight: 50_000,
                    events_rate: 0.0,
                    push_every: None,
                    auth: Auth::default(),
                    progress: false,
                },
                shops: vec!["demo-apparel".into()],
                rate: 200.0,
                mix: [80, 15, 5],
                duration: Duration::from_secs(2),
                warmup: Duration::ZERO,
                sample_every: Duration::from_millis(500),
                push_every: Some(Duration::from_millis(100)),
                rss: RssSource::Pid(std::process::id()),
                // This process is the test harness too: its RSS says nothing here.
                max_rss_growth: 1e6,
            },
            move |line| lock(&seen).push(line.to_string()),
        )
        .await
        .unwrap();
        server.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);

        let text = report.text();
        assert_eq!(report.errors(), 0, "{text}");
        assert!(report.failures().is_empty(), "{text}");
        // Every scheduled call was made and counted: 200/s for 2 s.
        assert_eq!(report.totals.iter().map(|s| s.requests).sum::<u64>(), 400, "{text}");
        assert!(
            report.totals.iter().all(|s| s.requests > 0 && s.ok == s.requests),
            "{text}"
        );
        assert!(report.pushes.calls >= 1, "{text}");
        assert!(!report.samples.is_empty() && report.samples.iter().all(|s| s.bytes > 0));
        for part in [
            "soak summary\n",
            "  calls:  decide=",
            "  errors: 0 (shed 0); by kind decide=0 track=0 claim=0 push=0; by code none\n",
            "  decide: p50 ",
            "  rss:    ",
            "  result: PASS\n",
        ] {
            assert!(text.contains(part), "`{part}` missing from\n{text}");
        }
        let lines = lock(&lines);
        assert!(!lines.is_empty());
        assert!(
            lines
                .iter()
                .all(|l| l.contains("calls decide=") && l.contains("| shed 0 |") && l.contains(" MiB")),
            "{lines:?}"
        );
    }
}
