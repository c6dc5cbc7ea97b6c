//! Replicas that agree on rules: Push and Rollback go through the rules
//! topic of librdkafka's mock cluster, and three in-process replicas serve
//! the same revisions and history (`docs/cluster.md`, "Rules").

use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use tonic::Code;
use vitrine_proto::v1 as pb;

use crate::cluster_kit::{
    all_serve, banner, cluster_config, history, mock_cluster, push, replica, rules, serving, start, RULES_TOPIC,
};
use crate::support::{http_get, metric_value, temp_dir, wait_for, TempDir, WAIT};

/// A push on one replica is served by all under one revision, with one
/// history; a rollback on another replica too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_on_one_replica_is_served_by_all_under_one_revision() {
    let (_cluster, brokers) = mock_cluster();
    let a = replica(&brokers, "rules-a").await;
    let b = replica(&brokers, "rules-b").await;
    let c = replica(&brokers, "rules-c").await;

    let r =
        a.c.rules
            .clone()
            .push(push(&rules("one"), 0))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(r.revision, 1);
    // The taker answers once it serves it.
    assert_eq!(serving(&a), 1);
    all_serve(&[&a, &b, &c], 1).await;
    let r =
        b.c.rules
            .clone()
            .push(push(&rules("two"), 0))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(r.revision, 2);
    all_serve(&[&a, &b, &c], 2).await;
    for x in [&a, &b, &c] {
        assert_eq!(banner(x).await, "two");
    }

    let rb =
        c.c.rules
            .clone()
            .rollback(pb::RollbackRequest {
                shop: "apparel".into(),
                revision: 1,
                expected_revision: 0,
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!((rb.revision, rb.restored_from), (3, 1));
    all_serve(&[&a, &b, &c], 3).await;
    let h = history(&a).await;
    assert_eq!(h.len(), 3);
    assert_eq!(
        h.iter().map(|(r, _, o, s)| (*r, o.as_str(), *s)).collect::<Vec<_>>(),
        [(1, "push", false), (2, "push", false), (3, "rollback", true)]
    );
    assert_eq!(history(&b).await, h, "the same history, creation times included");
    assert_eq!(history(&c).await, h);
    for x in [&a, &b, &c] {
        assert_eq!(banner(x).await, "one");
        // Written back for humans to read.
        let file = std::fs::read_to_string(x.dir.path().join("rules").join("apparel.yaml")).unwrap();
        assert_eq!(file, rules("one"));
    }
    for x in [a, b, c] {
        x.server.shutdown().await.unwrap();
    }
}

/// Racing pushes that expect the same revision: exactly one wins, on
/// whichever replicas they arrive; the others fail ABORTED; all serve the
/// winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_pushes_with_expected_revision_exactly_one_wins() {
    let (_cluster, brokers) = mock_cluster();
    let replicas = [
        replica(&brokers, "race-a").await,
        replica(&brokers, "race-b").await,
        replica(&brokers, "race-c").await,
    ];
    replicas[0].c.rules.clone().push(push(&rules("base"), 0)).await.unwrap();
    all_serve(&replicas.iter().collect::<Vec<_>>(), 1).await;

    let mut tasks = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        for j in 0..3 {
            let mut client = r.c.rules.clone();
            let content = rules(&format!("r{i}-{j}"));
            tasks.push(tokio::spawn(async move {
                (content.clone(), client.push(push(&content, 1)).await)
            }));
        }
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (content, result) = t.await.unwrap();
        match result {
            Ok(r) => winners.push((content, r.into_inner().revision)),
            Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one push expecting revision 1 wins: {winners:?}"
    );
    let (content, revision) = &winners[0];
    assert_eq!(*revision, 2);
    all_serve(&replicas.iter().collect::<Vec<_>>(), 2).await;
    for r in &replicas {
        assert_eq!(*r.server.engine.rules.serving("apparel").unwrap().content, **content);
        assert_eq!(history(r).await.len(), 2, "aborted pushes leave no revision");
    }
    for r in replicas {
        r.server.shutdown().await.unwrap();
    }
}

/// Three replicas starting together with the same rule file produce one
/// revision, not three; a replica restarted later, and one started late,
/// serve the same revisions and history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_seeded_from_the_same_files_make_one_revision_and_restarts_agree() {
    let (_cluster, brokers) = mock_cluster();
    let dirs: Vec<TempDir> = (0..3).map(|i| temp_dir(&format!("seed-{i}"))).collect();
    for d in &dirs {
        std::fs::write(d.path().join("rules").join("apparel.yaml"), rules("seeded")).unwrap();
    }
    let starts = dirs.into_iter().map(|d| {
        let config = cluster_config(&d, &brokers, Duration::from_secs(10));
        start(d, config)
    });
    let mut replicas = futures_join_all(starts).await;
    all_serve(&replicas.iter().collect::<Vec<_>>(), 1).await;
    let h = history(&replicas[0]).await;
    assert_eq!(h.len(), 1, "one revision for three seeds: {h:?}");
    assert_eq!(h[0].2, "file");
    for r in &replicas {
        assert_eq!(history(r).await, h);
    }

    // Restart one replica while another pushes.
    let stopped = replicas.pop().unwrap();
    let dir = stopped.dir;
    stopped.server.shutdown().await.unwrap();
    replicas[0]
        .c
        .rules
        .clone()
        .push(push(&rules("while-down"), 0))
        .await
        .unwrap();
    let config = cluster_config(&dir, &brokers, Duration::from_secs(10));
    let restarted = start(dir, config).await;
    assert_eq!(serving(&restarted), 2, "ready means caught up with the rules topic");
    assert_eq!(history(&restarted).await, history(&replicas[0]).await);
    // Its stale file copy is rewritten from the topic, not pushed back.
    assert_eq!(
        std::fs::read_to_string(restarted.dir.path().join("rules").join("apparel.yaml")).unwrap(),
        rules("while-down")
    );

    let late = replica(&brokers, "seed-late").await;
    assert_eq!(history(&late).await, history(&replicas[0]).await);
    for r in replicas.into_iter().chain([restarted, late]) {
        r.server.shutdown().await.unwrap();
    }
}

