//! The decision log: `decision_id`, the bounded queue, the file log, and
//! records applied as exposures on every replica (issue 14).
//!
//! Two tests need the index side of exposures (`offered(...)` in a rule
//! file, `ShopIndex::apply_exposure` recording offers) and are ignored until
//! it lands; the transport under them is checked here by the decision log's
//! own counters.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::ClientConfig;
use vitrine::commands::serve::{self, Server};
use vitrine::config::Config;
use vitrine::decisions::file::FileLog;
use vitrine::decisions::{DecisionLogConfig, StatsCounts};
use vitrine_proto::v1 as pb;

use crate::cluster_kit::{self, mock_cluster, replica, Replica};
use crate::support::{connect, temp_dir, test_config, wait_for, Clients, TempDir, WAIT};

const SHOP: &str = "apparel";
const RULES: &str = "shop: apparel\nbanners:\n  - banner: welcome\nitems:\n  pools:\n    - items: [sku-1, sku-2]\nbenefits:\n  - id: coupon-10\n    kind: coupon\n";
const NOW: i64 = 1_764_400_000_000;

fn decide(visitor: &str) -> pb::DecideRequest {
    pb::DecideRequest {
        shop: SHOP.into(),
        visitor: visitor.into(),
        now_ms: NOW,
        ..Default::default()
    }
}

async fn embedded(dir: &TempDir, log: DecisionLogConfig) -> (Server, Clients) {
    let server = serve::start(Config {
        decision_log: log,
        ..test_config(dir.path())
    })
    .await
    .unwrap();
    let c = connect(server.grpc_addr).await;
    c.rules.clone().push(cluster_kit::push(RULES, 0)).await.unwrap();
    (server, c)
}

fn stats(server: &Server) -> StatsCounts {
    server.engine.decisions.stats()
}

/// Ids are unique over 10,000 decisions on each of two servers (two
/// processes' worth of prefixes), and every response carries one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_ids_are_unique_over_many_calls_and_across_servers() {
    let (da, db) = (temp_dir("ids-a"), temp_dir("ids-b"));
    let (a, ca) = embedded(&da, DecisionLogConfig::default()).await;
    let (b, _) = embedded(&db, DecisionLogConfig::default()).await;
    assert_ne!(a.engine.decisions.replica, b.engine.decisions.replica);
    let mut seen = HashSet::new();
    for server in [&a, &b] {
        for i in 0..10_000 {
            let r = vitrine::api::grpc::decide(&server.engine, &decide(&format!("v-{}", i % 50))).unwrap();
            assert!(r.decision_id.starts_with(&server.engine.decisions.replica));
            assert!(seen.insert(r.decision_id), "a repeated decision_id");
        }
    }
    let r = ca.decision.clone().decide(decide("v-1")).await.unwrap().into_inner();
    assert!(seen.insert(r.decision_id.clone()), "{}", r.decision_id);
    assert_eq!(seen.len(), 20_001);
    for s in [a, b] {
        s.shutdown().await.unwrap();
    }
}

/// Embedded: every decision is applied in-process (anonymous ones logged,
/// not applied) and written to `--decision-log` as exactly its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_decisions_are_applied_and_written_as_exact_records() {
    let dir = temp_dir("decision-file");
    let path = dir.path().join("decisions.jsonl");
    let (server, c) = embedded(
        &dir,
        DecisionLogConfig {
            file: Some(path.clone()),
            ..DecisionLogConfig::default()
        },
    )
    .await;
    let replica = server.engine.decisions.replica.clone();
    let mut expected = Vec::new();
    for visitor in ["v-1", "v-2", ""] {
        let r = c.decision.clone().decide(decide(visitor)).await.unwrap().into_inner();
        assert_eq!(r.rule_revision, 1);
        expected.push(format!(
            r#"{{"decision_id":"{}","ts":{NOW},"shop":"apparel","visitor":"{visitor}","revision":1,"banner":"welcome","items":["sku-1","sku-2"],"benefit":"coupon-10","held_out":[],"replica":"{replica}"}}"#,
            r.decision_id
        ));
    }
    wait_for("the drainer to take every record", || async {
        stats(&server).drained == 3
    })
    .await;
    let s = stats(&server);
    assert_eq!((s.logged, s.dropped, s.written), (3, 0, 3));
    assert_eq!(s.exposures_applied, 2, "the anonymous decision applies nothing");
    // Shutdown drains and flushes.
    server.shutdown().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().collect::<Vec<_>>(), expected);
}

