//! Hostile clients against a running server: what one request, or many
//! idle connections, must not be able to do (hardening issue).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use vitrine::api::connections::ConnectionLimits;
use vitrine::commands::serve;
use vitrine::config::Config;
use vitrine_proto::v1 as pb;

use crate::support::{connect, http_get, metric_value, temp_dir, test_config, TempDir};

const RULES: &str = "shop: apparel
audiences:
  cart_abandoner: carted(7d)
banners:
  - when: cart_abandoner
    banner: your-cart
  - banner: default
";

/// 2026-11-20T00:00:00Z.
const NOW: i64 = 1_795_132_800_000;

fn config(dir: &TempDir) -> Config {
    std::fs::write(dir.path().join("rules").join("apparel.yaml"), RULES).unwrap();
    test_config(dir.path())
}

fn event(shop: &str, visitor: &str) -> pb::Event {
    pb::Event {
        shop: shop.into(),
        visitor: visitor.into(),
        action: "cart".into(),
        item: "sku-1".into(),
        ts: Some(NOW),
        ..pb::Event::default()
    }
}

/// Reads until the peer closes the connection; the signal that the server
/// let it go. Fails the test (by the test's own timeout) if it never does.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// [`closed_by_server`], failing after 30 s.
async fn closed(stream: &mut TcpStream) {
    tokio::time::timeout(Duration::from_secs(30), closed_by_server(stream))
        .await
        .expect("the server closes the connection");
}

