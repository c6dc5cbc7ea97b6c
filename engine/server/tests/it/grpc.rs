//! The gRPC service end to end: a server started in-process on ephemeral
//! ports, called through the generated clients.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use vitrine::commands::serve;
use vitrine::config::Config;
use vitrine_proto::v1 as pb;

use crate::support::{connect, http_get, temp_dir, test_config, wait_for, Clients};

const APPAREL: &str = "shop: apparel
audiences:
  cart_abandoner: carted(7d) and not purchased(7d)
  vip: member_tier >= 4
  south: ctx.region == \"south\"
banners:
  - when: vip
    banner: vip-gold
  - when: cart_abandoner
    banner: your-cart
  - banner: default
items:
  limit: 3
  pools:
    - items: [sku-1, sku-2, sku-3, sku-4]
benefits:
  - id: coupon
    when: cart_abandoner
    kind: coupon
    params: { amount: \"10\" }
    cap: { per_visitor: 1, window: 30d }
    budget: 2
";

/// 2026-11-20T00:00:00Z.
const NOW: i64 = 1_795_132_800_000;

fn config(dir: &Path, token: Option<&str>) -> Config {
    Config {
        admin_token: token.map(String::from),
        max_in_flight: 1024,
        ..test_config(dir)
    }
}

fn push(content: &str) -> pb::PushRequest {
    pb::PushRequest {
        content: content.to_string(),
        dry_run: false,
        expected_revision: 0,
    }
}

fn event(visitor: &str, action: &str, item: &str, ts: i64) -> pb::Event {
    pb::Event {
        shop: "apparel".into(),
        visitor: visitor.into(),
        action: action.into(),
        item: item.into(),
        category: "tops".into(),
        ts: Some(ts),
        ..pb::Event::default()
    }
}

fn decide(visitor: &str) -> pb::DecideRequest {
    pb::DecideRequest {
        shop: "apparel".into(),
        visitor: visitor.into(),
        now_ms: NOW,
        explain: true,
        ..pb::DecideRequest::default()
    }
}

fn claim(visitor: &str, id: &str) -> pb::ClaimRequest {
    pb::ClaimRequest {
        shop: "apparel".into(),
        visitor: visitor.into(),
        benefit_id: "coupon".into(),
        now_ms: NOW,
        claim_id: id.into(),
        context: None,
    }
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test]
async fn every_rpc_answers_and_fails_with_the_contract_codes() {
    let dir = temp_dir("rpcs");
    let server = serve::start(config(dir.path(), None)).await.unwrap();
    let mut c = connect(server.grpc_addr).await;

    // Decide before any rule set: NOT_FOUND; without a shop: INVALID_ARGUMENT.
    let e = c.decision.decide(decide("v-1")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(
        e.message(),
        "unknown shop `apparel`: no rule set has been pushed for it"
    );
    let e = c.decision.decide(pb::DecideRequest::default()).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "`shop` is required"));

    let pushed = c.rules.push(push(APPAREL)).await.unwrap().into_inner();
    assert_eq!(
        (pushed.shop.as_str(), pushed.revision, pushed.dry_run),
        ("apparel", 1, false)
    );
    let sizes: Vec<_> = pushed
        .audiences
        .iter()
        .map(|a| (a.name.as_str(), a.size, a.sizable))
        .collect();
    assert_eq!(
        sizes,
        [("cart_abandoner", 0, true), ("vip", 0, true), ("south", 0, false)]
    );

    // Track: one good event, one bad; the bad one says why.
    let mut bad = event("v-1", "buy", "sku-1", NOW);
    bad.ts = None;
    let tracked = c
        .ingest
        .track(pb::TrackRequest {
            events: vec![event("v-1", "cart", "sku-2", NOW - 3_600_000), bad],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tracked.accepted, 1);
    assert_eq!(tracked.rejected.len(), 1);
    assert_eq!(
        (tracked.rejected[0].index, tracked.rejected[0].reason.as_str()),
        (1, "missing_field")
    );
    assert_eq!(tracked.rejected[0].message, "missing field `ts`");

    // Decide reflects the event and names the revision.
    let d = c.decision.decide(decide("v-1")).await.unwrap().into_inner();
    assert_eq!(d.banner.unwrap().id, "your-cart");
    assert_eq!(d.rule_revision, 1);
    let items: Vec<_> = d.items.iter().map(|i| (i.id.as_str(), i.reason.as_str())).collect();
    assert_eq!(items, [("sku-2", "in_cart"), ("sku-1", "pool"), ("sku-3", "pool")]);
    assert_eq!(d.benefit.as_ref().unwrap().id, "coupon");
    let explanation = d.explanation.unwrap();
    assert_eq!(explanation.audiences, ["cart_abandoner"]);
    assert!(explanation
        .steps
        .iter()
        .any(|s| s.slot == "banner" && s.entry == "banners[1] your-cart" && s.outcome == "chosen"));
    let anonymous = c.decision.decide(decide("")).await.unwrap().into_inner();
    assert_eq!(anonymous.banner.unwrap().id, "default");
    assert!(anonymous.benefit.is_none(), "a capped benefit needs a visitor id");
    let e = c
        .decision
        .decide(pb::DecideRequest {
            now_ms: -1,
            ..decide("v-1")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Size: names, expressions, errors with columns.
    let size = |expression: &str| pb::SizeRequest {
        shop: "apparel".into(),
        expression: expression.into(),
        now_ms: NOW,
    };
    let s = c.audiences.size(size("cart_abandoner")).await.unwrap().into_inner();
    assert_eq!((s.size, s.known_visitors, s.rule_revision), (1, 1, 1));
    let s = c.audiences.size(size("carted(2h) or vip")).await.unwrap().into_inner();
    assert_eq!(s.size, 1);
    let e = c.audiences.size(size("carted(7d) and vipp")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "expression column 16: undefined audience `vipp`")
    );
    let e = c.audiences.size(size("south")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .audiences
        .size(pb::SizeRequest {
            shop: "nope".into(),
            ..size("vip")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Claim: granted once, then the cap; unknown benefit NOT_FOUND; retries idempotent.
    let r = c.benefits.claim(claim("v-1", "c-1")).await.unwrap().into_inner();
    assert_eq!((r.granted, r.reason.as_str(), r.rule_revision), (true, "GRANTED", 1));
    let r = c.benefits.claim(claim("v-1", "c-1")).await.unwrap().into_inner();
    assert_eq!(
        (r.granted, r.reason.as_str()),
        (true, "GRANTED"),
        "a retry gets the first answer"
    );
    let r = c.benefits.claim(claim("v-1", "c-2")).await.unwrap().into_inner();
    assert_eq!((r.granted, r.reason.as_str()), (false, "CAP_REACHED"));
    let r = c.benefits.claim(claim("v-2", "")).await.unwrap().into_inner();
    assert_eq!((r.granted, r.reason.as_str()), (false, "NOT_ELIGIBLE"));
    let d = c.decision.decide(decide("v-1")).await.unwrap().into_inner();
    assert!(d.benefit.is_none());
    assert!(d
        .explanation
        .unwrap()
        .steps
        .iter()
        .any(|s| s.entry == "benefits[0] coupon" && s.outcome == "cap reached"));
    let e = c
        .benefits
        .claim(pb::ClaimRequest {
            benefit_id: "gift".into(),
            ..claim("v-1", "")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c.benefits.claim(claim("", "")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "`visitor` is required")
    );

    // Health.
    assert_eq!(health(&mut c).await, ServingStatus::Serving);

    // Metrics and probes.
    let metrics = http_get(server.metrics_addr, "/metrics").await;
    for name in [
        "vitrine_decide_duration_seconds_bucket",
        "vitrine_decisions_total{slot=\"banner\",outcome=\"shown\"}",
        "vitrine_ingest_rejected_total{reason=\"missing_field\"}",
        "vitrine_claims_total{result=\"CAP_REACHED\"}",
        "vitrine_rules_revision{shop=\"apparel\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    assert!(http_get(server.metrics_addr, "/readyz")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(http_get(server.metrics_addr, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    server.shutdown().await.unwrap();
}

/// The server's overall health status.
async fn health(c: &mut Clients) -> ServingStatus {
    let h = c
        .health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(h.status).unwrap()
}

#[tokio::test]
async fn push_validates_dry_runs_lists_and_rolls_back() {
    let dir = temp_dir("push");
    let server = serve::start(config(dir.path(), None)).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    c.rules.push(push(APPAREL)).await.unwrap();

    // A broken file: every error with its line:column, nothing changes.
    let broken = "shop: apparel\naudiences:\n  a: carted(7x)\nbanners:\n  - when: b\n    banner: x\n";
    let e = c.rules.push(push(broken)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "3:13: invalid window `7x`: expected a whole number followed by h or d, e.g. 7d or 12h\n5:11: undefined audience `b`"
    );
    let d = c.decision.decide(decide("v")).await.unwrap().into_inner();
    assert_eq!(d.rule_revision, 1);

    // Dry run: the would-be revision, no swap.
    let v2 = APPAREL.replace("banner: default", "banner: default-v2");
    let dry = c
        .rules
        .push(pb::PushRequest {
            content: v2.clone(),
            dry_run: true,
            expected_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.revision, dry.dry_run), (2, true));
    assert_eq!(
        c.decision.decide(decide("v")).await.unwrap().into_inner().rule_revision,
        1
    );

    let pushed = c.rules.push(push(&v2)).await.unwrap().into_inner();
    assert_eq!(pushed.revision, 2);
    let d = c.decision.decide(decide("v")).await.unwrap().into_inner();
    assert_eq!((d.banner.unwrap().id.as_str(), d.rule_revision), ("default-v2", 2));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rules").join("apparel.yaml")).unwrap(),
        v2
    );

    // Get and List.
    let get = |revision| pb::GetRequest {
        shop: "apparel".into(),
        revision,
    };
    let g = c.rules.get(get(0)).await.unwrap().into_inner();
    assert_eq!((g.revision, g.serving, g.content.as_str()), (2, true, v2.as_str()));
    let g = c.rules.get(get(1)).await.unwrap().into_inner();
    assert_eq!((g.revision, g.serving, g.content.as_str()), (1, false, APPAREL));
    assert_eq!(c.rules.get(get(9)).await.unwrap_err().code(), Code::NotFound);
    let list = |shop: &str| pb::ListRequest { shop: shop.into() };
    let l = c.rules.list(list("apparel")).await.unwrap().into_inner();
    let revs: Vec<_> = l
        .revisions
        .iter()
        .map(|r| (r.revision, r.origin.as_str(), r.serving))
        .collect();
    assert_eq!(revs, [(1, "push", false), (2, "push", true)]);
    assert_eq!(c.rules.list(list("nope")).await.unwrap_err().code(), Code::NotFound);

    // Rollback to 1: served as revision 3.
    let rollback = |revision| pb::RollbackRequest {
        shop: "apparel".into(),
        revision,
        expected_revision: 0,
    };
    let r = c.rules.rollback(rollback(1)).await.unwrap().into_inner();
    assert_eq!((r.revision, r.restored_from), (3, 1));
    let d = c.decision.decide(decide("v")).await.unwrap().into_inner();
    assert_eq!((d.banner.unwrap().id.as_str(), d.rule_revision), ("default", 3));
    assert_eq!(c.rules.rollback(rollback(7)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        c.rules.rollback(rollback(0)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rules").join("apparel.yaml")).unwrap(),
        APPAREL
    );
    server.shutdown().await.unwrap();

    // A restart serves what was last pushed, with its revision and history.
    let server = serve::start(config(dir.path(), None)).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    let d = c.decision.decide(decide("v")).await.unwrap().into_inner();
    assert_eq!((d.banner.unwrap().id.as_str(), d.rule_revision), ("default", 3));
    let l = c.rules.list(list("apparel")).await.unwrap().into_inner();
    let revs: Vec<_> = l
        .revisions
        .iter()
        .map(|r| (r.revision, r.origin.as_str(), r.serving))
        .collect();
    assert_eq!(revs, [(1, "push", false), (2, "push", false), (3, "rollback", true)]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn files_edited_in_the_rules_dir_are_picked_up_and_broken_ones_ignored() {
    let dir = temp_dir("watch");
    std::fs::write(dir.path().join("rules").join("apparel.yaml"), APPAREL).unwrap();
    let server = serve::start(config(dir.path(), None)).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    assert_eq!(
        c.decision.decide(decide("v")).await.unwrap().into_inner().rule_revision,
        1
    );

    std::fs::write(
        dir.path().join("rules").join("apparel.yaml"),
        "shop: apparel\nbanners: [oops\n",
    )
    .unwrap();
    // The signal: the store has seen the broken file and rejected it.
    wait_for("the broken file to be rejected", || async {
        server.engine.rules.counters().files_rejected == 1
    })
    .await;
    let d = c.decision.decide(decide("v")).await.unwrap().into_inner();
    assert_eq!((d.rule_revision, d.banner.unwrap().id.as_str()), (1, "default"));

    std::fs::write(
        dir.path().join("rules").join("apparel.yaml"),
        APPAREL.replace("banner: default", "banner: edited"),
    )
    .unwrap();
    wait_for("the edited file to serve", || async {
        server.engine.rules.serving("apparel").is_some_and(|s| s.revision == 2)
    })
    .await;
    let d = c.decision.decide(decide("v")).await.unwrap().into_inner();
    assert_eq!((d.rule_revision, d.banner.unwrap().id.as_str()), (2, "edited"));
    let l = c
        .rules
        .list(pb::ListRequest { shop: "apparel".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.revisions.last().unwrap().origin, "file");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_admin_token_guards_push_rollback_and_track() {
    let dir = temp_dir("auth");
    let server = serve::start(config(dir.path(), Some("s3cret"))).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    let e = c.rules.push(push(APPAREL)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = c.rules.push(with_token(push(APPAREL), "wrong")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    c.rules.push(with_token(push(APPAREL), "s3cret")).await.unwrap();
    let track = || pb::TrackRequest {
        events: vec![event("v", "view", "sku-1", NOW)],
    };
    assert_eq!(c.ingest.track(track()).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        c.ingest
            .track(with_token(track(), "s3cret"))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        1
    );
    let rollback = pb::RollbackRequest {
        shop: "apparel".into(),
        revision: 1,
        expected_revision: 0,
    };
    assert_eq!(
        c.rules.rollback(rollback.clone()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    c.rules.rollback(with_token(rollback, "s3cret")).await.unwrap();
    // Reads need no token.
    c.decision.decide(decide("v")).await.unwrap();
    c.rules.list(pb::ListRequest { shop: "apparel".into() }).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    let dir = temp_dir("size");
    let server = serve::start(Config {
        max_request_bytes: 1024,
        ..config(dir.path(), None)
    })
    .await
    .unwrap();
    let mut c = connect(server.grpc_addr).await;
    let e = c.rules.push(push(&"#".repeat(4096))).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_under_decide_load_never_fail_a_decision() {
    let dir = temp_dir("swap");
    let server = serve::start(config(dir.path(), None)).await.unwrap();
    let c = connect(server.grpc_addr).await;
    let mut rules = c.rules.clone();
    rules.push(push(APPAREL)).await.unwrap();
    const PUSHES: u64 = 30;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut deciders = Vec::new();
    for _ in 0..4 {
        let mut client = c.decision.clone();
        let stop = stop.clone();
        deciders.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n < 50 {
                let d = client
                    .decide(decide("v"))
                    .await
                    .expect("no decision fails")
                    .into_inner();
                let banner = d.banner.expect("a banner always matches").id;
                let expected = match d.rule_revision {
                    1 => "default".to_string(),
                    r => format!("default-{r}"),
                };
                assert_eq!(banner, expected, "a decision uses one revision throughout");
                seen.push(d.rule_revision);
                n += 1;
                if n > 20_000 {
                    break;
                }
            }
            seen
        }));
    }
    for revision in 2..=PUSHES {
        let content = APPAREL.replace("banner: default", &format!("banner: default-{revision}"));
        let r = rules.push(push(&content)).await.unwrap().into_inner();
        assert_eq!(r.revision, revision);
    }
    stop.store(true, Ordering::Relaxed);
    for d in deciders {
        let seen = d.await.unwrap();
        assert!(seen.iter().all(|r| (1..=PUSHES).contains(r)), "{seen:?}");
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "revisions never go back: {seen:?}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_before_closing() {
    let dir = temp_dir("drain");
    let server = serve::start(Config {
        shutdown_grace: Duration::from_millis(500),
        ..config(dir.path(), None)
    })
    .await
    .unwrap();
    let mut c = connect(server.grpc_addr).await;
    let stopping = tokio::spawn(server.shutdown());
    // The signal is health itself: it must turn NOT_SERVING while the
    // grace runs and calls are still answered (a closed server would fail
    // the call instead).
    let mut status = health(&mut c).await;
    while status == ServingStatus::Serving && !stopping.is_finished() {
        tokio::task::yield_now().await;
        status = health(&mut c).await;
    }
    assert_eq!(status, ServingStatus::NotServing);
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_restart_restores_tracked_events_claims_and_the_index_from_snapshot_and_journals() {
    let dir = temp_dir("restart-state");
    let size = |expression: &str| pb::SizeRequest {
        shop: "apparel".into(),
        expression: expression.into(),
        now_ms: NOW,
    };
    let server = serve::start(config(dir.path(), None)).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    c.rules.push(push(APPAREL)).await.unwrap();
    // Before the snapshot: v-1 and v-2 carted; v-1 claims.
    for v in ["v-1", "v-2"] {
        let t = c.ingest.track(pb::TrackRequest {
            events: vec![event(v, "cart", "sku-2", NOW - 3_600_000)],
        });
        assert_eq!(t.await.unwrap().into_inner().accepted, 1);
    }
    assert!(
        c.benefits
            .claim(claim("v-1", "c-1"))
            .await
            .unwrap()
            .into_inner()
            .granted
    );
    let written = server.snapshot().await.unwrap();
    assert!(written.path.exists());
    // After it: only in the journals.
    let t = c.ingest.track(pb::TrackRequest {
        events: vec![event("v-3", "cart", "sku-2", NOW - 3_600_000)],
    });
    assert_eq!(t.await.unwrap().into_inner().accepted, 1);
    assert!(
        c.benefits
            .claim(claim("v-2", "c-2"))
            .await
            .unwrap()
            .into_inner()
            .granted
    );

    // A second server on the same data directory is refused.
    let second = serve::start(config(dir.path(), None)).await.unwrap_err();
    assert!(format!("{second:#}").contains("locked"), "{second:#}");
    drop(c);
    server.shutdown().await.unwrap();

    // Take away the shutdown snapshot: the periodic one + the journals must do.
    let snapshots = dir.path().join("data/snapshots");
    let mut files: Vec<_> = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    std::fs::remove_file(&files[1]).unwrap();

    let server = serve::start(config(dir.path(), None)).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    let cart = c.audiences.size(size("cart_abandoner")).await.unwrap().into_inner();
    assert_eq!(
        cart.size, 3,
        "two events from the snapshot, one from the events journal"
    );
    // Both grants survived: retries get the first answer, caps and the budget of 2 hold.
    for (v, id) in [("v-1", "c-1"), ("v-2", "c-2")] {
        let r = c.benefits.claim(claim(v, id)).await.unwrap().into_inner();
        assert_eq!((r.granted, r.reason.as_str()), (true, "GRANTED"), "{id}");
        let r = c
            .benefits
            .claim(claim(v, &format!("{id}-again")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.reason, "CAP_REACHED", "{id}");
    }
    let r = c.benefits.claim(claim("v-3", "c-3")).await.unwrap().into_inner();
    assert_eq!(r.reason, "BUDGET_EXHAUSTED");
    let metrics = http_get(server.metrics_addr, "/metrics").await;
    assert!(metrics.contains("vitrine_restore_duration_seconds"), "{metrics}");
    drop(c);
    server.shutdown().await.unwrap();
}
