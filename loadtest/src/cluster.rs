//! `vitrine-loadtest cluster`: what replicas that agree through Kafka cost
//! (docs/cluster.md), measured from outside over gRPC.
//!
//! - `push`: pushes of one shop's rule file (a banner changed each time) to
//!   the first replica; for each, the Rules/Push call's latency and the time
//!   from the call's start until EVERY replica serves the new revision
//!   (Rules/Get of the serving revision, polled about every millisecond on
//!   each replica at once).
//! - `claims`: open-loop Benefits/Claim at a rate (the [`crate::pacer`]
//!   schedule, latency from each claim's intended send time), round robin
//!   over the replicas, each claim with its own visitor and `claim_id`
//!   against a benefit with a budget nothing here exhausts, so every claim
//!   should be granted. Given one embedded server (no `--kafka-brokers`) it
//!   measures the local claims journal instead: the comparison of the two
//!   is the point.
//! - `offers`: Decides on the first replica, one after the other, each for a
//!   visitor never seen; for each, the time from the call's start until
//!   EVERY replica counts that visitor in `offered(1d, benefit="bench-claim")`
//!   (Audiences/Size, polled about every millisecond on each replica at
//!   once; a size reads the index without logging a decision of its own):
//!   how long a decision takes to become an exposure everywhere.
//! - `claims-max`: a closed loop, `--concurrency` callers each sending its
//!   next claim when the last one answers, all on ONE benefit (one
//!   partition of the claims topic): the claims per second one partition
//!   sustains.
//!
//! Each command first pushes the bench shop's rule file to the first replica
//! and waits until every replica serves it, so it needs nothing set up but
//! running replicas. Answers that are not a grant count as failures named
//! `NotGranted:<REASON>`: in this setup every claim should be granted.
//! Every loop is bounded: schedules have a count, calls a timeout, polls a
//! deadline.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::Code;
use vitrine_proto::v1 as pb;

use crate::client::{self, Auth};
use crate::pacer::{self, Schedule};
use crate::report::{self, code_name, Recorder, Summary, TIMEOUT};
use crate::run::lock;

/// The benefit every claim is for.
pub const BENEFIT: &str = "bench-claim";
/// How often a replica is asked which revision it serves.
const POLL_EVERY: Duration = Duration::from_millis(1);

/// Settings every cluster command shares.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// gRPC addresses of the replicas; the first takes the pushes.
    pub replicas: Vec<String>,
    /// The bench shop (its rule file is pushed by the tool).
    pub shop: String,
    /// HTTP/2 connections per replica.
    pub connections: usize,
    /// Longest wait for one answer (and for a revision to be served).
    pub timeout: Duration,
    /// Bearer token for Rules/Push.
    pub auth: Auth,
}

/// The `--replicas` list, trimmed; empty entries are refused.
pub fn check_replicas(list: &[String]) -> Result<Vec<String>, String> {
    let replicas: Vec<String> = list.iter().map(|s| s.trim().to_string()).collect();
    if replicas.is_empty() || replicas.iter().any(String::is_empty) {
        return Err("give HOST:PORT,HOST:PORT,... without empty entries".into());
    }
    Ok(replicas)
}

/// The replica call `seq` goes to, and which of its connections: round
/// robin over the replicas first, then over each one's connections.
pub fn route(seq: u64, replicas: usize, connections: usize) -> (usize, usize) {
    let replicas = replicas.max(1) as u64;
    let connections = connections.max(1) as u64;
    ((seq % replicas) as usize, ((seq / replicas) % connections) as usize)
}

/// The bench shop's rule file: one banner (`banner`, changed by every push)
/// and one benefit for everyone with a budget nothing here exhausts and a
/// cap of one per visitor (so the ledger checks a cap on every claim).
pub fn rule_file(shop: &str, banner: &str) -> String {
    format!(
        "# vitrine-loadtest cluster: a shop to measure replicas with.\n\
         shop: {shop}\n\
         \n\
         banners:\n  - banner: {banner}\n\
         \n\
         benefits:\n  - id: {BENEFIT}\n    kind: coupon\n    params: {{ amount: \"1\" }}\n    \
         budget: 1000000000000\n    cap: {{ per_visitor: 1, window: 1d }}\n"
    )
}

