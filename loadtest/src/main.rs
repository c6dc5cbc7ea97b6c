//! `vitrine-loadtest`: a dataset generator and an open-loop gRPC load
//! generator for Vitrine.
//!
//! - `seed` pushes a generated rule file per shop (`load-0`, `load-1`, ..)
//!   and streams Zipf-skewed behavior of `v-0..` through Ingest/Track;
//! - `run` sends Decide at a constant rate and, as the baseline, the same
//!   schedule of `grpc.health.v1.Health/Check`, and prints both latency
//!   distributions; with `--procs N`, N processes of this binary share the
//!   rate and their histograms are merged (`procs`): one client process runs
//!   out of CPU before the server does;
//! - `sweep` repeats the decide phase at increasing rates to find the
//!   highest one whose p99 stays under 1 ms;
//! - `soak` mixes Decide, Track, Claim and Rules/Push for a long time and
//!   samples the server's RSS: 0 errors and bounded growth, or exit code 3;
//! - `cluster` measures replicas that agree through Kafka: push
//!   propagation, claim latency and one partition's claims per second.
//!
//! The key design choice is the open loop: requests go out on a fixed
//! schedule kept by a dedicated thread whether or not earlier ones have
//! returned, and each latency is measured from the request's *intended*
//! send time, so a server stall shows up in the percentiles instead of
//! silently slowing the generator down (see `pacer`). This file only wires
//! the command line to the modules.

mod client;
mod cluster;
mod dataset;
mod pacer;
mod procs;
mod report;
mod run;
mod seed;
mod soak;
mod sweep;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::Auth;
use crate::dataset::DatasetConfig;
use crate::run::{LoadConfig, Mode, RunConfig};
use crate::seed::SeedConfig;
use crate::soak::{RssSource, SoakConfig};
use crate::sweep::SweepConfig;

/// Dataset generator and open-loop gRPC load generator for Vitrine.
#[derive(Debug, Parser)]
#[command(name = "vitrine-loadtest", version, about)]
struct Cli {
    /// Tokio worker threads (the pacer has its own thread besides).
    #[arg(long, global = true, env = "VITRINE_LOADTEST_WORKERS", default_value_t = 2)]
    workers: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Push a generated rule file per shop and ingest generated behavior.
    Seed(SeedArgs),
    /// Open-loop Decide at a constant rate against a Health/Check baseline.
    Run(RunArgs),
    /// The decide phase at increasing rates: the highest with p99 < 1 ms.
    Sweep(SweepArgs),
    /// Decide, Track, Claim and Rules/Push mixed for a long time; errors and
    /// the server's RSS over time. Exit code 3 when a call failed or RSS grew
    /// more than --max-rss-growth after the warm-up.
    Soak(SoakArgs),
    /// Measure a cluster (docs/cluster.md): push propagation, claims at a
    /// rate, the claims/s one partition sustains.
    Cluster(ClusterArgs),
}

/// Flags every command shares.
#[derive(Debug, Args)]
struct Common {
    /// The server's gRPC address, HOST:PORT.
    #[arg(long, env = "VITRINE_ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    /// Bearer token for Rules/Push and Ingest/Track.
    #[arg(long, env = "VITRINE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Seed of the dataset (and of the request mix): same seed, same data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Items per shop catalog.
    #[arg(long, default_value_t = 2000)]
    items: usize,
    /// Categories the items are spread over.
    #[arg(long, default_value_t = 20)]
    categories: usize,
    /// Zipf exponent of item popularity.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Do not draw progress bars.
    #[arg(long)]
    no_progress: bool,
}

impl Common {
    fn dataset(&self) -> anyhow::Result<DatasetConfig> {
        if self.items == 0 || self.categories == 0 || self.categories > self.items {
            bail!("need 1 <= --categories <= --items");
        }
        if !(self.zipf >= 0.0 && self.zipf <= 10.0) {
            bail!("--zipf must be between 0 and 10");
        }
        Ok(DatasetConfig {
            seed: self.seed,
            items: self.items,
            categories: self.categories,
            zipf_s: self.zipf,
        })
    }

    fn auth(&self) -> anyhow::Result<Auth> {
        Auth::new(self.admin_token.as_deref())
    }
}

#[derive(Debug, Args)]
struct SeedArgs {
    #[command(flatten)]
    common: Common,
    /// Shops to create: load-0, load-1, ...
    #[arg(long, default_value_t = 3)]
    shops: usize,
    /// Visitors per shop: v-0, v-1, ...
    #[arg(long, default_value_t = 100_000)]
    visitors: u64,
    /// Spread events over this many days before now.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Events per Track call (at most 10000).
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// Track calls in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// The clock events are spread back from, ms since the epoch (default:
    /// now); pin it to reproduce a dataset exactly.
    #[arg(long)]
    now_ms: Option<i64>,
    /// Also write the generated rule files into this directory.
    #[arg(long, value_name = "DIR")]
    write_rules: Option<PathBuf>,
}

