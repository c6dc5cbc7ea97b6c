//! The rule studio's JSON API on the HTTP port (issue 18), end to end: an
//! in-process server, plain HTTP/1.1 requests, the answers checked against
//! what the gRPC services say.

use std::net::SocketAddr;

use serde_json::{json, Value};
use vitrine::commands::serve;
use vitrine::config::Config;
use vitrine_proto::v1 as pb;

use crate::support::{connect, http_get, metric_value, temp_dir, test_config, wait_for, Clients, WAIT};

const SHOP: &str = "studio-shop";
/// 2026-11-20T00:00:00Z.
const T0: i64 = 1_795_132_800_000;
const HOUR: i64 = 3_600_000;

/// An hour ago: Push sizes audiences at the server clock.
fn recent() -> i64 {
    vitrine::clock::now_ms() - HOUR
}

const SERVING: &str = "shop: studio-shop
audiences:
  carters: carted(7d)
banners:
  - banner: everyone
";

/// What an author edits SERVING into: carters get their own banner.
const DRAFT: &str = "shop: studio-shop
audiences:
  carters: carted(7d)
  mobile: ctx.device == \"mobile\"
banners:
  - when: carters
    banner: your-cart
  - banner: everyone
";

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The JSON error's `code`, with the status.
    fn error(&self) -> (u16, String) {
        (
            self.status,
            self.json()["code"].as_str().unwrap_or_default().to_string(),
        )
    }
}

/// A bare HTTP/1.1 request (`Connection: close`).
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    // A server that answers before reading all of a large body may close
    // the connection under the rest of it: the answer is still there.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no answer to {method} {path} within {WAIT:?}");
    let out = String::from_utf8(out).unwrap();
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {out:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    http(addr, "GET", path, &[], b"").await
}

/// A JSON POST, with a bearer token when `token` is set.
async fn post(addr: SocketAddr, path: &str, body: &Value, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    http(addr, "POST", path, &headers, body.to_string().as_bytes()).await
}

