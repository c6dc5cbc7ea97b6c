//! The rule language's second edition over gRPC: banner params, the
//! member-tier preview with its gap, the smart add-on (items with the
//! reason `add_on` and `add_on_gap`) from prices events carry, and the
//! budget left on Decide and Claim.

use std::collections::HashMap;

use vitrine::commands::serve;
use vitrine_proto::v1 as pb;

use crate::support::{connect, temp_dir, test_config};

const RULES: &str = r#"shop: lang
tiers:
  by: spend(365d)
  levels:
    - { tier: 1, name: silver, at: 500 }
    - { tier: 2, name: gold, at: 2000 }
    - { tier: 3, name: platinum, at: 5000 }
audiences:
  would_be_gold: preview_tier >= 2
banners:
  - when: would_be_gold
    banner: join-as-gold
    params: { image: "gold-card.jpg", headline: "You are already Gold" }
  - banner: default
items:
  limit: 3
  add_on:
    threshold: 99
    cart_total: ctx.cart_total
  pools:
    - items: [sku-cheap, sku-mid, sku-dear, sku-unpriced]
benefits:
  - id: gift
    kind: gift
    budget: 3
"#;

/// 2026-11-20T00:00:00Z.
const NOW: i64 = 1_795_132_800_000;
const HOUR: i64 = 3_600_000;

fn event(visitor: &str, action: &str, item: &str, price: Option<f64>, ts: i64) -> pb::Event {
    pb::Event {
        shop: "lang".into(),
        visitor: visitor.into(),
        action: action.into(),
        item: item.into(),
        price,
        ts: Some(ts),
        ..pb::Event::default()
    }
}

fn decide(visitor: &str, cart_total: Option<&str>) -> pb::DecideRequest {
    pb::DecideRequest {
        shop: "lang".into(),
        visitor: visitor.into(),
        now_ms: NOW,
        context: Some(pb::Context {
            attributes: cart_total
                .map(|t| HashMap::from([("cart_total".to_string(), t.to_string())]))
                .unwrap_or_default(),
            ..pb::Context::default()
        }),
        ..pb::DecideRequest::default()
    }
}