/// A tag that keeps this run's banners, visitors and claim ids apart from
/// earlier runs' (a `claim_id` seen before gets its first answer again).
fn run_tag() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{:x}", now.as_millis())
}

/// One replica's clients, one per connection.
#[derive(Debug, Clone)]
struct Replica {
    addr: String,
    rules: pb::rules_client::RulesClient<Channel>,
    decision: pb::decision_client::DecisionClient<Channel>,
    audiences: pb::audiences_client::AudiencesClient<Channel>,
    benefits: Vec<pb::benefits_client::BenefitsClient<Channel>>,
}

async fn connect(config: &ClusterConfig) -> anyhow::Result<Vec<Replica>> {
    if config.replicas.is_empty() {
        bail!("--replicas: give at least one HOST:PORT");
    }
    if config.timeout.is_zero() {
        bail!("--timeout must be positive");
    }
    let mut replicas = Vec::with_capacity(config.replicas.len());
    for addr in &config.replicas {
        let channels = client::connect(addr, config.connections).await?;
        replicas.push(Replica {
            addr: addr.clone(),
            rules: pb::rules_client::RulesClient::new(channels[0].clone()),
            decision: pb::decision_client::DecisionClient::new(channels[0].clone()),
            audiences: pb::audiences_client::AudiencesClient::new(channels[0].clone()),
            benefits: channels
                .into_iter()
                .map(pb::benefits_client::BenefitsClient::new)
                .collect(),
        });
    }
    Ok(replicas)
}

/// The revision `replica` serves for `shop` (0 when it has none yet).
async fn serving(replica: &Replica, shop: &str, timeout: Duration) -> Result<u64, &'static str> {
    let mut client = replica.rules.clone();
    let mut request = tonic::Request::new(pb::GetRequest {
        shop: shop.to_string(),
        revision: 0,
    });
    request.set_timeout(timeout);
    match client.get(request).await {
        Ok(r) => Ok(r.get_ref().revision),
        Err(s) if s.code() == Code::NotFound => Ok(0),
        Err(s) => Err(code_name(s.code())),
    }
}

/// When each replica first passed `probe` (given its index and its
/// clients), polled every [`POLL_EVERY`] on all replicas at once, until
/// `deadline`.
async fn until_all<F, Fut>(replicas: &[Replica], deadline: Instant, probe: F) -> Result<Vec<Instant>, &'static str>
where
    F: Fn(usize, Replica) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<bool, &'static str>> + Send + 'static,
{
    let mut polls = JoinSet::new();
    for (i, replica) in replicas.iter().enumerate() {
        let (replica, probe) = (replica.clone(), probe.clone());
        polls.spawn(async move {
            loop {
                let passed = probe(i, replica.clone()).await;
                let now = Instant::now();
                match passed {
                    Ok(true) => return (i, Ok(now)),
                    Ok(false) if now >= deadline => return (i, Err(TIMEOUT)),
                    Ok(false) => tokio::time::sleep(POLL_EVERY).await,
                    Err(e) => return (i, Err(e)),
                }
            }
        });
    }
    let mut seen = vec![None; replicas.len()];
    while let Some(joined) = polls.join_next().await {
        let (i, at) = joined.map_err(|_| "PollTaskFailed")?;
        seen[i] = Some(at?);
    }
    Ok(seen.into_iter().flatten().collect())
}

/// When each replica first served `revision` (or a later one).
async fn served_by_all(
    replicas: &[Replica],
    shop: &str,
    revision: u64,
    timeout: Duration,
    deadline: Instant,
) -> Result<Vec<Instant>, &'static str> {
    let shop: Arc<str> = shop.into();
    until_all(replicas, deadline, move |_, replica| {
        let shop = shop.clone();
        async move { Ok(serving(&replica, &shop, timeout).await? >= revision) }
    })
    .await
}

/// The latest of the instants, as a time after `start`.
pub fn slowest(start: Instant, seen: &[Instant]) -> Option<Duration> {
    seen.iter().max().map(|last| last.saturating_duration_since(start))
}

