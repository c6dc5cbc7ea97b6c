//! Attacks on replicas that agree (`docs/cluster.md`): what is local to one
//! replica (its disk, its `data/revisions`) must not change what applying a
//! record of the rules topic decides, or the replicas' histories part.

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use vitrine::commands::serve::{self, Server};
use vitrine::config::{Config, KafkaConfig};
use vitrine_proto::v1 as pb;

use crate::support::{connect, http_get, temp_dir, test_config, Clients, TempDir};

/// The longest any wait of these tests takes before it fails.
const WAIT: Duration = Duration::from_secs(60);

fn rules(banner: &str) -> String {
    format!("shop: apparel\nbanners:\n  - banner: {banner}\n")
}

fn push(content: &str) -> pb::PushRequest {
    pb::PushRequest {
        content: content.to_string(),
        dry_run: false,
        expected_revision: 0,
    }
}

struct Replica {
    dir: TempDir,
    server: Server,
    c: Clients,
}

fn mock_cluster() -> (MockCluster<'static, DefaultProducerContext>, String) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("vitrine.rules", 1, 1).unwrap();
    cluster.create_topic("vitrine.claims", 6, 1).unwrap();
    cluster.create_topic("vitrine.behavior", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    (cluster, brokers)
}

async fn replica(brokers: &str, name: &str) -> Replica {
    let dir = temp_dir(name);
    let config = Config {
        kafka: Some(KafkaConfig {
            cluster_timeout: Duration::from_secs(10),
            ..KafkaConfig::new(brokers)
        }),
        ..test_config(dir.path())
    };
    let server = serve::start(config).await.unwrap();
    wait_for("the replica to be ready", || async {
        http_get(server.metrics_addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
    let c = connect(server.grpc_addr).await;
    Replica { dir, server, c }
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let waited = tokio::time::timeout(WAIT, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

fn serving(r: &Replica) -> u64 {
    r.server.engine.rules.serving("apparel").map_or(0, |s| s.revision)
}

async fn history(r: &Replica) -> Vec<(u64, i64, String, bool)> {
    let list =
        r.c.rules
            .clone()
            .list(pb::ListRequest { shop: "apparel".into() })
            .await
            .unwrap()
            .into_inner();
    list.revisions
        .into_iter()
        .map(|i| (i.revision, i.created_ms, i.origin, i.serving))
        .collect()
}

async fn pushed(r: &Replica, content: &str) -> u64 {
    r.c.rules.clone().push(push(content)).await.unwrap().into_inner().revision
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
