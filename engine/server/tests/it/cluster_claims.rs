//! Claims through the claims topic (issue 13, `docs/cluster.md` "Claims"):
//! several replicas in one process against librdkafka's mock cluster agree
//! on caps, budgets and `claim_id`s wherever a claim arrives. Every wait is
//! for a signal (health, a counter) and bounded by [`WAIT`].

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use vitrine::cluster::claims::{ClaimsLog, ClaimsStats};
use vitrine::cluster::shops::Shops;
use vitrine::commands::serve::{self, Server};
use vitrine::config::KafkaConfig;
use vitrine_proto::v1 as pb;

use crate::support::{connect, http_get, temp_dir, test_config, Clients, TempDir, WAIT};

/// 2026-11-20T00:00:00Z.
const NOW: i64 = 1_795_132_800_000;
const SHOP: &str = "tickets";
const CLAIMS_TOPIC: &str = "vitrine.claims";
const BUDGET: u64 = 50;
const RULES: &str = "shop: tickets
audiences:
  vip: member_tier >= 4
banners:
  - banner: default
benefits:
  - id: early
    kind: ticket
    budget: 50
  - id: coupon
    kind: coupon
    cap: { per_visitor: 1, window: 30d }
  - id: gated
    when: vip
    kind: coupon
";

fn mock() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("vitrine.behavior", 1, 1).unwrap();
    // The mock cluster has no CreateTopics: the replicas' own attempt fails.
    cluster.create_topic(CLAIMS_TOPIC, 6, 1).unwrap();
    cluster.create_topic("vitrine.decisions", 2, 1).unwrap();
    cluster
}

/// One replica: its server, a client, its directory.
struct Replica {
    server: Server,
    c: Clients,
    dir: TempDir,
}

impl Replica {
    fn log(&self) -> &ClaimsLog {
        self.server.engine.cluster.claims.get().expect("cluster mode")
    }

    fn stats(&self) -> ClaimsStats {
        self.log().stats()
    }

    async fn shutdown(self) -> TempDir {
        tokio::time::timeout(WAIT, self.server.shutdown())
            .await
            .unwrap()
            .unwrap();
        self.dir
    }
}

