//! Reports/Lift end to end in embedded mode: decisions logged in-process
//! become exposures, purchases tracked after them become conversions, and
//! the report's counts equal what the test itself saw in the Decide answers.

use tonic::transport::Channel;
use tonic::Code;
use vitrine::commands::serve;
use vitrine_proto::v1 as pb;

use crate::support::{connect, temp_dir, test_config, wait_for};

const SHOP: &str = "lift-shop";
const RULES: &str = "shop: lift-shop
benefits:
  - id: points
    kind: points
    holdout: 30%
  - id: fallback
    kind: gift
";
/// 2026-11-20T00:00:00Z.
const T0: i64 = 1_795_132_800_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const VISITORS: usize = 300;

fn event(visitor: &str, action: &str, ts: i64, price: Option<f64>) -> pb::Event {
    pb::Event {
        shop: SHOP.into(),
        visitor: visitor.into(),
        action: action.into(),
        item: "sku-1".into(),
        price,
        ts: Some(ts),
        ..pb::Event::default()
    }
}

fn lift(id: &str, window: &str) -> pb::LiftRequest {
    pb::LiftRequest {
        shop: SHOP.into(),
        id: id.into(),
        window: window.into(),
        ..pb::LiftRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lift_report_counts_what_the_decisions_and_purchases_were() {
    let dir = temp_dir("reports");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reports = pb::reports_client::ReportsClient::new(channel);
    c.rules
        .push(pb::PushRequest {
            content: RULES.into(),
            ..pb::PushRequest::default()
        })
        .await
        .unwrap();

    // Every visitor is known, then decided at T0 + 1h.
    let visitors: Vec<String> = (0..VISITORS).map(|i| format!("v-{i:04}")).collect();
    let views: Vec<pb::Event> = visitors.iter().map(|v| event(v, "view", T0, None)).collect();
    let r = c
        .ingest
        .track(pb::TrackRequest { events: views })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted as usize, VISITORS);
    let (mut treated, mut control) = (Vec::new(), Vec::new());
    for v in &visitors {
        let d = c
            .decision
            .decide(pb::DecideRequest {
                shop: SHOP.into(),
                visitor: v.clone(),
                now_ms: T0 + HOUR,
                explain: true,
                ..pb::DecideRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!d.decision_id.is_empty());
        let benefit = d.benefit.map(|b| b.id).unwrap_or_default();
        let held_out = d
            .explanation
            .unwrap_or_default()
            .steps
            .iter()
            .any(|s| s.entry.ends_with(" points") && s.outcome == "held out");
        match (benefit.as_str(), held_out) {
            ("points", false) => treated.push(v.clone()),
            // A held-out visitor gets the next benefit: the control group.
            ("fallback", true) => control.push(v.clone()),
            other => panic!("{v}: unexpected decision {other:?}"),
        }
    }
    // A 30% holdout of 300 visitors: both groups are there.
    assert!(
        control.len() > 50 && treated.len() > 150,
        "{} / {}",
        treated.len(),
        control.len()
    );

    // Every third visitor buys 2h after the decision (inside 7d); every
    // third + 1 buys after 9 days (outside 7d, inside 30d).
    let mut purchases = Vec::new();
    for (i, v) in visitors.iter().enumerate() {
        match i % 3 {
            0 => purchases.push(event(v, "purchase", T0 + 3 * HOUR, Some(10.0))),
            1 => purchases.push(event(v, "purchase", T0 + 9 * DAY, Some(25.0))),
            _ => {}
        }
    }
    c.ingest.track(pb::TrackRequest { events: purchases }).await.unwrap();

    // Exposures are applied off the request path: wait until all are in.
    let everyone = VISITORS as u64;
    wait_for("every decision applied as an exposure", || {
        let mut reports = reports.clone();
        async move {
            let r = reports.lift(lift("points", "7d")).await.unwrap().into_inner();
            r.rows.first().is_some_and(|row| row.treated + row.control == everyone)
        }
    })
    .await;

    let index = |v: &String| v[2..].parse::<usize>().unwrap();
    let converted = |group: &[String], m: usize| group.iter().filter(|v| index(v) % 3 == m).count() as u64;
    for (window, buyers, spend) in [("7d", vec![0], 10.0), ("30d", vec![0, 1], 0.0)] {
        let r = reports.lift(lift("points", window)).await.unwrap().into_inner();
        assert_eq!((r.shop.as_str(), r.rule_revision), (SHOP, 1));
        assert_eq!(r.rows.len(), 1, "{r:?}");
        let row = &r.rows[0];
        assert_eq!((row.slot.as_str(), row.id.as_str()), ("benefit", "points"));
        assert_eq!((row.treated, row.control), (treated.len() as u64, control.len() as u64));
        let t: u64 = buyers.iter().map(|&m| converted(&treated, m)).sum();
        let k: u64 = buyers.iter().map(|&m| converted(&control, m)).sum();
        assert_eq!(
            (row.treated_converted, row.control_converted),
            (t, k),
            "window {window}"
        );
        let (tr, kr) = (t as f64 / treated.len() as f64, k as f64 / control.len() as f64);
        assert!((row.treated_rate - tr).abs() < 1e-9 && (row.control_rate - kr).abs() < 1e-9);
        assert!((row.lift - (tr - kr)).abs() < 1e-9);
        assert!(row.ci_low < row.lift && row.lift < row.ci_high, "{row:?}");
        if window == "7d" {
            let per = |group: &[String]| converted(group, 0) as f64 * spend / group.len() as f64;
            assert!((row.treated_spend - per(&treated)).abs() < 1e-9, "{row:?}");
            assert!((row.control_spend - per(&control)).abs() < 1e-9, "{row:?}");
        }
    }
    // Every entry with a holdout: only `points` has one.
    let all = reports.lift(lift("", "")).await.unwrap().into_inner();
    assert_eq!(all.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["points"]);
    // Exposures after the decisions' instant: nobody.
    let later = pb::LiftRequest {
        from_ms: T0 + 2 * HOUR,
        ..lift("points", "7d")
    };
    let r = reports.lift(later).await.unwrap().into_inner();
    assert_eq!((r.rows[0].treated, r.rows[0].control), (0, 0), "{r:?}");

    // Precise refusals.
    let refused = |r: Result<tonic::Response<pb::LiftResponse>, tonic::Status>| {
        let e = r.unwrap_err();
        (e.code(), e.message().to_string())
    };
    let (code, _) = refused(reports.lift(lift("nope", "7d")).await);
    assert_eq!(code, Code::NotFound);
    let (code, message) = refused(reports.lift(lift("points", "7x")).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.starts_with("`window`: "), "{message}");
    let backwards = pb::LiftRequest {
        from_ms: T0 + DAY,
        to_ms: T0,
        ..lift("points", "7d")
    };
    assert_eq!(
        refused(reports.lift(backwards).await),
        (
            Code::InvalidArgument,
            format!("`from_ms` ({}) must be before `to_ms` ({T0})", T0 + DAY)
        )
    );
    let other = pb::LiftRequest {
        shop: "nowhere".into(),
        ..lift("", "7d")
    };
    assert_eq!(refused(reports.lift(other).await).0, Code::NotFound);
    server.shutdown().await.unwrap();
}