/// Pushes `content` to the first replica; the new revision.
async fn push(replica: &Replica, config: &ClusterConfig, content: String) -> Result<u64, String> {
    let mut client = replica.rules.clone();
    let mut request = config.auth.request(pb::PushRequest {
        content,
        dry_run: false,
        expected_revision: 0,
    });
    request.set_timeout(config.timeout);
    match client.push(request).await {
        Ok(r) => Ok(r.get_ref().revision),
        Err(s) => Err(format!("{}: {}", code_name(s.code()), s.message())),
    }
}

/// Pushes the bench file and waits until every replica serves it.
async fn prepare(replicas: &[Replica], config: &ClusterConfig, banner: &str) -> anyhow::Result<u64> {
    let first = &replicas[0];
    let revision = push(first, config, rule_file(&config.shop, banner))
        .await
        .map_err(|e| anyhow::anyhow!("Rules/Push of the bench shop `{}` to {}: {e}", config.shop, first.addr))?;
    let deadline = Instant::now() + config.timeout;
    served_by_all(replicas, &config.shop, revision, config.timeout, deadline)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "revision {revision} of `{}` not served by every replica: {e}",
                config.shop
            )
        })?;
    Ok(revision)
}

/// What `push` measured.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// Rules/Push on the first replica.
    pub call: Summary,
    /// From the call's start until every replica served the revision.
    pub all: Summary,
    /// Replicas.
    pub replicas: usize,
}

impl PushReport {
    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = format!(
            "cluster push: {} pushes to replica 0, {} replica(s) polled every {} ms (Rules/Get)\n\
             push = the Rules/Push call; all-serve = from its start until every replica serves the new revision\n\
             latencies in µs\n\n",
            self.call.requests,
            self.replicas,
            POLL_EVERY.as_millis()
        );
        out.push_str(&report::table(&[("push", &self.call), ("all-serve", &self.all)]));
        out
    }
}

/// `cluster push`: `pushes` pushes, one after the other.
pub async fn push_propagation(config: &ClusterConfig, pushes: u64) -> anyhow::Result<PushReport> {
    let replicas = connect(config).await?;
    let tag = run_tag();
    prepare(&replicas, config, &format!("b-{tag}-0")).await?;
    let (mut call, mut all) = (Recorder::new(), Recorder::new());
    for n in 1..=pushes {
        let content = rule_file(&config.shop, &format!("b-{tag}-{n}"));
        let start = Instant::now();
        let revision = match push(&replicas[0], config, content).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("push {n}: {e}");
                let name = e.split(':').next().unwrap_or("Unknown").to_string();
                call.record(start, Instant::now(), Err(&name));
                all.record(start, Instant::now(), Err(&name));
                continue;
            }
        };
        call.record(start, Instant::now(), Ok(()));
        let deadline = Instant::now() + config.timeout;
        let outcome = served_by_all(&replicas, &config.shop, revision, config.timeout, deadline).await;
        match outcome.as_deref().map(|seen| slowest(start, seen)) {
            Ok(Some(took)) => all.record(start, start + took, Ok(())),
            Ok(None) => all.record(start, Instant::now(), Err("NoReplica")),
            Err(e) => all.record(start, Instant::now(), Err(e)),
        }
    }
    Ok(PushReport {
        call: call.summary(),
        all: all.summary(),
        replicas: replicas.len(),
    })
}

/// The audience `offers` counts: visitors offered the bench benefit today.
const OFFERED: &str = "offered(1d, benefit=\"bench-claim\")";

/// How many visitors `replica` counts in [`OFFERED`].
async fn offered(replica: &Replica, shop: &str, timeout: Duration) -> Result<u64, &'static str> {
    let mut client = replica.audiences.clone();
    let mut request = tonic::Request::new(pb::SizeRequest {
        shop: shop.to_string(),
        expression: OFFERED.to_string(),
        now_ms: 0,
    });
    request.set_timeout(timeout);
    match client.size(request).await {
        Ok(r) => Ok(r.get_ref().size),
        Err(s) => Err(code_name(s.code())),
    }
}

/// When each replica `i` first counted at least `want[i]` visitors in [`OFFERED`].
async fn offered_by_all(
    replicas: &[Replica],
    shop: &str,
    want: &[u64],
    timeout: Duration,
    deadline: Instant,
) -> Result<Vec<Instant>, &'static str> {
    let (shop, want): (Arc<str>, Arc<[u64]>) = (shop.into(), want.into());
    until_all(replicas, deadline, move |i, replica| {
        let (shop, want) = (shop.clone(), want[i]);
        async move { Ok(offered(&replica, &shop, timeout).await? >= want) }
    })
    .await
}

