//! What the cluster tests share: a mock cluster with the cluster topics,
//! replicas started in-process on their own directories, and readers of what
//! each replica serves.

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use vitrine::commands::serve::{self, Server};
use vitrine::config::{Config, KafkaConfig};
use vitrine_proto::v1 as pb;

use crate::support::{connect, http_get, temp_dir, test_config, wait_for, Clients, TempDir};

pub const RULES_TOPIC: &str = "vitrine.rules";

pub fn rules(banner: &str) -> String {
    format!("shop: apparel\nbanners:\n  - banner: {banner}\n")
}

pub fn push(content: &str, expected_revision: u64) -> pb::PushRequest {
    pb::PushRequest {
        content: content.to_string(),
        dry_run: false,
        expected_revision,
    }
}

pub struct Replica {
    pub dir: TempDir,
    pub server: Server,
    pub c: Clients,
}

pub fn cluster_config(dir: &TempDir, brokers: &str, timeout: Duration) -> Config {
    Config {
        kafka: Some(KafkaConfig {
            cluster_timeout: timeout,
            ..KafkaConfig::new(brokers)
        }),
        ..test_config(dir.path())
    }
}

/// Starts a replica on `dir` and waits until it is ready.
pub async fn start(dir: TempDir, config: Config) -> Replica {
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

pub async fn replica(brokers: &str, name: &str) -> Replica {
    let dir = temp_dir(name);
    let config = cluster_config(&dir, brokers, Duration::from_secs(10));
    start(dir, config).await
}

/// The history of `apparel` on a replica: (revision, created_ms, origin, serving).
pub async fn history(r: &Replica) -> Vec<(u64, i64, String, bool)> {
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

pub fn serving(r: &Replica) -> u64 {
    r.server.engine.rules.serving("apparel").map_or(0, |s| s.revision)
}

pub async fn banner(r: &Replica) -> String {
    let d =
        r.c.decision
            .clone()
            .decide(pb::DecideRequest {
                shop: "apparel".into(),
                visitor: "v".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    d.banner.map(|b| b.id).unwrap_or_default()
}

/// Waits until every replica serves `revision` of `apparel`.
pub async fn all_serve(replicas: &[&Replica], revision: u64) {
    for r in replicas {
        wait_for(&format!("revision {revision} on every replica"), || async {
            serving(r) == revision
        })
        .await;
    }
}

pub fn mock_cluster() -> (MockCluster<'static, DefaultProducerContext>, String) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(RULES_TOPIC, 1, 1).unwrap();
    cluster.create_topic("vitrine.claims", 6, 1).unwrap();
    cluster.create_topic("vitrine.decisions", 2, 1).unwrap();
    cluster.create_topic("vitrine.behavior", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    (cluster, brokers)
}
