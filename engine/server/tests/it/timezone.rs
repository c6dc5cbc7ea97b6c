//! Shop time zones through the server: a shop's index counts hours on its
//! rules' zone from its first event, across a restart; a push, a dry run or
//! a rollback that would move it to another zone is refused; a rule file
//! that does is served, logged and counted, and windows keep the index's zone.

use std::time::Duration;

use tonic::Code;
use vitrine::commands::serve;
use vitrine::config::Config;
use vitrine_proto::v1 as pb;

use crate::support::{connect, http_get, metric_value, temp_dir, wait_for, Clients};

/// 2026-11-10T23:59:00+08:00: one minute before midnight in Shanghai.
const LATE: i64 = 1_794_326_340_000;
/// 2026-11-10T23:59:59+08:00.
const LAST_SECOND: i64 = 1_794_326_399_000;
/// 2026-11-11T00:00:30+08:00 (still 2026-11-10 in UTC).
const NEXT_DAY: i64 = 1_794_326_430_000;

fn rules(zone: &str, banner: &str) -> String {
    format!(
        "shop: tz\ntimezone: {zone}\naudiences:\n  today: visited(1d)\nbanners:\n  - when: today\n    banner: {banner}\n  - banner: none\n"
    )
}

fn push(content: &str, dry_run: bool) -> pb::PushRequest {
    pb::PushRequest {
        content: content.to_string(),
        dry_run,
        expected_revision: 0,
    }
}

fn config(dir: &std::path::Path) -> Config {
    Config {
        rules_poll: Duration::from_millis(20),
        ..crate::support::test_config(dir)
    }
}

async fn banner(c: &mut Clients, now_ms: i64) -> String {
    let d = c
        .decision
        .decide(pb::DecideRequest {
            shop: "tz".into(),
            visitor: "v".into(),
            now_ms,
            ..pb::DecideRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    d.banner.map(|b| b.id).unwrap_or_default()
}

/// "Today" is Shanghai's day: the 23:59 event counts at 23:59:59 and not
/// half a minute after midnight (both instants are the same UTC day).
async fn assert_shanghai_days(c: &mut Clients, banner_id: &str) {
    assert_eq!(banner(c, LAST_SECOND).await, banner_id);
    assert_eq!(banner(c, NEXT_DAY).await, "none");
}

const REFUSED: &str = "shop `tz` cannot move from timezone Asia/Shanghai to America/New_York: its index counts hours on Asia/Shanghai's clock and cannot be re-bucketed exactly; nothing changed. Keep `timezone: Asia/Shanghai`, or rebuild the shop's index under the new zone (rules/README.md, \"Time zone\")";

#[tokio::test]
async fn a_shops_index_keeps_its_zone_and_a_push_that_moves_it_is_refused() {
    let dir = temp_dir("timezone");
    let server = serve::start(config(dir.path())).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    // Before any event there is no index: any zone may be pushed.
    c.rules
        .push(push(&rules("America/New_York", "x"), false))
        .await
        .unwrap();
    c.rules
        .push(push(&rules("Asia/Shanghai", "today"), false))
        .await
        .unwrap();
    let tracked = c
        .ingest
        .track(pb::TrackRequest {
            events: vec![pb::Event {
                shop: "tz".into(),
                visitor: "v".into(),
                action: "view".into(),
                item: "sku-1".into(),
                ts: Some(LATE),
                ..pb::Event::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tracked.accepted, 1);
    assert_shanghai_days(&mut c, "today").await;

    // Moving the indexed shop: refused, dry run or not, and nothing changes.
    for dry_run in [true, false] {
        let e = c
            .rules
            .push(push(&rules("America/New_York", "moved"), dry_run))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::FailedPrecondition, REFUSED),
            "dry run {dry_run}"
        );
    }
    // So is a rollback to the revision written in New York's zone.
    let e = c
        .rules
        .rollback(pb::RollbackRequest {
            shop: "tz".into(),
            revision: 1,
            expected_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, REFUSED));
    // The same zone with other banners is an ordinary push.
    let pushed = c
        .rules
        .push(push(&rules("Asia/Shanghai", "today2"), false))
        .await
        .unwrap();
    assert_eq!(pushed.into_inner().revision, 3);
    assert_shanghai_days(&mut c, "today2").await;

    // Across a restart (final snapshot, ZONE section) the index keeps its zone.
    server.shutdown().await.unwrap();
    let server = serve::start(config(dir.path())).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    assert_shanghai_days(&mut c, "today2").await;

    // A rule file cannot be refused: it serves, the conflict is counted once,
    // and windows keep following the index's zone.
    let metrics_addr = server.metrics_addr;
    let conflicts = || async move {
        metric_value(
            &http_get(metrics_addr, "/metrics").await,
            "vitrine_rules_zone_conflicts_total",
        )
    };
    assert_eq!(conflicts().await, 0.0);
    let file = std::fs::read_dir(dir.path().join("rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p).unwrap().starts_with("shop: tz\n"))
        .unwrap();
    std::fs::write(&file, rules("America/New_York", "edited")).unwrap();
    wait_for("the conflict to be counted", || async { conflicts().await == 1.0 }).await;
    assert_shanghai_days(&mut c, "edited").await;
    // Counted once per shop and zone, however many polls and edits see it.
    std::fs::write(&file, rules("America/New_York", "edited-again")).unwrap();
    wait_for("the second edit to serve", || {
        let mut c = c.clone();
        async move { banner(&mut c, LAST_SECOND).await == "edited-again" }
    })
    .await;
    assert_eq!(conflicts().await, 1.0);
    server.shutdown().await.unwrap();
}