/// What `offers` measured.
#[derive(Debug, Clone)]
pub struct OfferReport {
    /// Decision/Decide on the first replica.
    pub call: Summary,
    /// From the call's start until every replica counts the offer.
    pub all: Summary,
    /// Replicas.
    pub replicas: usize,
}

impl OfferReport {
    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = format!(
            "cluster offers: {} decisions on replica 0, each for a new visitor; {} replica(s) polled every {} ms \
             (Audiences/Size of {OFFERED})\n\
             decide = the Decide call; all-offered = from its start until every replica counts the visitor\n\
             latencies in µs\n\n",
            self.call.requests,
            self.replicas,
            POLL_EVERY.as_millis()
        );
        out.push_str(&report::table(&[("decide", &self.call), ("all-offered", &self.all)]));
        out
    }
}

/// `cluster offers`: `samples` decisions, one after the other.
pub async fn offer_propagation(config: &ClusterConfig, samples: u64) -> anyhow::Result<OfferReport> {
    let replicas = connect(config).await?;
    let tag = run_tag();
    prepare(&replicas, config, &format!("o-{tag}")).await?;
    let mut counted = Vec::with_capacity(replicas.len());
    for r in &replicas {
        let n = offered(r, &config.shop, config.timeout)
            .await
            .map_err(|e| anyhow::anyhow!("Audiences/Size on {}: {e}", r.addr))?;
        counted.push(n);
    }
    let (mut call, mut all) = (Recorder::new(), Recorder::new());
    for n in 0..samples {
        let mut client = replicas[0].decision.clone();
        let mut request = tonic::Request::new(pb::DecideRequest {
            shop: config.shop.clone(),
            visitor: format!("offer-{tag}-{n}"),
            ..pb::DecideRequest::default()
        });
        request.set_timeout(config.timeout);
        let start = Instant::now();
        let offered_it = match client.decide(request).await {
            Ok(r) => r.get_ref().benefit.as_ref().is_some_and(|b| b.id == BENEFIT),
            Err(s) => {
                let name = code_name(s.code());
                call.record(start, Instant::now(), Err(name));
                all.record(start, Instant::now(), Err(name));
                continue;
            }
        };
        call.record(start, Instant::now(), Ok(()));
        if !offered_it {
            all.record(start, Instant::now(), Err("NotOffered"));
            continue;
        }
        for c in &mut counted {
            *c += 1;
        }
        let deadline = Instant::now() + config.timeout;
        let outcome = offered_by_all(&replicas, &config.shop, &counted, config.timeout, deadline).await;
        match outcome.as_deref().map(|seen| slowest(start, seen)) {
            Ok(Some(took)) => all.record(start, start + took, Ok(())),
            Ok(None) => all.record(start, Instant::now(), Err("NoReplica")),
            Err(e) => all.record(start, Instant::now(), Err(e)),
        }
    }
    Ok(OfferReport {
        call: call.summary(),
        all: all.summary(),
        replicas: replicas.len(),
    })
}

/// One claim with its own visitor and `claim_id`; `Err` names its failure.
async fn claim(
    mut client: pb::benefits_client::BenefitsClient<Channel>,
    shop: String,
    id: String,
    timeout: Duration,
) -> Result<(), String> {
    let mut request = tonic::Request::new(pb::ClaimRequest {
        shop,
        visitor: format!("cv-{id}"),
        benefit_id: BENEFIT.into(),
        now_ms: 0,
        claim_id: format!("cc-{id}"),
        context: None,
    });
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.claim(request)).await {
        Ok(Ok(r)) if r.get_ref().granted => Ok(()),
        Ok(Ok(r)) => Err(format!("NotGranted:{}", r.get_ref().reason)),
        Ok(Err(s)) => Err(code_name(s.code()).to_string()),
        Err(_) => Err(TIMEOUT.to_string()),
    }
}

