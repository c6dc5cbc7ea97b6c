//! Attacks on the decision log's reading side and its exposures: each test
//! pins a defect found by attacking it (what the input was, what must hold).

use vitrine::commands::serve::{self, Server};
use vitrine::config::Config;
use vitrine::decisions::apply::{apply_message, Applied};
use vitrine::decisions::DecisionLogConfig;
use vitrine::metrics::decisions::RecordRejected;
use vitrine_proto::v1 as pb;

use crate::cluster_kit;
use crate::support::{connect, temp_dir, test_config, wait_for, Clients, TempDir};

const SHOP: &str = "apparel";
const NOW: i64 = 1_764_400_000_000;

async fn embedded(dir: &TempDir, rules: &str) -> (Server, Clients) {
    let server = serve::start(Config {
        decision_log: DecisionLogConfig::default(),
        ..test_config(dir.path())
    })
    .await
    .unwrap();
    let c = connect(server.grpc_addr).await;
    c.rules.clone().push(cluster_kit::push(rules, 0)).await.unwrap();
    (server, c)
}

fn record(visitor: &str, banner: &str) -> String {
    format!(
        r#"{{"decision_id":"x-1","ts":{NOW},"shop":"{SHOP}","visitor":"{visitor}","revision":1,"banner":"{banner}","items":[],"benefit":null,"held_out":[],"replica":"x"}}"#
    )
}

/// A shop whose first state is an exposure (a Decide before any event, the
/// usual order for a new visitor) had its index created on UTC's clock
/// whatever its `timezone:`: every later window of that shop counted UTC
/// days, and a push could no longer fix it. The index is created on the
/// zone of the shop's rule file, as it is for a first event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_exposure_creates_the_shop_index_on_the_rule_files_zone() {
    let dir = temp_dir("attack-zone");
    let rules = "shop: apparel\ntimezone: Asia/Shanghai\nbanners:\n  - banner: welcome\n";
    let (server, c) = embedded(&dir, rules).await;
    assert!(server.engine.index.shop(SHOP).is_none(), "no event yet");
    let req = pb::DecideRequest {
        shop: SHOP.into(),
        visitor: "v-1".into(),
        now_ms: NOW,
        ..Default::default()
    };
    c.decision.clone().decide(req).await.unwrap();
    wait_for("the exposure applied", || async {
        server.engine.decisions.stats().exposures_applied == 1
    })
    .await;
    let shop = server.engine.index.shop(SHOP).unwrap();
    assert_eq!(shop.zone().name(), "Asia/Shanghai");
    server.shutdown().await.unwrap();
}

/// 10^5 distinct banner ids on the topic: past the shop's bound on
/// interned ids the records were refused by the index yet counted as
/// applied exposures, never as rejected. They are rejected and counted
/// (`too_many_entries`), and the bound holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_past_the_bound_on_entry_ids_are_rejected_and_counted() {
    let dir = temp_dir("attack-entries");
    let (server, _c) = embedded(&dir, "shop: apparel\nbanners:\n  - banner: welcome\n").await;
    let engine = &server.engine;
    let bound = vitrine_core::exposure::MAX_ENTRIES as usize;
    let extra = 100;
    let mut rejected = 0;
    for i in 0..bound + extra {
        match apply_message(engine, Some(record("v", &format!("b{i}")).as_bytes())) {
            Ok(Applied::Exposure) => {}
            Err(RecordRejected::TooManyEntries) => rejected += 1,
            other => panic!("record {i}: {other:?}"),
        }
    }
    assert_eq!(rejected, extra);
    let s = engine.decisions.stats();
    assert_eq!((s.exposures_applied, s.rejected), (bound as u64, extra as u64));
    // A known id still applies.
    assert_eq!(
        apply_message(engine, Some(record("w", "b0").as_bytes())),
        Ok(Applied::Exposure)
    );
    server.shutdown().await.unwrap();
}

