//! Crash recovery of the real binary: `vitrine serve` runs as a child
//! process, is killed with SIGKILL (`kill -9`) under load or has its files
//! damaged, and is restarted on the same `--data-dir`. What it serves then is
//! checked against a model of what was acknowledged. A call in flight at the
//! kill has an unknown outcome: the checks accept either outcome for it, then
//! resolve it by retrying, as a client would.
//!
//! Kill instants come from a seeded generator; `VITRINE_CRASH_SEED=N` picks
//! another seed. A failing test prints its seed and every server's log.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fs;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;
use tokio::task::JoinSet;
use tonic::Status;
use vitrine::clock::now_ms;
use vitrine::storage::wal::SEGMENT_HEADER_LEN;
use vitrine_core::hash::SplitMix64;
use vitrine_proto::v1 as pb;

use crate::support::{self, connect, free_port, http_get_blocking, temp_dir, wait_until, Clients, TempDir, WAIT};

const SHOP: &str = "crash";
/// The longest wait for a start, a catch-up or a snapshot; a timeout fails the test.
/// A call that takes longer hangs: the test fails instead of waiting forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_SEED: u64 = 0x5eed_c0de;

/// A rule file with one benefit per budget (`coupon-1`, ...), each only for
/// visitors who bought once, capped at one grant per visitor, with its
/// budget of grants in all.
fn rules(budgets: &[u64]) -> String {
    let mut out = format!(
        "shop: {SHOP}
audiences:
  bought_once: purchase_count(30d) == 1
  bought_twice: purchase_count(30d) >= 2
banners:
  - banner: default
benefits:
"
    );
    for (i, budget) in budgets.iter().enumerate() {
        let n = i + 1;
        out.push_str(&format!(
            "  - id: coupon-{n}
    when: bought_once
    kind: coupon
    params: {{ amount: \"5\" }}
    cap: {{ per_visitor: 1, window: 30d }}
    budget: {budget}
"
        ));
    }
    out
}

// ------------------------------------------------------------------ helpers

fn seed() -> u64 {
    std::env::var("VITRINE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// The files of `dir` whose names end with `suffix`, sorted by name.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_str().is_some_and(|s| s.ends_with(suffix)))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The value of a field in the first log line with `message` (the
/// journals' recovery reports are logged as flat `field=value` fields).
fn recovery_field(log: &str, message: &str, field: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains(message))
        .unwrap_or_else(|| panic!("no `{message}` in the log:\n{log}"));
    let at = line
        .find(&format!(" {field}="))
        .unwrap_or_else(|| panic!("no `{field}` in `{line}`"));
    let value = &line[at + field.len() + 2..];
    let end = value.find(' ').unwrap_or(value.len());
    value[..end].trim_matches('"').to_string()
}

// ------------------------------------------------------------------- scene

/// One test's servers: their data dir, rule file and logs. If the test
/// fails, prints the seed and every server's log.
struct Scene {
    dir: TempDir,
    seed: u64,
    starts: AtomicUsize,
}

impl Scene {
    fn new(name: &str, rules: &str) -> Scene {
        let dir = temp_dir(name);
        fs::write(dir.path().join("rules").join(format!("{SHOP}.yaml")), rules).unwrap();
        fs::create_dir_all(dir.path().join("logs")).unwrap();
        Scene {
            dir,
            seed: seed(),
            starts: AtomicUsize::new(0),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Spawns `vitrine serve` on fresh ports with `extra` flags (a snapshot
    /// every second unless they say otherwise), its stderr going to a log
    /// file of its own; does not wait for it.
    fn spawn(&self, extra: &[&str]) -> Vitrine {
        let n = self.starts.fetch_add(1, Ordering::Relaxed);
        let log = self.dir.path().join(format!("logs/serve-{n:02}.log"));
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_vitrine"));
        // Only the flags below configure it, whatever the environment holds.
        for (key, _) in std::env::vars() {
            if key.starts_with("VITRINE_") {
                command.env_remove(key);
            }
        }
        let dir = self.dir.path();
        command
            .arg("serve")
            .arg(format!("--grpc-addr={grpc}"))
            .arg(format!("--metrics-addr={metrics}"))
            .arg(format!("--rules-dir={}", dir.join("rules").display()))
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg("--shutdown-grace=0s")
            // No queue-wait shedding (as in support::test_config): on a busy
            // test machine the post-crash checks would be shed, not answered.
            .arg("--max-queue-wait=0");
        if !extra.iter().any(|f| f.starts_with("--snapshot-interval")) {
            command.arg("--snapshot-interval=1s");
        }
        command
            .args(extra)
            .env("VITRINE_LOG", "info")
            // Plain log lines, so that the tests can search them.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        Vitrine {
            child: command.spawn().unwrap(),
            grpc,
            metrics,
            log,
        }
    }

    /// Starts a server and waits until `/readyz` answers 200. A start that
    /// lost its port to another process is retried on other ports.
    fn start(&self, extra: &[&str]) -> Vitrine {
        for _ in 0..5 {
            let mut server = self.spawn(extra);
            match server.wait_ready() {
                Ok(()) => return server,
                Err(status) => {
                    let log = server.log();
                    assert!(
                        log.contains("binding --"),
                        "vitrine exited before it was ready ({status}):\n{log}"
                    );
                }
            }
        }
        panic!("no free ports in 5 attempts");
    }

    /// Starts a server that must refuse to start: returns its exit status
    /// and log; panics if it ever reports ready.
    fn start_refused(&self, extra: &[&str]) -> (ExitStatus, String) {
        let mut server = self.spawn(extra);
        match server.wait_ready() {
            Ok(()) => panic!("vitrine started and reported ready:\n{}", server.log()),
            Err(status) => (status, server.log()),
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!("seed {0} (VITRINE_CRASH_SEED={0} repeats this run)", self.seed);
        for log in files(&self.dir.path().join("logs"), ".log") {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(300)..];
            eprintln!("---- {} (last {} lines) ----", log.display(), tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// A `vitrine serve` child process; killed (SIGKILL) on drop, so that a
/// failing test leaves no process behind.
struct Vitrine {
    child: Child,
    grpc: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Drop for Vitrine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vitrine {
    /// Waits until `/readyz` answers 200; the exit status if the process ends first.
    fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(status);
            }
            if http_get_blocking(self.metrics, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return Ok(());
            }
            assert!(start.elapsed() < WAIT, "not ready after {WAIT:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`, then reaps the process.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, a clean shutdown (with its final snapshot); waits for the exit.
    fn terminate(mut self) {
        let log = self.log.clone();
        support::terminate(&mut self.child, || fs::read_to_string(&log).unwrap_or_default());
    }

    /// Snapshots this process has written so far.
    fn snapshots_written(&self) -> usize {
        self.log().matches("snapshot written").count()
    }

    /// Waits until this process has written a snapshot after the `before`th.
    fn wait_for_snapshot(&self, before: usize) {
        wait_until("a snapshot", || self.snapshots_written() > before);
    }

    /// The value of one series on /metrics.
    fn metric(&self, series: &str) -> Option<f64> {
        let text = http_get_blocking(self.metrics, "/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
    }
}

// ------------------------------------------------------------------- calls

/// Awaits a call; a call that does not end in [`CALL_TIMEOUT`] fails the test.
async fn call<T>(f: impl Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T, Status> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .expect("a call hung")
        .map(tonic::Response::into_inner)
}

/// A purchase by `visitor`, its only one: an id of its own, now.
fn purchase(visitor: &str) -> pb::Event {
    pb::Event {
        shop: SHOP.into(),
        visitor: visitor.into(),
        action: "purchase".into(),
        item: "sku-1".into(),
        price: Some(10.0),
        ts: Some(now_ms()),
        id: format!("order-{visitor}"),
        ..pb::Event::default()
    }
}

/// Tracks `events`; an answer must accept every one of them.
async fn track(c: &mut Clients, events: Vec<pb::Event>) -> Result<(), Status> {
    let n = events.len() as u32;
    let r = call(c.ingest.track(pb::TrackRequest { events })).await?;
    assert_eq!((r.accepted, r.rejected.len()), (n, 0), "{r:?}");
    Ok(())
}

/// Claims `benefit` for `visitor` under `claim_id`; the answer's reason.
async fn claim(c: &mut Clients, benefit: &str, visitor: &str, claim_id: &str) -> Result<String, Status> {
    let r = call(c.benefits.claim(pb::ClaimRequest {
        shop: SHOP.into(),
        visitor: visitor.into(),
        benefit_id: benefit.into(),
        now_ms: 0,
        claim_id: claim_id.into(),
        context: None,
    }))
    .await?;
    assert_eq!(r.granted, r.reason == "GRANTED", "{r:?}");
    Ok(r.reason)
}

async fn size(c: &mut Clients, expression: &str) -> u64 {
    call(c.audiences.size(pb::SizeRequest {
        shop: SHOP.into(),
        expression: expression.into(),
        now_ms: 0,
    }))
    .await
    .unwrap()
    .size
}

/// The audiences `visitor` matches, by Decide's explanation.
async fn audiences_of(c: &mut Clients, visitor: &str) -> Vec<String> {
    let d = call(c.decision.decide(pb::DecideRequest {
        shop: SHOP.into(),
        visitor: visitor.into(),
        explain: true,
        ..pb::DecideRequest::default()
    }))
    .await
    .unwrap();
    d.explanation.unwrap().audiences
}

/// Runs `f` on every item, four tasks at a time.
async fn for_each_concurrently<T, Fut>(items: Vec<T>, f: impl Fn(T) -> Fut + Clone + Send + 'static)
where
    T: Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let chunk = items.len().div_ceil(4).max(1);
    let mut items = items.into_iter();
    let mut tasks = JoinSet::new();
    loop {
        let part: Vec<T> = items.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        let f = f.clone();
        tasks.spawn(async move {
            for item in part {
                f(item).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

// ------------------------------------------------------------------- model

/// A claim and the answer it got.
#[derive(Debug, Clone)]
struct Answer {
    benefit: String,
    claim_id: String,
    visitor: String,
    reason: String,
}

/// What the server acknowledged, over every round and restart.
#[derive(Default, Clone)]
struct Model {
    /// Every purchase sent, each by a visitor of its own, acknowledged or not.
    sent: Vec<pb::Event>,
    /// Visitors whose purchase was acknowledged.
    acked: HashSet<String>,
    /// Every acknowledged claim answer.
    answers: Vec<Answer>,
}

impl Model {
    /// Tracks purchases by `visitors` in one call, which must succeed.
    async fn track_acked(&mut self, c: &mut Clients, visitors: &[String]) {
        let events: Vec<pb::Event> = visitors.iter().map(|v| purchase(v)).collect();
        track(c, events.clone()).await.unwrap();
        self.acked.extend(visitors.iter().cloned());
        self.sent.extend(events);
    }

    /// Claims, which must be answered; returns the reason.
    async fn claim_acked(&mut self, c: &mut Clients, benefit: &str, visitor: &str, claim_id: &str) -> String {
        let reason = claim(c, benefit, visitor, claim_id).await.unwrap();
        self.answers.push(Answer {
            benefit: benefit.into(),
            claim_id: claim_id.into(),
            visitor: visitor.into(),
            reason: reason.clone(),
        });
        reason
    }

    fn grants<'a>(&'a self, benefit: &'a str) -> impl Iterator<Item = &'a Answer> + 'a {
        self.answers
            .iter()
            .filter(move |a| a.benefit == benefit && a.reason == "GRANTED")
    }

    /// Every acknowledged purchase is in the index exactly once: each
    /// acknowledged visitor (all of them when `visitors` is `None`) is in
    /// `bought_once`, no one in `bought_twice`, and `bought_once` counts no
    /// more than were sent.
    async fn check_events(&self, c: &mut Clients, visitors: Option<Vec<String>>) {
        let visitors = visitors.unwrap_or_else(|| self.acked.iter().cloned().collect());
        let cc = c.clone();
        for_each_concurrently(visitors, move |v| {
            let mut c = cc.clone();
            async move {
                let audiences = audiences_of(&mut c, &v).await;
                assert_eq!(audiences, ["bought_once"], "acknowledged purchase of {v}");
            }
        })
        .await;
        assert_eq!(size(c, "bought_twice").await, 0, "a purchase counted twice");
        let once = size(c, "bought_once").await;
        assert!(
            (self.acked.len() as u64..=self.sent.len() as u64).contains(&once),
            "bought_once = {once}: {} purchases acknowledged, {} sent",
            self.acked.len(),
            self.sent.len()
        );
    }

    /// Every acknowledged claim answer is what a retry of its claim_id gets.
    async fn check_answers(&self, c: &Clients) {
        let cc = c.clone();
        for_each_concurrently(self.answers.clone(), move |a| {
            let mut c = cc.clone();
            async move {
                let again = claim(&mut c, &a.benefit, &a.visitor, &a.claim_id).await.unwrap();
                assert_eq!(again, a.reason, "a retry of an acknowledged claim: {a:?}");
            }
        })
        .await;
    }

    /// New visitors claim `benefit` until BUDGET_EXHAUSTED; returns how
    /// many were granted, which must fit in what the acknowledged grants
    /// left. Run it before any retry: a lost grant frees budget, which a
    /// retry of its claim_id would quietly take again.
    async fn exhaust(&mut self, c: &mut Clients, benefit: &str, budget: u64, tag: &str) -> u64 {
        let answered = self.grants(benefit).count() as u64;
        assert!(answered <= budget, "{answered} grants of {benefit}, budget {budget}");
        let fresh: Vec<String> = (0..=budget - answered)
            .map(|i| format!("{tag}-{benefit}-fresh-{i}"))
            .collect();
        self.track_acked(c, &fresh).await;
        let mut more = 0;
        for visitor in &fresh {
            let reason = self.claim_acked(c, benefit, visitor, visitor).await;
            if reason == "BUDGET_EXHAUSTED" {
                break;
            }
            assert_eq!(reason, "GRANTED", "a new visitor's claim of {benefit}");
            more += 1;
        }
        assert!(
            answered + more <= budget,
            "{benefit}: {more} new grants until BUDGET_EXHAUSTED, but {answered} of the budget of {budget} \
             were acknowledged before (an acknowledged grant was lost)"
        );
        more
    }

    /// No visitor was granted `benefit` twice, and every visitor granted
    /// gets CAP_REACHED under a new claim_id.
    async fn check_caps(&mut self, c: &mut Clients, benefit: &str, tag: &str) {
        let mut granted = BTreeSet::new();
        for a in self.grants(benefit) {
            assert!(granted.insert(a.visitor.clone()), "{} granted twice: {a:?}", a.visitor);
        }
        for (i, visitor) in granted.iter().enumerate() {
            let reason = self
                .claim_acked(c, benefit, visitor, &format!("{tag}-{benefit}-cap-{i}"))
                .await;
            assert_eq!(reason, "CAP_REACHED", "{visitor} claimed {benefit} again");
        }
    }
}

// ---------------------------------------------------- 1. embedded, kill -9

const ROUNDS: usize = 4;
/// Each round's benefit's budget: the small ones run out before the kill,
/// so the crash meets BUDGET_EXHAUSTED answers; the large ones do not, so
/// it meets grants in flight.
const BUDGETS: [u64; ROUNDS] = [40, 500, 40, 500];
const TRACKERS: usize = 4;
const CLAIMERS: usize = 3;
const EVENTS_PER_TRACK: usize = 4;

/// Visitors whose purchase was acknowledged, for the claimers.
#[derive(Default)]
struct Pool {
    /// Not claimed yet.
    fresh: VecDeque<String>,
    /// Claimed at least once.
    claimed: Vec<String>,
}

impl Pool {
    /// A visitor to claim for: mostly a fresh one, one time in four one
    /// already claimed for (a second claim_id, which the cap must refuse).
    fn pick(&mut self, rng: &mut SplitMix64) -> Option<String> {
        if rng.below(4) == 0 && !self.claimed.is_empty() {
            let i = rng.below(self.claimed.len() as u64) as usize;
            return Some(self.claimed[i].clone());
        }
        let v = self.fresh.pop_front()?;
        self.claimed.push(v.clone());
        Some(v)
    }
}

/// What one round of load saw: answered calls, and the one call per task
/// in flight at the kill (outcome unknown).
#[derive(Default)]
struct Seen {
    acked_events: Vec<pb::Event>,
    unknown_events: Vec<pb::Event>,
    answers: Vec<Answer>,
    unknown_claims: Vec<Answer>,
}

/// Sends Track calls of [`EVENTS_PER_TRACK`] new visitors each until a call
/// fails, which only the kill may cause.
async fn tracker(mut c: Clients, round: usize, t: usize, pool: Arc<Mutex<Pool>>, killed: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    for i in 0.. {
        if killed.load(Ordering::SeqCst) {
            break;
        }
        let batch: Vec<pb::Event> = (0..EVENTS_PER_TRACK)
            .map(|k| purchase(&format!("r{round}-t{t}-{i}-{k}")))
            .collect();
        match track(&mut c, batch.clone()).await {
            Ok(()) => {
                pool.lock()
                    .unwrap()
                    .fresh
                    .extend(batch.iter().map(|e| e.visitor.clone()));
                seen.acked_events.extend(batch);
            }
            Err(status) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "Track failed before the kill: {status:?}"
                );
                seen.unknown_events = batch;
                break;
            }
        }
    }
    seen
}

/// Claims `coupon-{round}` for visitors of the pool, each claim with a
/// claim_id of its own, until a call fails, which only the kill may cause.
async fn claimer(
    mut c: Clients,
    round: usize,
    n: usize,
    seed: u64,
    pool: Arc<Mutex<Pool>>,
    killed: Arc<AtomicBool>,
) -> Seen {
    let mut rng = SplitMix64::new(seed);
    let mut seen = Seen::default();
    let benefit = format!("coupon-{round}");
    for i in 0.. {
        if killed.load(Ordering::SeqCst) {
            break;
        }
        let Some(visitor) = pool.lock().unwrap().pick(&mut rng) else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let claim_id = format!("r{round}-c{n}-{i}");
        let mut answer = Answer {
            benefit: benefit.clone(),
            claim_id,
            visitor,
            reason: String::new(),
        };
        match claim(&mut c, &answer.benefit, &answer.visitor, &answer.claim_id).await {
            Ok(reason) => {
                answer.reason = reason;
                seen.answers.push(answer);
            }
            Err(status) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "Claim failed before the kill: {status:?}"
                );
                seen.unknown_claims.push(answer);
                break;
            }
        }
    }
    seen
}

/// One round: Track and Claim load on `server`, killed with SIGKILL at a
/// random instant; returns what the clients saw.
async fn load_and_kill(server: Vitrine, round: usize, rng: &mut SplitMix64) -> (Seen, u64) {
    let c = connect(server.grpc).await;
    let pool = Arc::new(Mutex::new(Pool::default()));
    let killed = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for t in 0..TRACKERS {
        tasks.spawn(tracker(c.clone(), round, t, pool.clone(), killed.clone()));
    }
    for n in 0..CLAIMERS {
        tasks.spawn(claimer(
            c.clone(),
            round,
            n,
            rng.next_u64(),
            pool.clone(),
            killed.clone(),
        ));
    }
    let delay = 150 + rng.below(750);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    // Set before the kill: any failure seen before it is a failure of the server.
    killed.store(true, Ordering::SeqCst);
    server.kill();
    let mut seen = Seen::default();
    while let Some(done) = tasks.join_next().await {
        let s = done.unwrap();
        seen.acked_events.extend(s.acked_events);
        seen.unknown_events.extend(s.unknown_events);
        seen.answers.extend(s.answers);
        seen.unknown_claims.extend(s.unknown_claims);
    }
    (seen, delay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_track_and_claim_loses_no_acknowledged_event_or_claim() {
    let scene = Scene::new("crash-embedded", &rules(&BUDGETS));
    let mut rng = SplitMix64::new(scene.seed);
    let mut model = Model::default();
    let mut server = scene.start(&[]);
    for round in 1..=ROUNDS {
        if round > 1 {
            // So that this round's restart loads a snapshot and replays the
            // events journal after it.
            server.wait_for_snapshot(0);
        }
        let (seen, delay) = load_and_kill(server, round, &mut rng).await;
        server = scene.start(&[]);
        if round > 1 {
            assert!(
                server.log().contains("snapshot loaded"),
                "round {round}: no snapshot loaded"
            );
        }
        let mut c = connect(server.grpc).await;
        let benefit = format!("coupon-{round}");
        let budget = BUDGETS[round - 1];
        println!(
            "round {round}: killed after {delay} ms; purchases {} acknowledged, {} unknown; \
             claims {} answered ({} granted), {} unknown",
            seen.acked_events.len(),
            seen.unknown_events.len(),
            seen.answers.len(),
            seen.answers.iter().filter(|a| a.reason == "GRANTED").count(),
            seen.unknown_claims.len(),
        );

        // Events: every acknowledged one is there, those in flight may be.
        let acked: Vec<String> = seen.acked_events.iter().map(|e| e.visitor.clone()).collect();
        model.acked.extend(acked.iter().cloned());
        model.sent.extend(seen.acked_events.iter().cloned());
        model.sent.extend(seen.unknown_events.iter().cloned());
        model.check_events(&mut c, Some(acked)).await;
        for e in &seen.unknown_events {
            let audiences = audiences_of(&mut c, &e.visitor).await;
            assert!(
                audiences.is_empty() || audiences == ["bought_once"],
                "{}: {audiences:?}",
                e.visitor
            );
        }
        // A retrying client sends again what it had no answer for, and a
        // few acknowledged ones (answers it lost): each still counts once,
        // whether the snapshot or the journal held it.
        let mut again = seen.unknown_events.clone();
        for _ in 0..20 {
            let e = &model.sent[rng.below(model.sent.len() as u64) as usize];
            if model.acked.contains(&e.visitor) {
                again.push(e.clone());
            }
        }
        track(&mut c, again.clone()).await.unwrap();
        model.acked.extend(again.into_iter().map(|e| e.visitor));
        assert_eq!(size(&mut c, "bought_once").await, model.sent.len() as u64);
        assert_eq!(size(&mut c, "bought_twice").await, 0);

        // Claims: every answer given stands; those in flight get one now.
        let reasons = ["GRANTED", "CAP_REACHED", "BUDGET_EXHAUSTED"];
        for a in &seen.answers {
            assert!(reasons.contains(&a.reason.as_str()), "{a:?}");
        }
        let tag = format!("r{round}");
        model.answers.extend(seen.answers);
        let more = model.exhaust(&mut c, &benefit, budget, &tag).await;
        model.check_answers(&c).await;
        for a in &seen.unknown_claims {
            let reason = model.claim_acked(&mut c, &a.benefit, &a.visitor, &a.claim_id).await;
            assert!(reasons.contains(&reason.as_str()), "{a:?}: {reason}");
        }
        // Every claim has an answer now (those in flight got the one they
        // had, if any): the grants answered are the ledger's, exactly.
        assert_eq!(
            model.grants(&benefit).count() as u64,
            budget,
            "{benefit}: grants answered, in flight and new"
        );
        model.check_caps(&mut c, &benefit, &tag).await;
        println!("round {round}: {more} new grants until BUDGET_EXHAUSTED");
        // Earlier rounds' benefits stay exhausted: no grant of theirs was lost.
        for earlier in 1..round {
            let visitor = format!("r{round}-late-{earlier}");
            model.track_acked(&mut c, std::slice::from_ref(&visitor)).await;
            let reason = model
                .claim_acked(&mut c, &format!("coupon-{earlier}"), &visitor, &visitor)
                .await;
            assert_eq!(reason, "BUDGET_EXHAUSTED", "coupon-{earlier}");
        }
    }
    // Everything, over every round, once more on the last server.
    let mut c = connect(server.grpc).await;
    model.check_events(&mut c, None).await;
    assert_eq!(size(&mut c, "bought_once").await, model.sent.len() as u64);
    model.check_answers(&c).await;
}

// ------------------------------------------------------- 2. Kafka, kill -9

const TOPIC: &str = "crash.behavior";
const PARTITIONS: i32 = 4;

/// A purchase message of visitor `k-{n}`; the same `n` gives the same bytes
/// (a redelivery, which must count once).
fn kafka_purchase(n: u64, ts: i64) -> String {
    format!(
        r#"{{"shop":"{SHOP}","visitor":"k-{n}","action":"purchase","item":"sku-{}","price":10,"id":"order-k-{n}","ts":{ts}}}"#,
        n % 7
    )
}

/// What the producer thread sent, every message delivered.
#[derive(Debug, Default)]
struct Produced {
    visitors: AtomicU64,
    messages: AtomicU64,
}

/// Produces purchases of new visitors at a steady pace until `stop`, one
/// message in ten a redelivery of an earlier one; then one new visitor per
/// partition, so that once those are applied every partition has been read
/// to its end.
fn produce_until(brokers: &str, seed: u64, stop: &AtomicBool, produced: &Produced) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "1")
        .create()
        .unwrap();
    let ts = now_ms();
    let mut rng = SplitMix64::new(seed);
    let mut visitors = 0;
    let send = |n: u64, partition: Option<i32>| {
        let key = format!("k-{n}");
        let payload = kafka_purchase(n, ts);
        let mut record = BaseRecord::to(TOPIC).key(&key).payload(&payload);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    };
    let mut messages = 0;
    while !stop.load(Ordering::SeqCst) {
        for _ in 0..50 {
            if visitors > 0 && rng.below(10) == 0 {
                send(rng.below(visitors), None);
            } else {
                send(visitors, None);
                visitors += 1;
            }
            messages += 1;
        }
        // Counted once delivered: the test's model is what the topic holds.
        producer.flush(WAIT).unwrap();
        produced.visitors.store(visitors, Ordering::SeqCst);
        produced.messages.store(messages, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in 0..PARTITIONS {
        send(visitors, Some(p));
        visitors += 1;
        messages += 1;
    }
    producer.flush(WAIT).unwrap();
    produced.visitors.store(visitors, Ordering::SeqCst);
    produced.messages.store(messages, Ordering::SeqCst);
}

/// Sets its flag when dropped: stops the producer thread however the test ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The Kafka offsets (partition, next offset) of the snapshot a start loaded, from its log.
fn loaded_offsets(log: &str) -> Vec<(i32, i64)> {
    let line = log
        .lines()
        .find(|l| l.contains("snapshot loaded"))
        .unwrap_or_else(|| panic!("no snapshot loaded:\n{log}"));
    // `kafka_offsets="partition:offset,..."`
    let list = line
        .split("kafka_offsets=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no Kafka offsets in `{line}`"));
    list.split(',')
        .map(|pair| {
            let (p, o) = pair.split_once(':').unwrap();
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_kafka_ingest_resumes_from_snapshots_with_nothing_lost_or_doubled() {
    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    // Cluster mode reads the claims topic too (the mock has no CreateTopics).
    cluster.create_topic("vitrine.claims", 6, 1).unwrap();
    cluster.create_topic("vitrine.decisions", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let scene = Scene::new("crash-kafka", &rules(&[10]));
    let mut rng = SplitMix64::new(scene.seed);
    let flags = [
        format!("--kafka-brokers={brokers}"),
        format!("--kafka-topic={TOPIC}"),
        "--kafka-group=crash".to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let produced = Arc::new(Produced::default());
    let producer = {
        let (brokers, seed, stop, produced) = (brokers.clone(), rng.next_u64(), stop.0.clone(), produced.clone());
        std::thread::spawn(move || produce_until(&brokers, seed, &stop, &produced))
    };
    // The topic is not empty at the first start, so that every snapshot
    // covers part of it.
    wait_until("the first messages", || produced.messages.load(Ordering::SeqCst) >= 100);

    let mut server = scene.start(&flags);
    for round in 1..=3 {
        // A snapshot taken mid-stream once caught up, then the kill a
        // random instant later.
        server.wait_for_snapshot(server.snapshots_written());
        let delay = rng.below(1000);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill();
        server = scene.start(&flags);
        assert!(
            server.log().contains("snapshot loaded"),
            "round {round}: no snapshot loaded"
        );
        println!(
            "round {round}: killed {delay} ms after a snapshot, {} messages produced by then",
            produced.messages.load(Ordering::SeqCst)
        );
    }
    drop(stop);
    producer.join().unwrap();
    let visitors = produced.visitors.load(Ordering::SeqCst);
    let messages = produced.messages.load(Ordering::SeqCst);

    // Every visitor is in (the last ones mark the end of every partition),
    // and every redelivery counted once, across the kills.
    let mut c = connect(server.grpc).await;
    let start = Instant::now();
    let mut once = 0;
    while once != visitors {
        assert!(
            start.elapsed() < WAIT,
            "bought_once stayed at {once} of {visitors} visitors ({messages} messages)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        once = size(&mut c, "bought_once").await;
    }
    assert_eq!(
        size(&mut c, "bought_twice").await,
        0,
        "a redelivered purchase counted twice"
    );
    println!("{visitors} visitors in {messages} messages");

    // The last start resumed from its snapshot's offsets: it applied
    // exactly the rest of the topic.
    let log = server.log();
    let covered: i64 = loaded_offsets(&log).iter().map(|(_, o)| o).sum();
    assert!(covered > 0, "the snapshot covers part of the topic");
    let applied = server
        .metric("vitrine_ingest_events_applied_total{action=\"purchase\"}")
        .unwrap();
    assert_eq!(
        applied as i64,
        messages as i64 - covered,
        "the last start applied the topic after its snapshot's offsets, once"
    );
}

// ------------------------------------------------ 3. damaged files on disk

/// A batch of a write-ahead-log segment (format in `storage/wal/mod.rs`'s docs and `docs/storage.md`):
/// where it starts, its length with its 28-byte header, its first record's
/// LSN - 1 and its record count.
#[derive(Debug, Clone, Copy)]
struct WalBatch {
    offset: usize,
    len: usize,
    seq: u64,
    count: u32,
}

/// The batches of a segment file, which must hold nothing else after its header.
fn wal_batches(bytes: &[u8]) -> Vec<WalBatch> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while at < bytes.len() {
        assert_eq!(&bytes[at..at + 8], b"VTRNBTCH", "a batch at byte {at}");
        let len = 28 + u32_at(at + 8) as usize;
        let count = u32_at(at + 12);
        let seq = u64::from_le_bytes(bytes[at + 16..at + 24].try_into().unwrap());
        out.push(WalBatch {
            offset: at,
            len,
            seq,
            count,
        });
        at += len;
    }
    assert_eq!(at, bytes.len(), "the segment ends with a whole batch");
    out
}

/// The one segment of the log in `dir`.
fn only_segment(dir: &Path) -> PathBuf {
    let segments = files(dir, ".wal");
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments[0].clone()
}

/// Purchases by `n` new visitors, one Track call each (so one journal batch each).
async fn track_one_by_one(model: &mut Model, c: &mut Clients, prefix: &str, n: usize) {
    for i in 0..n {
        model.track_acked(c, &[format!("{prefix}-{i}")]).await;
    }
}

/// Claims `benefit` for the first `n` visitors of `prefix`, and once more
/// for the first of them under another claim_id (the cap refuses it).
async fn claim_some(model: &mut Model, c: &mut Clients, benefit: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let visitor = format!("{prefix}-{i}");
        let reason = model
            .claim_acked(c, benefit, &visitor, &format!("{visitor}-{benefit}-a"))
            .await;
        assert_eq!(reason, "GRANTED");
    }
    let visitor = format!("{prefix}-0");
    let reason = model
        .claim_acked(c, benefit, &visitor, &format!("{visitor}-{benefit}-b"))
        .await;
    assert_eq!(reason, "CAP_REACHED");
}

/// Everything acknowledged is served exactly: every purchase once; for
/// `benefit`, what is left of its budget, every claim answer on retry, caps.
async fn check_exactly(model: &mut Model, c: &mut Clients, benefit: &str, budget: u64) {
    model.check_events(c, None).await;
    assert_eq!(size(c, "bought_once").await, model.acked.len() as u64);
    model.exhaust(c, benefit, budget, "check").await;
    model.check_answers(c).await;
    assert_eq!(model.grants(benefit).count() as u64, budget);
    model.check_caps(c, benefit, "check").await;
}

const SMALL_BUDGET: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshots_are_set_aside_and_the_journals_restore_everything() {
    let scene = Scene::new("crash-snapshots", &rules(&[SMALL_BUDGET]));
    let mut model = Model::default();
    // Snapshots only at shutdown: three phases, each ended by SIGTERM, make
    // exactly three, the first of which holds the first phase only.
    let flags = ["--snapshot-interval=0"];
    for phase in 0..3 {
        let server = scene.start(&flags);
        let mut c = connect(server.grpc).await;
        let prefix = format!("p{phase}");
        track_one_by_one(&mut model, &mut c, &prefix, 10).await;
        claim_some(&mut model, &mut c, "coupon-1", &prefix, 3).await;
        server.terminate();
    }

    // The newest cut short, the one before it with a bit flipped.
    let dir = scene.data().join("snapshots");
    let snapshots = files(&dir, ".vsnap");
    assert_eq!(snapshots.len(), 3, "--snapshot-keep 3: {snapshots:?}");
    let (oldest, flipped, newest) = (&snapshots[0], &snapshots[1], &snapshots[2]);
    let bytes = fs::read(newest).unwrap();
    fs::write(newest, &bytes[..bytes.len() / 2]).unwrap();
    let mut bytes = fs::read(flipped).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    fs::write(flipped, &bytes).unwrap();

    let server = scene.start(&flags);
    let log = server.log();
    assert_eq!(
        files(&dir, ".damaged"),
        [
            PathBuf::from(format!("{}.damaged", flipped.display())),
            PathBuf::from(format!("{}.damaged", newest.display()))
        ]
    );
    assert_eq!(server.metric("vitrine_snapshot_load_failures_total"), Some(2.0));
    assert!(
        log.lines()
            .any(|l| l.contains("snapshot loaded") && l.contains(&oldest.display().to_string())),
        "the oldest snapshot is loaded:\n{log}"
    );
    assert_eq!(
        recovery_field(&log, "events journal replayed", "records"),
        "20",
        "the journal replays the two phases the damaged snapshots held"
    );
    let mut c = connect(server.grpc).await;
    check_exactly(&mut model, &mut c, "coupon-1", SMALL_BUDGET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_of_the_claims_journal_is_cut_off_and_every_acknowledged_claim_counts() {
    // One benefit per part, so that each part can exhaust its own budget.
    let scene = Scene::new("crash-claims", &rules(&[SMALL_BUDGET, SMALL_BUDGET]));
    let mut rng = SplitMix64::new(scene.seed);
    let mut model = Model::default();
    let claims = scene.data().join("claims");

    // (1) Garbage after the last batch.
    let server = scene.start(&[]);
    let mut c = connect(server.grpc).await;
    track_one_by_one(&mut model, &mut c, "a", 8).await;
    claim_some(&mut model, &mut c, "coupon-1", "a", 4).await;
    server.kill();
    let segment = only_segment(&claims);
    let whole = fs::read(&segment).unwrap();
    let garbage: Vec<u8> = (0..37).map(|_| rng.next_u64() as u8).collect();
    fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&garbage)
        .unwrap();

    let server = scene.start(&[]);
    let log = server.log();
    assert_eq!(recovery_field(&log, "claims journal replayed", "truncated_bytes"), "37");
    assert_eq!(fs::read(&segment).unwrap(), whole, "cut back to its last whole batch");
    let mut c = connect(server.grpc).await;
    check_exactly(&mut model, &mut c, "coupon-1", SMALL_BUDGET).await;

    // (2) A batch cut short: what a crash in the middle of its write leaves.
    track_one_by_one(&mut model, &mut c, "b", 8).await;
    claim_some(&mut model, &mut c, "coupon-2", "b", 4).await;
    server.kill();
    let whole = fs::read(&segment).unwrap();
    let last = *wal_batches(&whole).last().unwrap();
    // One record of 40 bytes (its content does not matter: the batch ends
    // before it does), framed as the writer frames it.
    let mut records = 40u32.to_le_bytes().to_vec();
    records.extend((0..40).map(|_| rng.next_u64() as u8));
    let mut batch = b"VTRNBTCH".to_vec();
    batch.extend((records.len() as u32).to_le_bytes());
    batch.extend(1u32.to_le_bytes());
    batch.extend((last.seq + u64::from(last.count)).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&batch[8..]);
    crc.update(&records);
    batch.extend(crc.finalize().to_le_bytes());
    batch.extend(&records[..records.len() / 2]);
    fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&batch)
        .unwrap();

    let server = scene.start(&[]);
    let log = server.log();
    assert_eq!(
        recovery_field(&log, "claims journal replayed", "truncated_bytes"),
        batch.len().to_string()
    );
    assert_eq!(recovery_field(&log, "claims journal replayed", "dropped_records"), "1");
    assert_eq!(fs::read(&segment).unwrap(), whole, "cut back to its last whole batch");
    let mut c = connect(server.grpc).await;
    check_exactly(&mut model, &mut c, "coupon-2", SMALL_BUDGET).await;
    let reason = model.claim_acked(&mut c, "coupon-1", "b-0", "b-0-coupon-1").await;
    assert_eq!(reason, "BUDGET_EXHAUSTED", "coupon-1 stays exhausted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_inside_the_events_journal_refuses_the_start_naming_file_and_offset() {
    let scene = Scene::new("crash-events", &rules(&[SMALL_BUDGET]));
    let mut model = Model::default();
    // No snapshot at all: the journal alone holds the events.
    let flags = ["--snapshot-interval=0"];
    let server = scene.start(&flags);
    let mut c = connect(server.grpc).await;
    track_one_by_one(&mut model, &mut c, "e", 5).await;
    server.kill();
    assert!(files(&scene.data().join("snapshots"), ".vsnap").is_empty());

    let segment = only_segment(&scene.data().join("events"));
    let whole = fs::read(&segment).unwrap();
    let batches = wal_batches(&whole);
    assert_eq!(batches.len(), 5, "one batch per Track call: {batches:?}");
    let (second, third) = (batches[1], batches[2]);
    let mut damaged = whole.clone();
    damaged[second.offset + second.len - 3] ^= 0x01;
    fs::write(&segment, &damaged).unwrap();

    let (status, log) = scene.start_refused(&flags);
    assert!(!status.success(), "{status}");
    let expected = format!(
        "{}: damaged batch at byte {} followed by a valid batch at byte {}",
        segment.display(),
        second.offset,
        third.offset
    );
    assert!(log.contains(&expected), "`{expected}` missing from:\n{log}");
    assert_eq!(
        fs::read(&segment).unwrap(),
        damaged,
        "the refusal leaves the file as it was"
    );

    // Repaired, the journal serves every event again.
    fs::write(&segment, &whole).unwrap();
    let server = scene.start(&flags);
    let mut c = connect(server.grpc).await;
    model.check_events(&mut c, None).await;
    assert_eq!(size(&mut c, "bought_once").await, 5);
}

// ------------------------------------------- 4. claims journal compaction

/// Copies the tree `from` to `to` (which must not exist), leaving out lock files.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else if !e.file_name().to_string_lossy().ends_with(".lock") {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Replaces the scene's data directory with a copy of `from`.
fn restore_data(scene: &Scene, from: &Path) {
    let data = scene.data();
    fs::remove_dir_all(&data).unwrap();
    copy_tree(from, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_journal_compaction_survives_a_kill_at_any_step() {
    let scene = Scene::new("crash-compact", &rules(&[SMALL_BUDGET, 400]));
    let mut model = Model::default();
    // Snapshots (and so compactions) only at shutdown; tiny segments.
    let flags = ["--snapshot-interval=0", "--claims-segment-bytes=512"];
    let claims = scene.data().join("claims");
    let state = claims.join("ledger.state");

    // 1. Claims over several segments; the shutdown compacts them away.
    let server = scene.start(&flags);
    let mut c = connect(server.grpc).await;
    track_one_by_one(&mut model, &mut c, "a", 30).await;
    claim_some(&mut model, &mut c, "coupon-2", "a", 30).await;
    assert!(files(&claims, ".wal").len() > 2, "{:?}", files(&claims, ".wal"));
    let log = server.log.clone();
    server.terminate();
    let log = fs::read_to_string(log).unwrap();
    assert!(log.contains("claims journal compacted"), "{log}");
    assert_eq!(files(&claims, ".wal").len(), 1, "covered segments deleted");
    assert!(state.exists());

    // 2. More claims, then kill -9: the old state plus the segments after it.
    let server = scene.start(&flags);
    let log = server.log();
    assert_ne!(recovery_field(&log, "claims journal replayed", "state_lsn"), "0");
    let mut c = connect(server.grpc).await;
    track_one_by_one(&mut model, &mut c, "b", 30).await;
    claim_some(&mut model, &mut c, "coupon-2", "b", 30).await;
    server.kill();
    assert!(files(&claims, ".wal").len() > 2);
    let before = scene.dir.path().join("before");
    copy_tree(&scene.data(), &before);

    // 3. A clean start and stop compacts again: the new state.
    scene.start(&flags).terminate();
    let new_state = fs::read(&state).unwrap();
    assert_ne!(new_state, fs::read(before.join("claims/ledger.state")).unwrap());
    let after = scene.dir.path().join("after");
    copy_tree(&scene.data(), &after);

    // 4. Every instant a kill can hit that compaction, rebuilt from `before`:
    //    (a) while writing the new state (a partial .tmp beside the old one),
    //    (b) after the rename, before any covered segment is deleted,
    //    (c) after some of them are deleted.
    let segments: Vec<String> = files(&before.join("claims"), ".wal")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    type Crash<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Crash<'_>)> = vec![
        (
            "partial tmp",
            Box::new(|claims: &Path| {
                fs::write(claims.join("ledger.state.tmp"), &new_state[..new_state.len() / 2]).unwrap()
            }),
        ),
        (
            "renamed, nothing deleted",
            Box::new(|claims: &Path| fs::write(claims.join("ledger.state"), &new_state).unwrap()),
        ),
        (
            "renamed, oldest deleted",
            Box::new(|claims: &Path| {
                fs::write(claims.join("ledger.state"), &new_state).unwrap();
                fs::remove_file(claims.join(&segments[0])).unwrap();
            }),
        ),
    ];
    for (name, crash) in &cases {
        restore_data(&scene, &before);
        crash(&claims);
        let server = scene.start(&flags);
        assert!(!claims.join("ledger.state.tmp").exists(), "{name}");
        let mut c = connect(server.grpc).await;
        let mut m = model.clone();
        check_exactly(&mut m, &mut c, "coupon-1", SMALL_BUDGET).await;
        m.check_caps(&mut c, "coupon-2", name).await;
        server.kill();
    }

    // 5. A damaged state refuses the start, naming the file; repaired, all is back.
    restore_data(&scene, &after);
    let mut damaged = new_state.clone();
    let at = damaged.len() - 3;
    damaged[at] ^= 0x04;
    fs::write(&state, &damaged).unwrap();
    let (status, log) = scene.start_refused(&flags);
    assert!(!status.success(), "{status}");
    let expected = format!(
        "{}: malformed at byte 0: ledger state checksum mismatch",
        state.display()
    );
    assert!(log.contains(&expected), "`{expected}` missing from:\n{log}");
    fs::write(&state, &new_state).unwrap();
    let server = scene.start(&flags);
    let mut c = connect(server.grpc).await;
    check_exactly(&mut model, &mut c, "coupon-1", SMALL_BUDGET).await;
    model.check_caps(&mut c, "coupon-2", "final").await;
    assert_eq!(
        server.metric("vitrine_claims_compactions_total{result=\"failed\"}"),
        Some(0.0)
    );
}

// ------------------------------------------------- 5. storage faults, health

/// The gRPC health of the server as a whole.
async fn serving(c: &mut Clients) -> i32 {
    call(
        c.health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() }),
    )
    .await
    .map_or(-1, |r| r.status)
}

const NOT_SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;

/// Waits until gRPC health is NOT_SERVING and `/readyz` says 503 with a
/// reason containing `why`; then Track and Claim must be UNAVAILABLE.
async fn wait_not_serving(c: &mut Clients, metrics: SocketAddr, why: &str) {
    let start = Instant::now();
    while serving(c).await != NOT_SERVING {
        assert!(start.elapsed() < WAIT, "still SERVING after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = tokio::task::spawn_blocking(move || http_get_blocking(metrics, "/readyz"))
        .await
        .unwrap()
        .unwrap();
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("storage fault") && ready.contains(why), "{ready}");
    let err = track(c, vec![purchase("after-fault")]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let err = claim(c, "coupon-1", "a-0", "after-fault").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
}

/// Regression (hardening #17): the data directory deleted under a running
/// server went unnoticed: acknowledged writes went to unlinked files and
/// readiness stayed green. Now the server notices within a check interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_data_directory_turns_the_server_not_serving_and_refuses_writes() {
    let scene = Scene::new("crash-rmdir", &rules(&[SMALL_BUDGET]));
    let mut model = Model::default();
    let server = scene.start(&["--snapshot-interval=0"]);
    assert_eq!(server.metric("vitrine_ready"), Some(1.0));
    let mut c = connect(server.grpc).await;
    track_one_by_one(&mut model, &mut c, "a", 2).await;
    claim_some(&mut model, &mut c, "coupon-1", "a", 1).await;
    fs::remove_dir_all(scene.data()).unwrap();
    wait_not_serving(&mut c, server.metrics, "data directory lost").await;
    assert!(server.log().contains("storage fault"), "{}", server.log());
    assert_eq!(server.metric("vitrine_storage_fault"), Some(1.0));
    assert_eq!(
        server.metric("vitrine_ready"),
        Some(0.0),
        "what /readyz says, as a metric"
    );
    // Reads still answer.
    assert_eq!(audiences_of(&mut c, "a-0").await, ["bought_once"]);
}

fn in_process_config(dir: &Path) -> vitrine::config::Config {
    vitrine::config::Config {
        max_in_flight: 64,
        ..crate::support::test_config(dir)
    }
}

/// Regression (hardening #11): after a failed journal write (ENOSPC), Track
/// and Claim failed until restart while health stayed SERVING. A failed
/// write of either journal (injected at the writer's failpoint, the path a
/// real failure takes) now turns the replica NOT_SERVING for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_journal_write_turns_the_server_not_serving() {
    for journal in ["events", "claims"] {
        let dir = temp_dir(&format!("fault-{journal}"));
        fs::write(
            dir.path().join("rules").join(format!("{SHOP}.yaml")),
            rules(&[SMALL_BUDGET]),
        )
        .unwrap();
        let server = vitrine::commands::serve::start(in_process_config(dir.path()))
            .await
            .unwrap();
        let mut c = connect(server.grpc_addr).await;
        assert_eq!(serving(&mut c).await, 1, "SERVING at start");
        track(&mut c, vec![purchase("a-0")]).await.unwrap();
        let failpoints = server.failpoints();
        let failed = if journal == "events" {
            failpoints.events.fail_writes.store(true, Ordering::SeqCst);
            track(&mut c, vec![purchase("a-1")]).await.unwrap_err()
        } else {
            failpoints.claims.fail_writes.store(true, Ordering::SeqCst);
            claim(&mut c, "coupon-1", "a-0", "c0").await.unwrap_err()
        };
        assert!(
            matches!(failed.code(), tonic::Code::Unavailable | tonic::Code::Internal),
            "{journal}: {failed:?}"
        );
        // Even once the disk "recovers", the replica does not trust it again.
        failpoints.events.fail_writes.store(false, Ordering::SeqCst);
        failpoints.claims.fail_writes.store(false, Ordering::SeqCst);
        let name = if journal == "events" {
            "event-log"
        } else {
            "claims-journal"
        };
        wait_not_serving(&mut c, server.metrics_addr, name).await;
        assert_eq!(audiences_of(&mut c, "a-0").await, ["bought_once"], "reads still answer");
        let _ = server.shutdown().await;
    }
}

/// Regression (hardening #12): a claim_id reused by another (ineligible)
/// visitor answered `granted: true` with the first visitor's grant. Now
/// the owner's retry gets its answer and anyone else gets ALREADY_EXISTS,
/// also after a restart (the journal record holds the visitor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_id_reused_by_another_visitor_is_refused() {
    let dir = temp_dir("claim-id-bound");
    fs::write(
        dir.path().join("rules").join(format!("{SHOP}.yaml")),
        rules(&[SMALL_BUDGET]),
    )
    .unwrap();
    for start in 0..2 {
        let server = vitrine::commands::serve::start(in_process_config(dir.path()))
            .await
            .unwrap();
        let mut c = connect(server.grpc_addr).await;
        if start == 0 {
            track(&mut c, vec![purchase("owner")]).await.unwrap();
            assert_eq!(claim(&mut c, "coupon-1", "owner", "order-1").await.unwrap(), "GRANTED");
        }
        let err = claim(&mut c, "coupon-1", "intruder", "order-1").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "start {start}: {err:?}");
        assert!(err.message().contains("another visitor"), "{err:?}");
        assert_eq!(claim(&mut c, "coupon-1", "owner", "order-1").await.unwrap(), "GRANTED");
        server.shutdown().await.unwrap();
    }
}