/// What `claims` or `claims-max` measured.
#[derive(Debug, Clone)]
pub struct ClaimsReport {
    /// `open loop at R/s` or `closed loop, C callers`.
    pub mode: String,
    /// Replicas the claims were spread over.
    pub replicas: usize,
    /// The measured claims.
    pub claims: Summary,
    /// Grants per second: open loop, from the first measured claim's
    /// intended send to the last grant (a failure that took the whole
    /// timeout does not stretch it); closed loop, over the run.
    pub granted_rps: f64,
    /// The pacer's latest tick (open loop only).
    pub pacer_max_lag: Option<Duration>,
}

impl ClaimsReport {
    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = format!(
            "cluster claims: {}, round robin over {} replica(s), one benefit, a new visitor and claim_id per claim\n\
             latencies in µs{}\n\n",
            self.mode,
            self.replicas,
            if self.pacer_max_lag.is_some() {
                " from each claim's intended send time"
            } else {
                " from each claim's send"
            }
        );
        out.push_str(&report::table(&[("claim", &self.claims)]));
        let _ = writeln!(
            out,
            "granted {} of {}, {:.1} grants/s; failures: {}",
            self.claims.ok,
            self.claims.requests,
            self.granted_rps,
            self.claims.errors_text()
        );
        if let Some(lag) = self.pacer_max_lag {
            let _ = writeln!(out, "pacer: latest tick {:.3} ms late", lag.as_secs_f64() * 1e3);
        }
        out
    }
}

/// `n` over the time from `from` to `to`; 0 without a positive span.
pub fn per_second(n: u64, from: Instant, to: Option<Instant>) -> f64 {
    match to.map(|t| t.saturating_duration_since(from).as_secs_f64()) {
        Some(secs) if secs > 0.0 => n as f64 / secs,
        _ => 0.0,
    }
}

/// The longest an open-loop run may have calls outstanding.
const MAX_IN_FLIGHT: usize = 50_000;

