//! Issue 16: metrics labelled by shop and rule entry take their label values
//! only from the rule files. Thousands of unknown shops, visitors and
//! benefit ids add no series; each decision and claim counts under the
//! entry it chose.

use std::collections::BTreeSet;

use vitrine::commands::serve;
use vitrine_proto::v1 as pb;

use crate::support::{connect, http_get, metric_value, temp_dir, test_config, wait_for};

/// A shop name no other test uses: the metrics registry is the process's.
const SHOP: &str = "labels-shop";

const RULES: &str = "shop: labels-shop
audiences:
  in_cart: carted(7d)
  south: ctx.region == \"south\"
banners:
  - when: in_cart
    banner: cart-banner
  - when: south
    banner: south-banner
benefits:
  - id: coupon
    when: in_cart
    kind: coupon
    cap: { per_visitor: 1, window: 30d }
  - id: gift
    when: south and not in_cart
    kind: gift
";

/// 2026-11-20T00:00:00Z.
const NOW: i64 = 1_795_132_800_000;

/// How many of each made-up thing the flood sends.
const FLOOD: usize = 2_000;

fn decide(shop: &str, visitor: &str, region: &str) -> pb::DecideRequest {
    pb::DecideRequest {
        shop: shop.into(),
        visitor: visitor.into(),
        now_ms: NOW,
        context: Some(pb::Context {
            region: region.into(),
            ..pb::Context::default()
        }),
        ..pb::DecideRequest::default()
    }
}

fn claim(shop: &str, visitor: &str, benefit: &str) -> pb::ClaimRequest {
    pb::ClaimRequest {
        shop: shop.into(),
        visitor: visitor.into(),
        benefit_id: benefit.into(),
        now_ms: NOW,
        ..pb::ClaimRequest::default()
    }
}

fn event(shop: &str, visitor: &str) -> pb::Event {
    pb::Event {
        shop: shop.into(),
        visitor: visitor.into(),
        action: "cart".into(),
        item: "sku-1".into(),
        ts: Some(NOW - 60_000),
        ..pb::Event::default()
    }
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    http_get(addr, "/metrics").await
}

/// The series (name and labels) of `text` that concern this test: its
/// shop, `shop="other"`, or anything it made up (`ghost`).
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("vitrine_"))
        .filter(|l| l.contains(&format!("shop=\"{SHOP}\"")) || l.contains("\"other\"") || l.contains("ghost"))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

fn decisions(slot: &str, entry: &str) -> String {
    format!("vitrine_decisions_by_entry_total{{shop=\"{SHOP}\",slot=\"{slot}\",entry=\"{entry}\"}}")
}

fn claims(benefit: &str, result: &str) -> String {
    format!("vitrine_claims_by_benefit_total{{shop=\"{SHOP}\",benefit=\"{benefit}\",result=\"{result}\"}}")
}

