//! The measured phases of `run` (and of every step of `sweep`): an
//! open-loop schedule of Decide calls, and the same schedule of
//! `grpc.health.v1.Health/Check` calls as the baseline.
//!
//! The key design choice is the open loop (see [`crate::pacer`]): requests
//! leave on a fixed schedule whatever the server does, and latency runs from
//! each request's intended send time to its answer. The baseline measures
//! everything that is not Vitrine's decision — this process, the tokio
//! runtime, HTTP/2, tonic, the kernel, the machine's two cores shared with
//! the load generator — so `decide p99 / baseline p99` says how much the
//! engine itself adds at that rate.
//!
//! Phases run one after the other by default (`sequential`: baseline, then
//! decide, identical rate, duration and warm-up); `interleaved` alternates
//! the two kinds on one schedule at twice the rate, so both see the same
//! moment of the machine. Background load (Track events at a rate, a
//! Rules/Push every so often) runs during the decide phase only.
//!
//! Every loop is bounded: the schedule has a fixed count, calls have a
//! timeout, the drain after the last tick has a deadline, and the background
//! tasks stop at the schedule's end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use vitrine_proto::v1 as pb;

use vitrine_core::hash::SplitMix64;

use crate::client::{self, Auth};
use crate::dataset::{
    item_id, pick_str, rule_file, shop_name, stream_rng, visitor_id, visitor_id_padded, Catalog, DatasetConfig,
    EventGenerator,
};
use crate::pacer::{self, PacerStats, Schedule, Tick};
use crate::report::{code_name, BackgroundStats, Recorder, RunReport, Summary, TIMEOUT};

/// How the baseline and decide phases share the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Baseline phase, then decide phase.
    Sequential,
    /// One schedule alternating both kinds.
    Interleaved,
}

impl Mode {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Interleaved => "interleaved",
        }
    }
}

/// Settings shared by `run` and `sweep`.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server, HOST:PORT.
    pub addr: String,
    /// HTTP/2 connections, used round-robin.
    pub connections: usize,
    /// Shops `load-0..` to spread Decide calls over.
    pub shops: usize,
    /// Visitors `v-0..` per shop to pick from.
    pub visitors: u64,
    /// Their numbers zero-padded to this many digits (0: `v-7`, 4: `v-0007`).
    pub visitor_digits: usize,
    /// The dataset the shops were seeded with (for pushes and events).
    pub dataset: DatasetConfig,
    /// Discarded warm-up at the start of every phase.
    pub warmup: Duration,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// Calls outstanding at once before new ones are counted as ClientOverload.
    pub max_in_flight: usize,
    /// Background Track events per second during decide phases (0 = none).
    pub events_rate: f64,
    /// Background Rules/Push interval during decide phases.
    pub push_every: Option<Duration>,
    /// Admin token for the background Track and Push calls.
    pub auth: Auth,
    /// Draw progress bars (on stderr).
    pub progress: bool,
}

/// Settings of `run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Shared settings.
    pub load: LoadConfig,
    /// Requests per second of each kind.
    pub rate: f64,
    /// Measured duration of each phase.
    pub duration: Duration,
    /// Sequential or interleaved.
    pub mode: Mode,
}

/// What a scheduled request calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// vitrine.v1.Decision/Decide for a random shop, visitor and context.
    Decide,
    /// grpc.health.v1.Health/Check of the whole server.
    Health,
}

/// What one phase measured.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    /// One summary per target, in the order asked.
    pub summaries: Vec<Summary>,
    /// What each target recorded, in the same order (for merging processes).
    pub recorders: Vec<Recorder>,
    /// The pacer thread's observations.
    pub pacer: PacerStats,
    /// The background load, if the phase had it.
    pub background: Option<BackgroundStats>,
}

/// A connected load generator: clients on every connection and the dataset.
#[derive(Debug)]
pub struct Load {
    config: LoadConfig,
    decide: Vec<pb::decision_client::DecisionClient<Channel>>,
    health: Vec<HealthClient<Channel>>,
    ingest: pb::ingest_client::IngestClient<Channel>,
    track: Vec<pb::ingest_client::IngestClient<Channel>>,
    benefits: Vec<pb::benefits_client::BenefitsClient<Channel>>,
    rules: pb::rules_client::RulesClient<Channel>,
    audiences: pb::audiences_client::AudiencesClient<Channel>,
    shops: Arc<Vec<String>>,
    catalog: Catalog,
    phases: AtomicU64,
}