/// Starts a replica over `dir` (its rules dir holds [`RULES`] unless
/// `shops` excludes the shop) and waits until it is SERVING and serves the shop.
async fn start(brokers: &str, dir: TempDir, name: &str, shops: &str, timeout: Duration) -> Replica {
    let serves = Shops::parse(shops).unwrap();
    if serves.serves(SHOP) {
        std::fs::write(dir.path().join("rules").join("tickets.yaml"), RULES).unwrap();
    }
    let config = vitrine::config::Config {
        kafka: Some(KafkaConfig {
            group: format!("group-{name}"),
            cluster_timeout: timeout,
            options: vec![("reconnect.backoff.max.ms".into(), "200".into())],
            ..KafkaConfig::new(brokers)
        }),
        shops: serves.clone(),
        ..test_config(dir.path())
    };
    let server = serve::start(config).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    let started = Instant::now();
    loop {
        let health = c
            .health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        let serving = health.status == ServingStatus::Serving as i32;
        if serving && (!serves.serves(SHOP) || c.decision.decide(decide("anyone")).await.is_ok()) {
            break;
        }
        assert!(started.elapsed() < WAIT, "replica {name} never served {SHOP}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Replica { server, c, dir }
}

async fn three(brokers: &str, name: &str) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for i in 0..3 {
        let dir = temp_dir(&format!("{name}-{i}"));
        replicas.push(start(brokers, dir, &format!("{name}-{i}"), "*", Duration::from_secs(10)).await);
    }
    replicas
}

fn decide(visitor: &str) -> pb::DecideRequest {
    pb::DecideRequest {
        shop: SHOP.into(),
        visitor: visitor.into(),
        now_ms: NOW,
        explain: true,
        ..Default::default()
    }
}

fn claim(benefit: &str, visitor: &str, id: &str) -> pb::ClaimRequest {
    pb::ClaimRequest {
        shop: SHOP.into(),
        visitor: visitor.into(),
        benefit_id: benefit.into(),
        now_ms: NOW,
        claim_id: id.into(),
        context: None,
    }
}

async fn reason(c: &mut Clients, request: pb::ClaimRequest) -> String {
    c.benefits.claim(request).await.unwrap().into_inner().reason
}

/// Waits until every replica has applied `n` records, then checks that
/// their ledgers are byte for byte equal.
async fn wait_applied_and_equal(replicas: &[&Replica], n: u64) {
    let started = Instant::now();
    while replicas.iter().any(|r| r.stats().applied < n) {
        let seen: Vec<ClaimsStats> = replicas.iter().map(|r| r.stats()).collect();
        assert!(started.elapsed() < WAIT, "waiting for {n} applied records: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = replicas[0].log().ledger_bytes();
    for (i, r) in replicas.iter().enumerate() {
        assert_eq!(r.stats().applied, n, "replica {i} applied more than written");
        assert!(
            r.log().ledger_bytes() == first,
            "replica {i}'s ledger differs from replica 0's"
        );
    }
}

/// N claims from many tasks spread over three replicas against a budget of
/// B: exactly B granted in total, and every replica holds the same ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_holds_across_replicas() {
    let cluster = mock();
    let brokers = cluster.bootstrap_servers();
    let replicas = three(&brokers, "budget").await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let mut c = replicas[i % 3].c.clone();
            tokio::spawn(async move { reason(&mut c, claim("early", &format!("v-{i}"), "")).await })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        match task.await.unwrap().as_str() {
            "GRANTED" => granted += 1,
            "BUDGET_EXHAUSTED" => {}
            other => panic!("unexpected outcome {other}"),
        }
    }
    assert_eq!(
        granted, BUDGET,
        "exactly the budget is granted, wherever the claims arrive"
    );
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_applied_and_equal(&all, 200).await;
    for (i, r) in replicas.iter().enumerate() {
        let usage = vitrine_core::ClaimLedger::usage(&*r.server.engine.ledger, SHOP, "early", "v-0", None);
        assert_eq!(usage.total, BUDGET, "replica {i}");
        // Decide peeks at the same ledger: the budget is spent everywhere.
        let d =
            r.c.clone()
                .decision
                .decide(decide("newcomer"))
                .await
                .unwrap()
                .into_inner();
        let steps = d.explanation.unwrap().steps;
        let early = steps.iter().find(|s| s.entry.contains("early")).unwrap();
        assert_eq!(early.outcome, "budget exhausted", "replica {i}");
    }
    for r in replicas {
        r.shutdown().await;
    }
}

/// A cap per visitor holds across replicas; a claim_id retried on another
/// replica gets its first answer, and is refused to another visitor; a
/// denial without a claim_id is answered at once, with one it is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_and_claim_ids_hold_across_replicas() {
    let cluster = mock();
    let brokers = cluster.bootstrap_servers();
    let replicas = three(&brokers, "cap").await;
    let c = |replicas: &[Replica], i: usize| replicas[i].c.clone();
    assert_eq!(
        reason(&mut c(&replicas, 0), claim("coupon", "v-1", "c-1")).await,
        "GRANTED"
    );
    assert_eq!(
        reason(&mut c(&replicas, 1), claim("coupon", "v-1", "")).await,
        "CAP_REACHED"
    );
    assert_eq!(
        reason(&mut c(&replicas, 2), claim("coupon", "v-1", "c-2")).await,
        "CAP_REACHED"
    );
    // The retry of c-1, on other replicas: the first answer, no second grant.
    assert_eq!(
        reason(&mut c(&replicas, 2), claim("coupon", "v-1", "c-1")).await,
        "GRANTED"
    );
    assert_eq!(
        reason(&mut c(&replicas, 1), claim("coupon", "v-1", "c-1")).await,
        "GRANTED"
    );
    let err = c(&replicas, 1)
        .benefits
        .claim(claim("coupon", "intruder", "c-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // Another visitor is not capped by v-1's grant.
    assert_eq!(
        reason(&mut c(&replicas, 2), claim("coupon", "v-2", "")).await,
        "GRANTED"
    );
    // Not in the audience, no claim_id: answered by the taker, no record.
    assert_eq!(
        reason(&mut c(&replicas, 0), claim("gated", "v-1", "")).await,
        "NOT_ELIGIBLE"
    );
    // With a claim_id the denial is recorded in the log: its retry elsewhere
    // gets it, and the id is bound to its visitor.
    assert_eq!(
        reason(&mut c(&replicas, 0), claim("gated", "v-1", "g-1")).await,
        "NOT_ELIGIBLE"
    );
    assert_eq!(
        reason(&mut c(&replicas, 1), claim("gated", "v-1", "g-1")).await,
        "NOT_ELIGIBLE"
    );
    let all: Vec<&Replica> = replicas.iter().collect();
    // 9 records: every call above but the answered-at-once denial.
    wait_applied_and_equal(&all, 9).await;
    for (i, r) in replicas.iter().enumerate() {
        let usage = vitrine_core::ClaimLedger::usage(&*r.server.engine.ledger, SHOP, "coupon", "v-1", None);
        assert_eq!((usage.total, usage.visitor_in_window), (2, 1), "replica {i}");
    }
    for r in replicas {
        r.shutdown().await;
    }
}

/// A replica shut down and restarted from `data/claims-topic.state` agrees
/// with the others, and applies the claims made while it was down once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_resumes_from_its_state_file() {
    let cluster = mock();
    let brokers = cluster.bootstrap_servers();
    let mut replicas = three(&brokers, "restart").await;
    for i in 0..20 {
        let mut c = replicas[i % 3].c.clone();
        assert_eq!(
            reason(&mut c, claim("early", &format!("v-{i}"), &format!("c-{i}"))).await,
            "GRANTED"
        );
    }
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_applied_and_equal(&all, 20).await;
    let down = replicas.pop().unwrap();
    let dir = down.shutdown().await;
    assert!(dir.path().join("data/claims-topic.state").exists());
    let mut granted = 0;
    for i in 20..60 {
        let mut c = replicas[i % 2].c.clone();
        if reason(&mut c, claim("early", &format!("v-{i}"), &format!("c-{i}"))).await == "GRANTED" {
            granted += 1;
        }
    }
    assert_eq!(granted, BUDGET - 20);
    let back = start(&brokers, dir, "restart-2", "*", Duration::from_secs(10)).await;
    // SERVING means caught up: exactly the 40 records written while it was down.
    assert_eq!(
        back.stats().applied,
        40,
        "only the records after its state file's offsets"
    );
    assert!(
        back.log().ledger_bytes() == replicas[0].log().ledger_bytes(),
        "the restarted replica agrees"
    );
    // A retry on it gets the first answer, a new claim finds the budget spent.
    let mut c = back.c.clone();
    assert_eq!(reason(&mut c, claim("early", "v-3", "c-3")).await, "GRANTED");
    assert_eq!(reason(&mut c, claim("early", "v-99", "")).await, "BUDGET_EXHAUSTED");
    let started = Instant::now();
    while replicas.iter().any(|r| r.stats().applied < 62) || back.stats().applied < 42 {
        assert!(started.elapsed() < WAIT, "the last claims never reached every replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, r) in replicas.iter().enumerate() {
        assert!(
            r.log().ledger_bytes() == back.log().ledger_bytes(),
            "replica {i} differs"
        );
    }
    replicas.push(back);
    let mut dirs = Vec::new();
    for r in replicas {
        dirs.push(r.shutdown().await);
    }
    // A damaged state file refuses the start, naming the file.
    let dir = dirs.pop().unwrap();
    let state = dir.path().join("data/claims-topic.state");
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&state, bytes).unwrap();
    let config = vitrine::config::Config {
        kafka: Some(KafkaConfig::new(&brokers)),
        ..test_config(dir.path())
    };
    let err = serve::start(config).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("claims-topic.state is damaged at byte 0: checksum mismatch"),
        "{err:#}"
    );
}

