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

/// A port free right now (another process may take it before a server
/// binds it: callers that spawn `vitrine serve` retry then).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A bare HTTP/1.1 GET from a plain thread (status line, headers and
/// body); `None` when nothing answers.
pub fn http_get_blocking(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// SIGTERM to a `vitrine serve` child, then waits (up to [`WAIT`]) for its
/// exit, which must be clean; `log` reads its log for a failure's message.
pub fn terminate(child: &mut std::process::Child, log: impl Fn() -> String) {
    let sent = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < WAIT, "no exit {WAIT:?} after SIGTERM:\n{}", log());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit after SIGTERM: {status}\n{}", log());
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