const REGIONS: &[&str] = &["north", "south", "east", "west", "southwest", "central"];
const DEVICES: &[&str] = &["mobile", "desktop", "tablet"];
const CHANNELS: &[&str] = &["web", "app"];

/// The largest batch the background load puts in one Track call.
const MAX_BACKGROUND_BATCH: u64 = 5_000;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Where the outcomes of a schedule go: per kind of call, a recorder and
/// the calls sent in the measured window and not answered yet.
#[derive(Debug, Clone)]
pub(crate) struct Sinks {
    /// One recorder per kind.
    pub recorders: Arc<Vec<Mutex<Recorder>>>,
    /// Measured calls in flight, per kind.
    pub pending: Arc<Vec<AtomicU64>>,
}

impl Sinks {
    /// Empty sinks for `kinds` kinds of call.
    pub fn new(kinds: usize) -> Sinks {
        Sinks {
            recorders: Arc::new((0..kinds).map(|_| Mutex::default()).collect()),
            pending: Arc::new((0..kinds).map(|_| AtomicU64::new(0)).collect()),
        }
    }

    /// What kind `i` recorded since the last take, leaving it empty.
    pub fn take(&self, i: usize) -> Recorder {
        std::mem::take(&mut *lock(&self.recorders[i]))
    }

    /// After the drain: what kind `i` recorded, with the calls still
    /// unanswered counted as [`crate::report::UNFINISHED`].
    pub fn finish(&self, i: usize) -> Recorder {
        let mut r = self.take(i);
        r.unfinished(self.pending[i].swap(0, Ordering::Relaxed));
        r
    }
}

/// A scheduled call, ready to go.
pub(crate) enum Call {
    Decide(pb::decision_client::DecisionClient<Channel>, Box<pb::DecideRequest>),
    Health(HealthClient<Channel>),
    /// Ingest/Track with the admin header; events the server rejects count
    /// as `Rejected` failures.
    Track(pb::ingest_client::IngestClient<Channel>, Box<Request<pb::TrackRequest>>),
    /// Benefits/Claim; a `granted: false` answer is a success (a cap, a
    /// holdout, an ineligible visitor are answers, not failures).
    Claim(pb::benefits_client::BenefitsClient<Channel>, Box<pb::ClaimRequest>),
}

/// The failure name of a Track call whose events were (some) rejected.
pub const REJECTED: &str = "Rejected";

impl Call {
    /// Makes the call; `Err` is the name its failure is counted under.
    pub(crate) async fn execute(self, timeout: Duration) -> Result<(), &'static str> {
        let call = async move {
            match self {
                Call::Decide(mut client, message) => {
                    let mut request = Request::new(*message);
                    request.set_timeout(timeout);
                    client.decide(request).await.map(|_| Ok(()))
                }
                Call::Health(mut client) => {
                    let mut request = Request::new(HealthCheckRequest { service: String::new() });
                    request.set_timeout(timeout);
                    client.check(request).await.map(|r| {
                        if r.get_ref().status == ServingStatus::Serving as i32 {
                            Ok(())
                        } else {
                            Err("NotServing")
                        }
                    })
                }
                Call::Track(mut client, request) => {
                    let mut request = *request;
                    request.set_timeout(timeout);
                    client.track(request).await.map(|r| {
                        if r.get_ref().rejected.is_empty() {
                            Ok(())
                        } else {
                            Err(REJECTED)
                        }
                    })
                }
                Call::Claim(mut client, message) => {
                    let mut request = Request::new(*message);
                    request.set_timeout(timeout);
                    client.claim(request).await.map(|_| Ok(()))
                }
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(status)) => Err(code_name(status.code())),
            Err(_) => Err(TIMEOUT),
        }
    }
}

