//! Helpers shared by the test modules.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vitrine_proto::v1 as pb;

pub use tempfile::TempDir;

/// A fresh temporary directory (`vitrine-it-{name}-...`, removed on drop)
/// with an empty `rules/` inside, as [`test_config`] expects.
pub fn temp_dir(name: &str) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("vitrine-it-{name}-"))
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    dir
}

/// A client for every service of a server, over one HTTP/2 connection.
#[derive(Clone)]
pub struct Clients {
    pub decision: pb::decision_client::DecisionClient<Channel>,
    pub rules: pb::rules_client::RulesClient<Channel>,
    pub ingest: pb::ingest_client::IngestClient<Channel>,
    pub audiences: pb::audiences_client::AudiencesClient<Channel>,
    pub benefits: pb::benefits_client::BenefitsClient<Channel>,
    pub health: tonic_health::pb::health_client::HealthClient<Channel>,
}

/// Connects to the gRPC server at `addr`.
pub async fn connect(addr: SocketAddr) -> Clients {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Clients {
        decision: pb::decision_client::DecisionClient::new(channel.clone()),
        rules: pb::rules_client::RulesClient::new(channel.clone()),
        ingest: pb::ingest_client::IngestClient::new(channel.clone()),
        audiences: pb::audiences_client::AudiencesClient::new(channel.clone()),
        benefits: pb::benefits_client::BenefitsClient::new(channel.clone()),
        health: tonic_health::pb::health_client::HealthClient::new(channel),
    }
}

/// A bare HTTP/1.1 GET; returns status line, headers and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A server configuration for tests: the flag defaults on ephemeral ports
/// over `dir`, without what makes a busy test machine flaky or slow: no
/// queue-wait shedding, no shutdown grace, no periodic snapshots, a 100 ms
/// rules poll.
pub fn test_config(dir: &Path) -> vitrine::config::Config {
    vitrine::config::Config {
        max_queue_wait: None,
        shutdown_grace: std::time::Duration::ZERO,
        rules_poll: std::time::Duration::from_millis(100),
        snapshot_interval: None,
        ..vitrine::config::Config::local(dir)
    }
}

/// The longest any wait of these tests takes before it fails (a busy CI
/// machine is slow; a passing wait returns as soon as its signal holds).
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `done` until it holds; panics naming `what` after [`WAIT`].
/// Blocking: for plain tests and threads (in async tests it blocks the
/// test's own thread while the runtime's workers go on).
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out after {WAIT:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Awaits `done()` until it holds; panics naming `what` after [`WAIT`].
pub async fn wait_for<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let waited = tokio::time::timeout(WAIT, async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out after {WAIT:?} waiting for {what}");
}

/// The value of one series (`name{labels}`, as exposed) in a Prometheus text
/// exposition; 0 when the series is absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series}: `{v}` is not a number: {e}"))
        })
}