async fn push(c: &mut Clients, content: &str) -> u64 {
    c.rules
        .push(pb::PushRequest {
            content: content.into(),
            ..pb::PushRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision
}

/// The banner and revision Decide answers for `visitor` at `now_ms`.
async fn decided(c: &mut Clients, visitor: &str, now_ms: i64) -> (String, u64) {
    let d = c
        .decision
        .decide(pb::DecideRequest {
            shop: SHOP.into(),
            visitor: visitor.into(),
            now_ms,
            ..pb::DecideRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    (d.banner.map(|b| b.id).unwrap_or_default(), d.rule_revision)
}

async fn cart(c: &mut Clients, visitor: &str, ts: i64) {
    let r = c
        .ingest
        .track(pb::TrackRequest {
            events: vec![pb::Event {
                shop: SHOP.into(),
                visitor: visitor.into(),
                action: "cart".into(),
                item: "sku-1".into(),
                ts: Some(ts),
                ..pb::Event::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_from_the_binary_with_a_strict_policy() {
    let dir = temp_dir("studio-static");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let addr = server.metrics_addr;
    for (path, content_type, needle) in [
        (
            "/studio",
            "text/html; charset=utf-8",
            "<script src=\"/studio/studio.js\"",
        ),
        ("/studio/", "text/html; charset=utf-8", "<html"),
        ("/studio/studio.js", "text/javascript; charset=utf-8", "/studio/api/"),
        ("/studio/studio.css", "text/css; charset=utf-8", "body"),
    ] {
        let a = get(addr, path).await;
        assert_eq!(a.status, 200, "{path}: {a:?}");
        assert_eq!(a.header("content-type"), Some(content_type), "{path}");
        assert_eq!(a.header("content-security-policy"), Some(CSP), "{path}");
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(a.header("cache-control"), Some("no-cache"), "{path}");
        assert!(a.body.contains(needle), "{path}: {}", a.body);
    }
    // An unknown API route answers JSON; the probes are still there.
    let a = get(addr, "/studio/api/nothing-here").await;
    assert_eq!(a.error(), (404, "NOT_FOUND".into()));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    let metrics = http_get(addr, "/metrics").await;
    assert!(
        metric_value(&metrics, r#"vitrine_studio_requests_total{route="static",code="200"}"#) >= 4.0,
        "{metrics}"
    );
    server.shutdown().await.unwrap();

    // --no-studio: nothing under /studio.
    let dir = temp_dir("studio-off");
    let server = serve::start(Config {
        studio: false,
        ..test_config(dir.path())
    })
    .await
    .unwrap();
    for path in ["/studio", "/studio/studio.js", "/studio/api/info"] {
        assert_eq!(get(server.metrics_addr, path).await.status, 404, "{path}");
    }
    assert!(http_get(server.metrics_addr, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shops_rules_and_revisions_are_what_grpc_serves() {
    let dir = temp_dir("studio-reads");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let addr = server.metrics_addr;
    let mut c = connect(server.grpc_addr).await;
    push(&mut c, "shop: b-zoned\ntimezone: Asia/Tokyo\nbanners:\n  - banner: x\n").await;
    push(&mut c, SERVING).await;
    push(&mut c, DRAFT).await;

    let info = get(addr, "/studio/api/info").await.json();
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["token_required"], false);
    assert!(info["now_ms"].as_i64().unwrap() > T0);

    assert_eq!(
        get(addr, "/studio/api/shops").await.json(),
        json!({"shops": [
            {"shop": "b-zoned", "revision": 1, "timezone": "Asia/Tokyo"},
            {"shop": SHOP, "revision": 2, "timezone": "UTC"},
        ]})
    );

    let serving = get(addr, "/studio/api/rules?shop=studio-shop").await.json();
    assert_eq!(
        serving,
        json!({"shop": SHOP, "revision": 2, "content": DRAFT, "serving": true})
    );
    let first = get(addr, "/studio/api/rules?shop=studio%2Dshop&revision=1")
        .await
        .json();
    assert_eq!(
        first,
        json!({"shop": SHOP, "revision": 1, "content": SERVING, "serving": false})
    );

    let list = get(addr, "/studio/api/revisions?shop=studio-shop").await.json();
    let revisions = list["revisions"].as_array().unwrap();
    let numbers: Vec<(u64, bool, &str)> = revisions
        .iter()
        .map(|r| {
            (
                r["revision"].as_u64().unwrap(),
                r["serving"].as_bool().unwrap(),
                r["origin"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(numbers, [(2, true, "push"), (1, false, "push")], "newest first");
    assert!(revisions.iter().all(|r| r["created_ms"].as_i64().unwrap() > T0));

    // The gRPC refusals, as HTTP statuses and JSON.
    let a = get(addr, "/studio/api/rules?shop=nowhere").await;
    assert_eq!(a.error(), (404, "NOT_FOUND".into()));
    assert_eq!(
        a.json()["message"],
        "unknown shop `nowhere`: no rule set has been pushed for it"
    );
    assert_eq!(
        get(addr, "/studio/api/rules?shop=studio-shop&revision=9")
            .await
            .error()
            .0,
        404
    );
    let a = get(addr, "/studio/api/revisions").await;
    assert_eq!(a.error(), (400, "INVALID_ARGUMENT".into()));
    assert_eq!(a.json()["message"], "`shop` is required");
    let a = get(addr, "/studio/api/rules?shop=studio-shop&revision=two").await;
    assert_eq!(a.json()["message"], "`revision` must be a whole number, not `two`");
    let long = format!("/studio/api/rules?shop={}", "s".repeat(600));
    let a = get(addr, &long).await;
    assert_eq!(a.error(), (400, "INVALID_ARGUMENT".into()));
    assert_eq!(a.json()["message"], "`shop` is longer than 512 bytes");
    assert_eq!(get(addr, "/studio/api/rules?shop=%zz").await.error().0, 400);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_every_error_at_its_line_and_column_and_sizes_a_good_file() {
    let dir = temp_dir("studio-validate");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let addr = server.metrics_addr;
    let mut c = connect(server.grpc_addr).await;
    push(&mut c, SERVING).await;
    cart(&mut c, "v-cart", recent()).await;

    let broken = "shop: studio-shop\naudiences:\n  a: foo(\n  b: zzz\n";
    let a = post(addr, "/studio/api/validate", &json!({ "content": broken }), None).await;
    assert_eq!(
        (a.status, a.json()),
        (
            400,
            json!({
                "code": "INVALID_ARGUMENT",
                "message": "3:6: unknown function `foo`\n4:6: undefined audience `zzz`",
                "errors": [
                    {"line": 3, "column": 6, "message": "unknown function `foo`"},
                    {"line": 4, "column": 6, "message": "undefined audience `zzz`"},
                ],
            })
        )
    );
    // A shop name the store refuses is placed at the `shop:` value.
    let a = post(
        addr,
        "/studio/api/validate",
        &json!({ "content": format!("# a long name\nshop: {}\n", "s".repeat(100)) }),
        None,
    )
    .await;
    assert_eq!(a.status, 400, "{a:?}");
    let errors = a.json()["errors"].clone();
    assert_eq!(
        (errors[0]["line"].clone(), errors[0]["column"].clone()),
        (json!(2), json!(7)),
        "{errors}"
    );

    // A good file: sizes from the live index, each audience at its line,
    // nothing pushed.
    let a = post(addr, "/studio/api/validate", &json!({ "content": DRAFT }), None).await;
    assert_eq!(
        (a.status, a.json()),
        (
            200,
            json!({
                "shop": SHOP,
                "revision": 2,
                "dry_run": true,
                "audiences": [
                    {"name": "carters", "size": 1, "sizable": true, "line": 3},
                    {"name": "mobile", "size": 0, "sizable": false, "line": 4},
                ],
            })
        )
    );
    assert_eq!(decided(&mut c, "v-cart", 0).await, ("everyone".into(), 1));
    // An empty file: Push's own refusal, no positions to give.
    let a = post(addr, "/studio/api/validate", &json!({ "content": "  " }), None).await;
    assert_eq!(
        a.json(),
        json!({"code": "INVALID_ARGUMENT", "message": "`content` is required: the YAML text of a rule file"})
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_needs_the_serving_revision_and_the_new_one_answers_decide() {
    let dir = temp_dir("studio-publish");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let addr = server.metrics_addr;
    let mut c = connect(server.grpc_addr).await;
    push(&mut c, SERVING).await;
    cart(&mut c, "v-cart", recent()).await;

    let a = post(
        addr,
        "/studio/api/publish",
        &json!({ "content": DRAFT, "expected_revision": 1 }),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let body = a.json();
    assert_eq!(
        (body["shop"].clone(), body["revision"].clone()),
        (json!(SHOP), json!(2))
    );
    assert_eq!(body["dry_run"], false);
    assert_eq!(
        body["audiences"][0],
        json!({"name": "carters", "size": 1, "sizable": true, "line": 3})
    );
    assert_eq!(decided(&mut c, "v-cart", 0).await, ("your-cart".into(), 2));

    // A second author still on revision 1: refused, nothing changed.
    let a = post(
        addr,
        "/studio/api/publish",
        &json!({ "content": SERVING, "expected_revision": 1 }),
        None,
    )
    .await;
    assert_eq!(a.error(), (409, "ABORTED".into()));
    assert_eq!(
        a.json()["message"],
        "shop `studio-shop` serves revision 2, not the expected revision 1: nothing changed; read the current rules and push again"
    );
    assert_eq!(decided(&mut c, "v-cart", 0).await, ("your-cart".into(), 2));

    // A broken file is refused with its positions, as validate does.
    let a = post(
        addr,
        "/studio/api/publish",
        &json!({ "content": "shop: studio-shop\nbanners: 3\n", "expected_revision": 2 }),
        None,
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["errors"][0]["line"], 2, "{}", a.body);
    let metrics = http_get(addr, "/metrics").await;
    assert!(
        metric_value(&metrics, r#"vitrine_studio_requests_total{route="publish",code="409"}"#) >= 1.0,
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_writes_need_it_and_reads_do_not() {
    const TOKEN: &str = "studio-secret";
    let dir = temp_dir("studio-token");
    let server = serve::start(Config {
        admin_token: Some(TOKEN.into()),
        ..test_config(dir.path())
    })
    .await
    .unwrap();
    let addr = server.metrics_addr;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut rules = pb::rules_client::RulesClient::with_interceptor(channel, |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        Ok(r)
    });
    rules
        .push(pb::PushRequest {
            content: SERVING.into(),
            ..pb::PushRequest::default()
        })
        .await
        .unwrap();

    assert_eq!(get(addr, "/studio/api/info").await.json()["token_required"], true);
    let validate = json!({ "content": DRAFT });
    let publish = json!({ "content": DRAFT, "expected_revision": 1 });
    let rollback = json!({ "shop": SHOP, "revision": 1 });
    for (path, body) in [
        ("/studio/api/validate", &validate),
        ("/studio/api/publish", &publish),
        ("/studio/api/rollback", &rollback),
    ] {
        for token in [None, Some("wrong"), Some("")] {
            let a = post(addr, path, body, token).await;
            assert_eq!(a.error(), (401, "UNAUTHENTICATED".into()), "{path} {token:?}");
            assert_eq!(
                a.json()["message"],
                "this call needs `authorization: Bearer <admin token>`"
            );
        }
    }
    // Nothing was written.
    let list = get(addr, "/studio/api/revisions?shop=studio-shop").await.json();
    assert_eq!(list["revisions"].as_array().unwrap().len(), 1, "{list}");

    assert_eq!(
        post(addr, "/studio/api/validate", &validate, Some(TOKEN)).await.status,
        200
    );
    assert_eq!(
        post(addr, "/studio/api/publish", &publish, Some(TOKEN)).await.status,
        200
    );
    let a = post(addr, "/studio/api/rollback", &rollback, Some(TOKEN)).await;
    assert_eq!(
        (a.status, a.json()),
        (200, json!({"shop": SHOP, "revision": 3, "restored_from": 1}))
    );

    // Reads, and a try with a draft (it writes nothing), need no token.
    for path in [
        "/studio/api/shops",
        "/studio/api/rules?shop=studio-shop",
        "/studio/api/revisions?shop=studio-shop",
        "/studio/api/lift?shop=studio-shop",
    ] {
        assert_eq!(get(addr, path).await.status, 200, "{path}");
    }
    let a = post(
        addr,
        "/studio/api/try",
        &json!({ "shop": SHOP, "visitor": "v", "draft": DRAFT }),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_puts_the_draft_beside_the_serving_rules_and_logs_nothing() {
    let dir = temp_dir("studio-try");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let addr = server.metrics_addr;
    let mut c = connect(server.grpc_addr).await;
    push(&mut c, SERVING).await;
    cart(&mut c, "v-cart", T0).await;

    let tried = |visitor: &str, draft: Option<&str>| {
        json!({
            "shop": SHOP,
            "visitor": visitor,
            "context": {"page": "home", "device": "mobile", "attributes": {"ab": "x"}},
            "now_ms": T0 + HOUR,
            "draft": draft,
        })
    };
    let a = post(addr, "/studio/api/try", &tried("v-cart", Some(DRAFT)), None).await;
    assert_eq!(a.status, 200, "{a:?}");
    let body = a.json();
    assert_eq!(body["now_ms"], T0 + HOUR);
    assert_eq!(
        body["serving"],
        json!({
            "revision": 1,
            "banner": {"id": "everyone", "params": {}},
            "items": [],
            "benefit": null,
            "tier_preview": null,
            "add_on_gap": null,
            "explanation": {
                "audiences": ["carters"],
                "steps": [{"slot": "banner", "entry": "banners[0] everyone", "outcome": "chosen"}],
            },
        })
    );
    let draft = &body["draft"];
    assert_eq!(draft["revision"], 0);
    assert_eq!(draft["banner"]["id"], "your-cart");
    assert_eq!(draft["explanation"]["audiences"], json!(["carters", "mobile"]));
    assert_eq!(body["draft_errors"], Value::Null);

    // Another visitor: the same banner on both sides; no draft: no draft side.
    let body = post(addr, "/studio/api/try", &tried("v-new", Some(DRAFT)), None)
        .await
        .json();
    assert_eq!(
        (
            body["serving"]["banner"]["id"].clone(),
            body["draft"]["banner"]["id"].clone()
        ),
        (json!("everyone"), json!("everyone"))
    );
    let body = post(addr, "/studio/api/try", &tried("v-cart", None), None).await.json();
    assert_eq!(
        (body["serving"]["revision"].clone(), body["draft"].clone()),
        (json!(1), Value::Null)
    );

    // A draft with errors: the serving side still decides, the errors are listed.
    let broken = "shop: studio-shop\nbanners:\n  - when: nobody\n    banner: x\n";
    let body = post(addr, "/studio/api/try", &tried("v-cart", Some(broken)), None)
        .await
        .json();
    assert_eq!(body["serving"]["banner"]["id"], "everyone");
    assert_eq!(body["draft"], Value::Null);
    assert_eq!(
        body["draft_errors"],
        json!([{"line": 3, "column": 11, "message": "undefined audience `nobody`"}])
    );
    // A draft of another shop is a mistake of the request.
    let other = "shop: other-shop\nbanners:\n  - banner: x\n";
    let a = post(addr, "/studio/api/try", &tried("v-cart", Some(other)), None).await;
    assert_eq!(a.error(), (400, "INVALID_ARGUMENT".into()));
    assert_eq!(
        a.json()["message"],
        "the draft is the rule file of shop `other-shop`, not of `studio-shop`"
    );
    let a = post(addr, "/studio/api/try", &json!({"shop": "nowhere"}), None).await;
    assert_eq!(a.error(), (404, "NOT_FOUND".into()));
    let a = post(
        addr,
        "/studio/api/try",
        &json!({"shop": SHOP, "visitor": "v".repeat(600)}),
        None,
    )
    .await;
    assert_eq!(a.json()["message"], "`visitor` is longer than 512 bytes");
    let a = post(addr, "/studio/api/try", &json!({"shop": SHOP, "now_ms": -5}), None).await;
    assert_eq!(a.error(), (400, "INVALID_ARGUMENT".into()));

    // None of it was logged: no decision record, so no exposure. A real
    // Decide is, which shows the counter would have seen one.
    let stats = server.engine.decisions.stats();
    assert_eq!((stats.logged, stats.exposures_applied), (0, 0), "{stats:?}");
    decided(&mut c, "v-cart", T0 + HOUR).await;
    let engine = server.engine.clone();
    wait_for("the Decide applied as an exposure", || {
        let engine = engine.clone();
        async move { engine.decisions.stats().exposures_applied == 1 }
    })
    .await;
    assert_eq!(server.engine.decisions.stats().logged, 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_serves_an_earlier_revision_again() {
    let dir = temp_dir("studio-rollback");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let addr = server.metrics_addr;
    let mut c = connect(server.grpc_addr).await;
    push(&mut c, SERVING).await;
    push(&mut c, DRAFT).await;
    cart(&mut c, "v-cart", T0).await;
    assert_eq!(decided(&mut c, "v-cart", T0 + HOUR).await, ("your-cart".into(), 2));

    let stale = json!({ "shop": SHOP, "revision": 1, "expected_revision": 1 });
    assert_eq!(
        post(addr, "/studio/api/rollback", &stale, None).await.error(),
        (409, "ABORTED".into())
    );
    let a = post(
        addr,
        "/studio/api/rollback",
        &json!({ "shop": SHOP, "revision": 1, "expected_revision": 2 }),
        None,
    )
    .await;
    assert_eq!(
        (a.status, a.json()),
        (200, json!({"shop": SHOP, "revision": 3, "restored_from": 1}))
    );
    assert_eq!(decided(&mut c, "v-cart", T0 + HOUR).await, ("everyone".into(), 3));
    let list = get(addr, "/studio/api/revisions?shop=studio-shop").await.json();
    assert_eq!(list["revisions"][0]["origin"], "rollback");

    let a = post(
        addr,
        "/studio/api/rollback",
        &json!({ "shop": SHOP, "revision": 9 }),
        None,
    )
    .await;
    assert_eq!(a.error(), (404, "NOT_FOUND".into()));
    let a = post(addr, "/studio/api/rollback", &json!({ "shop": SHOP }), None).await;
    assert_eq!(
        a.json()["message"],
        "`revision` is required: the revision to serve again"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lift_report_is_the_grpc_report_as_json() {
    const RULES: &str = "shop: studio-shop
benefits:
  - id: points
    kind: points
    holdout: 30%
  - id: fallback
    kind: gift
";
    let dir = temp_dir("studio-lift");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let addr = server.metrics_addr;
    let mut c = connect(server.grpc_addr).await;
    push(&mut c, RULES).await;
    let visitors: Vec<String> = (0..40).map(|i| format!("v-{i:02}")).collect();
    for v in &visitors {
        c.decision
            .decide(pb::DecideRequest {
                shop: SHOP.into(),
                visitor: v.clone(),
                now_ms: T0,
                ..pb::DecideRequest::default()
            })
            .await
            .unwrap();
    }
    let events = visitors
        .iter()
        .step_by(2)
        .map(|v| pb::Event {
            shop: SHOP.into(),
            visitor: v.clone(),
            action: "purchase".into(),
            item: "sku-1".into(),
            price: Some(20.0),
            ts: Some(T0 + HOUR),
            ..pb::Event::default()
        })
        .collect();
    c.ingest.track(pb::TrackRequest { events }).await.unwrap();
    let engine = server.engine.clone();
    wait_for("every decision applied as an exposure", || {
        let engine = engine.clone();
        async move { engine.decisions.stats().exposures_applied == 40 }
    })
    .await;

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reports = pb::reports_client::ReportsClient::new(channel);
    let r = reports
        .lift(pb::LiftRequest {
            shop: SHOP.into(),
            id: "points".into(),
            window: "7d".into(),
            ..pb::LiftRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let row = &r.rows[0];
    assert_eq!(row.treated + row.control, 40, "{row:?}");
    let a = get(addr, "/studio/api/lift?shop=studio-shop&id=points&window=7d").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.json(),
        json!({
            "shop": SHOP,
            "rule_revision": 1,
            "rows": [{
                "slot": "benefit",
                "id": "points",
                "treated": row.treated,
                "control": row.control,
                "treated_converted": row.treated_converted,
                "control_converted": row.control_converted,
                "treated_rate": row.treated_rate,
                "control_rate": row.control_rate,
                "lift": row.lift,
                "ci_low": row.ci_low,
                "ci_high": row.ci_high,
                "treated_spend": row.treated_spend,
                "control_spend": row.control_spend,
            }],
        })
    );
    let a = get(addr, "/studio/api/lift?shop=studio-shop&id=nope").await;
    assert_eq!(a.error(), (404, "NOT_FOUND".into()));
    let a = get(addr, "/studio/api/lift?shop=studio-shop&window=7x").await;
    assert_eq!(a.error(), (400, "INVALID_ARGUMENT".into()));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_refused_precisely() {
    let dir = temp_dir("studio-hostile");
    let server = serve::start(Config {
        studio_max_body: 4096,
        request_timeout: std::time::Duration::from_millis(300),
        ..test_config(dir.path())
    })
    .await
    .unwrap();
    let addr = server.metrics_addr;
    let mut c = connect(server.grpc_addr).await;
    push(&mut c, SERVING).await;
    let json_type = [("Content-Type", "application/json")];

    // Past --studio-max-body: 413, declared or not.
    let big = json!({ "content": "#".repeat(5000) }).to_string();
    let a = http(addr, "POST", "/studio/api/validate", &json_type, big.as_bytes()).await;
    assert_eq!(a.error(), (413, "PAYLOAD_TOO_LARGE".into()));
    assert_eq!(a.json()["message"], "the request body is larger than --studio-max-body");

    // Not JSON by its type: 415 (a form cannot publish).
    for content_type in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        let a = http(
            addr,
            "POST",
            "/studio/api/publish",
            &[("Content-Type", content_type)],
            br#"{"content":"shop: x"}"#,
        )
        .await;
        assert_eq!(a.error(), (415, "UNSUPPORTED_MEDIA_TYPE".into()), "{content_type}");
    }
    let a = http(addr, "POST", "/studio/api/try", &[], b"{}").await;
    assert_eq!(a.status, 415);
    // `application/json; charset=utf-8` is JSON.
    let a = http(
        addr,
        "POST",
        "/studio/api/try",
        &[("Content-Type", "Application/JSON; charset=utf-8")],
        br#"{"shop":"studio-shop","unknown_field":[1,2]}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");

    // Malformed JSON: serde's line and column.
    let a = http(
        addr,
        "POST",
        "/studio/api/validate",
        &json_type,
        b"{\n  \"content\": 3\n}",
    )
    .await;
    assert_eq!(
        a.json(),
        json!({"code": "INVALID_ARGUMENT", "message": "malformed JSON body: invalid type: integer `3`, expected a string at line 2 column 14"})
    );
    let a = http(addr, "POST", "/studio/api/try", &json_type, b"{\"shop\": ").await;
    assert_eq!(
        a.json()["message"],
        "malformed JSON body: EOF while parsing a value at line 1 column 9"
    );
    // Deep nesting in a field that is ignored: skipped, not recursed into.
    let deep = format!("{{\"x\": {}{}}}", "[".repeat(1000), "]".repeat(1000));
    let a = http(addr, "POST", "/studio/api/try", &json_type, deep.as_bytes()).await;
    assert_eq!(
        (a.status, a.json()["message"].clone()),
        (400, json!("`shop` is required")),
        "skipped without recursion"
    );
    let a = http(addr, "POST", "/studio/api/rollback", &json_type, b"[]").await;
    assert_eq!(a.error(), (400, "INVALID_ARGUMENT".into()));

    // A body that never arrives whole: 408 once --request-timeout passes,
    // and the connection is freed.
    let a = http(
        addr,
        "POST",
        "/studio/api/try",
        &[("Content-Type", "application/json"), ("Content-Length", "100")],
        b"{",
    )
    .await;
    assert_eq!(a.error(), (408, "DEADLINE_EXCEEDED".into()));

    let metrics = http_get(addr, "/metrics").await;
    for (route, code) in [("validate", "413"), ("publish", "415"), ("try", "400"), ("try", "408")] {
        let series = format!(r#"vitrine_studio_requests_total{{route="{route}",code="{code}"}}"#);
        assert!(metric_value(&metrics, &series) >= 1.0, "{series}");
    }
    // The server still answers.
    assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_naming_another_shop_is_not_published_over_it() {
    let dir = temp_dir("studio-other-shop");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let addr = server.metrics_addr;
    let mut c = connect(server.grpc_addr).await;
    push(&mut c, SERVING).await;
    const OTHER: &str = "shop: other-shop\nbanners:\n  - banner: theirs\n";
    push(&mut c, OTHER).await;
    // An author with studio-shop open at revision 1 pastes other-shop's
    // file (also at revision 1): expected_revision alone would let it through.
    let pasted = format!("# pasted\n{OTHER}  - banner: pasted\n");
    let wrong = json!({ "content": pasted, "expected_revision": 1, "shop": SHOP });
    let message = "the file is the rule file of shop `other-shop`, not of `studio-shop` (the shop it is published for): nothing changed";
    for route in ["/studio/api/publish", "/studio/api/validate"] {
        let a = post(addr, route, &wrong, None).await;
        assert_eq!(a.error(), (400, "INVALID_ARGUMENT".into()), "{route}: {a:?}");
        assert_eq!(
            a.json()["errors"],
            json!([{"line": 2, "column": 7, "message": message}]),
            "{route}: placed at the `shop:` value"
        );
    }
    let a = get(addr, "/studio/api/rules?shop=other-shop").await;
    assert_eq!(
        (a.json()["revision"].clone(), a.json()["content"].clone()),
        (json!(1), json!(OTHER))
    );
    // The shop's own file, or a file that does not compile, is not held up.
    let own = json!({ "content": DRAFT, "expected_revision": 1, "shop": SHOP });
    assert_eq!(post(addr, "/studio/api/publish", &own, None).await.status, 200);
    let broken = json!({ "content": "shop: other-shop\nbanners: 3\n", "shop": SHOP });
    let a = post(addr, "/studio/api/validate", &broken, None).await;
    assert_eq!(
        a.json()["errors"][0]["line"],
        2,
        "the compiler's own errors: {}",
        a.body
    );
    // Without `shop` the API is as before (a client that names no shop).
    let unnamed = json!({ "content": pasted, "expected_revision": 1 });
    let a = post(addr, "/studio/api/publish", &unnamed, None).await;
    assert_eq!((a.status, a.json()["shop"].clone()), (200, json!("other-shop")));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_answers_what_publish_would_for_a_shop_outside_shops() {
    let dir = temp_dir("studio-shops");
    let server = serve::start(Config {
        shops: vitrine::cluster::shops::Shops::parse(SHOP).unwrap(),
        ..test_config(dir.path())
    })
    .await
    .unwrap();
    let addr = server.metrics_addr;
    let elsewhere = json!({ "content": "shop: elsewhere\nbanners:\n  - banner: x\n" });
    let message = "shop `elsewhere` is not served by this replica (--shops studio-shop): send it to the replica group that serves it";
    // The dry run said "revision 1" where the push itself is refused.
    for route in ["/studio/api/validate", "/studio/api/publish"] {
        let a = post(addr, route, &elsewhere, None).await;
        assert_eq!(a.error(), (412, "FAILED_PRECONDITION".into()), "{route}: {a:?}");
        assert_eq!(a.json()["message"], message, "{route}");
    }
    let own = json!({ "content": SERVING });
    let a = post(addr, "/studio/api/validate", &own, None).await;
    assert_eq!((a.status, a.json()["revision"].clone()), (200, json!(1)), "{a:?}");
    server.shutdown().await.unwrap();
}