impl Load {
    /// Connects and checks that the server is serving and knows the shops
    /// `load-0..`.
    pub async fn connect(config: LoadConfig) -> anyhow::Result<Load> {
        let shops = (0..config.shops).map(shop_name).collect();
        Load::connect_to(config, shops).await
    }

    /// Connects and checks that the server is serving and knows `shops`
    /// (which replace `config.shops`).
    pub async fn connect_to(mut config: LoadConfig, shops: Vec<String>) -> anyhow::Result<Load> {
        config.shops = shops.len();
        if config.shops == 0 || config.visitors == 0 {
            bail!("--shops and --visitors must be at least 1");
        }
        let channels = client::connect(&config.addr, config.connections).await?;
        let first = channels[0].clone();
        let load = Load {
            decide: channels
                .iter()
                .map(|c| pb::decision_client::DecisionClient::new(c.clone()))
                .collect(),
            health: channels.iter().map(|c| HealthClient::new(c.clone())).collect(),
            ingest: pb::ingest_client::IngestClient::new(first.clone()),
            track: channels
                .iter()
                .map(|c| pb::ingest_client::IngestClient::new(c.clone()))
                .collect(),
            benefits: channels
                .iter()
                .map(|c| pb::benefits_client::BenefitsClient::new(c.clone()))
                .collect(),
            rules: pb::rules_client::RulesClient::new(first.clone()),
            audiences: pb::audiences_client::AudiencesClient::new(first),
            shops: Arc::new(shops),
            catalog: Catalog::new(&config.dataset),
            phases: AtomicU64::new(0),
            config,
        };
        load.preflight().await?;
        Ok(load)
    }

    /// The settings.
    pub fn config(&self) -> &LoadConfig {
        &self.config
    }

    /// The shops calls are spread over.
    pub fn shops(&self) -> &[String] {
        &self.shops
    }

    /// The catalog of the dataset.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// A Rules client (on the first connection).
    pub fn rules_client(&self) -> pb::rules_client::RulesClient<Channel> {
        self.rules.clone()
    }

    /// Connections, numbered from 0.
    pub fn connections(&self) -> usize {
        self.decide.len()
    }

    /// A Decide call on connection `conn` for a random shop, visitor and context.
    pub(crate) fn decide_call(&self, conn: usize, rng: &mut SplitMix64) -> Call {
        Call::Decide(
            self.decide[conn % self.decide.len()].clone(),
            Box::new(self.decide_request(rng)),
        )
    }

    /// A Track call on connection `conn` with the admin header.
    pub(crate) fn track_call(&self, conn: usize, message: pb::TrackRequest) -> Call {
        let request = self.config.auth.request(message);
        Call::Track(self.track[conn % self.track.len()].clone(), Box::new(request))
    }

    /// A Claim call on connection `conn`.
    pub(crate) fn claim_call(&self, conn: usize, message: pb::ClaimRequest) -> Call {
        Call::Claim(self.benefits[conn % self.benefits.len()].clone(), Box::new(message))
    }

    async fn preflight(&self) -> anyhow::Result<()> {
        let addr = &self.config.addr;
        let mut health = self.health[0].clone();
        let status = health
            .check(HealthCheckRequest { service: String::new() })
            .await
            .with_context(|| format!("grpc.health.v1.Health/Check at {addr} failed"))?;
        if status.get_ref().status != ServingStatus::Serving as i32 {
            bail!("the server at {addr} is not SERVING");
        }
        let mut decide = self.decide[0].clone();
        let mut audiences = self.audiences.clone();
        for shop in self.shops.iter() {
            let request = pb::DecideRequest {
                shop: shop.clone(),
                visitor: visitor_id(0),
                ..pb::DecideRequest::default()
            };
            match decide.decide(request).await {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound => bail!(
                    "shop `{shop}` is unknown to {addr}: run `vitrine-loadtest seed --addr {addr} --shops {}` first",
                    self.config.shops
                ),
                Err(s) => bail!("Decide for shop `{shop}` failed: {:?}: {}", s.code(), s.message()),
            }
            let size = audiences
                .size(pb::SizeRequest {
                    shop: shop.clone(),
                    expression: "visited(400d)".into(),
                    now_ms: 0,
                })
                .await;
            if let Ok(size) = size {
                let known = size.get_ref().known_visitors;
                if known < self.config.visitors {
                    eprintln!(
                        "warning: shop `{shop}` knows {known} visitors but --visitors is {}: \
                         decisions for the others have no history",
                        self.config.visitors
                    );
                }
            }
        }
        Ok(())
    }

