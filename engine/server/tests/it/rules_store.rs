//! The rule store through the server: what survives a restart, which file a
//! push writes, which file serves a shop, and which shop names are accepted.

use std::path::Path;
use std::time::Duration;

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use vitrine::commands::serve;
use vitrine::config::Config;
use vitrine_proto::v1 as pb;

use crate::support::{connect, temp_dir, wait_for, Clients};

/// 2026-11-20T00:00:00Z.
const NOW: i64 = 1_795_132_800_000;

fn rules(shop: &str, banner: &str) -> String {
    format!("shop: {shop}\nbanners:\n  - banner: {banner}\n")
}

fn config(dir: &Path) -> Config {
    Config {
        rules_poll: Duration::from_millis(20),
        ..crate::support::test_config(dir)
    }
}

fn push(content: &str) -> pb::PushRequest {
    pb::PushRequest {
        content: content.to_string(),
        dry_run: false,
        expected_revision: 0,
    }
}

/// The banner and revision a shop serves, through Decide.
async fn served(c: &mut Clients, shop: &str) -> (String, u64) {
    let d = c
        .decision
        .decide(pb::DecideRequest {
            shop: shop.into(),
            visitor: "v".into(),
            now_ms: NOW,
            ..pb::DecideRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    (d.banner.unwrap().id, d.rule_revision)
}

async fn health(c: &mut Clients) -> ServingStatus {
    let h = c
        .health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(h.status).unwrap()
}

/// Regression (hardening #7): after a broken hand edit and a restart, the
/// shop serves its last good revision from data/revisions (it was NOT_FOUND,
/// List and Rollback too); List, Get and Rollback work; health is SERVING.
#[tokio::test]
async fn a_restart_after_a_broken_edit_serves_the_last_good_revision() {
    let dir = temp_dir("store-broken-restart");
    std::fs::write(dir.path().join("rules").join("apparel.yaml"), rules("apparel", "one")).unwrap();
    let server = serve::start(config(dir.path())).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    c.rules.push(push(&rules("apparel", "two"))).await.unwrap();
    server.shutdown().await.unwrap();

    std::fs::write(
        dir.path().join("rules").join("apparel.yaml"),
        "shop: apparel\nbanners: [oops\n",
    )
    .unwrap();
    let server = serve::start(config(dir.path())).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    assert_eq!(served(&mut c, "apparel").await, ("two".to_string(), 2));
    let counters = server.engine.rules.counters();
    assert_eq!((counters.files_rejected, counters.shops_restored), (1, 1));
    let list = c
        .rules
        .list(pb::ListRequest { shop: "apparel".into() })
        .await
        .unwrap()
        .into_inner();
    let revisions: Vec<_> = list.revisions.iter().map(|r| (r.revision, r.serving)).collect();
    assert_eq!(revisions, [(1, false), (2, true)]);
    let first = c
        .rules
        .get(pb::GetRequest {
            shop: "apparel".into(),
            revision: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.content, rules("apparel", "one"));
    let back = c
        .rules
        .rollback(pb::RollbackRequest {
            shop: "apparel".into(),
            revision: 1,
            expected_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.revision, 3);
    assert_eq!(served(&mut c, "apparel").await, ("one".to_string(), 3));
    assert_eq!(health(&mut c).await, ServingStatus::Serving);
    server.shutdown().await.unwrap();
}

/// Regression (hardening #8): a push of shop `foo` leaves `foo.yaml`
/// holding shop `bar` alone; both shops serve after a restart.
#[tokio::test]
async fn a_push_does_not_overwrite_a_file_holding_another_shop() {
    let dir = temp_dir("store-overwrite");
    std::fs::write(dir.path().join("rules").join("foo.yaml"), rules("bar", "bar")).unwrap();
    let server = serve::start(config(dir.path())).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    c.rules.push(push(&rules("foo", "foo"))).await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rules").join("foo.yaml")).unwrap(),
        rules("bar", "bar")
    );

    let server = serve::start(config(dir.path())).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    assert_eq!(served(&mut c, "bar").await, ("bar".to_string(), 1));
    assert_eq!(served(&mut c, "foo").await, ("foo".to_string(), 1));
    server.shutdown().await.unwrap();
}

/// Regression (hardening #9): a file added at run time that names a shop
/// already served by an earlier file is reported and ignored; pushes keep
/// going to the first file; a restart serves the same.
#[tokio::test]
async fn a_duplicate_shop_file_added_at_run_time_is_ignored() {
    let dir = temp_dir("store-duplicate");
    std::fs::write(dir.path().join("rules").join("a.yaml"), rules("apparel", "a")).unwrap();
    let server = serve::start(config(dir.path())).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    std::fs::write(dir.path().join("rules").join("b.yaml"), rules("apparel", "b")).unwrap();
    // Written after b.yaml and sorted after it: once zeta serves, the poll
    // that loaded it has seen b.yaml too.
    std::fs::write(dir.path().join("rules").join("z.yaml"), rules("zeta", "z")).unwrap();
    wait_for("the rules dir poll to serve zeta", || async {
        server.engine.rules.serving("zeta").is_some()
    })
    .await;
    assert_eq!(served(&mut c, "apparel").await, ("a".to_string(), 1));
    assert_eq!(server.engine.rules.counters().files_duplicate, 1);

    c.rules.push(push(&rules("apparel", "pushed"))).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rules").join("a.yaml")).unwrap(),
        rules("apparel", "pushed")
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rules").join("b.yaml")).unwrap(),
        rules("apparel", "b")
    );
    server.shutdown().await.unwrap();

    let server = serve::start(config(dir.path())).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    assert_eq!(served(&mut c, "apparel").await, ("pushed".to_string(), 2));
    assert_eq!(server.engine.rules.counters().files_duplicate, 1);
    server.shutdown().await.unwrap();
}

/// Regression (hardening #15a): a shop name longer than a file name can be
/// was INTERNAL "File name too long"; it is INVALID_ARGUMENT naming the limit.
#[tokio::test]
async fn an_overlong_shop_name_is_invalid_argument() {
    let dir = temp_dir("store-long-shop");
    let server = serve::start(config(dir.path())).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    let shop = "s".repeat(300);
    let status = c.rules.push(push(&rules(&shop, "b"))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        format!(
            "shop `{}...` is 300 bytes long; a shop name has at most 80 bytes",
            "s".repeat(32)
        )
    );
    let ok = c.rules.push(push(&rules(&"s".repeat(80), "b"))).await.unwrap();
    assert_eq!(ok.into_inner().revision, 1);
    server.shutdown().await.unwrap();
}