/// Broker down: Claim fails UNAVAILABLE within --cluster-timeout (never a
/// grant without the log), Decide still answers; broker back: claims resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_without_the_broker_is_unavailable_and_decide_answers() {
    let cluster = mock();
    let brokers = cluster.bootstrap_servers();
    let replica = start(&brokers, temp_dir("down"), "down", "*", Duration::from_millis(1500)).await;
    let mut c = replica.c.clone();
    assert_eq!(reason(&mut c, claim("early", "v-0", "")).await, "GRANTED");
    cluster.broker_down(1).unwrap();
    let err = tokio::time::timeout(WAIT, c.benefits.claim(claim("early", "v-1", "c-1")))
        .await
        .expect("the claim must not hang")
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("claims topic"), "{}", err.message());
    let d = c.decision.decide(decide("v-2")).await.unwrap().into_inner();
    assert_eq!(d.banner.unwrap().id, "default");
    assert_eq!(
        vitrine_core::ClaimLedger::usage(&*replica.server.engine.ledger, SHOP, "early", "v-1", None).total,
        1,
        "nothing granted without the log"
    );
    cluster.broker_up(1).unwrap();
    let started = Instant::now();
    loop {
        match c.benefits.claim(claim("early", "v-1", "c-1")).await {
            Ok(r) => {
                assert_eq!(r.into_inner().reason, "GRANTED");
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        }
        assert!(started.elapsed() < WAIT, "claims never resumed");
    }
    replica.shutdown().await;
}