    fn decide_request(&self, rng: &mut SplitMix64) -> pb::DecideRequest {
        let shop = self.shops[rng.index(self.shops.len())].clone();
        let visitor = visitor_id_padded(rng.below(self.config.visitors), self.config.visitor_digits);
        let item_page = rng.chance(0.5);
        pb::DecideRequest {
            shop,
            visitor,
            context: Some(pb::Context {
                page: if item_page { "item" } else { "home" }.into(),
                item: if item_page {
                    item_id(self.catalog.popular_item(rng))
                } else {
                    String::new()
                },
                region: pick_str(rng, REGIONS).into(),
                device: pick_str(rng, DEVICES).into(),
                channel: pick_str(rng, CHANNELS).into(),
                attributes: Default::default(),
            }),
            ..pb::DecideRequest::default()
        }
    }

    /// Runs one phase: `rate` requests per second of each target (taken in
    /// turn) for the warm-up plus `duration`, measuring all but the warm-up;
    /// with `background`, the background load runs alongside.
    pub async fn phase(
        &self,
        label: &str,
        rate: f64,
        duration: Duration,
        targets: &[Target],
        background: bool,
    ) -> anyhow::Result<PhaseResult> {
        if targets.is_empty() || !rate.is_finite() || rate <= 0.0 {
            bail!("a phase needs a positive rate and at least one target");
        }
        let kinds = targets.len() as u64;
        let total_rate = rate * kinds as f64;
        let warmup_ticks = (total_rate * self.config.warmup.as_secs_f64()).round() as u64;
        let measured_ticks = ((total_rate * duration.as_secs_f64()).round() as u64).max(kinds);
        let count = warmup_ticks + measured_ticks;
        if count > 1_000_000_000 {
            bail!("{count} requests in one phase is more than this tool is meant for; lower --rate or --duration");
        }
        let phase_no = self.phases.fetch_add(1, Ordering::Relaxed);
        let mut rng = stream_rng(self.config.dataset.seed, u64::MAX - 1, phase_no);
        let sinks = Sinks::new(targets.len());
        // A short lead so the pacer thread is up before tick 0 is due.
        let schedule = Schedule {
            start: Instant::now() + Duration::from_millis(20),
            rate: total_rate,
            count,
        };
        let background = background.then(|| self.spawn_background(schedule.end(), phase_no));
        let connections = self.decide.len() as u64;
        let pacer = self
            .drive(
                label,
                schedule,
                warmup_ticks,
                &sinks,
                |tick| (tick.seq % kinds) as usize,
                |which, tick| {
                    let conn = ((tick.seq / kinds) % connections) as usize;
                    match targets[which] {
                        Target::Decide => self.decide_call(conn, &mut rng),
                        Target::Health => Call::Health(self.health[conn].clone()),
                    }
                },
            )
            .await?;
        let background = match background {
            Some(handle) => Some(handle.await.context("background load task failed")?),
            None => None,
        };
        let recorders: Vec<Recorder> = (0..targets.len()).map(|i| sinks.finish(i)).collect();
        Ok(PhaseResult {
            summaries: recorders.iter().map(Recorder::summary).collect(),
            recorders,
            pacer,
            background,
        })
    }