/// `cluster claims`: `rate` claims per second for `duration` after `warmup`
/// (sent, not measured).
pub async fn claims_open(
    config: &ClusterConfig,
    rate: f64,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<ClaimsReport> {
    if !rate.is_finite() || rate <= 0.0 || duration.is_zero() {
        bail!("--rate and --duration must be positive");
    }
    let warmup_ticks = (rate * warmup.as_secs_f64()).round() as u64;
    let count = warmup_ticks + ((rate * duration.as_secs_f64()).round() as u64).max(1);
    if count > 100_000_000 {
        bail!("{count} claims is more than this tool is meant for");
    }
    let replicas = connect(config).await?;
    let tag = run_tag();
    prepare(&replicas, config, &format!("b-{tag}")).await?;
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    let last_grant = Arc::new(Mutex::new(None::<Instant>));
    let schedule = Schedule {
        start: Instant::now() + Duration::from_millis(20),
        rate,
        count,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pacer = pacer::spawn(schedule, move |tick| tx.send(tick).is_ok()).context("starting the pacer thread")?;
    let mut calls = JoinSet::new();
    while let Some(tick) = rx.recv().await {
        while calls.try_join_next().is_some() {}
        let measured = tick.seq >= warmup_ticks;
        if calls.len() >= MAX_IN_FLIGHT {
            if measured {
                lock(&recorder).overloaded(tick.intended, 1);
            }
            continue;
        }
        let (r, c) = route(tick.seq, replicas.len(), config.connections);
        let client = replicas[r].benefits[c].clone();
        let (shop, id, timeout) = (config.shop.clone(), format!("{tag}-{}", tick.seq), config.timeout);
        let (recorder, last_grant) = (recorder.clone(), last_grant.clone());
        calls.spawn(async move {
            let outcome = claim(client, shop, id, timeout).await;
            let done = Instant::now();
            if measured {
                lock(&recorder).record(
                    tick.intended,
                    done,
                    outcome.as_ref().map(|_| ()).map_err(String::as_str),
                );
                if outcome.is_ok() {
                    let mut last = lock(&last_grant);
                    *last = Some(last.map_or(done, |l: Instant| l.max(done)));
                }
            }
        });
    }
    let pacer = pacer.join().map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    let drain = async { while calls.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(config.timeout + Duration::from_secs(1), drain).await;
    let unfinished = calls.len() as u64;
    calls.abort_all();
    let mut recorder = std::mem::take(&mut *lock(&recorder));
    recorder.unfinished(unfinished);
    let claims = recorder.summary();
    let last_grant = *lock(&last_grant);
    let granted_rps = per_second(claims.ok, schedule.intended(warmup_ticks), last_grant);
    Ok(ClaimsReport {
        mode: format!("open loop at {rate} claims/s for {duration:?} after a {warmup:?} warm-up"),
        replicas: replicas.len(),
        claims,
        granted_rps,
        pacer_max_lag: Some(pacer.max_lag),
    })
}

/// `cluster claims-max`: `concurrency` callers in a closed loop for `duration`.
pub async fn claims_closed(
    config: &ClusterConfig,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<ClaimsReport> {
    if concurrency == 0 || duration.is_zero() {
        bail!("--concurrency and --duration must be positive");
    }
    let replicas = connect(config).await?;
    let tag = run_tag();
    prepare(&replicas, config, &format!("b-{tag}")).await?;
    let start = Instant::now();
    let end = start + duration;
    let mut callers = JoinSet::new();
    for caller in 0..concurrency {
        let (r, c) = route(caller as u64, replicas.len(), config.connections);
        let client = replicas[r].benefits[c].clone();
        let (shop, tag, timeout) = (config.shop.clone(), tag.clone(), config.timeout);
        callers.spawn(async move {
            let mut recorder = Recorder::new();
            let mut n = 0u64;
            while Instant::now() < end {
                let sent = Instant::now();
                let outcome = claim(client.clone(), shop.clone(), format!("{tag}-{caller}-{n}"), timeout).await;
                recorder.record(
                    sent,
                    Instant::now(),
                    outcome.as_ref().map(|_| ()).map_err(String::as_str),
                );
                n += 1;
            }
            recorder
        });
    }
    let mut all = Recorder::new();
    while let Some(joined) = callers.join_next().await {
        match joined {
            Ok(r) => all.merge(&r),
            Err(_) => all.error("CallerFailed", 1),
        }
    }
    let claims = all.summary();
    Ok(ClaimsReport {
        mode: format!("closed loop, {concurrency} callers for {duration:?}"),
        replicas: replicas.len(),
        granted_rps: per_second(claims.ok, start, Some(Instant::now())),
        claims,
        pacer_max_lag: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_list() {
        let list = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check_replicas(&list(&["127.0.0.1:1", " 127.0.0.1:2"])).unwrap(),
            ["127.0.0.1:1", "127.0.0.1:2"]
        );
        assert!(check_replicas(&[]).is_err());
        assert!(check_replicas(&list(&["a:1", "", "b:2"])).is_err());
    }

    #[test]
    fn round_robin_over_replicas_then_connections() {
        let routes: Vec<(usize, usize)> = (0..7).map(|s| route(s, 3, 2)).collect();
        assert_eq!(routes, [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 0)]);
        // Every replica gets the same share of a long schedule.
        let mut per = [0u64; 3];
        for s in 0..3000 {
            per[route(s, 3, 4).0] += 1;
        }
        assert_eq!(per, [1000, 1000, 1000]);
        assert_eq!(route(5, 0, 0), (0, 0), "no replica or connection count is one");
    }

    #[test]
    fn the_bench_file_compiles_with_its_benefit() {
        let text = rule_file("bench-cluster", "b-1");
        let rules = vitrine_core::RuleSet::load(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert!(rules.benefit(BENEFIT).is_some());
        assert_ne!(text, rule_file("bench-cluster", "b-2"), "every push is a change");
    }

    #[test]
    fn all_serve_is_the_slowest_replica() {
        let t0 = Instant::now();
        let seen = [
            t0 + Duration::from_millis(3),
            t0 + Duration::from_millis(9),
            t0 + Duration::from_millis(1),
        ];
        assert_eq!(slowest(t0, &seen), Some(Duration::from_millis(9)));
        assert_eq!(slowest(t0, &[]), None);
    }

    #[test]
    fn rates_over_a_span() {
        let t0 = Instant::now();
        assert_eq!(per_second(500, t0, Some(t0 + Duration::from_millis(500))), 1000.0);
        assert_eq!(per_second(500, t0, Some(t0)), 0.0);
        assert_eq!(per_second(500, t0, None), 0.0);
    }
}