#[tokio::test]
async fn unknown_shops_visitors_and_benefits_add_no_series_and_entries_count_right() {
    let dir = temp_dir("labels");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    c.rules
        .push(pb::PushRequest {
            content: RULES.into(),
            ..pb::PushRequest::default()
        })
        .await
        .unwrap();
    let tracked = c
        .ingest
        .track(pb::TrackRequest {
            events: vec![event(SHOP, "v-cart")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tracked.accepted, 1);

    // Per entry: 3 carted (cart-banner, coupon), 2 south (south-banner,
    // gift), 1 neither (none, none).
    for _ in 0..3 {
        c.decision.decide(decide(SHOP, "v-cart", "north")).await.unwrap();
    }
    for _ in 0..2 {
        c.decision.decide(decide(SHOP, "v-south", "south")).await.unwrap();
    }
    let plain = c
        .decision
        .decide(decide(SHOP, "v-plain", "north"))
        .await
        .unwrap()
        .into_inner();
    assert!(plain.banner.is_none() && plain.benefit.is_none(), "{plain:?}");
    for (visitor, benefit, granted) in [
        ("v-cart", "coupon", true),
        ("v-cart", "coupon", false),
        ("v-plain", "gift", false),
    ] {
        let r = c
            .benefits
            .claim(claim(SHOP, visitor, benefit))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.granted, granted, "{visitor} {benefit}: {r:?}");
    }
    // A rejected event of the shop (no ts) counts under its own label.
    let mut bad = event(SHOP, "v-bad");
    bad.ts = None;
    c.ingest.track(pb::TrackRequest { events: vec![bad] }).await.unwrap();

    // The index gauges of the shop come with the periodic upkeep: wait for
    // them, so that they are part of the series before the flood.
    let addr = server.metrics_addr;
    let gauge = format!("vitrine_index_visitors{{shop=\"{SHOP}\"}}");
    let gauge = gauge.as_str();
    wait_for("the shop's index gauges", || async move {
        metrics(addr).await.contains(gauge)
    })
    .await;
    let text = metrics(addr).await;
    let counted = [
        (decisions("banner", "cart-banner"), 3.0),
        (decisions("banner", "south-banner"), 2.0),
        (decisions("banner", "none"), 1.0),
        (decisions("benefit", "coupon"), 3.0),
        (decisions("benefit", "gift"), 2.0),
        (decisions("benefit", "none"), 1.0),
        (claims("coupon", "GRANTED"), 1.0),
        (claims("coupon", "CAP_REACHED"), 1.0),
        (claims("gift", "NOT_ELIGIBLE"), 1.0),
        (claims("gift", "GRANTED"), 0.0),
        (format!("vitrine_ingest_rejected_by_shop_total{{shop=\"{SHOP}\"}}"), 1.0),
    ];
    for (s, want) in &counted {
        assert_eq!(metric_value(&text, s), *want, "{s} in\n{text}");
    }
    // Other tests of this process may be first to reject an unknown shop's
    // event (the `shop="other"` series): only the series this flood could
    // add count, so the "other" series is left out of the comparison.
    let before: BTreeSet<String> = series(&text)
        .into_iter()
        .filter(|s| !s.contains("shop=\"other\""))
        .collect();
    // The rule file's: 2 banners + 2 benefits x 7 + 2 none + 1 rejected,
    // the revision it serves and 3 index gauges.
    let mine = before.iter().filter(|s| s.contains(SHOP)).count();
    assert_eq!(mine, 2 + 2 * 7 + 2 + 1 + 1 + 3, "{before:#?}");

    // The flood: unknown shops in every call, unknown visitors of the shop,
    // made-up benefit ids, and events of unknown shops.
    let rejected_other = "vitrine_ingest_rejected_by_shop_total{shop=\"other\"}";
    let other_before = metric_value(&text, rejected_other);
    for i in 0..FLOOD {
        let ghost = format!("ghost-shop-{i}");
        c.decision.decide(decide(&ghost, "v-1", "north")).await.unwrap_err();
        c.decision
            .decide(decide(SHOP, &format!("ghost-visitor-{i}"), "north"))
            .await
            .unwrap();
        c.benefits
            .claim(claim(SHOP, "v-cart", &format!("ghost-benefit-{i}")))
            .await
            .unwrap_err();
        c.benefits.claim(claim(&ghost, "v-cart", "coupon")).await.unwrap_err();
    }
    let events = (0..FLOOD).map(|i| event(&format!("ghost-shop-{i}"), &format!("ghost-visitor-{i}")));
    let tracked = c
        .ingest
        .track(pb::TrackRequest {
            events: events.collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tracked.rejected.len(), FLOOD);

    // Track counts its rejections before it answers.
    let text = metrics(server.metrics_addr).await;
    let after: BTreeSet<String> = series(&text)
        .into_iter()
        .filter(|s| !s.contains("shop=\"other\""))
        .collect();
    assert_eq!(
        after.difference(&before).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "series added by the flood"
    );
    // At least: other tests of this process may count there too.
    assert!(metric_value(&text, rejected_other) >= other_before + FLOOD as f64);
    assert_eq!(metric_value(&text, &decisions("banner", "none")), 1.0 + FLOOD as f64);
    server.shutdown().await.unwrap();
}

/// Issue 16, the Kafka path: a behavior message rejected for a served shop
/// counts under that shop, whatever the reason (here a made-up action and a
/// wrong type, found before the event decodes); messages of shops no rule
/// set serves, and unreadable ones, count under `shop="other"` and add no
/// series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_rejections_count_per_served_shop_and_fold_the_rest_into_other() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::ClientConfig;

    const KAFKA_SHOP: &str = "labels-kafka";
    let cluster = MockCluster::new(1).unwrap();
    for (topic, partitions) in [
        ("vitrine.rules", 1),
        ("vitrine.claims", 6),
        ("vitrine.behavior", 2),
        ("vitrine.decisions", 2),
    ] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let dir = temp_dir("labels-kafka");
    let server = serve::start(vitrine::config::Config {
        kafka: Some(vitrine::config::KafkaConfig::new(&brokers)),
        ..test_config(dir.path())
    })
    .await
    .unwrap();
    let addr = server.metrics_addr;
    wait_for("the replica to be ready", || async move {
        http_get(addr, "/readyz").await.starts_with("HTTP/1.1 200")
    })
    .await;
    let mut c = connect(server.grpc_addr).await;
    let content = format!("shop: {KAFKA_SHOP}\nbanners:\n  - banner: default\n");
    c.rules
        .push(pb::PushRequest {
            content,
            ..pb::PushRequest::default()
        })
        .await
        .unwrap();
    let mine = format!("vitrine_ingest_rejected_by_shop_total{{shop=\"{KAFKA_SHOP}\"}}");
    let other = "vitrine_ingest_rejected_by_shop_total{shop=\"other\"}";
    let before = metrics(addr).await;
    let other_before = metric_value(&before, other);

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "1")
        .create()
        .unwrap();
    let mut payloads = vec![
        format!(r#"{{"shop":"{KAFKA_SHOP}","visitor":"v","action":"buy","item":"sku-1","ts":{NOW}}}"#),
        format!(r#"{{"shop":"{KAFKA_SHOP}","visitor":"v","action":"view","item":7,"ts":{NOW}}}"#),
        "not json".to_string(),
    ];
    for i in 0..200 {
        payloads.push(format!(
            r#"{{"shop":"ghost-kafka-{i}","visitor":"ghost-v-{i}","action":"view","item":"sku-1","ts":{NOW}}}"#
        ));
    }
    for p in &payloads {
        producer
            .send(BaseRecord::<str, str>::to("vitrine.behavior").key("k").payload(p))
            .map_err(|(e, _)| e)
            .unwrap();
        producer.poll(std::time::Duration::ZERO);
    }
    producer.flush(crate::support::WAIT).unwrap();

    let want_other = other_before + 201.0;
    wait_for("every rejection counted", || async move {
        let text = metrics(addr).await;
        metric_value(
            &text,
            &format!("vitrine_ingest_rejected_by_shop_total{{shop=\"{KAFKA_SHOP}\"}}"),
        ) >= 2.0
            && metric_value(&text, other) >= want_other
    })
    .await;
    let text = metrics(addr).await;
    assert_eq!(metric_value(&text, &mine), 2.0, "{mine}");
    assert!(
        !text.contains("ghost"),
        "a made-up shop or visitor became a label:\n{text}"
    );
    server.shutdown().await.unwrap();
}