/// Flags of the measured phases (run and sweep).
#[derive(Debug, Args)]
struct LoadArgs {
    #[command(flatten)]
    common: Common,
    /// HTTP/2 connections, used round-robin.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Shops load-0.. to spread Decide calls over (as seeded).
    #[arg(long, default_value_t = 3)]
    shops: usize,
    /// Visitors v-0.. per shop to pick from (as seeded).
    #[arg(long, default_value_t = 100_000)]
    visitors: u64,
    /// Warm-up at the start of each phase, sent but not measured.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Longest wait for one answer; later ones count as DeadlineExceeded.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Calls outstanding at once; beyond it requests are not sent and count as ClientOverload.
    #[arg(long, default_value_t = 50_000)]
    max_in_flight: usize,
    /// Background behavior events per second (Ingest/Track) during the decide phase.
    #[arg(long, default_value_t = 0.0)]
    events_rate: f64,
    /// Push one of the shops' rule files (Rules/Push) this often during the decide phase.
    #[arg(long, value_parser = parse_duration)]
    push_every: Option<Duration>,
}

impl LoadArgs {
    fn config(&self) -> anyhow::Result<LoadConfig> {
        if !(self.events_rate >= 0.0 && self.events_rate.is_finite()) {
            bail!("--events-rate must be >= 0");
        }
        if self.max_in_flight == 0 || self.timeout.is_zero() {
            bail!("--max-in-flight and --timeout must be positive");
        }
        Ok(LoadConfig {
            addr: self.common.addr.clone(),
            connections: self.connections.max(1),
            shops: self.shops,
            visitors: self.visitors,
            visitor_digits: 0,
            dataset: self.common.dataset()?,
            warmup: self.warmup,
            timeout: self.timeout,
            max_in_flight: self.max_in_flight,
            events_rate: self.events_rate,
            push_every: self.push_every,
            auth: self.common.auth()?,
            progress: !self.common.no_progress,
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Baseline phase first, then the decide phase.
    Sequential,
    /// One schedule alternating baseline and decide requests.
    Interleaved,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Requests per second (of each kind).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Measured duration of each phase, e.g. 30s, 500ms, 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// How the baseline and decide phases share the run.
    #[arg(long, value_enum, default_value = "sequential")]
    mode: ModeArg,
    /// Print exactly one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Load-generator processes sharing the rate, their histograms merged
    /// (one client runs out of CPU before the server; see `procs.rs`).
    #[arg(long, default_value_t = 1)]
    procs: usize,
}

#[derive(Debug, Args)]
struct SweepArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// First rate, requests per second.
    #[arg(long, default_value_t = 1000)]
    start: u64,
    /// Increment between steps.
    #[arg(long, default_value_t = 1000)]
    step: u64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 50_000)]
    max: u64,
    /// Measured duration of each step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// A step passes when Decide's p99 is below this many µs (and nothing failed).
    #[arg(long, default_value_t = 1000)]
    p99_limit_us: u64,
    /// Also measure the Health/Check baseline at each rate.
    #[arg(long)]
    baseline: bool,
    /// Go on after a failing step (the result still stops at the first failure).
    #[arg(long)]
    keep_going: bool,
    /// A failing step is run again, up to this many runs in all (odd), and
    /// fails only when most of them fail: one stall must not end a sweep.
    #[arg(long, default_value_t = 3)]
    attempts: usize,
    /// Quiet time between steps.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pause: Duration,
    /// Print one JSON object on stdout (the per-rate lines go to stderr).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SoakArgs {
    #[command(flatten)]
    common: Common,
    /// Shops to load (they must exist on the server), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "demo-apparel,demo-beauty,demo-electronics"
    )]
    shops: Vec<String>,
    /// Visitors v-0.. to pick from (as many as `vitrine serve --demo`
    /// seeds: Track then adds behavior to known visitors instead of
    /// creating new ones).
    #[arg(long, default_value_t = 2000)]
    visitors: u64,
    /// Visitor numbers zero-padded to this many digits: 4 names them as
    /// `vitrine serve --demo` does (v-0007), 0 as `vitrine-loadtest seed` (v-7).
    #[arg(long, default_value_t = 4)]
    visitor_digits: usize,
    /// HTTP/2 connections, used round-robin.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls per second, all kinds together.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Weights of Decide, Track and Claim calls, e.g. 80,15,5.
    #[arg(long, value_delimiter = ',', default_value = "80,15,5")]
    mix: Vec<u32>,
    /// How long to run, e.g. 30s, 5m, 1h.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    /// RSS is compared from the first sample after this (default: a sixth of --duration).
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// One line of figures this often.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    sample_every: Duration,
    /// A Rules/Push (a banner id of the shop's own file toggled) this often; 0 = none.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    push_every: Duration,
    /// The server's process id: RSS from /proc/PID/status.
    #[arg(long)]
    pid: Option<u32>,
    /// Without --pid: RSS from process_resident_memory_bytes at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// The largest RSS growth after the warm-up that passes, percent.
    #[arg(long, default_value_t = 5.0)]
    max_rss_growth: f64,
    /// Longest wait for one answer; later ones count as DeadlineExceeded.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Calls outstanding at once; beyond it calls are not sent and count as ClientOverload.
    #[arg(long, default_value_t = 50_000)]
    max_in_flight: usize,
}

