//! Attacks on replicas that agree (`docs/cluster.md`): what is local to one
//! replica (its disk, its `data/revisions`, a state file built under other
//! flags) must not change what applying a topic's records decides, or the
//! replicas part.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use vitrine::cluster::claims::ClaimsLog;
use vitrine::cluster::shops::Shops;
use vitrine::config::KafkaConfig;
use vitrine_proto::v1 as pb;

use crate::cluster_kit::{history, mock_cluster, push, replica, rules, serving, Replica};
use crate::support::{temp_dir, wait_for, WAIT};

async fn pushed(r: &Replica, content: &str) -> u64 {
    r.c.rules
        .clone()
        .push(push(content, 0))
        .await
        .unwrap()
        .into_inner()
        .revision
}

/// A rollback whose revision file is gone from one replica's
/// `data/revisions`, and a push that one replica cannot mirror to its disk:
/// both still apply there, with the same revision numbers and text as on
/// the other replicas (the topic decides, the disk only mirrors). Before,
/// that replica skipped the change and its revision numbers parted from the
/// others' for good: a later rollback to "the same" revision served another
/// text there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_disk_differs_applies_the_same_revisions() {
    let (_cluster, brokers) = mock_cluster();
    let a = replica(&brokers, "disk-a").await;
    let b = replica(&brokers, "disk-b").await;
    assert_eq!(pushed(&a, &rules("one")).await, 1);
    assert_eq!(pushed(&a, &rules("two")).await, 2);
    wait_for("b to serve revision 2", || async { serving(&b) == 2 }).await;

    // Someone cleans b's data/revisions; a rollback to 1 is taken by a.
    let revisions = b.dir.path().join("data").join("revisions").join("apparel");
    std::fs::remove_dir_all(&revisions).unwrap();
    let rb =
        a.c.rules
            .clone()
            .rollback(pb::RollbackRequest {
                shop: "apparel".into(),
                revision: 1,
                expected_revision: 0,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(rb.revision, 3);
    wait_for("b to apply the rollback", || async { serving(&b) == 3 }).await;
    // b's disk cannot take a revision file now (a file where its directory was).
    std::fs::remove_dir_all(&revisions).unwrap();
    std::fs::write(&revisions, "not a directory").unwrap();
    // Taken by b: answered once b applied it.
    assert_eq!(pushed(&b, &rules("four")).await, 4, "b applies what a applied");
    wait_for("a to serve revision 4", || async { serving(&a) == 4 }).await;
    assert_eq!(history(&b).await, history(&a).await);
    // b's rules/apparel.yaml still holds revision 3 (its mirror failed): a
    // stale copy, not a hand edit to push over revision 4.
    let scan = b.server.engine.rules.rescan(0);
    assert!(scan.proposals.is_empty(), "{:?}", scan.proposals);

    // A rollback to 3 serves the same text on both.
    let rb =
        b.c.rules
            .clone()
            .rollback(pb::RollbackRequest {
                shop: "apparel".into(),
                revision: 3,
                expected_revision: 0,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(rb.revision, 5);
    wait_for("a to serve revision 5", || async { serving(&a) == 5 }).await;
    for r in [&a, &b] {
        assert_eq!(*r.server.engine.rules.serving("apparel").unwrap().content, rules("one"));
    }
    assert_eq!(history(&b).await, history(&a).await);
    for r in [a, b] {
        r.server.shutdown().await.unwrap();
    }
}

/// Opens the claims side of a replica over `data` serving `shops`, and
/// waits until it has read the claims topic up to where it stood.
async fn claims_log(data: &std::path::Path, brokers: &str, shops: &str) -> ClaimsLog {
    let log = ClaimsLog::open(data, &KafkaConfig::new(brokers), Shops::parse(shops).unwrap()).unwrap();
    let mut caught_up = log.caught_up();
    let read = tokio::time::timeout(WAIT, caught_up.wait_for(|c| *c)).await;
    assert!(read.is_ok_and(|r| r.is_ok()), "timed out reading the claims topic");
    log
}

/// A replica restarted with a wider `--shops` does not resume from a
/// claims state built under the narrower one: that state's offsets are past
/// the records it skipped, so the newly served shop's grants would be
/// missing for good and its budget granted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claims_state_of_other_shops_is_not_resumed() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("vitrine.claims", 6, 1).unwrap();
    cluster.create_topic("vitrine.decisions", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let grant = br#"{"v":1,"shop":"tickets","benefit":"early","visitor":"v-1","now_ms":1795132800000,"claim_id":"c-1","cap":null,"budget":1,"denied":null}"#;
    producer
        .send(
            BaseRecord::<str, [u8]>::to("vitrine.claims")
                .key("tickets/early")
                .payload(grant),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(WAIT).unwrap();

    let dir = temp_dir("shops-state");
    let narrow = claims_log(dir.path(), &brokers, "beauty").await;
    assert_eq!((narrow.stats().other_shop, narrow.stats().applied), (1, 0));
    narrow.save_state().unwrap();
    narrow.stop();
    drop(narrow);

    let wide = claims_log(dir.path(), &brokers, "*").await;
    let fresh_dir = temp_dir("shops-fresh");
    let fresh = claims_log(fresh_dir.path(), &brokers, "*").await;
    assert_eq!(fresh.stats().applied, 1);
    assert_eq!(wide.stats().applied, 1, "the grant of the newly served shop is applied");
    assert_eq!(wide.ledger_bytes(), fresh.ledger_bytes());
    // The same --shops again resumes from the state (nothing read twice).
    wide.save_state().unwrap();
    wide.stop();
    drop(wide);
    let again = claims_log(dir.path(), &brokers, "*").await;
    assert_eq!(again.stats().applied, 0);
    assert_eq!(again.ledger_bytes(), fresh.ledger_bytes());
    for log in [again, fresh] {
        log.stop();
    }
}

/// A rules record whose key is not its shop (a foreign producer) is
/// skipped and counted: with a rules topic of several partitions, a shop's
/// records under other keys would be applied in different orders by
/// different replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rules_record_keyed_for_another_shop_is_skipped() {
    let (_cluster, brokers) = mock_cluster();
    let a = replica(&brokers, "rekey-a").await;
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let record = serde_json::json!({
        "v": 1, "op": "push", "shop": "apparel", "content": rules("forged"),
        "expected": 0, "if_absent": false, "origin": "push", "at_ms": 1_767_225_600_000_i64,
    })
    .to_string();
    for key in [Some("beauty"), None] {
        let mut r = BaseRecord::<str, str>::to("vitrine.rules").payload(&record);
        if let Some(key) = key {
            r = r.key(key);
        }
        producer.send(r).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(WAIT).unwrap();
    // Taken by a after the two records: answered once a applied all three.
    assert_eq!(
        pushed(&a, &rules("real")).await,
        1,
        "the mis-keyed records made no revision"
    );
    assert_eq!(history(&a).await.len(), 1);
    a.server.shutdown().await.unwrap();
}