#[tokio::test]
async fn decide_returns_params_tier_preview_add_on_and_remaining() {
    let dir = temp_dir("language");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    c.rules
        .push(pb::PushRequest {
            content: RULES.into(),
            dry_run: false,
            expected_revision: 0,
        })
        .await
        .unwrap();
    let events = vec![
        // v-1 spent 2 x 1200 = 2400: gold, 2600 short of platinum.
        pb::Event {
            quantity: Some(2),
            ..event("v-1", "purchase", "sku-x", Some(1200.0), NOW - 48 * HOUR)
        },
        // Prices told by another visitor's views; the newest one wins.
        event("v-2", "view", "sku-cheap", Some(20.0), NOW - 3 * HOUR),
        event("v-2", "view", "sku-mid", Some(60.0), NOW - 3 * HOUR),
        event("v-2", "view", "sku-mid", Some(45.0), NOW - 2 * HOUR),
        event("v-2", "view", "sku-dear", Some(80.0), NOW - 3 * HOUR),
        event("v-2", "view", "sku-unpriced", None, NOW - 3 * HOUR),
    ];
    let tracked = c.ingest.track(pb::TrackRequest { events }).await.unwrap().into_inner();
    assert_eq!((tracked.accepted, tracked.rejected.len()), (6, 0));

    let d = c.decision.decide(decide("v-1", Some("60"))).await.unwrap().into_inner();
    let banner = d.banner.unwrap();
    assert_eq!(banner.id, "join-as-gold");
    assert_eq!(
        banner.params,
        HashMap::from([
            ("image".to_string(), "gold-card.jpg".to_string()),
            ("headline".to_string(), "You are already Gold".to_string()),
        ])
    );
    assert_eq!(
        d.tier_preview,
        Some(pb::TierPreview {
            tier: 2,
            name: "gold".into(),
            next_tier: 3,
            next_name: "platinum".into(),
            gap: 2600.0,
        })
    );
    // Gap 99 - 60 = 39: the priced items of at least 39, cheapest first.
    assert_eq!(d.add_on_gap, Some(39.0));
    let items: Vec<_> = d.items.iter().map(|i| (i.id.as_str(), i.reason.as_str())).collect();
    assert_eq!(
        items,
        [("sku-mid", "add_on"), ("sku-dear", "add_on"), ("sku-cheap", "pool")]
    );
    let benefit = d.benefit.unwrap();
    assert_eq!((benefit.id.as_str(), benefit.remaining), ("gift", Some(3)));

    // A cart at the threshold, or no number: no add-on.
    for total in [Some("99"), Some("lots"), None] {
        let d = c.decision.decide(decide("v-1", total)).await.unwrap().into_inner();
        assert_eq!(d.add_on_gap, None, "{total:?}");
        assert!(d.items.iter().all(|i| i.reason != "add_on"), "{total:?}");
    }
    // A visitor the shop does not know: no tier preview, the default banner.
    let d = c.decision.decide(decide("stranger", None)).await.unwrap().into_inner();
    assert_eq!((d.tier_preview, d.banner.unwrap().id.as_str()), (None, "default"));

    // Claims count down the budget, on the Claim and on the next Decide.
    for (visitor, left) in [("v-1", 2), ("v-2", 1)] {
        let r = c
            .benefits
            .claim(pb::ClaimRequest {
                shop: "lang".into(),
                visitor: visitor.into(),
                benefit_id: "gift".into(),
                now_ms: NOW,
                claim_id: String::new(),
                context: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.granted, r.remaining), (true, Some(left)));
        let d = c.decision.decide(decide("v-1", None)).await.unwrap().into_inner();
        assert_eq!(d.benefit.unwrap().remaining, Some(left));
    }
    server.shutdown().await.unwrap();
}

/// In a cluster, each Claim answers the budget left on the ledger the claims
/// topic fills, wherever it arrives; every replica's Decide then agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_agrees_across_replicas() {
    use std::time::Duration;

    use crate::cluster_kit::{cluster_config, mock_cluster, start};
    use crate::support::wait_for;

    let (_cluster, brokers) = mock_cluster();
    let mut replicas = Vec::new();
    for i in 0..2 {
        let dir = temp_dir(&format!("language-cluster-{i}"));
        std::fs::write(dir.path().join("rules").join("lang.yaml"), RULES).unwrap();
        let config = cluster_config(&dir, &brokers, Duration::from_secs(10));
        replicas.push(start(dir, config).await);
    }
    for r in &replicas {
        let c = r.c.clone();
        wait_for("the replica to serve `lang`", || {
            let mut c = c.clone();
            async move { c.decision.decide(decide("v-1", None)).await.is_ok() }
        })
        .await;
    }
    for (i, visitor) in ["a", "b", "c"].into_iter().enumerate() {
        let r = replicas[i % 2]
            .c
            .clone()
            .benefits
            .claim(pb::ClaimRequest {
                shop: "lang".into(),
                visitor: visitor.into(),
                benefit_id: "gift".into(),
                now_ms: NOW,
                claim_id: String::new(),
                context: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.reason.as_str(), r.remaining),
            ("GRANTED", Some(2 - i as u64)),
            "claim {i} on replica {}",
            i % 2
        );
    }
    for (i, r) in replicas.iter().enumerate() {
        let ledger = r.server.engine.ledger.clone();
        wait_for(&format!("replica {i} to apply the three grants"), || {
            let ledger = ledger.clone();
            async move { ledger.usage("lang", "gift", "", None).total == 3 }
        })
        .await;
        let d =
            r.c.clone()
                .decision
                .decide(decide("v-1", None))
                .await
                .unwrap()
                .into_inner();
        assert!(d.benefit.is_none(), "replica {i}: the budget of 3 is spent everywhere");
    }
    for r in replicas {
        r.server.shutdown().await.unwrap();
    }
}