impl SoakArgs {
    fn config(&self) -> anyhow::Result<SoakConfig> {
        let rss = match (self.pid, &self.metrics_addr) {
            (Some(pid), _) => RssSource::Pid(pid),
            (None, Some(addr)) => RssSource::Metrics(addr.clone()),
            (None, None) => {
                bail!("give --pid PID of the server (or --metrics-addr if it exports process_resident_memory_bytes)")
            }
        };
        let mix = match self.mix[..] {
            [d, t, c] => [d, t, c],
            _ => bail!("--mix takes three weights: Decide,Track,Claim"),
        };
        if !(self.max_rss_growth.is_finite() && self.max_rss_growth >= 0.0) {
            bail!("--max-rss-growth must be >= 0");
        }
        if self.max_in_flight == 0 || self.timeout.is_zero() {
            bail!("--max-in-flight and --timeout must be positive");
        }
        let shops: Vec<String> = self.shops.iter().filter(|s| !s.is_empty()).cloned().collect();
        Ok(SoakConfig {
            load: LoadConfig {
                addr: self.common.addr.clone(),
                connections: self.connections.max(1),
                shops: shops.len(),
                visitors: self.visitors,
                visitor_digits: self.visitor_digits,
                dataset: self.common.dataset()?,
                warmup: Duration::ZERO,
                timeout: self.timeout,
                max_in_flight: self.max_in_flight,
                events_rate: 0.0,
                push_every: None,
                auth: self.common.auth()?,
                progress: false,
            },
            shops,
            rate: self.rate,
            mix,
            duration: self.duration,
            warmup: self.warmup.unwrap_or(self.duration / 6),
            sample_every: self.sample_every,
            push_every: Some(self.push_every),
            rss,
            max_rss_growth: self.max_rss_growth,
        })
    }
}

#[derive(Debug, Args)]
struct ClusterArgs {
    /// gRPC addresses of the replicas, HOST:PORT,HOST:PORT,...; the first
    /// takes the pushes. One embedded server measures the local journal.
    #[arg(long, value_delimiter = ',', required = true)]
    replicas: Vec<String>,
    /// The bench shop; its rule file is pushed by the tool.
    #[arg(long, default_value = "bench-cluster")]
    shop: String,
    /// HTTP/2 connections per replica.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Longest wait for one answer, and for a revision to be served everywhere.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Bearer token for Rules/Push.
    #[arg(long, env = "VITRINE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Pushes to replica 0: the call's latency and the time until every
    /// replica serves the new revision.
    Push {
        /// How many pushes, one after the other.
        #[arg(long, default_value_t = 50)]
        pushes: u64,
    },
    /// Open-loop claims at --rate, round robin over the replicas.
    Claims {
        /// Claims per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Measured duration.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Sent before the measured duration, not measured.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        warmup: Duration,
    },
    /// Decides on replica 0, each for a new visitor: the time until every
    /// replica counts the offer in `offered(1d, benefit="bench-claim")`.
    Offers {
        /// How many decisions, one after the other.
        #[arg(long, default_value_t = 200)]
        samples: u64,
    },
    /// Closed loop: --concurrency callers on one benefit (one partition).
    ClaimsMax {
        /// Callers, each sending its next claim when the last answers.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// How long.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
    },
}

impl ClusterArgs {
    fn config(&self) -> anyhow::Result<cluster::ClusterConfig> {
        Ok(cluster::ClusterConfig {
            replicas: cluster::check_replicas(&self.replicas).map_err(|e| anyhow::anyhow!("--replicas: {e}"))?,
            shop: self.shop.clone(),
            connections: self.connections.max(1),
            timeout: self.timeout,
            auth: Auth::new(self.admin_token.as_deref())?,
        })
    }
}

/// `30s`, `500ms`, `2m`, `1h`, `1.5s` or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{text}`: unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