/// Regression (hardening #10): idle or half-open connections were held
/// forever, so a few hundred of them exhausted the descriptors that Push,
/// snapshots, `/metrics` and `/readyz` need. Now a connection at the limit
/// evicts the oldest silent one (so silent sockets cannot starve probes),
/// is refused when every open connection talks, and silent or idle ones
/// are closed after their timeouts; the ports serve again afterwards.
#[tokio::test]
async fn idle_and_excess_connections_are_closed_on_both_ports() {
    let dir = temp_dir("conns");
    let limits = ConnectionLimits {
        max: 3,
        idle_timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_millis(300),
    };
    let server = serve::start(Config {
        grpc_connections: limits,
        http_connections: limits,
        ..config(&dir)
    })
    .await
    .unwrap();

    // Silent connections on the gRPC port: a fourth evicts the oldest at
    // once (well before the handshake timeout, which it outlives here
    // only because the test waits for the eviction first).
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(server.grpc_addr).await.unwrap());
    }
    // Half a request: the server must not wait for the rest forever.
    silent[1].write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut newcomer = TcpStream::connect(server.grpc_addr).await.unwrap();
    closed(&mut silent[0]).await;
    for stream in silent.iter_mut().skip(1).chain([&mut newcomer]) {
        closed(stream).await;
    }

    // Talking connections on the HTTP port: at the limit, a new one is
    // refused on arrival; then the timeouts free them.
    let mut talking = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(server.metrics_addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        talking.push(s);
    }
    let mut refused = TcpStream::connect(server.metrics_addr).await.unwrap();
    closed(&mut refused).await;
    for stream in &mut talking {
        closed(stream).await;
    }

    // Both ports serve again.
    let mut c = connect(server.grpc_addr).await;
    let answer = c
        .decision
        .decide(pb::DecideRequest {
            shop: "apparel".into(),
            visitor: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.banner.unwrap().id, "default");
    let metrics = http_get(server.metrics_addr, "/metrics").await;
    for series in [
        "vitrine_connections_closed_total{port=\"grpc\",reason=\"evicted\"} 1",
        "vitrine_connections_closed_total{port=\"grpc\",reason=\"handshake\"} 3",
        "vitrine_connections_closed_total{port=\"http\",reason=\"limit\"} 1",
        // hyper times out HTTP/1 keep-alive waiting for the next request's
        // headers, the handshake bound, before the idle one.
        "vitrine_connections_closed_total{port=\"http\",reason=\"handshake\"} 3",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    server.shutdown().await.unwrap();
}

/// Regression (hardening #4): events for shops without a rule set built
/// full index state (100k made-up shops: +1.9 GB, 120k metric series).
/// They are rejected as `unknown_shop` and leave nothing behind.
#[tokio::test]
async fn events_of_shops_without_rules_are_rejected_and_keep_no_state() {
    let dir = temp_dir("unknown-shops");
    let server = serve::start(config(&dir)).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    // The process's metrics are shared with the tests running beside this
    // one (some reject unknown shops too): count what this call adds.
    let unknown_shop = |metrics: &str| metric_value(metrics, "vitrine_ingest_rejected_total{reason=\"unknown_shop\"}");
    let before = unknown_shop(&http_get(server.metrics_addr, "/metrics").await);
    let events = (0..1000)
        .map(|i| event(&format!("made-up-{i}"), "v"))
        .chain([event("apparel", "v")]);
    let answer = c
        .ingest
        .track(pb::TrackRequest {
            events: events.collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted, 1);
    assert_eq!(answer.rejected.len(), 1000);
    assert_eq!(answer.rejected[0].reason, "unknown_shop");
    assert_eq!(
        answer.rejected[0].message,
        "no rule set serves shop `made-up-0`: push its rules before its events"
    );
    assert!(server.engine.index.shop("made-up-0").is_none());
    assert!(server.engine.index.shop("apparel").is_some());
    let metrics = http_get(server.metrics_addr, "/metrics").await;
    assert!(!metrics.contains("made-up"), "no series names a made-up shop");
    assert!(unknown_shop(&metrics) >= before + 1000.0, "{metrics}");
    server.shutdown().await.unwrap();
}

/// Regression (hardening #5): Track journaled 100 KB ids that Decide,
/// Claim and Size refuse.
#[tokio::test]
async fn track_refuses_the_ids_decide_refuses() {
    let dir = temp_dir("long-ids");
    let server = serve::start(config(&dir)).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    let long = "v".repeat(100_000);
    let answer = c
        .ingest
        .track(pb::TrackRequest {
            events: vec![event("apparel", &long)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted, 0);
    assert_eq!(answer.rejected[0].reason, "too_long");
    let decide = c
        .decision
        .decide(pb::DecideRequest {
            shop: "apparel".into(),
            visitor: long,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(decide.code(), Code::InvalidArgument);
    assert_eq!(server.engine.index.shop("apparel").map(|s| s.visitor_count()), None);
    server.shutdown().await.unwrap();
}

/// Regression (hardening #16): Size at `now_ms` >= 2^62 panicked (INTERNAL)
/// and Decide at 2^63-1 gave wrong window answers; instants past year 9999
/// are INVALID_ARGUMENT on every call that takes one.
#[tokio::test]
async fn instants_past_year_9999_are_invalid_arguments() {
    let dir = temp_dir("now-ms");
    let server = serve::start(config(&dir)).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    for now_ms in [1 << 62, i64::MAX, -1] {
        let size = c
            .audiences
            .size(pb::SizeRequest {
                shop: "apparel".into(),
                expression: "cart_abandoner".into(),
                now_ms,
            })
            .await
            .unwrap_err();
        assert_eq!(size.code(), Code::InvalidArgument, "{size:?}");
        let decide = c
            .decision
            .decide(pb::DecideRequest {
                shop: "apparel".into(),
                visitor: "v".into(),
                now_ms,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(decide.code(), Code::InvalidArgument, "{decide:?}");
        assert!(decide.message().contains("253402300799999"), "{}", decide.message());
    }
    server.shutdown().await.unwrap();
}

/// Regression (hardening #15): a request that is not protobuf was answered
/// INTERNAL, which reads as a server fault; it is the caller's mistake.
#[tokio::test]
async fn malformed_protobuf_is_an_invalid_argument() {
    let dir = temp_dir("bad-proto");
    let server = serve::start(config(&dir)).await.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    // Field 1 as a length-delimited string that claims 100 bytes and has 2.
    let garbage = vec![0x0a, 100, b'x', b'y'];
    let status = grpc
        .unary::<Vec<u8>, Vec<u8>, _>(
            tonic::Request::new(garbage),
            http::uri::PathAndQuery::from_static("/vitrine.v1.Decision/Decide"),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("malformed protobuf message"),
        "{}",
        status.message()
    );
    server.shutdown().await.unwrap();
}

/// Sends and receives raw bytes, to put what no generated client would on the wire.
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// The rule-file limits are flags: a server told `--max-audiences 2`
/// refuses a third audience with its line:column, and Size holds to
/// `--max-expression-depth`.
#[tokio::test]
async fn rule_limits_come_from_the_configuration() {
    let dir = temp_dir("rule-limits");
    let mut config = config(&dir);
    config.rule_limits.max_audiences = 2;
    config.rule_limits.max_expression_depth = 3;
    let server = serve::start(config).await.unwrap();
    let mut c = connect(server.grpc_addr).await;
    let three = "shop: apparel\naudiences:\n  a: true\n  b: true\n  c: true\nbanners:\n  - banner: x\n";
    let e = c
        .rules
        .push(pb::PushRequest {
            content: three.into(),
            dry_run: true,
            expected_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("5:3: too many audiences"), "{}", e.message());
    let e = c
        .audiences
        .size(pb::SizeRequest {
            shop: "apparel".into(),
            expression: "((((true))))".into(),
            now_ms: NOW,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("nested too deeply"), "{}", e.message());
    server.shutdown().await.unwrap();
}