/// The file rotates before it would pass --decision-log-max-bytes, keeping
/// --decision-log-keep files, and no record is lost or split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_file_rotates_at_its_size() {
    let dir = temp_dir("decision-rotate");
    let path = dir.path().join("d.jsonl");
    let (server, _) = embedded(
        &dir,
        DecisionLogConfig {
            file: Some(path.clone()),
            max_bytes: 4096,
            keep: 2,
            ..DecisionLogConfig::default()
        },
    )
    .await;
    // About 230 bytes a record: 17 fit a file; 60 make four files' worth.
    let mut ids = Vec::new();
    for i in 0..60 {
        let r = vitrine::api::grpc::decide(&server.engine, &decide(&format!("visitor-{i:03}"))).unwrap();
        ids.push(r.decision_id);
    }
    wait_for("the drainer", || async { stats(&server).drained == 60 }).await;
    server.shutdown().await.unwrap();
    let mut lines = Vec::new();
    for p in [FileLog::rotated(&path, 2), FileLog::rotated(&path, 1), path.clone()] {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.len() <= 4096, "{} has {} bytes", p.display(), text.len());
        lines.extend(text.lines().map(str::to_string));
    }
    assert!(!FileLog::rotated(&path, 3).exists());
    // The newest records, in order, each whole.
    let kept: Vec<&str> = ids[ids.len() - lines.len()..].iter().map(String::as_str).collect();
    let read: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["decision_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(read, kept);
    assert!(lines.len() > 34, "three files hold more than two files' worth");
}

/// A full queue (size 1, drainer held): every Decide still answers with
/// its id, and what does not fit is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Holding the drainer across the calls is the point: it is a plain thread
// (not a task), so nothing the awaits need waits for the lock.
#[allow(clippy::await_holding_lock)]
async fn a_full_queue_drops_and_counts_and_decide_still_answers() {
    let dir = temp_dir("decision-full");
    let (server, c) = embedded(
        &dir,
        DecisionLogConfig {
            queue: 1,
            ..DecisionLogConfig::default()
        },
    )
    .await;
    let log = server.engine.decisions.log().unwrap();
    let held = log.block_drainer();
    for i in 0..50 {
        let r = c
            .decision
            .clone()
            .decide(decide(&format!("v-{i}")))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.decision_id.is_empty());
    }
    let s = stats(&server);
    assert_eq!(s.logged + s.dropped, 50);
    // One record in the queue, at most one in the drainer's hand.
    assert!(s.logged <= 2 && s.dropped >= 48, "{s:?}");
    drop(held);
    wait_for("the held records to drain", || async {
        stats(&server).drained == s.logged
    })
    .await;
    server.shutdown().await.unwrap();
}

fn cluster_stats(r: &Replica) -> StatsCounts {
    r.server.engine.decisions.stats()
}

/// With Kafka, a Decide on replica A is published to the decisions topic
/// and applied as an exposure by every replica, A included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decide_on_one_replica_is_applied_as_an_exposure_on_every_replica() {
    let (_cluster, brokers) = mock_cluster();
    let a = replica(&brokers, "decisions-a").await;
    let b = replica(&brokers, "decisions-b").await;
    a.c.rules.clone().push(cluster_kit::push(RULES, 0)).await.unwrap();
    cluster_kit::all_serve(&[&a, &b], 1).await;
    let r = a.c.decision.clone().decide(decide("v-1")).await.unwrap().into_inner();
    assert!(!r.decision_id.is_empty());
    let _ = a.c.decision.clone().decide(decide("")).await.unwrap();
    for x in [&a, &b] {
        wait_for("the exposure on every replica", || async {
            cluster_stats(x).exposures_applied == 1
        })
        .await;
    }
    wait_for("both records published", || async { cluster_stats(&a).published == 2 }).await;
    assert_eq!(cluster_stats(&b).logged, 0, "B decided nothing");
    assert_eq!(cluster_stats(&a).rejected + cluster_stats(&b).rejected, 0);
    for x in [a, b] {
        x.server.shutdown().await.unwrap();
    }
}