fn main() {
    match run_cli(Cli::parse()) {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Runs the command; `Ok` holds the exit code.
fn run_cli(cli: Cli) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.workers.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Seed(a) => {
                let now_ms = match a.now_ms {
                    Some(ms) => ms,
                    None => i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?,
                };
                seed::seed(SeedConfig {
                    addr: a.common.addr.clone(),
                    shops: a.shops,
                    visitors: a.visitors,
                    days: a.days,
                    now_ms,
                    dataset: a.common.dataset()?,
                    batch: a.batch,
                    concurrency: a.concurrency,
                    auth: a.common.auth()?,
                    write_rules: a.write_rules,
                    progress: !a.common.no_progress,
                })
                .await?;
                Ok(0)
            }
            Command::Run(a) => {
                let config = RunConfig {
                    load: a.load.config()?,
                    rate: a.rate,
                    duration: a.duration,
                    mode: match a.mode {
                        ModeArg::Sequential => Mode::Sequential,
                        ModeArg::Interleaved => Mode::Interleaved,
                    },
                };
                procs::check(&config, a.procs)?;
                if let Some(part) = procs::part_from_env()? {
                    println!("{}", procs::run_part(config, part).await?);
                    return Ok(0);
                }
                let report = if a.procs > 1 {
                    let procs = a.procs;
                    tokio::task::spawn_blocking(move || procs::run_procs(&config, procs)).await??
                } else {
                    run::run(config).await?
                };
                if a.json {
                    println!("{}", report.json());
                } else {
                    print!("{}", report.text());
                }
                Ok(0)
            }
            Command::Sweep(a) => {
                let report = sweep::sweep(SweepConfig {
                    load: a.load.config()?,
                    start: a.start,
                    step: a.step,
                    max: a.max,
                    duration: a.duration,
                    p99_limit_us: a.p99_limit_us,
                    baseline: a.baseline,
                    keep_going: a.keep_going,
                    attempts: a.attempts,
                    pause: a.pause,
                    json: a.json,
                })
                .await?;
                if a.json {
                    println!("{report}");
                }
                Ok(0)
            }
            Command::Cluster(a) => {
                let config = a.config()?;
                let text = match a.command {
                    ClusterCommand::Push { pushes } => cluster::push_propagation(&config, pushes).await?.text(),
                    ClusterCommand::Claims { rate, duration, warmup } => {
                        cluster::claims_open(&config, rate, duration, warmup).await?.text()
                    }
                    ClusterCommand::Offers { samples } => cluster::offer_propagation(&config, samples).await?.text(),
                    ClusterCommand::ClaimsMax { concurrency, duration } => {
                        cluster::claims_closed(&config, concurrency, duration).await?.text()
                    }
                };
                print!("{text}");
                Ok(0)
            }
            Command::Soak(a) => {
                let report = soak::soak(a.config()?).await?;
                print!("{}", report.text());
                Ok(if report.failures().is_empty() {
                    0
                } else {
                    soak::EXIT_FAILED
                })
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "vitrine-loadtest",
            "run",
            "--addr",
            "127.0.0.1:1",
            "--rate",
            "500",
            "--duration",
            "5s",
            "--json",
            "--push-every",
            "5s",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.duration, Duration::from_secs(5));
        assert_eq!(a.load.config().unwrap().push_every, Some(Duration::from_secs(5)));
    }

    #[test]
    fn soak_command_line() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["vitrine-loadtest", "soak", "--duration", "30m"];
            argv.extend_from_slice(extra);
            let Command::Soak(a) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not soak")
            };
            a.config()
        };
        let c = parse(&["--pid", "7", "--mix", "70,20,10"]).unwrap();
        assert_eq!(c.mix, [70, 20, 10]);
        assert_eq!(c.warmup, Duration::from_secs(300));
        assert_eq!(c.sample_every, Duration::from_secs(30));
        assert_eq!(c.max_rss_growth, 5.0);
        assert_eq!(c.shops, ["demo-apparel", "demo-beauty", "demo-electronics"]);
        assert!(matches!(c.rss, RssSource::Pid(7)));
        assert_eq!((c.load.visitors, c.load.visitor_digits), (2000, 4));
        let c = parse(&["--metrics-addr", "127.0.0.1:9898", "--warmup", "1m", "--shops", "a,b"]).unwrap();
        assert!(matches!(c.rss, RssSource::Metrics(ref a) if a == "127.0.0.1:9898"));
        assert_eq!((c.warmup, c.shops.len()), (Duration::from_secs(60), 2));
        assert!(parse(&[]).is_err(), "no RSS source");
        assert!(parse(&["--pid", "7", "--mix", "1,2"]).is_err());
        assert!(parse(&["--pid", "7", "--max-rss-growth=-1"]).is_err());
        assert!(parse(&["--pid", "7", "--max-rss-growth", "NaN"]).is_err());
    }
}