/// A record this version cannot read is skipped and counted on every
/// replica; a replica outside the shop skips the shop's records by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_records_are_skipped_and_counted_everywhere() {
    let cluster = mock();
    let brokers = cluster.bootstrap_servers();
    let mut replicas = three(&brokers, "unreadable").await;
    let elsewhere = start(
        &brokers,
        temp_dir("unreadable-other"),
        "unreadable-other",
        "other-*",
        Duration::from_secs(10),
    )
    .await;
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let future = r#"{"v":2,"shop":"tickets","benefit":"early","visitor":"v","now_ms":1,"claim_id":null,"cap":null,"budget":null,"denied":null}"#;
    let bad_key = r#"{"v":1,"shop":"tickets","benefit":"early","visitor":"v","now_ms":1,"claim_id":null,"cap":null,"budget":1,"denied":null}"#;
    for (key, payload) in [
        ("tickets/early", "not json"),
        ("tickets/early", future),
        ("tickets/coupon", bad_key),
    ] {
        producer
            .send(BaseRecord::to(CLAIMS_TOPIC).key(key).payload(payload))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(WAIT).unwrap();
    assert_eq!(
        reason(&mut replicas[0].c.clone(), claim("early", "v-1", "")).await,
        "GRANTED"
    );
    let started = Instant::now();
    while replicas
        .iter()
        .any(|r| r.stats().unreadable < 3 || r.stats().applied < 1)
        || elsewhere.stats().other_shop < 4
    {
        assert!(started.elapsed() < WAIT, "records not all seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, r) in replicas.iter().enumerate() {
        let s = r.stats();
        assert_eq!((s.applied, s.unreadable, s.other_shop), (1, 3, 0), "replica {i}");
    }
    let s = elsewhere.stats();
    assert_eq!((s.applied, s.unreadable, s.other_shop), (0, 0, 4));
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_applied_and_equal(&all, 1).await;
    let metrics = http_get(replicas[0].server.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"vitrine_cluster_records_total{topic="claims",result="unreadable"}"#),
        "{metrics}"
    );
    // The replica of other shops refuses the shop's claims by name.
    let err = elsewhere
        .c
        .clone()
        .benefits
        .claim(claim("early", "v-1", ""))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    replicas.push(elsewhere);
    for r in replicas {
        r.shutdown().await;
    }
}