/// Garbage on the decisions topic is skipped and counted, the same way on
/// every replica, and never stalls the partition: a valid record after it
/// still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_records_on_the_decisions_topic_are_skipped_and_counted_everywhere() {
    let (_cluster, brokers) = mock_cluster();
    let a = replica(&brokers, "decisions-bad-a").await;
    let b = replica(&brokers, "decisions-bad-b").await;
    a.c.rules.clone().push(cluster_kit::push(RULES, 0)).await.unwrap();
    cluster_kit::all_serve(&[&a, &b], 1).await;
    let good = r#"{"decision_id":"x-1","ts":1,"shop":"apparel","visitor":"v","revision":1,"banner":null,"items":[],"benefit":"coupon-10","held_out":[{"slot":"benefit","id":"coupon-10"}],"replica":"x"}"#;
    let bad: Vec<Option<Vec<u8>>> = vec![
        Some(b"not json".to_vec()),
        None,
        Some(vec![b' '; vitrine::decisions::record::MAX_RECORD_BYTES + 1]),
        Some(good.replace(r#""slot":"benefit""#, r#""slot":"items""#).into_bytes()),
        Some(good.replace(r#""shop":"apparel""#, r#""shop":"nobody""#).into_bytes()),
        Some(good.replace(r#""ts":1"#, r#""ts":-5"#).into_bytes()),
        Some(good.as_bytes().to_vec()),
    ];
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", "1000000")
        .create()
        .unwrap();
    for payload in &bad {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to("vitrine.decisions").key("v");
        if let Some(p) = payload {
            record = record.payload(p);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(WAIT).unwrap();
    for x in [&a, &b] {
        wait_for("every record read", || async {
            let s = cluster_stats(x);
            s.rejected == 6 && s.exposures_applied == 1
        })
        .await;
    }
    for x in [a, b] {
        x.server.shutdown().await.unwrap();
    }
}

/// A restarted replica resumes the decisions topic from its snapshot's
/// offsets: records its snapshot covers are not applied again, later ones are.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_resumes_the_decisions_topic_from_the_snapshot() {
    let (_cluster, brokers) = mock_cluster();
    let a = replica(&brokers, "decisions-restart").await;
    a.c.rules.clone().push(cluster_kit::push(RULES, 0)).await.unwrap();
    cluster_kit::all_serve(&[&a], 1).await;
    for v in ["v-1", "v-2", "v-3"] {
        a.c.decision.clone().decide(decide(v)).await.unwrap();
    }
    wait_for("three exposures", || async { cluster_stats(&a).exposures_applied == 3 }).await;
    let Replica { dir, server, .. } = a;
    server.shutdown().await.unwrap();
    let config = cluster_kit::cluster_config(&dir, &brokers, Duration::from_secs(10));
    let a = cluster_kit::start(dir, config).await;
    // Ready = caught up with the decisions topic: nothing was re-applied.
    assert_eq!(cluster_stats(&a).exposures_applied, 0);
    a.c.decision.clone().decide(decide("v-4")).await.unwrap();
    wait_for("the new exposure", || async {
        cluster_stats(&a).exposures_applied == 1
    })
    .await;
    a.server.shutdown().await.unwrap();
}

const OFFERED_RULES: &str = "shop: apparel\nbanners:\n  - when: offered(30d, benefit=\"coupon-10\")\n    banner: seen-coupon\n  - banner: welcome\nbenefits:\n  - id: coupon-10\n    kind: coupon\n";

async fn banner_of(c: &Clients, visitor: &str) -> String {
    let r = c.decision.clone().decide(decide(visitor)).await.unwrap().into_inner();
    r.banner.map(|b| b.id).unwrap_or_default()
}

/// After a Decide on A, `offered(...)` holds for the visitor on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offered_holds_on_another_replica_after_a_decide() {
    let (_cluster, brokers) = mock_cluster();
    let a = replica(&brokers, "offered-a").await;
    let b = replica(&brokers, "offered-b").await;
    a.c.rules
        .clone()
        .push(cluster_kit::push(OFFERED_RULES, 0))
        .await
        .unwrap();
    cluster_kit::all_serve(&[&a, &b], 1).await;
    assert_eq!(banner_of(&a.c, "v-1").await, "welcome");
    wait_for("offered(...) on B", || async {
        banner_of(&b.c, "v-1").await == "seen-coupon"
    })
    .await;
    for x in [a, b] {
        x.server.shutdown().await.unwrap();
    }
}

/// Embedded: exposures survive a restart through the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposures_survive_a_restart_from_the_snapshot() {
    let dir = temp_dir("offered-restart");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let c = connect(server.grpc_addr).await;
    c.rules.clone().push(cluster_kit::push(OFFERED_RULES, 0)).await.unwrap();
    assert_eq!(banner_of(&c, "v-1").await, "welcome");
    wait_for("the exposure", || async { stats(&server).exposures_applied == 1 }).await;
    assert_eq!(banner_of(&c, "v-1").await, "seen-coupon");
    server.shutdown().await.unwrap();
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let c = connect(server.grpc_addr).await;
    assert_eq!(banner_of(&c, "v-1").await, "seen-coupon");
    server.shutdown().await.unwrap();
}

/// `--demo` decides for every demo visitor through the decision log, so
/// the demo shops start with exposures (and purchases after them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_logs_a_decision_for_every_demo_visitor() {
    let dir = temp_dir("decision-demo");
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rules/demo-beauty.yaml");
    std::fs::copy(rules, dir.path().join("rules/demo-beauty.yaml")).unwrap();
    let server = serve::start(Config {
        demo_visitors: Some(700),
        ..test_config(dir.path())
    })
    .await
    .unwrap();
    let s = stats(&server);
    assert_eq!((s.logged, s.dropped), (700, 0));
    wait_for("every demo decision applied", || async {
        stats(&server).exposures_applied == 700
    })
    .await;
    server.shutdown().await.unwrap();
}
