//! TLS on both ports (`--tls-cert`, `--tls-key`, `--tls-client-ca`), with
//! certificates made at test time: calls and probes over TLS, plaintext
//! and certificate-less clients refused, renewed certificates picked up
//! and broken ones not.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use vitrine::api::tls::TlsFiles;
use vitrine::commands::{health, serve};
use vitrine::config::Config;
use vitrine_proto::v1 as pb;

use crate::support::{http_get, metric_value, temp_dir, test_config, wait_for};

/// A test CA, and what it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
struct Pair {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `localhost` and 127.0.0.1, named `name`.
    fn sign(&self, name: &str) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Writes `pair` as the server's files in `dir`; returns (cert, key).
fn write_pair(dir: &Path, pair: &Pair) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert, &pair.cert).unwrap();
    std::fs::write(&key, &pair.key).unwrap();
    (cert, key)
}

fn tls_config(dir: &Path, server: &Pair, client_ca: Option<&Ca>) -> Config {
    let (cert, key) = write_pair(dir, server);
    let client_ca = client_ca.map(|ca| {
        let path = dir.join("client-ca.pem");
        std::fs::write(&path, ca.pem()).unwrap();
        path
    });
    Config {
        tls: Some(TlsFiles {
            cert,
            key,
            client_ca,
            reload: Duration::from_millis(100),
        }),
        ..test_config(dir)
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A rustls client trusting `ca`, presenting `identity` if given.
fn client(ca: &Ca, identity: Option<&Pair>, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&ca.pem())).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(p) => builder
            .with_client_auth_cert(
                vec![der(&p.cert)],
                PrivateKeyDer::from_pem_slice(p.key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// GET `path` over TLS; the response, or the error that stopped it.
async fn https_get(
    addr: SocketAddr,
    path: &str,
    ca: &Ca,
    identity: Option<&Pair>,
) -> Result<(String, CertificateDer<'static>), std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = client(ca, identity, b"http/1.1").connect(name, tcp).await?;
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    Ok((out, served))
}

/// The certificate the port serves now.
async fn served(addr: SocketAddr, ca: &Ca) -> CertificateDer<'static> {
    https_get(addr, "/healthz", ca, None).await.unwrap().1
}

/// One series of /metrics, read over TLS.
async fn metric(addr: SocketAddr, ca: &Ca, series: &str) -> f64 {
    let (text, _) = https_get(addr, "/metrics", ca, None).await.unwrap();
    metric_value(&text, series)
}

async fn tls_channel(addr: SocketAddr, ca: &Ca, identity: Option<&Pair>) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some(p) = identity {
        tls = tls.identity(Identity::from_pem(&p.cert, &p.key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

const SHOP: &str = "shop: tls\nbanners:\n  - banner: over-tls\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ports_speak_tls_only() {
    let dir = temp_dir("tls");
    let ca = Ca::new("vitrine test ca");
    let server = serve::start(tls_config(dir.path(), &ca.sign("server"), None))
        .await
        .unwrap();

    // gRPC over TLS: a push, then Decide.
    let channel = tls_channel(server.grpc_addr, &ca, None).await.unwrap();
    let mut rules = pb::rules_client::RulesClient::new(channel.clone());
    rules
        .push(pb::PushRequest {
            content: SHOP.to_string(),
            dry_run: false,
            expected_revision: 0,
        })
        .await
        .unwrap();
    let decided = pb::decision_client::DecisionClient::new(channel)
        .decide(pb::DecideRequest {
            shop: "tls".into(),
            visitor: "v-1".into(),
            now_ms: 1_795_132_800_000,
            ..pb::DecideRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(decided.banner.unwrap().id, "over-tls");

    // The HTTP port over TLS.
    let (ready, _) = https_get(server.metrics_addr, "/readyz", &ca, None).await.unwrap();
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // `vitrine health --tls-ca` and without it.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    let addr = server.grpc_addr.to_string();
    let timeout = Duration::from_secs(10);
    assert_eq!(
        health::check_with(&addr, "vitrine.v1.Decision", timeout, Some(tls)).await,
        health::Outcome::Serving
    );
    assert_ne!(health::check(&addr, "", timeout).await, health::Outcome::Serving);

    // Plaintext is refused on both ports, and counted.
    let refused = r#"vitrine_connections_closed_total{port="http",reason="tls"}"#;
    let before = metric(server.metrics_addr, &ca, refused).await;
    let plain = http_get(server.metrics_addr, "/readyz").await;
    assert!(!plain.contains("ready"), "{plain}");
    let plain_grpc = Channel::from_shared(format!("http://{}", server.grpc_addr)).unwrap();
    let plain_call = async {
        let channel = plain_grpc.connect().await?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(plain_call.await.is_err());
    wait_for("the plaintext connection counted as tls", || async {
        metric(server.metrics_addr, &ca, refused).await > before
    })
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_it_signed_get_in() {
    let dir = temp_dir("mtls");
    let ca = Ca::new("vitrine test ca");
    let clients = Ca::new("vitrine clients ca");
    let server = serve::start(tls_config(dir.path(), &ca.sign("server"), Some(&clients)))
        .await
        .unwrap();
    let signed = clients.sign("client");
    let stranger = Ca::new("another ca").sign("client");

    let (ready, _) = https_get(server.metrics_addr, "/readyz", &ca, Some(&signed))
        .await
        .unwrap();
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    for identity in [None, Some(&stranger)] {
        // TLS 1.3: the client finishes its side before the server has
        // judged its certificate; the refusal arrives as the first read.
        let refused = https_get(server.metrics_addr, "/readyz", &ca, identity).await;
        assert!(!refused.is_ok_and(|(r, _)| r.contains("ready")));
    }

    // gRPC the same way.
    let channel = tls_channel(server.grpc_addr, &ca, Some(&signed)).await.unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
    let anonymous = async {
        let channel = tls_channel(server.grpc_addr, &ca, None).await?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(anonymous.await.is_err());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_and_a_broken_one_is_not() {
    let dir = temp_dir("tls-reload");
    let ca = Ca::new("vitrine test ca");
    let first = ca.sign("first");
    let server = serve::start(tls_config(dir.path(), &first, None)).await.unwrap();
    let addr = server.metrics_addr;
    assert_eq!(served(addr, &ca).await, der(&first.cert));

    // A renewal caught half-way: the new certificate with the old key.
    let second = ca.sign("second");
    let rejected = r#"vitrine_tls_reloads_total{result="rejected"}"#;
    let before = metric(addr, &ca, rejected).await;
    write_pair(
        dir.path(),
        &Pair {
            cert: second.cert.clone(),
            key: first.key.clone(),
        },
    );
    wait_for("the mismatched pair rejected", || async {
        metric(addr, &ca, rejected).await > before
    })
    .await;
    assert_eq!(served(addr, &ca).await, der(&first.cert), "the old pair keeps serving");

    // The whole renewal: served on both ports.
    write_pair(dir.path(), &second);
    wait_for("the renewed certificate served", || async {
        served(addr, &ca).await == der(&second.cert)
    })
    .await;
    let channel = tls_channel(server.grpc_addr, &ca, None).await.unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
    server.shutdown().await.unwrap();
}

/// A peer that opens a connection and never finishes the handshake holds
/// its slot no longer than `--handshake-timeout`, like a silent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_closed_at_the_handshake_timeout() {
    let dir = temp_dir("tls-slow");
    let ca = Ca::new("vitrine test ca");
    let mut config = tls_config(dir.path(), &ca.sign("server"), None);
    config.grpc_connections.handshake_timeout = Duration::from_millis(300);
    let server = serve::start(config).await.unwrap();
    let timed_out = r#"vitrine_connections_closed_total{port="grpc",reason="handshake"}"#;
    let before = metric(server.metrics_addr, &ca, timed_out).await;

    let mut silent = tokio::net::TcpStream::connect(server.grpc_addr).await.unwrap();
    // Half a ClientHello: a TLS record header announcing more than is sent.
    silent.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(crate::support::WAIT, silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the server closed it: {closed:?}"
    );
    wait_for("the connection counted as a handshake timeout", || async {
        metric(server.metrics_addr, &ca, timed_out).await > before
    })
    .await;
    server.shutdown().await.unwrap();
}

#[test]
fn the_tls_flags_are_checked_with_the_others() {
    use clap::Parser;
    let dir = temp_dir("tls-flags");
    let parse = |extra: &[&str]| {
        let mut argv = vec!["vitrine", "serve", "--rules-dir", dir.path().to_str().unwrap()];
        argv.extend_from_slice(extra);
        match vitrine::cli::Cli::try_parse_from(argv).unwrap().command {
            vitrine::cli::Command::Serve(args) => Config::from_args(&args).map_err(|e| e.to_string()),
            _ => unreachable!(),
        }
    };
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let e = parse(&["--tls-cert", missing]).unwrap_err();
    assert!(e.contains("give both or neither"), "{e}");
    let e = parse(&["--tls-client-ca", missing]).unwrap_err();
    assert!(e.contains("needs --tls-cert"), "{e}");
    let e = parse(&["--tls-cert", missing, "--tls-key", missing]).unwrap_err();
    assert!(e.contains("missing.pem"), "{e}");
    let (cert, key) = write_pair(dir.path(), &Ca::new("ca").sign("server"));
    let config = parse(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]).unwrap();
    assert_eq!(config.tls.unwrap().reload, Duration::from_secs(5));
}

/// `vitrine rules push --tls-ca` reaches a TLS server (the admin token then
/// never crosses the network in clear); without it the push cannot be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_push_dials_tls_with_its_ca() {
    let dir = temp_dir("tls-push");
    let ca = Ca::new("vitrine push ca");
    let server = serve::start(tls_config(dir.path(), &ca.sign("server"), None))
        .await
        .unwrap();
    let file = dir.path().join("tls.yaml");
    std::fs::write(&file, SHOP).unwrap();
    let ca_file = dir.path().join("push-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let addr = server.grpc_addr.to_string();
    let tls = health::client_tls_config(&addr, Some(&ca_file), Some("localhost"), None).unwrap();
    let pushed = vitrine::commands::push::run(&file, &addr, None, false, 0, tls).await;
    assert_eq!(pushed, std::process::ExitCode::SUCCESS);
    assert_eq!(server.engine.rules.serving("tls").map(|s| s.revision), Some(1));
    let plain = vitrine::commands::push::run(&file, &addr, None, false, 0, None).await;
    assert_eq!(plain, std::process::ExitCode::from(2), "plaintext against a TLS port");
    assert_eq!(server.engine.rules.serving("tls").map(|s| s.revision), Some(1));
    server.shutdown().await.unwrap();
}