/// A record this version cannot read is skipped and counted on every
/// replica, and the topic goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_rules_record_is_skipped_and_counted_everywhere() {
    let (_cluster, brokers) = mock_cluster();
    let a = replica(&brokers, "junk-a").await;
    let b = replica(&brokers, "junk-b").await;
    let unreadable = |text: &str| {
        metric_value(
            text,
            "vitrine_cluster_records_total{topic=\"rules\",result=\"unreadable\"}",
        )
    };
    let before = unreadable(&http_get(a.server.metrics_addr, "/metrics").await);
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    for junk in [&b"not json"[..], br#"{"v":99,"op":"push"}"#, b""] {
        producer
            .send(BaseRecord::<str, [u8]>::to(RULES_TOPIC).key("apparel").payload(junk))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(WAIT).unwrap();
    // Both replicas share this process's metrics: 3 records x 2 replicas.
    wait_for("both replicas to skip the 3 records", || async {
        unreadable(&http_get(a.server.metrics_addr, "/metrics").await) >= before + 6.0
    })
    .await;
    let r =
        b.c.rules
            .clone()
            .push(push(&rules("after"), 0))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(r.revision, 1);
    all_serve(&[&a, &b], 1).await;
    for r in [a, b] {
        r.server.shutdown().await.unwrap();
    }
}

/// Broker unreachable: Push fails UNAVAILABLE within the bound, nothing
/// changes, and Decide keeps answering from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_broker_down_push_fails_unavailable_and_decide_answers() {
    let (cluster, brokers) = mock_cluster();
    let dir = temp_dir("down");
    let config = cluster_config(&dir, &brokers, Duration::from_secs(2));
    let a = start(dir, config).await;
    a.c.rules.clone().push(push(&rules("up"), 0)).await.unwrap();
    cluster.broker_down(1).unwrap();
    let e = a.c.rules.clone().push(push(&rules("down"), 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("rules topic"), "{}", e.message());
    assert_eq!(serving(&a), 1);
    assert_eq!(banner(&a).await, "up");
    cluster.broker_up(1).unwrap();
    // Back: the next push goes through (the failed one may land too: it
    // timed out, it was not refused).
    wait_for("a push through the recovered broker", || {
        let mut client = a.c.rules.clone();
        async move { client.push(push(&rules("again"), 0)).await.is_ok() }
    })
    .await;
    assert_eq!(banner(&a).await, "again");
    a.server.shutdown().await.unwrap();
}

/// Joins futures in order (no futures crate in the tree).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// `Ingest/Track` on one replica reaches every replica: in a cluster its
/// events go through the behavior topic, not only into the taker's index.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_track_on_one_replica_is_applied_by_every_replica() {
    let (_cluster, brokers) = mock_cluster();
    let a = replica(&brokers, "track-a").await;
    let b = replica(&brokers, "track-b").await;
    let vip = "shop: apparel\naudiences:\n  vip: member_tier >= 4\nbanners:\n  - when: vip\n    banner: vip-gold\n  - banner: default\n";
    a.c.rules.clone().push(push(vip, 0)).await.unwrap();
    all_serve(&[&a, &b], 1).await;
    let r =
        a.c.ingest
            .clone()
            .track(pb::TrackRequest {
                events: vec![
                    pb::Event {
                        shop: "apparel".into(),
                        visitor: "v".into(),
                        action: "member".into(),
                        tier: Some(5),
                        ts: Some(vitrine::clock::now_ms()),
                        ..Default::default()
                    },
                    pb::Event {
                        shop: "apparel".into(),
                        visitor: "v".into(),
                        action: "purchase".into(),
                        item: "sku-1".into(),
                        price: Some(-1.0),
                        ts: Some(vitrine::clock::now_ms()),
                        ..Default::default()
                    },
                ],
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(r.accepted, 1);
    assert_eq!(r.rejected.len(), 1);
    // Rejected at the taker, before the topic, with the reason embedded.
    assert_eq!(r.rejected[0].reason, "invalid_value");
    for x in [&a, &b] {
        wait_for("the tracked event on every replica", || async {
            banner(x).await == "vip-gold"
        })
        .await;
    }
    for x in [a, b] {
        x.server.shutdown().await.unwrap();
    }
}