    /// Sends the open-loop `schedule`: for each tick, `pick` chooses its
    /// kind (an index into `sinks`) and `make` builds its call; outcomes of
    /// the ticks from `warmup_ticks` on are recorded in `sinks`. Returns
    /// once every call has answered or timed out (plus a second).
    pub(crate) async fn drive(
        &self,
        label: &str,
        schedule: Schedule,
        warmup_ticks: u64,
        sinks: &Sinks,
        mut pick: impl FnMut(&Tick) -> usize,
        mut make: impl FnMut(usize, &Tick) -> Call,
    ) -> anyhow::Result<PacerStats> {
        let bar = self.progress_bar(label, schedule.count);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pacer = pacer::spawn(schedule, move |tick| tx.send(tick).is_ok()).context("starting the pacer thread")?;
        let timeout = self.config.timeout;
        let mut calls = JoinSet::new();
        while let Some(tick) = rx.recv().await {
            while calls.try_join_next().is_some() {}
            if tick.seq % 256 == 0 {
                bar.set_position(tick.seq);
            }
            let which = pick(&tick).min(sinks.recorders.len().saturating_sub(1));
            let measured = tick.seq >= warmup_ticks;
            if calls.len() >= self.config.max_in_flight {
                if measured {
                    lock(&sinks.recorders[which]).overloaded(tick.intended, 1);
                }
                continue;
            }
            let call = make(which, &tick);
            if measured {
                sinks.pending[which].fetch_add(1, Ordering::Relaxed);
            }
            let Sinks { recorders, pending } = sinks.clone();
            calls.spawn(async move {
                let outcome = call.execute(timeout).await;
                let done = Instant::now();
                if measured {
                    lock(&recorders[which]).record(tick.intended, done, outcome);
                    pending[which].fetch_sub(1, Ordering::Relaxed);
                }
            });
        }
        let pacer = pacer.join().map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;

        // Every call has a timeout; give them that long (and a little) to finish.
        let drain = async { while calls.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(timeout + Duration::from_secs(1), drain).await;
        calls.abort_all();
        bar.finish_and_clear();
        Ok(pacer)
    }

    fn progress_bar(&self, label: &str, len: u64) -> ProgressBar {
        if !self.config.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>18} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})")
        {
            bar.set_style(style);
        }
        bar.set_message(label.to_string());
        bar
    }

    /// Starts the background load, ending at `until`.
    fn spawn_background(&self, until: Instant, phase_no: u64) -> tokio::task::JoinHandle<BackgroundStats> {
        let c = &self.config;
        let events = (c.events_rate > 0.0).then(|| {
            background_events(
                self.ingest.clone(),
                c.auth.clone(),
                EventGenerator::new(self.catalog.clone(), 30, 0),
                (c.shops, c.visitors),
                c.events_rate,
                until,
                stream_rng(c.dataset.seed, u64::MAX - 2, phase_no),
            )
        });
        let pushes = c.push_every.filter(|d| !d.is_zero()).map(|every| {
            let files: Vec<String> = (0..c.shops).map(|i| rule_file(i, &self.catalog)).collect();
            background_pushes(self.rules.clone(), c.auth.clone(), files, every, until)
        });
        let (events_rate, push_every) = (c.events_rate, c.push_every);
        tokio::spawn(async move {
            let events = async {
                match events {
                    Some(f) => f.await,
                    None => BackgroundStats::default(),
                }
            };
            let pushes = async {
                match pushes {
                    Some(f) => f.await,
                    None => BackgroundStats::default(),
                }
            };
            let (e, p) = tokio::join!(events, pushes);
            BackgroundStats {
                events_rate,
                push_every,
                pushes: p.pushes,
                push_errors: p.push_errors,
                push_max: p.push_max,
                push_total: p.push_total,
                ..e
            }
        })
    }
}

/// Sends live events at `rate` per second until `until`, in one Track call
/// per 100 ms (catching up, in bounded batches, when a call was slow).
async fn background_events(
    mut ingest: pb::ingest_client::IngestClient<Channel>,
    auth: Auth,
    generator: EventGenerator,
    (shops, visitors): (usize, u64),
    rate: f64,
    until: Instant,
    mut rng: SplitMix64,
) -> BackgroundStats {
    let mut stats = BackgroundStats::default();
    let start = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = Instant::now();
        if now >= until {
            break;
        }
        let due = (rate * (now - start).as_secs_f64()) as u64;
        let n = due.saturating_sub(stats.events_sent).min(MAX_BACKGROUND_BATCH);
        if n == 0 {
            continue;
        }
        let now_ms = unix_ms();
        let events = (0..n)
            .map(|_| generator.live(&mut rng, shops, visitors, now_ms))
            .collect();
        let mut request = auth.request(pb::TrackRequest { events });
        request.set_timeout(Duration::from_secs(10));
        stats.events_sent += n;
        match tokio::time::timeout(Duration::from_secs(10), ingest.track(request)).await {
            Ok(Ok(r)) => {
                stats.events_accepted += u64::from(r.get_ref().accepted);
                stats.events_rejected += r.get_ref().rejected.len() as u64;
            }
            Ok(Err(s)) => *stats.track_errors.entry(code_name(s.code()).into()).or_default() += 1,
            Err(_) => *stats.track_errors.entry(TIMEOUT.into()).or_default() += 1,
        }
    }
    stats.seconds = start.elapsed().as_secs_f64();
    stats
}