/// What held: hostile shapes are refused with their reason, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_record_shapes_are_refused_with_their_reason() {
    let dir = temp_dir("attack-shapes");
    let (server, _c) = embedded(&dir, "shop: apparel\nbanners:\n  - banner: welcome\n").await;
    let engine = &server.engine;
    let good = record("v", "welcome");
    let deep = good.replace(
        r#""replica":"x""#,
        &format!(r#""replica":"x","f":{}1{}"#, "[".repeat(10_000), "]".repeat(10_000)),
    );
    // Deep nesting in an unknown field is skipped without recursion (and
    // bounded by the record's size); in a known field it is a type error.
    assert_eq!(apply_message(engine, Some(deep.as_bytes())), Ok(Applied::Exposure));
    let deep_items = good.replace(
        r#""items":[]"#,
        &format!(r#""items":{}1{}"#, "[".repeat(10_000), "]".repeat(10_000)),
    );
    let cases = [
        (deep_items, RecordRejected::Malformed),
        (
            good.replace(r#""visitor":"v""#, &format!(r#""visitor":"{}""#, "v".repeat(513))),
            RecordRejected::BadId,
        ),
        (
            good.replace(r#""visitor":"v""#, r#""visitor":7"#),
            RecordRejected::Malformed,
        ),
        (
            good.replace(&format!(r#""ts":{NOW}"#), r#""ts":253402300800000"#),
            RecordRejected::BadTs,
        ),
        (
            good.replace(&format!(r#""ts":{NOW}"#), r#""ts":1e300"#),
            RecordRejected::Malformed,
        ),
        (
            good.replace(r#""held_out":[]"#, r#""held_out":[{"slot":"items","id":"x"}]"#),
            RecordRejected::BadSlot,
        ),
    ];
    for (text, reason) in cases {
        assert_eq!(apply_message(engine, Some(text.as_bytes())), Err(reason), "{text:.120}");
    }
    assert_eq!(apply_message(engine, Some(good.as_bytes())), Ok(Applied::Exposure));
    server.shutdown().await.unwrap();
}

/// What held: hostile Lift requests get precise refusals, and Lift runs
/// while decisions and purchases flow: it never fails, and the groups only
/// grow until every decided visitor is in one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_and_concurrent_lift_requests() {
    use tonic::transport::Channel;
    use tonic::Code;
    let dir = temp_dir("attack-lift");
    let rules =
        "shop: apparel\ntimezone: Asia/Kathmandu\nbenefits:\n  - id: points\n    kind: points\n    holdout: 50%\n";
    let (server, c) = embedded(&dir, rules).await;
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let reports = pb::reports_client::ReportsClient::new(channel);
    let lift = |window: &str, from_ms: i64, to_ms: i64| pb::LiftRequest {
        shop: SHOP.into(),
        id: "points".into(),
        window: window.into(),
        from_ms,
        to_ms,
    };
    let max_ts = vitrine_core::event::MAX_TS;
    let cases = [
        (lift("0d", 0, 0), Code::InvalidArgument),
        (lift("0h", 0, 0), Code::InvalidArgument),
        (lift("401d", 0, 0), Code::InvalidArgument),
        (lift("99999999999999999999d", 0, 0), Code::InvalidArgument),
        (lift("-1d", 0, 0), Code::InvalidArgument),
        (lift(&"7".repeat(100_000), 0, 0), Code::InvalidArgument),
        (lift("7d", -1, 0), Code::InvalidArgument),
        (lift("7d", i64::MIN, i64::MAX), Code::InvalidArgument),
        (lift("7d", 0, max_ts + 1), Code::InvalidArgument),
        (lift("7d", 5, 5), Code::InvalidArgument),
    ];
    for (req, code) in cases {
        let shown = format!("{:.60} {} {}", req.window, req.from_ms, req.to_ms);
        let got = reports.clone().lift(req).await.map(|_| ()).map_err(|e| e.code());
        assert_eq!(got, Err(code), "{shown}");
    }
    for (from, to) in [(0, max_ts), (max_ts - 1, max_ts), (max_ts, 0), (1, 2)] {
        let r = reports.clone().lift(lift("400d", from, to)).await.unwrap().into_inner();
        assert_eq!((r.rows[0].treated, r.rows[0].control), (0, 0), "{from} {to}");
    }
    let unknown = pb::LiftRequest {
        shop: "nowhere".into(),
        ..lift("7d", 0, 0)
    };
    assert_eq!(reports.clone().lift(unknown).await.unwrap_err().code(), Code::NotFound);

    // Decisions and purchases flow while Lift runs.
    const VISITORS: usize = 200;
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..VISITORS {
                let visitor = format!("v-{i}");
                let decide = pb::DecideRequest {
                    shop: SHOP.into(),
                    visitor: visitor.clone(),
                    now_ms: NOW + i as i64 * 60_000,
                    ..Default::default()
                };
                c.decision.clone().decide(decide).await.unwrap();
                let purchase = pb::Event {
                    shop: SHOP.into(),
                    visitor,
                    action: "purchase".into(),
                    item: "sku-1".into(),
                    price: Some(10.0),
                    ts: Some(NOW + i as i64 * 60_000 + 1),
                    ..pb::Event::default()
                };
                c.ingest
                    .clone()
                    .track(pb::TrackRequest { events: vec![purchase] })
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen = 0;
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "Lift never saw every decision: {seen}"
        );
        let done = writer.is_finished();
        let r = reports.clone().lift(lift("7d", 0, 0)).await.unwrap().into_inner();
        let row = &r.rows[0];
        let total = row.treated + row.control;
        assert!(total >= seen, "the groups shrank: {total} after {seen}");
        assert!(row.treated_converted <= row.treated && row.control_converted <= row.control);
        assert!(
            row.ci_low.is_finite() && row.ci_high.is_finite() && row.ci_low <= row.ci_high,
            "{row:?}"
        );
        seen = total;
        if done && server.engine.decisions.stats().exposures_applied == VISITORS as u64 && total == VISITORS as u64 {
            break;
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    server.shutdown().await.unwrap();
}

/// What held: a shutdown while records are queued drains them, applies
/// each once, and the final snapshot holds their exposures. More records
/// than one drainer batch are queued and the drainer is held until the
/// shutdown has asked it to stop, so the rest drain on the stopping path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The drainer is a plain thread: holding its gate across awaits blocks no task.
#[allow(clippy::await_holding_lock)]
async fn a_shutdown_with_records_queued_snapshots_their_exposures() {
    let rules = "shop: apparel\nbanners:\n  - when: offered(30d, benefit=\"coupon-10\")\n    banner: seen-coupon\n  - banner: welcome\nbenefits:\n  - id: coupon-10\n    kind: coupon\n";
    let dir = temp_dir("attack-queued");
    let (server, c) = embedded(&dir, rules).await;
    let decide = |visitor: String| pb::DecideRequest {
        shop: SHOP.into(),
        visitor,
        now_ms: NOW,
        ..Default::default()
    };
    const N: usize = 1500;
    let engine = server.engine.clone();
    let log = engine.decisions.log().unwrap();
    let held = log.block_drainer();
    for i in 0..N {
        c.decision.clone().decide(decide(format!("v-{i}"))).await.unwrap();
    }
    let s = engine.decisions.stats();
    assert_eq!((s.logged, s.dropped), (N as u64, 0));
    let shutdown = tokio::spawn(server.shutdown());
    wait_for("the shutdown to stop the drainer", || async { log.stopping() }).await;
    drop(held);
    shutdown.await.unwrap().unwrap();
    let s = engine.decisions.stats();
    assert_eq!((s.drained, s.exposures_applied), (N as u64, N as u64), "{s:?}");
    drop(engine);
    let server = serve::start(Config {
        decision_log: DecisionLogConfig::default(),
        ..test_config(dir.path())
    })
    .await
    .unwrap();
    let c = connect(server.grpc_addr).await;
    for i in (0..N).step_by(7) {
        let r = c
            .decision
            .clone()
            .decide(decide(format!("v-{i}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.banner.map(|b| b.id).as_deref(), Some("seen-coupon"), "v-{i}");
    }
    server.shutdown().await.unwrap();
}