/// Pushes the shops' rule files in turn, one every `every`, until `until`.
async fn background_pushes(
    mut rules: pb::rules_client::RulesClient<Channel>,
    auth: Auth,
    files: Vec<String>,
    every: Duration,
    until: Instant,
) -> BackgroundStats {
    let mut stats = BackgroundStats::default();
    let mut next = Instant::now() + every;
    let mut i = 0;
    while next < until && !files.is_empty() {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        let content = files[i % files.len()].clone();
        i += 1;
        let started = Instant::now();
        let request = auth.request(pb::PushRequest {
            content,
            dry_run: false,
            expected_revision: 0,
        });
        match tokio::time::timeout(Duration::from_secs(30), rules.push(request)).await {
            Ok(Ok(_)) => {
                let took = started.elapsed();
                stats.pushes += 1;
                stats.push_total += took;
                stats.push_max = stats.push_max.max(took);
            }
            Ok(Err(s)) => *stats.push_errors.entry(code_name(s.code()).into()).or_default() += 1,
            Err(_) => *stats.push_errors.entry(TIMEOUT.into()).or_default() += 1,
        }
    }
    stats
}

/// `vitrine-loadtest run`: baseline and decide at the same rate.
pub async fn run(config: RunConfig) -> anyhow::Result<RunReport> {
    Ok(run_recorded(config, 0).await?.0)
}

/// [`run`], also returning what the baseline and decide calls recorded;
/// `stream` picks the request mix's random stream (one per process of
/// `run --procs`, so they do not send the same calls).
pub async fn run_recorded(config: RunConfig, stream: u64) -> anyhow::Result<(RunReport, [Recorder; 2])> {
    if !config.rate.is_finite() || config.rate <= 0.0 || config.duration.is_zero() {
        bail!("--rate and --duration must be positive");
    }
    let load = Load::connect(config.load).await?;
    load.phases.store(stream << 32, Ordering::Relaxed);
    let (rate, duration) = (config.rate, config.duration);
    let (baseline, decide, background, lag, recorders) = match config.mode {
        Mode::Sequential => {
            let b = load.phase("baseline", rate, duration, &[Target::Health], false).await?;
            let d = load.phase("decide", rate, duration, &[Target::Decide], true).await?;
            let lag = b.pacer.max_lag.max(d.pacer.max_lag);
            let recorders = [b.recorders[0].clone(), d.recorders[0].clone()];
            (
                b.summaries[0].clone(),
                d.summaries[0].clone(),
                d.background,
                lag,
                recorders,
            )
        }
        Mode::Interleaved => {
            let r = load
                .phase(
                    "baseline+decide",
                    rate,
                    duration,
                    &[Target::Health, Target::Decide],
                    true,
                )
                .await?;
            (
                r.summaries[0].clone(),
                r.summaries[1].clone(),
                r.background,
                r.pacer.max_lag,
                [r.recorders[0].clone(), r.recorders[1].clone()],
            )
        }
    };
    let c = load.config();
    let has_background = c.events_rate > 0.0 || c.push_every.is_some_and(|d| !d.is_zero());
    let report = RunReport {
        addr: c.addr.clone(),
        mode: config.mode.name(),
        rate,
        duration,
        warmup: c.warmup,
        connections: c.connections.max(1),
        decide,
        baseline,
        background: background.filter(|_| has_background),
        pacer_max_lag: lag,
    };
    Ok((report, recorders))
}
